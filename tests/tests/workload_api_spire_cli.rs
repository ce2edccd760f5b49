//! ward-agent's Workload API served to SPIRE v1.13.3's own client, `spire-agent api`
//! (`fetch x509`, `fetch jwt`, `validate jwt`, and `watch`, which is go-spiffe v2's
//! `WatchX509Context`) and `spire-agent healthcheck`, run as child processes under different uids: each is attested from
//! its own peer credentials by the real `unix` attestor.
//!
//! Runs as root (to start clients under other uids) and needs the SPIRE binaries
//! (`WARD_SPIRE_BIN` or `tests/interop/spire/build.sh`).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use ward_agent::cache::{Cache, CacheView, X509Identity};
use ward_agent::workload::{ListenerConfig, serve};
use ward_attest::{ProcFs, UnixAttestor, UnixConfig, WorkloadAttestor};
use ward_core::{Selector, SelectorSet, SpiffeId};
use ward_testkit::TestAuthority;
use ward_testkit::agent::{self, TestJwtSource};
use ward_tests::agent_scenario::{openssl_verify, read_written_svids};
use ward_tests::command::{CommandOutput, run};
use ward_tests::daemon::Daemon;
use ward_tests::spire::SpireBins;
use ward_tests::wait::{Step, poll_until};

const TD: &str = "example.org";
const NOBODY: u32 = 65534;
/// A uid no entry selects.
const STRANGER: u32 = 65533;
const TIMEOUT: Duration = Duration::from_secs(30);

fn identity(authority: &TestAuthority, entry_id: &str, uid: u32) -> Arc<X509Identity> {
    let spiffe_id = SpiffeId::parse(&format!("spiffe://{TD}/{entry_id}")).unwrap();
    let selectors = SelectorSet::new(vec![Selector::new("unix", &format!("uid:{uid}")).unwrap()]);
    agent::identity(authority, entry_id, spiffe_id, selectors)
}

/// `spire-agent api <args> -socketPath <socket>` as `uid`, `agent` being a copy of
/// `spire-agent` every uid may run.
fn api(agent: &Path, socket: &Path, uid: u32, args: &[&str]) -> CommandOutput {
    let mut cmd = Command::new(agent);
    cmd.arg("api").args(args).arg("-socketPath").arg(socket).uid(uid).gid(uid);
    run(&mut cmd, TIMEOUT).unwrap()
}

fn spiffe_ids(stdout: &str) -> Vec<&str> {
    stdout.lines().filter_map(|l| l.strip_prefix("SPIFFE ID:")).map(str::trim).collect()
}

