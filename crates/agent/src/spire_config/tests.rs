use std::path::PathBuf;

use super::*;
use crate::config::{BootstrapTrust, BundleFormat, ServerAddressSetting, Settings, configured};

fn fixture(name: &str) -> (PathBuf, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata/spire").join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    (path, text)
}

fn read_fixture(name: &str) -> Result<Loaded, ConfigError> {
    let (path, text) = fixture(name);
    read(&path, &text)
}

fn settings(file: FileConfig) -> Settings {
    Settings::from_file_config_env(file, |_| Ok(String::new()), |_| Some("node-1".into())).unwrap()
}

/// The sentences of a refusal (the lines after the first).
fn refusals(e: &ConfigError) -> Vec<String> {
    e.0.lines().skip(1).map(|l| l.trim_start_matches("  - ").to_owned()).collect()
}

#[test]
fn the_quickstart_hcl_becomes_wards_settings() {
    let loaded = read_fixture("agent.conf").unwrap();
    assert_eq!(loaded.format, FileFormat::SpireHcl);
    let f = &loaded.file;
    assert_eq!(
        f.server_address,
        Some(ServerAddressSetting::One("spire-server.example.org".into()))
    );
    assert_eq!(f.server_port, Some(8081));
    assert_eq!(f.trust_domain.as_deref(), Some("example.org"));
    assert_eq!(f.data_dir.as_deref(), Some(Path::new("/var/lib/spire/agent")));
    assert_eq!(f.socket_path.as_deref(), Some(Path::new("/run/spire/sockets/agent.sock")));
    assert_eq!(f.log_level.as_deref(), Some("debug"));
    assert_eq!(f.sync_interval.as_deref(), Some("10s"));
    assert_eq!(f.join_token.as_deref(), Some("6a7b6f3e-0c1d-4e8a-9b2f-3d4c5e6f7a8b"));
    assert_eq!(
        loaded.notes,
        vec![PLUGINS.iter().find(|(k, n, _)| *k == "KeyManager" && *n == "memory").map_or(
            String::new(),
            |(.., r)| match r {
                PluginRule::Ignore(note) => (*note).to_owned(),
                _ => String::new(),
            }
        )]
    );
    check_merged(loaded.format, f).unwrap();
    let s = settings(loaded.file);
    assert_eq!(s.server_port, 8081);
    assert_eq!(s.sync_interval, std::time::Duration::from_secs(10));
    assert_eq!(
        s.bootstrap,
        BootstrapTrust::Path("/etc/spire/bootstrap.crt".into(), BundleFormat::Pem)
    );
    let unix = s.workload_attestors.unix.unwrap();
    assert!(unix.discover_workload_path);
    let k8s = s.workload_attestors.k8s.unwrap();
    match k8s.kubelet {
        ward_attest::k8s::KubeletSettings::Secure(secure) => {
            assert_eq!(secure.port, 10250);
            assert_eq!(secure.node_name.as_deref(), Some("node-1"));
            assert_eq!(secure.verification, ward_attest::k8s::KubeletVerification::Skip);
        }
        other => panic!("not the secure port: {other:?}"),
    }
    assert!(!s.workload_attestors.systemd);
}

#[test]
fn the_helm_chart_json_is_read_with_its_health_listener() {
    let (path, text) = fixture("helm-agent-join-token.json");
    let loaded = read(&path, &text).unwrap();
    assert_eq!(loaded.format, FileFormat::SpireJson);
    let f = &loaded.file;
    assert_eq!(f.server_port, Some(443));
    assert_eq!(f.trust_bundle_format.as_deref(), Some("pem"));
    let sds = f.sds.clone().unwrap();
    assert_eq!(sds.default_svid_name.as_deref(), Some("default"));
    assert_eq!(sds.default_all_bundles_name.as_deref(), Some("ALL"));
    assert_eq!(sds.disable_spiffe_cert_validation, Some(false));
    let attestors = f.workload_attestors.clone().unwrap();
    assert_eq!(attestors.unix, Some(ward_attest::UnixConfig::default()));
    let k8s = attestors.k8s.unwrap();
    assert_eq!(k8s.kubelet_ca_path, "/hostCert/kubelet.crt");
    assert_eq!(k8s.use_new_container_locator, Some(true));
    assert_eq!(attestors.systemd, None);
    let mut merged = loaded.file.clone();
    merged.join_token = Some("token".into());
    let s = settings(merged);
    assert_eq!(s.socket_path, Path::new("/tmp/spire-agent/public/spire-agent.sock"));
    assert_eq!(s.sds.default_bundle_name, "ROOTCA");
    let health = s.health_checks.unwrap();
    assert_eq!((health.bind_address.as_str(), health.bind_port), ("0.0.0.0", 9982));
    assert_eq!((health.live_path.as_str(), health.ready_path.as_str()), ("/live", "/ready"));
}

