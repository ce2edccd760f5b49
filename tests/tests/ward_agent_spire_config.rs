#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! One spire-agent configuration file, two agents: an unmodified `spire-agent` v1.13.3 and
//! `ward-agent` each run `run -config agent.conf -expandEnv` on the SAME HCL file (the shape
//! the SPIRE suites here write, `ward_tests::spire::SpireAgentConfig`, with its paths under
//! `${AGENT_DIR}`), against one `ward-server`, real processes on 127.0.0.1:
//! 1. both attest with their join token (`-joinToken`) and the server lists both agents;
//! 2. both serve their Workload API socket: SPIRE's own client gets the X509-SVID of the entry
//!    registered under each agent;
//! 3. a file using what ward-agent lacks (a log file, the http_challenge node attestor, a misspelt
//!    key) stops ward-agent at once with status 1 and one sentence per item, before it creates
//!    its socket or data directory; spire-agent refuses the misspelt key too;
//! 4. ward-agent does not take over spire-agent's data directory: it stops on spire-agent's
//!    `agent-data.json`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::ensure;
use ward_tests::agent::{WorkloadClient, wait_healthy};
use ward_tests::agent_scenario::wait_ready;
use ward_tests::cli::AdminCli;
use ward_tests::command::{CommandOutput, run};
use ward_tests::daemon::Daemon;
use ward_tests::node_attestation;
use ward_tests::server::ServerOptions;
use ward_tests::spire::{SpireAgentConfig, SpireBins};
use ward_tests::wait::{Step, poll_until};
use ward_tests::ward::{start_ward_server, ward_agent_bin, ward_server_bin};

const TD: &str = "example.org";
const WAIT: Duration = Duration::from_secs(60);
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(30);

fn phase(step: &str) {
    eprintln!("[spire-agent config] {step}");
}

/// `bin run -config <config> -expandEnv <extra>` with `AGENT_DIR=<dir>`.
fn agent_command(bin: &Path, config: &Path, dir: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(bin);
    cmd.env("AGENT_DIR", dir).env("NO_COLOR", "1");
    cmd.arg("run").arg("-config").arg(config).arg("-expandEnv").args(extra);
    cmd
}

/// Polls `client`'s `api fetch x509` until it prints exactly `want`.
fn wait_for_ids(client: &WorkloadClient, agent: &mut Daemon, want: &str) -> anyhow::Result<()> {
    poll_until("the workload's X509-SVID", WAIT, || {
        agent.ensure_running()?;
        let out = client.api(&["fetch", "x509"])?;
        let got = ward_tests::agent::spiffe_ids(&out.stdout);
        Ok(if out.status.success() && got == [want] {
            Step::Done(())
        } else {
            Step::Retry(out.describe())
        })
    })
}

/// The lines of a refusal after its first, without their `  - ` marks.
fn refusal_lines(out: &CommandOutput) -> Vec<String> {
    out.stderr
        .lines()
        .skip_while(|l| !l.contains("cannot run with the SPIRE configuration"))
        .skip(1)
        .map(|l| l.trim_start_matches("  - ").to_owned())
        .collect()
}

