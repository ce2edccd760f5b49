//! Why the `k8s` attestor could not be configured or could not attest a workload.

use std::io;
use std::path::PathBuf;

/// An error of the `k8s` workload attestor.
///
/// The texts are those of SPIRE v1.13.3's `k8s` plugin
/// (`pkg/agent/plugin/workloadattestor/k8s/k8s.go`, `k8s_posix.go` and
/// `pkg/common/containerinfo/extract.go`), so an operator reading ward's logs sees the
/// messages SPIRE's documentation and issues talk about. SPIRE answers the configuration
/// group with `InvalidArgument`, [`Self::NotFound`] with `DeadlineExceeded`, the cgroup
/// conflicts with `FailedPrecondition` and the rest with `Internal`.
#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    /// The plugin data could not be read or decoded.
    #[error("unable to decode configuration: {reason}")]
    Decode {
        /// What is wrong, with the file or key it is in.
        reason: String,
    },
    /// Both `kubelet_read_only_port` and `kubelet_secure_port` are set.
    #[error("cannot use both the read-only and secure port")]
    BothPorts,
    /// A duration key (`poll_retry_interval`, `reload_interval`) is not a Go duration.
    #[error("unable to parse {what}: {reason}")]
    Duration {
        /// `poll retry interval` or `reload interval`, as SPIRE words it.
        what: &'static str,
        /// Why the text is not a duration.
        reason: String,
    },
    /// A port key is outside 1–65535.
    #[error("{key}: {value} is not a port")]
    Port {
        /// The configuration key.
        key: &'static str,
        /// The value configured.
        value: i64,
    },
    /// A key or section SPIRE has and ward does not support.
    #[error("{key}: {reason}")]
    Unsupported {
        /// The configuration key.
        key: &'static str,
        /// One sentence saying what ward does instead.
        reason: &'static str,
    },
    /// The kubelet CA file (`kubelet_ca_path`) could not be read.
    #[error("unable to load kubelet CA: open {path}: {source}", path = path.display())]
    LoadCa {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The kubelet CA file holds no usable PEM certificate.
    #[error("unable to parse kubelet CA: {reason}")]
    ParseCa {
        /// What is wrong with the file.
        reason: String,
    },
    /// The bearer token file (`token_path`) could not be read.
    #[error("unable to load token: open {path}: {source}", path = path.display())]
    LoadToken {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// `certificate_path` is set without `private_key_path`.
    #[error("the private key path is required with the certificate path")]
    KeyPathMissing,
    /// `private_key_path` is set without `certificate_path`.
    #[error("the certificate path is required with the private key path")]
    CertificatePathMissing,
    /// The client certificate file could not be read.
    #[error("unable to load certificate: open {path}: {source}", path = path.display())]
    LoadCertificate {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The client private key file could not be read.
    #[error("unable to load private key: open {path}: {source}", path = path.display())]
    LoadPrivateKey {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The client certificate and key do not make a usable key pair.
    #[error("unable to load keypair: {reason}")]
    LoadKeypair {
        /// What is wrong.
        reason: String,
    },
    /// The TLS client configuration could not be built (no usable protocol versions).
    #[error("unable to build the kubelet TLS client: {reason}")]
    TlsClient {
        /// The rustls error.
        reason: String,
    },
    /// The I/O runtime the kubelet client runs on could not be started.
    #[error("unable to start the kubelet client runtime: {0}")]
    Runtime(#[source] io::Error),
    /// `/proc/<pid>/cgroup` could not be read or has a line that is not
    /// `hierarchy-ID:controller-list:cgroup-path`.
    #[error("unable to obtain cgroups: {reason}")]
    Cgroups {
        /// What went wrong.
        reason: String,
    },
    /// Two cgroup paths of the process name different pods: the safe answer is none.
    #[error("multiple pod UIDs found ({first:?}, {second:?})")]
    MultiplePodUids {
        /// The pod UID found first.
        first: String,
        /// The other one.
        second: String,
    },
    /// Two cgroup paths of the process name different containers.
    #[error("multiple container IDs found ({first:?}, {second:?})")]
    MultipleContainerIds {
        /// The container ID found first.
        first: String,
        /// The other one.
        second: String,
    },
    /// The legacy locator (`use_new_container_locator = false`) found two container IDs.
    #[error("multiple container IDs found in cgroups ({first}, {second})")]
    LegacyMultipleContainerIds {
        /// The container ID found first.
        first: String,
        /// The other one.
        second: String,
    },
    /// The legacy locator found two pod UIDs.
    #[error("multiple pod UIDs found in cgroups ({first}, {second})")]
    LegacyMultiplePodUids {
        /// The pod UID found first.
        first: String,
        /// The other one.
        second: String,
    },
    /// The request to the kubelet failed: no connection, TLS verification failed, timeout.
    #[error("unable to perform request: {reason}")]
    Request {
        /// What failed.
        reason: String,
    },
    /// The kubelet answered with a status other than 200 (the start of its body follows).
    #[error("unexpected status code on pods response: {status} {body}")]
    Status {
        /// The HTTP status code.
        status: u16,
        /// Up to 1024 bytes of the response body.
        body: String,
    },
    /// The response body could not be read.
    #[error("unable to read pods response: {reason}")]
    ReadBody {
        /// What failed.
        reason: String,
    },
    /// The response is not JSON.
    #[error("unable to parse kubelet response: {reason}")]
    ParsePodList {
        /// The JSON error.
        reason: String,
    },
    /// The pod that holds the container is not a pod object kubelet would send.
    #[error("unable to decode pod info from kubelet response: {reason}")]
    DecodePod {
        /// The JSON error.
        reason: String,
    },
    /// Two pods of the list hold the caller's container.
    #[error("two pods found with same container Id")]
    DuplicateContainer,
    /// The caller's container was not in the kubelet's pod list after `max_poll_attempts`
    /// tries.
    #[error("no selectors found after max poll attempts")]
    NotFound,
}
