#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! `agent`: a release `ward-agent` next to an unmodified `spire-agent` v1.13.3, both attested
//! to one release `ward-server` with their own join tokens and the same workload entries, and
//! driven by the same Workload API clients in the same run.
//!
//! Each agent is the parent of `--entries` entries (default 100), `spiffe://example.org/bench/
//! <agent>/workload-<i>`, every one with the selector `unix:uid:<the bench's uid>`, so every
//! client of the bench matches all of them (the two sets differ by parent and SPIFFE ID). Both
//! agents run with their defaults (sync every 5 s, the `unix` workload attestor without path
//! discovery, an in-memory key manager for spire-agent). The bench waits until each agent's
//! `FetchX509SVID` answers with every entry's SVID, then measures, per agent:
//!
//! 1. `FetchX509SVID` first-response latency, warm (after one call on a new connection): the
//!    time from the call to its first response, `--calls` times (default 200) each over a
//!    new Unix socket connection (connect and HTTP/2 handshake included), then `--calls`
//!    times over one connection; p50 and p99 from an `hdrhistogram`. Every answer is checked
//!    (all SVIDs present, each for its agent's entries).
//! 2. Memory: `VmRSS` and `VmHWM` from `/proc/<pid>/status` once the entries are minted and
//!    then while `--clients` clients (default 100, each on its own connection, with the
//!    `workload.spiffe.io: true` header) hold open `FetchX509SVID` streams whose first
//!    response has arrived; and the ratio ward/spire.
//! 3. CPU while idle: with the streams closed, utime + stime from `/proc/<pid>/stat` of both
//!    agents over the same `--idle-secs` window (default 120), scaled to one hour.
//!
//! Latency and memory phases run one agent at a time so they do not share the CPU; the idle
//! window is shared. The machine's load average is printed with the table. Every wait and
//! loop is bounded; every process is killed when the bench ends, also on an error. It fails on
//! errors only; numbers are printed, never gated.
//!
//! Flags (after `--`): `--calls N`, `--clients N`, `--entries N`, `--idle-secs S`,
//! `--only ward|spire`, `--server-bin PATH` (or `WARD_SERVER_BIN`), `--agent-bin PATH` (or
//! `WARD_AGENT_BIN`; both default to `<target>/release/`), `--spire-dir DIR` (or
//! `WARD_SPIRE_BIN`, default `~/.cache/ward/spire/v1.13.3`; holds `spire-agent`).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use hdrhistogram::Histogram;
use tonic::Request;
use tonic::transport::Channel;
use ward_benches::process;
use ward_proto::spiffe::workload as pb;
use ward_proto::spiffe::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use ward_proto::spire::api::server::agent::v1 as agentpb;
use ward_proto::spire::api::server::bundle::v1 as bundlepb;
use ward_proto::spire::api::server::entry::v1 as entrypb;
use ward_proto::spire::api::types;

const TD: &str = "example.org";
/// How long an agent may take to attest and serve every entry's SVID.
const READY: Duration = Duration::from_secs(120);
/// How long one Workload API call may take.
const CALL: Duration = Duration::from_secs(30);

