//! Measures a streamed snapshot export of a store: the time and memory of the cut, the
//! time to drain the stream, and the peak RSS over the export.
//!
//! `cargo run --release -p ward-store --example snapshot_stream -- <dir> [chunk_bytes]`
//!
//! `<dir>` must hold an existing store (for example a copy of a data set built by the
//! `footprint` example); it is opened read-write, so point it at a copy you can spare. Each
//! chunk goes through the transport encoding and is then dropped, as a sender would.

use std::path::PathBuf;
use std::time::Instant;

use ward_store::testdata::DataSet;
use ward_store::{DEFAULT_CHUNK_BYTES, Store, StoreConfig, StoreError};

/// A field of /proc/self/status, in KiB.
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// Resets the kernel's peak-RSS counter (VmHWM) to the current RSS.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn main() -> Result<(), StoreError> {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next().map(PathBuf::from) else {
        eprintln!("usage: snapshot_stream <store dir> [chunk_bytes]");
        std::process::exit(2);
    };
    let chunk_bytes = args.next().and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_CHUNK_BYTES);

    let t = Instant::now();
    let store = Store::open(&dir, StoreConfig::new(DataSet::trust_domain()))?;
    println!(
        "opened entries={} agents={} applied={} in {:.2?}",
        store.entry_count(),
        store.agent_count(),
        store.last_applied(),
        t.elapsed()
    );

    let before = status_kib("VmRSS:");
    reset_peak();
    let t = Instant::now();
    let export = store.export_snapshot_stream(chunk_bytes)?;
    let cut = t.elapsed();
    let after_cut = status_kib("VmRSS:");
    let info = export.info();
    let mut chunks = 0u64;
    let mut bytes = 0u64;
    for chunk in export {
        let wire = chunk?.to_bytes();
        chunks += 1;
        bytes += wire.len() as u64;
    }
    let total = t.elapsed();
    let peak = status_kib("VmHWM:");
    let after = status_kib("VmRSS:");
    println!(
        "records={} applied={} revision={} chunk_bytes={chunk_bytes} chunks={chunks} \
         stream_mib={}",
        info.records,
        info.applied,
        info.revision,
        bytes >> 20
    );
    println!(
        "cut_under_read_lock={cut:.2?} export_total={total:.2?} rss_before_mib={} \
         rss_after_cut_mib={} (+{}) peak_rss_mib={} (+{}) rss_after_mib={}",
        before / 1024,
        after_cut / 1024,
        after_cut.saturating_sub(before) / 1024,
        peak / 1024,
        peak.saturating_sub(before) / 1024,
        after / 1024
    );
    Ok(())
}