#[test]
fn everything_ward_agent_lacks_is_refused_one_sentence_each() {
    let e = read_fixture("agent-unsupported.conf").unwrap_err();
    assert_eq!(
        refusals(&e),
        vec![
            "agent.availability_target is not supported: ward-agent renews its SVID at half its \
             lifetime",
            "agent.experimental.sync_interval is not a duration: invalid duration \"often\"",
            "agent.log_file is not supported: ward-agent logs to stderr",
            "agent.rebootstrap_mode \"auto\" is not supported: ward-agent never fetches its \
             bootstrap bundle again once it has attested",
            "agent.sds_typo is not a setting of spire-agent",
            "agent.trust_bundle_unix_socket is not supported: ward-agent fetches trust_bundle_url \
             over HTTPS only",
            "agent.workload_x509_svid_key_type \"rsa-2048\" is not supported: ward-agent's \
             workload keys are EC P-256 (\"ec-p256\")",
            "x509_svid_cache_max_size should not be negative",
            "plugin NodeAttestor \"http_challenge\" is not supported: ward-agent attests its node \
             with a join token, x509pop, gcp_iit, tpm_devid, azure_msi, k8s_psat, sshpop or \
             aws_iid (NodeAttestor \"join_token\", \"x509pop\", \"gcp_iit\", \"tpm_devid\", \
             \"azure_msi\", \"k8s_psat\", \"sshpop\", \"aws_iid\")",
            "plugin SVIDStore \"aws_secretsmanager\" is not supported: ward-agent serves SVIDs \
             over the Workload API and SDS only",
            "plugin WorkloadAttestor \"docker\" is not supported: ward-agent attests workloads \
             with \"unix\", \"k8s\" and \"systemd\"",
            "plugins.WorkloadAttestor.unix.plugin_data.discover_workload_path must be true or \
             false, not \"maybe\"",
            "telemetry.Prometheus is not supported: ward-agent exports no metrics",
        ]
    );
}

#[test]
fn spire_agents_required_sections_and_plugin_counts_use_its_words() {
    let path = Path::new("agent.conf");
    let e = read(path, "agent {\n  trust_domain = \"example.org\"\n}\n").unwrap_err();
    assert_eq!(refusals(&e), vec!["plugins section must be configured"]);
    let e = read(path, "plugins {\n  NodeAttestor \"join_token\" {}\n}\n").unwrap_err();
    assert_eq!(
        refusals(&e),
        vec![
            "agent section must be configured",
            "plugin type \"KeyManager\" constraint not satisfied: expected exactly 1 but got 0",
            "plugin type \"WorkloadAttestor\" constraint not satisfied: expected at least 1 but \
             got 0",
        ]
    );
    let file = read(
        path,
        "agent {\n  server_address = \"x\"\n}\nplugins {\n  NodeAttestor \"join_token\" {}\n  \
         KeyManager \"disk\" {}\n  WorkloadAttestor \"systemd\" {}\n}\n",
    )
    .unwrap();
    assert_eq!(
        check_merged(file.format, &file.file),
        Err(ConfigError("server_port must be configured".into()))
    );
    assert_eq!(
        file.file.workload_attestors.unwrap().systemd,
        Some(crate::config::SystemdConfig {})
    );
    check_merged(FileFormat::WardToml, &FileConfig::default()).unwrap();
}

