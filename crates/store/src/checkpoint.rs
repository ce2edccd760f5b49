//! Entry images written while the store runs: [`Store::checkpoint`] (also what
//! [`Store::close`] does) and the automatic one every [`crate::StoreConfig::checkpoint_every`]
//! revisions. The `image` module has the file format and the rules an open follows.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use ward_core::RegistrationEntry;

use crate::error::{EngineResult, StoreError};
use crate::image::{self, ImageOf};
use crate::store::Store;

/// What a [`Store::checkpoint`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The revision the image is of.
    pub revision: u64,
    /// Number of entries in it.
    pub entries: usize,
    /// How long it held the state read lock (writers wait that long).
    pub lock_held: std::time::Duration,
}

impl Store {
    /// Makes every applied command durable and writes the entry image, so the next open
    /// reads the entries from one file instead of the engine's pages (about half the CPU
    /// time of opening a large store). Call it at a clean shutdown; it is
    /// [`Store::checkpoint`].
    ///
    /// # Errors
    /// As [`Store::checkpoint`].
    pub fn close(&self) -> Result<(), StoreError> {
        self.checkpoint().map(|_| ())
    }

    /// Writes the entry image of the current state: takes the entries (a reference each)
    /// under the state read lock, flushes the engine so the tree on disk is at or past that
    /// state, then encodes, writes and syncs the image without any state lock, and renames
    /// it into place. A later open reads the entries from the image and catches up with
    /// the entries the change feed names after its revision (see the `image` module), so
    /// the image serves any open until the feed no longer reaches back to it
    /// ([`crate::CHANGE_FEED_RETAIN`] revisions), a crash's included. Writers wait for the state
    /// lock only while the references are taken (15–100 ms measured at 1M entries); the rest
    /// (about a second of CPU and 200 MiB of memory at 1M entries) runs beside them.
    ///
    /// # Errors
    /// [`StoreError::Engine`] on I/O failure; the store stays usable and the next open
    /// uses the previous image, if any still fits, or reads the engine.
    pub fn checkpoint(&self) -> Result<Checkpoint, StoreError> {
        let _one =
            self.inner.image_writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let locked = std::time::Instant::now();
        let (of, entries) = {
            let state = self.read();
            let generation =
                *self.inner.generation.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let entries: Vec<(u64, Arc<RegistrationEntry>)> =
                state.numbered_entries_by_id().map(|(n, e)| (n, Arc::clone(e))).collect();
            (ImageOf { generation, applied: state.applied, revision: state.revision }, entries)
        };
        let lock_held = locked.elapsed();
        // Everything applied up to `of` (and maybe more) is on disk once this returns.
        self.write_waiting()?;
        self.inner.db.flush().engine()?;
        self.inner.durable.fetch_max(of.applied, Ordering::AcqRel);
        image::write(&self.inner.dir, of, entries.len(), entries.iter().map(|(n, e)| (*n, e)))?;
        self.inner.checkpoint_base.fetch_max(of.revision, Ordering::AcqRel);
        Ok(Checkpoint { revision: of.revision, entries: entries.len(), lock_held })
    }

