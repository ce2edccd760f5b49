#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! The unmodified `spire-server` CLI's `localauthority x509|jwt show|prepare|activate|taint|
//! revoke`, `upstreamauthority taint|revoke` and `logger get|set|reset`, run as one script
//! against a real `spire-server` and against `ward-server` in the same test. Every command's
//! exit status, stdout and stderr must match once authority IDs (numbered by first
//! appearance) and expiry times are normalised. Then, for both servers, `logger set` must
//! change what the running process logs and `logger reset` must restore it.

use anyhow::Context;
use serde_json::Value;
use ward_tests::cli::AdminCli;
use ward_tests::normalize::Normalizer;
use ward_tests::server::{ServerOptions, ServerProcess};
use ward_tests::spire::{SpireBins, start_spire_server};
use ward_tests::wait::{Step, poll_until};
use ward_tests::ward::{start_ward_server, ward_server_bin};

const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// One command of the script and what it printed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ran {
    command: String,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

struct Script<'a> {
    cli: &'a AdminCli,
    ran: Vec<Ran>,
}

impl Script<'_> {
    fn run(&mut self, words: &[&str], args: &[&str]) -> Ran {
        let out = self.cli.raw(words, args).unwrap();
        let ran = Ran {
            command: format!("{} {}", words.join(" "), args.join(" ")),
            code: out.status.code(),
            stdout: out.stdout,
            stderr: out.stderr,
        };
        self.ran.push(ran.clone());
        ran
    }

    /// Runs with `-output json` and returns the parsed document (the run is recorded too).
    fn json(&mut self, words: &[&str], args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-output", "json"]);
        let ran = self.run(words, &all);
        serde_json::from_str(&ran.stdout)
            .unwrap_or_else(|e| panic!("`{}` printed no JSON ({e}): {ran:?}", ran.command))
    }
}

fn authority_id(doc: &Value, field: &str) -> String {
    doc[field]["authority_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no {field}.authority_id in {doc}"))
        .to_owned()
}

/// The script, identical for both servers.
fn script(cli: &AdminCli) -> Vec<Ran> {
    let mut s = Script { cli, ran: Vec::new() };
    let la = |kind: &'static str, verb: &'static str| ["localauthority", kind, verb];

    // X.509 authorities.
    s.run(&la("x509", "show"), &[]);
    let a = authority_id(&s.json(&la("x509", "show"), &[]), "active");
    s.run(&la("x509", "activate"), &[]);
    s.run(&la("x509", "activate"), &["-authorityID", "0011"]);
    s.run(&la("x509", "taint"), &["-authorityID", &a]);
    s.run(&la("x509", "taint"), &["-authorityID", "0011"]);
    s.run(&la("x509", "revoke"), &["-authorityID", &a]);
    s.run(&la("x509", "revoke"), &["-authorityID", "0011"]);
    s.run(&la("x509", "revoke"), &[]);
    let p = authority_id(&s.json(&la("x509", "prepare"), &[]), "prepared_authority");
    s.run(&la("x509", "show"), &[]);
    s.run(&la("x509", "taint"), &["-authorityID", &p]);
    s.run(&la("x509", "revoke"), &["-authorityID", &p]);
    s.run(&la("x509", "activate"), &["-authorityID", &p]);
    s.run(&la("x509", "show"), &[]);
    s.run(&la("x509", "activate"), &["-authorityID", &a]);
    s.run(&la("x509", "revoke"), &["-authorityID", &a]);
    s.run(&la("x509", "taint"), &["-authorityID", &a]);
    s.run(&la("x509", "taint"), &["-authorityID", &a]);
    s.json(&la("x509", "show"), &[]);
    s.run(&la("x509", "revoke"), &["-authorityID", &a]);
    s.run(&la("x509", "revoke"), &["-authorityID", &a]);
    s.run(&la("x509", "taint"), &["-authorityID", &a]);
    s.run(&la("x509", "show"), &[]);
    s.run(&la("x509", "prepare"), &[]);
    s.run(&la("x509", "show"), &[]);

    // Upstream authorities: none is configured.
    s.run(&["upstreamauthority", "taint"], &[]);
    s.run(&["upstreamauthority", "taint"], &["-subjectKeyID", &a]);
    s.run(&["upstreamauthority", "revoke"], &["-subjectKeyID", &a]);
    s.run(&["upstreamauthority", "revoke"], &[]);

    // JWT authorities.
    s.run(&la("jwt", "show"), &[]);
    let k1 = authority_id(&s.json(&la("jwt", "show"), &[]), "active");
    s.run(&la("jwt", "taint"), &["-authorityID", &k1]);
    s.run(&la("jwt", "revoke"), &["-authorityID", &k1]);
    s.run(&la("jwt", "revoke"), &["-authorityID", "nope"]);
    let k2 = authority_id(&s.json(&la("jwt", "prepare"), &[]), "prepared_authority");
    s.run(&la("jwt", "show"), &[]);
    s.run(&la("jwt", "revoke"), &["-authorityID", &k2]);
    s.run(&la("jwt", "taint"), &["-authorityID", &k2]);
    s.run(&la("jwt", "activate"), &["-authorityID", &k1]);
    s.run(&la("jwt", "activate"), &["-authorityID", &k2]);
    s.run(&la("jwt", "show"), &[]);
    s.run(&la("jwt", "revoke"), &["-authorityID", &k1]);
    s.run(&la("jwt", "taint"), &["-authorityID", &k1]);
    s.run(&la("jwt", "taint"), &["-authorityID", &k1, "-output", "json"]);
    s.run(&la("jwt", "revoke"), &["-authorityID", &k1]);
    s.run(&la("jwt", "revoke"), &["-authorityID", &k1]);
    s.json(&la("jwt", "show"), &[]);

    // Logger.
    s.run(&["logger", "get"], &[]);
    s.run(&["logger", "set"], &[]);
    s.run(&["logger", "set"], &["-level", "loud"]);
    s.run(&["logger", "set"], &["-level", "WARN"]);
    s.json(&["logger", "get"], &[]);
    s.run(&["logger", "set"], &["-level", "fatal"]);
    s.run(&["logger", "reset"], &[]);
    s.json(&["logger", "set"], &["-level", "trace"]);
    s.json(&["logger", "reset"], &[]);
    s.ran
}

