//! A Raft cluster of `ward-server` processes: each [`Replica`] is one process with its own
//! data dir, admin socket and addresses; a [`Cluster`] bootstraps the first and joins the
//! others with one-time credentials made by a member, as an operator would.
//!
//! Replicas listen on `127.0.0.<node>` by default, or on any address a launcher reaches
//! (e.g. `ip netns exec <ns>` for a replica inside a network namespace of a [`NetLab`]). The admin socket is
//! a Unix socket in the replica's directory, so the CLI reaches every replica from the test
//! process whatever network the replica is in.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::cli::AdminCli;
use crate::command::behind;
use crate::daemon::Daemon;
use crate::netns::NetLab;
use crate::wait::{Step, poll_until};
use crate::ward::ward_server_bin;
use crate::{quoted, quoted_path};

/// The trust domain of the clusters this module starts.
pub const TRUST_DOMAIN: &str = "example.org";

/// Long enough for an election, a join or a catch-up and a few CLI round trips on a loaded
/// machine.
pub const SETTLE: Duration = Duration::from_secs(60);

/// How long a replica gets to stop after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A free TCP port on `ip` right now (released before returning).
pub fn free_port_on(ip: &str) -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind((ip, 0)).with_context(|| format!("binding {ip}:0"))?;
    Ok(l.local_addr()?.port())
}

/// The agent API port of a replica placed in a [`NetLab`] namespace ([`Placement::in_lab`]).
pub const LAB_API_PORT: u16 = 8081;

/// The peer port of a replica placed in a [`NetLab`] namespace.
pub const LAB_PEER_PORT: u16 = 8082;

/// Where a replica listens and how its process is started.
#[derive(Debug, Clone)]
pub struct Placement {
    /// The address of both listeners (agent API and peer).
    pub ip: String,
    /// The agent API port.
    pub port: u16,
    /// The peer (raft) port.
    pub peer_port: u16,
    /// Words run before `ward-server` (empty: run it directly), e.g.
    /// `["ip", "netns", "exec", "<ns>"]`.
    pub launcher: Vec<String>,
}

impl Placement {
    /// `127.0.0.<node>` with free ports, started directly.
    pub fn loopback(node: u64) -> anyhow::Result<Self> {
        let ip = format!("127.0.0.{node}");
        Ok(Self {
            port: free_port_on(&ip)?,
            peer_port: free_port_on(&ip)?,
            ip,
            launcher: Vec::new(),
        })
    }

    /// Inside replica `node`'s namespace of `lab`: its end of the lab's bridge,
    /// [`LAB_API_PORT`] and [`LAB_PEER_PORT`] (the namespace's ports are its own), started
    /// through `ip netns exec`.
    pub fn in_lab(lab: &NetLab, node: u64) -> anyhow::Result<Self> {
        Ok(Self {
            ip: NetLab::address(node),
            port: LAB_API_PORT,
            peer_port: LAB_PEER_PORT,
            launcher: lab.launcher(node)?,
        })
    }
}

/// One `ward-server` replica: its configuration, directory and (while started) process.
#[derive(Debug)]
pub struct Replica {
    /// The node id.
    pub node: u64,
    /// Its directory (config, log, admin socket, `data/`).
    pub dir: PathBuf,
    /// Where it listens.
    pub placement: Placement,
    /// Lines of its `[cluster]` table beyond node id, peer address and tick interval
    /// (`bootstrap`, `join_address`, `snapshot_threshold`…); used at the next start.
    pub cluster_extra: String,
    /// Top-level configuration lines beyond those [`Replica::config`] always writes (e.g.
    /// `agent_ttl = "20s"`); used at the next start.
    pub server_extra: String,
    /// The admin CLI on its socket.
    pub cli: AdminCli,
    bin: PathBuf,
    tick_interval: String,
    daemon: Option<Daemon>,
}

impl Replica {
    /// A replica of node `node` in `root/<name>`, not started.
    pub fn new(bin: &Path, root: &Path, name: &str, node: u64, placement: Placement) -> Self {
        let dir = root.join(name);
        let cli = AdminCli::new(bin, &dir.join("api.sock"));
        Self {
            node,
            dir,
            placement,
            cluster_extra: String::new(),
            server_extra: String::new(),
            cli,
            bin: bin.to_owned(),
            tick_interval: "50ms".to_owned(),
            daemon: None,
        }
    }

    /// A replica on `127.0.0.<node>` in `root/replica<node>`, not started.
    pub fn loopback(bin: &Path, root: &Path, node: u64) -> anyhow::Result<Self> {
        Ok(Self::new(bin, root, &format!("replica{node}"), node, Placement::loopback(node)?))
    }

