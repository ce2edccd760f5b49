//! The guard that proves the process attested is still the process that connected.

use std::fs::File;
use std::os::unix::fs::MetadataExt;

use rustix::fs::Dir;
use tracing::warn;
use ward_core::Selector;

use crate::{AttestError, ProcFs, WorkloadAttestor};

/// The caller of the Workload API as the kernel reported it (`SO_PEERCRED` on the Unix
/// socket, e.g. tokio's `UnixStream::peer_cred`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// The process id at connect time.
    pub pid: u32,
    /// The effective uid at connect time.
    pub uid: u32,
    /// The effective gid at connect time.
    pub gid: u32,
}

/// A record of the caller taken before attestation: a handle on its `/proc/<pid>` directory
/// and its start time.
///
/// A pid names a process only while that process lives; once it exits the kernel may hand
/// the pid to a new process. Attestation reads `/proc/<pid>` several times, so a caller that
/// exits and whose pid is reused in between would be attested as the newcomer. SPIRE's agent
/// guards against this in its peer tracker; ward does the same checks in the same order:
/// 1. the directory handle opened before attestation can still be read (it fails once the
///    process it was opened on is gone, even if the pid was reused);
/// 2. the start time in `/proc/<pid>/stat` is the one recorded before;
/// 3. the owner and group of `/proc/<pid>` are the uid and gid of the peer credentials.
#[derive(Debug)]
pub struct CallerWatch {
    caller: Caller,
    procfs: ProcFs,
    dir: File,
    start_time: u64,
}

impl CallerWatch {
    /// Opens `/proc/<pid>` and records the start time, before any attestor runs.
    ///
    /// # Errors
    /// [`AttestError::NoCallerPid`] for pid 0, [`AttestError::ProcessNotFound`] when the
    /// process already exited, [`AttestError::CallerExited`] when its stat is unreadable.
    pub fn open(procfs: &ProcFs, caller: Caller) -> Result<Self, AttestError> {
        if caller.pid == 0 {
            return Err(AttestError::NoCallerPid);
        }
        let dir = File::open(procfs.pid_dir(caller.pid))
            .map_err(|_| AttestError::ProcessNotFound { pid: caller.pid })?;
        let start_time = procfs.start_time(caller.pid)?;
        Ok(Self { caller, procfs: procfs.clone(), dir, start_time })
    }

    /// The caller being watched.
    pub fn caller(&self) -> Caller {
        self.caller
    }

    /// The start time recorded when the watch was opened.
    pub fn start_time(&self) -> u64 {
        self.start_time
    }

    /// Checks that the process at the caller's pid is still the one the watch was opened on.
    ///
    /// # Errors
    /// [`AttestError::CallerDirGone`], [`AttestError::CallerExited`],
    /// [`AttestError::StartTimeChanged`], [`AttestError::UidChanged`] or
    /// [`AttestError::GidChanged`]: each means the selectors just gathered may describe
    /// another process and must be thrown away.
    pub fn check(&self) -> Result<(), AttestError> {
        let pid = self.caller.pid;
        let mut entries = Dir::read_from(&self.dir)
            .map_err(|e| AttestError::CallerDirGone { source: e.into() })?;
        if let Some(Err(e)) = entries.read() {
            return Err(AttestError::CallerDirGone { source: e.into() });
        }
        let found = self.procfs.start_time(pid)?;
        if found != self.start_time {
            return Err(AttestError::StartTimeChanged { expected: self.start_time, found });
        }
        let meta = std::fs::metadata(self.procfs.pid_dir(pid)).map_err(|e| {
            AttestError::CallerExited { reason: format!("caller proc stat failed: {e}") }
        })?;
        if meta.uid() != self.caller.uid {
            return Err(AttestError::UidChanged { expected: self.caller.uid, found: meta.uid() });
        }
        if meta.gid() != self.caller.gid {
            return Err(AttestError::GidChanged { expected: self.caller.gid, found: meta.gid() });
        }
        Ok(())
    }
}

/// Attests `caller` with every attestor in turn, then checks that the caller is still the
/// process that connected, and returns the selectors of all attestors in attestor order.
///
/// # Errors
/// The first attestor error, or the [`CallerWatch::check`] error when the caller exited or
/// its pid was reused while it was attested (logged at `warn` with the pid here).
pub fn attest_caller(
    procfs: &ProcFs,
    caller: Caller,
    attestors: &[&dyn WorkloadAttestor],
) -> Result<Vec<Selector>, AttestError> {
    let watch = CallerWatch::open(procfs, caller)?;
    let mut selectors = Vec::new();
    for attestor in attestors {
        selectors.extend(attestor.attest(caller.pid)?);
    }
    if let Err(e) = watch.check() {
        warn!(pid = caller.pid, error = %e, "caller changed while it was attested");
        return Err(e);
    }
    Ok(selectors)
}
