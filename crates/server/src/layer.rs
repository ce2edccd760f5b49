//! The per-request middleware: works out who is calling (admin socket, TLS peer with or
//! without an SVID), gathers the facts [`crate::authz::decide`] needs from the store,
//! applies the decision, records the [`Caller`] in the request's extensions and wraps the
//! call in a tracing span carrying the method and the caller's SPIFFE ID.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::body::Body;
use tonic::transport::server::UdsConnectInfo;
use tower::{Layer, Service};
use tracing::Instrument;
use ward_core::AgentId;
use ward_store::{Command, EntryFilter, PageRequest};

use crate::authz::{self, Authorized, CallerFacts, Decision, Policy};
use crate::current_read::CurrentRead;
use crate::state::{Caller, ServerState, denial_status};
use crate::tls::TlsPeer;

/// Adds authorization to a gRPC router.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    state: Arc<ServerState>,
    served: &'static [&'static str],
}

/// The services on the TCP listener (full gRPC service names).
pub const TCP_SERVICES: &[&str] = &[
    "spire.api.server.agent.v1.Agent",
    "spire.api.server.bundle.v1.Bundle",
    "spire.api.server.entry.v1.Entry",
    "spire.api.server.svid.v1.SVID",
    "spire.api.server.trustdomain.v1.TrustDomain",
    "spire.api.server.localauthority.v1.LocalAuthority",
    "ward.agent.v1.AgentWatch",
];

/// The services on the admin socket.
pub const UDS_SERVICES: &[&str] = &[
    "spire.api.server.agent.v1.Agent",
    "spire.api.server.bundle.v1.Bundle",
    "spire.api.server.entry.v1.Entry",
    "spire.api.server.svid.v1.SVID",
    "spire.api.server.trustdomain.v1.TrustDomain",
    "spire.api.server.localauthority.v1.LocalAuthority",
    "spire.api.server.logger.v1.Logger",
    "spire.api.server.debug.v1.Debug",
    "grpc.health.v1.Health",
    "ward.cluster.v1.Cluster",
];

impl AuthLayer {
    /// A layer deciding against `state` for a router serving the `served` services; calls
    /// to anything else go straight to the router, which answers `Unimplemented`.
    pub fn new(state: Arc<ServerState>, served: &'static [&'static str]) -> Self {
        Self { state, served }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService { inner, state: self.state.clone(), served: self.served }
    }
}

/// The service [`AuthLayer`] produces.
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    state: Arc<ServerState>,
    served: &'static [&'static str],
}

impl<S> Service<http::Request<Body>> for AuthService<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        // The clone that was driven to readiness serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let state = self.state.clone();
        let served = self.served;
        Box::pin(async move {
            let method = req.uri().path().to_owned();
            let service = method.trim_start_matches('/').split('/').next().unwrap_or_default();
            if !served.contains(&service) || authz::is_unknown_method(&method) {
                // No such method: the router answers Unimplemented.
                return inner.call(req).await;
            }
            let local = req.extensions().get::<UdsConnectInfo>().is_some();
            let peer = req.extensions().get::<TlsPeer>().cloned();
            let svid = peer.as_ref().and_then(|p| p.svid.clone());
            let caller_id = svid.as_ref().map(|s| s.id.to_string()).unwrap_or_default();
            let span = tracing::info_span!(
                "rpc",
                method = %method,
                caller_id = %caller_id,
                caller_addr = ?peer.as_ref().and_then(|p| p.remote_addr),
                local,
            );
            async move {
                let facts = gather(&state, &method, local, svid.clone());
                let now = state.clock.unix_seconds();
                let authorized = match authz::decide(&method, &facts, now) {
                    Decision::Allow(a) => a,
                    Decision::Deny(d) => {
                        tracing::warn!(reason = ?d.reason, "{}", d.message);
                        return Ok(denial_status(&d).into_http());
                    }
                };
                if let (Authorized::Agent { promote_pending: true }, Some(s)) = (&authorized, &svid)
                {
                    let cmd = Command::ActivateAgentSerial {
                        id: AgentId(s.id.clone()),
                        serial: s.serial.clone(),
                    };
                    if let Err(e) = state.proposer.propose(cmd).await {
                        tracing::warn!(error = %e, "unable to activate the new agent SVID");
                        let st = tonic::Status::internal(format!(
                            "unable to activate the new agent SVID: {e}"
                        ));
                        return Ok(st.into_http());
                    }
                }
                // A read index: the handler validates the request, then waits until this
                // replica has applied every write acknowledged before the call, or fails
                // rather than answer from a stale copy.
                let current = reads_current_state(&method, local, &authorized)
                    .then(|| CurrentRead::new(state.proposer.clone()));
                if let Some(read) = &current {
                    req.extensions_mut().insert(read.clone());
                }
                req.extensions_mut().insert(Caller {
                    local,
                    addr: peer.as_ref().and_then(|p| p.remote_addr),
                    svid,
                    authorized,
                });
                let resp = inner.call(req).await.map(oversized_as_resource_exhausted)?;
                Ok(match current {
                    Some(read) if answered(&resp) && !read.was_confirmed() => {
                        tracing::error!("a read of current state answered without its read index");
                        tonic::Status::internal(
                            "cannot confirm this replica is up to date: the read was not confirmed",
                        )
                        .into_http()
                    }
                    _ => resp,
                })
            }
            .instrument(span)
            .await
        })
    }
}

