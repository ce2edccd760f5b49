//! A replica removed from a running three-replica cluster stops serving once it learns of
//! its removal (its process exits with a sentence saying so, as etcd stops a removed
//! member), `cluster remove -output json` prints `{}`, and the removed replica restarted on
//! its old data directory refuses to start instead of serving a state that no longer follows
//! the cluster.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use ward_tests::cluster::Cluster;

const REMOVED: &str = "replica 3 was removed from the cluster; it stops serving";

#[test]
fn a_removed_replica_stops_serving_and_does_not_start_again() {
    let mut c = Cluster::start_loopback(3, "").unwrap();
    let leader = c.leader().unwrap();
    // Keep the leader: remove a follower (move leadership off replica 3 first).
    if leader == 3 {
        c.replicas[2].cli.ok(&["cluster", "transfer-leader"], &["-nodeId", "1"]).unwrap();
    }
    let leader = c.leader().unwrap();
    assert_ne!(leader, 3);
    c.replica(leader).unwrap().create_entry(1).unwrap();
    c.wait_entries(1).unwrap();

    // Phase 1: remove replica 3 on the leader; the command prints JSON.
    let out = c
        .replica(leader)
        .unwrap()
        .cli
        .ok(&["cluster", "remove"], &["-nodeId", "3", "-output", "json"])
        .unwrap();
    assert_eq!(out.stdout.trim(), "{}");

    // Phase 2: replica 3 learns it was removed and stops, saying why.
    let r3 = c.replica_mut(3).unwrap();
    let log = r3.wait_exited().unwrap();
    assert!(log.contains(REMOVED), "{log}");
    let before = log.len();
    let refused = r3.cli.raw(&["entry", "count"], &[]).unwrap();
    assert_eq!(refused.status.code(), Some(1), "{}", refused.describe());
    assert_eq!(c.replica(leader).unwrap().voters(), vec![1, 2]);
    let r3 = c.replica_mut(3).unwrap();

    // Phase 3: started again on its data directory, it refuses to serve.
    r3.start().unwrap();
    let log = r3.wait_exited().unwrap();
    let restart = &log[before..];
    assert!(restart.contains(REMOVED), "{restart}");
    assert!(!restart.contains("server started"), "{restart}");

    // The others go on.
    c.replica(leader).unwrap().create_entry(2).unwrap();
    for node in [1, 2] {
        c.replica(node).unwrap().wait_entries(2).unwrap();
    }
}
