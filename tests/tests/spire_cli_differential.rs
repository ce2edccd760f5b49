#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! The differential suite: a broad script of unmodified `spire-server` v1.13.3 CLI commands,
//! good and bad input, plain and `-output json`, run against a real `spire-server` and
//! against `ward-server` started side by side with the same trust domain. Outputs are
//! normalised (`ward_tests::normalize`) and compared row by row; a row that differs fails
//! the test unless it is in [`KNOWN`] with the reason.
//!
//! - `WARD_DIFF_REPORT=<file>` writes every differing row (known or not) as Markdown.
//! - `WARD_DIFF_LOG=<file>` writes every row with its outcome.
//! - `WARD_DIFF_STRICT=1` also fails on known rows that match now (to prune the list).

use std::path::Path;
use std::time::Duration;

use ward_tests::differential::{Differential, Known, Side};
use ward_tests::script::{TD, script};
use ward_tests::server::ServerOptions;
use ward_tests::spire::{SpireBins, start_spire_server};
use ward_tests::ward::{start_ward_server, ward_server_bin};

const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Rows where ward answers differently from SPIRE, each with why: `open(reason, rows)` for a
/// difference still to fix, `deliberate(reason, rows)` for one kept on purpose. None today:
/// every row of the script matches SPIRE. `WARD_DIFF_STRICT=1` fails on a listed row that
/// matches, so the list stays exact.
const KNOWN: &[Known] = &[];

#[test]
fn spire_cli_differential() {
    let tmp = tempfile::Builder::new().prefix("ward-diff").tempdir().unwrap();
    let mut d = match start(tmp.path()) {
        Ok(d) => d,
        Err(e) => panic!("could not start the servers: {e:#}"),
    };
    if let Err(e) = script(&mut d) {
        panic!("the script could not run: {e:#}");
    }
    d.assert_known(KNOWN, "SPIRE and ward");
}

/// Starts both servers (each in its own directory, socket and port) and waits until the
/// `spire-server` CLI's healthcheck passes against each.
fn start(root: &Path) -> anyhow::Result<Differential> {
    let bins = SpireBins::locate()?;
    let ward_bin = ward_server_bin()?;
    let options = ServerOptions::new(TD);
    let spire_root = root.join("spire");
    let ward_root = root.join("ward");
    let spire = start_spire_server(&bins, &spire_root.join("server"), &options)?;
    let ward = start_ward_server(&ward_bin, &ward_root.join("server"), &options)?;
    let mut d = Differential::new(
        Side::new("spire", spire, &bins.server, &spire_root),
        Side::new("ward", ward, &bins.server, &ward_root),
    );
    d.wait_healthy(READY_TIMEOUT)?;
    Ok(d)
}
