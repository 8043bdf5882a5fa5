//! The per-stream drop guard: records a stream's stats and access log exactly once,
//! whatever path the stream ended on.

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use http::HeaderMap;
use tokio::time::Instant;

use crate::access_log::LogRecord;
use crate::body::ByteCount;
use crate::cluster::{ClusterRuntime, Host};
use crate::runtime::ListenerRuntime;

/// A host whose health check the operator failed says so on its answers (Envoy's
/// `health_check` filter adds it); see [`crate::health::immediate_fail`].
const IMMEDIATE_HEALTH_CHECK_FAIL: &str = "x-envoy-immediate-health-check-fail";

/// What the access log needs beyond counters; built only when the listener logs.
pub struct LogInfo {
    pub start_time: SystemTime,
    /// `None` for a head the codec refused before it had a request line.
    pub method: Option<http::Method>,
    pub path: String,
    pub authority: String,
    pub protocol: &'static str,
    pub request_headers: HeaderMap,
    pub response_headers: Option<HeaderMap>,
    pub route_name: String,
    pub downstream_remote: SocketAddr,
}

/// Envoy's order of response flags in `%RESPONSE_FLAGS%`.
const FLAG_ORDER: [&str; 21] = [
    "LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL", "UAEX", "RLSE", "DC",
    "URX", "SI", "IH", "DPE", "UMSDR", "DT",
];

/// Envoy's bit for a response flag (its `CoreResponseFlag` numbering).
fn flag_bit(flag: &str) -> u64 {
    const BITS: [&str; 24] = [
        "LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL", "UAEX", "RLSE",
        "DC", "URX", "SI", "IH", "DPE", "UMSDR", "RFCF", "NFCF", "DT", "UPE",
    ];
    BITS.iter()
        .position(|bit| *bit == flag)
        .map_or(0, |index| 1 << index)
}

pub struct Upstream {
    pub cluster: Arc<ClusterRuntime>,
    pub host: Option<Arc<Host>>,
}

pub struct StreamGuard {
    listener: Arc<ListenerRuntime>,
    start: Instant,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub status: u16,
    flags: Vec<&'static str>,
    pub details: &'static str,
    pub bytes_sent: u64,
    pub received: Option<Arc<ByteCount>>,
    pub upstream: Option<Upstream>,
    pub response_started: Option<Instant>,
    pub log: Option<Box<LogInfo>>,
    /// The stream's HTTP filters; dropped after `record`, which runs their `on_log`.
    pub chain: Option<crate::chain::ChainHandle>,
    /// The answered attempt's place under the cluster's `max_requests` breaker, held
    /// until the response ends.
    pub request_slot: Option<crate::breaker::Slot>,
    /// Upstream attempts begun (`upstream.request_attempt_count`).
    pub attempts: u32,
}

impl StreamGuard {
    /// Inlined: built in its caller's place, not moved there (a call, with the
    /// guard returned by `memcpy`, cost ~40 instructions a request once the refused
    /// head's path made it a second caller).
    #[inline(always)]
    pub fn new(listener: Arc<ListenerRuntime>, peer: SocketAddr, local: SocketAddr) -> StreamGuard {
        listener.http.downstream_rq_total.inc();
        listener.http.downstream_rq_active.inc();
        StreamGuard {
            listener,
            start: crate::clock::tokio_now(),
            peer,
            local,
            status: 0,
            flags: Vec::new(),
            details: "via_upstream",
            bytes_sent: 0,
            received: None,
            upstream: None,
            response_started: None,
            log: None,
            chain: None,
            request_slot: None,
            attempts: 0,
        }
    }

    pub fn start(&self) -> Instant {
        self.start
    }

    /// The flags set so far as Envoy's response-flag bits (`response.flags`).
    pub fn flag_bits(&self) -> u64 {
        self.flags
            .iter()
            .fold(0, |bits, flag| bits | flag_bit(flag))
    }

