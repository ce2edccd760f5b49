//! `spire.api.server.bundle.v1.Bundle`: the own trust bundle and federated bundles.

use std::sync::Arc;

use tonic::{Code, Request, Response, Status};
use ward_proto::convert::{
    apply_bundle_update, batch_status, batch_status_ok, bundle_from_proto, bundle_to_proto,
    jwt_authority_from_proto, trust_domain_from_proto, x509_authority_from_proto,
};
use ward_proto::spire::api::server::bundle::v1::{self as pb, bundle_server::Bundle};
use ward_proto::spire::api::types;
use ward_store::{BundleDeleteMode, Command, ItemError, Outcome, PageRequest};

use super::{Batch, count_i32, item_code, page_request, propose, unimplemented};
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
        req: Request<pb::AppendBundleRequest>,
    ) -> Result<Response<types::Bundle>, Status> {
        let req = req.into_inner();
        if req.x509_authorities.is_empty() && req.jwt_authorities.is_empty() {
            return Err(Status::invalid_argument("no authorities to append"));
        }
        let x509_authorities = req
            .x509_authorities
            .iter()
            .map(x509_authority_from_proto)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                Status::invalid_argument(format!("failed to convert X.509 authority: {e}"))
            })?;
        for a in &x509_authorities {
            x509_parser::parse_x509_certificate(&a.der).map_err(|e| {
                Status::invalid_argument(format!("failed to convert X.509 authority: {e}"))
            })?;
        }
        let jwt_authorities = req
            .jwt_authorities
            .iter()
            .map(jwt_authority_from_proto)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                Status::invalid_argument(format!("failed to convert JWT authority: {e}"))
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
        req: Request<pb::BatchCreateFederatedBundleRequest>,
    ) -> Result<Response<pb::BatchCreateFederatedBundleResponse>, Status> {
        let req = req.into_inner();
        let items = req
            .bundle
            .iter()
            .map(|b| {
                let b = self.federated(b, "creating")?;
                if self.state.store.bundle(&b.trust_domain).is_some() {
                    return Err((Code::AlreadyExists, "bundle already exists".to_owned()));
                }
                Ok(b)
            })
            .collect();
        let results = self
            .set_bundles(items, req.output_mask.as_ref(), |status, bundle| {
                pb::batch_create_federated_bundle_response::Result { status, bundle }
            })
            .await?;
        Ok(Response::new(pb::BatchCreateFederatedBundleResponse { results }))
    }

    async fn batch_update_federated_bundle(
        &self,
        req: Request<pb::BatchUpdateFederatedBundleRequest>,
    ) -> Result<Response<pb::BatchUpdateFederatedBundleResponse>, Status> {
        let req = req.into_inner();
        let items = req
            .bundle
            .iter()
            .map(|b| {
                let td = trust_domain_from_proto(&b.trust_domain).map_err(convert_failed)?;
                if td == self.state.trust_domain {
                    return Err(own_td("updating"));
                }
                let existing = self
                    .state
                    .store
                    .bundle(&td)
                    .ok_or_else(|| (Code::NotFound, "bundle not found".to_owned()))?;
                let merged = apply_bundle_update(&existing, b, req.input_mask.as_ref())
                    .map_err(convert_failed)?;
                check_x509(&merged)?;
                Ok(merged)
            })
            .collect();
        let results = self
            .set_bundles(items, req.output_mask.as_ref(), |status, bundle| {
                pb::batch_update_federated_bundle_response::Result { status, bundle }
            })
            .await?;
        Ok(Response::new(pb::BatchUpdateFederatedBundleResponse { results }))
    }

    async fn batch_set_federated_bundle(
        &self,
        req: Request<pb::BatchSetFederatedBundleRequest>,
    ) -> Result<Response<pb::BatchSetFederatedBundleResponse>, Status> {
        let req = req.into_inner();
        let items = req.bundle.iter().map(|b| self.federated(b, "setting")).collect();
        let results = self
            .set_bundles(items, req.output_mask.as_ref(), |status, bundle| {
                pb::batch_set_federated_bundle_response::Result { status, bundle }
            })
            .await?;
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
                return Err(Status::invalid_argument(format!("unknown delete mode {}", req.mode)));
            }
        };
        let mut batch: Batch<pb::batch_delete_federated_bundle_response::Result> = Batch::default();
        let mut valid = Vec::new();
        for name in &req.trust_domains {
            let refused =
                |code: Code, msg: String| pb::batch_delete_federated_bundle_response::Result {
                    status: Some(batch_status(code, msg)),
                    trust_domain: name.clone(),
                };
            match trust_domain_from_proto(name) {
                Ok(td) if td == self.state.trust_domain => batch.refuse(refused(
                    Code::InvalidArgument,
                    "removing the bundle for the server's own trust domain is not allowed".into(),
                )),
                Ok(td) => {
                    batch.accept();
                    valid.push(td);
                }
                Err(e) => batch.refuse(refused(
                    Code::InvalidArgument,
                    format!("failed to parse trust domain: {e}"),
                )),
            }
        }
        if !valid.is_empty() {
            let cmd = Command::DeleteBundles { trust_domains: valid.clone(), mode };
            let Outcome::Bundles(items) = propose(&self.state, cmd).await?.outcome else {
                return Err(Status::internal("unexpected apply outcome"));
            };
            batch.fill(items.into_iter().zip(valid).map(|(item, td)| {
                let status = match item {
                    Ok(_) => batch_status_ok(),
                    Err(ItemError::BundleNotFound(_)) => {
                        batch_status(Code::NotFound, "no such bundle")
                    }
                    Err(e) => batch_status(
                        item_code(&e),
                        format!("failed to delete federated bundle: {e}"),
                    ),
                };
                pb::batch_delete_federated_bundle_response::Result {
                    status: Some(status),
                    trust_domain: td.as_str().to_owned(),
                }
            }));
        }
        Ok(Response::new(pb::BatchDeleteFederatedBundleResponse { results: batch.finish() }))
    }
}

