//! Compact JWS tokens as the cloud attestors receive them (identity and access tokens):
//! parsed with go-jose's checks and error texts (`jwt.ParseSigned`, what SPIRE's plugins call),
//! signatures checked with `jsonwebtoken`.

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

use super::x509pop::go_json_error;

/// go-jose's text for a signature that does not verify.
pub const CRYPTO_FAILURE: &str = "go-jose/go-jose: error in cryptographic primitive";

/// go-jose's validation errors of registered claims.
pub mod claims_error {
    /// `aud` does not hold the expected audience.
    pub const AUDIENCE: &str =
        "go-jose/go-jose/jwt: validation failed, invalid audience claim (aud)";
    /// `nbf` is in the future.
    pub const NOT_VALID_YET: &str =
        "go-jose/go-jose/jwt: validation failed, token not valid yet (nbf)";
    /// `exp` has passed.
    pub const EXPIRED: &str = "go-jose/go-jose/jwt: validation failed, token is expired (exp)";
    /// `iat` is in the future.
    pub const ISSUED_IN_THE_FUTURE: &str =
        "go-jose/go-jose/jwt: validation field, token issued in the future (iat)";
}

/// Go's `base64.RawURLEncoding`: no padding, trailing bits ignored.
const RAW_URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(true),
);

/// Decodes one part of a compact JWS with Go's error text.
fn decode_part(part: &[u8]) -> Result<Vec<u8>, String> {
    RAW_URL.decode(part).map_err(|e| {
        let at = match e {
            base64::DecodeError::InvalidByte(at, _)
            | base64::DecodeError::InvalidLastSymbol(at, _) => at,
            base64::DecodeError::InvalidLength(len) => len.saturating_sub(1),
            base64::DecodeError::InvalidPadding => part.len(),
        };
        format!("illegal base64 data at input byte {at}")
    })
}

/// A parsed, not yet verified, compact JWS.
#[derive(Debug, Clone)]
pub struct CompactJws {
    /// The `alg` header.
    pub alg: String,
    /// The `kid` header (empty when absent).
    pub kid: String,
    /// The decoded payload.
    pub claims: Vec<u8>,
    signing_input: Vec<u8>,
    signature: String,
}

impl CompactJws {
    /// Parses `token`, whose `alg` must be one of `allowed` (go-jose's `ParseSigned`).
    ///
    /// # Errors
    /// go-jose's or Go's text.
    pub fn parse(token: &[u8], allowed: &[&str]) -> Result<Self, String> {
        let parts: Vec<&[u8]> = token.split(|&b| b == b'.').collect();
        let [header, claims, signature] = parts.as_slice() else {
            return Err("go-jose/go-jose: compact JWS format must have three parts".into());
        };
        let header_json = decode_part(header)?;
        let claims_json = decode_part(claims)?;
        decode_part(signature)?;
        let header_map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&header_json).map_err(|e| go_json_error(&e))?;
        let text = |k: &str| {
            header_map.get(k).and_then(serde_json::Value::as_str).unwrap_or_default().to_owned()
        };
        let alg = text("alg");
        if !allowed.contains(&alg.as_str()) {
            let expected: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
            return Err(format!(
                "unexpected signature algorithm {alg:?}; expected [{}]",
                expected.join(" ")
            ));
        }
        Ok(Self {
            alg,
            kid: text("kid"),
            claims: claims_json,
            signing_input: token[..header.len() + 1 + claims.len()].to_vec(),
            signature: String::from_utf8_lossy(signature).into_owned(),
        })
    }

    /// Whether the signature verifies with `key` under the token's `alg`.
    pub fn verifies_with(&self, key: &jsonwebtoken::DecodingKey) -> bool {
        let Ok(alg) = self.alg.parse::<jsonwebtoken::Algorithm>() else { return false };
        jsonwebtoken::crypto::verify(&self.signature, &self.signing_input, key, alg)
            .unwrap_or(false)
    }
}

/// A JWT `aud`: one string or a list.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(untagged)]
pub enum Audience {
    /// One audience.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl Audience {
    /// Whether `s` is one of them.
    pub fn contains(&self, s: &str) -> bool {
        match self {
            Self::One(a) => a == s,
            Self::Many(all) => all.iter().any(|a| a == s),
        }
    }
}

/// The registered time and audience claims go-jose validates.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct RegisteredClaims {
    /// `aud`.
    #[serde(default)]
    pub aud: Option<Audience>,
    /// `exp`.
    #[serde(default)]
    pub exp: Option<f64>,
    /// `nbf`.
    #[serde(default)]
    pub nbf: Option<f64>,
    /// `iat`.
    #[serde(default)]
    pub iat: Option<f64>,
}

impl RegisteredClaims {
    /// go-jose's `ValidateWithLeeway` for audience `audience` at Unix time `now`, in its order.
    ///
    /// # Errors
    /// go-jose's text.
    pub fn validate(&self, audience: &str, now: i64, leeway: i64) -> Result<(), &'static str> {
        if !self.aud.as_ref().is_some_and(|a| a.contains(audience)) {
            return Err(claims_error::AUDIENCE);
        }
        // NumericDate keeps whole seconds.
        #[allow(clippy::cast_possible_truncation)]
        let secs = |v: f64| v as i64;
        if self.nbf.is_some_and(|nbf| now + leeway < secs(nbf)) {
            return Err(claims_error::NOT_VALID_YET);
        }
        if self.exp.is_some_and(|exp| now - leeway > secs(exp)) {
            return Err(claims_error::EXPIRED);
        }
        if self.iat.is_some_and(|iat| now + leeway < secs(iat)) {
            return Err(claims_error::ISSUED_IN_THE_FUTURE);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_are_go_joses() {
        let e = |t: &[u8]| CompactJws::parse(t, &["RS256", "ES256"]).unwrap_err();
        assert_eq!(e(b"a.b"), "go-jose/go-jose: compact JWS format must have three parts");
        assert_eq!(e(b"a.b.c.d"), "go-jose/go-jose: compact JWS format must have three parts");
        assert_eq!(e(b"e30.b!.c"), "illegal base64 data at input byte 1");
        assert_eq!(
            e(b"e30.e30.AAA"),
            "unexpected signature algorithm \"\"; expected [\"RS256\" \"ES256\"]"
        );
    }

    #[test]
    fn claims_are_validated_in_go_joses_order_with_leeway() {
        let c = RegisteredClaims {
            aud: Some(Audience::Many(vec!["a".into(), "b".into()])),
            exp: Some(100.0),
            nbf: Some(50.0),
            iat: Some(50.0),
        };
        assert_eq!(c.validate("c", 60, 60), Err(claims_error::AUDIENCE));
        assert_eq!(c.validate("b", 160, 60), Ok(()));
        assert_eq!(c.validate("b", 161, 60), Err(claims_error::EXPIRED));
        assert_eq!(c.validate("b", -11, 60), Err(claims_error::NOT_VALID_YET));
        assert_eq!(c.validate("a", -10, 60), Ok(()));
    }
}
