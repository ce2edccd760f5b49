//! `x509pop`: X.509 proof of possession (SPIRE v1.13.3 `pkg/common/plugin/x509pop`,
//! `pkg/agent/plugin/nodeattestor/x509pop`, `pkg/server/plugin/nodeattestor/x509pop`).
//!
//! The node holds a certificate issued by a CA the server trusts, and its private key.
//! 1. The agent ([`X509popAttestor`]) sends [`AttestationData`]: the certificate chain, leaf
//!    first, as JSON (`{"certificates": [<base64 DER>, ...]}`).
//! 2. The server ([`X509popVerifier`]) verifies the chain against its configured CA
//!    certificates (any extended key usage is accepted, as SPIRE accepts it) and sends a
//!    [`Challenge`]: 32 random bytes, under `ecdsa_signature` or `rsa_signature` after the
//!    leaf's key type.
//! 3. The agent answers with a [`Response`]: 32 random bytes of its own and a signature over
//!    SHA-256(server nonce ‖ agent nonce), ECDSA with `r` and `s` as minimal big-endian bytes,
//!    or RSA-PSS with SHA-256.
//! 4. The server checks the signature with the leaf's public key and attests the agent as
//!    `spiffe://<td>/spire/agent` + the agent path template (default
//!    `/{{ .PluginName }}/{{ .Fingerprint }}`, the leaf's SHA-1 fingerprint), with the
//!    selectors `subject:cn:<CN>`, `ca:fingerprint:<sha1>` per CA certificate of the verified
//!    chain, `serialnumber:<hex>` and `san:<key>:<value>` per URI SAN
//!    `x509pop://<trust domain>/<key>/<value>`. The agent may attest again.
//!
//! JSON follows Go's encoding: byte strings are standard base64, absent members are `null`.
//!
//! What ward does not do: SPIRE's `mode = "spiffe"` (the server's own bundle as the CA), P-384
//! and P-521 keys (aws-lc-rs signs and verifies a SHA-256 digest only with P-256), RSA keys
//! under 2048 bits, and RSA-PSS salt lengths other than the digest's (32) and the maximum (what
//! Go signs with); the agent path template takes the fields listed in
//! [`AgentPathTemplate::parse`], not all of Go's template language.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::digest::{self, Digest, SHA1_FOR_LEGACY_USE_ONLY, SHA256};
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rustls::pki_types::{CertificateDer, TrustAnchor, UnixTime};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use ward_core::TrustDomain;
use webpki::{EndEntityCert, ExtendedKeyUsageValidator, KeyPurposeIdIter};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::field_template::Segment;
use super::{
    AttestedAgent, NodeAttestError, NodeAttestor, PendingChallenge, Refusal, RefusalCode,
    ServerNodeAttestor, Verification,
};

/// The attestation type name.
pub const NAME: &str = "x509pop";

/// The agent path template SPIRE uses by default (mode `external_pki`).
pub const DEFAULT_AGENT_PATH_TEMPLATE: &str = "/{{ .PluginName }}/{{ .Fingerprint }}";

/// Length of each nonce, in bytes.
const NONCE_LEN: usize = 32;

/// A byte string in JSON as Go encodes `[]byte`: standard base64, `null` for none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Base64Bytes(pub Vec<u8>);

impl Serialize for Base64Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Base64Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Some(text) = Option::<String>::deserialize(d)? else {
            return Ok(Self::default());
        };
        STANDARD.decode(text.as_bytes()).map(Self).map_err(|e| {
            let at = match e {
                base64::DecodeError::InvalidByte(at, _)
                | base64::DecodeError::InvalidLastSymbol(at, _) => at,
                base64::DecodeError::InvalidLength(at) => at,
                base64::DecodeError::InvalidPadding => text.len(),
            };
            serde::de::Error::custom(format!("illegal base64 data at input byte {at}"))
        })
    }
}

/// The attestation payload: the certificate chain, leaf first, DER.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestationData {
    /// Leaf first, then intermediates.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub certificates: Vec<Base64Bytes>,
}

fn null_as_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Base64Bytes>, D::Error> {
    Ok(Option::<Vec<Base64Bytes>>::deserialize(d)?.unwrap_or_default())
}

