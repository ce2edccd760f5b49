#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! `ward-server dev`, the README's one command: it brings up a one-node server and a
//! `ward-agent`, registers the user who ran it, and prints the SVID it got and the Workload
//! API socket; SPIRE's own Workload API client then gets the same SPIFFE ID from that socket.
//! SIGTERM stops both and deletes the throw-away state. A missing agent binary is one
//! sentence and exit code 1.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, ensure};
use ward_tests::agent::spiffe_ids;
use ward_tests::command::run;
use ward_tests::daemon::Daemon;
use ward_tests::spire::SpireBins;
use ward_tests::wait::{Step, poll_until};
use ward_tests::ward::{ward_agent_bin, ward_server_bin};

/// The value printed after `label` at the start of a banner line.
fn banner_field(text: &str, label: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(label))
        .map(|rest| rest.trim().split(' ').next().unwrap_or("").to_owned())
}

#[test]
fn dev_mode_serves_the_current_user_an_svid_and_cleans_up() -> anyhow::Result<()> {
    let spire = SpireBins::locate()?;
    let server_bin = ward_server_bin()?;
    let agent_bin = ward_agent_bin()?;
    let port = ward_tests::free_port()?;
    let logs = tempfile::tempdir()?;
    let mut cmd = Command::new(&server_bin);
    cmd.args(["dev", "-serverPort", &port.to_string(), "-agentBin"]).arg(&agent_bin);
    let mut dev = Daemon::spawn("ward-server dev", cmd, &logs.path().join("dev.log"))?;
    let banner = poll_until("the dev banner", Duration::from_secs(120), || {
        dev.ensure_running()?;
        let text = dev.log();
        Ok(if text.contains("Ctrl-C stops") { Step::Done(text) } else { Step::Retry(text) })
    })?;
    ensure!(banner.contains("NOT FOR PRODUCTION"), "{banner}");
    let uid = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m))?;
    let want = format!("spiffe://example.org/dev/uid-{uid}");
    ensure!(banner_field(&banner, "X509-SVID").as_deref() == Some(want.as_str()), "{banner}");
    let socket = PathBuf::from(banner_field(&banner, "socket").context("no socket line")?);
    ensure!(
        banner.contains(&format!("export SPIFFE_ENDPOINT_SOCKET=unix://{}", socket.display())),
        "{banner}"
    );
    let state = PathBuf::from(banner_field(&banner, "state").context("no state line")?);

    let out = run(
        Command::new(&spire.agent).args(["api", "fetch", "x509", "-socketPath"]).arg(&socket),
        Duration::from_secs(30),
    )?
    .success()?;
    ensure!(spiffe_ids(&out.stdout) == [want.clone()], "{}", out.describe());

    let status = dev.terminate(Duration::from_secs(20))?;
    ensure!(status.success(), "dev mode exited with {status}: {}", dev.log());
    ensure!(dev.log().contains("ward dev: stopped"), "{}", dev.log());
    ensure!(!state.exists(), "{} was not deleted", state.display());
    Ok(())
}

#[test]
fn dev_mode_without_an_agent_binary_says_so() -> anyhow::Result<()> {
    let server_bin = ward_server_bin()?;
    let port = ward_tests::free_port()?;
    let out = run(
        Command::new(&server_bin).args([
            "dev",
            "-serverPort",
            &port.to_string(),
            "-agentBin",
            "/nonexistent/ward-agent",
        ]),
        Duration::from_secs(60),
    )?;
    ensure!(out.status.code() == Some(1), "{}", out.describe());
    ensure!(
        out.stderr.contains(
            "starting /nonexistent/ward-agent (build it with `cargo build -p ward-agent`"
        ),
        "{}",
        out.describe()
    );
    Ok(())
}
