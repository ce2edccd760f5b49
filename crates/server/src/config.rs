//! Server configuration: one file plus command-line overrides.
//!
//! Every key has a default (see `docs/config.md`), so `ward-server run` with no file starts a
//! server for trust domain `example.org` with its data in `./data`. Unknown keys are rejected.
//! The file is ward's TOML or SPIRE's own server configuration (HCL or JSON), told apart by
//! [`ConfigFormat::detect`] and translated by [`crate::spire_config`].

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use ward_core::TrustDomain;

pub use crate::spire_config::ConfigFormat;
use crate::spire_config::{self, SpireConfigError};

mod cluster;
mod node_attestors;
mod observability;
pub use cluster::{
    ClusterConfig, ClusterFile, ClusterOverrides, ClusterStart, DEFAULT_PEER_PORT, NodeIdSetting,
};
#[cfg(test)]
pub(crate) use node_attestors::test_ca_pem;
pub use node_attestors::{
    AwsIidFile, AzureMsiFile, AzureTenantFile, GcpIitFile, K8sPsatClusterFile, K8sPsatFile,
    NodeAttestorsConfig, NodeAttestorsFile, SshpopFile, X509popFile,
};
pub use observability::{
    DEFAULT_METRIC_PREFIX, HealthChecksConfig, PrometheusConfig, TelemetryConfig,
};

/// SPIRE's default admin socket path; SPIRE's CLI uses it when given no `-socketPath`.
pub const DEFAULT_SOCKET_PATH: &str = "/tmp/spire-server/private/api.sock";

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (includes unknown keys).
    #[error("parsing config file {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The TOML error.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A SPIRE configuration file that does not parse, or that sets what ward refuses (every
    /// refused setting and plugin is listed, one sentence each).
    ///
    /// The message already holds every sentence, so the SPIRE error is not chained as a
    /// source (a chain printer would repeat them).
    #[error("{}", spire_message(path, problem))]
    Spire {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: SpireConfigError,
    },
    /// A value is out of its domain.
    #[error("invalid value for {key}: {reason}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// The key types SPIRE accepts for `ca_key_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum KeyType {
    /// ECDSA P-256 (the default).
    #[serde(rename = "ec-p256")]
    EcP256,
    /// ECDSA P-384.
    #[serde(rename = "ec-p384")]
    EcP384,
    /// RSA 2048.
    #[serde(rename = "rsa-2048")]
    Rsa2048,
    /// RSA 4096.
    #[serde(rename = "rsa-4096")]
    Rsa4096,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The `[ratelimit]` table: SPIRE's per-IP limits, both on by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// AttestAgent: 1 call per second per source IP.
    pub attestation: bool,
    /// Signing RPCs: 500 signatures per second per source IP.
    pub signing: bool,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self { attestation: true, signing: true }
    }
}

fn spire_message(path: &Path, e: &SpireConfigError) -> String {
    e.describe(path, "ward")
}

/// The file as written: every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    trust_domain: Option<String>,
    bind_address: Option<IpAddr>,
    bind_port: Option<u16>,
    socket_path: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    ca_key_type: Option<KeyType>,
    ca_ttl: Option<String>,
    default_x509_svid_ttl: Option<String>,
    default_jwt_svid_ttl: Option<String>,
    agent_ttl: Option<String>,
    jwt_issuer: Option<String>,
    ratelimit: Option<RateLimitConfig>,
    log_level: Option<String>,
    log_format: Option<LogFormat>,
    federation: Option<crate::federation::config::FederationFile>,
    // Observability (docs/config.md, "Telemetry, health checks, audit log").
    telemetry: Option<TelemetryConfig>,
    health_checks: Option<HealthChecksConfig>,
    audit_log_enabled: Option<bool>,
    cluster: Option<ClusterFile>,
    node_attestors: Option<NodeAttestorsFile>,
}

