//! The mapping table: what ward does with each setting and plugin of SPIRE's server
//! configuration. Supporting one more SPIRE key is one line here (a `Map` naming ward's TOML
//! key); `docs/config.md` lists the same table for operators.

pub use ward_spire_config::{Conv, PluginRule, Rule};

use ward_spire_config::{Walk, convert, set};

use Conv::{Bool, Duration, Int, Ip, Lower, Str};
use Rule::{Block, Hook, Ignore, Map, Plugins, Refuse, Section};

/// Every setting SPIRE v1.13's server reads, by dotted path. A path not listed here is not a
/// SPIRE setting and is refused as unknown, as SPIRE refuses it. Keys match without regard to
/// case, as SPIRE's HCL decoder matches them (`Prometheus` and `prometheus` are one key).
pub const SETTINGS: &[(&str, Rule)] = &[
    ("server", Block),
    ("server.trust_domain", Map { to: "trust_domain", conv: Str }),
    ("server.bind_address", Map { to: "bind_address", conv: Ip }),
    ("server.bind_port", Map { to: "bind_port", conv: Int }),
    ("server.socket_path", Map { to: "socket_path", conv: Str }),
    ("server.data_dir", Map { to: "data_dir", conv: Str }),
    ("server.log_level", Map { to: "log_level", conv: Lower }),
    ("server.log_format", Map { to: "log_format", conv: Lower }),
    ("server.ca_key_type", Map { to: "ca_key_type", conv: Lower }),
    ("server.ca_ttl", Map { to: "ca_ttl", conv: Duration }),
    ("server.default_x509_svid_ttl", Map { to: "default_x509_svid_ttl", conv: Duration }),
    ("server.default_jwt_svid_ttl", Map { to: "default_jwt_svid_ttl", conv: Duration }),
    ("server.agent_ttl", Map { to: "agent_ttl", conv: Duration }),
    ("server.jwt_issuer", Map { to: "jwt_issuer", conv: Str }),
    ("server.ratelimit", Block),
    ("server.ratelimit.attestation", Map { to: "ratelimit.attestation", conv: Bool }),
    ("server.ratelimit.signing", Map { to: "ratelimit.signing", conv: Bool }),
    (
        "server.ca_subject",
        Ignore(
            "server.ca_subject is ignored: ward's CA certificates keep SPIRE's default subject \
             (C=US, O=SPIFFE)",
        ),
    ),
    (
        "server.admin_ids",
        Refuse(
            "server.admin_ids is not supported: ward grants admin rights to callers on the admin \
             socket and to SVIDs of registration entries marked admin",
        ),
    ),
    ("server.audit_log_enabled", Map { to: "audit_log_enabled", conv: Bool }),
    (
        "server.jwt_key_type",
        Refuse(
            "server.jwt_key_type is not supported: ward signs JWT-SVIDs with keys of ca_key_type",
        ),
    ),
    ("server.log_file", Refuse("server.log_file is not supported: ward logs to stderr")),
    (
        "server.log_source_location",
        Refuse(
            "server.log_source_location is not supported: ward's log lines carry no source location",
        ),
    ),
    ("server.federation", Hook(super::federation::walk)),
    (
        "server.prune_attested_nodes_expired_for",
        Refuse(
            "server.prune_attested_nodes_expired_for is not supported: ward keeps attested nodes \
             until they are deleted",
        ),
    ),
    (
        "server.prune_tofu_nodes",
        Refuse(
            "server.prune_tofu_nodes is not supported: ward keeps attested nodes until they are deleted",
        ),
    ),
    (
        "server.max_attested_node_info_staleness",
        Refuse(
            "server.max_attested_node_info_staleness is not supported: ward reads attested nodes \
             from its store on every call",
        ),
    ),
    (
        "server.profiling_enabled",
        Refuse("server.profiling_enabled is not supported: ward has no profiling listener"),
    ),
    (
        "server.profiling_port",
        Refuse("server.profiling_port is not supported: ward has no profiling listener"),
    ),
    (
        "server.profiling_freq",
        Refuse("server.profiling_freq is not supported: ward has no profiling listener"),
    ),
    (
        "server.profiling_names",
        Refuse("server.profiling_names is not supported: ward has no profiling listener"),
    ),
    ("server.experimental", Block),
    (
        "server.experimental.cache_reload_interval",
        Ignore(
            "server.experimental.cache_reload_interval is ignored: ward's entry cache follows every write",
        ),
    ),
    (
        "server.experimental.full_cache_reload_interval",
        Ignore(
            "server.experimental.full_cache_reload_interval is ignored: ward's entry cache follows every write",
        ),
    ),
    (
        "server.experimental.events_based_cache",
        Ignore(
            "server.experimental.events_based_cache is ignored: ward's entry cache follows every write",
        ),
    ),
    (
        "server.experimental.prune_events_older_than",
        Ignore("server.experimental.prune_events_older_than is ignored: ward keeps no event table"),
    ),
    (
        "server.experimental.event_timeout",
        Ignore("server.experimental.event_timeout is ignored: ward keeps no event table"),
    ),
    (
        "server.experimental.sql_transaction_timeout",
        Ignore("server.experimental.sql_transaction_timeout is ignored: ward has no SQL database"),
    ),
    (
        "server.experimental.auth_opa_policy_engine",
        Refuse(
            "server.experimental.auth_opa_policy_engine is not supported: ward's authorization \
             policy is built in",
        ),
    ),
    (
        "server.experimental.feature_flags",
        Refuse("server.experimental.feature_flags is not supported: ward has no feature flags"),
    ),
    (
        "server.experimental.require_pq_kem",
        Refuse(
            "server.experimental.require_pq_kem is not supported: ward offers rustls' default key exchanges",
        ),
    ),
    (
        "server.experimental.named_pipe_name",
        Refuse(
            "server.experimental.named_pipe_name is not supported: ward runs on Unix sockets only",
        ),
    ),
    ("plugins", Plugins),
    // pkg/server/plugin/nodeattestor/x509pop (Config)
    (
        "plugins.NodeAttestor.x509pop.plugin_data.mode",
        Map { to: "node_attestors.x509pop.mode", conv: Str },
    ),
    (
        "plugins.NodeAttestor.x509pop.plugin_data.ca_bundle_path",
        Map { to: "node_attestors.x509pop.ca_bundle_path", conv: Str },
    ),
    ("plugins.NodeAttestor.x509pop.plugin_data.ca_bundle_paths", Hook(ca_bundle_paths)),
    (
        "plugins.NodeAttestor.x509pop.plugin_data.agent_path_template",
        Map { to: "node_attestors.x509pop.agent_path_template", conv: Str },
    ),
    (
        "plugins.NodeAttestor.x509pop.plugin_data.spiffe_prefix",
        Ignore(
            "NodeAttestor \"x509pop\": spiffe_prefix is ignored: it applies to mode \"spiffe\" \
             only, which ward does not have",
        ),
    ),
    // pkg/server/plugin/nodeattestor/gcpiit (IITAttestorConfig)
    ("plugins.NodeAttestor.gcp_iit.plugin_data.projectid_allow_list", Hook(projectid_allow_list)),
    (
        "plugins.NodeAttestor.gcp_iit.plugin_data.agent_path_template",
        Map { to: "node_attestors.gcp_iit.agent_path_template", conv: Str },
    ),
    (
        "plugins.NodeAttestor.gcp_iit.plugin_data.use_instance_metadata",
        Map { to: "node_attestors.gcp_iit.use_instance_metadata", conv: Bool },
    ),
    (
        "plugins.NodeAttestor.gcp_iit.plugin_data.service_account_file",
        Map { to: "node_attestors.gcp_iit.service_account_file", conv: Str },
    ),
    ("plugins.NodeAttestor.gcp_iit.plugin_data.allowed_label_keys", Hook(allowed_label_keys)),
    ("plugins.NodeAttestor.gcp_iit.plugin_data.allowed_metadata_keys", Hook(allowed_metadata_keys)),
    (
        "plugins.NodeAttestor.gcp_iit.plugin_data.max_metadata_value_size",
        Map { to: "node_attestors.gcp_iit.max_metadata_value_size", conv: Int },
    ),
    // pkg/server/plugin/nodeattestor/tpmdevid (Config)
    (
        "plugins.NodeAttestor.tpm_devid.plugin_data.devid_ca_path",
        Map { to: "node_attestors.tpm_devid.devid_ca_path", conv: Str },
    ),
    (
        "plugins.NodeAttestor.tpm_devid.plugin_data.endorsement_ca_path",
        Map { to: "node_attestors.tpm_devid.endorsement_ca_path", conv: Str },
    ),
    // pkg/server/plugin/nodeattestor/azuremsi (MSIAttestorConfig, TenantConfig)
    ("plugins.NodeAttestor.azure_msi.plugin_data.tenants", Hook(azure_tenants)),
    (
        "plugins.NodeAttestor.azure_msi.plugin_data.agent_path_template",
        Map { to: "node_attestors.azure_msi.agent_path_template", conv: Str },
    ),
    // pkg/server/plugin/nodeattestor/k8spsat (AttestorConfig, ClusterConfig)
    ("plugins.NodeAttestor.k8s_psat.plugin_data.clusters", Hook(psat_clusters)),
    // pkg/common/plugin/sshpop/sshpop.go (ServerConfig)
    ("plugins.NodeAttestor.sshpop.plugin_data.cert_authorities", Hook(cert_authorities)),
    (
        "plugins.NodeAttestor.sshpop.plugin_data.cert_authorities_path",
        Map { to: "node_attestors.sshpop.cert_authorities_path", conv: Str },
    ),
    (
        "plugins.NodeAttestor.sshpop.plugin_data.canonical_domain",
        Map { to: "node_attestors.sshpop.canonical_domain", conv: Str },
    ),
    (
        "plugins.NodeAttestor.sshpop.plugin_data.agent_path_template",
        Map { to: "node_attestors.sshpop.agent_path_template", conv: Str },
    ),
    // pkg/server/plugin/nodeattestor/awsiid (IIDAttestorConfig, SessionConfig)
    (
        "plugins.NodeAttestor.aws_iid.plugin_data.agent_path_template",
        Map { to: "node_attestors.aws_iid.agent_path_template", conv: Str },
    ),
    (
        "plugins.NodeAttestor.aws_iid.plugin_data.partition",
        Map { to: "node_attestors.aws_iid.partition", conv: Str },
    ),
    (
        "plugins.NodeAttestor.aws_iid.plugin_data.access_key_id",
        Map { to: "node_attestors.aws_iid.access_key_id", conv: Str },
    ),
    (
        "plugins.NodeAttestor.aws_iid.plugin_data.secret_access_key",
        Map { to: "node_attestors.aws_iid.secret_access_key", conv: Str },
    ),
    (
        "plugins.NodeAttestor.aws_iid.plugin_data.skip_block_device",
        Map { to: "node_attestors.aws_iid.skip_block_device", conv: Bool },
    ),
    (
        "plugins.NodeAttestor.aws_iid.plugin_data.disable_instance_profile_selectors",
        Map { to: "node_attestors.aws_iid.disable_instance_profile_selectors", conv: Bool },
    ),
    (
        "plugins.NodeAttestor.aws_iid.plugin_data.account_ids_for_local_validation",
        Hook(account_ids_for_local_validation),
    ),
    (
        "plugins.NodeAttestor.aws_iid.plugin_data.assume_role",
        Refuse(
            "NodeAttestor \"aws_iid\": assume_role is not supported: ward calls EC2 and IAM \
             with the configured or environment credentials and does not assume roles (STS)",
        ),
    ),
    (
        "plugins.NodeAttestor.aws_iid.plugin_data.verify_organization",
        Refuse(
            "NodeAttestor \"aws_iid\": verify_organization is not supported: ward does not call \
             AWS Organizations (ListAccounts)",
        ),
    ),
    (
        "plugins.NodeAttestor.aws_iid.plugin_data.validate_eks_cluster_membership",
        Refuse(
            "NodeAttestor \"aws_iid\": validate_eks_cluster_membership is not supported: ward \
             does not call EKS and Auto Scaling",
        ),
    ),
    // pkg/common/telemetry/config.go (FileConfig)
    ("telemetry", Block),
    ("telemetry.Prometheus", Section("telemetry.prometheus")),
    ("telemetry.Prometheus.host", Map { to: "telemetry.prometheus.host", conv: Str }),
    ("telemetry.Prometheus.port", Map { to: "telemetry.prometheus.port", conv: Int }),
    ("telemetry.MetricPrefix", Map { to: "telemetry.metric_prefix", conv: Str }),
    ("telemetry.EnableHostnameLabel", Map { to: "telemetry.enable_hostname_label", conv: Bool }),
    (
        "telemetry.EnableTrustDomainLabel",
        Map { to: "telemetry.enable_trust_domain_label", conv: Bool },
    ),
    (
        "telemetry.DogStatsd",
        Refuse("telemetry.DogStatsd is not supported: ward exports metrics to Prometheus only"),
    ),
    (
        "telemetry.Statsd",
        Refuse("telemetry.Statsd is not supported: ward exports metrics to Prometheus only"),
    ),
    (
        "telemetry.M3",
        Refuse("telemetry.M3 is not supported: ward exports metrics to Prometheus only"),
    ),
    ("telemetry.InMem", Ignore("telemetry.InMem is ignored: ward keeps no in-memory metrics sink")),
    (
        "telemetry.AllowedPrefixes",
        Refuse("telemetry.AllowedPrefixes is not supported: ward exports every metric it has"),
    ),
    (
        "telemetry.BlockedPrefixes",
        Refuse("telemetry.BlockedPrefixes is not supported: ward exports every metric it has"),
    ),
    (
        "telemetry.AllowedLabels",
        Refuse("telemetry.AllowedLabels is not supported: ward exports every label it has"),
    ),
    (
        "telemetry.BlockedLabels",
        Refuse("telemetry.BlockedLabels is not supported: ward exports every label it has"),
    ),
];