type Refusal = (Code, String);

fn convert_failed(e: impl std::fmt::Display) -> Refusal {
    (Code::InvalidArgument, format!("failed to convert bundle: {e}"))
}

fn own_td(verb: &str) -> Refusal {
    (
        Code::InvalidArgument,
        format!("{verb} a federated bundle for the server's own trust domain is not allowed"),
    )
}

/// Every X.509 authority must be a parseable certificate.
fn check_x509(b: &ward_core::Bundle) -> Result<(), Refusal> {
    for a in &b.x509_authorities {
        x509_parser::parse_x509_certificate(&a.der)
            .map_err(|e| convert_failed(format!("unable to parse X.509 authority: {e}")))?;
    }
    Ok(())
}

impl BundleService {
    /// A wire bundle for a federated (foreign) trust domain.
    fn federated(&self, b: &types::Bundle, verb: &str) -> Result<ward_core::Bundle, Refusal> {
        let bundle = bundle_from_proto(b).map_err(convert_failed)?;
        if bundle.trust_domain == self.state.trust_domain {
            return Err(own_td(verb));
        }
        check_x509(&bundle)?;
        Ok(bundle)
    }

    /// Proposes the accepted bundles as one `SetBundles`; results in request order.
    async fn set_bundles<R>(
        &self,
        items: Vec<Result<ward_core::Bundle, Refusal>>,
        mask: Option<&types::BundleMask>,
        make: impl Fn(Option<types::Status>, Option<types::Bundle>) -> R,
    ) -> Result<Vec<R>, Status> {
        let mut batch: Batch<R> = Batch::default();
        let mut valid = Vec::new();
        for item in items {
            let refused = |(code, msg)| make(Some(batch_status(code, msg)), None);
            valid.extend(batch.take(item.map_err(refused)));
        }
        if !valid.is_empty() {
            let Outcome::Bundles(items) =
                propose(&self.state, Command::SetBundles(valid)).await?.outcome
            else {
                return Err(Status::internal("unexpected apply outcome"));
            };
            batch.fill(items.into_iter().map(|item| match item {
                Ok(b) => make(Some(batch_status_ok()), Some(bundle_to_proto(&b, mask))),
                Err(e) => make(
                    Some(batch_status(item_code(&e), format!("failed to set bundle: {e}"))),
                    None,
                ),
            }));
        }
        Ok(batch.finish())
    }
}
