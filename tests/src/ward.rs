//! Running the `ward-server` binary built from this workspace in a temporary directory.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::daemon::Daemon;
use crate::server::ServerProcess;
use crate::{free_port, quoted, quoted_path};

/// Environment variable that overrides where the `ward-server` binary is.
pub const WARD_SERVER_BIN_ENV: &str = "WARD_SERVER_BIN";

/// Finds `ward-server`: `$WARD_SERVER_BIN`, else next to the running test binary's directory
/// (`<target>/<profile>/ward-server`, which `cargo test --workspace` builds).
pub fn ward_server_bin() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os(WARD_SERVER_BIN_ENV) {
        return Ok(PathBuf::from(bin));
    }
    let exe = std::env::current_exe().context("locating the test binary")?;
    // <target>/<profile>/deps/<test binary>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .with_context(|| format!("unexpected test binary location {}", exe.display()))?;
    let bin = profile_dir.join("ward-server");
    if !bin.is_file() {
        bail!(
            "{} does not exist: run the suite with `cargo test --workspace`, build it with \
             `cargo build -p ward-server`, or set {WARD_SERVER_BIN_ENV}",
            bin.display()
        );
    }
    Ok(bin)
}

/// The parts of a `ward-server` configuration the suites vary.
#[derive(Debug, Clone)]
pub struct WardServerConfig {
    /// Trust domain name.
    pub trust_domain: String,
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
             data_dir = {data}\nlog_level = \"debug\"\n",
            td = quoted(&self.trust_domain),
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
    trust_domain: &str,
) -> anyhow::Result<ServerProcess> {
    let config = WardServerConfig {
        trust_domain: trust_domain.to_owned(),
        bind_port: free_port()?,
        socket_path: dir.join("api.sock"),
        data_dir: dir.join("data"),
    };
    let daemon = Daemon::run_with_config(
        "ward-server",
        bin,
        dir,
        "--config",
        "server.toml",
        &config.render(),
        &[],
    )?;
    Ok(ServerProcess { daemon, socket_path: config.socket_path, port: config.bind_port })
}
