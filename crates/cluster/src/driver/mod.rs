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
//! 2. a leader's appends to its followers are sent (they promise nothing about the
//!    leader's own log, so its write overlaps theirs: raft thesis §10.2.1), unless the
//!    ready also changes the term or vote;
//! 3. committed entries go to the store; each proposal's waiter is answered with its own
//!    apply result, by request id, on every replica that holds one (raft hands over only
//!    entries that are durable in this replica's log, so they need not wait for step 4);
//! 4. new entries are appended and the hard state stored and handed to the log's sync
//!    thread, which `fdatasync`s them while this thread goes on (raft-rs's asynchronous
//!    persistence: `advance_append_async`, then `on_persist_ready` once the sync thread
//!    reports). The answers that promise durability (to appends and to votes) wait in
//!    order, ready by ready, and leave when the sync that covers their ready is reported:
//!    they never promise what is not durable. The other messages of a replica that does
//!    not lead (proposals and reads forwarded to the leader, answers to heartbeats), which
//!    raft-rs holds back as well, leave at once. A ready that changes the
//!    term or the vote, or installs a snapshot, is made durable on this thread before
//!    anything else goes on, as is one the log cannot sync elsewhere (a segment to close);
//! 5. `advance`, and for a ready made durable here, the same for the light ready's commit,
//!    messages and entries.
//!
//! While a sync runs, this thread keeps taking proposals, forwarding them, sending appends,
//! answering and applying: a write that arrives during one waits only for the next, not
//! for this thread to come back from the one before. Syncs asked for while one runs are
//! done as one.
//!
//! An error from the store or the log stops the driver for good: every waiter gets
//! [`ProposeError::Fatal`], and [`ClusterHandle::stopped`] resolves with the reason so
//! the process can exit non-zero (a restart replays the log).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use crossbeam_channel::Receiver;
use protobuf::Message as _;
use raft::eraftpb::{ConfChangeV2, ConfState, Entry, EntryType, Message, MessageType};
use raft::{RawNode, StateRole, Storage as _};
use tokio::sync::{oneshot, watch};
use ward_store::{Committed, Store, StoreError};

use crate::config::{ClusterConfig, StartError};
use crate::error::ProposeError;
use crate::handle::{
    ClusterHandle, ClusterStatus, IndexReply, MembershipChange, PeerProgress, Reply, Request, Role,
    Shared,
};
use crate::log_store::{LogStore, LogStoreError};
use crate::storage::RaftStorage;
use crate::transport::{NodeId, SnapshotSource, Transport};

mod persist;
mod snapshots;

use persist::{Held, SyncThread};

