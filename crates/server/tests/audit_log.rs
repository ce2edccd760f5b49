//! SPIRE's audit log (`audit_log_enabled`) on a running server, read back from the server's
//! JSON log lines.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use common::{TestServer, id, parse, tls_channel};
use serde_json::Value as Json;
use ward_proto::spire::api::server::agent::v1 as agentpb;
use ward_proto::spire::api::server::bundle::v1 as bundlepb;
use ward_proto::spire::api::server::entry::v1 as entrypb;
use ward_proto::spire::api::types;
use ward_server::config::LogFormat;

/// Log lines written by this test binary's subscriber (SPIRE-shaped JSON).
fn captured() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let writer = move || Sink(sink.clone());
        let filter = tracing_subscriber::EnvFilter::new("audit=info");
        let sub = ward_server::logging::subscriber(LogFormat::Json, filter, false, writer);
        tracing::subscriber::set_global_default(sub).unwrap();
        buf
    })
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The audit records logged so far for `method`.
fn audit_records(method: &str) -> Vec<HashMap<String, Json>> {
    let bytes = captured().lock().unwrap().clone();
    String::from_utf8(bytes)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<HashMap<String, Json>>(l).unwrap())
        .filter(|r| r.get("type") == Some(&Json::from("audit")) && r["method"] == method)
        .collect()
}

#[tokio::test]
async fn audit_log_records_each_call_and_batch_item() {
    captured();
    let ts = TestServer::start_with(|cfg| cfg.audit_log_enabled = true).await;
    let mut entries = entrypb::entry_client::EntryClient::new(ts.admin().await);

    tracing::info!("a batch create with one good and one bad entry");
    let good = types::Entry {
        spiffe_id: Some(id("example.org", "/audited")),
        parent_id: Some(parse("spiffe://example.org/agent")),
        selectors: vec![types::Selector { r#type: "unix".into(), value: "uid:7".into() }],
        ..Default::default()
    };
    let bad = types::Entry { spiffe_id: None, ..good.clone() };
    let resp = entries
        .batch_create_entry(entrypb::BatchCreateEntryRequest {
            entries: vec![good, bad],
            output_mask: None,
        })
        .await
        .unwrap()
        .into_inner();
    let bad_status = resp.results[1].status.clone().unwrap();
    assert_ne!(bad_status.code, 0);

    let recs = audit_records("BatchCreateEntry");
    assert_eq!(recs.len(), 2, "{recs:?}");
    let (ok, refused) = (&recs[0], &recs[1]);
    assert_eq!(ok["msg"], "API accessed");
    assert_eq!(ok["level"], "info");
    assert_eq!(ok["status"], "success");
    assert_eq!(ok["service"], "entry.v1.Entry");
    assert_eq!(ok["subsystem_name"], "api");
    assert_eq!(
        (&ok["authorized_as"], &ok["authorized_via"]),
        (&Json::from("local"), &Json::from("transport"))
    );
    assert_eq!(ok["spiffe_id"], "spiffe://example.org/audited");
    assert_eq!(ok["parent_id"], "spiffe://example.org/agent");
    assert_eq!(ok["selectors"], "unix:uid:7");
    assert_eq!(ok["admin"], false);
    assert_eq!(ok["x509_svid_ttl"], 0);
    assert!(!ok.contains_key("status_code"));
    assert!(ok.contains_key("time"));
    let me = std::process::id();
    let uid = std::fs::read_to_string(format!("/proc/{me}/status")).unwrap();
    let uid: u64 = uid
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(ok["caller_uid"], uid);
    let exe = std::env::current_exe().unwrap();
    assert_eq!(ok["caller_path"], exe.display().to_string());
    assert!(!ok.contains_key("caller_addr"));
    assert_eq!(refused["status"], "error");
    assert_eq!(refused["status_code"], bad_status.code);
    assert_eq!(refused["status_message"], bad_status.message);
    assert_eq!(ok["request_id"], refused["request_id"]);

    tracing::info!("a failed call is one error record with the request's fields");
    let err = entries
        .get_entry(entrypb::GetEntryRequest { id: "no-such-entry".into(), output_mask: None })
        .await
        .unwrap_err();
    let recs = audit_records("GetEntry");
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!(recs[0]["status"], "error");
    assert_eq!(recs[0]["status_code"], err.code() as i32);
    assert_eq!(recs[0]["status_message"], err.message());
    assert_eq!(recs[0]["entry_id"], "no-such-entry");

    tracing::info!("a TCP caller is named by address; refused calls are not audited");
    let channel = tls_channel(ts.addr(), &[], None).await;
    let mut bundle = bundlepb::bundle_client::BundleClient::new(channel.clone());
    bundle.get_bundle(bundlepb::GetBundleRequest { output_mask: None }).await.unwrap();
    let recs = audit_records("GetBundle");
    assert_eq!(recs.len(), 1, "{recs:?}");
    let addr = recs[0]["caller_addr"].as_str().unwrap();
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    assert!(!recs[0].contains_key("caller_uid") && !recs[0].contains_key("caller_id"));
    assert_eq!(recs[0]["authorized_as"], "nobody");
    assert_eq!(recs[0]["trust_domain_id"], "example.org");
    let mut agent = agentpb::agent_client::AgentClient::new(channel);
    agent.count_agents(agentpb::CountAgentsRequest::default()).await.unwrap_err();
    assert!(audit_records("CountAgents").is_empty());
    ts.server.shutdown().await;
}
