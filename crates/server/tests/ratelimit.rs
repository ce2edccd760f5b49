//! SPIRE's rate limits: on by default, calls wait for tokens instead of failing; a batch
//! over the burst size is refused with SPIRE's message; X.509 and JWT signing draw from
//! separate limiters; a cancelled wait leaves no debt; a wait that would pass the caller's
//! deadline is refused at once; buckets of idle addresses are collected; with signing limits
//! off nothing is refused.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::*;
use tonic::Code;
use ward_proto::convert::attest_agent_params;
use ward_proto::spire::api::server::agent::v1 as agentpb;
use ward_proto::spire::api::server::svid::v1 as svidpb;
use ward_server::ratelimit::{
    GC_INTERVAL, Limited, PerIpLimiter, RateLimitError, RateLimits, SIGN_LIMIT_PER_IP,
};

const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));

/// `n` copies of one CSR for `entry` in one BatchNewX509SVID call.
async fn sign_batch(
    svids: &mut svidpb::svid_client::SvidClient<tonic::transport::Channel>,
    entry: &str,
    n: usize,
) -> Result<svidpb::BatchNewX509svidResponse, tonic::Status> {
    let csr = key_and_csr().1;
    let params: Vec<_> = (0..n)
        .map(|_| svidpb::NewX509svidParams { entry_id: entry.to_owned(), csr: csr.clone() })
        .collect();
    Ok(svids.batch_new_x509svid(svidpb::BatchNewX509svidRequest { params }).await?.into_inner())
}

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
    let resp = sign_batch(&mut svids, &entry, 20).await.unwrap();
    assert!(resp.results.iter().all(|r| r.status.as_ref().unwrap().code == 0));

    let err = sign_batch(&mut svids, &entry, 501).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert_eq!(
        err.message(),
        "rejecting request due to certificate signing rate limiting: rate (501) exceeds burst \
         size (500)"
    );
    ts.server.shutdown().await;
}

#[tokio::test]
async fn signing_limits_off_accept_batches_over_500() {
    // The harness turns both limits off, as `[ratelimit] signing = false` does.
    let ts = TestServer::start().await;
    assert!(!ts.server.state.limits.x509.is_enabled());
    let roots = ts.roots().await;
    let (ident, agent_id) = new_agent(&ts).await;
    let entry = ts.create_entry("/w", &agent_id, ("unix", "uid:1")).await;
    let ch = tls_channel(ts.addr(), &roots, Some(ident)).await;
    let mut svids = svidpb::svid_client::SvidClient::new(ch);
    let resp = sign_batch(&mut svids, &entry, 501).await.unwrap();
    assert_eq!(resp.results.len(), 501);
    assert!(resp.results.iter().all(|r| r.status.as_ref().unwrap().code == 0));
    ts.server.shutdown().await;
}

#[tokio::test]
async fn an_attestation_that_would_wait_past_its_deadline_is_refused_with_spires_message() {
    let ts = TestServer::start_with(|cfg| {
        cfg.ratelimit = ward_server::config::RateLimitConfig::default();
    })
    .await;
    // Take 127.0.0.1's one attestation token for this second.
    let local = IpAddr::from([127, 0, 0, 1]);
    ts.server.state.limits.attest.acquire(local, 1, None).await.unwrap();
    let ch = tls_channel(ts.addr(), &[], None).await;
    let mut c = agentpb::agent_client::AgentClient::new(ch);
    let msg = attest_agent_params("join_token", b"tok".to_vec(), key_and_csr().1);
    let mut req = tonic::Request::new(futures::stream::iter(vec![msg]));
    req.set_timeout(Duration::from_millis(100));
    let err = c.attest_agent(req).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_eq!(
        err.message(),
        "rejecting request due to attest agent rate limiting: rate: Wait(n=1) would exceed \
         context deadline"
    );
    ts.server.shutdown().await;
}

