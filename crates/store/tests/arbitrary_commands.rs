#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! Apply never panics, wraps or fails on any command: arbitrary commands built from extreme
//! values (numbers at their limits, empty and 70 KB strings, ids at their length limits,
//! names of other trust domains), and the same commands with their encoded bytes damaged
//! and decoded again, are applied to two stores. Every apply must succeed (a refused item
//! is an answer, not a failure), the state must keep its invariants, and both stores must
//! end byte-for-byte equal, as replicas applying one log must.

use proptest::prelude::*;
use ward_core::{
    AgentId, Bundle, BundleEndpointProfile, EntryId, EntryPatch, FederationRelationship,
    JoinTokenHash, JwtAuthority, RegistrationEntry, Selector, SelectorSet, SpiffeId,
    StoredJoinToken, TrustDomain, X509Authority,
};
use ward_store::{
    AgentAttestation, AgentFilter, BundleDeleteMode, BundleMask, BundleUpdate, Command,
    EntryFilter, EntryUpdate, FederationMask, FederationUpdate, PageRequest, Store, StoreConfig,
};

const I64S: [i64; 7] = [i64::MIN, -1, 0, 1, 1_700_000_000, i64::MAX - 1, i64::MAX];
const I32S: [i32; 5] = [i32::MIN, -1, 0, 1, i32::MAX];
const U64S: [u64; 5] = [0, 1, 2, u64::MAX - 1, u64::MAX];

fn td() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

fn long(n: usize) -> String {
    "x".repeat(n)
}

fn strings() -> Vec<String> {
    vec![String::new(), "a".into(), long(70_000), "ü:ñ/…\u{0}".into(), "a:b:c".into()]
}

fn arb_string() -> impl Strategy<Value = String> {
    prop::sample::select(strings())
}

fn arb_i64() -> impl Strategy<Value = i64> {
    prop_oneof![3 => prop::sample::select(I64S.to_vec()), 1 => any::<i64>()]
}

fn arb_u64() -> impl Strategy<Value = u64> {
    prop_oneof![3 => prop::sample::select(U64S.to_vec()), 1 => any::<u64>()]
}

fn arb_i32() -> impl Strategy<Value = i32> {
    prop::sample::select(I32S.to_vec())
}

fn arb_td() -> impl Strategy<Value = TrustDomain> {
    prop::sample::select(vec!["example.org", "fed.org", "other.org", "a.b.c.d.e"])
        .prop_map(|s| TrustDomain::new(s).unwrap())
}

/// Valid SPIFFE IDs of every role: the trust domain itself, the server, agents, workloads,
/// a long path, and another trust domain.
fn arb_spiffe() -> impl Strategy<Value = SpiffeId> {
    let long_path = format!("spiffe://example.org/{}", "p/".repeat(900) + "q");
    let ids = vec![
        "spiffe://example.org".to_owned(),
        "spiffe://example.org/spire/server".to_owned(),
        "spiffe://example.org/spire/agent/x/1".to_owned(),
        "spiffe://example.org/spire/agent/x/2".to_owned(),
        "spiffe://example.org/w".to_owned(),
        "spiffe://example.org/w/child".to_owned(),
        long_path,
        "spiffe://other.org/z".to_owned(),
    ];
    prop::sample::select(ids).prop_map(|s| SpiffeId::parse(&s).unwrap())
}

fn arb_agent() -> impl Strategy<Value = AgentId> {
    arb_spiffe().prop_map(AgentId)
}

fn arb_entry_id() -> impl Strategy<Value = EntryId> {
    prop::sample::select(vec!["e1".to_owned(), "e2".to_owned(), "E.3_x-y".to_owned(), long(255)])
        .prop_map(|s| EntryId::new(&s).unwrap())
}

