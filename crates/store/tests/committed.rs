#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! The replicated apply: committed log entries applied in runs, replayed safely, and
//! deduplicated by request id.

mod common;

use common::open_unflushed as open;
use ward_core::JoinToken;
use ward_store::{
    AppliedEntry, Command, Committed, ConsumedToken, Duplicate, LogEntry, Outcome,
    REQUEST_ID_RETAIN, Store, StoreError,
};

fn create_token(value: &str) -> Command {
    Command::CreateJoinToken {
        token: JoinToken { token: value.into(), expires_at: 2_000_000_000 }.to_stored(),
        entry: None,
    }
}

fn consume(value: &str) -> Command {
    Command::ConsumeJoinToken { hash: ward_core::JoinTokenHash::of(value), now: 1_700_000_000 }
}

/// Applies each `(index, request id, command)` as its own committed entry of term 3, one
/// call per entry.
fn apply_each(store: &Store, entries: &[(u64, u128, Command)]) -> Vec<AppliedEntry> {
    let mut out = Vec::new();
    for (index, id, cmd) in entries {
        let data = LogEntry::new(*id, cmd.clone()).encode();
        out.extend(
            store
                .apply_committed(&[Committed::Entry { index: *index, term: 3, data: &data }])
                .unwrap(),
        );
    }
    out
}

#[test]
fn a_retried_request_consumes_a_join_token_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let out = apply_each(
        &store,
        &[
            (1, 0x10, create_token("tok")),
            (2, 0x20, consume("tok")),
            // The operator makes a token with the same value again.
            (3, 0x30, create_token("tok")),
            // The consume of index 2, proposed again after its reply was lost.
            (4, 0x20, consume("tok")),
        ],
    );
    let expected =
        Outcome::JoinTokenConsumed(Ok(ConsumedToken { expires_at: 2_000_000_000, expired: false }));
    assert_eq!(out[1].result.as_ref().unwrap().outcome, expected);
    assert_eq!(
        out[3],
        AppliedEntry { index: 4, request_id: 0x20, result: Err(Duplicate { first_index: 2 }) }
    );
    assert!(store.join_token("tok").is_some(), "the retry did not burn the new token");
    assert_eq!(store.last_applied(), 4);
    assert_eq!(store.revision(), 3, "the duplicate changed nothing");
}

#[test]
fn entries_without_a_request_id_are_never_deduplicated() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let out = apply_each(
        &store,
        &[
            (1, 0, create_token("a")),
            (2, 0, consume("a")),
            (3, 0, create_token("a")),
            (4, 0, consume("a")),
        ],
    );
    assert!(out.iter().all(|e| e.result.is_ok()));
    assert!(store.join_token("a").is_none());
}

#[test]
fn a_run_of_100_entries_is_applied_and_reopens_at_its_last_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let data: Vec<Vec<u8>> =
        (1..=100u128).map(|i| LogEntry::new(i, create_token(&format!("t{i}"))).encode()).collect();
    let batch: Vec<Committed<'_>> = (1..=100u64)
        .zip(&data)
        .map(|(index, data)| Committed::Entry { index, term: 2, data })
        .collect();
    let out = store.apply_committed(&batch).unwrap();
    assert_eq!(out.len(), 100);
    assert_eq!(out.iter().map(|e| e.index).collect::<Vec<_>>(), (1..=100).collect::<Vec<_>>());
    store.flush().unwrap();
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.last_applied(), 100);
    assert_eq!(store.applied_term(), 2);
    assert_eq!(store.revision(), 100);
    assert!((1..=100).all(|i| store.join_token(&format!("t{i}")).is_some()));
    // The request ids came back with the state: replaying the run changes nothing, and a
    // retry of one of them at a new index is a duplicate.
    assert!(store.apply_committed(&batch).unwrap().is_empty());
    let retry = store.apply_committed(&[Committed::Entry { index: 101, term: 2, data: &data[6] }]);
    assert_eq!(retry.unwrap()[0].result, Err(Duplicate { first_index: 7 }));
}

