//! A real `ward-agent` process for end-to-end suites: its directory layout, its TOML
//! configuration, starting it against a server, waiting until it is healthy, and running
//! Workload API clients (`spire-agent api …`, SPIRE's own client) as other users.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;

use crate::agent_scenario::wait_ready;
use crate::cli::AdminCli;
use crate::command::{CommandOutput, run};
use crate::daemon::Daemon;
use crate::server::{ServerOptions, ServerProcess};
use crate::wait::{Step, poll_until};
use crate::{quoted, quoted_path};

/// How long an agent may take to attest and report healthy.
pub const AGENT_READY: Duration = Duration::from_secs(60);
/// How long one Workload API client command may take.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Where one agent keeps its files: `dir/data`, `dir/public/api.sock`,
/// `dir/private/admin.sock`, its config and log in `dir`.
#[derive(Debug, Clone)]
pub struct AgentDirs {
    /// The agent's directory.
    pub dir: PathBuf,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// The Workload API socket.
    pub socket: PathBuf,
    /// The admin socket.
    pub admin_socket: PathBuf,
}

impl AgentDirs {
    /// The layout under `root/name`.
    pub fn new(root: &Path, name: &str) -> Self {
        let dir = root.join(name);
        Self {
            data_dir: dir.join("data"),
            socket: dir.join("public/api.sock"),
            admin_socket: dir.join("private/admin.sock"),
            dir,
        }
    }
}

/// What a test agent is configured with.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The trust domain.
    pub trust_domain: String,
    /// The server's port on 127.0.0.1.
    pub server_port: u16,
    /// The bootstrap bundle (PEM).
    pub bundle_path: PathBuf,
    /// The join token.
    pub join_token: String,
    /// More TOML appended verbatim (e.g. `sync_interval = "1s"`, attestor tables).
    pub extra: String,
}

impl AgentConfig {
    /// The TOML for an agent laid out as `dirs`.
    pub fn render(&self, dirs: &AgentDirs) -> String {
        format!(
            "server_address = \"127.0.0.1\"\nserver_port = {port}\ntrust_domain = {td}\n\
             trust_bundle_path = {bundle}\njoin_token = {token}\ndata_dir = {data}\n\
             socket_path = {socket}\nadmin_socket_path = {admin}\nlog_level = \"debug\"\n{extra}",
            port = self.server_port,
            td = quoted(&self.trust_domain),
            bundle = quoted_path(&self.bundle_path),
            token = quoted(&self.join_token),
            data = quoted_path(&dirs.data_dir),
            socket = quoted_path(&dirs.socket),
            admin = quoted_path(&dirs.admin_socket),
            extra = self.extra,
        )
    }
}

/// A ready `ward-server` with a join token for one agent.
#[derive(Debug)]
pub struct ServerForAgent {
    /// The server process.
    pub server: ServerProcess,
    /// Its admin CLI.
    pub cli: AdminCli,
    /// A join token (valid for ten minutes).
    pub token: String,
    /// The server's bundle in PEM, for the agent's `trust_bundle_path`.
    pub bundle_path: PathBuf,
    /// The SPIFFE ID the agent gets by attesting with the token: the parent ID of its
    /// entries.
    pub agent_id: String,
}

impl ServerForAgent {
    /// Starts `server_bin` in `root/server` for trust domain `td`, waits until it is ready,
    /// makes a join token and writes the bundle to `root/bundle.pem`.
    ///
    /// # Errors
    /// When the server does not start or a CLI command fails.
    pub fn start(server_bin: &Path, root: &Path, td: &str) -> anyhow::Result<Self> {
        let mut server = crate::ward::start_ward_server(
            server_bin,
            &root.join("server"),
            &ServerOptions::new(td),
        )?;
        let cli = AdminCli::new(server_bin, &server.socket_path);
        wait_ready(&mut server.daemon, &cli)?;
        let token = cli.token_generate(Some(600))?;
        let bundle_path = root.join("bundle.pem");
        std::fs::write(&bundle_path, cli.bundle_show_pem()?)?;
        let agent_id = format!("spiffe://{td}/spire/agent/join_token/{token}");
        Ok(Self { server, cli, token, bundle_path, agent_id })
    }

