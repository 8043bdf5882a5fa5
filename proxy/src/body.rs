//! Bodies on both legs, streamed frame by frame with nothing buffered.
//!
//! `RequestBody` is what goes upstream; `ResponseBody` is what goes downstream: an
//! upstream body (with the pooled connection to give back and the stream's timers), or
//! a local reply. The one exception to "nothing buffered": on a route with a retry
//! policy the request body is kept while it streams (`ReplayBody`, up to the
//! listener's `per_connection_buffer_limit_bytes`, as Envoy) so a retry can send it
//! again; other routes stream zero-copy. The stream guard inside finishes the stream's stats and access log
//! exactly once: at end of stream, on error, or when hyper drops the body.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::chain::{BodyVerdict, ChainId};
use crate::error::ProxyError;
use crate::pool::{Lease, UpstreamBody};
use crate::stream::StreamGuard;

/// Bytes received from downstream, shared between the request body and its guard,
/// and whether the body has ended (a timeout answers 504 then, 408 before). The
/// stream's timers wait for that end (the route and per-try timeouts start there,
/// as Envoy's do); the body runs on the upstream connection's task, so its end
/// wakes them.
///
/// It also keeps why the body failed when the client is to blame: the upstream
/// exchange then fails too (an HTTP/2 upstream only sees its stream reset), and the
/// router answers for the client's error (400), or not at all for a client that went
/// away, instead of blaming the upstream with a 503.
#[derive(Default, Debug)]
pub struct ByteCount {
    bytes: AtomicU64,
    ended: AtomicBool,
    /// The stream's timers, waiting for the end.
    end_waker: futures_util::task::AtomicWaker,
    fault: std::sync::OnceLock<BodyFault>,
}

/// How the client's request body failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFault {
    /// Bytes that are not a body of its framing (a bad chunk line).
    Malformed(&'static str),
    /// The client's HTTP/1.1 connection closed or failed before the body ended.
    Disconnected,
}

impl ByteCount {
    /// How the request body failed, if the client is to blame.
    pub fn fault(&self) -> Option<BodyFault> {
        self.fault.get().copied()
    }

    /// Keeps `error` if it is the downstream codec's: a body not of its framing, or
    /// a connection gone before the body's end.
    fn failed(&self, error: &BoxError) {
        let Some(error) = error.downcast_ref::<crate::h1_server::BodyError>() else {
            return;
        };
        let fault = match error.malformed() {
            Some(what) => BodyFault::Malformed(what),
            None => BodyFault::Disconnected,
        };
        let _ = self.fault.set(fault);
    }

    pub fn get(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn ended(&self) -> bool {
        self.ended.load(Ordering::Relaxed)
    }

    fn end(&self) {
        self.ended.store(true, Ordering::Release);
        self.end_waker.wake();
    }

    /// Whether the body ended; if not, its end wakes the task of `cx`.
    pub fn poll_ended(&self, cx: &mut std::task::Context<'_>) -> bool {
        if self.ended() {
            return true;
        }
        self.end_waker.register(cx.waker());
        self.ended()
    }
}

/// A request body as the downstream codec gives it.
pub enum DownstreamBody {
    Empty,
    /// From hyper's HTTP/1 server (a connection after an upgrade request).
    Hyper(Incoming),
    /// From Strait's HTTP/1.1 server codec.
    H1(crate::h1_server::RequestBody),
    /// From Strait's HTTP/2 server connection.
    H2(crate::h2_server::RequestBody),
}

impl Body for DownstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            DownstreamBody::Empty => Poll::Ready(None),
            DownstreamBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            DownstreamBody::H1(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            DownstreamBody::H2(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            DownstreamBody::Empty => true,
            DownstreamBody::Hyper(b) => b.is_end_stream(),
            DownstreamBody::H1(b) => b.is_end_stream(),
            DownstreamBody::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            DownstreamBody::Empty => SizeHint::with_exact(0),
            DownstreamBody::Hyper(b) => b.size_hint(),
            DownstreamBody::H1(b) => b.size_hint(),
            DownstreamBody::H2(b) => b.size_hint(),
        }
    }
}

