//! A randomized fault test: three `ward-server` replicas, each in its own network namespace,
//! serve concurrent clients that create, update, delete and read registration entries
//! through each replica's admin socket, while a seeded schedule kills (SIGKILL) and restarts
//! replicas, partitions and heals them, moves leadership, and slows one replica's network
//! (a rate-limited link) or disk (a cgroup cap on its write operations, which delays its
//! fsyncs). At the end, with every fault healed, every replica holds every acknowledged
//! write, no entry appears twice, the replicas' state digests are equal, and porcupine finds
//! the recorded history linearizable per entry.
//!
//! Knobs (environment): `WARD_FAULT_SEED` replays a run (the seed is printed first),
//! `WARD_FAULT_ROUNDS` (default 50) and `WARD_FAULT_ROUND_MS` (default 2000) size it.
//! Needs root (network namespaces, cgroups) and Go (the checker; `WARD_PORCUPINE_BIN` names a
//! built one).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::Code;
use ward_proto::spire::api::server::entry::v1 as entrypb;
use ward_proto::spire::api::server::entry::v1::entry_client::EntryClient;
use ward_proto::spire::api::types;
use ward_server::cli::admin_channel;
use ward_tests::cluster::{self as harness, Replica, SETTLE, TRUST_DOMAIN as TD};
use ward_tests::netns::NetLab;
use ward_tests::porcupine::{self, Op, OpKind, Outcome, Verdict};
use ward_tests::slow_disk::SlowDisk;
use ward_tests::wait::{Step, poll_until};

const PREFIX: &str = "wflt";
const REPLICAS: u64 = 3;
/// Entries the clients share: few enough that clients collide on them often.
const KEYS: u64 = 12;
const CLIENTS: usize = 4;
/// An answer later than this is an unknown outcome.
const OP_TIMEOUT: Duration = Duration::from_secs(3);
/// A slow disk: writes per second the slowed replica may submit.
const SLOW_DISK_IOPS: u32 = 20;
/// A slow link: kbit/s each way, and how long packets may queue.
const SLOW_NET_KBIT: u32 = 256;
const SLOW_NET_QUEUE_MS: u32 = 400;

/// The run's size and seed, from the environment.
struct Settings {
    seed: u64,
    rounds: u32,
    round: Duration,
}

fn env_number(name: &str) -> Option<u64> {
    let raw = std::env::var(name).ok()?;
    let n = raw.trim().parse().unwrap_or_else(|e| panic!("{name}={raw:?}: {e}"));
    Some(n)
}

fn settings() -> Settings {
    let seed = env_number("WARD_FAULT_SEED").unwrap_or_else(|| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
        (t.as_nanos() as u64) ^ u64::from(std::process::id()).rotate_left(32)
    });
    let rounds = env_number("WARD_FAULT_ROUNDS").map_or(50, |n| u32::try_from(n).unwrap());
    let round = Duration::from_millis(env_number("WARD_FAULT_ROUND_MS").unwrap_or(2000));
    Settings { seed, rounds, round }
}

/// The socket of a replica's admin API.
fn socket(r: &Replica) -> PathBuf {
    r.dir.join("api.sock")
}

fn key_id(key: u64) -> String {
    format!("fault-k{key}")
}

fn key_spiffe_id(key: u64) -> types::Spiffeid {
    types::Spiffeid { trust_domain: TD.into(), path: format!("/fault/k{key}") }
}

fn key_of(id: &str) -> Option<u64> {
    id.strip_prefix("fault-k")?.parse().ok()
}

/// Nanoseconds since the history's start.
fn since(start: Instant) -> i64 {
    i64::try_from(start.elapsed().as_nanos()).unwrap()
}

/// What one client call produced.
enum Answer {
    /// The call never reached the server (no connection): no effect, not recorded.
    NotSent,
    /// A write's outcome.
    Write(Outcome),
    /// A read: the value, or `None` for no entry.
    Read(Option<String>),
    /// A read that failed: nothing learned, not recorded.
    ReadFailed,
}

/// A write item's status code as an outcome.
fn write_outcome(status: Option<&types::Status>) -> Outcome {
    match status.map(|s| Code::from_i32(s.code)) {
        Some(Code::Ok) => Outcome::Ok,
        Some(Code::AlreadyExists) => Outcome::Exists,
        Some(Code::NotFound) => Outcome::NotFound,
        // Anything else says nothing certain about the write's fate.
        _ => Outcome::Unknown,
    }
}

