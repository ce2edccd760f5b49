use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::*;
use crate::node_attestor::test_http::{http_answer, serve};

const NOW: i64 = 1_800_000_000;
const TENANT: &str = "11111111-2222-3333-4444-555555555555";
const PRINCIPAL: &str = "99999999-8888-7777-6666-555555555555";

/// An ES256 key of the issuer and its JWK.
struct Issuer {
    key: EcdsaKeyPair,
    jwk: serde_json::Value,
}

fn issuer(kid: &str) -> Issuer {
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .unwrap();
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    let point = key.public_key().as_ref().to_vec();
    let jwk = serde_json::json!({
        "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
        "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
    });
    Issuer { key, jwk }
}

impl Issuer {
    fn set(&self) -> String {
        serde_json::json!({ "keys": [self.jwk] }).to_string()
    }

    fn sign(&self, header: &serde_json::Value, claims: &serde_json::Value) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = self.key.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }

    fn payload(&self, claims: &serde_json::Value) -> Vec<u8> {
        let token = self.sign(&serde_json::json!({"alg": "ES256", "kid": "k1"}), claims);
        serde_json::to_vec(&AttestationData { token }).unwrap()
    }
}

fn claims() -> serde_json::Value {
    serde_json::json!({
        "aud": DEFAULT_RESOURCE_ID,
        "iss": format!("https://sts.windows.net/{TENANT}/"),
        "iat": NOW, "nbf": NOW, "exp": NOW + 3600,
        "oid": PRINCIPAL, "sub": PRINCIPAL, "tid": TENANT,
    })
}

fn config(i: &Issuer) -> AzureMsiServerConfig {
    AzureMsiServerConfig {
        trust_domain: TrustDomain::new("example.org").unwrap(),
        tenants: BTreeMap::from([(TENANT.to_owned(), String::new())]),
        agent_path_template: None,
        oidc_issuer: None,
        extra_keys: Some(serde_json::from_str(&i.set()).unwrap()),
    }
}

