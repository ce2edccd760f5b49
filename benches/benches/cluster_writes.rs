#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! `cluster_writes`: replicated writes on a three-replica ward cluster next to a three-member
//! etcd cluster, driven by the same client harness in the same run.
//!
//! The bench starts three release `ward-server` processes on 127.0.0.1–3 (replica 1
//! bootstraps; 2 and 3 join with credentials made by `Cluster.AddMember` on replica 1's admin
//! socket) and three `etcd` members on 127.0.0.1–3 (other ports), each with its own data
//! directory under one temporary directory (the same disk). Both clusters run with their
//! default timing settings.
//!
//! The clients are spread round-robin over the three members of each system: client `i`
//! talks to member `i mod 3`. A ward client sends `BatchCreateEntry` with one entry over the
//! member's admin socket (a follower's replica proposes to its raft group, raft forwards the
//! proposal to the leader, and the call returns once the entry is applied on that follower);
//! an etcd client sends `KV.Put` over gRPC to the member's client URL (etcd forwards to its
//! leader the same way). The etcd value has the byte length of the ward request's `Entry`
//! message, and every ward entry and etcd key is new.
//!
//! For 1, 16 and 256 clients (closed loop: each client sends its next write when the last
//! one is answered), each system gets a warm-up and then a measured phase, cut into rounds
//! that alternate which system goes first (ward then etcd, etcd then ward, ...), so that a
//! change in the machine's speed during the run (other guests on the host) weighs on both
//! alike. After each round nothing is sent for 500 ms, and that gap counts in the round's
//! server CPU (not in its time), so what one system's round leaves running ends on its own
//! account rather than in the other system's round. The report gives each load's
//! throughput ratio over the whole phase and per round, with the rounds' median. Then each
//! gets a warm-up at the paced rate and an open-loop phase at a fixed rate (default 1,000
//! writes/s) whose latency is measured from each write's scheduled send time, so a stall
//! counts in full, with the number of sends that left more than 1 ms late. Beside each paced phase a disk probe appends 300 bytes and
//! runs `fdatasync` every 10 ms in a file of its own on the data directories' disk; the
//! report gives its latencies, and the paced p99 again over only the writes that were not in
//! flight while a probe took over 10 ms, so a stall of the machine's disk (which every
//! system that syncs before answering waits out) is told apart from the system's own.
//! Latencies go into `hdrhistogram`s. The server processes' CPU
//! time per write (utime + stime of all three members) and the machine's load average are
//! reported per phase.
//!
//! Every process is killed when the bench ends, also on an error. It fails on errors only;
//! timings are printed, never gated.
//!
//! Flags (after `--`): `--secs S` (measured seconds per phase, default 10), `--warmup S`
//! (default 2), `--clients 1,16,256`, `--rate R` (default 1000), `--paced-secs S` (default
//! 10), `--max-writes N` (cap per closed-loop phase, default 1,000,000), `--rounds N`
//! (rounds each closed-loop phase is cut into, default 4, at most 10 × `--secs`; with 1,
//! after both warm-ups, ward's whole phase and then etcd's, with no gap), `--only ward|etcd`
//! (measure one system; the other is not started),
//! `--parents N` (parent IDs the ward entries are spread over, default 1,000; 1 puts every
//! entry under one parent), `--server-bin PATH` (or `WARD_SERVER_BIN`; default `<target>/release/ward-server`),
//! `--etcd-bin PATH` (or `ETCD_BIN`; default `/usr/bin/etcd`), `--keep DIR` (put the data
//! directories and logs in `DIR` and keep them, with `paced-ward.csv` and `paced-etcd.csv`:
//! the phase's start as Unix milliseconds on the first line, then per write its scheduled
//! offset in ms and its latency in µs; `disk-ward.csv` and `disk-etcd.csv` are the disk
//! probe's, in the same form; `DIR` must be new or empty). The replicas log at `warn`;
//! `RUST_LOG`, which they inherit, overrides that.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use hdrhistogram::Histogram;
use prost::Message as _;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use ward_benches::process;
use ward_proto::spire::api::server::entry::v1 as entrypb;
use ward_proto::spire::api::types;
use ward_proto::ward::cluster::v1 as clusterpb;

#[path = "cluster_writes/disk_probe.rs"]
mod disk_probe;

use disk_probe::{DiskProbe, PROBE_BYTES, PROBE_EVERY, PROBE_STALL, Probed};

