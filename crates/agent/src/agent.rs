//! The agent's life: obtain an identity (load it from the data directory, or attest), keep it
//! (renew at half-life, follow bundle changes), serve the admin socket, and run the parts that
//! plug in ([`Component`]s: entry sync and the SVID manager, the Workload API, SDS) with a
//! shared [`AgentHandle`].
//!
//! When the server says the agent must attest again or is banned (`PermissionDenied` with
//! `PermissionDeniedDetails`, SPIRE's `pkg/common/nodeutil`), a re-attestable agent attests
//! again in place; any other agent deletes its persisted SVID and stops with an error, as
//! spire-agent does, so that the next start attests afresh.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use ward_attest::NodeAttestor;
use ward_ca::{KeyType, PrivateKey};
use ward_core::{Bundle, SpiffeId, TrustDomain};
use ward_proto::convert::permission_denied_reason;
use ward_proto::spire::api::server::agent::v1 as agentpb;
use ward_proto::spire::api::server::entry::v1 as entrypb;
use ward_proto::spire::api::types::{self, permission_denied_details::Reason};

use crate::attestation::{self, AttestationError};
use crate::cache::{Cache, CacheView};
use crate::config::Settings;
use crate::data_dir::{AgentState, DataDir, DataDirError};
use crate::renewal;
use crate::server_client::{ConnectError, ServerClient, ServerTarget};

/// How often the renewal loop looks at the clock at most (spire-agent's rotator checks every
/// 5 s); a wall-clock jump is noticed within this.
const CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// Wait before retrying a failed renewal.
const RETRY_INTERVAL: Duration = Duration::from_secs(5);

/// Why the agent stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The data directory could not be used.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// No bootstrap bundle.
    #[error(transparent)]
    Bootstrap(#[from] crate::bootstrap::BootstrapError),
    /// Node attestation failed.
    #[error(transparent)]
    Attestation(#[from] AttestationError),
    /// The connection to the server could not be set up.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// There is no persisted SVID and no node attestor is configured.
    #[error(
        "no agent SVID in the data directory and no node attestor configured (set join_token, \
         [node_attestor.x509pop], [node_attestor.gcp_iit], [node_attestor.tpm_devid], \
         [node_attestor.azure_msi], [node_attestor.k8s_psat], [node_attestor.sshpop] or \
         [node_attestor.aws_iid])"
    )]
    NoAttestor,
    /// The agent SVID could not be renewed before it expired.
    #[error("current SVID has already expired and rotate agent SVID failed: {0}")]
    Expired(String),
    /// The server evicted the agent and it cannot attest again by itself.
    #[error(
        "the server requires the agent to attest again ({0}); its SVID was removed: restart it with a new join token"
    )]
    MustReattest(String),
    /// The server banned the agent.
    #[error("agent is banned ({0}); its SVID was removed")]
    Banned(String),
    /// A component stopped with an error.
    #[error("{name}: {reason}")]
    Component {
        /// The component's name.
        name: &'static str,
        /// Why it stopped.
        reason: String,
    },
    /// The admin socket could not be served.
    #[error("admin socket {}", path.display())]
    AdminSocket {
        /// The socket path.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Generating a key failed.
    #[error("generating the agent key")]
    Key(#[from] ward_ca::KeyError),
}

/// The public facts of the agent SVID in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentIdentity {
    /// The agent's SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// The SVID's serial number, decimal.
    pub serial: String,
    /// When the SVID became valid.
    pub not_before: SystemTime,
    /// When it expires.
    pub not_after: SystemTime,
    /// Whether the server lets the agent attest again.
    pub reattestable: bool,
}

impl AgentIdentity {
    fn of(state: &AgentState) -> Result<Self, String> {
        let leaf = state.svid.first().ok_or("empty SVID chain")?;
        let facts = ward_spiffe_tls::leaf_facts(leaf)?;
        let (not_before, not_after) = renewal::validity(leaf)?;
        Ok(Self {
            spiffe_id: facts.id,
            serial: facts.serial,
            not_before,
            not_after,
            reattestable: state.reattestable,
        })
    }
}

