//! The router: one downstream request in, one response out.
//!
//! Order of work: load the runtime once, check the request, decide (virtual host,
//! route, cluster, host — pure lookups over the snapshot), then do IO (pool, send,
//! stream the response back). Every local reply goes through `local_reply`, which takes
//! its status and body from `ProxyError`.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use strait_filters::stream_info::{ClusterAt, RouteAt, RouteNames, UpstreamInfo};
use strait_filters::wasm::MetaValue;
use strait_filters::LocalReply;
use strait_xds::model::{
    ClusterSpecifier, HttpConnectionManager, RequestView, RouteAction, RouteTarget,
    ServerHeaderTransformation, UpstreamProtocol,
};

use crate::attempts::{self, Answer, Plan};
use crate::body::{
    BodyFault, ByteCount, Deadlines, DownstreamBody, ReplayHandle, RequestBody, ResponseBody,
    StreamTimers,
};
use crate::chain::{ChainHandle, ChainId, StageResponse, Step, Verdict};
use crate::error::ProxyError;
use crate::h1::HeaderCase;
use crate::headers::{self, ForwardingPolicy};
use crate::lb::LbState;
use crate::pool::Upstream;
use crate::retry::{self, RetryHeaders, RetryState};
use crate::runtime::{self, FastMap, ListenerRuntime, Runtime, Shared};
use crate::stream::{LogInfo, StreamGuard};
use crate::timeouts::{self, Timeouts};

static X_ENVOY_ORIGINAL_PATH: HeaderName = HeaderName::from_static("x-envoy-original-path");
static X_ENVOY_ORIGINAL_HOST: HeaderName = HeaderName::from_static("x-envoy-original-host");
static X_ENVOY_EXPECTED_RQ_TIMEOUT_MS: HeaderName =
    HeaderName::from_static("x-envoy-expected-rq-timeout-ms");
static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
static X_ENVOY_UPSTREAM_SERVICE_TIME: HeaderName =
    HeaderName::from_static("x-envoy-upstream-service-time");
static X_ENVOY_OVERLOADED: HeaderName = HeaderName::from_static("x-envoy-overloaded");

thread_local! {
    /// Per-worker LB state, keyed by cluster id.
    static LB: RefCell<FastMap<u64, LbState>> = RefCell::new(FastMap::default());
}

/// A listener's routes as plugins see them (`xds.route_name`, `xds.cluster_name`,
/// their metadata), also before the router has run: the route the request would
/// take now.
pub struct Routes {
    config: Arc<strait_xds::model::RouteConfig>,
    /// Per virtual host: its metadata and its routes'.
    metadata: Vec<(Arc<MetaValue>, Vec<Arc<MetaValue>>)>,
    clusters: Arc<FastMap<String, Arc<MetaValue>>>,
}

impl Routes {
    pub fn new(
        config: Arc<strait_xds::model::RouteConfig>,
        clusters: Arc<FastMap<String, Arc<MetaValue>>>,
    ) -> Routes {
        let metadata = config
            .virtual_hosts
            .iter()
            .map(|v| {
                let routes = v.routes.iter().map(|r| runtime::metadata(&r.metadata));
                (runtime::metadata(&v.metadata), routes.collect())
            })
            .collect();
        Routes {
            config,
            metadata,
            clusters,
        }
    }

    fn names(&self, vhost: usize, route: usize, cluster: Option<&str>) -> Option<RouteNames> {
        let (vhost_metadata, routes) = self.metadata.get(vhost)?;
        let v = self.config.virtual_hosts.get(vhost)?;
        let cluster = cluster.unwrap_or_default();
        Some(RouteNames {
            route: v.routes.get(route)?.name.clone(),
            virtual_host: v.name.clone(),
            cluster: cluster.to_owned(),
            route_metadata: routes.get(route)?.clone(),
            virtual_host_metadata: vhost_metadata.clone(),
            cluster_metadata: self.clusters.get(cluster).cloned().unwrap_or_default(),
        })
    }
}

impl strait_filters::stream_info::RouteResolver for Routes {
    fn resolve(&self, head: &strait_filters::RequestHead, random: u64) -> Option<RouteNames> {
        let authority = match head.uri.authority() {
            Some(a) => a.as_str(),
            None => head.headers.get(header::HOST)?.to_str().ok()?,
        };
        let path_and_query = head.uri.path_and_query().map_or("/", |p| p.as_str());
        let view = RequestView {
            host: authority,
            path_and_query,
            headers: &head.headers,
            connect: head.method == http::Method::CONNECT,
        };
        let vhost_at = self.config.find_virtual_host_index(authority)?;
        let vhost = &self.config.virtual_hosts[vhost_at];
        let route_at = vhost.find_route_index(&view)?;
        let cluster = match &vhost.routes[route_at].action {
            RouteAction::Route(target) => target.cluster.pick(&head.headers, random),
            _ => None,
        };
        self.names(vhost_at, route_at, cluster)
    }

    fn names(&self, at: &RouteAt) -> Option<RouteNames> {
        let vhost = self.config.virtual_hosts.get(at.virtual_host as usize)?;
        let route = vhost.routes.get(at.route as usize)?;
        let cluster = match (&route.action, &at.cluster) {
            (_, ClusterAt::Named(name)) => Some(&**name),
            (RouteAction::Route(target), at) => match (&target.cluster, at) {
                (ClusterSpecifier::Cluster(name), _) => Some(name.as_str()),
                (ClusterSpecifier::Weighted { clusters, .. }, ClusterAt::Weighted(i)) => {
                    clusters.get(*i as usize).map(|c| c.name.as_str())
                }
                _ => None,
            },
            _ => None,
        };
        Routes::names(self, at.virtual_host as usize, at.route as usize, cluster)
    }
}