const TD: &str = "example.org";
const MEMBERS: u8 = 3;
/// How long a cluster may take to form, and a write to be answered.
const SETTLE: Duration = Duration::from_secs(60);
/// A paced send that starts later than this after its scheduled time counts as late.
const LATE: Duration = Duration::from_millis(1);
/// Writes in flight at most during the paced phase (beyond that, sends wait and are late).
const PACED_INFLIGHT: usize = 4096;
/// After each closed-loop round, nothing is sent for this long before the next round starts,
/// and the round's server CPU is read at its end: what a system's round left running (an
/// entry image, a background flush, a backend commit) finishes on that system's account
/// instead of slowing the other system's round.
const ROUND_GAP: Duration = Duration::from_millis(500);

struct Opts {
    secs: u64,
    warmup: u64,
    clients: Vec<usize>,
    rate: u64,
    paced_secs: u64,
    max_writes: u64,
    rounds: u64,
    parents: u64,
    only: Option<System>,
    server_bin: Option<PathBuf>,
    etcd_bin: PathBuf,
    keep: Option<PathBuf>,
}

fn opts() -> anyhow::Result<Opts> {
    let mut o = Opts {
        secs: 10,
        warmup: 2,
        clients: vec![1, 16, 256],
        rate: 1000,
        paced_secs: 10,
        max_writes: 1_000_000,
        rounds: 4,
        parents: 1000,
        only: None,
        server_bin: std::env::var_os("WARD_SERVER_BIN").map(PathBuf::from),
        etcd_bin: std::env::var_os("ETCD_BIN").map_or_else(|| "/usr/bin/etcd".into(), Into::into),
        keep: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        // cargo puts `--bench` after the bench's own arguments: a flag left without its
        // value must not take that (or the next flag) as one.
        let mut value = |name: &str| {
            args.next()
                .filter(|v| !v.starts_with("--"))
                .with_context(|| format!("{name} needs a value"))
        };
        let mut number = |name: &str| -> anyhow::Result<u64> {
            let v = value(name)?;
            v.parse().with_context(|| format!("{name}: a whole number, not {v:?}"))
        };
        match a.as_str() {
            "--secs" => o.secs = number("--secs")?,
            "--warmup" => o.warmup = number("--warmup")?,
            "--clients" => {
                o.clients = value("--clients")?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .context("--clients: numbers separated by commas")?;
            }
            "--rate" => o.rate = number("--rate")?,
            "--paced-secs" => o.paced_secs = number("--paced-secs")?,
            "--max-writes" => o.max_writes = number("--max-writes")?,
            "--rounds" => o.rounds = number("--rounds")?,
            "--parents" => o.parents = number("--parents")?,
            "--only" => {
                o.only = Some(match value("--only")?.as_str() {
                    "ward" => System::Ward,
                    "etcd" => System::Etcd,
                    other => bail!("--only: ward or etcd, not {other}"),
                });
            }
            "--server-bin" => o.server_bin = Some(value("--server-bin")?.into()),
            "--etcd-bin" => o.etcd_bin = value("--etcd-bin")?.into(),
            "--keep" => o.keep = Some(value("--keep")?.into()),
            // `cargo bench` passes `--bench`, and a name filter when given one (not used).
            "--bench" => {}
            flag if flag.starts_with('-') => {
                bail!("unknown flag {flag} (the flags are in the bench's docs)")
            }
            _ => {}
        }
    }
    ensure!(
        o.secs > 0 && o.rate > 0 && o.parents > 0 && o.paced_secs > 0 && o.rounds > 0,
        "--secs, --rate, --parents, --paced-secs, --rounds must be > 0"
    );
    ensure!(o.clients.iter().all(|c| *c > 0), "--clients must be > 0");
    // With `--only` there is nothing to alternate with: the phase is one round.
    if o.only.is_some() {
        o.rounds = 1;
        return Ok(o);
    }
    ensure!(
        o.max_writes >= o.rounds,
        "--max-writes {} is below --rounds {}: every round needs a write",
        o.max_writes,
        o.rounds
    );
    ensure!(
        o.rounds <= o.secs.saturating_mul(10),
        "--rounds {}: a round must last at least 100 ms, so at most 10 × --secs ({})",
        o.rounds,
        o.secs.saturating_mul(10)
    );
    Ok(o)
}

