//! [`CurrentRead`]: the read index an operator's read of replicated state waits for before it
//! reads the local store.
//!
//! [`crate::layer::AuthLayer`] puts one in the request's extensions of every call that must
//! see each write acknowledged before it (the reads listed in `docs/cluster.md`, "Reads"); the
//! handler validates the request first and only then waits, so bad input is refused at once
//! with its own code, even on a replica that cannot reach its leader. A handler that answered
//! without waiting is caught by the layer ([`CurrentRead::was_confirmed`]) and its answer
//! replaced by an error: a read is never served from a state that may be stale.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::proposer::Proposer;

/// The read index a call must wait for before it reads the local store.
#[derive(Clone)]
pub struct CurrentRead {
    proposer: Arc<dyn Proposer>,
    confirmed: Arc<AtomicBool>,
}

impl std::fmt::Debug for CurrentRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CurrentRead").field("confirmed", &self.was_confirmed()).finish()
    }
}

impl CurrentRead {
    /// A read index to be taken through `proposer`.
    pub fn new(proposer: Arc<dyn Proposer>) -> Self {
        Self { proposer, confirmed: Arc::default() }
    }

    /// The one `req` carries, if its call must read current state (take it before
    /// `into_inner`).
    pub fn of<T>(req: &tonic::Request<T>) -> Option<Self> {
        req.extensions().get::<Self>().cloned()
    }

    /// Whether [`confirm`] succeeded for this call.
    pub fn was_confirmed(&self) -> bool {
        self.confirmed.load(Ordering::Acquire)
    }
}

/// Waits until this replica has applied every write acknowledged before the call (nothing
/// to wait for when `read` is `None`: an agent's or anonymous caller's read of the local
/// copy, or a server without a cluster).
///
/// # Errors
/// `Unavailable` (no leader, no confirmation within the cluster's `read_timeout`, shutting
/// down) or `Internal` (the replica failed): `cannot confirm this replica is up to date: …`.
pub async fn confirm(read: Option<CurrentRead>) -> Result<(), tonic::Status> {
    let Some(read) = read else { return Ok(()) };
    match read.proposer.read_barrier().await {
        Ok(()) => {
            read.confirmed.store(true, Ordering::Release);
            Ok(())
        }
        Err(e) => {
            tracing::warn!(error = %e, "read not confirmed current");
            Err(e.to_read_status())
        }
    }
}
