//! [`WalLogStore`]: the raft log as an append-only journal of segment files, with the held
//! entries in memory.
//!
//! Every change (entries, hard state, membership, snapshot metadata, compaction, a snapshot
//! install) is a record appended to the current segment; [`LogStore::flush`] writes what
//! is pending and `fdatasync`s it. Reopening replays the segments in order. The log stays
//! out of the state machine's database, so making the log durable is one sequential write
//! and one `fdatasync` of a small file, and the database behind the applied state is
//! flushed on its own schedule (a restart replays the log from the applied index the
//! database reached; compaction flushes the database first).
//!
//! # Files
//!
//! `<dir>/<seq>.wal`, `seq` a 16-digit hex number counting up. A segment starts with the
//! 8 bytes `WARDWAL2`, then records:
//!
//! | bytes | what |
//! |---|---|
//! | 4 | payload length `n`, u32 little-endian |
//! | 4 | CRC-32 (IEEE) of the kind byte and the payload, u32 little-endian |
//! | 1 | kind: 1 entry, 2 hard state, 3 membership, 4 snapshot metadata, 5 compaction, 6 snapshot install |
//! | `n` | payload: raft's protobuf encoding of the `Entry`, `HardState`, `ConfState` or `SnapshotMetadata`; for a compaction the index and term, u64 little-endian each |
//!
//! No record starts within the last [`MIN_ZERO_SPAN`] bytes of a 512-byte sector: where one
//! would, zeros pad the sector to its end and the record starts the next. So the sector
//! where a record starts always holds at least [`MIN_ZERO_SPAN`] of its bytes, and a torn
//! write that never reached that sector reads as one (see `torn_at`); without the padding a
//! header begun a few bytes before a sector's end, whose first sector the crash lost and
//! whose second it kept, read as damage. Segments of earlier versions (`WARDWAL1`, no
//! padding) are still read.
//!
//! Replaying an entry record drops every held entry at or after its index first (raft's
//! rule for a conflicting suffix); a compaction drops entries up to its index; an install
//! drops the whole log. Hard state, membership and snapshot metadata: the last record wins.
//!
//! A segment is created with [`SEGMENT_BYTES`] allocated (zeros until written; see
//! `allocate`), and records are written at their offsets into it; where only zeros follow
//! the last record of the newest segment, its replay ends (opening gives back the space
//! after the last record of the segment it stops appending to, so no older segment ends in
//! zeros). Once its records reach
//! [`SEGMENT_BYTES`] the next one starts with a checkpoint (hard
//! state, membership, snapshot metadata, compacted point), so a segment is deleted, oldest
//! first, once every entry it holds is compacted or a later install superseded it.
//!
//! # Crashes
//!
//! Records are written in order and acknowledged only after `fdatasync`, so a crash can
//! leave only an incomplete tail on the newest segment: replay stops at the first record
//! that runs past the end of the file or that fails its CRC with
//! a 512-byte sector it touches reading zeros from where it enters to the sector's end
//! (never written; see `torn_at`), and the file is cut at that point. A segment is made as
//! `<seq>.wal.new` and renamed once its magic and space are durable; a leftover one is
//! removed, as is a newest segment made in place (by earlier versions) whose magic never
//! reached the disk. Any other record that fails its CRC, and
//! anything short in an older segment, is damage and refuses to open. Opening syncs the
//! newest segment it read: a process killed before its last sync left records in the page
//! cache that no later sync would cover. Opening always starts a new segment
//! (with a checkpoint), so nothing is ever appended after a cut tail.

use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, SnapshotMetadata};

use crate::log_store::{LogStore, LogStoreError, MemLogStore, PendingSync, decode, encode};

