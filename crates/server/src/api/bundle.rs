//! `spire.api.server.bundle.v1.Bundle`: the own trust bundle and federated bundles.

use std::sync::Arc;

use tonic::{Code, Request, Response, Status};
use ward_core::TrustDomain;
use ward_proto::convert::{
    batch_status, batch_status_ok, bundle_from_caller, bundle_to_proto, jwt_authority_from_caller,
    x509_authority_from_caller,
};
use ward_proto::spire::api::server::bundle::v1::{self as pb, bundle_server::Bundle};
use ward_proto::spire::api::types;
use ward_store::{BundleDeleteMode, BundleMask, BundleUpdate, Command, ItemError, Outcome};

use super::{Batch, count_i32, item_code, page_request, propose, row_id_token, unimplemented};
use crate::current_read::{CurrentRead, confirm};
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
        req: Request<pb::CountBundlesRequest>,
    ) -> Result<Response<pb::CountBundlesResponse>, Status> {
        confirm(CurrentRead::of(&req)).await?;
        let count = self.state.store.bundle_count();
        Ok(Response::new(pb::CountBundlesResponse { count: count_i32(count) }))
    }

    async fn get_bundle(
        &self,
        req: Request<pb::GetBundleRequest>,
    ) -> Result<Response<types::Bundle>, Status> {
        let current = CurrentRead::of(&req);
        let mask = req.into_inner().output_mask;
        confirm(current).await?;
        let bundle = self
            .state
            .store
            .bundle(&self.state.trust_domain)
            .ok_or_else(|| Status::not_found("bundle not found"))?;
        Ok(Response::new(bundle_to_proto(&bundle, mask.as_ref())))
    }

    async fn append_bundle(
        &self,
        req: Request<pb::AppendBundleRequest>,
    ) -> Result<Response<types::Bundle>, Status> {
        let req = req.into_inner();
        if req.x509_authorities.is_empty() && req.jwt_authorities.is_empty() {
            return Err(Status::invalid_argument("no authorities to append"));
        }
        // SPIRE parses the JWT authorities first.
        let jwt_authorities = req
            .jwt_authorities
            .iter()
            .map(jwt_authority_from_caller)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                Status::invalid_argument(format!("failed to convert JWT authority: {e}"))
            })?;
        let x509_authorities = req
            .x509_authorities
            .iter()
            .map(x509_authority_from_caller)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                Status::invalid_argument(format!("failed to convert X.509 authority: {e}"))
            })?;
        let cmd = Command::AppendBundle {
            trust_domain: self.state.trust_domain.clone(),
            x509_authorities,
            jwt_authorities,
        };
        match propose(&self.state, cmd).await?.outcome {
            Outcome::Bundles(mut items) => match items.pop() {
                Some(Ok(b)) => Ok(Response::new(bundle_to_proto(&b, req.output_mask.as_ref()))),
                Some(Err(e)) => {
                    Err(Status::new(item_code(&e), format!("failed to append bundle: {e}")))
                }
                None => Err(Status::internal("failed to append bundle: no result")),
            },
            _ => Err(Status::internal("unexpected apply outcome")),
        }
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
        let current = CurrentRead::of(&req);
        let req = req.into_inner();
        // Page tokens are creation numbers.
        let page = page_request(req.page_size, &req.page_token, row_id_token, |why| {
            Status::internal(format!("failed to list bundles: {why}"))
        })?;
        confirm(current).await?;
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
        let current = CurrentRead::of(&req);
        let req = req.into_inner();
        let td = TrustDomain::parse(&req.trust_domain).map_err(|e| {
            Status::invalid_argument(format!("trust domain argument is not valid: {e}"))
        })?;
        if td == self.state.trust_domain {
            return Err(Status::invalid_argument(
                "getting a federated bundle for the server's own trust domain is not allowed",
            ));
        }
        confirm(current).await?;
        let bundle =
            self.state.store.bundle(&td).ok_or_else(|| Status::not_found("bundle not found"))?;
        Ok(Response::new(bundle_to_proto(&bundle, req.output_mask.as_ref())))
    }

    async fn batch_create_federated_bundle(
        &self,
        req: Request<pb::BatchCreateFederatedBundleRequest>,
    ) -> Result<Response<pb::BatchCreateFederatedBundleResponse>, Status> {
        let req = req.into_inner();
        let items = req.bundle.iter().map(|b| self.federated(b, "creating")).collect();
        let results = self
            .run(items, Command::CreateBundles, req.output_mask.as_ref(), |e| match e {
                ItemError::BundleExists(_) => (Code::AlreadyExists, "bundle already exists".into()),
                e => (Code::Internal, format!("unable to create bundle: {e}")),
            })
            .await?
            .into_iter()
            .map(|(status, bundle)| pb::batch_create_federated_bundle_response::Result {
                status,
                bundle,
            })
            .collect();
        Ok(Response::new(pb::BatchCreateFederatedBundleResponse { results }))
    }

    async fn batch_update_federated_bundle(
        &self,
        req: Request<pb::BatchUpdateFederatedBundleRequest>,
    ) -> Result<Response<pb::BatchUpdateFederatedBundleResponse>, Status> {
        let req = req.into_inner();
        let mask = req.input_mask.as_ref().map_or(BundleMask::ALL, store_mask);
        let items = req
            .bundle
            .iter()
            .map(|b| self.federated(b, "updating").map(|bundle| BundleUpdate { bundle, mask }))
            .collect();
        let results = self
            .run(items, Command::UpdateBundles, req.output_mask.as_ref(), |e| match e {
                ItemError::BundleNotFound(_) => (Code::NotFound, "bundle not found".into()),
                e => (Code::Internal, format!("failed to update bundle: {e}")),
            })
            .await?
            .into_iter()
            .map(|(status, bundle)| pb::batch_update_federated_bundle_response::Result {
                status,
                bundle,
            })
            .collect();
        Ok(Response::new(pb::BatchUpdateFederatedBundleResponse { results }))
    }

    async fn batch_set_federated_bundle(
        &self,
        req: Request<pb::BatchSetFederatedBundleRequest>,
    ) -> Result<Response<pb::BatchSetFederatedBundleResponse>, Status> {
        let req = req.into_inner();
        let items = req.bundle.iter().map(|b| self.federated(b, "setting")).collect();
        let results = self
            .run(items, Command::SetBundles, req.output_mask.as_ref(), |e| {
                (Code::Internal, format!("failed to set bundle: {e}"))
            })
            .await?
            .into_iter()
            .map(|(status, bundle)| pb::batch_set_federated_bundle_response::Result {
                status,
                bundle,
            })
            .collect();
        Ok(Response::new(pb::BatchSetFederatedBundleResponse { results }))
    }

    async fn batch_delete_federated_bundle(
        &self,
        req: Request<pb::BatchDeleteFederatedBundleRequest>,
    ) -> Result<Response<pb::BatchDeleteFederatedBundleResponse>, Status> {
        use pb::batch_delete_federated_bundle_request::Mode;
        let req = req.into_inner();
        let mode = match Mode::try_from(req.mode) {
            Ok(Mode::Restrict) => BundleDeleteMode::Restrict,
            Ok(Mode::Delete) => BundleDeleteMode::Delete,
            Ok(Mode::Dissociate) => BundleDeleteMode::Dissociate,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "failed to parse deletion mode: unhandled delete mode \"{}\"",
                    req.mode
                )));
            }
        };
        // Results echo each trust domain exactly as the caller sent it.
        let result = |name: &str, status| pb::batch_delete_federated_bundle_response::Result {
            status: Some(status),
            trust_domain: name.to_owned(),
        };
        let mut batch: Batch<pb::batch_delete_federated_bundle_response::Result> = Batch::default();
        let mut valid = Vec::new();
        for name in &req.trust_domains {
            match TrustDomain::parse(name) {
                Ok(td) if td == self.state.trust_domain => batch.refuse(result(
                    name,
                    batch_status(
                        Code::InvalidArgument,
                        "removing the bundle for the server trust domain is not allowed",
                    ),
                )),
                Ok(td) => {
                    batch.accept();
                    valid.push((td, name));
                }
                Err(e) => batch.refuse(result(
                    name,
                    batch_status(
                        Code::InvalidArgument,
                        format!("trust domain argument is not valid: {e}"),
                    ),
                )),
            }
        }
        if !valid.is_empty() {
            let trust_domains = valid.iter().map(|(td, _)| td.clone()).collect();
            let cmd = Command::DeleteBundles { trust_domains, mode };
            let Outcome::Bundles(items) = propose(&self.state, cmd).await?.outcome else {
                return Err(Status::internal("unexpected apply outcome"));
            };
            batch.fill(items.into_iter().zip(valid).map(|(item, (_, name))| {
                let status = match item {
                    Ok(_) => batch_status_ok(),
                    Err(ItemError::BundleNotFound(_)) => {
                        batch_status(Code::NotFound, "bundle not found")
                    }
                    // SPIRE's datastore text, under the service's prefix.
                    Err(ItemError::BundleInUse(_, n)) => batch_status(
                        Code::FailedPrecondition,
                        format!(
                            "failed to delete federated bundle: datastore-sql: cannot delete \
                             bundle; federated with {n} registration entries"
                        ),
                    ),
                    Err(e) => batch_status(
                        item_code(&e),
                        format!("failed to delete federated bundle: {e}"),
                    ),
                };
                result(name, status)
            }));
        }
        Ok(Response::new(pb::BatchDeleteFederatedBundleResponse { results: batch.finish() }))
    }
}

