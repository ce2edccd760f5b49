//! Snapshot export and import: the whole state as a stream of checksummed chunks.
//!
//! A snapshot is the live generation tree's records (keys and versioned values as stored),
//! grouped by kind in key-prefix order, framed as `u32 key length, key, u32 value length, value` (lengths
//! little-endian) and cut into chunks. Each chunk carries a CRC-32 over its sequence number,
//! its `last` flag and its payload. The last chunk's payload is a trailer (see
//! [`SnapshotInfo`]): a layout byte (2), then applied index, applied term, revision and record
//! count (u64 LE each), the trust domain (u32 LE length, name), the membership (one byte 0 or
//! 1, then when 1 a u32 LE length and the bytes) and a CRC-32 (LE) over all data payloads in
//! order.
//!
//! Export is a stream ([`SnapshotExport`]): a consistent cut of the records (handles on the
//! in-memory image plus the raw change-feed runs) is taken under the state read lock, then chunks are serialized lazily as the consumer pulls them,
//! so writers wait only for the cut and at most one chunk's payload is held as bytes.
//!
//! Import writes into the other generation tree, verifies everything, flushes, builds the
//! new in-memory image, and only then flips the live generation, so a crash or a bad chunk
//! leaves the old state intact. All of that runs without the state lock: readers and writers
//! keep being served during the transfer and the rebuild, and wait only for the swap.
#![expect(
    clippy::arithmetic_side_effects,
    clippy::indexing_slicing,
    reason = "snapshot framing checks lengths before it indexes; not on the apply path"
)]

use std::sync::Arc;

use ward_core::{
    AttestedNode, Bundle, FederationRelationship, RegistrationEntry, StoredJoinToken, TrustDomain,
};

use crate::entry_runs;
use crate::error::{EngineResult, StoreError};
use crate::feed;
use crate::load::load_state;
use crate::ordered::Ordered;
use crate::record;
use crate::state::State;
use crate::store::Store;

/// One piece of a snapshot.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SnapshotChunk {
    /// Position in the stream, from 0.
    pub seq: u32,
    /// Whether this is the trailer that ends the stream.
    pub last: bool,
    /// Framed records, or the trailer.
    pub payload: Vec<u8>,
    /// CRC-32 over `seq` (LE), `last` (one byte) and `payload`.
    pub crc32: u32,
}

impl SnapshotChunk {
    fn new(seq: u32, last: bool, payload: Vec<u8>) -> Self {
        let crc32 = chunk_crc(seq, last, &payload);
        Self { seq, last, payload, crc32 }
    }

    /// Serializes the chunk for transport: seq (u32 LE), last (u8), crc32 (u32 LE), payload.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + self.payload.len());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.push(u8::from(self.last));
        out.extend_from_slice(&self.crc32.to_le_bytes());
        out.extend_from_slice(&self.payload);
        out
    }

    /// Parses [`SnapshotChunk::to_bytes`] output and checks its CRC.
    ///
    /// # Errors
    /// [`StoreError::BadSnapshot`] if it is short or the CRC does not match.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StoreError> {
        if bytes.len() < 9 {
            return Err(StoreError::BadSnapshot("chunk shorter than its header".into()));
        }
        let seq = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let last = match bytes[4] {
            0 => false,
            1 => true,
            b => return Err(StoreError::BadSnapshot(format!("bad last flag {b}"))),
        };
        let crc32 = u32::from_le_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
        let chunk = Self { seq, last, payload: bytes[9..].to_vec(), crc32 };
        chunk.verify()?;
        Ok(chunk)
    }

    fn verify(&self) -> Result<(), StoreError> {
        if chunk_crc(self.seq, self.last, &self.payload) != self.crc32 {
            return Err(StoreError::BadSnapshot(format!(
                "checksum mismatch in chunk {}",
                self.seq
            )));
        }
        Ok(())
    }
}

fn chunk_crc(seq: u32, last: bool, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(&[u8::from(last)]);
    h.update(payload);
    h.finalize()
}

/// What a snapshot holds, from its trailer.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SnapshotInfo {
    /// The last applied log index it reflects.
    pub applied: u64,
    /// The Raft term of that entry (0 when it was applied outside Raft).
    pub term: u64,
    /// The global revision it reflects.
    pub revision: u64,
    /// Number of records.
    pub records: u64,
    /// The cluster membership it reflects (the consensus layer's bytes), if one was applied.
    pub conf_state: Option<Vec<u8>>,
    /// The trust domain of the store it was taken from; only a store of the same trust
    /// domain imports it.
    pub trust_domain: TrustDomain,
}

