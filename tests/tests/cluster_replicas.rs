//! Three `ward-server` processes on 127.0.0.1–3 form a Raft cluster: the first bootstraps,
//! the others join with one-time credentials; killing the leader elects another and writes
//! resume; the old leader restarts and catches up with the same state digest; used and
//! expired credentials, the removal of the last voter and a removal that would leave no
//! quorum of live voters are refused.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use ward_tests::cluster::{Cluster, Placement, Replica, SETTLE, entries_file, json_u64};
use ward_tests::wait::{Step, poll_until};

/// Starts a replica that must fail to join; returns its log.
fn failed_join(c: &Cluster, node: u64, join: &str, credential: &str) -> String {
    let placement = Placement::loopback(node).unwrap();
    let mut r = Replica::new(&c.bin, c.root(), &format!("refused{node}"), node, placement);
    r.set_join(join, credential, "").unwrap();
    r.start().unwrap();
    r.wait_exited().unwrap()
}

#[test]
fn three_replicas_fail_over_and_refuse_bad_joins_and_the_last_voters_removal() {
    let mut c = Cluster::empty().unwrap();
    for node in 1..=3 {
        let r = Replica::loopback(&c.bin, c.root(), node).unwrap();
        c.replicas.push(r);
    }

    // Phase 1: replica 1 bootstraps; removing its only voter is refused.
    let r1 = &mut c.replicas[0];
    r1.cluster_extra = "bootstrap = true\n".into();
    r1.start().unwrap();
    assert_eq!(r1.wait_leader().unwrap(), 1);
    let out = r1.cli.raw(&["cluster", "remove"], &["-nodeId", "1"]).unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", out.describe());
    assert!(out.stderr.contains("replica 1 is the cluster's last voter"), "{}", out.describe());
    assert_eq!(r1.voters(), vec![1], "nothing changed");

    // Phase 2: replicas 2 and 3 join with credentials made on a member.
    c.join(1, "").unwrap();
    c.join(2, "").unwrap();
    c.wait_voters(&[1, 2, 3]).unwrap();
    c.replicas[0].create_entry(1).unwrap();
    c.wait_entries(1).unwrap();
    let first = c.wait_converged().unwrap();
    assert_eq!(first.state_digest.len(), 64, "{first:?}");
    // The slow-step counts are part of the status, as JSON and as text.
    let s = c.replicas[0].status().unwrap();
    for key in ["slow_raft_cycles", "slow_log_syncs"] {
        let count = json_u64(&s[key]["count"]);
        let slowest = json_u64(&s[key]["slowest_ms"]);
        assert!(count.is_some() && slowest.is_some(), "{key} in {s}");
        assert_eq!(count == Some(0), slowest == Some(0), "{key} in {s}");
    }
    // The leader tells when it last heard from each follower (not from itself).
    let leader = c.leader().unwrap();
    let s = c.replica(leader).unwrap().status().unwrap();
    for m in s["members"].as_array().unwrap() {
        let heard = json_u64(&m["last_heard_ms"]);
        assert_eq!(heard.is_some(), json_u64(&m["node_id"]) != Some(leader), "{s}");
        assert!(heard.is_none_or(|ms| ms < 10_000), "{s}");
    }
    let out = c.replicas[0].cli.raw(&["cluster", "status"], &[]).unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", out.describe());
    for line in ["Slow raft cycles (10 ms or more): ", "Slow log syncs (10 ms or more): "] {
        assert!(out.stdout.contains(line), "{}", out.describe());
    }

    // Phase 3: a used credential and an expired one are refused, and change nothing.
    let used = std::fs::read_to_string(c.replicas[1].dir.join("join-credential")).unwrap();
    let leader_peer = c.replica(c.leader().unwrap()).unwrap().peer();
    let log = failed_join(&c, 2, &leader_peer, &used);
    assert!(log.contains("join credential unknown or already used"), "{log}");
    // A credential for another member's peer address, or one nobody can dial, is not made.
    for (address, says) in [
        (c.replicas[1].peer(), "is replica 2's peer address"),
        ("127.0.0.6:99999".to_owned(), "a port from 1 to 65535"),
    ] {
        let out = c.replicas[0]
            .cli
            .raw(&["cluster", "add"], &["-nodeId", "6", "-address", &address])
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", out.describe());
        assert!(out.stderr.contains(says), "{}", out.describe());
    }
    let (expiring, expires_at) = c.replicas[0].add(5, "127.0.0.5:9", "1").unwrap();
    poll_until("the credential to expire", SETTLE, || {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
        Ok(if now > expires_at { Step::Done(()) } else { Step::Retry(format!("now {now}")) })
    })
    .unwrap();
    let log = failed_join(&c, 5, &leader_peer, &expiring);
    assert!(log.contains("join credential expired"), "{log}");
    assert_eq!(c.replicas[0].voters(), vec![1, 2, 3]);

    // Phase 4: SIGKILL the leader; another takes over and writes resume.
    let leader = c.leader().unwrap();
    c.replica_mut(leader).unwrap().kill().unwrap();
    let new_leader = c.leader().unwrap();
    assert_ne!(new_leader, leader);
    let survivor = c.running().next().unwrap();
    poll_until("a write after the failover", SETTLE, || {
        Ok(match survivor.create_entry(2) {
            Ok(_) => Step::Done(()),
            Err(e) => Step::Retry(e.to_string()),
        })
    })
    .unwrap();
    c.wait_entries(2).unwrap();
    // With the old leader down, removing the other live voter would leave no quorum: the
    // dead one is still within 64 entries of the log, but has not answered since.
    let other = c.running().map(|r| r.node).find(|n| *n != new_leader).unwrap();
    let out = c
        .replica(new_leader)
        .unwrap()
        .cli
        .raw(&["cluster", "remove"], &["-nodeId", &other.to_string()])
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", out.describe());
    let says = format!(
        "removing replica {other} would leave 1 caught-up voter(s) answering the leader, of 2"
    );
    assert!(out.stderr.contains(&says), "{}", out.describe());
    assert_eq!(c.replica(new_leader).unwrap().voters(), vec![1, 2, 3], "nothing changed");

    // Phase 5: the old leader restarts and catches up to the same state.
    c.replica_mut(leader).unwrap().start().unwrap();
    c.wait_entries(2).unwrap();
    let after = c.wait_converged().unwrap();
    assert!(after.applied_index > first.applied_index, "{after:?} after {first:?}");
    assert_ne!(after.state_digest, first.state_digest);
}

