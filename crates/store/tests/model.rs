#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! Property tests: random command sequences applied to the store and to a brute-force
//! model; every result and every query must agree, through the cache, after reopening and
//! after a snapshot round trip.

mod common;

use std::collections::BTreeSet;

use common::{ChangeSets, Model, all_pages_agents, all_pages_entries, assert_same_state};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use ward_core::{
    AgentId, Bundle, BundleEndpointProfile, EntryId, EntryPatch, FederationRelationship, JoinToken,
    JoinTokenHash, JwtAuthority, RegistrationEntry, Selector, SelectorMatch, SelectorSet, SpiffeId,
    TrustDomain, X509Authority,
};
use ward_store::{
    AgentAttestation, AgentFilter, BundleDeleteMode, BundleMask, BundleUpdate, Command,
    EntryFilter, EntryUpdate, FederatesWithFilter, FederationMask, FederationUpdate, ItemError,
    Outcome, SelectorFilter, Store, StoreConfig,
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

/// Bundle and federation targets: the own trust domain (federation with it is refused),
/// the two that entries federate with, and one no entry names.
const TDS: [&str; 4] = [TD, "fed1.org", "fed2.org", "fed3.org"];

fn any_td(i: usize) -> TrustDomain {
    TrustDomain::new(TDS[i % TDS.len()]).unwrap()
}

/// X.509 authority DER `i`; index 4 is never put into a bundle (a wrong DER).
fn der(i: usize) -> Vec<u8> {
    vec![0x30, 0x03, i as u8, 0xAA]
}

/// JWT key ID `i`; index 4 is never put into a bundle (a wrong key ID).
fn kid(i: usize) -> String {
    format!("kid{i}")
}

fn arb_x509() -> impl Strategy<Value = X509Authority> {
    (0..4usize, prop::bool::weighted(0.2))
        .prop_map(|(i, tainted)| X509Authority { der: der(i), tainted })
}

/// Expiry 0 means none; the key material differs per expiry, so equal key IDs can carry
/// different keys.
fn arb_jwt() -> impl Strategy<Value = JwtAuthority> {
    (0..4usize, 0i64..3, prop::bool::weighted(0.2)).prop_map(|(i, exp, tainted)| JwtAuthority {
        public_key_der: vec![0x30, i as u8, exp as u8],
        key_id: kid(i),
        expires_at: exp * 100,
        tainted,
    })
}

/// A whole bundle; authorities may repeat (a federated bundle is taken as given).
fn arb_bundle(td: TrustDomain) -> impl Strategy<Value = Bundle> {
    (
        prop::collection::vec(arb_x509(), 0..4),
        prop::collection::vec(arb_jwt(), 0..3),
        0i64..2,
        // u64::MAX: taint, revoke, append and prune must saturate, never wrap.
        prop_oneof![4 => 0u64..4, 1 => Just(u64::MAX)],
    )
        .prop_map(move |(x509_authorities, jwt_authorities, hint, seq)| Bundle {
            trust_domain: td.clone(),
            x509_authorities,
            jwt_authorities,
            refresh_hint: hint * 300,
            sequence_number: seq,
        })
}

fn arb_any_bundle() -> impl Strategy<Value = Bundle> {
    (0..TDS.len()).prop_flat_map(|t| arb_bundle(any_td(t)))
}

/// A relationship: sometimes for the own trust domain, with an empty URL, or carrying a
/// bundle of another trust domain (all refused).
fn arb_federation() -> impl Strategy<Value = FederationRelationship> {
    (0..TDS.len(), 0..4usize, any::<bool>(), 0..6usize).prop_flat_map(|(t, url, spiffe, b)| {
        let td = any_td(t);
        let bundle = match b {
            0..=2 => Just(None).boxed(),
            3 | 4 => arb_bundle(td.clone()).prop_map(Some).boxed(),
            _ => arb_bundle(any_td(t + 1)).prop_map(Some).boxed(),
        };
        bundle.prop_map(move |trust_domain_bundle| FederationRelationship {
            trust_domain: td.clone(),
            bundle_endpoint_url: if url == 0 {
                String::new()
            } else {
                format!("https://{td}:{url}/")
            },
            profile: if spiffe {
                BundleEndpointProfile::HttpsSpiffe {
                    endpoint_spiffe_id: td.spiffe_id("/spire/server").unwrap(),
                }
            } else {
                BundleEndpointProfile::HttpsWeb
            },
            trust_domain_bundle,
        })
    })
}

fn arb_bundle_mask() -> impl Strategy<Value = BundleMask> {
    prop_oneof![
        Just(BundleMask::ALL),
        (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(x, j, h, s)| {
            BundleMask {
                x509_authorities: x,
                jwt_authorities: j,
                refresh_hint: h,
                sequence_number: s,
            }
        }),
    ]
}

fn arb_federation_mask() -> impl Strategy<Value = FederationMask> {
    prop_oneof![
        Just(FederationMask::ALL),
        (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(u, p, b)| FederationMask {
            bundle_endpoint_url: u,
            profile: p,
            trust_domain_bundle: b,
        }),
    ]
}

/// Serials RenewAgent issues; index 3 is the empty (refused) serial.
fn renewed_serial(i: usize) -> String {
    if i == 3 { String::new() } else { format!("9{i}") }
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
            federates_with: feds(fed),
            downstream,
            expires_at: expires,
            revision_number: 7,
            hint: hint.to_owned(),
            created_at: 1000,
            ..RegistrationEntry::new(entry_id(id), spiffe(sp), parent(par), selectors(sel))
        }
    }
}

