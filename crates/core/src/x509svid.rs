//! X509-SVID validation, as the SPIFFE X509-SVID standard (§4, §5) and go-spiffe's
//! `x509svid.Verify` read it.
//!
//! [`verify`] takes the presented chain (leaf first, then intermediates in any order), the
//! X.509 authorities of the leaf's trust domain and the time to judge validity at, and
//! returns the leaf's SPIFFE ID. It checks, in this order:
//! 1. the leaf has exactly one URI SAN and it is a SPIFFE ID;
//! 2. the leaf is not a CA, its key usage is present, has `digitalSignature` and has neither
//!    `keyCertSign` nor `cRLSign`;
//! 3. a path exists from the leaf through presented intermediates to an authority that is
//!    valid at `now`. Path building and RFC 5280 path validation are `rustls-webpki`'s
//!    (`EndEntityCert::verify_for_usage`): it backtracks over every candidate issuer,
//!    verifies each signature (SHA-1 is refused), requires intermediates to be CAs within
//!    their path length constraints and valid at `now` (bounds inclusive), enforces name
//!    constraints, and refuses unknown critical extensions. ward adds the path length
//!    constraint of the authority itself, which Go's verifier also applies.
//!
//! Like Go's verifier, key usage on CA certificates is not consulted and authorities need not
//! carry basic constraints: the bundle is trusted as configured. Authorities outside their
//! validity window are left out before the path is built, so an expired authority that shares
//! its name and key with a current one never hides it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::{CertificateDer, SignatureVerificationAlgorithm, TrustAnchor, UnixTime};
use webpki::{EndEntityCert, ExtendedKeyUsageValidator, KeyPurposeIdIter, KeyUsage};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use crate::bundle::{Bundle, parse_certificate};
use crate::clock::unix_seconds;
use crate::spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain};

/// The most certificates (leaf included) a presented chain may have.
pub const MAX_CHAIN_LEN: usize = 16;

/// Signature algorithms ward accepts on certificates: ECDSA P-256/P-384 with SHA-256/384,
/// RSA PKCS#1 v1.5 and RSASSA-PSS with SHA-256/384/512 (2048 to 8192 bits), Ed25519.
static ALGORITHMS: &[&dyn SignatureVerificationAlgorithm] = &[
    webpki::aws_lc_rs::ECDSA_P256_SHA256,
    webpki::aws_lc_rs::ECDSA_P256_SHA384,
    webpki::aws_lc_rs::ECDSA_P384_SHA256,
    webpki::aws_lc_rs::ECDSA_P384_SHA384,
    webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA256,
    webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA384,
    webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA512,
    webpki::aws_lc_rs::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
    webpki::aws_lc_rs::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
    webpki::aws_lc_rs::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
    webpki::aws_lc_rs::ED25519,
];

/// What the leaf must be usable for (its extended key usage, when it has one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SvidUsage {
    /// Any purpose, as go-spiffe's `x509svid.Verify` (`ExtKeyUsageAny`).
    Any,
    /// TLS client authentication: an extended key usage, when present, must include
    /// `id-kp-clientAuth`.
    ClientAuth,
    /// TLS server authentication: an extended key usage, when present, must include
    /// `id-kp-serverAuth`.
    ServerAuth,
}

