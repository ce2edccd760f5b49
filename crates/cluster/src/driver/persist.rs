//! Persistence off the driver's thread: the log's sync thread, the messages each ready
//! holds back until the sync that covers it is reported, and the flushes made on the
//! driver's thread instead (see the driver's module documentation, step 4).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use raft::StateRole;
use raft::eraftpb::{Message, MessageType};

use super::{Driver, Fatal, SLOW_WARN, add_elapsed};
use crate::config::{MAX_SYNC_GAP, StartError};
use crate::handle::Shared;
use crate::log_store::{LogStore, LogStoreError, PendingSync};
use crate::transport::NodeId;

/// A sync the log's sync thread finished: the number of the last ready it covers, and how
/// it went.
pub(super) type Synced = (u64, Result<(), LogStoreError>);

/// The thread that makes the log durable while the driver goes on (see the module
/// documentation, step 4).
pub(super) struct SyncThread {
    jobs: Option<Sender<(u64, PendingSync)>>,
    pub(super) done: Receiver<Synced>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Waits that gather the journal's syncs while writes keep arriving.
///
/// Under a steady stream of writes each sync covers the few that arrived while the one
/// before ran, so a replica syncs nearly once per write (about 800 times a second per
/// replica at 1,000 writes/s). Where a sync is costly for the machine as a whole (on a
/// virtual machine each is a flush the host carries out on the machine's time), fewer,
/// larger syncs cost less and can answer sooner. So a sync that would start within `gap`
/// of the one before waits until `gap` has passed, gathering what arrives meanwhile: at most
/// one sync per `gap` while writes keep coming (PostgreSQL's `commit_delay` is the same
/// trade).
///
/// A wait only delays a write when nothing else arrives during it (one write at a time,
/// each waiting for its answer before the next). So the last [`WINDOW`] waits are
/// remembered: after a wait during which nothing arrived, when at most [`FEW`] of them saw
/// another write arrive, syncs stop waiting, and every [`SYNCS_BETWEEN_PROBES`] syncs one
/// waits again (a probe) to see whether that changed. The gap is at most [`MAX_SYNC_GAP`].
#[derive(Debug)]
pub(crate) struct SyncPacing {
    gap: Duration,
    last_start: Option<Instant>,
    /// Outcomes of the latest waits, newest in the lowest bit: 1 gathered more writes.
    outcomes: u32,
    /// How many outcomes `outcomes` holds (up to [`WINDOW`]).
    counted: u32,
    /// Waits stopped: the sync count at which the next probe is due.
    probe_at: Option<u64>,
    syncs: u64,
}

/// Waits remembered.
pub(crate) const WINDOW: u32 = 16;
const WINDOW_MASK: u32 = (1 << WINDOW) - 1;
/// At most this many of the remembered waits gathered something: waiting stops.
pub(crate) const FEW: u32 = 2;
/// Syncs between two probe waits while waiting is stopped.
pub(crate) const SYNCS_BETWEEN_PROBES: u64 = 256;

impl SyncPacing {
    pub(crate) fn new(gap: Duration) -> Self {
        let gap = gap.min(MAX_SYNC_GAP);
        Self { gap, last_start: None, outcomes: 0, counted: 0, probe_at: None, syncs: 0 }
    }

    /// How long a sync asked for at `now` waits first (none: it starts at once).
    pub(crate) fn wait(&self, now: Instant) -> Option<Duration> {
        if self.gap.is_zero() || self.probe_at.is_some_and(|at| self.syncs < at) {
            return None;
        }
        let due = self.last_start?.checked_add(self.gap)?;
        (due > now).then(|| due.duration_since(now))
    }