/// Plugins ward accepts, or refuses with a reason of their own, by type and name.
pub const PLUGINS: &[(&str, &str, PluginRule)] = &[
    (
        "DataStore",
        "sql",
        PluginRule::Ignore(
            "DataStore \"sql\" is ignored: ward keeps its state in its own store under data_dir; \
             copy entries, federation relationships and federated bundles over with \
             `ward-server migrate`",
        ),
    ),
    (
        "KeyManager",
        "disk",
        PluginRule::Ignore(
            "KeyManager \"disk\" is ward's own key store: CA keys live under data_dir/ca/keys \
             (keys_path is not used, and SPIRE's keys are not imported)",
        ),
    ),
    (
        "KeyManager",
        "memory",
        PluginRule::Ignore(
            "KeyManager \"memory\" is read as ward's disk key store: CA keys live under \
             data_dir/ca/keys and survive restarts",
        ),
    ),
    ("NodeAttestor", "join_token", PluginRule::Accept),
    ("NodeAttestor", "x509pop", PluginRule::Table("node_attestors.x509pop")),
    ("NodeAttestor", "gcp_iit", PluginRule::Table("node_attestors.gcp_iit")),
    ("NodeAttestor", "tpm_devid", PluginRule::Table("node_attestors.tpm_devid")),
    ("NodeAttestor", "azure_msi", PluginRule::Table("node_attestors.azure_msi")),
    ("NodeAttestor", "k8s_psat", PluginRule::Table("node_attestors.k8s_psat")),
    ("NodeAttestor", "sshpop", PluginRule::Table("node_attestors.sshpop")),
    ("NodeAttestor", "aws_iid", PluginRule::Table("node_attestors.aws_iid")),
    (
        "UpstreamAuthority",
        "disk",
        PluginRule::Refuse(
            "plugin UpstreamAuthority \"disk\" is not supported: ward's CA is self-signed",
        ),
    ),
];

