//! `envoy.filters.http.health_check`: answers health checks of this proxy, with
//! Envoy's semantics (`source/extensions/filters/http/health_check/health_check.cc`).
//!
//! A request matching every `headers` matcher is a health check. The filter
//! *handles* it (answers it locally) when it is not in `pass_through_mode`, when
//! the server's health check failed (admin `/healthcheck/fail`), or when a cached
//! answer is fresh; otherwise it goes upstream. A handled check is answered once
//! the request ends (its body, if any, is read and dropped), with an empty body:
//! - 503 if the server's health check failed (`LH`, `health_check_failed`);
//! - else, with `cache_time`, the cached status (and `x-envoy-degraded` if the
//!   cached response had it; `health_check_cached`);
//! - else, with `cluster_min_healthy_percentages`, 503 for the first cluster that
//!   is missing, empty (unless its percentage is 0) or below its percentage of
//!   available hosts, 200 otherwise ([`cluster_verdict`]);
//! - else 200 (`health_check_ok`).
//!
//! Any answer other than 2xx carries `LH`. As in Envoy, the answer gets the
//! response headers of the route the request matched, if that route forwards
//! (not of a redirect or direct response route).
//!
//! Response phase (every response of a stream that reached the filters, proxied
//! or local): a health check's response gets `x-envoy-upstream-healthchecked-cluster`
//! (the bootstrap `node.cluster`) and, with `cache_time`, is remembered as the
//! cached answer; while the server's health check is failed every response gets
//! `x-envoy-immediate-health-check-fail: true` (Envoy 1.40 adds it to the health
//! check's own 503 as well). It runs after the wasm filters' response phase, which
//! is Envoy's order for the usual place of this filter, first in `http_filters`.
//!
//! The cache is Envoy's: a timer started with the filter clears it every
//! `cache_time`, and each health check response fills it. So an answer is fresh
//! until the end of the `cache_time` period it was stored in, not for `cache_time`
//! after it. One atomic per filter, shared by the workers, holds the answer and
//! its period.
//!
//! Cost: a request that is no health check, on a server not failed, pays the
//! `headers` match and nothing else; listeners without the filter pay nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;
use http_body_util::BodyExt;
use strait_filters::{LocalReply, RequestHead};
use strait_xds::model::{
    HealthCheckFilterConfig, HttpConnectionManager, PseudoHeaders, RouteAction,
};

use crate::body::DownstreamBody;
use crate::chain::{NativeFilter, NativeStage, StageStream};
use crate::cluster::ClusterRuntime;
use crate::error::ProxyError;
use crate::runtime::{FastMap, Shared};
use crate::stream::StreamGuard;

static X_ENVOY_UPSTREAM_HEALTHCHECKED_CLUSTER: HeaderName =
    HeaderName::from_static("x-envoy-upstream-healthchecked-cluster");
static X_ENVOY_IMMEDIATE_HEALTH_CHECK_FAIL: HeaderName =
    HeaderName::from_static("x-envoy-immediate-health-check-fail");
static X_ENVOY_DEGRADED: HeaderName = HeaderName::from_static("x-envoy-degraded");

/// Envoy's `response_code_details` of the filter's answers.
pub const OK: &str = "health_check_ok";
pub const FAILED: &str = "health_check_failed";
pub const CACHED: &str = "health_check_cached";
pub const NO_CLUSTER: &str = "health_check_failed_no_cluster_found";
pub const CLUSTER_EMPTY: &str = "health_check_failed_cluster_empty";
pub const CLUSTER_HEALTHY: &str = "health_check_ok_cluster_healthy";
pub const CLUSTER_UNHEALTHY: &str = "health_check_failed_cluster_unhealthy";

/// The details above as the access log keeps them (`&'static`), from a reply's.
pub fn details(reply: &str) -> Option<&'static str> {
    [
        OK,
        FAILED,
        CACHED,
        NO_CLUSTER,
        CLUSTER_EMPTY,
        CLUSTER_HEALTHY,
        CLUSTER_UNHEALTHY,
    ]
    .into_iter()
    .find(|d| *d == reply)
}

/// One configured health check filter, shared by all workers.
pub struct HealthCheckRuntime {
    pub config: Arc<HealthCheckFilterConfig>,
    /// `node.cluster`, the value of `x-envoy-upstream-healthchecked-cluster`
    /// (`None` if it cannot be a header value).
    node_cluster: Option<HeaderValue>,
    cache: Option<ResponseCache>,
}