fn main() -> ExitCode {
    ward_benches::exit_code("cluster_writes", run())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum System {
    Ward,
    Etcd,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Ward => "ward",
            System::Etcd => "etcd",
        }
    }
}

fn run() -> anyhow::Result<()> {
    let o = opts()?;
    let ward_bin = match &o.server_bin {
        Some(p) => p.clone(),
        None => process::profile_binary("ward-server").context("bench binary path")?,
    };
    ensure!(
        ward_bin.is_file(),
        "{} not found: build it with `cargo build --release -p ward-server --bin ward-server` \
         (same CARGO_TARGET_DIR) or pass --server-bin / WARD_SERVER_BIN",
        ward_bin.display()
    );
    ensure!(
        o.only == Some(System::Ward) || o.etcd_bin.is_file(),
        "{} not found (--etcd-bin / ETCD_BIN)",
        o.etcd_bin.display()
    );
    let temporary = tempfile::tempdir()?;
    let root = match &o.keep {
        Some(dir) => {
            // Data directories left from another run would start replicas of another cluster.
            ensure!(
                std::fs::read_dir(dir).map_or(true, |mut d| d.next().is_none()),
                "--keep {}: the directory must be new or empty",
                dir.display()
            );
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            dir.clone()
        }
        None => temporary.path().to_path_buf(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mut loads = vec![process::load_average()];
    let result = rt.block_on(async {
        // With `--only`, the other system is not started: its idle members would take CPU
        // (heartbeats, timers) from the one measured.
        let wanted = |s: System| o.only.is_none_or(|only| only == s);
        let ward = match wanted(System::Ward) {
            true => Some(WardCluster::start(&ward_bin, &root.join("ward")).await?),
            false => None,
        };
        let etcd = match wanted(System::Etcd) {
            true => Some(EtcdCluster::start(&o.etcd_bin, &root.join("etcd")).await?),
            false => None,
        };
        let value_len = bench_entry(9_999_999, o.parents).encoded_len();
        let mut targets = Vec::new();
        if let Some(ward) = &ward {
            let channels = Arc::new(ward.admin.clone());
            targets.push((
                System::Ward,
                Target::Ward { channels, parents: o.parents },
                ward.pids(),
            ));
        }
        if let Some(etcd) = &etcd {
            let channels = Arc::new(etcd.clients.clone());
            targets.push((System::Etcd, Target::Etcd { channels, value_len }, etcd.pids()));
        }
        let next = Arc::new(AtomicU64::new(0));
        let mut rows = Vec::new();
        let mut by_round = Vec::new();
        // With both systems, the measured time is cut into rounds that alternate which goes
        // first (ward, etcd; etcd, ward; ...), so a change in the machine's speed during the
        // run weighs on both alike.
        let rounds = o.rounds;
        let round_len = Duration::from_secs(o.secs) / u32::try_from(rounds)?;
        let round_max = o.max_writes.div_ceil(rounds);
        for &clients in &o.clients {
            for (system, target, _) in &targets {
                let warm = Duration::from_secs(o.warmup);
                closed_loop(target, clients, warm, o.max_writes, &next)
                    .await
                    .with_context(|| format!("{} warm-up with {clients} clients", system.name()))?;
            }
            let mut merged: Vec<Option<Phase>> = targets.iter().map(|_| None).collect();
            let mut rates = Vec::new();
            for round in 0..rounds {
                let mut order: Vec<usize> = (0..targets.len()).collect();
                if round % 2 == 1 {
                    order.reverse();
                }
                let mut rate = vec![0.0; targets.len()];
                for i in order {
                    let (system, target, pids) = &targets[i];
                    let cpu = ServerCpu::start(pids);
                    let mut phase = closed_loop(target, clients, round_len, round_max, &next)
                        .await
                        .with_context(|| format!("{} with {clients} clients", system.name()))?;
                    if rounds > 1 {
                        tokio::time::sleep(ROUND_GAP).await;
                    }
                    phase.server_cpu_s = cpu.finish();
                    rate[i] = phase.rate();
                    match &mut merged[i] {
                        Some(m) => m.absorb(phase)?,
                        slot @ None => *slot = Some(phase),
                    }
                }
                loads.push(process::load_average());
                rates.push(rate);
            }
            for ((system, ..), phase) in targets.iter().zip(merged) {
                let phase = phase.context("no round measured")?;
                rows.push((*system, format!("{clients} clients"), phase));
            }
            if let [(System::Ward, ..), (System::Etcd, ..)] = targets.as_slice() {
                by_round.push((
                    format!("{clients} clients"),
                    rates.iter().map(|r| r[0] / r[1]).collect::<Vec<f64>>(),
                ));
            }
        }
        for (system, target, pids) in &targets {
            // A warm-up at the same rate first, as before each closed-loop phase: what the
            // last phase left running (a burst's background writes, an entry image, etcd's
            // backend commit) is not counted as this phase's latency.
            let warm = Duration::from_secs(o.warmup);
            if !warm.is_zero() {
                paced(target, o.rate, warm, &next)
                    .await
                    .with_context(|| format!("{} paced warm-up", system.name()))?;
            }
            let cpu = ServerCpu::start(pids);
            let probe = DiskProbe::start(&root.join(format!("disk-probe-{}", system.name())))?;
            let phase = paced(target, o.rate, Duration::from_secs(o.paced_secs), &next).await;
            let disk = probe.finish()?;
            let mut phase =
                phase.with_context(|| format!("{} at {} writes/s", system.name(), o.rate))?;
            phase.server_cpu_s = cpu.finish();
            loads.push(process::load_average());
            if o.keep.is_some() {
                let csv = root.join(format!("paced-{}.csv", system.name()));
                std::fs::write(&csv, &phase.timeline)
                    .with_context(|| format!("writing {}", csv.display()))?;
                let csv = root.join(format!("disk-{}.csv", system.name()));
                std::fs::write(&csv, &disk.timeline)
                    .with_context(|| format!("writing {}", csv.display()))?;
            }
            phase.disk = Some(disk);
            rows.push((*system, format!("{} writes/s", o.rate), phase));
        }
        drop(ward);
        drop(etcd);
        anyhow::Ok((rows, by_round, value_len))
    });
    drop(rt);
    let (rows, by_round, value_len) = result?;
    report(&o, &rows, &by_round, value_len, &loads);
    Ok(())
}

/// The entry a ward client creates for write number `n`: a new SPIFFE ID each time, under
/// one of `parents` parent IDs in turn (as workloads spread over that many nodes).
fn bench_entry(n: u64, parents: u64) -> types::Entry {
    types::Entry {
        spiffe_id: Some(spiffe_id(&format!("/bench/workload/{n}"))),
        parent_id: Some(spiffe_id(&format!("/bench/agent/{}", n % parents))),
        selectors: vec![types::Selector { r#type: "unix".into(), value: format!("uid:{n}") }],
        ..Default::default()
    }
}

fn spiffe_id(path: &str) -> types::Spiffeid {
    types::Spiffeid { trust_domain: TD.into(), path: path.into() }
}

/// etcd's `etcdserverpb.PutRequest`, only the fields the bench sets (1 key, 2 value).
#[derive(Clone, PartialEq, prost::Message)]
struct PutRequest {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// etcd's `etcdserverpb.PutResponse`, only its header (field 1).
#[derive(Clone, PartialEq, prost::Message)]
struct PutResponse {
    #[prost(message, optional, tag = "1")]
    header: Option<ResponseHeader>,
}

/// etcd's `etcdserverpb.ResponseHeader`: the store revision after the put (field 3).
#[derive(Clone, PartialEq, prost::Message)]
struct ResponseHeader {
    #[prost(int64, tag = "3")]
    revision: i64,
}

#[derive(Clone)]
enum Target {
    /// One admin-socket channel per replica, and the number of parent IDs.
    Ward { channels: Arc<Vec<Channel>>, parents: u64 },
    /// One gRPC channel per member's client URL, and the value size.
    Etcd { channels: Arc<Vec<Channel>>, value_len: usize },
}

impl Target {
    /// One write by client `client`, number `n`; an error for anything but success.
    async fn write(&self, client: usize, n: u64) -> anyhow::Result<()> {
        match self {
            Target::Ward { channels, parents } => {
                let ch = channels[client % channels.len()].clone();
                let resp = entrypb::entry_client::EntryClient::new(ch)
                    .batch_create_entry(entrypb::BatchCreateEntryRequest {
                        entries: vec![bench_entry(n, *parents)],
                        output_mask: None,
                    })
                    .await?
                    .into_inner();
                let r = resp.results.first().context("no result")?;
                let st = r.status.as_ref().context("result without status")?;
                ensure!(st.code == 0, "entry refused: {} {}", st.code, st.message);
                Ok(())
            }
            Target::Etcd { channels, value_len } => {
                let ch = channels[client % channels.len()].clone();
                let mut grpc = tonic::client::Grpc::new(ch);
                grpc.ready().await?;
                let req = PutRequest {
                    key: format!("bench/{n}").into_bytes(),
                    value: vec![b'x'; *value_len],
                };
                let resp: tonic::Response<PutResponse> = grpc
                    .unary(
                        tonic::Request::new(req),
                        PathAndQuery::from_static("/etcdserverpb.KV/Put"),
                        tonic_prost::ProstCodec::default(),
                    )
                    .await?;
                let rev = resp.into_inner().header.map_or(0, |h| h.revision);
                ensure!(rev > 0, "put answered without a revision");
                Ok(())
            }
        }
    }
}

fn histogram() -> Histogram<u64> {
    // Microseconds, 1 µs to 60 s, three significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).clamp(1, 60_000_000)
}

#[derive(Debug)]
struct Phase {
    writes: u64,
    wall: Duration,
    latency: Histogram<u64>,
    /// Paced phases: sends that left more than [`LATE`] after their scheduled time.
    late: Option<u64>,
    server_cpu_s: Option<f64>,
    /// Paced phases: the start as Unix ms, then per write `offset ms,latency µs` lines.
    timeline: String,
    /// Paced phases: each write's scheduled send and latency (µs).
    spans: Vec<(Instant, u64)>,
    /// Paced phases: what the disk probe saw meanwhile.
    disk: Option<Probed>,
}

impl Phase {
    #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    fn rate(&self) -> f64 {
        self.writes as f64 / self.wall.as_secs_f64()
    }

    /// Adds a later closed-loop round of the same system and load to this one.
    fn absorb(&mut self, later: Phase) -> anyhow::Result<()> {
        self.writes += later.writes;
        self.wall += later.wall;
        self.latency.add(&later.latency)?;
        self.server_cpu_s = self.server_cpu_s.zip(later.server_cpu_s).map(|(a, b)| a + b);
        Ok(())
    }
}

fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
}

/// `clients` clients each writing one at a time until `dur` has passed or `max` writes are
/// done.
async fn closed_loop(
    target: &Target,
    clients: usize,
    dur: Duration,
    max: u64,
    next: &Arc<AtomicU64>,
) -> anyhow::Result<Phase> {
    let start = Instant::now();
    let deadline = start + dur;
    let done = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let (target, next, done) = (target.clone(), next.clone(), done.clone());
            tokio::spawn(async move {
                let mut h = histogram();
                while Instant::now() < deadline && done.fetch_add(1, Ordering::Relaxed) < max {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let t0 = Instant::now();
                    tokio::time::timeout(SETTLE, target.write(client, n))
                        .await
                        .map_err(|_| anyhow!("no answer within {SETTLE:?}"))??;
                    h.record(micros(t0.elapsed()))?;
                }
                anyhow::Ok(h)
            })
        })
        .collect();
    let mut latency = histogram();
    for t in futures::future::join_all(tasks).await {
        latency.add(t??)?;
    }
    let wall = start.elapsed();
    Ok(Phase {
        writes: latency.len(),
        wall,
        latency,
        late: None,
        server_cpu_s: None,
        timeline: String::new(),
        spans: Vec::new(),
        disk: None,
    })
}

/// Open loop: one write every `1/rate` s for `dur`, each on its own task, latency from its
/// scheduled send time.
async fn paced(
    target: &Target,
    rate: u64,
    dur: Duration,
    next: &Arc<AtomicU64>,
) -> anyhow::Result<Phase> {
    let total = rate.saturating_mul(dur.as_secs()).max(1);
    let interval = Duration::from_nanos(1_000_000_000 / rate);
    let latency = Arc::new(Mutex::new(histogram()));
    let timeline = Arc::new(Mutex::new(Vec::with_capacity(usize::try_from(total).unwrap_or(0))));
    let inflight = Arc::new(tokio::sync::Semaphore::new(PACED_INFLIGHT));
    let start = Instant::now() + Duration::from_millis(10);
    let start_unix_ms = unix_ms().saturating_add(10);
    // The sends are timed by a thread of their own sleeping to each scheduled instant (to
    // tens of microseconds): tokio's timer rounds a deadline up to its next millisecond, so
    // a send it timed left up to 1 ms after its schedule, and that counted as latency.
    let rt = tokio::runtime::Handle::current();
    let target = target.clone();
    let next = next.clone();
    let (latency_all, timeline_all) = (latency.clone(), timeline.clone());
    let pacer = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let mut late = 0u64;
        let mut tasks = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
        for i in 0..total {
            let scheduled = start + interval * u32::try_from(i).context("too many paced writes")?;
            if let Some(wait) = scheduled.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let permit = rt.block_on(inflight.clone().acquire_owned())?;
            if scheduled.elapsed() > LATE {
                late += 1;
            }
            let (target, next, latency) = (target.clone(), next.clone(), latency_all.clone());
            let timeline = timeline_all.clone();
            let offset_ms = (scheduled - start).as_millis();
            tasks.push(rt.spawn(async move {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let client = usize::try_from(i).unwrap_or(0);
                tokio::time::timeout(SETTLE, target.write(client, n))
                    .await
                    .map_err(|_| anyhow!("no answer within {SETTLE:?}"))??;
                let us = micros(scheduled.elapsed());
                latency.lock().unwrap_or_else(std::sync::PoisonError::into_inner).record(us)?;
                timeline
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push((offset_ms, us, scheduled));
                drop(permit);
                anyhow::Ok(())
            }));
        }
        Ok((late, tasks))
    });
    let (late, tasks) = pacer.await??;
    for t in futures::future::join_all(tasks).await {
        t??;
    }
    let wall = start.elapsed();
    let latency = Arc::try_unwrap(latency)
        .map_err(|_| anyhow!("latency still shared"))?
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut lines = timeline.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    lines.sort_unstable();
    let spans = lines.iter().map(|&(_, us, sent)| (sent, us)).collect();
    let timeline = std::iter::once(format!("{start_unix_ms}\n"))
        .chain(lines.iter().map(|(at, us, _)| format!("{at},{us}\n")))
        .collect();
    Ok(Phase {
        writes: latency.len(),
        wall,
        latency,
        late: Some(late),
        server_cpu_s: None,
        timeline,
        spans,
        disk: None,
    })
}