/// Where `cluster_name`, the router's pick on `target`, sits in the route.
fn cluster_at(target: &RouteTarget, cluster_name: &str) -> ClusterAt {
    match &target.cluster {
        ClusterSpecifier::Cluster(_) => ClusterAt::Route,
        ClusterSpecifier::Weighted { clusters, .. } => clusters
            .iter()
            .position(|c| std::ptr::eq(c.name.as_str(), cluster_name))
            .map_or_else(
                || ClusterAt::Named(cluster_name.into()),
                |i| ClusterAt::Weighted(i as u32),
            ),
        ClusterSpecifier::Header(_) => ClusterAt::Named(cluster_name.into()),
    }
}

/// What a connection knows about itself.
pub struct ConnCtx {
    /// Process-unique (`connection.id` for plugins).
    pub id: u64,
    pub shared: Arc<Shared>,
    /// The listener this connection was accepted on, as configured.
    pub listener: Arc<ListenerRuntime>,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// The connection's request activity and framing verdict (`conn`).
    pub activity: crate::conn::Activity,
}

impl ConnCtx {
    /// The listener's config in the current runtime, or the one the connection was
    /// accepted with when the listener has since been removed (the connection then
    /// closes after this response).
    /// Borrowed: the request holds `rt` to its end, and the stream guard takes the
    /// one count it needs (each count is an atomic on a line every worker writes).
    fn listener<'a>(&'a self, rt: &'a Runtime) -> &'a Arc<ListenerRuntime> {
        match rt.listener(&self.listener.config.name) {
            Some(listener) => listener,
            None => {
                self.activity.listener_removed();
                &self.listener
            }
        }
    }
}

/// What routes are matched on, for a filter that looks up the route a request will
/// take before the router does: the authority (the `Host` header when the URI has
/// none; `None` when neither is usable), the path and query, the headers.
pub(crate) fn route_view<'a>(
    uri: &'a http::Uri,
    method: &http::Method,
    headers: &'a http::HeaderMap,
) -> Option<RequestView<'a>> {
    let host = match uri.authority() {
        Some(authority) => authority.as_str(),
        None => headers.get(header::HOST)?.to_str().ok()?,
    };
    Some(RequestView {
        host,
        path_and_query: uri.path_and_query().map_or("/", |p| p.as_str()),
        headers,
        connect: method == http::Method::CONNECT,
    })
}

/// A request as a downstream codec hands it to the router. Boxed: the codec, the
/// request future and `proxy` would each copy ~270 bytes inline.
pub type DownstreamRequest = Box<Request<DownstreamBody>>;

/// Handles one request. `case`: how the client cased its header names, when Strait's
/// HTTP/1.1 server codec parsed it. `smuggling`: the connection's framing guard saw
/// this request carry both Content-Length and Transfer-Encoding (see `framing`); it is
/// refused.
pub async fn handle(
    req: DownstreamRequest,
    case: Option<HeaderCase>,
    conn: Arc<ConnCtx>,
    smuggling: bool,
) -> Result<Response<ResponseBody>, ProxyError> {
    let rt = conn.shared.runtime.load_full();
    let listener = conn.listener(&rt);
    if req.version() == Version::HTTP_2 {
        listener.http.downstream_rq_http2_total.inc();
    } else {
        listener.http.downstream_rq_http1_total.inc();
    }
    let mut guard = Some(StreamGuard::new(listener.clone(), conn.peer, conn.local));
    let mut native = StageResponse::new(&conn.shared, &rt.clusters);
    let grpc = is_grpc(req.headers());
    if smuggling {
        listener.http.downstream_cx_protocol_error.inc();
        let error = ProxyError::BadRequest {
            reason: "both content-length and transfer-encoding",
        };
        let failure = Failure {
            error,
            close: true,
            mutations: None,
        };
        let guard = guard.expect("guard just made");
        return Ok(local_reply(failure, grpc, listener, guard, &native));
    }
    let proxied = proxy(req, case, &conn, &rt, listener, &mut guard, &mut native).await;
    Ok(match proxied {
        Ok(resp) => resp,
        Err(failure) => {
            // `proxy` takes the guard only when it returns a response.
            let mut guard = guard.expect("guard kept on the error path");
            // No response: hyper closes an HTTP/1.1 connection, and resets an HTTP/2
            // stream, for a service error. The guard logs status 0.
            match failure.error {
                ProxyError::FilterReset => {
                    // The plugin's own details, if it gave any, are in the stream's
                    // info already.
                    guard.details = failure.error.details();
                    return Err(failure.error);
                }
                ProxyError::DownstreamDisconnect => {
                    guard.ended_by(failure.error.flag(), failure.error.details());
                    return Err(failure.error);
                }
                _ => {}
            }
            local_reply(failure, grpc, listener, guard, &native)
        }
    })
}

/// Why `proxy` answers locally: the error, whether to close the connection, and the
/// matched route's response header mutations (Envoy applies them to local replies).
struct Failure<'a> {
    error: ProxyError,
    close: bool,
    mutations: Option<Mutations<'a>>,
}

