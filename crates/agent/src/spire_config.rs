//! Reading a spire-agent configuration (`spire-agent run -config`: HCL as SPIRE's docs write
//! it, or the JSON SPIRE's Helm chart renders), so a node can swap spire-agent for ward-agent
//! and keep its file.
//!
//! The file is read by `ward-spire-config` (the reader ward-server uses for SPIRE's server
//! configuration) with the table below ([`SCHEMA`]): every setting of spire-agent v1.13.3
//! (`cmd/spire-agent/cli/run/run.go`) and of the plugins ward has built in is copied to the key
//! of ward's TOML that means the same, accepted with a note for the start-up log, or refused
//! with one sentence; keys spire-agent does not have are refused too, all in one message.
//! The result is ward's [`FileConfig`], so flags and validation are the same as for TOML.
//!
//! Which format a file is ([`FileFormat::of`]): `.toml` is ward's TOML; `.conf`, `.hcl` and
//! `.json` are SPIRE's (JSON when the text opens with `{`, HCL otherwise, SPIRE's own rule);
//! any other name is told by its text (JSON, an `agent` or `plugins` block, or else TOML).

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;
use ward_spire_config::{
    Constraint, Conv, Format, PluginRule, Rule, Schema, SpireConfigError, Walk, convert, is_unset,
    set,
};

use crate::config::{ConfigError, FileConfig, parse_duration};

pub use ward_spire_config::expand_env;

/// The format of an agent configuration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// ward's TOML (`docs/agent-config.md`).
    WardToml,
    /// spire-agent's HCL.
    SpireHcl,
    /// spire-agent's configuration as JSON (what SPIRE's Helm chart renders).
    SpireJson,
}

impl FileFormat {
    /// The format of the file at `path` holding `text` (see the module docs).
    pub fn of(path: &Path, text: &str) -> Self {
        let spire = || match Format::detect(text) {
            Format::Json => Self::SpireJson,
            Format::Hcl => Self::SpireHcl,
        };
        match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => Self::WardToml,
            Some("conf" | "hcl" | "json") => spire(),
            _ if text.trim_start().starts_with('{') || text.lines().any(opens_spire_block) => {
                spire()
            }
            _ => Self::WardToml,
        }
    }
}

/// Whether `line` opens spire-agent's `agent` or `plugins` block (`agent {`, `plugins = {`),
/// which ward's TOML never does.
fn opens_spire_block(line: &str) -> bool {
    let line = line.trim_start();
    ["agent", "plugins"].iter().any(|section| {
        line.strip_prefix(section).is_some_and(|rest| {
            let rest = rest.trim_start();
            rest.strip_prefix('=').map_or(rest, str::trim_start).starts_with('{')
        })
    })
}

/// A configuration file as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// ward's settings from the file (before flags).
    pub file: FileConfig,
    /// The file's format.
    pub format: FileFormat,
    /// spire-agent settings and plugins accepted but ignored, one sentence each, to log at
    /// start-up.
    pub notes: Vec<String>,
}

/// Reads configuration `text` from the file at `path` (named in messages) in whichever
/// format it is written.
///
/// # Errors
/// [`ConfigError`]: the TOML parser's message, SPIRE's decode message, or every refused
/// spire-agent setting and plugin, one line each.
pub fn read(path: &Path, text: &str) -> Result<Loaded, ConfigError> {
    let format = FileFormat::of(path, text);
    let spire = match format {
        FileFormat::WardToml => {
            let file = FileConfig::from_toml(text)?;
            return Ok(Loaded { file, format, notes: Vec::new() });
        }
        FileFormat::SpireHcl => Format::Hcl,
        FileFormat::SpireJson => Format::Json,
    };
    let described = |e: SpireConfigError| ConfigError(e.describe(path, "ward-agent"));
    let t = ward_spire_config::translate(&SCHEMA, text, spire).map_err(described)?;
    let file = FileConfig::deserialize(toml::Value::Table(t.table)).map_err(|e| {
        ConfigError(format!("unable to decode configuration at {:?}: {e}", path.display()))
    })?;
    Ok(Loaded { file, format, notes: t.notes })
}

/// spire-agent's own checks that ward's TOML does without (ward has a default port), run
/// on a SPIRE file after the flags are merged in, in SPIRE's words.
///
/// # Errors
/// [`ConfigError`] naming the missing setting.
pub fn check_merged(format: FileFormat, merged: &FileConfig) -> Result<(), ConfigError> {
    if format != FileFormat::WardToml && merged.server_port.is_none() {
        return Err(ConfigError("server_port must be configured".into()));
    }
    Ok(())
}

