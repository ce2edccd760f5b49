//! The server's own X509-SVID: `spiffe://<td>/spire/server`, chained to the bundle, ALPN h2,
//! and replaced at half-life.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::sync::Arc;

use common::*;
use rustls::pki_types::ServerName;

/// Handshakes with the server and returns its leaf certificate and the negotiated ALPN.
async fn server_leaf(ts: &TestServer, roots: &[Vec<u8>]) -> (Vec<u8>, Option<Vec<u8>>) {
    let cfg = ward_server::tls::agent_client_config(server_verifier(roots), None).unwrap();
    let tcp = tokio::net::TcpStream::connect(ts.addr()).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let conn = tls.get_ref().1;
    let leaf = conn.peer_certificates().unwrap()[0].to_vec();
    (leaf, conn.alpn_protocol().map(<[u8]>::to_vec))
}

#[tokio::test]
async fn server_svid_rotates_at_half_life() {
    let ts = TestServer::start().await;
    let roots = ts.roots().await;
    let (leaf, alpn) = server_leaf(&ts, &roots).await;
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    let first = ward_server::tls::leaf_facts(&leaf).unwrap();
    assert_eq!(first.id.as_str(), "spiffe://example.org/spire/server");

    // Default X509-SVID TTL is 1 h: 31 minutes later the SVID is past half-life.
    ts.clock.advance(31 * 60);
    let mut rotated = None;
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        // The new SVID starts in the test clock's future: check its ID only.
        let (leaf, _) = server_leaf(&ts, &[]).await;
        let facts = ward_server::tls::leaf_facts(&leaf).unwrap();
        if facts.serial != first.serial {
            rotated = Some(facts);
            break;
        }
    }
    let second = rotated.expect("server SVID rotated");
    assert_eq!(second.id, first.id);
    assert!(second.not_after > first.not_after);
    ts.server.shutdown().await;
}

/// The agent-side verifier refuses a server with another ID or outside the given roots.
#[tokio::test]
async fn agent_side_verifier_refuses_wrong_id_and_foreign_roots() {
    use ward_server::tls::{SpiffeServerVerifier, agent_channel, agent_client_config};
    let ts = TestServer::start().await;
    let roots = ts.roots().await;
    let connect = |v: SpiffeServerVerifier| {
        let cfg = Arc::new(agent_client_config(Arc::new(v), None).unwrap());
        agent_channel(ts.addr(), cfg)
    };
    let other = ward_core::SpiffeId::parse("spiffe://example.org/not-the-server").unwrap();
    let err = connect(SpiffeServerVerifier::new(other, Some(&roots)).unwrap()).await.unwrap_err();
    let chain = format!("{:?}", std::error::Error::source(&err));
    assert!(chain.contains("expected spiffe://example.org/not-the-server"), "{chain}");

    let key = ward_ca::PrivateKey::generate(ward_ca::KeyType::EcP256).unwrap();
    let td = ward_core::TrustDomain::new("example.org").unwrap();
    let foreign = ward_ca::X509Ca::self_signed(
        key,
        &td,
        std::time::Duration::from_secs(3600),
        std::time::SystemTime::now(),
    )
    .unwrap();
    let foreign_roots = [foreign.trust_anchor_der().to_vec()];
    let v = SpiffeServerVerifier::for_trust_domain(&td, Some(&foreign_roots)).unwrap();
    let err = connect(v).await.unwrap_err();
    let chain = format!("{:?}", std::error::Error::source(&err));
    assert!(chain.contains("UnknownIssuer"), "{chain}");

    let v = SpiffeServerVerifier::for_trust_domain(&td, Some(&roots)).unwrap();
    assert!(connect(v).await.is_ok(), "the real roots are accepted");
    ts.server.shutdown().await;
}
