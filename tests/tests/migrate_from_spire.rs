#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! Moving an operator from SPIRE to ward: `ward-server run` starts from the very HCL file a
//! real spire-server v1.13.3 runs with (with `-expandEnv`), `ward-server migrate` copies a
//! populated SPIRE server's registration entries (ids kept), federation relationships and
//! federated bundles into it, a second run changes nothing, and an unmodified spire-agent
//! attested to ward with a join token gets X509-SVIDs for the migrated entries.
//!
//! Phases:
//! 1. start spire-server (SQLite) and populate it with the unmodified spire-server CLI: a
//!    federated bundle, two federation relationships, four entries (two with chosen ids);
//! 2. start ward-server on SPIRE's own config file format (trust domain from the environment);
//! 3. migrate: the summary counts everything created; the spire-server CLI reads the same
//!    entries, relationships and bundles back from ward;
//! 4. migrate again: nothing created, everything already present, entries untouched;
//! 5. a join token (ward) names the node the entries hang under; spire-agent attests to ward
//!    and serves X509-SVIDs whose SPIFFE ids are the migrated entries', signed by ward's CA.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, ensure};
use serde_json::Value;
use tempfile::TempDir;
use ward_tests::agent_scenario::{
    current_uid, json_array, openssl_verify, pem_certificates, wait_for_x509_svids, wait_ready,
};
use ward_tests::cli::{AdminCli, AgentCli, CLI_TIMEOUT, parse_field};
use ward_tests::command::{CommandOutput, run};
use ward_tests::daemon::Daemon;
use ward_tests::free_port;
use ward_tests::server::{ServerOptions, ServerProcess};
use ward_tests::spire::{
    AgentProcess, SpireBins, SpireServerConfig, start_spire_agent, start_spire_server,
};
use ward_tests::ward::ward_server_bin;

const TD: &str = "example.org";
const NODE_ID: &str = "spiffe://example.org/node-a";
const PARTNER: &str = "partner.test";

/// Field order is drop order: agent, then servers, then the directory.
struct Harness {
    agent: Option<AgentProcess>,
    ward: Option<ServerProcess>,
    spire: Option<ServerProcess>,
    bins: SpireBins,
    dir: TempDir,
}

#[test]
fn migrate_from_a_populated_spire_server() {
    let dir = tempfile::Builder::new().prefix("ward-migrate").tempdir().unwrap();
    let mut h =
        Harness { agent: None, ward: None, spire: None, bins: SpireBins::locate().unwrap(), dir };
    if let Err(err) = scenario(&mut h) {
        panic!("migration scenario failed: {err:#}");
    }
}

fn phase(what: &str) {
    eprintln!("[migrate] {what}");
}