/// spire-agent's configuration as ward-agent reads it.
pub const SCHEMA: Schema = Schema {
    section: "agent",
    settings: SETTINGS,
    plugins: PLUGINS,
    plugin_types: PLUGIN_TYPES,
    constraints: &[
        ("KeyManager", Constraint::ExactlyOne),
        ("NodeAttestor", Constraint::ExactlyOne),
        ("WorkloadAttestor", Constraint::AtLeastOne),
    ],
    unknown: |path| format!("{path} is not a setting of spire-agent"),
    duration: |s| parse_duration(s).map(|_| ()).map_err(|e| e.0),
};

use Conv::{Bool, Duration, Int, Lower, Str};
use Rule::{Block, Hook, Ignore, Map, Plugins, Refuse, Section};

const K8S: &str = "plugins.WorkloadAttestor.k8s.plugin_data";

/// Every setting spire-agent v1.13.3 reads, by dotted path, and what ward does with it.
pub const SETTINGS: &[(&str, Rule)] = &[
    ("agent", Block),
    ("agent.server_address", Map { to: "server_address", conv: Str }),
    ("agent.server_port", Map { to: "server_port", conv: Int }),
    ("agent.trust_domain", Map { to: "trust_domain", conv: Str }),
    ("agent.trust_bundle_path", Map { to: "trust_bundle_path", conv: Str }),
    ("agent.trust_bundle_url", Map { to: "trust_bundle_url", conv: Str }),
    ("agent.trust_bundle_format", Map { to: "trust_bundle_format", conv: Str }),
    ("agent.insecure_bootstrap", Map { to: "insecure_bootstrap", conv: Bool }),
    ("agent.join_token", Map { to: "join_token", conv: Str }),
    ("agent.join_token_file", Map { to: "join_token_file", conv: Str }),
    ("agent.data_dir", Map { to: "data_dir", conv: Str }),
    ("agent.socket_path", Map { to: "socket_path", conv: Str }),
    ("agent.admin_socket_path", Map { to: "admin_socket_path", conv: Str }),
    ("agent.log_level", Map { to: "log_level", conv: Lower }),
    ("agent.log_format", Map { to: "log_format", conv: Lower }),
    ("agent.x509_svid_cache_max_size", Hook(cache_size)),
    ("agent.jwt_svid_cache_max_size", Hook(cache_size)),
    (
        "agent.allow_unauthenticated_verifiers",
        Map { to: "allow_unauthenticated_verifiers", conv: Bool },
    ),
    ("agent.allowed_foreign_jwt_claims", Hook(foreign_claims)),
    ("agent.sds", Section("sds")),
    ("agent.sds.default_svid_name", Map { to: "sds.default_svid_name", conv: Str }),
    ("agent.sds.default_bundle_name", Map { to: "sds.default_bundle_name", conv: Str }),
    ("agent.sds.default_all_bundles_name", Map { to: "sds.default_all_bundles_name", conv: Str }),
    (
        "agent.sds.disable_spiffe_cert_validation",
        Map { to: "sds.disable_spiffe_cert_validation", conv: Bool },
    ),
    ("agent.workload_x509_svid_key_type", Hook(workload_key_type)),
    (
        "agent.retry_bootstrap",
        Ignore(
            "agent.retry_bootstrap is ignored: ward-agent tries its first node attestation once \
             and exits with status 1 when it fails",
        ),
    ),
    ("agent.rebootstrap_mode", Hook(rebootstrap_mode)),
    ("agent.rebootstrap_delay", Hook(rebootstrap_delay)),
    (
        "agent.trust_bundle_unix_socket",
        Refuse(
            "agent.trust_bundle_unix_socket is not supported: ward-agent fetches \
             trust_bundle_url over HTTPS only",
        ),
    ),
    (
        "agent.availability_target",
        Refuse(
            "agent.availability_target is not supported: ward-agent renews its SVID at half its \
             lifetime",
        ),
    ),
    (
        "agent.authorized_delegates",
        Refuse(
            "agent.authorized_delegates is not supported: ward-agent has no Delegated Identity API",
        ),
    ),
    ("agent.log_file", Refuse("agent.log_file is not supported: ward-agent logs to stderr")),
    (
        "agent.log_source_location",
        Refuse(
            "agent.log_source_location is not supported: ward-agent's log lines carry no source \
             location",
        ),
    ),
    (
        "agent.profiling_enabled",
        Refuse("agent.profiling_enabled is not supported: ward-agent has no profiling listener"),
    ),
    (
        "agent.profiling_port",
        Refuse("agent.profiling_port is not supported: ward-agent has no profiling listener"),
    ),
    (
        "agent.profiling_freq",
        Refuse("agent.profiling_freq is not supported: ward-agent has no profiling listener"),
    ),
    (
        "agent.profiling_names",
        Refuse("agent.profiling_names is not supported: ward-agent has no profiling listener"),
    ),
    ("agent.experimental", Block),
    ("agent.experimental.sync_interval", Map { to: "sync_interval", conv: Duration }),
    ("agent.experimental.use_sync_authorized_entries", Hook(use_sync_authorized_entries)),
    (
        "agent.experimental.named_pipe_name",
        Refuse(
            "invalid configuration: named_pipe_name is not supported in this platform; please \
             use socket_path instead",
        ),
    ),
    (
        "agent.experimental.admin_named_pipe_name",
        Refuse(
            "invalid configuration: admin_named_pipe_name is not supported in this platform; \
             please use admin_socket_path instead",
        ),
    ),
    (
        "agent.experimental.require_pq_kem",
        Refuse(
            "agent.experimental.require_pq_kem is not supported: ward-agent offers rustls' \
             default key exchanges",
        ),
    ),
    (
        "agent.experimental.feature_flags",
        Refuse(
            "agent.experimental.feature_flags is not supported: ward-agent has no feature flags",
        ),
    ),
    ("plugins", Plugins),
    // The plugins' data (pkg/agent/plugin/workloadattestor/{unix,k8s}).
    (
        "plugins.WorkloadAttestor.unix.plugin_data.discover_workload_path",
        Map { to: "workload_attestors.unix.discover_workload_path", conv: Bool },
    ),
    (
        "plugins.WorkloadAttestor.unix.plugin_data.workload_size_limit",
        Map { to: "workload_attestors.unix.workload_size_limit", conv: Int },
    ),
    (
        "plugins.WorkloadAttestor.k8s.plugin_data.kubelet_read_only_port",
        Map { to: "workload_attestors.k8s.kubelet_read_only_port", conv: Int },
    ),
    (
        "plugins.WorkloadAttestor.k8s.plugin_data.kubelet_secure_port",
        Map { to: "workload_attestors.k8s.kubelet_secure_port", conv: Int },
    ),
    (
        "plugins.WorkloadAttestor.k8s.plugin_data.max_poll_attempts",
        Map { to: "workload_attestors.k8s.max_poll_attempts", conv: Int },
    ),
    (
        "plugins.WorkloadAttestor.k8s.plugin_data.poll_retry_interval",
        Map { to: "workload_attestors.k8s.poll_retry_interval", conv: Duration },
    ),
    (
        "plugins.WorkloadAttestor.k8s.plugin_data.kubelet_ca_path",
        Map { to: "workload_attestors.k8s.kubelet_ca_path", conv: Str },
    ),
    (
        "plugins.WorkloadAttestor.k8s.plugin_data.skip_kubelet_verification",
        Map { to: "workload_attestors.k8s.skip_kubelet_verification", conv: Bool },
    ),
    (
        "plugins.WorkloadAttestor.k8s.plugin_data.token_path",
        Map { to: "workload_attestors.k8s.token_path", conv: Str },
    ),
    (
        "plugins.WorkloadAttestor.k8s.plugin_data.certificate_path",
        Map { to: "workload_attestors.k8s.certificate_path", conv: Str },
    ),
    (
        "plugins.WorkloadAttestor.k8s.plugin_data.private_key_path",
        Map { to: "workload_attestors.k8s.private_key_path", conv: Str },
    ),
    (
        "plugins.WorkloadAttestor.k8s.plugin_data.use_anonymous_authentication",
        Map { to: "workload_attestors.k8s.use_anonymous_authentication", conv: Bool },
    ),
    (
        "plugins.WorkloadAttestor.k8s.plugin_data.node_name_env",
        Map { to: "workload_attestors.k8s.node_name_env", conv: Str },
    ),
    (
        "plugins.WorkloadAttestor.k8s.plugin_data.node_name",
        Map { to: "workload_attestors.k8s.node_name", conv: Str },
    ),
    (
        "plugins.WorkloadAttestor.k8s.plugin_data.reload_interval",
        Map { to: "workload_attestors.k8s.reload_interval", conv: Duration },
    ),
    (
        "plugins.WorkloadAttestor.k8s.plugin_data.disable_container_selectors",
        Map { to: "workload_attestors.k8s.disable_container_selectors", conv: Bool },
    ),
    (
        "plugins.WorkloadAttestor.k8s.plugin_data.use_new_container_locator",
        Map { to: "workload_attestors.k8s.use_new_container_locator", conv: Bool },
    ),
    (
        "plugins.WorkloadAttestor.k8s.plugin_data.verbose_container_locator_logs",
        Map { to: "workload_attestors.k8s.verbose_container_locator_logs", conv: Bool },
    ),
    ("plugins.WorkloadAttestor.k8s.plugin_data.experimental", Block),
    ("plugins.WorkloadAttestor.k8s.plugin_data.experimental.sigstore", Hook(k8s_sigstore)),
    // pkg/common/telemetry/config.go: ward-agent exports no metrics.
    ("telemetry", Block),
    ("telemetry.Prometheus", Hook(metrics_sink)),
    ("telemetry.DogStatsd", Hook(metrics_sink)),
    ("telemetry.Statsd", Hook(metrics_sink)),
    ("telemetry.M3", Hook(metrics_sink)),
    (
        "telemetry.InMem",
        Ignore("telemetry.InMem is ignored: ward-agent keeps no in-memory metrics sink"),
    ),
    ("telemetry.MetricPrefix", Hook(metrics_setting)),
    ("telemetry.EnableHostnameLabel", Hook(metrics_setting)),
    ("telemetry.EnableTrustDomainLabel", Hook(metrics_setting)),
    ("telemetry.AllowedPrefixes", Hook(metrics_setting)),
    ("telemetry.BlockedPrefixes", Hook(metrics_setting)),
    ("telemetry.AllowedLabels", Hook(metrics_setting)),
    ("telemetry.BlockedLabels", Hook(metrics_setting)),
    // pkg/agent/plugin/nodeattestor/x509pop (Config)
    (
        "plugins.NodeAttestor.x509pop.plugin_data.private_key_path",
        Map { to: "node_attestor.x509pop.private_key_path", conv: Str },
    ),
    (
        "plugins.NodeAttestor.x509pop.plugin_data.certificate_path",
        Map { to: "node_attestor.x509pop.certificate_path", conv: Str },
    ),
    (
        "plugins.NodeAttestor.x509pop.plugin_data.intermediates_path",
        Map { to: "node_attestor.x509pop.intermediates_path", conv: Str },
    ),
    // pkg/agent/plugin/nodeattestor/gcpiit (IITAttestorConfig)
    (
        "plugins.NodeAttestor.gcp_iit.plugin_data.identity_token_host",
        Map { to: "node_attestor.gcp_iit.identity_token_host", conv: Str },
    ),
    (
        "plugins.NodeAttestor.gcp_iit.plugin_data.service_account",
        Map { to: "node_attestor.gcp_iit.service_account", conv: Str },
    ),
    // pkg/agent/plugin/nodeattestor/tpmdevid (Config)
    (
        "plugins.NodeAttestor.tpm_devid.plugin_data.devid_cert_path",
        Map { to: "node_attestor.tpm_devid.devid_cert_path", conv: Str },
    ),
    (
        "plugins.NodeAttestor.tpm_devid.plugin_data.devid_priv_path",
        Map { to: "node_attestor.tpm_devid.devid_priv_path", conv: Str },
    ),
    (
        "plugins.NodeAttestor.tpm_devid.plugin_data.devid_pub_path",
        Map { to: "node_attestor.tpm_devid.devid_pub_path", conv: Str },
    ),
    (
        "plugins.NodeAttestor.tpm_devid.plugin_data.devid_password",
        Map { to: "node_attestor.tpm_devid.devid_password", conv: Str },
    ),
    (
        "plugins.NodeAttestor.tpm_devid.plugin_data.owner_hierarchy_password",
        Map { to: "node_attestor.tpm_devid.owner_hierarchy_password", conv: Str },
    ),
    (
        "plugins.NodeAttestor.tpm_devid.plugin_data.endorsement_hierarchy_password",
        Map { to: "node_attestor.tpm_devid.endorsement_hierarchy_password", conv: Str },
    ),
    (
        "plugins.NodeAttestor.tpm_devid.plugin_data.tpm_device_path",
        Map { to: "node_attestor.tpm_devid.tpm_device_path", conv: Str },
    ),
    // pkg/agent/plugin/nodeattestor/azuremsi (MSIAttestorConfig)
    (
        "plugins.NodeAttestor.azure_msi.plugin_data.resource_id",
        Map { to: "node_attestor.azure_msi.resource_id", conv: Str },
    ),
    // pkg/agent/plugin/nodeattestor/k8spsat (AttestorConfig)
    (
        "plugins.NodeAttestor.k8s_psat.plugin_data.cluster",
        Map { to: "node_attestor.k8s_psat.cluster", conv: Str },
    ),
    (
        "plugins.NodeAttestor.k8s_psat.plugin_data.token_path",
        Map { to: "node_attestor.k8s_psat.token_path", conv: Str },
    ),
    // pkg/common/plugin/sshpop/sshpop.go (ClientConfig)
    (
        "plugins.NodeAttestor.sshpop.plugin_data.host_key_path",
        Map { to: "node_attestor.sshpop.host_key_path", conv: Str },
    ),
    (
        "plugins.NodeAttestor.sshpop.plugin_data.host_cert_path",
        Map { to: "node_attestor.sshpop.host_cert_path", conv: Str },
    ),
    // pkg/agent/plugin/nodeattestor/awsiid (IIDAttestorConfig)
    (
        "plugins.NodeAttestor.aws_iid.plugin_data.ec2_metadata_endpoint",
        Map { to: "node_attestor.aws_iid.ec2_metadata_endpoint", conv: Str },
    ),
];