/// First bytes of every segment.
const MAGIC: &[u8; 8] = b"WARDWAL2";
/// First bytes of a segment written before records were kept off sectors' last bytes.
const MAGIC_UNPADDED: &[u8; 8] = b"WARDWAL1";
/// A segment is closed and a new one started once it holds this many bytes.
pub const SEGMENT_BYTES: u64 = 16 << 20;
/// Pending records are written out (without `fdatasync`) once they reach this size.
const WRITE_BEHIND: usize = 1 << 20;
/// Largest record accepted on replay (raft's messages are far smaller).
const MAX_RECORD: u32 = 256 << 20;
/// Bytes before a record's payload.
const HEADER: usize = 9;
/// The smallest unit a disk writes whole: a crash leaves each one of a write either
/// written or as it was.
const SECTOR: usize = 512;
/// The fewest zero bytes that mark a sector as never written (see `torn_at`): a record's
/// length and CRC together are never all zeros.
const MIN_ZERO_SPAN: usize = 8;

const ENTRY: u8 = 1;
const HARD_STATE: u8 = 2;
const CONF_STATE: u8 = 3;
const SNAPSHOT: u8 = 4;
const COMPACT: u8 = 5;
const INSTALL: u8 = 6;

fn io(what: &str, path: &Path, e: &std::io::Error) -> LogStoreError {
    LogStoreError::Io(format!("{what} {}: {e}", path.display()))
}

/// One segment file and what replay needs to know to delete it.
#[derive(Debug)]
struct Segment {
    seq: u64,
    path: PathBuf,
    /// The highest entry index written into it (0: none).
    max_index: u64,
}

/// The raft log in segment files under one directory. See the module documentation.
#[derive(Debug)]
pub struct WalLogStore {
    dir: PathBuf,
    mem: MemLogStore,
    segments: Vec<Segment>,
    /// The newest segment, open for appending (shared with the syncs handed out).
    file: Arc<File>,
    /// Bytes in the newest segment, pending ones included.
    written: u64,
    /// Encoded records not yet written to `file`.
    pending: Vec<u8>,
    /// Segments before this sequence number are superseded by an install.
    superseded_before: u64,
    /// `fdatasync`s done, here and by the syncs handed out (for tests and figures).
    syncs: Arc<AtomicU64>,
}

impl WalLogStore {
    /// Opens the log in `dir` (created owner-only when missing), replaying every segment.
    ///
    /// # Errors
    /// [`LogStoreError::Io`] when the directory or a segment cannot be read or written;
    /// [`LogStoreError::Corrupt`] when a segment other than the newest is damaged.
    pub fn open(dir: &Path) -> Result<Self, LogStoreError> {
        create_private_dir(dir)?;
        let mut seqs: Vec<u64> = Vec::new();
        for item in fs::read_dir(dir).map_err(|e| io("reading", dir, &e))? {
            let item = item.map_err(|e| io("reading", dir, &e))?;
            let name = item.file_name();
            if name.to_str().is_some_and(|n| n.ends_with(NEW_SUFFIX)) {
                // A segment being made when the process stopped: it never got its name.
                let path = item.path();
                fs::remove_file(&path).map_err(|e| io("removing", &path, &e))?;
                continue;
            }
            let Some(seq) = name.to_str().and_then(parse_name) else { continue };
            seqs.push(seq);
        }
        seqs.sort_unstable();
        // Numbers are not reused, not even one of a segment removed below.
        let next = seqs.last().map_or(1, |s| s.saturating_add(1));
        if let Some(last) = seqs.last() {
            // Made in place by an earlier version, and the crash came before its first
            // bytes were durable. Removed, not kept empty: behind the segment this open
            // starts it would read as damage. The directory sync that creates that segment
            // makes the removal durable.
            let path = dir.join(segment_name(*last));
            if never_written(&path)? {
                fs::remove_file(&path).map_err(|e| io("removing", &path, &e))?;
                seqs.pop();
            }
        }
        let mut mem = MemLogStore::new();
        let mut segments = Vec::new();
        let mut superseded_before = 0;
        let mut gap = Gap::default();
        let mut newest_end = 0;
        for (i, seq) in seqs.iter().enumerate() {
            let path = dir.join(segment_name(*seq));
            let newest = i + 1 == seqs.len();
            let replayed = replay(&path, &mut mem, newest, &mut gap)?;
            if replayed.installed {
                superseded_before = *seq;
            }
            newest_end = replayed.end;
            segments.push(Segment { seq: *seq, path, max_index: replayed.max_index });
        }
        // A process killed before its last sync left records in the page cache that were
        // never made durable, and no sync of a later segment covers this file: sync it now,
        // before anything is acknowledged on the strength of what it holds. Nothing is
        // appended to it again, so the space allocated after its last record is given back
        // (a crash before that leaves zeros, which replay reads as its end).
        if let Some(last) = segments.last() {
            let path = &last.path;
            let allocated = fs::metadata(path).map_err(|e| io("reading", path, &e))?.len();
            let mut opts = OpenOptions::new();
            opts.read(true).write(allocated > newest_end);
            opts.open(path)
                .and_then(|f| {
                    if allocated > newest_end {
                        f.set_len(newest_end)?;
                    }
                    f.sync_data()
                })
                .map_err(|e| io("syncing", path, &e))?;
        }
        let path = dir.join(segment_name(next));
        if gap.upto > gap.stated {
            return Err(LogStoreError::Corrupt(format!(
                "{}: entries up to {} are missing and were never compacted",
                dir.display(),
                gap.upto
            )));
        }
        let file = new_segment(&path, dir)?;
        segments.push(Segment { seq: next, path, max_index: 0 });
        let mut wal = Self {
            dir: dir.to_path_buf(),
            mem,
            segments,
            file: Arc::new(file),
            written: MAGIC.len() as u64,
            pending: Vec::new(),
            superseded_before,
            syncs: Arc::default(),
        };
        wal.checkpoint()?;
        wal.sync()?;
        wal.delete_obsolete();
        Ok(wal)
    }

