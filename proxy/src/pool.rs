//! Upstream connection pools, one set per worker thread.
//!
//! Workers are current-thread runtimes, so a pool is plain thread-local data: no lock,
//! no atomics, no cross-thread hand-off. HTTP/1.1 connections are reused LIFO (the
//! most recently used socket is the one least likely to have been closed by the
//! upstream); HTTP/2 keeps one multiplexed connection per host.
//!
//! A request that finds no idle HTTP/1.1 connection while the cluster is at
//! `max_connections` waits in its worker's queue for the host (bounded by
//! `max_pending_requests`, like any request waiting for a connection) until a
//! connection is released or closes, or its timeout ends it — Envoy's pending request.
//!
//! Keep-alive races ("503 upstream connect error" after the upstream closed an idle
//! connection just as we reused it) are answered by sending the request again on the
//! next connection when it is idempotent, has no body, and no response byte came back.
//!
//! HTTP/1.1 goes through Strait's own codec ([`h1_client`]): the request's task writes
//! and reads the socket itself, and an idle connection is the socket alone. hyper's
//! client stays for upgrades and for requests parsed by hyper's HTTP/1 server (only
//! hyper's client writes back the header case map such a request carries); its
//! connections run in a task each, and one idle in the pool for `PARK_AFTER` is
//! parked: its hyper state (read and write buffers, the dispatch channel's blocks:
//! ~45 KB) and its task are freed, and the pool keeps the bare socket, which either
//! codec can take up again (no I/O). The worker's heartbeat parks connections,
//! releases the read buffers of idle own-codec ones, and drops idle sockets the
//! upstream closed (they turned readable) or that outlived the cluster's idle timeout.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::future::{FutureExt as _, Shared};
use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2, TrySendError};
use hyper_util::rt::{TokioIo, TokioTimer};
use strait_xds::model::RoutingPriority;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::body::RequestBody;
use crate::breaker::Slot;
use crate::cluster::{ClusterRuntime, Host};
use crate::error::{ConnectCause, ProxyError, ResetReason};
use crate::h1::HeaderCase;
use crate::h1_client;
use crate::runtime::FastMap;

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct PoolKey {
    cluster: u64,
    addr: SocketAddr,
    h2: bool,
    /// As in Envoy, each routing priority has its own connections (and breakers).
    priority: RoutingPriority,
}

/// A request on its way upstream. Boxed: it passes through half a dozen async
/// functions (router, attempts, pool, codec), each copying its arguments into its
/// future, and ~300 bytes inline cost more in copies than one allocation.
pub type UpstreamRequest = Box<Upstream>;

/// A request for an upstream, and how its client cased the header names when Strait's
/// HTTP/1.1 server codec parsed it, for Strait's HTTP/1.1 client to write them back
/// so (H1 → H1 keeps header case). The case rides beside the head rather than in its
/// `http::Extensions`: a first extension costs the map's box, its table and the
/// value's box, and every read a hash lookup (430 instructions and 48 code misses per
/// HTTP/1.1 request from a client that sends `Host:`, `perf/instructions --cache`).
pub struct Upstream {
    pub request: Request<RequestBody>,
    pub case: Option<HeaderCase>,
}

impl Upstream {
    /// Ends a head nobody needs any more: its header map serves the worker's next
    /// request (`strait_filters::header_maps`). Boxed, as heads travel: not moved out.
    pub(crate) fn recycle(mut self: Box<Self>) {
        crate::headers::recycle(std::mem::take(self.request.headers_mut()));
    }

    /// A copy of the head (extensions and header case included), without the body.
    pub(crate) fn copy_head(&self) -> Upstream {
        Upstream {
            request: copy_head(&self.request),
            case: self.case.clone(),
        }
    }
}

impl From<Request<RequestBody>> for Upstream {
    fn from(request: Request<RequestBody>) -> Upstream {
        Upstream {
            request,
            case: None,
        }
    }
}

impl std::ops::Deref for Upstream {
    type Target = Request<RequestBody>;

    fn deref(&self) -> &Request<RequestBody> {
        &self.request
    }
}

impl std::ops::DerefMut for Upstream {
    fn deref_mut(&mut self) -> &mut Request<RequestBody> {
        &mut self.request
    }
}

type H2Sender = http2::SendRequest<RequestBody>;

/// What a connection's task and the pool share. Behind a pointer: it rides along in
/// every lease, and a `SocketAddr` would grow what each request moves by 32 bytes
/// (measured: ~480 instructions of `memcpy` per request).
struct ConnInfo {
    /// The local address the connection was opened from (plugins read it as
    /// `upstream.local_address`).
    local: Option<SocketAddr>,
    /// Set by the pool when it takes an idle HTTP/1.1 connection out to park it: how
    /// long it had been idle, in ms, plus one (0: not parked).
    park: AtomicU64,
    /// The cluster's idle timeout (`common_http_protocol_options.idle_timeout`) when
    /// the connection opened: a parked socket is dropped once idle that long.
    idle_timeout: Option<Duration>,
}

type Local = Arc<ConnInfo>;

