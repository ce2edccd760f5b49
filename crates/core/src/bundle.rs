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

/// Why an authority a caller supplies (AppendBundle, federated bundles) is refused. The texts
/// are those of Go's `crypto/x509` that SPIRE reports, where ward can tell the same case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorityError {
    /// The X.509 authority is not exactly one DER certificate.
    #[error("x509: malformed certificate")]
    MalformedCertificate,
    /// The JWT public key is not a DER `SubjectPublicKeyInfo`.
    #[error("x509: malformed public key: {0}")]
    MalformedPublicKey(crate::jwk::JwkError),
    /// The JWT public key's algorithm is neither EC nor RSA.
    #[error("x509: unknown public key algorithm")]
    UnknownPublicKeyAlgorithm,
    /// The JWT authority has no key ID.
    #[error("missing key ID")]
    MissingKeyId,
}

impl X509Authority {
    /// An authority from caller-supplied bytes, as SPIRE's `ParseX509Authorities` takes it:
    /// the certificate must parse, and the taint flag is never taken from the caller
    /// (only a LocalAuthority taint sets it).
    ///
    /// # Errors
    /// [`AuthorityError::MalformedCertificate`] unless `der` is exactly one certificate.
    pub fn from_caller(der: Vec<u8>) -> Result<Self, AuthorityError> {
        if parse_certificate(&der).is_none() {
            return Err(AuthorityError::MalformedCertificate);
        }
        Ok(Self::new(der))
    }
}

impl JwtAuthority {
    /// An authority from caller-supplied parts, as SPIRE's `ParseJWTAuthorities` takes it:
    /// the public key must parse as PKIX (checked first), the key ID must be set, and the
    /// taint flag is never taken from the caller.
    ///
    /// # Errors
    /// [`AuthorityError::MalformedPublicKey`], [`AuthorityError::UnknownPublicKeyAlgorithm`]
    /// or [`AuthorityError::MissingKeyId`].
    pub fn from_caller(
        public_key_der: Vec<u8>,
        key_id: String,
        expires_at: i64,
    ) -> Result<Self, AuthorityError> {
        match crate::jwk::JwkPublicKey::from_spki_der(&public_key_der) {
            Ok(_) => {}
            Err(crate::jwk::JwkError::UnsupportedAlgorithm) => {
                return Err(AuthorityError::UnknownPublicKeyAlgorithm);
            }
            Err(e) => return Err(AuthorityError::MalformedPublicKey(e)),
        }
        if key_id.is_empty() {
            return Err(AuthorityError::MissingKeyId);
        }
        Ok(Self { public_key_der, key_id, expires_at, tainted: false })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{ca_pool, jwt_key_pool};

    #[test]
    fn caller_x509_authorities_must_be_one_certificate_and_are_never_tainted() {
        let der = ca_pool()[0].clone();
        assert_eq!(X509Authority::from_caller(der.clone()), Ok(X509Authority::new(der.clone())));
        let mut trailing = der.clone();
        trailing.push(0);
        for bad in [Vec::new(), b"not a certificate".to_vec(), trailing] {
            let err = X509Authority::from_caller(bad).unwrap_err();
            assert_eq!(err, AuthorityError::MalformedCertificate);
            assert_eq!(err.to_string(), "x509: malformed certificate");
        }
    }

    #[test]
    fn caller_jwt_authorities_need_a_pkix_key_then_a_key_id() {
        let spki = jwt_key_pool()[0].1.clone();
        let ok = JwtAuthority::from_caller(spki.clone(), "kid".into(), 5).unwrap();
        assert_eq!((ok.key_id.as_str(), ok.expires_at, ok.tainted), ("kid", 5, false));
        assert_eq!(
            JwtAuthority::from_caller(spki, String::new(), 0),
            Err(AuthorityError::MissingKeyId)
        );
        // The key is checked before the key ID, as SPIRE does.
        let err = JwtAuthority::from_caller(b"junk".to_vec(), String::new(), 0).unwrap_err();
        assert!(matches!(err, AuthorityError::MalformedPublicKey(_)), "{err:?}");
        // A certificate is not a public key.
        let err = JwtAuthority::from_caller(ca_pool()[0].clone(), "k".into(), 0).unwrap_err();
        assert!(matches!(err, AuthorityError::MalformedPublicKey(_)), "{err:?}");
    }
}
