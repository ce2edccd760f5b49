//! The agent's configuration: ward's TOML file (`docs/agent-config.md`), then command-line
//! flags, validated once into [`Settings`].
//!
//! Defaults follow spire-agent where a workload or operator would notice the difference (the
//! Workload API socket path, the server port, the 5 s sync interval) and are written on each
//! field. The checks on the bootstrap trust source and their messages are SPIRE's
//! (`cmd/spire-agent/cli/run/run.go`), so an operator moving between the two sees the same
//! sentences.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use ward_attest::UnixConfig;
use ward_attest::k8s::{K8sConfig, K8sSettings};
use ward_core::TrustDomain;

mod node_attestor;

pub use node_attestor::{
    AwsIidFileConfig, AzureMsiFileConfig, GcpIitFileConfig, K8sPsatFileConfig,
    NodeAttestorFileConfig, NodeAttestorSettings, SshpopFileConfig, TpmDevidFileConfig,
    X509popFileConfig,
};

use crate::sds::SdsConfig;
use crate::workload::WorkloadApiConfig;

/// Default TCP port of the server (SPIRE's).
pub const DEFAULT_SERVER_PORT: u16 = 8081;
/// Default Workload API socket: spire-agent's, so SPIFFE clients find it where they look.
pub const DEFAULT_SOCKET_PATH: &str = "/tmp/spire-agent/public/api.sock";
/// Default admin socket (health): a private directory beside the public one.
pub const DEFAULT_ADMIN_SOCKET_PATH: &str = "/tmp/spire-agent/private/admin.sock";
/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "./agent-data";
/// Default time between entry syncs (SPIRE's).
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_secs(5);
/// Default bound on held X509-SVIDs and cached JWT-SVIDs (SPIRE's).
pub const DEFAULT_SVID_CACHE_MAX_SIZE: usize = 1000;

/// Why the configuration cannot be used: one sentence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

pub(crate) fn err(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

/// `server_address`: one host name or IP address (a name may have several address records),
/// or a list of them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum ServerAddressSetting {
    /// One name or address.
    One(String),
    /// Several names or addresses, tried in turn.
    Many(Vec<String>),
}

/// The agent's configuration file as written (every key optional; see
/// `docs/agent-config.md` for each default).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The server's host name or IP address, or a list of them.
    pub server_address: Option<ServerAddressSetting>,
    /// The server's TCP port (default 8081).
    pub server_port: Option<u16>,
    /// The trust domain the agent belongs to.
    pub trust_domain: Option<String>,
    /// A file with the bootstrap trust bundle.
    pub trust_bundle_path: Option<PathBuf>,
    /// An `https://` URL serving the bootstrap trust bundle.
    pub trust_bundle_url: Option<String>,
    /// `pem` (default) or `spiffe`: the format of the bootstrap trust bundle.
    pub trust_bundle_format: Option<String>,
    /// Trust the first server reached that presents the trust domain's server ID (default
    /// false).
    pub insecure_bootstrap: Option<bool>,
    /// A join token for the first node attestation.
    pub join_token: Option<String>,
    /// A file holding the join token.
    pub join_token_file: Option<PathBuf>,
    /// Where the agent keeps its SVID, key and bundle (default `./agent-data`).
    pub data_dir: Option<PathBuf>,
    /// The Workload API socket (default `/tmp/spire-agent/public/api.sock`).
    pub socket_path: Option<PathBuf>,
    /// The admin socket (default `/tmp/spire-agent/private/admin.sock`).
    pub admin_socket_path: Option<PathBuf>,
    /// Time between entry syncs, as a Go duration (default `5s`).
    pub sync_interval: Option<String>,
    /// Hold a ward server's push stream and sync as soon as it reports a change (default
    /// true; spire-server has no such stream and is polled either way).
    pub push_sync: Option<bool>,
    /// Time between entry syncs while the push stream is healthy, as a Go duration (default
    /// `30s`; never shorter than `sync_interval`).
    pub push_sync_poll_interval: Option<String>,
    /// `error`, `warn`, `info` (default), `debug` or `trace`.
    pub log_level: Option<String>,
    /// `text` (default) or `json`.
    pub log_format: Option<String>,
    /// The most X509-SVIDs the agent holds (default 1000, SPIRE's).
    pub x509_svid_cache_max_size: Option<usize>,
    /// The most JWT-SVIDs the agent caches (default 1000, SPIRE's).
    pub jwt_svid_cache_max_size: Option<usize>,
    /// Serve bundles to callers without an identity (default false, SPIRE's).
    pub allow_unauthenticated_verifiers: Option<bool>,
    /// Claims of foreign JWT-SVIDs that ValidateJWTSVID passes on (default none, SPIRE's).
    pub allowed_foreign_jwt_claims: Option<Vec<String>>,
    /// The workload attestors (`[workload_attestors.unix]`, `.k8s`, `.systemd`). Absent:
    /// `unix` with its defaults.
    pub workload_attestors: Option<WorkloadAttestorsConfig>,
    /// Envoy SDS resource names (SPIRE's `sds` block).
    pub sds: Option<SdsFileConfig>,
    /// The HTTP health listener (SPIRE's `health_checks` block).
    pub health_checks: Option<HealthChecksFileConfig>,
    /// The node attestor used when no join token is given (`[node_attestor.x509pop]`,
    /// `[node_attestor.k8s_psat]`, `[node_attestor.sshpop]` and the others).
    pub node_attestor: Option<NodeAttestorFileConfig>,
}

