//! The agent scenario: an unmodified SPIRE `spire-agent` obtains a working X509-SVID and
//! JWT-SVID from a server. Run against a real `spire-server` it proves the scenario and this
//! harness; run against `ward-server` it proves ward's compatibility claim.
//!
//! The scenario, identical for both servers:
//! 1. start the server on `127.0.0.1` and a temp admin socket; wait until its own CLI's
//!    `healthcheck` passes; `spire-server healthcheck` against its socket must pass too;
//! 2. with the server's own CLI: `token generate`, then `entry create` for
//!    `spiffe://example.org/workload` under the agent's join-token ID with `unix:uid:<our uid>`;
//!    with the unmodified `spire-server` CLI: `token generate` and `entry create` for
//!    `spiffe://example.org/workload-cli` under the same parent;
//! 3. `bundle show` from both CLIs must print the same certificates, and `bundle show -format
//!    spiffe` the same bundle; start `spire-agent run -joinToken` bootstrapped from the PEM;
//! 4. `spire-agent api fetch x509` must return one SVID per entry, each with the entry's URI
//!    SAN, and `openssl verify` must accept each against the server's bundle;
//! 5. `spire-agent api fetch jwt -audience demo` must return one JWT-SVID per entry whose
//!    signature verifies against the server's JWT key (from `bundle show -format spiffe`),
//!    with `sub` = the entry's SPIFFE ID, `aud` containing `demo` and `exp` in the future; the
//!    agent's JWT bundle must carry the same key;
//! 6. ward-core's own X509-SVID and JWT-SVID validators, given the bundle parsed from
//!    `bundle show -format spiffe`, accept the same SVIDs;
//! 7. the `spire-server` CLI reads back exactly the two entries (`entry show -parentID`,
//!    `entry show -entryID`, `entry count`) and the one attested agent (`agent list`,
//!    `agent count`);
//! 8. after `spire-server entry delete` of the second entry and `entry create` (server's CLI)
//!    of `spiffe://example.org/workload-late`, the running agent serves exactly the first and
//!    the new entry's X509-SVIDs (its periodic sync picks up both changes);
//! 9. with `agent_ttl` = 20 s the agent renews its own SVID (`RenewAgent`): the SVID in its
//!    data directory changes, still names the agent and chains to the bundle, and after an
//!    `entry delete` the agent, now using the new SVID, serves only the first entry;
//! 10. the server stops on SIGTERM and starts again on the same data directory and port:
//!     its X.509 authorities and the remaining entry survive, and an entry created after the
//!     restart reaches the still-running agent.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::cli::{AdminCli, AgentCli, CLI_TIMEOUT};
use crate::command::run;
use crate::daemon::Daemon;
use crate::server::{ServerOptions, ServerProcess};
use crate::spire::{AgentProcess, SpireBins, start_spire_agent, start_spire_server};
use crate::wait::{Step, poll_until};
use crate::ward::{start_ward_server, ward_server_bin};
use anyhow::{Context, bail, ensure};
use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;
use tempfile::TempDir;
use ward_core::{Bundle, SpiffeId, TrustDomain, jwtsvid, x509svid};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

const TRUST_DOMAIN: &str = "example.org";
const AUDIENCE: &str = "demo";
const WORKLOAD_ID: &str = "spiffe://example.org/workload";
const CLI_WORKLOAD_ID: &str = "spiffe://example.org/workload-cli";
const LATE_WORKLOAD_ID: &str = "spiffe://example.org/workload-late";
const RESTART_WORKLOAD_ID: &str = "spiffe://example.org/workload-restart";
/// Short enough that the agent renews its SVID (at about half its life) during the test.
const AGENT_TTL: Duration = Duration::from_secs(20);
const AGENT_RENEWAL_TIMEOUT: Duration = Duration::from_secs(60);
const SERVER_STOP_TIMEOUT: Duration = Duration::from_secs(15);
const SERVER_READY_TIMEOUT: Duration = Duration::from_secs(60);
const X509_SVID_TIMEOUT: Duration = Duration::from_secs(60);
const JWT_SVID_TIMEOUT: Duration = Duration::from_secs(30);