#[test]
fn each_rate_limited_method_names_its_limiter_and_spires_prefix() {
    let limits = RateLimits::new(true, true);
    for (method, limiter, prefix) in [
        (
            Limited::AttestAgent,
            &limits.attest,
            "rejecting request due to attest agent rate limiting",
        ),
        (Limited::RenewAgent, &limits.x509, "rejecting request due to renew agent rate limiting"),
        (
            Limited::BatchNewX509Svid,
            &limits.x509,
            "rejecting request due to certificate signing rate limiting",
        ),
        (
            Limited::NewDownstreamX509Ca,
            &limits.x509,
            "rejecting request due to downstream CA signing rate limit",
        ),
        (
            Limited::NewJwtSvid,
            &limits.jwt,
            "rejecting request due to JWT signing request rate limiting",
        ),
    ] {
        assert!(std::ptr::eq(limits.limiter(method), limiter), "{method:?}");
        assert_eq!(method.message_prefix(), prefix);
    }
}

#[tokio::test(start_paused = true)]
async fn x509_and_jwt_signing_draw_from_separate_limiters() {
    let limits = RateLimits::new(true, true);
    let now = Some(Duration::ZERO);
    limits.admit(Limited::BatchNewX509Svid, Some(IP), 500, None).await.unwrap();
    // The X.509 bucket is empty: RenewAgent (same group) would have to wait.
    let err = limits.admit(Limited::RenewAgent, Some(IP), 1, now).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    // JWT signing has its own full bucket.
    limits.admit(Limited::NewJwtSvid, Some(IP), 1, now).await.unwrap();
    assert_eq!(
        limits.jwt.acquire(IP, SIGN_LIMIT_PER_IP - 1, now).await,
        Ok(()),
        "the JWT limiter starts full whatever the X.509 one did"
    );
    // Local callers (no IP) are never limited.
    limits.admit(Limited::RenewAgent, None, 1, now).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn cancelled_waits_leave_no_debt() {
    let limiter = std::sync::Arc::new(PerIpLimiter::new(1, true));
    limiter.acquire(IP, 1, None).await.unwrap();
    // Fifty callers queue behind the empty bucket, then all disconnect.
    let waiters: Vec<_> = (0..50)
        .map(|_| {
            let l = limiter.clone();
            tokio::spawn(async move { l.acquire(IP, 1, None).await })
        })
        .collect();
    while limiter.waiting() < 50 {
        tokio::task::yield_now().await;
    }
    for w in &waiters {
        w.abort();
    }
    for w in waiters {
        assert!(w.await.unwrap_err().is_cancelled());
    }
    assert_eq!(limiter.waiting(), 0);
    // The next caller waits only for the one token to refill, not for fifty.
    let t0 = tokio::time::Instant::now();
    limiter.acquire(IP, 1, None).await.unwrap();
    assert!(t0.elapsed() <= Duration::from_secs(1), "waited {:?}", t0.elapsed());
}

#[tokio::test(start_paused = true)]
async fn oversized_and_deadline_refusals_are_typed() {
    let l = PerIpLimiter::new(500, true);
    assert_eq!(
        l.acquire(IP, 501, None).await,
        Err(RateLimitError::ExceedsBurst { needed: 501, burst: 500 })
    );
    l.acquire(IP, 500, None).await.unwrap();
    assert_eq!(
        l.acquire(IP, 10, Some(Duration::from_millis(1))).await,
        Err(RateLimitError::WouldExceedDeadline { needed: 10 })
    );
    // A deadline the wait fits in is honoured: 10 tokens refill in 20 ms.
    l.acquire(IP, 10, Some(Duration::from_millis(20))).await.unwrap();
    // A disabled limiter admits anything, as SPIRE's DisabledLimit does.
    let off = PerIpLimiter::new(500, false);
    assert_eq!(off.acquire(IP, 10_000, Some(Duration::ZERO)).await, Ok(()));
}

#[tokio::test(start_paused = true)]
async fn buckets_of_idle_addresses_are_collected() {
    let l = PerIpLimiter::new(500, true);
    for i in 0..1000u32 {
        l.acquire(IpAddr::from(i.to_be_bytes()), 1, None).await.unwrap();
    }
    assert_eq!(l.tracked(), 1000);
    tokio::time::advance(GC_INTERVAL).await;
    l.acquire(IP, 1, None).await.unwrap();
    assert_eq!(l.tracked(), 1, "only the address just seen is left");
}
