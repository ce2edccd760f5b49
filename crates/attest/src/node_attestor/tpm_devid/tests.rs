//! The server side against evidence from a TPM modelled in software: the keys live in
//! aws-lc-rs, the structures are encoded as a TPM encodes them, and `activate` does what
//! `TPM2_ActivateCredential` does. A real TPM's evidence (swtpm driven by spire-agent) is
//! checked by the process-level suite `tests/tests/tpm_devid_attestation.rs`.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeySize, OaepPrivateDecryptingKey, PrivateDecryptingKey};
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SigningKey as _};

use super::super::x509pop::tests::{Ca, NOW, ca};
use super::tpm::*;
use super::*;

fn leaf_params(cn: Option<&str>) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    if let Some(cn) = cn {
        p.distinguished_name.push(DnType::CommonName, cn);
    }
    p.not_before = time::OffsetDateTime::from_unix_timestamp(NOW - 60).unwrap();
    p.not_after = time::OffsetDateTime::from_unix_timestamp(NOW + 3600).unwrap();
    p
}

fn public_rsa(n: &[u8], attributes: u32, symmetric: bool, scheme: Option<(u16, u16)>) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend(ALG_RSA.to_be_bytes());
    b.extend(ALG_SHA256.to_be_bytes());
    b.extend(attributes.to_be_bytes());
    put_sized(&mut b, &[]);
    if symmetric {
        b.extend(ALG_AES.to_be_bytes());
        b.extend(128u16.to_be_bytes());
        b.extend(ALG_CFB.to_be_bytes());
    } else {
        b.extend(ALG_NULL.to_be_bytes());
    }
    match scheme {
        Some((alg, hash)) => {
            b.extend(alg.to_be_bytes());
            b.extend(hash.to_be_bytes());
        }
        None => b.extend(ALG_NULL.to_be_bytes()),
    }
    b.extend(2048u16.to_be_bytes());
    b.extend(0u32.to_be_bytes());
    put_sized(&mut b, n);
    b
}

fn public_p256(point: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend(ALG_ECC.to_be_bytes());
    b.extend(ALG_SHA256.to_be_bytes());
    b.extend((ATTR_SIGN | 0x72).to_be_bytes());
    put_sized(&mut b, &[]);
    b.extend(ALG_NULL.to_be_bytes());
    b.extend(ALG_ECDSA.to_be_bytes());
    b.extend(ALG_SHA256.to_be_bytes());
    b.extend(0x0003u16.to_be_bytes()); // TPM_ECC_NIST_P256
    b.extend(ALG_NULL.to_be_bytes());
    put_sized(&mut b, &point[1..33]);
    put_sized(&mut b, &point[33..65]);
    b
}

fn certify_info(name: &[u8]) -> Vec<u8> {
    let mut b = GENERATED_VALUE.to_be_bytes().to_vec();
    b.extend(ST_ATTEST_CERTIFY.to_be_bytes());
    put_sized(&mut b, b"signer");
    put_sized(&mut b, &[]);
    b.extend([0u8; 17]);
    b.extend(7u64.to_be_bytes());
    put_sized(&mut b, name);
    put_sized(&mut b, name);
    b
}

/// A TPM in software: an EK (decrypting), an AK (signing) and a DevID key with its chain.
struct Tpm {
    devid_ca: Ca,
    ek_ca: Ca,
    devid_key: KeyPair,
    devid_cert: Vec<u8>,
    ek: PrivateDecryptingKey,
    ek_cert: Vec<u8>,
    ak: aws_lc_rs::rsa::KeyPair,
}

fn rsa_modulus(spki: &[u8]) -> Vec<u8> {
    let (_, info) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki).unwrap();
    match info.parsed().unwrap() {
        PublicKey::RSA(k) => trim(k.modulus).to_vec(),
        _ => panic!("not RSA"),
    }
}

