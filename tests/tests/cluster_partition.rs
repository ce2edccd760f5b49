//! A replica cut off by the network rejoins once the link is back: three `ward-server`
//! processes, each in its own network namespace on a private bridge (made here, as root;
//! nothing listens outside the namespaces). One replica's link goes down while the majority
//! keeps taking writes through the admin API; once it comes back, the replica reaches the
//! same applied index and state digest, and every acknowledged write is present exactly once
//! on every replica.
//!
//! Cut off, a follower simply falls behind. A leader cut off steps down (it hears no quorum)
//! and acknowledges no write; the majority elects a new leader, at a higher term than the old
//! one's, which `cluster status` on the old leader shows until the link is back.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;

use ward_tests::cluster::{Cluster, Replica, SETTLE, entry_number, json_u64};
use ward_tests::netns::NetLab;
use ward_tests::wait::{Step, poll_until};

const PREFIX: &str = "wpart";
const REPLICAS: u64 = 3;
/// Writes the majority takes while one replica is cut off.
const WRITES: u64 = 20;

/// The replicas and their namespaces, dropped in that order (no process outlives its
/// namespace).
struct Lab {
    cluster: Cluster,
    net: NetLab,
}

impl Lab {
    /// Three replicas in their own namespaces, all voters.
    fn form() -> Self {
        let net = NetLab::new(PREFIX, REPLICAS).unwrap();
        let mut cluster = Cluster::in_lab(&net, REPLICAS).unwrap();
        cluster.form("").unwrap();
        Self { cluster, net }
    }

    fn replica(&self, node: u64) -> &Replica {
        self.cluster.replica(node).unwrap()
    }

    /// Creates entry `n` through whichever replica leads, retrying while an election runs;
    /// records it as acknowledged. A retry of a write whose first answer was lost finds the
    /// entry already there, which acknowledges it as well.
    fn write(&self, n: u64, leaders: &[u64], acked: &mut Vec<u64>) {
        poll_until(&format!("entry {n} acknowledged"), SETTLE, || {
            let leader = self.leader_among(leaders)?;
            Ok(match self.replica(leader).create_entry(n) {
                Ok(_) => Step::Done(()),
                Err(e) if format!("{e:#}").contains("already exists") => Step::Done(()),
                Err(e) => Step::Retry(format!("through replica {leader}: {e:#}")),
            })
        })
        .unwrap();
        acked.push(n);
    }

    /// The leader as the replicas in `nodes` agree on it (one of them).
    fn leader_among(&self, nodes: &[u64]) -> anyhow::Result<u64> {
        poll_until(&format!("a leader among {nodes:?}"), SETTLE, || {
            let seen: Vec<(u64, Option<u64>)> =
                nodes.iter().map(|n| (*n, self.replica(*n).leader())).collect();
            Ok(match seen.first() {
                Some((_, Some(l)))
                    if nodes.contains(l) && seen.iter().all(|(_, x)| *x == Some(*l)) =>
                {
                    Step::Done(*l)
                }
                _ => Step::Retry(format!("(replica, leader it sees): {seen:?}")),
            })
        })
    }

    /// Waits until every replica holds the same state, then checks that each lists every
    /// acknowledged entry once and nothing more than `acked` and `unknown` (writes whose
    /// outcome is unknown, present at most once).
    fn check_converged(&self, acked: &[u64], unknown: &[u64]) {
        let digest = self.cluster.wait_converged().unwrap();
        assert!(digest.applied_index > 0, "{digest:?}");
        for r in &self.cluster.replicas {
            let mut held: BTreeMap<u64, usize> = BTreeMap::new();
            for id in r.entry_spiffe_ids().unwrap() {
                let n = entry_number(&id).unwrap_or_else(|| panic!("unexpected entry {id}"));
                *held.entry(n).or_default() += 1;
            }
            for n in acked {
                assert_eq!(held.get(n), Some(&1), "acknowledged entry {n} on replica {}", r.node);
            }
            for (n, count) in &held {
                assert!(
                    acked.contains(n) || unknown.contains(n),
                    "replica {} holds entry {n} that nobody wrote",
                    r.node
                );
                assert_eq!(*count, 1, "replica {} holds entry {n} {count} times", r.node);
            }
        }
    }

