#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! SPIFFE federation between a real spire-server v1.13.3 and ward-server, both ways, over
//! their bundle endpoints (profile https_spiffe) on 127.0.0.1:
//!
//! 1. spire-server runs with `federation.bundle_endpoint`, ward-server with
//!    `[federation.bundle_endpoint]`;
//! 2. ward federates with SPIRE: a relationship created with the unmodified spire-server CLI
//!    on ward's admin socket, seeded with SPIRE's X.509 authorities only; `federation
//!    refresh` fetches SPIRE's bundle, which then equals `spire-server bundle show -format
//!    spiffe` (authorities, JWT keys) with SPIRE's endpoint refresh hint;
//! 3. SPIRE federates with ward the same way: `federation refresh` on SPIRE, then `bundle
//!    list` on SPIRE holds ward's CA and JWT keys;
//! 4. failures answer alike on both servers: an unknown trust domain, a refused connection,
//!    an endpoint presenting another SPIFFE ID; the stored bundle stays as it was.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, ensure};
use serde_json::Value;
use tempfile::TempDir;
use ward_tests::agent_scenario::wait_ready;
use ward_tests::cli::AdminCli;
use ward_tests::command::CommandOutput;
use ward_tests::daemon::Daemon;
use ward_tests::free_port;
use ward_tests::server::ServerOptions;
use ward_tests::spire::{SpireBins, SpireServerConfig};
use ward_tests::ward::{WardServerConfig, ward_server_bin};

const SPIRE_TD: &str = "spire.test";
const WARD_TD: &str = "ward.test";

/// Field order is drop order: servers, then the directory.
struct Harness {
    ward: Option<Daemon>,
    spire: Option<Daemon>,
    dir: TempDir,
}

#[test]
fn spire_and_ward_federate_both_ways() {
    let dir = tempfile::Builder::new().prefix("ward-federation").tempdir().unwrap();
    let mut h = Harness { ward: None, spire: None, dir };
    if let Err(err) = scenario(&mut h) {
        let logs: String = [&h.spire, &h.ward]
            .iter()
            .filter_map(|d| d.as_ref().map(|d| format!("--- {} ---\n{}\n", d.name(), d.log_tail())))
            .collect();
        panic!("federation scenario failed: {err:#}\n{logs}");
    }
}

fn phase(what: &str) {
    eprintln!("[federation] {what}");
}

/// The SPIFFE document's keys of one `use`, as (x5c or kid) strings, sorted.
fn keys(doc: &Value, use_: &str) -> anyhow::Result<Vec<String>> {
    let keys = doc["keys"].as_array().context("no keys array")?;
    let mut out: Vec<String> = keys
        .iter()
        .filter(|k| k["use"] == use_)
        .map(|k| match use_ {
            "x509-svid" => k["x5c"].to_string(),
            _ => format!("{} {} {}", k["kid"], k["x"], k["y"]),
        })
        .collect();
    out.sort();
    Ok(out)
}

fn parse(out: &CommandOutput) -> anyhow::Result<Value> {
    serde_json::from_str(&out.stdout).with_context(|| format!("not JSON\n{}", out.describe()))
}

/// Writes `doc` with only its X.509 authorities (a bundle to seed a relationship with).
fn x509_only(doc: &Value, path: &Path) -> anyhow::Result<()> {
    let keys: Vec<Value> = doc["keys"]
        .as_array()
        .context("no keys")?
        .iter()
        .filter(|k| k["use"] == "x509-svid")
        .cloned()
        .collect();
    std::fs::write(path, serde_json::json!({ "keys": keys }).to_string())?;
    Ok(())
}

/// `federation <verb>` (create or update) of an https_spiffe relationship.
fn spiffe_relationship(
    cli: &AdminCli,
    verb: &str,
    td: &str,
    url: &str,
    endpoint_id: &str,
    bundle: Option<&Path>,
) -> anyhow::Result<CommandOutput> {
    let mut args = vec![
        "-trustDomain",
        td,
        "-bundleEndpointURL",
        url,
        "-bundleEndpointProfile",
        "https_spiffe",
        "-endpointSpiffeID",
        endpoint_id,
    ];
    let path;
    if let Some(p) = bundle {
        path = p.display().to_string();
        args.extend(["-trustDomainBundlePath", &path, "-trustDomainBundleFormat", "spiffe"]);
    }
    cli.ok(&["federation", verb], &args)
}

