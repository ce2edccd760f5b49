//! The driver: one thread owns the replica's `RawNode` and does everything raft needs —
//! ticks, inbound messages, proposals, and the ready/advance cycle with persistence,
//! sending and apply — talking to the rest of the process over a channel.
//!
//! # One ready cycle
//!
//! The loop waits for a request or the next tick, then drains every request already
//! queued (so proposals that arrive together share one cycle and one flush: group
//! commit), then handles one `Ready`:
//! 1. a snapshot, if raft has one to install: the state is pulled from the replica that sent
//!    it (a [`SnapshotSource`]) and imported into the store, then the log is reset to it;
//! 2. new entries are appended and the hard state stored, then the database is flushed;
//! 3. only then are the ready's messages sent (votes, appends and their answers never leave
//!    before what they promise is durable);
//! 4. committed entries go to the store; each proposal's waiter is answered with its own
//!    apply result, by request id, on every replica that holds one;
//! 5. `advance`, and the same for the light ready's commit, messages and entries.
//!
//! An error from the store or the log stops the driver for good: every waiter gets
//! [`ProposeError::Fatal`], and [`ClusterHandle::stopped`] resolves with the reason so
//! the process can exit non-zero (a restart replays the log).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use protobuf::Message as _;
use raft::eraftpb::{ConfChangeV2, ConfState, Entry, EntryType, Message, MessageType, Snapshot};
use raft::{RawNode, StateRole, Storage as _};
use tokio::sync::{oneshot, watch};
use ward_store::{Applied, Command, Committed, Store, StoreError};

use crate::apply;
use crate::error::{InboundError, ProposeError};
use crate::log_store::{LogStore, LogStoreError};
use crate::storage::RaftStorage;
use crate::transport::{NodeId, SnapshotDescriptor, SnapshotSource, Transport};

/// Settings of one replica's driver.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This replica's id (not 0).
    pub node_id: NodeId,
    /// Time between raft ticks. Default 100 ms.
    pub tick_interval: Duration,
    /// Ticks without a leader's word before a follower campaigns. Default 10.
    pub election_tick: usize,
    /// Ticks between a leader's heartbeats. Default 2.
    pub heartbeat_tick: usize,
    /// When the log is empty, start a new one-member cluster with this replica as its
    /// only voter (otherwise wait to be added by an existing cluster).
    pub bootstrap: bool,
    /// How long a proposal may wait to be applied here. Default 10 s.
    pub propose_timeout: Duration,
    /// How long a proposal that is not yet in the log waits before it is proposed again
    /// with the same request id. Default 1 s.
    pub repropose_after: Duration,
    /// Compact the log once the entries it holds exceed this many bytes. Default 64 MiB.
    pub compact_log_bytes: u64,
    /// Largest append message in bytes. Default 1 MiB.
    pub max_size_per_msg: u64,
    /// Appends in flight per follower. Default 256.
    pub max_inflight_msgs: usize,
}

impl ClusterConfig {
    /// Defaults for replica `node_id`.
    pub fn new(node_id: NodeId) -> Self {
        Self {
            node_id,
            tick_interval: Duration::from_millis(100),
            election_tick: 10,
            heartbeat_tick: 2,
            bootstrap: false,
            propose_timeout: Duration::from_secs(10),
            repropose_after: Duration::from_secs(1),
            compact_log_bytes: 64 << 20,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
        }
    }
}

/// Why a replica could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The log store could not be read or initialised.
    #[error(transparent)]
    Log(#[from] LogStoreError),
    /// raft refused the configuration or the stored state.
    #[error("raft: {0}")]
    Raft(String),
    /// The driver thread could not be spawned.
    #[error("spawning the driver thread: {0}")]
    Thread(String),
}

/// The role of this replica as last seen by the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Asks for votes.
    Candidate,
    /// Pre-vote phase.
    PreCandidate,
    /// Orders proposals.
    Leader,
}

/// A follower's replication progress as the leader tracks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerProgress {
    /// The peer.
    pub node_id: NodeId,
    /// Highest index known to be replicated there.
    pub matched: u64,
    /// Whether it is a learner.
    pub learner: bool,
}

/// A snapshot of the replica's raft state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStatus {
    /// This replica.
    pub node_id: NodeId,
    /// Its role.
    pub role: Role,
    /// The current term.
    pub term: u64,
    /// The leader it knows of.
    pub leader_id: Option<NodeId>,
    /// Highest committed index.
    pub commit: u64,
    /// Highest index applied to the store.
    pub applied: u64,
    /// First index held in the log.
    pub first_index: u64,
    /// Last index held in the log.
    pub last_index: u64,
    /// Term of the last entry in the log.
    pub last_term: u64,
    /// Voters.
    pub voters: Vec<NodeId>,
    /// Learners.
    pub learners: Vec<NodeId>,
    /// Per-peer progress (only on the leader).
    pub progress: Vec<PeerProgress>,
    /// Index of the last snapshot taken or installed.
    pub snapshot_index: u64,
}

