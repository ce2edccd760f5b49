//! The `WorkloadAttestor "k8s"` plugin data, with SPIRE's keys and defaults, and the settings
//! it validates into.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{CgroupLocator, K8sError};

/// The kubelet's usual secure port, used when no port is configured.
pub const DEFAULT_SECURE_PORT: u16 = 10250;
/// Tries at finding the workload's container in the pod list before giving up.
pub const DEFAULT_MAX_POLL_ATTEMPTS: u32 = 60;
/// The wait between two tries.
pub const DEFAULT_POLL_RETRY_INTERVAL: Duration = Duration::from_millis(500);
/// How often the token, CA and client key pair are read again from disk.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(60);
/// The CA bundle of the cluster, mounted into every pod with a service account.
pub const DEFAULT_KUBELET_CA_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
/// The pod's service account token.
pub const DEFAULT_TOKEN_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// The environment variable holding the node name (set from `spec.nodeName` through the
/// downward API in a DaemonSet).
pub const DEFAULT_NODE_NAME_ENV: &str = "MY_NODE_NAME";

/// The `k8s` plugin data as an operator writes it (TOML, or the `plugin_data` block of a
/// spire-agent configuration): SPIRE v1.13.3's keys, types and defaults. Unknown keys are
/// refused, so a misspelt key cannot silently fall back to a default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct K8sConfig {
    /// The kubelet's read-only HTTP port (usually 10255); excludes `kubelet_secure_port`.
    /// Unset or 0: the secure port is used.
    #[serde(deserialize_with = "go_int")]
    pub kubelet_read_only_port: i64,
    /// The kubelet's HTTPS port (default 10250 when no read-only port is set).
    #[serde(deserialize_with = "go_int")]
    pub kubelet_secure_port: i64,
    /// Tries at finding the container in the pod list (default 60; 0 or less: the default).
    #[serde(deserialize_with = "go_int")]
    pub max_poll_attempts: i64,
    /// The wait between tries, a Go duration (default `"500ms"`). The pod list is cached for
    /// half of it.
    pub poll_retry_interval: String,
    /// PEM CA certificates the kubelet's serving certificate must chain to (default the
    /// service account's `ca.crt`).
    pub kubelet_ca_path: String,
    /// Accept any kubelet certificate (default `false`).
    pub skip_kubelet_verification: bool,
    /// The bearer token file (default the service account token), used unless a client
    /// key pair or anonymous authentication is configured.
    pub token_path: String,
    /// A PEM client certificate for the kubelet (with `private_key_path`).
    pub certificate_path: String,
    /// The PEM private key of `certificate_path`.
    pub private_key_path: String,
    /// Send no credentials to the secure port (default `false`).
    pub use_anonymous_authentication: bool,
    /// The environment variable holding the node name (default `MY_NODE_NAME`).
    pub node_name_env: String,
    /// The node name, which wins over `node_name_env`. With a node name the kubelet is
    /// reached at `https://<node name>:<port>` and its certificate must name the node;
    /// without one at `https://127.0.0.1:<port>` (host network) and only the chain is
    /// verified.
    pub node_name: String,
    /// How often the token and TLS files are read again, a Go duration (default `"1m"`).
    pub reload_interval: String,
    /// Leave out the `container-*` selectors, and attest with pod selectors alone when the
    /// pod is known but its container is not listed yet (default `false`).
    pub disable_container_selectors: bool,
    /// `true` (the default): SPIRE's current container locator; `false`: its legacy cgroup
    /// patterns. Either reads `/proc/<pid>/cgroup` only.
    pub use_new_container_locator: Option<bool>,
    /// Log every cgroup path of an attested process at `debug` (default `false`).
    pub verbose_container_locator_logs: bool,
    /// SPIRE's experimental options; ward supports none of them.
    pub experimental: Option<Experimental>,
}

/// An integer as SPIRE's HCL decoder takes it: a number, or a string holding one in Go's
/// literal syntax (`"10255"`, `"0x2817"`).
fn go_int<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum IntOrString {
        Int(i64),
        String(String),
    }
    match IntOrString::deserialize(d)? {
        IntOrString::Int(n) => Ok(n),
        IntOrString::String(s) => parse_go_int(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("{s:?} is not an integer"))),
    }
}

