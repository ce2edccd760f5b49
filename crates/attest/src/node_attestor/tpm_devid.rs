//! `tpm_devid`: a TPM-resident DevID key and its certificate (SPIRE v1.13.3
//! `pkg/common/plugin/tpmdevid`, `pkg/agent/plugin/nodeattestor/tpmdevid`,
//! `pkg/server/plugin/nodeattestor/tpmdevid`).
//!
//! The node's TPM holds a DevID signing key, certified by a CA the server trusts, and an
//! endorsement key (EK) whose certificate a TPM manufacturer CA signed.
//! 1. The agent sends an [`AttestationRequest`]: the DevID certificate chain, the DevID and EK
//!    public areas (`TPMT_PUBLIC`), the EK certificate, the public area of an attestation key
//!    (AK) it created in the TPM, and a `TPM2_Certify` of the DevID key by the AK
//!    (`TPMS_ATTEST` and its `TPMT_SIGNATURE`).
//! 2. The server ([`TpmDevidVerifier`]) verifies the DevID chain against `devid_ca_path`, that
//!    the EK certificate's key is the EK public area's, the EK certificate against
//!    `endorsement_ca_path`, and the AK's signature over the certification of the DevID's
//!    name. It sends a [`ChallengeRequest`]: 32 random bytes for the DevID key to sign, and a
//!    credential (`MakeCredential`) for the AK's name, encrypted to the EK.
//! 3. The agent answers with a [`ChallengeResponse`]: the DevID signature of the nonce
//!    (PKCS #1 v1.5 or ECDSA over SHA-256) and the credential the TPM decrypted
//!    (`TPM2_ActivateCredential`), which only the TPM holding both the EK and the AK can do.
//! 4. The server checks both and attests the agent as
//!    `spiffe://<td>/spire/agent/tpm_devid/<SHA-1 of the DevID certificate>` with the
//!    selectors `subject:cn:<CN>`, `issuer:cn:<CN>` and `ca:fingerprint:<SHA-1>` per CA
//!    certificate of the verified chain. The agent may attest again.
//!
//! JSON follows Go's encoding with Go's default member names (`DevIDCert`, `EKPub`, ...):
//! byte strings are standard base64, absent members are `null`.
//!
//! What ward does not do: RSA keys under 2048 bits (aws-lc-rs verifies from 2048 bits), an
//! AK whose scheme is `TPM_ALG_NULL` (SPIRE's server crashes on one; ward refuses it), and
//! DevID chains that Go accepts only through several candidate paths (webpki returns one
//! verified path, so `ca:fingerprint` selectors come from that path).

pub mod client;
pub mod tpm;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use aws_lc_rs::signature::{self, UnparsedPublicKey};
use rustls::pki_types::{CertificateDer, TrustAnchor, UnixTime};
use serde::{Deserialize, Serialize};
use ward_core::TrustDomain;
use webpki::EndEntityCert;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;

use self::client::Tpm;
use self::tpm::{ATTR_SIGN, Attest, Public, Signature};
use super::x509pop::{
    AnyUsage, Base64Bytes, fingerprint, go_json_error, go_verify_error, path_ca_fingerprints,
    push_ca_fingerprints,
};
use super::{
    AttestedAgent, NodeAttestError, NodeAttestor, PendingChallenge, Refusal, RefusalCode,
    ServerNodeAttestor, Verification,
};

/// The attestation type name.
pub const NAME: &str = "tpm_devid";

/// Length of the DevID nonce, in bytes.
const DEVID_NONCE_LEN: usize = 32;

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Base64Bytes>, D::Error> {
    Ok(Option::<Vec<Base64Bytes>>::deserialize(d)?.unwrap_or_default())
}

/// The attestation payload (SPIRE's `AttestationRequest`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestationRequest {
    /// The DevID certificate, then its intermediates, DER.
    #[serde(rename = "DevIDCert", default, deserialize_with = "null_as_empty")]
    pub devid_cert: Vec<Base64Bytes>,
    /// The DevID key's `TPMT_PUBLIC`.
    #[serde(rename = "DevIDPub", default)]
    pub devid_pub: Base64Bytes,
    /// The endorsement certificate, DER.
    #[serde(rename = "EKCert", default)]
    pub ek_cert: Base64Bytes,
    /// The endorsement key's `TPMT_PUBLIC`.
    #[serde(rename = "EKPub", default)]
    pub ek_pub: Base64Bytes,
    /// The attestation key's `TPMT_PUBLIC`.
    #[serde(rename = "AKPub", default)]
    pub ak_pub: Base64Bytes,
    /// The `TPMS_ATTEST` of `TPM2_Certify` (DevID key certified by the AK).
    #[serde(rename = "CertifiedDevID", default)]
    pub certified_devid: Base64Bytes,
    /// The AK's `TPMT_SIGNATURE` over [`Self::certified_devid`].
    #[serde(rename = "CertificationSignature", default)]
    pub certification_signature: Base64Bytes,
}

