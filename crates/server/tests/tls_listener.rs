//! The TCP listener's TLS: client chains verified by rustls-webpki (with SPIFFE leaf checks on
//! top), and a bound on concurrent handshakes.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::StreamExt;
use ward_core::{Bundle, SpiffeId, TrustDomain, X509Authority};
use ward_server::tls::{
    AuthoritySource, HandshakeLimits, HandshakeStats, RotatingServerCert, SpiffeClientVerifier,
    SpiffeServerVerifier, agent_client_config, incoming, server_config,
};

fn td() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

fn ca_params(not_after_year: i32) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CountryName, "US");
    dn.push(DnType::OrganizationName, "SPIFFE");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.subject_alt_names = vec![SanType::URI("spiffe://example.org".try_into().unwrap())];
    p.not_before = rcgen::date_time_ymd(2019, 1, 1);
    p.not_after = rcgen::date_time_ymd(not_after_year, 1, 1);
    p
}

fn svid_params(path: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    p.extended_key_usages =
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    p.subject_alt_names =
        vec![SanType::URI(format!("spiffe://example.org{path}").as_str().try_into().unwrap())];
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2090, 1, 1);
    p
}

#[derive(Debug)]
struct Fixed(Arc<Bundle>);

impl AuthoritySource for Fixed {
    fn bundle(&self) -> Option<Arc<Bundle>> {
        Some(self.0.clone())
    }
}

fn verifier(authorities: &[&[u8]]) -> SpiffeClientVerifier {
    let mut bundle = Bundle::new(td());
    bundle.x509_authorities = authorities.iter().map(|d| X509Authority::new(d.to_vec())).collect();
    SpiffeClientVerifier::new(td(), Arc::new(Fixed(Arc::new(bundle))))
}

fn now() -> UnixTime {
    UnixTime::now()
}

#[test]
fn an_expired_authority_with_the_same_subject_and_key_does_not_break_a_valid_chain() {
    let key = KeyPair::generate().unwrap();
    let expired = ca_params(2021).self_signed(&key).unwrap().der().to_vec();
    let current_params = ca_params(2090);
    let current = current_params.self_signed(&key).unwrap().der().to_vec();
    let issuer = Issuer::new(current_params, key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = svid_params("/spire/agent/x").signed_by(&leaf_key, &issuer).unwrap().der().to_vec();
    let leaf = CertificateDer::from(leaf);

    // The expired copy comes first in the bundle: a greedy path builder picks it and fails.
    let v = verifier(&[&expired, &current]);
    assert!(v.verify_client_cert(&leaf, &[], now()).is_ok());
    // With only the expired copy there is no current authority.
    let v = verifier(&[&expired]);
    assert!(v.verify_client_cert(&leaf, &[], now()).is_err());
}

#[test]
fn a_chain_with_an_unknown_critical_extension_is_refused() {
    let key = KeyPair::generate().unwrap();
    let ca_params = ca_params(2090);
    let ca = ca_params.self_signed(&key).unwrap().der().to_vec();
    let issuer = Issuer::new(ca_params, key);
    let leaf_key = KeyPair::generate().unwrap();
    let good = svid_params("/w").signed_by(&leaf_key, &issuer).unwrap().der().to_vec();
    let mut params = svid_params("/w");
    let mut ext = CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 99999, 7], vec![5, 0]);
    ext.set_criticality(true);
    params.custom_extensions.push(ext);
    let bad = params.signed_by(&leaf_key, &issuer).unwrap().der().to_vec();

    let v = verifier(&[&ca]);
    assert!(v.verify_client_cert(&CertificateDer::from(good), &[], now()).is_ok());
    assert!(v.verify_client_cert(&CertificateDer::from(bad), &[], now()).is_err());
}

#[test]
fn a_leaf_that_is_not_for_client_authentication_is_refused() {
    let key = KeyPair::generate().unwrap();
    let ca_params = ca_params(2090);
    let ca = ca_params.self_signed(&key).unwrap().der().to_vec();
    let issuer = Issuer::new(ca_params, key);
    let mut params = svid_params("/w");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = params.signed_by(&KeyPair::generate().unwrap(), &issuer).unwrap().der().to_vec();
    assert!(verifier(&[&ca]).verify_client_cert(&CertificateDer::from(leaf), &[], now()).is_err());
}

/// Waits for `cond` with a deadline (no fixed sleeps).
async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn handshakes_beyond_the_limit_wait_for_a_free_slot() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // The server's own certificate: an SVID for the server ID under a throw-away CA.
    let ca_key = KeyPair::generate().unwrap();
    let ca_p = ca_params(2090);
    let ca_der = ca_p.self_signed(&ca_key).unwrap().der().to_vec();
    let ca = Issuer::new(ca_p, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server_der =
        svid_params("/spire/server").signed_by(&server_key, &ca).unwrap().der().to_vec();
    let cert = RotatingServerCert::new(
        RotatingServerCert::certified_key(&[server_der], &server_key.serialize_der()).unwrap(),
    );
    let cfg = server_config(Arc::new(verifier(&[&ca_der])), Arc::new(cert)).unwrap();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = Arc::new(HandshakeStats::default());
    let limits = HandshakeLimits { max_concurrent: 2, timeout: Duration::from_secs(600) };
    let mut conns = incoming(listener, Arc::new(cfg), limits, stats.clone());
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some(c) = conns.next().await {
            held.push(c.unwrap());
            let _ = done_tx.send(());
        }
    });

    tracing::info!("two silent clients take both handshake slots");
    let silent_a = TcpStream::connect(addr).await.unwrap();
    let _silent_b = TcpStream::connect(addr).await.unwrap();
    wait_until("two handshakes in flight", || stats.in_flight() == 2).await;

    tracing::info!("a real client queues behind them until one slot frees");
    let server_id = SpiffeId::from_parts(&td(), "/spire/server").unwrap();
    let client_cfg = Arc::new(
        agent_client_config(
            Arc::new(SpiffeServerVerifier::new(server_id, Some(&[ca_der])).unwrap()),
            None,
        )
        .unwrap(),
    );
    let client = tokio::spawn(async move {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        tokio_rustls::TlsConnector::from(client_cfg).connect(name, tcp).await
    });
    drop(silent_a);
    let tls = client.await.unwrap();
    assert!(tls.is_ok(), "{tls:?}");
    done_rx.recv().await.unwrap();
    // Never more than two handshakes ran at once, although three clients were connected.
    assert_eq!(stats.peak(), 2);
}
