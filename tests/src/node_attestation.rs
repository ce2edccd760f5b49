//! What every node-attestor suite does: start spire-server and ward-server with one more node
//! attestor, start spire-agent and ward-agent attesting with it instead of a join token, list
//! and show the attested agents through the `spire-server` CLI, and attest in-process with
//! ward-agent's code to read a refusal's gRPC code and message.
//!
//! Each start function takes a `launcher` (words run before the binary, such as
//! `ip netns exec <ns>`, or `env VAR=value`; empty: run it directly) so a suite can put a
//! process where its fake metadata service or its `/etc/hosts` is.

pub mod scenario;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::ensure;
use ward_agent::server_client::ServerTarget;
use ward_attest::NodeAttestor;
use ward_attest::node_attestor::NodeAttestError;
use ward_core::TrustDomain;

use crate::agent::{AgentConfig, AgentDirs, spiffe_ids, start_ward_agent_with};
use crate::cli::{AdminCli, AgentCli};
use crate::command::behind;
use crate::daemon::Daemon;
use crate::server::{ServerOptions, ServerProcess};
use crate::spire::{SpireAgentConfig, SpireBins, SpireServerConfig};
use crate::wait::{Step, poll_until};
use crate::ward::{WardServerConfig, ward_agent_bin, ward_server_bin};
use crate::{free_port, quoted};

/// The join_token block of the rendered SPIRE configurations (server and agent).
pub const JOIN_TOKEN_BLOCK: &str =
    "    NodeAttestor \"join_token\" {\n        plugin_data {}\n    }\n";

/// How long an agent may take to appear in `agent list`.
pub const ATTEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Every process a node-attestor scenario starts; dropped (killed, their logs printed) when
/// the test ends.
#[derive(Default)]
pub struct Procs {
    /// Agents kept running.
    pub agents: Vec<Daemon>,
    /// spire-server.
    pub spire_server: Option<ServerProcess>,
    /// ward-server.
    pub ward_server: Option<ServerProcess>,
}

/// What a node-attestor scenario gets: its temporary directory, SPIRE's binaries, ward-server's
/// and ward-agent's binaries, and the processes it starts.
pub type Scenario = fn(&Path, &SpireBins, &Path, &Path, &mut Procs) -> anyhow::Result<()>;

/// Runs the `name` scenario in a new temporary directory `/tmp/ward-<short>…` (short: Unix
/// socket paths under it must stay short), panicking with its error (the processes are
/// dropped during the panic, which prints their logs).
///
/// # Panics
/// When the binaries cannot be found or the scenario fails.
pub fn run_scenario(name: &str, short: &str, scenario: Scenario) {
    let tmp = tempfile::Builder::new()
        .prefix(&format!("ward-{short}"))
        .tempdir()
        .unwrap_or_else(|e| panic!("{name}: temporary directory: {e}"));
    let bins = SpireBins::locate()
        .and_then(|spire| Ok((spire, ward_server_bin()?, ward_agent_bin()?)))
        .unwrap_or_else(|e| panic!("{name}: binaries: {e:#}"));
    let (spire, ward_bin, agent_bin) = bins;
    let mut procs = Procs::default();
    if let Err(e) = scenario(tmp.path(), &spire, &ward_bin, &agent_bin, &mut procs) {
        panic!("{name} scenario failed: {e:#}");
    }
}

/// An HCL `NodeAttestor "<name>"` block with `plugin_data` lines `key = value`; each value
/// is HCL as written (quote strings with [`quoted`], lists as `["a", "b"]`).
pub fn plugin_block(name: &str, data: &[(&str, String)]) -> String {
    let mut out = format!("    NodeAttestor {} {{\n        plugin_data {{\n", quoted(name));
    for (key, value) in data {
        out.push_str(&format!("            {key} = {value}\n"));
    }
    out.push_str("        }\n    }\n");
    out
}

/// An HCL list of quoted strings.
pub fn hcl_list(items: &[&str]) -> String {
    format!("[{}]", items.iter().map(|s| quoted(s)).collect::<Vec<_>>().join(", "))
}