fn normalised(n: &Normalizer, r: &Ran) -> Ran {
    Ran {
        // The commands name each server's own IDs; the script makes them the same command.
        command: String::new(),
        code: r.code,
        stdout: n.normalize(&r.stdout),
        stderr: n.normalize(&r.stderr),
    }
}

fn wait_ready(server: &mut ServerProcess, cli: &AdminCli) {
    poll_until("the server to become ready", TIMEOUT, || {
        server.daemon.ensure_running()?;
        let probe = cli.raw(&["healthcheck"], &[])?;
        Ok(if probe.status.success() { Step::Done(()) } else { Step::Retry(probe.describe()) })
    })
    .unwrap();
}

/// `logger set -level warn` silences the server's info lines and `logger reset` brings them
/// back: counted by the info line each `logger get` makes the server write.
fn live_level_changes(server: &ServerProcess, cli: &AdminCli) -> anyhow::Result<()> {
    let count = || server.daemon.log().matches("GetLogger Called").count();
    let get = || cli.ok(&["logger", "get"], &[]).map(|_| ());
    let before = count();
    get()?;
    let logged = poll_until("the GetLogger line", TIMEOUT, || {
        Ok(if count() > before { Step::Done(count()) } else { Step::Retry("not yet".into()) })
    })?;
    cli.ok(&["logger", "set"], &["-level", "warn"])?;
    get()?;
    get()?;
    cli.ok(&["logger", "reset"], &[])?;
    get()?;
    let after = poll_until("the GetLogger line after reset", TIMEOUT, || {
        Ok(if count() > logged { Step::Done(count()) } else { Step::Retry("not yet".into()) })
    })?;
    anyhow::ensure!(
        after == logged + 1,
        "{} GetLogger lines were written between set -level warn and reset, expected 1 (the \
         call after reset)",
        after - logged
    );
    Ok(())
}

#[test]
fn authority_and_logger_commands_answer_as_spire_does() {
    let spire = SpireBins::locate().unwrap();
    let ward_bin = ward_server_bin().unwrap();
    let dir = tempfile::Builder::new().prefix("ward-la").tempdir().unwrap();
    let options = ServerOptions::new("example.org");

    let mut spire_server = start_spire_server(&spire, &dir.path().join("spire"), &options).unwrap();
    let spire_cli = AdminCli::new(&spire.server, &spire_server.socket_path);
    wait_ready(&mut spire_server, &spire_cli);
    let spire_ran = script(&spire_cli);
    live_level_changes(&spire_server, &spire_cli).context("spire-server").unwrap();

    let mut ward_server = start_ward_server(&ward_bin, &dir.path().join("ward"), &options).unwrap();
    let ward_cli = AdminCli::new(&spire.server, &ward_server.socket_path);
    wait_ready(&mut ward_server, &ward_cli);
    let ward_ran = script(&ward_cli);
    live_level_changes(&ward_server, &ward_cli).context("ward-server").unwrap();

    assert_eq!(spire_ran.len(), ward_ran.len());
    let mut differences = Vec::new();
    let n = Normalizer::new();
    for (s, w) in spire_ran.iter().zip(&ward_ran) {
        let command = &w.command;
        let (s, w) = (normalised(&n, s), normalised(&n, w));
        if s != w {
            differences.push(format!("{command}\nspire: {s:#?}\nward:  {w:#?}"));
        }
    }
    assert!(
        differences.is_empty(),
        "{} differences:\n{}",
        differences.len(),
        differences.join("\n\n")
    );
    // Not vacuous: the script printed authorities of both kinds, and errors.
    assert!(ward_ran.iter().any(|r| r.stdout.contains("Active X.509 authority:")));
    assert!(ward_ran.iter().any(|r| r.stdout.contains("Tainted JWT authority:")));
    assert!(
        ward_ran.iter().any(|r| r.code == Some(1)) && ward_ran.iter().any(|r| r.code == Some(0))
    );
}
