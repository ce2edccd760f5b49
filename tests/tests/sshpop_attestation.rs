#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! sshpop node attestation both ways with SPIRE v1.13.3, real processes on 127.0.0.1, SSH CA
//! keys, host keys and host certificates made here with `ssh-keygen` (OpenSSH's client tools
//! must be installed):
//! 1. an unmodified spire-agent with its sshpop plugin attests to ward-server and to
//!    spire-server, and ward-agent with `[node_attestor.sshpop]` attests to spire-server, all
//!    with the same RSA host certificate (spire-agent signs `ssh-rsa`, ward-agent
//!    `rsa-sha2-512`): `spire-server agent show` prints the same agent (SPIFFE ID from the
//!    certificate's fingerprint, type, re-attestability, no selectors) whichever agent attested
//!    to whichever server (serial and expiry normalised); an ECDSA and an Ed25519 host key
//!    attest to both servers with the same agent IDs;
//! 2. bad evidence — a certificate of another CA, an expired one, a user (not host)
//!    certificate, one without principals, one whose principal is outside `canonical_domain`,
//!    a forged and a replayed challenge answer, a truncated payload — is refused by
//!    ward-server with the code and message spire-server gives for the same evidence; the
//!    agent list does not change and the server keeps serving;
//! 3. sshpop gives an agent no selectors, so no node alias can name sshpop agents; a workload
//!    entry parented to an sshpop agent's ID is served by that agent (ward-agent on
//!    ward-server);
//! 4. with a 20 s agent SVID both agents attest to ward-server again (their node records get
//!    new serials), as sshpop allows.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, ensure};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ward_attest::NodeAttestor;
use ward_attest::node_attestor::sshpop::{SshpopAgentConfig, SshpopAttestor, fingerprint};
use ward_tests::agent::{AgentDirs, wait_healthy};
use ward_tests::agent_scenario::wait_ready;
use ward_tests::cli::{AdminCli, AgentCli};
use ward_tests::daemon::Daemon;
use ward_tests::node_attestation::{
    Tampered, agent_show, agents, hcl_list, plugin_block, refusal, start_spire_agent_with_attestor,
    start_spire_server_with_attestor, start_ward_agent_with_attestor,
    start_ward_server_with_attestor, truncated, wait_attested, wait_attested_again, wait_served,
};
use ward_tests::server::{ServerOptions, ServerProcess};
use ward_tests::spire::SpireBins;
use ward_tests::ward::{ward_agent_bin, ward_server_bin};
use ward_tests::{quoted, quoted_path};

const TD: &str = "example.org";
/// The domain host certificates' first principal must be in.
const DOMAIN: &str = "nodes.example.org";
/// ward-server's agent SVID lifetime: short, so that its agents attest again during the test.
const AGENT_TTL: Duration = Duration::from_secs(20);
const WORKLOAD_ID: &str = "spiffe://example.org/sshpop-workload";