/// An exported snapshot held whole in memory: its info and its chunks in order.
///
/// Built by [`Store::export_snapshot`] or [`SnapshotExport::into_snapshot`]; prefer
/// streaming a [`SnapshotExport`] for large states.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// What it holds.
    pub info: SnapshotInfo,
    /// The chunks, trailer last.
    pub chunks: Vec<SnapshotChunk>,
}

/// Default payload size of a snapshot chunk.
pub const DEFAULT_CHUNK_BYTES: usize = 1 << 20;

/// A snapshot being exported: an iterator that serializes one chunk at a time, data chunks
/// first, then the trailer.
///
/// It is a consistent cut: [`Store::export_snapshot_stream`] takes, under the state read
/// lock, a reference-counted handle on every record of the in-memory image (entries,
/// agents, bundles, federation relationships; join tokens are copied), the request-id runs
/// (encoded from the in-memory table) and the raw change-feed runs and meta records, then
/// releases the lock. The change feed is mostly read before the lock: a run never changes
/// once the next one opened, so only the runs opened since are read under it. Commands
/// applied afterwards, and an import that replaces the whole state, do not change what the
/// stream yields.
///
/// Records are grouped by kind in key-prefix order (`a`, `b`, `e`, `f`, `h`, `m/`, `q`, `t`);
/// within a kind they follow the image's order, which need not be byte order of the keys.
/// Image records are encoded as apply stores them, so the stream holds the live tree's
/// records, with one difference that keeps the stream a function of the state alone: the
/// oldest change-feed run carries only the revisions the feed still answers for
/// ([`crate::CHANGE_FEED_RETAIN`]), and the oldest request-id run only the ids still
/// remembered ([`crate::REQUEST_ID_RETAIN`]), whatever older ones the stored run holds
/// (which depends on when the replica's table moved to runs).
///
/// # Memory
/// The cut costs one pointer (8 bytes) per entry, agent, bundle and federation
/// relationship, a copy of each join token, the request-id runs (24 bytes per id, up to
/// [`crate::REQUEST_ID_RETAIN`]) and, for each change-feed run (one per 32 of the last
/// [`crate::CHANGE_FEED_RETAIN`] revisions), two 40-byte engine handles plus the record's
/// bytes. Records replaced or deleted after the cut stay alive until serialized. Each
/// record is released as it is serialized, and only the chunk being built is held as bytes.
/// At the 1M-entry data set (1.2M records, 246 MiB of stream) `examples/snapshot_stream.rs`
/// measured +51 MiB RSS after the cut and +53 MiB at the peak of a full export, with the
/// lock held about 55 ms (one record per revision and per request id then); exporting the
/// raw tree into a vector of chunks instead took +292 MiB and held writers off for the
/// whole 2.5 s.
///
/// After an item is `Err`, the stream ends.
pub struct SnapshotExport {
    info: SnapshotInfo,
    cut: Cut,
    chunk_bytes: usize,
    seq: u32,
    digest: crc32fast::Hasher,
    done: bool,
}

impl std::fmt::Debug for SnapshotExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotExport")
            .field("info", &self.info)
            .field("next_seq", &self.seq)
            .field("records_left", &self.cut.len())
            .finish()
    }
}

impl SnapshotExport {
    /// What the snapshot holds: the applied index, revision and record count of the cut.
    /// The trailer carries the same values.
    pub fn info(&self) -> SnapshotInfo {
        self.info.clone()
    }

    /// Reads the rest of the stream into memory.
    ///
    /// # Errors
    /// The first error the stream yields.
    pub fn into_snapshot(self) -> Result<Snapshot, StoreError> {
        let info = self.info.clone();
        let chunks = self.collect::<Result<Vec<_>, _>>()?;
        Ok(Snapshot { info, chunks })
    }

    fn next_data_chunk(&mut self) -> Result<Option<SnapshotChunk>, StoreError> {
        let mut payload = Vec::with_capacity(self.chunk_bytes.min(DEFAULT_CHUNK_BYTES));
        while payload.len() < self.chunk_bytes && self.cut.put_next(&mut payload)? {}
        if payload.is_empty() {
            return Ok(None);
        }
        self.digest.update(&payload);
        Ok(Some(self.take_seq(false, payload)))
    }

    fn trailer(&mut self) -> Result<SnapshotChunk, StoreError> {
        let trailer = encode_trailer(&self.info, self.digest.clone().finalize())?;
        Ok(self.take_seq(true, trailer))
    }

