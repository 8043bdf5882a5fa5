//! Outlier detection (Envoy's consecutive-5xx and consecutive gateway-failure
//! detectors): workers count each host's upstream outcomes in the host's atomics and
//! eject it when a threshold is reached; the main thread's interval task brings
//! ejected hosts back once their ejection time has passed.
//!
//! The success-rate and failure-percentage detectors run on the main thread each
//! `interval` over the requests each host answered in that interval (two atomic
//! increments per response on the workers), as Envoy's detector does.
//!
//! Unless `split_external_local_origin_errors` is set, a connect failure (or connect
//! timeout) counts as a 503, as in Envoy; with it, such local-origin failures count
//! only toward `consecutive_local_origin_failure` (a connection that opens resets
//! that count), and the rate detectors run a second time over local-origin outcomes
//! (a response is a success, a connect failure a failure), enforced by
//! `enforcing_local_origin_success_rate` / `enforcing_failure_percentage_local_origin`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use strait_xds::model::OutlierDetection;

use crate::cluster::{ClusterRuntime, Host};
use crate::stats::{Counter, Gauge, Scope, Store};

/// A host's outlier bookkeeping, shared by every worker.
#[derive(Debug, Default)]
pub struct HostOutlier {
    ejected: AtomicBool,
    consecutive_5xx: AtomicU32,
    consecutive_gateway_failure: AtomicU32,
    consecutive_local_origin_failure: AtomicU32,
    /// How many times ejected (decays while the host behaves); scales ejection time.
    num_ejections: AtomicU32,
    /// Milliseconds since `epoch()` when the current ejection ends.
    eject_until: AtomicU64,
    /// Milliseconds since `epoch()` of the last un-ejection.
    last_unejected: AtomicU64,
    /// Responses and 5xx (connect failures included) in the current interval.
    interval_total: AtomicU32,
    interval_failed: AtomicU32,
    /// With the split: local-origin outcomes in the current interval (responses
    /// and connect failures) and the connect failures among them.
    interval_local_total: AtomicU32,
    interval_local_failed: AtomicU32,
}

impl HostOutlier {
    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Relaxed)
    }
}

/// `cluster.<name>.outlier_detection.*`, for clusters with outlier detection.
#[derive(Clone)]
pub struct OutlierStats {
    pub ejections_active: Gauge,
    pub ejections_total: Counter,
    pub ejections_overflow: Counter,
    pub ejections_enforced_total: Counter,
    pub ejections_consecutive_5xx: Counter,
    pub ejections_detected_consecutive_5xx: Counter,
    pub ejections_enforced_consecutive_5xx: Counter,
    pub ejections_detected_consecutive_gateway_failure: Counter,
    pub ejections_enforced_consecutive_gateway_failure: Counter,
    pub ejections_success_rate: Counter,
    pub ejections_detected_success_rate: Counter,
    pub ejections_enforced_success_rate: Counter,
    pub ejections_detected_failure_percentage: Counter,
    pub ejections_enforced_failure_percentage: Counter,
    pub ejections_detected_consecutive_local_origin_failure: Counter,
    pub ejections_enforced_consecutive_local_origin_failure: Counter,
    pub ejections_detected_local_origin_success_rate: Counter,
    pub ejections_enforced_local_origin_success_rate: Counter,
    pub ejections_detected_local_origin_failure_percentage: Counter,
    pub ejections_enforced_local_origin_failure_percentage: Counter,
}

