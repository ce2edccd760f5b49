//! Persistence of the consensus log, as bytes: the cluster layer keeps its log entries, hard
//! state and snapshot metadata here, in trees of the store's own database, so one flush
//! makes both the log and the applied state durable.
//!
//! Nothing here knows the consensus library's types: an entry is `(index, term, bytes)`,
//! the hard state and the snapshot metadata are opaque byte strings.
//!
//! # Layout
//!
//! | tree | key | value |
//! |---|---|---|
//! | `raft-log` | index (u64 BE) | term (u64 BE) followed by the entry bytes |
//! | `raft-meta` | `hard_state` | opaque bytes |
//! | `raft-meta` | `compacted` | index and term (u64 BE each) of the last entry removed by compaction or covered by an installed snapshot |
//! | `raft-meta` | `snapshot` | opaque snapshot metadata bytes |
//! | `raft-meta` | `conf_state` | opaque membership bytes |

use std::sync::Arc;

use crate::error::{EngineResult, StoreError};
use crate::store::Store;

const LOG_TREE: &str = "raft-log";
const META_TREE: &str = "raft-meta";
const HARD_STATE: &[u8] = b"hard_state";
const COMPACTED: &[u8] = b"compacted";
const SNAPSHOT: &[u8] = b"snapshot";
const CONF_STATE: &[u8] = b"conf_state";

/// One log record: index, term and the entry's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftRecord {
    /// Log index.
    pub index: u64,
    /// Term the entry was proposed in.
    pub term: u64,
    /// The entry, encoded by the cluster layer.
    pub bytes: Vec<u8>,
}

/// The consensus log's persistence in the store's database. Cheap to clone.
#[derive(Clone)]
pub struct RaftLog {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    /// Serializes writers so a suffix truncation and an append never interleave.
    writer: Arc<std::sync::Mutex<()>>,
}

impl std::fmt::Debug for RaftLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftLog").field("entries", &self.log.len()).finish()
    }
}

fn key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn read_u64_at(bytes: &[u8], at: usize, what: &str) -> Result<u64, StoreError> {
    bytes
        .get(at..at.saturating_add(8))
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| StoreError::Corrupt { key: what.into(), reason: "too short".into() })
}

impl Store {
    /// The consensus log kept in this store's database.
    ///
    /// # Errors
    /// [`StoreError::Engine`] if the trees cannot be opened.
    pub fn raft_log(&self) -> Result<RaftLog, StoreError> {
        let db = self.inner.db.clone();
        let log = db.open_tree(LOG_TREE).engine()?;
        let meta = db.open_tree(META_TREE).engine()?;
        Ok(RaftLog { db, log, meta, writer: Arc::new(std::sync::Mutex::new(())) })
    }
}

