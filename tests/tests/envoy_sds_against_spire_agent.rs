//! The same SDS requests, from a client built on Envoy's go-control-plane types, answered by
//! an unmodified spire-agent v1.13.3 (attested to spire-server with a join token) and by
//! ward-agent's SDS service serving the very SVIDs, keys and bundle that spire-agent served:
//! every response must be identical but for the random nonce (names, order, kinds, PEM
//! bytes, SPIFFE validator configuration, versions, error codes and texts), also for an
//! Envoy 1.17 and for a proxy that turns the SPIFFE validator off in its Node metadata.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers fail the test on any error"
)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use tonic::service::Routes;
use ward_agent::cache::{Cache, CacheView, X509Identity};
use ward_agent::sds::{SdsConfig, SdsService};
use ward_agent::workload::{CallerAttestor, ListenerConfig, WorkloadListener};
use ward_attest::{ProcFs, UnixAttestor, UnixConfig, WorkloadAttestor};
use ward_core::bundle::pem::decode_certificates;
use ward_core::{Bundle, Selector, SelectorSet, SpiffeId, TrustDomain};
use ward_tests::agent_scenario::{current_uid, wait_ready};
use ward_tests::cli::AdminCli;
use ward_tests::envoy_sds::{self, Mode, Output};
use ward_tests::server::ServerOptions;
use ward_tests::spire::{SpireBins, start_spire_agent, start_spire_server};
use ward_tests::wait::{Step, poll_until};
use zeroize::Zeroizing;

const TRUST_DOMAIN: &str = "example.org";
const WEB: &str = "spiffe://example.org/web";
const DB: &str = "spiffe://example.org/db";

/// The requests each agent answers: one stream (each set after the first ACKs the last
/// response), then FetchSecrets calls (the first error ends the run).
const STREAM: &[&[&str]] = &[
    &[WEB, "ROOTCA"],
    &["ALL"],
    &["default", "spiffe://example.org"],
    &[DB, "spiffe://example.org/nope"],
];
const FETCH: &[&[&str]] = &[&[], &["default"], &[DB, WEB], &["ROOTCA", "ALL"]];

/// Requests from an Envoy 1.17 (no SPIFFE validator: `trusted_ca`, and `ALL` refused), and
/// from a proxy that turns the validator off in its Node metadata.
const OLD_ENVOY: &[&str] = &["-envoy-version=1.17.0"];
const VALIDATOR_OFF: &[&str] = &["-envoy-version=1.30.2", "-disable-spiffe-cert-validation=True"];
const LEGACY: &[&[&str]] = &[&["ROOTCA"], &["spiffe://example.org", DB], &["ALL"]];

fn run_script(client: &Path, socket: &Path) -> Vec<Output> {
    vec![
        envoy_sds::fetch(client, socket, Mode::Stream, STREAM).unwrap(),
        envoy_sds::fetch(client, socket, Mode::Fetch, FETCH).unwrap(),
        envoy_sds::fetch_as(client, socket, Mode::Stream, OLD_ENVOY, LEGACY).unwrap(),
        envoy_sds::fetch_as(client, socket, Mode::Fetch, VALIDATOR_OFF, LEGACY).unwrap(),
    ]
}

/// `out` with each nonce checked (8 hex characters, or empty for FetchSecrets) and blanked.
fn without_nonces(mut out: Output) -> Output {
    for resp in &mut out.responses {
        assert!(
            resp.nonce.is_empty()
                || (resp.nonce.len() == 8 && resp.nonce.bytes().all(|b| b.is_ascii_hexdigit())),
            "nonce {:?}",
            resp.nonce
        );
        resp.nonce.clear();
    }
    out
}

