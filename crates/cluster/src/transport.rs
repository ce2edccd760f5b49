//! The seams between the driver and the network: [`Transport`] carries raft messages to
//! other replicas, [`SnapshotSource`] pulls a snapshot's chunks from one.
//!
//! Messages cross these seams as raft's own encoding (opaque bytes), so the peer
//! protocol never depends on raft's types. Inbound messages enter the driver through
//! [`crate::ClusterHandle::receive`], which decodes them only after the transport has
//! authenticated the sending replica, and refuses a message whose sender differs from it.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use futures::stream::BoxStream;
use ward_store::SnapshotChunk;

/// A replica's id in the cluster (raft's node id; never 0).
pub type NodeId = u64;

/// Why node id 0 is refused, in every place a node id enters (configuration, flags, the
/// `cluster` commands): raft uses 0 for "no node" (no leader, no vote), so a replica with
/// that id could never be told apart from none.
pub const NODE_ID_ZERO: &str = "node id 0 is reserved (raft's \"no node\"); node ids start at 1";

/// `id` when it can name a replica.
///
/// # Errors
/// [`NODE_ID_ZERO`] for 0.
pub fn check_node_id(id: NodeId) -> Result<NodeId, &'static str> {
    if id == 0 { Err(NODE_ID_ZERO) } else { Ok(id) }
}

/// Carries raft messages from this replica to the others.
///
/// Implementations queue and batch per peer and must never block the caller: the driver
/// calls [`Transport::send`] from its own loop. Dropping messages when a peer is slow or
/// unreachable is allowed (raft retransmits); a peer that cannot be reached should be
/// reported with [`crate::ClusterHandle::report_unreachable`].
pub trait Transport: Send + Sync + 'static {
    /// Queues `messages` for replica `to`, each one raft message in raft's encoding, in
    /// order. Called only after everything they depend on is durable.
    fn send(&self, to: NodeId, messages: Vec<Bytes>);
}

/// What a raft snapshot message carries instead of the state: which snapshot to pull.
///
/// The replica that receives it fetches the state from the sender through a
/// [`SnapshotSource`]. Any export whose applied index is at or after `index` satisfies the
/// descriptor (entries after `index` are skipped on apply, so a newer state is safe).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotDescriptor {
    /// The log index the snapshot covers.
    pub index: u64,
    /// The term of the entry at `index`.
    pub term: u64,
    /// A random id naming this snapshot in logs and transfers.
    pub id: u128,
}

/// Encoding version of [`SnapshotDescriptor::encode`].
const DESCRIPTOR_FORMAT: u8 = 1;
const DESCRIPTOR_LEN: usize = 1 + 8 + 8 + 16;

impl SnapshotDescriptor {
    /// Format byte, index and term (u64 BE), id (u128 BE).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(DESCRIPTOR_LEN);
        out.push(DESCRIPTOR_FORMAT);
        out.extend_from_slice(&self.index.to_be_bytes());
        out.extend_from_slice(&self.term.to_be_bytes());
        out.extend_from_slice(&self.id.to_be_bytes());
        out
    }

    /// Parses [`SnapshotDescriptor::encode`]'s output.
    ///
    /// # Errors
    /// [`SnapshotError::BadDescriptor`] for any other length or format byte.
    pub fn decode(bytes: &[u8]) -> Result<Self, SnapshotError> {
        if bytes.len() != DESCRIPTOR_LEN || bytes.first() != Some(&DESCRIPTOR_FORMAT) {
            return Err(SnapshotError::BadDescriptor);
        }
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            u64::from_be_bytes(b)
        };
        let mut id = [0u8; 16];
        id.copy_from_slice(&bytes[17..33]);
        Ok(Self { index: u64_at(1), term: u64_at(9), id: u128::from_be_bytes(id) })
    }
}

/// Why a snapshot could not be served or fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// The descriptor bytes are not a descriptor.
    #[error("malformed snapshot descriptor")]
    BadDescriptor,
    /// The serving replica has not applied up to the descriptor's index.
    #[error("snapshot at index {wanted} not available (applied {applied})")]
    NotAvailable {
        /// The descriptor's index.
        wanted: u64,
        /// What the serving replica has applied.
        applied: u64,
    },
    /// The transfer failed (connection, peer refusal, damaged chunk).
    #[error("snapshot transfer failed: {0}")]
    Transfer(String),
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] ward_store::StoreError),
}

/// A stream of snapshot chunks, in order, ending with the trailer chunk.
pub type ChunkStream = BoxStream<'static, Result<SnapshotChunk, SnapshotError>>;

/// A boxed future resolving to a [`ChunkStream`].
pub type ChunkStreamFuture =
    Pin<Box<dyn Future<Output = Result<ChunkStream, SnapshotError>> + Send>>;

/// Pulls the chunks of a snapshot from another replica.
pub trait SnapshotSource: Send + Sync + 'static {
    /// Opens the snapshot `descriptor` on replica `from` (the replica that sent the
    /// snapshot message). The serving side answers with
    /// [`crate::snapshot::export_for`].
    fn fetch(&self, from: NodeId, descriptor: SnapshotDescriptor) -> ChunkStreamFuture;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_round_trips_and_refuses_other_bytes() {
        let d = SnapshotDescriptor { index: 7, term: 3, id: u128::MAX - 5 };
        assert_eq!(SnapshotDescriptor::decode(&d.encode()), Ok(d));
        assert_eq!(SnapshotDescriptor::decode(&[1, 2, 3]), Err(SnapshotError::BadDescriptor));
        let mut other = d.encode();
        other[0] = 2;
        assert_eq!(SnapshotDescriptor::decode(&other), Err(SnapshotError::BadDescriptor));
    }
}
