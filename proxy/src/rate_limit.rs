//! `envoy.filters.http.local_ratelimit`: a token bucket in front of the router, with
//! Envoy 1.40's semantics (`source/extensions/filters/http/local_ratelimit`).
//!
//! A request takes the config of the most specific `typed_per_filter_config` for the
//! filter's name (route, then virtual host, then route configuration), else the
//! filter's own. Then:
//! - `filter_enabled` decides whether the filter looks at it at all (unset: never);
//!   if so `<stat_prefix>.http_local_rate_limit.enabled` counts it;
//! - without a token bucket it passes (`ok`); with one it takes a token: `ok` if
//!   there was one, else `rate_limited`;
//! - a limited request that `filter_enforced` does not pick (unset: none) goes on
//!   with `request_headers_to_add_when_not_enforced`; an enforced one (`enforced`)
//!   is answered `status` (429) with the body `local_rate_limited`, the
//!   `response_headers_to_add`, and the response flag `RL`, details
//!   `local_rate_limited`. A gRPC request gets HTTP 200 with `grpc-status` 14
//!   (UNAVAILABLE), or 8 (RESOURCE_EXHAUSTED) with `rate_limited_as_resource_exhausted`.
//!   As in Envoy, the answer also gets the response headers of the route the request
//!   matched, if that route forwards. No `x-envoy-ratelimited`: Envoy 1.40 sends none.
//!
//! Buckets. Each config has its own bucket, shared by every worker: one per filter,
//! one per route, virtual host or route configuration that has a config. Envoy 1.40
//! refills continuously (`AtomicTokenBucketImpl`: `tokens_per_fill / fill_interval`
//! tokens a second, fractions included), not in `fill_interval` steps, so a bucket
//! here is GCRA: one `AtomicU64` holding the time at which the bucket would be full
//! again ("theoretical arrival time"). A request at `now` may pass when
//! `max(tat, now) + interval - now <= max_tokens * interval`, and moves `tat` by one
//! interval: one load and one compare-exchange, no lock, no timer. With
//! `local_rate_limit_per_downstream_connection` the bucket is the connection's
//! (Envoy keeps one per connection, made from the first config that asks), in a
//! map of the worker that runs the connection; a bucket that has refilled is
//! indistinguishable from a new one, so full buckets are swept from the map.
//!
//! With `enable_x_ratelimit_headers: DRAFT_VERSION_03` the response gets
//! `x-ratelimit-limit` (`max_tokens`), `x-ratelimit-remaining` (whole tokens left
//! once the request took its own) and `x-ratelimit-reset`: 0 while a token is left,
//! else Envoy's whole seconds for one token to refill (`fill_interval /
//! tokens_per_fill`, rounded down), not the time left until it does.
//!
//! A reload keeps the buckets of a listener whose config did not change, as Envoy
//! keeps an unchanged listener across an LDS update; a changed listener starts with
//! full buckets.
//!
//! Cost: a listener without the filter has no stage and pays nothing. With it, a
//! request pays a percentage check (no random draw at 0% or 100%), two relaxed
//! counter increments and the bucket's compare-exchange; a route lookup only if some
//! route, virtual host or the route configuration has a config for the filter.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;
use strait_filters::{LocalReply, RequestHead};
use strait_xds::model::{
    FractionalPercent, HttpConnectionManager, LocalRateLimitConfig, PerFilterConfig, RouteAction,
    RouteConfig, Snapshot, TokenBucket as BucketConfig,
};

use crate::chain::{NativeFilter, StageStream};
use crate::runtime::{FastMap, Runtime};
use crate::stats::{Counter, Scope, Store};

/// Envoy's body and `response_code_details` of a limited request's answer.
pub const DETAILS: &str = "local_rate_limited";

static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// One configured local rate limit filter, shared by all workers.
pub struct LocalRateLimitRuntime {
    /// The filter's own config.
    default: Limiter,
    /// By virtual host, then route, of the listener's route configuration: the most
    /// specific per-route config for this filter. `None` when nothing in the route
    /// configuration has one, so requests skip the route lookup.
    routes: Option<Vec<Vec<Option<Arc<Limiter>>>>>,
}

