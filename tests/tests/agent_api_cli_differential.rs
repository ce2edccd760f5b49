//! `ward-agent api …` against SPIRE v1.13.3's `spire-agent api …`, by difference: both
//! clients run the same command against the SAME Workload API socket (ward-agent's Workload
//! API served in-process with fixed SVIDs, each caller attested by the real `unix` attestor),
//! and their exit codes, stdout, stderr and written files (bytes and modes) must be equal once
//! the few things that must differ are normalised.
//!
//! Normalised, each for its reason:
//! - `Received N svid(s) after <duration>`: the time the call took.
//! - JWT-SVIDs in `fetch jwt` output: each call mints a new token (its `iat`/`exp` and its
//!   ECDSA signature differ); the tokens are checked instead: each client's token validates
//!   through the other client.
//! - The order of the `bundle(<td>):` blocks of `fetch jwt`: spire-agent prints them in Go's
//!   random map order, ward in trust-domain order (a difference ward keeps, below).
//!
//! Differences ward keeps on purpose (also listed in docs/agent.md, "Commands"):
//! - `SPIFFE_ENDPOINT_SOCKET` is honoured by `ward-agent api` when `-socketPath` is absent;
//!   spire-agent ignores it and uses its default socket.
//! - `api fetch jwt-bundle` exists only in ward (its output is the `bundle(...)` lines of
//!   `fetch jwt`, checked against spire-agent's here).
//! - Bundles print (and federated bundles are written) in trust-domain order; spire-agent
//!   follows Go's random map order. This suite uses one federated trust domain, so only the
//!   two bundles of `fetch jwt` can come out in another order.
//! - Flag parse errors (an unknown flag, a bad `-output`) print clap's message and usage;
//!   the exit code (1) is the same.
//!
//! Runs as root (clients under other uids) and needs the SPIRE binaries (`WARD_SPIRE_BIN` or
//! `tests/interop/spire/build.sh`).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::fs::File;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use regex::Regex;
use tokio::sync::oneshot;
use ward_agent::cache::{Cache, CacheView, X509Identity};
use ward_agent::workload::{ListenerConfig, serve};
use ward_attest::{ProcFs, UnixAttestor, UnixConfig, WorkloadAttestor};
use ward_core::{Selector, SelectorSet, SpiffeId, TrustDomain};
use ward_testkit::TestAuthority;
use ward_testkit::agent::{self, TestJwtSource};
use ward_tests::agent::runnable_copy;
use ward_tests::command::{CommandOutput, run};
use ward_tests::spire::SpireBins;
use ward_tests::wait::{Step, poll_until};
use ward_tests::ward::ward_agent_bin;

const TD: &str = "example.org";
const FEDERATED_TD: &str = "fed.example";
const NOBODY: u32 = 65534;
/// A uid no entry selects.
const STRANGER: u32 = 65533;
const TIMEOUT: Duration = Duration::from_secs(30);

fn phase(step: &str) {
    eprintln!("[api cli differential] {step}");
}

fn identity(authority: &TestAuthority, entry_id: &str, uid: u32, hint: &str) -> X509Identity {
    let spiffe_id = SpiffeId::parse(&format!("spiffe://{TD}/{entry_id}")).unwrap();
    let selectors = SelectorSet::new(vec![Selector::new("unix", &format!("uid:{uid}")).unwrap()]);
    let mut id = Arc::unwrap_or_clone(agent::identity(authority, entry_id, spiffe_id, selectors));
    id.hint = hint.to_owned();
    id
}

/// The two clients, each a copy every uid may run.
struct Clients {
    spire: PathBuf,
    ward: PathBuf,
    socket: PathBuf,
}

/// What the two clients did with the same command.
struct Pair {
    spire: CommandOutput,
    ward: CommandOutput,
}

impl Clients {
    fn command(&self, bin: &Path, uid: u32, args: &[&str], socket_flag: bool) -> Command {
        let mut cmd = Command::new(bin);
        cmd.arg("api").args(args);
        if socket_flag {
            cmd.arg("-socketPath").arg(&self.socket);
        }
        cmd.uid(uid).gid(uid).env_remove("SPIFFE_ENDPOINT_SOCKET");
        cmd
    }

    /// Runs `api <args> -socketPath <socket>` with both clients as `uid`.
    fn both(&self, uid: u32, args: &[&str]) -> Pair {
        self.both_with(uid, args, args)
    }