/// spire-agent plugins ward has built in, by type and name.
pub const PLUGINS: &[(&str, &str, PluginRule)] = &[
    ("NodeAttestor", "join_token", PluginRule::Accept),
    ("NodeAttestor", "x509pop", PluginRule::Table("node_attestor.x509pop")),
    ("NodeAttestor", "gcp_iit", PluginRule::Table("node_attestor.gcp_iit")),
    ("NodeAttestor", "tpm_devid", PluginRule::Table("node_attestor.tpm_devid")),
    ("NodeAttestor", "azure_msi", PluginRule::Table("node_attestor.azure_msi")),
    ("NodeAttestor", "k8s_psat", PluginRule::Table("node_attestor.k8s_psat")),
    ("NodeAttestor", "sshpop", PluginRule::Table("node_attestor.sshpop")),
    ("NodeAttestor", "aws_iid", PluginRule::Table("node_attestor.aws_iid")),
    (
        "KeyManager",
        "disk",
        PluginRule::Ignore(
            "KeyManager \"disk\" is ward-agent's own key store: the agent key is kept with its \
             SVID in data_dir/agent-data.json (directory is not used, and spire-agent's keys are \
             not read)",
        ),
    ),
    (
        "KeyManager",
        "memory",
        PluginRule::Ignore(
            "KeyManager \"memory\" is read as ward-agent's own key store: the agent key is kept \
             with its SVID in data_dir/agent-data.json (mode 0600), so a restart does not attest \
             again",
        ),
    ),
    ("WorkloadAttestor", "unix", PluginRule::Table("workload_attestors.unix")),
    ("WorkloadAttestor", "k8s", PluginRule::Table("workload_attestors.k8s")),
    ("WorkloadAttestor", "systemd", PluginRule::Table("workload_attestors.systemd")),
];