fn scenario(h: &mut Harness) -> anyhow::Result<()> {
    let root = h.dir.path().to_owned();
    let ward_bin = ward_server_bin()?;

    phase("1. start spire-server and populate it");
    let spire =
        h.spire.insert(start_spire_server(&h.bins, &root.join("spire"), &ServerOptions::new(TD))?);
    let spire_cli = AdminCli::new(&h.bins.server, &spire.socket_path);
    wait_ready(&mut spire.daemon, &spire_cli)?;
    let uid = current_uid()?;
    populate(&spire_cli, &root, uid)?;
    let spire_entries = entries(&spire_cli)?;
    ensure!(spire_entries.len() == 4, "spire-server holds {} entries", spire_entries.len());

    phase("2. start ward-server on a SPIRE config file with -expandEnv");
    let ward = h.ward.insert(start_ward_on_spire_config(&ward_bin, &root.join("ward"))?);
    let ward_cli = AdminCli::new(&ward_bin, &ward.socket_path);
    wait_ready(&mut ward.daemon, &ward_cli)?;
    let ward_spire_cli = AdminCli::new(&h.bins.server, &ward.socket_path);
    let log = std::fs::read_to_string(root.join("ward/ward-server.log"))?;
    ensure!(
        log.contains("DataStore \"sql\" is ignored") && log.contains("KeyManager \"disk\""),
        "ward logged no notes about the plugins it ignores:\n{log}"
    );

    phase("3. migrate: everything is created in ward, ids kept");
    let spire_sock = h.spire.as_ref().context("spire")?.socket_path.clone();
    let out = migrate(&ward_bin, &spire_sock, &ward.socket_path)?.success()?;
    for line in [
        "federated bundles         1 created, 0 already present, 0 failed",
        "federation relationships  2 created, 0 already present, 0 failed",
        "registration entries      4 created, 0 already present, 0 failed",
    ] {
        ensure!(out.stdout.contains(line), "migrate printed no `{line}`\n{}", out.describe());
    }
    let spire_cli = AdminCli::new(&h.bins.server, &spire_sock);
    ensure!(
        entries(&ward_spire_cli)? == spire_entries,
        "entries differ between SPIRE and ward after migrate:\n{:#?}\n---\n{:#?}",
        spire_entries,
        entries(&ward_spire_cli)?
    );
    ensure!(
        relationships(&ward_spire_cli)? == relationships(&spire_cli)?,
        "federation relationships differ:\n{:#?}\n---\n{:#?}",
        relationships(&spire_cli)?,
        relationships(&ward_spire_cli)?
    );
    ensure!(
        federated_bundles(&ward_spire_cli)? == federated_bundles(&spire_cli)?,
        "federated bundles differ"
    );
    let revisions_after_first = revisions(&ward_spire_cli)?;

    phase("4. migrate again: nothing changes");
    let out = migrate(&ward_bin, &spire_sock, &ward.socket_path)?.success()?;
    for line in [
        "federated bundles         0 created, 1 already present, 0 failed",
        "federation relationships  0 created, 2 already present, 0 failed",
        "registration entries      0 created, 4 already present, 0 failed",
        "Nothing to do: ward already holds everything the SPIRE server has.",
    ] {
        ensure!(
            out.stdout.contains(line),
            "second migrate printed no `{line}`\n{}",
            out.describe()
        );
    }
    ensure!(revisions(&ward_spire_cli)? == revisions_after_first, "the second run wrote entries");
    ensure!(entries(&ward_spire_cli)? == spire_entries, "entries changed on the second run");

    phase("5. spire-agent attests to ward and gets the migrated entries' SVIDs");
    let token_out = ward_spire_cli.ok(&["token", "generate"], &["-spiffeID", NODE_ID])?;
    let token = ward_tests::cli::parse_token(&token_out.stdout)?;
    let bundle_path = root.join("ward-bundle.pem");
    std::fs::write(&bundle_path, ward_cli.bundle_show_pem()?)?;
    let ward = h.ward.as_mut().context("ward")?;
    let agent = h.agent.insert(start_spire_agent(
        &h.bins,
        &root.join("agent"),
        TD,
        ward.port,
        &bundle_path,
        &token,
    )?);
    let agent_cli = AgentCli::new(&h.bins.agent, &agent.socket_path);
    let expected: BTreeSet<String> = spire_entries
        .iter()
        .filter(|e| {
            e["parent_id"]["path"] == "/node-a"
                && e["selectors"]
                    == serde_json::json!([{"type": "unix", "value": format!("uid:{uid}")}])
        })
        .map(|e| format!("spiffe://{TD}{}", e["spiffe_id"]["path"].as_str().unwrap_or("")))
        .collect();
    ensure!(expected.len() == 2, "expected two workload entries, found {expected:?}");
    let svids = wait_for_x509_svids(
        &mut agent.daemon,
        &mut ward.daemon,
        &agent_cli,
        &root.join("svids"),
        &expected,
    )?;
    for (_, pem_path) in &svids {
        openssl_verify(&bundle_path, pem_path)?;
    }
    phase("done");
    Ok(())
}

