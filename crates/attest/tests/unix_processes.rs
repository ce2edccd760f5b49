//! The `unix` attestor and the caller watch against real processes: children started under
//! chosen uids, gids and groups with `setpriv`, a copied binary whose path and digest are
//! known, a process in its own mount namespace, processes that exit, and the `ward-attest`
//! binary run as an unprivileged user.
//!
//! These tests run as root (to start processes under other uids and to bind-mount in a new
//! mount namespace); they fail with a message saying so otherwise.

#![allow(clippy::unwrap_used, reason = "test helpers fail the test on any error")]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ward_attest::{
    AttestError, Caller, CallerWatch, ProcFs, UnixAttestor, UnixConfig, WorkloadAttestor,
    attest_caller,
};

/// A child process killed and reaped when the test ends, however it ends.
struct Proc(Child);

impl Proc {
    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Kills the process and reaps it, so its pid is gone from `/proc`.
    fn kill_and_reap(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}

fn require_root() {
    let uid = std::fs::metadata("/proc/self").unwrap().uid();
    assert_eq!(uid, 0, "these tests run as root: they start processes under other uids");
}

/// Starts `cmd` and waits until the process runs `exe` (setpriv and unshare exec the
/// workload in the same pid, so the pid is the workload's once the link points at it).
///
/// A launcher that exits before it runs `exe` is started again, a bounded number of times:
/// a binary copied by one test can be briefly busy for another test's exec (ETXTBSY), while
/// a process forked by a third test thread still holds the copy's write descriptor.
fn start(cmd: &mut Command, exe: &Path) -> Proc {
    const ATTEMPTS: u32 = 10;
    for attempt in 1..=ATTEMPTS {
        let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).spawn().unwrap();
        let mut proc = Proc(child);
        let link = PathBuf::from(format!("/proc/{}/exe", proc.pid()));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if std::fs::read_link(&link).ok().as_deref() == Some(exe) {
                return proc;
            }
            if let Some(status) = proc.0.try_wait().unwrap() {
                assert!(
                    attempt < ATTEMPTS,
                    "{cmd:?} exited ({status}) before it ran {}",
                    exe.display()
                );
                std::thread::sleep(Duration::from_millis(50));
                break;
            }
            assert!(Instant::now() < deadline, "{cmd:?} did not exec {}", exe.display());
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    unreachable!("the last attempt returns or fails the test")
}

fn sleep_path() -> PathBuf {
    std::fs::canonicalize("/usr/bin/sleep").unwrap()
}

/// `setpriv <args> <program> 1000`, waiting until `program` runs.
fn start_as(args: &[&str], program: &Path) -> Proc {
    let mut cmd = Command::new("setpriv");
    cmd.args(args).arg(program).arg("1000");
    start(&mut cmd, program)
}

/// The name of `id` in the system's `passwd` or `group` database, by `getent`.
fn getent(db: &str, id: u32) -> Option<String> {
    let out = Command::new("getent").arg(db).arg(id.to_string()).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    text.split(':').next().filter(|n| !n.is_empty()).map(str::to_owned)
}

fn sha256sum(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_owned()
}

fn values(selectors: &[ward_core::Selector]) -> Vec<String> {
    assert!(selectors.iter().all(|s| s.selector_type == "unix"));
    selectors.iter().map(|s| s.value.clone()).collect()
}

fn attestor(discover_workload_path: bool, workload_size_limit: i64) -> UnixAttestor {
    UnixAttestor::new(UnixConfig { discover_workload_path, workload_size_limit }, ProcFs::default())
}

/// A copy of `sleep` in a temporary directory, so its path and digest are the test's own.
fn copied_sleep() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("workload");
    std::fs::copy(sleep_path(), &exe).unwrap();
    let exe = std::fs::canonicalize(exe).unwrap();
    (dir, exe)
}

#[test]
fn ids_without_names_give_only_numeric_selectors_and_groups_come_in_kernel_order() {
    require_root();
    assert_eq!(getent("passwd", 4242), None, "uid 4242 must have no passwd entry here");
    assert_eq!(getent("group", 4243), None, "gid 4243 must have no group entry here");
    let root_group = getent("group", 0).unwrap();
    let proc =
        start_as(&["--reuid", "4242", "--regid", "4243", "--groups", "4244,0"], &sleep_path());
    let selectors = attestor(false, 0).attest(proc.pid()).unwrap();
    assert_eq!(
        values(&selectors),
        [
            "uid:4242".to_owned(),
            "gid:4243".to_owned(),
            "supplementary_gid:0".to_owned(),
            format!("supplementary_group:{root_group}"),
            "supplementary_gid:4244".to_owned(),
        ]
    );
}

#[test]
fn ids_with_entries_give_user_and_group_names() {
    require_root();
    let user = getent("passwd", 65534).unwrap();
    let group = getent("group", 65534).unwrap();
    let proc = start_as(&["--reuid", "65534", "--regid", "65534", "--clear-groups"], &sleep_path());
    let selectors = attestor(false, 0).attest(proc.pid()).unwrap();
    assert_eq!(
        values(&selectors),
        [
            "uid:65534".to_owned(),
            format!("user:{user}"),
            "gid:65534".to_owned(),
            format!("group:{group}"),
        ]
    );
}

