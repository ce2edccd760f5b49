//! A failed apply leaves nothing behind: with a fault injected at each record write of a
//! command (after memory already changed), or in the batch write, the store answers exactly
//! as before the command, refuses later applies until reopened, and reopens to the same
//! state. An apply that panics half-way poisons the state lock, and no read goes through it.
#![expect(clippy::arithmetic_side_effects, reason = "small counters in tests")]

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use ward_core::{
    Bundle, BundleEndpointProfile, EntryId, FederationRelationship, JoinToken, RegistrationEntry,
    TrustDomain,
};

use crate::apply::fault::{self, Kind};
use crate::testdata::DataSet;
use crate::{
    BundleDeleteMode, Command, EntryFilter, PageRequest, SnapshotChunk, Store, StoreConfig,
    StoreError,
};

/// Each apply's writes go to the engine at once, so a fault in that write fails the apply
/// it belongs to (`write_behind` below covers the writes that wait).
fn open(dir: &Path) -> Store {
    let config =
        StoreConfig { write_behind_entries: 1, ..StoreConfig::new(DataSet::trust_domain()) };
    Store::open(dir, config).unwrap()
}

fn next(store: &Store, cmd: &Command) -> Result<crate::Applied, StoreError> {
    store.apply(store.last_applied() + 1, cmd)
}

fn fed() -> TrustDomain {
    TrustDomain::new("fed.example").unwrap()
}

/// An entry under agent `i` that federates with `fed.example`.
fn federated(id: &str, i: usize) -> RegistrationEntry {
    RegistrationEntry {
        id: EntryId::new(id).unwrap(),
        federates_with: vec![fed()],
        ..DataSet::workload_entry(i, 900 + i)
    }
}

/// A store with entries, agents, a token, bundles and a federation relationship.
fn loaded(dir: &Path) -> Store {
    let store = open(dir);
    for i in 0..3 {
        next(&store, &Command::AttestAgent(DataSet::agent(i))).unwrap();
        next(
            &store,
            &Command::CreateEntries((0..3).map(|k| DataSet::workload_entry(i, k)).collect()),
        )
        .unwrap();
    }
    next(&store, &Command::SetBundles(vec![Bundle::new(fed())])).unwrap();
    next(&store, &Command::CreateEntries(vec![federated("fz", 0), federated("fa", 1)])).unwrap();
    let token = JoinToken { token: "tok".into(), expires_at: 2_000_000_000 }.to_stored();
    next(&store, &Command::CreateJoinToken { token, entry: None }).unwrap();
    // Fill the cache, so a failed apply that invalidated it would show.
    for i in 0..3 {
        assert_eq!(store.authorized_entries(&DataSet::agent_id(i)).len(), 3 + usize::from(i < 2));
    }
    store
}

/// Commands that each change several records of several kinds.
fn commands() -> Vec<Command> {
    let rel = FederationRelationship {
        trust_domain: TrustDomain::new("other.example").unwrap(),
        bundle_endpoint_url: "https://other.example/bundle".into(),
        profile: BundleEndpointProfile::HttpsWeb,
        trust_domain_bundle: Some(Bundle::new(TrustDomain::new("other.example").unwrap())),
    };
    vec![
        Command::CreateEntries((5..9).map(|k| DataSet::workload_entry(1, k)).collect()),
        Command::DeleteBundles { trust_domains: vec![fed()], mode: BundleDeleteMode::Dissociate },
        Command::DeleteBundles { trust_domains: vec![fed()], mode: BundleDeleteMode::Delete },
        Command::CreateJoinToken {
            token: JoinToken { token: "tok2".into(), expires_at: 1 }.to_stored(),
            entry: Some(DataSet::workload_entry(2, 7)),
        },
        Command::CreateFederationRelationships(vec![rel]),
        Command::AttestAgent(DataSet::agent(7)),
        Command::DeleteEntries(vec![
            DataSet::workload_entry(0, 0).id,
            DataSet::workload_entry(0, 1).id,
        ]),
        Command::PruneJoinTokens { expires_before: i64::MAX },
    ]
}

/// Everything the store answers, as bytes and values: the snapshot (every record of the
/// image and the change feed), and the queries served from the indexes and the cache.
#[derive(Debug, PartialEq)]
struct View {
    snapshot: Vec<SnapshotChunk>,
    applied: u64,
    revision: u64,
    entries: Vec<EntryId>,
    authorized: Vec<Vec<EntryId>>,
    authorized_uncached: Vec<Vec<EntryId>>,
    by_parent: usize,
}