impl Tpm {
    fn new() -> Self {
        let devid_ca = ca("DevID Root");
        let ek_ca = ca("TPM Manufacturer");
        let devid_key = KeyPair::generate().unwrap();
        let devid_cert =
            leaf_params(Some("node-1")).signed_by(&devid_key, &devid_ca.issuer).unwrap();
        let ek = PrivateDecryptingKey::generate(KeySize::Rsa2048).unwrap();
        let ek_cert = Self::ek_cert_for(&ek, &ek_ca);
        let ak = aws_lc_rs::rsa::KeyPair::generate(KeySize::Rsa2048).unwrap();
        Self { devid_cert: devid_cert.der().to_vec(), devid_ca, ek_ca, devid_key, ek, ek_cert, ak }
    }

    fn ek_cert_for(ek: &PrivateDecryptingKey, ca: &Ca) -> Vec<u8> {
        let spki = ek.public_key().as_der().unwrap();
        let public = rcgen::SubjectPublicKeyInfo::from_der(spki.as_ref()).unwrap();
        leaf_params(None).signed_by(&public, &ca.issuer).unwrap().der().to_vec()
    }

    fn ek_pub(&self) -> Vec<u8> {
        let spki = self.ek.public_key().as_der().unwrap();
        // The default EK template: restricted decryption key with AES-128-CFB.
        public_rsa(&rsa_modulus(spki.as_ref()), 0x0003_00b2, true, None)
    }

    fn ak_pub(&self) -> Vec<u8> {
        let n = self.ak.public_key().modulus().big_endian_without_leading_zero().to_vec();
        public_rsa(&n, ATTR_SIGN | 0x0001_0072, false, Some((ALG_RSASSA, ALG_SHA256)))
    }

    fn devid_pub(&self) -> Vec<u8> {
        public_p256(self.devid_key.public_key_raw())
    }

    fn ak_sign(&self, data: &[u8]) -> Vec<u8> {
        let mut sig = vec![0u8; self.ak.public_modulus_len()];
        self.ak.sign(&signature::RSA_PKCS1_SHA256, &SystemRandom::new(), data, &mut sig).unwrap();
        let mut b = ALG_RSASSA.to_be_bytes().to_vec();
        b.extend(ALG_SHA256.to_be_bytes());
        put_sized(&mut b, &sig);
        b
    }

    /// `TPM2_Certify` of the DevID key by the AK.
    fn certify(&self, public: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let name = Public::decode(public).unwrap().name().unwrap();
        let info = certify_info(&name);
        let sig = self.ak_sign(&info);
        (info, sig)
    }

    fn request(&self) -> AttestationRequest {
        let (info, sig) = self.certify(&self.devid_pub());
        AttestationRequest {
            devid_cert: vec![Base64Bytes(self.devid_cert.clone())],
            devid_pub: Base64Bytes(self.devid_pub()),
            ek_cert: Base64Bytes(self.ek_cert.clone()),
            ek_pub: Base64Bytes(self.ek_pub()),
            ak_pub: Base64Bytes(self.ak_pub()),
            certified_devid: Base64Bytes(info),
            certification_signature: Base64Bytes(sig),
        }
    }

    /// `TPM2_ActivateCredential` with the EK, for an object named `name`.
    fn activate(&self, name: &[u8], c: &CredActivation) -> Result<Vec<u8>, String> {
        let oaep = OaepPrivateDecryptingKey::new(self.ek.clone()).unwrap();
        let mut seed = vec![0u8; oaep.min_output_size()];
        let seed = oaep
            .decrypt(
                &aws_lc_rs::rsa::OAEP_SHA256_MGF1SHA256,
                &c.secret.0,
                &mut seed,
                Some(b"IDENTITY\0"),
            )
            .map_err(|_| "seed")?
            .to_vec();
        let mut r = Reader::new(&c.credential.0);
        let integrity = r.sized()?.to_vec();
        let mut enc = r.rest().to_vec();
        let hmac_key = kdfa(ALG_SHA256, &seed, "INTEGRITY", &[], &[], 256)?;
        let mut mac = aws_lc_rs::hmac::Context::with_key(&aws_lc_rs::hmac::Key::new(
            aws_lc_rs::hmac::HMAC_SHA256,
            &hmac_key,
        ));
        mac.update(&enc);
        mac.update(name);
        if mac.sign().as_ref() != integrity {
            return Err("integrity check failed".into());
        }
        let key = kdfa(ALG_SHA256, &seed, "STORAGE", name, &[], 128)?;
        cfb_decrypt(&key, &mut enc)?;
        Ok(Reader::new(&enc).sized()?.to_vec())
    }