    /// Records a sync started at `now`, after a wait or not; `gathered`: another write
    /// arrived during the wait.
    pub(crate) fn started(&mut self, now: Instant, gathered: bool, waited: bool) {
        self.syncs = self.syncs.saturating_add(1);
        self.last_start = Some(now);
        if !waited {
            return;
        }
        self.outcomes = ((self.outcomes << 1) | u32::from(gathered)) & WINDOW_MASK;
        self.counted = self.counted.saturating_add(1).min(WINDOW);
        if gathered {
            // A probe that saw a write arrive resumes the waits.
            self.probe_at = None;
        } else if self.probe_at.is_some()
            || (self.counted == WINDOW && self.outcomes.count_ones() <= FEW)
        {
            self.probe_at = Some(self.syncs.saturating_add(SYNCS_BETWEEN_PROBES));
        }
    }
}

impl SyncThread {
    pub(super) fn start(
        id: NodeId,
        shared: Arc<Shared>,
        gap: Duration,
    ) -> Result<Self, StartError> {
        let (jobs, jobs_rx) = crossbeam_channel::unbounded::<(u64, PendingSync)>();
        let (done_tx, done) = crossbeam_channel::unbounded();
        let thread = std::thread::Builder::new()
            .name(format!("raft-sync-{id}"))
            .spawn(move || {
                let mut pacing = SyncPacing::new(gap);
                while let Ok(mut job) = jobs_rx.recv() {
                    // A later sync covers everything an earlier one does.
                    while let Ok(later) = jobs_rx.try_recv() {
                        job = later;
                    }
                    let wait = pacing.wait(Instant::now());
                    let mut gathered = false;
                    if let Some(wait) = wait {
                        shared.sync_waits.fetch_add(1, Ordering::Relaxed);
                        // One sleep, then what arrived meanwhile: a blocking receive would
                        // wake this thread for each write, and on a virtual machine every
                        // wake-up costs the host time.
                        std::thread::sleep(wait);
                        while let Ok(later) = jobs_rx.try_recv() {
                            job = later;
                            gathered = true;
                        }
                    }
                    let (number, sync) = job;
                    let start = Instant::now();
                    pacing.started(start, gathered, wait.is_some());
                    let result = sync();
                    add_elapsed(&shared.persist_ns, start);
                    if let Some(took_ms) = shared.slow_syncs.record(start.elapsed()) {
                        log_slow(id, took_ms);
                    }
                    shared.flushes.fetch_add(1, Ordering::Relaxed);
                    if done_tx.send((number, result)).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| StartError::Thread(e.to_string()))?;
        Ok(Self { jobs: Some(jobs), done, thread: Some(thread) })
    }

    pub(super) fn submit(&self, number: u64, sync: PendingSync) -> Result<(), Fatal> {
        let sent = self.jobs.as_ref().is_some_and(|j| j.send((number, sync)).is_ok());
        if sent { Ok(()) } else { Err(Fatal::Sync) }
    }

    /// Lets the thread finish the sync it runs, if any, and end.
    pub(super) fn stop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Logs a sync of the log that took `took_ms`, [`SLOW_STEP`](crate::SLOW_STEP) or longer:
/// the disk (or the host under a virtual machine) held it up.
fn log_slow(node_id: NodeId, took_ms: u64) {
    if took_ms >= u64::try_from(SLOW_WARN.as_millis()).unwrap_or(u64::MAX) {
        tracing::warn!(node_id, took_ms, "slow raft log sync");
    } else {
        tracing::debug!(node_id, took_ms, "slow raft log sync");
    }
}

/// A ready's messages that wait for its entries (or an earlier ready's) to be durable.
pub(super) struct Held {
    pub(super) number: u64,
    /// Whether this ready wrote something a sync must cover (else it waits only for the
    /// readies before it).
    pub(super) needs_sync: bool,
    pub(super) messages: Vec<Message>,
}

impl<L: LogStore> Driver<L> {
    /// Sends at once those of a ready's held-back messages that promise nothing about this
    /// replica's log (a proposal or read forwarded to the leader, an answer to a
    /// heartbeat, a pre-vote request) and returns the rest, which must wait for the sync:
    /// answers to appends and to votes (raft-rs holds back every message of a replica that
    /// does not lead; etcd's raft holds back only these three kinds, `msgsAfterAppend`).
    pub(super) fn send_all_but_promises(&mut self, messages: Vec<Message>) -> Vec<Message> {
        let (later, now): (Vec<Message>, Vec<Message>) = messages.into_iter().partition(|m| {
            matches!(
                m.get_msg_type(),
                MessageType::MsgAppendResponse
                    | MessageType::MsgRequestVoteResponse
                    | MessageType::MsgRequestPreVoteResponse
            )
        });
        self.send(now);
        later
    }

    /// Makes everything written durable before a replica that does not lead, and is the
    /// only voter, is ticked or stepped: raft-rs then goes from follower to leader inside
    /// one call, with no ready in between, and requires its whole log to be durable when it
    /// becomes leader (`become_leader` asserts it). Elsewhere a candidate's term change is
    /// a ready of its own, synced on the driver thread.
    pub(super) fn persist_before_leading(&mut self) -> Result<(), Fatal> {
        // Promotable: a voter; with one voter in all, the only one.
        if self.held.is_empty()
            || self.raw.raft.state == StateRole::Leader
            || !self.raw.raft.prs().is_singleton()
            || !self.raw.raft.promotable()
        {
            return Ok(());
        }
        let last = self.held.back().map(|h| h.number);
        self.sync_here()?;
        if let Some(n) = last {
            self.raw.on_persist_ready(n);
        }
        Ok(())
    }

    /// Advances a ready whose persistence the sync thread reports later
    /// ([`Driver::on_synced`]).
    pub(super) fn advance_async(&mut self, mut rd: raft::Ready) {
        for rs in rd.take_read_states() {
            self.on_read_state(&rs.request_ctx, rs.index);
        }
        self.raw.advance_append_async(rd);
        self.raw.advance_apply();
    }

    /// Flushes the log on this thread: everything written so far is durable, so the
    /// messages earlier readies held back leave (raft learns those readies are durable
    /// from the `advance` of the ready being handled, which counts every ready before it).
    pub(super) fn sync_here(&mut self) -> Result<(), Fatal> {
        let start = Instant::now();
        self.raw.mut_store().log.flush()?;
        add_elapsed(&self.shared.persist_ns, start);
        self.cycle.sync_here = self.cycle.sync_here.saturating_add(start.elapsed());
        self.shared.flushes.fetch_add(1, Ordering::Relaxed);
        for h in std::mem::take(&mut self.held) {
            self.send(h.messages);
        }
        Ok(())
    }

    /// The sync thread made readies up to `number` durable: their held messages leave, in
    /// order, and raft counts them persisted (a leader may then commit). A report behind
    /// a flush made here since finds nothing left to release.
    pub(super) fn on_synced(&mut self, (number, result): Synced) -> Result<(), Fatal> {
        result?;
        let mut upto = None;
        while let Some(h) = self.held.front() {
            if h.needs_sync && h.number > number {
                break;
            }
            if let Some(h) = self.held.pop_front() {
                upto = Some(h.number);
                self.send(h.messages);
            }
        }
        if let Some(n) = upto {
            self.raw.on_persist_ready(n);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GAP: Duration = Duration::from_millis(3);

    /// A sync asked for `after` the last one started, covering `jobs` readies; returns
    /// whether it waited.
    fn sync(p: &mut SyncPacing, now: &mut Instant, after: Duration, jobs: usize) -> bool {
        *now += after;
        let wait = p.wait(*now);
        if let Some(w) = wait {
            *now += w;
        }
        p.started(*now, jobs > 1, wait.is_some());
        wait.is_some()
    }

    #[test]
    fn a_sync_due_within_the_gap_waits_for_the_rest_of_it() {
        let mut p = SyncPacing::new(GAP);
        let t0 = Instant::now();
        assert_eq!(p.wait(t0), None, "the first sync never waits");
        p.started(t0, false, false);
        assert_eq!(p.wait(t0 + Duration::from_millis(1)), Some(Duration::from_millis(2)));
        assert_eq!(p.wait(t0 + GAP), None);
        assert_eq!(p.wait(t0 + Duration::from_millis(5)), None);
    }

    #[test]
    fn a_zero_gap_never_waits() {
        let mut p = SyncPacing::new(Duration::ZERO);
        let mut now = Instant::now();
        for _ in 0..100 {
            assert!(!sync(&mut p, &mut now, Duration::from_micros(100), 3));
        }
    }

    #[test]
    fn waits_go_on_while_they_gather_writes() {
        let mut p = SyncPacing::new(GAP);
        let mut now = Instant::now();
        sync(&mut p, &mut now, Duration::ZERO, 1);
        // Writes every millisecond: each wait gathers two or three more.
        let waited =
            (0..1000).filter(|_| sync(&mut p, &mut now, Duration::from_millis(1), 3)).count();
        assert_eq!(waited, 1000);
    }

    #[test]
    fn one_write_at_a_time_stops_the_waits_and_probes_rarely() {
        let mut p = SyncPacing::new(GAP);
        let mut now = Instant::now();
        sync(&mut p, &mut now, Duration::ZERO, 1);
        // Each write waits for its answer before the next: a wait never gathers anything.
        let waits: Vec<bool> =
            (0..2000).map(|_| sync(&mut p, &mut now, Duration::from_millis(1), 1)).collect();
        let first_free = waits.iter().position(|w| !w).unwrap();
        assert_eq!(first_free, WINDOW as usize, "waiting stops once the window is full");
        let later = waits[first_free..].iter().filter(|w| **w).count();
        let syncs = (2000 - first_free) as u64;
        assert!(
            later as u64 <= syncs / SYNCS_BETWEEN_PROBES + 1,
            "{later} probe waits in {syncs} syncs"
        );
        assert!(later >= 1, "a probe comes every {SYNCS_BETWEEN_PROBES} syncs");
    }

    #[test]
    fn a_probe_that_gathers_resumes_the_waits() {
        let mut p = SyncPacing::new(GAP);
        let mut now = Instant::now();
        sync(&mut p, &mut now, Duration::ZERO, 1);
        for _ in 0..WINDOW {
            assert!(sync(&mut p, &mut now, Duration::from_millis(1), 1));
        }
        // Stopped: the next syncs start at once until the probe is due.
        let mut until_probe = 0;
        while !sync(&mut p, &mut now, Duration::from_millis(1), 4) {
            until_probe += 1;
            assert!(until_probe <= SYNCS_BETWEEN_PROBES, "no probe came");
        }
        // The probe gathered (4 readies): every sync waits again.
        for _ in 0..50 {
            assert!(sync(&mut p, &mut now, Duration::from_millis(1), 4));
        }
    }

    #[test]
    fn waits_stop_when_at_most_two_of_sixteen_gathered() {
        for (gathering, stops) in [(2usize, true), (3, false)] {
            let mut p = SyncPacing::new(GAP);
            let mut now = Instant::now();
            sync(&mut p, &mut now, Duration::ZERO, 1);
            for i in 0..WINDOW as usize {
                let jobs = if i < gathering { 2 } else { 1 };
                assert!(sync(&mut p, &mut now, Duration::from_millis(1), jobs));
            }
            let waits_on = sync(&mut p, &mut now, Duration::from_millis(1), 1);
            assert_eq!(!waits_on, stops, "{gathering} of 16 waits gathered");
        }
    }

    #[test]
    fn a_gap_past_the_limit_is_cut_to_it() {
        let mut p = SyncPacing::new(Duration::from_secs(3600));
        let t0 = Instant::now();
        p.started(t0, false, false);
        assert_eq!(p.wait(t0), Some(MAX_SYNC_GAP));
    }

    #[test]
    fn waits_that_gather_now_and_then_are_kept() {
        let mut p = SyncPacing::new(GAP);
        let mut now = Instant::now();
        sync(&mut p, &mut now, Duration::ZERO, 1);
        // One wait in four gathers something: more than `FEW` in any window of 16.
        let waited = (0..400)
            .filter(|i| {
                sync(&mut p, &mut now, Duration::from_millis(1), if i % 4 == 0 { 2 } else { 1 })
            })
            .count();
        assert_eq!(waited, 400);
    }
}