pub enum RequestBody {
    Empty,
    Streaming {
        inner: DownstreamBody,
        received: Arc<ByteCount>,
    },
    /// Streamed through the stream's HTTP filters (`chain`), chunk by chunk.
    Filtered {
        inner: DownstreamBody,
        received: Arc<ByteCount>,
        chain: ChainId,
        /// The chain saw the end of the body.
        done: bool,
        /// A filter holds the end of the body until its callouts answer.
        waiting: bool,
        /// Trailers held while the chain flushed the body (boxed, as below).
        trailers: Option<Box<Frame<Bytes>>>,
    },
    /// One attempt's view of a body kept for retries.
    Replay(ReplayBody),
    /// A body the proxy made itself (a plugin's HTTP callout): data, then trailers.
    Full {
        data: Option<Bytes>,
        /// Boxed: a request moves a dozen times on its way upstream, and a
        /// `HeaderMap` inline would make every variant 96 bytes larger.
        trailers: Option<Box<http::HeaderMap>>,
    },
    /// A body fed over time (a plugin's gRPC stream); ends when the sender drops.
    Channel(tokio::sync::mpsc::UnboundedReceiver<Bytes>),
}

/// A request body kept while it streams, so each retry replays it from the start.
///
/// The source (the streaming or filtered body) is read once, by whichever attempt is
/// furthest along; every frame is kept until the total passes `limit`, when the copy
/// is dropped, `retry_or_shadow_abandoned` counted and the request is no longer
/// retriable (Envoy's rule). A new attempt supersedes the older ones: their bodies
/// stop, so only one attempt at a time pulls from the source.
pub struct ReplayBody {
    shared: Arc<parking_lot::Mutex<Replay>>,
    attempt: u32,
    /// Frames of `kept` this attempt has sent.
    sent: usize,
    hint: SizeHint,
}

struct Replay {
    source: Box<RequestBody>,
    kept: Vec<ReplayFrame>,
    kept_bytes: usize,
    limit: usize,
    overflowed: bool,
    /// The source failed (the downstream went away mid-body): nothing to replay.
    failed: bool,
    /// The source ended.
    ended: bool,
    attempt: u32,
    abandoned: crate::stats::Counter,
}

enum ReplayFrame {
    Data(Bytes),
    Trailers(http::HeaderMap),
}

impl ReplayFrame {
    fn frame(&self) -> Frame<Bytes> {
        match self {
            ReplayFrame::Data(d) => Frame::data(d.clone()),
            ReplayFrame::Trailers(t) => Frame::trailers(t.clone()),
        }
    }
}

/// An older attempt's body after a retry began.
#[derive(Debug)]
struct Superseded;

impl std::fmt::Display for Superseded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a retry superseded this attempt")
    }
}

impl std::error::Error for Superseded {}

/// The handle the router keeps to start each attempt's body.
#[derive(Clone)]
pub struct ReplayHandle(Arc<parking_lot::Mutex<Replay>>, SizeHint);

impl ReplayHandle {
    pub fn new(source: RequestBody, limit: usize, abandoned: crate::stats::Counter) -> Self {
        let hint = source.size_hint();
        ReplayHandle(
            Arc::new(parking_lot::Mutex::new(Replay {
                source: Box::new(source),
                kept: Vec::new(),
                kept_bytes: 0,
                limit,
                overflowed: false,
                failed: false,
                ended: false,
                attempt: 0,
                abandoned,
            })),
            hint,
        )
    }

    /// Whether the body can still be sent again (it stayed within the limit).
    pub fn replayable(&self) -> bool {
        let replay = self.0.lock();
        !replay.overflowed && !replay.failed
    }

    /// The body for the next attempt, from the first byte.
    pub fn next_attempt(&self) -> RequestBody {
        let mut replay = self.0.lock();
        replay.attempt += 1;
        RequestBody::Replay(ReplayBody {
            shared: self.0.clone(),
            attempt: replay.attempt,
            sent: 0,
            hint: self.1,
        })
    }
}

impl ReplayBody {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut replay = self.shared.lock();
        if replay.attempt != self.attempt {
            return Poll::Ready(Some(Err(Box::new(Superseded))));
        }
        if !replay.overflowed {
            if let Some(frame) = replay.kept.get(self.sent) {
                self.sent += 1;
                return Poll::Ready(Some(Ok(frame.frame())));
            }
        }
        if replay.ended {
            return Poll::Ready(None);
        }
        let frame = ready!(Pin::new(&mut *replay.source).poll_frame(cx));
        match &frame {
            Some(Ok(f)) if !replay.overflowed => {
                let kept = match f.data_ref() {
                    Some(d) => ReplayFrame::Data(d.clone()),
                    None => match f.trailers_ref() {
                        Some(t) => ReplayFrame::Trailers(t.clone()),
                        None => return Poll::Ready(frame),
                    },
                };
                replay.kept_bytes += f.data_ref().map_or(0, Bytes::len);
                if replay.kept_bytes > replay.limit {
                    replay.overflowed = true;
                    replay.kept = Vec::new();
                    replay.abandoned.inc();
                } else {
                    replay.kept.push(kept);
                    self.sent += 1;
                }
            }
            Some(Ok(_)) => {}
            Some(Err(_)) => replay.failed = true,
            None => replay.ended = true,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        let replay = self.shared.lock();
        let source_done = replay.ended || replay.source.is_end_stream();
        source_done && (replay.overflowed || self.sent >= replay.kept.len())
    }
}