/// What a component tells the agent.
#[derive(Debug)]
enum Event {
    /// The server refused the agent with this reason.
    Denied(Reason, String),
}

/// What the parts that plug in share: settings, the cache they publish to or follow, the
/// authenticated channel to the server, the agent SVID's facts, and shutdown.
#[derive(Debug, Clone)]
pub struct AgentHandle {
    /// The agent's settings.
    pub settings: Arc<Settings>,
    /// The cache: the server-facing side publishes views, the serving side follows them.
    pub cache: Arc<Cache>,
    /// The mTLS channel to the server (renewed with the agent SVID).
    pub server: ServerClient,
    identity: watch::Receiver<Arc<AgentIdentity>>,
    events: mpsc::UnboundedSender<Event>,
    shutdown: watch::Receiver<bool>,
}

impl AgentHandle {
    /// The agent's trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.settings.trust_domain
    }

    /// The current agent SVID's facts.
    pub fn identity(&self) -> Arc<AgentIdentity> {
        Arc::clone(&self.identity.borrow())
    }

    /// A receiver of the agent SVID's facts, which changes on every renewal.
    pub fn identity_changes(&self) -> watch::Receiver<Arc<AgentIdentity>> {
        self.identity.clone()
    }

    /// Reports a status the server answered with. Returns true when it is a `PermissionDenied`
    /// telling the agent to attest again or that it is banned; the agent then acts on it
    /// (re-attest, or stop), and the caller should stop its current round of work.
    pub fn server_denied(&self, status: &tonic::Status) -> bool {
        match permission_denied_reason(status) {
            Some(reason) if reason != Reason::Unknown => {
                let _ = self.events.send(Event::Denied(reason, status.message().to_owned()));
                true
            }
            _ => false,
        }
    }

    /// Resolves when the agent is stopping.
    pub async fn stopping(&self) {
        let mut rx = self.shutdown.clone();
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

/// The future a component runs as.
pub type ComponentFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// A part of the agent that runs beside the core (entry sync and SVID manager, Workload API,
/// SDS). It runs until the agent stops ([`AgentHandle::stopping`]); returning an error stops
/// the agent.
pub trait Component: Send + 'static {
    /// A short name for logs and errors.
    fn name(&self) -> &'static str;
    /// Runs the component.
    fn run(self: Box<Self>, agent: AgentHandle) -> ComponentFuture;
}

/// A started agent: it has an identity and a channel to its server.
pub struct Agent {
    settings: Arc<Settings>,
    data_dir: DataDir,
    attestor: Option<Arc<dyn NodeAttestor>>,
    target: Arc<ServerTarget>,
    state: AgentState,
    cache: Arc<Cache>,
    server: ServerClient,
    identity_tx: watch::Sender<Arc<AgentIdentity>>,
    events_tx: mpsc::UnboundedSender<Event>,
    events_rx: mpsc::UnboundedReceiver<Event>,
    shutdown_tx: watch::Sender<bool>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("state", &self.state).finish_non_exhaustive()
    }
}

fn roots_of(bundle: &Bundle) -> Vec<Vec<u8>> {
    bundle.x509_authorities.iter().map(|a| a.der.clone()).collect()
}

fn identity_of(state: &AgentState) -> (Vec<Vec<u8>>, Vec<u8>) {
    (state.svid.clone(), state.key.pkcs8_der().to_vec())
}

fn bad_svid(reason: String) -> AgentError {
    AgentError::Attestation(AttestationError::BadResponse(reason))
}