    /// `cluster status` of replica `node`: (term, leader it knows, applied index).
    fn term_leader_applied(&self, node: u64) -> (u64, u64, u64) {
        let s = self.replica(node).status().unwrap();
        let get = |k: &str| json_u64(&s[k]).unwrap_or(0);
        (get("term"), get("leader_id"), get("applied_index"))
    }
}

#[test]
fn a_partitioned_follower_rejoins_after_the_partition_heals_with_identical_state() {
    let lab = Lab::form();
    let all: Vec<u64> = (1..=REPLICAS).collect();
    let mut acked = Vec::new();
    lab.write(0, &all, &mut acked);
    lab.cluster.wait_entries(1).unwrap();

    let leader = lab.cluster.leader().unwrap();
    let cut = all.iter().copied().find(|n| *n != leader).unwrap();
    let majority: Vec<u64> = all.iter().copied().filter(|n| *n != cut).collect();
    lab.net.partition(cut).unwrap();
    for n in 1..=WRITES {
        lab.write(n, &majority, &mut acked);
    }
    for node in &majority {
        lab.replica(*node).wait_entries(WRITES + 1).unwrap();
    }
    // The cut-off replica took none of them: it is behind the majority.
    let (_, _, behind) = lab.term_leader_applied(cut);
    let (_, _, ahead) = lab.term_leader_applied(leader);
    assert!(behind < ahead, "replica {cut} applied {behind} while cut off; the leader {ahead}");

    lab.net.heal(cut).unwrap();
    lab.cluster.wait_entries(WRITES + 1).unwrap();
    lab.check_converged(&acked, &[]);
}

#[test]
fn a_partitioned_leader_steps_down_acknowledges_nothing_and_catches_up_after_the_heal() {
    let lab = Lab::form();
    let all: Vec<u64> = (1..=REPLICAS).collect();
    let mut acked = Vec::new();
    lab.write(0, &all, &mut acked);
    lab.cluster.wait_entries(1).unwrap();

    let old = lab.cluster.leader().unwrap();
    let (old_term, _, _) = lab.term_leader_applied(old);
    let majority: Vec<u64> = all.iter().copied().filter(|n| *n != old).collect();
    lab.net.partition(old).unwrap();

    // A write handed to the old leader right away: it may still believe it leads, but it
    // cannot reach a quorum, so the write is never acknowledged.
    let cut_off_write = WRITES + 1;
    let refused = lab.replica(old).create_entry(cut_off_write);
    assert!(refused.is_err(), "the cut-off leader acknowledged a write: {refused:?}");

    // The majority elects a new leader at a higher term, and writes go on through it.
    let new = lab.leader_among(&majority).unwrap();
    for n in 1..=WRITES {
        lab.write(n, &majority, &mut acked);
    }
    let (new_term, _, ahead) = lab.term_leader_applied(new);
    assert!(new_term > old_term, "new leader {new} at term {new_term}, old at {old_term}");

    // The old leader has stepped down and still shows its stale term; a write through it
    // is still refused.
    poll_until(&format!("replica {old} to step down"), SETTLE, || {
        let (term, leader, applied) = lab.term_leader_applied(old);
        Ok(if leader == old {
            Step::Retry(format!("replica {old} still leads at term {term}"))
        } else {
            Step::Done((term, applied))
        })
    })
    .map(|(term, applied)| {
        assert!(
            term < new_term,
            "the cut-off replica {old} is at term {term}, the majority {new_term}"
        );
        assert!(
            applied < ahead,
            "replica {old} applied {applied} while cut off; the leader {ahead}"
        );
    })
    .unwrap();
    let refused = lab.replica(old).create_entry(cut_off_write + 1);
    assert!(refused.is_err(), "the stepped-down replica acknowledged a write: {refused:?}");

    // Healed, it learns the new term, follows the new leader and reaches the same state.
    lab.net.heal(old).unwrap();
    poll_until(&format!("replica {old} to follow at the new term"), SETTLE, || {
        let (term, leader, _) = lab.term_leader_applied(old);
        Ok(if term >= new_term && leader != 0 {
            Step::Done(())
        } else {
            Step::Retry(format!("term {term}, leader {leader}"))
        })
    })
    .unwrap();
    lab.write(WRITES + 10, &all, &mut acked);
    lab.check_converged(&acked, &[cut_off_write, cut_off_write + 1]);
}