    /// The peer address (`ip:port`) other replicas reach it at.
    pub fn peer(&self) -> String {
        format!("{}:{}", self.placement.ip, self.placement.peer_port)
    }

    /// The agent API address (`ip:port`).
    pub fn address(&self) -> String {
        format!("{}:{}", self.placement.ip, self.placement.port)
    }

    /// Its data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The configuration file it starts with.
    pub fn config(&self) -> String {
        let p = &self.placement;
        format!(
            "trust_domain = {td}\nbind_address = {ip}\nbind_port = {port}\nsocket_path = {sock}\n\
             data_dir = {data}\nlog_level = \"info\"\n{server_extra}\n[cluster]\nnode_id = {node}\n\
             peer_address = {peer}\ntick_interval = {tick}\n{extra}",
            td = quoted(TRUST_DOMAIN),
            ip = quoted(&p.ip),
            port = p.port,
            sock = quoted_path(&self.dir.join("api.sock")),
            data = quoted_path(&self.data_dir()),
            server_extra = self.server_extra,
            node = self.node,
            peer = quoted(&self.peer()),
            tick = quoted(&self.tick_interval),
            extra = self.cluster_extra,
        )
    }

    /// Sets the raft tick interval (a duration string such as `"50ms"`) for the next start.
    pub fn set_tick_interval(&mut self, tick: &str) {
        tick.clone_into(&mut self.tick_interval);
    }

