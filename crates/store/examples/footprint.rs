//! Builds (or reuses) a standard data set in a directory and reports the store's footprint:
//! time to build or open, process RSS and size on disk.
//!
//! `cargo run --release -p ward-store --example footprint -- <dir> [n]` (default n = 100000,
//! the 1M-entry set). Run it twice: the first run builds the set, the second measures a
//! fresh open.

use std::path::{Path, PathBuf};
use std::time::Instant;

use ward_store::testdata::DataSet;
use ward_store::{StoreConfig, StoreError};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(md) if md.is_dir() => dir_bytes(&e.path()),
            Ok(md) => md.len(),
            Err(_) => 0,
        })
        .sum()
}

fn main() -> Result<(), StoreError> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "footprint-data".into()));
    let n = args.next().and_then(|s| s.parse().ok()).unwrap_or(DataSet::LARGE.n);
    let set = DataSet { n };
    let t = Instant::now();
    let mut config = StoreConfig::new(DataSet::trust_domain());
    // Knobs for experiments: WARD_ENGINE_CACHE_MB, WARD_FLUSH_MS (0 = only explicit flushes).
    if let Some(mb) = std::env::var("WARD_ENGINE_CACHE_MB").ok().and_then(|v| v.parse::<u64>().ok())
    {
        config.engine_cache_bytes = mb << 20;
    }
    if let Some(ms) = std::env::var("WARD_FLUSH_MS").ok().and_then(|v| v.parse::<u64>().ok()) {
        config.flush_every_ms = (ms > 0).then_some(ms);
    }
    let store = set.open_or_build(&dir, config)?;
    let ready = t.elapsed();
    let agent = DataSet::agent_id(0);
    let first = store.authorized_entries_uncached(&agent).len();
    let entries = store.entry_count();
    let rss = rss_kib();
    println!(
        "n={n} entries={entries} agents={} ready_in={ready:.2?} first_query_len={first}",
        store.agent_count()
    );
    println!(
        "rss_mib={} rss_bytes_per_entry={} disk_mib={} sled_size_on_disk_mib={}",
        rss / 1024,
        rss * 1024 / entries.max(1) as u64,
        dir_bytes(&dir) >> 20,
        store.size_on_disk()? >> 20
    );
    Ok(())
}