/// A credential to activate (`TPM2B_ID_OBJECT` and `TPM2B_ENCRYPTED_SECRET`, without their
/// size prefixes).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredActivation {
    /// The encrypted credential (`TPMS_ID_OBJECT`).
    #[serde(rename = "Credential", default)]
    pub credential: Base64Bytes,
    /// The seed, encrypted to the EK.
    #[serde(rename = "Secret", default)]
    pub secret: Base64Bytes,
}

/// The server's challenges.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChallengeRequest {
    /// The nonce the DevID key signs.
    #[serde(rename = "DevID", default)]
    pub devid: Base64Bytes,
    /// The credential the TPM activates.
    #[serde(rename = "CredActivation", default)]
    pub cred_activation: Option<CredActivation>,
}

/// The agent's answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChallengeResponse {
    /// The DevID key's signature of the nonce.
    #[serde(rename = "DevID", default)]
    pub devid: Base64Bytes,
    /// The activated credential.
    #[serde(rename = "CredActivation", default)]
    pub cred_activation: Base64Bytes,
}

// ---------------------------------------------------------------------------------------------
// Server side

/// The server's `tpm_devid` settings, files already read.
#[derive(Debug, Clone)]
pub struct TpmDevidServerConfig {
    /// The server's trust domain.
    pub trust_domain: TrustDomain,
    /// The CA certificates DevID chains must end at, DER (SPIRE's `devid_ca_path`).
    pub devid_ca_certificates: Vec<Vec<u8>>,
    /// The CA certificates endorsement certificates must chain to, DER (SPIRE's
    /// `endorsement_ca_path`).
    pub endorsement_ca_certificates: Vec<Vec<u8>>,
}

/// The server side: verifies the DevID chain, the EK and the AK's certification of the DevID
/// key, then checks the proof of possession and the credential activation.
#[derive(Debug)]
pub struct TpmDevidVerifier {
    trust_domain: TrustDomain,
    devid_anchors: Vec<TrustAnchor<'static>>,
    devid_ca_certificates: Vec<Vec<u8>>,
    ek_anchors: Vec<TrustAnchor<'static>>,
}

fn config_error(reason: impl Into<String>) -> NodeAttestError {
    NodeAttestError::Config { attestor: NAME, reason: reason.into() }
}

fn anchors(ders: &[Vec<u8>], what: &str) -> Result<Vec<TrustAnchor<'static>>, NodeAttestError> {
    ders.iter()
        .map(|der| {
            webpki::anchor_from_trusted_cert(&CertificateDer::from(der.as_slice()))
                .map(|a| a.to_owned())
                .map_err(|e| config_error(format!("unable to load {what} trust bundle: {e:?}")))
        })
        .collect()
}

impl TpmDevidVerifier {
    /// A verifier for `config`.
    ///
    /// # Errors
    /// [`NodeAttestError::Config`] when a bundle is empty or a certificate does not parse.
    pub fn new(config: TpmDevidServerConfig) -> Result<Self, NodeAttestError> {
        if config.devid_ca_certificates.is_empty() {
            return Err(config_error("unable to load DevID trust bundle: no certificates"));
        }
        if config.endorsement_ca_certificates.is_empty() {
            return Err(config_error("unable to load endorsement trust bundle: no certificates"));
        }
        Ok(Self {
            devid_anchors: anchors(&config.devid_ca_certificates, "DevID")?,
            ek_anchors: anchors(&config.endorsement_ca_certificates, "endorsement")?,
            trust_domain: config.trust_domain,
            devid_ca_certificates: config.devid_ca_certificates,
        })
    }
}