#[test]
fn ward_sds_answers_as_spire_agent_does() {
    let client = envoy_sds::client().unwrap();
    let bins = SpireBins::locate().unwrap();
    let dir = tempfile::Builder::new().prefix("ward-sds").tempdir().unwrap();
    let root = dir.path();

    eprintln!("1. spire-server, a join token and two entries for this uid");
    let mut server =
        start_spire_server(&bins, &root.join("server"), &ServerOptions::new(TRUST_DOMAIN)).unwrap();
    let cli = AdminCli::new(&bins.server, &server.socket_path);
    wait_ready(&mut server.daemon, &cli).unwrap();
    let token = cli.token_generate(Some(600)).unwrap();
    let agent_id = format!("spiffe://{TRUST_DOMAIN}/spire/agent/join_token/{token}");
    let selector = format!("unix:uid:{}", current_uid().unwrap());
    let mut entries: Vec<(String, &str)> = [WEB, DB]
        .into_iter()
        .map(|id| (cli.entry_create(&agent_id, id, &selector).unwrap(), id))
        .collect();
    entries.sort();
    let bundle_path = root.join("bundle.pem");
    std::fs::write(&bundle_path, cli.bundle_show_pem().unwrap()).unwrap();

    eprintln!("2. spire-agent, until its SDS serves both SVIDs");
    let mut agent = start_spire_agent(
        &bins,
        &root.join("agent"),
        TRUST_DOMAIN,
        server.port,
        &bundle_path,
        &token,
    )
    .unwrap();
    let everything =
        poll_until("spire-agent to serve both SVIDs over SDS", Duration::from_secs(90), || {
            agent.daemon.ensure_running()?;
            server.daemon.ensure_running()?;
            let out = envoy_sds::fetch(&client, &agent.socket_path, Mode::Fetch, &[&[]]);
            let Ok(out) = out else { return Ok(Step::Retry(format!("{out:?}"))) };
            let names: Vec<String> = out
                .responses
                .first()
                .map(|r| r.names().into_iter().map(String::from).collect())
                .unwrap_or_default();
            Ok(if names.iter().any(|n| n == WEB) && names.iter().any(|n| n == DB) {
                Step::Done(out.responses[0].clone())
            } else {
                Step::Retry(format!("served {names:?}"))
            })
        })
        .unwrap();

    eprintln!("3. the script against spire-agent");
    let spire = run_script(&client, &agent.socket_path);

    eprintln!("4. ward's SDS over a cache holding what spire-agent served");
    let own = everything.secret(&format!("spiffe://{TRUST_DOMAIN}")).unwrap();
    let bundle =
        Bundle::from_pem(TrustDomain::new(TRUST_DOMAIN).unwrap(), &own.trust_domains[0].bundle_pem)
            .unwrap();
    let selectors = SelectorSet::new(vec![Selector::parse(&selector).unwrap()]);
    let identities: Vec<Arc<X509Identity>> = entries
        .iter()
        .map(|(entry_id, id)| {
            let secret = everything.secret(id).unwrap();
            let key = pem::parse(&secret.private_key_pem).context("spire-agent's key").unwrap();
            assert_eq!(key.tag(), "PRIVATE KEY");
            Arc::new(X509Identity {
                entry_id: entry_id.clone(),
                spiffe_id: SpiffeId::parse(id).unwrap(),
                selectors: selectors.clone(),
                federates_with: Vec::new(),
                hint: String::new(),
                admin: false,
                downstream: false,
                chain: decode_certificates(&secret.chain_pem).unwrap(),
                private_key: Arc::new(Zeroizing::new(key.into_contents())),
                expires_at: SystemTime::now() + Duration::from_secs(3600),
            })
        })
        .collect();
    let cache = Arc::new(Cache::new(CacheView::new(bundle)));
    cache.update(|v| v.identities = identities);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let socket: PathBuf = root.join("ward").join("api.sock");
    runtime.block_on(async {
        let listener = WorkloadListener::bind(&ListenerConfig::new(&socket)).unwrap();
        let unix: Box<dyn WorkloadAttestor> =
            Box::new(UnixAttestor::new(UnixConfig::default(), ProcFs::default()));
        let sds = SdsService::new(SdsConfig::default(), cache, CallerAttestor::new(vec![unix]));
        tokio::spawn(listener.serve(Routes::new(sds.into_server()), std::future::pending()));
    });
    let ward = run_script(&client, &socket);

    eprintln!("5. compare");
    // The script reaches every case it is meant to.
    let reached: Vec<(usize, &str)> =
        spire.iter().map(|o| (o.responses.len(), o.error_code.as_str())).collect();
    assert_eq!(
        reached,
        [(3, "InvalidArgument"), (3, "InvalidArgument"), (2, "Internal"), (2, "Internal")],
        "{spire:#?}"
    );
    assert_eq!(spire[2].error_message, r#"unable to use "SPIFFE validator" on Envoy below 1.17"#);
    assert!(!spire[2].responses[0].secrets[0].trusted_ca_pem.is_empty());
    for (ward, spire) in ward.into_iter().zip(spire) {
        let (ward, spire) = (without_nonces(ward), without_nonces(spire));
        let names = |o: &Output| -> Vec<Vec<String>> {
            o.responses.iter().map(|r| r.names().into_iter().map(String::from).collect()).collect()
        };
        assert_eq!(names(&ward), names(&spire), "resource names (ward, spire)");
        assert_eq!(
            (&ward.error_code, &ward.error_message),
            (&spire.error_code, &spire.error_message),
            "error (ward, spire)"
        );
        for (w, s) in ward.responses.iter().zip(&spire.responses) {
            assert_eq!((&w.version_info, &w.type_url), (&s.version_info, &s.type_url));
            for (w, s) in w.secrets.iter().zip(&s.secrets) {
                assert_eq!(w, s, "secret {} (ward, spire)", s.name);
            }
        }
        assert_eq!(ward, spire);
    }

    agent.daemon.terminate(Duration::from_secs(10)).unwrap();
    server.daemon.terminate(Duration::from_secs(10)).unwrap();
}
