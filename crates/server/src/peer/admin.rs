//! The `ward.cluster.v1.Cluster` service of the admin socket: status, add (a join
//! credential), remove (never below a quorum or the last voter), transfer-leader.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};
use ward_cluster::{ClusterHandle, ClusterStatus, MembershipChange, Role};
use ward_proto::ward::cluster::v1::cluster_server::Cluster;
use ward_proto::ward::cluster::v1::{
    AddMemberRequest, AddMemberResponse, MemberStatus, RemoveMemberRequest, RemoveMemberResponse,
    SlowSteps, SnapshotStatus, StatusRequest, StatusResponse, TransferLeaderRequest,
    TransferLeaderResponse,
};
use ward_store::Store;

use super::replica::{DEFAULT_CREDENTIAL_TTL, make_credential};
use super::transport::AddressBook;

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
    change_membership_held(handle, change).await
}

/// [`change_membership`] for a caller that holds the membership lock (a removal holds it
/// from its quorum check to its change, so two removals are never checked against the
/// same membership).
async fn change_membership_held(
    handle: &ClusterHandle,
    change: MembershipChange,
) -> Result<(), String> {
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
    /// The replica (its proposer is the server's, so a fatal write stops the server).
    pub ctx: super::ReplicaContext,
    /// The last state digest computed, reused while the state has not changed.
    pub digests: DigestCache,
}

/// The last state digest a replica computed: `(applied index, revision, hex digest)`.
pub type DigestCache = Arc<std::sync::Mutex<Option<(u64, u64, String)>>>;

/// The applied index of `store` and the lowercase hex SHA-256 of its snapshot stream at that
/// index: every chunk in its transport encoding ([`ward_store::SnapshotChunk::to_bytes`]),
/// data chunks then the trailer, with [`ward_store::DEFAULT_CHUNK_BYTES`] payloads. The
/// stream is a function of the applied state, so two replicas at the same applied index
/// give the same digest exactly when they hold the same state. `cache` skips the hashing
/// while neither the applied index nor the revision has moved.
///
/// # Errors
/// The store's error if the export fails.
pub fn state_digest(
    store: &Store,
    cache: &DigestCache,
) -> Result<(u64, String), ward_store::StoreError> {
    let export = store.export_snapshot_stream(ward_store::DEFAULT_CHUNK_BYTES)?;
    let info = export.info();
    if let Ok(guard) = cache.lock()
        && let Some((applied, revision, digest)) = guard.as_ref()
        && *applied == info.applied
        && *revision == info.revision
    {
        return Ok((info.applied, digest.clone()));
    }
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for chunk in export {
        ctx.update(&chunk?.to_bytes());
    }
    let digest = hex::encode(ctx.finish().as_ref());
    if let Ok(mut guard) = cache.lock() {
        *guard = Some((info.applied, info.revision, digest.clone()));
    }
    Ok((info.applied, digest))
}

impl std::fmt::Debug for ClusterAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterAdmin").field("node_id", &self.ctx.handle.node_id()).finish()
    }
}

/// A node id from a request, checked before anything else: 0 is refused the same way by
/// every command (and by the configuration), whatever the cluster looks like.
fn node_id_arg(id: u64) -> Result<u64, Status> {
    ward_cluster::check_node_id(id).map_err(Status::invalid_argument)
}

fn unavailable(e: impl std::fmt::Display) -> Status {
    Status::unavailable(e.to_string())
}

/// The status message for `s`, with peer addresses from `addresses` and the store's
/// `(applied index, state digest)` from [`state_digest`].
pub fn status_message(
    s: &ClusterStatus,
    addresses: &AddressBook,
    (applied_index, state_digest): (u64, String),
) -> StatusResponse {
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
            let last_heard_ms = s
                .progress
                .iter()
                .find(|p| p.node_id == node_id && node_id != s.node_id)
                .and_then(|p| p.last_heard)
                .map(|t| u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX));
            MemberStatus {
                node_id,
                address: addresses.get(node_id).unwrap_or_default(),
                role: role.to_owned(),
                leader: s.leader_id == Some(node_id),
                matched,
                lag,
                last_heard_ms,
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
        applied_index,
        state_digest,
        slow_raft_cycles: Some(slow_steps(s.slow_cycles)),
        slow_log_syncs: Some(slow_steps(s.slow_syncs)),
    }
}

fn slow_steps(s: ward_cluster::SlowSteps) -> SlowSteps {
    SlowSteps { count: s.count, slowest_ms: s.slowest_ms }
}

/// Why a removal is refused: for good (not a member, the last voter), or for want of a
/// quorum of caught-up voters heard from since the removal was asked for, which a moment's
/// wait may bring (the leader hears from every live follower each heartbeat).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Refused whatever happens next.
    Final(String),
    /// Refused unless more voters answer.
    NoQuorum(String),
}

