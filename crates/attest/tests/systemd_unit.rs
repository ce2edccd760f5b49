//! The `systemd` attestor against a real systemd service manager over a real D-Bus daemon.
//!
//! This machine has no system bus (systemd is not PID 1), so the test starts its own: in a
//! new PID and mount namespace (tmpfs over `/run/user` and `/run/systemd`, so nothing on the
//! host changes; everything dies with the namespace) it runs `dbus-daemon --session` and
//! `systemd --user` on that bus, starts a unit from a unit file and a transient unit, and
//! runs the `ward-attest` binary inside the namespace against their main PIDs. The service
//! manager is systemd's own, so the method, signature and property names on the wire are the
//! real ones. Needs root (namespaces, mounts); fails with a message saying so otherwise.

#![allow(clippy::unwrap_used, reason = "test helpers fail the test on any error")]

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::Command;

/// The cgroups `systemd --user` creates at the root of each hierarchy it manages here (the
/// namespace shares the host's cgroup file system); removed again if this test made them.
const MANAGER_CGROUPS: [&str; 3] = ["app.slice", "session.slice", "init.scope"];

/// Removes the empty cgroup directories `systemd --user` left, when they did not exist
/// before the test. A cgroup that still holds a process refuses `rmdir`, so nothing in use is
/// touched.
struct CgroupCleanup(Vec<PathBuf>);

impl CgroupCleanup {
    fn new() -> Self {
        let mut made = Vec::new();
        for hierarchy in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
            for name in MANAGER_CGROUPS {
                let dir = hierarchy.path().join(name);
                if !dir.exists() {
                    made.push(dir);
                }
            }
        }
        Self(made)
    }
}

impl Drop for CgroupCleanup {
    fn drop(&mut self) {
        for dir in &self.0 {
            remove_empty_tree(dir);
        }
    }
}

fn remove_empty_tree(dir: &std::path::Path) {
    if let Ok(children) = std::fs::read_dir(dir) {
        for child in children.flatten() {
            if child.file_type().is_ok_and(|t| t.is_dir()) {
                remove_empty_tree(&child.path());
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
}

const SCRIPT: &str = r#"
set -eu
mkdir -p /run/user /run/systemd
mount -t tmpfs tmpfs /run/user
mount -t tmpfs tmpfs /run/systemd
# systemd --user refuses to start unless the system "was booted with systemd".
mkdir -p /run/systemd/system /run/user/0/systemd/user /run/user/0/home
chmod 700 /run/user/0
export HOME=/run/user/0/home XDG_RUNTIME_DIR=/run/user/0
export DBUS_SESSION_BUS_ADDRESS=unix:path=/run/user/0/bus
cat > /run/user/0/systemd/user/ward-attest-probe.service <<UNIT
[Service]
ExecStart=/usr/bin/sleep 1000
UNIT

wait_for() {
    i=0
    until "$@" >/dev/null 2>&1; do
        i=$((i + 1))
        if [ "$i" -gt 600 ]; then echo "timed out waiting for: $*" >&2; exit 1; fi
        sleep 0.05
    done
}

dbus-daemon --session --address="$DBUS_SESSION_BUS_ADDRESS" --nofork --nopidfile 2>/dev/null &
wait_for test -S /run/user/0/bus
/lib/systemd/systemd --user >/dev/null 2>&1 &
wait_for systemctl --user show-environment

systemctl --user start ward-attest-probe.service
systemd-run --user --quiet --unit=ward-attest-transient /usr/bin/sleep 1000
unit_pid=$(systemctl --user show -p MainPID --value ward-attest-probe.service)
transient_pid=$(systemctl --user show -p MainPID --value ward-attest-transient.service)

echo "== unit"
"$WARD_ATTEST" systemd "$unit_pid" --bus-address "$DBUS_SESSION_BUS_ADDRESS"
echo "== transient"
"$WARD_ATTEST" systemd "$transient_pid" --bus-address "$DBUS_SESSION_BUS_ADDRESS"
echo "== gone"
"$WARD_ATTEST" systemd 999999 --bus-address "$DBUS_SESSION_BUS_ADDRESS" 2>&1 || echo "status $?"
echo "== pid 0"
"$WARD_ATTEST" systemd 0 --bus-address "$DBUS_SESSION_BUS_ADDRESS" 2>&1 || echo "status $?"
echo "== no bus"
"$WARD_ATTEST" systemd "$unit_pid" --bus-address unix:path=/run/user/0/none 2>&1 \
    | sed 's/connection: .*/connection: .../' || true
echo "== end"
"#;

#[test]
fn the_unit_of_a_process_comes_from_systemd_over_d_bus() {
    let uid = std::fs::metadata("/proc/self").unwrap().uid();
    assert_eq!(uid, 0, "this test runs as root: it makes PID and mount namespaces");
    let _cleanup = CgroupCleanup::new();

    let out = Command::new("timeout")
        .args(["120", "unshare", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc"])
        .args(["sh", "-c", SCRIPT])
        .env("WARD_ATTEST", env!("CARGO_BIN_EXE_ward-attest"))
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");

    let expected = "\
== unit
systemd:id:ward-attest-probe.service
systemd:fragment_path:/run/user/0/systemd/user/ward-attest-probe.service
== transient
systemd:id:ward-attest-transient.service
systemd:fragment_path:/run/user/0/systemd/transient/ward-attest-transient.service
== gone
error: failed to get unit by pid 999999: org.freedesktop.systemd1.NoUnitForPID: PID 999999 does not belong to any loaded unit.
status 1
== pid 0
error: could not resolve caller information
status 1
== no bus
error: failed to open dbus connection: ...
== end
";
    assert_eq!(stdout, expected, "stderr:\n{stderr}");
}