impl HealthCheckRuntime {
    pub fn new(config: Arc<HealthCheckFilterConfig>, node_cluster: &str) -> Arc<Self> {
        Arc::new(HealthCheckRuntime {
            node_cluster: HeaderValue::from_str(node_cluster).ok(),
            cache: config.cache_time.map(ResponseCache::new),
            config,
        })
    }

    /// The filter's request phase: `None` lets the request go on; a reply answers
    /// it. A handled health check with a body is answered once the body has been
    /// read (and dropped), as Envoy answers at the end of the request.
    /// `at`: the filter's place among the listener's native stages.
    pub async fn request_headers(
        &self,
        at: usize,
        hcm: &HttpConnectionManager,
        head: &RequestHead,
        end_of_stream: bool,
        stream: &mut StageStream<'_, '_>,
    ) -> Option<LocalReply> {
        if !self.is_health_check(head) {
            return None;
        }
        stream.response.health.checked |= bit(at);
        let handling = !self.config.pass_through_mode
            || stream.response.health.shared.health_check_failed()
            || self.cache.as_ref().is_some_and(ResponseCache::fresh);
        if !handling {
            return None;
        }
        if !end_of_stream {
            if let Err(reply) = drain(stream.body, hcm).await {
                return Some(reply);
            }
        }
        Some(self.answer(&stream.response.health, hcm, head, stream.guard))
    }

    fn is_health_check(&self, head: &RequestHead) -> bool {
        let pseudo = PseudoHeaders {
            path: head.uri.path_and_query().map_or("/", |p| p.as_str()),
            method: head.method.as_str(),
            authority: match head.uri.authority() {
                Some(authority) => authority.as_str(),
                None => head
                    .headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or(""),
            },
            scheme: head.uri.scheme_str().unwrap_or("http"),
        };
        self.config
            .headers
            .iter()
            .all(|matcher| matcher.matches(&head.headers, &pseudo))
    }

    /// Envoy's `onComplete`: the local answer to a handled health check.
    fn answer(
        &self,
        stream: &HealthChecks<'_>,
        hcm: &HttpConnectionManager,
        head: &RequestHead,
        guard: &mut StreamGuard,
    ) -> LocalReply {
        let failed = stream.shared.health_check_failed();
        let (status, details, degraded) = if failed {
            (503, FAILED, false)
        } else if let Some(cache) = &self.cache {
            let (status, degraded) = cache.last();
            (status, CACHED, degraded)
        } else if !self.config.cluster_min_healthy_percentages.is_empty() {
            let membership = |name: &str| {
                let cluster = stream.clusters.get(name)?;
                let stats = &cluster.stats;
                // Strait has no degraded hosts: the available ones are the healthy.
                let healthy = stats.membership_healthy.value().max(0) as u64;
                Some((healthy, stats.membership_total.value().max(0) as u64))
            };
            let (status, details) =
                cluster_verdict(&self.config.cluster_min_healthy_percentages, membership);
            (status, details, false)
        } else {
            (200, OK, false)
        };
        if !(200..300).contains(&status) {
            guard.set_flag("LH");
        }
        // A cached status came from an upstream's response head: 100..=999.
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let mut reply = LocalReply::new(status, details);
        if degraded {
            reply
                .headers
                .insert(&X_ENVOY_DEGRADED, HeaderValue::from_static(""));
        }
        // Envoy's connection manager picked the route before the filters ran and
        // gives a local reply its response headers (a forwarding route's only).
        if let Some(mutations) = route_mutations(hcm, head) {
            for m in mutations {
                m.apply_response(&mut reply.headers);
            }
        }
        reply
    }

    /// The filter's response phase on one response of its stream; see the module
    /// doc. `checked`: this filter took the request for a health check.
    fn response_headers(
        &self,
        checked: bool,
        failed: bool,
        status: StatusCode,
        headers: &mut HeaderMap,
    ) {
        if checked {
            if let Some(cache) = &self.cache {
                cache.store(status.as_u16(), headers.contains_key(&X_ENVOY_DEGRADED));
            }
            if let Some(cluster) = &self.node_cluster {
                headers.insert(&X_ENVOY_UPSTREAM_HEALTHCHECKED_CLUSTER, cluster.clone());
            }
        }
        if failed {
            headers.insert(
                &X_ENVOY_IMMEDIATE_HEALTH_CHECK_FAIL,
                HeaderValue::from_static("true"),
            );
        }
    }
}

/// A stage's bit in [`HealthChecks::checked`] (a listener with more than 64
/// filters shares the last).
fn bit(at: usize) -> u64 {
    1 << at.min(63)
}