fn view(store: &Store) -> View {
    let ids = |a: crate::AuthorizedEntries| a.iter().map(|e| e.id.clone()).collect::<Vec<_>>();
    let agents: Vec<_> = (0..3).chain([7]).map(DataSet::agent_id).collect();
    View {
        snapshot: store.export_snapshot(0).unwrap().chunks,
        applied: store.last_applied(),
        revision: store.revision(),
        entries: store
            .list_entries(&EntryFilter::default(), &PageRequest::all())
            .items
            .iter()
            .map(|e| e.id.clone())
            .collect(),
        authorized: agents.iter().map(|a| ids(store.authorized_entries(a))).collect(),
        authorized_uncached: agents
            .iter()
            .map(|a| ids(store.authorized_entries_uncached(a)))
            .collect(),
        by_parent: store.count_entries(&EntryFilter {
            parent_id: Some(DataSet::agent_id(1).0),
            ..EntryFilter::default()
        }),
    }
}

#[test]
fn a_failed_apply_leaves_the_image_as_it_was_and_refuses_writes_until_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = loaded(dir.path());
    let mut failed = 0;
    for (c, cmd) in commands().iter().enumerate() {
        // Fail at each record write of the command in turn, then in the batch write.
        let mut faults: Vec<(usize, Kind)> = (1..=12).map(|n| (n, Kind::Fail)).collect();
        faults.push((1, Kind::Batch));
        for (n, kind) in faults {
            let before = view(&store);
            fault::arm(n, kind);
            let result = next(&store, cmd);
            fault::disarm();
            // Fewer record writes than `n`: the command went through; go on from there.
            if let Err(e) = result {
                failed += 1;
                assert!(
                    matches!(e, StoreError::Encode(_) | StoreError::Engine(_)),
                    "command {c}, fault {n} {kind:?}: {e}"
                );
                assert_eq!(view(&store), before, "command {c}, fault {n} {kind:?}");
                assert_eq!(next(&store, cmd).unwrap_err(), StoreError::Poisoned);
                assert_eq!(view(&store), before, "a refused apply changes nothing");
                drop(store);
                store = open(dir.path());
                assert_eq!(view(&store), before, "command {c}, fault {n}: reopened");
            }
        }
    }
    // Every command failed at each of its writes and at its batch.
    assert!(failed >= 2 * commands().len(), "only {failed} faults fired");
}

#[test]
fn a_panicked_apply_poisons_the_store_and_no_read_goes_through() {
    let dir = tempfile::tempdir().unwrap();
    let store = loaded(dir.path());
    let before = view(&store);
    fault::arm(2, Kind::Panic);
    let cmd = commands().remove(0);
    let applied = catch_unwind(AssertUnwindSafe(|| next(&store, &cmd)));
    fault::disarm();
    assert!(applied.is_err(), "the apply panicked half-way through its memory changes");
    let agent = DataSet::agent_id(1);
    let reads: Vec<Read<'_>> = vec![
        ("entry_count", Box::new(|| _ = store.entry_count())),
        ("entry", Box::new(|| _ = store.entry(&cmd_entry_id()))),
        ("authorized_entries", Box::new(|| _ = store.authorized_entries_uncached(&agent))),
        ("last_applied", Box::new(|| _ = store.last_applied())),
        ("apply", Box::new(|| _ = next(&store, &Command::PruneEntries { expires_before: 0 }))),
    ];
    for (name, read) in reads {
        let refused = catch_unwind(AssertUnwindSafe(read)).expect_err(name);
        let text = refused
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| refused.downcast_ref::<String>().map(String::as_str))
            .unwrap_or_default();
        assert!(text.contains("state lock is poisoned"), "{name}: {text}");
    }
    drop(store);
    let store = open(dir.path());
    assert_eq!(view(&store), before, "reopened: the state on disk, without the half apply");
}

/// A named read of the store.
type Read<'a> = (&'static str, Box<dyn Fn() + 'a>);

fn cmd_entry_id() -> EntryId {
    DataSet::workload_entry(1, 5).id
}