    /// The stream ended for `details`, with response flag `flag`: for the access log
    /// and for the plugins' `on_log` (run when the chain drops, after `record`),
    /// which read them as `response.flags` and `response.code_details`.
    pub fn ended_by(&mut self, flag: &'static str, details: &'static str) {
        self.set_flag(flag);
        self.details = details;
        if let Some(chain) = &self.chain {
            chain.id().with_info(|info| {
                info.response_flags |= flag_bit(flag);
                info.response_details = Some(details.into());
            });
        }
    }

    pub fn set_flag(&mut self, flag: &'static str) {
        if !flag.is_empty() && !self.flags.contains(&flag) {
            self.flags.push(flag);
        }
    }

    /// Marks the upstream leg as begun: counts the request against cluster and host.
    pub fn begin_upstream(&mut self, cluster: Arc<ClusterRuntime>, host: Arc<Host>) {
        cluster.stats.upstream_rq_total.inc();
        cluster.stats.upstream_rq_active.inc();
        host.rq_active.fetch_add(1, Ordering::Relaxed);
        host.rq_total.fetch_add(1, Ordering::Relaxed);
        self.upstream = Some(Upstream {
            cluster,
            host: Some(host),
        });
        self.attempts = 1;
    }

    /// Starts another attempt (a retry) on `host`: the stream's active request moves
    /// from the previous host to this one, and the attempt counts as an upstream
    /// request of its own, as in Envoy.
    pub fn next_attempt(&mut self, host: Arc<Host>) {
        let Some(up) = &mut self.upstream else { return };
        self.attempts += 1;
        up.cluster.stats.upstream_rq_total.inc();
        if let Some(previous) = up.host.take() {
            previous.rq_active.fetch_sub(1, Ordering::Relaxed);
        }
        host.rq_active.fetch_add(1, Ordering::Relaxed);
        host.rq_total.fetch_add(1, Ordering::Relaxed);
        up.host = Some(host);
    }

    /// The attempt on `host` answered (hedged attempts may finish out of order): the
    /// stream's active request and its log entry move to that host.
    pub fn answered_by(&mut self, host: &Arc<Host>) {
        let Some(up) = &mut self.upstream else { return };
        if up.host.as_ref().is_some_and(|h| Arc::ptr_eq(h, host)) {
            return;
        }
        if let Some(previous) = up.host.take() {
            previous.rq_active.fetch_sub(1, Ordering::Relaxed);
        }
        host.rq_active.fetch_add(1, Ordering::Relaxed);
        up.host = Some(host.clone());
    }

    /// Records the upstream response head.
    pub fn upstream_responded(&mut self, status: u16, headers: &HeaderMap) {
        let now = crate::clock::tokio_now();
        self.response_started = Some(now);
        if let Some(up) = &self.upstream {
            let stats = &up.cluster.stats;
            stats
                .upstream_rq_time
                .record(now.saturating_duration_since(self.start).as_millis() as u64);
            stats.record_status(status);
            if let Some(h) = &up.host {
                if status >= 500 {
                    h.rq_error.fetch_add(1, Ordering::Relaxed);
                }
                crate::outlier::report(&up.cluster, h, status);
                if up.cluster.config.health_check.is_some()
                    && headers.contains_key(IMMEDIATE_HEALTH_CHECK_FAIL)
                {
                    crate::health::immediate_fail(&up.cluster, h);
                }
            }
        }
    }

    /// Counts a timer that ended the stream where Envoy counts it.
    pub fn timed_out(&mut self, expiry: crate::body::Expiry) {
        match (expiry, &self.upstream) {
            (crate::body::Expiry::Route, Some(up)) => up.cluster.stats.upstream_rq_timeout.inc(),
            (crate::body::Expiry::PerTryIdle, Some(up)) => {
                up.cluster.stats.upstream_rq_per_try_idle_timeout.inc()
            }
            (crate::body::Expiry::MaxDuration, _) => {
                self.listener.http.downstream_rq_max_duration_reached.inc()
            }
            (crate::body::Expiry::Idle, _) => self.listener.http.downstream_rq_idle_timeout.inc(),
            _ => self.listener.http.downstream_rq_timeout.inc(),
        }
    }

