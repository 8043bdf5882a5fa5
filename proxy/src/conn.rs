//! One downstream connection: codec selection (HTTP/1.1 and h2c prior knowledge on
//! one port), connection timeouts, drain, and the release of an idle HTTP/1.1
//! connection's codec state.
//!
//! HTTP/1.1 is served by Strait's own codec (`h1_server`); a connection whose next
//! request asks for an upgrade (WebSocket, `CONNECT`) is handed, from that request
//! on, to hyper's HTTP/1 server. HTTP/2 is served by Strait's own codec, `h2_server`
//! (the streams run in the connection's task).
//!
//! An idle keep-alive connection costs what it holds. So once an HTTP/1.1 connection
//! has been quiet for [`RELEASE_AFTER`], between two messages with nothing left to
//! write, its codec is dropped (its read buffer, its loop; for hyper's, taken apart
//! with `into_parts`: the socket and any unparsed bytes come back) and the task waits
//! on the bare socket; the next byte builds a new one. What an idle connection then
//! holds is its socket, its task and a few small shared records, as HAProxy and NGINX
//! return an idle connection's buffers to their pools.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use strait_xds::model::CodecType;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::body::{DownstreamBody, ResponseBody};
use crate::error::ProxyError;
use crate::framing::{FramingGuard, Verdict};
use crate::h1_server;
use crate::h2_server;
use crate::netfilter::Downstream;
use crate::router::{self, ConnCtx};
use crate::socket::Socket;

/// How long an HTTP/1.1 connection stays quiet (no request running, none started)
/// before its codec state is released. Long enough that a client sending a steady
/// stream of requests never pays for a new codec; short enough that a pool of idle
/// keep-alive connections costs little more than their sockets.
const RELEASE_AFTER: Duration = Duration::from_secs(1);

