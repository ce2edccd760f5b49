//! An unmodified SPIRE v1.13.3 `spire-agent` keeps serving SVIDs, and picks up entry changes,
//! while a replica it talks to is killed.
//!
//! Three `ward-server` replicas run in network namespaces of their own on one bridge (as in
//! `cluster_faults`); the agent runs in a fourth namespace on the same bridge, whose
//! `/etc/hosts` gives one name, `ward-server.test`, all three replicas' addresses. The agent's
//! `server_address` is that name. spire-agent dials `dns:///<name>:<port>` with gRPC's
//! `round_robin` policy, so it connects to every address the name resolves to and spreads its
//! calls over them; the test checks that it holds a connection to each replica, then:
//!
//! 1. the agent attests with a join token and serves an X509-SVID for the entry made for it;
//! 2. the leader (one of the replicas the agent is connected to) is killed with SIGKILL;
//! 3. a new entry (another SPIFFE ID) is created through a surviving replica: the agent serves
//!    SVIDs for both the old and the new entry, which takes a sync after the kill;
//! 4. the agent's own SVID (a 20 s `agent_ttl`) is renewed after the kill by a survivor, and
//!    the renewed SVID chains to the bundle;
//! 5. the agent then holds connections to both survivors.
//!
//! A second test starts the agent while the replica listed first for the name is dead: the
//! agent attests with the others and holds connections to both.
//!
//! Needs root (network namespaces) and the SPIRE binaries (`WARD_SPIRE_BIN`, set by
//! `tests/run`).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Instant, SystemTime};

use ward_core::x509svid;
use ward_tests::agent_scenario::{
    agent_svid_chain, current_uid, pem_certificates, wait_for_x509_svids,
};
use ward_tests::cli::{AgentCli, CLI_TIMEOUT};
use ward_tests::cluster::{Cluster, Placement, Replica, SETTLE, TRUST_DOMAIN as TD};
use ward_tests::command::run;
use ward_tests::netns::NetLab;
use ward_tests::spire::{AgentProcess, SpireAgentConfig, SpireBins, start_spire_agent_with};
use ward_tests::wait::{Step, poll_until};

const PREFIX: &str = "wagf";
const REPLICAS: u64 = 3;
/// The name the agent's `/etc/hosts` gives every replica's address.
const SERVER_NAME: &str = "ward-server.test";
const AGENT_API_PORT: u16 = ward_tests::cluster::LAB_API_PORT;
/// Short, so the agent renews its own SVID (at half its life) soon after the kill.
const AGENT_TTL: &str = "agent_ttl = \"20s\"\n";
const OLD_ID: &str = "spiffe://example.org/before-failover";
const NEW_ID: &str = "spiffe://example.org/after-failover";

/// Everything the test starts, dropped in field order: the agent, then the replicas, then the
/// namespaces (and the agent's `/etc/netns` directory).
struct Lab {
    agent: Option<AgentProcess>,
    cluster: Cluster,
    net: NetLab,
    /// The agent's member number in `net`.
    agent_member: u64,
}

impl Lab {
    /// Three replicas in their namespaces forming a cluster, and the agent's namespace whose
    /// hosts file resolves [`SERVER_NAME`] to all three.
    fn form() -> Self {
        let mut cluster = Cluster::empty().unwrap();
        let mut net = NetLab::new(PREFIX, REPLICAS).unwrap();
        let agent_member = net.add_client().unwrap();
        let addresses: Vec<String> = (1..=REPLICAS).map(NetLab::address).collect();
        let hosts: Vec<(&str, &str)> =
            addresses.iter().map(|a| (a.as_str(), SERVER_NAME)).collect();
        net.set_hosts(agent_member, &hosts).unwrap();
        for node in 1..=REPLICAS {
            let placement = Placement::in_lab(&net, node).unwrap();
            let name = format!("replica{node}");
            let mut r = Replica::new(&cluster.bin, cluster.root(), &name, node, placement);
            r.server_extra = AGENT_TTL.to_owned();
            cluster.replicas.push(r);
        }
        cluster.form("").unwrap();
        Self { agent: None, cluster, net, agent_member }
    }

