use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber, SignatureAlgorithm,
};

use super::*;

pub(crate) const NOW: i64 = 1_800_000_000;

/// A CA valid around [`NOW`] (shared with the other attestors' tests).
pub(crate) struct Ca {
    pub(crate) der: Vec<u8>,
    pub(crate) issuer: Issuer<'static, KeyPair>,
}

pub(crate) fn ca(cn: &str) -> Ca {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = time::OffsetDateTime::from_unix_timestamp(NOW - 3600).unwrap();
    p.not_after = time::OffsetDateTime::from_unix_timestamp(NOW + 86400).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    Ca { der: cert.der().to_vec(), issuer: Issuer::new(p, key) }
}

struct Leaf {
    dir: tempfile::TempDir,
    der: Vec<u8>,
}

impl Leaf {
    fn config(&self) -> X509popAgentConfig {
        X509popAgentConfig {
            private_key_path: self.dir.path().join("key.pem"),
            certificate_path: self.dir.path().join("cert.pem"),
            intermediates_path: None,
        }
    }
}

fn leaf_with(
    ca: &Ca,
    alg: &'static SignatureAlgorithm,
    edit: impl FnOnce(&mut CertificateParams),
) -> Leaf {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, "node-1");
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.serial_number = Some(SerialNumber::from_slice(&[0x0a, 0x1b]));
    p.subject_alt_names = vec![
        SanType::URI("x509pop://example.org/datacenter/us-east-1".try_into().unwrap()),
        SanType::URI("x509pop://other.org/datacenter/no".try_into().unwrap()),
    ];
    p.not_before = time::OffsetDateTime::from_unix_timestamp(NOW - 60).unwrap();
    p.not_after = time::OffsetDateTime::from_unix_timestamp(NOW + 3600).unwrap();
    edit(&mut p);
    let key = KeyPair::generate_for(alg).unwrap();
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
    Leaf { dir, der: cert.der().to_vec() }
}

fn leaf(ca: &Ca) -> Leaf {
    leaf_with(ca, &rcgen::PKCS_ECDSA_P256_SHA256, |_| {})
}

fn td() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

fn verifier(ca: &Ca, template: Option<&str>) -> X509popVerifier {
    X509popVerifier::new(X509popServerConfig {
        trust_domain: td(),
        ca_certificates: vec![ca.der.clone()],
        agent_path_template: template.map(str::to_owned),
    })
    .unwrap()
}

fn challenge(v: &X509popVerifier, payload: &[u8]) -> (Vec<u8>, Box<dyn PendingChallenge>) {
    match v.begin(payload, NOW).unwrap() {
        Verification::Challenge { challenge, pending } => (challenge, pending),
        other => panic!("expected a challenge, got {other:?}"),
    }
}

fn attested(v: Result<Verification, Refusal>) -> AttestedAgent {
    match v.unwrap() {
        Verification::Attested(a) => a,
        other => panic!("expected attestation, got {other:?}"),
    }
}

