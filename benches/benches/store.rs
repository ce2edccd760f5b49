#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! ward-store hot paths: authorized entries (cached and not) at 1k and 1M entries, entry
//! creation, opening a 1M-entry store, and restarting one (open plus log replay).
//!
//! The data sets are built once under `<target>/ward-bench-data/` and reused by later runs
//! (building the 1M set takes about a minute). Footprint figures (RSS, size on disk) are
//! printed to stderr when a set is opened.

/// The allocator ward-server runs with, so store timings here are the server's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use ward_core::{EntryId, RegistrationEntry};
use ward_store::testdata::DataSet;
use ward_store::{Command, Committed, Store, StoreConfig};

/// Committed log entries replayed by `store/restart_1m` (half create an entry, half delete
/// it again, so the set stays as it is).
const RESTART_REPLAY: usize = 1000;

fn data_dir(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // <target>/<profile>/deps/<bench binary>
    let target = exe.ancestors().nth(3).unwrap().to_path_buf();
    target.join("ward-bench-data").join(name)
}

/// No automatic entry images: each bench chooses whether its open reads one.
fn config() -> StoreConfig {
    StoreConfig { checkpoint_every: None, ..StoreConfig::new(DataSet::trust_domain()) }
}

/// Removes the entry image of the store in `dir`, so its next open reads the engine.
fn remove_image(dir: &std::path::Path) {
    match std::fs::remove_file(dir.join("ward-entries.image")) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("removing the entry image: {e}"),
    }
}

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

fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    rd.flatten()
        .map(|e| {
            let md = e.metadata().unwrap();
            if md.is_dir() { dir_bytes(&e.path()) } else { md.len() }
        })
        .sum()
}

fn open_set(set: DataSet, name: &str) -> Store {
    let dir = data_dir(name);
    let t = Instant::now();
    let store = set.open_or_build(&dir, config()).unwrap();
    eprintln!(
        "[store {name}] ready in {:.2?}: {} entries, {} agents, RSS {} MiB, disk {} MiB",
        t.elapsed(),
        store.entry_count(),
        store.agent_count(),
        rss_kib() / 1024,
        dir_bytes(&dir) >> 20
    );
    store
}

fn authorized(c: &mut Criterion) {
    let mut g = c.benchmark_group("store");
    g.sample_size(10);
    // One open per sample: ten per bench (linear sampling would make 55), and at most
    // 10,000 revisions for `restart_1m/from_checkpoint` to catch up on.
    g.sampling_mode(SamplingMode::Flat);
    let mut built = false;
    g.bench_function("open_1m", |b| {
        // Make sure the set exists (built on the first run), then time reopening it until
        // it answers a query. Criterion calls this closure more than once.
        if !built {
            drop(open_set(DataSet::LARGE, "1m"));
            built = true;
        }
        let dir = data_dir("1m");
        let agent = DataSet::agent_id(0);
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                remove_image(&dir);
                let t = Instant::now();
                let store = Store::open(&dir, config()).unwrap();
                assert!(!store.opened_from_image());
                assert_eq!(store.authorized_entries_uncached(&agent).len(), 15);
                total += t.elapsed();
                drop(store);
            }
            total
        });
    });
    // A restart as a replica does it after a crash with no entry image: open, replay the
    // committed log entries after the applied index, answer an agent.
    g.bench_function("restart_1m", |b| restart(b, false));
    // The same after a crash when an entry image was written earlier (as ward-server does
    // every `CHECKPOINT_EVERY` revisions): the open reads the image and catches up with
    // the entries the change feed names after it (1,000 more log entries per iteration).
    g.bench_function("restart_1m/from_checkpoint", |b| {
        let store = Store::open(data_dir("1m"), config()).unwrap();
        store.checkpoint().unwrap();
        drop(store);
        restart(b, true);
    });
    g.finish();
    authorized_queries(c);
}

