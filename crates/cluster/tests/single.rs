//! A one-member cluster: the path `ward-server run` takes without a cluster config.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;

use ward_cluster::{ClusterConfig, LogStore, MemLogStore, ProposeError, Replica, SledLogStore};
use ward_store::{Outcome, Store, StoreConfig};

mod harness;
use harness::{FlushHold, HeldLog, token, trust_domain};

/// Starts replica 1 over `store` and `log`, with no transport.
fn start_alone(
    store: &Store,
    log: impl LogStore,
    bootstrap: bool,
) -> Result<ward_cluster::ClusterHandle, ward_cluster::StartError> {
    let mut config = ClusterConfig::new(1);
    config.bootstrap = bootstrap;
    start_with(store, log, config)
}

/// Starts replica 1 over `store` and `log` with `config`, with no transport.
fn start_with(
    store: &Store,
    log: impl LogStore,
    config: ClusterConfig,
) -> Result<ward_cluster::ClusterHandle, ward_cluster::StartError> {
    ward_cluster::start(Replica {
        config,
        store: store.clone(),
        log,
        transport: None,
        snapshots: None,
        runtime: tokio::runtime::Handle::current(),
    })
}

fn one_member(store: &Store, log: impl LogStore) -> ward_cluster::ClusterHandle {
    start_alone(store, log, true).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_member_applies_proposals_and_restarts_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let mut last = 0;
    for round in 0..2 {
        let store = Store::open(dir.path(), StoreConfig::new(trust_domain())).unwrap();
        let handle = one_member(&store, SledLogStore::open(&store).unwrap());
        for i in 0..3 {
            let applied = handle.propose(token(&format!("t{round}-{i}"))).await.unwrap();
            assert_eq!(applied.outcome, Outcome::JoinTokenCreated(Ok(None)));
            assert!(applied.index > last, "indexes grow: {} after {last}", applied.index);
            last = applied.index;
        }
        assert!(store.join_token(&format!("t{round}-2")).is_some());
        handle.shutdown();
        assert_eq!(handle.stopped().await, Ok(()));
        assert_eq!(handle.propose(token("late")).await, Err(ProposeError::ShuttingDown));
    }
    let store = Store::open(dir.path(), StoreConfig::new(trust_domain())).unwrap();
    assert!(store.join_token("t0-0").is_some() && store.join_token("t1-2").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_single_server_state_becomes_a_one_member_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreConfig::new(trust_domain())).unwrap();
    // Written the way the single-server proposer writes: no raft log at all.
    for i in 1..=5 {
        store.apply(i, &token(&format!("old-{i}"))).unwrap();
    }
    let handle = one_member(&store, SledLogStore::open(&store).unwrap());
    let applied = handle.propose(token("new")).await.unwrap();
    assert!(applied.index > 5, "continues after the existing state, got {}", applied.index);
    assert!(store.join_token("old-5").is_some() && store.join_token("new").is_some());
}

/// While the log's sync thread is held inside the first proposal's sync, the driver goes on
/// taking proposals into the log; the 99 that arrive meanwhile are made durable together,
/// and none is answered before its sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_that_arrive_during_a_sync_share_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreConfig::new(trust_domain())).unwrap();
    let hold = Arc::new(FlushHold::default());
    let handle = one_member(&store, HeldLog::new(MemLogStore::new(), Arc::clone(&hold)));
    harness::wait_for("leadership", || handle.leader() == Some(1) && handle.applied() >= 2).await;
    hold.arm();
    let first = tokio::spawn({
        let h = handle.clone();
        async move { h.propose(token("first")).await }
    });
    harness::wait_for("the first proposal's sync to be held", || hold.waiting() == 1).await;
    let before = hold.flushes();
    let last_before = handle.status().await.unwrap().last_index;
    let applied_before = handle.applied();
    let mut rest = Vec::new();
    for i in 0..99 {
        let h = handle.clone();
        rest.push(tokio::spawn(async move { h.propose(token(&format!("t{i}"))).await }));
    }
    // The driver is not held: all 99 reach the log while the sync is.
    harness::wait_logged("the proposals to reach the log", &handle, last_before + 99).await;
    // Nothing of it is applied (a one-member cluster commits only what it holds durably).
    assert_eq!(handle.applied(), applied_before);
    assert!(store.join_token("first").is_none() && store.join_token("t0").is_none());
    hold.disarm();
    first.await.unwrap().unwrap();
    for r in rest {
        r.await.unwrap().unwrap();
    }
    let after = hold.flushes();
    assert!(
        after - before <= 3,
        "99 proposals made while a sync ran took {} syncs",
        after - before
    );
    assert!(store.join_token("t98").is_some());
}

