//! Starting and stopping a server: store, proposer, CA manager, the server's own SVID, and
//! the two listeners (TLS on TCP for agents, plaintext gRPC on the admin Unix socket).

use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Server;
use ward_ca::{KeyType, PrivateKey, SvidParams};
use ward_core::{Clock, SpiffeId};
use ward_proto::grpc::health::v1::health_server::HealthServer;
use ward_proto::spire::api::server::agent::v1::agent_server::AgentServer;
use ward_proto::spire::api::server::bundle::v1::bundle_server::BundleServer;
use ward_proto::spire::api::server::debug::v1::debug_server::DebugServer;
use ward_proto::spire::api::server::entry::v1::entry_server::EntryServer;
use ward_proto::spire::api::server::localauthority::v1::local_authority_server::LocalAuthorityServer;
use ward_proto::spire::api::server::logger::v1::logger_server::LoggerServer;
use ward_proto::spire::api::server::svid::v1::svid_server::SvidServer;
use ward_proto::spire::api::server::trustdomain::v1::trust_domain_server::TrustDomainServer;
use ward_proto::ward::agent::v1::agent_watch_server::AgentWatchServer;
use ward_proto::ward::cluster::v1::cluster_server::ClusterServer;
use ward_store::{Command, Outcome, Store, StoreConfig};

use crate::api::{
    agent::AgentService,
    bundle::BundleService,
    debug::DebugService,
    entry::EntryService,
    health::HealthService,
    localauthority::LocalAuthorityService,
    logger::LoggerService,
    svid::SvidService,
    trustdomain::TrustDomainService,
    watch::{WatchLimits, WatchService},
};
use crate::audit::AuditLayer;
use crate::ca_manager::{AUTHORITY_PRUNE_INTERVAL, CaManager, CaSettings, ROTATION_CHECK_INTERVAL};
use crate::config::{self, Config};
use crate::federation::Federation;
use crate::federation::endpoint::{self, BundleSource};
use crate::layer::{AuthLayer, TCP_SERVICES, UDS_SERVICES};
use crate::logging::LogControl;
use crate::peer::admin::{ClusterAdmin, NoCluster};
use crate::peer::replica::ClusterStartup;
use crate::proposer::{ClusterProposer, FailStop, Proposer};
use crate::ratelimit::RateLimits;
use crate::state::{ServerState, SystemClock};
use crate::telemetry::MetricsLayer;
use crate::tls::{self, AuthoritySource, RotatingServerCert, SpiffeClientVerifier};

/// How often the server's own SVID is checked for rotation (SPIRE: 5 s).
pub const SVID_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// How long shutdown waits for in-flight calls.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How often expired entries and join tokens are deleted.
const PRUNE_INTERVAL: Duration = Duration::from_secs(300);
/// gRPC MaxConnectionAge on the TCP listener, as SPIRE sets it.
const MAX_CONNECTION_AGE: Duration = Duration::from_secs(180);
/// The exit code of a server that stopped because its store could not apply a write
/// (`EX_SOFTWARE`): a supervisor restarts it and the store replays its log.
pub const EXIT_STORE_FAILED: u8 = 70;

/// The server stopped because a write could not be applied ([`EXIT_STORE_FAILED`]).
#[derive(Debug, thiserror::Error)]
#[error("stopped: the store could not apply a write ({0})")]
pub struct StoreFailed(pub String);

/// The process exit code for the outcome of [`run_until_signal`]: 0, [`EXIT_STORE_FAILED`]
/// when the store failed, 1 for any other error.
pub fn exit_code(result: &anyhow::Result<()>) -> u8 {
    match result {
        Ok(()) => 0,
        Err(e) if e.is::<StoreFailed>() => EXIT_STORE_FAILED,
        Err(_) => 1,
    }
}

