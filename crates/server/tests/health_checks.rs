//! SPIRE's `health_checks` HTTP listener on a running server.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::{TestServer, http_get};
use serde_json::Value as Json;

#[tokio::test]
async fn health_checks_answer_live_and_ready() {
    let ts = TestServer::start_with(|cfg| {
        cfg.health_checks.listener_enabled = true;
        cfg.health_checks.bind_address = "127.0.0.1".into();
        cfg.health_checks.bind_port = 0;
    })
    .await;
    let addr = ts.server.health_addr.expect("health listener");

    let (code, body) = http_get(addr, "/live").await;
    assert_eq!(code, 200, "{body}");
    let live: Json = serde_json::from_str(&body).unwrap();
    assert_eq!(live, serde_json::json!({"catalog.datastore": {}, "server.ca": {}, "server": {}}));
    let (code, body) = http_get(addr, "/ready").await;
    assert_eq!(code, 200, "{body}");
    let ready: Json = serde_json::from_str(&body).unwrap();
    assert_eq!(ready, serde_json::json!({"catalog.datastore": {}, "server.ca": {}, "server": {}}));
    assert_eq!(http_get(addr, "/other").await.0, 404);

    tracing::info!("with the admin socket gone the server is neither live nor ready");
    std::fs::remove_file(&ts.server.socket_path).unwrap();
    let (code, body) = http_get(addr, "/ready").await;
    assert_eq!(code, 500, "{body}");
    let ready: Json = serde_json::from_str(&body).unwrap();
    let err = ready["server"]["get_bundle_err"].as_str().unwrap();
    assert!(err.starts_with("admin socket "), "{err}");
    assert_eq!(http_get(addr, "/live").await.0, 500);
    ts.server.shutdown().await;
}