/// The DevID key as the server verifies signatures with it.
#[derive(Debug, Clone)]
enum DevidKey {
    Rsa(Vec<u8>),
    Ecdsa(&'static signature::EcdsaVerificationAlgorithm, Vec<u8>),
    Unsupported(String),
}

/// What the server reads from a certificate.
struct CertFacts {
    subject_cn: String,
    issuer_cn: String,
    key: DevidKey,
    rsa: Option<(Vec<u8>, Vec<u8>)>,
}

const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_RSA: &str = "1.2.840.113549.1.1.1";
const OID_ED25519: &str = "1.3.101.112";

fn parse_cert(der: &[u8]) -> Result<CertFacts, String> {
    let (rest, cert) = X509Certificate::from_der(der).map_err(|_| "x509: malformed certificate")?;
    if !rest.is_empty() {
        return Err("x509: trailing data".into());
    }
    let cn = |name: &x509_parser::x509::X509Name<'_>| {
        name.iter_common_name()
            .last()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let spki = cert.public_key();
    let algorithm = spki.algorithm.algorithm.to_id_string();
    let raw = spki.subject_public_key.data.to_vec();
    let rsa = match spki.parsed() {
        Ok(PublicKey::RSA(k)) => Some((k.modulus.to_vec(), k.exponent.to_vec())),
        _ => None,
    };
    let key = match algorithm.as_str() {
        OID_RSA => DevidKey::Rsa(raw),
        OID_EC_PUBLIC_KEY => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string());
            match curve.as_deref() {
                Some("1.2.840.10045.3.1.7") => {
                    DevidKey::Ecdsa(&signature::ECDSA_P256_SHA256_ASN1, raw)
                }
                Some("1.3.132.0.34") => DevidKey::Ecdsa(&signature::ECDSA_P384_SHA256_ASN1, raw),
                Some("1.3.132.0.35") => DevidKey::Ecdsa(&signature::ECDSA_P521_SHA256_ASN1, raw),
                _ => DevidKey::Unsupported("*ecdsa.PublicKey".into()),
            }
        }
        OID_ED25519 => DevidKey::Unsupported("ed25519.PublicKey".into()),
        other => DevidKey::Unsupported(other.to_owned()),
    };
    Ok(CertFacts { subject_cn: cn(cert.subject()), issuer_cn: cn(cert.issuer()), key, rsa })
}

fn at(now: i64) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(u64::try_from(now).unwrap_or(0)))
}

fn refuse(code: RefusalCode, message: impl Into<String>) -> Refusal {
    Refusal::new(code, message)
}

fn invalid(message: impl Into<String>) -> Refusal {
    refuse(RefusalCode::InvalidArgument, message)
}

/// A big-endian unsigned integer without its leading zero bytes.
fn trim(b: &[u8]) -> &[u8] {
    &b[b.iter().position(|&x| x != 0).unwrap_or(b.len())..]
}

/// SPIRE's `verifyEKsMatch`: the EK certificate's RSA key is the EK public area's.
fn eks_match(cert: &CertFacts, ek: &Public) -> Result<(), String> {
    let (n, e) = cert.rsa.as_ref().ok_or("key from certificate is not an RSA key")?;
    let (tn, te) = ek.rsa().ok_or("key from template is not an RSA key")?;
    if trim(e) != trim(&te.to_be_bytes()) {
        return Err("exponent mismatch".into());
    }
    if trim(n) != trim(tn) {
        return Err("modulus mismatch".into());
    }
    Ok(())
}

/// SPIRE's `VerifyDevIDCertification`: the AK signed a certification of the DevID key.
fn verify_certification(
    ak: &Public,
    devid: &Public,
    attest: &[u8],
    sig: &[u8],
) -> Result<(), String> {
    let (n, e) = ak.rsa().ok_or("only RSA keys are supported")?;
    if ak.attributes & ATTR_SIGN == 0 {
        return Err("not a signing key".into());
    }
    let scheme = ak.scheme().ok_or("the attestation key has no signing scheme")?;
    let alg: &'static signature::RsaParameters = match scheme.hash {
        tpm::ALG_SHA1 => &signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
        tpm::ALG_SHA256 => &signature::RSA_PKCS1_2048_8192_SHA256,
        tpm::ALG_SHA384 => &signature::RSA_PKCS1_2048_8192_SHA384,
        tpm::ALG_SHA512 => &signature::RSA_PKCS1_2048_8192_SHA512,
        other => return Err(format!("hash algorithm not supported: 0x{other:x}")),
    };
    let signature = match Signature::decode(sig)? {
        Signature::Rsa { signature, .. } => signature,
        Signature::Ecc { .. } => return Err("crypto/rsa: verification error".into()),
    };
    UnparsedPublicKey::new(alg, tpm::rsa_public_key_der(n, e))
        .verify(attest, &signature)
        .map_err(|_| "crypto/rsa: verification error")?;
    let data = Attest::decode(attest)?;
    let name = data.certified_name.ok_or("missing certify info")?;
    if name.len() < 2 {
        return Err("Name doesn't have a Digest, can't compare to Public".into());
    }
    let alg = u16::from_be_bytes([name[0], name[1]]);
    if devid.name_digest(alg)? != name[2..] {
        return Err("certify failed".into());
    }
    Ok(())
}