    pub fn finish(self) {
        // Drop does the work, so a guard dropped on any path counts once.
        drop(self)
    }

    fn record(&mut self) {
        let http = &self.listener.http;
        http.downstream_rq_active.dec();
        if let Some(c) = http
            .downstream_rq_xx
            .get((self.status / 100).wrapping_sub(1) as usize)
        {
            c.inc();
        }
        if let Some(up) = &self.upstream {
            up.cluster.stats.upstream_rq_active.dec();
            if let Some(h) = &up.host {
                h.rq_active.fetch_sub(1, Ordering::Relaxed);
            }
        }
        if self.listener.access_logs.is_empty() {
            return;
        }
        let Some(info) = self.log.take() else { return };
        // Envoy prints flags in its own fixed order, whatever order they were set in.
        self.flags
            .sort_by_key(|f| FLAG_ORDER.iter().position(|o| o == f).unwrap_or(usize::MAX));
        let flags = self.flags.join(",");
        let now = Instant::now();
        let (cluster, upstream_host) = match &self.upstream {
            Some(up) => (Some(&up.cluster.config), up.host.as_ref().map(|h| h.addr)),
            None => (None, None),
        };
        let record = LogRecord {
            start_time: info.start_time,
            request_headers: &info.request_headers,
            method: info.method.as_ref().map_or("", http::Method::as_str),
            path: &info.path,
            authority: &info.authority,
            scheme: "http",
            protocol: info.protocol,
            response_headers: info.response_headers.as_ref(),
            response_trailers: None,
            status: self.status,
            response_flags: &flags,
            response_code_details: self.details,
            bytes_received: self.received.as_ref().map_or(0, |r| r.get()),
            bytes_sent: self.bytes_sent,
            duration: now - self.start,
            request_duration: None,
            response_duration: self.response_started.map(|t| t - self.start),
            upstream_host,
            upstream_cluster: cluster.map(|c| c.observability_name()),
            upstream_cluster_raw: cluster.map(|c| c.name.as_str()),
            upstream_local: None,
            upstream_failure: None,
            downstream_remote: info.downstream_remote,
            downstream_direct_remote: self.peer,
            downstream_local: self.local,
            route_name: &info.route_name,
        };
        for logger in self.listener.access_logs.iter() {
            logger.log(&record);
        }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.status == 0 && self.flags.is_empty() && self.details == "via_upstream" {
            // Dropped unanswered, with nothing said why: its codec cancelled it
            // because the client went away (its connection closed, `DC`) or, in the
            // scope of `ending_with`, for the reason given there (an HTTP/2 client's
            // RST_STREAM, `DR`), as Envoy logs these.
            let (flag, details) = ENDED_BY
                .get()
                .unwrap_or(("DC", "downstream_remote_disconnect"));
            self.ended_by(flag, details);
        }
        self.record();
    }
}

thread_local! {
    /// Why the streams dropped in the current `ending_with` scope end, when their
    /// codec knows better than "the client went away".
    static ENDED_BY: Cell<Option<(&'static str, &'static str)>> = const { Cell::new(None) };
}

/// Runs `end` (which drops streams that may still be unanswered) with the response
/// flag and details their access log entries get.
pub fn ending_with<R>(flag: &'static str, details: &'static str, end: impl FnOnce() -> R) -> R {
    struct Restore(Option<(&'static str, &'static str)>);
    impl Drop for Restore {
        fn drop(&mut self) {
            ENDED_BY.set(self.0);
        }
    }
    let _restore = Restore(ENDED_BY.replace(Some((flag, details))));
    end()
}