/// `[health_checks]`, SPIRE's `health_checks` block: plain-HTTP liveness and readiness.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthChecksFileConfig {
    /// Serve the listener (default false).
    pub listener_enabled: Option<bool>,
    /// Host name or IP address to bind (default `localhost`).
    pub bind_address: Option<String>,
    /// TCP port (default 80).
    pub bind_port: Option<u16>,
    /// Liveness path (default `/live`).
    pub live_path: Option<String>,
    /// Readiness path (default `/ready`).
    pub ready_path: Option<String>,
}

/// `[workload_attestors]`: each table present turns that attestor on, with its plugin data
/// under SPIRE's keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadAttestorsConfig {
    /// `unix`: `discover_workload_path`, `workload_size_limit`.
    pub unix: Option<UnixConfig>,
    /// `k8s`: the kubelet keys of SPIRE's `k8s` plugin (see docs/agent-attestors.md).
    pub k8s: Option<K8sConfig>,
    /// `systemd`: no keys.
    pub systemd: Option<SystemdConfig>,
}

/// `[workload_attestors.systemd]`: SPIRE's plugin has no keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemdConfig {}

/// `[sds]`, SPIRE's `sds` block: the resource names Envoy asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SdsFileConfig {
    /// The caller's default identity (default `default`).
    pub default_svid_name: Option<String>,
    /// The own trust domain's bundle (default `ROOTCA`).
    pub default_bundle_name: Option<String>,
    /// Every bundle in one SPIFFE validator (default `ALL`).
    pub default_all_bundles_name: Option<String>,
    /// Plain `trusted_ca` validation contexts instead of the SPIFFE validator (default false).
    pub disable_spiffe_cert_validation: Option<bool>,
}

impl FileConfig {
    /// Parses ward's TOML.
    ///
    /// # Errors
    /// [`ConfigError`] with the TOML parser's message (unknown keys included).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| err(format!("unable to decode configuration: {e}")))
    }

    /// Overlays `other`'s keys that are set onto `self` (flags over the file).
    pub fn merge(&mut self, other: FileConfig) {
        macro_rules! take {
            ($($f:ident),*) => { $( if other.$f.is_some() { self.$f = other.$f; } )* };
        }
        take!(
            server_address,
            server_port,
            trust_domain,
            trust_bundle_path,
            trust_bundle_url,
            trust_bundle_format,
            insecure_bootstrap,
            join_token,
            join_token_file,
            data_dir,
            socket_path,
            admin_socket_path,
            sync_interval,
            push_sync,
            push_sync_poll_interval,
            log_level,
            log_format,
            x509_svid_cache_max_size,
            jwt_svid_cache_max_size,
            allow_unauthenticated_verifiers,
            allowed_foreign_jwt_claims,
            workload_attestors,
            sds,
            health_checks,
            node_attestor
        );
    }
}

/// The format of a bootstrap trust bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleFormat {
    /// PEM certificates.
    Pem,
    /// A SPIFFE bundle document (JWKS).
    Spiffe,
}

/// Where the first bundle comes from, when the data directory holds none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootstrapTrust {
    /// A file.
    Path(PathBuf, BundleFormat),
    /// An `https://` URL, fetched with the system's web PKI roots.
    Url(String, BundleFormat),
    /// No bundle: the server's ID is checked, its chain is not, and the bundle is taken from
    /// its answer.
    Insecure,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The validated settings the agent runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Server host names or addresses, tried in turn.
    pub server_addresses: Vec<String>,
    /// Server TCP port.
    pub server_port: u16,
    /// The agent's trust domain.
    pub trust_domain: TrustDomain,
    /// The bootstrap trust source.
    pub bootstrap: BootstrapTrust,
    /// The join token, if one is configured.
    pub join_token: Option<String>,
    /// The node attestor of `[node_attestor]`, if one is configured (a join token takes
    /// precedence, as in SPIRE).
    pub node_attestor: Option<NodeAttestorSettings>,
    /// The data directory.
    pub data_dir: PathBuf,
    /// The Workload API socket.
    pub socket_path: PathBuf,
    /// The admin socket.
    pub admin_socket_path: PathBuf,
    /// Time between entry syncs.
    pub sync_interval: Duration,
    /// Whether the agent holds a ward server's push stream.
    pub push_sync: bool,
    /// Time between entry syncs while the push stream is healthy.
    pub push_sync_poll_interval: Duration,
    /// Log level name (`info`, ...).
    pub log_level: String,
    /// Log format.
    pub log_format: LogFormat,
    /// The most X509-SVIDs the agent holds.
    pub x509_svid_cache_max_size: usize,
    /// The most JWT-SVIDs the agent caches.
    pub jwt_svid_cache_max_size: usize,
    /// The workload attestors to run, in this order: unix, k8s, systemd.
    pub workload_attestors: WorkloadAttestorSettings,
    /// The Workload API's options.
    pub workload_api: WorkloadApiConfig,
    /// Envoy SDS's resource names.
    pub sds: SdsConfig,
    /// The HTTP health listener, when enabled.
    pub health_checks: Option<HealthChecks>,
}