/// Starts `spire-server run` (behind `launcher`) with its SQLite data and socket under `dir`,
/// a free port on 127.0.0.1, the join_token attestor and `attestor_block` (from
/// [`plugin_block`]). Does not wait for it to become ready.
///
/// # Errors
/// When the configuration cannot be written or the process cannot start.
pub fn start_spire_server_with_attestor(
    spire_server: &Path,
    launcher: &[String],
    dir: &Path,
    options: &ServerOptions,
    attestor_block: &str,
) -> anyhow::Result<ServerProcess> {
    let config = SpireServerConfig {
        options: options.clone(),
        bind_port: free_port()?,
        socket_path: dir.join("api.sock"),
        data_dir: dir.join("data"),
    };
    let text = config.render();
    ensure!(text.contains(JOIN_TOKEN_BLOCK), "unexpected spire-server config layout");
    let text = text.replace(JOIN_TOKEN_BLOCK, &format!("{JOIN_TOKEN_BLOCK}{attestor_block}"));
    let daemon = Daemon::run_with_config(
        "spire-server",
        behind(launcher, spire_server),
        dir,
        "-config",
        "server.conf",
        &text,
        &[],
    )?;
    Ok(ServerProcess { daemon, socket_path: config.socket_path, port: config.bind_port })
}

/// Starts `ward-server run` (behind `launcher`) with its data and socket under `dir`, a free
/// port on 127.0.0.1 and `toml` appended to its configuration (e.g.
/// `[node_attestors.<name>]` and its keys). Does not wait for it to become ready.
///
/// # Errors
/// When the configuration cannot be written or the process cannot start.
pub fn start_ward_server_with_attestor(
    ward_server: &Path,
    launcher: &[String],
    dir: &Path,
    options: &ServerOptions,
    toml: &str,
) -> anyhow::Result<ServerProcess> {
    let config = WardServerConfig {
        options: options.clone(),
        bind_port: free_port()?,
        socket_path: dir.join("api.sock"),
        data_dir: dir.join("data"),
    };
    let text = format!("{}\n{toml}\n", config.render());
    let mut program = behind(launcher, ward_server);
    program.env("NO_COLOR", "1");
    if std::env::var_os("RUST_LOG").is_none() {
        program.env("RUST_LOG", "debug,sled=info,h2=info,hyper=info,tower=info");
    }
    let daemon = Daemon::run_with_config(
        "ward-server",
        program,
        dir,
        "--config",
        "server.toml",
        &text,
        &[],
    )?;
    Ok(ServerProcess { daemon, socket_path: config.socket_path, port: config.bind_port })
}

/// Starts `spire-agent run` (behind `launcher`) attesting with `attestor_block` (from
/// [`plugin_block`]) instead of a join token, against `127.0.0.1:port`, bootstrapped from
/// `bundle`. Returns the process and its Workload API socket (`dir/workload.sock`).
///
/// # Errors
/// When the configuration cannot be written or the process cannot start.
pub fn start_spire_agent_with_attestor(
    spire_agent: &Path,
    launcher: &[String],
    dir: &Path,
    trust_domain: &str,
    port: u16,
    bundle: &Path,
    attestor_block: &str,
) -> anyhow::Result<(Daemon, PathBuf)> {
    let config = SpireAgentConfig {
        trust_domain: trust_domain.to_owned(),
        server_address: "127.0.0.1".to_owned(),
        server_port: port,
        socket_path: dir.join("workload.sock"),
        data_dir: dir.join("data"),
        trust_bundle_path: bundle.to_owned(),
    };
    let text = config.render();
    ensure!(text.contains(JOIN_TOKEN_BLOCK), "unexpected spire-agent config layout");
    let text = text.replace(JOIN_TOKEN_BLOCK, attestor_block);
    let daemon = Daemon::run_with_config(
        "spire-agent",
        behind(launcher, spire_agent),
        dir,
        "-config",
        "agent.conf",
        &text,
        &[],
    )?;
    Ok((daemon, config.socket_path))
}

/// Starts `ward-agent run` (behind `launcher`) laid out as `dirs`, against `127.0.0.1:port`,
/// bootstrapped from `bundle`, with no join token and `toml` appended (e.g.
/// `[node_attestor.<name>]` and its keys).
///
/// # Errors
/// When the configuration cannot be written or the process cannot start.
pub fn start_ward_agent_with_attestor(
    ward_agent: &Path,
    launcher: &[String],
    dirs: &AgentDirs,
    trust_domain: &str,
    port: u16,
    bundle: &Path,
    toml: &str,
) -> anyhow::Result<Daemon> {
    let config = AgentConfig {
        trust_domain: trust_domain.to_owned(),
        server_port: port,
        bundle_path: bundle.to_owned(),
        join_token: String::new(),
        extra: format!("\n{toml}\n"),
    }
    .render(dirs);
    start_ward_agent_with(behind(launcher, ward_agent), dirs, &config)
}

