//! Running the `ward-server` binary built from this workspace in a temporary directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::command::run;
use crate::server::{ServerOptions, ServerProcess};
use crate::{quoted, quoted_path};

/// Environment variable that overrides where the `ward-server` binary is.
pub const WARD_SERVER_BIN_ENV: &str = "WARD_SERVER_BIN";

/// Deadline for building `ward-server` (a cold build compiles the whole server).
const BUILD_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Finds `ward-server`: `$WARD_SERVER_BIN` if set, else builds it from this workspace with
/// `cargo build -p ward-server` into the target directory and profile of the running test
/// binary (so the suite always runs the current source) and returns its path. Cargo builds
/// binaries only for packages whose own integration tests run, hence the explicit build.
/// The lookup runs once per test process.
pub fn ward_server_bin() -> anyhow::Result<PathBuf> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| locate_or_build(WARD_SERVER_BIN_ENV, "ward-server", "ward-server"))
        .clone()
        .map_err(anyhow::Error::msg)
}

/// Environment variable that overrides where the `ward-agent` binary is.
pub const WARD_AGENT_BIN_ENV: &str = "WARD_AGENT_BIN";

/// Finds `ward-agent` as [`ward_server_bin`] finds `ward-server` (`$WARD_AGENT_BIN`, else a
/// build of the current source).
pub fn ward_agent_bin() -> anyhow::Result<PathBuf> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| locate_or_build(WARD_AGENT_BIN_ENV, "ward-agent", "ward-agent"))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn locate_or_build(env: &str, package: &str, bin: &str) -> Result<PathBuf, String> {
    build_bin(env, package, bin).map_err(|e| format!("{e:#}"))
}

fn build_bin(env: &str, package: &str, bin_name: &str) -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os(env) {
        return Ok(PathBuf::from(bin));
    }
    let exe = std::env::current_exe().context("locating the test binary")?;
    // The test binary lives in <target>/<profile dir>/deps/.
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .with_context(|| format!("unexpected test binary location {}", exe.display()))?;
    let target_dir = profile_dir
        .parent()
        .with_context(|| format!("unexpected test binary location {}", exe.display()))?;
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev".to_owned(),
        Some(name) => name.to_owned(),
        None => bail!("unexpected test binary location {}", exe.display()),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--locked", "-p", package, "--bin", bin_name, "--profile"])
        .arg(&profile)
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    run(&mut cmd, BUILD_TIMEOUT)?.success().with_context(|| format!("building {bin_name}"))?;
    let bin = profile_dir.join(bin_name);
    if !bin.is_file() {
        bail!("cargo build succeeded but {} does not exist", bin.display());
    }
    Ok(bin)
}

/// The parts of a `ward-server` configuration the suites vary.
#[derive(Debug, Clone)]
pub struct WardServerConfig {
    /// Trust domain and lifetimes.
    pub options: ServerOptions,
    /// TCP port on `127.0.0.1` for agents.
    pub bind_port: u16,
    /// Admin Unix socket.
    pub socket_path: PathBuf,
    /// Data directory.
    pub data_dir: PathBuf,
}

impl WardServerConfig {
    /// Renders the TOML file (keys as documented in `docs/config.md`).
    pub fn render(&self) -> String {
        format!(
            "trust_domain = {td}\nbind_address = \"127.0.0.1\"\nbind_port = {port}\nsocket_path = {socket}\n\
             data_dir = {data}\nlog_level = \"debug\"\n{agent_ttl}",
            td = quoted(&self.options.trust_domain),
            agent_ttl = self.options.agent_ttl_line(),
            port = self.bind_port,
            socket = quoted_path(&self.socket_path),
            data = quoted_path(&self.data_dir),
        )
    }
}

/// Starts `ward-server run --config <file>` with its config, data and socket under `dir` and
/// a free port. Does not wait for it to become ready.
pub fn start_ward_server(
    bin: &Path,
    dir: &Path,
    options: &ServerOptions,
) -> anyhow::Result<ServerProcess> {
    crate::node_attestation::start_ward_server_with_attestor(bin, &[], dir, options, "")
}
