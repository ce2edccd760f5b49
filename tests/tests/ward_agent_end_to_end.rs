#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! ward-agent + workload processes, end to end, against `ward-server` and against an
//! unmodified `spire-server` v1.13.3 (the same steps, the same assertions), real processes on
//! 127.0.0.1 and a Unix socket; the workloads are SPIRE v1.13.3's own Workload API client
//! (`spire-agent api …`, go-spiffe v2 underneath) run under other uids:
//! 1. the agent attests with a join token and serves the Workload API socket;
//! 2. an entry by `unix:uid` and one by `unix:path` (the workload binary's path) each reach
//!    exactly the workload they select: X509-SVIDs that chain to the server's bundle
//!    (checked by openssl), a JWT-SVID that validates for its audience only; a uid no entry
//!    selects gets PermissionDenied;
//! 3. a short-TTL SVID rotates and the new one is pushed to an open `api watch` stream;
//! 4. deleting the entry takes the identity away from the stream and from new calls;
//! 5. a restarted agent keeps its identity without attesting again (the join token is
//!    single-use) and serves again; the server lists one agent.
//!
//! The agent's HTTP health listener (SPIRE's `health_checks`) answers the probes of SPIRE's Helm
//! chart: `200 {"agent":{}}` on `/live` and `/ready`, `404` elsewhere.
//!
//! Runs as root (clients under other uids; the agent reads their `/proc/<pid>/exe`).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use anyhow::{Context, ensure};
use ward_tests::agent::{
    AgentConfig, AgentDirs, WorkloadClient, runnable_copy, start_ward_agent, wait_healthy,
};
use ward_tests::agent_scenario::{json_array, openssl_verify, read_written_svids, wait_ready};
use ward_tests::cli::AdminCli;
use ward_tests::daemon::Daemon;
use ward_tests::server::ServerOptions;
use ward_tests::server::ServerProcess;
use ward_tests::spire::{SpireBins, start_spire_server};
use ward_tests::wait::{Step, poll_until};
use ward_tests::ward::{start_ward_server, ward_agent_bin, ward_server_bin};

const TD: &str = "example.org";
const WAIT: Duration = Duration::from_secs(60);
/// X509-SVID lifetime of the uid entry: it rotates at about half of it.
const SHORT_TTL_SECS: u32 = 20;

#[derive(Debug, Clone, Copy)]
enum Kind {
    Ward,
    Spire,
}

fn phase(kind: Kind, step: &str) {
    eprintln!("[ward-agent e2e, {kind:?}] {step}");
}

/// Polls `client`'s `api fetch x509` until it prints exactly `want`.
fn wait_for_ids(client: &WorkloadClient, want: &[String]) -> anyhow::Result<()> {
    poll_until("the workload's SVIDs", WAIT, || {
        let out = client.api(&["fetch", "x509"])?;
        let got = ward_tests::agent::spiffe_ids(&out.stdout);
        Ok(if out.status.success() && got == want {
            Step::Done(())
        } else {
            Step::Retry(out.describe())
        })
    })
}

/// Polls until `client`'s `api fetch x509` is refused with PermissionDenied.
fn wait_for_denial(client: &WorkloadClient) -> anyhow::Result<()> {
    poll_until("the workload to be refused", WAIT, || {
        let out = client.api(&["fetch", "x509"])?;
        Ok(if !out.status.success() && out.stderr.contains("PermissionDenied") {
            Step::Done(out)
        } else {
            Step::Retry(out.describe())
        })
    })
    .map(|out| {
        assert!(out.stderr.contains("no identity issued"), "{}", out.describe());
    })
}

/// `GET path` on 127.0.0.1:`port`: the status code and the body.
fn http_get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(conn, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    conn.read_to_string(&mut text)?;
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status in {text:?}"))?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    Ok((status, body))
}

