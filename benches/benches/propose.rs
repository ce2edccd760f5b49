#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! Write throughput: the single-server `LocalProposer` against a one-member Raft cluster
//! (what `ward-server run` uses: its raft log in journal files of its own, `WalLogStore`),
//! each applying `CreateEntries` of one entry to a fresh sled store, with 1 and 64
//! proposals in flight. After the cluster runs, the share of the driver's time spent
//! persisting the log (append, and the sync thread's `fdatasync`s) versus applying is
//! printed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ward_core::RegistrationEntry;
use ward_server::proposer::{ClusterProposer, LocalProposer, Proposer};
use ward_store::testdata::DataSet;
use ward_store::{Command, Store, StoreConfig};

fn entry(n: u64) -> Command {
    let e: RegistrationEntry = DataSet::workload_entry(n as usize, 0);
    Command::CreateEntries(vec![e])
}

/// Runs `total` proposals with `inflight` at a time and returns the elapsed time.
async fn drive(p: Arc<dyn Proposer>, next: &mut u64, total: u64, inflight: u64) -> Duration {
    let start = Instant::now();
    let mut tasks = Vec::new();
    let per = total / inflight;
    for _ in 0..inflight {
        let p = p.clone();
        let first = *next;
        *next += per;
        tasks.push(tokio::spawn(async move {
            for n in first..first + per {
                p.propose(entry(n)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed()
}

fn store(dir: &std::path::Path) -> Store {
    Store::open(dir, StoreConfig::new(DataSet::trust_domain())).unwrap()
}

fn propose(c: &mut Criterion) {
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut group = c.benchmark_group("propose");
    group.sample_size(10).measurement_time(Duration::from_secs(10));
    for inflight in [1u64, 64] {
        group.throughput(Throughput::Elements(inflight));

        let dir = tempfile::tempdir().unwrap();
        let local: Arc<dyn Proposer> = Arc::new(LocalProposer::new(store(dir.path())));
        let mut next = 0;
        group.bench_function(format!("local/{inflight}"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(drive(local.clone(), &mut next, iters * inflight, inflight))
            })
        });

        // As `ward-server` lays out a data directory.
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir.path().join("store"));
        let handle = rt.block_on(async {
            let mut config = ward_cluster::ClusterConfig::new(1);
            config.bootstrap = true;
            let handle = ward_cluster::start(ward_cluster::Replica {
                config,
                log: ward_cluster::open_log(&dir.path().join("raft-log"), &s).unwrap(),
                store: s.clone(),
                transport: None,
                snapshots: None,
                runtime: tokio::runtime::Handle::current(),
            })
            .unwrap();
            while handle.leader() != Some(1) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            handle
        });
        let cluster: Arc<dyn Proposer> = Arc::new(ClusterProposer::new(handle.clone()));
        let mut next = 0;
        group.bench_function(format!("cluster/{inflight}"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(drive(cluster.clone(), &mut next, iters * inflight, inflight))
            })
        });
        let t = handle.timings();
        let total = t.persist + t.apply;
        eprintln!(
            "[cluster/{inflight}] {} proposals in {} ready cycles, {} flushes; persist (append+flush) {:.2?} = {:.0}%, apply {:.2?} = {:.0}%",
            next,
            t.readies,
            t.flushes,
            t.persist,
            100.0 * t.persist.as_secs_f64() / total.as_secs_f64().max(1e-9),
            t.apply,
            100.0 * t.apply.as_secs_f64() / total.as_secs_f64().max(1e-9),
        );
        handle.shutdown();
        rt.block_on(handle.stopped()).unwrap();
    }
    group.finish();
}

criterion_group!(benches, propose);
criterion_main!(benches);
