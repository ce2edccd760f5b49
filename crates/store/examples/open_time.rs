//! Times opening an existing store until it answers an agent's authorized entries: wall
//! time and the process's CPU time (all threads) per open.
//!
//! `cargo run --release -p ward-store --example open_time -- <dir> [runs] [replay] [mode]`
//! (default 3 runs, no replay). The mode says how each run ends and so what the next open
//! finds:
//! - none: [`Store::close`] (a clean shutdown; timed, with the time the state lock was
//!   held), which writes the entry image of exactly the
//!   state the next run opens;
//! - `--crash`: only a flush, as a crash leaves the store; the entry image written before
//!   the first run (by [`Store::checkpoint`], untimed) stays, so every open reads it and
//!   catches up with the entries changed since through the change feed;
//! - `--no-image`: only a flush, and the image is deleted before each run, so every open
//!   reads the engine.
//!
//! With `replay` = N, each run also applies N committed log entries after the applied
//! index ([`DataSet::replay_log`]: creates and deletes, so the set stays as it is), as a
//! replica's restart does, before the query. Automatic checkpoints are off.
//! `<dir>` holds a data set from `ward_store::testdata` (the `footprint` example or the
//! store bench builds one).

/// The allocator ward-server runs with, so the timings are the server's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::time::Instant;

use ward_store::testdata::{DataSet, process_cpu_time};
use ward_store::{Committed, Store, StoreConfig, StoreError};

fn main() -> Result<(), StoreError> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "footprint-data".into()));
    let runs: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(3);
    let replay: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let mode = args.next().unwrap_or_default();
    let (close, keep_image) = match mode.as_str() {
        "" => (true, true),
        "--crash" => (false, true),
        "--no-image" => (false, false),
        other => {
            eprintln!("unknown mode {other:?}: give --crash, --no-image or nothing");
            std::process::exit(2);
        }
    };
    let config =
        || StoreConfig { checkpoint_every: None, ..StoreConfig::new(DataSet::trust_domain()) };
    let image_path = dir.join("ward-entries.image");
    if !close && keep_image {
        // Whatever image is there (a data set build leaves one from its first revisions,
        // too old to catch up), the runs start from one of the state as it is now.
        let store = Store::open(&dir, config())?;
        store.checkpoint()?;
        println!("wrote an entry image at revision {}", store.revision());
    }
    let agent = DataSet::agent_id(0);
    let log = DataSet::LARGE.replay_log(replay);
    for run in 1..=runs {
        if !keep_image {
            match std::fs::remove_file(&image_path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(StoreError::Engine(e.to_string()));
                }
                _ => {}
            }
        }
        let (t, cpu) = (Instant::now(), process_cpu_time());
        let store = Store::open(&dir, config())?;
        let image = store.opened_from_image();
        let committed: Vec<Committed<'_>> = (store.last_applied() + 1..)
            .zip(&log)
            .map(|(index, data)| Committed::Entry { index, term: 1, data })
            .collect();
        store.apply_committed(&committed)?;
        let found = store.authorized_entries_uncached(&agent).len();
        let (wall, cpu) = (t.elapsed(), process_cpu_time().saturating_sub(cpu));
        println!(
            "run {run}: open{} + replay of {replay} {wall:.2?} wall, {cpu:.2?} CPU; {} entries, {} agents, agent 0 has {found}",
            if image { " from the entry image" } else { "" },
            store.entry_count(),
            store.agent_count()
        );
        let t = Instant::now();
        if close {
            let c = store.checkpoint()?;
            println!(
                "run {run}: close (flush and entry image of {} entries) {:.2?}, state lock held {:.2?}",
                c.entries,
                t.elapsed(),
                c.lock_held
            );
        } else {
            store.flush()?;
        }
        drop(store);
    }
    Ok(())
}
