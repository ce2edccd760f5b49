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
//! 8 bytes `WARDWAL1`, then records:
//!
//! | bytes | what |
//! |---|---|
//! | 4 | payload length `n`, u32 little-endian |
//! | 4 | CRC-32 (IEEE) of the kind byte and the payload, u32 little-endian |
//! | 1 | kind: 1 entry, 2 hard state, 3 membership, 4 snapshot metadata, 5 compaction, 6 snapshot install |
//! | `n` | payload: raft's protobuf encoding of the `Entry`, `HardState`, `ConfState` or `SnapshotMetadata`; for a compaction the index and term, u64 little-endian each |
//!
//! Replaying an entry record drops every held entry at or after its index first (raft's
//! rule for a conflicting suffix); a compaction drops entries up to its index; an install
//! drops the whole log. Hard state, membership and snapshot metadata: the last record wins.
//!
//! A segment grows to [`SEGMENT_BYTES`]; the next one starts with a checkpoint (hard
//! state, membership, snapshot metadata, compacted point), so a segment is deleted, oldest
//! first, once every entry it holds is compacted or a later install superseded it.
//!
//! # Crashes
//!
//! Records are written in order and acknowledged only after `fdatasync`, so a crash can
//! leave only an incomplete tail on the newest segment: replay stops at the first record
//! that runs past the end of the file, where only zeros follow, or that fails its CRC with
//! a 512-byte sector it touches reading zeros from where it enters to the sector's end
//! (never written; see `torn_at`), and the file is cut at that point; a newest segment
//! whose magic never reached the disk is removed. Any other record that fails its CRC, and
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
const MAGIC: &[u8; 8] = b"WARDWAL1";
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
            let Some(seq) = name.to_str().and_then(parse_name) else { continue };
            seqs.push(seq);
        }
        seqs.sort_unstable();
        let mut mem = MemLogStore::new();
        let mut segments = Vec::new();
        let mut superseded_before = 0;
        let mut gap = Gap::default();
        for (i, seq) in seqs.iter().enumerate() {
            let path = dir.join(segment_name(*seq));
            let newest = i + 1 == seqs.len();
            let replayed = replay(&path, &mut mem, newest, &mut gap)?;
            if replayed.installed {
                superseded_before = *seq;
            }
            if !replayed.removed {
                segments.push(Segment { seq: *seq, path, max_index: replayed.max_index });
            }
        }
        // A process killed before its last sync left records in the page cache that were
        // never made durable, and no sync of a later segment covers this file: sync it now,
        // before anything is acknowledged on the strength of what it holds.
        if let Some(last) = segments.last() {
            File::open(&last.path)
                .and_then(|f| f.sync_data())
                .map_err(|e| io("syncing", &last.path, &e))?;
        }
        let next = seqs.last().map_or(1, |s| s.saturating_add(1));
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
        (&*self.file).write_all(&self.pending).map_err(|e| io("writing", &path, &e))?;
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

/// Creates a segment with its magic, durable together with its directory entry.
fn new_segment(path: &Path, dir: &Path) -> Result<File, LogStoreError> {
    let mut opts = OpenOptions::new();
    opts.create_new(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut file = opts.open(path).map_err(|e| io("creating", path, &e))?;
    file.write_all(MAGIC).map_err(|e| io("writing", path, &e))?;
    file.sync_all().map_err(|e| io("syncing", path, &e))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io("syncing", dir, &e))?;
    Ok(file)
}