/// The request body stream ended because a filter answered locally; the router sends
/// the reply it parked in the chain.
#[derive(Debug)]
pub struct FilterReplied;

impl std::fmt::Display for FilterReplied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an HTTP filter answered the request")
    }
}

impl std::error::Error for FilterReplied {}

impl RequestBody {
    pub fn empty() -> RequestBody {
        RequestBody::Empty
    }

    /// `data` (if any), then `trailers` (if any).
    pub fn full(data: Bytes, trailers: Option<http::HeaderMap>) -> RequestBody {
        RequestBody::Full {
            data: (!data.is_empty()).then_some(data),
            trailers: trailers.map(Box::new),
        }
    }

    /// Whether the body is known to have no bytes (so the request can be replayed).
    pub fn is_empty(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Streaming { inner, .. } => inner.is_end_stream(),
            RequestBody::Filtered {
                inner,
                done,
                waiting,
                trailers,
                ..
            } => *done && !*waiting && trailers.is_none() && inner.is_end_stream(),
            RequestBody::Replay(body) => body.is_end_stream(),
            RequestBody::Full { data, trailers } => data.is_none() && trailers.is_none(),
            RequestBody::Channel(_) => false,
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Replay(body) => body.poll_frame(cx),
            RequestBody::Full { data, trailers } => Poll::Ready(match data.take() {
                Some(data) => Some(Ok(Frame::data(data))),
                None => trailers.take().map(|t| Ok(Frame::trailers(*t))),
            }),
            RequestBody::Channel(rx) => rx
                .poll_recv(cx)
                .map(|data| data.map(|d| Ok(Frame::data(d)))),
            RequestBody::Streaming { inner, received } => {
                let frame = ready!(Pin::new(&mut *inner).poll_frame(cx));
                match &frame {
                    Some(Ok(f)) => {
                        if let Some(d) = f.data_ref() {
                            received.bytes.fetch_add(d.len() as u64, Ordering::Relaxed);
                        }
                    }
                    Some(Err(e)) => received.failed(e),
                    None => {}
                }
                if frame.is_none() || inner.is_end_stream() {
                    received.end();
                }
                Poll::Ready(frame)
            }
            RequestBody::Filtered {
                inner,
                received,
                chain,
                done,
                waiting,
                trailers,
            } => loop {
                if *waiting {
                    match ready!(chain.poll_body_wait(cx)) {
                        BodyVerdict::Wait => continue,
                        BodyVerdict::Forward(data) => {
                            *waiting = false;
                            if !data.is_empty() {
                                return Poll::Ready(Some(Ok(Frame::data(data))));
                            }
                        }
                        BodyVerdict::Hold => *waiting = false,
                        BodyVerdict::LocalReply(reply) => {
                            *waiting = false;
                            chain.set_pending_reply(*reply);
                            *trailers = None;
                            return Poll::Ready(Some(Err(Box::new(FilterReplied))));
                        }
                    }
                    continue;
                }
                if *done {
                    return Poll::Ready(trailers.take().map(|t| Ok(*t)));
                }
                let (chunk, end) = match ready!(Pin::new(&mut *inner).poll_frame(cx)) {
                    Some(Err(e)) => {
                        received.failed(&e);
                        return Poll::Ready(Some(Err(e)));
                    }
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => {
                            received
                                .bytes
                                .fetch_add(data.len() as u64, Ordering::Relaxed);
                            (data, inner.is_end_stream())
                        }
                        Err(frame) => {
                            *trailers = Some(Box::new(frame));
                            (Bytes::new(), true)
                        }
                    },
                    None => (Bytes::new(), true),
                };
                *done = end;
                if end {
                    received.end();
                }
                match chain.request_body(chunk, end) {
                    BodyVerdict::Forward(data) if data.is_empty() => continue,
                    BodyVerdict::Forward(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    BodyVerdict::Hold => continue,
                    // A filter waits for its callouts' answers, and the body with it.
                    BodyVerdict::Wait => *waiting = true,
                    BodyVerdict::LocalReply(reply) => {
                        chain.set_pending_reply(*reply);
                        *trailers = None;
                        return Poll::Ready(Some(Err(Box::new(FilterReplied))));
                    }
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Streaming { inner, .. } => inner.size_hint(),
            // Filters may change the length.
            RequestBody::Filtered { .. } => SizeHint::default(),
            RequestBody::Replay(body) => body.hint,
            RequestBody::Full {
                data,
                trailers: None,
            } => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            RequestBody::Full { .. } | RequestBody::Channel(_) => SizeHint::default(),
        }
    }
}

/// Which of a stream's timers fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// The route's `timeout` (504, `UT`).
    Route,
    /// The connection manager's `request_timeout` (408).
    Request,
    /// `stream_idle_timeout` / the route's `idle_timeout` (`SI`).
    Idle,
    /// The answering attempt's `per_try_idle_timeout` (504, `UT`).
    PerTryIdle,
    /// `max_stream_duration` (504 or 408, no flag).
    MaxDuration,
    /// The current attempt's per-try timer (the router handles it).
    Attempt,
}

