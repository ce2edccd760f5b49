//! The agent's admin socket: `grpc.health.v1.Health/Check` (service `""` only), SERVING while
//! the agent holds an unexpired SVID, as `ward-agent healthcheck` and spire-agent's
//! `healthcheck` ask it. [`HealthService`] can also be served on the Workload API socket,
//! where spire-agent answers health checks.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::SystemTime;

use futures::Stream;
use tokio::net::UnixListener;
use tonic::{Request, Response, Status};
use ward_proto::grpc::health::v1::{
    self as pb, health_check_response::ServingStatus, health_server::Health,
    health_server::HealthServer,
};

use crate::agent::{AgentError, AgentHandle};

/// The health service.
#[derive(Debug, Clone)]
pub struct HealthService {
    agent: AgentHandle,
}

impl HealthService {
    /// A health service reporting on `agent`.
    pub fn new(agent: AgentHandle) -> Self {
        Self { agent }
    }

    /// The service ready to add to a tonic router.
    pub fn into_server(self) -> HealthServer<Self> {
        HealthServer::new(self)
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        req: Request<pb::HealthCheckRequest>,
    ) -> Result<Response<pb::HealthCheckResponse>, Status> {
        let service = req.into_inner().service;
        if !service.is_empty() {
            return Err(Status::invalid_argument(format!("unknown service {service:?}")));
        }
        let id = self.agent.identity();
        let serving = !crate::renewal::is_expired(id.not_after, SystemTime::now());
        let status = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
        Ok(Response::new(pb::HealthCheckResponse { status: status as i32 }))
    }

    async fn list(
        &self,
        _: Request<pb::HealthListRequest>,
    ) -> Result<Response<pb::HealthListResponse>, Status> {
        Err(Status::unimplemented("method List not implemented"))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        _: Request<pb::HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("method Watch not implemented"))
    }
}

/// Binds a Unix socket at `path`: the parent directory is created (mode 0700) when missing
/// and a stale socket file is replaced.
///
/// # Errors
/// The I/O error.
pub fn bind_unix(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    UnixListener::bind(path)
}

/// Binds the admin socket and returns the task serving it until the agent stops.
///
/// # Errors
/// [`AgentError::AdminSocket`] when the socket cannot be bound.
pub fn serve(
    path: &Path,
    agent: AgentHandle,
) -> Result<impl std::future::Future<Output = Result<(), AgentError>> + Send + 'static, AgentError>
{
    let fail = |source| AgentError::AdminSocket { path: PathBuf::from(path), source };
    let listener = bind_unix(path).map_err(fail)?;
    tracing::info!(path = %path.display(), "admin socket listening");
    let path = path.to_owned();
    Ok(async move {
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        let stopping = agent.clone();
        tonic::transport::Server::builder()
            .add_service(HealthService::new(agent).into_server())
            .serve_with_incoming_shutdown(incoming, async move { stopping.stopping().await })
            .await
            .map_err(|e| AgentError::AdminSocket { path, source: std::io::Error::other(e) })
    })
}
