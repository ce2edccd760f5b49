//! The authority rotation scenario: an unmodified `spire-agent` attested to `ward-server`
//! follows the operator through `localauthority` prepare → activate → taint → revoke of the
//! X.509 and the JWT authority, as it follows SPIRE.
//!
//! 1. start `ward-server`; `token generate` and `entry create` for
//!    `spiffe://example.org/workload` (unix uid selector) with the unmodified `spire-server`
//!    CLI; start `spire-agent` and wait for the workload's X509-SVID and JWT-SVID;
//! 2. `localauthority x509 prepare` and `activate`, `localauthority jwt prepare` and
//!    `activate`: the server now signs with the new authorities, while the agent's SVIDs
//!    (rotated at half-life, 30 minutes away) still chain to the old X.509 authority;
//! 3. `localauthority x509 taint` and `jwt taint` of the old authorities: the bundle marks
//!    them tainted, and the agent rotates its own SVID and the workload's X509-SVID onto the
//!    new authority (each verifies against a bundle holding only the new authority) and drops
//!    its cached JWT-SVIDs, so the next one carries the new key ID;
//! 4. `localauthority x509 revoke` and `jwt revoke`: the old authorities leave the bundle;
//! 5. the agent keeps serving: a new entry reaches it, its SVID verifies with `openssl
//!    verify` against the bundle as it is now, and JWT-SVIDs verify against the new key.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context, ensure};
use serde_json::Value;
use tempfile::TempDir;
use ward_core::x509svid;

use crate::agent_scenario::{
    FetchedJwt, agent_svid_chain, check_jwt_svids, current_uid, openssl_verify, parse_fetch_jwt,
    pem_certificates, wait_for_x509_svids, wait_ready,
};
use crate::cli::{AdminCli, AgentCli};
use crate::server::{ServerOptions, ServerProcess};
use crate::spire::{AgentProcess, SpireBins, start_spire_agent};
use crate::wait::{Step, poll_until};
use crate::ward::{start_ward_server, ward_server_bin};

const TRUST_DOMAIN: &str = "example.org";
const AUDIENCE: &str = "demo";
const WORKLOAD_ID: &str = "spiffe://example.org/workload";
const LATE_WORKLOAD_ID: &str = "spiffe://example.org/workload-late";
/// Long enough for the agent to see the taint (it syncs every 5 s and rotates tainted SVIDs
/// in 5-second batches).
const ROTATION_TIMEOUT: Duration = Duration::from_secs(90);

/// Everything the scenario starts; field order is drop order (agent, server, directory).
struct Harness {
    agent: Option<AgentProcess>,
    server: Option<ServerProcess>,
    dir: TempDir,
}

/// Runs the scenario; panics with the failing step (daemon logs are printed on the way out).
pub fn run_authority_scenario() {
    let dir = match tempfile::Builder::new().prefix("ward-auth").tempdir() {
        Ok(d) => d,
        Err(e) => panic!("temp dir: {e}"),
    };
    let mut h = Harness { agent: None, server: None, dir };
    if let Err(err) = scenario(&mut h) {
        panic!("authority scenario failed: {err:#}");
    }
}

fn phase(what: &str) {
    eprintln!("[authorities] {what}");
}

fn json(cli: &AdminCli, words: &[&str], args: &[&str]) -> anyhow::Result<Value> {
    cli.json(words, args).with_context(|| words.join(" "))
}

fn authority_id(doc: &Value, field: &str) -> anyhow::Result<String> {
    doc[field]["authority_id"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no {field}.authority_id in {doc}"))
}

/// SKI hex of a certificate.
fn ski(der: &[u8]) -> anyhow::Result<String> {
    use x509_parser::extensions::ParsedExtension;
    let (_, cert) = x509_parser::parse_x509_certificate(der)?;
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(hex_of(k.0)),
            _ => None,
        })
        .context("certificate without subject key identifier")
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bundle's X.509 authorities (DER) and JWT key IDs, as `bundle show -format spiffe`
/// prints them, and which of them are flagged tainted in `bundle show -output json`.
struct BundleView {
    x509: Vec<(String, Vec<u8>, bool)>,
    jwt: Vec<(String, bool)>,
}

fn bundle_view(cli: &AdminCli) -> anyhow::Result<BundleView> {
    let doc = json(cli, &["bundle", "show"], &[])?;
    let mut x509 = Vec::new();
    for a in doc["x509_authorities"].as_array().context("no x509_authorities")? {
        use base64::Engine;
        let der = base64::engine::general_purpose::STANDARD
            .decode(a["asn1"].as_str().context("asn1")?)?;
        x509.push((ski(&der)?, der, a["tainted"] == true));
    }
    let mut jwt = Vec::new();
    for k in doc["jwt_authorities"].as_array().context("no jwt_authorities")? {
        jwt.push((k["key_id"].as_str().context("key_id")?.to_owned(), k["tainted"] == true));
    }
    Ok(BundleView { x509, jwt })
}