/// A started server. Dropping it without [`RunningServer::shutdown`] leaves the tasks running
/// until the runtime ends.
#[derive(Debug)]
pub struct RunningServer {
    /// The TCP address agents connect to (the real port when the config said 0).
    pub tcp_addr: SocketAddr,
    /// The admin socket.
    pub socket_path: PathBuf,
    /// The bundle endpoint's address, when one is served (the real port when the config
    /// said 0).
    pub bundle_endpoint_addr: Option<SocketAddr>,
    /// Shared state (store, CA, ...), for in-process inspection.
    pub state: Arc<ServerState>,
    /// The Prometheus endpoint, when `[telemetry.prometheus]` is set.
    pub metrics_addr: Option<SocketAddr>,
    /// The health-check listener, when `health_checks.listener_enabled`.
    pub health_addr: Option<SocketAddr>,
    /// The TCP listener's TLS handshake counters.
    pub handshakes: Arc<tls::HandshakeStats>,
    /// The peer listener's address, when the server is a replica of a multi-member cluster.
    pub peer_addr: Option<SocketAddr>,
    /// The replica's driver, when this server runs its own (not with an external store).
    pub cluster: Option<ward_cluster::ClusterHandle>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// Released (by being dropped) when the server is shut down.
    _data_dir_lock: crate::data_dir::DataDirLock,
    failed: watch::Receiver<Option<String>>,
}

impl RunningServer {
    /// Resolves with the reason once this replica can no longer apply writes: its raft
    /// driver stopped on a fatal error, or a proposal failed fatally in the store (see
    /// [`crate::proposer::FailStop`]); pending otherwise.
    pub async fn failed(&self) -> String {
        let mut rx = self.failed.clone();
        let from_writes = async move {
            match rx.wait_for(Option::is_some).await {
                Ok(reason) => reason.clone(),
                Err(_) => None,
            }
        };
        let from_driver = async {
            match &self.cluster {
                Some(handle) => handle.stopped().await.err(),
                None => None,
            }
        };
        let reason = tokio::select! {
            Some(reason) = from_writes => Some(reason),
            Some(reason) = from_driver => Some(reason),
            else => None,
        };
        match reason {
            Some(reason) => reason,
            None => std::future::pending().await,
        }
    }

    /// Stops the listeners and background tasks and waits for them.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for mut t in self.tasks {
            // Connections get a grace period to finish their calls, then are dropped.
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut t).await.is_err() {
                t.abort();
            }
        }
        if let Some(handle) = &self.cluster {
            handle.shutdown();
            let _ = handle.stopped().await;
        }
        // Flushes and writes the entry image, so the next start opens faster.
        let _ = self.state.store.close();
        let _ = std::fs::remove_file(&self.socket_path);
    }
}

fn ca_key_type(k: config::KeyType) -> KeyType {
    match k {
        config::KeyType::EcP256 => KeyType::EcP256,
        config::KeyType::EcP384 => KeyType::EcP384,
        config::KeyType::Rsa2048 => KeyType::Rsa2048,
        config::KeyType::Rsa4096 => KeyType::Rsa4096,
    }
}

/// Reads the own bundle's X.509 authorities from the store for the client verifier.
#[derive(Debug)]
struct StoreAuthorities(Arc<ServerState>);

impl AuthoritySource for StoreAuthorities {
    fn bundle(&self) -> Option<Arc<ward_core::Bundle>> {
        self.0.store.bundle(&self.0.trust_domain)
    }
}

/// The server's own X509-SVID: chain (leaf first), key, validity.
struct ServerSvid {
    chain: Vec<Vec<u8>>,
    key: PrivateKey,
    not_before: i64,
    not_after: i64,
    ca_id: String,
    /// The root the chain ends at (in the bundle).
    anchor: Vec<u8>,
}

impl ServerSvid {
    /// The chain, leaf first, ending with its root.
    fn full_chain(&self) -> Vec<Vec<u8>> {
        let mut chain = self.chain.clone();
        if chain.last() != Some(&self.anchor) {
            chain.push(self.anchor.clone());
        }
        chain
    }