/// CPU time of a cluster's processes over one phase.
struct ServerCpu {
    pids: Vec<u32>,
    ticks: f64,
    before: Option<f64>,
}

impl ServerCpu {
    fn start(pids: &[u32]) -> Self {
        let ticks = process::clock_ticks();
        let before = Self::sum(pids, ticks);
        Self { pids: pids.to_vec(), ticks, before }
    }

    fn sum(pids: &[u32], ticks: f64) -> Option<f64> {
        pids.iter().map(|p| process::cpu_secs(*p, ticks)).sum()
    }

    fn finish(self) -> Option<f64> {
        Some(Self::sum(&self.pids, self.ticks)? - self.before?)
    }
}

fn spawn(cmd: &mut Command, log: PathBuf) -> anyhow::Result<process::Spawned> {
    process::Spawned::start(cmd, log).with_context(|| format!("starting {cmd:?}"))
}

/// A free TCP port on `ip` (bound and released; the server binds it right after).
fn free_port(ip: Ipv4Addr) -> anyhow::Result<u16> {
    Ok(TcpListener::bind((ip, 0))?.local_addr()?.port())
}

fn member_ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, n)
}

/// Retries `f` every 100 ms until it succeeds or [`SETTLE`] passes.
async fn retry<T, F, Fut>(what: &str, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let deadline = Instant::now() + SETTLE;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!("waiting for {what}")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

struct WardCluster {
    procs: Vec<process::Spawned>,
    admin: Vec<Channel>,
}

impl WardCluster {
    /// Replica 1 bootstraps; 2 and 3 join through it with credentials it makes.
    async fn start(bin: &Path, dir: &Path) -> anyhow::Result<Self> {
        let mut procs = Vec::new();
        let mut admin: Vec<Channel> = Vec::new();
        let mut first_peer = String::new();
        for n in 1..=MEMBERS {
            let ip = member_ip(n);
            let rdir = dir.join(format!("replica{n}"));
            std::fs::create_dir_all(&rdir)?;
            let socket = rdir.join("api.sock");
            let peer = format!("{ip}:{}", free_port(ip)?);
            let join = if n == 1 {
                first_peer.clone_from(&peer);
                "bootstrap = true\n".to_owned()
            } else {
                let resp = clusterpb::cluster_client::ClusterClient::new(admin[0].clone())
                    .add_member(clusterpb::AddMemberRequest {
                        node_id: u64::from(n),
                        address: peer.clone(),
                        ttl: 600,
                    })
                    .await?
                    .into_inner();
                let cred = rdir.join("join-credential");
                std::fs::write(&cred, resp.credential)?;
                format!(
                    "join_address = \"{first_peer}\"\njoin_credential_file = \"{}\"\n",
                    cred.display()
                )
            };
            let config = rdir.join("server.toml");
            std::fs::write(
                &config,
                format!(
                    "trust_domain = \"{TD}\"\nbind_address = \"{ip}\"\nbind_port = {port}\n\
                     socket_path = \"{sock}\"\ndata_dir = \"{data}\"\nlog_level = \"warn\"\n\n\
                     [cluster]\nnode_id = {n}\npeer_address = \"{peer}\"\n{join}",
                    port = free_port(ip)?,
                    sock = socket.display(),
                    data = rdir.join("data").display(),
                ),
            )?;
            let mut cmd = Command::new(bin);
            cmd.arg("run").arg("-config").arg(&config);
            procs.push(spawn(&mut cmd, rdir.join("server.log"))?);
            let ch = retry(&format!("replica {n}'s admin socket"), || async {
                let ch = ward_server::cli::admin_channel(&socket).await?;
                let s = clusterpb::cluster_client::ClusterClient::new(ch.clone())
                    .status(clusterpb::StatusRequest {})
                    .await?
                    .into_inner();
                ensure!(s.leader_id != 0, "no leader yet");
                Ok(ch)
            })
            .await
            .with_context(|| procs.last().map(|p| p.tail(10)).unwrap_or_default())?;
            admin.push(ch);
        }
        let first = admin[0].clone();
        retry("three voters", || async {
            let s = clusterpb::cluster_client::ClusterClient::new(first.clone())
                .status(clusterpb::StatusRequest {})
                .await?
                .into_inner();
            let voters = s.members.iter().filter(|m| m.role == "voter").count();
            ensure!(voters == usize::from(MEMBERS), "{voters} voters");
            Ok(())
        })
        .await?;
        Ok(Self { procs, admin })
    }

    fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(process::Spawned::id).collect()
    }
}