/// A step that takes 10 ms or more is counted in the status with the longest one: a flush
/// held for 40 ms on the driver's thread makes a slow raft cycle, and a sync held for 40 ms
/// on the log's sync thread a slow log sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_cycles_and_slow_log_syncs_are_counted_in_the_status() {
    use ward_cluster::WalLogStore;
    const HELD: std::time::Duration = std::time::Duration::from_millis(40);
    // Holds the next flush of `hold` for `HELD` while one proposal waits for it.
    async fn hold_one_flush(handle: &ward_cluster::ClusterHandle, hold: &FlushHold, name: &str) {
        let proposal = tokio::spawn({
            let h = handle.clone();
            let name = name.to_owned();
            async move { h.propose(token(&name)).await }
        });
        harness::wait_for("the proposal's flush to be held", || hold.waiting() == 1).await;
        tokio::time::sleep(HELD).await;
        hold.disarm();
        proposal.await.unwrap().unwrap();
    }
    let held_ms = u64::try_from(HELD.as_millis()).unwrap();

    // The driver's thread: a log without a sync thread is flushed where it is written.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreConfig::new(trust_domain())).unwrap();
    let hold = Arc::new(FlushHold::default());
    let handle = one_member(&store, HeldLog::on_driver(MemLogStore::new(), Arc::clone(&hold)));
    harness::wait_for("leadership", || handle.leader() == Some(1) && handle.applied() >= 2).await;
    let before = handle.status().await.unwrap();
    hold.arm();
    hold_one_flush(&handle, &hold, "held-here").await;
    let after = handle.status().await.unwrap();
    assert!(
        after.slow_cycles.count > before.slow_cycles.count,
        "a cycle held {held_ms} ms is counted: {:?} then {:?}",
        before.slow_cycles,
        after.slow_cycles
    );
    assert!(after.slow_cycles.slowest_ms >= held_ms, "{:?}", after.slow_cycles);
    assert_eq!(after.slow_syncs, before.slow_syncs, "no sync ran on a sync thread");
    handle.shutdown();
    handle.stopped().await.unwrap();

    // The log's sync thread: the journal hands its syncs to it.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store"), StoreConfig::new(trust_domain())).unwrap();
    let log = WalLogStore::open(&dir.path().join("raft-log")).unwrap();
    let hold = Arc::new(FlushHold::default());
    let handle = one_member(&store, HeldLog::new(log, Arc::clone(&hold)));
    harness::wait_for("leadership", || handle.leader() == Some(1) && handle.applied() >= 2).await;
    let before = handle.status().await.unwrap();
    hold.arm_elsewhere();
    hold_one_flush(&handle, &hold, "held-elsewhere").await;
    let after = handle.status().await.unwrap();
    assert!(
        after.slow_syncs.count > before.slow_syncs.count,
        "a sync held {held_ms} ms is counted: {:?} then {:?}",
        before.slow_syncs,
        after.slow_syncs
    );
    assert!(after.slow_syncs.slowest_ms >= held_ms, "{:?}", after.slow_syncs);
    handle.shutdown();
    handle.stopped().await.unwrap();
}

/// A log whose entry at the store's applied index has another term than the one the store
/// applied (an older leader's uncommitted tail, replaced by a snapshot the store imported
/// just before a crash) is not trusted: the replica forgets it and waits for a snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_of_another_term_at_the_applied_index_is_forgotten_at_start() {
    use raft::eraftpb::{ConfState, Entry, HardState};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreConfig::new(trust_domain())).unwrap();
    let applied: Vec<ward_store::Committed<'_>> =
        (1..=3).map(|index| ward_store::Committed::Empty { index, term: 2 }).collect();
    store.apply_committed(&applied).unwrap();
    let start = |log: MemLogStore| start_alone(&store, log, false).unwrap();
    let log_of_term = |term: u64| {
        let mut log = MemLogStore::new();
        let entries: Vec<Entry> =
            (1..=5).map(|index| Entry { index, term, ..Default::default() }).collect();
        log.append(&entries).unwrap();
        log.set_hard_state(&HardState { term, vote: 1, commit: 3, ..Default::default() }).unwrap();
        log.set_conf_state(&ConfState { voters: vec![1, 2, 3], ..Default::default() }).unwrap();
        log
    };

    // The same term at the applied index: the log is kept.
    let handle = start(log_of_term(2));
    assert_eq!(handle.status().await.unwrap().last_index, 5);
    handle.shutdown();
    handle.stopped().await.unwrap();

    // Another term there: forgotten (term and vote kept).
    let handle = start(log_of_term(1));
    let status = handle.status().await.unwrap();
    assert_eq!((status.last_index, status.term), (0, 1), "{status:?}");
    handle.shutdown();
    handle.stopped().await.unwrap();
}