impl ServerNodeAttestor for TpmDevidVerifier {
    fn name(&self) -> &'static str {
        NAME
    }

    fn begin(&self, payload: &[u8], now: i64) -> Result<Verification, Refusal> {
        if payload.is_empty() {
            return Err(invalid("missing attestation payload"));
        }
        let req: AttestationRequest = serde_json::from_slice(payload).map_err(|e| {
            invalid(format!("unable to unmarshall attestation data: {}", go_json_error(&e)))
        })?;
        let Some((leaf_der, intermediates)) = req.devid_cert.split_first() else {
            return Err(invalid("no DevID certificate to attest"));
        };
        let leaf = parse_cert(&leaf_der.0)
            .map_err(|e| invalid(format!("unable to parse DevID certificate: {e}")))?;
        for (i, der) in intermediates.iter().enumerate() {
            parse_cert(&der.0).map_err(|e| {
                invalid(format!("unable to parse DevID intermediate certificate {i}: {e}"))
            })?;
        }

        // The DevID chain.
        let leaf_cert = CertificateDer::from(leaf_der.0.as_slice());
        let chain: Vec<CertificateDer<'_>> =
            intermediates.iter().map(|c| CertificateDer::from(c.0.as_slice())).collect();
        let devid_failed = |e: &webpki::Error| {
            invalid(format!("unable to verify DevID signature: verification failed: {}", {
                go_verify_error(e)
            }))
        };
        let ee = EndEntityCert::try_from(&leaf_cert).map_err(|e| devid_failed(&e))?;
        let path = ee
            .verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &self.devid_anchors,
                &chain,
                at(now),
                AnyUsage,
                None,
                None,
            )
            .map_err(|e| devid_failed(&e))?;
        let ca_fingerprints =
            path_ca_fingerprints(&path, &self.devid_anchors, &self.devid_ca_certificates);

        // The DevID key resides in the TPM that holds the EK.
        if req.ak_pub.0.is_empty() {
            return Err(invalid("missing attestation key public blob"));
        }
        if req.devid_pub.0.is_empty() {
            return Err(invalid("missing DevID key public blob"));
        }
        if req.ek_cert.0.is_empty() {
            return Err(invalid("missing endorsement certificate"));
        }
        if req.ek_pub.0.is_empty() {
            return Err(invalid("missing endorsement key public blob"));
        }
        let ek_cert = parse_cert(&req.ek_cert.0)
            .map_err(|e| invalid(format!("cannot parse endorsement certificate: {e}")))?;
        let devid_pub = Public::decode(&req.devid_pub.0)
            .map_err(|e| invalid(format!("cannot decode DevID key public blob: {e}")))?;
        let ak_pub = Public::decode(&req.ak_pub.0)
            .map_err(|e| invalid(format!("cannot decode attestation key public blob: {e}")))?;
        let ek_pub = Public::decode(&req.ek_pub.0)
            .map_err(|_| invalid("cannot decode endorsement key public blob"))?;
        eks_match(&ek_cert, &ek_pub).map_err(|e| {
            invalid(format!(
                "public key in EK certificate differs from public key created via EK template: \
                 {e}"
            ))
        })?;
        let ek_der = CertificateDer::from(req.ek_cert.0.as_slice());
        EndEntityCert::try_from(&ek_der)
            .and_then(|ee| {
                ee.verify_for_usage(
                    webpki::ALL_VERIFICATION_ALGS,
                    &self.ek_anchors,
                    &[],
                    at(now),
                    AnyUsage,
                    None,
                    None,
                )
                .map(|_| ())
            })
            .map_err(|e| {
                invalid(format!(
                    "cannot verify EK signature: endorsement certificate verification failed: {}",
                    go_verify_error(&e)
                ))
            })?;
        verify_certification(
            &ak_pub,
            &devid_pub,
            &req.certified_devid.0,
            &req.certification_signature.0,
        )
        .map_err(|e| {
            invalid(format!("cannot verify that DevID is in the same TPM than AK: {e}"))
        })?;

        let internal =
            |what: &str, e: String| refuse(RefusalCode::Internal, format!("{what}: {e}"));
        let cred_failed = |e| internal("cannot generate credential activation challenge", e);
        let nonce_len =
            tpm::hash(ek_pub.name_alg).map(aws_lc_rs::digest::Algorithm::output_len).ok_or_else(
                || cred_failed(format!("hash algorithm not supported: {}", ek_pub.name_alg)),
            )?;
        let cred_nonce = random(nonce_len).map_err(|e| cred_failed(e.into()))?;
        let ak_name = ak_pub.name_digest(ak_pub.name_alg).map_err(cred_failed)?;
        let made = tpm::make_credential(&ek_pub, ak_pub.name_alg, &ak_name, &cred_nonce)
            .map_err(cred_failed)?;
        let devid_nonce = random(DEVID_NONCE_LEN)
            .map_err(|e| internal("unable to generate challenge", e.into()))?;
        let challenge = serde_json::to_vec(&ChallengeRequest {
            devid: Base64Bytes(devid_nonce.clone()),
            cred_activation: Some(CredActivation {
                credential: Base64Bytes(made.credential),
                secret: Base64Bytes(made.secret),
            }),
        })
        .map_err(|e| internal("unable to marshal challenges data", e.to_string()))?;

        let agent_id = self
            .trust_domain
            .spiffe_id(&format!("/spire/agent/{NAME}/{}", fingerprint(&leaf_der.0)))
            .map_err(|e| internal("failed to create agent ID", e.to_string()))?;
        let mut selector_values = Vec::new();
        if !leaf.subject_cn.is_empty() {
            selector_values.push(format!("subject:cn:{}", leaf.subject_cn));
        }
        if !leaf.issuer_cn.is_empty() {
            selector_values.push(format!("issuer:cn:{}", leaf.issuer_cn));
        }
        push_ca_fingerprints(&mut selector_values, ca_fingerprints);
        Ok(Verification::Challenge {
            challenge,
            pending: Box::new(PendingProof {
                key: leaf.key,
                devid_nonce,
                cred_nonce,
                attested: AttestedAgent { agent_id, selector_values, can_reattest: true },
            }),
        })
    }
}