/// Which server the agent talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    /// The pinned, unmodified `spire-server`.
    Spire,
    /// `ward-server` from this workspace.
    Ward,
}

/// Everything a scenario starts. Field order is drop order: the agent dies before the server,
/// and the temp directory goes last. If the test panics, each daemon prints its log on drop.
struct Harness {
    agent: Option<AgentProcess>,
    server: Option<ServerProcess>,
    spire: SpireBins,
    dir: TempDir,
}

/// Runs the scenario against `kind` and panics with the failing step if it fails; the server
/// and agent logs are printed to stderr on the way out.
pub fn run_scenario(kind: ServerKind) {
    let mut harness = match harness() {
        Ok(h) => h,
        Err(err) => panic!("{kind:?} scenario could not start: {err:#}"),
    };
    if let Err(err) = scenario(kind, &mut harness) {
        // The panic makes every daemon in `harness` print its log as it is dropped.
        panic!("{kind:?} scenario failed: {err:#}");
    }
}

fn harness() -> anyhow::Result<Harness> {
    let dir = tempfile::Builder::new().prefix("ward-interop").tempdir()?;
    // Unix socket paths are limited to 107 bytes; ours end in at most `/agent/workload.sock`.
    let longest = dir.path().join("agent/workload.sock");
    ensure!(
        longest.as_os_str().len() <= 107,
        "temp dir {} is too deep for Unix socket paths; set TMPDIR to a shorter directory",
        dir.path().display()
    );
    Ok(Harness { agent: None, server: None, spire: SpireBins::locate()?, dir })
}

fn phase(kind: ServerKind, what: &str) {
    eprintln!("[{kind:?}] {what}");
}

