//! ward's replicated state machine on sled.
//!
//! This crate owns every piece of replicated server state — registration entries, attested
//! agents, join tokens, bundles and federation relationships — and the only code that
//! changes it: [`Store::apply`] of a [`Command`]. `apply` is deterministic (the proposer
//! supplies ids, timestamps and expiry; apply reads no clock, RNG or environment) and atomic
//! (one sled batch, including the new last-applied index). It also answers every read the
//! server needs: SPIRE's ListEntries/CountEntries and ListAgents/CountAgents filters with
//! stable page tokens, and the authorized entries of an agent behind a moka cache.
//!
//! It does not talk to the network, run Raft, validate attestation evidence, sign anything,
//! or decide who may call what: the server and cluster crates do. sled types never appear in
//! its API.
//!
//! # Storage layout
//!
//! One sled database. The tree `ward-meta` holds `active` (one byte, 0 or 1): which of the
//! trees `state-0` / `state-1` is live. The other one is only used while importing a
//! snapshot and is dropped otherwise. In the live tree (values are `postcard` of a
//! `Versioned::V1(T)` wrapper around the ward-core type, so later formats can read old
//! records):
//!
//! | key | value |
//! |---|---|
//! | `n` + run (u64 BE) | the registration entries numbered `8 × run` to `8 × run + 7` (run 0 from 1) (creation numbers: entries list in creation order), each its number and its `RegistrationEntry`, in number order (see `entry_runs`); a run with no entry left has no record |
//! | `e` + entry id | a `RegistrationEntry` stored before creation numbers were kept (number 0), alone |
//! | `a` + agent SPIFFE ID | `AttestedNode` |
//! | `t` + hex SHA-256 of the token value | `StoredJoinToken` |
//! | `b` + trust domain name | `Bundle` and its creation number (bundles list in creation order) |
//! | `f` + trust domain name | `FederationRelationship` (without its bundle, which is under `b`) and its creation number |
//! | `h` + run (u64 BE) | the change feed, one record per run of 32 revisions: each revision's [`Change`] (ids it changed); runs covering at least the last [`CHANGE_FEED_RETAIN`] revisions are kept |
//! | `q` + run (u64 BE) | the request-id table, one record per run of 64 log indexes: index and request id of each entry applied there that carried one; runs holding the last [`REQUEST_ID_RETAIN`] ids are kept |
//! | `m/applied` | last applied log index (u64 BE) |
//! | `m/applied_term` | Raft term of the last applied log entry (u64 BE) |
//! | `m/conf_state` | cluster membership after the last membership change (the consensus layer's bytes) |
//! | `m/trust_domain` | the trust domain the store belongs to, recorded when it is created; opening with another one is refused |
//! | `m/revision` | global revision (u64 BE) |
//! | `m/entries` | number of entries (u64 BE), to size indexes on open |
//! | `m/entry-number` | the highest creation number given to an entry (u64 BE) |
//! | `m/format` | layout format (u64 BE), currently 3 |
//! | `m/migrating-entries` | present while a format-2 tree's entries move into runs |
//!
//! Every command writes its records, `m/applied` and (if anything changed) `m/revision` and
//! its change into the open feed run in one atomic batch, so after a crash the store
//! reopens at exactly some applied index with exactly that index's state. [`Store::flush`]
//! makes everything applied so far durable.
//!
//! The open runs of the change feed and of the request-id table are held in memory while
//! they fill and written whole, once per apply that added to them, in the apply's batch; a
//! run is removed whole when it falls out of retention. So an entry created costs about one
//! engine record (the entry) plus a few per applied batch, where one record per revision
//! and per request id (and the removal of the oldest of each) cost four more per entry.
//! Layout format 1 kept those one record per revision (`c`) and per index (`r`); opening a
//! format-1 tree (or installing a format-1 snapshot) migrates it to runs in one batch. A
//! release that writes format 1 refuses a format-2 tree or snapshot
//! ([`StoreError::UnsupportedFormat`]): during a rolling upgrade a snapshot taken by an
//! upgraded replica installs only on upgraded ones, so, as for the log format
//! ([`log_entry`]), finish upgrading every replica before an old one needs a snapshot. The
//! answers (feed, request-id window) are the same in both formats, so old and new replicas
//! apply the same log alike meanwhile.
//!
//! Layout format 3 keeps numbered entries in runs of 8 creation numbers (`n`) where format
//! 2 kept one record per entry (`e`). A run's record is made from the entries in memory when
//! the write-behind batch (see the `batch` module) is written, so the entries created between two engine
//! batches cost one record per run they fall in, not one each; an update or delete of an
//! older entry rewrites its run (8 entries at most). Opening a format-2 tree, or installing
//! a format-2 snapshot, moves its numbered entries into runs, 65,536 per engine batch merged
//! with the runs already written. The first batch records format 3 and
//! `m/migrating-entries`, removed with the last: a crash part-way leaves a tree that a
//! format-2 release refuses and the next open finishes. The same upgrade rule holds: a
//! release that writes format 2 refuses a format-3 tree or snapshot. A format-3 tree with a
//! numbered entry stored alone (`e`) is corrupt.
//!
//! # The replicated apply
//!
//! The consensus layer hands committed log entries to [`Store::apply_committed`]: each
//! proposal is a [`LogEntry`] (a versioned envelope around a [`Command`] with a request id;
//! [`log_entry`] states the format rules), and a whole run of entries is applied under one
//! write lock into one sled batch, together with `m/applied`, `m/applied_term` and, after a
//! membership change, `m/conf_state`. Entries at or below the applied index are skipped, so
//! replay after a restart is safe, and an entry whose request id was applied recently
//! changes nothing (a retried proposal applies once). [`Store::durable_applied`] says how
//! far the applied state is on disk, which bounds log compaction.
//!
//! # Snapshots
//!
//! [`Store::export_snapshot_stream`] returns a [`SnapshotExport`]: an iterator of
//! [`SnapshotChunk`]s holding the live tree's records, grouped by kind in key-prefix order,
//! framed and cut into chunks of a chosen payload size, each with its own CRC-32, then a
//! trailer with the applied index and term, revision, record count, trust domain,
//! membership and a CRC-32 over all data payloads ([`snapshot`] has the wire format). The export first takes a consistent cut
//! under the state read lock — a reference-counted handle on every record of the in-memory
//! image (8 bytes each) and the raw change-feed runs, most of which are read before the
//! lock because a run never changes once the next one opened — then releases it; chunks are serialized, exactly as
//! apply stores the records, only as they are pulled. So writers wait for the cut alone
//! (about 55 ms at 1M entries) and one chunk's payload is in memory at a time. Commands
//! applied (or a snapshot imported) after the cut do not show in the stream.
//! [`Store::export_snapshot`] collects the same stream into a [`Snapshot`] for small states.
//!
//! [`Store::import_snapshot`] (or [`Store::import_snapshot_stream`], for a fallible source)
//! writes the records into the other generation tree, checks every chunk's CRC and
//! sequence, the trailer's record count and stream CRC, that the trailer agrees with the
//! records (applied index, term, membership, trust domain), that the snapshot is of this
//! store's trust domain and newer than its state, flushes, and builds the new in-memory
//! image; all of that without the state lock, so readers, TLS handshakes and writers keep
//! being served during the transfer. Only then does it take the write lock to make that tree
//! live and swap the image, and it drops the old tree. Any damaged, missing, reordered or
//! truncated chunk, or a snapshot that does not fit, fails with [`StoreError::BadSnapshot`]
//! (or [`StoreError::SnapshotNotNewer`]) and leaves the current state, in memory and on
//! disk, as it was.
//!
//! # The entry image
//!
//! [`Store::checkpoint`] flushes and writes `ward-entries.image` beside sled's files: the
//! live tree's entry records in key order in one checksummed file, with the generation,
//! applied index and revision they are of. The store writes one on a thread of its own
//! every [`StoreConfig::checkpoint_every`] revisions (default [`CHECKPOINT_EVERY`]), and
//! [`Store::close`] (a clean shutdown) writes one. The entries are taken 8,192 at a time
//! under the state read lock, so applies wait about a millisecond at most; an image is of
//! the revision its first slice saw and may hold later states of some entries, which the
//! open reads again anyway. The background thread encodes and writes at nice 19, after the
//! engine flush. An open reads the entries from it with
//! one sequential read instead of walking sled's pages (at 1M entries, about half the CPU
//! time), then reads again from sled the entries the change feed names after the image's
//! revision, so a restart after a crash uses it too. It falls back to reading every entry
//! from sled when the image is missing, damaged, of another generation, ahead of the tree,
//! or further back than the feed reaches. The `image` module has the format and the rules.
//!
//! # In-memory image and indexes
//!
//! Opening reads the live tree into memory: entries in a slab addressed by `u32` slots (each
//! slot also holds the hash of the entry's SPIFFE ID, the first bytes of its id and its
//! creation number) with an ordered id → slot map, a creation-order set (ListEntries lists
//! in creation order, as SPIRE lists by row id, and its page token is the creation number
//! of a page's last entry), and hash indexes from the 64-bit hash of a parent ID, SPIFFE
//! ID, selector or federated trust domain to slots, each set ordered by creation number so
//! a filtered page resumes where the last one stopped (entries stored before numbers were
//! kept load with number 0 and list first; a page token cannot point between them, so a
//! paged walk lists them in its first page or skips those past it); node-alias entries
//! also by selector; agents by id (ordered, and hashed) and by node selector; tokens in an
//! ordered map; bundles and federation relationships by trust domain and by creation number
//! (SPIRE lists them in the order they were created). Hash indexes only narrow the
//! search: every hit is confirmed against the record's own strings (for parent IDs once per
//! hash bucket, unless two parent IDs ever shared a hash). Queries read only this image;
//! apply updates it in step with the batch under one write lock.
//!
//! [`Store::authorized_entries`] follows SPIRE's rule: entries parented by the agent, plus,
//! for every node alias whose selectors are all among the agent's node selectors, entries
//! parented by the alias; then, recursively, entries parented by any collected entry's
//! SPIFFE ID (each parent visited once). Aliases are found through the alias selector index
//! and children through the parent index, never by scanning.
//!
//! Two structures keep that walk to a few memory reads at fleet scale:
//! - *Frozen groups*: the children of each parent ID, sorted by id, in shared chunks of 64
//!   (the first inline in the group) that also mark which children parent entries of their
//!   own. A hash record per SPIFFE ID holds the group of that parent and the agents with
//!   that id, so an agent and its own children cost one probe. Apply notes which children
//!   changed under which parent; before the write lock is released, only the chunks those
//!   fall in are copied and re-frozen (the others are shared with the old group), so a
//!   write under a parent with many children costs one chunk plus one pointer per chunk.
//! - *Alias table*: a small dense table of the node-alias entries, each cell holding the
//!   hash of the alias's SPIFFE ID and its current child group; agents keep the cells they
//!   belong to, kept in step with agent and alias changes. An alias thus costs one read of
//!   a hot cell instead of reading the entry and probing its hash.
//!
//! The answer, [`AuthorizedEntries`], holds the shared groups (no entry is copied or
//! reference-counted per query); [`AuthorizedEntries::iter`] flattens it in id order.
//! Results are cached per agent; a command invalidates exactly the agents whose result it
//! can change (found by walking from the changed entry's parent up to agents and alias
//! members). When the selector index shows that more agents than
//! [`StoreConfig::cache_invalidate_limit`] may be affected (an entry under a node alias that
//! a whole large cluster belongs to), the command drops the whole cache instead of listing
//! every member: at 100,000 members, listing and invalidating them took about 230 ms per
//! write.