fn random(len: usize) -> Result<Vec<u8>, &'static str> {
    let mut n = vec![0u8; len];
    aws_lc_rs::rand::fill(&mut n).map_err(|_| "no random bytes")?;
    Ok(n)
}

/// The challenges sent, waiting for the agent's answers.
struct PendingProof {
    key: DevidKey,
    devid_nonce: Vec<u8>,
    cred_nonce: Vec<u8>,
    attested: AttestedAgent,
}

/// SPIRE's `VerifyDevIDChallenge`: PKCS #1 v1.5 or ECDSA (ASN.1) over SHA-256 of the nonce.
fn verify_devid_signature(key: &DevidKey, nonce: &[u8], sig: &[u8]) -> Result<(), String> {
    match key {
        DevidKey::Rsa(public) => {
            UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, public)
                .verify(nonce, sig)
                .map_err(|_| "crypto/rsa: verification error".to_owned())
        }
        DevidKey::Ecdsa(alg, public) => UnparsedPublicKey::new(*alg, public)
            .verify(nonce, sig)
            .map_err(|_| "x509: ECDSA verification failure".to_owned()),
        DevidKey::Unsupported(kind) => Err(format!("unsupported private key type {kind}")),
    }
}

impl PendingChallenge for PendingProof {
    fn respond(self: Box<Self>, response: &[u8]) -> Result<Verification, Refusal> {
        let parsed: ChallengeResponse = serde_json::from_slice(response).map_err(|e| {
            invalid(format!("unable to unmarshall challenges response: {}", go_json_error(&e)))
        })?;
        verify_devid_signature(&self.key, &self.devid_nonce, &parsed.devid.0)
            .map_err(|e| invalid(format!("devID challenge verification failed: {e}")))?;
        if parsed.cred_activation.0 != self.cred_nonce {
            return Err(invalid("credential activation failed: nonces are different"));
        }
        Ok(Verification::Attested(self.attested))
    }
}

// ---------------------------------------------------------------------------------------------
// Agent side

/// The agent's `tpm_devid` settings (SPIRE's agent `plugin_data`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TpmDevidAgentConfig {
    /// PEM file of the DevID certificate, then its intermediates.
    pub devid_cert_path: PathBuf,
    /// The DevID key's `TPM2B_PRIVATE` contents, as loaded under the SRK.
    pub devid_priv_path: PathBuf,
    /// The DevID key's `TPMT_PUBLIC`.
    pub devid_pub_path: PathBuf,
    /// The DevID key's authorisation value.
    pub devid_password: String,
    /// The owner hierarchy's authorisation value.
    pub owner_hierarchy_password: String,
    /// The endorsement hierarchy's authorisation value.
    pub endorsement_hierarchy_password: String,
    /// The TPM: a character device or an emulator's Unix socket; `None` looks in `/dev`.
    pub tpm_device_path: Option<PathBuf>,
}

