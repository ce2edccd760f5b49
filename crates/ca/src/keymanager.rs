//! Key managers: where CA and JWT private keys live.
//!
//! [`KeyManager`] is the seam a KMS or HSM backend can implement later. Two implementations
//! ship: [`MemoryKeyManager`] (keys vanish with the process; tests and throw-away servers) and
//! [`DiskKeyManager`] (one file per key in a data directory, mode 0600, replaced atomically).

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use zeroize::Zeroizing;

use crate::error::KeyError;
use crate::files::{check_private_file, ensure_private_dir, write_atomically};
use crate::key::{KeyType, PrivateKey};

/// The largest key file read (an RSA-4096 PKCS#8 PEM is about 3.3 KiB).
const MAX_KEY_FILE_LEN: usize = 1 << 20;

/// Stores private keys by id (such as `x509-CA-A` or `JWT-Signer-B`).
pub trait KeyManager: Send + Sync {
    /// Generates a new key of `key_type` under `id`, replacing any key stored there.
    ///
    /// # Errors
    /// [`KeyError`] if the id is invalid, generation fails or the key cannot be stored.
    fn generate_key(&self, id: &str, key_type: KeyType) -> Result<PrivateKey, KeyError>;

    /// The key stored under `id`, if any.
    ///
    /// # Errors
    /// [`KeyError`] if the id is invalid or a stored key cannot be read or parsed.
    fn get_key(&self, id: &str) -> Result<Option<PrivateKey>, KeyError>;

    /// The key under `id` when it exists and has `key_type`; otherwise a newly generated one
    /// (a changed configured key type therefore replaces the stored key).
    ///
    /// # Errors
    /// As [`KeyManager::get_key`] and [`KeyManager::generate_key`].
    fn get_or_generate(&self, id: &str, key_type: KeyType) -> Result<PrivateKey, KeyError> {
        match self.get_key(id)? {
            Some(key) if key.key_type() == key_type => Ok(key),
            _ => self.generate_key(id, key_type),
        }
    }
}

fn check_id(id: &str) -> Result<(), KeyError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok { Ok(()) } else { Err(KeyError::InvalidKeyId(id.to_owned())) }
}

/// Keeps keys in process memory only.
#[derive(Debug, Default)]
pub struct MemoryKeyManager {
    keys: Mutex<HashMap<String, PrivateKey>>,
}

impl MemoryKeyManager {
    /// An empty manager.
    pub fn new() -> Self {
        Self::default()
    }
}

impl KeyManager for MemoryKeyManager {
    fn generate_key(&self, id: &str, key_type: KeyType) -> Result<PrivateKey, KeyError> {
        check_id(id)?;
        let key = PrivateKey::generate(key_type)?;
        self.keys.lock().unwrap_or_else(PoisonError::into_inner).insert(id.to_owned(), key.clone());
        Ok(key)
    }

    fn get_key(&self, id: &str) -> Result<Option<PrivateKey>, KeyError> {
        check_id(id)?;
        Ok(self.keys.lock().unwrap_or_else(PoisonError::into_inner).get(id).cloned())
    }
}

/// How [`DiskKeyManager`] writes key files (it reads either).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyFileFormat {
    /// PKCS#8 `PRIVATE KEY` PEM.
    #[default]
    Pem,
    /// PKCS#8 DER.
    Der,
}

/// Keeps each key in `<dir>/<id>.key`, PKCS#8 PEM or DER, mode 0600.
///
/// Writes go through [`crate::files::write_atomically`], so a crash leaves either the old key
/// or the new one, never half a key. The directory must be writable by its owner only and
/// each key file readable by its owner only: anything wider is refused rather than used.
#[derive(Debug)]
pub struct DiskKeyManager {
    dir: PathBuf,
    format: KeyFileFormat,
    write_lock: Mutex<()>,
}

impl DiskKeyManager {
    /// A manager over `dir`, created (mode 0700, parents too) if missing.
    ///
    /// # Errors
    /// [`KeyError::Permissions`] if the directory cannot be created, is not a directory, or
    /// group members or other users can write to it.
    pub fn new(dir: impl Into<PathBuf>, format: KeyFileFormat) -> Result<Self, KeyError> {
        let dir = dir.into();
        ensure_private_dir(&dir)?;
        Ok(Self { dir, format, write_lock: Mutex::new(()) })
    }

    /// The directory holding the key files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file a key with `id` is stored in.
    ///
    /// # Errors
    /// [`KeyError::InvalidKeyId`] for ids that are not safe file names.
    pub fn key_path(&self, id: &str) -> Result<PathBuf, KeyError> {
        check_id(id)?;
        Ok(self.dir.join(format!("{id}.key")))
    }
}

