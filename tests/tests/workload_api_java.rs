//! java-spiffe (`io.spiffe:java-spiffe-core` 0.8.11 with `grpc-netty-linux`, the workload in
//! `tests/interop/java/`) against a real `ward-agent` attested with a join token to a real
//! `ward-server`, entries by `unix:uid` made with the server's CLI. The Java workload runs as
//! other uids (`setpriv`):
//! - `fetch`: every Workload API call through java-spiffe's `WorkloadApiClient`, checked
//!   against what the server issued (`check_fetched`: the entry's SPIFFE ID, a chain that
//!   verifies to the server's bundle with ward-core's verifier and java-spiffe's, the leaf's
//!   key, the trust domain's authorities and JWT key IDs, a JWT-SVID with `sub` = the entry's
//!   ID, validated by java-spiffe locally and through ValidateJWTSVID, refused for another
//!   audience);
//! - `source`: an `X509Source` and a `JwtSource`, as an application holds them: the source's
//!   SVID, its chain length and the bundle of its trust domain, and a short-TTL SVID's rotation
//!   reaching the open source (java-spiffe's `X509Source` learns of new SVIDs only from the
//!   FetchX509SVID stream);
//! - a uid no entry selects: java-spiffe fails with the agent's PermissionDenied.
//!
//! Runs as root; needs Maven and a JDK the first time (`tests/interop/java/build.sh`, or
//! `$WARD_JAVA_SPIFFE_JAR`).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use ward_core::{Bundle, SpiffeId, TrustDomain};
use ward_tests::agent::{AgentDirs, ServerForAgent, runnable_copy, start_ward_agent, wait_healthy};
use ward_tests::cli::parse_field;
use ward_tests::command::run;
use ward_tests::daemon::Daemon;
use ward_tests::wait::{Step, poll_until};
use ward_tests::ward::{ward_agent_bin, ward_server_bin};
use ward_tests::workload_clients::{self, Expected, Fetched, check_fetched};

const TD: &str = "example.org";
const AUDIENCE: &str = "ward-interop";
const TIMEOUT: Duration = Duration::from_secs(60);
/// The uid of the Java workload.
const WORKLOAD_UID: u32 = 65531;
/// The uid of the Java workload whose entry has a short X509-SVID lifetime.
const ROTATING_UID: u32 = 65530;
/// A uid no entry selects.
const STRANGER_UID: u32 = 65529;
/// X509-SVID lifetime of the rotating workload's entry: the agent renews it at about half.
const SHORT_TTL_SECS: u32 = 20;

fn spiffe_id(path: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://{TD}/{path}")).unwrap()
}

/// The Java workload run as `uid:uid` with no supplementary groups.
fn java(uid: u32, jar: &Path, args: &[&str]) -> Command {
    let id = uid.to_string();
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid", &id, "--regid", &id, "--clear-groups", "java", "-jar"])
        .arg(jar)
        .args(args)
        // The JVM's user.home for a uid without a home directory.
        .env("HOME", "/tmp");
    cmd
}

/// What `source` prints for the X509Source's SVID (`x509-svid <json>`).
#[derive(Debug, Deserialize)]
struct SourceSvid {
    spiffe_id: String,
    chain_pem: String,
    chain_length: usize,
    serial: String,
    verified_id: Option<String>,
    verify_error: Option<String>,
    bundle_trust_domain: String,
    bundle_authorities: usize,
}

/// What `source` prints for the JwtSource's JWT-SVID (`jwt-svid <json>`).
#[derive(Debug, Deserialize)]
struct SourceJwt {
    spiffe_id: String,
    token: String,
    audience: Vec<String>,
    local_id: Option<String>,
    validated_id: Option<String>,
    wrong_audience_error: Option<String>,
}

/// The JSON after `prefix ` on each line of `log` that has it.
fn lines<T: for<'de> Deserialize<'de>>(log: &str, prefix: &str) -> Vec<T> {
    log.lines()
        .filter_map(|l| l.strip_prefix(prefix)?.strip_prefix(' '))
        .map(|json| serde_json::from_str(json).expect(json))
        .collect()
}

