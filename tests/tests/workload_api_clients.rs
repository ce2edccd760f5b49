//! Workload API clients nobody here wrote, against a real `ward-agent` attested to a real
//! `ward-server` (join token; entries by `unix:uid` made with the server's CLI), and for
//! go-spiffe also to an unmodified `spire-server` v1.13.3:
//! - go-spiffe v2: every Workload API call as one uid, and two workloads under different uids
//!   on each side of an mTLS connection on 127.0.0.1 (`X509Source` with
//!   `tlsconfig.MTLSServerConfig` / `MTLSClientConfig`), each authorizing the other's SPIFFE
//!   ID; a client authorizing another ID, and a workload the server does not authorize, fail;
//! - py-spiffe (the `spiffe` package from PyPI) and rust-spiffe (the `spiffe` crate):
//!   X509-SVIDs, JWT-SVIDs and both kinds of bundle.
//!
//! What each client got is checked against what the server issued (`check_fetched`): the
//! SPIFFE IDs its entries name, chains that verify to the server's bundle, keys that are the
//! leaves' keys, the server's X.509 authorities and JWT key IDs, JWT-SVIDs that verify for
//! the audience and that the client validates itself.
//!
//! Runs as root (workloads under other uids); needs Go and `python3 -m venv` the first time
//! (`tests/interop/go-spiffe/build.sh`, `tests/interop/python/setup.sh`).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use ward_core::{Bundle, SpiffeId, TrustDomain};
use ward_tests::agent::{AgentConfig, AgentDirs, runnable_copy, start_ward_agent, wait_healthy};
use ward_tests::agent_scenario::wait_ready;
use ward_tests::cli::AdminCli;
use ward_tests::command::{CommandOutput, run};
use ward_tests::daemon::Daemon;
use ward_tests::server::{ServerOptions, ServerProcess};
use ward_tests::spire::{SpireBins, start_spire_server};
use ward_tests::wait::{Step, poll_until};
use ward_tests::ward::{start_ward_server, ward_agent_bin, ward_server_bin};
use ward_tests::workload_clients::{
    self, Expected, Fetched, FetchedJwtBundle, FetchedJwtSvid, FetchedX509Bundle, FetchedX509Svid,
    check_fetched,
};

const TD: &str = "example.org";
const AUDIENCE: &str = "ward-interop";
const TIMEOUT: Duration = Duration::from_secs(60);
/// The uid of the go-spiffe server workload.
const SERVER_UID: u32 = 65534;
/// The uid of the go-spiffe client workload.
const CLIENT_UID: u32 = 65533;
/// A uid no entry selects.
const STRANGER_UID: u32 = 65532;

fn spiffe_id(path: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://{TD}/{path}")).unwrap()
}

/// Which server the agent attests to.
#[derive(Debug, Clone, Copy)]
enum ServerKind {
    Ward,
    /// An unmodified spire-server v1.13.3.
    Spire,
}

/// A server (ward-server or spire-server) and a ward-agent attested to it with a join token, the agent serving the
/// Workload API on a Unix socket in a temporary directory, and one registration entry per
/// `(path, uid)` (SPIFFE ID `spiffe://example.org/<path>`, selector `unix:uid:<uid>`, parent
/// the agent).
struct Deployment {
    dir: tempfile::TempDir,
    socket: PathBuf,
    /// The trust domain's bundle, as `bundle show -format spiffe` prints it.
    bundle: Bundle,
    /// `(entry ID, SPIFFE ID, uid)` of every entry.
    entries: Vec<(String, SpiffeId, u32)>,
    agent: Daemon,
    _server: ServerProcess,
}

