//! The parts `ward-agent run` starts beside the agent's core ([`crate::agent::Agent`]), built
//! from the [`Settings`]:
//! - [`SvidSync`]: the SVID manager ([`Manager`]): entry and bundle sync with the server and
//!   one X509-SVID per authorized entry, published into the cache;
//! - [`WorkloadEndpoints`]: the Workload API, Envoy SDS and gRPC health on the Workload API
//!   socket, attesting callers with the configured workload attestors, JWT-SVIDs minted by
//!   [`JwtSvids`];
//! - the HTTP health listener ([`crate::health_checks`]) when `health_checks` enables it.
//!
//! When the server refuses the agent itself (`PermissionDenied` with details), [`SvidSync`]
//! hands the status to [`AgentHandle::server_denied`]: the agent attests again in place (the
//! manager then starts over with the new SVID) or stops.

use std::sync::Arc;
use std::time::SystemTime;

use ward_attest::k8s::K8sAttestor;
use ward_attest::{ProcFs, SystemdAttestor, SystemdBus, UnixAttestor, WorkloadAttestor};
use ward_core::Clock;

use crate::agent::{AgentHandle, Component, ComponentFuture};
use crate::config::Settings;
use crate::error::SyncError;
use crate::jwt::JwtSvids;
use crate::manager::{Manager, ManagerConfig};
use crate::push::PushConfig;
use crate::workload::{ListenerConfig, ServeOptions, serve_with};

/// The wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// The components `ward-agent run` starts for `settings`.
///
/// # Errors
/// A sentence when a workload attestor cannot be set up (the `k8s` attestor's credentials).
pub fn standard(settings: &Settings) -> Result<Vec<Box<dyn Component>>, String> {
    let attestors = workload_attestors(settings)?;
    let mut parts: Vec<Box<dyn Component>> =
        vec![Box::new(SvidSync), Box::new(WorkloadEndpoints { attestors })];
    if let Some(health) = &settings.health_checks {
        parts.push(Box::new(crate::health_checks::HealthListener::new(health.clone())));
    }
    Ok(parts)
}

/// The configured workload attestors, in the order unix, k8s, systemd (the order of their
/// selectors in answers and logs).
///
/// # Errors
/// A sentence naming the attestor that cannot be set up.
pub fn workload_attestors(settings: &Settings) -> Result<Vec<Box<dyn WorkloadAttestor>>, String> {
    let wa = &settings.workload_attestors;
    let mut attestors: Vec<Box<dyn WorkloadAttestor>> = Vec::new();
    if let Some(unix) = wa.unix {
        attestors.push(Box::new(UnixAttestor::new(unix, ProcFs::default())));
    }
    if let Some(k8s) = &wa.k8s {
        let attestor = K8sAttestor::new(k8s.clone(), ProcFs::default())
            .map_err(|e| format!("workload attestor \"k8s\": {e}"))?;
        attestors.push(Box::new(attestor));
    }
    if wa.systemd {
        attestors.push(Box::new(SystemdAttestor::new(SystemdBus::System)));
    }
    Ok(attestors)
}

/// Runs the SVID manager for as long as the agent runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct SvidSync;

impl Component for SvidSync {
    fn name(&self) -> &'static str {
        "svid manager"
    }

    fn run(self: Box<Self>, agent: AgentHandle) -> ComponentFuture {
        Box::pin(async move {
            loop {
                let settings = &agent.settings;
                let mut config = ManagerConfig::new(settings.trust_domain.clone());
                config.sync_interval = settings.sync_interval;
                config.push = settings.push_sync.then(|| PushConfig {
                    poll_interval: settings.push_sync_poll_interval,
                    ..PushConfig::default()
                });
                config.x509_svid_cache_max_size = settings.x509_svid_cache_max_size;
                let manager = Manager::new(
                    config,
                    agent.server.channels(),
                    Arc::clone(&agent.cache),
                    Arc::new(SystemClock),
                );
                let mut identity = agent.identity_changes();
                identity.borrow_and_update();
                let refused = match manager.run().await {
                    Ok(()) => return Ok(()),
                    Err(e) => e,
                };
                let SyncError::Rpc { status, .. } = &refused else {
                    return Err(refused.to_string());
                };
                if !agent.server_denied(status) {
                    return Err(refused.to_string());
                }
                // The agent attests again (a new SVID) or stops; start over in the first case.
                tokio::select! {
                    () = agent.stopping() => return Ok(()),
                    changed = identity.changed() => {
                        if changed.is_err() {
                            return Ok(());
                        }
                    }
                }
            }
        })
    }
}

/// Serves the Workload API socket for as long as the agent runs.
pub struct WorkloadEndpoints {
    attestors: Vec<Box<dyn WorkloadAttestor>>,
}

impl std::fmt::Debug for WorkloadEndpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.attestors.iter().map(|a| a.name()).collect();
        f.debug_struct("WorkloadEndpoints").field("attestors", &names).finish()
    }
}

impl WorkloadEndpoints {
    /// Endpoints attesting callers with `attestors`.
    pub fn new(attestors: Vec<Box<dyn WorkloadAttestor>>) -> Self {
        Self { attestors }
    }
}

impl Component for WorkloadEndpoints {
    fn name(&self) -> &'static str {
        "workload api"
    }

    fn run(self: Box<Self>, agent: AgentHandle) -> ComponentFuture {
        Box::pin(async move {
            let settings = &agent.settings;
            let jwt = Arc::new(JwtSvids::new(
                agent.server.channels(),
                Arc::new(SystemClock),
                settings.jwt_svid_cache_max_size,
            ));
            let options = ServeOptions {
                listener: ListenerConfig::new(settings.socket_path.clone()),
                api: settings.workload_api.clone(),
                sds: settings.sds.clone(),
            };
            tracing::info!(path = %settings.socket_path.display(), "serving the Workload API");
            let stop = agent.clone();
            serve_with(options, Arc::clone(&agent.cache), jwt, self.attestors, async move {
                stop.stopping().await;
            })
            .await
            .map_err(|e| crate::agent::error_chain(&e))
        })
    }
}
