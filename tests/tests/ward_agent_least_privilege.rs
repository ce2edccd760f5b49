#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! ward-agent running as an unprivileged user, end to end with real processes: ward-server
//! as root; ward-agent started through `setpriv` as uid 4270 with no capabilities at all
//! (empty permitted, effective, inheritable, ambient and bounding sets, no new privileges, no
//! supplementary groups), its data and socket directories owned by that uid; workloads are
//! SPIRE v1.13.3's own Workload API client (`spire-agent api …`) under other uids.
//! 1. with no capabilities the agent serves `unix:uid`, `unix:gid` and `unix:user` entries
//!    to workloads of other users;
//! 2. an entry needing `unix:path` is not served to another user's workload: the agent logs
//!    one warning saying why (it may not read `/proc/<pid>/exe` without `CAP_SYS_PTRACE`)
//!    and keeps serving; the same binary run under the agent's own uid gets its `path` and
//!    `sha256` entries;
//! 3. security answers of the real process to a raw gRPC client (the test process, whose
//!    selectors match no entry): no `workload.spiffe.io` header is `InvalidArgument`
//!    "security header missing from request" on every call; with it, FetchX509SVID,
//!    FetchX509Bundles, FetchJWTBundles and FetchJWTSVID are `PermissionDenied` "no identity
//!    issued" with no message, no bundle and no SVID;
//! 4. the data directory is 0700 and `agent-data.json` 0600, both the agent user's; it is
//!    the only file holding key material, and the agent user owns nothing in the temporary
//!    directories outside its own directory;
//! 5. restarted with `CAP_SYS_PTRACE` as its only capability (ambient, as a systemd unit's
//!    `AmbientCapabilities=` grants it), the agent keeps its identity and serves the `path`
//!    and `sha256` entries to another user's workload.
//!
//! Runs as root (it changes users and capabilities).

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Request, Status};
use ward_proto::spiffe::workload as pb;
use ward_proto::spiffe::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use ward_tests::agent::{
    AgentDirs, ServerForAgent, WorkloadClient, runnable_copy, start_ward_agent_with, wait_healthy,
};
use ward_tests::command::run;
use ward_tests::daemon::Daemon;
use ward_tests::spire::SpireBins;
use ward_tests::wait::{Step, poll_until};
use ward_tests::ward::{ward_agent_bin, ward_server_bin};

const TD: &str = "example.org";
const WAIT: Duration = Duration::from_secs(60);
/// The agent's user and group: no passwd entry is needed to run as it.
const AGENT_UID: u32 = 4270;
/// A workload selected by uid.
const UID_WORKLOAD: (u32, u32) = (4271, 4271);
/// A workload selected by gid (its uid is selected by nothing).
const GID_WORKLOAD: (u32, u32) = (4272, 4279);
/// The user whose workload runs the path-selected binary (not the agent's uid).
const OTHER_USER: (u32, u32) = (4273, 4273);
/// A user that exists in `/etc/passwd` on Debian and Ubuntu, for `unix:user`.
const NAMED_USER: &str = "www-data";
/// The warning of the `unix` attestor when it may not read a workload's executable.
const PATH_SKIPPED: &str = "unix attestor left out path and sha256 selectors";
/// `CAP_SYS_PTRACE` as a bit of `/proc/<pid>/status`'s capability sets.
const CAP_SYS_PTRACE_MASK: &str = "0000000000080000";
const NO_CAPS: &str = "0000000000000000";

fn phase(step: &str) {
    eprintln!("[ward-agent least privilege] {step}");
}

/// `setpriv` running `bin` as the agent's user with the capability `cap` (e.g.
/// `sys_ptrace`) as its only one, or none at all.
fn agent_command(bin: &Path, cap: Option<&str>) -> Command {
    let id = AGENT_UID.to_string();
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid", &id, "--regid", &id, "--clear-groups", "--no-new-privs"]);
    match cap {
        None => cmd.args(["--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all"]),
        Some(cap) => cmd.args([
            format!("--inh-caps=-all,+{cap}"),
            format!("--ambient-caps=-all,+{cap}"),
            format!("--bounding-set=-all,+{cap}"),
        ]),
    };
    cmd.arg("--").arg(bin);
    cmd
}