fn scenario(kind: ServerKind, h: &mut Harness) -> anyhow::Result<()> {
    let root = h.dir.path().to_owned();

    phase(kind, "1. start the server and wait until it is ready");
    let native_bin = match kind {
        ServerKind::Spire => h.spire.server.clone(),
        ServerKind::Ward => ward_server_bin()?,
    };
    let options = ServerOptions { agent_ttl: Some(AGENT_TTL), ..ServerOptions::new(TRUST_DOMAIN) };
    let server = h.server.insert(match kind {
        ServerKind::Spire => start_spire_server(&h.spire, &root.join("server"), &options)?,
        ServerKind::Ward => start_ward_server(&native_bin, &root.join("server"), &options)?,
    });
    let native = AdminCli::new(&native_bin, &server.socket_path);
    let spire_cli = AdminCli::new(&h.spire.server, &server.socket_path);
    wait_ready(&mut server.daemon, &native)?;
    spire_cli.healthcheck().context("spire-server healthcheck against the server's socket")?;

    phase(kind, "2. join token and registration entries, from both CLIs");
    let reg = register(&native, &spire_cli)?;

    phase(kind, "3. bundle show from both CLIs; start spire-agent");
    let bundles = show_bundles(&native, &spire_cli, &root)?;
    let agent = h.agent.insert(start_spire_agent(
        &h.spire,
        &root.join("agent"),
        TRUST_DOMAIN,
        server.port,
        &bundles.native_pem_path,
        &reg.token,
    )?);
    let agent_cli = AgentCli::new(&h.spire.agent, &agent.socket_path);

    phase(kind, "4. X509-SVIDs through the agent's Workload API");
    let expected: BTreeSet<String> =
        [WORKLOAD_ID, CLI_WORKLOAD_ID].into_iter().map(String::from).collect();
    let svid_dir = root.join("svids");
    let svids = wait_for_x509_svids(
        &mut agent.daemon,
        &mut server.daemon,
        &agent_cli,
        &svid_dir,
        &expected,
    )?;
    for (id, pem_path) in &svids {
        SpiffeId::parse(id).with_context(|| format!("URI SAN {id} is not a SPIFFE ID"))?;
        openssl_verify(&bundles.native_pem_path, pem_path)?;
        openssl_verify(&bundles.spire_cli_pem_path, pem_path)?;
    }

    phase(kind, "5. JWT-SVIDs through the agent's Workload API");
    let fetched = poll_until("the agent to serve JWT-SVIDs", JWT_SVID_TIMEOUT, || {
        agent.daemon.ensure_running()?;
        let out = agent_cli.fetch_jwt_json(AUDIENCE)?;
        if !out.status.success() {
            return Ok(Step::Retry(out.describe()));
        }
        Ok(Step::Done(parse_fetch_jwt(&out.stdout).with_context(|| out.describe())?))
    })?;
    let jwt_ids: BTreeSet<String> = fetched.svids.iter().map(|s| s.spiffe_id.clone()).collect();
    ensure!(jwt_ids == expected, "JWT-SVIDs for {jwt_ids:?}, expected {expected:?}");
    check_jwt_svids(&fetched, &bundles.spiffe_json)?;

    phase(kind, "6. ward-core's validators accept the same SVIDs against the same bundle");
    check_with_ward_core(&bundles, &svids, &fetched)?;

    phase(kind, "7. the spire-server CLI reads back the entries and the attested agent");
    check_readback(&spire_cli, &reg)?;

    phase(kind, "8. entry changes reach the agent: one deleted, one created");
    spire_cli
        .ok(&["entry", "delete"], &["-entryID", &reg.cli_entry_id])
        .context("entry delete (spire-server CLI)")?;
    let late_entry_id = native
        .entry_create(&reg.agent_id, LATE_WORKLOAD_ID, &reg.selector)
        .context("entry create after the agent started (server's CLI)")?;
    ensure!(late_entry_id != reg.entry_id, "the new entry reused ID {late_entry_id}");
    let expected: BTreeSet<String> =
        [WORKLOAD_ID, LATE_WORKLOAD_ID].into_iter().map(String::from).collect();
    let svids = wait_for_x509_svids(
        &mut agent.daemon,
        &mut server.daemon,
        &agent_cli,
        &svid_dir,
        &expected,
    )?;
    for (_, pem_path) in &svids {
        openssl_verify(&bundles.native_pem_path, pem_path)?;
    }

    phase(kind, "9. the agent renews its own SVID and keeps syncing with the new one");
    let first = agent_svid_chain(&agent.data_dir)?;
    let renewed = poll_until("the agent to renew its SVID", AGENT_RENEWAL_TIMEOUT, || {
        agent.daemon.ensure_running()?;
        server.daemon.ensure_running()?;
        let now = agent_svid_chain(&agent.data_dir)?;
        Ok(if now[0] == first[0] {
            Step::Retry("agent SVID unchanged".into())
        } else {
            Step::Done(now)
        })
    })?;
    let renewed_id = x509svid::verify(&renewed, &bundles.ders, SystemTime::now())
        .context("ward-core verification of the renewed agent SVID")?;
    ensure!(renewed_id.as_str() == reg.agent_id, "renewed agent SVID is for {renewed_id}");
    spire_cli
        .ok(&["entry", "delete"], &["-entryID", &late_entry_id])
        .context("entry delete after renewal (spire-server CLI)")?;
    let expected: BTreeSet<String> = [WORKLOAD_ID.to_owned()].into();
    wait_for_x509_svids(&mut agent.daemon, &mut server.daemon, &agent_cli, &svid_dir, &expected)?;

    phase(kind, "10. the server restarts on its data directory; the agent carries on");
    server.daemon.restart(SERVER_STOP_TIMEOUT).context("restarting the server")?;
    wait_ready(&mut server.daemon, &native)?;
    let after = pem_certificates(&native.bundle_show_pem().context("bundle show after restart")?)?;
    ensure!(
        bundles.ders.iter().all(|der| after.contains(der)),
        "the server lost X.509 authorities across the restart"
    );
    let count = spire_cli.json(&["entry", "count"], &[])?;
    ensure!(count["count"] == 1, "entry count after restart printed {count}");
    native
        .entry_create(&reg.agent_id, RESTART_WORKLOAD_ID, &reg.selector)
        .context("entry create after restart (server's CLI)")?;
    let expected: BTreeSet<String> =
        [WORKLOAD_ID, RESTART_WORKLOAD_ID].into_iter().map(String::from).collect();
    wait_for_x509_svids(&mut agent.daemon, &mut server.daemon, &agent_cli, &svid_dir, &expected)?;
    phase(kind, "done");
    Ok(())
}