/// Which fields an update sets: every field (`None`), or the ones the flags pick.
fn arb_fields() -> impl Strategy<Value = Option<[bool; 4]>> {
    prop_oneof![
        Just(None),
        (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>())
            .prop_map(|(a, b, c, d)| Some([a, b, c, d])),
    ]
}

/// The patch that sets `fields` of `e`.
fn patch_of(e: &RegistrationEntry, fields: Option<[bool; 4]>) -> EntryPatch {
    let all = EntryPatch::all_of(e);
    let Some([a, b, c, d]) = fields else { return all };
    EntryPatch {
        spiffe_id: all.spiffe_id.filter(|_| a),
        parent_id: all.parent_id.filter(|_| b),
        selectors: all.selectors.filter(|_| c),
        federates_with: all.federates_with.filter(|_| d),
        hint: all.hint.filter(|_| a),
        downstream: all.downstream.filter(|_| b),
        expires_at: all.expires_at.filter(|_| c),
        ..all
    }
}

fn arb_command() -> impl Strategy<Value = Command> {
    prop_oneof![
        6 => prop::collection::vec(arb_entry(), 1..4).prop_map(Command::CreateEntries),
        3 => prop::collection::vec((arb_entry(), arb_fields()), 1..3).prop_map(|v| {
            Command::UpdateEntries(
                v.into_iter()
                    .map(|(e, fields)| EntryUpdate { id: e.id.clone(), patch: patch_of(&e, fields) })
                    .collect(),
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
        2 => (0..AGENTS + 1).prop_map(|a| Command::BanAgent(agent(a))),
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
                token: JoinToken { token: format!("tok{t}"), expires_at: 150 }.to_stored(),
                entry,
            }
        }),
        1 => (0..3usize, 0i64..300).prop_map(|(t, now)| Command::ConsumeJoinToken {
            hash: JoinTokenHash::of(&format!("tok{t}")),
            now,
        }),
        2 => (0..AGENTS + 1, 0..4usize, 0i64..4).prop_map(|(a, s, exp)| Command::RenewAgent {
            id: agent(a),
            new_serial: renewed_serial(s),
            new_expires_at: exp * 100,
        }),
        2 => (0..AGENTS + 1, 0..4usize).prop_map(|(a, s)| Command::ActivateAgentSerial {
            id: agent(a),
            serial: renewed_serial(s),
        }),
        2 => prop::collection::vec(arb_any_bundle(), 0..3).prop_map(Command::SetBundles),
        2 => prop::collection::vec(arb_any_bundle(), 1..3).prop_map(Command::CreateBundles),
        2 => prop::collection::vec((arb_any_bundle(), arb_bundle_mask()), 1..3).prop_map(|v| {
            Command::UpdateBundles(
                v.into_iter().map(|(bundle, mask)| BundleUpdate { bundle, mask }).collect(),
            )
        }),
        2 => (
            0..TDS.len(),
            prop::collection::vec(arb_x509(), 0..3),
            prop::collection::vec(arb_jwt(), 0..3),
        )
            .prop_map(|(t, x509_authorities, jwt_authorities)| Command::AppendBundle {
                trust_domain: any_td(t),
                x509_authorities,
                jwt_authorities,
            }),
        2 => (0..TDS.len(), 0..5usize).prop_map(|(t, i)| Command::TaintX509Authority {
            trust_domain: any_td(t),
            der: der(i),
        }),
        2 => (0..TDS.len(), 0..5usize).prop_map(|(t, i)| Command::RevokeX509Authority {
            trust_domain: any_td(t),
            der: der(i),
        }),
        2 => (0..TDS.len(), 0..5usize).prop_map(|(t, i)| Command::TaintJwtAuthority {
            trust_domain: any_td(t),
            key_id: kid(i),
        }),
        2 => (0..TDS.len(), 0..5usize).prop_map(|(t, i)| Command::RevokeJwtAuthority {
            trust_domain: any_td(t),
            key_id: kid(i),
        }),
        2 => (
            0..TDS.len(),
            prop::collection::vec(0..5usize, 0..4),
            prop::collection::vec(0..5usize, 0..3),
        )
            .prop_map(|(t, x, j)| Command::PruneBundleAuthorities {
                trust_domain: any_td(t),
                x509_ders: x.into_iter().map(der).collect(),
                jwt_key_ids: j.into_iter().map(kid).collect(),
            }),
        2 => prop::collection::vec(arb_federation(), 1..3)
            .prop_map(Command::CreateFederationRelationships),
        2 => prop::collection::vec((arb_federation(), arb_federation_mask()), 1..3).prop_map(|v| {
            Command::UpdateFederationRelationships(
                v.into_iter()
                    .map(|(relationship, mask)| FederationUpdate { relationship, mask })
                    .collect(),
            )
        }),
        1 => prop::collection::vec(0..TDS.len(), 0..3).prop_map(|v| {
            Command::DeleteFederationRelationships(v.into_iter().map(any_td).collect())
        }),
        1 => (0i64..300).prop_map(|t| Command::PruneEntries { expires_before: t }),
        1 => (0i64..300).prop_map(|t| Command::PruneJoinTokens { expires_before: t }),
        1 => (0i64..300, any::<bool>()).prop_map(|(t, inc)| Command::PruneAgents {
            expires_before: t,
            include_non_reattestable: inc,
        }),
        1 => (0..AGENTS + 1, 0u8..32).prop_map(|(a, sel)| {
            Command::AttestAgentFirstUse(AgentAttestation {
                id: agent(a),
                attestation_type: "tofu".into(),
                serial: format!("t{a}{sel}"),
                expires_at: 100,
                selectors: selectors(sel & 0b11100),
                can_reattest: false,
            })
        }),
    ]
}

