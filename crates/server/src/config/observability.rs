//! The configuration tables for telemetry, health checks and the audit log, as SPIRE names
//! them: `[telemetry]` with `[telemetry.prometheus]`, `[health_checks]`, and the top-level
//! `audit_log_enabled`.

use serde::Deserialize;

use super::ConfigError;

/// The metric name prefix SPIRE's server uses (its go-metrics service name).
pub const DEFAULT_METRIC_PREFIX: &str = "spire_server";

/// The `[telemetry]` table. Metrics are collected only when a sink (Prometheus) is set.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// `[telemetry.prometheus]`: serve `/metrics` (any path answers) in Prometheus text
    /// format. None (the default): no metrics endpoint.
    pub prometheus: Option<PrometheusConfig>,
    /// Prefix of every metric name (SPIRE's `MetricPrefix`); default `spire_server`.
    pub metric_prefix: String,
    /// Label every metric with `host="<hostname>"` (SPIRE's `EnableHostnameLabel`, on by
    /// default).
    pub enable_hostname_label: bool,
    /// Label every metric with `trust_domain_id="<trust domain>"` (SPIRE's
    /// `EnableTrustDomainLabel`, off by default).
    pub enable_trust_domain_label: bool,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            prometheus: None,
            metric_prefix: DEFAULT_METRIC_PREFIX.to_owned(),
            enable_hostname_label: true,
            enable_trust_domain_label: false,
        }
    }
}

/// The `[telemetry.prometheus]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrometheusConfig {
    /// Host name or IP address to listen on; default `localhost` (as SPIRE).
    pub host: String,
    /// Port to listen on; `0` (the default, as SPIRE's unset port) picks a free port.
    pub port: u16,
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        Self { host: "localhost".to_owned(), port: 0 }
    }
}

/// The `[health_checks]` table: SPIRE's HTTP liveness and readiness listener.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthChecksConfig {
    /// Serve the listener at all; default off (as SPIRE).
    pub listener_enabled: bool,
    /// Host name or IP address; default `localhost` (as SPIRE).
    pub bind_address: String,
    /// Port; default 80 (as SPIRE). `0` picks a free port.
    pub bind_port: u16,
    /// Path of the liveness check; default `/live`.
    pub live_path: String,
    /// Path of the readiness check; default `/ready`.
    pub ready_path: String,
}

impl Default for HealthChecksConfig {
    fn default() -> Self {
        Self {
            listener_enabled: false,
            bind_address: "localhost".to_owned(),
            bind_port: 80,
            live_path: "/live".to_owned(),
            ready_path: "/ready".to_owned(),
        }
    }
}

impl TelemetryConfig {
    pub(super) fn validate(self) -> Result<Self, ConfigError> {
        let prefix_ok = !self.metric_prefix.is_empty()
            && self.metric_prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !prefix_ok {
            return Err(ConfigError::Invalid {
                key: "telemetry.metric_prefix",
                reason: "must be letters, digits and underscores".into(),
            });
        }
        if let Some(p) = &self.prometheus
            && p.host.trim().is_empty()
        {
            return Err(ConfigError::Invalid {
                key: "telemetry.prometheus.host",
                reason: "must not be empty".into(),
            });
        }
        Ok(self)
    }
}

impl HealthChecksConfig {
    pub(super) fn validate(self) -> Result<Self, ConfigError> {
        for (key, path) in [
            ("health_checks.live_path", &self.live_path),
            ("health_checks.ready_path", &self.ready_path),
        ] {
            if !path.starts_with('/') {
                return Err(ConfigError::Invalid { key, reason: "must start with /".into() });
            }
        }
        if self.live_path == self.ready_path {
            return Err(ConfigError::Invalid {
                key: "health_checks.ready_path",
                reason: "must differ from live_path".into(),
            });
        }
        if self.bind_address.trim().is_empty() {
            return Err(ConfigError::Invalid {
                key: "health_checks.bind_address",
                reason: "must not be empty".into(),
            });
        }
        Ok(self)
    }
}
