//! Errors of the agent's server-facing side (entry sync, SVID minting).

use ward_proto::convert::permission_denied_reason;
use ward_proto::spire::api::types::permission_denied_details::Reason;

/// Why a sync with the server, or a mint, failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// An RPC returned an error status.
    #[error("{rpc}: {}", status.message())]
    Rpc {
        /// The method, e.g. `SyncAuthorizedEntries`.
        rpc: &'static str,
        /// What the server (or the transport) answered.
        status: tonic::Status,
    },
    /// The server's answer broke the protocol.
    #[error("{rpc}: {reason}")]
    Protocol {
        /// The method.
        rpc: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// A key or CSR could not be made.
    #[error("making a key: {0}")]
    Key(#[from] ward_ca::KeyError),
}

impl SyncError {
    pub(crate) fn rpc(rpc: &'static str, status: tonic::Status) -> Self {
        Self::Rpc { rpc, status }
    }

    pub(crate) fn protocol(rpc: &'static str, reason: impl Into<String>) -> Self {
        Self::Protocol { rpc, reason: reason.into() }
    }

    /// The reason the server gave when it refused the agent itself (`PermissionDenied` with
    /// `PermissionDeniedDetails`): the agent must re-attest (or stop, when banned) rather
    /// than retry.
    pub fn agent_refused(&self) -> Option<Reason> {
        match self {
            Self::Rpc { status, .. } => permission_denied_reason(status),
            _ => None,
        }
    }

    /// Whether the call failed because its connection went away rather than because the
    /// server answered: `Cancelled` (the request was not sent: the server had just closed
    /// the connection, as it does at its maximum connection age) or `Unavailable` (the
    /// connection broke or could not be made).
    pub fn connection_lost(&self) -> bool {
        matches!(
            self,
            Self::Rpc { status, .. }
                if matches!(status.code(), tonic::Code::Cancelled | tonic::Code::Unavailable)
        )
    }
}
