//! X509-SVID validation, as the SPIFFE X509-SVID standard (§4, §5) and go-spiffe's
//! `x509svid.Verify` read it.
//!
//! [`verify`] takes the presented chain (leaf first, then intermediates in any order), the
//! X.509 authorities of the leaf's trust domain and the time to judge validity at, and
//! returns the leaf's SPIFFE ID. It checks, in this order:
//! 1. the leaf has exactly one URI SAN and it is a SPIFFE ID;
//! 2. the leaf is not a CA, its key usage is present, has `digitalSignature` and has neither
//!    `keyCertSign` nor `cRLSign`;
//! 3. a path exists from the leaf through presented intermediates to an authority, matching
//!    issuer to subject names and verifying every signature (SHA-1 is refused);
//! 4. on that path every intermediate is a CA, path length constraints hold, and every
//!    certificate, the authority included, is valid at `now` (bounds inclusive).
//!
//! Like Go's verifier, key usage on CA certificates is not consulted and authorities need not
//! carry basic constraints: the bundle is trusted as configured.

use std::time::SystemTime;

use x509_parser::certificate::X509Certificate;
use x509_parser::error::X509Error;
use x509_parser::extensions::GeneralName;

use crate::bundle::{Bundle, parse_certificate};
use crate::clock::unix_seconds;
use crate::spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain};

/// The most certificates (leaf included) a presented chain may have.
pub const MAX_CHAIN_LEN: usize = 16;

/// Signature algorithms ward accepts on certificates (DER content bytes of their OIDs):
/// RSA PKCS#1 v1.5 with SHA-256/384/512, RSASSA-PSS, ECDSA with SHA-256/384, Ed25519.
const ACCEPTED_SIGNATURE_OIDS: &[&[u8]] = &[
    &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b],
    &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c],
    &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d],
    &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a],
    &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02],
    &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03],
    &[0x2b, 0x65, 0x70],
];

/// Why a chain is not a valid X509-SVID.
///
/// `index` is a position in the presented chain (0 is the leaf) or, for `Authority*`
/// variants, in the authorities.
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
    /// An authority is not one DER certificate.
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
    /// No presented intermediate or authority has the certificate's issuer name.
    #[error("certificate {index} is not signed by a known authority")]
    UnknownAuthority {
        /// Position in the chain of the certificate whose issuer is missing.
        index: usize,
    },
    /// A certificate names a known issuer but the signature does not verify with its key.
    #[error("certificate {index} has a bad signature")]
    BadSignature {
        /// Position in the chain.
        index: usize,
    },
    /// A certificate is signed with an algorithm ward does not accept (SHA-1, P-521, ...).
    #[error("certificate {index} uses an unsupported signature algorithm")]
    UnsupportedSignatureAlgorithm {
        /// Position in the chain.
        index: usize,
    },
    /// An intermediate on the path is not a CA.
    #[error("intermediate certificate {index} is not a ca")]
    IntermediateNotCa {
        /// Position in the chain.
        index: usize,
    },
    /// An intermediate's path length constraint is exceeded.
    #[error("intermediate certificate {index} path length constraint exceeded")]
    PathLenExceeded {
        /// Position in the chain.
        index: usize,
    },
    /// The authority's path length constraint is exceeded.
    #[error("authority {index} path length constraint exceeded")]
    AuthorityPathLenExceeded {
        /// Position in the authorities.
        index: usize,
    },
    /// A certificate on the path is not valid yet.
    #[error("certificate {index} is not valid yet")]
    NotYetValid {
        /// Position in the chain.
        index: usize,
    },
    /// A certificate on the path has expired.
    #[error("certificate {index} has expired")]
    Expired {
        /// Position in the chain.
        index: usize,
    },
    /// The authority that anchors the path is not valid yet.
    #[error("authority {index} is not valid yet")]
    AuthorityNotYetValid {
        /// Position in the authorities.
        index: usize,
    },
    /// The authority that anchors the path has expired.
    #[error("authority {index} has expired")]
    AuthorityExpired {
        /// Position in the authorities.
        index: usize,
    },
}

