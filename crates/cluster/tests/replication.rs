//! Several replicas with real sled stores on the in-memory network: election,
//! replication through any replica, failover, partitions, snapshots and rejoining.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use raft::eraftpb::MessageType;
use ward_cluster::ProposeError;
use ward_cluster::mem_network::Traffic;

mod harness;
use harness::{Harness, token};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_elect_and_writes_through_any_replica_apply_on_all() {
    tracing::info!("three replicas: bootstrap one, add two voters");
    let h = Harness::cluster(3).await;
    let leader = h.wait_leader().await;
    let status = h.nodes[&leader].handle.status().await.unwrap();
    assert_eq!(status.voters, vec![1, 2, 3]);

    tracing::info!("a write through each replica, followers forward to the leader");
    for via in [1, 2, 3] {
        let applied = h.propose(via, token(&format!("via-{via}"))).await;
        // The proposer's own replica answered only after applying it there.
        assert!(h.nodes[&via].store.join_token(&format!("via-{via}")).is_some());
        h.wait_applied(applied.index).await;
    }
    for n in h.nodes.values() {
        for via in [1, 2, 3] {
            assert!(n.store.join_token(&format!("via-{via}")).is_some());
        }
    }
    h.assert_converged().await;
}

/// Proposals that reach a replica together go to raft as one message: a follower forwards
/// them to the leader in a few messages rather than one each, the leader appends them to
/// each follower in fewer messages than entries, and every one is applied once everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_that_arrive_together_travel_together() {
    const N: u64 = 256;
    let h = Harness::steady(3).await;
    let (forwards, appends) = propose_together(&h, "together", N).await;
    // A proposal not applied within `repropose_after` (the test process stalled) is proposed
    // again, gathered with the others due then: each entry past N is allowed at most one
    // message of its own (an upper bound).
    assert!(forwards.entries >= N, "every proposal forwarded: {forwards:?}");
    let again = forwards.entries - N;
    assert!(forwards.messages <= N / 2 + again, "{forwards:?} for {N} proposals");
    assert!(appends.entries >= N, "the other follower got every entry: {appends:?}");
    let again = appends.entries - N;
    assert!(appends.messages <= N / 2 + again, "{appends:?} for {N} proposals");
    h.assert_converged().await;
}

/// Proposals gathered together are cut where they would pass raft's `max_size_per_msg`, so a
/// forwarded message is no larger than one of raft's own appends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_gathered_together_are_cut_at_the_message_size() {
    const N: u64 = 256;
    const LIMIT: u64 = 1024;
    let mut h = Harness::new();
    h.max_size_per_msg = LIMIT;
    h.election_tick = 50;
    h.form(3).await;
    let (forwards, _) = propose_together(&h, "cut", N).await;
    assert!(forwards.entries >= N, "every proposal forwarded: {forwards:?}");
    // 256 proposals of about 60 bytes: gathered, but never past the limit.
    assert!(forwards.largest as u64 <= LIMIT, "{forwards:?}");
    assert!(forwards.largest as u64 > LIMIT / 2, "{forwards:?}");
    assert!(forwards.messages >= 2, "{forwards:?}");
    h.assert_converged().await;
}

/// Proposals that are proposed again (their replica was cut off from the leader when they
/// arrived) go to the leader together too once the link is back: one forward per round of
/// retries, not one per proposal; each is applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_proposed_again_travel_together() {
    const N: u64 = 64;
    let h = Harness::steady(3).await;
    let leader = h.wait_leader().await;
    let via = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    let before = h.net.raft_traffic(via, leader, MessageType::MsgPropose);
    h.net.isolate(via);
    let handle = h.nodes[&via].handle.clone();
    let pending = tokio::spawn(futures::future::join_all((0..N).map(move |i| {
        let handle = handle.clone();
        async move { handle.propose(token(&format!("again-{i}"))).await }
    })));
    // Past `repropose_after` (1 s): every one of them is due to be proposed again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let cut_off = h.net.raft_traffic(via, leader, MessageType::MsgPropose);
    assert_eq!(cut_off.messages, before.messages, "nothing crossed while cut off");
    h.net.heal();
    let results = pending.await.unwrap();
    let last = results.into_iter().map(|r| r.expect("proposal").index).max().unwrap();
    h.wait_applied(last).await;
    let after = h.net.raft_traffic(via, leader, MessageType::MsgPropose);
    let (messages, entries) = (after.messages - before.messages, after.entries - before.entries);
    assert!(entries >= N, "every proposal forwarded: {entries} entries in {messages} messages");
    // One round of retries after the heal; a stalled test process may see one more.
    assert!(messages <= 3, "{entries} entries in {messages} messages");
    for node in h.nodes.values() {
        for i in 0..N {
            assert!(node.store.join_token(&format!("again-{i}")).is_some(), "again-{i}");
        }
    }
    h.assert_converged().await;
}

