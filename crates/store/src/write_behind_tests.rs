//! The writes of replicated applies wait in memory and go to the engine together (see
//! `crate::batch`): nothing a reader can see changes, a store dropped without a close keeps
//! every apply, and the engine is always at the end of some apply.

use std::path::Path;
use std::sync::atomic::Ordering;

use ward_core::JoinToken;

use crate::apply::fault::{self, Kind};
use crate::batch::WRITE_BEHIND_ENTRIES;
use crate::testdata::DataSet;
use crate::{Command, Committed, LogEntry, Store, StoreConfig, StoreError};

fn open(dir: &Path, write_behind_entries: u32) -> Store {
    let config = StoreConfig { write_behind_entries, ..StoreConfig::new(DataSet::trust_domain()) };
    Store::open(dir, config).unwrap()
}

/// Log entry `index`: a join token named after it (one revision each).
fn token_entry(index: u64) -> Vec<u8> {
    let token = JoinToken { token: format!("t{index}"), expires_at: 2_000_000_000 }.to_stored();
    LogEntry::new(u128::from(index) + 7, Command::CreateJoinToken { token, entry: None }).encode()
}

/// Applies log entry `index` alone, as a replica does when writes come one at a time.
fn apply_one(store: &Store, index: u64) {
    let data = token_entry(index);
    let run = [Committed::Entry { index, term: 1, data: &data }];
    assert!(store.apply_committed(&run).unwrap()[0].result.is_ok());
}

fn batches(store: &Store) -> u64 {
    store.inner.batches.load(Ordering::Relaxed)
}

fn chunks(store: &Store) -> Vec<crate::SnapshotChunk> {
    store.export_snapshot(0).unwrap().chunks
}

fn apply_empty(store: &Store, index: u64) {
    store.apply_committed(&[Committed::Empty { index, term: 1 }]).unwrap();
}

#[test]
fn applies_wait_until_enough_gathered_and_a_membership_change_goes_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), WRITE_BEHIND_ENTRIES);
    let start = batches(&store);
    let limit = u64::from(WRITE_BEHIND_ENTRIES);
    // Empty entries write two records each: the entry count decides.
    for index in 1..limit {
        apply_empty(&store, index);
    }
    assert_eq!(batches(&store) - start, 0, "{} entries wait", limit - 1);
    apply_empty(&store, limit);
    assert_eq!(batches(&store) - start, 1, "then all go in one batch");
    // A token writes about seven records: the record-write bound comes first.
    let mut index = limit;
    while batches(&store) - start == 1 {
        index += 1;
        apply_one(&store, index);
    }
    let waited = index - limit;
    assert!(waited > 64 && waited < limit, "{waited} tokens waited");
    apply_one(&store, index + 1);
    let conf_state = b"voters".to_vec();
    let run = [Committed::Membership { index: index + 2, term: 1, conf_state: &conf_state }];
    store.apply_committed(&run).unwrap();
    assert_eq!(batches(&store) - start, 3, "a membership change is written at once");
    assert_eq!(store.durable_applied(), 0, "written is not flushed");
    store.flush().unwrap();
    assert_eq!(store.durable_applied(), index + 2);
}

/// The limit counts log entries, not calls: a restart replays the log's tail in one call,
/// which then goes to the engine at once.
#[test]
fn one_call_of_as_many_entries_as_the_limit_is_written_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), WRITE_BEHIND_ENTRIES);
    let start = batches(&store);
    let limit = u64::from(WRITE_BEHIND_ENTRIES);
    let data: Vec<Vec<u8>> = (1..=limit).map(token_entry).collect();
    let run: Vec<Committed<'_>> = (1..=limit)
        .zip(&data)
        .map(|(index, data)| Committed::Entry { index, term: 1, data })
        .collect();
    store.apply_committed(&run).unwrap();
    assert_eq!(batches(&store) - start, 1);
}