/// Command-line values that override the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `-trustDomain`.
    pub trust_domain: Option<String>,
    /// `-bindAddress`.
    pub bind_address: Option<IpAddr>,
    /// `-serverPort`.
    pub bind_port: Option<u16>,
    /// `-socketPath`.
    pub socket_path: Option<PathBuf>,
    /// `-dataDir`.
    pub data_dir: Option<PathBuf>,
    /// `-logLevel`.
    pub log_level: Option<String>,
    /// `-expandEnv`: replace `$NAME` and `${NAME}` in the file with environment variables
    /// before parsing it, as SPIRE does (see [`spire_config::expand_env()`]).
    pub expand_env: bool,
    /// The `[cluster]` flags.
    pub cluster: ClusterOverrides,
}

/// A configuration as [`Config::read`] loaded it.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The settings.
    pub config: Config,
    /// The file's format (ward's TOML when there was no file).
    pub format: ConfigFormat,
    /// SPIRE settings and plugins accepted but ignored, one sentence each, to log at start-up.
    pub notes: Vec<String>,
}

/// The resolved configuration the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// The trust domain this server is the authority for.
    pub trust_domain: TrustDomain,
    /// TCP listen address for agents.
    pub bind_address: IpAddr,
    /// TCP listen port (0 picks a free port).
    pub bind_port: u16,
    /// The admin Unix socket.
    pub socket_path: PathBuf,
    /// Where the store and CA keys live.
    pub data_dir: PathBuf,
    /// CA and JWT key type.
    pub ca_key_type: KeyType,
    /// Lifetime of each CA and JWT key.
    pub ca_ttl: Duration,
    /// Default X509-SVID lifetime.
    pub default_x509_svid_ttl: Duration,
    /// Default JWT-SVID lifetime.
    pub default_jwt_svid_ttl: Duration,
    /// Agent X509-SVID lifetime.
    pub agent_ttl: Duration,
    /// `iss` claim of JWT-SVIDs; none when empty.
    pub jwt_issuer: Option<String>,
    /// Rate limits.
    pub ratelimit: RateLimitConfig,
    /// Tracing filter directive (`info`, `debug`, `ward_server=trace`, ...).
    pub log_level: String,
    /// Log format.
    pub log_format: LogFormat,
    /// The bundle endpoint and the relationships set in the file (`[federation]`).
    pub federation: crate::federation::config::FederationConfig,
    /// Metrics (`[telemetry]`).
    pub telemetry: TelemetryConfig,
    /// The HTTP health-check listener (`[health_checks]`).
    pub health_checks: HealthChecksConfig,
    /// One `API accessed` log record per authorized call (SPIRE's `audit_log_enabled`).
    pub audit_log_enabled: bool,
    /// The replica's place in a cluster (`[cluster]`); `None` runs a one-member cluster
    /// without a peer listener.
    pub cluster: Option<ClusterConfig>,
    /// The node attestors besides join tokens (`[node_attestors]`).
    pub node_attestors: NodeAttestorsConfig,
}

impl Default for Config {
    fn default() -> Self {
        // The literal is a valid trust domain name; parsing cannot fail.
        #[allow(clippy::expect_used)]
        let td = TrustDomain::new("example.org").expect("valid literal trust domain");
        Self {
            trust_domain: td,
            bind_address: IpAddr::from([0, 0, 0, 0]),
            bind_port: 8081,
            socket_path: PathBuf::from(DEFAULT_SOCKET_PATH),
            data_dir: PathBuf::from("./data"),
            ca_key_type: KeyType::EcP256,
            ca_ttl: Duration::from_secs(24 * 3600),
            default_x509_svid_ttl: Duration::from_secs(3600),
            default_jwt_svid_ttl: Duration::from_secs(300),
            agent_ttl: Duration::from_secs(3600),
            jwt_issuer: None,
            ratelimit: RateLimitConfig::default(),
            log_level: "info".to_owned(),
            log_format: LogFormat::Text,
            federation: crate::federation::config::FederationConfig::default(),
            telemetry: TelemetryConfig::default(),
            health_checks: HealthChecksConfig::default(),
            audit_log_enabled: false,
            cluster: None,
            node_attestors: NodeAttestorsConfig::default(),
        }
    }
}

