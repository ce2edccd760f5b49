//! The one error type of workload attestation.

use std::io;
use std::path::PathBuf;

/// Why a workload could not be attested.
///
/// The texts follow SPIRE v1.13.3's `unix` workload attestor and its peer tracker
/// (`pkg/agent/plugin/workloadattestor/unix/unix_posix.go`, `pkg/common/util/hash.go`,
/// `pkg/common/peertracker/tracker_linux.go`), so an operator reading ward's logs sees the
/// messages SPIRE's documentation and issues talk about. The Workload API answers the first
/// group (process facts) as SPIRE does with `Internal`, and the caller-changed group with
/// `Unauthenticated` ("could not verify existence of the original caller: ...").
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    /// The peer credentials carried no process id (pid 0).
    #[error("could not resolve caller information")]
    NoCallerPid,
    /// `/proc/<pid>` does not exist: the process exited (or was never there).
    #[error("failed to get process: process {pid} does not exist")]
    ProcessNotFound {
        /// The process id asked for.
        pid: u32,
    },
    /// `/proc/<pid>/status` could not be read or has no usable `Uid:` line.
    #[error("UIDs lookup: {reason}")]
    Uids {
        /// What went wrong.
        reason: String,
    },
    /// `/proc/<pid>/status` has no usable `Gid:` line.
    #[error("GIDs lookup: {reason}")]
    Gids {
        /// What went wrong.
        reason: String,
    },
    /// `/proc/<pid>/status` has a `Groups:` line that is not a list of numbers.
    #[error("supplementary GIDs lookup: {reason}")]
    SupplementaryGids {
        /// What went wrong.
        reason: String,
    },
    /// `readlink /proc/<pid>/exe` failed for a reason other than a missing capability (the
    /// process exited, or it is a kernel thread without an executable).
    #[error("path lookup: readlink {path}: {source}", path = path.display())]
    Path {
        /// The link that was read.
        path: PathBuf,
        /// The error of `readlink`.
        source: io::Error,
    },
    /// Reading `/proc/<pid>/exe` was refused: the agent runs as another user than the
    /// workload and lacks `CAP_SYS_PTRACE` (or the workload is not dumpable).
    #[error(
        "path lookup: readlink {path}: permission denied (reading another user's process \
         executable needs CAP_SYS_PTRACE or the agent running as the workload's uid)",
        path = path.display()
    )]
    PathPermissionDenied {
        /// The link that was read.
        path: PathBuf,
    },
    /// The executable could not be opened or read for hashing.
    #[error("SHA256 digest: {path}: {source}", path = path.display())]
    Digest {
        /// The path opened (`/proc/<pid>/exe`).
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The executable is larger than `workload_size_limit`; SPIRE refuses the attestation.
    #[error("SHA256 digest: workload {path} exceeds size limit ({size} > {limit})", path = path.display())]
    SizeLimit {
        /// The path opened (`/proc/<pid>/exe`).
        path: PathBuf,
        /// The executable's size in bytes.
        size: u64,
        /// The configured limit in bytes.
        limit: u64,
    },
    /// The caller's `/proc/<pid>/stat` could not be read or parsed while checking that it is
    /// still the same process: it exited during attestation.
    #[error("caller exit suspected due to failure to get starttime: {reason}")]
    CallerExited {
        /// What went wrong.
        reason: String,
    },
    /// The directory handle opened on `/proc/<pid>` before attestation can no longer be read:
    /// the process exited during attestation.
    #[error("caller exit suspected due to failed readdirent: {source}")]
    CallerDirGone {
        /// The error of reading the directory.
        source: io::Error,
    },
    /// The process now at the caller's pid started at another time: the caller exited and
    /// its pid was reused while it was attested, so the selectors describe someone else.
    #[error(
        "new process detected: process starttime {found} does not match original caller {expected}"
    )]
    StartTimeChanged {
        /// Start time (clock ticks after boot) recorded before attestation.
        expected: u64,
        /// Start time found after attestation.
        found: u64,
    },
    /// The owner of `/proc/<pid>` is not the uid the peer credentials reported.
    #[error("new process detected: process uid {found} does not match original caller {expected}")]
    UidChanged {
        /// The uid from the peer credentials.
        expected: u32,
        /// The owner of `/proc/<pid>` now.
        found: u32,
    },
    /// The group of `/proc/<pid>` is not the gid the peer credentials reported.
    #[error("new process detected: process gid {found} does not match original caller {expected}")]
    GidChanged {
        /// The gid from the peer credentials.
        expected: u32,
        /// The group of `/proc/<pid>` now.
        found: u32,
    },
    /// No connection to the D-Bus bus of the service manager (`systemd` attestor).
    #[error("failed to open dbus connection: {reason}")]
    DbusConnect {
        /// The D-Bus error.
        reason: String,
    },
    /// The service manager named no unit for the pid: the process does not exist, or it is
    /// not in a unit of this manager (`systemd` attestor).
    #[error("failed to get unit by pid {pid}: {reason}")]
    UnitByPid {
        /// The process id asked for.
        pid: u32,
        /// The D-Bus error, e.g. `org.freedesktop.systemd1.NoSuchProcess: ...`.
        reason: String,
    },
    /// A unit property could not be read (`systemd` attestor).
    #[error("error getting value for {name}: {reason}")]
    UnitProperty {
        /// The property, `Id` or `FragmentPath`.
        name: &'static str,
        /// The D-Bus error.
        reason: String,
    },
    /// A unit property was not a string (`systemd` attestor; SPIRE's text, capital and all).
    #[error("Returned value for {name} was not a string: {value}")]
    UnitPropertyNotString {
        /// The property, `Id` or `FragmentPath`.
        name: &'static str,
        /// The value received, as D-Bus shows it.
        value: String,
    },
    /// The `k8s` attestor failed (its own texts, from SPIRE's `k8s` plugin).
    #[error(transparent)]
    K8s(#[from] crate::k8s::K8sError),
    /// A selector could not be formed (an empty value read from the system).
    #[error("invalid selector: {0}")]
    Selector(#[from] ward_core::SelectorError),
}

impl AttestError {
    /// Whether the error says the caller is no longer the process that connected, which the
    /// Workload API answers with `Unauthenticated` rather than `Internal`.
    pub fn is_caller_changed(&self) -> bool {
        matches!(
            self,
            Self::CallerExited { .. }
                | Self::CallerDirGone { .. }
                | Self::StartTimeChanged { .. }
                | Self::UidChanged { .. }
                | Self::GidChanged { .. }
        )
    }
}
