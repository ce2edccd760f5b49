//! LocalAuthority, Logger and Debug over the admin socket of an in-process server: SPIRE's
//! state machine (prepare, activate, taint, revoke) for X.509 and JWT authorities with its
//! codes and messages, what the bundle shows after each step, and who may call what.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::*;
use tonic::Code;
use tonic::transport::Channel;
use ward_proto::spire::api::server::bundle::v1 as bundlepb;
use ward_proto::spire::api::server::debug::v1 as debugpb;
use ward_proto::spire::api::server::localauthority::v1 as lapb;
use ward_proto::spire::api::server::logger::v1 as loggerpb;
use ward_proto::spire::api::server::svid::v1 as svidpb;
use ward_proto::spire::api::types;

type La = lapb::local_authority_client::LocalAuthorityClient<Channel>;

fn code_msg<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) -> (Code, String) {
    let e = r.unwrap_err();
    (e.code(), e.message().to_owned())
}

fn inv(msg: &str) -> (Code, String) {
    (Code::InvalidArgument, msg.to_owned())
}

fn internal(msg: &str) -> (Code, String) {
    (Code::Internal, msg.to_owned())
}

async fn bundle(ts: &TestServer) -> types::Bundle {
    let mut c = bundlepb::bundle_client::BundleClient::new(ts.admin().await);
    c.get_bundle(bundlepb::GetBundleRequest { output_mask: None }).await.unwrap().into_inner()
}

/// The bundle's X.509 authorities as (subject key id, tainted).
async fn x509_flags(ts: &TestServer) -> Vec<(String, bool)> {
    bundle(ts)
        .await
        .x509_authorities
        .iter()
        .map(|a| (ward_server::ca_manager::subject_key_id_hex(&a.asn1).unwrap(), a.tainted))
        .collect()
}

async fn jwt_flags(ts: &TestServer) -> Vec<(String, bool)> {
    bundle(ts).await.jwt_authorities.iter().map(|k| (k.key_id.clone(), k.tainted)).collect()
}

async fn x509_state(c: &mut La) -> lapb::GetX509AuthorityStateResponse {
    c.get_x509_authority_state(lapb::GetX509AuthorityStateRequest {}).await.unwrap().into_inner()
}

async fn jwt_state(c: &mut La) -> lapb::GetJwtAuthorityStateResponse {
    c.get_jwt_authority_state(lapb::GetJwtAuthorityStateRequest {}).await.unwrap().into_inner()
}

fn id_of(s: &Option<lapb::AuthorityState>) -> &str {
    s.as_ref().map_or("", |s| s.authority_id.as_str())
}

