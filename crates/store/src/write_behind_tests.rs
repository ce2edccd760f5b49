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
    let overlaid = store.inner.exports_overlaid.load(Ordering::Relaxed);
    assert!(checked > 3 && overlaid > 0, "{checked} snapshots, {overlaid} with writes waiting");
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