impl RaftLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Appends `records` (consecutive indexes), first removing every record at or after the
    /// first one's index. An empty slice changes nothing.
    ///
    /// # Errors
    /// [`StoreError::Engine`] on I/O failure.
    pub fn append(&self, records: &[RaftRecord]) -> Result<(), StoreError> {
        let Some(first) = records.first() else { return Ok(()) };
        let _w = self.lock();
        let mut batch = sled::Batch::default();
        let last_new = records.last().map_or(first.index, |r| r.index);
        for kv in self.log.range(key(last_new.saturating_add(1))..) {
            let (k, _) = kv.engine()?;
            batch.remove(k);
        }
        for r in records {
            let mut v = Vec::with_capacity(r.bytes.len().saturating_add(8));
            v.extend_from_slice(&r.term.to_be_bytes());
            v.extend_from_slice(&r.bytes);
            batch.insert(&key(r.index), v);
        }
        self.log.apply_batch(batch).engine()
    }

    /// Records from `lo` up to (not including) `hi`, stopping once their bytes exceed
    /// `max_bytes` (at least one record is returned if any is in range).
    ///
    /// # Errors
    /// [`StoreError::Engine`] on I/O failure, [`StoreError::Corrupt`] for a short record.
    pub fn entries(
        &self,
        lo: u64,
        hi: u64,
        max_bytes: Option<u64>,
    ) -> Result<Vec<RaftRecord>, StoreError> {
        let mut out = Vec::new();
        let mut size = 0u64;
        for kv in self.log.range(key(lo)..key(hi)) {
            let (k, v) = kv.engine()?;
            let index = read_u64_at(&k, 0, "raft-log key")?;
            let term = read_u64_at(&v, 0, "raft-log record")?;
            size = size.saturating_add(v.len() as u64);
            if let Some(max) = max_bytes
                && !out.is_empty()
                && size > max
            {
                break;
            }
            out.push(RaftRecord { index, term, bytes: v.get(8..).unwrap_or_default().to_vec() });
        }
        Ok(out)
    }

    /// The term of the record at `index`, if it is in the log.
    ///
    /// # Errors
    /// As [`RaftLog::entries`].
    pub fn term(&self, index: u64) -> Result<Option<u64>, StoreError> {
        match self.log.get(key(index)).engine()? {
            Some(v) => Ok(Some(read_u64_at(&v, 0, "raft-log record")?)),
            None => Ok(None),
        }
    }

    /// The lowest index held, if any record is held.
    ///
    /// # Errors
    /// As [`RaftLog::entries`].
    pub fn first_index(&self) -> Result<Option<u64>, StoreError> {
        match self.log.first().engine()? {
            Some((k, _)) => Ok(Some(read_u64_at(&k, 0, "raft-log key")?)),
            None => Ok(None),
        }
    }

    /// The highest index held, if any record is held.
    ///
    /// # Errors
    /// As [`RaftLog::entries`].
    pub fn last_index(&self) -> Result<Option<u64>, StoreError> {
        match self.log.last().engine()? {
            Some((k, _)) => Ok(Some(read_u64_at(&k, 0, "raft-log key")?)),
            None => Ok(None),
        }
    }

    /// Number of records held and their total bytes.
    pub fn size(&self) -> (u64, u64) {
        let mut bytes = 0u64;
        let mut n = 0u64;
        for (_, v) in self.log.iter().flatten() {
            n = n.saturating_add(1);
            bytes = bytes.saturating_add(v.len() as u64);
        }
        (n, bytes)
    }

    /// Removes every record at or below `upto` and records `(upto, term)` as the compacted
    /// point.
    ///
    /// # Errors
    /// [`StoreError::Engine`] on I/O failure.
    pub fn compact(&self, upto: u64, term: u64) -> Result<(), StoreError> {
        let _w = self.lock();
        let mut batch = sled::Batch::default();
        for kv in self.log.range(..=key(upto)) {
            let (k, _) = kv.engine()?;
            batch.remove(k);
        }
        self.log.apply_batch(batch).engine()?;
        self.meta.insert(COMPACTED, compacted_value(upto, term).to_vec()).engine()?;
        Ok(())
    }

    /// Drops the whole log and records `(index, term)` as the compacted point, with the
    /// snapshot's metadata bytes: what installing a snapshot does.
    ///
    /// # Errors
    /// [`StoreError::Engine`] on I/O failure.
    pub fn reset_to_snapshot(&self, index: u64, term: u64, meta: &[u8]) -> Result<(), StoreError> {
        let _w = self.lock();
        self.log.clear().engine()?;
        let mut batch = sled::Batch::default();
        batch.insert(COMPACTED, compacted_value(index, term).to_vec());
        batch.insert(SNAPSHOT, meta);
        self.meta.apply_batch(batch).engine()
    }

    /// Removes the whole log and its metadata (what moving the log elsewhere leaves
    /// behind). Durable with the next flush.
    ///
    /// # Errors
    /// [`StoreError::Engine`] on I/O failure.
    pub fn clear(&self) -> Result<(), StoreError> {
        let _w = self.lock();
        self.log.clear().engine()?;
        self.meta.clear().engine()
    }

    /// The compacted point `(index, term)`; `(0, 0)` for a log never compacted.
    ///
    /// # Errors
    /// As [`RaftLog::entries`].
    pub fn compacted(&self) -> Result<(u64, u64), StoreError> {
        match self.meta.get(COMPACTED).engine()? {
            Some(v) => Ok((read_u64_at(&v, 0, "compacted")?, read_u64_at(&v, 8, "compacted")?)),
            None => Ok((0, 0)),
        }
    }

    /// Stores the hard state.
    ///
    /// # Errors
    /// [`StoreError::Engine`] on I/O failure.
    pub fn set_hard_state(&self, bytes: &[u8]) -> Result<(), StoreError> {
        self.meta.insert(HARD_STATE, bytes).engine().map(drop)
    }

    /// The stored hard state.
    ///
    /// # Errors
    /// [`StoreError::Engine`] on I/O failure.
    pub fn hard_state(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.meta.get(HARD_STATE).engine()?.map(|v| v.to_vec()))
    }

    /// Stores the membership as of the last applied change.
    ///
    /// # Errors
    /// [`StoreError::Engine`] on I/O failure.
    pub fn set_conf_state(&self, bytes: &[u8]) -> Result<(), StoreError> {
        self.meta.insert(CONF_STATE, bytes).engine().map(drop)
    }

    /// The stored membership.
    ///
    /// # Errors
    /// [`StoreError::Engine`] on I/O failure.
    pub fn conf_state(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.meta.get(CONF_STATE).engine()?.map(|v| v.to_vec()))
    }

    /// Stores the snapshot metadata.
    ///
    /// # Errors
    /// [`StoreError::Engine`] on I/O failure.
    pub fn set_snapshot_meta(&self, bytes: &[u8]) -> Result<(), StoreError> {
        self.meta.insert(SNAPSHOT, bytes).engine().map(drop)
    }

    /// The stored snapshot metadata.
    ///
    /// # Errors
    /// [`StoreError::Engine`] on I/O failure.
    pub fn snapshot_meta(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.meta.get(SNAPSHOT).engine()?.map(|v| v.to_vec()))
    }

    /// Makes everything written to the database so far durable: the log, its metadata and
    /// the applied state (they share one database).
    ///
    /// # Errors
    /// [`StoreError::Engine`] on I/O failure.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().engine().map(drop)
    }
}

