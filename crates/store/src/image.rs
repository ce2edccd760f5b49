//! The entry image: the live tree's entry records in one file, written by
//! [`crate::Store::checkpoint`] (every `checkpoint_every` revisions on a thread of its own,
//! and at a clean close) and read by a later open instead of walking the engine's pages,
//! about half the CPU time of opening a store of a million entries.
//!
//! # Format
//!
//! `ward-entries.image` in the store's directory:
//!
//! | bytes | what |
//! |---|---|
//! | 8 | magic `wardimg1` |
//! | 1 | the live generation the records are of (0 or 1) |
//! | 8 | applied index (u64 LE) |
//! | 8 | revision (u64 LE) |
//! | 8 | record count (u64 LE) |
//! | 8 | byte offset, from the first record, of record `count / 2` (u64 LE) |
//! | … | records in key order: u32 LE key length, key, u32 LE value length, value |
//! | 4 | CRC-32 (LE) of everything before it |
//!
//! Records are exactly the engine's entry records (`e` + id, the versioned value), encoded
//! as apply writes them, so loading one decodes the same bytes a full load reads.
//!
//! An image may be *fuzzy*: [`crate::Store::checkpoint`] takes the entries in slices, with
//! applies running between them, so the header's revision is the first slice's and some
//! records hold a later state. No record has a creation number above the highest at that
//! revision. Both keep the rules below sound: every entry changed after the header's
//! revision is named by the change feed and read again from the tree, and an entry created
//! after it has a number above every record's, so the catch-up reads it from the runs past
//! the image's highest number.
//!
//! # When it is used
//!
//! Open uses the image when its CRC holds, its generation is the live tree's and its
//! revision is at or before the tree's; it then reads again from the tree every entry the
//! change feed names after the image's revision (`crate::load`). If the feed does not hold
//! every revision from there to the tree's (it keeps the last
//! [`crate::CHANGE_FEED_RETAIN`]), or more than 4,096 entries and more than a sixteenth of
//! all changed since the image (a full read is cheaper then), or the caught-up count differs
//! from the tree's, open reads every entry from the tree instead. An image that does not fit is deleted; one that
//! does is kept, so a crash after the open finds it again. Installing a snapshot deletes it
//! (under the lock writers of images hold), so an image never serves a tree of another
//! history.
//!
//! A crash at any point leaves no image, an older one, or a complete one: the image is
//! written to a temporary file, synced, and renamed into place only after the engine's
//! flush that put the tree at or past its state returned, so the tree on disk is never
//! behind an image in place.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ward_core::RegistrationEntry;

use crate::error::StoreError;
use crate::record;
use crate::snapshot::put_framed;

/// File name of the image in the store's directory.
pub(crate) const IMAGE_FILE: &str = "ward-entries.image";
/// Name of the image while it is being written.
const IMAGE_TMP: &str = "ward-entries.image.tmp";
/// First bytes of an image.
const MAGIC: &[u8; 8] = b"wardimg1";
/// Header length: magic, generation, applied, revision, count, split offset.
const HEADER: usize = 8 + 1 + 8 + 8 + 8 + 8;
/// Bytes buffered between the record encoder and the file while an image is written.
const WRITE_BUFFER: usize = 1 << 20;

/// Which tree state an image is of.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct ImageOf {
    /// The live generation.
    pub(crate) generation: u8,
    /// The applied index.
    pub(crate) applied: u64,
    /// The revision.
    pub(crate) revision: u64,
}

/// Writes the image of `entries` (in id order, with their creation numbers) for the tree
/// state `of` into `dir`, atomically: [`write_unplaced`], then [`place`].
///
/// # Errors
/// [`StoreError::Engine`] on I/O failure, [`StoreError::Encode`] if a record cannot be
/// encoded; no image is left then.
#[cfg(test)]
pub(crate) fn write<'a>(
    dir: &Path,
    of: ImageOf,
    count: usize,
    entries: impl Iterator<Item = (u64, &'a Arc<RegistrationEntry>)>,
) -> Result<(), StoreError> {
    write_unplaced(dir, of, count, entries)?;
    place(dir).map(drop)
}