/// Why a plugin of a spire-agent plugin type that [`PLUGINS`] does not name is refused.
pub const PLUGIN_TYPES: &[(&str, &str)] = &[
    ("KeyManager", "ward-agent keeps its key in data_dir (\"disk\" and \"memory\" are accepted)"),
    (
        "NodeAttestor",
        "ward-agent attests its node with a join token, x509pop, gcp_iit, tpm_devid, azure_msi, \
         k8s_psat, sshpop or aws_iid (NodeAttestor \"join_token\", \"x509pop\", \"gcp_iit\", \
         \"tpm_devid\", \"azure_msi\", \"k8s_psat\", \"sshpop\", \"aws_iid\")",
    ),
    ("SVIDStore", "ward-agent serves SVIDs over the Workload API and SDS only"),
    ("WorkloadAttestor", "ward-agent attests workloads with \"unix\", \"k8s\" and \"systemd\""),
];

/// `x509_svid_cache_max_size`, `jwt_svid_cache_max_size`: an integer, 0 for the default,
/// never negative (SPIRE's sentence).
fn cache_size(w: &mut Walk<'_>, path: &str, value: &Value) {
    if is_unset(value) {
        return;
    }
    let key = path.trim_start_matches("agent.");
    match convert(value, Int) {
        Ok(toml::Value::Integer(n)) if n < 0 => {
            w.refused.push(format!("{key} should not be negative"));
        }
        Ok(n) => set(&mut w.table, key, n),
        Err(why) => w.refused.push(format!("{path} {why}")),
    }
}

