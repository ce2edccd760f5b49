//! The pinned SPIRE release (`tests/interop/spire/go.mod`): where its binaries are and how to
//! run an unmodified `spire-server` and `spire-agent` in a temporary directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::command::{behind, run};
use crate::daemon::Daemon;
use crate::server::{ServerOptions, ServerProcess};
use crate::{quoted, quoted_path};

/// Environment variable naming the directory that holds `spire-server` and `spire-agent`
/// (`tests/run` sets it to the output of `tests/interop/spire/build.sh`).
pub const SPIRE_BIN_ENV: &str = "WARD_SPIRE_BIN";

/// Deadline for building SPIRE from source when no cached build exists.
const BUILD_TIMEOUT: Duration = Duration::from_secs(40 * 60);

/// Paths of the SPIRE binaries.
#[derive(Debug, Clone)]
pub struct SpireBins {
    /// `spire-server`.
    pub server: PathBuf,
    /// `spire-agent`.
    pub agent: PathBuf,
}

impl SpireBins {
    /// Finds the binaries in `$WARD_SPIRE_BIN`, or runs `tests/interop/spire/build.sh` (which
    /// builds them once into a cache outside the repository) and uses the directory it prints.
    /// The lookup runs once per test process.
    pub fn locate() -> anyhow::Result<Self> {
        static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
        let dir = DIR
            .get_or_init(|| spire_dir().map_err(|e| format!("{e:#}")))
            .clone()
            .map_err(anyhow::Error::msg)?;
        let bins = Self { server: dir.join("spire-server"), agent: dir.join("spire-agent") };
        for bin in [&bins.server, &bins.agent] {
            if !bin.is_file() {
                bail!(
                    "{} does not exist (set {SPIRE_BIN_ENV} or run tests/interop/spire/build.sh)",
                    bin.display()
                );
            }
        }
        Ok(bins)
    }
}

fn spire_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os(SPIRE_BIN_ENV) {
        return Ok(PathBuf::from(dir));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/spire/build.sh");
    let out = run(&mut Command::new(&script), BUILD_TIMEOUT)?
        .success()
        .context("building SPIRE with tests/interop/spire/build.sh")?;
    let dir = out.stdout.trim();
    if dir.is_empty() {
        bail!("build.sh printed no directory\n{}", out.describe());
    }
    Ok(PathBuf::from(dir))
}

/// The parts of a `spire-server` configuration the suites vary.
#[derive(Debug, Clone)]
pub struct SpireServerConfig {
    /// Trust domain and lifetimes.
    pub options: ServerOptions,
    /// TCP port on `127.0.0.1` for agents.
    pub bind_port: u16,
    /// Admin Unix socket.
    pub socket_path: PathBuf,
    /// Data directory (the SQLite datastore lives in it).
    pub data_dir: PathBuf,
}

impl SpireServerConfig {
    /// Renders the HCL file: SQLite datastore and disk key manager in the data directory (so
    /// a restarted server keeps its entries and CA), join_token attestor.
    pub fn render(&self) -> String {
        format!(
            r#"server {{
    bind_address = "127.0.0.1"
    bind_port = "{port}"
    socket_path = {socket}
    trust_domain = {td}
    data_dir = {data}
    log_level = "DEBUG"
    {agent_ttl}}}

plugins {{
    DataStore "sql" {{
        plugin_data {{
            database_type = "sqlite3"
            connection_string = {db}
        }}
    }}
    KeyManager "disk" {{
        plugin_data {{
            keys_path = {keys}
        }}
    }}
    NodeAttestor "join_token" {{
        plugin_data {{}}
    }}
}}
"#,
            keys = quoted_path(&self.data_dir.join("keys.json")),
            port = self.bind_port,
            socket = quoted_path(&self.socket_path),
            td = quoted(&self.options.trust_domain),
            agent_ttl = self.options.agent_ttl_line(),
            data = quoted_path(&self.data_dir),
            db = quoted_path(&self.data_dir.join("datastore.sqlite3")),
        )
    }
}

