//! Torn sled snapshot files, removed before sled opens the directory.
//!
//! sled 0.34 writes its page-table snapshot to `snap.<lsn>.generating` (the snapshot bytes,
//! their length as u64 LE, a CRC-32 of the bytes as u32 LE), syncs it, renames it to
//! `snap.<lsn>`, and only then removes older snapshots. It writes one when a database is
//! dropped and after every `snapshot_after_ops` operations. At open it reads the file that
//! sorts last among all `snap.*` files, and its filter (`RunningConfig::get_snapshot_files`)
//! skips only `.in___motion` files, not `.generating` ones. A process killed while writing a
//! snapshot therefore leaves a directory that sled refuses to open for ever ("Read corrupted
//! data at file offset None"): the half-written `.generating` file sorts after the complete
//! snapshot of the same or a lower log position.
//!
//! A torn `.generating` file was never renamed, so the snapshot before it and every log
//! segment after that one are still on disk: removing it lets sled recover from them, as it
//! does after any crash. A `.generating` file whose checksum holds (the kill came between the
//! sync and the rename) is complete; sled reads it correctly and it is left alone.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Removes every torn `snap.*.generating` file in sled directory `dir`, returning the
/// paths removed. A missing directory is a new store: nothing to do.
///
/// # Errors
/// The I/O error if the directory cannot be listed, or a torn file read or removed.
pub(crate) fn remove_torn(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !(name.starts_with("snap.") && name.ends_with(".generating")) {
            continue;
        }
        let path = entry.path();
        if !entry.file_type()?.is_file() || is_complete(&fs::read(&path)?) {
            continue;
        }
        fs::remove_file(&path)?;
        removed.push(path);
    }
    Ok(removed)
}

/// Whether `file` is a whole sled snapshot: some bytes, then their length (u64) and a
/// CRC-32 of them (u32 LE, as sled computes it with crc32fast) that holds.
fn is_complete(file: &[u8]) -> bool {
    let Some((rest, crc)) = file.split_last_chunk::<4>() else { return false };
    let Some((bytes, _length)) = rest.split_last_chunk::<8>() else { return false };
    !bytes.is_empty() && crc32fast::hash(bytes) == u32::from_le_bytes(*crc)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn snapshot_file(bytes: &[u8]) -> Vec<u8> {
        let mut file = bytes.to_vec();
        file.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        file.extend_from_slice(&crc32fast::hash(bytes).to_le_bytes());
        file
    }

    #[test]
    fn only_torn_generating_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let whole = snapshot_file(b"a page table");
        let write = |name: &str, bytes: &[u8]| fs::write(dir.path().join(name), bytes).unwrap();
        write("snap.0000000000000010", &whole);
        write("snap.0000000000000020.generating", &whole);
        write("snap.0000000000000030.generating", &whole[..whole.len() - 1]);
        write("snap.0000000000000040.generating", b"");
        write("snap.0000000000000050.generating", &whole[..12]);
        write("conf", b"not a snapshot");
        let mut removed: Vec<String> = remove_torn(dir.path())
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        removed.sort();
        assert_eq!(
            removed,
            [
                "snap.0000000000000030.generating",
                "snap.0000000000000040.generating",
                "snap.0000000000000050.generating"
            ]
        );
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["conf", "snap.0000000000000010", "snap.0000000000000020.generating"]);
    }

    #[test]
    fn a_missing_directory_is_nothing_to_do() {
        let dir = tempfile::tempdir().unwrap();
        assert!(remove_torn(&dir.path().join("new")).unwrap().is_empty());
    }
}