    /// Starts a [`Store::checkpoint`] on a thread of its own when the state is
    /// [`StoreConfig::checkpoint_every`] revisions or more past the last image and none is
    /// running. Called after applies.
    pub(crate) fn checkpoint_if_due(&self, revision: u64) {
        let Some(every) = self.inner.config.checkpoint_every.filter(|&n| n > 0) else { return };
        let base = self.inner.checkpoint_base.load(Ordering::Acquire);
        // Replicas reach each revision at about the same moment: each waits a quarter of
        // the interval less, by its own random amount, so their checkpoints (seconds of
        // CPU each at 1M entries) do not all fall on the same cores at once.
        let share = self.inner.checkpoint_jitter.checked_rem((every / 4).max(1)).unwrap_or(0);
        let every = every.saturating_sub(share);
        if revision.saturating_sub(base) < every
            || self.inner.checkpointing.swap(true, Ordering::AcqRel)
        {
            return;
        }
        // Counted from this attempt even if it fails, so a failing disk is tried again
        // `every` revisions later rather than after every apply.
        self.inner.checkpoint_base.fetch_max(revision, Ordering::AcqRel);
        let store = self.clone();
        let started =
            std::thread::Builder::new().name("ward-store-checkpoint".into()).spawn(move || {
                let started = std::time::Instant::now();
                match store.checkpoint() {
                    Ok(c) => tracing::debug!(
                        revision = c.revision,
                        entries = c.entries,
                        lock_held_ms = c.lock_held.as_millis() as u64,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "wrote the entry image"
                    ),
                    Err(e) => tracing::warn!(error = %e, "could not write the entry image"),
                }
                store.inner.checkpointing.store(false, Ordering::Release);
            });
        if let Err(e) = started {
            tracing::warn!(error = %e, "could not start writing the entry image");
            self.inner.checkpointing.store(false, Ordering::Release);
        }
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)] // small numbers in tests
mod tests {
    use super::*;
    use crate::testdata::DataSet;
    use crate::{Command, StoreConfig, feed, record};

    fn config(checkpoint_every: Option<u64>) -> StoreConfig {
        StoreConfig { checkpoint_every, ..StoreConfig::new(DataSet::trust_domain()) }
    }

    fn next(store: &Store, cmd: Command) {
        store.apply(store.last_applied() + 1, &cmd).unwrap();
    }

    /// Every entry with its creation number, and one agent's authorized entries (which
    /// read the indexes).
    fn entries_of(store: &Store) -> (Vec<(u64, RegistrationEntry)>, Vec<String>) {
        let numbered =
            store.read().numbered_entries_by_id().map(|(n, e)| (n, (**e).clone())).collect();
        let mut authorized: Vec<String> = store
            .authorized_entries_uncached(&DataSet::agent_id(1))
            .iter()
            .map(|e| e.id.as_str().to_owned())
            .collect();
        authorized.sort();
        (numbered, authorized)
    }

    /// A store in `dir` holding `DataSet::SMALL`, without automatic checkpoints.
    fn small_set(dir: &tempfile::TempDir) -> Store {
        let store = Store::open(dir.path(), config(None)).unwrap();
        DataSet::SMALL.load(&store).unwrap();
        store
    }

    /// Flushes and drops `store` without closing it (as a crash leaves it), opens it again
    /// and checks that the open read the image or not as `from_image` says, with the same
    /// entries; returns the new handle.
    fn reopen(dir: &tempfile::TempDir, store: Store, from_image: bool) -> Store {
        let want = entries_of(&store);
        store.flush().unwrap();
        drop(store);
        let store = Store::open(dir.path(), config(None)).unwrap();
        assert_eq!(store.opened_from_image(), from_image);
        assert_eq!(entries_of(&store), want);
        store
    }

    /// Creates entry `k` under agent 1, changes one the image holds and deletes another,
    /// then puts it back (changed): four revisions.
    fn change_entries_after(store: &Store, k: u64) {
        let revision = store.revision();
        let mut created = DataSet::workload_entry(1, 0);
        created.id = DataSet::entry_id(9, 1, k);
        created.spiffe_id = DataSet::trust_domain().spiffe_id(&format!("/created/{k}")).unwrap();
        next(store, Command::CreateEntries(vec![created]));
        let mut changed = DataSet::workload_entry(1, 1);
        changed.hint = format!("changed {k}");
        let patch = ward_core::EntryPatch::all_of(&changed);
        next(store, Command::UpdateEntries(vec![crate::EntryUpdate { id: changed.id, patch }]));
        next(store, Command::DeleteEntries(vec![DataSet::workload_entry(1, 2).id]));
        let mut back = DataSet::workload_entry(1, 2);
        back.hint = format!("back {k}");
        next(store, Command::CreateEntries(vec![back]));
        assert_eq!(store.revision(), revision + 4);
    }