    /// `fdatasync`s done since opening.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// The segment files held, oldest first.
    pub fn segment_files(&self) -> Vec<PathBuf> {
        self.segments.iter().map(|s| s.path.clone()).collect()
    }

    fn record(&mut self, kind: u8, payload: &[u8]) -> Result<(), LogStoreError> {
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|n| *n <= MAX_RECORD)
            .ok_or_else(|| LogStoreError::Corrupt(format!("record of {} bytes", payload.len())))?;
        let pad = padding_at(self.written);
        if pad > 0 {
            self.pending.resize(self.pending.len().saturating_add(pad), 0);
            self.written = self.written.saturating_add(pad as u64);
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(&[kind]);
        crc.update(payload);
        self.pending.extend_from_slice(&len.to_le_bytes());
        self.pending.extend_from_slice(&crc.finalize().to_le_bytes());
        self.pending.push(kind);
        self.pending.extend_from_slice(payload);
        self.written = self.written.saturating_add(HEADER as u64 + payload.len() as u64);
        if self.pending.len() >= WRITE_BEHIND {
            self.write_pending()?;
        }
        Ok(())
    }

    fn write_pending(&mut self) -> Result<(), LogStoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let path = self.current_path();
        // The segment is allocated ahead (see `new_segment`): records go at their offset,
        // inside the file's size, not at its end.
        let at = self.written.saturating_sub(self.pending.len() as u64);
        std::os::unix::fs::FileExt::write_all_at(&*self.file, &self.pending, at)
            .map_err(|e| io("writing", &path, &e))?;
        self.pending.clear();
        Ok(())
    }

    fn current_path(&self) -> PathBuf {
        self.segments.last().map(|s| s.path.clone()).unwrap_or_default()
    }

    fn sync(&mut self) -> Result<(), LogStoreError> {
        self.write_pending()?;
        let path = self.current_path();
        self.file.sync_data().map_err(|e| io("syncing", &path, &e))?;
        self.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Everything a fresh segment must restate so older ones can go.
    fn checkpoint(&mut self) -> Result<(), LogStoreError> {
        let hs = encode(&self.mem.hard_state()?)?;
        self.record(HARD_STATE, &hs)?;
        let cs = encode(&self.mem.conf_state()?)?;
        self.record(CONF_STATE, &cs)?;
        let meta = encode(&self.mem.snapshot_meta()?)?;
        self.record(SNAPSHOT, &meta)?;
        let point = self.mem.first_index().saturating_sub(1);
        let term = self.mem.term(point)?;
        self.record(COMPACT, &compact_payload(point, term))
    }

    /// Closes the current segment (already synced) and starts the next one.
    fn rotate(&mut self) -> Result<(), LogStoreError> {
        let next = self.segments.last().map_or(1, |s| s.seq.saturating_add(1));
        let path = self.dir.join(segment_name(next));
        self.file = Arc::new(new_segment(&path, &self.dir)?);
        self.segments.push(Segment { seq: next, path, max_index: 0 });
        self.written = MAGIC.len() as u64;
        self.checkpoint()?;
        self.sync()?;
        self.delete_obsolete();
        Ok(())
    }

    /// Deletes segments, oldest first, that nothing on replay needs any more: each entry
    /// they hold is compacted, or an install after them superseded them. Replaying the
    /// segments kept may start with a gap; the compacted point stated by a later record
    /// covers it (see `replay`). A deletion that does not reach the disk is harmless:
    /// replaying that segment again is undone by the records after it. The files are
    /// shrunk (to free their blocks gradually) only after the directory is synced, so a
    /// crash never finds a deleted segment cut short under its name.
    fn delete_obsolete(&mut self) {
        let compacted = self.mem.first_index().saturating_sub(1);
        let newest = self.segments.len().saturating_sub(1);
        let keep_from = self.segments[..newest]
            .iter()
            .position(|s| s.seq >= self.superseded_before && s.max_index > compacted)
            .unwrap_or(newest);
        // Unlinked here, freed a few MB at a time on a thread of its own: freeing them all
        // in one journal commit held up the next `fdatasync` (see `ward_store::disk`).
        let mut held = Vec::new();
        for s in self.segments.drain(..keep_from) {
            match ward_store::disk::unlink_for_release(&s.path) {
                Ok(file) => held.extend(file),
                Err(e) => {
                    tracing::warn!(path = %s.path.display(), error = %e, "could not delete an old raft log segment");
                }
            }
        }
        ward_store::disk::release_in_background(&self.dir, held);
    }
}

