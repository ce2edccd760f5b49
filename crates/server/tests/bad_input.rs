//! Bad input gets SPIRE's status code and message, and leaves the store unchanged.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::*;
use tonic::Code;
use ward_proto::spire::api::server::agent::v1 as agentpb;
use ward_proto::spire::api::server::bundle::v1 as bundlepb;
use ward_proto::spire::api::server::entry::v1 as entrypb;
use ward_proto::spire::api::server::svid::v1 as svidpb;
use ward_proto::spire::api::types;
use ward_store::{EntryFilter, PageRequest};

/// What a store query sees: (applied index, revision, entries, agents).
fn snapshot(ts: &TestServer) -> (u64, u64, usize, usize) {
    let s = &ts.server.state.store;
    let entries = s.list_entries(&EntryFilter::default(), &PageRequest::all()).items.len();
    (s.last_applied(), s.revision(), entries, s.agent_count())
}

fn param(entry_id: &str, csr: Vec<u8>) -> svidpb::NewX509svidParams {
    svidpb::NewX509svidParams { entry_id: entry_id.into(), csr }
}

#[tokio::test]
async fn batch_new_x509_svid_per_item_statuses_in_order() {
    let ts = TestServer::start().await;
    let roots = ts.roots().await;
    let (ident, agent_id) = new_agent(&ts).await;
    let (_, other_agent) = new_agent(&ts).await;
    let mine = ts.create_entry("/mine", &agent_id, ("unix", "uid:1")).await;
    let theirs = ts.create_entry("/theirs", &other_agent, ("unix", "uid:2")).await;

    let (_, good_csr) = key_and_csr();
    let mut bad_sig = good_csr.clone();
    let last = bad_sig.len() - 1;
    bad_sig[last] ^= 0x01;

    let before = snapshot(&ts);
    let ch = tls_channel(ts.addr(), &roots, Some(ident)).await;
    let mut client = svidpb::svid_client::SvidClient::new(ch);
    let resp = client
        .batch_new_x509svid(svidpb::BatchNewX509svidRequest {
            params: vec![
                param("", good_csr.clone()),
                param(&mine, Vec::new()),
                param("no-such-entry", good_csr.clone()),
                param(&theirs, good_csr.clone()),
                param(&mine, b"definitely not DER".to_vec()),
                param(&mine, bad_sig),
                param(&mine, good_csr.clone()),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    let got: Vec<(i32, String)> = resp
        .results
        .iter()
        .map(|r| {
            let s = r.status.clone().unwrap();
            (s.code, s.message)
        })
        .collect();
    assert_eq!(got.len(), 7);
    let invalid = Code::InvalidArgument as i32;
    let not_found = Code::NotFound as i32;
    assert_eq!(got[0], (invalid, "missing entry ID".to_owned()));
    assert_eq!(got[1], (invalid, "missing CSR".to_owned()));
    assert_eq!(got[2], (not_found, "entry not found or not authorized".to_owned()));
    assert_eq!(got[3], (not_found, "entry not found or not authorized".to_owned()));
    assert_eq!(got[4].0, invalid);
    assert!(got[4].1.starts_with("malformed CSR"), "{}", got[4].1);
    assert_eq!(got[5].0, invalid);
    assert!(got[5].1.starts_with("invalid CSR signature"), "{}", got[5].1);
    assert_eq!(got[6], (0, "OK".to_owned()));
    assert!(resp.results[..6].iter().all(|r| r.svid.is_none()));
    assert!(resp.results[6].svid.is_some());

    // More than 500 CSRs in one call: with the signing limit off (this harness) SPIRE's
    // DisabledLimit refuses nothing; tests/ratelimit.rs covers the refusal with it on.
    let many: Vec<_> = (0..501).map(|_| param(&mine, good_csr.clone())).collect();
    let resp = client
        .batch_new_x509svid(svidpb::BatchNewX509svidRequest { params: many })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.results.len(), 501);

    // JWT-SVID: audience required, entry must be authorized.
    let err = client
        .new_jwtsvid(svidpb::NewJwtsvidRequest { entry_id: mine.clone(), audience: vec![] })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "at least one audience is required")
    );
    let err = client
        .new_jwtsvid(svidpb::NewJwtsvidRequest { entry_id: theirs, audience: vec!["a".into()] })
        .await
        .unwrap_err();
    assert_eq!((err.code(), err.message()), (Code::NotFound, "entry not found or not authorized"));

    assert_eq!(snapshot(&ts), before, "signing never writes");
    ts.server.shutdown().await;
}

