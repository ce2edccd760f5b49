//! Engine writes and the write-behind buffer that groups the writes of many applies into
//! one engine batch.
//!
//! sled makes every batch atomic by giving it I/O buffers of its own: each `apply_batch`
//! seals and writes the current buffer and the batch's marker (a `pwrite` and a
//! `sync_file_range` on sled's I/O threads), however small the batch. With one write per
//! apply, that was most of a replica's CPU time per write at low and moderate load.
//!
//! So [`Store::apply_committed`](crate::Store::apply_committed) leaves its writes in a
//! [`WriteBehind`] kept in the state (under the state lock) and writes them all in one
//! atomic batch once [`WRITE_BEHIND_ENTRIES`] applied log entries, [`WRITE_BEHIND_WRITES`] record
//! writes or [`WRITE_BEHIND_BYTES`] bytes are waiting, or a membership change is among
//! them. The engine is then always at the end of
//! some apply: a crash loses at most the applies still waiting, and the raft log, which
//! holds every committed entry durably before it is applied and is compacted only after
//! [`Store::flush`](crate::Store::flush) (which writes what waits first), replays them.
//!
//! Everything that reads the engine after open sees what waits too: the change feed
//! ([`Store::changes_since`](crate::Store::changes_since) writes what waits first), the
//! snapshot export (it lays the waiting feed and metadata writes over what it reads), a
//! checkpoint and a flush (they write what waits first). A direct
//! [`Store::apply`](crate::Store::apply) writes what waits with its own writes, and a
//! store dropped without [`Store::close`](crate::Store::close) writes it as it goes.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use sled::IVec;

use crate::entry_runs;
use crate::record;

use crate::error::{EngineResult, StoreError};
use crate::state::State;
use crate::store::Store;

/// Applied log entries whose writes may wait in memory before they go to the engine
/// together. Counted per entry, not per apply call: a restart replays the log's tail in one
/// call, and a crash loses at most this many entries' writes from the engine.
pub(crate) const WRITE_BEHIND_ENTRIES: u32 = 256;

/// Record writes that may wait in memory: the batch that gathers them is written under the
/// state lock, so this bounds how long one such write holds readers up. At 256 clients,
/// 1,024 kept `cluster_writes`' p99 at 56-60 ms where no bound let it reach 85 ms.
pub(crate) const WRITE_BEHIND_WRITES: usize = 1024;

/// Bytes of writes that may wait in memory (keys and values).
pub(crate) const WRITE_BEHIND_BYTES: usize = 4 << 20;

/// An engine batch that takes this long is logged at debug level.
const SLOW_BATCH: std::time::Duration = std::time::Duration::from_millis(10);

/// Engine writes in the order they were made: a later write of a key wins.
#[derive(Debug, Default)]
pub(crate) struct WriteBatch {
    writes: Vec<(IVec, Option<IVec>)>,
    bytes: usize,
}

impl WriteBatch {
    /// Sets `key` to `value`.
    pub(crate) fn insert(&mut self, key: impl Into<IVec>, value: impl Into<IVec>) {
        let (key, value) = (key.into(), value.into());
        self.bytes = self.bytes.saturating_add(key.len()).saturating_add(value.len());
        self.writes.push((key, Some(value)));
    }

    /// Removes `key`.
    pub(crate) fn remove(&mut self, key: impl Into<IVec>) {
        let key = key.into();
        self.bytes = self.bytes.saturating_add(key.len());
        self.writes.push((key, None));
    }

