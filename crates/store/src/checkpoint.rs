//! Entry images written while the store runs: [`Store::checkpoint`] (also what
//! [`Store::close`] does) and the automatic one every [`crate::StoreConfig::checkpoint_every`]
//! revisions. The `image` module has the file format and the rules an open follows.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

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
    /// The longest wait for and hold of the state read lock while the entries were taken
    /// (writers wait at most about that long).
    pub lock_held: std::time::Duration,
    /// How long writing what applies left waiting and flushing the engine took (applies
    /// that fill the write-behind buffer meanwhile wait for the first part).
    pub flush: std::time::Duration,
    /// Whether the image was put in place: `false` when a snapshot installed while it was
    /// written made it one of another history, and it was dropped.
    pub placed: bool,
}

/// Entries taken per hold of the state read lock while an image's entries are taken: a
/// writer waits for at most this many (about a millisecond).
const CUT_SLICE: usize = 8192;

/// The entries an image is written from, and what it is of.
struct Cut {
    of: ImageOf,
    /// The count of installed snapshots when the entries were taken.
    installs: u64,
    entries: Vec<(u64, Arc<RegistrationEntry>)>,
    /// The longest hold of the state read lock.
    lock_held: std::time::Duration,
}

/// Whether the thread writing an image runs at the caller's priority or below everything
/// else on the machine.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Priority {
    Caller,
    Background,
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

    /// Writes the entry image of the current state, then puts it in place (renamed over
    /// the previous one).
    ///
    /// The entries are taken (a reference each) in id order, 8,192 at a time under the
    /// state read lock, so writers wait about a millisecond at most (0.2–0.9 ms measured at
    /// 1M entries), not for the whole cut (15–100 ms). Applies that run between slices make
    /// the image *fuzzy*: it is of the revision the first slice saw, and may also hold later
    /// states of some entries. Entries numbered after the first slice are left out. Every entry
    /// changed after that revision is named by the change feed, and a later open reads each
    /// of those again from the tree (see the `image` module), so the opened state is the
    /// tree's either way. The engine is then flushed, so the tree on disk is at or past
    /// every state taken, and the image is encoded, written and synced without any state
    /// lock (about a second of CPU and 200 MiB of memory at 1M entries). The automatic
    /// image does that part on a thread of its own at nice 19, so it takes only CPU time
    /// that applies, raft and the RPC handlers leave; one image is written at a time, so a
    /// call made meanwhile first waits for it.
    ///
    /// A snapshot installed meanwhile only waits for the cut; the image then written is of
    /// the replaced history and is dropped instead of put in place
    /// ([`Checkpoint::placed`] is `false`).
    ///
    /// # Errors
    /// [`StoreError::Engine`] on I/O failure; the store stays usable and the next open
    /// uses the previous image, if any still fits, or reads the engine.
    pub fn checkpoint(&self) -> Result<Checkpoint, StoreError> {
        self.write_image(Priority::Caller)
    }

    fn write_image(&self, priority: Priority) -> Result<Checkpoint, StoreError> {
        // One image at a time: they share the temporary file.
        let _one = self.inner.image_build.lock().unwrap_or_else(PoisonError::into_inner);
        let cut = self.cut_entries(CUT_SLICE, &mut |_| {});
        self.write_cut(cut, priority)
    }

    /// The entries for an image, with their creation numbers, in id order: `slice` (at
    /// least 1) at a time under the state read lock, calling `between` with the last id
    /// taken after each hold that took a whole slice. The image is of the state the first
    /// slice saw.
    fn cut_entries(&self, slice: usize, between: &mut dyn FnMut(&str)) -> Cut {
        let slice = slice.max(1);
        // Held across the cut (as an install holds it across its switch), so the cut sees
        // one history.
        let installs = self.inner.image_writer.lock().unwrap_or_else(PoisonError::into_inner);
        let generation = *self.inner.generation.lock().unwrap_or_else(PoisonError::into_inner);
        let mut entries: Vec<(u64, Arc<RegistrationEntry>)> = Vec::new();
        let mut of = None;
        let mut up_to = 0;
        let mut longest = std::time::Duration::ZERO;
        loop {
            let locked = std::time::Instant::now();
            let state = self.read();
            let of = *of.get_or_insert_with(|| {
                entries.reserve(state.entry_count());
                up_to = state.last_entry_number;
                ImageOf { generation, applied: state.applied, revision: state.revision }
            });
            let after = entries.last().map(|(_, e)| Arc::clone(e));
            let before = entries.len();
            entries.extend(
                state
                    .numbered_entries_after(after.as_ref().map(|e| e.id.as_str()), up_to, slice)
                    .map(|(n, e)| (n, Arc::clone(e))),
            );
            drop(state);
            longest = longest.max(locked.elapsed());
            match entries.last() {
                Some((_, last)) if entries.len().saturating_sub(before) == slice => {
                    between(last.id.as_str());
                    self.let_writers_in();
                }
                _ => return Cut { of, installs: *installs, entries, lock_held: longest },
            }
        }
    }

    /// Flushes the engine past every state `cut` took, then writes its image (at the
    /// lowest priority for [`Priority::Background`]) and puts it in place unless a
    /// snapshot was installed since the cut.
    fn write_cut(&self, cut: Cut, priority: Priority) -> Result<Checkpoint, StoreError> {
        let Cut { of, installs, entries, lock_held } = cut;
        // Everything applied up to the last slice (and maybe more) is on disk once this
        // returns. At the caller's priority: applies wait for the writes this takes over.
        let flushing = std::time::Instant::now();
        self.write_waiting()?;
        self.inner.db.flush().engine()?;
        let flush = flushing.elapsed();
        self.inner.durable.fetch_max(of.applied, Ordering::AcqRel);
        let dir = &self.inner.dir;
        let write =
            || image::write_unplaced(dir, of, entries.len(), entries.iter().map(|(n, e)| (*n, e)));
        match priority {
            Priority::Caller => write()?,
            // On a thread of its own, so that this one (at its own priority again) takes the
            // locks an install and a close wait for: a thread at nice 19 holding them could
            // keep them waiting for as long as the machine is busy.
            Priority::Background => std::thread::scope(|scope| {
                let encoder = std::thread::Builder::new()
                    .name("ward-store-image".into())
                    .spawn_scoped(scope, || {
                        lower_priority();
                        write()
                    });
                match encoder {
                    Ok(handle) => {
                        handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                    }
                    // No thread to be had: written here, at this thread's priority.
                    Err(_) => write(),
                }
            })?,
        }
        let placed = {
            let now = self.inner.image_writer.lock().unwrap_or_else(PoisonError::into_inner);
            if *now == installs {
                Some(image::place(dir)?)
            } else {
                image::discard_unplaced(dir);
                None
            }
        };
        let placed = match placed {
            Some(replaced) => {
                // The image replaced is freed a few MB at a time (see `crate::disk`).
                crate::disk::release_in_background(dir, replaced.into_iter().collect());
                self.inner.checkpoint_base.fetch_max(of.revision, Ordering::AcqRel);
                true
            }
            None => false,
        };
        Ok(Checkpoint { revision: of.revision, entries: entries.len(), lock_held, flush, placed })
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
                match store.write_image(Priority::Background) {
                    Ok(c) => tracing::debug!(
                        revision = c.revision,
                        entries = c.entries,
                        lock_held_ms = c.lock_held.as_millis() as u64,
                        flush_ms = c.flush.as_millis() as u64,
                        placed = c.placed,
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

/// Lowers the calling thread to the lowest scheduling priority (nice 19), so an image
/// written in the background takes only CPU time that applies, raft and the RPC handlers
/// leave. Linux keeps nice values per thread (setpriority(2), NOTES); elsewhere this does
/// nothing. It is not raised again: the thread ends with the image.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 19) {
        tracing::debug!(error = %e, "could not lower the priority of the entry image's thread");
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)] // small numbers in tests
mod tests {
    use super::*;
    use crate::testdata::DataSet;
    use crate::{Command, StoreConfig, feed, record};

    pub(super) fn config(checkpoint_every: Option<u64>) -> StoreConfig {
        StoreConfig { checkpoint_every, ..StoreConfig::new(DataSet::trust_domain()) }
    }

    pub(super) fn next(store: &Store, cmd: Command) {
        store.apply(store.last_applied() + 1, &cmd).unwrap();
    }

    /// Every entry with its creation number, and one agent's authorized entries (which
    /// read the indexes).
    pub(super) fn entries_of(store: &Store) -> (Vec<(u64, RegistrationEntry)>, Vec<String>) {
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

    /// A copy of workload entry (1, 0) with id `id` and a SPIFFE ID of its own.
    fn entry_with_id(id: &str) -> RegistrationEntry {
        let mut e = DataSet::workload_entry(1, 0);
        e.id = ward_core::EntryId::new(id).unwrap();
        e.spiffe_id = DataSet::trust_domain().spiffe_id(&format!("/fuzzy/{id}")).unwrap();
        e
    }

    /// Applies run between the slices of an image's cut: entries created before the cut's
    /// position (which it then misses) and after it (which it must leave out: they are
    /// numbered after the first slice, and the open would not look for the missed one
    /// otherwise), entries changed, deleted and put back on either side of it. The image
    /// is of the first slice's revision and holds some later states; the open reads it and
    /// catches up to exactly the tree's entries.
    #[test]
    fn an_image_cut_while_applies_run_opens_to_the_tree_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = small_set(&dir);
        let count = store.read().entry_count();
        let slice = 16;
        assert!(count > slice * 8, "{count} entries");
        let writer = store.clone();
        let mut round = 0u64;
        let mut saw = (false, false);
        let cut = store.cut_entries(slice, &mut |cursor| {
            // Sorts before every id the data set makes (hex digits follow its first `0`).
            let below = format!("0-below-{round}");
            let above = format!("{cursor}-above-{round}");
            assert!(below.as_str() < cursor && above.as_str() > cursor);
            next(&writer, Command::CreateEntries(vec![entry_with_id(&below)]));
            next(&writer, Command::CreateEntries(vec![entry_with_id(&above)]));
            change_entries_after(&writer, round);
            // One entry of agent 2 deleted and one changed each round: some before the
            // cursor, some after.
            let gone = DataSet::workload_entry(2, round as usize % 10);
            saw.0 |= gone.id.as_str() < cursor;
            saw.1 |= gone.id.as_str() > cursor;
            if writer.read().entry(&gone.id).is_some() {
                next(&writer, Command::DeleteEntries(vec![gone.id]));
            }
            let mut changed = DataSet::workload_entry(3, round as usize % 10);
            changed.hint = format!("round {round}");
            let patch = ward_core::EntryPatch::all_of(&changed);
            next(
                &writer,
                Command::UpdateEntries(vec![crate::EntryUpdate { id: changed.id, patch }]),
            );
            round += 1;
        });
        drop(writer);
        assert!(round >= 4, "{round} rounds");
        assert!(saw.0 && saw.1, "deletes fell on both sides of the cursor: {saw:?}");
        let revision = cut.of.revision;
        assert!(store.revision() > revision);
        let c = store.write_cut(cut, Priority::Caller).unwrap();
        assert!(c.placed);
        assert_eq!(c.revision, revision);
        // The reopened state is the tree's (checked by `reopen`), read from the image.
        let store = reopen(&dir, store, true);
        for r in 0..round {
            let below = ward_core::EntryId::new(&format!("0-below-{r}")).unwrap();
            assert!(store.read().entry(&below).is_some(), "round {r}'s entry before the cursor");
        }
    }

    /// A writer that waits for the state lock while an image's entries are taken gets it
    /// between two holds of the read lock, not only once the cut is done: the thread taking
    /// them would otherwise take the read lock again before the woken writer runs, hold
    /// after hold (see `Store::let_writers_in`).
    #[test]
    fn a_writer_gets_the_state_lock_between_the_holds_of_a_cut() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), config(None)).unwrap();
        // Holds long enough (a few hundred microseconds each) that the writer stops spinning
        // for the lock and sleeps, as it does for the 8,192-entry holds of a real cut.
        DataSet { n: 2_000 }.load(&store).unwrap();
        let slice = 1024;
        let holds = store.read().entry_count() / slice;
        assert!(holds >= 16, "{holds} holds");
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut writer = None;
        let mut calls = 0usize;
        let mut first_seen = None;
        store.cut_entries(slice, &mut |_| {
            calls += 1;
            if writer.is_none() {
                let (other, finished) = (store.clone(), done.clone());
                writer = Some(std::thread::spawn(move || {
                    next(&other, Command::CreateEntries(vec![entry_with_id("0-writer")]));
                    finished.store(true, Ordering::Release);
                }));
            } else if first_seen.is_none() && done.load(Ordering::Acquire) {
                first_seen = Some(calls);
            }
        });
        writer.unwrap().join().unwrap();
        assert!(
            first_seen.is_some(),
            "the writer waited for all {calls} holds of the cut instead of getting in between"
        );
    }

    /// A snapshot installed after an image's entries were taken: the image, of the
    /// replaced history, is dropped rather than put in place.
    #[test]
    fn an_image_cut_before_a_snapshot_install_is_not_put_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let store = small_set(&dir);
        let cut = store.cut_entries(CUT_SLICE, &mut |_| {});
        let other_dir = tempfile::tempdir().unwrap();
        let other = small_set(&other_dir);
        change_entries_after(&other, 0);
        store.import_snapshot(other.export_snapshot(1 << 16).unwrap().chunks).unwrap();
        let c = store.write_cut(cut, Priority::Caller).unwrap();
        assert!(!c.placed);
        assert!(!dir.path().join(image::IMAGE_FILE).exists());
        assert!(!dir.path().join("ward-entries.image.tmp").exists());
        let store = reopen(&dir, store, false);
        assert_eq!(entries_of(&store), entries_of(&other));
        // The next image is of the installed history and is put in place.
        assert!(store.checkpoint().unwrap().placed);
        reopen(&dir, store, true);
    }

    /// The thread that writes a background image drops to nice 19; the process's other
    /// threads keep theirs.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_background_image_thread_runs_at_the_lowest_priority() {
        fn nice_of(tid: i32) -> i64 {
            let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
            // Field 19, counted after the command name's closing parenthesis (field 2).
            let after = &stat[stat.rfind(')').unwrap() + 2..];
            after.split(' ').nth(16).unwrap().parse().unwrap()
        }
        let me = rustix::thread::gettid().as_raw_nonzero().get();
        let before = nice_of(me);
        let (tid, nice) = std::thread::spawn(|| {
            lower_priority();
            let tid = rustix::thread::gettid().as_raw_nonzero().get();
            (tid, nice_of(tid))
        })
        .join()
        .unwrap();
        assert_ne!(tid, me);
        assert_eq!(nice, 19);
        assert_eq!(nice_of(me), before);
        // A background image encodes on a thread of its own: the thread that takes the
        // locks installs and closes wait for keeps its priority.
        let dir = tempfile::tempdir().unwrap();
        let store = small_set(&dir);
        let (c, nice) = std::thread::spawn(move || {
            let c = store.write_image(Priority::Background).unwrap();
            (c, nice_of(rustix::thread::gettid().as_raw_nonzero().get()))
        })
        .join()
        .unwrap();
        assert!(c.placed && c.entries > 0);
        assert_eq!(nice, before);
    }

    /// The applied index in the header of the image in place, if any (read without
    /// `image::read`, which would remove a checkpoint's temporary file under it).
    fn placed_applied(dir: &std::path::Path) -> Option<u64> {
        let bytes = std::fs::read(dir.join(image::IMAGE_FILE)).ok()?;
        Some(u64::from_le_bytes(bytes[9..17].try_into().unwrap()))
    }

    /// Installs race checkpoints (and a background one) on other threads: nothing
    /// deadlocks, after each install returns the image in place (if any) is of the
    /// installed history or later, and the store reopens from it to the installed state.
    #[test]
    fn installs_racing_checkpoints_never_leave_an_image_of_a_replaced_history() {
        let src_dir = tempfile::tempdir().unwrap();
        let src = small_set(&src_dir);
        let mut snapshots = Vec::new();
        for k in 0..10 {
            change_entries_after(&src, k);
            snapshots.push(src.export_snapshot(1 << 14).unwrap());
        }
        let dir = tempfile::tempdir().unwrap();
        let store = small_set(&dir);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let placed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let writers: Vec<_> = (0..2)
            .map(|t| {
                let (store, stop) = (store.clone(), std::sync::Arc::clone(&stop));
                let placed = std::sync::Arc::clone(&placed);
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        let priority = if t == 0 { Priority::Caller } else { Priority::Background };
                        let c = store.write_image(priority).unwrap();
                        placed.fetch_add(usize::from(c.placed), Ordering::AcqRel);
                    }
                })
            })
            .collect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        for s in &snapshots {
            store.import_snapshot(s.chunks.clone()).unwrap();
            assert!(std::time::Instant::now() < deadline, "installs stalled");
            if let Some(applied) = placed_applied(dir.path()) {
                assert!(
                    applied >= s.info.applied,
                    "image of {applied}, installed {}",
                    s.info.applied
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // With no install after it, an image cut now is placed, however slow the machine.
        while placed.load(Ordering::Acquire) == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        stop.store(true, Ordering::Release);
        for w in writers {
            w.join().unwrap();
        }
        assert!(placed.load(Ordering::Acquire) > 0, "no image placed once installs stopped");
        let last = snapshots.last().unwrap().info.applied;
        assert!(placed_applied(dir.path()).is_none_or(|a| a >= last));
        assert!(!dir.path().join("ward-entries.image.tmp").exists());
        let from_image = dir.path().join(image::IMAGE_FILE).exists();
        let store = reopen(&dir, store, from_image);
        assert_eq!(entries_of(&store), entries_of(&src));
    }

    /// [`Store::close`] while a background image is being written: both finish, and the
    /// image in place is the close's (of the last revision).
    #[test]
    fn close_while_a_background_image_runs_leaves_the_last_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = small_set(&dir);
        let bg = {
            let store = store.clone();
            std::thread::spawn(move || store.write_image(Priority::Background).unwrap())
        };
        change_entries_after(&store, 0);
        let revision = store.revision();
        store.close().unwrap();
        bg.join().unwrap();
        let store = reopen(&dir, store, true);
        assert_eq!(store.revision(), revision);
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

    /// An image further behind than catching it up one entry at a time is worth is not
    /// used, and says so as such (not as damage); the entries come from the tree.
    #[test]
    fn an_image_far_behind_the_tree_is_not_used_and_not_called_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let store = small_set(&dir);
        store.checkpoint().unwrap();
        let td = DataSet::trust_domain();
        // More changed entries than `load::CATCH_UP_ALWAYS` (4,096).
        for batch in 0..42u64 {
            let entries = (0..100u64)
                .map(|i| {
                    let mut e = DataSet::workload_entry(1, 0);
                    e.id = DataSet::entry_id(9, batch, i);
                    e.spiffe_id = td.spiffe_id(&format!("/far/{batch}/{i}")).unwrap();
                    e
                })
                .collect();
            next(&store, Command::CreateEntries(entries));
        }
        store.flush().unwrap();
        let image = image::read(dir.path()).expect("the checkpoint's image");
        let err = crate::load::load_state(&store.data_tree(), &td, Some(image)).unwrap_err();
        assert!(
            matches!(err, StoreError::ImageBehind { changed: 4200, entries: 1..4200 }),
            "{err:?}"
        );
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

/// Random interleavings of applies with the slices of an image's cut: the store reopened
/// from the image must hold exactly what a reopen from the tree holds.
#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)] // small numbers in tests
mod fuzzy_tests {
    use super::tests::{config, entries_of, next};
    use super::*;
    use crate::testdata::DataSet;
    use crate::{Command, record};
    use proptest::prelude::*;

    /// Ids of the pool: `p00` .. `p23`.
    const POOL: u8 = 24;

    fn pool_id(k: u8) -> String {
        format!("p{:02}", k % POOL)
    }

    /// An entry with id `id`, parented by agent 1, or (when `nested`) by the pool entry
    /// `p00`'s SPIFFE ID, so the authorized-entries walk descends.
    fn entry(id: &str, hint: &str, nested: bool) -> RegistrationEntry {
        let mut e = DataSet::workload_entry(1, 0);
        e.id = ward_core::EntryId::new(id).unwrap();
        e.spiffe_id = DataSet::trust_domain().spiffe_id(&format!("/fz/{id}")).unwrap();
        if nested && id != "p00" {
            e.parent_id = DataSet::trust_domain().spiffe_id("/fz/p00").unwrap();
        }
        e.hint = hint.to_owned();
        e
    }

    #[derive(Debug, Clone)]
    enum Op {
        Create(u8, bool),
        Update(u8),
        Delete(u8),
        /// Deleted and created again in two applies (a new creation number).
        Recreate(u8, bool),
        /// Deleted and created again in one command list (two items of two applies).
        Both(u8),
        /// On the id the cut last took: 0 update, 1 delete, 2 delete and create again.
        AtCursor(u8),
        /// An id right after the cut's position (the cursor with a suffix).
        AfterCursor(u8),
        DeleteAll,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..POOL, any::<bool>()).prop_map(|(k, n)| Op::Create(k, n)),
            3 => (0..POOL).prop_map(Op::Update),
            3 => (0..POOL).prop_map(Op::Delete),
            3 => (0..POOL, any::<bool>()).prop_map(|(k, n)| Op::Recreate(k, n)),
            1 => (0..POOL).prop_map(Op::Both),
            3 => (0u8..3).prop_map(Op::AtCursor),
            2 => (0u8..4).prop_map(Op::AfterCursor),
            1 => Just(Op::DeleteAll),
        ]
    }

    fn run(store: &Store, op: &Op, cursor: Option<&str>, tick: &mut u64) {
        *tick += 1;
        let hint = format!("t{tick}");
        let exists = |id: &str| store.read().entry(&ward_core::EntryId::new(id).unwrap()).is_some();
        let create = |id: &str, nested: bool| {
            next(store, Command::CreateEntries(vec![entry(id, &hint, nested)]));
        };
        let delete = |id: &str| {
            next(store, Command::DeleteEntries(vec![ward_core::EntryId::new(id).unwrap()]));
        };
        let update = |id: &str| {
            let old = store.read().entry(&ward_core::EntryId::new(id).unwrap()).cloned();
            if let Some(old) = old {
                let mut changed = (*old).clone();
                changed.hint = hint.clone();
                let patch = ward_core::EntryPatch::all_of(&changed);
                next(
                    store,
                    Command::UpdateEntries(vec![crate::EntryUpdate { id: changed.id, patch }]),
                );
            }
        };
        match op {
            Op::Create(k, n) => create(&pool_id(*k), *n),
            Op::Update(k) => update(&pool_id(*k)),
            Op::Delete(k) => delete(&pool_id(*k)),
            Op::Recreate(k, n) => {
                let id = pool_id(*k);
                delete(&id);
                create(&id, *n);
            }
            Op::Both(k) => {
                let id = pool_id(*k);
                let eid = ward_core::EntryId::new(&id).unwrap();
                next(store, Command::DeleteEntries(vec![eid]));
                next(store, Command::CreateEntries(vec![entry(&id, &hint, false)]));
            }
            Op::AtCursor(what) => {
                let Some(id) = cursor else { return };
                match what {
                    0 => update(id),
                    1 => delete(id),
                    _ => {
                        delete(id);
                        create(id, false);
                    }
                }
            }
            Op::AfterCursor(s) => {
                let Some(c) = cursor else { return };
                let id = format!("{c}{s}");
                if exists(&id) { delete(&id) } else { create(&id, false) }
            }
            Op::DeleteAll => {
                let ids: Vec<ward_core::EntryId> =
                    store.read().numbered_entries_by_id().map(|(_, e)| e.id.clone()).collect();
                if !ids.is_empty() {
                    next(store, Command::DeleteEntries(ids));
                }
            }
        }
    }

    /// A store in `dir` holding the pool ids `initial` (in runs) and `alone` (stored alone,
    /// creation number 0, as written before numbers were kept).
    fn set_up(dir: &std::path::Path, initial: &[u8], alone: &[u8]) -> Store {
        let store = Store::open(dir, config(None)).unwrap();
        let mut tick = 0;
        for k in initial {
            run(&store, &Op::Create(*k, k % 3 == 0), None, &mut tick);
        }
        let alone: Vec<u8> = alone
            .iter()
            .copied()
            .filter(|k| {
                store.read().entry(&ward_core::EntryId::new(&pool_id(*k)).unwrap()).is_none()
            })
            .collect();
        if alone.is_empty() {
            return store;
        }
        store.flush().unwrap();
        let tree = store.data_tree();
        let mut ids = std::collections::BTreeSet::new();
        for k in &alone {
            let e = entry(&pool_id(*k), "alone", false);
            ids.insert(e.id.clone());
            tree.insert(record::entry_key(&e.id), record::encode_numbered(&e, 0).unwrap()).unwrap();
        }
        let count = store.entry_count() as u64 + ids.len() as u64;
        tree.insert(record::META_ENTRIES, record::u64_value(count)).unwrap();
        tree.flush().unwrap();
        drop(tree);
        drop(store);
        let _ = std::fs::remove_file(dir.join(image::IMAGE_FILE));
        let store = Store::open(dir, config(None)).unwrap();
        for id in &ids {
            assert_eq!(store.read().entry_number(id), Some(0));
        }
        store
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]
        #[test]
        fn a_fuzzy_image_opens_to_the_tree_state(
            initial in proptest::collection::vec(0..POOL, 0..20),
            alone in proptest::collection::vec(0..POOL, 0..4),
            slice in 1usize..5,
            between in proptest::collection::vec(proptest::collection::vec(op(), 0..4), 0..10),
            after_cut in proptest::collection::vec(op(), 0..3),
            after_write in proptest::collection::vec(op(), 0..3),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let store = set_up(dir.path(), &initial, &alone);
            let writer = store.clone();
            let mut round = 0;
            let mut tick = 0;
            let cut = store.cut_entries(slice, &mut |cursor| {
                for op in between.get(round).into_iter().flatten() {
                    run(&writer, op, Some(cursor), &mut tick);
                }
                round += 1;
            });
            for op in &after_cut {
                run(&store, op, None, &mut tick);
            }
            let c = store.write_cut(cut, Priority::Caller).unwrap();
            prop_assert!(c.placed);
            for op in &after_write {
                run(&store, op, None, &mut tick);
            }
            drop(writer);
            let want = entries_of(&store);
            store.flush().unwrap();
            drop(store);
            let store = Store::open(dir.path(), config(None)).unwrap();
            prop_assert!(store.opened_from_image(), "the image was not used");
            prop_assert_eq!(&entries_of(&store), &want);
            store.flush().unwrap();
            drop(store);
            std::fs::remove_file(dir.path().join(image::IMAGE_FILE)).unwrap();
            let store = Store::open(dir.path(), config(None)).unwrap();
            prop_assert!(!store.opened_from_image());
            prop_assert_eq!(&entries_of(&store), &want);
        }
    }
}