#[test]
fn discover_workload_path_adds_the_path_and_digest_of_the_binary() {
    require_root();
    let (_dir, exe) = copied_sleep();
    let (user, group) = (getent("passwd", 0).unwrap(), getent("group", 0).unwrap());
    let proc = start_as(&["--clear-groups"], &exe);
    let selectors = attestor(true, 0).attest(proc.pid()).unwrap();
    assert_eq!(
        values(&selectors),
        [
            "uid:0".to_owned(),
            format!("user:{user}"),
            "gid:0".to_owned(),
            format!("group:{group}"),
            format!("path:{}", exe.display()),
            format!("sha256:{}", sha256sum(&exe)),
        ]
    );

    // A negative limit keeps the path and never hashes.
    let no_hash = attestor(true, -1).attest(proc.pid()).unwrap();
    assert_eq!(values(&no_hash).last().unwrap(), &format!("path:{}", exe.display()));
    assert_eq!(no_hash.len(), 5);

    // Without discover_workload_path neither is reported.
    assert_eq!(attestor(false, 0).attest(proc.pid()).unwrap().len(), 4);
}

#[test]
fn a_binary_over_the_size_limit_fails_attestation_and_one_at_the_limit_is_hashed() {
    require_root();
    let (_dir, exe) = copied_sleep();
    let size = std::fs::metadata(&exe).unwrap().len();
    let proc = start_as(&["--clear-groups"], &exe);
    let limit = i64::try_from(size).unwrap() - 1;
    let err = attestor(true, limit).attest(proc.pid()).unwrap_err();
    assert!(matches!(err, AttestError::SizeLimit { size: s, .. } if s == size), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "SHA256 digest: workload /proc/{}/exe exceeds size limit ({size} > {limit})",
            proc.pid()
        )
    );
    let at_limit = attestor(true, limit + 1).attest(proc.pid()).unwrap();
    assert_eq!(values(&at_limit).last().unwrap(), &format!("sha256:{}", sha256sum(&exe)));
}

