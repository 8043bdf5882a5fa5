//! The stats store: counters, gauges and histograms named like Envoy's.
//!
//! Handles are registered at config time (`Store::counter` and friends format the name
//! and take the registry lock once); a request then only adds to its own thread's
//! cells through the handles it was given (`cells`): no string formatting, no lock,
//! no `lock`-prefixed instruction, no line another worker writes. The registry lock
//! is taken again only by registration and by the admin renderers, which sum the
//! threads' cells.
//!
//! Registering a name that exists returns the same handle, so a config reload that
//! re-registers its stats keeps their values. Each stat records its Prometheus family
//! and label when registered (from its `Scope`), because a cluster name may contain
//! dots and cannot be recovered from the dotted name.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use parking_lot::Mutex;

/// Envoy's default histogram bucket bounds (milliseconds for `*_time` stats).
pub const BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// The quantiles `/stats` prints for each histogram, as Envoy does.
const QUANTILES: [(f64, &str); 10] = [
    (0.0, "P0"),
    (0.25, "P25"),
    (0.5, "P50"),
    (0.75, "P75"),
    (0.9, "P90"),
    (0.95, "P95"),
    (0.99, "P99"),
    (0.995, "P99.5"),
    (0.999, "P99.9"),
    (1.0, "P100"),
];

/// Where a stat lives: its dotted name prefix and its Prometheus family and label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// Dotted prefix including the trailing dot, e.g. `cluster.backend.`.
    prefix: String,
    /// Prometheus family prefix including the trailing `_`, e.g. `envoy_cluster_`.
    family: String,
    label: Option<(&'static str, String)>,
}

impl Scope {
    /// `http.<stat_prefix>.<stat>`, `envoy_http_<stat>{envoy_http_conn_manager_prefix=..}`.
    pub fn http(stat_prefix: &str) -> Scope {
        Scope::tagged("http", "envoy_http_conn_manager_prefix", stat_prefix)
    }

    /// `cluster.<name>.<stat>`, `envoy_cluster_<stat>{envoy_cluster_name=..}`.
    pub fn cluster(name: &str) -> Scope {
        Scope::tagged("cluster", "envoy_cluster_name", name)
    }

    /// `listener.<address>.<stat>`, `envoy_listener_<stat>{envoy_listener_address=..}`.
    pub fn listener(address: &str) -> Scope {
        Scope::tagged("listener", "envoy_listener_address", address)
    }

    /// `server.<stat>`, `envoy_server_<stat>`.
    pub fn server() -> Scope {
        Scope::custom("server")
    }

    /// `<prefix>.<stat>`, `envoy_<prefix>_<stat>` with the prefix sanitized.
    pub fn custom(prefix: &str) -> Scope {
        Scope {
            prefix: format!("{prefix}."),
            family: format!("envoy_{prefix}_"),
            label: None,
        }
    }

    fn tagged(kind: &str, label: &'static str, value: &str) -> Scope {
        Scope {
            prefix: format!("{kind}.{value}."),
            family: format!("envoy_{kind}_"),
            label: Some((label, value.to_owned())),
        }
    }

    /// The dotted name of `stat` in this scope, e.g. `cluster.backend.upstream_rq_total`.
    pub fn name(&self, stat: &str) -> String {
        format!("{}{stat}", self.prefix)
    }
}

/// Where a stat's value lives: a slot of per-thread cells (a registered stat, see
/// `cells`), or one shared atomic (a detached handle: `default()`, a name taken by
/// another kind, or past the slots).
#[derive(Debug, Clone)]
enum Cell {
    Slot(u32),
    Shared(Arc<AtomicU64>),
}

impl Cell {
    /// A registered stat's slot (a shared atomic once the slots run out).
    fn registered() -> Cell {
        crate::cells::allocate(1).map_or_else(|| Cell::Shared(Arc::default()), Cell::Slot)
    }