#[test]
fn a_store_dropped_without_close_keeps_every_apply_and_reads_are_the_same() {
    let (dir, reference_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let store = open(dir.path(), WRITE_BEHIND_ENTRIES);
    let reference = open(reference_dir.path(), 1);
    // Across change-feed runs (32 revisions) and request-id runs.
    for index in 1..=100 {
        apply_one(&store, index);
        apply_one(&reference, index);
    }
    assert_eq!(chunks(&store), chunks(&reference));
    assert_eq!(
        store.changes_since(40, usize::MAX).unwrap(),
        reference.changes_since(40, usize::MAX).unwrap()
    );
    for index in 101..=110 {
        apply_one(&store, index);
        apply_one(&reference, index);
    }
    drop(store);
    let store = open(dir.path(), WRITE_BEHIND_ENTRIES);
    assert_eq!(store.last_applied(), 110);
    assert_eq!(chunks(&store), chunks(&reference), "reopened after a drop");
}

/// An export taken while applies run sees the writes still waiting exactly as the engine
/// will hold them: each snapshot is byte for byte that of a store whose every apply was
/// written at once, at the same applied index.
#[test]
fn snapshots_exported_during_applies_match_a_store_that_writes_each_apply() {
    let (dir, reference_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let store = open(dir.path(), WRITE_BEHIND_ENTRIES);
    let reference = open(reference_dir.path(), 1);
    // Widen the window in which applies land between the export's two parts.
    *store.inner.export_window.lock().unwrap() =
        Some(Box::new(|| std::thread::sleep(std::time::Duration::from_millis(1))));
    let last = 2000;
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || {
            for index in 1..=last {
                apply_one(&store, index);
                std::thread::sleep(std::time::Duration::from_micros(300));
            }
        })
    };
    let mut checked = 0;
    while !writer.is_finished() || checked == 0 {
        let snapshot = store.export_snapshot(0).unwrap();
        let at = snapshot.info.applied;
        while reference.last_applied() < at {
            apply_one(&reference, reference.last_applied() + 1);
        }
        assert_eq!(snapshot.chunks, chunks(&reference), "snapshot at {at}");
        checked += 1;
    }
    writer.join().unwrap();
    assert!(checked > 3, "{checked} snapshots");
}