/// Why a plugin of a known type that [`PLUGINS`] does not name is refused.
pub const PLUGIN_TYPES: &[(&str, &str)] = &[
    ("BundlePublisher", "ward publishes bundles nowhere but its own API"),
    ("CredentialComposer", "ward does not customise the contents of SVIDs and CA certificates"),
    ("DataStore", "ward keeps its state in its own store (only \"sql\" is accepted, and ignored)"),
    ("KeyManager", "ward keeps CA keys on disk (only \"disk\" and \"memory\" are accepted)"),
    (
        "NodeAttestor",
        "ward attests agents with join tokens, x509pop, gcp_iit, tpm_devid, azure_msi, k8s_psat, \
         sshpop and aws_iid only (NodeAttestor \"join_token\", \"x509pop\", \"gcp_iit\", \
         \"tpm_devid\", \"azure_msi\", \"k8s_psat\", \"sshpop\", \"aws_iid\")",
    ),
    ("Notifier", "ward has no notifiers"),
    ("UpstreamAuthority", "ward's CA is self-signed"),
];

/// `cert_authorities`: a list of `authorized_keys` lines.
fn cert_authorities(w: &mut Walk<'_>, path: &str, value: &serde_json::Value) {
    string_list(w, path, value, "node_attestors.sshpop.cert_authorities");
}