/// Shared across client tasks: violations seen while running (reads that found an entry
/// twice).
#[derive(Default)]
struct Observed {
    duplicates: Vec<String>,
}

async fn call(
    socket: &Path,
    kind: OpKind,
    key: u64,
    value: &str,
    list: bool,
    observed: &Mutex<Observed>,
) -> Answer {
    let channel = match tokio::time::timeout(OP_TIMEOUT, admin_channel(socket)).await {
        Ok(Ok(c)) => c,
        _ => return Answer::NotSent,
    };
    let mut client = EntryClient::new(channel);
    let id = key_id(key);
    let fut = async {
        match kind {
            OpKind::Create => {
                let entry = types::Entry {
                    id: id.clone(),
                    spiffe_id: Some(key_spiffe_id(key)),
                    parent_id: Some(types::Spiffeid {
                        trust_domain: TD.into(),
                        path: "/fault/parent".into(),
                    }),
                    selectors: vec![types::Selector {
                        r#type: "unix".into(),
                        value: format!("uid:{key}"),
                    }],
                    hint: value.into(),
                    ..Default::default()
                };
                let req =
                    entrypb::BatchCreateEntryRequest { entries: vec![entry], output_mask: None };
                match client.batch_create_entry(req).await {
                    Ok(r) => Answer::Write(write_outcome(
                        r.into_inner().results.first().and_then(|r| r.status.as_ref()),
                    )),
                    Err(_) => Answer::Write(Outcome::Unknown),
                }
            }
            OpKind::Update => {
                let entry =
                    types::Entry { id: id.clone(), hint: value.into(), ..Default::default() };
                let req = entrypb::BatchUpdateEntryRequest {
                    entries: vec![entry],
                    input_mask: Some(types::EntryMask { hint: true, ..Default::default() }),
                    output_mask: None,
                };
                match client.batch_update_entry(req).await {
                    Ok(r) => Answer::Write(write_outcome(
                        r.into_inner().results.first().and_then(|r| r.status.as_ref()),
                    )),
                    Err(_) => Answer::Write(Outcome::Unknown),
                }
            }
            OpKind::Delete => {
                let req = entrypb::BatchDeleteEntryRequest { ids: vec![id.clone()] };
                match client.batch_delete_entry(req).await {
                    Ok(r) => Answer::Write(write_outcome(
                        r.into_inner().results.first().and_then(|r| r.status.as_ref()),
                    )),
                    Err(_) => Answer::Write(Outcome::Unknown),
                }
            }
            OpKind::Get if list => {
                let req = entrypb::ListEntriesRequest {
                    filter: Some(entrypb::list_entries_request::Filter {
                        by_spiffe_id: Some(key_spiffe_id(key)),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                match client.list_entries(req).await {
                    Ok(r) => {
                        let entries = r.into_inner().entries;
                        if entries.len() > 1 || entries.iter().any(|e| e.id != id) {
                            let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
                            observed.lock().unwrap().duplicates.push(format!(
                                "ListEntries by SPIFFE ID of key {key}: entries {ids:?}"
                            ));
                        }
                        Answer::Read(entries.first().map(|e| e.hint.clone()))
                    }
                    Err(_) => Answer::ReadFailed,
                }
            }
            OpKind::Get => {
                let req = entrypb::GetEntryRequest { id: id.clone(), output_mask: None };
                match client.get_entry(req).await {
                    Ok(r) => Answer::Read(Some(r.into_inner().hint)),
                    Err(s) if s.code() == Code::NotFound => Answer::Read(None),
                    Err(_) => Answer::ReadFailed,
                }
            }
        }
    };
    match tokio::time::timeout(OP_TIMEOUT, fut).await {
        Ok(a) => a,
        Err(_) if kind == OpKind::Get => Answer::ReadFailed,
        Err(_) => Answer::Write(Outcome::Unknown),
    }
}

/// One client: random operations on random keys through random replicas until `stop`.
#[allow(clippy::too_many_arguments)]
async fn client(
    index: usize,
    seed: u64,
    sockets: Vec<PathBuf>,
    start: Instant,
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<Vec<Op>>>,
    observed: Arc<Mutex<Observed>>,
) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let key = rng.u64(0..KEYS);
        let replica = rng.u64(1..=REPLICAS);
        let (kind, list) = match rng.u32(0..100) {
            0..30 => (OpKind::Create, false),
            30..60 => (OpKind::Update, false),
            60..75 => (OpKind::Delete, false),
            75..90 => (OpKind::Get, false),
            _ => (OpKind::Get, true),
        };
        seq += 1;
        let value = format!("c{index}-{seq}");
        let socket = &sockets[usize::try_from(replica - 1).unwrap()];
        let call_at = since(start);
        let answer = call(socket, kind, key, &value, list, &observed).await;
        let ret = since(start);
        let op = |outcome, read| Op {
            client: index,
            replica,
            key: key_id(key),
            op: kind,
            value: if kind == OpKind::Get { String::new() } else { value.clone() },
            call: call_at,
            ret: (outcome != Outcome::Unknown).then_some(ret),
            outcome,
            read,
        };
        match answer {
            Answer::NotSent | Answer::ReadFailed => {
                // The replica is down or cut off: do not spin on it.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Answer::Write(outcome) => history.lock().unwrap().push(op(outcome, None)),
            Answer::Read(read) => history.lock().unwrap().push(op(Outcome::Read, read)),
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(5..40))).await;
    }
}

/// The faults in force.
#[derive(Default, Debug)]
struct Faults {
    killed: Option<u64>,
    cut: Option<u64>,
    slow_net: Option<u64>,
    slow_disk: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
enum Action {
    Kill(u64),
    Restart(u64),
    Partition(u64),
    Heal(u64),
    TransferLeader,
    SlowNet(u64),
    FastNet(u64),
    SlowDisk(u64),
    FastDisk(u64),
}

/// Picks the round's action: at most one replica is down or cut off at a time (so a quorum
/// stays), and each fault is undone by a later round.
fn choose(rng: &mut fastrand::Rng, faults: &Faults, leader: Option<u64>) -> Action {
    let any = |rng: &mut fastrand::Rng| rng.u64(1..=REPLICAS);
    // Half of the kills and partitions aim at the leader, when one is known.
    let target = |rng: &mut fastrand::Rng| match leader {
        Some(l) if rng.bool() => l,
        _ => any(rng),
    };
    let mut options: Vec<Action> = Vec::new();
    match (faults.killed, faults.cut) {
        (Some(n), _) => options.extend([Action::Restart(n); 2]),
        (None, Some(n)) => options.extend([Action::Heal(n); 2]),
        (None, None) => {
            options.push(Action::Kill(target(rng)));
            options.push(Action::Partition(target(rng)));
        }
    }
    options.push(Action::TransferLeader);
    options.push(match faults.slow_net {
        Some(n) => Action::FastNet(n),
        None => Action::SlowNet(any(rng)),
    });
    options.push(match faults.slow_disk {
        Some(n) => Action::FastDisk(n),
        None => Action::SlowDisk(any(rng)),
    });
    options[rng.usize(0..options.len())]
}

/// The harness: the replicas, their cgroups and their namespaces (dropped in that order,
/// so no process outlives its namespace or group).
struct Lab {
    cluster: harness::Cluster,
    disk: SlowDisk,
    lab: NetLab,
}

impl Lab {
    /// Three replicas in their own namespaces: replica 1 bootstraps, 2 and 3 join with
    /// credentials made on it; returns once all three are voters.
    fn form() -> Self {
        let lab = NetLab::new(PREFIX, REPLICAS).unwrap();
        let mut cluster = harness::Cluster::in_lab(&lab, REPLICAS).unwrap();
        // Every data directory sits under the cluster's root, on the disk the cap names.
        let disk = SlowDisk::new(PREFIX, REPLICAS, cluster.root()).unwrap();
        cluster.form("").unwrap();
        let lab = Self { cluster, disk, lab };
        for node in 1..=REPLICAS {
            lab.adopt(node);
        }
        lab
    }

    /// Puts replica `n`'s process in its cgroup (`ip netns exec` execs the server, so the
    /// pid is the server's).
    fn adopt(&self, n: u64) {
        let pid = self.cluster.replica(n).unwrap().pid().expect("started");
        self.disk.adopt(n, pid).unwrap();
    }

    fn replica(&mut self, n: u64) -> &mut Replica {
        self.cluster.replica_mut(n).unwrap()
    }

    /// The leader as some running, connected replica sees it.
    fn leader(&self, faults: &Faults) -> Option<u64> {
        self.cluster
            .replicas
            .iter()
            .filter(|r| Some(r.node) != faults.killed && Some(r.node) != faults.cut)
            .find_map(Replica::leader)
    }

    fn apply(&mut self, action: Action, faults: &mut Faults, rng: &mut fastrand::Rng) -> String {
        match action {
            Action::Kill(n) => {
                self.replica(n).kill().unwrap();
                faults.killed = Some(n);
            }
            Action::Restart(n) => {
                self.replica(n).start().unwrap();
                self.adopt(n);
                faults.killed = None;
            }
            Action::Partition(n) => {
                self.lab.partition(n).unwrap();
                faults.cut = Some(n);
            }
            Action::Heal(n) => {
                self.lab.heal(n).unwrap();
                faults.cut = None;
            }
            Action::TransferLeader => {
                let Some(leader) = self.leader(faults) else {
                    return "transfer-leader: no leader known".into();
                };
                let to = (leader + rng.u64(1..REPLICAS) - 1) % REPLICAS + 1;
                let node = to.to_string();
                let out = self
                    .replica(leader)
                    .cli
                    .raw(&["cluster", "transfer-leader"], &["-nodeId", &node])
                    .unwrap();
                return format!(
                    "transfer-leader {leader} -> {to}: {}",
                    if out.status.success() {
                        "asked".to_owned()
                    } else {
                        out.stderr.trim().to_owned()
                    }
                );
            }
            Action::SlowNet(n) => {
                self.lab.slow(n, SLOW_NET_KBIT, SLOW_NET_QUEUE_MS).unwrap();
                faults.slow_net = Some(n);
            }
            Action::FastNet(n) => {
                self.lab.unslow(n).unwrap();
                faults.slow_net = None;
            }
            Action::SlowDisk(n) => {
                self.disk.cap(n, SLOW_DISK_IOPS).unwrap();
                faults.slow_disk = Some(n);
            }
            Action::FastDisk(n) => {
                self.disk.cap(n, 0).unwrap();
                faults.slow_disk = None;
            }
        }
        format!("{action:?}")
    }

    /// Undoes every fault in force.
    fn heal_all(&mut self, faults: &mut Faults, rng: &mut fastrand::Rng) {
        for action in [
            faults.killed.map(Action::Restart),
            faults.cut.map(Action::Heal),
            faults.slow_net.map(Action::FastNet),
            faults.slow_disk.map(Action::FastDisk),
        ]
        .into_iter()
        .flatten()
        {
            self.apply(action, faults, rng);
        }
    }
}

/// Lists every entry a replica holds (all pages).
async fn all_entries(socket: &Path) -> anyhow::Result<Vec<types::Entry>> {
    let mut client = EntryClient::new(admin_channel(socket).await?);
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let req = entrypb::ListEntriesRequest {
            page_size: 500,
            page_token: token.clone(),
            ..Default::default()
        };
        let page = client.list_entries(req).await?.into_inner();
        out.extend(page.entries);
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        token = page.next_page_token;
    }
}

/// For each key, the values it may hold once everything has settled: what each write that
/// took effect and that no later write is known to follow left (a created or updated value;
/// `None` after a delete), plus what any write of unknown outcome would leave. A write `a` is
/// known to be followed by `b` when `b` was called after `a` answered. A replica holding
/// anything else lost an acknowledged write (or resurrected an overwritten one).
fn possible_finals(history: &[Op]) -> BTreeMap<String, Vec<Option<String>>> {
    let effect = |o: &Op| match (o.op, o.outcome) {
        (OpKind::Create | OpKind::Update, Outcome::Ok | Outcome::Unknown) => {
            Some(Some(o.value.clone()))
        }
        (OpKind::Delete, Outcome::Ok | Outcome::Unknown) => Some(None),
        _ => None,
    };
    let mut writes: HashMap<&str, Vec<&Op>> = HashMap::new();
    for op in history.iter().filter(|o| effect(o).is_some()) {
        writes.entry(&op.key).or_default().push(op);
    }
    let mut out = BTreeMap::new();
    for (key, ops) in writes {
        let acked_after = |a: &Op| {
            ops.iter().any(|b| b.outcome == Outcome::Ok && a.ret.is_some_and(|r| b.call > r))
        };
        let possible: Vec<Option<String>> =
            ops.iter().filter(|a| !acked_after(a)).filter_map(|a| effect(a)).collect();
        out.insert(key.to_owned(), possible);
    }
    out
}

#[test]
fn replicas_keep_every_acknowledged_write_and_stay_linearizable_under_random_faults() {
    let settings = settings();
    eprintln!(
        "fault test: WARD_FAULT_SEED={} rounds={} round={:?}",
        settings.seed, settings.rounds, settings.round
    );
    let began = Instant::now();
    let checker = porcupine::checker().unwrap();
    eprintln!("fault test: checker {}", checker.display());

    // Phase 1: three replicas form a cluster.
    let mut lab = Lab::form();
    eprintln!("fault test: cluster formed after {:?}", began.elapsed());

    // Phase 2: clients run while the seeded schedule applies a fault each round.
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let history = Arc::new(Mutex::new(Vec::new()));
    let observed = Arc::new(Mutex::new(Observed::default()));
    let sockets: Vec<PathBuf> = lab.cluster.replicas.iter().map(socket).collect();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let seed = settings.seed ^ (0x9e37_79b9_7f4a_7c15_u64.wrapping_mul(i as u64 + 1));
            runtime.spawn(client(
                i,
                seed,
                sockets.clone(),
                start,
                stop.clone(),
                history.clone(),
                observed.clone(),
            ))
        })
        .collect();
    let mut rng = fastrand::Rng::with_seed(settings.seed);
    let mut faults = Faults::default();
    for round in 0..settings.rounds {
        let leader = lab.leader(&faults);
        let action = choose(&mut rng, &faults, leader);
        let what = lab.apply(action, &mut faults, &mut rng);
        eprintln!("fault test: round {round} at {:?}: {what}", start.elapsed());
        // The round's fault holds while the clients run.
        std::thread::sleep(settings.round);
        for r in &mut lab.cluster.replicas {
            if let Some(d) = r.daemon_mut() {
                d.ensure_running().unwrap();
            }
        }
    }

    // Phase 3: heal everything, stop the clients, wait until the replicas agree.
    lab.heal_all(&mut faults, &mut rng);
    stop.store(true, Ordering::Relaxed);
    runtime.block_on(async {
        for t in tasks {
            t.await.unwrap();
        }
    });
    let rounds_took = start.elapsed();
    let digest = lab.cluster.wait_converged().unwrap();
    eprintln!("fault test: converged at {digest:?}");

    // Phase 4: every entry each replica holds; the final state of every key on every replica
    // is appended to the history as reads made after everything else.
    let mut history = std::mem::take(&mut *history.lock().unwrap());
    let mut failures: Vec<String> = std::mem::take(&mut observed.lock().unwrap().duplicates);
    let finals = possible_finals(&history);
    for r in &lab.cluster.replicas {
        let entries = runtime.block_on(all_entries(&socket(r))).unwrap();
        let mut ids = HashSet::new();
        let mut spiffe_ids = HashSet::new();
        let mut held: HashMap<String, String> = HashMap::new();
        for e in &entries {
            if !ids.insert(e.id.clone()) {
                failures.push(format!("replica {} lists entry {} twice", r.node, e.id));
            }
            let sid = e.spiffe_id.as_ref().map(|s| s.path.clone()).unwrap_or_default();
            if !spiffe_ids.insert(sid.clone()) {
                failures.push(format!("replica {} holds two entries for {sid}", r.node));
            }
            if key_of(&e.id).is_some() {
                held.insert(e.id.clone(), e.hint.clone());
            }
        }
        for (key, possible) in &finals {
            let got = held.get(key).cloned();
            if !possible.contains(&got) {
                failures.push(format!(
                    "replica {}: entry {key} is {got:?}; the writes that may have been last \
                     leave one of {possible:?}",
                    r.node
                ));
            }
        }
        for key in 0..KEYS {
            let call_at = since(start);
            history.push(Op {
                client: CLIENTS,
                replica: r.node,
                key: key_id(key),
                op: OpKind::Get,
                value: String::new(),
                call: call_at,
                ret: Some(since(start)),
                outcome: Outcome::Read,
                read: held.get(&key_id(key)).cloned(),
            });
        }
    }
    let acked = history.iter().filter(|o| o.op != OpKind::Get && o.ret.is_some()).count();
    let unknown = history.iter().filter(|o| o.outcome == Outcome::Unknown).count();
    let reads = history.iter().filter(|o| o.op == OpKind::Get).count();
    eprintln!(
        "fault test: {} operations ({acked} answered writes, {unknown} unknown, {reads} reads)",
        history.len()
    );

    // Phase 5: porcupine, on a directory kept when anything failed.
    let out = tempfile::Builder::new()
        .prefix("ward-faults-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    match porcupine::check(&history, out.path(), Duration::from_secs(120)).unwrap() {
        Verdict::Linearizable(line) => eprintln!("fault test: {line}"),
        Verdict::Violation { output, visualization } => failures.push(format!(
            "the history is not linearizable; visualization: {}\n{output}",
            visualization.display()
        )),
    }
    eprintln!(
        "fault test: {} rounds in {rounds_took:?}, {:?} in all (seed {})",
        settings.rounds,
        began.elapsed(),
        settings.seed
    );
    if !failures.is_empty() {
        for r in &lab.cluster.replicas {
            let _ = std::fs::write(out.path().join(format!("replica{}.log", r.node)), r.log());
        }
        let kept = out.keep();
        panic!(
            "{} failure(s) with WARD_FAULT_SEED={} (history, logs and visualization in {}):\n{}",
            failures.len(),
            settings.seed,
            kept.display(),
            failures.join("\n")
        );
    }
}

