//! The trait every workload attestor implements.

use ward_core::Selector;

use crate::AttestError;

/// Finds the selectors of the process with a given pid, as one of SPIRE's `WorkloadAttestor`
/// plugins does.
///
/// Implementations read the process's state from the operating system (proc files, D-Bus, a
/// kubelet); they may block on file I/O, so an async caller runs them on a blocking thread.
/// Each returns selectors whose type is its [`name`](Self::name), with values formed exactly
/// as the SPIRE plugin of that name forms them, so registration entries written for SPIRE
/// match the same workloads under ward.
///
/// An attestor does not check that the pid still names the process that connected: the
/// caller does that around all attestors with [`crate::CallerWatch`] (see
/// [`crate::attest_caller`]).
pub trait WorkloadAttestor: Send + Sync {
    /// The plugin name, which is also the selector type (`unix`, `k8s`, `systemd`).
    fn name(&self) -> &'static str;

    /// The selectors of process `pid`.
    ///
    /// # Errors
    /// An [`AttestError`] when a fact the attestor must report cannot be read; a missing
    /// optional fact (a uid without a user name) is left out instead.
    fn attest(&self, pid: u32) -> Result<Vec<Selector>, AttestError>;
}