    /// Whether the bundle marks an authority this SVID chains to as tainted.
    fn tainted_in(&self, bundle: &ward_core::Bundle) -> bool {
        bundle
            .x509_authorities
            .iter()
            .any(|a| a.tainted && (a.der == self.anchor || self.chain.contains(&a.der)))
    }
}

fn sign_server_svid(state: &ServerState, now: SystemTime) -> anyhow::Result<ServerSvid> {
    let ca = state.ca.x509_ca()?;
    let key = PrivateKey::generate(KeyType::EcP256)?;
    let params = SvidParams {
        spiffe_id: &state.server_id,
        dns_names: &[],
        ttl: state.default_x509_svid_ttl,
    };
    let leaf = ca.sign_server_x509_svid(key.public_key_der(), &params, now)?;
    let facts = tls::leaf_facts(&leaf).map_err(anyhow::Error::msg)?;
    let mut chain = vec![leaf];
    chain.extend(ca.svid_chain_tail().iter().cloned());
    let not_before = ward_core::clock::unix_seconds(now) - ward_ca::x509::BACKDATE_SECS;
    let svid = ServerSvid {
        chain,
        key,
        not_before,
        not_after: facts.not_after,
        ca_id: ca.authority_id(),
        anchor: ca.trust_anchor_der().to_vec(),
    };
    state.set_server_svid_chain(svid.full_chain());
    Ok(svid)
}

fn certified(svid: &ServerSvid) -> anyhow::Result<rustls::sign::CertifiedKey> {
    Ok(RotatingServerCert::certified_key(&svid.chain, svid.key.pkcs8_der())?)
}

fn prepare_socket(path: &Path) -> anyhow::Result<UnixListener> {
    // Like SPIRE (MkdirAll with 0750): directories created here get 0750; an existing
    // directory (say /tmp) is left exactly as it is.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(dir)
            .with_context(|| format!("creating socket directory {}", dir.display()))?;
    }
    // A stale socket (from a server that stopped without cleaning up) is replaced; anything
    // else at the path is left alone: a file that is not a socket, or a socket another
    // process still accepts on (two servers on one admin socket would split the writes).
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        Ok(m) if !m.file_type().is_socket() => anyhow::bail!(
            "socket_path {} exists and is not a Unix socket; refusing to replace it",
            path.display()
        ),
        Ok(_) if std::os::unix::net::UnixStream::connect(path).is_ok() => anyhow::bail!(
            "another process is serving the admin socket {}; stop it or choose another \
             socket_path",
            path.display()
        ),
        Ok(_) => std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?,
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding admin socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o770))
        .with_context(|| format!("setting permissions on {}", path.display()))?;
    Ok(listener)
}

/// What a server is built from besides its configuration. The defaults are a production
/// single-node server: the wall clock, a store opened in `<data_dir>/store` and a
/// one-member Raft cluster over it (its log in the same database) proposing through a
/// [`ClusterProposer`]. Tests may pass a store and another proposer; no handler changes.
pub struct StartOptions {
    /// Time source.
    pub clock: Arc<dyn Clock>,
    /// An already-open store and the proposer that writes it (both, or neither).
    pub store: Option<(Store, Arc<dyn Proposer>)>,
    /// How often the server SVID (and, every 10 s, the CA schedule) is checked.
    pub svid_check_interval: Duration,
    /// Roots (DER) trusted for `https_web` bundle endpoints besides the built-in Web PKI
    /// roots.
    pub federation_web_roots: Vec<Vec<u8>>,
}

impl Default for StartOptions {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            store: None,
            svid_check_interval: SVID_CHECK_INTERVAL,
            federation_web_roots: Vec::new(),
        }
    }
}

