//! The SPIFFE bundle endpoint and the federated bundle manager between two ward servers on
//! real sockets: serving, fetching with https_spiffe, RefreshBundle and its errors.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::*;
use tonic::Code;
use ward_core::{BundleEndpointProfile, SpiffeId, TrustDomain};
use ward_proto::spire::api::server::bundle::v1 as bundlepb;
use ward_proto::spire::api::server::trustdomain::v1 as tdpb;
use ward_proto::spire::api::types;
use ward_server::federation::client::{EndpointAuth, fetch_bundle};
use ward_server::federation::config::BundleEndpointConfig;

async fn server_with_endpoint(td: &str) -> TestServer {
    let td = TrustDomain::new(td).unwrap();
    TestServer::start_with(|c| {
        c.trust_domain = td;
        c.federation.bundle_endpoint = Some(BundleEndpointConfig {
            address: [127, 0, 0, 1].into(),
            port: 0,
            refresh_hint: std::time::Duration::from_secs(120),
        });
    })
    .await
}

fn url(ts: &TestServer) -> String {
    format!("https://{}", ts.server.bundle_endpoint_addr.unwrap())
}

fn spiffe_rel(
    td: &str,
    url: &str,
    endpoint_id: &str,
    bundle: Option<types::Bundle>,
) -> types::FederationRelationship {
    types::FederationRelationship {
        trust_domain: td.into(),
        bundle_endpoint_url: url.into(),
        bundle_endpoint_profile: Some(
            types::federation_relationship::BundleEndpointProfile::HttpsSpiffe(
                types::HttpsspiffeProfile { endpoint_spiffe_id: endpoint_id.into() },
            ),
        ),
        trust_domain_bundle: bundle,
    }
}

async fn own_bundle(ts: &TestServer) -> types::Bundle {
    let mut c = bundlepb::bundle_client::BundleClient::new(ts.admin().await);
    c.get_bundle(bundlepb::GetBundleRequest::default()).await.unwrap().into_inner()
}

async fn federated(ts: &TestServer, td: &str) -> Result<types::Bundle, tonic::Status> {
    let mut c = bundlepb::bundle_client::BundleClient::new(ts.admin().await);
    c.get_federated_bundle(bundlepb::GetFederatedBundleRequest {
        trust_domain: td.into(),
        output_mask: None,
    })
    .await
    .map(tonic::Response::into_inner)
}

