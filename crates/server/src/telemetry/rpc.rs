//! The per-call metrics layer: SPIRE's call counter for every served method, counted and
//! timed by final gRPC status, including calls refused by authorization (it wraps the
//! [`crate::layer::AuthLayer`]).

use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::BoxFuture;
use tonic::body::Body;
use tower::{Layer, Service};

use super::completion::on_complete;
use super::names::{RpcNames, code_name};
use crate::authz;

/// Counts and times calls: `<prefix>_rpc_<service>_<method>{status}` (a counter) and
/// `..._elapsed_time{status}` (a summary in milliseconds).
#[derive(Debug, Clone)]
pub struct MetricsLayer {
    enabled: bool,
    served: &'static [&'static str],
}

impl MetricsLayer {
    /// A layer for a router serving `served` (full gRPC service names); when not `enabled`
    /// it passes calls through untouched.
    pub fn new(enabled: bool, served: &'static [&'static str]) -> Self {
        Self { enabled, served }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MetricsService { inner, enabled: self.enabled, served: self.served }
    }
}

/// The service [`MetricsLayer`] produces.
#[derive(Debug, Clone)]
pub struct MetricsService<S> {
    inner: S,
    enabled: bool,
    served: &'static [&'static str],
}

impl<S> Service<http::Request<Body>> for MetricsService<S>
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
        let path = req.uri().path();
        let service = path.trim_start_matches('/').split('/').next().unwrap_or_default();
        if !self.enabled || !self.served.contains(&service) || authz::is_unknown_method(path) {
            return Box::pin(self.inner.call(req));
        }
        let key = RpcNames::of(path).metric_key;
        let start = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            let elapsed = move |status: &tonic::Status, _: &[u8]| {
                record(key, status.code(), start.elapsed().as_secs_f64());
            };
            Ok(on_complete(resp, false, Box::new(elapsed)))
        })
    }
}

fn record(key: String, code: tonic::Code, elapsed_secs: f64) {
    let status = code_name(code);
    let elapsed = format!("{key}.elapsed_time");
    metrics::counter!(key, "status" => status).increment(1);
    metrics::histogram!(elapsed, "status" => status).record(elapsed_secs * 1000.0);
}