/// A write that commits in the cycle where new entries arrive is applied and answered before
/// those entries are synced (raft-rs's order for a ready: apply what committed, then append
/// and sync): with the leader's sync of the next write held, the first is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_write_is_answered_before_the_next_entries_are_synced() {
    let mut h = Harness::new();
    // Elections wait 1-2 s: the leader's driver is held below for a moment.
    h.election_tick = 50;
    h.form(3).await;
    let leader = h.wait_leader().await;
    let handle = h.nodes[&leader].handle.clone();
    let before = handle.status().await.unwrap().last_index;
    let hold = Arc::clone(&h.holds[&leader]);
    hold.arm();
    // The leader sends A to its followers, then its own sync of A is held.
    let a = tokio::spawn({
        let handle = handle.clone();
        async move { handle.propose(token("a")).await }
    });
    harness::wait_for("the leader's sync of A to be held", || hold.waiting() == 1).await;
    // Both followers hold A and have answered; the answers wait in the leader's queue.
    for f in [1, 2, 3].into_iter().filter(|id| *id != leader) {
        harness::wait_logged("a follower to append A", &h.nodes[&f].handle, before + 1).await;
    }
    // B reaches the leader's queue behind those answers.
    let mut b = Box::pin({
        let handle = handle.clone();
        async move { handle.propose(token("b")).await }
    });
    assert!(futures::poll!(b.as_mut()).is_pending());
    // A's sync completes; the next cycle commits A and appends B, whose sync is held: only
    // one flush may pass, so A is answered only if that does not wait for B's sync.
    hold.release_one();
    let answered = tokio::time::timeout(harness::WAIT, a).await;
    if answered.is_err() {
        hold.disarm();
    }
    answered.expect("A answered while the sync of B is held").unwrap().unwrap();
    harness::wait_for("the leader's sync of B to be held", || hold.waiting() == 1).await;
    let b_applied = h.nodes[&leader].store.join_token("b").is_some();
    hold.disarm();
    assert!(!b_applied, "B was not applied before its sync");
    b.await.unwrap();
    h.assert_converged().await;
}

/// A follower's answer to an append leaves only once the sync that covers it is done, so
/// with both followers' syncs held nothing commits; meanwhile a held follower goes on
/// working: a proposal made through it reaches the leader's log, and its answers to
/// heartbeats keep the leader's quorum. Released, both commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_answers_only_after_its_sync_and_forwards_while_it_runs() {
    let mut h = Harness::new();
    // Elections wait 1-2 s: the followers' answers are held below for a moment.
    h.election_tick = 50;
    h.form(3).await;
    let leader = h.wait_leader().await;
    let followers: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    let lh = h.nodes[&leader].handle.clone();
    let last_before = lh.status().await.unwrap().last_index;
    // Everything applied everywhere first: no flush of an earlier change is held below.
    h.wait_applied(last_before).await;
    let applied_before = lh.applied();
    for f in &followers {
        h.holds[f].arm();
    }
    let a = tokio::spawn({
        let lh = lh.clone();
        async move { lh.propose(token("a")).await }
    });
    for f in &followers {
        let hold = Arc::clone(&h.holds[f]);
        harness::wait_for("a follower's sync of A to be held", || hold.waiting() == 1).await;
    }
    // Only the leader holds A durably: one of three, not a majority.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(lh.applied(), applied_before, "A committed without a follower's sync");
    assert!(h.nodes[&leader].store.join_token("a").is_none());
    // The first follower is not held itself: B, proposed through it, reaches the leader.
    let via = followers[0];
    let term = lh.term();
    let forwards = h.net.raft_traffic(via, leader, MessageType::MsgPropose).messages;
    let b = tokio::spawn({
        let fh = h.nodes[&via].handle.clone();
        async move { fh.propose(token("b")).await }
    });
    harness::wait_logged("B to reach the leader while the sync is held", &lh, last_before + 2)
        .await;
    // Forwarded by the held follower, to the same leader: not an entry of a new term.
    assert!(h.net.raft_traffic(via, leader, MessageType::MsgPropose).messages > forwards);
    // The held followers' answers to heartbeats keep flowing (without them check-quorum
    // would depose the leader after an election timeout).
    for f in &followers {
        let answers = || h.net.raft_traffic(*f, leader, MessageType::MsgHeartbeatResponse);
        let before = answers().messages;
        harness::wait_for("a held follower to answer a heartbeat", || answers().messages > before)
            .await;
    }
    assert_eq!((lh.term(), lh.leader()), (term, Some(leader)), "the leader lost its quorum");
    assert!(h.nodes[&leader].store.join_token("a").is_none());
    h.holds[&via].disarm();
    a.await.unwrap().unwrap();
    b.await.unwrap().unwrap();
    h.holds[&followers[1]].disarm();
    h.assert_converged().await;
}

