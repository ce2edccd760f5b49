#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! The revision watch: it wakes when a command changed something (after the change is
//! readable), not for commands that changed nothing, and when a snapshot is installed.

use ward_core::EntryId;
use ward_store::testdata::DataSet;
use ward_store::{Command, Store, StoreConfig};

fn open(dir: &std::path::Path) -> Store {
    Store::open(dir, StoreConfig::new(DataSet::trust_domain())).unwrap()
}

fn next(store: &Store, cmd: &Command) {
    store.apply(store.last_applied() + 1, cmd).unwrap();
}

#[tokio::test]
async fn a_change_wakes_the_watch_once_it_is_readable_and_a_no_op_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut watch = store.watch_revision();
    let start = watch.current();
    assert_eq!(start, store.revision());

    next(&store, &Command::AttestAgent(DataSet::agent(0)));
    let entry = DataSet::workload_entry(0, 0);
    let reader = store.clone();
    let mut w = watch.clone();
    let woke = tokio::spawn(async move {
        // Skip the attestation's revision; wait for the entry's.
        let mut seen = w.current();
        while reader.authorized_entries(&DataSet::agent_id(0)).is_empty() {
            seen = w.changed().await.unwrap();
        }
        seen
    });
    next(&store, &Command::CreateEntries(vec![entry.clone()]));
    assert_eq!(woke.await.unwrap(), start + 2);

    // A command that changes nothing publishes nothing: the next wake is the next change.
    watch.current();
    let missing = EntryId::new("no-such-entry").unwrap();
    next(&store, &Command::DeleteEntries(vec![missing]));
    assert_eq!(store.revision(), start + 2);
    next(&store, &Command::DeleteEntries(vec![entry.id.clone()]));
    assert_eq!(watch.changed().await, Some(start + 3));
    assert!(store.authorized_entries(&DataSet::agent_id(0)).is_empty());
}

#[tokio::test]
async fn installing_a_snapshot_wakes_the_watch_with_its_revision() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    DataSet::SMALL.load(&store).unwrap();
    let export = store.export_snapshot(64 * 1024).unwrap();

    let dir2 = tempfile::tempdir().unwrap();
    let other = open(dir2.path());
    let mut watch = other.watch_revision();
    assert_eq!(watch.current(), 0);
    other.import_snapshot(export.chunks).unwrap();
    assert_eq!(watch.changed().await, Some(store.revision()));
}