/// A stream's timers (route timeout, request timeout, max stream duration, idle
/// timeouts) folded into one `Sleep`, which serves the wait for the response head and
/// then the body.
pub struct StreamTimers {
    route: Option<Instant>,
    request: Option<Instant>,
    max_duration: Option<Instant>,
    idle: Option<Duration>,
    /// The answering attempt's `per_try_idle_timeout`, once its head is in.
    try_idle: Option<Duration>,
    /// The current attempt's per-try deadline while its head is awaited: one timer
    /// serves the stream and its attempts.
    attempt: Option<Instant>,
    /// The current attempt's per-try timeout before it is armed: as Envoy's, it
    /// starts when a connection is ready for the attempt (`arm_attempt`), so time
    /// spent connecting or queued for a connection does not count.
    attempt_pending: Option<Duration>,
    /// Last activity, for the idle timers.
    touched: Instant,
    /// The request body's progress; `None`: the request had no body.
    request_body: Option<Arc<ByteCount>>,
    /// The route timeout of a request whose body is still arriving: as Envoy's, it
    /// starts when the request is complete (a slow upload is not a slow upstream).
    route_pending: Option<Duration>,
    pub sleep: Pin<Box<Sleep>>,
}

/// The stream's deadlines, as the router computed them.
#[derive(Default)]
pub struct Deadlines {
    pub route: Option<Instant>,
    pub request: Option<Instant>,
    pub max_duration: Option<Instant>,
    pub idle: Option<Duration>,
    /// The first attempt's per-try timeout, armed when its connection is ready and
    /// the request is complete.
    pub attempt: Option<Duration>,
    /// The route timeout, started when the request body ends (`route` is for a
    /// request without a body).
    pub route_after_body: Option<Duration>,
}

impl StreamTimers {
    pub fn new(deadlines: Deadlines, request_body: Option<Arc<ByteCount>>) -> Option<StreamTimers> {
        let now = crate::clock::tokio_now();
        let waiting = deadlines.attempt.is_some() || deadlines.route_after_body.is_some();
        // As `next_wake` will see them: no attempt or per-try idle timer yet.
        let at = [
            deadlines.route,
            deadlines.request,
            deadlines.max_duration,
            None,
        ];
        let next = match earliest(at, now, [deadlines.idle, None]) {
            Some(next) => next,
            None if waiting => far_future(),
            None => return None,
        };
        let timers = StreamTimers {
            route: deadlines.route,
            request: deadlines.request,
            max_duration: deadlines.max_duration,
            idle: deadlines.idle,
            try_idle: None,
            attempt: None,
            attempt_pending: deadlines.attempt,
            touched: now,
            request_body,
            route_pending: deadlines.route_after_body,
            // Made with its deadline, the sleep enters the timer wheel once, when
            // first polled (a reset would move it there at once).
            sleep: Box::pin(tokio::time::sleep_until(next)),
        };
        Some(timers)
    }

    /// Timers with no deadline yet, for a stream that had none.
    fn empty(request_body: Option<Arc<ByteCount>>) -> StreamTimers {
        let now = crate::clock::tokio_now();
        StreamTimers {
            route: None,
            request: None,
            max_duration: None,
            idle: None,
            try_idle: None,
            attempt: None,
            attempt_pending: None,
            touched: now,
            request_body,
            route_pending: None,
            sleep: Box::pin(tokio::time::sleep_until(now)),
        }
    }