#[test]
fn spire_agent_api_clients_get_what_their_uid_selects() {
    assert_eq!(std::fs::metadata("/proc/self").unwrap().uid(), 0, "runs as root");
    let bins = SpireBins::locate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Clients under other uids must reach the socket's directory and the binary (the build
    // cache may sit in root's private home: link it, or copy it, into the test directory).
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let agent = dir.path().join("spire-agent");
    if std::fs::hard_link(&bins.agent, &agent).is_err() {
        std::fs::copy(&bins.agent, &agent).unwrap();
    }
    let socket = dir.path().join("public").join("api.sock");
    // Clients use an alternate name, as a pod mounting the directory may.
    let via_link = socket.with_file_name("spire-agent.sock");

    let authority = Arc::new(TestAuthority::new(TD));
    let cache = Arc::new(Cache::new(CacheView::new(authority.bundle())));
    cache.update(|v| {
        v.identities = vec![
            identity(&authority, "nobody-workload", NOBODY),
            identity(&authority, "root-workload", 0),
        ];
    });
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let attestors: Vec<Box<dyn WorkloadAttestor>> =
        vec![Box::new(UnixAttestor::new(UnixConfig::default(), ProcFs::default()))];
    let server = runtime.spawn(serve(
        ListenerConfig::new(socket.clone()),
        Arc::clone(&cache),
        Arc::new(TestJwtSource(Arc::clone(&authority))),
        attestors,
        async {
            let _ = stopped.await;
        },
    ));
    poll_until("the workload api socket", TIMEOUT, || {
        Ok(if via_link.exists() { Step::Done(()) } else { Step::Retry("no socket".into()) })
    })
    .unwrap();

    // healthcheck: the health service on the same socket answers SERVING.
    let mut cmd = Command::new(&agent);
    cmd.arg("healthcheck").arg("-socketPath").arg(&via_link);
    let out = run(&mut cmd, TIMEOUT).unwrap().success().unwrap();
    assert_eq!(out.stdout.trim(), "Agent is healthy.");

    // fetch x509, as root: its own SVID written to files that openssl verifies.
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = api(&agent, &via_link, 0, &["fetch", "x509", "-write", out_dir.to_str().unwrap()])
        .success()
        .unwrap();
    assert_eq!(spiffe_ids(&out.stdout), ["spiffe://example.org/root-workload"], "{}", out.stdout);
    let written = read_written_svids(&out_dir).unwrap();
    assert_eq!(written.len(), 1);
    assert_eq!(written[0].0, "spiffe://example.org/root-workload");
    openssl_verify(&out_dir.join("bundle.0.pem"), &written[0].1).unwrap();

    // As nobody: nobody's SVID only. As a uid with no entry: PermissionDenied.
    let out = api(&agent, &via_link, NOBODY, &["fetch", "x509"]).success().unwrap();
    assert_eq!(spiffe_ids(&out.stdout), ["spiffe://example.org/nobody-workload"]);
    let out = api(&agent, &via_link, STRANGER, &["fetch", "x509"]);
    assert!(!out.status.success(), "{}", out.describe());
    assert!(
        out.stderr.contains("PermissionDenied") && out.stderr.contains("no identity issued"),
        "{}",
        out.describe()
    );

    // fetch jwt, then validate jwt with the token (and a wrong audience).
    let out =
        api(&agent, &via_link, NOBODY, &["fetch", "jwt", "-audience", "demo"]).success().unwrap();
    let mut lines = out.stdout.lines();
    lines.find(|l| *l == "token(spiffe://example.org/nobody-workload):").expect(&out.stdout);
    let token = lines.next().unwrap().trim().to_owned();
    assert!(out.stdout.contains("bundle(spiffe://example.org):"), "{}", out.stdout);
    let out =
        api(&agent, &via_link, NOBODY, &["validate", "jwt", "-audience", "demo", "-svid", &token])
            .success()
            .unwrap();
    assert!(out.stdout.contains("SVID is valid."), "{}", out.stdout);
    assert!(out.stdout.contains("spiffe://example.org/nobody-workload"), "{}", out.stdout);
    let out =
        api(&agent, &via_link, NOBODY, &["validate", "jwt", "-audience", "other", "-svid", &token]);
    assert!(!out.status.success(), "{}", out.describe());
    assert!(out.stderr.contains("expected audience"), "{}", out.describe());

    // watch (go-spiffe's WatchX509Context) as root: rotation, a new entry and the removal of
    // every entry reach the open stream.
    let log = dir.path().join("watch.log");
    let mut cmd = Command::new(&agent);
    cmd.args(["api", "watch", "-socketPath"]).arg(&via_link);
    let watch = Daemon::spawn("spire-agent api watch", cmd, &log).unwrap();
    let wait_log = |what: &str, done: &dyn Fn(&str) -> bool| {
        poll_until(what, TIMEOUT, || {
            let text = watch.log();
            Ok(if done(&text) { Step::Done(()) } else { Step::Retry(text) })
        })
        .unwrap();
    };
    let received = |text: &str| text.matches("Received ").count();
    wait_log("the first update", &|t| received(t) == 1 && t.contains("root-workload"));

    cache.update(|v| {
        v.identities.retain(|i| i.entry_id != "root-workload");
        v.identities.push(identity(&authority, "root-workload", 0));
    });
    wait_log("the rotated SVID", &|t| received(t) == 2);

    cache.update(|v| v.identities.push(identity(&authority, "root-workload-2", 0)));
    wait_log("the added entry", &|t| {
        t.contains("Received 2 svids") && t.contains("root-workload-2")
    });

    cache.update(|v| v.identities.retain(|i| i.entry_id == "nobody-workload"));
    wait_log("the identity taken away", &|t| t.contains("no identity issued"));
    assert_eq!(received(&watch.log()), 3, "{}", watch.log());
    drop(watch);

    stop.send(()).unwrap();
    runtime.block_on(server).unwrap().unwrap();
}
