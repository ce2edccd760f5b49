use aws_lc_rs::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rcgen::{CertificateParams, KeyPair};

use super::*;
use crate::node_attestor::test_http::{http_answer, serve};

const NOW: i64 = 1_800_000_000;

/// A Google-like signing key: its certificate (DER) and the key that signs tokens.
struct Signer {
    der: Vec<u8>,
    pem: String,
    key: RsaKeyPair,
}

fn signer() -> Signer {
    let key = KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let cert =
        CertificateParams::new(vec!["signer".to_owned()]).unwrap().self_signed(&key).unwrap();
    Signer {
        der: cert.der().to_vec(),
        pem: cert.pem(),
        key: RsaKeyPair::from_pkcs8(&key.serialize_der()).unwrap(),
    }
}

fn claims() -> serde_json::Value {
    serde_json::json!({
        "aud": AUDIENCE,
        "azp": "1234",
        "email": "1234-compute@developer.gserviceaccount.com",
        "exp": NOW + 3600,
        "iat": NOW,
        "iss": "https://accounts.google.com",
        "sub": "1234",
        "google": {"compute_engine": {
            "instance_creation_timestamp": 1_700_000_000,
            "instance_id": "8765",
            "instance_name": "blog-server",
            "project_id": "project-123",
            "project_number": 42,
            "zone": "us-west1-b"
        }}
    })
}

fn token_with(s: &Signer, header: &serde_json::Value, claims: &serde_json::Value) -> Vec<u8> {
    let signed = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut sig = vec![0u8; s.key.public_modulus_len()];
    s.key
        .sign(&RSA_PKCS1_SHA256, &aws_lc_rs::rand::SystemRandom::new(), signed.as_bytes(), &mut sig)
        .unwrap();
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig)).into_bytes()
}

fn token(s: &Signer, claims: &serde_json::Value) -> Vec<u8> {
    token_with(s, &serde_json::json!({"alg": "RS256", "kid": "k1", "typ": "JWT"}), claims)
}

fn config(s: &Signer) -> GcpIitServerConfig {
    GcpIitServerConfig {
        trust_domain: TrustDomain::new("example.org").unwrap(),
        project_id_allow_list: vec!["project-123".to_owned()],
        agent_path_template: None,
        certs_url: None,
        extra_certificates: BTreeMap::from([("k1".to_owned(), s.der.clone())]),
        instance_metadata: None,
    }
}

fn attested(v: Result<Verification, Refusal>) -> AttestedAgent {
    match v {
        Ok(Verification::Attested(a)) => a,
        other => panic!("expected an attested agent, got {other:?}"),
    }
}

