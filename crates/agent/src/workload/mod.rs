//! The SPIFFE Workload API on the agent's Unix socket.
//!
//! Workloads call the agent over gRPC on a Unix socket; there is no TLS and no client
//! certificate. The caller is identified out of band: the kernel reports its pid, uid and gid
//! (`SO_PEERCRED`) when it connects, and the configured workload attestors turn the pid into
//! selectors on every call, as SPIRE's agent does. The caller gets the identities of the
//! registration entries whose selectors are all among its own.
//!
//! Pieces:
//! - [`WorkloadListener`]: the socket (in its own directory, with SPIRE's alternate names
//!   beside it) and the accept loop that records each connection's caller
//!   ([`PeerInfo`]); it serves any set of tonic services, so Envoy SDS shares the socket.
//! - [`CallerAttestor`]: a request's selectors, from its connection's [`PeerInfo`] and the
//!   attestors, with SPIRE's check that the caller did not exit while it was attested.
//! - [`WorkloadApi`]: the `SpiffeWorkloadAPI` service over the [`Cache`] and a
//!   [`JwtSvidSource`].
//! - [`WorkloadHealth`]: `grpc.health.v1.Health` on the same socket, for
//!   `spire-agent healthcheck` and `ward-agent healthcheck`.
//! - [`serve`]: all of them together, as `ward-agent run` starts them.
//!
//! Behaviour and error texts follow SPIRE v1.13.3's agent (`pkg/agent/endpoints/`); the
//! differences are listed in `docs/agent.md`.

mod authority;
mod caller;
mod health;
mod jwt;
mod listener;
mod service;
mod streams;

use std::future::Future;
use std::sync::Arc;

use tonic::service::Routes;
use ward_attest::WorkloadAttestor;

use crate::cache::{Cache, JwtSvidSource};
use crate::sds::{SdsConfig, SdsService};

pub use caller::{CallerAttestor, PeerInfo};
pub use health::WorkloadHealth;
pub use listener::{ALTERNATE_SOCKET_NAMES, ListenError, ListenerConfig, WorkloadListener};
pub use service::{WorkloadApi, WorkloadApiConfig};
pub use streams::WorkloadApiService;

/// The metadata key every Workload API call must carry with the single value `true`.
pub const SECURITY_HEADER: &str = "workload.spiffe.io";

/// Binds the Workload API socket described by `listener_config` and serves the Workload API,
/// Envoy SDS ([`crate::sds`], SPIRE's default resource names) and the gRPC health service
/// ([`WorkloadHealth`]) on it until `shutdown` completes, as spire-agent serves them all on
/// its socket.
///
/// To serve other services or settings on the same socket, bind a [`WorkloadListener`] and
/// pass it [`Routes`] holding [`WorkloadApi::into_service`], [`WorkloadHealth::into_service`]
/// and the others.
///
/// # Errors
/// [`ServeError::Listen`] when the socket cannot be set up, [`ServeError::Transport`] when
/// the gRPC server fails.
pub async fn serve(
    listener_config: ListenerConfig,
    cache: Arc<Cache>,
    jwt_source: Arc<dyn JwtSvidSource>,
    attestors: Vec<Box<dyn WorkloadAttestor>>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let options = ServeOptions::new(listener_config);
    serve_with(options, cache, jwt_source, attestors, shutdown).await
}

/// What [`serve_with`] serves on the socket and how.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The socket.
    pub listener: ListenerConfig,
    /// The Workload API's options.
    pub api: WorkloadApiConfig,
    /// SDS's resource names.
    pub sds: SdsConfig,
}

impl ServeOptions {
    /// The socket `listener` with SPIRE's default Workload API and SDS options.
    pub fn new(listener: ListenerConfig) -> Self {
        Self { listener, api: WorkloadApiConfig::default(), sds: SdsConfig::default() }
    }
}

/// [`serve`] with the Workload API and SDS options given, as `ward-agent run` starts it.
///
/// # Errors
/// As [`serve`].
pub async fn serve_with(
    options: ServeOptions,
    cache: Arc<Cache>,
    jwt_source: Arc<dyn JwtSvidSource>,
    attestors: Vec<Box<dyn WorkloadAttestor>>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let ServeOptions { listener: listener_config, api: api_config, sds: sds_config } = options;
    let listener = WorkloadListener::bind(&listener_config)?;
    let attestor = CallerAttestor::new(attestors);
    let sds = SdsService::new(sds_config, Arc::clone(&cache), attestor.clone());
    let api = WorkloadApi::new(cache, jwt_source, attestor, api_config);
    let health = WorkloadHealth::new(listener.socket_path());
    let routes = Routes::new(api.into_service())
        .add_service(sds.into_server())
        .add_service(health.into_service());
    listener.serve(routes, shutdown).await?;
    Ok(())
}

/// Why the Workload API stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The socket could not be set up.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// The gRPC server failed.
    #[error("workload api server: {0}")]
    Transport(#[from] tonic::transport::Error),
}