fn conn_info(stream: &TcpStream, cluster: &ClusterRuntime) -> Local {
    Arc::new(ConnInfo {
        local: stream.local_addr().ok(),
        park: AtomicU64::new(0),
        idle_timeout: cluster.config.idle_timeout,
    })
}

/// How long an HTTP/1.1 connection stays idle in the pool with its codec before it is
/// parked (give or take the heartbeat's 250 ms).
const PARK_AFTER: Duration = Duration::from_secs(1);

/// An HTTP/1.1 connection for Strait's own codec (`h1_client`): the socket and its
/// read buffer. In the pool it is idle; lent to a request it travels inside the
/// response body, whose end gives it back ([`H1Conn::release`]). An idle one holds no
/// task and no waker; its buffer is released after `PARK_AFTER`.
pub(crate) struct H1Conn {
    pub(crate) stream: TcpStream,
    /// Bytes read and not yet parsed; empty between responses.
    pub(crate) read: BytesMut,
    /// The last response head's header names.
    pub(crate) names: crate::h1::NameCache,
    key: PoolKey,
    info: Local,
    active: ActiveConn,
}

impl H1Conn {
    /// Gives the connection to the oldest request queued for one, else to the pool.
    pub(crate) fn release(mut self: Box<Self>) {
        // A buffer grown for a large body is not kept for the next small one.
        if self.read.capacity() > 16 * 1024 {
            self.read = BytesMut::new();
        }
        let key = self.key;
        // On a thread without pools (the worker is going away) the connection closes.
        let _ = POOLS.try_with(|p| {
            let mut p = p.borrow_mut();
            let entry = p.entry(key).or_default();
            if let Some(Handoff::Own(conn)) = wake(entry, Handoff::Own(self)) {
                entry.idle.push(Idle {
                    conn,
                    since: crate::clock::now(),
                });
            }
        });
    }
}

/// An idle connection in the pool, and since when.
struct Idle {
    conn: Box<H1Conn>,
    since: Instant,
}

impl Idle {
    fn expired(&self, now: Instant) -> bool {
        self.conn
            .info
            .idle_timeout
            .is_some_and(|t| now.saturating_duration_since(self.since) >= t)
    }

