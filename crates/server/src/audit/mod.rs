//! The audit log (SPIRE's `audit_log_enabled`): one `API accessed` record per authorized
//! call on either listener, logged at `info` with target `audit`.
//!
//! Every record carries `type = "audit"`, `subsystem_name = "api"`, `service`, `method`,
//! `request_id` (a fresh UUID per call), the caller (`caller_id` and `caller_addr` on TCP;
//! `caller_uid`, `caller_gid` and `caller_path` from the admin socket peer's credentials),
//! and `status`: `success`, or `error` with `status_code` (the gRPC code number) and
//! `status_message`. Request fields follow SPIRE's handlers ([`fields`]): IDs, trust
//! domains, filters. The batch entry methods log one record per item with that item's
//! result status, as SPIRE does.
//!
//! [`AuditLayer`] sits inside the [`crate::layer::AuthLayer`] and so sees only calls that
//! were authorized (SPIRE's audit middleware runs after authorization too). It reads the
//! request message as the handler consumes it and, for batch methods, the response message
//! as it is sent; nothing is buffered ahead of the handler.

mod fields;
mod tap;

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use prost::Message;
use tonic::Status;
use tonic::body::Body;
use tonic::transport::server::UdsConnectInfo;
use tower::{Layer, Service};
use ward_core::TrustDomain;
use ward_proto::spire::api::server::entry::v1 as entrypb;
use ward_proto::spire::api::types;

use crate::authz::Authorized;
use crate::state::Caller;
use crate::telemetry::names::RpcNames;
use crate::telemetry::on_complete;
use fields::{Common, EntryFields, Filter, Plan};

/// The per-call facts every record of the call carries.
#[derive(Debug, Clone)]
struct Base {
    service: String,
    method: String,
    request_id: String,
    caller_id: Option<String>,
    caller_addr: Option<String>,
    caller_uid: Option<u32>,
    caller_gid: Option<u32>,
    caller_path: Option<String>,
    authorized_as: &'static str,
    authorized_via: &'static str,
}

/// `authorized_as` and `authorized_via` as SPIRE's authorization logs them.
fn authorized_fields(a: &Authorized) -> (&'static str, &'static str) {
    match a {
        Authorized::Anyone => ("nobody", ""),
        Authorized::Local => ("local", "transport"),
        Authorized::Admin => ("admin", "entries"),
        Authorized::Downstream => ("downstream", "entries"),
        Authorized::Agent { .. } => ("agent", "datastore"),
    }
}

impl Base {
    fn new(names: RpcNames, caller: &Caller, uds: Option<&UdsConnectInfo>) -> Self {
        let cred = uds.and_then(|u| u.peer_cred);
        let caller_path = cred
            .and_then(|c| c.pid())
            .and_then(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).ok())
            .map(|p| p.display().to_string());
        Self {
            service: names.service,
            method: names.method,
            request_id: uuid::Uuid::new_v4().to_string(),
            caller_id: caller.svid.as_ref().map(|s| s.id.to_string()),
            caller_addr: if caller.local { None } else { caller.addr.map(|a| a.to_string()) },
            caller_uid: cred.map(|c| c.uid()),
            caller_gid: cred.map(|c| c.gid()),
            caller_path,
            authorized_as: authorized_fields(&caller.authorized).0,
            authorized_via: authorized_fields(&caller.authorized).1,
        }
    }
}

/// `status`, `status_code`, `status_message` of a record.
struct Outcome<'a> {
    status: &'static str,
    code: Option<i32>,
    message: Option<&'a str>,
}

impl<'a> Outcome<'a> {
    fn of(code: i32, message: &'a str) -> Self {
        if code == 0 {
            Self { status: "success", code: None, message: None }
        } else {
            Self { status: "error", code: Some(code), message: Some(message) }
        }
    }
}

/// Emits one record with the base fields, the outcome and `extra` request fields.
macro_rules! audit_record {
    ($base:expr, $outcome:expr $(, $($extra:tt)+)?) => {{
        let b: &Base = $base;
        let o: &Outcome<'_> = $outcome;
        tracing::info!(
            target: "audit",
            subsystem_name = "api",
            "type" = "audit",
            service = b.service.as_str(),
            method = b.method.as_str(),
            request_id = b.request_id.as_str(),
            caller_id = b.caller_id.as_deref(),
            caller_addr = b.caller_addr.as_deref(),
            caller_uid = b.caller_uid,
            caller_gid = b.caller_gid,
            caller_path = b.caller_path.as_deref(),
            authorized_as = b.authorized_as,
            authorized_via = b.authorized_via,
            status = o.status,
            status_code = o.code,
            status_message = o.message,
            $($($extra)+ ,)?
            "API accessed"
        )
    }};
}

fn record_call(b: &Base, o: &Outcome<'_>, c: &Common) {
    audit_record!(
        b,
        o,
        spiffe_id = c.spiffe_id.as_deref(),
        entry_id = c.entry_id.as_deref(),
        trust_domain_id = c.trust_domain_id.as_deref(),
        ttl = c.ttl,
        audience = c.audience.as_deref()
    );
}

fn record_filtered(b: &Base, o: &Outcome<'_>, f: &Filter) {
    audit_record!(
        b,
        o,
        node_attestor_type = f.node_attestor_type.as_deref(),
        by_banned = f.by_banned,
        by_can_reattest = f.by_can_reattest,
        by_selector_match = f.by_selector_match.as_deref(),
        by_selectors = f.by_selectors.as_deref(),
        hint = f.hint.as_deref(),
        parent_id = f.parent_id.as_deref(),
        spiffe_id = f.spiffe_id.as_deref(),
        federates_with_match = f.federates_with_match.as_deref(),
        federates_with = f.federates_with.as_deref(),
        downstream = f.downstream
    );
}

