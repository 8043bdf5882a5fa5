//! Active health checking, as Envoy's `HealthCheck`: HTTP, TCP and gRPC checks.
//!
//! Checks run once per cluster on the main thread (one task per host, under one task
//! per cluster), never on the workers; a verdict reaches the workers through the
//! host's `healthy` atomic and the host set's healthy count (`cluster::Host`,
//! `lb::LbState::pick`).
//!
//! Transitions are Envoy's (`HealthCheckerImplBase::ActiveHealthCheckSession`): a host
//! of a health-checked cluster starts unhealthy and "pending"; its first check decides
//! either way. After that, `healthy_threshold` consecutive successes make an unhealthy
//! host healthy; a healthy host goes unhealthy after `unhealthy_threshold` consecutive
//! *network* failures (refused, reset, timed out), or at once on an *active* failure
//! (the host answered, and said no: an unexpected HTTP status, gRPC `NOT_SERVING`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{header, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use strait_xds::model::{HealthCheck, HealthCheckKind, HttpHealthCheck};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::{AbortHandle, JoinSet};

use crate::cluster::{ClusterRuntime, Host, HostSet};
use crate::runtime::Runtime;
use crate::stats::{Counter, Gauge, Scope, Store};

/// What one check said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// The host answered "unhealthy" (Envoy's `ACTIVE` failure): no threshold.
    Failure,
    /// Connect, IO or timeout (Envoy's `NETWORK` failure): counts toward
    /// `unhealthy_threshold`.
    NetworkFailure,
}

/// A host's health-check bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthState {
    pub healthy: bool,
    /// Not checked yet (Envoy's `PENDING_ACTIVE_HC`).
    pub pending: bool,
    /// Consecutive successes while unhealthy.
    pub successes: u32,
    /// Consecutive network failures while healthy.
    pub failures: u32,
}

impl HealthState {
    /// A new host: healthy without health checks; unhealthy and pending with them.
    pub fn initial(health_checked: bool) -> HealthState {
        HealthState {
            healthy: !health_checked,
            pending: health_checked,
            successes: 0,
            failures: 0,
        }
    }
}

/// The state after one check: a pure function of the state, the outcome and the
/// thresholds.
pub fn transition(
    state: HealthState,
    outcome: Outcome,
    unhealthy_threshold: u32,
    healthy_threshold: u32,
) -> HealthState {
    let first = state.pending;
    let mut next = HealthState {
        pending: false,
        ..state
    };
    match outcome {
        Outcome::Success => {
            next.failures = 0;
            if !state.healthy {
                next.successes += 1;
                if first || next.successes >= healthy_threshold {
                    next.healthy = true;
                    next.successes = 0;
                }
            }
        }
        Outcome::Failure | Outcome::NetworkFailure => {
            next.successes = 0;
            if state.healthy {
                next.failures += 1;
                if outcome == Outcome::Failure || next.failures >= unhealthy_threshold {
                    next.healthy = false;
                    next.failures = 0;
                }
            }
        }
    }
    next
}

/// Envoy's `cluster.<name>.health_check.*`.
#[derive(Clone)]
pub struct HealthCheckStats {
    pub attempt: Counter,
    pub success: Counter,
    pub failure: Counter,
    pub network_failure: Counter,
    /// Healthy hosts.
    pub healthy: Gauge,
}

impl HealthCheckStats {
    pub fn register(store: &Store, cluster: &Scope) -> HealthCheckStats {
        let c = |n: &str| store.counter(cluster, &format!("health_check.{n}"));
        HealthCheckStats {
            attempt: c("attempt"),
            success: c("success"),
            failure: c("failure"),
            network_failure: c("network_failure"),
            healthy: store.gauge(cluster, "health_check.healthy"),
        }
    }
}

/// The running checkers, one per health-checked cluster runtime. A cluster that leaves
/// the runtime (removed, or replaced by a reload that changed it) has its checker
/// aborted, and with it every per-host task.
#[derive(Default)]
pub struct Checkers {
    by_cluster: HashMap<u64, Checker>,
}