/// The replicated apply of a run of committed entries fails as a whole: a fault in the
/// third command (or in the run's one batch) takes back the two before it, their request
/// ids, the applied index and term.
#[test]
fn a_failed_committed_run_is_undone_as_a_whole() {
    for kind in [Kind::Fail, Kind::Batch] {
        let dir = tempfile::tempdir().unwrap();
        let mut store = loaded(dir.path());
        let before = view(&store);
        let term_before = store.applied_term();
        let first = store.last_applied() + 1;
        // Four entries, a token with an entry, an agent: 4, 2 and 1 record writes.
        let cmds = commands();
        let entries: Vec<Vec<u8>> = [&cmds[0], &cmds[3], &cmds[5]]
            .into_iter()
            .cloned()
            .enumerate()
            .map(|(k, cmd)| crate::LogEntry::new(100 + k as u128, cmd).encode())
            .collect();
        let run: Vec<crate::Committed<'_>> = entries
            .iter()
            .enumerate()
            .map(|(k, data)| crate::Committed::Entry { index: first + k as u64, term: 9, data })
            .collect();
        fault::arm(if matches!(kind, Kind::Batch) { 1 } else { 7 }, kind);
        let result = store.apply_committed(&run);
        fault::disarm();
        assert!(
            matches!(result, Err(StoreError::Encode(_) | StoreError::Engine(_))),
            "{kind:?}: {result:?}"
        );
        assert_eq!(view(&store), before, "{kind:?}");
        assert_eq!(store.applied_term(), term_before);
        assert_eq!(store.apply_committed(&run).unwrap_err(), StoreError::Poisoned);
        drop(store);
        store = open(dir.path());
        assert_eq!(view(&store), before, "{kind:?}: reopened");
        // Applied again after the restart, the run goes through, every id once.
        let applied = store.apply_committed(&run).unwrap();
        assert_eq!(applied.len(), 3);
        assert!(applied.iter().all(|a| a.result.is_ok()), "{applied:?}");
        assert_eq!(store.applied_term(), 9);
    }
}

/// Committed entries `from..` with request ids `index + 1000`: tokens named by `names`
/// (each a new revision), or no-ops (`None`: no revision, but a request id).
fn committed(from: u64, names: &[Option<String>]) -> Vec<Vec<u8>> {
    names
        .iter()
        .zip(from..)
        .map(|(name, index)| {
            let cmd = match name {
                Some(n) => Command::CreateJoinToken {
                    token: JoinToken { token: n.clone(), expires_at: 2_000_000_000 }.to_stored(),
                    entry: None,
                },
                None => Command::PruneJoinTokens { expires_before: 0 },
            };
            crate::LogEntry::new(u128::from(index) + 1000, cmd).encode()
        })
        .collect()
}

fn apply_run(store: &Store, from: u64, data: &[Vec<u8>]) -> Result<(), StoreError> {
    let run: Vec<crate::Committed<'_>> = data
        .iter()
        .zip(from..)
        .map(|(data, index)| crate::Committed::Entry { index, term: 2, data })
        .collect();
    store.apply_committed(&run).map(|_| ())
}

#[test]
fn a_failed_run_across_feed_and_request_id_run_boundaries_is_undone() {
    let tokens = |r: std::ops::Range<u64>| r.map(|i| Some(format!("t{i}"))).collect::<Vec<_>>();
    // Revisions 1..=28 at indexes 1..=28, then no-ops at 29..=58: the failing run of ten
    // tokens (indexes 59..=68, revisions 29..=38) opens a feed run (at revision 32) and a
    // request-id run (at index 64).
    let setup = |store: &Store| {
        apply_run(store, 1, &committed(1, &tokens(1..29))).unwrap();
        apply_run(store, 29, &committed(29, &vec![None; 30])).unwrap();
    };
    let failing = committed(59, &tokens(59..69));
    let twin_dir = tempfile::tempdir().unwrap();
    let twin = open(twin_dir.path());
    setup(&twin);
    apply_run(&twin, 59, &failing).unwrap();
    for kind in [Kind::Fail, Kind::Batch] {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        setup(&store);
        let before = store.export_snapshot(0).unwrap().chunks;
        // The eighth token's write: after both runs opened.
        fault::arm(if matches!(kind, Kind::Batch) { 1 } else { 8 }, kind);
        let result = apply_run(&store, 59, &failing);
        fault::disarm();
        assert!(matches!(result, Err(StoreError::Encode(_) | StoreError::Engine(_))), "{kind:?}");
        assert_eq!(store.export_snapshot(0).unwrap().chunks, before, "{kind:?}");
        assert_eq!(store.changes_since(27, 100).unwrap().len(), 1, "{kind:?}");
        drop(store);
        store = open(dir.path());
        assert_eq!(store.export_snapshot(0).unwrap().chunks, before, "{kind:?}: reopened");
        apply_run(&store, 59, &failing).unwrap();
        assert_eq!(
            store.export_snapshot(0).unwrap().chunks,
            twin.export_snapshot(0).unwrap().chunks,
            "{kind:?}: applied again"
        );
    }
}