    /// Nothing arrived: an idle HTTP/1.1 upstream has nothing to say, so a readable
    /// socket is a close (or a protocol error). No syscall while tokio has seen no
    /// readiness.
    fn quiet(&self) -> bool {
        matches!(self.conn.stream.try_read(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

/// A pooled HTTP/1.1 connection, and its local address.
struct H1 {
    sender: http1::SendRequest<RequestBody>,
    local: Local,
}

/// The host's multiplexed HTTP/2 connection, and its local address.
#[derive(Clone)]
struct H2 {
    sender: H2Sender,
    local: Local,
}

/// An HTTP/2 connection being opened; streams that arrive meanwhile wait for it
/// instead of opening their own.
type Connecting = Shared<Pin<Box<dyn Future<Output = Result<H2, ProxyError>> + Send>>>;

#[derive(Default)]
struct Entry {
    /// Idle connections with their codec, oldest first (checkout takes the newest).
    idle_h1: Vec<(H1, Instant)>,
    /// Idle connections without hyper's codec (Strait's own codec's, and hyper's
    /// parked ones), oldest first.
    idle: Vec<Idle>,
    h2: Option<H2>,
    h2_connecting: Option<Connecting>,
    /// This worker's connections to the host, opening or open.
    connections: usize,
    /// Requests queued for a connection while the cluster is at `max_connections`,
    /// oldest first.
    waiters: VecDeque<oneshot::Sender<Handoff>>,
}

/// What a queued request is woken with.
enum Handoff {
    /// A connection released by the response it served.
    Connection(H1),
    /// The same, for Strait's own codec.
    Own(Box<H1Conn>),
    /// A connection closed: there may be room for a new one.
    Closed,
}

/// Wakes the oldest queued request of `entry` that is still waiting with `handoff`;
/// gives the handoff back when nobody waits.
fn wake(entry: &mut Entry, mut handoff: Handoff) -> Option<Handoff> {
    while let Some(waiter) = entry.waiters.pop_front() {
        match waiter.send(handoff) {
            Ok(()) => return None,
            // That request gave up (its timeout, or its client went away).
            Err(back) => handoff = back,
        }
    }
    Some(handoff)
}

thread_local! {
    static POOLS: RefCell<FastMap<PoolKey, Entry>> = RefCell::new(FastMap::default());
}

/// An HTTP/1.1 connection lent to one response; it goes back to its worker's pool
/// when the response body has been read to the end.
pub struct Lease {
    key: PoolKey,
    /// The HTTP/1.1 connection to give back; `None` for an HTTP/2 stream, whose
    /// connection stays in the pool, shared.
    sender: Option<http1::SendRequest<RequestBody>>,
    local: Local,
}

impl Lease {
    /// Gives the connection to the oldest request queued for one, else to the pool.
    pub fn release(self) {
        let Some(sender) = self.sender.filter(|s| !s.is_closed()) else {
            return;
        };
        let conn = H1 {
            sender,
            local: self.local,
        };
        POOLS.with(|p| {
            let mut p = p.borrow_mut();
            let entry = p.entry(self.key).or_default();
            if let Some(Handoff::Connection(conn)) = wake(entry, Handoff::Connection(conn)) {
                entry.idle_h1.push((conn, crate::clock::now()));
            }
        });
    }

    /// The local address of the connection the response came on.
    pub fn local_address(&self) -> Option<SocketAddr> {
        self.local.local
    }
}

/// Parks this worker's HTTP/1.1 connections idle for `PARK_AFTER` (hyper's lose their
/// codec and task, Strait's own their read buffer) and drops idle ones that the
/// upstream closed or that expired; run by the worker's heartbeat.
pub fn park_idle() {
    let now = Instant::now();
    let mut parking = Vec::new();
    let mut closing = Vec::new();
    let mut released = false;
    POOLS.with(|p| {
        for entry in p.borrow_mut().values_mut() {
            let old = entry
                .idle_h1
                .partition_point(|(_, since)| now.saturating_duration_since(*since) >= PARK_AFTER);
            let mut busy = Vec::new();
            for (conn, since) in entry.idle_h1.drain(..old) {
                // Only a codec waiting for its next request (none still being written,
                // say) is taken apart; the others are looked at again next time.
                if !conn.sender.is_ready() && !conn.sender.is_closed() {
                    busy.push((conn, since));
                    continue;
                }
                let idle = now.saturating_duration_since(since).as_millis() as u64;
                conn.local.park.store(idle + 1, Ordering::Relaxed);
                parking.push(conn);
            }
            entry.idle_h1.splice(..0, busy);
            closing.extend(
                entry
                    .idle
                    .extract_if(.., |idle| idle.expired(now) || !idle.quiet()),
            );
            for idle in &mut entry.idle {
                let old = now.saturating_duration_since(idle.since) >= PARK_AFTER;
                if old && idle.conn.read.capacity() > 0 {
                    idle.conn.read = BytesMut::new();
                    idle.conn.names = Default::default();
                    idle.conn.active.idle_released.inc();
                    released = true;
                }
            }
        }
    });
    if released {
        crate::conn::note_released();
    }
    // Outside the pool's borrow: a closed connection's guard wakes queued requests.
    // Dropping a sender wakes its connection's task, which sees the park mark and
    // hands its socket back (`drive_h1`).
    drop(parking);
    drop(closing);
}

/// The response body of an upstream exchange: hyper's (HTTP/2, upgrades, requests
/// parsed by hyper's HTTP/1 server) or Strait's own HTTP/1.1 codec's.
pub enum UpstreamBody {
    Hyper(Incoming),
    H1(h1_client::ResponseBody),
}

impl UpstreamBody {
    /// The response head's names as the upstream wrote them, when Strait's HTTP/1.1
    /// codec read it.
    pub(crate) fn header_case(&self) -> Option<&crate::h1::HeaderCase> {
        match self {
            UpstreamBody::H1(b) => b.header_case(),
            UpstreamBody::Hyper(_) => None,
        }
    }
}

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            UpstreamBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            UpstreamBody::H1(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Hyper(b) => b.is_end_stream(),
            UpstreamBody::H1(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            UpstreamBody::Hyper(b) => b.size_hint(),
            UpstreamBody::H1(b) => b.size_hint(),
        }
    }
}

/// What a send gives back: the response and where it came from.
pub type Sent = Result<(Response<UpstreamBody>, Option<Lease>), ProxyError>;

/// Sends `req` to `host`, on a pooled connection when one is idle.
///
/// `upgrade` asks for a fresh HTTP/1.1 connection that is never pooled (its socket is
/// handed over to the upgraded protocol).
pub async fn send(
    cluster: &Arc<ClusterRuntime>,
    host: &Arc<Host>,
    h2: bool,
    upgrade: bool,
    priority: RoutingPriority,
    req: UpstreamRequest,
) -> Sent {
    send_signalled(
        cluster,
        host,
        h2,
        upgrade,
        priority,
        req,
        Signals::default(),
    )
    .await
}

/// Where a request's head goes once its exchange is over (answered, failed, or
/// dropped mid-way), for a retry to send again: the head itself when Strait's codec
/// sent it (it writes from a borrow), a copy when hyper's consumed it.
pub type HeadBack<'a> = Option<&'a mut Option<UpstreamRequest>>;

/// What an attempt hears back from [`send_signalled`].
#[derive(Default)]
pub struct Signals<'a> {
    /// Set once a connection is ready for the request and it is about to be written
    /// (Envoy's `onPoolReady`, where the per-try timer starts): not while connecting
    /// or queued for a connection.
    pub ready: Option<&'a AtomicBool>,
    pub back: HeadBack<'a>,
}

/// A request lent to an exchange: whatever happens, its head ends up in `back`.
struct Lent<'a> {
    req: Option<UpstreamRequest>,
    back: HeadBack<'a>,
}

impl Lent<'_> {
    fn get(&mut self) -> &mut Upstream {
        self.req
            .as_mut()
            .expect("a lent request is present until given up")
    }

