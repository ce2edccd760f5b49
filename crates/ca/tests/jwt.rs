#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! JWT-SVIDs checked with the `jsonwebtoken` crate.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use ward_ca::{JwtSigner, KeyError, KeyType, PrivateKey, SignError, new_key_id};
use ward_core::SpiffeId;
use ward_testkit::ManualClock;
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

#[derive(Debug, serde::Deserialize)]
struct Claims {
    sub: String,
    aud: Vec<String>,
    exp: i64,
    iat: i64,
    iss: Option<String>,
}

fn decoding_key(spki_der: &[u8]) -> DecodingKey {
    let (_, spki) = SubjectPublicKeyInfo::from_der(spki_der).unwrap();
    match spki.parsed().unwrap() {
        PublicKey::EC(p) => {
            let d = p.data();
            let n = (d.len() - 1) / 2;
            DecodingKey::from_ec_components(
                &URL_SAFE_NO_PAD.encode(&d[1..=n]),
                &URL_SAFE_NO_PAD.encode(&d[n + 1..]),
            )
            .unwrap()
        }
        PublicKey::RSA(r) => {
            // JWK integers are unsigned big-endian without leading zero bytes.
            let unsigned =
                |b: &[u8]| b.iter().skip_while(|x| **x == 0).copied().collect::<Vec<_>>();
            DecodingKey::from_rsa_components(
                &URL_SAFE_NO_PAD.encode(unsigned(r.modulus)),
                &URL_SAFE_NO_PAD.encode(unsigned(r.exponent)),
            )
            .unwrap()
        }
        other => panic!("{other:?}"),
    }
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64
}

#[test]
fn every_key_type_signs_tokens_jsonwebtoken_accepts() {
    let now = SystemTime::now();
    let id = SpiffeId::parse("spiffe://example.org/ns/prod/sa/web").unwrap();
    for (kt, alg) in [
        (KeyType::EcP256, Algorithm::ES256),
        (KeyType::EcP384, Algorithm::ES384),
        (KeyType::Rsa2048, Algorithm::RS256),
        (KeyType::Rsa4096, Algorithm::RS256),
    ] {
        let kid = new_key_id().unwrap();
        let signer =
            JwtSigner::new(PrivateKey::generate(kt).unwrap(), kid.clone(), unix(now) + 86_400)
                .unwrap();
        let auds = vec!["spiffe://example.org/backend".to_owned(), "other \"quoted\"".to_owned()];
        let jwt = signer.sign(&id, &auds, now, Duration::from_secs(300)).unwrap();
        assert_eq!(jwt.issued_at, unix(now));
        assert_eq!(jwt.expires_at, unix(now) + 300);

        let header = jsonwebtoken::decode_header(&jwt.token).unwrap();
        assert_eq!(header.alg, alg, "{kt}");
        assert_eq!(header.kid.as_deref(), Some(kid.as_str()));
        assert_eq!(header.typ.as_deref(), Some("JWT"));

        let mut v = Validation::new(alg);
        v.set_audience(&["spiffe://example.org/backend"]);
        let data =
            jsonwebtoken::decode::<Claims>(&jwt.token, &decoding_key(signer.public_key_der()), &v)
                .unwrap_or_else(|e| panic!("{kt}: {e:?}"));
        assert_eq!(data.claims.sub, id.as_str());
        assert_eq!(data.claims.aud, auds);
        assert_eq!((data.claims.iat, data.claims.exp), (jwt.issued_at, jwt.expires_at));
        assert_eq!(data.claims.iss, None);

        // Another key does not verify it.
        let stranger = PrivateKey::generate(kt).unwrap();
        let err = jsonwebtoken::decode::<Claims>(
            &jwt.token,
            &decoding_key(stranger.public_key_der()),
            &v,
        )
        .unwrap_err();
        assert_eq!(*err.kind(), jsonwebtoken::errors::ErrorKind::InvalidSignature, "{kt}");
    }
}

#[test]
fn audience_is_always_an_array_and_issuer_is_optional() {
    let now = SystemTime::now();
    let id = SpiffeId::parse("spiffe://example.org/w").unwrap();
    let signer = JwtSigner::new(
        PrivateKey::generate(KeyType::EcP256).unwrap(),
        "kid1".to_owned(),
        unix(now) + 3600,
    )
    .unwrap()
    .with_issuer("https://oidc.example.org");
    let jwt = signer.sign(&id, &["one".to_owned()], now, Duration::from_secs(60)).unwrap();
    let payload = jwt.token.split('.').nth(1).unwrap();
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    assert_eq!(claims["aud"], serde_json::json!(["one"]));
    assert_eq!(claims["iss"], "https://oidc.example.org");
    assert_eq!(claims["sub"], "spiffe://example.org/w");
    let sig = URL_SAFE_NO_PAD.decode(jwt.token.split('.').nth(2).unwrap()).unwrap();
    assert_eq!(sig.len(), 64, "ES256 signatures are fixed-width r||s");
}

#[test]
fn expiry_is_capped_at_the_key_and_errors_are_typed() {
    let clock = ManualClock::default();
    let start = unix(ward_core::Clock::now(&clock));
    let id = SpiffeId::parse("spiffe://example.org/w").unwrap();
    let aud = vec!["a".to_owned()];
    let signer =
        JwtSigner::new(PrivateKey::generate(KeyType::EcP256).unwrap(), "k".to_owned(), start + 600)
            .unwrap();
    let t = clock.advance(Duration::from_secs(500));
    let jwt = signer.sign(&id, &aud, t, Duration::from_secs(300)).unwrap();
    assert_eq!(jwt.expires_at, start + 600);

    assert_eq!(
        signer.sign(&id, &[], t, Duration::from_secs(60)).unwrap_err(),
        SignError::NoAudience
    );
    assert_eq!(signer.sign(&id, &aud, t, Duration::ZERO).unwrap_err(), SignError::ZeroTtl);
    let long = SpiffeId::parse(&format!("spiffe://example.org/{}", "x".repeat(2048))).unwrap();
    assert_eq!(
        signer.sign(&long, &aud, t, Duration::from_secs(60)).unwrap_err(),
        SignError::IdTooLong { len: long.as_str().len(), max: 2048 }
    );
    let t = clock.advance(Duration::from_secs(100));
    assert_eq!(
        signer.sign(&id, &aud, t, Duration::from_secs(60)).unwrap_err(),
        SignError::KeyExpired { expires_at: start + 600 }
    );
    assert!(matches!(
        JwtSigner::new(PrivateKey::generate(KeyType::EcP256).unwrap(), String::new(), start),
        Err(KeyError::InvalidKeyId(s)) if s.is_empty()
    ));
}

#[test]
fn key_ids_are_32_alphanumerics_and_authority_is_published() {
    let a = new_key_id().unwrap();
    let b = new_key_id().unwrap();
    assert_ne!(a, b);
    for k in [&a, &b] {
        assert_eq!(k.len(), 32);
        assert!(k.bytes().all(|c| c.is_ascii_alphanumeric()), "{k}");
    }
    let key = PrivateKey::generate(KeyType::EcP384).unwrap();
    let signer = JwtSigner::new(key.clone(), a.clone(), 1234).unwrap();
    let auth = signer.authority();
    assert_eq!(auth.key_id, a);
    assert_eq!(auth.public_key_der, key.public_key_der());
    assert_eq!(auth.expires_at, 1234);
    assert!(!auth.tainted);
}