impl KeyManager for DiskKeyManager {
    fn generate_key(&self, id: &str, key_type: KeyType) -> Result<PrivateKey, KeyError> {
        let path = self.key_path(id)?;
        let key = PrivateKey::generate(key_type)?;
        let _guard = self.write_lock.lock().unwrap_or_else(PoisonError::into_inner);
        let written = match self.format {
            KeyFileFormat::Pem => write_atomically(&path, key.to_pkcs8_pem().as_bytes()),
            KeyFileFormat::Der => write_atomically(&path, key.pkcs8_der()),
        };
        written.map_err(|source| KeyError::Io { path, source })?;
        Ok(key)
    }

    fn get_key(&self, id: &str) -> Result<Option<PrivateKey>, KeyError> {
        let path = self.key_path(id)?;
        let mut file = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(KeyError::Io { path, source }),
        };
        let io = |source| KeyError::Io { path: path.clone(), source };
        let meta = file.metadata().map_err(io)?;
        check_private_file(&path, &meta)?;
        // Sized up front so the key bytes are never copied into a growing, unzeroized buffer.
        let len = usize::try_from(meta.len())
            .ok()
            .filter(|&n| n <= MAX_KEY_FILE_LEN)
            .ok_or(KeyError::Malformed("key file larger than 1 MiB"))?;
        let mut bytes = Zeroizing::new(vec![0u8; len]);
        file.read_exact(&mut bytes).map_err(io)?;
        PrivateKey::from_pem_or_der(&bytes).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    use crate::files::PrivatePathError;

    fn exercise(km: &dyn KeyManager) {
        assert!(km.get_key("x509-CA-A").unwrap().is_none());
        let a = km.generate_key("x509-CA-A", KeyType::EcP256).unwrap();
        let got = km.get_key("x509-CA-A").unwrap().unwrap();
        assert_eq!(got.public_key_der(), a.public_key_der());
        // Same type: kept. Other type: replaced.
        let same = km.get_or_generate("x509-CA-A", KeyType::EcP256).unwrap();
        assert_eq!(same.public_key_der(), a.public_key_der());
        let other = km.get_or_generate("x509-CA-A", KeyType::EcP384).unwrap();
        assert_eq!(other.key_type(), KeyType::EcP384);
        assert_eq!(
            km.get_key("x509-CA-A").unwrap().unwrap().public_key_der(),
            other.public_key_der()
        );
        for bad in ["", "../etc/passwd", "a/b", ".hidden", "sp ace"] {
            assert!(
                matches!(km.get_key(bad), Err(KeyError::InvalidKeyId(ref s)) if s == bad),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn memory_manager() {
        exercise(&MemoryKeyManager::new());
    }

    #[test]
    fn disk_manager_pem_and_der_files_are_private_and_survive_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("keys");
        for format in [KeyFileFormat::Pem, KeyFileFormat::Der] {
            let km = DiskKeyManager::new(&dir, format).unwrap();
            assert_eq!(fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
            exercise(&km);
            let key = km.generate_key("JWT-Signer-A", KeyType::Rsa2048).unwrap();
            let path = km.key_path("JWT-Signer-A").unwrap();
            let meta = fs::metadata(&path).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o600);
            let bytes = fs::read(&path).unwrap();
            assert_eq!(
                bytes.starts_with(b"-----BEGIN PRIVATE KEY-----"),
                format == KeyFileFormat::Pem
            );
            let reopened = DiskKeyManager::new(&dir, format).unwrap();
            let loaded = reopened.get_key("JWT-Signer-A").unwrap().unwrap();
            assert_eq!(loaded.public_key_der(), key.public_key_der());
            assert_eq!(loaded.key_type(), KeyType::Rsa2048);
            // No temporary files are left behind.
            let leftovers: Vec<_> = fs::read_dir(&dir)
                .unwrap()
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
                .collect();
            assert!(leftovers.is_empty());
            fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn disk_manager_reports_corrupt_file() {
        let tmp = tempfile::tempdir().unwrap();
        let km = DiskKeyManager::new(tmp.path(), KeyFileFormat::Pem).unwrap();
        let path = km.key_path("x509-CA-B").unwrap();
        fs::write(&path, b"garbage").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(km.get_key("x509-CA-B"), Err(KeyError::Malformed(_))));
    }

    #[test]
    fn disk_manager_refuses_a_key_directory_others_can_write() {
        let tmp = tempfile::tempdir().unwrap();
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let err = DiskKeyManager::new(tmp.path(), KeyFileFormat::Pem).unwrap_err();
        assert!(
            matches!(
                err,
                KeyError::Permissions(PrivatePathError::WritableByOthers { mode: 0o777, .. })
            ),
            "{err}"
        );
    }

    #[test]
    fn disk_manager_refuses_key_files_others_can_read() {
        let tmp = tempfile::tempdir().unwrap();
        let km = DiskKeyManager::new(tmp.path(), KeyFileFormat::Pem).unwrap();
        km.generate_key("x509-CA-A", KeyType::EcP256).unwrap();
        let path = km.key_path("x509-CA-A").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = km.get_key("x509-CA-A").unwrap_err();
        assert!(
            matches!(
                err,
                KeyError::Permissions(PrivatePathError::FileAccessibleByOthers { mode: 0o644, .. })
            ),
            "{err}"
        );
    }
}