/// gcp_iit's `allowed_label_keys`: a list of label keys.
fn allowed_label_keys(w: &mut Walk<'_>, path: &str, value: &serde_json::Value) {
    string_list(w, path, value, "node_attestors.gcp_iit.allowed_label_keys");
}

/// gcp_iit's `allowed_metadata_keys`: a list of metadata keys.
fn allowed_metadata_keys(w: &mut Walk<'_>, path: &str, value: &serde_json::Value) {
    string_list(w, path, value, "node_attestors.gcp_iit.allowed_metadata_keys");
}

/// A list of strings at `path`, set as `to`.
fn string_list(w: &mut Walk<'_>, path: &str, value: &serde_json::Value, to: &str) {
    let items = match value {
        serde_json::Value::Null => return,
        serde_json::Value::Array(items) => items,
        other => {
            w.refused.push(format!("{path} must be a list of strings, not {other}"));
            return;
        }
    };
    match items.iter().map(|v| convert(v, Str)).collect::<Result<Vec<_>, _>>() {
        Ok(list) => set(&mut w.table, to, toml::Value::Array(list)),
        Err(why) => w.refused.push(format!("{path} {why}")),
    }
}

/// `account_ids_for_local_validation`: a list of AWS account IDs.
fn account_ids_for_local_validation(w: &mut Walk<'_>, path: &str, value: &serde_json::Value) {
    string_list(w, path, value, "node_attestors.aws_iid.account_ids_for_local_validation");
}

