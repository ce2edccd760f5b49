//! [`Store`]: opening, applying commands, queries and the authorized-entries cache.
//!
//! # A failed apply
//!
//! Applying a command changes the in-memory image as it goes (later items of a command see
//! the earlier ones) and collects the sled batch beside it; the batch, with the new applied
//! index, is written last. If anything fails before that write lands (encoding a record, the
//! write itself), every record the command changed is put back from an undo log kept as it
//! ran, and the applied index and revision are restored, all under the same write lock. So
//! readers never see the half-applied image, and afterwards they see exactly the last
//! state written to sled. The store then refuses every further apply
//! ([`StoreError::Poisoned`]) until it is reopened: the failure is fatal for the replica,
//! which stops and, on restart, replays the log from the applied index on disk.
//!
//! Undoing costs a few reference-count bumps per changed record; the alternative, staging
//! every change beside the image and applying it after the write, would make each command's
//! later items look through the stage. Rebuilding the image from disk would cost a full load.
//!
//! Apply is written never to panic (the crate denies arithmetic that can overflow, indexing
//! and unwraps). If it panicked anyway, the half-changed image could not be undone; the state
//! lock is then poisoned and every later read or write panics in turn instead of reading
//! through it, until the process restarts.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use ward_core::{
    AgentId, AttestedNode, Bundle, EntryId, FederationRelationship, JoinTokenHash,
    RegistrationEntry, StoredJoinToken, TrustDomain,
};

use crate::apply::{Txn, Undo, roll_back, with_bundle};
use crate::batch::{WRITE_BEHIND_ENTRIES, WriteBatch};
use crate::command::{Applied, Command};
use crate::error::{EngineResult, StoreError};
use crate::feed;
use crate::image::{self, ImageOf};
use crate::load::load_state;
use crate::log_entry::LogEntry;
use crate::query::{AgentFilter, EntryFilter, Page, PageRequest};
use crate::record::{self, Change};
use crate::revision_watch::{RevisionSender, RevisionWatch};
use crate::state::{AuthorizedEntries, InvalidationSet, State};

/// Name of the tree holding which generation tree is live.
const META_TREE: &str = "ward-meta";
/// Key in [`META_TREE`] of the live generation (0 or 1).
const ACTIVE_KEY: &[u8] = b"active";

/// How many change-feed records are kept; older ones are removed as new ones are written.
pub const CHANGE_FEED_RETAIN: u64 = 100_000;

/// Default of [`StoreConfig::checkpoint_every`]: half of [`CHANGE_FEED_RETAIN`], so the
/// feed always reaches back to the last image with room to spare.
pub const CHECKPOINT_EVERY: u64 = 50_000;

/// Settings for [`Store::open`].
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// The server's trust domain: entries are validated against it and node aliases are
    /// the entries parented by its `/spire/server` ID.
    pub trust_domain: TrustDomain,
    /// Maximum number of agents whose authorized entries are cached.
    pub cache_agents: u64,
    /// A command that changes the authorized entries of more agents than this (an entry
    /// under a node alias of a large cluster) drops the whole cache instead of listing
    /// and invalidating each agent.
    pub cache_invalidate_limit: usize,
    /// sled's page cache in bytes. Queries are served from the in-memory image, so this
    /// only speeds up writes and open; keep it small.
    pub engine_cache_bytes: u64,
    /// How often sled flushes on its own, in milliseconds; `None` flushes only on
    /// [`Store::flush`].
    pub flush_every_ms: Option<u64>,
    /// How many log entries applied by [`Store::apply_committed`] may leave their writes
    /// waiting in memory so that they go to the engine in one batch (default 256; 1 writes
    /// each call's at once). A crash loses the waiting ones from the engine, not
    /// from the replicated log that replays them; see the `batch` module.
    pub write_behind_entries: u32,
    /// Write the entry image ([`Store::checkpoint`]) on a thread of its own once the
    /// revision is this many past the last image (or, with no image, past 0), less a random
    /// share of up to a quarter drawn at each open (so replicas spread theirs), so a restart
    /// after a crash also reads the entries from an image instead of the engine. Keep it
    /// well under [`CHANGE_FEED_RETAIN`]: an image the change feed no longer reaches back
    /// to is of no use. `None` (or 0) writes images only on [`Store::checkpoint`] and
    /// [`Store::close`]. An attempt that fails is not repeated before this many more.
    pub checkpoint_every: Option<u64>,
}

impl StoreConfig {
    /// Defaults for `trust_domain`: 100,000 cached agents, whole-cache invalidation above
    /// 4,096 affected agents, 64 MiB engine cache, flush every 500 ms, an entry image every
    /// [`CHECKPOINT_EVERY`] revisions.
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self {
            trust_domain,
            cache_agents: 100_000,
            cache_invalidate_limit: 4096,
            engine_cache_bytes: 64 << 20,
            flush_every_ms: Some(500),
            write_behind_entries: WRITE_BEHIND_ENTRIES,
            checkpoint_every: Some(CHECKPOINT_EVERY),
        }
    }
}

