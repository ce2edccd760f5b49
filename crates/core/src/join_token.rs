//! Join tokens: single-use secrets an agent presents to attest.

use serde::{Deserialize, Serialize};

/// A join token and when it stops being accepted.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    /// The secret value; it appears in the agent ID after use.
    pub token: String,
    /// Unix seconds after which the token is refused.
    pub expires_at: i64,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken")
            .field("token", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}