#[tokio::test]
async fn x509_authority_prepare_activate_taint_revoke() {
    let ts = TestServer::start().await;
    let mut c = La::new(ts.admin().await);
    let first_ca = ts.server.state.ca.x509_ca().unwrap();
    let a = first_ca.authority_id();

    let st = x509_state(&mut c).await;
    let active = st.active.clone().unwrap();
    assert_eq!(active.authority_id, a);
    assert_eq!(active.expires_at, first_ca.not_after_unix());
    assert_eq!(active.upstream_authority_subject_key_id, "");
    assert_eq!((st.prepared, st.old), (None, None));

    let activate = |id: &str| lapb::ActivateX509AuthorityRequest { authority_id: id.into() };
    let taint = |id: &str| lapb::TaintX509AuthorityRequest { authority_id: id.into() };
    let revoke = |id: &str| lapb::RevokeX509AuthorityRequest { authority_id: id.into() };

    // Nothing prepared yet.
    assert_eq!(
        code_msg(c.activate_x509_authority(activate("")).await),
        inv("no authority ID provided")
    );
    assert_eq!(
        code_msg(c.activate_x509_authority(activate("ab")).await),
        inv("unexpected authority ID")
    );
    assert_eq!(code_msg(c.taint_x509_authority(taint("")).await), inv("no authority ID provided"));
    assert_eq!(
        code_msg(c.taint_x509_authority(taint(&a)).await),
        inv("unable to taint current local authority")
    );
    assert_eq!(code_msg(c.taint_x509_authority(taint("ab")).await), inv("unexpected authority ID"));
    assert_eq!(
        code_msg(c.revoke_x509_authority(revoke("")).await),
        inv("invalid authority ID: no authority ID provided")
    );
    assert_eq!(
        code_msg(c.revoke_x509_authority(revoke(&a)).await),
        inv("invalid authority ID: unable to use current authority")
    );
    assert_eq!(
        code_msg(c.revoke_x509_authority(revoke("ab")).await),
        inv("invalid authority ID: only Old local authority can be revoked")
    );

    // Prepare: published in the bundle, not signing.
    let prepared = c
        .prepare_x509_authority(lapb::PrepareX509AuthorityRequest {})
        .await
        .unwrap()
        .into_inner()
        .prepared_authority
        .unwrap();
    let p = prepared.authority_id.clone();
    assert_ne!(p, a);
    assert!(prepared.expires_at > 0);
    assert_eq!(x509_flags(&ts).await, vec![(a.clone(), false), (p.clone(), false)]);
    let st = x509_state(&mut c).await;
    assert_eq!(
        (id_of(&st.active), id_of(&st.prepared), id_of(&st.old)),
        (a.as_str(), p.as_str(), "")
    );
    assert_eq!(st.prepared.unwrap(), prepared);
    assert_eq!(ts.server.state.ca.x509_ca().unwrap().authority_id(), a);
    assert_eq!(
        code_msg(c.taint_x509_authority(taint(&p)).await),
        inv(
            "only Old local authorities can be tainted: unsupported local authority status: PREPARED"
        )
    );
    assert_eq!(
        code_msg(c.revoke_x509_authority(revoke(&p)).await),
        inv("invalid authority ID: only Old local authority can be revoked")
    );

    // Activate: the prepared authority signs, the former one is old.
    let activated = c.activate_x509_authority(activate(&p)).await.unwrap().into_inner();
    assert_eq!(activated.activated_authority.unwrap(), prepared);
    assert_eq!(ts.server.state.ca.x509_ca().unwrap().authority_id(), p);
    let st = x509_state(&mut c).await;
    assert_eq!(
        (id_of(&st.active), id_of(&st.prepared), id_of(&st.old)),
        (p.as_str(), "", a.as_str())
    );
    assert_eq!(st.old.unwrap(), active);
    assert_eq!(
        code_msg(c.activate_x509_authority(activate(&a)).await),
        internal(
            "only Prepared authorities can be activated: unsupported local authority status: OLD"
        )
    );
    assert_eq!(
        code_msg(c.revoke_x509_authority(revoke(&a)).await),
        internal(
            "failed to revoke X.509 authority: it is not possible to revoke an untainted root CA"
        )
    );
    // The server's own SVID moves to the new authority.
    let chain = wait_server_chain_under(&ts, &p).await;
    assert_eq!(chain.len(), 2);

    // Taint the old one: flagged in the bundle, still there.
    let tainted = c.taint_x509_authority(taint(&a)).await.unwrap().into_inner();
    assert_eq!(tainted.tainted_authority.unwrap(), active);
    assert_eq!(x509_flags(&ts).await, vec![(a.clone(), true), (p.clone(), false)]);
    assert_eq!(
        code_msg(c.taint_x509_authority(taint(&a)).await),
        internal("failed to taint X.509 authority: root CA is already tainted")
    );

    // Revoke it: gone from the bundle; the slot still names it.
    let revoked = c.revoke_x509_authority(revoke(&a)).await.unwrap().into_inner();
    assert_eq!(
        revoked.revoked_authority.unwrap(),
        lapb::AuthorityState { authority_id: a.clone(), ..Default::default() }
    );
    assert_eq!(x509_flags(&ts).await, vec![(p.clone(), false)]);
    assert_eq!(
        code_msg(c.revoke_x509_authority(revoke(&a)).await),
        internal("failed to revoke X.509 authority: no root CA found with provided subject key ID")
    );
    assert_eq!(
        code_msg(c.taint_x509_authority(taint(&a)).await),
        internal("failed to taint X.509 authority: no ca found with provided subject key ID")
    );
    assert_eq!(id_of(&x509_state(&mut c).await.old), a);

    // A new preparation takes the old authority's slot.
    let again = c
        .prepare_x509_authority(lapb::PrepareX509AuthorityRequest {})
        .await
        .unwrap()
        .into_inner()
        .prepared_authority
        .unwrap();
    let st = x509_state(&mut c).await;
    assert_eq!(
        (id_of(&st.active), id_of(&st.prepared), id_of(&st.old)),
        (p.as_str(), again.authority_id.as_str(), "")
    );

    // No upstream authority: SPIRE's answer.
    let err = c
        .taint_x509_upstream_authority(lapb::TaintX509UpstreamAuthorityRequest {
            subject_key_id: a.clone(),
        })
        .await;
    assert_eq!(
        code_msg(err),
        (Code::FailedPrecondition, "upstream authority is not configured".into())
    );
    let err = c
        .revoke_x509_upstream_authority(lapb::RevokeX509UpstreamAuthorityRequest {
            subject_key_id: String::new(),
        })
        .await;
    assert_eq!(
        code_msg(err),
        (Code::FailedPrecondition, "upstream authority is not configured".into())
    );
    ts.server.shutdown().await;
}