    /// The request, for a codec that consumes it (hyper's); `back` gets a copy of its
    /// head.
    fn give_up(&mut self) -> Request<RequestBody> {
        let req = self.req.take().expect("a lent request is given up once");
        if let Some(back) = self.back.as_deref_mut() {
            *back = Some(Box::new(req.copy_head()));
        }
        req.request
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        match (self.req.take(), self.back.as_deref_mut()) {
            (Some(req), Some(back)) => *back = Some(req),
            // Nobody wants the head back.
            (Some(req), None) => req.recycle(),
            (None, _) => {}
        }
    }
}

/// [`send`], with [`Signals`] for the attempt.
pub async fn send_signalled(
    cluster: &Arc<ClusterRuntime>,
    host: &Arc<Host>,
    h2: bool,
    upgrade: bool,
    priority: RoutingPriority,
    req: UpstreamRequest,
    signals: Signals<'_>,
) -> Sent {
    let Signals { ready, back } = signals;
    let mut lent = Lent {
        req: Some(req),
        back,
    };
    let key = PoolKey {
        cluster: cluster.id,
        addr: host.addr,
        h2,
        priority,
    };
    // Cold paths are boxed (here, the connect below, the router's filter phase): an
    // async fn's future is as big as its biggest await, and the request future is
    // moved whole into hyper's dispatcher (and into a task per HTTP/2 stream), so
    // every byte of it is copied on every request.
    if h2 {
        return Box::pin(send_h2(cluster, host, key, lent.give_up(), ready)).await;
    }
    // A request parsed by hyper's HTTP/1 server (an upgrade's connection) carries
    // hyper's header case map, an extension only hyper's client can write back: it
    // goes through hyper's client, as do upgrades. Everything else takes Strait's
    // own codec, which writes back the case Strait's server codec recorded.
    let hyper_case = !lent.get().extensions().is_empty();
    if upgrade || hyper_case {
        // Boxed: hyper's client future (~1.9 KiB) would otherwise make every
        // request's future that much larger, used or not.
        let hyper = send_hyper(cluster, host, key, upgrade, lent.give_up(), ready);
        return Box::pin(hyper).await;
    }
    send_own(cluster, host, key, &mut lent, ready).await
}

/// Sends on Strait's own HTTP/1.1 codec ([`h1_client`]).
async fn send_own(
    cluster: &Arc<ClusterRuntime>,
    host: &Arc<Host>,
    key: PoolKey,
    req: &mut Lent<'_>,
    ready: Option<&AtomicBool>,
) -> Sent {
    loop {
        let (conn, reused) = match checkout_own(key) {
            Some(conn) => (Pooled::Own(conn), true),
            None => {
                // Waiting for a new connection, or in the queue for one, is Envoy's
                // "pending".
                let _pending = pending(cluster, key.priority)?;
                Box::pin(connection_h1(cluster, host, key, false, true)).await?
            }
        };
        if let Some(ready) = ready {
            ready.store(true, Ordering::Relaxed);
        }
        let conn = match conn {
            Pooled::Own(conn) => conn,
            // Handed over from hyper's side of the pool under `max_connections`.
            // Rare, and boxed for the same reason as `send_hyper`.
            Pooled::Hyper(conn) => {
                return Box::pin(send_on_hyper(key, conn, req.give_up())).await;
            }
        };
        let local = conn.info.clone();
        match h1_client::send(conn, req.get(), reused).await {
            Ok(resp) => {
                let lease = Lease {
                    key,
                    sender: None,
                    local,
                };
                return Ok((resp.map(UpstreamBody::H1), Some(lease)));
            }
            Err(h1_client::Failure::Reset(true)) => {
                // The keep-alive race: the upstream closed the pooled connection as it
                // was reused. Sent again on the next one (or a new one).
                cluster.stats.upstream_rq_retry.inc();
            }
            Err(e) => {
                // The local reply says `reset reason: …` in Envoy's words; what exactly
                // went wrong, and with which host, goes to the log.
                tracing::debug!(upstream = %host.addr, error = %e, "upstream HTTP/1.1 exchange failed");
                return Err(own_error(&e));
            }
        }
    }
}

/// The reset an own-codec failure stands for, in Envoy's words.
fn own_error(e: &h1_client::Failure) -> ProxyError {
    let reason = match e {
        h1_client::Failure::Protocol(_) => ResetReason::ProtocolError,
        _ => ResetReason::ConnectionTermination,
    };
    ProxyError::UpstreamReset { reason }
}

/// Sends one request on a hyper HTTP/1.1 connection.
async fn send_on_hyper(key: PoolKey, mut conn: H1, req: Request<RequestBody>) -> Sent {
    if conn.sender.ready().await.is_err() {
        return Err(ProxyError::UpstreamReset {
            reason: ResetReason::ConnectionTermination,
        });
    }
    let sent = conn.sender.try_send_request(req).await;
    answered(sent, key, Some(conn.sender), conn.local)
}

/// What hyper's client answered, with the lease for it: the HTTP/1.1 connection to
/// give back (`sender`), or for HTTP/2 none.
fn answered(
    sent: Result<Response<Incoming>, TrySendError<Request<RequestBody>>>,
    key: PoolKey,
    sender: Option<http1::SendRequest<RequestBody>>,
    local: Local,
) -> Sent {
    match sent {
        Ok(resp) => Ok((
            resp.map(UpstreamBody::Hyper),
            Some(Lease { key, sender, local }),
        )),
        Err(e) => Err(reset_error(e.error())),
    }
}