impl LogStore for WalLogStore {
    fn append(&mut self, entries: &[Entry]) -> Result<(), LogStoreError> {
        self.mem.append(entries)?;
        for e in entries {
            let bytes =
                e.write_to_bytes().map_err(|err| LogStoreError::Corrupt(err.to_string()))?;
            self.record(ENTRY, &bytes)?;
        }
        if let (Some(last), Some(seg)) = (entries.last(), self.segments.last_mut()) {
            seg.max_index = seg.max_index.max(last.index);
        }
        Ok(())
    }

    fn entries(
        &self,
        lo: u64,
        hi: u64,
        max_bytes: Option<u64>,
    ) -> Result<Vec<Entry>, LogStoreError> {
        self.mem.entries(lo, hi, max_bytes)
    }

    fn term(&self, index: u64) -> Result<u64, LogStoreError> {
        self.mem.term(index)
    }

    fn first_index(&self) -> u64 {
        self.mem.first_index()
    }

    fn last_index(&self) -> u64 {
        self.mem.last_index()
    }

    fn hard_state(&self) -> Result<HardState, LogStoreError> {
        self.mem.hard_state()
    }

    fn set_hard_state(&mut self, hs: &HardState) -> Result<(), LogStoreError> {
        self.mem.set_hard_state(hs)?;
        self.record(HARD_STATE, &encode(hs)?)
    }

    fn conf_state(&self) -> Result<ConfState, LogStoreError> {
        self.mem.conf_state()
    }

    fn set_conf_state(&mut self, cs: &ConfState) -> Result<(), LogStoreError> {
        self.mem.set_conf_state(cs)?;
        self.record(CONF_STATE, &encode(cs)?)
    }