/// The reads of replicated state an operator makes: after a write acknowledged on any
/// replica, these must see it.
const CURRENT_READS: &[&str] = &[
    "/spire.api.server.entry.v1.Entry/CountEntries",
    "/spire.api.server.entry.v1.Entry/ListEntries",
    "/spire.api.server.entry.v1.Entry/GetEntry",
    "/spire.api.server.agent.v1.Agent/CountAgents",
    "/spire.api.server.agent.v1.Agent/ListAgents",
    "/spire.api.server.agent.v1.Agent/GetAgent",
    "/spire.api.server.bundle.v1.Bundle/GetBundle",
    "/spire.api.server.bundle.v1.Bundle/CountBundles",
    "/spire.api.server.bundle.v1.Bundle/ListFederatedBundles",
    "/spire.api.server.bundle.v1.Bundle/GetFederatedBundle",
    "/spire.api.server.trustdomain.v1.TrustDomain/ListFederationRelationships",
    "/spire.api.server.trustdomain.v1.TrustDomain/GetFederationRelationship",
];

/// Whether a call first waits for a read index ([`crate::proposer::Proposer::read_barrier`]):
/// an operator's read of replicated state (on the admin socket, or by an admin workload).
/// Agents and anonymous callers (their bundle, authorized entries, SVID signing) read the
/// replica's own copy, so every replica keeps serving them without a round trip to the
/// leader.
fn reads_current_state(method: &str, local: bool, authorized: &Authorized) -> bool {
    (local || matches!(authorized, Authorized::Admin)) && CURRENT_READS.contains(&method)
}

/// Looks up only what the method's policy can use.
fn gather(
    state: &ServerState,
    method: &str,
    local: bool,
    svid: Option<authz::PresentedSvid>,
) -> CallerFacts {
    let policy = authz::policy(method);
    let mut facts =
        CallerFacts { local, svid, admin_entry: false, downstream_entry: false, node: None };
    let Some(policy) = policy else { return facts };
    let Some(s) = facts.svid.clone() else { return facts };
    if local {
        return facts;
    }
    if policy.allows_admin() || policy == Policy::Downstream {
        let filter = EntryFilter { spiffe_id: Some(s.id.clone()), ..EntryFilter::default() };
        let page = state.store.list_entries(&filter, &PageRequest::all());
        facts.admin_entry = page.items.iter().any(|e| e.admin);
        facts.downstream_entry = page.items.iter().any(|e| e.downstream);
    }
    if policy.allows_agent() {
        facts.node = state.store.agent(&AgentId(s.id)).map(|n| (*n).clone());
    }
    facts
}

/// Whether `resp` carries an answer: a refusal is a trailers-only response, whose status is
/// in its headers; an answer's status comes after its body.
fn answered(resp: &http::Response<Body>) -> bool {
    resp.headers().get("grpc-status").is_none()
}

/// tonic refuses a request message over the 4 MiB limit with `OutOfRange`; gRPC-Go (and so
/// SPIRE) answers `ResourceExhausted`. The refusal is a trailers-only response, so its status
/// is in the headers and can be rewritten here.
fn oversized_as_resource_exhausted(mut resp: http::Response<Body>) -> http::Response<Body> {
    let out_of_range = resp.headers().get("grpc-status").is_some_and(|v| v == "11");
    let oversized =
        resp.headers().get("grpc-message").and_then(|v| v.to_str().ok()).is_some_and(|m| {
            m.contains("message%20length%20too%20large") || m.contains("message length too large")
        });
    if out_of_range && oversized {
        let code = http::HeaderValue::from_static("8");
        resp.headers_mut().insert("grpc-status", code);
    }
    resp
}