/// Verifies an X509-SVID chain against `authorities` at `now`; returns the leaf's SPIFFE ID.
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
    let path = build_path(&certs, &roots)?;
    check_path(&certs, &roots, &path, unix_seconds(now))?;
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
    let id = verify(chain, &bundle.x509_authorities, now)?;
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

/// A certificate on a verified path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// A presented certificate, by chain position.
    Chain(usize),
    /// An authority, by position.
    Authority(usize),
}

/// Outcome of trying one candidate issuer.
enum Candidate {
    Signed,
    BadSignature,
    Unsupported,
}

fn try_issuer(subject: &X509Certificate<'_>, issuer: &X509Certificate<'_>) -> Option<Candidate> {
    if subject.issuer().as_raw() != issuer.subject().as_raw() {
        return None;
    }
    let alg = subject.signature_algorithm.algorithm.as_bytes();
    if !ACCEPTED_SIGNATURE_OIDS.contains(&alg) {
        return Some(Candidate::Unsupported);
    }
    Some(match subject.verify_signature(Some(issuer.public_key())) {
        Ok(()) => Candidate::Signed,
        Err(X509Error::SignatureUnsupportedAlgorithm) => Candidate::Unsupported,
        Err(_) => Candidate::BadSignature,
    })
}

/// Walks from the leaf to an authority; every step is a verified signature. Greedy: the
/// first candidate whose name matches and signature verifies is taken, authorities first.
fn build_path(
    certs: &[X509Certificate<'_>],
    roots: &[X509Certificate<'_>],
) -> Result<Vec<Link>, X509SvidError> {
    let mut path = vec![Link::Chain(0)];
    let mut used = vec![false; certs.len()];
    used[0] = true;
    let mut current = 0;
    // Each round either ends or uses one more presented certificate, so this is bounded.
    for _ in 0..certs.len() {
        let subject = &certs[current];
        let mut failure = None;
        let candidates = roots.iter().enumerate().map(|(i, c)| (Link::Authority(i), c)).chain(
            certs.iter().enumerate().filter(|(i, _)| !used[*i]).map(|(i, c)| (Link::Chain(i), c)),
        );
        let mut next = None;
        for (link, issuer) in candidates {
            match try_issuer(subject, issuer) {
                None => {}
                Some(Candidate::Signed) => {
                    next = Some(link);
                    break;
                }
                Some(Candidate::BadSignature) => {
                    failure.get_or_insert(X509SvidError::BadSignature { index: current });
                }
                Some(Candidate::Unsupported) => {
                    failure.get_or_insert(X509SvidError::UnsupportedSignatureAlgorithm {
                        index: current,
                    });
                }
            }
        }
        match next {
            Some(link @ Link::Authority(_)) => {
                path.push(link);
                return Ok(path);
            }
            Some(link @ Link::Chain(i)) => {
                path.push(link);
                used[i] = true;
                current = i;
            }
            None => {
                return Err(failure.unwrap_or(X509SvidError::UnknownAuthority { index: current }));
            }
        }
    }
    Err(X509SvidError::UnknownAuthority { index: current })
}

fn check_path(
    certs: &[X509Certificate<'_>],
    roots: &[X509Certificate<'_>],
    path: &[Link],
    now: i64,
) -> Result<(), X509SvidError> {
    for (depth, link) in path.iter().enumerate() {
        let (cert, index) = match *link {
            Link::Chain(i) => (&certs[i], i),
            Link::Authority(i) => (&roots[i], i),
        };
        // Intermediate CAs below this certificate on the path (the leaf does not count).
        let cas_below = depth.saturating_sub(1);
        let is_authority = matches!(link, Link::Authority(_));
        if depth > 0 {
            let bc = cert
                .basic_constraints()
                .map_err(|_| X509SvidError::MalformedExtension { index })
                .or_else(|e| if is_authority { Ok(None) } else { Err(e) })?;
            if !is_authority && !bc.as_ref().is_some_and(|bc| bc.value.ca) {
                return Err(X509SvidError::IntermediateNotCa { index });
            }
            let limit = bc.and_then(|bc| bc.value.path_len_constraint);
            if limit.is_some_and(|limit| cas_below > limit as usize) {
                return Err(if is_authority {
                    X509SvidError::AuthorityPathLenExceeded { index }
                } else {
                    X509SvidError::PathLenExceeded { index }
                });
            }
        }
        let validity = cert.validity();
        if now < validity.not_before.timestamp() {
            return Err(if is_authority {
                X509SvidError::AuthorityNotYetValid { index }
            } else {
                X509SvidError::NotYetValid { index }
            });
        }
        if now > validity.not_after.timestamp() {
            return Err(if is_authority {
                X509SvidError::AuthorityExpired { index }
            } else {
                X509SvidError::Expired { index }
            });
        }
    }
    Ok(())
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
        assert_eq!(
            verify(&chain, &[&p.root], at(unix(NOT_AFTER) + 1)),
            Err(E::Expired { index: 0 })
        );
        assert_eq!(verify(&chain, &[&p.root], at(unix((2024, 1, 1)))), Ok(id()));
        assert_eq!(
            verify(&chain, &[&p.root], at(unix((2024, 1, 1)) - 1)),
            Err(E::NotYetValid { index: 0 })
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
            E::NotYetValid { index: 0 },
        );
        single(
            "leaf expired",
            Box::new(|p| p.not_after = rcgen::date_time_ymd(2025, 1, 1)),
            E::Expired { index: 0 },
        );

        let (other_root, _) = root("other", &rcgen::PKCS_ECDSA_P256_SHA256);
        cases.push((
            "unknown root",
            vec![p.leaf.clone(), p.intermediate.clone()],
            vec![other_root],
            E::UnknownAuthority { index: 1 },
        ));
        cases.push((
            "missing intermediate",
            vec![p.leaf.clone()],
            vec![p.root.clone()],
            E::UnknownAuthority { index: 0 },
        ));
        let (same_name_root, _) = root("root", &rcgen::PKCS_ECDSA_P256_SHA256);
        cases.push((
            "same name, other key",
            vec![p.leaf.clone(), p.intermediate.clone()],
            vec![same_name_root],
            E::BadSignature { index: 1 },
        ));
        let (p521_root, p521_issuer) = root("root", &rcgen::PKCS_ECDSA_P521_SHA512);
        cases.push((
            "p-521 signature",
            vec![issue(leaf_params(ID), &p521_issuer).0],
            vec![p521_root],
            E::UnsupportedSignatureAlgorithm { index: 0 },
        ));

        let (root_der, root_issuer) = root("root", &rcgen::PKCS_ECDSA_P256_SHA256);
        let mut not_ca = ca_params("intermediate");
        not_ca.is_ca = IsCa::ExplicitNoCa;
        let (int, int_issuer) = issue(not_ca, &root_issuer);
        cases.push((
            "intermediate not ca",
            vec![issue(leaf_params(ID), &int_issuer).0, int],
            vec![root_der.clone()],
            E::IntermediateNotCa { index: 1 },
        ));
        let mut no_bc = ca_params("intermediate");
        no_bc.is_ca = IsCa::NoCa;
        let (int, int_issuer) = issue(no_bc, &root_issuer);
        cases.push((
            "intermediate without basic constraints",
            vec![issue(leaf_params(ID), &int_issuer).0, int],
            vec![root_der.clone()],
            E::IntermediateNotCa { index: 1 },
        ));
        let mut expired = ca_params("intermediate");
        expired.not_after = rcgen::date_time_ymd(2025, 1, 1);
        let (int, int_issuer) = issue(expired, &root_issuer);
        cases.push((
            "intermediate expired",
            vec![issue(leaf_params(ID), &int_issuer).0, int],
            vec![root_der.clone()],
            E::Expired { index: 1 },
        ));
        let mut pathlen0 = ca_params("int1");
        pathlen0.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        let (int1, int1_issuer) = issue(pathlen0, &root_issuer);
        let (int2, int2_issuer) = issue(ca_params("int2"), &int1_issuer);
        cases.push((
            "intermediate path length",
            vec![issue(leaf_params(ID), &int2_issuer).0, int2, int1],
            vec![root_der],
            E::PathLenExceeded { index: 2 },
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
            E::AuthorityPathLenExceeded { index: 0 },
        ));
        for (window, want) in [
            ((2030, 1, 1), E::AuthorityNotYetValid { index: 0 }),
            ((2019, 1, 1), E::AuthorityExpired { index: 0 }),
        ] {
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
