//! What the stats a proxied request updates cost per request when several threads
//! update the same stats at once, as workers do: registered stats (per-thread cells,
//! what the proxy uses) against detached handles (one shared atomic per stat, how
//! every stat was kept before). A benchmark for `perf/`, not a test: it prints ns
//! per request per thread, for 1 up to THREADS threads (default: the CPUs).
//!
//!     cargo run --release -p strait --example stats_contention [THREADS] [MILLIONS]
use std::hint::black_box;
use std::time::Instant;

use strait::stats::{Counter, Gauge, Histogram, Scope, Store};

/// The stats one HTTP/1.1 request through one cluster updates.
#[derive(Clone)]
struct RequestStats {
    rq_total: Counter,
    rq_http1: Counter,
    rq_active: Gauge,
    rq_2xx: Counter,
    upstream_total: Counter,
    upstream_active: Gauge,
    upstream_2xx: Counter,
    upstream_200: Counter,
    upstream_time: Histogram,
}

impl RequestStats {
    fn registered(store: &Store) -> Self {
        let (http, cluster) = (Scope::http("bench"), Scope::cluster("bench"));
        RequestStats {
            rq_total: store.counter(&http, "downstream_rq_total"),
            rq_http1: store.counter(&http, "downstream_rq_http1_total"),
            rq_active: store.gauge(&http, "downstream_rq_active"),
            rq_2xx: store.counter(&http, "downstream_rq_2xx"),
            upstream_total: store.counter(&cluster, "upstream_rq_total"),
            upstream_active: store.gauge(&cluster, "upstream_rq_active"),
            upstream_2xx: store.counter(&cluster, "upstream_rq_2xx"),
            upstream_200: store.counter(&cluster, "upstream_rq_200"),
            upstream_time: store.histogram(&cluster, "upstream_rq_time"),
        }
    }

    fn detached() -> Self {
        RequestStats {
            rq_total: Counter::default(),
            rq_http1: Counter::default(),
            rq_active: Gauge::default(),
            rq_2xx: Counter::default(),
            upstream_total: Counter::default(),
            upstream_active: Gauge::default(),
            upstream_2xx: Counter::default(),
            upstream_200: Counter::default(),
            upstream_time: Histogram::default(),
        }
    }

    fn request(&self, i: u64) {
        self.rq_total.inc();
        self.rq_http1.inc();
        self.rq_active.inc();
        self.upstream_total.inc();
        self.upstream_active.inc();
        self.upstream_time.record(black_box(i & 3));
        self.upstream_2xx.inc();
        self.upstream_200.inc();
        self.upstream_active.dec();
        self.rq_active.dec();
        self.rq_2xx.inc();
    }
}

/// ns per request per thread, with `threads` threads each making `requests`.
fn run(stats: &RequestStats, threads: usize, requests: u64) -> f64 {
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let stats = stats.clone();
            scope.spawn(move || (0..requests).for_each(|i| stats.request(i)));
        }
    });
    start.elapsed().as_nanos() as f64 / requests as f64
}

fn main() {
    let mut args = std::env::args().skip(1);
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let threads: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(cpus);
    let millions: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let requests = millions * 1_000_000;
    let store = Store::new();
    let (cells, shared) = (RequestStats::registered(&store), RequestStats::detached());
    println!("threads  per-thread cells  shared atomics  (ns per request per thread)");
    for n in 1..=threads {
        // Each mode twice, alternated; the better of each.
        let mut best = (f64::MAX, f64::MAX);
        for _ in 0..2 {
            best.0 = best.0.min(run(&cells, n, requests));
            best.1 = best.1.min(run(&shared, n, requests));
        }
        println!("{n:7}  {:16.1}  {:14.1}", best.0, best.1);
    }
    // Every thread's counts, summed: none lost.
    let made = 2 * requests * (1..=threads as u64).sum::<u64>();
    assert_eq!(cells.rq_total.value(), made);
}
