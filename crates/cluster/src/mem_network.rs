//! An in-memory network of replicas for tests: raft messages are handed straight to the
//! receiving replica's [`ClusterHandle::receive`], snapshots are pulled from its store,
//! and filters cut links (partitions), drop messages, or delay them.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use ward_store::Store;

use crate::handle::ClusterHandle;
use crate::snapshot::export_for;
use crate::transport::{
    ChunkStreamFuture, NodeId, SnapshotDescriptor, SnapshotError, SnapshotSource, Transport,
};

#[derive(Default)]
struct Net {
    nodes: HashMap<NodeId, (ClusterHandle, Store)>,
    /// Directed links that drop everything.
    cut: HashSet<(NodeId, NodeId)>,
    /// Replicas whose snapshot pulls fail (their raft messages still flow).
    no_snapshots: HashSet<NodeId>,
    /// Extra latency of every message from or to a replica.
    delay: HashMap<NodeId, Duration>,
    /// Messages delivered and dropped, for assertions.
    delivered: u64,
    dropped: u64,
    /// Per link and raft message type, what was delivered.
    traffic: HashMap<(NodeId, NodeId, MessageType), Traffic>,
}

/// The raft messages of one type delivered over one link.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Messages.
    pub messages: u64,
    /// Log entries they held.
    pub entries: u64,
    /// The most bytes of entry data one message held.
    pub largest: usize,
}

/// The shared in-memory network. Cheap to clone.
#[derive(Clone)]
pub struct MemNetwork {
    net: Arc<Mutex<Net>>,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for MemNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemNetwork").finish_non_exhaustive()
    }
}

impl MemNetwork {
    /// An empty network; delayed messages are delivered by tasks on `runtime`.
    pub fn new(runtime: tokio::runtime::Handle) -> Self {
        Self { net: Arc::new(Mutex::new(Net::default())), runtime }
    }

    fn lock(&self) -> MutexGuard<'_, Net> {
        self.net.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The transport replica `from` sends through.
    pub fn transport(&self, from: NodeId) -> Arc<dyn Transport> {
        Arc::new(MemTransport { from, network: self.clone() })
    }

    /// The snapshot source replica `me` pulls through.
    pub fn snapshot_source(&self, me: NodeId) -> Arc<dyn SnapshotSource> {
        Arc::new(MemSnapshots { me, network: self.clone() })
    }

    /// Makes replica `id` reachable (again), served by `handle` and `store`.
    pub fn register(&self, id: NodeId, handle: ClusterHandle, store: Store) {
        self.lock().nodes.insert(id, (handle, store));
    }

    /// Makes replica `id` unreachable (stopped).
    pub fn unregister(&self, id: NodeId) {
        self.lock().nodes.remove(&id);
    }

    /// Cuts every link between `group` and the other registered replicas, both ways.
    pub fn isolate(&self, id: NodeId) {
        let mut net = self.lock();
        let others: Vec<NodeId> = net.nodes.keys().copied().filter(|n| *n != id).collect();
        for other in others {
            net.cut.insert((id, other));
            net.cut.insert((other, id));
        }
    }

    /// Cuts the directed link `from → to`.
    pub fn cut(&self, from: NodeId, to: NodeId) {
        self.lock().cut.insert((from, to));
    }

    /// Makes every snapshot pull by replica `me` fail, while its raft messages still flow.
    pub fn refuse_snapshots(&self, me: NodeId) {
        self.lock().no_snapshots.insert(me);
    }

    /// Restores every link and snapshot pull and removes every delay.
    pub fn heal(&self) {
        let mut net = self.lock();
        net.cut.clear();
        net.no_snapshots.clear();
        net.delay.clear();
    }

    /// Delays every message from or to `id` by `by`.
    pub fn delay(&self, id: NodeId, by: Duration) {
        self.lock().delay.insert(id, by);
    }

    /// Messages delivered and dropped so far.
    pub fn counts(&self) -> (u64, u64) {
        let net = self.lock();
        (net.delivered, net.dropped)
    }

    /// The raft messages of type `kind` delivered from `from` to `to` so far.
    pub fn raft_traffic(&self, from: NodeId, to: NodeId, kind: MessageType) -> Traffic {
        self.lock().traffic.get(&(from, to, kind)).copied().unwrap_or_default()
    }

    fn route(&self, from: NodeId, to: NodeId, messages: Vec<Bytes>) {
        let (target, sender, delay) = {
            let mut net = self.lock();
            let reachable = !net.cut.contains(&(from, to)) && net.nodes.contains_key(&to);
            let sender = net.nodes.get(&from).map(|(h, _)| h.clone());
            if !reachable {
                net.dropped += messages.len() as u64;
                drop(net);
                if let Some(s) = sender {
                    s.report_unreachable(to);
                }
                return;
            }
            net.delivered += messages.len() as u64;
            for m in &messages {
                if let Ok(m) = Message::parse_from_bytes(m) {
                    let seen = net.traffic.entry((from, to, m.get_msg_type())).or_default();
                    seen.messages += 1;
                    seen.entries += m.entries.len() as u64;
                    seen.largest =
                        seen.largest.max(m.entries.iter().map(|e| e.data.len()).sum::<usize>());
                }
            }
            let delay = net.delay.get(&from).copied().unwrap_or_default()
                + net.delay.get(&to).copied().unwrap_or_default();
            (net.nodes.get(&to).map(|(h, _)| h.clone()), sender, delay)
        };
        let _ = sender;
        let Some(target) = target else { return };
        let deliver = move || {
            for m in messages {
                if let Err(e) = target.receive(from, &m) {
                    tracing::debug!(from, to, error = %e, "in-memory delivery refused");
                }
            }
        };
        if delay.is_zero() {
            deliver();
        } else {
            self.runtime.spawn(async move {
                tokio::time::sleep(delay).await;
                deliver();
            });
        }
    }
}

struct MemTransport {
    from: NodeId,
    network: MemNetwork,
}

impl Transport for MemTransport {
    fn send(&self, to: NodeId, messages: Vec<Bytes>) {
        self.network.route(self.from, to, messages);
    }
}

struct MemSnapshots {
    me: NodeId,
    network: MemNetwork,
}

impl SnapshotSource for MemSnapshots {
    fn fetch(&self, from: NodeId, descriptor: SnapshotDescriptor) -> ChunkStreamFuture {
        let store = {
            let net = self.network.lock();
            if net.cut.contains(&(self.me, from))
                || net.cut.contains(&(from, self.me))
                || net.no_snapshots.contains(&self.me)
            {
                None
            } else {
                net.nodes.get(&from).map(|(_, s)| s.clone())
            }
        };
        Box::pin(async move {
            let store = store
                .ok_or_else(|| SnapshotError::Transfer(format!("replica {from} unreachable")))?;
            let export = export_for(&store, &descriptor)?;
            let stream = futures::stream::iter(export.map(|r| r.map_err(SnapshotError::from)));
            Ok(Box::pin(stream) as crate::transport::ChunkStream)
        })
    }
}
