//! Plugins' HTTP callouts (`proxy_http_call`), sent through the worker's upstream
//! pools to a host of the named cluster.
//!
//! As Envoy's async client, which runs a callout through its router: the cluster's
//! load balancer picks the host, the call's timeout bounds the whole exchange, and
//! whatever goes wrong before a response comes back is answered by the proxy itself
//! with the status and body its router would send a client — 503 `no healthy
//! upstream`, 503 `upstream connect error or disconnect/reset before headers…`, 504
//! `upstream request timeout`. The plugin then sees that response. Only a failure
//! after the response head (the body broke off, or exceeded [`MAX_BODY`]) gives the
//! plugin no response at all (zero headers), as Envoy's `onFailure` does.
//! The callout counts in the cluster's `upstream_rq_<class>xx` stats.
//!
//! A gRPC unary call (`proxy_grpc_call`) is the same exchange with gRPC's framing;
//! its status is the response's `grpc-status`, or, for an HTTP status other than
//! 200 (the proxy's own replies included), Envoy's HTTP-to-gRPC mapping (503 and 504
//! are `UNAVAILABLE`); the message is `grpc-message` followed by the response code
//! details in braces, as Envoy 1.40 reports it (`not allowed{via_upstream}`). It uses
//! the cluster's protocol, so the cluster needs
//! `http2_protocol_options`, as in Envoy.
use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Request, StatusCode, Version};
use http_body_util::{BodyExt, Limited};
use strait_filters::wasm::{
    CallAnswer, CallKind, GrpcCallResult, GrpcStreamEvent, HttpCallRequest, HttpCallResponse,
};
use strait_xds::model::UpstreamProtocol;

use crate::body::RequestBody;
use crate::cluster::ClusterRuntime;
use crate::error::ProxyError;
use crate::pool;
use crate::runtime::{FastMap, Shared};

/// The clusters a callout may name: the running config's.
pub type Clusters = FastMap<String, Arc<ClusterRuntime>>;

/// Callout responses are buffered whole for the plugin; a larger body fails the
/// call rather than growing without bound.
pub const MAX_BODY: usize = 16 << 20;

/// Sends `call` and returns what the plugin sees: for an HTTP call the response
/// (`proxy_on_http_call_response`), for a gRPC call its status and message.
pub async fn send(clusters: &Clusters, call: HttpCallRequest) -> CallAnswer {
    let timeout = call.timeout;
    let grpc = call.kind == CallKind::GrpcUnary;
    let cluster = call.cluster.clone();
    let exchange = exchange(clusters, call);
    let result = match timeout {
        Some(limit) => tokio::time::timeout(limit, exchange)
            .await
            .unwrap_or(Err(Failure::Timeout)),
        None => exchange.await,
    };
    if grpc {
        return CallAnswer::Grpc(grpc_result(result));
    }
    CallAnswer::Http(match result {
        Ok(response) => Some(response),
        Err(Failure::Proxy(error)) => Some(local_response(&error)),
        Err(Failure::Timeout) => Some(local_response(&ProxyError::UpstreamTimeout)),
        Err(Failure::Broken(why)) => {
            tracing::debug!(target: "strait::wasm", %cluster, error = %why, "http callout failed after the response head");
            None
        }
    })
}

/// gRPC's status codes used here.
const GRPC_UNKNOWN: u32 = 2;
const GRPC_INTERNAL: u32 = 13;
const GRPC_UNAVAILABLE: u32 = 14;

/// Envoy's `Grpc::Utility::httpToGrpcStatus`: the status of a call whose HTTP
/// status is not 200 (including the proxy's own replies: 503, 504, …).
fn http_to_grpc(status: u16) -> u32 {
    match status {
        400 => GRPC_INTERNAL,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => GRPC_UNAVAILABLE,
        _ => GRPC_UNKNOWN,
    }
}