/// Applies that land after an export wrote what waited and before its cut under the lock
/// are laid over the cut from memory: the export equals that of a store that wrote each
/// apply, and the engine gets them later all the same.
#[test]
fn applies_landing_inside_an_export_are_laid_over_its_cut() {
    let (dir, reference_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let store = open(dir.path(), WRITE_BEHIND_ENTRIES);
    for index in 1..=30 {
        apply_one(&store, index);
    }
    let hook = {
        let (store, mut next) = (store.clone(), 31);
        move || {
            for _ in 0..5 {
                apply_one(&store, next);
                next += 1;
            }
        }
    };
    *store.inner.export_window.lock().unwrap() = Some(Box::new(hook));
    let first = store.export_snapshot(0).unwrap();
    let second = store.export_snapshot(0).unwrap();
    // The hook holds a clone of the store: take it out so the store can close.
    store.inner.export_window.lock().unwrap().take();
    assert_eq!(store.inner.exports_overlaid.load(Ordering::Relaxed), 2);
    assert_eq!((first.info.applied, second.info.applied), (35, 40));
    let reference = reference_of(reference_dir.path(), 35);
    assert_eq!(first.chunks, reference.export_snapshot(0).unwrap().chunks);
    for index in 36..=40 {
        apply_one(&reference, index);
    }
    assert_eq!(second.chunks, chunks(&reference));
    drop(store);
    let store = open(dir.path(), WRITE_BEHIND_ENTRIES);
    assert_eq!(store.last_applied(), 40);
    assert_eq!(chunks(&store), chunks(&reference), "reopened after a drop");
}

/// A store of the applies `1..=n`, each written at once.
fn reference_of(dir: &Path, n: u64) -> Store {
    let reference = open(dir, 1);
    for index in 1..=n {
        apply_one(&reference, index);
    }
    reference
}

/// A write of what waits that fails poisons the store but keeps the waiting writes: a
/// flush then refuses (the engine does not hold the memory), an export still shows every
/// apply, and the store writes them when dropped.
#[test]
fn a_failed_write_of_waiting_applies_poisons_and_keeps_them() {
    let (dir, reference_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let store = open(dir.path(), WRITE_BEHIND_ENTRIES);
    for index in 1..=10 {
        apply_one(&store, index);
    }
    store.flush().unwrap();
    for index in 11..=20 {
        apply_one(&store, index);
    }
    fault::arm(1, Kind::Batch);
    let flushed = store.flush();
    fault::disarm();
    assert!(matches!(flushed, Err(StoreError::Engine(_))), "{flushed:?}");
    assert_eq!(store.flush().unwrap_err(), StoreError::Poisoned);
    assert_eq!(store.durable_applied(), 10, "a refused flush promises nothing");
    let run = [Committed::Empty { index: 21, term: 1 }];
    assert_eq!(store.apply_committed(&run).unwrap_err(), StoreError::Poisoned);
    let reference = reference_of(reference_dir.path(), 20);
    assert_eq!(chunks(&store), chunks(&reference), "the export lays what waits over");
    drop(store);
    let store = open(dir.path(), WRITE_BEHIND_ENTRIES);
    assert_eq!(store.last_applied(), 20);
    assert_eq!(chunks(&store), chunks(&reference));
}

/// The apply whose writes make the batch due, and whose write fails, is taken back alone:
/// the applies before it stay, waiting, and reach the engine when the store is dropped.
#[test]
fn a_failed_due_write_takes_back_only_the_apply_that_made_it_due() {
    let (dir, reference_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let store = open(dir.path(), WRITE_BEHIND_ENTRIES);
    let reference = open(reference_dir.path(), 1);
    let limit = u64::from(WRITE_BEHIND_ENTRIES);
    // A few tokens, then empty entries (two records each) up to one short of the limit:
    // the next entry makes the batch due by the entry count.
    for index in 1..limit {
        for s in [&store, &reference] {
            if index <= 10 { apply_one(s, index) } else { apply_empty(s, index) }
        }
    }
    assert_eq!(batches(&store), 0, "nothing written yet");
    let data = token_entry(limit);
    let run = [Committed::Entry { index: limit, term: 1, data: &data }];
    fault::arm(1, Kind::Batch);
    let result = store.apply_committed(&run);
    fault::disarm();
    assert!(matches!(result, Err(StoreError::Engine(_))), "{result:?}");
    assert_eq!(store.last_applied(), limit - 1);
    assert_eq!(chunks(&store), chunks(&reference));
    drop(store);
    let store = open(dir.path(), WRITE_BEHIND_ENTRIES);
    assert_eq!(store.last_applied(), limit - 1);
    assert_eq!(chunks(&store), chunks(&reference), "reopened");
    apply_one(&store, limit);
}

/// A step of [`metadata_records_equal_the_state_after_any_batches`].
#[derive(Debug, Clone)]
enum Step {
    /// Creates entry `k` under request id `r` (small, so some repeat: duplicates).
    Create(u8, u8),
    Delete(u8),
    /// Sets entry `k`'s X509-SVID TTL (its run is written again).
    Update(u8, u16),
    /// Creates entry `k` and deletes it in the same batch.
    CreateDelete(u8),
    Empty,
    Membership,
    Token(u8),
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        4 => (0u8..40, 0u8..6).prop_map(|(k, r)| Step::Create(k, r)),
        2 => (0u8..40).prop_map(Step::Delete),
        2 => (0u8..40, 1u16..600).prop_map(|(k, ttl)| Step::Update(k, ttl)),
        1 => (0u8..40).prop_map(Step::CreateDelete),
        1 => Just(Step::Empty),
        1 => Just(Step::Membership),
        1 => (0u8..5).prop_map(Step::Token),
    ]
}

fn numbered_entry(k: u8) -> ward_core::RegistrationEntry {
    ward_core::RegistrationEntry {
        id: ward_core::EntryId::new(&format!("e-{k}")).unwrap(),
        ..DataSet::workload_entry(usize::from(k % 3), usize::from(k))
    }
}

/// `m/applied`, `m/revision`, `m/entries` and `m/entry-number` as the engine holds them.
fn metadata_records(store: &Store) -> (u64, u64, u64, u64) {
    let tree = store.data_tree();
    let get = |k: &[u8]| {
        tree.get(k).unwrap().map_or(0, |v| u64::from_be_bytes(v.as_ref().try_into().unwrap()))
    };
    (
        get(crate::record::META_APPLIED),
        get(crate::record::META_REVISION),
        get(crate::record::META_ENTRIES),
        get(crate::record::META_ENTRY_NUMBER),
    )
}

/// The same four figures from the in-memory image.
fn metadata_of_state(store: &Store) -> (u64, u64, u64, u64) {
    let s = store.read();
    (s.applied, s.revision, s.entry_count() as u64, s.last_entry_number)
}

/// The entries as the engine holds them (runs, and records of entries without a number),
/// with their creation numbers, in number order.
fn entry_records(store: &Store) -> Vec<(u64, ward_core::RegistrationEntry)> {
    let tree = store.data_tree();
    let mut out = Vec::new();
    for kv in tree.scan_prefix([crate::record::ENTRY_RUN]) {
        let (k, v) = kv.unwrap();
        let run = crate::entry_runs::decode(&k, &v).unwrap();
        assert!(!run.is_empty(), "an empty run is removed, not kept");
        out.extend(run.into_iter().map(|(e, n)| (n, e)));
    }
    for kv in tree.scan_prefix([crate::record::ENTRY]) {
        let (k, v) = kv.unwrap();
        let (e, n) = crate::record::decode_numbered(&k, &v).unwrap();
        out.push((n, e));
    }
    out.sort_by(|a, b| (a.0, a.1.id.as_str()).cmp(&(b.0, b.1.id.as_str())));
    out
}

/// The entries of the in-memory image, as [`entry_records`] lists them.
fn entries_of_state(store: &Store) -> Vec<(u64, ward_core::RegistrationEntry)> {
    let s = store.read();
    let mut out: Vec<_> = s.numbered_entries().map(|(n, e)| (n, (**e).clone())).collect();
    out.sort_by(|a, b| (a.0, a.1.id.as_str()).cmp(&(b.0, b.1.id.as_str())));
    out
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]
    /// The metadata records and the entry runs are written once per engine batch: after
    /// any run of batches (creates with repeated request ids, updates, deletes of missing
    /// entries, a create and delete of one id in one batch, tokens, empty and membership
    /// entries), with any write-behind bound, through a failed apply, a checkpoint, a close
    /// or a drop and a reopen, they equal the in-memory image's figures and entries.
    #[allow(clippy::arithmetic_side_effects)] // small numbers in a test
    #[test]
    fn metadata_records_equal_the_state_after_any_batches(
        batches in proptest::collection::vec(proptest::collection::vec(step(), 1..12), 1..25),
        write_behind_entries in proptest::prop_oneof![
            proptest::strategy::Just(1u32),
            proptest::strategy::Just(3u32),
            proptest::strategy::Just(256u32),
        ],
        fail_at in proptest::option::of(0usize..25),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let reopen = |dir: &Path| {
            let config = StoreConfig {
                write_behind_entries,
                checkpoint_every: None,
                ..StoreConfig::new(DataSet::trust_domain())
            };
            Store::open(dir, config).unwrap()
        };
        let mut store = reopen(dir.path());
        let mut fresh_id = 1000u128;
        let delete = |k: u8| {
            Command::DeleteEntries(vec![ward_core::EntryId::new(&format!("e-{k}")).unwrap()])
        };
        for (b, steps) in batches.iter().enumerate() {
            // (data, whether it is a command entry, an empty entry or a membership change)
            let mut datas: Vec<(Vec<u8>, &Step)> = Vec::new();
            for s in steps {
                let encoded = match s {
                    Step::Create(k, r) => {
                        let cmd = Command::CreateEntries(vec![numbered_entry(*k)]);
                        LogEntry::new(u128::from(*r), cmd).encode()
                    }
                    Step::Delete(k) => {
                        fresh_id += 1;
                        LogEntry::new(fresh_id, delete(*k)).encode()
                    }
                    Step::Update(k, ttl) => {
                        fresh_id += 1;
                        let patch = ward_core::EntryPatch {
                            x509_svid_ttl: Some(i32::from(*ttl)),
                            ..Default::default()
                        };
                        let id = ward_core::EntryId::new(&format!("e-{k}")).unwrap();
                        let cmd = Command::UpdateEntries(vec![crate::command::EntryUpdate { id, patch }]);
                        LogEntry::new(fresh_id, cmd).encode()
                    }
                    Step::CreateDelete(k) => {
                        let cmd = Command::CreateEntries(vec![numbered_entry(*k)]);
                        datas.push((LogEntry::new(0, cmd).encode(), s));
                        fresh_id += 1;
                        LogEntry::new(fresh_id, delete(*k)).encode()
                    }
                    Step::Token(t) => {
                        let token = JoinToken { token: format!("t{t}"), expires_at: 2_000_000_000 };
                        let cmd = Command::CreateJoinToken { token: token.to_stored(), entry: None };
                        LogEntry::new(0, cmd).encode()
                    }
                    Step::Empty | Step::Membership => Vec::new(),
                };
                datas.push((encoded, s));
            }
            let first = store.last_applied() + 1;
            let run: Vec<Committed<'_>> = datas
                .iter()
                .zip(first..)
                .map(|((data, s), index)| match s {
                    Step::Empty => Committed::Empty { index, term: 1 },
                    Step::Membership => Committed::Membership { index, term: 1, conf_state: b"conf" },
                    _ => Committed::Entry { index, term: 1, data },
                })
                .collect();
            if b == batches.len() / 2 {
                store.checkpoint().unwrap();
            }
            let before = metadata_of_state(&store);
            let entries_before = entries_of_state(&store);
            if fail_at == Some(b) {
                store.flush().unwrap();
                let on_disk = metadata_records(&store);
                proptest::prop_assert_eq!(entry_records(&store), entries_before.clone());
                fault::arm(1, Kind::Fail);
                let failed = store.apply_committed(&run).is_err();
                fault::disarm();
                if failed {
                    proptest::prop_assert_eq!(metadata_of_state(&store), before);
                    drop(store);
                    store = reopen(dir.path());
                    proptest::prop_assert_eq!(metadata_of_state(&store), before, "reopened");
                    proptest::prop_assert_eq!(metadata_records(&store), on_disk);
                    proptest::prop_assert_eq!(entries_of_state(&store), entries_before.clone());
                    proptest::prop_assert_eq!(entry_records(&store), entries_before);
                    continue;
                }
            } else {
                store.apply_committed(&run).unwrap();
            }
            let now = metadata_of_state(&store);
            if write_behind_entries == 1 {
                proptest::prop_assert_eq!(metadata_records(&store), now, "batch {}", b);
                proptest::prop_assert_eq!(entry_records(&store), entries_of_state(&store));
            }
            store.flush().unwrap();
            proptest::prop_assert_eq!(metadata_records(&store), now, "batch {} flushed", b);
            proptest::prop_assert_eq!(entry_records(&store), entries_of_state(&store));
        }
        let now = metadata_of_state(&store);
        let entries_now = entries_of_state(&store);
        let close = batches.len() % 2 == 1;
        if close {
            store.close().unwrap();
        }
        drop(store);
        let store = reopen(dir.path());
        if close {
            proptest::prop_assert!(store.opened_from_image());
        }
        proptest::prop_assert_eq!(metadata_of_state(&store), now, "reopened");
        proptest::prop_assert_eq!(entries_of_state(&store), entries_now.clone(), "reopened");
        proptest::prop_assert_eq!(entry_records(&store), entries_now);
    }
}