/// Polls the server CLI's `healthcheck` until it passes (failing at once if the server exits).
pub fn wait_ready(server: &mut Daemon, native: &AdminCli) -> anyhow::Result<()> {
    poll_until("the server to become ready", SERVER_READY_TIMEOUT, || {
        server.ensure_running()?;
        let probe = native.raw(&["healthcheck"], &[])?;
        Ok(if probe.status.success() { Step::Done(()) } else { Step::Retry(probe.describe()) })
    })
}

/// The agent's own SVID chain (DER, leaf first) from `agent-data.json` in its data directory,
/// where each certificate is stored as base64 of its PEM text.
pub fn agent_svid_chain(data_dir: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let path = data_dir.join("agent-data.json");
    let doc: Value = serde_json::from_slice(&std::fs::read(&path)?)
        .with_context(|| format!("{} is not JSON", path.display()))?;
    let certs =
        doc["svid"].as_array().with_context(|| format!("no svid array in {}", path.display()))?;
    let mut chain = Vec::new();
    for cert in certs {
        let encoded = cert.as_str().context("svid element is not a string")?;
        let pem_text = base64::engine::general_purpose::STANDARD.decode(encoded)?;
        chain.extend(pem_certificates(&String::from_utf8_lossy(&pem_text))?);
    }
    ensure!(!chain.is_empty(), "empty agent SVID in {}", path.display());
    Ok(chain)
}

/// Polls `fetch x509 -write` until the agent serves SVIDs for exactly `expected` (failing
/// at once if the agent or server exits); returns each SVID's ID and file.
pub fn wait_for_x509_svids(
    agent: &mut Daemon,
    server: &mut Daemon,
    agent_cli: &AgentCli,
    svid_dir: &Path,
    expected: &BTreeSet<String>,
) -> anyhow::Result<Vec<(String, PathBuf)>> {
    poll_until(
        &format!("the agent to serve X509-SVIDs for {expected:?}"),
        X509_SVID_TIMEOUT,
        || {
            agent.ensure_running()?;
            server.ensure_running()?;
            let _ = std::fs::remove_dir_all(svid_dir);
            std::fs::create_dir_all(svid_dir)?;
            let out = agent_cli.fetch_x509(svid_dir)?;
            if !out.status.success() {
                return Ok(Step::Retry(out.describe()));
            }
            let svids = read_written_svids(svid_dir)?;
            let ids: BTreeSet<String> = svids.iter().map(|(id, _)| id.clone()).collect();
            Ok(if &ids == expected {
                Step::Done(svids)
            } else {
                Step::Retry(format!("agent served {ids:?}"))
            })
        },
    )
}

/// What step 2 created.
struct Registration {
    /// The join token the agent uses (from the server's own CLI).
    token: String,
    /// `spiffe://<td>/spire/agent/join_token/<token>`.
    agent_id: String,
    /// `unix:uid:<our uid>`.
    selector: String,
    /// The entry for [`WORKLOAD_ID`] (server's CLI).
    entry_id: String,
    /// The entry for [`CLI_WORKLOAD_ID`] (spire-server CLI).
    cli_entry_id: String,
}

/// Step 2: a join token and one entry from each CLI, both under the agent's ID.
fn register(native: &AdminCli, spire_cli: &AdminCli) -> anyhow::Result<Registration> {
    let token = native.token_generate(Some(600)).context("token generate (server's CLI)")?;
    let agent_id = format!("spiffe://{TRUST_DOMAIN}/spire/agent/join_token/{token}");
    let selector = format!("unix:uid:{}", current_uid()?);
    let entry_id = native
        .entry_create(&agent_id, WORKLOAD_ID, &selector)
        .context("entry create (server's CLI)")?;
    ensure!(!entry_id.is_empty(), "entry create printed an empty entry ID");
    let spire_token =
        spire_cli.token_generate(None).context("token generate (spire-server CLI)")?;
    ensure!(spire_token != token, "two token generate calls returned the same token {token}");
    let cli_entry_id = spire_cli
        .entry_create(&agent_id, CLI_WORKLOAD_ID, &selector)
        .context("entry create (spire-server CLI)")?;
    ensure!(cli_entry_id != entry_id, "both entries got ID {entry_id}");
    Ok(Registration { token, agent_id, selector, entry_id, cli_entry_id })
}