/// A config with its stats and its shared bucket.
struct Limiter {
    config: Arc<LocalRateLimitConfig>,
    stats: LimiterStats,
    /// `None` without a token bucket, or when each connection has its own.
    bucket: Option<Bucket>,
}

/// Envoy's `<stat_prefix>.http_local_rate_limit.*`. Configs with one prefix share
/// them, as Envoy's stats of one name are one.
struct LimiterStats {
    enabled: Counter,
    enforced: Counter,
    rate_limited: Counter,
    ok: Counter,
}

impl LocalRateLimitRuntime {
    /// The filter for `config`, with a limiter for every per-route config of `routes`
    /// that names it.
    pub fn new(
        config: Arc<LocalRateLimitConfig>,
        routes: &RouteConfig,
        store: &Store,
    ) -> Arc<Self> {
        let name = config.name.as_str();
        let limiter = |configs: &[(String, PerFilterConfig)]| {
            configs.iter().find_map(|(key, per_filter)| {
                let PerFilterConfig::LocalRateLimit(config) = per_filter;
                (key == name).then(|| Arc::new(Limiter::new(config.clone(), store)))
            })
        };
        let top = limiter(&routes.typed_per_filter_config);
        let mut any = top.is_some();
        let by_route = routes
            .virtual_hosts
            .iter()
            .map(|vhost| {
                let vhost_limiter = limiter(&vhost.typed_per_filter_config).or(top.clone());
                vhost
                    .routes
                    .iter()
                    .map(|route| {
                        let found =
                            limiter(&route.typed_per_filter_config).or(vhost_limiter.clone());
                        any |= found.is_some();
                        found
                    })
                    .collect()
            })
            .collect();
        Arc::new(LocalRateLimitRuntime {
            default: Limiter::new(config, store),
            routes: any.then_some(by_route),
        })
    }

    /// The previous runtime's filter in stage `at` of `listener`, when the listener's
    /// config is the same as then (its buckets go on); `None` otherwise.
    pub fn kept(
        previous: Option<&Runtime>,
        snapshot: &Snapshot,
        listener: &str,
        at: usize,
    ) -> Option<Arc<Self>> {
        let previous = previous?;
        let source = |snapshot: &Snapshot| {
            let listeners = snapshot.source.pointer("/static_resources/listeners")?;
            listeners
                .as_array()?
                .iter()
                .find(|l| l.get("name").and_then(|n| n.as_str()) == Some(listener))
                .cloned()
        };
        let now = source(snapshot)?;
        if source(&previous.snapshot)? != now {
            return None;
        }
        let stage = previous.listener(listener)?.stages.get(at)?;
        match &stage.filter {
            NativeFilter::LocalRateLimit(filter) => Some(filter.clone()),
            _ => None,
        }
    }

    /// The filter's request phase: `None` lets the request go on (perhaps with
    /// `request_headers_to_add_when_not_enforced`); a reply answers it.
    pub fn request_headers(
        &self,
        hcm: &HttpConnectionManager,
        head: &mut RequestHead,
        stream: &mut StageStream<'_, '_>,
    ) -> Option<LocalReply> {
        let limiter = self.limiter_for(hcm, head);
        let config = &*limiter.config;
        if !picks(config.filter_enabled) {
            return None;
        }
        limiter.stats.enabled.inc();
        let decision = match (&config.token_bucket, &limiter.bucket) {
            (None, _) => None,
            (Some(_), Some(bucket)) => Some(bucket.take(now_nanos(bucket.epoch))),
            (Some(bucket), None) => Some(connection_bucket(stream.conn_id, bucket)),
        };
        if config.x_ratelimit_headers {
            if let Some(decision) = &decision {
                stream.response.rate_limit = decision.headers;
            }
        }
        if decision.as_ref().is_none_or(|d| d.allowed) {
            limiter.stats.ok.inc();
            return None;
        }
        limiter.stats.rate_limited.inc();
        if !picks(config.filter_enforced) {
            config.headers.apply_request(&mut head.headers);
            return None;
        }
        limiter.stats.enforced.inc();
        stream.guard.set_flag("RL");
        Some(reply(config, hcm, head))
    }