impl std::fmt::Debug for StartOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartOptions")
            .field("external_store", &self.store.is_some())
            .field("svid_check_interval", &self.svid_check_interval)
            .field("federation_web_roots", &self.federation_web_roots.len())
            .finish()
    }
}

/// Starts a server with `cfg` and returns once both listeners accept connections.
///
/// # Errors
/// When the data directory, store, keys or listeners cannot be set up.
pub async fn start(cfg: Config) -> anyhow::Result<RunningServer> {
    start_with(cfg, StartOptions::default()).await
}

/// As [`start`], with explicit [`StartOptions`].
///
/// # Errors
/// As [`start`].
pub async fn start_with(cfg: Config, opts: StartOptions) -> anyhow::Result<RunningServer> {
    let clock = opts.clock;
    // The store and the CA keys live here: created owner-only, refused when others can write
    // or when another server process uses it.
    let data_dir_lock = crate::data_dir::prepare(&cfg.data_dir, opts.store.is_none())?;
    let mut replica: Option<ClusterStartup> = None;
    let (store, proposer, cluster) = match opts.store {
        Some((store, proposer)) => (store, proposer, None),
        None => {
            let store_dir = cfg.data_dir.join("store");
            let td = cfg.trust_domain.clone();
            let started = std::time::Instant::now();
            let store =
                tokio::task::spawn_blocking(move || Store::open(&store_dir, StoreConfig::new(td)))
                    .await
                    .context("store open task")?
                    .context("opening the store")?;
            tracing::info!(
                entries = store.entry_count(),
                agents = store.agent_count(),
                applied_index = store.last_applied(),
                revision = store.revision(),
                from_entry_image = store.opened_from_image(),
                elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                "store opened"
            );
            match &cfg.cluster {
                Some(settings) => {
                    let c = ClusterStartup::begin(
                        settings,
                        &cfg.data_dir,
                        &cfg.trust_domain,
                        store.clone(),
                    )?;
                    let proposer = c.proposer.clone();
                    let handle = c.handle.clone();
                    replica = Some(c);
                    (store, proposer, Some(handle))
                }
                None => {
                    let handle =
                        start_one_member(store.clone(), cfg.data_dir.join(RAFT_LOG_DIR)).await?;
                    let proposer: Arc<dyn Proposer> =
                        Arc::new(ClusterProposer::new(handle.clone()));
                    (store, proposer, Some(handle))
                }
            }
        }
    };
    let ca_proposer = replica.as_ref().map_or(proposer.clone(), ClusterStartup::ca_proposer);
    let (proposer, failed) = FailStop::new(proposer);
    let proposer: Arc<dyn Proposer> = proposer;
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let ca = Arc::new(CaManager::open(
        CaSettings {
            trust_domain: cfg.trust_domain.clone(),
            key_type: ca_key_type(cfg.ca_key_type),
            ca_ttl: cfg.ca_ttl,
            jwt_issuer: cfg.jwt_issuer.clone(),
            dir: cfg.data_dir.join("ca"),
        },
        ca_proposer,
    )?);
    // A restarting replica serves its peers before anything it proposes can commit: its CA
    // already has an authority to sign its peer certificate, and the leader must reach it.
    let mut peer_addr = None;
    if let Some(c) = &replica
        && ca.x509_ca().is_ok()
    {
        let (addr, peer_tasks) =
            c.listen(&store, ca.clone(), clock.clone(), stop_rx.clone()).await?;
        peer_addr = Some(addr);
        tasks.extend(peer_tasks);
    }
    let bundle = store.bundle(&cfg.trust_domain);
    ca.republish_missing(bundle.as_deref()).await.context("publishing authorities")?;
    ca.tick(clock.now()).await.context("initial CA rotation step")?;
    if let Some(c) = &replica {
        if peer_addr.is_none() {
            let (addr, peer_tasks) =
                c.listen(&store, ca.clone(), clock.clone(), stop_rx.clone()).await?;
            peer_addr = Some(addr);
            tasks.extend(peer_tasks);
        }
        c.join_if_needed(&ca, clock.clone()).await?;
    }

    let federation = Arc::new(Federation::new(
        store.clone(),
        proposer.clone(),
        clock.clone(),
        cfg.federation.federates_with.clone(),
        opts.federation_web_roots,
    ));
    let node_attestor_names: Vec<&str> = std::iter::once("join_token")
        .chain(cfg.node_attestors.all().iter().map(|a| a.name()))
        .collect();
    tracing::info!(node_attestors = ?node_attestor_names, "node attestors enabled");
    if cfg.node_attestors.aws_iid.as_ref().is_some_and(|a| !a.has_credentials()) {
        tracing::warn!(
            "node_attestors.aws_iid has no AWS credentials (access_key_id and secret_access_key, \
             or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, and AWS_EC2_METADATA_DISABLED=true \
             keeps the instance role out): every aws_iid attestation will be refused, as \
             spire-server refuses them when the AWS SDK finds no credentials"
        );
    }
    let server_id = SpiffeId::from_parts(&cfg.trust_domain, "/spire/server")
        .context("building the server SPIFFE ID")?;
    let state = Arc::new(ServerState {
        trust_domain: cfg.trust_domain.clone(),
        server_id,
        store,
        proposer,
        ca,
        limits: RateLimits::new(cfg.ratelimit.attestation, cfg.ratelimit.signing),
        clock: clock.clone(),
        default_x509_svid_ttl: cfg.default_x509_svid_ttl,
        default_jwt_svid_ttl: cfg.default_jwt_svid_ttl,
        agent_ttl: cfg.agent_ttl,
        started_at: clock.now(),
        log: crate::logging::installed()
            .unwrap_or_else(|| Arc::new(LogControl::detached(&cfg.log_level))),
        server_svid: std::sync::RwLock::new(Vec::new()),
        federation: federation.clone(),
        node_attestors: cfg.node_attestors.all(),
    });

    let svid = sign_server_svid(&state, clock.now())?;
    let cert = Arc::new(RotatingServerCert::new(certified(&svid)?));
    let verifier = Arc::new(SpiffeClientVerifier::new(
        cfg.trust_domain.clone(),
        Arc::new(StoreAuthorities(state.clone())),
    ));
    let tls_config = Arc::new(tls::server_config(verifier, cert.clone())?);

    // Background: CA rotation and the server SVID's half-life rotation.
    tasks.push(tokio::spawn(rotation_loop(
        state.clone(),
        cert.clone(),
        svid,
        opts.svid_check_interval,
        stop_rx.clone(),
    )));

    // TCP (TLS) listener for agents.
    let tcp = TcpListener::bind((cfg.bind_address, cfg.bind_port))
        .await
        .with_context(|| format!("binding {}:{}", cfg.bind_address, cfg.bind_port))?;
    let tcp_addr = tcp.local_addr()?;
    let handshakes = Arc::new(tls::HandshakeStats::default());
    let incoming =
        tls::incoming(tcp, tls_config, tls::HandshakeLimits::default(), handshakes.clone());
    let metrics_on = cfg.telemetry.prometheus.is_some();
    let tcp_router = Server::builder()
        .max_connection_age(MAX_CONNECTION_AGE)
        .layer(MetricsLayer::new(metrics_on, TCP_SERVICES))
        .layer(AuthLayer::new(state.clone(), TCP_SERVICES))
        .layer(AuditLayer::new(cfg.audit_log_enabled, &cfg.trust_domain))
        .add_service(AgentServer::new(AgentService::new(state.clone())))
        .add_service(BundleServer::new(BundleService::new(state.clone())))
        .add_service(EntryServer::new(EntryService::new(state.clone())))
        .add_service(SvidServer::new(SvidService::new(state.clone())))
        .add_service(TrustDomainServer::new(TrustDomainService::new(state.clone())))
        .add_service(LocalAuthorityServer::new(LocalAuthorityService::new(state.clone())))
        .add_service(AgentWatchServer::new(WatchService::new(
            state.clone(),
            WatchLimits::default(),
            stop_rx.clone(),
        )));
    let signal = stopped(stop_rx.clone());
    tasks.push(tokio::spawn(async move {
        if let Err(e) = tcp_router.serve_with_incoming_shutdown(incoming, signal).await {
            tracing::error!(error = %e, "TCP listener failed");
        }
    }));

    // Admin Unix socket.
    let uds = prepare_socket(&cfg.socket_path)?;
    let uds_incoming = tokio_stream::wrappers::UnixListenerStream::new(uds);
    let uds_router = Server::builder()
        .layer(MetricsLayer::new(metrics_on, UDS_SERVICES))
        .layer(AuthLayer::new(state.clone(), UDS_SERVICES))
        .layer(AuditLayer::new(cfg.audit_log_enabled, &cfg.trust_domain))
        .add_service(AgentServer::new(AgentService::new(state.clone())))
        .add_service(BundleServer::new(BundleService::new(state.clone())))
        .add_service(EntryServer::new(EntryService::new(state.clone())))
        .add_service(SvidServer::new(SvidService::new(state.clone())))
        .add_service(TrustDomainServer::new(TrustDomainService::new(state.clone())))
        .add_service(LocalAuthorityServer::new(LocalAuthorityService::new(state.clone())))
        .add_service(LoggerServer::new(LoggerService::new(state.log.clone())))
        .add_service(DebugServer::new(DebugService::new(state.clone())))
        .add_service(HealthServer::new(HealthService::new(state.clone())))
        .add_optional_service(replica.as_ref().map(|c| {
            let ctx = c.context(
                &state.store,
                cfg.trust_domain.clone(),
                state.proposer.clone(),
                clock.clone(),
            );
            ClusterServer::new(ClusterAdmin { ctx, digests: Default::default() })
        }))
        .add_optional_service(replica.is_none().then(|| ClusterServer::new(NoCluster)));
    let signal = stopped(stop_rx.clone());
    tasks.push(tokio::spawn(async move {
        if let Err(e) = uds_router.serve_with_incoming_shutdown(uds_incoming, signal).await {
            tracing::error!(error = %e, "admin socket listener failed");
        }
    }));

    // The SPIFFE bundle endpoint (https_spiffe, with the server's SVID) and the manager
    // fetching federated bundles.
    let bundle_endpoint_addr = match &cfg.federation.bundle_endpoint {
        None => None,
        Some(e) => {
            let listener = TcpListener::bind((e.address, e.port))
                .await
                .with_context(|| format!("binding bundle endpoint {}:{}", e.address, e.port))?;
            let addr = listener.local_addr()?;
            let source = Arc::new(BundleSource {
                store: state.store.clone(),
                trust_domain: cfg.trust_domain.clone(),
                refresh_hint: e.refresh_hint,
            });
            let tls = Arc::new(endpoint::tls_config(cert.clone())?);
            tasks.push(tokio::spawn(endpoint::serve(listener, tls, source, stop_rx.clone())));
            tracing::info!(address = %addr, "serving bundle endpoint");
            Some(addr)
        }
    };
    tasks.push(tokio::spawn(federation.run(stop_rx.clone())));
    // Operator endpoints: Prometheus metrics and health checks.
    let metrics = crate::telemetry::serve(&cfg.telemetry, state.clone(), stop_rx.clone()).await?;
    let health = crate::health_checks::serve(
        &cfg.health_checks,
        state.clone(),
        tcp_addr,
        cfg.socket_path.clone(),
        stop_rx.clone(),
    )
    .await?;
    let (metrics_addr, health_addr) = (metrics.as_ref().map(|m| m.0), health.as_ref().map(|h| h.0));
    tasks.extend(metrics.map(|m| m.1).into_iter().chain(health.map(|h| h.1)));

    tracing::info!(
        trust_domain = %cfg.trust_domain,
        address = %tcp_addr,
        socket = %cfg.socket_path.display(),
        "server started"
    );
    Ok(RunningServer {
        cluster,
        tcp_addr,
        socket_path: cfg.socket_path.clone(),
        bundle_endpoint_addr,
        state,
        metrics_addr,
        health_addr,
        handshakes,
        peer_addr,
        stop,
        tasks,
        _data_dir_lock: data_dir_lock,
        failed,
    })
}

