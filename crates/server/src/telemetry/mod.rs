//! Metrics under SPIRE's names, served in Prometheus text format.
//!
//! SPIRE emits go-metrics keys (`rpc.entry.v1.entry.list_entries`) that its Prometheus sink
//! flattens with `_` after the service prefix (`spire_server_rpc_entry_v1_entry_list_entries`),
//! with a `host` label on every metric by default and label values sanitized (`example.org`
//! is `example_org`). ward records the same keys through the
//! `metrics` facade; the recorder installed here adds the prefix and the global labels and
//! renders them the same way (call timings as summaries with SPIRE's 0.5/0.9/0.99 quantiles).
//!
//! What is measured:
//! - every served RPC: `rpc.<service>.<method>{status}` and `...elapsed_time{status}` (ms),
//!   by [`MetricsLayer`] outside authorization, so refused calls count too;
//! - SVIDs signed: `server_ca.sign.x509_svid`, `server_ca.sign.jwt_svid` (in `ward-ca`);
//! - read at each scrape: `started{version,trust_domain_id}`, `uptime_in_ms`,
//!   `manager.x509_ca.rotate.expiration` and `.ttl` `{trust_domain_id}` (the active X.509
//!   CA's NotAfter and seconds left), `manager.jwt_key.rotate.expiration` and `.ttl` (the
//!   same for the active JWT key; ward's addition), `node.agents_by_id_cache.count` (attested
//!   agents) and `entry.entries_by_entryid_cache.count` (registration entries).
//!
//! The recorder is process-wide (as SPIRE's registry is): the first server started with a
//! `[telemetry.prometheus]` table installs it, later ones in the same process share it.

mod completion;
pub mod names;
mod rpc;

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use metrics_util::layers::{Layer as _, PrefixLayer};
use ward_core::TrustDomain;

pub use completion::{Done, Inspect, KEEP_LIMIT, Seen, keep, on_complete};
pub use rpc::{MetricsLayer, MetricsService};

use crate::config::TelemetryConfig;
use crate::state::ServerState;
use names::sanitize_label;

/// The quantiles SPIRE's Prometheus sink reports for timings.
const QUANTILES: &[f64] = &[0.5, 0.9, 0.99];

/// Content type of the Prometheus text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder (once) and returns the handle that renders it.
///
/// # Errors
/// When another `metrics` recorder was installed first.
pub fn install(cfg: &TelemetryConfig, td: &TrustDomain) -> anyhow::Result<PrometheusHandle> {
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let mut builder = PrometheusBuilder::new().set_quantiles(QUANTILES)?;
    if cfg.enable_hostname_label {
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        builder = builder.add_global_label("host", sanitize_label(&host));
    }
    if cfg.enable_trust_domain_label {
        builder = builder.add_global_label("trust_domain_id", sanitize_label(td.as_str()));
    }
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    let prefixed = PrefixLayer::new(cfg.metric_prefix.clone()).layer(recorder);
    metrics::set_global_recorder(prefixed)
        .map_err(|e| anyhow::anyhow!("installing the metrics recorder: {e}"))?;
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// Renders the metrics of `state`'s server: refreshes the gauges read at scrape time, then
/// the whole registry in Prometheus text format.
#[derive(Clone)]
pub struct Exposition {
    handle: PrometheusHandle,
    state: Arc<ServerState>,
    started: Instant,
}

impl std::fmt::Debug for Exposition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exposition").finish_non_exhaustive()
    }
}

impl Exposition {
    /// An exposition for the server whose state is `state`, started now.
    pub fn new(handle: PrometheusHandle, state: Arc<ServerState>) -> Self {
        let td = sanitize_label(state.trust_domain.as_str());
        let version = sanitize_label(env!("CARGO_PKG_VERSION"));
        metrics::gauge!("started", "version" => version, "trust_domain_id" => td).set(1.0);
        Self { handle, state, started: Instant::now() }
    }

    /// The current metrics, Prometheus text format.
    pub fn render(&self) -> String {
        self.refresh_gauges();
        self.handle.render()
    }

    fn refresh_gauges(&self) {
        let s = &self.state;
        let td = sanitize_label(s.trust_domain.as_str());
        let now = ward_core::clock::unix_seconds(s.clock.now());
        metrics::gauge!("uptime_in_ms").set(self.started.elapsed().as_secs_f64() * 1000.0);
        if let Ok(ca) = s.ca.x509_ca() {
            let not_after = ca.not_after_unix();
            expiry_gauges("manager.x509_ca.rotate", &td, not_after, now);
        }
        if let Ok(jwt) = s.ca.jwt_signer_now() {
            expiry_gauges("manager.jwt_key.rotate", &td, jwt.expires_at(), now);
        }
        metrics::gauge!("node.agents_by_id_cache.count").set(s.store.agent_count() as f64);
        metrics::gauge!("entry.entries_by_entryid_cache.count").set(s.store.entry_count() as f64);
    }
}

fn expiry_gauges(key: &str, td: &str, not_after: i64, now: i64) {
    let td = td.to_owned();
    metrics::gauge!(format!("{key}.expiration"), "trust_domain_id" => td.clone())
        .set(not_after as f64);
    metrics::gauge!(format!("{key}.ttl"), "trust_domain_id" => td)
        .set(not_after.saturating_sub(now) as f64);
}

/// Starts the Prometheus endpoint when `cfg` has a `[telemetry.prometheus]` table: installs
/// the recorder, binds, and serves every path with the metrics. Returns the bound address.
///
/// # Errors
/// When the recorder cannot be installed or the address cannot be bound.
pub async fn serve(
    cfg: &TelemetryConfig,
    state: Arc<ServerState>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Option<(std::net::SocketAddr, tokio::task::JoinHandle<()>)>> {
    let Some(prom) = &cfg.prometheus else { return Ok(None) };
    let handle = install(cfg, &state.trust_domain)?;
    let listener = crate::http_listener::bind(&prom.host, prom.port).await?;
    let addr = listener.local_addr()?;
    let exposition = Exposition::new(handle, state);
    let task = crate::http_listener::serve(
        "prometheus",
        listener,
        move |_| {
            let body = exposition.render();
            Box::pin(async move { (http::StatusCode::OK, CONTENT_TYPE, body) })
        },
        stop,
    );
    tracing::info!(address = %addr, "serving Prometheus metrics");
    Ok(Some((addr, task)))
}