/// Writes the image of `entries` (in id order, with their creation numbers) for the tree
/// state `of` into a temporary file in `dir` and syncs it; [`place`] then puts it in place
/// and [`discard_unplaced`] drops it instead.
///
/// # Errors
/// [`StoreError::Engine`] on I/O failure, [`StoreError::Encode`] if a record cannot be
/// encoded; no temporary file is left then.
pub(crate) fn write_unplaced<'a>(
    dir: &Path,
    of: ImageOf,
    count: usize,
    entries: impl Iterator<Item = (u64, &'a Arc<RegistrationEntry>)>,
) -> Result<(), StoreError> {
    let tmp = dir.join(IMAGE_TMP);
    let written = write_file(&tmp, of, count, entries);
    if written.is_err() {
        discard_unplaced(dir);
    }
    written
}

/// Renames the image [`write_unplaced`] wrote into place and syncs the directory. The
/// image it replaced, if any, is returned still open (its name is gone) for
/// [`crate::disk::release`] to free gradually.
///
/// # Errors
/// [`StoreError::Engine`] on I/O failure: when the rename failed, the image in place
/// before (if any) stays and the temporary file is removed; when only the directory sync
/// failed, the new image is in place but a crash may bring back the old one (both fit the
/// tree: the tree on disk is past either).
pub(crate) fn place(dir: &Path) -> Result<Option<File>, StoreError> {
    let replaced = std::fs::OpenOptions::new().write(true).open(dir.join(IMAGE_FILE)).ok();
    if let Err(e) = std::fs::rename(dir.join(IMAGE_TMP), dir.join(IMAGE_FILE)) {
        discard_unplaced(dir);
        return Err(io(e));
    }
    sync_dir(dir)?;
    Ok(replaced)
}

/// Removes the image [`write_unplaced`] wrote, if any.
pub(crate) fn discard_unplaced(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(IMAGE_TMP));
}

fn write_file<'a>(
    path: &Path,
    of: ImageOf,
    count: usize,
    entries: impl Iterator<Item = (u64, &'a Arc<RegistrationEntry>)>,
) -> Result<(), StoreError> {
    // The records stream through a buffer to the file behind a blank header, and the
    // header goes in last, once the split offset is known: the image is never whole in
    // memory (at a million entries that was a few hundred MB grown by doubling, each
    // growth a copy into freshly zeroed pages, most of a checkpoint's CPU time).
    // Synced as it goes (see `crate::disk`): one sync of the whole file at the end held
    // the raft log's `fdatasync` up for as long as the disk took to take it all.
    let file = crate::disk::PacedWriter::new(File::create(path).map_err(io)?);
    let mut out = std::io::BufWriter::with_capacity(WRITE_BUFFER, file);
    out.write_all(&[0u8; HEADER]).map_err(io)?;
    let mut body_crc = crc32fast::Hasher::new();
    let mut body_len = 0u64;
    let mut split = 0u64;
    let mut written = 0usize;
    let mut record = Vec::new();
    for (i, (number, e)) in entries.enumerate() {
        if i == count / 2 {
            split = body_len;
        }
        record.clear();
        put_framed(&mut record, &record::entry_key(&e.id))?;
        put_framed(&mut record, &record::encode_numbered(&**e, number)?)?;
        body_crc.update(&record);
        out.write_all(&record).map_err(io)?;
        body_len = body_len.saturating_add(record.len() as u64);
        written = i.saturating_add(1);
    }
    if written != count {
        return Err(StoreError::Encode(format!("image: {written} entries, expected {count}")));
    }
    let header = header(of, count, split);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&header);
    crc.combine(&body_crc);
    out.write_all(&crc.finalize().to_le_bytes()).map_err(io)?;
    let mut file = out.into_inner().map_err(|e| io(e.into_error()))?.into_file();
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    file.write_all(&header).map_err(io)?;
    file.sync_all().map_err(io)
}

