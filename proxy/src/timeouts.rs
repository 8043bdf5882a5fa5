//! The timeouts a request runs under, as Envoy's router and connection manager work
//! them out: the route's, replaced by internal callers' `x-envoy-upstream-rq-*`
//! headers, and `max_stream_duration` with gRPC's `grpc-timeout`.

use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use strait_xds::model::{MaxStreamDuration, RouteTarget};

static GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

/// One request's router timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// The route `timeout` (or `x-envoy-upstream-rq-timeout-ms`); covers every attempt.
    pub global: Option<Duration>,
    /// Per attempt; `None` when not shorter than `global`.
    pub per_try: Option<Duration>,
    pub per_try_idle: Option<Duration>,
    /// `hedge_on_per_try_timeout` (or `x-envoy-hedge-on-per-try-timeout`).
    pub hedge: bool,
}

impl Timeouts {
    /// The route's timeouts, for a request without steering headers.
    pub fn of(target: &RouteTarget) -> Timeouts {
        let policy = target.retry_policy.as_deref();
        Timeouts {
            global: target.timeout,
            per_try: crate::retry::per_try_timeout(target),
            per_try_idle: policy.and_then(|p| p.per_try_idle_timeout),
            hedge: target.hedge_on_per_try_timeout,
        }
    }

    /// The route's timeouts replaced by the request's `x-envoy-upstream-rq-timeout-ms`,
    /// `x-envoy-upstream-rq-per-try-timeout-ms` and `x-envoy-hedge-on-per-try-timeout`
    /// (Envoy's `finalTimeout` and `finalHedgingParams`), which are consumed. A value
    /// that is not a number is ignored; 0 means no timeout.
    pub fn from_headers(target: &RouteTarget, headers: &mut HeaderMap) -> Timeouts {
        let policy = target.retry_policy.as_deref();
        let millis = |headers: &mut HeaderMap, name: &str| {
            let value = headers.remove(name)?;
            let ms: u64 = value.to_str().ok()?.parse().ok()?;
            Some(Duration::from_millis(ms))
        };
        let global = match millis(headers, "x-envoy-upstream-rq-timeout-ms") {
            Some(t) => Some(t).filter(|t| !t.is_zero()),
            None => target.timeout,
        };
        let per_try = millis(headers, "x-envoy-upstream-rq-per-try-timeout-ms")
            .or_else(|| policy.and_then(|p| p.per_try_timeout));
        let hedge = match headers
            .remove("x-envoy-hedge-on-per-try-timeout")
            .as_ref()
            .map(HeaderValue::as_bytes)
        {
            Some(b"true") => true,
            Some(b"false") => false,
            _ => target.hedge_on_per_try_timeout,
        };
        Timeouts {
            global,
            per_try: crate::retry::effective_per_try(per_try, global),
            per_try_idle: policy.and_then(|p| p.per_try_idle_timeout),
            hedge,
        }
    }

    /// `x-envoy-expected-rq-timeout-ms`: the per-try timeout, or the global one when
    /// there is none or the route hedges.
    pub fn expected(&self) -> Option<Duration> {
        match (self.per_try, self.hedge) {
            (Some(t), false) => Some(t),
            _ => self.global,
        }
    }
}

/// The stream's `max_stream_duration`, as Envoy's connection manager refreshes it once
/// the route is known: with the route's `grpc_timeout_header_max` and a `grpc-timeout`
/// header, that header (capped, minus `grpc_timeout_header_offset`); else the route's
/// `max_stream_duration` (0 disables); else the connection manager's. With a route
/// `max_stream_duration`, a gRPC request's `grpc-timeout` is rewritten to the limit.
pub fn stream_duration(
    hcm: Option<Duration>,
    route: Option<&MaxStreamDuration>,
    headers: &mut HeaderMap,
) -> Option<Duration> {
    let Some(route) = route else {
        return hcm;
    };
    let header = match route.grpc_timeout_header_max {
        Some(_) => headers.get(&GRPC_TIMEOUT).and_then(parse_grpc_timeout),
        None => None,
    };
    let limit = match (header, route.grpc_timeout_header_max) {
        (Some(mut t), Some(max)) => {
            if !max.is_zero() && t > max {
                t = max;
            }
            if let Some(offset) = route.grpc_timeout_header_offset {
                t = t.saturating_sub(offset);
            }
            Some(t)
        }
        _ => match route.max_stream_duration {
            Some(d) if d.is_zero() => None,
            Some(d) => Some(d),
            None => hcm,
        },
    };
    let grpc = headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        match limit {
            Some(t) => {
                headers.insert(&GRPC_TIMEOUT, format_grpc_timeout(t));
            }
            None if hcm.is_some() => {
                headers.remove(&GRPC_TIMEOUT);
            }
            None => {}
        }
    }
    limit
}

