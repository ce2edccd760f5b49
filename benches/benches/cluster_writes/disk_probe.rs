//! The disk probe beside each paced phase of `cluster_writes`: a thread appends a small
//! record to a file of its own and syncs it at a fixed interval, so that a stall of the
//! machine's disk (which every system that syncs before it answers waits for) is told apart
//! from one of the system measured.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use hdrhistogram::Histogram;

use super::{histogram, micros, unix_ms};

/// The disk probe beside each paced phase: one append of [`PROBE_BYTES`] plus `fdatasync`
/// this often, in a file of its own next to the data directories.
pub(crate) const PROBE_EVERY: Duration = Duration::from_millis(10);
pub(crate) const PROBE_BYTES: usize = 300;
/// A probe slower than this is a disk stall in the report.
pub(crate) const PROBE_STALL: Duration = Duration::from_millis(10);

/// Appends and syncs a small file of its own every [`PROBE_EVERY`] on a thread, while a
/// paced phase runs, so that a stall of the machine's disk (which every system that syncs
/// before it answers waits for) is told apart from one of the system measured.
pub(crate) struct DiskProbe {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<anyhow::Result<Probed>>,
}

/// The disk probe's latencies (µs), and per probe `offset ms,latency µs` lines after the
/// start as Unix ms.
#[derive(Debug)]
pub(crate) struct Probed {
    pub(crate) latency: Histogram<u64>,
    pub(crate) timeline: String,
    /// Each probe slower than [`PROBE_STALL`]: when it started and how long it took.
    stalls: Vec<(Instant, Duration)>,
}

impl Probed {
    /// The latencies of the writes in `spans` that were not in flight during any of the
    /// probe's stalls, and how many were.
    pub(crate) fn outside_stalls(
        &self,
        spans: &[(Instant, u64)],
    ) -> anyhow::Result<(Histogram<u64>, u64)> {
        let mut clean = histogram();
        let mut overlapped = 0;
        for &(sent, us) in spans {
            let answered = sent + Duration::from_micros(us);
            if self.stalls.iter().any(|&(at, took)| sent < at + took && at < answered) {
                overlapped += 1;
            } else {
                clean.record(us)?;
            }
        }
        Ok((clean, overlapped))
    }
}

impl DiskProbe {
    pub(crate) fn start(path: &Path) -> anyhow::Result<Self> {
        use std::io::Write as _;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(path)
            .with_context(|| format!("creating the disk probe {}", path.display()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new().name("disk-probe".into()).spawn(move || {
            let mut latency = histogram();
            let start = Instant::now();
            let mut timeline = format!("{}\n", unix_ms());
            let mut stalls = Vec::new();
            let record = [b'p'; PROBE_BYTES];
            let mut due = start;
            while !stopped.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                file.write_all(&record)?;
                file.sync_data()?;
                let took = t0.elapsed();
                let us = micros(took);
                latency.record(us)?;
                if took > PROBE_STALL {
                    stalls.push((t0, took));
                }
                let at = t0.duration_since(start).as_millis();
                timeline.push_str(&format!("{at},{us}\n"));
                // The next probe is due one interval after the last was due, or at once
                // after a stall longer than that.
                due = (due + PROBE_EVERY).max(Instant::now());
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
            anyhow::Ok(Probed { latency, timeline, stalls })
        })?;
        Ok(Self { stop, thread })
    }

    pub(crate) fn finish(self) -> anyhow::Result<Probed> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().map_err(|_| anyhow!("the disk probe panicked"))?
    }
}