/// On the server behind `cli`: a relationship with `td` (whose bundle is `owner_doc`, served
/// at `url`), seeded with its X.509 authorities only, then `federation refresh`. The stored
/// copy must then hold every key of `owner_doc`; returns it.
fn federate(
    cli: &AdminCli,
    owner_doc: &Value,
    td: &str,
    url: &str,
    root: &Path,
) -> anyhow::Result<Value> {
    let seed = root.join(format!("{td}-x509.json"));
    x509_only(owner_doc, &seed)?;
    spiffe_relationship(
        cli,
        "create",
        td,
        url,
        &format!("spiffe://{td}/spire/server"),
        Some(&seed),
    )?;
    let out = cli.ok(&["federation", "refresh"], &["-id", td])?;
    ensure!(out.stdout.trim() == "Bundle refreshed", "{}", out.describe());
    let id = format!("spiffe://{td}");
    let stored = parse(&cli.ok(&["bundle", "list"], &["-id", &id, "-format", "spiffe"])?)?;
    for use_ in ["x509-svid", "jwt-svid"] {
        ensure!(
            keys(&stored, use_)? == keys(owner_doc, use_)?,
            "the fetched copy of {td}'s bundle differs in {use_} keys:\n{stored:#}\n---\n{owner_doc:#}"
        );
    }
    Ok(stored)
}

/// `federation refresh -id <td>` on both servers: exit code and output must be equal once
/// `spire`'s and `ward`'s own names are put in place of each other.
fn refresh_alike(
    (spire, spire_td): (&AdminCli, &str),
    (ward, ward_td): (&AdminCli, &str),
    swap: &[(&str, &str)],
) -> anyhow::Result<String> {
    let td = spire_td;
    let s = spire.raw(&["federation", "refresh"], &["-id", spire_td])?;
    let w = ward.raw(&["federation", "refresh"], &["-id", ward_td])?;
    let mut w_text = format!("{}{}", w.stdout, w.stderr);
    for (from, to) in swap {
        w_text = w_text.replace(from, to);
    }
    let s_text = format!("{}{}", s.stdout, s.stderr);
    ensure!(
        s.status.code() == w.status.code() && s_text == w_text,
        "`federation refresh -id {td}` differs\n--- spire ---\n{}\n--- ward (names swapped) ---\n{w_text}",
        s.describe()
    );
    Ok(s_text)
}