/// `allowed_foreign_jwt_claims`: a list of claim names.
fn foreign_claims(w: &mut Walk<'_>, path: &str, value: &Value) {
    let items = match value {
        Value::Null => return,
        Value::Array(items) => items,
        other => {
            w.refused.push(format!("{path} must be a list of strings, not {other}"));
            return;
        }
    };
    match items.iter().map(|v| convert(v, Str)).collect::<Result<Vec<_>, _>>() {
        Ok(claims) if claims.is_empty() => {}
        Ok(claims) => set(&mut w.table, "allowed_foreign_jwt_claims", toml::Value::Array(claims)),
        Err(why) => w.refused.push(format!("{path} {why}")),
    }
}

/// The text of a string setting; `None` when it is absent, or not a string (refused).
fn string(w: &mut Walk<'_>, path: &str, value: &Value) -> Option<String> {
    match convert(value, Str) {
        Ok(toml::Value::String(s)) => Some(s),
        _ if value.is_null() => None,
        _ => {
            w.refused.push(format!("{path} must be a string, not {value}"));
            None
        }
    }
}

/// `workload_x509_svid_key_type`: ward's workload keys are SPIRE's default, `ec-p256`.
fn workload_key_type(w: &mut Walk<'_>, path: &str, value: &Value) {
    let Some(kind) = string(w, path, value) else { return };
    match kind.as_str() {
        "" | "ec-p256" => {}
        "rsa-2048" => w.refused.push(
            "agent.workload_x509_svid_key_type \"rsa-2048\" is not supported: ward-agent's \
             workload keys are EC P-256 (\"ec-p256\")"
                .into(),
        ),
        other => w
            .refused
            .push(format!("key type {other:?} is unknown; must be one of [rsa-2048, ec-p256]")),
    }
}

