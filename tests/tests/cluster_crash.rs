//! A follower SIGKILLed at a bad moment restarts to a consistent state and catches up, in a
//! cluster of three `ward-server` processes on 127.0.0.x:
//! - while it receives or installs a snapshot (it was stopped while the leader wrote and
//!   compacted its log past it, so on restart it must be sent the store's state);
//! - while it applies a burst of writes (four clients creating entries in batches); each
//!   follower was stopped cleanly once before, so its restarts read its entry image and
//!   catch up through the change feed (at least one restart must say so in its log).
//!
//! Each round kills the follower after a delay drawn from a seeded generator; the seed and
//! every delay are printed, and `WARD_CRASH_SEED=<seed>` replays them. After each kill the
//! follower restarts (its store and raft log must open), every replica reaches the same
//! applied index and state digest, and the restarted replica holds every acknowledged entry
//! exactly once. `WARD_CRASH_ROUNDS` sets the rounds of each test (default 20).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ward_tests::cli::AdminCli;
use ward_tests::cluster::{Cluster, Replica, SETTLE, create_entries, entry_number, json_u64};
use ward_tests::wait::{Step, poll_until};

/// The most rounds one test runs, whatever `WARD_CRASH_ROUNDS` asks.
const MAX_ROUNDS: u64 = 200;

/// Bytes of raft log after which a replica compacts behind a snapshot: one batch's worth, so
/// a follower that misses a batch can only catch up from a snapshot.
const TINY_THRESHOLD: &str = "snapshot_threshold = 2048\n";

/// Compaction now and then during a burst, without forcing a snapshot on every catch-up.
const BURST_THRESHOLD: &str = "snapshot_threshold = 262144\n";

/// Entries in the store before the first round: enough that pulling and importing the
/// state takes a moment.
const INITIAL_ENTRIES: u64 = 2000;

/// Entries per `BatchCreateEntry` call.
const BATCH: u64 = 250;

/// Entries per call while the follower is down: one log entry past the threshold.
const TOP_UP: u64 = 20;

/// Log entries a leader may have sent beyond its commit index when a follower is killed.
const IN_FLIGHT: u64 = 2;

/// Entries per call during a burst (smaller, so many commands are applied in a row).
const BURST_BATCH: u64 = 10;

/// Concurrent writers during a burst.
const WRITERS: usize = 4;

/// How often the follower's log is read while waiting for the snapshot to start.
const LOG_POLL: Duration = Duration::from_millis(2);

