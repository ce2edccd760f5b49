//! [`LogStore`]: where a replica keeps its raft log, hard state, membership and snapshot
//! metadata, with three implementations: [`MemLogStore`] (tests), [`SledLogStore`] (over
//! the store's [`ward_store::RaftLog`], sharing its database and its flush) and
//! [`crate::WalLogStore`] (a journal of its own files).
//!
//! Semantics every implementation follows (checked by one suite run against each):
//! - the log holds entries `first_index()..=last_index()`; `first_index()` is the
//!   compacted point + 1 (1 for a new log) and `last_index()` is the compacted point when
//!   no entry is held;
//! - [`LogStore::append`] replaces every entry from the first appended index on;
//! - [`LogStore::term`] answers for the compacted point too (its term is kept);
//! - [`LogStore::compact`] removes entries up to an index and keeps its term;
//! - [`LogStore::install_snapshot`] drops the whole log and sets the compacted point, the
//!   membership and the snapshot metadata from the snapshot;
//! - nothing is durable until [`LogStore::flush`] returns, or the [`PendingSync`] that
//!   [`LogStore::begin_sync`] returned has run.

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, SnapshotMetadata};
use ward_store::{RaftLog, RaftRecord, StoreError};

/// Why a log-store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogStoreError {
    /// The index is at or before the compacted point.
    #[error("log index {0} is compacted")]
    Compacted(u64),
    /// The index is after the last entry.
    #[error("log index {0} is not in the log yet")]
    Unavailable(u64),
    /// A stored record could not be decoded.
    #[error("corrupt raft log record: {0}")]
    Corrupt(String),
    /// The underlying store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A log file could not be read or written.
    #[error("raft log I/O: {0}")]
    Io(String),
}

/// What makes everything a log wrote before [`LogStore::begin_sync`] durable, run on a
/// thread of its own while the log keeps taking writes.
pub type PendingSync = Box<dyn FnOnce() -> Result<(), LogStoreError> + Send>;

/// Persistence of the raft log and its metadata. Reads take `&self` (raft's `Storage`
/// reads through a shared reference); writes take `&mut self` and are made only by the
/// driver that owns the replica.
pub trait LogStore: Send + 'static {
    /// Appends `entries` (consecutive indexes), replacing any held entry at or after the
    /// first one's index. Appending at an index at or before the compacted point is
    /// refused with [`LogStoreError::Compacted`].
    fn append(&mut self, entries: &[Entry]) -> Result<(), LogStoreError>;
    /// Entries `lo..hi`, stopping once their encoded size exceeds `max_bytes` (at least one
    /// entry when any is in range).
    fn entries(
        &self,
        lo: u64,
        hi: u64,
        max_bytes: Option<u64>,
    ) -> Result<Vec<Entry>, LogStoreError>;
    /// The term of the entry at `index`, or of the compacted point.
    fn term(&self, index: u64) -> Result<u64, LogStoreError>;
    /// The first index that [`LogStore::entries`] can return.
    fn first_index(&self) -> u64;
    /// The index of the last entry (the compacted point when none is held).
    fn last_index(&self) -> u64;
    /// The persisted hard state (default when none was stored).
    fn hard_state(&self) -> Result<HardState, LogStoreError>;
    /// Stores the hard state.
    fn set_hard_state(&mut self, hs: &HardState) -> Result<(), LogStoreError>;
    /// The membership as of the last applied change or installed snapshot.
    fn conf_state(&self) -> Result<ConfState, LogStoreError>;
    /// Stores the membership.
    fn set_conf_state(&mut self, cs: &ConfState) -> Result<(), LogStoreError>;
    /// Removes entries up to and including `upto`, keeping its term as the compacted point.
    /// `upto` must be in the log (or be the compacted point, a no-op).
    fn compact(&mut self, upto: u64) -> Result<(), LogStoreError>;
    /// The metadata of the last snapshot installed or taken (index, term, membership).
    fn snapshot_meta(&self) -> Result<SnapshotMetadata, LogStoreError>;
    /// Records `meta` as the latest snapshot without touching the log (a snapshot taken
    /// locally, to be offered to followers).
    fn set_snapshot_meta(&mut self, meta: &SnapshotMetadata) -> Result<(), LogStoreError>;
    /// Drops the whole log and makes `meta`'s index and term the compacted point and its
    /// membership the current one.
    fn install_snapshot(&mut self, meta: &SnapshotMetadata) -> Result<(), LogStoreError>;
    /// Makes everything written so far durable.
    fn flush(&mut self) -> Result<(), LogStoreError>;
    /// Hands what is written so far to the files without waiting for it to be durable,
    /// and returns the call that makes it durable, to be run on another thread while this
    /// log goes on taking writes; a later one covers everything an earlier one does.
    /// `None` when the log must be flushed where it is written ([`LogStore::flush`]): the
    /// default, and a journal whose segment is due to be closed.
    fn begin_sync(&mut self) -> Result<Option<PendingSync>, LogStoreError> {
        Ok(None)
    }
    /// Number of entries held and their size in bytes (what compaction is decided on).
    fn size(&self) -> (u64, u64);
}

