//! Authorization: every served method × every caller class, first as a table against the
//! pure decision function, then the same classes over real sockets.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::Duration;

use common::*;
use tonic::Code;
use ward_ca::SvidParams;
use ward_core::{AgentId, AttestedNode, SelectorSet, SpiffeId};
use ward_proto::grpc::health::v1 as healthpb;
use ward_proto::spire::api::server::agent::v1 as agentpb;
use ward_proto::spire::api::server::entry::v1 as entrypb;
use ward_proto::spire::api::server::svid::v1 as svidpb;
use ward_proto::spire::api::types;
use ward_proto::spire::api::types::permission_denied_details::Reason;
use ward_server::authz::{
    Authorized, CallerFacts, Decision, Denial, DenyReason, Policy, PresentedSvid, decide, policy,
};
use ward_store::Command;

const NOW: i64 = 1_000;

const METHODS: &[&str] = &[
    "/spire.api.server.agent.v1.Agent/AttestAgent",
    "/spire.api.server.agent.v1.Agent/RenewAgent",
    "/spire.api.server.agent.v1.Agent/CreateJoinToken",
    "/spire.api.server.entry.v1.Entry/GetAuthorizedEntries",
    "/spire.api.server.entry.v1.Entry/SyncAuthorizedEntries",
    "/spire.api.server.entry.v1.Entry/BatchCreateEntry",
    "/spire.api.server.entry.v1.Entry/ListEntries",
    "/spire.api.server.svid.v1.SVID/BatchNewX509SVID",
    "/spire.api.server.svid.v1.SVID/NewJWTSVID",
    "/spire.api.server.bundle.v1.Bundle/GetBundle",
    "/spire.api.server.bundle.v1.Bundle/GetFederatedBundle",
    "/spire.api.server.bundle.v1.Bundle/ListFederatedBundles",
    "/grpc.health.v1.Health/Check",
    "/spire.api.server.localauthority.v1.LocalAuthority/TaintX509Authority",
    "/spire.api.server.localauthority.v1.LocalAuthority/RevokeX509UpstreamAuthority",
    "/spire.api.server.logger.v1.Logger/SetLogLevel",
    "/spire.api.server.debug.v1.Debug/GetInfo",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Unauthenticated,
    Agent,
    BannedAgent,
    ExpiredAgent,
    UnknownAgent,
    Admin,
    Local,
}

const CLASSES: &[Class] = &[
    Class::Unauthenticated,
    Class::Agent,
    Class::BannedAgent,
    Class::ExpiredAgent,
    Class::UnknownAgent,
    Class::Admin,
    Class::Local,
];

fn agent_svid(not_after: i64) -> PresentedSvid {
    PresentedSvid {
        id: SpiffeId::parse("spiffe://example.org/spire/agent/join_token/t").unwrap(),
        serial: "7".into(),
        not_after,
    }
}

fn node(serial: &str) -> AttestedNode {
    AttestedNode {
        id: AgentId(agent_svid(0).id),
        attestation_type: "join_token".into(),
        serial: serial.into(),
        expires_at: NOW + 100,
        new_serial: String::new(),
        new_expires_at: 0,
        selectors: SelectorSet::default(),
        can_reattest: false,
    }
}

fn facts(c: Class) -> CallerFacts {
    let base = CallerFacts {
        local: false,
        svid: None,
        admin_entry: false,
        downstream_entry: false,
        node: None,
    };
    match c {
        Class::Unauthenticated => base,
        Class::Agent => {
            CallerFacts { svid: Some(agent_svid(NOW + 100)), node: Some(node("7")), ..base }
        }
        Class::BannedAgent => {
            CallerFacts { svid: Some(agent_svid(NOW + 100)), node: Some(node("")), ..base }
        }
        Class::ExpiredAgent => {
            CallerFacts { svid: Some(agent_svid(NOW - 1)), node: Some(node("7")), ..base }
        }
        Class::UnknownAgent => CallerFacts { svid: Some(agent_svid(NOW + 100)), ..base },
        Class::Admin => CallerFacts {
            svid: Some(PresentedSvid {
                id: SpiffeId::parse("spiffe://example.org/admin").unwrap(),
                serial: "9".into(),
                not_after: NOW + 100,
            }),
            admin_entry: true,
            ..base
        },
        Class::Local => CallerFacts { local: true, ..base },
    }
}