    fn limiter_for(&self, hcm: &HttpConnectionManager, head: &RequestHead) -> &Limiter {
        let Some(routes) = &self.routes else {
            return &self.default;
        };
        route_at(&hcm.route_config, head)
            .and_then(|(vhost, route)| routes.get(vhost)?.get(route)?.as_deref())
            .unwrap_or(&self.default)
    }
}

impl Limiter {
    fn new(config: Arc<LocalRateLimitConfig>, store: &Store) -> Limiter {
        let scope = Scope::custom(&format!("{}.http_local_rate_limit", config.stat_prefix));
        // Envoy 1.40 has a `shadow_mode` counter too, counted only by descriptors in
        // shadow mode, which are not supported: registered so `/stats` lists it.
        store.counter(&scope, "shadow_mode");
        let bucket = match (&config.token_bucket, config.per_downstream_connection) {
            (Some(bucket), false) => Some(Bucket::new(bucket)),
            _ => None,
        };
        Limiter {
            stats: LimiterStats {
                enabled: store.counter(&scope, "enabled"),
                enforced: store.counter(&scope, "enforced"),
                rate_limited: store.counter(&scope, "rate_limited"),
                ok: store.counter(&scope, "ok"),
            },
            config,
            bucket,
        }
    }
}

/// Whether a `RuntimeFractionalPercent` picks this request; unset picks none. Only a
/// true fraction costs a random draw.
fn picks(percent: Option<FractionalPercent>) -> bool {
    match percent {
        None => false,
        Some(p) if p.numerator == 0 => false,
        Some(p) if p.numerator >= p.denominator => true,
        Some(p) => p.enabled(rand::random()),
    }
}

/// The virtual host and route `head` takes, as the router will pick them.
fn route_at(routes: &RouteConfig, head: &RequestHead) -> Option<(usize, usize)> {
    let view = crate::router::route_view(&head.uri, &head.method, &head.headers)?;
    let host = view.host;
    let vhost = routes.find_virtual_host_index(host)?;
    let route = routes.virtual_hosts[vhost].find_route_index(&view)?;
    Some((vhost, route))
}

/// Envoy's answer to an enforced limit (see the module doc).
fn reply(
    config: &LocalRateLimitConfig,
    hcm: &HttpConnectionManager,
    head: &RequestHead,
) -> LocalReply {
    let grpc = head
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let mut reply = if grpc {
        let mut reply = LocalReply::new(StatusCode::OK, DETAILS);
        let code = match config.rate_limited_as_resource_exhausted {
            true => 8,
            false => 14,
        };
        let headers = &mut reply.headers;
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert(&GRPC_STATUS, HeaderValue::from_static(code_text(code)));
        headers.insert(&GRPC_MESSAGE, HeaderValue::from_static(DETAILS));
        reply
    } else {
        // Translation keeps the status in 400..=511.
        let status = StatusCode::from_u16(config.status).unwrap_or(StatusCode::TOO_MANY_REQUESTS);
        let mut reply = LocalReply::new(status, DETAILS);
        reply.body = Bytes::from_static(DETAILS.as_bytes());
        reply
    };
    // Envoy's connection manager picked the route before the filters ran and gives
    // a local reply its response headers (a forwarding route's only).
    if let Some((vhost_at, route_at)) = route_at(&hcm.route_config, head) {
        let rc = &hcm.route_config;
        let vhost = &rc.virtual_hosts[vhost_at];
        let route = &vhost.routes[route_at];
        if matches!(route.action, RouteAction::Route(_)) {
            for mutations in [&route.headers, &vhost.headers, &rc.headers] {
                mutations.apply_response(&mut reply.headers);
            }
        }
    }
    // The `x-ratelimit-*` values go on in the router, as on every response.
    config.headers.apply_response(&mut reply.headers);
    reply
}

