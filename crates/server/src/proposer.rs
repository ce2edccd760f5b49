//! The write path: every change to replicated state is a [`Command`] handed to a
//! [`Proposer`], which orders it in the log and applies it.
//!
//! Handlers never call `Store::apply` themselves. A server runs [`ClusterProposer`]: the
//! command goes into the replica's Raft log (forwarded to the leader when this replica
//! follows), and the proposal resolves once it is committed and applied on this replica.
//! A server without cluster configuration is a one-member cluster on the same path.
//! [`LocalProposer`] (the next index, applied on a blocking thread, one command at a time)
//! remains for tests that need a store without a replica.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
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
    /// This replica knows no leader to order the write (an election is under way or the
    /// replica is cut off from a majority).
    #[error("no leader is available to accept the write")]
    NotLeader {
        /// The leader this replica last heard of, if any.
        leader_hint: Option<u64>,
    },
    /// The write was not applied here before its deadline; it may still be applied.
    #[error("the write was not confirmed in time; it may or may not have been applied")]
    Timeout,
    /// The replica is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The replica stopped on an error it cannot recover from; it must be restarted.
    #[error("replica stopped: {0}")]
    Fatal(String),
    /// The write was applied (first at log index `index`) but this replica did not see its
    /// result (it caught up through a snapshot); read the state back to learn it.
    #[error(
        "the write was applied at log index {index} but its result was not observed on this server; read it back"
    )]
    AppliedUnobserved {
        /// Where the write was first applied.
        index: u64,
    },
}

impl From<ward_cluster::ProposeError> for ProposeError {
    fn from(e: ward_cluster::ProposeError) -> Self {
        match e {
            ward_cluster::ProposeError::NotLeader { leader_hint } => {
                Self::NotLeader { leader_hint }
            }
            ward_cluster::ProposeError::Timeout => Self::Timeout,
            ward_cluster::ProposeError::ShuttingDown => Self::ShuttingDown,
            ward_cluster::ProposeError::Fatal(reason) => Self::Fatal(reason),
            ward_cluster::ProposeError::AppliedUnobserved { index } => {
                Self::AppliedUnobserved { index }
            }
        }
    }
}

impl ProposeError {
    /// The gRPC status a client sees: `Unavailable` (which SPIRE's clients retry) while
    /// there is no leader, the write's outcome is unknown, or the server is stopping;
    /// `Aborted` when the write was applied but its result was not observed here;
    /// `Internal` when the replica itself failed.
    pub fn to_status(&self) -> tonic::Status {
        self.with_code(format!("failed to write: {self}"))
    }

    /// The gRPC status of a read that could not be confirmed current (see
    /// [`Proposer::read_barrier`]), with the code of [`ProposeError::to_status`]:
    /// `Unavailable` while no leader is known or the leader did not confirm in time,
    /// `Internal` when the replica itself failed.
    pub fn to_read_status(&self) -> tonic::Status {
        let why = match self {
            Self::NotLeader { .. } => "no leader is known".to_owned(),
            Self::Timeout => "the leader did not confirm it in time".to_owned(),
            other => other.to_string(),
        };
        self.with_code(format!("cannot confirm this replica is up to date: {why}"))
    }

    /// `message` under this error's gRPC code.
    fn with_code(&self, message: String) -> tonic::Status {
        match self {
            Self::NotLeader { .. } | Self::Timeout | Self::ShuttingDown => {
                tonic::Status::unavailable(message)
            }
            Self::Store(_) | Self::Stopped | Self::Fatal(_) => tonic::Status::internal(message),
            // Not Unavailable: a blind retry would apply the write a second time.
            Self::AppliedUnobserved { .. } => tonic::Status::aborted(message),
        }
    }

    /// Whether this replica can no longer apply writes: the store failed (its in-memory
    /// image was put back to what is on disk and it refuses further applies), so the server
    /// must stop and a restart replays the log. Other errors fail one proposal only.
    pub fn is_fatal(&self) -> bool {
        match self {
            Self::Store(_) | Self::Fatal(_) => true,
            Self::Stopped
            | Self::NotLeader { .. }
            | Self::Timeout
            | Self::ShuttingDown
            | Self::AppliedUnobserved { .. } => false,
        }
    }
}

/// A boxed, sendable future, as the trait returns.
pub type ProposeFuture = Pin<Box<dyn Future<Output = Result<Applied, ProposeError>> + Send>>;

/// A boxed, sendable future of a read barrier.
pub type ReadFuture = Pin<Box<dyn Future<Output = Result<(), ProposeError>> + Send>>;

/// Orders and applies commands. Implementations must apply commands in log order, exactly
/// once, and resolve with the result of this command's apply on this replica.
pub trait Proposer: Send + Sync + std::fmt::Debug {
    /// Proposes `cmd` and resolves once it is applied locally, with the apply result
    /// (including the log index it was applied at).
    fn propose(&self, cmd: Command) -> ProposeFuture;

    /// Whether this replica leads its cluster now. Periodic clean-up (pruning expired
    /// entries, join tokens and authorities) is proposed only by the leader, so one clock
    /// decides what has expired and the log does not carry one prune per replica. A proposer
    /// without a cluster always leads.
    fn is_leader(&self) -> bool {
        true
    }

