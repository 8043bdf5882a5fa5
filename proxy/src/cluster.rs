//! Cluster runtime state: the resolved hosts of a cluster and their counters, kept
//! beside the config snapshot so a reload that keeps a cluster keeps its state.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use strait_xds::model::{
    self, Discovery, DnsLookupFamily, EdsHealth, HashLbConfig, LbPolicy, RoutingPriority,
};

use crate::breaker::Breakers;
use crate::health::{self, HealthCheckStats, HealthState};
use crate::lb::HashTable;
use crate::outlier::{HostOutlier, OutlierStats};
use crate::stats::{Counter, Gauge, Histogram, Scope, Store};

/// One upstream address and its live counters, shared by every worker.
#[derive(Debug)]
pub struct Host {
    pub addr: SocketAddr,
    /// The name the endpoint was configured with for the DNS cluster types (what
    /// `auto_host_rewrite` sends); empty for STATIC, as in Envoy.
    pub hostname: String,
    pub weight: u32,
    /// The endpoint's priority level (0 is the highest).
    pub priority: u32,
    /// Its locality (index of its `LocalityLbEndpoints`) and that locality's weight.
    pub locality: u32,
    pub locality_weight: u32,
    /// The endpoint's configured `health_status`.
    pub eds: EdsHealth,
    /// Its `metadata`, as plugins read it; `None` without any.
    pub metadata: Option<Arc<strait_filters::wasm::MetaValue>>,
    pub rq_active: AtomicU64,
    pub rq_total: AtomicU64,
    pub rq_error: AtomicU64,
    pub cx_active: AtomicU64,
    /// HTTP/1 connections being opened (not yet in `cx_active`), for the per-host
    /// connection limit.
    pub cx_connecting: AtomicU64,
    pub cx_connect_fail: AtomicU64,
    /// What the load balancers read: the active health checker's verdict (always true
    /// in a cluster without health checks).
    healthy: AtomicBool,
    /// The checker's bookkeeping; only the main thread touches it.
    pub health: parking_lot::Mutex<HealthState>,
    /// Outlier detection's counters and ejection, shared by every worker.
    pub outlier: HostOutlier,
}

impl Host {
    fn new(addr: SocketAddr, hostname: &str, weight: u32, health: HealthState) -> Host {
        Host {
            healthy: AtomicBool::new(health.healthy),
            health: parking_lot::Mutex::new(health),
            addr,
            hostname: hostname.to_owned(),
            weight: weight.max(1),
            priority: 0,
            locality: 0,
            locality_weight: 1,
            eds: EdsHealth::Healthy,
            metadata: None,
            rq_active: AtomicU64::new(0),
            rq_total: AtomicU64::new(0),
            rq_error: AtomicU64::new(0),
            cx_active: AtomicU64::new(0),
            cx_connecting: AtomicU64::new(0),
            cx_connect_fail: AtomicU64::new(0),
            outlier: HostOutlier::default(),
        }
    }

    /// The active health checker's verdict.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Whether the load balancers may pick the host outside panic: healthy (by the
    /// active checker and by its configured `health_status`) and not ejected by
    /// outlier detection.
    pub fn is_available(&self) -> bool {
        self.is_healthy() && self.eds == EdsHealth::Healthy && !self.outlier.is_ejected()
    }

    /// Records a health checker's new state; returns whether health flipped.
    pub fn set_health(&self, state: HealthState) -> bool {
        *self.health.lock() = state;
        self.healthy.swap(state.healthy, Ordering::Relaxed) != state.healthy
    }
}

/// The set of hosts in effect; replaced whole when DNS answers change.
#[derive(Debug, Default)]
pub struct HostSet {
    pub hosts: Vec<Arc<Host>>,
    /// Hosts excluded from load balancing (`health_status: DRAINING`): never picked,
    /// not counted for panic, still listed by `/clusters`, as in Envoy.
    pub excluded: Vec<Arc<Host>>,
    /// Every weight is the same, so round robin needs no weighting.
    pub uniform: bool,
    /// How many `hosts` are healthy; recounted on the main thread whenever a host's
    /// health flips, so a pick reads one atomic to know whether to filter at all.
    pub healthy: AtomicUsize,
    /// `healthy_panic_threshold` in percent: below it, picks ignore health.
    pub panic_threshold: f64,
    /// `cluster.<name>.lb_healthy_panic`.
    pub lb_healthy_panic: Counter,
    /// The RING_HASH ring or MAGLEV table over `hosts`, built with the set (never on
    /// a health flip: picks walk past unhealthy hosts) and shared by every worker.
    pub hash_table: Option<HashTable>,
    /// The priority levels, when the endpoints have more than one.
    pub priorities: Option<Box<Priorities>>,
    /// The localities of this set (or level), with `locality_weighted_lb_config`
    /// when there are several.
    pub localities: Option<Box<Localities>>,
}

