//! `envoy.filters.http.fault`: delays and aborts injected before the router, with
//! Envoy's semantics (`source/extensions/filters/http/fault/fault_filter.cc`).
//!
//! A request is eligible when it matches `upstream_cluster` (decided from the route
//! its headers select at this point of the chain) and every `headers` matcher. Then,
//! each with its own random draw, as Envoy's `featureEnabled` does:
//! - the delay applies with `delay.percentage`; a `header_delay` takes its duration
//!   (ms) from `x-envoy-fault-delay-request` and may lower the percentage with
//!   `x-envoy-fault-delay-request-percentage` (capped at the configured numerator);
//!   a zero duration is no delay;
//! - the abort applies with `abort.percentage`; a `header_abort` takes its status from
//!   `x-envoy-fault-abort-request` ([200, 600)) or, failing that, a gRPC status from
//!   `x-envoy-fault-abort-grpc-request`, and its percentage as for the delay.
//!
//! A delay is a sleep in the request-headers phase; the abort, if any, follows it.
//! Each injected fault holds one place in `fault.active_faults` (one per stream,
//! whatever it injects) while it is under way; with `max_active_faults` reached the
//! fault is skipped and `fault.faults_overflow` counted, as Envoy does. The decision
//! (`plan`) is a pure function of config, headers and random draws, tested below.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};
use strait_filters::LocalReply;
use strait_xds::model::{
    ClusterSpecifier, FaultAbortKind, FaultFilterConfig, HttpConnectionManager, RouteAction,
};

use crate::stats::{Counter, Gauge, Scope, Store};
use crate::stream::StreamGuard;

static ABORT_REQUEST: HeaderName = HeaderName::from_static("x-envoy-fault-abort-request");
static ABORT_GRPC_REQUEST: HeaderName = HeaderName::from_static("x-envoy-fault-abort-grpc-request");
static ABORT_REQUEST_PERCENTAGE: HeaderName =
    HeaderName::from_static("x-envoy-fault-abort-request-percentage");
static DELAY_REQUEST: HeaderName = HeaderName::from_static("x-envoy-fault-delay-request");
static DELAY_REQUEST_PERCENTAGE: HeaderName =
    HeaderName::from_static("x-envoy-fault-delay-request-percentage");
static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// Envoy's local-reply body and `response_code_details` for an abort.
const ABORT_BODY: &str = "fault filter abort";
pub const ABORT_DETAILS: &str = "fault_filter_abort";

/// Envoy's `http.<stat_prefix>.fault.*` stats; fault filters of one connection
/// manager share them, as in Envoy.
struct FaultStats {
    delays_injected: Counter,
    aborts_injected: Counter,
    active_faults: Gauge,
    faults_overflow: Counter,
}

/// One configured fault filter with its stat handles, shared by all workers.
pub struct FaultFilterRuntime {
    pub config: Arc<FaultFilterConfig>,
    stats: FaultStats,
}

/// What a request gets, before the `max_active_faults` limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Plan {
    pub delay: Option<Duration>,
    pub abort: Option<Abort>,
}

/// An abort's HTTP status and, for a gRPC abort, its gRPC status (the HTTP status is
/// then 200, as in Envoy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Abort {
    pub http: u16,
    pub grpc: Option<u32>,
}

impl FaultFilterRuntime {
    pub fn new(config: Arc<FaultFilterConfig>, store: &Store, stat_prefix: &str) -> Arc<Self> {
        let scope = Scope::http(stat_prefix);
        Arc::new(FaultFilterRuntime {
            config,
            stats: FaultStats {
                delays_injected: store.counter(&scope, "fault.delays_injected"),
                aborts_injected: store.counter(&scope, "fault.aborts_injected"),
                active_faults: store.gauge(&scope, "fault.active_faults"),
                faults_overflow: store.counter(&scope, "fault.faults_overflow"),
            },
        })
    }

    /// The filter's request-headers phase: sleeps for an injected delay, then returns
    /// the local reply of an injected abort. Sets the `DI` / `FI` response flags.
    pub async fn request_headers(
        &self,
        hcm: &HttpConnectionManager,
        head: &http::request::Parts,
        guard: &mut StreamGuard,
    ) -> Option<LocalReply> {
        let config = &*self.config;
        let cluster = match config.upstream_cluster {
            Some(_) => route_cluster(hcm, head),
            None => None,
        };
        let plan = plan(
            config,
            &head.headers,
            cluster,
            rand::random(),
            rand::random(),
        );
        if let Some(delay) = plan.delay {
            if let Some(active) = self.try_activate() {
                self.stats.delays_injected.inc();
                guard.set_flag("DI");
                tracing::debug!(
                    delay_ms = delay.as_millis() as u64,
                    "fault: delaying request"
                );
                tokio::time::sleep(delay).await;
                let reply = plan
                    .abort
                    .map(|abort| self.abort(abort, &head.headers, guard));
                // Without an abort the fault is over once the delay has elapsed.
                drop(active);
                return reply;
            }
        }
        let abort = plan.abort?;
        // The place is held until the reply is built; the stream ends right after.
        let _active = self.try_activate()?;
        Some(self.abort(abort, &head.headers, guard))
    }

