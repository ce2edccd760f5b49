//! Three `ward-server` processes on 127.0.0.1–3 form a Raft cluster: the first bootstraps,
//! the others join with one-time credentials; killing the leader elects another and writes
//! resume; the old leader restarts and catches up; used and expired credentials and the
//! removal of the last voter are refused.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use ward_tests::cli::AdminCli;
use ward_tests::daemon::Daemon;
use ward_tests::wait::{Step, poll_until};
use ward_tests::ward::ward_server_bin;
use ward_tests::{quoted, quoted_path};

const TD: &str = "example.org";
/// Long enough for an election and a few CLI round trips on a loaded machine.
const SETTLE: Duration = Duration::from_secs(60);

/// A free port on `ip`.
fn free_port_on(ip: &str) -> u16 {
    let l = std::net::TcpListener::bind((ip, 0)).unwrap();
    l.local_addr().unwrap().port()
}

struct Replica {
    node: u64,
    dir: PathBuf,
    peer: String,
    config: String,
    daemon: Option<Daemon>,
    cli: AdminCli,
}

impl Replica {
    /// Writes the configuration of replica `node` (on 127.0.0.<node>) with `extra` lines in
    /// its `[cluster]` table.
    fn new(bin: &Path, root: &Path, node: u64, extra: &str) -> Self {
        Self::named(bin, root, &format!("replica{node}"), node, extra)
    }

    /// As [`Replica::new`], in directory `name` under `root`.
    fn named(bin: &Path, root: &Path, name: &str, node: u64, extra: &str) -> Self {
        let ip = format!("127.0.0.{node}");
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("api.sock");
        let peer = format!("{ip}:{}", free_port_on(&ip));
        let config = format!(
            "trust_domain = {td}\nbind_address = {ip_q}\nbind_port = {port}\nsocket_path = {sock}\n\
             data_dir = {data}\nlog_level = \"info\"\n\n[cluster]\nnode_id = {node}\n\
             peer_address = {peer_q}\ntick_interval = \"50ms\"\n{extra}",
            td = quoted(TD),
            ip_q = quoted(&ip),
            port = free_port_on(&ip),
            sock = quoted_path(&socket),
            data = quoted_path(&dir.join("data")),
            peer_q = quoted(&peer),
        );
        Self { node, dir, peer, config, daemon: None, cli: AdminCli::new(bin, &socket) }
    }

    fn start(&mut self, bin: &Path) {
        let mut program = Command::new(bin);
        program.env("NO_COLOR", "1");
        let name = format!("ward-server-{}", self.node);
        self.daemon = Some(
            Daemon::run_with_config(
                &name,
                program,
                &self.dir,
                "--config",
                "server.toml",
                &self.config,
                &[],
            )
            .unwrap(),
        );
    }

    /// SIGKILL, no clean-up.
    fn kill(&mut self) {
        let d = self.daemon.take().expect("running");
        let pid = d.id().to_string();
        Command::new("kill").args(["-KILL", &pid]).status().unwrap();
        drop(d);
    }

    fn status(&self) -> anyhow::Result<serde_json::Value> {
        self.cli.json(&["cluster", "status"], &[])
    }

    fn leader(&self) -> Option<u64> {
        let s = self.status().ok()?;
        let l: u64 = s["leader_id"].as_str()?.parse().ok()?;
        (l != 0).then_some(l)
    }

    /// `cluster add` on this replica for `node` at `address`: the credential text and its
    /// expiry (Unix seconds).
    fn add(&self, node: u64, address: &str, ttl: &str) -> (String, u64) {
        let node = node.to_string();
        let v = self
            .cli
            .json(&["cluster", "add"], &["-nodeId", &node, "-address", address, "-ttl", ttl])
            .unwrap();
        let expires_at = v["expires_at"].as_str().unwrap().parse().unwrap();
        (v["credential"].as_str().unwrap().to_owned(), expires_at)
    }

    fn entry_count(&self) -> anyhow::Result<u64> {
        let v = self.cli.json(&["entry", "count"], &[])?;
        v["count"].as_u64().context("count")
    }
}

/// Waits until `r` answers with a known leader; returns it.
fn wait_leader(r: &Replica) -> u64 {
    poll_until("a leader", SETTLE, || {
        Ok(match r.leader() {
            Some(l) => Step::Done(l),
            None => Step::Retry("no leader yet".into()),
        })
    })
    .unwrap()
}

