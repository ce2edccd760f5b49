//! `spire.api.server.trustdomain.v1.TrustDomain`: federation relationships, and
//! RefreshBundle, which fetches a federated bundle now through [`crate::federation`].

use std::sync::Arc;

use tonic::{Code, Request, Response, Status};
use ward_core::{FederationRelationship, TrustDomain};
use ward_proto::convert::{
    batch_status, batch_status_ok, federation_relationship_from_proto,
    federation_relationship_to_proto,
};
use ward_proto::spire::api::server::trustdomain::v1::{self as pb, trust_domain_server};
use ward_proto::spire::api::types;
use ward_store::{Command, FederationMask, FederationUpdate, ItemError, Outcome};

use super::{Batch, item_code, page_request, propose, row_id_token};
use crate::current_read::{CurrentRead, confirm};
use crate::state::ServerState;

/// The TrustDomain service.
#[derive(Debug, Clone)]
pub struct TrustDomainService {
    state: Arc<ServerState>,
}

impl TrustDomainService {
    /// A service over `state`.
    pub fn new(state: Arc<ServerState>) -> Self {
        Self { state }
    }

    fn foreign(&self, td: &TrustDomain) -> Result<(), (Code, String)> {
        if *td == self.state.trust_domain {
            return Err((
                Code::InvalidArgument,
                "unable to create federation relationship for server trust domain".to_owned(),
            ));
        }
        Ok(())
    }

    /// Proposes `cmd` for the accepted items; results in request order.
    async fn run<R>(
        &self,
        mut batch: Batch<R>,
        cmd: Option<Command>,
        mask: Option<&types::FederationRelationshipMask>,
        make: impl Fn(Option<types::Status>, Option<types::FederationRelationship>) -> R,
        what: &str,
    ) -> Result<Vec<R>, Status> {
        let Some(cmd) = cmd else { return Ok(batch.finish()) };
        let Outcome::Federations(items) = propose(&self.state, cmd).await?.outcome else {
            return Err(Status::internal("unexpected apply outcome"));
        };
        batch.fill(items.into_iter().map(|item| match item {
            Ok(rel) => {
                make(Some(batch_status_ok()), Some(federation_relationship_to_proto(&rel, mask)))
            }
            // SPIRE's datastore reports a missing relationship on update as a failed fetch.
            Err(ItemError::FederationNotFound(_)) => make(
                Some(batch_status(
                    Code::Internal,
                    format!("{what}: unable to fetch federation relationship: record not found"),
                )),
                None,
            ),
            // SPIRE's datastore refuses a second relationship by its unique constraint.
            Err(ItemError::FederationExists(_)) => make(
                Some(batch_status(
                    Code::Internal,
                    format!(
                        "{what}: datastore-sql: UNIQUE constraint failed: \
                         federated_trust_domains.trust_domain"
                    ),
                )),
                None,
            ),
            Err(e) => make(Some(batch_status(item_code(&e), format!("{what}: {e}"))), None),
        }));
        Ok(batch.finish())
    }
}

fn store_mask(m: &types::FederationRelationshipMask) -> FederationMask {
    FederationMask {
        bundle_endpoint_url: m.bundle_endpoint_url,
        profile: m.bundle_endpoint_profile,
        trust_domain_bundle: m.trust_domain_bundle,
    }
}

#[tonic::async_trait]
impl trust_domain_server::TrustDomain for TrustDomainService {
    async fn list_federation_relationships(
        &self,
        req: Request<pb::ListFederationRelationshipsRequest>,
    ) -> Result<Response<pb::ListFederationRelationshipsResponse>, Status> {
        let current = CurrentRead::of(&req);
        let req = req.into_inner();
        // Page tokens are creation numbers.
        let page = page_request(req.page_size, &req.page_token, row_id_token, |why| {
            Status::internal(format!("failed to list federation relationships: {why}"))
        })?;
        confirm(current).await?;
        let result = self.state.store.list_federation_relationships(&page);
        Ok(Response::new(pb::ListFederationRelationshipsResponse {
            federation_relationships: result
                .items
                .iter()
                .map(|r| federation_relationship_to_proto(r, req.output_mask.as_ref()))
                .collect(),
            next_page_token: result.next_token.unwrap_or_default(),
        }))
    }

    async fn get_federation_relationship(
        &self,
        req: Request<pb::GetFederationRelationshipRequest>,
    ) -> Result<Response<types::FederationRelationship>, Status> {
        let current = CurrentRead::of(&req);
        let req = req.into_inner();
        let td = TrustDomain::parse(&req.trust_domain)
            .map_err(|e| Status::invalid_argument(format!("failed to parse trust domain: {e}")))?;
        confirm(current).await?;
        let rel = self
            .state
            .store
            .federation_relationship(&td)
            .ok_or_else(|| Status::not_found("federation relationship does not exist"))?;
        Ok(Response::new(federation_relationship_to_proto(&rel, req.output_mask.as_ref())))
    }