/// Locality-weighted balancing (Envoy's `locality_weighted_lb_config`): a locality is
/// chosen by its weight times its availability (overprovisioning factor × its
/// available share, capped at 100%), then a host within it.
#[derive(Debug)]
pub struct Localities {
    pub groups: Vec<(u32, Arc<HostSet>)>,
    pub overprovisioning_factor: u32,
}

impl Localities {
    fn build(
        set: &HostSet,
        overprovisioning_factor: u32,
        group: impl Fn(Vec<Arc<Host>>) -> Arc<HostSet>,
    ) -> Option<Box<Localities>> {
        let mut ids: Vec<(u32, u32)> = set
            .hosts
            .iter()
            .map(|h| (h.locality, h.locality_weight))
            .collect();
        ids.sort_unstable();
        ids.dedup_by_key(|id| id.0);
        if ids.len() < 2 {
            return None;
        }
        let groups = ids
            .iter()
            .map(|(id, weight)| {
                let hosts = set
                    .hosts
                    .iter()
                    .filter(|h| h.locality == *id)
                    .cloned()
                    .collect();
                (*weight, group(hosts))
            })
            .collect();
        Some(Box::new(Localities {
            groups,
            overprovisioning_factor,
        }))
    }

    /// Each locality's effective weight now.
    pub fn effective_weights(&self) -> Vec<u64> {
        self.groups
            .iter()
            .map(|(weight, set)| {
                let total = set.hosts.len().max(1) as u64;
                let healthy = set.healthy.load(Ordering::Relaxed).min(set.hosts.len()) as u64;
                let availability =
                    (u64::from(self.overprovisioning_factor) * healthy / total).min(100);
                u64::from(*weight) * availability
            })
            .collect()
    }
}

/// A cluster's priority levels (Envoy's priority sets): one host set per level, in
/// order, and the overprovisioning factor that turns a level's healthy share into
/// its health.
#[derive(Debug)]
pub struct Priorities {
    pub levels: Vec<Arc<HostSet>>,
    /// Percent; Envoy's default 140.
    pub overprovisioning_factor: u32,
}

impl Priorities {
    fn build(
        set: &HostSet,
        overprovisioning_factor: u32,
        level: impl Fn(Vec<Arc<Host>>) -> Arc<HostSet>,
    ) -> Option<Box<Priorities>> {
        let mut numbers: Vec<u32> = set.hosts.iter().map(|h| h.priority).collect();
        numbers.sort_unstable();
        numbers.dedup();
        if numbers.len() < 2 {
            return None;
        }
        let levels = numbers
            .iter()
            .map(|p| {
                level(
                    set.hosts
                        .iter()
                        .filter(|h| h.priority == *p)
                        .cloned()
                        .collect(),
                )
            })
            .collect();
        Some(Box::new(Priorities {
            levels,
            overprovisioning_factor,
        }))
    }

    /// Envoy's priority load, in percent per level, and whether the cluster is in
    /// panic (normalized total health below `panic_threshold`: then the load follows
    /// the host counts and every host is eligible).
    pub fn loads(&self, panic_threshold: f64) -> (Vec<u32>, bool) {
        let counts: Vec<(usize, usize)> = self
            .levels
            .iter()
            .map(|l| {
                (
                    l.healthy.load(Ordering::Relaxed).min(l.hosts.len()),
                    l.hosts.len(),
                )
            })
            .collect();
        priority_loads(&counts, self.overprovisioning_factor, panic_threshold)
    }
}