/// The bench's flags (after `--`).
#[derive(clap::Parser)]
#[command(about = "ward-agent beside spire-agent: latency, memory, idle CPU")]
struct Opts {
    /// Calls per latency series.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..))]
    calls: u64,
    /// Clients holding FetchX509SVID streams during the memory reading.
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// Workload entries per agent.
    #[arg(long, default_value_t = 100)]
    entries: usize,
    /// Seconds of the idle CPU window.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    idle_secs: u64,
    /// Measure one agent only.
    #[arg(long, value_enum)]
    only: Option<Kind>,
    /// The ward-server binary (default: `<target>/release/ward-server`).
    #[arg(long, env = "WARD_SERVER_BIN")]
    server_bin: Option<PathBuf>,
    /// The ward-agent binary (default: `<target>/release/ward-agent`).
    #[arg(long, env = "WARD_AGENT_BIN")]
    agent_bin: Option<PathBuf>,
    /// The directory holding spire-agent v1.13.3 (default: `~/.cache/ward/spire/v1.13.3`).
    #[arg(long, env = "WARD_SPIRE_BIN")]
    spire_dir: Option<PathBuf>,
    /// What `cargo bench` passes; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> ExitCode {
    ward_benches::exit_code("agent", run())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Kind {
    Ward,
    Spire,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Ward => "ward-agent",
            Kind::Spire => "spire-agent",
        }
    }

    /// The path segment of this agent's workload SPIFFE IDs.
    fn segment(self) -> &'static str {
        match self {
            Kind::Ward => "ward",
            Kind::Spire => "spire",
        }
    }
}

/// The binaries the bench runs.
struct Bins {
    server: PathBuf,
    agent: PathBuf,
    spire_agent: PathBuf,
}

fn binaries(o: &Opts) -> anyhow::Result<Bins> {
    let release = |explicit: &Option<PathBuf>, name: &str| -> anyhow::Result<PathBuf> {
        let path = match explicit {
            Some(p) => p.clone(),
            None => process::profile_binary(name).context("bench binary path")?,
        };
        ensure!(
            path.is_file(),
            "{} not found: build it with `cargo build --release -p {name}` (same \
             CARGO_TARGET_DIR) or pass its path",
            path.display()
        );
        Ok(path)
    };
    let spire_dir = match &o.spire_dir {
        Some(d) => d.clone(),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?)
            .join(".cache/ward/spire/v1.13.3"),
    };
    let spire_agent = spire_dir.join("spire-agent");
    ensure!(
        o.only == Some(Kind::Ward) || spire_agent.is_file(),
        "{} not found: run tests/interop/spire/build.sh or pass --spire-dir / WARD_SPIRE_BIN",
        spire_agent.display()
    );
    Ok(Bins {
        server: release(&o.server_bin, "ward-server")?,
        agent: release(&o.agent_bin, "ward-agent")?,
        spire_agent,
    })
}

fn run() -> anyhow::Result<()> {
    let o = <Opts as clap::Parser>::parse();
    ensure!(o.entries > 0, "--entries must be > 0");
    let bins = binaries(&o)?;
    let root = tempfile::tempdir()?;
    let uid = std::fs::metadata("/proc/self")?.uid();
    // The clients are light; one thread keeps the bench off the agents' CPUs.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let load_before = process::load_average();
    let rows = rt.block_on(bench(&o, &bins, root.path(), uid))?;
    drop(rt);
    report(&o, uid, &rows, load_before, process::load_average());
    Ok(())
}

/// What the bench measured for one agent.
struct Row {
    kind: Kind,
    new_conn: Histogram<u64>,
    one_conn: Histogram<u64>,
    minted: Mem,
    streaming: Mem,
    idle_cpu_s: Option<f64>,
    /// The idle window the CPU time was measured over.
    idle_window_s: f64,
}

