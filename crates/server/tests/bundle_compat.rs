//! Bundles and federation relationships answer as SPIRE v1.13.3 does, over the real admin
//! socket: texts and codes, sequence numbers, relationship bundles, listing order, and the
//! parsing of caller-supplied authorities.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use tonic::Code;
use ward_proto::spire::api::server::bundle::v1 as bundlepb;
use ward_proto::spire::api::server::entry::v1 as entrypb;
use ward_proto::spire::api::server::trustdomain::v1 as tdpb;
use ward_proto::spire::api::types;

type BundleClient = bundlepb::bundle_client::BundleClient<tonic::transport::Channel>;
type TdClient = tdpb::trust_domain_client::TrustDomainClient<tonic::transport::Channel>;

fn ca_der(td: &str) -> Vec<u8> {
    let key = ward_ca::PrivateKey::generate(ward_ca::KeyType::EcP256).unwrap();
    let td = ward_core::TrustDomain::new(td).unwrap();
    let ca = ward_ca::X509Ca::self_signed(key, &td, Duration::from_secs(3600), SystemTime::now())
        .unwrap();
    ca.cert_der().to_vec()
}

fn jwt_key(kid: &str) -> types::JwtKey {
    let key = ward_ca::PrivateKey::generate(ward_ca::KeyType::EcP256).unwrap();
    types::JwtKey {
        public_key: key.public_key_der().to_vec(),
        key_id: kid.into(),
        expires_at: 2_000_000_000,
        tainted: false,
    }
}

fn bundle(td: &str, der: Vec<u8>) -> types::Bundle {
    types::Bundle {
        trust_domain: td.into(),
        x509_authorities: vec![types::X509Certificate { asn1: der, tainted: false }],
        ..Default::default()
    }
}

fn status(s: Option<&types::Status>) -> (i32, String) {
    let s = s.unwrap();
    (s.code, s.message.clone())
}

fn web_relationship(td: &str, b: Option<types::Bundle>) -> types::FederationRelationship {
    types::FederationRelationship {
        trust_domain: td.into(),
        bundle_endpoint_url: format!("https://{td}/bundle"),
        bundle_endpoint_profile: Some(
            types::federation_relationship::BundleEndpointProfile::HttpsWeb(
                types::HttpsWebProfile {},
            ),
        ),
        trust_domain_bundle: b,
    }
}

async fn set(admin: &mut BundleClient, bundles: Vec<types::Bundle>) -> Vec<(i32, String)> {
    admin
        .batch_set_federated_bundle(bundlepb::BatchSetFederatedBundleRequest {
            bundle: bundles,
            output_mask: None,
        })
        .await
        .unwrap()
        .into_inner()
        .results
        .iter()
        .map(|r| status(r.status.as_ref()))
        .collect()
}

async fn federated(admin: &mut BundleClient, td: &str) -> types::Bundle {
    admin
        .get_federated_bundle(bundlepb::GetFederatedBundleRequest {
            trust_domain: td.into(),
            output_mask: None,
        })
        .await
        .unwrap()
        .into_inner()
}

async fn create_relationships(
    c: &mut TdClient,
    rels: Vec<types::FederationRelationship>,
) -> Vec<tdpb::batch_create_federation_relationship_response::Result> {
    c.batch_create_federation_relationship(tdpb::BatchCreateFederationRelationshipRequest {
        federation_relationships: rels,
        output_mask: None,
    })
    .await
    .unwrap()
    .into_inner()
    .results
}