async fn create(ts: &TestServer, rel: types::FederationRelationship) {
    let mut c = tdpb::trust_domain_client::TrustDomainClient::new(ts.admin().await);
    let resp = c
        .batch_create_federation_relationship(tdpb::BatchCreateFederationRelationshipRequest {
            federation_relationships: vec![rel],
            output_mask: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.results[0].status.as_ref().unwrap().code, 0, "{:?}", resp.results[0]);
}

async fn refresh(ts: &TestServer, td: &str) -> Result<(), tonic::Status> {
    let mut c = tdpb::trust_domain_client::TrustDomainClient::new(ts.admin().await);
    c.refresh_bundle(tdpb::RefreshBundleRequest { trust_domain: td.into() }).await.map(|_| ())
}

async fn update(ts: &TestServer, rel: types::FederationRelationship) {
    let mut c = tdpb::trust_domain_client::TrustDomainClient::new(ts.admin().await);
    let resp = c
        .batch_update_federation_relationship(tdpb::BatchUpdateFederationRelationshipRequest {
            federation_relationships: vec![rel],
            input_mask: None,
            output_mask: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.results[0].status.as_ref().unwrap().code, 0, "{:?}", resp.results[0]);
}

/// RefreshBundle of a.test fails with Internal and SPIRE's text for a failed GET of `url`.
async fn assert_refresh_fails(ts: &TestServer, url: &str, why: &str) {
    let err = refresh(ts, "a.test").await.unwrap_err();
    assert_eq!(err.code(), Code::Internal);
    assert_eq!(
        err.message(),
        format!(
            "failed to refresh bundle: failed to fetch federated bundle from endpoint: failed to \
             fetch bundle: Get {url:?}: {why}"
        )
    );
}

fn ders(b: &types::Bundle) -> Vec<Vec<u8>> {
    b.x509_authorities.iter().map(|a| a.asn1.clone()).collect()
}

#[tokio::test]
async fn the_endpoint_serves_the_own_bundle_to_an_https_spiffe_client() {
    let a = server_with_endpoint("a.test").await;
    let stored = a.server.state.store.bundle(&TrustDomain::new("a.test").unwrap()).unwrap();
    let auth = EndpointAuth::Spiffe {
        id: SpiffeId::parse("spiffe://a.test/spire/server").unwrap(),
        roots: a.roots().await,
    };
    let td = TrustDomain::new("a.test").unwrap();
    let got = fetch_bundle(&td, &url(&a), &auth, a.clock.clone()).await.unwrap();
    assert_eq!(got.x509_authorities, stored.x509_authorities);
    assert_eq!(got.jwt_authorities.len(), stored.jwt_authorities.len());
    assert_eq!(got.refresh_hint, 120, "the configured hint is served");
    assert_eq!(got.sequence_number, stored.sequence_number);

    // Other paths and methods are refused as SPIRE's endpoint refuses them.
    let err = fetch_bundle(&td, &format!("{}/bundle", url(&a)), &auth, a.clock.clone())
        .await
        .unwrap_err();
    assert_eq!(err, "unexpected status 404 fetching bundle: 404 page not found\n");
    let source = ward_server::federation::endpoint::BundleSource {
        store: a.server.state.store.clone(),
        trust_domain: td.clone(),
        refresh_hint: std::time::Duration::from_secs(60),
    };
    assert_eq!(source.respond(&http::Method::POST, "/").status(), 405);

    // A client expecting another ID refuses the endpoint.
    let wrong = EndpointAuth::Spiffe {
        id: SpiffeId::parse("spiffe://a.test/other").unwrap(),
        roots: a.roots().await,
    };
    let err = fetch_bundle(&td, &url(&a), &wrong, a.clock.clone()).await.unwrap_err();
    assert_eq!(
        err,
        format!(
            "failed to fetch bundle: Get {:?}: unexpected ID \"spiffe://a.test/spire/server\"",
            url(&a)
        )
    );
}

#[tokio::test]
async fn refresh_bundle_fetches_a_federated_bundle_and_reports_failures_as_spire() {
    let a = server_with_endpoint("a.test").await;
    let b = TestServer::start_with(|c| c.trust_domain = TrustDomain::new("b.test").unwrap()).await;
    let a_bundle = own_bundle(&a).await;

    // No relationship: NotFound in SPIRE's words.
    let err = refresh(&b, "a.test").await.unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::NotFound, "no relationship with trust domain \"a.test\"")
    );
    let err = refresh(&b, "Not A Domain").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("failed to parse trust domain: "), "{}", err.message());

    // The relationship starts from a bundle holding A's CA only, then refreshes to A's.
    let seed = types::Bundle {
        trust_domain: "a.test".into(),
        x509_authorities: a_bundle.x509_authorities.clone(),
        ..Default::default()
    };
    create(&b, spiffe_rel("a.test", &url(&a), "spiffe://a.test/spire/server", Some(seed))).await;
    refresh(&b, "a.test").await.unwrap();
    let got = federated(&b, "a.test").await.unwrap();
    assert_eq!(ders(&got), ders(&a_bundle));
    assert_eq!(got.jwt_authorities.len(), a_bundle.jwt_authorities.len());
    assert_eq!(got.refresh_hint, 120);
    let before = got;

    // A wrong endpoint SPIFFE ID: Internal with SPIRE's text; the stored bundle is unchanged.
    update(&b, spiffe_rel("a.test", &url(&a), "spiffe://a.test/not-the-server", None)).await;
    let why = "unexpected ID \"spiffe://a.test/spire/server\"";
    assert_refresh_fails(&b, &url(&a), why).await;
    assert_eq!(federated(&b, "a.test").await.unwrap(), before);

    // Connection refused: a port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let refused = format!("https://{closed}");
    update(&b, spiffe_rel("a.test", &refused, "spiffe://a.test/spire/server", None)).await;
    let why = format!("dial tcp {closed}: connect: connection refused");
    assert_refresh_fails(&b, &refused, &why).await;
    assert_eq!(federated(&b, "a.test").await.unwrap(), before);

    // https_spiffe needs a local copy of the endpoint trust domain's bundle.
    create(&b, spiffe_rel("c.test", &url(&a), "spiffe://c.test/spire/server", None)).await;
    let err = refresh(&b, "c.test").await.unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (
            Code::Internal,
            "failed to refresh bundle: can't perform SPIFFE Authentication: local copy of bundle \
             not found"
        )
    );
    assert_eq!(federated(&b, "c.test").await.unwrap_err().code(), Code::NotFound);
}