fn refusal(v: Result<Verification, Refusal>) -> (RefusalCode, String) {
    match v {
        Err(r) => (r.code, r.message),
        Ok(other) => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_valid_token_attests_with_spire_id_and_no_selectors() {
    let i = issuer("k1");
    let v = AzureMsiVerifier::new(config(&i)).unwrap();
    let Ok(Verification::Attested(a)) = v.begin(&i.payload(&claims()), NOW) else {
        panic!("not attested");
    };
    assert_eq!(
        a.agent_id.as_str(),
        format!("spiffe://example.org/spire/agent/azure_msi/{TENANT}/{PRINCIPAL}")
    );
    assert!(a.selector_values.is_empty());
    assert!(!a.can_reattest);
}

#[test]
fn bad_tokens_are_refused_with_spire_codes_and_messages() {
    use RefusalCode::{Internal, InvalidArgument, PermissionDenied};
    let i = issuer("k1");
    let v = AzureMsiVerifier::new(config(&i)).unwrap();
    let r = |payload: &[u8]| refusal(v.begin(payload, NOW));
    assert_eq!(
        r(b"{\"token\":\"\"}"),
        (InvalidArgument, "missing token from attestation data".into())
    );
    assert_eq!(
        r(b"{\"tok"),
        (InvalidArgument, "failed to unmarshal data payload: unexpected end of JSON input".into())
    );
    let no_kid = serde_json::to_vec(&AttestationData {
        token: i.sign(&serde_json::json!({"alg": "ES256"}), &claims()),
    })
    .unwrap();
    assert_eq!(r(&no_kid), (InvalidArgument, "token missing key id".into()));
    let other_kid = serde_json::to_vec(&AttestationData {
        token: i.sign(&serde_json::json!({"alg": "ES256", "kid": "k2"}), &claims()),
    })
    .unwrap();
    assert_eq!(r(&other_kid), (InvalidArgument, "key id \"k2\" not found".into()));
    assert_eq!(
        r(&issuer("k1").payload(&claims())),
        (InvalidArgument, format!("unable to verify token: {CRYPTO_FAILURE}"))
    );
    let hs = serde_json::to_vec(&AttestationData {
        token: i.sign(&serde_json::json!({"alg": "HS256", "kid": "k1"}), &claims()),
    })
    .unwrap();
    assert!(r(&hs).1.starts_with("unable to parse token: unexpected signature algorithm \"HS256\"; expected [\"RS256\" \"RS384\""));

    let mut c = claims();
    c["tid"] = "".into();
    assert_eq!(r(&i.payload(&c)), (Internal, "token missing tenant ID claim".into()));
    let mut c = claims();
    c.as_object_mut().unwrap().remove("sub");
    assert_eq!(r(&i.payload(&c)), (Internal, "token missing subject claim".into()));
    let mut c = claims();
    c["tid"] = "other-tenant".into();
    assert_eq!(
        r(&i.payload(&c)),
        (PermissionDenied, "tenant \"other-tenant\" is not authorized".into())
    );
    let mut c = claims();
    c["aud"] = "https://vault.azure.net".into();
    assert_eq!(
        r(&i.payload(&c)),
        (
            Internal,
            "unable to validate token claims: go-jose/go-jose/jwt: validation failed, invalid \
             audience claim (aud)"
                .into()
        )
    );
    // Five minutes of leeway.
    let good = i.payload(&claims());
    assert!(v.begin(&good, NOW + 3600 + 300).is_ok());
    assert_eq!(
        refusal(v.begin(&good, NOW + 3600 + 301)).1,
        "unable to validate token claims: go-jose/go-jose/jwt: validation failed, token is \
         expired (exp)"
    );
}

#[test]
fn the_key_set_is_discovered_from_the_issuer() {
    let i = issuer("k1");
    let keys = i.set();
    let (keys_addr, key_heads) = serve(vec![http_answer("200 OK", "", &keys)]);
    let discovery = http_answer(
        "200 OK",
        "",
        &format!("{{\"jwks_uri\": \"http://{keys_addr}/discovery/keys\"}}"),
    );
    let (oidc_addr, oidc_heads) = serve(vec![discovery]);
    let mut c = config(&i);
    c.extra_keys = None;
    c.oidc_issuer = Some(format!("http://{oidc_addr}/common/"));
    let v = AzureMsiVerifier::new(c).unwrap();
    assert!(v.begin(&i.payload(&claims()), NOW).is_ok());
    // Kept for an hour: no second fetch.
    assert!(v.begin(&i.payload(&claims()), NOW).is_ok());
    assert!(
        oidc_heads.recv().unwrap().starts_with("GET /common/.well-known/openid-configuration ")
    );
    assert!(key_heads.recv().unwrap().starts_with("GET /discovery/keys "));

    let (down, _h) = serve(vec![http_answer("404 Not Found", "", "nope")]);
    let mut c = config(&i);
    c.oidc_issuer = Some(format!("http://{down}/common/"));
    let v = AzureMsiVerifier::new(c).unwrap();
    assert_eq!(
        refusal(v.begin(&i.payload(&claims()), NOW)),
        (RefusalCode::Internal, "unable to obtain JWKS: unexpected status code 404: nope".into())
    );
}

#[test]
fn the_agent_asks_the_metadata_service_as_spire_does() {
    let (addr, heads) = serve(vec![
        http_answer("200 OK", "", "{\"access_token\": \"a.b.c\", \"expires_in\": \"3599\"}"),
        http_answer("400 Bad Request", "", "{\"error\":\"invalid_resource\"}"),
    ]);
    let a = AzureMsiAttestor::new(AzureMsiAgentConfig {
        resource_id: String::new(),
        metadata_host: addr,
    })
    .unwrap();
    assert_eq!(a.payload().unwrap(), b"{\"token\":\"a.b.c\"}");
    let head = heads.recv().unwrap();
    assert!(
        head.starts_with(
            "GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2F\
             management.azure.com%2F HTTP/1.1\r\n"
        ),
        "{head}"
    );
    assert!(head.to_ascii_lowercase().contains("metadata: true\r\n"), "{head}");
    assert_eq!(
        a.payload().unwrap_err().to_string(),
        "azure_msi: unable to fetch token: unexpected status code 400: {\"error\":\"invalid_resource\"}"
    );
}

#[test]
fn configuration_is_refused_as_spire_refuses_it() {
    let i = issuer("k1");
    let mut c = config(&i);
    c.tenants.clear();
    assert_eq!(
        AzureMsiVerifier::new(c).unwrap_err().to_string(),
        "azure_msi: configuration must have at least one tenant"
    );
}