    /// Makes the next start join through `join_address` with `credential` (written to a file
    /// in its directory), keeping the other lines of `extra`.
    pub fn set_join(
        &mut self,
        join_address: &str,
        credential: &str,
        extra: &str,
    ) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let file = self.dir.join("join-credential");
        std::fs::write(&file, credential)?;
        self.cluster_extra = format!(
            "join_address = {}\njoin_credential_file = {}\n{extra}",
            quoted(join_address),
            quoted_path(&file)
        );
        Ok(())
    }

    /// Starts the process (its log is appended to `<dir>/ward-server-<node>.log`).
    pub fn start(&mut self) -> anyhow::Result<()> {
        if self.daemon.is_some() {
            bail!("replica {} is already started", self.node);
        }
        let mut program = behind(&self.placement.launcher, &self.bin);
        program.env("NO_COLOR", "1");
        let name = format!("ward-server-{}", self.node);
        let config = self.config();
        self.daemon = Some(Daemon::run_with_config(
            &name,
            program,
            &self.dir,
            "--config",
            "server.toml",
            &config,
            &[],
        )?);
        Ok(())
    }

    /// Whether a process was started and not killed or stopped since.
    pub fn is_started(&self) -> bool {
        self.daemon.is_some()
    }

    /// The process id while started.
    pub fn pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Daemon::id)
    }

    /// The running process, to check on it or read its log.
    pub fn daemon_mut(&mut self) -> Option<&mut Daemon> {
        self.daemon.as_mut()
    }

    /// Everything it has logged (over all its starts).
    pub fn log(&self) -> String {
        std::fs::read(self.dir.join(format!("ward-server-{}.log", self.node)))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Waits for the process to exit on its own (a refused start or join, a removal); its
    /// log. The replica counts as stopped afterwards (it may be started again).
    pub fn wait_exited(&mut self) -> anyhow::Result<String> {
        let node = self.node;
        let daemon =
            self.daemon.as_mut().with_context(|| format!("replica {node} is not started"))?;
        poll_until(&format!("replica {node} to exit"), SETTLE, || {
            Ok(match daemon.ensure_running() {
                Ok(()) => Step::Retry("still running".into()),
                Err(_) => Step::Done(()),
            })
        })?;
        let log = daemon.log();
        self.daemon = None;
        Ok(log)
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        let d =
            self.daemon.take().with_context(|| format!("replica {} is not started", self.node))?;
        let pid = d.id().to_string();
        let status = Command::new("kill").args(["-KILL", &pid]).status()?;
        if !status.success() {
            bail!("kill -KILL {pid} failed: {status}");
        }
        drop(d);
        Ok(())
    }

    /// SIGTERM, waiting for it to exit; its exit status.
    pub fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        let mut d =
            self.daemon.take().with_context(|| format!("replica {} is not started", self.node))?;
        d.terminate(STOP_TIMEOUT)
    }

    /// SIGTERM, then start again with the current configuration.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let status = self.terminate()?;
        if !status.success() {
            bail!("replica {} exited with {status} on SIGTERM", self.node);
        }
        self.start()
    }

    /// Removes its data directory (it must be stopped).
    pub fn wipe(&mut self) -> anyhow::Result<()> {
        if self.daemon.is_some() {
            bail!("wiping replica {} while it runs", self.node);
        }
        match std::fs::remove_dir_all(self.data_dir()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// `cluster status -output json`.
    pub fn status(&self) -> anyhow::Result<serde_json::Value> {
        self.cli.json(&["cluster", "status"], &[])
    }

    /// The leader this replica knows of, if any.
    pub fn leader(&self) -> Option<u64> {
        let s = self.status().ok()?;
        let l = json_u64(&s["leader_id"])?;
        (l != 0).then_some(l)
    }

    /// The voters in its view of the membership, sorted (empty if it does not answer).
    pub fn voters(&self) -> Vec<u64> {
        let Ok(s) = self.status() else { return Vec::new() };
        let mut v: Vec<u64> = s["members"]
            .as_array()
            .map(|ms| {
                ms.iter()
                    .filter(|m| m["role"] == "voter")
                    .filter_map(|m| json_u64(&m["node_id"]))
                    .collect()
            })
            .unwrap_or_default();
        v.sort_unstable();
        v
    }

    /// Its store's applied index and state digest (`cluster status`).
    pub fn digest(&self) -> anyhow::Result<StateDigest> {
        let s = self.status()?;
        Ok(StateDigest {
            applied_index: json_u64(&s["applied_index"]).context("applied_index")?,
            state_digest: s["state_digest"].as_str().context("state_digest")?.to_owned(),
        })
    }

    /// `cluster add` on this replica for `node` at `address`: the credential and its expiry
    /// (Unix seconds).
    pub fn add(&self, node: u64, address: &str, ttl: &str) -> anyhow::Result<(String, u64)> {
        let node = node.to_string();
        let v = self
            .cli
            .json(&["cluster", "add"], &["-nodeId", &node, "-address", address, "-ttl", ttl])?;
        let expires_at = json_u64(&v["expires_at"]).context("expires_at")?;
        Ok((v["credential"].as_str().context("credential")?.to_owned(), expires_at))
    }

    /// `cluster remove -nodeId <node>` on this replica.
    pub fn remove(&self, node: u64) -> anyhow::Result<()> {
        self.cli.ok(&["cluster", "remove"], &["-nodeId", &node.to_string()])?;
        Ok(())
    }

    /// `entry count`.
    pub fn entry_count(&self) -> anyhow::Result<u64> {
        let v = self.cli.json(&["entry", "count"], &[])?;
        v["count"].as_u64().context("count")
    }

    /// Creates entry number `n` (see [`create_entry`]); its id.
    pub fn create_entry(&self, n: u64) -> anyhow::Result<String> {
        create_entry(&self.cli, n)
    }

    /// The SPIFFE IDs of every entry it holds, as listed (duplicates kept).
    pub fn entry_spiffe_ids(&self) -> anyhow::Result<Vec<String>> {
        let v = self.cli.json(&["entry", "show"], &[])?;
        let entries = v["entries"].as_array().cloned().unwrap_or_default();
        entries
            .iter()
            .map(|e| {
                let id = &e["spiffe_id"];
                let (td, path) = (id["trust_domain"].as_str(), id["path"].as_str());
                Ok(format!("spiffe://{}{}", td.context("trust_domain")?, path.context("path")?))
            })
            .collect()
    }

    /// Waits until it holds `count` entries.
    pub fn wait_entries(&self, count: u64) -> anyhow::Result<()> {
        poll_until(&format!("{count} entries on replica {}", self.node), SETTLE, || {
            Ok(match self.entry_count() {
                Ok(n) if n == count => Step::Done(()),
                other => Step::Retry(format!("{other:?}")),
            })
        })
    }

    /// Waits until it answers with a known leader; returns it.
    pub fn wait_leader(&self) -> anyhow::Result<u64> {
        poll_until(&format!("a leader known to replica {}", self.node), SETTLE, || {
            Ok(match self.leader() {
                Some(l) => Step::Done(l),
                None => Step::Retry("no leader yet".into()),
            })
        })
    }
}

/// Creates entry number `n` through `cli`: `spiffe://example.org/workload/<n>` under
/// `spiffe://example.org/parent`, selector `unix:uid:<n>`; its id.
pub fn create_entry(cli: &AdminCli, n: u64) -> anyhow::Result<String> {
    cli.entry_create(
        &format!("spiffe://{TRUST_DOMAIN}/parent"),
        &format!("spiffe://{TRUST_DOMAIN}/workload/{n}"),
        &format!("unix:uid:{n}"),
    )
}

/// Writes the `entry create -data` file for entries `numbers` (each as [`create_entry`]
/// makes it) in `dir`, and returns its path.
pub fn entries_file(numbers: std::ops::Range<u64>, dir: &Path) -> anyhow::Result<PathBuf> {
    let entries: Vec<serde_json::Value> = numbers
        .clone()
        .map(|n| {
            serde_json::json!({
                "parent_id": format!("spiffe://{TRUST_DOMAIN}/parent"),
                "spiffe_id": format!("spiffe://{TRUST_DOMAIN}/workload/{n}"),
                "selectors": [{ "type": "unix", "value": format!("uid:{n}") }],
            })
        })
        .collect();
    let file = dir.join(format!("entries-{}-{}.json", numbers.start, numbers.end));
    std::fs::write(&file, serde_json::json!({ "entries": entries }).to_string())?;
    Ok(file)
}

/// Creates entries `numbers` (each as [`create_entry`] makes it) in one `BatchCreateEntry`
/// call (`entry create -data <file>`, the file written in `dir`): one command in the log for
/// the whole batch. Succeeds when every item was created or already exists (a retry of a
/// batch that went through, or partly through, is refused item by item as a duplicate).
pub fn create_entries(
    cli: &AdminCli,
    numbers: std::ops::Range<u64>,
    dir: &Path,
) -> anyhow::Result<()> {
    let file = entries_file(numbers.clone(), dir)?;
    let path = file.to_str().context("a non-UTF-8 temporary path")?;
    let v = cli.json(&["entry", "create"], &["-data", path]);
    let _ = std::fs::remove_file(&file);
    let v = v?;
    let results = v["results"].as_array().context("no results")?;
    let count = numbers.end.saturating_sub(numbers.start);
    if results.len() as u64 != count {
        bail!("{} results for {count} entries", results.len());
    }
    for r in results {
        // gRPC codes: 0 OK (proto JSON may leave it out), 6 AlreadyExists.
        let code = r["status"]["code"].as_i64().unwrap_or(0);
        if code != 0 && code != 6 {
            bail!("an entry was refused: {}", r["status"]);
        }
    }
    Ok(())
}

/// The number `n` of an entry made by [`create_entry`], from its SPIFFE ID.
pub fn entry_number(spiffe_id: &str) -> Option<u64> {
    spiffe_id.strip_prefix(&format!("spiffe://{TRUST_DOMAIN}/workload/"))?.parse().ok()
}

/// A replica's store position and state digest, from `cluster status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDigest {
    /// The store's applied log index.
    pub applied_index: u64,
    /// Hex SHA-256 of its snapshot stream at that index.
    pub state_digest: String,
}