impl Config {
    /// Reads `path` (if given), applies `overrides`, and checks the result.
    ///
    /// # Errors
    /// [`ConfigError`] for an unreadable file, bad TOML, an unknown key or a bad value.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        Self::read(path, overrides, &|name| std::env::var(name).ok()).map(|l| l.config)
    }

    /// Reads `path` (if given) in whichever format it is written ([`ConfigFormat::detect`]),
    /// expanding environment variables from `env` first when `overrides.expand_env` is set,
    /// applies `overrides`, and checks the result.
    ///
    /// # Errors
    /// As [`Config::load`], plus [`ConfigError::Spire`] for a SPIRE file that does not parse
    /// or sets what ward refuses.
    pub fn read(
        path: Option<&Path>,
        overrides: &Overrides,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Loaded, ConfigError> {
        let Some(p) = path else {
            let config = Self::resolve(FileConfig::default(), overrides, env)?;
            return Ok(Loaded { config, format: ConfigFormat::WardToml, notes: Vec::new() });
        };
        let mut text = std::fs::read_to_string(p)
            .map_err(|source| ConfigError::Read { path: p.to_owned(), source })?;
        if overrides.expand_env {
            text = spire_config::expand_env(&text, env);
        }
        let parse_err = |source: toml::de::Error| ConfigError::Parse {
            path: p.to_owned(),
            source: Box::new(source),
        };
        let format = ConfigFormat::detect(&text);
        let (file, notes) = match format {
            ConfigFormat::WardToml => (parse_file(&text).map_err(parse_err)?, Vec::new()),
            ConfigFormat::SpireHcl | ConfigFormat::SpireJson => {
                let spire_err =
                    |problem: SpireConfigError| ConfigError::Spire { path: p.to_owned(), problem };
                let t = spire_config::translate(&text, format).map_err(spire_err)?;
                let file =
                    FileConfig::deserialize(toml::Value::Table(t.table)).map_err(parse_err)?;
                // SPIRE's own checks, after its command-line flags are merged in.
                let mut missing = Vec::new();
                if file.trust_domain.is_none() && overrides.trust_domain.is_none() {
                    missing.push("trust_domain must be configured".to_owned());
                }
                if file.data_dir.is_none() && overrides.data_dir.is_none() {
                    missing.push("data_dir must be configured".to_owned());
                }
                if !missing.is_empty() {
                    return Err(spire_err(SpireConfigError::Refused(missing)));
                }
                (file, t.notes)
            }
        };
        let config = Self::resolve(file, overrides, env)?;
        Ok(Loaded { config, format, notes })
    }

    /// Parses TOML text (no file) and applies `overrides`.
    ///
    /// # Errors
    /// As [`Config::load`]; parse errors name the path `<string>`.
    pub fn from_toml(text: &str, overrides: &Overrides) -> Result<Self, ConfigError> {
        let file = parse_file(text).map_err(|source| ConfigError::Parse {
            path: PathBuf::from("<string>"),
            source: Box::new(source),
        })?;
        Self::resolve(file, overrides, &|_| None)
    }

    fn resolve(
        file: FileConfig,
        o: &Overrides,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let d = Self::default();
        let td_name = o.trust_domain.clone().or(file.trust_domain);
        let trust_domain = match td_name {
            Some(name) => TrustDomain::new(&name)
                .map_err(|e| ConfigError::Invalid { key: "trust_domain", reason: e.to_string() })?,
            None => d.trust_domain,
        };
        let ca_ttl = opt_duration("ca_ttl", file.ca_ttl.as_deref())?.unwrap_or(d.ca_ttl);
        let x509 = opt_duration("default_x509_svid_ttl", file.default_x509_svid_ttl.as_deref())?
            .unwrap_or(d.default_x509_svid_ttl);
        let jwt = opt_duration("default_jwt_svid_ttl", file.default_jwt_svid_ttl.as_deref())?
            .unwrap_or(d.default_jwt_svid_ttl);
        let agent_ttl = opt_duration("agent_ttl", file.agent_ttl.as_deref())?.unwrap_or(x509);
        for (key, v) in [
            ("ca_ttl", ca_ttl),
            ("default_x509_svid_ttl", x509),
            ("default_jwt_svid_ttl", jwt),
            ("agent_ttl", agent_ttl),
        ] {
            if v.is_zero() {
                return Err(ConfigError::Invalid { key, reason: "must be positive".into() });
            }
        }
        let log_level = o.log_level.clone().or(file.log_level).unwrap_or(d.log_level);
        Ok(Self {
            bind_address: o.bind_address.or(file.bind_address).unwrap_or(d.bind_address),
            bind_port: o.bind_port.or(file.bind_port).unwrap_or(d.bind_port),
            socket_path: o.socket_path.clone().or(file.socket_path).unwrap_or(d.socket_path),
            data_dir: o.data_dir.clone().or(file.data_dir).unwrap_or(d.data_dir),
            ca_key_type: file.ca_key_type.unwrap_or(d.ca_key_type),
            ca_ttl,
            default_x509_svid_ttl: x509,
            default_jwt_svid_ttl: jwt,
            agent_ttl,
            jwt_issuer: file.jwt_issuer.filter(|s| !s.is_empty()),
            ratelimit: file.ratelimit.unwrap_or_default(),
            log_level: log_level.to_lowercase(),
            log_format: file.log_format.unwrap_or(d.log_format),
            federation: file.federation.unwrap_or_default().resolve()?,
            telemetry: file.telemetry.unwrap_or_default().validate()?,
            health_checks: file.health_checks.unwrap_or_default().validate()?,
            audit_log_enabled: file.audit_log_enabled.unwrap_or(d.audit_log_enabled),
            cluster: ClusterFile::resolve(file.cluster, &o.cluster, env)?,
            node_attestors: file.node_attestors.unwrap_or_default().resolve(&trust_domain)?,
            trust_domain,
        })
    }
}