/// `ca_bundle_paths`: a list of file names.
fn ca_bundle_paths(w: &mut Walk<'_>, path: &str, value: &serde_json::Value) {
    string_list(w, path, value, "node_attestors.x509pop.ca_bundle_paths");
}

/// `projectid_allow_list`: a list of project IDs.
fn projectid_allow_list(w: &mut Walk<'_>, path: &str, value: &serde_json::Value) {
    string_list(w, path, value, "node_attestors.gcp_iit.projectid_allow_list");
}

/// `tenants`: a block of tenant blocks, each with string settings, copied as
/// `node_attestors.azure_msi.tenants.<tenant ID>` (`resource_id`, `subscription_id`, `app_id`,
/// `app_secret`; ward's reader refuses unknown keys).
fn azure_tenants(w: &mut Walk<'_>, path: &str, value: &serde_json::Value) {
    let serde_json::Value::Object(tenants) = value else {
        if !value.is_null() {
            w.refused.push(format!("{path} must be a block of tenant blocks"));
        }
        return;
    };
    for (id, body) in tenants {
        let mut table = toml::Table::new();
        for (key, v) in body.as_object().into_iter().flatten() {
            match convert(v, Str) {
                Ok(v) => {
                    table.insert(key.clone(), v);
                }
                Err(why) => w.refused.push(format!("{path}.{id}.{key} {why}")),
            }
        }
        let to = format!("node_attestors.azure_msi.tenants.{id}");
        set(&mut w.table, &to, toml::Value::Table(table));
    }
}

