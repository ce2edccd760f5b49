//! The steps every node-attestor suite takes with spire-server and ward-server side by side:
//! wait for both and write their bundles, attest one piece of evidence three ways and compare
//! `agent show`, compare the refusals of bad evidence, and check that a workload entry under
//! a node alias is served by the agents the alias groups.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::ensure;
use ward_attest::NodeAttestor;

use super::{agent_show, refusal, wait_attested, wait_served};
use crate::agent::{AgentDirs, wait_healthy};
use crate::agent_scenario::wait_ready;
use crate::cli::{AdminCli, AgentCli};
use crate::daemon::Daemon;
use crate::server::ServerProcess;
use crate::spire::SpireBins;

/// The CLIs of both servers (the `spire-server` CLI on each, ward's own on ward-server) and
/// their bundles on disk.
#[derive(Debug)]
pub struct ServerPair {
    /// `spire-server` CLI on spire-server.
    pub spire_on_spire: AdminCli,
    /// `spire-server` CLI on ward-server.
    pub spire_on_ward: AdminCli,
    /// `ward-server` CLI on ward-server.
    pub ward_cli: AdminCli,
    /// spire-server's bundle, PEM.
    pub spire_bundle: PathBuf,
    /// ward-server's bundle, PEM.
    pub ward_bundle: PathBuf,
}

/// Waits until both servers are ready and writes their bundles under `root`.
///
/// # Errors
/// When a server does not become ready or its bundle cannot be read.
pub fn ready_pair(
    spire: &SpireBins,
    ward_bin: &Path,
    spire_server: &mut ServerProcess,
    ward_server: &mut ServerProcess,
    root: &Path,
) -> anyhow::Result<ServerPair> {
    let pair = ServerPair {
        spire_on_spire: AdminCli::new(&spire.server, &spire_server.socket_path),
        spire_on_ward: AdminCli::new(&spire.server, &ward_server.socket_path),
        ward_cli: AdminCli::new(ward_bin, &ward_server.socket_path),
        spire_bundle: root.join("spire-bundle.pem"),
        ward_bundle: root.join("ward-bundle.pem"),
    };
    wait_ready(&mut spire_server.daemon, &pair.spire_on_spire)?;
    wait_ready(&mut ward_server.daemon, &pair.ward_cli)?;
    std::fs::write(&pair.spire_bundle, pair.spire_on_spire.bundle_show_pem()?)?;
    std::fs::write(&pair.ward_bundle, pair.ward_cli.bundle_show_pem()?)?;
    Ok(pair)
}

/// Starts a spire-agent with its data under a directory, against `127.0.0.1:<port>`,
/// bootstrapped from a bundle; the process and its Workload API socket.
pub type StartSpireAgent<'a> = &'a dyn Fn(&Path, u16, &Path) -> anyhow::Result<(Daemon, PathBuf)>;

/// Starts a ward-agent laid out as the dirs, against `127.0.0.1:<port>`, bootstrapped from a
/// bundle.
pub type StartWardAgent<'a> = &'a dyn Fn(&AgentDirs, u16, &Path) -> anyhow::Result<Daemon>;

/// What `agent show` of an attested agent must hold: its ID, its attestation type, that it
/// may attest again, and selectors (`<type>:<value>`).
#[derive(Debug, Clone)]
pub struct Expected<'a> {
    /// The agent's SPIFFE ID.
    pub id: &'a str,
    /// The attestation type.
    pub attestation_type: &'a str,
    /// Selectors the show must list.
    pub selectors: Vec<String>,
}