    fn answer(&self, challenge: &[u8]) -> ChallengeResponse {
        let c: ChallengeRequest = serde_json::from_slice(challenge).unwrap();
        let name = Public::decode(&self.ak_pub()).unwrap().name().unwrap();
        let cred = self.activate(&name, c.cred_activation.as_ref().unwrap()).unwrap();
        ChallengeResponse {
            devid: Base64Bytes(self.devid_key.sign(&c.devid.0).unwrap()),
            cred_activation: Base64Bytes(cred),
        }
    }

    fn verifier(&self) -> TpmDevidVerifier {
        verifier(&self.devid_ca, &self.ek_ca)
    }
}

fn verifier(devid_ca: &Ca, ek_ca: &Ca) -> TpmDevidVerifier {
    TpmDevidVerifier::new(TpmDevidServerConfig {
        trust_domain: TrustDomain::new("example.org").unwrap(),
        devid_ca_certificates: vec![devid_ca.der.clone()],
        endorsement_ca_certificates: vec![ek_ca.der.clone()],
    })
    .unwrap()
}

fn begin(
    v: &TpmDevidVerifier,
    req: &AttestationRequest,
) -> Result<(Vec<u8>, Box<dyn PendingChallenge>), Refusal> {
    match v.begin(&serde_json::to_vec(req).unwrap(), NOW)? {
        Verification::Challenge { challenge, pending } => Ok((challenge, pending)),
        Verification::Attested(a) => panic!("attested without a challenge: {a:?}"),
    }
}

fn refusal<T>(r: Result<T, Refusal>) -> (RefusalCode, String) {
    match r {
        Err(e) => (e.code, e.message),
        Ok(_) => panic!("expected a refusal"),
    }
}

fn invalid_arg(message: &str) -> (RefusalCode, String) {
    (RefusalCode::InvalidArgument, message.to_owned())
}

#[test]
fn attests_with_spire_agent_id_and_selectors() {
    let tpm = Tpm::new();
    let (challenge, pending) = begin(&tpm.verifier(), &tpm.request()).unwrap();
    let text: serde_json::Value = serde_json::from_slice(&challenge).unwrap();
    assert_eq!(STANDARD.decode(text["DevID"].as_str().unwrap()).unwrap().len(), 32);
    assert!(text["CredActivation"]["Credential"].is_string());
    assert!(text["CredActivation"]["Secret"].is_string());

    let answer = serde_json::to_vec(&tpm.answer(&challenge)).unwrap();
    let Verification::Attested(a) = pending.respond(&answer).unwrap() else {
        panic!("expected an attested agent");
    };
    assert_eq!(
        a.agent_id.to_string(),
        format!("spiffe://example.org/spire/agent/tpm_devid/{}", fingerprint(&tpm.devid_cert))
    );
    assert_eq!(
        a.selector_values,
        vec![
            "subject:cn:node-1".to_owned(),
            "issuer:cn:DevID Root".to_owned(),
            format!("ca:fingerprint:{}", fingerprint(&tpm.devid_ca.der)),
        ]
    );
    assert!(a.can_reattest);
}