    /// Adds `later`'s writes after these.
    pub(crate) fn append(&mut self, later: Self) {
        self.bytes = self.bytes.saturating_add(later.bytes);
        self.writes.extend(later.writes);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// The writes as one sled batch.
    #[cfg(test)]
    pub(crate) fn into_sled(self) -> sled::Batch {
        let mut batch = sled::Batch::default();
        for (key, value) in self.writes {
            match value {
                Some(value) => batch.insert(key, value),
                None => batch.remove(key),
            }
        }
        batch
    }

    /// The writes as one sled batch, keeping them (records are shared, not copied).
    pub(crate) fn to_sled(&self) -> sled::Batch {
        let mut batch = sled::Batch::default();
        for (key, value) in &self.writes {
            match value {
                Some(value) => batch.insert(key.clone(), value.clone()),
                None => batch.remove(key.clone()),
            }
        }
        batch
    }

    /// Lays the writes to keys in `lo..hi` over `records` (sorted by key, as the engine
    /// returns a range): later writes win, removals drop the record. `records` stays sorted.
    pub(crate) fn overlay(&self, records: &mut Vec<(IVec, IVec)>, lo: &[u8], hi: &[u8]) {
        for (key, value) in &self.writes {
            if key.as_ref() < lo || key.as_ref() >= hi {
                continue;
            }
            let at = records.binary_search_by(|(k, _)| k.as_ref().cmp(key.as_ref()));
            match (at, value) {
                (Ok(i), Some(v)) => {
                    if let Some(r) = records.get_mut(i) {
                        r.1 = v.clone();
                    }
                }
                (Ok(i), None) => {
                    records.remove(i);
                }
                (Err(i), Some(v)) => records.insert(i, (key.clone(), v.clone())),
                (Err(_), None) => {}
            }
        }
    }
}

/// The writes of applies not yet given to the engine, oldest first, and the entry runs
/// they changed.
///
/// An entry run's record is not kept here but made from the in-memory entries when the
/// batch is written ([`waiting_batch`]): the memory is then at the batch's last apply (or,
/// after a failed apply, back at the one before it, as the batch is), so the run is what the
/// engine must hold, and entries created one after another cost one run write per batch.
/// Entries that did not change since the last write keep their bytes from the run as the
/// engine holds it.
#[derive(Debug, Default)]
pub(crate) struct WriteBehind {
    pub(crate) batch: WriteBatch,
    /// Creation numbers of the entries changed (created, updated or deleted) since the last
    /// write: their runs (see [`crate::entry_runs`]) are to be written again.
    changed_entries: BTreeSet<u64>,
    /// How many runs `changed_entries` falls in.
    changed_runs: usize,
    /// How many applied log entries the batch holds.
    entries: u32,
}

/// How much a [`WriteBehind`] held, to take back what was added after.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mark {
    writes: usize,
    bytes: usize,
    entries: u32,
}

impl WriteBehind {
    /// What it holds now.
    pub(crate) fn mark(&self) -> Mark {
        Mark { writes: self.batch.writes.len(), bytes: self.batch.bytes, entries: self.entries }
    }

    /// Marks the entry numbered `number` as changed, and so its run to be written.
    pub(crate) fn entry_changed(&mut self, number: u64) {
        let run = entry_runs::run_of(number);
        let (start, end) = entry_runs::numbers_of(run);
        let new_run = self.changed_entries.range(start..end).next().is_none();
        if self.changed_entries.insert(number) && new_run {
            self.changed_runs = self.changed_runs.saturating_add(1);
        }
    }

    /// Drops what was added since `mark`: the writes of an apply that failed. Entry runs
    /// marked since stay marked: their records are made from the memory, rolled back too.
    pub(crate) fn rewind(&mut self, mark: Mark) {
        self.batch.writes.truncate(mark.writes);
        self.batch.bytes = mark.bytes;
        self.entries = mark.entries;
    }

    /// Adds the writes of one apply of `entries` log entries; true when everything waiting
    /// should be written now: at `limit` entries, [`WRITE_BEHIND_WRITES`] record writes,
    /// [`WRITE_BEHIND_BYTES`] bytes, or when `urgent`.
    pub(crate) fn add(
        &mut self,
        writes: WriteBatch,
        entries: u32,
        urgent: bool,
        limit: u32,
    ) -> bool {
        self.batch.append(writes);
        self.entries = self.entries.saturating_add(entries);
        urgent
            || self.entries >= limit
            || self.batch.writes.len().saturating_add(self.changed_runs) >= WRITE_BEHIND_WRITES
            || self.batch.bytes >= WRITE_BEHIND_BYTES
    }

    /// Forgets what waits once it is written, keeping the buffer's room for the next
    /// writes (growing it afresh each time costs page faults at high write rates), but not
    /// more than a due batch needs: one apply call can hand over a whole log's tail after a
    /// restart, and that room would otherwise stay taken for the life of the process.
    pub(crate) fn clear(&mut self) {
        self.entries = 0;
        self.changed_entries.clear();
        self.changed_runs = 0;
        self.batch.writes.clear();
        self.batch.writes.shrink_to(WRITE_BEHIND_WRITES.saturating_mul(2));
        self.batch.bytes = 0;
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.batch.is_empty() && self.changed_entries.is_empty()
    }