fn refusal(v: Result<Verification, Refusal>) -> Refusal {
    match v {
        Err(r) => r,
        Ok(other) => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn an_ecdsa_agent_proves_possession_and_gets_spire_selectors() {
    let ca = ca("Test CA");
    let leaf = leaf(&ca);
    let agent = X509popAttestor::new(leaf.config()).unwrap();
    let v = verifier(&ca, None);
    let (c, pending) = challenge(&v, &agent.payload().unwrap());
    let json: serde_json::Value = serde_json::from_slice(&c).unwrap();
    assert_eq!(json["rsa_signature"], serde_json::Value::Null);
    assert_eq!(
        STANDARD.decode(json["ecdsa_signature"]["nonce"].as_str().unwrap()).unwrap().len(),
        32
    );
    let a = attested(pending.respond(&agent.answer(&c).unwrap()));
    let fp = fingerprint(&leaf.der);
    assert_eq!(a.agent_id.as_str(), format!("spiffe://example.org/spire/agent/x509pop/{fp}"));
    assert_eq!(
        a.selector_values,
        vec![
            "subject:cn:node-1".to_owned(),
            format!("ca:fingerprint:{}", fingerprint(&ca.der)),
            "serialnumber:0a1b".to_owned(),
            "san:datacenter:us-east-1".to_owned(),
        ]
    );
    assert!(a.can_reattest);
}

#[test]
fn an_rsa_agent_proves_possession() {
    let ca = ca("Test CA");
    let leaf = leaf_with(&ca, &rcgen::PKCS_RSA_SHA256, |_| {});
    let agent = X509popAttestor::new(leaf.config()).unwrap();
    let v = verifier(&ca, Some("/cn/{{ .Subject.CommonName }}"));
    let (c, pending) = challenge(&v, &agent.payload().unwrap());
    let json: serde_json::Value = serde_json::from_slice(&c).unwrap();
    assert_eq!(json["ecdsa_signature"], serde_json::Value::Null);
    let a = attested(pending.respond(&agent.answer(&c).unwrap()));
    assert_eq!(a.agent_id.as_str(), "spiffe://example.org/spire/agent/cn/node-1");
}

#[test]
fn intermediates_are_sent_and_fingerprinted() {
    let root = ca("Root CA");
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, "Intermediate CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    p.not_before = time::OffsetDateTime::from_unix_timestamp(NOW - 3600).unwrap();
    p.not_after = time::OffsetDateTime::from_unix_timestamp(NOW + 86400).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &root.issuer).unwrap();
    let mid = Ca { der: cert.der().to_vec(), issuer: Issuer::new(p, key) };
    let leaf = leaf(&mid);
    let mids = leaf.dir.path().join("mids.pem");
    std::fs::write(&mids, cert.pem()).unwrap();
    let agent = X509popAttestor::new(X509popAgentConfig {
        intermediates_path: Some(mids),
        ..leaf.config()
    })
    .unwrap();
    let payload = agent.payload().unwrap();
    let data: AttestationData = serde_json::from_slice(&payload).unwrap();
    assert_eq!(data.certificates.len(), 2);
    let v = verifier(&root, None);
    let (c, pending) = challenge(&v, &payload);
    let a = attested(pending.respond(&agent.answer(&c).unwrap()));
    assert!(a.selector_values.contains(&format!("ca:fingerprint:{}", fingerprint(&mid.der))));
    assert!(a.selector_values.contains(&format!("ca:fingerprint:{}", fingerprint(&root.der))));
}

#[test]
fn refuses_a_certificate_from_another_ca() {
    let trusted = ca("Trusted CA");
    let other = ca("Other CA");
    let l = leaf(&other);
    let agent = X509popAttestor::new(l.config()).unwrap();
    let r = refusal(verifier(&trusted, None).begin(&agent.payload().unwrap(), NOW));
    assert_eq!(r.code, RefusalCode::PermissionDenied);
    assert_eq!(
        r.message,
        "certificate verification failed: x509: certificate signed by unknown authority"
    );
}

#[test]
fn refuses_an_expired_certificate_in_go_words() {
    let ca = ca("Test CA");
    let leaf = leaf_with(&ca, &rcgen::PKCS_ECDSA_P256_SHA256, |p| {
        p.not_after = time::OffsetDateTime::from_unix_timestamp(NOW - 30).unwrap();
    });
    let agent = X509popAttestor::new(leaf.config()).unwrap();
    let r = refusal(verifier(&ca, None).begin(&agent.payload().unwrap(), NOW));
    assert_eq!(r.code, RefusalCode::PermissionDenied);
    assert_eq!(
        r.message,
        "certificate verification failed: x509: certificate has expired or is not yet valid: \
         current time 2027-01-15T08:00:00Z is after 2027-01-15T07:59:30Z"
    );
}

#[test]
fn refuses_a_leaf_without_digital_signature_usage() {
    let ca = ca("Test CA");
    let leaf = leaf_with(&ca, &rcgen::PKCS_ECDSA_P256_SHA256, |p| {
        p.key_usages = vec![KeyUsagePurpose::KeyEncipherment];
    });
    let agent = X509popAttestor::new(leaf.config()).unwrap();
    let r = refusal(verifier(&ca, None).begin(&agent.payload().unwrap(), NOW));
    assert_eq!(r.code, RefusalCode::Internal);
    assert_eq!(
        r.message,
        "unable to generate challenge: certificate not intended for digital signature use"
    );
}

#[test]
fn refuses_a_replayed_or_wrong_answer() {
    let ca = ca("Test CA");
    let l = leaf(&ca);
    let agent = X509popAttestor::new(l.config()).unwrap();
    let v = verifier(&ca, None);
    let payload = agent.payload().unwrap();
    let (c1, first) = challenge(&v, &payload);
    let answer = agent.answer(&c1).unwrap();
    attested(first.respond(&answer));
    // The same answer to a new challenge.
    let (_, second) = challenge(&v, &payload);
    let r = refusal(second.respond(&answer));
    assert_eq!(r.code, RefusalCode::PermissionDenied);
    assert_eq!(r.message, "challenge response verification failed: ECDSA signature verify failed");
    // A short nonce, an RSA answer to an ECDSA challenge.
    let (_, third) = challenge(&v, &payload);
    let r =
        refusal(third.respond(br#"{"ecdsa_signature":{"nonce":"AAAA","r":"AQ==","s":"AQ=="}}"#));
    assert_eq!(r.message, "challenge response verification failed: invalid response nonce");
    let (_, fourth) = challenge(&v, &payload);
    let r = refusal(fourth.respond(br#"{"rsa_signature":{"nonce":"AAAA","signature":""}}"#));
    assert_eq!(r.message, "challenge response verification failed: expecting ECDSA response");
}

#[test]
fn refuses_malformed_payloads_with_spire_texts() {
    let ca = ca("Test CA");
    let v = verifier(&ca, None);
    let l = leaf(&ca);
    let agent = X509popAttestor::new(l.config()).unwrap();
    let payload = agent.payload().unwrap();
    let r = refusal(v.begin(&payload[..payload.len() / 2], NOW));
    assert_eq!(r.code, RefusalCode::InvalidArgument);
    assert_eq!(r.message, "failed to unmarshal data: unexpected end of JSON input");
    for empty in [&br#"{}"#[..], br#"{"certificates":null}"#, br#"{"certificates":[]}"#] {
        let r = refusal(v.begin(empty, NOW));
        assert_eq!(
            (r.code, r.message.as_str()),
            (RefusalCode::InvalidArgument, "no certificate to attest")
        );
    }
    let r = refusal(v.begin(br#"{"certificates":["AAAA"]}"#, NOW));
    assert_eq!(r.message, "unable to parse leaf certificate: x509: malformed certificate");
    let r = refusal(v.begin(br#"{"certificates":["*"]}"#, NOW));
    assert_eq!(r.message, "failed to unmarshal data: illegal base64 data at input byte 0");
    let (_, pending) = challenge(&v, &payload);
    let r = refusal(pending.respond(b"{\"ecdsa"));
    assert_eq!(r.code, RefusalCode::InvalidArgument);
    assert_eq!(r.message, "unable to unmarshal challenge response: unexpected end of JSON input");
}

#[test]
fn templates_render_the_fields_spire_documents() {
    let ca = ca("Test CA");
    let l = leaf(&ca);
    let agent = X509popAttestor::new(l.config()).unwrap();
    for (template, path) in [
        ("/{{ .TrustDomain }}/{{.SerialNumberHex}}", "/example.org/0a1b"),
        ("/dc/{{ .URISanSelectors.datacenter }}", "/dc/us-east-1"),
        ("/dc/{{ index .URISanSelectors \"datacenter\" }}/x", "/dc/us-east-1/x"),
    ] {
        let v = verifier(&ca, Some(template));
        let (c, pending) = challenge(&v, &agent.payload().unwrap());
        let a = attested(pending.respond(&agent.answer(&c).unwrap()));
        assert_eq!(a.agent_id.as_str(), format!("spiffe://example.org/spire/agent{path}"));
    }
    let v = verifier(&ca, Some("/dc/{{ .URISanSelectors.rack }}"));
    let (c, pending) = challenge(&v, &agent.payload().unwrap());
    let r = refusal(pending.respond(&agent.answer(&c).unwrap()));
    assert_eq!(r.code, RefusalCode::Internal);
    assert_eq!(r.message, "failed to make spiffe id: map has no entry for key \"rack\"");
    let refused = AgentPathTemplate::parse("/{{ upper .Subject.CommonName }}").unwrap_err();
    assert!(refused.contains("is not supported"), "{refused}");
    assert_eq!(
        AgentPathTemplate::parse("/{{ .Fingerprint").unwrap_err(),
        "failed to parse agent svid template: \"/{{ .Fingerprint\""
    );
}

#[test]
fn the_agent_refuses_a_key_that_is_not_the_certificates() {
    let ca = ca("Test CA");
    let a = leaf(&ca);
    let b = leaf(&ca);
    let config = X509popAgentConfig { private_key_path: b.config().private_key_path, ..a.config() };
    let err = X509popAttestor::new(config).unwrap_err().to_string();
    assert_eq!(err, "x509pop: unable to load keypair: tls: private key does not match public key");
    assert!(!format!("{:?}", X509popAttestor::new(a.config()).unwrap()).contains("PRIVATE"));
}

#[test]
fn wire_types_match_go_json() {
    let c = Challenge {
        ecdsa_signature: Some(NonceChallenge { nonce: Base64Bytes(vec![1, 2, 3]) }),
        ..Challenge::default()
    };
    assert_eq!(
        serde_json::to_string(&c).unwrap(),
        r#"{"rsa_signature":null,"ecdsa_signature":{"nonce":"AQID"}}"#
    );
    let d = AttestationData { certificates: vec![Base64Bytes(vec![0xff])] };
    assert_eq!(serde_json::to_string(&d).unwrap(), r#"{"certificates":["/w=="]}"#);
}