/// A replica cut off from the others never answers an admin read from its stale copy: while
/// the majority changes an entry, the isolated replica's `GetEntry`, `ListEntries` and
/// `CountEntries` fail (`Unavailable`: it cannot confirm it is current) instead of returning
/// the old value, and after the partition heals it answers with the new one.
#[test]
fn a_partitioned_replica_refuses_admin_reads_instead_of_answering_stale() {
    let mut lab = Lab::form();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let observed = Mutex::new(Observed::default());
    let ask = |socket: &Path, kind: OpKind, value: &str, list: bool| {
        runtime.block_on(call(socket, kind, 0, value, list, &observed))
    };

    // An entry every replica has applied.
    let leader = lab.cluster.leader().unwrap();
    let leader_socket = socket(lab.replica(leader));
    let created = ask(&leader_socket, OpKind::Create, "before", false);
    assert!(matches!(created, Answer::Write(Outcome::Ok)));
    for r in &lab.cluster.replicas {
        poll_until(&format!("the entry on replica {}", r.node), SETTLE, || {
            Ok(match ask(&socket(r), OpKind::Get, "", false) {
                Answer::Read(Some(v)) if v == "before" => Step::Done(()),
                _ => Step::Retry("not yet".into()),
            })
        })
        .unwrap();
    }

    // A follower is cut off; the majority changes the entry.
    let follower = if leader == 1 { 2 } else { 1 };
    lab.lab.partition(follower).unwrap();
    poll_until("an update through the majority", SETTLE, || {
        Ok(match ask(&leader_socket, OpKind::Update, "after", false) {
            Answer::Write(Outcome::Ok) => Step::Done(()),
            _ => Step::Retry("not acknowledged".into()),
        })
    })
    .unwrap();

    // The cut-off follower must not answer with "before".
    let cut = socket(lab.replica(follower));
    for list in [false, true] {
        match ask(&cut, OpKind::Get, "", list) {
            Answer::Read(Some(v)) => assert_eq!(v, "after", "stale read (list: {list})"),
            Answer::Read(None) => panic!("the cut-off replica lost the entry (list: {list})"),
            Answer::NotSent | Answer::ReadFailed | Answer::Write(_) => {}
        }
    }
    let count = lab.replica(follower).cli.raw(&["entry", "count"], &[]).unwrap();
    assert!(!count.status.success(), "count answered while cut off: {}", count.describe());
    assert!(
        count.stderr.contains("cannot confirm this replica is up to date"),
        "{}",
        count.describe()
    );

    // Healed, it answers with the new value.
    lab.lab.heal(follower).unwrap();
    poll_until("the healed replica to read the update", SETTLE, || {
        Ok(match ask(&cut, OpKind::Get, "", false) {
            Answer::Read(Some(v)) if v == "after" => Step::Done(()),
            Answer::Read(other) => panic!("read {other:?} after the partition healed"),
            _ => Step::Retry("no answer yet".into()),
        })
    })
    .unwrap();
    assert!(observed.lock().unwrap().duplicates.is_empty());
}