fn deny(message: String, reason: Option<DenyReason>) -> Decision {
    Decision::Deny(Denial { message, reason })
}

/// The expected decision, written out per method group as SPIRE's policy table says.
fn expected(method: &str, c: Class) -> Decision {
    let any = ["AttestAgent", "GetBundle"];
    let agent_only = [
        "RenewAgent",
        "GetAuthorizedEntries",
        "SyncAuthorizedEntries",
        "BatchNewX509SVID",
        "NewJWTSVID",
    ];
    let name = method.rsplit('/').next().unwrap();
    let denied = || deny(format!("authorization denied for method {method}"), None);
    let agent_id = "spiffe://example.org/spire/agent/join_token/t";
    let agent_check = |c: Class| match c {
        Class::Unauthenticated => deny("caller does not have an X509-SVID".into(), None),
        Class::Agent => Decision::Allow(Authorized::Agent { promote_pending: false }),
        Class::BannedAgent => {
            deny(format!("agent \"{agent_id}\" is banned"), Some(DenyReason::AgentBanned))
        }
        Class::ExpiredAgent => {
            deny(format!("agent \"{agent_id}\" SVID is expired"), Some(DenyReason::AgentExpired))
        }
        Class::UnknownAgent => deny(
            format!("agent \"{agent_id}\" is not attested"),
            Some(DenyReason::AgentNotAttested),
        ),
        Class::Admin => deny(
            "agent \"spiffe://example.org/admin\" is not attested".into(),
            Some(DenyReason::AgentNotAttested),
        ),
        Class::Local => unreachable!(),
    };
    if any.contains(&name) {
        return Decision::Allow(Authorized::Anyone);
    }
    if agent_only.contains(&name) {
        return if c == Class::Local { denied() } else { agent_check(c) };
    }
    if ["Check", "SetLogLevel", "GetInfo"].contains(&name) {
        return if c == Class::Local { Decision::Allow(Authorized::Local) } else { denied() };
    }
    if name == "GetFederatedBundle" {
        return match c {
            Class::Local => Decision::Allow(Authorized::Local),
            Class::Admin => Decision::Allow(Authorized::Admin),
            other => agent_check(other),
        };
    }
    // Admin or local: CreateJoinToken, BatchCreateEntry, ListEntries, ListFederatedBundles,
    // the LocalAuthority methods.
    match c {
        Class::Local => Decision::Allow(Authorized::Local),
        Class::Admin => Decision::Allow(Authorized::Admin),
        _ => denied(),
    }
}

#[test]
fn every_method_by_every_caller_class() {
    let mut checked = 0;
    for m in METHODS {
        for c in CLASSES {
            assert_eq!(decide(m, &facts(*c), NOW), expected(m, *c), "{m} as {c:?}");
            checked += 1;
        }
    }
    assert_eq!(checked, METHODS.len() * CLASSES.len());
    // A method SPIRE has no policy for is refused to everyone, local callers included.
    assert_eq!(
        decide(ward_server::authz::POST_STATUS, &facts(Class::Local), NOW),
        deny(format!("authorization denied for method {}", ward_server::authz::POST_STATUS), None)
    );
}

/// An SVID for `id` signed by the server's current CA, with a fresh key.
fn issue(ts: &TestServer, id: &str) -> Identity {
    let ca = ts.server.state.ca.x509_ca().unwrap();
    let key = ward_ca::PrivateKey::generate(ward_ca::KeyType::EcP256).unwrap();
    let sid = SpiffeId::parse(id).unwrap();
    let params = SvidParams { spiffe_id: &sid, dns_names: &[], ttl: Duration::from_secs(600) };
    let leaf =
        ca.sign_x509_svid(key.public_key_der(), &params, std::time::SystemTime::now()).unwrap();
    Identity { chain: vec![leaf], key_pkcs8: key.pkcs8_der().to_vec() }
}