/// [`Priorities::loads`] over `(healthy, total)` per level.
pub fn priority_loads(
    counts: &[(usize, usize)],
    overprovisioning_factor: u32,
    panic_threshold: f64,
) -> (Vec<u32>, bool) {
    let health: Vec<u32> = counts
        .iter()
        .map(|&(healthy, total)| match total {
            0 => 0,
            _ => {
                (u64::from(overprovisioning_factor) * healthy as u64 / total as u64).min(100) as u32
            }
        })
        .collect();
    let total_health = health.iter().sum::<u32>().min(100);
    if f64::from(total_health) < panic_threshold {
        // Panic: every host of every level, load by host count.
        let hosts: usize = counts.iter().map(|c| c.1).sum();
        let mut loads: Vec<u32> = counts
            .iter()
            .map(|c| (c.1 * 100).checked_div(hosts).unwrap_or(0) as u32)
            .collect();
        let rest = 100 - loads.iter().sum::<u32>().min(100);
        let first = loads.iter().position(|l| *l > 0).unwrap_or(0);
        if let Some(first) = loads.get_mut(first) {
            *first += rest;
        }
        return (loads, true);
    }
    if total_health == 0 {
        // Nothing healthy and no panic (threshold 0): Envoy sends it all to P0, where
        // the level's own pick then finds no host.
        let mut loads = vec![0; counts.len()];
        if let Some(first) = loads.first_mut() {
            *first = 100;
        }
        return (loads, false);
    }
    let mut left = 100u32;
    let mut loads: Vec<u32> = health
        .iter()
        .map(|h| {
            let load = (h * 100 / total_health).min(left);
            left -= load;
            load
        })
        .collect();
    // Rounding leftovers go to the first level with health, as Envoy does.
    if left > 0 {
        if let Some(i) = health.iter().position(|h| *h > 0) {
            loads[i] += left;
        }
    }
    (loads, false)
}

impl HostSet {
    fn new(
        hosts: Vec<Arc<Host>>,
        panic_threshold: f64,
        lb_healthy_panic: Counter,
        lb: (LbPolicy, &HashLbConfig),
    ) -> HostSet {
        let weights: Vec<(SocketAddr, u32)> = hosts.iter().map(|h| (h.addr, h.weight)).collect();
        let hash_table = HashTable::build(lb.0, lb.1, &weights);
        let uniform = hosts.windows(2).all(|w| w[0].weight == w[1].weight);
        let healthy = hosts.iter().filter(|h| h.is_available()).count();
        HostSet {
            hosts,
            excluded: Vec::new(),
            uniform,
            healthy: AtomicUsize::new(healthy),
            panic_threshold,
            lb_healthy_panic,
            hash_table,
            priorities: None,
            localities: None,
        }
    }
}

/// Envoy's per-cluster stats, registered once per cluster.
#[derive(Clone)]
pub struct ClusterStats {
    pub upstream_rq_total: Counter,
    pub upstream_rq_active: Gauge,
    pub upstream_rq_time: Histogram,
    pub upstream_rq_xx: [Counter; 5],
    pub upstream_rq_timeout: Counter,
    pub upstream_rq_retry: Counter,
    pub upstream_rq_retry_success: Counter,
    pub upstream_rq_retry_limit_exceeded: Counter,
    pub upstream_rq_retry_overflow: Counter,
    pub upstream_rq_per_try_timeout: Counter,
    pub upstream_rq_per_try_idle_timeout: Counter,
    pub retry_or_shadow_abandoned: Counter,
    pub upstream_cx_total: Counter,
    pub upstream_cx_active: Gauge,
    pub upstream_cx_connect_fail: Counter,
    pub upstream_cx_connect_timeout: Counter,
    pub upstream_cx_destroy_remote: Counter,
    /// Ours: idle HTTP/1.1 connections parked as bare sockets (codec freed).
    pub upstream_cx_idle_released: Counter,
    pub upstream_rq_pending_total: Counter,
    /// Requests refused by the `max_requests` or `max_pending_requests` breaker.
    pub upstream_rq_pending_overflow: Counter,
    /// Connections the `max_connections` breaker refused.
    pub upstream_cx_overflow: Counter,
    pub upstream_cx_none_healthy: Counter,
    pub lb_healthy_panic: Counter,
    pub membership_healthy: Gauge,
    pub membership_total: Gauge,
    /// `cluster.<name>.health_check.*`, only for clusters with a health check (as Envoy).
    pub health_check: Option<HealthCheckStats>,
    /// `cluster.<name>.outlier_detection.*`, only for clusters with outlier detection.
    pub outlier: Option<OutlierStats>,
}

