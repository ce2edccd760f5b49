//! The answer to one discovery request: which secrets a caller gets for the names it asked
//! for, built as SPIRE v1.13's agent builds them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use prost::Message;
use prost_types::Any;
use tonic::Status;
use ward_core::bundle::pem::encode_certificates;
use ward_core::{Bundle, SelectorSet, TrustDomain};
use ward_proto::envoy::config::core::v3::node::UserAgentVersionType;
use ward_proto::envoy::config::core::v3::{DataSource, Node, TypedExtensionConfig, data_source};
use ward_proto::envoy::extensions::transport_sockets::tls::v3::Secret;
use ward_proto::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, SpiffeCertValidatorConfig, TlsCertificate, secret,
    spiffe_cert_validator_config,
};
use ward_proto::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use zeroize::Zeroizing;

use super::SdsConfig;
use crate::cache::{CacheView, X509Identity};

/// The `Any` type URL of an SDS resource.
pub const SECRET_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// The `Any` type URL of the SPIFFE certificate validator's configuration.
pub const SPIFFE_VALIDATOR_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig";

/// The name of Envoy's SPIFFE certificate validator extension.
pub const SPIFFE_VALIDATOR_NAME: &str = "envoy.tls.cert_validator.spiffe";

/// The Node metadata key that turns the SPIFFE validator off (or on) for one proxy.
pub const DISABLE_SPIFFE_CERT_VALIDATION_KEY: &str = "disable_spiffe_cert_validation";

/// What one caller may be served at one moment: the trust domain's bundle, the federated
/// bundles its identities ask for, and its identities (by entry id).
#[derive(Clone, Debug)]
pub struct WorkloadUpdate {
    /// The agent's own trust domain's bundle.
    pub bundle: Arc<Bundle>,
    /// The federated bundles the caller's identities federate with.
    pub federated: BTreeMap<TrustDomain, Arc<Bundle>>,
    /// The caller's identities, by entry id; the first is the default one.
    pub identities: Vec<Arc<X509Identity>>,
}

impl WorkloadUpdate {
    /// What a caller with `selectors` may be served from `view`.
    pub fn for_caller(view: &CacheView, selectors: &SelectorSet) -> Self {
        let identities = view.identities_for(selectors);
        let federated = view.federated_bundles_for(&identities);
        Self { bundle: Arc::clone(&view.bundle), federated, identities }
    }

    /// Whether `other` serves this caller exactly the same secrets.
    pub fn same_as(&self, other: &Self) -> bool {
        self.bundle == other.bundle
            && self.federated == other.federated
            && self.identities.len() == other.identities.len()
            && self.identities.iter().zip(&other.identities).all(|(a, b)| {
                Arc::ptr_eq(a, b)
                    || (a.entry_id == b.entry_id
                        && a.spiffe_id == b.spiffe_id
                        && a.chain == b.chain
                        && a.private_key == b.private_key)
            })
    }
}

