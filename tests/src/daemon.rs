//! A long-running child process that lives exactly as long as its guard.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};

use crate::command::command_line;

/// How many trailing log lines are printed when a test fails.
const LOG_TAIL_LINES: usize = 300;

/// A running server or agent. Its stdout and stderr go to one log file; dropping the guard
/// kills the process and waits for it, and if the thread is panicking (a failed test) the
/// tail of the log is printed to stderr so the failure can be diagnosed.
#[derive(Debug)]
pub struct Daemon {
    name: String,
    command: String,
    child: Child,
    log: PathBuf,
}

impl Daemon {
    /// Starts `cmd` with stdin closed and its output appended to `log`.
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> anyhow::Result<Self> {
        let command = command_line(cmd);
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name}: `{command}`"))?;
        Ok(Self { name: name.to_owned(), command, child, log: log.to_owned() })
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
        Self::spawn(name, &mut program, &dir.join(format!("{name}.log")))
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

    #[test]
    fn drop_kills_the_process() {
        let dir = tempfile::tempdir().unwrap();
        let mut daemon =
            Daemon::spawn("sleeper", Command::new("sleep").arg("600"), &dir.path().join("log"))
                .unwrap();
        daemon.ensure_running().unwrap();
        let proc_dir = PathBuf::from(format!("/proc/{}", daemon.id()));
        assert!(proc_dir.exists());
        drop(daemon);
        assert!(!proc_dir.exists(), "process still exists after drop");
    }

    #[test]
    fn reports_an_exited_daemon_with_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut daemon = Daemon::spawn(
            "quitter",
            Command::new("sh").args(["-c", "echo going away; exit 7"]),
            &dir.path().join("log"),
        )
        .unwrap();
        let err =
            crate::wait::poll_until("quitter to exit", std::time::Duration::from_secs(10), || {
                match daemon.ensure_running() {
                    Ok(()) => Ok(crate::wait::Step::Retry("still running".into())),
                    Err(e) => Ok(crate::wait::Step::Done(e)),
                }
            })
            .unwrap();
        let msg = err.to_string();
        assert!(msg.contains("quitter exited with exit status: 7"), "{msg}");
        assert!(msg.contains("going away"), "{msg}");
    }
}