/// The parts of a `spire-agent` configuration the suites vary.
#[derive(Debug, Clone)]
pub struct SpireAgentConfig {
    /// Trust domain name.
    pub trust_domain: String,
    /// The server's address: an IP address or a DNS name (the agent dials every address the
    /// name resolves to).
    pub server_address: String,
    /// The server's TCP port.
    pub server_port: u16,
    /// Workload API Unix socket.
    pub socket_path: PathBuf,
    /// Data directory.
    pub data_dir: PathBuf,
    /// PEM bootstrap bundle (what `bundle show` printed).
    pub trust_bundle_path: PathBuf,
}

impl SpireAgentConfig {
    /// Renders the HCL file: in-memory key manager, join_token attestor, unix workload attestor.
    pub fn render(&self) -> String {
        format!(
            r#"agent {{
    data_dir = {data}
    log_level = "DEBUG"
    server_address = {address}
    server_port = "{port}"
    socket_path = {socket}
    trust_domain = {td}
    trust_bundle_path = {bundle}
}}

plugins {{
    KeyManager "memory" {{
        plugin_data {{}}
    }}
    NodeAttestor "join_token" {{
        plugin_data {{}}
    }}
    WorkloadAttestor "unix" {{
        plugin_data {{}}
    }}
}}
"#,
            data = quoted_path(&self.data_dir),
            address = quoted(&self.server_address),
            port = self.server_port,
            socket = quoted_path(&self.socket_path),
            td = quoted(&self.trust_domain),
            bundle = quoted_path(&self.trust_bundle_path),
        )
    }
}

/// Starts `spire-server run` with its config, data and socket under `dir` and a free port.
/// Does not wait for it to become healthy.
pub fn start_spire_server(
    bins: &SpireBins,
    dir: &Path,
    options: &ServerOptions,
) -> anyhow::Result<ServerProcess> {
    crate::node_attestation::start_spire_server_with_attestor(&bins.server, &[], dir, options, "")
}

/// A running `spire-agent`.
#[derive(Debug)]
pub struct AgentProcess {
    /// The process.
    pub daemon: Daemon,
    /// Its Workload API socket.
    pub socket_path: PathBuf,
    /// Its data directory (`agent-data.json` holds its SVID and bundle).
    pub data_dir: PathBuf,
}

/// Starts `spire-agent run -joinToken <token>` with its config, data and socket under `dir`,
/// pointed at a server on `127.0.0.1:server_port` and bootstrapped from `trust_bundle_path`.
pub fn start_spire_agent(
    bins: &SpireBins,
    dir: &Path,
    trust_domain: &str,
    server_port: u16,
    trust_bundle_path: &Path,
    join_token: &str,
) -> anyhow::Result<AgentProcess> {
    let config = SpireAgentConfig {
        trust_domain: trust_domain.to_owned(),
        server_address: "127.0.0.1".to_owned(),
        server_port,
        socket_path: dir.join("workload.sock"),
        data_dir: dir.join("data"),
        trust_bundle_path: trust_bundle_path.to_owned(),
    };
    start_spire_agent_with(bins, &[], dir, &config, join_token)
}

/// Starts `spire-agent run -joinToken <token>` with `config` (written to `dir/agent.conf`; its
/// log goes to `dir/spire-agent.log`), behind `launcher` (words run before the binary, e.g.
/// `ip netns exec <ns>`; empty: run it directly).
pub fn start_spire_agent_with(
    bins: &SpireBins,
    launcher: &[String],
    dir: &Path,
    config: &SpireAgentConfig,
    join_token: &str,
) -> anyhow::Result<AgentProcess> {
    let daemon = Daemon::run_with_config(
        "spire-agent",
        behind(launcher, &bins.agent),
        dir,
        "-config",
        "agent.conf",
        &config.render(),
        &["-joinToken", join_token],
    )?;
    Ok(AgentProcess {
        daemon,
        socket_path: config.socket_path.clone(),
        data_dir: config.data_dir.clone(),
    })
}