/// A nonce the server sends.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NonceChallenge {
    /// The server's nonce.
    #[serde(default)]
    pub nonce: Base64Bytes,
}

/// The server's challenge: one member set, after the leaf's key type.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    /// For an RSA key.
    #[serde(default)]
    pub rsa_signature: Option<NonceChallenge>,
    /// For an ECDSA key.
    #[serde(default)]
    pub ecdsa_signature: Option<NonceChallenge>,
}

/// An RSA-PSS answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RsaResponse {
    /// The agent's nonce.
    #[serde(default)]
    pub nonce: Base64Bytes,
    /// RSA-PSS (SHA-256) signature of SHA-256(server nonce ‖ agent nonce).
    #[serde(default)]
    pub signature: Base64Bytes,
}

/// An ECDSA answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EcdsaResponse {
    /// The agent's nonce.
    #[serde(default)]
    pub nonce: Base64Bytes,
    /// The signature's `r`, minimal big-endian.
    #[serde(default)]
    pub r: Base64Bytes,
    /// The signature's `s`, minimal big-endian.
    #[serde(default)]
    pub s: Base64Bytes,
}

/// The agent's answer to a [`Challenge`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// For an RSA key.
    #[serde(default)]
    pub rsa_signature: Option<RsaResponse>,
    /// For an ECDSA key.
    #[serde(default)]
    pub ecdsa_signature: Option<EcdsaResponse>,
}

/// A JSON decoding error in Go's words where they are known (a truncated document is
/// `unexpected end of JSON input`).
pub(crate) fn go_json_error(e: &serde_json::Error) -> String {
    match e.classify() {
        serde_json::error::Category::Eof => "unexpected end of JSON input".to_owned(),
        _ => {
            let text = e.to_string();
            // serde's position suffix (" at line 1 column 5") has no Go counterpart.
            match text.rfind(" at line ") {
                Some(i) => text[..i].to_owned(),
                None => text,
            }
        }
    }
}

/// SHA-256(challenge ‖ response), both exactly [`NONCE_LEN`] bytes (SPIRE's texts otherwise).
fn combine_nonces(challenge: &[u8], response: &[u8]) -> Result<Digest, &'static str> {
    if challenge.len() != NONCE_LEN {
        return Err("invalid challenge nonce");
    }
    if response.len() != NONCE_LEN {
        return Err("invalid response nonce");
    }
    let mut ctx = digest::Context::new(&SHA256);
    ctx.update(challenge);
    ctx.update(response);
    Ok(ctx.finish())
}

fn nonce() -> Result<Vec<u8>, aws_lc_rs::error::Unspecified> {
    let mut n = vec![0u8; NONCE_LEN];
    aws_lc_rs::rand::fill(&mut n)?;
    Ok(n)
}

/// The SHA-1 fingerprint of a DER certificate, lowercase hex.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(digest::digest(&SHA1_FOR_LEGACY_USE_ONLY, der))
}

/// Every certificate in PEM `text`, DER.
///
/// # Errors
/// A sentence when the text is not PEM or holds no certificate.
pub fn certificates_from_pem(text: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let blocks = pem::parse_many(text).map_err(|e| e.to_string())?;
    let certs: Vec<Vec<u8>> = blocks
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(pem::Pem::into_contents)
        .collect();
    if certs.is_empty() {
        return Err("no PEM blocks".into());
    }
    Ok(certs)
}

// ---------------------------------------------------------------------------------------------
// Agent side

/// Where the agent's certificate and key are (SPIRE's agent `plugin_data`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct X509popAgentConfig {
    /// PEM private key of the leaf (PKCS#8, SEC 1 or PKCS#1).
    pub private_key_path: PathBuf,
    /// PEM certificate, leaf first (more certificates in the file follow it in the chain).
    pub certificate_path: PathBuf,
    /// PEM intermediates appended to the chain.
    pub intermediates_path: Option<PathBuf>,
}

