//! A replica of a multi-member cluster: the driver with the peer transport, the peer
//! listener's back end (snapshots, discovery, joins), and the joining side of a new replica.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ward_cluster::{ClusterHandle, MembershipChange, SnapshotDescriptor};
use ward_core::{Bundle, Clock, JwtAuthority, TrustDomain, X509Authority};
use ward_proto::ward::cluster::v1::peer_client::PeerClient;
use ward_proto::ward::cluster::v1::{
    DiscoverRequest, JoinRequest, JoinResponse, Member, SnapshotChunk,
};
use ward_store::{Applied, Command, Outcome, Store};

use super::credential::JoinCredential;
use super::service::{ChunkStream, PeerBackend};
use super::transport::AddressBook;
use crate::proposer::{ProposeFuture, Proposer, ReadFuture};
use crate::tls::AuthoritySource;

/// How a follower's refusal of a join names the leader's peer address.
const LEADER_IS_AT: &str = "the leader is at ";

/// How long a new member's credential is good for unless `cluster add -ttl` says otherwise.
pub const DEFAULT_CREDENTIAL_TTL: Duration = Duration::from_secs(3600);

/// The proposer of a replica that is not yet a member of its cluster: the CA manager's
/// publications (AppendBundle of the own trust domain) are held and answered at once, since
/// the join carries these authorities into the bundle; once [`HoldingProposer::release`] is
/// called every command goes to the cluster.
#[derive(Debug)]
pub struct HoldingProposer {
    td: TrustDomain,
    inner: Arc<dyn Proposer>,
    held: Mutex<Option<(Vec<X509Authority>, Vec<JwtAuthority>)>>,
}

impl HoldingProposer {
    /// Holds publications for `td` until released; everything else goes to `inner`.
    pub fn new(td: TrustDomain, inner: Arc<dyn Proposer>) -> Self {
        Self { td, inner, held: Mutex::new(Some((Vec::new(), Vec::new()))) }
    }

    /// The authorities held so far.
    pub fn held(&self) -> (Vec<X509Authority>, Vec<JwtAuthority>) {
        self.held.lock().ok().and_then(|h| h.clone()).unwrap_or_default()
    }

    /// Stops holding: later commands all go to the cluster.
    pub fn release(&self) {
        if let Ok(mut h) = self.held.lock() {
            *h = None;
        }
    }
}

impl Proposer for HoldingProposer {
    fn propose(&self, cmd: Command) -> ProposeFuture {
        if let Command::AppendBundle { trust_domain, x509_authorities, jwt_authorities } = &cmd
            && *trust_domain == self.td
            && let Ok(mut held) = self.held.lock()
            && let Some((x, j)) = held.as_mut()
        {
            x.extend(x509_authorities.iter().cloned());
            j.extend(jwt_authorities.iter().cloned());
            let applied = Applied { index: 0, revision: 0, outcome: Outcome::Bundles(Vec::new()) };
            return Box::pin(async move { Ok(applied) });
        }
        self.inner.propose(cmd)
    }

    fn is_leader(&self) -> bool {
        self.inner.is_leader()
    }

    fn read_barrier(&self) -> ReadFuture {
        self.inner.read_barrier()
    }
}

/// The X.509 authorities a replica trusts for peers: the store's bundle, or before the
/// replica has one (a new replica joining), the authorities it pinned with its credential.
#[derive(Debug)]
pub struct PeerAuthorities {
    store: Store,
    td: TrustDomain,
    seed: Mutex<Option<Arc<Bundle>>>,
}

impl PeerAuthorities {
    /// Reads `store`'s bundle of `td`.
    pub fn new(store: Store, td: TrustDomain) -> Self {
        Self { store, td, seed: Mutex::new(None) }
    }

    /// Trusts `authorities` until the store holds a bundle.
    pub fn seed(&self, authorities: &[Vec<u8>]) {
        let mut b = Bundle::new(self.td.clone());
        b.x509_authorities = authorities.iter().map(|d| X509Authority::new(d.clone())).collect();
        if let Ok(mut s) = self.seed.lock() {
            *s = Some(Arc::new(b));
        }
    }
}

