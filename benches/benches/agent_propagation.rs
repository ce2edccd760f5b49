#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! `agent/propagation`: how long a registration entry takes from the server's admin API to a
//! workload's Workload API stream, with push sync against polling, in the same run.
//!
//! One `ward-server` process and two `ward-agent` processes (built for this bench's profile
//! with the test harness, like the end-to-end suites) on 127.0.0.1 and Unix sockets:
//! - `push`: push sync on (the default), `sync_interval = "5s"` (the slow poll while the
//!   stream is healthy is `push_sync_poll_interval`, 30 s);
//! - `poll`: `push_sync = false`, `sync_interval = "5s"`: what spire-agent does.
//!
//! For each agent, a workload (this process, selected by `unix:uid`) holds a
//! `FetchX509SVID` stream; each round waits a random time in `[0, 5 s)` (so creates land at
//! random points of the poll cycle), creates one more entry for the workload over the admin
//! socket (`BatchCreateEntry`), and times until the stream delivers an X509-SVID for it.
//! It prints p50, p99 and the maximum per mode; it fails only when a round fails.
//!
//! Flags (after `--`): `--rounds N` (default 40 per mode).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, ensure};
use ward_tests::agent::{AgentConfig, AgentDirs, start_ward_agent, wait_healthy};
use ward_tests::agent_scenario::{current_uid, wait_ready};
use ward_tests::cli::AdminCli;
use ward_tests::daemon::Daemon;
use ward_tests::propagation::{Admin, X509Watch, time_one_entry};
use ward_tests::server::ServerOptions;
use ward_tests::ward::{start_ward_server, ward_agent_bin, ward_server_bin};

const TD: &str = "example.org";
const POLL: Duration = Duration::from_secs(5);
const ROUND_DEADLINE: Duration = Duration::from_secs(30);

struct Mode {
    name: &'static str,
    extra: &'static str,
}

const MODES: [Mode; 2] = [
    Mode { name: "push", extra: "sync_interval = \"5s\"\n" },
    Mode { name: "poll", extra: "sync_interval = \"5s\"\npush_sync = false\n" },
];

fn rounds() -> anyhow::Result<usize> {
    let mut n = 40;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--rounds" {
            n = args.next().context("--rounds needs a value")?.parse()?;
        }
    }
    ensure!(n > 0, "--rounds must be > 0");
    Ok(n)
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agent_propagation failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

struct Started {
    agent: Daemon,
    agent_id: String,
    dirs: AgentDirs,
}

fn run() -> anyhow::Result<()> {
    let rounds = rounds()?;
    let tmp = tempfile::Builder::new().prefix("ward-prop").tempdir()?;
    let root = tmp.path();
    let server_bin = ward_server_bin()?;
    let agent_bin = ward_agent_bin()?;
    let mut server = start_ward_server(&server_bin, &root.join("server"), &ServerOptions::new(TD))?;
    let cli = AdminCli::new(&server_bin, &server.socket_path);
    wait_ready(&mut server.daemon, &cli)?;
    let bundle_path = root.join("bundle.pem");
    std::fs::write(&bundle_path, cli.bundle_show_pem()?)?;

    let mut started = Vec::new();
    for mode in &MODES {
        let token = cli.token_generate(Some(600))?;
        let dirs = AgentDirs::new(root, mode.name);
        let config = AgentConfig {
            trust_domain: TD.to_owned(),
            server_port: server.port,
            bundle_path: bundle_path.clone(),
            join_token: token.clone(),
            extra: mode.extra.to_owned(),
        };
        let mut agent = start_ward_agent(&agent_bin, &dirs, &config.render(&dirs))?;
        wait_healthy(&agent_bin, &mut agent, &dirs.admin_socket)?;
        let agent_id = format!("spiffe://{TD}/spire/agent/join_token/{token}");
        started.push(Started { agent, agent_id, dirs });
    }

    let selector = format!("unix:uid:{}", current_uid()?);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut results = Vec::new();
    for (mode, s) in MODES.iter().zip(&started) {
        let times = rt
            .block_on(measure(mode.name, &server.socket_path, s, &selector, rounds))
            .with_context(|| format!("{} agent log:\n{}", mode.name, s.agent.log_tail()))?;
        results.push((mode.name, times));
    }
    drop(rt);
    for mut s in started {
        s.agent.terminate(Duration::from_secs(10))?;
    }
    server.daemon.terminate(Duration::from_secs(10))?;

    println!("agent/propagation: entry create (admin API) -> X509-SVID on a FetchX509SVID stream");
    println!("{:<6} {:>7} {:>10} {:>10} {:>10}", "mode", "rounds", "p50", "p99", "max");
    for (name, mut times) in results {
        times.sort();
        println!(
            "{name:<6} {:>7} {:>10} {:>10} {:>10}",
            times.len(),
            ms(percentile(&times, 0.50)),
            ms(percentile(&times, 0.99)),
            ms(*times.last().unwrap_or(&Duration::ZERO)),
        );
    }
    Ok(())
}

async fn measure(
    name: &str,
    admin_socket: &std::path::Path,
    s: &Started,
    selector: &str,
    rounds: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut admin = Admin::connect(admin_socket).await?;
    let first = format!("spiffe://{TD}/{name}/first");
    admin.create_entry(&s.agent_id, &first, selector).await?;
    let mut watch = X509Watch::open_when_served(&s.dirs.socket, ROUND_DEADLINE).await?;
    watch.wait_for(&first, ROUND_DEADLINE).await?;
    let mut times = Vec::with_capacity(rounds);
    for i in 0..rounds {
        tokio::time::sleep(POLL.mul_f64(fastrand::f64())).await;
        let id = format!("spiffe://{TD}/{name}/{i}");
        let t = time_one_entry(&mut admin, &mut watch, &s.agent_id, &id, selector, ROUND_DEADLINE)
            .await?;
        times.push(t);
    }
    Ok(times)
}

/// The value at rank `ceil(q * n)` of sorted `times` (nearest rank).
fn percentile(times: &[Duration], q: f64) -> Duration {
    if times.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * times.len() as f64).ceil() as usize).clamp(1, times.len());
    times[rank - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}
