//! A running server process (SPIRE's or ward's), as the suites see it.

use std::path::PathBuf;
use std::time::Duration;

use crate::daemon::Daemon;

/// A server started by [`crate::spire::start_spire_server`] or
/// [`crate::ward::start_ward_server`].
#[derive(Debug)]
pub struct ServerProcess {
    /// The process.
    pub daemon: Daemon,
    /// Its admin Unix socket (what `-socketPath` takes).
    pub socket_path: PathBuf,
    /// Its agent-facing TCP port on `127.0.0.1`.
    pub port: u16,
}

/// What a suite chooses about the server it starts.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Trust domain name, e.g. `example.org`.
    pub trust_domain: String,
    /// Lifetime of agent X509-SVIDs (`agent_ttl`); `None` keeps the server default (1 h).
    pub agent_ttl: Option<Duration>,
}

impl ServerOptions {
    /// The server default for everything but the trust domain.
    pub fn new(trust_domain: &str) -> Self {
        Self { trust_domain: trust_domain.to_owned(), agent_ttl: None }
    }

    /// The `agent_ttl = "<n>s"` config line, or nothing.
    pub fn agent_ttl_line(&self) -> String {
        self.agent_ttl
            .map(|ttl| format!("agent_ttl = \"{}s\"\n", ttl.as_secs()))
            .unwrap_or_default()
    }
}
