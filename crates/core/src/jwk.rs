//! Public keys as JSON Web Keys (RFC 7517/7518) and as PKIX `SubjectPublicKeyInfo` DER.
//!
//! SPIFFE bundles carry keys as JWKs; SPIRE's APIs and ward's [`JwtAuthority`] carry them as
//! PKIX DER. [`JwkPublicKey`] converts between the two for EC keys on P-256, P-384 and P-521
//! (uncompressed points) and RSA keys. Other key types are refused with a typed error.
//!
//! [`JwtAuthority`]: crate::bundle::JwtAuthority

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::der;

/// DER content bytes of the `id-ecPublicKey` OID (1.2.840.10045.2.1).
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// DER content bytes of the `rsaEncryption` OID (1.2.840.113549.1.1.1).
const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
/// DER content bytes of the P-256 curve OID (1.2.840.10045.3.1.7).
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// DER content bytes of the P-384 curve OID (1.3.132.0.34).
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
/// DER content bytes of the P-521 curve OID (1.3.132.0.35).
const OID_P521: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x23];

const TAG_INTEGER: u8 = der::INTEGER;
const TAG_SEQUENCE: u8 = der::SEQUENCE;
#[cfg(test)]
const TAG_BIT_STRING: u8 = der::BIT_STRING;
#[cfg(test)]
const TAG_OID: u8 = der::OID;

/// Why a key cannot be converted between JWK and PKIX DER.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwkError {
    /// The bytes are not a DER `SubjectPublicKeyInfo` (or have trailing bytes).
    #[error("malformed subject public key info")]
    MalformedSpki,
    /// The key algorithm is neither EC nor RSA.
    #[error("unsupported public key algorithm")]
    UnsupportedAlgorithm,
    /// The EC key is on a curve other than P-256, P-384 or P-521.
    #[error("unsupported elliptic curve {0:?}")]
    UnsupportedCurve(String),
    /// The EC point is not an uncompressed point of the curve's size.
    #[error("invalid elliptic curve point")]
    InvalidEcPoint,
    /// The RSA modulus or exponent is empty or zero, or the RSA key is malformed.
    #[error("invalid rsa public key")]
    InvalidRsaKey,
    /// The JWK `kty` is neither `EC` nor `RSA`.
    #[error("unsupported key type {0:?}")]
    UnsupportedKeyType(String),
    /// A JWK member the key type needs is absent.
    #[error("missing member {0:?}")]
    MissingMember(&'static str),
    /// A JWK member is not a string.
    #[error("member {0:?} is not a string")]
    InvalidMember(&'static str),
    /// A JWK member is not unpadded base64url.
    #[error("member {0:?} is not base64url")]
    InvalidBase64(&'static str),
}

/// An elliptic curve a JWK may name in `crv`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EcCurve {
    /// NIST P-256 (secp256r1).
    P256,
    /// NIST P-384 (secp384r1).
    P384,
    /// NIST P-521 (secp521r1).
    P521,
}

impl EcCurve {
    /// The JWK `crv` name.
    pub fn jwk_name(self) -> &'static str {
        match self {
            Self::P256 => "P-256",
            Self::P384 => "P-384",
            Self::P521 => "P-521",
        }
    }

    /// The byte length of one coordinate.
    pub fn coordinate_len(self) -> usize {
        match self {
            Self::P256 => 32,
            Self::P384 => 48,
            Self::P521 => 66,
        }
    }

    fn oid(self) -> &'static [u8] {
        match self {
            Self::P256 => OID_P256,
            Self::P384 => OID_P384,
            Self::P521 => OID_P521,
        }
    }

    fn from_jwk_name(name: &str) -> Option<Self> {
        [Self::P256, Self::P384, Self::P521].into_iter().find(|c| c.jwk_name() == name)
    }

    fn from_oid(oid: &[u8]) -> Option<Self> {
        [Self::P256, Self::P384, Self::P521].into_iter().find(|c| c.oid() == oid)
    }
}

