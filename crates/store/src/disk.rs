//! Large file writes and deletions that leave the disk to small synchronous writes.
//!
//! A replica's write latency is one small append and one `fdatasync` of the raft log
//! (ward-cluster's journal). Two other things a replica does move hundreds of MB at a
//! time, and either stalled that `fdatasync` for 20–100 ms on ext4 here:
//!
//! - **Writing a large file and syncing it once at the end** (the entry image): the final
//!   sync puts all its dirty pages in the device queue at once, and the log's write and
//!   flush wait behind them. [`PacedWriter`] syncs every [`SYNC_EVERY`] bytes instead, so
//!   no more than that is ever queued ahead of the log.
//! - **Deleting a large file** (a replaced image, compacted log segments): the whole file's
//!   blocks are freed in one journal commit, and on a filesystem mounted with `discard`
//!   that commit discards them all before the next commit, which the log's `fdatasync`
//!   needs, can start. [`release`] frees an already unlinked file's blocks
//!   [`RELEASE_STEP`] at a time instead, pausing [`RELEASE_PAUSE`] between steps (as
//!   RocksDB's `SstFileManager` rate-limits the deletion of table files for the same
//!   reason).
//!
//! Measured with the `disk_stalls` example (`crates/store/examples/disk_stalls.rs`) and
//! `cargo bench -p ward-benches --bench cluster_writes`: see `docs/benchmarks.md`.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::Duration;

/// Bytes a [`PacedWriter`] writes between syncs.
pub const SYNC_EVERY: usize = 1 << 20;
/// Bytes [`release`] frees per step.
pub const RELEASE_STEP: u64 = 4 << 20;
/// Pause between two steps of [`release`].
pub const RELEASE_PAUSE: Duration = Duration::from_millis(10);
/// Batches [`release_in_background`] queues at most; past that a batch's files are closed
/// at once (freed together), so a backlog never holds file descriptors without bound.
pub const RELEASE_BACKLOG: usize = 64;

/// A file writer that syncs the file's data (`fdatasync`) every [`SYNC_EVERY`] bytes, so
/// the pages it dirties reach the disk in steps of that size rather than all at the final
/// sync. Buffer it (it syncs on the bytes that reach the file, not on each call). A sync
/// that is due runs at the start of the next write, so a write that returns an error wrote
/// nothing; the bytes after the last sync are left for the caller's final sync.
#[derive(Debug)]
pub struct PacedWriter {
    file: File,
    every: usize,
    unsynced: usize,
    syncs: u64,
}

impl PacedWriter {
    /// Writes to `file`, syncing every [`SYNC_EVERY`] bytes.
    pub fn new(file: File) -> Self {
        Self::every(file, SYNC_EVERY)
    }

    /// Writes to `file`, syncing every `bytes` bytes (at least 1).
    pub fn every(file: File, bytes: usize) -> Self {
        Self { file, every: bytes.max(1), unsynced: 0, syncs: 0 }
    }

    /// Syncs done so far (not counting any the caller does on [`PacedWriter::into_file`]'s
    /// result).
    pub fn syncs(&self) -> u64 {
        self.syncs
    }

    /// The file, with the bytes written since the last sync not yet synced.
    pub fn into_file(self) -> File {
        self.file
    }
}

impl Write for PacedWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.unsynced >= self.every {
            self.file.sync_data()?;
            self.unsynced = 0;
            self.syncs = self.syncs.saturating_add(1);
        }
        let n = self.file.write(buf)?;
        self.unsynced = self.unsynced.saturating_add(n);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Frees the blocks of `file`, whose name is already gone (unlinked, or renamed over),
/// [`RELEASE_STEP`] at a time with [`RELEASE_PAUSE`] between steps, then closes it. It
/// must have been opened for writing. A file that another name still reaches (a hard link,
/// as a backup made with `cp -al` holds) is only closed: shrinking it would empty that
/// name's file too. Blocks until done: about 0.25 s per 100 MB, so call
/// it off any latency-bound thread ([`release_in_background`]).
///
/// On any error the file is closed at once (its remaining blocks freed together). If the
/// process dies part-way, the kernel closes the file and frees the rest at once; after a
/// machine crash the filesystem frees the orphaned inode when it is next mounted. Either
/// way nothing under a name is ever left part-truncated.
pub fn release(file: File) {
    release_in_steps(file, RELEASE_STEP, RELEASE_PAUSE, |_| {});
}

/// Files to free and the directory their names were in.
type Batch = (PathBuf, Vec<File>);

/// [`release`] of `files`, whose names were in `dir`, on one long-lived thread
/// (`ward-release`) that frees what it is given one file after another. The thread first
/// syncs `dir`, so that the unlinks are on disk before any shrink is: a crash must never
/// find a name whose file was shrunk (a raft log segment cut short under its name is
/// damage). When that sync fails, when [`RELEASE_BACKLOG`] batches already wait, or when no
/// thread can be started, the files are closed at once instead (freed together, as an
/// unlink alone does).
pub fn release_in_background(dir: &Path, files: Vec<File>) {
    if files.is_empty() {
        return;
    }
    static RELEASER: OnceLock<Option<SyncSender<Batch>>> = OnceLock::new();
    let releaser = RELEASER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Batch>(RELEASE_BACKLOG);
        let started = std::thread::Builder::new().name("ward-release".into()).spawn(move || {
            for (dir, files) in rx {
                if File::open(&dir).and_then(|d| d.sync_all()).is_ok() {
                    files.into_iter().for_each(release);
                }
            }
        });
        match started {
            Ok(_) => Some(tx),
            Err(e) => {
                tracing::debug!(error = %e, "could not start the thread that frees deleted files gradually");
                None
            }
        }
    });
    if let Some(tx) = releaser {
        match tx.try_send((dir.to_path_buf(), files)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                tracing::debug!("deleted files freed at once: the release backlog is full");
            }
        }
    }
}

