//! Retry decisions, as Envoy's router makes them: pure functions from the policy, the
//! attempt's outcome and a random number to "retry after this backoff", "done" or
//! "retriable but out of retries". The router does the IO; everything here is tested
//! from tables without sockets.
//!
//! The numbers are Envoy's: `num_retries` 1 unless set, backoff 25 ms base and 10 ×
//! base cap, full jitter (`random % interval`, the interval doubling per retry up to
//! the cap). A per-try timeout counts as a reset (`5xx`, `gateway-error` and `reset`
//! retry it); a connect failure is retried by those three and by `connect-failure`.

use std::time::Duration;

use http::HeaderMap;
use strait_xds::model::{RetryOn, RetryPolicy, RouteTarget};

use crate::error::{ProxyError, ResetReason};

/// How one upstream attempt ended, as far as retrying is concerned.
#[derive(Debug, Clone, Copy)]
pub enum Outcome<'a> {
    /// Response headers arrived.
    Response { status: u16, headers: &'a HeaderMap },
    /// The TCP connection could not be made.
    ConnectFailure,
    /// The stream or connection ended before response headers. `refused`: an HTTP/2
    /// `REFUSED_STREAM`, which promises the upstream did not process the request.
    Reset { refused: bool },
    /// `per_try_timeout` fired (Envoy resets the attempt locally).
    PerTryTimeout,
}

/// What the router does after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Use this outcome. `after_retry`: an earlier attempt was retried, so this one
    /// counts as `upstream_rq_retry_success`.
    Done { after_retry: bool },
    /// Try again after `backoff` (`upstream_rq_retry`).
    Retry { backoff: Duration },
    /// Retriable, but `num_retries` are spent: use this outcome, flag `URX`
    /// (`upstream_rq_retry_limit_exceeded`).
    LimitExceeded,
}

/// One request's retry state: what the policy (or Envoy's retry headers) allow, and
/// how many retries are left.
#[derive(Debug)]
pub struct RetryState<'a> {
    retry_on: RetryOn,
    policy: Option<&'a RetryPolicy>,
    remaining: u32,
    /// Retries scheduled so far; the backoff interval doubles with each.
    retries: u32,
    base_ms: u64,
    max_ms: u64,
}

/// The request headers through which a client asks for retries.
#[derive(Debug, Default, Clone, Copy)]
pub struct RetryHeaders<'a> {
    /// `x-envoy-retry-on`.
    pub retry_on: Option<&'a str>,
    /// `x-envoy-max-retries`.
    pub max_retries: Option<&'a str>,
    /// `x-envoy-retry-grpc-on`.
    pub retry_grpc_on: Option<&'a str>,
}

impl<'a> RetryHeaders<'a> {
    /// The retry headers of a request (present only on internal requests: the
    /// connection manager strips them from external ones).
    pub fn from(headers: &'a HeaderMap) -> RetryHeaders<'a> {
        let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        RetryHeaders {
            retry_on: get("x-envoy-retry-on"),
            max_retries: get("x-envoy-max-retries"),
            retry_grpc_on: get("x-envoy-retry-grpc-on"),
        }
    }
}

impl<'a> RetryState<'a> {
    /// The request's retry state, or `None` when nothing can be retried (Envoy makes
    /// no retry state then either). The headers add conditions to the route's and
    /// `x-envoy-max-retries` replaces `num_retries`, as in Envoy.
    pub fn new(policy: Option<&'a RetryPolicy>, headers: RetryHeaders<'_>) -> Option<Self> {
        let mut retry_on = policy.map_or(RetryOn::default(), |p| p.retry_on);
        if let Some(list) = headers.retry_on {
            retry_on.0 |= RetryOn::parse_http(list).0;
        }
        if let Some(list) = headers.retry_grpc_on {
            retry_on.0 |= RetryOn::parse_grpc(list).0;
        }
        if retry_on.is_empty() {
            return None;
        }
        let mut remaining = policy.map_or(1, |p| p.num_retries);
        if let Some(n) = headers.max_retries.and_then(|v| v.trim().parse().ok()) {
            remaining = n;
        }
        let (base, max) = policy.map_or(
            (Duration::from_millis(25), Duration::from_millis(250)),
            |p| (p.base_interval, p.max_interval),
        );
        Some(RetryState {
            retry_on,
            policy,
            remaining,
            retries: 0,
            base_ms: (base.as_millis() as u64).max(1),
            max_ms: (max.as_millis() as u64).max(1),
        })
    }

