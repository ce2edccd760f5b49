//! The SPIFFE bundle JSON format and the plain JWKS of JWT authorities.
//!
//! A SPIFFE bundle (SPIFFE Trust Domain and Bundle standard, §4) is a JWK Set whose keys say
//! what they are for in `use`:
//! - `x509-svid`: an X.509 authority; `x5c` holds exactly one standard-base64 DER certificate
//!   and the key members (`kty` with `crv`/`x`/`y` or `n`/`e`) repeat its public key;
//! - `jwt-svid`: a JWT authority; `kid` is required.
//!
//! Keys with another or no `use` are skipped, as the standard asks. Top-level
//! `spiffe_sequence` (unsigned) and `spiffe_refresh_hint` (seconds) are optional; ward's
//! [`Bundle`] keeps 0 for "absent" and omits zero values when encoding.
//!
//! The plain JWKS (what the Workload API's `FetchJWTBundles` carries) holds only JWT
//! authorities: every key has a `kid` and none has `use` or `spiffe_*` members.
//!
//! The trust domain is not part of either document: the caller knows whose bundle it reads.

use super::{Bundle, JwtAuthority, X509Authority, parse_certificate};
use crate::jwk::{JwkError, JwkPublicKey};
use crate::spiffe_id::TrustDomain;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value};

/// The `use` value of an X.509 authority.
pub const USE_X509_SVID: &str = "x509-svid";
/// The `use` value of a JWT authority.
pub const USE_JWT_SVID: &str = "jwt-svid";

/// Why bytes are not a SPIFFE bundle (or plain JWKS).
///
/// `index` is the position of the offending key in the `keys` array.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleDecodeError {
    /// The bytes are not JSON.
    #[error("invalid json at line {line} column {column}")]
    InvalidJson {
        /// 1-based line of the syntax error (0 at end of input).
        line: usize,
        /// 1-based column of the syntax error.
        column: usize,
    },
    /// The document is JSON but not an object.
    #[error("bundle document is not a json object")]
    NotAnObject,
    /// The `keys` member is absent.
    #[error("missing keys member")]
    MissingKeys,
    /// The `keys` member is not an array.
    #[error("keys member is not an array")]
    KeysNotArray,
    /// `spiffe_sequence` is not an unsigned 64-bit integer.
    #[error("spiffe_sequence is not an unsigned integer")]
    InvalidSequence,
    /// `spiffe_refresh_hint` is not a non-negative 64-bit integer.
    #[error("spiffe_refresh_hint is not a non-negative integer")]
    InvalidRefreshHint,
    /// An element of `keys` is not an object.
    #[error("key {index} is not a json object")]
    KeyNotObject {
        /// Position in `keys`.
        index: usize,
    },
    /// A JWT authority has no `kid`, or an empty one.
    #[error("key {index}: missing key id")]
    MissingKeyId {
        /// Position in `keys`.
        index: usize,
    },
    /// A member has the wrong JSON type (`kid` not a string, `x5c` not an array of strings).
    #[error("key {index}: member {member:?} has the wrong type")]
    InvalidMember {
        /// Position in `keys`.
        index: usize,
        /// The member name.
        member: &'static str,
    },
    /// An X.509 authority's `x5c` does not hold exactly one certificate.
    #[error("key {index}: expected exactly one x5c certificate, got {count}")]
    X5cCount {
        /// Position in `keys`.
        index: usize,
        /// How many `x5c` entries there are (0 when absent).
        count: usize,
    },
    /// The `x5c` entry is not standard base64.
    #[error("key {index}: x5c entry is not base64")]
    InvalidX5cBase64 {
        /// Position in `keys`.
        index: usize,
    },
    /// The `x5c` entry is not a DER certificate.
    #[error("key {index}: x5c entry is not a der certificate")]
    InvalidCertificate {
        /// Position in `keys`.
        index: usize,
    },
    /// The `x5c` certificate's public key is not one ward can express as a JWK.
    #[error("key {index}: certificate public key")]
    CertificateKey {
        /// Position in `keys`.
        index: usize,
        /// What is wrong with it.
        #[source]
        source: JwkError,
    },
    /// The JWK key members are missing or invalid.
    #[error("key {index}: key parameters")]
    Key {
        /// Position in `keys`.
        index: usize,
        /// What is wrong with them.
        #[source]
        source: JwkError,
    },
    /// The JWK key members and the `x5c` certificate carry different public keys.
    #[error("key {index}: key parameters do not match the x5c certificate")]
    KeyMismatch {
        /// Position in `keys`.
        index: usize,
    },
}