fn scenario(h: &mut Harness) -> anyhow::Result<()> {
    let root = h.dir.path().to_owned();
    let bins = SpireBins::locate()?;
    let ward_bin = ward_server_bin()?;
    let spire_endpoint_port = free_port()?;
    let ward_endpoint_port = free_port()?;
    let spire_url = format!("https://127.0.0.1:{spire_endpoint_port}");
    let ward_url = format!("https://127.0.0.1:{ward_endpoint_port}");

    phase("1. start spire-server and ward-server with their bundle endpoints");
    let spire_dir = root.join("spire");
    let spire_cfg = SpireServerConfig {
        options: ServerOptions::new(SPIRE_TD),
        bind_port: free_port()?,
        socket_path: spire_dir.join("api.sock"),
        data_dir: spire_dir.join("data"),
    };
    let spire_text = spire_cfg.render().replacen(
        "    log_level = \"DEBUG\"\n",
        &format!(
            "    log_level = \"DEBUG\"\n    federation {{\n        bundle_endpoint {{\n            \
             address = \"127.0.0.1\"\n            port = {spire_endpoint_port}\n        }}\n    }}\n"
        ),
        1,
    );
    let spire = h.spire.insert(Daemon::run_with_config(
        "spire-server",
        Command::new(&bins.server),
        &spire_dir,
        "-config",
        "server.conf",
        &spire_text,
        &[],
    )?);
    let spire_cli = AdminCli::new(&bins.server, &spire_cfg.socket_path);
    wait_ready(spire, &spire_cli)?;

    let ward_dir = root.join("ward");
    let ward_cfg = WardServerConfig {
        options: ServerOptions::new(WARD_TD),
        bind_port: free_port()?,
        socket_path: ward_dir.join("api.sock"),
        data_dir: ward_dir.join("data"),
    };
    let ward_text = format!(
        "{}\n[federation.bundle_endpoint]\naddress = \"127.0.0.1\"\nport = {ward_endpoint_port}\n",
        ward_cfg.render()
    );
    let mut program = Command::new(&ward_bin);
    program.env("NO_COLOR", "1").env("RUST_LOG", "debug,sled=info,h2=info,hyper=info,tower=info");
    let ward = h.ward.insert(Daemon::run_with_config(
        "ward-server",
        program,
        &ward_dir,
        "--config",
        "server.toml",
        &ward_text,
        &[],
    )?);
    let ward_native = AdminCli::new(&ward_bin, &ward_cfg.socket_path);
    wait_ready(ward, &ward_native)?;
    // The unmodified spire-server CLI on ward's admin socket.
    let ward_cli = AdminCli::new(&bins.server, &ward_cfg.socket_path);

    let spire_doc: Value = serde_json::from_str(&spire_cli.bundle_show_spiffe()?)?;
    let ward_doc: Value = serde_json::from_str(&ward_cli.bundle_show_spiffe()?)?;
    ensure!(!keys(&spire_doc, "jwt-svid")?.is_empty(), "SPIRE's bundle has no JWT keys");
    ensure!(!keys(&ward_doc, "jwt-svid")?.is_empty(), "ward's bundle has no JWT keys");

    phase("2. ward fetches SPIRE's bundle: federation refresh on ward");
    let fetched = federate(&ward_cli, &spire_doc, SPIRE_TD, &spire_url, &root)?;
    ensure!(fetched["spiffe_refresh_hint"] == 300, "SPIRE's endpoint hint not kept: {fetched:#}");

    phase("3. SPIRE fetches ward's bundle: federation refresh on SPIRE");
    federate(&spire_cli, &ward_doc, WARD_TD, &ward_url, &root)?;
    let listed = spire_cli.ok(&["bundle", "list"], &[])?;
    let ward_pem = ward_cli.bundle_show_pem()?;
    ensure!(
        listed.stdout.contains("* ward.test") && listed.stdout.contains(ward_pem.trim()),
        "SPIRE's bundle list lacks ward's CA\n{}\n--- ward's CA ---\n{ward_pem}",
        listed.describe()
    );

    phase("4. failures answer alike");
    let swap = [(SPIRE_TD, WARD_TD), (spire_url.as_str(), ward_url.as_str())];
    let text = refresh_alike((&spire_cli, "nowhere.test"), (&ward_cli, "nowhere.test"), &swap)?;
    ensure!(
        text.contains("there is no federation relationship with trust domain \"nowhere.test\""),
        "{text}"
    );

    // A refused connection: the same closed port on both sides.
    let closed = format!("https://127.0.0.1:{}", free_port()?);
    for cli in [&spire_cli, &ward_cli] {
        cli.ok(
            &["federation", "create"],
            &[
                "-trustDomain",
                "closed.test",
                "-bundleEndpointURL",
                &closed,
                "-bundleEndpointProfile",
                "https_web",
            ],
        )?;
    }
    let text = refresh_alike((&spire_cli, "closed.test"), (&ward_cli, "closed.test"), &swap)?;
    ensure!(text.contains("connection refused"), "{text}");

    // Each endpoint presents `spiffe://<td>/spire/server`; expecting another ID fails, and
    // the stored bundle is unchanged.
    let before_ward =
        ward_cli.ok(&["bundle", "list"], &["-id", "spiffe://spire.test", "-format", "spiffe"])?;
    let before_spire =
        spire_cli.ok(&["bundle", "list"], &["-id", "spiffe://ward.test", "-format", "spiffe"])?;
    for (cli, td, url) in [(&spire_cli, WARD_TD, &ward_url), (&ward_cli, SPIRE_TD, &spire_url)] {
        let wrong = format!("spiffe://{td}/not-the-server");
        spiffe_relationship(cli, "update", td, url, &wrong, None)?;
    }
    let s_text = refresh_alike((&spire_cli, WARD_TD), (&ward_cli, SPIRE_TD), &swap)?;
    ensure!(s_text.contains("unexpected ID"), "{s_text}");
    let after_ward =
        ward_cli.ok(&["bundle", "list"], &["-id", "spiffe://spire.test", "-format", "spiffe"])?;
    let after_spire =
        spire_cli.ok(&["bundle", "list"], &["-id", "spiffe://ward.test", "-format", "spiffe"])?;
    ensure!(after_ward.stdout == before_ward.stdout, "ward's stored bundle changed");
    ensure!(after_spire.stdout == before_spire.stdout, "SPIRE's stored bundle changed");
    phase("done");
    Ok(())
}