/// Where a replica keeps its raft log, under the data directory (see
/// [`ward_cluster::WalLogStore`]).
pub const RAFT_LOG_DIR: &str = "raft-log";

/// Starts the one-member cluster a server without cluster configuration runs: replica 1,
/// its raft log in `log_dir`, no transport. An existing single-server store becomes the
/// cluster's starting state.
async fn start_one_member(
    store: Store,
    log_dir: std::path::PathBuf,
) -> anyhow::Result<ward_cluster::ClusterHandle> {
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || -> anyhow::Result<ward_cluster::ClusterHandle> {
        let log = ward_cluster::open_log(&log_dir, &store).context("opening the raft log")?;
        let mut config = ward_cluster::ClusterConfig::new(1);
        config.bootstrap = true;
        let handle = ward_cluster::start(ward_cluster::Replica {
            config,
            store,
            log,
            transport: None,
            snapshots: None,
            runtime,
        })
        .context("starting the raft replica")?;
        Ok(handle)
    })
    .await
    .context("replica start task")?
}

/// Deletes expired entries and join tokens (SPIRE prunes on a timer too).
async fn prune(state: &ServerState, now: i64) {
    for cmd in [
        Command::PruneEntries { expires_before: now },
        Command::PruneJoinTokens { expires_before: now },
    ] {
        match state.proposer.propose(cmd).await {
            Ok(applied) => {
                if let Outcome::Pruned(n) = applied.outcome
                    && n > 0
                {
                    tracing::info!(count = n, "pruned expired records");
                }
            }
            Err(e) => tracing::warn!(error = %e, "pruning failed"),
        }
    }
}