    #[inline]
    fn add(&self, n: u64) {
        match self {
            Cell::Slot(slot) => crate::cells::add(*slot, n),
            Cell::Shared(cell) => {
                cell.fetch_add(n, Relaxed);
            }
        }
    }

    fn value(&self) -> u64 {
        match self {
            Cell::Slot(slot) => crate::cells::sum(*slot),
            Cell::Shared(cell) => cell.load(Relaxed),
        }
    }

    fn set(&self, value: u64) {
        match self {
            Cell::Slot(slot) => crate::cells::set(*slot, value),
            Cell::Shared(cell) => cell.store(value, Relaxed),
        }
    }
}

impl Default for Cell {
    fn default() -> Self {
        Cell::Shared(Arc::default())
    }
}

/// A monotonically increasing count. Registered (`Store::counter`), its adds are
/// per-thread (`cells`): a load and a store on a line only this thread writes.
#[derive(Debug, Clone, Default)]
pub struct Counter(Cell);

impl Counter {
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.add(n);
    }
    pub fn value(&self) -> u64 {
        self.0.value()
    }
}

/// A value that goes up and down (active connections, pool sizes). Registered, its
/// adds are per-thread as a counter's; `set` makes the sum the value.
#[derive(Debug, Clone, Default)]
pub struct Gauge(Cell);

impl Gauge {
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }
    #[inline]
    pub fn dec(&self) {
        self.add(-1);
    }
    #[inline]
    pub fn add(&self, n: i64) {
        // Two's complement: a wrapping add of `n as u64` subtracts a negative.
        self.0.add(n as u64);
    }
    pub fn set(&self, n: i64) {
        self.0.set(n as u64);
    }
    pub fn value(&self) -> i64 {
        self.0.value() as i64
    }
}

/// Buckets per histogram: one per bound of `BUCKETS` and the overflow.
const HISTOGRAM_BUCKETS: usize = BUCKETS.len() + 1;

/// A distribution over `BUCKETS`; values are usually milliseconds.
#[derive(Debug, Clone, Default)]
pub struct Histogram(Arc<HistogramCells>);

/// Recording a value adds to its bucket and to the sum: per-thread cells for a
/// registered histogram (a run of `HISTOGRAM_BUCKETS + 1` slots), shared atomics for a
/// detached one. The count is the buckets' total, read at scrape time; min and max
/// are shared and written only when a value passes them (`fetch_min`/`fetch_max` are
/// a `lock cmpxchg` loop on x86, paid even when nothing changes).
#[derive(Debug)]
struct HistogramCells {
    counts: Counts,
    min: AtomicU64,
    max: AtomicU64,
}

/// Where a histogram's per-bucket (not cumulative) counts and sum are: the last
/// bucket is the overflow.
#[derive(Debug)]
enum Counts {
    /// The first of `HISTOGRAM_BUCKETS + 1` slots: the buckets, then the sum.
    Slots(u32),
    Shared {
        buckets: [AtomicU64; HISTOGRAM_BUCKETS],
        sum: AtomicU64,
    },
}

impl HistogramCells {
    fn new(counts: Counts) -> Self {
        HistogramCells {
            counts,
            min: AtomicU64::new(u64::MAX),
            max: AtomicU64::new(0),
        }
    }
}

impl Default for HistogramCells {
    fn default() -> Self {
        HistogramCells::new(Counts::Shared {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum: AtomicU64::new(0),
        })
    }
}

impl Histogram {
    /// A registered histogram: its buckets and sum in per-thread cells.
    fn registered() -> Histogram {
        match crate::cells::allocate(HISTOGRAM_BUCKETS as u32 + 1) {
            Some(first) => Histogram(Arc::new(HistogramCells::new(Counts::Slots(first)))),
            None => Histogram::default(),
        }
    }

