//! Raft messages to the other replicas over the `Peer` service: one long-lived `Raft`
//! stream per peer, messages batched, bounded queues, reconnection with exponential backoff
//! and jitter; snapshots pulled over the `Snapshot` call.
//!
//! [`PeerTransport::send`] never blocks the driver: it appends to the peer's queue and wakes
//! the peer's sender task. A queue holds at most [`QUEUE_LIMIT`] messages; when it is full the
//! oldest are dropped (raft retransmits what a follower did not acknowledge). A sender that
//! cannot reach its peer reports it unreachable to raft (which then probes gently) and retries
//! after a backoff that doubles from [`BACKOFF_MIN`] up to [`BACKOFF_MAX`], each wait drawn
//! at random between half and all of it, so replicas that lost a peer together do not retry
//! in step.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{Notify, mpsc};
use tonic::Status;
use ward_cluster::{
    ChunkStream, ChunkStreamFuture, ClusterHandle, NodeId, SnapshotDescriptor, SnapshotError,
    SnapshotSource, Transport,
};
use ward_core::TrustDomain;
use ward_proto::ward::cluster::v1::peer_client::PeerClient;
use ward_proto::ward::cluster::v1::{Member, RaftBatch, SnapshotRequest};

use super::identity::PeerIdentity;
use super::service::RaftInbound;
use crate::tls::AuthoritySource;

/// Most messages waiting for one peer; older ones are dropped beyond it.
pub const QUEUE_LIMIT: usize = 4096;
/// Most messages in one batch on the wire.
pub const BATCH_MESSAGES: usize = 256;
/// Most bytes in one batch (a batch always holds at least one message).
pub const BATCH_BYTES: usize = 4 << 20;
/// First wait after a failed connection.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest wait between connection attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The replicas' peer addresses this replica knows: from configuration, joins, and what each
/// authenticated peer says about itself. Kept in `<data_dir>/cluster/peers.json` so a
/// restarted replica can reach its peers before any of them speaks.
#[derive(Debug)]
pub struct AddressBook {
    path: Option<PathBuf>,
    map: RwLock<HashMap<NodeId, String>>,
}

impl AddressBook {
    /// A book stored at `path` (read now when the file exists), or in memory only.
    pub fn open(path: Option<PathBuf>) -> Self {
        let map = path
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice::<HashMap<NodeId, String>>(&b).ok())
            .unwrap_or_default();
        Self { path, map: RwLock::new(map) }
    }

    /// The address of `node`.
    pub fn get(&self, node: NodeId) -> Option<String> {
        self.map.read().ok().and_then(|m| m.get(&node).cloned())
    }

    /// Every known address.
    pub fn all(&self) -> HashMap<NodeId, String> {
        self.map.read().map(|m| m.clone()).unwrap_or_default()
    }

    /// Records `address` for `node`; returns whether it changed.
    pub fn learn(&self, node: NodeId, address: &str) -> bool {
        let changed = match self.map.write() {
            Ok(mut m) => m.insert(node, address.to_owned()).as_deref() != Some(address),
            Err(_) => false,
        };
        if changed {
            self.save();
        }
        changed
    }

    /// Records `address` for `node` unless an address is known already.
    pub fn learn_if_unknown(&self, node: NodeId, address: &str) -> bool {
        if self.get(node).is_some() {
            return false;
        }
        self.learn(node, address)
    }

    /// Forgets `node` (removed from the cluster).
    pub fn forget(&self, node: NodeId) {
        let removed = self.map.write().map(|mut m| m.remove(&node).is_some()).unwrap_or(false);
        if removed {
            self.save();
        }
    }

    fn save(&self) {
        let Some(path) = &self.path else { return };
        let bytes = match serde_json::to_vec_pretty(&self.all()) {
            Ok(b) => b,
            Err(_) => return,
        };
        if let Err(e) = ward_ca::files::write_atomically(path, &bytes) {
            tracing::warn!(error = %e, path = %path.display(), "saving peer addresses failed");
        }
    }
}

/// One peer's outgoing queue.
#[derive(Default)]
struct Queue {
    messages: Mutex<VecDeque<Bytes>>,
    wake: Notify,
    dropped: AtomicU64,
}