#[test]
fn json_has_go_default_member_names() {
    let tpm = Tpm::new();
    let text: serde_json::Value = serde_json::to_value(tpm.request()).unwrap();
    let mut keys: Vec<&str> = text.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "AKPub",
            "CertificationSignature",
            "CertifiedDevID",
            "DevIDCert",
            "DevIDPub",
            "EKCert",
            "EKPub"
        ]
    );
    let r: ChallengeResponse =
        serde_json::from_str(r#"{"DevID":"AQI=","CredActivation":null}"#).unwrap();
    assert_eq!(r.devid.0, [1, 2]);
    assert!(r.cred_activation.0.is_empty());
}

#[test]
fn the_credential_opens_only_for_the_certified_attestation_key() {
    let tpm = Tpm::new();
    let (challenge, _) = begin(&tpm.verifier(), &tpm.request()).unwrap();
    let c: ChallengeRequest = serde_json::from_slice(&challenge).unwrap();
    let mut other = Public::decode(&tpm.ak_pub()).unwrap().name().unwrap();
    other[5] ^= 1;
    assert_eq!(
        tpm.activate(&other, c.cred_activation.as_ref().unwrap()),
        Err("integrity check failed".to_owned())
    );
}

#[test]
fn refuses_chains_from_other_cas() {
    let tpm = Tpm::new();
    let other = ca("Other");
    assert_eq!(
        refusal(begin(&verifier(&other, &tpm.ek_ca), &tpm.request())),
        invalid_arg(
            "unable to verify DevID signature: verification failed: x509: certificate signed by \
             unknown authority"
        )
    );
    assert_eq!(
        refusal(begin(&verifier(&tpm.devid_ca, &other), &tpm.request())),
        invalid_arg(
            "cannot verify EK signature: endorsement certificate verification failed: x509: \
             certificate signed by unknown authority"
        )
    );
}

#[test]
fn refuses_an_ek_certificate_of_another_key() {
    let tpm = Tpm::new();
    let mut req = tpm.request();
    let other = PrivateDecryptingKey::generate(KeySize::Rsa2048).unwrap();
    req.ek_cert = Base64Bytes(Tpm::ek_cert_for(&other, &tpm.ek_ca));
    assert_eq!(
        refusal(begin(&tpm.verifier(), &req)),
        invalid_arg(
            "public key in EK certificate differs from public key created via EK template: \
             modulus mismatch"
        )
    );
}

#[test]
fn refuses_a_forged_or_foreign_certification() {
    let tpm = Tpm::new();
    let v = tpm.verifier();

    let mut forged = tpm.request();
    let intruder = Tpm::new();
    forged.certification_signature = Base64Bytes(intruder.ak_sign(&forged.certified_devid.0));
    assert_eq!(
        refusal(begin(&v, &forged)),
        invalid_arg(
            "cannot verify that DevID is in the same TPM than AK: crypto/rsa: verification error"
        )
    );

    // The AK certified some other key than the DevID key presented.
    let mut foreign = tpm.request();
    let (info, sig) = tpm.certify(&intruder.devid_pub());
    foreign.certified_devid = Base64Bytes(info);
    foreign.certification_signature = Base64Bytes(sig);
    assert_eq!(
        refusal(begin(&v, &foreign)),
        invalid_arg("cannot verify that DevID is in the same TPM than AK: certify failed")
    );
}

