//! A trust domain's signing authorities for tests: a real ward-ca X.509 CA and JWT key.

use std::time::{Duration, SystemTime};

use ward_ca::{JwtSigner, KeyType, PrivateKey, SignedJwt, SvidParams, X509Ca, new_key_id};
use ward_core::{Bundle, SpiffeId, TrustDomain, X509Authority};
use zeroize::Zeroizing;

/// A self-signed X.509 CA and a JWT signing key for one trust domain, valid for an hour from
/// creation, made with ward-ca as a server makes them.
#[derive(Debug)]
pub struct TestAuthority {
    trust_domain: TrustDomain,
    ca: X509Ca,
    jwt: JwtSigner,
}

/// An X509-SVID and its key, as an agent holds them.
#[derive(Debug)]
pub struct TestSvid {
    /// The certificate chain, DER, leaf first.
    pub chain: Vec<Vec<u8>>,
    /// The private key, PKCS#8 DER.
    pub private_key: Zeroizing<Vec<u8>>,
    /// The leaf's NotAfter.
    pub expires_at: SystemTime,
}

impl TestAuthority {
    /// Authorities for `trust_domain` (P-256 keys).
    ///
    /// # Panics
    /// If `trust_domain` is not a trust domain name or key generation fails.
    pub fn new(trust_domain: &str) -> Self {
        let now = SystemTime::now();
        let trust_domain = TrustDomain::new(trust_domain).expect("trust domain");
        let ca = X509Ca::self_signed(key(), &trust_domain, Duration::from_secs(3600), now)
            .expect("self-signed ca");
        let expires = ward_core::clock::unix_seconds(now) + 3600;
        let jwt = JwtSigner::new(key(), new_key_id().expect("key id"), expires).expect("signer");
        Self { trust_domain, ca, jwt }
    }

    /// The CA certificate, DER.
    pub fn ca_der(&self) -> &[u8] {
        self.ca.cert_der()
    }

    /// The JWT signer.
    pub fn jwt(&self) -> &JwtSigner {
        &self.jwt
    }

    /// The trust domain's bundle: the CA certificate and the JWT key.
    pub fn bundle(&self) -> Bundle {
        let mut bundle = Bundle::new(self.trust_domain.clone());
        bundle.x509_authorities = vec![X509Authority::new(self.ca.cert_der().to_vec())];
        bundle.jwt_authorities = vec![self.jwt.authority()];
        bundle
    }

    /// A fresh key and an X509-SVID for `spiffe_id` with a ten-minute lifetime.
    ///
    /// # Panics
    /// If `spiffe_id` is not in the trust domain, or signing fails.
    pub fn x509_svid(&self, spiffe_id: &SpiffeId) -> TestSvid {
        let key = key();
        let ttl = Duration::from_secs(600);
        let now = SystemTime::now();
        let params = SvidParams { spiffe_id, dns_names: &[], ttl };
        let leaf = self.ca.sign_x509_svid(key.public_key_der(), &params, now).expect("svid");
        TestSvid {
            chain: vec![leaf],
            private_key: Zeroizing::new(key.pkcs8_der().to_vec()),
            expires_at: now + ttl,
        }
    }

    /// A JWT-SVID for `spiffe_id` and `audience`, valid for five minutes.
    ///
    /// # Errors
    /// The signer's refusal (no audience, ...), as text.
    pub fn jwt_svid(&self, spiffe_id: &SpiffeId, audience: &[String]) -> Result<SignedJwt, String> {
        self.jwt
            .sign(spiffe_id, audience, SystemTime::now(), Duration::from_secs(300))
            .map_err(|e| e.to_string())
    }
}

fn key() -> PrivateKey {
    PrivateKey::generate(KeyType::EcP256).expect("key generation")
}
