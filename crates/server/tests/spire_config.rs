//! ward's reader of SPIRE's server configuration, on configurations shaped as SPIRE's docs
//! write them (HCL) and as SPIRE's Helm chart renders them (JSON), in `testdata/spire/`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ward_core::BundleEndpointProfile;
use ward_server::config::{
    Config, ConfigError, ConfigFormat, KeyType, Loaded, LogFormat, Overrides,
};
use ward_server::spire_config::SpireConfigError;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata/spire").join(name)
}

fn read_with(
    name: &str,
    overrides: &Overrides,
    env: &[(&str, &str)],
) -> Result<Loaded, ConfigError> {
    let env: HashMap<String, String> =
        env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    Config::read(Some(&fixture(name)), overrides, &|k| env.get(k).cloned())
}

fn read(name: &str) -> Result<Loaded, ConfigError> {
    read_with(name, &Overrides::default(), &[])
}

fn refusals(err: ConfigError) -> Vec<String> {
    match err {
        ConfigError::Spire { problem: SpireConfigError::Refused(sentences), .. } => sentences,
        other => panic!("expected refusals, got {other:?}"),
    }
}

#[test]
fn quickstart_hcl_maps_onto_ward() {
    let loaded = read("server.conf").unwrap();
    assert_eq!(loaded.format, ConfigFormat::SpireHcl);
    let c = loaded.config;
    assert_eq!(c.trust_domain.as_str(), "example.org");
    assert_eq!(c.bind_address, "127.0.0.1".parse::<IpAddr>().unwrap());
    assert_eq!(c.bind_port, 8081);
    assert_eq!(c.socket_path, PathBuf::from("/tmp/spire-server/private/api.sock"));
    assert_eq!(c.data_dir, PathBuf::from("./data/server"));
    assert_eq!(c.log_level, "debug");
    assert_eq!(c.ca_key_type, KeyType::EcP256);
    assert_eq!(c.ca_ttl, Duration::from_secs(168 * 3600));
    assert_eq!(c.default_x509_svid_ttl, Duration::from_secs(4 * 3600));
    assert_eq!(c.default_jwt_svid_ttl, Duration::from_secs(15 * 60));
    // agent_ttl unset: agents get the X509-SVID default, as in SPIRE.
    assert_eq!(c.agent_ttl, Duration::from_secs(4 * 3600));
    assert!(c.ratelimit.attestation && c.ratelimit.signing);
    let notes = loaded.notes;
    assert_eq!(notes.len(), 3, "{notes:#?}");
    assert!(notes.iter().any(|n| n.starts_with("server.ca_subject is ignored")));
    assert!(notes.iter().any(|n| n.starts_with("DataStore \"sql\" is ignored")));
    assert!(notes.iter().any(|n| n.starts_with("KeyManager \"disk\" is ward's own key store")));
}

#[test]
fn command_line_flags_win_over_the_spire_file() {
    let o = Overrides {
        trust_domain: Some("other.org".into()),
        bind_port: Some(0),
        data_dir: Some("/tmp/x".into()),
        ..Overrides::default()
    };
    let c = read_with("server.conf", &o, &[]).unwrap().config;
    assert_eq!(c.trust_domain.as_str(), "other.org");
    assert_eq!(c.bind_port, 0);
    assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
}

#[test]
fn production_hcl_is_refused_with_one_sentence_per_item() {
    let got = refusals(read("server-unsupported.conf").unwrap_err());
    let want = [
        "server.log_file is not supported: ward logs to stderr",
        "server.admin_ids is not supported: ward grants admin rights to callers on the admin \
         socket and to SVIDs of registration entries marked admin",
        "server.jwt_key_type is not supported: ward signs JWT-SVIDs with keys of ca_key_type",
        "plugin KeyManager \"aws_kms\" is not supported: ward keeps CA keys on disk (only \
         \"disk\" and \"memory\" are accepted)",
        "plugin UpstreamAuthority \"disk\" is not supported: ward's CA is self-signed",
        "plugin Notifier \"k8sbundle\" is not supported: ward has no notifiers",
    ];
    let mut got_sorted = got.clone();
    got_sorted.sort();
    let mut want_sorted: Vec<String> = want.iter().map(|s| (*s).to_owned()).collect();
    want_sorted.sort();
    assert_eq!(got_sorted, want_sorted);
}

#[test]
fn refusals_are_printed_one_per_line() {
    let err = read("server-unsupported.conf").unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("ward cannot run with the SPIRE configuration at"), "{text}");
    assert_eq!(text.lines().filter(|l| l.starts_with("  - ")).count(), 6, "{text}");
}

