#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! Property tests: random command sequences applied to the store and to a brute-force
//! model; every result and every query must agree, through the cache, after reopening and
//! after a snapshot round trip.

mod common;

use common::{Model, all_pages_agents, all_pages_entries, assert_same_state};
use proptest::prelude::*;
use ward_core::{
    AgentId, Bundle, EntryId, JoinToken, RegistrationEntry, Selector, SelectorMatch, SelectorSet,
    SpiffeId, TrustDomain,
};
use ward_store::{
    AgentAttestation, AgentFilter, BundleDeleteMode, Command, EntryFilter, EntryMask, EntryUpdate,
    FederatesWithFilter, SelectorFilter, Store, StoreConfig,
};

const TD: &str = "example.org";

fn td() -> TrustDomain {
    TrustDomain::new(TD).unwrap()
}

fn sid(path: &str) -> SpiffeId {
    td().spiffe_id(path).unwrap()
}

fn agent(i: usize) -> AgentId {
    AgentId(sid(&format!("/spire/agent/t/{i}")))
}

const AGENTS: usize = 4;
const SELECTORS: [&str; 5] = ["u:1", "u:2", "n:g1", "n:g2", "n:h"];
const FEDS: [&str; 2] = ["fed1.org", "fed2.org"];

/// Parents: agents, the server (node aliases), and workload SPIFFE IDs (nesting, cycles).
fn parent(i: usize) -> SpiffeId {
    match i % 8 {
        0..=3 => agent(i % 8).0,
        4 => sid("/spire/server"),
        5 => sid("/a"),
        6 => sid("/b"),
        _ => sid("/a/x"),
    }
}

fn spiffe(i: usize) -> SpiffeId {
    match i % 6 {
        0 => sid("/a"),
        1 => sid("/b"),
        2 => sid("/a/x"),
        3 => sid("/c"),
        4 => sid("/d"),
        // Invalid: other trust domain.
        _ => SpiffeId::parse("spiffe://other.org/z").unwrap(),
    }
}

fn selectors(mask: u8) -> SelectorSet {
    SELECTORS
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, s)| Selector::parse(s).unwrap())
        .collect()
}

fn feds(mask: u8) -> Vec<TrustDomain> {
    FEDS.iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, s)| TrustDomain::new(s).unwrap())
        .collect()
}

fn entry_id(i: usize) -> EntryId {
    EntryId::new(&format!("e{i}")).unwrap()
}

prop_compose! {
    fn arb_entry()(
        id in 0..10usize,
        sp in 0..12usize,
        par in 0..8usize,
        sel in 0u8..32,
        fed in prop_oneof![4 => Just(0u8), 1 => 0u8..4],
        hint in prop_oneof![Just(""), Just("h1")],
        downstream in any::<bool>(),
        expires in prop_oneof![Just(0i64), Just(100), Just(200)],
    ) -> RegistrationEntry {
        RegistrationEntry {
            id: entry_id(id),
            spiffe_id: spiffe(sp),
            parent_id: parent(par),
            selectors: selectors(sel),
            x509_svid_ttl: 0,
            jwt_svid_ttl: 0,
            federates_with: feds(fed),
            admin: false,
            downstream,
            expires_at: expires,
            dns_names: vec![],
            revision_number: 7,
            store_svid: false,
            hint: hint.to_owned(),
            created_at: 1000,
        }
    }
}

fn arb_mask() -> impl Strategy<Value = EntryMask> {
    prop_oneof![
        Just(EntryMask::ALL),
        (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(a, b, c, d)| {
            EntryMask {
                spiffe_id: a,
                parent_id: b,
                selectors: c,
                federates_with: d,
                hint: a,
                downstream: b,
                expires_at: c,
                ..EntryMask::ALL
            }
        }),
    ]
}

fn arb_command() -> impl Strategy<Value = Command> {
    prop_oneof![
        6 => prop::collection::vec(arb_entry(), 1..4).prop_map(Command::CreateEntries),
        3 => prop::collection::vec((arb_entry(), arb_mask()), 1..3).prop_map(|v| {
            Command::UpdateEntries(
                v.into_iter().map(|(entry, mask)| EntryUpdate { entry, mask }).collect(),
            )
        }),
        2 => prop::collection::vec(0..10usize, 1..3)
            .prop_map(|v| Command::DeleteEntries(v.into_iter().map(entry_id).collect())),
        3 => (0..AGENTS + 1, 0u8..32, any::<bool>(), 0i64..3).prop_map(|(a, sel, re, exp)| {
            Command::AttestAgent(AgentAttestation {
                id: agent(a),
                attestation_type: if a % 2 == 0 { "x".into() } else { "y".into() },
                serial: format!("{a}{sel}"),
                expires_at: exp * 100,
                selectors: selectors(sel & 0b11100),
                can_reattest: re,
            })
        }),
        1 => (0..AGENTS + 1).prop_map(|a| Command::BanAgent(agent(a))),
        1 => (0..AGENTS + 1).prop_map(|a| Command::DeleteAgent(agent(a))),
        1 => (0u8..4).prop_map(|m| {
            Command::SetBundles(feds(m).into_iter().map(Bundle::new).collect())
        }),
        1 => (0u8..4, 0..3usize).prop_map(|(m, mode)| Command::DeleteBundles {
            trust_domains: feds(m),
            mode: [BundleDeleteMode::Restrict, BundleDeleteMode::Delete, BundleDeleteMode::Dissociate][mode],
        }),
        1 => (0..3usize, prop::option::of(arb_entry())).prop_map(|(t, entry)| {
            Command::CreateJoinToken {
                token: JoinToken { token: format!("tok{t}"), expires_at: 150 },
                entry,
            }
        }),
        1 => (0..3usize, 0i64..300).prop_map(|(t, now)| Command::ConsumeJoinToken {
            token: format!("tok{t}"),
            now,
        }),
        1 => (0i64..300).prop_map(|t| Command::PruneEntries { expires_before: t }),
        1 => (0i64..300).prop_map(|t| Command::PruneJoinTokens { expires_before: t }),
        1 => (0i64..300, any::<bool>()).prop_map(|(t, inc)| Command::PruneAgents {
            expires_before: t,
            include_non_reattestable: inc,
        }),
    ]
}