/// Resolves when the stop flag is raised (or its sender is gone).
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

async fn rotation_loop(
    state: Arc<ServerState>,
    cert: Arc<RotatingServerCert>,
    mut svid: ServerSvid,
    check_every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut last_ca_check = tokio::time::Instant::now();
    let mut last_prune = tokio::time::Instant::now();
    // Authority pruning follows the server clock: its cadence and its cutoff are both
    // about certificate lifetimes. `None` prunes on the first pass.
    let mut last_authority_prune: Option<SystemTime> = None;
    loop {
        tokio::select! {
            () = tokio::time::sleep(check_every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = state.clock.now();
        if last_ca_check.elapsed() >= ROTATION_CHECK_INTERVAL {
            last_ca_check = tokio::time::Instant::now();
            if let Err(e) = state.ca.tick(now).await {
                tracing::error!(error = %e, "CA rotation step failed");
            }
        }
        let now_s = ward_core::clock::unix_seconds(now);
        // Clean-up is the leader's: one clock decides what expired (see Proposer::is_leader).
        let leads = state.proposer.is_leader();
        if leads && last_prune.elapsed() >= PRUNE_INTERVAL {
            last_prune = tokio::time::Instant::now();
            prune(&state, now_s).await;
        }
        let due = last_authority_prune
            .is_none_or(|t| now.duration_since(t).is_ok_and(|d| d >= AUTHORITY_PRUNE_INTERVAL));
        if leads && due {
            last_authority_prune = Some(now);
            let bundle = state.store.bundle(&state.trust_domain);
            if let Err(e) = state.ca.prune_expired(bundle.as_deref(), now).await {
                tracing::warn!(error = %e, "pruning expired authorities failed");
            }
        }
        let half = svid.not_before + (svid.not_after - svid.not_before) / 2;
        let ca_changed =
            state.ca.x509_ca().map(|c| c.authority_id() != svid.ca_id).unwrap_or(false);
        // As SPIRE: an SVID signed by a tainted authority is replaced at once.
        let tainted = state.store.bundle(&state.trust_domain).is_some_and(|b| svid.tainted_in(&b));
        if tainted {
            tracing::info!(
                "Server SVID signed using a tainted authority, forcing rotation of the Server SVID"
            );
        }
        if now_s >= half || ca_changed || tainted {
            match sign_server_svid(&state, now).and_then(|s| Ok((certified(&s)?, s))) {
                Ok((key, s)) => {
                    cert.set(key);
                    svid = s;
                    tracing::info!(not_after = svid.not_after, "rotated the server SVID");
                }
                Err(e) => tracing::error!(error = %e, "server SVID rotation failed"),
            }
        }
    }
}

/// Runs until SIGINT or SIGTERM, then shuts down cleanly.
///
/// # Errors
/// When start-up fails, or [`StoreFailed`] when a write could not be applied (see
/// [`serve_until`]).
pub async fn run_until_signal(cfg: Config) -> anyhow::Result<()> {
    let server = start(cfg).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    serve_until(server, async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    })
    .await
}

/// Serves until `stop` resolves, then shuts down cleanly; or until a write fails fatally:
/// then it logs that once and returns [`StoreFailed`] at once, without the graceful
/// shutdown (nothing more is served or flushed from a store that cannot apply writes; the
/// caller exits with [`EXIT_STORE_FAILED`] and a restart replays the log). A replica that
/// learns it was removed from its cluster shuts down cleanly and returns the reason.
///
/// # Errors
/// [`StoreFailed`]; the removal sentence of [`crate::peer::removal::removed_sentence`].
pub async fn serve_until(
    server: RunningServer,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let cluster = server.cluster.clone();
    let removed = async move {
        match cluster {
            Some(handle) => crate::peer::removal::removed(&handle).await,
            None => std::future::pending().await,
        }
    };
    let mut removal = None;
    tokio::select! {
        () = stop => {}
        // Removed from its cluster: stop serving (as etcd stops a removed member), cleanly.
        sentence = removed => removal = Some(sentence),
        reason = server.failed() => {
            tracing::error!(
                error = %reason,
                "a write could not be applied; stopping so that a restart replays the log"
            );
            for t in &server.tasks {
                t.abort();
            }
            return Err(StoreFailed(reason).into());
        }
    }
    if let Some(sentence) = removal {
        tracing::error!("{sentence}");
        server.shutdown().await;
        anyhow::bail!("{sentence}");
    }
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ward_core::{Bundle, TrustDomain, X509Authority};

    #[test]
    fn server_svid_is_tainted_when_its_root_or_chain_is() {
        let svid = ServerSvid {
            chain: vec![vec![1], vec![2]],
            key: PrivateKey::generate(KeyType::EcP256).unwrap(),
            not_before: 0,
            not_after: 10,
            ca_id: String::new(),
            anchor: vec![3],
        };
        assert_eq!(svid.full_chain(), vec![vec![1], vec![2], vec![3]]);
        let mut b = Bundle::new(TrustDomain::new("example.org").unwrap());
        b.x509_authorities = vec![X509Authority::new(vec![3]), X509Authority::new(vec![9])];
        assert!(!svid.tainted_in(&b));
        b.x509_authorities[1].tainted = true;
        assert!(!svid.tainted_in(&b), "another authority's taint");
        b.x509_authorities[0].tainted = true;
        assert!(svid.tainted_in(&b));
        b.x509_authorities = vec![X509Authority { der: vec![2], tainted: true }];
        assert!(svid.tainted_in(&b), "an intermediate of the chain");
    }
}
