//! The `k8s` workload attestor: the pod and container a process runs in, as the kubelet
//! reports them.
//!
//! It works as SPIRE v1.13.3's `k8s` plugin (`pkg/agent/plugin/workloadattestor/k8s/`):
//! 1. the pod UID and container ID come from the process's `/proc/<pid>/cgroup`
//!    ([`CgroupLocator`]; never from `mountinfo`, which a process that can mount may write
//!    itself); a process whose cgroups name no container is not in a pod and gets no `k8s`
//!    selectors;
//! 2. the kubelet's `/pods` list is fetched (read-only port over HTTP, or the secure port
//!    over HTTPS with the service account token, a client certificate or no credentials) and
//!    cached for half of `poll_retry_interval`, one fetch at a time;
//! 3. the pod holding the container (only the pod named by the cgroups when they name one)
//!    gives the selectors; when no pod holds it yet (the kubelet has not reported a just
//!    started container), the list is fetched again every `poll_retry_interval`, up to
//!    `max_poll_attempts` times, and then the attestation fails with SPIRE's
//!    "no selectors found after max poll attempts".
//!
//! Selectors, all of type `k8s`, in this order:
//!
//! | value | from |
//! |---|---|
//! | `sa:<name>` | `spec.serviceAccountName` |
//! | `ns:<namespace>` | `metadata.namespace` |
//! | `node-name:<node>` | `spec.nodeName` |
//! | `pod-uid:<uid>` | `metadata.uid` |
//! | `pod-name:<name>` | `metadata.name` |
//! | `pod-image-count:<n>` | number of `status.containerStatuses` |
//! | `pod-init-image-count:<n>` | number of `status.initContainerStatuses` |
//! | `pod-image:<image>` | `image` and `imageID` of every container status (sorted, once each) |
//! | `pod-init-image:<image>` | the same for the init containers |
//! | `pod-label:<key>:<value>` | every label, by key |
//! | `pod-owner:<kind>:<name>`, `pod-owner-uid:<kind>:<uid>` | every owner reference |
//! | `container-name:<name>` | the workload's container status (unless `disable_container_selectors`) |
//! | `container-image:<image>` | its `image` and `imageID` (unless `disable_container_selectors`) |
//!
//! What the agent needs: reading `/proc/<pid>/cgroup` of another user's process needs no
//! capability (the file is world-readable), and the kubelet is reached over the network
//! (`127.0.0.1` needs the agent in the host network namespace). The kubelet authorizes the
//! token's service account for `nodes/proxy` (get) on the secure port.

mod cgroup;
mod config;
mod error;
mod kubelet;
mod pod;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use tracing::{debug, warn};
use ward_core::Selector;

pub use cgroup::{CgroupLocator, PodContainer};
pub use config::{
    DEFAULT_KUBELET_CA_PATH, DEFAULT_MAX_POLL_ATTEMPTS, DEFAULT_NODE_NAME_ENV,
    DEFAULT_POLL_RETRY_INTERVAL, DEFAULT_RELOAD_INTERVAL, DEFAULT_SECURE_PORT, DEFAULT_TOKEN_PATH,
    Experimental, IgnoredSection, K8sConfig, K8sSettings, KubeletAuth, KubeletSettings,
    KubeletVerification, SecureKubelet,
};
pub use error::K8sError;
pub use pod::PodIndex;

use crate::{AttestError, ProcFs, WorkloadAttestor};
use kubelet::KubeletClient;

/// The selector type and plugin name.
pub const K8S: &str = "k8s";

/// The pod list fetched last and until when it may be used.
struct CachedPods {
    valid_until: Instant,
    pods: Arc<PodIndex>,
}

/// The `k8s` workload attestor.
#[derive(Debug)]
pub struct K8sAttestor {
    settings: K8sSettings,
    procfs: ProcFs,
    kubelet: KubeletClient,
    /// The cached pod list. Held while the list is fetched, so concurrent attestations wait
    /// for one fetch instead of each asking the kubelet.
    cache: Mutex<Option<CachedPods>>,
}

