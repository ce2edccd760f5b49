#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! `ward-server`'s own admin CLI against the unmodified `spire-server` v1.13.3 CLI: the same
//! script as the SPIRE differential suite (`ward_tests::script`), every row run once through
//! `spire-server <command>` and once through `ward-server <command>`, both against
//! `ward-server` with the same configuration. The servers are the same build, so every
//! difference left is the CLI's: flag handling, the human output, `-output json`, error texts
//! and exit codes. A row that differs fails the test unless it is in [`KNOWN`] with its reason.
//!
//! Each CLI drives its own server (two processes of the same binary and configuration): most
//! rows change state (`entry create -entryID e-basic` succeeds once), so two CLIs sharing one
//! server would each meet the state the other left and differ for that reason alone.
//!
//! - `WARD_DIFF_REPORT=<file>` writes every differing row (known or not) as Markdown.
//! - `WARD_DIFF_LOG=<file>` writes every row with its outcome.
//! - `WARD_DIFF_STRICT=1` also fails on known rows that match now (to prune the list).

use std::path::Path;
use std::time::Duration;

use ward_tests::differential::{Differential, Known, Row, Side, deliberate};
use ward_tests::script::{TD, script};
use ward_tests::server::ServerOptions;
use ward_tests::spire::SpireBins;
use ward_tests::ward::{start_ward_server, ward_server_bin};

const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Rows where `ward-server`'s CLI prints something other than `spire-server`'s, each with why.
#[rustfmt::skip]
const KNOWN: &[Known] = &[
    deliberate(
        "after a flag error (unknown flag, bad value, -output set twice) spire-server prints \
         the command's usage from Go's flag package (every flag with SPIRE's help text) below \
         the error line; ward-server prints the same error line and exit code 1 only, as its \
         help texts are its own (shown by -h) rather than a copy of SPIRE's",
        &[
            "flags: not defined", "flags: bad -output value", "flags: bad integer",
            "flags: bad duration", "flags: -output twice, different values",
            "flags: healthcheck has no -output",
        ],
    ),
    deliberate(
        "a data file that is not valid JSON, or holds a value of the wrong type, is refused \
         with the JSON reader's own reason after `Error: `, as spire-server does; the reason's \
         words are Go encoding/json's there (`invalid character 'e' looking for beginning of \
         value`, Go type names) and serde_json's here (`expected value at line 1 column 1`), \
         which cannot be reproduced in general. A truncated file reads the same on both",
        &[
            "entry create: data file that is not JSON",
            "entry create: data file with a value of the wrong type",
        ],
    ),
];

#[test]
fn ward_cli_differential() {
    let tmp = tempfile::Builder::new().prefix("ward-cli-diff").tempdir().unwrap();
    let mut d = match start(tmp.path()) {
        Ok(d) => d,
        Err(e) => panic!("could not start the servers: {e:#}"),
    };
    if let Err(e) = script(&mut d).and_then(|()| flag_edges(&mut d)) {
        panic!("the script could not run: {e:#}");
    }
    d.assert_known(KNOWN, "the spire-server CLI and ward-server's CLI");
}

/// Starts one `ward-server` per CLI (same configuration, own directory, socket and port) and
/// waits until each CLI's healthcheck passes against its server.
fn start(root: &Path) -> anyhow::Result<Differential> {
    let bins = SpireBins::locate()?;
    let ward_bin = ward_server_bin()?;
    let options = ServerOptions::new(TD);
    let spire_cli_root = root.join("spire-cli");
    let ward_cli_root = root.join("ward-cli");
    let for_spire_cli = start_ward_server(&ward_bin, &spire_cli_root.join("server"), &options)?;
    let for_ward_cli = start_ward_server(&ward_bin, &ward_cli_root.join("server"), &options)?;
    for root in [&spire_cli_root, &ward_cli_root] {
        ward_testkit::serve_closing_unix_socket(&root.join("closing.sock"))?;
    }
    let mut d = Differential::new(
        Side::new("spire-server CLI", for_spire_cli, &bins.server, &spire_cli_root),
        Side::new("ward-server CLI", for_ward_cli, &ward_bin, &ward_cli_root),
    );
    d.wait_healthy(READY_TIMEOUT)?;
    Ok(d)
}

/// Rows about reading the command line rather than about a server's answer: flag spellings
/// Go's flag package accepts, flag errors, values, and sockets that cannot be reached or
/// close without answering.
// The rows read best with each command's words wrapped together, as typed.
#[rustfmt::skip]
fn flag_edges(d: &mut Differential) -> anyhow::Result<()> {
    let rows: &[(&str, &[&str])] = &[
        ("flags: double dash", &["entry", "count", "--output", "json"]),
        ("flags: name=value", &["entry", "count", "-output=json"]),
        ("flags: -output in upper case", &["entry", "count", "-output", "JSON"]),
        ("flags: -output prettyprint", &["bundle", "count", "-output", "prettyprint"]),
        ("flags: -output twice, same value", &["bundle", "count", "-output", "json", "-output", "json"]),
        ("flags: -output twice, different values", &["bundle", "count", "-output", "json", "-output", "pretty"]),
        ("flags: a flag given twice keeps the last", &["entry", "show", "-entryID", "nope", "-entryID", "e-full"]),
        ("flags: value that starts with a dash", &["entry", "show", "-hint", "-x"]),
        ("flags: not defined", &["entry", "show", "-bogus"]),
        ("flags: bad -output value", &["bundle", "count", "-output", "yaml"]),
        ("flags: bad integer", &["token", "generate", "-ttl", "ten"]),
        ("flags: bad duration", &["x509", "mint", "-spiffeID", "spiffe://example.org/w", "-ttl", "soon"]),
        ("flags: ttl above int32", &["token", "generate", "-ttl", "2147483648"]),
        ("flags: unreachable socket", &["bundle", "count", "-socketPath", "{root}/no.sock"]),
        ("flags: socket that is a plain file", &["entry", "count", "-socketPath", "{root}/files/entries-bad.json"]),
        ("flags: socket that closes at once", &["entry", "count", "-socketPath", "{root}/closing.sock"]),
        ("flags: socket that closes at once, entry show", &["entry", "show", "-socketPath", "{root}/closing.sock"]),
        ("flags: empty socket path means the default", &["entry", "count", "-socketPath", ""]),
        ("flags: healthcheck has no -output", &["healthcheck", "-output", "json"]),
        ("flags: entry show -downstream", &["entry", "show", "-downstream", "-output", "json"]),
        ("flags: bundle show -format in upper case", &["bundle", "show", "-format", "PEM"]),
        ("flags: federation create from a file and flags", &["federation", "create", "-data", "{root}/files/federation.json", "-trustDomain", "x.org"]),
        ("flags: entry create from a missing file", &["entry", "create", "-data", "{root}/files/nope.json"]),
        ("flags: entry delete from a malformed file", &["entry", "delete", "-file", "{root}/files/entries-bad.json"]),
    ];
    for (name, argv) in rows {
        d.run(Row::new(name, argv))?;
    }
    Ok(())
}
