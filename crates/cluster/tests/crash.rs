//! A replica that stopped between importing a snapshot's state into its store and resetting
//! its raft log to that snapshot (a crash in that window) starts again and catches up.
//!
//! The process test (tests/tests/cluster_crash.rs) kills a real replica at random points of a
//! snapshot install and only sometimes lands in this window; here it is made on purpose: the
//! stopped replica's store is given a newer state than its log while it is down.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use raft::eraftpb::{Entry, EntryType};
use ward_cluster::{LogStore, SledLogStore};
use ward_store::{Store, StoreConfig};

mod harness;
use harness::{Harness, token, trust_domain};

/// Three voters that compact their logs every few entries, with one token `before` applied
/// on all; returns the harness and the index of `before`.
async fn three_replicas_compacting_often() -> (Harness, u64) {
    let mut h = Harness::new();
    h.compact_log_bytes = 2048;
    h.start(1, true);
    h.wait_leader().await;
    for id in 2..=3 {
        h.start(id, false);
        h.add_voter(id).await;
    }
    let before = h.propose(1, token("before")).await.index;
    h.wait_applied(before).await;
    (h, before)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_stopped_after_importing_a_snapshot_but_before_resetting_its_log_catches_up() {
    let (mut h, before) = three_replicas_compacting_often().await;

    tracing::info!("replica 3 stops; the others write on and compact their logs past it");
    h.stop(3).await;
    let mut last = 0;
    for i in 0..60 {
        last = h.propose(1, token(&format!("t{i}"))).await.index;
    }
    let status = h.nodes[&1].handle.status().await.unwrap();
    assert!(status.first_index > before + 1, "the log was compacted: {status:?}");

    tracing::info!("replica 3's store gets the leader's state, its raft log stays as it was");
    {
        let store = Store::open(h.dir(3), StoreConfig::new(trust_domain())).unwrap();
        let imported =
            store.import_snapshot_stream(h.nodes[&1].store.export_snapshot_stream(0).unwrap());
        assert!(imported.unwrap().applied >= last);
        store.flush().unwrap();
    }

    restarts_and_catches_up(&mut h, before).await;
}

/// The same window when the stopped replica's log reaches past the snapshot with entries of
/// an older term (sent by a leader that was deposed before they committed): the start-up
/// check passes (the store's index is inside the log), and the leader's next snapshot, whose
/// term at that index differs from the old tail's, replaces the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_stopped_after_importing_a_snapshot_over_a_stale_log_tail_catches_up() {
    let (mut h, before) = three_replicas_compacting_often().await;

    tracing::info!("replica 3 stops; leadership moves to a new term; the others compact");
    h.stop(3).await;
    let old_term = h.nodes[&1].handle.term();
    h.nodes[&1].handle.transfer_leader(2).unwrap();
    harness::wait_for("replica 2 to lead in a newer term", || {
        h.nodes[&2].handle.leader() == Some(2) && h.nodes[&2].handle.term() > old_term
    })
    .await;
    for i in 0..60 {
        h.propose(2, token(&format!("t{i}"))).await;
    }
    // One more, so the leader's state is ahead of its last snapshot.
    let last = h.propose(2, token("past-the-snapshot")).await.index;
    let status = h.nodes[&2].handle.status().await.unwrap();
    assert!(status.first_index > before + 1, "the log was compacted: {status:?}");
    assert!(status.snapshot_index < last, "{status:?}");

    tracing::info!(
        "replica 3 holds old-term entries past the leader's applied index, and its store \
         the leader's state (the snapshot import finished, the log reset did not)"
    );
    {
        let store = Store::open(h.dir(3), StoreConfig::new(trust_domain())).unwrap();
        let mut log = SledLogStore::open(&store).unwrap();
        let (from, term) = (log.last_index() + 1, log.term(log.last_index()).unwrap());
        assert!(term < h.nodes[&2].handle.term());
        let stale: Vec<Entry> = (from..=last + 5)
            .map(|index| Entry {
                entry_type: EntryType::EntryNormal,
                term,
                index,
                ..Default::default()
            })
            .collect();
        log.append(&stale).unwrap();
        log.flush().unwrap();
        let imported =
            store.import_snapshot_stream(h.nodes[&2].store.export_snapshot_stream(0).unwrap());
        assert!(imported.unwrap().applied >= last);
        assert!(store.applied_term() > term);
        store.flush().unwrap();
    }

    restarts_and_catches_up(&mut h, before).await;
}

/// Starts replica 3 again: it takes a write, converges with the others, and holds the
/// state from before it stopped and after.
async fn restarts_and_catches_up(h: &mut Harness, before: u64) {
    h.start(3, false);
    let after = h.propose(3, token("after")).await;
    h.wait_applied(after.index).await;
    h.assert_converged().await;
    let status = h.nodes[&3].handle.status().await.unwrap();
    assert!(status.snapshot_index > before, "replica 3 installed a snapshot: {status:?}");
    let store = &h.nodes[&3].store;
    assert!(store.join_token("before").is_some() && store.join_token("t59").is_some());
    assert!(store.join_token("after").is_some());
}