/// Builds the response to `req` for a caller served `upd`.
///
/// `version_info` is empty for `FetchSecrets`; `nonce` is `None` there too. Requested names
/// are SPIFFE IDs of the caller's identities, the configured default SVID name (the first
/// identity), `spiffe://<trust domain>` of the own or a federated trust domain, the default
/// bundle name (the own trust domain's bundle) and the all-bundles name (one SPIFFE validator
/// holding every bundle). No name means everything but the named defaults.
///
/// # Errors
/// `InvalidArgument` naming the requested names left unserved; `Internal` when the all-bundles
/// name is asked for while the SPIFFE validator is off (SPIRE's texts).
pub fn build_response(
    config: &SdsConfig,
    version_info: &str,
    nonce: Option<String>,
    req: &DiscoveryRequest,
    upd: &WorkloadUpdate,
) -> Result<DiscoveryResponse, Status> {
    let mut names: BTreeSet<&str> =
        req.resource_names.iter().map(String::as_str).filter(|n| !n.is_empty()).collect();
    let all = names.is_empty();
    let builder = ValidationContexts::new(spiffe_validator_wanted(config, req.node.as_ref()), upd);
    let mut resources = Vec::new();

    // Only one of the own trust domain's names is served per request: the first that
    // matches, in this order (SPIRE's behaviour).
    let own_id = upd.bundle.trust_domain.id().to_string();
    if all || names.contains(own_id.as_str()) {
        resources.push(builder.one(&own_id, &upd.bundle.trust_domain)?);
        names.remove(own_id.as_str());
    } else if names.contains(config.default_bundle_name.as_str()) {
        resources.push(builder.one(&config.default_bundle_name, &upd.bundle.trust_domain)?);
        names.remove(config.default_bundle_name.as_str());
    } else if names.contains(config.default_all_bundles_name.as_str()) {
        resources.push(builder.all(&config.default_all_bundles_name)?);
        names.remove(config.default_all_bundles_name.as_str());
    }

    for td in upd.federated.keys() {
        let id = td.id().to_string();
        if all || names.contains(id.as_str()) {
            resources.push(builder.one(&id, td)?);
            names.remove(id.as_str());
        }
    }

    for (i, identity) in upd.identities.iter().enumerate() {
        let id = identity.spiffe_id.as_str();
        if all || names.contains(id) {
            resources.push(tls_certificate(id, identity));
            names.remove(id);
        } else if i == 0 && names.contains(config.default_svid_name.as_str()) {
            resources.push(tls_certificate(&config.default_svid_name, identity));
            names.remove(config.default_svid_name.as_str());
        }
    }

    if !names.is_empty() {
        let quoted: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
        return Err(Status::invalid_argument(format!(
            "workload is not authorized for the requested identities [{}]",
            quoted.join(" ")
        )));
    }

    Ok(DiscoveryResponse {
        version_info: version_info.to_owned(),
        resources,
        type_url: req.type_url.clone(),
        nonce: nonce.unwrap_or_default(),
        ..Default::default()
    })
}

/// Whether validation contexts use Envoy's SPIFFE validator: unless turned off by the
/// agent's configuration or the Node metadata key (a bool, or a string Go's `ParseBool`
/// accepts; any other value is ignored), and only for Envoy newer than 1.17 (or a proxy that
/// does not say its build version).
pub fn spiffe_validator_wanted(config: &SdsConfig, node: Option<&Node>) -> bool {
    let mut disabled = config.disable_spiffe_cert_validation;
    let value = node
        .and_then(|n| n.metadata.as_ref())
        .and_then(|m| m.fields.get(DISABLE_SPIFFE_CERT_VALIDATION_KEY))
        .and_then(|v| v.kind.as_ref());
    match value {
        Some(prost_types::value::Kind::BoolValue(b)) => disabled = *b,
        Some(prost_types::value::Kind::StringValue(s)) => {
            if let Some(b) = parse_go_bool(s) {
                disabled = b;
            }
        }
        _ => {}
    }
    !disabled && supports_spiffe_validator(node)
}

fn supports_spiffe_validator(node: Option<&Node>) -> bool {
    match node.and_then(|n| n.user_agent_version_type.as_ref()) {
        Some(UserAgentVersionType::UserAgentBuildVersion(build)) => {
            let v = build.version.unwrap_or_default();
            (v.major_number == 1 && v.minor_number > 17) || v.major_number > 1
        }
        _ => true,
    }
}

/// Go's `strconv.ParseBool`.
fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Builds validation-context secrets from the bundles a caller may see.
struct ValidationContexts<'a> {
    spiffe: bool,
    bundles: BTreeMap<&'a TrustDomain, &'a Bundle>,
}

impl<'a> ValidationContexts<'a> {
    fn new(spiffe: bool, upd: &'a WorkloadUpdate) -> Self {
        let mut bundles: BTreeMap<&TrustDomain, &Bundle> =
            upd.federated.iter().map(|(td, b)| (td, b.as_ref())).collect();
        bundles.insert(&upd.bundle.trust_domain, upd.bundle.as_ref());
        Self { spiffe, bundles }
    }

    /// The secret `name` validating peers of `td`.
    fn one(&self, name: &str, td: &TrustDomain) -> Result<Any, Status> {
        let Some(bundle) = self.bundles.get(td) else {
            let id = td.id().to_string();
            return Err(if self.spiffe {
                Status::not_found(format!("no bundle found for trust domain: {id:?}"))
            } else {
                Status::internal(format!("no bundle found for trust domain: {id:?}"))
            });
        };
        let context = if self.spiffe {
            spiffe_validator(vec![validator_trust_domain(bundle)])
        } else {
            CertificateValidationContext {
                trusted_ca: Some(inline(bundle.x509_authorities_to_pem().into_bytes())),
                ..Default::default()
            }
        };
        Ok(validation_context_secret(name, context))
    }

