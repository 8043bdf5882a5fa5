//! The one proxy error type, and the one place that maps an error to the status code,
//! the Envoy response flag and the local-reply body.

use std::fmt;

/// Which side of the proxy an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Downstream,
    Upstream,
    Internal,
}

/// Why a stream ended without an upstream response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyError {
    /// No virtual host or route matched (`NR`).
    NoRoute,
    /// The route names a cluster that does not exist (`NC`).
    NoCluster,
    /// The cluster has no endpoint to send to (`UH`).
    NoHealthyUpstream,
    /// TCP connect failed or timed out (`UF`); `reason` for the log, `cause` for
    /// the answer and its details.
    ConnectFailure { reason: String, cause: ConnectCause },
    /// The upstream closed (`UC`) or reset its HTTP/2 stream (`UR`) before sending
    /// response headers, or answered with something that is not valid HTTP (`UPE`).
    UpstreamReset { reason: ResetReason },
    /// The route timeout elapsed before the response (`UT`).
    UpstreamTimeout,
    /// The retry policy's `per_try_timeout` ended the last attempt (`UT`).
    PerTryTimeout,
    /// The retry policy's `per_try_idle_timeout` ended the last attempt (`UT`).
    PerTryIdleTimeout,
    /// `max_stream_duration` elapsed: 504 once the request was received whole, else
    /// 408; no response flag (Envoy sets none).
    MaxStreamDuration { request_complete: bool },
    /// The stream saw no activity for the idle timeout (`SI`): 504 once the request
    /// was received whole, else 408, as Envoy's `maybeRequestTimeoutCode`.
    StreamIdleTimeout { request_complete: bool },
    /// The connection manager's `request_timeout` elapsed before the request was
    /// received whole (408; no flag, as in Envoy).
    RequestTimeout,
    /// An upgrade (e.g. WebSocket) that the connection manager does not allow.
    UpgradeRejected,
    /// A request the proxy refuses to forward (smuggling shapes and the like).
    BadRequest { reason: &'static str },
    /// Request headers larger than `max_request_headers_kb`.
    HeadersTooLarge,
    /// A cluster circuit breaker refused the request (`UO`); answered with
    /// `x-envoy-overloaded: true`.
    Overflow,
    /// An HTTP filter reset the stream (a plugin's `proxy_close_stream`): no
    /// response at all; HTTP/1.1 closes the connection, HTTP/2 sends RST_STREAM.
    /// Status 0 in the access log, as in Envoy's.
    FilterReset,
    /// The client's connection closed before its request body ended (`DC`): no
    /// response, status 0 in the access log, and no `downstream_rq_5xx`, as in Envoy.
    DownstreamDisconnect,
}

/// Why a TCP connect to an upstream failed, as Envoy's details name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectCause {
    /// `connect_timeout` elapsed.
    Timeout,
    Refused,
    HostUnreachable,
    NetworkUnreachable,
    Other,
}

impl ConnectCause {
    /// The cause a failed connect's error stands for.
    pub fn of(e: &std::io::Error) -> ConnectCause {
        match e.kind() {
            std::io::ErrorKind::ConnectionRefused => ConnectCause::Refused,
            std::io::ErrorKind::HostUnreachable => ConnectCause::HostUnreachable,
            std::io::ErrorKind::NetworkUnreachable => ConnectCause::NetworkUnreachable,
            _ => ConnectCause::Other,
        }
    }
}

/// Why an upstream stream ended before its response head, as Envoy's
/// `StreamResetReason`: it words the local reply, decides the answer (a protocol
/// error is 502 `UPE`, the rest 503 `UR`) and the retry (`refused-stream`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResetReason {
    /// The connection closed or failed.
    ConnectionTermination,
    /// The upstream answered with something that is not valid HTTP (a malformed
    /// head, a framing the codec refuses).
    ProtocolError,
    /// HTTP/2 `REFUSED_STREAM`: the upstream promises it did not process the request.
    RefusedStream,
    /// Another HTTP/2 stream reset, as the h2 crate words it.
    Remote(String),
}