/// A follower left the only voter (its leader removed itself) while the sync of a later
/// entry is still running: asked to campaign (or at its next tick), raft-rs takes it from
/// follower to leader inside one call and requires its whole log durable then
/// (`become_leader` asserts it). The replica syncs first, then leads, and commits the entry;
/// the removed leader stepped down and keeps running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_left_the_only_voter_syncs_before_it_leads() {
    let mut h = Harness::new();
    h.election_tick = 50;
    h.form(2).await;
    let leader = h.wait_leader().await;
    let f = if leader == 1 { 2 } else { 1 };
    let lh = h.nodes[&leader].handle.clone();
    let fh = h.nodes[&f].handle.clone();
    // The follower holds and has applied everything first, so the sync held next is R's.
    let caught_up = lh.status().await.unwrap().last_index;
    harness::wait_for("the follower to catch up", || fh.applied() >= caught_up).await;
    let hold = Arc::clone(&h.holds[&f]);
    hold.arm_elsewhere();
    // R, the leader's removal, reaches the follower alone; its sync there is held.
    let removal = tokio::spawn({
        let lh = lh.clone();
        async move { lh.change_membership(ward_cluster::MembershipChange::Remove(leader)).await }
    });
    harness::wait_for("the follower's sync of R to be held", || hold.waiting() == 1).await;
    let r_index = fh.status().await.unwrap().last_index;
    // X follows in an append of its own (R is not committed, so the leader takes it).
    let x = tokio::spawn({
        let lh = lh.clone();
        async move { lh.propose(token("x")).await }
    });
    harness::wait_logged("X to reach the follower", &fh, r_index + 1).await;
    // R's sync goes; X's is held next. R commits, and the follower, now the only voter,
    // applies it.
    hold.release_one();
    let removed = removal.await.unwrap().expect("the leader removes itself");
    assert_eq!(removed, r_index);
    harness::wait_for("the follower to apply R", || fh.applied() >= removed).await;
    harness::wait_for("the follower's sync of X to be held", || hold.waiting() == 1).await;
    // Made durable where it is written first (not held), the follower leads.
    fh.campaign().unwrap();
    harness::wait_for("the follower to lead", || fh.leader() == Some(f)).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(100), fh.stopped()).await.is_err(),
        "the follower stopped"
    );
    hold.disarm();
    harness::wait_for("X to commit", || h.nodes[&f].store.join_token("x").is_some()).await;
    assert!(tokio::time::timeout(Duration::from_millis(100), fh.stopped()).await.is_err());
    // The removed leader stepped down when it applied R: counting the follower's answer
    // for X as a leader without a progress entry of its own would have panicked.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), lh.stopped()).await.is_err(),
        "the removed leader stopped"
    );
    assert_ne!(lh.leader(), Some(leader));
    let _ = tokio::time::timeout(harness::WAIT, x).await;
}