/// One committed entry of the replicated log, as the consensus layer hands it to
/// [`Store::apply_committed`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Committed<'a> {
    /// A proposal: the bytes of a [`LogEntry`].
    Entry {
        /// Log index.
        index: u64,
        /// Term of the entry.
        term: u64,
        /// [`LogEntry::encode`] output.
        data: &'a [u8],
    },
    /// An entry without a command (a new leader's no-op).
    Empty {
        /// Log index.
        index: u64,
        /// Term of the entry.
        term: u64,
    },
    /// A membership change, with the membership it results in.
    Membership {
        /// Log index.
        index: u64,
        /// Term of the entry.
        term: u64,
        /// The consensus layer's encoding of the membership after the change; stored as
        /// given and returned by [`Store::conf_state`].
        conf_state: &'a [u8],
    },
}

impl Committed<'_> {
    /// The entry's log index.
    pub fn index(&self) -> u64 {
        match *self {
            Self::Entry { index, .. }
            | Self::Empty { index, .. }
            | Self::Membership { index, .. } => index,
        }
    }

    /// The entry's term.
    pub fn term(&self) -> u64 {
        match *self {
            Self::Entry { term, .. } | Self::Empty { term, .. } | Self::Membership { term, .. } => {
                term
            }
        }
    }
}

/// A log entry whose request id was applied already: it changed nothing. The proposer that
/// waited for the request was answered by the first one.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Duplicate {
    /// The log index at which the request was applied.
    pub first_index: u64,
}

/// What [`Store::apply_committed`] reports for one [`Committed::Entry`].
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct AppliedEntry {
    /// The entry's log index.
    pub index: u64,
    /// The entry's request id (0 when it had none).
    pub request_id: u128,
    /// The command's result, or [`Duplicate`] when the request was applied before (then
    /// nothing changed but the applied index).
    pub result: Result<Applied, Duplicate>,
}

pub(crate) struct Inner {
    pub(crate) db: sled::Db,
    meta: sled::Tree,
    pub(crate) data: RwLock<sled::Tree>,
    pub(crate) generation: Mutex<u8>,
    pub(crate) state: RwLock<State>,
    cache: moka::sync::Cache<AgentId, AuthorizedEntries>,
    /// Whether anything was put in the cache since it was last emptied; written under the
    /// state read lock, read under the write lock.
    cache_used: AtomicBool,
    pub(crate) poisoned: AtomicBool,
    /// Serializes snapshot imports (the state lock is not held while one is staged).
    pub(crate) importing: Mutex<()>,
    /// The applied index known to be on disk: raised by [`Store::flush`] and imports.
    pub(crate) durable: AtomicU64,
    /// Number of sled batches written by apply, for tests of the one-batch rule.
    pub(crate) batches: AtomicU64,
    /// Snapshot exports that found applies' writes still waiting under the lock.
    #[cfg(test)]
    pub(crate) exports_overlaid: AtomicU64,
    /// Runs in a snapshot export between its lock-free part and its cut under the state
    /// lock, where applies that land are written over the cut from memory.
    #[cfg(test)]
    pub(crate) export_window: Mutex<Option<Box<dyn FnMut() + Send>>>,
    /// The store's directory, where [`Store::checkpoint`] writes the entry image.
    pub(crate) dir: PathBuf,
    /// Whether open read the entries from the entry image.
    from_image: bool,
    /// Held while an entry image is written ([`Store::checkpoint`]): one at a time.
    pub(crate) image_build: Mutex<()>,
    /// How many snapshot installs reached the switch (those then refused as not newer
    /// included). Held by a checkpoint while it takes the entries and while it puts its
    /// image in place, and by an install from before it discards the image until its switch
    /// is done, so an image of a replaced history is never put in place.
    pub(crate) image_writer: Mutex<u64>,
    /// Whether a background checkpoint is running.
    pub(crate) checkpointing: AtomicBool,
    /// Threads waiting for the state write lock (see [`Store::let_writers_in`]).
    pub(crate) writers_waiting: AtomicUsize,
    /// The revision of the last entry image written or read (0 if none): the next automatic
    /// checkpoint comes [`StoreConfig::checkpoint_every`] revisions after it.
    pub(crate) checkpoint_base: AtomicU64,
    /// A random number drawn at open: how much earlier than `checkpoint_every` this
    /// store's automatic checkpoints come (modulo a quarter of it).
    pub(crate) checkpoint_jitter: u64,
    pub(crate) config: StoreConfig,
    /// The revision as last published to [`Store::watch_revision`] readers.
    revisions: RevisionSender,
}

/// ward's replicated state machine on sled. Cheap to clone; clones share one store.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("trust_domain", &self.inner.config.trust_domain).finish()
    }
}

fn tree_name(generation: u8) -> String {
    format!("state-{generation}")
}

