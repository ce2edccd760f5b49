//! Differential runs: the same unmodified `spire-server` CLI command against a real SPIRE
//! server and against ward, row by row, with outputs normalised and compared.
//!
//! A [`Differential`] owns two [`Side`]s (SPIRE first, ward second). Each [`Row`] is one CLI
//! invocation written once, with `{name}` placeholders filled from values the row's side
//! captured earlier (a join token, an authority id). Both sides run a row at the same time;
//! each output is normalised by that side's [`Normalizer`] and the exit code, stdout and
//! stderr are compared. [`Differential::verdict`] then checks the rows that differ against a
//! list of [`Known`] differences, each with its reason, and renders a readable report.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;
use regex::Regex;

use crate::cli::AdminCli;
use crate::command::CommandOutput;
use crate::normalize::Normalizer;
use crate::server::ServerProcess;
use crate::spire::AgentProcess;
use crate::wait::{Step, poll_until};

/// One server under comparison and what the script learned about it.
#[derive(Debug)]
pub struct Side {
    /// `spire` or `ward`, for messages.
    pub label: &'static str,
    /// The agent attested to this server, if the script started one. Declared before the
    /// server so that it is dropped (killed) first.
    pub agent: Option<AgentProcess>,
    /// The server.
    pub server: ServerProcess,
    /// The unmodified `spire-server` CLI bound to this server's admin socket.
    pub cli: AdminCli,
    /// This side's scratch directory; input files for rows live under it.
    pub root: PathBuf,
    /// Values captured from this side's outputs, by name.
    pub vars: BTreeMap<String, String>,
    /// This side's normaliser (its root and captured values are literal substitutions).
    pub normalizer: Normalizer,
}

impl Side {
    /// A side for `server`, driven by the `spire-server` binary `spire_server_bin`, with its
    /// scratch files under `root` (printed as `<root>`).
    pub fn new(
        label: &'static str,
        server: ServerProcess,
        spire_server_bin: &Path,
        root: &Path,
    ) -> Self {
        let cli = AdminCli::new(spire_server_bin, &server.socket_path);
        let mut normalizer = Normalizer::new();
        normalizer.literal(&server.socket_path.to_string_lossy(), "socket");
        normalizer.literal(&root.to_string_lossy(), "root");
        Self {
            label,
            agent: None,
            server,
            cli,
            root: root.to_owned(),
            vars: BTreeMap::new(),
            normalizer,
        }
    }

    /// Records `value` under `name`: rows may use `{name}`, and outputs print it as `<name>`.
    pub fn set_var(&mut self, name: &str, value: &str) {
        self.vars.insert(name.to_owned(), value.to_owned());
        self.normalizer.literal(value, name);
    }

    /// `arg` with every `{name}` replaced by this side's value of `name`.
    fn expand(&self, arg: &str) -> String {
        let mut out = arg.to_owned();
        for (name, value) in &self.vars {
            out = out.replace(&format!("{{{name}}}"), value);
        }
        out.replace("{root}", &self.root.to_string_lossy())
    }
}

/// How a row's stdout is ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// SPIRE defines the order: compare as printed.
    AsPrinted,
    /// SPIRE does not define the order of the blank-line separated blocks: sort them.
    SortedBlocks,
}

/// One CLI invocation in the script.
#[derive(Debug, Clone)]
pub struct Row {
    name: String,
    argv: Vec<String>,
    captures: Vec<(String, Regex)>,
    order: Order,
}

impl Row {
    /// A row named `name` running `spire-server <argv…>` (the leading words without a dash
    /// are the subcommand; `-socketPath` goes after them). `{var}` in an argument is replaced
    /// by the side's captured value, `{root}` by the side's scratch directory.
    pub fn new(name: &str, argv: &[&str]) -> Self {
        Self {
            name: name.to_owned(),
            argv: argv.iter().map(|a| (*a).to_owned()).collect(),
            captures: Vec::new(),
            order: Order::AsPrinted,
        }
    }