impl Deployment {
    fn start(server_kind: ServerKind, entries: &[(&str, u32)]) -> Self {
        assert_eq!(std::fs::metadata("/proc/self").unwrap().uid(), 0, "runs as root");
        let dir = tempfile::Builder::new().prefix("ward-clients").tempdir().unwrap();
        let root = dir.path();
        // Workloads under other uids must reach the socket and the programs in here.
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
        let server_bin = ward_server_bin().unwrap();
        let agent_bin = ward_agent_bin().unwrap();

        let options = ServerOptions::new(TD);
        let (cli_bin, server) = match server_kind {
            ServerKind::Ward => {
                (server_bin.clone(), start_ward_server(&server_bin, &root.join("server"), &options))
            }
            ServerKind::Spire => {
                let spire = SpireBins::locate().unwrap();
                (spire.server.clone(), start_spire_server(&spire, &root.join("server"), &options))
            }
        };
        let mut server = server.unwrap();
        let cli = AdminCli::new(&cli_bin, &server.socket_path);
        wait_ready(&mut server.daemon, &cli).unwrap();
        let token = cli.token_generate(Some(600)).unwrap();
        let bundle_path = root.join("bundle.pem");
        std::fs::write(&bundle_path, cli.bundle_show_pem().unwrap()).unwrap();
        let dirs = AgentDirs::new(root, "agent");
        let config = AgentConfig {
            trust_domain: TD.to_owned(),
            server_port: server.port,
            bundle_path,
            join_token: token.clone(),
            extra: "sync_interval = \"1s\"\n\n[workload_attestors.unix]\n".to_owned(),
        };
        let mut agent = start_ward_agent(&agent_bin, &dirs, &config.render(&dirs)).unwrap();
        wait_healthy(&agent_bin, &mut agent, &dirs.admin_socket).unwrap();

        let agent_id = format!("spiffe://{TD}/spire/agent/join_token/{token}");
        let entries = entries
            .iter()
            .map(|(path, uid)| {
                let id = spiffe_id(path);
                let entry_id =
                    cli.entry_create(&agent_id, id.as_str(), &format!("unix:uid:{uid}")).unwrap();
                (entry_id, id, *uid)
            })
            .collect();
        let bundle = Bundle::from_spiffe_json(
            TrustDomain::new(TD).unwrap(),
            cli.bundle_show_spiffe().unwrap().as_bytes(),
        )
        .unwrap();
        Self { dir, socket: dirs.socket, bundle, entries, agent, _server: server }
    }

