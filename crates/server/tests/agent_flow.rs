//! The agent's path end to end over real TLS: attest with a join token, fetch the bundle,
//! sync entries, get X509- and JWT-SVIDs; join-token reuse and expiry.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::*;
use tonic::Code;
use ward_proto::spire::api::server::bundle::v1 as bundlepb;
use ward_proto::spire::api::server::entry::v1 as entrypb;
use ward_proto::spire::api::server::svid::v1 as svidpb;
use ward_proto::spire::api::types;

#[tokio::test]
async fn attest_sync_and_sign() {
    let ts = TestServer::start().await;
    let token = ts.create_token(600).await;
    let agent_id = format!("spiffe://example.org/spire/agent/join_token/{token}");
    let entry_id = ts.create_entry("/web", &agent_id, ("unix", "uid:1000")).await;

    // Attestation on a connection without a client certificate (insecure bootstrap).
    let (key, csr) = key_and_csr();
    let result = attest(ts.addr(), &token, csr).await.unwrap();
    assert!(!result.reattestable);
    let svid = result.svid.unwrap();
    let leaf = ward_server::tls::leaf_facts(&svid.cert_chain[0]).unwrap();
    assert_eq!(leaf.id.as_str(), agent_id);
    assert_eq!(svid.id.unwrap().path, format!("/spire/agent/join_token/{token}"));
    assert_eq!(svid.expires_at, leaf.not_after);

    // GetBundle needs no client certificate; it returns the CA that signed the agent SVID.
    let anon = tls_channel(ts.addr(), &[], None).await;
    let bundle = bundlepb::bundle_client::BundleClient::new(anon)
        .get_bundle(bundlepb::GetBundleRequest { output_mask: None })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bundle.trust_domain, "example.org");
    assert!(!bundle.jwt_authorities.is_empty());
    assert!(bundle.jwt_authorities.iter().all(|k| !k.key_id.is_empty()));
    let roots: Vec<Vec<u8>> = bundle.x509_authorities.iter().map(|a| a.asn1.clone()).collect();
    assert_eq!(roots, ts.roots().await);

    // mTLS with the agent SVID, the server verified against the bundle.
    let ident = Identity { chain: svid.cert_chain.clone(), key_pkcs8: key.pkcs8_der().to_vec() };
    let ch = tls_channel(ts.addr(), &roots, Some(ident)).await;

    let mut entries = entrypb::entry_client::EntryClient::new(ch.clone());
    let mask = types::EntryMask {
        spiffe_id: true,
        selectors: true,
        revision_number: true,
        created_at: true,
        ..Default::default()
    };
    let first = entrypb::SyncAuthorizedEntriesRequest { output_mask: Some(mask), ids: vec![] };
    let mut sync = entries
        .sync_authorized_entries(futures::stream::iter(vec![first]))
        .await
        .unwrap()
        .into_inner();
    let page = sync.message().await.unwrap().unwrap();
    assert!(!page.more);
    assert!(page.entry_revisions.is_empty());
    assert_eq!(page.entries.len(), 1);
    assert_eq!(page.entries[0].id, entry_id);
    assert_eq!(page.entries[0].spiffe_id.as_ref().unwrap().path, "/web");
    assert!(page.entries[0].parent_id.is_none(), "masked out");
    assert!(sync.message().await.unwrap().is_none(), "RPC ends after the full page");

    let auth = entries
        .get_authorized_entries(entrypb::GetAuthorizedEntriesRequest { output_mask: None })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(auth.entries.len(), 1);

    // X509-SVID for the authorized entry.
    let mut svids = svidpb::svid_client::SvidClient::new(ch.clone());
    let (_wkey, wcsr) = key_and_csr();
    let resp = svids
        .batch_new_x509svid(svidpb::BatchNewX509svidRequest {
            params: vec![svidpb::NewX509svidParams { entry_id: entry_id.clone(), csr: wcsr }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.results.len(), 1);
    let st = resp.results[0].status.as_ref().unwrap();
    assert_eq!((st.code, st.message.as_str()), (0, "OK"));
    let wsvid = resp.results[0].svid.as_ref().unwrap();
    let wleaf = ward_server::tls::leaf_facts(&wsvid.cert_chain[0]).unwrap();
    assert_eq!(wleaf.id.as_str(), "spiffe://example.org/web");

    // JWT-SVID.
    let jwt = svids
        .new_jwtsvid(svidpb::NewJwtsvidRequest {
            entry_id: entry_id.clone(),
            audience: vec!["db".into()],
        })
        .await
        .unwrap()
        .into_inner()
        .svid
        .unwrap();
    assert_eq!(jwt.token.split('.').count(), 3);
    assert!(jwt.issued_at > 0 && jwt.expires_at > jwt.issued_at);
    assert_eq!(jwt.id.unwrap().path, "/web");

    // No federated bundles exist yet.
    let err = bundlepb::bundle_client::BundleClient::new(ch)
        .get_federated_bundle(bundlepb::GetFederatedBundleRequest {
            trust_domain: "other.org".into(),
            output_mask: None,
        })
        .await
        .unwrap_err();
    assert_eq!((err.code(), err.message()), (Code::NotFound, "bundle not found"));

    ts.server.shutdown().await;
}

#[tokio::test]
async fn join_tokens_are_single_use_and_expire() {
    let ts = TestServer::start().await;
    let token = ts.create_token(600).await;
    attest(ts.addr(), &token, key_and_csr().1).await.unwrap();

    let err = attest(ts.addr(), &token, key_and_csr().1).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        err.message(),
        "failed to attest: join token does not exist or has already been used"
    );

    let short = ts.create_token(1).await;
    ts.clock.advance(5);
    let err = attest(ts.addr(), &short, key_and_csr().1).await.unwrap_err();
    assert_eq!((err.code(), err.message()), (Code::InvalidArgument, "join token expired"));
    // The expired token was consumed by that attempt.
    assert!(ts.server.state.store.join_token(&short).is_none());
    let err = attest(ts.addr(), &short, key_and_csr().1).await.unwrap_err();
    assert_eq!(
        err.message(),
        "failed to attest: join token does not exist or has already been used"
    );

    let err = attest(ts.addr(), "never-issued", key_and_csr().1).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    ts.server.shutdown().await;
}