#[tokio::test]
async fn bundle_delete_echoes_the_caller_and_uses_spire_texts() {
    let ts = TestServer::start().await;
    let mut admin = BundleClient::new(ts.admin().await);
    assert_eq!(set(&mut admin, vec![bundle("other.org", ca_der("other.org"))]).await[0].0, 0);
    let mut entries = entrypb::entry_client::EntryClient::new(ts.admin().await);
    let created = entries
        .batch_create_entry(entrypb::BatchCreateEntryRequest {
            entries: vec![types::Entry {
                spiffe_id: Some(id("example.org", "/w")),
                parent_id: Some(id("example.org", "/agent")),
                selectors: vec![types::Selector { r#type: "unix".into(), value: "uid:1".into() }],
                federates_with: vec!["other.org".into()],
                ..Default::default()
            }],
            output_mask: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.results[0].status.as_ref().unwrap().code, 0);

    let delete = |names: &[&str], mode: i32| bundlepb::BatchDeleteFederatedBundleRequest {
        trust_domains: names.iter().map(|n| (*n).to_owned()).collect(),
        mode,
    };
    let resp = admin
        .batch_delete_federated_bundle(delete(
            &["spiffe://other.org", "Bad!", "example.org", "nowhere.org"],
            0,
        ))
        .await
        .unwrap()
        .into_inner();
    let got: Vec<(String, (i32, String))> =
        resp.results.iter().map(|r| (r.trust_domain.clone(), status(r.status.as_ref()))).collect();
    assert_eq!(
        got,
        vec![
            (
                "spiffe://other.org".into(),
                (
                    Code::FailedPrecondition as i32,
                    "failed to delete federated bundle: datastore-sql: cannot delete bundle; \
                     federated with 1 registration entries"
                        .into()
                )
            ),
            (
                "Bad!".into(),
                (
                    Code::InvalidArgument as i32,
                    "trust domain argument is not valid: trust domain characters are limited to \
                     lowercase letters, numbers, dots, dashes, and underscores"
                        .into()
                )
            ),
            (
                "example.org".into(),
                (
                    Code::InvalidArgument as i32,
                    "removing the bundle for the server trust domain is not allowed".into()
                )
            ),
            ("nowhere.org".into(), (Code::NotFound as i32, "bundle not found".into())),
        ]
    );

    let err = admin.batch_delete_federated_bundle(delete(&["other.org"], 7)).await.unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "failed to parse deletion mode: unhandled delete mode \"7\"")
    );

    // Dissociate: deleted, and the result still names the trust domain as sent.
    let resp = admin
        .batch_delete_federated_bundle(delete(&["spiffe://other.org"], 2))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.results[0].trust_domain, "spiffe://other.org");
    assert_eq!(status(resp.results[0].status.as_ref()), (0, "OK".into()));
    // Dissociating keeps the entry's revision, as SPIRE's datastore does.
    let entry_id = created.results[0].entry.as_ref().unwrap().id.clone();
    let entry = entries
        .get_entry(entrypb::GetEntryRequest { id: entry_id, output_mask: None })
        .await
        .unwrap()
        .into_inner();
    assert!(entry.federates_with.is_empty());
    assert_eq!(entry.revision_number, 0);
    ts.server.shutdown().await;
}

#[tokio::test]
async fn sequence_numbers_follow_spire() {
    let ts = TestServer::start().await;
    let mut admin = BundleClient::new(ts.admin().await);

    // A federated bundle set again with the same content keeps its sequence number.
    let other = bundle("other.org", ca_der("other.org"));
    set(&mut admin, vec![other.clone()]).await;
    set(&mut admin, vec![other.clone()]).await;
    assert_eq!(federated(&mut admin, "other.org").await.sequence_number, 0);
    let newer = types::Bundle { sequence_number: 4, ..other.clone() };
    set(&mut admin, vec![newer]).await;
    assert_eq!(federated(&mut admin, "other.org").await.sequence_number, 4);
    // Setting takes the sequence number as given, lower ones included.
    set(&mut admin, vec![other]).await;
    assert_eq!(federated(&mut admin, "other.org").await.sequence_number, 0);

    // The own bundle: created with the first X.509 authority (0), the JWT authority appended
    // (1); each append of something new adds one, appending it again adds nothing.
    let own = admin.get_bundle(bundlepb::GetBundleRequest::default()).await.unwrap().into_inner();
    assert_eq!(own.sequence_number, 1);
    let append = bundlepb::AppendBundleRequest {
        x509_authorities: vec![types::X509Certificate {
            asn1: ca_der("example.org"),
            tainted: false,
        }],
        jwt_authorities: vec![],
        output_mask: None,
    };
    let after = admin.append_bundle(append.clone()).await.unwrap().into_inner();
    assert_eq!(after.sequence_number, 2);
    let again = admin.append_bundle(append).await.unwrap().into_inner();
    assert_eq!(again.sequence_number, 2);
    ts.server.shutdown().await;
}