    /// One place in `active_faults`, or `None` (counted as overflow) at the limit.
    /// Like Envoy's, the limit is fuzzy: the check and the increment are not one step.
    fn try_activate(&self) -> Option<ActiveFault<'_>> {
        let stats = &self.stats;
        if let Some(max) = self.config.max_active_faults {
            if stats.active_faults.value() >= i64::from(max) {
                stats.faults_overflow.inc();
                return None;
            }
        }
        stats.active_faults.inc();
        Some(ActiveFault(&stats.active_faults))
    }

    fn abort(&self, abort: Abort, headers: &HeaderMap, guard: &mut StreamGuard) -> LocalReply {
        self.stats.aborts_injected.inc();
        guard.set_flag("FI");
        abort_reply(abort, is_grpc(headers))
    }
}

/// A place in `fault.active_faults`, given back on drop (also when the client goes
/// away during a delay and the request future is dropped).
struct ActiveFault<'a>(&'a Gauge);

impl Drop for ActiveFault<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The faults for a request whose route goes to `cluster` (`None`: no route, or not
/// looked up because `upstream_cluster` is unset), with one random draw for the delay
/// and one for the abort.
pub fn plan(
    config: &FaultFilterConfig,
    headers: &HeaderMap,
    cluster: Option<&str>,
    delay_random: u64,
    abort_random: u64,
) -> Plan {
    if config
        .upstream_cluster
        .as_deref()
        .is_some_and(|wanted| cluster != Some(wanted))
    {
        return Plan::default();
    }
    if !config
        .headers
        .iter()
        .all(|matcher| matcher.matches(headers))
    {
        return Plan::default();
    }
    let delay = config.delay.and_then(|delay| {
        let percentage = match delay.fixed {
            Some(_) => delay.percentage,
            None => delay
                .percentage
                .capped_by_header(first(headers, &DELAY_REQUEST_PERCENTAGE)),
        };
        if !percentage.enabled(delay_random) {
            return None;
        }
        let duration = match delay.fixed {
            Some(fixed) => fixed,
            None => Duration::from_millis(number(first(headers, &DELAY_REQUEST)?)?),
        };
        // Envoy delays only by more than 0 ms.
        Some(duration).filter(|d| d.as_millis() > 0)
    });
    let abort = config.abort.and_then(|abort| {
        let percentage = match abort.kind {
            FaultAbortKind::Header => abort
                .percentage
                .capped_by_header(first(headers, &ABORT_REQUEST_PERCENTAGE)),
            _ => abort.percentage,
        };
        if !percentage.enabled(abort_random) {
            return None;
        }
        match abort.kind {
            FaultAbortKind::Http(http) => Some(Abort { http, grpc: None }),
            FaultAbortKind::Grpc(grpc) => Some(Abort {
                http: 200,
                grpc: Some(grpc),
            }),
            FaultAbortKind::Header => {
                let http = first(headers, &ABORT_REQUEST)
                    .and_then(number)
                    .filter(|code| (200..600).contains(code));
                match http {
                    Some(http) => Some(Abort {
                        http: http as u16,
                        grpc: None,
                    }),
                    None => {
                        let grpc = number(first(headers, &ABORT_GRPC_REQUEST)?)?;
                        Some(Abort {
                            http: 200,
                            grpc: Some(u32::try_from(grpc).ok()?),
                        })
                    }
                }
            }
        }
    });
    Plan { delay, abort }
}

/// The first value only: these headers come from clients, and Envoy reads no more.
fn first<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a [u8]> {
    headers.get(name).map(HeaderValue::as_bytes)
}

/// An unsigned decimal, surrounding whitespace allowed (as `absl::SimpleAtoi`).
fn number(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

/// The cluster the route for `head` names, as the fault filter sees it: the router
/// has not run yet, so this repeats its lookup. Weighted routes are refused at
/// translation for filters with `upstream_cluster`.
fn route_cluster<'a>(
    hcm: &'a HttpConnectionManager,
    head: &'a http::request::Parts,
) -> Option<&'a str> {
    let view = crate::router::route_view(&head.uri, &head.method, &head.headers)?;
    let host = view.host;
    let route_config = &hcm.route_config;
    let route = route_config.find_virtual_host(host)?.find_route(&view)?;
    let RouteAction::Route(target) = &route.action else {
        return None;
    };
    match &target.cluster {
        ClusterSpecifier::Cluster(name) => Some(name),
        ClusterSpecifier::Header(name) => head.headers.get(name)?.to_str().ok(),
        ClusterSpecifier::Weighted { .. } => None,
    }
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Envoy's `sendLocalReply` for an abort: a gRPC request gets a trailers-only response
/// (the given gRPC status, else the HTTP status mapped), anything else the status
/// with the body "fault filter abort".
pub fn abort_reply(abort: Abort, grpc_request: bool) -> LocalReply {
    if grpc_request {
        let mut reply = LocalReply::new(StatusCode::OK, ABORT_DETAILS);
        let grpc = abort
            .grpc
            .unwrap_or_else(|| u32::from(crate::router::grpc_status(abort.http)));
        let headers = &mut reply.headers;
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert(&GRPC_STATUS, HeaderValue::from(grpc));
        headers.insert(&GRPC_MESSAGE, HeaderValue::from_static(ABORT_BODY));
        return reply;
    }
    // `abort.http` is in [200, 600) (translation and `plan` check), a valid status.
    let status = StatusCode::from_u16(abort.http).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut reply = LocalReply::new(status, ABORT_DETAILS);
    reply.body = Bytes::from_static(ABORT_BODY.as_bytes());
    reply
}

#[cfg(test)]
mod tests {
    use strait_xds::model::{
        FaultAbort, FaultDelay, FractionalPercent, HeaderMatchKind, HeaderMatcher,
    };

    use super::*;

    fn percent(numerator: u32, denominator: u32) -> FractionalPercent {
        FractionalPercent {
            numerator,
            denominator,
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v)))
            .collect()
    }

    fn config(delay: Option<FaultDelay>, abort: Option<FaultAbort>) -> FaultFilterConfig {
        FaultFilterConfig {
            path: String::new(),
            delay,
            abort,
            upstream_cluster: None,
            headers: Vec::new(),
            max_active_faults: None,
        }
    }

    #[test]
    fn percentage_math() {
        // (percentage, random, enabled)
        let cases = [
            (percent(0, 100), 0, false),
            (percent(1, 100), 0, true),
            (percent(1, 100), 1, false),
            (percent(1, 100), 100, true),
            (percent(50, 100), 49, true),
            (percent(50, 100), 50, false),
            (percent(50, 100), 149, true),
            (percent(100, 100), 99, true),
            (percent(100, 100), u64::MAX, true),
            (percent(250, 100), 99, true),
            (percent(1, 10_000), 0, true),
            (percent(1, 10_000), 1, false),
            (percent(999_999, 1_000_000), 999_999, false),
            (percent(999_999, 1_000_000), 999_998, true),
        ];
        for (percentage, random, want) in cases {
            assert_eq!(percentage.enabled(random), want, "{percentage:?} {random}");
        }
        // Over many draws the share is the percentage.
        let hits = (0..10_000u64)
            .filter(|r| percent(25, 100).enabled(*r))
            .count();
        assert_eq!(hits, 2_500);
    }

    #[test]
    fn header_percentage_is_capped_by_config() {
        let configured = percent(50, 10_000);
        let cases: [(Option<&[u8]>, FractionalPercent); 5] = [
            (None, configured),
            (Some(b"20"), percent(20, 10_000)),
            (Some(b"80"), percent(50, 10_000)),
            (Some(b" 7 "), percent(7, 10_000)),
            (Some(b"lots"), configured),
        ];
        for (header, want) in cases {
            assert_eq!(configured.capped_by_header(header), want, "{header:?}");
        }
    }

    #[test]
    fn plans() {
        let fixed = |ms, n| FaultDelay {
            fixed: Some(Duration::from_millis(ms)),
            percentage: percent(n, 100),
        };
        let header_delay = |n| FaultDelay {
            fixed: None,
            percentage: percent(n, 100),
        };
        let abort = |kind, n| FaultAbort {
            kind,
            percentage: percent(n, 100),
        };
        let ms = |ms| Some(Duration::from_millis(ms));
        let http = |http| Some(Abort { http, grpc: None });
        let grpc = |grpc| {
            Some(Abort {
                http: 200,
                grpc: Some(grpc),
            })
        };
        // (delay, abort, request headers, delay random, abort random, want delay, want abort)
        let cases = [
            (Some(fixed(300, 100)), None, vec![], 0, 0, ms(300), None),
            (Some(fixed(300, 0)), None, vec![], 0, 0, None, None),
            (Some(fixed(300, 10)), None, vec![], 10, 0, None, None),
            (
                None,
                Some(abort(FaultAbortKind::Http(503), 100)),
                vec![],
                0,
                0,
                None,
                http(503),
            ),
            (
                Some(fixed(5, 100)),
                Some(abort(FaultAbortKind::Grpc(14), 100)),
                vec![],
                0,
                0,
                ms(5),
                grpc(14),
            ),
            // Header-controlled: nothing without the headers.
            (
                Some(header_delay(100)),
                Some(abort(FaultAbortKind::Header, 100)),
                vec![],
                0,
                0,
                None,
                None,
            ),
            (
                Some(header_delay(100)),
                Some(abort(FaultAbortKind::Header, 100)),
                vec![
                    ("x-envoy-fault-delay-request", "200"),
                    ("x-envoy-fault-abort-request", "429"),
                ],
                0,
                0,
                ms(200),
                http(429),
            ),
            // Out-of-range HTTP status: the gRPC header is next, then nothing.
            (
                None,
                Some(abort(FaultAbortKind::Header, 100)),
                vec![
                    ("x-envoy-fault-abort-request", "600"),
                    ("x-envoy-fault-abort-grpc-request", "4"),
                ],
                0,
                0,
                None,
                grpc(4),
            ),
            (
                None,
                Some(abort(FaultAbortKind::Header, 100)),
                vec![("x-envoy-fault-abort-request", "99")],
                0,
                0,
                None,
                None,
            ),
            // The percentage headers lower, never raise, the configured percentage.
            (
                Some(header_delay(100)),
                Some(abort(FaultAbortKind::Header, 100)),
                vec![
                    ("x-envoy-fault-delay-request", "200"),
                    ("x-envoy-fault-delay-request-percentage", "0"),
                    ("x-envoy-fault-abort-request", "503"),
                    ("x-envoy-fault-abort-request-percentage", "30"),
                ],
                0,
                29,
                None,
                http(503),
            ),
            (
                None,
                Some(abort(FaultAbortKind::Header, 10)),
                vec![
                    ("x-envoy-fault-abort-request", "503"),
                    ("x-envoy-fault-abort-request-percentage", "100"),
                ],
                0,
                10,
                None,
                None,
            ),
            // Fixed faults ignore the headers entirely.
            (
                Some(fixed(10, 0)),
                Some(abort(FaultAbortKind::Http(500), 0)),
                vec![
                    ("x-envoy-fault-delay-request", "200"),
                    ("x-envoy-fault-abort-request", "503"),
                ],
                0,
                0,
                None,
                None,
            ),
            // A zero header delay is no delay.
            (
                Some(header_delay(100)),
                None,
                vec![("x-envoy-fault-delay-request", "0")],
                0,
                0,
                None,
                None,
            ),
        ];
        for (i, (delay, abort, request, delay_random, abort_random, want_delay, want_abort)) in
            cases.into_iter().enumerate()
        {
            let got = plan(
                &config(delay, abort),
                &headers(&request),
                None,
                delay_random,
                abort_random,
            );
            let want = Plan {
                delay: want_delay,
                abort: want_abort,
            };
            assert_eq!(got, want, "case {i}");
        }
    }

    #[test]
    fn scoping_by_headers_and_cluster() {
        let abort = FaultAbort {
            kind: FaultAbortKind::Http(503),
            percentage: percent(100, 100),
        };
        let mut scoped = config(None, Some(abort));
        scoped.headers.push(HeaderMatcher {
            name: HeaderName::from_static("x-fault"),
            kind: HeaderMatchKind::Present(true),
            invert: false,
        });
        let yes = headers(&[("x-fault", "1")]);
        assert!(plan(&scoped, &yes, None, 0, 0).abort.is_some());
        assert!(plan(&scoped, &HeaderMap::new(), None, 0, 0).abort.is_none());
        scoped.upstream_cluster = Some("a".to_owned());
        assert!(plan(&scoped, &yes, Some("a"), 0, 0).abort.is_some());
        assert!(plan(&scoped, &yes, Some("b"), 0, 0).abort.is_none());
        assert!(plan(&scoped, &yes, None, 0, 0).abort.is_none());
    }

    #[test]
    fn abort_replies() {
        let plain = abort_reply(
            Abort {
                http: 503,
                grpc: None,
            },
            false,
        );
        assert_eq!(plain.status, 503);
        assert_eq!(&plain.body[..], b"fault filter abort");
        let mapped = abort_reply(
            Abort {
                http: 503,
                grpc: None,
            },
            true,
        );
        assert_eq!(mapped.status, 200);
        assert_eq!(mapped.headers["grpc-status"], "14");
        assert_eq!(mapped.headers["grpc-message"], "fault filter abort");
        let given = abort_reply(
            Abort {
                http: 200,
                grpc: Some(4),
            },
            true,
        );
        assert_eq!(given.headers["grpc-status"], "4");
        // A gRPC abort on a plain HTTP request: 200 with the body, as Envoy sends.
        let http_only = abort_reply(
            Abort {
                http: 200,
                grpc: Some(4),
            },
            false,
        );
        assert_eq!(http_only.status, 200);
    }
}
