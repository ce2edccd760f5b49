//! The CA manager against a real store and key directory: first authorities, preparation and
//! publication of the next ones, activation, and resuming from the journal after a restart.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ward_core::TrustDomain;
use ward_server::ca_manager::{CaManager, CaSettings};
use ward_server::proposer::{LocalProposer, Proposer};
use ward_store::{Store, StoreConfig};

const HOUR: u64 = 3600;

fn settings(dir: &std::path::Path) -> CaSettings {
    CaSettings {
        trust_domain: TrustDomain::new("example.org").unwrap(),
        key_type: ward_ca::KeyType::EcP256,
        ca_ttl: Duration::from_secs(24 * HOUR),
        jwt_issuer: Some("https://issuer.example".into()),
        dir: dir.join("ca"),
    }
}

#[tokio::test]
async fn rotates_publishes_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let td = TrustDomain::new("example.org").unwrap();
    let store = Store::open(dir.path().join("store"), StoreConfig::new(td.clone())).unwrap();
    let proposer: Arc<dyn Proposer> = Arc::new(LocalProposer::new(store.clone()));
    let t0 = SystemTime::now();

    let ca = CaManager::open(settings(dir.path()), proposer.clone()).unwrap();
    assert!(ca.x509_ca().is_err(), "nothing before the first step");
    assert!(ca.tick(t0).await.unwrap(), "first X.509 authority activated");
    let first = ca.x509_ca().unwrap().authority_id();
    let first_kid = ca.jwt_signer_now().unwrap().key_id().to_owned();
    let b = store.bundle(&td).unwrap();
    assert_eq!((b.x509_authorities.len(), b.jwt_authorities.len()), (1, 1));
    assert_eq!(b.jwt_authorities[0].key_id, first_kid);

    // Nothing due an hour later.
    assert!(!ca.tick(t0 + Duration::from_secs(HOUR)).await.unwrap());
    assert_eq!(store.bundle(&td).unwrap().x509_authorities.len(), 1);

    // Past half-life: the next authorities are prepared and published, not yet active.
    assert!(!ca.tick(t0 + Duration::from_secs(13 * HOUR)).await.unwrap());
    let b = store.bundle(&td).unwrap();
    assert_eq!((b.x509_authorities.len(), b.jwt_authorities.len()), (2, 2));
    assert_eq!(ca.x509_ca().unwrap().authority_id(), first);
    let seq_prepared = b.sequence_number;

    // Past 5/6 of the lifetime: activation.
    assert!(ca.tick(t0 + Duration::from_secs(21 * HOUR)).await.unwrap());
    let second = ca.x509_ca().unwrap().authority_id();
    assert_ne!(second, first);
    assert_ne!(ca.jwt_signer_now().unwrap().key_id(), first_kid);
    assert_eq!(
        store.bundle(&td).unwrap().sequence_number,
        seq_prepared,
        "activation publishes nothing new"
    );

    // Keys on disk are private.
    use std::os::unix::fs::PermissionsExt;
    for f in std::fs::read_dir(dir.path().join("ca/keys")).unwrap() {
        let mode = f.unwrap().metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    // A restart resumes with the same active authorities and publishes nothing new.
    drop(ca);
    let again = CaManager::open(settings(dir.path()), proposer).unwrap();
    assert_eq!(again.x509_ca().unwrap().authority_id(), second);
    again.republish().await.unwrap();
    assert_eq!(store.bundle(&td).unwrap().sequence_number, seq_prepared);
    assert!(!again.tick(t0 + Duration::from_secs(21 * HOUR + 60)).await.unwrap());
}