/// The pieces a replica runs with.
pub struct Replica<L> {
    /// Settings.
    pub config: ClusterConfig,
    /// The state machine.
    pub store: Store,
    /// The raft log (`ward-server` runs a [`crate::WalLogStore`]).
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
    /// Whether raft ever took it (appended it as leader, or forwarded it to a leader). Such
    /// a proposal may still be committed after its deadline, so it then fails as a timeout
    /// (outcome unknown), never as "no leader" (which tells the client it was not written).
    taken: bool,
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
    let id = crate::transport::check_node_id(config.node_id)
        .map_err(|e| StartError::Raft(e.to_owned()))?;
    let store_applied = store.last_applied();
    let mut hs = log.hard_state()?;
    let fresh = log.last_index() == 0 && hs.term == 0 && log.conf_state()?.voters.is_empty();
    let applied_members = store.conf_state().and_then(|b| ConfState::parse_from_bytes(&b).ok());
    if fresh && applied_members.is_some_and(|cs| config.bootstrap || cs.voters.contains(&id)) {
        // The store applied a membership that makes this replica a voter (or it would
        // bootstrap), but its log, and with it its term and vote, is gone. Bootstrapping
        // would start a second cluster over the same state, and voting without the vote it
        // cast could elect two leaders in one term: refuse. (A learner that crashed while
        // importing its first snapshot has an empty log too; it waits for a snapshot below.)
        return Err(StartError::LostLog { applied: store_applied });
    }
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
        || diverges_at(&log, store_applied, store.applied_term())
    {
        // The state does not match the log (a crash between a snapshot's import and the
        // log's reset, a wiped store, or a log whose entry at the applied index is of
        // another term than the one applied: an uncommitted tail the snapshot replaced):
        // keep term and vote, forget the log, and let the leader send a snapshot.
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

    let (tx, rx) = crossbeam_channel::unbounded();
    let shared = Arc::new(Shared::default());
    let syncs = SyncThread::start(id, shared.clone(), config.sync_gap)?;
    let (stop_tx, stop_rx) = watch::channel(None);
    let handle = ClusterHandle {
        node_id: id,
        tx,
        shared: shared.clone(),
        stopped: stop_rx,
        propose_timeout: config.propose_timeout,
        read_timeout: config.read_timeout,
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
        snapshots_sent: Vec::new(),
        last_leader: None,
        compaction_flush: None,
        syncs,
        held: VecDeque::new(),
        cycle: CycleTimes::default(),
        heard: HashMap::new(),
    };
    driver.publish();
    std::thread::Builder::new()
        .name(format!("raft-{id}"))
        .spawn(move || {
            let mut driver = driver;
            let mut result = driver.run(rx);
            // The store closes after this: no flush of it is left running, and one that
            // failed is the replica's failure.
            if let Err(e) = driver.join_compaction_flush() {
                result = result.and(Err(e.to_string()));
            }
            driver.syncs.stop();
            driver.finish(&result);
            // The store and log close before anyone is told the replica stopped.
            drop(driver);
            let _ = stop_tx.send(Some(result));
        })
        .map_err(|e| StartError::Thread(e.to_string()))?;
    Ok(handle)
}

/// Whether the log holds, at the store's applied index, an entry of another term than the
/// one the store applied there (the store's term is 0 when it does not know it).
fn diverges_at<L: LogStore>(log: &L, applied: u64, applied_term: u64) -> bool {
    applied > 0 && applied_term != 0 && log.term(applied).is_ok_and(|t| t != applied_term)
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
    #[error("raft log: the thread that syncs it stopped")]
    Sync,
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
    /// Followers sent a snapshot message in this cycle (reported after `advance`).
    snapshots_sent: Vec<NodeId>,
    last_leader: Option<NodeId>,
    /// The store's flush that lets the log be compacted further, while it runs.
    compaction_flush: Option<std::thread::JoinHandle<Result<(), StoreError>>>,
    /// The log's sync thread.
    syncs: SyncThread,
    /// Messages of readies not yet known durable, oldest first.
    held: VecDeque<Held>,
    /// Where the time of the cycle under way went (see [`CycleTimes`]).
    cycle: CycleTimes,
    /// When a message from each peer was last stepped (shown in the status; a removal
    /// counts only voters heard from after it was asked for).
    heard: HashMap<NodeId, Instant>,
}

/// A cycle or a sync that takes this long is logged as a warning (etcd warns at the same
/// 100 ms when an apply takes too long).
pub(crate) const SLOW_WARN: std::time::Duration = std::time::Duration::from_millis(100);

/// Time spent in the parts of one cycle of the driver's loop.
#[derive(Default)]
struct CycleTimes {
    /// Requests taken from the queue.
    requests: usize,
    /// Committed entries handed to the store.
    applied: usize,
    apply: std::time::Duration,
    /// Appending entries and storing the hard state (written, not synced).
    write: std::time::Duration,
    /// Syncs of the log made on the driver's thread.
    sync_here: std::time::Duration,
    /// Snapshot installs.
    install: std::time::Duration,
}

/// How many queued requests one cycle takes at most before handling a ready.
const DRAIN_LIMIT: usize = 4096;

/// Proposals gathered in one cycle, to be handed to raft together.
#[derive(Default)]
struct Proposals {
    waiters: Vec<(u128, Waiter)>,
    bytes: usize,
}

impl Proposals {
    /// Whether adding `len` bytes would take these past `limit` (raft's most per append
    /// message): they are proposed first then, so that a message forwarded to the leader
    /// holds at most `limit` bytes of entries, or one entry alone, as raft's own appends.
    fn would_pass(&self, len: usize, limit: u64) -> bool {
        let after = u64::try_from(self.bytes.saturating_add(len)).unwrap_or(u64::MAX);
        !self.waiters.is_empty() && after > limit
    }