impl OutlierStats {
    pub fn register(store: &Store, cluster: &Scope) -> OutlierStats {
        let c = |n: &str| store.counter(cluster, &format!("outlier_detection.{n}"));
        OutlierStats {
            ejections_active: store.gauge(cluster, "outlier_detection.ejections_active"),
            ejections_total: c("ejections_total"),
            ejections_overflow: c("ejections_overflow"),
            ejections_enforced_total: c("ejections_enforced_total"),
            ejections_consecutive_5xx: c("ejections_consecutive_5xx"),
            ejections_detected_consecutive_5xx: c("ejections_detected_consecutive_5xx"),
            ejections_enforced_consecutive_5xx: c("ejections_enforced_consecutive_5xx"),
            ejections_detected_consecutive_gateway_failure: c(
                "ejections_detected_consecutive_gateway_failure",
            ),
            ejections_enforced_consecutive_gateway_failure: c(
                "ejections_enforced_consecutive_gateway_failure",
            ),
            ejections_success_rate: c("ejections_success_rate"),
            ejections_detected_success_rate: c("ejections_detected_success_rate"),
            ejections_enforced_success_rate: c("ejections_enforced_success_rate"),
            ejections_detected_failure_percentage: c("ejections_detected_failure_percentage"),
            ejections_enforced_failure_percentage: c("ejections_enforced_failure_percentage"),
            ejections_detected_consecutive_local_origin_failure: c(
                "ejections_detected_consecutive_local_origin_failure",
            ),
            ejections_enforced_consecutive_local_origin_failure: c(
                "ejections_enforced_consecutive_local_origin_failure",
            ),
            ejections_detected_local_origin_success_rate: c(
                "ejections_detected_local_origin_success_rate",
            ),
            ejections_enforced_local_origin_success_rate: c(
                "ejections_enforced_local_origin_success_rate",
            ),
            ejections_detected_local_origin_failure_percentage: c(
                "ejections_detected_local_origin_failure_percentage",
            ),
            ejections_enforced_local_origin_failure_percentage: c(
                "ejections_enforced_local_origin_failure_percentage",
            ),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Consecutive5xx,
    GatewayFailure,
    SuccessRate,
    FailurePercentage,
    LocalOrigin,
    LocalOriginSuccessRate,
    LocalOriginFailurePercentage,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

/// Records how a connection attempt to `host` went (a local-origin outcome).
pub fn report_connect(cluster: &ClusterRuntime, host: &Host, ok: bool) {
    let Some(config) = &cluster.config.outlier_detection else {
        return;
    };
    if !config.split_external_local_origin_errors {
        if !ok {
            report(cluster, host, 503);
        }
        return;
    }
    let o = &host.outlier;
    if ok {
        o.consecutive_local_origin_failure
            .store(0, Ordering::Relaxed);
        return;
    }
    o.interval_local_total.fetch_add(1, Ordering::Relaxed);
    o.interval_local_failed.fetch_add(1, Ordering::Relaxed);
    let n = o
        .consecutive_local_origin_failure
        .fetch_add(1, Ordering::Relaxed)
        + 1;
    if n == config.consecutive_local_origin_failure {
        on_threshold(cluster, config, host, Kind::LocalOrigin);
    }
}

/// Records an upstream response status from `host`.
pub fn report(cluster: &ClusterRuntime, host: &Host, status: u16) {
    let Some(config) = &cluster.config.outlier_detection else {
        return;
    };
    let o = &host.outlier;
    o.interval_total.fetch_add(1, Ordering::Relaxed);
    if config.split_external_local_origin_errors {
        // A response is a local-origin success: the connection did its part.
        o.interval_local_total.fetch_add(1, Ordering::Relaxed);
    }
    if !(500..600).contains(&status) {
        o.consecutive_5xx.store(0, Ordering::Relaxed);
        o.consecutive_gateway_failure.store(0, Ordering::Relaxed);
        return;
    }
    o.interval_failed.fetch_add(1, Ordering::Relaxed);
    if matches!(status, 502..=504) {
        let n = o
            .consecutive_gateway_failure
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        if n == config.consecutive_gateway_failure {
            on_threshold(cluster, config, host, Kind::GatewayFailure);
        }
    } else {
        o.consecutive_gateway_failure.store(0, Ordering::Relaxed);
    }
    let n = o.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
    if n == config.consecutive_5xx {
        on_threshold(cluster, config, host, Kind::Consecutive5xx);
    }
}

/// Envoy's `DetectorImpl::ejectHost`: a host already ejected is left alone; the
/// max-ejection-percent cap is checked against the hosts ejected before this one
/// (and, as Envoy, a host is always ejected when none is); then the
/// enforcement percentage decides whether the ejection happens.
fn on_threshold(cluster: &ClusterRuntime, config: &OutlierDetection, host: &Host, kind: Kind) {
    let Some(stats) = &cluster.stats.outlier else {
        return;
    };
    let _decide = cluster.outlier_lock.lock();
    if host.outlier.is_ejected() {
        return;
    }
    let set = cluster.hosts.load();
    let total = set.hosts.len().max(1);
    let active = set.hosts.iter().filter(|h| h.outlier.is_ejected()).count();
    let enforcing = match kind {
        Kind::Consecutive5xx => {
            stats.ejections_consecutive_5xx.inc();
            stats.ejections_detected_consecutive_5xx.inc();
            config.enforcing_consecutive_5xx
        }
        Kind::GatewayFailure => {
            stats.ejections_detected_consecutive_gateway_failure.inc();
            config.enforcing_consecutive_gateway_failure
        }
        Kind::SuccessRate => {
            stats.ejections_success_rate.inc();
            stats.ejections_detected_success_rate.inc();
            config.enforcing_success_rate
        }
        Kind::FailurePercentage => {
            stats.ejections_detected_failure_percentage.inc();
            config.enforcing_failure_percentage
        }
        Kind::LocalOrigin => {
            stats
                .ejections_detected_consecutive_local_origin_failure
                .inc();
            config.enforcing_consecutive_local_origin_failure
        }
        Kind::LocalOriginSuccessRate => {
            stats.ejections_detected_local_origin_success_rate.inc();
            config.enforcing_local_origin_success_rate
        }
        Kind::LocalOriginFailurePercentage => {
            stats
                .ejections_detected_local_origin_failure_percentage
                .inc();
            config.enforcing_failure_percentage_local_origin
        }
    };
    if active > 0 && (active as f64) * 100.0 / total as f64 >= config.max_ejection_percent as f64 {
        stats.ejections_overflow.inc();
        return;
    }
    stats.ejections_total.inc();
    if rand::random::<u32>() % 100 >= enforcing {
        return;
    }
    stats.ejections_enforced_total.inc();
    match kind {
        Kind::Consecutive5xx => stats.ejections_enforced_consecutive_5xx.inc(),
        Kind::GatewayFailure => stats.ejections_enforced_consecutive_gateway_failure.inc(),
        Kind::SuccessRate => stats.ejections_enforced_success_rate.inc(),
        Kind::FailurePercentage => stats.ejections_enforced_failure_percentage.inc(),
        Kind::LocalOrigin => stats
            .ejections_enforced_consecutive_local_origin_failure
            .inc(),
        Kind::LocalOriginSuccessRate => stats.ejections_enforced_local_origin_success_rate.inc(),
        Kind::LocalOriginFailurePercentage => stats
            .ejections_enforced_local_origin_failure_percentage
            .inc(),
    }
    let o = &host.outlier;
    let times = o.num_ejections.fetch_add(1, Ordering::Relaxed) + 1;
    let time = config
        .base_ejection_time
        .saturating_mul(times)
        .min(config.max_ejection_time.max(config.base_ejection_time));
    o.eject_until
        .store(now_ms() + time.as_millis() as u64, Ordering::Relaxed);
    o.ejected.store(true, Ordering::Relaxed);
    stats.ejections_active.set(active as i64 + 1);
    drop(set);
    cluster.recount();
}

/// One interval's pass (main thread): un-ejects hosts whose ejection time has passed
/// and lets the ejection count of well-behaved hosts decay, as Envoy.
pub fn tick(cluster: &ClusterRuntime) {
    let (Some(config), Some(stats)) = (&cluster.config.outlier_detection, &cluster.stats.outlier)
    else {
        return;
    };
    let now = now_ms();
    let base = config.base_ejection_time.as_millis() as u64;
    let set = cluster.hosts.load();
    for host in &set.hosts {
        let o = &host.outlier;
        if o.is_ejected() {
            if now >= o.eject_until.load(Ordering::Relaxed) {
                o.consecutive_5xx.store(0, Ordering::Relaxed);
                o.consecutive_gateway_failure.store(0, Ordering::Relaxed);
                o.consecutive_local_origin_failure
                    .store(0, Ordering::Relaxed);
                o.last_unejected.store(now, Ordering::Relaxed);
                o.ejected.store(false, Ordering::Relaxed);
            }
        } else if o.num_ejections.load(Ordering::Relaxed) > 0
            && now.saturating_sub(o.last_unejected.load(Ordering::Relaxed)) >= base
        {
            o.num_ejections.fetch_sub(1, Ordering::Relaxed);
            o.last_unejected.store(now, Ordering::Relaxed);
        }
    }
    // This interval's requests per host, for the rate detectors (Envoy evaluates
    // them after bringing hosts back); every host starts the next interval at zero.
    let take = |total: &AtomicU32, failed: &AtomicU32| {
        let total = total.swap(0, Ordering::Relaxed);
        (total, failed.swap(0, Ordering::Relaxed).min(total))
    };
    let mut counts = Vec::with_capacity(set.hosts.len());
    let mut local = Vec::new();
    for h in &set.hosts {
        let o = &h.outlier;
        let (total, failed) = take(&o.interval_total, &o.interval_failed);
        let (local_total, local_failed) = take(&o.interval_local_total, &o.interval_local_failed);
        if !o.is_ejected() {
            counts.push((h, total, failed));
            local.push((h, local_total, local_failed));
        }
    }
    let active = set.hosts.iter().filter(|h| h.outlier.is_ejected()).count();
    stats.ejections_active.set(active as i64);
    for (host, kind) in rate_outliers(config, &counts) {
        on_threshold(cluster, config, host, kind);
    }
    // Envoy's split mode runs both detectors again over local-origin outcomes.
    if config.split_external_local_origin_errors {
        for (host, kind) in rate_outliers(config, &local) {
            let kind = match kind {
                Kind::SuccessRate => Kind::LocalOriginSuccessRate,
                _ => Kind::LocalOriginFailurePercentage,
            };
            on_threshold(cluster, config, host, kind);
        }
    }
    drop((counts, local));
    drop(set);
    cluster.recount();
}

/// Envoy's success-rate and failure-percentage detectors over one interval's
/// `(host, requests, failures)`: which hosts each would eject, success rate first.
fn rate_outliers<'a>(
    config: &OutlierDetection,
    counts: &[(&'a Arc<Host>, u32, u32)],
) -> Vec<(&'a Arc<Host>, Kind)> {
    let mut out = Vec::new();
    let success = |total: u32, failed: u32| 100.0 * f64::from(total - failed) / f64::from(total);
    let volume = |min: u32| {
        counts
            .iter()
            .filter(move |(_, total, _)| *total >= min.max(1))
    };
    let eligible: Vec<_> = volume(config.success_rate_request_volume).collect();
    if !eligible.is_empty() && eligible.len() >= config.success_rate_minimum_hosts as usize {
        let rates: Vec<f64> = eligible.iter().map(|(_, t, f)| success(*t, *f)).collect();
        let mean = rates.iter().sum::<f64>() / rates.len() as f64;
        let variance = rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / rates.len() as f64;
        let threshold =
            mean - f64::from(config.success_rate_stdev_factor) / 1000.0 * variance.sqrt();
        for ((host, _, _), rate) in eligible.iter().zip(&rates) {
            if *rate < threshold {
                out.push((*host, Kind::SuccessRate));
            }
        }
    }
    let eligible: Vec<_> = volume(config.failure_percentage_request_volume).collect();
    if !eligible.is_empty() && eligible.len() >= config.failure_percentage_minimum_hosts as usize {
        for (host, total, failed) in eligible {
            let failure = 100.0 - success(*total, *failed);
            let flagged = out.iter().any(|(h, _)| Arc::ptr_eq(h, host));
            if !flagged && failure >= f64::from(config.failure_percentage_threshold) {
                out.push((*host, Kind::FailurePercentage));
            }
        }
    }
    out
}

/// The interval timers of every cluster with outlier detection (main thread).
pub async fn run(shared: Arc<crate::runtime::Shared>) {
    let mut due: HashMap<u64, tokio::time::Instant> = HashMap::new();
    loop {
        let rt = shared.runtime.load_full();
        let now = tokio::time::Instant::now();
        let mut next = now + Duration::from_millis(250);
        for cluster in rt.clusters.values() {
            let Some(config) = &cluster.config.outlier_detection else {
                continue;
            };
            let at = due.entry(cluster.id).or_insert(now + config.interval);
            if *at <= now {
                tick(cluster);
                *at = now + config.interval;
            }
            next = next.min(*at);
        }
        due.retain(|id, _| rt.clusters.values().any(|c| c.id == *id));
        drop(rt);
        tokio::time::sleep_until(next).await;
    }
}
