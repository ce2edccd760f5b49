//! Measures a streamed snapshot export of a store: the time of the cut, the time to drain
//! the stream, the RSS over the export, and how long a concurrent writer is held up (the
//! longest single command while the export runs, against the longest before it).
//!
//! `cargo run --release -p ward-store --example snapshot_stream -- <dir> [chunk_bytes]
//! [--no-writer]`
//!
//! `<dir>` must hold an existing store (for example a copy of a data set built by the
//! `footprint` example); it is opened read-write, so point it at a copy you can spare. Each
//! chunk goes through the transport encoding and is then dropped, as a sender would. The
//! writer re-attests the data set's agents with new serials, so the store changes.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ward_store::testdata::DataSet;
use ward_store::{Command, DEFAULT_CHUNK_BYTES, Store, StoreConfig, StoreError};

/// Re-attests agents in a loop until `stop`, starting at serial `from`; returns the
/// number of commands and the longest one.
fn write_until(
    store: &Store,
    stop: &AtomicBool,
    from: usize,
) -> Result<(u64, Duration), StoreError> {
    let agents = store.agent_count().max(1);
    let (mut n, mut longest) = (0u64, Duration::ZERO);
    while !stop.load(Ordering::Relaxed) {
        let i = from + n as usize;
        let mut a = DataSet::agent(i % agents);
        a.serial = format!("{}", 10_000_000 + i);
        let t = Instant::now();
        store.apply(store.last_applied() + 1, &Command::AttestAgent(a))?;
        longest = longest.max(t.elapsed());
        n += 1;
    }
    Ok((n, longest))
}

/// Runs `f` while a writer thread applies commands; returns `f`'s result and the writer's.
fn with_writer<T>(
    store: &Store,
    writer: bool,
    from: usize,
    f: impl FnOnce() -> T,
) -> Result<(T, (u64, Duration)), StoreError> {
    if !writer {
        return Ok((f(), (0, Duration::ZERO)));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (store, stop) = (store.clone(), Arc::clone(&stop));
        std::thread::spawn(move || write_until(&store, &stop, from))
    };
    let out = f();
    stop.store(true, Ordering::Relaxed);
    let written = writer.join().map_err(|_| StoreError::Engine("writer panicked".into()))??;
    Ok((out, written))
}

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
        eprintln!("usage: snapshot_stream <store dir> [chunk_bytes] [--no-writer]");
        std::process::exit(2);
    };
    let rest: Vec<String> = args.collect();
    let chunk_bytes = rest.iter().find_map(|s| s.parse().ok()).unwrap_or(DEFAULT_CHUNK_BYTES);
    let writer = !rest.iter().any(|s| s == "--no-writer");

    let t = Instant::now();
    let store = Store::open(&dir, StoreConfig::new(DataSet::trust_domain()))?;
    println!(
        "opened entries={} agents={} applied={} in {:.2?}",
        store.entry_count(),
        store.agent_count(),
        store.last_applied(),
        t.elapsed()
    );

    // The writer alone, for a baseline of its longest command.
    let (base_n, base_longest) = if writer {
        with_writer(&store, true, 0, || std::thread::sleep(Duration::from_secs(2)))?.1
    } else {
        (0, Duration::ZERO)
    };

    let before = status_kib("VmRSS:");
    reset_peak();
    let (measured, (n, longest)) = with_writer(&store, writer, 1 << 24, || {
        let t = Instant::now();
        let export = store.export_snapshot_stream(chunk_bytes)?;
        let cut = t.elapsed();
        let after_cut = status_kib("VmRSS:");
        let info = export.info();
        let (mut chunks, mut bytes) = (0u64, 0u64);
        for chunk in export {
            let wire = chunk?.to_bytes();
            chunks += 1;
            bytes += wire.len() as u64;
        }
        Ok::<_, StoreError>((cut, after_cut, info, chunks, bytes, t.elapsed()))
    })?;
    let (cut, after_cut, info, chunks, bytes, total) = measured?;
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
        "export_snapshot_stream_call={cut:.2?} export_total={total:.2?} rss_before_mib={} \
         rss_after_cut_mib={} (+{}) peak_rss_mib={} (+{}) rss_after_mib={}",
        before / 1024,
        after_cut / 1024,
        after_cut.saturating_sub(before) / 1024,
        peak / 1024,
        peak.saturating_sub(before) / 1024,
        after / 1024
    );
    println!(
        "writer: baseline {base_n} commands in 2 s, longest {base_longest:.2?}; during export \
         {n} commands, longest {longest:.2?}"
    );
    Ok(())
}
