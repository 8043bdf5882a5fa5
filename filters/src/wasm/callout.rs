//! HTTP callouts: `proxy_http_call` and `proxy_on_http_call_response`.
//!
//! The host function checks and records the call; the embedder (the proxy's filter
//! chain) takes the recorded calls after the callback ([`HttpCallRequest`]), sends
//! them through its upstream pools, and hands each answer back to the VM that made
//! it, which calls `proxy_on_http_call_response` on the context that dispatched it.
//! As in Envoy, the callback never runs inside the callback that made the call.
//!
//! Checks, as Envoy's `Context::httpCall`: an unknown cluster (asked of the
//! embedder through [`set_cluster_check`]) and a request without `:method`, `:path`
//! or `:authority` are `BadArgument`. A body sets `content-length`. A zero timeout
//! means none.
use std::cell::RefCell;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, HOST};
use http::{HeaderMap, Method, Uri};

use super::abi::Status;
use super::headers::Pair;
use crate::{RequestHead, ResponseHead};

/// A call a plugin dispatched, for the embedder to send to `cluster`.
#[derive(Debug)]
pub struct HttpCallRequest {
    /// What `proxy_on_http_call_response` will be called with.
    pub token: u32,
    pub cluster: String,
    /// Method, URI (`:scheme`, `:authority`, `:path`) and the other headers.
    pub head: RequestHead,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
    /// `None`: no timeout.
    pub timeout: Option<Duration>,
    pub kind: CallKind,
}

/// What a dispatched call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// `proxy_http_call`; answered with [`CallAnswer::Http`].
    Http,
    /// `proxy_grpc_call`: the head is `POST /<service>/<method>` with gRPC's headers
    /// and the body one length-prefixed message; answered with [`CallAnswer::Grpc`].
    GrpcUnary,
    /// `proxy_grpc_stream`: the same head, an empty body to start with; messages
    /// follow as [`StreamOp`]s, events come back as [`CallAnswer::GrpcStream`].
    GrpcStream,
}

/// What a callback asked of the embedder: a new call, or an operation on an open
/// gRPC stream (by token), in the order the plugin made them.
#[derive(Debug)]
pub enum Dispatch {
    Call(Box<HttpCallRequest>),
    Stream(u32, StreamOp),
}

/// `proxy_grpc_send` / `proxy_grpc_close` / `proxy_grpc_cancel` on a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamOp {
    /// One message (framed by the embedder); `end_stream` half-closes after it.
    Send { message: Bytes, end_stream: bool },
    /// Half-close: no more messages from the plugin.
    Close,
    /// Reset the stream; no more callbacks for it.
    Cancel,
}

/// One event of a gRPC stream, in order: the response headers, each message, the
/// trailers, then the close with the status (also the close of a failed stream).
#[derive(Debug)]
pub enum GrpcStreamEvent {
    InitialMetadata(HeaderMap),
    Message(Bytes),
    TrailingMetadata(HeaderMap),
    Close { status: u32, message: String },
}

/// What a call's answer is, for the VM to hand to the plugin.
#[derive(Debug)]
pub enum CallAnswer {
    /// `proxy_on_http_call_response`; `None`: no response at all.
    Http(Option<HttpCallResponse>),
    /// `proxy_on_grpc_receive` (status 0) or `proxy_on_grpc_close`.
    Grpc(GrpcCallResult),
    /// `proxy_on_grpc_receive_initial_metadata`, `_receive`,
    /// `_receive_trailing_metadata`, `proxy_on_grpc_close`.
    GrpcStream(GrpcStreamEvent),
}

impl CallAnswer {
    /// Whether this answer ends the call (its token is forgotten).
    pub fn is_final(&self) -> bool {
        !matches!(
            self,
            CallAnswer::GrpcStream(
                GrpcStreamEvent::InitialMetadata(_)
                    | GrpcStreamEvent::Message(_)
                    | GrpcStreamEvent::TrailingMetadata(_)
            )
        )
    }
}

/// The end of a gRPC unary call: the status (0 = OK) and message, and on OK the
/// response message (without its length prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcCallResult {
    pub status: u32,
    pub message: String,
    pub response: Bytes,
}

