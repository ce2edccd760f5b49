//! Federated bundles: set, create, update, list, fetch by an agent, delete.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use tonic::Code;
use ward_proto::spire::api::server::bundle::v1 as bundlepb;
use ward_proto::spire::api::types;

fn foreign_ca(td: &str) -> Vec<u8> {
    let key = ward_ca::PrivateKey::generate(ward_ca::KeyType::EcP256).unwrap();
    let td = ward_core::TrustDomain::new(td).unwrap();
    let ca = ward_ca::X509Ca::self_signed(key, &td, Duration::from_secs(3600), SystemTime::now())
        .unwrap();
    ca.cert_der().to_vec()
}

fn bundle(td: &str, der: Vec<u8>) -> types::Bundle {
    types::Bundle {
        trust_domain: td.into(),
        x509_authorities: vec![types::X509Certificate { asn1: der, tainted: false }],
        ..Default::default()
    }
}

fn codes<T>(items: &[T], status: impl Fn(&T) -> Option<&types::Status>) -> Vec<(i32, String)> {
    items
        .iter()
        .map(|r| {
            let s = status(r).unwrap();
            (s.code, s.message.clone())
        })
        .collect()
}

#[tokio::test]
async fn federated_bundle_lifecycle() {
    let ts = TestServer::start().await;
    let mut admin = bundlepb::bundle_client::BundleClient::new(ts.admin().await);
    let other = foreign_ca("other.org");

    let resp = admin
        .batch_set_federated_bundle(bundlepb::BatchSetFederatedBundleRequest {
            bundle: vec![
                bundle("other.org", other.clone()),
                bundle("example.org", other.clone()),
                bundle("third.org", b"not a certificate".to_vec()),
            ],
            output_mask: None,
        })
        .await
        .unwrap()
        .into_inner();
    let got = codes(&resp.results, |r| r.status.as_ref());
    assert_eq!(got[0], (0, "OK".into()));
    assert_eq!(
        got[1],
        (
            Code::InvalidArgument as i32,
            "setting a federated bundle for the server's own trust domain is not allowed".into()
        )
    );
    assert_eq!(got[2].0, Code::InvalidArgument as i32);
    assert!(got[2].1.starts_with("failed to convert bundle: unable to parse X.509 authority"));
    assert_eq!(resp.results[0].bundle.as_ref().unwrap().x509_authorities[0].asn1, other);

    let resp = admin
        .batch_create_federated_bundle(bundlepb::BatchCreateFederatedBundleRequest {
            bundle: vec![
                bundle("other.org", other.clone()),
                bundle("fourth.org", foreign_ca("fourth.org")),
            ],
            output_mask: None,
        })
        .await
        .unwrap()
        .into_inner();
    let got = codes(&resp.results, |r| r.status.as_ref());
    assert_eq!(got[0], (Code::AlreadyExists as i32, "bundle already exists".into()));
    assert_eq!(got[1].0, 0);

    let list = admin
        .list_federated_bundles(bundlepb::ListFederatedBundlesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut tds: Vec<_> = list.bundles.iter().map(|b| b.trust_domain.clone()).collect();
    tds.sort();
    assert_eq!(tds, vec!["fourth.org", "other.org"]);

    // Update only the refresh hint.
    let resp = admin
        .batch_update_federated_bundle(bundlepb::BatchUpdateFederatedBundleRequest {
            bundle: vec![
                types::Bundle {
                    trust_domain: "other.org".into(),
                    refresh_hint: 300,
                    ..Default::default()
                },
                types::Bundle { trust_domain: "nowhere.org".into(), ..Default::default() },
            ],
            input_mask: Some(types::BundleMask { refresh_hint: true, ..Default::default() }),
            output_mask: None,
        })
        .await
        .unwrap()
        .into_inner();
    let got = codes(&resp.results, |r| r.status.as_ref());
    assert_eq!(got[1], (Code::NotFound as i32, "bundle not found".into()));
    let updated = resp.results[0].bundle.as_ref().unwrap();
    assert_eq!(updated.refresh_hint, 300);
    assert_eq!(updated.x509_authorities.len(), 1, "authorities kept");

    // An agent fetches it over mTLS.
    let roots = ts.roots().await;
    let (ident, _) = new_agent(&ts).await;
    let ch = tls_channel(ts.addr(), &roots, Some(ident)).await;
    let got = bundlepb::bundle_client::BundleClient::new(ch)
        .get_federated_bundle(bundlepb::GetFederatedBundleRequest {
            trust_domain: "other.org".into(),
            output_mask: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.x509_authorities[0].asn1, other);

    let resp = admin
        .batch_delete_federated_bundle(bundlepb::BatchDeleteFederatedBundleRequest {
            trust_domains: vec!["other.org".into(), "other.org".into(), "example.org".into()],
            mode: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let got = codes(&resp.results, |r| r.status.as_ref());
    assert_eq!(got[0].0, 0);
    assert_eq!(got[1], (Code::NotFound as i32, "bundle not found".into()));
    assert_eq!(got[2].0, Code::InvalidArgument as i32);
    assert!(
        ts.server.state.store.bundle(&ward_core::TrustDomain::new("other.org").unwrap()).is_none()
    );
    ts.server.shutdown().await;
}

#[tokio::test]
async fn append_to_own_bundle() {
    let ts = TestServer::start().await;
    let mut admin = bundlepb::bundle_client::BundleClient::new(ts.admin().await);
    let before =
        admin.get_bundle(bundlepb::GetBundleRequest::default()).await.unwrap().into_inner();
    let extra = foreign_ca("example.org");
    let after = admin
        .append_bundle(bundlepb::AppendBundleRequest {
            x509_authorities: vec![types::X509Certificate { asn1: extra.clone(), tainted: false }],
            jwt_authorities: vec![],
            output_mask: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.x509_authorities.len(), before.x509_authorities.len() + 1);
    assert!(after.x509_authorities.iter().any(|a| a.asn1 == extra));
    assert!(after.sequence_number > before.sequence_number);

    let err = admin.append_bundle(bundlepb::AppendBundleRequest::default()).await.unwrap_err();
    assert_eq!((err.code(), err.message()), (Code::InvalidArgument, "no authorities to append"));
    let err = admin
        .append_bundle(bundlepb::AppendBundleRequest {
            x509_authorities: vec![types::X509Certificate {
                asn1: b"junk".to_vec(),
                tainted: false,
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let now = admin.get_bundle(bundlepb::GetBundleRequest::default()).await.unwrap().into_inner();
    assert_eq!(now, after, "refused appends change nothing");
    ts.server.shutdown().await;
}

#[tokio::test]
async fn federation_relationships_crud() {
    use ward_proto::spire::api::server::trustdomain::v1 as tdpb;
    let ts = TestServer::start().await;
    let mut c = tdpb::trust_domain_client::TrustDomainClient::new(ts.admin().await);
    let rel = |td: &str, url: &str| types::FederationRelationship {
        trust_domain: td.into(),
        bundle_endpoint_url: url.into(),
        bundle_endpoint_profile: Some(
            types::federation_relationship::BundleEndpointProfile::HttpsWeb(
                types::HttpsWebProfile {},
            ),
        ),
        trust_domain_bundle: None,
    };
    let resp = c
        .batch_create_federation_relationship(tdpb::BatchCreateFederationRelationshipRequest {
            federation_relationships: vec![
                rel("other.org", "https://other.org/bundle"),
                rel("other.org", "https://other.org/bundle"),
                rel("example.org", "https://example.org/bundle"),
                rel("bad.org", "http://bad.org/bundle"),
            ],
            output_mask: None,
        })
        .await
        .unwrap()
        .into_inner();
    let got = codes(&resp.results, |r| r.status.as_ref());
    assert_eq!(got[0].0, 0);
    assert_eq!(
        got[1],
        (
            Code::Internal as i32,
            "failed to create federation relationship: datastore-sql: UNIQUE constraint failed: \
             federated_trust_domains.trust_domain"
                .into()
        )
    );
    assert_eq!(
        got[2],
        (
            Code::InvalidArgument as i32,
            "unable to create federation relationship for server trust domain".into()
        )
    );
    assert_eq!(got[3].0, Code::InvalidArgument as i32);

    let list = c
        .list_federation_relationships(tdpb::ListFederationRelationshipsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.federation_relationships.len(), 1);

    let resp = c
        .batch_update_federation_relationship(tdpb::BatchUpdateFederationRelationshipRequest {
            federation_relationships: vec![rel("other.org", "https://other.org/v2")],
            input_mask: Some(types::FederationRelationshipMask {
                bundle_endpoint_url: true,
                ..Default::default()
            }),
            output_mask: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resp.results[0].federation_relationship.as_ref().unwrap().bundle_endpoint_url,
        "https://other.org/v2"
    );
    let got = c
        .get_federation_relationship(tdpb::GetFederationRelationshipRequest {
            trust_domain: "other.org".into(),
            output_mask: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.bundle_endpoint_url, "https://other.org/v2");

    let resp = c
        .batch_delete_federation_relationship(tdpb::BatchDeleteFederationRelationshipRequest {
            trust_domains: vec!["other.org".into(), "other.org".into()],
        })
        .await
        .unwrap()
        .into_inner();
    let got = codes(&resp.results, |r| r.status.as_ref());
    assert_eq!(got[0].0, 0);
    assert_eq!(got[1], (Code::NotFound as i32, "federation relationship not found".into()));
    let err = c
        .get_federation_relationship(tdpb::GetFederationRelationshipRequest {
            trust_domain: "other.org".into(),
            output_mask: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    ts.server.shutdown().await;
}
