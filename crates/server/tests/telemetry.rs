//! The Prometheus endpoint of a running server, scraped after real RPCs and parsed by a
//! Prometheus text-format parser (`prometheus-parse`).
//!
//! The metrics recorder is process-wide, so this binary holds a single test: no other server
//! in the process signs SVIDs between two scrapes.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::{TestServer, http_get, id, key_and_csr, tls_channel};
use prometheus_parse::{Scrape, Value};
use ward_proto::convert::attest_agent_params;
use ward_proto::spire::api::server::agent::v1 as agentpb;
use ward_proto::spire::api::server::entry::v1 as entrypb;
use ward_proto::spire::api::server::svid::v1 as svidpb;
use ward_server::config::{Config, PrometheusConfig};

/// The metrics endpoint's answer, parsed.
async fn scrape(addr: std::net::SocketAddr) -> Scrape {
    let (code, body) = http_get(addr, "/metrics").await;
    assert_eq!(code, 200);
    Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

/// The value of the sample `name` whose labels include `labels`.
fn sample(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<Value> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| s.value.clone())
}

fn number(v: Option<Value>) -> f64 {
    match v {
        Some(Value::Counter(n) | Value::Gauge(n) | Value::Untyped(n)) => n,
        other => panic!("not a number: {other:?}"),
    }
}

fn with_prometheus(cfg: &mut Config) {
    cfg.telemetry.prometheus = Some(PrometheusConfig { host: "127.0.0.1".into(), port: 0 });
}

/// The host label SPIRE puts on every metric: this machine's host name.
fn hostname() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    ward_server::telemetry::names::sanitize_label(name.trim())
}

#[tokio::test]
async fn metrics_use_spire_names_and_count_calls_by_status() {
    let ts = TestServer::start_with(with_prometheus).await;
    let addr = ts.server.metrics_addr.expect("metrics endpoint");
    let mut entries = entrypb::entry_client::EntryClient::new(ts.admin().await);

    tracing::info!("three CountEntries calls, one GetEntry for a missing id");
    for _ in 0..3 {
        entries.count_entries(entrypb::CountEntriesRequest::default()).await.unwrap();
    }
    let missing = entries
        .get_entry(entrypb::GetEntryRequest { id: "missing".into(), output_mask: None })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);

    let before = scrape(addr).await;
    let host = hostname();
    let count_key = "spire_server_rpc_entry_v1_entry_count_entries";
    assert_eq!(number(sample(&before, count_key, &[("status", "OK"), ("host", &host)])), 3.0);
    assert_eq!(
        number(sample(
            &before,
            "spire_server_rpc_entry_v1_entry_get_entry",
            &[("status", "NotFound")]
        )),
        1.0
    );
    let elapsed = format!("{count_key}_elapsed_time");
    match sample(&before, &elapsed, &[("status", "OK")]) {
        Some(Value::Summary(qs)) => {
            let quantiles: Vec<f64> = qs.iter().map(|q| q.quantile).collect();
            assert_eq!(quantiles, [0.5, 0.9, 0.99]);
            assert!(qs.iter().all(|q| q.count >= 0.0));
        }
        other => panic!("{elapsed} is not a summary: {other:?}"),
    }
    assert_eq!(number(sample(&before, &format!("{elapsed}_count"), &[("status", "OK")])), 3.0);
    let started = sample(&before, "spire_server_started", &[("trust_domain_id", "example_org")]);
    assert_eq!(number(started), 1.0);

    tracing::info!("CA expiry gauges match the active authorities");
    let ca = ts.server.state.ca.x509_ca().unwrap();
    let td = [("trust_domain_id", "example_org")];
    let exp = number(sample(&before, "spire_server_manager_x509_ca_rotate_expiration", &td));
    assert_eq!(exp, ca.not_after_unix() as f64);
    let ttl = number(sample(&before, "spire_server_manager_x509_ca_rotate_ttl", &td));
    assert!(ttl > 0.0 && ttl <= (ca.not_after_unix() as f64), "{ttl}");
    let jwt = ts.server.state.ca.jwt_signer_now().unwrap();
    let jexp = number(sample(&before, "spire_server_manager_jwt_key_rotate_expiration", &td));
    assert_eq!(jexp, jwt.expires_at() as f64);

    tracing::info!("an entry, an attested agent, one minted X509-SVID and one JWT-SVID");
    let agent_entries =
        number(sample(&before, "spire_server_entry_entries_by_entryid_cache_count", &[]));
    assert_eq!(agent_entries, 0.0);
    ts.create_entry("/workload", "spiffe://example.org/agent", ("unix", "uid:1")).await;
    let token = ts.create_token(600).await;
    let (_key, csr) = key_and_csr();
    let mut agent =
        agentpb::agent_client::AgentClient::new(tls_channel(ts.addr(), &[], None).await);
    let req = attest_agent_params("join_token", token.as_bytes().to_vec(), csr);
    let mut stream =
        agent.attest_agent(futures::stream::iter(vec![req])).await.unwrap().into_inner();
    // Read to the end: the call is over once its trailers arrive.
    while stream.message().await.unwrap().is_some() {}

    let mut svid = svidpb::svid_client::SvidClient::new(ts.admin().await);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    let uri = "spiffe://example.org/minted".try_into().unwrap();
    params.subject_alt_names.push(rcgen::SanType::URI(uri));
    let csr = params.serialize_request(&key).unwrap().der().to_vec();
    svid.mint_x509svid(svidpb::MintX509svidRequest { csr, ttl: 60 }).await.unwrap();
    svid.mint_jwtsvid(svidpb::MintJwtsvidRequest {
        id: Some(id("example.org", "/workload")),
        audience: vec!["aud".into()],
        ttl: 60,
    })
    .await
    .unwrap();

    let after = scrape(addr).await;
    let delta = |name: &str| {
        number(sample(&after, name, &[]))
            - sample(&before, name, &[]).map_or(0.0, |v| number(Some(v)))
    };
    // The attested agent's SVID and the minted one.
    assert_eq!(delta("spire_server_server_ca_sign_x509_svid"), 2.0);
    assert_eq!(delta("spire_server_server_ca_sign_jwt_svid"), 1.0);
    let attests =
        sample(&after, "spire_server_rpc_agent_v1_agent_attest_agent", &[("status", "OK")]);
    assert_eq!(number(attests), 1.0);
    let mints = sample(&after, "spire_server_rpc_svid_v1_svid_mint_x509svid", &[("status", "OK")]);
    assert_eq!(number(mints), 1.0);
    assert_eq!(
        number(sample(&after, "spire_server_entry_entries_by_entryid_cache_count", &[])),
        1.0
    );
    assert_eq!(number(sample(&after, "spire_server_node_agents_by_id_cache_count", &[])), 1.0);
    assert!(number(sample(&after, "spire_server_uptime_in_ms", &[])) > 0.0);

    tracing::info!("ListAgents over TLS without a client SVID is refused by authorization");
    let mut agent =
        agentpb::agent_client::AgentClient::new(tls_channel(ts.addr(), &[], None).await);
    let err = agent.list_agents(agentpb::ListAgentsRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let s = scrape(addr).await;
    let key = "spire_server_rpc_agent_v1_agent_list_agents";
    assert_eq!(number(sample(&s, key, &[("status", "PermissionDenied")])), 1.0);
    assert_eq!(sample(&s, key, &[("status", "OK")]), None);

    ts.server.shutdown().await;
}