/// A membership change is on disk in the raft log once it is applied, with no later write
/// to carry it: a restart takes the membership from the log and replays only what the
/// store has not applied, so a change left in memory would come back as the old members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_applied_membership_change_is_durable_in_the_journal_without_a_later_write() {
    use ward_cluster::{MembershipChange, WalLogStore};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store"), StoreConfig::new(trust_domain())).unwrap();
    let log_dir = dir.path().join("raft-log");
    let handle = one_member(&store, WalLogStore::open(&log_dir).unwrap());
    handle.propose(token("first")).await.unwrap();
    handle.change_membership(MembershipChange::AddLearner(2)).await.unwrap();
    // What is on disk now, as a crash would leave it: the files, not the driver's memory.
    let copy = tempfile::tempdir().unwrap();
    for file in std::fs::read_dir(&log_dir).unwrap() {
        let path = file.unwrap().path();
        std::fs::copy(&path, copy.path().join(path.file_name().unwrap())).unwrap();
    }
    let on_disk = WalLogStore::open(copy.path()).unwrap();
    let members = on_disk.conf_state().unwrap();
    assert_eq!((members.voters, members.learners), (vec![1], vec![2]));
    handle.shutdown();
    handle.stopped().await.unwrap();
}

/// A replica whose store belongs to a cluster but whose raft log is gone (deleted, or a
/// new disk for the log) refuses to start instead of bootstrapping a second cluster over
/// the same state or voting without the vote it cast.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_of_a_cluster_with_its_raft_log_gone_refuses_to_start() {
    use ward_cluster::WalLogStore;
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("raft-log");
    {
        let store =
            Store::open(dir.path().join("store"), StoreConfig::new(trust_domain())).unwrap();
        let handle = one_member(&store, WalLogStore::open(&log_dir).unwrap());
        handle.propose(token("first")).await.unwrap();
        handle.shutdown();
        handle.stopped().await.unwrap();
        store.flush().unwrap();
    }
    std::fs::remove_dir_all(&log_dir).unwrap();
    let store = Store::open(dir.path().join("store"), StoreConfig::new(trust_domain())).unwrap();
    let started = start_alone(&store, WalLogStore::open(&log_dir).unwrap(), true);
    let Err(err) = started else { panic!("a replica that lost its raft log started") };
    assert!(err.to_string().contains("this replica lost its raft log"), "{err}");
    assert!(store.join_token("first").is_some(), "the state is kept as it was");
}

/// One write at a time (each proposer waits for its answer before the next): a sync that
/// waits for more writes gathers nothing, so after a window of 16 such waits the syncs stop
/// waiting (`ClusterConfig::sync_gap`); with a zero gap no sync ever waits. With a 50 ms
/// gap every write is due within it of the last sync, so the whole window is waited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_write_at_a_time_is_not_held_for_others() {
    use std::time::Duration;
    for gap in [Duration::from_millis(50), Duration::from_millis(3), Duration::ZERO] {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreConfig::new(trust_domain())).unwrap();
        let mut config = ClusterConfig::new(1);
        config.bootstrap = true;
        config.sync_gap = gap;
        let handle = start_with(&store, MemLogStore::new(), config).unwrap();
        for i in 0..300 {
            handle.propose(token(&format!("t{i}"))).await.unwrap();
        }
        let t = handle.timings();
        assert!(t.flushes >= 300, "each write was synced: {} flushes", t.flushes);
        if gap.is_zero() {
            assert_eq!(t.sync_waits, 0, "a zero gap never waits");
        } else {
            // At most one window of waits, then a probe every 256 syncs.
            assert!(t.sync_waits <= 16 + 2, "{} of 300 lone writes waited", t.sync_waits);
        }
        if gap >= Duration::from_millis(50) {
            assert!(t.sync_waits >= 16, "only {} waits with a {gap:?} gap", t.sync_waits);
        }
        handle.shutdown();
        assert_eq!(handle.stopped().await, Ok(()));
    }
}
