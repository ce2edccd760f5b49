//! The attested-node model: what the server knows about an agent.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::selector::SelectorSet;
use crate::spiffe_id::SpiffeId;

/// The SPIFFE ID of an agent (`spiffe://<td>/spire/agent/<attestor>/...`).
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
