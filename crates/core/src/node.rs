//! The attested-node model: what the server knows about an agent.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::selector::SelectorSet;
use crate::spiffe_id::SpiffeId;

/// The SPIFFE ID of an agent (`spiffe://<td>/spire/agent/<attestor>/...`).
///
/// Decoding goes through [`SpiffeId`]'s own checked decoding, so a decoded agent id is a
/// valid SPIFFE ID. Its path is not checked here: the agent attestation and the store's
/// callers decide which IDs name agents.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AgentId(pub SpiffeId);

impl AgentId {
    /// The underlying SPIFFE ID.
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.0
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AgentId({})", self.0)
    }
}

/// An agent's record (SPIRE's attested node).
///
/// Serial numbers are decimal strings, as SPIRE compares them. An empty `serial` means the
/// agent is banned.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct AttestedNode {
    /// The agent's SPIFFE ID.
    pub id: AgentId,
    /// The node attestor that attested it (`join_token`, `x509pop`, ...).
    pub attestation_type: String,
    /// Serial of the agent's current X509-SVID, decimal; empty when banned.
    pub serial: String,
    /// NotAfter of the current X509-SVID, Unix seconds.
    pub expires_at: i64,
    /// Serial of an SVID issued by RenewAgent and not yet presented; empty when none.
    pub new_serial: String,
    /// NotAfter of the pending SVID, Unix seconds.
    pub new_expires_at: i64,
    /// Node selectors from attestation.
    pub selectors: SelectorSet,
    /// Whether the agent attests again instead of renewing.
    pub can_reattest: bool,
}

impl AttestedNode {
    /// Whether the agent is banned (both serials cleared).
    pub fn is_banned(&self) -> bool {
        self.serial.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_an_agent_id_checks_its_spiffe_id() {
        for bad in ["spiffe://Example.org/spire/agent/x", "spiffe://example.org/a//b", ""] {
            let err = serde_json::from_value::<AgentId>(serde_json::json!(bad)).unwrap_err();
            let want = SpiffeId::parse(bad).unwrap_err().to_string();
            assert_eq!(err.to_string(), want, "{bad}");
        }
        let id = AgentId(SpiffeId::parse("spiffe://example.org/spire/agent/x").unwrap());
        let back: AgentId = serde_json::from_str(&serde_json::to_string(&id).unwrap()).unwrap();
        assert_eq!(back, id);
    }
}
