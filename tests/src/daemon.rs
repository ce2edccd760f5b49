//! A long-running child process that lives exactly as long as its guard.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::command::{command_line, run};

/// How many trailing log lines are printed when a test fails.
const LOG_TAIL_LINES: usize = 300;

/// How often a stopping process is checked for exit.
const STOP_POLL: Duration = Duration::from_millis(50);

/// A running server or agent. Its stdout and stderr go to one log file; dropping the guard
/// kills the process and waits for it, and if the thread is panicking (a failed test) the
/// tail of the log is printed to stderr so the failure can be diagnosed.
#[derive(Debug)]
pub struct Daemon {
    name: String,
    cmd: Command,
    command: String,
    child: Child,
    log: PathBuf,
}

impl Daemon {
    /// Starts `cmd` with stdin closed and its output appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> anyhow::Result<Self> {
        let command = command_line(&cmd);
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd.spawn().with_context(|| format!("starting {name}: `{command}`"))?;
        Ok(Self { name: name.to_owned(), cmd, command, child, log: log.to_owned() })
    }

    /// Sends SIGTERM and waits up to `timeout` for the process to exit; if it does not, kills
    /// it and fails (a server must stop cleanly when asked).
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} had already exited with {status} before SIGTERM", self.name);
        }
        let pid = self.child.id().to_string();
        run(Command::new("kill").args(["-TERM", &pid]), timeout)?.success()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                // Best effort: it may exit between the check and the kill.
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("{} did not exit within {timeout:?} of SIGTERM", self.name);
            }
            thread::sleep(STOP_POLL);
        }
    }

    /// [`Daemon::terminate`], then starts the same command again (same log file, appended).
    pub fn restart(&mut self, stop_timeout: Duration) -> anyhow::Result<()> {
        self.terminate(stop_timeout)?;
        self.child = self
            .cmd
            .spawn()
            .with_context(|| format!("restarting {}: `{}`", self.name, self.command))?;
        Ok(())
    }

    /// Writes `config` to `dir/<config_file>` (creating `dir`) and starts
    /// `<program> run <config_flag> <that file> <extra…>`, logging to `dir/<name>.log`.
    /// `program` is a command with no arguments yet (it may carry environment variables).
    pub fn run_with_config(
        name: &str,
        mut program: Command,
        dir: &Path,
        config_flag: &str,
        config_file: &str,
        config: &str,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let config_path = dir.join(config_file);
        std::fs::write(&config_path, config)
            .with_context(|| format!("writing {}", config_path.display()))?;
        program.arg("run").arg(config_flag).arg(&config_path).args(extra);
        Self::spawn(name, program, &dir.join(format!("{name}.log")))
    }

    /// The name given at spawn time.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the process has exited (a daemon exiting during a test is always a failure).
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited with {status}: `{}`\n--- last log lines ---\n{}",
                self.name,
                self.command,
                self.log_tail()
            );
        }
        Ok(())
    }

    /// Everything the process has logged so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last lines of the log.
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let start = lines.len().saturating_sub(LOG_TAIL_LINES);
        lines[start..].join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Best effort: the process may already be gone.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "===== {} (pid {}) log: {} =====\n{}\n===== end of {} log =====",
                self.name,
                self.child.id(),
                self.log.display(),
                self.log_tail(),
                self.name
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wait::{Step, poll_until};

    /// Starts `sh -c <script>` as a daemon logging into a fresh temp dir.
    fn shell(name: &str, script: &str) -> (tempfile::TempDir, Daemon) {
        let dir = tempfile::tempdir().unwrap();
        let mut sh = Command::new("sh");
        sh.args(["-c", script]);
        let daemon = Daemon::spawn(name, sh, &dir.path().join("log")).unwrap();
        (dir, daemon)
    }

    /// Waits until `needle` occurs `times` times in the daemon's log.
    fn wait_for_log(daemon: &Daemon, needle: &str, times: usize) {
        poll_until(&format!("{times} x {needle:?} in the log"), Duration::from_secs(10), || {
            let log = daemon.log();
            Ok(if log.matches(needle).count() >= times { Step::Done(()) } else { Step::Retry(log) })
        })
        .unwrap();
    }

    #[test]
    fn drop_kills_the_process() {
        let (_dir, mut daemon) = shell("sleeper", "exec sleep 600");
        daemon.ensure_running().unwrap();
        let proc_dir = PathBuf::from(format!("/proc/{}", daemon.id()));
        assert!(proc_dir.exists());
        drop(daemon);
        assert!(!proc_dir.exists(), "process still exists after drop");
    }

    #[test]
    fn reports_an_exited_daemon_with_its_log() {
        let (_dir, mut daemon) = shell("quitter", "echo going away; exit 7");
        let err = poll_until("quitter to exit", Duration::from_secs(10), || {
            match daemon.ensure_running() {
                Ok(()) => Ok(Step::Retry("still running".into())),
                Err(e) => Ok(Step::Done(e)),
            }
        })
        .unwrap();
        let msg = err.to_string();
        assert!(msg.contains("quitter exited with exit status: 7"), "{msg}");
        assert!(msg.contains("going away"), "{msg}");
    }

    #[test]
    fn restart_stops_with_sigterm_and_starts_again_appending_to_the_log() {
        // `exec` so SIGTERM reaches sleep; the shell prints first.
        let (_dir, mut daemon) = shell("restarter", "echo started; exec sleep 600");
        let first = daemon.id();
        wait_for_log(&daemon, "started", 1);
        daemon.restart(Duration::from_secs(10)).unwrap();
        assert_ne!(daemon.id(), first);
        assert!(!PathBuf::from(format!("/proc/{first}")).exists(), "first process survived");
        daemon.ensure_running().unwrap();
        wait_for_log(&daemon, "started", 2);
    }

    #[test]
    fn terminate_reports_a_process_that_ignores_sigterm() {
        let (_dir, mut daemon) =
            shell("stubborn", "trap '' TERM; echo ready; while :; do sleep 1; done");
        wait_for_log(&daemon, "ready", 1);
        let err = daemon.terminate(Duration::from_millis(300)).unwrap_err();
        assert_eq!(err.to_string(), "stubborn did not exit within 300ms of SIGTERM");
    }
}