/// Go's `strconv.ParseInt(s, 0, 64)`: an optional sign, then decimal, `0x` hex, `0o`/`0`
/// octal or `0b` binary digits, with `_` between digits (Go is stricter about where).
fn parse_go_int(s: &str) -> Option<i64> {
    let (negative, unsigned) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let lower = unsigned.to_ascii_lowercase();
    let (radix, digits) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d.replace('_', ""))
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d.replace('_', ""))
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d.replace('_', ""))
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, lower.get(1..)?.replace('_', ""))
    } else {
        (10, lower.replace('_', ""))
    };
    if digits.is_empty() || digits.starts_with(['+', '-']) {
        return None;
    }
    let magnitude = i64::from_str_radix(&digits, radix).ok()?;
    Some(if negative { -magnitude } else { magnitude })
}

/// The `experimental` block of the plugin data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Experimental {
    /// Sigstore image signature verification: refused by ward.
    pub sigstore: Option<IgnoredSection>,
}

/// A configuration section whose content ward does not read, only notices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IgnoredSection;

impl<'de> Deserialize<'de> for IgnoredSection {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(d).map(|_| Self)
    }
}

/// Validated settings of the `k8s` attestor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K8sSettings {
    /// How to reach the kubelet.
    pub kubelet: KubeletSettings,
    /// Tries at finding the container in the pod list (at least 1).
    pub max_poll_attempts: u32,
    /// The wait between tries; the pod list is cached for half of it.
    pub poll_retry_interval: Duration,
    /// Leave out the container selectors (see [`K8sConfig::disable_container_selectors`]).
    pub disable_container_selectors: bool,
    /// How the container is read out of the cgroups.
    pub locator: CgroupLocator,
    /// Log every cgroup path at `debug`.
    pub verbose_container_locator_logs: bool,
}

/// How the kubelet is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KubeletSettings {
    /// `http://127.0.0.1:<port>/pods`, no authentication.
    ReadOnly {
        /// The read-only port.
        port: u16,
    },
    /// `https://<node name or 127.0.0.1>:<port>/pods`.
    Secure(SecureKubelet),
}

/// The secure kubelet port and how to trust and authenticate to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecureKubelet {
    /// The HTTPS port.
    pub port: u16,
    /// The node name to connect to (and that the kubelet certificate must name), or `None`
    /// for `127.0.0.1` with the chain verified but no name checked.
    pub node_name: Option<String>,
    /// How the kubelet's certificate is checked.
    pub verification: KubeletVerification,
    /// What the agent presents.
    pub auth: KubeletAuth,
    /// How often the files are read again.
    pub reload_interval: Duration,
}

/// How the kubelet's serving certificate is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KubeletVerification {
    /// Against the PEM CA certificates in this file.
    Ca(PathBuf),
    /// Not at all (`skip_kubelet_verification`).
    Skip,
}

/// The credentials sent to the secure port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KubeletAuth {
    /// `Authorization: Bearer <token>`, the token read (and trimmed) from this file.
    Token(PathBuf),
    /// A TLS client certificate.
    ClientCertificate {
        /// The PEM certificate (chain).
        certificate: PathBuf,
        /// The PEM private key.
        private_key: PathBuf,
    },
    /// Nothing.
    Anonymous,
}

fn path_or(path: &str, default: &str) -> PathBuf {
    PathBuf::from(if path.is_empty() { default } else { path })
}

fn go_duration(text: &str, what: &'static str, default: Duration) -> Result<Duration, K8sError> {
    if text.is_empty() {
        return Ok(default);
    }
    let nanos = go_parse_duration::parse_duration(text).map_err(|e| K8sError::Duration {
        what,
        reason: match e {
            go_parse_duration::Error::ParseError(m) => m,
        },
    })?;
    // SPIRE takes a zero or negative duration as "unset".
    Ok(u64::try_from(nanos).ok().filter(|n| *n > 0).map_or(default, Duration::from_nanos))
}

fn port(key: &'static str, value: i64) -> Result<u16, K8sError> {
    u16::try_from(value).map_err(|_| K8sError::Port { key, value })
}