#[test]
fn spire_agent_and_ward_agent_run_on_the_same_hcl_file() -> anyhow::Result<()> {
    let tmp = tempfile::Builder::new().prefix("ward-hcl").tempdir()?;
    let root = tmp.path();
    let spire = SpireBins::locate()?;
    let server_bin = ward_server_bin()?;
    let agent_bin = ward_agent_bin()?;
    let uid = std::fs::metadata("/proc/self")?.uid();
    let gid = std::fs::metadata("/proc/self")?.gid();

    phase("1. ward-server, two join tokens, entries under both agents, one agent.conf");
    let mut server = start_ward_server(&server_bin, &root.join("server"), &ServerOptions::new(TD))?;
    let cli = AdminCli::new(&server_bin, &server.socket_path);
    wait_ready(&mut server.daemon, &cli)?;
    let bundle_path = root.join("bundle.pem");
    std::fs::write(&bundle_path, cli.bundle_show_pem()?)?;
    let mut agent_ids = Vec::new();
    let mut tokens = Vec::new();
    for name in ["spire-agent", "ward-agent"] {
        let token = cli.token_generate(Some(600))?;
        let agent_id = format!("spiffe://{TD}/spire/agent/join_token/{token}");
        cli.entry_create(
            &agent_id,
            &format!("spiffe://{TD}/workload/{name}"),
            &format!("unix:uid:{uid}"),
        )?;
        agent_ids.push(agent_id);
        tokens.push(token);
    }
    let text = SpireAgentConfig {
        trust_domain: TD.to_owned(),
        server_address: "127.0.0.1".to_owned(),
        server_port: server.port,
        socket_path: PathBuf::from("${AGENT_DIR}/public/api.sock"),
        data_dir: PathBuf::from("${AGENT_DIR}/data"),
        trust_bundle_path: bundle_path.clone(),
    }
    .render();
    let config = root.join("agent.conf");
    std::fs::write(&config, &text)?;

    phase("2. spire-agent and ward-agent on the same file attest and serve");
    let spire_dir = root.join("spire");
    let ward_dir = root.join("ward");
    std::fs::create_dir_all(&spire_dir)?;
    std::fs::create_dir_all(&ward_dir)?;
    let mut spire_agent = Daemon::spawn(
        "spire-agent",
        agent_command(&spire.agent, &config, &spire_dir, &["-joinToken", &tokens[0]]),
        &spire_dir.join("spire-agent.log"),
    )?;
    let ward_admin = ward_dir.join("private/admin.sock");
    let admin_flag = ward_admin.to_string_lossy().into_owned();
    let mut ward_agent = Daemon::spawn(
        "ward-agent",
        agent_command(
            &agent_bin,
            &config,
            &ward_dir,
            &["-joinToken", &tokens[1], "-adminSocketPath", &admin_flag],
        ),
        &ward_dir.join("ward-agent.log"),
    )?;
    wait_healthy(&agent_bin, &mut ward_agent, &ward_admin)?;
    for (dir, agent, name) in
        [(&spire_dir, &mut spire_agent, "spire-agent"), (&ward_dir, &mut ward_agent, "ward-agent")]
    {
        let client = WorkloadClient {
            bin: spire.agent.clone(),
            socket: dir.join("public/api.sock"),
            uid,
            gid,
        };
        wait_for_ids(&client, agent, &format!("spiffe://{TD}/workload/{name}"))?;
    }
    let mut want = agent_ids.clone();
    want.sort();
    ensure!(node_attestation::agent_ids(&cli)? == want, "the server lists both agents: {want:?}");
    // ward-agent took its settings from the file: the bootstrap bundle, the data directory.
    ensure!(ward_dir.join("data/agent-data.json").is_file(), "ward-agent's data_dir from the file");
    let log = ward_agent.log();
    ensure!(
        log.contains("KeyManager \"memory\" is read as ward-agent's own key store"),
        "the ignored plugin is noted in the log:\n{}",
        ward_agent.log_tail()
    );

    phase("3. a file with what ward-agent lacks: one sentence each, exit 1, nothing started");
    let bad = text
        .replace(
            "agent {\n",
            "agent {\n    log_file = \"/tmp/never-written.log\"\n    bogus_key = true\n",
        )
        .replace("NodeAttestor \"join_token\"", "NodeAttestor \"http_challenge\"");
    let bad_config = root.join("bad.conf");
    std::fs::write(&bad_config, bad)?;
    let bad_dir = root.join("bad");
    std::fs::create_dir_all(&bad_dir)?;
    let bad_admin = bad_dir.join("private/admin.sock").to_string_lossy().into_owned();
    let out = run(
        &mut agent_command(&agent_bin, &bad_config, &bad_dir, &["-adminSocketPath", &bad_admin]),
        REFUSAL_TIMEOUT,
    )?;
    ensure!(out.status.code() == Some(1), "ward-agent exits 1:\n{}", out.describe());
    ensure!(
        out.stderr.starts_with(&format!(
            "ward-agent: ward-agent cannot run with the SPIRE configuration at {:?}:",
            bad_config.display().to_string()
        )),
        "{}",
        out.describe()
    );
    assert_eq!(
        refusal_lines(&out),
        vec![
            "agent.bogus_key is not a setting of spire-agent".to_owned(),
            "agent.log_file is not supported: ward-agent logs to stderr".to_owned(),
            "plugin NodeAttestor \"http_challenge\" is not supported: ward-agent attests its \
             node with a join token, x509pop, gcp_iit, tpm_devid, azure_msi, k8s_psat, sshpop or \
             aws_iid (NodeAttestor \"join_token\", \"x509pop\", \"gcp_iit\", \"tpm_devid\", \
             \"azure_msi\", \"k8s_psat\", \"sshpop\", \"aws_iid\")"
                .to_owned(),
        ],
        "{}",
        out.describe()
    );
    ensure!(
        std::fs::read_dir(&bad_dir)?.next().is_none(),
        "nothing was created in {}",
        bad_dir.display()
    );
    let out = run(&mut agent_command(&spire.agent, &bad_config, &bad_dir, &[]), REFUSAL_TIMEOUT)?;
    ensure!(!out.status.success(), "spire-agent refuses the misspelt key too:\n{}", out.describe());

    phase("4. ward-agent stops on spire-agent's data directory");
    spire_agent.terminate(Duration::from_secs(30))?;
    let other_admin = root.join("other/admin.sock").to_string_lossy().into_owned();
    let out = run(
        &mut agent_command(&agent_bin, &config, &spire_dir, &["-adminSocketPath", &other_admin]),
        REFUSAL_TIMEOUT,
    )?;
    ensure!(out.status.code() == Some(1), "ward-agent exits 1:\n{}", out.describe());
    ensure!(
        out.stderr.contains("agent-data.json is not usable"),
        "ward-agent names spire-agent's state file:\n{}",
        out.describe()
    );

    ward_agent.terminate(Duration::from_secs(30))?;
    server.daemon.terminate(Duration::from_secs(30))?;
    Ok(())
}