    pub fn record(&self, value: u64) {
        let cells = &*self.0;
        let bucket = BUCKETS.partition_point(|&bound| bound < value as f64);
        match &cells.counts {
            Counts::Slots(first) => {
                crate::cells::add(first + bucket as u32, 1);
                crate::cells::add(first + HISTOGRAM_BUCKETS as u32, value);
            }
            Counts::Shared { buckets, sum } => {
                buckets[bucket].fetch_add(1, Relaxed);
                sum.fetch_add(value, Relaxed);
            }
        }
        if value < cells.min.load(Relaxed) {
            cells.min.fetch_min(value, Relaxed);
        }
        if value > cells.max.load(Relaxed) {
            cells.max.fetch_max(value, Relaxed);
        }
    }

    /// Per-bucket counts and the sum, read once.
    fn read(&self) -> ([u64; HISTOGRAM_BUCKETS], u64) {
        match &self.0.counts {
            Counts::Slots(first) => {
                let sums = crate::cells::sums(*first, HISTOGRAM_BUCKETS + 1);
                (std::array::from_fn(|i| sums[i]), sums[HISTOGRAM_BUCKETS])
            }
            Counts::Shared { buckets, sum } => (
                std::array::from_fn(|i| buckets[i].load(Relaxed)),
                sum.load(Relaxed),
            ),
        }
    }

    pub fn count(&self) -> u64 {
        self.read().0.iter().sum()
    }

    pub fn sum(&self) -> u64 {
        self.read().1
    }

    /// Estimate of quantile `q` (0..=1): linear interpolation inside the bucket that
    /// holds it, clamped to the observed min and max. NaN when nothing was recorded.
    pub fn quantile(&self, q: f64) -> f64 {
        let (counts, _) = self.read();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return f64::NAN;
        }
        let (min, max) = (
            self.0.min.load(Relaxed) as f64,
            self.0.max.load(Relaxed) as f64,
        );
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut seen = 0u64;
        for (i, &n) in counts.iter().enumerate() {
            if n == 0 || ((seen + n) as f64) < rank {
                seen += n;
                continue;
            }
            let lower = if i == 0 { 0.0 } else { BUCKETS[i - 1] };
            let upper = BUCKETS.get(i).copied().unwrap_or(max);
            let estimate = lower + (upper - lower) * (rank - seen as f64) / n as f64;
            return estimate.clamp(min, max);
        }
        max
    }

    /// Cumulative counts per bound of `BUCKETS`, then the total (`+Inf`).
    fn cumulative(&self) -> Vec<u64> {
        let mut running = 0;
        self.read()
            .0
            .iter()
            .map(|n| {
                running += n;
                running
            })
            .collect()
    }
}

#[derive(Debug, Clone)]
enum Handle {
    Counter(Counter),
    Gauge(Gauge),
    Histogram(Histogram),
}

impl Handle {
    fn kind(&self) -> &'static str {
        match self {
            Handle::Counter(_) => "counter",
            Handle::Gauge(_) => "gauge",
            Handle::Histogram(_) => "histogram",
        }
    }
}

/// One registered stat: its handle and its Prometheus identity.
#[derive(Debug, Clone)]
struct Metric {
    handle: Handle,
    /// Sanitized family name, e.g. `envoy_cluster_upstream_rq_total`.
    family: String,
    /// Rendered labels without braces, e.g. `envoy_cluster_name="backend"`; may be empty.
    labels: String,
}

/// A stat kept outside the registry (a wasm plugin's, in `strait_filters`), read
/// only when an admin endpoint renders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalStat {
    /// Dotted name for `/stats`, e.g. `wasmcustom.requests_total`.
    pub name: String,
    /// Prometheus family, used as given (sanitized), e.g. `requests_total`.
    pub family: String,
    pub value: ExternalValue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExternalValue {
    Counter(u64),
    Gauge(i64),
    /// Sum and count only: Prometheus gets `_sum`, `_count` and the `+Inf` bucket;
    /// `/stats` and its JSON leave these out, having no quantiles to print.
    Histogram {
        sum: u64,
        count: u64,
    },
}