/// Proposes `n` join tokens at once through a follower and waits until all are applied
/// everywhere; returns the forwards from that follower to the leader and the appends from the
/// leader to the other follower meanwhile.
async fn propose_together(h: &Harness, prefix: &str, n: u64) -> (Traffic, Traffic) {
    let leader = h.wait_leader().await;
    let via = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    let other = [1, 2, 3].into_iter().find(|id| *id != leader && *id != via).unwrap();
    let forwards = h.net.raft_traffic(via, leader, MessageType::MsgPropose);
    let appends = h.net.raft_traffic(leader, other, MessageType::MsgAppend);
    let handle = h.nodes[&via].handle.clone();
    let results =
        futures::future::join_all((0..n).map(|i| handle.propose(token(&format!("{prefix}-{i}")))))
            .await;
    let last = results.into_iter().map(|r| r.expect("proposal").index).max().unwrap();
    h.wait_applied(last).await;
    for node in h.nodes.values() {
        for i in 0..n {
            assert!(node.store.join_token(&format!("{prefix}-{i}")).is_some(), "{prefix}-{i}");
        }
    }
    let since = |now: Traffic, before: Traffic| Traffic {
        messages: now.messages - before.messages,
        entries: now.entries - before.entries,
        largest: now.largest,
    };
    (
        since(h.net.raft_traffic(via, leader, MessageType::MsgPropose), forwards),
        since(h.net.raft_traffic(leader, other, MessageType::MsgAppend), appends),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_index_on_a_follower_sees_a_write_made_through_the_leader() {
    let h = Harness::steady(3).await;
    let leader = h.wait_leader().await;
    let follower = *h.nodes.keys().find(|id| **id != leader).unwrap();
    // Slow the follower down so it cannot have applied the write by chance.
    h.net.delay(follower, Duration::from_millis(200));
    let applied = h.propose(leader, token("fresh")).await;
    let index = h.nodes[&follower].handle.read_index().await.unwrap();
    assert!(index >= applied.index, "read index {index} before the write at {}", applied.index);
    assert!(h.nodes[&follower].store.join_token("fresh").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_stop_elects_a_new_leader_and_writes_resume() {
    let mut h = Harness::cluster(3).await;
    h.propose(1, token("before")).await;
    let old = h.wait_leader().await;
    tracing::info!(old, "stopping the leader");
    h.stop(old).await;
    let new = h.wait_leader().await;
    assert_ne!(new, old);
    let survivor = *h.nodes.keys().next().unwrap();
    let applied = h.propose(survivor, token("after")).await;
    h.wait_applied(applied.index).await;

    tracing::info!("the old leader restarts and catches up");
    h.start(old, false);
    h.wait_applied(applied.index).await;
    assert!(h.nodes[&old].store.join_token("after").is_some());
    h.assert_converged().await;
}

/// A proposal the leader appended, then lost its leadership (cut off, it steps down): at
/// its deadline its outcome is unknown (a new leader may still commit it), so it fails as a
/// timeout, never as "no leader", which would tell the client nothing was written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proposal_taken_by_a_leader_that_then_stepped_down_times_out() {
    let h = Harness::cluster(3).await;
    let leader = h.wait_leader().await;
    let handle = h.nodes[&leader].handle.clone();
    h.net.isolate(leader);
    let deadline = std::time::Instant::now() + Duration::from_millis(1500);
    let pending = handle.propose_until(token("appended"), deadline);
    tokio::pin!(pending);
    assert!(futures::poll!(&mut pending).is_pending());
    harness::wait_for("the cut-off leader to step down", || handle.leader().is_none()).await;
    let err = pending.await.unwrap_err();
    assert_eq!(err, ProposeError::Timeout);
    // One never taken (no leader known when it arrived) fails as "no leader".
    let err = handle
        .propose_until(token("dropped"), std::time::Instant::now() + Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(err, ProposeError::NotLeader { leader_hint: None }), "{err:?}");
    h.net.heal();
    h.wait_leader().await;
    h.assert_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_follower_catches_up_after_heal() {
    let h = Harness::cluster(3).await;
    let leader = h.wait_leader().await;
    let follower = *h.nodes.keys().find(|id| **id != leader).unwrap();
    h.net.isolate(follower);
    tracing::info!(follower, "writes while a follower is cut off");
    let mut last = 0;
    for i in 0..20 {
        last = h.propose(leader, token(&format!("p{i}"))).await.index;
    }
    assert!(h.nodes[&follower].store.join_token("p19").is_none());
    // A proposal on the cut-off replica has nowhere to go.
    let err = h.nodes[&follower]
        .handle
        .propose_until(token("lost"), std::time::Instant::now() + Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(err, ProposeError::NotLeader { .. } | ProposeError::Timeout), "{err:?}");
    h.net.heal();
    h.wait_applied(last).await;
    assert!(h.nodes[&follower].store.join_token("p19").is_some());
    h.assert_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_data_was_wiped_rejoins() {
    let mut h = Harness::cluster(3).await;
    for i in 0..10 {
        h.propose(1, token(&format!("w{i}"))).await;
    }
    let leader = h.wait_leader().await;
    let victim = *h.nodes.keys().find(|id| **id != leader).unwrap();
    h.wipe(victim).await;
    let applied = h.propose(leader, token("while-wiped")).await;
    h.start(victim, false);
    h.wait_applied(applied.index).await;
    assert!(h.nodes[&victim].store.join_token("w0").is_some());
    assert!(h.nodes[&victim].store.join_token("while-wiped").is_some());
    h.assert_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_the_store_cannot_apply_stops_the_replica_and_fails_its_waiters() {
    use protobuf::Message as _;
    use raft::eraftpb::{Entry, Message, MessageType};

    let h = Harness::cluster(2).await;
    let leader = h.wait_leader().await;
    let victim = if leader == 1 { 2 } else { 1 };
    h.propose(leader, token("before")).await;
    h.assert_converged().await;
    h.net.isolate(victim);
    let handle = h.nodes[&victim].handle.clone();
    // Polled once here, so the proposal is queued before the wait below looks at the queue
    // (a spawned task might not have run yet, and an empty queue would prove nothing).
    let mut proposal = Box::pin({
        let handle = handle.clone();
        async move {
            handle
                .propose_until(token("stuck"), std::time::Instant::now() + Duration::from_secs(60))
                .await
        }
    });
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(proposal.as_mut().poll(cx))).await;
    assert!(first.is_pending(), "the proposal was answered at once: {first:?}");
    let waiting = tokio::spawn(proposal);
    harness::wait_for("the proposal to reach the driver", || handle.queued() == 0).await;

    tracing::info!("the leader's id sends an entry whose bytes are no command");
    let status = handle.status().await.unwrap();
    let applied_before = h.nodes[&victim].store.last_applied();
    let entry = Entry {
        index: status.last_index + 1,
        term: status.term,
        data: b"not a log entry".to_vec().into(),
        ..Default::default()
    };
    let mut msg = Message {
        from: leader,
        to: victim,
        term: status.term,
        log_term: status.last_term,
        index: status.last_index,
        commit: status.last_index + 1,
        ..Default::default()
    };
    msg.set_msg_type(MessageType::MsgAppend);
    msg.mut_entries().push(entry);
    handle.receive(leader, &msg.write_to_bytes().unwrap()).unwrap();

    let reason = handle.stopped().await.unwrap_err();
    assert!(reason.contains("store"), "{reason}");
    let answer = waiting.await.unwrap();
    assert!(matches!(answer, Err(ProposeError::Fatal(_))), "{answer:?}");
    assert!(matches!(handle.propose(token("after")).await, Err(ProposeError::Fatal(_))));
    // Nothing of the bad entry reached the state.
    assert!(h.nodes[&victim].store.join_token("before").is_some());
    assert_eq!(h.nodes[&victim].store.last_applied(), applied_before);
}

/// The log is compacted only as far as the store has made durable, while the flush that
/// lets it go further runs beside the driver: after every write the compacted point is at
/// or below the store's durable index, and compaction keeps up with the writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_never_passes_what_the_store_made_durable() {
    let mut h = Harness::new();
    h.compact_log_bytes = 2048;
    h.start(1, true);
    h.wait_leader().await;
    for i in 0..200 {
        h.propose(1, token(&format!("d{i}"))).await;
        let status = h.nodes[&1].handle.status().await.unwrap();
        // Read after the status: the durable index only grows.
        let durable = h.nodes[&1].store.durable_applied();
        assert!(
            status.first_index.saturating_sub(1) <= durable,
            "compacted to {} with only {durable} durable",
            status.first_index.saturating_sub(1)
        );
    }
    let status = h.nodes[&1].handle.status().await.unwrap();
    assert!(status.first_index > 100, "compaction kept up with the writes: {status:?}");
}

/// Replica 1 alone, with 60 tokens `s0..s59` written and a log so small a threshold that it
/// was compacted: only a snapshot can bring a newcomer up to date. Returns the harness and
/// the last index written.
async fn one_replica_with_a_compacted_log() -> (Harness, u64) {
    let mut h = Harness::new();
    h.compact_log_bytes = 2048;
    h.start(1, true);
    h.wait_leader().await;
    let mut last = 0;
    for i in 0..60 {
        last = h.propose(1, token(&format!("s{i}"))).await.index;
    }
    let status = h.nodes[&1].handle.status().await.unwrap();
    assert!(status.first_index > 1, "the log was compacted: {status:?}");
    (h, last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_replica_catches_up_from_a_snapshot() {
    let (mut h, last) = one_replica_with_a_compacted_log().await;
    h.start(2, false);
    h.add_voter(2).await;
    h.wait_applied(last).await;
    let status = h.nodes[&2].handle.status().await.unwrap();
    assert!(status.snapshot_index > 0, "replica 2 installed a snapshot: {status:?}");
    assert!(h.nodes[&2].store.join_token("s0").is_some());
    let applied = h.propose(2, token("after-join")).await;
    h.wait_applied(applied.index).await;
    h.assert_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_snapshot_pull_failed_gets_a_new_snapshot_after_restarting() {
    let (mut h, last) = one_replica_with_a_compacted_log().await;

    tracing::info!("replica 2 talks raft with the leader but its snapshot pulls fail");
    h.snapshot_pull_timeout = Duration::from_millis(500);
    h.net.refuse_snapshots(2);
    h.start(2, false);
    let leader = h.nodes[&1].handle.clone();
    harness::retry("adding a learner", || {
        let leader = leader.clone();
        async move { leader.change_membership(ward_cluster::MembershipChange::AddLearner(2)).await }
    })
    .await;
    let reason = h.nodes[&2].handle.stopped().await.unwrap_err();
    assert!(reason.contains("snapshot"), "{reason}");
    assert!(h.nodes[&2].store.join_token("s0").is_none());

    tracing::info!("healed and restarted on the same data, it is sent a snapshot again");
    h.net.heal();
    h.net.unregister(2);
    h.nodes.remove(&2);
    h.start(2, false);
    h.wait_applied(last).await;
    assert!(h.nodes[&2].store.join_token("s0").is_some());
    assert!(h.nodes[&2].handle.status().await.unwrap().snapshot_index > 0);
    let applied = h.propose(1, token("after")).await;
    h.wait_applied(applied.index).await;
    h.assert_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proposal_that_reaches_its_replica_only_inside_a_snapshot_is_answered_as_applied() {
    let mut h = Harness::new();
    h.compact_log_bytes = 2048;
    h.start(1, true);
    h.wait_leader().await;
    h.start(2, false);
    h.add_voter(2).await;
    h.start(3, false);
    h.add_voter(3).await;
    let leader = h.wait_leader().await;
    let follower = *h.nodes.keys().find(|id| **id != leader).unwrap();

    tracing::info!("the follower forwards a proposal but hears nothing back from the leader");
    h.net.cut(leader, follower);
    let handle = h.nodes[&follower].handle.clone();
    let pending = tokio::spawn(async move {
        handle
            .propose_until(token("seen-late"), std::time::Instant::now() + Duration::from_secs(60))
            .await
    });
    let leader_store = h.nodes[&leader].store.clone();
    harness::wait_for("the leader to apply the forwarded proposal", || {
        leader_store.join_token("seen-late").is_some()
    })
    .await;
    tracing::info!("the leader compacts past it, so the follower can only get it in a snapshot");
    let mut last = 0;
    for i in 0..60 {
        last = h.propose(leader, token(&format!("c{i}"))).await.index;
    }
    h.net.heal();
    let answer = pending.await.unwrap();
    assert!(
        matches!(answer, Err(ProposeError::AppliedUnobserved { .. })),
        "the proposer learns that its write took effect: {answer:?}"
    );
    h.wait_applied(last).await;
    assert!(h.nodes[&follower].store.join_token("seen-late").is_some());
    h.assert_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_proposal_lost_on_the_way_is_proposed_again_and_answered() {
    let h = Harness::cluster(3).await;
    let leader = h.wait_leader().await;
    let follower = *h.nodes.keys().find(|id| **id != leader).unwrap();
    // The follower still hears the leader, but what it forwards is lost.
    h.net.cut(follower, leader);
    let handle = h.nodes[&follower].handle.clone();
    let pending = handle.propose(token("retried"));
    tokio::pin!(pending);
    assert!(futures::poll!(&mut pending).is_pending());
    // The driver took the proposal and finished the cycle that forwarded it (into the cut).
    harness::wait_for("the driver to take the proposal", || handle.queued() == 0).await;
    let seen = handle.timings().readies;
    harness::wait_for("the forwarding cycle to end", || handle.timings().readies >= seen + 2).await;
    h.net.heal();
    let applied = pending.await.unwrap();
    assert_eq!(applied.outcome, ward_store::Outcome::JoinTokenCreated(Ok(None)));
    h.wait_applied(applied.index).await;
    h.assert_converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_index_alone_is_not_flushed() {
    // Writes one at a time: each replica must make each new entry durable (one flush), but
    // learning that it committed (an append or heartbeat carrying only the commit index, or
    // the leader counting acknowledgements) needs no flush of its own.
    const WRITES: u64 = 20;
    let h = Harness::steady(3).await;
    let leader = h.wait_leader().await;
    let applied = h.propose(leader, token("settle")).await;
    h.wait_applied(applied.index).await;
    let before: Vec<(u64, u64)> =
        h.nodes.iter().map(|(id, n)| (*id, n.handle.timings().flushes)).collect();
    for i in 0..WRITES {
        let applied = h.propose(leader, token(&format!("one-{i}"))).await;
        h.wait_applied(applied.index).await;
    }
    for (id, flushes_before) in before {
        let flushes = h.nodes[&id].handle.timings().flushes - flushes_before;
        // One per write; the margin covers an election on a loaded machine. Flushing the
        // commit index as well took two per write on every replica.
        assert!(
            flushes < WRITES + WRITES / 2,
            "replica {id} (leader {leader}) flushed {flushes} times for {WRITES} writes"
        );
        assert!(flushes >= WRITES, "replica {id} flushed {flushes} times for {WRITES} new entries");
    }
    h.assert_converged().await;
}

/// Writes one at a time, sent to each replica in turn (followers forward them), with a
/// 50 ms sync gap (longer than a write takes, so every sync is due within it): after the first window of waits that gather nothing (16), no replica's
/// log sync waits for others, except one probe every 256 syncs. A gap that kept holding
/// lone writes would cost each of them up to the gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lone_writes_to_three_replicas_are_not_held_by_a_sync_gap() {
    const WRITES: u64 = 200;
    let mut h = Harness::new();
    h.election_tick = 50;
    h.sync_gap = std::time::Duration::from_millis(50);
    h.form(3).await;
    let leader = h.wait_leader().await;
    let applied = h.propose(leader, token("settle")).await;
    h.wait_applied(applied.index).await;
    let ids: Vec<u64> = h.nodes.keys().copied().collect();
    for i in 0..WRITES {
        let via = ids[(i % 3) as usize];
        let applied = h.propose(via, token(&format!("lone-{i}"))).await;
        h.wait_applied(applied.index).await;
    }
    for (id, node) in &h.nodes {
        let t = node.handle.timings();
        assert!(t.flushes >= WRITES, "replica {id} synced {} times", t.flushes);
        // The window of 16 after each start, a probe per 256 syncs, and a margin for the
        // forming of the cluster and an election on a loaded machine.
        assert!(t.sync_waits <= 16 + 4, "replica {id}: {} of its syncs waited", t.sync_waits);
    }
    h.assert_converged().await;
}