fn code_text(code: u8) -> &'static str {
    match code {
        8 => "8",
        _ => "14",
    }
}

/// What a stream's rate limit filter leaves for its response: the `x-ratelimit-*`
/// values (limit, remaining, reset), when its config asks for them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct XRateLimit(Option<[u32; 3]>);

impl XRateLimit {
    /// Adds the headers, if any, to a response. Every response on every route asks,
    /// so the check is inline and the writing out of line.
    #[inline(always)]
    pub fn apply(&self, headers: &mut HeaderMap) {
        if let Some(values) = self.0 {
            Self::write(values, headers);
        }
    }

    #[inline(never)]
    fn write([limit, remaining, reset]: [u32; 3], headers: &mut HeaderMap) {
        headers.append(&X_RATELIMIT_LIMIT, HeaderValue::from(limit));
        headers.append(&X_RATELIMIT_REMAINING, HeaderValue::from(remaining));
        headers.append(&X_RATELIMIT_RESET, HeaderValue::from(reset));
    }
}

/// A bucket's answer to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Decision {
    allowed: bool,
    headers: XRateLimit,
}

/// A continuously refilled token bucket as GCRA (see the module doc). Times are
/// nanoseconds since `epoch`.
struct Bucket {
    /// When the bucket is full again; at or before now, it is full.
    full_at: AtomicU64,
    /// Nanoseconds per token (`fill_interval / tokens_per_fill`, at least 1).
    interval: u64,
    /// `max_tokens * interval`: how far ahead of now `full_at` may run.
    depth: u64,
    max_tokens: u32,
    /// `x-ratelimit-reset` while no whole token is left.
    reset_seconds: u32,
    epoch: Instant,
}

impl Bucket {
    fn new(config: &BucketConfig) -> Bucket {
        let fill = config.fill_interval.as_nanos() as u64;
        let interval = (fill / u64::from(config.tokens_per_fill)).max(1);
        // Envoy: ceil(1000 / rate) milliseconds, then whole seconds rounded down.
        let fill_ms = config.fill_interval.as_millis() as u64;
        let per_token_ms = fill_ms.div_ceil(u64::from(config.tokens_per_fill));
        Bucket {
            full_at: AtomicU64::new(0),
            interval,
            depth: interval.saturating_mul(u64::from(config.max_tokens)),
            max_tokens: config.max_tokens,
            reset_seconds: u32::try_from(per_token_ms / 1000).unwrap_or(u32::MAX),
            epoch: crate::clock::now(),
        }
    }

    /// Takes a token at `now` if there is a whole one.
    fn take(&self, now: u64) -> Decision {
        let mut full_at = self.full_at.load(Ordering::Relaxed);
        loop {
            let base = full_at.max(now);
            let next = base.saturating_add(self.interval);
            if next - now > self.depth {
                return self.decision(false, base - now);
            }
            match self.full_at.compare_exchange_weak(
                full_at,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return self.decision(true, next - now),
                Err(actual) => full_at = actual,
            }
        }
    }

    /// The answer when the bucket is `ahead` nanoseconds short of full.
    fn decision(&self, allowed: bool, ahead: u64) -> Decision {
        let left = self.depth.saturating_sub(ahead) / self.interval;
        let remaining = u32::try_from(left).unwrap_or(u32::MAX).min(self.max_tokens);
        let reset = match remaining {
            0 => self.reset_seconds,
            _ => 0,
        };
        Decision {
            allowed,
            headers: XRateLimit(Some([self.max_tokens, remaining, reset])),
        }
    }

    fn is_full(&self, now: u64) -> bool {
        self.full_at.load(Ordering::Relaxed) <= now
    }
}

fn now_nanos(epoch: Instant) -> u64 {
    crate::clock::now()
        .saturating_duration_since(epoch)
        .as_nanos() as u64
}

/// The buckets of this worker's connections, by connection id. A connection's
/// streams all run on its worker, so the map is the worker's alone.
struct ConnectionBuckets {
    buckets: FastMap<u64, Bucket>,
    /// Full buckets are swept when the map reaches this size.
    sweep_at: usize,
}