/// The server's bundle as step 3 fetched it.
struct Bundles {
    /// `bundle show` from the server's own CLI, written to a file.
    native_pem_path: PathBuf,
    /// `bundle show` from the spire-server CLI, written to a file.
    spire_cli_pem_path: PathBuf,
    /// The X.509 authorities (DER) both printed.
    ders: Vec<Vec<u8>>,
    /// `bundle show -format spiffe` from the spire-server CLI.
    spiffe_json: String,
}

/// Step 3: the bundle from both CLIs, which must agree.
fn show_bundles(native: &AdminCli, spire_cli: &AdminCli, root: &Path) -> anyhow::Result<Bundles> {
    let native_pem = native.bundle_show_pem().context("bundle show (server's CLI)")?;
    let spire_cli_pem = spire_cli.bundle_show_pem().context("bundle show (spire-server CLI)")?;
    let ders = pem_certificates(&native_pem)?;
    ensure!(
        ders == pem_certificates(&spire_cli_pem)?,
        "bundle show differs between the server's CLI and spire-server's:\n{native_pem}\n---\n{spire_cli_pem}"
    );
    let native_pem_path = root.join("bundle.pem");
    std::fs::write(&native_pem_path, &native_pem)?;
    let spire_cli_pem_path = root.join("bundle-spire-cli.pem");
    std::fs::write(&spire_cli_pem_path, &spire_cli_pem)?;
    let spiffe_json =
        spire_cli.bundle_show_spiffe().context("bundle show -format spiffe (spire-server CLI)")?;
    let native_spiffe_json =
        native.bundle_show_spiffe().context("bundle show -format spiffe (server's CLI)")?;
    let td = TrustDomain::new(TRUST_DOMAIN)?;
    let parsed = Bundle::from_spiffe_json(td.clone(), spiffe_json.as_bytes())
        .context("ward-core parsing bundle show -format spiffe (spire-server CLI)")?;
    let native_parsed = Bundle::from_spiffe_json(td, native_spiffe_json.as_bytes())
        .context("ward-core parsing bundle show -format spiffe (server's CLI)")?;
    ensure!(
        parsed == native_parsed,
        "bundle show -format spiffe differs between the CLIs:\n{native_spiffe_json}\n---\n{spiffe_json}"
    );
    Ok(Bundles { native_pem_path, spire_cli_pem_path, ders, spiffe_json })
}

/// Step 5: every JWT-SVID verifies against the server's JWT keys, and the agent's JWT bundle
/// carries those keys.
pub fn check_jwt_svids(fetched: &FetchedJwt, spiffe_json: &str) -> anyhow::Result<()> {
    let server_jwks = jwt_keys_of_spiffe_bundle(spiffe_json)?;
    ensure!(!server_jwks.is_empty(), "the server's bundle has no JWT key");
    let agent_jwks =
        fetched.bundles.get(&format!("spiffe://{TRUST_DOMAIN}")).with_context(|| {
            format!("fetch jwt printed no bundle for {TRUST_DOMAIN}: {:?}", fetched.bundles.keys())
        })?;
    for svid in &fetched.svids {
        validate_jwt_svid(&svid.svid, &svid.spiffe_id, &server_jwks, agent_jwks)
            .with_context(|| format!("JWT-SVID for {}", svid.spiffe_id))?;
    }
    Ok(())
}