/// The answer to a call: the upstream's response (or the proxy's own, e.g. 503 when
/// the cluster has no host, 504 on timeout, as Envoy's async client answers), or
/// `None` when the exchange broke without one (the plugin sees zero headers).
#[derive(Debug)]
pub struct HttpCallResponse {
    pub head: ResponseHead,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

type ClusterCheck = Box<dyn Fn(&str) -> bool>;

thread_local! {
    static CLUSTER_CHECK: RefCell<Option<ClusterCheck>> = const { RefCell::new(None) };
}

/// Sets how VMs on this thread learn whether a cluster exists. Without one every
/// name is accepted (and the embedder answers calls to unknown ones).
pub fn set_cluster_check(check: impl Fn(&str) -> bool + 'static) {
    CLUSTER_CHECK.with(|c| *c.borrow_mut() = Some(Box::new(check)));
}

fn cluster_exists(name: &str) -> bool {
    CLUSTER_CHECK.with(|c| c.borrow().as_ref().is_none_or(|check| check(name)))
}

/// Builds the request from the plugin's arguments, or the status to return.
pub(crate) fn request(
    cluster: &[u8],
    headers: Vec<Pair>,
    body: Vec<u8>,
    trailers: Vec<Pair>,
    timeout_ms: i32,
) -> Result<HttpCallRequest, Status> {
    if timeout_ms < 0 {
        return Err(Status::BadArgument);
    }
    let cluster = std::str::from_utf8(cluster).map_err(|_| Status::BadArgument)?;
    if !cluster_exists(cluster) {
        return Err(Status::BadArgument);
    }
    let (mut method, mut path, mut authority, mut scheme) = (None, None, None, None);
    let mut map = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        match name.as_slice() {
            b":method" => method = Some(value),
            b":path" => path = Some(value),
            b":authority" | b"host" => authority = Some(value),
            b":scheme" => scheme = Some(value),
            _ if name.first() == Some(&b':') => {}
            _ => {
                let (name, value) = header(&name, &value)?;
                map.append(name, value);
            }
        }
    }
    let (Some(method), Some(path), Some(authority)) = (method, path, authority) else {
        return Err(Status::BadArgument);
    };
    let method = Method::from_bytes(&method).map_err(|_| Status::BadArgument)?;
    let scheme = scheme.unwrap_or_else(|| b"http".to_vec());
    let uri = Uri::builder()
        .scheme(scheme.as_slice())
        .authority(authority.as_slice())
        .path_and_query(path.as_slice())
        .build()
        .map_err(|_| Status::BadArgument)?;
    map.insert(
        HOST,
        HeaderValue::from_bytes(&authority).map_err(|_| Status::BadArgument)?,
    );
    if !body.is_empty() {
        map.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    let trailers = match trailers.is_empty() {
        true => None,
        false => {
            let mut map = HeaderMap::with_capacity(trailers.len());
            for (name, value) in trailers {
                let (name, value) = header(&name, &value)?;
                map.append(name, value);
            }
            Some(map)
        }
    };
    Ok(call(
        cluster,
        method,
        uri,
        map,
        Bytes::from(body),
        trailers,
        timeout_ms as u32,
        CallKind::Http,
    ))
}

/// A call's request; a timeout of 0 is none.
#[allow(clippy::too_many_arguments)]
fn call(
    cluster: &str,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
    trailers: Option<HeaderMap>,
    timeout_ms: u32,
    kind: CallKind,
) -> HttpCallRequest {
    let (mut head, ()) = http::Request::new(()).into_parts();
    head.method = method;
    head.uri = uri;
    head.headers = headers;
    HttpCallRequest {
        token: 0,
        cluster: cluster.to_owned(),
        head,
        body,
        trailers,
        timeout: (timeout_ms > 0).then(|| Duration::from_millis(u64::from(timeout_ms))),
        kind,
    }
}

/// A gRPC unary call as Envoy's `Context::grpcCall` makes it from a cluster name
/// (an unknown one is `ParseFailure`, Envoy's status for a `grpc_service` that is
/// neither a `GrpcService` message nor a cluster): `POST /<service>/<method>` to
/// `:authority` = the cluster name, `content-type: application/grpc`, `te:
/// trailers`, `grpc-timeout` from the timeout, the initial metadata as headers, and
/// the message framed (flag 0, big-endian length).
pub(crate) fn grpc_request(
    cluster: &[u8],
    service: &[u8],
    method: &[u8],
    metadata: Vec<Pair>,
    message: &[u8],
    timeout_ms: u32,
    stream: bool,
) -> Result<HttpCallRequest, Status> {
    let cluster = std::str::from_utf8(cluster).map_err(|_| Status::ParseFailure)?;
    if !cluster_exists(cluster) {
        return Err(Status::ParseFailure);
    }
    let service = std::str::from_utf8(service).map_err(|_| Status::BadArgument)?;
    let method = std::str::from_utf8(method).map_err(|_| Status::BadArgument)?;
    let uri = Uri::builder()
        .scheme("http")
        .authority(cluster)
        .path_and_query(format!("/{service}/{method}"))
        .build()
        .map_err(|_| Status::BadArgument)?;
    let mut map = HeaderMap::with_capacity(metadata.len() + 4);
    for (name, value) in metadata {
        let (name, value) = header(&name, &value)?;
        map.append(name, value);
    }
    map.insert(
        HOST,
        HeaderValue::from_str(cluster).map_err(|_| Status::BadArgument)?,
    );
    map.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    map.insert(http::header::TE, HeaderValue::from_static("trailers"));
    if timeout_ms > 0 {
        let timeout = HeaderValue::try_from(format!("{timeout_ms}m"));
        map.insert("grpc-timeout", timeout.map_err(|_| Status::BadArgument)?);
    }
    let body = match stream {
        true => Bytes::new(),
        false => grpc_frame(message),
    };
    let kind = match stream {
        true => CallKind::GrpcStream,
        false => CallKind::GrpcUnary,
    };
    Ok(call(
        cluster,
        Method::POST,
        uri,
        map,
        body,
        None,
        timeout_ms,
        kind,
    ))
}

/// One gRPC message on the wire: flag 0 (uncompressed), big-endian length, bytes.
pub fn grpc_frame(message: &[u8]) -> Bytes {
    let mut frame = Vec::with_capacity(5 + message.len());
    frame.push(0);
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message);
    Bytes::from(frame)
}