    /// An agent configuration for this server with `extra` TOML appended.
    pub fn agent_config(&self, td: &str, extra: &str) -> AgentConfig {
        AgentConfig {
            trust_domain: td.to_owned(),
            server_port: self.server.port,
            bundle_path: self.bundle_path.clone(),
            join_token: self.token.clone(),
            extra: extra.to_owned(),
        }
    }
}

/// Starts `bin run -config dir/agent.toml` with `config` (logging to `dir/ward-agent.log`).
///
/// # Errors
/// When the directory or config cannot be written or the process cannot start.
pub fn start_ward_agent(bin: &Path, dirs: &AgentDirs, config: &str) -> anyhow::Result<Daemon> {
    start_ward_agent_with(Command::new(bin), dirs, config)
}

/// [`start_ward_agent`] with a prepared command (another user, capabilities, environment).
///
/// # Errors
/// As [`start_ward_agent`].
pub fn start_ward_agent_with(
    mut program: Command,
    dirs: &AgentDirs,
    config: &str,
) -> anyhow::Result<Daemon> {
    program.env("NO_COLOR", "1");
    Daemon::run_with_config("ward-agent", program, &dirs.dir, "-config", "agent.toml", config, &[])
}

/// `bin healthcheck -socketPath <admin>`.
///
/// # Errors
/// When the command cannot run.
pub fn healthcheck(bin: &Path, admin: &Path) -> anyhow::Result<CommandOutput> {
    run(Command::new(bin).arg("healthcheck").arg("-socketPath").arg(admin), CLIENT_TIMEOUT)
}

/// Waits until the agent answers healthy on its admin socket (failing early if it exits).
///
/// # Errors
/// When the agent exits or is not healthy within [`AGENT_READY`].
pub fn wait_healthy(bin: &Path, agent: &mut Daemon, admin: &Path) -> anyhow::Result<()> {
    poll_until("ward-agent to report healthy", AGENT_READY, || {
        agent.ensure_running()?;
        let out = healthcheck(bin, admin)?;
        Ok(if out.status.success() && out.stdout.contains("Agent is healthy.") {
            Step::Done(())
        } else {
            Step::Retry(out.describe())
        })
    })
}

/// A copy (or hard link) of `bin` at `dir/name` that any user may run: the build caches may
/// sit in root's private home. Its path is the workload's `unix:path`.
///
/// # Errors
/// When neither a link nor a copy can be made.
pub fn runnable_copy(bin: &Path, dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let to = dir.join(name);
    if std::fs::hard_link(bin, &to).is_err() {
        std::fs::copy(bin, &to)
            .with_context(|| format!("copying {} to {}", bin.display(), to.display()))?;
    }
    Ok(to)
}

/// A Workload API client: SPIRE's `spire-agent api …` run from `bin` under a given uid/gid.
#[derive(Debug, Clone)]
pub struct WorkloadClient {
    /// The `spire-agent` binary (a copy every uid may run).
    pub bin: PathBuf,
    /// The Workload API socket.
    pub socket: PathBuf,
    /// The uid the client runs as.
    pub uid: u32,
    /// The gid the client runs as.
    pub gid: u32,
}

impl WorkloadClient {
    /// The command `bin api <args> -socketPath <socket>` as this client's user.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("api").args(args).arg("-socketPath").arg(&self.socket);
        cmd.uid(self.uid).gid(self.gid);
        cmd
    }

    /// Runs `api <args>` and returns its output, whatever the exit code.
    ///
    /// # Errors
    /// When the command cannot run or times out.
    pub fn api(&self, args: &[&str]) -> anyhow::Result<CommandOutput> {
        run(&mut self.command(args), CLIENT_TIMEOUT)
    }

    /// The SPIFFE IDs `api fetch x509` prints (`SPIFFE ID: …` lines), or its output when it
    /// fails.
    ///
    /// # Errors
    /// When the command fails; the error holds its output.
    pub fn fetch_x509_ids(&self) -> anyhow::Result<Vec<String>> {
        let out = self.api(&["fetch", "x509"])?.success()?;
        Ok(spiffe_ids(&out.stdout))
    }
}

/// The values of the `SPIFFE ID:` lines of `spire-agent api` output.
pub fn spiffe_ids(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("SPIFFE ID:"))
        .map(|s| s.trim().to_owned())
        .collect()
}
