//! `ward.agent.v1.AgentWatch/Watch`: the push stream an attested agent holds beside SPIRE's
//! API. Events come for changes to what that agent receives, not for other agents' changes;
//! heartbeats carry the revision the stream has seen; the stream ends with the agent's
//! refusal when it is banned; an agent holds a bounded number of streams; only agents may
//! open one.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::Duration;

use common::*;
use tonic::Code;
use tonic::codec::Streaming;
use ward_proto::convert::permission_denied_reason;
use ward_proto::spire::api::server::agent::v1 as agentpb;
use ward_proto::spire::api::server::bundle::v1 as bundlepb;
use ward_proto::spire::api::server::entry::v1 as entrypb;
use ward_proto::spire::api::types::{self, permission_denied_details::Reason};
use ward_proto::ward::agent::v1::agent_watch_client::AgentWatchClient;
use ward_proto::ward::agent::v1::{WatchEvent, WatchRequest};

const DEADLINE: Duration = Duration::from_secs(20);

async fn open(
    ch: tonic::transport::Channel,
    heartbeat_seconds: u32,
) -> Result<Streaming<WatchEvent>, tonic::Status> {
    let mut c = AgentWatchClient::new(ch);
    Ok(c.watch(WatchRequest { heartbeat_seconds }).await?.into_inner())
}

async fn next(stream: &mut Streaming<WatchEvent>) -> WatchEvent {
    tokio::time::timeout(DEADLINE, stream.message())
        .await
        .expect("an event within the deadline")
        .expect("the stream is healthy")
        .expect("the stream is open")
}

/// The next event other than a heartbeat from before `revision`: a change made while a
/// heartbeat was due (a slow machine can take the 1 s between them) comes after it.
async fn next_change(stream: &mut Streaming<WatchEvent>, revision: u64) -> WatchEvent {
    loop {
        let e = next(stream).await;
        let heartbeat = !e.initial && !e.entries_changed && !e.bundles_changed;
        if !(heartbeat && e.revision < revision) {
            return e;
        }
    }
}

#[tokio::test]
async fn events_tell_an_agent_about_its_own_entries_and_bundle_only() {
    let ts = TestServer::start().await;
    let roots = ts.roots().await;
    let (ident, agent_a) = new_agent(&ts).await;
    let (_, agent_b) = new_agent(&ts).await;
    let ch = tls_channel(ts.addr(), &roots, Some(ident)).await;
    let mut stream = open(ch, 1).await.unwrap();

    tracing::info!("the first event says the stream is in place");
    let first = next(&mut stream).await;
    assert!(first.initial && !first.entries_changed && !first.bundles_changed, "{first:?}");
    assert_eq!(first.revision, ts.server.state.store.revision());

    tracing::info!("another agent's entry: seen (heartbeats carry its revision), not told");
    ts.create_entry("/b", &agent_b, ("unix", "uid:2")).await;
    let b_revision = ts.server.state.store.revision();
    loop {
        let e = next(&mut stream).await;
        assert!(!e.entries_changed && !e.bundles_changed && !e.initial, "{e:?}");
        if e.revision >= b_revision {
            break;
        }
    }

    tracing::info!("its own entry: an event at that entry's revision");
    let a_entry = ts.create_entry("/a", &agent_a, ("unix", "uid:1")).await;
    let a_revision = ts.server.state.store.revision();
    let e = next_change(&mut stream, a_revision).await;
    assert_eq!(
        (e.revision, e.entries_changed, e.bundles_changed, e.initial),
        (a_revision, true, false, false)
    );

    tracing::info!("an update of its entry changes its revision: an event");
    let mut entries = entrypb::entry_client::EntryClient::new(ts.admin().await);
    let update = entrypb::BatchUpdateEntryRequest {
        entries: vec![types::Entry {
            id: a_entry.clone(),
            hint: "changed".into(),
            ..Default::default()
        }],
        input_mask: Some(types::EntryMask { hint: true, ..Default::default() }),
        output_mask: None,
    };
    let r = entries.batch_update_entry(update).await.unwrap().into_inner();
    assert_eq!(r.results[0].status.as_ref().unwrap().code, 0, "{:?}", r.results[0]);
    let e = next_change(&mut stream, ts.server.state.store.revision()).await;
    assert!(e.entries_changed && !e.bundles_changed, "{e:?}");
    assert_eq!(e.revision, ts.server.state.store.revision());

    tracing::info!("the trust domain's bundle gains an authority: a bundle event");
    let extra = ward_testkit::TestAuthority::new("example.org");
    let mut bundles = bundlepb::bundle_client::BundleClient::new(ts.admin().await);
    bundles
        .append_bundle(bundlepb::AppendBundleRequest {
            x509_authorities: vec![types::X509Certificate {
                asn1: extra.ca_der().to_vec(),
                tainted: false,
            }],
            jwt_authorities: vec![],
            output_mask: None,
        })
        .await
        .unwrap();
    let e = next_change(&mut stream, ts.server.state.store.revision()).await;
    assert!(e.bundles_changed && !e.entries_changed, "{e:?}");

    tracing::info!("deleting its entry: an event");
    entries
        .batch_delete_entry(entrypb::BatchDeleteEntryRequest { ids: vec![a_entry] })
        .await
        .unwrap();
    let e = next_change(&mut stream, ts.server.state.store.revision()).await;
    assert!(e.entries_changed, "{e:?}");
    ts.server.shutdown().await;
}

