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

/// After a restart, a JWT authority prepared into the slot of an old one signs with its own
/// key ID: the old authority's journal record must not take over the slot.
#[tokio::test]
async fn jwt_key_prepared_over_an_old_slot_keeps_its_key_id_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let td = TrustDomain::new("example.org").unwrap();
    let store = Store::open(dir.path().join("store"), StoreConfig::new(td.clone())).unwrap();
    let proposer: Arc<dyn Proposer> = Arc::new(LocalProposer::new(store.clone()));
    let t0 = SystemTime::now();
    let at = |h: u64| t0 + Duration::from_secs(h * HOUR);

    let ca = CaManager::open(settings(dir.path()), proposer.clone()).unwrap();
    ca.tick(t0).await.unwrap();
    let k1 = ca.jwt_signer_now().unwrap().key_id().to_owned();
    ca.tick(at(13)).await.unwrap(); // K2 prepared in the other slot
    ca.tick(at(21)).await.unwrap(); // K2 active, K1 old
    let k2 = ca.jwt_signer_now().unwrap().key_id().to_owned();
    ca.tick(at(26)).await.unwrap(); // K3 prepared in K1's slot
    let kids: Vec<String> =
        store.bundle(&td).unwrap().jwt_authorities.iter().map(|k| k.key_id.clone()).collect();
    assert_eq!(kids.len(), 3);
    let k3 = kids.iter().find(|k| **k != k1 && **k != k2).unwrap().clone();

    drop(ca);
    let again = CaManager::open(settings(dir.path()), proposer).unwrap();
    assert_eq!(again.jwt_signer_now().unwrap().key_id(), k2);
    again.tick(at(34)).await.unwrap(); // K3 active
    let signer = again.jwt_signer_now().unwrap();
    assert_eq!(signer.key_id(), k3);
    let published =
        store.bundle(&td).unwrap().jwt_authorities.iter().find(|k| k.key_id == k3).unwrap().clone();
    assert_eq!(signer.public_key_der(), published.public_key_der.as_slice());
}
