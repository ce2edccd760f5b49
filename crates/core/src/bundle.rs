//! SPIFFE bundles: the X.509 and JWT authorities of a trust domain.
//!
//! [`Bundle`] is the model; the codecs live in submodules:
//! - [`json`]: the SPIFFE bundle format of the SPIFFE Trust Domain and Bundle standard (a
//!   JWKS with `use`, `spiffe_sequence` and `spiffe_refresh_hint`), and the plain JWKS of
//!   JWT authorities the Workload API serves;
//! - [`pem`]: X.509 authorities as `CERTIFICATE` PEM blocks.

use serde::{Deserialize, Serialize};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use crate::spiffe_id::TrustDomain;

pub mod json;
pub mod pem;

pub use json::{BundleDecodeError, BundleEncodeError};
pub use pem::PemError;

/// An X.509 root (or intermediate) CA certificate of a trust domain.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct X509Authority {
    /// The certificate, DER.
    pub der: Vec<u8>,
    /// Marked as compromised: agents rotate away from SVIDs chained to it.
    pub tainted: bool,
}

impl X509Authority {
    /// An untainted authority for the certificate `der`.
    pub fn new(der: Vec<u8>) -> Self {
        Self { der, tainted: false }
    }
}

impl AsRef<[u8]> for X509Authority {
    fn as_ref(&self) -> &[u8] {
        &self.der
    }
}

/// Parses `der` as exactly one DER certificate (no trailing bytes).
pub(crate) fn parse_certificate(der: &[u8]) -> Option<X509Certificate<'_>> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Some(cert),
        _ => None,
    }
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