/// Phase 1: a federated bundle, two relationships and four entries, all with the unmodified
/// spire-server CLI.
fn populate(cli: &AdminCli, root: &Path, uid: u32) -> anyhow::Result<()> {
    let partner_pem = self_signed_ca(root, "partner")?;
    cli.ok(
        &["bundle", "set"],
        &["-id", &format!("spiffe://{PARTNER}"), "-path", &partner_pem.to_string_lossy()],
    )
    .context("bundle set")?;
    cli.ok(
        &["federation", "create"],
        &[
            "-trustDomain",
            PARTNER,
            "-bundleEndpointURL",
            "https://partner.test:8443/bundle",
            "-bundleEndpointProfile",
            "https_spiffe",
            "-endpointSpiffeID",
            "spiffe://partner.test/spire/server",
        ],
    )
    .context("federation create https_spiffe")?;
    cli.ok(
        &["federation", "create"],
        &[
            "-trustDomain",
            "web.test",
            "-bundleEndpointURL",
            "https://web.test/bundle",
            "-bundleEndpointProfile",
            "https_web",
        ],
    )
    .context("federation create https_web")?;
    let uid_sel = format!("unix:uid:{uid}");
    cli.ok(
        &["entry", "create"],
        &[
            "-entryID",
            "web-frontend",
            "-parentID",
            NODE_ID,
            "-spiffeID",
            "spiffe://example.org/web",
            "-selector",
            &uid_sel,
            "-dns",
            "web.example.org",
            "-x509SVIDTTL",
            "600",
            "-hint",
            "frontend",
        ],
    )
    .context("entry create web")?;
    let out = cli
        .ok(
            &["entry", "create"],
            &[
                "-parentID",
                NODE_ID,
                "-spiffeID",
                "spiffe://example.org/db",
                "-selector",
                &uid_sel,
                "-federatesWith",
                &format!("spiffe://{PARTNER}"),
            ],
        )
        .context("entry create db")?;
    parse_field(&out.stdout, "Entry ID").context("generated entry id")?;
    cli.ok(
        &["entry", "create"],
        &[
            "-entryID",
            "ops-admin",
            "-parentID",
            NODE_ID,
            "-spiffeID",
            "spiffe://example.org/ops",
            "-selector",
            "unix:uid:4242",
            "-admin",
        ],
    )
    .context("entry create ops")?;
    cli.ok(
        &["entry", "create"],
        &["-node", "-spiffeID", NODE_ID, "-selector", "k8s_psat:cluster:prod"],
    )
    .context("entry create node alias")?;
    Ok(())
}

