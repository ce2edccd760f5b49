//! The one place committed entries reach the store: [`ward_store::Store::apply_committed`]
//! over a run of raft entries, and the log-entry envelope ([`ward_store::LogEntry`]).

use ward_store::{Command, LogEntry};

/// Encodes a proposal: its request id and command in the store's versioned envelope.
pub(crate) fn encode_entry(request_id: u128, cmd: Command) -> Vec<u8> {
    LogEntry::new(request_id, cmd).encode()
}
