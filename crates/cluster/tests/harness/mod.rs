//! Runs N replicas in one process: real drivers with real sled stores in temporary
//! directories, wired through the in-memory network.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use raft::eraftpb::{ConfState, Entry, HardState, SnapshotMetadata};

use ward_cluster::log_store::PendingSync;
use ward_cluster::mem_network::MemNetwork;
use ward_cluster::{
    ClusterConfig, ClusterHandle, LogStore, LogStoreError, MembershipChange, NodeId, ProposeError,
    Replica, SledLogStore,
};
use ward_core::{JoinToken, TrustDomain};
use ward_store::{Applied, Command, Store, StoreConfig};

/// How long any awaited condition may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// A running replica.
pub struct Node {
    pub store: Store,
    pub handle: ClusterHandle,
}

/// A cluster of replicas on the in-memory network.
pub struct Harness {
    pub net: MemNetwork,
    pub nodes: BTreeMap<NodeId, Node>,
    dirs: BTreeMap<NodeId, tempfile::TempDir>,
    pub compact_log_bytes: u64,
    pub snapshot_pull_timeout: Duration,
    /// raft's `max_size_per_msg` for replicas started from now on.
    pub max_size_per_msg: u64,
    /// raft's `election_tick` for replicas started from now on.
    pub election_tick: usize,
    /// `ClusterConfig::sync_gap` for replicas started from now on.
    pub sync_gap: Duration,
    /// Each replica's hold on its log flushes (see [`FlushHold`]).
    pub holds: BTreeMap<NodeId, Arc<FlushHold>>,
}

/// Lets a test hold a replica's log flushes: while armed, each flush waits for a permit
/// ([`FlushHold::release_one`]) or for the hold to be disarmed.
#[derive(Default)]
pub struct FlushHold {
    state: Mutex<HoldState>,
    changed: Condvar,
}

#[derive(Default)]
struct HoldState {
    armed: bool,
    /// Armed for the syncs a log hands to the driver's sync thread only, not for flushes
    /// made where the log is written.
    elsewhere_only: bool,
    permits: u64,
    waiting: u64,
    flushes: u64,
}

impl FlushHold {
    pub fn arm(&self) {
        let mut s = self.state.lock().unwrap();
        s.armed = true;
        s.elsewhere_only = false;
    }

    /// Holds only the syncs run on the driver's sync thread.
    pub fn arm_elsewhere(&self) {
        let mut s = self.state.lock().unwrap();
        s.armed = true;
        s.elsewhere_only = true;
    }

    pub fn disarm(&self) {
        self.state.lock().unwrap().armed = false;
        self.changed.notify_all();
    }

    /// Lets one held (or the next) flush go.
    pub fn release_one(&self) {
        self.state.lock().unwrap().permits += 1;
        self.changed.notify_all();
    }

    /// Flushes waiting now.
    pub fn waiting(&self) -> u64 {
        self.state.lock().unwrap().waiting
    }

    /// Flushes begun so far, held or not.
    pub fn flushes(&self) -> u64 {
        self.state.lock().unwrap().flushes
    }

    fn pass(&self, elsewhere: bool) {
        let mut s = self.state.lock().unwrap();
        s.flushes += 1;
        if !s.armed || (s.elsewhere_only && !elsewhere) {
            return;
        }
        s.waiting += 1;
        while s.armed && s.permits == 0 {
            s = self.changed.wait(s).unwrap();
        }
        if s.armed {
            s.permits -= 1;
        }
        s.waiting -= 1;
    }
}

/// A log store whose flushes go through a [`FlushHold`].
pub struct HeldLog<L> {
    inner: L,
    hold: Arc<FlushHold>,
    /// Whether every flush is made on the driver's thread (no sync thread).
    on_driver: bool,
}

impl<L> HeldLog<L> {
    pub fn new(inner: L, hold: Arc<FlushHold>) -> Self {
        Self { inner, hold, on_driver: false }
    }

    /// A log the driver flushes on its own thread, as one whose segment is due to close.
    pub fn on_driver(inner: L, hold: Arc<FlushHold>) -> Self {
        Self { inner, hold, on_driver: true }
    }
}

