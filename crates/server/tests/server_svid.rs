//! The server's own X509-SVID: `spiffe://<td>/spire/server`, chained to the bundle, ALPN h2,
//! and replaced at half-life.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::sync::Arc;

use common::*;
use rustls::pki_types::ServerName;

/// Handshakes with the server and returns its leaf certificate and the negotiated ALPN.
async fn server_leaf(ts: &TestServer, roots: &[Vec<u8>]) -> (Vec<u8>, Option<Vec<u8>>) {
    let mut cfg = rustls::ClientConfig::builder_with_provider(ward_server::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier::new(roots)))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
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
