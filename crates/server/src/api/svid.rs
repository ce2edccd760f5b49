//! `spire.api.server.svid.v1.SVID`: X509-SVID batch signing and JWT-SVID minting for agents.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tonic::{Code, Request, Response, Status};
use ward_ca::SvidParams;
use ward_core::RegistrationEntry;
use ward_core::dns_name::{check_wildcard_overlap, validate_dns_name};
use ward_proto::convert::{
    IdField, batch_status, batch_status_ok, jwt_svid_to_proto, x509_svid_to_proto,
};
use ward_proto::spire::api::server::svid::v1::{self as pb, svid_server::Svid};
use ward_proto::spire::api::types;

use super::{BATCH_CSR, MINT_CSR, id_for_role, sign_error_status, unimplemented};
use crate::ratelimit::{Limited, grpc_deadline};
use crate::state::{Caller, ServerState, caller_of};

/// The SVID service.
#[derive(Debug, Clone)]
pub struct SvidService {
    state: Arc<ServerState>,
}

impl SvidService {
    /// A service over `state`.
    pub fn new(state: Arc<ServerState>) -> Self {
        Self { state }
    }

    fn authorized_map(
        &self,
        caller: &Caller,
    ) -> Result<HashMap<String, Arc<RegistrationEntry>>, Status> {
        let agent =
            caller.agent_id().ok_or_else(|| Status::permission_denied("caller is not an agent"))?;
        let entries = self.state.store.authorized_entries(&agent);
        Ok(entries.iter().map(|e| (e.id.as_str().to_owned(), e.clone())).collect())
    }

    /// Signs a JWT-SVID for `id` as SPIRE's `mintJWTSVID` does: at least one audience must be
    /// asked for, and empty audience strings are dropped (none left is a signing failure).
    fn sign_jwt(
        &self,
        id: &ward_core::SpiffeId,
        audience: &[String],
        ttl: Duration,
    ) -> Result<ward_ca::SignedJwt, Status> {
        if audience.is_empty() {
            return Err(Status::invalid_argument("at least one audience is required"));
        }
        let audience: Vec<String> = audience.iter().filter(|a| !a.is_empty()).cloned().collect();
        if audience.is_empty() {
            return Err(Status::internal(
                "failed to sign JWT-SVID: invalid JWT-SVID audience: cannot be empty",
            ));
        }
        let signer = self
            .state
            .ca
            .jwt_signer_now()
            .map_err(|e| Status::internal(format!("failed to sign JWT-SVID: {e}")))?;
        signer
            .sign(id, &audience, self.state.clock.now(), ttl)
            .map_err(|e| Status::internal(format!("failed to sign JWT-SVID: {e}")))
    }

    /// One result per param, in request order.
    fn sign_batch(
        &self,
        params: &[pb::NewX509svidParams],
        entries: &HashMap<String, Arc<RegistrationEntry>>,
    ) -> Vec<pb::batch_new_x509svid_response::Result> {
        params
            .iter()
            .map(|p| match self.sign_one(p, entries) {
                Ok(svid) => pb::batch_new_x509svid_response::Result {
                    status: Some(batch_status_ok()),
                    svid: Some(svid),
                },
                Err(status) => {
                    tracing::debug!(entry_id = %p.entry_id, message = %status.message, "x509-svid refused");
                    pb::batch_new_x509svid_response::Result { status: Some(status), svid: None }
                }
            })
            .collect()
    }