/// Sends on hyper's HTTP/1.1 client: upgrades, and requests that carry hyper's header
/// case map.
async fn send_hyper(
    cluster: &Arc<ClusterRuntime>,
    host: &Arc<Host>,
    key: PoolKey,
    upgrade: bool,
    req: Request<RequestBody>,
    ready: Option<&AtomicBool>,
) -> Sent {
    let idle_timeout = cluster.config.idle_timeout;
    let checked_out = match upgrade {
        true => None,
        false => match checkout_h1(key, idle_timeout) {
            Checkout::Live(conn, idle) => Some((conn, idle)),
            // Only then the boxed (cold) wait for a new codec on an idle socket.
            Checkout::Parked => Box::pin(unpark(key)).await,
            Checkout::Empty => None,
        },
    };
    let (mut reused, idle_for) = checked_out.map_or((None, Duration::ZERO), |(s, d)| (Some(s), d));
    // A body-less idempotent request can be replayed if a reused connection turns out
    // to be dead; keep its head for that. Upstreams close idle connections on timers of
    // a second or more (and say `Connection: close` otherwise), so a connection idle for
    // less than `RACE_IDLE` is not at risk and the copy is not worth making.
    let replay = match (&reused, req.body().is_empty(), idempotent(req.method())) {
        (Some(_), true, true) if idle_for >= RACE_IDLE => Some(copy_head(&req)),
        _ => None,
    };
    let mut req = Some(req);
    loop {
        let (mut conn, was_reused) = match reused.take() {
            Some(s) => (s, true),
            None => {
                let _pending = pending(cluster, key.priority)?;
                match Box::pin(connection_h1(cluster, host, key, upgrade, false)).await? {
                    (Pooled::Hyper(conn), reused) => (conn, reused),
                    (Pooled::Own(conn), _) => match hyper_codec(conn, upgrade).await {
                        Some(conn) => (conn, true),
                        None => continue,
                    },
                }
            }
        };
        if was_reused && conn.sender.ready().await.is_err() {
            // Closed while idle: the request was not written, use a new connection.
            continue;
        }
        let this = req.take().expect("request present until sent");
        if let Some(ready) = ready {
            ready.store(true, Ordering::Relaxed);
        }
        match conn.sender.try_send_request(this).await {
            Ok(resp) => {
                let lease = (!upgrade).then_some(Lease {
                    key,
                    sender: Some(conn.sender),
                    local: conn.local,
                });
                return Ok((resp.map(UpstreamBody::Hyper), lease));
            }
            Err(mut e) => {
                if let Some(back) = e.take_message() {
                    // Never written: safe to send on another connection.
                    req = Some(back);
                    continue;
                }
                if was_reused {
                    if let Some(head) = &replay {
                        cluster.stats.upstream_rq_retry.inc();
                        req = Some(copy_head(head));
                        continue;
                    }
                }
                return Err(reset_error(e.error()));
            }
        }
    }
}

async fn send_h2(
    cluster: &Arc<ClusterRuntime>,
    host: &Arc<Host>,
    key: PoolKey,
    req: Request<RequestBody>,
    ready: Option<&AtomicBool>,
) -> Sent {
    let mut conn = h2_sender(cluster, host, key).await?;
    if conn.sender.ready().await.is_err() {
        // The connection went away between checkout and use: open the next one.
        POOLS.with(|p| p.borrow_mut().entry(key).or_default().h2 = None);
        conn = h2_sender(cluster, host, key).await?;
        conn.sender.ready().await.map_err(|e| reset_error(&e))?;
    }
    if let Some(ready) = ready {
        ready.store(true, Ordering::Relaxed);
    }
    // Nothing to give back: the lease only tells where the stream went out.
    let sent = conn.sender.try_send_request(req).await;
    answered(sent, key, None, conn.local)
}

/// The host's multiplexed connection: the pooled one, the one being opened, or a new one.
async fn h2_sender(
    cluster: &Arc<ClusterRuntime>,
    host: &Arc<Host>,
    key: PoolKey,
) -> Result<H2, ProxyError> {
    let connecting = POOLS.with(|p| {
        let mut p = p.borrow_mut();
        let entry = p.entry(key).or_default();
        if let Some(s) = entry.h2.as_ref().filter(|s| !s.sender.is_closed()) {
            return Err(s.clone());
        }
        entry.h2 = None;
        let connecting = entry.h2_connecting.get_or_insert_with(|| {
            let (cluster, host) = (cluster.clone(), host.clone());
            let fut: Pin<Box<dyn Future<Output = _> + Send>> =
                Box::pin(async move { connect_h2(&cluster, &host, key.priority).await });
            fut.shared()
        });
        Ok(connecting.clone())
    });
    let connecting = match connecting {
        Err(pooled) => return Ok(pooled),
        Ok(c) => c,
    };
    let _pending = pending(cluster, key.priority)?;
    let result = connecting.clone().await;
    POOLS.with(|p| {
        let mut p = p.borrow_mut();
        let entry = p.entry(key).or_default();
        if entry
            .h2_connecting
            .as_ref()
            .is_some_and(|c| c.ptr_eq(&connecting))
        {
            entry.h2_connecting = None;
            if let Ok(s) = &result {
                entry.h2 = Some(s.clone());
            }
        }
    });
    result
}

