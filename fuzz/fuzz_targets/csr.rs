//! CSR parsing, signature checking and X509-SVID signing: never panics on any input, and
//! whatever is accepted yields a leaf that parses and carries the CSR's key.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use ward_ca::{KeyType, PrivateKey, SvidParams, X509Ca};
use ward_core::{SpiffeId, TrustDomain};
use x509_parser::prelude::FromDer;

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600)
}

fn ca() -> &'static X509Ca {
    static CA: OnceLock<X509Ca> = OnceLock::new();
    CA.get_or_init(|| {
        let key = PrivateKey::generate(KeyType::EcP256).expect("CA key");
        let td = TrustDomain::new("example.org").expect("trust domain");
        X509Ca::self_signed(key, &td, Duration::from_secs(86_400), now()).expect("CA")
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = ward_ca::check_public_key(data);
    let Ok(key) = ward_ca::verify_csr(data) else { return };
    let again =
        ward_ca::check_public_key(key.spki_der).expect("accepted CSR key passes the SPKI check");
    assert_eq!(again.kind, key.kind);

    let id = SpiffeId::parse("spiffe://example.org/fuzz").expect("id");
    let params = SvidParams { spiffe_id: &id, dns_names: &[], ttl: Duration::from_secs(60) };
    let leaf = ca().sign_x509_svid_from_csr(data, &params, now()).expect("accepted CSR signs");
    let (rest, cert) =
        x509_parser::certificate::X509Certificate::from_der(&leaf).expect("leaf parses");
    assert!(rest.is_empty());
    assert_eq!(cert.public_key().raw, key.spki_der);
});