fn refusal(v: Result<Verification, Refusal>) -> (RefusalCode, String) {
    match v {
        Err(r) => (r.code, r.message),
        Ok(other) => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_valid_token_attests_with_spire_id_and_selectors() {
    let s = signer();
    let v = GcpIitVerifier::new(config(&s)).unwrap();
    let a = attested(v.begin(&token(&s, &claims()), NOW));
    assert_eq!(a.agent_id.as_str(), "spiffe://example.org/spire/agent/gcp_iit/project-123/8765");
    assert_eq!(
        a.selector_values,
        ["project-id:project-123", "zone:us-west1-b", "instance-name:blog-server"]
    );
    assert!(!a.can_reattest);

    let mut c = config(&s);
    c.agent_path_template = Some("/{{ .Zone }}/{{ .ProjectNumber }}/{{ .InstanceName }}".into());
    let a = attested(GcpIitVerifier::new(c).unwrap().begin(&token(&s, &claims()), NOW));
    assert_eq!(a.agent_id.as_str(), "spiffe://example.org/spire/agent/us-west1-b/42/blog-server");
}

#[test]
fn bad_tokens_are_refused_with_spire_codes_and_go_jose_messages() {
    use RefusalCode::{InvalidArgument, PermissionDenied};
    let s = signer();
    let v = GcpIitVerifier::new(config(&s)).unwrap();
    let good = token(&s, &claims());

    let mut forged = good.clone();
    let last = forged.len() - 2;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let crypto = "failed to validate the identity token signature: go-jose/go-jose: error in \
                  cryptographic primitive";
    assert_eq!(refusal(v.begin(&forged, NOW)), (InvalidArgument, crypto.to_owned()));
    // Signed by a key that is not Google's, under Google's key ID.
    assert_eq!(refusal(v.begin(&token(&signer(), &claims()), NOW)).1, crypto);

    let unknown_kid =
        token_with(&s, &serde_json::json!({"alg": "RS256", "kid": "other"}), &claims());
    assert_eq!(
        refusal(v.begin(&unknown_kid, NOW)),
        (
            InvalidArgument,
            "failed to validate the identity token signature: go-jose/go-jose: JWK with \
             matching kid not found in JWK Set"
                .to_owned()
        )
    );
    let hs = token_with(&s, &serde_json::json!({"alg": "HS256", "kid": "k1"}), &claims());
    assert_eq!(
        refusal(v.begin(&hs, NOW)),
        (
            InvalidArgument,
            "unable to parse the identity token: unexpected signature algorithm \"HS256\"; \
             expected [\"RS256\"]"
                .to_owned()
        )
    );
    assert_eq!(
        refusal(v.begin(&good[..good.len() / 2], NOW)),
        (
            InvalidArgument,
            "unable to parse the identity token: go-jose/go-jose: compact JWS format must have \
             three parts"
                .to_owned()
        )
    );
    assert_eq!(
        refusal(v.begin(b"e30.b!.c", NOW)).1,
        "unable to parse the identity token: illegal base64 data at input byte 1"
    );

    let mut c = claims();
    c["aud"] = serde_json::json!(["someone-else"]);
    assert_eq!(
        refusal(v.begin(&token(&s, &c), NOW)),
        (
            PermissionDenied,
            "failed to validate the identity token claims: go-jose/go-jose/jwt: validation \
             failed, invalid audience claim (aud)"
                .to_owned()
        )
    );
    // Expired: one minute of leeway, as go-jose allows.
    let expired = "failed to validate the identity token claims: go-jose/go-jose/jwt: \
                   validation failed, token is expired (exp)"
        .to_owned();
    assert!(matches!(v.begin(&good, NOW + 3600 + 60), Ok(Verification::Attested(_))));
    assert_eq!(refusal(v.begin(&good, NOW + 3600 + 61)), (PermissionDenied, expired));

    let mut c = claims();
    c["google"]["compute_engine"]["project_id"] = "project-456".into();
    assert_eq!(
        refusal(v.begin(&token(&s, &c), NOW)),
        (
            PermissionDenied,
            "identity token project ID \"project-456\" is not in the allow list".to_owned()
        )
    );
}

#[test]
fn the_agent_asks_the_metadata_server_as_spire_does() {
    let (addr, heads) = serve(vec![
        http_answer("200 OK", "", "the.token.bytes"),
        http_answer("404 Not Found", "", "no"),
    ]);
    let a = GcpIitAttestor::new(GcpIitAgentConfig {
        identity_token_host: addr.clone(),
        service_account: "sa@developer.gserviceaccount.com".into(),
    })
    .unwrap();
    assert_eq!(a.payload().unwrap(), b"the.token.bytes");
    let head = heads.recv().unwrap();
    assert!(
        head.starts_with(
            "GET /computeMetadata/v1/instance/service-accounts/sa@developer.gserviceaccount.com/\
             identity?audience=spire-gcp-node-attestor&format=full HTTP/1.1\r\n"
        ),
        "{head}"
    );
    assert!(head.to_ascii_lowercase().contains("metadata-flavor: google\r\n"), "{head}");
    let e = a.payload().unwrap_err().to_string();
    assert_eq!(e, "gcp_iit: unable to retrieve valid identity token: unexpected status code: 404");
    assert!(matches!(a.answer(b"x"), Err(NodeAttestError::UnexpectedChallenge)));
    assert_eq!(
        GcpIitAgentConfig::default().identity_token_url(),
        "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/\
         identity?audience=spire-gcp-node-attestor&format=full"
    );
}

#[test]
fn google_certificates_are_fetched_and_kept_until_they_expire() {
    let s = signer();
    let certs = serde_json::json!({"k1": s.pem}).to_string();
    let later = httpdate::fmt_http_date(SystemTime::now() + std::time::Duration::from_secs(3600));
    let (addr, heads) = serve(vec![
        http_answer("200 OK", "", &certs),
        http_answer("200 OK", &format!("Expires: {later}\r\n"), &certs),
        http_answer("500 Internal Server Error", "", ""),
    ]);
    let mut c = config(&s);
    c.extra_certificates.clear();
    c.certs_url = Some(format!("http://{addr}/oauth2/v1/certs"));
    let v = GcpIitVerifier::new(c).unwrap();
    let t = token(&s, &claims());
    // No Expires: fetched again next time; then kept until the Expires date.
    attested(v.begin(&t, NOW));
    attested(v.begin(&t, NOW));
    attested(v.begin(&t, NOW));
    assert!(heads.recv().unwrap().starts_with("GET /oauth2/v1/certs HTTP/1.1"));
    assert!(heads.recv().unwrap().starts_with("GET /oauth2/v1/certs HTTP/1.1"));
    assert!(heads.try_recv().is_err());

    let (addr, _heads) = serve(vec![http_answer("503 Service Unavailable", "", "")]);
    let mut c = config(&s);
    c.certs_url = Some(format!("http://{addr}/certs"));
    let v = GcpIitVerifier::new(c).unwrap();
    assert_eq!(
        refusal(v.begin(&t, NOW)),
        (RefusalCode::Internal, "unexpected status code: 503".to_owned())
    );
}

#[test]
fn configuration_is_refused_as_spire_refuses_it() {
    let s = signer();
    let mut c = config(&s);
    c.project_id_allow_list.clear();
    assert_eq!(
        GcpIitVerifier::new(c).unwrap_err().to_string(),
        "gcp_iit: projectid_allow_list is required"
    );
    let mut c = config(&s);
    c.agent_path_template = Some("/{{ .Nope }}".into());
    assert!(GcpIitVerifier::new(c).unwrap_err().to_string().contains("not supported"));
    assert!(parse_certificates(b"{\"k\": \"nope\"}").unwrap_err().contains("malformed PEM block"));
}