impl Store {
    /// Opens (or creates) the store in directory `path` and loads its in-memory image.
    ///
    /// # Errors
    /// [`StoreError::Engine`] if sled cannot open the directory, [`StoreError::Corrupt`] or
    /// [`StoreError::UnsupportedFormat`] if a record cannot be read.
    pub fn open(path: impl AsRef<Path>, config: StoreConfig) -> Result<Self, StoreError> {
        let db = open_engine(path.as_ref(), &config)?;
        let meta = db.open_tree(META_TREE).engine()?;
        let generation = match meta.get(ACTIVE_KEY).engine()? {
            Some(v) => v.first().copied().unwrap_or(0) & 1,
            None => 0,
        };
        let data = db.open_tree(tree_name(generation)).engine()?;
        // A crash during an import can leave a half-written staging tree behind.
        db.drop_tree(tree_name(generation ^ 1)).engine()?;
        let stored = |key: &[u8]| -> Result<u64, StoreError> {
            match data.get(key).engine()? {
                Some(v) => record::read_u64(key, &v),
                None => Ok(0),
            }
        };
        let of = ImageOf {
            generation,
            applied: stored(record::META_APPLIED)?,
            revision: stored(record::META_REVISION)?,
        };
        // An image of this generation at or before the tree's revision can be caught up
        // through the change feed (`load::catch_up_entries`); any other is of no use.
        let image = image::read(path.as_ref())
            .filter(|i| i.of().generation == of.generation && i.of().revision <= of.revision);
        if image.is_none() {
            image::discard(path.as_ref())?;
        }
        let (state, image_revision) = match image {
            // An image that passed its checks but does not load falls back to the engine.
            Some(image) => {
                let revision = image.of().revision;
                match load_state(&data, &config.trust_domain, Some(image)) {
                    Ok(state) => (state, Some(revision)),
                    // Other errors (another trust domain, a newer format) are the tree's:
                    // reading it without the image fails the same way, and the image stays.
                    Err(e @ StoreError::Corrupt { .. }) => {
                        tracing::warn!(error = %e, "the entry image could not be used; reading the entries from the engine");
                        image::discard(path.as_ref())?;
                        (load_state(&data, &config.trust_domain, None)?, None)
                    }
                    Err(StoreError::ImageBehind { changed, entries }) => {
                        tracing::info!(
                            changed,
                            entries,
                            "the entry image is further behind than catching it up is worth; reading the entries from the engine"
                        );
                        image::discard(path.as_ref())?;
                        (load_state(&data, &config.trust_domain, None)?, None)
                    }
                    Err(e) => return Err(e),
                }
            }
            None => (load_state(&data, &config.trust_domain, None)?, None),
        };
        let durable = AtomicU64::new(state.applied);
        let revisions = RevisionSender::new(state.revision);
        let cache = moka::sync::Cache::builder().max_capacity(config.cache_agents).build();
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                meta,
                data: RwLock::new(data),
                generation: Mutex::new(generation),
                state: RwLock::new(state),
                cache,
                cache_used: AtomicBool::new(false),
                poisoned: AtomicBool::new(false),
                durable,
                importing: Mutex::new(()),
                batches: AtomicU64::new(0),
                #[cfg(test)]
                exports_overlaid: AtomicU64::new(0),
                #[cfg(test)]
                export_window: Mutex::new(None),
                dir: path.as_ref().to_path_buf(),
                from_image: image_revision.is_some(),
                image_build: Mutex::new(()),
                image_writer: Mutex::new(0),
                checkpointing: AtomicBool::new(false),
                writers_waiting: AtomicUsize::new(0),
                checkpoint_base: AtomicU64::new(image_revision.unwrap_or(0)),
                checkpoint_jitter: {
                    use std::hash::{BuildHasher, Hasher};
                    std::collections::hash_map::RandomState::new().build_hasher().finish()
                },
                config,
                revisions,
            }),
        })
    }

    /// The state, for reading. Panics when the lock is poisoned: see [`poisoned_lock`].
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, State> {
        self.inner.state.read().unwrap_or_else(|_| poisoned_lock())
    }

    /// The state, for writing. Panics when the lock is poisoned: see [`poisoned_lock`].
    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, State> {
        let _waiting = WriterWaiting::new(&self.inner.writers_waiting);
        self.inner.state.write().unwrap_or_else(|_| poisoned_lock())
    }

    /// Lets a writer that waits for the state lock have it before this thread, which holds
    /// no state lock now, takes the read lock again: waits while one waits, at most
    /// [`LET_WRITERS_IN`].
    ///
    /// A thread that reads the state in many short holds (the entry image's cut) would
    /// otherwise keep a writer out for all of them: releasing the read lock wakes the
    /// writer, but the reader, still on its core, takes the read lock again before the
    /// woken writer runs, and the writer goes back to sleep. Measured with
    /// `cargo bench -p ward-benches --bench cluster_writes`: an apply waited 12–17 ms for
    /// a cut of 300,000 entries (36 holds of about 1 ms) before this.
    pub(crate) fn let_writers_in(&self) {
        let start = std::time::Instant::now();
        while self.inner.writers_waiting.load(Ordering::Acquire) > 0
            && start.elapsed() < LET_WRITERS_IN
        {
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
    }

    pub(crate) fn data_tree(&self) -> sled::Tree {
        self.inner.data.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The trust domain the store was opened for.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.inner.config.trust_domain
    }

    /// Applies `cmd` as log entry `index`: deterministic, and atomic on disk together with
    /// the new last-applied index.
    ///
    /// # Errors
    /// [`StoreError::StaleIndex`] if `index` is not after the last applied index (nothing
    /// changes); [`StoreError::Engine`] if the write fails, after which the store is
    /// [`StoreError::Poisoned`] and must be reopened.
    pub fn apply(&self, index: u64, cmd: &Command) -> Result<Applied, StoreError> {
        let mut state = self.write();
        let applied = self.apply_locked(&mut state, index, cmd);
        let revision = state.revision;
        drop(state);
        self.inner.revisions.publish(revision);
        if applied.is_ok() {
            self.checkpoint_if_due(revision);
        }
        applied
    }

    fn apply_locked(
        &self,
        state: &mut State,
        index: u64,
        cmd: &Command,
    ) -> Result<Applied, StoreError> {
        self.check_poisoned()?;
        if index <= state.applied {
            return Err(StoreError::StaleIndex { index, applied: state.applied });
        }
        let before = MetaBefore::of(state);
        let mark = state.unwritten.mark();
        let mut batch = WriteBatch::default();
        let mut touched = Vec::new();
        let mut undo = Vec::new();
        let applied = self
            .run_command(state, &mut batch, &mut touched, &mut undo, index, cmd)
            .and_then(|applied| {
                before.write_changed(state, &mut batch);
                state.feed.seal(&mut batch);
                // What earlier applies left waiting goes first, in the same batch.
                state.unwritten.add(batch, 1, true, 1);
                self.write_waiting_locked(state).map(|()| applied)
            });
        match applied {
            Ok(applied) => {
                self.invalidate(&touched);
                Ok(applied)
            }
            Err(e) => {
                state.unwritten.rewind(mark);
                Err(self.fail_apply(state, before, undo, e))
            }
        }
    }

    pub(crate) fn check_poisoned(&self) -> Result<(), StoreError> {
        if self.inner.poisoned.load(Ordering::Acquire) {
            return Err(StoreError::Poisoned);
        }
        Ok(())
    }

    /// Runs `cmd` as log entry `index` against the in-memory state, adding its writes
    /// (records, `m/applied`, revision and change feed) to `batch`, the agents whose cached
    /// results it changes to `touched`, and how to take back its memory changes to `undo`
    /// (also when it fails: the caller then rolls back).
    fn run_command(
        &self,
        state: &mut State,
        batch: &mut WriteBatch,
        touched: &mut Vec<InvalidationSet>,
        undo: &mut Vec<Undo>,
        index: u64,
        cmd: &Command,
    ) -> Result<Applied, StoreError> {
        // Only readers set it, under the read lock, so it cannot change while this holds
        // the write lock.
        let track = self.inner.cache_used.load(Ordering::Acquire);
        let mut txn = Txn::new(state, track, self.inner.config.cache_invalidate_limit);
        txn.batch = std::mem::take(batch);
        let run = txn.run(cmd);
        let Txn { batch: written, mut change, mutated, touched: reached, undo: changed, .. } = txn;
        *batch = written;
        undo.extend(changed);
        let outcome = run?;
        if track {
            touched.push(reached);
        }
        state.refreeze_dirty_groups();
        state.applied = index;
        // The metadata records (applied index, revision, counts) are written once per
        // engine batch, by `MetaBefore::write_changed`, not once per command.
        if mutated {
            state.revision = state.revision.saturating_add(1);
            change.revision = state.revision;
            state.feed.push(&change, batch, undo)?;
        }
        Ok(Applied { index, revision: state.revision, outcome })
    }

    /// Drops the cached results of the agents in `touched`; called under the write lock.
    fn invalidate(&self, touched: &[InvalidationSet]) {
        for set in touched {
            if set.is_all() {
                self.inner.cache.invalidate_all();
                return;
            }
        }
        for agent in touched.iter().flat_map(InvalidationSet::agents) {
            self.inner.cache.invalidate(agent);
        }
    }

    /// Applies a run of committed log entries, in order: the replicated apply.
    ///
    /// Everything happens under one write lock and lands in one sled batch: the commands'
    /// records, `m/applied` (the last entry's index), `m/applied_term` (its term), the
    /// request-id table and, for a [`Committed::Membership`], `m/conf_state`. Entries at or
    /// below the last applied index are skipped, so replaying a log after a restart is
    /// safe. A [`Committed::Entry`] whose request id (non-zero) is in the table of the last
    /// [`crate::REQUEST_ID_RETAIN`] applied ids changes nothing but the applied index and
    /// reports [`Duplicate`]. [`Committed::Empty`] and [`Committed::Membership`] only advance
    /// the applied index and term (and the membership).
    ///
    /// Returns one [`AppliedEntry`] per [`Committed::Entry`] applied (skipped replays give
    /// none), in log order.
    ///
    /// # Errors
    /// Every error is fatal for a replica: stop, and recover by reopening and replaying.
    /// Entries are decoded and their indexes checked before anything changes, so
    /// [`StoreError::UnknownLogFormat`], [`StoreError::BadLogEntry`] and
    /// [`StoreError::IndexGap`] (an index that is not the next one) leave the store as it
    /// was. [`StoreError::Engine`] or an apply failure leaves it [`StoreError::Poisoned`].
    pub fn apply_committed(
        &self,
        batch: &[Committed<'_>],
    ) -> Result<Vec<AppliedEntry>, StoreError> {
        let mut state = self.write();
        self.check_poisoned()?;
        let mut next = state.applied;
        let mut work = Vec::with_capacity(batch.len());
        for committed in batch.iter().filter(|c| c.index() > state.applied) {
            let index = committed.index();
            if Some(index) != next.checked_add(1) {
                return Err(StoreError::IndexGap { index, applied: next });
            }
            next = index;
            let entry = match committed {
                Committed::Entry { data, .. } => Some(LogEntry::decode(data)?),
                Committed::Empty { .. } | Committed::Membership { .. } => None,
            };
            work.push((committed, entry));
        }
        if work.is_empty() {
            return Ok(Vec::new());
        }
        let before = MetaBefore::of(&state);
        let mut sled_batch = WriteBatch::default();
        let mut membership = false;
        let mut touched = Vec::new();
        let mut undo = Vec::new();
        let mut out = Vec::new();
        let count = work.len();
        for (committed, entry) in work {
            let (index, term) = (committed.index(), committed.term());
            if let Some(entry) = entry {
                let id = entry.request_id;
                let first = if id == 0 { None } else { state.request_ids.first_index(id) };
                let result = match first {
                    Some(first_index) => Err(Duplicate { first_index }),
                    None => {
                        let applied = match self.run_command(
                            &mut state,
                            &mut sled_batch,
                            &mut touched,
                            &mut undo,
                            index,
                            &entry.command,
                        ) {
                            Ok(applied) => applied,
                            Err(e) => return Err(self.fail_apply(&mut state, before, undo, e)),
                        };
                        if id != 0 {
                            let recorded = state.request_ids.record(index, id);
                            if let Some(run) = recorded.dropped_run {
                                sled_batch.remove(record::request_run_key(run));
                            }
                            undo.push(Undo::RequestId { index, id, evicted: recorded.evicted });
                        }
                        Ok(applied)
                    }
                };
                out.push(AppliedEntry { index, request_id: id, result });
            } else if let Committed::Membership { conf_state, .. } = committed {
                membership = true;
                sled_batch.insert(record::META_CONF_STATE, *conf_state);
                state.conf_state = Some(conf_state.to_vec());
            }
            state.applied = index;
            state.applied_term = term;
        }
        before.write_changed(&state, &mut sled_batch);
        sled_batch.insert(record::META_APPLIED_TERM, record::u64_value(state.applied_term));
        state.request_ids.seal(&mut sled_batch);
        state.feed.seal(&mut sled_batch);
        // The writes wait with those of earlier applies until enough have gathered (see
        // `crate::batch`); a membership change goes to the engine at once.
        let mark = state.unwritten.mark();
        let count = u32::try_from(count).unwrap_or(u32::MAX);
        let due = state.unwritten.add(
            sled_batch,
            count,
            membership,
            self.inner.config.write_behind_entries,
        );
        if due && let Err(e) = self.write_waiting_locked(&mut state) {
            // The earlier applies' writes stay waiting; this call's go with its memory.
            state.unwritten.rewind(mark);
            return Err(self.fail_apply(&mut state, before, undo, e));
        }
        self.invalidate(&touched);
        let revision = state.revision;
        drop(state);
        self.inner.revisions.publish(revision);
        self.checkpoint_if_due(revision);
        Ok(out)
    }

    /// Commands could not be applied: puts the in-memory image back as it was before them
    /// (so reads keep answering from exactly the state on disk) and refuses every later
    /// apply until the store is reopened, which replays the log from the last applied index
    /// on disk. Returns `e`.
    fn fail_apply(
        &self,
        state: &mut State,
        before: MetaBefore,
        undo: Vec<Undo>,
        e: StoreError,
    ) -> StoreError {
        roll_back(state, undo);
        before.restore(state);
        self.inner.poisoned.store(true, Ordering::Release);
        e
    }

    /// Makes every applied command durable: writes what waits (see the `batch` module),
    /// then has the engine fsync.
    ///
    /// # Errors
    /// [`StoreError::Engine`] on I/O failure; [`StoreError::Poisoned`] when writes wait on a
    /// poisoned store (the engine then lacks applies the memory holds, and the durable
    /// index is not raised).
    pub fn flush(&self) -> Result<(), StoreError> {
        // Everything applied before the flush starts is on disk once it returns.
        let applied = self.last_applied();
        self.write_waiting()?;
        self.inner.db.flush().engine()?;
        self.inner.durable.fetch_max(applied, Ordering::AcqRel);
        Ok(())
    }

    /// Whether [`Store::open`] read the entries from the entry image that
    /// [`Store::close`] wrote, rather than from the engine.
    pub fn opened_from_image(&self) -> bool {
        self.inner.from_image
    }

    /// The applied index known to be on disk: what [`Store::flush`] (or opening, or an
    /// import) last made durable. With `flush_every_ms` set, [`Store::last_applied`] runs
    /// ahead of it; log compaction must never pass it, since a crash reopens the store at
    /// an applied index at least this high but possibly no higher.
    pub fn durable_applied(&self) -> u64 {
        self.inner.durable.load(Ordering::Acquire)
    }

    /// The Raft term of the last applied log entry (0 when nothing was applied through
    /// [`Store::apply_committed`]).
    pub fn applied_term(&self) -> u64 {
        self.read().applied_term
    }

    /// The membership recorded by the last applied [`Committed::Membership`] (the consensus
    /// layer's bytes), if any.
    pub fn conf_state(&self) -> Option<Vec<u8>> {
        self.read().conf_state.clone()
    }

    /// The last applied log index (0 for an empty store).
    pub fn last_applied(&self) -> u64 {
        self.read().applied
    }

    /// The global revision: bumped by every command that changed anything.
    pub fn revision(&self) -> u64 {
        self.read().revision
    }

    /// A watch on [`Store::revision`]: it wakes once a command that changed something was
    /// applied here (or a snapshot installed), after the change is readable through every
    /// query, and holds only the latest revision.
    pub fn watch_revision(&self) -> RevisionWatch {
        self.inner.revisions.subscribe()
    }

    /// Publishes the current revision to [`Store::watch_revision`] readers.
    pub(crate) fn publish_revision(&self) {
        let revision = self.read().revision;
        self.inner.revisions.publish(revision);
    }

    // ----- entries -----

    /// The entry with this id.
    pub fn entry(&self, id: &EntryId) -> Option<Arc<RegistrationEntry>> {
        self.read().entry(id).cloned()
    }

    /// Number of entries.
    pub fn entry_count(&self) -> usize {
        self.read().entry_count()
    }

    /// ListEntries: entries passing `filter`, in creation order (as SPIRE lists them by row
    /// id), one page. The token is the creation number of the page's last entry.
    pub fn list_entries(
        &self,
        filter: &EntryFilter,
        page: &PageRequest,
    ) -> Page<Arc<RegistrationEntry>> {
        self.read().list_entries(filter, page)
    }

    /// CountEntries.
    pub fn count_entries(&self, filter: &EntryFilter) -> usize {
        self.read().count_entries(filter)
    }

    /// The entries `agent` is authorized for by SPIRE's rule (see the crate docs), sorted by
    /// id, served from the cache when present.
    pub fn authorized_entries(&self, agent: &AgentId) -> AuthorizedEntries {
        if let Some(hit) = self.inner.cache.get(agent) {
            return hit;
        }
        let state = self.read();
        let computed = state.authorized_entries(agent);
        // Inserted under the read lock, so no apply can slip between computing and caching.
        self.inner.cache_used.store(true, Ordering::Release);
        self.inner.cache.insert(agent.clone(), computed.clone());
        drop(state);
        computed
    }

    /// The same as [`Store::authorized_entries`] but always computed from the indexes,
    /// bypassing (and not filling) the cache.
    pub fn authorized_entries_uncached(&self, agent: &AgentId) -> AuthorizedEntries {
        self.read().authorized_entries(agent)
    }

    /// The change feed: changes with revision greater than `after`, oldest first, at most
    /// `limit`.
    ///
    /// The writes of applies still waiting in memory (see the `batch` module) go to the
    /// engine first.
    ///
    /// # Errors
    /// [`StoreError::Engine`] or [`StoreError::Corrupt`] from writing what waits or reading
    /// the feed; [`StoreError::Poisoned`] when writes wait on a poisoned store.
    pub fn changes_since(&self, after: u64, limit: usize) -> Result<Vec<Change>, StoreError> {
        // The runs kept hold more than the last CHANGE_FEED_RETAIN revisions; answer those.
        let revision = self.write_waiting()?;
        let from = after.saturating_add(1).max(feed::first_kept(revision));
        feed::stored_from(&self.data_tree(), from).take(limit).collect()
    }

    // ----- agents -----

    /// The agent's record.
    pub fn agent(&self, id: &AgentId) -> Option<Arc<AttestedNode>> {
        self.read().agent(id).cloned()
    }

    /// ListAgents.
    pub fn list_agents(&self, filter: &AgentFilter, page: &PageRequest) -> Page<Arc<AttestedNode>> {
        self.read().list_agents(filter, page)
    }

    /// CountAgents.
    pub fn count_agents(&self, filter: &AgentFilter) -> usize {
        self.read().count_agents(filter)
    }

    /// Number of agents.
    pub fn agent_count(&self) -> usize {
        self.read().agent_count()
    }

    // ----- tokens, bundles, federation -----

    /// The stored join token with this value (found by its hash).
    pub fn join_token(&self, token: &str) -> Option<StoredJoinToken> {
        self.join_token_by_hash(&JoinTokenHash::of(token))
    }

    /// The stored join token with this hash.
    pub fn join_token_by_hash(&self, hash: &JoinTokenHash) -> Option<StoredJoinToken> {
        self.read().tokens.get(hash).cloned()
    }

    /// The bundle of `td`.
    pub fn bundle(&self, td: &TrustDomain) -> Option<Arc<Bundle>> {
        self.read().bundles.get(td).cloned()
    }

    /// Number of bundles (the own one included).
    pub fn bundle_count(&self) -> usize {
        self.read().bundles.len()
    }

    /// All bundles in creation order, one page. The token is the creation number of the
    /// page's last bundle (a decimal number, as SPIRE's row ids).
    pub fn list_bundles(&self, page: &PageRequest) -> Page<Arc<Bundle>> {
        self.read().bundles.page(page)
    }

    /// The federation relationship with `td`, carrying the trust domain's bundle (if it has
    /// one) as `trust_domain_bundle`, as SPIRE's datastore joins it.
    pub fn federation_relationship(&self, td: &TrustDomain) -> Option<Arc<FederationRelationship>> {
        let state = self.read();
        let f = state.federations.get(td)?;
        Some(with_bundle(f, state.bundles.get(td).map(|b| &**b)))
    }

    /// All federation relationships in creation order, one page, each with its bundle as
    /// [`Store::federation_relationship`]; tokens as [`Store::list_bundles`].
    pub fn list_federation_relationships(
        &self,
        page: &PageRequest,
    ) -> Page<Arc<FederationRelationship>> {
        let state = self.read();
        let Page { items, next_token } = state.federations.page(page);
        let items = items
            .iter()
            .map(|f| with_bundle(f, state.bundles.get(&f.trust_domain).map(|b| &**b)))
            .collect();
        Page { items, next_token }
    }

    /// Makes `tree` (generation `generation`, already flushed) and its image `state` the
    /// live state; the caller holds the write lock as `guard`.
    pub(crate) fn replace_state(
        &self,
        guard: &mut State,
        state: State,
        tree: sled::Tree,
        generation: u8,
    ) -> Result<(), StoreError> {
        self.inner.meta.insert(ACTIVE_KEY, vec![generation]).engine()?;
        self.inner.db.flush().engine()?;
        self.inner.durable.fetch_max(state.applied, Ordering::AcqRel);
        *guard = state;
        *self.inner.data.write().unwrap_or_else(std::sync::PoisonError::into_inner) = tree;
        *self.inner.generation.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            generation;
        self.inner.cache.invalidate_all();
        self.inner.cache_used.store(false, Ordering::Release);
        self.inner.poisoned.store(false, Ordering::Release);
        // The image went with the old state: count revisions from 0 again, as after an
        // open without an image.
        self.inner.checkpoint_base.store(0, Ordering::Release);
        Ok(())
    }

    pub(crate) fn staging_tree(&self) -> Result<(sled::Tree, u8), StoreError> {
        let generation =
            *self.inner.generation.lock().unwrap_or_else(std::sync::PoisonError::into_inner) ^ 1;
        let name = tree_name(generation);
        self.inner.db.drop_tree(&name).engine()?;
        Ok((self.inner.db.open_tree(&name).engine()?, generation))
    }

    pub(crate) fn drop_generation(&self, generation: u8) -> Result<(), StoreError> {
        self.inner.db.drop_tree(tree_name(generation)).engine()?;
        Ok(())
    }

    pub(crate) fn write_lock(&self) -> RwLockWriteGuard<'_, State> {
        self.write()
    }

    /// Bytes sled reports for the database on disk.
    ///
    /// # Errors
    /// [`StoreError::Engine`] on I/O failure.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.inner.db.size_on_disk().engine()
    }
}

