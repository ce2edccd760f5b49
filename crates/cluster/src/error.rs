//! Errors of the cluster's public API.

use crate::transport::NodeId;

/// Why a proposal did not produce a result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// This replica cannot accept proposals now and knows no leader to forward to.
    #[error("no leader (hint: {leader_hint:?})")]
    NotLeader {
        /// The leader this replica last heard of, if any.
        leader_hint: Option<NodeId>,
    },
    /// The deadline passed before the proposal was applied here; it may still apply.
    #[error("proposal not applied before its deadline")]
    Timeout,
    /// The replica is stopping.
    #[error("the replica is shutting down")]
    ShuttingDown,
    /// The replica stopped on an error it cannot recover from (a failed apply or a failed
    /// log write); restarting replays the log.
    #[error("replica stopped: {0}")]
    Fatal(String),
    /// The proposal was applied (first at log index `index`), but this replica did not see
    /// its result: it received that part of the log inside a snapshot, and a copy proposed
    /// again under the same request id was applied as a duplicate (nothing changed twice).
    #[error("applied at log index {index}; its result was not observed on this replica")]
    AppliedUnobserved {
        /// Where the proposal was first applied.
        index: u64,
    },
}

/// Why an inbound raft message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InboundError {
    /// The bytes are not a raft message.
    #[error("malformed raft message: {0}")]
    Malformed(String),
    /// The message claims another sender than the authenticated replica.
    #[error("raft message from {claimed} arrived on the connection of replica {authenticated}")]
    WrongSender {
        /// The `from` field of the message.
        claimed: NodeId,
        /// The replica the connection authenticated as.
        authenticated: NodeId,
    },
    /// The message is addressed to another replica.
    #[error("raft message for replica {to} arrived at replica {me}")]
    WrongRecipient {
        /// The `to` field of the message.
        to: NodeId,
        /// This replica.
        me: NodeId,
    },
    /// The driver has stopped.
    #[error("the replica is shutting down")]
    ShuttingDown,
}