/// The lines of `/proc/<pid>/status` that say who a process is and what it may do.
fn credentials(pid: u32) -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.starts_with("Cap") || ["Uid", "Gid", "Groups", "NoNewPrivs"].contains(k))
        .map(|(k, v)| (k.to_owned(), v.split_whitespace().collect::<Vec<_>>().join(" ")))
        .collect())
}

/// Checks that process `pid` runs as the agent's user, with no supplementary groups, no new
/// privileges, and exactly `caps` in every capability set (inheritable, permitted, effective,
/// bounding, ambient).
fn check_credentials(pid: u32, caps: &str) -> anyhow::Result<()> {
    let id = AGENT_UID.to_string();
    let ids = [id.as_str(); 4].join(" ");
    let want: Vec<(String, String)> = [
        ("Uid", ids.as_str()),
        ("Gid", ids.as_str()),
        ("Groups", ""),
        ("CapInh", caps),
        ("CapPrm", caps),
        ("CapEff", caps),
        ("CapBnd", caps),
        ("CapAmb", caps),
        ("NoNewPrivs", "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let got = credentials(pid)?;
    ensure!(got == want, "agent pid {pid} runs with {got:?}, expected {want:?}");
    Ok(())
}

/// The uid and gid of `name` in `/etc/passwd`.
fn passwd_ids(name: &str) -> anyhow::Result<(u32, u32)> {
    let text = std::fs::read_to_string("/etc/passwd")?;
    for line in text.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if let [user, _, uid, gid, ..] = fields.as_slice()
            && *user == name
        {
            return Ok((uid.parse()?, gid.parse()?));
        }
    }
    bail!("no user {name} in /etc/passwd")
}

/// The sorted SPIFFE IDs `client`'s `api fetch x509` prints, once it prints exactly `want`.
fn wait_for_ids(client: &WorkloadClient, want: &[&str]) -> anyhow::Result<()> {
    let want: BTreeSet<String> = want.iter().map(|s| (*s).to_owned()).collect();
    poll_until(&format!("uid {} to get {want:?}", client.uid), WAIT, || {
        let out = client.api(&["fetch", "x509"])?;
        let got: BTreeSet<String> =
            ward_tests::agent::spiffe_ids(&out.stdout).into_iter().collect();
        Ok(if out.status.success() && got == want {
            Step::Done(())
        } else {
            Step::Retry(out.describe())
        })
    })
}

/// `client`'s `api fetch x509` is refused with PermissionDenied "no identity issued".
fn check_denied(client: &WorkloadClient) -> anyhow::Result<()> {
    let out = client.api(&["fetch", "x509"])?;
    ensure!(
        !out.status.success()
            && out.stderr.contains("PermissionDenied")
            && out.stderr.contains("no identity issued"),
        "{}",
        out.describe()
    );
    Ok(())
}

/// The lines of the agent's log that report the path selectors left out.
fn path_skipped_lines(agent: &Daemon) -> Vec<String> {
    agent.log().lines().filter(|l| l.contains(PATH_SKIPPED)).map(str::to_owned).collect()
}

/// A raw Workload API client on the socket: the test process itself is the caller.
async fn raw_client(socket: &Path) -> anyhow::Result<SpiffeWorkloadApiClient<Channel>> {
    let socket = socket.to_owned();
    let channel = Endpoint::try_from("http://localhost")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(&socket).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await?;
    Ok(SpiffeWorkloadApiClient::new(channel))
}

/// A request with the security header set to `header` (none when `None`).
fn request<T>(message: T, header: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(value) = header {
        request.metadata_mut().insert("workload.spiffe.io", value.parse().unwrap());
    }
    request
}

/// Checks that `call` failed with `code` and `message` and carried nothing else: no
/// message, no details and no metadata beyond the transport's own headers.
fn check_bare_refusal<T: std::fmt::Debug>(
    call: &str,
    answer: Result<T, Status>,
    code: Code,
    message: &str,
) -> anyhow::Result<()> {
    let status = match answer {
        Ok(answer) => bail!("{call} answered {answer:?}"),
        Err(status) => status,
    };
    ensure!(
        status.code() == code && status.message() == message,
        "{call}: {status:?}, expected {code:?} {message:?}"
    );
    ensure!(status.details().is_empty(), "{call}: details {:?}", status.details());
    let extra: Vec<String> = status
        .metadata()
        .keys()
        .map(|k| match k {
            tonic::metadata::KeyRef::Ascii(k) => k.as_str().to_owned(),
            tonic::metadata::KeyRef::Binary(k) => k.as_str().to_owned(),
        })
        .filter(|k| !["content-type", "date", "grpc-status", "grpc-message"].contains(&k.as_str()))
        .collect();
    ensure!(extra.is_empty(), "{call}: unexpected metadata {extra:?} in {status:?}");
    Ok(())
}

/// Every Workload API call that needs an identity, made with the security header `header`;
/// each must fail with `code` and `message` and return nothing else.
async fn check_refused(
    client: &mut SpiffeWorkloadApiClient<Channel>,
    header: Option<&str>,
    code: Code,
    message: &str,
) -> anyhow::Result<()> {
    let x509 = client.fetch_x509svid(request(pb::X509svidRequest {}, header)).await;
    check_bare_refusal("FetchX509SVID", x509.map(|_| "a stream"), code, message)?;
    let bundles = client.fetch_x509_bundles(request(pb::X509BundlesRequest {}, header)).await;
    check_bare_refusal("FetchX509Bundles", bundles.map(|_| "a stream"), code, message)?;
    let jwt_bundles = client.fetch_jwt_bundles(request(pb::JwtBundlesRequest {}, header)).await;
    check_bare_refusal("FetchJWTBundles", jwt_bundles.map(|_| "a stream"), code, message)?;
    let audience = vec!["least-privilege".to_owned()];
    let jwt_request = pb::JwtsvidRequest { audience, spiffe_id: String::new() };
    let jwt = client.fetch_jwtsvid(request(jwt_request, header)).await;
    check_bare_refusal("FetchJWTSVID", jwt, code, message)
}

/// The security checks of phase 3, from the test process (root, selected by no entry).
fn security_checks(socket: &Path) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let mut client = raw_client(socket).await?;
        let header_missing = "security header missing from request";
        check_refused(&mut client, None, Code::InvalidArgument, header_missing).await?;
        check_refused(&mut client, Some("false"), Code::InvalidArgument, header_missing).await?;
        let validate_request =
            pb::ValidateJwtsvidRequest { audience: "a".into(), svid: "x".into() };
        let validate = client.validate_jwtsvid(request(validate_request, None)).await;
        check_bare_refusal("ValidateJWTSVID", validate, Code::InvalidArgument, header_missing)?;
        check_refused(&mut client, Some("true"), Code::PermissionDenied, "no identity issued").await
    })
}