/// The private key of the leaf.
enum SigningKey {
    EcP256(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

/// The evidence of one attestation: the chain sent and the key that answers.
struct Evidence {
    chain: Vec<Vec<u8>>,
    key: SigningKey,
}

/// The agent side: reads the certificate and key when an attestation starts (so a renewed
/// certificate is picked up), sends the chain, and answers the challenge with the key.
pub struct X509popAttestor {
    config: X509popAgentConfig,
    current: Mutex<Option<Arc<Evidence>>>,
}

impl std::fmt::Debug for X509popAttestor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs.
        f.debug_struct("X509popAttestor").field("config", &self.config).finish_non_exhaustive()
    }
}

fn config_error(reason: impl Into<String>) -> NodeAttestError {
    NodeAttestError::Config { attestor: NAME, reason: reason.into() }
}

fn read(path: &Path) -> Result<Vec<u8>, NodeAttestError> {
    std::fs::read(path).map_err(|source| NodeAttestError::Evidence {
        attestor: NAME,
        path: path.to_owned(),
        source,
    })
}

fn load_key(pem_text: &[u8]) -> Result<SigningKey, String> {
    let blocks = pem::parse_many(pem_text).map_err(|e| e.to_string())?;
    let block = blocks
        .iter()
        .find(|b| b.tag() == "PRIVATE KEY" || b.tag().ends_with(" PRIVATE KEY"))
        .ok_or("tls: failed to find any PEM data in key input")?;
    let der = block.contents();
    if block.tag() != "RSA PRIVATE KEY"
        && let Ok(k) =
            EcdsaKeyPair::from_private_key_der(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der)
    {
        return Ok(SigningKey::EcP256(k));
    }
    if let Ok(k) = RsaKeyPair::from_pkcs8(der).or_else(|_| RsaKeyPair::from_der(der)) {
        return Ok(SigningKey::Rsa(k));
    }
    Err("unsupported private key: ward answers x509pop challenges with P-256 ECDSA and RSA keys"
        .into())
}

impl SigningKey {
    fn public_key(&self) -> &[u8] {
        match self {
            Self::EcP256(k) => k.public_key().as_ref(),
            Self::Rsa(k) => k.public_key().as_ref(),
        }
    }
}

impl X509popAttestor {
    /// An attestor for `config`; the files are read once now, so a configuration that cannot
    /// produce evidence is refused at start-up, as SPIRE refuses it.
    ///
    /// # Errors
    /// [`NodeAttestError`] when a file cannot be read or does not hold a certificate and its
    /// key.
    pub fn new(config: X509popAgentConfig) -> Result<Self, NodeAttestError> {
        let attestor = Self { config, current: Mutex::new(None) };
        attestor.load()?;
        Ok(attestor)
    }

    fn load(&self) -> Result<Evidence, NodeAttestError> {
        let cert_pem = read(&self.config.certificate_path)?;
        let key_pem = read(&self.config.private_key_path)?;
        let mut chain = certificates_from_pem(&cert_pem)
            .map_err(|e| config_error(format!("unable to load keypair: {e}")))?;
        let key =
            load_key(&key_pem).map_err(|e| config_error(format!("unable to load keypair: {e}")))?;
        let leaf = chain.first().ok_or_else(|| config_error("unable to load keypair: no leaf"))?;
        let (_, cert) = X509Certificate::from_der(leaf)
            .map_err(|e| config_error(format!("unable to load keypair: {e}")))?;
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key() {
            return Err(config_error(
                "unable to load keypair: tls: private key does not match public key",
            ));
        }
        if let Some(path) = &self.config.intermediates_path {
            let text = read(path)?;
            let more = certificates_from_pem(&text).map_err(|e| {
                config_error(format!("unable to load intermediate certificates: {e}"))
            })?;
            chain.extend(more);
        }
        Ok(Evidence { chain, key })
    }

    fn evidence(&self) -> Result<Arc<Evidence>, NodeAttestError> {
        let current = self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        current.clone().ok_or_else(|| config_error("a challenge came before the payload"))
    }
}