#[test]
fn refuses_wrong_answers_to_the_challenges() {
    let tpm = Tpm::new();
    let v = tpm.verifier();

    // A signature of an earlier challenge's nonce (a replay).
    let (first, _) = begin(&v, &tpm.request()).unwrap();
    let replayed = tpm.answer(&first);
    let (second, pending) = begin(&v, &tpm.request()).unwrap();
    let mut answer = tpm.answer(&second);
    answer.devid = replayed.devid;
    assert_eq!(
        refusal(pending.respond(&serde_json::to_vec(&answer).unwrap())),
        invalid_arg("devID challenge verification failed: x509: ECDSA verification failure")
    );

    // Another node's DevID key.
    let intruder = Tpm::new();
    let (challenge, pending) = begin(&v, &tpm.request()).unwrap();
    let mut answer = tpm.answer(&challenge);
    let c: ChallengeRequest = serde_json::from_slice(&challenge).unwrap();
    answer.devid = Base64Bytes(intruder.devid_key.sign(&c.devid.0).unwrap());
    assert_eq!(
        refusal(pending.respond(&serde_json::to_vec(&answer).unwrap())),
        invalid_arg("devID challenge verification failed: x509: ECDSA verification failure")
    );

    // A wrong credential.
    let (challenge, pending) = begin(&v, &tpm.request()).unwrap();
    let mut answer = tpm.answer(&challenge);
    answer.cred_activation.0[0] ^= 1;
    assert_eq!(
        refusal(pending.respond(&serde_json::to_vec(&answer).unwrap())),
        invalid_arg("credential activation failed: nonces are different")
    );

    let (_, pending) = begin(&v, &tpm.request()).unwrap();
    assert_eq!(
        refusal(pending.respond(b"{\"DevID\":")),
        invalid_arg("unable to unmarshall challenges response: unexpected end of JSON input")
    );
}

#[test]
fn refuses_incomplete_or_malformed_payloads() {
    let tpm = Tpm::new();
    let v = tpm.verifier();
    let full = serde_json::to_vec(&tpm.request()).unwrap();
    assert_eq!(
        refusal(v.begin(&full[..full.len() / 2], NOW)),
        invalid_arg("unable to unmarshall attestation data: unexpected end of JSON input")
    );
    assert_eq!(refusal(v.begin(b"", NOW)), invalid_arg("missing attestation payload"));
    assert_eq!(refusal(v.begin(b"{}", NOW)), invalid_arg("no DevID certificate to attest"));
    let mut bad = tpm.request();
    bad.devid_cert = vec![Base64Bytes(b"junk".to_vec())];
    assert_eq!(
        refusal(begin(&v, &bad)),
        invalid_arg("unable to parse DevID certificate: x509: malformed certificate")
    );

    type Edit = fn(&mut AttestationRequest);
    let cases: [(Edit, &str); 4] = [
        (|r| r.ak_pub.0.clear(), "missing attestation key public blob"),
        (|r| r.devid_pub.0.clear(), "missing DevID key public blob"),
        (|r| r.ek_cert.0.clear(), "missing endorsement certificate"),
        (|r| r.ek_pub.0.clear(), "missing endorsement key public blob"),
    ];
    for (edit, message) in cases {
        let mut r = tpm.request();
        edit(&mut r);
        assert_eq!(refusal(begin(&v, &r)), invalid_arg(message));
    }
    let mut r = tpm.request();
    r.ek_pub.0.truncate(10);
    assert_eq!(refusal(begin(&v, &r)), invalid_arg("cannot decode endorsement key public blob"));
    let mut r = tpm.request();
    r.ak_pub.0.truncate(10);
    assert_eq!(
        refusal(begin(&v, &r)),
        invalid_arg("cannot decode attestation key public blob: unexpected EOF")
    );
}

#[test]
fn kdfa_and_cfb_round_trip() {
    let a = kdfa(ALG_SHA256, b"seed", "STORAGE", b"ctx", &[], 128).unwrap();
    let b = kdfa(ALG_SHA256, b"seed", "STORAGE", b"ctx", &[], 128).unwrap();
    assert_eq!(a.len(), 16);
    assert_eq!(a, b);
    assert_ne!(a, kdfa(ALG_SHA256, b"seed", "INTEGRITY", b"ctx", &[], 128).unwrap());
    assert_eq!(kdfa(ALG_SHA256, b"seed", "STORAGE", b"ctx", &[], 300).unwrap().len(), 38);
    let mut data = b"eighteen bytes!!!!".to_vec();
    cfb_encrypt(&a, &mut data).unwrap();
    assert_ne!(&data, b"eighteen bytes!!!!");
    cfb_decrypt(&a, &mut data).unwrap();
    assert_eq!(&data, b"eighteen bytes!!!!");
}