async fn bench(o: &Opts, bins: &Bins, root: &Path, uid: u32) -> anyhow::Result<Vec<Row>> {
    let server = ServerProcess::start(&bins.server, &root.join("server"))?;
    let admin = server.0.wait_ready(READY).await?;
    let bundle_path = root.join("bundle.pem");
    write_bundle(&admin, &bundle_path).await?;

    let kinds: Vec<Kind> =
        [Kind::Ward, Kind::Spire].into_iter().filter(|k| o.only.is_none_or(|x| x == *k)).collect();
    let mut agents = Vec::new();
    for &kind in &kinds {
        let token = join_token(&admin).await?;
        create_entries(&admin, kind, &token, o.entries, uid).await?;
        let dir = root.join(kind.segment());
        std::fs::create_dir_all(&dir)?;
        let agent =
            AgentProcess::start(kind, bins, &dir, server.0.addr.port(), &bundle_path, &token)?;
        agents.push(agent);
    }
    for agent in &mut agents {
        agent.wait_serving(o.entries).await.with_context(|| {
            format!("{} log:\n{}\nserver log:\n{}", agent.kind.name(), agent.tail(), server.tail())
        })?;
    }

    let mut rows = Vec::new();
    for agent in &mut agents {
        let what = |phase: &str| format!("{} {phase}", agent.kind.name());
        let (new_conn, one_conn) =
            latencies(agent, o.entries, o.calls).await.with_context(|| what("latency"))?;
        let minted = Mem::read(agent.pid()).with_context(|| what("memory"))?;
        let streams = open_streams(agent, o.entries, o.clients)
            .await
            .with_context(|| what("streaming clients"))?;
        let streaming = Mem::read(agent.pid()).with_context(|| what("memory"))?;
        drop(streams);
        rows.push(Row {
            kind: agent.kind,
            new_conn,
            one_conn,
            minted,
            streaming,
            idle_cpu_s: None,
            idle_window_s: o.idle_secs as f64,
        });
    }

    // Idle: both agents over the same window, after the streams have closed.
    let ticks = process::clock_ticks();
    let pids: Vec<u32> = agents.iter().map(AgentProcess::pid).collect();
    let before: Vec<Option<f64>> = pids.iter().map(|p| process::cpu_secs(*p, ticks)).collect();
    tokio::time::sleep(Duration::from_secs(o.idle_secs)).await;
    for ((row, pid), before) in rows.iter_mut().zip(&pids).zip(before) {
        row.idle_cpu_s = before.zip(process::cpu_secs(*pid, ticks)).map(|(a, b)| b - a);
    }
    for agent in &mut agents {
        agent.ensure_running()?;
    }
    Ok(rows)
}

/// The server's X.509 authorities as PEM at `path` (the agents' bootstrap bundle).
async fn write_bundle(admin: &Channel, path: &Path) -> anyhow::Result<()> {
    let bundle = bundlepb::bundle_client::BundleClient::new(admin.clone())
        .get_bundle(bundlepb::GetBundleRequest { output_mask: None })
        .await?
        .into_inner();
    ensure!(!bundle.x509_authorities.is_empty(), "bundle has no X.509 authorities");
    let pems: Vec<pem::Pem> =
        bundle.x509_authorities.into_iter().map(|a| pem::Pem::new("CERTIFICATE", a.asn1)).collect();
    std::fs::write(path, pem::encode_many(&pems))?;
    Ok(())
}

async fn join_token(admin: &Channel) -> anyhow::Result<String> {
    Ok(agentpb::agent_client::AgentClient::new(admin.clone())
        .create_join_token(agentpb::CreateJoinTokenRequest {
            ttl: 3600,
            token: String::new(),
            agent_id: None,
        })
        .await?
        .into_inner()
        .value)
}