impl std::fmt::Debug for TpmDevidAgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The passwords are credentials: never print them.
        f.debug_struct("TpmDevidAgentConfig")
            .field("devid_cert_path", &self.devid_cert_path)
            .field("devid_priv_path", &self.devid_priv_path)
            .field("devid_pub_path", &self.devid_pub_path)
            .field("tpm_device_path", &self.tpm_device_path)
            .finish_non_exhaustive()
    }
}

/// SPIRE's TPM autodetection: the only `tpmrm<N>` in `dir`, else the only `tpm<N>`.
///
/// # Errors
/// `not found`, or `more than one possible TPM device was found`.
pub fn autodetect_tpm_path(dir: &Path) -> Result<PathBuf, String> {
    let names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for prefix in ["tpmrm", "tpm"] {
        let found: Vec<&String> = names
            .iter()
            .filter(|n| {
                n.find(prefix).is_some_and(|i| {
                    let digits = &n[i + prefix.len()..];
                    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
                })
            })
            .collect();
        match found.as_slice() {
            [] => {}
            [one] => return Ok(dir.join(one)),
            _ => return Err("more than one possible TPM device was found".into()),
        }
    }
    Err("not found".into())
}

/// The TPM objects of one attestation: the DevID key and an AK loaded, the EK created.
struct Session {
    tpm: Tpm,
    devid: u32,
    devid_auth: Vec<u8>,
    devid_hash: u16,
    ak: u32,
    ak_auth: Vec<u8>,
    ek: u32,
    endorsement_auth: Vec<u8>,
}

impl Drop for Session {
    fn drop(&mut self) {
        for h in [self.devid, self.ak, self.ek] {
            if h != 0 {
                self.tpm.flush(h);
            }
        }
    }
}

fn random_auth() -> Result<Vec<u8>, String> {
    random(32).map_err(str::to_owned)
}

/// SPIRE's `loadKey`: loads a signing key pair under a fresh SRK of its type; its handle and
/// its signature hash.
fn load_signing_key(
    tpm: &mut Tpm,
    owner_auth: &[u8],
    public: &[u8],
    private: &[u8],
) -> Result<(u32, u16), String> {
    let decoded = Public::decode(public).map_err(|e| format!("tpm2.DecodePublic failed: {e}"))?;
    if decoded.attributes & ATTR_SIGN == 0 {
        return Err("not a signing key".into());
    }
    let hash = decoded.scheme().map(|s| s.hash).unwrap_or(tpm::ALG_NULL);
    if hash == tpm::ALG_NULL {
        return Err("signature hash algorithm is NULL".into());
    }
    let srk_auth = random_auth()?;
    let template = client::srk_template(client::is_ecc(&decoded));
    let (srk, _) = tpm
        .create_primary(client::RH_OWNER, owner_auth, &srk_auth, &template)
        .map_err(|e| format!("tpm2.CreatePrimaryEx failed: {e}"))?;
    let loaded = tpm.load(srk, &srk_auth, private, public);
    tpm.flush(srk);
    let handle = loaded.map_err(|e| format!("tpm2.Load failed: {e}"))?;
    Ok((handle, hash))
}