/// Criterion's loop for `store/restart_1m`: open the `1m` set (from its entry image when
/// `from_image`, else from the engine), replay [`RESTART_REPLAY`] committed log entries,
/// answer an agent; flush and drop without closing, as a crash leaves the store.
fn restart(b: &mut criterion::Bencher<'_>, from_image: bool) {
    let dir = data_dir("1m");
    let agent = DataSet::agent_id(0);
    let log = DataSet::LARGE.replay_log(RESTART_REPLAY);
    b.iter_custom(|iters| {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            if !from_image {
                remove_image(&dir);
            }
            let t = Instant::now();
            let store = Store::open(&dir, config()).unwrap();
            assert_eq!(store.opened_from_image(), from_image);
            let applied = store.last_applied();
            let committed: Vec<Committed<'_>> = (applied + 1..)
                .zip(&log)
                .map(|(index, data)| Committed::Entry { index, term: 1, data })
                .collect();
            assert_eq!(store.apply_committed(&committed).unwrap().len(), log.len());
            assert_eq!(store.authorized_entries_uncached(&agent).len(), 15);
            total += t.elapsed();
            store.flush().unwrap();
            drop(store);
        }
        total
    });
}

fn authorized_queries(c: &mut Criterion) {
    let mut g = c.benchmark_group("store");
    for (set, name) in [(DataSet::SMALL, "1k"), (DataSet::LARGE, "1m")] {
        let mut store: Option<Store> = None;
        let sample = set.sample_agents(1000, 42);
        g.bench_function(format!("authorized_entries/uncached/{name}"), |b| {
            let store = store.get_or_insert_with(|| open_set(set, name));
            for a in &sample {
                assert_eq!(store.authorized_entries_uncached(a).len(), 15);
            }
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % sample.len();
                black_box(store.authorized_entries_uncached(&sample[i]))
            });
        });
        // The same query followed by flattening the shared per-parent groups into one
        // id-sorted vector of the entries, as the server's sync handler does: the cost a
        // consumer adds before it reads the entries themselves.
        g.bench_function(format!("authorized_entries/uncached_flat/{name}"), |b| {
            let store = store.get_or_insert_with(|| open_set(set, name));
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % sample.len();
                let found = store.authorized_entries_uncached(&sample[i]);
                let flat: Vec<_> = found.iter().collect();
                black_box(flat.len())
            });
        });
        g.bench_function(format!("authorized_entries/cached/{name}"), |b| {
            let store = store.get_or_insert_with(|| open_set(set, name));
            for a in &sample {
                assert_eq!(store.authorized_entries(a).len(), 15);
            }
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % sample.len();
                black_box(store.authorized_entries(&sample[i]))
            });
        });
        if let Some(s) = store.take() {
            eprintln!("[store {name}] after queries: RSS {} MiB", rss_kib() / 1024);
            drop(s);
        }
    }
    g.finish();
}

fn new_entry(n: u64) -> RegistrationEntry {
    let agent = (n % DataSet::SMALL.n as u64) as usize;
    let mut e = DataSet::workload_entry(agent, 0);
    e.id = EntryId::new(&format!("bench-{n:012}")).unwrap();
    e.spiffe_id = DataSet::trust_domain().spiffe_id(&format!("/bench/{n}")).unwrap();
    e
}

fn apply(c: &mut Criterion) {
    let mut g = c.benchmark_group("store");
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config()).unwrap();
    DataSet::SMALL.load(&store).unwrap();
    // Serve every agent once so creates pay for precise cache invalidation, as on a server.
    for i in 0..DataSet::SMALL.n {
        assert_eq!(store.authorized_entries(&DataSet::agent_id(i)).len(), 15);
    }
    let mut n = 0u64;
    g.throughput(Throughput::Elements(1));
    g.bench_function("apply_create_entry/single", |b| {
        b.iter_batched(
            || {
                n += 1;
                Command::CreateEntries(vec![new_entry(n)])
            },
            |cmd| store.apply(store.last_applied() + 1, &cmd).unwrap(),
            BatchSize::SmallInput,
        );
    });
    g.throughput(Throughput::Elements(100));
    g.bench_function("apply_create_entry/batch100", |b| {
        b.iter_batched(
            || {
                let items = (0..100)
                    .map(|_| {
                        n += 1;
                        new_entry(n)
                    })
                    .collect();
                Command::CreateEntries(items)
            },
            |cmd| store.apply(store.last_applied() + 1, &cmd).unwrap(),
            BatchSize::SmallInput,
        );
    });
    g.finish();
}

criterion_group!(benches, apply, authorized);
criterion_main!(benches);
