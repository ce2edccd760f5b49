//! `deploy/linux/`: the example configuration is a valid agent configuration, and the systemd
//! unit gives the agent exactly what that configuration needs: its own user, no capabilities,
//! no new privileges, a read-only system with the data and socket directories writable, and
//! the one capability for path selectors offered only as a comment.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ward_agent::config::{BootstrapTrust, FileConfig, Settings};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/linux")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(deploy_dir().join(name)).unwrap()
}

fn example_settings() -> Settings {
    let file = FileConfig::from_toml(&read("agent.toml")).unwrap();
    Settings::from_file_config(file, |path| {
        assert_eq!(path, Path::new("/etc/ward/join-token"));
        Ok("token\n".to_owned())
    })
    .unwrap()
}

/// The `[Service]` section's settings: key → values in file order (comments left out).
fn service_section(unit: &str) -> BTreeMap<String, Vec<String>> {
    let mut section = String::new();
    let mut keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in unit.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            section = line.to_owned();
            continue;
        }
        if section == "[Service]" {
            let (key, value) = line.split_once('=').expect("key=value");
            keys.entry(key.to_owned()).or_default().push(value.to_owned());
        }
    }
    keys
}

fn one<'a>(service: &'a BTreeMap<String, Vec<String>>, key: &str) -> &'a str {
    match service.get(key).map(Vec::as_slice) {
        Some([value]) => value,
        other => panic!("{key}: {other:?}"),
    }
}

#[test]
fn the_example_configuration_is_valid_and_uses_the_units_directories() {
    let settings = example_settings();
    assert_eq!(settings.trust_domain.as_str(), "example.org");
    assert_eq!(settings.join_token.as_deref(), Some("token"));
    assert!(
        matches!(settings.bootstrap, BootstrapTrust::Path(ref p, _) if p == Path::new("/etc/ward/bundle.pem"))
    );
    assert_eq!(settings.data_dir, Path::new("/var/lib/ward-agent"));
    assert_eq!(settings.socket_path, Path::new("/run/ward-agent/public/api.sock"));
    assert_eq!(settings.admin_socket_path, Path::new("/run/ward-agent/private/admin.sock"));
    let unix = settings.workload_attestors.unix.expect("unix attestor");
    assert!(!unix.discover_workload_path, "path selectors need the capability the unit leaves out");
}

#[test]
fn the_unit_runs_the_agent_unprivileged_with_only_its_directories_writable() {
    let unit = read("ward-agent.service");
    let service = service_section(&unit);
    let settings = example_settings();

    assert_eq!(
        one(&service, "ExecStart"),
        "/usr/local/bin/ward-agent run -config /etc/ward/agent.toml"
    );
    assert_eq!(one(&service, "User"), "ward-agent");
    assert_eq!(one(&service, "Group"), "ward-agent");
    // No capability at all, and none to be gained by exec.
    assert_eq!(one(&service, "AmbientCapabilities"), "");
    assert_eq!(one(&service, "CapabilityBoundingSet"), "");
    assert_eq!(one(&service, "NoNewPrivileges"), "yes");
    // The one capability path selectors need is offered as a comment, and nothing else.
    let offered: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.trim().strip_prefix('#'))
        .map(str::trim)
        .filter(|l| l.contains("Capabilit") && l.contains('='))
        .collect();
    assert_eq!(
        offered,
        ["AmbientCapabilities=CAP_SYS_PTRACE", "CapabilityBoundingSet=CAP_SYS_PTRACE"]
    );

    // A read-only system with exactly the data and socket directories writable.
    assert_eq!(one(&service, "ProtectSystem"), "strict");
    let writable: Vec<PathBuf> =
        one(&service, "ReadWritePaths").split_whitespace().map(PathBuf::from).collect();
    let state = Path::new("/var/lib").join(one(&service, "StateDirectory"));
    let runtime = Path::new("/run").join(one(&service, "RuntimeDirectory"));
    assert_eq!(writable, [state.clone(), runtime.clone()]);
    assert_eq!(settings.data_dir, state);
    assert_eq!(one(&service, "StateDirectoryMode"), "0700");
    // The runtime directory must let workloads reach the socket below it.
    assert_eq!(one(&service, "RuntimeDirectoryMode"), "0755");
    assert!(settings.socket_path.starts_with(&runtime));
    assert!(settings.admin_socket_path.starts_with(&runtime));
    // Workloads are attested from /proc: every process must stay visible to the agent.
    assert!(!service.contains_key("ProtectProc"), "ProtectProc hides other users' processes");
    assert!(!service.contains_key("UMask"), "a umask would narrow the socket directory's mode");
}

/// `systemd-analyze verify` accepts the unit, when this machine has it (with `ExecStart`
/// pointed at a binary that exists here).
#[test]
fn systemd_analyze_accepts_the_unit() {
    let Ok(out) = std::process::Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze is not installed; the unit's syntax is not checked");
        return;
    };
    assert!(out.status.success());
    let dir = tempfile::tempdir().unwrap();
    let unit = read("ward-agent.service")
        .replace("ExecStart=/usr/local/bin/ward-agent", "ExecStart=/bin/true");
    let path = dir.path().join("ward-agent.service");
    std::fs::write(&path, unit).unwrap();
    let out =
        std::process::Command::new("systemd-analyze").arg("verify").arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let problems: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(out.status.success() && problems.is_empty(), "{stderr}");
}
