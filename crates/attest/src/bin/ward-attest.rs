//! `ward-attest`: prints the selectors ward's agent would find for a process, so an operator
//! can check which registration entries a workload will match and whether the agent's user
//! and capabilities are enough for the selectors it needs.
//!
//! Usage:
//! - `ward-attest unix <pid> [--discover-workload-path] [--workload-size-limit <bytes>]`
//! - `ward-attest systemd <pid> [--bus-address <d-bus address>]` (default: the system bus)
//! - `ward-attest k8s <pid> [--config <file.toml>]`: the `k8s` plugin data in TOML (default:
//!   an empty configuration, i.e. the kubelet's secure port with the pod's service account);
//!   the node name comes from the environment as in the agent (`MY_NODE_NAME`)
//!
//! Prints one selector per line (`unix:uid:1000`); a selector left out for want of
//! permission is reported on stderr as `warning: ...`; an attestation error as `error: ...`
//! with exit status 1, and a usage error with exit status 2.

use std::process::ExitCode;

use ward_attest::{
    AttestError, K8sAttestor, K8sConfig, ProcFs, SystemdAttestor, SystemdBus, UnixAttestor,
    UnixConfig, WorkloadAttestor,
};
use ward_core::Selector;

const USAGE: &str = "usage: ward-attest unix <pid> [--discover-workload-path] \
                     [--workload-size-limit <bytes>]\n       ward-attest systemd <pid> \
                     [--bus-address <d-bus address>]\n       ward-attest k8s <pid> \
                     [--config <file.toml>]";

/// One attestation asked for on the command line.
enum Request {
    Unix(u32, UnixConfig),
    Systemd(u32, SystemdBus),
    K8s(u32, Option<String>),
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(request) = parse_args(&args) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    match attest(request) {
        Ok(selectors) => {
            for selector in &selectors {
                println!("{selector}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn attest(request: Request) -> Result<Vec<Selector>, AttestError> {
    match request {
        Request::Unix(pid, config) => {
            let found = UnixAttestor::new(config, ProcFs::default()).attest_detailed(pid)?;
            if let Some(reason) = found.path_skipped {
                eprintln!("warning: path and sha256 selectors left out: {reason}");
            }
            Ok(found.selectors)
        }
        Request::Systemd(pid, bus) => SystemdAttestor::new(bus).attest(pid),
        Request::K8s(pid, config_path) => {
            let config = match config_path {
                Some(path) => {
                    let text =
                        std::fs::read_to_string(&path).map_err(|e| config_error(&path, &e))?;
                    toml::from_str::<K8sConfig>(&text).map_err(|e| config_error(&path, &e))?
                }
                None => K8sConfig::default(),
            };
            let settings = config.settings(|name| std::env::var(name).ok())?;
            K8sAttestor::new(settings, ProcFs::default())?.attest(pid)
        }
    }
}

/// A configuration file that cannot be read or decoded.
fn config_error(path: &str, e: &dyn std::fmt::Display) -> AttestError {
    AttestError::K8s(ward_attest::k8s::K8sError::Decode { reason: format!("{path}: {e}") })
}

/// The request, or `None` for a usage error.
fn parse_args(args: &[String]) -> Option<Request> {
    let mut it = args.iter();
    let plugin = it.next()?;
    let pid = it.next()?.parse().ok()?;
    match plugin.as_str() {
        "unix" => {
            let mut config = UnixConfig::default();
            while let Some(flag) = it.next() {
                match flag.as_str() {
                    "--discover-workload-path" => config.discover_workload_path = true,
                    "--workload-size-limit" => {
                        config.workload_size_limit = it.next()?.parse().ok()?;
                    }
                    _ => return None,
                }
            }
            Some(Request::Unix(pid, config))
        }
        "systemd" => {
            let mut bus = SystemdBus::System;
            while let Some(flag) = it.next() {
                match flag.as_str() {
                    "--bus-address" => bus = SystemdBus::Address(it.next()?.clone()),
                    _ => return None,
                }
            }
            Some(Request::Systemd(pid, bus))
        }
        "k8s" => {
            let mut config = None;
            while let Some(flag) = it.next() {
                match flag.as_str() {
                    "--config" => config = Some(it.next()?.clone()),
                    _ => return None,
                }
            }
            Some(Request::K8s(pid, config))
        }
        _ => None,
    }
}