    /// The replicas the agent holds an established TCP connection to (their agent API port),
    /// from `ss` inside the agent's namespace, where nothing else runs.
    fn agent_connections(&self) -> BTreeSet<u64> {
        let mut ss = Command::new("ip");
        ss.args(["netns", "exec", self.net.namespace(self.agent_member).unwrap()]).args([
            "ss",
            "-tnH",
            "state",
            "established",
        ]);
        let out = run(&mut ss, CLI_TIMEOUT).unwrap().success().unwrap();
        let mut nodes = BTreeSet::new();
        for line in out.stdout.lines() {
            // Recv-Q Send-Q Local Peer (no State column with a `state` filter).
            let Some(peer) = line.split_whitespace().nth(3) else { continue };
            for node in 1..=REPLICAS {
                if peer == format!("{}:{AGENT_API_PORT}", NetLab::address(node)) {
                    nodes.insert(node);
                }
            }
        }
        nodes
    }

    fn replica_mut(&mut self, node: u64) -> &mut Replica {
        self.cluster.replica_mut(node).unwrap()
    }

    /// Through replica `via`: a join token and an entry for [`OLD_ID`] under the agent's ID,
    /// then `spire-agent` started in its namespace from the bundle `via` shows.
    fn start_agent(&mut self, bins: &SpireBins, via: u64) -> Agent {
        let cli = self.cluster.replica(via).unwrap().cli.clone();
        let token = cli.token_generate(Some(600)).unwrap();
        let agent_id = format!("spiffe://{TD}/spire/agent/join_token/{token}");
        let selector = format!("unix:uid:{}", current_uid().unwrap());
        cli.entry_create(&agent_id, OLD_ID, &selector).unwrap();

        // Every replica's X.509 authority is in the bundle the agent starts from: whichever
        // replica it reaches presents a certificate signed by its own authority.
        let bundle_pem = cli.bundle_show_pem().unwrap();
        let authorities = pem_certificates(&bundle_pem).unwrap();
        assert!(
            authorities.len() >= usize::try_from(REPLICAS).unwrap(),
            "the bundle holds {} X.509 authorities for {REPLICAS} replicas",
            authorities.len()
        );
        let root = self.cluster.root().to_owned();
        let bundle_path = root.join("bundle.pem");
        std::fs::write(&bundle_path, &bundle_pem).unwrap();

        let agent_dir = root.join("agent");
        let config = SpireAgentConfig {
            trust_domain: TD.to_owned(),
            server_address: SERVER_NAME.to_owned(),
            server_port: AGENT_API_PORT,
            socket_path: agent_dir.join("workload.sock"),
            data_dir: agent_dir.join("data"),
            trust_bundle_path: bundle_path,
        };
        let launcher = self.net.launcher(self.agent_member).unwrap();
        let agent = start_spire_agent_with(bins, &launcher, &agent_dir, &config, &token).unwrap();
        let handle = Agent {
            cli: AgentCli::new(&bins.agent, &agent.socket_path),
            data_dir: agent.data_dir.clone(),
            svid_dir: root.join("svids"),
            id: agent_id,
            selector,
            authorities,
        };
        self.agent = Some(agent);
        handle
    }

    /// Waits until the agent serves X509-SVIDs for exactly `ids` (failing at once if the
    /// agent or replica `server` exits).
    fn wait_svids(&mut self, agent: &Agent, server: u64, ids: &[&str]) {
        let expected: BTreeSet<String> = ids.iter().map(|id| (*id).to_owned()).collect();
        let Self { agent: process, cluster, .. } = self;
        let process = &mut process.as_mut().unwrap().daemon;
        let server = cluster.replica_mut(server).unwrap().daemon_mut().unwrap();
        wait_for_x509_svids(process, server, &agent.cli, &agent.svid_dir, &expected).unwrap();
    }

    /// Waits until the agent holds connections to exactly the replicas `nodes`.
    fn wait_connected(&self, nodes: &BTreeSet<u64>) {
        poll_until(&format!("the agent to be connected to replicas {nodes:?}"), SETTLE, || {
            let seen = self.agent_connections();
            Ok(if &seen == nodes { Step::Done(()) } else { Step::Retry(format!("{seen:?}")) })
        })
        .unwrap();
    }
}