/// A public key in the shapes JWKs and PKIX both express.
///
/// Invariants (checked by every constructor): EC coordinates are exactly the curve's
/// coordinate length; RSA `n` and `e` are non-empty big-endian integers without leading zeros.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum JwkPublicKey {
    /// An EC key: the affine coordinates of an uncompressed point.
    Ec {
        /// The curve.
        curve: EcCurve,
        /// The x coordinate, big-endian, left-padded to the curve size.
        x: Vec<u8>,
        /// The y coordinate, big-endian, left-padded to the curve size.
        y: Vec<u8>,
    },
    /// An RSA key.
    Rsa {
        /// The modulus, big-endian, no leading zeros.
        n: Vec<u8>,
        /// The public exponent, big-endian, no leading zeros.
        e: Vec<u8>,
    },
}

impl JwkPublicKey {
    /// Reads a PKIX `SubjectPublicKeyInfo` (DER).
    ///
    /// # Errors
    /// [`JwkError::MalformedSpki`] for bad DER, [`JwkError::UnsupportedAlgorithm`] or
    /// [`JwkError::UnsupportedCurve`] for other key kinds, [`JwkError::InvalidEcPoint`] or
    /// [`JwkError::InvalidRsaKey`] for bad key material.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, JwkError> {
        let (rest, spki) =
            SubjectPublicKeyInfo::from_der(der).map_err(|_| JwkError::MalformedSpki)?;
        if !rest.is_empty() {
            return Err(JwkError::MalformedSpki);
        }
        Self::from_spki(&spki)
    }

    /// Reads an already parsed `SubjectPublicKeyInfo`, such as a certificate's.
    ///
    /// # Errors
    /// As [`JwkPublicKey::from_spki_der`].
    pub fn from_spki(spki: &SubjectPublicKeyInfo<'_>) -> Result<Self, JwkError> {
        let alg = spki.algorithm.algorithm.as_bytes();
        let key_bits: &[u8] = &spki.subject_public_key.data;
        if alg == OID_EC_PUBLIC_KEY {
            let params = spki.algorithm.parameters.as_ref().ok_or(JwkError::MalformedSpki)?;
            let curve_oid = params.as_oid().map_err(|_| JwkError::MalformedSpki)?;
            let curve = EcCurve::from_oid(curve_oid.as_bytes())
                .ok_or_else(|| JwkError::UnsupportedCurve(curve_oid.to_id_string()))?;
            Self::from_ec_point(curve, key_bits)
        } else if alg == OID_RSA_ENCRYPTION {
            let (n, e) = parse_rsa_public_key(key_bits).ok_or(JwkError::InvalidRsaKey)?;
            Self::rsa(n, e)
        } else {
            Err(JwkError::UnsupportedAlgorithm)
        }
    }

    /// An EC key from an uncompressed SEC1 point (`04 || x || y`).
    ///
    /// # Errors
    /// [`JwkError::InvalidEcPoint`] when the point is compressed or has the wrong length.
    pub fn from_ec_point(curve: EcCurve, point: &[u8]) -> Result<Self, JwkError> {
        let len = curve.coordinate_len();
        match point.split_first() {
            Some((0x04, xy)) if xy.len() == 2 * len => {
                let (x, y) = xy.split_at(len);
                Ok(Self::Ec { curve, x: x.to_vec(), y: y.to_vec() })
            }
            _ => Err(JwkError::InvalidEcPoint),
        }
    }

    /// An RSA key from big-endian modulus and exponent (leading zeros are stripped).
    ///
    /// # Errors
    /// [`JwkError::InvalidRsaKey`] when either is zero.
    pub fn rsa(n: &[u8], e: &[u8]) -> Result<Self, JwkError> {
        let (n, e) = (strip_leading_zeros(n), strip_leading_zeros(e));
        if n.is_empty() || e.is_empty() {
            return Err(JwkError::InvalidRsaKey);
        }
        Ok(Self::Rsa { n: n.to_vec(), e: e.to_vec() })
    }

    /// The key as PKIX `SubjectPublicKeyInfo` DER.
    pub fn to_spki_der(&self) -> Vec<u8> {
        let mut out = Vec::new();
        der::nested(&mut out, der::SEQUENCE, |o| {
            der::nested(o, der::SEQUENCE, |o| match self {
                Self::Ec { curve, .. } => {
                    der::tlv(o, der::OID, OID_EC_PUBLIC_KEY);
                    der::tlv(o, der::OID, curve.oid());
                }
                Self::Rsa { .. } => {
                    der::tlv(o, der::OID, OID_RSA_ENCRYPTION);
                    der::tlv(o, der::NULL, &[]);
                }
            });
            der::bit_string(o, &self.raw_public_key());
        });
        out
    }

    /// The key in the form signature verifiers take: the uncompressed point for EC, the
    /// PKCS#1 `RSAPublicKey` DER for RSA.
    pub fn raw_public_key(&self) -> Vec<u8> {
        match self {
            Self::Ec { x, y, .. } => [&[0x04u8][..], x, y].concat(),
            Self::Rsa { n, e } => {
                let mut out = Vec::new();
                der::nested(&mut out, der::SEQUENCE, |o| {
                    der::uint(o, n);
                    der::uint(o, e);
                });
                out
            }
        }
    }

    /// The JWK `kty`.
    pub fn kty(&self) -> &'static str {
        match self {
            Self::Ec { .. } => "EC",
            Self::Rsa { .. } => "RSA",
        }
    }

    /// Writes the key's JWK members (`kty` and `crv`/`x`/`y` or `n`/`e`) into `obj`.
    pub fn write_jwk_members(&self, obj: &mut Map<String, Value>) {
        obj.insert("kty".into(), self.kty().into());
        match self {
            Self::Ec { curve, x, y } => {
                obj.insert("crv".into(), curve.jwk_name().into());
                obj.insert("x".into(), URL_SAFE_NO_PAD.encode(x).into());
                obj.insert("y".into(), URL_SAFE_NO_PAD.encode(y).into());
            }
            Self::Rsa { n, e } => {
                obj.insert("n".into(), URL_SAFE_NO_PAD.encode(n).into());
                obj.insert("e".into(), URL_SAFE_NO_PAD.encode(e).into());
            }
        }
    }

    /// Reads the key members of a JWK object; other members are ignored.
    ///
    /// # Errors
    /// [`JwkError`] naming the missing, mistyped or undecodable member, or the unsupported
    /// key type or curve.
    pub fn from_jwk_members(obj: &Map<String, Value>) -> Result<Self, JwkError> {
        match string_member(obj, "kty")? {
            "EC" => {
                let crv = string_member(obj, "crv")?;
                let curve = EcCurve::from_jwk_name(crv)
                    .ok_or_else(|| JwkError::UnsupportedCurve(crv.to_owned()))?;
                let x = b64_member(obj, "x")?;
                let y = b64_member(obj, "y")?;
                let len = curve.coordinate_len();
                if x.len() != len || y.len() != len {
                    return Err(JwkError::InvalidEcPoint);
                }
                Ok(Self::Ec { curve, x, y })
            }
            "RSA" => {
                let n = b64_member(obj, "n")?;
                let e = b64_member(obj, "e")?;
                // RFC 7518 §6.3.1: no leading zero octets.
                if n.first() == Some(&0) || e.first() == Some(&0) {
                    return Err(JwkError::InvalidRsaKey);
                }
                Self::rsa(&n, &e)
            }
            other => Err(JwkError::UnsupportedKeyType(other.to_owned())),
        }
    }
}