/// `n` entries under the agent that attests with `token`, each matching `unix:uid:<uid>`.
async fn create_entries(
    admin: &Channel,
    kind: Kind,
    token: &str,
    n: usize,
    uid: u32,
) -> anyhow::Result<()> {
    let parent = format!("/spire/agent/join_token/{token}");
    let entries: Vec<types::Entry> = (0..n)
        .map(|i| types::Entry {
            spiffe_id: Some(spiffe_id(&format!("/bench/{}/workload-{i}", kind.segment()))),
            parent_id: Some(spiffe_id(&parent)),
            selectors: vec![types::Selector { r#type: "unix".into(), value: format!("uid:{uid}") }],
            ..Default::default()
        })
        .collect();
    let mut client = entrypb::entry_client::EntryClient::new(admin.clone());
    // A few hundred entries fit in one request; larger sets go in chunks.
    for chunk in entries.chunks(500) {
        let created = client
            .batch_create_entry(entrypb::BatchCreateEntryRequest {
                entries: chunk.to_vec(),
                output_mask: None,
            })
            .await?
            .into_inner();
        for r in created.results {
            let st = r.status.context("entry result without status")?;
            ensure!(st.code == 0, "creating an entry: {} {}", st.code, st.message);
        }
    }
    Ok(())
}

fn spiffe_id(path: &str) -> types::Spiffeid {
    types::Spiffeid { trust_domain: TD.into(), path: path.into() }
}

/// The bench's `ward-server`.
struct ServerProcess(process::WardServer);

impl ServerProcess {
    fn start(bin: &Path, dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let server = process::WardServer::start(bin, dir)
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Self(server))
    }

    fn tail(&self) -> String {
        self.0.process.tail(20)
    }
}

/// A running agent (ward-agent or spire-agent) and its Workload API socket.
struct AgentProcess {
    kind: Kind,
    process: process::Spawned,
    socket: PathBuf,
}

impl AgentProcess {
    fn start(
        kind: Kind,
        bins: &Bins,
        dir: &Path,
        server_port: u16,
        bundle: &Path,
        token: &str,
    ) -> anyhow::Result<Self> {
        let socket = dir.join("public/api.sock");
        let data = dir.join("data");
        let (bin, config, text) = match kind {
            Kind::Ward => (
                &bins.agent,
                dir.join("agent.toml"),
                format!(
                    "server_address = \"127.0.0.1\"\nserver_port = {server_port}\n\
                     trust_domain = \"{TD}\"\ntrust_bundle_path = {bundle:?}\n\
                     join_token = \"{token}\"\ndata_dir = {data:?}\nsocket_path = {socket:?}\n\
                     admin_socket_path = {admin:?}\nlog_level = \"warn\"\n\n\
                     [workload_attestors.unix]\n",
                    admin = dir.join("private/admin.sock"),
                ),
            ),
            Kind::Spire => {
                std::fs::create_dir_all(dir.join("public"))?;
                (
                    &bins.spire_agent,
                    dir.join("agent.conf"),
                    format!(
                        "agent {{\n  data_dir = {data:?}\n  log_level = \"WARN\"\n  \
                         server_address = \"127.0.0.1\"\n  server_port = \"{server_port}\"\n  \
                         socket_path = {socket:?}\n  trust_domain = \"{TD}\"\n  \
                         trust_bundle_path = {bundle:?}\n}}\n\nplugins {{\n  \
                         KeyManager \"memory\" {{\n    plugin_data {{}}\n  }}\n  \
                         NodeAttestor \"join_token\" {{\n    plugin_data {{}}\n  }}\n  \
                         WorkloadAttestor \"unix\" {{\n    plugin_data {{}}\n  }}\n}}\n"
                    ),
                )
            }
        };
        std::fs::write(&config, text)?;
        let mut cmd = Command::new(bin);
        cmd.arg("run").arg("-config").arg(&config);
        if kind == Kind::Spire {
            cmd.arg("-joinToken").arg(token);
        }
        let process = process::Spawned::start(&mut cmd, dir.join(format!("{}.log", kind.name())))
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Self { kind, process, socket })
    }

    fn pid(&self) -> u32 {
        self.process.id()
    }

    fn tail(&self) -> String {
        self.process.tail(20)
    }

    fn ensure_running(&mut self) -> anyhow::Result<()> {
        match self.process.try_wait()? {
            None => Ok(()),
            Some(status) => bail!("{} exited ({status}); log:\n{}", self.kind.name(), self.tail()),
        }
    }

    /// Waits (bounded) until `FetchX509SVID` answers with the SVIDs of all `entries`.
    async fn wait_serving(&mut self, entries: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY;
        let mut last = anyhow!("not started");
        while Instant::now() < deadline {
            self.ensure_running()?;
            match first_response_new_conn(&self.socket).await {
                Ok(resp) => match check(&resp, self.kind, entries) {
                    Ok(()) => return Ok(()),
                    Err(e) => last = e,
                },
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(last.context(format!("{} did not serve every SVID in time", self.kind.name())))
    }
}

/// A gRPC channel over a new connection to the Unix socket `path`
/// ([`ward_tests::propagation::unix_channel`]), given at most [`CALL`].
async fn unix_channel(path: &Path) -> anyhow::Result<Channel> {
    tokio::time::timeout(CALL, ward_tests::propagation::unix_channel(path))
        .await
        .context("connecting timed out")?
}

type Stream = tonic::Streaming<pb::X509svidResponse>;

/// Starts `FetchX509SVID` (with the security header) and waits for its first response.
async fn fetch_first(
    client: &mut SpiffeWorkloadApiClient<Channel>,
) -> anyhow::Result<(pb::X509svidResponse, Stream)> {
    let call = async {
        let mut req = Request::new(pb::X509svidRequest {});
        req.metadata_mut().insert("workload.spiffe.io", "true".parse()?);
        let mut stream = client.fetch_x509svid(req).await?.into_inner();
        let first = stream.message().await?.context("stream ended without a response")?;
        anyhow::Ok((first, stream))
    };
    tokio::time::timeout(CALL, call).await.context("FetchX509SVID timed out")?
}

async fn first_response_new_conn(socket: &Path) -> anyhow::Result<pb::X509svidResponse> {
    let mut client = SpiffeWorkloadApiClient::new(unix_channel(socket).await?);
    Ok(fetch_first(&mut client).await?.0)
}

/// The answer holds one SVID for each of `kind`'s `entries`, and a bundle.
fn check(resp: &pb::X509svidResponse, kind: Kind, entries: usize) -> anyhow::Result<()> {
    let prefix = format!("spiffe://{TD}/bench/{}/workload-", kind.segment());
    let mut seen = vec![false; entries];
    for svid in &resp.svids {
        let i: usize = svid
            .spiffe_id
            .strip_prefix(&prefix)
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("unexpected SVID {}", svid.spiffe_id))?;
        ensure!(i < entries && !seen[i], "unexpected or repeated SVID {}", svid.spiffe_id);
        ensure!(!svid.x509_svid.is_empty() && !svid.bundle.is_empty(), "empty SVID or bundle");
        seen[i] = true;
    }
    ensure!(resp.svids.len() == entries, "{} of {entries} SVIDs", resp.svids.len());
    Ok(())
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// First-response latencies in µs: `calls` over new connections, then `calls` over one.
async fn latencies(
    agent: &AgentProcess,
    entries: usize,
    calls: u64,
) -> anyhow::Result<(Histogram<u64>, Histogram<u64>)> {
    // Warm: one call on a new connection, one on the connection reused below.
    check(&first_response_new_conn(&agent.socket).await?, agent.kind, entries)?;
    let mut shared = SpiffeWorkloadApiClient::new(unix_channel(&agent.socket).await?);
    check(&fetch_first(&mut shared).await?.0, agent.kind, entries)?;

    let mut new_conn = histogram();
    for _ in 0..calls {
        let start = Instant::now();
        let resp = first_response_new_conn(&agent.socket).await?;
        new_conn.record(micros(start.elapsed()))?;
        check(&resp, agent.kind, entries)?;
    }
    let mut one_conn = histogram();
    for _ in 0..calls {
        let start = Instant::now();
        let (resp, stream) = fetch_first(&mut shared).await?;
        one_conn.record(micros(start.elapsed()))?;
        drop(stream);
        check(&resp, agent.kind, entries)?;
    }
    Ok((new_conn, one_conn))
}

/// `clients` clients, each on its own connection, holding a `FetchX509SVID` stream whose
/// first response has arrived and been checked.
async fn open_streams(
    agent: &AgentProcess,
    entries: usize,
    clients: usize,
) -> anyhow::Result<Vec<(SpiffeWorkloadApiClient<Channel>, Stream)>> {
    let mut open = Vec::with_capacity(clients);
    for _ in 0..clients {
        let mut client = SpiffeWorkloadApiClient::new(unix_channel(&agent.socket).await?);
        let (first, stream) = fetch_first(&mut client).await?;
        check(&first, agent.kind, entries)?;
        open.push((client, stream));
    }
    Ok(open)
}

/// Memory figures of a process from `/proc/<pid>/status`, in KiB.
#[derive(Debug, Clone, Copy)]
struct Mem {
    rss_kib: u64,
    hwm_kib: u64,
    threads: u64,
}

impl Mem {
    fn read(pid: u32) -> anyhow::Result<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| -> anyhow::Result<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .with_context(|| format!("/proc/{pid}/status has no {name}"))
        };
        Ok(Self {
            rss_kib: field("VmRSS:")?,
            hwm_kib: field("VmHWM:")?,
            threads: field("Threads:")?,
        })
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn report(o: &Opts, uid: u32, rows: &[Row], before: Option<f64>, after: Option<f64>) {
    let load = |l: Option<f64>| l.map_or_else(|| "?".to_owned(), |l| format!("{l:.2}"));
    println!(
        "agent: ward-agent and spire-agent v1.13.3 against one ward-server on 127.0.0.1; {} \
         entries per agent (selector unix:uid:{uid}), {} streaming clients, {} calls per \
         latency series, idle window {} s",
        o.entries, o.clients, o.calls, o.idle_secs
    );
    println!("load average (1 min) {} before, {} after", load(before), load(after));
    let mut header = format!("{:<46}", "");
    for r in rows {
        header.push_str(&format!("{:>16}", r.kind.name()));
    }
    if rows.len() == 2 {
        header.push_str(&format!("{:>12}", "ward/spire"));
    }
    println!("{header}");
    type Cell = fn(&Row) -> Option<f64>;
    let lines: [(&str, Cell, &str); 11] = [
        ("FetchX509SVID first response, new conn, p50", |r| Some(ms(&r.new_conn, 0.5)), "ms"),
        ("FetchX509SVID first response, new conn, p99", |r| Some(ms(&r.new_conn, 0.99)), "ms"),
        ("FetchX509SVID first response, one conn, p50", |r| Some(ms(&r.one_conn, 0.5)), "ms"),
        ("FetchX509SVID first response, one conn, p99", |r| Some(ms(&r.one_conn, 0.99)), "ms"),
        ("VmRSS, entries minted, no clients", |r| Some(mib(r.minted.rss_kib)), "MiB"),
        ("VmRSS, streaming clients open", |r| Some(mib(r.streaming.rss_kib)), "MiB"),
        ("VmHWM (peak RSS) after the streams", |r| Some(mib(r.streaming.hwm_kib)), "MiB"),
        ("threads, streaming clients open", |r| Some(r.streaming.threads as f64), ""),
        ("CPU in the idle window (utime+stime)", |r| r.idle_cpu_s, "s"),
        ("idle CPU per hour", |r| r.idle_cpu_s.map(|s| s * 3600.0 / r.idle_window_s), "s/h"),
        ("bench calls checked", |r| Some((r.new_conn.len() + r.one_conn.len()) as f64), ""),
    ];
    for (label, cell, unit) in lines {
        let label = if unit.is_empty() { label.to_owned() } else { format!("{label} ({unit})") };
        let mut line = format!("{label:<46}");
        let values: Vec<Option<f64>> = rows.iter().map(cell).collect();
        for v in &values {
            line.push_str(&v.map_or_else(|| format!("{:>16}", "?"), |v| format!("{v:>16.2}")));
        }
        if let [Some(w), Some(s)] = values[..]
            && s > 0.0
        {
            line.push_str(&format!("{:>12.2}", w / s));
        }
        println!("{line}");
    }
}
