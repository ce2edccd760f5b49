//! The rest of the process's side of a replica: [`ClusterHandle`] (propose, read index,
//! inbound messages, membership, status) and the figures it reads without a round trip
//! ([`ClusterStatus`], [`DriverTimings`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::eraftpb::Message;
use tokio::sync::{oneshot, watch};
use ward_store::{Applied, Command};

use crate::apply;
use crate::error::{InboundError, ProposeError};
use crate::transport::NodeId;

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
    /// When this replica last took a message from it (any message: a heartbeat or append
    /// answer, a vote); `None` if never since this replica started.
    pub last_heard: Option<std::time::Instant>,
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
    /// Cycles of the driver's loop that took [`SLOW_STEP`] or longer since it started.
    pub slow_cycles: SlowSteps,
    /// Syncs of the log on its own thread that took [`SLOW_STEP`] or longer since it
    /// started.
    pub slow_syncs: SlowSteps,
    /// `election_tick` × `tick_interval`: a live voter answers the leader within it (a
    /// leader that hears from no quorum for this long steps down).
    pub election_timeout: std::time::Duration,
}

/// A step of a replica that takes this long or longer is slow: counted in
/// [`ClusterStatus`] and logged at debug level (as a warning from 100 ms).
pub const SLOW_STEP: Duration = Duration::from_millis(10);

/// How many steps of one kind were slow ([`SLOW_STEP`] or longer), and the longest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SlowSteps {
    /// How many.
    pub count: u64,
    /// The longest of them, in whole milliseconds (0 when `count` is 0).
    pub slowest_ms: u64,
}

/// Counts slow steps of one kind from any thread.
#[derive(Debug, Default)]
pub(crate) struct SlowCounter {
    count: AtomicU64,
    slowest_ms: AtomicU64,
}

impl SlowCounter {
    /// Counts a step that took `took`, if it was slow; returns its milliseconds then.
    pub(crate) fn record(&self, took: Duration) -> Option<u64> {
        if took < SLOW_STEP {
            return None;
        }
        let ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.slowest_ms.fetch_max(ms, Ordering::Relaxed);
        Some(ms)
    }

    pub(crate) fn read(&self) -> SlowSteps {
        SlowSteps {
            count: self.count.load(Ordering::Relaxed),
            slowest_ms: self.slowest_ms.load(Ordering::Relaxed),
        }
    }
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

pub(crate) enum Request {
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

pub(crate) type Reply = oneshot::Sender<Result<Applied, ProposeError>>;
pub(crate) type IndexReply = oneshot::Sender<Result<u64, ProposeError>>;

/// Shared figures readable without a round trip to the driver.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub(crate) leader: AtomicU64,
    pub(crate) term: AtomicU64,
    pub(crate) applied: AtomicU64,
    pub(crate) commit: AtomicU64,
    /// Requests sent to the driver and not yet taken by it.
    pub(crate) queued: AtomicU64,
    /// Nanoseconds spent persisting (append, hard state, flush), applying, and the number
    /// of ready cycles and flushes.
    pub(crate) persist_ns: AtomicU64,
    pub(crate) apply_ns: AtomicU64,
    pub(crate) readies: AtomicU64,
    pub(crate) flushes: AtomicU64,
    /// Syncs of the journal that waited to gather more writes.
    pub(crate) sync_waits: AtomicU64,
    /// Slow cycles of the driver's loop.
    pub(crate) slow_cycles: SlowCounter,
    /// Slow syncs of the log on its own thread.
    pub(crate) slow_syncs: SlowCounter,
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
    /// Syncs of the log that waited to gather more writes (`ClusterConfig::sync_gap`).
    pub sync_waits: u64,
}

/// A handle on a running replica. Cheap to clone.
#[derive(Clone)]
pub struct ClusterHandle {
    pub(crate) node_id: NodeId,
    pub(crate) tx: crossbeam_channel::Sender<Request>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) stopped: watch::Receiver<Option<Result<(), String>>>,
    pub(crate) propose_timeout: Duration,
    pub(crate) read_timeout: Duration,
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
    /// resolves sees those writes. Gives up after the configured read timeout
    /// ([`crate::ClusterConfig::read_timeout`]).
    pub async fn read_index(&self) -> Result<u64, ProposeError> {
        let (reply, rx) = oneshot::channel();
        let deadline = Instant::now() + self.read_timeout;
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
            sync_waits: s.sync_waits.load(Ordering::Relaxed),
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
