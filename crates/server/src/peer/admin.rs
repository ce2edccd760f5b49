//! The `ward.cluster.v1.Cluster` service of the admin socket: status, add (a join
//! credential), remove (never below a quorum or the last voter), transfer-leader.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};
use ward_cluster::{ClusterHandle, ClusterStatus, MembershipChange, Role};
use ward_core::{Clock, TrustDomain};
use ward_proto::ward::cluster::v1::cluster_server::Cluster;
use ward_proto::ward::cluster::v1::{
    AddMemberRequest, AddMemberResponse, MemberStatus, RemoveMemberRequest, RemoveMemberResponse,
    SnapshotStatus, StatusRequest, StatusResponse, TransferLeaderRequest, TransferLeaderResponse,
};
use ward_store::Store;

use super::replica::{DEFAULT_CREDENTIAL_TTL, make_credential};
use super::transport::AddressBook;
use crate::proposer::Proposer;

/// How long `transfer-leader` waits for the new leader.
const TRANSFER_WAIT: Duration = Duration::from_secs(10);

/// A follower within this many entries of the leader's last index counts as caught up
/// (for promotion of learners and for the quorum check of a removal).
pub const CAUGHT_UP_LAG: u64 = 64;

/// Serializes this replica's membership changes: raft takes one at a time and drops a second
/// proposed while the first is pending, so joins, promotions and removals queue here.
pub type MembershipLock = Arc<tokio::sync::Mutex<()>>;

fn reflected(s: &ClusterStatus, change: MembershipChange) -> bool {
    match change {
        MembershipChange::AddLearner(n) => s.learners.contains(&n) || s.voters.contains(&n),
        MembershipChange::AddVoter(n) => s.voters.contains(&n),
        MembershipChange::Remove(n) => !s.learners.contains(&n) && !s.voters.contains(&n),
    }
}

/// Makes `change` under `lock` and returns once this replica's membership shows it
/// (proposing it again if raft dropped it), or with the reason it did not happen.
///
/// # Errors
/// A sentence when the proposal fails or the change never shows.
pub async fn change_membership(
    handle: &ClusterHandle,
    lock: &MembershipLock,
    change: MembershipChange,
) -> Result<(), String> {
    let _one = lock.lock().await;
    for _ in 0..5 {
        if handle.status().await.is_ok_and(|s| reflected(&s, change)) {
            return Ok(());
        }
        handle.change_membership(change).await.map_err(|e| e.to_string())?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while tokio::time::Instant::now() < deadline {
            if handle.status().await.is_ok_and(|s| reflected(&s, change)) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Err(format!("the membership change {change:?} did not take effect"))
}

/// The Cluster admin service of one replica.
pub struct ClusterAdmin {
    /// The replica's driver.
    pub handle: ClusterHandle,
    /// Its store.
    pub store: Store,
    /// The trust domain.
    pub td: TrustDomain,
    /// Writes.
    pub proposer: Arc<dyn Proposer>,
    /// Peer addresses.
    pub addresses: Arc<AddressBook>,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// Serializes membership changes.
    pub membership: MembershipLock,
}

impl std::fmt::Debug for ClusterAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterAdmin").field("node_id", &self.handle.node_id()).finish()
    }
}

fn unavailable(e: impl std::fmt::Display) -> Status {
    Status::unavailable(e.to_string())
}

/// The status message for `s`, with peer addresses from `addresses`.
pub fn status_message(s: &ClusterStatus, addresses: &AddressBook) -> StatusResponse {
    let last = s.last_index;
    let mut members: Vec<MemberStatus> = s
        .voters
        .iter()
        .map(|n| (*n, "voter"))
        .chain(s.learners.iter().map(|n| (*n, "learner")))
        .map(|(node_id, role)| {
            let matched = if node_id == s.node_id && s.role == Role::Leader {
                last
            } else {
                s.progress.iter().find(|p| p.node_id == node_id).map_or(0, |p| p.matched)
            };
            let lag = if s.role == Role::Leader { last.saturating_sub(matched) } else { 0 };
            MemberStatus {
                node_id,
                address: addresses.get(node_id).unwrap_or_default(),
                role: role.to_owned(),
                leader: s.leader_id == Some(node_id),
                matched,
                lag,
            }
        })
        .collect();
    members.sort_by_key(|m| m.node_id);
    StatusResponse {
        node_id: s.node_id,
        leader_id: s.leader_id.unwrap_or(0),
        term: s.term,
        commit: s.commit,
        applied: s.applied,
        members,
        last_snapshot: Some(SnapshotStatus { index: s.snapshot_index, term: 0 }),
    }
}

