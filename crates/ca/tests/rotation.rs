#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! The rotation schedule driven over simulated days with a manual clock, with real keys and
//! CA certificates.

use std::time::{Duration, SystemTime};

use ward_ca::rotation::{PRUNE_AFTER_EXPIRY, activate_threshold, plan, prepare_threshold};
use ward_ca::{
    AuthorityInfo, AuthorityKind, DiskKeyManager, JwtSigner, KeyFileFormat, KeyManager, KeyType,
    RotationAction, RotationState, SlotId, SlotState, X509Ca, new_key_id,
};
use ward_core::{Clock, TrustDomain};
use ward_testkit::ManualClock;

const HOUR: i64 = 3600;

fn unix(t: SystemTime) -> i64 {
    ward_core::clock::unix_seconds(t)
}

/// A minimal CA manager: executes planned actions with real keys and certificates.
struct Driver {
    keys: DiskKeyManager,
    state: RotationState,
    ttl: Duration,
    active_x509: Option<X509Ca>,
    prepared_x509: Option<X509Ca>,
    active_jwt: Option<JwtSigner>,
    prepared_jwt: Option<JwtSigner>,
    bundle_cas: Vec<String>,
    log: Vec<(i64, RotationAction)>,
}

impl Driver {
    fn tick(&mut self, now: SystemTime, start: i64) {
        for action in plan(now, &self.state) {
            self.log.push((unix(now) - start, action.clone()));
            match action {
                RotationAction::Prepare { kind: AuthorityKind::X509, slot } => {
                    let key = self
                        .keys
                        .generate_key(AuthorityKind::X509.key_id(slot), KeyType::EcP256)
                        .unwrap();
                    let td = TrustDomain::new("example.org").unwrap();
                    let ca = X509Ca::self_signed(key, &td, self.ttl, now).unwrap();
                    self.bundle_cas.push(ca.authority_id());
                    self.state.x509.set_next(AuthorityInfo {
                        slot,
                        id: ca.authority_id(),
                        not_before: unix(ca.not_before()),
                        not_after: ca.not_after_unix(),
                    });
                    self.prepared_x509 = Some(ca);
                }
                RotationAction::Prepare { kind: AuthorityKind::Jwt, slot } => {
                    let key = self
                        .keys
                        .generate_key(AuthorityKind::Jwt.key_id(slot), KeyType::EcP256)
                        .unwrap();
                    let exp = unix(now) + self.ttl.as_secs() as i64;
                    let signer = JwtSigner::new(key, new_key_id().unwrap(), exp).unwrap();
                    self.state.jwt.set_next(AuthorityInfo {
                        slot,
                        id: signer.key_id().to_owned(),
                        not_before: unix(now),
                        not_after: exp,
                    });
                    self.prepared_jwt = Some(signer);
                }
                RotationAction::Activate { kind: AuthorityKind::X509 } => {
                    self.active_x509 = self.prepared_x509.take();
                    self.state.x509.activate();
                }
                RotationAction::Activate { kind: AuthorityKind::Jwt } => {
                    self.active_jwt = self.prepared_jwt.take();
                    self.state.jwt.activate();
                }
                RotationAction::Prune { kind, id } => {
                    if kind == AuthorityKind::X509 {
                        self.bundle_cas.retain(|c| *c != id);
                    }
                    self.state.slots_mut(kind).prune(&id);
                }
            }
        }
    }
}