impl AuthoritySource for PeerAuthorities {
    fn bundle(&self) -> Option<Arc<Bundle>> {
        let stored = self.store.bundle(&self.td);
        match (stored, self.seed.lock().ok().and_then(|s| s.clone())) {
            (Some(b), Some(seed)) => {
                let mut merged = (*b).clone();
                for a in &seed.x509_authorities {
                    if !merged.x509_authorities.iter().any(|x| x.der == a.der) {
                        merged.x509_authorities.push(a.clone());
                    }
                }
                Some(Arc::new(merged))
            }
            (Some(b), None) => Some(b),
            (None, seed) => seed,
        }
    }
}

/// What a replica's peer listener serves besides raft messages.
pub struct ClusterBackend {
    /// The replica (its proposer writes through raft directly).
    pub ctx: super::ReplicaContext,
}

impl std::fmt::Debug for ClusterBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterBackend").field("node_id", &self.ctx.handle.node_id()).finish()
    }
}

fn parse_authorities(td: &TrustDomain, ders: &[Vec<u8>]) -> Result<Vec<X509Authority>, String> {
    use x509_parser::prelude::FromDer;
    let mut out = Vec::new();
    for der in ders {
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
            .map_err(|_| "an X.509 authority does not parse".to_owned())?;
        if !cert.is_ca() {
            return Err("an X.509 authority is not a CA certificate".into());
        }
        let ours = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value.general_names.iter().any(|n| {
                    matches!(n, x509_parser::extensions::GeneralName::URI(u)
                        if *u == td.id().as_str())
                })
            })
            .unwrap_or(false);
        if !ours {
            return Err(format!("an X.509 authority is not one of trust domain {td}"));
        }
        out.push(X509Authority::new(der.clone()));
    }
    Ok(out)
}

impl ClusterBackend {
    async fn admit(&self, req: JoinRequest) -> Result<JoinResponse, tonic::Status> {
        use tonic::Status;
        let credential = JoinCredential::parse(&req.credential)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let node = credential.node_id;
        let status =
            self.ctx.handle.status().await.map_err(|e| Status::unavailable(e.to_string()))?;
        if status.leader_id != Some(status.node_id) {
            let hint = status
                .leader_id
                .and_then(|l| self.ctx.addresses.get(l))
                .map(|a| format!("; {LEADER_IS_AT}{a}"))
                .unwrap_or_default();
            return Err(Status::failed_precondition(format!("not the leader{hint}")));
        }
        let x509 = parse_authorities(&self.ctx.td, &req.x509_authorities)
            .map_err(Status::invalid_argument)?;
        if x509.is_empty() {
            return Err(Status::invalid_argument("the joining replica sent no X.509 authority"));
        }
        let jwt: Vec<JwtAuthority> = req
            .jwt_authorities
            .into_iter()
            .map(|j| JwtAuthority {
                public_key_der: j.public_key,
                key_id: j.key_id,
                expires_at: j.expires_at,
                tainted: false,
            })
            .collect();
        let now = ward_core::clock::unix_seconds(self.ctx.clock.now());
        let consumed = self
            .ctx
            .proposer
            .propose(Command::ConsumeJoinToken { hash: credential.stored_hash(), now })
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        match consumed.outcome {
            Outcome::JoinTokenConsumed(Ok(t)) if !t.expired => {}
            Outcome::JoinTokenConsumed(Ok(_)) => {
                return Err(Status::permission_denied("join credential expired"));
            }
            _ => return Err(Status::permission_denied("join credential unknown or already used")),
        }
        // Checked after the credential is spent, so that a used credential always reads as
        // used, whoever presents it.
        if status.voters.contains(&node) || status.learners.contains(&node) {
            return Err(Status::already_exists(format!("replica {node} is already a member")));
        }
        self.ctx
            .proposer
            .propose(Command::AppendBundle {
                trust_domain: self.ctx.td.clone(),
                x509_authorities: x509,
                jwt_authorities: jwt,
            })
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        self.ctx.addresses.learn(node, &credential.address);
        let change = MembershipChange::AddLearner(node);
        super::admin::change_membership(&self.ctx.handle, &self.ctx.membership, change)
            .await
            .map_err(Status::unavailable)?;
        tracing::info!(node_id = node, address = %credential.address, "replica joined as a learner");
        let members = self
            .ctx
            .addresses
            .all()
            .into_iter()
            .map(|(node_id, address)| Member { node_id, address })
            .collect();
        Ok(JoinResponse { members, leader_id: status.node_id })
    }
}