/// Runs `ssh-keygen` in `dir`.
fn ssh_keygen(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ssh-keygen")
        .args(args)
        .current_dir(dir)
        .output()
        .context("running ssh-keygen (OpenSSH client tools)")?;
    ensure!(out.status.success(), "ssh-keygen {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// A key pair `<dir>/<name>` and `<name>.pub`; `kind` is `ed25519`, `ecdsa` or `rsa`.
fn key(dir: &Path, name: &str, kind: &str) -> anyhow::Result<PathBuf> {
    ssh_keygen(dir, &["-q", "-t", kind, "-N", "", "-C", name, "-f", name])?;
    Ok(dir.join(name))
}

/// A host key and its certificate on disk.
struct Host {
    key: PathBuf,
    cert: PathBuf,
}

impl Host {
    /// `kind` host key `name` signed by the CA key `ca` with `sign` (more `ssh-keygen -s`
    /// options: `-h`, `-n`, `-V`).
    fn new(dir: &Path, name: &str, kind: &str, ca: &Path, sign: &[&str]) -> anyhow::Result<Self> {
        let key = key(dir, name, kind)?;
        let mut args = vec!["-q", "-s", ca.to_str().unwrap(), "-I", name];
        args.extend(sign);
        let public = format!("{name}.pub");
        args.push(&public);
        ssh_keygen(dir, &args)?;
        Ok(Self { key, cert: dir.join(format!("{name}-cert.pub")) })
    }

    /// A host certificate for `<name>.<DOMAIN>`, valid from a minute ago for a day.
    fn good(dir: &Path, name: &str, kind: &str, ca: &Path) -> anyhow::Result<Self> {
        let principal = format!("{name}.{DOMAIN}");
        Self::new(dir, name, kind, ca, &["-h", "-n", &principal, "-V", "-1m:+1d"])
    }

    fn config(&self) -> SshpopAgentConfig {
        SshpopAgentConfig { host_key_path: self.key.clone(), host_cert_path: self.cert.clone() }
    }

    fn attestor(&self) -> Arc<dyn NodeAttestor> {
        Arc::new(SshpopAttestor::new(self.config()).unwrap())
    }

    /// `spiffe://example.org/spire/agent/sshpop/<fingerprint of the certificate>`.
    fn agent_id(&self) -> String {
        let text = std::fs::read_to_string(&self.cert).unwrap();
        let wire = STANDARD.decode(text.split_whitespace().nth(1).unwrap()).unwrap();
        format!("spiffe://{TD}/spire/agent/sshpop/{}", fingerprint(&wire))
    }
}

/// The CA's public key line, as `cert_authorities` takes it.
fn ca_line(ca: &Path) -> String {
    std::fs::read_to_string(ca.with_extension("pub")).unwrap().trim().to_owned()
}

fn start_spire_server_sshpop(
    bins: &SpireBins,
    dir: &Path,
    ca: &Path,
) -> anyhow::Result<ServerProcess> {
    let block = plugin_block(
        "sshpop",
        &[("cert_authorities", hcl_list(&[&ca_line(ca)])), ("canonical_domain", quoted(DOMAIN))],
    );
    start_spire_server_with_attestor(&bins.server, &[], dir, &ServerOptions::new(TD), &block)
}

fn start_ward_server_sshpop(bin: &Path, dir: &Path, ca: &Path) -> anyhow::Result<ServerProcess> {
    // The CA key from a file here (cert_authorities_path), inline for spire-server.
    let cas = dir.with_extension("cas");
    std::fs::write(&cas, format!("{}\n", ca_line(ca)))?;
    start_ward_server_with_attestor(
        bin,
        &[],
        dir,
        &ServerOptions { agent_ttl: Some(AGENT_TTL), ..ServerOptions::new(TD) },
        &format!(
            "[node_attestors.sshpop]\ncert_authorities_path = {}\ncanonical_domain = {}",
            quoted_path(&cas),
            quoted(DOMAIN)
        ),
    )
}

/// Starts spire-agent with its sshpop plugin (no join token).
fn start_spire_agent_sshpop(
    bins: &SpireBins,
    dir: &Path,
    port: u16,
    bundle: &Path,
    host: &Host,
) -> anyhow::Result<(Daemon, PathBuf)> {
    let block = plugin_block(
        "sshpop",
        &[("host_key_path", quoted_path(&host.key)), ("host_cert_path", quoted_path(&host.cert))],
    );
    start_spire_agent_with_attestor(&bins.agent, &[], dir, TD, port, bundle, &block)
}

/// Starts ward-agent with `[node_attestor.sshpop]` (no join token).
fn start_ward_agent_sshpop(
    bin: &Path,
    dirs: &AgentDirs,
    port: u16,
    bundle: &Path,
    host: &Host,
) -> anyhow::Result<Daemon> {
    let toml = format!(
        "[node_attestor.sshpop]\nhost_key_path = {}\nhost_cert_path = {}",
        quoted_path(&host.key),
        quoted_path(&host.cert)
    );
    start_ward_agent_with_attestor(bin, &[], dirs, TD, port, bundle, &toml)
}

/// The answer with one bit of its signature blob flipped.
fn flip_signature(answer: Vec<u8>) -> Vec<u8> {
    let mut doc: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    let blob = doc["Signature"]["Blob"].as_str().unwrap().to_owned();
    let mut bytes = STANDARD.decode(blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    doc["Signature"]["Blob"] = STANDARD.encode(&bytes).into();
    serde_json::to_vec(&doc).unwrap()
}

/// Every process the scenario starts; dropped (killed) when the test ends.
#[derive(Default)]
struct Procs {
    agents: Vec<Daemon>,
    spire_server: Option<ServerProcess>,
    ward_server: Option<ServerProcess>,
}

#[test]
fn sshpop_attestation_interoperates_with_spire() {
    let tmp = tempfile::Builder::new().prefix("ward-ssh").tempdir().unwrap();
    let root = tmp.path();
    let spire = SpireBins::locate().unwrap();
    let ward_bin = ward_server_bin().unwrap();
    let agent_bin = ward_agent_bin().unwrap();
    let mut procs = Procs::default();
    if let Err(e) = scenario(root, &spire, &ward_bin, &agent_bin, &mut procs) {
        // The daemons are dropped during the panic, which prints their logs.
        panic!("sshpop scenario failed: {e:#}");
    }
}

fn scenario(
    root: &Path,
    spire: &SpireBins,
    ward_bin: &Path,
    agent_bin: &Path,
    procs: &mut Procs,
) -> anyhow::Result<()> {
    eprintln!("0. an SSH CA and host certificates; both servers trust the CA");
    let keys = root.join("keys");
    std::fs::create_dir_all(&keys)?;
    let ca = key(&keys, "ca", "ed25519")?;
    let other_ca = key(&keys, "other-ca", "ed25519")?;
    let a = Host::good(&keys, "node-a", "rsa", &ca)?;
    let b = Host::good(&keys, "node-b", "ecdsa", &ca)?;
    // Attests in-process only, so the running agents' own node records stay as they are.
    let c = Host::good(&keys, "node-c", "ed25519", &ca)?;
    let foreign = Host::good(&keys, "node-foreign", "ed25519", &other_ca)?;
    let expired = Host::new(
        &keys,
        "node-expired",
        "ed25519",
        &ca,
        &["-h", "-n", "node-expired.nodes.example.org", "-V", "20200101:20200102"],
    )?;
    let user =
        Host::new(&keys, "node-user", "ed25519", &ca, &["-n", "node-user.nodes.example.org"])?;
    let nameless = Host::new(&keys, "node-nameless", "ed25519", &ca, &["-h"])?;
    let outside = Host::new(
        &keys,
        "node-outside",
        "ed25519",
        &ca,
        &["-h", "-n", "node-outside.example.com"],
    )?;

    let spire_server = procs.spire_server.insert(start_spire_server_sshpop(
        spire,
        &root.join("spire-server"),
        &ca,
    )?);
    let ward_server = procs.ward_server.insert(start_ward_server_sshpop(
        ward_bin,
        &root.join("ward-server"),
        &ca,
    )?);
    let spire_on_spire = AdminCli::new(&spire.server, &spire_server.socket_path);
    let spire_on_ward = AdminCli::new(&spire.server, &ward_server.socket_path);
    let ward_cli = AdminCli::new(ward_bin, &ward_server.socket_path);
    wait_ready(&mut spire_server.daemon, &spire_on_spire)?;
    wait_ready(&mut ward_server.daemon, &ward_cli)?;
    let spire_bundle = root.join("spire-bundle.pem");
    std::fs::write(&spire_bundle, spire_on_spire.bundle_show_pem()?)?;
    let ward_bundle = root.join("ward-bundle.pem");
    std::fs::write(&ward_bundle, ward_cli.bundle_show_pem()?)?;

    eprintln!("1. the same host certificate through each agent to each server");
    let id_a = a.agent_id();
    // spire-agent -> spire-server: the reference.
    let (mut agent, _) =
        start_spire_agent_sshpop(spire, &root.join("sa-ss"), spire_server.port, &spire_bundle, &a)?;
    wait_attested(&spire_on_spire, &mut [&mut agent, &mut spire_server.daemon], &id_a)?;
    let reference = agent_show(&spire_on_spire, &id_a)?;
    agent.terminate(Duration::from_secs(10))?;
    eprintln!("{reference}");
    for line in ["Attestation type  : sshpop", "Can re-attest     : true"] {
        ensure!(reference.contains(line), "spire-server's agent show lacks {line:?}:\n{reference}");
    }
    ensure!(reference.ends_with("Selectors:\n"), "sshpop gives no selectors:\n{reference}");
    // ward-agent -> spire-server.
    let dirs = AgentDirs::new(root, "wa-ss");
    let mut agent =
        start_ward_agent_sshpop(agent_bin, &dirs, spire_server.port, &spire_bundle, &a)?;
    wait_healthy(agent_bin, &mut agent, &dirs.admin_socket)?;
    let by_ward_agent = agent_show(&spire_on_spire, &id_a)?;
    agent.terminate(Duration::from_secs(10))?;
    ensure!(
        by_ward_agent == reference,
        "ward-agent -> spire-server:\n{by_ward_agent}\nspire-agent -> spire-server:\n{reference}"
    );
    // spire-agent -> ward-server.
    let (mut agent, _) =
        start_spire_agent_sshpop(spire, &root.join("sa-ws"), ward_server.port, &ward_bundle, &a)?;
    wait_attested(&spire_on_ward, &mut [&mut agent, &mut ward_server.daemon], &id_a)?;
    let on_ward = agent_show(&spire_on_ward, &id_a)?;
    ensure!(
        on_ward == reference,
        "spire-agent -> ward-server:\n{on_ward}\nspire-agent -> spire-server:\n{reference}"
    );
    procs.agents.push(agent);

    eprintln!("2. bad evidence gets spire-server's code and message from ward-server");
    let rt = tokio::runtime::Runtime::new()?;
    // ECDSA and Ed25519 host keys through ward's attestor, and a good attestation on each
    // server recording the answer a replay sends again.
    let recorded = Arc::new(Mutex::new(None));
    for port in [spire_server.port, ward_server.port] {
        let (code, message) = rt.block_on(refusal(port, TD, b.attestor()));
        ensure!(code == tonic::Code::Ok, "node-b (ECDSA) failed: {code:?} {message}");
        let rec = recorded.clone();
        let recorder = Tampered::answer(
            c.attestor(),
            Box::new(move |ans| {
                *rec.lock().unwrap() = Some(ans.clone());
                ans
            }),
        );
        let (code, message) = rt.block_on(refusal(port, TD, recorder));
        ensure!(code == tonic::Code::Ok, "node-c (Ed25519) failed: {code:?} {message}");
    }
    let stored = |cli: &AdminCli| -> anyhow::Result<(Vec<String>, Option<String>)> {
        let listed = agents(cli)?;
        let c_serial = listed.iter().find(|(id, _)| *id == c.agent_id()).map(|(_, s)| s.clone());
        Ok((listed.into_iter().map(|(id, _)| id).collect(), c_serial))
    };
    let before_spire = stored(&spire_on_spire)?;
    let before_ward = stored(&spire_on_ward)?;
    for (id, cli) in [(b.agent_id(), &spire_on_spire), (b.agent_id(), &spire_on_ward)] {
        ensure!(before_spire.0.contains(&id) && before_ward.0.contains(&id), "{id} not listed");
        ensure!(agent_show(cli, &id)?.contains("Attestation type  : sshpop"));
    }
    ensure!(before_ward.1.is_some(), "node-c is not attested to ward-server");
    let replayed = recorded.clone();
    let bad: Vec<(&str, Arc<dyn NodeAttestor>)> = vec![
        ("certificate of another CA", foreign.attestor()),
        ("expired certificate", expired.attestor()),
        ("user certificate", user.attestor()),
        ("certificate without principals", nameless.attestor()),
        ("principal outside canonical_domain", outside.attestor()),
        ("forged challenge answer", Tampered::answer(c.attestor(), Box::new(flip_signature))),
        (
            "replayed challenge answer",
            Tampered::answer(
                c.attestor(),
                Box::new(move |_| replayed.lock().unwrap().clone().unwrap()),
            ),
        ),
        ("truncated payload", Tampered::payload(c.attestor(), Box::new(truncated))),
    ];
    for (what, attestor) in bad {
        let spire_says = rt.block_on(refusal(spire_server.port, TD, attestor.clone()));
        let ward_says = rt.block_on(refusal(ward_server.port, TD, attestor));
        eprintln!("   {what}: spire-server {spire_says:?}, ward-server {ward_says:?}");
        ensure!(spire_says.0 != tonic::Code::Ok, "spire-server accepted the {what}");
        ensure!(
            ward_says == spire_says,
            "{what}: ward-server said {ward_says:?}, spire-server {spire_says:?}"
        );
    }
    ensure!(stored(&spire_on_spire)? == before_spire, "spire-server's agent list changed");
    ensure!(stored(&spire_on_ward)? == before_ward, "ward-server's agent list changed");
    ward_cli.healthcheck().context("ward-server after the bad evidence")?;
    spire_on_ward.healthcheck().context("ward-server after the bad evidence (spire-server CLI)")?;

    eprintln!("3. a workload entry under an sshpop agent's ID (no selectors: no node alias)");
    let dirs_b = AgentDirs::new(root, "wa-ws");
    let mut agent_b =
        start_ward_agent_sshpop(agent_bin, &dirs_b, ward_server.port, &ward_bundle, &b)?;
    wait_healthy(agent_bin, &mut agent_b, &dirs_b.admin_socket)?;
    procs.agents.push(agent_b);
    let uid = std::fs::metadata(root)?.uid();
    spire_on_ward.ok(
        &["entry", "create"],
        &[
            "-parentID",
            &b.agent_id(),
            "-spiffeID",
            WORKLOAD_ID,
            "-selector",
            &format!("unix:uid:{uid}"),
        ],
    )?;
    let cli = AgentCli::new(&spire.agent, &dirs_b.socket);
    wait_served(
        "ward-agent to serve the workload entry",
        &cli,
        &root.join("svids"),
        &mut procs.agents,
        WORKLOAD_ID,
    )?;

    eprintln!("4. both agents attest again (sshpop allows it) when their SVIDs age");
    wait_attested_again(&spire_on_ward, &mut procs.agents, &[id_a.clone(), b.agent_id()])?;
    drop(rt);
    Ok(())
}