struct EtcdCluster {
    procs: Vec<process::Spawned>,
    clients: Vec<Channel>,
}

impl EtcdCluster {
    async fn start(bin: &Path, dir: &Path) -> anyhow::Result<Self> {
        let mut urls = Vec::new();
        for n in 1..=MEMBERS {
            let ip = member_ip(n);
            urls.push((
                format!("http://{ip}:{}", free_port(ip)?),
                format!("http://{ip}:{}", free_port(ip)?),
            ));
        }
        let initial: Vec<String> =
            urls.iter().enumerate().map(|(i, (_, peer))| format!("e{}={peer}", i + 1)).collect();
        let initial = initial.join(",");
        let mut procs = Vec::new();
        for (i, (client, peer)) in urls.iter().enumerate() {
            let mdir = dir.join(format!("member{}", i + 1));
            std::fs::create_dir_all(&mdir)?;
            let mut cmd = Command::new(bin);
            cmd.arg("--name")
                .arg(format!("e{}", i + 1))
                .arg("--data-dir")
                .arg(mdir.join("data"))
                .args(["--listen-client-urls", client, "--advertise-client-urls", client])
                .args(["--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer])
                .args(["--initial-cluster", &initial, "--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "ward-bench", "--logger", "zap"])
                .args(["--log-level", "warn"]);
            procs.push(spawn(&mut cmd, mdir.join("etcd.log"))?);
        }
        let mut clients = Vec::new();
        for (i, (client, _)) in urls.iter().enumerate() {
            let ch = Endpoint::from_shared(client.clone())?.connect_lazy();
            let target = Target::Etcd { channels: Arc::new(vec![ch.clone()]), value_len: 1 };
            retry(&format!("etcd member {}", i + 1), || {
                let target = target.clone();
                async move {
                    tokio::time::timeout(Duration::from_secs(2), target.write(0, u64::MAX))
                        .await
                        .map_err(|_| anyhow!("put timed out"))?
                }
            })
            .await
            .with_context(|| procs[i].tail(10))?;
            clients.push(ch);
        }
        Ok(Self { procs, clients })
    }

    fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(process::Spawned::id).collect()
    }
}

#[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
fn report(
    o: &Opts,
    rows: &[(System, String, Phase)],
    by_round: &[(String, Vec<f64>)],
    value_len: usize,
    loads: &[Option<f64>],
) {
    let loads: Vec<f64> = loads.iter().flatten().copied().collect();
    let lo = loads.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = loads.iter().copied().fold(0.0, f64::max);
    println!(
        "cluster_writes: 3 ward-server replicas vs 3 etcd members on 127.0.0.1-3, clients \
         round-robin over members, {value_len}-byte entries / values, entries under {} parent IDs",
        o.parents
    );
    println!(
        "  {} s measured per closed-loop phase after {} s warm-up{}; paced {} writes/s for {} s; \
         load average (1 min) {lo:.2}-{hi:.2}",
        o.secs,
        o.warmup,
        if o.rounds > 1 {
            format!(", in {} rounds alternating which system goes first", o.rounds)
        } else {
            String::new()
        },
        o.rate,
        o.paced_secs
    );
    println!(
        "  {:<5} {:<16} {:>8} {:>10} {:>9} {:>9} {:>9} {:>10} {:>12}",
        "", "load", "writes", "writes/s", "p50 ms", "p99 ms", "max ms", "late", "srv CPU/w"
    );
    for (system, load, p) in rows {
        let ms = |q: f64| p.latency.value_at_quantile(q) as f64 / 1000.0;
        let cpu = p.server_cpu_s.map_or_else(
            || "-".to_owned(),
            |c| format!("{:.0} µs", c * 1e6 / p.writes.max(1) as f64),
        );
        println!(
            "  {:<5} {:<16} {:>8} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>10} {:>12}",
            system.name(),
            load,
            p.writes,
            p.rate(),
            ms(0.5),
            ms(0.99),
            p.latency.max() as f64 / 1000.0,
            p.late.map_or_else(|| "-".to_owned(), |l| l.to_string()),
            cpu,
        );
    }
    for (system, _, p) in rows {
        let Some(disk) = &p.disk else { continue };
        let ms = |q: f64| disk.latency.value_at_quantile(q) as f64 / 1000.0;
        let stalls = disk.latency.count_between(micros(PROBE_STALL) + 1, u64::MAX);
        println!(
            "  disk probe during {}'s paced phase ({PROBE_BYTES}-byte append + fdatasync every \
             {} ms): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, {stalls} of {} over {} ms",
            system.name(),
            PROBE_EVERY.as_millis(),
            ms(0.5),
            ms(0.99),
            disk.latency.max() as f64 / 1000.0,
            disk.latency.len(),
            PROBE_STALL.as_millis(),
        );
        match disk.outside_stalls(&p.spans) {
            Ok((clean, overlapped)) => println!(
                "    {} writes in flight during none of those stalls: p99 {:.2} ms, max {:.2} \
                 ms ({overlapped} of {} writes left out)",
                system.name(),
                clean.value_at_quantile(0.99) as f64 / 1000.0,
                clean.max() as f64 / 1000.0,
                p.spans.len(),
            ),
            Err(e) => println!("    ({e})"),
        }
    }
    for (load, pair) in ratio_pairs(rows) {
        match by_round.iter().find(|(l, _)| *l == load) {
            Some((_, r)) if r.len() > 1 => {
                let each: Vec<String> = r.iter().map(|x| format!("{x:.2}")).collect();
                println!(
                    "  ward/etcd throughput at {load}: {pair:.2} (by round: {}; median {:.2})",
                    each.join(" "),
                    median(r)
                );
            }
            _ => println!("  ward/etcd throughput at {load}: {pair:.2}"),
        }
    }
}

/// The middle value of `v` (the mean of the two middle ones for an even count).
fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[mid],
        _ => (v[mid - 1] + v[mid]) / 2.0,
    }
}

/// ward's writes/s over etcd's for each load both ran.
fn ratio_pairs(rows: &[(System, String, Phase)]) -> Vec<(String, f64)> {
    rows.iter()
        .filter(|(s, ..)| *s == System::Ward)
        .filter_map(|(_, load, w)| {
            let (.., e) = rows.iter().find(|(s, l, _)| *s == System::Etcd && l == load)?;
            Some((load.clone(), w.rate() / e.rate()))
        })
        .collect()
}