/// Step 6: ward-core parses the SPIFFE bundle and accepts every SVID the agent served.
fn check_with_ward_core(
    bundles: &Bundles,
    svids: &[(String, PathBuf)],
    fetched: &FetchedJwt,
) -> anyhow::Result<()> {
    let bundle =
        Bundle::from_spiffe_json(TrustDomain::new(TRUST_DOMAIN)?, bundles.spiffe_json.as_bytes())
            .context("ward-core parsing bundle show -format spiffe")?;
    let bundle_ders: Vec<Vec<u8>> =
        bundle.x509_authorities.iter().map(|a| a.as_ref().to_vec()).collect();
    ensure!(
        bundle_ders == bundles.ders,
        "the SPIFFE and PEM bundles carry different X.509 authorities"
    );
    let now = SystemTime::now();
    for (id, pem_path) in svids {
        let chain = pem_certificates(&std::fs::read_to_string(pem_path)?)?;
        let verified = x509svid::verify_with_bundle(&chain, &bundle, now)
            .with_context(|| format!("ward-core X509-SVID verification of {id}"))?;
        ensure!(verified.as_str() == id, "ward-core read {verified} from the SVID for {id}");
    }
    for svid in &fetched.svids {
        let verified = jwtsvid::validate(&svid.svid, &bundle, &[AUDIENCE], now)
            .with_context(|| format!("ward-core JWT-SVID validation for {}", svid.spiffe_id))?;
        ensure!(
            verified.spiffe_id.as_str() == svid.spiffe_id,
            "ward-core read sub {}",
            verified.spiffe_id
        );
        ensure!(
            verified.audience.iter().any(|a| a == AUDIENCE),
            "ward-core read aud {:?}",
            verified.audience
        );
    }
    Ok(())
}

/// Step 7: the spire-server CLI lists exactly the two entries, with parent and selector, and
/// the one attested agent.
fn check_readback(spire_cli: &AdminCli, reg: &Registration) -> anyhow::Result<()> {
    let parent_path = format!("/spire/agent/join_token/{}", reg.token);
    let selector_value = reg.selector.trim_start_matches("unix:");
    let listed = spire_cli.json(&["entry", "show"], &["-parentID", &reg.agent_id])?;
    let mut listed_ids = BTreeSet::new();
    for entry in json_array(&listed, "entries")? {
        ensure!(
            id_path(&entry["parent_id"]) == Some(parent_path.as_str()),
            "entry show -parentID listed an entry with another parent: {entry}"
        );
        ensure!(
            entry["selectors"] == serde_json::json!([{"type": "unix", "value": selector_value}]),
            "entry selectors are {}",
            entry["selectors"]
        );
        let id = entry["id"].as_str().context("entry without id")?.to_owned();
        let spiffe_id = id_path(&entry["spiffe_id"]).context("entry without spiffe_id")?;
        listed_ids.insert((id, format!("spiffe://{TRUST_DOMAIN}{spiffe_id}")));
    }
    let created: BTreeSet<(String, String)> = [
        (reg.entry_id.clone(), WORKLOAD_ID.to_owned()),
        (reg.cli_entry_id.clone(), CLI_WORKLOAD_ID.to_owned()),
    ]
    .into();
    ensure!(
        listed_ids == created,
        "entry show -parentID listed {listed_ids:?}, created {created:?}"
    );
    let one = spire_cli.json(&["entry", "show"], &["-entryID", &reg.entry_id])?;
    let one = json_array(&one, "entries")?;
    ensure!(
        one.len() == 1
            && one[0]["id"] == reg.entry_id.as_str()
            && id_path(&one[0]["spiffe_id"]) == Some("/workload"),
        "entry show -entryID {} printed {one:?}",
        reg.entry_id
    );
    let count = spire_cli.json(&["entry", "count"], &[])?;
    ensure!(count["count"] == 2, "entry count printed {count}");
    let agents = spire_cli.json(&["agent", "list"], &[])?;
    let agents = json_array(&agents, "agents")?;
    ensure!(
        agents.len() == 1
            && id_path(&agents[0]["id"]) == Some(parent_path.as_str())
            && agents[0]["attestation_type"] == "join_token"
            && agents[0]["banned"] != true,
        "agent list printed {agents:?}"
    );
    let count = spire_cli.json(&["agent", "count"], &[])?;
    ensure!(count["count"] == 1, "agent count printed {count}");
    Ok(())
}