/// Lists a family of external stats; called by the renderers, never per request.
pub type StatSource = Arc<dyn Fn() -> Vec<ExternalStat> + Send + Sync>;

#[derive(Default, Clone)]
struct Sources(BTreeMap<&'static str, StatSource>);

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

/// The process-wide registry of stats. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Store {
    registry: Arc<Mutex<BTreeMap<String, Metric>>>,
    sources: Arc<Mutex<Sources>>,
}

/// The registry's metrics and the external sources', sorted by name, those whose name
/// `filter` matches: what each `/stats` format renders.
fn selected<'a>(
    registry: &'a BTreeMap<String, Metric>,
    external: &'a [(String, Metric)],
    filter: Option<&regex::Regex>,
) -> Vec<(&'a String, &'a Metric)> {
    let mut all: Vec<(&String, &Metric)> = registry
        .iter()
        .chain(external.iter().map(|(name, metric)| (name, metric)))
        .filter(|(name, _)| filter.is_none_or(|f| f.is_match(name)))
        .collect();
    all.sort_by(|a, b| a.0.cmp(b.0));
    all
}

impl Store {
    pub fn new() -> Store {
        Store::default()
    }

    /// Admin `/reset_counters`: every registered counter to zero (gauges and
    /// histograms keep their values, as Envoy's).
    pub fn reset_counters(&self) {
        let registry = self.registry.lock();
        for metric in registry.values() {
            if let Handle::Counter(c) = &metric.handle {
                c.0.set(0);
            }
        }
    }

    pub fn counter(&self, scope: &Scope, stat: &str) -> Counter {
        let new = || Handle::Counter(Counter(Cell::registered()));
        match self.register(scope, stat, "counter", new) {
            Some(Handle::Counter(c)) => c,
            _ => Counter::default(),
        }
    }

    pub fn gauge(&self, scope: &Scope, stat: &str) -> Gauge {
        let new = || Handle::Gauge(Gauge(Cell::registered()));
        match self.register(scope, stat, "gauge", new) {
            Some(Handle::Gauge(g)) => g,
            _ => Gauge::default(),
        }
    }

    pub fn histogram(&self, scope: &Scope, stat: &str) -> Histogram {
        let new = || Handle::Histogram(Histogram::registered());
        match self.register(scope, stat, "histogram", new) {
            Some(Handle::Histogram(h)) => h,
            _ => Histogram::default(),
        }
    }

    /// The existing handle of that name, or a new one (`new` runs only then: a
    /// registered stat takes slots, and a reload re-registers every name). `None`
    /// (after a warning) when the name is taken by another kind; the caller then
    /// hands out a detached handle.
    fn register(
        &self,
        scope: &Scope,
        stat: &str,
        kind: &'static str,
        new: impl FnOnce() -> Handle,
    ) -> Option<Handle> {
        let name = scope.name(stat);
        let mut registry = self.registry.lock();
        if let Some(existing) = registry.get(&name) {
            if existing.handle.kind() == kind {
                return Some(existing.handle.clone());
            }
            let existing = existing.handle.kind();
            tracing::warn!(%name, existing, wanted = kind, "stat registered with another type");
            return None;
        }
        let fresh = new();
        let labels = scope
            .label
            .as_ref()
            .map_or_else(String::new, |(key, value)| {
                format!("{key}=\"{}\"", escape_label(value))
            });
        let metric = Metric {
            handle: fresh.clone(),
            family: sanitize(&format!("{}{stat}", scope.family)),
            labels,
        };
        registry.insert(name, metric);
        Some(fresh)
    }

    /// Adds a source of external stats under `key`, unless one is there already.
    pub fn add_source(&self, key: &'static str, source: impl FnOnce() -> StatSource) {
        self.sources.lock().0.entry(key).or_insert_with(source);
    }

