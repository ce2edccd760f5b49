#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! Push sync, real processes on 127.0.0.1 and Unix sockets: an entry created through the
//! admin API reaches a Workload API `FetchX509SVID` stream through `ward-agent`.
//!
//! - Against `ward-server` the agent polls every hour (`sync_interval` and
//!   `push_sync_poll_interval` both `1h`), so only the server's push stream can explain the
//!   new SVID reaching the stream within the test's deadline; after the server restarts the
//!   agent opens the stream again (backoff) and a later entry arrives the same way.
//! - Against an unmodified `spire-server` v1.13.3 the agent finds no push stream
//!   (`Unimplemented`), says so once, polls every `sync_interval` (1 s here) as spire-agent
//!   does, and the change still arrives.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::ensure;
use ward_tests::agent::{AgentConfig, AgentDirs, start_ward_agent, wait_healthy};
use ward_tests::agent_scenario::{current_uid, wait_ready};
use ward_tests::cli::AdminCli;
use ward_tests::propagation::{Admin, X509Watch};
use ward_tests::server::{ServerOptions, ServerProcess};
use ward_tests::spire::{SpireBins, start_spire_server};
use ward_tests::wait::{Step, poll_until};
use ward_tests::ward::{start_ward_server, ward_agent_bin, ward_server_bin};

const TD: &str = "example.org";
const WAIT: Duration = Duration::from_secs(60);
const NO_PUSH: &str = "the server has no push stream";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ward,
    Spire,
}

async fn scenario(kind: Kind) -> anyhow::Result<()> {
    let tmp = tempfile::Builder::new().prefix("ward-push").tempdir()?;
    let root = tmp.path();
    let agent_bin = ward_agent_bin()?;
    let options = ServerOptions::new(TD);
    eprintln!("[{kind:?}] 1. server, token, bundle");
    let (native_bin, mut server): (PathBuf, ServerProcess) = match kind {
        Kind::Ward => {
            let bin = ward_server_bin()?;
            let s = start_ward_server(&bin, &root.join("server"), &options)?;
            (bin, s)
        }
        Kind::Spire => {
            let spire = SpireBins::locate()?;
            (spire.server.clone(), start_spire_server(&spire, &root.join("server"), &options)?)
        }
    };
    let cli = AdminCli::new(&native_bin, &server.socket_path);
    tokio::task::block_in_place(|| wait_ready(&mut server.daemon, &cli))?;
    let token = cli.token_generate(Some(600))?;
    let bundle_path = root.join("bundle.pem");
    std::fs::write(&bundle_path, cli.bundle_show_pem()?)?;
    let agent_id = format!("spiffe://{TD}/spire/agent/join_token/{token}");
    let selector = format!("unix:uid:{}", current_uid()?);

    eprintln!("[{kind:?}] 2. the agent, polling every hour (ward) or every second (spire)");
    let extra = match kind {
        Kind::Ward => "sync_interval = \"1h\"\npush_sync_poll_interval = \"1h\"\n",
        Kind::Spire => "sync_interval = \"1s\"\n",
    };
    let dirs = AgentDirs::new(root, "agent");
    let config = AgentConfig {
        trust_domain: TD.to_owned(),
        server_port: server.port,
        bundle_path,
        join_token: token,
        extra: extra.to_owned(),
    };
    let mut agent = start_ward_agent(&agent_bin, &dirs, &config.render(&dirs))?;
    tokio::task::block_in_place(|| wait_healthy(&agent_bin, &mut agent, &dirs.admin_socket))?;
    let expect_in_log = if kind == Kind::Ward { "push stream open" } else { NO_PUSH };
    tokio::task::block_in_place(|| {
        poll_until(expect_in_log, WAIT, || {
            agent.ensure_running()?;
            let log = agent.log();
            Ok(if log.contains(expect_in_log) {
                Step::Done(())
            } else {
                Step::Retry(agent.log_tail())
            })
        })
    })?;

    eprintln!("[{kind:?}] 3. a first entry: the workload's stream opens");
    let mut admin = Admin::connect(&server.socket_path).await?;
    let first = format!("spiffe://{TD}/push/first");
    admin.create_entry(&agent_id, &first, &selector).await?;
    let mut watch = X509Watch::open_when_served(&dirs.socket, WAIT).await?;
    watch.wait_for(&first, WAIT).await?;

    eprintln!("[{kind:?}] 4. a second entry reaches the open stream");
    let second = format!("spiffe://{TD}/push/second");
    admin.create_entry(&agent_id, &second, &selector).await?;
    watch.wait_for(&second, WAIT).await?;

    if kind == Kind::Ward {
        eprintln!("[{kind:?}] 5. the server restarts: the agent opens the stream again");
        let opened = |log: &str| log.matches("push stream open").count();
        let before = opened(&agent.log());
        server.daemon.restart(Duration::from_secs(10))?;
        tokio::task::block_in_place(|| wait_ready(&mut server.daemon, &cli))?;
        tokio::task::block_in_place(|| {
            poll_until("the push stream to open again", WAIT, || {
                agent.ensure_running()?;
                let log = agent.log();
                Ok(if opened(&log) > before {
                    Step::Done(())
                } else {
                    Step::Retry(agent.log_tail())
                })
            })
        })?;
        let mut admin = Admin::connect(&server.socket_path).await?;
        let third = format!("spiffe://{TD}/push/third");
        admin.create_entry(&agent_id, &third, &selector).await?;
        watch.wait_for(&third, WAIT).await?;
    }

    let log = agent.log();
    match kind {
        Kind::Ward => ensure!(!log.contains(NO_PUSH), "the agent did not use push: {log}"),
        Kind::Spire => ensure!(
            log.matches(NO_PUSH).count() == 1,
            "the agent asked spire-server for a push stream more than once: {log}"
        ),
    }
    agent.terminate(Duration::from_secs(10))?;
    server.daemon.terminate(Duration::from_secs(10))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_reaches_a_workload_stream_by_push_from_ward_server() {
    scenario(Kind::Ward).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn against_spire_server_the_agent_polls_and_the_entry_still_arrives() {
    scenario(Kind::Spire).await.unwrap();
}