    fn take_seq(&mut self, last: bool, payload: Vec<u8>) -> SnapshotChunk {
        let chunk = SnapshotChunk::new(self.seq, last, payload);
        self.seq = self.seq.wrapping_add(1);
        chunk
    }
}

impl Iterator for SnapshotExport {
    type Item = Result<SnapshotChunk, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.next_data_chunk() {
            Ok(Some(chunk)) => Some(Ok(chunk)),
            Ok(None) => {
                self.done = true;
                Some(self.trailer())
            }
            Err(e) => {
                self.done = true;
                self.cut = Cut::default();
                Some(Err(e))
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.done { (0, Some(0)) } else { (1, Some(self.cut.len().saturating_add(1))) }
    }
}

impl std::iter::FusedIterator for SnapshotExport {}

/// The records of a snapshot, taken under the state read lock: handles on the in-memory
/// image's records (serialized later, exactly as apply stores them), the request-id runs,
/// and the raw change-feed runs and meta records. Yielded by kind in key-prefix order.
#[derive(Default)]
struct Cut {
    agents: std::vec::IntoIter<Arc<AttestedNode>>,
    bundles: std::vec::IntoIter<(u64, Arc<Bundle>)>,
    changes: std::vec::IntoIter<(sled::IVec, sled::IVec)>,
    /// Entries without a creation number, each its own record.
    entries_alone: std::vec::IntoIter<Arc<RegistrationEntry>>,
    /// Numbered entries in number order, one record per run (see `crate::entry_runs`).
    entries: std::vec::IntoIter<(u64, Arc<RegistrationEntry>)>,
    /// How many runs `entries` makes.
    entry_runs: usize,
    federations: std::vec::IntoIter<(u64, Arc<FederationRelationship>)>,
    meta: std::vec::IntoIter<(sled::IVec, sled::IVec)>,
    requests: std::vec::IntoIter<(u64, Vec<u8>)>,
    tokens: std::vec::IntoIter<StoredJoinToken>,
}

impl Cut {
    fn len(&self) -> usize {
        self.agents.len()
            + self.bundles.len()
            + self.changes.len()
            + self.entries_alone.len()
            + self.entry_runs
            + self.federations.len()
            + self.meta.len()
            + self.requests.len()
            + self.tokens.len()
    }

