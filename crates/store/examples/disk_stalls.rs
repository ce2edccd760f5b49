//! How long a small append + `fdatasync` (what the raft log does for every write) waits
//! while a large file is written or deleted beside it, with and without
//! [`ward_store::disk`].
//!
//! `cargo run --release -p ward-store --example disk_stalls -- [dir] [MiB] [rounds]`
//! (default: a temporary directory, 256 MiB, 3 rounds). `dir` must be new or empty (the
//! example writes and deletes its own files there) and on the disk the data directory
//! would use. Per case and round, a thread appends 300 bytes and syncs them once
//! a millisecond for the whole case; the case starts 300 ms into it. Printed per case: the
//! syncs timed, their p99 and maximum, and how many took over 10 ms.
//!
//! Cases: `write, one sync` (a `BufWriter` over the file, one `sync_all` at the end: how
//! the entry image was written), `write, paced` (the same through
//! [`ward_store::disk::PacedWriter`]), `unlink` (deleting a file of that size) and
//! `release` ([`ward_store::disk::unlink_for_release`] then [`ward_store::disk::release`]).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ward_store::disk;

const USAGE: &str =
    "usage: disk_stalls [dir (new or empty)] [MiB, default 256] [rounds, default 3]";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("disk_stalls: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a.starts_with('-')) || args.len() > 3 {
        return Err(USAGE.into());
    }
    let number = |i: usize, default: usize, what: &str| match args.get(i) {
        None => Ok(default),
        Some(s) => match s.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("{what} must be a positive whole number, not {s:?}\n{USAGE}")),
        },
    };
    let mib = number(1, 256, "MiB")?;
    let rounds = number(2, 3, "rounds")?;
    let temporary = tempfile::tempdir().map_err(|e| format!("a temporary directory: {e}"))?;
    let dir = args.first().map_or_else(|| temporary.path().to_path_buf(), PathBuf::from);
    if std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some()) {
        return Err(format!("{} is not empty: give a new or empty directory", dir.display()));
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    measure(&dir, mib, rounds).map_err(|e| format!("in {}: {e}", dir.display()))
}

fn measure(dir: &Path, mib: usize, rounds: usize) -> std::io::Result<()> {
    println!(
        "disk_stalls: {mib} MiB beside a 300-byte append + fdatasync every ms, in {}",
        dir.display()
    );
    println!("{:<18} {:>6} {:>9} {:>9} {:>7}", "case", "syncs", "p99 ms", "max ms", ">10 ms");
    for _ in 0..rounds {
        let big = dir.join("big");
        case(dir, "write, one sync", || {
            let mut out = std::io::BufWriter::with_capacity(1 << 20, File::create(&big)?);
            fill(&mut out, mib)?;
            out.into_inner().map_err(std::io::IntoInnerError::into_error)?.sync_all()
        })?;
        std::fs::remove_file(&big)?;
        settle(dir)?;
        case(dir, "write, paced", || {
            let paced = disk::PacedWriter::new(File::create(&big)?);
            let mut out = std::io::BufWriter::with_capacity(1 << 20, paced);
            fill(&mut out, mib)?;
            out.into_inner().map_err(std::io::IntoInnerError::into_error)?.into_file().sync_all()
        })?;
        settle(dir)?;
        case(dir, "unlink", || std::fs::remove_file(&big))?;
        make(&big, mib)?;
        settle(dir)?;
        case(dir, "release", || {
            if let Some(f) = disk::unlink_for_release(&big)? {
                disk::release(f);
            }
            Ok(())
        })?;
        make(&big, mib)?;
        std::fs::remove_file(&big)?;
        settle(dir)?;
    }
    Ok(())
}

/// Writes `mib` MiB of non-zero bytes to `out`.
fn fill(out: &mut impl Write, mib: usize) -> std::io::Result<()> {
    let block: Vec<u8> =
        (0..1 << 20).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    for _ in 0..mib {
        out.write_all(&block)?;
    }
    Ok(())
}

/// A synced file of `mib` MiB at `path`.
fn make(path: &Path, mib: usize) -> std::io::Result<()> {
    let mut f = File::create(path)?;
    fill(&mut f, mib)?;
    f.sync_all()
}

/// Lets what the last case left to the disk finish before the next starts.
fn settle(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()?;
    std::thread::sleep(Duration::from_millis(500));
    Ok(())
}

/// Runs `work` 300 ms into a loop of appends and syncs that goes on 300 ms past it.
fn case(dir: &Path, name: &str, work: impl FnOnce() -> std::io::Result<()>) -> std::io::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let log_path = dir.join("log");
    let mut log = File::create(&log_path)?;
    let flag = stop.clone();
    let appender = std::thread::spawn(move || -> std::io::Result<Vec<Duration>> {
        let record = [7u8; 300];
        let mut waits = Vec::new();
        while !flag.load(Ordering::Acquire) {
            let t = Instant::now();
            log.write_all(&record)?;
            log.sync_data()?;
            waits.push(t.elapsed());
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(waits)
    });
    std::thread::sleep(Duration::from_millis(300));
    work()?;
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Release);
    let mut waits = appender.join().map_err(|_| std::io::Error::other("appender panicked"))??;
    std::fs::remove_file(&log_path)?;
    waits.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let p99 = waits.get(waits.len() * 99 / 100).copied().unwrap_or_default();
    let max = waits.last().copied().unwrap_or_default();
    let over = waits.iter().filter(|d| **d > Duration::from_millis(10)).count();
    println!("{name:<18} {:>6} {:>9.2} {:>9.1} {:>7}", waits.len(), ms(p99), ms(max), over);
    Ok(())
}