    /// After running, stores the first group of `pattern` in stdout as variable `var`.
    pub fn capture(mut self, var: &str, pattern: &str) -> Self {
        #[allow(clippy::expect_used)]
        let regex = Regex::new(pattern).expect("capture patterns in the script are valid");
        self.captures.push((var.to_owned(), regex));
        self
    }

    /// Compares stdout with its blank-line separated blocks sorted.
    pub fn sorted_blocks(mut self) -> Self {
        self.order = Order::SortedBlocks;
        self
    }

    /// The row's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The command as written in the script.
    pub fn command(&self) -> String {
        let mut line = String::from("spire-server");
        for arg in &self.argv {
            line.push(' ');
            if arg.is_empty() || arg.contains(char::is_whitespace) {
                line.push_str(&format!("{arg:?}"));
            } else {
                line.push_str(arg);
            }
        }
        line
    }
}

/// A normalised outcome: what the comparison looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Normalised stdout.
    pub stdout: String,
    /// Normalised stderr.
    pub stderr: String,
}

impl Outcome {
    fn render(&self) -> String {
        let code = self.code.map_or_else(|| "signal".to_owned(), |c| c.to_string());
        format!(
            "exit {code}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

/// The two outcomes of one row.
#[derive(Debug, Clone)]
pub struct RowResult {
    /// Row name.
    pub name: String,
    /// The command as written.
    pub command: String,
    /// SPIRE's normalised outcome.
    pub spire: Outcome,
    /// ward's normalised outcome.
    pub ward: Outcome,
    /// How long the row took (both sides run at once).
    pub elapsed: Duration,
}

impl RowResult {
    /// Whether the outcomes agree.
    pub fn matches(&self) -> bool {
        self.spire == self.ward
    }

    /// A readable account of the difference (or of the shared outcome).
    pub fn describe(&self) -> String {
        let mut out = format!("row `{}`: {}\n", self.name, self.command);
        if self.matches() {
            out.push_str(&indent(&self.spire.render()));
            return out;
        }
        if self.spire.code != self.ward.code {
            let _ = writeln!(
                out,
                "  exit code: spire {:?}, ward {:?}",
                self.spire.code, self.ward.code
            );
        }
        for (stream, spire, ward) in [
            ("stdout", &self.spire.stdout, &self.ward.stdout),
            ("stderr", &self.spire.stderr, &self.ward.stderr),
        ] {
            if spire != ward {
                let _ = writeln!(out, "  {stream} differs:");
                out.push_str(&line_diff(spire, ward));
            }
        }
        out
    }
}

/// Why ward's answer to a row differs from SPIRE's.
#[derive(Debug, Clone, Copy)]
pub enum Why {
    /// ward differs on purpose; the text says why.
    Deliberate(&'static str),
    /// Not done yet; the text says what is missing.
    Open(&'static str),
}

impl Why {
    /// The reason text.
    pub fn reason(&self) -> &'static str {
        match self {
            Why::Deliberate(r) | Why::Open(r) => r,
        }
    }
}

/// Rows whose difference from SPIRE is expected, with the one reason they share. Remove a
/// row from its group once ward matches SPIRE on it.
#[derive(Debug, Clone, Copy)]
pub struct Known {
    /// The reason.
    pub why: Why,
    /// The row names.
    pub rows: &'static [&'static str],
}

/// Rows where ward differs on purpose.
pub const fn deliberate(reason: &'static str, rows: &'static [&'static str]) -> Known {
    Known { why: Why::Deliberate(reason), rows }
}

/// Rows that differ because ward still misses something.
pub const fn open(missing: &'static str, rows: &'static [&'static str]) -> Known {
    Known { why: Why::Open(missing), rows }
}

/// Row name to reason, failing on a row listed twice or a group without a reason.
fn known_rows(known: &[Known]) -> (BTreeMap<&'static str, Why>, Vec<String>) {
    let mut map = BTreeMap::new();
    let mut problems = Vec::new();
    for group in known {
        if group.why.reason().trim().is_empty() {
            problems.push(format!("a known-difference group gives no reason: {:?}", group.rows));
        }
        for row in group.rows {
            if map.insert(*row, group.why).is_some() {
                problems.push(format!("known difference `{row}` is listed twice"));
            }
        }
    }
    (map, problems)
}

/// Both servers and the results so far.
#[derive(Debug)]
pub struct Differential {
    /// SPIRE's side (index 0) and ward's (index 1).
    pub sides: [Side; 2],
    results: Vec<RowResult>,
    names: BTreeSet<String>,
}

impl Differential {
    /// Compares `spire` (the reference) with `ward`.
    pub fn new(spire: Side, ward: Side) -> Self {
        Self { sides: [spire, ward], results: Vec::new(), names: BTreeSet::new() }
    }

    /// Runs `row` on both sides at once, captures its variables and records the comparison.
    /// Fails only when a command could not be run or overran its deadline, or when a row
    /// name is used twice.
    pub fn run(&mut self, row: Row) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.names.insert(row.name.clone()),
            "row name `{}` is used twice",
            row.name
        );
        let started = Instant::now();
        let outputs: Vec<anyhow::Result<CommandOutput>> = thread::scope(|scope| {
            let handles: Vec<_> = self
                .sides
                .iter()
                .map(|side| {
                    let argv: Vec<String> = row.argv.iter().map(|a| side.expand(a)).collect();
                    scope.spawn(move || {
                        let split =
                            argv.iter().position(|a| a.starts_with('-')).unwrap_or(argv.len());
                        let words: Vec<&str> = argv[..split].iter().map(String::as_str).collect();
                        let args: Vec<&str> = argv[split..].iter().map(String::as_str).collect();
                        side.cli.raw(&words, &args)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("runner thread panicked")))
                })
                .collect()
        });
        let mut outcomes = Vec::with_capacity(2);
        for (side, output) in self.sides.iter_mut().zip(outputs) {
            let output = output.with_context(|| format!("row `{}` on {}", row.name, side.label))?;
            for (var, regex) in &row.captures {
                if let Some(value) = regex.captures(&output.stdout).and_then(|c| c.get(1)) {
                    side.set_var(var, value.as_str());
                }
            }
            let mut stdout = side.normalizer.normalize(&output.stdout);
            if row.order == Order::SortedBlocks {
                stdout = sort_blocks(&stdout);
            }
            outcomes.push(Outcome {
                code: output.status.code(),
                stdout,
                stderr: side.normalizer.normalize(&output.stderr),
            });
        }
        let ward = outcomes.pop().context("ward outcome")?;
        let spire = outcomes.pop().context("spire outcome")?;
        let elapsed = started.elapsed();
        self.results.push(RowResult {
            name: row.name.clone(),
            command: row.command(),
            spire,
            ward,
            elapsed,
        });
        Ok(())
    }

    /// Writes `contents` to `<root>/<relative>` on both sides.
    pub fn write_file(&self, relative: &str, contents: &[u8]) -> anyhow::Result<()> {
        for side in &self.sides {
            let path = side.root.join(relative);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&path, contents)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }

    /// The `n` slowest rows, slowest first, for keeping the script fast.
    pub fn slowest(&self, n: usize) -> Vec<(&str, Duration)> {
        let mut rows: Vec<(&str, Duration)> =
            self.results.iter().map(|r| (r.name.as_str(), r.elapsed)).collect();
        rows.sort_by_key(|row| std::cmp::Reverse(row.1));
        rows.truncate(n);
        rows
    }

    /// The results so far, in script order.
    pub fn results(&self) -> &[RowResult] {
        &self.results
    }

    /// Checks the results against `known`. Every row that differs and is not known is a
    /// failure; so is a known row that the script does not have (a stale or misspelt name).
    /// A known row that now matches is listed as removable; with `strict` it is a failure.
    pub fn verdict(&self, known: &[Known], strict: bool) -> Verdict {
        let (by_name, problems) = known_rows(known);
        let mut verdict = Verdict { problems, ..Verdict::default() };
        for row in by_name.keys() {
            if !self.names.contains(*row) {
                verdict
                    .problems
                    .push(format!("known difference `{row}` names no row of the script"));
            }
        }
        for result in &self.results {
            let known = by_name.get(result.name.as_str());
            match (result.matches(), known) {
                (true, None) => verdict.matching += 1,
                (true, Some(_)) => {
                    verdict.removable.push(result.name.clone());
                    if strict {
                        verdict.problems.push(format!(
                            "row `{}` matches SPIRE now: remove it from the known differences",
                            result.name
                        ));
                    }
                }
                (false, Some(_)) => verdict.known += 1,
                (false, None) => verdict.problems.push(result.describe()),
            }
        }
        verdict
    }

    /// Waits until each side's CLI `healthcheck` passes against its server (failing early if
    /// a server exits).
    ///
    /// # Errors
    /// When a server exits or the deadline passes.
    pub fn wait_healthy(&mut self, timeout: Duration) -> anyhow::Result<()> {
        for side in &mut self.sides {
            let label = side.label;
            poll_until(&format!("{label} server to become healthy"), timeout, || {
                side.server.daemon.ensure_running()?;
                let probe = side.cli.raw(&["healthcheck"], &[])?;
                Ok(if probe.status.success() {
                    Step::Done(())
                } else {
                    Step::Retry(probe.describe())
                })
            })?;
        }
        Ok(())
    }

    /// Ends a suite: writes the log (`WARD_DIFF_LOG=<file>`) and the Markdown report
    /// (`WARD_DIFF_REPORT=<file>`) when asked, prints the slowest rows and a summary, and
    /// panics listing every row that differs and is not in `known` (with
    /// `WARD_DIFF_STRICT=1`, also every known row that matches now). `what` names the two
    /// sides in the failure message.
    ///
    /// # Panics
    /// As described: this is the suite's assertion.
    pub fn assert_known(&self, known: &[Known], what: &str) {
        #[allow(clippy::expect_used)]
        if let Some(path) = std::env::var_os("WARD_DIFF_LOG") {
            std::fs::write(&path, self.log()).expect("writing WARD_DIFF_LOG");
        }
        #[allow(clippy::expect_used)]
        if let Some(path) = std::env::var_os("WARD_DIFF_REPORT") {
            std::fs::write(&path, self.differences_markdown(known))
                .expect("writing WARD_DIFF_REPORT");
        }
        eprintln!("slowest rows: {:?}", self.slowest(8));
        let strict = std::env::var_os("WARD_DIFF_STRICT").is_some_and(|v| v != "0");
        let verdict = self.verdict(known, strict);
        eprintln!(
            "{} rows: {} match, {} differ as known, {} known rows match now{}",
            self.results().len(),
            verdict.matching,
            verdict.known,
            verdict.removable.len(),
            if verdict.removable.is_empty() {
                String::new()
            } else {
                format!(" (remove from KNOWN: {})", verdict.removable.join(", "))
            }
        );
        assert!(
            verdict.problems.is_empty(),
            "{} rows differ between {what} and are not known differences:\n\n{}",
            verdict.problems.len(),
            verdict.problems.join("\n")
        );
    }

    /// Every row with its outcome (or both outcomes where they differ), for reading a run.
    pub fn log(&self) -> String {
        self.results.iter().map(|r| format!("{}\n", r.describe())).collect()
    }

    /// A Markdown list of every row that differs: command, what SPIRE printed, what ward
    /// printed, and the known reason if there is one.
    pub fn differences_markdown(&self, known: &[Known]) -> String {
        let (by_name, _) = known_rows(known);
        let mut out = String::new();
        let differing: Vec<&RowResult> = self.results.iter().filter(|r| !r.matches()).collect();
        let _ = writeln!(
            out,
            "{} of {} rows differ (outputs normalised: ids, times, serials, keys, certificates).\n",
            differing.len(),
            self.results.len()
        );
        for r in differing {
            let status = match by_name.get(r.name.as_str()) {
                Some(Why::Deliberate(why)) => format!("known, deliberate: {why}"),
                Some(Why::Open(why)) => format!("known, open: {why}"),
                None => "NEW (not in the known list)".to_owned(),
            };
            let _ = writeln!(out, "- **{}** ({status})\n  `{}`", r.name, r.command);
            let _ = writeln!(out, "  - SPIRE: {}", one_line(&r.spire));
            let _ = writeln!(out, "  - ward:  {}", one_line(&r.ward));
        }
        out
    }
}

/// The outcome of [`Differential::verdict`].
#[derive(Debug, Default)]
pub struct Verdict {
    /// Rows that match.
    pub matching: usize,
    /// Rows that differ as the known list says.
    pub known: usize,
    /// Known rows that match now.
    pub removable: Vec<String>,
    /// Failures, each readable on its own.
    pub problems: Vec<String>,
}

/// An outcome on one line for the Markdown list.
fn one_line(o: &Outcome) -> String {
    let code = o.code.map_or_else(|| "signal".to_owned(), |c| c.to_string());
    let squash = |s: &str| {
        let s = s.trim().replace('\n', " ⏎ ");
        if s.chars().count() > 400 {
            format!("{}…", s.chars().take(400).collect::<String>())
        } else {
            s
        }
    };
    let mut line = format!("exit {code}");
    if !o.stdout.trim().is_empty() {
        line.push_str(&format!("; stdout `{}`", squash(&o.stdout)));
    }
    if !o.stderr.trim().is_empty() {
        line.push_str(&format!("; stderr `{}`", squash(&o.stderr)));
    }
    line
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}

/// Blank-line separated blocks of `text`, sorted, joined again.
fn sort_blocks(text: &str) -> String {
    let mut blocks: Vec<&str> =
        text.split("\n\n").map(|b| b.trim_matches('\n')).filter(|b| !b.is_empty()).collect();
    blocks.sort_unstable();
    let mut out = blocks.join("\n\n");
    out.push('\n');
    out
}

/// Lines only SPIRE printed (`- `) and lines only ward printed (`+ `), around a common
/// prefix and suffix (enough to read a CLI output difference; not a minimal diff).
fn line_diff(spire: &str, ward: &str) -> String {
    let a: Vec<&str> = spire.lines().collect();
    let b: Vec<&str> = ward.lines().collect();
    let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let suffix =
        a[prefix..].iter().rev().zip(b[prefix..].iter().rev()).take_while(|(x, y)| x == y).count();
    let mut out = String::new();
    for line in &a[..prefix] {
        let _ = writeln!(out, "      {line}");
    }
    for line in &a[prefix..a.len() - suffix] {
        let _ = writeln!(out, "    - {line}");
    }
    for line in &b[prefix..b.len() - suffix] {
        let _ = writeln!(out, "    + {line}");
    }
    for line in &a[a.len() - suffix..] {
        let _ = writeln!(out, "      {line}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_diff_marks_only_the_changed_middle() {
        let d = line_diff("a\nb\nc\n", "a\nx\nc\n");
        assert_eq!(d, "      a\n    - b\n    + x\n      c\n");
    }

    #[test]
    fn sort_blocks_orders_blank_line_separated_blocks() {
        assert_eq!(sort_blocks("b1\nb2\n\na1\n\n"), "a1\n\nb1\nb2\n");
    }

    #[test]
    fn command_quotes_arguments_with_spaces() {
        let row = Row::new("r", &["entry", "show", "-hint", "a b", "-x", ""]);
        assert_eq!(row.command(), r#"spire-server entry show -hint "a b" -x """#);
    }
}
