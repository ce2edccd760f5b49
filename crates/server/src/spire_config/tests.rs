use super::*;

fn refused(text: &str, format: ConfigFormat) -> Vec<String> {
    match translate(text, format) {
        Err(SpireConfigError::Refused(sentences)) => sentences,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

const MINIMAL_HCL: &str = r#"
server {
    trust_domain = "example.org"
    data_dir = "/var/lib/spire"
}
plugins {
    NodeAttestor "join_token" {
        plugin_data {}
    }
}
"#;

#[test]
fn detects_the_three_formats() {
    assert_eq!(ConfigFormat::detect(MINIMAL_HCL), ConfigFormat::SpireHcl);
    assert_eq!(ConfigFormat::detect("  \n{\"server\": {}}"), ConfigFormat::SpireJson);
    assert_eq!(ConfigFormat::detect("plugins = {\n}\n"), ConfigFormat::SpireHcl);
    assert_eq!(
        ConfigFormat::detect("trust_domain = \"x.org\"\n[ratelimit]\nsigning = false\n"),
        ConfigFormat::WardToml
    );
    // A commented-out block, or a key that only starts with the word, is not a section.
    assert_eq!(ConfigFormat::detect("# server {\nserver_port = 1\n"), ConfigFormat::WardToml);
    assert_eq!(ConfigFormat::detect(""), ConfigFormat::WardToml);
}

#[test]
fn maps_supported_settings_onto_wards_names() {
    let text = r#"
server {
    bind_address = "127.0.0.1"
    bind_port = "9081"
    trust_domain = "example.org"
    data_dir = "/var/lib/spire"
    log_level = "DEBUG"
    log_format = "JSON"
    ca_key_type = "EC-P384"
    ca_ttl = "48h"
    default_x509_svid_ttl = "2h"
    default_jwt_svid_ttl = "10m"
    agent_ttl = "90m"
    jwt_issuer = "https://oidc.example.org"
    ratelimit {
        attestation = false
    }
}
plugins {
    NodeAttestor "join_token" {
        plugin_data {}
    }
}
"#;
    let t = translate(text, ConfigFormat::SpireHcl).unwrap();
    let expected: toml::Table = toml::from_str(
        r#"
        bind_address = "127.0.0.1"
        bind_port = 9081
        trust_domain = "example.org"
        data_dir = "/var/lib/spire"
        log_level = "debug"
        log_format = "json"
        ca_key_type = "ec-p384"
        ca_ttl = "48h"
        default_x509_svid_ttl = "2h"
        default_jwt_svid_ttl = "10m"
        agent_ttl = "90m"
        jwt_issuer = "https://oidc.example.org"
        [ratelimit]
        attestation = false
        "#,
    )
    .unwrap();
    assert_eq!(t.table, expected);
    assert!(t.notes.is_empty(), "{:?}", t.notes);
}

#[test]
fn zero_values_keep_defaults_but_false_is_a_choice() {
    let text = MINIMAL_HCL.replace(
        "data_dir = \"/var/lib/spire\"",
        "data_dir = \"/d\"\nbind_port = 0\nbind_address = \"\"\nratelimit { signing = \"false\" }\nadmin_ids = []\naudit_log_enabled = false",
    );
    let t = translate(&text, ConfigFormat::SpireHcl).unwrap();
    assert_eq!(t.table.get("bind_port"), None);
    assert_eq!(t.table.get("bind_address"), None);
    assert_eq!(t.table["ratelimit"]["signing"], toml::Value::Boolean(false));
}

#[test]
fn every_refusal_is_listed_one_sentence_each() {
    let text = r#"
server {
    trust_domain = "example.org"
    data_dir = "/d"
    admin_ids = ["spiffe://example.org/admin"]
    log_file = "/var/log/spire.log"
    bind_address = "spire.example.org"
    ca_ttl = "one day"
    trust_domian = "typo.org"
}
plugins {
    NodeAttestor "http_challenge" {
        plugin_data {}
    }
    NodeAttestor "tpm" {
        plugin_cmd = "/tpm/attestor"
        plugin_data {}
    }
    NodeAttestor "x509pop" {
        enabled = false
        plugin_data {}
    }
    Notifier "k8sbundle" {
        plugin_data {}
    }
    Gadget "x" {}
}
telemetry {
    DogStatsd = [{ address = "localhost:8125" }]
}
"#;
    let got = refused(text, ConfigFormat::SpireHcl);
    let want = [
        "Gadget",
        "NodeAttestor \"http_challenge\"",
        "NodeAttestor \"tpm\"",
        "Notifier \"k8sbundle\"",
        "server.admin_ids",
        "server.bind_address",
        "server.ca_ttl",
        "server.log_file",
        "server.trust_domian",
        "telemetry",
    ];
    assert_eq!(got.len(), want.len(), "{got:#?}");
    for w in want {
        assert_eq!(got.iter().filter(|s| s.contains(w)).count(), 1, "{w} in {got:#?}");
    }
    assert!(got.iter().any(|s| {
        s.ends_with(
            "ward attests agents with join tokens, x509pop, gcp_iit, tpm_devid, azure_msi, \
             k8s_psat, sshpop and aws_iid only (NodeAttestor \"join_token\", \"x509pop\", \
             \"gcp_iit\", \"tpm_devid\", \"azure_msi\", \"k8s_psat\", \"sshpop\", \
             \"aws_iid\")",
        )
    }));
    // The disabled plugin is skipped, as SPIRE skips it.
    assert!(!got.iter().any(|s| s.contains("plugin NodeAttestor \"x509pop\"")));
}

#[test]
fn required_sections_use_spires_words() {
    let got = refused("server_x = 1\n", ConfigFormat::SpireHcl);
    assert!(got.contains(&"server section must be configured".to_owned()), "{got:?}");
    assert!(got.contains(&"plugins section must be configured".to_owned()), "{got:?}");
}

#[test]
fn accepted_plugins_without_wards_equivalent_are_noted() {
    let text = MINIMAL_HCL.replace(
        "NodeAttestor \"join_token\" {",
        "DataStore \"sql\" {\nplugin_data { database_type = \"sqlite3\" }\n}\nKeyManager \"memory\" {\nplugin_data {}\n}\nNodeAttestor \"join_token\" {",
    );
    let t = translate(&text, ConfigFormat::SpireHcl).unwrap();
    assert_eq!(t.notes.len(), 2, "{:?}", t.notes);
    assert!(t.notes.iter().any(|n| n.starts_with("DataStore \"sql\" is ignored")));
    assert!(t.notes.iter().any(|n| n.starts_with("KeyManager \"memory\"")));
}

#[test]
fn undecodable_text_is_a_decode_error() {
    assert!(matches!(
        translate("server {\n", ConfigFormat::SpireHcl),
        Err(SpireConfigError::Decode(_))
    ));
    assert!(matches!(
        translate("[1, 2]", ConfigFormat::SpireJson),
        Err(SpireConfigError::Decode(_))
    ));
}

#[test]
fn every_mapped_key_is_a_key_of_wards_toml() {
    // Build a table holding every `Map` target and let ward's own reader (which refuses
    // unknown keys) take it: a typo in the table fails here.
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, crate::config::test_ca_pem()).unwrap();
    let ssh_cas = dir.path().join("ssh-cas.pub");
    std::fs::write(
        &ssh_cas,
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMgbJ2VhDGYTXeOemMd0hq/tbctUB2NMXyzwAV9xS9SV ca\n",
    )
    .unwrap();
    let mut table = toml::Table::new();
    for (_, rule) in SETTINGS {
        if let Rule::Map { to, conv } = rule {
            let v = match conv {
                Conv::Int => toml::Value::Integer(1),
                Conv::Bool => toml::Value::Boolean(true),
                Conv::Duration => toml::Value::String("1h".into()),
                Conv::Ip => toml::Value::String("127.0.0.1".into()),
                Conv::Str | Conv::Lower => toml::Value::String(match *to {
                    "ca_key_type" => "ec-p256".into(),
                    "log_format" => "text".into(),
                    "telemetry.metric_prefix" => "spire_server".into(),
                    "health_checks.live_path" => "/l".into(),
                    "health_checks.ready_path" => "/r".into(),
                    "node_attestors.x509pop.mode" => "external_pki".into(),
                    "node_attestors.x509pop.ca_bundle_path"
                    | "node_attestors.tpm_devid.devid_ca_path"
                    | "node_attestors.tpm_devid.endorsement_ca_path" => ca.display().to_string(),
                    "node_attestors.sshpop.cert_authorities_path" => ssh_cas.display().to_string(),
                    "node_attestors.aws_iid.partition" => "aws".into(),
                    _ => "example.org".into(),
                }),
            };
            set(&mut table, to, v);
        }
    }
    // Set by a hook, and required.
    set(
        &mut table,
        "node_attestors.gcp_iit.projectid_allow_list",
        toml::Value::Array(vec!["project-123".into()]),
    );
    let tenant: toml::Table = ["subscription_id", "app_id", "app_secret"]
        .into_iter()
        .map(|k| (k.to_owned(), toml::Value::from("x")))
        .collect();
    set(&mut table, "node_attestors.azure_msi.tenants.t1", toml::Value::Table(tenant));
    let text = toml::to_string(&table).unwrap();
    crate::config::Config::from_toml(&text, &crate::config::Overrides::default()).unwrap();
}

#[test]
fn telemetry_health_checks_and_audit_log_map_onto_wards_tables() {
    let text = MINIMAL_HCL
        .replace("data_dir = \"/var/lib/spire\"", "data_dir = \"/d\"\naudit_log_enabled = true")
        + r#"
telemetry {
    Prometheus {
        host = "127.0.0.1"
        port = 9988
    }
    MetricPrefix = "spire"
    EnableHostnameLabel = false
    InMem {}
}
health_checks {
    listener_enabled = true
    bind_address = "127.0.0.1"
    bind_port = "8080"
    live_path = "/alive"
    ready_path = "/ready"
}
"#;
    let t = translate(&text, ConfigFormat::SpireHcl).unwrap();
    let expected: toml::Table = toml::from_str(
        r#"
        data_dir = "/d"
        trust_domain = "example.org"
        audit_log_enabled = true
        [telemetry]
        metric_prefix = "spire"
        enable_hostname_label = false
        [telemetry.prometheus]
        host = "127.0.0.1"
        port = 9988
        [health_checks]
        listener_enabled = true
        bind_address = "127.0.0.1"
        bind_port = 8080
        live_path = "/alive"
        ready_path = "/ready"
        "#,
    )
    .unwrap();
    assert_eq!(t.table, expected);
    let c = crate::config::Config::from_toml(
        &toml::to_string(&t.table).unwrap(),
        &crate::config::Overrides::default(),
    )
    .unwrap();
    assert!(c.audit_log_enabled);
    assert_eq!(c.telemetry.prometheus.as_ref().map(|p| p.port), Some(9988));
    assert_eq!(c.health_checks.live_path, "/alive");
}

#[test]
fn an_empty_prometheus_block_turns_metrics_on_and_keys_ignore_case() {
    // SPIRE's HCL decoder matches keys without regard to case.
    let text =
        format!("{MINIMAL_HCL}\ntelemetry {{\n    prometheus {{}}\n    metricprefix = \"w\"\n}}\n");
    let t = translate(&text, ConfigFormat::SpireHcl).unwrap();
    assert_eq!(t.table["telemetry"]["prometheus"], toml::Value::Table(toml::Table::new()));
    assert_eq!(t.table["telemetry"]["metric_prefix"], toml::Value::String("w".into()));
    let c = crate::config::Config::from_toml(
        &toml::to_string(&t.table).unwrap(),
        &crate::config::Overrides::default(),
    )
    .unwrap();
    assert!(c.telemetry.prometheus.is_some());
    // A sink ward does not have is refused, by its own name.
    let text = format!("{MINIMAL_HCL}\ntelemetry {{\n    Statsd = [{{ address = \"x:1\" }}]\n}}\n");
    assert_eq!(
        refused(&text, ConfigFormat::SpireHcl),
        ["telemetry.Statsd is not supported: ward exports metrics to Prometheus only"]
    );
}

#[test]
fn maps_the_x509pop_plugin_data() {
    let text = r#"
server {
    trust_domain = "example.org"
    data_dir = "/d"
}
plugins {
    NodeAttestor "x509pop" {
        plugin_data {
            ca_bundle_paths = ["/ca/a.pem", "/ca/b.pem"]
            agent_path_template = "/cn/{{ .Subject.CommonName }}"
            spiffe_prefix = "/x/"
        }
    }
}
"#;
    let t = translate(text, ConfigFormat::SpireHcl).unwrap();
    let x = &t.table["node_attestors"]["x509pop"];
    assert_eq!(
        x["ca_bundle_paths"],
        toml::Value::Array(vec!["/ca/a.pem".into(), "/ca/b.pem".into()])
    );
    assert_eq!(x["agent_path_template"].as_str(), Some("/cn/{{ .Subject.CommonName }}"));
    assert!(t.notes.iter().any(|n| n.contains("spiffe_prefix is ignored")), "{:?}", t.notes);
}

#[test]
fn maps_the_gcp_iit_plugin_data() {
    let text = r#"
server {
    trust_domain = "example.org"
    data_dir = "/d"
}
plugins {
    NodeAttestor "gcp_iit" {
        plugin_data {
            projectid_allow_list = ["project-123", "project-456"]
            agent_path_template = "/{{ .Zone }}/{{ .InstanceID }}"
            use_instance_metadata = true
            service_account_file = "/etc/spire/sa.json"
            allowed_label_keys = ["a", "b"]
            allowed_metadata_keys = ["m"]
            max_metadata_value_size = 256
        }
    }
}
"#;
    let t = translate(text, ConfigFormat::SpireHcl).unwrap();
    let g = &t.table["node_attestors"]["gcp_iit"];
    assert_eq!(
        g["projectid_allow_list"],
        toml::Value::Array(vec!["project-123".into(), "project-456".into()])
    );
    assert_eq!(g["agent_path_template"].as_str(), Some("/{{ .Zone }}/{{ .InstanceID }}"));
    assert_eq!(g["use_instance_metadata"].as_bool(), Some(true));
    assert_eq!(g["service_account_file"].as_str(), Some("/etc/spire/sa.json"));
    assert_eq!(g["allowed_label_keys"], toml::Value::Array(vec!["a".into(), "b".into()]));
    assert_eq!(g["allowed_metadata_keys"], toml::Value::Array(vec!["m".into()]));
    assert_eq!(g["max_metadata_value_size"].as_integer(), Some(256));
    assert!(t.notes.is_empty(), "{:?}", t.notes);
}

#[test]
fn maps_the_tpm_devid_plugin_data() {
    let text = r#"
server {
    trust_domain = "example.org"
    data_dir = "/d"
}
plugins {
    NodeAttestor "tpm_devid" {
        plugin_data {
            devid_ca_path = "/ca/devid.pem"
            endorsement_ca_path = "/ca/ek.pem"
        }
    }
}
"#;
    let t = translate(text, ConfigFormat::SpireHcl).unwrap();
    let x = &t.table["node_attestors"]["tpm_devid"];
    assert_eq!(x["devid_ca_path"].as_str(), Some("/ca/devid.pem"));
    assert_eq!(x["endorsement_ca_path"].as_str(), Some("/ca/ek.pem"));
}

#[test]
fn maps_the_azure_msi_plugin_data() {
    let text = r#"
server {
    trust_domain = "example.org"
    data_dir = "/d"
}
plugins {
    NodeAttestor "azure_msi" {
        plugin_data {
            tenants = {
                "11111111-2222" = {
                    resource_id = "https://example.org/app"
                }
                "33333333-4444" = {}
                "55555555-6666" = {
                    subscription_id = "d5b40d61-272e-48da-beb9-05f295c42bd6"
                    app_id = "app"
                    app_secret = "secret"
                }
            }
        }
    }
}
"#;
    let t = translate(text, ConfigFormat::SpireHcl).unwrap();
    let a = &t.table["node_attestors"]["azure_msi"]["tenants"];
    assert_eq!(a["11111111-2222"]["resource_id"].as_str(), Some("https://example.org/app"));
    assert!(a["33333333-4444"].as_table().is_some_and(toml::Table::is_empty), "{a:?}");
    let c = &a["55555555-6666"];
    assert_eq!(c["subscription_id"].as_str(), Some("d5b40d61-272e-48da-beb9-05f295c42bd6"));
    assert_eq!(c["app_id"].as_str(), Some("app"));
    assert_eq!(c["app_secret"].as_str(), Some("secret"));
}

#[test]
fn maps_the_k8s_psat_clusters() {
    let text = r#"
server {
    trust_domain = "example.org"
    data_dir = "/d"
}
plugins {
    NodeAttestor "k8s_psat" {
        plugin_data {
            clusters = {
                "prod.eu" = {
                    service_account_allow_list = ["spire:spire-agent", "spire:other"]
                    kube_config_file = "/etc/kubeconfig"
                    audience = []
                    allowed_node_label_keys = ["zone"]
                }
                "in-cluster" = {
                    service_account_allow_list = ["spire:spire-agent"]
                    allowed_pod_label_keys = ["app"]
                    use_token_review_api_validation = true
                }
            }
        }
    }
}
"#;
    let t = translate(text, ConfigFormat::SpireHcl);
    let refused = match &t {
        Err(e) => e.to_string(),
        Ok(_) => String::new(),
    };
    assert!(
        refused.contains(
            "plugins.NodeAttestor.k8s_psat.plugin_data.clusters.in-cluster.\
             use_token_review_api_validation is not a k8s_psat cluster setting"
        ),
        "{refused}"
    );
    let t = translate(
        &text.replace("use_token_review_api_validation = true", ""),
        ConfigFormat::SpireHcl,
    )
    .unwrap();
    let clusters = &t.table["node_attestors"]["k8s_psat"]["clusters"];
    let prod = &clusters["prod.eu"];
    assert_eq!(
        prod["service_account_allow_list"],
        toml::Value::Array(vec!["spire:spire-agent".into(), "spire:other".into()])
    );
    assert_eq!(prod["kube_config_file"].as_str(), Some("/etc/kubeconfig"));
    assert_eq!(prod["audience"], toml::Value::Array(vec![]));
    assert_eq!(prod["allowed_node_label_keys"], toml::Value::Array(vec!["zone".into()]));
    assert_eq!(
        clusters["in-cluster"]["allowed_pod_label_keys"],
        toml::Value::Array(vec!["app".into()])
    );
    assert!(clusters["in-cluster"].get("audience").is_none());
}

#[test]
fn maps_the_sshpop_plugin_data() {
    let text = r#"
server {
    trust_domain = "example.org"
    data_dir = "/d"
}
plugins {
    NodeAttestor "sshpop" {
        plugin_data {
            cert_authorities = ["ssh-ed25519 AAAA one", "ssh-ed25519 AAAA two"]
            cert_authorities_path = "/ca/cas.pub"
            canonical_domain = "example.org"
            agent_path_template = "static/{{ index .ValidPrincipals 0 }}"
        }
    }
}
"#;
    let t = translate(text, ConfigFormat::SpireHcl).unwrap();
    let x = &t.table["node_attestors"]["sshpop"];
    assert_eq!(
        x["cert_authorities"],
        toml::Value::Array(vec!["ssh-ed25519 AAAA one".into(), "ssh-ed25519 AAAA two".into()])
    );
    assert_eq!(x["cert_authorities_path"].as_str(), Some("/ca/cas.pub"));
    assert_eq!(x["canonical_domain"].as_str(), Some("example.org"));
    assert_eq!(x["agent_path_template"].as_str(), Some("static/{{ index .ValidPrincipals 0 }}"));
    let bad = text.replace("[\"ssh-ed25519 AAAA one\", \"ssh-ed25519 AAAA two\"]", "3");
    let got = refused(&bad, ConfigFormat::SpireHcl);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].contains("cert_authorities must be a list of strings"), "{got:?}");
}