/// Writes a self-signed CA certificate (openssl) and returns the PEM file's path.
fn self_signed_ca(root: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let cert = root.join(format!("{name}.pem"));
    let key = root.join(format!("{name}.key"));
    let mut cmd = Command::new("openssl");
    cmd.args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"])
        .args(["-days", "2", "-subj", &format!("/CN={name}")])
        .args(["-addext", "basicConstraints=critical,CA:TRUE"])
        .args(["-addext", &format!("subjectAltName=URI:spiffe://{name}.test")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert);
    run(&mut cmd, CLI_TIMEOUT)?.success()?;
    pem_certificates(&std::fs::read_to_string(&cert)?)?;
    Ok(cert)
}

/// Starts ward-server with the HCL file the SPIRE harness gives spire-server, its trust domain
/// read from the environment with `-expandEnv`.
fn start_ward_on_spire_config(bin: &Path, dir: &Path) -> anyhow::Result<ServerProcess> {
    let config = SpireServerConfig {
        options: ServerOptions::new(TD),
        bind_port: free_port()?,
        socket_path: dir.join("api.sock"),
        data_dir: dir.join("data"),
    };
    let text = config.render().replace(&format!("\"{TD}\""), "\"${MIGRATE_TRUST_DOMAIN}\"");
    ensure!(text.contains("${MIGRATE_TRUST_DOMAIN}"), "the trust domain line moved:\n{text}");
    let mut program = Command::new(bin);
    program.env("MIGRATE_TRUST_DOMAIN", TD).env("NO_COLOR", "1");
    let daemon = Daemon::run_with_config(
        "ward-server",
        program,
        dir,
        "-config",
        "server.conf",
        &text,
        &["-expandEnv"],
    )?;
    Ok(ServerProcess { daemon, socket_path: config.socket_path, port: config.bind_port })
}

fn migrate(bin: &Path, from: &Path, to: &Path) -> anyhow::Result<CommandOutput> {
    let mut cmd = Command::new(bin);
    cmd.arg("migrate").arg("--from-socket").arg(from).arg("-socketPath").arg(to);
    run(&mut cmd, Duration::from_secs(60))
}

/// Entries as `entry show -output json` prints them, sorted by id, without the fields a
/// copy may change (revision, creation time).
fn entries(cli: &AdminCli) -> anyhow::Result<Vec<Value>> {
    let mut list = json_array(&cli.json(&["entry", "show"], &[])?, "entries")?;
    for e in &mut list {
        if let Some(obj) = e.as_object_mut() {
            obj.remove("revision_number");
            obj.remove("created_at");
        }
    }
    list.sort_by_key(|e| e["id"].as_str().unwrap_or_default().to_owned());
    Ok(list)
}

fn revisions(cli: &AdminCli) -> anyhow::Result<Vec<(String, Value)>> {
    let list = json_array(&cli.json(&["entry", "show"], &[])?, "entries")?;
    let mut revs: Vec<(String, Value)> = list
        .iter()
        .map(|e| (e["id"].as_str().unwrap_or_default().to_owned(), e["revision_number"].clone()))
        .collect();
    revs.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(revs)
}

/// Relationships without the bundle they may carry, sorted by trust domain.
fn relationships(cli: &AdminCli) -> anyhow::Result<Vec<Value>> {
    let mut list =
        json_array(&cli.json(&["federation", "list"], &[])?, "federation_relationships")?;
    for r in &mut list {
        if let Some(obj) = r.as_object_mut() {
            obj.remove("trust_domain_bundle");
        }
    }
    list.sort_by_key(|r| r["trust_domain"].as_str().unwrap_or_default().to_owned());
    Ok(list)
}

/// Federated bundles' trust domains and X.509 authorities.
fn federated_bundles(cli: &AdminCli) -> anyhow::Result<Vec<(String, Value)>> {
    let list = json_array(&cli.json(&["bundle", "list"], &[])?, "bundles")?;
    let mut out: Vec<(String, Value)> = list
        .iter()
        .map(|b| {
            (
                b["trust_domain"].as_str().unwrap_or_default().to_owned(),
                b["x509_authorities"].clone(),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    ensure!(out.len() == 1 && out[0].0 == PARTNER, "federated bundles: {out:?}");
    Ok(out)
}

#[test]
fn ward_server_refuses_a_spire_config_it_cannot_honour() {
    let bin = ward_server_bin().unwrap();
    let conf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../crates/server/tests/testdata/spire/server-unsupported.conf");
    let mut cmd = Command::new(bin);
    cmd.arg("run").arg("-config").arg(&conf);
    let out = run(&mut cmd, CLI_TIMEOUT).unwrap();
    assert!(!out.status.success(), "{}", out.describe());
    let refusals: Vec<&str> = out.stderr.lines().filter(|l| l.starts_with("  - ")).collect();
    assert_eq!(refusals.len(), 6, "{}", out.describe());
    // Each sentence is printed once (not again, joined, after the last one).
    assert_eq!(out.stderr.matches("is not supported").count(), 6, "{}", out.describe());
    assert!(
        refusals
            .contains(&"  - plugin Notifier \"k8sbundle\" is not supported: ward has no notifiers"),
        "{}",
        out.describe()
    );
}

#[test]
fn ward_server_validate_judges_a_spire_config_as_run_does_without_starting() {
    let bin = ward_server_bin().unwrap();
    let testdata =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/server/tests/testdata/spire");
    let mut cmd = Command::new(&bin);
    cmd.arg("validate").arg("-config").arg(testdata.join("server-unsupported.conf"));
    let out = run(&mut cmd, CLI_TIMEOUT).unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", out.describe());
    assert!(
        out.stderr.starts_with("ward-server configuration file is invalid: "),
        "{}",
        out.describe()
    );
    assert_eq!(out.stderr.matches("is not supported").count(), 6, "{}", out.describe());

    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("server.toml");
    std::fs::write(&conf, "trust_domain = \"example.org\"\n").unwrap();
    let data_dir = dir.path().join("data");
    let mut cmd = Command::new(&bin);
    cmd.arg("validate").arg("-config").arg(&conf).arg("-dataDir").arg(&data_dir);
    let out = run(&mut cmd, CLI_TIMEOUT).unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", out.describe());
    assert_eq!(out.stdout.trim(), "ward-server configuration file is valid.");
    assert!(!data_dir.exists(), "validate created the data directory");
}
