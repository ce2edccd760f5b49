//! SPIRE's `health_checks` HTTP listener for the agent (`pkg/common/health`,
//! `pkg/agent/agent.go` `CheckHealth`): `GET <live_path>` and `GET <ready_path>` answer `200`
//! when the agent is healthy and `500` when not, with a JSON object keyed by subsystem; other
//! paths answer `404`. Kubernetes liveness and readiness probes of SPIRE's Helm chart point
//! here.
//!
//! The one subsystem is `agent`: healthy while the agent SVID has not expired and the Workload
//! API socket accepts connections. A failure is reported as SPIRE reports its Workload API
//! check, under `make_new_x509_err`. Liveness and readiness are the same check, as in SPIRE.

use std::convert::Infallible;
use std::path::PathBuf;
use std::time::SystemTime;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;

use crate::agent::{AgentHandle, Component, ComponentFuture};
use crate::config::HealthChecks;

/// Serves the HTTP health listener for as long as the agent runs.
#[derive(Debug, Clone)]
pub struct HealthListener {
    settings: HealthChecks,
}

impl HealthListener {
    /// The listener for `settings`.
    pub fn new(settings: HealthChecks) -> Self {
        Self { settings }
    }
}

/// Why the agent is not healthy, or `None`.
async fn failure(agent: &AgentHandle, socket: &PathBuf) -> Option<String> {
    let id = agent.identity();
    if crate::renewal::is_expired(id.not_after, SystemTime::now()) {
        return Some("agent SVID has expired".to_owned());
    }
    match tokio::net::UnixStream::connect(socket).await {
        Ok(_) => None,
        Err(_) => Some("workload api is unavailable".to_owned()),
    }
}

async fn answer(
    agent: AgentHandle,
    settings: HealthChecks,
    path: String,
) -> (http::StatusCode, String) {
    if path != settings.live_path && path != settings.ready_path {
        return (http::StatusCode::NOT_FOUND, "404 page not found\n".to_owned());
    }
    let socket = agent.settings.socket_path.clone();
    match failure(&agent, &socket).await {
        None => (http::StatusCode::OK, json!({ "agent": {} }).to_string()),
        Some(err) => (
            http::StatusCode::INTERNAL_SERVER_ERROR,
            json!({ "agent": { "make_new_x509_err": err } }).to_string(),
        ),
    }
}

impl Component for HealthListener {
    fn name(&self) -> &'static str {
        "health checks"
    }

    fn run(self: Box<Self>, agent: AgentHandle) -> ComponentFuture {
        Box::pin(async move {
            let settings = self.settings;
            let host = settings.bind_address.trim_start_matches('[').trim_end_matches(']');
            let listener = TcpListener::bind((host, settings.bind_port))
                .await
                .map_err(|e| format!("binding {host}:{}: {e}", settings.bind_port))?;
            tracing::info!(address = %format!("{host}:{}", settings.bind_port), "serving health checks");
            loop {
                let (stream, _) = tokio::select! {
                    () = agent.stopping() => return Ok(()),
                    accepted = listener.accept() => match accepted {
                        Ok(conn) => conn,
                        Err(e) => {
                            tracing::warn!(error = %e, "accepting a health check connection failed");
                            continue;
                        }
                    },
                };
                let (agent, settings) = (agent.clone(), settings.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (agent, settings) = (agent.clone(), settings.clone());
                        let path = req.uri().path().to_owned();
                        async move {
                            let (status, body) = answer(agent, settings, path).await;
                            let mut resp = http::Response::new(body);
                            *resp.status_mut() = status;
                            resp.headers_mut().insert(
                                http::header::CONTENT_TYPE,
                                http::HeaderValue::from_static("application/json"),
                            );
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(false)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        })
    }
}