// Applying a command must never panic or wrap, whatever the command holds: every replica
// would fail at the same log index. Denied crate-wide, so new code on the apply path is
// covered; the modules off that path that need it say so.
#![deny(
    clippy::arithmetic_side_effects,
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

mod apply;
#[cfg(test)]
mod apply_failure_tests;
mod batch;
mod checkpoint;
pub mod command;
pub mod disk;
mod entry_runs;
mod error;
mod feed;
mod image;
mod index;
mod load;
pub mod log_entry;
mod ordered;
pub mod query;
mod raftlog;
mod record;
mod request_ids;
mod revision_watch;
pub mod snapshot;
mod state;
mod store;
pub mod testdata;
mod torn_snapshot;
#[cfg(test)]
mod write_behind_tests;

pub use checkpoint::Checkpoint;
pub use command::{
    AgentAttestation, Applied, BundleDeleteMode, BundleMask, BundleUpdate, Command, ConsumedToken,
    EntryUpdate, FederationMask, FederationUpdate, ItemError, Outcome,
};
pub use error::StoreError;
pub use log_entry::LogEntry;
pub use query::{AgentFilter, EntryFilter, FederatesWithFilter, Page, PageRequest, SelectorFilter};
pub use raftlog::{RaftLog, RaftRecord};
pub use record::Change;
pub use request_ids::REQUEST_ID_RETAIN;
pub use revision_watch::RevisionWatch;
pub use snapshot::{DEFAULT_CHUNK_BYTES, Snapshot, SnapshotChunk, SnapshotExport, SnapshotInfo};
pub use state::AuthorizedEntries;
pub use store::{
    AppliedEntry, CHANGE_FEED_RETAIN, CHECKPOINT_EVERY, Committed, Duplicate, Store, StoreConfig,
};