impl fmt::Display for ResetReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResetReason::ConnectionTermination => f.write_str("connection termination"),
            ResetReason::ProtocolError => f.write_str("protocol error"),
            ResetReason::RefusedStream => f.write_str("remote refused stream reset"),
            ResetReason::Remote(h2) => write!(f, "remote reset: {h2}"),
        }
    }
}

impl ProxyError {
    pub fn side(&self) -> Side {
        match self {
            ProxyError::NoRoute
            | ProxyError::NoCluster
            | ProxyError::NoHealthyUpstream
            | ProxyError::Overflow
            | ProxyError::FilterReset => Side::Internal,
            ProxyError::ConnectFailure { .. }
            | ProxyError::UpstreamReset { .. }
            | ProxyError::UpstreamTimeout
            | ProxyError::PerTryTimeout
            | ProxyError::PerTryIdleTimeout => Side::Upstream,
            ProxyError::StreamIdleTimeout { .. }
            | ProxyError::MaxStreamDuration { .. }
            | ProxyError::RequestTimeout
            | ProxyError::UpgradeRejected
            | ProxyError::BadRequest { .. }
            | ProxyError::HeadersTooLarge
            | ProxyError::DownstreamDisconnect => Side::Downstream,
        }
    }

    /// The status code of the local reply, as Envoy answers it.
    pub fn status(&self) -> u16 {
        match self {
            ProxyError::NoRoute => 404,
            ProxyError::NoCluster | ProxyError::NoHealthyUpstream | ProxyError::Overflow => 503,
            ProxyError::UpstreamReset {
                reason: ResetReason::ProtocolError,
            } => 502,
            ProxyError::ConnectFailure { .. } | ProxyError::UpstreamReset { .. } => 503,
            ProxyError::UpstreamTimeout
            | ProxyError::PerTryTimeout
            | ProxyError::PerTryIdleTimeout => 504,
            ProxyError::MaxStreamDuration { request_complete }
            | ProxyError::StreamIdleTimeout { request_complete } => match request_complete {
                true => 504,
                false => 408,
            },
            ProxyError::RequestTimeout => 408,
            ProxyError::UpgradeRejected => 403,
            ProxyError::BadRequest { .. } => 400,
            ProxyError::HeadersTooLarge => 431,
            ProxyError::FilterReset | ProxyError::DownstreamDisconnect => 0,
        }
    }