    fn compact(&mut self, upto: u64) -> Result<(), LogStoreError> {
        if upto < self.mem.first_index() {
            return Ok(());
        }
        let term = self.mem.term(upto)?;
        self.mem.compact(upto)?;
        self.record(COMPACT, &compact_payload(upto, term))
    }

    fn snapshot_meta(&self) -> Result<SnapshotMetadata, LogStoreError> {
        self.mem.snapshot_meta()
    }

    fn set_snapshot_meta(&mut self, meta: &SnapshotMetadata) -> Result<(), LogStoreError> {
        self.mem.set_snapshot_meta(meta)?;
        self.record(SNAPSHOT, &encode(meta)?)
    }

    fn install_snapshot(&mut self, meta: &SnapshotMetadata) -> Result<(), LogStoreError> {
        self.mem.install_snapshot(meta)?;
        self.record(INSTALL, &encode(meta)?)?;
        if let Some(seg) = self.segments.last_mut() {
            self.superseded_before = seg.seq;
            seg.max_index = 0;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), LogStoreError> {
        self.sync()?;
        if self.written >= SEGMENT_BYTES {
            self.rotate()?;
        } else if self.segments.first().is_some_and(|s| s.seq < self.superseded_before) {
            self.delete_obsolete();
        }
        Ok(())
    }

    /// What is pending is written to the newest segment here; its `fdatasync` is the call
    /// returned. A segment due to be closed, or older ones due to be deleted, are left to
    /// [`LogStore::flush`]: closing one must follow its sync, and a record in a new segment
    /// must never be durable while the tail of the one before it is not.
    fn begin_sync(&mut self) -> Result<Option<PendingSync>, LogStoreError> {
        let superseded = self.segments.first().is_some_and(|s| s.seq < self.superseded_before);
        if self.written >= SEGMENT_BYTES || superseded {
            return Ok(None);
        }
        self.write_pending()?;
        let (file, syncs, path) = (self.file.clone(), self.syncs.clone(), self.current_path());
        Ok(Some(Box::new(move || {
            file.sync_data().map_err(|e| io("syncing", &path, &e))?;
            syncs.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })))
    }

    fn size(&self) -> (u64, u64) {
        self.mem.size()
    }
}

fn segment_name(seq: u64) -> String {
    format!("{seq:016x}.wal")
}

fn parse_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".wal")?;
    (hex.len() == 16).then(|| u64::from_str_radix(hex, 16).ok()).flatten()
}

fn compact_payload(index: u64, term: u64) -> [u8; 16] {
    let mut p = [0u8; 16];
    p[..8].copy_from_slice(&index.to_le_bytes());
    p[8..].copy_from_slice(&term.to_le_bytes());
    p
}

fn create_private_dir(dir: &Path) -> Result<(), LogStoreError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|e| io("creating", dir, &e))
}

/// Gives a new segment its [`SEGMENT_BYTES`] of blocks and its full size up front
/// (`fallocate`, as etcd's WAL preallocates its segments), so an append changes neither the
/// file's size nor its block map and its `fdatasync` flushes the data alone: on ext4 here
/// an append past the end took three disk writes per sync and one into allocated space two
/// (`/proc/diskstats`). The space reads as zeros until written, which replay takes as the
/// end of the newest segment. Where that fails (a file system without `fallocate`, a disk
/// without 16 MiB free), whatever it allocated is given back and the segment grows as it
/// is written.
fn allocate(file: &File, path: &Path) -> Result<(), LogStoreError> {
    use rustix::fs::{FallocateFlags, fallocate};
    if let Err(e) = fallocate(file, FallocateFlags::empty(), 0, SEGMENT_BYTES) {
        if e != rustix::io::Errno::OPNOTSUPP {
            tracing::warn!(path = %path.display(), error = %e, "could not allocate a raft log segment ahead; it grows as it is written");
        }
        file.set_len(MAGIC.len() as u64).map_err(|e| io("cutting", path, &e))?;
    }
    Ok(())
}