/// `rebootstrap_mode`: `never` (SPIRE's default) is what ward-agent does.
fn rebootstrap_mode(w: &mut Walk<'_>, path: &str, value: &Value) {
    let Some(mode) = string(w, path, value) else { return };
    match mode.as_str() {
        "" | "never" => {}
        "auto" | "always" => w.refused.push(format!(
            "agent.rebootstrap_mode {mode:?} is not supported: ward-agent never fetches its \
             bootstrap bundle again once it has attested"
        )),
        other => w.refused.push(format!("unknown rebootstrap mode specified: {other}")),
    }
}

/// `rebootstrap_delay`: checked as SPIRE checks it, then unused (rebootstrapping is never on).
fn rebootstrap_delay(w: &mut Walk<'_>, path: &str, value: &Value) {
    if is_unset(value) {
        return;
    }
    if let Err(why) = w.convert(value, Duration) {
        w.refused.push(format!("{path} {why}"));
    }
}

/// `experimental.use_sync_authorized_entries`: ward-agent chooses itself, either way.
fn use_sync_authorized_entries(w: &mut Walk<'_>, _path: &str, value: &Value) {
    if !value.is_null() {
        w.notes.push(
            "agent.experimental.use_sync_authorized_entries is ignored: ward-agent calls \
             SyncAuthorizedEntries and falls back to GetAuthorizedEntries when the server lacks it"
                .into(),
        );
    }
}

/// `experimental.sigstore` of the `k8s` plugin: present at all, it asks for signature checks.
fn k8s_sigstore(w: &mut Walk<'_>, _path: &str, value: &Value) {
    if !value.is_null() {
        w.refused.push(format!(
            "{K8S}.experimental.sigstore is not supported: ward does not verify container image \
             signatures"
        ));
    }
}

/// A metrics sink: present at all (even empty, as SPIRE's `Prometheus {}`), it asks for
/// metrics ward-agent does not export.
fn metrics_sink(w: &mut Walk<'_>, path: &str, value: &Value) {
    if !value.is_null() {
        w.refused.push(format!("{path} is not supported: ward-agent exports no metrics"));
    }
}

/// A metrics setting that only shapes what a sink exports.
fn metrics_setting(w: &mut Walk<'_>, path: &str, value: &Value) {
    if !is_unset(value) {
        w.notes.push(format!("{path} is ignored: ward-agent exports no metrics"));
    }
}

#[cfg(test)]
mod tests;