/// The settings of one `k8s_psat` cluster: SPIRE's `ClusterConfig` keys and conversions.
const PSAT_CLUSTER_KEYS: &[(&str, Conv, bool)] = &[
    ("service_account_allow_list", Str, true),
    ("audience", Str, true),
    ("kube_config_file", Str, false),
    ("allowed_node_label_keys", Str, true),
    ("allowed_pod_label_keys", Str, true),
];

/// `clusters = { "<name>" = { ... } }`: one `[node_attestors.k8s_psat.clusters.<name>]` table
/// per cluster (a name may hold dots, so the tables are built here and not by dotted path).
fn psat_clusters(w: &mut Walk<'_>, path: &str, value: &serde_json::Value) {
    use serde_json::Value;
    // HCL blocks may arrive as a list of objects: their members are merged.
    let objects: Vec<&serde_json::Map<String, Value>> = match value {
        Value::Null => return,
        Value::Object(o) => vec![o],
        Value::Array(items) if items.iter().all(Value::is_object) => {
            items.iter().filter_map(Value::as_object).collect()
        }
        _ => {
            w.refused.push(format!("{path} must map cluster names to blocks"));
            return;
        }
    };
    let mut clusters = toml::Table::new();
    for (name, cluster) in objects.into_iter().flatten() {
        let settings: Vec<&serde_json::Map<String, Value>> = match cluster {
            Value::Object(o) => vec![o],
            Value::Array(items) if items.iter().all(Value::is_object) => {
                items.iter().filter_map(Value::as_object).collect()
            }
            _ => {
                w.refused.push(format!("{path}.{name} must be a block"));
                continue;
            }
        };
        let mut table = toml::Table::new();
        for (key, v) in settings.into_iter().flatten() {
            let Some((_, conv, list)) =
                PSAT_CLUSTER_KEYS.iter().find(|(k, ..)| k.eq_ignore_ascii_case(key))
            else {
                w.refused.push(format!(
                    "{path}.{name}.{key} is not a k8s_psat cluster setting (SPIRE reads {})",
                    PSAT_CLUSTER_KEYS.iter().map(|(k, ..)| *k).collect::<Vec<_>>().join(", ")
                ));
                continue;
            };
            let ward_key = PSAT_CLUSTER_KEYS
                .iter()
                .map(|(k, ..)| *k)
                .find(|k| k.eq_ignore_ascii_case(key))
                .unwrap_or(key);
            let converted = if *list {
                match v {
                    // `audience` set to nothing is kept: it means "no audience", not the default.
                    Value::Null => continue,
                    Value::Array(items) => items
                        .iter()
                        .map(|i| convert(i, *conv))
                        .collect::<Result<Vec<_>, _>>()
                        .map(toml::Value::Array),
                    other => Err(format!("must be a list of strings, not {other}")),
                }
            } else {
                if v.is_null() {
                    continue;
                }
                convert(v, *conv)
            };
            match converted {
                Ok(c) => {
                    table.insert(ward_key.to_owned(), c);
                }
                Err(why) => w.refused.push(format!("{path}.{name}.{key} {why}")),
            }
        }
        clusters.insert(name.clone(), toml::Value::Table(table));
    }
    set(&mut w.table, "node_attestors.k8s_psat.clusters", toml::Value::Table(clusters));
}