    #[test]
    fn an_open_reads_an_older_image_and_catches_up_through_the_change_feed() {
        let dir = tempfile::tempdir().unwrap();
        let store = small_set(&dir);
        store.checkpoint().unwrap();
        change_entries_after(&store, 0);
        assert!(entries_of(&store).1.contains(&DataSet::entry_id(9, 1, 0).as_str().to_owned()));
        let store = reopen(&dir, store, true);
        // The image still fits later states, so it is kept for the next open.
        assert!(dir.path().join(image::IMAGE_FILE).exists());
        next(&store, Command::DeleteEntries(vec![DataSet::workload_entry(1, 3).id]));
        reopen(&dir, store, true);
    }

    #[test]
    fn an_image_the_change_feed_does_not_reach_back_to_is_not_used_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = small_set(&dir);
        store.checkpoint().unwrap();
        let since = store.revision();
        // Enough changes to seal the run holding the image's revision, which then goes.
        for k in 0..feed::FEED_RUN / 4 + 1 {
            change_entries_after(&store, k);
        }
        store.data_tree().remove(record::feed_key(feed::run_of(since + 1))).unwrap().unwrap();
        reopen(&dir, store, false);
        assert!(!dir.path().join(image::IMAGE_FILE).exists());
    }

    #[test]
    fn an_image_is_written_on_its_own_every_so_many_revisions() {
        let dir = tempfile::tempdir().unwrap();
        // Due between 150 and 200 revisions, by this open's random share.
        let store = Store::open(dir.path(), config(Some(200))).unwrap();
        DataSet::SMALL.load(&store).unwrap();
        assert!(store.revision() < 150);
        assert!(!dir.path().join(image::IMAGE_FILE).exists());
        let mut k = 0;
        while store.revision() < 200 {
            change_entries_after(&store, k);
            k += 1;
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !dir.path().join(image::IMAGE_FILE).exists() {
            assert!(std::time::Instant::now() < deadline, "no image written");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        reopen(&dir, store, true);
    }

    #[test]
    fn an_image_naming_one_entry_twice_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let store = small_set(&dir);
        let state = store.read();
        let generation = *store.inner.generation.lock().unwrap();
        let of = ImageOf { generation, applied: state.applied, revision: state.revision };
        let mut entries: Vec<(u64, &Arc<RegistrationEntry>)> =
            state.numbered_entries_by_id().collect();
        entries[1] = entries[0];
        image::write(dir.path(), of, entries.len(), entries.into_iter()).unwrap();
        drop(state);
        reopen(&dir, store, false);
        assert!(!dir.path().join(image::IMAGE_FILE).exists());
    }

    #[test]
    fn an_image_stays_when_the_open_is_refused_for_another_trust_domain() {
        let dir = tempfile::tempdir().unwrap();
        let store = small_set(&dir);
        store.close().unwrap();
        drop(store);
        let other = StoreConfig::new(ward_core::TrustDomain::new("other.test").unwrap());
        let err = Store::open(dir.path(), other).unwrap_err();
        assert!(matches!(err, StoreError::TrustDomainMismatch { .. }), "{err:?}");
        assert!(dir.path().join(image::IMAGE_FILE).exists());
        assert!(Store::open(dir.path(), config(None)).unwrap().opened_from_image());
    }

    #[test]
    fn installing_a_snapshot_removes_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let store = small_set(&dir);
        store.checkpoint().unwrap();
        let other_dir = tempfile::tempdir().unwrap();
        let other = small_set(&other_dir);
        change_entries_after(&other, 0);
        let snapshot = other.export_snapshot(1 << 16).unwrap();
        store.import_snapshot(snapshot.chunks).unwrap();
        assert!(!dir.path().join(image::IMAGE_FILE).exists());
        reopen(&dir, store, false);
    }
}
