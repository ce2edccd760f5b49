//! Times what a replica does per applied log entry: [`Store::apply_committed`] of entry
//! creates as the `cluster_writes` bench makes them (one entry per log entry and request
//! id, entries spread over `parents` parent IDs, ids made in time order as the server
//! makes them), in calls of `per_call` log entries, as raft hands them over.
//!
//! Then, when `updates` is given, that many updates (a new X509-SVID TTL) of entries drawn at
//! random among those created, one per log entry, timed the same way.
//!
//! `cargo run --release -p ward-store --example apply_rate -- [entries] [per_call] [parents] [updates]`
//! (defaults 200,000, 32, 1,000 and 0). Prints, per tenth of each phase, the wall time and
//! the process's CPU time (all threads, sled's included) per log entry. Automatic checkpoints
//! are off; the store lives in a temporary directory.

/// The allocator ward-server runs with, so the timings are the server's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::error::Error;
use std::time::{Duration, Instant};

use ward_core::{EntryId, EntryPatch, RegistrationEntry, Selector, SelectorSet, TrustDomain};
use ward_store::testdata::process_cpu_time;
use ward_store::{Command, Committed, EntryUpdate, LogEntry, Store, StoreConfig};

/// A hyphenated id laid out as a version-7 UUID: `ms` in the first 48 bits, then `rand`.
fn time_ordered_id(ms: u64, rand: u64) -> Result<EntryId, Box<dyn Error>> {
    let id = format!(
        "{:08x}-{:04x}-7{:03x}-{:04x}-{:012x}",
        ms >> 16,
        ms & 0xffff,
        rand & 0xfff,
        0x8000 | ((rand >> 12) & 0x3fff),
        (rand >> 26) & 0xffff_ffff_ffff
    );
    Ok(EntryId::new(&id)?)
}

fn entry(
    td: &TrustDomain,
    n: u64,
    parents: u64,
    id: EntryId,
) -> Result<RegistrationEntry, Box<dyn Error>> {
    let selector = Selector::new("unix", &format!("uid:{n}"))?;
    Ok(RegistrationEntry::new(
        id,
        td.spiffe_id(&format!("/bench/workload/{n}"))?,
        td.spiffe_id(&format!("/bench/agent/{}", n % parents))?,
        SelectorSet::new(vec![selector]),
    ))
}

/// A xorshift step: the ids' random bits and the updates' choices.
fn next_random(rng: &mut u64) -> u64 {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    *rng
}

/// Applies `total` log entries made by `make` (from the entry's position), `per_call` at a
/// time, printing the wall and CPU time per log entry every tenth and for all of them.
fn timed(
    store: &Store,
    total: u64,
    per_call: u64,
    mut make: impl FnMut(u64) -> Result<Command, Box<dyn Error>>,
) -> Result<(), Box<dyn Error>> {
    let tenth = (total / 10).max(1);
    let (mut wall, mut cpu) = (Duration::ZERO, Duration::ZERO);
    let (mut all_wall, mut all_cpu) = (Duration::ZERO, Duration::ZERO);
    let (mut n, mut since_print) = (0u64, 0u64);
    println!("{:>10} {:>14} {:>14}", "log entries", "wall µs/entry", "CPU µs/entry");
    while n < total {
        let count = per_call.min(total - n);
        let first = store.last_applied() + 1;
        let encoded: Vec<Vec<u8>> = (0..count)
            .map(|i| Ok(LogEntry::new(u128::from(first + i), make(n + i)?).encode()))
            .collect::<Result<_, Box<dyn Error>>>()?;
        let batch: Vec<Committed<'_>> = encoded
            .iter()
            .zip(first..)
            .map(|(data, index)| Committed::Entry { index, term: 1, data })
            .collect();
        let (w0, c0) = (Instant::now(), process_cpu_time());
        let applied = store.apply_committed(&batch)?;
        let (w, c) = (w0.elapsed(), process_cpu_time().saturating_sub(c0));
        if applied.iter().any(|a| a.result.is_err()) {
            return Err("a command did not apply".into());
        }
        wall += w;
        cpu += c;
        let before = n;
        n += count;
        since_print += count;
        if n / tenth != before / tenth || n == total {
            let per = |d: Duration| d.as_secs_f64() * 1e6 / since_print as f64;
            println!("{n:>10} {:>14.2} {:>14.2}", per(wall), per(cpu));
            all_wall += wall;
            all_cpu += cpu;
            wall = Duration::ZERO;
            cpu = Duration::ZERO;
            since_print = 0;
        }
    }
    let per = |d: Duration| d.as_secs_f64() * 1e6 / total as f64;
    println!("{:>10} {:>14.2} {:>14.2}", "all", per(all_wall), per(all_cpu));
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<u64> = std::env::args().skip(1).map(|a| a.parse()).collect::<Result<_, _>>()?;
    let arg = |i: usize, default: u64| args.get(i).copied().unwrap_or(default);
    let (total, per_call, parents) =
        (arg(0, 200_000).max(1), arg(1, 32).max(1), arg(2, 1000).max(1));
    let updates = arg(3, 0);
    let td = TrustDomain::new("example.org")?;
    let dir = tempfile::tempdir()?;
    let config = StoreConfig { checkpoint_every: None, ..StoreConfig::new(td.clone()) };
    let store = Store::open(dir.path(), config)?;

    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let start_ms = 1_764_547_200_000_u64;
    let mut ids = Vec::with_capacity(usize::try_from(total)?);
    println!("{total} entry creates, {per_call} log entries per call, {parents} parent IDs");
    timed(&store, total, per_call, |n| {
        // About ten thousand ids a second, as at the bench's highest rate.
        let id = time_ordered_id(start_ms + n / 10, next_random(&mut rng))?;
        ids.push(id.clone());
        Ok(Command::CreateEntries(vec![entry(&td, n, parents, id)?]))
    })?;
    if updates > 0 {
        println!("{updates} updates of entries drawn at random, {per_call} log entries per call");
        timed(&store, updates, per_call, |_| {
            let pick = usize::try_from(next_random(&mut rng) % ids.len() as u64)?;
            let id = ids.get(pick).ok_or("no entry")?.clone();
            let ttl = i32::try_from(next_random(&mut rng) % 3600)? + 60;
            let patch = EntryPatch { x509_svid_ttl: Some(ttl), ..EntryPatch::default() };
            Ok(Command::UpdateEntries(vec![EntryUpdate { id, patch }]))
        })?;
    }
    store.close()?;
    Ok(())
}
