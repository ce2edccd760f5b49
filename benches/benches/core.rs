#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! ward-core hot paths.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use ward_core::SpiffeId;

fn core(c: &mut Criterion) {
    let mut g = c.benchmark_group("core");
    g.bench_function("spiffe_id_parse", |b| {
        b.iter(|| {
            SpiffeId::parse(black_box("spiffe://example.org/ns/prod/sa/web-frontend")).unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, core);
criterion_main!(benches);