    /// The secret `name` validating peers of every trust domain the caller may see, ordered
    /// by trust domain name.
    fn all(&self, name: &str) -> Result<Any, Status> {
        if !self.spiffe {
            return Err(Status::internal(
                r#"unable to use "SPIFFE validator" on Envoy below 1.17"#,
            ));
        }
        let mut trust_domains: Vec<_> =
            self.bundles.values().map(|b| validator_trust_domain(b)).collect();
        trust_domains.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(validation_context_secret(name, spiffe_validator(trust_domains)))
    }
}

fn validator_trust_domain(bundle: &Bundle) -> spiffe_cert_validator_config::TrustDomain {
    spiffe_cert_validator_config::TrustDomain {
        name: bundle.trust_domain.as_str().to_owned(),
        trust_bundle: Some(inline(bundle.x509_authorities_to_pem().into_bytes())),
    }
}

fn spiffe_validator(
    trust_domains: Vec<spiffe_cert_validator_config::TrustDomain>,
) -> CertificateValidationContext {
    let config = SpiffeCertValidatorConfig { trust_domains, trust_bundles: None };
    CertificateValidationContext {
        custom_validator_config: Some(TypedExtensionConfig {
            name: SPIFFE_VALIDATOR_NAME.to_owned(),
            typed_config: Some(Any {
                type_url: SPIFFE_VALIDATOR_TYPE_URL.to_owned(),
                value: config.encode_to_vec(),
            }),
        }),
        ..Default::default()
    }
}

fn validation_context_secret(name: &str, context: CertificateValidationContext) -> Any {
    secret_any(Secret {
        name: name.to_owned(),
        r#type: Some(secret::Type::ValidationContext(context)),
    })
}

/// The secret `name` holding `identity`'s chain and key, both PEM.
fn tls_certificate(name: &str, identity: &X509Identity) -> Any {
    let key_pem = Zeroizing::new(pem::encode_config(
        &pem::Pem::new("PRIVATE KEY", identity.private_key.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    ));
    secret_any(Secret {
        name: name.to_owned(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: Some(inline(encode_certificates(&identity.chain).into_bytes())),
            private_key: Some(inline(key_pem.as_bytes().to_vec())),
        })),
    })
}

fn inline(bytes: Vec<u8>) -> DataSource {
    DataSource { specifier: Some(data_source::Specifier::InlineBytes(bytes)) }
}