impl Session {
    /// SPIRE's `NewSession`.
    fn open(
        config: &TpmDevidAgentConfig,
        path: &Path,
        evidence: &Evidence,
    ) -> Result<Self, String> {
        let tpm =
            Tpm::open(path).map_err(|e| format!("cannot open TPM at {:?}: {e}", path.display()))?;
        let owner = config.owner_hierarchy_password.as_bytes().to_vec();
        // Dropping the session on an error below flushes what was loaded.
        let mut session = Self {
            tpm,
            devid: 0,
            devid_auth: config.devid_password.as_bytes().to_vec(),
            devid_hash: 0,
            ak: 0,
            ak_auth: random_auth()?,
            ek: 0,
            endorsement_auth: config.endorsement_hierarchy_password.as_bytes().to_vec(),
        };
        let (devid, hash) =
            load_signing_key(&mut session.tpm, &owner, &evidence.devid_pub, &evidence.devid_priv)
                .map_err(|e| format!("cannot load DevID key on TPM: {e}"))?;
        session.devid = devid;
        session.devid_hash = hash;

        let srk_auth = random_auth()?;
        let (srk, _) = session
            .tpm
            .create_primary(client::RH_OWNER, &owner, &srk_auth, &client::srk_template(false))
            .map_err(|e| format!("cannot create attestation key: failed to create SRK: {e}"))?;
        let created =
            session.tpm.create(srk, &srk_auth, &session.ak_auth, &client::ak_template_rsa());
        session.tpm.flush(srk);
        let (ak_priv, ak_pub) = created
            .map_err(|e| format!("cannot create attestation key: failed to create AK: {e}"))?;
        let (ak, _) = load_signing_key(&mut session.tpm, &owner, &ak_pub, &ak_priv)
            .map_err(|e| format!("cannot load attestation key: {e}"))?;
        session.ak = ak;

        let (ek, _) = session
            .tpm
            .create_primary(
                client::RH_ENDORSEMENT,
                &session.endorsement_auth,
                &[],
                &client::ek_template_rsa(),
            )
            .map_err(|e| format!("cannot create endorsement key: {e}"))?;
        session.ek = ek;
        Ok(session)
    }
}

/// The DevID files, read when the attestor is made.
struct Evidence {
    certs: Vec<Vec<u8>>,
    devid_pub: Vec<u8>,
    devid_priv: Vec<u8>,
}

/// The agent side: proves possession of the TPM-resident DevID key and that it shares its
/// TPM with the EK.
pub struct TpmDevidAttestor {
    config: TpmDevidAgentConfig,
    path: PathBuf,
    evidence: Evidence,
    session: Mutex<Option<Session>>,
}

impl std::fmt::Debug for TpmDevidAttestor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TpmDevidAttestor")
            .field("config", &self.config)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn agent_error(reason: impl Into<String>) -> NodeAttestError {
    NodeAttestError::Config { attestor: NAME, reason: reason.into() }
}

impl TpmDevidAttestor {
    /// An attestor for `config`: reads the DevID files and finds the TPM (SPIRE's
    /// `Configure`).
    ///
    /// # Errors
    /// [`NodeAttestError::Config`] with SPIRE's sentences.
    pub fn new(config: TpmDevidAgentConfig) -> Result<Self, NodeAttestError> {
        for (path, key) in [
            (&config.devid_cert_path, "devid_cert_path"),
            (&config.devid_priv_path, "devid_priv_path"),
            (&config.devid_pub_path, "devid_pub_path"),
        ] {
            if path.as_os_str().is_empty() {
                return Err(agent_error(format!("invalid configuration: {key} is required")));
            }
        }
        let path = match &config.tpm_device_path {
            Some(p) if !p.as_os_str().is_empty() => p.clone(),
            _ => autodetect_tpm_path(Path::new("/dev"))
                .map_err(|e| agent_error(format!("tpm autodetection failed: {e}")))?,
        };
        let load = |what: &str, p: &Path| {
            std::fs::read(p).map_err(|e| {
                agent_error(format!("unable to load DevID files: cannot load {what}: {e}"))
            })
        };
        let certs = load("certificate(s)", &config.devid_cert_path).and_then(|text| {
            super::x509pop::certificates_from_pem(&text).map_err(|e| {
                agent_error(format!("unable to load DevID files: cannot load certificate(s): {e}"))
            })
        })?;
        let evidence = Evidence {
            certs,
            devid_priv: load("private key", &config.devid_priv_path)?,
            devid_pub: load("public key", &config.devid_pub_path)?,
        };
        Ok(Self { config, path, evidence, session: Mutex::new(None) })
    }

    fn session(&self) -> std::sync::MutexGuard<'_, Option<Session>> {
        self.session.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The DER certificate at the start of `bytes` (NV indices may hold padding after it).
fn first_der(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut r = tpm::Reader::new(bytes);
    let bad = |_| "asn1: syntax error: data truncated".to_owned();
    if r.u8().map_err(bad)? != 0x30 {
        return Err("asn1: structure error: not a SEQUENCE".into());
    }
    let first = r.u8().map_err(bad)?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return Err("asn1: structure error: bad length".into());
        }
        r.bytes(n).map_err(bad)?.iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    };
    let head = bytes.len() - r.rest().len();
    r.bytes(len).map_err(bad)?;
    Ok(bytes[..head + len].to_vec())
}

