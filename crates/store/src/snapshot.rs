//! Snapshot export and import: the whole state as a stream of checksummed chunks.
//!
//! A snapshot is the live generation tree's records, raw (keys and versioned values as
//! stored), in key order, framed as `u32 key length, key, u32 value length, value` (lengths
//! little-endian) and cut into chunks. Each chunk carries a CRC-32 over its sequence number,
//! its `last` flag and its payload. The last chunk's payload is a trailer: applied index,
//! revision, record count (u64 LE each) and a CRC-32 over all data payloads in order.
//!
//! Export is a stream ([`SnapshotExport`]): a consistent cut of the tree's records is taken
//! under the state read lock, then chunks are serialized lazily as the consumer pulls them,
//! so writers wait only for the cut and at most one chunk's payload is held as bytes.
//!
//! Import writes into the other generation tree, verifies everything, flushes, and only
//! then flips the live generation, so a crash or a bad chunk leaves the old state intact.

use crate::error::StoreError;
use crate::store::{CHANGE_FEED_RETAIN, Store};

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
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SnapshotInfo {
    /// The last applied log index it reflects.
    pub applied: u64,
    /// The global revision it reflects.
    pub revision: u64,
    /// Number of records.
    pub records: u64,
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
/// in key order, then the trailer.
///
/// It is a consistent cut: [`Store::export_snapshot_stream`] takes a handle on every record
/// of the live tree while holding the state read lock (writers wait only for that pass),
/// then releases the lock. Commands applied afterwards, and an import that replaces the
/// whole state, do not change what the stream yields.
///
/// # Memory
/// The cut is a vector of sled key/value handles (`IVec`, 40 bytes each, so 80 bytes a
/// record). Keys and values of up to 22 bytes live inside the handle; longer values share
/// the engine's reference-counted buffer, which the handle keeps alive even after the engine
/// evicts or a command replaces the record, and longer keys get their own buffer. So the
/// cut costs about 80 bytes a record plus every record longer than 22 bytes — in the worst
/// case roughly the raw size of the state, but not a second serialized copy. Records are
/// released as they are serialized, and only the chunk being built is ever held as bytes.
/// The collection in `examples/snapshot_stream.rs` measures it.
///
/// After an item is `Err`, the stream ends.
#[derive(Debug)]
pub struct SnapshotExport {
    info: SnapshotInfo,
    records: std::vec::IntoIter<(sled::IVec, sled::IVec)>,
    chunk_bytes: usize,
    seq: u32,
    digest: crc32fast::Hasher,
    done: bool,
}

impl SnapshotExport {
    /// What the snapshot holds: the applied index, revision and record count of the cut.
    /// The trailer carries the same values.
    pub fn info(&self) -> SnapshotInfo {
        self.info
    }

    /// Reads the rest of the stream into memory.
    ///
    /// # Errors
    /// The first error the stream yields.
    pub fn into_snapshot(self) -> Result<Snapshot, StoreError> {
        let info = self.info;
        let chunks = self.collect::<Result<Vec<_>, _>>()?;
        Ok(Snapshot { info, chunks })
    }

    fn next_data_chunk(&mut self) -> Result<Option<SnapshotChunk>, StoreError> {
        let mut payload = Vec::new();
        for (k, v) in self.records.by_ref() {
            if payload.is_empty() {
                payload.reserve(self.chunk_bytes.min(DEFAULT_CHUNK_BYTES) + k.len() + v.len() + 8);
            }
            put_framed(&mut payload, &k)?;
            put_framed(&mut payload, &v)?;
            if payload.len() >= self.chunk_bytes {
                break;
            }
        }
        if payload.is_empty() {
            return Ok(None);
        }
        self.digest.update(&payload);
        Ok(Some(self.take_seq(false, payload)))
    }

    fn trailer(&mut self) -> SnapshotChunk {
        let mut trailer = Vec::with_capacity(TRAILER_BYTES);
        trailer.extend_from_slice(&self.info.applied.to_le_bytes());
        trailer.extend_from_slice(&self.info.revision.to_le_bytes());
        trailer.extend_from_slice(&self.info.records.to_le_bytes());
        trailer.extend_from_slice(&self.digest.clone().finalize().to_le_bytes());
        self.take_seq(true, trailer)
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
                Some(Ok(self.trailer()))
            }
            Err(e) => {
                self.done = true;
                self.records = Vec::new().into_iter();
                Some(Err(e))
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.done { (0, Some(0)) } else { (1, Some(self.records.len().saturating_add(1))) }
    }
}

impl std::iter::FusedIterator for SnapshotExport {}

/// Size of the trailer payload: applied, revision, records (u64 each) and the CRC (u32).
const TRAILER_BYTES: usize = 28;

fn put_framed(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), StoreError> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| StoreError::Encode("record larger than 4 GiB".into()))?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