type Refusal = (Code, String);

/// A store bundle mask from the wire one.
fn store_mask(m: &types::BundleMask) -> BundleMask {
    BundleMask {
        x509_authorities: m.x509_authorities,
        jwt_authorities: m.jwt_authorities,
        refresh_hint: m.refresh_hint,
        sequence_number: m.sequence_number,
    }
}

impl BundleService {
    /// A wire bundle for a federated (foreign) trust domain, checked in SPIRE's order: the
    /// trust domain, not the server's own, then the whole bundle.
    fn federated(&self, b: &types::Bundle, verb: &str) -> Result<ward_core::Bundle, Refusal> {
        let td = TrustDomain::parse(&b.trust_domain).map_err(|e| {
            (Code::InvalidArgument, format!("trust domain argument is not valid: {e}"))
        })?;
        if td == self.state.trust_domain {
            return Err((
                Code::InvalidArgument,
                format!(
                    "{verb} a federated bundle for the server's own trust domain is not allowed"
                ),
            ));
        }
        bundle_from_caller(b)
            .map_err(|e| (Code::InvalidArgument, format!("failed to convert bundle: {e}")))
    }

    /// Proposes the accepted items as one command; per item in request order, its status
    /// and (when it succeeded) the bundle after the command under `mask`. `refused` gives
    /// the code and text of an item the store refused.
    async fn run<T>(
        &self,
        items: Vec<Result<T, Refusal>>,
        command: impl FnOnce(Vec<T>) -> Command,
        mask: Option<&types::BundleMask>,
        refused: impl Fn(ItemError) -> Refusal,
    ) -> Result<Vec<(Option<types::Status>, Option<types::Bundle>)>, Status> {
        let mut batch = Batch::default();
        let mut valid = Vec::new();
        for item in items {
            let item = item.map_err(|(code, msg)| (Some(batch_status(code, msg)), None));
            valid.extend(batch.take(item));
        }
        if !valid.is_empty() {
            let Outcome::Bundles(items) = propose(&self.state, command(valid)).await?.outcome
            else {
                return Err(Status::internal("unexpected apply outcome"));
            };
            batch.fill(items.into_iter().map(|item| match item {
                Ok(b) => (Some(batch_status_ok()), Some(bundle_to_proto(&b, mask))),
                Err(e) => {
                    let (code, msg) = refused(e);
                    (Some(batch_status(code, msg)), None)
                }
            }));
        }
        Ok(batch.finish())
    }
}