/// A `uint64` from the CLI's JSON (proto JSON prints them as strings).
pub fn json_u64(v: &serde_json::Value) -> Option<u64> {
    v.as_str().and_then(|s| s.parse().ok()).or_else(|| v.as_u64())
}

/// Replicas of one cluster in one temporary directory; dropping it kills every process.
#[derive(Debug)]
pub struct Cluster {
    /// The `ward-server` binary.
    pub bin: PathBuf,
    /// The replicas, in node order of creation.
    pub replicas: Vec<Replica>,
    root: tempfile::TempDir,
}

impl Cluster {
    /// An empty cluster (no replica yet) in a new temporary directory.
    pub fn empty() -> anyhow::Result<Self> {
        Ok(Self { bin: ward_server_bin()?, replicas: Vec::new(), root: tempfile::tempdir()? })
    }

    /// `n` replicas on `127.0.0.1..=n`: node 1 bootstraps, the others join with credentials,
    /// each with `extra` in its `[cluster]` table; returns once all `n` are voters.
    pub fn start_loopback(n: u64, extra: &str) -> anyhow::Result<Self> {
        let mut c = Self::loopback(n)?;
        c.form(extra)?;
        Ok(c)
    }

    /// `n` unstarted replicas on `127.0.0.1..=n` (set them up, then [`Cluster::form`]).
    pub fn loopback(n: u64) -> anyhow::Result<Self> {
        let mut c = Self::empty()?;
        for node in 1..=n {
            let r = Replica::loopback(&c.bin, c.root(), node)?;
            c.replicas.push(r);
        }
        Ok(c)
    }

