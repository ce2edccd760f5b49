//! The write path: every change to replicated state is a [`Command`] handed to a
//! [`Proposer`], which orders it in the log and applies it.
//!
//! Handlers never call `Store::apply` themselves. A one-member deployment uses
//! [`LocalProposer`]: it assigns the next log index and applies the command on a blocking
//! thread, one command at a time. The Raft cluster provides another implementation of the
//! same trait (propose, wait for commit and local apply), so no handler changes when it
//! plugs in.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use ward_store::{Applied, Command, Store, StoreError};

/// Why a proposal did not produce a result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// Applying the command failed in the store (fatal for the replica).
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The apply task stopped before answering (runtime shutting down).
    #[error("apply task stopped")]
    Stopped,
}

/// A boxed, sendable future, as the trait returns.
pub type ProposeFuture = Pin<Box<dyn Future<Output = Result<Applied, ProposeError>> + Send>>;

/// Orders and applies commands. Implementations must apply commands in log order, exactly
/// once, and resolve with the result of this command's apply on this replica.
pub trait Proposer: Send + Sync + std::fmt::Debug {
    /// Proposes `cmd` and resolves once it is applied locally, with the apply result
    /// (including the log index it was applied at).
    fn propose(&self, cmd: Command) -> ProposeFuture;
}

/// The single-node proposer: the next index is `last applied + 1`, assigned and applied
/// under one lock on a blocking thread; the store is flushed before the result is returned,
/// so an acknowledged write survives a crash.
#[derive(Debug, Clone)]
pub struct LocalProposer {
    store: Store,
    writer: Arc<Mutex<()>>,
}

impl LocalProposer {
    /// A proposer writing into `store`.
    pub fn new(store: Store) -> Self {
        Self { store, writer: Arc::new(Mutex::new(())) }
    }
}

impl Proposer for LocalProposer {
    fn propose(&self, cmd: Command) -> ProposeFuture {
        let store = self.store.clone();
        let writer = self.writer.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || -> Result<Applied, StoreError> {
                let applied = {
                    let _one_writer =
                        writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    let index = store.last_applied() + 1;
                    store.apply(index, &cmd)?
                };
                // Durable before it is acknowledged. Outside the writer lock, so concurrent
                // proposals share fsyncs instead of queueing behind each other's.
                store.flush()?;
                Ok(applied)
            })
            .await
            .map_err(|_| ProposeError::Stopped)?
            .map_err(ProposeError::from)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ward_core::{JoinToken, TrustDomain};
    use ward_store::{Outcome, StoreConfig};

    #[tokio::test]
    async fn assigns_consecutive_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let td = TrustDomain::new("example.org").unwrap();
        let store = Store::open(dir.path(), StoreConfig::new(td)).unwrap();
        let p = LocalProposer::new(store.clone());
        for (i, tok) in ["a", "b"].into_iter().enumerate() {
            let cmd = Command::CreateJoinToken {
                token: JoinToken { token: tok.into(), expires_at: 100 }.to_stored(),
                entry: None,
            };
            let applied = p.propose(cmd).await.unwrap();
            assert_eq!(applied.index, i as u64 + 1);
            assert_eq!(applied.outcome, Outcome::JoinTokenCreated(Ok(None)));
        }
        assert_eq!(store.last_applied(), 2);
        assert!(store.join_token("b").is_some());
    }
}
