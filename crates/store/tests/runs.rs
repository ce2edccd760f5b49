#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! The change feed and the request-id table are stored in runs (one record per run of
//! revisions or log indexes): their answers must not depend on where a run starts or ends,
//! on a restart in the middle of one, on a snapshot installed in the middle of one, or on a
//! run falling out of retention.

mod common;

use common::open_unflushed as open;
use ward_core::{Bundle, JoinToken, TrustDomain};
use ward_store::{
    CHANGE_FEED_RETAIN, Command, Committed, Duplicate, LogEntry, REQUEST_ID_RETAIN, SnapshotChunk,
    Store,
};

/// A command that changes something (so it gets a revision): a new join token `n`.
fn token(n: u64) -> Command {
    Command::CreateJoinToken {
        token: JoinToken { token: format!("tok-{n}"), expires_at: 2_000_000_000 }.to_stored(),
        entry: None,
    }
}

/// The request id of the entry at log index `index` in these tests.
fn id_of(index: u64) -> u128 {
    0x5eed_0000_0000 + u128::from(index)
}

/// A command that changes something (so it gets a revision) and leaves the state small:
/// bundle `fed.example` with sequence number `n`.
fn bundle(n: u64) -> Command {
    let td = TrustDomain::new("fed.example").unwrap();
    Command::SetBundles(vec![Bundle { sequence_number: n, ..Bundle::new(td) }])
}

/// A command that changes nothing (no revision); it still carries a request id.
fn noop(_: u64) -> Command {
    Command::PruneJoinTokens { expires_before: 0 }
}

/// Applies indexes `from..from + n` (each a new token with request id [`id_of`]) in
/// committed runs of the given lengths, cycling through them.
fn apply_tokens(store: &Store, from: u64, n: u64, lengths: &[u64]) {
    apply_with(store, from, n, lengths, token);
}

/// [`apply_tokens`] with the command of index `i` made by `cmd(i)`.
fn apply_with(store: &Store, from: u64, n: u64, lengths: &[u64], cmd: fn(u64) -> Command) {
    let mut index = from;
    let end = from + n;
    for len in lengths.iter().cycle() {
        if index >= end {
            break;
        }
        let last = (index + len).min(end);
        let data: Vec<Vec<u8>> =
            (index..last).map(|i| LogEntry::new(id_of(i), cmd(i)).encode()).collect();
        let batch: Vec<Committed<'_>> = (index..last)
            .zip(&data)
            .map(|(index, data)| Committed::Entry { index, term: 1, data })
            .collect();
        let out = store.apply_committed(&batch).unwrap();
        assert!(out.iter().all(|a| a.result.is_ok()), "indexes {index}..{last} applied");
        index = last;
    }
}

/// The revisions `changes_since(after, limit)` returns.
fn feed(store: &Store, after: u64, limit: usize) -> Vec<u64> {
    store.changes_since(after, limit).unwrap().iter().map(|c| c.revision).collect()
}

/// The snapshot stream's chunks: a function of the state, equal on replicas that hold the
/// same state.
fn stream(store: &Store) -> Vec<SnapshotChunk> {
    store.export_snapshot(0).unwrap().chunks
}

/// Applies a retry of the request at `first` as log entry `index`; returns whether it was
/// recognised as a duplicate.
fn retry_is_duplicate(store: &Store, index: u64, first: u64) -> bool {
    retry_with(store, index, first, token)
}

/// [`retry_is_duplicate`] of a request whose command `cmd` makes.
fn retry_with(store: &Store, index: u64, first: u64, cmd: fn(u64) -> Command) -> bool {
    let data = LogEntry::new(id_of(first), cmd(first)).encode();
    let out = store.apply_committed(&[Committed::Entry { index, term: 1, data: &data }]).unwrap();
    match out[0].result {
        Err(Duplicate { first_index }) => {
            assert_eq!(first_index, first);
            true
        }
        Ok(_) => false,
    }
}

#[test]
fn feed_reads_spanning_runs_return_every_revision_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    // Applies of 1, 7, 31, 33 and 64 commands: runs fill across applies, and one apply fills
    // several runs.
    apply_tokens(&store, 1, 200, &[1, 7, 31, 33, 64]);
    assert_eq!(store.revision(), 200);
    for after in 0..=200u64 {
        for limit in [1usize, 5, 31, 32, 33, 65, usize::MAX] {
            let want: Vec<u64> = (after + 1..=200).take(limit).collect();
            assert_eq!(feed(&store, after, limit), want, "after {after}, limit {limit}");
        }
    }
    assert!(feed(&store, 0, 0).is_empty());
    let changes = store.changes_since(99, 1).unwrap();
    let want = ward_core::JoinTokenHash::of("tok-100");
    assert_eq!(changes[0].revision, 100);
    assert!(changes[0].entries.is_empty() && changes[0].agents.is_empty());
    assert!(store.join_token_by_hash(&want).is_some());
}

