//! The data directory at start-up: private, and used by one server process at a time.
//!
//! The data directory holds the store (entries, join tokens) and the CA's keys and journal, so
//! it is created owner-only (0700) and refused when group members or other users can write to
//! it. What ward created inside it earlier (`ca/`, `ca/keys/`, `store/`, `ca/journal.json` and
//! the key files) is checked again at every start, since a mode can change after creation: a
//! directory or file others can write to is refused with a sentence naming it. A missing
//! `store/` is created owner-only before the store opens.
//!
//! A second server on the same directory would meet the store's file lock deep inside the
//! storage engine. Instead, the first server holds an exclusive lock on `ward-server.lock` in
//! the directory for as long as it runs, with its process id written in the file, and a
//! second one is refused with one sentence naming the directory and that process id.

use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use ward_ca::files::{check_not_writable_by_others, ensure_private_dir};

/// The lock file's name inside the data directory.
pub const LOCK_FILE: &str = "ward-server.lock";

/// Subdirectories ward creates under the data directory.
const PRIVATE_DIRS: [&str; 3] = ["ca", "ca/keys", "store"];

/// Held while a server uses its data directory; dropping it releases the directory.
#[derive(Debug)]
pub struct DataDirLock {
    _file: std::fs::File,
}

/// Prepares `dir` for a server: creates it owner-only or checks its mode, checks again what
/// ward created inside it, creates `store/` when `with_store`, and takes the directory's
/// lock.
///
/// # Errors
/// A sentence naming the directory or file whose mode lets others write to it, or the
/// directory another server process uses.
pub fn prepare(dir: &Path, with_store: bool) -> anyhow::Result<DataDirLock> {
    ensure_private_dir(dir).context("data directory")?;
    let lock = lock(dir)?;
    for sub in PRIVATE_DIRS {
        let path = dir.join(sub);
        if path.exists() || (with_store && sub == "store") {
            ensure_private_dir(&path).context("data directory")?;
        }
    }
    for file in private_files(dir)? {
        check_not_writable_by_others(&file).context("data directory")?;
    }
    Ok(lock)
}

/// The files ward wrote under `dir` that hold state: the CA journal and the key files.
fn private_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = vec![dir.join("ca/journal.json")];
    let keys = dir.join("ca/keys");
    match std::fs::read_dir(&keys) {
        Ok(listing) => {
            for item in listing {
                let item = item.with_context(|| format!("reading {}", keys.display()))?;
                if item.file_type().is_ok_and(|t| t.is_file()) {
                    files.push(item.path());
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", keys.display())),
    }
    Ok(files)
}

/// Takes the exclusive lock on `dir`'s lock file and writes this process's id in it.
fn lock(dir: &Path) -> anyhow::Result<DataDirLock> {
    let path = dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => {
            let mut text = String::new();
            let pid = file
                .read_to_string(&mut text)
                .ok()
                .and_then(|_| text.trim().parse::<u32>().ok())
                .map(|pid| format!(" (pid {pid})"))
                .unwrap_or_default();
            anyhow::bail!(
                "data dir {} is in use by another ward-server process{pid}",
                dir.display()
            );
        }
        Err(e) => {
            return Err(std::io::Error::from(e))
                .with_context(|| format!("locking {}", path.display()));
        }
    }
    let written = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()));
    written.with_context(|| format!("writing {}", path.display()))?;
    Ok(DataDirLock { _file: file })
}