/// The same evidence three ways: spire-agent → spire-server (the reference), ward-agent →
/// spire-server and spire-agent → ward-server (agents under `root/sa-ss`, `wa-ss`, `sa-ws`);
/// `agent show` of the expected agent must hold what `expected` says, and be the same each
/// time. The reference, and the spire-agent attested to ward-server, still running.
///
/// # Errors
/// When an agent does not attest or the shows differ or lack something.
#[allow(clippy::too_many_arguments)]
pub fn attest_three_ways(
    root: &Path,
    agent_bin: &Path,
    pair: &ServerPair,
    spire_server: &mut ServerProcess,
    ward_server: &mut ServerProcess,
    expected: &Expected<'_>,
    start_spire_agent: StartSpireAgent<'_>,
    start_ward_agent: StartWardAgent<'_>,
) -> anyhow::Result<(String, Daemon)> {
    let id = expected.id;
    let (mut agent, _) =
        start_spire_agent(&root.join("sa-ss"), spire_server.port, &pair.spire_bundle)?;
    wait_attested(&pair.spire_on_spire, &mut [&mut agent, &mut spire_server.daemon], id)?;
    let reference = agent_show(&pair.spire_on_spire, id)?;
    agent.terminate(Duration::from_secs(10))?;
    eprintln!("{reference}");
    let lines = [
        format!("Attestation type  : {}", expected.attestation_type),
        "Can re-attest     : true".to_owned(),
    ];
    for want in lines.iter().chain(&expected.selectors) {
        ensure!(reference.contains(want), "spire-server's agent show lacks {want:?}:\n{reference}");
    }

    let dirs = AgentDirs::new(root, "wa-ss");
    let mut agent = start_ward_agent(&dirs, spire_server.port, &pair.spire_bundle)?;
    wait_healthy(agent_bin, &mut agent, &dirs.admin_socket)?;
    let by_ward_agent = agent_show(&pair.spire_on_spire, id)?;
    agent.terminate(Duration::from_secs(10))?;
    ensure!(
        by_ward_agent == reference,
        "ward-agent -> spire-server:\n{by_ward_agent}\nspire-agent -> spire-server:\n{reference}"
    );

    let (mut agent, _) =
        start_spire_agent(&root.join("sa-ws"), ward_server.port, &pair.ward_bundle)?;
    wait_attested(&pair.spire_on_ward, &mut [&mut agent, &mut ward_server.daemon], id)?;
    let on_ward = agent_show(&pair.spire_on_ward, id)?;
    ensure!(
        on_ward == reference,
        "spire-agent -> ward-server:\n{on_ward}\nspire-agent -> spire-server:\n{reference}"
    );
    Ok((reference, agent))
}

/// Attests each bad-evidence case in-process to both servers: spire-server must refuse it,
/// and ward-server with the same code and message (both passed through `normalize`, for
/// parts such as the current time that differ between two runs).
///
/// # Errors
/// When spire-server accepts a case or the answers differ.
pub fn compare_refusals(
    rt: &tokio::runtime::Runtime,
    trust_domain: &str,
    spire_port: u16,
    ward_port: u16,
    cases: Vec<(&str, Arc<dyn NodeAttestor>)>,
    normalize: impl Fn(&str) -> String,
) -> anyhow::Result<()> {
    for (what, attestor) in cases {
        let spire_says = rt.block_on(refusal(spire_port, trust_domain, attestor.clone()));
        let ward_says = rt.block_on(refusal(ward_port, trust_domain, attestor));
        eprintln!("   {what}: spire-server {spire_says:?}, ward-server {ward_says:?}");
        ensure!(spire_says.0 != tonic::Code::Ok, "spire-server accepted the {what}");
        ensure!(
            (ward_says.0, normalize(&ward_says.1)) == (spire_says.0, normalize(&spire_says.1)),
            "{what}: ward-server said {ward_says:?}, spire-server {spire_says:?}"
        );
    }
    Ok(())
}

/// Creates, through `cli`, the node alias `alias_id` selecting `selector`, and under it the
/// workload entry `workload_id` for the test's own user (`unix:uid:<uid of root>`).
///
/// # Errors
/// When an entry cannot be created.
pub fn create_alias_and_workload(
    cli: &AdminCli,
    root: &Path,
    alias_id: &str,
    selector: &str,
    workload_id: &str,
) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata(root)?.uid();
    cli.ok(&["entry", "create"], &["-node", "-spiffeID", alias_id, "-selector", selector])?;
    cli.ok(
        &["entry", "create"],
        &["-parentID", alias_id, "-spiffeID", workload_id, "-selector", &format!("unix:uid:{uid}")],
    )?;
    Ok(())
}

/// Waits until the Workload API at each `(who, socket)` serves exactly `workload_id` (read
/// with `spire-agent api fetch x509`, SVIDs written under `root/svids-<who>`), failing early
/// when one of `agents` exits.
///
/// # Errors
/// On timeout or when an agent died.
pub fn wait_workload_served(
    spire_agent: &Path,
    root: &Path,
    sockets: &[(&str, PathBuf)],
    agents: &mut [Daemon],
    workload_id: &str,
) -> anyhow::Result<()> {
    for (who, socket) in sockets {
        let cli = AgentCli::new(spire_agent, socket);
        let svid_dir = root.join(format!("svids-{who}"));
        let what = format!("{who} to serve the alias's workload");
        wait_served(&what, &cli, &svid_dir, agents, workload_id)?;
    }
    Ok(())
}
