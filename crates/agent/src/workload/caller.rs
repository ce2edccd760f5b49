//! Who is calling: the connection's peer credentials and the selectors of that process.

use std::sync::Arc;

use tonic::{Request, Status};
use tracing::{error, warn};
use ward_attest::{Caller, CallerWatch, ProcFs, WorkloadAttestor};
use ward_core::SelectorSet;

/// The caller of one connection, recorded when the connection was accepted; tonic hands it
/// to every request on that connection as a request extension.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    watch: Arc<CallerWatch>,
}

impl PeerInfo {
    /// Records `caller` (from `SO_PEERCRED`) by opening its `/proc/<pid>` in `procfs`.
    ///
    /// # Errors
    /// The [`ward_attest::AttestError`] of [`CallerWatch::open`]: pid 0, or a process that
    /// already exited.
    pub fn open(procfs: &ProcFs, caller: Caller) -> Result<Self, ward_attest::AttestError> {
        Ok(Self { watch: Arc::new(CallerWatch::open(procfs, caller)?) })
    }

    /// The caller as the kernel reported it at connect time.
    pub fn caller(&self) -> Caller {
        self.watch.caller()
    }
}

/// Finds a request's selectors with the configured workload attestors.
///
/// Each call is attested afresh (a process may change user or executable between calls on
/// one connection). As in SPIRE, an attestor that fails is logged and left out, and the
/// selectors are thrown away when the process at the caller's pid is no longer the one that
/// connected. Cheap to clone.
#[derive(Clone)]
pub struct CallerAttestor {
    attestors: Arc<[Box<dyn WorkloadAttestor>]>,
}

impl std::fmt::Debug for CallerAttestor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.attestors.iter().map(|a| a.name()).collect();
        f.debug_struct("CallerAttestor").field("attestors", &names).finish()
    }
}

impl CallerAttestor {
    /// An attestor running `attestors` in order.
    pub fn new(attestors: Vec<Box<dyn WorkloadAttestor>>) -> Self {
        Self { attestors: attestors.into() }
    }

    /// The selectors of the process that sent `request`.
    ///
    /// # Errors
    /// `Internal` when the request did not come through a [`super::WorkloadListener`]
    /// connection; `Unauthenticated` "could not verify existence of the original caller: …"
    /// when the caller exited or its pid was reused while it was attested (SPIRE's code and
    /// text).
    pub async fn attest<T>(&self, request: &Request<T>) -> Result<SelectorSet, Status> {
        let peer =
            request.extensions().get::<PeerInfo>().cloned().ok_or_else(|| {
                Status::internal("caller credentials missing from the connection")
            })?;
        let attestors = Arc::clone(&self.attestors);
        // Attestors read proc files, the user database and D-Bus: blocking work.
        tokio::task::spawn_blocking(move || attest_blocking(&peer, &attestors))
            .await
            .map_err(|e| Status::internal(format!("workload attestation stopped: {e}")))?
    }
}

fn attest_blocking(
    peer: &PeerInfo,
    attestors: &[Box<dyn WorkloadAttestor>],
) -> Result<SelectorSet, Status> {
    let pid = peer.caller().pid;
    let mut selectors = Vec::new();
    for attestor in attestors {
        match attestor.attest(pid) {
            Ok(found) => selectors.extend(found),
            Err(e) => error!(
                pid,
                attestor = attestor.name(),
                error = %e,
                "workload attestor failed; its selectors are left out"
            ),
        }
    }
    if let Err(e) = peer.watch.check() {
        warn!(pid, error = %e, "caller changed while it was attested");
        return Err(Status::unauthenticated(format!(
            "could not verify existence of the original caller: {e}"
        )));
    }
    Ok(SelectorSet::new(selectors))
}