/// One step of a run: a generated command, or a command read off the current state the way
/// the CA manager builds one.
#[derive(Clone, Debug)]
enum Step {
    Run(Box<Command>),
    /// Prune the authorities of `TDS[td]`'s bundle that expired before `before`.
    PruneExpired {
        td: usize,
        before: i64,
    },
}

/// The test DERs' NotAfter: `der(i)` expires at `i * 100`.
fn x509_not_after(der: &[u8]) -> i64 {
    i64::from(der[2]) * 100
}

impl Step {
    fn command(&self, model: &Model) -> Command {
        match self {
            Step::Run(cmd) => Command::clone(cmd),
            Step::PruneExpired { td, before } => {
                let td = any_td(*td);
                let (x509_ders, jwt_key_ids) = model.bundles.get(&td).map_or_else(
                    || (vec![der(0)], vec![]),
                    |b| {
                        let x = b.x509_authorities.iter().map(|a| &a.der);
                        let j = b.jwt_authorities.iter();
                        (
                            x.filter(|d| x509_not_after(d) < *before).cloned().collect(),
                            j.filter(|a| a.expires_at != 0 && a.expires_at < *before)
                                .map(|a| a.key_id.clone())
                                .collect(),
                        )
                    },
                );
                Command::PruneBundleAuthorities { trust_domain: td, x509_ders, jwt_key_ids }
            }
        }
    }
}