/// Why a chain is not a valid X509-SVID.
///
/// `index` is a position in the presented chain (0 is the leaf) or, for
/// [`X509SvidError::InvalidAuthority`], in the authorities. Path failures do not say which
/// certificate failed: the path builder tries every candidate and reports the most relevant
/// failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum X509SvidError {
    /// No certificate was presented.
    #[error("empty certificate chain")]
    EmptyChain,
    /// More than [`MAX_CHAIN_LEN`] certificates were presented.
    #[error("certificate chain has {len} certificates, more than {MAX_CHAIN_LEN}")]
    ChainTooLong {
        /// How many there are.
        len: usize,
    },
    /// A presented certificate is not one DER certificate.
    #[error("certificate {index} is not a der certificate")]
    InvalidCertificate {
        /// Position in the chain.
        index: usize,
    },
    /// An authority is not one DER certificate usable as a trust anchor.
    #[error("authority {index} is not a der certificate")]
    InvalidAuthority {
        /// Position in the authorities.
        index: usize,
    },
    /// A certificate's basic constraints, key usage or SAN extension is malformed or repeated.
    #[error("certificate {index} has a malformed or duplicate extension")]
    MalformedExtension {
        /// Position in the chain.
        index: usize,
    },
    /// The leaf has no URI SAN.
    #[error("leaf certificate has no uri san")]
    NoUriSan,
    /// The leaf has more than one URI SAN.
    #[error("leaf certificate has more than one uri san")]
    MultipleUriSans,
    /// The leaf's URI SAN is not a SPIFFE ID.
    #[error("leaf uri san is not a spiffe id")]
    InvalidSpiffeId(#[source] SpiffeIdError),
    /// The leaf's SPIFFE ID is not in the bundle's trust domain.
    #[error("leaf spiffe id is in trust domain {found}, bundle is for {expected}")]
    TrustDomainMismatch {
        /// The bundle's trust domain.
        expected: TrustDomain,
        /// The leaf's trust domain.
        found: TrustDomain,
    },
    /// The leaf has basic constraints with CA true.
    #[error("leaf certificate must not be a ca")]
    LeafIsCa,
    /// The leaf has no key usage extension.
    #[error("leaf certificate has no key usage")]
    LeafMissingKeyUsage,
    /// The leaf's key usage has `keyCertSign`.
    #[error("leaf certificate must not have keyCertSign key usage")]
    LeafHasKeyCertSign,
    /// The leaf's key usage has `cRLSign`.
    #[error("leaf certificate must not have cRLSign key usage")]
    LeafHasCrlSign,
    /// The leaf's key usage lacks `digitalSignature`.
    #[error("leaf certificate lacks digitalSignature key usage")]
    LeafMissingDigitalSignature,
    /// Every authority is outside its validity window at the time of the check.
    #[error("no authority is valid at this time")]
    NoCurrentAuthority,
    /// No path leads from the leaf to a current authority.
    #[error("certificate signed by unknown authority")]
    UnknownAuthority,
    /// A signature on the path does not verify with its issuer's key.
    #[error("certificate has a bad signature")]
    BadSignature,
    /// A certificate is signed with an algorithm ward does not accept (SHA-1, P-521, ...).
    #[error("certificate uses an unsupported signature algorithm")]
    UnsupportedSignatureAlgorithm,
    /// A presented intermediate on the path is not a CA.
    #[error("intermediate certificate is not a ca")]
    IntermediateNotCa,
    /// A path length constraint (of an intermediate or the authority) is exceeded.
    #[error("path length constraint exceeded")]
    PathLenExceeded,
    /// A certificate on the path is not valid yet.
    #[error("certificate is not valid yet")]
    NotYetValid,
    /// A certificate on the path has expired.
    #[error("certificate has expired")]
    Expired,
    /// A certificate on the path has a critical extension ward does not understand.
    #[error("certificate has an unsupported critical extension")]
    UnsupportedCriticalExtension,
    /// A name on the path is outside an issuer's name constraints.
    #[error("certificate violates a name constraint")]
    NameConstraintViolation,
    /// The leaf's extended key usage does not allow the required purpose.
    #[error("leaf certificate extended key usage does not allow this use")]
    ExtendedKeyUsage,
    /// The path is refused for another RFC 5280 reason (malformed DER on the path, a bad
    /// validity encoding, too many candidate paths, ...).
    #[error("certificate path is invalid")]
    InvalidPath,
}

/// Verifies an X509-SVID chain against `authorities` at `now` for any purpose; returns the
/// leaf's SPIFFE ID.
///
/// `chain` is DER certificates, leaf first. `authorities` is DER CA certificates, normally
/// [`Bundle::x509_authorities`] of the leaf's trust domain.
///
/// # Errors
/// [`X509SvidError`] naming the first rule broken, in the order the module docs list.
pub fn verify<C: AsRef<[u8]>, A: AsRef<[u8]>>(
    chain: &[C],
    authorities: &[A],
    now: SystemTime,
) -> Result<SpiffeId, X509SvidError> {
    verify_for(SvidUsage::Any, chain, authorities, now)
}