impl NodeAttestor for X509popAttestor {
    fn name(&self) -> &'static str {
        NAME
    }

    fn payload(&self) -> Result<Vec<u8>, NodeAttestError> {
        let evidence = Arc::new(self.load()?);
        let data = AttestationData {
            certificates: evidence.chain.iter().cloned().map(Base64Bytes).collect(),
        };
        let payload = serde_json::to_vec(&data)
            .map_err(|e| config_error(format!("unable to marshal attestation data: {e}")))?;
        *self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(evidence);
        Ok(payload)
    }

    fn answer(&self, challenge: &[u8]) -> Result<Vec<u8>, NodeAttestError> {
        let evidence = self.evidence()?;
        let challenge: Challenge = serde_json::from_slice(challenge).map_err(|e| {
            config_error(format!("unable to unmarshal challenge: {}", go_json_error(&e)))
        })?;
        let failed =
            |why: &str| config_error(format!("failed to calculate challenge response: {why}"));
        let own = nonce().map_err(|_| failed("no random bytes"))?;
        let response = match &evidence.key {
            SigningKey::EcP256(key) => {
                let c =
                    challenge.ecdsa_signature.ok_or_else(|| failed("expecting ECDSA challenge"))?;
                let digest = combine_nonces(&c.nonce.0, &own).map_err(failed)?;
                let sig = key.sign_digest(&digest).map_err(|_| failed("signing failed"))?;
                let (r, s) = sig.as_ref().split_at(sig.as_ref().len() / 2);
                Response {
                    ecdsa_signature: Some(EcdsaResponse {
                        nonce: Base64Bytes(own),
                        r: Base64Bytes(minimal(r)),
                        s: Base64Bytes(minimal(s)),
                    }),
                    ..Response::default()
                }
            }
            SigningKey::Rsa(key) => {
                let c = challenge.rsa_signature.ok_or_else(|| failed("expecting RSA challenge"))?;
                let digest = combine_nonces(&c.nonce.0, &own).map_err(failed)?;
                let mut sig = vec![0u8; key.public_modulus_len()];
                key.sign_digest(&signature::RSA_PSS_SHA256, &digest, &mut sig)
                    .map_err(|_| failed("signing failed"))?;
                Response {
                    rsa_signature: Some(RsaResponse {
                        nonce: Base64Bytes(own),
                        signature: Base64Bytes(sig),
                    }),
                    ..Response::default()
                }
            }
        };
        serde_json::to_vec(&response)
            .map_err(|e| config_error(format!("unable to marshal challenge response: {e}")))
    }
}

/// Big-endian bytes without leading zeros (Go's `big.Int.Bytes`).
fn minimal(b: &[u8]) -> Vec<u8> {
    let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    b[start..].to_vec()
}

// ---------------------------------------------------------------------------------------------
// Server side

/// One field an agent path template can name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Field {
    PluginName,
    Fingerprint,
    TrustDomain,
    SerialNumberHex,
    CommonName,
    SvidPathTrimmed,
    UriSan(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Field(Field),
}

/// An agent path template: text with `{{ .Field }}` actions, as SPIRE's `agent_path_template`
/// writes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentPathTemplate {
    pieces: Vec<Piece>,
}

/// What a template is rendered with.
struct TemplateData<'a> {
    fingerprint: &'a str,
    trust_domain: &'a str,
    serial_number_hex: &'a str,
    common_name: &'a str,
    uri_sans: &'a BTreeMap<String, String>,
}

