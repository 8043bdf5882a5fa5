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
use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Request, StatusCode, Version};
use http_body_util::{BodyExt, Limited};
use strait_filters::wasm::{HttpCallRequest, HttpCallResponse};
use strait_xds::model::UpstreamProtocol;

use crate::body::RequestBody;
use crate::error::ProxyError;
use crate::pool;
use crate::runtime::Shared;

/// Callout responses are buffered whole for the plugin; a larger body fails the
/// call rather than growing without bound.
pub const MAX_BODY: usize = 16 << 20;

/// Sends `call` and returns what the plugin sees in `proxy_on_http_call_response`.
pub async fn send(shared: &Shared, call: HttpCallRequest) -> Option<HttpCallResponse> {
    let timeout = call.timeout;
    let exchange = exchange(shared, call);
    let result = match timeout {
        Some(limit) => tokio::time::timeout(limit, exchange)
            .await
            .unwrap_or(Err(Failure::Proxy(ProxyError::UpstreamTimeout))),
        None => exchange.await,
    };
    match result {
        Ok(response) => Some(response),
        Err(Failure::Proxy(error)) => Some(local_response(&error)),
        Err(Failure::Broken(why)) => {
            tracing::debug!(target: "strait::wasm", error = %why, "http callout failed after the response head");
            None
        }
    }
}

enum Failure {
    /// Before the response head: the proxy answers in the upstream's place.
    Proxy(ProxyError),
    /// After it: the plugin gets no response.
    Broken(String),
}

async fn exchange(shared: &Shared, call: HttpCallRequest) -> Result<HttpCallResponse, Failure> {
    let runtime = shared.runtime.load_full();
    // The VM checked the name when the call was made; a reload may have removed
    // the cluster since.
    let Some(cluster) = runtime.clusters.get(&call.cluster) else {
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
    let request = Request::from_parts(head, RequestBody::full(call.body, call.trailers));
    let (response, lease) = pool::send(cluster, &host, h2, false, Default::default(), request)
        .await
        .map_err(Failure::Proxy)?;
    cluster.stats.record_status(response.status().as_u16());
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