    /// Adds the answering attempt's `per_try_idle_timeout` for the response body,
    /// making the timers if the stream had none.
    pub fn with_try_idle(
        timers: Option<StreamTimers>,
        try_idle: Duration,
        request_body: Option<Arc<ByteCount>>,
    ) -> Option<StreamTimers> {
        let mut timers = timers.unwrap_or_else(|| StreamTimers::empty(request_body));
        timers.try_idle = Some(try_idle);
        timers.touch();
        Some(timers)
    }

    /// Sets the current attempt's per-try deadline, making the timers if the stream
    /// had none.
    /// Gives the next attempt a per-try timeout of `timeout`, armed when its
    /// connection is ready ([`StreamTimers::arm_attempt`]).
    pub fn set_attempt(timers: &mut Option<StreamTimers>, timeout: Duration) {
        let t = timers.get_or_insert_with(|| StreamTimers::empty(None));
        t.attempt = None;
        t.attempt_pending = Some(timeout);
    }

    /// Starts the pending per-try timer: the attempt's connection is ready.
    pub fn arm_attempt(&mut self) {
        if let Some(timeout) = self.attempt_pending.take() {
            self.attempt = Some(crate::clock::tokio_now() + timeout);
            if let Some(next) = self.next_wake() {
                self.sleep.as_mut().reset(next);
            }
        }
    }

    /// Whether a per-try timer waits for its attempt's connection.
    pub fn attempt_pending(&self) -> bool {
        self.attempt_pending.is_some()
    }

    /// The response head is in: `request_timeout` no longer applies (as in Envoy,
    /// which disarms it then). The timer is left as it is; `fired` re-arms it.
    pub fn response_started(&mut self) {
        self.request = None;
    }

    /// Whether the request is complete: it had no body, or the body ended.
    pub fn request_ended(&self) -> bool {
        self.request_body.as_ref().is_none_or(|b| b.ended())
    }