    /// As [`Clients::both`] with different arguments for SPIRE and ward (output paths).
    fn both_with(&self, uid: u32, spire_args: &[&str], ward_args: &[&str]) -> Pair {
        let spire = run(&mut self.command(&self.spire, uid, spire_args, true), TIMEOUT).unwrap();
        let ward = run(&mut self.command(&self.ward, uid, ward_args, true), TIMEOUT).unwrap();
        Pair { spire, ward }
    }
}

/// Rewrites what legitimately differs between two runs (see the module docs).
fn normalize(text: &str) -> String {
    let elapsed = Regex::new(r"(Received \d+ svids? after )\S+").unwrap();
    let token = Regex::new(r"(?m)^(token\([^)]*\):\n\t)\S+$").unwrap();
    let text = elapsed.replace_all(text, "${1}<elapsed>");
    token.replace_all(&text, "${1}<token>").into_owned()
}

/// [`normalize`], with the `bundle(<td>):` blocks of `fetch jwt` in trust-domain order:
/// spire-agent prints them in Go's random map order, ward sorts them.
fn normalize_jwt(text: &str) -> String {
    let text = normalize(text);
    let lines: Vec<&str> = text.lines().collect();
    let mut head = Vec::new();
    let mut bundles = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].starts_with("bundle(") && i + 1 < lines.len() {
            bundles.push(format!("{}\n{}\n", lines[i], lines[i + 1]));
            i += 2;
        } else {
            head.push(format!("{}\n", lines[i]));
            i += 1;
        }
    }
    bundles.sort();
    head.concat() + &bundles.concat()
}

impl Pair {
    /// Asserts equal exit codes, stdout and stderr after [`normalize`]; returns SPIRE's.
    fn assert_same(self, what: &str) -> CommandOutput {
        self.assert_same_by(what, normalize);
        self.spire
    }

    /// As [`Pair::assert_same`] with another normalisation.
    fn assert_same_by(&self, what: &str, norm: impl Fn(&str) -> String) {
        let (s, w) = (&self.spire, &self.ward);
        let context = || {
            format!(
                "{what}\n=== spire-agent ===\n{}\n=== ward-agent ===\n{}",
                s.describe(),
                w.describe()
            )
        };
        assert_eq!(s.status.code(), w.status.code(), "exit codes differ: {}", context());
        assert_eq!(norm(&s.stdout), norm(&w.stdout), "stdout differs: {}", context());
        assert_eq!(norm(&s.stderr), norm(&w.stderr), "stderr differs: {}", context());
    }
}

/// Each file of `dir`: name, bytes and mode.
fn files(dir: &Path) -> Vec<(String, Vec<u8>, u32)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
                meta.permissions().mode() & 0o7777,
            )
        })
        .collect();
    out.sort();
    out
}