pub(crate) fn decode<M: protobuf::Message>(bytes: &[u8], what: &str) -> Result<M, LogStoreError> {
    M::parse_from_bytes(bytes).map_err(|e| LogStoreError::Corrupt(format!("{what}: {e}")))
}

pub(crate) fn encode<M: protobuf::Message>(m: &M) -> Result<Vec<u8>, LogStoreError> {
    m.write_to_bytes().map_err(|e| LogStoreError::Corrupt(format!("encode: {e}")))
}

/// Cuts `entries` after the first entry whose running encoded size passes `max_bytes`.
pub(crate) fn limit_size(entries: &mut Vec<Entry>, max_bytes: Option<u64>) {
    let Some(max) = max_bytes else { return };
    let mut size = 0u64;
    let keep = entries
        .iter()
        .take_while(|e| {
            size = size.saturating_add(u64::from(e.compute_size()));
            size <= max
        })
        .count()
        .max(1);
    entries.truncate(keep);
}

/// Refuses an append that starts inside the compacted prefix or leaves a gap.
fn check_append(first: u64, compacted: u64, last: u64) -> Result<(), LogStoreError> {
    if first <= compacted {
        return Err(LogStoreError::Compacted(first));
    }
    if first > last + 1 {
        return Err(LogStoreError::Unavailable(first));
    }
    Ok(())
}

/// Refuses a read of `lo..hi` outside `compacted + 1 ..= last`.
fn check_range(lo: u64, hi: u64, compacted: u64, last: u64) -> Result<(), LogStoreError> {
    if lo <= compacted {
        return Err(LogStoreError::Compacted(lo));
    }
    if hi > last + 1 {
        return Err(LogStoreError::Unavailable(hi));
    }
    Ok(())
}

/// The term at `index`: the compacted point's own, or `held`'s answer for an index in the
/// log.
fn term_at(
    index: u64,
    compacted: (u64, u64),
    last: u64,
    held: impl FnOnce() -> Result<Option<u64>, LogStoreError>,
) -> Result<u64, LogStoreError> {
    if index == compacted.0 {
        return Ok(compacted.1);
    }
    if index < compacted.0 {
        return Err(LogStoreError::Compacted(index));
    }
    if index > last {
        return Err(LogStoreError::Unavailable(index));
    }
    held()?.ok_or(LogStoreError::Unavailable(index))
}

/// A log store in memory, for tests and for the in-memory cluster.
#[derive(Debug, Default, Clone)]
pub struct MemLogStore {
    hard_state: HardState,
    conf_state: ConfState,
    snapshot: SnapshotMetadata,
    /// The compacted point (index, term).
    compacted: (u64, u64),
    entries: Vec<Entry>,
    /// Encoded size of `entries`, kept as they change ([`LogStore::size`] is asked every
    /// ready).
    bytes: u64,
}