#[tokio::test]
async fn malformed_attestation_and_admin_requests() {
    let ts = TestServer::start().await;
    let before = snapshot(&ts);

    // AttestAgent parameter checks happen before the token is touched.
    let token = ts.create_token(600).await;
    let before_attest = snapshot(&ts);
    let ch = tls_channel(ts.addr(), &[], None).await;
    let mut agent = agentpb::agent_client::AgentClient::new(ch);
    let cases: Vec<(agentpb::attest_agent_request::Params, Code, &str)> = vec![
        (
            agentpb::attest_agent_request::Params {
                data: Some(types::AttestationData {
                    r#type: "join_token".into(),
                    payload: token.clone().into_bytes(),
                }),
                params: Some(agentpb::AgentX509svidParams { csr: vec![] }),
            },
            Code::InvalidArgument,
            "malformed param: missing CSR",
        ),
        (
            agentpb::attest_agent_request::Params {
                data: Some(types::AttestationData { r#type: "join_token".into(), payload: vec![] }),
                params: Some(agentpb::AgentX509svidParams { csr: key_and_csr().1 }),
            },
            Code::InvalidArgument,
            "malformed param: missing attestation data payload",
        ),
        (
            agentpb::attest_agent_request::Params {
                data: None,
                params: Some(agentpb::AgentX509svidParams { csr: key_and_csr().1 }),
            },
            Code::InvalidArgument,
            "malformed param: missing attestation data",
        ),
        (
            agentpb::attest_agent_request::Params {
                data: Some(types::AttestationData {
                    r#type: "tpm_magic".into(),
                    payload: b"x".to_vec(),
                }),
                params: Some(agentpb::AgentX509svidParams { csr: key_and_csr().1 }),
            },
            Code::FailedPrecondition,
            "error getting node attestor: could not find node attestor type \"tpm_magic\"",
        ),
    ];
    for (params, code, message) in cases {
        let req = agentpb::AttestAgentRequest {
            step: Some(agentpb::attest_agent_request::Step::Params(params)),
        };
        let err = match agent.attest_agent(futures::stream::iter(vec![req])).await {
            Err(e) => e,
            Ok(resp) => resp.into_inner().message().await.unwrap_err(),
        };
        assert_eq!((err.code(), err.message()), (code, message));
    }
    assert_eq!(snapshot(&ts), before_attest);
    assert!(ts.server.state.store.join_token(&token).is_some(), "token not consumed");

    // A malformed CSR with a valid token: SPIRE consumes the token first, then refuses.
    let err = attest(ts.addr(), &token, b"junk".to_vec()).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("failed to parse CSR: "), "{}", err.message());
    assert_eq!(ts.server.state.store.agent_count(), 0, "no agent recorded");

    // Entries outside the trust domain or in the reserved namespace: per-item errors.
    let before_entries = snapshot(&ts);
    let mut entries = entrypb::entry_client::EntryClient::new(ts.admin().await);
    let sel = vec![types::Selector { r#type: "unix".into(), value: "uid:0".into() }];
    let resp = entries
        .batch_create_entry(entrypb::BatchCreateEntryRequest {
            entries: vec![
                types::Entry {
                    spiffe_id: Some(id("other.org", "/web")),
                    parent_id: Some(id("example.org", "/agent")),
                    selectors: sel.clone(),
                    ..Default::default()
                },
                types::Entry {
                    spiffe_id: Some(id("example.org", "/spire/sneaky")),
                    parent_id: Some(id("example.org", "/agent")),
                    selectors: sel.clone(),
                    ..Default::default()
                },
                types::Entry {
                    spiffe_id: Some(id("example.org", "/web")),
                    parent_id: Some(id("example.org", "/agent")),
                    selectors: vec![],
                    ..Default::default()
                },
            ],
            output_mask: None,
        })
        .await
        .unwrap()
        .into_inner();
    let statuses: Vec<_> = resp.results.iter().map(|r| r.status.clone().unwrap()).collect();
    assert!(statuses.iter().all(|s| s.code == Code::InvalidArgument as i32), "{statuses:?}");
    assert_eq!(
        statuses[0].message,
        "failed to convert entry: invalid spiffe ID: \"spiffe://other.org/web\" is not a member of trust domain \"example.org\""
    );
    assert_eq!(
        statuses[1].message,
        "failed to convert entry: invalid spiffe ID: \"spiffe://example.org/spire/sneaky\" is not a \
         workload in trust domain \"example.org\"; path is in the reserved namespace"
    );
    assert_eq!(statuses[2].message, "failed to convert entry: selector list is empty");
    assert_eq!(snapshot(&ts), before_entries);

    // Own trust domain is not a federated bundle.
    let mut bundles = bundlepb::bundle_client::BundleClient::new(ts.admin().await);
    let err = bundles
        .get_federated_bundle(bundlepb::GetFederatedBundleRequest {
            trust_domain: "example.org".into(),
            output_mask: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = bundles
        .get_federated_bundle(bundlepb::GetFederatedBundleRequest {
            trust_domain: "Not A Domain".into(),
            output_mask: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Join token TTL must be positive.
    let err = agentpb::agent_client::AgentClient::new(ts.admin().await)
        .create_join_token(agentpb::CreateJoinTokenRequest {
            ttl: 0,
            token: String::new(),
            agent_id: None,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "ttl is required, you must provide one")
    );

    // Oversized message: refused by the decoder before any handler runs.
    let before_big = snapshot(&ts);
    let huge = types::Entry {
        spiffe_id: Some(id("example.org", "/big")),
        parent_id: Some(id("example.org", "/agent")),
        selectors: sel,
        hint: "h".repeat(5 << 20),
        ..Default::default()
    };
    let err = entries
        .batch_create_entry(entrypb::BatchCreateEntryRequest {
            entries: vec![huge],
            output_mask: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains("the limit is: 4194304 bytes"), "{}", err.message());
    assert_eq!(snapshot(&ts), before_big);
    assert!(before.0 < before_big.0, "the token creation and consumption were writes");
    ts.server.shutdown().await;
}
