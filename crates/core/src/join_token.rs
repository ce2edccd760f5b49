//! Join tokens: single-use secrets an agent presents to attest.
//!
//! The server keeps only a token's SHA-256 ([`JoinTokenHash`]) with its expiry
//! ([`StoredJoinToken`]): the store, its snapshots and the replicated log never hold a value
//! that could attest an agent. The value itself is known to whoever created the token and
//! arrives again only with the attestation that presents it (it then becomes part of the
//! agent's SPIFFE ID, which is not a secret once the token is spent).

use serde::{Deserialize, Serialize};

/// A join token and when it stops being accepted.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    /// The secret value; it appears in the agent ID after use.
    pub token: String,
    /// Unix seconds after which the token is refused.
    pub expires_at: i64,
}

impl JoinToken {
    /// The form the store keeps: the value's hash and the expiry.
    pub fn to_stored(&self) -> StoredJoinToken {
        StoredJoinToken { hash: JoinTokenHash::of(&self.token), expires_at: self.expires_at }
    }
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken")
            .field("token", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// SHA-256 of a join token's value: what the store keys tokens by.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct JoinTokenHash([u8; 32]);

impl JoinTokenHash {
    /// The hash of `token`.
    pub fn of(token: &str) -> Self {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
        let mut out = [0u8; 32];
        // SHA-256 digests are 32 bytes; copy_from_slice cannot fail on equal lengths.
        out.copy_from_slice(digest.as_ref());
        Self(out)
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hex of the digest (64 characters).
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Redacted: the hash of a short, human-chosen token can be guessed offline.
impl std::fmt::Debug for JoinTokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JoinTokenHash(<redacted>)")
    }
}

/// A join token as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredJoinToken {
    /// SHA-256 of the token's value.
    pub hash: JoinTokenHash,
    /// Unix seconds after which the token is refused.
    pub expires_at: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_sha256_of_the_value() {
        let h = JoinTokenHash::of("abc");
        assert_eq!(h.to_hex(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_ne!(JoinTokenHash::of("abd"), h);
        let stored = JoinToken { token: "abc".into(), expires_at: 7 }.to_stored();
        assert_eq!(stored, StoredJoinToken { hash: h, expires_at: 7 });
    }

    #[test]
    fn debug_output_never_shows_the_value_or_its_hash() {
        let t = JoinToken { token: "s3cret-token".into(), expires_at: 7 };
        let hex = JoinTokenHash::of(&t.token).to_hex();
        for text in [format!("{t:?}"), format!("{:?}", t.to_stored())] {
            assert!(!text.contains("s3cret"), "{text}");
            assert!(!text.contains(&hex[..16]), "{text}");
        }
    }
}