    pub fn policy(&self) -> Option<&'a RetryPolicy> {
        self.policy
    }

    /// Whether the outcome is one the conditions retry (Envoy's `wouldRetryFromHeaders`
    /// and `wouldRetryFromReset`).
    pub fn is_retriable(&self, outcome: Outcome<'_>) -> bool {
        let on = self.retry_on;
        let any_failure = RetryOn(RetryOn::FIVE_XX.0 | RetryOn::GATEWAY_ERROR.0 | RetryOn::RESET.0);
        match outcome {
            Outcome::ConnectFailure => {
                on.contains(any_failure) || on.contains(RetryOn::CONNECT_FAILURE)
            }
            Outcome::Reset { refused } => {
                on.contains(any_failure) || (refused && on.contains(RetryOn::REFUSED_STREAM))
            }
            Outcome::PerTryTimeout => on.contains(any_failure),
            Outcome::Response { status, headers } => {
                (on.contains(RetryOn::FIVE_XX) && (500..600).contains(&status))
                    || (on.contains(RetryOn::GATEWAY_ERROR) && matches!(status, 502..=504))
                    || (on.contains(RetryOn::RETRIABLE_4XX) && status == 409)
                    || (on.contains(RetryOn::RETRIABLE_STATUS_CODES)
                        && self
                            .policy
                            .is_some_and(|p| p.retriable_status_codes.contains(&status)))
                    || (on.contains(RetryOn::RETRIABLE_HEADERS)
                        && self.policy.is_some_and(|p| {
                            p.retriable_headers.iter().any(|m| m.matches(headers))
                        }))
                    || (on.0 >= RetryOn::GRPC_CANCELLED.0 && grpc_retriable(on, headers))
            }
        }
    }

    /// Decides after an attempt; `random` feeds the backoff jitter.
    pub fn decide(&mut self, outcome: Outcome<'_>, random: u64) -> Decision {
        if !self.is_retriable(outcome) {
            return Decision::Done {
                after_retry: self.retries > 0,
            };
        }
        if self.remaining == 0 {
            return Decision::LimitExceeded;
        }
        self.remaining -= 1;
        let backoff = self.backoff(random);
        self.retries += 1;
        Decision::Retry { backoff }
    }

    /// Decides after a hedged attempt's per-try timeout: Envoy hedges whenever retries
    /// are left, whatever the conditions (no stream was reset).
    pub fn decide_hedge(&mut self, random: u64) -> Decision {
        if self.remaining == 0 {
            return Decision::LimitExceeded;
        }
        self.remaining -= 1;
        let backoff = self.backoff(random);
        self.retries += 1;
        Decision::Retry { backoff }
    }

    /// Envoy's `JitteredExponentialBackOffStrategy`: the interval starts at the base
    /// and doubles per retry up to the max; the wait is uniform in [0, interval).
    fn backoff(&self, random: u64) -> Duration {
        let mut interval = self.base_ms;
        for _ in 0..self.retries {
            interval = if interval < self.max_ms / 2 {
                interval * 2
            } else {
                self.max_ms
            };
        }
        Duration::from_millis((random % interval).min(self.max_ms))
    }
}

/// Whether the response head's `grpc-status` (a trailers-only gRPC response) is one
/// of the gRPC conditions in `on`.
fn grpc_retriable(on: RetryOn, headers: &HeaderMap) -> bool {
    let Some(status) = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u16>().ok())
    else {
        return false;
    };
    RetryOn::GRPC_NAMES
        .iter()
        .any(|(_, bit, code)| *code == status && on.contains(*bit))
}

/// What Envoy's `RetryStateImpl::create` consumes from the request.
const RETRY_HEADERS: [&str; 7] = [
    "x-envoy-retry-on",
    "x-envoy-retry-grpc-on",
    "x-envoy-max-retries",
    "x-envoy-hedge-on-per-try-timeout",
    "x-envoy-retriable-header-names",
    "x-envoy-retriable-status-codes",
    "x-envoy-upstream-rq-per-try-timeout-ms",
];

/// The request headers Envoy's router consumes for retries; never sent upstream.
pub fn strip_headers(headers: &mut http::HeaderMap) {
    for name in RETRY_HEADERS {
        headers.remove(name);
    }
}

