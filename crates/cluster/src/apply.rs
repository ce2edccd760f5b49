//! The one place committed entries reach the store, and the log-entry envelope.
//!
//! Interim: entries are applied one by one with `Store::apply`, and the envelope is the
//! request id (u128 BE) followed by the postcard encoding of the command; the store's
//! committed-batch apply and its versioned `LogEntry` replace both.

use ward_store::{Applied, Command, Store, StoreError};

/// A committed log entry as the store sees it.
#[derive(Debug, Clone, Copy)]
#[expect(
    dead_code,
    reason = "indexes of empty and membership entries are recorded by the store's committed-batch apply"
)]
pub(crate) enum Item<'a> {
    /// A proposal's envelope.
    Entry { index: u64, data: &'a [u8] },
    /// A leader's empty entry.
    Empty { index: u64 },
    /// A membership change (raft's encoded ConfState after it).
    Membership { index: u64 },
}

/// What applying one proposal produced.
#[derive(Debug)]
pub(crate) struct Done {
    pub(crate) request_id: u128,
    /// `None` when the request id was applied before (nothing changed).
    pub(crate) result: Option<Applied>,
}

/// Encodes a proposal.
pub(crate) fn encode_entry(request_id: u128, cmd: &Command) -> Result<Vec<u8>, StoreError> {
    let mut out = request_id.to_be_bytes().to_vec();
    let body = postcard::to_allocvec(cmd).map_err(|e| StoreError::Encode(e.to_string()))?;
    out.extend_from_slice(&body);
    Ok(out)
}

fn decode_entry(data: &[u8]) -> Result<(u128, Command), StoreError> {
    let bad = |reason: String| StoreError::Corrupt { key: "log entry".into(), reason };
    let id = data
        .get(..16)
        .and_then(|b| <[u8; 16]>::try_from(b).ok())
        .map(u128::from_be_bytes)
        .ok_or_else(|| bad("shorter than its request id".into()))?;
    let cmd = postcard::from_bytes(&data[16..]).map_err(|e| bad(e.to_string()))?;
    Ok((id, cmd))
}

/// Applies committed items in order. Items at or below the store's applied index are
/// skipped (replay after a restart or a snapshot that ran ahead). Any error is fatal.
pub(crate) fn apply_committed(store: &Store, items: &[Item<'_>]) -> Result<Vec<Done>, StoreError> {
    let mut out = Vec::new();
    for item in items {
        if let Item::Entry { index, data } = *item {
            if index <= store.last_applied() {
                continue;
            }
            let (request_id, cmd) = decode_entry(data)?;
            let applied = store.apply(index, &cmd)?;
            out.push(Done { request_id, result: Some(applied) });
        }
    }
    Ok(out)
}
