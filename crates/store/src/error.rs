//! Store-level errors: failures of the store itself, as opposed to a refused command item
//! ([`crate::ItemError`]).

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The storage engine reported an I/O or internal error.
    #[error("storage engine error: {0}")]
    Engine(String),
    /// A stored record could not be decoded.
    #[error("corrupt record at key {key:?}: {reason}")]
    Corrupt {
        /// The key, lossily as text.
        key: String,
        /// The decoder's message.
        reason: String,
    },
    /// The entry image is further behind the database than catching it up through the
    /// change feed is worth (not damage): opening reads the entries from the database.
    #[error("{changed} entries changed since the entry image, of {entries}")]
    ImageBehind {
        /// Entries the change feed names after the image's revision.
        changed: usize,
        /// Entries in the image.
        entries: usize,
    },
    /// A record could not be encoded.
    #[error("encoding failed: {0}")]
    Encode(String),
    /// The store was written by a newer layout.
    #[error("unsupported store format {0}")]
    UnsupportedFormat(u64),
    /// The command's log index is not after the last applied one.
    #[error("log index {index} is not after the last applied index {applied}")]
    StaleIndex {
        /// The index given.
        index: u64,
        /// The last applied index.
        applied: u64,
    },
    /// An earlier apply failed: its changes were undone in memory, so reads answer from the
    /// state on disk, but no further command is applied until the store is reopened.
    #[error("store is poisoned by an earlier write failure; reopen it")]
    Poisoned,
    /// The in-memory image has no slot left for another entry or agent (2^32 of each).
    #[error("the in-memory image holds as many entries or agents as it can address")]
    Capacity,
    /// A snapshot chunk is damaged or out of order, or the snapshot does not fit this store.
    #[error("bad snapshot: {0}")]
    BadSnapshot(String),
    /// The snapshot is not newer than the store's state: importing it would go back (or
    /// bring nothing). The store keeps its state.
    #[error("the snapshot at applied index {snapshot} is not newer than this store's {applied}")]
    SnapshotNotNewer {
        /// The snapshot's applied index.
        snapshot: u64,
        /// The store's applied index.
        applied: u64,
    },
    /// A log entry is in a format this release cannot read. Fatal for a replica: it must be
    /// upgraded before it can apply the rest of the log.
    #[error("log entry format {0} is not known to this release")]
    UnknownLogFormat(u32),
    /// Bytes in the log are not a log entry.
    #[error("malformed log entry: {0}")]
    BadLogEntry(String),
    /// A committed batch skips log indexes or goes backwards.
    #[error("log index {index} does not follow the last applied index {applied}")]
    IndexGap {
        /// The index given.
        index: u64,
        /// The last applied index (or the previous index in the batch).
        applied: u64,
    },
    /// The store on disk belongs to another trust domain than the one configured.
    #[error(
        "the store belongs to trust domain {stored}, not the configured {configured}; \
         point the server at its own data directory"
    )]
    TrustDomainMismatch {
        /// The trust domain recorded in the store.
        stored: String,
        /// The trust domain in the configuration.
        configured: String,
    },
}

/// Turns a storage-engine result into a store result; kept inside the crate so no sled
/// type appears in its API (not even as a `From` conversion).
pub(crate) trait EngineResult<T> {
    /// The value, or [`StoreError::Engine`] with the engine's message.
    fn engine(self) -> Result<T, StoreError>;
}

impl<T> EngineResult<T> for Result<T, sled::Error> {
    fn engine(self) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::Engine(e.to_string()))
    }
}