/// Every replica stopped, then started one at a time: the first one up has no majority and
/// no leader for a while, yet it starts (its authorities are already in the bundle, so it
/// has nothing to write), answers its admin socket, and the cluster forms again once the
/// others are back.
#[test]
fn replicas_restarted_one_at_a_time_start_without_a_leader_and_form_again() {
    let mut c = Cluster::start_loopback(3, "").unwrap();
    c.replicas[0].create_entry(1).unwrap();
    c.wait_entries(1).unwrap();
    let before = c.wait_converged().unwrap();
    for r in &mut c.replicas {
        let status = r.terminate().unwrap();
        assert!(status.success(), "replica {} on SIGTERM: {status}", r.node);
    }

    let t0 = std::time::Instant::now();
    c.replicas[0].start().unwrap();
    poll_until("replica 1 to answer alone", SETTLE, || {
        let r = &mut c.replicas[0];
        let daemon = r.daemon_mut().unwrap();
        if let Err(e) = daemon.ensure_running() {
            anyhow::bail!("replica 1 exited while alone: {e:#}\n{}", daemon.log());
        }
        Ok(match r.status() {
            Ok(_) => Step::Done(()),
            Err(e) => Step::Retry(format!("{e:#}")),
        })
    })
    .unwrap();

    eprintln!("replica 1 answered alone after {:?}", t0.elapsed());
    for i in 1..3 {
        c.replicas[i].start().unwrap();
    }
    c.replicas[0].wait_leader().unwrap();
    eprintln!("a leader after {:?}", t0.elapsed());
    c.replicas[1].create_entry(2).unwrap();
    c.wait_entries(2).unwrap();
    let after = c.wait_converged().unwrap();
    assert!(after.applied_index > before.applied_index, "{before:?} then {after:?}");
}

/// One admin write the API accepts (under tonic's 4 MiB request limit) can become a raft
/// entry over 4 MiB (36,000 entries: a 2.7 MB request, about 4.7 MB in the log). raft sends
/// at least one entry per append, so the followers' peer listener must take it: written
/// through a follower, the forwarded proposal and the leader's append to the other follower
/// both pass 4 MiB, and every replica applies it; a write after it goes through. The CLI
/// prints the answer, which is over 4 MiB too.
#[test]
fn a_write_whose_log_entry_passes_4_mib_is_applied_everywhere() {
    const N: u64 = 36_000;
    let c = Cluster::start_loopback(3, "").unwrap();
    let leader = c.leader().unwrap();
    let follower = c.running().find(|r| r.node != leader).unwrap();
    // Numbered after the one entry written below, under the same parent.
    let file = entries_file(2..N + 2, c.root()).unwrap();
    // The answer lists every entry created (over gRPC's usual 4 MiB): the CLI takes it.
    let out = follower
        .cli
        .ok(&["entry", "create"], &["-data", file.to_str().unwrap(), "-output", "json"])
        .unwrap();
    let answer: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len() as u64, N);
    assert!(results.iter().all(|r| r["status"]["code"] == 0), "every entry created");
    c.wait_entries(N).unwrap();
    follower.create_entry(1).unwrap();
    c.wait_entries(N + 1).unwrap();
}