#[test]
fn settings_with_a_shape_of_their_own() {
    let conf = |agent: &str| {
        format!(
            "agent {{\n{agent}\n}}\nplugins {{\n  NodeAttestor \"join_token\" {{}}\n  \
             KeyManager \"memory\" {{}}\n  WorkloadAttestor \"unix\" {{}}\n}}\n"
        )
    };
    let path = Path::new("agent.hcl");
    let ok = read(
        path,
        &conf(
            "  workload_x509_svid_key_type = \"ec-p256\"\n  rebootstrap_mode = \"never\"\n  \
             rebootstrap_delay = \"10m\"\n  jwt_svid_cache_max_size = \"50\"\n  \
             allowed_foreign_jwt_claims = [\"group\", \"tenant\"]\n  experimental {\n    \
             use_sync_authorized_entries = false\n  }",
        ),
    )
    .unwrap();
    assert_eq!(ok.file.jwt_svid_cache_max_size, Some(50));
    assert_eq!(ok.file.allowed_foreign_jwt_claims, Some(vec!["group".into(), "tenant".into()]));
    assert_eq!(ok.notes.len(), 2, "{:?}", ok.notes);
    assert!(ok.notes[0].starts_with("agent.experimental.use_sync_authorized_entries is ignored"));
    let e = read(
        path,
        &conf(
            "  workload_x509_svid_key_type = \"ed25519\"\n  rebootstrap_mode = \"sometimes\"\n  \
             rebootstrap_delay = \"soon\"\n  allowed_foreign_jwt_claims = \"group\"",
        ),
    )
    .unwrap_err();
    assert_eq!(
        refusals(&e),
        vec![
            "agent.allowed_foreign_jwt_claims must be a list of strings, not \"group\"",
            "agent.rebootstrap_delay is not a duration: invalid duration \"soon\"",
            "unknown rebootstrap mode specified: sometimes",
            "key type \"ed25519\" is unknown; must be one of [rsa-2048, ec-p256]",
        ]
    );
    let e = read(
        path,
        "agent {}\nplugins {\n  NodeAttestor \"join_token\" {}\n  KeyManager \"memory\" {}\n  \
         WorkloadAttestor \"k8s\" {\n    plugin_data {\n      experimental {\n        \
         sigstore {}\n      }\n    }\n  }\n}\n",
    )
    .unwrap_err();
    assert_eq!(
        refusals(&e),
        vec![
            "plugins.WorkloadAttestor.k8s.plugin_data.experimental.sigstore is not supported: \
             ward does not verify container image signatures"
        ]
    );
}

#[test]
fn the_format_comes_from_the_name_then_the_text() {
    let hcl = "agent {\n}\n";
    assert_eq!(FileFormat::of(Path::new("a.toml"), hcl), FileFormat::WardToml);
    assert_eq!(FileFormat::of(Path::new("a.conf"), hcl), FileFormat::SpireHcl);
    assert_eq!(FileFormat::of(Path::new("a.hcl"), hcl), FileFormat::SpireHcl);
    assert_eq!(FileFormat::of(Path::new("a.conf"), " {\"agent\": {}}"), FileFormat::SpireJson);
    assert_eq!(FileFormat::of(Path::new("a.json"), "agent {}"), FileFormat::SpireHcl);
    assert_eq!(FileFormat::of(Path::new("agent"), "plugins = {\n}\n"), FileFormat::SpireHcl);
    assert_eq!(FileFormat::of(Path::new("agent"), "{}"), FileFormat::SpireJson);
    assert_eq!(
        FileFormat::of(Path::new("agent"), "# agent {\nagent_name = 1\n"),
        FileFormat::WardToml
    );
    // A TOML file is read as TOML, whatever it holds.
    let e = read(Path::new("a.toml"), "agent {\n}\n").unwrap_err();
    assert!(e.0.starts_with("unable to decode configuration"), "{e}");
}

#[test]
fn every_mapped_key_is_a_key_of_wards_toml() {
    // A table holding every `Map` target, read by ward's own TOML reader (which refuses
    // unknown keys): a typo in the table fails here.
    let mut table = toml::Table::new();
    for (_, rule) in SETTINGS {
        if let Rule::Map { to, conv } = rule {
            let v = match conv {
                Int => toml::Value::Integer(1),
                Bool => toml::Value::Boolean(true),
                Duration => toml::Value::String("1s".into()),
                Conv::Ip | Str | Lower => toml::Value::String("x".into()),
            };
            set(&mut table, to, v);
        }
    }
    FileConfig::from_toml(&toml::to_string(&table).unwrap()).unwrap();
}

/// A spire-agent file whose plugins are a memory key manager, the unix workload attestor and
/// `node_attestor` (an HCL block).
fn agent_conf_with(node_attestor: &str) -> String {
    format!(
        r#"
agent {{
    data_dir = "/d"
    server_address = "spire-server"
    server_port = "8081"
    trust_domain = "example.org"
    insecure_bootstrap = true
}}
plugins {{
    KeyManager "memory" {{
        plugin_data {{}}
    }}
{node_attestor}
    WorkloadAttestor "unix" {{
        plugin_data {{}}
    }}
}}
"#
    )
}