/// `agent list -output json` through `cli`, as (SPIFFE ID, X509-SVID serial) pairs, sorted.
///
/// # Errors
/// When the command fails or prints something else than JSON.
pub fn agents(cli: &AdminCli) -> anyhow::Result<Vec<(String, String)>> {
    let doc = cli.json(&["agent", "list"], &[])?;
    let mut out: Vec<(String, String)> = doc["agents"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|a| {
            (
                format!(
                    "spiffe://{}{}",
                    a["id"]["trust_domain"].as_str().unwrap_or(""),
                    a["id"]["path"].as_str().unwrap_or("")
                ),
                a["x509svid_serial_number"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    out.sort();
    Ok(out)
}

/// The SPIFFE IDs [`agents`] lists.
///
/// # Errors
/// As [`agents`].
pub fn agent_ids(cli: &AdminCli) -> anyhow::Result<Vec<String>> {
    Ok(agents(cli)?.into_iter().map(|(id, _)| id).collect())
}

/// Waits up to [`ATTEST_TIMEOUT`] until `agent list` holds `id`, failing early when one of
/// `daemons` exits.
///
/// # Errors
/// On timeout (with the last list) or when a daemon died.
pub fn wait_attested(cli: &AdminCli, daemons: &mut [&mut Daemon], id: &str) -> anyhow::Result<()> {
    poll_until(&format!("{id} to attest"), ATTEST_TIMEOUT, || {
        for d in daemons.iter_mut() {
            d.ensure_running()?;
        }
        let listed = agents(cli)?;
        Ok(if listed.iter().any(|(a, _)| a == id) {
            Step::Done(())
        } else {
            Step::Retry(format!("agents: {listed:?}"))
        })
    })
}

/// Waits up to [`ATTEST_TIMEOUT`] for each of `ids` to attest again: its X509-SVID serial in
/// `agent list` differs from the one listed now (ward-server refuses RenewAgent from agents
/// that can attest again, so a new serial means a new attestation). Fails early when one of
/// `daemons` exits.
///
/// # Errors
/// On timeout (with the last serial) or when a daemon died.
pub fn wait_attested_again(
    cli: &AdminCli,
    daemons: &mut [Daemon],
    ids: &[String],
) -> anyhow::Result<()> {
    let serials = agents(cli)?;
    for id in ids {
        let first = serials.iter().find(|(a, _)| a == id).map(|(_, s)| s.clone());
        poll_until(&format!("{id} to attest again"), ATTEST_TIMEOUT, || {
            for d in daemons.iter_mut() {
                d.ensure_running()?;
            }
            let now = agents(cli)?;
            let serial = now.iter().find(|(a, _)| a == id).map(|(_, s)| s.clone());
            Ok(if serial.is_some() && serial != first {
                Step::Done(())
            } else {
                Step::Retry(format!("serial {serial:?}"))
            })
        })?;
    }
    Ok(())
}

/// Waits up to [`ATTEST_TIMEOUT`] until the Workload API behind `cli` serves exactly the X509-SVID
/// `id` (fetched into `svid_dir`), failing early when one of `daemons` exits.
///
/// # Errors
/// On timeout (with the last answer) or when a daemon died.
pub fn wait_served(
    what: &str,
    cli: &AgentCli,
    svid_dir: &Path,
    daemons: &mut [Daemon],
    id: &str,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(svid_dir)?;
    poll_until(what, ATTEST_TIMEOUT, || {
        for d in daemons.iter_mut() {
            d.ensure_running()?;
        }
        let out = cli.fetch_x509(svid_dir)?;
        Ok(if spiffe_ids(&out.stdout) == [id.to_owned()] {
            Step::Done(())
        } else {
            Step::Retry(out.describe())
        })
    })
}

/// `spire-server agent show -spiffeID <id>` (run by the `spire-server` CLI given as `cli`)
/// with the SVID serial and expiry blanked and the selectors sorted: what the suites compare
/// between spire-agent→spire-server, ward-agent→spire-server and spire-agent→ward-server.
///
/// # Errors
/// When the command fails.
pub fn agent_show(cli: &AdminCli, id: &str) -> anyhow::Result<String> {
    let out = cli.ok(&["agent", "show"], &["-spiffeID", id])?.stdout;
    let mut head = Vec::new();
    let mut selectors = Vec::new();
    for line in out.lines() {
        let line = line.trim_end();
        if line.starts_with("Selectors") || !selectors.is_empty() {
            selectors.push(
                line.trim_start_matches("Selectors")
                    .trim_start_matches([' ', ':'])
                    .trim()
                    .to_owned(),
            );
        } else if line.starts_with("Expiration time") {
            head.push("Expiration time : <expiry>".to_owned());
        } else if line.starts_with("Serial number") {
            head.push("Serial number : <serial>".to_owned());
        } else {
            head.push(line.to_owned());
        }
    }
    selectors.retain(|s| !s.is_empty());
    selectors.sort();
    Ok(format!("{}\nSelectors:\n{}", head.join("\n"), selectors.join("\n")))
}

/// Attests in-process with ward-agent's attestation code to `127.0.0.1:port` (the server's
/// SVID not checked: a bad-evidence probe); the gRPC code and message of the answer, or
/// `(Ok, "attested")`.
pub async fn refusal(
    port: u16,
    trust_domain: &str,
    attestor: Arc<dyn NodeAttestor>,
) -> (tonic::Code, String) {
    let target = Arc::new(ServerTarget::new(vec!["127.0.0.1".into()], port));
    let td = match TrustDomain::new(trust_domain) {
        Ok(td) => td,
        Err(e) => return (tonic::Code::Unknown, format!("bad trust domain: {e}")),
    };
    match ward_agent::attestation::attest(target, &td, None, attestor).await {
        Ok(_) => (tonic::Code::Ok, "attested".into()),
        Err(e) => match e.status() {
            Some(s) => (s.code(), s.message().to_owned()),
            None => (tonic::Code::Unknown, ward_agent::agent::error_chain(&e)),
        },
    }
}

/// A payload or answer rewrite of [`Tampered`].
pub type Rewrite = Box<dyn Fn(Vec<u8>) -> Vec<u8> + Send + Sync>;

/// An attestor that sends another's payload and answers rewritten: truncated payloads,
/// flipped signature bits, replayed answers.
pub struct Tampered {
    /// The attestor whose evidence is rewritten.
    pub inner: Arc<dyn NodeAttestor>,
    /// Rewrites the payload.
    pub payload: Rewrite,
    /// Rewrites each challenge answer.
    pub answer: Rewrite,
}

impl Tampered {
    /// `inner` with its payload rewritten by `payload` and its answers as they are.
    pub fn payload(inner: Arc<dyn NodeAttestor>, payload: Rewrite) -> Arc<dyn NodeAttestor> {
        Arc::new(Self { inner, payload, answer: Box::new(|a| a) })
    }

    /// `inner` with its answers rewritten by `answer` and its payload as it is.
    pub fn answer(inner: Arc<dyn NodeAttestor>, answer: Rewrite) -> Arc<dyn NodeAttestor> {
        Arc::new(Self { inner, payload: Box::new(|p| p), answer })
    }
}

impl std::fmt::Debug for Tampered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tampered").field("inner", &self.inner).finish_non_exhaustive()
    }
}

impl NodeAttestor for Tampered {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn payload(&self) -> Result<Vec<u8>, NodeAttestError> {
        Ok((self.payload)(self.inner.payload()?))
    }

    fn answer(&self, challenge: &[u8]) -> Result<Vec<u8>, NodeAttestError> {
        Ok((self.answer)(self.inner.answer(challenge)?))
    }
}

/// The first half of `bytes`: a truncated payload. The cut moves back past any backslash
/// it would end on: a JSON string cut inside an escape gets another message from Go's
/// decoder than from serde_json (a difference not matched yet), and where the half falls
/// depends on the signatures' lengths, so the test would otherwise fail now and then.
pub fn truncated(mut bytes: Vec<u8>) -> Vec<u8> {
    let mut cut = bytes.len() / 2;
    while cut > 0 && bytes.get(cut - 1) == Some(&b'\\') {
        cut -= 1;
    }
    bytes.truncate(cut);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_block_renders_hcl() {
        let block = plugin_block("x509pop", &[("ca_bundle_path", quoted("/a b/ca.pem"))]);
        assert_eq!(
            block,
            "    NodeAttestor \"x509pop\" {\n        plugin_data {\n            ca_bundle_path = \"/a b/ca.pem\"\n        }\n    }\n"
        );
        assert_eq!(hcl_list(&["a", "b\"c"]), "[\"a\", \"b\\\"c\"]");
    }
}