/// The state's own fields that applying changes, as they were before, so a failed apply can
/// put them back (the records go back through the undo log).
struct MetaBefore {
    applied: u64,
    applied_term: u64,
    revision: u64,
    conf_state: Option<Vec<u8>>,
    last_entry_number: u64,
}

impl MetaBefore {
    fn of(state: &State) -> Self {
        Self {
            applied: state.applied,
            applied_term: state.applied_term,
            revision: state.revision,
            conf_state: state.conf_state.clone(),
            last_entry_number: state.last_entry_number,
        }
    }

    /// Puts in `batch` the metadata records of what changed since: `m/applied`, and after
    /// a change `m/revision` and `m/entries`, and after a new entry `m/entry-number`.
    fn write_changed(&self, state: &State, batch: &mut WriteBatch) {
        batch.insert(record::META_APPLIED, record::u64_value(state.applied));
        if state.revision != self.revision {
            batch.insert(record::META_REVISION, record::u64_value(state.revision));
            batch.insert(record::META_ENTRIES, record::u64_value(state.entry_count() as u64));
        }
        if state.last_entry_number != self.last_entry_number {
            batch.insert(record::META_ENTRY_NUMBER, record::u64_value(state.last_entry_number));
        }
    }

    fn restore(self, state: &mut State) {
        state.applied = self.applied;
        state.applied_term = self.applied_term;
        state.revision = self.revision;
        state.conf_state = self.conf_state;
        state.last_entry_number = self.last_entry_number;
    }
}