async fn get_authorized(ch: tonic::transport::Channel) -> Result<usize, tonic::Status> {
    entrypb::entry_client::EntryClient::new(ch)
        .get_authorized_entries(entrypb::GetAuthorizedEntriesRequest { output_mask: None })
        .await
        .map(|r| r.into_inner().entries.len())
}

async fn list_entries(ch: tonic::transport::Channel) -> Result<usize, tonic::Status> {
    entrypb::entry_client::EntryClient::new(ch)
        .list_entries(entrypb::ListEntriesRequest::default())
        .await
        .map(|r| r.into_inner().entries.len())
}

#[tokio::test]
async fn caller_classes_over_real_sockets() {
    let ts = TestServer::start().await;
    let roots = ts.roots().await;
    let addr = ts.addr();

    // Unauthenticated TCP caller.
    let anon = tls_channel(addr, &roots, None).await;
    let err = svidpb::svid_client::SvidClient::new(anon.clone())
        .batch_new_x509svid(svidpb::BatchNewX509svidRequest { params: vec![] })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::PermissionDenied, "caller does not have an X509-SVID")
    );
    assert_eq!(ward_proto::convert::permission_denied_reason(&err), None);
    let err = list_entries(anon).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(
        err.message(),
        "authorization denied for method /spire.api.server.entry.v1.Entry/ListEntries"
    );

    // Attested agent: agent methods yes, admin methods no.
    let (ident, agent_id) = new_agent(&ts).await;
    let ch = tls_channel(addr, &roots, Some(ident.clone())).await;
    assert_eq!(get_authorized(ch.clone()).await.unwrap(), 0);
    let err = list_entries(ch).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // Banned agent: PermissionDenied with AGENT_BANNED in the details.
    let aid = AgentId(SpiffeId::parse(&agent_id).unwrap());
    ts.server.state.proposer.propose(Command::BanAgent(aid)).await.unwrap();
    let ch = tls_channel(addr, &roots, Some(ident)).await;
    let err = get_authorized(ch).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(err.message(), format!("agent \"{agent_id}\" is banned"));
    assert_eq!(ward_proto::convert::permission_denied_reason(&err), Some(Reason::AgentBanned));

    // A valid SVID for an agent ID the server never attested.
    let ghost = issue(&ts, "spiffe://example.org/spire/agent/join_token/ghost");
    let ch = tls_channel(addr, &roots, Some(ghost)).await;
    let err = get_authorized(ch).await.unwrap_err();
    assert_eq!(ward_proto::convert::permission_denied_reason(&err), Some(Reason::AgentNotAttested));

    // Admin by entry: admin methods over TCP.
    let mut entries = entrypb::entry_client::EntryClient::new(ts.admin().await);
    let resp = entries
        .batch_create_entry(entrypb::BatchCreateEntryRequest {
            entries: vec![types::Entry {
                spiffe_id: Some(id("example.org", "/admin")),
                parent_id: Some(id("example.org", "/spire/server")),
                selectors: vec![types::Selector { r#type: "x".into(), value: "y".into() }],
                admin: true,
                ..Default::default()
            }],
            output_mask: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.results[0].status.as_ref().unwrap().code, 0);
    let admin = tls_channel(addr, &roots, Some(issue(&ts, "spiffe://example.org/admin"))).await;
    assert_eq!(list_entries(admin).await.unwrap(), 1);

    // Local caller: admin methods yes, agent methods no, health yes.
    let local = ts.admin().await;
    assert_eq!(list_entries(local.clone()).await.unwrap(), 1);
    let err = agentpb::agent_client::AgentClient::new(local.clone())
        .renew_agent(agentpb::RenewAgentRequest { params: None })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(
        err.message(),
        "authorization denied for method /spire.api.server.agent.v1.Agent/RenewAgent"
    );
    let health = healthpb::health_client::HealthClient::new(local)
        .check(healthpb::HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status, healthpb::health_check_response::ServingStatus::Serving as i32);

    // Health is not served on TCP; unknown methods of served services are Unimplemented.
    let anon = tls_channel(addr, &roots, None).await;
    let err = healthpb::health_client::HealthClient::new(anon.clone())
        .check(healthpb::HealthCheckRequest { service: String::new() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    let err = agentpb::agent_client::AgentClient::new(anon)
        .post_status(agentpb::PostStatusRequest { current_bundle_serial: 0 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    ts.server.shutdown().await;
}

#[tokio::test]
async fn reattestable_agents_must_reattest_instead_of_renewing() {
    let ts = TestServer::start().await;
    let roots = ts.roots().await;
    let id = "spiffe://example.org/spire/agent/x509pop/abc";
    let ident = issue(&ts, id);
    let leaf = ward_server::tls::leaf_facts(&ident.chain[0]).unwrap();
    let attestation = ward_store::AgentAttestation {
        id: AgentId(SpiffeId::parse(id).unwrap()),
        attestation_type: "x509pop".into(),
        serial: leaf.serial,
        expires_at: leaf.not_after,
        selectors: ward_core::SelectorSet::default(),
        can_reattest: true,
    };
    ts.server.state.proposer.propose(Command::AttestAgent(attestation)).await.unwrap();

    let ch = tls_channel(ts.addr(), &roots, Some(ident)).await;
    // Other agent methods work for it...
    assert_eq!(get_authorized(ch.clone()).await.unwrap(), 0);
    // ...but renewal is refused with AGENT_MUST_REATTEST.
    let err = agentpb::agent_client::AgentClient::new(ch)
        .renew_agent(agentpb::RenewAgentRequest {
            params: Some(agentpb::AgentX509svidParams { csr: key_and_csr().1 }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(
        ward_proto::convert::permission_denied_reason(&err),
        Some(Reason::AgentMustReattest)
    );
    ts.server.shutdown().await;
}

#[tokio::test]
async fn client_certificates_outside_the_bundle_or_expired_are_refused() {
    let ts = TestServer::start().await;
    let roots = ts.roots().await;

    // Signed by a CA that is not in the bundle.
    let key = ward_ca::PrivateKey::generate(ward_ca::KeyType::EcP256).unwrap();
    let td = ward_core::TrustDomain::new("example.org").unwrap();
    let rogue = ward_ca::X509Ca::self_signed(
        key,
        &td,
        Duration::from_secs(600),
        std::time::SystemTime::now(),
    )
    .unwrap();
    let leaf_key = ward_ca::PrivateKey::generate(ward_ca::KeyType::EcP256).unwrap();
    let sid = SpiffeId::parse("spiffe://example.org/spire/agent/join_token/x").unwrap();
    let params = SvidParams { spiffe_id: &sid, dns_names: &[], ttl: Duration::from_secs(600) };
    let leaf = rogue
        .sign_x509_svid(leaf_key.public_key_der(), &params, std::time::SystemTime::now())
        .unwrap();
    let rogue_ident = Identity { chain: vec![leaf], key_pkcs8: leaf_key.pkcs8_der().to_vec() };

    // Signed by the server's CA, but expired an hour ago.
    let ca = ts.server.state.ca.x509_ca().unwrap();
    let old_key = ward_ca::PrivateKey::generate(ward_ca::KeyType::EcP256).unwrap();
    let params = SvidParams { spiffe_id: &sid, dns_names: &[], ttl: Duration::from_secs(60) };
    let past = std::time::SystemTime::now() - Duration::from_secs(3600);
    let old = ca.sign_x509_svid(old_key.public_key_der(), &params, past).unwrap();
    let expired_ident = Identity { chain: vec![old], key_pkcs8: old_key.pkcs8_der().to_vec() };

    for ident in [rogue_ident, expired_ident] {
        // TLS 1.3 reports a refused client certificate on first use of the connection.
        let refused = match try_tls_channel(ts.addr(), &roots, Some(ident)).await {
            Err(_) => true,
            Ok(ch) => get_authorized(ch).await.is_err_and(|e| {
                e.code() == Code::Unknown
                    || e.code() == Code::Unavailable
                    || e.code() == Code::Internal
            }),
        };
        assert!(refused, "handshake must fail");
    }
    // The server keeps serving.
    let (ident, _) = new_agent(&ts).await;
    let ch = tls_channel(ts.addr(), &roots, Some(ident)).await;
    assert_eq!(get_authorized(ch).await.unwrap(), 0);
    ts.server.shutdown().await;
}

/// Who SPIRE's `policy_data.json` (v1.13.3) lets call each method, transcribed line by line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Allow {
    Any,
    Local,
    Admin,
    Agent,
    Downstream,
}

const SPIRE_POLICY: &[(&str, &[Allow])] = {
    use Allow::*;
    &[
        ("/spire.api.server.svid.v1.SVID/MintX509SVID", &[Local, Admin]),
        ("/spire.api.server.svid.v1.SVID/MintJWTSVID", &[Local, Admin]),
        ("/spire.api.server.svid.v1.SVID/BatchNewX509SVID", &[Agent]),
        ("/spire.api.server.svid.v1.SVID/NewJWTSVID", &[Agent]),
        ("/spire.api.server.svid.v1.SVID/NewDownstreamX509CA", &[Downstream]),
        ("/spire.api.server.bundle.v1.Bundle/GetBundle", &[Any]),
        ("/spire.api.server.bundle.v1.Bundle/AppendBundle", &[Local, Admin]),
        ("/spire.api.server.bundle.v1.Bundle/PublishJWTAuthority", &[Downstream]),
        ("/spire.api.server.bundle.v1.Bundle/CountBundles", &[Local, Admin]),
        ("/spire.api.server.bundle.v1.Bundle/ListFederatedBundles", &[Local, Admin]),
        ("/spire.api.server.bundle.v1.Bundle/GetFederatedBundle", &[Local, Admin, Agent]),
        ("/spire.api.server.bundle.v1.Bundle/BatchCreateFederatedBundle", &[Local, Admin]),
        ("/spire.api.server.bundle.v1.Bundle/BatchUpdateFederatedBundle", &[Local, Admin]),
        ("/spire.api.server.bundle.v1.Bundle/BatchSetFederatedBundle", &[Local, Admin]),
        ("/spire.api.server.bundle.v1.Bundle/BatchDeleteFederatedBundle", &[Local, Admin]),
        ("/spire.api.server.debug.v1.Debug/GetInfo", &[Local]),
        ("/spire.api.server.entry.v1.Entry/CountEntries", &[Local, Admin]),
        ("/spire.api.server.entry.v1.Entry/ListEntries", &[Local, Admin]),
        ("/spire.api.server.entry.v1.Entry/GetEntry", &[Local, Admin]),
        ("/spire.api.server.entry.v1.Entry/BatchCreateEntry", &[Local, Admin]),
        ("/spire.api.server.entry.v1.Entry/BatchUpdateEntry", &[Local, Admin]),
        ("/spire.api.server.entry.v1.Entry/BatchDeleteEntry", &[Local, Admin]),
        ("/spire.api.server.entry.v1.Entry/GetAuthorizedEntries", &[Agent]),
        ("/spire.api.server.entry.v1.Entry/SyncAuthorizedEntries", &[Agent]),
        ("/spire.api.server.logger.v1.Logger/GetLogger", &[Local]),
        ("/spire.api.server.logger.v1.Logger/SetLogLevel", &[Local]),
        ("/spire.api.server.logger.v1.Logger/ResetLogLevel", &[Local]),
        ("/spire.api.server.agent.v1.Agent/CountAgents", &[Local, Admin]),
        ("/spire.api.server.agent.v1.Agent/ListAgents", &[Local, Admin]),
        ("/spire.api.server.agent.v1.Agent/GetAgent", &[Local, Admin]),
        ("/spire.api.server.agent.v1.Agent/DeleteAgent", &[Local, Admin]),
        ("/spire.api.server.agent.v1.Agent/BanAgent", &[Local, Admin]),
        ("/spire.api.server.agent.v1.Agent/AttestAgent", &[Any]),
        ("/spire.api.server.agent.v1.Agent/RenewAgent", &[Agent]),
        ("/spire.api.server.agent.v1.Agent/CreateJoinToken", &[Local, Admin]),
        ("/grpc.health.v1.Health/Check", &[Local]),
        ("/grpc.health.v1.Health/List", &[Local]),
        ("/grpc.health.v1.Health/Watch", &[Local]),
        (
            "/spire.api.server.trustdomain.v1.TrustDomain/ListFederationRelationships",
            &[Local, Admin],
        ),
        ("/spire.api.server.trustdomain.v1.TrustDomain/GetFederationRelationship", &[Local, Admin]),
        (
            "/spire.api.server.trustdomain.v1.TrustDomain/BatchCreateFederationRelationship",
            &[Local, Admin],
        ),
        (
            "/spire.api.server.trustdomain.v1.TrustDomain/BatchUpdateFederationRelationship",
            &[Local, Admin],
        ),
        (
            "/spire.api.server.trustdomain.v1.TrustDomain/BatchDeleteFederationRelationship",
            &[Local, Admin],
        ),
        ("/spire.api.server.trustdomain.v1.TrustDomain/RefreshBundle", &[Local, Admin]),
        (
            "/spire.api.server.localauthority.v1.LocalAuthority/GetJWTAuthorityState",
            &[Local, Admin],
        ),
        ("/spire.api.server.localauthority.v1.LocalAuthority/PrepareJWTAuthority", &[Local, Admin]),
        (
            "/spire.api.server.localauthority.v1.LocalAuthority/ActivateJWTAuthority",
            &[Local, Admin],
        ),
        ("/spire.api.server.localauthority.v1.LocalAuthority/TaintJWTAuthority", &[Local, Admin]),
        ("/spire.api.server.localauthority.v1.LocalAuthority/RevokeJWTAuthority", &[Local, Admin]),
        (
            "/spire.api.server.localauthority.v1.LocalAuthority/GetX509AuthorityState",
            &[Local, Admin],
        ),
        (
            "/spire.api.server.localauthority.v1.LocalAuthority/PrepareX509Authority",
            &[Local, Admin],
        ),
        (
            "/spire.api.server.localauthority.v1.LocalAuthority/ActivateX509Authority",
            &[Local, Admin],
        ),
        ("/spire.api.server.localauthority.v1.LocalAuthority/TaintX509Authority", &[Local, Admin]),
        (
            "/spire.api.server.localauthority.v1.LocalAuthority/TaintX509UpstreamAuthority",
            &[Local, Admin],
        ),
        ("/spire.api.server.localauthority.v1.LocalAuthority/RevokeX509Authority", &[Local, Admin]),
        (
            "/spire.api.server.localauthority.v1.LocalAuthority/RevokeX509UpstreamAuthority",
            &[Local, Admin],
        ),
    ]
};

fn allows(p: Policy) -> Vec<Allow> {
    let mut v = Vec::new();
    if p == Policy::Any {
        v.push(Allow::Any);
    }
    if p.allows_local() {
        v.push(Allow::Local);
    }
    if p.allows_admin() {
        v.push(Allow::Admin);
    }
    if p.allows_agent() {
        v.push(Allow::Agent);
    }
    if p == Policy::Downstream {
        v.push(Allow::Downstream);
    }
    v
}

#[test]
fn policy_is_spire_policy_data_method_for_method() {
    for (method, expected) in SPIRE_POLICY {
        let policy = policy(method).unwrap_or_else(|| panic!("no policy for {method}"));
        assert_eq!(allows(policy), expected.to_vec(), "{method}");
    }
    // Methods SPIRE has no policy for have none here either (refused, or Unimplemented).
    for method in [
        ward_server::authz::POST_STATUS,
        "/spire.api.server.localauthority.v1.LocalAuthority/Unknown",
        "/spire.api.server.logger.v1.Logger/Unknown",
        "/spire.api.server.trustdomain.v1.TrustDomain/Unknown",
        "/spire.api.server.debug.v1.Debug/Unknown",
    ] {
        assert_eq!(policy(method), None, "{method}");
    }
}
