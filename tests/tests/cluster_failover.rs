//! Leader failover in clusters of 3 and 5 `ward-server` processes on 127.0.0.x, with the
//! default raft timings (100 ms ticks, 1 s election timeout): while a client writes
//! continuously through a follower (`ward-server entry create`, retried while the cluster
//! has no leader), the leader is SIGKILLed; another is elected and writes resume. The time
//! from the kill to the first write acknowledged after it is printed (never asserted: the
//! machine is shared); `WARD_FAILOVER_RUNS` repeats the failover (default 1) and prints the
//! median and maximum. After each failover the old leader restarts and catches up to the
//! same applied index and state digest, every acknowledged entry is on every replica, and
//! none is there twice.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ward_tests::cli::AdminCli;
use ward_tests::cluster::{Cluster, SETTLE, create_entry, entry_number};
use ward_tests::wait::{Step, poll_until};

/// The clusters of this file share two cores with everything else; one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// The most failovers one test runs, whatever `WARD_FAILOVER_RUNS` asks.
const MAX_RUNS: usize = 50;

/// One acknowledged write: its number, when it was sent and when it was acknowledged.
struct Ack {
    n: u64,
    sent: Instant,
    done: Instant,
}

/// What the writer records.
#[derive(Default)]
struct Writes {
    acks: Mutex<Vec<Ack>>,
    errors: Mutex<Vec<String>>,
    stop: AtomicBool,
}

/// Creates entries `first, first + 1, …` through `cli` until told to stop, retrying a number
/// until it is acknowledged (a retry refused as a duplicate means an earlier attempt went
/// through, which counts as its acknowledgement).
fn write_continuously(cli: &AdminCli, first: u64, w: &Writes) {
    let mut n = first;
    while !w.stop.load(Ordering::SeqCst) {
        let sent = Instant::now();
        match create_entry(cli, n) {
            Ok(_) => {}
            Err(e) if format!("{e:#}").contains("similar entry already exists") => {}
            Err(e) => {
                w.errors.lock().unwrap().push(format!("{e:#}"));
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
        }
        w.acks.lock().unwrap().push(Ack { n, sent, done: Instant::now() });
        n += 1;
    }
}

fn runs() -> usize {
    std::env::var("WARD_FAILOVER_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .clamp(1, MAX_RUNS)
}

/// One failover: kills the leader under a writer; returns the time from the kill to the
/// first acknowledgement of a write sent after it, and the numbers of every acknowledged
/// entry.
fn fail_over(c: &mut Cluster, first: u64) -> (Duration, Vec<u64>) {
    let leader = c.leader().unwrap();
    let writer = c.running().find(|r| r.node != leader).unwrap().cli.clone();
    let w = Writes::default();
    let killed = std::thread::scope(|s| {
        s.spawn(|| write_continuously(&writer, first, &w));
        // A few writes before the kill, so the writer is in its stride.
        let before = poll_until("writes before the kill", SETTLE, || {
            let n = w.acks.lock().unwrap().len();
            Ok(if n >= 3 { Step::Done(()) } else { Step::Retry(format!("{n} acknowledged")) })
        });
        let killed = Instant::now();
        let killing = before.and_then(|()| c.replica_mut(leader)?.kill());
        let resumed = killing.and_then(|()| {
            poll_until("a write acknowledged after the kill", SETTLE, || {
                Ok(if w.acks.lock().unwrap().iter().any(|a| a.sent >= killed) {
                    Step::Done(())
                } else {
                    Step::Retry(format!("last error: {:?}", w.errors.lock().unwrap().last()))
                })
            })
        });
        // Stop the writer before failing, or the scope would wait for it forever.
        w.stop.store(true, Ordering::SeqCst);
        resumed.unwrap();
        killed
    });
    let acks = w.acks.into_inner().unwrap();
    let resumed = acks.iter().filter(|a| a.sent >= killed).map(|a| a.done).min().unwrap();
    (resumed - killed, acks.iter().map(|a| a.n).collect())
}

fn failovers(replicas: u64) {
    let _one = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut c = Cluster::loopback(replicas).unwrap();
    for r in &mut c.replicas {
        r.set_tick_interval("100ms");
    }
    c.form("").unwrap();
    let mut all_acked = BTreeSet::new();
    let mut figures = Vec::new();
    for run in 0..runs() {
        let first = run as u64 * 1_000_000 + 1;
        let leader = c.leader().unwrap();
        let (took, acked) = fail_over(&mut c, first);
        eprintln!(
            "failover, {replicas} replicas, run {}: writes resumed {} ms after SIGKILL of leader {leader}",
            run + 1,
            took.as_millis()
        );
        figures.push(took);
        assert!(!acked.is_empty());
        all_acked.extend(acked);

        // The old leader restarts and catches up to the same state.
        c.replica_mut(leader).unwrap().start().unwrap();
        let digest = c.wait_converged().unwrap();
        for r in c.running() {
            let numbers: Vec<u64> =
                r.entry_spiffe_ids().unwrap().iter().filter_map(|id| entry_number(id)).collect();
            let unique: BTreeSet<u64> = numbers.iter().copied().collect();
            assert_eq!(unique.len(), numbers.len(), "an entry twice on replica {}", r.node);
            let missing: Vec<_> = all_acked.difference(&unique).collect();
            assert!(missing.is_empty(), "replica {} lacks acknowledged {missing:?}", r.node);
        }
        eprintln!(
            "  all {replicas} replicas at applied index {} with digest {}",
            digest.applied_index, digest.state_digest
        );
    }
    figures.sort_unstable();
    let median = figures[figures.len() / 2];
    let max = figures[figures.len() - 1];
    eprintln!(
        "failover, {replicas} replicas, {} run(s): median {} ms, max {} ms",
        figures.len(),
        median.as_millis(),
        max.as_millis()
    );
}

#[test]
fn three_replicas_elect_a_new_leader_and_writes_resume_after_sigkill() {
    failovers(3);
}

#[test]
fn five_replicas_elect_a_new_leader_and_writes_resume_after_sigkill() {
    failovers(5);
}
