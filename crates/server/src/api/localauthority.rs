//! `spire.api.server.localauthority.v1.LocalAuthority`: the operator's hand on this server's
//! own X.509 and JWT authorities, with SPIRE's two-slot state machine.
//!
//! The active authority signs; the slot beside it holds either a *prepared* authority
//! (published in the bundle, not signing yet) or the *old* one (active before the current).
//! `prepare` fills that slot, `activate` swaps a prepared authority in, `taint` marks the old
//! authority tainted in the bundle (agents then rotate every SVID it signed, and so does this
//! server), `revoke` removes a tainted authority from the bundle. The order of the checks,
//! the codes and the messages are SPIRE's.
//!
//! Upstream authorities: `TaintX509UpstreamAuthority` and `RevokeX509UpstreamAuthority` need
//! an active X.509 authority signed by an upstream authority; ward's server signs with
//! self-signed authorities, so they answer `FailedPrecondition` as SPIRE does without one,
//! and local X.509 authorities can always be tainted and revoked.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use ward_ca::AuthorityKind;
use ward_proto::spire::api::server::localauthority::v1::{
    self as pb, local_authority_server::LocalAuthority,
};
use ward_store::{Command, ItemError, Outcome};

use super::propose;
use crate::ca_manager::{AuthoritySlots, AuthorityState, NextStatus};
use crate::state::ServerState;

/// The LocalAuthority service.
#[derive(Debug, Clone)]
pub struct LocalAuthorityService {
    state: Arc<ServerState>,
}

impl LocalAuthorityService {
    /// A service over `state`.
    pub fn new(state: Arc<ServerState>) -> Self {
        Self { state }
    }
}

/// The check SPIRE makes before reading or preparing: an active authority exists.
fn require_active(slots: &AuthoritySlots) -> Result<(), Status> {
    if slots.active.is_none() {
        return Err(Status::unavailable("server is initializing"));
    }
    Ok(())
}

/// Activation: only the prepared authority of the other slot.
pub fn check_activate(slots: &AuthoritySlots, id: &str) -> Result<(), Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument("no authority ID provided"));
    }
    if id != slots.next_id() {
        return Err(Status::invalid_argument("unexpected authority ID"));
    }
    match &slots.next {
        Some((_, NextStatus::Prepared)) => Ok(()),
        other => Err(Status::internal(format!(
            "only Prepared authorities can be activated: unsupported local authority status: {}",
            status_name(other.as_ref().map(|(_, s)| *s))
        ))),
    }
}

/// Taint of a local authority: only the old authority of the other slot.
pub fn check_taint(slots: &AuthoritySlots, id: &str) -> Result<(), Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument("no authority ID provided"));
    }
    if id == slots.active_id() {
        return Err(Status::invalid_argument("unable to taint current local authority"));
    }
    if id != slots.next_id() {
        return Err(Status::invalid_argument("unexpected authority ID"));
    }
    match &slots.next {
        Some((_, NextStatus::Old)) => Ok(()),
        other => Err(Status::invalid_argument(format!(
            "only Old local authorities can be tainted: unsupported local authority status: {}",
            status_name(other.as_ref().map(|(_, s)| *s))
        ))),
    }
}

/// Revocation of a local X.509 authority: only the old authority of the other slot.
pub fn check_revoke_x509(slots: &AuthoritySlots, id: &str) -> Result<(), Status> {
    let reason = if id.is_empty() {
        "no authority ID provided"
    } else if id == slots.active_id() {
        "unable to use current authority"
    } else if id != slots.next_id() || !matches!(slots.next, Some((_, NextStatus::Old))) {
        "only Old local authority can be revoked"
    } else {
        return Ok(());
    };
    Err(Status::invalid_argument(format!("invalid authority ID: {reason}")))
}

/// Revocation of a JWT authority: the old one, or any other key of the bundle that is neither
/// active nor prepared (`in_bundle` says whether the bundle has a key with that ID).
pub fn check_revoke_jwt(slots: &AuthoritySlots, id: &str, in_bundle: bool) -> Result<(), Status> {
    let reason = if id.is_empty() {
        "no authority ID provided"
    } else if id == slots.next_id() {
        match slots.next {
            Some((_, NextStatus::Prepared)) => "unable to use a prepared key",
            _ => return Ok(()),
        }
    } else if id == slots.active_id() {
        "unable to use current authority"
    } else if in_bundle {
        return Ok(());
    } else {
        "no JWT authority found with provided authority ID"
    };
    Err(Status::invalid_argument(format!("invalid authority ID: {reason}")))
}

