//! End-to-end and interop test harness for ward (the suites live in `tests/tests/`).
//!
//! This crate owns the plumbing the suites share: locating the pinned SPIRE release and the
//! `ward-server` binary, rendering their config files into temporary directories, running
//! short commands with a deadline, keeping long-running daemons alive for the length of a test
//! (and killing them when it ends), and waiting on conditions with a deadline.
//!
//! It does not start anything on its own and holds no product logic: every process it starts
//! is a real, unmodified binary listening on `127.0.0.1` or a Unix socket in a temp directory.

pub mod agent;
pub mod agent_scenario;
pub mod authority_scenario;
pub mod aws_api;
pub mod aws_iid;
pub mod azure;
pub mod cli;
pub mod cluster;
pub mod command;
pub mod daemon;
pub mod differential;
pub mod envoy_sds;
pub mod gcp;
pub mod gcp_api;
pub mod kubernetes;
pub mod netns;
pub mod node_attestation;
pub mod normalize;
pub mod payload_capture;
pub mod porcupine;
pub mod propagation;
pub mod script;
pub mod server;
pub mod slow_disk;
pub mod spire;
pub mod swtpm;
pub mod wait;
pub mod ward;
pub mod workload_clients;

use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;

/// Asks the kernel for a TCP port that is free on `127.0.0.1` right now.
///
/// The port is released before returning, so another process could take it in between; the
/// servers under test bind it within milliseconds, which makes that race negligible.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// A number unique within this process, for names of system objects (namespaces, cgroups)
/// that tests running in parallel must not share.
pub fn next_tag() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Renders `value` as a double-quoted string literal valid in both HCL and TOML.
pub fn quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Renders a path as a quoted config string (see [`quoted`]).
pub fn quoted_path(path: &Path) -> String {
    quoted(&path.to_string_lossy())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_escapes_quotes_and_backslashes() {
        assert_eq!(quoted(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(quoted("/tmp/x"), "\"/tmp/x\"");
    }

    #[test]
    fn free_port_is_bindable() {
        let port = free_port().unwrap();
        assert_ne!(port, 0);
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
    }
}