fn encoded_size(entries: &[Entry]) -> u64 {
    entries.iter().map(|e| u64::from(e.compute_size())).fold(0, u64::saturating_add)
}

impl MemLogStore {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    fn offset(&self, index: u64) -> Option<usize> {
        let first = self.compacted.0.saturating_add(1);
        if index < first || index > self.last_index() {
            return None;
        }
        usize::try_from(index - first).ok()
    }

    /// Makes `(index, term)` the compacted point without asking the log for its term:
    /// entries up to `index` go, the rest stay (all of them go when `index` is past the
    /// last). The current point gets `term`; an earlier one changes nothing. How a journal's
    /// compaction record is replayed.
    pub(crate) fn set_compacted(&mut self, index: u64, term: u64) {
        if index == self.compacted.0 {
            self.compacted.1 = term;
            return;
        }
        if index < self.compacted.0 {
            return;
        }
        let n = usize::try_from(index - self.compacted.0).unwrap_or(usize::MAX);
        let gone: Vec<Entry> = self.entries.drain(..n.min(self.entries.len())).collect();
        self.bytes = self.bytes.saturating_sub(encoded_size(&gone));
        self.compacted = (index, term);
    }
}

impl LogStore for MemLogStore {
    fn append(&mut self, entries: &[Entry]) -> Result<(), LogStoreError> {
        let Some(first) = entries.first() else { return Ok(()) };
        check_append(first.index, self.compacted.0, self.last_index())?;
        let keep = usize::try_from(first.index - self.compacted.0 - 1).unwrap_or(usize::MAX);
        if keep < self.entries.len() {
            self.bytes = self.bytes.saturating_sub(encoded_size(&self.entries[keep..]));
            self.entries.truncate(keep);
        }
        self.entries.extend_from_slice(entries);
        self.bytes = self.bytes.saturating_add(encoded_size(entries));
        Ok(())
    }

    fn entries(
        &self,
        lo: u64,
        hi: u64,
        max_bytes: Option<u64>,
    ) -> Result<Vec<Entry>, LogStoreError> {
        check_range(lo, hi, self.compacted.0, self.last_index())?;
        if lo >= hi {
            return Ok(Vec::new());
        }
        let (Some(a), Some(b)) = (self.offset(lo), self.offset(hi - 1)) else {
            return Err(LogStoreError::Unavailable(lo));
        };
        let mut out = self.entries[a..=b].to_vec();
        limit_size(&mut out, max_bytes);
        Ok(out)
    }

    fn term(&self, index: u64) -> Result<u64, LogStoreError> {
        term_at(index, self.compacted, self.last_index(), || {
            Ok(self.offset(index).and_then(|i| self.entries.get(i)).map(|e| e.term))
        })
    }

    fn first_index(&self) -> u64 {
        self.compacted.0.saturating_add(1)
    }

    fn last_index(&self) -> u64 {
        self.compacted.0.saturating_add(self.entries.len() as u64)
    }

    fn hard_state(&self) -> Result<HardState, LogStoreError> {
        Ok(self.hard_state.clone())
    }

    fn set_hard_state(&mut self, hs: &HardState) -> Result<(), LogStoreError> {
        self.hard_state = hs.clone();
        Ok(())
    }

    fn conf_state(&self) -> Result<ConfState, LogStoreError> {
        Ok(self.conf_state.clone())
    }

    fn set_conf_state(&mut self, cs: &ConfState) -> Result<(), LogStoreError> {
        self.conf_state = cs.clone();
        Ok(())
    }

    fn compact(&mut self, upto: u64) -> Result<(), LogStoreError> {
        if upto <= self.compacted.0 {
            return Ok(());
        }
        let term = self.term(upto)?;
        self.set_compacted(upto, term);
        Ok(())
    }

