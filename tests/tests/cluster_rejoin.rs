//! Replicas that start from nothing catch up from a snapshot: with a tiny snapshot
//! threshold the leader compacts its log, so a fourth replica that joins later must be sent
//! the store's snapshot, and reaches the same state digest; a replica whose data dir was
//! wiped is removed and added back with a new credential (the operator's procedure in
//! docs/cluster.md) and reaches the same digest too.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use ward_tests::cluster::{Cluster, Replica, SETTLE, json_u64};
use ward_tests::wait::{Step, poll_until};

/// Bytes of log after which replicas compact behind a snapshot: a few entries' worth.
const TINY_THRESHOLD: &str = "snapshot_threshold = 2048\n";

/// Creates entries `numbers` on the leader, each retried until acknowledged (a leader
/// change or a busy machine may refuse one).
fn write(c: &Cluster, numbers: std::ops::Range<u64>) {
    for n in numbers {
        poll_until(&format!("entry {n}"), SETTLE, || {
            Ok(match c.replica(c.leader()?)?.create_entry(n) {
                Ok(_) => Step::Done(()),
                Err(e) if format!("{e:#}").contains("similar entry already exists") => {
                    Step::Done(())
                }
                Err(e) => Step::Retry(format!("{e:#}")),
            })
        })
        .unwrap();
    }
}

#[test]
fn a_replica_joining_after_compaction_and_a_wiped_replica_catch_up_from_snapshots() {
    let mut c = Cluster::loopback(3).unwrap();
    c.form(TINY_THRESHOLD).unwrap();
    write(&c, 0..30);
    let leader = c.leader().unwrap();
    poll_until("the leader to compact its log", SETTLE, || {
        let s = c.replica(leader)?.status()?;
        Ok(match json_u64(&s["last_snapshot"]["index"]) {
            Some(i) if i > 0 => Step::Done(()),
            other => Step::Retry(format!("last snapshot {other:?}")),
        })
    })
    .unwrap();

    // A fourth replica joins; the log it would need is gone, so it gets a snapshot.
    let r4 = Replica::loopback(&c.bin, c.root(), 4).unwrap();
    c.replicas.push(r4);
    c.join(3, TINY_THRESHOLD).unwrap();
    c.wait_voters(&[1, 2, 3, 4]).unwrap();
    c.wait_entries(30).unwrap();
    let joined = c.wait_converged().unwrap();
    let served = c.replicas.iter().any(|r| {
        r.log().lines().any(|l| l.contains("serving a snapshot") && l.contains("node_id=4"))
    });
    assert!(served, "no replica logged serving a snapshot to replica 4");

    // A follower loses its data dir: the operator removes it, wipes it, adds it back.
    let leader = c.leader().unwrap();
    let lost = c.running().map(|r| r.node).find(|n| *n != leader && *n != 4).unwrap();
    c.replica_mut(lost).unwrap().kill().unwrap();
    c.replica_mut(lost).unwrap().wipe().unwrap();
    c.replica(leader).unwrap().remove(lost).unwrap();
    let mut rest: Vec<u64> = c.running().map(|r| r.node).collect();
    rest.sort_unstable();
    c.wait_voters(&rest).unwrap();
    write(&c, 30..40);
    let index = c.replicas.iter().position(|r| r.node == lost).unwrap();
    c.join(index, TINY_THRESHOLD).unwrap();
    c.wait_voters(&[1, 2, 3, 4]).unwrap();
    c.wait_entries(40).unwrap();
    let rejoined = c.wait_converged().unwrap();
    assert!(rejoined.applied_index > joined.applied_index, "{rejoined:?} after {joined:?}");
}
