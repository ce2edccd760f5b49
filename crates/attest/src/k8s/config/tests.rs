//! SPIRE's keys, defaults and configuration errors.

use super::*;

fn parse(text: &str) -> K8sConfig {
    toml::from_str(text).unwrap()
}

fn no_env(_: &str) -> Option<String> {
    None
}

#[test]
fn an_empty_configuration_uses_the_secure_port_with_the_service_account() {
    let settings = parse("").settings(no_env).unwrap();
    assert_eq!(
        settings,
        K8sSettings {
            kubelet: KubeletSettings::Secure(SecureKubelet {
                port: 10250,
                node_name: None,
                verification: KubeletVerification::Ca(DEFAULT_KUBELET_CA_PATH.into()),
                auth: KubeletAuth::Token(DEFAULT_TOKEN_PATH.into()),
                reload_interval: Duration::from_secs(60),
            }),
            max_poll_attempts: 60,
            poll_retry_interval: Duration::from_millis(500),
            disable_container_selectors: false,
            locator: CgroupLocator::Segments,
            verbose_container_locator_logs: false,
        }
    );
}

#[test]
fn the_read_only_port_needs_nothing_else() {
    let settings = parse("kubelet_read_only_port = 10255").settings(no_env).unwrap();
    assert_eq!(settings.kubelet, KubeletSettings::ReadOnly { port: 10255 });
}

#[test]
fn overrides_are_taken() {
    let settings = parse(
        r#"
        kubelet_secure_port = 12345
        kubelet_ca_path = "/etc/kubelet-ca.pem"
        token_path = "/etc/token"
        max_poll_attempts = 3
        poll_retry_interval = "2s"
        reload_interval = "1m30s"
        disable_container_selectors = true
        use_new_container_locator = false
        verbose_container_locator_logs = true
        "#,
    )
    .settings(no_env)
    .unwrap();
    assert_eq!(
        settings,
        K8sSettings {
            kubelet: KubeletSettings::Secure(SecureKubelet {
                port: 12345,
                node_name: None,
                verification: KubeletVerification::Ca("/etc/kubelet-ca.pem".into()),
                auth: KubeletAuth::Token("/etc/token".into()),
                reload_interval: Duration::from_secs(90),
            }),
            max_poll_attempts: 3,
            poll_retry_interval: Duration::from_secs(2),
            disable_container_selectors: true,
            locator: CgroupLocator::Legacy,
            verbose_container_locator_logs: true,
        }
    );
}

#[test]
fn authentication_choices_follow_spire() {
    let secure = |text: &str| match parse(text).settings(no_env).unwrap().kubelet {
        KubeletSettings::Secure(s) => s,
        KubeletSettings::ReadOnly { .. } => panic!("read-only"),
    };
    assert_eq!(
        secure("certificate_path = \"c.pem\"\nprivate_key_path = \"k.pem\"").auth,
        KubeletAuth::ClientCertificate { certificate: "c.pem".into(), private_key: "k.pem".into() }
    );
    // Anonymous wins over everything else, as in SPIRE.
    assert_eq!(
        secure("use_anonymous_authentication = true\ncertificate_path = \"c.pem\"").auth,
        KubeletAuth::Anonymous
    );
    assert_eq!(secure("skip_kubelet_verification = true").verification, KubeletVerification::Skip);
}

#[test]
fn the_node_name_comes_from_config_then_the_named_variable_then_my_node_name() {
    let env = |k: &str| match k {
        "MY_NODE_NAME" => Some("from-default-env".to_owned()),
        "OTHER" => Some("from-other-env".to_owned()),
        _ => None,
    };
    let node = |text: &str| match parse(text).settings(env).unwrap().kubelet {
        KubeletSettings::Secure(s) => s.node_name,
        KubeletSettings::ReadOnly { .. } => panic!("read-only"),
    };
    assert_eq!(node(""), Some("from-default-env".to_owned()));
    assert_eq!(node("node_name_env = \"OTHER\""), Some("from-other-env".to_owned()));
    assert_eq!(node("node_name = \"n1\"\nnode_name_env = \"OTHER\""), Some("n1".to_owned()));
    assert_eq!(node("node_name_env = \"UNSET\""), None);
}

#[test]
fn bad_configurations_get_spire_messages() {
    let err = |text: &str| parse(text).settings(no_env).unwrap_err().to_string();
    assert_eq!(
        err("kubelet_read_only_port = 1\nkubelet_secure_port = 2"),
        "cannot use both the read-only and secure port"
    );
    assert!(
        err("poll_retry_interval = \"blah\"").starts_with("unable to parse poll retry interval: "),
    );
    assert!(err("reload_interval = \"blah\"").starts_with("unable to parse reload interval: "));
    assert_eq!(
        err("certificate_path = \"c\""),
        "the private key path is required with the certificate path"
    );
    assert_eq!(
        err("private_key_path = \"k\""),
        "the certificate path is required with the private key path"
    );
    assert_eq!(
        err("kubelet_read_only_port = 70000"),
        "kubelet_read_only_port: 70000 is not a port"
    );
    assert!(
        err("[experimental.sigstore]\nrekor_url = \"https://r\"")
            .starts_with("experimental.sigstore: ward does not verify container image signatures")
    );
}

#[test]
fn zero_or_negative_numbers_and_durations_mean_the_default() {
    let settings =
        parse("max_poll_attempts = -1\npoll_retry_interval = \"0s\"").settings(no_env).unwrap();
    assert_eq!(settings.max_poll_attempts, 60);
    assert_eq!(settings.poll_retry_interval, Duration::from_millis(500));
}

#[test]
fn unknown_keys_are_refused() {
    let err = toml::from_str::<K8sConfig>("kubelet_readonly_port = 10255").unwrap_err();
    assert!(err.to_string().contains("unknown field `kubelet_readonly_port`"), "{err}");
    // An empty experimental block is fine.
    assert_eq!(parse("[experimental]").settings(no_env).unwrap().max_poll_attempts, 60);
}

#[test]
fn integer_keys_also_take_strings_as_spire_hcl_decoder_does() {
    let settings = parse("kubelet_read_only_port = \"10255\"\nmax_poll_attempts = \"0x10\"")
        .settings(no_env)
        .unwrap();
    assert_eq!(settings.kubelet, KubeletSettings::ReadOnly { port: 10255 });
    assert_eq!(settings.max_poll_attempts, 16);
    assert_eq!(parse_go_int("-12"), Some(-12));
    assert_eq!(parse_go_int("010"), Some(8));
    assert_eq!(parse_go_int("0b1_01"), Some(5));
    assert_eq!(parse_go_int("0"), Some(0));
    assert_eq!(parse_go_int("10_255"), Some(10255));
    assert_eq!(parse_go_int("12x"), None);
    assert_eq!(parse_go_int("0x"), None);
    assert_eq!(parse_go_int("--1"), None);
    let err = toml::from_str::<K8sConfig>("kubelet_secure_port = \"ten\"").unwrap_err();
    assert!(err.to_string().contains("\"ten\" is not an integer"), "{err}");
}