impl From<ProxyError> for Failure<'_> {
    fn from(error: ProxyError) -> Self {
        Failure {
            error,
            close: false,
            mutations: None,
        }
    }
}

async fn proxy<'a>(
    mut req: DownstreamRequest,
    case: Option<HeaderCase>,
    conn: &ConnCtx,
    rt: &'a Runtime,
    listener: &'a Arc<ListenerRuntime>,
    slot: &mut Option<StreamGuard>,
    native: &mut StageResponse<'_>,
) -> Result<Response<ResponseBody>, Failure<'a>> {
    let guard = slot.as_mut().expect("proxy is called with a guard");
    let hcm = &listener.config.hcm;
    check_request(&req, hcm.max_request_headers_kb).map_err(|error| Failure {
        error,
        close: true,
        mutations: None,
    })?;

    let authority = match authority(&req) {
        Some(authority) => authority.to_owned(),
        // Envoy's `default_host_for_http_10`: an HTTP/1.0 request without `Host` is
        // routed on that host and goes upstream with it.
        None => match (&hcm.default_host_for_http_10, req.version()) {
            (Some(host), Version::HTTP_10) => {
                req.headers_mut().insert(header::HOST, host.clone());
                host.to_str().unwrap_or_default().to_owned()
            }
            _ => {
                return Err(Failure {
                    error: ProxyError::BadRequest {
                        reason: "missing host",
                    },
                    close: true,
                    mutations: None,
                })
            }
        },
    };
    let policy = ForwardingPolicy {
        use_remote_address: hcm.use_remote_address,
        xff_num_trusted_hops: hcm.xff_num_trusted_hops,
        generate_request_id: hcm.generate_request_id,
        internal_addresses: hcm.internal_addresses.as_ref(),
    };
    let effective_ip = headers::apply_forwarding(
        req.headers_mut(),
        &policy,
        conn.peer.ip(),
        conn.shared.local_ip,
        "http",
    );
    // The HTTP filters see the request after the connection manager's own edits and
    // before routing, so a plugin may rewrite what routing looks at.
    let mut authority = authority;
    // Taken before the filters: a fault delay is part of the logged duration.
    let start_time = crate::clock::system_now();
    let log_info = |req: &Request<DownstreamBody>, authority: &str| {
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        Box::new(LogInfo {
            start_time,
            method: Some(req.method().clone()),
            path: path.to_owned(),
            authority: authority.to_owned(),
            protocol: protocol_name(req.version()),
            request_headers: req.headers().clone(),
            response_headers: None,
            route_name: String::new(),
            downstream_remote: SocketAddr::new(effective_ip, 0),
        })
    };
    // Drawn before the filters, so a plugin's `xds.cluster_name` and the router's
    // weighted pick agree.
    let random: u64 = rand::random();
    guard.chain = ChainHandle::new(listener, start_time, |info| {
        info.random = random;
        info.version = Some(req.version());
        info.connection = Some(strait_filters::wasm::ConnectionInfo {
            id: conn.id,
            source: conn.peer,
            destination: conn.local,
        });
        info.listener = Some(listener.info.clone());
        info.resolver = Some(listener.routes.clone());
    });
    let id = guard.chain.as_ref().map(ChainHandle::id);
    let filtered = id.is_some() || !listener.stages.is_empty();
    if filtered || !listener.access_logs.is_empty() {
        // Envoy's connection manager drops the connection's own headers first: the
        // plugins and the access log never see `connection` or what it names. (With
        // neither, the router drops them with the rest of the hop-by-hop set; the
        // HTTP/1.1 codec keeps no `Connection: close` or `keep-alive` at all.)
        headers::remove_connection_headers(req.headers_mut());
    }
    if filtered {
        native.arm();
        let (mut parts, mut body) = (*req).into_parts();
        let eos = body.is_end_stream();
        // Wasm filters alone run at once; a fault filter's delay, or a plugin that
        // paused for its callouts, is awaited in a box, so neither sits in every
        // request's future.
        let verdict = match (id, listener.stages.is_empty()) {
            (Some(id), true) => match crate::chain::request_headers_now(id, &mut parts, eos) {
                Step::Done(verdict) => verdict,
                Step::Paused(at) => {
                    Box::pin(crate::chain::resume_request_headers(
                        id, at, &mut parts, eos, hcm,
                    ))
                    .await
                }
            },
            _ => {
                let mut stream = crate::chain::StageStream {
                    body: &mut body,
                    guard,
                    response: native,
                    conn_id: conn.id,
                };
                Box::pin(crate::chain::request_headers(
                    id,
                    &listener.stages,
                    hcm,
                    &mut parts,
                    eos,
                    &mut stream,
                ))
                .await
            }
        };
        if let (Verdict::LocalReply(_), Some(id)) = (&verdict, id) {
            id.keep_request_head(&parts);
        }
        *req = Request::from_parts(parts, body);
        if let Verdict::LocalReply(reply) = verdict {
            if !listener.access_logs.is_empty() {
                guard.log = Some(log_info(&req, &authority));
            }
            return answer_filter(*reply, listener, slot, id, native);
        }
        // A filter may have changed it; compared first as bytes (no `to_str` pass
        // over an unchanged `Host`), it is copied only then. A `Host` that is no
        // longer a string leaves it as it was.
        let changed = match req.uri().authority() {
            Some(now) => now.as_str() != authority,
            None => req
                .headers()
                .get(header::HOST)
                .is_some_and(|host| host.as_bytes() != authority.as_bytes()),
        };
        if changed {
            if let Some(now) = self::authority(&req) {
                authority = now.to_owned();
            }
        }
    }
    // Envoy's router starts the route timeout when it gets the request, after the
    // filters before it (a fault delay is not counted).
    let routed_at = crate::clock::tokio_now();
    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    if !listener.access_logs.is_empty() {
        guard.log = Some(log_info(&req, &authority));
    }

    // Decide. A stream answered before it goes upstream leaves its request head,
    // as it stands, for its plugins' `on_log`.
    let chain = guard.chain.as_ref().map(ChainHandle::id);
    macro_rules! answered {
        ($answer:expr) => {{
            if let Some(chain) = chain {
                chain.keep_request(&req);
            }
            $answer
        }};
    }
    let rc = &hcm.route_config;
    let view = RequestView {
        host: &authority,
        path_and_query: &path_and_query,
        headers: req.headers(),
        connect: req.method() == http::Method::CONNECT,
    };
    let Some(vhost_at) = rc.find_virtual_host_index(&authority) else {
        listener.http.no_route.inc();
        return answered!(Err(ProxyError::NoRoute.into()));
    };
    let vhost = &rc.virtual_hosts[vhost_at];
    let Some(route_at) = vhost.find_route_index(&view) else {
        listener.http.no_route.inc();
        return answered!(Err(ProxyError::NoRoute.into()));
    };
    let route = &vhost.routes[route_at];
    let mutations = route_mutations(rc, vhost, route);
    let fail = |error: ProxyError| Failure {
        error,
        close: false,
        mutations: Some(mutations),
    };
    if let Some(log) = &mut guard.log {
        log.route_name.clone_from(&route.name);
    }
    let target = match &route.action {
        RouteAction::Route(t) => t,
        RouteAction::Redirect(r) => {
            listener.http.rq_redirect.inc();
            let location = r.location(&route.matcher, "http", &authority, &path_and_query);
            let mut resp = Response::new(Bytes::new());
            *resp.status_mut() =
                StatusCode::from_u16(r.status).unwrap_or(StatusCode::MOVED_PERMANENTLY);
            if let Ok(v) = HeaderValue::from_str(&location) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            let guard = slot.take().expect("guard present");
            return answered!(Ok(finish_local(
                resp,
                listener,
                Some(mutations),
                guard,
                "redirect",
                native,
            )));
        }
        RouteAction::DirectResponse { status, body } => {
            listener.http.rq_direct_response.inc();
            let body = body
                .as_ref()
                .map_or_else(Bytes::new, |b| Bytes::copy_from_slice(b));
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::OK);
            let resp = local_response(status, body, is_grpc(req.headers()));
            let guard = slot.take().expect("guard present");
            return answered!(Ok(finish_local(
                resp,
                listener,
                Some(mutations),
                guard,
                "direct_response",
                native,
            )));
        }
    };
    let Some(cluster_name) = target.cluster.pick(req.headers(), random) else {
        listener.http.no_cluster.inc();
        return answered!(Err(fail(ProxyError::NoCluster)));
    };
    let Some(cluster) = rt.clusters.get(cluster_name).cloned() else {
        listener.http.no_cluster.inc();
        return answered!(Err(fail(ProxyError::NoCluster)));
    };
    let weighted = match &target.cluster {
        strait_xds::model::ClusterSpecifier::Weighted { clusters, .. } => clusters
            .iter()
            .find(|c| c.name == cluster_name)
            .map(|c| &c.headers),
        _ => None,
    };
    let upgrade = headers::upgrade_type(req.headers());
    if let Some(kind) = &upgrade {
        if !hcm.upgrade_types.iter().any(|t| t == kind) {
            return answered!(Err(fail(ProxyError::UpgradeRejected)));
        }
    }
    if let Some(chain) = chain {
        chain.with_info(|info| {
            info.route = Some(RouteAt {
                virtual_host: vhost_at as u32,
                route: route_at as u32,
                cluster: cluster_at(target, cluster_name),
            })
        });
    }
    let hosts = cluster.hosts.load_full();
    // RING_HASH and MAGLEV pick by the route's hash policy; a random hash without one.
    let lb_hash = match cluster.config.lb_policy.is_consistent_hash() {
        true => crate::lb::hash::RequestHash::compute(
            &target.hash_policy,
            &crate::lb::hash::HashInput {
                headers: req.headers(),
                path_and_query: &path_and_query,
                source_ip: effective_ip,
                peer: conn.peer,
                local: conn.local,
                filter_state: chain,
            },
        ),
        false => crate::lb::hash::RequestHash::default(),
    };
    let host = pick_host(
        &cluster,
        &hosts,
        lb_hash.hash.unwrap_or(random.rotate_left(17)),
    );
    let Some(host) = host else {
        cluster.stats.upstream_cx_none_healthy.inc();
        guard.upstream = Some(crate::stream::Upstream {
            cluster,
            host: None,
        });
        return answered!(Err(fail(ProxyError::NoHealthyUpstream)));
    };

    // Build the upstream request.
    let h2 = match cluster.config.protocol {
        UpstreamProtocol::Http2 => true,
        UpstreamProtocol::Http1 => false,
        UpstreamProtocol::Downstream => req.version() == Version::HTTP_2,
    } && upgrade.is_none();
    let downstream_version = req.version();
    let on_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut *req));
    let (mut parts, body) = (*req).into_parts();
    let new_path = target.rewrite_path(&route.matcher, &path_and_query);
    if new_path.is_some() && !hcm.suppress_envoy_headers {
        if let Ok(v) = HeaderValue::from_str(&path_and_query) {
            parts.headers.insert(&X_ENVOY_ORIGINAL_PATH, v);
        }
    }
    let upstream_authority = upstream_authority(target, &authority, &host);
    if upstream_authority != authority && !hcm.suppress_envoy_headers {
        if let Ok(v) = HeaderValue::from_str(&authority) {
            parts.headers.insert(&X_ENVOY_ORIGINAL_HOST, v);
        }
    }
    headers::remove_hop_by_hop(&mut parts.headers, upgrade.is_some());
    // Strait answered `100-continue` itself; other expectations are the upstream's
    // to meet or refuse (417), as Envoy passes them on.
    if parts
        .headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
    {
        parts.headers.remove(header::EXPECT);
    }
    route.headers.apply_request(&mut parts.headers);
    if let Some(w) = weighted {
        w.apply_request(&mut parts.headers);
    }
    vhost.headers.apply_request(&mut parts.headers);
    rc.headers.apply_request(&mut parts.headers);
    // Envoy's router reads its steering headers (left only on internal requests: the
    // connection manager strips them from external ones and marks internal ones
    // `x-envoy-internal`) and never forwards them. The mark is what to look for, not
    // any `x-envoy-` name: edge requests carry `x-envoy-external-address` but never
    // steer.
    let steering = headers::has(&parts.headers, &crate::headers::X_ENVOY_INTERNAL);
    let timeouts = match steering {
        false => Timeouts::of(target),
        true => Timeouts::from_headers(target, &mut parts.headers),
    };
    // Envoy tells the upstream the time it has: the per-try timeout, else (or when
    // hedging) the route's. Without steering headers both values were made at
    // translation. `suppress_envoy_headers` keeps it (and a retry's) to itself.
    if !hcm.suppress_envoy_headers {
        if !steering {
            let made = match (timeouts.per_try, timeouts.hedge) {
                (Some(_), false) => target
                    .retry_policy
                    .as_ref()
                    .and_then(|p| p.per_try_timeout_header.as_ref()),
                _ => target.timeout_header.as_ref(),
            };
            if let Some(v) = made {
                parts
                    .headers
                    .insert(&X_ENVOY_EXPECTED_RQ_TIMEOUT_MS, v.clone());
            }
        } else if let Some(t) = timeouts.expected() {
            let ms = HeaderValue::from(t.as_millis() as u64);
            parts.headers.insert(&X_ENVOY_EXPECTED_RQ_TIMEOUT_MS, ms);
        }
    }
    let max_duration = timeouts::stream_duration(
        hcm.max_stream_duration,
        target.max_stream_duration.as_ref(),
        &mut parts.headers,
    );
    // An unrewritten path and an unchanged `host` keep the bytes hyper parsed (shared
    // with the read buffer): no copy here, and a retry's copy of the head clones
    // them without allocating.
    let builder = match h2 {
        true => {
            parts.headers.remove(header::HOST);
            Uri::builder().scheme("http").authority(upstream_authority)
        }
        false => {
            let host = parts.headers.get(header::HOST).map(HeaderValue::as_bytes);
            if host != Some(upstream_authority.as_bytes()) {
                if let Ok(v) = HeaderValue::from_str(upstream_authority) {
                    parts.headers.insert(header::HOST, v);
                }
            }
            Uri::builder()
        }
    };
    let uri = match (&new_path, parts.uri.path_and_query()) {
        (None, Some(kept)) => builder.path_and_query(kept.clone()).build(),
        _ => builder
            .path_and_query(new_path.as_deref().unwrap_or(&path_and_query))
            .build(),
    };
    parts.uri = uri.map_err(|_| Failure {
        error: ProxyError::BadRequest {
            reason: "invalid authority or path",
        },
        close: true,
        mutations: None,
    })?;
    parts.version = if h2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    let body = if body.is_end_stream() {
        RequestBody::Empty
    } else {
        let received = Arc::new(ByteCount::default());
        guard.received = Some(received.clone());
        match chain {
            Some(chain) => RequestBody::Filtered {
                inner: body,
                received,
                chain,
                done: false,
                waiting: false,
                trailers: None,
            },
            None => RequestBody::Streaming {
                inner: body,
                received,
            },
        }
    };
    let retry = match upgrade {
        Some(_) => None,
        None => {
            let headers = match steering {
                true => RetryHeaders::from(&parts.headers),
                false => RetryHeaders::default(),
            };
            RetryState::new(target.retry_policy.as_deref(), headers)
        }
    };
    if steering {
        retry::strip_headers(&mut parts.headers);
    }
    // Only a request that may be retried pays for keeping its body.
    let (first_body, replay) = match &retry {
        Some(_) if !body.is_empty() => {
            let limit = listener.config.per_connection_buffer_limit_bytes as usize;
            let abandoned = cluster.stats.retry_or_shadow_abandoned.clone();
            let handle = ReplayHandle::new(body, limit, abandoned);
            (handle.next_attempt(), Some(handle))
        }
        _ => (body, None),
    };
    // The head as sent goes to the plugins' `on_log` when the attempts are over.
    // Built in its box, not on the stack and copied twice more (`Upstream::new`,
    // `Box::new`).
    let first = Box::write(
        Box::new_uninit(),
        Upstream {
            request: Request::from_parts(parts, first_body),
            case,
        },
    );
    // Attempts one after another get each head back from the pool for the next; only
    // hedged attempts, which overlap, need a copy made up front.
    let template = retry
        .as_ref()
        .filter(|_| timeouts.hedge)
        .map(|_| Box::new(first.copy_head()));

    // Do IO. Envoy's route timeout starts when the request is complete: at once for
    // a request without a body, else when its body ends (a slow upload is not a
    // slow upstream).
    let (deadline, route_after_body) = match guard.received {
        Some(_) => (None, timeouts.global),
        None => (timeouts.global.map(|t| routed_at + t), None),
    };
    // A route's explicit 0s disables the idle timeout; unset inherits the HCM's.
    let idle = match target.idle_timeout {
        Some(d) if d.is_zero() => None,
        Some(d) => Some(d),
        None => hcm.stream_idle_timeout,
    };
    guard.begin_upstream(cluster.clone(), host.clone());
    // One timer serves the wait for the response head and then the response body; the
    // route timeout covers every attempt.
    let deadlines = Deadlines {
        route: deadline,
        request: hcm.request_timeout.map(|t| guard.start() + t),
        max_duration: max_duration.map(|t| guard.start() + t),
        idle,
        // Without hedging, the first attempt's per-try deadline shares the stream's
        // timer (hedged attempts have timers of their own).
        attempt: match timeouts.hedge {
            true => None,
            false => {
                attempts::per_try_first(timeouts.per_try, timeouts.per_try_idle).map(|(d, _)| d)
            }
        },
        route_after_body,
    };
    let mut timers = StreamTimers::new(deadlines, guard.received.clone());
    let plan = Plan {
        cluster: &cluster,
        hosts: &hosts,
        h2,
        upgrade: upgrade.is_some(),
        template,
        replay,
        per_try: timeouts.per_try,
        per_try_idle: timeouts.per_try_idle,
        hedge: timeouts.hedge,
        attempt_count_header: vhost.include_request_attempt_count,
        expected_timeout: timeouts.expected().filter(|_| !hcm.suppress_envoy_headers),
        global_timeout: timeouts.global,
        routed_at,
        target,
        authority: &authority,
        chain,
    };
    let answer = attempts::run(plan, first, host, retry, &mut timers, guard).await;
    let (mut resp, lease) = match answer {
        Answer::Response(resp, lease, request_slot) => {
            guard.request_slot = request_slot;
            (resp, lease)
        }
        Answer::Failed(error) => {
            // The client's broken body failed the exchange: its error, not the
            // upstream's (Envoy's codec answers 400 too). A client gone before its
            // body ended is not answered at all (`DC`, status 0, as in Envoy): a 503
            // `UR` would blame a healthy upstream in the stats and the access log.
            let fault = guard.received.as_ref().and_then(|r| r.fault());
            return Err(fail(match fault {
                Some(BodyFault::Malformed(reason)) => ProxyError::BadRequest { reason },
                Some(BodyFault::Disconnected) => ProxyError::DownstreamDisconnect,
                None => error,
            }));
        }
        Answer::FilterReplied(reply) => return answer_filter(reply, listener, slot, chain, native),
    };
    if let Some(idle) = timeouts.per_try_idle {
        timers = StreamTimers::with_try_idle(timers, idle, guard.received.clone());
    }
    // Envoy disarms `request_timeout` when the response begins, too.
    if let Some(t) = &mut timers {
        t.response_started();
    }
    let status = resp.status().as_u16();

    if status == 101 {
        if let Some(on_upgrade) = on_upgrade {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                let (Ok(down), Ok(up)) = (on_upgrade.await, upstream_upgrade.await) else {
                    return;
                };
                let mut down = hyper_util::rt::TokioIo::new(down);
                let mut up = hyper_util::rt::TokioIo::new(up);
                let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
            });
        }
    }
    let (mut parts, body) = resp.into_parts();
    // The downstream codec speaks its own version, whatever the upstream spoke.
    parts.version = downstream_version;
    headers::remove_hop_by_hop(&mut parts.headers, status == 101);
    route.headers.apply_response(&mut parts.headers);
    if let Some(cookie) = lb_hash.set_cookie {
        parts.headers.append(header::SET_COOKIE, cookie);
    }
    if let Some(w) = weighted {
        w.apply_response(&mut parts.headers);
    }
    vhost.headers.apply_response(&mut parts.headers);
    rc.headers.apply_response(&mut parts.headers);
    if !hcm.suppress_envoy_headers {
        let service_ms = crate::clock::tokio_now()
            .saturating_duration_since(guard.start())
            .as_millis() as u64;
        parts
            .headers
            .insert(&X_ENVOY_UPSTREAM_SERVICE_TIME, headers::number(service_ms));
    }
    if let Some(chain) = chain {
        let upstream = guard.upstream.as_ref().and_then(|u| u.host.as_ref());
        let upstream = upstream.map(|host| UpstreamInfo {
            address: host.addr,
            local_address: lease.as_ref().and_then(crate::pool::Lease::local_address),
            metadata: host.metadata.clone(),
        });
        let (attempts, flags) = (guard.attempts, guard.flag_bits());
        let eos = body.is_end_stream();
        let step = crate::chain::response_headers_now(chain, &mut parts, eos, |info| {
            info.upstream = upstream;
            info.attempts = attempts;
            info.response_flags = flags;
            info.response_details = Some("via_upstream".into());
        });
        let verdict = match step {
            // The status is kept already.
            Step::Done(verdict) => verdict,
            // A filter paused for its callouts: a cold path, boxed.
            Step::Paused(at) => {
                let verdict = Box::pin(crate::chain::resume_response_headers(
                    chain, at, &mut parts, eos, hcm,
                ))
                .await;
                if matches!(verdict, Verdict::Continue) {
                    chain.keep_response_status(parts.status, "via_upstream");
                }
                verdict
            }
        };
        if let Verdict::LocalReply(reply) = verdict {
            return answer_filter(*reply, listener, slot, None, native);
        }
    }
    native.apply(&listener.stages, parts.status, &mut parts.headers);
    // After the filters, as Envoy's connection manager does: plugins see the
    // upstream's `server`, and the configured name overwrites whatever they set.
    set_server(&mut parts.headers, hcm);
    let status = parts.status.as_u16();
    guard.status = status;
    if let Some(log) = &mut guard.log {
        log.response_headers = Some(parts.headers.clone());
    }
    if let Some(t) = &mut timers {
        t.touch();
    }
    let guard = slot.take().expect("guard present");
    let body = ResponseBody::upstream(body, lease, timers, guard);
    let body = match chain {
        Some(chain) => body.filtered(chain),
        None => body,
    };
    Ok(Response::from_parts(parts, body))
}