/// The header of an image of `count` records of `of` whose record `count / 2` starts
/// `split` bytes after the first.
fn header(of: ImageOf, count: usize, split: u64) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER);
    h.extend_from_slice(MAGIC);
    h.push(of.generation);
    for v in [of.applied, of.revision, count as u64, split] {
        h.extend_from_slice(&v.to_le_bytes());
    }
    h
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)
}

fn io(e: std::io::Error) -> StoreError {
    StoreError::Engine(format!("entry image: {e}"))
}

/// A read image whose CRC and header held.
#[derive(Debug)]
pub(crate) struct Image {
    bytes: Vec<u8>,
    of: ImageOf,
    count: usize,
    split: usize,
}

/// The image in `dir` when there is one and it is intact (its CRC holds, its header is
/// whole); `None` otherwise. Whether it fits the tree is the caller's to decide (see
/// [`ImageOf`] and `crate::load`); [`discard`] removes one that does not. A temporary file
/// a crash left behind is removed.
pub(crate) fn read(dir: &Path) -> Option<Image> {
    let _ = std::fs::remove_file(dir.join(IMAGE_TMP));
    std::fs::read(dir.join(IMAGE_FILE)).ok().and_then(check)
}

/// Removes the image in `dir`, if any.
///
/// # Errors
/// [`StoreError::Engine`] when an existing image cannot be deleted.
pub(crate) fn discard(dir: &Path) -> Result<(), StoreError> {
    let path: PathBuf = dir.join(IMAGE_FILE);
    match std::fs::remove_file(&path) {
        Ok(()) => sync_dir(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(e)),
    }
}

/// `bytes` as an image, when the CRC holds and the header is whole.
fn check(mut bytes: Vec<u8>) -> Option<Image> {
    let body_end = bytes.len().checked_sub(4)?;
    let crc: [u8; 4] = bytes.get(body_end..)?.try_into().ok()?;
    if crc32fast::hash(bytes.get(..body_end)?) != u32::from_le_bytes(crc) {
        return None;
    }
    bytes.truncate(body_end);
    let header = bytes.get(..HEADER)?;
    let (magic, rest) = header.split_at_checked(8)?;
    let (generation, rest) = rest.split_first()?;
    let mut words = rest.chunks_exact(8).filter_map(|w| w.try_into().ok()).map(u64::from_le_bytes);
    let of = ImageOf { generation: *generation, applied: words.next()?, revision: words.next()? };
    let (count, split) = (words.next()?, words.next()?);
    if magic != MAGIC {
        return None;
    }
    let count = usize::try_from(count).ok()?;
    let split = usize::try_from(split).ok()?;
    let body = bytes.len().saturating_sub(HEADER);
    // Every record takes at least its two 4-byte lengths.
    if split > body || count > body / 8 {
        return None;
    }
    Some(Image { bytes, of, count, split })
}

impl Image {
    /// The tree state the image was written for.
    pub(crate) fn of(&self) -> ImageOf {
        self.of
    }

    /// Number of records.
    pub(crate) fn count(&self) -> usize {
        self.count
    }

    /// The records of the first half (`high` false) or the second half (`high` true).
    pub(crate) fn records(&self, high: bool) -> Records<'_> {
        let body = self.bytes.get(HEADER..).unwrap_or_default();
        let (low, rest) = body.split_at_checked(self.split).unwrap_or((body, &[]));
        Records { rest: if high { rest } else { low } }
    }
}

/// The records of one half of an [`Image`].
#[derive(Debug)]
pub(crate) struct Records<'a> {
    rest: &'a [u8],
}

