//! Private files and directories on disk: the one atomic, durable file write that key files
//! and the CA journal use, and the permission rules for the directories that hold them.
//!
//! A write goes to a temporary file (mode 0600) in the target's directory, is synced, renamed
//! over the target, and then the directory is synced, so after a crash the path holds either
//! the old content or the new content, never a truncated file.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// Permission bits that let group members or other users write to a directory.
const GROUP_OR_OTHER_WRITE: u32 = 0o022;
/// Permission bits that give group members or other users any access to a file.
const GROUP_OR_OTHER_ANY: u32 = 0o077;

/// Why a directory or file is not private enough to hold the server's secrets.
#[derive(Debug, thiserror::Error)]
pub enum PrivatePathError {
    /// The path exists but is not a directory.
    #[error("{} is not a directory", path.display())]
    NotADirectory {
        /// The path.
        path: std::path::PathBuf,
    },
    /// Group members or other users can write to the directory (or file).
    #[error(
        "{} is writable by group or other users (mode {mode:04o}); remove that access, for \
         example with chmod go-w, and start again",
        path.display()
    )]
    WritableByOthers {
        /// The directory or file.
        path: std::path::PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Group members or other users can access a private key file.
    #[error(
        "{} is accessible by group or other users (mode {mode:04o}); private keys must be \
         readable by their owner only (chmod 600)",
        path.display()
    )]
    FileAccessibleByOthers {
        /// The file.
        path: std::path::PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The directory could not be created or inspected.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: std::path::PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Makes sure `dir` is a directory only its owner can write to: a missing directory is
/// created (parents as needed) with mode 0700; an existing one is refused when group members
/// or other users can write to it, since they could then replace what it holds.
///
/// # Errors
/// [`PrivatePathError`] naming the problem.
pub fn ensure_private_dir(dir: &Path) -> Result<(), PrivatePathError> {
    let io = |source| PrivatePathError::Io { path: dir.to_owned(), source };
    match fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => Err(PrivatePathError::NotADirectory { path: dir.to_owned() }),
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o7777;
            if mode & GROUP_OR_OTHER_WRITE != 0 {
                return Err(PrivatePathError::WritableByOthers { path: dir.to_owned(), mode });
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io)?;
            // The umask may have narrowed the mode further, never widened it; set it exactly.
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io)
        }
        Err(e) => Err(io(e)),
    }
}

/// Refuses a private key file that group members or other users can read, write or execute.
///
/// # Errors
/// [`PrivatePathError::FileAccessibleByOthers`] with the file's mode.
pub fn check_private_file(path: &Path, meta: &fs::Metadata) -> Result<(), PrivatePathError> {
    let mode = meta.permissions().mode() & 0o7777;
    if mode & GROUP_OR_OTHER_ANY != 0 {
        return Err(PrivatePathError::FileAccessibleByOthers { path: path.to_owned(), mode });
    }
    Ok(())
}

/// Refuses a file that group members or other users can write to (they could replace what
/// it holds). A missing file is fine.
///
/// # Errors
/// [`PrivatePathError::WritableByOthers`] with the file's mode, or
/// [`PrivatePathError::Io`] when it cannot be inspected.
pub fn check_not_writable_by_others(path: &Path) -> Result<(), PrivatePathError> {
    match fs::metadata(path) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o7777;
            if mode & GROUP_OR_OTHER_WRITE != 0 {
                return Err(PrivatePathError::WritableByOthers { path: path.to_owned(), mode });
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(PrivatePathError::Io { path: path.to_owned(), source }),
    }
}

/// Replaces `path` with `bytes` atomically and durably; the file ends up with mode 0600.
///
/// # Errors
/// The I/O error of the step that failed; the temporary file is removed then.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // tempfile creates the file with mode 0600 and removes it if anything below fails.
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn creates_missing_directories_owner_only() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        ensure_private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        // An existing private directory is accepted as it is.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o750)).unwrap();
        ensure_private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o750);
    }

    #[test]
    fn refuses_directories_others_can_write() {
        let tmp = tempfile::tempdir().unwrap();
        for bad in [0o777, 0o770, 0o702, 0o1777] {
            fs::set_permissions(tmp.path(), fs::Permissions::from_mode(bad)).unwrap();
            let err = ensure_private_dir(tmp.path()).unwrap_err();
            assert!(
                matches!(err, PrivatePathError::WritableByOthers { mode, .. } if mode == bad),
                "{bad:o}: {err}"
            );
            assert!(err.to_string().contains("writable by group or other users"), "{err}");
        }
        let file = tmp.path().join("f");
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(&file, b"x").unwrap();
        assert!(matches!(ensure_private_dir(&file), Err(PrivatePathError::NotADirectory { .. })));
    }

    #[test]
    fn atomic_write_replaces_content_with_an_owner_only_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("journal.json");
        fs::write(&path, b"old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        write_atomically(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(mode(&path), 0o600);
        // Nothing but the target is left behind.
        let names: Vec<_> =
            fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("journal.json")]);
    }

    #[test]
    fn private_file_check_refuses_group_or_other_access() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("k.key");
        fs::write(&path, b"k").unwrap();
        for (m, ok) in
            [(0o600, true), (0o400, true), (0o640, false), (0o604, false), (0o610, false)]
        {
            fs::set_permissions(&path, fs::Permissions::from_mode(m)).unwrap();
            let meta = fs::metadata(&path).unwrap();
            assert_eq!(check_private_file(&path, &meta).is_ok(), ok, "{m:o}");
        }
    }
}