/// gRPC's `grpc-timeout`: up to 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`);
/// sub-millisecond units round up, as Envoy reads them.
pub fn parse_grpc_timeout(value: &HeaderValue) -> Option<Duration> {
    let text = value.to_str().ok()?;
    if text.len() < 2 || text.len() > 9 {
        return None;
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_millis(n.div_ceil(1000)),
        "n" => Duration::from_millis(n.div_ceil(1_000_000)),
        _ => return None,
    })
}

/// Envoy's `toGrpcTimeout`: milliseconds while they fit in 8 digits, then seconds,
/// minutes, hours.
pub fn format_grpc_timeout(t: Duration) -> HeaderValue {
    const MAX: u64 = 99_999_999;
    let mut value = t.as_millis() as u64;
    let units = [b'm', b'S', b'M', b'H'];
    let mut unit = 0;
    if value > MAX {
        value /= 1000;
        unit = 1;
    }
    while value > MAX {
        if unit == 3 {
            value = MAX;
            break;
        }
        value /= 60;
        unit += 1;
    }
    let text = format!("{value}{}", units[unit] as char);
    HeaderValue::from_str(&text).expect("digits and a unit letter")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_and_format_as_envoy() {
        let parse = |s: &'static str| parse_grpc_timeout(&HeaderValue::from_static(s));
        assert_eq!(parse("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse("1500u"), Some(Duration::from_millis(2)), "rounded up");
        assert_eq!(parse("1n"), Some(Duration::from_millis(1)));
        assert_eq!(parse("123456789m"), None, "more than 8 digits");
        assert_eq!(parse("10x"), None);
        assert_eq!(parse("m"), None);
        assert_eq!(format_grpc_timeout(Duration::from_millis(50)), "50m");
        assert_eq!(format_grpc_timeout(Duration::from_secs(200_000)), "200000S");
    }

    #[test]
    fn stream_duration_prefers_grpc_header_then_route_then_hcm() {
        let hcm = Some(Duration::from_secs(10));
        let mut headers = HeaderMap::new();
        assert_eq!(stream_duration(hcm, None, &mut headers), hcm);
        let route = MaxStreamDuration {
            max_stream_duration: Some(Duration::ZERO),
            ..MaxStreamDuration::default()
        };
        assert_eq!(
            stream_duration(hcm, Some(&route), &mut headers),
            None,
            "0s disables"
        );
        let grpc = MaxStreamDuration {
            max_stream_duration: None,
            grpc_timeout_header_max: Some(Duration::from_millis(500)),
            grpc_timeout_header_offset: Some(Duration::from_millis(50)),
        };
        assert_eq!(
            stream_duration(hcm, Some(&grpc), &mut headers),
            hcm,
            "no header"
        );
        headers.insert("content-type", HeaderValue::from_static("application/grpc"));
        headers.insert("grpc-timeout", HeaderValue::from_static("100m"));
        assert_eq!(
            stream_duration(hcm, Some(&grpc), &mut headers),
            Some(Duration::from_millis(50))
        );
        assert_eq!(headers["grpc-timeout"], "50m", "rewritten as Envoy does");
        headers.insert("grpc-timeout", HeaderValue::from_static("9S"));
        assert_eq!(
            stream_duration(hcm, Some(&grpc), &mut headers),
            Some(Duration::from_millis(450)),
            "capped at 500ms, minus the offset"
        );
    }
}