/// A membership change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MembershipChange {
    /// Add a replica as a learner (receives the log, does not vote).
    AddLearner(NodeId),
    /// Make a replica a voter (or add it as one).
    AddVoter(NodeId),
    /// Remove a replica.
    Remove(NodeId),
}

enum Request {
    Propose { request_id: u128, data: Vec<u8>, deadline: Instant, reply: Reply },
    Raft(Box<Message>),
    ReadIndex { deadline: Instant, reply: oneshot::Sender<Result<u64, ProposeError>> },
    Unreachable(NodeId),
    Status(oneshot::Sender<ClusterStatus>),
    ChangeMembership { change: MembershipChange, deadline: Instant, reply: IndexReply },
    TransferLeader(NodeId),
    Campaign,
    Shutdown,
}

type Reply = oneshot::Sender<Result<Applied, ProposeError>>;
type IndexReply = oneshot::Sender<Result<u64, ProposeError>>;

/// Shared figures readable without a round trip to the driver.
#[derive(Debug, Default)]
struct Shared {
    leader: AtomicU64,
    term: AtomicU64,
    applied: AtomicU64,
    commit: AtomicU64,
    /// Requests sent to the driver and not yet taken by it.
    queued: AtomicU64,
    /// Nanoseconds spent persisting (append, hard state, flush), applying, and the number
    /// of ready cycles and flushes.
    persist_ns: AtomicU64,
    apply_ns: AtomicU64,
    readies: AtomicU64,
    flushes: AtomicU64,
}

/// Where the driver's time went since it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DriverTimings {
    /// Time appending entries, storing the hard state and flushing.
    pub persist: Duration,
    /// Time applying committed entries to the store.
    pub apply: Duration,
    /// Ready cycles handled.
    pub readies: u64,
    /// Flushes of the log.
    pub flushes: u64,
}

/// A handle on a running replica. Cheap to clone.
#[derive(Clone)]
pub struct ClusterHandle {
    node_id: NodeId,
    tx: mpsc::Sender<Request>,
    shared: Arc<Shared>,
    stopped: watch::Receiver<Option<Result<(), String>>>,
    propose_timeout: Duration,
}

impl std::fmt::Debug for ClusterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterHandle").field("node_id", &self.node_id).finish()
    }
}

