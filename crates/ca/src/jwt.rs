//! JWT-SVID signing with a cached aws-lc-rs key.

use std::time::{Duration, SystemTime};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ward_core::{JwtAuthority, SpiffeId};

use crate::error::{KeyError, SignError};
use crate::key::{KeyType, PrivateKey, Signer};

/// A signed JWT-SVID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedJwt {
    /// The compact JWS.
    pub token: String,
    /// `iat`, Unix seconds.
    pub issued_at: i64,
    /// `exp`, Unix seconds.
    pub expires_at: i64,
}

/// Signs JWT-SVIDs with one JWT authority key.
///
/// The header (`alg` from the key type, `kid`, `typ: JWT`) is encoded once; each token
/// costs a small JSON encoding and one signature.
#[derive(Debug)]
pub struct JwtSigner {
    key: PrivateKey,
    signer: Signer,
    key_id: String,
    expires_at: i64,
    issuer: Option<String>,
    header_b64: String,
}

#[derive(serde::Serialize)]
struct Header<'a> {
    alg: &'a str,
    kid: &'a str,
    typ: &'a str,
}

/// Appends `s` as a JSON string literal.
fn push_json_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for &b in s.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0..=0x1f => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

fn push_int(out: &mut Vec<u8>, v: i64) {
    use std::io::Write as _;
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{v}");
}

/// The claims object, keys in lexical order: `aud`, `exp`, `iat`, `iss`, `sub`.
fn claims_json(aud: &[String], exp: i64, iat: i64, iss: Option<&str>, sub: &str) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(64 + sub.len() + aud.iter().map(|a| a.len() + 3).sum::<usize>());
    out.extend_from_slice(b"{\"aud\":[");
    for (i, a) in aud.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_json_str(&mut out, a);
    }
    out.extend_from_slice(b"],\"exp\":");
    push_int(&mut out, exp);
    out.extend_from_slice(b",\"iat\":");
    push_int(&mut out, iat);
    if let Some(iss) = iss {
        out.extend_from_slice(b",\"iss\":");
        push_json_str(&mut out, iss);
    }
    out.extend_from_slice(b",\"sub\":");
    push_json_str(&mut out, sub);
    out.push(b'}');
    out
}

/// A new random key id: 32 characters from `[a-zA-Z0-9]`, as SPIRE makes them.
///
/// # Errors
/// [`KeyError::Crypto`] if the system RNG fails.
pub fn new_key_id() -> Result<String, KeyError> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let rng = SystemRandom::new();
    let mut out = String::with_capacity(32);
    while out.len() < 32 {
        let mut buf = [0u8; 64];
        rng.fill(&mut buf).map_err(|_| KeyError::Crypto("random"))?;
        // 248 = 4 * 62: rejecting larger bytes keeps the choice uniform.
        for b in buf.into_iter().filter(|b| *b < 248) {
            if out.len() == 32 {
                break;
            }
            out.push(char::from(ALPHABET[usize::from(b) % 62]));
        }
    }
    Ok(out)
}

impl JwtSigner {
    /// A signer for `key` published as `key_id`, usable until `expires_at` (Unix seconds).
    ///
    /// # Errors
    /// [`KeyError::InvalidKeyId`] for an empty key id, [`KeyError::Crypto`] if the key
    /// cannot be loaded into a signer.
    pub fn new(key: PrivateKey, key_id: String, expires_at: i64) -> Result<Self, KeyError> {
        if key_id.is_empty() {
            return Err(KeyError::InvalidKeyId(key_id));
        }
        let signer = key.jws_signer()?;
        let header = Header { alg: key.key_type().jws_alg(), kid: &key_id, typ: "JWT" };
        let json = serde_json::to_vec(&header).map_err(|_| KeyError::Crypto("header"))?;
        let header_b64 = URL_SAFE_NO_PAD.encode(json);
        Ok(Self { key, signer, key_id, expires_at, issuer: None, header_b64 })
    }

    /// Adds an `iss` claim to every token (SPIRE's `jwt_issuer`).
    pub fn with_issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    /// The key id (`kid`).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The key type.
    pub fn key_type(&self) -> KeyType {
        self.key.key_type()
    }

    /// The private key.
    pub fn key(&self) -> &PrivateKey {
        &self.key
    }

    /// The public key, PKIX (SubjectPublicKeyInfo) DER.
    pub fn public_key_der(&self) -> &[u8] {
        self.key.public_key_der()
    }

    /// When the key expires, Unix seconds.
    pub fn expires_at(&self) -> i64 {
        self.expires_at
    }

    /// The public part as a bundle JWT authority.
    pub fn authority(&self) -> JwtAuthority {
        JwtAuthority {
            public_key_der: self.public_key_der().to_vec(),
            key_id: self.key_id.clone(),
            expires_at: self.expires_at,
            tainted: false,
        }
    }

    /// Signs a JWT-SVID for `sub` with `audiences`, issued at `now`, expiring at
    /// `now + ttl` capped at the key's expiry.
    ///
    /// # Errors
    /// [`SignError::NoAudience`], [`SignError::ZeroTtl`], [`SignError::IdTooLong`],
    /// [`SignError::KeyExpired`], [`SignError::Crypto`].
    pub fn sign(
        &self,
        sub: &SpiffeId,
        audiences: &[String],
        now: SystemTime,
        ttl: Duration,
    ) -> Result<SignedJwt, SignError> {
        if audiences.is_empty() {
            return Err(SignError::NoAudience);
        }
        let len = sub.as_str().len();
        if len > SpiffeId::MAX_SVID_LEN {
            return Err(SignError::IdTooLong { len, max: SpiffeId::MAX_SVID_LEN });
        }
        let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2);
        if ttl == 0 {
            return Err(SignError::ZeroTtl);
        }
        let iat = ward_core::clock::unix_seconds(now);
        if iat >= self.expires_at {
            return Err(SignError::KeyExpired { expires_at: self.expires_at });
        }
        let exp = iat.saturating_add(ttl).min(self.expires_at);
        let json = claims_json(audiences, exp, iat, self.issuer.as_deref(), sub.as_str());
        let mut token = String::with_capacity(self.header_b64.len() + json.len() * 2 + 160);
        token.push_str(&self.header_b64);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&json, &mut token);
        let mut sig = Vec::with_capacity(512);
        self.signer.sign_into(token.as_bytes(), &mut sig)?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&sig, &mut token);
        crate::telemetry::jwt_svid_signed();
        Ok(SignedJwt { token, issued_at: iat, expires_at: exp })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_valid_json_for_any_strings() {
        let auds = vec!["plain".to_owned(), "q\"b\\s\u{1}\n\u{7f}é".to_owned()];
        let json = claims_json(&auds, 20, 10, Some("iss\""), "spiffe://example.org/x");
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "aud": auds, "exp": 20, "iat": 10, "iss": "iss\"", "sub": "spiffe://example.org/x"
            })
        );
        let json = claims_json(&auds[..1], -5, 0, None, "s");
        assert_eq!(json, br#"{"aud":["plain"],"exp":-5,"iat":0,"sub":"s"}"#);
    }
}