fn fetch_jwt(agent: &mut AgentProcess, cli: &AgentCli) -> anyhow::Result<Step<FetchedJwt>> {
    agent.daemon.ensure_running()?;
    let out = cli.fetch_jwt_json(AUDIENCE)?;
    if !out.status.success() {
        return Ok(Step::Retry(out.describe()));
    }
    Ok(Step::Done(parse_fetch_jwt(&out.stdout).with_context(|| out.describe())?))
}

fn jwt_kid(token: &str) -> anyhow::Result<String> {
    jsonwebtoken::decode_header(token)?.kid.context("JWT-SVID without kid")
}

/// Writes `ders` as a PEM file (a CA file for `openssl verify`).
fn write_pem(path: &Path, ders: &[&[u8]]) -> anyhow::Result<()> {
    let blocks: Vec<pem::Pem> =
        ders.iter().map(|d| pem::Pem::new("CERTIFICATE", d.to_vec())).collect();
    std::fs::write(path, pem::encode_many(&blocks))?;
    Ok(())
}

fn scenario(h: &mut Harness) -> anyhow::Result<()> {
    let root = h.dir.path().to_owned();
    let spire = SpireBins::locate()?;

    phase("1. ward-server, an entry, spire-agent serving the workload");
    let options = ServerOptions::new(TRUST_DOMAIN);
    let server =
        h.server.insert(start_ward_server(&ward_server_bin()?, &root.join("server"), &options)?);
    let cli = AdminCli::new(&spire.server, &server.socket_path);
    wait_ready(&mut server.daemon, &cli)?;
    let token = cli.token_generate(Some(600))?;
    let agent_id = format!("spiffe://{TRUST_DOMAIN}/spire/agent/join_token/{token}");
    let selector = format!("unix:uid:{}", current_uid()?);
    cli.entry_create(&agent_id, WORKLOAD_ID, &selector)?;
    let bundle_pem = root.join("bundle.pem");
    std::fs::write(&bundle_pem, cli.bundle_show_pem()?)?;
    let agent = h.agent.insert(start_spire_agent(
        &spire,
        &root.join("agent"),
        TRUST_DOMAIN,
        server.port,
        &bundle_pem,
        &token,
    )?);
    let agent_cli = AgentCli::new(&spire.agent, &agent.socket_path);
    let svid_dir = root.join("svids");
    let one: BTreeSet<String> = [WORKLOAD_ID.to_owned()].into();
    wait_for_x509_svids(&mut agent.daemon, &mut server.daemon, &agent_cli, &svid_dir, &one)?;
    let first_jwt = poll_until("a JWT-SVID", ROTATION_TIMEOUT, || fetch_jwt(agent, &agent_cli))?;
    let x_old = authority_id(&json(&cli, &["localauthority", "x509", "show"], &[])?, "active")?;
    let k_old = authority_id(&json(&cli, &["localauthority", "jwt", "show"], &[])?, "active")?;
    ensure!(jwt_kid(&first_jwt.svids[0].svid)? == k_old, "first JWT-SVID not signed by {k_old}");

    phase("2. prepare and activate new X.509 and JWT authorities");
    let x_new = authority_id(
        &json(&cli, &["localauthority", "x509", "prepare"], &[])?,
        "prepared_authority",
    )?;
    cli.ok(&["localauthority", "x509", "activate"], &["-authorityID", &x_new])?;
    let k_new = authority_id(
        &json(&cli, &["localauthority", "jwt", "prepare"], &[])?,
        "prepared_authority",
    )?;
    cli.ok(&["localauthority", "jwt", "activate"], &["-authorityID", &k_new])?;
    let view = bundle_view(&cli)?;
    let old_der =
        view.x509.iter().find(|(s, _, _)| *s == x_old).context("old CA not in bundle")?.1.clone();
    let new_der =
        view.x509.iter().find(|(s, _, _)| *s == x_new).context("new CA not in bundle")?.1.clone();
    let old_only = root.join("old-ca.pem");
    let new_only = root.join("new-ca.pem");
    write_pem(&old_only, &[&old_der])?;
    write_pem(&new_only, &[&new_der])?;
    // The agent's SVIDs are not due for rotation: they still chain to the old authority.
    let svids =
        wait_for_x509_svids(&mut agent.daemon, &mut server.daemon, &agent_cli, &svid_dir, &one)?;
    openssl_verify(&old_only, &svids[0].1).context("workload SVID before the taint")?;
    let agent_chain = agent_svid_chain(&agent.data_dir)?;
    x509svid::verify(&agent_chain, &[&old_der], SystemTime::now())
        .context("agent SVID before the taint")?;

    phase("3. taint the old authorities; the agent rotates off them");
    cli.ok(&["localauthority", "x509", "taint"], &["-authorityID", &x_old])?;
    cli.ok(&["localauthority", "jwt", "taint"], &["-authorityID", &k_old])?;
    let view = bundle_view(&cli)?;
    ensure!(
        view.x509.iter().any(|(s, _, t)| *s == x_old && *t)
            && view.x509.iter().any(|(s, _, t)| *s == x_new && !*t),
        "bundle taint flags after x509 taint: {:?}",
        view.x509.iter().map(|(s, _, t)| (s, t)).collect::<Vec<_>>()
    );
    ensure!(
        view.jwt.contains(&(k_old.clone(), true)) && view.jwt.contains(&(k_new.clone(), false)),
        "bundle taint flags after jwt taint: {:?}",
        view.jwt
    );
    poll_until("the workload X509-SVID to chain to the new authority", ROTATION_TIMEOUT, || {
        agent.daemon.ensure_running()?;
        server.daemon.ensure_running()?;
        let svids = wait_for_x509_svids(
            &mut agent.daemon,
            &mut server.daemon,
            &agent_cli,
            &svid_dir,
            &one,
        )?;
        Ok(match openssl_verify(&new_only, &svids[0].1) {
            Ok(()) => Step::Done(()),
            Err(e) => Step::Retry(format!("{e:#}")),
        })
    })?;
    poll_until("the agent SVID to chain to the new authority", ROTATION_TIMEOUT, || {
        agent.daemon.ensure_running()?;
        let chain = agent_svid_chain(&agent.data_dir)?;
        Ok(match x509svid::verify(&chain, &[&new_der], SystemTime::now()) {
            Ok(id) if id.as_str() == agent_id => Step::Done(()),
            Ok(id) => Step::Retry(format!("agent SVID names {id}")),
            Err(e) => Step::Retry(e.to_string()),
        })
    })?;
    poll_until("JWT-SVIDs with the new key ID", ROTATION_TIMEOUT, || {
        Ok(match fetch_jwt(agent, &agent_cli)? {
            Step::Done(f) if jwt_kid(&f.svids[0].svid)? == k_new => Step::Done(()),
            Step::Done(f) => Step::Retry(format!("kid {}", jwt_kid(&f.svids[0].svid)?)),
            Step::Retry(r) => Step::Retry(r),
        })
    })?;

    phase("4. revoke the old authorities");
    cli.ok(&["localauthority", "x509", "revoke"], &["-authorityID", &x_old])?;
    cli.ok(&["localauthority", "jwt", "revoke"], &["-authorityID", &k_old])?;
    let view = bundle_view(&cli)?;
    ensure!(
        view.x509.iter().map(|(s, _, _)| s.as_str()).collect::<Vec<_>>() == [x_new.as_str()],
        "X.509 authorities after revoke: {:?}",
        view.x509.iter().map(|(s, _, _)| s).collect::<Vec<_>>()
    );
    ensure!(view.jwt == [(k_new.clone(), false)], "JWT authorities after revoke: {:?}", view.jwt);

    phase("5. the agent keeps serving");
    cli.entry_create(&agent_id, LATE_WORKLOAD_ID, &selector)?;
    let two: BTreeSet<String> =
        [WORKLOAD_ID, LATE_WORKLOAD_ID].into_iter().map(String::from).collect();
    let svids =
        wait_for_x509_svids(&mut agent.daemon, &mut server.daemon, &agent_cli, &svid_dir, &two)?;
    let now_pem = root.join("bundle-now.pem");
    std::fs::write(&now_pem, cli.bundle_show_pem()?)?;
    ensure!(
        pem_certificates(&std::fs::read_to_string(&now_pem)?)? == [new_der.clone()],
        "bundle show after revoke"
    );
    for (_, path) in &svids {
        openssl_verify(&now_pem, path)?;
    }
    let fetched =
        poll_until("JWT-SVIDs after revoke", ROTATION_TIMEOUT, || fetch_jwt(agent, &agent_cli))?;
    let ids: BTreeSet<String> = fetched.svids.iter().map(|s| s.spiffe_id.clone()).collect();
    ensure!(ids == two, "JWT-SVIDs for {ids:?}");
    for s in &fetched.svids {
        ensure!(jwt_kid(&s.svid)? == k_new, "JWT-SVID for {} not signed by {k_new}", s.spiffe_id);
    }
    check_jwt_svids(&fetched, &cli.bundle_show_spiffe()?)?;
    phase("done");
    Ok(())
}