fn parse_file(text: &str) -> Result<FileConfig, toml::de::Error> {
    toml::from_str(text)
}

fn opt_duration(key: &'static str, v: Option<&str>) -> Result<Option<Duration>, ConfigError> {
    v.map(|s| parse_duration(s).map_err(|reason| ConfigError::Invalid { key, reason })).transpose()
}

/// Parses a duration as SPIRE's configuration does (Go's `time.ParseDuration`, through the
/// `go-parse-duration` crate): one or more `<decimal><unit>` groups with units `ns`, `us`,
/// `µs`, `ms`, `s`, `m`, `h` (`"24h"`, `"1h30m"`, `"1.5h"`, `"90s"`). As a ward extension a
/// bare integer is seconds. Negative durations are refused.
///
/// # Errors
/// A message naming the problem.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let nanos = go_parse_duration::parse_duration(s)
        .map_err(|e| format!("bad duration {s:?}: {}", go_duration_error(&e)))?;
    let nanos = u64::try_from(nanos).map_err(|_| format!("bad duration {s:?}: negative"))?;
    Ok(Duration::from_nanos(nanos))
}

fn go_duration_error(e: &go_parse_duration::Error) -> String {
    match e {
        go_parse_duration::Error::ParseError(m) => m.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_without_file() {
        let c = Config::load(None, &Overrides::default()).unwrap();
        assert_eq!(c.trust_domain.as_str(), "example.org");
        assert_eq!(c.bind_port, 8081);
        assert_eq!(c.bind_address.to_string(), "0.0.0.0");
        assert_eq!(c.socket_path, PathBuf::from(DEFAULT_SOCKET_PATH));
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert_eq!(c.ca_ttl, Duration::from_secs(86400));
        assert_eq!(c.agent_ttl, Duration::from_secs(3600));
        assert_eq!(c.default_jwt_svid_ttl, Duration::from_secs(300));
        assert!(c.ratelimit.attestation && c.ratelimit.signing);
        assert_eq!(c.log_format, LogFormat::Text);
    }

    #[test]
    fn file_values_and_overrides() {
        let text = r#"
            trust_domain = "corp.test"
            bind_address = "127.0.0.1"
            bind_port = 9000
            default_x509_svid_ttl = "2h"
            ca_key_type = "ec-p384"
            [ratelimit]
            attestation = false
        "#;
        let o = Overrides { bind_port: Some(9001), ..Overrides::default() };
        let c = Config::from_toml(text, &o).unwrap();
        assert_eq!(c.trust_domain.as_str(), "corp.test");
        assert_eq!(c.bind_port, 9001);
        assert_eq!(c.ca_key_type, KeyType::EcP384);
        // agent_ttl follows the X509-SVID default when unset.
        assert_eq!(c.agent_ttl, Duration::from_secs(7200));
        assert!(!c.ratelimit.attestation);
        assert!(c.ratelimit.signing);
    }

    #[test]
    fn unknown_keys_rejected() {
        let err = Config::from_toml("trust_domian = \"x.org\"", &Overrides::default()).unwrap_err();
        match err {
            ConfigError::Parse { source, .. } => {
                assert!(source.to_string().contains("unknown field `trust_domian`"), "{source}")
            }
            other => panic!("unexpected {other:?}"),
        }
        let err = Config::from_toml("[ratelimit]\nsigning = true\nfoo = 1", &Overrides::default())
            .unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }));
    }

    #[test]
    fn bad_values_rejected() {
        let err =
            Config::from_toml("trust_domain = \"Bad Domain\"", &Overrides::default()).unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { key: "trust_domain", .. }));
        let err = Config::from_toml("ca_ttl = \"0s\"", &Overrides::default()).unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { key: "ca_ttl", .. }));
        let err = Config::from_toml("ca_ttl = \"5x\"", &Overrides::default()).unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { key: "ca_ttl", .. }));
    }

    #[test]
    fn observability_defaults_and_values() {
        let c = Config::from_toml("", &Overrides::default()).unwrap();
        assert_eq!(c.telemetry.prometheus, None);
        assert_eq!(c.telemetry.metric_prefix, "spire_server");
        assert!(c.telemetry.enable_hostname_label);
        assert!(!c.health_checks.listener_enabled);
        assert_eq!(c.health_checks.bind_address, "localhost");
        assert_eq!(c.health_checks.bind_port, 80);
        assert_eq!(c.health_checks.live_path, "/live");
        assert_eq!(c.health_checks.ready_path, "/ready");
        assert!(!c.audit_log_enabled);
        let text = r#"
            audit_log_enabled = true
            [telemetry.prometheus]
            port = 9988
            [health_checks]
            listener_enabled = true
            bind_port = 8080
        "#;
        let c = Config::from_toml(text, &Overrides::default()).unwrap();
        assert!(c.audit_log_enabled);
        let p = c.telemetry.prometheus.unwrap();
        assert_eq!((p.host.as_str(), p.port), ("localhost", 9988));
        assert!(c.health_checks.listener_enabled);
        assert_eq!(c.health_checks.bind_port, 8080);
        assert_eq!(c.health_checks.live_path, "/live");
    }

    #[test]
    fn observability_bad_values_rejected() {
        let o = Overrides::default();
        let err = Config::from_toml("[health_checks]\nlive_path = \"live\"", &o).unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { key: "health_checks.live_path", .. }));
        let err = Config::from_toml("[telemetry]\nmetric_prefix = \"a.b\"", &o).unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { key: "telemetry.metric_prefix", .. }));
        let err = Config::from_toml("[telemetry.prometheus]\nhots = \"x\"", &o).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("45").unwrap(), Duration::from_secs(45));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("10").is_ok());
        assert!(parse_duration("10d").is_err());
    }

    #[test]
    fn durations_as_go_parses_them() {
        for (text, want) in [
            ("1.5h", Duration::from_secs(5400)),
            ("90m", Duration::from_secs(5400)),
            ("1h30m", Duration::from_secs(5400)),
            (".5m", Duration::from_secs(30)),
            ("1m0.5s", Duration::from_millis(60_500)),
            ("300us", Duration::from_micros(300)),
            ("2h45m10.25s", Duration::from_millis(9_910_250)),
        ] {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
        for bad in ["-1h", "1.h5", "5x", "1hh", "h1", "1 h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        let c =
            Config::from_toml("default_x509_svid_ttl = \"1.5h\"", &Overrides::default()).unwrap();
        assert_eq!(c.default_x509_svid_ttl, Duration::from_secs(5400));
    }
}