fn secret_any(secret: Secret) -> Any {
    Any { type_url: SECRET_TYPE_URL.to_owned(), value: secret.encode_to_vec() }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use prost_types::{Struct, Value, value::Kind};
    use ward_core::{Selector, SpiffeId, X509Authority};
    use ward_proto::envoy::config::core::v3::BuildVersion;
    use ward_proto::envoy::r#type::v3::SemanticVersion;

    use super::*;

    fn bundle(td: &str, der: &[u8]) -> Arc<Bundle> {
        let mut b = Bundle::new(TrustDomain::new(td).unwrap());
        b.x509_authorities.push(X509Authority::new(der.to_vec()));
        Arc::new(b)
    }

    fn identity(entry_id: &str, path: &str, federates_with: &[&str]) -> Arc<X509Identity> {
        Arc::new(X509Identity {
            entry_id: entry_id.into(),
            spiffe_id: SpiffeId::parse(&format!("spiffe://example.org/{path}")).unwrap(),
            selectors: SelectorSet::new(vec![Selector::parse("unix:uid:1").unwrap()]),
            federates_with: federates_with.iter().map(|t| TrustDomain::new(t).unwrap()).collect(),
            hint: String::new(),
            admin: false,
            downstream: false,
            chain: vec![path.as_bytes().to_vec(), b"intermediate".to_vec()],
            private_key: Arc::new(Zeroizing::new(format!("key-{path}").into_bytes())),
            expires_at: SystemTime::UNIX_EPOCH,
        })
    }

    fn update() -> WorkloadUpdate {
        let mut view = CacheView::new(Bundle::clone(&bundle("example.org", b"own-ca")));
        view.federated.insert(TrustDomain::new("b.test").unwrap(), bundle("b.test", b"b-ca"));
        view.federated.insert(TrustDomain::new("a.test").unwrap(), bundle("a.test", b"a-ca"));
        view.identities =
            vec![identity("1", "web", &["b.test", "a.test"]), identity("2", "db", &[])];
        WorkloadUpdate::for_caller(
            &view,
            &SelectorSet::new(vec![Selector::parse("unix:uid:1").unwrap()]),
        )
    }

    fn request(names: &[&str], node: Option<Node>) -> DiscoveryRequest {
        DiscoveryRequest {
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            type_url: SECRET_TYPE_URL.into(),
            node,
            ..Default::default()
        }
    }

    fn envoy(major: u32, minor: u32) -> Node {
        Node {
            user_agent_version_type: Some(UserAgentVersionType::UserAgentBuildVersion(
                BuildVersion {
                    version: Some(SemanticVersion {
                        major_number: major,
                        minor_number: minor,
                        patch: 0,
                    }),
                    metadata: None,
                },
            )),
            ..Default::default()
        }
    }

    fn with_metadata(mut node: Node, value: Kind) -> Node {
        let mut fields = BTreeMap::new();
        fields.insert(DISABLE_SPIFFE_CERT_VALIDATION_KEY.to_owned(), Value { kind: Some(value) });
        node.metadata = Some(Struct { fields });
        node
    }

    fn secrets(resp: &DiscoveryResponse) -> Vec<Secret> {
        resp.resources
            .iter()
            .map(|any| {
                assert_eq!(any.type_url, SECRET_TYPE_URL);
                Secret::decode(any.value.as_slice()).unwrap()
            })
            .collect()
    }

    fn inline_text(source: &Option<DataSource>) -> String {
        match source.as_ref().and_then(|s| s.specifier.as_ref()) {
            Some(data_source::Specifier::InlineBytes(b)) => String::from_utf8(b.clone()).unwrap(),
            other => panic!("not inline bytes: {other:?}"),
        }
    }

    /// (trust domain name, PEM) of each SPIFFE validator trust domain, or `None` for a
    /// `trusted_ca` context (then the PEM is in the second slot of a single pair).
    fn validator(secret: &Secret) -> (Option<Vec<(String, String)>>, Option<String>) {
        let Some(secret::Type::ValidationContext(ctx)) = &secret.r#type else {
            panic!("not a validation context: {secret:?}");
        };
        let spiffe = ctx.custom_validator_config.as_ref().map(|c| {
            assert_eq!(c.name, SPIFFE_VALIDATOR_NAME);
            let any = c.typed_config.as_ref().unwrap();
            assert_eq!(any.type_url, SPIFFE_VALIDATOR_TYPE_URL);
            let config = SpiffeCertValidatorConfig::decode(any.value.as_slice()).unwrap();
            config
                .trust_domains
                .iter()
                .map(|td| (td.name.clone(), inline_text(&td.trust_bundle)))
                .collect()
        });
        let trusted = ctx.trusted_ca.as_ref().map(|_| inline_text(&ctx.trusted_ca));
        (spiffe, trusted)
    }

    fn pem(der: &[u8]) -> String {
        encode_certificates(&[der])
    }

    fn build(names: &[&str], node: Option<Node>) -> Result<DiscoveryResponse, Status> {
        build_response(
            &SdsConfig::default(),
            "3",
            Some("abcd0123".into()),
            &request(names, node),
            &update(),
        )
    }

    #[test]
    fn an_identity_is_served_by_its_spiffe_id_as_pem_chain_and_pkcs8_key() {
        let resp = build(&["spiffe://example.org/db"], None).unwrap();
        assert_eq!((resp.version_info.as_str(), resp.nonce.as_str()), ("3", "abcd0123"));
        assert_eq!(resp.type_url, SECRET_TYPE_URL);
        let got = secrets(&resp);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].name, "spiffe://example.org/db");
        let Some(secret::Type::TlsCertificate(tls)) = &got[0].r#type else { panic!() };
        assert_eq!(
            inline_text(&tls.certificate_chain),
            encode_certificates(&[b"db".as_slice(), b"intermediate".as_slice()])
        );
        let key = pem::parse(inline_text(&tls.private_key)).unwrap();
        assert_eq!((key.tag(), key.contents()), ("PRIVATE KEY", b"key-db".as_slice()));
    }

    #[test]
    fn default_is_the_first_identity_under_the_name_default() {
        let got = secrets(&build(&["default"], None).unwrap());
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].name, "default");
        let Some(secret::Type::TlsCertificate(tls)) = &got[0].r#type else { panic!() };
        assert!(inline_text(&tls.certificate_chain).starts_with(&pem(b"web")));
    }

    #[test]
    fn rootca_and_trust_domain_ids_are_spiffe_validators_of_one_trust_domain() {
        let got = secrets(&build(&["ROOTCA", "spiffe://a.test"], None).unwrap());
        let names: Vec<&str> = got.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["ROOTCA", "spiffe://a.test"]);
        assert_eq!(validator(&got[0]), (Some(vec![("example.org".into(), pem(b"own-ca"))]), None));
        assert_eq!(validator(&got[1]), (Some(vec![("a.test".into(), pem(b"a-ca"))]), None));
    }

    #[test]
    fn all_is_one_spiffe_validator_with_every_trust_domain_sorted_by_name() {
        let got = secrets(&build(&["ALL"], Some(envoy(1, 18))).unwrap());
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].name, "ALL");
        let expected = vec![
            ("a.test".to_owned(), pem(b"a-ca")),
            ("b.test".to_owned(), pem(b"b-ca")),
            ("example.org".to_owned(), pem(b"own-ca")),
        ];
        assert_eq!(validator(&got[0]), (Some(expected), None));
    }

    #[test]
    fn old_envoy_and_disabled_validation_get_trusted_ca() {
        for node in [
            Some(envoy(1, 17)),
            Some(with_metadata(Node::default(), Kind::BoolValue(true))),
            Some(with_metadata(envoy(1, 30), Kind::StringValue("T".into()))),
        ] {
            let got = secrets(&build(&["ROOTCA"], node.clone()).unwrap());
            assert_eq!(validator(&got[0]), (None, Some(pem(b"own-ca"))), "{node:?}");
        }
        let err = build(&["ALL"], Some(envoy(1, 17))).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Internal);
        assert_eq!(err.message(), r#"unable to use "SPIFFE validator" on Envoy below 1.17"#);
    }

    #[test]
    fn node_metadata_overrides_the_configured_switch_and_bad_values_are_ignored() {
        let config = SdsConfig { disable_spiffe_cert_validation: true, ..Default::default() };
        let on = with_metadata(Node::default(), Kind::StringValue("false".into()));
        assert!(spiffe_validator_wanted(&config, Some(&on)));
        let junk = with_metadata(Node::default(), Kind::StringValue("nope".into()));
        assert!(!spiffe_validator_wanted(&config, Some(&junk)));
        assert!(!spiffe_validator_wanted(&config, None));
        assert!(spiffe_validator_wanted(&SdsConfig::default(), Some(&envoy(2, 0))));
    }

    #[test]
    fn no_names_serve_own_bundle_then_federated_then_every_identity() {
        let got = secrets(&build(&[], None).unwrap());
        let names: Vec<&str> = got.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "spiffe://example.org",
                "spiffe://a.test",
                "spiffe://b.test",
                "spiffe://example.org/web",
                "spiffe://example.org/db",
            ]
        );
    }

    #[test]
    fn names_left_unserved_are_invalid_argument_with_spires_text() {
        let err = build(&["spiffe://example.org/other", "default", "nope"], None).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            err.message(),
            r#"workload is not authorized for the requested identities ["nope" "spiffe://example.org/other"]"#
        );
        // Only one of the own trust domain's names is honoured per request.
        let err = build(&["ROOTCA", "ALL"], None).unwrap_err();
        assert_eq!(
            err.message(),
            r#"workload is not authorized for the requested identities ["ALL"]"#
        );
        // The first identity asked for by its ID is not also served as the default.
        let err = build(&["spiffe://example.org/web", "default"], None).unwrap_err();
        assert_eq!(
            err.message(),
            r#"workload is not authorized for the requested identities ["default"]"#
        );
    }

    #[test]
    fn a_caller_without_identities_still_gets_the_bundle_but_no_federated_ones() {
        let mut upd = update();
        upd.identities.clear();
        upd.federated.clear();
        let resp =
            build_response(&SdsConfig::default(), "", None, &request(&[], None), &upd).unwrap();
        assert_eq!((resp.version_info.as_str(), resp.nonce.as_str()), ("", ""));
        let names: Vec<String> = secrets(&resp).into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["spiffe://example.org"]);
    }
}