fn arb_selectors() -> impl Strategy<Value = SelectorSet> {
    let pool = vec![
        ("unix", "uid:0".to_owned()),
        ("k8s", "ns:prod".to_owned()),
        ("n", "g1".to_owned()),
        ("x", long(70_000)),
        ("ü", "ñ".to_owned()),
    ];
    prop::collection::vec(prop::sample::select(pool), 0..4)
        .prop_map(|v| v.into_iter().map(|(t, val)| Selector::new(t, &val).unwrap()).collect())
}

fn arb_entry() -> impl Strategy<Value = RegistrationEntry> {
    (
        (arb_entry_id(), arb_spiffe(), arb_spiffe(), arb_selectors()),
        (arb_i32(), arb_i32(), prop::collection::vec(arb_td(), 0..3), any::<bool>()),
        (arb_i64(), prop::collection::vec(arb_string(), 0..2), arb_i64(), arb_string()),
        (any::<bool>(), arb_i64()),
    )
        .prop_map(
            |(
                (id, spiffe_id, parent_id, selectors),
                (x509_svid_ttl, jwt_svid_ttl, federates_with, admin),
                (expires_at, dns_names, revision_number, hint),
                (store_svid, created_at),
            )| RegistrationEntry {
                id,
                spiffe_id,
                parent_id,
                selectors,
                x509_svid_ttl,
                jwt_svid_ttl,
                federates_with,
                admin,
                downstream: !admin,
                expires_at,
                dns_names,
                revision_number,
                store_svid,
                hint,
                created_at,
            },
        )
}

fn arb_patch() -> impl Strategy<Value = EntryPatch> {
    (arb_entry(), any::<u16>()).prop_map(|(e, mask)| {
        let all = EntryPatch::all_of(&e);
        let on = |bit: u16| mask & (1 << bit) != 0;
        EntryPatch {
            spiffe_id: all.spiffe_id.filter(|_| on(0)),
            parent_id: all.parent_id.filter(|_| on(1)),
            selectors: all.selectors.filter(|_| on(2)),
            x509_svid_ttl: all.x509_svid_ttl.filter(|_| on(3)),
            jwt_svid_ttl: all.jwt_svid_ttl.filter(|_| on(4)),
            federates_with: all.federates_with.filter(|_| on(5)),
            admin: all.admin.filter(|_| on(6)),
            downstream: all.downstream.filter(|_| on(7)),
            expires_at: all.expires_at.filter(|_| on(8)),
            dns_names: all.dns_names.filter(|_| on(9)),
            store_svid: all.store_svid.filter(|_| on(10)),
            hint: all.hint.filter(|_| on(11)),
        }
    })
}

fn arb_der() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(vec![vec![], vec![1], vec![2, 2], vec![0xFF; 5000]])
}

fn arb_bundle() -> impl Strategy<Value = Bundle> {
    (
        arb_td(),
        prop::collection::vec((arb_der(), any::<bool>()), 0..3),
        prop::collection::vec((arb_der(), arb_string(), arb_i64(), any::<bool>()), 0..3),
        arb_i64(),
        arb_u64(),
    )
        .prop_map(|(trust_domain, x509, jwt, refresh_hint, sequence_number)| Bundle {
            trust_domain,
            x509_authorities: x509
                .into_iter()
                .map(|(der, tainted)| X509Authority { der, tainted })
                .collect(),
            jwt_authorities: jwt
                .into_iter()
                .map(|(public_key_der, key_id, expires_at, tainted)| JwtAuthority {
                    public_key_der,
                    key_id,
                    expires_at,
                    tainted,
                })
                .collect(),
            refresh_hint,
            sequence_number,
        })
}

fn arb_federation() -> impl Strategy<Value = FederationRelationship> {
    (arb_td(), arb_string(), any::<bool>(), arb_spiffe(), prop::option::of(arb_bundle())).prop_map(
        |(trust_domain, url, spiffe, endpoint_spiffe_id, trust_domain_bundle)| {
            FederationRelationship {
                trust_domain,
                bundle_endpoint_url: url,
                profile: if spiffe {
                    BundleEndpointProfile::HttpsSpiffe { endpoint_spiffe_id }
                } else {
                    BundleEndpointProfile::HttpsWeb
                },
                trust_domain_bundle,
            }
        },
    )
}