impl Queue {
    fn push(&self, messages: Vec<Bytes>) {
        let mut q = self.messages.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for m in messages {
            if q.len() >= QUEUE_LIMIT {
                q.pop_front();
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            q.push_back(m);
        }
        drop(q);
        self.wake.notify_one();
    }

    /// Takes the next batch (up to the batch limits); empty when nothing waits.
    fn batch(&self) -> Vec<Vec<u8>> {
        let mut q = self.messages.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while let Some(front) = q.front() {
            if !out.is_empty() && (out.len() >= BATCH_MESSAGES || bytes + front.len() > BATCH_BYTES)
            {
                break;
            }
            bytes += front.len();
            if let Some(m) = q.pop_front() {
                out.push(m.to_vec());
            }
        }
        out
    }

    fn is_empty(&self) -> bool {
        self.messages.lock().map(|q| q.is_empty()).unwrap_or(true)
    }
}

/// How a replica reaches the others.
pub struct PeerTransport {
    inner: Arc<Inner>,
}

struct Inner {
    me: NodeId,
    td: TrustDomain,
    advertise: String,
    identity: Arc<PeerIdentity>,
    authorities: Arc<dyn AuthoritySource>,
    addresses: Arc<AddressBook>,
    queues: Mutex<HashMap<NodeId, Arc<Queue>>>,
    handle: OnceLock<ClusterHandle>,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for PeerTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTransport").field("me", &self.inner.me).finish()
    }
}

impl Clone for PeerTransport {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone() }
    }
}

impl PeerTransport {
    /// The transport of replica `me`, advertising `advertise` to its peers, presenting
    /// `identity` and trusting the X.509 authorities `authorities` currently holds.
    pub fn new(
        me: NodeId,
        td: TrustDomain,
        advertise: String,
        identity: Arc<PeerIdentity>,
        authorities: Arc<dyn AuthoritySource>,
        addresses: Arc<AddressBook>,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                me,
                td,
                advertise,
                identity,
                authorities,
                addresses,
                queues: Mutex::new(HashMap::new()),
                handle: OnceLock::new(),
                runtime,
            }),
        }
    }

    /// Connects the transport to its driver (for unreachable reports and inbound messages).
    /// Called once, after the driver started.
    pub fn attach(&self, handle: ClusterHandle) {
        let _ = self.inner.handle.set(handle);
    }

    /// The address book.
    pub fn addresses(&self) -> &Arc<AddressBook> {
        &self.inner.addresses
    }

    /// Messages dropped from `to`'s full queue so far.
    pub fn dropped(&self, to: NodeId) -> u64 {
        self.queue(to).map_or(0, |q| q.dropped.load(Ordering::Relaxed))
    }

    fn queue(&self, to: NodeId) -> Option<Arc<Queue>> {
        self.inner.queues.lock().ok().and_then(|q| q.get(&to).cloned())
    }

    fn queue_or_start(&self, to: NodeId) -> Arc<Queue> {
        let mut queues =
            self.inner.queues.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(q) = queues.get(&to) {
            return q.clone();
        }
        let q = Arc::new(Queue::default());
        queues.insert(to, q.clone());
        self.inner.runtime.spawn(sender(self.inner.clone(), to, q.clone()));
        q
    }
}

impl Inner {
    fn client_config(&self, to: NodeId) -> Result<rustls::ClientConfig, String> {
        let roots: Vec<Vec<u8>> = self
            .authorities
            .bundle()
            .map(|b| b.x509_authorities.iter().map(|a| a.der.clone()).collect())
            .unwrap_or_default();
        super::client_config(&self.td, to, &roots, Some(self.identity.clone()))
            .map_err(|e| e.to_string())
    }

    fn client(&self, to: NodeId) -> Result<PeerClient<tonic::transport::Channel>, String> {
        let address =
            self.addresses.get(to).ok_or_else(|| format!("no known address for replica {to}"))?;
        let config = self.client_config(to)?;
        let channel = super::channel(&address, Arc::new(config)).map_err(|e| e.to_string())?;
        Ok(PeerClient::new(channel))
    }

    fn unreachable(&self, to: NodeId) {
        if let Some(h) = self.handle.get() {
            h.report_unreachable(to);
        }
    }
}