/// Suffix of a segment being made (see [`new_segment`]).
const NEW_SUFFIX: &str = ".wal.new";

/// Creates a segment with its magic and its allocated space, durable before it gets its
/// name: it is made as `<seq>.wal.new` and renamed (etcd's WAL does the same), so a crash
/// never leaves a segment whose size reached the disk and whose magic did not (ext4 can
/// commit a `fallocate` before the data written just before it).
fn new_segment(path: &Path, dir: &Path) -> Result<File, LogStoreError> {
    let new = path.with_extension(NEW_SUFFIX.trim_start_matches('.'));
    let mut opts = OpenOptions::new();
    opts.create(true).truncate(true).write(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut file = opts.open(&new).map_err(|e| io("creating", &new, &e))?;
    file.write_all(MAGIC).map_err(|e| io("writing", &new, &e))?;
    allocate(&file, &new)?;
    file.sync_all().map_err(|e| io("syncing", &new, &e))?;
    fs::rename(&new, path).map_err(|e| io("naming", path, &e))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io("syncing", dir, &e))?;
    Ok(file)
}

/// Whether the segment at `path` is one made in place (as earlier versions did) whose magic
/// never reached the disk: a prefix of the magic, then nothing or only zeros (its size
/// did). A record is synced only after the magic, so such a file holds nothing promised.
fn never_written(path: &Path) -> Result<bool, LogStoreError> {
    let mut file = File::open(path).map_err(|e| io("reading", path, &e))?;
    let mut head = Vec::new();
    (&mut file)
        .take(MAGIC.len() as u64)
        .read_to_end(&mut head)
        .map_err(|e| io("reading", path, &e))?;
    let written = head.iter().zip(MAGIC).take_while(|(a, b)| a == b).count();
    if written == MAGIC.len() || head.iter().skip(written).any(|b| *b != 0) {
        return Ok(false);
    }
    let mut rest = Vec::new();
    file.read_to_end(&mut rest).map_err(|e| io("reading", path, &e))?;
    Ok(rest.iter().all(|b| *b == 0))
}

struct Replayed {
    max_index: u64,
    installed: bool,
    /// Where its last record ends (in the newest segment, the allocated space after it
    /// reads zeros).
    end: u64,
}

/// What replay learns about entries missing before the first one held: the highest index
/// missing, and the compacted point the records state (a gap the records do not cover is a
/// segment lost, not one deleted after compaction).
#[derive(Default)]
struct Gap {
    upto: u64,
    stated: u64,
}