thread_local! {
    /// A connection on this worker released its codec since the worker last looked.
    static RELEASED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether a connection on this worker released its codec since the last call. The
/// worker then asks the allocator to return the freed pages to the OS: without it
/// they stay resident until the allocator's next page operation, which an idle
/// worker does not make.
pub fn released_since_last_look() -> bool {
    RELEASED.with(|r| r.replace(false))
}

/// Notes that memory was released on this thread (an upstream connection's codec, say)
/// for the heartbeat's next look.
pub fn note_released() {
    RELEASED.with(|r| r.set(true));
}

/// Keeps connection gauges right whichever way the connection ends.
struct Open {
    ctx: Arc<ConnCtx>,
}

impl Open {
    fn new(ctx: Arc<ConnCtx>) -> Open {
        let l = &ctx.listener;
        l.listener.downstream_cx_total.inc();
        l.listener.downstream_cx_active.inc();
        l.http.downstream_cx_total.inc();
        l.http.downstream_cx_active.inc();
        ctx.shared.connections.fetch_add(1, Ordering::Relaxed);
        Open { ctx }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        let l = &self.ctx.listener;
        l.listener.downstream_cx_active.dec();
        l.http.downstream_cx_active.dec();
        self.ctx.shared.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Activity on a connection, for its idle timeout and the release of its codec,
/// and the framing guard's verdict on its requests. Kept in the connection's
/// `ConnCtx`: one allocation per connection for all that is shared.
#[derive(Default)]
pub struct Activity {
    verdict: Verdict,
    /// Requests whose handler or response body is still alive.
    active: AtomicU32,
    /// Requests started on the connection so far, modulo 2^32 (the framing guard
    /// counts heads alike). 32-bit counters keep `ConnCtx` in 128 bytes.
    pub(crate) started: AtomicU32,
    /// The socket refused the codec's last write: hyper holds output.
    write_blocked: AtomicBool,
    /// A reload removed the connection's listener: it closes after its current
    /// response, as Envoy drains a removed listener's connections.
    listener_gone: AtomicBool,
}

impl Activity {
    /// Notes that the connection's listener left the config.
    pub(crate) fn listener_removed(&self) {
        self.listener_gone.store(true, Ordering::Relaxed);
    }
}

/// One request counted in [`Activity::active`] until its response body is gone
/// (written out, or dropped with the stream).
pub(crate) struct Active(Arc<ConnCtx>);

impl Active {
    pub(crate) fn new(ctx: &Arc<ConnCtx>) -> Active {
        ctx.activity.active.fetch_add(1, Ordering::Relaxed);
        Active(ctx.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.activity.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The connection's request handler, as hyper calls it.
struct Handler {
    ctx: Arc<ConnCtx>,
}

impl AsRef<Verdict> for Arc<ConnCtx> {
    fn as_ref(&self) -> &Verdict {
        &self.activity.verdict
    }
}

type Handling = Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, ProxyError>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for Handler {
    type Response = Response<Counted>;
    type Error = ProxyError;
    type Future = Handled;

    fn call(&self, req: Request<Incoming>) -> Handled {
        handle(&self.ctx, req.map(DownstreamBody::Hyper), true)
    }
}

/// Starts handling a request the connection's codec (hyper's HTTP/1, or the HTTP/2
/// server) parsed. `copy_head`: the codec consumes the response head (hyper's), so
/// the plugins' `on_log` gets a copy; Strait's HTTP/2 server writes from a borrow and
/// hands the head over itself.
fn handle(ctx: &Arc<ConnCtx>, req: Request<DownstreamBody>, copy_head: bool) -> Handled {
    // On HTTP/1 requests arrive one at a time, so the count is this request's index.
    let activity = &ctx.activity;
    let index = activity.started.fetch_add(1, Ordering::Relaxed);
    let smuggling = activity.verdict.refuses(index);
    let active = Active::new(ctx);
    // The request future is several KiB; the codec moves what is returned into its
    // state: boxed here, built in its box, it is never copied, and a pointer moves.
    let req = Box::new(req);
    let handling = crate::pin_in_place!(router::handle(req, None, ctx.clone(), smuggling));
    Handled {
        handling,
        active: Some(active),
        copy_head,
    }
}

/// A request being handled; its response body carries the request's [`Active`].
pub(crate) struct Handled {
    handling: Handling,
    active: Option<Active>,
    copy_head: bool,
}

impl Future for Handled {
    type Output = Result<Response<Counted>, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let answer = ready!(this.handling.as_mut().poll(cx));
        let active = this.active.take();
        let copy_head = this.copy_head;
        Poll::Ready(answer.map(|resp| {
            // hyper's codec consumes the head: the plugins' `on_log` gets a copy.
            let resp = match resp.body().chain().filter(|_| copy_head) {
                Some(chain) => {
                    let (head, body) = resp.into_parts();
                    chain.keep_response_copy(&head);
                    Response::from_parts(head, body)
                }
                None => resp,
            };
            resp.map(|body| Counted {
                body,
                _active: active,
            })
        }))
    }
}

/// A response body that keeps its request counted as active while it lives.
pub struct Counted {
    body: ResponseBody,
    _active: Option<Active>,
}

impl Counted {
    /// The stream's filter chain (see [`ResponseBody::chain`]).
    pub(crate) fn chain(&self) -> Option<crate::chain::ChainId> {
        self.body.chain()
    }
}

impl Body for Counted {
    type Data = Bytes;
    type Error = <ResponseBody as Body>::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The downstream socket as the codec sees it: bytes read before the codec existed
/// (the protocol sniff, or what a released codec had not parsed) come first, and a
/// write the socket could not take is noted in the connection's [`Activity`].
struct ConnIo {
    /// The guard holds the connection's context, and with it its [`Activity`].
    inner: FramingGuard<Downstream, Arc<ConnCtx>>,
    /// Boxed: an idle connection keeps a `ConnIo`, and nearly always no prefix.
    prefix: Option<Box<Bytes>>,
}

impl ConnIo {
    fn noted<T>(&self, polled: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        self.inner
            .verdict_holder()
            .activity
            .write_blocked
            .store(polled.is_pending(), Ordering::Relaxed);
        polled
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(prefix) = this.prefix.as_deref_mut() else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        let n = prefix.len().min(buf.remaining());
        buf.put_slice(&prefix[..n]);
        prefix.advance(n);
        if prefix.is_empty() {
            this.prefix = None;
        }
        // Whatever else has arrived comes along, so the codec parses a whole head at
        // once; an error or the end of the stream shows again on the next read.
        if this.prefix.is_none() && buf.remaining() > 0 {
            let _ = Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.noted(polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.noted(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.noted(polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Reads until the first bytes tell HTTP/2's prior-knowledge preface from HTTP/1.1
/// (as hyper-util's automatic codec does). Returns whether the connection speaks
/// HTTP/2, and what was read.
///
/// The read takes whatever the client sent, up to a codec's first read, not just
/// the preface's 24 bytes: the request that follows (usually all there) is then not
/// a second `recvfrom`, and the HTTP/1.1 codec parses it from this same buffer. It
/// reads past the framing guard: Strait's HTTP/1.1 codec, which comes next unless
/// the preface came, checks framing itself and drops the guard, and HTTP/2
/// needs none (the guard stops following).
async fn sniff(io: &mut ConnIo) -> io::Result<(bool, BytesMut)> {
    const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut buf = BytesMut::with_capacity(crate::h1::READ_SMALL);
    let h2 = loop {
        let read = io.inner.get_mut().read_buf(&mut buf).await?;
        let n = buf.len().min(PREFACE.len());
        if read == 0 || buf[..n] != PREFACE[..n] {
            break false;
        }
        if n == PREFACE.len() {
            break true;
        }
    };
    if h2 {
        io.inner.stop_following();
    }
    Ok((h2, buf))
}

/// What ends or releases a connection: drain, its idle timeout, its quiet time.
struct Watch {
    /// The connection's context, and its gauges.
    open: Open,
    /// A drain reached this connection (through the worker's idle list).
    draining: bool,
    /// Requests started when activity was last seen, and when that was.
    started: u32,
    since: Instant,
}

impl Watch {
    /// How long the connection has been quiet as of `now`: no request alive, none
    /// started since the last look. Seen at the watch's ticks, so to within a tick.
    fn quiet(&mut self, now: Instant) -> Duration {
        let activity = &self.open.ctx.activity;
        let started = activity.started.load(Ordering::Relaxed);
        if started != self.started || activity.active.load(Ordering::Relaxed) > 0 {
            self.started = started;
            self.since = now;
        }
        now - self.since
    }

    /// Which drains reach this connection (see [`Drained`]).
    fn class(&self) -> Drained {
        Drained::of(&self.open.ctx.listener.config)
    }

    /// The listener's idle timeout (`common_http_protocol_options.idle_timeout`).
    fn idle_timeout(&self) -> Option<Duration> {
        self.open.ctx.listener.config.hcm.idle_timeout
    }

    /// Waits for the connection's first `input` while it holds no codec; `None` when
    /// the connection is to close first (its idle timeout; a drain, unless the input
    /// comes within [`h1_server::FIRST_REQUEST_GRACE`]: a connection accepted during a
    /// graceful drain is served once). The idle timeout and the drain come from an
    /// entry in the worker's idle list, as in [`Self::run`].
    async fn wait<F: Future>(&mut self, input: F) -> Option<F::Output> {
        let (deadline, class) = (self.idle_timeout().map(|t| self.since + t), self.class());
        tokio::pin!(input);
        // The entry is made once the input has to be waited for: a client's first
        // bytes usually come with its connection, and then the connection never
        // enters the list (entering, polling and leaving it were ~330 instructions
        // of every new connection).
        let mut entry = None;
        let end = loop {
            let woke = std::future::poll_fn(|cx| match input.as_mut().poll(cx) {
                Poll::Ready(out) => Poll::Ready(Ok(out)),
                Poll::Pending => entry
                    .get_or_insert_with(|| IdleEntry::enter(deadline, class))
                    .poll_end(cx)
                    .map_or(Poll::Pending, |end| Poll::Ready(Err(end))),
            })
            .await;
            match woke {
                Ok(out) => return Some(out),
                Err(IdleEnd::Recheck) if !listener_removed(&self.open.ctx) => entry = None,
                Err(end) => break end,
            }
        };
        self.ended(end);
        match end {
            IdleEnd::Drain | IdleEnd::Recheck => {
                tokio::time::timeout(h1_server::FIRST_REQUEST_GRACE, input)
                    .await
                    .ok()
            }
            IdleEnd::Timeout => None,
        }
    }

    /// A wait without a codec ended before its input: the connection closes.
    fn ended(&mut self, end: IdleEnd) {
        match end {
            IdleEnd::Drain | IdleEnd::Recheck => self.drained(),
            IdleEnd::Timeout => self.open.ctx.listener.http.downstream_cx_idle_timeout.inc(),
        }
    }

    /// A drain reached the connection: it closes (after its current response).
    fn drained(&mut self) {
        if !self.draining {
            self.draining = true;
            self.open.ctx.listener.http.downstream_cx_drain_close.inc();
        }
    }

    /// Drives `conn` to its end (`Some` of its output). With `release` (an HTTP/1.1
    /// connection whose codec can be rebuilt; it says whether the codec holds
    /// nothing: between two messages, all output written), returns `None` instead
    /// once the connection has been quiet for [`RELEASE_AFTER`] and can be released.
    async fn run<C, T, E>(
        &mut self,
        mut conn: Pin<&mut C>,
        shutdown: impl Fn(Pin<&mut C>),
        release: Option<&(dyn Fn() -> bool + Sync)>,
    ) -> Option<Result<T, E>>
    where
        C: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        if self.draining {
            shutdown(conn.as_mut());
        }
        let idle_timeout = self.idle_timeout();
        let every = match (idle_timeout, release.is_some()) {
            (Some(t), true) => Some(t.min(RELEASE_AFTER)),
            (None, true) => Some(RELEASE_AFTER),
            (t, false) => t,
        };
        // The drain and the tick come from the worker's idle list: its heartbeat ends
        // the entry when the tick is due (to within its 250 ms) and `drain_idle` when
        // the worker drains. A tokio timer and a drain-channel subscription cost ~1,000
        // instructions per connection between them, the entry ~150.
        let class = self.class();
        let mut entry = IdleEntry::enter(every.map(|e| crate::clock::tokio_now() + e), class);
        // The entry is polled only when it woke the task (a select would poll it at
        // every wake of the connection: ~800 instructions per request, three wakes
        // each).
        let side = Arc::new(SideWake::default());
        let side_waker = std::task::Waker::from(side.clone());
        loop {
            let event = std::future::poll_fn(|cx| {
                if let Poll::Ready(r) = conn.as_mut().poll(cx) {
                    return Poll::Ready(Event::Ended(r));
                }
                // A plain load first: the swap is a locked instruction, paid only
                // when a side source did fire.
                if !side.fired.load(Ordering::Relaxed) || !side.fired.swap(false, Ordering::AcqRel)
                {
                    return Poll::Pending;
                }
                side.task.register(cx.waker());
                match entry.poll_end(&Context::from_waker(&side_waker)) {
                    // Once draining, the entry stays ended and nothing else is due.
                    Some(IdleEnd::Drain) if !self.draining => Poll::Ready(Event::Drain),
                    Some(IdleEnd::Timeout) => Poll::Ready(Event::Tick),
                    Some(IdleEnd::Recheck) => Poll::Ready(Event::Recheck),
                    _ => Poll::Pending,
                }
            })
            .await;
            // Whatever happened, the next pass looks at every source again (one that
            // was not polled this pass has not registered its waker).
            side.fired.store(true, Ordering::Release);
            match event {
                Event::Ended(r) => {
                    if let Err(e) = &r {
                        tracing::debug!(peer = %self.open.ctx.peer, error = %e, "downstream connection ended with an error");
                    }
                    return Some(r);
                }
                Event::Drain => {
                    self.drained();
                    shutdown(conn.as_mut());
                }
                Event::Recheck => {
                    if !self.draining && listener_removed(&self.open.ctx) {
                        self.drained();
                        shutdown(conn.as_mut());
                    }
                    let next = Instant::now() + every.unwrap_or(RELEASE_AFTER);
                    entry = IdleEntry::enter(Some(next), class);
                }
                Event::Tick => {
                    let now = Instant::now();
                    let quiet = self.quiet(now);
                    if self.draining {
                        // Closing already: nothing to release or time out.
                    } else if idle_timeout.is_some_and(|t| quiet >= t) {
                        self.open.ctx.listener.http.downstream_cx_idle_timeout.inc();
                        self.draining = true;
                        shutdown(conn.as_mut());
                    } else if release.is_some_and(|idle| quiet >= RELEASE_AFTER && idle()) {
                        self.open
                            .ctx
                            .listener
                            .http
                            .downstream_cx_idle_released
                            .inc();
                        return None;
                    }
                    entry = IdleEntry::enter(Some(now + every.unwrap_or(RELEASE_AFTER)), class);
                }
            }
        }
    }
}

/// What woke [`Watch::run`].
enum Event<R> {
    Ended(R),
    Drain,
    Tick,
    /// The worker asked its idle list to look at their listener again.
    Recheck,
}

/// The waker [`Watch::run`] gives its idle-list entry (the drain, the tick): it
/// notes that it fired, then wakes the connection's task.
struct SideWake {
    fired: AtomicBool,
    task: futures_util::task::AtomicWaker,
}

impl Default for SideWake {
    fn default() -> Self {
        SideWake {
            // The first pass registers the sources.
            fired: AtomicBool::new(true),
            task: futures_util::task::AtomicWaker::new(),
        }
    }
}

impl std::task::Wake for SideWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// A connection between its phases: what it keeps while idle.
struct Conn {
    watch: Watch,
    io: Option<ConnIo>,
}

/// The connection's task. Its future holds the connection itself, the running
/// phase's box and the idle wait: at most 192 bytes, boxed by the caller, next to
/// tokio's 128-byte task cell. (With the connection in a box of its own it was 64
/// bytes more; spawned inline, the 128-byte-aligned task cell grows to 384 bytes
/// and idle connections measured ~500 bytes more each.)
pub fn serve(stream: Socket, ctx: Arc<ConnCtx>) -> impl Future<Output = ()> + Send {
    // Built before the future: arguments of an `async fn` keep their own room in
    // its state for as long as it runs.
    let mut conn = Conn::new(stream, ctx);
    async move {
        // Each phase's future is boxed while it runs (hyper's state is a few KiB):
        // only the idle wait, a few words, stays in the task. The HTTP/1.1 phase is
        // built in its box (the codec's state, ~1.2 KiB, is not copied), and the
        // first one sniffs the protocol (`Auto`) in that same box, its codec parsing
        // the bytes the sniff read: one allocation for both.
        let mut start = match conn.watch.open.ctx.listener.config.hcm.codec_type {
            CodecType::Http2 => Start::H2,
            CodecType::Http1 => Start::H1,
            CodecType::Auto => Start::Sniff,
        };
        while start != Start::H2 {
            match crate::pin_in_place!(conn.serve_h1_own(start)).await {
                Own::Released if conn.idle().await => start = Start::Again,
                Own::Released | Own::Closed => return,
                Own::H2 => start = Start::H2,
                // An upgrade request: hyper's server has the connection from here on.
                Own::Upgrade => {
                    while Box::pin(conn.serve_h1()).await && conn.idle().await {}
                    return;
                }
            }
        }
        let http = &conn.watch.open.ctx.listener.http;
        http.downstream_cx_http2_total.inc();
        Box::pin(conn.serve_h2()).await;
    }
}

/// How a run of [`Conn::serve_h1_own`] begins.
#[derive(Clone, Copy, PartialEq)]
enum Start {
    /// The connection's first: read until HTTP/2's preface or HTTP/1.1 shows.
    Sniff,
    /// The connection's first, configured HTTP/1.1 only.
    H1,
    /// HTTP/2: configured so, or the sniff found its preface (not a start of
    /// `serve_h1_own`: the connection goes to the HTTP/2 server).
    H2,
    /// After the codec was released: HTTP/1.1 again.
    Again,
}

/// How a run of Strait's HTTP/1.1 server codec ended.
enum Own {
    /// Quiet long enough: the socket is back in the connection, the codec freed.
    Released,
    Closed,
    /// HTTP/2 (configured, or the preface came): the socket and the bytes read are
    /// back in the connection for the HTTP/2 server.
    H2,
    /// The next request asks for an upgrade: the socket is back in the connection
    /// with the request's bytes, for hyper's server.
    Upgrade,
}

impl Conn {
    fn new(stream: Socket, ctx: Arc<ConnCtx>) -> Conn {
        let _ = stream.set_nodelay(true);
        let open = Open::new(ctx);
        let ctx = &open.ctx;
        let downstream = Downstream::new(
            stream,
            &ctx.listener.network_filters,
            ctx.listener.config.per_connection_buffer_limit_bytes,
            ctx.id,
            ctx.peer,
            ctx.local,
        );
        let io = ConnIo {
            inner: FramingGuard::new(downstream, ctx.clone()),
            prefix: None,
        };
        Conn {
            watch: Watch {
                open,
                draining: false,
                started: 0,
                since: Instant::now(),
            },
            io: Some(io),
        }
    }

    async fn serve_h2(&mut self) {
        let Some(io) = self.io.take() else {
            return;
        };
        let ctx = self.watch.open.ctx.clone();
        let hcm = &ctx.listener.config.hcm;
        let settings = h2_server::Settings {
            max_header_list_size: hcm.max_request_headers_kb * 1024,
            initial_stream_window: hcm.http2.initial_stream_window_size,
            initial_connection_window: hcm.http2.initial_connection_window_size,
            max_concurrent_streams: hcm.http2.max_concurrent_streams,
            rx_reset: ctx.listener.http.downstream_rq_rx_reset.clone(),
            destroy_remote_active_rq: ctx
                .listener
                .http
                .downstream_cx_destroy_remote_active_rq
                .clone(),
            drain_close: Some({
                let ctx = ctx.clone();
                Arc::new(move || {
                    let close = drain_close(&ctx);
                    if close {
                        ctx.listener.http.downstream_cx_drain_close.inc();
                    }
                    close
                }) as h2_server::DrainClose
            }),
        };
        let handler = {
            let ctx = ctx.clone();
            move |req| handle(&ctx, req, false)
        };
        let mut conn = crate::pin_in_place!(h2_server::Server::new(io, &settings, handler));
        self.watch
            .run(conn.as_mut(), |c| c.get_mut().graceful_shutdown(), None)
            .await;
    }

    /// Serves HTTP/1.1 with Strait's own codec (`h1_server`) until the connection
    /// ends, has been idle long enough to release the codec's state, or asks for an
    /// upgrade. A connection's first run (`start`) may find it is HTTP/2 instead.
    async fn serve_h1_own(&mut self, start: Start) -> Own {
        let mut read = None;
        match start {
            Start::H2 => return Own::H2,
            Start::Sniff => {
                let Some(io) = self.io.as_mut() else {
                    return Own::Closed;
                };
                // Drained or timed out before a byte, or the socket failed.
                let Some(Ok((h2, sniffed))) = self.watch.wait(sniff(io)).await else {
                    return Own::Closed;
                };
                if h2 {
                    if let Some(io) = self.io.as_mut() {
                        io.prefix = Some(Box::new(sniffed.freeze()));
                    }
                    return Own::H2;
                }
                read = Some(sniffed);
            }
            Start::H1 | Start::Again => {}
        }
        if start != Start::Again {
            let http = &self.watch.open.ctx.listener.http;
            http.downstream_cx_http1_total.inc();
        }
        let Some(io) = self.io.take() else {
            return Own::Closed;
        };
        let ConnIo { inner, prefix } = io;
        let downstream = inner.into_inner();
        // A network filter may hold bytes or answers the socket's readiness does not
        // show: such a connection keeps its codec.
        let releasable = downstream.unfiltered().is_some();
        // The sniff's buffer (or a released codec's) goes on without a copy.
        let read = match (read, prefix) {
            (Some(read), _) => read,
            (None, prefix) => prefix.map_or_else(BytesMut::new, |b| BytesMut::from(*b)),
        };
        let side = h1_server::Side::new(downstream, read);
        let ctx = self.watch.open.ctx.clone();
        let ran = {
            // In this phase's own box (see `serve`): one allocation per connection.
            let mut codec = std::pin::pin!(h1_server::serve(side.clone(), ctx.clone()));
            let idle = || side.lock().releasable();
            let release: Option<&(dyn Fn() -> bool + Sync)> = match releasable {
                true => Some(&idle),
                false => None,
            };
            let shutdown = |_: Pin<&mut _>| side.lock().closing = true;
            self.watch.run(codec.as_mut(), shutdown, release).await
        };
        let outcome = match ran {
            None => Own::Released,
            Some(Ok(h1_server::Outcome::Upgrade)) => Own::Upgrade,
            Some(_) => return Own::Closed,
        };
        // The loop is gone, and with it every other hold on the side.
        let Ok(side) = Arc::try_unwrap(side) else {
            return Own::Closed;
        };
        let side = side.into_inner();
        let prefix = (!side.read.is_empty()).then(|| Box::new(side.read.freeze()));
        self.io = Some(ConnIo {
            inner: FramingGuard::new(side.io, ctx),
            prefix,
        });
        if let Own::Released = outcome {
            note_released();
        }
        outcome
    }

    /// Serves HTTP/1.1 with hyper's server until the connection ends (`false`) or
    /// has been idle long enough to release its codec (`true`: the socket is back in
    /// `self`, and hyper's state is freed). Strait's own codec hands a connection to
    /// it for upgrades.
    async fn serve_h1(&mut self) -> bool {
        let Some(io) = self.io.take() else {
            return false;
        };
        let handler = Handler {
            ctx: self.watch.open.ctx.clone(),
        };
        // A network filter may hold bytes or answers the socket's readiness does not
        // show: such a connection keeps its codec.
        let releasable = io.inner.get_ref().unfiltered().is_some();
        let ctx = handler.ctx.clone();
        let hcm = &self.watch.open.ctx.listener.config.hcm;
        let max_head = hcm.max_request_headers_kb as usize * 1024;
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(hcm.request_headers_timeout)
            .preserve_header_case(true)
            .max_buf_size(max_head.max(8192) + 4096)
            .keep_alive(true);
        // Built in its box: the connection state is a few KiB.
        let mut conn = Box::write(
            Box::new_uninit(),
            builder
                .serve_connection(TokioIo::new(io), handler)
                .with_upgrades(),
        );
        let verdict = &ctx.activity.verdict;
        let idle =
            || verdict.between_messages() && !ctx.activity.write_blocked.load(Ordering::Relaxed);
        let release: Option<&(dyn Fn() -> bool + Sync)> = match releasable {
            true => Some(&idle),
            false => None,
        };
        let run = self
            .watch
            .run(Pin::new(&mut *conn), |c| c.graceful_shutdown(), release);
        if run.await.is_some() {
            return false;
        }
        let Some(parts) = conn.into_parts() else {
            return false;
        };
        let mut io = parts.io.into_inner();
        if !parts.read_buf.is_empty() {
            // Not expected between messages; the codec takes the bytes up again.
            io.prefix = Some(Box::new(parts.read_buf));
        }
        self.io = Some(io);
        note_released();
        true
    }

    /// Waits with no codec for the connection's next bytes: `false` if it is to
    /// close instead (a drain, its idle timeout, or the socket failed). The wait
    /// holds no timer and no waiter of its own: it polls the socket's readiness
    /// (tokio keeps one reader waker per socket) and sits in this worker's idle list,
    /// which the heartbeat sweeps for idle timeouts and drains.
    async fn idle(&mut self) -> bool {
        let Some(io) = &mut self.io else {
            return false;
        };
        if io.prefix.is_some() {
            return true;
        }
        let Some(socket) = io.inner.get_mut().unfiltered_mut() else {
            return false;
        };
        // Not through `Watch::wait`: its future would take this task past its
        // 192-byte allocation class (216 bytes), which every idle connection pays.
        let watch = &mut self.watch;
        if watch.draining {
            return false;
        }
        loop {
            let entry =
                IdleEntry::enter(watch.idle_timeout().map(|t| watch.since + t), watch.class());
            let woke = std::future::poll_fn(|cx| match entry.poll_end(cx) {
                Some(end) => Poll::Ready(Err(end)),
                None => socket.poll_read_ready(cx).map(Ok),
            })
            .await;
            match woke {
                Ok(read) => return read.is_ok(),
                Err(IdleEnd::Recheck) if !listener_removed(&watch.open.ctx) => {}
                Err(end) => {
                    watch.ended(end);
                    return false;
                }
            }
        }
    }
}

/// Why a wait in the idle list ended: a drain, or its deadline (an idle timeout, a tick).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IdleEnd {
    Drain,
    Timeout,
    /// A reload removed a listener: is this connection's still there?
    Recheck,
}

/// This worker's connection waits that its heartbeat ends: connections waiting with
/// no codec, running connections' ticks and drain (`Watch::run`), and the HTTP/1.1
/// server's grace before it watches an unregistered client. A slot is 24 bytes; the
/// heartbeat looks at each four times a second, so an idle timeout fires within a
/// quarter second of its time (Envoy's own idle timers are no finer in effect).
#[derive(Default)]
struct IdleList {
    slots: Vec<IdleSlot>,
    free: Vec<u32>,
    /// The classes of connections this worker drains: every idle connection of
    /// them closes, and so does any that goes idle from now on.
    draining: Drained,
    /// Gradual drains under way, by class (inbound, other): until when, in the
    /// list's milliseconds. Each waiting connection of such a class closes at a
    /// random time before then (see [`drain_idle`]).
    gradual: [Option<u32>; 2],
    /// The base of the slots' deadlines.
    epoch: Option<Instant>,
}

#[derive(Default)]
struct IdleSlot {
    /// Milliseconds after the list's epoch when the connection's idle timeout
    /// closes it; `u32::MAX` for none (or beyond 49 days).
    deadline_ms: u32,
    /// 0 while waiting, else 1 + the `IdleEnd` the heartbeat decided.
    ended: u8,
    live: bool,
    /// The connection's class, for drains of some listeners only.
    class: Drained,
    /// `deadline_ms` is a gradual drain's time for this connection, not its idle
    /// timeout.
    drains: bool,
    waker: Option<std::task::Waker>,
}

impl IdleSlot {
    /// A gradual drain until `end_ms` (list milliseconds, now `now_ms`) picks this
    /// connection's time: uniform over what is left of the drain. Entries are made
    /// afresh at each tick of a connection, each picking again: the chance to close
    /// in the next moment is then that moment over the time left, so a connection's
    /// close time is uniform over the drain, as Envoy's per-response chance
    /// (elapsed / drain time) makes it.
    fn drain_by(&mut self, now_ms: u32, end_ms: u32) {
        let at = match end_ms.checked_sub(now_ms) {
            Some(left) if left > 0 => now_ms + rand::random::<u32>() % left,
            _ => now_ms,
        };
        if at < self.deadline_ms {
            self.deadline_ms = at;
            self.drains = true;
        }
    }
}

impl IdleList {
    fn ms(&mut self, at: Instant) -> u32 {
        let epoch = *self.epoch.get_or_insert_with(Instant::now);
        u32::try_from(at.saturating_duration_since(epoch).as_millis()).unwrap_or(u32::MAX)
    }

    fn end(slot: &mut IdleSlot, end: IdleEnd) {
        slot.ended = 1 + end as u8;
        if let Some(waker) = slot.waker.take() {
            waker.wake();
        }
    }
}

thread_local! {
    static IDLE: std::cell::RefCell<IdleList> = std::cell::RefCell::new(IdleList::default());
}

/// A wait's place in the idle list (see [`IdleList`]), given up when it ends: a
/// deadline or a drain, without a timer or a drain subscription of its own.
pub(crate) struct IdleEntry(u32);

impl IdleEntry {
    pub(crate) fn enter(deadline: Option<Instant>, class: Drained) -> IdleEntry {
        IDLE.with(|list| {
            let mut list = list.borrow_mut();
            let deadline_ms = deadline.map_or(u32::MAX, |at| list.ms(at));
            let ended = match list.draining.covers(class) {
                true => 1 + IdleEnd::Drain as u8,
                false => 0,
            };
            let mut slot = IdleSlot {
                deadline_ms,
                ended,
                live: true,
                class,
                drains: false,
                waker: None,
            };
            if let Some(end_ms) = list.gradual[class.index()] {
                let now_ms = list.ms(Instant::now());
                slot.drain_by(now_ms, end_ms);
            }
            let index = match list.free.pop() {
                Some(index) => {
                    list.slots[index as usize] = slot;
                    index
                }
                None => {
                    // Grown 1,024 slots (24 KiB) at a time, not doubled: the list is
                    // part of what each idle connection costs.
                    if list.slots.len() == list.slots.capacity() {
                        list.slots.reserve_exact(1024);
                    }
                    list.slots.push(slot);
                    (list.slots.len() - 1) as u32
                }
            };
            IdleEntry(index)
        })
    }

    /// Why the connection is to close, if the heartbeat decided it; otherwise keeps
    /// the task's waker for the heartbeat to wake.
    pub(crate) fn poll_end(&self, cx: &Context<'_>) -> Option<IdleEnd> {
        IDLE.with(|list| {
            let mut list = list.borrow_mut();
            let slot = &mut list.slots[self.0 as usize];
            match slot.ended {
                0 => {
                    if !slot.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        slot.waker = Some(cx.waker().clone());
                    }
                    None
                }
                1 => Some(IdleEnd::Drain),
                2 => Some(IdleEnd::Timeout),
                _ => Some(IdleEnd::Recheck),
            }
        })
    }
}

impl Drop for IdleEntry {
    fn drop(&mut self) {
        // `try_with`: a task dropped while the worker's thread-locals are torn down.
        let _ = IDLE.try_with(|list| {
            let mut list = list.borrow_mut();
            list.slots[self.0 as usize] = IdleSlot::default();
            list.free.push(self.0);
            // A burst of connections gone idle and back leaves no long list behind.
            if list.free.len() == list.slots.len() && list.slots.capacity() > 1024 {
                list.slots = Vec::new();
                list.free = Vec::new();
            }
        });
    }
}

/// Closes this worker's idle connections whose idle timeout passed; the worker's
/// heartbeat calls it.
pub fn sweep_idle() {
    let now = Instant::now();
    IDLE.with(|list| {
        let mut list = list.borrow_mut();
        if list.slots.is_empty() {
            return;
        }
        let now_ms = list.ms(now);
        for slot in &mut list.slots {
            if slot.live && slot.ended == 0 && slot.deadline_ms <= now_ms {
                let end = match slot.drains {
                    true => IdleEnd::Drain,
                    false => IdleEnd::Timeout,
                };
                IdleList::end(slot, end);
            }
        }
    });
}

/// Whether a response is to end its connection for a drain decided elsewhere:
/// Envoy's drain-close while the server's health check is failed (admin
/// `/healthcheck/fail`): each response on a listener of the default `drain_type`
/// ends its connection (HTTP/1.1 `Connection: close`; HTTP/2 sends GOAWAY), so
/// clients move to the other instances their health checks still find healthy; and
/// a connection whose listener a reload removed.
#[inline]
pub(crate) fn drain_close(ctx: &ConnCtx) -> bool {
    (ctx.shared.health_check_failed() && !ctx.listener.config.drain_modify_only)
        || ctx.activity.listener_gone.load(Ordering::Relaxed)
}

/// Whether a reload removed `ctx`'s listener (looked up by name in the config in
/// force); notes it for [`drain_close`].
fn listener_removed(ctx: &ConnCtx) -> bool {
    let gone = ctx
        .shared
        .runtime
        .load()
        .listener(&ctx.listener.config.name)
        .is_none();
    if gone {
        ctx.activity.listener_removed();
    }
    gone
}

/// A reload removed a listener: every connection waiting in this worker's idle list
/// looks whether its listener is still configured, and closes if not (a busy one
/// learns it at its next request, in the router).
pub fn recheck_idle() {
    IDLE.with(|list| {
        let mut list = list.borrow_mut();
        for slot in &mut list.slots {
            if slot.live && slot.ended == 0 {
                IdleList::end(slot, IdleEnd::Recheck);
            }
        }
    });
}

/// Which connections a drain reaches: those of inbound listeners
/// (`traffic_direction: INBOUND`), the others, or both. A connection's class is one of
/// the first two; a drain's is any set of them.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct Drained(u8);

impl std::fmt::Debug for Drained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            0 => "none",
            1 => "inbound",
            2 => "not inbound",
            _ => "all",
        })
    }
}

impl Drained {
    pub const NONE: Drained = Drained(0);
    pub const INBOUND: Drained = Drained(1);
    pub const OTHER: Drained = Drained(2);
    pub const ALL: Drained = Drained(3);

    /// The class of a connection of `listener`.
    pub fn of(listener: &strait_xds::model::Listener) -> Drained {
        match listener.traffic_direction {
            1 => Drained::INBOUND,
            _ => Drained::OTHER,
        }
    }

    pub fn covers(self, class: Drained) -> bool {
        self.0 & class.0 != 0
    }

    pub fn with(self, more: Drained) -> Drained {
        Drained(self.0 | more.0)
    }

    /// A connection's class as an index (inbound 0, other 1).
    fn index(self) -> usize {
        usize::from(self != Drained::INBOUND)
    }
}

/// A drain began on this worker for the connections of `scope`. Over `spread`
/// (Envoy's gradual drain strategy), each connection closes at a random time within
/// it: an idle one then, a busy one after the response it is on then (HTTP/2:
/// GOAWAY). Without (immediate), idle ones close now, busy ones after their current
/// response, and those that go idle later close instead of waiting.
pub fn drain_idle(scope: Drained, spread: Option<Duration>) {
    IDLE.with(|list| {
        let mut list = list.borrow_mut();
        let Some(spread) = spread else {
            list.draining = list.draining.with(scope);
            for slot in &mut list.slots {
                if slot.live && slot.ended == 0 && scope.covers(slot.class) {
                    IdleList::end(slot, IdleEnd::Drain);
                }
            }
            return;
        };
        let now_ms = list.ms(Instant::now());
        let end_ms = now_ms.saturating_add(u32::try_from(spread.as_millis()).unwrap_or(u32::MAX));
        for class in [Drained::INBOUND, Drained::OTHER] {
            if scope.covers(class) {
                let gradual = &mut list.gradual[class.index()];
                // A drain already under way keeps its (earlier) end.
                *gradual = Some(gradual.map_or(end_ms, |e| e.min(end_ms)));
            }
        }
        let ends = list.gradual;
        for slot in &mut list.slots {
            if slot.live && slot.ended == 0 && scope.covers(slot.class) {
                if let Some(end_ms) = ends[slot.class.index()] {
                    slot.drain_by(now_ms, end_ms);
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn future_size<A, B, F: Future>(_: impl Fn(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn a_connection_task_is_small() {
        // What every idle connection's task holds: its `Conn`, the running phase's
        // box and the idle wait, in one box of the allocator's 192-byte class (see
        // `serve`); and its shared context in the 128-byte class.
        let size = future_size(serve);
        assert!(size <= 192, "serve's future is {size} bytes");
        // `ConnCtx` in its `Arc` (two counts).
        let ctx = 16 + size_of::<ConnCtx>();
        assert!(ctx <= 128, "ConnCtx takes {ctx} bytes");
    }

    #[test]
    fn idle_timeouts_fire_at_their_own_deadline_in_any_order() {
        let waker = std::task::Waker::noop();
        let cx = Context::from_waker(waker);
        let now = Instant::now();
        // Registered first with the latest deadline; the earlier ones after it.
        let o = Drained::OTHER;
        let late = IdleEntry::enter(Some(now + Duration::from_secs(3600)), o);
        let later = IdleEntry::enter(Some(now + Duration::from_secs(1800)), o);
        let none = IdleEntry::enter(None, o);
        let passed = IdleEntry::enter(Some(now - Duration::from_millis(1)), o);
        for entry in [&late, &later, &none, &passed] {
            assert_eq!(entry.poll_end(&cx), None);
        }
        sweep_idle();
        assert_eq!(late.poll_end(&cx), None);
        assert_eq!(later.poll_end(&cx), None);
        assert_eq!(none.poll_end(&cx), None);
        assert_eq!(passed.poll_end(&cx), Some(IdleEnd::Timeout));
        drop(passed);
        // A slot given up is reused, fresh.
        let again = IdleEntry::enter(None, o);
        sweep_idle();
        assert_eq!(again.poll_end(&cx), None);
        // A drain of inbound listeners leaves the others' connections alone.
        let inbound = IdleEntry::enter(None, Drained::INBOUND);
        drain_idle(Drained::INBOUND, None);
        assert_eq!(inbound.poll_end(&cx), Some(IdleEnd::Drain));
        assert_eq!(again.poll_end(&cx), None);
        let inbound_after = IdleEntry::enter(None, Drained::INBOUND);
        assert_eq!(inbound_after.poll_end(&cx), Some(IdleEnd::Drain));
        let other_after = IdleEntry::enter(None, o);
        assert_eq!(other_after.poll_end(&cx), None);
        drain_idle(Drained::ALL, None);
        for entry in [&late, &later, &none, &again, &other_after] {
            assert_eq!(entry.poll_end(&cx), Some(IdleEnd::Drain));
        }
        let after = IdleEntry::enter(None, o);
        assert_eq!(after.poll_end(&cx), Some(IdleEnd::Drain));
    }

    #[test]
    fn a_gradual_drain_ends_each_wait_within_its_time() {
        let waker = std::task::Waker::noop();
        let cx = Context::from_waker(waker);
        let entries: Vec<_> = (0..50)
            .map(|_| IdleEntry::enter(None, Drained::INBOUND))
            .collect();
        let other = IdleEntry::enter(None, Drained::OTHER);
        drain_idle(Drained::INBOUND, Some(Duration::from_millis(400)));
        sweep_idle();
        let ended = entries.iter().filter(|e| e.poll_end(&cx).is_some()).count();
        assert!(ended < 25, "{ended} of 50 ended at the drain's start");
        // A wait entered during the drain gets a time within what is left of it.
        let late = IdleEntry::enter(None, Drained::INBOUND);
        std::thread::sleep(Duration::from_millis(450));
        sweep_idle();
        for entry in entries.iter().chain([&late]) {
            assert_eq!(entry.poll_end(&cx), Some(IdleEnd::Drain));
        }
        assert_eq!(other.poll_end(&cx), None, "another class is not drained");
        // After the drain time a new wait ends at once.
        let after = IdleEntry::enter(None, Drained::INBOUND);
        sweep_idle();
        assert_eq!(after.poll_end(&cx), Some(IdleEnd::Drain));
    }
}