/// How SPIRE's messages name an authority kind.
fn label(kind: AuthorityKind) -> &'static str {
    match kind {
        AuthorityKind::X509 => "X.509",
        AuthorityKind::Jwt => "JWT",
    }
}

/// The name SPIRE's journal gives a slot status (an empty slot is `UNKNOWN`).
fn status_name(s: Option<NextStatus>) -> &'static str {
    s.map_or("UNKNOWN", NextStatus::name)
}

fn wire(s: &AuthorityState) -> pb::AuthorityState {
    pb::AuthorityState {
        authority_id: s.id.clone(),
        expires_at: s.expires_at,
        upstream_authority_subject_key_id: s.upstream_id.clone(),
    }
}

/// Only the ID (what SPIRE returns for taint and revoke of JWT authorities and revokes).
fn id_only(id: &str) -> pb::AuthorityState {
    pb::AuthorityState { authority_id: id.to_owned(), ..Default::default() }
}

/// A JWT state without the upstream field (JWT authorities have none).
fn wire_jwt(s: &AuthorityState) -> pb::AuthorityState {
    pb::AuthorityState { upstream_authority_subject_key_id: String::new(), ..wire(s) }
}

/// The authorities a state request reports: active, prepared, old.
type StateReport = [Option<pb::AuthorityState>; 3];

fn get_state(slots: &AuthoritySlots) -> Result<StateReport, Status> {
    require_active(slots)?;
    let active = slots.active.as_ref().map(wire);
    let (prepared, old) = match &slots.next {
        Some((s, NextStatus::Prepared)) => (Some(wire(s)), None),
        Some((s, NextStatus::Old)) => (None, Some(wire(s))),
        None => (None, None),
    };
    Ok([active, prepared, old])
}

/// SPIRE's datastore messages for a refused taint or revoke, by authority kind.
fn store_message(kind: AuthorityKind, revoke: bool, e: &ItemError) -> String {
    match (kind, revoke, e) {
        (AuthorityKind::X509, false, ItemError::AuthorityNotFound(_)) => {
            "no ca found with provided subject key ID".into()
        }
        (AuthorityKind::X509, false, ItemError::Invalid(_)) => "root CA is already tainted".into(),
        (AuthorityKind::X509, true, ItemError::AuthorityNotFound(_)) => {
            "no root CA found with provided subject key ID".into()
        }
        (AuthorityKind::X509, true, ItemError::AuthorityNotTainted) => {
            "it is not possible to revoke an untainted root CA".into()
        }
        (AuthorityKind::Jwt, _, ItemError::AuthorityNotFound(_)) => {
            "no JWT Key found with provided key ID".into()
        }
        (AuthorityKind::Jwt, false, ItemError::Invalid(_)) => "key is already tainted".into(),
        (AuthorityKind::Jwt, true, ItemError::AuthorityNotTainted) => {
            "it is not possible to revoke an untainted key".into()
        }
        (_, _, other) => other.to_string(),
    }
}

impl LocalAuthorityService {
    /// Proposes the taint or revoke commands and maps a refusal to SPIRE's `Internal` status
    /// prefixed with `context`.
    async fn apply_all(
        &self,
        kind: AuthorityKind,
        revoke: bool,
        cmds: Vec<Command>,
        context: &str,
    ) -> Result<(), Status> {
        let not_found = ItemError::AuthorityNotFound(self.state.trust_domain.clone());
        if cmds.is_empty() {
            return Err(Status::internal(format!(
                "{context}: {}",
                store_message(kind, revoke, &not_found)
            )));
        }
        for cmd in cmds {
            let applied = propose(&self.state, cmd).await?;
            if let Outcome::Bundles(results) = applied.outcome
                && let Some(Err(e)) = results.first()
            {
                return Err(Status::internal(format!(
                    "{context}: {}",
                    store_message(kind, revoke, e)
                )));
            }
        }
        Ok(())
    }

    /// The own bundle's X.509 authorities whose subject key ID is `ski` (DER).
    fn x509_ders_with_ski(&self, ski: &str) -> Vec<Vec<u8>> {
        let Some(bundle) = self.state.store.bundle(&self.state.trust_domain) else {
            return Vec::new();
        };
        bundle
            .x509_authorities
            .iter()
            .filter(|a| crate::ca_manager::subject_key_id_hex(&a.der).as_deref() == Some(ski))
            .map(|a| a.der.clone())
            .collect()
    }