/// A connection for a request that found none idle: a new one, or, while the cluster
/// is at `max_connections` (or the host at `per_host_thresholds.max_connections`),
/// the next one this worker's pool for the host frees up (a
/// released connection, or room left by a closed one). As in Envoy, a worker with no
/// connection to the host opens one whatever the limit, so a queue always drains.
/// `true` with a connection that was handed over (it has served before). `own`: a new
/// connection is for Strait's own codec, else for hyper's.
async fn connection_h1(
    cluster: &ClusterRuntime,
    host: &Arc<Host>,
    key: PoolKey,
    upgrade: bool,
    own: bool,
) -> Result<(Pooled, bool), ProxyError> {
    let per_host = cluster.config.circuit_breakers[match key.priority {
        RoutingPriority::High => 1,
        RoutingPriority::Default => 0,
    }]
    .max_connections_per_host;
    loop {
        // `per_host_thresholds.max_connections`: as Envoy's `canCreateConnection`,
        // the host's open connections (all workers) against the limit.
        let host_full = per_host.is_some_and(|max| {
            let open = host.cx_active.load(Ordering::Relaxed);
            open + host.cx_connecting.load(Ordering::Relaxed) >= u64::from(max)
        });
        let slot = match host_full {
            true => None,
            false => cluster.breakers(key.priority).connections.try_acquire(),
        };
        if slot.is_none() {
            cluster.stats.upstream_cx_overflow.inc();
        }
        let queued = POOLS.with(|p| {
            let mut p = p.borrow_mut();
            let entry = p.entry(key).or_default();
            if slot.is_some() || entry.connections == 0 {
                entry.connections += 1;
                return None;
            }
            let (tx, rx) = oneshot::channel();
            entry.waiters.push_back(tx);
            Some(rx)
        });
        let Some(rx) = queued else {
            let counted = KeyConnection { key };
            let _connecting = per_host.map(|_| HostConnecting::new(host));
            let conn = connect_h1(cluster, host, slot, counted, upgrade, own).await?;
            return Ok((conn, false));
        };
        match rx.await {
            Ok(Handoff::Connection(conn)) => return Ok((Pooled::Hyper(conn), true)),
            Ok(Handoff::Own(conn)) => return Ok((Pooled::Own(conn), true)),
            // A connection closed, or the pool went away: try again.
            Ok(Handoff::Closed) | Err(_) => continue,
        }
    }
}

/// Counts a connection being opened to a host with a per-host limit, until it is
/// open (then `cx_active` counts it) or failed.
struct HostConnecting(Arc<Host>);

impl HostConnecting {
    fn new(host: &Arc<Host>) -> HostConnecting {
        host.cx_connecting.fetch_add(1, Ordering::Relaxed);
        HostConnecting(host.clone())
    }
}