#[test]
fn expand_env_fills_values_before_parsing() {
    let o = Overrides { expand_env: true, ..Overrides::default() };
    let env = [("SPIRE_PORT", "9443"), ("TRUST_DOMAIN", "corp.test"), ("STATE_DIR", "/srv/ward")];
    let loaded = read_with("server-env.conf", &o, &env).unwrap();
    let c = loaded.config;
    assert_eq!(c.bind_port, 9443);
    assert_eq!(c.trust_domain.as_str(), "corp.test");
    assert_eq!(c.data_dir, PathBuf::from("/srv/ward/server"));
    // `$$` is a literal `$`; the `${...}` it leaves is kept as text, as SPIRE's HCL keeps it.
    assert_eq!(c.jwt_issuer.as_deref(), Some("https://oidc.corp.test/${literal}"));
    // LOG_LEVEL is not set: the empty value leaves the default.
    assert_eq!(c.log_level, "info");
    assert_eq!(loaded.notes.len(), 1, "{:?}", loaded.notes);
}

#[test]
fn without_expand_env_variables_stay_text() {
    let err = read("server-env.conf").unwrap_err();
    // `"${SPIRE_PORT}"` is not a port, and `$TRUST_DOMAIN` is not a trust domain.
    match err {
        ConfigError::Spire { problem: SpireConfigError::Refused(s), .. } => {
            assert_eq!(s, ["server.bind_port must be an integer, not \"${SPIRE_PORT}\""]);
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn helm_chart_default_rendering_is_refused_item_by_item() {
    let got = refusals(read("helm-server.json").unwrap_err());
    let mut got_sorted = got;
    got_sorted.sort();
    assert_eq!(
        got_sorted,
        ["plugin Notifier \"k8sbundle\" is not supported: ward has no notifiers",]
    );
}

#[test]
fn helm_chart_json_with_join_tokens_runs_on_ward() {
    let o = Overrides { expand_env: true, ..Overrides::default() };
    let env = [("SPIRE_DATA", "/run/spire/data"), ("SPIRE_TRUST_DOMAIN", "prod.example")];
    let loaded = read_with("helm-server-join-token.json", &o, &env).unwrap();
    assert_eq!(loaded.format, ConfigFormat::SpireJson);
    let c = loaded.config;
    assert_eq!(c.trust_domain.as_str(), "prod.example");
    assert_eq!(c.bind_address, "0.0.0.0".parse::<IpAddr>().unwrap());
    assert_eq!(c.bind_port, 8081);
    assert_eq!(c.data_dir, PathBuf::from("/run/spire/data"));
    assert_eq!(c.ca_key_type, KeyType::EcP384);
    assert_eq!(c.ca_ttl, Duration::from_secs(48 * 3600));
    assert_eq!(c.default_jwt_svid_ttl, Duration::from_secs(3600));
    assert_eq!(c.jwt_issuer.as_deref(), Some("https://oidc-discovery.prod.example"));
    assert_eq!(c.log_format, LogFormat::Text);
    let mut notes = loaded.notes;
    notes.sort();
    assert_eq!(notes.len(), 4, "{notes:#?}");
    assert!(notes[0].starts_with("DataStore \"sql\" is ignored"), "{notes:#?}");
    assert!(notes[1].starts_with("KeyManager \"memory\""), "{notes:#?}");
    assert!(notes[2].starts_with("server.ca_subject is ignored"), "{notes:#?}");
    assert!(notes[3].starts_with("server.experimental.cache_reload_interval"), "{notes:#?}");
}

#[test]
fn spire_checks_required_settings_after_flags() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.conf");
    std::fs::write(&path, "server {\n  bind_port = 8081\n}\nplugins {\n}\n").unwrap();
    let err = Config::read(Some(&path), &Overrides::default(), &|_| None).unwrap_err();
    assert_eq!(refusals(err), ["trust_domain must be configured", "data_dir must be configured"]);
    let o = Overrides {
        trust_domain: Some("example.org".into()),
        data_dir: Some("/d".into()),
        ..Overrides::default()
    };
    Config::read(Some(&path), &o, &|_| None).unwrap();
}

#[test]
fn wards_own_toml_still_reads_and_expands() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ward.conf");
    std::fs::write(&path, "trust_domain = \"$TD\"\n[ratelimit]\nsigning = false\n").unwrap();
    let o = Overrides { expand_env: true, ..Overrides::default() };
    let loaded =
        Config::read(Some(&path), &o, &|k| (k == "TD").then(|| "t.example".into())).unwrap();
    assert_eq!(loaded.format, ConfigFormat::WardToml);
    assert_eq!(loaded.config.trust_domain.as_str(), "t.example");
    assert!(!loaded.config.ratelimit.signing);
}

#[test]
fn federation_block_maps_onto_wards_bundle_endpoint_and_relationships() {
    let c = read("server-federation.conf").unwrap().config;
    let e = c.federation.bundle_endpoint.unwrap();
    assert_eq!(e.address, "127.0.0.1".parse::<IpAddr>().unwrap());
    assert_eq!(e.port, 8443);
    assert_eq!(e.refresh_hint, Duration::from_secs(600));
    let rels: Vec<_> = c
        .federation
        .federates_with
        .iter()
        .map(|(td, r)| (td.as_str().to_owned(), r.url.clone(), r.profile.clone()))
        .collect();
    assert_eq!(
        rels,
        [
            ("domain1.test".into(), "https://1.2.3.4:8443".into(), BundleEndpointProfile::HttpsWeb),
            (
                "domain2.test".into(),
                "https://5.6.7.8:8443".into(),
                BundleEndpointProfile::HttpsSpiffe {
                    endpoint_spiffe_id: ward_core::SpiffeId::parse(
                        "spiffe://domain2.test/beserver"
                    )
                    .unwrap()
                }
            ),
        ]
    );
    // The production file's endpoint has no profile: https_spiffe, SPIRE's default.
    let unsupported = std::fs::read_to_string(fixture("server-unsupported.conf")).unwrap();
    let start = unsupported.find("    federation {").unwrap();
    let end = unsupported.find("    experimental {").unwrap();
    let c = read_text(&format!(
        "server {{\n trust_domain = \"example.org\"\n data_dir = \"/d\"\n{}}}\nplugins {{}}\n",
        &unsupported[start..end]
    ))
    .unwrap()
    .config;
    assert_eq!(c.federation.bundle_endpoint.unwrap().port, 8443);
    assert_eq!(c.federation.federates_with.len(), 1);
}

#[allow(clippy::unwrap_used)]
fn read_text(text: &str) -> Result<Loaded, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.conf");
    std::fs::write(&path, text).unwrap();
    Config::read(Some(&path), &Overrides::default(), &|_| None)
}

