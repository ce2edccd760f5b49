//! Valid inputs made once per fuzzing process, for targets that mutate them: random bytes
//! rarely reach past the first parsing step, mutated valid inputs reach every check.
//!
//! Each target includes this file with `#[path = "fixture.rs"] mod fixture;` and uses only
//! some of it.
#![allow(dead_code)]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use ward_core::{Bundle, JwtAuthority, TrustDomain, X509Authority};

/// The SPIFFE ID of the fixture leaf and token.
pub const ID: &str = "spiffe://example.org/workload";
/// The audience of the fixture token.
pub const AUDIENCE: &str = "svc";

/// The time every fixture is valid at.
pub fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_750_000_000)
}

/// A root, an intermediate, a leaf, the bundle trusting them and a signed JWT-SVID.
pub struct Fixture {
    /// Root CA, DER.
    pub root: Vec<u8>,
    /// Intermediate CA, DER.
    pub intermediate: Vec<u8>,
    /// X509-SVID leaf for [`ID`], DER.
    pub leaf: Vec<u8>,
    /// Bundle of example.org: the root and the JWT key `k1`.
    pub bundle: Bundle,
    /// ES256 JWT-SVID for [`ID`] and [`AUDIENCE`], signed by `k1`.
    pub token: String,
}

fn params(cn: &str, ca: bool) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2034, 1, 1);
    if ca {
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    } else {
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.subject_alt_names = vec![SanType::URI(ID.try_into().expect("ascii uri"))];
    }
    p
}

/// The fixture, made on first use.
pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let root_key = KeyPair::generate().expect("key");
        let root_params = params("root", true);
        let root = root_params.self_signed(&root_key).expect("root").der().to_vec();
        let root_issuer = Issuer::new(root_params, root_key);
        let int_key = KeyPair::generate().expect("key");
        let int_params = params("intermediate", true);
        let intermediate =
            int_params.signed_by(&int_key, &root_issuer).expect("intermediate").der().to_vec();
        let int_issuer = Issuer::new(int_params, int_key);
        let leaf_key = KeyPair::generate().expect("key");
        let leaf = params("leaf", false).signed_by(&leaf_key, &int_issuer).expect("leaf");

        let rng = SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("jwt key");
        let jwt_key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
            .expect("jwt key");
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256","kid":"k1","typ":"JWT"}"#);
        let claims = URL_SAFE_NO_PAD
            .encode(format!(r#"{{"sub":"{ID}","aud":["{AUDIENCE}"],"exp":1750000300}}"#));
        let input = format!("{header}.{claims}");
        let sig = jwt_key.sign(&rng, input.as_bytes()).expect("sign");
        let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()));

        let mut bundle = Bundle::new(TrustDomain::new("example.org").expect("valid"));
        bundle.x509_authorities.push(X509Authority::new(root.clone()));
        bundle.jwt_authorities.push(JwtAuthority {
            public_key_der: jwt_key.public_key().as_der().expect("spki").as_ref().to_vec(),
            key_id: "k1".into(),
            expires_at: 0,
            tainted: false,
        });
        bundle.sequence_number = 3;
        bundle.refresh_hint = 60;
        Fixture { root, intermediate, leaf: leaf.der().to_vec(), bundle, token }
    })
}

/// `base` with edits applied: `edits` is read as 3-byte records of a big-endian position
/// (modulo the length) and a byte to XOR there.
pub fn mutate(base: &[u8], edits: &[u8]) -> Vec<u8> {
    let mut out = base.to_vec();
    if out.is_empty() {
        return out;
    }
    for edit in edits.chunks_exact(3) {
        let pos = usize::from(u16::from_be_bytes([edit[0], edit[1]])) % out.len();
        out[pos] ^= edit[2];
    }
    out
}