/// The HTTP health listener's settings (SPIRE's defaults: `localhost:80`, `/live`, `/ready`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthChecks {
    /// Host name or IP address to bind.
    pub bind_address: String,
    /// TCP port.
    pub bind_port: u16,
    /// Liveness path.
    pub live_path: String,
    /// Readiness path.
    pub ready_path: String,
}

fn health_checks(file: Option<HealthChecksFileConfig>) -> Option<HealthChecks> {
    let file = file.filter(|f| f.listener_enabled == Some(true))?;
    Some(HealthChecks {
        bind_address: non_empty(file.bind_address).unwrap_or_else(|| "localhost".into()),
        bind_port: file.bind_port.unwrap_or(80),
        live_path: non_empty(file.live_path).unwrap_or_else(|| "/live".into()),
        ready_path: non_empty(file.ready_path).unwrap_or_else(|| "/ready".into()),
    })
}

/// Which workload attestors run, with their validated settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadAttestorSettings {
    /// `unix`, when configured (the default when no attestor is configured).
    pub unix: Option<UnixConfig>,
    /// `k8s`, when configured.
    pub k8s: Option<K8sSettings>,
    /// Whether `systemd` runs.
    pub systemd: bool,
}

impl WorkloadAttestorSettings {
    fn from_file(
        file: Option<WorkloadAttestorsConfig>,
        getenv: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let Some(file) = file else {
            return Ok(Self { unix: Some(UnixConfig::default()), k8s: None, systemd: false });
        };
        let k8s = file
            .k8s
            .map(|k| k.settings(getenv))
            .transpose()
            .map_err(|e| err(format!("workload attestor \"k8s\": {e}")))?;
        if file.unix.is_none() && k8s.is_none() && file.systemd.is_none() {
            return Err(err(
                "workload_attestors configures no attestor: add [workload_attestors.unix], \
                 .k8s or .systemd, or remove the table to use unix",
            ));
        }
        Ok(Self { unix: file.unix, k8s, systemd: file.systemd.is_some() })
    }
}

fn sds_config(file: Option<SdsFileConfig>) -> SdsConfig {
    let defaults = SdsConfig::default();
    let Some(file) = file else { return defaults };
    SdsConfig {
        default_svid_name: non_empty(file.default_svid_name).unwrap_or(defaults.default_svid_name),
        default_bundle_name: non_empty(file.default_bundle_name)
            .unwrap_or(defaults.default_bundle_name),
        default_all_bundles_name: non_empty(file.default_all_bundles_name)
            .unwrap_or(defaults.default_all_bundles_name),
        disable_spiffe_cert_validation: file
            .disable_spiffe_cert_validation
            .unwrap_or(defaults.disable_spiffe_cert_validation),
    }
}

/// Parses a Go duration (`5s`, `1m30s`, `250ms`).
///
/// # Errors
/// [`ConfigError`] when the text is not a non-negative duration.
pub fn parse_duration(text: &str) -> Result<Duration, ConfigError> {
    let nanos = go_parse_duration::parse_duration(text)
        .map_err(|_| err(format!("invalid duration {text:?}")))?;
    u64::try_from(nanos)
        .map(Duration::from_nanos)
        .map_err(|_| err(format!("invalid duration {text:?}: it is negative")))
}

pub(crate) fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

pub(crate) fn non_empty_path(p: Option<PathBuf>) -> Option<PathBuf> {
    p.filter(|p| !p.as_os_str().is_empty())
}

impl Settings {
    /// Validates `file` (already merged with flags) into settings; `read_file` reads
    /// `join_token_file` (a seam so tests need no files).
    ///
    /// # Errors
    /// [`ConfigError`] with one sentence naming the first problem, in SPIRE's words where
    /// SPIRE has the same check.
    pub fn from_file_config(
        file: FileConfig,
        read_file: impl Fn(&Path) -> std::io::Result<String>,
    ) -> Result<Self, ConfigError> {
        Self::from_file_config_env(file, read_file, |k| std::env::var(k).ok())
    }

