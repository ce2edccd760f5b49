//! One-time join credentials: what `ward-server cluster add` prints and a new replica
//! presents to join.
//!
//! A credential names the node id and peer address it was made for, carries a random secret,
//! and pins the trust domain's X.509 authorities as they were when it was made (a SHA-256 of
//! each, as kubeadm pins its CA): the joining replica trusts the server only when its
//! certificate chains to one of the pinned authorities, so the secret never goes to an
//! impostor. Authorities added later (other replicas joining, rotations) do not invalidate
//! the credential as long as the server it reaches still chains to a pinned one. The store keeps
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
    /// [`authority_hash`] of each of the trust domain's X.509 authorities when it was made.
    pub authorities_sha256: Vec<String>,
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
            authorities_sha256: authorities.iter().map(|a| authority_hash(a)).collect(),
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

/// SHA-256 (hex) of one X.509 authority's DER.
pub fn authority_hash(der: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der).as_ref())
}

impl JoinCredential {
    /// The authorities among `found` that the credential pins.
    pub fn pinned<'a>(&self, found: &'a [Vec<u8>]) -> Vec<&'a Vec<u8>> {
        found.iter().filter(|a| self.authorities_sha256.contains(&authority_hash(a))).collect()
    }
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
    fn only_the_authorities_of_when_it_was_made_are_pinned() {
        let (a, b, c) = (vec![1u8, 2, 3], vec![4u8], vec![5u8]);
        let cred = JoinCredential::generate(2, "h:1", &[a.clone(), b.clone()]).unwrap();
        assert_eq!(cred.pinned(&[c.clone(), b.clone(), a.clone()]), vec![&b, &a]);
        assert!(cred.pinned(&[c]).is_empty());
    }
}
