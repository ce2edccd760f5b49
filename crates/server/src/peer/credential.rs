//! One-time join credentials: what `ward-server cluster add` prints and a new replica
//! presents to join.
//!
//! A credential names the node id and peer address it was made for, carries a random secret,
//! and pins the trust domain's X.509 authorities as they were when it was made (the
//! discovery hash, as kubeadm pins its CA): the joining replica refuses a server whose
//! authorities hash differently, so the secret never goes to an impostor. The store keeps
//! only a hash of (node id, address, secret) with the credential's expiry, through the same
//! commands as join tokens (`CreateJoinToken`, `ConsumeJoinToken`, consumed inside apply),
//! under a domain-separated input so that an agent join token is never a replica credential
//! nor the other way round.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use ward_core::JoinTokenHash;

/// The prefix of every credential's text.
pub const PREFIX: &str = "wardjoin1.";

/// A decoded join credential.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinCredential {
    /// The node id the credential admits.
    pub node_id: u64,
    /// The peer address the new replica is reached at.
    pub address: String,
    /// The secret (hex of 32 random bytes).
    pub secret: String,
    /// [`discovery_hash`] of the trust domain's X.509 authorities when it was made.
    pub authorities_sha256: String,
}

impl std::fmt::Debug for JoinCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinCredential")
            .field("node_id", &self.node_id)
            .field("address", &self.address)
            .field("secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// Why a credential text is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed join credential")]
pub struct MalformedCredential;

impl JoinCredential {
    /// A new credential for `node_id` at `address` pinning `authorities` (DER).
    ///
    /// # Errors
    /// A message when the system's random source fails.
    pub fn generate(node_id: u64, address: &str, authorities: &[Vec<u8>]) -> Result<Self, String> {
        let mut secret = [0u8; 32];
        aws_lc_rs::rand::fill(&mut secret).map_err(|_| "random source failed".to_owned())?;
        Ok(Self {
            node_id,
            address: address.to_owned(),
            secret: hex::encode(secret),
            authorities_sha256: discovery_hash(authorities),
        })
    }

    /// The text form: [`PREFIX`] then base64url of the JSON fields.
    pub fn to_text(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(json))
    }

    /// Parses [`JoinCredential::to_text`]'s output (surrounding white space allowed, as read
    /// from a file).
    ///
    /// # Errors
    /// [`MalformedCredential`].
    pub fn parse(text: &str) -> Result<Self, MalformedCredential> {
        let body = text.trim().strip_prefix(PREFIX).ok_or(MalformedCredential)?;
        let json = URL_SAFE_NO_PAD.decode(body).map_err(|_| MalformedCredential)?;
        let c: Self = serde_json::from_slice(&json).map_err(|_| MalformedCredential)?;
        if c.node_id == 0 || c.secret.len() != 64 || c.address.is_empty() {
            return Err(MalformedCredential);
        }
        Ok(c)
    }

    /// What the store keeps: a hash over node id, address and secret, domain-separated from
    /// agent join tokens.
    pub fn stored_hash(&self) -> JoinTokenHash {
        JoinTokenHash::of(&format!(
            "ward-replica-join\0{}\0{}\0{}",
            self.node_id, self.address, self.secret
        ))
    }
}

/// SHA-256 (hex) over the trust domain's X.509 authorities (DER), sorted, each preceded by
/// its length as four big-endian bytes: the same set hashes the same in any order.
pub fn discovery_hash(authorities: &[Vec<u8>]) -> String {
    let mut sorted: Vec<&Vec<u8>> = authorities.iter().collect();
    sorted.sort();
    sorted.dedup();
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for der in sorted {
        let len = u32::try_from(der.len()).unwrap_or(u32::MAX);
        ctx.update(&len.to_be_bytes());
        ctx.update(der);
    }
    hex::encode(ctx.finish().as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_other_text() {
        let c = JoinCredential::generate(4, "127.0.0.4:8082", &[vec![1, 2], vec![3]]).unwrap();
        let text = c.to_text();
        assert!(text.starts_with(PREFIX));
        assert_eq!(JoinCredential::parse(&format!("  {text}\n")), Ok(c.clone()));
        for bad in ["", "wardjoin1.", "wardjoin1.!!", "join.abc", &text[..text.len() - 4]] {
            assert_eq!(JoinCredential::parse(bad), Err(MalformedCredential), "{bad}");
        }
        assert!(!format!("{c:?}").contains(&c.secret), "the secret is redacted");
    }

    #[test]
    fn the_stored_hash_binds_node_address_and_secret_and_is_not_a_join_token() {
        let c = JoinCredential::generate(4, "127.0.0.4:8082", &[]).unwrap();
        let other_node = JoinCredential { node_id: 5, ..c.clone() };
        let other_addr = JoinCredential { address: "127.0.0.5:8082".into(), ..c.clone() };
        assert_ne!(c.stored_hash(), other_node.stored_hash());
        assert_ne!(c.stored_hash(), other_addr.stored_hash());
        assert_ne!(c.stored_hash(), JoinTokenHash::of(&c.secret));
        assert_ne!(c.stored_hash(), JoinTokenHash::of(&c.to_text()));
    }

    #[test]
    fn the_discovery_hash_is_of_the_set() {
        let (a, b) = (vec![1u8, 2, 3], vec![4u8]);
        assert_eq!(
            discovery_hash(&[a.clone(), b.clone()]),
            discovery_hash(&[b.clone(), a.clone()])
        );
        assert_ne!(discovery_hash(&[a.clone()]), discovery_hash(&[a, b]));
    }
}