/// A wait between `d / 2` and `d`, at random.
fn jittered(d: Duration) -> Duration {
    let half = d / 2;
    let extra = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
    half + Duration::from_millis(fastrand::u64(0..=extra))
}

/// Keeps one `Raft` stream open to `to` and feeds it batches from `queue`.
async fn sender(inner: Arc<Inner>, to: NodeId, queue: Arc<Queue>) {
    let mut backoff = BACKOFF_MIN;
    loop {
        // Nothing to send: wait for the driver (a heartbeat comes at least every tick count).
        while queue.is_empty() {
            queue.wake.notified().await;
        }
        let client = match inner.client(to) {
            Ok(c) => c,
            Err(reason) => {
                tracing::debug!(node_id = to, %reason, "peer not reachable");
                inner.unreachable(to);
                tokio::time::sleep(jittered(backoff)).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let mut client = client;
        let (tx, rx) = mpsc::channel::<RaftBatch>(8);
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        let mut call = Box::pin(async move { client.raft(stream).await });
        let mut sent_any = false;
        let outcome: Result<(), Status> = loop {
            let batch = queue.batch();
            if batch.is_empty() {
                tokio::select! {
                    () = queue.wake.notified() => continue,
                    r = &mut call => break r.map(|_| ()),
                }
            }
            let members = inner
                .addresses
                .all()
                .into_iter()
                .map(|(node_id, address)| Member { node_id, address })
                .collect();
            let msg = RaftBatch { messages: batch, from_address: inner.advertise.clone(), members };
            tokio::select! {
                sent = tx.send(msg) => {
                    if sent.is_err() {
                        break (&mut call).await.map(|_| ());
                    }
                    sent_any = true;
                }
                r = &mut call => break r.map(|_| ()),
            }
        };
        drop(tx);
        match outcome {
            Ok(()) => backoff = BACKOFF_MIN,
            Err(status) => {
                tracing::debug!(node_id = to, error = %status.message(), "raft stream ended");
                inner.unreachable(to);
                if sent_any {
                    backoff = BACKOFF_MIN;
                }
                tokio::time::sleep(jittered(backoff)).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

impl Transport for PeerTransport {
    fn send(&self, to: NodeId, messages: Vec<Bytes>) {
        if to == self.inner.me || messages.is_empty() {
            return;
        }
        self.queue_or_start(to).push(messages);
    }
}

impl SnapshotSource for PeerTransport {
    fn fetch(&self, from: NodeId, descriptor: SnapshotDescriptor) -> ChunkStreamFuture {
        let inner = self.inner.clone();
        Box::pin(async move {
            let mut client = inner.client(from).map_err(SnapshotError::Transfer)?;
            let request = SnapshotRequest { descriptor: descriptor.encode() };
            let stream = client
                .snapshot(request)
                .await
                .map_err(|s| SnapshotError::Transfer(s.message().to_owned()))?
                .into_inner();
            let chunks = stream.map(|item| match item {
                Ok(chunk) => {
                    ward_store::SnapshotChunk::from_bytes(&chunk.data).map_err(SnapshotError::from)
                }
                Err(status) => Err(SnapshotError::Transfer(status.message().to_owned())),
            });
            Ok(Box::pin(chunks) as ChunkStream)
        })
    }
}

/// The raft side of the peer listener: hands authenticated messages to the driver and
/// records the addresses peers announce.
#[derive(Debug, Clone)]
pub struct DriverInbound {
    handle: ClusterHandle,
    addresses: Arc<AddressBook>,
}

impl DriverInbound {
    /// Inbound messages go to `handle`.
    pub fn new(handle: ClusterHandle, addresses: Arc<AddressBook>) -> Self {
        Self { handle, addresses }
    }
}

impl RaftInbound for DriverInbound {
    fn deliver(&self, from: u64, bytes: &[u8]) -> Result<(), String> {
        self.handle.receive(from, bytes).map_err(|e| e.to_string())
    }

    fn learn_address(&self, from: u64, address: &str) {
        if self.addresses.learn(from, address) {
            tracing::info!(node_id = from, address, "learned a peer address");
        }
    }

    fn learn_member(&self, node: u64, address: &str) {
        if self.addresses.learn_if_unknown(node, address) {
            tracing::info!(node_id = node, address, "learned a peer address from a peer");
        }
    }
}
