//! PKCS#10 certificate signing requests and public keys offered for certification.
//!
//! For agents and workloads a CSR only ever contributes its public key: its signature is
//! checked (proof that the requester holds the private key) and everything else in it is
//! ignored; identity comes from the registration entry. MintX509SVID is the exception: there
//! the admin caller's CSR names the SPIFFE ID, DNS names and subject ([`read_csr`]).

use std::borrow::Cow;

use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_PKCS1_SHA256WITHRSA, OID_PKCS1_SHA384WITHRSA, OID_PKCS1_SHA512WITHRSA,
    OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384, OID_SIG_ECDSA_WITH_SHA512,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::error::{CsrError, KeyError, PublicKeyError};
use crate::key::PrivateKey;
use ward_core::der;

/// The kind of a public key accepted for certification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublicKeyKind {
    /// ECDSA on P-256.
    EcP256,
    /// ECDSA on P-384.
    EcP384,
    /// RSA of at least 2048 bits.
    Rsa {
        /// Modulus size in bits.
        bits: usize,
    },
}

/// A public key that passed the checks and may be put into a certificate.
#[derive(Debug, Clone, Copy)]
pub struct CheckedPublicKey<'a> {
    /// The SubjectPublicKeyInfo DER, exactly as received.
    pub spki_der: &'a [u8],
    /// The contents of the subjectPublicKey BIT STRING (what SKI hashes and what
    /// aws-lc-rs verifies with).
    pub key_bits: &'a [u8],
    /// What kind of key it is.
    pub kind: PublicKeyKind,
}

fn check_spki<'a>(info: &SubjectPublicKeyInfo<'a>) -> Result<PublicKeyKind, PublicKeyError> {
    let alg = &info.algorithm.algorithm;
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = info.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
        let (kind, point_len) = match curve {
            Some(c) if c == OID_EC_P256 => (PublicKeyKind::EcP256, 65),
            Some(c) if c == OID_NIST_EC_P384 => (PublicKeyKind::EcP384, 97),
            Some(c) => return Err(PublicKeyError::UnsupportedCurve { oid: c.to_id_string() }),
            None => return Err(PublicKeyError::UnsupportedCurve { oid: "absent".to_owned() }),
        };
        let point: &[u8] = &info.subject_public_key.data;
        if point.len() != point_len || point.first() != Some(&0x04) {
            return Err(PublicKeyError::Malformed);
        }
        Ok(kind)
    } else if *alg == OID_PKCS1_RSAENCRYPTION {
        match info.parsed() {
            Ok(PublicKey::RSA(rsa)) => {
                let bits = rsa.key_size();
                if bits < 2048 {
                    Err(PublicKeyError::RsaTooSmall { bits })
                } else {
                    Ok(PublicKeyKind::Rsa { bits })
                }
            }
            _ => Err(PublicKeyError::Malformed),
        }
    } else {
        Err(PublicKeyError::UnsupportedAlgorithm { oid: alg.to_id_string() })
    }
}

/// Parses and checks a bare SubjectPublicKeyInfo DER.
///
/// # Errors
/// [`PublicKeyError`] naming why the key cannot be certified.
pub fn check_public_key(spki_der: &[u8]) -> Result<CheckedPublicKey<'_>, PublicKeyError> {
    let (rest, info) =
        SubjectPublicKeyInfo::from_der(spki_der).map_err(|_| PublicKeyError::Malformed)?;
    if !rest.is_empty() {
        return Err(PublicKeyError::TrailingData);
    }
    let kind = check_spki(&info)?;
    let key_bits = borrowed(&info.subject_public_key.data)?;
    Ok(CheckedPublicKey { spki_der: info.raw, key_bits, kind })
}

/// The bytes of a parsed BIT STRING, borrowed from the input (parsing DER never copies).
fn borrowed<'a>(data: &Cow<'a, [u8]>) -> Result<&'a [u8], PublicKeyError> {
    match data {
        Cow::Borrowed(b) => Ok(b),
        Cow::Owned(_) => Err(PublicKeyError::Malformed),
    }
}

