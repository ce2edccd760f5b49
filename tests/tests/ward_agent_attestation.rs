#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! `ward-agent` attests with a join token to `ward-server` and to an unmodified
//! `spire-server` v1.13.3, real processes on 127.0.0.1:
//! 1. the agent attests, its admin socket reports healthy, and the server's agent list shows
//!    `spiffe://example.org/spire/agent/join_token/<token>`;
//! 2. the data directory is 0700 and the state file 0600;
//! 3. with a 20 s agent SVID the agent renews it (`RenewAgent`) and persists the new one,
//!    which chains to the bundle and names the same agent;
//! 4. a restart reuses the persisted SVID: no second attestation (the join token is
//!    single-use, so one would fail), the same single agent in the server's list;
//! 5. a second agent presenting the used token is refused: exit code 1 and the server's
//!    message.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{Context, ensure};
use ward_core::{SpiffeId, x509svid};
use ward_tests::agent::{AgentConfig, AgentDirs, start_ward_agent, wait_healthy};
use ward_tests::agent_scenario::{pem_certificates, wait_ready};
use ward_tests::cli::AdminCli;
use ward_tests::command::run;
use ward_tests::node_attestation::agent_ids;
use ward_tests::server::{ServerOptions, ServerProcess};
use ward_tests::spire::{SpireBins, start_spire_server};
use ward_tests::wait::{Step, poll_until};
use ward_tests::ward::{start_ward_server, ward_agent_bin, ward_server_bin};

const TD: &str = "example.org";
const AGENT_TTL: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy)]
enum Kind {
    Ward,
    Spire,
}

fn agent_config(dirs: &AgentDirs, port: u16, bundle: &Path, token: &str) -> String {
    AgentConfig {
        trust_domain: TD.to_owned(),
        server_port: port,
        bundle_path: bundle.to_owned(),
        join_token: token.to_owned(),
        extra: String::new(),
    }
    .render(dirs)
}

/// The persisted agent SVID chain (DER, leaf first).
fn persisted_svid(data_dir: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let path = data_dir.join("agent-data.json");
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    pem_certificates(doc["svid"].as_str().context("no svid")?)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn scenario(kind: Kind) -> anyhow::Result<()> {
    let tmp = tempfile::Builder::new().prefix("ward-ag").tempdir()?;
    let root = tmp.path();
    let spire = SpireBins::locate()?;
    let agent_bin = ward_agent_bin()?;
    let options = ServerOptions { agent_ttl: Some(AGENT_TTL), ..ServerOptions::new(TD) };
    eprintln!("[{kind:?}] 1. start the server; token; bundle");
    let (native_bin, mut server): (PathBuf, ServerProcess) = match kind {
        Kind::Ward => {
            let bin = ward_server_bin()?;
            let s = start_ward_server(&bin, &root.join("server"), &options)?;
            (bin, s)
        }
        Kind::Spire => {
            (spire.server.clone(), start_spire_server(&spire, &root.join("server"), &options)?)
        }
    };
    let native = AdminCli::new(&native_bin, &server.socket_path);
    let spire_cli = AdminCli::new(&spire.server, &server.socket_path);
    wait_ready(&mut server.daemon, &native)?;
    let token = native.token_generate(Some(600))?;
    let bundle_pem = native.bundle_show_pem()?;
    let bundle_ders = pem_certificates(&bundle_pem)?;
    let bundle_path = root.join("bundle.pem");
    std::fs::write(&bundle_path, &bundle_pem)?;
    let agent_id = format!("spiffe://{TD}/spire/agent/join_token/{token}");

    eprintln!("[{kind:?}] 2. ward-agent attests with the join token");
    let dirs = AgentDirs::new(root, "agent");
    let config = agent_config(&dirs, server.port, &bundle_path, &token);
    let mut agent = start_ward_agent(&agent_bin, &dirs, &config)?;
    wait_healthy(&agent_bin, &mut agent, &dirs.admin_socket)?;
    ensure!(agent_ids(&spire_cli)? == vec![agent_id.clone()], "agent list after attestation");
    let first = persisted_svid(&dirs.data_dir)?;
    let id = x509svid::verify(&first, &bundle_ders, SystemTime::now())
        .context("persisted agent SVID against the bundle")?;
    ensure!(id == SpiffeId::parse(&agent_id)?, "persisted SVID names {id}");

    eprintln!("[{kind:?}] 3. private data directory and state file");
    ensure!(mode(&dirs.data_dir) == 0o700, "data dir mode {:o}", mode(&dirs.data_dir));
    let state = dirs.data_dir.join("agent-data.json");
    ensure!(mode(&state) == 0o600, "state file mode {:o}", mode(&state));

    eprintln!("[{kind:?}] 4. the agent renews its SVID at half-life and persists it");
    let renewed = poll_until("the agent to renew its SVID", Duration::from_secs(60), || {
        agent.ensure_running()?;
        let now = persisted_svid(&dirs.data_dir)?;
        Ok(if now[0] == first[0] { Step::Retry("unchanged".into()) } else { Step::Done(now) })
    })?;
    let id = x509svid::verify(&renewed, &bundle_ders, SystemTime::now())
        .context("renewed agent SVID against the bundle")?;
    ensure!(id.as_str() == agent_id, "renewed SVID names {id}");
    ensure!(mode(&state) == 0o600, "state file mode after renewal {:o}", mode(&state));
    wait_healthy(&agent_bin, &mut agent, &dirs.admin_socket)?;

    eprintln!("[{kind:?}] 5. a restart reuses the persisted SVID without attesting again");
    agent.restart(Duration::from_secs(15))?;
    wait_healthy(&agent_bin, &mut agent, &dirs.admin_socket)?;
    let log = agent.log();
    ensure!(log.contains("SVID loaded"), "the restarted agent did not load its SVID");
    ensure!(
        log.matches("node attestation was successful").count() == 1,
        "the agent attested more than once"
    );
    ensure!(agent_ids(&spire_cli)? == vec![agent_id.clone()], "agent list after restart");
    agent.ensure_running()?;

    eprintln!("[{kind:?}] 6. a used join token is refused with a clear error");
    let dirs2 = AgentDirs::new(root, "agent2");
    let config2 = agent_config(&dirs2, server.port, &bundle_path, &token);
    std::fs::create_dir_all(&dirs2.dir)?;
    std::fs::write(dirs2.dir.join("agent.toml"), &config2)?;
    let out = run(
        Command::new(&agent_bin).arg("run").arg("-config").arg(dirs2.dir.join("agent.toml")),
        Duration::from_secs(60),
    )?;
    ensure!(out.status.code() == Some(1), "second agent: {}", out.describe());
    ensure!(
        out.stderr.contains("join token does not exist or has already been used"),
        "second agent: {}",
        out.describe()
    );
    ensure!(agent_ids(&spire_cli)? == vec![agent_id], "agent list after the refused token");

    agent.terminate(Duration::from_secs(15))?;
    Ok(())
}

#[test]
fn ward_agent_attests_to_ward_server() {
    if let Err(e) = scenario(Kind::Ward) {
        panic!("{e:#}");
    }
}

#[test]
fn ward_agent_attests_to_spire_server() {
    if let Err(e) = scenario(Kind::Spire) {
        panic!("{e:#}");
    }
}