fn compacted_value(index: u64, term: u64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&index.to_be_bytes());
    v[8..].copy_from_slice(&term.to_be_bytes());
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreConfig;
    use ward_core::TrustDomain;

    fn rec(index: u64, term: u64) -> RaftRecord {
        RaftRecord { index, term, bytes: vec![index as u8; 3] }
    }

    #[test]
    fn append_truncates_suffix_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let td = TrustDomain::new("example.org").unwrap();
        {
            let store = Store::open(dir.path(), StoreConfig::new(td.clone())).unwrap();
            let log = store.raft_log().unwrap();
            log.append(&(1..=5).map(|i| rec(i, 1)).collect::<Vec<_>>()).unwrap();
            log.append(&[rec(3, 2)]).unwrap();
            log.set_hard_state(b"hs").unwrap();
            log.flush().unwrap();
        }
        let store = Store::open(dir.path(), StoreConfig::new(td)).unwrap();
        let log = store.raft_log().unwrap();
        assert_eq!(log.last_index().unwrap(), Some(3));
        assert_eq!(log.term(3).unwrap(), Some(2));
        assert_eq!(log.term(4).unwrap(), None);
        assert_eq!(log.hard_state().unwrap().as_deref(), Some(&b"hs"[..]));
        log.compact(2, 1).unwrap();
        assert_eq!(log.first_index().unwrap(), Some(3));
        assert_eq!(log.compacted().unwrap(), (2, 1));
        assert_eq!(log.entries(1, 10, None).unwrap(), vec![rec(3, 2)]);
    }
}