fn take_framed<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8], StoreError> {
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
        let state = self.read();
        let tree = self.data_tree();
        // Entries, agents, change feed and the four meta records, so the vector rarely grows.
        let expected = state
            .entry_count()
            .saturating_add(state.agent_count())
            .saturating_add(state.tokens.len() + state.bundles.len() + state.federations.len())
            .saturating_add(usize::try_from(state.revision.min(CHANGE_FEED_RETAIN)).unwrap_or(0))
            .saturating_add(4);
        let mut cut = Vec::with_capacity(expected);
        for kv in tree.iter() {
            cut.push(kv?);
        }
        let info = SnapshotInfo {
            applied: state.applied,
            revision: state.revision,
            records: cut.len() as u64,
        };
        drop(state);
        Ok(SnapshotExport {
            info,
            records: cut.into_iter(),
            chunk_bytes,
            seq: 0,
            digest: crc32fast::Hasher::new(),
            done: false,
        })
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
    /// # Errors
    /// [`StoreError::BadSnapshot`] for a damaged, reordered or incomplete stream;
    /// [`StoreError::Corrupt`] if a record inside cannot be decoded; [`StoreError::Engine`]
    /// on I/O failure.
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
        let mut guard = self.write_lock();
        let (staging, generation) = self.staging_tree()?;
        let result = (|| {
            let mut digest = crc32fast::Hasher::new();
            let mut records = 0u64;
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
                    staging.flush()?;
                    return Ok(info);
                }
                digest.update(&chunk.payload);
                let mut batch = sled::Batch::default();
                let mut buf = chunk.payload.as_slice();
                while !buf.is_empty() {
                    let k = take_framed(&mut buf)?;
                    let v = take_framed(&mut buf)?;
                    batch.insert(k, v);
                    records += 1;
                }
                staging.apply_batch(batch)?;
            }
            Err(StoreError::BadSnapshot("stream ended without its trailer".into()))
        })();
        let info = match result {
            Ok(info) => info,
            Err(e) => {
                drop(staging);
                self.drop_generation(generation)?;
                return Err(e);
            }
        };
        let old_generation = generation ^ 1;
        if let Err(e) = self.replace_state(&mut guard, staging, generation) {
            self.drop_generation(generation)?;
            return Err(e);
        }
        drop(guard);
        self.drop_generation(old_generation)?;
        Ok(info)
    }
}

fn parse_trailer(payload: &[u8], digest: u32, records: u64) -> Result<SnapshotInfo, StoreError> {
    let arr: &[u8; TRAILER_BYTES] = payload
        .try_into()
        .map_err(|_| StoreError::BadSnapshot(format!("trailer has {} bytes", payload.len())))?;
    let u = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&arr[i..i + 8]);
        u64::from_le_bytes(b)
    };
    let info = SnapshotInfo { applied: u(0), revision: u(8), records: u(16) };
    let want = u32::from_le_bytes([arr[24], arr[25], arr[26], arr[27]]);
    if want != digest {
        return Err(StoreError::BadSnapshot("whole-stream checksum mismatch".into()));
    }
    if info.records != records {
        return Err(StoreError::BadSnapshot(format!(
            "trailer says {} records, stream had {records}",
            info.records
        )));
    }
    Ok(info)
}