    async fn batch_create_federation_relationship(
        &self,
        req: Request<pb::BatchCreateFederationRelationshipRequest>,
    ) -> Result<Response<pb::BatchCreateFederationRelationshipResponse>, Status> {
        use pb::batch_create_federation_relationship_response::Result as R;
        let req = req.into_inner();
        let make = |status, federation_relationship| R { status, federation_relationship };
        let mut batch = Batch::default();
        let mut valid: Vec<FederationRelationship> = Vec::new();
        for proto in &req.federation_relationships {
            let checked = federation_relationship_from_proto(proto)
                .map_err(conversion_refused)
                .and_then(|rel| self.foreign(&rel.trust_domain).map(|()| rel));
            let refused = |(code, msg)| make(Some(batch_status(code, msg)), None);
            valid.extend(batch.take(checked.map_err(refused)));
        }
        let cmd = (!valid.is_empty()).then_some(Command::CreateFederationRelationships(valid));
        let results = self
            .run(
                batch,
                cmd,
                req.output_mask.as_ref(),
                make,
                "failed to create federation relationship",
            )
            .await?;
        Ok(Response::new(pb::BatchCreateFederationRelationshipResponse { results }))
    }

    async fn batch_update_federation_relationship(
        &self,
        req: Request<pb::BatchUpdateFederationRelationshipRequest>,
    ) -> Result<Response<pb::BatchUpdateFederationRelationshipResponse>, Status> {
        use pb::batch_update_federation_relationship_response::Result as R;
        let req = req.into_inner();
        let make = |status, federation_relationship| R { status, federation_relationship };
        let mask = req.input_mask.as_ref().map_or(FederationMask::ALL, store_mask);
        let mut batch = Batch::default();
        let mut valid = Vec::new();
        for proto in &req.federation_relationships {
            // As SPIRE, the whole input must convert whatever the mask; the store merges
            // the masked fields into the stored relationship when the command applies.
            let update = federation_relationship_from_proto(proto)
                .map_err(conversion_refused)
                .map(|relationship| FederationUpdate { relationship, mask });
            let refused = |(code, msg)| make(Some(batch_status(code, msg)), None);
            valid.extend(batch.take(update.map_err(refused)));
        }
        let cmd = (!valid.is_empty()).then_some(Command::UpdateFederationRelationships(valid));
        let results = self
            .run(
                batch,
                cmd,
                req.output_mask.as_ref(),
                make,
                "failed to update federation relationship",
            )
            .await?;
        Ok(Response::new(pb::BatchUpdateFederationRelationshipResponse { results }))
    }

    async fn batch_delete_federation_relationship(
        &self,
        req: Request<pb::BatchDeleteFederationRelationshipRequest>,
    ) -> Result<Response<pb::BatchDeleteFederationRelationshipResponse>, Status> {
        use pb::batch_delete_federation_relationship_response::Result as R;
        let names = req.into_inner().trust_domains;
        let mut batch: Batch<R> = Batch::default();
        let mut valid = Vec::new();
        for name in &names {
            if name.is_empty() {
                batch.refuse(R {
                    status: Some(batch_status(Code::InvalidArgument, "missing trust domain")),
                    trust_domain: name.clone(),
                });
                continue;
            }
            match TrustDomain::parse(name) {
                Ok(td) => {
                    batch.accept();
                    valid.push(td);
                }
                Err(e) => batch.refuse(R {
                    status: Some(batch_status(
                        Code::InvalidArgument,
                        format!("failed to parse trust domain: {e}"),
                    )),
                    trust_domain: name.clone(),
                }),
            }
        }
        if !valid.is_empty() {
            let cmd = Command::DeleteFederationRelationships(valid.clone());
            let Outcome::Federations(items) = propose(&self.state, cmd).await?.outcome else {
                return Err(Status::internal("unexpected apply outcome"));
            };
            batch.fill(items.into_iter().zip(valid).map(|(item, td)| R {
                status: Some(match item {
                    Ok(_) => batch_status_ok(),
                    Err(ItemError::FederationNotFound(_)) => {
                        batch_status(Code::NotFound, "federation relationship not found")
                    }
                    Err(e) => batch_status(
                        item_code(&e),
                        format!("failed to delete federation relationship: {e}"),
                    ),
                }),
                trust_domain: td.as_str().to_owned(),
            }));
        }
        Ok(Response::new(pb::BatchDeleteFederationRelationshipResponse { results: batch.finish() }))
    }

    async fn refresh_bundle(
        &self,
        req: Request<pb::RefreshBundleRequest>,
    ) -> Result<Response<()>, Status> {
        let name = req.into_inner().trust_domain;
        let td = TrustDomain::parse(&name)
            .map_err(|e| Status::invalid_argument(format!("failed to parse trust domain: {e}")))?;
        match self.state.federation.refresh(&td).await {
            Ok(true) => Ok(Response::new(())),
            Ok(false) => Err(Status::not_found(format!(
                "no relationship with trust domain {:?}",
                td.as_str()
            ))),
            Err(e) => Err(Status::internal(format!("failed to refresh bundle: {e}"))),
        }
    }
}

/// A batch item refused because its relationship did not convert, in SPIRE's words.
fn conversion_refused(e: impl std::fmt::Display) -> (Code, String) {
    (Code::InvalidArgument, format!("failed to convert federation relationship: {e}"))
}