    fn snapshot_meta(&self) -> Result<SnapshotMetadata, LogStoreError> {
        Ok(self.snapshot.clone())
    }

    fn set_snapshot_meta(&mut self, meta: &SnapshotMetadata) -> Result<(), LogStoreError> {
        self.snapshot = meta.clone();
        Ok(())
    }

    fn install_snapshot(&mut self, meta: &SnapshotMetadata) -> Result<(), LogStoreError> {
        self.entries.clear();
        self.bytes = 0;
        self.compacted = (meta.index, meta.term);
        self.conf_state = meta.get_conf_state().clone();
        self.snapshot = meta.clone();
        Ok(())
    }

    fn flush(&mut self) -> Result<(), LogStoreError> {
        Ok(())
    }

    fn begin_sync(&mut self) -> Result<Option<PendingSync>, LogStoreError> {
        Ok(Some(Box::new(|| Ok(()))))
    }

    fn size(&self) -> (u64, u64) {
        (self.entries.len() as u64, self.bytes)
    }
}

/// The log store over [`ward_store::RaftLog`]: entries as raft-encoded bytes keyed by
/// index in the store's database; [`LogStore::flush`] is the database flush, so it also
/// makes the applied state durable.
#[derive(Debug)]
pub struct SledLogStore {
    log: RaftLog,
    /// Cached compacted point, first and last index (the log is only written here).
    compacted: (u64, u64),
    last: u64,
    /// Entries and bytes held: counted at open and on compaction, grown by appends (an
    /// overwritten suffix is counted again until the next compaction recounts).
    held: (u64, u64),
}

impl SledLogStore {
    /// Opens the log kept in `store`'s database.
    ///
    /// # Errors
    /// [`LogStoreError::Store`] if the store cannot be read.
    pub fn open(store: &ward_store::Store) -> Result<Self, LogStoreError> {
        let log = store.raft_log()?;
        let compacted = log.compacted()?;
        let last = log.last_index()?.unwrap_or(compacted.0).max(compacted.0);
        let held = log.size();
        Ok(Self { log, compacted, last, held })
    }
}

impl LogStore for SledLogStore {
    fn append(&mut self, entries: &[Entry]) -> Result<(), LogStoreError> {
        let Some(first) = entries.first() else { return Ok(()) };
        check_append(first.index, self.compacted.0, self.last)?;
        let records = entries
            .iter()
            .map(|e| Ok(RaftRecord { index: e.index, term: e.term, bytes: encode(e)? }))
            .collect::<Result<Vec<_>, LogStoreError>>()?;
        self.log.append(&records)?;
        self.last = entries.last().map_or(self.last, |e| e.index);
        let bytes: u64 = records.iter().map(|r| r.bytes.len() as u64 + 8).sum();
        self.held = (self.held.0 + records.len() as u64, self.held.1.saturating_add(bytes));
        Ok(())
    }

    fn entries(
        &self,
        lo: u64,
        hi: u64,
        max_bytes: Option<u64>,
    ) -> Result<Vec<Entry>, LogStoreError> {
        check_range(lo, hi, self.compacted.0, self.last)?;
        let records = self.log.entries(lo, hi, max_bytes)?;
        if records.len() as u64 != hi.saturating_sub(lo) && max_bytes.is_none() {
            return Err(LogStoreError::Corrupt(format!("gap in the log between {lo} and {hi}")));
        }
        records.iter().map(|r| decode::<Entry>(&r.bytes, "entry")).collect()
    }

    fn term(&self, index: u64) -> Result<u64, LogStoreError> {
        term_at(index, self.compacted, self.last, || Ok(self.log.term(index)?))
    }

    fn first_index(&self) -> u64 {
        self.compacted.0.saturating_add(1)
    }

