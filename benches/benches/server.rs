#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! `server/batch_new_x509svid`: a real `ward-server` process signing X509-SVIDs for an agent
//! over mTLS on loopback, 100 CSRs per `BatchNewX509SVID` call, rate limits off.
//!
//! The bench starts the release `ward-server` binary (build it first with
//! `cargo build --release -p ward-server`; `--server-bin <path>` or `WARD_SERVER_BIN` point
//! elsewhere), registers 100 workload entries under a join-token agent through the admin
//! socket, attests as that agent over TLS, then drives `BatchNewX509SVID` over several mTLS
//! connections. Every result is checked (status OK, leaf carries the entry's SPIFFE ID), so
//! errors cannot pass for throughput.
//!
//! It reports SVIDs/s and the server process's CPU time (utime + stime from
//! `/proc/<pid>/stat`, load phase only) per signed SVID, next to `ca/x509_svid_from_csr`
//! measured in-process in the same run (as `benches/benches/ca.rs` does), and their ratio.
//! It fails only on errors; timings are printed, never gated.
//!
//! Flags (after `--`): `--calls N` (default 200), `--secs S` (default 20, whichever ends
//! first), `--conns K` (default 4), `--iters N` (CA baseline iterations, default 3000),
//! `--server-bin PATH`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use tonic::transport::Channel;
use ward_benches::{CaFixture, process};
use ward_ca::{KeyType, PrivateKey, SvidParams, build_csr};
use ward_proto::convert::attest_agent_params;
use ward_proto::spire::api::server::agent::v1 as agentpb;
use ward_proto::spire::api::server::bundle::v1 as bundlepb;
use ward_proto::spire::api::server::entry::v1 as entrypb;
use ward_proto::spire::api::server::svid::v1 as svidpb;
use ward_proto::spire::api::types;
use ward_server::tls;

const TD: &str = "example.org";
const CSRS_PER_CALL: usize = 100;

struct Opts {
    calls: usize,
    secs: u64,
    conns: usize,
    iters: usize,
    server_bin: Option<PathBuf>,
}

fn opts() -> anyhow::Result<Opts> {
    let mut o = Opts {
        calls: 200,
        secs: 20,
        conns: 4,
        iters: 3000,
        server_bin: std::env::var_os("WARD_SERVER_BIN").map(PathBuf::from),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--calls" => o.calls = value("--calls")?.parse()?,
            "--secs" => o.secs = value("--secs")?.parse()?,
            "--conns" => o.conns = value("--conns")?.parse()?,
            "--iters" => o.iters = value("--iters")?.parse()?,
            "--server-bin" => o.server_bin = Some(value("--server-bin")?.into()),
            // `cargo bench` passes `--bench`; anything else is a filter we do not use.
            _ => {}
        }
    }
    ensure!(o.calls > 0 && o.conns > 0 && o.iters > 0, "--calls, --conns, --iters must be > 0");
    Ok(o)
}

fn main() -> ExitCode {
    ward_benches::exit_code("server", run())
}

fn run() -> anyhow::Result<()> {
    let o = opts()?;
    let bin = server_binary(o.server_bin.as_deref())?;
    let dir = tempfile::tempdir()?;
    let server = process::WardServer::start(&bin, dir.path())
        .with_context(|| format!("starting {}", bin.display()))?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let load = rt.block_on(drive(&server, &o));
    let load = load.with_context(|| format!("server log:\n{}", server.process.tail(20)))?;
    drop(rt);
    let base = ca_baseline(o.iters)?;
    drop(server);
    report(&o, &load, &base);
    Ok(())
}

/// The release `ward-server` next to this bench's own directory (`<target>/release/deps/..`).
fn server_binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = match explicit {
        Some(p) => p.to_owned(),
        None => process::profile_binary("ward-server").context("bench binary path")?,
    };
    ensure!(
        path.is_file(),
        "{} not found: build it with `cargo build --release -p ward-server` (same \
         CARGO_TARGET_DIR) or pass --server-bin / WARD_SERVER_BIN",
        path.display()
    );
    Ok(path)
}

/// CPU seconds (utime + stime) a process has used.
fn process_cpu_secs(pid: u32, ticks_per_sec: f64) -> anyhow::Result<f64> {
    process::cpu_secs(pid, ticks_per_sec).context("reading /proc/<pid>/stat")
}

/// Nanoseconds the calling thread has run on a CPU (`/proc/thread-self/schedstat`).
fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

struct Load {
    svids: usize,
    calls: usize,
    wall: Duration,
    server_cpu_s: f64,
    client_cpu_s: f64,
}