    /// The writes waiting, leaving nothing.
    #[cfg(test)]
    pub(crate) fn take(&mut self) -> WriteBatch {
        self.entries = 0;
        self.changed_entries.clear();
        self.changed_runs = 0;
        std::mem::take(&mut self.batch)
    }
}

/// What waits in `state` as one engine batch for `tree`: its writes, then the record of
/// each entry run with a changed entry, made from the entries in memory (removed when the
/// run has none left); unchanged entries keep their bytes from the run as `tree` holds it.
///
/// # Errors
/// [`StoreError::Encode`] if an entry cannot be encoded; [`StoreError::Engine`] if reading
/// a run fails; [`StoreError::Corrupt`] if a stored run is damaged.
pub(crate) fn waiting_batch(state: &State, tree: &sled::Tree) -> Result<sled::Batch, StoreError> {
    let mut batch = state.unwritten.batch.to_sled();
    let changed = &state.unwritten.changed_entries;
    let mut next = changed.first().copied();
    while let Some(number) = next {
        let run = entry_runs::run_of(number);
        let (start, end) = entry_runs::numbers_of(run);
        let key = record::entry_run_key(run);
        let mut entries = state.entries_numbered(start, end).peekable();
        if entries.peek().is_none() {
            batch.remove(key);
        } else {
            let stored = tree.get(&key).engine()?;
            let stored = stored.as_ref().map(|v| (key.as_slice(), v.as_ref()));
            let value = entry_runs::reencode(stored, entries, |n| changed.contains(&n))?;
            batch.insert(key, value);
        }
        next = changed.range(end..).next().copied().filter(|_| end > start);
    }
    Ok(batch)
}

impl Store {
    /// Writes what applies left waiting (see [`crate::batch`]); returns the revision the
    /// engine is at then.
    ///
    /// # Errors
    /// [`StoreError::Poisoned`] when something waits but an apply or a write failed
    /// before (the engine is then behind the memory, and must not be taken as holding
    /// it); [`StoreError::Engine`] if the write fails, which poisons the store and keeps
    /// what waits in memory.
    pub(crate) fn write_waiting(&self) -> Result<u64, StoreError> {
        {
            let state = self.read();
            if state.unwritten.is_empty() {
                return Ok(state.revision);
            }
        }
        let mut state = self.write();
        self.check_poisoned()?;
        self.write_waiting_locked(&mut state)?;
        Ok(state.revision)
    }

    /// Writes what waits in one atomic engine batch. On failure the store is poisoned and
    /// the writes stay waiting: the memory still holds their applies.
    pub(crate) fn write_waiting_locked(&self, state: &mut State) -> Result<(), StoreError> {
        if state.unwritten.is_empty() {
            return Ok(());
        }
        self.inner.batches.fetch_add(1, Ordering::Relaxed);
        let started = std::time::Instant::now();
        let written = if crate::apply::fault::batch() {
            Err(StoreError::Engine("injected batch failure".into()))
        } else {
            let tree = self.data_tree();
            waiting_batch(state, &tree).and_then(|batch| tree.apply_batch(batch).engine())
        };
        let took = started.elapsed();
        if took >= SLOW_BATCH {
            // Readers and applies wait for this (it holds the state lock).
            tracing::debug!(
                took_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
                entries = state.unwritten.entries,
                "slow engine batch"
            );
        }
        match written {
            Ok(()) => {
                state.unwritten.clear();
                Ok(())
            }
            Err(e) => {
                self.inner.poisoned.store(true, Ordering::Release);
                Err(e)
            }
        }
    }
}

