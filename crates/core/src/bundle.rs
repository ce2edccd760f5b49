//! SPIFFE bundles: the X.509 and JWT authorities of a trust domain.

use serde::{Deserialize, Serialize};

use crate::spiffe_id::TrustDomain;

/// An X.509 root (or intermediate) CA certificate of a trust domain.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct X509Authority {
    /// The certificate, DER.
    pub der: Vec<u8>,
    /// Marked as compromised: agents rotate away from SVIDs chained to it.
    pub tainted: bool,
}

/// A JWT signing key of a trust domain.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct JwtAuthority {
    /// The public key, PKIX (SubjectPublicKeyInfo) DER.
    pub public_key_der: Vec<u8>,
    /// The key id (`kid`), never empty.
    pub key_id: String,
    /// Unix seconds when the key expires; 0 when unknown.
    pub expires_at: i64,
    /// Marked as compromised.
    pub tainted: bool,
}

/// A trust domain's bundle.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Bundle {
    /// Whose bundle this is.
    pub trust_domain: TrustDomain,
    /// X.509 authorities.
    pub x509_authorities: Vec<X509Authority>,
    /// JWT authorities.
    pub jwt_authorities: Vec<JwtAuthority>,
    /// How often consumers should refresh, in seconds; 0 when unset.
    pub refresh_hint: i64,
    /// Bumped on every change.
    pub sequence_number: u64,
}

impl Bundle {
    /// An empty bundle for `trust_domain`.
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self {
            trust_domain,
            x509_authorities: Vec::new(),
            jwt_authorities: Vec::new(),
            refresh_hint: 0,
            sequence_number: 0,
        }
    }
}
