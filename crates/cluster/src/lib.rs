//! ward's Raft cluster: server replicas replicate every write through raft-rs.
//!
//! One thread per replica owns raft's `RawNode` ([`driver`]); the rest of the process
//! talks to it through a [`ClusterHandle`]: propose a command and await its apply result,
//! take a read index, hand it inbound raft messages, read its status. A single server is a
//! one-member cluster on the same path, with no transport.
//!
//! # Modules
//! - [`log_store`]: the [`LogStore`] trait (raft log, hard state, membership, snapshot
//!   metadata), [`MemLogStore`], and [`SledLogStore`] over the store's
//!   [`ward_store::RaftLog`] (sled stays inside ward-store).
//! - [`wal`]: [`WalLogStore`], the log as an append-only journal of segment files (what
//!   `ward-server` runs with), and [`open_log`], which moves a log kept in the store's
//!   database into it.
//! - [`storage`]: raft-rs's `Storage` over any [`LogStore`].
//! - [`config`]: a replica's settings.
//! - [`handle`]: [`ClusterHandle`], what the rest of the process calls, and the status and
//!   timing figures it reads.
//! - [`driver`]: the ready loop, proposals and their waiters, read index, membership,
//!   snapshot install and log compaction (on the driver's own thread).
//! - [`transport`]: the seams to the network, [`Transport`] (raft messages out) and
//!   [`SnapshotSource`] (pull a snapshot's chunks from a replica); inbound messages enter
//!   through [`ClusterHandle::receive`].
//! - [`snapshot`]: what a replica serves when another pulls a snapshot.
//! - [`mem_network`]: an in-memory network of replicas with partition, drop and delay
//!   filters, for tests.
//!
//! raft's own types never appear in what other crates use: messages cross the transport
//! as raft's encoding (opaque bytes), snapshots as a [`SnapshotDescriptor`].

mod apply;
pub mod config;
pub mod driver;
mod error;
pub mod handle;
pub mod log_store;
mod logger;
pub mod mem_network;
pub mod snapshot;
pub mod storage;
pub mod transport;
pub mod wal;

pub use config::{ClusterConfig, DEFAULT_READ_TIMEOUT, DEFAULT_SYNC_GAP, MAX_SYNC_GAP, StartError};
pub use driver::{Replica, start};
pub use error::{InboundError, ProposeError};
pub use handle::{
    ClusterHandle, ClusterStatus, DriverTimings, MembershipChange, PeerProgress, Role, SLOW_STEP,
    SlowSteps,
};
pub use log_store::{LogStore, LogStoreError, MemLogStore, SledLogStore};
pub use transport::{
    ChunkStream, ChunkStreamFuture, NODE_ID_ZERO, NodeId, SnapshotDescriptor, SnapshotError,
    SnapshotSource, Transport, check_node_id,
};
pub use wal::{WalLogStore, open_log};