impl<L: LogStore> LogStore for HeldLog<L> {
    fn append(&mut self, entries: &[Entry]) -> Result<(), LogStoreError> {
        self.inner.append(entries)
    }
    fn entries(&self, lo: u64, hi: u64, max: Option<u64>) -> Result<Vec<Entry>, LogStoreError> {
        self.inner.entries(lo, hi, max)
    }
    fn term(&self, index: u64) -> Result<u64, LogStoreError> {
        self.inner.term(index)
    }
    fn first_index(&self) -> u64 {
        self.inner.first_index()
    }
    fn last_index(&self) -> u64 {
        self.inner.last_index()
    }
    fn hard_state(&self) -> Result<HardState, LogStoreError> {
        self.inner.hard_state()
    }
    fn set_hard_state(&mut self, hs: &HardState) -> Result<(), LogStoreError> {
        self.inner.set_hard_state(hs)
    }
    fn conf_state(&self) -> Result<ConfState, LogStoreError> {
        self.inner.conf_state()
    }
    fn set_conf_state(&mut self, cs: &ConfState) -> Result<(), LogStoreError> {
        self.inner.set_conf_state(cs)
    }
    fn compact(&mut self, upto: u64) -> Result<(), LogStoreError> {
        self.inner.compact(upto)
    }
    fn snapshot_meta(&self) -> Result<SnapshotMetadata, LogStoreError> {
        self.inner.snapshot_meta()
    }
    fn set_snapshot_meta(&mut self, meta: &SnapshotMetadata) -> Result<(), LogStoreError> {
        self.inner.set_snapshot_meta(meta)
    }
    fn install_snapshot(&mut self, meta: &SnapshotMetadata) -> Result<(), LogStoreError> {
        self.inner.install_snapshot(meta)
    }
    fn flush(&mut self) -> Result<(), LogStoreError> {
        self.hold.pass(false);
        self.inner.flush()
    }
    fn begin_sync(&mut self) -> Result<Option<PendingSync>, LogStoreError> {
        if self.on_driver {
            return Ok(None);
        }
        let hold = self.hold.clone();
        Ok(self.inner.begin_sync()?.map(|sync| -> PendingSync {
            Box::new(move || {
                hold.pass(true);
                sync()
            })
        }))
    }
    fn size(&self) -> (u64, u64) {
        self.inner.size()
    }
}

pub fn trust_domain() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

/// A command whose effect is easy to observe: a join token named `name`.
pub fn token(name: &str) -> Command {
    Command::CreateJoinToken {
        token: JoinToken { token: name.into(), expires_at: 4_000_000_000 }.to_stored(),
        entry: None,
    }
}

pub fn config(id: NodeId) -> ClusterConfig {
    let mut c = ClusterConfig::new(id);
    c.tick_interval = Duration::from_millis(20);
    c.election_tick = 10;
    c.heartbeat_tick = 2;
    c
}