    fn sign_one(
        &self,
        p: &pb::NewX509svidParams,
        entries: &HashMap<String, Arc<RegistrationEntry>>,
    ) -> Result<types::X509svid, types::Status> {
        if p.entry_id.is_empty() {
            return Err(batch_status(Code::InvalidArgument, "missing entry ID"));
        }
        if p.csr.is_empty() {
            return Err(batch_status(Code::InvalidArgument, "missing CSR"));
        }
        let Some(entry) = entries.get(&p.entry_id) else {
            return Err(batch_status(Code::NotFound, "entry not found or not authorized"));
        };
        let ca =
            self.state.ca.x509_ca().map_err(|e| {
                batch_status(Code::Internal, format!("failed to sign X509-SVID: {e}"))
            })?;
        let ttl = ttl_or(entry.x509_svid_ttl, self.state.default_x509_svid_ttl);
        let params = SvidParams { spiffe_id: &entry.spiffe_id, dns_names: &entry.dns_names, ttl };
        let now = self.state.clock.now();
        let sign_failed = |e: ward_ca::SignError| {
            let st = sign_error_status(&e, BATCH_CSR, "failed to sign X509-SVID");
            batch_status(st.code(), st.message())
        };
        let leaf = ca.sign_x509_svid_from_csr(&p.csr, &params, now).map_err(sign_failed)?;
        // Same `now` and TTL as the signing call, so this is the leaf's NotAfter.
        let expires_at = ca.svid_not_after(now, ttl).map_err(sign_failed)?;
        let mut chain = vec![leaf];
        chain.extend(ca.svid_chain_tail().iter().cloned());
        Ok(x509_svid_to_proto(chain, &entry.spiffe_id, expires_at, &entry.hint))
    }
}

/// A TTL in seconds from the wire, or `default` when it is 0.
fn ttl_or(secs: i32, default: Duration) -> Duration {
    match u64::try_from(secs) {
        Ok(s) if s > 0 => Duration::from_secs(s),
        _ => default,
    }
}

/// The SPIFFE ID a MintX509SVID CSR asks for: exactly one URI SAN, a workload ID of `td`.
fn minted_id(
    csr: &ward_ca::CsrRequest<'_>,
    td: &ward_core::TrustDomain,
) -> Result<ward_core::SpiffeId, Status> {
    let uri = match csr.uris.as_slice() {
        [] => return Err(Status::invalid_argument("CSR URI SAN is required")),
        [uri] => uri,
        _ => return Err(Status::invalid_argument("only one URI SAN is expected")),
    };
    let invalid = |e: &dyn std::fmt::Display| {
        Status::invalid_argument(format!("CSR URI SAN is invalid: {e}"))
    };
    let id = ward_core::SpiffeId::parse(uri).map_err(|e| invalid(&e))?;
    id.check_workload_of(td).map_err(|e| invalid(&e))?;
    Ok(id)
}

/// The DNS names of a MintX509SVID CSR, each valid and none covered by a wildcard of the
/// others.
fn check_minted_dns_names(names: &[String]) -> Result<(), Status> {
    for name in names {
        validate_dns_name(name)
            .map_err(|e| Status::invalid_argument(format!("CSR DNS name is invalid: {e}")))?;
    }
    check_wildcard_overlap(names).map_err(|e| {
        Status::invalid_argument(format!(
            "CSR DNS name contains a wildcard that covers another non-wildcard name: {e}"
        ))
    })
}

#[tonic::async_trait]
impl Svid for SvidService {
    async fn mint_x509svid(
        &self,
        req: Request<pb::MintX509svidRequest>,
    ) -> Result<Response<pb::MintX509svidResponse>, Status> {
        let req = req.into_inner();
        if req.csr.is_empty() {
            return Err(Status::invalid_argument("missing CSR"));
        }
        let csr = ward_ca::read_csr(&req.csr).map_err(|e| super::csr_status(&e, MINT_CSR))?;
        let id = minted_id(&csr, &self.state.trust_domain)?;
        check_minted_dns_names(&csr.dns_names)?;
        // A TTL of zero or less means the server default, as in SPIRE.
        let ttl = ttl_or(req.ttl, self.state.default_x509_svid_ttl);
        let failed =
            |e: &dyn std::fmt::Display| Status::internal(format!("failed to sign X509-SVID: {e}"));
        let ca = self.state.ca.x509_ca().map_err(|e| failed(&e))?;
        let params = SvidParams { spiffe_id: &id, dns_names: &csr.dns_names, ttl };
        let now = self.state.clock.now();
        let leaf = ca
            .sign_x509_svid_for_request(&csr, &params, now)
            .map_err(|e| sign_error_status(&e, MINT_CSR, "failed to sign X509-SVID"))?;
        // Same `now` and TTL as the signing call, so this is the leaf's NotAfter.
        let expires_at = ca.svid_not_after(now, ttl).map_err(|e| failed(&e))?;
        let mut chain = vec![leaf];
        chain.extend(ca.svid_chain_tail().iter().cloned());
        Ok(Response::new(pb::MintX509svidResponse {
            svid: Some(x509_svid_to_proto(chain, &id, expires_at, "")),
        }))
    }