thread_local! {
    static CONNECTION_BUCKETS: RefCell<ConnectionBuckets> = RefCell::new(ConnectionBuckets {
        buckets: FastMap::default(),
        sweep_at: 1024,
    });
}

/// Takes a token from connection `conn_id`'s bucket, made from `config` if it has
/// none.
fn connection_bucket(conn_id: u64, config: &BucketConfig) -> Decision {
    CONNECTION_BUCKETS.with(|map| {
        let mut map = map.borrow_mut();
        if map.buckets.len() >= map.sweep_at {
            let now = crate::clock::now();
            map.buckets.retain(|_, b| {
                !b.is_full(now.saturating_duration_since(b.epoch).as_nanos() as u64)
            });
            map.sweep_at = (map.buckets.len() * 2).max(1024);
        }
        let bucket = map
            .buckets
            .entry(conn_id)
            .or_insert_with(|| Bucket::new(config));
        bucket.take(now_nanos(bucket.epoch))
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const MS: u64 = 1_000_000;

    fn bucket(max_tokens: u32, tokens_per_fill: u32, fill_ms: u64) -> Bucket {
        Bucket::new(&BucketConfig {
            max_tokens,
            tokens_per_fill,
            fill_interval: Duration::from_millis(fill_ms),
        })
    }

    fn answers(bucket: &Bucket, now: u64, n: usize) -> Vec<(bool, [u32; 3])> {
        (0..n)
            .map(|_| {
                let d = bucket.take(now);
                (d.allowed, d.headers.0.unwrap())
            })
            .collect()
    }

    #[test]
    fn a_full_bucket_answers_max_tokens_then_limits() {
        // Envoy's probe: 3 tokens, 3 per 6 s → remaining 2, 1, 0 (reset 2), limited.
        let b = bucket(3, 3, 6000);
        let got = answers(&b, 0, 4);
        assert_eq!(
            got,
            [
                (true, [3, 2, 0]),
                (true, [3, 1, 0]),
                (true, [3, 0, 2]),
                (false, [3, 0, 2])
            ]
        );
    }

    #[test]
    fn tokens_come_back_continuously() {
        // One token every 2 s (3 per 6 s): none after 1.9 s, one after 2 s.
        let b = bucket(3, 3, 6000);
        answers(&b, 0, 3);
        assert!(!b.take(1900 * MS).allowed);
        let d = b.take(2000 * MS);
        assert!(d.allowed);
        assert_eq!(d.headers.0, Some([3, 0, 2]));
        // Long idle: full again, never more than max_tokens.
        let got = answers(&b, 60_000 * MS, 4);
        assert_eq!(got.iter().filter(|(allowed, _)| *allowed).count(), 3);
        assert!(b.is_full(200_000 * MS));
    }

    #[test]
    fn reset_is_envoys_whole_seconds_per_token() {
        // (max, per fill, fill ms, reset when empty)
        for (max, per_fill, fill_ms, want) in [
            (1, 1, 60_000, 60),
            (2, 1, 1500, 1),
            (2, 3, 1000, 0),
            (5, 2, 5000, 2),
        ] {
            let b = bucket(max, per_fill, fill_ms);
            let last = answers(&b, 0, max as usize).pop().unwrap();
            assert_eq!(last.1, [max, 0, want], "{max} {per_fill} {fill_ms}");
        }
    }

    #[test]
    fn workers_share_one_bucket() {
        let b = Arc::new(bucket(1000, 1, 3_600_000));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || (0..500).filter(|_| b.take(0).allowed).count())
            })
            .collect();
        let passed: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(passed, 1000);
    }

    #[test]
    fn percentages() {
        let p = |numerator, denominator| {
            Some(FractionalPercent {
                numerator,
                denominator,
            })
        };
        assert!(!picks(None));
        assert!(!picks(p(0, 100)));
        assert!(picks(p(100, 100)));
        assert!(picks(p(250, 100)));
        let hits = (0..2000).filter(|_| picks(p(50, 100))).count();
        assert!((700..1300).contains(&hits), "{hits}");
    }
}