impl ClusterHandle {
    /// This replica's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    fn stop_error(&self) -> ProposeError {
        match &*self.stopped.borrow() {
            Some(Err(reason)) => ProposeError::Fatal(reason.clone()),
            _ => ProposeError::ShuttingDown,
        }
    }

    fn enqueue(&self, req: Request) -> bool {
        self.shared.queued.fetch_add(1, Ordering::AcqRel);
        if self.tx.send(req).is_err() {
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    fn send(&self, req: Request) -> Result<(), ProposeError> {
        if self.enqueue(req) { Ok(()) } else { Err(self.stop_error()) }
    }

    /// Requests (proposals, messages, reads) queued for the driver and not yet taken.
    pub fn queued(&self) -> u64 {
        self.shared.queued.load(Ordering::Acquire)
    }

    /// Proposes `cmd` under a fresh request id and resolves with its apply result on this
    /// replica, within the configured proposal timeout.
    pub async fn propose(&self, cmd: Command) -> Result<Applied, ProposeError> {
        self.propose_until(cmd, Instant::now() + self.propose_timeout).await
    }

    /// [`ClusterHandle::propose`] with an explicit deadline.
    pub async fn propose_until(
        &self,
        cmd: Command,
        deadline: Instant,
    ) -> Result<Applied, ProposeError> {
        let request_id = uuid::Uuid::new_v4().as_u128();
        let data = apply::encode_entry(request_id, cmd);
        let (reply, rx) = oneshot::channel();
        self.send(Request::Propose { request_id, data, deadline, reply })?;
        rx.await.unwrap_or_else(|_| Err(self.stop_error()))
    }

    /// A read index: resolves with an index at or after every write acknowledged anywhere
    /// before the call, once this replica has applied up to it. A read made after this
    /// resolves sees those writes.
    pub async fn read_index(&self) -> Result<u64, ProposeError> {
        let (reply, rx) = oneshot::channel();
        let deadline = Instant::now() + self.propose_timeout;
        self.send(Request::ReadIndex { deadline, reply })?;
        rx.await.unwrap_or_else(|_| Err(self.stop_error()))
    }

    /// Hands the driver a raft message (raft's encoding) that arrived from replica
    /// `authenticated`, as the transport proved it. The message is decoded here and
    /// refused unless its sender is that replica and its recipient is this one.
    ///
    /// # Errors
    /// [`InboundError`] naming why it was refused.
    pub fn receive(&self, authenticated: NodeId, bytes: &[u8]) -> Result<(), InboundError> {
        let msg =
            Message::parse_from_bytes(bytes).map_err(|e| InboundError::Malformed(e.to_string()))?;
        if msg.from != authenticated {
            return Err(InboundError::WrongSender { claimed: msg.from, authenticated });
        }
        if msg.to != self.node_id {
            return Err(InboundError::WrongRecipient { to: msg.to, me: self.node_id });
        }
        if self.enqueue(Request::Raft(Box::new(msg))) {
            Ok(())
        } else {
            Err(InboundError::ShuttingDown)
        }
    }

    /// Tells raft that messages to `peer` could not be delivered (it slows down replication
    /// to that peer until it answers again).
    pub fn report_unreachable(&self, peer: NodeId) {
        self.enqueue(Request::Unreachable(peer));
    }

    /// The replica's current raft state.
    pub async fn status(&self) -> Result<ClusterStatus, ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Status(reply))?;
        rx.await.map_err(|_| self.stop_error())
    }

    /// Proposes a membership change and resolves once it is applied here.
    pub async fn change_membership(&self, change: MembershipChange) -> Result<u64, ProposeError> {
        let (reply, rx) = oneshot::channel();
        let deadline = Instant::now() + self.propose_timeout;
        self.send(Request::ChangeMembership { change, deadline, reply })?;
        rx.await.unwrap_or_else(|_| Err(self.stop_error()))
    }

    /// Asks the leader to hand leadership to `to` (a caught-up voter).
    pub fn transfer_leader(&self, to: NodeId) -> Result<(), ProposeError> {
        self.send(Request::TransferLeader(to))
    }

    /// Starts an election on this replica now (tests and operator tooling).
    pub fn campaign(&self) -> Result<(), ProposeError> {
        self.send(Request::Campaign)
    }

    /// The leader this replica knows of.
    pub fn leader(&self) -> Option<NodeId> {
        match self.shared.leader.load(Ordering::Acquire) {
            0 => None,
            id => Some(id),
        }
    }

    /// The current term as last seen.
    pub fn term(&self) -> u64 {
        self.shared.term.load(Ordering::Acquire)
    }

    /// Highest index applied to the store.
    pub fn applied(&self) -> u64 {
        self.shared.applied.load(Ordering::Acquire)
    }

    /// Highest committed index known here.
    pub fn commit(&self) -> u64 {
        self.shared.commit.load(Ordering::Acquire)
    }

    /// Where the driver's time went: persisting the log versus applying to the store.
    pub fn timings(&self) -> DriverTimings {
        let s = &self.shared;
        DriverTimings {
            persist: Duration::from_nanos(s.persist_ns.load(Ordering::Relaxed)),
            apply: Duration::from_nanos(s.apply_ns.load(Ordering::Relaxed)),
            readies: s.readies.load(Ordering::Relaxed),
            flushes: s.flushes.load(Ordering::Relaxed),
        }
    }

    /// Stops the driver; pending proposals get [`ProposeError::ShuttingDown`].
    pub fn shutdown(&self) {
        self.enqueue(Request::Shutdown);
    }

    /// Resolves when the driver has stopped: `Ok` after a shutdown, `Err(reason)` after a
    /// fatal error.
    pub async fn stopped(&self) -> Result<(), String> {
        let mut rx = self.stopped.clone();
        loop {
            if let Some(result) = rx.borrow_and_update().clone() {
                return result;
            }
            if rx.changed().await.is_err() {
                return Err("driver vanished".into());
            }
        }
    }
}

/// The pieces a replica runs with.
pub struct Replica<L> {
    /// Settings.
    pub config: ClusterConfig,
    /// The state machine.
    pub store: Store,
    /// The raft log (usually a [`crate::SledLogStore`] over `store`).
    pub log: L,
    /// Where messages to other replicas go; `None` for a one-member cluster.
    pub transport: Option<Arc<dyn Transport>>,
    /// Where snapshots are pulled from; `None` for a one-member cluster.
    pub snapshots: Option<Arc<dyn SnapshotSource>>,
    /// A runtime for snapshot transfers (the driver itself runs on its own thread).
    pub runtime: tokio::runtime::Handle,
}

struct Waiter {
    deadline: Instant,
    reply: Reply,
    /// The envelope, kept to propose it again if it never reached a log.
    data: Vec<u8>,
    /// When it was last handed to raft (None: raft dropped it, no leader).
    proposed_at: Option<Instant>,
}

struct ReadWaiter {
    deadline: Instant,
    reply: oneshot::Sender<Result<u64, ProposeError>>,
    /// The read index, once raft answered.
    index: Option<u64>,
}