/// A writer panicked while it held the state lock, half-way through changing the image: no
/// read or write may go through it. Apply is written never to panic (lints deny what could),
/// so this is a bug; the replica stops answering from this store (each caller panics in
/// turn), and a restart rebuilds the image from disk, where the half-applied command never
/// reached.
#[cold]
#[expect(clippy::panic, reason = "fail-stop: a poisoned image must never be read through")]
fn poisoned_lock() -> ! {
    panic!(
        "the store's state lock is poisoned: an apply panicked half-way, so the in-memory image \
         cannot be trusted; restart to rebuild it from disk"
    )
}

/// How long [`Store::open`] waits for the engine's file lock to be released.
///
/// sled releases the lock of a closed database from background threads that can outlive the
/// `Db` handle for a moment, so reopening right after a close (a restart, a test) may find
/// it still held. A lock still held after this long belongs to another live process.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens the sled database, waiting up to [`LOCK_WAIT`] for a just-closed handle to release
/// its file lock. If sled finds the directory corrupt, torn snapshot files a killed process
/// left are removed and the open is tried once more (see the `torn_snapshot` module); sled
/// held the directory's lock while it read them, so no live handle was writing one.
fn open_engine(path: &Path, config: &StoreConfig) -> Result<sled::Db, StoreError> {
    let deadline = std::time::Instant::now().checked_add(LOCK_WAIT);
    let mut cleared = false;
    loop {
        let opened = sled::Config::new()
            .path(path)
            .cache_capacity(config.engine_cache_bytes)
            .flush_every_ms(config.flush_every_ms)
            .open();
        match opened {
            Err(sled::Error::Io(e))
                if e.to_string().starts_with("could not acquire lock")
                    && deadline.is_some_and(|d| std::time::Instant::now() < d) =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(sled::Error::Corruption { .. }) if !cleared => {
                cleared = true;
                let removed = crate::torn_snapshot::remove_torn(path).map_err(|e| {
                    StoreError::Engine(format!("cannot clear torn engine snapshot files: {e}"))
                })?;
                if removed.is_empty() {
                    return opened.engine();
                }
                for file in removed {
                    tracing::warn!(
                        file = %file.display(),
                        "removed a half-written engine snapshot left by a process killed while \
                         writing it"
                    );
                }
            }
            other => return other.engine(),
        }
    }
}