fn rounds() -> u64 {
    std::env::var("WARD_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
        .clamp(1, MAX_ROUNDS)
}

/// The seed of this run (`WARD_CRASH_SEED`, or a new one), printed so it can be replayed.
fn rng(test: &str) -> fastrand::Rng {
    let seed = std::env::var("WARD_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("{test}: WARD_CRASH_SEED={seed}");
    fastrand::Rng::with_seed(seed)
}

/// Creates `numbers` on the current leader in batches, each retried until acknowledged.
fn write(c: &Cluster, numbers: std::ops::Range<u64>, acked: &mut BTreeSet<u64>) {
    let mut n = numbers.start;
    while n < numbers.end {
        let end = (n + BATCH).min(numbers.end);
        poll_until(&format!("entries {n}..{end}"), SETTLE, || {
            let leader = c.replica(c.leader()?)?;
            Ok(match create_entries(&leader.cli, n..end, c.root()) {
                Ok(()) => Step::Done(()),
                Err(e) => Step::Retry(format!("{e:#}")),
            })
        })
        .unwrap();
        acked.extend(n..end);
        n = end;
    }
}

/// The number at `field` of `r`'s `cluster status` (e.g. `commit`, or `last_snapshot` then
/// `index`).
fn status_u64(r: &Replica, field: &[&str]) -> anyhow::Result<u64> {
    let s = r.status()?;
    let v = field.iter().fold(&s, |v, f| &v[*f]);
    // A zero is left out of proto JSON.
    Ok(if v.is_null() { 0 } else { json_u64(v).ok_or_else(|| anyhow::anyhow!("{s}"))? })
}

/// The log of `r` from byte `from` on.
fn log_since(r: &Replica, from: usize) -> String {
    r.log().get(from..).unwrap_or_default().to_owned()
}

/// Whether the "store opened" line in `log` says the open read the entry image.
fn store_opened_from_image(log: &str) -> Option<bool> {
    let line = log.lines().find(|l| l.contains("store opened"))?;
    Some(line.contains("from_entry_image=true") || line.contains("\"from_entry_image\":true"))
}

/// After `r` restarted: every replica converges, `r` is still running, and `r` holds every
/// number in `acked` exactly once.
fn check_caught_up(
    c: &mut Cluster,
    node: u64,
    acked: &BTreeSet<u64>,
) -> ward_tests::cluster::StateDigest {
    let digest = c.wait_converged().unwrap();
    let r = c.replica_mut(node).unwrap();
    r.daemon_mut().unwrap().ensure_running().unwrap();
    let numbers: Vec<u64> =
        r.entry_spiffe_ids().unwrap().iter().filter_map(|id| entry_number(id)).collect();
    let unique: BTreeSet<u64> = numbers.iter().copied().collect();
    assert_eq!(unique.len(), numbers.len(), "an entry twice on replica {node}");
    let missing: Vec<_> = acked.difference(&unique).take(10).collect();
    assert!(missing.is_empty(), "replica {node} lacks acknowledged entries, e.g. {missing:?}");
    digest
}

/// Seconds since midnight of a log line that starts with an RFC 3339 UTC timestamp.
fn line_time(line: &str) -> Option<f64> {
    let t = line.get(11..line.find('Z')?)?;
    let mut parts = t.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// How long the last complete snapshot pull in `log` took, from its log lines.
fn pull_took(log: &str) -> Option<Duration> {
    let lines: Vec<&str> = log.lines().collect();
    let done = lines.iter().rposition(|l| l.contains("snapshot imported"))?;
    let began = lines.get(..done)?.iter().rposition(|l| l.contains("installing a snapshot"))?;
    let secs = line_time(lines[done])? - line_time(lines[began])?;
    Some(Duration::from_secs_f64(secs.rem_euclid(86_400.0)))
}

/// Where the kill of a round landed, from the follower's log at the next start.
#[derive(Debug, Default)]
struct Landed {
    during_pull: u64,
    after_import: u64,
    after_install: u64,
}

#[test]
fn a_follower_killed_while_receiving_a_snapshot_restarts_consistent_and_catches_up() {
    let started = Instant::now();
    let mut rng = rng("snapshot install");
    let mut c = Cluster::loopback(3).unwrap();
    c.form(TINY_THRESHOLD).unwrap();
    let mut acked = BTreeSet::new();
    write(&c, 0..INITIAL_ENTRIES, &mut acked);
    let mut next = INITIAL_ENTRIES;
    let mut landed = Landed::default();
    // The longest kill delay after the install begins (adjusted after each round).
    let mut max_delay_ms: u64 = 1000;
    for round in 1..=rounds() {
        let leader = c.leader().unwrap();
        let followers: Vec<u64> = c.running().map(|r| r.node).filter(|n| *n != leader).collect();
        let node = followers[rng.usize(..followers.len())];

        // The follower stops; the others write past it and compact past everything it may
        // hold (the commit index, plus proposals that may have been in flight).
        c.replica_mut(node).unwrap().kill().unwrap();
        let behind = status_u64(c.replica(leader).unwrap(), &["commit"]).unwrap() + IN_FLIGHT;
        for _ in 0..=IN_FLIGHT {
            write(&c, next..next + TOP_UP, &mut acked);
            next += TOP_UP;
        }
        let mut polls = 0;
        poll_until("the leader to compact past the stopped follower", SETTLE, || {
            let leader = c.replica(c.leader()?)?;
            let snap = status_u64(leader, &["last_snapshot", "index"])?;
            if snap > behind {
                return Ok(Step::Done(()));
            }
            // Compaction follows the apply closely; after a second without it, the log
            // needs more bytes.
            polls += 1;
            if polls % 4 == 0 {
                write(&c, next..next + TOP_UP, &mut acked);
                next += TOP_UP;
            }
            Ok(Step::Retry(format!("last snapshot {snap}, follower at most {behind}")))
        })
        .unwrap();

        // It restarts, needs a snapshot, and is killed once the install has begun.
        let r = c.replica_mut(node).unwrap();
        let from = r.log().len();
        r.start().unwrap();
        let deadline = Instant::now() + SETTLE;
        while !log_since(r, from).contains("installing a snapshot") {
            assert!(Instant::now() < deadline, "replica {node} never began installing a snapshot");
            std::thread::sleep(LOG_POLL);
        }
        let delay = rng.u64(..=max_delay_ms);
        std::thread::sleep(Duration::from_millis(delay));
        r.kill().unwrap();
        let imported = log_since(r, from).contains("snapshot imported");

        // It starts again from what it left on disk.
        let from = r.log().len();
        r.start().unwrap();
        let digest = check_caught_up(&mut c, node, &acked);
        let restart_log = log_since(c.replica(node).unwrap(), from);
        // Kills spread over the whole transfer: the longest delay follows how long the last
        // complete pull and import took.
        if let Some(took) = pull_took(&restart_log) {
            max_delay_ms = (took.as_millis() as u64 * 5 / 4).clamp(10, 5000);
        }
        let where_ = if restart_log.contains("does not match the applied state") {
            landed.after_import += 1;
            "after the import, before the raft log was reset"
        } else if imported {
            landed.after_install += 1;
            "after the install"
        } else {
            landed.during_pull += 1;
            "while pulling and importing the state"
        };
        eprintln!(
            "round {round}: killed replica {node} {delay} ms after it began installing a \
             snapshot ({where_}; the next pull took {:?}); all at applied index {} with digest {}",
            pull_took(&restart_log),
            digest.applied_index,
            digest.state_digest
        );
    }
    eprintln!(
        "snapshot install: {} rounds, {} acknowledged entries, kills {landed:?}, {:.1} s",
        rounds(),
        acked.len(),
        started.elapsed().as_secs_f64()
    );
}

/// What the writers of a burst share.
struct Burst<'a> {
    next: AtomicU64,
    acked: Mutex<BTreeSet<u64>>,
    stop: AtomicBool,
    dir: &'a Path,
}

impl Burst<'_> {
    /// Creates batches through `cli` until told to stop; a batch is retried until
    /// acknowledged unless the burst ends first.
    fn write(&self, cli: &AdminCli) {
        while !self.stop.load(Ordering::SeqCst) {
            let n = self.next.fetch_add(BURST_BATCH, Ordering::SeqCst);
            while !self.stop.load(Ordering::SeqCst) {
                if create_entries(cli, n..n + BURST_BATCH, self.dir).is_ok() {
                    self.acked.lock().unwrap().extend(n..n + BURST_BATCH);
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }
}

#[test]
fn a_follower_killed_while_applying_a_burst_restarts_consistent_and_catches_up() {
    let started = Instant::now();
    let mut rng = rng("apply burst");
    let mut c = Cluster::loopback(3).unwrap();
    c.form(BURST_THRESHOLD).unwrap();
    let mut acked = BTreeSet::new();
    // A clean stop writes each follower's entry image; a start after a kill then reads it
    // and catches up through the change feed (until a snapshot install removes it).
    write(&c, 0..BATCH, &mut acked);
    let mut next = BATCH;
    let leader = c.leader().unwrap();
    let followers: Vec<u64> = c.running().map(|r| r.node).filter(|n| *n != leader).collect();
    for node in &followers {
        c.replica_mut(*node).unwrap().restart().unwrap();
        c.wait_converged().unwrap();
    }
    let mut from_image = 0;
    for round in 1..=rounds() {
        let leader = c.leader().unwrap();
        let followers: Vec<u64> = c.running().map(|r| r.node).filter(|n| *n != leader).collect();
        let node = followers[rng.usize(..followers.len())];
        let writer = c.replica(leader).unwrap().cli.clone();
        let burst = Burst {
            next: AtomicU64::new(next),
            acked: Mutex::new(BTreeSet::new()),
            stop: AtomicBool::new(false),
            dir: c.root(),
        };
        let delay = rng.u64(..=400);
        let applied_at_kill = std::thread::scope(|s| {
            for _ in 0..WRITERS {
                s.spawn(|| burst.write(&writer));
            }
            // Kill once the follower is applying the burst, a seeded moment later.
            let r = c.replica(node).unwrap();
            let base = status_u64(r, &["applied"]).unwrap_or(0);
            let applying = poll_until("the follower applying the burst", SETTLE, || {
                let a = status_u64(r, &["applied"])?;
                Ok(if a > base + 2 { Step::Done(()) } else { Step::Retry(format!("applied {a}")) })
            });
            std::thread::sleep(Duration::from_millis(delay));
            let applied = status_u64(r, &["applied"]).unwrap_or(0);
            let killed = applying.and_then(|()| {
                let pid = r.pid().unwrap_or_default();
                ward_tests::command::run(
                    std::process::Command::new("kill").args(["-KILL", &pid.to_string()]),
                    Duration::from_secs(10),
                )?
                .success()
            });
            // The majority keeps taking writes.
            let acked_at_kill = burst.acked();
            let more = killed.and_then(|_| {
                poll_until("writes acknowledged after the kill", SETTLE, || {
                    let n = burst.acked();
                    Ok(if n >= acked_at_kill + 4 * BURST_BATCH as usize {
                        Step::Done(())
                    } else {
                        Step::Retry(format!("{n} acknowledged"))
                    })
                })
            });
            burst.stop.store(true, Ordering::SeqCst);
            more.unwrap();
            applied
        });
        next = burst.next.load(Ordering::SeqCst);
        acked.extend(burst.acked.into_inner().unwrap());

        // The killed process is reaped, then started again from what it left on disk.
        let r = c.replica_mut(node).unwrap();
        r.kill().ok();
        let log_from = r.log().len();
        r.start().unwrap();
        let digest = check_caught_up(&mut c, node, &acked);
        let opened = store_opened_from_image(&log_since(c.replica(node).unwrap(), log_from));
        from_image += usize::from(opened == Some(true));
        eprintln!(
            "round {round}: killed replica {node} {delay} ms into applying a burst (at applied \
             index {applied_at_kill}); restarted {}; all at applied index {} with digest {}",
            match opened {
                Some(true) => "from its entry image",
                Some(false) => "reading the store",
                None => "(no store-opened line)",
            },
            digest.applied_index,
            digest.state_digest
        );
    }
    assert!(from_image > 0, "no restart after a kill read an entry image");
    eprintln!(
        "apply burst: {} rounds, {} acknowledged entries, {:.1} s",
        rounds(),
        acked.len(),
        started.elapsed().as_secs_f64()
    );
}