fn voters(r: &Replica) -> Vec<u64> {
    let Ok(s) = r.status() else { return Vec::new() };
    let mut v: Vec<u64> = s["members"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .filter(|m| m["role"] == "voter")
                .filter_map(|m| m["node_id"].as_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

fn create_entry(r: &Replica, n: u32) -> anyhow::Result<String> {
    r.cli.entry_create(
        "spiffe://example.org/parent",
        &format!("spiffe://example.org/workload/{n}"),
        &format!("unix:uid:{n}"),
    )
}

/// Waits until `r` holds `count` entries.
fn wait_entries(r: &Replica, count: u64) {
    poll_until(&format!("{count} entries on replica {}", r.node), SETTLE, || {
        Ok(match r.entry_count() {
            Ok(n) if n == count => Step::Done(()),
            other => Step::Retry(format!("{other:?}")),
        })
    })
    .unwrap();
}

/// Starts a replica that must fail to join; returns its log.
fn failed_join(bin: &Path, root: &Path, node: u64, join: &str, credential: &str) -> String {
    let cred_file = root.join(format!("refused-cred-{node}"));
    std::fs::write(&cred_file, credential).unwrap();
    let extra = format!(
        "join_address = {}\njoin_credential_file = {}\n",
        quoted(join),
        quoted_path(&cred_file)
    );
    let mut r = Replica::named(bin, root, &format!("refused{node}"), node, &extra);
    r.start(bin);
    let daemon = r.daemon.as_mut().unwrap();
    poll_until("the refused replica to exit", SETTLE, || {
        Ok(match daemon.ensure_running() {
            Ok(()) => Step::Retry("still running".into()),
            Err(_) => Step::Done(()),
        })
    })
    .unwrap();
    daemon.log()
}

#[test]
fn three_replicas_fail_over_and_refuse_bad_joins_and_the_last_voters_removal() {
    let bin = ward_server_bin().unwrap();
    let root = tempfile::tempdir().unwrap();
    let root = root.path();

    // Phase 1: replica 1 bootstraps; removing its only voter is refused.
    let mut r1 = Replica::new(&bin, root, 1, "bootstrap = true\n");
    r1.start(&bin);
    assert_eq!(wait_leader(&r1), 1);
    let out = r1.cli.raw(&["cluster", "remove"], &["-nodeId", "1"]).unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", out.describe());
    assert!(out.stderr.contains("replica 1 is the cluster's last voter"), "{}", out.describe());
    assert_eq!(voters(&r1), vec![1], "nothing changed");

    // Phase 2: replicas 2 and 3 join with credentials made on replica 1.
    let mut joined = Vec::new();
    for node in [2u64, 3] {
        let mut r = Replica::new(&bin, root, node, "");
        let (credential, _) = r1.add(node, &r.peer, "600");
        let file = root.join(format!("cred-{node}"));
        std::fs::write(&file, &credential).unwrap();
        r.config.push_str(&format!(
            "join_address = {}\njoin_credential_file = {}\n",
            quoted(&r1.peer),
            quoted_path(&file)
        ));
        r.start(&bin);
        joined.push((r, credential));
    }
    poll_until("three voters", SETTLE, || {
        Ok(match voters(&r1) {
            v if v == [1, 2, 3] => Step::Done(()),
            v => Step::Retry(format!("voters {v:?}")),
        })
    })
    .unwrap();
    let (mut r2, cred2) = joined.remove(0);
    let (mut r3, _) = joined.remove(0);
    create_entry(&r1, 1).unwrap();
    for r in [&r1, &r2, &r3] {
        wait_entries(r, 1);
    }

    // Phase 3: a used credential and an expired one are refused, and change nothing.
    let log = failed_join(&bin, root, 2, &r1.peer, &cred2);
    assert!(log.contains("join credential unknown or already used"), "{log}");
    let (expiring, expires_at) = r1.add(5, "127.0.0.5:9", "1");
    poll_until("the credential to expire", SETTLE, || {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
        Ok(if now > expires_at { Step::Done(()) } else { Step::Retry(format!("now {now}")) })
    })
    .unwrap();
    let log = failed_join(&bin, root, 5, &r1.peer, &expiring);
    assert!(log.contains("join credential expired"), "{log}");
    assert_eq!(voters(&r1), vec![1, 2, 3]);

    // Phase 4: SIGKILL the leader; another takes over and writes resume.
    let leader = wait_leader(&r1);
    let mut replicas = [&mut r1, &mut r2, &mut r3];
    let (dead, alive): (Vec<_>, Vec<_>) = replicas.iter_mut().partition(|r| r.node == leader);
    let dead = dead.into_iter().next().unwrap();
    dead.kill();
    let survivor = &alive[0];
    let new_leader = poll_until("a new leader", SETTLE, || {
        Ok(match survivor.leader() {
            Some(l) if l != leader => Step::Done(l),
            other => Step::Retry(format!("leader {other:?}")),
        })
    })
    .unwrap();
    assert_ne!(new_leader, leader);
    poll_until("a write after the failover", SETTLE, || {
        Ok(match create_entry(survivor, 2) {
            Ok(_) => Step::Done(()),
            Err(e) => Step::Retry(e.to_string()),
        })
    })
    .unwrap();
    for r in &alive {
        wait_entries(r, 2);
    }

    // Phase 5: the old leader restarts and catches up.
    dead.start(&bin);
    wait_entries(dead, 2);
    drop(alive);
}