#[tokio::test]
async fn a_banned_agent_s_stream_ends_with_its_refusal() {
    let ts = TestServer::start().await;
    let roots = ts.roots().await;
    let (ident, agent) = new_agent(&ts).await;
    let ch = tls_channel(ts.addr(), &roots, Some(ident.clone())).await;
    let mut stream = open(ch, 0).await.unwrap();
    assert!(next(&mut stream).await.initial);

    let mut admin = agentpb::agent_client::AgentClient::new(ts.admin().await);
    admin.ban_agent(agentpb::BanAgentRequest { id: Some(parse(&agent)) }).await.unwrap();
    let status = tokio::time::timeout(DEADLINE, stream.message())
        .await
        .expect("the stream ends within the deadline")
        .expect_err("it ends with the refusal");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(permission_denied_reason(&status), Some(Reason::AgentBanned));

    // And a new one is refused up front.
    let ch = tls_channel(ts.addr(), &roots, Some(ident)).await;
    let status = open(ch, 0).await.unwrap_err();
    assert_eq!(permission_denied_reason(&status), Some(Reason::AgentBanned));
    ts.server.shutdown().await;
}

#[tokio::test]
async fn an_agent_holds_at_most_four_streams_and_a_closed_one_frees_its_place() {
    let ts = TestServer::start().await;
    let roots = ts.roots().await;
    let (ident, _) = new_agent(&ts).await;
    let ch = tls_channel(ts.addr(), &roots, Some(ident)).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut s = open(ch.clone(), 0).await.unwrap();
        assert!(next(&mut s).await.initial);
        held.push(s);
    }
    let refused = open(ch.clone(), 0).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert_eq!(refused.message(), "agent already holds 4 watch streams");

    // Dropping a stream cancels it; its place comes back once the server has seen that.
    drop(held.pop());
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut reopened = loop {
        match open(ch.clone(), 0).await {
            Ok(s) => break s,
            Err(e) if e.code() == Code::ResourceExhausted => {
                assert!(tokio::time::Instant::now() < deadline, "the place never came back");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("unexpected refusal {e:?}"),
        }
    };
    assert!(next(&mut reopened).await.initial);
    ts.server.shutdown().await;
}

#[tokio::test]
async fn only_attested_agents_may_watch_and_only_on_the_agent_port() {
    let ts = TestServer::start().await;
    let roots = ts.roots().await;

    // No client certificate.
    let ch = tls_channel(ts.addr(), &roots, None).await;
    let status = open(ch, 0).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    // The admin socket does not serve it.
    let status = open(ts.admin().await, 0).await.unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    ts.server.shutdown().await;
}