    async fn mint_jwtsvid(
        &self,
        req: Request<pb::MintJwtsvidRequest>,
    ) -> Result<Response<pb::MintJwtsvidResponse>, Status> {
        let req = req.into_inner();
        let td = &self.state.trust_domain;
        let id = id_for_role(req.id.as_ref(), IdField::Id, |id| id.check_workload_of(td))?;
        // A TTL of zero or less means the server default, as in SPIRE.
        let ttl = ttl_or(req.ttl, self.state.default_jwt_svid_ttl);
        let jwt = self.sign_jwt(&id, &req.audience, ttl)?;
        Ok(Response::new(pb::MintJwtsvidResponse {
            svid: Some(jwt_svid_to_proto(jwt.token, &id, jwt.issued_at, jwt.expires_at, "")),
        }))
    }

    async fn batch_new_x509svid(
        &self,
        req: Request<pb::BatchNewX509svidRequest>,
    ) -> Result<Response<pb::BatchNewX509svidResponse>, Status> {
        let caller = caller_of(&req)?;
        let deadline = grpc_deadline(req.metadata());
        let params = req.into_inner().params;
        if params.is_empty() {
            return Err(Status::invalid_argument("missing parameters"));
        }
        let ip = caller.rate_limit_ip();
        self.state.limits.admit(Limited::BatchNewX509Svid, ip, params.len(), deadline).await?;
        let entries = self.authorized_map(&caller)?;
        // Signing is CPU work (a CSR check and a signature each): keep it off the I/O threads.
        let this = self.clone();
        let span = tracing::Span::current();
        let results = tokio::task::spawn_blocking(move || {
            let _in_rpc = span.enter();
            this.sign_batch(&params, &entries)
        })
        .await
        .map_err(|_| Status::internal("signing task failed"))?;
        Ok(Response::new(pb::BatchNewX509svidResponse { results }))
    }

    async fn new_jwtsvid(
        &self,
        req: Request<pb::NewJwtsvidRequest>,
    ) -> Result<Response<pb::NewJwtsvidResponse>, Status> {
        let caller = caller_of(&req)?;
        let deadline = grpc_deadline(req.metadata());
        let ip = caller.rate_limit_ip();
        self.state.limits.admit(Limited::NewJwtSvid, ip, 1, deadline).await?;
        let req = req.into_inner();
        // The entry first (an empty id is simply not found), then the audience.
        let entries = self.authorized_map(&caller)?;
        let Some(entry) = entries.get(&req.entry_id) else {
            return Err(Status::not_found("entry not found or not authorized"));
        };
        let ttl = ttl_or(entry.jwt_svid_ttl, self.state.default_jwt_svid_ttl);
        let jwt = self.sign_jwt(&entry.spiffe_id, &req.audience, ttl)?;
        Ok(Response::new(pb::NewJwtsvidResponse {
            svid: Some(jwt_svid_to_proto(
                jwt.token,
                &entry.spiffe_id,
                jwt.issued_at,
                jwt.expires_at,
                &entry.hint,
            )),
        }))
    }

    async fn new_downstream_x509ca(
        &self,
        _: Request<pb::NewDownstreamX509caRequest>,
    ) -> Result<Response<pb::NewDownstreamX509caResponse>, Status> {
        Err(unimplemented("NewDownstreamX509CA"))
    }
}