fn record_entry(b: &Base, o: &Outcome<'_>, e: &EntryFields) {
    audit_record!(
        b,
        o,
        entry_id = e.entry_id.as_deref(),
        spiffe_id = e.spiffe_id.as_deref(),
        parent_id = e.parent_id.as_deref(),
        selectors = e.selectors.as_deref(),
        x509_svid_ttl = e.x509_svid_ttl,
        jwt_svid_ttl = e.jwt_svid_ttl,
        federates_with = e.federates_with.as_deref(),
        admin = e.admin,
        downstream = e.downstream,
        expires_at = e.expires_at,
        dns_name = e.dns_name.as_deref(),
        revision_number = e.revision_number,
        store_svid = e.store_svid,
        hint = e.hint.as_deref(),
        created_at = e.created_at
    );
}

/// Logs the records of a finished call.
fn record(base: &Base, plan: &Plan, status: &Status, response: &[u8]) {
    let code = status.code() as i32;
    let call = Outcome::of(code, status.message());
    match plan {
        Plan::Call(c) => record_call(base, &call, c),
        Plan::Filtered(f) => record_filtered(base, &call, f),
        // A failed batch call has no per-item results; SPIRE logs the call's error alone.
        Plan::Entries(_) | Plan::EntryIds(_) if code != 0 => {
            record_call(base, &call, &Common::default());
        }
        Plan::Entries(items) => {
            let statuses = item_statuses(&base.method, response);
            for (item, st) in items.iter().zip(statuses) {
                record_entry(base, &Outcome::of(st.code, &st.message), item);
            }
        }
        Plan::EntryIds(ids) => {
            let statuses = item_statuses(&base.method, response);
            for (id, st) in ids.iter().zip(statuses) {
                let c = Common { entry_id: Some(id.clone()), ..Common::default() };
                record_call(base, &Outcome::of(st.code, &st.message), &c);
            }
        }
    }
}

/// The per-item statuses of a batch response (gRPC-framed bytes), in request order.
fn item_statuses(method: &str, framed: &[u8]) -> Vec<types::Status> {
    let Some(msg) = tap::unframe(framed) else { return Vec::new() };
    let status = |s: Option<types::Status>| s.unwrap_or_default();
    match method {
        "BatchCreateEntry" => entrypb::BatchCreateEntryResponse::decode(msg)
            .map(|r| r.results.into_iter().map(|r| status(r.status)).collect())
            .unwrap_or_default(),
        "BatchUpdateEntry" => entrypb::BatchUpdateEntryResponse::decode(msg)
            .map(|r| r.results.into_iter().map(|r| status(r.status)).collect())
            .unwrap_or_default(),
        "BatchDeleteEntry" => entrypb::BatchDeleteEntryResponse::decode(msg)
            .map(|r| r.results.into_iter().map(|r| status(r.status)).collect())
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// Streaming methods: their messages are not read; the record has the base fields only.
fn is_stream(method: &str) -> bool {
    matches!(method, "AttestAgent" | "SyncAuthorizedEntries" | "Watch")
}

/// Adds the audit log to a gRPC router (inside the authorization layer).
#[derive(Debug, Clone)]
pub struct AuditLayer {
    enabled: bool,
    trust_domain: Arc<str>,
}

impl AuditLayer {
    /// A layer for the server of `trust_domain` that logs when `enabled` and passes calls
    /// through untouched otherwise.
    pub fn new(enabled: bool, trust_domain: &TrustDomain) -> Self {
        Self { enabled, trust_domain: trust_domain.as_str().into() }
    }
}

impl<S> Layer<S> for AuditLayer {
    type Service = AuditService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuditService { inner, enabled: self.enabled, trust_domain: self.trust_domain.clone() }
    }
}

/// The service [`AuditLayer`] produces.
#[derive(Debug, Clone)]
pub struct AuditService<S> {
    inner: S,
    enabled: bool,
    trust_domain: Arc<str>,
}

impl<S> Service<http::Request<Body>> for AuditService<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        // The authorization layer records the caller of every call it let through.
        let caller = req.extensions().get::<Caller>().cloned();
        let Some(caller) = caller.filter(|_| self.enabled) else {
            return Box::pin(self.inner.call(req));
        };
        let names = RpcNames::of(req.uri().path());
        let base = Base::new(names, &caller, req.extensions().get::<UdsConnectInfo>());
        let (req, tapped) = if is_stream(&base.method) {
            (req, None)
        } else {
            let (req, tapped) = tap::tap_request(req);
            (req, Some(tapped))
        };
        let keep = fields::per_item(&base.method);
        let td = self.trust_domain.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            let done = move |status: &Status, response: &[u8]| {
                let plan = match &tapped {
                    Some(t) => {
                        let bytes = tap::taken(t);
                        let msg = tap::unframe(&bytes).unwrap_or_default();
                        fields::plan(&base.service, &base.method, msg, &td)
                    }
                    None => Plan::Call(Common::default()),
                };
                record(&base, &plan, status, response);
            };
            Ok(on_complete(resp, keep, Box::new(done)))
        })
    }
}

/// The request bytes a tap shares with the record.
type Tapped = Arc<std::sync::Mutex<Vec<u8>>>;