fn arb_hash() -> impl Strategy<Value = JoinTokenHash> {
    prop::sample::select(vec!["t1", "t2", ""]).prop_map(JoinTokenHash::of)
}

fn arb_bundle_mask() -> impl Strategy<Value = BundleMask> {
    any::<[bool; 4]>().prop_map(|[x, j, h, s]| BundleMask {
        x509_authorities: x,
        jwt_authorities: j,
        refresh_hint: h,
        sequence_number: s,
    })
}

fn arb_command() -> impl Strategy<Value = Command> {
    let tds = || prop::collection::vec(arb_td(), 0..3);
    prop_oneof![
        prop::collection::vec(arb_entry(), 0..3).prop_map(Command::CreateEntries),
        prop::collection::vec((arb_entry_id(), arb_patch()), 0..3).prop_map(|v| {
            Command::UpdateEntries(
                v.into_iter().map(|(id, patch)| EntryUpdate { id, patch }).collect(),
            )
        }),
        prop::collection::vec(arb_entry_id(), 0..3).prop_map(Command::DeleteEntries),
        (arb_hash(), arb_i64(), prop::option::of(arb_entry())).prop_map(
            |(hash, expires_at, entry)| Command::CreateJoinToken {
                token: StoredJoinToken { hash, expires_at },
                entry,
            }
        ),
        (arb_hash(), arb_i64()).prop_map(|(hash, now)| Command::ConsumeJoinToken { hash, now }),
        (arb_agent(), arb_string(), arb_string(), arb_i64(), arb_selectors(), any::<bool>())
            .prop_map(|(id, attestation_type, serial, expires_at, selectors, can_reattest)| {
                Command::AttestAgent(AgentAttestation {
                    id,
                    attestation_type,
                    serial,
                    expires_at,
                    selectors,
                    can_reattest,
                })
            }),
        (arb_agent(), arb_string(), arb_string(), arb_i64(), arb_selectors()).prop_map(
            |(id, attestation_type, serial, expires_at, selectors)| {
                Command::AttestAgentFirstUse(AgentAttestation {
                    id,
                    attestation_type,
                    serial,
                    expires_at,
                    selectors,
                    can_reattest: false,
                })
            }
        ),
        (arb_agent(), arb_string(), arb_i64()).prop_map(|(id, new_serial, new_expires_at)| {
            Command::RenewAgent { id, new_serial, new_expires_at }
        }),
        (arb_agent(), arb_string())
            .prop_map(|(id, serial)| Command::ActivateAgentSerial { id, serial }),
        arb_agent().prop_map(Command::BanAgent),
        arb_agent().prop_map(Command::DeleteAgent),
        prop::collection::vec(arb_bundle(), 0..3).prop_map(Command::SetBundles),
        prop::collection::vec(arb_bundle(), 0..3).prop_map(Command::CreateBundles),
        prop::collection::vec((arb_bundle(), arb_bundle_mask()), 0..3).prop_map(|v| {
            Command::UpdateBundles(
                v.into_iter().map(|(bundle, mask)| BundleUpdate { bundle, mask }).collect(),
            )
        }),
        arb_bundle().prop_map(|b| Command::AppendBundle {
            trust_domain: b.trust_domain,
            x509_authorities: b.x509_authorities,
            jwt_authorities: b.jwt_authorities,
        }),
        (tds(), 0..3u8).prop_map(|(trust_domains, m)| Command::DeleteBundles {
            trust_domains,
            mode: [
                BundleDeleteMode::Restrict,
                BundleDeleteMode::Delete,
                BundleDeleteMode::Dissociate
            ][usize::from(m)],
        }),
        (arb_td(), arb_der())
            .prop_map(|(trust_domain, der)| Command::TaintX509Authority { trust_domain, der }),
        (arb_td(), arb_der())
            .prop_map(|(trust_domain, der)| Command::RevokeX509Authority { trust_domain, der }),
        (arb_td(), arb_string()).prop_map(|(trust_domain, key_id)| {
            Command::TaintJwtAuthority { trust_domain, key_id }
        }),
        (arb_td(), arb_string()).prop_map(|(trust_domain, key_id)| {
            Command::RevokeJwtAuthority { trust_domain, key_id }
        }),
        (
            arb_td(),
            prop::collection::vec(arb_der(), 0..3),
            prop::collection::vec(arb_string(), 0..3)
        )
            .prop_map(|(trust_domain, x509_ders, jwt_key_ids)| {
                Command::PruneBundleAuthorities { trust_domain, x509_ders, jwt_key_ids }
            }),
        prop::collection::vec(arb_federation(), 0..3)
            .prop_map(Command::CreateFederationRelationships),
        prop::collection::vec((arb_federation(), any::<[bool; 3]>()), 0..3).prop_map(|v| {
            Command::UpdateFederationRelationships(
                v.into_iter()
                    .map(|(relationship, [u, p, b])| FederationUpdate {
                        relationship,
                        mask: FederationMask {
                            bundle_endpoint_url: u,
                            profile: p,
                            trust_domain_bundle: b,
                        },
                    })
                    .collect(),
            )
        }),
        tds().prop_map(Command::DeleteFederationRelationships),
        arb_i64().prop_map(|expires_before| Command::PruneEntries { expires_before }),
        arb_i64().prop_map(|expires_before| Command::PruneJoinTokens { expires_before }),
        (arb_i64(), any::<bool>()).prop_map(|(expires_before, include_non_reattestable)| {
            Command::PruneAgents { expires_before, include_non_reattestable }
        }),
    ]
}