/// Starts the replica's driver thread.
///
/// When the log is empty and `config.bootstrap` is set, the log starts at the store's
/// applied index with this replica as the only voter (an existing single-server data
/// directory becomes a one-member cluster without replaying anything).
///
/// # Errors
/// [`StartError`] if the stored state cannot be read or raft refuses it.
pub fn start<L: LogStore>(replica: Replica<L>) -> Result<ClusterHandle, StartError> {
    let Replica { config, store, mut log, transport, snapshots, runtime } = replica;
    let id = config.node_id;
    let store_applied = store.last_applied();
    let mut hs = log.hard_state()?;
    let fresh = log.last_index() == 0 && hs.term == 0 && log.conf_state()?.voters.is_empty();
    if fresh && config.bootstrap {
        // The log starts right after the store's state, with one committed entry that
        // makes this replica the only voter: replicas added later learn the first
        // membership from the log (or from a snapshot) like every later change.
        let mut meta = raft::eraftpb::SnapshotMetadata {
            index: store_applied,
            term: u64::from(store_applied > 0),
            ..Default::default()
        };
        meta.mut_conf_state().voters = vec![id];
        log.install_snapshot(&meta)?;
        let first = Entry {
            entry_type: EntryType::EntryConfChangeV2,
            index: store_applied + 1,
            term: 1,
            data: membership_change(MembershipChange::AddVoter(id))
                .write_to_bytes()
                .map_err(|e| StartError::Raft(e.to_string()))?
                .into(),
            ..Default::default()
        };
        log.append(&[first])?;
        hs.term = 1;
        hs.commit = store_applied + 1;
        log.set_hard_state(&hs)?;
        log.flush()?;
        tracing::info!(
            node_id = id,
            index = store_applied + 1,
            "bootstrapped a one-member cluster"
        );
    } else if store_applied < log.first_index().saturating_sub(1)
        || store_applied > log.last_index()
    {
        // The state does not match the log (a crash between a snapshot's import and the
        // log's reset, or a wiped store): keep term and vote, forget the log, and let the
        // leader send a snapshot.
        tracing::warn!(
            node_id = id,
            applied = store_applied,
            first_index = log.first_index(),
            last_index = log.last_index(),
            "the raft log does not match the applied state; waiting for a snapshot"
        );
        log.install_snapshot(&raft::eraftpb::SnapshotMetadata::default())?;
        hs.commit = 0;
        log.set_hard_state(&hs)?;
        log.flush()?;
    }
    let mut hs = log.hard_state()?;
    let last = log.last_index();
    // Applied entries were committed; a commit mark behind them was not yet rewritten.
    if store_applied > hs.commit && store_applied <= last {
        hs.commit = store_applied;
        log.set_hard_state(&hs)?;
    }
    let applied = store_applied.min(hs.commit);
    let applied_term = log.term(applied).unwrap_or(0);
    let storage = RaftStorage::new(log, (applied, applied_term))?;
    let raft_config = raft::Config {
        id,
        election_tick: config.election_tick,
        heartbeat_tick: config.heartbeat_tick,
        applied,
        max_size_per_msg: config.max_size_per_msg,
        max_inflight_msgs: config.max_inflight_msgs,
        check_quorum: true,
        pre_vote: true,
        ..Default::default()
    };
    raft_config.validate().map_err(|e| StartError::Raft(e.to_string()))?;
    let logger = crate::logger::raft_logger(id);
    let raw = RawNode::new(&raft_config, storage, &logger)
        .map_err(|e| StartError::Raft(e.to_string()))?;

    let (tx, rx) = mpsc::channel();
    let shared = Arc::new(Shared::default());
    let (stop_tx, stop_rx) = watch::channel(None);
    let handle = ClusterHandle {
        node_id: id,
        tx,
        shared: shared.clone(),
        stopped: stop_rx,
        propose_timeout: config.propose_timeout,
    };
    let driver = Driver {
        raw,
        store,
        config,
        transport,
        snapshots,
        runtime,
        shared,
        waiters: HashMap::new(),
        reads: HashMap::new(),
        next_read: 1,
        membership: HashMap::new(),
        snapshot_from: None,
        last_leader: None,
    };
    driver.publish();
    std::thread::Builder::new()
        .name(format!("raft-{id}"))
        .spawn(move || {
            let mut driver = driver;
            let result = driver.run(rx);
            driver.finish(&result);
            // The store and log close before anyone is told the replica stopped.
            drop(driver);
            let _ = stop_tx.send(Some(result));
        })
        .map_err(|e| StartError::Thread(e.to_string()))?;
    Ok(handle)
}

fn add_elapsed(counter: &AtomicU64, since: Instant) {
    let ns = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
    counter.fetch_add(ns, Ordering::Relaxed);
}

/// raft's form of a membership change.
fn membership_change(change: MembershipChange) -> ConfChangeV2 {
    use raft::eraftpb::{ConfChangeSingle, ConfChangeType};
    let (kind, node) = match change {
        MembershipChange::AddLearner(n) => (ConfChangeType::AddLearnerNode, n),
        MembershipChange::AddVoter(n) => (ConfChangeType::AddNode, n),
        MembershipChange::Remove(n) => (ConfChangeType::RemoveNode, n),
    };
    let mut single = ConfChangeSingle::default();
    single.set_change_type(kind);
    single.node_id = node;
    let mut cc = ConfChangeV2::default();
    cc.mut_changes().push(single);
    cc
}

/// Why the loop stopped on an error.
#[derive(Debug, thiserror::Error)]
enum Fatal {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("raft log: {0}")]
    Log(#[from] LogStoreError),
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error("snapshot: {0}")]
    Snapshot(String),
    #[error("log entry: {0}")]
    Entry(String),
}