/// A stream's side of its listener's health check filters: what their request
/// phase needs beyond the head, and what it leaves for their response phase.
pub struct HealthChecks<'a> {
    shared: &'a Shared,
    clusters: &'a FastMap<String, Arc<ClusterRuntime>>,
    /// Bit `i`: the listener's stage `i` took the request for a health check.
    checked: u64,
    /// The stream reached the HTTP filters, so their response phase runs: a
    /// request the connection manager refused before (a bad head) gets none, as
    /// in Envoy.
    armed: bool,
}

impl<'a> HealthChecks<'a> {
    pub fn new(
        shared: &'a Shared,
        clusters: &'a FastMap<String, Arc<ClusterRuntime>>,
    ) -> HealthChecks<'a> {
        HealthChecks {
            shared,
            clusters,
            checked: 0,
            armed: false,
        }
    }

    /// The stream's HTTP filters run: from now on its responses go through their
    /// response phase.
    pub fn arm(&mut self) {
        self.armed = true;
    }

    /// The response phase of the listener's health check filters, in Envoy's
    /// encoding order (the last filter first). Nothing unless armed; a listener
    /// without the filter looks at its stages and stops.
    #[inline]
    pub fn response_headers(
        &self,
        stages: &[NativeStage],
        status: StatusCode,
        headers: &mut HeaderMap,
    ) {
        if self.armed {
            self.run_response_headers(stages, status, headers);
        }
    }

    fn run_response_headers(
        &self,
        stages: &[NativeStage],
        status: StatusCode,
        headers: &mut HeaderMap,
    ) {
        let mut failed = None;
        for (at, stage) in stages.iter().enumerate().rev() {
            let NativeFilter::HealthCheck(filter) = &stage.filter else {
                continue;
            };
            let failed = *failed.get_or_insert_with(|| self.shared.health_check_failed());
            filter.response_headers(self.checked & bit(at) != 0, failed, status, headers);
        }
    }
}

/// The health of `cluster_min_healthy_percentages` (in order), with each cluster's
/// (available hosts, all hosts), `None` for a cluster that does not exist: Envoy's
/// integer arithmetic on its truncated percentages.
pub fn cluster_verdict(
    percentages: &[(String, u64)],
    membership: impl Fn(&str) -> Option<(u64, u64)>,
) -> (u16, &'static str) {
    let mut verdict = (200, OK);
    for (cluster, percentage) in percentages {
        verdict = (200, CLUSTER_HEALTHY);
        let Some((available, total)) = membership(cluster) else {
            return (503, NO_CLUSTER);
        };
        if total == 0 {
            if *percentage == 0 {
                continue;
            }
            return (503, CLUSTER_EMPTY);
        }
        if 100 * available < total * percentage {
            return (503, CLUSTER_UNHEALTHY);
        }
    }
    verdict
}

/// Reads the request body to its end and drops it. The stream idle timeout
/// applies between chunks, as the router's timer would; a body that fails (the
/// client went away, or sent a bad chunk) resets the stream.
async fn drain(body: &mut DownstreamBody, hcm: &HttpConnectionManager) -> Result<(), LocalReply> {
    loop {
        let frame = body.frame();
        let frame = match hcm.stream_idle_timeout {
            None => frame.await,
            Some(idle) => match tokio::time::timeout(idle, frame).await {
                Ok(frame) => frame,
                Err(_) => return Err(idle_timeout_reply()),
            },
        };
        match frame {
            None => return Ok(()),
            Some(Ok(_)) => {}
            Some(Err(_)) => return Err(LocalReply::reset("health_check_body_failed")),
        }
    }
}

/// The connection manager's answer to its stream idle timer before the request
/// ended, as the router gives it.
fn idle_timeout_reply() -> LocalReply {
    let timeout = ProxyError::StreamIdleTimeout {
        request_complete: false,
    };
    let status = StatusCode::from_u16(timeout.status()).unwrap_or(StatusCode::REQUEST_TIMEOUT);
    let mut reply = LocalReply::new(status, timeout.details());
    reply.body = bytes::Bytes::from(timeout.body());
    reply
}

/// The response header mutations of the route `head` takes (route, virtual host,
/// route config, in the router's order), if one matches and forwards.
fn route_mutations<'a>(
    hcm: &'a HttpConnectionManager,
    head: &'a RequestHead,
) -> Option<[&'a strait_xds::model::HeaderMutations; 3]> {
    let view = crate::router::route_view(&head.uri, &head.method, &head.headers)?;
    let host = view.host;
    let route_config = &hcm.route_config;
    let vhost = route_config.find_virtual_host(host)?;
    let route = vhost.find_route(&view)?;
    // Envoy's local reply takes them from a route entry only: a redirect or a
    // direct response route has none.
    if !matches!(route.action, RouteAction::Route(_)) {
        return None;
    }
    Some([&route.headers, &vhost.headers, &route_config.headers])
}