impl K8sConfig {
    /// Validates the configuration into settings, as SPIRE's `Configure` does.
    ///
    /// `getenv` reads an environment variable (`|k| std::env::var(k).ok()` in the agent);
    /// it is only asked for the node name, and only when `node_name` is not set.
    ///
    /// # Errors
    /// [`K8sError::BothPorts`], [`K8sError::Port`], [`K8sError::Duration`],
    /// [`K8sError::KeyPathMissing`], [`K8sError::CertificatePathMissing`], and
    /// [`K8sError::Unsupported`] for the `experimental.sigstore` section.
    pub fn settings(
        &self,
        getenv: impl Fn(&str) -> Option<String>,
    ) -> Result<K8sSettings, K8sError> {
        if self.experimental.as_ref().is_some_and(|e| e.sigstore.is_some()) {
            return Err(K8sError::Unsupported {
                key: "experimental.sigstore",
                reason: "ward does not verify container image signatures; remove the section \
                         (no image-signature selectors are produced)",
            });
        }
        let max_poll_attempts = u32::try_from(self.max_poll_attempts)
            .ok()
            .filter(|n| *n > 0)
            .unwrap_or(DEFAULT_MAX_POLL_ATTEMPTS);
        let poll_retry_interval = go_duration(
            &self.poll_retry_interval,
            "poll retry interval",
            DEFAULT_POLL_RETRY_INTERVAL,
        )?;
        let reload_interval =
            go_duration(&self.reload_interval, "reload interval", DEFAULT_RELOAD_INTERVAL)?;
        if self.kubelet_read_only_port > 0 && self.kubelet_secure_port > 0 {
            return Err(K8sError::BothPorts);
        }
        let kubelet = if self.kubelet_read_only_port > 0 {
            KubeletSettings::ReadOnly {
                port: port("kubelet_read_only_port", self.kubelet_read_only_port)?,
            }
        } else {
            let port = if self.kubelet_secure_port > 0 {
                port("kubelet_secure_port", self.kubelet_secure_port)?
            } else {
                DEFAULT_SECURE_PORT
            };
            let verification = if self.skip_kubelet_verification {
                KubeletVerification::Skip
            } else {
                KubeletVerification::Ca(path_or(&self.kubelet_ca_path, DEFAULT_KUBELET_CA_PATH))
            };
            let auth = match (
                self.use_anonymous_authentication,
                self.certificate_path.as_str(),
                self.private_key_path.as_str(),
            ) {
                (true, _, _) => KubeletAuth::Anonymous,
                (false, "", "") => {
                    KubeletAuth::Token(path_or(&self.token_path, DEFAULT_TOKEN_PATH))
                }
                (false, _, "") => return Err(K8sError::KeyPathMissing),
                (false, "", _) => return Err(K8sError::CertificatePathMissing),
                (false, certificate, private_key) => KubeletAuth::ClientCertificate {
                    certificate: certificate.into(),
                    private_key: private_key.into(),
                },
            };
            KubeletSettings::Secure(SecureKubelet {
                port,
                node_name: self.node_name(getenv),
                verification,
                auth,
                reload_interval,
            })
        };
        Ok(K8sSettings {
            kubelet,
            max_poll_attempts,
            poll_retry_interval,
            disable_container_selectors: self.disable_container_selectors,
            locator: match self.use_new_container_locator {
                Some(false) => CgroupLocator::Legacy,
                _ => CgroupLocator::Segments,
            },
            verbose_container_locator_logs: self.verbose_container_locator_logs,
        })
    }

    /// `node_name`, else the variable `node_name_env` (default `MY_NODE_NAME`); `None` when
    /// both are empty.
    fn node_name(&self, getenv: impl Fn(&str) -> Option<String>) -> Option<String> {
        let name = if self.node_name.is_empty() {
            let var = if self.node_name_env.is_empty() {
                DEFAULT_NODE_NAME_ENV
            } else {
                self.node_name_env.as_str()
            };
            getenv(var).unwrap_or_default()
        } else {
            self.node_name.clone()
        };
        Some(name).filter(|n| !n.is_empty())
    }
}

#[cfg(test)]
mod tests;