    fn address(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The SPIFFE IDs of `uid`'s entries, in the order the Workload API serves them (entry
    /// ID).
    fn expected_ids(&self, uid: u32) -> Vec<SpiffeId> {
        let mut mine: Vec<&(String, SpiffeId, u32)> =
            self.entries.iter().filter(|(_, _, u)| *u == uid).collect();
        mine.sort_by(|a, b| a.0.cmp(&b.0));
        mine.into_iter().map(|(_, id, _)| id.clone()).collect()
    }

    /// Calls `fetch` until it reports every X509-SVID and JWT-SVID of `uid`'s entries (the
    /// agent picks new entries up at its next sync; `Err` is a reason to try again), then
    /// checks what it got.
    fn fetch_and_check(&self, uid: u32, mut fetch: impl FnMut() -> Result<Fetched, String>) {
        let want = self.expected_ids(uid).len();
        let fetched = poll_until("the client to get every SVID", TIMEOUT, || {
            Ok(match fetch() {
                Ok(f) if f.x509_svids.len() == want && f.jwt_svids.len() == want => Step::Done(f),
                Ok(f) => Step::Retry(format!("{f:#?}")),
                Err(e) => Step::Retry(e),
            })
        })
        .unwrap();
        self.check(&fetched, uid);
    }

    fn check(&self, got: &Fetched, uid: u32) {
        let want =
            Expected { bundle: &self.bundle, svids: self.expected_ids(uid), audience: AUDIENCE };
        if let Err(e) = check_fetched(got, &want, SystemTime::now()) {
            panic!("{e:#}\nthe client printed {got:#?}\nagent log:\n{}", self.agent.log_tail());
        }
    }

    /// `program` where every uid may run it.
    fn install(&self, program: &Path) -> PathBuf {
        let name = program.file_name().unwrap().to_str().unwrap();
        runnable_copy(program, self.dir.path(), name).unwrap()
    }
}

/// `program args…` run as `uid:uid` with no supplementary groups.
fn as_uid(uid: u32, program: &Path) -> Command {
    let mut cmd = Command::new("setpriv");
    let id = uid.to_string();
    cmd.args(["--reuid", &id, "--regid", &id, "--clear-groups"]).arg(program);
    cmd
}

fn go_spiffe(uid: u32, program: &Path, args: &[&str]) -> CommandOutput {
    run(as_uid(uid, program).args(args), TIMEOUT).unwrap()
}

/// Runs a client's fetch; a failure or unreadable output is a reason to try again.
fn run_fetch(cmd: &mut Command) -> Result<Fetched, String> {
    let out = run(cmd, TIMEOUT).map_err(|e| format!("{e:#}"))?;
    if !out.status.success() {
        return Err(out.describe());
    }
    serde_json::from_str(&out.stdout).map_err(|e| format!("{e}: {}", out.describe()))
}

/// What the go-spiffe `client` printed.
#[derive(Debug, Deserialize)]
struct Dialed {
    own_id: String,
    peer_id: String,
    reply: Served,
}

/// What the go-spiffe `server` answered.
#[derive(Debug, Deserialize)]
struct Served {
    peer_id: String,
    server_id: String,
    request: String,
}

#[test]
fn go_spiffe_workloads_authorize_each_other_over_mtls() {
    go_spiffe_scenario(ServerKind::Ward);
}

#[test]
fn go_spiffe_through_ward_agent_attested_to_spire_server() {
    go_spiffe_scenario(ServerKind::Spire);
}

fn go_spiffe_scenario(server_kind: ServerKind) {
    let api = Deployment::start(
        server_kind,
        &[("go-server", SERVER_UID), ("go-client", CLIENT_UID), ("root-workload", 0)],
    );
    let program = api.install(&workload_clients::go_spiffe().unwrap());
    let socket = api.address();

    // Every Workload API call as each workload, the address from SPIFFE_ENDPOINT_SOCKET.
    for uid in [SERVER_UID, CLIENT_UID, 0] {
        api.fetch_and_check(uid, || {
            let mut cmd = as_uid(uid, &program);
            cmd.args(["fetch", "-audience", AUDIENCE]).env("SPIFFE_ENDPOINT_SOCKET", &socket);
            run_fetch(&mut cmd)
        });
    }

    // A uid no entry selects gets no identity.
    let out = go_spiffe(STRANGER_UID, &program, &["fetch", "-socket", &socket]);
    assert!(!out.status.success(), "{}", out.describe());
    assert!(out.stderr.contains("PermissionDenied"), "{}", out.describe());

    // The server, as its uid, accepts only the client's SPIFFE ID.
    let log = api.dir.path().join("go-server.log");
    let mut cmd = as_uid(SERVER_UID, &program);
    cmd.args(["server", "-socket", &socket, "-listen", "127.0.0.1:0", "-authorize"])
        .arg(spiffe_id("go-client").as_str());
    let server = Daemon::spawn("go-spiffe server", cmd, &log).unwrap();
    let addr = poll_until("the go-spiffe server to listen", TIMEOUT, || {
        let log = server.log();
        Ok(match log.lines().find_map(|l| l.strip_prefix("listening ")) {
            Some(addr) => Step::Done(addr.trim().to_owned()),
            None => Step::Retry(log),
        })
    })
    .unwrap();

    // The client, as its uid, authorizes the server's SPIFFE ID: both sides see the other's.
    let client = |uid: u32, authorize: &SpiffeId| {
        go_spiffe(
            uid,
            &program,
            &["client", "-socket", &socket, "-connect", &addr, "-authorize", authorize.as_str()],
        )
    };
    let out = client(CLIENT_UID, &spiffe_id("go-server")).success().unwrap();
    let dialed: Dialed = serde_json::from_str(&out.stdout).expect(&out.stdout);
    assert_eq!(dialed.own_id, spiffe_id("go-client").as_str());
    assert_eq!(dialed.peer_id, spiffe_id("go-server").as_str());
    assert_eq!(dialed.reply.peer_id, spiffe_id("go-client").as_str());
    assert_eq!(dialed.reply.server_id, spiffe_id("go-server").as_str());
    assert_eq!(dialed.reply.request, format!("hello from {}", spiffe_id("go-client")));

    // A client that authorizes another SPIFFE ID than the server's refuses the server.
    let out = client(CLIENT_UID, &spiffe_id("someone-else"));
    assert!(!out.status.success(), "{}", out.describe());
    assert!(
        out.stderr.contains(&format!("unexpected ID \"{}\"", spiffe_id("go-server"))),
        "{}",
        out.describe()
    );

    // A workload with another SPIFFE ID (root's) is refused by the server.
    let out = client(0, &spiffe_id("go-server"));
    assert!(!out.status.success(), "{}", out.describe());
    poll_until("the server to refuse root's workload", TIMEOUT, || {
        let log = server.log();
        let refused = format!("unexpected ID \"{}\"", spiffe_id("root-workload"));
        Ok(if log.contains(&refused) { Step::Done(()) } else { Step::Retry(log) })
    })
    .unwrap();
    assert_eq!(server.log().matches("served ").count(), 1, "{}", server.log());
    drop(server);
}

#[test]
fn py_spiffe_gets_x509_and_jwt_svids_and_bundles() {
    // Two entries select root (the uid the script runs as): both SVIDs, in entry ID order.
    let api = Deployment::start(
        ServerKind::Ward,
        &[("root-b", 0), ("root-a", 0), ("nobody", SERVER_UID)],
    );
    let python = workload_clients::py_spiffe_python().unwrap();
    api.fetch_and_check(0, || {
        let mut cmd = Command::new(&python);
        cmd.arg(workload_clients::py_spiffe_script()).arg(api.address()).arg(AUDIENCE);
        run_fetch(&mut cmd)
    });
}

#[test]
fn rust_spiffe_gets_x509_and_jwt_svids_and_bundles() {
    let api = Deployment::start(
        ServerKind::Ward,
        &[("root-b", 0), ("root-a", 0), ("nobody", SERVER_UID)],
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // This test process is the workload (root).
    api.fetch_and_check(0, || runtime.block_on(rust_spiffe_fetch(&api.address())));
}

/// Every Workload API call through rust-spiffe's `WorkloadApiClient`, validating each
/// JWT-SVID with rust-spiffe (locally against the JWT bundles, and with ValidateJWTSVID).
async fn rust_spiffe_fetch(address: &str) -> Result<Fetched, String> {
    use spiffe::{JwtBundleSet, JwtSvid, WorkloadApiClient};

    fn failed(call: &str) -> impl Fn(spiffe::WorkloadApiError) -> String + '_ {
        move |e| format!("{call}: {e}")
    }
    let client = WorkloadApiClient::connect_to(address).await.map_err(failed("connect"))?;
    let context = client.fetch_x509_context().await.map_err(failed("FetchX509SVID"))?;
    let x509_svids = context
        .svids()
        .iter()
        .map(|svid| FetchedX509Svid {
            spiffe_id: svid.spiffe_id().to_string(),
            chain_pem: certificates_pem(svid.cert_chain().iter().map(|c| c.as_bytes())),
            key_pem: pem::encode(&pem::Pem::new(
                "PRIVATE KEY",
                svid.private_key().as_bytes().to_vec(),
            )),
            verified_id: None,
            verify_error: None,
        })
        .collect();
    let x509_bundles = |set: &spiffe::X509BundleSet| -> Vec<FetchedX509Bundle> {
        set.iter()
            .map(|(td, bundle)| FetchedX509Bundle {
                trust_domain: td.to_string(),
                pem: certificates_pem(bundle.authorities().iter().map(|c| c.as_bytes())),
            })
            .collect()
    };
    let jwt_bundles: JwtBundleSet =
        client.fetch_jwt_bundles().await.map_err(failed("FetchJWTBundles"))?;
    let mut jwt_svids = Vec::new();
    let svids =
        client.fetch_all_jwt_svids([AUDIENCE], None).await.map_err(failed("FetchJWTSVID"))?;
    for svid in svids {
        let token = svid.token().to_owned();
        let local = JwtSvid::parse_and_validate(&token, &jwt_bundles, &[AUDIENCE]);
        let wrong = JwtSvid::parse_and_validate(&token, &jwt_bundles, &["another-audience"]);
        let validated = client.validate_jwt_token(AUDIENCE, &token).await;
        jwt_svids.push(FetchedJwtSvid {
            spiffe_id: svid.spiffe_id().to_string(),
            audience: svid.audience().to_vec(),
            expiry: svid.expiry().unix_timestamp(),
            local_id: local.as_ref().ok().map(|s| s.spiffe_id().to_string()),
            local_error: local.err().map(|e| e.to_string()),
            wrong_audience_error: wrong.err().map(|e| e.to_string()),
            validated_id: validated.as_ref().ok().map(|s| s.spiffe_id().to_string()),
            validate_error: validated.err().map(|e| e.to_string()),
            token,
        });
    }
    let bundles = client.fetch_x509_bundles().await.map_err(failed("FetchX509Bundles"))?;
    Ok(Fetched {
        x509_svids,
        x509_bundles: x509_bundles(&bundles),
        context_bundles: x509_bundles(context.bundle_set()),
        jwt_svids,
        jwt_bundles: jwt_bundles
            .iter()
            .map(|(td, bundle)| {
                let mut key_ids: Vec<String> =
                    bundle.jwt_authorities().map(|a| a.key_id().to_owned()).collect();
                key_ids.sort();
                FetchedJwtBundle { trust_domain: td.to_string(), key_ids }
            })
            .collect(),
    })
}

fn certificates_pem<'a>(ders: impl Iterator<Item = &'a [u8]>) -> String {
    let blocks: Vec<pem::Pem> =
        ders.map(|der| pem::Pem::new("CERTIFICATE", der.to_vec())).collect();
    pem::encode_many(&blocks)
}
