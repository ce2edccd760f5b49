//! `spire.api.server.bundle.v1.Bundle`: the own trust bundle and federated bundles.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use ward_proto::convert::{bundle_to_proto, trust_domain_from_proto};
use ward_proto::spire::api::server::bundle::v1::{self as pb, bundle_server::Bundle};
use ward_proto::spire::api::types;
use ward_store::PageRequest;

use super::{count_i32, page_request, unimplemented};
use crate::state::ServerState;

/// The Bundle service.
#[derive(Debug, Clone)]
pub struct BundleService {
    state: Arc<ServerState>,
}

impl BundleService {
    /// A service over `state`.
    pub fn new(state: Arc<ServerState>) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl Bundle for BundleService {
    async fn count_bundles(
        &self,
        _: Request<pb::CountBundlesRequest>,
    ) -> Result<Response<pb::CountBundlesResponse>, Status> {
        let count = self.state.store.list_bundles(&PageRequest::all()).items.len();
        Ok(Response::new(pb::CountBundlesResponse { count: count_i32(count) }))
    }

    async fn get_bundle(
        &self,
        req: Request<pb::GetBundleRequest>,
    ) -> Result<Response<types::Bundle>, Status> {
        let mask = req.into_inner().output_mask;
        let bundle = self
            .state
            .store
            .bundle(&self.state.trust_domain)
            .ok_or_else(|| Status::not_found("bundle not found"))?;
        Ok(Response::new(bundle_to_proto(&bundle, mask.as_ref())))
    }

    async fn append_bundle(
        &self,
        _: Request<pb::AppendBundleRequest>,
    ) -> Result<Response<types::Bundle>, Status> {
        Err(unimplemented("AppendBundle"))
    }

    async fn publish_jwt_authority(
        &self,
        _: Request<pb::PublishJwtAuthorityRequest>,
    ) -> Result<Response<pb::PublishJwtAuthorityResponse>, Status> {
        Err(unimplemented("PublishJWTAuthority"))
    }

    async fn list_federated_bundles(
        &self,
        req: Request<pb::ListFederatedBundlesRequest>,
    ) -> Result<Response<pb::ListFederatedBundlesResponse>, Status> {
        let req = req.into_inner();
        let page = page_request(req.page_size, &req.page_token)?;
        let result = self.state.store.list_bundles(&page);
        let bundles = result
            .items
            .iter()
            .filter(|b| b.trust_domain != self.state.trust_domain)
            .map(|b| bundle_to_proto(b, req.output_mask.as_ref()))
            .collect();
        Ok(Response::new(pb::ListFederatedBundlesResponse {
            bundles,
            next_page_token: result.next_token.unwrap_or_default(),
        }))
    }

    async fn get_federated_bundle(
        &self,
        req: Request<pb::GetFederatedBundleRequest>,
    ) -> Result<Response<types::Bundle>, Status> {
        let req = req.into_inner();
        let td = trust_domain_from_proto(&req.trust_domain).map_err(|e| {
            Status::invalid_argument(format!("trust domain argument is not valid: {e}"))
        })?;
        if td == self.state.trust_domain {
            return Err(Status::invalid_argument(
                "getting a federated bundle for the server's own trust domain is not allowed",
            ));
        }
        let bundle =
            self.state.store.bundle(&td).ok_or_else(|| Status::not_found("bundle not found"))?;
        Ok(Response::new(bundle_to_proto(&bundle, req.output_mask.as_ref())))
    }

    async fn batch_create_federated_bundle(
        &self,
        _: Request<pb::BatchCreateFederatedBundleRequest>,
    ) -> Result<Response<pb::BatchCreateFederatedBundleResponse>, Status> {
        Err(unimplemented("BatchCreateFederatedBundle"))
    }

    async fn batch_update_federated_bundle(
        &self,
        _: Request<pb::BatchUpdateFederatedBundleRequest>,
    ) -> Result<Response<pb::BatchUpdateFederatedBundleResponse>, Status> {
        Err(unimplemented("BatchUpdateFederatedBundle"))
    }

    async fn batch_set_federated_bundle(
        &self,
        _: Request<pb::BatchSetFederatedBundleRequest>,
    ) -> Result<Response<pb::BatchSetFederatedBundleResponse>, Status> {
        Err(unimplemented("BatchSetFederatedBundle"))
    }

    async fn batch_delete_federated_bundle(
        &self,
        _: Request<pb::BatchDeleteFederatedBundleRequest>,
    ) -> Result<Response<pb::BatchDeleteFederatedBundleResponse>, Status> {
        Err(unimplemented("BatchDeleteFederatedBundle"))
    }
}