    /// Prepares a new authority of `kind` (SPIRE's checks and messages).
    async fn prepare(&self, kind: AuthorityKind) -> Result<AuthorityState, Status> {
        let ops = self.state.ca.operations().await;
        require_active(&ops.slots(kind))?;
        let label = label(kind);
        let prepared = ops
            .prepare(kind, self.state.clock.now())
            .await
            .map_err(|e| Status::internal(format!("failed to prepare {label} authority: {e}")))?;
        tracing::info!(authority_id = %prepared.id, "{label} authority prepared");
        Ok(prepared)
    }

    /// Activates the prepared authority `id` of `kind` (SPIRE's checks and messages).
    async fn activate(&self, kind: AuthorityKind, id: &str) -> Result<AuthorityState, Status> {
        let ops = self.state.ca.operations().await;
        check_activate(&ops.slots(kind), id)?;
        let label = label(kind);
        ops.activate(kind)
            .map_err(|e| Status::internal(format!("failed to activate {label} authority: {e}")))
    }

    fn jwt_in_bundle(&self, kid: &str) -> bool {
        self.state
            .store
            .bundle(&self.state.trust_domain)
            .is_some_and(|b| b.jwt_authorities.iter().any(|k| k.key_id == kid))
    }
}

#[tonic::async_trait]
impl LocalAuthority for LocalAuthorityService {
    async fn get_jwt_authority_state(
        &self,
        _: Request<pb::GetJwtAuthorityStateRequest>,
    ) -> Result<Response<pb::GetJwtAuthorityStateResponse>, Status> {
        let slots = self.state.ca.operations().await.slots(AuthorityKind::Jwt);
        let [active, prepared, old] = get_state(&slots)?;
        let strip = |s: Option<pb::AuthorityState>| {
            s.map(|s| pb::AuthorityState { upstream_authority_subject_key_id: String::new(), ..s })
        };
        Ok(Response::new(pb::GetJwtAuthorityStateResponse {
            active: strip(active),
            prepared: strip(prepared),
            old: strip(old),
        }))
    }

    async fn prepare_jwt_authority(
        &self,
        _: Request<pb::PrepareJwtAuthorityRequest>,
    ) -> Result<Response<pb::PrepareJwtAuthorityResponse>, Status> {
        let prepared = self.prepare(AuthorityKind::Jwt).await?;
        Ok(Response::new(pb::PrepareJwtAuthorityResponse {
            prepared_authority: Some(wire_jwt(&prepared)),
        }))
    }

    async fn activate_jwt_authority(
        &self,
        req: Request<pb::ActivateJwtAuthorityRequest>,
    ) -> Result<Response<pb::ActivateJwtAuthorityResponse>, Status> {
        let active = self.activate(AuthorityKind::Jwt, &req.into_inner().authority_id).await?;
        Ok(Response::new(pb::ActivateJwtAuthorityResponse {
            activated_authority: Some(wire_jwt(&active)),
        }))
    }

    async fn taint_jwt_authority(
        &self,
        req: Request<pb::TaintJwtAuthorityRequest>,
    ) -> Result<Response<pb::TaintJwtAuthorityResponse>, Status> {
        let id = req.into_inner().authority_id;
        let ops = self.state.ca.operations().await;
        check_taint(&ops.slots(AuthorityKind::Jwt), &id)?;
        let cmd = Command::TaintJwtAuthority {
            trust_domain: self.state.trust_domain.clone(),
            key_id: id.clone(),
        };
        self.apply_all(AuthorityKind::Jwt, false, vec![cmd], "failed to taint JWT authority")
            .await?;
        drop(ops);
        tracing::info!(authority_id = %id, "JWT authority tainted successfully");
        Ok(Response::new(pb::TaintJwtAuthorityResponse { tainted_authority: Some(id_only(&id)) }))
    }

    async fn revoke_jwt_authority(
        &self,
        req: Request<pb::RevokeJwtAuthorityRequest>,
    ) -> Result<Response<pb::RevokeJwtAuthorityResponse>, Status> {
        let id = req.into_inner().authority_id;
        let ops = self.state.ca.operations().await;
        check_revoke_jwt(&ops.slots(AuthorityKind::Jwt), &id, self.jwt_in_bundle(&id))?;
        let cmd = Command::RevokeJwtAuthority {
            trust_domain: self.state.trust_domain.clone(),
            key_id: id.clone(),
        };
        self.apply_all(AuthorityKind::Jwt, true, vec![cmd], "failed to revoke JWT authority")
            .await?;
        drop(ops);
        tracing::info!(authority_id = %id, "JWT authority revoked successfully");
        Ok(Response::new(pb::RevokeJwtAuthorityResponse { revoked_authority: Some(id_only(&id)) }))
    }