impl ClusterStats {
    fn register(store: &Store, scope: &Scope, health_checked: bool, outlier: bool) -> ClusterStats {
        let c = |n: &str| store.counter(scope, n);
        ClusterStats {
            upstream_rq_total: c("upstream_rq_total"),
            upstream_rq_active: store.gauge(scope, "upstream_rq_active"),
            upstream_rq_time: store.histogram(scope, "upstream_rq_time"),
            upstream_rq_xx: [
                c("upstream_rq_1xx"),
                c("upstream_rq_2xx"),
                c("upstream_rq_3xx"),
                c("upstream_rq_4xx"),
                c("upstream_rq_5xx"),
            ],
            upstream_rq_timeout: c("upstream_rq_timeout"),
            upstream_rq_retry: c("upstream_rq_retry"),
            upstream_rq_retry_success: c("upstream_rq_retry_success"),
            upstream_rq_retry_limit_exceeded: c("upstream_rq_retry_limit_exceeded"),
            upstream_rq_retry_overflow: c("upstream_rq_retry_overflow"),
            upstream_rq_per_try_timeout: c("upstream_rq_per_try_timeout"),
            upstream_rq_per_try_idle_timeout: c("upstream_rq_per_try_idle_timeout"),
            retry_or_shadow_abandoned: c("retry_or_shadow_abandoned"),
            upstream_cx_total: c("upstream_cx_total"),
            upstream_cx_active: store.gauge(scope, "upstream_cx_active"),
            upstream_cx_connect_fail: c("upstream_cx_connect_fail"),
            upstream_cx_connect_timeout: c("upstream_cx_connect_timeout"),
            upstream_cx_destroy_remote: c("upstream_cx_destroy_remote"),
            upstream_cx_idle_released: c("upstream_cx_idle_released"),
            upstream_rq_pending_total: c("upstream_rq_pending_total"),
            upstream_rq_pending_overflow: c("upstream_rq_pending_overflow"),
            upstream_cx_overflow: c("upstream_cx_overflow"),
            upstream_cx_none_healthy: c("upstream_cx_none_healthy"),
            lb_healthy_panic: c("lb_healthy_panic"),
            membership_healthy: store.gauge(scope, "membership_healthy"),
            membership_total: store.gauge(scope, "membership_total"),
            health_check: health_checked.then(|| HealthCheckStats::register(store, scope)),
            outlier: outlier.then(|| OutlierStats::register(store, scope)),
        }
    }

    pub fn record_status(&self, status: u16) {
        if let Some(c) = self
            .upstream_rq_xx
            .get((status / 100).wrapping_sub(1) as usize)
        {
            c.inc();
        }
    }
}

static NEXT_CLUSTER_ID: AtomicU64 = AtomicU64::new(1);

/// A cluster as the workers see it: config, live hosts, stats.
pub struct ClusterRuntime {
    /// Unique for the life of the process; keys per-worker pools and LB state.
    pub id: u64,
    pub config: Arc<model::Cluster>,
    pub hosts: ArcSwap<HostSet>,
    pub stats: ClusterStats,
    /// The circuit breakers by routing priority (`[DEFAULT, HIGH]`), shared by every
    /// worker; see [`ClusterRuntime::breakers`].
    breakers: [Breakers; 2],
    /// Serializes ejection decisions, so the max-ejection-percent cap holds.
    pub outlier_lock: parking_lot::Mutex<()>,
}

impl ClusterRuntime {
    /// The circuit breakers of a routing priority.
    pub fn breakers(&self, priority: RoutingPriority) -> &Breakers {
        &self.breakers[priority.index()]
    }

    /// Builds the runtime of a cluster and resolves its endpoints once, so a cluster
    /// is usable as soon as the config that names it is published.
    pub async fn new(config: Arc<model::Cluster>, store: &Store) -> Arc<ClusterRuntime> {
        let scope = Scope::cluster(&config.stat_name());
        let rt = Arc::new(ClusterRuntime {
            id: NEXT_CLUSTER_ID.fetch_add(1, Ordering::Relaxed),
            stats: ClusterStats::register(
                store,
                &scope,
                config.health_check.is_some(),
                config.outlier_detection.is_some(),
            ),
            outlier_lock: parking_lot::Mutex::new(()),
            breakers: [RoutingPriority::Default, RoutingPriority::High].map(|p| {
                let thresholds = &config.circuit_breakers[p.index()];
                Breakers::register(store, &scope, p, thresholds)
            }),
            hosts: ArcSwap::from_pointee(HostSet::default()),
            config,
        });
        rt.refresh().await;
        rt.recount();
        // Envoy warms a health-checked cluster with one round of checks before using
        // it, so its hosts are not all "unhealthy, never checked" when traffic arrives.
        health::first_round(&rt).await;
        rt
    }