struct Checker(AbortHandle);

impl Drop for Checker {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Checkers {
    /// Starts checkers for new clusters and stops those of clusters gone from `rt`.
    /// Call on the main runtime after each publish.
    pub fn sync(&mut self, rt: &Runtime) {
        self.by_cluster
            .retain(|id, _| rt.clusters.values().any(|c| c.id == *id));
        for cluster in rt.clusters.values() {
            if cluster.config.health_check.is_some() {
                self.by_cluster.entry(cluster.id).or_insert_with(|| {
                    Checker(tokio::spawn(supervise(cluster.clone())).abort_handle())
                });
            }
        }
    }
}

/// Checks every host once, concurrently; the cluster's warm-up.
pub async fn first_round(cluster: &ClusterRuntime) {
    let Some(check) = &cluster.config.health_check else {
        return;
    };
    let hosts = cluster.hosts.load_full();
    let checks = hosts.hosts.iter().map(|host| async move {
        let outcome = run(check, &cluster.config.name, host.addr).await;
        record(cluster, check, host, outcome);
    });
    futures_util::future::join_all(checks).await;
}

/// One cluster's checker: keeps one task per host of the current host set, following
/// DNS refreshes.
async fn supervise(cluster: Arc<ClusterRuntime>) {
    let mut tasks = JoinSet::new();
    // Keyed by the host's address in memory: a host replaced by a DNS refresh is a new
    // host (its health state was carried over), with a new task.
    let mut running: HashMap<usize, AbortHandle> = HashMap::new();
    let key = |host: &Arc<Host>| Arc::as_ptr(host) as usize;
    let mut seen: Option<Arc<HostSet>> = None;
    loop {
        let set = cluster.hosts.load_full();
        if !seen.as_ref().is_some_and(|s| Arc::ptr_eq(s, &set)) {
            running.retain(|ptr, task| {
                let live = set.hosts.iter().any(|h| key(h) == *ptr);
                if !live {
                    task.abort();
                }
                live
            });
            for host in &set.hosts {
                running
                    .entry(key(host))
                    .or_insert_with(|| tasks.spawn(check_host(cluster.clone(), host.clone())));
            }
            seen = Some(set);
        }
        while tasks.try_join_next().is_some() {}
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn check_host(cluster: Arc<ClusterRuntime>, host: Arc<Host>) {
    let Some(check) = &cluster.config.health_check else {
        return;
    };
    let mut delay = match host.health.lock().pending {
        true => Duration::ZERO,
        false => next_interval(check, &cluster),
    };
    loop {
        tokio::time::sleep(delay).await;
        let outcome = run(check, &cluster.config.name, host.addr).await;
        record(&cluster, check, &host, outcome);
        delay = next_interval(check, &cluster);
    }
}

/// Envoy's interval: `interval` once the cluster has opened an upstream connection
/// for traffic (`upstream_cx_total` used), `no_traffic_interval` (default 60 s)
/// until then, so clusters nobody sends to are not checked at full rate; plus a
/// random share of `interval_jitter`. A check already sleeping when the first
/// traffic arrives keeps its sleep, as in Envoy.
fn next_interval(check: &HealthCheck, cluster: &ClusterRuntime) -> Duration {
    let base = match cluster.stats.upstream_cx_total.value() {
        0 => check.no_traffic_interval,
        _ => check.interval,
    };
    base + check.interval_jitter.mul_f64(rand::random::<f64>())
}

fn record(cluster: &ClusterRuntime, check: &HealthCheck, host: &Host, outcome: Outcome) {
    if let Some(stats) = &cluster.stats.health_check {
        stats.attempt.inc();
        match outcome {
            Outcome::Success => stats.success.inc(),
            Outcome::Failure => stats.failure.inc(),
            Outcome::NetworkFailure => {
                stats.failure.inc();
                stats.network_failure.inc();
            }
        }
    }
    let state = *host.health.lock();
    let next = transition(
        state,
        outcome,
        check.unhealthy_threshold,
        check.healthy_threshold,
    );
    if host.set_health(next) {
        tracing::info!(cluster = %cluster.config.name, host = %host.addr, healthy = next.healthy, ?outcome, "health changed");
        cluster.recount();
    }
}

/// An answer from `host` carried `x-envoy-immediate-health-check-fail`: its operator
/// failed its health checks (admin `/healthcheck/fail`) and it is going away. As
/// Envoy's router, a health-checked cluster takes that as an active check failure
/// at once: the host leaves the load balancer now, not at its next check, and comes
/// back after `healthy_threshold` passing checks. Called on a worker; the verdict
/// reaches the others as any check's does.
pub fn immediate_fail(cluster: &ClusterRuntime, host: &Host) {
    let Some(check) = &cluster.config.health_check else {
        return;
    };
    let state = *host.health.lock();
    if !state.healthy {
        return;
    }
    let next = transition(
        state,
        Outcome::Failure,
        check.unhealthy_threshold,
        check.healthy_threshold,
    );
    if host.set_health(next) {
        tracing::info!(cluster = %cluster.config.name, host = %host.addr, "host failed its health check at once (x-envoy-immediate-health-check-fail)");
        cluster.recount();
    }
}

/// Runs one check within its `timeout`.
pub async fn run(check: &HealthCheck, cluster: &str, addr: SocketAddr) -> Outcome {
    let attempt = async {
        match &check.kind {
            HealthCheckKind::Http(http) => http_check(http, cluster, addr).await,
            HealthCheckKind::Tcp { send, receive } => tcp_check(send, receive, addr).await,
            HealthCheckKind::Grpc {
                service_name,
                authority,
            } => grpc_check(service_name, authority.as_deref().unwrap_or(cluster), addr).await,
        }
    };
    let outcome = tokio::time::timeout(check.timeout, attempt)
        .await
        .unwrap_or(Outcome::NetworkFailure);
    if outcome != Outcome::Success {
        tracing::debug!(cluster, %addr, ?outcome, "health check failed");
    }
    outcome
}

const USER_AGENT: HeaderValue = HeaderValue::from_static("Envoy/HC");

/// A connected HTTP client for one check: HTTP/1.1 or h2c prior knowledge.
enum Sender {
    Http1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    Http2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// Connects and hands the connection's driver to a task aborted when the guard drops.
async fn connect(addr: SocketAddr, http2: bool) -> Option<(Sender, AbortOnDrop)> {
    let stream = TcpStream::connect(addr).await.ok()?;
    let _ = stream.set_nodelay(true);
    let io = TokioIo::new(stream);
    if http2 {
        let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .ok()?;
        Some((
            Sender::Http2(sender),
            AbortOnDrop(tokio::spawn(conn).abort_handle()),
        ))
    } else {
        let (sender, conn) = hyper::client::conn::http1::handshake(io).await.ok()?;
        Some((
            Sender::Http1(sender),
            AbortOnDrop(tokio::spawn(conn).abort_handle()),
        ))
    }
}

struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Sender {
    async fn send(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> Option<http::Response<hyper::body::Incoming>> {
        match self {
            Sender::Http1(s) => s.send_request(req).await.ok(),
            Sender::Http2(s) => s.send_request(req).await.ok(),
        }
    }
}

/// A request for `path` on `authority`: absolute-form for h2 (`:authority`), origin-form
/// with `Host` for HTTP/1.1.
fn request(
    method: Method,
    authority: &str,
    path: &str,
    http2: bool,
    body: Bytes,
) -> Option<Request<Full<Bytes>>> {
    let builder = match http2 {
        true => Request::builder().uri(format!("http://{authority}{path}")),
        false => Request::builder().uri(path).header(header::HOST, authority),
    };
    builder
        .method(method)
        .header(header::USER_AGENT, USER_AGENT)
        .body(Full::new(body))
        .ok()
}

async fn http_check(check: &HttpHealthCheck, cluster: &str, addr: SocketAddr) -> Outcome {
    let authority = check.host.as_deref().unwrap_or(cluster);
    let Some(mut req) = request(
        Method::GET,
        authority,
        &check.path,
        check.http2,
        Bytes::new(),
    ) else {
        return Outcome::Failure;
    };
    for (name, value) in &check.request_headers_to_add {
        req.headers_mut().append(name.clone(), value.clone());
    }
    let Some((mut sender, _conn)) = connect(addr, check.http2).await else {
        return Outcome::NetworkFailure;
    };
    let Some(resp) = sender.send(req).await else {
        return Outcome::NetworkFailure;
    };
    let status = resp.status().as_u16();
    match check
        .expected_statuses
        .iter()
        .any(|(start, end)| (*start..*end).contains(&status))
    {
        true => Outcome::Success,
        false => Outcome::Failure,
    }
}

/// Connect only when `send` and `receive` are empty; else send, then wait until every
/// `receive` block has arrived, in order (anything may come between them, as Envoy).
async fn tcp_check(send: &[u8], receive: &[Vec<u8>], addr: SocketAddr) -> Outcome {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return Outcome::NetworkFailure;
    };
    if !send.is_empty() && stream.write_all(send).await.is_err() {
        return Outcome::NetworkFailure;
    }
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    while !contains_in_order(&received, receive) {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return Outcome::NetworkFailure,
            Ok(n) => received.extend_from_slice(&buf[..n]),
        }
    }
    Outcome::Success
}

fn contains_in_order(data: &[u8], blocks: &[Vec<u8>]) -> bool {
    let mut rest = data;
    for block in blocks.iter().filter(|b| !b.is_empty()) {
        match rest
            .windows(block.len())
            .position(|w| w == block.as_slice())
        {
            Some(at) => rest = &rest[at + block.len()..],
            None => return false,
        }
    }
    true
}

/// `grpc.health.v1.Health/Check`; `SERVING` (1) is healthy.
async fn grpc_check(service: &str, authority: &str, addr: SocketAddr) -> Outcome {
    let path = "/grpc.health.v1.Health/Check";
    let Some(mut req) = request(Method::POST, authority, path, true, grpc_request(service)) else {
        return Outcome::Failure;
    };
    let headers = req.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(header::TE, HeaderValue::from_static("trailers"));
    let Some((mut sender, _conn)) = connect(addr, true).await else {
        return Outcome::NetworkFailure;
    };
    let Some(resp) = sender.send(req).await else {
        return Outcome::NetworkFailure;
    };
    if resp.status() != StatusCode::OK {
        return Outcome::Failure;
    }
    let head_status = resp.headers().get("grpc-status").cloned();
    let Ok(body) = resp.into_body().collect().await else {
        return Outcome::NetworkFailure;
    };
    let grpc_status = body
        .trailers()
        .and_then(|t| t.get("grpc-status").cloned())
        .or(head_status);
    if grpc_status.as_ref().map(HeaderValue::as_bytes) != Some(b"0") {
        return Outcome::Failure;
    }
    match grpc_serving_status(body.to_bytes()) {
        Some(1) => Outcome::Success,
        _ => Outcome::Failure,
    }
}

/// `HealthCheckRequest { service = 1 }`, length-prefixed.
fn grpc_request(service: &str) -> Bytes {
    let mut message = BytesMut::new();
    if !service.is_empty() {
        message.put_u8(0x0a); // field 1, length-delimited
        put_varint(&mut message, service.len() as u64);
        message.put_slice(service.as_bytes());
    }
    let mut framed = BytesMut::with_capacity(5 + message.len());
    framed.put_u8(0); // not compressed
    framed.put_u32(message.len() as u32);
    framed.put_slice(&message);
    framed.freeze()
}

/// `HealthCheckResponse.status` (field 1, varint) of the first length-prefixed message;
/// 0 (UNKNOWN) when absent. `None` when the bytes are not such a message.
fn grpc_serving_status(mut data: Bytes) -> Option<u64> {
    if data.len() < 5 || data.get_u8() != 0 {
        return None;
    }
    let len = data.get_u32() as usize;
    let mut message = data.get(..len)?;
    let mut status = 0;
    while !message.is_empty() {
        let tag = get_varint(&mut message)?;
        match tag & 7 {
            0 => {
                let value = get_varint(&mut message)?;
                if tag >> 3 == 1 {
                    status = value;
                }
            }
            2 => {
                let skip = usize::try_from(get_varint(&mut message)?).ok()?;
                message = message.get(skip..)?;
            }
            5 => message = message.get(4..)?,
            1 => message = message.get(8..)?,
            _ => return None,
        }
    }
    Some(status)
}

fn put_varint(out: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        out.put_u8(value as u8 | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

fn get_varint(data: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = data.split_first()?;
        *data = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use Outcome::*;

    /// Runs outcomes from `start` with unhealthy_threshold 3, healthy_threshold 2 and
    /// returns `healthy` after each.
    fn run_outcomes(start: HealthState, outcomes: &[Outcome]) -> Vec<bool> {
        let mut state = start;
        outcomes
            .iter()
            .map(|o| {
                state = transition(state, *o, 3, 2);
                state.healthy
            })
            .collect()
    }

    #[test]
    fn transitions_follow_envoy() {
        let healthy = HealthState::initial(false);
        let pending = HealthState::initial(true);
        let cases: &[(&str, HealthState, &[Outcome], &[bool])] = &[
            (
                "first success marks a pending host healthy at once",
                pending,
                &[Success],
                &[true],
            ),
            (
                "a pending host that fails stays unhealthy",
                pending,
                &[NetworkFailure, Success, Success],
                &[false, false, true],
            ),
            (
                "network failures need the threshold",
                healthy,
                &[NetworkFailure, NetworkFailure, NetworkFailure],
                &[true, true, false],
            ),
            (
                "a success resets the failure run",
                healthy,
                &[
                    NetworkFailure,
                    NetworkFailure,
                    Success,
                    NetworkFailure,
                    NetworkFailure,
                ],
                &[true, true, true, true, true],
            ),
            (
                "an active failure is immediate",
                healthy,
                &[Failure],
                &[false],
            ),
            (
                "recovery needs healthy_threshold successes",
                healthy,
                &[Failure, Success, Success],
                &[false, false, true],
            ),
            (
                "a failure resets the success run",
                healthy,
                &[Failure, Success, NetworkFailure, Success, Success],
                &[false, false, false, false, true],
            ),
        ];
        for (name, start, outcomes, want) in cases {
            assert_eq!(&run_outcomes(*start, outcomes), want, "{name}");
        }
        assert!(!transition(pending, Success, 3, 2).pending);
    }

    #[test]
    fn grpc_messages_round_trip_by_hand() {
        let req = grpc_request("svc");
        assert_eq!(&req[..], &[0, 0, 0, 0, 5, 0x0a, 3, b's', b'v', b'c']);
        assert_eq!(&grpc_request("")[..], &[0, 0, 0, 0, 0]);
        let serving = Bytes::from_static(&[0, 0, 0, 0, 2, 0x08, 1]);
        assert_eq!(grpc_serving_status(serving), Some(1));
        let empty = Bytes::from_static(&[0, 0, 0, 0, 0]);
        assert_eq!(grpc_serving_status(empty), Some(0));
        assert_eq!(grpc_serving_status(Bytes::from_static(&[0, 0])), None);
    }

    #[test]
    fn tcp_receive_blocks_match_in_order() {
        let blocks = vec![b"ab".to_vec(), b"cd".to_vec()];
        assert!(contains_in_order(b"xxabyycd", &blocks));
        assert!(!contains_in_order(b"cdab", &blocks));
        assert!(contains_in_order(b"", &[]));
    }
}