    fn last_index(&self) -> u64 {
        self.last
    }

    fn hard_state(&self) -> Result<HardState, LogStoreError> {
        match self.log.hard_state()? {
            Some(b) => decode(&b, "hard state"),
            None => Ok(HardState::default()),
        }
    }

    fn set_hard_state(&mut self, hs: &HardState) -> Result<(), LogStoreError> {
        Ok(self.log.set_hard_state(&encode(hs)?)?)
    }

    fn conf_state(&self) -> Result<ConfState, LogStoreError> {
        match self.log.conf_state()? {
            Some(b) => decode(&b, "conf state"),
            None => Ok(ConfState::default()),
        }
    }

    fn set_conf_state(&mut self, cs: &ConfState) -> Result<(), LogStoreError> {
        Ok(self.log.set_conf_state(&encode(cs)?)?)
    }

    fn compact(&mut self, upto: u64) -> Result<(), LogStoreError> {
        if upto <= self.compacted.0 {
            return Ok(());
        }
        let term = self.term(upto)?;
        self.log.compact(upto, term)?;
        self.compacted = (upto, term);
        self.held = self.log.size();
        Ok(())
    }

    fn snapshot_meta(&self) -> Result<SnapshotMetadata, LogStoreError> {
        match self.log.snapshot_meta()? {
            Some(b) => decode(&b, "snapshot metadata"),
            None => Ok(SnapshotMetadata::default()),
        }
    }

    fn set_snapshot_meta(&mut self, meta: &SnapshotMetadata) -> Result<(), LogStoreError> {
        Ok(self.log.set_snapshot_meta(&encode(meta)?)?)
    }

    fn install_snapshot(&mut self, meta: &SnapshotMetadata) -> Result<(), LogStoreError> {
        self.log.reset_to_snapshot(meta.index, meta.term, &encode(meta)?)?;
        self.log.set_conf_state(&encode(meta.get_conf_state())?)?;
        self.compacted = (meta.index, meta.term);
        self.last = meta.index;
        self.held = (0, 0);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), LogStoreError> {
        Ok(self.log.flush()?)
    }

    /// The database flush, on the thread that runs it: it makes everything written before
    /// it durable, the store's writes as well.
    fn begin_sync(&mut self) -> Result<Option<PendingSync>, LogStoreError> {
        let log = self.log.clone();
        Ok(Some(Box::new(move || Ok(log.flush()?))))
    }

    fn size(&self) -> (u64, u64) {
        self.held
    }
}