/// A command, and byte positions and values to damage its encoding with.
fn arb_step() -> impl Strategy<Value = (Command, Vec<(prop::sample::Index, u8)>)> {
    (arb_command(), prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3))
}

/// Checks what must hold after every apply.
fn check_invariants(store: &Store) {
    let entries = store.list_entries(&EntryFilter::default(), &PageRequest::all()).items;
    assert_eq!(entries.len(), store.entry_count());
    assert_eq!(entries.len(), store.count_entries(&EntryFilter::default()));
    for w in entries.windows(2) {
        assert!(w[0].id < w[1].id, "entries listed in id order");
    }
    for e in &entries {
        let sels = e.selectors.as_slice();
        assert!(sels.windows(2).all(|w| w[0] < w[1]), "selectors sorted, no duplicates");
        assert!(sels.iter().all(|s| e.selectors.contains(s)));
        assert_eq!(store.entry(&e.id).as_deref(), Some(&**e));
    }
    let agents = store.list_agents(&AgentFilter::default(), &PageRequest::all()).items;
    assert_eq!(agents.len(), store.agent_count());
    for a in &agents {
        // Through the cache and without it: the same answer.
        let cached: Vec<_> = store.authorized_entries(&a.id).iter().map(|e| e.id.clone()).collect();
        let direct: Vec<_> =
            store.authorized_entries_uncached(&a.id).iter().map(|e| e.id.clone()).collect();
        assert_eq!(cached, direct);
    }
    let bundles = store.list_bundles(&PageRequest::all()).items;
    assert_eq!(bundles.len(), store.bundle_count());
}

