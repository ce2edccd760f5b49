//! Shared server state handed to every service, and the caller facts each request carries.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tonic::Status;
use ward_core::{AgentId, Clock, SpiffeId, TrustDomain};
use ward_store::Store;

use crate::authz::{Authorized, Denial, DenyReason, PresentedSvid};
use crate::ca_manager::CaManager;
use crate::logging::LogControl;
use crate::proposer::Proposer;
use crate::ratelimit::RateLimits;

/// The wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// Everything the API services share.
pub struct ServerState {
    /// The server's trust domain.
    pub trust_domain: TrustDomain,
    /// `spiffe://<td>/spire/server`.
    pub server_id: SpiffeId,
    /// Read side of the replicated state.
    pub store: Store,
    /// Write side: every change goes through here.
    pub proposer: Arc<dyn Proposer>,
    /// This replica's authorities.
    pub ca: Arc<CaManager>,
    /// Per-IP rate limits.
    pub limits: RateLimits,
    /// Time source.
    pub clock: Arc<dyn Clock>,
    /// Default X509-SVID lifetime.
    pub default_x509_svid_ttl: Duration,
    /// Default JWT-SVID lifetime.
    pub default_jwt_svid_ttl: Duration,
    /// Agent X509-SVID lifetime.
    pub agent_ttl: Duration,
    /// When the server started (by `clock`), for uptime.
    pub started_at: SystemTime,
    /// The live log level.
    pub log: Arc<LogControl>,
    /// The server's own X509-SVID chain, leaf first, up to and including its root.
    pub server_svid: RwLock<Vec<Vec<u8>>>,
    /// The federated bundle manager (RefreshBundle asks it).
    pub federation: Arc<crate::federation::Federation>,
    /// The node attestors besides join tokens, by attestation type.
    pub node_attestors: Vec<Arc<dyn ward_attest::ServerNodeAttestor>>,
}

impl ServerState {
    /// The node attestor for attestation type `name`.
    pub fn node_attestor(&self, name: &str) -> Option<Arc<dyn ward_attest::ServerNodeAttestor>> {
        self.node_attestors.iter().find(|a| a.name() == name).cloned()
    }

    /// The server's own X509-SVID chain, leaf first, ending with the root it chains to.
    pub fn server_svid_chain(&self) -> Vec<Vec<u8>> {
        self.server_svid.read().map(|g| g.clone()).unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Records a new server X509-SVID chain (leaf first, ending with its root).
    pub fn set_server_svid_chain(&self, chain: Vec<Vec<u8>>) {
        match self.server_svid.write() {
            Ok(mut g) => *g = chain,
            Err(p) => *p.into_inner() = chain,
        }
    }
}

impl std::fmt::Debug for ServerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerState").field("trust_domain", &self.trust_domain).finish()
    }
}

/// Who is calling, as established by the authorization layer (a request extension).
#[derive(Debug, Clone)]
pub struct Caller {
    /// Came over the admin Unix socket.
    pub local: bool,
    /// TCP peer address.
    pub addr: Option<SocketAddr>,
    /// The verified client SVID, if any.
    pub svid: Option<PresentedSvid>,
    /// How the call was authorized.
    pub authorized: Authorized,
}

impl Caller {
    /// The caller's IP for rate limiting; `None` for local callers (never limited).
    pub fn rate_limit_ip(&self) -> Option<IpAddr> {
        if self.local { None } else { self.addr.map(|a| a.ip()) }
    }

    /// The agent ID when the caller was authorized as an agent.
    pub fn agent_id(&self) -> Option<AgentId> {
        match (&self.authorized, &self.svid) {
            (Authorized::Agent { .. }, Some(s)) => Some(AgentId(s.id.clone())),
            _ => None,
        }
    }
}

/// The caller of `req`, as the authorization layer recorded it.
///
/// # Errors
/// `Internal` if the layer did not run (a wiring bug).
pub fn caller_of<T>(req: &tonic::Request<T>) -> Result<Caller, Status> {
    req.extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::internal("caller information missing"))
}

/// A PermissionDenied status; with a reason, SPIRE's `PermissionDeniedDetails` travel in
/// `grpc-status-details-bin`.
pub fn denial_status(d: &Denial) -> Status {
    use ward_proto::spire::api::types::permission_denied_details::Reason;
    let Some(reason) = d.reason else {
        return Status::permission_denied(d.message.clone());
    };
    let reason = match reason {
        DenyReason::AgentExpired => Reason::AgentExpired,
        DenyReason::AgentNotAttested => Reason::AgentNotAttested,
        DenyReason::AgentNotActive => Reason::AgentNotActive,
        DenyReason::AgentBanned => Reason::AgentBanned,
        DenyReason::AgentMustReattest => Reason::AgentMustReattest,
    };
    ward_proto::convert::permission_denied(d.message.clone(), reason)
}