/// A unary call's outcome from the HTTP exchange: `grpc-status` (from the
/// trailers, or the headers of a trailers-only answer) and `grpc-message`, and on OK
/// the first message without its 5-byte prefix.
fn grpc_result(result: Result<HttpCallResponse, Failure>) -> GrpcCallResult {
    let fail = |status: u32, message: String| GrpcCallResult {
        status,
        message,
        response: Bytes::new(),
    };
    let response = match result {
        Ok(response) => response,
        // Envoy 1.40 appends the stream's response code details to the message.
        Err(Failure::Proxy(error)) => {
            let message = format!("{}{{{}}}", error.body(), error.details());
            return fail(http_to_grpc(error.status()), message);
        }
        Err(Failure::Timeout) => {
            let message = format!("{}{{response_timeout}}", ProxyError::UpstreamTimeout.body());
            return fail(http_to_grpc(504), message);
        }
        Err(Failure::Broken(why)) => return fail(GRPC_INTERNAL, why),
    };
    if response.head.status != StatusCode::OK {
        let status = http_to_grpc(response.head.status.as_u16());
        return fail(status, "{via_upstream}".into());
    }
    let field = |name: &str| {
        response
            .trailers
            .as_ref()
            .and_then(|t| t.get(name))
            .or_else(|| response.head.headers.get(name))
            .and_then(|v| v.to_str().ok())
    };
    let message = format!(
        "{}{{via_upstream}}",
        field("grpc-message").unwrap_or_default()
    );
    let Some(status) = field("grpc-status").and_then(|s| s.parse::<u32>().ok()) else {
        return fail(GRPC_UNKNOWN, "no grpc-status in the response".into());
    };
    if status != 0 {
        return fail(status, message);
    }
    let body = &response.body;
    match body
        .get(1..5)
        .map(|len| u32::from_be_bytes([len[0], len[1], len[2], len[3]]))
    {
        Some(len) if body[0] == 0 && body.len() >= 5 + len as usize => GrpcCallResult {
            status: 0,
            message,
            response: body.slice(5..5 + len as usize),
        },
        _ => fail(GRPC_INTERNAL, "malformed or compressed gRPC message".into()),
    }
}

enum Failure {
    /// Before the response head: the proxy answers in the upstream's place.
    Proxy(ProxyError),
    /// The call's own timeout: 504 as the router's timeout, but the async client's
    /// details (`response_timeout`).
    Timeout,
    /// After it: the plugin gets no response.
    Broken(String),
}

/// A gRPC stream (`proxy_grpc_stream`): the request body is the framed messages
/// the plugin sends (`messages`; the stream half-closes when that channel closes).
/// Each event is handed to `event` as it happens: the response headers, every
/// message, the trailers, then the close with `grpc-status` (or, when the exchange
/// fails or answers other than HTTP 200, the mapped status), as Envoy's async
/// stream reports them.
pub async fn grpc_stream(
    clusters: &Clusters,
    call: HttpCallRequest,
    messages: tokio::sync::mpsc::UnboundedReceiver<Bytes>,
    mut event: impl FnMut(GrpcStreamEvent),
) {
    let close = |status: u32, message: String| GrpcStreamEvent::Close { status, message };
    let response = match start(clusters, call, RequestBody::Channel(messages)).await {
        Ok(response) => response,
        Err(Failure::Proxy(error)) => {
            // Envoy answers with a trailers-only local reply, which its async
            // stream reports as trailing metadata, then the close.
            let status = http_to_grpc(error.status());
            let mut trailers = http::HeaderMap::new();
            trailers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            trailers.insert("grpc-status", HeaderValue::from(status));
            if let Ok(body) = HeaderValue::try_from(error.body()) {
                trailers.insert("grpc-message", body);
            }
            event(GrpcStreamEvent::TrailingMetadata(trailers));
            let message = format!("{}{{{}}}", error.body(), error.details());
            return event(close(status, message));
        }
        Err(Failure::Timeout | Failure::Broken(_)) => {
            return event(close(GRPC_INTERNAL, String::new()));
        }
    };
    let (response, _lease) = response;
    let (head, mut body) = response.into_parts();
    if head.status != StatusCode::OK {
        let status = http_to_grpc(head.status.as_u16());
        return event(close(status, "{via_upstream}".into()));
    }
    event(GrpcStreamEvent::InitialMetadata(head.headers.clone()));
    let mut pending = bytes::BytesMut::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => return event(close(GRPC_INTERNAL, e.to_string())),
        };
        match frame.into_data() {
            Ok(data) => {
                pending.extend_from_slice(&data);
                while let Some(message) = next_message(&mut pending) {
                    event(GrpcStreamEvent::Message(message));
                }
            }
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    // A trailers-only answer carries the status in its headers.
    let source = trailers.as_ref().unwrap_or(&head.headers);
    let field = |name: &str| source.get(name).and_then(|v| v.to_str().ok());
    let status = field("grpc-status").and_then(|s| s.parse::<u32>().ok());
    let message = format!(
        "{}{{via_upstream}}",
        field("grpc-message").unwrap_or_default()
    );
    if let Some(trailers) = trailers.clone() {
        event(GrpcStreamEvent::TrailingMetadata(trailers));
    }
    event(close(status.unwrap_or(GRPC_UNKNOWN), message));
}