#[test]
fn a_24h_ca_rotates_like_spire_over_three_days() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = ManualClock::default();
    let start = clock.unix_seconds();
    let mut d = Driver {
        keys: DiskKeyManager::new(tmp.path(), KeyFileFormat::Pem).unwrap(),
        state: RotationState::default(),
        ttl: Duration::from_secs(24 * 3600),
        active_x509: None,
        prepared_x509: None,
        active_jwt: None,
        prepared_jwt: None,
        bundle_cas: vec![],
        log: vec![],
    };
    let mut first_ca = None;
    while clock.unix_seconds() - start <= 72 * HOUR {
        d.tick(clock.now(), start);
        if first_ca.is_none() {
            first_ca = d.active_x509.as_ref().map(|c| c.authority_id());
        }
        // Invariant: there is always an unexpired active CA and JWT key.
        let now = clock.unix_seconds();
        assert!(d.active_x509.as_ref().unwrap().not_after_unix() > now);
        assert!(d.active_jwt.as_ref().unwrap().expires_at() > now);
        clock.advance(Duration::from_secs(60));
    }
    let x509: Vec<(i64, RotationAction)> = d
        .log
        .iter()
        .filter(|(_, a)| match a {
            RotationAction::Prepare { kind, .. }
            | RotationAction::Activate { kind }
            | RotationAction::Prune { kind, .. } => *kind == AuthorityKind::X509,
        })
        .cloned()
        .collect();
    let first = first_ca.unwrap();
    use AuthorityKind::X509;
    use RotationAction::{Activate, Prepare, Prune};
    // The CA's lifetime is 24 h + 10 s of backdating, so thresholds land on the minute.
    assert_eq!(
        x509,
        vec![
            (0, Prepare { kind: X509, slot: SlotId::A }),
            (0, Activate { kind: X509 }),
            (12 * HOUR, Prepare { kind: X509, slot: SlotId::B }),
            (20 * HOUR, Activate { kind: X509 }),
            (24 * HOUR, Prepare { kind: X509, slot: SlotId::A }),
            (32 * HOUR, Activate { kind: X509 }),
            (36 * HOUR, Prepare { kind: X509, slot: SlotId::B }),
            (44 * HOUR, Activate { kind: X509 }),
            (48 * HOUR, Prepare { kind: X509, slot: SlotId::A }),
            (48 * HOUR, Prune { kind: X509, id: first }),
            (56 * HOUR, Activate { kind: X509 }),
            (60 * HOUR, Prepare { kind: X509, slot: SlotId::B }),
            (60 * HOUR, Prune { kind: X509, id: x509_id_pruned_at(&d.log, 60 * HOUR) }),
            (68 * HOUR, Activate { kind: X509 }),
            (72 * HOUR, Prepare { kind: X509, slot: SlotId::A }),
            (72 * HOUR, Prune { kind: X509, id: x509_id_pruned_at(&d.log, 72 * HOUR) }),
        ]
    );
    // The JWT key has a lifetime of exactly 24 h and the thresholds are strict ("remaining <
    // L/2"), so with a 60 s tick each preparation lands one tick after the half-life.
    let jwt_times: Vec<i64> = d
        .log
        .iter()
        .filter(|(_, a)| matches!(a, RotationAction::Prepare { kind: AuthorityKind::Jwt, .. }))
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(jwt_times[..4], [0, 12 * HOUR + 60, 24 * HOUR + 120, 36 * HOUR + 180]);
    // Keys of both slots are on disk.
    for id in ["x509-CA-A", "x509-CA-B", "JWT-Signer-A", "JWT-Signer-B"] {
        assert!(d.keys.get_key(id).unwrap().is_some(), "{id}");
    }
    // The bundle holds exactly the CAs the schedule still tracks: current, next, old.
    let mut tracked: Vec<String> = d.state.x509.old.iter().map(|a| a.id.clone()).collect();
    tracked.extend(d.state.x509.current.iter().map(|a| a.id.clone()));
    tracked.extend(d.state.x509.next.iter().map(|a| a.id.clone()));
    tracked.sort();
    let mut bundle = d.bundle_cas.clone();
    bundle.sort();
    assert_eq!(bundle, tracked);
    assert_eq!(bundle.len(), 4, "current, next and two old CAs not yet 24 h past expiry");
}

fn x509_id_pruned_at(log: &[(i64, RotationAction)], at: i64) -> String {
    log.iter()
        .find_map(|(t, a)| match a {
            RotationAction::Prune { kind: AuthorityKind::X509, id } if *t == at => Some(id.clone()),
            _ => None,
        })
        .unwrap()
}

