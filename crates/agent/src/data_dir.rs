//! What the agent keeps in its data directory so a restart needs no new node attestation:
//! the agent SVID (chain), its private key, the trust domain's bundle and whether the server
//! lets the agent re-attest.
//!
//! Everything is one file, `agent-data.json` (mode 0600, in a 0700 directory), replaced
//! atomically (temporary file, sync, rename, directory sync), so after a crash at any point
//! the SVID on disk always matches the key on disk. SPIRE keeps two files and searches its
//! key slots for the SVID's key after a crash; one file makes that search unnecessary.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use ward_ca::PrivateKey;
use ward_core::{Bundle, TrustDomain};
use zeroize::Zeroizing;

/// The file name inside the data directory.
pub const STATE_FILE: &str = "agent-data.json";

/// Why the data directory could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// The directory is missing and cannot be made private, or others can write to it.
    #[error("data directory")]
    Dir(#[from] ward_ca::files::PrivatePathError),
    /// Reading or writing the state file failed.
    #[error("{}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The state file holds something that does not decode.
    #[error("{} is not usable: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// The agent's persisted identity.
#[derive(Clone)]
pub struct AgentState {
    /// The agent SVID chain, DER, leaf first.
    pub svid: Vec<Vec<u8>>,
    /// The SVID's private key.
    pub key: PrivateKey,
    /// The trust domain's bundle, as last received from the server.
    pub bundle: Bundle,
    /// Whether the server lets this agent attest again (SPIRE's `reattestable`).
    pub reattestable: bool,
}

impl std::fmt::Debug for AgentState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentState")
            .field("svid_len", &self.svid.len())
            .field("trust_domain", &self.bundle.trust_domain)
            .field("reattestable", &self.reattestable)
            .finish_non_exhaustive()
    }
}

/// The state file's JSON shape.
#[derive(Serialize, Deserialize)]
struct StateFile {
    /// PEM certificates, leaf first.
    svid: String,
    /// PKCS#8 PEM.
    private_key: String,
    /// The SPIFFE bundle document.
    bundle: serde_json::Value,
    reattestable: bool,
}

/// The agent's data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    dir: PathBuf,
}

impl DataDir {
    /// Opens `dir`, creating it with mode 0700 when missing; refuses one others can write.
    ///
    /// # Errors
    /// [`DataDirError::Dir`].
    pub fn open(dir: &Path) -> Result<Self, DataDirError> {
        ward_ca::files::ensure_private_dir(dir)?;
        Ok(Self { dir: dir.to_owned() })
    }

    /// The state file's path.
    pub fn state_path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// Reads the persisted state of trust domain `td`; `None` when there is none.
    ///
    /// # Errors
    /// [`DataDirError`] when the file exists but cannot be read or decoded, or is readable by
    /// others.
    pub fn load(&self, td: &TrustDomain) -> Result<Option<AgentState>, DataDirError> {
        let path = self.state_path();
        let corrupt = |reason: String| DataDirError::Corrupt { path: path.clone(), reason };
        let text = match std::fs::read(&path) {
            Ok(t) => Zeroizing::new(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(DataDirError::Io { path, source }),
        };
        let meta = std::fs::metadata(&path)
            .map_err(|source| DataDirError::Io { path: path.clone(), source })?;
        ward_ca::files::check_private_file(&path, &meta)?;
        let file: StateFile =
            serde_json::from_slice(&text).map_err(|e| corrupt(format!("bad JSON: {e}")))?;
        let svid = ward_core::bundle::pem::decode_certificates(&file.svid)
            .map_err(|e| corrupt(format!("bad SVID: {e}")))?;
        if svid.is_empty() {
            return Err(corrupt("no SVID certificate".into()));
        }
        let key = PrivateKey::from_pem(file.private_key.as_bytes())
            .map_err(|e| corrupt(format!("bad private key: {e}")))?;
        let bundle_json =
            serde_json::to_vec(&file.bundle).map_err(|e| corrupt(format!("bad bundle: {e}")))?;
        let bundle = Bundle::from_spiffe_json(td.clone(), &bundle_json)
            .map_err(|e| corrupt(format!("bad bundle: {e}")))?;
        Ok(Some(AgentState { svid, key, bundle, reattestable: file.reattestable }))
    }

    /// Replaces the persisted state with `state`, atomically.
    ///
    /// # Errors
    /// [`DataDirError`] when encoding or writing fails.
    pub fn store(&self, state: &AgentState) -> Result<(), DataDirError> {
        let path = self.state_path();
        let corrupt = |reason: String| DataDirError::Corrupt { path: path.clone(), reason };
        let bundle = state.bundle.to_spiffe_json().map_err(|e| corrupt(e.to_string()))?;
        let file = StateFile {
            svid: ward_core::bundle::pem::encode_certificates(&state.svid),
            private_key: state.key.to_pkcs8_pem().to_string(),
            bundle: serde_json::from_str(&bundle).map_err(|e| corrupt(e.to_string()))?,
            reattestable: state.reattestable,
        };
        let bytes =
            Zeroizing::new(serde_json::to_vec_pretty(&file).map_err(|e| corrupt(e.to_string()))?);
        let private_key = Zeroizing::new(file.private_key);
        drop(private_key);
        ward_ca::files::write_atomically(&path, &bytes)
            .map_err(|source| DataDirError::Io { path, source })
    }

    /// Deletes the persisted state (the server evicted or banned the agent); a missing file
    /// is fine.
    ///
    /// # Errors
    /// [`DataDirError::Io`].
    pub fn remove(&self) -> Result<(), DataDirError> {
        let path = self.state_path();
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(DataDirError::Io { path, source }),
        }
    }
}