/// How long a removal waits for enough voters to answer the leader: twice the election
/// timeout (2 s by default), in which a live voter answers several heartbeats.
fn removal_wait(s: &ClusterStatus) -> Duration {
    s.election_timeout.saturating_mul(2)
}

/// Whether removing `node` from the voters of `s` (as the leader sees it) leaves a quorum of
/// caught-up voters that the leader heard from at `since` or later (the leader itself
/// counts).
///
/// A voter killed a moment ago still looks caught up by its matched index; requiring a
/// message after `since` is what tells a live voter from a dead one.
///
/// # Errors
/// The [`Refusal`] with the sentence to refuse with.
pub fn check_removal(
    s: &ClusterStatus,
    node: u64,
    since: std::time::Instant,
) -> Result<(), Refusal> {
    let is_voter = s.voters.contains(&node);
    if !is_voter && !s.learners.contains(&node) {
        return Err(Refusal::Final(format!("replica {node} is not a member of the cluster")));
    }
    if !is_voter {
        return Ok(());
    }
    if s.voters.len() == 1 {
        return Err(Refusal::Final(format!(
            "replica {node} is the cluster's last voter; removing it would leave no replica to \
             decide anything"
        )));
    }
    let remaining: Vec<u64> = s.voters.iter().copied().filter(|v| *v != node).collect();
    let healthy = remaining
        .iter()
        .filter(|v| {
            **v == s.node_id
                || s.progress.iter().any(|p| {
                    p.node_id == **v
                        && s.last_index.saturating_sub(p.matched) <= CAUGHT_UP_LAG
                        && p.last_heard.is_some_and(|t| t >= since)
                })
        })
        .count();
    let quorum = remaining.len() / 2 + 1;
    if healthy < quorum {
        return Err(Refusal::NoQuorum(format!(
            "removing replica {node} would leave {healthy} caught-up voter(s) answering the \
             leader, of {}, fewer than the {quorum} a quorum needs",
            remaining.len()
        )));
    }
    Ok(())
}