    /// Recounts healthy hosts after a health flip or a host-set change: the count the
    /// load balancers read and the membership gauges.
    pub fn recount(&self) {
        let set = self.hosts.load();
        let available = set.hosts.iter().filter(|h| h.is_available()).count();
        set.healthy.store(available, Ordering::Relaxed);
        let count = |s: &HostSet| {
            let n = s.hosts.iter().filter(|h| h.is_available()).count();
            s.healthy.store(n, Ordering::Relaxed);
            for (_, group) in s.localities.iter().flat_map(|l| &l.groups) {
                let n = group.hosts.iter().filter(|h| h.is_available()).count();
                group.healthy.store(n, Ordering::Relaxed);
            }
        };
        count(&set);
        for level in set.priorities.iter().flat_map(|p| &p.levels) {
            count(level);
        }
        self.stats.membership_healthy.set(available as i64);
        self.stats
            .membership_total
            .set((set.hosts.len() + set.excluded.len()) as i64);
        if let Some(hc) = &self.stats.health_check {
            let healthy = set.hosts.iter().filter(|h| h.is_healthy()).count();
            hc.healthy.set(healthy as i64);
        }
    }

    /// Re-resolves DNS endpoints; keeps hosts (and their counters and health) whose
    /// address stays. A new address in a health-checked cluster starts unhealthy until
    /// its first check, as Envoy's "pending active health check".
    pub async fn refresh(&self) {
        let mut resolved = Vec::new();
        for ep in &self.config.endpoints {
            for addr in resolve(ep, self.config.discovery, self.config.dns_lookup_family).await {
                resolved.push((addr, ep));
            }
        }
        if self.config.discovery == Discovery::LogicalDns {
            resolved.truncate(1);
        }
        let current = self.hosts.load();
        let known = || current.hosts.iter().chain(&current.excluded);
        let same = known().count() == resolved.len()
            && resolved.iter().all(|(a, ep)| {
                known().any(|h| h.addr == *a && h.eds == ep.health && h.hostname == ep.hostname)
            });
        if same && known().next().is_some() {
            return;
        }
        if resolved.is_empty() && known().next().is_some() {
            // A failed lookup keeps the last good answer, as Envoy does.
            return;
        }
        let hosts: Vec<Arc<Host>> = resolved
            .into_iter()
            .map(|(addr, ep)| {
                known()
                    .find(|h| {
                        h.addr == addr
                            && h.weight == ep.weight.max(1)
                            && (h.priority, h.locality, h.locality_weight, h.eds)
                                == (ep.priority, ep.locality, ep.locality_weight, ep.health)
                            && h.hostname == ep.hostname
                    })
                    .cloned()
                    .unwrap_or_else(|| {
                        // Same address, new weight: the health verdict carries over.
                        let health = match known().find(|h| h.addr == addr) {
                            Some(old) => *old.health.lock(),
                            None => HealthState::initial(self.config.health_check.is_some()),
                        };
                        let mut host = Host::new(addr, &ep.hostname, ep.weight, health);
                        host.priority = ep.priority;
                        host.locality = ep.locality;
                        host.locality_weight = ep.locality_weight;
                        host.eds = ep.health;
                        if !ep.metadata.is_empty() {
                            host.metadata = Some(crate::runtime::metadata(&ep.metadata));
                        }
                        Arc::new(host)
                    })
            })
            .collect();
        let (excluded, hosts): (Vec<_>, Vec<_>) = hosts
            .into_iter()
            .partition(|h: &Arc<Host>| h.eds == EdsHealth::Draining);
        let mut set = HostSet::new(
            hosts,
            self.config.healthy_panic_threshold,
            self.stats.lb_healthy_panic.clone(),
            (self.config.lb_policy, &self.config.hash_lb),
        );
        let factor = self.config.overprovisioning_factor;
        let plain = |hosts| {
            HostSet::new(
                hosts,
                self.config.healthy_panic_threshold,
                self.stats.lb_healthy_panic.clone(),
                (self.config.lb_policy, &self.config.hash_lb),
            )
        };
        let with_localities = |mut set: HostSet| {
            if self.config.locality_weighted {
                set.localities = Localities::build(&set, factor, |hosts| Arc::new(plain(hosts)));
            }
            set
        };
        set.priorities = Priorities::build(&set, factor, |hosts| {
            Arc::new(with_localities(plain(hosts)))
        });
        if set.priorities.is_none() {
            set = with_localities(set);
        }
        set.excluded = excluded;
        self.hosts.store(Arc::new(set));
        self.recount();
    }