/// Why a [`Bundle`] cannot be written as JSON.
///
/// `index` is the position in [`Bundle::x509_authorities`] or [`Bundle::jwt_authorities`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleEncodeError {
    /// An X.509 authority's bytes are not a DER certificate.
    #[error("x509 authority {index} is not a der certificate")]
    InvalidX509Authority {
        /// Position in `x509_authorities`.
        index: usize,
    },
    /// An X.509 authority's public key cannot be written as a JWK.
    #[error("x509 authority {index}: public key")]
    X509AuthorityKey {
        /// Position in `x509_authorities`.
        index: usize,
        /// What is wrong with it.
        #[source]
        source: JwkError,
    },
    /// A JWT authority's public key cannot be written as a JWK.
    #[error("jwt authority {index}: public key")]
    JwtAuthorityKey {
        /// Position in `jwt_authorities`.
        index: usize,
        /// What is wrong with it.
        #[source]
        source: JwkError,
    },
    /// A JWT authority has an empty key id.
    #[error("jwt authority {index} has an empty key id")]
    EmptyKeyId {
        /// Position in `jwt_authorities`.
        index: usize,
    },
}

impl Bundle {
    /// Reads a SPIFFE bundle document for `trust_domain`.
    ///
    /// Decoded authorities are untainted and JWT authorities have `expires_at` 0: the format
    /// carries neither.
    ///
    /// # Errors
    /// [`BundleDecodeError`] naming the first problem found.
    pub fn from_spiffe_json(
        trust_domain: TrustDomain,
        json: &[u8],
    ) -> Result<Self, BundleDecodeError> {
        let top = parse_top(json)?;
        let keys = keys_array(&top)?;
        let sequence_number = match top.get("spiffe_sequence") {
            None => 0,
            Some(v) => v.as_u64().ok_or(BundleDecodeError::InvalidSequence)?,
        };
        let refresh_hint = match top.get("spiffe_refresh_hint") {
            None => 0,
            Some(v) => {
                v.as_i64().filter(|h| *h >= 0).ok_or(BundleDecodeError::InvalidRefreshHint)?
            }
        };
        let mut bundle = Bundle::new(trust_domain);
        bundle.sequence_number = sequence_number;
        bundle.refresh_hint = refresh_hint;
        for (index, key) in keys.iter().enumerate() {
            let obj = key.as_object().ok_or(BundleDecodeError::KeyNotObject { index })?;
            match obj.get("use").and_then(Value::as_str) {
                Some(USE_X509_SVID) => bundle.x509_authorities.push(decode_x509_key(index, obj)?),
                Some(USE_JWT_SVID) => bundle.jwt_authorities.push(decode_jwt_key(index, obj)?),
                // The standard: keys with an unknown or missing use are ignored.
                _ => {}
            }
        }
        Ok(bundle)
    }