struct Driver<L: LogStore> {
    raw: RawNode<RaftStorage<L>>,
    store: Store,
    config: ClusterConfig,
    transport: Option<Arc<dyn Transport>>,
    snapshots: Option<Arc<dyn SnapshotSource>>,
    runtime: tokio::runtime::Handle,
    shared: Arc<Shared>,
    waiters: HashMap<u128, Waiter>,
    reads: HashMap<u64, ReadWaiter>,
    next_read: u64,
    /// Membership changes by the request id in their context.
    membership: HashMap<u128, (Instant, IndexReply)>,
    /// The replica that sent the snapshot raft is about to hand us.
    snapshot_from: Option<NodeId>,
    last_leader: Option<NodeId>,
}

/// How many queued requests one cycle takes at most before handling a ready.
const DRAIN_LIMIT: usize = 4096;

impl<L: LogStore> Driver<L> {
    fn run(&mut self, rx: mpsc::Receiver<Request>) -> Result<(), String> {
        let tick = self.config.tick_interval;
        let mut next_tick = Instant::now() + tick;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            let first = match rx.recv_timeout(wait) {
                Ok(req) => Some(req),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            };
            let mut stop = false;
            let mut pending = first.into_iter().chain(std::iter::from_fn(|| rx.try_recv().ok()));
            for req in pending.by_ref().take(DRAIN_LIMIT) {
                self.shared.queued.fetch_sub(1, Ordering::AcqRel);
                if self.handle(req).map_err(|e| e.to_string())? {
                    stop = true;
                    break;
                }
            }
            if stop {
                return Ok(());
            }
            let now = Instant::now();
            if now >= next_tick {
                self.raw.tick();
                next_tick = now + tick;
                self.on_tick(now);
            }
            self.on_ready().map_err(|e| e.to_string())?;
            self.publish();
        }
    }

    /// Handles one request; `true` means stop.
    fn handle(&mut self, req: Request) -> Result<bool, Fatal> {
        match req {
            Request::Propose { request_id, data, deadline, reply } => {
                let mut w = Waiter { deadline, reply, data, proposed_at: None };
                self.try_propose(request_id, &mut w);
                self.waiters.insert(request_id, w);
            }
            Request::Raft(mut msg) => {
                match msg.get_msg_type() {
                    MessageType::MsgSnapshot => self.snapshot_from = Some(msg.from),
                    // A leader that still counts entries this replica lost (its data was
                    // wiped) announces a commit beyond this log; commit only what is here,
                    // answer, and let the leader find the real match.
                    MessageType::MsgHeartbeat
                        if msg.commit > self.raw.raft.raft_log.last_index() =>
                    {
                        tracing::warn!(
                            node_id = self.config.node_id,
                            commit = msg.commit,
                            last_index = self.raw.raft.raft_log.last_index(),
                            "leader's commit is past this log; was this replica's data lost?"
                        );
                        msg.commit = self.raw.raft.raft_log.last_index();
                    }
                    _ => {}
                }
                // A message from an unknown term or a stale peer is refused by raft itself;
                // that is routine, not an error of this replica.
                if let Err(e) = self.raw.step(*msg) {
                    tracing::debug!(node_id = self.config.node_id, error = %e, "raft refused a message");
                }
            }
            Request::ReadIndex { deadline, reply } => {
                let ctx = self.next_read;
                self.next_read += 1;
                self.raw.read_index(ctx.to_be_bytes().to_vec());
                self.reads.insert(ctx, ReadWaiter { deadline, reply, index: None });
            }
            Request::Unreachable(peer) => self.raw.report_unreachable(peer),
            Request::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Request::ChangeMembership { change, deadline, reply } => {
                self.propose_membership(change, deadline, reply);
            }
            Request::TransferLeader(to) => self.raw.transfer_leader(to),
            Request::Campaign => {
                if let Err(e) = self.raw.campaign() {
                    tracing::warn!(node_id = self.config.node_id, error = %e, "campaign refused");
                }
            }
            Request::Shutdown => return Ok(true),
        }
        Ok(false)
    }

    fn try_propose(&mut self, request_id: u128, w: &mut Waiter) {
        match self.raw.propose(Vec::new(), w.data.clone()) {
            Ok(()) => w.proposed_at = Some(Instant::now()),
            Err(raft::Error::ProposalDropped) => w.proposed_at = None,
            Err(e) => {
                tracing::warn!(node_id = self.config.node_id, error = %e, request_id, "proposal refused");
                w.proposed_at = None;
            }
        }
    }

    fn propose_membership(
        &mut self,
        change: MembershipChange,
        deadline: Instant,
        reply: IndexReply,
    ) {
        let cc = membership_change(change);
        let request_id = uuid::Uuid::new_v4().as_u128();
        match self.raw.propose_conf_change(request_id.to_be_bytes().to_vec(), cc) {
            Ok(()) => {
                self.membership.insert(request_id, (deadline, reply));
            }
            Err(raft::Error::ProposalDropped) => {
                let _ = reply.send(Err(ProposeError::NotLeader { leader_hint: self.leader() }));
            }
            Err(e) => {
                let _ = reply.send(Err(ProposeError::Fatal(e.to_string())));
            }
        }
    }

    fn leader(&self) -> Option<NodeId> {
        match self.raw.raft.leader_id {
            0 => None,
            id => Some(id),
        }
    }

    /// Deadlines, and proposing again what raft dropped for want of a leader.
    fn on_tick(&mut self, now: Instant) {
        let leader = self.leader();
        if leader != self.last_leader {
            tracing::info!(node_id = self.config.node_id, leader = ?leader, term = self.raw.raft.term, "leader changed");
            self.last_leader = leader;
        }
        let expired: Vec<u128> =
            self.waiters.iter().filter(|(_, w)| w.deadline <= now).map(|(id, _)| *id).collect();
        for id in expired {
            if let Some(w) = self.waiters.remove(&id) {
                let err = match (leader, w.proposed_at) {
                    (None, _) | (_, None) => ProposeError::NotLeader { leader_hint: leader },
                    _ => ProposeError::Timeout,
                };
                let _ = w.reply.send(Err(err));
            }
        }
        self.membership.retain(|_, (deadline, _)| *deadline > now);
        let expired_reads: Vec<u64> =
            self.reads.iter().filter(|(_, r)| r.deadline <= now).map(|(k, _)| *k).collect();
        for k in expired_reads {
            if let Some(r) = self.reads.remove(&k) {
                let err = match leader {
                    None => ProposeError::NotLeader { leader_hint: None },
                    Some(_) => ProposeError::Timeout,
                };
                let _ = r.reply.send(Err(err));
            }
        }
        if leader.is_some() {
            // Not in any log yet (raft dropped it for want of a leader), or handed to raft
            // long enough ago that it was probably lost with a leader change: propose it
            // again under the same request id; the store applies a request id once.
            let again = self.config.repropose_after;
            let retry: Vec<u128> = self
                .waiters
                .iter()
                .filter(|(_, w)| w.proposed_at.is_none_or(|t| now.duration_since(t) >= again))
                .map(|(id, _)| *id)
                .collect();
            for id in retry {
                if let Some(mut w) = self.waiters.remove(&id) {
                    self.try_propose(id, &mut w);
                    self.waiters.insert(id, w);
                }
            }
            // Reads that raft dropped (no leader at the time) are asked again.
            let unanswered: Vec<u64> =
                self.reads.iter().filter(|(_, r)| r.index.is_none()).map(|(k, _)| *k).collect();
            for k in unanswered {
                self.raw.read_index(k.to_be_bytes().to_vec());
            }
        }
    }

    fn send(&self, msgs: Vec<Message>) {
        let Some(transport) = &self.transport else { return };
        let mut by_peer: HashMap<NodeId, Vec<Bytes>> = HashMap::new();
        for m in msgs {
            match m.write_to_bytes() {
                Ok(b) => by_peer.entry(m.to).or_default().push(Bytes::from(b)),
                Err(e) => {
                    tracing::error!(node_id = self.config.node_id, error = %e, "encoding a raft message")
                }
            }
        }
        for (to, batch) in by_peer {
            transport.send(to, batch);
        }
    }

    fn on_ready(&mut self) -> Result<(), Fatal> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut rd = self.raw.ready();
        if !rd.snapshot().is_empty() {
            let snap = rd.snapshot().clone();
            self.install_snapshot(&snap)?;
        }
        self.shared.readies.fetch_add(1, Ordering::Relaxed);
        let persist_start = Instant::now();
        let mut dirty = false;
        if !rd.entries().is_empty() {
            self.raw.mut_store().log.append(rd.entries())?;
            dirty = true;
        }
        if let Some(hs) = rd.hs() {
            self.raw.mut_store().log.set_hard_state(hs)?;
            dirty = true;
        }
        if dirty || rd.must_sync() {
            self.raw.mut_store().log.flush()?;
            self.shared.flushes.fetch_add(1, Ordering::Relaxed);
        }
        add_elapsed(&self.shared.persist_ns, persist_start);
        self.send(rd.take_messages());
        self.send(rd.take_persisted_messages());
        self.apply(rd.take_committed_entries())?;
        for rs in rd.take_read_states() {
            self.on_read_state(&rs.request_ctx, rs.index);
        }
        let mut light = self.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            let mut hs = self.raw.store().log.hard_state()?;
            hs.commit = commit;
            self.raw.mut_store().log.set_hard_state(&hs)?;
        }
        self.send(light.take_messages());
        self.apply(light.take_committed_entries())?;
        self.raw.advance_apply();
        self.resolve_reads();
        self.maybe_compact()?;
        Ok(())
    }

    fn on_read_state(&mut self, ctx: &[u8], index: u64) {
        let Ok(key) = <[u8; 8]>::try_from(ctx).map(u64::from_be_bytes) else { return };
        if let Some(r) = self.reads.get_mut(&key) {
            r.index = Some(index);
        }
    }

    fn resolve_reads(&mut self) {
        let applied = self.raw.store().applied.0;
        let done: Vec<u64> = self
            .reads
            .iter()
            .filter(|(_, r)| r.index.is_some_and(|i| i <= applied))
            .map(|(k, _)| *k)
            .collect();
        for k in done {
            if let Some(r) = self.reads.remove(&k) {
                let _ = r.reply.send(Ok(r.index.unwrap_or(applied)));
            }
        }
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), Fatal> {
        if entries.is_empty() {
            return Ok(());
        }
        // Membership changes take effect in raft first (they decide who votes); the store
        // records each with the membership it results in, in the same batch as the
        // commands around it.
        let mut memberships: Vec<Option<Vec<u8>>> = Vec::with_capacity(entries.len());
        for e in &entries {
            let cs = match e.get_entry_type() {
                EntryType::EntryConfChangeV2 => {
                    let cc = ConfChangeV2::parse_from_bytes(&e.data)
                        .map_err(|err| Fatal::Entry(format!("bad membership change: {err}")))?;
                    Some(self.raw.apply_conf_change(&cc)?)
                }
                EntryType::EntryConfChange => {
                    let cc = raft::eraftpb::ConfChange::parse_from_bytes(&e.data)
                        .map_err(|err| Fatal::Entry(format!("bad membership change: {err}")))?;
                    Some(self.raw.apply_conf_change(&cc)?)
                }
                EntryType::EntryNormal => None,
            };
            memberships.push(match cs {
                Some(cs) => {
                    let bytes = cs.write_to_bytes().map_err(|err| Fatal::Entry(err.to_string()))?;
                    self.conf_changed(cs, &e.context, e.index)?;
                    Some(bytes)
                }
                None => None,
            });
        }
        let items: Vec<Committed<'_>> = entries
            .iter()
            .zip(&memberships)
            .map(|(e, cs)| match cs {
                Some(conf_state) => {
                    Committed::Membership { index: e.index, term: e.term, conf_state }
                }
                None if e.data.is_empty() => Committed::Empty { index: e.index, term: e.term },
                None => Committed::Entry { index: e.index, term: e.term, data: &e.data },
            })
            .collect();
        let apply_start = Instant::now();
        let done = self.store.apply_committed(&items)?;
        add_elapsed(&self.shared.apply_ns, apply_start);
        if let Some(last) = entries.last() {
            self.raw.mut_store().applied = (last.index, last.term);
        }
        for d in done {
            // A duplicate's proposer was answered by the entry that applied it first.
            if let Ok(applied) = d.result
                && let Some(w) = self.waiters.remove(&d.request_id)
            {
                let _ = w.reply.send(Ok(applied));
            }
        }
        Ok(())
    }

    fn conf_changed(&mut self, cs: ConfState, ctx: &[u8], index: u64) -> Result<(), Fatal> {
        tracing::info!(node_id = self.config.node_id, index, voters = ?cs.voters, learners = ?cs.learners, "membership changed");
        self.raw.mut_store().log.set_conf_state(&cs)?;
        self.raw.mut_store().applied_conf = cs;
        if let Ok(id) = <[u8; 16]>::try_from(ctx).map(u128::from_be_bytes)
            && let Some((_, reply)) = self.membership.remove(&id)
        {
            let _ = reply.send(Ok(index));
        }
        Ok(())
    }

    /// Pulls the state a snapshot message names and installs it, then resets the log.
    fn install_snapshot(&mut self, snap: &Snapshot) -> Result<(), Fatal> {
        let meta = snap.get_metadata().clone();
        let descriptor =
            SnapshotDescriptor::decode(&snap.data).map_err(|e| Fatal::Snapshot(e.to_string()))?;
        tracing::info!(
            node_id = self.config.node_id,
            index = meta.index,
            term = meta.term,
            "installing a snapshot"
        );
        if self.store.last_applied() < meta.index {
            self.pull_snapshot(&descriptor, &meta)?;
        }
        self.raw.mut_store().log.install_snapshot(&meta)?;
        self.raw.mut_store().log.flush()?;
        self.raw.mut_store().applied = (meta.index, meta.term);
        self.raw.mut_store().applied_conf = meta.get_conf_state().clone();
        Ok(())
    }

    fn pull_snapshot(
        &mut self,
        descriptor: &SnapshotDescriptor,
        meta: &raft::eraftpb::SnapshotMetadata,
    ) -> Result<(), Fatal> {
        let Some(source) = self.snapshots.clone() else {
            return Err(Fatal::Snapshot("no snapshot source configured".into()));
        };
        // Any replica that has applied that far can serve it: the sender first, then
        // the other members.
        let mut candidates: Vec<NodeId> = self.snapshot_from.into_iter().collect();
        let cs = meta.get_conf_state();
        for id in cs.voters.iter().chain(cs.learners.iter()) {
            if *id != self.config.node_id && !candidates.contains(id) {
                candidates.push(*id);
            }
        }
        let deadline = Instant::now() + SNAPSHOT_PULL_DEADLINE;
        let mut last_error = String::from("no replica to pull from");
        let mut attempt = 0u32;
        while Instant::now() < deadline {
            for from in &candidates {
                let fut = source.fetch(*from, *descriptor);
                let runtime = self.runtime.clone();
                let result = runtime.block_on(fut);
                let mut stream = match result {
                    Ok(s) => s,
                    Err(e) => {
                        last_error = e.to_string();
                        continue;
                    }
                };
                let chunks = std::iter::from_fn(|| {
                    runtime
                        .block_on(futures::StreamExt::next(&mut stream))
                        .map(|r| r.map_err(|e| StoreError::BadSnapshot(e.to_string())))
                });
                match self.store.import_snapshot_stream(chunks) {
                    Ok(info) => {
                        tracing::info!(
                            node_id = self.config.node_id,
                            from,
                            index = info.applied,
                            "snapshot imported"
                        );
                        return Ok(());
                    }
                    Err(e) => last_error = e.to_string(),
                }
            }
            attempt += 1;
            tracing::warn!(node_id = self.config.node_id, error = %last_error, attempt, "snapshot pull failed; retrying");
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(Fatal::Snapshot(last_error))
    }

    /// Compacts the log once it holds more than the configured bytes, up to what the store
    /// has made durable (a restart replays the rest from the log).
    fn maybe_compact(&mut self) -> Result<(), Fatal> {
        let (_, bytes) = self.raw.store().log.size();
        if bytes <= self.config.compact_log_bytes {
            return Ok(());
        }
        let applied = self.raw.store().applied.0;
        self.store.flush()?;
        // Everything applied before the flush is durable now.
        let upto = applied.min(self.raw.raft.raft_log.committed);
        if upto < self.raw.store().log.first_index() {
            return Ok(());
        }
        let term = self.raw.store().log.term(upto)?;
        let mut meta = raft::eraftpb::SnapshotMetadata { index: upto, term, ..Default::default() };
        meta.set_conf_state(self.raw.store().applied_conf.clone());
        let log = &mut self.raw.mut_store().log;
        log.set_snapshot_meta(&meta)?;
        log.compact(upto)?;
        tracing::info!(node_id = self.config.node_id, index = upto, "raft log compacted");
        Ok(())
    }

    fn status(&self) -> ClusterStatus {
        let raft = &self.raw.raft;
        let role = match raft.state {
            StateRole::Leader => Role::Leader,
            StateRole::Candidate => Role::Candidate,
            StateRole::PreCandidate => Role::PreCandidate,
            StateRole::Follower => Role::Follower,
        };
        let cs = self.raw.store().applied_conf.clone();
        let progress = if role == Role::Leader {
            let mut v: Vec<PeerProgress> = raft
                .prs()
                .iter()
                .map(|(id, pr)| PeerProgress {
                    node_id: *id,
                    matched: pr.matched,
                    learner: cs.learners.contains(id),
                })
                .collect();
            v.sort_by_key(|p| p.node_id);
            v
        } else {
            Vec::new()
        };
        ClusterStatus {
            node_id: self.config.node_id,
            role,
            term: raft.term,
            leader_id: self.leader(),
            commit: raft.raft_log.committed,
            applied: self.raw.store().applied.0,
            first_index: self.raw.store().first_index().unwrap_or(0),
            last_index: raft.raft_log.last_index(),
            last_term: raft.raft_log.last_term(),
            voters: cs.voters.clone(),
            learners: cs.learners.clone(),
            progress,
            snapshot_index: self.raw.store().log.snapshot_meta().map(|m| m.index).unwrap_or(0),
        }
    }

    fn publish(&self) {
        let raft = &self.raw.raft;
        self.shared.leader.store(raft.leader_id, Ordering::Release);
        self.shared.term.store(raft.term, Ordering::Release);
        self.shared.commit.store(raft.raft_log.committed, Ordering::Release);
        self.shared.applied.store(self.raw.store().applied.0, Ordering::Release);
    }

    /// Answers everyone still waiting once the loop has stopped.
    fn finish(&mut self, result: &Result<(), String>) {
        let err = match result {
            Ok(()) => ProposeError::ShuttingDown,
            Err(reason) => {
                tracing::error!(node_id = self.config.node_id, error = %reason, "replica stopped on a fatal error");
                ProposeError::Fatal(reason.clone())
            }
        };
        for (_, w) in self.waiters.drain() {
            let _ = w.reply.send(Err(err.clone()));
        }
        for (_, r) in self.reads.drain() {
            let _ = r.reply.send(Err(err.clone()));
        }
        for (_, (_, reply)) in self.membership.drain() {
            let _ = reply.send(Err(err.clone()));
        }
    }
}

/// How long a follower keeps trying to pull a snapshot before it gives up (fatal: a
/// restart asks for it again).
const SNAPSHOT_PULL_DEADLINE: Duration = Duration::from_secs(60);