    /// Resolves once this replica has applied every write acknowledged anywhere before the
    /// call, so a read of the local store made afterwards sees them (linearizable reads).
    /// A replica that cannot confirm that (no leader, cut off from a majority) fails
    /// instead of answering from a state that may be stale.
    fn read_barrier(&self) -> ReadFuture;
}

/// The proposer of a replica: the command is proposed to its Raft cluster under a fresh
/// request id and the call resolves with this replica's apply result.
#[derive(Debug, Clone)]
pub struct ClusterProposer {
    handle: ward_cluster::ClusterHandle,
}

impl ClusterProposer {
    /// A proposer writing through the replica behind `handle`.
    pub fn new(handle: ward_cluster::ClusterHandle) -> Self {
        Self { handle }
    }
}

impl Proposer for ClusterProposer {
    fn propose(&self, cmd: Command) -> ProposeFuture {
        let handle = self.handle.clone();
        Box::pin(async move { handle.propose(cmd).await.map_err(ProposeError::from) })
    }

    fn is_leader(&self) -> bool {
        self.handle.leader() == Some(self.handle.node_id())
    }

    fn read_barrier(&self) -> ReadFuture {
        let handle = self.handle.clone();
        // Raft's read index: the leader confirms its leadership with a quorum and names its
        // commit index; this replica resolves once it has applied up to there.
        Box::pin(async move { handle.read_index().await.map(|_| ()).map_err(ProposeError::from) })
    }
}

/// The single-node proposer without a log: the next index is `last applied + 1`, assigned and applied
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
            .map_err(|e| match e.try_into_panic() {
                // The apply panicked: if it held the state lock, the store is poisoned.
                Ok(_) => ProposeError::Store(StoreError::Poisoned),
                Err(_) => ProposeError::Stopped,
            })?
            .map_err(ProposeError::from)
        })
    }

    fn read_barrier(&self) -> ReadFuture {
        // One node and no log: a write is applied before it is acknowledged, so the local
        // store already holds every acknowledged write.
        Box::pin(async { Ok(()) })
    }
}

/// Watches the results of every proposal for a fatal error ([`ProposeError::is_fatal`]).
/// The first one is recorded so that the server stops, instead of serving on from a replica
/// that can no longer apply writes ([`crate::run::RunningServer::failed`]).
#[derive(Debug)]
pub struct FailStop {
    inner: Arc<dyn Proposer>,
    failed: watch::Sender<Option<String>>,
}

impl FailStop {
    /// Wraps `inner`; the receiver holds the first fatal error's text once there is one.
    pub fn new(inner: Arc<dyn Proposer>) -> (Arc<Self>, watch::Receiver<Option<String>>) {
        let (failed, rx) = watch::channel(None);
        (Arc::new(Self { inner, failed }), rx)
    }
}

/// Records the first fatal error (later ones change nothing).
fn trip(failed: &watch::Sender<Option<String>>, e: &ProposeError) {
    failed.send_if_modified(|first| {
        let new = first.is_none();
        if new {
            *first = Some(e.to_string());
        }
        new
    });
}

impl Proposer for FailStop {
    fn propose(&self, cmd: Command) -> ProposeFuture {
        let proposed = self.inner.propose(cmd);
        let failed = self.failed.clone();
        Box::pin(async move {
            let result = proposed.await;
            if let Err(e) = &result
                && e.is_fatal()
            {
                trip(&failed, e);
            }
            result
        })
    }

    fn read_barrier(&self) -> ReadFuture {
        let barrier = self.inner.read_barrier();
        let failed = self.failed.clone();
        Box::pin(async move {
            let result = barrier.await;
            if let Err(e) = &result
                && e.is_fatal()
            {
                trip(&failed, e);
            }
            result
        })
    }

    fn is_leader(&self) -> bool {
        self.inner.is_leader()
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

    #[tokio::test]
    async fn only_a_replica_that_leads_counts_as_leader() {
        let td = TrustDomain::new("example.org").unwrap();
        let start = |dir: &std::path::Path, node_id: u64, bootstrap: bool| {
            let store = Store::open(dir, StoreConfig::new(td.clone())).unwrap();
            let mut config = ward_cluster::ClusterConfig::new(node_id);
            config.bootstrap = bootstrap;
            config.tick_interval = std::time::Duration::from_millis(10);
            let handle = ward_cluster::start(ward_cluster::Replica {
                config,
                log: ward_cluster::SledLogStore::open(&store).unwrap(),
                store,
                transport: None,
                snapshots: None,
                runtime: tokio::runtime::Handle::current(),
            })
            .unwrap();
            ClusterProposer::new(handle)
        };
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let alone = start(a.path(), 1, true);
        // A replica waiting to be added to a cluster knows no leader.
        let waiting = start(b.path(), 2, false);
        let (wrapped, _) = FailStop::new(Arc::new(alone.clone()));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !alone.is_leader() {
            assert!(std::time::Instant::now() < deadline, "a one-member cluster elects itself");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(wrapped.is_leader());
        assert!(!waiting.is_leader());
        assert!(
            LocalProposer::new(
                Store::open(tempfile::tempdir().unwrap().path(), StoreConfig::new(td.clone()))
                    .unwrap()
            )
            .is_leader()
        );
    }
}