fn header(name: &[u8], value: &[u8]) -> Result<(HeaderName, HeaderValue), Status> {
    Ok((
        HeaderName::from_bytes(name).map_err(|_| Status::BadArgument)?,
        HeaderValue::from_bytes(value).map_err(|_| Status::BadArgument)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<Pair> {
        list.iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn builds_the_request_envoy_would() {
        let call = request(
            b"auth",
            pairs(&[
                (":method", "POST"),
                (":path", "/check?x=1"),
                (":authority", "auth.local"),
                ("x-token", "abc"),
            ]),
            b"hello".to_vec(),
            pairs(&[("x-sum", "1")]),
            250,
        )
        .expect("valid call");
        assert_eq!(call.head.method, Method::POST);
        assert_eq!(call.head.uri.to_string(), "http://auth.local/check?x=1");
        assert_eq!(call.head.headers["host"], "auth.local");
        assert_eq!(call.head.headers["x-token"], "abc");
        assert_eq!(call.head.headers["content-length"], "5");
        assert_eq!(call.trailers.expect("trailers")["x-sum"], "1");
        assert_eq!(call.timeout, Some(Duration::from_millis(250)));
    }

    #[test]
    fn missing_pseudo_headers_and_unknown_clusters_are_bad_arguments() {
        for missing in [":method", ":path", ":authority"] {
            let mut headers = vec![(":method", "GET"), (":path", "/"), (":authority", "a")];
            headers.retain(|(n, _)| *n != missing);
            let result = request(b"c", pairs(&headers), Vec::new(), Vec::new(), 0);
            assert_eq!(result.err(), Some(Status::BadArgument), "without {missing}");
        }
        set_cluster_check(|name| name == "known");
        let headers = pairs(&[(":method", "GET"), (":path", "/"), (":authority", "a")]);
        let unknown = request(b"other", headers.clone(), Vec::new(), Vec::new(), 0);
        assert_eq!(unknown.err(), Some(Status::BadArgument));
        let known = request(b"known", headers, Vec::new(), Vec::new(), 0).expect("known");
        assert_eq!(known.timeout, None);
        let negative = request(b"known", Vec::new(), Vec::new(), Vec::new(), -1);
        assert_eq!(negative.err(), Some(Status::BadArgument));
    }
}