impl AgentPathTemplate {
    /// Parses `text`. Actions ward renders: `.PluginName`, `.Fingerprint`, `.TrustDomain`,
    /// `.SerialNumberHex`, `.Subject.CommonName`, `.SVIDPathTrimmed` (always empty: ward has
    /// no `spiffe` mode), `.URISanSelectors.<key>` and `index .URISanSelectors "<key>"`.
    ///
    /// # Errors
    /// A sentence naming the action ward does not render, or SPIRE's text for a template that
    /// does not parse.
    pub fn parse(text: &str) -> Result<Self, String> {
        let segments = super::field_template::split_template(text)
            .ok_or_else(|| format!("failed to parse agent svid template: {text:?}"))?;
        let pieces = segments
            .into_iter()
            .map(|segment| match segment {
                Segment::Text(t) => Ok(Piece::Text(t.to_owned())),
                Segment::Action(action) => Self::field(action).map(Piece::Field),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { pieces })
    }

    fn field(action: &str) -> Result<Field, String> {
        let field = match action {
            ".PluginName" => Field::PluginName,
            ".Fingerprint" => Field::Fingerprint,
            ".TrustDomain" => Field::TrustDomain,
            ".SerialNumberHex" => Field::SerialNumberHex,
            ".Subject.CommonName" => Field::CommonName,
            ".SVIDPathTrimmed" => Field::SvidPathTrimmed,
            other => {
                let key =
                    other.strip_prefix(".URISanSelectors.").map(str::to_owned).or_else(|| {
                        let quoted = other.strip_prefix("index .URISanSelectors ")?.trim();
                        serde_json::from_str::<String>(quoted).ok()
                    });
                match key {
                    Some(k) if !k.is_empty() => Field::UriSan(k),
                    _ => {
                        return Err(format!(
                            "agent_path_template action {{{{ {other} }}}} is not supported: ward \
                             renders .PluginName, .Fingerprint, .TrustDomain, .SerialNumberHex, \
                             .Subject.CommonName, .SVIDPathTrimmed and .URISanSelectors keys"
                        ));
                    }
                }
            }
        };
        Ok(field)
    }

    fn render(&self, data: &TemplateData<'_>) -> Result<String, String> {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Field(Field::PluginName) => out.push_str(NAME),
                Piece::Field(Field::Fingerprint) => out.push_str(data.fingerprint),
                Piece::Field(Field::TrustDomain) => out.push_str(data.trust_domain),
                Piece::Field(Field::SerialNumberHex) => out.push_str(data.serial_number_hex),
                Piece::Field(Field::CommonName) => out.push_str(data.common_name),
                Piece::Field(Field::SvidPathTrimmed) => {}
                Piece::Field(Field::UriSan(k)) => match data.uri_sans.get(k) {
                    Some(v) => out.push_str(v),
                    None => return Err(format!("map has no entry for key {k:?}")),
                },
            }
        }
        Ok(out)
    }
}

/// The server's `x509pop` settings, files already read.
#[derive(Debug, Clone)]
pub struct X509popServerConfig {
    /// The server's trust domain (agent IDs and the `x509pop://<td>/` SAN prefix).
    pub trust_domain: TrustDomain,
    /// The CA certificates chains must end at, DER (SPIRE's `ca_bundle_path(s)`).
    pub ca_certificates: Vec<Vec<u8>>,
    /// `agent_path_template`; `None` is [`DEFAULT_AGENT_PATH_TEMPLATE`].
    pub agent_path_template: Option<String>,
}

/// The server side: verifies chains against the configured CA certificates and checks the
/// proof of possession.
#[derive(Debug)]
pub struct X509popVerifier {
    trust_domain: TrustDomain,
    anchors: Vec<TrustAnchor<'static>>,
    /// The DER of each anchor, same order (their fingerprints are selectors).
    ca_certificates: Vec<Vec<u8>>,
    template: AgentPathTemplate,
}