    /// `n` unstarted replicas `1..=n`, each in its own namespace of `lab`
    /// ([`Placement::in_lab`]; set them up, then [`Cluster::form`]).
    pub fn in_lab(lab: &NetLab, n: u64) -> anyhow::Result<Self> {
        let mut c = Self::empty()?;
        for node in 1..=n {
            let r = Replica::new(
                &c.bin,
                c.root(),
                &format!("replica{node}"),
                node,
                Placement::in_lab(lab, node)?,
            );
            c.replicas.push(r);
        }
        Ok(c)
    }

    /// The temporary directory holding every replica's directory.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Bootstraps the first replica and joins each other one (all must be unstarted), each
    /// with `extra` in its `[cluster]` table; returns once all are voters.
    pub fn form(&mut self, extra: &str) -> anyhow::Result<()> {
        let first = self.replicas.first_mut().context("no replica")?;
        first.cluster_extra = format!("bootstrap = true\n{extra}");
        first.start()?;
        let leader = first.wait_leader()?;
        if leader != first.node {
            bail!("the bootstrapping replica {} sees leader {leader}", first.node);
        }
        for i in 1..self.replicas.len() {
            self.join(i, extra)?;
        }
        let mut all: Vec<u64> = self.replicas.iter().map(|r| r.node).collect();
        all.sort_unstable();
        self.wait_voters(&all)
    }

    /// Makes a credential for replica `self.replicas[i]` on a running member, points it at
    /// the leader's peer address and starts it (with `extra` in its `[cluster]` table).
    pub fn join(&mut self, i: usize, extra: &str) -> anyhow::Result<()> {
        let leader = self.leader()?;
        let (address, node) = {
            let r = self.replicas.get(i).context("no such replica")?;
            (r.peer(), r.node)
        };
        let (credential, _) = self.replica(leader)?.add(node, &address, "600")?;
        let join = self.replica(leader)?.peer();
        let r = self.replicas.get_mut(i).context("no such replica")?;
        r.set_join(&join, &credential, extra)?;
        r.start()
    }

    /// Waits until the running replicas all see exactly `voters` (sorted) as voters.
    pub fn wait_voters(&self, voters: &[u64]) -> anyhow::Result<()> {
        poll_until(&format!("voters {voters:?}"), SETTLE, || {
            for r in self.running() {
                let v = r.voters();
                if v != voters {
                    return Ok(Step::Retry(format!("replica {} sees voters {v:?}", r.node)));
                }
            }
            Ok(Step::Done(()))
        })
    }

    /// The replica with node id `node`.
    pub fn replica(&self, node: u64) -> anyhow::Result<&Replica> {
        self.replicas.iter().find(|r| r.node == node).with_context(|| format!("no replica {node}"))
    }

    /// The replica with node id `node`, mutably.
    pub fn replica_mut(&mut self, node: u64) -> anyhow::Result<&mut Replica> {
        self.replicas
            .iter_mut()
            .find(|r| r.node == node)
            .with_context(|| format!("no replica {node}"))
    }

    /// The replicas that are started.
    pub fn running(&self) -> impl Iterator<Item = &Replica> {
        self.replicas.iter().filter(|r| r.is_started())
    }

    /// Waits until a running replica names a leader that is itself running and agrees it
    /// leads; returns its node id.
    pub fn leader(&self) -> anyhow::Result<u64> {
        poll_until("a running leader", SETTLE, || {
            let mut seen = Vec::new();
            for r in self.running() {
                match r.leader() {
                    Some(l)
                        if self
                            .replica(l)
                            .is_ok_and(|lr| lr.is_started() && lr.leader() == Some(l)) =>
                    {
                        return Ok(Step::Done(l));
                    }
                    other => seen.push((r.node, other)),
                }
            }
            Ok(Step::Retry(format!("(replica, leader it sees): {seen:?}")))
        })
    }

    /// Waits until every running replica reports the same applied index and state digest
    /// (in one round of `cluster status`); returns it.
    pub fn wait_converged(&self) -> anyhow::Result<StateDigest> {
        poll_until("equal state digests on every running replica", SETTLE, || {
            let mut seen = Vec::new();
            for r in self.running() {
                match r.digest() {
                    Ok(d) => seen.push((r.node, d)),
                    Err(e) => return Ok(Step::Retry(format!("replica {}: {e:#}", r.node))),
                }
            }
            let Some((_, first)) = seen.first() else { bail!("no replica is running") };
            if seen.iter().all(|(_, d)| d == first) {
                return Ok(Step::Done(first.clone()));
            }
            Ok(Step::Retry(format!("{seen:?}")))
        })
    }

    /// Waits until every running replica holds `count` entries.
    pub fn wait_entries(&self, count: u64) -> anyhow::Result<()> {
        for r in self.running() {
            r.wait_entries(count)?;
        }
        Ok(())
    }
}