    /// Writes the bundle as a SPIFFE bundle document (compact JSON).
    ///
    /// X.509 authorities come first, then JWT authorities, each in bundle order.
    /// `spiffe_sequence` and `spiffe_refresh_hint` are written when positive.
    ///
    /// # Errors
    /// [`BundleEncodeError`] when an authority cannot be expressed as a JWK.
    pub fn to_spiffe_json(&self) -> Result<String, BundleEncodeError> {
        let mut keys = Vec::with_capacity(self.x509_authorities.len() + self.jwt_authorities.len());
        for (index, authority) in self.x509_authorities.iter().enumerate() {
            keys.push(Value::Object(encode_x509_key(index, authority)?));
        }
        for (index, authority) in self.jwt_authorities.iter().enumerate() {
            let mut obj = encode_jwt_key(index, authority)?;
            obj.insert("use".into(), USE_JWT_SVID.into());
            keys.push(Value::Object(obj));
        }
        let mut top = Map::new();
        top.insert("keys".into(), Value::Array(keys));
        if self.refresh_hint > 0 {
            top.insert("spiffe_refresh_hint".into(), self.refresh_hint.into());
        }
        if self.sequence_number > 0 {
            top.insert("spiffe_sequence".into(), self.sequence_number.into());
        }
        Ok(Value::Object(top).to_string())
    }

    /// Writes the JWT authorities as a plain JWKS (no `use`, no `spiffe_*` members).
    ///
    /// # Errors
    /// [`BundleEncodeError`] when a JWT authority cannot be expressed as a JWK.
    pub fn to_jwks_json(&self) -> Result<String, BundleEncodeError> {
        let keys = self
            .jwt_authorities
            .iter()
            .enumerate()
            .map(|(index, authority)| encode_jwt_key(index, authority).map(Value::Object))
            .collect::<Result<Vec<_>, _>>()?;
        let mut top = Map::new();
        top.insert("keys".into(), Value::Array(keys));
        Ok(Value::Object(top).to_string())
    }
}

/// Reads a plain JWKS of JWT authorities: every key needs a `kid`; `use` is not consulted.
///
/// # Errors
/// [`BundleDecodeError`] naming the first problem found.
pub fn jwt_authorities_from_jwks(json: &[u8]) -> Result<Vec<JwtAuthority>, BundleDecodeError> {
    let top = parse_top(json)?;
    keys_array(&top)?
        .iter()
        .enumerate()
        .map(|(index, key)| {
            let obj = key.as_object().ok_or(BundleDecodeError::KeyNotObject { index })?;
            decode_jwt_key(index, obj)
        })
        .collect()
}

fn parse_top(json: &[u8]) -> Result<Map<String, Value>, BundleDecodeError> {
    let value: Value = serde_json::from_slice(json)
        .map_err(|e| BundleDecodeError::InvalidJson { line: e.line(), column: e.column() })?;
    match value {
        Value::Object(top) => Ok(top),
        _ => Err(BundleDecodeError::NotAnObject),
    }
}

fn keys_array(top: &Map<String, Value>) -> Result<&Vec<Value>, BundleDecodeError> {
    match top.get("keys") {
        None => Err(BundleDecodeError::MissingKeys),
        Some(Value::Array(keys)) => Ok(keys),
        Some(_) => Err(BundleDecodeError::KeysNotArray),
    }
}

fn decode_x509_key(
    index: usize,
    obj: &Map<String, Value>,
) -> Result<X509Authority, BundleDecodeError> {
    let invalid_x5c = BundleDecodeError::InvalidMember { index, member: "x5c" };
    let entries = match obj.get("x5c") {
        None => return Err(BundleDecodeError::X5cCount { index, count: 0 }),
        Some(Value::Array(entries)) => entries,
        Some(_) => return Err(invalid_x5c),
    };
    let [entry] = entries.as_slice() else {
        return Err(BundleDecodeError::X5cCount { index, count: entries.len() });
    };
    let b64 = entry.as_str().ok_or(invalid_x5c)?;
    let der = STANDARD.decode(b64).map_err(|_| BundleDecodeError::InvalidX5cBase64 { index })?;
    let cert = parse_certificate(&der).ok_or(BundleDecodeError::InvalidCertificate { index })?;
    let key = JwkPublicKey::from_jwk_members(obj)
        .map_err(|source| BundleDecodeError::Key { index, source })?;
    let cert_key = JwkPublicKey::from_spki(cert.public_key())
        .map_err(|source| BundleDecodeError::CertificateKey { index, source })?;
    if cert_key != key {
        return Err(BundleDecodeError::KeyMismatch { index });
    }
    Ok(X509Authority::new(der))
}