fn verification_alg(
    sig_oid: &x509_parser::der_parser::oid::Oid<'_>,
    kind: PublicKeyKind,
) -> Option<&'static dyn VerificationAlgorithm> {
    use PublicKeyKind as K;
    let alg: &'static dyn VerificationAlgorithm = match kind {
        K::EcP256 if *sig_oid == OID_SIG_ECDSA_WITH_SHA256 => &signature::ECDSA_P256_SHA256_ASN1,
        K::EcP256 if *sig_oid == OID_SIG_ECDSA_WITH_SHA384 => &signature::ECDSA_P256_SHA384_ASN1,
        K::EcP256 if *sig_oid == OID_SIG_ECDSA_WITH_SHA512 => &signature::ECDSA_P256_SHA512_ASN1,
        K::EcP384 if *sig_oid == OID_SIG_ECDSA_WITH_SHA256 => &signature::ECDSA_P384_SHA256_ASN1,
        K::EcP384 if *sig_oid == OID_SIG_ECDSA_WITH_SHA384 => &signature::ECDSA_P384_SHA384_ASN1,
        K::EcP384 if *sig_oid == OID_SIG_ECDSA_WITH_SHA512 => &signature::ECDSA_P384_SHA512_ASN1,
        K::Rsa { .. } if *sig_oid == OID_PKCS1_SHA256WITHRSA => {
            &signature::RSA_PKCS1_2048_8192_SHA256
        }
        K::Rsa { .. } if *sig_oid == OID_PKCS1_SHA384WITHRSA => {
            &signature::RSA_PKCS1_2048_8192_SHA384
        }
        K::Rsa { .. } if *sig_oid == OID_PKCS1_SHA512WITHRSA => {
            &signature::RSA_PKCS1_2048_8192_SHA512
        }
        _ => return None,
    };
    Some(alg)
}

/// Parses a DER PKCS#10 CSR, verifies its self-signature with aws-lc-rs and returns its
/// checked public key. Nothing else from the CSR is used.
///
/// # Errors
/// [`CsrError::MalformedDer`] / [`CsrError::TrailingData`] for bad DER,
/// [`CsrError::UnsupportedKey`] for keys ward does not certify,
/// [`CsrError::UnsupportedSignatureAlgorithm`] for signature algorithms it does not check,
/// [`CsrError::BadSignature`] when the signature does not verify.
pub fn verify_csr(csr_der: &[u8]) -> Result<CheckedPublicKey<'_>, CsrError> {
    let csr = parse_csr(csr_der)?;
    verify_parsed(&csr)
}

/// What a verified CSR asks for: its key, the SANs it requests and its subject.
#[derive(Debug, Clone)]
pub struct CsrRequest<'a> {
    /// The checked public key.
    pub key: CheckedPublicKey<'a>,
    /// URI SANs of the subjectAltName extension request, in order.
    pub uris: Vec<String>,
    /// DNS SANs of the subjectAltName extension request, in order.
    pub dns_names: Vec<String>,
    /// The subject, read as SPIRE reads it.
    pub subject: CsrSubject,
}

/// Parses a DER PKCS#10 CSR, verifies its self-signature and returns what it asks for.
///
/// # Errors
/// The errors of [`verify_csr`]; [`CsrError::MalformedDer`] also for a malformed extension
/// request.
pub fn read_csr(csr_der: &[u8]) -> Result<CsrRequest<'_>, CsrError> {
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    let csr = parse_csr(csr_der)?;
    let key = verify_parsed(&csr)?;
    let mut uris = Vec::new();
    let mut dns_names = Vec::new();
    for ext in csr.requested_extensions().into_iter().flatten() {
        match ext {
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    match name {
                        GeneralName::URI(u) => uris.push((*u).to_owned()),
                        GeneralName::DNSName(d) => dns_names.push((*d).to_owned()),
                        _ => {}
                    }
                }
            }
            ParsedExtension::ParseError { .. } => return Err(CsrError::MalformedDer),
            _ => {}
        }
    }
    let subject = CsrSubject::from_name(&csr.certification_request_info.subject);
    Ok(CsrRequest { key, uris, dns_names, subject })
}

/// A CSR subject as SPIRE (Go's `pkix.Name`) reads it: the string values of the attributes
/// it knows (country, province, locality, street address, postal code, organization,
/// organizational unit, common name, serial number). Other attributes only count towards
/// [`CsrSubject::is_empty`]; they are not carried into a certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CsrSubject {
    /// `C` values.
    pub country: Vec<String>,
    /// `ST` values.
    pub province: Vec<String>,
    /// `L` values.
    pub locality: Vec<String>,
    /// `street` values.
    pub street_address: Vec<String>,
    /// `postalCode` values.
    pub postal_code: Vec<String>,
    /// `O` values.
    pub organization: Vec<String>,
    /// `OU` values.
    pub organizational_unit: Vec<String>,
    /// The last `CN` value (empty when none).
    pub common_name: String,
    /// The last `serialNumber` value (empty when none).
    pub serial_number: String,
    /// Attributes outside the list above.
    pub other_attributes: usize,
}

