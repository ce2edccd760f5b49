//! `grpc.health.v1.Health` on the admin socket: `Check` with service `""` only, SERVING when
//! the own trust bundle can be read.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tonic::{Request, Response, Status};
use ward_proto::grpc::health::v1::{
    self as pb, health_check_response::ServingStatus, health_server::Health,
};

use super::unimplemented;
use crate::state::ServerState;

/// The health service.
#[derive(Debug, Clone)]
pub struct HealthService {
    state: Arc<ServerState>,
}

impl HealthService {
    /// A service over `state`.
    pub fn new(state: Arc<ServerState>) -> Self {
        Self { state }
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
        let serving = self.state.store.bundle(&self.state.trust_domain).is_some();
        let status = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
        Ok(Response::new(pb::HealthCheckResponse { status: status as i32 }))
    }

    async fn list(
        &self,
        _: Request<pb::HealthListRequest>,
    ) -> Result<Response<pb::HealthListResponse>, Status> {
        Err(unimplemented("List"))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        _: Request<pb::HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(unimplemented("Watch"))
    }
}