#[test]
fn the_x509pop_node_attestor_becomes_wards_table() {
    let text = agent_conf_with(
        r#"    NodeAttestor "x509pop" {
        plugin_data {
            private_key_path = "/opt/spire/agent.key.pem"
            certificate_path = "/opt/spire/agent.crt.pem"
            intermediates_path = "/opt/spire/intermediates.pem"
        }
    }"#,
    );
    let loaded = read(Path::new("agent.conf"), &text).unwrap();
    let s = settings(loaded.file);
    let x = configured!(s, X509pop);
    assert_eq!(x.private_key_path, Path::new("/opt/spire/agent.key.pem"));
    assert_eq!(x.certificate_path, Path::new("/opt/spire/agent.crt.pem"));
    assert_eq!(x.intermediates_path.as_deref(), Some(Path::new("/opt/spire/intermediates.pem")));
    assert_eq!(s.join_token, None);
}

#[test]
fn the_k8s_psat_node_attestor_becomes_wards_table() {
    let block =
        "    NodeAttestor \"k8s_psat\" {\n        plugin_data {\n            cluster = \"prod\"\n";
    let text = agent_conf_with(&format!("{block}        }}\n    }}"));
    let s = settings(read(Path::new("agent.conf"), &text).unwrap().file);
    let k = configured!(s, K8sPsat);
    assert_eq!(k.cluster, "prod");
    assert_eq!(k.token_path, Path::new("/var/run/secrets/tokens/spire-agent"));
    let text = agent_conf_with(&format!(
        "{block}            token_path = \"/t/agent\"\n        }}\n    }}"
    ));
    let s = settings(read(Path::new("agent.conf"), &text).unwrap().file);
    assert_eq!(configured!(s, K8sPsat).token_path, Path::new("/t/agent"));
}

#[test]
fn the_sshpop_node_attestor_becomes_wards_table() {
    let text = r#"
agent {
    data_dir = "/d"
    server_address = "spire-server"
    server_port = "8081"
    trust_domain = "example.org"
    insecure_bootstrap = true
}
plugins {
    KeyManager "memory" {
        plugin_data {}
    }
    NodeAttestor "sshpop" {
        plugin_data {
            host_key_path = "/etc/ssh/ssh_host_ed25519_key"
        }
    }
    WorkloadAttestor "unix" {
        plugin_data {}
    }
}
"#;
    let loaded = read(Path::new("agent.conf"), text).unwrap();
    let s = settings(loaded.file);
    let x = configured!(s, Sshpop);
    assert_eq!(x.host_key_path, Path::new("/etc/ssh/ssh_host_ed25519_key"));
    assert_eq!(x.host_cert_path, Path::new("/etc/ssh/ssh_host_rsa_key-cert.pub"));

    // An empty plugin_data block takes SPIRE's defaults.
    let empty = text.replace("host_key_path = \"/etc/ssh/ssh_host_ed25519_key\"", "");
    let loaded = read(Path::new("agent.conf"), &empty).unwrap();
    let x = configured!(settings(loaded.file), Sshpop);
    assert_eq!(x.host_key_path, Path::new("/etc/ssh/ssh_host_rsa_key"));
}

#[test]
fn the_aws_iid_node_attestor_becomes_wards_table() {
    let block = |data: &str| {
        format!(
            r#"
agent {{
    data_dir = "/d"
    server_address = "spire-server"
    server_port = "8081"
    trust_domain = "example.org"
    insecure_bootstrap = true
}}
plugins {{
    KeyManager "memory" {{
        plugin_data {{}}
    }}
    NodeAttestor "aws_iid" {{
        plugin_data {{{data}}}
    }}
    WorkloadAttestor "unix" {{
        plugin_data {{}}
    }}
}}
"#
        )
    };
    let loaded = read(Path::new("agent.conf"), &block("")).unwrap();
    let a = configured!(settings(loaded.file), AwsIid);
    assert_eq!(a.ec2_metadata_endpoint, None);
    let text =
        block("\n            ec2_metadata_endpoint = \"http://169.254.169.254/latest\"\n        ");
    let loaded = read(Path::new("agent.conf"), &text).unwrap();
    let a = configured!(settings(loaded.file), AwsIid);
    assert_eq!(a.ec2_metadata_endpoint.as_deref(), Some("http://169.254.169.254/latest"));
}