impl std::fmt::Debug for CachedPods {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedPods").field("pods", &self.pods.len()).finish_non_exhaustive()
    }
}

impl K8sAttestor {
    /// An attestor with `settings`, reading processes from `procfs`. The token and TLS files
    /// are read now (and again every `reload_interval`).
    ///
    /// # Errors
    /// [`K8sError::LoadCa`], [`K8sError::ParseCa`], [`K8sError::LoadToken`],
    /// [`K8sError::LoadCertificate`], [`K8sError::LoadPrivateKey`],
    /// [`K8sError::LoadKeypair`] for unusable files; [`K8sError::Runtime`].
    pub fn new(settings: K8sSettings, procfs: ProcFs) -> Result<Self, K8sError> {
        let kubelet = KubeletClient::new(settings.kubelet.clone())?;
        Ok(Self { settings, procfs, kubelet, cache: Mutex::new(None) })
    }

    /// The settings in use.
    pub fn settings(&self) -> &K8sSettings {
        &self.settings
    }

    /// The URL of the kubelet's pod list this attestor asks.
    pub fn kubelet_url(&self) -> String {
        self.kubelet.url()
    }

    /// The pod and container of `pid` from its cgroups, `None` for a process in no
    /// container (or one that no longer exists).
    ///
    /// # Errors
    /// [`K8sError::Cgroups`] when the file cannot be read or parsed; the conflict errors of
    /// [`CgroupLocator::locate`].
    pub fn pod_container(&self, pid: u32) -> Result<Option<PodContainer>, K8sError> {
        let path = self.procfs.path(pid, "cgroup");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(K8sError::Cgroups { reason: format!("{}: {e}", path.display()) });
            }
        };
        if self.settings.verbose_container_locator_logs {
            for (i, line) in text.lines().enumerate() {
                debug!(pid, index = i + 1, cgroup = line, "PID cgroup enumerated");
            }
        }
        self.settings.locator.locate(&text)
    }

    /// The pod list, from the cache while it is fresh.
    fn pods(&self) -> Result<Arc<PodIndex>, K8sError> {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(cached) = cache.as_ref()
            && Instant::now() < cached.valid_until
        {
            return Ok(Arc::clone(&cached.pods));
        }
        let body = self.kubelet.pods()?;
        let pods = Arc::new(PodIndex::parse(&body)?);
        *cache = Some(CachedPods {
            valid_until: Instant::now() + self.settings.poll_retry_interval / 2,
            pods: Arc::clone(&pods),
        });
        Ok(pods)
    }

    /// The selector values of `pid`, with the kubelet polled until its container shows up.
    fn selector_values(&self, pid: u32) -> Result<Vec<String>, K8sError> {
        let Some(found) = self.pod_container(pid)? else {
            return Ok(Vec::new());
        };
        let pod_uid = found.pod_uid.as_deref();
        let container_id = found.container_id.as_str();
        for attempt in 1.. {
            let pods = self.pods()?;
            let values = pods.selector_values(
                pod_uid,
                container_id,
                self.settings.disable_container_selectors,
            )?;
            if let Some(values) = values {
                return Ok(values);
            }
            if attempt >= self.settings.max_poll_attempts {
                warn!(pod_uid, container_id, attempt, "container id not found; giving up");
                break;
            }
            debug!(
                pod_uid,
                container_id,
                attempt,
                retry_interval = ?self.settings.poll_retry_interval,
                "container id not found"
            );
            std::thread::sleep(self.settings.poll_retry_interval);
        }
        Err(K8sError::NotFound)
    }
}

impl WorkloadAttestor for K8sAttestor {
    fn name(&self) -> &'static str {
        K8S
    }

    /// # Errors
    /// [`AttestError::K8s`] with the [`K8sError`] of the cgroups, the kubelet request or the
    /// pod lookup, [`K8sError::NotFound`] once `max_poll_attempts` lists lacked the container.
    fn attest(&self, pid: u32) -> Result<Vec<Selector>, AttestError> {
        let values = self.selector_values(pid)?;
        values.iter().map(|v| Ok(Selector::new(K8S, v)?)).collect()
    }
}