/// Replays one segment into `mem`. In the newest segment an incomplete or damaged tail is
/// cut off; anywhere else it is corruption.
fn replay(
    path: &Path,
    mem: &mut MemLogStore,
    newest: bool,
    gap: &mut Gap,
) -> Result<Replayed, LogStoreError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| io("reading", path, &e))?;
    let mut out = Replayed { max_index: 0, installed: false, end: 0 };
    let damaged = |at: usize, why: &str| -> Result<Replayed, LogStoreError> {
        Err(LogStoreError::Corrupt(format!("{} at byte {at}: {why}", path.display())))
    };
    let padded = match bytes.get(..MAGIC.len()) {
        Some(m) if m == &MAGIC[..] => true,
        Some(m) if m == &MAGIC_UNPADDED[..] => false,
        _ => return damaged(0, "not a raft log segment"),
    };
    let mut at = MAGIC.len();
    while at < bytes.len() {
        if padded {
            at = past_padding(&bytes, at);
            if at >= bytes.len() {
                break;
            }
        }
        let Some((kind, payload, next)) = next_record(&bytes, at) else {
            out.end = at as u64;
            if newest && bytes.get(at..).unwrap_or_default().iter().all(|b| *b == 0) {
                // The allocated space no record reached yet (see `allocate`). Only the
                // newest segment has any: a full one is closed, and opening gives back the
                // rest of the one it stops appending to before it starts the next.
                return Ok(out);
            }
            if newest && torn_at(&bytes, at) {
                tracing::warn!(path = %path.display(), at, "cutting an incomplete record off the raft log's tail");
                cut(path, at)?;
                return Ok(out);
            }
            return damaged(at, "short or damaged record");
        };
        match kind {
            ENTRY => {
                let e: Entry = decode(payload, "entry")?;
                if e.index > mem.last_index().saturating_add(1) {
                    // The segments before were deleted once compacted: a later record
                    // states the compacted point (checked once every segment is replayed).
                    gap.upto = gap.upto.max(e.index.saturating_sub(1));
                    mem.set_compacted(e.index.saturating_sub(1), 0);
                }
                if e.index >= mem.first_index() {
                    out.max_index = out.max_index.max(e.index);
                    mem.append(std::slice::from_ref(&e))?;
                }
            }
            HARD_STATE => mem.set_hard_state(&decode(payload, "hard state")?)?,
            CONF_STATE => mem.set_conf_state(&decode(payload, "membership")?)?,
            SNAPSHOT => mem.set_snapshot_meta(&decode(payload, "snapshot metadata")?)?,
            COMPACT => {
                let (Some(index), Some(term)) = (le_u64(payload, 0), le_u64(payload, 8)) else {
                    return damaged(at, "short compaction record");
                };
                mem.set_compacted(index, term);
                gap.stated = gap.stated.max(index);
            }
            INSTALL => {
                let meta: SnapshotMetadata = decode(payload, "snapshot metadata")?;
                // Everything before is dropped, missing or not.
                *gap = Gap { upto: 0, stated: meta.index };
                mem.install_snapshot(&meta)?;
                out.installed = true;
                out.max_index = 0;
            }
            other => return damaged(at, &format!("unknown record kind {other}")),
        }
        at = next;
    }
    out.end = at as u64;
    Ok(out)
}

/// Zero bytes written before a record that would start at `offset`: to the sector's end
/// when fewer than [`MIN_ZERO_SPAN`] bytes are left in it, else none.
fn padding_at(offset: u64) -> usize {
    let left = SECTOR.saturating_sub((offset % SECTOR as u64) as usize);
    if left < MIN_ZERO_SPAN { left } else { 0 }
}

/// Where the next record of a padded segment starts, looking from `at`: past the padding
/// when `at` is within a sector's last bytes and they read zeros, else `at` (anything else
/// there is no record and replay says so).
fn past_padding(bytes: &[u8], at: usize) -> usize {
    let pad = padding_at(at as u64);
    let end = at.saturating_add(pad).min(bytes.len());
    if pad > 0 && bytes.get(at..end).is_some_and(|b| b.iter().all(|x| *x == 0)) { end } else { at }
}

/// Whether the record that does not read at `at` is a write cut short by a crash rather
/// than damage:
/// - its header or payload runs past the end of the file, or everything from it on is
///   zeros (space the file system extended but never wrote);
/// - or a sector its stated extent touches reads zeros from where the record enters it
///   to the sector's end (or the file's): a sector the crash left unwritten while later
///   ones of the same write, and the file's new size, reached the disk. This is the rule
///   of etcd's WAL decoder (`isTornEntry` in `server/storage/wal/decoder.go`), except that
///   a zero span shorter than [`MIN_ZERO_SPAN`] bytes does not count: ward's records are
///   not aligned, so a record can enter a sector a few bytes before its end, and a few
///   zero bytes there (a length's high bytes) are no sign of anything. Records after it in
///   the file may read; they were written after the last `fdatasync` too, so none was
///   acknowledged.
///
/// Any other record that fails its CRC (a flipped bit, stale bytes) is damage: cutting
/// there could drop records that were synced and acknowledged.
fn torn_at(bytes: &[u8], at: usize) -> bool {
    let rest = bytes.get(at..).unwrap_or_default();
    let stated = rest
        .get(..4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_le_bytes)
        .and_then(|len| usize::try_from(len).ok())
        .map(|len| len.saturating_add(HEADER));
    let runs_past_end = rest.len() < HEADER || stated.is_some_and(|n| n > rest.len());
    if runs_past_end || rest.iter().all(|b| *b == 0) {
        return true;
    }
    let end = at.saturating_add(stated.unwrap_or(HEADER));
    let mut from = at;
    while from < end {
        let sector_end = from.saturating_add(SECTOR.saturating_sub(from % SECTOR));
        let span = bytes.get(from..sector_end.min(bytes.len())).unwrap_or_default();
        if span.len() >= MIN_ZERO_SPAN && span.iter().all(|b| *b == 0) {
            return true;
        }
        from = sector_end;
    }
    false
}