#[tonic::async_trait]
impl PeerBackend for ClusterBackend {
    async fn snapshot(&self, to: u64, descriptor: Vec<u8>) -> Result<ChunkStream, tonic::Status> {
        let descriptor = SnapshotDescriptor::decode(&descriptor)
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        let store = self.ctx.store.clone();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<SnapshotChunk, tonic::Status>>(4);
        tokio::task::spawn_blocking(move || {
            let export = match ward_cluster::snapshot::export_for(&store, &descriptor) {
                Ok(e) => e,
                Err(e) => {
                    let _ = tx.blocking_send(Err(tonic::Status::unavailable(e.to_string())));
                    return;
                }
            };
            for chunk in export {
                let item = chunk
                    .map(|c| SnapshotChunk { data: c.to_bytes() })
                    .map_err(|e| tonic::Status::internal(e.to_string()));
                if tx.blocking_send(item).is_err() {
                    return;
                }
            }
        });
        tracing::info!(node_id = to, index = descriptor.index, "serving a snapshot");
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    fn x509_authorities(&self) -> Vec<Vec<u8>> {
        self.ctx
            .store
            .bundle(&self.ctx.td)
            .map(|b| b.x509_authorities.iter().map(|a| a.der.clone()).collect())
            .unwrap_or_default()
    }

    async fn join(&self, req: JoinRequest) -> Result<JoinResponse, tonic::Status> {
        let result = self.admit(req).await;
        if let Err(status) = &result {
            tracing::warn!(error = %status.message(), "join refused");
        }
        result
    }
}

/// Makes a join credential for `node_id` at `address`, good until `now + ttl`, stored hashed
/// through `proposer`. Returns the text and its expiry (Unix seconds).
///
/// # Errors
/// A sentence when the randomness, the proposal or the store fails.
pub async fn make_credential(
    store: &Store,
    td: &TrustDomain,
    proposer: &dyn Proposer,
    node_id: u64,
    address: &str,
    ttl: Duration,
    now: SystemTime,
) -> Result<(String, i64), String> {
    let authorities: Vec<Vec<u8>> = store
        .bundle(td)
        .map(|b| b.x509_authorities.iter().map(|a| a.der.clone()).collect())
        .unwrap_or_default();
    let credential = JoinCredential::generate(node_id, address, &authorities)?;
    let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2);
    let expires_at = ward_core::clock::unix_seconds(now).saturating_add(ttl);
    let token = ward_core::StoredJoinToken { hash: credential.stored_hash(), expires_at };
    let applied = proposer
        .propose(Command::CreateJoinToken { token, entry: None })
        .await
        .map_err(|e| e.to_string())?;
    match applied.outcome {
        Outcome::JoinTokenCreated(Ok(_)) => Ok((credential.to_text(), expires_at)),
        Outcome::JoinTokenCreated(Err(e)) => Err(e.to_string()),
        _ => Err("unexpected outcome".into()),
    }
}

/// Records the server chain a TLS handshake presented, accepting any, so that it can be
/// checked once the authorities it must chain to are known (joining).
#[derive(Debug, Default)]
struct RecordingVerifier {
    chain: Mutex<Vec<Vec<u8>>>,
}

impl rustls::client::danger::ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let mut chain = vec![end_entity.to_vec()];
        chain.extend(intermediates.iter().map(|c| c.to_vec()));
        if let Ok(mut c) = self.chain.lock() {
            *c = chain;
        }
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let algs = &crate::tls::provider().signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let algs = &crate::tls::provider().signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        crate::tls::provider().signature_verification_algorithms.supported_schemes()
    }
}