/// How long [`Store::let_writers_in`] waits at most for writers to take the state lock.
const LET_WRITERS_IN: std::time::Duration = std::time::Duration::from_millis(10);

/// Counts a thread among those waiting for the state write lock while it lives.
struct WriterWaiting<'a>(&'a AtomicUsize);

impl<'a> WriterWaiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Self(count)
    }
}

impl Drop for WriterWaiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)] // small numbers in tests
mod tests {
    use super::*;
    use crate::testdata::DataSet;

    #[test]
    fn a_committed_run_is_written_in_one_engine_batch() {
        let dir = tempfile::tempdir().unwrap();
        let config =
            StoreConfig { write_behind_entries: 1, ..StoreConfig::new(DataSet::trust_domain()) };
        let store = Store::open(dir.path(), config).unwrap();
        let data: Vec<Vec<u8>> = (1..=100u128)
            .map(|i| LogEntry::new(i, Command::PruneJoinTokens { expires_before: 0 }).encode())
            .collect();
        let mut batch: Vec<Committed<'_>> = (1..=100u64)
            .zip(&data)
            .map(|(index, data)| Committed::Entry { index, term: 1, data })
            .collect();
        batch.push(Committed::Empty { index: 101, term: 2 });
        let before = store.inner.batches.load(Ordering::Relaxed);
        assert_eq!(store.apply_committed(&batch).unwrap().len(), 100);
        assert_eq!(store.inner.batches.load(Ordering::Relaxed) - before, 1);
        assert_eq!((store.last_applied(), store.applied_term()), (101, 2));
    }
}