/// Files under `dir` (recursively, not following links).
fn files_under(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            let meta = std::fs::symlink_metadata(&path)?;
            if meta.is_dir() {
                todo.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Phase 4: modes and owners of the agent's files, and where key material is.
fn check_files(dirs: &AgentDirs, log: &str) -> anyhow::Result<()> {
    let data = std::fs::metadata(&dirs.data_dir)?;
    ensure!(
        data.uid() == AGENT_UID && data.mode() & 0o7777 == 0o700,
        "data dir uid {} mode {:o}",
        data.uid(),
        data.mode()
    );
    let state = dirs.data_dir.join("agent-data.json");
    let meta = std::fs::metadata(&state)?;
    ensure!(
        meta.uid() == AGENT_UID && meta.gid() == AGENT_UID && meta.mode() & 0o7777 == 0o600,
        "{}: uid {} gid {} mode {:o}",
        state.display(),
        meta.uid(),
        meta.gid(),
        meta.mode()
    );
    let admin_dir = std::fs::metadata(dirs.admin_socket.parent().context("admin dir")?)?;
    ensure!(admin_dir.uid() == AGENT_UID && admin_dir.mode() & 0o7777 == 0o700, "admin dir");
    let public = std::fs::metadata(dirs.socket.parent().context("socket dir")?)?;
    ensure!(public.uid() == AGENT_UID && public.mode() & 0o7777 == 0o755, "socket dir");

    // Key material: only in the state file.
    let mut with_keys = Vec::new();
    for file in files_under(&dirs.dir)? {
        let meta = std::fs::symlink_metadata(&file)?;
        if meta.is_file() && String::from_utf8_lossy(&std::fs::read(&file)?).contains("PRIVATE KEY")
        {
            with_keys.push(file);
        }
    }
    ensure!(with_keys == vec![state], "files holding a private key: {with_keys:?}");
    ensure!(!log.contains("PRIVATE KEY"), "the agent logged key material");

    // The agent's user owns nothing in the temporary directories outside the agent's own.
    let out = run(
        Command::new("find")
            .args(["/tmp", "/var/tmp", "/dev/shm", "-xdev", "-uid"])
            .arg(AGENT_UID.to_string()),
        Duration::from_secs(60),
    )?;
    let stray: Vec<&str> =
        out.stdout.lines().filter(|l| !Path::new(l).starts_with(&dirs.dir)).collect();
    ensure!(stray.is_empty(), "files of the agent's user outside its directory: {stray:?}");
    Ok(())
}

#[test]
fn an_agent_without_root_or_capabilities_serves_uid_and_gid_selectors() -> anyhow::Result<()> {
    ensure!(std::fs::metadata("/proc/self")?.uid() == 0, "runs as root");
    let named = passwd_ids(NAMED_USER)?;
    let tmp = tempfile::Builder::new().prefix("ward-lp").tempdir()?;
    let root = tmp.path();
    // Other users reach the socket's directory, the bundle and the binaries.
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755))?;
    let spire = SpireBins::locate()?;
    let server_bin = ward_server_bin()?;
    let agent_bin = runnable_copy(&ward_agent_bin()?, root, "ward-agent")?;

    phase("server as root, join token");
    let started = ServerForAgent::start(&server_bin, root, TD)?;

    phase("1. the agent as uid 4270 with no capabilities");
    let dirs = AgentDirs::new(root, "agent");
    std::fs::create_dir(&dirs.dir)?;
    std::fs::set_permissions(&dirs.dir, std::fs::Permissions::from_mode(0o755))?;
    std::os::unix::fs::chown(&dirs.dir, Some(AGENT_UID), Some(AGENT_UID))?;
    let config = started
        .agent_config(
            TD,
            "sync_interval = \"1s\"\n\n[workload_attestors.unix]\ndiscover_workload_path = true\n",
        )
        .render(&dirs);
    let ServerForAgent { mut server, cli, agent_id, .. } = started;
    let mut agent = start_ward_agent_with(agent_command(&agent_bin, None), &dirs, &config)?;
    wait_healthy(&agent_bin, &mut agent, &dirs.admin_socket)?;
    check_credentials(agent.id(), NO_CAPS)?;

    let client_bin = runnable_copy(&spire.agent, root, "spire-agent")?;
    let path_bin = runnable_copy(&spire.agent, root, "path-workload")?;
    let digest = run(Command::new("sha256sum").arg(&path_bin), Duration::from_secs(60))?
        .success()?
        .stdout
        .split_whitespace()
        .next()
        .context("sha256sum printed nothing")?
        .to_owned();
    let id = |name: &str| format!("spiffe://{TD}/workload/{name}");
    let (uid_id, gid_id, user_id, path_id, digest_id) =
        (id("by-uid"), id("by-gid"), id("by-user"), id("by-path"), id("by-path-and-sha256"));
    let path_selector = format!("unix:path:{}", path_bin.display());
    let digest_selector = format!("unix:sha256:{digest}");
    cli.entry_create(&agent_id, &uid_id, &format!("unix:uid:{}", UID_WORKLOAD.0))?;
    cli.entry_create(&agent_id, &gid_id, &format!("unix:gid:{}", GID_WORKLOAD.1))?;
    cli.entry_create(&agent_id, &user_id, &format!("unix:user:{NAMED_USER}"))?;
    cli.entry_create(&agent_id, &path_id, &path_selector)?;
    let args = ["-parentID", &agent_id, "-spiffeID", &digest_id];
    let selectors = ["-selector", &path_selector, "-selector", &digest_selector];
    cli.ok(&["entry", "create"], &[&args[..], &selectors[..]].concat())?;

    let client = |bin: &Path, (uid, gid): (u32, u32)| WorkloadClient {
        bin: bin.to_owned(),
        socket: dirs.socket.clone(),
        uid,
        gid,
    };
    let by_uid = client(&client_bin, UID_WORKLOAD);
    wait_for_ids(&by_uid, &[&uid_id])?;
    wait_for_ids(&client(&client_bin, GID_WORKLOAD), &[&gid_id])?;
    wait_for_ids(&client(&client_bin, named), &[&user_id])?;

    phase("2. path selectors: not for another user's workload, logged; yes under the agent's uid");
    let before = path_skipped_lines(&agent).len();
    let other_path_workload = client(&path_bin, OTHER_USER);
    check_denied(&other_path_workload)?;
    let skipped = path_skipped_lines(&agent);
    ensure!(skipped.len() > before, "no warning in the agent's log:\n{}", agent.log_tail());
    let reason = "permission denied (reading another user's process executable needs \
                  CAP_SYS_PTRACE or the agent running as the workload's uid)";
    let line_format = regex::Regex::new(&format!(
        r"^\S+ +WARN ward_attest::unix: {} pid=(\d+) error=path lookup: readlink /proc/(\d+)/exe: {}$",
        regex::escape(PATH_SKIPPED),
        regex::escape(reason),
    ))?;
    for line in &skipped[before..] {
        let caps = line_format.captures(line).with_context(|| format!("log line: {line}"))?;
        ensure!(caps[1] == caps[2], "the line names two pids: {line}");
    }
    ensure!(
        !agent.log().contains("workload attestor failed"),
        "an attestor failed:\n{}",
        agent.log_tail()
    );
    agent.ensure_running()?;
    wait_for_ids(&by_uid, &[&uid_id])?;
    wait_for_ids(&client(&path_bin, (AGENT_UID, AGENT_UID)), &[&path_id, &digest_id])?;

    phase("3. security answers to a raw client selected by no entry");
    security_checks(&dirs.socket)?;
    agent.ensure_running()?;

    phase("4. files: private data directory, key material in one file");
    check_files(&dirs, &agent.log())?;

    phase("5. restarted with CAP_SYS_PTRACE only: path for another user's workload");
    agent.terminate(Duration::from_secs(10))?;
    drop(agent);
    let skipped_before = path_skipped_lines_in(&dirs)?;
    let mut agent =
        start_ward_agent_with(agent_command(&agent_bin, Some("sys_ptrace")), &dirs, &config)?;
    wait_healthy(&agent_bin, &mut agent, &dirs.admin_socket)?;
    check_credentials(agent.id(), CAP_SYS_PTRACE_MASK)?;
    wait_for_ids(&other_path_workload, &[&path_id, &digest_id])?;
    wait_for_ids(&by_uid, &[&uid_id])?;
    ensure!(
        path_skipped_lines(&agent).len() == skipped_before,
        "path selectors left out with CAP_SYS_PTRACE:\n{}",
        agent.log_tail()
    );
    let log = agent.log();
    ensure!(!log.contains("join token has already been used"), "the restart attested again");
    agent.terminate(Duration::from_secs(10))?;
    server.daemon.terminate(Duration::from_secs(10))?;
    Ok(())
}

/// The number of path-skipped warnings in the agent's log file so far.
fn path_skipped_lines_in(dirs: &AgentDirs) -> anyhow::Result<usize> {
    let log = std::fs::read_to_string(dirs.dir.join("ward-agent.log"))?;
    Ok(log.lines().filter(|l| l.contains(PATH_SKIPPED)).count())
}