    /// Envoy's response flag for access logs (`%RESPONSE_FLAGS%`).
    pub fn flag(&self) -> &'static str {
        match self {
            ProxyError::NoRoute => "NR",
            ProxyError::NoCluster => "NC",
            ProxyError::NoHealthyUpstream => "UH",
            ProxyError::Overflow => "UO",
            ProxyError::ConnectFailure { .. } => "UF",
            ProxyError::UpstreamReset {
                reason: ResetReason::ProtocolError,
            } => "UPE",
            // Envoy's `streamResetReasonToResponseFlag`: a connection's end is `UC`,
            // an HTTP/2 stream reset `UR`.
            ProxyError::UpstreamReset {
                reason: ResetReason::ConnectionTermination,
            } => "UC",
            ProxyError::UpstreamReset { .. } => "UR",
            ProxyError::UpstreamTimeout
            | ProxyError::PerTryTimeout
            | ProxyError::PerTryIdleTimeout => "UT",
            ProxyError::MaxStreamDuration { .. } => "",
            ProxyError::StreamIdleTimeout { .. } => "SI",
            // Envoy sets none for request_timeout (its details say it).
            ProxyError::RequestTimeout => "",
            ProxyError::UpgradeRejected => "UPE",
            ProxyError::BadRequest { .. } | ProxyError::HeadersTooLarge => "DPE",
            ProxyError::FilterReset => "",
            ProxyError::DownstreamDisconnect => "DC",
        }
    }

    /// `%RESPONSE_CODE_DETAILS%`, Envoy's names where they exist.
    pub fn details(&self) -> &'static str {
        match self {
            ProxyError::NoRoute => "route_not_found",
            ProxyError::NoCluster => "cluster_not_found",
            ProxyError::NoHealthyUpstream => "no_healthy_upstream",
            ProxyError::Overflow => "upstream_reset_before_response_started{overflow}",
            // With the transport's reason, spaces as `_`, as Envoy 1.40 words them.
            ProxyError::ConnectFailure { cause, .. } => match cause {
                ConnectCause::Timeout => "upstream_reset_before_response_started{connection_timeout}",
                ConnectCause::Refused => "upstream_reset_before_response_started{remote_connection_failure|delayed_connect_error:_Connection_refused}",
                ConnectCause::HostUnreachable => "upstream_reset_before_response_started{remote_connection_failure|delayed_connect_error:_No_route_to_host}",
                ConnectCause::NetworkUnreachable => "upstream_reset_before_response_started{remote_connection_failure|delayed_connect_error:_Network_is_unreachable}",
                ConnectCause::Other => "upstream_reset_before_response_started{remote_connection_failure}",
            },
            ProxyError::UpstreamReset { reason } => match reason {
                ResetReason::ProtocolError => "upstream_reset_before_response_started{protocol_error}",
                ResetReason::ConnectionTermination => {
                    "upstream_reset_before_response_started{connection_termination}"
                }
                ResetReason::RefusedStream => {
                    "upstream_reset_before_response_started{remote_refused_stream_reset}"
                }
                ResetReason::Remote(_) => "upstream_reset_before_response_started{remote_reset}",
            },
            ProxyError::UpstreamTimeout => "response_timeout",
            ProxyError::PerTryTimeout => "upstream_per_try_timeout",
            ProxyError::PerTryIdleTimeout => "upstream_per_try_idle_timeout",
            ProxyError::MaxStreamDuration { .. } => "max_duration_timeout",
            ProxyError::StreamIdleTimeout { .. } => "stream_idle_timeout",
            ProxyError::RequestTimeout => "request_overall_timeout",
            ProxyError::UpgradeRejected => "upgrade_failed",
            ProxyError::BadRequest { .. } => "http1.codec_error",
            ProxyError::HeadersTooLarge => "http1.headers_too_large",
            ProxyError::FilterReset => "wasm_close_stream",
            ProxyError::DownstreamDisconnect => "downstream_remote_disconnect",
        }
    }

    /// The `grpc-status` of a gRPC client's local reply when Envoy picks one itself
    /// rather than mapping the HTTP status (`DEADLINE_EXCEEDED` for a stream that ran
    /// out of time).
    pub fn grpc_status(&self) -> Option<u16> {
        matches!(self, ProxyError::MaxStreamDuration { .. }).then_some(4)
    }

    /// Whether the reply carries `x-envoy-overloaded: true`, as Envoy's does when a
    /// circuit breaker refused the request.
    pub fn overloaded(&self) -> bool {
        matches!(self, ProxyError::Overflow)
    }

    /// The local reply body, worded as Envoy's so clients and people recognise it.
    pub fn body(&self) -> String {
        match self {
            ProxyError::NoRoute
            | ProxyError::UpgradeRejected
            | ProxyError::NoCluster
            | ProxyError::FilterReset
            | ProxyError::DownstreamDisconnect => String::new(),
            ProxyError::NoHealthyUpstream => "no healthy upstream".into(),
            ProxyError::Overflow => {
                "upstream connect error or disconnect/reset before headers. reset reason: overflow".into()
            }
            // Envoy's wording; the transport reason goes to the log and access log.
            ProxyError::ConnectFailure {
                cause: ConnectCause::Timeout,
                ..
            } => "upstream connect error or disconnect/reset before headers. reset reason: connection timeout".into(),
            ProxyError::ConnectFailure { .. } => {
                "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure".into()
            }
            ProxyError::UpstreamReset { reason } => format!(
                "upstream connect error or disconnect/reset before headers. reset reason: {reason}"
            ),
            ProxyError::UpstreamTimeout
            | ProxyError::PerTryTimeout
            | ProxyError::PerTryIdleTimeout => "upstream request timeout".into(),
            ProxyError::MaxStreamDuration { .. } => "downstream duration timeout".into(),
            ProxyError::StreamIdleTimeout { .. } => "stream timeout".into(),
            ProxyError::RequestTimeout => "request timeout".into(),
            ProxyError::BadRequest { reason } => format!("bad request: {reason}"),
            ProxyError::HeadersTooLarge => "request header too large".into(),
        }
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({:?} side): {}",
            self.flag(),
            self.side(),
            self.body()
        )
    }
}

impl std::error::Error for ProxyError {}
