//! A replica's settings ([`ClusterConfig`]) and why it could not start ([`StartError`]).

use std::time::Duration;

use crate::log_store::LogStoreError;
use crate::transport::NodeId;

/// How long a read index waits by default: long enough for an election at the default
/// timing (an election timeout of 1 to 2 s, then a vote) and a round trip to the leader, short
/// enough that a replica cut off from its leader refuses an operator's read within seconds.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(3);

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
    /// How long a read index may wait for the leader's confirmation and this replica's apply
    /// before the read is refused. Default [`DEFAULT_READ_TIMEOUT`].
    pub read_timeout: Duration,
    /// How long a proposal that is not yet in the log waits before it is proposed again
    /// with the same request id. Default 1 s.
    pub repropose_after: Duration,
    /// Compact the log once the entries it holds exceed this many bytes. Default 64 MiB.
    pub compact_log_bytes: u64,
    /// Largest append message in bytes. Default 1 MiB.
    pub max_size_per_msg: u64,
    /// Appends in flight per follower. Default 256.
    pub max_inflight_msgs: usize,
    /// How long a follower keeps trying to pull a snapshot's state from the other replicas
    /// before it stops on a fatal error (a restart asks the leader for a snapshot again).
    /// Default 60 s.
    pub snapshot_pull_timeout: Duration,
    /// Least time between the starts of two syncs of the log while writes keep arriving:
    /// a sync due sooner waits, and the writes that arrive meanwhile share it. Waits stop
    /// while they gather nothing (one write at a time). Zero: every sync starts as soon as
    /// the one before ends. Default [`DEFAULT_SYNC_GAP`], at most [`MAX_SYNC_GAP`].
    pub sync_gap: Duration,
}

/// The default [`ClusterConfig::sync_gap`]: none, each sync starts as soon as the one
/// before ends (PostgreSQL's `commit_delay` and etcd's WAL do the same). In alternating
/// full runs of `cluster_writes` (`docs/benchmarks.md`, "No sync gap by default") a 3 ms
/// gap doubled the median at 1,000 writes/s (3.3–3.5 ms against 1.7–1.8 ms) and cost
/// 10–20 % of the writes/s at one client, for about 20 % less server CPU per paced write.
/// A gap pays where a sync is costly for the whole machine: on one virtual machine whose
/// host paused it for ~10 ms every 100 ms while three replicas synced 2,400 times a
/// second, 3 ms took the p99 at 1,000 writes/s from 17–18 ms to 11–12 ms.
pub const DEFAULT_SYNC_GAP: Duration = Duration::ZERO;

/// The longest [`ClusterConfig::sync_gap`] honoured (a longer one is cut to it): a longer
/// wait would hold every write for it.
pub const MAX_SYNC_GAP: Duration = Duration::from_millis(100);

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
            read_timeout: DEFAULT_READ_TIMEOUT,
            repropose_after: Duration::from_secs(1),
            compact_log_bytes: 64 << 20,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            snapshot_pull_timeout: Duration::from_secs(60),
            sync_gap: DEFAULT_SYNC_GAP,
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
    /// The store belongs to a cluster but the raft log is empty: the log was lost.
    #[error(
        "the raft log is empty but the store has applied a cluster's log up to index {applied}: \
         this replica lost its raft log (term, vote and entries); remove it from the cluster and \
         add it again with an empty data directory (docs/cluster.md, replacing a replica that lost its data)"
    )]
    LostLog {
        /// The store's applied index.
        applied: u64,
    },
    /// The driver thread could not be spawned.
    #[error("spawning the driver thread: {0}")]
    Thread(String),
}