    /// Frames the next record into `out` and releases it; `false` when none is left.
    fn put_next(&mut self, out: &mut Vec<u8>) -> Result<bool, StoreError> {
        if let Some(a) = self.agents.next() {
            put_record(out, &record::agent_key(&a.id), &*a)
        } else if let Some((number, b)) = self.bundles.next() {
            put_raw(
                out,
                &record::bundle_key(&b.trust_domain),
                &record::encode_numbered(&*b, number)?,
            )
        } else if let Some(e) = self.entries_alone.next() {
            put_raw(out, &record::entry_key(&e.id), &record::encode_numbered(&*e, 0)?)
        } else if let Some((number, f)) = self.federations.next() {
            let value = record::encode_numbered(&*f, number)?;
            put_raw(out, &record::federation_key(&f.trust_domain), &value)
        } else if let Some((k, v)) = self.changes.next() {
            put_raw(out, &k, &v)
        } else if let Some((k, v)) = self.meta.next() {
            put_raw(out, &k, &v)
        } else if let Some(&(first, _)) = self.entries.as_slice().first() {
            let run = entry_runs::run_of(first);
            let in_run = self
                .entries
                .as_slice()
                .iter()
                .take_while(|(n, _)| entry_runs::run_of(*n) == run)
                .count();
            let entries: Vec<_> = self.entries.by_ref().take(in_run).collect();
            self.entry_runs = self.entry_runs.saturating_sub(1);
            let value = entry_runs::encode(entries.iter().map(|(n, e)| (*n, e)))?;
            put_raw(out, &record::entry_run_key(run), &value)
        } else if let Some((run, value)) = self.requests.next() {
            put_raw(out, &record::request_run_key(run), &value)
        } else if let Some(t) = self.tokens.next() {
            put_record(out, &record::token_key(&t.hash), &t)
        } else {
            Ok(false)
        }
    }
}

/// The records of `map` with their creation numbers, for the cut.
fn numbered<V>(map: &Ordered<V>) -> std::vec::IntoIter<(u64, Arc<V>)> {
    map.numbered().map(|(n, v)| (n, Arc::clone(v))).collect::<Vec<_>>().into_iter()
}

fn put_record<T: serde::Serialize>(
    out: &mut Vec<u8>,
    key: &[u8],
    value: &T,
) -> Result<bool, StoreError> {
    put_raw(out, key, &record::encode(value)?)
}

fn put_raw(out: &mut Vec<u8>, key: &[u8], value: &[u8]) -> Result<bool, StoreError> {
    put_framed(out, key)?;
    put_framed(out, value)?;
    Ok(true)
}

/// The change-feed run records of runs `from..to`, raw.
fn read_runs(
    tree: &sled::Tree,
    from: u64,
    to: u64,
) -> Result<Vec<(sled::IVec, sled::IVec)>, StoreError> {
    if from >= to {
        return Ok(Vec::new());
    }
    tree.range(record::feed_key(from)..record::feed_key(to)).collect::<Result<_, _>>().engine()
}

/// The run number of a change-feed run key.
fn feed_run(key: &[u8]) -> Option<u64> {
    record::key_number(record::FEED_RUN, key)
}

/// How many times the export re-reads change-feed records applied while it read the feed,
/// before taking the lock.
const CATCH_UP_PASSES: usize = 3;

/// The layout byte that opens a trailer.
const TRAILER_LAYOUT: u8 = 2;

/// A stream of the given data payloads (framed records) and a trailer with `info`: how
/// tests build snapshots of layouts this code no longer writes.
#[cfg(test)]
pub(crate) fn stream_of(
    payloads: Vec<Vec<u8>>,
    info: &SnapshotInfo,
) -> Result<Vec<SnapshotChunk>, StoreError> {
    let mut digest = crc32fast::Hasher::new();
    let mut chunks = Vec::new();
    for (seq, payload) in (0u32..).zip(payloads) {
        digest.update(&payload);
        chunks.push(SnapshotChunk::new(seq, false, payload));
    }
    let trailer = encode_trailer(info, digest.finalize())?;
    chunks.push(SnapshotChunk::new(chunks.len() as u32, true, trailer));
    Ok(chunks)
}

/// The trailer payload of a stream with `info` whose data payloads have CRC `digest`.
fn encode_trailer(info: &SnapshotInfo, digest: u32) -> Result<Vec<u8>, StoreError> {
    let mut out = vec![TRAILER_LAYOUT];
    for v in [info.applied, info.term, info.revision, info.records] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    put_framed(&mut out, info.trust_domain.as_str().as_bytes())?;
    match &info.conf_state {
        None => out.push(0),
        Some(bytes) => {
            out.push(1);
            put_framed(&mut out, bytes)?;
        }
    }
    out.extend_from_slice(&digest.to_le_bytes());
    Ok(out)
}

/// Appends `bytes` with its u32 LE length before it.
pub(crate) fn put_framed(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), StoreError> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| StoreError::Encode("record larger than 4 GiB".into()))?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