/// The array `key` of a JSON object (absent or null counts as empty, as protojson omits it).
pub fn json_array(doc: &Value, key: &str) -> anyhow::Result<Vec<Value>> {
    match &doc[key] {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => Ok(items.clone()),
        other => bail!("{key} is not an array: {other}"),
    }
}

/// The `path` of a protojson SPIFFE ID object (`{"trust_domain": …, "path": …}`) in our
/// trust domain.
fn id_path(id: &Value) -> Option<&str> {
    if id["trust_domain"] != TRUST_DOMAIN {
        return None;
    }
    id["path"].as_str()
}

/// The effective uid of this process (what the unix workload attestor sees for the CLI we run).
pub fn current_uid() -> anyhow::Result<u32> {
    Ok(std::fs::metadata("/proc/self")?.uid())
}

/// The DER of every certificate in a PEM text, in order.
pub fn pem_certificates(text: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let blocks = pem::parse_many(text)?;
    let ders: Vec<Vec<u8>> = blocks
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(|b| b.into_contents())
        .collect();
    ensure!(!ders.is_empty(), "no certificate in PEM text");
    Ok(ders)
}

/// Reads `svid.N.pem` (N = 0, 1, …) written by `fetch x509 -write` and returns each leaf's
/// single URI SAN with the file's path.
pub fn read_written_svids(dir: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut svids = Vec::new();
    for n in 0.. {
        let path = dir.join(format!("svid.{n}.pem"));
        if !path.exists() {
            break;
        }
        let ders = pem_certificates(&std::fs::read_to_string(&path)?)?;
        let (_, leaf) = X509Certificate::from_der(&ders[0])
            .with_context(|| format!("parsing {}", path.display()))?;
        ensure!(!leaf.is_ca(), "{} leaf is a CA certificate", path.display());
        let san = leaf
            .subject_alternative_name()?
            .with_context(|| format!("{} has no subjectAltName", path.display()))?;
        let uris: Vec<&str> = san
            .value
            .general_names
            .iter()
            .filter_map(|n| if let GeneralName::URI(u) = n { Some(*u) } else { None })
            .collect();
        ensure!(uris.len() == 1, "{} has URI SANs {uris:?}, expected exactly one", path.display());
        svids.push((uris[0].to_owned(), path));
    }
    Ok(svids)
}

/// `openssl verify` of an SVID file (leaf first, intermediates after) against a bundle.
pub fn openssl_verify(ca_file: &Path, svid_pem: &Path) -> anyhow::Result<()> {
    let mut cmd = Command::new("openssl");
    cmd.arg("verify").arg("-CAfile").arg(ca_file).arg("-untrusted").arg(svid_pem).arg(svid_pem);
    let out = run(&mut cmd, CLI_TIMEOUT)?.success()?;
    ensure!(
        out.stdout.trim_end().ends_with(": OK"),
        "openssl verify did not say OK\n{}",
        out.describe()
    );
    Ok(())
}

/// One JWT-SVID printed by `spire-agent api fetch jwt -output json`.
#[derive(Debug, Deserialize)]
pub struct FetchedJwtSvid {
    /// Its SPIFFE ID.
    pub spiffe_id: String,
    /// The token.
    pub svid: String,
}

/// What `spire-agent api fetch jwt -output json` printed.
#[derive(Debug)]
pub struct FetchedJwt {
    /// The JWT-SVIDs.
    pub svids: Vec<FetchedJwtSvid>,
    /// Trust domain ID → JWKS (decoded from the base64 the CLI prints).
    pub bundles: std::collections::BTreeMap<String, Vec<Value>>,
}