fn decode_jwt_key(
    index: usize,
    obj: &Map<String, Value>,
) -> Result<JwtAuthority, BundleDecodeError> {
    let key_id = match obj.get("kid") {
        None => return Err(BundleDecodeError::MissingKeyId { index }),
        Some(Value::String(kid)) if kid.is_empty() => {
            return Err(BundleDecodeError::MissingKeyId { index });
        }
        Some(Value::String(kid)) => kid.clone(),
        Some(_) => return Err(BundleDecodeError::InvalidMember { index, member: "kid" }),
    };
    let key = JwkPublicKey::from_jwk_members(obj)
        .map_err(|source| BundleDecodeError::Key { index, source })?;
    Ok(JwtAuthority { public_key_der: key.to_spki_der(), key_id, expires_at: 0, tainted: false })
}

fn encode_x509_key(
    index: usize,
    authority: &X509Authority,
) -> Result<Map<String, Value>, BundleEncodeError> {
    let cert = parse_certificate(&authority.der)
        .ok_or(BundleEncodeError::InvalidX509Authority { index })?;
    let key = JwkPublicKey::from_spki(cert.public_key())
        .map_err(|source| BundleEncodeError::X509AuthorityKey { index, source })?;
    let mut obj = Map::new();
    obj.insert("use".into(), USE_X509_SVID.into());
    key.write_jwk_members(&mut obj);
    obj.insert("x5c".into(), Value::Array(vec![STANDARD.encode(&authority.der).into()]));
    Ok(obj)
}