/// Joins the cluster at `address` with `credential`, offering `x509`/`jwt` as this replica's
/// authorities. The server is trusted only after its X.509 authorities hash to the
/// credential's discovery hash and its certificate chains to them and names a replica; only
/// then is the credential sent. Returns the authorities (to trust peers until the store holds
/// the bundle) and the join response.
///
/// # Errors
/// A sentence naming what failed or was refused.
pub async fn join(
    td: &TrustDomain,
    address: &str,
    credential: &JoinCredential,
    x509: &[X509Authority],
    jwt: &[JwtAuthority],
    now: SystemTime,
) -> Result<(Vec<Vec<u8>>, JoinResponse), String> {
    let recorder = Arc::new(RecordingVerifier::default());
    let config = super::client_config_with(recorder.clone(), None).map_err(|e| e.to_string())?;
    let channel = super::channel(address, Arc::new(config)).map_err(|e| e.to_string())?;
    let mut client = PeerClient::new(channel);
    let found = client
        .discover(DiscoverRequest {})
        .await
        .map_err(|s| format!("reaching {address}: {}", s.message()))?
        .into_inner()
        .x509_authorities;
    let pinned = credential.pinned(&found);
    if pinned.is_empty() {
        return Err(format!(
            "the server at {address} holds none of the authorities the credential was made \
             with (another cluster, or they all rotated since); make a new credential"
        ));
    }
    let chain = recorder.chain.lock().map(|c| c.clone()).unwrap_or_default();
    let mut bundle = Bundle::new(td.clone());
    bundle.x509_authorities = pinned.iter().map(|d| X509Authority::new((*d).clone())).collect();
    let id = ward_core::x509svid::verify_with_bundle_for(
        ward_core::x509svid::SvidUsage::ServerAuth,
        &chain,
        &bundle,
        now,
    )
    .map_err(|e| format!("the server at {address} presented an untrusted certificate: {e}"))?;
    if ward_core::replica_id::replica_node_id(&id, td).is_none() {
        return Err(format!("the server at {address} is not a replica ({id})"));
    }
    let request = JoinRequest {
        credential: credential.to_text(),
        x509_authorities: x509.iter().map(|a| a.der.clone()).collect(),
        jwt_authorities: jwt
            .iter()
            .map(|j| ward_proto::ward::cluster::v1::JwtAuthority {
                public_key: j.public_key_der.clone(),
                key_id: j.key_id.clone(),
                expires_at: j.expires_at,
            })
            .collect(),
    };
    let response = client
        .join(request)
        .await
        .map_err(|s| format!("join refused: {}", s.message()))?
        .into_inner();
    Ok((found, response))
}

/// A replica of a multi-member cluster as `ward-server run` starts it: the driver with the
/// peer transport first, then (once the CA has an authority) the peer listener, then the join
/// of a new replica.
pub struct ClusterStartup {
    /// The resolved `[cluster]` settings.
    pub settings: crate::config::ClusterConfig,
    /// The driver.
    pub handle: ClusterHandle,
    /// Raft messages out.
    pub transport: super::transport::PeerTransport,
    /// Known peer addresses.
    pub addresses: Arc<AddressBook>,
    /// The replica's peer certificate.
    pub identity: Arc<super::PeerIdentity>,
    /// What peers are checked against.
    pub authorities: Arc<PeerAuthorities>,
    /// Writes through raft.
    pub proposer: Arc<dyn Proposer>,
    /// While joining: the CA manager's proposer, holding its publications for the join.
    pub holding: Option<Arc<HoldingProposer>>,
    /// Serializes membership changes (joins, promotions, removals).
    pub membership: super::admin::MembershipLock,
}

impl std::fmt::Debug for ClusterStartup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterStartup").field("node_id", &self.settings.node_id).finish()
    }
}