/// The retry policy's `per_try_timeout`, which bounds each attempt whether or not
/// anything is retried; Envoy ignores one not shorter than the route `timeout`.
pub fn per_try_timeout(target: &RouteTarget) -> Option<Duration> {
    let per_try = target.retry_policy.as_ref()?.per_try_timeout?;
    effective_per_try(Some(per_try), target.timeout)
}

/// A per-try timeout not shorter than the global one is ignored, as in Envoy.
pub fn effective_per_try(per_try: Option<Duration>, global: Option<Duration>) -> Option<Duration> {
    match (per_try, global) {
        (Some(p), Some(g)) if p >= g => None,
        (Some(p), _) if p.is_zero() => None,
        (p, _) => p,
    }
}

/// How an attempt ended, for the retry decision; `None` for errors no policy retries.
pub fn outcome(sent: &crate::pool::Sent) -> Option<Outcome<'_>> {
    Some(match sent {
        Ok((resp, _)) => Outcome::Response {
            status: resp.status().as_u16(),
            headers: resp.headers(),
        },
        Err(ProxyError::ConnectFailure { .. }) => Outcome::ConnectFailure,
        Err(ProxyError::UpstreamReset { reason }) => Outcome::Reset {
            refused: *reason == ResetReason::RefusedStream,
        },
        Err(ProxyError::PerTryTimeout | ProxyError::PerTryIdleTimeout) => Outcome::PerTryTimeout,
        Err(_) => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use http::HeaderValue;
    use strait_xds::model::{HeaderMatchKind, HeaderMatcher, StringMatchKind, StringMatcher};

    fn policy(retry_on: &str, num_retries: u32) -> RetryPolicy {
        RetryPolicy {
            retry_on: RetryOn::parse(retry_on).0,
            num_retries,
            per_try_timeout: None,
            per_try_timeout_header: None,
            per_try_idle_timeout: None,
            retriable_status_codes: vec![418],
            retriable_headers: vec![HeaderMatcher {
                name: http::HeaderName::from_static("x-retry-me"),
                kind: HeaderMatchKind::String(StringMatcher {
                    kind: StringMatchKind::Exact("yes".into()),
                    ignore_case: false,
                }),
                invert: false,
            }],
            base_interval: Duration::from_millis(25),
            max_interval: Duration::from_millis(250),
            previous_hosts: false,
            host_selection_retry_max_attempts: 1,
        }
    }

    #[test]
    fn conditions() {
        let empty = HeaderMap::new();
        let mut retry_me = HeaderMap::new();
        retry_me.insert("x-retry-me", HeaderValue::from_static("yes"));
        let status = |status| Outcome::Response {
            status,
            headers: &empty,
        };
        let cases: Vec<(&str, Outcome<'_>, bool)> = vec![
            ("5xx", status(500), true),
            ("5xx", status(503), true),
            ("5xx", status(404), false),
            ("5xx", Outcome::ConnectFailure, true),
            ("5xx", Outcome::Reset { refused: false }, true),
            ("5xx", Outcome::PerTryTimeout, true),
            ("gateway-error", status(500), false),
            ("gateway-error", status(502), true),
            ("gateway-error", status(503), true),
            ("gateway-error", status(504), true),
            ("gateway-error", Outcome::PerTryTimeout, true),
            ("gateway-error", Outcome::ConnectFailure, true),
            ("reset", status(503), false),
            ("reset", Outcome::Reset { refused: false }, true),
            ("reset", Outcome::PerTryTimeout, true),
            ("connect-failure", Outcome::ConnectFailure, true),
            ("connect-failure", Outcome::Reset { refused: false }, false),
            ("connect-failure", Outcome::PerTryTimeout, false),
            ("connect-failure", status(503), false),
            ("retriable-4xx", status(409), true),
            ("retriable-4xx", status(429), false),
            ("refused-stream", Outcome::Reset { refused: true }, true),
            ("refused-stream", Outcome::Reset { refused: false }, false),
            ("refused-stream", Outcome::PerTryTimeout, false),
            ("retriable-status-codes", status(418), true),
            ("retriable-status-codes", status(503), false),
            ("5xx", status(418), false),
            ("retriable-headers", status(200), false),
            (
                "retriable-headers",
                Outcome::Response {
                    status: 200,
                    headers: &retry_me,
                },
                true,
            ),
            ("connect-failure,retriable-4xx", status(409), true),
        ];
        for (retry_on, outcome, want) in cases {
            let p = policy(retry_on, 1);
            let state = RetryState::new(Some(&p), RetryHeaders::default()).expect("state");
            assert_eq!(state.is_retriable(outcome), want, "{retry_on} {outcome:?}");
        }
    }

    #[test]
    fn retries_run_out() {
        let empty = HeaderMap::new();
        let failed = Outcome::Response {
            status: 503,
            headers: &empty,
        };
        let ok = Outcome::Response {
            status: 200,
            headers: &empty,
        };
        let p = policy("5xx", 2);
        let mut state = RetryState::new(Some(&p), RetryHeaders::default()).expect("state");
        assert!(matches!(state.decide(failed, 7), Decision::Retry { .. }));
        assert!(matches!(state.decide(failed, 7), Decision::Retry { .. }));
        assert_eq!(state.decide(failed, 7), Decision::LimitExceeded);
        assert_eq!(state.decide(ok, 7), Decision::Done { after_retry: true });
        let mut fresh = RetryState::new(Some(&p), RetryHeaders::default()).expect("state");
        assert_eq!(fresh.decide(ok, 7), Decision::Done { after_retry: false });
    }

    #[test]
    fn headers() {
        let p = policy("connect-failure", 1);
        let none = RetryHeaders::default();
        assert!(RetryState::new(None, none).is_none());
        let header_only = RetryHeaders {
            retry_on: Some("5xx, bogus"),
            max_retries: None,
            retry_grpc_on: None,
        };
        let state = RetryState::new(None, header_only).expect("header asks for retries");
        assert_eq!(state.remaining, 1, "one retry unless told");
        assert!(state.is_retriable(Outcome::PerTryTimeout));
        let merged = RetryHeaders {
            retry_on: Some("retriable-4xx"),
            max_retries: Some("4"),
            retry_grpc_on: None,
        };
        let state = RetryState::new(Some(&p), merged).expect("state");
        assert_eq!(state.remaining, 4, "x-envoy-max-retries wins");
        assert!(state.is_retriable(Outcome::ConnectFailure));
        let empty = HeaderMap::new();
        assert!(state.is_retriable(Outcome::Response {
            status: 409,
            headers: &empty
        }));
        let garbage = RetryHeaders {
            retry_on: Some("nothing-known, unavailable"),
            max_retries: Some("x"),
            retry_grpc_on: Some("5xx"),
        };
        assert!(RetryState::new(None, garbage).is_none());
        assert_eq!(
            RetryState::new(Some(&p), garbage).expect("state").remaining,
            1
        );
    }

    #[test]
    fn grpc_conditions_read_grpc_status() {
        let mut unavailable = HeaderMap::new();
        unavailable.insert("grpc-status", HeaderValue::from_static("14"));
        let outcome = Outcome::Response {
            status: 200,
            headers: &unavailable,
        };
        let from_header = RetryHeaders {
            retry_grpc_on: Some("unavailable"),
            ..RetryHeaders::default()
        };
        let state = RetryState::new(None, from_header).expect("grpc header asks");
        assert!(state.is_retriable(outcome));
        let p = policy("cancelled,internal", 1);
        let state = RetryState::new(Some(&p), RetryHeaders::default()).expect("state");
        assert!(
            !state.is_retriable(outcome),
            "14 is not cancelled or internal"
        );
        let p = policy("resource-exhausted, unavailable", 1);
        let state = RetryState::new(Some(&p), RetryHeaders::default()).expect("state");
        assert!(state.is_retriable(outcome));
    }

    /// Full jitter: each wait is below that retry's interval (base doubling up to max).
    #[test]
    fn backoff_bounds() {
        let empty = HeaderMap::new();
        let failed = Outcome::Response {
            status: 503,
            headers: &empty,
        };
        let p = policy("5xx", 10);
        // (random, interval of retry 1..=6 in ms): 25, 50, 100, 200, 250, 250.
        let intervals = [25u64, 50, 100, 200, 250, 250];
        for random in [0u64, 1, 24, 99, 249, u64::MAX, 12345] {
            let mut state = RetryState::new(Some(&p), RetryHeaders::default()).expect("state");
            for interval in intervals {
                let Decision::Retry { backoff } = state.decide(failed, random) else {
                    panic!("retries left");
                };
                assert_eq!(backoff, Duration::from_millis(random % interval));
            }
        }
    }
}