    fn push(&mut self, request_id: u128, waiter: Waiter) {
        self.bytes = self.bytes.saturating_add(waiter.data.len());
        self.waiters.push((request_id, waiter));
    }
}

impl<L: LogStore> Driver<L> {
    fn run(&mut self, rx: Receiver<Request>) -> Result<(), String> {
        let tick = self.config.tick_interval;
        let mut next_tick = Instant::now() + tick;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            let mut first = None;
            let mut synced = None;
            crossbeam_channel::select! {
                recv(rx) -> req => match req {
                    Ok(req) => first = Some(req),
                    Err(_) => return Ok(()),
                },
                recv(self.syncs.done) -> done => match done {
                    Ok(done) => synced = Some(done),
                    Err(_) => return Err(Fatal::Sync.to_string()),
                },
                default(wait) => {}
            }
            let woke = Instant::now();
            self.cycle = CycleTimes::default();
            if let Some(done) = synced {
                self.on_synced(done).map_err(|e| e.to_string())?;
            }
            let mut stop = false;
            let mut pending = first.into_iter().chain(std::iter::from_fn(|| rx.try_recv().ok()));
            // Proposals that arrive together go to raft as one message: one append to each
            // follower (and one forward to the leader) instead of one per proposal.
            let mut proposals = Proposals::default();
            for req in pending.by_ref().take(DRAIN_LIMIT) {
                self.shared.queued.fetch_sub(1, Ordering::AcqRel);
                self.cycle.requests = self.cycle.requests.saturating_add(1);
                if self.handle(req, &mut proposals).map_err(|e| e.to_string())? {
                    stop = true;
                    break;
                }
            }
            self.propose_all(proposals);
            if stop {
                return Ok(());
            }
            while let Ok(done) = self.syncs.done.try_recv() {
                self.on_synced(done).map_err(|e| e.to_string())?;
            }
            let now = Instant::now();
            if now >= next_tick {
                self.persist_before_leading().map_err(|e| e.to_string())?;
                self.raw.tick();
                next_tick = now + tick;
                self.on_tick(now);
            }
            self.on_ready().map_err(|e| e.to_string())?;
            self.publish();
            self.log_if_slow(woke.elapsed());
        }
    }

    /// Counts and logs a cycle that took [`SLOW_STEP`](crate::SLOW_STEP) or longer, with
    /// where its time went; time in none of the parts named is the driver's own work, or
    /// its thread waiting for a core.
    fn log_if_slow(&self, took: std::time::Duration) {
        let Some(took_ms) = self.shared.slow_cycles.record(took) else {
            return;
        };
        let c = &self.cycle;
        let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let (node_id, requests, applied) = (self.config.node_id, c.requests, c.applied);
        let (apply_ms, write_ms) = (ms(c.apply), ms(c.write));
        let (sync_ms, install_ms) = (ms(c.sync_here), ms(c.install));
        // One event, at either level (a level is fixed where an event is written).
        macro_rules! slow_cycle {
            ($level:ident) => {
                tracing::$level!(
                    node_id,
                    took_ms,
                    requests,
                    applied,
                    apply_ms,
                    write_ms,
                    sync_ms,
                    install_ms,
                    "slow raft cycle"
                )
            };
        }
        if took >= SLOW_WARN {
            slow_cycle!(warn);
        } else {
            slow_cycle!(debug);
        }
    }