/// Waits until the server's own SVID is issued by the authority `ski`; returns its chain.
async fn wait_server_chain_under(ts: &TestServer, ski: &str) -> Vec<Vec<u8>> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let chain = ts.server.state.server_svid_chain();
        let root = chain.last().and_then(|d| ward_server::ca_manager::subject_key_id_hex(d));
        if root.as_deref() == Some(ski) {
            return chain;
        }
        assert!(tokio::time::Instant::now() < deadline, "server SVID never moved to {ski}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn minted_kid(ts: &TestServer) -> String {
    let mut c = svidpb::svid_client::SvidClient::new(ts.admin().await);
    let svid = c
        .mint_jwtsvid(svidpb::MintJwtsvidRequest {
            id: Some(id("example.org", "/w")),
            audience: vec!["aud".into()],
            ttl: 60,
        })
        .await
        .unwrap()
        .into_inner()
        .svid
        .unwrap();
    let header = svid.token.split('.').next().unwrap();
    use base64::Engine;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    v["kid"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn jwt_authority_prepare_activate_taint_revoke() {
    let ts = TestServer::start().await;
    let mut c = La::new(ts.admin().await);
    let k1 = ts.server.state.ca.jwt_signer_now().unwrap().key_id().to_owned();
    let st = jwt_state(&mut c).await;
    let active = st.active.clone().unwrap();
    assert_eq!(active.authority_id, k1);
    assert!(active.expires_at > 0);
    assert_eq!((st.prepared, st.old), (None, None));

    let activate = |id: &str| lapb::ActivateJwtAuthorityRequest { authority_id: id.into() };
    let taint = |id: &str| lapb::TaintJwtAuthorityRequest { authority_id: id.into() };
    let revoke = |id: &str| lapb::RevokeJwtAuthorityRequest { authority_id: id.into() };

    let prepared = c
        .prepare_jwt_authority(lapb::PrepareJwtAuthorityRequest {})
        .await
        .unwrap()
        .into_inner()
        .prepared_authority
        .unwrap();
    let k2 = prepared.authority_id.clone();
    assert_eq!(k2.len(), 32);
    assert_eq!(jwt_flags(&ts).await, vec![(k1.clone(), false), (k2.clone(), false)]);
    assert_eq!(
        code_msg(c.revoke_jwt_authority(revoke(&k2)).await),
        inv("invalid authority ID: unable to use a prepared key")
    );
    assert_eq!(
        code_msg(c.revoke_jwt_authority(revoke(&k1)).await),
        inv("invalid authority ID: unable to use current authority")
    );
    assert_eq!(
        code_msg(c.revoke_jwt_authority(revoke("nope")).await),
        inv("invalid authority ID: no JWT authority found with provided authority ID")
    );
    assert_eq!(
        code_msg(c.taint_jwt_authority(taint(&k1)).await),
        inv("unable to taint current local authority")
    );
    assert_eq!(
        code_msg(c.taint_jwt_authority(taint(&k2)).await),
        inv(
            "only Old local authorities can be tainted: unsupported local authority status: PREPARED"
        )
    );
    assert_eq!(minted_kid(&ts).await, k1);

    let activated = c.activate_jwt_authority(activate(&k2)).await.unwrap().into_inner();
    assert_eq!(activated.activated_authority.unwrap(), prepared);
    assert_eq!(minted_kid(&ts).await, k2, "JWT-SVIDs are signed with the new key");
    let st = jwt_state(&mut c).await;
    assert_eq!(
        (id_of(&st.active), id_of(&st.prepared), id_of(&st.old)),
        (k2.as_str(), "", k1.as_str())
    );
    assert_eq!(
        code_msg(c.revoke_jwt_authority(revoke(&k1)).await),
        internal("failed to revoke JWT authority: it is not possible to revoke an untainted key")
    );

    let tainted = c.taint_jwt_authority(taint(&k1)).await.unwrap().into_inner();
    assert_eq!(
        tainted.tainted_authority.unwrap(),
        lapb::AuthorityState { authority_id: k1.clone(), ..Default::default() }
    );
    assert_eq!(jwt_flags(&ts).await, vec![(k1.clone(), true), (k2.clone(), false)]);
    assert_eq!(
        code_msg(c.taint_jwt_authority(taint(&k1)).await),
        internal("failed to taint JWT authority: key is already tainted")
    );

    let revoked = c.revoke_jwt_authority(revoke(&k1)).await.unwrap().into_inner();
    assert_eq!(revoked.revoked_authority.unwrap().authority_id, k1);
    assert_eq!(jwt_flags(&ts).await, vec![(k2.clone(), false)]);
    assert_eq!(
        code_msg(c.revoke_jwt_authority(revoke(&k1)).await),
        internal("failed to revoke JWT authority: no JWT Key found with provided key ID")
    );
    ts.server.shutdown().await;
}

#[tokio::test]
async fn logger_levels_as_spire_names_them() {
    let ts = TestServer::start().await;
    let mut c = loggerpb::logger_client::LoggerClient::new(ts.admin().await);
    let level = |l: types::LogLevel| l as i32;
    let got = c.get_logger(loggerpb::GetLoggerRequest {}).await.unwrap().into_inner();
    assert_eq!(
        (got.current_level, got.launch_level),
        (level(types::LogLevel::Info), level(types::LogLevel::Info))
    );
    let set = |l: i32| loggerpb::SetLogLevelRequest { new_level: l };
    let got = c.set_log_level(set(level(types::LogLevel::Trace))).await.unwrap().into_inner();
    assert_eq!(
        (got.current_level, got.launch_level),
        (level(types::LogLevel::Trace), level(types::LogLevel::Info))
    );
    assert_eq!(
        code_msg(c.set_log_level(set(0)).await),
        inv("newLevel value cannot be LogLevel_UNSPECIFIED")
    );
    assert_eq!(code_msg(c.set_log_level(set(42)).await), inv("unsupported log level"));
    let got = c.get_logger(loggerpb::GetLoggerRequest {}).await.unwrap().into_inner();
    assert_eq!(got.current_level, level(types::LogLevel::Trace));
    let got = c.reset_log_level(loggerpb::ResetLogLevelRequest {}).await.unwrap().into_inner();
    assert_eq!(got.current_level, level(types::LogLevel::Info));
    ts.server.shutdown().await;
}

#[tokio::test]
async fn debug_info_reports_chain_counts_and_uptime() {
    let ts = TestServer::start().await;
    let mut c = debugpb::debug_client::DebugClient::new(ts.admin().await);
    let info = c.get_info(debugpb::GetInfoRequest {}).await.unwrap().into_inner();
    assert_eq!((info.agents_count, info.entries_count, info.federated_bundles_count), (0, 0, 1));
    let ca = ts.server.state.ca.x509_ca().unwrap();
    let chain = &info.svid_chain;
    assert_eq!(chain.len(), 2, "{chain:?}");
    assert_eq!(chain[0].id, Some(id("example.org", "/spire/server")));
    assert_eq!(chain[0].subject, "O=SPIRE,C=US");
    assert_eq!(chain[1].id, Some(id("example.org", "")));
    assert_eq!(chain[1].expires_at, ca.not_after_unix());
    let (_, root) = x509_parser::parse_x509_certificate(ca.cert_der()).unwrap();
    assert_eq!(chain[1].subject, format!("SERIALNUMBER={},O=SPIFFE,C=US", root.serial));
    assert!(chain[0].expires_at <= chain[1].expires_at);

    // As SPIRE, an answer is reused for five seconds.
    let (_, agent_id) = new_agent(&ts).await;
    ts.create_entry("/w", &agent_id, ("unix", "uid:1")).await;
    let cached = c.get_info(debugpb::GetInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(cached, info);
    ts.clock.advance(100);
    let fresh = c.get_info(debugpb::GetInfoRequest {}).await.unwrap().into_inner();
    assert_eq!((fresh.agents_count, fresh.entries_count), (1, 1));
    assert!(fresh.uptime >= 100, "uptime {}", fresh.uptime);
    ts.server.shutdown().await;
}

#[tokio::test]
async fn admin_only_services_stay_off_the_agent_port() {
    let ts = TestServer::start().await;
    let roots = ts.roots().await;
    let anon = tls_channel(ts.addr(), &roots, None).await;
    // LocalAuthority is served on TCP, for admins only.
    let err = La::new(anon.clone())
        .get_x509_authority_state(lapb::GetX509AuthorityStateRequest {})
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (
            Code::PermissionDenied,
            "authorization denied for method \
             /spire.api.server.localauthority.v1.LocalAuthority/GetX509AuthorityState"
        )
    );
    // Logger and Debug are not served there at all.
    let err = loggerpb::logger_client::LoggerClient::new(anon.clone())
        .get_logger(loggerpb::GetLoggerRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    let err = debugpb::debug_client::DebugClient::new(anon)
        .get_info(debugpb::GetInfoRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    ts.server.shutdown().await;
}