fn wait_log(daemon: &Daemon, what: &str, done: impl Fn(&str) -> bool) -> anyhow::Result<()> {
    poll_until(what, WAIT, || {
        let text = daemon.log();
        Ok(if done(&text) { Step::Done(()) } else { Step::Retry(daemon.log_tail()) })
    })
}

#[test]
fn workloads_get_rotate_and_lose_identities_through_ward_agent_and_ward_server()
-> anyhow::Result<()> {
    scenario(Kind::Ward)
}

#[test]
fn workloads_get_rotate_and_lose_identities_through_ward_agent_and_spire_server()
-> anyhow::Result<()> {
    scenario(Kind::Spire)
}

fn scenario(kind: Kind) -> anyhow::Result<()> {
    ensure!(std::fs::metadata("/proc/self")?.uid() == 0, "runs as root");
    let tmp = tempfile::Builder::new().prefix("ward-e2e").tempdir()?;
    let root = tmp.path();
    // Clients under other uids reach the socket's directory and the client binaries.
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755))?;
    let spire = SpireBins::locate()?;
    let server_bin = ward_server_bin()?;
    let agent_bin = ward_agent_bin()?;

    phase(kind, "1. server, join token, agent");
    let options = ServerOptions::new(TD);
    let (cli_bin, mut server): (std::path::PathBuf, ServerProcess) = match kind {
        Kind::Ward => {
            (server_bin.clone(), start_ward_server(&server_bin, &root.join("server"), &options)?)
        }
        Kind::Spire => {
            (spire.server.clone(), start_spire_server(&spire, &root.join("server"), &options)?)
        }
    };
    let cli = AdminCli::new(&cli_bin, &server.socket_path);
    wait_ready(&mut server.daemon, &cli)?;
    let token = cli.token_generate(Some(600))?;
    let bundle_path = root.join("bundle.pem");
    std::fs::write(&bundle_path, cli.bundle_show_pem()?)?;
    let agent_id = format!("spiffe://{TD}/spire/agent/join_token/{token}");
    let dirs = AgentDirs::new(root, "agent");
    let health_port = ward_tests::free_port()?;
    let config = AgentConfig {
        trust_domain: TD.to_owned(),
        server_port: server.port,
        bundle_path: bundle_path.clone(),
        join_token: token,
        extra: format!(
            "sync_interval = \"1s\"\n\n[workload_attestors.unix]\n\
             discover_workload_path = true\n\n[health_checks]\nlistener_enabled = true\n\
             bind_address = \"127.0.0.1\"\nbind_port = {health_port}\n"
        ),
    };
    let mut agent = start_ward_agent(&agent_bin, &dirs, &config.render(&dirs))?;
    wait_healthy(&agent_bin, &mut agent, &dirs.admin_socket)?;
    for path in ["/live", "/ready"] {
        let (status, body) = http_get(health_port, path)?;
        ensure!(status == 200 && body.trim() == r#"{"agent":{}}"#, "{path}: {status} {body}");
    }
    ensure!(http_get(health_port, "/other")?.0 == 404, "an unknown path is 404");

    phase(kind, "2. entries by uid and by path");
    let client_bin = runnable_copy(&spire.agent, root, "spire-agent")?;
    let path_bin = runnable_copy(&spire.agent, root, "path-workload")?;
    let uid_id = format!("spiffe://{TD}/workload/uid-1000");
    let path_id = format!("spiffe://{TD}/workload/by-path");
    let out = cli.ok(
        &["entry", "create"],
        &[
            "-parentID",
            &agent_id,
            "-spiffeID",
            &uid_id,
            "-selector",
            "unix:uid:1000",
            "-x509SVIDTTL",
            &SHORT_TTL_SECS.to_string(),
        ],
    )?;
    let uid_entry = ward_tests::cli::parse_field(&out.stdout, "Entry ID")?;
    cli.entry_create(&agent_id, &path_id, &format!("unix:path:{}", path_bin.display()))?;
    let uid_client = WorkloadClient {
        bin: client_bin.clone(),
        socket: dirs.socket.clone(),
        uid: 1000,
        gid: 1000,
    };
    let path_client =
        WorkloadClient { bin: path_bin, socket: dirs.socket.clone(), uid: 2000, gid: 2000 };
    let stranger =
        WorkloadClient { bin: client_bin, socket: dirs.socket.clone(), uid: 2000, gid: 2000 };
    wait_for_ids(&uid_client, std::slice::from_ref(&uid_id))?;
    wait_for_ids(&path_client, std::slice::from_ref(&path_id))?;
    wait_for_denial(&stranger)?;

    // The SVIDs written by the client chain to the server's bundle.
    let out_dir = root.join("uid-1000-out");
    std::fs::create_dir(&out_dir)?;
    std::fs::set_permissions(&out_dir, std::fs::Permissions::from_mode(0o777))?;
    uid_client
        .api(&["fetch", "x509", "-write", out_dir.to_str().context("utf-8 path")?])?
        .success()?;
    let written = read_written_svids(&out_dir)?;
    ensure!(written.len() == 1 && written[0].0 == uid_id, "{written:?}");
    openssl_verify(&bundle_path, &written[0].1)?;

    // A JWT-SVID for an audience validates for that audience and no other.
    let out = uid_client.api(&["fetch", "jwt", "-audience", "e2e"])?.success()?;
    let mut lines = out.stdout.lines();
    lines
        .find(|l| *l == format!("token({uid_id}):"))
        .with_context(|| format!("no token line in {}", out.stdout))?;
    let token = lines.next().context("no token")?.trim().to_owned();
    let out =
        uid_client.api(&["validate", "jwt", "-audience", "e2e", "-svid", &token])?.success()?;
    ensure!(
        out.stdout.contains("SVID is valid.") && out.stdout.contains(&uid_id),
        "{}",
        out.stdout
    );
    let out = uid_client.api(&["validate", "jwt", "-audience", "other", "-svid", &token])?;
    ensure!(
        !out.status.success() && out.stderr.contains("expected audience"),
        "{}",
        out.describe()
    );

    phase(kind, "3. rotation pushed to a watching workload");
    let watch =
        Daemon::spawn("api watch", uid_client.command(&["watch"]), &root.join("watch.log"))?;
    let received = |t: &str| t.matches("Received ").count();
    wait_log(&watch, "the first update", |t| received(t) >= 1 && t.contains(&uid_id))?;
    let first = received(&watch.log());
    wait_log(&watch, "a rotated SVID", |t| received(t) > first)?;

    phase(kind, "4. the entry deleted: the identity is taken away");
    cli.ok(&["entry", "delete"], &["-entryID", &uid_entry])?;
    wait_log(&watch, "the identity taken away", |t| t.contains("no identity issued"))?;
    wait_for_denial(&uid_client)?;
    drop(watch);

    phase(kind, "5. the agent restarts with its persisted identity");
    agent.restart(Duration::from_secs(10))?;
    wait_healthy(&agent_bin, &mut agent, &dirs.admin_socket)?;
    wait_for_ids(&path_client, std::slice::from_ref(&path_id))?;
    let agents = json_array(&cli.json(&["agent", "list"], &[])?, "agents")?;
    ensure!(agents.len() == 1, "one agent expected: {agents:?}");
    let listed = format!(
        "spiffe://{}{}",
        agents[0]["id"]["trust_domain"].as_str().unwrap_or(""),
        agents[0]["id"]["path"].as_str().unwrap_or("")
    );
    ensure!(listed == agent_id, "{listed} != {agent_id}");
    let log = agent.log();
    ensure!(!log.contains("join token has already been used"), "the restart attested again: {log}");
    agent.terminate(Duration::from_secs(10))?;
    server.daemon.terminate(Duration::from_secs(10))?;
    Ok(())
}
