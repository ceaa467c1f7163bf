//! `offer` throughput: 1,000,000 registrations over 10,000 keys with 3 apps per key, the
//! shape of a large rollout. Target: at least 2,000,000 registrations/s on one core.
//!
//! `cargo bench -p snp-core --bench offer` prints criterion's figures, and a summary line
//! in registrations per second.

use std::time::Instant as WallClock;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use snp_core::{DebounceConfig, Debouncer, Instant};

const REGISTRATIONS: usize = 1_000_000;
const KEYS: usize = 10_000;
const APPS: usize = 3;

struct Workload {
    interfaces: Vec<String>,
    apps: Vec<String>,
}

impl Workload {
    fn new() -> Self {
        Self {
            interfaces: (0..KEYS)
                .map(|i| format!("org.apache.dubbo.demo.service{}.DemoService{i}", i % 97))
                .collect(),
            apps: (0..APPS).map(|a| format!("demo-provider-{a}")).collect(),
        }
    }

    /// Offers every registration at 1 ms steps per 1,000 and returns how many were taken.
    fn run(&self, d: &mut Debouncer) -> usize {
        let mut accepted = 0;
        for i in 0..REGISTRATIONS {
            let now = Instant::from_millis((i / 1000) as u64);
            let iface = &self.interfaces[i % KEYS];
            let app = &self.apps[(i / KEYS) % APPS];
            accepted += usize::from(d.offer(now, "default", iface, app).is_ok());
        }
        accepted
    }
}

fn bench_offer(c: &mut Criterion) {
    let w = Workload::new();

    // A plain timed pass first, so the figure is printed even with `--bench` filters.
    let mut d = Debouncer::new(DebounceConfig::default());
    let start = WallClock::now();
    let accepted = w.run(&mut d);
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(accepted, REGISTRATIONS);
    assert_eq!(d.pending_keys(), KEYS);
    assert_eq!(d.pending_entries(), KEYS * APPS);
    println!(
        "offer: {REGISTRATIONS} registrations over {KEYS} keys x {APPS} apps in {:.3} s = {:.0} registrations/s (target >= 2,000,000/s)",
        secs,
        REGISTRATIONS as f64 / secs
    );

    let mut group = c.benchmark_group("debouncer");
    group.sample_size(10);
    group.throughput(Throughput::Elements(REGISTRATIONS as u64));
    group.bench_function("offer_1m_over_10k_keys", |b| {
        b.iter_batched(
            || Debouncer::new(DebounceConfig::default()),
            |mut d| w.run(&mut d),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench_offer);
criterion_main!(benches);