impl ClusterStartup {
    /// Starts replica `settings.node_id` over `store` (the driver and the transport; nothing
    /// listens yet).
    ///
    /// # Errors
    /// When the cluster directory, the peer key or the raft log cannot be used, or the driver
    /// does not start.
    pub fn begin(
        settings: &crate::config::ClusterConfig,
        data_dir: &std::path::Path,
        td: &TrustDomain,
        store: Store,
    ) -> anyhow::Result<Self> {
        use anyhow::Context;
        let dir = data_dir.join("cluster");
        ward_ca::files::ensure_private_dir(&dir).context("cluster directory")?;
        let addresses = Arc::new(AddressBook::open(Some(dir.join("peers.json"))));
        addresses.learn(settings.node_id, &settings.advertise_address);
        let identity = Arc::new(super::PeerIdentity::open(&dir, td.clone(), settings.node_id)?);
        let authorities = Arc::new(PeerAuthorities::new(store.clone(), td.clone()));
        let runtime = tokio::runtime::Handle::current();
        let transport = super::transport::PeerTransport::new(
            settings.node_id,
            td.clone(),
            settings.advertise_address.clone(),
            identity.clone(),
            authorities.clone(),
            addresses.clone(),
            runtime.clone(),
        );
        let log = ward_cluster::open_log(&data_dir.join(crate::run::RAFT_LOG_DIR), &store)
            .context("opening the raft log")?;
        let membership =
            ward_cluster::LogStore::conf_state(&log).context("reading the raft log")?;
        let member = !membership.voters.is_empty() || !membership.learners.is_empty();
        let me = settings.node_id;
        if member && !membership.voters.contains(&me) && !membership.learners.contains(&me) {
            // Its log applied its own removal: serving again would answer from a state that
            // no longer follows the cluster.
            anyhow::bail!("{}", super::removal::removed_sentence(me));
        }
        let joining = !member && matches!(settings.start, crate::config::ClusterStart::Join { .. });
        let mut config = ward_cluster::ClusterConfig::new(settings.node_id);
        config.tick_interval = settings.tick_interval;
        config.election_tick = settings.election_tick;
        config.heartbeat_tick = settings.heartbeat_tick;
        config.bootstrap = settings.start == crate::config::ClusterStart::Bootstrap;
        config.compact_log_bytes = settings.snapshot_threshold;
        config.read_timeout = settings.read_timeout;
        config.sync_gap = settings.sync_gap;
        let handle = ward_cluster::start(ward_cluster::Replica {
            config,
            store: store.clone(),
            log,
            transport: Some(Arc::new(transport.clone())),
            snapshots: Some(Arc::new(transport.clone())),
            runtime,
        })
        .context("starting the cluster driver")?;
        transport.attach(handle.clone());
        let proposer: Arc<dyn Proposer> =
            Arc::new(crate::proposer::ClusterProposer::new(handle.clone()));
        let holding = joining.then(|| Arc::new(HoldingProposer::new(td.clone(), proposer.clone())));
        tracing::info!(
            node_id = settings.node_id,
            advertise = %settings.advertise_address,
            member,
            joining,
            "cluster replica started"
        );
        Ok(Self {
            settings: settings.clone(),
            handle,
            transport,
            addresses,
            identity,
            authorities,
            proposer,
            holding,
            membership: Arc::default(),
        })
    }

    /// What the replica's cluster services share, writing through `proposer`.
    pub fn context(
        &self,
        store: &Store,
        td: TrustDomain,
        proposer: Arc<dyn Proposer>,
        clock: Arc<dyn Clock>,
    ) -> super::ReplicaContext {
        super::ReplicaContext {
            handle: self.handle.clone(),
            store: store.clone(),
            td,
            proposer,
            addresses: self.addresses.clone(),
            clock,
            membership: self.membership.clone(),
        }
    }

    /// The proposer the CA manager uses (holding publications while joining).
    pub fn ca_proposer(&self) -> Arc<dyn Proposer> {
        match &self.holding {
            Some(h) => h.clone(),
            None => self.proposer.clone(),
        }
    }

