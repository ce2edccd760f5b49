//! Times opening an existing store until it answers an agent's authorized entries: wall
//! time and the process's CPU time (all threads) per open.
//!
//! `cargo run --release -p ward-store --example open_time -- <dir> [runs] [replay] [--no-image]`
//! (default 3 runs, no replay). Each run ends with [`Store::close`], which writes the entry
//! image the next run opens from; with `--no-image` it only flushes, so every run reads the
//! engine (delete `<dir>/ward-entries.image` first). With `replay` = N, each run also applies N committed log entries after
//! the applied index ([`DataSet::replay_log`]: creates and deletes, so the set stays as it
//! is), as a replica's restart does, before the query.
//! `<dir>` holds a data set from `ward_store::testdata` (the `footprint` example or the
//! store bench builds one).

/// The allocator ward-server runs with, so the timings are the server's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ward_store::testdata::DataSet;
use ward_store::{Committed, Store, StoreConfig, StoreError};

/// The process's user + system CPU time, from `/proc/self/stat` (clock ticks of 10 ms).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at state (field 3).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let ticks: u64 =
        rest.split_whitespace().skip(11).take(2).filter_map(|v| v.parse::<u64>().ok()).sum();
    Duration::from_millis(ticks.saturating_mul(10))
}

fn main() -> Result<(), StoreError> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "footprint-data".into()));
    let runs: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(3);
    let replay: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let close = args.next().as_deref() != Some("--no-image");
    let agent = DataSet::agent_id(0);
    let log = DataSet::LARGE.replay_log(replay);
    for run in 1..=runs {
        let image = dir.join("ward-entries.image").exists();
        let (t, cpu) = (Instant::now(), cpu_time());
        let store = Store::open(&dir, StoreConfig::new(DataSet::trust_domain()))?;
        let committed: Vec<Committed<'_>> = (store.last_applied() + 1..)
            .zip(&log)
            .map(|(index, data)| Committed::Entry { index, term: 1, data })
            .collect();
        store.apply_committed(&committed)?;
        let found = store.authorized_entries_uncached(&agent).len();
        let (wall, cpu) = (t.elapsed(), cpu_time().saturating_sub(cpu));
        println!(
            "run {run}: open{} + replay of {replay} {wall:.2?} wall, {cpu:.2?} CPU; {} entries, {} agents, agent 0 has {found}",
            if image { " from the entry image" } else { "" },
            store.entry_count(),
            store.agent_count()
        );
        let t = Instant::now();
        if close {
            store.close()?;
            println!("run {run}: close (flush and entry image) {:.2?}", t.elapsed());
        } else {
            store.flush()?;
        }
        drop(store);
    }
    Ok(())
}