impl NodeAttestor for TpmDevidAttestor {
    fn name(&self) -> &'static str {
        NAME
    }

    fn payload(&self) -> Result<Vec<u8>, NodeAttestError> {
        let mut guard = self.session();
        // A session left from an attestation that did not finish is closed first.
        *guard = None;
        let mut session = Session::open(&self.config, &self.path, &self.evidence)
            .map_err(|e| agent_error(format!("unable to start a new TPM session: {e}")))?;
        let ek_cert = session
            .tpm
            .nv_read(client::EK_CERT_INDEX_RSA)
            .map_err(|e| format!("failed to read NV index {:08x}: {e}", client::EK_CERT_INDEX_RSA))
            .and_then(|b| {
                first_der(&b).map_err(|e| {
                    format!(
                        "failed to unmarshall certificate read from {:08x}: {e}",
                        client::EK_CERT_INDEX_RSA
                    )
                })
            })
            .map_err(|e| agent_error(format!("unable to get endorsement certificate: {e}")))?;
        let ek_pub = session.tpm.read_public(session.ek).map_err(|e| {
            agent_error(format!(
                "unable to get endorsement public key: cannot read EK from handle: {e}"
            ))
        })?;
        let ak_pub = session
            .tpm
            .read_public(session.ak)
            .map_err(|e| agent_error(format!("unable to read the attestation key: {e}")))?;
        let (devid, ak) = (session.devid, session.ak);
        let (certified, signature) = session
            .tpm
            .certify(devid, &session.devid_auth.clone(), ak, &session.ak_auth.clone())
            .map_err(|e| {
                agent_error(format!("unable to certify DevID key: tpm2.Certify failed: {e}"))
            })?;
        let request = AttestationRequest {
            devid_cert: self.evidence.certs.iter().cloned().map(Base64Bytes).collect(),
            devid_pub: Base64Bytes(self.evidence.devid_pub.clone()),
            ek_cert: Base64Bytes(ek_cert),
            ek_pub: Base64Bytes(ek_pub),
            ak_pub: Base64Bytes(ak_pub),
            certified_devid: Base64Bytes(certified),
            certification_signature: Base64Bytes(signature),
        };
        let payload = serde_json::to_vec(&request)
            .map_err(|e| agent_error(format!("unable to marshal attestation data: {e}")))?;
        *guard = Some(session);
        Ok(payload)
    }

    fn answer(&self, challenge: &[u8]) -> Result<Vec<u8>, NodeAttestError> {
        let mut guard = self.session();
        // The session ends with this answer, whatever it is.
        let mut session = guard.take().ok_or(NodeAttestError::UnexpectedChallenge)?;
        let challenges: ChallengeRequest = serde_json::from_slice(challenge).map_err(|e| {
            agent_error(format!("unable to unmarshall challenges: {}", go_json_error(&e)))
        })?;
        let solve_failed =
            |e: String| agent_error(format!("unable to solve proof of possession challenge: {e}"));
        let hash = tpm::hash(session.devid_hash).ok_or_else(|| {
            solve_failed(format!("hash algorithm not supported: {}", session.devid_hash))
        })?;
        let digest = aws_lc_rs::digest::digest(hash, &challenges.devid.0);
        let devid = session.devid;
        let raw = session
            .tpm
            .sign(devid, &session.devid_auth.clone(), digest.as_ref())
            .map_err(|e| solve_failed(format!("failed to sign nonce: tpm2.Sign failed: {e}")))?;
        let devid_sig = match Signature::decode(&raw).map_err(solve_failed)? {
            Signature::Rsa { signature, .. } => signature,
            Signature::Ecc { r, s, .. } => tpm::ecdsa_der(&r, &s),
        };
        let cred = challenges.cred_activation.ok_or_else(|| {
            agent_error("received empty credential activation challenge from server")
        })?;
        let residency_failed =
            |e: String| agent_error(format!("unable to solve proof of residency challenge: {e}"));
        let policy = session
            .tpm
            .endorsement_policy_session(&session.endorsement_auth.clone())
            .map_err(|e| residency_failed(e.to_string()))?;
        let (ak, ek) = (session.ak, session.ek);
        let activated = session
            .tpm
            .activate_credential(
                ak,
                &session.ak_auth.clone(),
                ek,
                policy,
                &cred.credential.0,
                &cred.secret.0,
            )
            .map_err(|e| residency_failed(format!("failed to activate credential: {e}")))?;
        serde_json::to_vec(&ChallengeResponse {
            devid: Base64Bytes(devid_sig),
            cred_activation: Base64Bytes(activated),
        })
        .map_err(|e| agent_error(format!("unable to marshal challenge response: {e}")))
    }
}

#[cfg(test)]
mod tests;