/// Parses `spire-agent api fetch jwt -output json`: `[{"svids": [...]}, {"bundles": {td: base64 JWKS}}]`.
pub fn parse_fetch_jwt(stdout: &str) -> anyhow::Result<FetchedJwt> {
    let doc: Vec<Value> = serde_json::from_str(stdout)?;
    let mut svids = None;
    let mut bundles = std::collections::BTreeMap::new();
    for part in doc {
        if let Some(list) = part.get("svids") {
            svids = Some(serde_json::from_value::<Vec<FetchedJwtSvid>>(list.clone())?);
        }
        if let Some(map) = part.get("bundles").and_then(Value::as_object) {
            for (td, encoded) in map {
                let encoded = encoded.as_str().context("bundle is not a string")?;
                let json = base64::engine::general_purpose::STANDARD.decode(encoded)?;
                let jwks: Value = serde_json::from_slice(&json)?;
                let keys = jwks.get("keys").and_then(Value::as_array).cloned().unwrap_or_default();
                bundles.insert(td.clone(), keys);
            }
        }
    }
    Ok(FetchedJwt { svids: svids.context("no svids in fetch jwt output")?, bundles })
}

/// The JWT keys (`"use": "jwt-svid"`) of a SPIFFE bundle document.
fn jwt_keys_of_spiffe_bundle(text: &str) -> anyhow::Result<Vec<Value>> {
    let doc: Value =
        serde_json::from_str(text).context("bundle show -format spiffe is not JSON")?;
    let keys =
        doc.get("keys").and_then(Value::as_array).context("SPIFFE bundle has no keys array")?;
    Ok(keys
        .iter()
        .filter(|k| k.get("use").and_then(Value::as_str) == Some("jwt-svid"))
        .cloned()
        .collect())
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
struct JwtSvidClaims {
    sub: String,
    aud: Audience,
    exp: u64,
}

/// Verifies a JWT-SVID against the server's JWT keys and checks its claims.
fn validate_jwt_svid(
    token: &str,
    expected_sub: &str,
    server_keys: &[Value],
    agent_keys: &[Value],
) -> anyhow::Result<()> {
    let header = jsonwebtoken::decode_header(token)?;
    let kid = header.kid.context("JWT-SVID header has no kid")?;
    let key_json = server_keys
        .iter()
        .find(|k| k.get("kid").and_then(Value::as_str) == Some(kid.as_str()))
        .with_context(|| format!("no server JWT key with kid {kid}"))?;
    let agent_key = agent_keys
        .iter()
        .find(|k| k.get("kid").and_then(Value::as_str) == Some(kid.as_str()))
        .with_context(|| format!("the agent's JWT bundle has no key with kid {kid}"))?;
    for member in ["kty", "crv", "x", "y", "n", "e"] {
        ensure!(
            key_json.get(member) == agent_key.get(member),
            "agent and server disagree on key {kid} member {member}"
        );
    }
    let jwk: Jwk = serde_json::from_value(key_json.clone())?;
    let algorithms = match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            ref other => bail!("unexpected curve {other:?}"),
        },
        AlgorithmParameters::RSA(_) => vec![
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        other => bail!("unexpected JWT key type {other:?}"),
    };
    let key = DecodingKey::from_jwk(&jwk)?;
    let mut validation = Validation::new(algorithms[0]);
    validation.algorithms = algorithms;
    validation.set_audience(&[AUDIENCE]);
    validation.set_required_spec_claims(&["sub", "aud", "exp"]);
    validation.leeway = 0;
    let data = jsonwebtoken::decode::<JwtSvidClaims>(token, &key, &validation)
        .context("JWT-SVID validation")?;
    ensure!(data.claims.sub == expected_sub, "sub is {}, expected {expected_sub}", data.claims.sub);
    let auds = match data.claims.aud {
        Audience::One(a) => vec![a],
        Audience::Many(a) => a,
    };
    ensure!(auds.iter().any(|a| a == AUDIENCE), "aud {auds:?} lacks {AUDIENCE}");
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    ensure!(data.claims.exp > now, "exp {} is not after now {now}", data.claims.exp);

    // The same token must be refused for another audience: the check above is not vacuous.
    let mut other = validation.clone();
    other.set_audience(&["not-demo"]);
    match jsonwebtoken::decode::<JwtSvidClaims>(token, &key, &other) {
        Err(e) if *e.kind() == jsonwebtoken::errors::ErrorKind::InvalidAudience => Ok(()),
        Err(e) => bail!("wrong error for a foreign audience: {e:?}"),
        Ok(_) => bail!("token accepted for audience not-demo"),
    }
}