    /// Handles one request; `true` means stop. A proposal joins `gathered`, which goes to
    /// raft as one message at the end of the cycle, before a request of another kind (so
    /// requests keep their order), or before it would pass raft's largest message.
    fn handle(&mut self, req: Request, gathered: &mut Proposals) -> Result<bool, Fatal> {
        if !matches!(req, Request::Propose { .. }) {
            self.propose_all(std::mem::take(gathered));
        }
        match req {
            Request::Propose { request_id, data, deadline, reply } => {
                let waiter = Waiter { deadline, reply, data, proposed_at: None, taken: false };
                self.gather(gathered, request_id, waiter);
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
                self.persist_before_leading()?;
                if msg.from != self.config.node_id {
                    self.heard.insert(msg.from, Instant::now());
                }
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
                // Entries stepped in earlier in this cycle are not in a ready yet: written
                // (and held) first, so that the sync below covers them.
                self.on_ready()?;
                self.persist_before_leading()?;
                if let Err(e) = self.raw.campaign() {
                    tracing::warn!(node_id = self.config.node_id, error = %e, "campaign refused");
                }
            }
            Request::Shutdown => {
                // What was written without a flush (a commit index) is kept too.
                self.raw.mut_store().log.flush()?;
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Hands `proposals` to raft as one `MsgPropose` (raft appends them in order, or drops
    /// them all when there is no leader to take them), and waits for each.
    fn propose_all(&mut self, proposals: Proposals) {
        let Proposals { waiters, .. } = proposals;
        if waiters.is_empty() {
            return;
        }
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgPropose);
        m.from = self.raw.raft.id;
        let entries: Vec<Entry> = waiters
            .iter()
            .map(|(_, w)| Entry { data: w.data.clone().into(), ..Default::default() })
            .collect();
        m.set_entries(entries.into());
        // What `RawNode::propose` does for one entry.
        let proposed_at = match self.raw.raft.step(m) {
            Ok(()) => Some(Instant::now()),
            Err(raft::Error::ProposalDropped) => None,
            Err(e) => {
                tracing::warn!(node_id = self.config.node_id, error = %e, count = waiters.len(), "proposals refused");
                None
            }
        };
        for (request_id, mut w) in waiters {
            w.proposed_at = proposed_at;
            w.taken |= proposed_at.is_some();
            self.waiters.insert(request_id, w);
        }
    }

    /// Adds `waiter` to `gathered`, proposing what was gathered first when the two together
    /// would pass raft's largest message.
    fn gather(&mut self, gathered: &mut Proposals, request_id: u128, waiter: Waiter) {
        if gathered.would_pass(waiter.data.len(), self.config.max_size_per_msg) {
            self.propose_all(std::mem::take(gathered));
        }
        gathered.push(request_id, waiter);
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
                let err = if w.taken {
                    ProposeError::Timeout
                } else {
                    ProposeError::NotLeader { leader_hint: leader }
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
            let mut again = Proposals::default();
            for id in retry {
                if let Some(w) = self.waiters.remove(&id) {
                    self.gather(&mut again, id, w);
                }
            }
            self.propose_all(again);
            // Reads that raft dropped (no leader at the time) are asked again.
            let unanswered: Vec<u64> =
                self.reads.iter().filter(|(_, r)| r.index.is_none()).map(|(k, _)| *k).collect();
            for k in unanswered {
                self.raw.read_index(k.to_be_bytes().to_vec());
            }
        }
    }

    fn send(&mut self, msgs: Vec<Message>) {
        let Some(transport) = &self.transport else { return };
        let mut by_peer: HashMap<NodeId, Vec<Bytes>> = HashMap::new();
        for m in msgs {
            if m.get_msg_type() == MessageType::MsgSnapshot {
                self.snapshots_sent.push(m.to);
            }
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
        let snapshot = !rd.snapshot().is_empty();
        if snapshot {
            // The log is reset to the snapshot: what earlier readies wrote is made durable
            // first, so no sync of theirs is still to come.
            self.sync_here()?;
            let snap = rd.snapshot().clone();
            let installing = Instant::now();
            self.install_snapshot(&snap)?;
            self.cycle.install = self.cycle.install.saturating_add(installing.elapsed());
        }
        self.shared.readies.fetch_add(1, Ordering::Relaxed);
        // A leader's appends leave before its own write of the same entries (raft thesis
        // §10.2.1; raft-rs puts only such messages in `messages` on a leader, and everything
        // that promises durability in `persisted_messages`): the followers' writes overlap
        // the leader's, and an entry still commits only once a majority holds it durably,
        // since the leader counts itself only once its write is reported durable. Not when
        // this ready also changes the term or vote: a single voter that just elected itself
        // would otherwise send entries of a term that a crash before the write could make
        // it reuse for other entries at the same index.
        let early = match rd.hs() {
            None => true,
            Some(hs) => {
                let stored = self.raw.store().log.hard_state()?;
                hs.term == stored.term && hs.vote == stored.vote
            }
        };
        if early {
            self.send(rd.take_messages());
        }
        // What committed is applied (and its proposers answered) before this ready's new
        // entries are written: those entries are committed, so durable on a majority, and
        // raft hands over only entries this replica's own log already holds durably.
        self.apply(rd.take_committed_entries())?;
        let persist_start = Instant::now();
        if !rd.entries().is_empty() {
            self.raw.mut_store().log.append(rd.entries())?;
        }
        if let Some(hs) = rd.hs() {
            self.raw.mut_store().log.set_hard_state(hs)?;
        }
        // Only new entries, a new term or a vote must be durable before the ready's messages
        // leave. A hard state whose commit alone moved (a follower learning the commit from
        // an append or a heartbeat, a leader counting acknowledgements) is written without a
        // sync of its own: raft learns the commit again after a restart, and the next sync
        // carries it anyway.
        let elsewhere = if rd.must_sync() && early && !snapshot {
            self.raw.mut_store().log.begin_sync()?
        } else {
            None
        };
        add_elapsed(&self.shared.persist_ns, persist_start);
        self.cycle.write = self.cycle.write.saturating_add(persist_start.elapsed());
        let number = rd.number();
        if let Some(sync) = elsewhere {
            let messages = self.send_all_but_promises(rd.take_persisted_messages());
            self.held.push_back(Held { number, needs_sync: true, messages });
            self.syncs.submit(number, sync)?;
            self.advance_async(rd);
        } else if !rd.must_sync() && !self.held.is_empty() {
            // Nothing of its own to make durable, but its answers to appends (whose entries
            // an earlier ready wrote, say) wait behind the earlier readies'.
            let messages = self.send_all_but_promises(rd.take_persisted_messages());
            self.held.push_back(Held { number, needs_sync: false, messages });
            self.advance_async(rd);
        } else {
            if rd.must_sync() {
                self.sync_here()?;
            }
            if !early {
                self.send(rd.take_messages());
            }
            self.send(rd.take_persisted_messages());
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
        }
        self.report_snapshots();
        self.resolve_reads();
        self.maybe_compact()?;
        Ok(())
    }

    /// After a membership change is applied to raft: a leader it removed (or demoted) steps
    /// down at once, as etcd's raft does (`StepDownOnRemoval`). raft-rs 0.7 keeps it leading
    /// without a progress entry of its own, and the next commit or persistence it counts
    /// would panic (`maybe_commit`, `on_persist_entries`).
    fn step_down_if_removed(&mut self) {
        if self.raw.raft.state == StateRole::Leader && !self.raw.raft.promotable() {
            let term = self.raw.raft.term;
            tracing::info!(
                node_id = self.config.node_id,
                term,
                "removed from the voters; stepping down"
            );
            self.raw.raft.become_follower(term, raft::INVALID_ID);
        }
    }

    /// A snapshot message carries only a descriptor: the follower pulls the state itself,
    /// and this replica cannot see that transfer end. So the leader counts the message as
    /// delivered and goes back to probing the follower right away: a follower that
    /// installed the state answers the probe and replication resumes from there; one whose
    /// pull failed (it stops, and restarts with its old log) refuses it and is sent a new
    /// snapshot. Without this, raft would keep that follower paused for good.
    fn report_snapshots(&mut self) {
        for to in std::mem::take(&mut self.snapshots_sent) {
            tracing::info!(
                node_id = self.config.node_id,
                to,
                "snapshot sent; probing the follower"
            );
            self.raw.report_snapshot(to, raft::SnapshotStatus::Finish);
        }
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
                    Some(canonical(self.raw.apply_conf_change(&cc)?))
                }
                EntryType::EntryConfChange => {
                    let cc = raft::eraftpb::ConfChange::parse_from_bytes(&e.data)
                        .map_err(|err| Fatal::Entry(format!("bad membership change: {err}")))?;
                    Some(canonical(self.raw.apply_conf_change(&cc)?))
                }
                EntryType::EntryNormal => None,
            };
            if cs.is_some() {
                self.step_down_if_removed();
            }
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
        self.cycle.apply = self.cycle.apply.saturating_add(apply_start.elapsed());
        self.cycle.applied = self.cycle.applied.saturating_add(entries.len());
        if let Some(last) = entries.last() {
            self.raw.mut_store().applied = (last.index, last.term);
        }
        for d in done {
            let Some(w) = self.waiters.remove(&d.request_id) else { continue };
            // A waiter still here for a duplicate missed its first apply: that entry reached
            // this replica inside a snapshot. It did take effect, once; its result is lost.
            let answer =
                d.result.map_err(|dup| ProposeError::AppliedUnobserved { index: dup.first_index });
            let _ = w.reply.send(answer);
        }
        Ok(())
    }

    fn conf_changed(&mut self, cs: ConfState, ctx: &[u8], index: u64) -> Result<(), Fatal> {
        tracing::info!(node_id = self.config.node_id, index, voters = ?cs.voters, learners = ?cs.learners, "membership changed");
        // Durable before the store applies the change: a restart takes the membership from
        // the log and replays only entries past the store's applied index, so a change the
        // store made durable first would be lost (a replica restarted with the old voters).
        self.raw.mut_store().log.set_conf_state(&cs)?;
        self.raw.mut_store().log.flush()?;
        self.shared.flushes.fetch_add(1, Ordering::Relaxed);
        self.raw.mut_store().applied_conf = cs;
        if let Ok(id) = <[u8; 16]>::try_from(ctx).map(u128::from_be_bytes)
            && let Some((_, reply)) = self.membership.remove(&id)
        {
            let _ = reply.send(Ok(index));
        }
        Ok(())
    }

    /// Pulls the state a snapshot message names and installs it, then resets the log.
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
                    last_heard: self.heard.get(id).copied(),
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
            slow_cycles: self.shared.slow_cycles.read(),
            slow_syncs: self.shared.slow_syncs.read(),
            election_timeout: self
                .config
                .tick_interval
                .saturating_mul(u32::try_from(self.config.election_tick).unwrap_or(u32::MAX)),
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

/// `cs` with its member lists sorted. raft-rs lists voters and learners in the order of
/// its hash sets (unlike etcd's raft, it does not sort), and that order depends on how the
/// process built them: a replica that re-applies a membership change after a restart can
/// list `[2, 1, 3]` where the others list `[1, 2, 3]`. The store keeps the membership's
/// bytes, which every replica must hold identically at the same applied index.
fn canonical(mut cs: ConfState) -> ConfState {
    cs.voters.sort_unstable();
    cs.voters_outgoing.sort_unstable();
    cs.learners.sort_unstable();
    cs.learners_next.sort_unstable();
    cs
}

#[cfg(test)]
mod canonical_tests {
    use super::*;

    #[test]
    fn a_membership_is_stored_the_same_whatever_order_raft_lists_it_in() {
        let listed = |voters: &[u64], learners: &[u64], outgoing: &[u64], next: &[u64]| {
            let cs = ConfState {
                voters: voters.to_vec(),
                learners: learners.to_vec(),
                voters_outgoing: outgoing.to_vec(),
                learners_next: next.to_vec(),
                ..ConfState::default()
            };
            canonical(cs).write_to_bytes().unwrap()
        };
        let a = listed(&[1, 2, 3], &[4, 5], &[1, 2], &[6, 7]);
        let b = listed(&[2, 1, 3], &[5, 4], &[2, 1], &[7, 6]);
        assert_eq!(a, b);
        let cs = ConfState::parse_from_bytes(&b).unwrap();
        assert_eq!((cs.voters, cs.learners), (vec![1, 2, 3], vec![4, 5]));
    }
}
