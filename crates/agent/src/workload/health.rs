//! `grpc.health.v1.Health` on the Workload API socket, as spire-agent serves it there for
//! `spire-agent healthcheck`.

use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio_stream::Stream;
use tonic::transport::{Endpoint, Uri};
use tonic::{Code, Request, Response, Status};
use tracing::warn;
use ward_proto::grpc::health::v1::health_check_response::ServingStatus;
use ward_proto::grpc::health::v1::health_server::{Health, HealthServer};
use ward_proto::grpc::health::v1::{self as pb};
use ward_proto::spiffe::workload::X509svidRequest;
use ward_proto::spiffe::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;

use super::SECURITY_HEADER;

/// How long a health check waits for the Workload API's first answer.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// The health service: `Check` (service `""` only) calls the agent's own Workload API
/// through its socket, as SPIRE's does, and reports SERVING when FetchX509SVID answers with
/// SVIDs or with `PermissionDenied` (the agent itself usually has no identity), NOT_SERVING
/// otherwise. `Watch` and `List` are unimplemented.
#[derive(Debug, Clone)]
pub struct WorkloadHealth {
    socket_path: PathBuf,
}

impl WorkloadHealth {
    /// A health service checking the Workload API on `socket_path`.
    pub fn new(socket_path: impl Into<PathBuf>) -> Self {
        Self { socket_path: socket_path.into() }
    }

    /// The tonic service, to add to a [`tonic::service::Routes`].
    pub fn into_service(self) -> HealthServer<Self> {
        HealthServer::new(self)
    }

    /// The code of the Workload API's first answer to FetchX509SVID.
    async fn probe(&self) -> Code {
        let path = self.socket_path.clone();
        let Ok(endpoint) = Endpoint::try_from("http://localhost") else {
            return Code::Internal;
        };
        let connect = endpoint.connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(&path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }));
        let call = async {
            let channel = connect.await.map_err(|e| Status::unavailable(e.to_string()))?;
            let mut request = Request::new(X509svidRequest {});
            request
                .metadata_mut()
                .insert(SECURITY_HEADER, "true".parse().map_err(|_| Status::internal("header"))?);
            let mut stream =
                SpiffeWorkloadApiClient::new(channel).fetch_x509svid(request).await?.into_inner();
            stream.message().await.map(|_| ())
        };
        match tokio::time::timeout(CHECK_TIMEOUT, call).await {
            Ok(Ok(())) => Code::Ok,
            Ok(Err(status)) => status.code(),
            Err(_) => Code::DeadlineExceeded,
        }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for WorkloadHealth {
    async fn check(
        &self,
        request: Request<pb::HealthCheckRequest>,
    ) -> Result<Response<pb::HealthCheckResponse>, Status> {
        if !request.get_ref().service.is_empty() {
            return Err(Status::invalid_argument("per-service health is not supported"));
        }
        let status = match self.probe().await {
            Code::Ok | Code::PermissionDenied => ServingStatus::Serving,
            code => {
                warn!(code = ?code, reason = "unable to fetch X.509 context from Workload API", "health check failed");
                ServingStatus::NotServing
            }
        };
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