#[tokio::test]
async fn relationships_from_the_configuration_are_managed_without_being_stored() {
    let a = server_with_endpoint("a.test").await;
    let a_bundle = own_bundle(&a).await;
    let endpoint = url(&a);
    let b = TestServer::start_with(|c| {
        c.trust_domain = TrustDomain::new("b.test").unwrap();
        c.federation.federates_with.insert(
            TrustDomain::new("a.test").unwrap(),
            ward_server::federation::EndpointConfig {
                url: endpoint,
                profile: BundleEndpointProfile::HttpsSpiffe {
                    endpoint_spiffe_id: SpiffeId::parse("spiffe://a.test/spire/server").unwrap(),
                },
            },
        );
    })
    .await;
    // Without a local copy of A's bundle the endpoint cannot be authenticated.
    let err = refresh(&b, "a.test").await.unwrap_err();
    assert_eq!(err.code(), Code::Internal);
    let mut c = bundlepb::bundle_client::BundleClient::new(b.admin().await);
    c.batch_set_federated_bundle(bundlepb::BatchSetFederatedBundleRequest {
        bundle: vec![types::Bundle {
            trust_domain: "a.test".into(),
            x509_authorities: a_bundle.x509_authorities.clone(),
            ..Default::default()
        }],
        output_mask: None,
    })
    .await
    .unwrap();
    refresh(&b, "a.test").await.unwrap();
    let got = federated(&b, "a.test").await.unwrap();
    assert_eq!(got.jwt_authorities.len(), a_bundle.jwt_authorities.len());
    assert_eq!(got.refresh_hint, 120);
    let mut t = tdpb::trust_domain_client::TrustDomainClient::new(b.admin().await);
    let list = t
        .list_federation_relationships(tdpb::ListFederationRelationshipsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(list.federation_relationships.is_empty(), "static relationships are not stored");
}

/// A Web PKI CA (DER) and a rustls server configuration for `127.0.0.1` signed by it.
fn web_pki_server() -> (Vec<u8>, rustls::ServerConfig) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "web test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let cfg = rustls::ServerConfig::builder_with_provider(ward_server::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .unwrap();
    (ca.der().to_vec(), cfg)
}

#[tokio::test]
async fn https_web_endpoints_are_checked_against_web_pki_roots_plus_injected_ones() {
    let a = server_with_endpoint("a.test").await;
    let td = TrustDomain::new("a.test").unwrap();
    let (ca, cfg) = web_pki_server();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let source = ward_server::federation::endpoint::BundleSource {
        store: a.server.state.store.clone(),
        trust_domain: td.clone(),
        refresh_hint: std::time::Duration::from_secs(60),
    };
    let served = tokio::spawn(ward_server::federation::endpoint::serve(
        listener,
        std::sync::Arc::new(cfg),
        std::sync::Arc::new(source),
        stop_rx,
    ));

    let web = EndpointAuth::Web { extra_roots: vec![ca] };
    let got = fetch_bundle(&td, &url, &web, a.clock.clone()).await.unwrap();
    let stored = a.server.state.store.bundle(&td).unwrap();
    assert_eq!(got.x509_authorities, stored.x509_authorities);
    assert_eq!(got.refresh_hint, 60);

    // The built-in roots alone do not know the test CA.
    let bare = EndpointAuth::Web { extra_roots: Vec::new() };
    let err = fetch_bundle(&td, &url, &bare, a.clock.clone()).await.unwrap_err();
    assert_eq!(
        err,
        format!(
            "failed to fetch bundle: Get {url:?}: tls: failed to verify certificate: x509: \
             certificate signed by unknown authority"
        )
    );
    stop.send(true).unwrap();
    served.await.unwrap();
}

#[tokio::test]
async fn the_manager_fetches_a_new_relationship_without_being_asked() {
    let a = server_with_endpoint("a.test").await;
    let b = TestServer::start_with(|c| c.trust_domain = TrustDomain::new("b.test").unwrap()).await;
    let a_bundle = own_bundle(&a).await;
    let seed = types::Bundle {
        trust_domain: "a.test".into(),
        x509_authorities: a_bundle.x509_authorities.clone(),
        ..Default::default()
    };
    create(&b, spiffe_rel("a.test", &url(&a), "spiffe://a.test/spire/server", Some(seed))).await;
    // The relationship set is re-read every 10 s; the first fetch follows at once.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let got = federated(&b, "a.test").await.unwrap();
        if got.jwt_authorities.len() == a_bundle.jwt_authorities.len() && got.refresh_hint == 120 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no background fetch: {got:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