/// The record at `at`: kind, payload and where the next starts; `None` when it is short or
/// fails its CRC.
fn next_record(bytes: &[u8], at: usize) -> Option<(u8, &[u8], usize)> {
    let head = bytes.get(at..at.checked_add(HEADER)?)?;
    let len = u32::from_le_bytes(head.get(..4)?.try_into().ok()?);
    if len > MAX_RECORD {
        return None;
    }
    let crc = u32::from_le_bytes(head.get(4..8)?.try_into().ok()?);
    let kind = *head.get(8)?;
    let start = at.checked_add(HEADER)?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    let payload = bytes.get(start..end)?;
    let mut h = crc32fast::Hasher::new();
    h.update(&[kind]);
    h.update(payload);
    (h.finalize() == crc).then_some((kind, payload, end))
}

fn le_u64(bytes: &[u8], at: usize) -> Option<u64> {
    bytes.get(at..at.checked_add(8)?)?.try_into().ok().map(u64::from_le_bytes)
}

fn cut(path: &Path, len: usize) -> Result<(), LogStoreError> {
    let f = OpenOptions::new().write(true).open(path).map_err(|e| io("opening", path, &e))?;
    f.set_len(len as u64).map_err(|e| io("cutting", path, &e))?;
    f.sync_all().map_err(|e| io("syncing", path, &e))
}

/// Opens the raft log of a replica whose state machine is `store`: the journal in `dir`.
/// A log kept by an earlier version in the store's own database ([`crate::SledLogStore`])
/// is moved into the journal the first time (entries, compacted point, hard state,
/// membership, snapshot metadata), then removed from the database; a leftover of a move
/// cut short by a crash is removed too.
///
/// # Errors
/// As [`WalLogStore::open`], and [`LogStoreError::Store`] when the database's log cannot
/// be read or removed.
pub fn open_log(dir: &Path, store: &ward_store::Store) -> Result<WalLogStore, LogStoreError> {
    let mut wal = WalLogStore::open(dir)?;
    let old = crate::SledLogStore::open(store)?;
    let old_hs = old.hard_state()?;
    let old_cs = old.conf_state()?;
    let old_empty =
        old.last_index() == 0 && old_hs == HardState::default() && old_cs == ConfState::default();
    if old_empty {
        return Ok(wal);
    }
    let wal_empty = wal.last_index() == 0
        && wal.hard_state()? == HardState::default()
        && wal.conf_state()? == ConfState::default();
    if wal_empty {
        let point = old.first_index().saturating_sub(1);
        let mut base =
            SnapshotMetadata { index: point, term: old.term(point)?, ..Default::default() };
        base.set_conf_state(old_cs.clone());
        wal.install_snapshot(&base)?;
        let held = old.entries(old.first_index(), old.last_index().saturating_add(1), None)?;
        wal.append(&held)?;
        wal.set_snapshot_meta(&old.snapshot_meta()?)?;
        wal.set_conf_state(&old_cs)?;
        wal.set_hard_state(&old_hs)?;
        wal.flush()?;
        tracing::info!(
            first_index = wal.first_index(),
            last_index = wal.last_index(),
            "moved the raft log out of the store's database into its own files"
        );
    }
    store.raft_log()?.clear()?;
    store.flush()?;
    Ok(wal)
}

#[cfg(test)]
mod tests;