/// [`verify`] for a given [`SvidUsage`].
///
/// # Errors
/// As [`verify`], plus [`X509SvidError::ExtendedKeyUsage`].
pub fn verify_for<C: AsRef<[u8]>, A: AsRef<[u8]>>(
    usage: SvidUsage,
    chain: &[C],
    authorities: &[A],
    now: SystemTime,
) -> Result<SpiffeId, X509SvidError> {
    if chain.is_empty() {
        return Err(X509SvidError::EmptyChain);
    }
    if chain.len() > MAX_CHAIN_LEN {
        return Err(X509SvidError::ChainTooLong { len: chain.len() });
    }
    let certs = chain
        .iter()
        .enumerate()
        .map(|(index, der)| {
            parse_certificate(der.as_ref()).ok_or(X509SvidError::InvalidCertificate { index })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let roots = authorities
        .iter()
        .enumerate()
        .map(|(index, der)| {
            parse_certificate(der.as_ref()).ok_or(X509SvidError::InvalidAuthority { index })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (leaf, _) = certs.split_first().ok_or(X509SvidError::EmptyChain)?;
    let id = leaf_spiffe_id(leaf)?;
    check_leaf_usage(leaf)?;
    check_path(usage, chain, authorities, &roots, now)?;
    Ok(id)
}

/// [`verify`] against `bundle`, also requiring the leaf's SPIFFE ID to be in the bundle's
/// trust domain.
///
/// # Errors
/// As [`verify`], plus [`X509SvidError::TrustDomainMismatch`].
pub fn verify_with_bundle<C: AsRef<[u8]>>(
    chain: &[C],
    bundle: &Bundle,
    now: SystemTime,
) -> Result<SpiffeId, X509SvidError> {
    verify_with_bundle_for(SvidUsage::Any, chain, bundle, now)
}

/// [`verify_with_bundle`] for a given [`SvidUsage`].
///
/// # Errors
/// As [`verify_with_bundle`], plus [`X509SvidError::ExtendedKeyUsage`].
pub fn verify_with_bundle_for<C: AsRef<[u8]>>(
    usage: SvidUsage,
    chain: &[C],
    bundle: &Bundle,
    now: SystemTime,
) -> Result<SpiffeId, X509SvidError> {
    let id = verify_for(usage, chain, &bundle.x509_authorities, now)?;
    if !id.is_member_of(&bundle.trust_domain) {
        return Err(X509SvidError::TrustDomainMismatch {
            expected: bundle.trust_domain.clone(),
            found: id.trust_domain(),
        });
    }
    Ok(id)
}

fn leaf_spiffe_id(leaf: &X509Certificate<'_>) -> Result<SpiffeId, X509SvidError> {
    let malformed = X509SvidError::MalformedExtension { index: 0 };
    let san = leaf.subject_alternative_name().map_err(|_| malformed.clone())?;
    let mut uris =
        san.iter().flat_map(|ext| ext.value.general_names.iter()).filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        });
    let uri = uris.next().ok_or(X509SvidError::NoUriSan)?;
    if uris.next().is_some() {
        return Err(X509SvidError::MultipleUriSans);
    }
    SpiffeId::parse(uri).map_err(X509SvidError::InvalidSpiffeId)
}

fn check_leaf_usage(leaf: &X509Certificate<'_>) -> Result<(), X509SvidError> {
    let malformed = || X509SvidError::MalformedExtension { index: 0 };
    let bc = leaf.basic_constraints().map_err(|_| malformed())?;
    if bc.is_some_and(|bc| bc.value.ca) {
        return Err(X509SvidError::LeafIsCa);
    }
    let ku =
        leaf.key_usage().map_err(|_| malformed())?.ok_or(X509SvidError::LeafMissingKeyUsage)?;
    if ku.value.key_cert_sign() {
        return Err(X509SvidError::LeafHasKeyCertSign);
    }
    if ku.value.crl_sign() {
        return Err(X509SvidError::LeafHasCrlSign);
    }
    if !ku.value.digital_signature() {
        return Err(X509SvidError::LeafMissingDigitalSignature);
    }
    Ok(())
}

/// Accepts any extended key usage (a malformed extension is still refused).
struct AnyUsage;

impl ExtendedKeyUsageValidator for AnyUsage {
    fn validate(&self, iter: KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        for purpose in iter {
            purpose?;
        }
        Ok(())
    }
}

/// Builds and validates the path with webpki from the authorities current at `now`.
fn check_path<C: AsRef<[u8]>, A: AsRef<[u8]>>(
    usage: SvidUsage,
    chain: &[C],
    authorities: &[A],
    roots: &[X509Certificate<'_>],
    now: SystemTime,
) -> Result<(), X509SvidError> {
    let now_s = unix_seconds(now);
    let current: Vec<usize> = (0..roots.len())
        .filter(|&i| {
            let v = roots[i].validity();
            v.not_before.timestamp() <= now_s && now_s <= v.not_after.timestamp()
        })
        .collect();
    if current.is_empty() && !roots.is_empty() {
        return Err(X509SvidError::NoCurrentAuthority);
    }
    let anchor_ders: Vec<CertificateDer<'_>> =
        current.iter().map(|&i| CertificateDer::from(authorities[i].as_ref())).collect();
    let anchors = anchor_ders
        .iter()
        .zip(&current)
        .map(|(der, &index)| {
            webpki::anchor_from_trusted_cert(der)
                .map_err(|_| X509SvidError::InvalidAuthority { index })
        })
        .collect::<Result<Vec<TrustAnchor<'_>>, _>>()?;
    let chain_ders: Vec<CertificateDer<'_>> =
        chain.iter().map(|c| CertificateDer::from(c.as_ref())).collect();
    let (leaf_der, intermediates) = chain_ders.split_first().ok_or(X509SvidError::EmptyChain)?;
    let leaf = EndEntityCert::try_from(leaf_der).map_err(|e| path_error(&e))?;
    let time = UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO));
    // webpki keeps no constraints of a trust anchor but its name constraints; the authority's
    // own path length constraint is checked here, which sends webpki on to other paths.
    let authority_path_len = |path: &webpki::VerifiedPath<'_>| -> Result<(), webpki::Error> {
        let below = path.intermediate_certificates().count();
        let Some(slot) = anchors.iter().position(|a| a == path.anchor()) else {
            return Ok(());
        };
        let limit = current
            .get(slot)
            .and_then(|&i| roots[i].basic_constraints().ok().flatten())
            .and_then(|bc| bc.value.path_len_constraint);
        match limit {
            Some(limit) if below > limit as usize => Err(webpki::Error::PathLenConstraintViolated),
            _ => Ok(()),
        }
    };
    let result = match usage {
        SvidUsage::Any => leaf.verify_for_usage(
            ALGORITHMS,
            &anchors,
            intermediates,
            time,
            AnyUsage,
            None,
            Some(&authority_path_len),
        ),
        SvidUsage::ClientAuth => leaf.verify_for_usage(
            ALGORITHMS,
            &anchors,
            intermediates,
            time,
            KeyUsage::client_auth(),
            None,
            Some(&authority_path_len),
        ),
        SvidUsage::ServerAuth => leaf.verify_for_usage(
            ALGORITHMS,
            &anchors,
            intermediates,
            time,
            KeyUsage::server_auth(),
            None,
            Some(&authority_path_len),
        ),
    };
    result.map(|_| ()).map_err(|e| path_error(&e))
}