fn arb_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        30 => arb_command().prop_map(|c| Step::Run(Box::new(c))),
        2 => (0..TDS.len(), 0i64..5).prop_map(|(td, b)| Step::PruneExpired { td, before: b * 100 }),
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

/// Every [`Command`] variant, by name: the generator must produce each of them.
const VARIANTS: usize = 27;

fn variant(cmd: &Command) -> usize {
    match cmd {
        Command::CreateEntries(_) => 0,
        Command::UpdateEntries(_) => 1,
        Command::DeleteEntries(_) => 2,
        Command::CreateJoinToken { .. } => 3,
        Command::ConsumeJoinToken { .. } => 4,
        Command::AttestAgent(_) => 5,
        Command::RenewAgent { .. } => 6,
        Command::ActivateAgentSerial { .. } => 7,
        Command::BanAgent(_) => 8,
        Command::DeleteAgent(_) => 9,
        Command::SetBundles(_) => 10,
        Command::AppendBundle { .. } => 11,
        Command::DeleteBundles { .. } => 12,
        Command::TaintX509Authority { .. } => 13,
        Command::RevokeX509Authority { .. } => 14,
        Command::TaintJwtAuthority { .. } => 15,
        Command::RevokeJwtAuthority { .. } => 16,
        Command::PruneBundleAuthorities { .. } => 17,
        Command::CreateFederationRelationships(_) => 18,
        Command::UpdateFederationRelationships(_) => 19,
        Command::DeleteFederationRelationships(_) => 20,
        Command::PruneEntries { .. } => 21,
        Command::PruneJoinTokens { .. } => 22,
        Command::PruneAgents { .. } => 23,
        Command::CreateBundles(_) => 24,
        Command::UpdateBundles(_) => 25,
        Command::AttestAgentFirstUse(_) => 26,
    }
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

/// A per-item result as a label: `ok`, or the error variant's name.
fn label<T>(r: &Result<T, ItemError>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => format!("{e:?}").split(['(', ' ']).next().unwrap().to_owned(),
    }
}

fn labels(out: &Outcome) -> Vec<String> {
    match out {
        Outcome::Entries(v) => v.iter().map(label).collect(),
        Outcome::DeletedEntries(v) => v.iter().map(label).collect(),
        Outcome::JoinTokenCreated(r) => vec![label(r)],
        Outcome::JoinTokenConsumed(r) => vec![label(r)],
        Outcome::Agent(r) => vec![label(r)],
        Outcome::Bundles(v) => v.iter().map(label).collect(),
        Outcome::Federations(v) => v.iter().map(label).collect(),
        Outcome::Pruned(n) => vec![if *n == 0 { "none".into() } else { "some".into() }],
    }
}

/// The generator is only as good as what it reaches: every command, and for the bundle,
/// agent-serial and federation commands every result they can give, shows up in the model
/// runs of a fixed seed.
#[test]
fn generator_reaches_every_command_and_result() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = prop::collection::vec(arb_step(), 40);
    let mut seen: BTreeSet<(usize, String)> = BTreeSet::new();
    let (mut halted, mut pruned) = (0, 0);
    for _ in 0..300 {
        let steps = strategy.new_tree(&mut runner).unwrap().current();
        let mut model = Model::new(td());
        for step in &steps {
            let cmd = step.command(&model);
            if let Command::PruneBundleAuthorities { trust_domain, x509_ders, jwt_key_ids } = &cmd
                && let Some(b) = model.bundles.get(trust_domain)
            {
                let x = b.x509_authorities.iter().filter(|a| x509_ders.contains(&a.der)).count();
                let j = b.jwt_authorities.iter().filter(|a| jwt_key_ids.contains(&a.key_id));
                let j = j.count();
                if (x > 0 && x == b.x509_authorities.len())
                    || (j > 0 && j == b.jwt_authorities.len())
                {
                    halted += 1;
                } else if x + j > 0 {
                    pruned += 1;
                }
            }
            let out = model.apply(&cmd);
            seen.extend(labels(&out).into_iter().map(|l| (variant(&cmd), l)));
        }
    }
    assert!(halted > 0, "no prune would ever have emptied a bundle");
    assert!(pruned > 0, "no prune ever removed something");
    for v in 0..VARIANTS {
        assert!(seen.iter().any(|(s, _)| *s == v), "variant {v} never generated");
    }
    let want: &[(usize, &[&str])] = &[
        (6, &["ok", "AgentNotFound", "AgentBanned", "Invalid"]),
        (7, &["ok", "AgentNotFound", "AgentBanned", "SerialMismatch"]),
        (10, &["ok"]),
        (11, &["ok"]),
        (13, &["ok", "BundleNotFound", "AuthorityNotFound", "Invalid"]),
        (14, &["ok", "BundleNotFound", "AuthorityNotFound", "AuthorityNotTainted"]),
        (15, &["ok", "BundleNotFound", "AuthorityNotFound", "Invalid"]),
        (16, &["ok", "BundleNotFound", "AuthorityNotFound", "AuthorityNotTainted"]),
        (17, &["ok", "BundleNotFound"]),
        (18, &["ok", "FederationExists", "Invalid"]),
        (19, &["ok", "FederationNotFound", "Invalid"]),
        (20, &["ok", "FederationNotFound"]),
        (24, &["ok", "BundleExists"]),
        (25, &["ok", "BundleNotFound"]),
        (26, &["ok", "AgentAttestedBefore"]),
    ];
    for (v, labels) in want {
        for l in *labels {
            assert!(seen.contains(&(*v, (*l).to_owned())), "variant {v} never gave {l}: {seen:?}");
        }
    }
}

