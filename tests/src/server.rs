//! A running server process (SPIRE's or ward's), as the suites see it.

use std::path::PathBuf;

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