/// The load balancer's pick from `hosts`, with this worker's LB state.
pub(crate) fn pick_host(
    cluster: &crate::cluster::ClusterRuntime,
    hosts: &Arc<crate::cluster::HostSet>,
    random: u64,
) -> Option<Arc<crate::cluster::Host>> {
    LB.with(|lb| {
        lb.borrow_mut()
            .entry(cluster.id)
            .or_default()
            .pick(cluster.config.lb_policy, hosts, random)
    })
}

/// What an HTTP filter answered: a local reply ([`filter_reply`]), or a reset of
/// the stream, which `handle` turns into no response (the guard stays in `slot`).
fn answer_filter<'a>(
    reply: LocalReply,
    listener: &ListenerRuntime,
    slot: &mut Option<StreamGuard>,
    chain: Option<ChainId>,
    native: &StageResponse<'_>,
) -> Result<Response<ResponseBody>, Failure<'a>> {
    if reply.reset {
        return Err(ProxyError::FilterReset.into());
    }
    let guard = slot.take().expect("guard present");
    Ok(filter_reply(reply, listener, guard, chain, native))
}

/// A local reply an HTTP filter asked for (`send_http_response`, or a plugin
/// failure answered 500), with the connection manager's `server` header. A reply
/// decided in a request phase goes through the filters' response-headers phase, as
/// Envoy sends local replies through the encoder filters; `chain` is `None` for a
/// reply decided in the response phase itself.
fn filter_reply(
    reply: LocalReply,
    listener: &ListenerRuntime,
    mut guard: StreamGuard,
    chain: Option<ChainId>,
    native: &StageResponse<'_>,
) -> Response<ResponseBody> {
    let mut resp = Response::new(reply.body);
    *resp.status_mut() = reply.status;
    if !resp.body().is_empty() {
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    for (name, value) in reply.headers.iter() {
        resp.headers_mut().append(name, value.clone());
    }
    if let Some(chain) = chain {
        let details = reply.details.clone();
        chain.with_info(|info| info.response_details = Some(details.into()));
        let (mut parts, body) = resp.into_parts();
        // A second local reply from here would loop; the first one stands.
        let _ = chain.reply_headers(&mut parts, body.is_empty());
        resp = Response::from_parts(parts, body);
    }
    let details = match reply.details.as_str() {
        "wasm_fail_stream" => "wasm_fail_stream",
        "request_payload_too_large" => "request_payload_too_large",
        "response_payload_too_large" => "response_payload_too_large",
        crate::fault::ABORT_DETAILS => crate::fault::ABORT_DETAILS,
        crate::rate_limit::DETAILS => crate::rate_limit::DETAILS,
        // The connection manager's stream idle timer, while a filter waited for its
        // callouts (`chain::wait_resumed`): logged and counted as the router's own.
        "stream_idle_timeout" => {
            guard.set_flag("SI");
            listener.http.downstream_rq_idle_timeout.inc();
            "stream_idle_timeout"
        }
        other => crate::health_filter::details(other).unwrap_or("filter_local_reply"),
    };
    finish_local(resp, listener, None, guard, details, native)
}

/// Rejects heads larger than `max_request_headers_kb`. hyper's parser already refuses
/// the other malformed shapes (obs-fold, bad characters, differing Content-Length) with
/// 400 before a request exists, and answers Content-Length with Transfer-Encoding by
/// dropping Content-Length and closing the connection after the response.
fn check_request(req: &Request<DownstreamBody>, max_headers_kb: u32) -> Result<(), ProxyError> {
    let size: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if size > max_headers_kb as usize * 1024 {
        return Err(ProxyError::HeadersTooLarge);
    }
    // An authority alone as the target (`GET example.com`) would stand in for `Host`;
    // only CONNECT has one. For every codec: Strait's HTTP/1.1 one and hyper's
    // (upgrades) parse it into an authority-only URI.
    let uri = req.uri();
    if uri.scheme().is_none() && uri.authority().is_some() && req.method() != http::Method::CONNECT
    {
        return Err(ProxyError::BadRequest {
            reason: "request target is not a path or an absolute URL",
        });
    }
    Ok(())
}

fn authority(req: &Request<DownstreamBody>) -> Option<&str> {
    if let Some(a) = req.uri().authority() {
        return Some(a.as_str());
    }
    // Empty is a valid `Host` (RFC 9112 §3.2), routed as Envoy routes it; only a
    // missing one is refused.
    req.headers().get(header::HOST)?.to_str().ok()
}

/// The authority sent upstream. `auto_host_rewrite` uses the endpoint's DNS name, as
/// Envoy does; an endpoint configured by IP has no name and the host is kept.
pub(crate) fn upstream_authority<'a>(
    target: &'a RouteTarget,
    authority: &'a str,
    host: &'a crate::cluster::Host,
) -> &'a str {
    if let Some(h) = &target.host_rewrite_literal {
        return h;
    }
    if target.auto_host_rewrite && !host.hostname.is_empty() {
        return &host.hostname;
    }
    authority
}