fn encode_jwt_key(
    index: usize,
    authority: &JwtAuthority,
) -> Result<Map<String, Value>, BundleEncodeError> {
    if authority.key_id.is_empty() {
        return Err(BundleEncodeError::EmptyKeyId { index });
    }
    let key = JwkPublicKey::from_spki_der(&authority.public_key_der)
        .map_err(|source| BundleEncodeError::JwtAuthorityKey { index, source })?;
    let mut obj = Map::new();
    obj.insert("kid".into(), authority.key_id.clone().into());
    key.write_jwk_members(&mut obj);
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{ca_pool, jwt_key_pool};
    use BundleDecodeError as D;

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    fn jwt(kid: &str, pool_index: usize) -> JwtAuthority {
        JwtAuthority {
            public_key_der: jwt_key_pool()[pool_index].1.clone(),
            key_id: kid.into(),
            expires_at: 0,
            tainted: false,
        }
    }

    fn sample() -> Bundle {
        let mut bundle = Bundle::new(td());
        bundle.x509_authorities = ca_pool().iter().cloned().map(X509Authority::new).collect();
        bundle.jwt_authorities = (0..4).map(|i| jwt(&format!("kid-{i}"), i)).collect();
        bundle.sequence_number = 42;
        bundle.refresh_hint = 300;
        bundle
    }

    fn decode(json: &str) -> Result<Bundle, BundleDecodeError> {
        Bundle::from_spiffe_json(td(), json.as_bytes())
    }

    /// A valid x509-svid key object for pool certificate 0, as JSON members.
    fn x509_members() -> Map<String, Value> {
        encode_x509_key(0, &X509Authority::new(ca_pool()[0].clone())).unwrap()
    }

    fn with(mut obj: Map<String, Value>, edits: &[(&str, Option<Value>)]) -> String {
        for (k, v) in edits {
            match v {
                Some(v) => obj.insert((*k).into(), v.clone()),
                None => obj.remove(*k),
            };
        }
        serde_json::json!({ "keys": [Value::Object(obj)] }).to_string()
    }

    #[test]
    fn spiffe_json_round_trips_and_has_the_standard_shape() {
        let bundle = sample();
        let json = bundle.to_spiffe_json().unwrap();
        assert_eq!(decode(&json).unwrap(), bundle);

        let doc: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(doc["spiffe_sequence"], 42);
        assert_eq!(doc["spiffe_refresh_hint"], 300);
        let keys = doc["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 7);
        assert_eq!(keys[0]["use"], "x509-svid");
        assert_eq!(keys[0]["kty"], "EC");
        assert_eq!(keys[0]["crv"], "P-256");
        assert_eq!(keys[1]["crv"], "P-384");
        assert_eq!(keys[2]["kty"], "RSA");
        assert_eq!(keys[2]["e"], "AQAB");
        let x5c = keys[0]["x5c"].as_array().unwrap();
        assert_eq!(x5c.len(), 1);
        assert_eq!(STANDARD.decode(x5c[0].as_str().unwrap()).unwrap(), ca_pool()[0]);
        assert!(keys[0].get("kid").is_none());
        assert_eq!(keys[3]["use"], "jwt-svid");
        assert_eq!(keys[3]["kid"], "kid-0");
        assert_eq!(keys[5]["crv"], "P-521");
        assert_eq!(keys[6]["kty"], "RSA");
    }

    #[test]
    fn zero_sequence_and_hint_are_omitted_and_read_back_as_zero() {
        let bundle = Bundle::new(td());
        let json = bundle.to_spiffe_json().unwrap();
        assert_eq!(json, r#"{"keys":[]}"#);
        assert_eq!(decode(&json).unwrap(), bundle);
    }

    #[test]
    fn keys_with_unknown_or_missing_use_are_skipped() {
        let mut other_use = x509_members();
        other_use.insert("use".into(), "enc".into());
        let mut no_use = x509_members();
        no_use.remove("use");
        let mut numeric_use = x509_members();
        numeric_use.insert("use".into(), 7.into());
        let doc = serde_json::json!({
            "keys": [other_use, no_use, numeric_use, x509_members()],
            "spiffe_sequence": 1,
        });
        let bundle = decode(&doc.to_string()).unwrap();
        assert_eq!(bundle.x509_authorities, vec![X509Authority::new(ca_pool()[0].clone())]);
        assert!(bundle.jwt_authorities.is_empty());
        assert_eq!(bundle.sequence_number, 1);
    }

    #[test]
    fn x509_key_may_carry_a_kid() {
        let json = with(x509_members(), &[("kid", Some("k".into()))]);
        assert_eq!(decode(&json).unwrap().x509_authorities.len(), 1);
    }

    #[test]
    fn plain_jwks_has_only_jwt_keys_without_use() {
        let bundle = sample();
        let json = bundle.to_jwks_json().unwrap();
        let doc: Value = serde_json::from_str(&json).unwrap();
        let obj = doc.as_object().unwrap();
        assert_eq!(obj.len(), 1, "only keys: {json}");
        let keys = doc["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 4);
        for key in keys {
            assert!(key.get("use").is_none());
            assert!(key.get("x5c").is_none());
            assert!(key["kid"].as_str().unwrap().starts_with("kid-"));
        }
        assert_eq!(jwt_authorities_from_jwks(json.as_bytes()).unwrap(), bundle.jwt_authorities);
    }

    #[test]
    fn plain_jwks_rejection_table() {
        let cases: &[(&str, BundleDecodeError)] = &[
            ("[]", D::NotAnObject),
            ("{}", D::MissingKeys),
            (r#"{"keys":[1]}"#, D::KeyNotObject { index: 0 }),
            (r#"{"keys":[{"kty":"EC"}]}"#, D::MissingKeyId { index: 0 }),
            (
                r#"{"keys":[{"kid":"a","kty":"oct"}]}"#,
                D::Key { index: 0, source: JwkError::UnsupportedKeyType("oct".into()) },
            ),
        ];
        for (input, want) in cases {
            assert_eq!(&jwt_authorities_from_jwks(input.as_bytes()).unwrap_err(), want, "{input}");
        }
    }

    #[test]
    fn decode_rejection_table() {
        let x509 = x509_members;
        let jwt_obj = || encode_jwt_key(0, &jwt("k", 0)).unwrap();
        let jwt_with = |edits: &[(&str, Option<Value>)]| {
            let mut obj = jwt_obj();
            obj.insert("use".into(), "jwt-svid".into());
            with(obj, edits)
        };
        let p384_cert = STANDARD.encode(&ca_pool()[1]);
        let mut truncated = ca_pool()[0].clone();
        truncated.truncate(truncated.len() - 1);
        let mut trailing = ca_pool()[0].clone();
        trailing.push(0);
        let cases: Vec<(String, BundleDecodeError)> = vec![
            ("".into(), D::InvalidJson { line: 1, column: 0 }),
            ("{".into(), D::InvalidJson { line: 1, column: 1 }),
            ("{\"keys\":[]}\n}".into(), D::InvalidJson { line: 2, column: 1 }),
            ("null".into(), D::NotAnObject),
            ("\"keys\"".into(), D::NotAnObject),
            ("{}".into(), D::MissingKeys),
            (r#"{"keys":{}}"#.into(), D::KeysNotArray),
            (r#"{"keys":null}"#.into(), D::KeysNotArray),
            (r#"{"keys":[],"spiffe_sequence":-1}"#.into(), D::InvalidSequence),
            (r#"{"keys":[],"spiffe_sequence":"1"}"#.into(), D::InvalidSequence),
            (r#"{"keys":[],"spiffe_sequence":1.5}"#.into(), D::InvalidSequence),
            (r#"{"keys":[],"spiffe_refresh_hint":-5}"#.into(), D::InvalidRefreshHint),
            (r#"{"keys":[],"spiffe_refresh_hint":true}"#.into(), D::InvalidRefreshHint),
            (r#"{"keys":[[]]}"#.into(), D::KeyNotObject { index: 0 }),
            (r#"{"keys":[{"use":"enc"},"x"]}"#.into(), D::KeyNotObject { index: 1 }),
            (jwt_with(&[("kid", None)]), D::MissingKeyId { index: 0 }),
            (jwt_with(&[("kid", Some("".into()))]), D::MissingKeyId { index: 0 }),
            (jwt_with(&[("kid", Some(5.into()))]), D::InvalidMember { index: 0, member: "kid" }),
            (
                jwt_with(&[("crv", Some("P-224".into()))]),
                D::Key { index: 0, source: JwkError::UnsupportedCurve("P-224".into()) },
            ),
            (
                jwt_with(&[("x", Some("***".into()))]),
                D::Key { index: 0, source: JwkError::InvalidBase64("x") },
            ),
            (with(x509(), &[("x5c", None)]), D::X5cCount { index: 0, count: 0 }),
            (
                with(x509(), &[("x5c", Some(serde_json::json!([])))]),
                D::X5cCount { index: 0, count: 0 },
            ),
            (
                with(x509(), &[("x5c", Some(serde_json::json!([p384_cert, p384_cert])))]),
                D::X5cCount { index: 0, count: 2 },
            ),
            (
                with(x509(), &[("x5c", Some("abc".into()))]),
                D::InvalidMember { index: 0, member: "x5c" },
            ),
            (
                with(x509(), &[("x5c", Some(serde_json::json!([1])))]),
                D::InvalidMember { index: 0, member: "x5c" },
            ),
            (
                with(x509(), &[("x5c", Some(serde_json::json!(["not base64!"])))]),
                D::InvalidX5cBase64 { index: 0 },
            ),
            (
                with(x509(), &[("x5c", Some(serde_json::json!([URL_SAFE_CERT.as_str()])))]),
                D::InvalidX5cBase64 { index: 0 },
            ),
            (
                with(x509(), &[("x5c", Some(serde_json::json!(["AAAA"])))]),
                D::InvalidCertificate { index: 0 },
            ),
            (
                with(x509(), &[("x5c", Some(serde_json::json!([STANDARD.encode(&truncated)])))]),
                D::InvalidCertificate { index: 0 },
            ),
            (
                with(x509(), &[("x5c", Some(serde_json::json!([STANDARD.encode(&trailing)])))]),
                D::InvalidCertificate { index: 0 },
            ),
            (
                with(x509(), &[("kty", None)]),
                D::Key { index: 0, source: JwkError::MissingMember("kty") },
            ),
            (
                with(x509(), &[("x5c", Some(serde_json::json!([p384_cert])))]),
                D::KeyMismatch { index: 0 },
            ),
        ];
        for (input, want) in cases {
            assert_eq!(decode(&input).unwrap_err(), want, "input {input}");
        }
    }

    /// Pool certificate 0 in URL-safe base64, which `x5c` must not use (RFC 7517 §4.7).
    static URL_SAFE_CERT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        use base64::engine::general_purpose::URL_SAFE;
        // Find a certificate whose encoding differs between the alphabets.
        ca_pool()
            .iter()
            .map(|c| URL_SAFE.encode(c))
            .find(|s| s.contains('-') || s.contains('_'))
            .unwrap()
    });

    #[test]
    fn encode_rejection_table() {
        let mut bad_x509 = Bundle::new(td());
        bad_x509.x509_authorities =
            vec![X509Authority::new(ca_pool()[0].clone()), X509Authority::new(vec![1, 2])];
        assert_eq!(
            bad_x509.to_spiffe_json().unwrap_err(),
            BundleEncodeError::InvalidX509Authority { index: 1 }
        );
        let mut empty_kid = Bundle::new(td());
        empty_kid.jwt_authorities = vec![jwt("a", 0), jwt("", 1)];
        assert_eq!(
            empty_kid.to_spiffe_json().unwrap_err(),
            BundleEncodeError::EmptyKeyId { index: 1 }
        );
        assert_eq!(
            empty_kid.to_jwks_json().unwrap_err(),
            BundleEncodeError::EmptyKeyId { index: 1 }
        );
        let mut bad_key = Bundle::new(td());
        bad_key.jwt_authorities =
            vec![JwtAuthority { public_key_der: vec![0x30, 0], ..jwt("a", 0) }];
        assert_eq!(
            bad_key.to_spiffe_json().unwrap_err(),
            BundleEncodeError::JwtAuthorityKey { index: 0, source: JwkError::MalformedSpki }
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn bundles() -> impl Strategy<Value = Bundle> {
            (
                proptest::collection::vec(0..ca_pool().len(), 0..4),
                proptest::collection::vec(("[ -~]{1,20}", 0..jwt_key_pool().len()), 0..4),
                any::<u64>(),
                0..=i64::MAX,
            )
                .prop_map(|(x509, jwts, sequence_number, refresh_hint)| Bundle {
                    trust_domain: td(),
                    x509_authorities: x509
                        .into_iter()
                        .map(|i| X509Authority::new(ca_pool()[i].clone()))
                        .collect(),
                    jwt_authorities: jwts.into_iter().map(|(kid, i)| jwt(&kid, i)).collect(),
                    refresh_hint,
                    sequence_number,
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            #[test]
            fn bundle_json_round_trips(bundle in bundles()) {
                let json = bundle.to_spiffe_json().unwrap();
                prop_assert_eq!(decode(&json).unwrap(), bundle.clone());
                let jwks = bundle.to_jwks_json().unwrap();
                prop_assert_eq!(jwt_authorities_from_jwks(jwks.as_bytes()).unwrap(), bundle.jwt_authorities);
            }
        }

        proptest! {
            #[test]
            fn decode_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
                let _ = Bundle::from_spiffe_json(td(), &bytes);
                let _ = jwt_authorities_from_jwks(&bytes);
            }

            #[test]
            fn decode_never_panics_on_json_like_text(
                s in r#"\{"keys":\[(\{("(use|kid|kty|crv|x|y|n|e|x5c)":("[A-Za-z0-9_-]{0,8}"|\[("[A-Za-z0-9+/=]{0,12}",?){0,2}\]|-?[0-9]{1,3}|null),?){0,6}\},?){0,3}\](,"spiffe_sequence":-?[0-9]{1,3})?\}"#
            ) {
                let _ = decode(&s);
                let _ = jwt_authorities_from_jwks(s.as_bytes());
            }
        }
    }
}