#[test]
fn replayed_entries_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let data: Vec<Vec<u8>> =
        (1..=5u128).map(|i| LogEntry::new(0, create_token(&format!("t{i}"))).encode()).collect();
    let run = |to: usize| -> Vec<Committed<'_>> {
        (1..=to as u64)
            .zip(&data)
            .map(|(index, data)| Committed::Entry { index, term: 1, data })
            .collect()
    };
    store.apply_committed(&run(3)).unwrap();
    let out = store.apply_committed(&run(5)).unwrap();
    assert_eq!(out.iter().map(|e| e.index).collect::<Vec<_>>(), vec![4, 5]);
    assert_eq!(store.revision(), 5, "entries 1 to 3 were not applied twice");
}

#[test]
fn no_ops_and_membership_changes_advance_the_applied_index_and_persist() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let out = store
        .apply_committed(&[
            Committed::Empty { index: 1, term: 1 },
            Committed::Membership { index: 2, term: 1, conf_state: b"voters 1" },
            Committed::Empty { index: 3, term: 4 },
        ])
        .unwrap();
    assert!(out.is_empty());
    assert_eq!((store.last_applied(), store.applied_term(), store.revision()), (3, 4, 0));
    assert_eq!(store.conf_state().as_deref(), Some(&b"voters 1"[..]));
    store.flush().unwrap();
    drop(store);
    let store = open(dir.path());
    assert_eq!((store.last_applied(), store.applied_term()), (3, 4));
    assert_eq!(store.conf_state().as_deref(), Some(&b"voters 1"[..]));
}

#[test]
fn an_unknown_format_or_a_gap_is_refused_before_anything_changes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let good = LogEntry::new(1, create_token("a")).encode();
    let mut later = good.clone();
    assert_eq!(&later[..2], &[0x08, 0x01]);
    later[1] = 9;
    let err = store
        .apply_committed(&[
            Committed::Entry { index: 1, term: 1, data: &good },
            Committed::Entry { index: 2, term: 1, data: &later },
        ])
        .unwrap_err();
    assert_eq!(err, StoreError::UnknownLogFormat(9));
    let gap = store
        .apply_committed(&[
            Committed::Entry { index: 1, term: 1, data: &good },
            Committed::Empty { index: 3, term: 1 },
        ])
        .unwrap_err();
    assert_eq!(gap, StoreError::IndexGap { index: 3, applied: 1 });
    assert_eq!((store.last_applied(), store.revision()), (0, 0));
    assert!(store.join_token("a").is_none());
    // Nothing was poisoned: the good entry alone applies.
    store.apply_committed(&[Committed::Entry { index: 1, term: 1, data: &good }]).unwrap();
    assert!(store.join_token("a").is_some());
}

#[test]
fn durable_applied_follows_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    apply_each(&store, &[(1, 1, create_token("a")), (2, 2, create_token("b"))]);
    assert_eq!((store.last_applied(), store.durable_applied()), (2, 0));
    store.flush().unwrap();
    assert_eq!(store.durable_applied(), 2);
    drop(store);
    assert_eq!(open(dir.path()).durable_applied(), 2);
}

#[test]
fn the_request_id_table_keeps_the_last_ids_in_the_engine_and_in_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let n = REQUEST_ID_RETAIN as u64 + 2;
    let noop =
        |i: u64| LogEntry::new(u128::from(i), Command::PruneJoinTokens { expires_before: 0 });
    let data: Vec<Vec<u8>> = (1..=n).map(|i| noop(i).encode()).collect();
    let batch: Vec<Committed<'_>> =
        (1..=n).zip(&data).map(|(index, data)| Committed::Entry { index, term: 1, data }).collect();
    store.apply_committed(&batch).unwrap();
    store.flush().unwrap();
    drop(store);
    let store = open(dir.path());
    let other_dir = tempfile::tempdir().unwrap();
    let other = open(other_dir.path());
    other.import_snapshot(store.export_snapshot(0).unwrap().chunks).unwrap();
    for s in [&store, &other] {
        // Ids 1 and 2 were evicted (oldest index first), so they apply again; 3 is kept.
        let retry = |id: u64| noop(id).encode();
        let (r3, r1) = (retry(3), retry(1));
        let out = s
            .apply_committed(&[
                Committed::Entry { index: n + 1, term: 1, data: &r3 },
                Committed::Entry { index: n + 2, term: 1, data: &r1 },
            ])
            .unwrap();
        assert_eq!(out[0].result, Err(Duplicate { first_index: 3 }));
        assert!(out[1].result.is_ok());
    }
}