impl<'a> Records<'a> {
    fn field(&mut self) -> Option<&'a [u8]> {
        let (len, rest) = self.rest.split_first_chunk::<4>()?;
        let len = usize::try_from(u32::from_le_bytes(*len)).ok()?;
        let (field, rest) = rest.split_at_checked(len)?;
        self.rest = rest;
        Some(field)
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<(&'a [u8], &'a [u8]), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let record = self.field().zip(self.field());
        if record.is_none() {
            self.rest = &[];
        }
        Some(record.ok_or_else(|| StoreError::Corrupt {
            key: IMAGE_FILE.into(),
            reason: "truncated record".into(),
        }))
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects, clippy::indexing_slicing)] // small fixed numbers
mod tests {
    use super::*;
    use ward_core::{EntryId, Selector, SelectorSet, SpiffeId};

    fn entries(n: u64) -> Vec<(u64, Arc<RegistrationEntry>)> {
        (0..n)
            .map(|i| {
                let e = RegistrationEntry::new(
                    EntryId::new(&format!("e-{i:04}")).unwrap(),
                    SpiffeId::parse(&format!("spiffe://example.org/w/{i}")).unwrap(),
                    SpiffeId::parse("spiffe://example.org/agent").unwrap(),
                    SelectorSet::new(vec![Selector::parse("u:1").unwrap()]),
                );
                (i + 10, Arc::new(e))
            })
            .collect()
    }

    const OF: ImageOf = ImageOf { generation: 1, applied: 42, revision: 7 };

    fn written(n: u64) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let list = entries(n);
        write(dir.path(), OF, list.len(), list.iter().map(|(n, e)| (*n, e))).unwrap();
        dir
    }

    #[test]
    fn an_image_reads_back_its_records_in_two_halves_and_its_state() {
        let dir = written(5);
        let image = read(dir.path()).unwrap();
        assert_eq!((image.count(), image.of()), (5, OF));
        let keys: Vec<Vec<u8>> = image
            .records(false)
            .chain(image.records(true))
            .map(|r| r.unwrap().0.to_vec())
            .collect();
        let want: Vec<Vec<u8>> = entries(5).iter().map(|(_, e)| record::entry_key(&e.id)).collect();
        assert_eq!(keys, want);
        assert_eq!(image.records(false).count(), 2);
        let (k, v) = image.records(true).next().unwrap().unwrap();
        let (e, number): (RegistrationEntry, u64) = record::decode_numbered(k, v).unwrap();
        assert_eq!((e.id.as_str(), number), ("e-0002", 12));
        discard(dir.path()).unwrap();
        assert!(!dir.path().join(IMAGE_FILE).exists());
        assert!(read(dir.path()).is_none());
        discard(dir.path()).unwrap();
    }

    #[test]
    fn an_image_with_any_byte_changed_or_cut_is_refused() {
        let len = std::fs::read(written(3).path().join(IMAGE_FILE)).unwrap().len();
        for at in (0..len).step_by(7) {
            let dir = written(3);
            let path = dir.path().join(IMAGE_FILE);
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[at] ^= 0x40;
            std::fs::write(&path, &bytes).unwrap();
            assert!(read(dir.path()).is_none(), "byte {at} changed");
        }
        // A count more records than the body could hold, under a valid CRC.
        let dir = written(3);
        let path = dir.path().join(IMAGE_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[25..33].copy_from_slice(&(1u64 << 60).to_le_bytes());
        let body_end = bytes.len() - 4;
        let crc = crc32fast::hash(&bytes[..body_end]);
        bytes[body_end..].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        assert!(read(dir.path()).is_none(), "huge count");
        for cut in [0, 3, len / 2, len - 1] {
            let dir = written(3);
            let path = dir.path().join(IMAGE_FILE);
            let bytes = std::fs::read(&path).unwrap();
            std::fs::write(&path, &bytes[..cut]).unwrap();
            assert!(read(dir.path()).is_none(), "cut at {cut}");
        }
    }
}
