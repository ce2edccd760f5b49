//! `ward-attest`: prints the selectors ward's agent would find for a process, so an operator
//! can check which registration entries a workload will match and whether the agent's user
//! and capabilities are enough for the selectors it needs.
//!
//! Usage: `ward-attest unix <pid> [--discover-workload-path] [--workload-size-limit <bytes>]`
//!
//! Prints one selector per line (`unix:uid:1000`); a selector left out for want of
//! permission is reported on stderr as `warning: ...`; an attestation error as `error: ...`
//! with exit status 1, and a usage error with exit status 2.

use std::process::ExitCode;

use ward_attest::{ProcFs, UnixAttestor, UnixConfig};

const USAGE: &str =
    "usage: ward-attest unix <pid> [--discover-workload-path] [--workload-size-limit <bytes>]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((pid, config)) = parse_args(&args) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    match UnixAttestor::new(config, ProcFs::default()).attest_detailed(pid) {
        Ok(found) => {
            for selector in &found.selectors {
                println!("{selector}");
            }
            if let Some(reason) = found.path_skipped {
                eprintln!("warning: path and sha256 selectors left out: {reason}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// The pid and the unix attestor configuration, or `None` for a usage error.
fn parse_args(args: &[String]) -> Option<(u32, UnixConfig)> {
    let mut it = args.iter();
    if it.next()? != "unix" {
        return None;
    }
    let pid = it.next()?.parse().ok()?;
    let mut config = UnixConfig::default();
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--discover-workload-path" => config.discover_workload_path = true,
            "--workload-size-limit" => config.workload_size_limit = it.next()?.parse().ok()?,
            _ => return None,
        }
    }
    Some((pid, config))
}