    /// Issues the peer certificate and serves the peer listener; keeps the certificate fresh
    /// and promotes caught-up learners in the background. Returns the listener's address
    /// and the background tasks.
    ///
    /// # Errors
    /// When the certificate cannot be issued or the listener not bound.
    pub async fn listen(
        &self,
        store: &Store,
        ca: Arc<crate::ca_manager::CaManager>,
        clock: Arc<dyn Clock>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> anyhow::Result<(std::net::SocketAddr, Vec<tokio::task::JoinHandle<()>>)> {
        use anyhow::Context;
        self.identity.refresh(&ca, clock.now()).context("issuing the peer certificate")?;
        let td = self.identity.trust_domain().clone();
        let tls =
            super::listener_config(td.clone(), self.identity.clone(), self.authorities.clone())?;
        let listener = tokio::net::TcpListener::bind(self.settings.peer_address)
            .await
            .with_context(|| format!("binding the peer listener {}", self.settings.peer_address))?;
        let addr = listener.local_addr()?;
        let backend = ClusterBackend {
            ctx: self.context(store, td.clone(), self.proposer.clone(), clock.clone()),
        };
        let inbound =
            super::transport::DriverInbound::new(self.handle.clone(), self.addresses.clone());
        let service = super::PeerService::new(
            self.settings.node_id,
            td,
            Arc::new(inbound),
            Arc::new(backend),
        );
        let mut tasks =
            vec![tokio::spawn(super::serve(listener, Arc::new(tls), service, stop.clone()))];
        let identity = self.identity.clone();
        let mut stop_refresh = stop.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = stop_refresh.wait_for(|s| *s) => return,
                }
                if let Err(e) = identity.refresh(&ca, clock.now()) {
                    tracing::error!(error = %e, "peer certificate rotation failed");
                }
            }
        }));
        tasks.push(tokio::spawn(super::admin::promote_learners(
            self.handle.clone(),
            self.membership.clone(),
            stop,
        )));
        tracing::info!(address = %addr, "serving peers");
        Ok((addr, tasks))
    }

    /// A new replica joins through `[cluster] join_address` (retrying while the cluster is
    /// unreachable or has no leader), then publishes its authorities through the cluster.
    /// Nothing to do for a replica that is already a member.
    ///
    /// # Errors
    /// When the credential cannot be read or the cluster refuses it.
    pub async fn join_if_needed(
        &self,
        ca: &crate::ca_manager::CaManager,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<()> {
        use anyhow::Context;
        let Some(holding) = &self.holding else { return Ok(()) };
        let crate::config::ClusterStart::Join { address, credential } = &self.settings.start else {
            return Ok(());
        };
        let text = std::fs::read_to_string(credential)
            .with_context(|| format!("reading the join credential {}", credential.display()))?;
        let cred = JoinCredential::parse(&text).context("the join credential file")?;
        if cred.node_id != self.settings.node_id {
            anyhow::bail!(
                "the join credential is for replica {}, but this replica is {}",
                cred.node_id,
                self.settings.node_id
            );
        }
        let (x509, jwt) = holding.held();
        let td = self.identity.trust_domain().clone();
        let mut address = address.clone();
        let mut wait = Duration::from_millis(200);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        let (found, response) = loop {
            match join(&td, &address, &cred, &x509, &jwt, clock.now()).await {
                Ok(r) => break r,
                // A follower names the leader: ask there.
                Err(e) if e.contains(LEADER_IS_AT) => {
                    if let Some((_, at)) = e.split_once(LEADER_IS_AT) {
                        tracing::info!(leader = at, "joining through the leader");
                        address = at.trim().to_owned();
                    }
                    tokio::time::sleep(wait).await;
                }
                Err(e) if e.starts_with("join refused") && !e.contains("not the leader") => {
                    anyhow::bail!("{e}")
                }
                Err(e) if e.starts_with("the server at") => anyhow::bail!("{e}"),
                Err(e) if tokio::time::Instant::now() >= deadline => anyhow::bail!("{e}"),
                Err(e) => {
                    tracing::warn!(error = %e, "join not done yet; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(3));
                }
            }
        };
        self.authorities.seed(&found);
        for m in &response.members {
            if m.node_id != self.settings.node_id {
                self.addresses.learn(m.node_id, &m.address);
            }
        }
        holding.release();
        tracing::info!(leader = response.leader_id, "joined the cluster as a learner");
        ca.republish().await.context("publishing authorities")?;
        Ok(())
    }
}