/// Splits the next whole message off `pending` (flag byte, big-endian length).
fn next_message(pending: &mut bytes::BytesMut) -> Option<Bytes> {
    let len = pending.get(1..5)?;
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if pending.len() < 5 + len {
        return None;
    }
    let mut frame = pending.split_to(5 + len);
    Some(frame.split_off(5).freeze())
}

async fn exchange(
    clusters: &Clusters,
    mut call: HttpCallRequest,
) -> Result<HttpCallResponse, Failure> {
    let body = RequestBody::full(std::mem::take(&mut call.body), call.trailers.take());
    let (response, lease) = start(clusters, call, body).await?;
    let (head, body) = response.into_parts();
    let collected = Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| Failure::Broken(e.to_string()))?;
    drop(lease);
    let trailers = collected.trailers().cloned();
    Ok(HttpCallResponse {
        head,
        body: collected.to_bytes(),
        trailers,
    })
}

/// Sends the call's head with `body` to a host of its cluster; the response head.
async fn start(
    clusters: &Clusters,
    call: HttpCallRequest,
    body: RequestBody,
) -> Result<(http::Response<pool::UpstreamBody>, Option<pool::Lease>), Failure> {
    // The VM checked the name when the call was made; a reload may have removed
    // the cluster since.
    let Some(cluster) = clusters.get(&call.cluster) else {
        return Err(Failure::Proxy(ProxyError::NoHealthyUpstream));
    };
    let hosts = cluster.hosts.load_full();
    let Some(host) = crate::router::pick_host(cluster, &hosts, rand::random()) else {
        return Err(Failure::Proxy(ProxyError::NoHealthyUpstream));
    };
    let h2 = cluster.config.protocol == UpstreamProtocol::Http2;
    let mut head = call.head;
    head.version = match h2 {
        true => Version::HTTP_2,
        false => {
            // HTTP/1.1 sends the origin form; `host` carries the authority.
            if let Some(path) = head.uri.path_and_query().cloned() {
                head.uri = path.as_str().parse().unwrap_or_default();
            }
            Version::HTTP_11
        }
    };
    let request = Request::from_parts(head, body);
    let (response, lease) = pool::send(
        cluster,
        &host,
        h2,
        false,
        Default::default(),
        Box::new(request.into()),
    )
    .await
    .map_err(Failure::Proxy)?;
    cluster.stats.record_status(response.status().as_u16());
    Ok((response, lease))
}

/// The response the proxy gives in the upstream's place, as its router would.
fn local_response(error: &ProxyError) -> HttpCallResponse {
    let body = Bytes::from(error.body());
    let (mut head, ()) = http::Response::new(()).into_parts();
    head.status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::BAD_GATEWAY);
    head.headers
        .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    if !body.is_empty() {
        head.headers
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    HttpCallResponse {
        head,
        body,
        trailers: None,
    }
}

/// The shared state of this worker, for callouts made by its VMs.
pub(crate) fn worker_shared() -> Option<Arc<Shared>> {
    WORKER.with(|w| w.borrow().clone())
}

thread_local! {
    static WORKER: std::cell::RefCell<Option<Arc<Shared>>> = const { std::cell::RefCell::new(None) };
}

/// Called once by each worker thread: VMs on it check callout clusters against
/// the running config, and their calls go through this worker's pools.
pub(crate) fn init_worker(shared: Arc<Shared>) {
    let check = Arc::downgrade(&shared);
    strait_filters::wasm::set_cluster_check(move |name| {
        check
            .upgrade()
            .is_some_and(|s| s.runtime.load().clusters.contains_key(name))
    });
    WORKER.with(|w| *w.borrow_mut() = Some(shared));
}