fn protocol_name(v: Version) -> &'static str {
    match v {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        _ => "HTTP/1.1",
    }
}

/// The `server` header as `server_header_transformation` says, for every response
/// (proxied or local), as Envoy's connection manager does when it encodes the headers.
fn set_server(headers: &mut http::HeaderMap, hcm: &HttpConnectionManager) {
    match hcm.server_header_transformation {
        ServerHeaderTransformation::Overwrite => {
            headers.insert(header::SERVER, hcm.server_name.clone());
        }
        ServerHeaderTransformation::AppendIfAbsent => {
            if let http::header::Entry::Vacant(slot) = headers.entry(header::SERVER) {
                slot.insert(hcm.server_name.clone());
            }
        }
        ServerHeaderTransformation::PassThrough => {}
    }
}

type Mutations<'a> = [&'a strait_xds::model::HeaderMutations; 3];

fn route_mutations<'a>(
    rc: &'a strait_xds::model::RouteConfig,
    vhost: &'a strait_xds::model::VirtualHost,
    route: &'a strait_xds::model::Route,
) -> Mutations<'a> {
    [&route.headers, &vhost.headers, &rc.headers]
}

/// Every local response ends here: the route's response headers, the native
/// filters' response phase (`native`), the `server` header, the stream's record.
fn finish_local(
    mut resp: Response<Bytes>,
    listener: &ListenerRuntime,
    mutations: Option<Mutations<'_>>,
    mut guard: StreamGuard,
    details: &'static str,
    native: &StageResponse<'_>,
) -> Response<ResponseBody> {
    for m in mutations.into_iter().flatten() {
        m.apply_response(resp.headers_mut());
    }
    let status = resp.status();
    native.apply(&listener.stages, status, resp.headers_mut());
    set_server(resp.headers_mut(), &listener.config.hcm);
    guard.status = resp.status().as_u16();
    guard.details = details;
    if let Some(chain) = guard.chain.as_ref().map(ChainHandle::id) {
        chain.keep_response_status(resp.status(), details);
    }
    if let Some(log) = &mut guard.log {
        log.response_headers = Some(resp.headers().clone());
    }
    let (parts, body) = resp.into_parts();
    Response::from_parts(parts, ResponseBody::full(body, Some(guard)))
}