impl CsrSubject {
    fn from_name(name: &x509_parser::x509::X509Name<'_>) -> Self {
        let mut s = Self::default();
        for atv in name.iter_attributes() {
            let oid = atv.attr_type().as_bytes();
            let known = match oid {
                [0x55, 0x04, n] => *n,
                _ => 0,
            };
            let Some(value) = attribute_string(atv.attr_value()) else {
                if !matches!(known, 3 | 5..=11 | 17) {
                    s.other_attributes += 1;
                }
                continue;
            };
            match known {
                3 => s.common_name = value,
                5 => s.serial_number = value,
                6 => s.country.push(value),
                7 => s.locality.push(value),
                8 => s.province.push(value),
                9 => s.street_address.push(value),
                10 => s.organization.push(value),
                11 => s.organizational_unit.push(value),
                17 => s.postal_code.push(value),
                _ => s.other_attributes += 1,
            }
        }
        s
    }

    /// Whether the subject says nothing (then SPIRE uses its default subject).
    pub fn is_empty(&self) -> bool {
        self.other_attributes == 0
            && self.common_name.is_empty()
            && self.serial_number.is_empty()
            && [
                &self.country,
                &self.province,
                &self.locality,
                &self.street_address,
                &self.postal_code,
                &self.organization,
                &self.organizational_unit,
            ]
            .iter()
            .all(|v| v.is_empty())
    }
}

/// The text of an attribute value of one of the string types Go decodes (UTF8String,
/// PrintableString, IA5String, T61String, NumericString, BMPString); `None` otherwise.
fn attribute_string(value: &x509_parser::der_parser::asn1_rs::Any<'_>) -> Option<String> {
    use x509_parser::der_parser::asn1_rs::Tag;
    let data = value.data;
    match value.tag() {
        Tag::Utf8String
        | Tag::PrintableString
        | Tag::Ia5String
        | Tag::T61String
        | Tag::NumericString => std::str::from_utf8(data).ok().map(str::to_owned),
        Tag::BmpString => {
            let units: Vec<u16> =
                data.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
            String::from_utf16(&units).ok()
        }
        _ => None,
    }
}

fn parse_csr(csr_der: &[u8]) -> Result<X509CertificationRequest<'_>, CsrError> {
    let (rest, csr) =
        X509CertificationRequest::from_der(csr_der).map_err(|_| CsrError::MalformedDer)?;
    if !rest.is_empty() {
        return Err(CsrError::TrailingData);
    }
    Ok(csr)
}

fn verify_parsed<'a>(csr: &X509CertificationRequest<'a>) -> Result<CheckedPublicKey<'a>, CsrError> {
    let info = &csr.certification_request_info;
    let kind = check_spki(&info.subject_pki)?;
    let sig_oid = &csr.signature_algorithm.algorithm;
    let alg = verification_alg(sig_oid, kind)
        .ok_or_else(|| CsrError::UnsupportedSignatureAlgorithm { oid: sig_oid.to_id_string() })?;
    let key_bits = borrowed(&info.subject_pki.subject_public_key.data)?;
    if csr.signature_value.unused_bits != 0 {
        return Err(CsrError::BadSignature);
    }
    UnparsedPublicKey::new(alg, key_bits)
        .verify(info.raw, &csr.signature_value.data)
        .map_err(|_| CsrError::BadSignature)?;
    Ok(CheckedPublicKey { spki_der: info.subject_pki.raw, key_bits, kind })
}

/// Builds a minimal DER CSR for `key`: empty subject, no attributes, signed with the key's
/// X.509 signature algorithm. This is what an agent or workload sends; the CA takes only the
/// key from it.
///
/// # Errors
/// [`KeyError::Crypto`] if signing fails.
pub fn build_csr(key: &PrivateKey) -> Result<Vec<u8>, KeyError> {
    let signer = key.x509_signer()?;
    let mut info = Vec::with_capacity(256);
    der::nested(&mut info, der::SEQUENCE, |o| {
        der::uint(o, &[0]);
        der::tlv(o, der::SEQUENCE, &[]);
        o.extend_from_slice(key.public_key_der());
        der::tlv(o, 0xa0, &[]);
    });
    let sig = signer.sign(&info).map_err(|_| KeyError::Crypto("CSR signing"))?;
    let mut out = Vec::with_capacity(info.len() + sig.len() + 32);
    der::nested(&mut out, der::SEQUENCE, |o| {
        o.extend_from_slice(&info);
        o.extend_from_slice(signer.x509_algorithm_der());
        der::bit_string(o, &sig);
    });
    Ok(out)
}