impl Agent {
    /// Loads the agent's identity from the data directory, or attests with `attestor`, and
    /// checks with the server that it is still accepted (attesting again when the server
    /// says it must and the agent can).
    ///
    /// # Errors
    /// [`AgentError`] naming the step that failed.
    pub async fn start(
        settings: Settings,
        attestor: Option<Arc<dyn NodeAttestor>>,
    ) -> Result<Self, AgentError> {
        let settings = Arc::new(settings);
        let td = settings.trust_domain.clone();
        let data_dir = DataDir::open(&settings.data_dir)?;
        let target =
            Arc::new(ServerTarget::new(settings.server_addresses.clone(), settings.server_port));
        let loaded = data_dir.load(&td)?;
        let mut fresh = false;
        let state = match loaded {
            Some(state) => {
                let id = AgentIdentity::of(&state).map_err(bad_svid)?;
                if renewal::is_expired(id.not_after, SystemTime::now()) {
                    tracing::warn!(spiffe_id = %id.spiffe_id, "agent SVID on disk has expired; attesting again");
                    fresh = true;
                    let roots = roots_of(&state.bundle);
                    attest_and_store(&settings, &data_dir, &target, Some(roots), attestor.as_ref())
                        .await?
                } else {
                    tracing::info!(spiffe_id = %id.spiffe_id, "SVID loaded");
                    state
                }
            }
            None => {
                tracing::info!("SVID is not found; starting node attestation");
                fresh = true;
                let roots = crate::bootstrap::load(&settings.bootstrap, &td).await?;
                attest_and_store(&settings, &data_dir, &target, roots, attestor.as_ref()).await?
            }
        };
        let mut state = state;
        let mut server = ServerClient::new(
            target.clone(),
            td.clone(),
            &roots_of(&state.bundle),
            identity_of(&state),
        )
        .await?;
        if !fresh {
            // A loaded SVID: make sure the server still accepts it (spire-agent learns this
            // from its first sync).
            if let Err(status) = confirm(&server).await {
                match permission_denied_reason(&status) {
                    Some(Reason::AgentBanned) => {
                        data_dir.remove()?;
                        return Err(AgentError::Banned(status.message().to_owned()));
                    }
                    Some(r) if must_reattest(r) => {
                        tracing::warn!(
                            reason = r.as_str_name(),
                            "server no longer accepts the agent SVID; attesting again"
                        );
                        data_dir.remove()?;
                        let roots = roots_of(&state.bundle);
                        state = attest_and_store(
                            &settings,
                            &data_dir,
                            &target,
                            Some(roots),
                            attestor.as_ref(),
                        )
                        .await?;
                        server = ServerClient::new(
                            target.clone(),
                            td.clone(),
                            &roots_of(&state.bundle),
                            identity_of(&state),
                        )
                        .await?;
                    }
                    _ => {
                        tracing::warn!(error = %status.message(), code = ?status.code(), "could not reach the server to confirm the agent SVID; going on with it")
                    }
                }
            }
        }
        let identity = AgentIdentity::of(&state).map_err(bad_svid)?;
        let (identity_tx, _) = watch::channel(Arc::new(identity));
        let cache = Arc::new(Cache::new(CacheView::new(state.bundle.clone())));
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (shutdown_tx, _) = watch::channel(false);
        Ok(Self {
            settings,
            data_dir,
            attestor,
            target,
            state,
            cache,
            server,
            identity_tx,
            events_tx,
            events_rx,
            shutdown_tx,
        })
    }

    /// The handle components get.
    pub fn handle(&self) -> AgentHandle {
        AgentHandle {
            settings: self.settings.clone(),
            cache: self.cache.clone(),
            server: self.server.clone(),
            identity: self.identity_tx.subscribe(),
            events: self.events_tx.clone(),
            shutdown: self.shutdown_tx.subscribe(),
        }
    }

    /// The agent SVID's facts now.
    pub fn identity(&self) -> Arc<AgentIdentity> {
        Arc::clone(&self.identity_tx.borrow())
    }

