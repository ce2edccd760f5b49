//! Running a short-lived command to completion with a deadline.

use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How often a running command is checked for exit.
const POLL: Duration = Duration::from_millis(20);

/// What a finished command printed and how it exited.
#[derive(Debug)]
pub struct CommandOutput {
    /// The command line, for messages.
    pub command: String,
    /// Exit status.
    pub status: ExitStatus,
    /// Everything written to stdout (lossy UTF-8).
    pub stdout: String,
    /// Everything written to stderr (lossy UTF-8).
    pub stderr: String,
}

impl CommandOutput {
    /// Returns `self` if the command exited with status 0, else an error carrying its output.
    pub fn success(self) -> anyhow::Result<Self> {
        if self.status.success() { Ok(self) } else { bail!("{}", self.describe()) }
    }

    /// A multi-line description: command, status, stdout, stderr.
    pub fn describe(&self) -> String {
        format!(
            "`{}` exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command,
            self.status,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

/// A command that runs `program` behind `launcher`: the launcher's words first (e.g.
/// `ip netns exec <ns>`), then `program`; just `program` when `launcher` is empty.
pub fn behind(launcher: &[String], program: &std::path::Path) -> Command {
    match launcher.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// Renders a command line for messages.
pub fn command_line(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// Runs `cmd` with stdin closed, capturing its output. If it has not exited after `timeout`
/// it is killed and an error is returned. A non-zero exit is *not* an error here (see
/// [`CommandOutput::success`]).
pub fn run(cmd: &mut Command, timeout: Duration) -> anyhow::Result<CommandOutput> {
    let command = command_line(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting `{command}`"))?;
    let stdout = child.stdout.take().map(drain);
    let stderr = child.stderr.take().map(drain);
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            // Best effort: the process may exit on its own between the check and the kill.
            let _ = child.kill();
            let _ = child.wait();
            bail!("`{command}` did not finish within {timeout:?}");
        }
        thread::sleep(POLL);
    };
    let collect = |reader: Option<thread::JoinHandle<Vec<u8>>>| {
        reader
            .and_then(|handle| handle.join().ok())
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    };
    Ok(CommandOutput { command, status, stdout: collect(stdout), stderr: collect(stderr) })
}

/// Reads a pipe to its end on a separate thread, so a chatty child never blocks on a full pipe.
fn drain<R: Read + Send + 'static>(mut pipe: R) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        // A read error only truncates what we show; the exit status still tells the outcome.
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}

/// A program an interop `build.sh` builds: the path in the variable `env` when it is set, else
/// what `tests/<script>` prints after building it (or finding it in its cache).
///
/// # Errors
/// When the script fails, takes longer than `timeout`, or prints no path.
pub fn interop_tool(
    env: &str,
    script: &str,
    timeout: Duration,
) -> anyhow::Result<std::path::PathBuf> {
    if let Some(bin) = std::env::var_os(env) {
        return Ok(bin.into());
    }
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(script);
    let out = run(&mut Command::new(&path), timeout)?
        .success()
        .with_context(|| format!("building with tests/{script}"))?;
    let bin = out.stdout.trim();
    if bin.is_empty() {
        bail!("tests/{script} printed no path\n{}", out.describe());
    }
    Ok(bin.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_output_and_status() {
        let out = run(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(out.stdout, "out\n");
        assert_eq!(out.stderr, "err\n");
        assert_eq!(out.status.code(), Some(3));
        let err = out.success().unwrap_err().to_string();
        assert!(err.contains("exited with exit status: 3"), "{err}");
    }

    #[test]
    fn kills_a_command_that_overruns_its_deadline() {
        let err = run(Command::new("sleep").arg("30"), Duration::from_millis(200)).unwrap_err();
        assert!(err.to_string().contains("did not finish within 200ms"), "{err}");
    }
}
