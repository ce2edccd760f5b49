//! [`RaftStorage`]: raft-rs's `Storage` over any [`LogStore`].

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};

use crate::log_store::{LogStore, LogStoreError};
use crate::transport::SnapshotDescriptor;

/// raft-rs's view of a [`LogStore`], plus the applied point it offers snapshots at.
#[derive(Debug)]
pub struct RaftStorage<L> {
    pub(crate) log: L,
    /// What a snapshot requested now would cover: the store's applied index, its term and
    /// the membership as of it (kept by the driver as it applies).
    pub(crate) applied: (u64, u64),
    pub(crate) applied_conf: ConfState,
}

impl<L: LogStore> RaftStorage<L> {
    /// Wraps `log`; `applied` is the store's applied index and its term.
    pub fn new(log: L, applied: (u64, u64)) -> Result<Self, LogStoreError> {
        let applied_conf = log.conf_state()?;
        Ok(Self { log, applied, applied_conf })
    }

    /// The log store.
    pub fn log(&self) -> &L {
        &self.log
    }
}

fn to_raft(e: LogStoreError) -> raft::Error {
    match e {
        LogStoreError::Compacted(_) => raft::Error::Store(StorageError::Compacted),
        LogStoreError::Unavailable(_) => raft::Error::Store(StorageError::Unavailable),
        other => raft::Error::Store(StorageError::Other(Box::new(other))),
    }
}

impl<L: LogStore> raft::Storage for RaftStorage<L> {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let hard_state: HardState = self.log.hard_state().map_err(to_raft)?;
        let conf_state = self.log.conf_state().map_err(to_raft)?;
        Ok(RaftState { hard_state, conf_state })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.log.entries(low, high, max_size.into()).map_err(to_raft)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.log.term(idx).map_err(to_raft)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.log.first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.log.last_index())
    }

    /// A snapshot of the applied state: its data is only a [`SnapshotDescriptor`]; the
    /// follower pulls the state itself from this replica's store.
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let (index, term) = self.applied;
        if index < request_index || index == 0 {
            return Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable));
        }
        let mut snap = Snapshot::default();
        let meta = snap.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(self.applied_conf.clone());
        let id = uuid::Uuid::new_v4().as_u128();
        snap.data = SnapshotDescriptor { index, term, id }.encode().into();
        Ok(snap)
    }
}