    /// [`Settings::from_file_config`] with the environment given (the `k8s` attestor reads
    /// its node name from a variable).
    ///
    /// # Errors
    /// As [`Settings::from_file_config`].
    pub fn from_file_config_env(
        file: FileConfig,
        read_file: impl Fn(&Path) -> std::io::Result<String>,
        getenv: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let join_token = non_empty(file.join_token);
        let join_token_file = non_empty_path(file.join_token_file);
        let join_token = match (join_token, join_token_file) {
            (Some(_), Some(_)) => {
                return Err(err(
                    "only one of join_token or join_token_file can be specified, not both",
                ));
            }
            (Some(t), None) => Some(t),
            (None, Some(path)) => {
                let text = read_file(&path).map_err(|e| {
                    err(format!("unable to read join token file {:?}: {e}", path.display()))
                })?;
                let token = text.trim().to_owned();
                if token.is_empty() {
                    return Err(err("join token file is empty"));
                }
                Some(token)
            }
            (None, None) => None,
        };
        let server_addresses: Vec<String> = match file.server_address {
            None => Vec::new(),
            Some(ServerAddressSetting::One(a)) => vec![a],
            Some(ServerAddressSetting::Many(list)) => list,
        }
        .into_iter()
        .map(|a| a.trim().to_owned())
        .filter(|a| !a.is_empty())
        .collect();
        if server_addresses.is_empty() {
            return Err(err("server_address must be configured"));
        }
        let server_port = file.server_port.unwrap_or(DEFAULT_SERVER_PORT);
        if server_port == 0 {
            return Err(err("server_port must be configured"));
        }
        let td =
            non_empty(file.trust_domain).ok_or_else(|| err("trust_domain must be configured"))?;
        let trust_domain = TrustDomain::new(&td)
            .map_err(|e| err(format!("trust_domain {td:?} is not valid: {e}")))?;

        let path = non_empty_path(file.trust_bundle_path);
        let url = non_empty(file.trust_bundle_url);
        let insecure = file.insecure_bootstrap.unwrap_or(false);
        if insecure {
            match (&url, &path) {
                (Some(_), Some(_)) => {
                    return Err(err(
                        "only one of insecure_bootstrap, trust_bundle_url, or trust_bundle_path \
                         can be specified, not the three options",
                    ));
                }
                (Some(_), None) => {
                    return Err(err(
                        "only one of insecure_bootstrap or trust_bundle_url can be specified, not \
                         both",
                    ));
                }
                (None, Some(_)) => {
                    return Err(err(
                        "only one of insecure_bootstrap or trust_bundle_path can be specified, \
                         not both",
                    ));
                }
                (None, None) => {}
            }
        } else if path.is_none() && url.is_none() {
            return Err(err("trust_bundle_path or trust_bundle_url must be configured unless \
                 insecure_bootstrap is set"));
        }
        if url.is_some() && path.is_some() {
            return Err(err(
                "only one of trust_bundle_url or trust_bundle_path can be specified, not both",
            ));
        }
        let format = match non_empty(file.trust_bundle_format).as_deref() {
            None | Some("pem") => BundleFormat::Pem,
            Some("spiffe") => BundleFormat::Spiffe,
            Some(_) => {
                return Err(err(
                    "invalid value for trust_bundle_format, expected \"pem\" or \"spiffe\"",
                ));
            }
        };
        let bootstrap = match (path, url) {
            (Some(p), _) => BootstrapTrust::Path(p, format),
            (None, Some(u)) => {
                let parsed = url::Url::parse(&u)
                    .map_err(|e| err(format!("unable to parse trust bundle URL: {e}")))?;
                if parsed.scheme() != "https" {
                    return Err(err("trust bundle URL must start with https://"));
                }
                BootstrapTrust::Url(u, format)
            }
            (None, None) => BootstrapTrust::Insecure,
        };

        let socket_path =
            non_empty_path(file.socket_path).unwrap_or_else(|| DEFAULT_SOCKET_PATH.into());
        let admin_socket_path = non_empty_path(file.admin_socket_path)
            .unwrap_or_else(|| DEFAULT_ADMIN_SOCKET_PATH.into());
        if let Some(dir) = socket_path.parent()
            && !dir.as_os_str().is_empty()
            && admin_socket_path.starts_with(dir)
        {
            return Err(err(
                "admin socket cannot be in the same directory or a subdirectory as that \
                 containing the Workload API socket",
            ));
        }
        let sync_interval = match non_empty(file.sync_interval) {
            None => DEFAULT_SYNC_INTERVAL,
            Some(s) => parse_duration(&s)
                .map_err(|e| err(format!("could not parse synchronization interval: {e}")))?,
        };
        if sync_interval.is_zero() {
            return Err(err("sync_interval must be greater than zero"));
        }
        let push_sync_poll_interval = match non_empty(file.push_sync_poll_interval) {
            None => crate::push::DEFAULT_POLL_INTERVAL,
            Some(s) => parse_duration(&s)
                .map_err(|e| err(format!("could not parse push_sync_poll_interval: {e}")))?,
        };
        if push_sync_poll_interval.is_zero() {
            return Err(err("push_sync_poll_interval must be greater than zero"));
        }
        let workload_attestors =
            WorkloadAttestorSettings::from_file(file.workload_attestors, getenv)?;
        let node_attestor = NodeAttestorSettings::from_file(file.node_attestor)?;
        let log_level = non_empty(file.log_level).unwrap_or_else(|| "info".into()).to_lowercase();
        if !["error", "warn", "warning", "info", "debug", "trace"].contains(&log_level.as_str()) {
            return Err(err(format!(
                "log_level {log_level:?} is not one of error, warn, info, debug, trace"
            )));
        }
        let log_format = match non_empty(file.log_format).map(|f| f.to_lowercase()).as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(err(format!("log_format {other:?} is not text or json")));
            }
        };
        Ok(Self {
            server_addresses,
            server_port,
            trust_domain,
            bootstrap,
            join_token,
            data_dir: non_empty_path(file.data_dir).unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
            socket_path,
            admin_socket_path,
            sync_interval,
            push_sync: file.push_sync.unwrap_or(true),
            push_sync_poll_interval,
            log_level,
            log_format,
            x509_svid_cache_max_size: file
                .x509_svid_cache_max_size
                .unwrap_or(DEFAULT_SVID_CACHE_MAX_SIZE),
            jwt_svid_cache_max_size: file
                .jwt_svid_cache_max_size
                .unwrap_or(DEFAULT_SVID_CACHE_MAX_SIZE),
            workload_attestors,
            workload_api: WorkloadApiConfig {
                allow_unauthenticated_verifiers: file
                    .allow_unauthenticated_verifiers
                    .unwrap_or(false),
                allowed_foreign_jwt_claims: file
                    .allowed_foreign_jwt_claims
                    .unwrap_or_default()
                    .into_iter()
                    .collect(),
            },
            sds: sds_config(file.sds),
            health_checks: health_checks(file.health_checks),
            node_attestor,
        })
    }
}