/// [`release`] with its step and pause given; `seen` gets the length after each step.
pub(crate) fn release_in_steps(file: File, step: u64, pause: Duration, mut seen: impl FnMut(u64)) {
    let Ok(meta) = file.metadata() else { return };
    #[cfg(unix)]
    if std::os::unix::fs::MetadataExt::nlink(&meta) != 0 {
        return;
    }
    let step = step.max(1);
    let mut len = meta.len();
    while len > 0 {
        len = len.saturating_sub(step);
        // Truncating frees the blocks past `len`; the sync commits that step on its own,
        // so its discards are not batched with the next step's.
        if file.set_len(len).and_then(|()| file.sync_all()).is_err() {
            return;
        }
        seen(len);
        if len > 0 {
            std::thread::sleep(pause);
        }
    }
}

/// Opens `path` for [`release`] and unlinks it: the name is gone when this returns, the
/// blocks stay until the returned file is released or dropped. `Ok(None)` when there is no
/// such file. When it cannot be opened for writing it is unlinked all the same, and
/// `Ok(None)` returned (its blocks are freed at once).
///
/// # Errors
/// The unlink's error; the file is left in place then.
pub fn unlink_for_release(path: &Path) -> io::Result<Option<File>> {
    let held = std::fs::OpenOptions::new().write(true).open(path).ok();
    match std::fs::remove_file(path) {
        Ok(()) => Ok(held),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)] // small numbers in tests
mod tests {
    use super::*;

    #[test]
    fn a_paced_writer_syncs_once_per_step_and_writes_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut w = PacedWriter::every(File::create(&path).unwrap(), 4096);
        let chunk: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        for _ in 0..30 {
            w.write_all(&chunk).unwrap();
        }
        // A sync once 4,096 bytes are unsynced, before the next write: before the 6th,
        // 11th, 16th, 21st and 26th writes of 1,000; the last 5,000 bytes are the caller's.
        assert_eq!(w.syncs(), 5);
        w.into_file().sync_all().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 30_000);
        assert!(bytes.chunks(1000).all(|c| c == chunk.as_slice()));
    }

    #[test]
    fn a_released_file_shrinks_step_by_step_to_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old");
        std::fs::write(&path, vec![7u8; 10_000]).unwrap();
        let held = unlink_for_release(&path).unwrap().expect("the file was there");
        assert!(!path.exists(), "the name is gone before any block is freed");
        let probe = held.try_clone().unwrap();
        let mut lengths = Vec::new();
        release_in_steps(held, 4096, Duration::ZERO, |len| lengths.push(len));
        assert_eq!(lengths, vec![5904, 1808, 0]);
        assert_eq!(probe.metadata().unwrap().len(), 0);
    }

    #[test]
    fn a_file_another_name_still_reaches_is_closed_not_shrunk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("segment");
        let backup = dir.path().join("backup");
        std::fs::write(&path, vec![7u8; 10_000]).unwrap();
        std::fs::hard_link(&path, &backup).unwrap();
        let held = unlink_for_release(&path).unwrap().expect("the file was there");
        let mut lengths = Vec::new();
        release_in_steps(held, 4096, Duration::ZERO, |len| lengths.push(len));
        assert!(lengths.is_empty(), "no step was taken: {lengths:?}");
        assert_eq!(std::fs::read(&backup).unwrap(), vec![7u8; 10_000]);
    }

    #[test]
    fn a_background_release_frees_the_file_and_leaves_a_linked_one() {
        let dir = tempfile::tempdir().unwrap();
        let (gone, linked, backup) =
            (dir.path().join("a"), dir.path().join("b"), dir.path().join("b-backup"));
        std::fs::write(&gone, vec![1u8; 9 << 20]).unwrap();
        std::fs::write(&linked, vec![2u8; 3000]).unwrap();
        std::fs::hard_link(&linked, &backup).unwrap();
        let a = unlink_for_release(&gone).unwrap().unwrap();
        let probe = a.try_clone().unwrap();
        let b = unlink_for_release(&linked).unwrap().unwrap();
        // The linked file first: once the other is freed, the thread has been through both.
        release_in_background(dir.path(), vec![b, a]);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while probe.metadata().unwrap().len() > 0 {
            assert!(std::time::Instant::now() < deadline, "the release thread freed nothing");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(std::fs::read(&backup).unwrap(), vec![2u8; 3000]);
    }

    #[test]
    fn unlinking_a_missing_file_is_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(unlink_for_release(&dir.path().join("none")).unwrap().is_none());
    }
}