    async fn get_x509_authority_state(
        &self,
        _: Request<pb::GetX509AuthorityStateRequest>,
    ) -> Result<Response<pb::GetX509AuthorityStateResponse>, Status> {
        let slots = self.state.ca.operations().await.slots(AuthorityKind::X509);
        let [active, prepared, old] = get_state(&slots)?;
        Ok(Response::new(pb::GetX509AuthorityStateResponse { active, prepared, old }))
    }

    async fn prepare_x509_authority(
        &self,
        _: Request<pb::PrepareX509AuthorityRequest>,
    ) -> Result<Response<pb::PrepareX509AuthorityResponse>, Status> {
        let prepared = self.prepare(AuthorityKind::X509).await?;
        Ok(Response::new(pb::PrepareX509AuthorityResponse {
            prepared_authority: Some(wire(&prepared)),
        }))
    }

    async fn activate_x509_authority(
        &self,
        req: Request<pb::ActivateX509AuthorityRequest>,
    ) -> Result<Response<pb::ActivateX509AuthorityResponse>, Status> {
        let active = self.activate(AuthorityKind::X509, &req.into_inner().authority_id).await?;
        Ok(Response::new(pb::ActivateX509AuthorityResponse {
            activated_authority: Some(wire(&active)),
        }))
    }

    async fn taint_x509_authority(
        &self,
        req: Request<pb::TaintX509AuthorityRequest>,
    ) -> Result<Response<pb::TaintX509AuthorityResponse>, Status> {
        let id = req.into_inner().authority_id;
        let ops = self.state.ca.operations().await;
        if ops.is_upstream() {
            return Err(Status::failed_precondition(
                "local authority can't be tainted if there is an upstream authority",
            ));
        }
        let slots = ops.slots(AuthorityKind::X509);
        check_taint(&slots, &id)?;
        let cmds = self
            .x509_ders_with_ski(&id)
            .into_iter()
            .map(|der| Command::TaintX509Authority {
                trust_domain: self.state.trust_domain.clone(),
                der,
            })
            .collect();
        self.apply_all(AuthorityKind::X509, false, cmds, "failed to taint X.509 authority").await?;
        drop(ops);
        tracing::info!(authority_id = %id, "X.509 authority tainted successfully");
        let tainted = slots.next.map(|(s, _)| wire(&s));
        Ok(Response::new(pb::TaintX509AuthorityResponse { tainted_authority: tainted }))
    }

    async fn taint_x509_upstream_authority(
        &self,
        _: Request<pb::TaintX509UpstreamAuthorityRequest>,
    ) -> Result<Response<pb::TaintX509UpstreamAuthorityResponse>, Status> {
        Err(upstream_not_configured(&self.state).await)
    }

    async fn revoke_x509_authority(
        &self,
        req: Request<pb::RevokeX509AuthorityRequest>,
    ) -> Result<Response<pb::RevokeX509AuthorityResponse>, Status> {
        let id = req.into_inner().authority_id;
        let ops = self.state.ca.operations().await;
        if ops.is_upstream() {
            return Err(Status::failed_precondition(
                "local authority can't be revoked if there is an upstream authority",
            ));
        }
        check_revoke_x509(&ops.slots(AuthorityKind::X509), &id)?;
        let cmds = self
            .x509_ders_with_ski(&id)
            .into_iter()
            .map(|der| Command::RevokeX509Authority {
                trust_domain: self.state.trust_domain.clone(),
                der,
            })
            .collect();
        self.apply_all(AuthorityKind::X509, true, cmds, "failed to revoke X.509 authority").await?;
        drop(ops);
        tracing::info!(authority_id = %id, "X.509 authority revoked successfully");
        Ok(Response::new(pb::RevokeX509AuthorityResponse { revoked_authority: Some(id_only(&id)) }))
    }

    async fn revoke_x509_upstream_authority(
        &self,
        _: Request<pb::RevokeX509UpstreamAuthorityRequest>,
    ) -> Result<Response<pb::RevokeX509UpstreamAuthorityResponse>, Status> {
        Err(upstream_not_configured(&self.state).await)
    }
}

/// SPIRE's answer to the upstream methods when the active authority is self-signed.
async fn upstream_not_configured(state: &ServerState) -> Status {
    let upstream = state.ca.operations().await.is_upstream();
    if upstream {
        // No configuration produces an upstream-signed authority yet.
        Status::unimplemented("upstream authorities are not supported")
    } else {
        Status::failed_precondition("upstream authority is not configured")
    }
}