impl X509popVerifier {
    /// A verifier for `config`.
    ///
    /// # Errors
    /// [`NodeAttestError::Config`] when there is no CA certificate, one does not parse, or the
    /// template is refused.
    pub fn new(config: X509popServerConfig) -> Result<Self, NodeAttestError> {
        if config.ca_certificates.is_empty() {
            return Err(config_error(
                "one of ca_bundle_path or ca_bundle_paths must be configured",
            ));
        }
        let anchors = config
            .ca_certificates
            .iter()
            .map(|der| {
                webpki::anchor_from_trusted_cert(&CertificateDer::from(der.as_slice()))
                    .map(|a| a.to_owned())
                    .map_err(|e| config_error(format!("unable to load trust bundle: {e:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let template = AgentPathTemplate::parse(
            config.agent_path_template.as_deref().unwrap_or(DEFAULT_AGENT_PATH_TEMPLATE),
        )
        .map_err(config_error)?;
        Ok(Self {
            trust_domain: config.trust_domain,
            anchors,
            ca_certificates: config.ca_certificates,
            template,
        })
    }
}

/// Accepts any extended key usage, or none (Go's `ExtKeyUsageAny`, which SPIRE verifies with).
pub(crate) struct AnyUsage;

impl ExtendedKeyUsageValidator for AnyUsage {
    fn validate(&self, _: KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        Ok(())
    }
}

/// The SHA-1 fingerprints of the CA certificates of a verified `path`: its intermediates, then
/// its anchor (by the DER in `anchor_ders`, in the order of `anchors`).
pub(crate) fn path_ca_fingerprints(
    path: &webpki::VerifiedPath<'_>,
    anchors: &[TrustAnchor<'_>],
    anchor_ders: &[Vec<u8>],
) -> Vec<String> {
    let mut out: Vec<String> =
        path.intermediate_certificates().map(|c| fingerprint(c.der().as_ref())).collect();
    let anchor = anchors.iter().position(|a| std::ptr::eq(a, path.anchor()));
    if let Some(der) = anchor.and_then(|i| anchor_ders.get(i)) {
        out.push(fingerprint(der));
    }
    out
}

/// Appends a `ca:fingerprint:<SHA-1>` selector value for each of `fingerprints` not there yet.
pub(crate) fn push_ca_fingerprints(selector_values: &mut Vec<String>, fingerprints: Vec<String>) {
    for fp in fingerprints {
        let value = format!("ca:fingerprint:{fp}");
        if !selector_values.contains(&value) {
            selector_values.push(value);
        }
    }
}

/// Go's RFC 3339 rendering of Unix seconds, UTC.
fn rfc3339(t: UnixTime) -> String {
    let secs = i64::try_from(t.as_secs()).unwrap_or(i64::MAX);
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|d| d.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

/// A chain verification error in the words of Go's `crypto/x509`.
pub(crate) fn go_verify_error(e: &webpki::Error) -> String {
    match e {
        webpki::Error::UnknownIssuer => "x509: certificate signed by unknown authority".into(),
        webpki::Error::CertExpired { time, not_after } => format!(
            "x509: certificate has expired or is not yet valid: current time {} is after {}",
            rfc3339(*time),
            rfc3339(*not_after)
        ),
        webpki::Error::CertNotValidYet { time, not_before } => format!(
            "x509: certificate has expired or is not yet valid: current time {} is before {}",
            rfc3339(*time),
            rfc3339(*not_before)
        ),
        other => format!("x509: {other:?}"),
    }
}

/// The public key of the leaf, as aws-lc-rs verifies with it.
#[derive(Debug, Clone)]
enum LeafKey {
    EcP256(Vec<u8>),
    Rsa(Vec<u8>),
}

const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_RSA: &str = "1.2.840.113549.1.1.1";

/// What the server reads from the leaf before it trusts it.
struct LeafFacts {
    common_name: String,
    serial_hex: String,
    digital_signature: bool,
    key: Result<LeafKey, String>,
    uri_sans: Vec<String>,
}

impl LeafFacts {
    fn parse(der: &[u8]) -> Result<Self, String> {
        let (rest, cert) =
            X509Certificate::from_der(der).map_err(|_| "x509: malformed certificate")?;
        if !rest.is_empty() {
            return Err("x509: trailing data".into());
        }
        let common_name = cert
            .subject()
            .iter_common_name()
            .last()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default()
            .to_owned();
        let mut serial_hex = format!("{:x}", cert.serial);
        if serial_hex.len() % 2 == 1 {
            serial_hex.insert(0, '0');
        }
        let digital_signature =
            matches!(cert.key_usage(), Ok(Some(ku)) if ku.value.digital_signature());
        let spki = cert.public_key();
        let algorithm = spki.algorithm.algorithm.to_id_string();
        let raw = spki.subject_public_key.data.to_vec();
        let key = if algorithm == OID_RSA {
            Ok(LeafKey::Rsa(raw))
        } else if algorithm == OID_EC_PUBLIC_KEY {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string());
            if curve.as_deref() == Some(OID_P256) {
                Ok(LeafKey::EcP256(raw))
            } else {
                Err("ward verifies x509pop proofs from P-256 ECDSA and RSA keys only".to_owned())
            }
        } else {
            Err(format!("unsupported public key type {algorithm}"))
        };
        let uri_sans = match cert.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some((*u).to_owned()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        Ok(Self { common_name, serial_hex, digital_signature, key, uri_sans })
    }

    /// SPIRE's SAN selectors: URI SANs `x509pop://<td>/<key>/<value>` (path decoded, outer
    /// slashes trimmed, split at the first slash); the last one of a key wins.
    fn san_selectors(&self, td: &TrustDomain) -> BTreeMap<String, String> {
        let prefix = format!("x509pop://{td}/");
        let mut out = BTreeMap::new();
        for uri in self.uri_sans.iter().filter(|u| u.starts_with(&prefix)) {
            let Ok(url) = url::Url::parse(uri) else { continue };
            let path = percent_encoding::percent_decode_str(url.path()).decode_utf8_lossy();
            let Some((k, v)) = path.trim_matches('/').split_once('/') else {
                tracing::warn!(uri = %uri, "cannot extract x509pop san selectors");
                continue;
            };
            out.insert(k.to_owned(), v.to_owned());
        }
        out
    }
}

fn refuse(code: RefusalCode, message: impl Into<String>) -> Refusal {
    Refusal::new(code, message)
}

impl ServerNodeAttestor for X509popVerifier {
    fn name(&self) -> &'static str {
        NAME
    }

    fn begin(&self, payload: &[u8], now: i64) -> Result<Verification, Refusal> {
        use RefusalCode::{Internal, InvalidArgument, PermissionDenied};
        let data: AttestationData = serde_json::from_slice(payload).map_err(|e| {
            refuse(InvalidArgument, format!("failed to unmarshal data: {}", go_json_error(&e)))
        })?;
        let Some((leaf_der, intermediates)) = data.certificates.split_first() else {
            return Err(refuse(InvalidArgument, "no certificate to attest"));
        };
        let leaf = LeafFacts::parse(&leaf_der.0).map_err(|e| {
            refuse(InvalidArgument, format!("unable to parse leaf certificate: {e}"))
        })?;
        for (i, der) in intermediates.iter().enumerate() {
            X509Certificate::from_der(&der.0).map_err(|_| {
                refuse(
                    InvalidArgument,
                    format!(
                        "unable to parse intermediate certificate {i}: x509: malformed certificate"
                    ),
                )
            })?;
        }

        let denied = |why: String| {
            refuse(PermissionDenied, format!("certificate verification failed: {why}"))
        };
        let leaf_cert = CertificateDer::from(leaf_der.0.as_slice());
        let ee = EndEntityCert::try_from(&leaf_cert).map_err(|e| denied(go_verify_error(&e)))?;
        let chain: Vec<CertificateDer<'_>> =
            intermediates.iter().map(|c| CertificateDer::from(c.0.as_slice())).collect();
        let at = UnixTime::since_unix_epoch(Duration::from_secs(u64::try_from(now).unwrap_or(0)));
        let path = ee
            .verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &self.anchors,
                &chain,
                at,
                AnyUsage,
                None,
                None,
            )
            .map_err(|e| denied(go_verify_error(&e)))?;
        let ca_fingerprints = path_ca_fingerprints(&path, &self.anchors, &self.ca_certificates);

        let cannot_challenge =
            |why: &str| refuse(Internal, format!("unable to generate challenge: {why}"));
        if !leaf.digital_signature {
            return Err(cannot_challenge("certificate not intended for digital signature use"));
        }
        let key = leaf.key.clone().map_err(|e| cannot_challenge(&e))?;
        let server_nonce = nonce().map_err(|_| cannot_challenge("no random bytes"))?;
        let offered = NonceChallenge { nonce: Base64Bytes(server_nonce.clone()) };
        let challenge = match key {
            LeafKey::EcP256(_) => {
                Challenge { ecdsa_signature: Some(offered), ..Challenge::default() }
            }
            LeafKey::Rsa(_) => Challenge { rsa_signature: Some(offered), ..Challenge::default() },
        };
        let challenge = serde_json::to_vec(&challenge)
            .map_err(|e| refuse(Internal, format!("unable to marshal challenge: {e}")))?;

        // The agent's identity is settled now; it is handed out only once the proof holds.
        let sans = leaf.san_selectors(&self.trust_domain);
        let fp = fingerprint(&leaf_der.0);
        let attested = self
            .template
            .render(&TemplateData {
                fingerprint: &fp,
                trust_domain: self.trust_domain.as_str(),
                serial_number_hex: &leaf.serial_hex,
                common_name: &leaf.common_name,
                uri_sans: &sans,
            })
            .and_then(|path| agent_id(&self.trust_domain, &path))
            .map_err(|e| refuse(Internal, format!("failed to make spiffe id: {e}")))
            .map(|agent_id| {
                let mut selector_values = Vec::new();
                if !leaf.common_name.is_empty() {
                    selector_values.push(format!("subject:cn:{}", leaf.common_name));
                }
                push_ca_fingerprints(&mut selector_values, ca_fingerprints);
                selector_values.push(format!("serialnumber:{}", leaf.serial_hex));
                for (k, v) in &sans {
                    selector_values.push(format!("san:{k}:{v}"));
                }
                AttestedAgent { agent_id, selector_values, can_reattest: true }
            });
        Ok(Verification::Challenge {
            challenge,
            pending: Box::new(PendingProof { key, server_nonce, attested }),
        })
    }
}

/// `spiffe://<td>/spire/agent<path>`, with SPIRE's checks of the path.
fn agent_id(td: &TrustDomain, path: &str) -> Result<ward_core::SpiffeId, String> {
    if !path.starts_with('/') {
        return Err(format!("invalid agent path suffix {path:?}: path must have a leading slash"));
    }
    td.spiffe_id(&format!("/spire/agent{path}"))
        .map_err(|e| format!("invalid agent path suffix {path:?}: {e}"))
}

/// The challenge sent, waiting for the agent's proof.
struct PendingProof {
    key: LeafKey,
    server_nonce: Vec<u8>,
    attested: Result<AttestedAgent, Refusal>,
}

/// RSA-PSS/SHA-256 with the maximum salt length (what Go's `rsa.SignPSS` uses by default).
static RSA_PSS_MAX_SALT: signature::RsaParameters =
    signature::RSA_PSS_2048_8192_SHA256.with_pss_salt_length(signature::RsaPssSaltLength::Max);

impl PendingProof {
    fn check(&self, response: &Response) -> Result<(), String> {
        match &self.key {
            LeafKey::EcP256(public) => {
                let r = response.ecdsa_signature.as_ref().ok_or("expecting ECDSA response")?;
                let digest = combine_nonces(&self.server_nonce, &r.nonce.0)?;
                let failed = || "ECDSA signature verify failed".to_owned();
                let sig = fixed_signature(&r.r.0, &r.s.0, 32).ok_or_else(failed)?;
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, public)
                    .verify_digest(&digest, &sig)
                    .map_err(|_| failed())
            }
            LeafKey::Rsa(public) => {
                let r = response.rsa_signature.as_ref().ok_or("expecting RSA response")?;
                let digest = combine_nonces(&self.server_nonce, &r.nonce.0)?;
                let max = UnparsedPublicKey::new(&RSA_PSS_MAX_SALT, public);
                let digest_salt =
                    UnparsedPublicKey::new(&signature::RSA_PSS_2048_8192_SHA256, public);
                max.verify_digest(&digest, &r.signature.0)
                    .or_else(|_| digest_salt.verify_digest(&digest, &r.signature.0))
                    .map_err(|_| "RSA signature verify failed".to_owned())
            }
        }
    }
}

/// `r ‖ s`, each left-padded to `width` bytes; `None` when one is wider.
fn fixed_signature(r: &[u8], s: &[u8], width: usize) -> Option<Vec<u8>> {
    let r = &r[r.iter().position(|&b| b != 0).unwrap_or(r.len())..];
    let s = &s[s.iter().position(|&b| b != 0).unwrap_or(s.len())..];
    if r.len() > width || s.len() > width {
        return None;
    }
    let mut out = vec![0u8; 2 * width];
    out[width - r.len()..width].copy_from_slice(r);
    out[2 * width - s.len()..].copy_from_slice(s);
    Some(out)
}

impl PendingChallenge for PendingProof {
    fn respond(self: Box<Self>, response: &[u8]) -> Result<Verification, Refusal> {
        let parsed: Response = serde_json::from_slice(response).map_err(|e| {
            refuse(
                RefusalCode::InvalidArgument,
                format!("unable to unmarshal challenge response: {}", go_json_error(&e)),
            )
        })?;
        self.check(&parsed).map_err(|e| {
            refuse(
                RefusalCode::PermissionDenied,
                format!("challenge response verification failed: {e}"),
            )
        })?;
        self.attested.map(Verification::Attested)
    }
}

#[cfg(test)]
pub(crate) mod tests;