    /// The external stats as registry entries, sorted by name; `histograms: false`
    /// leaves out the histograms (sum and count only) that `/stats` cannot print.
    fn external(&self, histograms: bool) -> Vec<(String, Metric)> {
        let sources: Vec<StatSource> = self.sources.lock().0.values().cloned().collect();
        let mut all: Vec<(String, Metric)> = sources
            .iter()
            .flat_map(|source| source())
            .filter(|stat| histograms || !matches!(stat.value, ExternalValue::Histogram { .. }))
            .map(|stat| {
                let handle = match stat.value {
                    ExternalValue::Counter(v) => {
                        let counter = Counter::default();
                        counter.add(v);
                        Handle::Counter(counter)
                    }
                    ExternalValue::Gauge(v) => {
                        let gauge = Gauge::default();
                        gauge.set(v);
                        Handle::Gauge(gauge)
                    }
                    ExternalValue::Histogram { sum, count } => {
                        // The overflow bucket holds the count: only `+Inf`, `_sum`
                        // and `_count` are rendered for these.
                        let buckets = std::array::from_fn(|i| {
                            AtomicU64::new(if i == BUCKETS.len() { count } else { 0 })
                        });
                        let sum = AtomicU64::new(sum);
                        let cells = HistogramCells::new(Counts::Shared { buckets, sum });
                        Handle::Histogram(Histogram(Arc::new(cells)))
                    }
                };
                let metric = Metric {
                    handle,
                    family: sanitize(&stat.family),
                    labels: String::new(),
                };
                (stat.name, metric)
            })
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Current value of a counter or gauge by dotted name; a histogram gives its sample
    /// count. For tests and the admin API.
    pub fn get(&self, name: &str) -> Option<i64> {
        let registry = self.registry.lock();
        Some(match &registry.get(name)?.handle {
            Handle::Counter(c) => i64::try_from(c.value()).unwrap_or(i64::MAX),
            Handle::Gauge(g) => g.value(),
            Handle::Histogram(h) => i64::try_from(h.count()).unwrap_or(i64::MAX),
        })
    }

    /// Envoy's `/stats` text: `name: value` for counters and gauges sorted by name, then
    /// histograms as quantile summaries. `filter` keeps the names it matches anywhere
    /// (Envoy's `?filter=`: `server` finds every name containing it, `^server\.` only
    /// those starting so).
    pub fn render_text(&self, filter: Option<&regex::Regex>) -> String {
        let external = self.external(false);
        let registry = self.registry.lock();
        let mut out = String::new();
        let mut histograms = Vec::new();
        for (name, metric) in selected(&registry, &external, filter) {
            match &metric.handle {
                Handle::Counter(c) => _ = writeln!(out, "{name}: {}", c.value()),
                Handle::Gauge(g) => _ = writeln!(out, "{name}: {}", g.value()),
                Handle::Histogram(h) => histograms.push((name, h)),
            }
        }
        for (name, h) in histograms {
            out.push_str(name);
            out.push(':');
            if h.count() == 0 {
                out.push_str(" No recorded values");
            }
            for (q, label) in QUANTILES.iter().filter(|_| h.count() > 0) {
                // Envoy prints (interval, cumulative); we keep only cumulative values.
                _ = write!(out, " {label}(nan,{})", round(h.quantile(*q)));
            }
            out.push('\n');
        }
        out
    }

    /// Prometheus text exposition format 0.0.4, one `# TYPE` per family; `filter`
    /// matches the Envoy names (`cluster.backend.upstream_rq_total`), as Envoy's.
    pub fn render_prometheus(&self, filter: Option<&regex::Regex>) -> String {
        let external = self.external(true);
        let registry = self.registry.lock();
        let mut families: BTreeMap<&str, Vec<&Metric>> = BTreeMap::new();
        for (_, metric) in selected(&registry, &external, filter) {
            families.entry(&metric.family).or_default().push(metric);
        }
        let mut out = String::new();
        for (family, metrics) in families {
            let kind = metrics[0].handle.kind();
            _ = writeln!(out, "# TYPE {family} {kind}");
            // Two scopes could sanitize to one family with different kinds; keep the first.
            for metric in metrics.iter().filter(|m| m.handle.kind() == kind) {
                let labels = &metric.labels;
                let braced = if labels.is_empty() {
                    String::new()
                } else {
                    format!("{{{labels}}}")
                };
                match &metric.handle {
                    Handle::Counter(c) => _ = writeln!(out, "{family}{braced} {}", c.value()),
                    Handle::Gauge(g) => _ = writeln!(out, "{family}{braced} {}", g.value()),
                    Handle::Histogram(h) => {
                        let sep = if labels.is_empty() { "" } else { "," };
                        let cumulative = h.cumulative();
                        let bounds = BUCKETS.iter().map(|b| b.to_string());
                        let bounds = bounds.chain(std::iter::once("+Inf".to_owned()));
                        for (bound, n) in bounds.zip(&cumulative) {
                            _ = writeln!(out, "{family}_bucket{{{labels}{sep}le=\"{bound}\"}} {n}");
                        }
                        _ = writeln!(out, "{family}_sum{braced} {}", h.sum());
                        _ = writeln!(out, "{family}_count{braced} {}", h.count());
                    }
                }
            }
        }
        out
    }

    /// `/stats?format=json`: `{"stats":[{"name":..,"value":..},..]}` and, as Envoy does,
    /// a last element `{"histograms":{"supported_quantiles":..,"computed_quantiles":..}}`.
    pub fn render_json(&self, filter: Option<&regex::Regex>) -> serde_json::Value {
        use serde_json::json;
        let external = self.external(false);
        let registry = self.registry.lock();
        let mut stats = Vec::new();
        let mut computed = Vec::new();
        for (name, metric) in selected(&registry, &external, filter) {
            match &metric.handle {
                Handle::Counter(c) => stats.push(json!({"name": name, "value": c.value()})),
                Handle::Gauge(g) => stats.push(json!({"name": name, "value": g.value()})),
                Handle::Histogram(h) => {
                    let cumulative = |q: f64| Some(round(h.quantile(q))).filter(|v| v.is_finite());
                    let values = QUANTILES
                        .map(|(q, _)| json!({"interval": null, "cumulative": cumulative(q)}));
                    computed.push(json!({"name": name, "values": values}));
                }
            }
        }
        if !computed.is_empty() {
            let supported = QUANTILES.map(|(q, _)| q * 100.0);
            stats.push(json!({"histograms": {
                "supported_quantiles": supported,
                "computed_quantiles": computed,
            }}));
        }
        json!({ "stats": stats })
    }
}

/// Rounds to 3 decimals so estimates print compactly (`12.5`, not `12.499999999`).
fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// A valid Prometheus metric name: `[a-zA-Z_:][a-zA-Z0-9_:]*`; anything else becomes `_`.
fn sanitize(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// Escapes a Prometheus label value: backslash, double quote and newline.
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_stats_render_with_their_own_names() {
        let store = Store::new();
        store.counter(&Scope::server(), "live").inc();
        let source: StatSource = Arc::new(|| {
            vec![
                ExternalStat {
                    name: "wasmcustom.plugin_hits".into(),
                    family: "plugin_hits".into(),
                    value: ExternalValue::Counter(3),
                },
                ExternalStat {
                    name: "wasmcustom.plugin_ms".into(),
                    family: "plugin_ms".into(),
                    value: ExternalValue::Histogram { sum: 10, count: 2 },
                },
            ]
        });
        store.add_source("test", || source);
        let text = store.render_text(None);
        assert_eq!(text, "server.live: 1\nwasmcustom.plugin_hits: 3\n");
        let prometheus = store.render_prometheus(None);
        assert!(prometheus.contains("# TYPE plugin_hits counter\nplugin_hits 3\n"));
        assert!(prometheus.contains("plugin_ms_bucket{le=\"+Inf\"} 2\n"));
        assert!(prometheus.contains("plugin_ms_sum 10\nplugin_ms_count 2\n"));
        let json = store.render_json(None).to_string();
        assert!(json.contains(r#"{"name":"wasmcustom.plugin_hits","value":3}"#));
    }

    #[test]
    fn re_registration_returns_the_same_handle() {
        let store = Store::new();
        let scope = Scope::cluster("backend");
        store.counter(&scope, "upstream_rq_total").inc();
        let again = store.counter(&Scope::cluster("backend"), "upstream_rq_total");
        again.add(2);
        assert_eq!(again.value(), 3);
        assert_eq!(store.get("cluster.backend.upstream_rq_total"), Some(3));

        let gauge = store.gauge(&scope, "upstream_cx_active");
        gauge.inc();
        gauge.inc();
        gauge.dec();
        store.gauge(&scope, "upstream_cx_active").add(-5);
        assert_eq!(store.get("cluster.backend.upstream_cx_active"), Some(-4));
        gauge.set(7);
        assert_eq!(gauge.value(), 7);
    }

    #[test]
    fn another_kind_gets_a_detached_handle() {
        let store = Store::new();
        let scope = Scope::server();
        store.counter(&scope, "x").add(5);
        let gauge = store.gauge(&scope, "x");
        gauge.set(100);
        assert_eq!(store.get("server.x"), Some(5));
        assert_eq!(store.get("server.missing"), None);
    }

    #[test]
    fn prometheus_for_each_scope_kind() {
        let store = Store::new();
        store
            .counter(&Scope::http("ingress_http"), "downstream_rq_total")
            .add(4);
        store
            .counter(&Scope::cluster("a.b"), "upstream_rq_total")
            .add(1);
        store
            .counter(&Scope::cluster("c\"d"), "upstream_rq_total")
            .add(2);
        store
            .gauge(&Scope::listener("0.0.0.0:8080"), "downstream_cx_active")
            .set(3);
        store.gauge(&Scope::server(), "live").set(1);
        store
            .counter(&Scope::custom("wasm.my-plugin"), "hits")
            .inc();
        let text = store.render_prometheus(None);
        let expected = [
            "# TYPE envoy_http_downstream_rq_total counter",
            "envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix=\"ingress_http\"} 4",
            "# TYPE envoy_cluster_upstream_rq_total counter",
            "envoy_cluster_upstream_rq_total{envoy_cluster_name=\"a.b\"} 1",
            "envoy_cluster_upstream_rq_total{envoy_cluster_name=\"c\\\"d\"} 2",
            "# TYPE envoy_listener_downstream_cx_active gauge",
            "envoy_listener_downstream_cx_active{envoy_listener_address=\"0.0.0.0:8080\"} 3",
            "# TYPE envoy_server_live gauge\nenvoy_server_live 1",
            "# TYPE envoy_wasm_my_plugin_hits counter\nenvoy_wasm_my_plugin_hits 1",
        ];
        for line in expected {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert_eq!(
            text.matches("# TYPE envoy_cluster_upstream_rq_total")
                .count(),
            1
        );
    }

    #[test]
    fn histogram_min_and_max_follow_values_in_any_order() {
        let h = Histogram::default();
        assert!(h.quantile(0.5).is_nan());
        for v in [5, 3, 9, 9, 1, 6] {
            h.record(v);
        }
        // The estimates are clamped to the observed extremes.
        assert_eq!((h.quantile(0.0), h.quantile(1.0)), (1.0, 9.0));
        assert_eq!((h.count(), h.sum()), (6, 33));
    }

    #[test]
    fn histogram_buckets_and_prometheus() {
        let store = Store::new();
        let h = store.histogram(&Scope::cluster("backend"), "upstream_rq_time");
        for v in [0, 1, 3, 7, 7, 4000000] {
            h.record(v);
        }
        assert_eq!((h.count(), h.sum()), (6, 4000018));
        let text = store.render_prometheus(None);
        let family = "envoy_cluster_upstream_rq_time";
        let label = "envoy_cluster_name=\"backend\"";
        for (le, n) in [
            ("0.5", 1),
            ("1", 2),
            ("5", 3),
            ("10", 5),
            ("3600000", 5),
            ("+Inf", 6),
        ] {
            let line = format!("{family}_bucket{{{label},le=\"{le}\"}} {n}\n");
            assert!(text.contains(&line), "missing {line:?} in\n{text}");
        }
        assert!(text.contains(&format!("# TYPE {family} histogram\n")));
        assert!(text.contains(&format!("{family}_sum{{{label}}} 4000018\n")));
        assert!(text.contains(&format!("{family}_count{{{label}}} 6\n")));
        assert_eq!(text.matches("_bucket{").count(), BUCKETS.len() + 1);
    }

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let h = Histogram::default();
        assert!(h.quantile(0.5).is_nan());
        for v in 1..=100 {
            h.record(v);
        }
        assert_eq!(h.quantile(0.0), 1.0);
        assert_eq!(h.quantile(1.0), 100.0);
        let p50 = h.quantile(0.5);
        assert!((25.0..=50.0).contains(&p50), "p50 {p50}");
        assert!(h.quantile(0.99) <= 100.0);
    }

    #[test]
    fn text_rendering_and_filter() {
        let store = Store::new();
        store
            .counter(&Scope::cluster("b"), "upstream_rq_total")
            .add(2);
        store
            .gauge(&Scope::cluster("a"), "upstream_cx_active")
            .set(-1);
        store
            .histogram(&Scope::cluster("a"), "upstream_rq_time")
            .record(10);
        store.histogram(&Scope::cluster("b"), "upstream_rq_time");
        let text = store.render_text(None);
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("cluster.a.upstream_cx_active: -1"));
        assert_eq!(lines.next(), Some("cluster.b.upstream_rq_total: 2"));
        let hist = lines.next().unwrap();
        assert!(
            hist.starts_with("cluster.a.upstream_rq_time: P0(nan,10) P25(nan,"),
            "{hist}"
        );
        assert!(hist.ends_with(" P99.9(nan,10) P100(nan,10)"), "{hist}");
        assert_eq!(
            lines.next(),
            Some("cluster.b.upstream_rq_time: No recorded values")
        );
        let filter = |re: &str| regex::Regex::new(re).unwrap();
        assert_eq!(
            store.render_text(Some(&filter("rq_total"))),
            "cluster.b.upstream_rq_total: 2\n"
        );
        // A regex, as Envoy's: anchored, and with classes.
        assert_eq!(
            store.render_text(Some(&filter(r"^cluster\.a\.upstream_cx_\w+$"))),
            "cluster.a.upstream_cx_active: -1\n"
        );
        assert_eq!(store.render_text(Some(&filter("^rq_total"))), "");
    }

    #[test]
    fn json_rendering() {
        let store = Store::new();
        store.counter(&Scope::server(), "c").add(2);
        store.histogram(&Scope::server(), "h").record(5);
        let json = store.render_json(None);
        assert_eq!(
            json["stats"][0],
            serde_json::json!({"name": "server.c", "value": 2})
        );
        let hist = &json["stats"][1]["histograms"];
        assert_eq!(hist["supported_quantiles"][2], 50.0);
        assert_eq!(hist["computed_quantiles"][0]["name"], "server.h");
        assert_eq!(
            hist["computed_quantiles"][0]["values"][9]["cumulative"],
            5.0
        );
    }
}