#[cfg(test)]
/// The node attestor settings of `s`, which must be of `variant`.
macro_rules! configured {
    ($s:expr, $variant:ident) => {
        match $s.node_attestor {
            Some($crate::config::NodeAttestorSettings::$variant(c)) => c,
            other => panic!("expected {}, got {other:?}", stringify!($variant)),
        }
    };
}
#[cfg(test)]
pub(crate) use configured;

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(toml: &str) -> Result<Settings, ConfigError> {
        Settings::from_file_config(FileConfig::from_toml(toml)?, |_| Ok("tok-from-file\n".into()))
    }

    const BASE: &str = "server_address = \"ward.example\"\ntrust_domain = \"example.org\"\n";

    #[test]
    fn defaults_apply_to_a_minimal_file() {
        let s = settings(&format!("{BASE}insecure_bootstrap = true\n")).unwrap();
        assert_eq!(s.server_addresses, vec!["ward.example".to_owned()]);
        assert_eq!(s.server_port, 8081);
        assert_eq!(s.bootstrap, BootstrapTrust::Insecure);
        assert_eq!(s.socket_path, PathBuf::from("/tmp/spire-agent/public/api.sock"));
        assert_eq!(s.admin_socket_path, PathBuf::from("/tmp/spire-agent/private/admin.sock"));
        assert_eq!(s.data_dir, PathBuf::from("./agent-data"));
        assert_eq!(s.sync_interval, Duration::from_secs(5));
        assert!(s.push_sync);
        assert_eq!(s.push_sync_poll_interval, Duration::from_secs(30));
        assert_eq!(s.log_level, "info");
        assert_eq!(s.log_format, LogFormat::Text);
        assert_eq!(s.join_token, None);
        assert_eq!(s.x509_svid_cache_max_size, 1000);
        assert_eq!(s.jwt_svid_cache_max_size, 1000);
    }

    #[test]
    fn server_address_may_be_a_list() {
        let s = settings(
            "server_address = [\"10.0.0.1\", \"10.0.0.2\"]\ntrust_domain = \"example.org\"\n\
             insecure_bootstrap = true\n",
        )
        .unwrap();
        assert_eq!(s.server_addresses, vec!["10.0.0.1".to_owned(), "10.0.0.2".to_owned()]);
    }

    #[test]
    fn bootstrap_sources_are_checked_as_spire_checks_them() {
        let cases = [
            (
                "",
                "trust_bundle_path or trust_bundle_url must be configured unless \
                 insecure_bootstrap is set",
            ),
            (
                "insecure_bootstrap = true\ntrust_bundle_path = \"/b.pem\"\n",
                "only one of insecure_bootstrap or trust_bundle_path can be specified, not both",
            ),
            (
                "trust_bundle_path = \"/b.pem\"\ntrust_bundle_url = \"https://x/b\"\n",
                "only one of trust_bundle_url or trust_bundle_path can be specified, not both",
            ),
            ("trust_bundle_url = \"http://x/b\"\n", "trust bundle URL must start with https://"),
            (
                "trust_bundle_path = \"/b\"\ntrust_bundle_format = \"der\"\n",
                "invalid value for trust_bundle_format, expected \"pem\" or \"spiffe\"",
            ),
        ];
        for (extra, want) in cases {
            assert_eq!(
                settings(&format!("{BASE}{extra}")),
                Err(ConfigError(want.into())),
                "{extra}"
            );
        }
        let s = settings(&format!(
            "{BASE}trust_bundle_url = \"https://x/b\"\ntrust_bundle_format = \"spiffe\"\n"
        ))
        .unwrap();
        assert_eq!(s.bootstrap, BootstrapTrust::Url("https://x/b".into(), BundleFormat::Spiffe));
    }

    #[test]
    fn required_keys_are_named() {
        assert_eq!(
            settings("trust_domain = \"example.org\"\ninsecure_bootstrap = true\n"),
            Err(ConfigError("server_address must be configured".into()))
        );
        assert_eq!(
            settings("server_address = \"x\"\ninsecure_bootstrap = true\n"),
            Err(ConfigError("trust_domain must be configured".into()))
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = settings(&format!("{BASE}insecure_bootstrap = true\nbogus = 1\n")).unwrap_err();
        assert!(e.0.contains("unknown field `bogus`"), "{e}");
    }

    #[test]
    fn gcp_iit_takes_spire_defaults() {
        let s = settings(&format!("{BASE}insecure_bootstrap = true\n[node_attestor.gcp_iit]\n"))
            .unwrap();
        let g = configured!(s, GcpIit);
        assert_eq!(g.identity_token_host, "metadata.google.internal");
        assert_eq!(g.service_account, "default");
        let s = settings(&format!(
            "{BASE}insecure_bootstrap = true\n[node_attestor.gcp_iit]\n\
             identity_token_host = \"127.0.0.1:8080\"\nservice_account = \"sa@x\"\n"
        ))
        .unwrap();
        let g = configured!(s, GcpIit);
        assert_eq!(
            (g.identity_token_host.as_str(), g.service_account.as_str()),
            ("127.0.0.1:8080", "sa@x")
        );
        let both = settings(&format!(
            "{BASE}insecure_bootstrap = true\n[node_attestor.gcp_iit]\n[node_attestor.x509pop]\n\
             private_key_path = \"/k.pem\"\ncertificate_path = \"/c.pem\"\n"
        ));
        assert!(both.unwrap_err().0.starts_with("only one of"));
        let s = settings(&format!("{BASE}insecure_bootstrap = true\n[node_attestor.azure_msi]\n"))
            .unwrap();
        assert_eq!(configured!(s, AzureMsi).resource_id, "https://management.azure.com/");
    }

    #[test]
    fn aws_iid_takes_an_endpoint_and_excludes_other_attestors() {
        let s = settings(&format!(
            "{BASE}insecure_bootstrap = true\n[node_attestor.aws_iid]\n\
             ec2_metadata_endpoint = \"http://127.0.0.1:9\"\n"
        ))
        .unwrap();
        assert_eq!(
            configured!(s, AwsIid).ec2_metadata_endpoint.as_deref(),
            Some("http://127.0.0.1:9")
        );
        let s = settings(&format!("{BASE}insecure_bootstrap = true\n[node_attestor.aws_iid]\n"))
            .unwrap();
        assert_eq!(configured!(s, AwsIid).ec2_metadata_endpoint, None);
        let both = settings(&format!(
            "{BASE}insecure_bootstrap = true\n[node_attestor.aws_iid]\n[node_attestor.gcp_iit]\n"
        ))
        .unwrap_err();
        assert!(both.0.starts_with("only one of"), "{both}");
    }

    #[test]
    fn x509pop_needs_a_key_and_a_certificate() {
        let s = settings(&format!(
            "{BASE}insecure_bootstrap = true\n[node_attestor.x509pop]\n\
             private_key_path = \"/k.pem\"\ncertificate_path = \"/c.pem\"\n"
        ))
        .unwrap();
        let x = configured!(s, X509pop);
        assert_eq!((x.private_key_path, x.certificate_path), ("/k.pem".into(), "/c.pem".into()));
        assert_eq!(x.intermediates_path, None);
        for (toml, missing) in [
            ("certificate_path = \"/c.pem\"\n", "private_key_path is required"),
            ("private_key_path = \"/k.pem\"\n", "certificate_path is required"),
        ] {
            let e = settings(&format!(
                "{BASE}insecure_bootstrap = true\n[node_attestor.x509pop]\n{toml}"
            ))
            .unwrap_err();
            assert_eq!(e, err(missing));
        }
    }

    #[test]
    fn tpm_devid_needs_the_devid_files() {
        let s = settings(&format!(
            "{BASE}insecure_bootstrap = true\n[node_attestor.tpm_devid]\n\
             devid_cert_path = \"/c.pem\"\ndevid_priv_path = \"/k.priv\"\n\
             devid_pub_path = \"/k.pub\"\ntpm_device_path = \"/dev/tpmrm0\"\n\
             endorsement_hierarchy_password = \"secret\"\n"
        ))
        .unwrap();
        let t = configured!(s, TpmDevid);
        assert_eq!(t.devid_cert_path, PathBuf::from("/c.pem"));
        assert_eq!(t.tpm_device_path, Some("/dev/tpmrm0".into()));
        assert_eq!(t.endorsement_hierarchy_password, "secret");
        assert_eq!(t.owner_hierarchy_password, "");
        assert!(!format!("{t:?}").contains("secret"));
        let both = settings(&format!(
            "{BASE}insecure_bootstrap = true\n[node_attestor.tpm_devid]\n\
             devid_cert_path = \"/c\"\ndevid_priv_path = \"/k\"\ndevid_pub_path = \"/p\"\n\
             [node_attestor.x509pop]\nprivate_key_path = \"/k.pem\"\ncertificate_path = \"/c.pem\"\n"
        ))
        .unwrap_err();
        assert!(both.0.starts_with("only one of "), "{both}");
        for (toml, missing) in [
            ("devid_priv_path = \"/k\"\ndevid_pub_path = \"/p\"\n", "devid_cert_path is required"),
            ("devid_cert_path = \"/c\"\ndevid_pub_path = \"/p\"\n", "devid_priv_path is required"),
            ("devid_cert_path = \"/c\"\ndevid_priv_path = \"/k\"\n", "devid_pub_path is required"),
        ] {
            let e = settings(&format!(
                "{BASE}insecure_bootstrap = true\n[node_attestor.tpm_devid]\n{toml}"
            ))
            .unwrap_err();
            assert_eq!(e, err(missing));
        }
    }

    #[test]
    fn sshpop_takes_spires_defaults_and_stands_alone() {
        let s = settings(&format!("{BASE}insecure_bootstrap = true\n[node_attestor.sshpop]\n"))
            .unwrap();
        let x = configured!(s, Sshpop);
        assert_eq!(x.host_key_path, PathBuf::from("/etc/ssh/ssh_host_rsa_key"));
        assert_eq!(x.host_cert_path, PathBuf::from("/etc/ssh/ssh_host_rsa_key-cert.pub"));
        let s = settings(&format!(
            "{BASE}insecure_bootstrap = true\n[node_attestor.sshpop]\n\
             host_key_path = \"/k\"\nhost_cert_path = \"/k-cert.pub\"\n"
        ))
        .unwrap();
        let x = configured!(s, Sshpop);
        assert_eq!((x.host_key_path, x.host_cert_path), ("/k".into(), "/k-cert.pub".into()));
        let e = settings(&format!(
            "{BASE}insecure_bootstrap = true\n[node_attestor.sshpop]\n\
             [node_attestor.x509pop]\nprivate_key_path = \"/k.pem\"\ncertificate_path = \"/c\"\n"
        ))
        .unwrap_err();
        assert!(e.0.starts_with("only one of [node_attestor.x509pop]"), "{e}");
        assert!(e.0.contains("[node_attestor.sshpop]"), "{e}");
    }

    #[test]
    fn join_token_comes_from_the_key_or_a_file_not_both() {
        let s = settings(&format!(
            "{BASE}insecure_bootstrap = true\njoin_token_file = \"/run/token\"\n"
        ))
        .unwrap();
        assert_eq!(s.join_token.as_deref(), Some("tok-from-file"));
        assert_eq!(
            settings(&format!(
                "{BASE}insecure_bootstrap = true\njoin_token = \"a\"\njoin_token_file = \"/t\"\n"
            )),
            Err(ConfigError(
                "only one of join_token or join_token_file can be specified, not both".into()
            ))
        );
    }

    #[test]
    fn admin_socket_must_not_sit_beside_the_workload_socket() {
        let e = settings(&format!(
            "{BASE}insecure_bootstrap = true\nsocket_path = \"/run/ward/api.sock\"\n\
             admin_socket_path = \"/run/ward/admin.sock\"\n"
        ))
        .unwrap_err();
        assert!(e.0.starts_with("admin socket cannot be in the same directory"), "{e}");
    }

    #[test]
    fn flags_override_the_file() {
        let mut file = FileConfig::from_toml(&format!("{BASE}server_port = 1\n")).unwrap();
        file.merge(FileConfig { server_port: Some(2), ..FileConfig::default() });
        assert_eq!(file.server_port, Some(2));
        assert_eq!(file.trust_domain.as_deref(), Some("example.org"));
    }

    #[test]
    fn push_sync_can_be_turned_off_and_its_poll_interval_is_a_go_duration() {
        let s = settings(&format!(
            "{BASE}insecure_bootstrap = true\npush_sync = false\npush_sync_poll_interval = \"2m\"\n"
        ))
        .unwrap();
        assert!(!s.push_sync);
        assert_eq!(s.push_sync_poll_interval, Duration::from_secs(120));
        assert!(
            settings(&format!(
                "{BASE}insecure_bootstrap = true\npush_sync_poll_interval = \"0s\"\n"
            ))
            .is_err_and(|e| e.0 == "push_sync_poll_interval must be greater than zero")
        );
    }

    #[test]
    fn sync_interval_is_a_go_duration() {
        let s = settings(&format!("{BASE}insecure_bootstrap = true\nsync_interval = \"1m30s\"\n"))
            .unwrap();
        assert_eq!(s.sync_interval, Duration::from_secs(90));
        assert!(
            settings(&format!("{BASE}insecure_bootstrap = true\nsync_interval = \"soon\"\n"))
                .is_err_and(|e| e.0.starts_with("could not parse synchronization interval"))
        );
    }

    #[test]
    fn workload_attestors_default_to_unix_and_tables_choose_them() {
        let base = format!("{BASE}insecure_bootstrap = true\n");
        let s = settings(&base).unwrap();
        assert_eq!(s.workload_attestors.unix, Some(UnixConfig::default()));
        assert_eq!(
            (s.workload_attestors.k8s.is_some(), s.workload_attestors.systemd),
            (false, false)
        );

        let s = settings(&format!(
            "{base}[workload_attestors.unix]\ndiscover_workload_path = true\n\
             workload_size_limit = -1\n[workload_attestors.systemd]\n"
        ))
        .unwrap();
        let unix = s.workload_attestors.unix.unwrap();
        assert!(unix.discover_workload_path);
        assert_eq!(unix.workload_size_limit, -1);
        assert!(s.workload_attestors.systemd);

        let s = settings(&format!("{base}[workload_attestors.systemd]\n")).unwrap();
        assert_eq!(s.workload_attestors.unix, None, "only the attestors configured run");
    }

    #[test]
    fn bad_workload_attestor_tables_are_refused_with_a_sentence() {
        let base = format!("{BASE}insecure_bootstrap = true\n");
        let empty = settings(&format!("{base}[workload_attestors]\n")).unwrap_err();
        assert!(empty.0.starts_with("workload_attestors configures no attestor"), "{empty}");
        let unknown = settings(&format!("{base}[workload_attestors.docker]\n")).unwrap_err();
        assert!(unknown.0.contains("unknown field `docker`"), "{unknown}");
        let both = settings(&format!(
            "{base}[workload_attestors.k8s]\nkubelet_read_only_port = 10255\n\
             kubelet_secure_port = 10250\n"
        ))
        .unwrap_err();
        assert!(both.0.starts_with("workload attestor \"k8s\": "), "{both}");
    }

    #[test]
    fn sds_names_and_workload_api_options_take_spires_keys() {
        let base = format!("{BASE}insecure_bootstrap = true\n");
        let s = settings(&base).unwrap();
        assert_eq!(s.sds, SdsConfig::default());
        assert_eq!(s.workload_api, WorkloadApiConfig::default());
        let s = settings(&format!(
            "{base}allow_unauthenticated_verifiers = true\nallowed_foreign_jwt_claims = [\"team\"]\n\
             [sds]\ndefault_svid_name = \"mine\"\ndisable_spiffe_cert_validation = true\n"
        ))
        .unwrap();
        assert!(s.workload_api.allow_unauthenticated_verifiers);
        assert_eq!(
            s.workload_api.allowed_foreign_jwt_claims.into_iter().collect::<Vec<_>>(),
            ["team"]
        );
        assert_eq!(s.sds.default_svid_name, "mine");
        assert_eq!(s.sds.default_bundle_name, "ROOTCA");
        assert!(s.sds.disable_spiffe_cert_validation);
    }

    #[test]
    fn the_health_listener_is_off_unless_enabled_and_takes_spires_defaults() {
        let base = format!("{BASE}insecure_bootstrap = true\n");
        assert_eq!(settings(&base).unwrap().health_checks, None);
        let off = settings(&format!("{base}[health_checks]\nbind_port = 9\n")).unwrap();
        assert_eq!(off.health_checks, None);
        let on = settings(&format!("{base}[health_checks]\nlistener_enabled = true\n")).unwrap();
        assert_eq!(
            on.health_checks,
            Some(HealthChecks {
                bind_address: "localhost".into(),
                bind_port: 80,
                live_path: "/live".into(),
                ready_path: "/ready".into(),
            })
        );
    }
}