#[test]
fn a_process_in_another_mount_namespace_reports_its_path_inside_that_namespace() {
    require_root();
    let (dir, exe) = copied_sleep();
    // `hidden` is empty on the host; only inside the workload's mount namespace does it show
    // the directory holding the binary, as a container's root file system does.
    let hidden = dir.path().join("hidden");
    std::fs::create_dir(&hidden).unwrap();
    let hidden = std::fs::canonicalize(hidden).unwrap();
    let inside = hidden.join("workload");
    let script = format!(
        "mount --bind '{}' '{}' && exec '{}' 1000",
        exe.parent().unwrap().display(),
        hidden.display(),
        inside.display()
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
    let proc = start(&mut cmd, &inside);

    assert!(!inside.exists(), "the path must not exist in the test's own mount namespace");
    let selectors = attestor(true, 0).attest(proc.pid()).unwrap();
    let values = values(&selectors);
    assert_eq!(
        values[values.len() - 2..],
        [format!("path:{}", inside.display()), format!("sha256:{}", sha256sum(&exe)),]
    );
}

#[test]
fn a_pid_that_exited_is_not_found() {
    require_root();
    let mut proc = start_as(&["--clear-groups"], &sleep_path());
    let pid = proc.pid();
    proc.kill_and_reap();
    let err = attestor(true, 0).attest(pid).unwrap_err();
    assert!(matches!(err, AttestError::ProcessNotFound { pid: p } if p == pid), "{err:?}");
    assert_eq!(err.to_string(), format!("failed to get process: process {pid} does not exist"));
    let watch = CallerWatch::open(&ProcFs::default(), Caller { pid, uid: 0, gid: 0 });
    assert!(matches!(watch, Err(AttestError::ProcessNotFound { .. })), "{watch:?}");
    let no_pid = CallerWatch::open(&ProcFs::default(), Caller { pid: 0, uid: 0, gid: 0 });
    assert_eq!(no_pid.unwrap_err().to_string(), "could not resolve caller information");
}

#[test]
fn a_live_caller_is_attested_through_the_watch() {
    require_root();
    let proc = start_as(&["--reuid", "65534", "--regid", "65534", "--clear-groups"], &sleep_path());
    let caller = Caller { pid: proc.pid(), uid: 65534, gid: 65534 };
    let unix = attestor(false, 0);
    let selectors = attest_caller(&ProcFs::default(), caller, &[&unix]).unwrap();
    assert_eq!(values(&selectors)[0], "uid:65534");
}

#[test]
fn a_caller_that_exits_while_it_is_attested_is_rejected() {
    require_root();
    let mut proc = start_as(&["--clear-groups"], &sleep_path());
    let caller = Caller { pid: proc.pid(), uid: 0, gid: 0 };
    let watch = CallerWatch::open(&ProcFs::default(), caller).unwrap();
    let selectors = attestor(false, 0).attest(caller.pid).unwrap();
    assert_eq!(values(&selectors)[0], "uid:0");
    watch.check().unwrap();

    proc.kill_and_reap();
    let err = watch.check().unwrap_err();
    assert!(err.is_caller_changed(), "{err:?}");
    assert!(
        matches!(err, AttestError::CallerDirGone { .. }),
        "the handle on the old /proc/<pid> fails first: {err:?}"
    );
}

#[test]
fn a_caller_whose_pid_now_shows_another_owner_is_rejected() {
    require_root();
    let proc = start_as(&["--reuid", "4242", "--regid", "4243", "--clear-groups"], &sleep_path());
    let claimed = Caller { pid: proc.pid(), uid: 4300, gid: 4243 };
    let unix = attestor(false, 0);
    let err = attest_caller(&ProcFs::default(), claimed, &[&unix]).unwrap_err();
    assert!(matches!(err, AttestError::UidChanged { expected: 4300, found: 4242 }), "{err:?}");
    let claimed = Caller { pid: proc.pid(), uid: 4242, gid: 4300 };
    let err = attest_caller(&ProcFs::default(), claimed, &[&unix]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "new process detected: process gid 4243 does not match original caller 4300"
    );
}

/// A stat line of pid 777 with the given start time (field 22).
fn stat_line(start_time: u64) -> String {
    format!(
        "777 (work load) S 1 777 777 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 {start_time} \
         1000 100 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0\n"
    )
}

#[test]
fn a_pid_reused_by_a_process_with_another_start_time_is_rejected() {
    // A real pid cannot be made to be reused on demand, so this proc root is a directory
    // whose `777/stat` the test rewrites as the kernel would for a new process at pid 777.
    let root = tempfile::tempdir().unwrap();
    let procfs = ProcFs::new(root.path());
    std::fs::create_dir(procfs.pid_dir(777)).unwrap();
    std::fs::write(procfs.path(777, "stat"), stat_line(5000)).unwrap();
    let meta = std::fs::metadata(procfs.pid_dir(777)).unwrap();
    let caller = Caller { pid: 777, uid: meta.uid(), gid: meta.gid() };

    let watch = CallerWatch::open(&procfs, caller).unwrap();
    assert_eq!(watch.start_time(), 5000);
    watch.check().unwrap();

    std::fs::write(procfs.path(777, "stat"), stat_line(5123)).unwrap();
    let err = watch.check().unwrap_err();
    assert!(matches!(err, AttestError::StartTimeChanged { expected: 5000, found: 5123 }));
    assert_eq!(
        err.to_string(),
        "new process detected: process starttime 5123 does not match original caller 5000"
    );
    assert!(err.is_caller_changed());

    std::fs::write(procfs.path(777, "stat"), "777 (cut").unwrap();
    let err = watch.check().unwrap_err();
    assert_eq!(
        err.to_string(),
        "caller exit suspected due to failure to get starttime: bad stat data"
    );
}

/// Runs the `ward-attest` binary as uid:gid 4250 with no capabilities.
fn ward_attest_as_4250(pid: u32) -> (String, String, bool) {
    let out = Command::new("setpriv")
        .args(["--reuid", "4250", "--regid", "4250", "--clear-groups", "--inh-caps", "-all"])
        .arg(env!("CARGO_BIN_EXE_ward-attest"))
        .args(["unix", &pid.to_string(), "--discover-workload-path"])
        .output()
        .unwrap();
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
        out.status.success(),
    )
}

#[test]
fn without_ptrace_rights_path_selectors_are_left_out_with_a_warning_not_an_error() {
    require_root();
    let proc = start_as(&["--reuid", "4251", "--regid", "4251", "--clear-groups"], &sleep_path());
    let (stdout, stderr, ok) = ward_attest_as_4250(proc.pid());
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "unix:uid:4251\nunix:gid:4251\n");
    assert_eq!(
        stderr,
        format!(
            "warning: path and sha256 selectors left out: path lookup: readlink /proc/{}/exe: \
             permission denied (reading another user's process executable needs \
             CAP_SYS_PTRACE or the agent running as the workload's uid)\n",
            proc.pid()
        )
    );
}

#[test]
fn an_agent_under_the_workloads_uid_reads_path_and_digest_without_capabilities() {
    require_root();
    let proc = start_as(&["--reuid", "4250", "--regid", "4250", "--clear-groups"], &sleep_path());
    let (stdout, stderr, ok) = ward_attest_as_4250(proc.pid());
    assert!(ok, "{stderr}");
    assert_eq!(stderr, "");
    assert_eq!(
        stdout,
        format!(
            "unix:uid:4250\nunix:gid:4250\nunix:path:{}\nunix:sha256:{}\n",
            sleep_path().display(),
            sha256sum(&sleep_path())
        )
    );
}