impl Drop for HostConnecting {
    fn drop(&mut self) {
        self.0.cx_connecting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts a connection in its worker's pool entry until dropped; a closed connection
/// wakes a queued request, which may open the next one.
struct KeyConnection {
    key: PoolKey,
}

impl Drop for KeyConnection {
    fn drop(&mut self) {
        // `try_with`: a parked connection may be dropped with the pool itself, when
        // the worker thread exits.
        let _ = POOLS.try_with(|p| {
            let mut p = p.borrow_mut();
            if let Some(entry) = p.get_mut(&self.key) {
                entry.connections = entry.connections.saturating_sub(1);
                wake(entry, Handoff::Closed);
            }
        });
    }
}

/// How long a connection must have been idle before a request on it keeps a copy for
/// the keep-alive race retry.
const RACE_IDLE: Duration = Duration::from_millis(250);

/// A connection for one request: hyper's, or Strait's own codec's.
enum Pooled {
    Hyper(H1),
    Own(Box<H1Conn>),
}

/// What the pool has for a request on hyper's codec.
enum Checkout {
    /// The most recently used idle connection with its codec, and how long it has
    /// been idle.
    Live(H1, Duration),
    /// No such connection, but idle sockets (see [`unpark`]).
    Parked,
    Empty,
}

fn checkout_h1(key: PoolKey, idle_timeout: Option<Duration>) -> Checkout {
    POOLS.with(|p| {
        let mut p = p.borrow_mut();
        let Some(entry) = p.get_mut(&key) else {
            return Checkout::Empty;
        };
        while let Some((conn, since)) = entry.idle_h1.pop() {
            let idle = since.elapsed();
            let expired = idle_timeout.is_some_and(|t| idle >= t);
            if !expired && !conn.sender.is_closed() {
                return Checkout::Live(conn, idle);
            }
        }
        match entry.idle.is_empty() {
            true => Checkout::Empty,
            false => Checkout::Parked,
        }
    })
}

/// The most recently used idle connection for Strait's own codec that is still good.
fn checkout_own(key: PoolKey) -> Option<Box<H1Conn>> {
    let now = crate::clock::now();
    loop {
        let idle = POOLS.with(|p| p.borrow_mut().get_mut(&key)?.idle.pop())?;
        // Checked (and a bad one dropped) outside the pool's borrow: a closed
        // connection's guard wakes queued requests.
        if !idle.expired(now) && idle.quiet() {
            return Some(idle.conn);
        }
    }
}

/// The most recently idle socket that is still good, with a new hyper codec, and how
/// long it has been idle.
async fn unpark(key: PoolKey) -> Option<(H1, Duration)> {
    loop {
        let idle = POOLS.with(|p| p.borrow_mut().get_mut(&key)?.idle.pop())?;
        let now = Instant::now();
        if idle.expired(now) || !idle.quiet() {
            continue;
        }
        let since = idle.since;
        let Some(h1) = hyper_codec(idle.conn, false).await else {
            continue;
        };
        return Some((h1, now.saturating_duration_since(since)));
    }
}

/// A hyper codec on a connection of Strait's own (no I/O): for a request that needs
/// hyper's client and found only such a connection.
async fn hyper_codec(conn: Box<H1Conn>, upgrade: bool) -> Option<H1> {
    let H1Conn {
        stream,
        read,
        key,
        info,
        active,
        ..
    } = *conn;
    if !read.is_empty() {
        return None;
    }
    let (sender, conn) = h1_builder().handshake(TokioIo::new(stream)).await.ok()?;
    info.park.store(0, Ordering::Relaxed);
    match upgrade {
        true => spawn_upgradable(conn, active),
        false => drive_h1(conn, key, info.clone(), active),
    }
    Some(H1 {
        sender,
        local: info,
    })
}

/// A place under the `max_pending_requests` breaker for a request that waits for a new
/// connection; the overflow is counted and answered as Envoy does.
fn pending(cluster: &ClusterRuntime, priority: RoutingPriority) -> Result<Slot, ProxyError> {
    let stats = &cluster.stats;
    stats.upstream_rq_pending_total.inc();
    cluster
        .breakers(priority)
        .pending
        .try_acquire()
        .ok_or_else(|| {
            stats.upstream_rq_pending_overflow.inc();
            ProxyError::Overflow
        })
}

/// Opens a TCP connection; `slot` is its place under `max_connections` (`None` for
/// the one connection a host may have beyond the limit), held as long as it lives.
async fn connect(
    cluster: &ClusterRuntime,
    host: &Host,
    slot: Option<Slot>,
) -> Result<(TcpStream, Option<Slot>), ProxyError> {
    let stats = &cluster.stats;
    let connect = TcpStream::connect(host.addr);
    let stream = match tokio::time::timeout(cluster.config.connect_timeout, connect).await {
        Ok(Ok(s)) => {
            crate::outlier::report_connect(cluster, host, true);
            s
        }
        Ok(Err(e)) => {
            stats.upstream_cx_connect_fail.inc();
            host.cx_connect_fail.fetch_add(1, Ordering::Relaxed);
            crate::outlier::report_connect(cluster, host, false);
            return Err(ProxyError::ConnectFailure {
                reason: format!("delayed connect error: {}", io_reason(&e)),
                cause: ConnectCause::of(&e),
            });
        }
        Err(_) => {
            stats.upstream_cx_connect_fail.inc();
            stats.upstream_cx_connect_timeout.inc();
            host.cx_connect_fail.fetch_add(1, Ordering::Relaxed);
            crate::outlier::report_connect(cluster, host, false);
            return Err(ProxyError::ConnectFailure {
                reason: "connection timeout".into(),
                cause: ConnectCause::Timeout,
            });
        }
    };
    let _ = stream.set_nodelay(true);
    stats.upstream_cx_total.inc();
    Ok((stream, slot))
}

/// Counts a connection as active and holds its place under `max_connections` (and,
/// for HTTP/1.1, in its worker's pool entry) until its task ends.
struct ActiveConn {
    cluster_gauge: crate::stats::Gauge,
    /// `upstream_cx_idle_released`: the connection was parked.
    idle_released: crate::stats::Counter,
    host: Arc<Host>,
    _slot: Option<Slot>,
    _counted: Option<KeyConnection>,
}

impl ActiveConn {
    fn new(
        cluster: &ClusterRuntime,
        host: &Arc<Host>,
        slot: Option<Slot>,
        counted: Option<KeyConnection>,
    ) -> ActiveConn {
        cluster.stats.upstream_cx_active.inc();
        host.cx_active.fetch_add(1, Ordering::Relaxed);
        ActiveConn {
            cluster_gauge: cluster.stats.upstream_cx_active.clone(),
            idle_released: cluster.stats.upstream_cx_idle_released.clone(),
            host: host.clone(),
            _slot: slot,
            _counted: counted,
        }
    }
}

impl Drop for ActiveConn {
    fn drop(&mut self) {
        self.cluster_gauge.dec();
        self.host.cx_active.fetch_sub(1, Ordering::Relaxed);
    }
}

fn h1_builder() -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder.preserve_header_case(true);
    builder
}

/// A new HTTP/1.1 connection: for Strait's own codec (`own`), else with hyper's,
/// where one for an upgrade keeps hyper's upgrade support and is never pooled, so
/// never parked.
async fn connect_h1(
    cluster: &ClusterRuntime,
    host: &Arc<Host>,
    slot: Option<Slot>,
    counted: KeyConnection,
    upgrade: bool,
    own: bool,
) -> Result<Pooled, ProxyError> {
    let (stream, slot) = connect(cluster, host, slot).await?;
    let local = conn_info(&stream, cluster);
    let key = counted.key;
    if own {
        let active = ActiveConn::new(cluster, host, slot, Some(counted));
        // Boxed once for its life: it moves between the pool and its responses as a
        // pointer.
        return Ok(Pooled::Own(Box::new(H1Conn {
            stream,
            read: BytesMut::new(),
            names: Default::default(),
            key,
            info: local,
            active,
        })));
    }
    let (sender, conn) = h1_builder()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| reset_error(&e))?;
    let active = ActiveConn::new(cluster, host, slot, Some(counted));
    if upgrade {
        spawn_upgradable(conn, active);
    } else {
        drive_h1(conn, key, local.clone(), active);
    }
    Ok(Pooled::Hyper(H1 { sender, local }))
}