struct Replayed {
    max_index: u64,
    installed: bool,
    /// The segment was created but not even its magic reached the disk: it was removed.
    removed: bool,
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
    let mut out = Replayed { max_index: 0, installed: false, removed: false };
    let damaged = |at: usize, why: &str| -> Result<Replayed, LogStoreError> {
        Err(LogStoreError::Corrupt(format!("{} at byte {at}: {why}", path.display())))
    };
    if bytes.get(..MAGIC.len()) != Some(&MAGIC[..]) {
        if newest && bytes.len() < MAGIC.len() && MAGIC.starts_with(&bytes) {
            // Created, but the crash came before its first bytes were durable. Removed, not
            // kept empty: behind the segment this open starts it would read as damage.
            // The directory sync that creates that segment makes the removal durable.
            fs::remove_file(path).map_err(|e| io("removing", path, &e))?;
            out.removed = true;
            return Ok(out);
        }
        return damaged(0, "not a raft log segment");
    }
    let mut at = MAGIC.len();
    while at < bytes.len() {
        let Some((kind, payload, next)) = next_record(&bytes, at) else {
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
    Ok(out)
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
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, size: usize) -> Entry {
        Entry { index, term, data: vec![7u8; size].into(), ..Default::default() }
    }

    fn newest(dir: &Path) -> PathBuf {
        let mut files: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "wal"))
            .collect();
        files.sort();
        files.pop().unwrap()
    }

    #[test]
    fn what_was_not_flushed_is_not_promised_and_what_was_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = WalLogStore::open(dir.path()).unwrap();
        log.append(&(1..=3).map(|i| entry(i, 1, 10)).collect::<Vec<_>>()).unwrap();
        log.set_hard_state(&HardState { term: 1, vote: 1, commit: 2, ..Default::default() })
            .unwrap();
        log.flush().unwrap();
        // Appended but never flushed, as after a kill -9 between a ready's write and its
        // flush: a record still in memory is gone, the flushed ones stay.
        log.append(&[entry(4, 1, 10)]).unwrap();
        std::mem::forget(log);
        let again = WalLogStore::open(dir.path()).unwrap();
        assert_eq!(again.last_index(), 3);
        assert_eq!(again.hard_state().unwrap().commit, 2);
    }

    #[test]
    fn a_sync_run_on_another_thread_keeps_what_was_written_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = WalLogStore::open(dir.path()).unwrap();
        let syncs = log.syncs();
        log.append(&(1..=3).map(|i| entry(i, 1, 10)).collect::<Vec<_>>()).unwrap();
        let sync = log.begin_sync().unwrap().expect("a sync to run elsewhere");
        // Written after the sync was asked for: not promised by it.
        log.append(&[entry(4, 1, 10)]).unwrap();
        std::thread::spawn(sync).join().unwrap().unwrap();
        assert_eq!(log.syncs(), syncs + 1);
        std::mem::forget(log);
        let again = WalLogStore::open(dir.path()).unwrap();
        assert_eq!(again.last_index(), 3);
    }

    #[test]
    fn a_segment_due_to_close_is_synced_where_it_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = WalLogStore::open(dir.path()).unwrap();
        let size = 1 << 20;
        let mut index = 0;
        while log.written < SEGMENT_BYTES {
            index += 1;
            log.append(&[entry(index, 1, size)]).unwrap();
        }
        // The segment must be closed after its sync and before anything follows it.
        assert!(log.begin_sync().unwrap().is_none());
        log.flush().unwrap();
        assert_eq!(log.segment_files().len(), 2);
        log.append(&[entry(index + 1, 1, 10)]).unwrap();
        let sync = log.begin_sync().unwrap().expect("a fresh segment syncs elsewhere");
        std::thread::spawn(sync).join().unwrap().unwrap();
        std::mem::forget(log);
        assert_eq!(WalLogStore::open(dir.path()).unwrap().last_index(), index + 1);
    }

    #[test]
    fn a_torn_tail_is_cut_and_the_log_goes_on_from_before_it() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = WalLogStore::open(dir.path()).unwrap();
            log.append(&(1..=5).map(|i| entry(i, 2, 50)).collect::<Vec<_>>()).unwrap();
            log.flush().unwrap();
        }
        // The last record half on disk: its length promises more than the file holds.
        let path = newest(dir.path());
        let len = fs::metadata(&path).unwrap().len();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 20).unwrap();
        drop(f);
        let mut log = WalLogStore::open(dir.path()).unwrap();
        assert_eq!(log.last_index(), 4);
        log.append(&[entry(5, 3, 50), entry(6, 3, 50)]).unwrap();
        log.flush().unwrap();
        let log = WalLogStore::open(dir.path()).unwrap();
        assert_eq!((log.last_index(), log.term(5)), (6, Ok(3)));
    }

    #[test]
    fn a_flipped_byte_in_the_newest_segment_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = WalLogStore::open(dir.path()).unwrap();
            log.append(&(1..=5).map(|i| entry(i, 2, 50)).collect::<Vec<_>>()).unwrap();
            log.flush().unwrap();
        }
        let path = newest(dir.path());
        let clean = fs::read(&path).unwrap();
        // In the last record, and in one with synced records after it: both are damage a
        // crash cannot make, and cutting there would drop acknowledged entries.
        for at in [clean.len() - 10, MAGIC.len() + HEADER + 30] {
            let mut bytes = clean.clone();
            bytes[at] ^= 0xff;
            fs::write(&path, &bytes).unwrap();
            let err = WalLogStore::open(dir.path()).unwrap_err();
            assert!(matches!(err, LogStoreError::Corrupt(ref m) if m.contains("damaged")), "{err}");
            assert_eq!(fs::read(&path).unwrap(), bytes, "nothing was cut");
        }
        // Zeros from a record on (space extended, never written) are a torn tail.
        let mut bytes = clean.clone();
        let mut last = MAGIC.len();
        while let Some((_, _, next)) = next_record(&clean, last).filter(|r| r.2 < clean.len()) {
            last = next;
        }
        bytes[last..].fill(0);
        fs::write(&path, &bytes).unwrap();
        let records_before = WalLogStore::open(dir.path()).unwrap().last_index();
        assert!(records_before < 5, "the zeroed record is dropped: {records_before}");
    }

    /// Offsets of the records in `bytes`, in order.
    fn record_offsets(bytes: &[u8]) -> Vec<usize> {
        let mut at = MAGIC.len();
        let mut offsets = Vec::new();
        while let Some((_, _, next)) = next_record(bytes, at) {
            offsets.push(at);
            at = next;
        }
        offsets
    }

    /// Zeros one whole sector inside the payload of the record at `at`.
    fn unwrite_a_sector_of(bytes: &mut [u8], at: usize) {
        let start = (at + HEADER).next_multiple_of(SECTOR);
        assert!(next_record(bytes, at).is_some_and(|(_, _, end)| start + SECTOR <= end));
        bytes[start..start + SECTOR].fill(0);
    }

    #[test]
    fn a_record_with_an_unwritten_sector_is_a_torn_tail_even_with_records_after_it() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = WalLogStore::open(dir.path()).unwrap();
            log.append(&(1..=5).map(|i| entry(i, 2, 50)).collect::<Vec<_>>()).unwrap();
            log.flush().unwrap();
            // One write of several sectors after the last sync: the crash wrote the later
            // sectors and the size, not one in the middle.
            log.append(&(6..=10).map(|i| entry(i, 2, 1500)).collect::<Vec<_>>()).unwrap();
            log.flush().unwrap();
        }
        let path = newest(dir.path());
        let mut bytes = fs::read(&path).unwrap();
        let offsets = record_offsets(&bytes);
        // The last five records are entries 6..=10, one each.
        let seventh = offsets[offsets.len() - 4];
        unwrite_a_sector_of(&mut bytes, seventh);
        assert!(next_record(&bytes, offsets[offsets.len() - 1]).is_some(), "later ones read");
        fs::write(&path, &bytes).unwrap();
        let log = WalLogStore::open(dir.path()).unwrap();
        assert_eq!(log.last_index(), 6, "cut at entry 7");
        assert_eq!(fs::metadata(&path).unwrap().len(), seventh as u64);
        drop(log);
        // The same in a segment that is not the newest is damage.
        let mut older = fs::read(&path).unwrap();
        let offsets = record_offsets(&older);
        let sixth = offsets[offsets.len() - 1];
        unwrite_a_sector_of(&mut older, sixth);
        fs::write(&path, &older).unwrap();
        let err = WalLogStore::open(dir.path()).unwrap_err();
        assert!(matches!(err, LogStoreError::Corrupt(ref m) if m.contains("damaged")), "{err}");
    }

    /// A flipped bit in the payload of any synced record of the newest segment refuses to
    /// open, wherever the record falls against the sectors, though some payloads hold a
    /// few zero bytes (a compaction's index and term) where they enter or leave a sector.
    #[test]
    fn a_flipped_payload_bit_in_any_record_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = WalLogStore::open(dir.path()).unwrap();
            for i in 1..=60u64 {
                log.append(&[entry(i, 2, 20 + (i as usize * 37) % 150)]).unwrap();
                if i % 7 == 0 {
                    log.compact(i - 3).unwrap();
                    let hs = HardState { term: 2, vote: 1, commit: i, ..Default::default() };
                    log.set_hard_state(&hs).unwrap();
                }
            }
            log.compact(57).unwrap();
            log.flush().unwrap();
        }
        let path = newest(dir.path());
        let clean = fs::read(&path).unwrap();
        let offsets = record_offsets(&clean);
        assert!(offsets.len() > 60, "{} records", offsets.len());
        for &at in &offsets {
            let (_, _, end) = next_record(&clean, at).unwrap();
            for flip in [at + HEADER, end - 1] {
                let mut bytes = clean.clone();
                bytes[flip] ^= 0x01;
                fs::write(&path, &bytes).unwrap();
                let err = WalLogStore::open(dir.path()).map(|_| ()).unwrap_err();
                assert!(
                    matches!(err, LogStoreError::Corrupt(ref m) if m.contains("damaged")),
                    "record at {at}, byte {flip}: {err}"
                );
                assert_eq!(fs::read(&path).unwrap(), bytes, "nothing was cut");
            }
        }
    }

    /// One record's bytes: header, then `payload`.
    fn record_bytes(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut crc = crc32fast::Hasher::new();
        crc.update(&[kind]);
        crc.update(payload);
        let mut out = (payload.len() as u32).to_le_bytes().to_vec();
        out.extend_from_slice(&crc.finalize().to_le_bytes());
        out.push(kind);
        out.extend_from_slice(payload);
        out
    }

    /// A segment's bytes: the magic, a filler entry record that puts the next record at
    /// `target_at`, then `records`.
    fn laid_out(target_at: usize, records: &[Vec<u8>]) -> Vec<u8> {
        let mut bytes = MAGIC.to_vec();
        let filler = target_at - MAGIC.len() - HEADER;
        bytes.extend(record_bytes(ENTRY, &vec![7u8; filler]));
        assert_eq!(bytes.len(), target_at);
        for r in records {
            bytes.extend_from_slice(r);
        }
        bytes
    }

    /// A damaged record that enters or leaves a sector with a few zero bytes (a length's
    /// high byte, a compaction's term) is damage, not a torn tail; eight zeros from where
    /// it enters a sector to that sector's end are a torn tail.
    #[test]
    fn a_few_zero_bytes_at_a_sector_edge_are_no_torn_write() {
        let compaction = [1u8, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0];
        let after = record_bytes(ENTRY, &[9u8; 40]);
        let flipped = |mut bytes: Vec<u8>, at: usize| {
            bytes[at + HEADER] ^= 0x01;
            bytes
        };
        // Length 256 entering the sector at its last byte: that byte (the length's low
        // byte) is zero.
        let long = record_bytes(ENTRY, &[7u8; 256]);
        let bytes = flipped(laid_out(511, &[long.clone(), after.clone()]), 511);
        assert!(next_record(&bytes, 511).is_none());
        assert!(!torn_at(&bytes, 511), "a length's zero byte");
        // A compaction whose last five bytes (its term's high bytes) open a sector, with a
        // record after it and with none.
        let compact = record_bytes(COMPACT, &compaction);
        let at = 512 - (compact.len() - 5);
        let bytes = flipped(laid_out(at, &[compact.clone(), after.clone()]), at);
        assert!(!torn_at(&bytes, at), "a record follows in that sector");
        let bytes = flipped(laid_out(at, &[compact]), at);
        assert!(!torn_at(&bytes, at), "five zeros up to the end of the file");
        // The length and CRC of a record entering a sector at its last eight bytes, never
        // written, with its payload written in the next sector: torn.
        let mut bytes = laid_out(504, &[long, after]);
        bytes[504..512].fill(0);
        assert!(torn_at(&bytes, 504), "an unwritten header");
    }

    /// A segment created just before a crash, whose magic never reached the disk, is
    /// removed: it does not stay behind the next segment, where it would read as damage.
    #[test]
    fn a_segment_whose_magic_never_reached_the_disk_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = WalLogStore::open(dir.path()).unwrap();
            log.append(&[entry(1, 2, 50), entry(2, 2, 50)]).unwrap();
            log.flush().unwrap();
        }
        let path = newest(dir.path());
        let seq = parse_name(path.file_name().unwrap().to_str().unwrap()).unwrap();
        let unwritten = dir.path().join(segment_name(seq + 1));
        fs::write(&unwritten, &MAGIC[..3]).unwrap();
        assert_eq!(WalLogStore::open(dir.path()).unwrap().last_index(), 2);
        assert!(!unwritten.exists());
        assert_eq!(WalLogStore::open(dir.path()).unwrap().last_index(), 2, "opens again");
    }

    /// Records with a valid CRC and indexes no raft log reaches (a compaction or an entry
    /// at `u64::MAX`) open or refuse with an error, never a panic.
    #[test]
    fn indexes_at_the_end_of_the_range_do_not_panic_replay() {
        let mut max = u64::MAX.to_le_bytes().to_vec();
        max.extend_from_slice(&1u64.to_le_bytes());
        let huge = entry(u64::MAX, 1, 10).write_to_bytes().unwrap();
        for records in [
            vec![record_bytes(COMPACT, &max)],
            vec![record_bytes(ENTRY, &huge)],
            vec![record_bytes(COMPACT, &max), record_bytes(ENTRY, &huge)],
        ] {
            let dir = tempfile::tempdir().unwrap();
            let mut bytes = MAGIC.to_vec();
            records.iter().for_each(|r| bytes.extend_from_slice(r));
            fs::write(dir.path().join(segment_name(1)), &bytes).unwrap();
            let _ = WalLogStore::open(dir.path()).map(|log| log.last_index());
        }
    }

    #[test]
    fn damage_in_an_older_segment_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = WalLogStore::open(dir.path()).unwrap();
            log.append(&(1..=5).map(|i| entry(i, 2, 50)).collect::<Vec<_>>()).unwrap();
            log.flush().unwrap();
        }
        // Opening starts a new segment, so the one holding the entries is an older one now.
        drop(WalLogStore::open(dir.path()).unwrap());
        let mut files: Vec<PathBuf> =
            fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        let older = files.iter().find(|p| fs::metadata(p).unwrap().len() > 300).unwrap().clone();
        let mut bytes = fs::read(&older).unwrap();
        let at = bytes.len() - 10;
        bytes[at] ^= 0xff;
        fs::write(&older, &bytes).unwrap();
        let err = WalLogStore::open(dir.path()).unwrap_err();
        assert!(matches!(err, LogStoreError::Corrupt(ref m) if m.contains("damaged")), "{err}");
    }

    #[test]
    fn segments_rotate_and_compaction_deletes_the_old_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = WalLogStore::open(dir.path()).unwrap();
        // 64 KiB entries: a segment holds about 256 of them.
        let size = 64 << 10;
        let per = SEGMENT_BYTES / size as u64;
        let total = per * 3 + 10;
        for i in 1..=total {
            log.append(&[entry(i, 1, size)]).unwrap();
            log.flush().unwrap();
        }
        assert!(log.segment_files().len() >= 4, "{:?}", log.segment_files());
        log.compact(total - 5).unwrap();
        log.flush().unwrap();
        // Rotation is what deletes: fill the current segment once more.
        for i in total + 1..=total + per {
            log.append(&[entry(i, 1, size)]).unwrap();
            log.flush().unwrap();
        }
        let held = log.segment_files();
        assert!(held.len() <= 3, "{held:?}");
        let on_disk = fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(on_disk, held.len());
        let again = WalLogStore::open(dir.path()).unwrap();
        assert_eq!((again.first_index(), again.last_index()), (total - 4, total + per));
        assert_eq!(again.entries(total - 4, total + per + 1, None).unwrap().len() as u64, per + 5);
    }

    #[test]
    fn a_missing_segment_whose_entries_were_never_compacted_refuses_to_open() {
        // Segments holding entries 1.. with nothing compacted: each one is still needed.
        let fill = |dir: &Path| -> Vec<PathBuf> {
            let mut log = WalLogStore::open(dir).unwrap();
            let size = 64 << 10;
            let total = SEGMENT_BYTES / size as u64 * 3;
            for i in 1..=total {
                log.append(&[entry(i, 1, size)]).unwrap();
                log.flush().unwrap();
            }
            log.segment_files()
        };
        for (what, pick) in [("the oldest", 0), ("a middle", 1)] {
            let dir = tempfile::tempdir().unwrap();
            let files = fill(dir.path());
            assert!(files.len() >= 4, "{files:?}");
            fs::remove_file(&files[pick]).unwrap();
            let err = WalLogStore::open(dir.path())
                .map(|log| (log.first_index(), log.last_index()))
                .expect_err(&format!("opened without {what} segment"));
            assert!(
                matches!(err, LogStoreError::Corrupt(ref m) if m.contains("never compacted")),
                "{what}: {err}"
            );
        }
    }

    #[test]
    fn an_install_supersedes_every_older_segment() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = WalLogStore::open(dir.path()).unwrap();
            log.append(&(1..=50).map(|i| entry(i, 1, 100)).collect::<Vec<_>>()).unwrap();
            log.flush().unwrap();
        }
        let mut log = WalLogStore::open(dir.path()).unwrap();
        let meta = SnapshotMetadata { index: 20, term: 4, ..Default::default() };
        log.install_snapshot(&meta).unwrap();
        log.flush().unwrap();
        assert_eq!(log.segment_files().len(), 1, "{:?}", log.segment_files());
        log.append(&[entry(21, 4, 10)]).unwrap();
        log.flush().unwrap();
        let again = WalLogStore::open(dir.path()).unwrap();
        assert_eq!((again.first_index(), again.last_index()), (21, 21));
        assert_eq!(again.term(20), Ok(4));
        assert_eq!(again.snapshot_meta().unwrap(), meta);
    }

    #[test]
    fn a_log_in_the_store_database_moves_into_the_journal_once() {
        let td = ward_core::TrustDomain::new("example.org").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store =
            ward_store::Store::open(dir.path().join("store"), ward_store::StoreConfig::new(td))
                .unwrap();
        let hs = HardState { term: 3, vote: 1, commit: 6, ..Default::default() };
        let cs = ConfState { voters: vec![1, 2, 3], ..Default::default() };
        {
            let mut old = crate::SledLogStore::open(&store).unwrap();
            old.append(&(1..=8).map(|i| entry(i, 3, 20)).collect::<Vec<_>>()).unwrap();
            old.compact(2).unwrap();
            old.set_hard_state(&hs).unwrap();
            old.set_conf_state(&cs).unwrap();
            old.flush().unwrap();
        }
        let wal_dir = dir.path().join("raft-log");
        let log = open_log(&wal_dir, &store).unwrap();
        assert_eq!((log.first_index(), log.last_index()), (3, 8));
        assert_eq!((log.term(2), log.term(8)), (Ok(3), Ok(3)));
        assert_eq!(
            (log.hard_state().unwrap(), log.conf_state().unwrap()),
            (hs.clone(), cs.clone())
        );
        drop(log);
        // The database's copy is gone: opening again takes the journal as it is.
        let old = crate::SledLogStore::open(&store).unwrap();
        assert_eq!((old.last_index(), old.hard_state().unwrap()), (0, HardState::default()));
        let log = open_log(&wal_dir, &store).unwrap();
        assert_eq!((log.first_index(), log.last_index(), log.hard_state().unwrap()), (3, 8, hs));
    }
}