/// Polls `cond` until it holds, failing the test after [`WAIT`].
pub async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `handle`'s log reaches `index` (its last index; the entry need not be
/// durable or committed), failing the test with `what` after [`WAIT`].
pub async fn wait_logged(what: &str, handle: &ClusterHandle, index: u64) {
    let deadline = Instant::now() + WAIT;
    while handle.status().await.unwrap().last_index < index {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Retries `f` until it succeeds, failing the test after [`WAIT`].
pub async fn retry<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ProposeError>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => {
                assert!(Instant::now() < deadline, "timed out on {what}: last error {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// A deterministic hash of the replica's whole state: every snapshot chunk but the
/// trailer.
pub fn state_hash(store: &Store) -> u64 {
    let snap = store.export_snapshot(64 << 10).unwrap();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for c in snap.chunks.iter().filter(|c| !c.last) {
        c.payload.hash(&mut h);
    }
    h.finish()
}

/// Sends this test's tracing output to the test's captured output (shown on failure).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,raft=info".into()),
        )
        .with_test_writer()
        .try_init();
}

impl Harness {
    pub fn new() -> Self {
        init_tracing();
        Self {
            net: MemNetwork::new(tokio::runtime::Handle::current()),
            nodes: BTreeMap::new(),
            dirs: BTreeMap::new(),
            compact_log_bytes: 64 << 20,
            snapshot_pull_timeout: Duration::from_secs(60),
            max_size_per_msg: config(0).max_size_per_msg,
            election_tick: config(0).election_tick,
            sync_gap: config(0).sync_gap,
            holds: BTreeMap::new(),
        }
    }

    /// Starts replica `id` on its directory (made on first use).
    pub fn start(&mut self, id: NodeId, bootstrap: bool) {
        let dir = self.dirs.entry(id).or_insert_with(|| tempfile::tempdir().unwrap());
        let store = Store::open(dir.path(), StoreConfig::new(trust_domain())).unwrap();
        let hold = Arc::clone(self.holds.entry(id).or_default());
        let log = HeldLog::new(SledLogStore::open(&store).unwrap(), hold);
        let mut cfg = config(id);
        cfg.election_tick = self.election_tick;
        cfg.bootstrap = bootstrap;
        cfg.compact_log_bytes = self.compact_log_bytes;
        cfg.snapshot_pull_timeout = self.snapshot_pull_timeout;
        cfg.max_size_per_msg = self.max_size_per_msg;
        cfg.sync_gap = self.sync_gap;
        let handle = ward_cluster::start(Replica {
            config: cfg,
            store: store.clone(),
            log,
            transport: Some(self.net.transport(id)),
            snapshots: Some(self.net.snapshot_source(id)),
            runtime: tokio::runtime::Handle::current(),
        })
        .unwrap();
        self.net.register(id, handle.clone(), store.clone());
        self.nodes.insert(id, Node { store, handle });
    }

    /// The data directory of replica `id` (made by its first start).
    pub fn dir(&self, id: NodeId) -> &std::path::Path {
        self.dirs[&id].path()
    }

    /// Stops replica `id` and waits until its store is closed.
    pub async fn stop(&mut self, id: NodeId) {
        self.net.unregister(id);
        if let Some(node) = self.nodes.remove(&id) {
            node.handle.shutdown();
            assert_eq!(node.handle.stopped().await, Ok(()));
        }
    }

    /// Stops replica `id` and deletes its data directory.
    pub async fn wipe(&mut self, id: NodeId) {
        self.stop(id).await;
        self.dirs.remove(&id);
    }

    /// Bootstraps replica 1 and adds `2..=n` as voters.
    pub async fn cluster(n: u64) -> Self {
        let mut h = Self::new();
        h.form(n).await;
        h
    }

    /// [`Harness::cluster`] with elections five times slower (1–2 s), for tests that count
    /// messages to one leader or flushes per write: a loaded machine's stall of a few
    /// hundred milliseconds then does not move the leadership under them.
    pub async fn steady(n: u64) -> Self {
        let mut h = Self::new();
        h.election_tick = 50;
        h.form(n).await;
        h
    }

    /// Bootstraps replica 1 and adds `2..=n` as voters, with this harness's settings.
    pub async fn form(&mut self, n: u64) {
        self.start(1, true);
        self.wait_leader().await;
        for id in 2..=n {
            self.start(id, false);
            self.add_voter(id).await;
        }
    }

    /// Adds `id` as a voter through whichever replica leads at the time.
    pub async fn add_voter(&self, id: NodeId) {
        retry("adding a voter", || {
            let handle = self.self_leader().map(|l| self.nodes[&l].handle.clone());
            async move {
                match handle {
                    Some(h) => h.change_membership(MembershipChange::AddVoter(id)).await,
                    None => Err(ProposeError::NotLeader { leader_hint: None }),
                }
            }
        })
        .await;
        wait_for("the new voter to know the leader", || self.nodes[&id].handle.leader().is_some())
            .await;
    }

    /// A running replica that considers itself leader (the one with the highest term).
    pub fn self_leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter(|(id, n)| n.handle.leader() == Some(**id))
            .max_by_key(|(_, n)| n.handle.term())
            .map(|(id, _)| *id)
    }

    /// Waits until every running replica agrees on one leader that is running, and
    /// returns it.
    pub async fn wait_leader(&self) -> NodeId {
        let deadline = Instant::now() + WAIT;
        loop {
            let leaders: Vec<Option<NodeId>> =
                self.nodes.values().map(|n| n.handle.leader()).collect();
            if let Some(Some(l)) = leaders.first()
                && leaders.iter().all(|x| *x == Some(*l))
                && self.nodes.contains_key(l)
            {
                return *l;
            }
            assert!(Instant::now() < deadline, "no agreed leader: {leaders:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Proposes through replica `via`, retrying while there is no leader.
    pub async fn propose(&self, via: NodeId, cmd: Command) -> Applied {
        let handle = self.nodes[&via].handle.clone();
        retry("a proposal", || {
            let handle = handle.clone();
            let cmd = cmd.clone();
            async move { handle.propose(cmd).await }
        })
        .await
    }

    /// Waits until every running replica has applied at least `index`.
    pub async fn wait_applied(&self, index: u64) {
        for (id, n) in &self.nodes {
            wait_for(&format!("replica {id} to apply {index}"), || n.store.last_applied() >= index)
                .await;
        }
    }

    /// Waits until all running replicas have applied the same index and asserts that
    /// their states hash equal.
    pub async fn assert_converged(&self) {
        let deadline = Instant::now() + WAIT;
        loop {
            let applied: Vec<u64> = self.nodes.values().map(|n| n.store.last_applied()).collect();
            let commit = self.nodes.values().map(|n| n.handle.commit()).max().unwrap_or(0);
            if applied.iter().all(|a| *a == applied[0] && *a >= commit) {
                break;
            }
            assert!(Instant::now() < deadline, "replicas did not converge: applied {applied:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let hashes: Vec<(NodeId, u64)> =
            self.nodes.iter().map(|(id, n)| (*id, state_hash(&n.store))).collect();
        assert!(hashes.iter().all(|(_, h)| *h == hashes[0].1), "state hashes differ: {hashes:?}");
    }
}
