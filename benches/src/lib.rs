//! Shared fixtures for ward's criterion benches.
//!
//! The benches themselves live in `benches/benches/*.rs`, one file per crate, with ids
//! `<crate>/<operation>`. Baselines (raw aws-lc-rs operations) sit next to the operations
//! they bound so results read as ratios.

use std::time::{Duration, SystemTime};

use ward_ca::{JwtSigner, KeyType, PrivateKey, X509Ca, build_csr, new_key_id};
use ward_core::{SpiffeId, TrustDomain};

/// A loaded CA and a workload's CSR, as the server holds them when a CSR arrives.
pub struct CaFixture {
    /// A P-256 self-signed CA for `example.org`, valid for a day.
    pub ca: X509Ca,
    /// A P-256 JWT signer valid as long as the CA.
    pub jwt: JwtSigner,
    /// The workload key the CSR is for.
    pub workload_key: PrivateKey,
    /// A DER CSR signed by `workload_key`.
    pub csr: Vec<u8>,
    /// The registration entry's SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// The registration entry's DNS names.
    pub dns_names: Vec<String>,
    /// The time the fixture was made.
    pub now: SystemTime,
}

impl CaFixture {
    /// Builds the fixture.
    ///
    /// # Panics
    /// If key generation or CA creation fails (benches have no one to report to).
    #[allow(clippy::expect_used)]
    pub fn new() -> Self {
        let now = SystemTime::now();
        let td = TrustDomain::new("example.org").expect("trust domain");
        let ca_key = PrivateKey::generate(KeyType::EcP256).expect("CA key");
        let ca = X509Ca::self_signed(ca_key, &td, Duration::from_secs(86_400), now).expect("CA");
        let jwt_key = PrivateKey::generate(KeyType::EcP256).expect("JWT key");
        let jwt = JwtSigner::new(jwt_key, new_key_id().expect("kid"), ca.not_after_unix())
            .expect("JWT signer");
        let workload_key = PrivateKey::generate(KeyType::EcP256).expect("workload key");
        let csr = build_csr(&workload_key).expect("CSR");
        let spiffe_id = SpiffeId::parse("spiffe://example.org/ns/prod/sa/web").expect("id");
        Self {
            ca,
            jwt,
            workload_key,
            csr,
            spiffe_id,
            dns_names: vec!["web.prod.svc.cluster.local".to_owned()],
            now,
        }
    }
}

impl Default for CaFixture {
    fn default() -> Self {
        Self::new()
    }
}