    /// Whether hosts need periodic re-resolution, and how often.
    pub fn dns_refresh(&self) -> Option<Duration> {
        match self.config.discovery {
            Discovery::Static => None,
            Discovery::StrictDns | Discovery::LogicalDns => Some(self.config.dns_refresh_rate),
        }
    }
}

async fn resolve(
    ep: &model::Endpoint,
    discovery: Discovery,
    family: DnsLookupFamily,
) -> Vec<SocketAddr> {
    if let Ok(ip) = ep.host.parse::<std::net::IpAddr>() {
        return vec![SocketAddr::new(ip, ep.port)];
    }
    if discovery == Discovery::Static {
        return Vec::new();
    }
    let lookup = tokio::net::lookup_host((ep.host.as_str(), ep.port));
    let addrs: Vec<SocketAddr> = match tokio::time::timeout(Duration::from_secs(5), lookup).await {
        Ok(Ok(it)) => it.collect(),
        Ok(Err(e)) => {
            tracing::warn!(host = %ep.host, error = %e, "DNS resolution failed");
            Vec::new()
        }
        Err(_) => {
            tracing::warn!(host = %ep.host, "DNS resolution timed out");
            Vec::new()
        }
    };
    let (v4, v6): (Vec<_>, Vec<_>) = addrs.into_iter().partition(|a| a.is_ipv4());
    let mut out = match family {
        DnsLookupFamily::V4Only => v4,
        DnsLookupFamily::V6Only => v6,
        DnsLookupFamily::Auto if !v6.is_empty() => v6,
        DnsLookupFamily::Auto => v4,
        DnsLookupFamily::V4Preferred if !v4.is_empty() => v4,
        DnsLookupFamily::V4Preferred => v6,
        DnsLookupFamily::All => v4.into_iter().chain(v6).collect(),
    };
    out.dedup();
    out
}

#[cfg(test)]
impl Host {
    pub fn for_test(addr: SocketAddr, weight: u32) -> Host {
        Host::new(addr, "test", weight, HealthState::initial(false))
    }
}

#[cfg(test)]
impl HostSet {
    /// Counts healthy hosts at construction; Envoy's default panic threshold (50%).
    pub fn for_test(hosts: Vec<Arc<Host>>) -> HostSet {
        HostSet::for_test_with(hosts, LbPolicy::RoundRobin)
    }

    /// As `for_test`, with `policy`'s hash table (if any) at Envoy's default sizes.
    pub fn for_test_with(hosts: Vec<Arc<Host>>, policy: LbPolicy) -> HostSet {
        let config = HashLbConfig::default();
        HostSet::new(hosts, 50.0, Counter::default(), (policy, &config))
    }
}

#[cfg(test)]
mod priority_tests {
    use super::priority_loads;

    /// Envoy's documented table (overprovisioning factor 1.4, panic threshold 50%):
    /// `(P0 healthy %, P1 healthy %) -> (P0 load, P1 load)`.
    #[test]
    fn priority_loads_match_envoys_table() {
        let cases = [
            ((100, 100), (100, 0)),
            ((72, 100), (100, 0)),
            ((71, 100), (99, 1)),
            ((50, 100), (70, 30)),
            ((25, 100), (35, 65)),
            ((0, 100), (0, 100)),
        ];
        for ((p0, p1), want) in cases {
            let (loads, panic) = priority_loads(&[(p0, 100), (p1, 100)], 140, 50.0);
            assert_eq!((loads[0], loads[1]), want, "P0 {p0}% P1 {p1}%");
            assert!(!panic);
        }
    }

    #[test]
    fn degraded_levels_are_normalized_and_low_health_panics() {
        // 20% and 20% healthy: health 28 + 28 = 56 (not panic), normalized to 50/50.
        assert_eq!(
            priority_loads(&[(1, 5), (1, 5)], 140, 50.0),
            (vec![50, 50], false)
        );
        // 10% and 10%: 14 + 14 < 50, panic: load by host count.
        assert_eq!(
            priority_loads(&[(1, 10), (1, 30)], 140, 50.0),
            (vec![25, 75], true)
        );
        // A threshold of 0 never panics; with no health at all P0 gets the load.
        assert_eq!(
            priority_loads(&[(0, 2), (0, 2)], 140, 0.0),
            (vec![100, 0], false)
        );
    }
}
