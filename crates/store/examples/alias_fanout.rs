//! Measures writes under a node alias that a whole cluster of agents belongs to: N agents
//! share the selector `k8s:cluster:c1`, one alias entry has that selector, and every agent's
//! authorized entries are cached. Each round creates 20 entries parented by the alias, one
//! per command, and reports the time per command; then it serves every agent again.
//!
//! `cargo run --release -p ward-store --example alias_fanout -- [n] [limit]` (defaults:
//! n = 100000, limit = the store's default `cache_invalidate_limit`). A limit above n makes
//! every command list and invalidate each member.

use std::time::{Duration, Instant};

use ward_core::{EntryId, Selector, SelectorSet};
use ward_store::testdata::DataSet;
use ward_store::{Command, Store, StoreConfig};

fn serve_all(store: &Store, n: usize) -> Duration {
    let t = Instant::now();
    for i in 0..n {
        let got = store.authorized_entries(&DataSet::agent_id(i));
        std::hint::black_box(got.len());
    }
    t.elapsed()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map(|v| v.parse()).transpose()?.unwrap_or(100_000);
    let dir = tempfile::tempdir()?;
    let mut config = StoreConfig::new(DataSet::trust_domain());
    if let Some(limit) = args.next() {
        config.cache_invalidate_limit = limit.parse()?;
    }
    eprintln!("n={n} cache_invalidate_limit={}", config.cache_invalidate_limit);
    let store = Store::open(dir.path(), config)?;
    let cluster = Selector::parse("k8s:cluster:c1")?;
    for i in 0..n {
        let mut a = DataSet::agent(i);
        a.selectors =
            SelectorSet::new(vec![cluster.clone(), Selector::parse(&format!("k8s:node:{i}"))?]);
        store.apply(store.last_applied() + 1, &Command::AttestAgent(a))?;
    }
    let mut alias = DataSet::alias_entry(0);
    alias.selectors = SelectorSet::new(vec![cluster]);
    store.apply(store.last_applied() + 1, &Command::CreateEntries(vec![alias.clone()]))?;
    eprintln!("cache filled for {n} agents in {:.2?}", serve_all(&store, n));
    for round in 0..3 {
        let t = Instant::now();
        for k in 0..20 {
            let mut e = DataSet::alias_child_entry(0, 0);
            e.id = EntryId::new(&format!("fanout-{round}-{k}"))?;
            e.spiffe_id = DataSet::trust_domain().spiffe_id(&format!("/fanout/{round}/{k}"))?;
            e.parent_id = alias.spiffe_id.clone();
            store.apply(store.last_applied() + 1, &Command::CreateEntries(vec![e]))?;
        }
        let per = t.elapsed() / 20;
        let refill = serve_all(&store, n);
        eprintln!("round {round}: {per:.2?} per create under the alias; serving all {refill:.2?}");
    }
    let last = store.authorized_entries(&DataSet::agent_id(n - 1));
    if last.len() != 60 {
        return Err(format!("agent {} has {} entries, expected 60", n - 1, last.len()).into());
    }
    Ok(())
}
