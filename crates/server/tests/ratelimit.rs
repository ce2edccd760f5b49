//! With SPIRE's rate limits on (the default), agents still attest and sign: calls wait for
//! tokens instead of failing; a batch over the burst size is refused outright.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::*;
use tonic::Code;
use ward_proto::spire::api::server::svid::v1 as svidpb;

#[tokio::test]
async fn limits_on_by_default_wait_instead_of_failing() {
    let ts = TestServer::start_with(|cfg| {
        cfg.ratelimit = ward_server::config::RateLimitConfig::default();
    })
    .await;
    assert!(ts.server.state.limits.attest.is_enabled());
    let roots = ts.roots().await;
    // Two attestations from one IP inside a second: the second waits for its token.
    let (ident, agent_id) = new_agent(&ts).await;
    let (_second, _) = new_agent(&ts).await;

    let entry = ts.create_entry("/w", &agent_id, ("unix", "uid:1")).await;
    let ch = tls_channel(ts.addr(), &roots, Some(ident)).await;
    let mut svids = svidpb::svid_client::SvidClient::new(ch);
    let csr = key_and_csr().1;
    let params: Vec<_> = (0..20)
        .map(|_| svidpb::NewX509svidParams { entry_id: entry.clone(), csr: csr.clone() })
        .collect();
    let resp = svids
        .batch_new_x509svid(svidpb::BatchNewX509svidRequest { params })
        .await
        .unwrap()
        .into_inner();
    assert!(resp.results.iter().all(|r| r.status.as_ref().unwrap().code == 0));

    let params: Vec<_> = (0..501)
        .map(|_| svidpb::NewX509svidParams { entry_id: entry.clone(), csr: csr.clone() })
        .collect();
    let err =
        svids.batch_new_x509svid(svidpb::BatchNewX509svidRequest { params }).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    ts.server.shutdown().await;
}
