//! Certificates and keys made at test time for this crate's unit tests.
#![allow(dead_code, reason = "helpers shared by several test modules; not every module uses each")]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SignatureAlgorithm,
};

/// Start of every test certificate's validity window.
pub(crate) const NOT_BEFORE: (i32, u8, u8) = (2024, 1, 1);
/// End of every test certificate's validity window.
pub(crate) const NOT_AFTER: (i32, u8, u8) = (2034, 1, 1);

/// Unix seconds of a date at midnight UTC.
pub(crate) fn unix(date: (i32, u8, u8)) -> i64 {
    rcgen::date_time_ymd(date.0, date.1, date.2).unix_timestamp()
}

/// A `SystemTime` at Unix second `secs`.
pub(crate) fn at(secs: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap())
}

/// "Now" for tests: inside every test certificate's window.
pub(crate) fn now() -> SystemTime {
    at(unix((2025, 6, 1)))
}

/// A key pair for `alg` (RSA keys are 2048 bits).
pub(crate) fn key(alg: &'static SignatureAlgorithm) -> KeyPair {
    if alg == &rcgen::PKCS_RSA_SHA256 {
        KeyPair::generate_rsa_for(alg, rcgen::RsaKeySize::_2048).unwrap()
    } else {
        KeyPair::generate_for(alg).unwrap()
    }
}

/// Parameters for a CA certificate named `cn` valid from [`NOT_BEFORE`] to [`NOT_AFTER`].
pub(crate) fn ca_params(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = rcgen::date_time_ymd(NOT_BEFORE.0, NOT_BEFORE.1, NOT_BEFORE.2);
    params.not_after = rcgen::date_time_ymd(NOT_AFTER.0, NOT_AFTER.1, NOT_AFTER.2);
    params
}

/// Parameters for an X509-SVID leaf with one URI SAN `uri`.
pub(crate) fn leaf_params(uri: &str) -> CertificateParams {
    let mut params = ca_params("leaf");
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
    params
}

/// A self-signed CA: its DER and an issuer for signing with it.
pub(crate) fn root(
    cn: &str,
    alg: &'static SignatureAlgorithm,
) -> (Vec<u8>, Issuer<'static, KeyPair>) {
    let params = ca_params(cn);
    let key = key(alg);
    let der = params.self_signed(&key).unwrap().der().to_vec();
    (der, Issuer::new(params, key))
}

/// Signs `params` (with a fresh P-256 key) by `issuer`; returns the DER and an issuer for the
/// new certificate.
pub(crate) fn issue(
    params: CertificateParams,
    issuer: &Issuer<'_, KeyPair>,
) -> (Vec<u8>, Issuer<'static, KeyPair>) {
    let key = key(&rcgen::PKCS_ECDSA_P256_SHA256);
    let der = params.signed_by(&key, issuer).unwrap().der().to_vec();
    (der, Issuer::new(params, key))
}

/// Self-signed CA certificates of each supported key kind: P-256, P-384, RSA 2048.
pub(crate) fn ca_pool() -> &'static [Vec<u8>] {
    static POOL: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    POOL.get_or_init(|| {
        [&rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_ECDSA_P384_SHA384, &rcgen::PKCS_RSA_SHA256]
            .into_iter()
            .enumerate()
            .map(|(i, alg)| root(&format!("pool ca {i}"), alg).0)
            .collect()
    })
}

/// JWT signing keys of each supported kind (P-256, P-384, P-521, RSA 2048) as
/// `(PKCS#8 private key, PKIX public key DER)`.
pub(crate) fn jwt_key_pool() -> &'static [(Vec<u8>, Vec<u8>)] {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::{self, KeyPair as _};
    static POOL: OnceLock<Vec<(Vec<u8>, Vec<u8>)>> = OnceLock::new();
    POOL.get_or_init(|| {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let mut pool = Vec::new();
        for alg in [
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
            &signature::ECDSA_P521_SHA512_FIXED_SIGNING,
        ] {
            let pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
            let kp = signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref()).unwrap();
            let spki = kp.public_key().as_der().unwrap().as_ref().to_vec();
            pool.push((pkcs8.as_ref().to_vec(), spki));
        }
        let rsa = signature::RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let pkcs8 = rsa.as_der().unwrap().as_ref().to_vec();
        pool.push((pkcs8, rsa.public_key().as_der().unwrap().as_ref().to_vec()));
        pool
    })
}