fn path_error(e: &webpki::Error) -> X509SvidError {
    use webpki::Error as W;
    match e {
        W::UnknownIssuer => X509SvidError::UnknownAuthority,
        W::InvalidSignatureForPublicKey => X509SvidError::BadSignature,
        W::UnsupportedSignatureAlgorithmContext(_)
        | W::UnsupportedSignatureAlgorithmForPublicKeyContext(_)
        | W::SignatureAlgorithmMismatch => X509SvidError::UnsupportedSignatureAlgorithm,
        W::EndEntityUsedAsCa => X509SvidError::IntermediateNotCa,
        W::CaUsedAsEndEntity => X509SvidError::LeafIsCa,
        W::PathLenConstraintViolated => X509SvidError::PathLenExceeded,
        W::CertNotValidYet { .. } => X509SvidError::NotYetValid,
        W::CertExpired { .. } => X509SvidError::Expired,
        W::UnsupportedCriticalExtension => X509SvidError::UnsupportedCriticalExtension,
        W::NameConstraintViolation => X509SvidError::NameConstraintViolation,
        W::RequiredEkuNotFoundContext(_) | W::EmptyEkuExtension => X509SvidError::ExtendedKeyUsage,
        _ => X509SvidError::InvalidPath,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::X509Authority;
    use crate::testutil::{NOT_AFTER, at, ca_params, issue, key, leaf_params, now, root, unix};
    use X509SvidError as E;
    use rcgen::{BasicConstraints, IsCa, KeyUsagePurpose, SanType};

    const ID: &str = "spiffe://example.org/ns/prod/sa/web";

    /// A root, an intermediate under it and a leaf under that.
    struct Pki {
        root: Vec<u8>,
        intermediate: Vec<u8>,
        leaf: Vec<u8>,
    }

    fn pki() -> Pki {
        let (root, root_issuer) = root("root", &rcgen::PKCS_ECDSA_P256_SHA256);
        let (intermediate, int_issuer) = issue(ca_params("intermediate"), &root_issuer);
        let (leaf, _) = issue(leaf_params(ID), &int_issuer);
        Pki { root, intermediate, leaf }
    }

    /// A leaf made from `edit`ed leaf parameters, signed directly by a fresh root.
    fn leaf_with(edit: impl FnOnce(&mut rcgen::CertificateParams)) -> (Vec<u8>, Vec<u8>) {
        let (root, root_issuer) = root("root", &rcgen::PKCS_ECDSA_P256_SHA256);
        let mut params = leaf_params(ID);
        edit(&mut params);
        (issue(params, &root_issuer).0, root)
    }

    fn id() -> SpiffeId {
        SpiffeId::parse(ID).unwrap()
    }

    #[test]
    fn accepts_leaf_intermediate_root() {
        let p = pki();
        assert_eq!(verify(&[&p.leaf, &p.intermediate], &[&p.root], now()), Ok(id()));
    }

    #[test]
    fn accepts_leaf_signed_by_root_among_several_authorities() {
        let (other, _) = root("other", &rcgen::PKCS_ECDSA_P384_SHA384);
        for alg in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
            &rcgen::PKCS_RSA_SHA256,
        ] {
            let (root, issuer) = root("root", alg);
            let (leaf, _) = issue(leaf_params(ID), &issuer);
            assert_eq!(verify(&[&leaf], &[&other, &root], now()), Ok(id()));
        }
    }

    #[test]
    fn accepts_unordered_intermediates_and_a_presented_root() {
        let (root, root_issuer) = root("root", &rcgen::PKCS_ECDSA_P256_SHA256);
        let (int1, int1_issuer) = issue(ca_params("int1"), &root_issuer);
        let (int2, int2_issuer) = issue(ca_params("int2"), &int1_issuer);
        let (leaf, _) = issue(leaf_params(ID), &int2_issuer);
        assert_eq!(verify(&[&leaf, &int1, &int2], &[&root], now()), Ok(id()));
        assert_eq!(verify(&[&leaf, &int2, &int1, &root], &[&root], now()), Ok(id()));
    }

    #[test]
    fn validity_bounds_are_inclusive() {
        let p = pki();
        let chain = [&p.leaf, &p.intermediate];
        assert_eq!(verify(&chain, &[&p.root], at(unix(NOT_AFTER))), Ok(id()));
        assert_eq!(verify(&chain, &[&p.root], at(unix((2024, 1, 1)))), Ok(id()));
        // Past either end the authority (same window) is no longer current.
        for t in [unix(NOT_AFTER) + 1, unix((2024, 1, 1)) - 1] {
            assert_eq!(verify(&chain, &[&p.root], at(t)), Err(E::NoCurrentAuthority));
        }
        // With an authority that outlives them, the leaf's own bounds decide.
        let (wide_root, wide_issuer) = {
            let mut params = ca_params("wide");
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2090, 1, 1);
            let key = key(&rcgen::PKCS_ECDSA_P256_SHA256);
            (params.self_signed(&key).unwrap().der().to_vec(), rcgen::Issuer::new(params, key))
        };
        let (leaf, _) = issue(leaf_params(ID), &wide_issuer);
        assert_eq!(verify(&[&leaf], &[&wide_root], at(unix(NOT_AFTER))), Ok(id()));
        assert_eq!(verify(&[&leaf], &[&wide_root], at(unix(NOT_AFTER) + 1)), Err(E::Expired));
        assert_eq!(
            verify(&[&leaf], &[&wide_root], at(unix((2024, 1, 1)) - 1)),
            Err(E::NotYetValid)
        );
    }

    #[test]
    fn verify_with_bundle_checks_trust_domain() {
        let p = pki();
        let mut bundle = Bundle::new(TrustDomain::new("example.org").unwrap());
        bundle.x509_authorities.push(X509Authority::new(p.root.clone()));
        assert_eq!(verify_with_bundle(&[&p.leaf, &p.intermediate], &bundle, now()), Ok(id()));
        bundle.trust_domain = TrustDomain::new("other.org").unwrap();
        assert_eq!(
            verify_with_bundle(&[&p.leaf, &p.intermediate], &bundle, now()),
            Err(E::TrustDomainMismatch {
                expected: TrustDomain::new("other.org").unwrap(),
                found: TrustDomain::new("example.org").unwrap(),
            })
        );
    }

    #[test]
    fn an_expired_authority_with_the_same_name_and_key_does_not_hide_a_current_one() {
        let root_key = key(&rcgen::PKCS_ECDSA_P256_SHA256);
        let mut old = ca_params("root");
        old.not_before = rcgen::date_time_ymd(2020, 1, 1);
        old.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let old_der = old.self_signed(&root_key).unwrap().der().to_vec();
        let current = ca_params("root");
        let current_der = current.self_signed(&root_key).unwrap().der().to_vec();
        let (leaf, _) = issue(leaf_params(ID), &rcgen::Issuer::new(current, root_key));
        assert_eq!(verify(&[&leaf], &[&old_der, &current_der], now()), Ok(id()));
        assert_eq!(verify(&[&leaf], &[&old_der], now()), Err(E::NoCurrentAuthority));
    }

    #[test]
    fn refuses_unknown_critical_extensions_on_the_path() {
        let unknown = || {
            let mut ext = rcgen::CustomExtension::from_oid_content(
                &[1, 3, 6, 1, 4, 1, 99999, 1],
                vec![0x05, 0x00],
            );
            ext.set_criticality(true);
            ext
        };
        let (leaf, root_der) = leaf_with(|p| p.custom_extensions.push(unknown()));
        assert_eq!(verify(&[&leaf], &[&root_der], now()), Err(E::UnsupportedCriticalExtension));

        let (root_der, root_issuer) = root("root", &rcgen::PKCS_ECDSA_P256_SHA256);
        let mut int = ca_params("intermediate");
        int.custom_extensions.push(unknown());
        let (int, int_issuer) = issue(int, &root_issuer);
        let (leaf, _) = issue(leaf_params(ID), &int_issuer);
        assert_eq!(
            verify(&[&leaf, &int], &[&root_der], now()),
            Err(E::UnsupportedCriticalExtension)
        );
    }

    #[test]
    fn client_auth_usage_needs_client_auth_when_the_leaf_names_purposes() {
        use rcgen::ExtendedKeyUsagePurpose as Eku;
        let (server_only, root_der) = leaf_with(|p| p.extended_key_usages = vec![Eku::ServerAuth]);
        assert_eq!(verify(&[&server_only], &[&root_der], now()), Ok(id()));
        assert_eq!(
            verify_for(SvidUsage::ClientAuth, &[&server_only], &[&root_der], now()),
            Err(E::ExtendedKeyUsage)
        );
        let (both, root_der) =
            leaf_with(|p| p.extended_key_usages = vec![Eku::ServerAuth, Eku::ClientAuth]);
        assert_eq!(verify_for(SvidUsage::ClientAuth, &[&both], &[&root_der], now()), Ok(id()));
        let (none, root_der) = leaf_with(|_| {});
        assert_eq!(verify_for(SvidUsage::ClientAuth, &[&none], &[&root_der], now()), Ok(id()));
    }

    /// One chain per rule, each breaking only that rule.
    #[test]
    fn rejection_table() {
        let p = pki();
        /// Name, chain, authorities, expected error.
        type Case = (&'static str, Vec<Vec<u8>>, Vec<Vec<u8>>, X509SvidError);
        let mut cases: Vec<Case> = Vec::new();
        cases.push(("empty chain", vec![], vec![p.root.clone()], E::EmptyChain));
        cases.push((
            "too long",
            vec![p.leaf.clone(); MAX_CHAIN_LEN + 1],
            vec![p.root.clone()],
            E::ChainTooLong { len: MAX_CHAIN_LEN + 1 },
        ));
        cases.push((
            "garbage intermediate",
            vec![p.leaf.clone(), vec![0x30, 0x00]],
            vec![p.root.clone()],
            E::InvalidCertificate { index: 1 },
        ));
        let mut trailing = p.leaf.clone();
        trailing.push(0);
        cases.push((
            "trailing bytes",
            vec![trailing],
            vec![p.root.clone()],
            E::InvalidCertificate { index: 0 },
        ));
        cases.push((
            "garbage authority",
            vec![p.leaf.clone(), p.intermediate.clone()],
            vec![p.root.clone(), b"nope".to_vec()],
            E::InvalidAuthority { index: 1 },
        ));
        let mut single = |name, edit: Box<dyn FnOnce(&mut rcgen::CertificateParams)>, want| {
            let (leaf, root) = leaf_with(edit);
            cases.push((name, vec![leaf], vec![root], want));
        };
        single(
            "dns san only",
            Box::new(|p| p.subject_alt_names = vec![SanType::DnsName("web".try_into().unwrap())]),
            E::NoUriSan,
        );
        single("no san", Box::new(|p| p.subject_alt_names.clear()), E::NoUriSan);
        single(
            "two uri sans",
            Box::new(|p| {
                p.subject_alt_names
                    .push(SanType::URI("spiffe://example.org/other".try_into().unwrap()))
            }),
            E::MultipleUriSans,
        );
        single(
            "https uri",
            Box::new(|p| {
                p.subject_alt_names =
                    vec![SanType::URI("https://example.org/a".try_into().unwrap())]
            }),
            E::InvalidSpiffeId(SpiffeIdError::WrongScheme),
        );
        single(
            "bad spiffe path",
            Box::new(|p| {
                p.subject_alt_names =
                    vec![SanType::URI("spiffe://example.org/a/".try_into().unwrap())]
            }),
            E::InvalidSpiffeId(SpiffeIdError::TrailingSlash),
        );
        single(
            "leaf is ca",
            Box::new(|p| p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained)),
            E::LeafIsCa,
        );
        single("no key usage", Box::new(|p| p.key_usages.clear()), E::LeafMissingKeyUsage);
        single(
            "keyCertSign",
            Box::new(|p| p.key_usages.push(KeyUsagePurpose::KeyCertSign)),
            E::LeafHasKeyCertSign,
        );
        single(
            "cRLSign",
            Box::new(|p| p.key_usages.push(KeyUsagePurpose::CrlSign)),
            E::LeafHasCrlSign,
        );
        single(
            "no digitalSignature",
            Box::new(|p| p.key_usages = vec![KeyUsagePurpose::KeyEncipherment]),
            E::LeafMissingDigitalSignature,
        );
        single(
            "leaf not yet valid",
            Box::new(|p| p.not_before = rcgen::date_time_ymd(2030, 1, 1)),
            E::NotYetValid,
        );
        single(
            "leaf expired",
            Box::new(|p| p.not_after = rcgen::date_time_ymd(2025, 1, 1)),
            E::Expired,
        );

        let (other_root, _) = root("other", &rcgen::PKCS_ECDSA_P256_SHA256);
        cases.push((
            "unknown root",
            vec![p.leaf.clone(), p.intermediate.clone()],
            vec![other_root],
            E::UnknownAuthority,
        ));
        cases.push((
            "missing intermediate",
            vec![p.leaf.clone()],
            vec![p.root.clone()],
            E::UnknownAuthority,
        ));
        let (same_name_root, _) = root("root", &rcgen::PKCS_ECDSA_P256_SHA256);
        cases.push((
            "same name, other key",
            vec![p.leaf.clone(), p.intermediate.clone()],
            vec![same_name_root],
            E::BadSignature,
        ));
        let (p521_root, p521_issuer) = root("root", &rcgen::PKCS_ECDSA_P521_SHA512);
        cases.push((
            "p-521 signature",
            vec![issue(leaf_params(ID), &p521_issuer).0],
            vec![p521_root],
            E::UnsupportedSignatureAlgorithm,
        ));

        let (root_der, root_issuer) = root("root", &rcgen::PKCS_ECDSA_P256_SHA256);
        let mut not_ca = ca_params("intermediate");
        not_ca.is_ca = IsCa::ExplicitNoCa;
        let (int, int_issuer) = issue(not_ca, &root_issuer);
        cases.push((
            "intermediate not ca",
            vec![issue(leaf_params(ID), &int_issuer).0, int],
            vec![root_der.clone()],
            E::IntermediateNotCa,
        ));
        let mut no_bc = ca_params("intermediate");
        no_bc.is_ca = IsCa::NoCa;
        let (int, int_issuer) = issue(no_bc, &root_issuer);
        cases.push((
            "intermediate without basic constraints",
            vec![issue(leaf_params(ID), &int_issuer).0, int],
            vec![root_der.clone()],
            E::IntermediateNotCa,
        ));
        let mut expired = ca_params("intermediate");
        expired.not_after = rcgen::date_time_ymd(2025, 1, 1);
        let (int, int_issuer) = issue(expired, &root_issuer);
        cases.push((
            "intermediate expired",
            vec![issue(leaf_params(ID), &int_issuer).0, int],
            vec![root_der.clone()],
            E::Expired,
        ));
        let mut pathlen0 = ca_params("int1");
        pathlen0.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        let (int1, int1_issuer) = issue(pathlen0, &root_issuer);
        let (int2, int2_issuer) = issue(ca_params("int2"), &int1_issuer);
        cases.push((
            "intermediate path length",
            vec![issue(leaf_params(ID), &int2_issuer).0, int2, int1],
            vec![root_der],
            E::PathLenExceeded,
        ));

        let mut constrained_root = ca_params("root");
        constrained_root.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        let root_key = key(&rcgen::PKCS_ECDSA_P256_SHA256);
        let root_der = constrained_root.self_signed(&root_key).unwrap().der().to_vec();
        let root_issuer = rcgen::Issuer::new(constrained_root, root_key);
        let (int, int_issuer) = issue(ca_params("int"), &root_issuer);
        cases.push((
            "authority path length",
            vec![issue(leaf_params(ID), &int_issuer).0, int],
            vec![root_der],
            E::PathLenExceeded,
        ));
        for (window, want) in
            [((2030, 1, 1), E::NoCurrentAuthority), ((2019, 1, 1), E::NoCurrentAuthority)]
        {
            let mut params = ca_params("root");
            if window.0 > 2025 {
                params.not_before = rcgen::date_time_ymd(window.0, window.1, window.2);
            } else {
                params.not_after = rcgen::date_time_ymd(window.0, window.1, window.2);
            }
            let root_key = key(&rcgen::PKCS_ECDSA_P256_SHA256);
            let root_der = params.self_signed(&root_key).unwrap().der().to_vec();
            let (leaf, _) = issue(leaf_params(ID), &rcgen::Issuer::new(params, root_key));
            cases.push(("authority window", vec![leaf], vec![root_der], want));
        }

        for (name, chain, roots, want) in cases {
            assert_eq!(verify(&chain, &roots, now()), Err(want), "case {name}");
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;
        use std::sync::LazyLock;

        static PKI: LazyLock<Pki> = LazyLock::new(pki);

        proptest! {
            #[test]
            fn never_panics_on_random_chains(
                chain in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..4),
            ) {
                let _ = verify(&chain, &[&PKI.root], now());
            }

            #[test]
            fn never_panics_on_corrupted_certificates(
                flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
                cut in any::<prop::sample::Index>(),
            ) {
                let mut leaf = PKI.leaf.clone();
                for (at, byte) in flips {
                    let i = at.index(leaf.len());
                    leaf[i] ^= byte;
                }
                let result = verify(&[&leaf, &PKI.intermediate], &[&PKI.root], now());
                if leaf != PKI.leaf {
                    prop_assert_ne!(result, Ok(id()));
                }
                let mut truncated = PKI.intermediate.clone();
                truncated.truncate(cut.index(truncated.len()));
                prop_assert_eq!(
                    verify(&[&PKI.leaf, &truncated], &[&PKI.root], now()),
                    Err(E::InvalidCertificate { index: 1 })
                );
            }
        }
    }
}