#[test]
fn a_store_restarted_mid_run_holds_and_writes_what_one_that_ran_on_does() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = open(a_dir.path());
    apply_tokens(&a, 1, 150, &[3, 10]);
    let mut b = open(b_dir.path());
    // Restarts at revisions 40 (inside run 1), 64 (a run's first) and 95 (a run's last).
    let mut index = 1;
    for stop in [40, 64, 95, 150] {
        apply_tokens(&b, index, stop + 1 - index, &[3, 10]);
        index = stop + 1;
        b.flush().unwrap();
        drop(b);
        b = open(b_dir.path());
        assert_eq!(feed(&b, 0, usize::MAX), (1..=stop).collect::<Vec<_>>(), "reopened at {stop}");
    }
    assert_eq!(stream(&a), stream(&b));
    // A retry of an id written before each restart is still a duplicate.
    for (n, first) in [1u64, 40, 63, 64, 65, 150].into_iter().enumerate() {
        let index = 151 + n as u64;
        assert!(retry_is_duplicate(&a, index, first), "{first} on the store that ran on");
        assert!(retry_is_duplicate(&b, index, first), "{first} on the restarted store");
    }
    assert_eq!(stream(&a), stream(&b));
}

#[test]
fn a_snapshot_installed_mid_run_continues_the_runs_identically() {
    for cut in [1u64, 31, 32, 33, 64, 70, 127] {
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = open(a_dir.path());
        apply_tokens(&a, 1, cut, &[5]);
        let b = open(b_dir.path());
        b.import_snapshot(stream(&a)).unwrap();
        assert_eq!(stream(&a), stream(&b), "cut at {cut}");
        apply_tokens(&a, cut + 1, 100, &[1, 9]);
        apply_tokens(&b, cut + 1, 100, &[1, 9]);
        assert_eq!(stream(&a), stream(&b), "cut at {cut}, 100 more");
        let all: Vec<u64> = (1..=cut + 100).collect();
        assert_eq!(feed(&b, 0, usize::MAX), all);
        assert_eq!(feed(&b, cut - 1, 3), all[cut as usize - 1..cut as usize + 2].to_vec());
        // Ids from before the snapshot and after it, on both sides of run boundaries.
        b.flush().unwrap();
        drop(b);
        let b = open(b_dir.path());
        for (n, first) in [1, cut, cut + 1, cut + 100].into_iter().enumerate() {
            let index = cut + 101 + n as u64;
            assert!(retry_is_duplicate(&a, index, first), "cut {cut}: {first} on the leader");
            assert!(retry_is_duplicate(&b, index, first), "cut {cut}: {first} after install");
        }
        assert_eq!(stream(&a), stream(&b), "cut at {cut}, reopened");
    }
}

#[test]
fn the_request_id_window_moves_a_run_at_a_time_and_survives_restart_and_install() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    // Index 1 opens run 0 (indexes 0..64); after RETAIN + 70 ids, ids 1..=70 are evicted:
    // run 0 is gone whole, and run 1 (64..128) lost 64..=70 but keeps 71..=127.
    let n = REQUEST_ID_RETAIN as u64 + 70;
    apply_with(&store, 1, n, &[4096], noop);
    store.flush().unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let other = open(other_dir.path());
    other.import_snapshot(stream(&store)).unwrap();
    drop(store);
    let store = open(dir.path());
    assert_eq!(stream(&store), stream(&other));
    for s in [&store, &other] {
        // Duplicates first: a retry that applies again is remembered and evicts the oldest.
        let retries = [(71, true), (127, true), (63, false), (64, false), (70, false)];
        for (index, (first, kept)) in (n + 1..).zip(retries) {
            let dup = retry_with(s, index, first, noop);
            assert_eq!(dup, kept, "id of index {first}");
        }
    }
    assert_eq!(stream(&store), stream(&other));
}

#[test]
fn the_feed_keeps_exactly_the_last_retained_revisions_across_run_trims() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    // Past the retention by a run and a half, ending inside a run.
    let n = CHANGE_FEED_RETAIN + 48;
    apply_with(&store, 1, n, &[5000, 3], bundle);
    let first = n - CHANGE_FEED_RETAIN + 1;
    let check = |s: &Store, what: &str| {
        assert_eq!(feed(s, 0, 3), vec![first, first + 1, first + 2], "{what}: oldest kept");
        assert_eq!(feed(s, first + 29, 5), (first + 30..first + 35).collect::<Vec<_>>(), "{what}");
        assert_eq!(feed(s, 0, usize::MAX).len() as u64, CHANGE_FEED_RETAIN, "{what}: count");
        assert_eq!(feed(s, n - 2, usize::MAX), vec![n - 1, n], "{what}: newest");
    };
    check(&store, "applied");
    store.flush().unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let other = open(other_dir.path());
    other.import_snapshot(stream(&store)).unwrap();
    check(&other, "installed");
    drop(store);
    let store = open(dir.path());
    check(&store, "reopened");
    assert_eq!(stream(&store), stream(&other));
    // Forty more move the oldest kept revision across a run boundary on both.
    apply_with(&store, n + 1, 40, &[7], bundle);
    apply_with(&other, n + 1, 40, &[7], bundle);
    assert_eq!(stream(&store), stream(&other));
    let first = n + 40 - CHANGE_FEED_RETAIN + 1;
    assert_eq!(feed(&other, 0, 2), vec![first, first + 1]);
}