fn arb_match() -> impl Strategy<Value = SelectorMatch> {
    prop_oneof![
        Just(SelectorMatch::Exact),
        Just(SelectorMatch::Subset),
        Just(SelectorMatch::Superset),
        Just(SelectorMatch::Any),
    ]
}

fn arb_entry_filter() -> impl Strategy<Value = EntryFilter> {
    (
        prop::option::of(0..5usize),
        prop::option::of(0..8usize),
        prop::option::of((0u8..32, arb_match())),
        prop::option::of((0u8..4, arb_match())),
        prop::option::of(prop_oneof![Just(""), Just("h1")]),
        any::<bool>(),
    )
        .prop_map(|(sp, par, sel, fed, hint, ds)| EntryFilter {
            spiffe_id: sp.map(spiffe),
            parent_id: par.map(parent),
            selectors: sel
                .map(|(m, mode)| SelectorFilter { selectors: selectors(m), match_mode: mode }),
            federates_with: fed
                .map(|(m, mode)| FederatesWithFilter { trust_domains: feds(m), match_mode: mode }),
            hint: hint.map(str::to_owned),
            downstream_only: ds,
        })
}

fn arb_agent_filter() -> impl Strategy<Value = AgentFilter> {
    (
        prop::option::of(prop_oneof![Just("x"), Just("y")]),
        prop::option::of((0u8..32, arb_match())),
        prop::option::of(any::<bool>()),
        prop::option::of(any::<bool>()),
        prop::option::of(0i64..300),
    )
        .prop_map(|(t, sel, banned, re, exp)| AgentFilter {
            attestation_type: t.map(str::to_owned),
            selectors: sel
                .map(|(m, mode)| SelectorFilter { selectors: selectors(m), match_mode: mode }),
            banned,
            can_reattest: re,
            expires_before: exp,
        })
}

fn all_agents() -> Vec<AgentId> {
    (0..=AGENTS).map(agent).collect()
}

fn check_queries(store: &Store, model: &Model, efs: &[EntryFilter], afs: &[AgentFilter]) {
    for f in efs {
        let want = model.list_entries(f);
        for size in [0, 1, 3] {
            assert_eq!(all_pages_entries(store, f, size), want, "ListEntries {f:?} page {size}");
        }
        assert_eq!(store.count_entries(f), want.len(), "CountEntries {f:?}");
    }
    for f in afs {
        let want = model.list_agents(f);
        for size in [0, 2] {
            assert_eq!(all_pages_agents(store, f, size), want, "ListAgents {f:?} page {size}");
        }
        assert_eq!(store.count_agents(f), want.len(), "CountAgents {f:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_model(
        cmds in prop::collection::vec(arb_command(), 1..40),
        efs in prop::collection::vec(arb_entry_filter(), 6),
        afs in prop::collection::vec(arb_agent_filter(), 3),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig::new(td());
        let store = Store::open(dir.path(), config.clone()).unwrap();
        let mut model = Model::new(td());
        for (i, cmd) in cmds.iter().enumerate() {
            let want = model.apply(cmd);
            let got = store.apply(i as u64 + 1, cmd).unwrap();
            prop_assert_eq!(&got.outcome, &want, "command {} {:?}", i, cmd);
            prop_assert_eq!(got.index, i as u64 + 1);
            // Cached and uncached answers after every command catch missed invalidations.
            assert_same_state(&store, &model, &all_agents());
        }
        check_queries(&store, &model, &efs, &afs);

        // Reopen: the in-memory image rebuilt from sled answers the same.
        drop(store);
        let store = Store::open(dir.path(), config.clone()).unwrap();
        prop_assert_eq!(store.last_applied(), cmds.len() as u64);
        assert_same_state(&store, &model, &all_agents());
        check_queries(&store, &model, &efs, &afs);

        // Snapshot round trip into an empty store, in small chunks.
        let snap = store.export_snapshot(64).unwrap();
        let dir2 = tempfile::tempdir().unwrap();
        let other = Store::open(dir2.path(), config).unwrap();
        let info = other.import_snapshot(snap.chunks).unwrap();
        prop_assert_eq!(info, snap.info);
        prop_assert_eq!(other.last_applied(), cmds.len() as u64);
        assert_same_state(&other, &model, &all_agents());
        check_queries(&other, &model, &efs, &afs);
    }
}
