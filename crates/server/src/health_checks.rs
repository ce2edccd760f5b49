//! SPIRE's `health_checks` HTTP listener: `GET <live_path>` and `GET <ready_path>` answer
//! `200` when healthy and `500` when not, with a JSON object of per-subsystem details (empty
//! objects when all is well, an error string under the failing subsystem otherwise). Other
//! paths answer `404`.
//!
//! Subsystems, named as SPIRE names them:
//! - `catalog.datastore` (live and ready): the store serves the own trust bundle
//!   (`list_bundle_err`);
//! - `server.ca` (live and ready): the active X.509 CA signs a throwaway X509-SVID for
//!   `spiffe://<td>/for/health/check/only` (`sign_x509_svid_err`), as SPIRE's check does;
//! - `server`: both gRPC listeners accept connections (`get_bundle_err`).
//!
//! As in SPIRE, liveness and readiness are the same checks. Unlike SPIRE, which refreshes a
//! cached state once a minute, every request checks afresh, and there is no
//! `server.ca.rotator` subsystem (rotation failures are logged, not counted).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{Map, Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use ward_ca::{KeyType, PrivateKey, SvidParams};
use ward_core::SpiffeId;

use crate::config::HealthChecksConfig;
use crate::http_listener::{self, Answer};
use crate::state::ServerState;

/// What the checks look at.
struct Checks {
    state: Arc<ServerState>,
    tcp_addr: SocketAddr,
    socket_path: PathBuf,
    probe_key: PrivateKey,
    probe_id: SpiffeId,
}

impl Checks {
    fn datastore(&self) -> Option<String> {
        match self.state.store.bundle(&self.state.trust_domain) {
            Some(_) => None,
            None => Some(format!("no bundle for trust domain {}", self.state.trust_domain)),
        }
    }

    fn ca(&self) -> Option<String> {
        let ca = match self.state.ca.x509_ca() {
            Ok(ca) => ca,
            Err(e) => return Some(e.to_string()),
        };
        let params = SvidParams {
            spiffe_id: &self.probe_id,
            dns_names: &[],
            ttl: self.state.default_x509_svid_ttl,
        };
        let now = self.state.clock.now();
        ca.sign_x509_svid(self.probe_key.public_key_der(), &params, now)
            .err()
            .map(|e| e.to_string())
    }

    async fn listeners(&self) -> Option<String> {
        if let Err(e) = tokio::net::TcpStream::connect(self.tcp_addr).await {
            return Some(format!("TCP listener {}: {e}", self.tcp_addr));
        }
        if let Err(e) = tokio::net::UnixStream::connect(&self.socket_path).await {
            return Some(format!("admin socket {}: {e}", self.socket_path.display()));
        }
        None
    }

    /// `(healthy, details)`.
    async fn run(&self) -> (bool, Value) {
        let mut details = Map::new();
        let mut healthy = true;
        let mut add = |name: &str, key: &str, err: Option<String>| {
            let detail = match err {
                Some(e) => {
                    healthy = false;
                    json!({ key: e })
                }
                None => json!({}),
            };
            details.insert(name.to_owned(), detail);
        };
        add("catalog.datastore", "list_bundle_err", self.datastore());
        add("server.ca", "sign_x509_svid_err", self.ca());
        add("server", "get_bundle_err", self.listeners().await);
        (healthy, Value::Object(details))
    }
}

/// Starts the listener when `cfg.listener_enabled`. `tcp_addr` and `socket_path` are the
/// gRPC listeners the readiness check connects to. Returns the bound address.
///
/// # Errors
/// When the probe key cannot be generated or the address cannot be bound.
pub async fn serve(
    cfg: &HealthChecksConfig,
    state: Arc<ServerState>,
    tcp_addr: SocketAddr,
    socket_path: PathBuf,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<Option<(SocketAddr, JoinHandle<()>)>> {
    if !cfg.listener_enabled {
        return Ok(None);
    }
    let probe_id = SpiffeId::from_parts(&state.trust_domain, "/for/health/check/only")?;
    let checks = Arc::new(Checks {
        state,
        tcp_addr,
        socket_path,
        probe_key: PrivateKey::generate(KeyType::EcP256)?,
        probe_id,
    });
    let listener = http_listener::bind(&cfg.bind_address, cfg.bind_port).await?;
    let addr = listener.local_addr()?;
    let (live_path, ready_path) = (cfg.live_path.clone(), cfg.ready_path.clone());
    let task = http_listener::serve(
        "health_checks",
        listener,
        move |req| {
            let checks = checks.clone();
            let known = req.uri.path() == live_path || req.uri.path() == ready_path;
            Box::pin(async move {
                if known {
                    answer(checks.run().await)
                } else {
                    let body = "404 page not found\n".to_owned();
                    (http::StatusCode::NOT_FOUND, "text/plain; charset=utf-8", body)
                }
            })
        },
        stop,
    );
    tracing::info!(address = %addr, "serving health checks");
    Ok(Some((addr, task)))
}

fn answer((healthy, details): (bool, Value)) -> Answer {
    let status =
        if healthy { http::StatusCode::OK } else { http::StatusCode::INTERNAL_SERVER_ERROR };
    (status, "application/json", format!("{details}\n"))
}