pub(crate) fn take_framed<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8], StoreError> {
    let short = || StoreError::BadSnapshot("truncated record".into());
    if buf.len() < 4 {
        return Err(short());
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    let rest = &buf[4..];
    if rest.len() < len {
        return Err(short());
    }
    let (item, tail) = rest.split_at(len);
    *buf = tail;
    Ok(item)
}

impl Store {
    /// Starts exporting the whole state as a stream of chunks of about `chunk_bytes` payload
    /// each (0 means [`DEFAULT_CHUNK_BYTES`]), trailer last.
    ///
    /// Takes the consistent cut described on [`SnapshotExport`] under the state read lock
    /// and returns; chunks are serialized as the caller pulls them, without any lock.
    ///
    /// # Errors
    /// [`StoreError::Engine`] if reading the tree fails.
    pub fn export_snapshot_stream(&self, chunk_bytes: usize) -> Result<SnapshotExport, StoreError> {
        let chunk_bytes = if chunk_bytes == 0 { DEFAULT_CHUNK_BYTES } else { chunk_bytes };
        // A change-feed run never changes once the next one opened (it is only removed), so
        // most of the feed is read before taking the lock: the runs before the open one.
        // Runs are read from the engine once the writes waiting to go there (see the
        // `batch` module) went: every run before the one open at that point is written.
        let early_tree = self.data_tree();
        let mut early_run = feed::run_of(self.written_revision()?);
        let mut early = read_runs(&early_tree, 0, early_run)?;
        // Catch up with what was applied meanwhile, so little is left for the locked part.
        for _ in 0..CATCH_UP_PASSES {
            let now = feed::run_of(self.written_revision()?);
            if now <= early_run {
                break;
            }
            early.extend(read_runs(&early_tree, early_run, now)?);
            early_run = now;
        }

        #[cfg(test)]
        if let Some(window) = self
            .inner
            .export_window
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_mut()
        {
            window();
        }
        let state = self.read();
        let tree = self.data_tree();
        let revision = state.revision;
        let first_kept = feed::first_kept(revision);
        let (first_run, open_run) = (feed::run_of(first_kept), feed::run_of(revision));
        // An import in between replaced the tree and its history: read the feed again.
        let same_history = std::ptr::eq(&*early_tree, &*tree) && early_run <= open_run;
        let mut changes = if same_history {
            let mut feed: Vec<_> = early
                .into_iter()
                .filter(|(k, _)| feed_run(k).is_some_and(|r| r >= first_run))
                .collect();
            feed.extend(read_runs(&tree, early_run.max(first_run), open_run + 1)?);
            feed
        } else {
            read_runs(&tree, first_run, open_run + 1)?
        };
        // Writes of the applies since (still waiting to go to the engine) as they will be.
        let unwritten = &state.unwritten.batch;
        #[cfg(test)]
        if !unwritten.is_empty() {
            self.inner.exports_overlaid.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        unwritten.overlay(
            &mut changes,
            &record::feed_key(first_run),
            &record::feed_key(open_run.saturating_add(1)),
        );
        // The oldest run travels from the first revision kept, whatever older ones it holds.
        let partial = first_kept > first_run * feed::FEED_RUN;
        if partial && changes.first().is_some_and(|(k, _)| feed_run(k) == Some(first_run)) {
            match feed::from_revision(first_run, &changes[0].1, first_kept)? {
                Some(kept) => changes[0].1 = kept.into(),
                None => {
                    changes.remove(0);
                }
            }
        }
        changes.shrink_to_fit();
        let mut meta = tree.scan_prefix(b"m/").collect::<Result<Vec<_>, _>>().engine()?;
        unwritten.overlay(&mut meta, b"m/", b"m0");
        let numbered_entries: Vec<_> =
            state.entries_numbered(1, u64::MAX).map(|(n, e)| (n, Arc::clone(e))).collect();
        let entry_runs = numbered_entries
            .iter()
            .map(|(n, _)| entry_runs::run_of(*n))
            .fold((0usize, None), |(count, last), run| {
                (if last == Some(run) { count } else { count.saturating_add(1) }, Some(run))
            })
            .0;
        let cut = Cut {
            agents: state.all_agents().cloned().collect::<Vec<_>>().into_iter(),
            bundles: numbered(&state.bundles),
            changes: changes.into_iter(),
            entries_alone: state
                .entries_numbered(0, 1)
                .map(|(_, e)| Arc::clone(e))
                .collect::<Vec<_>>()
                .into_iter(),
            entries: numbered_entries.into_iter(),
            entry_runs,
            federations: numbered(&state.federations),
            meta: meta.into_iter(),
            requests: state.request_ids.runs().into_iter(),
            tokens: state.tokens.values().cloned().collect::<Vec<_>>().into_iter(),
        };
        let info = SnapshotInfo {
            applied: state.applied,
            term: state.applied_term,
            revision: state.revision,
            records: cut.len() as u64,
            conf_state: state.conf_state.clone(),
            trust_domain: state.trust_domain.clone(),
        };
        drop(state);
        Ok(SnapshotExport {
            info,
            cut,
            chunk_bytes,
            seq: 0,
            digest: crc32fast::Hasher::new(),
            done: false,
        })
    }

    /// The revision up to which the engine holds the change feed, once what waits is
    /// written. A poisoned store writes nothing; it applies nothing either, so what still
    /// waits stays as it is and the export's overlay covers it.
    fn written_revision(&self) -> Result<u64, StoreError> {
        match self.write_waiting() {
            Err(StoreError::Poisoned) => Ok(self.revision()),
            other => other,
        }
    }

    /// Exports the whole state and collects every chunk in memory: the stream of
    /// [`Store::export_snapshot_stream`], read to its end. Suits small states and tests.
    ///
    /// # Errors
    /// [`StoreError::Engine`] if reading fails, [`StoreError::Encode`] for a record too
    /// large to frame.
    pub fn export_snapshot(&self, chunk_bytes: usize) -> Result<Snapshot, StoreError> {
        self.export_snapshot_stream(chunk_bytes)?.into_snapshot()
    }

    /// Replaces the whole state with a snapshot's. On any error the current state stays.
    ///
    /// The snapshot must be of this store's trust domain and newer than its state (a higher
    /// applied index), and its trailer must agree with the records it carries (applied
    /// index, term, membership, trust domain). The transfer, the checks and the rebuild of
    /// the in-memory image run without the state lock; readers and writers wait only for the
    /// final swap. Imports run one at a time.
    ///
    /// # Errors
    /// [`StoreError::BadSnapshot`] for a damaged, reordered or incomplete stream, or one that
    /// does not fit this store (another trust domain, a trailer that disagrees with the
    /// records); [`StoreError::SnapshotNotNewer`] when the store has applied as far or
    /// further; [`StoreError::Corrupt`] if a record inside cannot be decoded;
    /// [`StoreError::Engine`] on I/O failure.
    pub fn import_snapshot(
        &self,
        chunks: impl IntoIterator<Item = SnapshotChunk>,
    ) -> Result<SnapshotInfo, StoreError> {
        self.import_snapshot_stream(chunks.into_iter().map(Ok))
    }

    /// [`Store::import_snapshot`] from a fallible source, such as a [`SnapshotExport`] or a
    /// network transfer: the first `Err` item aborts the import with that error and the
    /// current state stays.
    ///
    /// # Errors
    /// As [`Store::import_snapshot`], or the source's error.
    pub fn import_snapshot_stream(
        &self,
        chunks: impl IntoIterator<Item = Result<SnapshotChunk, StoreError>>,
    ) -> Result<SnapshotInfo, StoreError> {
        let _one_import =
            self.inner.importing.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (staging, generation) = self.staging_tree()?;
        let (info, state) = match self.stage(&staging, chunks) {
            Ok(staged) => staged,
            Err(e) => {
                drop(staging);
                self.drop_generation(generation)?;
                return Err(e);
            }
        };
        // No entry image may outlive the switch: one of the old state's history could be
        // mistaken for one of the new state's after another switch back to this
        // generation. Taken before the state lock, as a checkpoint takes them.
        let mut installs =
            self.inner.image_writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *installs = installs.wrapping_add(1);
        if let Err(e) = crate::image::discard(&self.inner.dir) {
            drop(staging);
            self.drop_generation(generation)?;
            return Err(e);
        }
        let mut guard = self.write_lock();
        // Applies may have run during the transfer.
        let swapped = if info.applied > guard.applied {
            self.replace_state(&mut guard, state, staging, generation)
        } else {
            Err(not_newer(info.applied, guard.applied))
        };
        drop(guard);
        if let Err(e) = swapped {
            self.drop_generation(generation)?;
            return Err(e);
        }
        self.publish_revision();
        self.drop_generation(generation ^ 1)?;
        Ok(info)
    }

    /// Writes the stream into `staging`, checks it, flushes it and builds its in-memory
    /// image; holds no state lock.
    fn stage(
        &self,
        staging: &sled::Tree,
        chunks: impl IntoIterator<Item = Result<SnapshotChunk, StoreError>>,
    ) -> Result<(SnapshotInfo, State), StoreError> {
        let mut digest = crc32fast::Hasher::new();
        let mut records = 0u64;
        let mut meta = StagedMeta::default();
        for (expected, chunk) in (0u32..).zip(chunks) {
            let chunk = chunk?;
            chunk.verify()?;
            if chunk.seq != expected {
                return Err(StoreError::BadSnapshot(format!(
                    "chunk {} arrived where {expected} was expected",
                    chunk.seq
                )));
            }
            if chunk.last {
                let info = parse_trailer(&chunk.payload, digest.clone().finalize(), records)?;
                self.check_fits(&info, &meta)?;
                staging.flush().engine()?;
                let state = load_state(staging, self.trust_domain(), None)?;
                return Ok((info, state));
            }
            digest.update(&chunk.payload);
            let mut batch = sled::Batch::default();
            let mut buf = chunk.payload.as_slice();
            while !buf.is_empty() {
                let k = take_framed(&mut buf)?;
                let v = take_framed(&mut buf)?;
                meta.note(k, v);
                batch.insert(k, v);
                records += 1;
            }
            staging.apply_batch(batch).engine()?;
        }
        Err(StoreError::BadSnapshot("stream ended without its trailer".into()))
    }

    /// Refuses a snapshot of another trust domain, one not newer than this store, or one
    /// whose trailer disagrees with its records.
    fn check_fits(&self, info: &SnapshotInfo, meta: &StagedMeta) -> Result<(), StoreError> {
        let td = self.trust_domain();
        if info.trust_domain != *td {
            return Err(StoreError::BadSnapshot(format!(
                "the snapshot belongs to trust domain {}, not {td}",
                info.trust_domain
            )));
        }
        let applied = self.last_applied();
        if info.applied <= applied {
            return Err(not_newer(info.applied, applied));
        }
        let disagree = |what: &str| {
            StoreError::BadSnapshot(format!("the trailer and the records disagree on {what}"))
        };
        if meta.applied != Some(info.applied) {
            return Err(disagree("the applied index"));
        }
        if meta.term.unwrap_or(0) != info.term {
            return Err(disagree("the applied term"));
        }
        if meta.conf_state != info.conf_state {
            return Err(disagree("the membership"));
        }
        if meta.trust_domain.as_deref() != Some(td.as_str().as_bytes()) {
            return Err(disagree("the trust domain"));
        }
        Ok(())
    }
}

fn not_newer(snapshot: u64, applied: u64) -> StoreError {
    StoreError::SnapshotNotNewer { snapshot, applied }
}

/// The meta records seen in a snapshot's data, to check its trailer against.
#[derive(Default)]
struct StagedMeta {
    applied: Option<u64>,
    term: Option<u64>,
    conf_state: Option<Vec<u8>>,
    trust_domain: Option<Vec<u8>>,
}

impl StagedMeta {
    fn note(&mut self, key: &[u8], value: &[u8]) {
        let as_u64 = || value.try_into().ok().map(u64::from_be_bytes);
        if key == record::META_APPLIED {
            self.applied = as_u64();
        } else if key == record::META_APPLIED_TERM {
            self.term = as_u64();
        } else if key == record::META_CONF_STATE {
            self.conf_state = Some(value.to_vec());
        } else if key == record::META_TRUST_DOMAIN {
            self.trust_domain = Some(value.to_vec());
        }
    }
}

fn parse_trailer(payload: &[u8], digest: u32, records: u64) -> Result<SnapshotInfo, StoreError> {
    let bad = |what: &str| StoreError::BadSnapshot(format!("bad trailer: {what}"));
    let mut buf = payload;
    let mut take = |n: usize| -> Result<&[u8], StoreError> {
        if buf.len() < n {
            return Err(bad("too short"));
        }
        let (head, tail) = buf.split_at(n);
        buf = tail;
        Ok(head)
    };
    if take(1)? != [TRAILER_LAYOUT] {
        return Err(bad("unknown layout"));
    }
    let mut u64s = [0u64; 4];
    for v in &mut u64s {
        let mut b = [0u8; 8];
        b.copy_from_slice(take(8)?);
        *v = u64::from_le_bytes(b);
    }
    let [applied, term, revision, trailer_records] = u64s;
    let mut rest = buf;
    let name = take_framed(&mut rest).map_err(|_| bad("too short"))?;
    let trust_domain = std::str::from_utf8(name)
        .ok()
        .and_then(|n| TrustDomain::new(n).ok())
        .ok_or_else(|| bad("invalid trust domain"))?;
    let conf_state = match rest.split_first() {
        Some((0, tail)) => {
            rest = tail;
            None
        }
        Some((1, tail)) => {
            rest = tail;
            Some(take_framed(&mut rest).map_err(|_| bad("too short"))?.to_vec())
        }
        _ => return Err(bad("invalid membership flag")),
    };
    let want: [u8; 4] = rest.try_into().map_err(|_| bad("wrong length"))?;
    if u32::from_le_bytes(want) != digest {
        return Err(StoreError::BadSnapshot("whole-stream checksum mismatch".into()));
    }
    if trailer_records != records {
        return Err(StoreError::BadSnapshot(format!(
            "trailer says {trailer_records} records, stream had {records}"
        )));
    }
    Ok(SnapshotInfo { applied, term, revision, records: trailer_records, conf_state, trust_domain })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use ward_core::{BundleEndpointProfile, X509Authority};

    use super::*;
    use crate::command::Command;
    use crate::store::StoreConfig;
    use crate::testdata::DataSet;

    /// Every record of a stream's data chunks, by key.
    fn records(chunks: &[SnapshotChunk]) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let mut out = BTreeMap::new();
        for c in chunks.iter().filter(|c| !c.last) {
            let mut buf = c.payload.as_slice();
            while !buf.is_empty() {
                let k = take_framed(&mut buf).unwrap().to_vec();
                let v = take_framed(&mut buf).unwrap().to_vec();
                assert!(out.insert(k, v).is_none(), "a key appears twice");
            }
        }
        out
    }

    #[test]
    fn the_cut_holds_exactly_the_live_trees_records() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreConfig::new(DataSet::trust_domain())).unwrap();
        DataSet::SMALL.load(&store).unwrap();
        let td = ward_core::TrustDomain::new("fed.example").unwrap();
        let cmds = [
            Command::CreateJoinToken {
                token: ward_core::JoinToken { token: "tok".into(), expires_at: 2_000_000_000 }
                    .to_stored(),
                entry: None,
            },
            Command::SetBundles(vec![Bundle {
                x509_authorities: vec![X509Authority::new(vec![7; 40])],
                ..Bundle::new(td.clone())
            }]),
            Command::CreateFederationRelationships(vec![FederationRelationship {
                trust_domain: td.clone(),
                bundle_endpoint_url: "https://fed.example/".into(),
                profile: BundleEndpointProfile::HttpsWeb,
                trust_domain_bundle: None,
            }]),
            Command::DeleteEntries(vec![DataSet::workload_entry(3, 3).id]),
            Command::DeleteAgent(DataSet::agent_id(4)),
        ];
        for cmd in &cmds {
            store.apply(store.last_applied() + 1, cmd).unwrap();
        }
        let raw: BTreeMap<Vec<u8>, Vec<u8>> = store
            .data_tree()
            .iter()
            .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())))
            .collect::<Result<_, _>>()
            .unwrap();
        let export = store.export_snapshot_stream(4096).unwrap();
        let info = export.info();
        let chunks: Vec<SnapshotChunk> = export.map(Result::unwrap).collect();
        let got = records(&chunks);
        assert_eq!(info.records, raw.len() as u64);
        for prefix in [b'a', b'b', b'f', b'h', b'm', b'n', b't'] {
            assert!(raw.keys().any(|k| k[0] == prefix), "the data has {}", prefix as char);
        }
        assert_eq!(got, raw);
    }

    /// `chunks` with the trailer rewritten by `edit` (its checksums recomputed).
    fn with_trailer(
        chunks: &[SnapshotChunk],
        edit: impl FnOnce(&mut SnapshotInfo),
    ) -> Vec<SnapshotChunk> {
        let mut out = chunks.to_vec();
        let trailer = out.pop().unwrap();
        let digest =
            u32::from_le_bytes(trailer.payload[trailer.payload.len() - 4..].try_into().unwrap());
        let records = out.iter().map(|c| records(std::slice::from_ref(c)).len() as u64).sum();
        let mut info = parse_trailer(&trailer.payload, digest, records).unwrap();
        edit(&mut info);
        out.push(SnapshotChunk::new(trailer.seq, true, encode_trailer(&info, digest).unwrap()));
        out
    }

    #[test]
    fn a_trailer_that_disagrees_with_the_records_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreConfig::new(DataSet::trust_domain())).unwrap();
        store
            .apply_committed(&[
                crate::Committed::Membership { index: 1, term: 2, conf_state: b"one" },
                crate::Committed::Empty { index: 2, term: 3 },
            ])
            .unwrap();
        DataSet::SMALL.load(&store).unwrap();
        let chunks = store.export_snapshot(4096).unwrap().chunks;
        let target_dir = tempfile::tempdir().unwrap();
        let target =
            Store::open(target_dir.path(), StoreConfig::new(DataSet::trust_domain())).unwrap();
        type Edit = fn(&mut SnapshotInfo);
        let cases: [(Edit, &str); 4] = [
            (|i| i.applied += 1, "the trailer and the records disagree on the applied index"),
            (|i| i.term = 9, "the trailer and the records disagree on the applied term"),
            (|i| i.conf_state = None, "the trailer and the records disagree on the membership"),
            (
                |i| i.trust_domain = ward_core::TrustDomain::new("other.org").unwrap(),
                "the snapshot belongs to trust domain other.org, not example.org",
            ),
        ];
        for (edit, want) in cases {
            let err = target.import_snapshot(with_trailer(&chunks, edit)).unwrap_err();
            assert_eq!(err, StoreError::BadSnapshot(want.into()));
            assert_eq!((target.last_applied(), target.entry_count()), (0, 0));
        }
        let mut unknown = chunks.clone();
        let trailer = unknown.pop().unwrap();
        let mut payload = trailer.payload;
        payload[0] = 1;
        unknown.push(SnapshotChunk::new(trailer.seq, true, payload));
        assert_eq!(
            target.import_snapshot(unknown).unwrap_err(),
            StoreError::BadSnapshot("bad trailer: unknown layout".into())
        );
        // The unedited stream imports.
        let info = target.import_snapshot(chunks).unwrap();
        assert_eq!((info.applied, info.term), (store.last_applied(), 3));
        assert_eq!(target.conf_state().as_deref(), Some(&b"one"[..]));
    }

    #[test]
    fn feed_run_reads_only_feed_run_keys() {
        assert_eq!(feed_run(&record::feed_key(42)), Some(42));
        assert_eq!(feed_run(b"e0123456789"), None);
        assert_eq!(feed_run(b"h123"), None);
    }
}