fn info(slot: SlotId, id: &str, nb: i64, na: i64) -> AuthorityInfo {
    AuthorityInfo { slot, id: id.to_owned(), not_before: nb, not_after: na }
}

fn at(secs: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
}

#[test]
fn plan_edge_cases() {
    use AuthorityKind::{Jwt, X509};
    use RotationAction::{Activate, Prepare, Prune};
    // Nothing yet: prepare slot A and activate, for both kinds.
    assert_eq!(
        plan(at(1000), &RotationState::default()),
        vec![
            Prepare { kind: X509, slot: SlotId::A },
            Activate { kind: X509 },
            Prepare { kind: Jwt, slot: SlotId::A },
            Activate { kind: Jwt },
        ]
    );
    // Current expired while the server was down, next still valid: activate it.
    let s = SlotState {
        current: Some(info(SlotId::A, "a", 0, 100)),
        next: Some(info(SlotId::B, "b", 50, 500)),
        old: vec![],
    };
    let state = RotationState { x509: s.clone(), jwt: s };
    assert_eq!(plan(at(200), &state), vec![Activate { kind: X509 }, Activate { kind: Jwt }]);
    // Both expired: re-prepare the next slot and activate.
    assert_eq!(
        plan(at(600), &state)[..2],
        [Prepare { kind: X509, slot: SlotId::B }, Activate { kind: X509 }]
    );
    // Past the activate threshold without a next (missed the prepare): prepare then activate.
    let s = SlotState { current: Some(info(SlotId::B, "b", 0, 600)), next: None, old: vec![] };
    let state = RotationState { x509: s, jwt: SlotState::default() };
    assert_eq!(
        plan(at(550), &state)[..2],
        [Prepare { kind: X509, slot: SlotId::A }, Activate { kind: X509 }]
    );
    // Old authorities are pruned exactly 24 h after expiry.
    let prune_after = PRUNE_AFTER_EXPIRY.as_secs() as i64;
    let s = SlotState {
        current: Some(info(SlotId::A, "cur", 0, 10 * prune_after)),
        next: None,
        old: vec![info(SlotId::B, "old", 0, 100)],
    };
    let state = RotationState { x509: s, jwt: SlotState::default() };
    assert!(
        !plan(at(100 + prune_after - 1), &state).contains(&Prune { kind: X509, id: "old".into() })
    );
    assert!(plan(at(100 + prune_after), &state).contains(&Prune { kind: X509, id: "old".into() }));
}

#[test]
fn long_lived_cas_use_the_30_and_7_day_caps() {
    let day = 86_400;
    assert_eq!(prepare_threshold(24 * HOUR), 12 * HOUR);
    assert_eq!(activate_threshold(24 * HOUR), 4 * HOUR);
    assert_eq!(prepare_threshold(365 * day), 30 * day);
    assert_eq!(activate_threshold(365 * day), 7 * day);
    let s =
        SlotState { current: Some(info(SlotId::A, "a", 0, 365 * day)), next: None, old: vec![] };
    let state = RotationState { x509: s.clone(), jwt: s };
    assert!(plan(at(335 * day), &state).is_empty());
    assert_eq!(
        plan(at(335 * day + 1), &state),
        vec![
            RotationAction::Prepare { kind: AuthorityKind::X509, slot: SlotId::B },
            RotationAction::Prepare { kind: AuthorityKind::Jwt, slot: SlotId::B },
        ]
    );
    let mut state = state;
    state.x509.next = Some(info(SlotId::B, "b", 335 * day, 700 * day));
    state.jwt.next = state.x509.next.clone();
    assert!(plan(at(358 * day), &state).is_empty());
    assert_eq!(
        plan(at(358 * day + 1), &state),
        vec![
            RotationAction::Activate { kind: AuthorityKind::X509 },
            RotationAction::Activate { kind: AuthorityKind::Jwt },
        ]
    );
}