async fn drive(server: &process::WardServer, o: &Opts) -> anyhow::Result<Load> {
    let admin = server.wait_ready(Duration::from_secs(10)).await?;

    // A join token and one workload entry per CSR slot, all under the agent it will name.
    let token = agentpb::agent_client::AgentClient::new(admin.clone())
        .create_join_token(agentpb::CreateJoinTokenRequest {
            ttl: 600,
            token: String::new(),
            agent_id: None,
        })
        .await?
        .into_inner()
        .value;
    let agent_path = format!("/spire/agent/join_token/{token}");
    let entries: Vec<types::Entry> = (0..CSRS_PER_CALL)
        .map(|i| types::Entry {
            spiffe_id: Some(spiffe_id(&format!("/bench/workload-{i}"))),
            parent_id: Some(spiffe_id(&agent_path)),
            selectors: vec![types::Selector { r#type: "unix".into(), value: format!("uid:{i}") }],
            ..Default::default()
        })
        .collect();
    let created = entrypb::entry_client::EntryClient::new(admin)
        .batch_create_entry(entrypb::BatchCreateEntryRequest { entries, output_mask: None })
        .await?
        .into_inner();
    let mut targets = Vec::with_capacity(CSRS_PER_CALL);
    for r in created.results {
        let st = r.status.context("entry result without status")?;
        ensure!(st.code == 0, "creating an entry: {} {}", st.code, st.message);
        let e = r.entry.context("created entry missing")?;
        let id = e.spiffe_id.context("entry without SPIFFE ID")?;
        targets.push((e.id, format!("spiffe://{}{}", id.trust_domain, id.path)));
    }
    ensure!(targets.len() == CSRS_PER_CALL, "created {} entries", targets.len());

    // Attest (no client certificate), then fetch the bundle to verify the server from now on.
    let agent_key = PrivateKey::generate(KeyType::EcP256)?;
    let bootstrap = tls_channel(server.addr, None, None).await?;
    let agent_svid = attest(bootstrap.clone(), &token, build_csr(&agent_key)?).await?;
    let bundle = bundlepb::bundle_client::BundleClient::new(bootstrap)
        .get_bundle(bundlepb::GetBundleRequest { output_mask: None })
        .await?
        .into_inner();
    let roots: Vec<Vec<u8>> = bundle.x509_authorities.into_iter().map(|a| a.asn1).collect();
    ensure!(!roots.is_empty(), "bundle has no X.509 authorities");
    let identity = (agent_svid, agent_key.pkcs8_der().to_vec());

    // One CSR per entry, made up front so the load phase only signs.
    let params: Vec<svidpb::NewX509svidParams> = targets
        .iter()
        .map(|(entry_id, _)| {
            let key = PrivateKey::generate(KeyType::EcP256)?;
            Ok(svidpb::NewX509svidParams { entry_id: entry_id.clone(), csr: build_csr(&key)? })
        })
        .collect::<anyhow::Result<_>>()?;
    let request = svidpb::BatchNewX509svidRequest { params };
    let expected: Arc<Vec<String>> = Arc::new(targets.into_iter().map(|(_, id)| id).collect());

    let mut clients = Vec::with_capacity(o.conns);
    for _ in 0..o.conns {
        let ch = tls_channel(server.addr, Some(&roots), Some(identity.clone())).await?;
        let mut c = svidpb::svid_client::SvidClient::new(ch);
        // Warm-up: one checked call per connection (handshake, HTTP/2 windows, caches).
        let resp = c.batch_new_x509svid(request.clone()).await?.into_inner();
        check(&resp, &expected)?;
        clients.push(c);
    }

    let ticks = process::clock_ticks();
    let pid = server.process.id();
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(o.secs);
    let server_before = process_cpu_secs(pid, ticks)?;
    let client_before = process_cpu_secs(std::process::id(), ticks)?;
    let start = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            let (next, request, expected, calls) =
                (next.clone(), request.clone(), expected.clone(), o.calls);
            tokio::spawn(async move {
                let mut done = 0usize;
                while next.fetch_add(1, Ordering::Relaxed) < calls && Instant::now() < deadline {
                    let resp = c.batch_new_x509svid(request.clone()).await?.into_inner();
                    check(&resp, &expected)?;
                    done += 1;
                }
                anyhow::Ok(done)
            })
        })
        .collect();
    let mut calls = 0;
    for t in futures::future::join_all(tasks).await {
        calls += t??;
    }
    let wall = start.elapsed();
    let server_cpu_s = process_cpu_secs(pid, ticks)? - server_before;
    let client_cpu_s = process_cpu_secs(std::process::id(), ticks)? - client_before;
    Ok(Load { svids: calls * CSRS_PER_CALL, calls, wall, server_cpu_s, client_cpu_s })
}