/// A long-running client whose stdout and stderr go to two files; killed when dropped.
struct Watcher {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Watcher {
    fn spawn(mut cmd: Command, dir: &Path, name: &str) -> Self {
        let stdout = dir.join(format!("{name}.out"));
        let stderr = dir.join(format!("{name}.err"));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).unwrap())
            .stderr(File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        Self { child, stdout, stderr }
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Sends SIGINT and waits for the exit code.
    fn interrupt(&mut self) -> Option<i32> {
        let pid = self.child.id().to_string();
        run(Command::new("kill").args(["-INT", &pid]), TIMEOUT).unwrap().success().unwrap();
        poll_until("the watcher to exit", TIMEOUT, || {
            Ok(match self.child.try_wait()? {
                Some(status) => Step::Done(status.code()),
                None => Step::Retry("still running".into()),
            })
        })
        .unwrap()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        // Best effort: it has usually exited already.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The token lines of `fetch jwt` output.
fn tokens(stdout: &str) -> Vec<String> {
    let mut lines = stdout.lines();
    let mut out = Vec::new();
    while let Some(line) = lines.next() {
        if line.starts_with("token(") {
            out.push(lines.next().unwrap().trim().to_owned());
        }
    }
    out
}

#[test]
fn ward_agent_api_prints_and_writes_what_spire_agent_api_does() {
    assert_eq!(std::fs::metadata("/proc/self").unwrap().uid(), 0, "runs as root");
    let bins = SpireBins::locate().unwrap();
    let ward_bin = ward_agent_bin().unwrap();
    let dir = tempfile::Builder::new().prefix("ward-api-cli").tempdir().unwrap();
    let root = dir.path();
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let clients = Clients {
        spire: runnable_copy(&bins.agent, root, "spire-agent").unwrap(),
        ward: runnable_copy(&ward_bin, root, "ward-agent").unwrap(),
        socket: root.join("public").join("api.sock"),
    };

    phase(
        "a Workload API with two SVIDs for root (one with a hint, one federating) and one for nobody",
    );
    let authority = Arc::new(TestAuthority::new(TD));
    let federated = TestAuthority::new(FEDERATED_TD);
    let fed_td = TrustDomain::parse(FEDERATED_TD).unwrap();
    let mut root_a = identity(&authority, "root-a", 0, "internal");
    root_a.federates_with = vec![fed_td.clone()];
    let root_b = identity(&authority, "root-b", 0, "");
    let nobody = identity(&authority, "nobody", NOBODY, "");
    let cache = Arc::new(Cache::new(CacheView::new(authority.bundle())));
    cache.update(|v| {
        v.identities = vec![Arc::new(nobody), Arc::new(root_a), Arc::new(root_b)];
        v.federated.insert(fed_td, Arc::new(federated.bundle()));
    });
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let attestors: Vec<Box<dyn WorkloadAttestor>> =
        vec![Box::new(UnixAttestor::new(UnixConfig::default(), ProcFs::default()))];
    let server = runtime.spawn(serve(
        ListenerConfig::new(clients.socket.clone()),
        Arc::clone(&cache),
        Arc::new(TestJwtSource(Arc::clone(&authority))),
        attestors,
        async {
            let _ = stopped.await;
        },
    ));
    poll_until("the workload api socket", TIMEOUT, || {
        Ok(if clients.socket.exists() { Step::Done(()) } else { Step::Retry("no socket".into()) })
    })
    .unwrap();

    phase("fetch x509: human, json, the default subcommand, no identity");
    let out = clients.both(0, &["fetch", "x509"]).assert_same("fetch x509");
    assert!(
        out.status.success() && out.stdout.contains("Received 2 svids after"),
        "{}",
        out.describe()
    );
    assert!(out.stdout.contains("Hint:\t\t\tinternal"), "{}", out.stdout);
    assert!(out.stdout.contains("[spiffe://fed.example] CA #1 Valid After:"), "{}", out.stdout);
    clients.both(0, &["fetch"]).assert_same("fetch");
    clients.both(NOBODY, &["fetch", "x509"]).assert_same("fetch x509 as nobody");
    let out = clients.both(0, &["fetch", "x509", "-output", "json"]).assert_same("fetch x509 json");
    assert!(out.stdout.starts_with("{\"crl\":[],\"federated_bundles\":{"), "{}", out.stdout);
    let out = clients.both(STRANGER, &["fetch", "x509"]).assert_same("fetch x509, no identity");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(out.stderr, "rpc error: code = PermissionDenied desc = no identity issued\n");
    clients
        .both(STRANGER, &["fetch", "x509", "-output", "json"])
        .assert_same("fetch x509 json, no identity");

    phase("fetch x509 -write: the same files, bytes and modes");
    let (spire_dir, ward_dir) = (root.join("spire-out"), root.join("ward-out"));
    std::fs::create_dir(&spire_dir).unwrap();
    std::fs::create_dir(&ward_dir).unwrap();
    let pair = clients.both_with(
        0,
        &["fetch", "x509", "-write", spire_dir.to_str().unwrap()],
        &["fetch", "x509", "-write", ward_dir.to_str().unwrap()],
    );
    pair.assert_same_by("fetch x509 -write", |t| {
        normalize(t)
            .replace(spire_dir.to_str().unwrap(), "<out>")
            .replace(ward_dir.to_str().unwrap(), "<out>")
    });
    let (spire_files, ward_files) = (files(&spire_dir), files(&ward_dir));
    let names: Vec<(&str, u32)> = spire_files.iter().map(|(n, _, m)| (n.as_str(), *m)).collect();
    assert_eq!(
        names,
        [
            ("bundle.0.pem", 0o644),
            ("bundle.1.pem", 0o644),
            ("federated_bundle.0.0.pem", 0o644),
            ("federated_bundle.1.0.pem", 0o644),
            ("svid.0.key", 0o600),
            ("svid.0.pem", 0o644),
            ("svid.1.key", 0o600),
            ("svid.1.pem", 0o644),
        ]
    );
    assert_eq!(spire_files, ward_files, "written files differ");
    // -silent keeps only the file announcements; a relative, uncleaned path prints as Go
    // cleans it.
    let pair = clients.both_with(
        0,
        &["fetch", "x509", "-silent", "-write", &format!("{}/./", spire_dir.display())],
        &["fetch", "x509", "-silent", "-write", &format!("{}/./", ward_dir.display())],
    );
    pair.assert_same_by("fetch x509 -silent -write", |t| {
        t.replace(spire_dir.to_str().unwrap(), "<out>").replace(ward_dir.to_str().unwrap(), "<out>")
    });
    assert!(pair.spire.stdout.starts_with("Writing SVID #0 to file "), "{}", pair.spire.stdout);
    let missing = root.join("missing");
    let missing = missing.to_str().unwrap();
    clients
        .both(0, &["fetch", "x509", "-write", missing])
        .assert_same("fetch x509 -write into a missing directory");

    phase("fetch jwt: tokens, hints, bundles; json; no audience; no identity");
    let pair = clients.both(0, &["fetch", "jwt", "-audience", "demo,other"]);
    pair.assert_same_by("fetch jwt", normalize_jwt);
    assert!(
        pair.spire.stdout.contains("hint(spiffe://example.org/root-a):\n\tinternal\n"),
        "{}",
        pair.spire.stdout
    );
    let (spire_tokens, ward_tokens) = (tokens(&pair.spire.stdout), tokens(&pair.ward.stdout));
    assert_eq!(spire_tokens.len(), 2);
    assert_eq!(ward_tokens.len(), 2);
    let pair = clients.both(
        0,
        &[
            "fetch",
            "jwt",
            "-audience",
            "demo",
            "-spiffeID",
            "spiffe://example.org/root-b",
            "-output",
            "json",
        ],
    );
    let strip_tokens = |t: &str| {
        Regex::new(r#""svid":"[^"]+""#).unwrap().replace_all(t, r#""svid":"<token>""#).into_owned()
    };
    pair.assert_same_by("fetch jwt json", strip_tokens);
    assert!(
        pair.spire.stdout.starts_with(
            "[{\"svids\":[{\"hint\":\"\",\"spiffe_id\":\"spiffe://example.org/root-b\""
        ),
        "{}",
        pair.spire.stdout
    );
    clients.both(0, &["fetch", "jwt"]).assert_same("fetch jwt without an audience");
    clients
        .both(STRANGER, &["fetch", "jwt", "-audience", "demo"])
        .assert_same("fetch jwt, no identity");

    phase("fetch jwt-bundle (ward only) prints the bundle lines of fetch jwt");
    let jwt = clients.both(NOBODY, &["fetch", "jwt", "-audience", "demo"]).spire;
    let bundle_lines: String = jwt.stdout.lines().skip(2).map(|l| format!("{l}\n")).collect();
    let ward =
        run(&mut clients.command(&clients.ward, NOBODY, &["fetch", "jwt-bundle"], true), TIMEOUT)
            .unwrap()
            .success()
            .unwrap();
    assert_eq!(ward.stdout, bundle_lines);
    assert!(
        ward.stdout.starts_with("bundle(spiffe://example.org):\n\t{\"keys\":"),
        "{}",
        ward.stdout
    );

    phase("validate jwt: each client's token through both; wrong audience; not a JWT; json");
    for token in [&spire_tokens[0], &ward_tokens[0]] {
        let out = clients
            .both(0, &["validate", "jwt", "-audience", "demo", "-svid", token])
            .assert_same("validate jwt");
        assert!(
            out.stdout.starts_with("SVID is valid.\nSPIFFE ID : spiffe://example.org/root-"),
            "{}",
            out.stdout
        );
        clients
            .both(0, &["validate", "jwt", "-audience", "demo", "-svid", token, "-output", "json"])
            .assert_same("validate jwt json");
        let out = clients
            .both(0, &["validate", "jwt", "-audience", "wrong", "-svid", token])
            .assert_same("validate jwt, wrong audience");
        assert!(out.stderr.starts_with("SVID is not valid: "), "{}", out.stderr);
    }
    clients
        .both(0, &["validate", "jwt", "-audience", "demo", "-svid", "not-a-jwt"])
        .assert_same("validate jwt, not a JWT");
    clients
        .both(0, &["validate", "jwt", "-svid", "x"])
        .assert_same("validate jwt without an audience");
    clients
        .both(0, &["validate", "jwt", "-audience", "demo"])
        .assert_same("validate jwt without a token");

    phase("a socket that does not exist, and one that is not a socket");
    let absent = root.join("absent.sock");
    for args in [
        vec!["fetch", "x509"],
        vec!["fetch", "jwt", "-audience", "a"],
        vec!["validate", "jwt", "-audience", "a", "-svid", "x"],
    ] {
        let mut spire_args = args.clone();
        spire_args.extend(["-socketPath", absent.to_str().unwrap()]);
        let s = run(&mut clients.command(&clients.spire, 0, &spire_args, false), TIMEOUT).unwrap();
        let w = run(&mut clients.command(&clients.ward, 0, &spire_args, false), TIMEOUT).unwrap();
        let pair = Pair { spire: s, ward: w };
        pair.assert_same_by("a missing socket", str::to_owned);
        assert_eq!(pair.spire.status.code(), Some(1));
    }
    let not_socket = root.join("spire-out").join("svid.0.pem");
    let args = ["fetch", "x509", "-socketPath", not_socket.to_str().unwrap()];
    let s = run(&mut clients.command(&clients.spire, 0, &args, false), TIMEOUT).unwrap();
    let w = run(&mut clients.command(&clients.ward, 0, &args, false), TIMEOUT).unwrap();
    Pair { spire: s, ward: w }.assert_same_by("not a socket", str::to_owned);

    phase("SPIFFE_ENDPOINT_SOCKET: ward-agent without -socketPath reaches the same socket");
    for addr in [
        format!("unix://{}", clients.socket.display()),
        format!("unix:{}", clients.socket.display()),
    ] {
        let spire =
            run(&mut clients.command(&clients.spire, NOBODY, &["fetch", "x509"], true), TIMEOUT)
                .unwrap();
        let mut cmd = clients.command(&clients.ward, NOBODY, &["fetch", "x509"], false);
        cmd.env("SPIFFE_ENDPOINT_SOCKET", &addr);
        let ward = run(&mut cmd, TIMEOUT).unwrap();
        Pair { spire, ward }.assert_same("fetch x509 through SPIFFE_ENDPOINT_SOCKET");
    }

    phase("watch: the first update, a rotation, then an interrupt");
    let mut spire_watch =
        Watcher::spawn(clients.command(&clients.spire, 0, &["watch"], true), root, "spire-watch");
    let mut ward_watch =
        Watcher::spawn(clients.command(&clients.ward, 0, &["watch"], true), root, "ward-watch");
    let updates = |w: &Watcher, n: usize| {
        poll_until("watch updates", TIMEOUT, || {
            let out = w.stdout();
            Ok(if out.matches("Received ").count() >= n {
                Step::Done(())
            } else {
                Step::Retry(format!("{out}\n{}", w.stderr()))
            })
        })
        .unwrap();
    };
    updates(&spire_watch, 1);
    updates(&ward_watch, 1);
    cache.update(|v| {
        let pos = v.identities.iter().position(|i| i.entry_id == "root-b").unwrap();
        v.identities[pos] = Arc::new(identity(&authority, "root-b", 0, ""));
    });
    updates(&spire_watch, 2);
    updates(&ward_watch, 2);
    let spire_code = spire_watch.interrupt();
    let ward_code = ward_watch.interrupt();
    let pair = Pair {
        spire: CommandOutput {
            command: "spire-agent api watch".into(),
            status: std::process::ExitStatus::default(),
            stdout: spire_watch.stdout(),
            stderr: spire_watch.stderr(),
        },
        ward: CommandOutput {
            command: "ward-agent api watch".into(),
            status: std::process::ExitStatus::default(),
            stdout: ward_watch.stdout(),
            stderr: ward_watch.stderr(),
        },
    };
    assert_eq!(spire_code, ward_code, "watch exit codes differ");
    pair.assert_same_by("watch", normalize);
    assert!(
        pair.spire.stdout.contains("[fed.example] CA #1 Valid After:"),
        "{}",
        pair.spire.stdout
    );

    phase("watch with no identity: the refusal is reported and retried");
    let mut spire_watch = Watcher::spawn(
        clients.command(&clients.spire, STRANGER, &["watch"], true),
        root,
        "spire-watch-denied",
    );
    let mut ward_watch = Watcher::spawn(
        clients.command(&clients.ward, STRANGER, &["watch"], true),
        root,
        "ward-watch-denied",
    );
    for w in [&spire_watch, &ward_watch] {
        poll_until("the refusal", TIMEOUT, || {
            let err = w.stderr();
            Ok(if err.contains("PermissionDenied") { Step::Done(()) } else { Step::Retry(err) })
        })
        .unwrap();
    }
    let spire_code = spire_watch.interrupt();
    let ward_code = ward_watch.interrupt();
    assert_eq!(spire_code, ward_code, "watch exit codes differ");
    // How many refusals each printed depends on when the interrupt came (one more a second).
    let refusals = |text: String| {
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        lines.dedup();
        lines
    };
    let (spire_err, ward_err) = (refusals(spire_watch.stderr()), refusals(ward_watch.stderr()));
    assert_eq!(spire_err, ward_err, "watch stderr differs");
    assert_eq!(
        spire_err,
        ["rpc error: code = PermissionDenied desc = no identity issued", "context canceled"]
    );

    stop.send(()).unwrap();
    runtime.block_on(server).unwrap().unwrap();
}