/// One suite, run against every implementation: the same assertions for each.
#[cfg(test)]
mod suite {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry { index, term, data: vec![index as u8; 10].into(), ..Default::default() }
    }

    fn indexes(es: &[Entry]) -> Vec<(u64, u64)> {
        es.iter().map(|e| (e.index, e.term)).collect()
    }

    fn new_log_is_empty_at_one(log: &mut dyn LogStore) {
        assert_eq!(log.first_index(), 1);
        assert_eq!(log.last_index(), 0);
        assert_eq!(log.term(0), Ok(0));
        assert_eq!(log.term(1), Err(LogStoreError::Unavailable(1)));
        assert_eq!(log.hard_state().unwrap(), HardState::default());
        assert_eq!(log.conf_state().unwrap(), ConfState::default());
        assert_eq!(log.size(), (0, 0));
    }

    fn append_replaces_the_suffix(log: &mut dyn LogStore) {
        log.append(&(1..=5).map(|i| entry(i, 1)).collect::<Vec<_>>()).unwrap();
        assert_eq!(log.last_index(), 5);
        log.append(&[entry(3, 2), entry(4, 2)]).unwrap();
        assert_eq!(log.last_index(), 4);
        assert_eq!(
            indexes(&log.entries(1, 5, None).unwrap()),
            vec![(1, 1), (2, 1), (3, 2), (4, 2)]
        );
        assert_eq!(log.term(5), Err(LogStoreError::Unavailable(5)));
        assert_eq!(log.append(&[entry(9, 2)]), Err(LogStoreError::Unavailable(9)));
    }

    fn entries_respect_bounds_and_size(log: &mut dyn LogStore) {
        log.append(&(1..=5).map(|i| entry(i, 1)).collect::<Vec<_>>()).unwrap();
        assert_eq!(log.entries(2, 7, None), Err(LogStoreError::Unavailable(7)));
        assert_eq!(indexes(&log.entries(2, 4, None).unwrap()), vec![(2, 1), (3, 1)]);
        // A limit below one entry still returns one entry.
        assert_eq!(log.entries(1, 6, Some(1)).unwrap().len(), 1);
        let one = u64::from(entry(1, 1).compute_size());
        let two = log.entries(1, 6, Some(2 * one + 2 * 8)).unwrap().len();
        assert!((2..=3).contains(&two), "about two entries fit, got {two}");
        assert!(log.entries(3, 3, None).unwrap().is_empty());
    }

    fn compaction_keeps_the_term_of_its_point(log: &mut dyn LogStore) {
        log.append(&(1..=6).map(|i| entry(i, i / 3 + 1)).collect::<Vec<_>>()).unwrap();
        log.compact(3).unwrap();
        assert_eq!(log.first_index(), 4);
        assert_eq!(log.last_index(), 6);
        assert_eq!(log.term(3), Ok(2));
        assert_eq!(log.term(2), Err(LogStoreError::Compacted(2)));
        assert_eq!(log.entries(3, 5, None), Err(LogStoreError::Compacted(3)));
        assert_eq!(log.append(&[entry(3, 9)]), Err(LogStoreError::Compacted(3)));
        assert_eq!(log.size().0, 3);
        // Compacting to an earlier point changes nothing.
        log.compact(2).unwrap();
        assert_eq!(log.first_index(), 4);
        // The whole log can be compacted; the next append continues after it.
        log.compact(6).unwrap();
        assert_eq!((log.first_index(), log.last_index()), (7, 6));
        log.append(&[entry(7, 3)]).unwrap();
        assert_eq!(log.term(7), Ok(3));
    }

    fn snapshot_install_resets_the_log(log: &mut dyn LogStore) {
        log.append(&(1..=4).map(|i| entry(i, 1)).collect::<Vec<_>>()).unwrap();
        let mut meta = SnapshotMetadata { index: 10, term: 3, ..Default::default() };
        meta.mut_conf_state().voters = vec![1, 2, 3];
        log.install_snapshot(&meta).unwrap();
        assert_eq!((log.first_index(), log.last_index()), (11, 10));
        assert_eq!(log.term(10), Ok(3));
        assert_eq!(log.conf_state().unwrap().voters, vec![1, 2, 3]);
        assert_eq!(log.snapshot_meta().unwrap(), meta);
        assert_eq!(log.size(), (0, 0));
        log.append(&[entry(11, 3)]).unwrap();
        assert_eq!(indexes(&log.entries(11, 12, None).unwrap()), vec![(11, 3)]);
    }

    fn metadata_round_trips(log: &mut dyn LogStore) {
        let hs = HardState { term: 4, vote: 2, commit: 7, ..Default::default() };
        log.set_hard_state(&hs).unwrap();
        let cs = ConfState { voters: vec![1, 3], learners: vec![4], ..Default::default() };
        log.set_conf_state(&cs).unwrap();
        let meta = SnapshotMetadata { index: 2, term: 1, ..Default::default() };
        log.set_snapshot_meta(&meta).unwrap();
        log.flush().unwrap();
        assert_eq!(log.hard_state().unwrap(), hs);
        assert_eq!(log.conf_state().unwrap(), cs);
        assert_eq!(log.snapshot_meta().unwrap(), meta);
        // Recording a snapshot does not touch the log.
        assert_eq!(log.first_index(), 1);
    }

    type Case = fn(&mut dyn LogStore);
    const CASES: [(&str, Case); 6] = [
        ("new_log_is_empty_at_one", new_log_is_empty_at_one),
        ("append_replaces_the_suffix", append_replaces_the_suffix),
        ("entries_respect_bounds_and_size", entries_respect_bounds_and_size),
        ("compaction_keeps_the_term_of_its_point", compaction_keeps_the_term_of_its_point),
        ("snapshot_install_resets_the_log", snapshot_install_resets_the_log),
        ("metadata_round_trips", metadata_round_trips),
    ];

    #[test]
    fn memory_log_store_passes_the_suite() {
        for (name, case) in CASES {
            eprintln!("memory: {name}");
            case(&mut MemLogStore::new());
        }
    }

    #[test]
    fn journal_log_store_passes_the_suite() {
        for (name, case) in CASES {
            eprintln!("journal: {name}");
            let dir = tempfile::tempdir().unwrap();
            case(&mut crate::WalLogStore::open(dir.path()).unwrap());
        }
    }

    /// The suite's end state survives reopening the journal.
    #[test]
    fn journal_log_store_replays_the_suite_on_reopen() {
        for (name, case) in CASES {
            let dir = tempfile::tempdir().unwrap();
            let mut log = crate::WalLogStore::open(dir.path()).unwrap();
            case(&mut log);
            log.flush().unwrap();
            let again = crate::WalLogStore::open(dir.path()).unwrap();
            assert_eq!(
                (again.first_index(), again.last_index()),
                (log.first_index(), log.last_index()),
                "{name}"
            );
            let (first, last) = (log.first_index(), log.last_index());
            assert_eq!(
                again.entries(first, last + 1, None),
                log.entries(first, last + 1, None),
                "{name}"
            );
            assert_eq!(again.term(first - 1), log.term(first - 1), "{name}");
            assert_eq!(again.hard_state().unwrap(), log.hard_state().unwrap(), "{name}");
            assert_eq!(again.conf_state().unwrap(), log.conf_state().unwrap(), "{name}");
            assert_eq!(again.snapshot_meta().unwrap(), log.snapshot_meta().unwrap(), "{name}");
            assert_eq!(again.size(), log.size(), "{name}");
        }
    }

    #[test]
    fn sled_log_store_passes_the_suite() {
        let td = ward_core::TrustDomain::new("example.org").unwrap();
        for (name, case) in CASES {
            eprintln!("sled: {name}");
            let dir = tempfile::tempdir().unwrap();
            let store =
                ward_store::Store::open(dir.path(), ward_store::StoreConfig::new(td.clone()))
                    .unwrap();
            case(&mut SledLogStore::open(&store).unwrap());
        }
    }

    #[test]
    fn sled_log_store_reopens_with_what_was_flushed() {
        let td = ward_core::TrustDomain::new("example.org").unwrap();
        let dir = tempfile::tempdir().unwrap();
        {
            let store =
                ward_store::Store::open(dir.path(), ward_store::StoreConfig::new(td.clone()))
                    .unwrap();
            let mut log = SledLogStore::open(&store).unwrap();
            log.append(&(1..=6).map(|i| entry(i, 2)).collect::<Vec<_>>()).unwrap();
            log.compact(2).unwrap();
            log.set_hard_state(&HardState { term: 2, vote: 1, commit: 5, ..Default::default() })
                .unwrap();
            log.flush().unwrap();
        }
        let store = ward_store::Store::open(dir.path(), ward_store::StoreConfig::new(td)).unwrap();
        let log = SledLogStore::open(&store).unwrap();
        assert_eq!((log.first_index(), log.last_index()), (3, 6));
        assert_eq!(log.term(2), Ok(2));
        assert_eq!(log.hard_state().unwrap().commit, 5);
        assert_eq!(log.size().0, 4);
    }
}