impl Drop for crate::store::Inner {
    /// Writes what applies left waiting (see the `batch` module), so a store dropped
    /// without [`Store::close`] keeps every apply that returned, as before write-behind. Not
    /// after a panic in an apply (the state lock is then poisoned): the engine stays at
    /// the last write, a consistent state.
    fn drop(&mut self) {
        let Ok(state) = self.state.get_mut() else { return };
        if state.unwritten.is_empty() {
            return;
        }
        let tree = self.data.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
        match waiting_batch(state, tree) {
            Ok(waiting) => {
                if let Err(e) = tree.apply_batch(waiting) {
                    tracing::error!(error = %e, "writing the store's last applies at close");
                }
                state.unwritten.clear();
            }
            Err(e) => tracing::error!(error = %e, "encoding the store's last applies at close"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iv(s: &str) -> IVec {
        IVec::from(s.as_bytes())
    }

    #[test]
    fn an_overlay_gives_what_the_engine_will_hold_once_the_batch_is_written() {
        let tree = sled::Config::new().temporary(true).open().unwrap().open_tree("t").unwrap();
        for k in ["a", "c", "e", "g"] {
            tree.insert(k, k).unwrap();
        }
        let mut b = WriteBatch::default();
        b.insert("c", "c2");
        b.remove("e");
        b.insert("d", "d1");
        b.insert("d", "d2");
        b.insert("z", "out of range");
        b.remove("b");
        b.insert("f", "f1");
        b.remove("f");
        let mut read: Vec<(IVec, IVec)> = tree.range("b".."y").collect::<Result<_, _>>().unwrap();
        b.overlay(&mut read, b"b", b"y");
        tree.apply_batch(b.into_sled()).unwrap();
        let after: Vec<(IVec, IVec)> = tree.range("b".."y").collect::<Result<_, _>>().unwrap();
        assert_eq!(after, read);
        let keys: Vec<&[u8]> = after.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(keys, [&b"c"[..], b"d", b"g"]);
        assert_eq!((after[0].1.clone(), after[1].1.clone()), (iv("c2"), iv("d2")));
    }

    #[test]
    fn appended_writes_come_after_and_win() {
        let tree = sled::Config::new().temporary(true).open().unwrap().open_tree("t").unwrap();
        let mut first = WriteBatch::default();
        first.insert("k", "1");
        first.insert("gone", "1");
        let mut later = WriteBatch::default();
        later.insert("k", "2");
        later.remove("gone");
        first.append(later);
        tree.apply_batch(first.into_sled()).unwrap();
        assert_eq!(tree.get("k").unwrap(), Some(iv("2")));
        assert_eq!(tree.get("gone").unwrap(), None);
    }

    #[test]
    fn the_batch_is_due_after_enough_entries_writes_or_bytes_or_when_urgent() {
        let mut w = WriteBehind::default();
        for i in 1..WRITE_BEHIND_ENTRIES {
            let mut b = WriteBatch::default();
            b.insert(format!("k{i}").into_bytes(), vec![0u8; 8]);
            assert!(!w.add(b, 1, false, WRITE_BEHIND_ENTRIES), "apply {i}");
        }
        assert!(w.add(WriteBatch::default(), 1, false, WRITE_BEHIND_ENTRIES));
        assert_eq!(w.take().writes.len(), (WRITE_BEHIND_ENTRIES - 1) as usize);
        assert!(w.is_empty());
        assert!(w.add(WriteBatch::default(), 1, true, WRITE_BEHIND_ENTRIES));
        w.take();
        assert!(w.add(WriteBatch::default(), 1, false, 1), "a limit of 1 writes every apply");
        w.take();
        assert!(w.add(WriteBatch::default(), WRITE_BEHIND_ENTRIES, false, WRITE_BEHIND_ENTRIES));
        w.take();
        assert!(!w.add(WriteBatch::default(), 2, false, WRITE_BEHIND_ENTRIES));
        w.take();
        let mut big = WriteBatch::default();
        big.insert("k", vec![0u8; WRITE_BEHIND_BYTES]);
        assert!(w.add(big, 1, false, WRITE_BEHIND_ENTRIES));
        w.take();
        let mut many = WriteBatch::default();
        for i in 0..WRITE_BEHIND_WRITES {
            many.insert(i.to_be_bytes().to_vec(), "v");
        }
        assert!(w.add(many, 1, false, WRITE_BEHIND_ENTRIES));
    }

    #[test]
    fn a_written_buffer_keeps_its_room_up_to_twice_the_write_bound() {
        let mut w = WriteBehind::default();
        let fill = |w: &mut WriteBehind, n: usize| {
            let mut b = WriteBatch::default();
            for i in 0..n {
                b.insert(i.to_be_bytes().to_vec(), "v");
            }
            w.add(b, 1, false, WRITE_BEHIND_ENTRIES);
        };
        fill(&mut w, WRITE_BEHIND_WRITES);
        w.clear();
        assert!(w.is_empty() && w.batch.bytes == 0 && w.mark().entries == 0);
        assert!(w.batch.writes.capacity() >= WRITE_BEHIND_WRITES, "room kept");
        // A whole log's tail in one call: the room it took is given back down to the cap.
        fill(&mut w, 20 * WRITE_BEHIND_WRITES);
        w.clear();
        assert!(w.batch.writes.capacity() <= 2 * WRITE_BEHIND_WRITES);
    }
}