fn open(dir: &std::path::Path) -> Store {
    Store::open(dir, StoreConfig::new(td())).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn apply_accepts_any_command_and_replicas_agree(
        steps in prop::collection::vec(arb_step(), 1..16)
    ) {
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (open(dir_a.path()), open(dir_b.path()));
        let mut revision = 0;
        for (cmd, damage) in &steps {
            let mut commands = vec![cmd.clone()];
            // The same command damaged on the wire: refused by the decoder or applied.
            let mut bytes = postcard::to_stdvec(cmd).unwrap();
            if !damage.is_empty() {
                for (at, value) in damage {
                    let i = at.index(bytes.len());
                    bytes[i] = *value;
                }
                if let Ok(decoded) = postcard::from_bytes::<Command>(&bytes) {
                    commands.push(decoded);
                }
            }
            for cmd in &commands {
                for s in [&a, &b] {
                    let index = s.last_applied() + 1;
                    let applied = s.apply(index, cmd).unwrap();
                    prop_assert_eq!(applied.index, index);
                    prop_assert!(applied.revision >= revision, "revision went back");
                }
                revision = a.revision();
                check_invariants(&a);
            }
        }
        prop_assert_eq!(a.revision(), b.revision());
        prop_assert_eq!(a.export_snapshot(0).unwrap().chunks, b.export_snapshot(0).unwrap().chunks);
        // What was applied is what is on disk.
        let before = a.export_snapshot(0).unwrap().chunks;
        drop(a);
        let reopened = open(dir_a.path());
        check_invariants(&reopened);
        prop_assert_eq!(reopened.export_snapshot(0).unwrap().chunks, before);
    }
}

/// A bundle whose sequence number is at its limit keeps it through every command that bumps
/// it: nothing panics, nothing wraps to 0.
#[test]
fn sequence_number_at_its_limit_saturates() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let fed = TrustDomain::new("fed.org").unwrap();
    let next = |cmd: Command| store.apply(store.last_applied() + 1, &cmd).unwrap();
    let jwt = |kid: &str| JwtAuthority {
        public_key_der: vec![1],
        key_id: kid.into(),
        expires_at: 0,
        tainted: false,
    };
    let full = Bundle {
        x509_authorities: vec![X509Authority::new(vec![1]), X509Authority::new(vec![2])],
        jwt_authorities: vec![jwt("k1"), jwt("k2")],
        sequence_number: u64::MAX,
        ..Bundle::new(fed.clone())
    };
    let seq = || store.bundle(&fed).unwrap().sequence_number;
    next(Command::SetBundles(vec![full.clone()]));
    assert_eq!(seq(), u64::MAX);
    next(Command::SetBundles(vec![full.clone()]));
    assert_eq!(seq(), u64::MAX, "set");
    let refresh = Bundle { refresh_hint: 60, ..full.clone() };
    let mask = BundleMask {
        x509_authorities: false,
        jwt_authorities: false,
        refresh_hint: true,
        sequence_number: false,
    };
    next(Command::UpdateBundles(vec![BundleUpdate { bundle: refresh, mask }]));
    assert_eq!((seq(), store.bundle(&fed).unwrap().refresh_hint), (u64::MAX, 60), "update");
    let td = fed.clone();
    next(Command::TaintX509Authority { trust_domain: td.clone(), der: vec![1] });
    assert_eq!(seq(), u64::MAX, "taint");
    next(Command::RevokeX509Authority { trust_domain: td.clone(), der: vec![1] });
    assert_eq!(seq(), u64::MAX, "revoke");
    assert_eq!(store.bundle(&fed).unwrap().x509_authorities.len(), 1);
    next(Command::TaintJwtAuthority { trust_domain: td.clone(), key_id: "k1".into() });
    next(Command::RevokeJwtAuthority { trust_domain: td.clone(), key_id: "k1".into() });
    assert_eq!(seq(), u64::MAX, "jwt taint and revoke");
    next(Command::AppendBundle {
        trust_domain: td.clone(),
        x509_authorities: vec![X509Authority::new(vec![3])],
        jwt_authorities: vec![],
    });
    assert_eq!(seq(), u64::MAX, "append");
    next(Command::PruneBundleAuthorities {
        trust_domain: td,
        x509_ders: vec![vec![3]],
        jwt_key_ids: vec![],
    });
    assert_eq!(seq(), u64::MAX, "prune");
    assert_eq!(store.bundle(&fed).unwrap().x509_authorities, vec![X509Authority::new(vec![2])]);
}