/// The response the proxy itself sends for an error, as Envoy words it.
fn local_reply(
    failure: Failure<'_>,
    grpc: bool,
    listener: &ListenerRuntime,
    mut guard: StreamGuard,
    native: &StageResponse<'_>,
) -> Response<ResponseBody> {
    let err = &failure.error;
    let status = StatusCode::from_u16(err.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = local_response(status, Bytes::from(err.body()), grpc);
    if let (true, Some(code)) = (grpc, err.grpc_status()) {
        resp.headers_mut()
            .insert(&GRPC_STATUS, HeaderValue::from(code));
    }
    if failure.close {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if err.overloaded() && !listener.config.hcm.suppress_envoy_headers {
        resp.headers_mut()
            .insert(&X_ENVOY_OVERLOADED, HeaderValue::from_static("true"));
    }
    guard.set_flag(err.flag());
    finish_local(
        resp,
        listener,
        failure.mutations,
        guard,
        err.details(),
        native,
    )
}

fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// A local response. For a gRPC request it is a trailers-only gRPC response (HTTP 200,
/// `grpc-status` mapped from the HTTP status, the body as `grpc-message`), as Envoy
/// answers gRPC clients, which cannot read an HTTP error body.
fn local_response(status: StatusCode, body: Bytes, grpc: bool) -> Response<Bytes> {
    let mut resp = Response::new(Bytes::new());
    if grpc {
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert(
            &GRPC_STATUS,
            HeaderValue::from(grpc_status(status.as_u16())),
        );
        if !body.is_empty() {
            if let Ok(v) = HeaderValue::from_str(&grpc_percent_encode(&body)) {
                headers.insert(&GRPC_MESSAGE, v);
            }
        }
        return resp;
    }
    *resp.status_mut() = status;
    if !body.is_empty() {
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    *resp.body_mut() = body;
    resp
}

/// Envoy's HTTP → gRPC status mapping (`Grpc::Utility::httpToGrpcStatus`).
pub(crate) fn grpc_status(http: u16) -> u16 {
    match http {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

/// gRPC's `grpc-message` encoding: bytes outside printable ASCII, and `%`, as `%XX`.
fn grpc_percent_encode(body: &[u8]) -> String {
    let mut out = String::with_capacity(body.len());
    for &b in body {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