type HyperConn = http1::Connection<TokioIo<TcpStream>, RequestBody>;

/// Runs a connection for an upgrade (never pooled) until it ends.
fn spawn_upgradable(conn: HyperConn, active: ActiveConn) {
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection ended");
        }
        drop(active);
    });
}

/// Runs a pooled HTTP/1.1 connection until it ends, or until the pool parks it (marks
/// it and drops its sender, which wakes this task): then its socket goes back to the
/// pool without the codec, unless the upstream sent bytes nobody asked for.
fn drive_h1(mut conn: HyperConn, key: PoolKey, info: Local, active: ActiveConn) {
    tokio::spawn(async move {
        let parked = std::future::poll_fn(|cx| {
            if info.park.load(Ordering::Relaxed) != 0 {
                return Poll::Ready(true);
            }
            Pin::new(&mut conn).poll(cx).map(|r| {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "upstream connection ended");
                }
                false
            })
        })
        .await;
        if !parked {
            return;
        }
        let idle = Duration::from_millis(info.park.load(Ordering::Relaxed) - 1);
        let parts = conn.into_parts();
        if !parts.read_buf.is_empty() {
            return;
        }
        let now = Instant::now();
        active.idle_released.inc();
        let idle = Idle {
            conn: Box::new(H1Conn {
                stream: parts.io.into_inner(),
                read: BytesMut::new(),
                names: Default::default(),
                key,
                info,
                active,
            }),
            since: now.checked_sub(idle).unwrap_or(now),
        };
        POOLS.with(|p| p.borrow_mut().entry(key).or_default().idle.push(idle));
        crate::conn::note_released();
    });
}

/// An HTTP/2 connection: the one multiplexed connection per host a worker keeps. As in
/// Envoy, a host with no connection gets one even at `max_connections` (counted as
/// `upstream_cx_overflow`), so no request waits for a connection that cannot come.
async fn connect_h2(
    cluster: &ClusterRuntime,
    host: &Arc<Host>,
    priority: RoutingPriority,
) -> Result<H2, ProxyError> {
    let slot = cluster.breakers(priority).connections.try_acquire();
    if slot.is_none() {
        cluster.stats.upstream_cx_overflow.inc();
    }
    let (stream, slot) = connect(cluster, host, slot).await?;
    let local = conn_info(&stream, cluster);
    let (sender, conn) = http2::Builder::new(crate::BoxingExecutor)
        .timer(TokioTimer::new())
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .adaptive_window(false)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| reset_error(&e))?;
    let active = ActiveConn::new(cluster, host, slot, None);
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream h2 connection ended");
        }
        drop(active);
    });
    Ok(H2 { sender, local })
}

pub(crate) fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// A copy of `req`'s head, extensions included, without a body.
pub(crate) fn copy_head(req: &Request<RequestBody>) -> Request<RequestBody> {
    let mut b = Request::builder()
        .method(req.method().clone())
        .uri(req.uri().clone())
        .version(req.version());
    if let Some(h) = b.headers_mut() {
        *h = req.headers().clone();
    }
    // The head's extensions go too: the header case hyper's server recorded (a
    // hedged attempt or a replay writes the names as the client did).
    if let Some(e) = b.extensions_mut() {
        *e = req.extensions().clone();
    }
    b.body(RequestBody::empty())
        .expect("parts copied from a valid request")
}

pub fn reset_error(e: &hyper::Error) -> ProxyError {
    let reason = if let Some(h2) =
        std::error::Error::source(e).and_then(|s| s.downcast_ref::<h2::Error>())
    {
        if h2.reason() == Some(h2::Reason::REFUSED_STREAM) {
            ResetReason::RefusedStream
        } else {
            ResetReason::Remote(h2.to_string())
        }
    } else {
        ResetReason::ConnectionTermination
    };
    ProxyError::UpstreamReset { reason }
}

fn io_reason(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}