    /// Runs the agent until `stop` resolves or something fails: the admin socket, the
    /// renewal loop, following bundle changes, and `components`.
    ///
    /// # Errors
    /// [`AgentError`] when the agent cannot go on (its SVID expired, the server banned it,
    /// a component failed).
    pub async fn run(
        mut self,
        components: Vec<Box<dyn Component>>,
        stop: impl Future<Output = ()>,
    ) -> Result<(), AgentError> {
        let handle = self.handle();
        let mut tasks: JoinSet<Result<(), AgentError>> = JoinSet::new();
        let admin = crate::admin::serve(&self.settings.admin_socket_path, handle.clone())?;
        tasks.spawn(admin);
        for component in components {
            let name = component.name();
            let fut = component.run(handle.clone());
            tasks.spawn(async move {
                fut.await.map_err(|reason| AgentError::Component { name, reason })
            });
        }
        let mut views = self.cache.subscribe();
        let mut retry_at: Option<tokio::time::Instant> = None;
        let mut jitter = fastrand::f64() * 0.2 - 0.1;
        tokio::pin!(stop);
        let result = loop {
            let id = self.identity();
            let now = SystemTime::now();
            let due = renewal::renewal_at(id.not_before, id.not_after, jitter);
            let wait = due.duration_since(now).unwrap_or_default().min(CHECK_INTERVAL);
            let wake = match retry_at {
                Some(at) => at,
                None => tokio::time::Instant::now() + wait,
            };
            tokio::select! {
                () = &mut stop => break Ok(()),
                done = tasks.join_next() => match done {
                    Some(Ok(Err(e))) => break Err(e),
                    Some(Ok(Ok(()))) | None => {}
                    Some(Err(e)) => break Err(AgentError::Component { name: "task", reason: e.to_string() }),
                },
                Some(event) = self.events_rx.recv() => {
                    if let Err(e) = self.on_event(event).await {
                        break Err(e);
                    }
                }
                changed = views.changed() => {
                    if changed.is_ok() {
                        let bundle = views.borrow_and_update().bundle.clone();
                        if let Err(e) = self.on_bundle(&bundle).await {
                            tracing::error!(error = %e, "could not adopt the new bundle");
                        }
                    }
                }
                () = tokio::time::sleep_until(wake) => {
                    retry_at = None;
                    if SystemTime::now() >= due {
                        match self.renew().await {
                            Ok(()) => jitter = fastrand::f64() * 0.2 - 0.1,
                            Err(e) => {
                                if let Some(status) = e.status()
                                    && handle.server_denied(status)
                                {
                                    continue;
                                }
                                if renewal::is_expired(id.not_after, SystemTime::now()) {
                                    break Err(AgentError::Expired(error_chain(&e)));
                                }
                                tracing::error!(error = %error_chain(&e), "could not rotate agent SVID");
                                retry_at = Some(tokio::time::Instant::now() + RETRY_INTERVAL);
                            }
                        }
                    }
                }
            }
        };
        let _ = self.shutdown_tx.send(true);
        tasks.abort_all();
        let _ = std::fs::remove_file(&self.settings.admin_socket_path);
        result
    }

    async fn on_event(&mut self, event: Event) -> Result<(), AgentError> {
        let Event::Denied(reason, message) = event;
        if reason == Reason::AgentBanned {
            tracing::error!(error = %message, "agent is banned: removing SVID and shutting down");
            self.data_dir.remove()?;
            return Err(AgentError::Banned(message));
        }
        if !must_reattest(reason) {
            return Ok(());
        }
        if !self.state.reattestable {
            tracing::error!(error = %message, reason = reason.as_str_name(), "agent needs to re-attest: removing SVID and shutting down");
            self.data_dir.remove()?;
            return Err(AgentError::MustReattest(message));
        }
        tracing::warn!(reason = reason.as_str_name(), "agent needs to re-attest; re-attesting");
        self.reattest().await
    }

    async fn reattest(&mut self) -> Result<(), AgentError> {
        let roots = roots_of(&self.state.bundle);
        let state = attest_and_store(
            &self.settings,
            &self.data_dir,
            &self.target,
            Some(roots),
            self.attestor.as_ref(),
        )
        .await?;
        self.adopt(state).await
    }