#[test]
fn java_spiffe_sources_and_client_get_identities_from_ward_agent() {
    assert_eq!(std::fs::metadata("/proc/self").unwrap().uid(), 0, "runs as root");
    let jar = workload_clients::java_spiffe_jar().unwrap();
    let dir = tempfile::Builder::new().prefix("ward-java").tempdir().unwrap();
    let root = dir.path();
    // The workloads' uids must reach the socket and the jar in here.
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let jar = runnable_copy(&jar, root, "java-spiffe-client.jar").unwrap();

    let server = ServerForAgent::start(&ward_server_bin().unwrap(), root, TD).unwrap();
    let agent_bin = ward_agent_bin().unwrap();
    let dirs = AgentDirs::new(root, "agent");
    let config = server.agent_config(TD, "sync_interval = \"1s\"\n\n[workload_attestors.unix]\n");
    let mut agent = start_ward_agent(&agent_bin, &dirs, &config.render(&dirs)).unwrap();
    wait_healthy(&agent_bin, &mut agent, &dirs.admin_socket).unwrap();
    let entry = |path: &str, uid: u32, extra: &[&str]| {
        let id = spiffe_id(path);
        let selector = format!("unix:uid:{uid}");
        let mut args = vec!["-parentID", &server.agent_id, "-spiffeID", id.as_str()];
        args.extend(["-selector", &selector]);
        args.extend(extra);
        let out = server.cli.ok(&["entry", "create"], &args).unwrap();
        parse_field(&out.stdout, "Entry ID").unwrap();
        id
    };
    let workload_id = entry("java-workload", WORKLOAD_UID, &[]);
    let ttl = SHORT_TTL_SECS.to_string();
    let rotating_id = entry("java-rotating", ROTATING_UID, &["-x509SVIDTTL", &ttl]);
    let bundle = Bundle::from_spiffe_json(
        TrustDomain::new(TD).unwrap(),
        server.cli.bundle_show_spiffe().unwrap().as_bytes(),
    )
    .unwrap();
    let address = format!("unix://{}", dirs.socket.display());

    // WorkloadApiClient: every call; the agent serves the entry once its sync picks it up.
    let fetched: Fetched = poll_until("java-spiffe to fetch the workload's SVIDs", TIMEOUT, || {
        let out = run(&mut java(WORKLOAD_UID, &jar, &["fetch", &address, AUDIENCE]), TIMEOUT)?;
        if !out.status.success() {
            return Ok(Step::Retry(out.describe()));
        }
        Ok(Step::Done(serde_json::from_str(&out.stdout).expect(&out.stdout)))
    })
    .unwrap();
    let want = Expected { bundle: &bundle, svids: vec![workload_id.clone()], audience: AUDIENCE };
    if let Err(e) = check_fetched(&fetched, &want, SystemTime::now()) {
        panic!("{e:#}\njava-spiffe printed {fetched:#?}\nagent log:\n{}", agent.log_tail());
    }
    assert!(
        fetched.x509_svids.iter().all(|s| s.verified_id.as_deref() == Some(workload_id.as_str())),
        "java-spiffe's X509SvidValidator: {fetched:#?}"
    );

    // X509Source and JwtSource, as an application holds them.
    let source = java(WORKLOAD_UID, &jar, &["source", &address, AUDIENCE]);
    let source = Daemon::spawn("java-spiffe source", source, &root.join("source.log")).unwrap();
    let (jwt, svid) = first_source_lines(&source);
    assert_eq!(jwt.spiffe_id, workload_id.as_str(), "{jwt:#?}");
    assert_eq!(jwt.audience, [AUDIENCE], "{jwt:#?}");
    assert_eq!(jwt.local_id.as_deref(), Some(workload_id.as_str()), "{jwt:#?}");
    assert_eq!(jwt.validated_id.as_deref(), Some(workload_id.as_str()), "{jwt:#?}");
    assert!(jwt.wrong_audience_error.is_some(), "{jwt:#?}");
    let verified =
        ward_core::jwtsvid::validate(&jwt.token, &bundle, &[AUDIENCE], SystemTime::now()).unwrap();
    assert_eq!(verified.spiffe_id, workload_id);
    check_source_svid(&svid, &workload_id, &bundle);
    drop(source);

    // A short-TTL SVID rotates while the X509Source is open: the stream brings the new one.
    let source = java(ROTATING_UID, &jar, &["source", &address, AUDIENCE]);
    let source =
        Daemon::spawn("java-spiffe rotating source", source, &root.join("rotating.log")).unwrap();
    let (_, first) = first_source_lines(&source);
    check_source_svid(&first, &rotating_id, &bundle);
    let rotated = poll_until("the rotated SVID to reach the X509Source", TIMEOUT, || {
        let log = source.log();
        let svids: Vec<SourceSvid> = lines(&log, "x509-svid");
        Ok(match svids.into_iter().find(|s| s.serial != first.serial) {
            Some(s) => Step::Done(s),
            None => Step::Retry(log),
        })
    })
    .unwrap();
    check_source_svid(&rotated, &rotating_id, &bundle);
    assert_ne!(rotated.chain_pem, first.chain_pem);
    drop(source);

    // A uid no entry selects: java-spiffe reports the agent's PermissionDenied.
    let out = run(&mut java(STRANGER_UID, &jar, &["fetch", &address, AUDIENCE]), TIMEOUT).unwrap();
    assert!(!out.status.success(), "{}", out.describe());
    assert!(out.stdout.is_empty(), "{}", out.describe());
    assert!(
        out.stderr.contains("X509ContextException: Error fetching X509Context"),
        "{}",
        out.describe()
    );
    assert!(out.stderr.contains("PERMISSION_DENIED: no identity issued"), "{}", out.describe());
    drop(agent);
}

/// Waits for `source`'s first `jwt-svid` and `x509-svid` lines.
fn first_source_lines(source: &Daemon) -> (SourceJwt, SourceSvid) {
    poll_until("the java-spiffe sources to report", TIMEOUT, || {
        let log = source.log();
        let mut jwt: Vec<SourceJwt> = lines(&log, "jwt-svid");
        let mut svids: Vec<SourceSvid> = lines(&log, "x509-svid");
        Ok(if jwt.is_empty() || svids.is_empty() {
            Step::Retry(log)
        } else {
            Step::Done((jwt.remove(0), svids.remove(0)))
        })
    })
    .unwrap()
}

/// The X509Source's SVID names `want`, verifies to `bundle` (ward-core and java-spiffe) and
/// came with the trust domain's bundle.
fn check_source_svid(svid: &SourceSvid, want: &SpiffeId, bundle: &Bundle) {
    assert_eq!(svid.spiffe_id, want.as_str(), "{svid:#?}");
    assert_eq!(svid.verify_error, None, "{svid:#?}");
    assert_eq!(svid.verified_id.as_deref(), Some(want.as_str()), "{svid:#?}");
    let chain = ward_tests::agent_scenario::pem_certificates(&svid.chain_pem).unwrap();
    assert_eq!(chain.len(), svid.chain_length, "{svid:#?}");
    let id = ward_core::x509svid::verify_with_bundle(&chain, bundle, SystemTime::now()).unwrap();
    assert_eq!(&id, want);
    assert_eq!(svid.bundle_trust_domain, TD, "{svid:#?}");
    assert_eq!(svid.bundle_authorities, bundle.x509_authorities.len(), "{svid:#?}");
}