#[tokio::test]
async fn renewed_svid_becomes_current_on_first_use() {
    let ts = TestServer::start().await;
    let roots = ts.roots().await;
    let (ident, agent_id) = new_agent(&ts).await;
    let agent = ward_core::AgentId(ward_core::SpiffeId::parse(&agent_id).unwrap());
    let before = ts.server.state.store.agent(&agent).unwrap();

    let ch = tls_channel(ts.addr(), &roots, Some(ident.clone())).await;
    let (new_key, csr) = key_and_csr();
    let renewed = ward_proto::spire::api::server::agent::v1::agent_client::AgentClient::new(ch)
        .renew_agent(ward_proto::spire::api::server::agent::v1::RenewAgentRequest {
            params: Some(ward_proto::spire::api::server::agent::v1::AgentX509svidParams { csr }),
        })
        .await
        .unwrap()
        .into_inner()
        .svid
        .unwrap();
    let new_serial = ward_server::tls::leaf_facts(&renewed.cert_chain[0]).unwrap().serial;
    let pending = ts.server.state.store.agent(&agent).unwrap();
    assert_eq!(pending.serial, before.serial, "old SVID stays current");
    assert_eq!(pending.new_serial, new_serial);

    // Presenting the new SVID promotes it.
    let new_ident = Identity { chain: renewed.cert_chain, key_pkcs8: new_key.pkcs8_der().to_vec() };
    let ch = tls_channel(ts.addr(), &roots, Some(new_ident)).await;
    entrypb::entry_client::EntryClient::new(ch)
        .get_authorized_entries(entrypb::GetAuthorizedEntriesRequest { output_mask: None })
        .await
        .unwrap();
    let after = ts.server.state.store.agent(&agent).unwrap();
    assert_eq!(after.serial, new_serial);
    assert!(after.new_serial.is_empty());

    // The old SVID is no longer active.
    let ch = tls_channel(ts.addr(), &roots, Some(ident)).await;
    let err = entrypb::entry_client::EntryClient::new(ch)
        .get_authorized_entries(entrypb::GetAuthorizedEntriesRequest { output_mask: None })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(
        ward_proto::convert::permission_denied_reason(&err),
        Some(types::permission_denied_details::Reason::AgentNotActive)
    );
    ts.server.shutdown().await;
}

#[tokio::test]
async fn admin_lists_bans_and_deletes_agents() {
    use ward_proto::spire::api::server::agent::v1 as agentpb;
    let ts = TestServer::start().await;
    let roots = ts.roots().await;
    let (ident, agent_id) = new_agent(&ts).await;
    let mut admin = agentpb::agent_client::AgentClient::new(ts.admin().await);

    let list = admin.list_agents(agentpb::ListAgentsRequest::default()).await.unwrap().into_inner();
    assert_eq!(list.agents.len(), 1);
    let a = &list.agents[0];
    assert_eq!(a.attestation_type, "join_token");
    assert!(!a.banned);
    let leaf = ward_server::tls::leaf_facts(&ident.chain[0]).unwrap();
    assert_eq!(a.x509svid_serial_number, leaf.serial);
    let count = admin.count_agents(agentpb::CountAgentsRequest::default()).await.unwrap();
    assert_eq!(count.into_inner().count, 1);

    let pid = parse(&agent_id);
    admin.ban_agent(agentpb::BanAgentRequest { id: Some(pid.clone()) }).await.unwrap();
    let got = admin
        .get_agent(agentpb::GetAgentRequest { id: Some(pid.clone()), output_mask: None })
        .await
        .unwrap()
        .into_inner();
    assert!(got.banned);
    let ch = tls_channel(ts.addr(), &roots, Some(ident.clone())).await;
    let err = entrypb::entry_client::EntryClient::new(ch)
        .get_authorized_entries(entrypb::GetAuthorizedEntriesRequest { output_mask: None })
        .await
        .unwrap_err();
    assert_eq!(
        ward_proto::convert::permission_denied_reason(&err),
        Some(types::permission_denied_details::Reason::AgentBanned)
    );

    admin.delete_agent(agentpb::DeleteAgentRequest { id: Some(pid.clone()) }).await.unwrap();
    let err = admin
        .get_agent(agentpb::GetAgentRequest { id: Some(pid.clone()), output_mask: None })
        .await
        .unwrap_err();
    assert_eq!((err.code(), err.message()), (Code::NotFound, "agent not found"));
    let err = admin.delete_agent(agentpb::DeleteAgentRequest { id: Some(pid) }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let ch = tls_channel(ts.addr(), &roots, Some(ident)).await;
    let err = entrypb::entry_client::EntryClient::new(ch)
        .get_authorized_entries(entrypb::GetAuthorizedEntriesRequest { output_mask: None })
        .await
        .unwrap_err();
    assert_eq!(
        ward_proto::convert::permission_denied_reason(&err),
        Some(types::permission_denied_details::Reason::AgentNotAttested)
    );
    ts.server.shutdown().await;
}