    /// Polls the stream's timers: starts the route timeout once the request body has
    /// ended (until then the body's end wakes this task, as it does for a per-try
    /// timer waiting for it), then `Ready` with the timer that fired, if one did.
    pub fn poll_expiry(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Expiry> {
        if self.route_pending.is_some() || self.attempt_pending.is_some() {
            let ended = self.request_body.as_ref().is_none_or(|b| b.poll_ended(cx));
            if ended {
                if let Some(timeout) = self.route_pending.take() {
                    self.route = Some(crate::clock::tokio_now() + timeout);
                    if let Some(next) = self.next_wake() {
                        self.sleep.as_mut().reset(next);
                    }
                }
            }
        }
        // `fired` re-arms the sleep for a deadline that moved; poll it again so the
        // new one registers the waker.
        while self.sleep.as_mut().poll(cx).is_ready() {
            if let Some(expiry) = self.fired() {
                return Poll::Ready(expiry);
            }
        }
        Poll::Pending
    }

    /// Clears the attempt's deadline once its head is in. The timer is left as it is
    /// (resetting it costs more than the rare early wake, which `fired` re-arms).
    pub fn clear_attempt(timers: &mut Option<StreamTimers>) {
        if let Some(t) = timers {
            t.attempt = None;
            t.attempt_pending = None;
        }
    }

    /// Which timer fired, once `sleep` has; `None` when none is due (a deadline was
    /// cleared after the timer was set), and the timer is re-armed for the next one.
    pub fn fired(&mut self) -> Option<Expiry> {
        // A request deadline outlived by the request's end is disarmed, not re-armed.
        if self.request.is_some() && self.request_ended() {
            self.request = None;
        }
        let expiry = self.due(Instant::now());
        if expiry.is_none() {
            let next = self.next_wake().unwrap_or_else(far_future);
            self.sleep.as_mut().reset(next);
        }
        expiry
    }

    fn next_wake(&self) -> Option<Instant> {
        let at = [self.route, self.request, self.max_duration, self.attempt];
        earliest(at, self.touched, [self.idle, self.try_idle])
    }

    /// Activity on the stream: pushes the idle deadlines back. The timer is moved
    /// only when that makes it earlier (a new idle timer); a deadline pushed back
    /// leaves it where it is, to wake early once and be re-armed by `fired` — a
    /// reset per chunk moved the wheel's entry every time (~270 instructions a
    /// request). The timer is never later than the other deadlines (whatever sets
    /// one re-arms it: `new`, `arm_attempt`, `poll_expiry`, `fired`), so only the
    /// idle deadline can bring it forward: checked without the others.
    pub fn touch(&mut self) {
        if let Some(idle) = shorter([self.idle, self.try_idle]) {
            self.touched = crate::clock::tokio_now();
            let at = self.touched + idle;
            if at < self.sleep.deadline() {
                self.sleep.as_mut().reset(at);
            }
        }
    }

    fn due(&self, now: Instant) -> Option<Expiry> {
        if self.route.is_some_and(|d| now >= d) {
            Some(Expiry::Route)
        } else if self.request.is_some_and(|d| now >= d) {
            // Only while the request is incomplete (`fired` disarms it after): Envoy
            // disarms `request_timeout` once the request is in; it bounds receiving
            // the request, not waiting for the answer.
            Some(Expiry::Request)
        } else if self.max_duration.is_some_and(|d| now >= d) {
            Some(Expiry::MaxDuration)
        } else if self.attempt.is_some_and(|d| now >= d) {
            Some(Expiry::Attempt)
        } else if self.try_idle.is_some_and(|d| now >= self.touched + d) {
            Some(Expiry::PerTryIdle)
        } else if self.idle.is_some_and(|d| now >= self.touched + d) {
            Some(Expiry::Idle)
        } else {
            None
        }
    }

    /// The error a fired timer answers with.
    pub fn error(&self, expiry: Expiry) -> ProxyError {
        match expiry {
            Expiry::Route => ProxyError::UpstreamTimeout,
            Expiry::Request => ProxyError::RequestTimeout,
            Expiry::Idle => ProxyError::StreamIdleTimeout {
                request_complete: self.request_ended(),
            },
            Expiry::PerTryIdle => ProxyError::PerTryIdleTimeout,
            Expiry::Attempt => ProxyError::PerTryTimeout,
            Expiry::MaxDuration => ProxyError::MaxStreamDuration {
                request_complete: self.request_body.as_ref().is_none_or(|b| b.ended()),
            },
        }
    }
}

pub struct ResponseBody {
    kind: Kind,
    /// The stream the body belongs to. Boxed: a response moves about ten times on
    /// its way from the upstream codec to the downstream one, and ~570 bytes inline
    /// cost more in copies than one allocation.
    stream: Box<BodyStream>,
}

/// What a response body carries besides its bytes.
struct BodyStream {
    lease: Option<Lease>,
    timers: Option<StreamTimers>,
    guard: Option<StreamGuard>,
    filters: Option<ResponseFilters>,
}

/// The stream's HTTP filters on an upstream response body.
struct ResponseFilters {
    chain: ChainId,
    /// The chain saw the end of the body.
    done: bool,
    /// A filter holds the end of the body until its callouts answer.
    waiting: bool,
    /// Trailers held while the chain flushed the body.
    trailers: Option<Frame<Bytes>>,
}

enum Kind {
    Upstream(UpstreamBody),
    Full(Option<Bytes>),
}

impl ResponseBody {
    pub fn upstream(
        inner: UpstreamBody,
        lease: Option<Lease>,
        timers: Option<StreamTimers>,
        guard: StreamGuard,
    ) -> ResponseBody {
        ResponseBody {
            kind: Kind::Upstream(inner),
            // Built in its box: `Box::new` wrote the value (the stream's guard, timers
            // and lease) on the stack first and copied it into memory the request
            // had not touched yet.
            stream: Box::write(
                Box::new_uninit(),
                BodyStream {
                    lease,
                    timers,
                    guard: Some(guard),
                    filters: None,
                },
            ),
        }
    }

    /// The response head's names as the upstream wrote them (HTTP/1.1 → HTTP/1.1
    /// keeps header case).
    pub(crate) fn header_case(&self) -> Option<&crate::h1::HeaderCase> {
        match &self.kind {
            Kind::Upstream(inner) => inner.header_case(),
            Kind::Full(_) => None,
        }
    }

    /// The stream's filter chain, to which the downstream codec hands the response
    /// head it wrote (the plugins' `on_log` sees it).
    pub(crate) fn chain(&self) -> Option<ChainId> {
        let guard = self.stream.guard.as_ref()?;
        guard.chain.as_ref().map(crate::chain::ChainHandle::id)
    }

    /// Runs the upstream body through the stream's HTTP filters.
    pub fn filtered(mut self, chain: ChainId) -> ResponseBody {
        let done = self.is_end_stream();
        self.stream.filters = Some(ResponseFilters {
            chain,
            done,
            waiting: false,
            trailers: None,
        });
        self
    }