fn string_member<'a>(obj: &'a Map<String, Value>, name: &'static str) -> Result<&'a str, JwkError> {
    match obj.get(name) {
        None => Err(JwkError::MissingMember(name)),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(JwkError::InvalidMember(name)),
    }
}

fn b64_member(obj: &Map<String, Value>, name: &'static str) -> Result<Vec<u8>, JwkError> {
    URL_SAFE_NO_PAD.decode(string_member(obj, name)?).map_err(|_| JwkError::InvalidBase64(name))
}

fn strip_leading_zeros(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[start..]
}

/// Reads PKCS#1 `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }`.
fn parse_rsa_public_key(der: &[u8]) -> Option<(&[u8], &[u8])> {
    let (body, rest) = read_tlv(der, TAG_SEQUENCE)?;
    if !rest.is_empty() {
        return None;
    }
    let (n, rest) = read_tlv(body, TAG_INTEGER)?;
    let (e, rest) = read_tlv(rest, TAG_INTEGER)?;
    if !rest.is_empty() || n.first().is_none_or(|b| b & 0x80 != 0) {
        return None;
    }
    if e.first().is_none_or(|b| b & 0x80 != 0) {
        return None;
    }
    Some((n, e))
}

/// Reads one DER TLV with the given tag; returns its body and what follows.
pub(crate) fn read_tlv(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = input.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (len_bytes, after) = rest.split_at(count);
        rest = after;
        len_bytes.iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
    };
    if rest.len() < len {
        return None;
    }
    Some(rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{self, KeyPair};

    fn ec_spki(alg: &'static signature::EcdsaSigningAlgorithm) -> (Vec<u8>, Vec<u8>) {
        let rng = SystemRandom::new();
        let pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let kp = signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref()).unwrap();
        let spki = kp.public_key().as_der().unwrap().as_ref().to_vec();
        (spki, kp.public_key().as_ref().to_vec())
    }

    #[test]
    fn ec_keys_convert_both_ways_and_match_aws_lc_der() {
        for (alg, curve) in [
            (&signature::ECDSA_P256_SHA256_FIXED_SIGNING, EcCurve::P256),
            (&signature::ECDSA_P384_SHA384_FIXED_SIGNING, EcCurve::P384),
            (&signature::ECDSA_P521_SHA512_FIXED_SIGNING, EcCurve::P521),
        ] {
            let (spki, point) = ec_spki(alg);
            let key = JwkPublicKey::from_spki_der(&spki).unwrap();
            assert!(matches!(key, JwkPublicKey::Ec { curve: c, .. } if c == curve));
            assert_eq!(key.to_spki_der(), spki);
            assert_eq!(key.raw_public_key(), point);
            let mut obj = Map::new();
            key.write_jwk_members(&mut obj);
            assert_eq!(obj["crv"], curve.jwk_name());
            assert_eq!(JwkPublicKey::from_jwk_members(&obj).unwrap(), key);
        }
    }

    #[test]
    fn rsa_keys_convert_both_ways_and_match_aws_lc_der() {
        let kp = signature::RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let spki = kp.public_key().as_der().unwrap().as_ref().to_vec();
        let key = JwkPublicKey::from_spki_der(&spki).unwrap();
        let JwkPublicKey::Rsa { n, e } = &key else { panic!("not rsa") };
        assert_eq!(n.len(), 256);
        assert_eq!(e, &[1, 0, 1]);
        assert_eq!(key.to_spki_der(), spki);
        assert_eq!(key.raw_public_key(), kp.public_key().as_ref());
        let mut obj = Map::new();
        key.write_jwk_members(&mut obj);
        assert_eq!(obj["e"], "AQAB");
        assert_eq!(JwkPublicKey::from_jwk_members(&obj).unwrap(), key);
    }

    /// One DER TLV, through the shared writer.
    fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        der::tlv(&mut out, tag, body);
        out
    }

    #[test]
    fn long_der_lengths_encode_in_long_form() {
        assert_eq!(tlv(0x04, &[0; 200])[..3], [0x04, 0x81, 200]);
        assert_eq!(tlv(0x04, &[0; 300])[..4], [0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(read_tlv(&tlv(0x04, &[7; 300]), 0x04).unwrap().0, &[7; 300][..]);
    }

    #[test]
    fn spki_rejection_table() {
        let (p256, _) = ec_spki(&signature::ECDSA_P256_SHA256_FIXED_SIGNING);
        let mut trailing = p256.clone();
        trailing.push(0);
        // An Ed25519 SPKI: algorithm 1.3.101.112, 32-byte key.
        let ed25519 = tlv(
            TAG_SEQUENCE,
            &[tlv(TAG_SEQUENCE, &tlv(TAG_OID, &[0x2b, 0x65, 0x70])), tlv(TAG_BIT_STRING, &[0; 33])]
                .concat(),
        );
        let secp256k1 = {
            let alg =
                [tlv(TAG_OID, OID_EC_PUBLIC_KEY), tlv(TAG_OID, &[0x2b, 0x81, 0x04, 0x00, 0x0a])];
            let bits = [&[0u8, 4][..], &[1; 64]].concat();
            tlv(
                TAG_SEQUENCE,
                &[tlv(TAG_SEQUENCE, &alg.concat()), tlv(TAG_BIT_STRING, &bits)].concat(),
            )
        };
        let compressed = {
            let alg = [tlv(TAG_OID, OID_EC_PUBLIC_KEY), tlv(TAG_OID, OID_P256)];
            let bits = [&[0u8, 2][..], &[1; 32]].concat();
            tlv(
                TAG_SEQUENCE,
                &[tlv(TAG_SEQUENCE, &alg.concat()), tlv(TAG_BIT_STRING, &bits)].concat(),
            )
        };
        let rsa_zero = JwkPublicKey::Rsa { n: vec![], e: vec![1] }.to_spki_der();
        let cases: Vec<(&[u8], JwkError)> = vec![
            (b"", JwkError::MalformedSpki),
            (b"\x30\x03\x02\x01\x00", JwkError::MalformedSpki),
            (&trailing, JwkError::MalformedSpki),
            (&ed25519, JwkError::UnsupportedAlgorithm),
            (&secp256k1, JwkError::UnsupportedCurve("1.3.132.0.10".into())),
            (&compressed, JwkError::InvalidEcPoint),
            (&rsa_zero, JwkError::InvalidRsaKey),
        ];
        for (input, want) in cases {
            assert_eq!(JwkPublicKey::from_spki_der(input).unwrap_err(), want, "{input:02x?}");
        }
    }

    #[test]
    fn jwk_member_rejection_table() {
        let json = |s: &str| serde_json::from_str::<Map<String, Value>>(s).unwrap();
        let x32 = URL_SAFE_NO_PAD.encode([1u8; 32]);
        let cases = [
            (json("{}"), JwkError::MissingMember("kty")),
            (json(r#"{"kty":1}"#), JwkError::InvalidMember("kty")),
            (json(r#"{"kty":"OKP","crv":"Ed25519"}"#), JwkError::UnsupportedKeyType("OKP".into())),
            (json(r#"{"kty":"EC"}"#), JwkError::MissingMember("crv")),
            (json(r#"{"kty":"EC","crv":"P-192"}"#), JwkError::UnsupportedCurve("P-192".into())),
            (json(r#"{"kty":"EC","crv":"P-256","x":"AA"}"#), JwkError::MissingMember("y")),
            (json(r#"{"kty":"EC","crv":"P-256","x":"A+","y":"AA"}"#), JwkError::InvalidBase64("x")),
            (json(r#"{"kty":"EC","crv":"P-256","x":"AA","y":"AA"}"#), JwkError::InvalidEcPoint),
            (
                json(&format!(r#"{{"kty":"EC","crv":"P-384","x":"{x32}","y":"{x32}"}}"#)),
                JwkError::InvalidEcPoint,
            ),
            (json(r#"{"kty":"RSA","n":"AQ=="}"#), JwkError::InvalidBase64("n")),
            (json(r#"{"kty":"RSA","n":"AQ","e":[]}"#), JwkError::InvalidMember("e")),
            (json(r#"{"kty":"RSA","n":"AAE","e":"AQAB"}"#), JwkError::InvalidRsaKey),
            (json(r#"{"kty":"RSA","n":"","e":"AQAB"}"#), JwkError::InvalidRsaKey),
        ];
        for (input, want) in cases {
            assert_eq!(JwkPublicKey::from_jwk_members(&input).unwrap_err(), want, "{input:?}");
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn rsa_spki_round_trips(
                n in proptest::collection::vec(any::<u8>(), 1..600),
                e in proptest::collection::vec(any::<u8>(), 1..8),
            ) {
                prop_assume!(n.iter().any(|&b| b != 0) && e.iter().any(|&b| b != 0));
                let key = JwkPublicKey::rsa(&n, &e).unwrap();
                prop_assert_eq!(JwkPublicKey::from_spki_der(&key.to_spki_der()).unwrap(), key);
            }

            #[test]
            fn spki_parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
                let _ = JwkPublicKey::from_spki_der(&bytes);
            }
        }
    }
}