/// What the test knows about the running agent.
struct Agent {
    cli: AgentCli,
    data_dir: PathBuf,
    svid_dir: PathBuf,
    /// Its SPIFFE ID (join token).
    id: String,
    /// `unix:uid:<the test's uid>`.
    selector: String,
    /// The X.509 authorities of the bundle it started from.
    authorities: Vec<Vec<u8>>,
}

fn phase(began: Instant, what: &str) {
    eprintln!("[{:>6.1?}] {what}", began.elapsed());
}

/// The SPIRE binaries and a formed lab whose replicas agree on their state.
fn formed(began: Instant) -> (SpireBins, Lab) {
    let bins = SpireBins::locate().unwrap();
    let lab = Lab::form();
    lab.cluster.wait_converged().unwrap();
    phase(began, "three replicas formed a cluster");
    (bins, lab)
}

#[test]
fn spire_agent_keeps_serving_while_its_replica_is_killed() {
    let began = Instant::now();
    let (bins, mut lab) = formed(began);
    let leader = lab.cluster.leader().unwrap();
    let agent = lab.start_agent(&bins, leader);
    phase(began, "spire-agent started in its namespace");
    lab.wait_svids(&agent, leader, &[OLD_ID]);
    phase(began, "the agent serves the first entry's X509-SVID");

    // The name resolves to every replica, and round_robin connects to each address.
    let all: BTreeSet<u64> = (1..=REPLICAS).collect();
    lab.wait_connected(&all);
    phase(began, &format!("the agent is connected to replicas {all:?}"));

    // Kill the leader: a replica the agent is connected to, and the one every write needs.
    lab.replica_mut(leader).kill().unwrap();
    phase(began, &format!("killed replica {leader} (the leader) with SIGKILL"));
    let survivors: BTreeSet<u64> = all.iter().copied().filter(|&n| n != leader).collect();
    let new_leader = lab.cluster.leader().unwrap();
    assert_ne!(new_leader, leader);
    phase(began, &format!("replica {new_leader} leads"));

    // A new entry, made through a survivor after the kill, reaches the agent; the old one
    // stays served.
    let survivor = *survivors.iter().next().unwrap();
    let agent_svid_at_kill = agent_svid_chain(&agent.data_dir).unwrap();
    let cli = &lab.cluster.replica(survivor).unwrap().cli;
    cli.entry_create(&agent.id, NEW_ID, &agent.selector).unwrap();
    lab.wait_svids(&agent, survivor, &[OLD_ID, NEW_ID]);
    phase(began, "the agent serves the old entry's and the new entry's X509-SVIDs");

    // The agent renews its own SVID against the survivors, and the new one chains to the
    // bundle it started from.
    let renewed = poll_until("the agent to renew its SVID after the kill", SETTLE, || {
        lab.agent.as_mut().unwrap().daemon.ensure_running()?;
        let now = agent_svid_chain(&agent.data_dir)?;
        Ok(if now.first() == agent_svid_at_kill.first() {
            Step::Retry("agent SVID unchanged".into())
        } else {
            Step::Done(now)
        })
    })
    .unwrap();
    let renewed_id = x509svid::verify(&renewed, &agent.authorities, SystemTime::now()).unwrap();
    assert_eq!(renewed_id.as_str(), agent.id);
    phase(began, "the agent renewed its SVID after the kill");

    // Rotating its SVID closed the agent's connections; its next calls reconnect to both
    // survivors (and to nothing else).
    lab.wait_connected(&survivors);
    phase(began, &format!("the agent is connected to replicas {survivors:?}; done"));
}

/// The agent starts while the replica whose address comes first for its server name is dead:
/// it attests with, and gets SVIDs from, the others.
#[test]
fn spire_agent_starts_while_the_first_address_is_down() {
    let began = Instant::now();
    let (bins, mut lab) = formed(began);
    // Replica 1's address is the first line for the name in the agent's hosts file.
    lab.replica_mut(1).kill().unwrap();
    let leader = lab.cluster.leader().unwrap();
    phase(began, &format!("killed replica 1; replica {leader} leads"));
    let agent = lab.start_agent(&bins, leader);
    lab.wait_svids(&agent, leader, &[OLD_ID]);
    phase(began, "the agent attested and serves the entry's X509-SVID");
    lab.wait_connected(&[2, 3].into());
    phase(began, "the agent is connected to replicas 2 and 3; done");
}