/// Whether removing `node` from the voters of `s` (as the leader sees it) leaves a quorum of
/// caught-up voters; `Err` with the sentence to refuse with.
pub fn check_removal(s: &ClusterStatus, node: u64) -> Result<(), String> {
    let is_voter = s.voters.contains(&node);
    if !is_voter && !s.learners.contains(&node) {
        return Err(format!("replica {node} is not a member of the cluster"));
    }
    if !is_voter {
        return Ok(());
    }
    if s.voters.len() == 1 {
        return Err(format!(
            "replica {node} is the cluster's last voter; removing it would leave no replica to \
             decide anything"
        ));
    }
    let remaining: Vec<u64> = s.voters.iter().copied().filter(|v| *v != node).collect();
    let healthy = remaining
        .iter()
        .filter(|v| {
            **v == s.node_id
                || s.progress.iter().any(|p| {
                    p.node_id == **v && s.last_index.saturating_sub(p.matched) <= CAUGHT_UP_LAG
                })
        })
        .count();
    let quorum = remaining.len() / 2 + 1;
    if healthy < quorum {
        return Err(format!(
            "removing replica {node} would leave {healthy} caught-up voter(s) of {}, fewer than \
             the {quorum} a quorum needs",
            remaining.len()
        ));
    }
    Ok(())
}

impl ClusterAdmin {
    async fn leader_status(&self) -> Result<ClusterStatus, Status> {
        let s = self.handle.status().await.map_err(unavailable)?;
        if s.role != Role::Leader {
            let hint = match s.leader_id {
                Some(l) => format!(
                    "; the leader is replica {l}{}",
                    self.addresses.get(l).map(|a| format!(" at {a}")).unwrap_or_default()
                ),
                None => "; no leader is known".to_owned(),
            };
            return Err(Status::failed_precondition(format!(
                "replica {} is not the leader{hint}",
                s.node_id
            )));
        }
        Ok(s)
    }
}

#[tonic::async_trait]
impl Cluster for ClusterAdmin {
    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let s = self.handle.status().await.map_err(unavailable)?;
        tracing::debug!(
            node_id = s.node_id,
            term = s.term,
            commit = s.commit,
            applied = s.applied,
            "cluster status"
        );
        Ok(Response::new(status_message(&s, &self.addresses)))
    }

    async fn add_member(
        &self,
        request: Request<AddMemberRequest>,
    ) -> Result<Response<AddMemberResponse>, Status> {
        let req = request.into_inner();
        if req.node_id == 0 {
            return Err(Status::invalid_argument("node ids start at 1"));
        }
        if req.address.is_empty() || !req.address.contains(':') {
            return Err(Status::invalid_argument("the address must be host:port"));
        }
        let s = self.handle.status().await.map_err(unavailable)?;
        if s.voters.contains(&req.node_id) || s.learners.contains(&req.node_id) {
            return Err(Status::already_exists(format!(
                "replica {} is already a member",
                req.node_id
            )));
        }
        let ttl = match u64::try_from(req.ttl) {
            Ok(0) => DEFAULT_CREDENTIAL_TTL,
            Ok(secs) => Duration::from_secs(secs),
            Err(_) => return Err(Status::invalid_argument("the ttl must not be negative")),
        };
        let (credential, expires_at) = make_credential(
            &self.store,
            &self.td,
            self.proposer.as_ref(),
            req.node_id,
            &req.address,
            ttl,
            self.clock.now(),
        )
        .await
        .map_err(Status::unavailable)?;
        tracing::info!(node_id = req.node_id, address = %req.address, expires_at, "made a join credential");
        Ok(Response::new(AddMemberResponse { credential, expires_at }))
    }

    async fn remove_member(
        &self,
        request: Request<RemoveMemberRequest>,
    ) -> Result<Response<RemoveMemberResponse>, Status> {
        let node = request.into_inner().node_id;
        let s = self.leader_status().await?;
        check_removal(&s, node).map_err(Status::failed_precondition)?;
        change_membership(&self.handle, &self.membership, MembershipChange::Remove(node))
            .await
            .map_err(Status::unavailable)?;
        self.addresses.forget(node);
        tracing::info!(node_id = node, "removed a replica");
        Ok(Response::new(RemoveMemberResponse {}))
    }

    async fn transfer_leader(
        &self,
        request: Request<TransferLeaderRequest>,
    ) -> Result<Response<TransferLeaderResponse>, Status> {
        let to = request.into_inner().node_id;
        let s = self.leader_status().await?;
        if !s.voters.contains(&to) {
            return Err(Status::failed_precondition(format!("replica {to} is not a voter")));
        }
        self.handle.transfer_leader(to).map_err(unavailable)?;
        let deadline = tokio::time::Instant::now() + TRANSFER_WAIT;
        loop {
            if self.handle.leader() == Some(to) {
                return Ok(Response::new(TransferLeaderResponse { leader_id: to }));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Status::deadline_exceeded(format!(
                    "replica {to} did not take over within {}s",
                    TRANSFER_WAIT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Promotes caught-up learners to voters while this replica leads; runs until `stop`.
pub async fn promote_learners(
    handle: ClusterHandle,
    membership: MembershipLock,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let Ok(s) = handle.status().await else { continue };
        if s.role != Role::Leader {
            continue;
        }
        for learner in &s.learners {
            let caught_up = s.progress.iter().any(|p| {
                p.node_id == *learner
                    && p.matched > 0
                    && s.last_index.saturating_sub(p.matched) <= CAUGHT_UP_LAG
            });
            if caught_up {
                let change = MembershipChange::AddVoter(*learner);
                match change_membership(&handle, &membership, change).await {
                    Ok(_) => tracing::info!(node_id = learner, "promoted a caught-up learner"),
                    Err(e) => tracing::warn!(node_id = learner, error = %e, "promotion failed"),
                }
            }
        }
    }
}
