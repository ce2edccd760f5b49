//! Snapshot export and import: the whole state as a stream of checksummed chunks.
//!
//! A snapshot is the live generation tree's records, raw (keys and versioned values as
//! stored), in key order, framed as `u32 key length, key, u32 value length, value` (lengths
//! little-endian) and cut into chunks. Each chunk carries a CRC-32 over its sequence number,
//! its `last` flag and its payload. The last chunk's payload is a trailer: applied index,
//! revision, record count (u64 LE each) and a CRC-32 over all data payloads in order.
//!
//! Import writes into the other generation tree, verifies everything, flushes, and only
//! then flips the live generation, so a crash or a bad chunk leaves the old state intact.

use crate::error::StoreError;
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
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SnapshotInfo {
    /// The last applied log index it reflects.
    pub applied: u64,
    /// The global revision it reflects.
    pub revision: u64,
    /// Number of records.
    pub records: u64,
}

/// An exported snapshot: its info and its chunks in order.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// What it holds.
    pub info: SnapshotInfo,
    /// The chunks, trailer last.
    pub chunks: Vec<SnapshotChunk>,
}

/// Default payload size of a snapshot chunk.
pub const DEFAULT_CHUNK_BYTES: usize = 1 << 20;

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
    /// Exports the whole state as chunks of about `chunk_bytes` payload each (0 means
    /// [`DEFAULT_CHUNK_BYTES`]). Writes wait while the records are read, so the snapshot
    /// is consistent with its applied index.
    ///
    /// # Errors
    /// [`StoreError::Engine`] if reading fails.
    pub fn export_snapshot(&self, chunk_bytes: usize) -> Result<Snapshot, StoreError> {
        let chunk_bytes = if chunk_bytes == 0 { DEFAULT_CHUNK_BYTES } else { chunk_bytes };
        let state = self.read();
        let tree = self.data_tree();
        let mut chunks = Vec::new();
        let mut digest = crc32fast::Hasher::new();
        let mut payload = Vec::new();
        let mut records = 0u64;
        let mut seq = 0u32;
        for kv in tree.iter() {
            let (k, v) = kv?;
            put_framed(&mut payload, &k)?;
            put_framed(&mut payload, &v)?;
            records += 1;
            if payload.len() >= chunk_bytes {
                digest.update(&payload);
                chunks.push(SnapshotChunk::new(seq, false, std::mem::take(&mut payload)));
                seq += 1;
            }
        }
        if !payload.is_empty() {
            digest.update(&payload);
            chunks.push(SnapshotChunk::new(seq, false, payload));
            seq += 1;
        }
        let info = SnapshotInfo { applied: state.applied, revision: state.revision, records };
        drop(state);
        let mut trailer = Vec::with_capacity(28);
        trailer.extend_from_slice(&info.applied.to_le_bytes());
        trailer.extend_from_slice(&info.revision.to_le_bytes());
        trailer.extend_from_slice(&info.records.to_le_bytes());
        trailer.extend_from_slice(&digest.finalize().to_le_bytes());
        chunks.push(SnapshotChunk::new(seq, true, trailer));
        Ok(Snapshot { info, chunks })
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
        let mut guard = self.write_lock();
        let (staging, generation) = self.staging_tree()?;
        let result = (|| {
            let mut digest = crc32fast::Hasher::new();
            let mut records = 0u64;
            for (expected, chunk) in (0u32..).zip(chunks) {
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
    let arr: &[u8; 28] = payload
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