/// Every item OK, with an SVID whose leaf carries the entry's SPIFFE ID.
fn check(resp: &svidpb::BatchNewX509svidResponse, expected: &[String]) -> anyhow::Result<()> {
    ensure!(resp.results.len() == expected.len(), "{} results", resp.results.len());
    for (r, want) in resp.results.iter().zip(expected) {
        let st = r.status.as_ref().context("result without status")?;
        ensure!(st.code == 0, "item refused: {} {}", st.code, st.message);
        let svid = r.svid.as_ref().context("OK result without SVID")?;
        let leaf = svid.cert_chain.first().context("empty certificate chain")?;
        let facts = ward_server::tls::leaf_facts(leaf).map_err(|e| anyhow!(e))?;
        ensure!(facts.id.as_str() == want, "leaf is for {}, want {want}", facts.id);
    }
    Ok(())
}

fn spiffe_id(path: &str) -> types::Spiffeid {
    types::Spiffeid { trust_domain: TD.into(), path: path.into() }
}

async fn attest(ch: Channel, token: &str, csr: Vec<u8>) -> anyhow::Result<Vec<Vec<u8>>> {
    let req = attest_agent_params("join_token", token.as_bytes().to_vec(), csr);
    let mut stream = agentpb::agent_client::AgentClient::new(ch)
        .attest_agent(futures::stream::iter([req]))
        .await?
        .into_inner();
    match stream.message().await?.and_then(|m| m.step) {
        Some(agentpb::attest_agent_response::Step::Result(r)) => {
            Ok(r.svid.context("attestation result without SVID")?.cert_chain)
        }
        other => bail!("unexpected attestation answer {other:?}"),
    }
}

/// A gRPC channel over TLS to `addr` as an agent connects: the server is checked against
/// `roots` when given (bootstrap otherwise), and `identity` (chain, PKCS#8 key) is presented
/// if given.
async fn tls_channel(
    addr: SocketAddr,
    roots: Option<&[Vec<u8>]>,
    identity: Option<(Vec<Vec<u8>>, Vec<u8>)>,
) -> anyhow::Result<Channel> {
    let td = ward_core::TrustDomain::new(TD)?;
    let verifier = Arc::new(tls::SpiffeServerVerifier::for_trust_domain(&td, roots)?);
    let cfg = Arc::new(tls::agent_client_config(verifier, identity)?);
    Ok(tls::agent_channel(addr, cfg).await?)
}

struct Baseline {
    iters: usize,
    cpu_us: Option<f64>,
    wall_us: f64,
}

/// `ca/x509_svid_from_csr` on this thread, with the same fixture as the criterion bench.
fn ca_baseline(iters: usize) -> anyhow::Result<Baseline> {
    let f = CaFixture::new();
    let params = SvidParams {
        spiffe_id: &f.spiffe_id,
        dns_names: &f.dns_names,
        ttl: Duration::from_secs(3600),
    };
    for _ in 0..iters / 10 {
        std::hint::black_box(f.ca.sign_x509_svid_from_csr(&f.csr, &params, f.now)?);
    }
    let cpu_before = thread_cpu_ns();
    let start = Instant::now();
    for _ in 0..iters {
        std::hint::black_box(f.ca.sign_x509_svid_from_csr(
            std::hint::black_box(&f.csr),
            &params,
            f.now,
        )?);
    }
    let wall = start.elapsed();
    let cpu_us = match (cpu_before, thread_cpu_ns()) {
        (Some(a), Some(b)) => Some((b - a) as f64 / 1e3 / iters as f64),
        _ => None,
    };
    Ok(Baseline { iters, cpu_us, wall_us: wall.as_secs_f64() * 1e6 / iters as f64 })
}

fn report(o: &Opts, load: &Load, base: &Baseline) {
    let n = load.svids as f64;
    let server_us = load.server_cpu_s * 1e6 / n;
    let base_us = base.cpu_us.unwrap_or(base.wall_us);
    println!("server/batch_new_x509svid (ward-server process, mTLS on 127.0.0.1, rate limits off)");
    println!("  connections                  {}", o.conns);
    println!("  calls x CSRs per call        {} x {CSRS_PER_CALL}", load.calls);
    println!("  SVIDs signed (all checked)   {}", load.svids);
    println!("  wall time                    {:.2} s", load.wall.as_secs_f64());
    println!("  throughput                   {:.0} SVIDs/s", n / load.wall.as_secs_f64());
    println!("  server CPU (utime+stime)     {:.2} s", load.server_cpu_s);
    println!("  server CPU per SVID          {server_us:.1} µs");
    println!("  bench client CPU per SVID    {:.1} µs", load.client_cpu_s * 1e6 / n);
    match base.cpu_us {
        Some(cpu) => println!(
            "  ca/x509_svid_from_csr        {cpu:.1} µs thread CPU ({:.1} µs wall, {} iters)",
            base.wall_us, base.iters
        ),
        None => println!(
            "  ca/x509_svid_from_csr        {:.1} µs wall ({} iters)",
            base.wall_us, base.iters
        ),
    }
    println!("  ratio server/ca              {:.2} (target <= 1.30)", server_us / base_us);
}
