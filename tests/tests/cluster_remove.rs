//! A replica removed from a running three-replica cluster stops serving once it learns of
//! its removal (its process exits with a sentence saying so, as etcd stops a removed
//! member), `cluster remove -output json` prints `{}`, and the removed replica restarted on
//! its old data directory refuses to start instead of serving a state that no longer follows
//! the cluster. Two removals asked at once never leave the cluster without a quorum of live
//! voters.
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

/// Two removals asked at once are checked one after the other, each against the membership
/// the other left: with four voters and one of them dead, removing two live ones at once
/// would leave the leader and the dead voter, no quorum. One removal goes through, the other
/// is refused, and the cluster keeps taking writes.
#[test]
fn two_removals_at_once_never_leave_the_cluster_without_a_live_quorum() {
    let mut c = Cluster::start_loopback(4, "").unwrap();
    let leader = c.leader().unwrap();
    let others: Vec<u64> = (1..=4).filter(|n| *n != leader).collect();
    let (a, b, dead) = (others[0], others[1], others[2]);
    c.replica_mut(dead).unwrap().kill().unwrap();

    let cli = &c.replica(leader).unwrap().cli;
    let outs: Vec<_> = std::thread::scope(|s| {
        let asked: Vec<_> = [a, b]
            .into_iter()
            .map(|n| {
                s.spawn(move || {
                    cli.raw(&["cluster", "remove"], &["-nodeId", &n.to_string()]).unwrap()
                })
            })
            .collect();
        asked.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let describe = || outs.iter().map(|o| o.describe()).collect::<Vec<_>>().join("\n");
    let removed: Vec<u64> = [a, b]
        .into_iter()
        .zip(&outs)
        .filter(|(_, o)| o.status.code() == Some(0))
        .map(|(n, _)| n)
        .collect();
    assert_eq!(removed.len(), 1, "{}", describe());
    let refused = outs.iter().find(|o| o.status.code() == Some(1)).expect("one refusal");
    assert!(
        refused.stderr.contains(
            "caught-up voter(s) answering the leader, of 2, fewer than the 2 a quorum needs"
        ),
        "{}",
        describe()
    );
    let kept = if removed[0] == a { b } else { a };
    let mut voters = vec![leader, kept, dead];
    voters.sort_unstable();
    assert_eq!(c.replica(leader).unwrap().voters(), voters);

    c.replica(leader).unwrap().create_entry(1).unwrap();
    for node in [leader, kept] {
        c.replica(node).unwrap().wait_entries(1).unwrap();
    }
}