#[tokio::test]
async fn federation_relationships_carry_their_bundle() {
    let ts = TestServer::start().await;
    let mut c = TdClient::new(ts.admin().await);
    let given = types::Bundle { sequence_number: 3, ..bundle("other.org", ca_der("other.org")) };

    // Create: the result carries the bundle given.
    let r = create_relationships(
        &mut c,
        vec![
            web_relationship("other.org", Some(given.clone())),
            web_relationship("third.org", None),
        ],
    )
    .await;
    assert_eq!(
        r[0].federation_relationship.as_ref().unwrap().trust_domain_bundle,
        Some(given.clone())
    );
    assert_eq!(r[1].federation_relationship.as_ref().unwrap().trust_domain_bundle, None);

    // Show and list join the trust domain's bundle.
    let shown = c
        .get_federation_relationship(tdpb::GetFederationRelationshipRequest {
            trust_domain: "other.org".into(),
            output_mask: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(shown.trust_domain_bundle, Some(given.clone()));
    let listed = c
        .list_federation_relationships(tdpb::ListFederationRelationshipsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .federation_relationships;
    let bundles: Vec<Option<types::Bundle>> =
        listed.iter().map(|f| f.trust_domain_bundle.clone()).collect();
    assert_eq!(bundles, vec![Some(given.clone()), None]);

    // A bundle set later for third.org shows up in its relationship.
    let mut admin = BundleClient::new(ts.admin().await);
    let third = bundle("third.org", ca_der("third.org"));
    set(&mut admin, vec![third.clone()]).await;
    let shown = c
        .get_federation_relationship(tdpb::GetFederationRelationshipRequest {
            trust_domain: "third.org".into(),
            output_mask: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(shown.trust_domain_bundle, Some(third));

    // Update without a bundle in the mask: the result carries the stored bundle.
    let resp = c
        .batch_update_federation_relationship(tdpb::BatchUpdateFederationRelationshipRequest {
            federation_relationships: vec![types::FederationRelationship {
                bundle_endpoint_url: "https://other.org/v2".into(),
                ..web_relationship("other.org", None)
            }],
            input_mask: Some(types::FederationRelationshipMask {
                bundle_endpoint_url: true,
                ..Default::default()
            }),
            output_mask: None,
        })
        .await
        .unwrap()
        .into_inner();
    let updated = resp.results[0].federation_relationship.as_ref().unwrap();
    assert_eq!(updated.bundle_endpoint_url, "https://other.org/v2");
    assert_eq!(updated.trust_domain_bundle, Some(given));

    // SPIRE's datastore words for a duplicate create and an update of nothing.
    let r = create_relationships(&mut c, vec![web_relationship("other.org", None)]).await;
    assert_eq!(
        status(r[0].status.as_ref()),
        (
            Code::Internal as i32,
            "failed to create federation relationship: datastore-sql: UNIQUE constraint failed: \
             federated_trust_domains.trust_domain"
                .into()
        )
    );
    let resp = c
        .batch_update_federation_relationship(tdpb::BatchUpdateFederationRelationshipRequest {
            federation_relationships: vec![web_relationship("nope.org", None)],
            input_mask: None,
            output_mask: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status(resp.results[0].status.as_ref()),
        (
            Code::Internal as i32,
            "failed to update federation relationship: unable to fetch federation relationship: \
             record not found"
                .into()
        )
    );
    let err = c
        .get_federation_relationship(tdpb::GetFederationRelationshipRequest {
            trust_domain: "Bad_TD!".into(),
            output_mask: None,
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.message(),
        "failed to parse trust domain: trust domain characters are limited to lowercase \
         letters, numbers, dots, dashes, and underscores"
    );
    ts.server.shutdown().await;
}

#[tokio::test]
async fn federated_bundles_and_relationships_list_in_creation_order() {
    let ts = TestServer::start().await;
    let mut admin = BundleClient::new(ts.admin().await);
    let mut c = TdClient::new(ts.admin().await);
    let names = ["zeta.org", "alpha.org", "mid.org"];
    for n in names {
        set(&mut admin, vec![bundle(n, ca_der(n))]).await;
        create_relationships(&mut c, vec![web_relationship(n, None)]).await;
    }
    let bundles: Vec<String> = admin
        .list_federated_bundles(bundlepb::ListFederatedBundlesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .bundles
        .into_iter()
        .map(|b| b.trust_domain)
        .collect();
    assert_eq!(bundles, names);
    let rels: Vec<String> = c
        .list_federation_relationships(tdpb::ListFederationRelationshipsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .federation_relationships
        .into_iter()
        .map(|f| f.trust_domain)
        .collect();
    assert_eq!(rels, names);

    // A page token that is not a row id is refused as SPIRE's datastore refuses it.
    let err = admin
        .list_federated_bundles(bundlepb::ListFederatedBundlesRequest {
            page_size: 1,
            page_token: "zeta.org".into(),
            output_mask: None,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::Internal, "failed to list bundles: could not parse token 'zeta.org'")
    );
    ts.server.shutdown().await;
}

#[tokio::test]
async fn caller_authorities_must_parse_and_never_carry_taint() {
    let ts = TestServer::start().await;
    let mut admin = BundleClient::new(ts.admin().await);

    // A caller cannot taint an authority.
    let mut b = bundle("other.org", ca_der("other.org"));
    b.x509_authorities[0].tainted = true;
    let mut key = jwt_key("k1");
    key.tainted = true;
    b.jwt_authorities = vec![key];
    assert_eq!(set(&mut admin, vec![b]).await[0].0, 0);
    let stored = federated(&mut admin, "other.org").await;
    assert!(!stored.x509_authorities[0].tainted);
    assert!(!stored.jwt_authorities[0].tainted);

    // JWT keys must be PKIX public keys; then they need a key ID.
    let mut junk_key = bundle("third.org", ca_der("third.org"));
    junk_key.jwt_authorities = vec![types::JwtKey { public_key: b"junk".to_vec(), ..jwt_key("k") }];
    let mut no_kid = bundle("fourth.org", ca_der("fourth.org"));
    no_kid.jwt_authorities = vec![jwt_key("")];
    let got = set(&mut admin, vec![junk_key, no_kid]).await;
    assert_eq!(got[0].0, Code::InvalidArgument as i32);
    assert!(
        got[0].1.starts_with("failed to convert bundle: unable to parse JWT authority: x509: "),
        "{}",
        got[0].1
    );
    assert_eq!(
        got[1],
        (
            Code::InvalidArgument as i32,
            "failed to convert bundle: unable to parse JWT authority: missing key ID".into()
        )
    );

    // AppendBundle: SPIRE's prefixes, JWT authorities first.
    let err = admin
        .append_bundle(bundlepb::AppendBundleRequest {
            x509_authorities: vec![types::X509Certificate {
                asn1: b"junk".to_vec(),
                tainted: false,
            }],
            jwt_authorities: vec![jwt_key("")],
            output_mask: None,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "failed to convert JWT authority: missing key ID")
    );
    let err = admin
        .append_bundle(bundlepb::AppendBundleRequest {
            x509_authorities: vec![types::X509Certificate {
                asn1: b"junk".to_vec(),
                tainted: false,
            }],
            jwt_authorities: vec![],
            output_mask: None,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "failed to convert X.509 authority: x509: malformed certificate")
    );
    let mut tainted = jwt_key("k9");
    tainted.tainted = true;
    let after = admin
        .append_bundle(bundlepb::AppendBundleRequest {
            x509_authorities: vec![],
            jwt_authorities: vec![tainted],
            output_mask: None,
        })
        .await
        .unwrap()
        .into_inner();
    let appended = after.jwt_authorities.iter().find(|k| k.key_id == "k9").unwrap();
    assert!(!appended.tainted);

    // Federation relationships: SPIRE's URL texts.
    let mut c = TdClient::new(ts.admin().await);
    let with_url = |url: &str| types::FederationRelationship {
        bundle_endpoint_url: url.into(),
        ..web_relationship("fifth.org", None)
    };
    let r = create_relationships(
        &mut c,
        vec![with_url("not a url"), with_url("https:///bundle"), with_url("https://u@fifth.org/")],
    )
    .await;
    let got: Vec<(i32, String)> = r.iter().map(|r| status(r.status.as_ref())).collect();
    let refused = |why: &str| {
        (Code::InvalidArgument as i32, format!("failed to convert federation relationship: {why}"))
    };
    assert_eq!(
        got,
        vec![
            refused("bundle endpoint URL must use the https scheme"),
            refused("bundle endpoint URL must specify the host"),
            refused("bundle endpoint URL must not contain user info"),
        ]
    );
    ts.server.shutdown().await;
}

#[tokio::test]
async fn create_and_update_check_existence_when_applied() {
    let ts = TestServer::start().await;
    let mut admin = BundleClient::new(ts.admin().await);
    let first = bundle("other.org", ca_der("other.org"));
    let second = bundle("other.org", ca_der("other.org"));

    // Two creates of one trust domain in one request: the first wins, the second is refused.
    let resp = admin
        .batch_create_federated_bundle(bundlepb::BatchCreateFederatedBundleRequest {
            bundle: vec![first.clone(), second],
            output_mask: None,
        })
        .await
        .unwrap()
        .into_inner();
    let got: Vec<(i32, String)> = resp.results.iter().map(|r| status(r.status.as_ref())).collect();
    assert_eq!(
        got,
        vec![(0, "OK".into()), (Code::AlreadyExists as i32, "bundle already exists".into())]
    );
    assert_eq!(federated(&mut admin, "other.org").await, first);

    // Two updates with different masks in one request: both apply.
    let update =
        |b: types::Bundle, mask: types::BundleMask| bundlepb::BatchUpdateFederatedBundleRequest {
            bundle: vec![b],
            input_mask: Some(mask),
            output_mask: None,
        };
    let hint = types::Bundle { refresh_hint: 60, ..bundle("other.org", ca_der("other.org")) };
    let seq = types::Bundle { sequence_number: 9, ..bundle("other.org", ca_der("other.org")) };
    let (mut c1, mut c2) = (admin.clone(), admin.clone());
    let (a, b) = tokio::join!(
        c1.batch_update_federated_bundle(update(
            hint,
            types::BundleMask { refresh_hint: true, ..Default::default() }
        )),
        c2.batch_update_federated_bundle(update(
            seq,
            types::BundleMask { sequence_number: true, ..Default::default() }
        )),
    );
    assert_eq!(a.unwrap().into_inner().results[0].status.as_ref().unwrap().code, 0);
    assert_eq!(b.unwrap().into_inner().results[0].status.as_ref().unwrap().code, 0);
    let now = federated(&mut admin, "other.org").await;
    assert_eq!((now.refresh_hint, now.sequence_number), (60, 9));
    assert_eq!(now.x509_authorities, first.x509_authorities, "authorities not in the mask stay");
    ts.server.shutdown().await;
}