#[test]
fn federation_settings_ward_cannot_honour_are_refused_in_spires_words() {
    let conf = |federation: &str| {
        format!(
            "server {{\n trust_domain = \"example.org\"\n data_dir = \"/d\"\n federation {{\n{federation}\n}}\n}}\nplugins {{}}\n"
        )
    };
    let cases = [
        (
            // SPIRE's docs example: an ACME certificate for the https_web profile.
            "bundle_endpoint {\n address = \"0.0.0.0\"\n port = 8443\n profile \"https_web\" {\n acme {\n domain_name = \"example.org\"\n }\n }\n}",
            "server.federation.bundle_endpoint.profile \"https_web\" is not supported: ward's \
             bundle endpoint serves with the server's X509-SVID (profile \"https_spiffe\")",
        ),
        (
            "federates_with \"d.test\" {\n bundle_endpoint_url = \"https://d.test\"\n}",
            "federation configuration for trust domain \"d.test\": missing bundle endpoint \
             configuration",
        ),
        (
            "federates_with \"d.test\" {\n bundle_endpoint_url = \"https://d.test\"\n bundle_endpoint_profile \"https_x\" {}\n}",
            "error parsing federation relationship for trust domain \"d.test\": no bundle \
             endpoint profile defined; current supported profiles are \"https_spiffe\" and \
             'https_web\"",
        ),
        (
            "bundle_endpoint {\n port = 8443\n color = \"blue\"\n}",
            "server.federation.bundle_endpoint.color is not a setting of SPIRE's server (SPIRE \
             refuses it as unknown configuration)",
        ),
    ];
    for (block, want) in cases {
        let err = read_text(&conf(block)).unwrap_err();
        assert_eq!(refusals(err), [want], "{block}");
    }
    // A bad endpoint SPIFFE ID passes the reader and is refused with the key's name.
    let err = read_text(&conf(
        "federates_with \"d.test\" {\n bundle_endpoint_url = \"https://d.test\"\n bundle_endpoint_profile \"https_spiffe\" {\n endpoint_spiffe_id = \"not an id\"\n }\n}",
    ))
    .unwrap_err();
    assert!(
        matches!(err, ConfigError::Invalid { key: "federation.federates_with", .. }),
        "{err:?}"
    );
}
