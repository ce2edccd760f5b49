//! Linearizability checking with porcupine (`github.com/anishathalye/porcupine`): a history
//! of registration-entry operations is written as JSON and checked by the small Go program in
//! `tests/interop/porcupine/`, which models each entry ID as a register.
//!
//! The checker is built once per porcupine version (pinned in that directory's `go.mod`) into
//! a cache outside the repository by `tests/interop/porcupine/build.sh`; `$WARD_PORCUPINE_BIN`
//! names a checker built elsewhere.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;

use crate::command::run;

/// Environment variable naming a built checker (`tests/run` sets it from `build.sh`).
pub const PORCUPINE_BIN_ENV: &str = "WARD_PORCUPINE_BIN";

/// Deadline for building the checker when no cached build exists.
const BUILD_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// What an operation did to (or read from) its entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    /// Creates the entry with a value (`hint`).
    Create,
    /// Sets the value of an existing entry.
    Update,
    /// Deletes the entry.
    Delete,
    /// Reads the value (or its absence).
    Get,
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The write took effect.
    Ok,
    /// A create found the entry already there.
    Exists,
    /// An update or delete found no entry.
    NotFound,
    /// No answer (timeout, connection lost after sending, unavailable): the write may have
    /// taken effect at any time after its call.
    Unknown,
    /// A read's answer (see [`Op::read`]).
    Read,
}

/// One recorded call: times are nanoseconds since the history's start.
#[derive(Debug, Clone, Serialize)]
pub struct Op {
    /// The client task that made the call.
    pub client: usize,
    /// The replica whose admin socket answered.
    pub replica: u64,
    /// The entry ID.
    pub key: String,
    /// What was asked.
    pub op: OpKind,
    /// The value written (creates and updates).
    pub value: String,
    /// When the call was made.
    pub call: i64,
    /// When the answer came; `None` for [`Outcome::Unknown`].
    #[serde(rename = "return")]
    pub ret: Option<i64>,
    /// How it ended.
    pub outcome: Outcome,
    /// For a read: the value read, `None` when the entry was absent.
    pub read: Option<String>,
}

/// The verdict of [`check`].
#[derive(Debug)]
pub enum Verdict {
    /// Linearizable.
    Linearizable(String),
    /// Not linearizable; the checker's output and the visualization it wrote.
    Violation {
        /// The checker's stdout and stderr.
        output: String,
        /// porcupine's HTML visualization of the failing partition.
        visualization: PathBuf,
    },
}

/// The checker binary: `$WARD_PORCUPINE_BIN`, or what `build.sh` builds (once per process).
///
/// # Errors
/// When the build fails (no Go toolchain, no module proxy and no cached module).
pub fn checker() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os(PORCUPINE_BIN_ENV) {
        return Ok(PathBuf::from(bin));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/porcupine/build.sh");
    let out = run(&mut Command::new(&script), BUILD_TIMEOUT)?
        .success()
        .context("building the checker with tests/interop/porcupine/build.sh")?;
    let bin = out.stdout.trim();
    if bin.is_empty() {
        bail!("build.sh printed no path\n{}", out.describe());
    }
    Ok(PathBuf::from(bin))
}

/// Writes `history` to `dir/history.json` and checks it; on a violation porcupine's
/// visualization goes to `dir/linearizability.html`.
///
/// # Errors
/// When the checker cannot run, refuses the input, or runs out of `timeout`.
pub fn check(history: &[Op], dir: &Path, timeout: Duration) -> anyhow::Result<Verdict> {
    let bin = checker()?;
    let path = dir.join("history.json");
    std::fs::write(&path, serde_json::to_vec(history)?)
        .with_context(|| format!("writing {}", path.display()))?;
    let visualization = dir.join("linearizability.html");
    let mut cmd = Command::new(&bin);
    cmd.arg("-history")
        .arg(&path)
        .arg("-visualize")
        .arg(&visualization)
        .arg("-timeout")
        .arg(format!("{}s", timeout.as_secs()));
    let out = run(&mut cmd, timeout + Duration::from_secs(60))?;
    match out.status.code() {
        Some(0) => Ok(Verdict::Linearizable(out.stdout.trim().to_owned())),
        Some(1) => Ok(Verdict::Violation { output: out.describe(), visualization }),
        _ => bail!("the linearizability check did not finish\n{}", out.describe()),
    }
}