    /// Renews the agent SVID: re-attestation for a re-attestable agent, `RenewAgent` with a
    /// new key otherwise; then persists it and switches the connection to it.
    async fn renew(&mut self) -> Result<(), AttestationError> {
        if self.state.reattestable {
            let roots = roots_of(&self.state.bundle);
            let attestor = self.attestor.clone().ok_or_else(|| {
                AttestationError::BadResponse("no node attestor configured".into())
            })?;
            let state = attestation::attest(
                self.target.clone(),
                &self.settings.trust_domain,
                Some(&roots),
                attestor,
            )
            .await?;
            self.data_dir
                .store(&state)
                .map_err(|e| AttestationError::BadResponse(error_chain(&e)))?;
            return self
                .adopt(state)
                .await
                .map_err(|e| AttestationError::BadResponse(error_chain(&e)));
        }
        let key = PrivateKey::generate(KeyType::EcP256)?;
        let csr = ward_ca::build_csr(&key)?;
        let resp = agentpb::agent_client::AgentClient::new(self.server.channel())
            .renew_agent(agentpb::RenewAgentRequest {
                params: Some(agentpb::AgentX509svidParams { csr }),
            })
            .await
            .map_err(AttestationError::Refused)?
            .into_inner();
        let svid = resp
            .svid
            .ok_or_else(|| AttestationError::BadResponse("renew response is missing SVID".into()))?
            .cert_chain;
        attestation::check_svid(&svid, &self.settings.trust_domain, &key)?;
        let state = AgentState {
            svid,
            key,
            bundle: self.state.bundle.clone(),
            reattestable: self.state.reattestable,
        };
        self.data_dir.store(&state).map_err(|e| AttestationError::BadResponse(error_chain(&e)))?;
        self.adopt(state).await.map_err(|e| AttestationError::BadResponse(error_chain(&e)))?;
        // The server holds the new serial as pending until it is first presented: present it.
        if let Err(status) = confirm(&self.server).await {
            tracing::warn!(error = %status.message(), "first call with the renewed agent SVID failed");
        }
        Ok(())
    }

    /// Switches to `state` (already persisted): connection, published facts and bundle.
    async fn adopt(&mut self, state: AgentState) -> Result<(), AgentError> {
        self.server.set_identity(&roots_of(&state.bundle), identity_of(&state)).await?;
        let id = AgentIdentity::of(&state).map_err(bad_svid)?;
        tracing::info!(spiffe_id = %id.spiffe_id, serial = %id.serial, "agent SVID rotated");
        let bundle_changed = state.bundle != self.state.bundle;
        let bundle = state.bundle.clone();
        self.state = state;
        self.identity_tx.send_replace(Arc::new(id));
        if bundle_changed {
            self.cache.update(|view| view.bundle = Arc::new(bundle));
        }
        Ok(())
    }

    /// Adopts a bundle published in the cache: persist it and trust its authorities.
    async fn on_bundle(&mut self, bundle: &Bundle) -> Result<(), AgentError> {
        if *bundle == self.state.bundle {
            return Ok(());
        }
        self.state.bundle = bundle.clone();
        self.data_dir.store(&self.state)?;
        self.server.set_identity(&roots_of(bundle), identity_of(&self.state)).await?;
        tracing::info!(trust_domain = %bundle.trust_domain, "trust bundle updated");
        Ok(())
    }
}

/// Reasons after which the server wants a new attestation.
fn must_reattest(reason: Reason) -> bool {
    matches!(
        reason,
        Reason::AgentExpired
            | Reason::AgentNotActive
            | Reason::AgentNotAttested
            | Reason::AgentMustReattest
    )
}

/// An authenticated call that costs the server little, to learn whether it accepts the
/// agent SVID (and to make a renewed SVID current): `GetAuthorizedEntries` asking for ids only.
async fn confirm(server: &ServerClient) -> Result<(), tonic::Status> {
    entrypb::entry_client::EntryClient::new(server.channel())
        .get_authorized_entries(entrypb::GetAuthorizedEntriesRequest {
            output_mask: Some(types::EntryMask::default()),
        })
        .await
        .map(|_| ())
}

async fn attest_and_store(
    settings: &Settings,
    data_dir: &DataDir,
    target: &Arc<ServerTarget>,
    roots: Option<Vec<Vec<u8>>>,
    attestor: Option<&Arc<dyn NodeAttestor>>,
) -> Result<AgentState, AgentError> {
    let attestor = attestor.ok_or(AgentError::NoAttestor)?.clone();
    let state =
        attestation::attest(target.clone(), &settings.trust_domain, roots.as_deref(), attestor)
            .await?;
    data_dir.store(&state)?;
    if let Ok(id) = AgentIdentity::of(&state) {
        tracing::info!(spiffe_id = %id.spiffe_id, reattestable = state.reattestable, "node attestation was successful");
    }
    Ok(state)
}

/// An error and its sources, joined with ": ".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
