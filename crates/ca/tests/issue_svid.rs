#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! Runs the `issue_svid` example's logic and checks its output with tools nobody here wrote:
//! the `openssl` binary and the `jsonwebtoken` crate.

#[path = "../examples/issue_svid.rs"]
#[allow(dead_code)]
mod issue_svid;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};

#[derive(Debug, serde::Deserialize)]
struct Claims {
    sub: String,
    aud: Vec<String>,
    exp: i64,
    iat: i64,
}

#[test]
fn example_output_verifies_with_openssl_and_jsonwebtoken() {
    let tmp = tempfile::tempdir().unwrap();
    let issued = issue_svid::run(tmp.path()).unwrap();
    let dir = &issued.dir;
    for f in ["bundle.pem", "svid.pem", "svid.key.pem", "jwt.txt", "bundle.jwks.json"] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    let mode = std::fs::metadata(dir.join("svid.key.pem")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    let out = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(dir.join("bundle.pem"))
        .arg(dir.join("svid.pem"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "openssl: {stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.trim_end().ends_with(": OK"), "{stdout}");

    // The key file matches the certificate (openssl agrees the public keys are equal).
    let pubkey = |args: &[&str]| {
        let o = Command::new("openssl").args(args).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        o.stdout
    };
    let cert_pub =
        pubkey(&["x509", "-noout", "-pubkey", "-in", dir.join("svid.pem").to_str().unwrap()]);
    let key_pub = pubkey(&["pkey", "-pubout", "-in", dir.join("svid.key.pem").to_str().unwrap()]);
    assert_eq!(cert_pub, key_pub);

    // JWT-SVID against the JWT authority of the SPIFFE bundle.
    let jwks: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("bundle.jwks.json")).unwrap()).unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    let x509 = keys.iter().find(|k| k["use"] == "x509-svid").unwrap();
    assert_eq!(x509["x5c"].as_array().unwrap().len(), 1);
    assert!(x509.get("kid").is_none());
    let jwk = keys.iter().find(|k| k["use"] == "jwt-svid").unwrap();
    assert_eq!(jwk["kid"], issued.key_id.as_str());
    assert_eq!(jwk["kty"], "EC");
    assert_eq!(jwk["crv"], "P-256");
    let key =
        DecodingKey::from_ec_components(jwk["x"].as_str().unwrap(), jwk["y"].as_str().unwrap())
            .unwrap();
    let token = std::fs::read_to_string(dir.join("jwt.txt")).unwrap();
    let token = token.trim();
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.alg, Algorithm::ES256);
    assert_eq!(header.kid.as_deref(), Some(issued.key_id.as_str()));
    assert_eq!(header.typ.as_deref(), Some("JWT"));
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&[issue_svid::DEMO_AUDIENCE]);
    validation.set_required_spec_claims(&["exp", "sub", "aud"]);
    let data = jsonwebtoken::decode::<Claims>(token, &key, &validation).unwrap();
    assert_eq!(data.claims.sub, issue_svid::DEMO_ID);
    assert_eq!(data.claims.aud, vec!["demo".to_owned()]);
    assert_eq!(data.claims.exp - data.claims.iat, 300);

    // ward-core's own codec reads the bundle back.
    let td = ward_core::TrustDomain::new("example.org").unwrap();
    let bundle = ward_core::Bundle::from_spiffe_json(
        td,
        &std::fs::read(dir.join("bundle.jwks.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(bundle.x509_authorities.len(), 1);
    assert_eq!(bundle.jwt_authorities[0].key_id, issued.key_id);
    assert_eq!(bundle.sequence_number, 1);

    // A different audience is refused.
    let mut wrong = Validation::new(Algorithm::ES256);
    wrong.set_audience(&["other"]);
    let err = jsonwebtoken::decode::<Claims>(token, &key, &wrong).unwrap_err();
    assert_eq!(*err.kind(), jsonwebtoken::errors::ErrorKind::InvalidAudience);
}
