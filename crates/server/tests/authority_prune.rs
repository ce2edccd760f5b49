//! Expired authorities leave the own bundle 24 h after they expire: a running server whose
//! clock is moved through two CA rotations serves, through GetBundle, a bundle without the
//! first X.509 authority and JWT key once their grace period is over.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::Duration;

use common::TestServer;
use ward_core::Clock;
use ward_proto::spire::api::server::bundle::v1 as bundlepb;
use ward_proto::spire::api::types;

const HOUR: i64 = 3600;

async fn bundle(ts: &TestServer) -> types::Bundle {
    let mut c = bundlepb::bundle_client::BundleClient::new(ts.admin().await);
    c.get_bundle(bundlepb::GetBundleRequest { output_mask: None }).await.unwrap().into_inner()
}

fn roots(b: &types::Bundle) -> Vec<Vec<u8>> {
    b.x509_authorities.iter().map(|a| a.asn1.clone()).collect()
}

fn kids(b: &types::Bundle) -> Vec<String> {
    b.jwt_authorities.iter().map(|a| a.key_id.clone()).collect()
}

/// Moves the server clock to `hours` after start and runs the CA schedule there.
async fn rotate_at(ts: &TestServer, at: &mut i64, hours: i64) {
    ts.clock.advance(hours * HOUR - *at);
    *at = hours * HOUR;
    ts.server.state.ca.tick(ts.clock.now()).await.unwrap();
}

#[tokio::test]
async fn expired_authorities_leave_the_bundle_after_the_grace_period() {
    let ts = TestServer::start().await;
    let first = bundle(&ts).await;
    let (first_root, first_kid) = (roots(&first), kids(&first));
    assert_eq!((first_root.len(), first_kid.len()), (1, 1));

    // 24 h authorities: B prepared at 13 h and active at 21 h; C prepared at 26 h and active
    // at 34 h. A (the first) expired at 24 h.
    let mut at = 0;
    for h in [13, 21, 26, 34] {
        rotate_at(&ts, &mut at, h).await;
    }
    let b = bundle(&ts).await;
    assert_eq!((roots(&b).len(), kids(&b).len()), (3, 3));
    let seq_before = b.sequence_number;
    // Within the grace period: a prune pass keeps A.
    let removed = ts
        .server
        .state
        .ca
        .prune_expired(
            ts.server.state.store.bundle(&ts.server.state.trust_domain).as_deref(),
            ts.clock.now(),
        )
        .await
        .unwrap();
    assert_eq!(removed, 0);
    assert!(roots(&bundle(&ts).await).contains(&first_root[0]));

    // 24 h after A's expiry the server's own prune pass removes A and the first JWT key;
    // B (expired at 37 h) and C stay.
    ts.clock.advance(48 * HOUR + 60 - at);
    let mut after = bundle(&ts).await;
    for _ in 0..100 {
        if roots(&after).len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        after = bundle(&ts).await;
    }
    assert_eq!(roots(&after).len(), 2, "A pruned by the server's schedule");
    assert!(!roots(&after).contains(&first_root[0]));
    assert!(roots(&b).iter().skip(1).all(|r| roots(&after).contains(r)));
    assert_eq!(kids(&after).len(), 2);
    assert!(!kids(&after).contains(&first_kid[0]));
    assert_eq!(after.sequence_number, seq_before + 1, "one change, one bump");

    ts.server.shutdown().await;
}