#[test]
fn maps_the_aws_iid_plugin_data_and_refuses_aws_api_settings() {
    let text = r#"
server {
    trust_domain = "example.org"
    data_dir = "/d"
}
plugins {
    NodeAttestor "aws_iid" {
        plugin_data {
            agent_path_template = "/{{ .PluginName }}/{{ .InstanceID }}"
            partition = "aws-cn"
            access_key_id = "AKIA"
            secret_access_key = "secret"
            skip_block_device = true
            disable_instance_profile_selectors = true
            account_ids_for_local_validation = ["123456789012"]
        }
    }
}
"#;
    let t = translate(text, ConfigFormat::SpireHcl).unwrap();
    let a = &t.table["node_attestors"]["aws_iid"];
    assert_eq!(a["agent_path_template"].as_str(), Some("/{{ .PluginName }}/{{ .InstanceID }}"));
    assert_eq!(a["partition"].as_str(), Some("aws-cn"));
    assert_eq!(a["access_key_id"].as_str(), Some("AKIA"));
    assert_eq!(a["secret_access_key"].as_str(), Some("secret"));
    assert_eq!(a["skip_block_device"].as_bool(), Some(true));
    assert_eq!(a["disable_instance_profile_selectors"].as_bool(), Some(true));
    assert_eq!(a["account_ids_for_local_validation"][0].as_str(), Some("123456789012"));

    let empty = text.replace("            agent_path_template", "            # ");
    let t = translate(&empty, ConfigFormat::SpireHcl).unwrap();
    assert!(t.table["node_attestors"]["aws_iid"].is_table());

    for (setting, refusal) in [
        ("assume_role = \"delegate\"", "assume_role is not supported"),
        ("verify_organization = { management_account_id = \"1\" }", "verify_organization is not"),
        (
            "validate_eks_cluster_membership = { eks_cluster_names = [\"c\"] }",
            "validate_eks_cluster_membership is not",
        ),
    ] {
        let refused = text.replace("skip_block_device = true", setting);
        let got = match translate(&refused, ConfigFormat::SpireHcl) {
            Err(e) => e.to_string(),
            Ok(t) => panic!("accepted: {:?}", t.table),
        };
        assert!(got.contains(refusal), "{got}");
    }
}