fn model_cases() -> u32 {
    std::env::var("WARD_MODEL_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(128)
}

proptest! {
    // 128 cases by default; `WARD_MODEL_CASES` raises it for longer stress runs.
    #![proptest_config(ProptestConfig { cases: model_cases(), ..ProptestConfig::default() })]

    #[test]
    fn store_matches_model(
        steps in prop::collection::vec(arb_step(), 1..60),
        efs in prop::collection::vec(arb_entry_filter(), 6),
        afs in prop::collection::vec(arb_agent_filter(), 3),
    ) {
        let dir = tempfile::tempdir().unwrap();
        // With 4 agents, a limit of 2 sends commands down both invalidation paths: agents
        // listed one by one, and the whole cache dropped.
        let mut config = StoreConfig::new(td());
        config.cache_invalidate_limit = 2;
        let store = Store::open(dir.path(), config.clone()).unwrap();
        let mut model = Model::new(td());
        for (i, step) in steps.iter().enumerate() {
            let cmd = &step.command(&model);
            let rev = model.revision;
            let want = model.apply(cmd);
            let got = store.apply(i as u64 + 1, cmd).unwrap();
            prop_assert_eq!(&got.outcome, &want, "command {} {:?}", i, cmd);
            prop_assert_eq!(got.index, i as u64 + 1);
            prop_assert_eq!(got.revision, model.revision, "revision after {:?}", cmd);
            if model.revision > rev {
                let feed = store.changes_since(rev, 2).unwrap();
                prop_assert_eq!(feed.len(), 1);
                prop_assert_eq!(feed[0].revision, model.revision);
                prop_assert_eq!(ChangeSets::of(&feed[0]), model.last_change.clone(), "change feed of {:?}", cmd);
            }
            // Cached and uncached answers after every command catch missed invalidations.
            assert_same_state(&store, &model, &all_agents());
        }
        check_queries(&store, &model, &efs, &afs);

        // Reopen: the in-memory image rebuilt from sled answers the same.
        drop(store);
        let store = Store::open(dir.path(), config.clone()).unwrap();
        prop_assert_eq!(store.last_applied(), steps.len() as u64);
        assert_same_state(&store, &model, &all_agents());
        check_queries(&store, &model, &efs, &afs);

        // Snapshot round trip into an empty store, in small chunks.
        let snap = store.export_snapshot(64).unwrap();
        let dir2 = tempfile::tempdir().unwrap();
        let other = Store::open(dir2.path(), config).unwrap();
        let info = other.import_snapshot(snap.chunks).unwrap();
        prop_assert_eq!(info, snap.info);
        prop_assert_eq!(other.last_applied(), steps.len() as u64);
        assert_same_state(&other, &model, &all_agents());
        check_queries(&other, &model, &efs, &afs);
    }
}