    pub fn full(bytes: Bytes, guard: Option<StreamGuard>) -> ResponseBody {
        let data = (!bytes.is_empty()).then_some(bytes);
        ResponseBody {
            kind: Kind::Full(data),
            stream: Box::new(BodyStream {
                lease: None,
                timers: None,
                guard,
                filters: None,
            }),
        }
    }

    fn finish(&mut self, flag: Option<&'static str>) {
        if flag.is_none() {
            if let Some(lease) = self.stream.lease.take() {
                lease.release();
            }
        } else {
            self.stream.lease = None;
        }
        if let Some(mut g) = self.stream.guard.take() {
            if let Some(f) = flag {
                g.set_flag(f);
            }
            g.finish();
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let polled = match &mut this.kind {
            Kind::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Kind::Upstream(inner) => match poll_filtered(inner, &mut this.stream.filters, cx) {
                Poll::Ready(r) => Poll::Ready(r),
                Poll::Pending => {
                    if let Some(t) = &mut this.stream.timers {
                        if let Poll::Ready(expiry) = t.poll_expiry(cx) {
                            // Headers are gone already: the stream is reset,
                            // logged with the status sent and the timer's details
                            // (`200 SI stream_idle_timeout`, as Envoy).
                            let err = t.error(expiry);
                            if let Some(g) = &mut this.stream.guard {
                                g.timed_out(expiry);
                                g.ended_by(err.flag(), err.details());
                            }
                            this.finish(Some(err.flag()));
                            return Poll::Ready(Some(Err(Box::new(err))));
                        }
                    }
                    Poll::Pending
                }
            },
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(t) = &mut this.stream.timers {
                    t.touch();
                }
                if let (Some(g), Some(d)) = (&mut this.stream.guard, frame.data_ref()) {
                    g.bytes_sent += d.len() as u64;
                }
            }
            Poll::Ready(Some(Err(e))) if e.is::<FilterReplied>() => this.finish(Some("UR")),
            Poll::Ready(Some(Err(e))) => {
                let (flag, details) = after_response_started(e);
                if let Some(g) = &mut this.stream.guard {
                    g.ended_by(flag, details);
                }
                // The connection is not given back: `Some` drops the lease.
                this.finish(Some(flag));
            }
            Poll::Ready(None) => this.finish(None),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        if let Some(f) = &self.stream.filters {
            if !f.done || f.waiting || f.trailers.is_some() {
                return false;
            }
        }
        match &self.kind {
            Kind::Full(d) => d.is_none(),
            Kind::Upstream(inner) => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        if self.stream.filters.is_some() {
            return SizeHint::default();
        }
        match &self.kind {
            Kind::Full(Some(d)) => SizeHint::with_exact(d.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Upstream(inner) => inner.size_hint(),
        }
    }
}

/// Polls the upstream body, through the stream's filters when there are any: a held
/// chunk is not returned, the end flushes what the filters held.
fn poll_filtered(
    inner: &mut UpstreamBody,
    filters: &mut Option<ResponseFilters>,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    let Some(f) = filters else {
        return Pin::new(inner).poll_frame(cx);
    };
    loop {
        if f.waiting {
            let verdict = ready!(f.chain.poll_body_wait(cx));
            if let BodyVerdict::Wait = verdict {
                continue;
            }
            f.waiting = false;
            match verdict {
                BodyVerdict::Forward(data) if !data.is_empty() => {
                    return Poll::Ready(Some(Ok(Frame::data(data))))
                }
                BodyVerdict::LocalReply(reply) => {
                    return Poll::Ready(Some(Err(late_reply(f, *reply))))
                }
                _ => continue,
            }
        }
        if f.done {
            if let Some(trailers) = f.trailers.take() {
                return Poll::Ready(Some(Ok(trailers)));
            }
            return Pin::new(&mut *inner).poll_frame(cx);
        }
        let (chunk, end) = match ready!(Pin::new(&mut *inner).poll_frame(cx)) {
            Some(Err(e)) => return Poll::Ready(Some(Err(e))),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => (data, inner.is_end_stream()),
                Err(frame) => {
                    f.trailers = Some(frame);
                    (Bytes::new(), true)
                }
            },
            None => (Bytes::new(), true),
        };
        f.done = end;
        match f.chain.response_body(chunk, end) {
            BodyVerdict::Forward(data) if data.is_empty() => continue,
            BodyVerdict::Forward(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
            BodyVerdict::Hold => continue,
            // A filter waits for its callouts' answers, and the body with it.
            BodyVerdict::Wait => f.waiting = true,
            BodyVerdict::LocalReply(reply) => return Poll::Ready(Some(Err(late_reply(f, *reply)))),
        }
    }
}

/// Envoy's response flag and details for an upstream body that failed after its head
/// went to the client. Envoy's HTTP/1.1 codec takes a body cut short by the
/// connection's end (or reset) for a protocol error, as it does a malformed one
/// (checked against Envoy 1.40: `200 UPE upstream_reset_after_response_started{
/// protocol_error}`); an HTTP/2 upstream's RST_STREAM is a remote reset.
fn after_response_started(error: &BoxError) -> (&'static str, &'static str) {
    if let Some(failure) = error.downcast_ref::<crate::h1_client::Failure>() {
        if !matches!(failure, crate::h1_client::Failure::Body(_)) {
            return (
                "UPE",
                "upstream_reset_after_response_started{protocol_error}",
            );
        }
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&**error);
    while let Some(e) = source {
        if e.downcast_ref::<h2::Error>()
            .is_some_and(h2::Error::is_reset)
        {
            return ("UR", "upstream_reset_after_response_started{remote_reset}");
        }
        source = e.source();
    }
    (
        "UC",
        "upstream_reset_after_response_started{connection_termination}",
    )
}

/// A filter's local reply (or reset) after the response head was sent: all that is
/// left is to reset the stream, which the caller does for any error.
fn late_reply(f: &mut ResponseFilters, reply: strait_filters::LocalReply) -> BoxError {
    if !reply.reset {
        tracing::warn!(status = %reply.status, details = %reply.details,
            "an HTTP filter answered after the response head was sent; resetting");
    }
    f.done = true;
    f.trailers = None;
    Box::new(FilterReplied)
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if self.stream.guard.is_some() {
            // hyper stops polling once `is_end_stream` says so; anything else dropped
            // early means the downstream went away (Envoy's `DC`).
            let flag = (!self.is_end_stream()).then_some("DC");
            self.finish(flag);
        }
    }
}

/// The earliest of a stream's deadlines; the idle timeouts count from `touched`.
fn earliest(
    at: [Option<Instant>; 4],
    touched: Instant,
    idle: [Option<Duration>; 2],
) -> Option<Instant> {
    // The shorter idle timeout is the earlier of the two: one addition (an `Instant`
    // sum normalises nanoseconds and checks for overflow). A loop, not
    // `flatten().chain().min()`, which cost ~140 instructions a call.
    let mut next = shorter(idle).map(|d| touched + d);
    for t in at.into_iter().flatten() {
        if next.is_none_or(|n| t < n) {
            next = Some(t);
        }
    }
    next
}

/// The shorter of two optional timeouts.
fn shorter([a, b]: [Option<Duration>; 2]) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A wake-up time no stream reaches (a timer with nothing due yet).
fn far_future() -> Instant {
    crate::clock::tokio_now() + Duration::from_secs(86_400 * 365)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_failed_after_the_head_is_named_as_envoy_names_it() {
        let cases: [(BoxError, &str, &str); 4] = [
            (
                Box::new(crate::h1_client::Failure::Broken),
                "UPE",
                "upstream_reset_after_response_started{protocol_error}",
            ),
            (
                Box::new(crate::h1_client::Failure::Protocol("bad chunk")),
                "UPE",
                "upstream_reset_after_response_started{protocol_error}",
            ),
            // An error of h2's own making (not a peer's RST_STREAM, which only h2
            // makes) is no remote reset.
            (
                Box::new(h2::Error::from(h2::Reason::CANCEL)),
                "UC",
                "upstream_reset_after_response_started{connection_termination}",
            ),
            (
                Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
                "UC",
                "upstream_reset_after_response_started{connection_termination}",
            ),
        ];
        for (error, flag, details) in cases {
            assert_eq!(after_response_started(&error), (flag, details), "{error}");
        }
    }

    #[test]
    fn earliest_takes_the_first_deadline_or_idle_timeout() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let at = |n: u64| Some(t0 + s(n));
        assert_eq!(earliest([None; 4], t0, [None, None]), None);
        assert_eq!(
            earliest([at(5), None, at(3), at(4)], t0, [None, None]),
            at(3)
        );
        // The shorter idle timeout counts, from `touched`.
        assert_eq!(
            earliest([at(5), None, None, None], t0, [Some(s(9)), Some(s(2))]),
            at(2)
        );
        assert_eq!(earliest([None; 4], t0 + s(1), [None, Some(s(2))]), at(3));
        // A deadline before the idle one wins.
        assert_eq!(
            earliest([None, at(1), None, None], t0, [Some(s(2)), None]),
            at(1)
        );
    }
}
