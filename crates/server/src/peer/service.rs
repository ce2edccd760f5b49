//! The `ward.cluster.v1.Peer` service a replica serves to the others on its peer listener.
//!
//! The listener's TLS already refused every client without a certificate that chains to the
//! trust domain's current bundle and names a replica ([`crate::tls::SpiffeClientVerifier::
//! replicas`]). Here each raft message's addressing fields are read with prost (only fields
//! 2 and 3 of `eraftpb.Message`; the rest is skipped, not interpreted) and the message is
//! refused unless its sender is the certificate's replica and its recipient is this one.
//! Only then do its bytes go to [`RaftInbound::deliver`], where raft decodes them.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use prost::Message as _;
use tonic::{Request, Response, Status, Streaming};
use ward_core::TrustDomain;
use ward_proto::ward::cluster::v1::peer_server::Peer;
use ward_proto::ward::cluster::v1::{
    DiscoverRequest, DiscoverResponse, JoinRequest, JoinResponse, RaftAck, RaftAddress, RaftBatch,
    SnapshotChunk, SnapshotRequest,
};

use crate::tls::TlsPeer;

/// Where authenticated raft messages go (the cluster driver).
pub trait RaftInbound: Send + Sync + 'static {
    /// Hands over one raft message (raft's encoding) from replica `from`, already checked to
    /// come from that replica and to be addressed to this one.
    ///
    /// # Errors
    /// A sentence saying why the message was refused.
    fn deliver(&self, from: u64, bytes: &[u8]) -> Result<(), String>;

    /// Records the peer address replica `from` says it is reached at.
    fn learn_address(&self, from: u64, address: &str);

    /// Records another replica's address as a peer reported it, unless one is known.
    fn learn_member(&self, node: u64, address: &str);
}

/// A stream of snapshot chunks.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<SnapshotChunk, Status>> + Send>>;

/// What serves snapshots and joins; the cluster wiring provides it.
#[tonic::async_trait]
pub trait PeerBackend: Send + Sync + 'static {
    /// The chunks of the snapshot `descriptor` names, for replica `to`.
    async fn snapshot(&self, to: u64, descriptor: Vec<u8>) -> Result<ChunkStream, Status>;

    /// The trust domain's current X.509 authorities (DER).
    fn x509_authorities(&self) -> Vec<Vec<u8>>;

    /// A replica joins with a credential.
    async fn join(&self, req: JoinRequest) -> Result<JoinResponse, Status>;
}

/// The Peer service of replica `node_id`.
pub struct PeerService {
    node_id: u64,
    td: TrustDomain,
    inbound: Arc<dyn RaftInbound>,
    backend: Arc<dyn PeerBackend>,
}

impl std::fmt::Debug for PeerService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerService").field("node_id", &self.node_id).finish()
    }
}

impl PeerService {
    /// The service of replica `node_id` of `td`.
    pub fn new(
        node_id: u64,
        td: TrustDomain,
        inbound: Arc<dyn RaftInbound>,
        backend: Arc<dyn PeerBackend>,
    ) -> Self {
        Self { node_id, td, inbound, backend }
    }

    /// The replica the caller's certificate names.
    fn caller<T>(&self, req: &Request<T>) -> Result<u64, Status> {
        req.extensions()
            .get::<TlsPeer>()
            .and_then(|p| p.svid.as_ref())
            .and_then(|s| ward_core::replica_id::replica_node_id(&s.id, &self.td))
            .ok_or_else(|| Status::unauthenticated("a replica certificate is required"))
    }

    /// Checks one raft message's addressing against the connection's replica.
    fn check(&self, from: u64, bytes: &[u8]) -> Result<(), Status> {
        let addr = RaftAddress::decode(bytes)
            .map_err(|e| Status::invalid_argument(format!("malformed raft message: {e}")))?;
        if addr.from != from {
            return Err(Status::permission_denied(format!(
                "raft message from replica {} on the connection of replica {from}",
                addr.from
            )));
        }
        if addr.to != self.node_id {
            return Err(Status::invalid_argument(format!(
                "raft message for replica {} arrived at replica {}",
                addr.to, self.node_id
            )));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn raft(
        &self,
        request: Request<Streaming<RaftBatch>>,
    ) -> Result<Response<RaftAck>, Status> {
        let from = self.caller(&request)?;
        let mut stream = request.into_inner();
        while let Some(batch) = stream.message().await? {
            if !batch.from_address.is_empty() {
                self.inbound.learn_address(from, &batch.from_address);
            }
            for m in &batch.members {
                if m.node_id != from && m.node_id != self.node_id && !m.address.is_empty() {
                    self.inbound.learn_member(m.node_id, &m.address);
                }
            }
            for bytes in &batch.messages {
                if let Err(status) = self.check(from, bytes) {
                    tracing::warn!(node_id = from, error = %status.message(), "raft message refused");
                    return Err(status);
                }
                if let Err(reason) = self.inbound.deliver(from, bytes) {
                    tracing::debug!(node_id = from, %reason, "raft message dropped");
                }
            }
        }
        Ok(Response::new(RaftAck {}))
    }

    type SnapshotStream = ChunkStream;

    async fn snapshot(
        &self,
        request: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let to = self.caller(&request)?;
        let descriptor = request.into_inner().descriptor;
        Ok(Response::new(self.backend.snapshot(to, descriptor).await?))
    }

    async fn discover(
        &self,
        _request: Request<DiscoverRequest>,
    ) -> Result<Response<DiscoverResponse>, Status> {
        Ok(Response::new(DiscoverResponse { x509_authorities: self.backend.x509_authorities() }))
    }

    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        Ok(Response::new(self.backend.join(request.into_inner()).await?))
    }
}