/// The cached answer of a filter with `cache_time`.
struct ResponseCache {
    period: Duration,
    /// When the filter was made: Envoy's timer clears the cache every `period`
    /// from then.
    epoch: Instant,
    /// `(period number + 1) << 12 | degraded << 11 | status`; 0 until the first
    /// health check response.
    answer: AtomicU64,
}

impl ResponseCache {
    fn new(period: Duration) -> ResponseCache {
        ResponseCache {
            period,
            epoch: crate::clock::now(),
            answer: AtomicU64::new(0),
        }
    }

    /// The number of the current period, counted from 1.
    fn period_now(&self) -> u64 {
        let elapsed = crate::clock::now().saturating_duration_since(self.epoch);
        (elapsed.as_nanos() / self.period.as_nanos().max(1)) as u64 + 1
    }

    /// An answer was stored in the current period.
    fn fresh(&self) -> bool {
        let answer = self.answer.load(Ordering::Relaxed);
        answer != 0 && answer >> 12 == self.period_now()
    }

    /// The last answer stored, fresh or not (200 before any), as Envoy answers once
    /// it decided to: its status and whether it was degraded.
    fn last(&self) -> (u16, bool) {
        match self.answer.load(Ordering::Relaxed) {
            0 => (200, false),
            answer => ((answer & 0x3ff) as u16, answer & (1 << 11) != 0),
        }
    }

    fn store(&self, status: u16, degraded: bool) {
        let answer =
            self.period_now() << 12 | u64::from(degraded) << 11 | u64::from(status & 0x3ff);
        self.answer.store(answer, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn percentages(pairs: &[(&str, u64)]) -> Vec<(String, u64)> {
        pairs.iter().map(|(c, p)| ((*c).to_owned(), *p)).collect()
    }

    #[test]
    fn cluster_verdicts() {
        // (percentages, (available, total) of cluster "a", of "b", want)
        let cases = [
            (vec![("a", 100)], Some((2, 2)), None, (200, CLUSTER_HEALTHY)),
            (
                vec![("a", 100)],
                Some((1, 2)),
                None,
                (503, CLUSTER_UNHEALTHY),
            ),
            // 100 * 1 < 2 * 50 is false: exactly the percentage is enough.
            (vec![("a", 50)], Some((1, 2)), None, (200, CLUSTER_HEALTHY)),
            (
                vec![("a", 51)],
                Some((1, 2)),
                None,
                (503, CLUSTER_UNHEALTHY),
            ),
            (vec![("a", 0)], Some((0, 3)), None, (200, CLUSTER_HEALTHY)),
            // Empty: healthy only when nothing is asked of it.
            (vec![("a", 0)], Some((0, 0)), None, (200, CLUSTER_HEALTHY)),
            (vec![("a", 1)], Some((0, 0)), None, (503, CLUSTER_EMPTY)),
            (vec![("b", 1)], Some((1, 1)), None, (503, NO_CLUSTER)),
            // The first failing cluster decides.
            (
                vec![("a", 100), ("b", 10)],
                Some((0, 1)),
                None,
                (503, CLUSTER_UNHEALTHY),
            ),
            (
                vec![("a", 100), ("b", 10)],
                Some((1, 1)),
                Some((0, 0)),
                (503, CLUSTER_EMPTY),
            ),
        ];
        for (i, (pairs, a, b, want)) in cases.into_iter().enumerate() {
            let membership = |name: &str| match name {
                "a" => a,
                "b" => b,
                _ => None,
            };
            assert_eq!(
                cluster_verdict(&percentages(&pairs), membership),
                want,
                "case {i}"
            );
        }
        assert_eq!(cluster_verdict(&[], |_| None), (200, OK));
    }

    #[test]
    fn the_cache_holds_an_answer_for_the_rest_of_its_period() {
        let cache = ResponseCache::new(Duration::from_secs(3600));
        assert!(!cache.fresh());
        assert_eq!(cache.last(), (200, false));
        cache.store(503, true);
        assert!(cache.fresh());
        assert_eq!(cache.last(), (503, true));
        cache.store(200, false);
        assert_eq!(cache.last(), (200, false));
        // An answer of an earlier period is stale, but still the last one.
        let stale = ResponseCache::new(Duration::from_nanos(1));
        stale.store(503, false);
        std::thread::sleep(Duration::from_millis(1));
        assert!(!stale.fresh());
        assert_eq!(stale.last(), (503, false));
    }
}