impl ClusterAdmin {
    async fn leader_status(&self) -> Result<ClusterStatus, Status> {
        let s = self.ctx.handle.status().await.map_err(unavailable)?;
        if s.role != Role::Leader {
            let hint = match s.leader_id {
                Some(l) => format!(
                    "; the leader is replica {l}{}",
                    self.ctx.addresses.get(l).map(|a| format!(" at {a}")).unwrap_or_default()
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
        let s = self.ctx.handle.status().await.map_err(unavailable)?;
        let (store, cache) = (self.ctx.store.clone(), self.digests.clone());
        let digest = tokio::task::spawn_blocking(move || state_digest(&store, &cache))
            .await
            .map_err(|e| Status::internal(format!("computing the state digest: {e}")))?
            .map_err(|e| Status::internal(format!("computing the state digest: {e}")))?;
        tracing::debug!(
            node_id = s.node_id,
            term = s.term,
            commit = s.commit,
            applied = s.applied,
            applied_index = digest.0,
            state_digest = %digest.1,
            slow_raft_cycles = s.slow_cycles.count,
            slowest_raft_cycle_ms = s.slow_cycles.slowest_ms,
            slow_log_syncs = s.slow_syncs.count,
            slowest_log_sync_ms = s.slow_syncs.slowest_ms,
            "cluster status"
        );
        Ok(Response::new(status_message(&s, &self.ctx.addresses, digest)))
    }

    async fn add_member(
        &self,
        request: Request<AddMemberRequest>,
    ) -> Result<Response<AddMemberResponse>, Status> {
        let req = request.into_inner();
        node_id_arg(req.node_id)?;
        check_peer_address(&req.address).map_err(Status::invalid_argument)?;
        let s = self.ctx.handle.status().await.map_err(unavailable)?;
        if s.voters.contains(&req.node_id) || s.learners.contains(&req.node_id) {
            return Err(Status::already_exists(format!(
                "replica {} is already a member",
                req.node_id
            )));
        }
        let known = self.ctx.addresses.all();
        let members = s.voters.iter().chain(&s.learners);
        if let Some(other) = members.copied().find(|m| known.get(m) == Some(&req.address)) {
            return Err(Status::already_exists(format!(
                "address {} is replica {other}'s peer address",
                req.address
            )));
        }
        let ttl = match u64::try_from(req.ttl) {
            Ok(0) => DEFAULT_CREDENTIAL_TTL,
            Ok(secs) => Duration::from_secs(secs),
            Err(_) => return Err(Status::invalid_argument("the ttl must not be negative")),
        };
        let (credential, expires_at) = make_credential(
            &self.ctx.store,
            &self.ctx.td,
            self.ctx.proposer.as_ref(),
            req.node_id,
            &req.address,
            ttl,
            self.ctx.clock.now(),
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
        let node = node_id_arg(request.into_inner().node_id)?;
        let _one = self.ctx.membership.lock().await;
        let since = std::time::Instant::now();
        let mut deadline = None;
        loop {
            let s = self.leader_status().await?;
            let deadline =
                *deadline.get_or_insert_with(|| tokio::time::Instant::now() + removal_wait(&s));
            match check_removal(&s, node, since) {
                Ok(()) => break,
                Err(Refusal::NoQuorum(e)) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(node_id = node, reason = %e, "removal waits for voters");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(Refusal::Final(e) | Refusal::NoQuorum(e)) => {
                    return Err(Status::failed_precondition(e));
                }
            }
        }
        change_membership_held(&self.ctx.handle, MembershipChange::Remove(node))
            .await
            .map_err(Status::unavailable)?;
        self.ctx.addresses.forget(node);
        tracing::info!(node_id = node, "removed a replica");
        Ok(Response::new(RemoveMemberResponse {}))
    }

    async fn transfer_leader(
        &self,
        request: Request<TransferLeaderRequest>,
    ) -> Result<Response<TransferLeaderResponse>, Status> {
        let to = node_id_arg(request.into_inner().node_id)?;
        let s = self.leader_status().await?;
        if !s.voters.contains(&to) {
            return Err(Status::failed_precondition(format!("replica {to} is not a voter")));
        }
        self.ctx.handle.transfer_leader(to).map_err(unavailable)?;
        let deadline = tokio::time::Instant::now() + TRANSFER_WAIT;
        loop {
            if self.ctx.handle.leader() == Some(to) {
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

/// What every `cluster` call answers on a server that is not a replica of a cluster.
pub const NOT_A_MEMBER: &str = "this server does not run as a cluster member (it was started \
     without a [cluster] table or cluster flags), so it has no cluster to show or change";

/// The `ward.cluster.v1.Cluster` service of a server started without a `[cluster]` table:
/// every call is refused with `Unimplemented` and [`NOT_A_MEMBER`], rather than the router's
/// empty refusal of an unknown service.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoCluster;

fn not_a_member() -> Status {
    Status::unimplemented(NOT_A_MEMBER)
}

#[tonic::async_trait]
impl Cluster for NoCluster {
    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        Err(not_a_member())
    }

    async fn add_member(
        &self,
        _: Request<AddMemberRequest>,
    ) -> Result<Response<AddMemberResponse>, Status> {
        Err(not_a_member())
    }

    async fn remove_member(
        &self,
        _: Request<RemoveMemberRequest>,
    ) -> Result<Response<RemoveMemberResponse>, Status> {
        Err(not_a_member())
    }

    async fn transfer_leader(
        &self,
        _: Request<TransferLeaderRequest>,
    ) -> Result<Response<TransferLeaderResponse>, Status> {
        Err(not_a_member())
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

/// Refuses a peer address no replica could listen on or be dialled at: it must be
/// `host:port` with a host and a port from 1 to 65535 (an IPv6 host in brackets).
fn check_peer_address(address: &str) -> Result<(), String> {
    let usable = address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0));
    if usable {
        Ok(())
    } else {
        Err(format!("the address must be host:port with a port from 1 to 65535, not {address:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_addresses_need_a_host_and_a_port_from_1_to_65535() {
        for good in ["127.0.0.4:8082", "ward-1.ward.default.svc:8082", "[::1]:8082", "h:65535"] {
            assert_eq!(check_peer_address(good), Ok(()), "{good}");
        }
        for bad in ["", "127.0.0.4", "127.0.0.4:", ":8082", "127.0.0.4:0", "127.0.0.4:99999", "h:x"]
        {
            let err = check_peer_address(bad).unwrap_err();
            assert!(
                err.starts_with("the address must be host:port with a port from 1 to 65535"),
                "{bad}: {err}"
            );
        }
    }
    use ward_cluster::PeerProgress;
    use ward_core::{JoinToken, TrustDomain};
    use ward_store::{Command, StoreConfig};

    /// The leader 1's view of voters 1..=n, each follower matched at `matched[i]` and last
    /// heard at `heard[i]`.
    fn leader_view(matched: &[u64], heard: &[Option<std::time::Instant>]) -> ClusterStatus {
        let followers = (2..).zip(matched.iter().zip(heard));
        ClusterStatus {
            node_id: 1,
            role: Role::Leader,
            term: 3,
            leader_id: Some(1),
            commit: 500,
            applied: 500,
            first_index: 1,
            last_index: 500,
            last_term: 3,
            voters: (1..=matched.len() as u64 + 1).collect(),
            learners: vec![9],
            progress: followers
                .map(|(node_id, (m, h))| PeerProgress {
                    node_id,
                    matched: *m,
                    learner: false,
                    last_heard: *h,
                })
                .collect(),
            snapshot_index: 0,
            slow_cycles: Default::default(),
            slow_syncs: Default::default(),
            election_timeout: std::time::Duration::from_secs(1),
        }
    }

    #[test]
    fn a_removal_counts_only_caught_up_voters_heard_since_it_was_asked() {
        let before = std::time::Instant::now();
        let since = before + Duration::from_millis(10);
        let after = since + Duration::from_millis(10);
        // Three voters, 2 and 3 live and caught up: any one may go, a learner too.
        let s = leader_view(&[500, 480], &[Some(after), Some(after)]);
        for node in [1, 2, 3, 9] {
            assert_eq!(check_removal(&s, node, since), Ok(()), "{node}");
        }
        // Voter 3 was last heard before the removal was asked for (killed a moment ago,
        // its matched index still current): removing 2 would leave 1 and a dead 3.
        let s = leader_view(&[500, 500], &[Some(after), Some(before)]);
        assert_eq!(
            check_removal(&s, 2, since),
            Err(Refusal::NoQuorum(
                "removing replica 2 would leave 1 caught-up voter(s) answering the leader, of 2, \
                 fewer than the 2 a quorum needs"
                    .into()
            ))
        );
        assert_eq!(check_removal(&s, 3, since), Ok(()));
        // Heard from, but 65 entries behind; or never heard from.
        let s = leader_view(&[500, 435], &[Some(after), Some(after)]);
        assert!(matches!(check_removal(&s, 2, since), Err(Refusal::NoQuorum(_))));
        let s = leader_view(&[500, 500], &[Some(after), None]);
        assert!(matches!(check_removal(&s, 2, since), Err(Refusal::NoQuorum(_))));
        // Five voters, two of them dead: removing a live one leaves 2 of 4 live.
        let s = leader_view(&[500, 500, 500, 500], &[Some(after), Some(after), Some(before), None]);
        assert!(matches!(check_removal(&s, 2, since), Err(Refusal::NoQuorum(_))));
        assert_eq!(check_removal(&s, 4, since), Ok(()));
    }

    #[test]
    fn a_removal_of_a_stranger_or_of_the_last_voter_is_refused_for_good() {
        let since = std::time::Instant::now();
        let s = leader_view(&[500], &[Some(since)]);
        assert_eq!(
            check_removal(&s, 7, since),
            Err(Refusal::Final("replica 7 is not a member of the cluster".into()))
        );
        let alone = ClusterStatus { voters: vec![1], progress: Vec::new(), ..s };
        assert_eq!(
            check_removal(&alone, 1, since),
            Err(Refusal::Final(
                "replica 1 is the cluster's last voter; removing it would leave no replica to \
                 decide anything"
                    .into()
            ))
        );
    }

    fn token(name: &str) -> Command {
        Command::CreateJoinToken {
            token: JoinToken { token: name.into(), expires_at: 100 }.to_stored(),
            entry: None,
        }
    }

    /// A store in `dir` that applied one join token per name, in order.
    fn store_with(dir: &std::path::Path, names: &[&str]) -> Store {
        let td = TrustDomain::new("example.org").unwrap();
        let store = Store::open(dir, StoreConfig::new(td)).unwrap();
        for (i, name) in names.iter().enumerate() {
            store.apply(i as u64 + 1, &token(name)).unwrap();
        }
        store
    }

    #[test]
    fn state_digest_is_equal_for_equal_states_and_differs_otherwise() {
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let a = store_with(dirs[0].path(), &["one", "two"]);
        let b = store_with(dirs[1].path(), &["one", "two"]);
        let c = store_with(dirs[2].path(), &["one", "three"]);
        let (da, db, dc) = (
            state_digest(&a, &DigestCache::default()).unwrap(),
            state_digest(&b, &DigestCache::default()).unwrap(),
            state_digest(&c, &DigestCache::default()).unwrap(),
        );
        assert_eq!(da.0, 2);
        assert_eq!(da.1.len(), 64, "hex SHA-256: {}", da.1);
        assert!(da.1.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_eq!(da, db, "same commands, same state");
        assert_eq!(dc.0, 2);
        assert_ne!(da.1, dc.1, "a different token, a different state");
    }

    #[test]
    fn state_digest_follows_a_new_apply_through_its_cache() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with(dir.path(), &["one"]);
        let cache = DigestCache::default();
        let first = state_digest(&store, &cache).unwrap();
        assert_eq!(state_digest(&store, &cache).unwrap(), first, "unchanged state");
        store.apply(2, &token("two")).unwrap();
        let second = state_digest(&store, &cache).unwrap();
        assert_eq!(second.0, 2);
        assert_ne!(second.1, first.1);
        assert_eq!(second, state_digest(&store, &DigestCache::default()).unwrap());
    }
}
