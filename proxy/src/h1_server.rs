//! Strait's own HTTP/1.1 server codec, for downstream connections.
//!
//! One loop per connection reads a request head, hands the request to the router in
//! the same task, and writes the response as its body comes: no dispatcher, no
//! channel between the connection and the request, and the head parsed once into
//! the `HeaderMap` the router uses. The names keep their case in a [`HeaderCase`]
//! record (only names with uppercase letters), which Strait's client codec writes
//! back upstream, and the response's record (from the upstream) is written back
//! here: HTTP/1.1 → HTTP/1.1 keeps header case both ways.
//!
//! The socket and the read buffer are shared (`Side`) between the loop and the
//! request body, which the upstream side pulls while the response may already be
//! streaming back; each poll locks it for the length of one read or write, never
//! across another poll.
//!
//! Behaviour follows hyper's server, which Strait used before, and RFC 9112: `400`
//! for a malformed head, `431` for one too large, `408` when a head takes longer than
//! `request_headers_timeout`; a request with both `content-length` and
//! `transfer-encoding` is refused by the router (smuggling) and the connection closed;
//! `Expect: 100-continue` is answered when the body is first read; responses get
//! `content-length` or chunked framing (close-delimited for HTTP/1.0), `date`, and
//! `connection: close` / `keep-alive` as the exchange decided; trailers go out on a
//! chunked response when its `trailer` header announced them. Upgrades (`Upgrade`,
//! `CONNECT`) are left to hyper's server for the rest of the connection.

use std::borrow::Cow;
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use strait_xds::model::{HttpConnectionManager, ServerHeaderTransformation};
use tokio::io::AsyncWrite;

use crate::body::{DownstreamBody, ResponseBody};
use crate::conn::IdleEntry;
use crate::error::ProxyError;
use crate::h1::{
    self, CasedWriter, Decoded, Decoder, Framing, HeaderCase, WriteError, Writer, MAX_HEADERS,
    READ_SMALL,
};
use crate::netfilter::Downstream;
use crate::router::{self, ConnCtx};
use crate::stream::{LogInfo, StreamGuard};

/// The connection's socket and read buffer, shared by its loop and the request body.
pub(crate) struct Side {
    pub(crate) io: Downstream,
    /// Bytes read and not yet parsed.
    pub(crate) read: BytesMut,
    /// The current request's body.
    body: Decoder,
    /// `Expect: 100-continue` to answer (how much of the answer went out).
    continue_pending: Option<usize>,
    /// A drain asked the connection to close after the current exchange.
    pub(crate) closing: bool,
    /// Draining before the connection's first request: how long it may still come
    /// ([`FIRST_REQUEST_GRACE`]).
    grace: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The loop waits for a new request with nothing buffered: the codec can be let
    /// go (see `conn`).
    pub(crate) idle: bool,
    /// The socket refused the last write.
    write_blocked: bool,
    /// The last request head's header names, from the codec's second head on; the
    /// first is looked up in the worker's cache of first heads (`h1::FIRST_NAMES`).
    names: h1::NameCache,
    /// A head has been parsed since the codec started.
    parsed_one: bool,
}

pub(crate) type SharedSide = Arc<parking_lot::Mutex<Side>>;

impl Side {
    pub(crate) fn new(io: Downstream, read: BytesMut) -> SharedSide {
        Arc::new(parking_lot::Mutex::new(Side {
            io,
            read,
            body: Decoder::new(Framing::Length(0)),
            continue_pending: None,
            closing: false,
            grace: None,
            idle: false,
            write_blocked: false,
            names: h1::NameCache::default(),
            parsed_one: false,
        }))
    }

    /// Whether the codec holds nothing a release would lose.
    pub(crate) fn releasable(&self) -> bool {
        self.idle && self.read.is_empty() && !self.write_blocked
    }
}

/// Writes through the shared side, locking it per call.
struct SideWriter<'a>(&'a SharedSide);

impl AsyncWrite for SideWriter<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut side = self.0.lock();
        let polled = Pin::new(&mut side.io).poll_write(cx, buf);
        side.write_blocked = polled.is_pending();
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut side = self.0.lock();
        let polled = Pin::new(&mut side.io).poll_write_vectored(cx, bufs);
        side.write_blocked = polled.is_pending();
        polled
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0.lock().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0.lock().io).poll_shutdown(cx)
    }
}

/// A request body read from the downstream connection as the upstream side pulls it.
pub struct RequestBody {
    side: SharedSide,
    ended: bool,
    hint: SizeHint,
}

/// The request body could not be read to its end.
#[derive(Debug)]
pub struct BodyError {
    what: &'static str,
    /// The client sent bytes that are not a body of its framing (a bad chunk line),
    /// rather than going away.
    malformed: bool,
}

impl BodyError {
    /// What was wrong with the body, when the client framed it wrongly: the request
    /// is refused with 400, as Envoy's codec does, not taken for an upstream reset.
    pub fn malformed(&self) -> Option<&'static str> {
        self.malformed.then_some(self.what)
    }
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "downstream request body: {}", self.what)
    }
}

impl std::error::Error for BodyError {}

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        let mut side = this.side.lock();
        let side = &mut *side;
        // The client waits for a go-ahead before it sends the body.
        while let Some(sent) = side.continue_pending {
            match ready!(Pin::new(&mut side.io).poll_write(cx, &CONTINUE[sent..])) {
                Ok(n) if n > 0 && sent + n < CONTINUE.len() => {
                    side.continue_pending = Some(sent + n)
                }
                Ok(n) if n > 0 => side.continue_pending = None,
                _ => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(BodyError {
                        what: "the connection failed",
                        malformed: false,
                    })));
                }
            }
        }
        let frame = match ready!(side.body.poll_decode(&mut side.read, &mut side.io, cx)) {
            Decoded::Data(data) => Frame::data(data),
            Decoded::Trailers(trailers) => Frame::trailers(trailers),
            Decoded::End => {
                this.ended = true;
                return Poll::Ready(None);
            }
            Decoded::Failed(what) => {
                this.ended = true;
                return Poll::Ready(Some(Err(BodyError {
                    what,
                    malformed: false,
                })));
            }
            Decoded::Malformed(what) => {
                this.ended = true;
                return Poll::Ready(Some(Err(BodyError {
                    what,
                    malformed: true,
                })));
            }
        };
        this.ended = side.body.done();
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

/// How the loop ended.
pub(crate) enum Outcome {
    /// The connection is done (closed by either side, or after an error answer).
    Closed,
    /// The next request asks for an upgrade: hyper's server takes the connection on,
    /// from the bytes still in the read buffer.
    Upgrade,
}

/// What the head read found.
enum Head {
    Request(Parsed),
    /// A head that cannot be served: answered with this status, then the connection
    /// closes.
    Refuse(Refused),
    Upgrade,
    Closed,
}

/// A parsed request and what the codec needs to know of it.
struct Parsed {
    /// Boxed, as the router takes it.
    request: router::DownstreamRequest,
    /// The names that came with uppercase letters, for the upstream's HTTP/1.1 head.
    case: Option<HeaderCase>,
    keep_alive: bool,
    /// Both `content-length` and `transfer-encoding`: refused, and the connection
    /// closes after the answer.
    smuggling: bool,
    /// How the body comes (`Length(0)`: none, or none read).
    framing: Framing,
    expect_continue: bool,
}

/// How long an exchange on a connection whose socket has not joined the reactor
/// runs before the connection watches its client for leaving (which registers the
/// socket). HAProxy does not watch at all by default; Envoy and hyper watch at once.
/// The wait is an entry in the worker's idle list, which its heartbeat sweeps every
/// 250 ms (so watching starts 0.5 to 0.75 s in): a tokio timer cost ~500
/// instructions per request, and one due before the timer driver's next planned
/// wake-up an `eventfd` write too (at 100 ms, 0.29 writes per request).
const SPECULATIVE_WATCH: std::time::Duration = std::time::Duration::from_millis(500);

/// Envoy's drain-close while the server's health check is failed
/// ([`crate::conn::drain_close`]), counted in `downstream_cx_drain_close`.
#[inline]
fn drain_close(ctx: &ConnCtx) -> bool {
    let close = crate::conn::drain_close(ctx);
    if close {
        ctx.listener.http.downstream_cx_drain_close.inc();
    }
    close
}

/// How long a drained connection that has not sent its first request yet waits for
/// it (see `conn::Watch::wait`).
pub(crate) const FIRST_REQUEST_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Serves requests until the connection closes or asks for an upgrade.
pub(crate) async fn serve(side: SharedSide, ctx: Arc<ConnCtx>) -> io::Result<Outcome> {
    let hcm = &ctx.listener.config.hcm;
    // hyper's limit was the head size plus 4 KiB for the request line; the router
    // checks `max_request_headers_kb` itself (431 with the listener's wording).
    let max_head = (hcm.max_request_headers_kb as usize * 1024).max(8192) + 4096;
    let headers_timeout = hcm.request_headers_timeout;
    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    loop {
        let head = std::future::poll_fn(|cx| {
            let mut guard = side.lock();
            let s = &mut *guard;
            loop {
                if !s.read.is_empty() {
                    let parsed = match s.parsed_one {
                        true => parse(&mut s.read, &mut s.names, &side),
                        false => h1::FIRST_NAMES
                            .with_borrow_mut(|names| parse(&mut s.read, names, &side)),
                    };
                    match parsed {
                        Ok(Some(head)) => {
                            s.parsed_one = true;
                            s.idle = false;
                            if let Head::Request(parsed) = &head {
                                s.body = Decoder::new(parsed.framing);
                                s.continue_pending = parsed.expect_continue.then_some(0);
                            }
                            return Poll::Ready(Ok(head));
                        }
                        Ok(None) if s.read.len() > max_head => {
                            return Poll::Ready(Ok(Head::Refuse(Refused::too_large(
                                "request head larger than max_request_headers_kb",
                            ))))
                        }
                        Ok(None) => {}
                        Err(refused) => return Poll::Ready(Ok(Head::Refuse(refused))),
                    }
                    // A head has begun: it has `request_headers_timeout` to complete.
                    if let Some(t) = headers_timeout {
                        let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(t)));
                        if timer.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(Ok(Head::Refuse(Refused {
                                status: StatusCode::REQUEST_TIMEOUT,
                                why: "request head not complete within request_headers_timeout"
                                    .into(),
                                details: "request_header_timeout",
                            })));
                        }
                    }
                } else if s.closing {
                    // A drain. A connection that has not sent its first request
                    // (accepted during a graceful drain, or just before one) is
                    // served once if it comes soon; the others close now.
                    let grace = s
                        .grace
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(FIRST_REQUEST_GRACE)));
                    if s.parsed_one || grace.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Ok(Head::Closed));
                    }
                }
                s.idle = s.read.is_empty();
                match ready!(h1::poll_read(&mut s.io, &mut s.read, cx, READ_SMALL)) {
                    Ok(0) => return Poll::Ready(Ok(Head::Closed)),
                    Ok(_) => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
        })
        .await?;
        timer = None;
        let parsed = match head {
            Head::Request(parsed) => parsed,
            Head::Closed => return Ok(Outcome::Closed),
            Head::Upgrade => return Ok(Outcome::Upgrade),
            Head::Refuse(refused) => {
                let Refused { status, why, .. } = &refused;
                tracing::debug!(peer = %ctx.peer, %status, %why, "refused a request head");
                let guard = refused_stream(&ctx, &refused);
                let _ = refuse(&side, *status, why, hcm, guard).await;
                return Ok(Outcome::Closed);
            }
        };
        let Parsed {
            request,
            case,
            keep_alive,
            smuggling,
            ..
        } = parsed;
        let head_request = request.method() == Method::HEAD;
        let version = request.version();
        let activity = &ctx.activity;
        activity.started.fetch_add(1, Ordering::Relaxed);
        let active = crate::conn::Active::new(&ctx);
        // The request future is several KiB: built in its box, never copied.
        let answer = {
            let mut handling =
                crate::pin_in_place!(router::handle(request, case, ctx.clone(), smuggling));
            // While the answer is awaited the client may go away: its end of the
            // connection cancels the request (and its upstream exchange, callouts…),
            // as hyper's server and Envoy do. Bytes it sends meanwhile (a pipelined
            // request) wait in the buffer, up to a head's worth.
            let mut queued = false;
            let mut grace = None;
            std::future::poll_fn(|cx| {
                // The first poll only puts the task at the back of the worker's run
                // queue: the connections that were ready together are all read and
                // parsed first, then routed and sent upstream together, instead of a
                // parse between each two upstream writes. The upstream (the same
                // server, usually) is then woken once per batch, not per request:
                // behind Strait NGINX blocked and was woken 0.15-0.23 times per
                // request, behind HAProxy (which runs its streams before sending)
                // 0.06, with the batch 0.08-0.12. The second poll costs ~800
                // instructions; the wake-up IPIs saved cost more (median CPU per
                // request -3% in paired `perf record` runs; see perf/README.md).
                // Envoy defers its writes to the end of the event-loop pass for the
                // same reason. An idle worker polls the task again at once. (HTTP/2
                // batches by itself: a connection's streams run in its task, and what
                // they answer goes out in one flush.)
                if !queued {
                    queued = true;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                if let Poll::Ready(answer) = handling.as_mut().poll(cx) {
                    return Poll::Ready(Some(answer));
                }
                let mut guard = side.lock();
                let s = &mut *guard;
                // A socket that never had to wait is not in the reactor yet (see
                // `socket`): watching it now would register it, two `epoll_ctl` the
                // usual quick exchange never needs. It is watched once the answer has
                // taken `SPECULATIVE_WATCH`, so a client that leaves a slow request
                // still cancels it, that much later.
                if s.io.speculative() {
                    let grace = grace.get_or_insert_with(|| {
                        IdleEntry::enter(
                            Some(crate::clock::tokio_now() + SPECULATIVE_WATCH),
                            crate::conn::Drained::of(&ctx.listener.config),
                        )
                    });
                    if grace.poll_end(cx).is_none() {
                        return Poll::Pending;
                    }
                }
                while s.body.done() && s.read.len() < max_head {
                    match h1::poll_read(&mut s.io, &mut s.read, cx, READ_SMALL) {
                        Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(None),
                        Poll::Ready(Ok(_)) => {}
                        Poll::Pending => break,
                    }
                }
                Poll::Pending
            })
            .await
        };
        let response = match answer {
            Some(Ok(response)) => response,
            // The client went away (while the answer was awaited, or before its body
            // ended), or no response (a filter reset the stream): the connection
            // closes, as hyper's did.
            None | Some(Err(ProxyError::DownstreamDisconnect)) => {
                ctx.listener
                    .http
                    .downstream_cx_destroy_remote_active_rq
                    .inc();
                return Ok(Outcome::Closed);
            }
            Some(Err(_)) => return Ok(Outcome::Closed),
        };
        let closing = side.lock().closing;
        let keep_alive = keep_alive && !closing && !smuggling && !drain_close(&ctx);
        let (head, framing, keep_alive, trailers) =
            encode_response(&response, version, head_request, keep_alive);
        // The head, written from a borrow, goes to the plugins' `on_log`: moved.
        let body = match response.body().chain() {
            Some(chain) => {
                let (head, body) = response.into_parts();
                chain.keep_sent_response(head);
                body
            }
            None => {
                let (head, body) = response.into_parts();
                crate::headers::recycle(head.headers);
                body
            }
        };
        let mut writer = Writer::new(head, body, framing);
        writer.trailers = Some(trailers);
        let mut out = SideWriter(&side);
        let written = std::future::poll_fn(|cx| writer.poll(&mut out, cx)).await;
        drop(writer);
        drop(active);
        match written {
            Ok(()) => {}
            Err(WriteError::Io) => return Ok(Outcome::Closed),
            Err(WriteError::Body(e)) => {
                tracing::debug!(peer = %ctx.peer, error = %e, "response body failed; closing the connection");
                return Ok(Outcome::Closed);
            }
        }
        let body_done = side.lock().body.done();
        if !keep_alive || !body_done {
            // An unread request body would be taken for the next head: the
            // connection closes, lingering (as NGINX does) so a client still
            // sending its body reads the answer rather than a reset.
            let _ =
                std::future::poll_fn(|cx| Pin::new(&mut SideWriter(&side)).poll_shutdown(cx)).await;
            if !body_done {
                linger(&side).await;
            }
            return Ok(Outcome::Closed);
        }
    }
}

/// After the write side is shut: reads and drops what the client still sends, until
/// it closes, for at most [`LINGER`] or [`LINGER_BYTES`]. Closing with unread bytes
/// would make the kernel answer them with a reset, which can destroy the response
/// before the client reads it.
async fn linger(side: &SharedSide) {
    let mut left = LINGER_BYTES;
    let drain = std::future::poll_fn(|cx| {
        let mut guard = side.lock();
        let s = &mut *guard;
        loop {
            s.read.clear();
            match ready!(h1::poll_read(&mut s.io, &mut s.read, cx, READ_SMALL)) {
                Ok(n) if n > 0 && n < left => left -= n,
                _ => return Poll::Ready(()),
            }
        }
    });
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// How long a closing connection keeps reading what its client still sends.
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);
/// How much of it.
const LINGER_BYTES: usize = 16 << 20;

/// Answers a head that cannot be served, and closes. The body says what was wrong
/// and where (`bad request: invalid header value at byte 36 (line 3, header x-nul)`),
/// in the wording of the proxy's other local replies; Envoy's says only `Bad
/// Request`, which leaves whoever reads it to guess which of their headers it was.
async fn refuse(
    side: &SharedSide,
    status: StatusCode,
    why: &str,
    hcm: &HttpConnectionManager,
    mut guard: StreamGuard,
) -> io::Result<()> {
    let reason = status.canonical_reason().unwrap_or("");
    let body = Bytes::from(format!("{}: {why}", reason.to_ascii_lowercase()));
    let mut head = Vec::with_capacity(192);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(reason.as_bytes());
    head.extend_from_slice(b"\r\ncontent-type: text/plain\r\nconnection: close\r\n");
    // As on every other response (the router's `set_server`): a local answer has no
    // `server` of its own to keep.
    if hcm.server_header_transformation != ServerHeaderTransformation::PassThrough {
        head.extend_from_slice(b"server: ");
        head.extend_from_slice(hcm.server_name.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    write_date(&mut head);
    head.extend_from_slice(b"\r\n");
    let length = body.len() as u64;
    guard.bytes_sent = length;
    // Logged and counted now: what follows is the connection's close.
    drop(guard);
    let mut writer = Writer::new(
        head,
        http_body_util::Full::new(body),
        Framing::Length(length),
    );
    let mut out = SideWriter(side);
    let _ = std::future::poll_fn(|cx| writer.poll(&mut out, cx)).await;
    let shut = std::future::poll_fn(|cx| Pin::new(&mut out).poll_shutdown(cx)).await;
    // The rest of a refused head may still be coming.
    linger(side).await;
    shut
}

/// The stream a refused head stands for in the stats and the access log, as Envoy
/// keeps one: counted in `downstream_rq_total` and by status, the codec's errors in
/// `downstream_cx_protocol_error` (`DPE`), the head timeout in
/// `downstream_rq_header_timeout`; logged with no method or path (`- 400 DPE
/// http1.codec_error`, as Envoy 1.40 logs it).
fn refused_stream(ctx: &ConnCtx, refused: &Refused) -> StreamGuard {
    let listener = &ctx.listener;
    let mut guard = StreamGuard::new(listener.clone(), ctx.peer, ctx.local);
    guard.status = refused.status.as_u16();
    if refused.status == StatusCode::REQUEST_TIMEOUT {
        listener.http.downstream_rq_header_timeout.inc();
        guard.ended_by("", refused.details);
    } else {
        listener.http.downstream_cx_protocol_error.inc();
        guard.ended_by("DPE", refused.details);
    }
    if !listener.access_logs.is_empty() {
        guard.log = Some(Box::new(LogInfo {
            start_time: std::time::SystemTime::now(),
            method: None,
            path: String::new(),
            authority: String::new(),
            protocol: "HTTP/1.1",
            request_headers: HeaderMap::new(),
            response_headers: None,
            route_name: String::new(),
            downstream_remote: ctx.peer,
        }));
    }
    guard
}

/// A request head refused: the status it is answered with, what was wrong and where
/// (the answer's body and the debug log), and Envoy's response-code details for the
/// same fault (the access log).
struct Refused {
    status: StatusCode,
    why: Cow<'static, str>,
    details: &'static str,
}

impl Refused {
    fn too_large(why: &'static str) -> Refused {
        Refused {
            status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            why: why.into(),
            details: "http1.headers_too_large",
        }
    }
}

/// Envoy's details for a head its codec refuses, where it has no more precise name.
const CODEC_ERROR: &str = "http1.codec_error";
/// Envoy's details for a header value with a byte a value cannot hold.
const INVALID_CHARACTERS: &str = "http1.invalid_characters";

fn bad(why: &'static str) -> Refused {
    Refused {
        status: StatusCode::BAD_REQUEST,
        why: why.into(),
        details: CODEC_ERROR,
    }
}

/// 400 for `why`, found at byte `offset` of `head` (the request head, from its first
/// byte): the answer names the byte, its line and, past a header's name, the header.
#[cold]
#[inline(never)]
fn bad_at(why: &str, details: &'static str, head: &[u8], offset: usize) -> Refused {
    Refused {
        status: StatusCode::BAD_REQUEST,
        why: Cow::Owned(locate(why, head, offset)),
        details,
    }
}

fn locate(why: &str, head: &[u8], offset: usize) -> String {
    let offset = offset.min(head.len());
    let line_start = head[..offset]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let line = head[..line_start].iter().filter(|&&b| b == b'\n').count() + 1;
    let mut out = format!("{why} at byte {offset} (line {line}");
    // A header line whose name came before the byte: say which header. The name is
    // a token (printable ASCII), so it is safe to echo.
    let rest = &head[line_start..offset];
    if let Some(colon) = rest.iter().position(|&b| b == b':').filter(|_| line > 1) {
        let name = &rest[..colon];
        if name.len() <= 64 && HeaderName::from_bytes(name).is_ok() {
            out.push_str(", header ");
            out.push_str(&String::from_utf8_lossy(name));
        }
    }
    out.push(')');
    out
}

/// Where httparse finds `read`'s head malformed: the byte that makes the shortest
/// refused prefix. Its parsing is incremental, so a refused prefix stays refused as
/// it grows, and a binary search finds the byte in log2(len) parses. Only the
/// answer to a refused head pays for it.
#[cold]
#[inline(never)]
fn error_offset(read: &[u8]) -> usize {
    let refused = |n: usize| {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        httparse::Request::new(&mut fields)
            .parse(&read[..n])
            .is_err()
    };
    // `refused(lo)` is false (nothing is not refused), `refused(hi)` true.
    let (mut lo, mut hi) = (0, read.len());
    while lo + 1 < hi {
        let mid = lo + (hi - lo) / 2;
        match refused(mid) {
            true => hi = mid,
            false => lo = mid,
        }
    }
    hi.saturating_sub(1)
}

/// Refuses a fragment in the request target (`/a#b`): a client never sends one (RFC
/// 9110 §4.2.5), Envoy and HAProxy refuse it, and `http::Uri` would drop it silently,
/// so only the raw bytes show it. The target's shape (an authority alone, `GET
/// example.com`) is the router's check, for every codec (`router::check_request`).
fn check_target(target: &[u8]) -> Result<(), Refused> {
    if target.contains(&b'#') {
        return Err(bad("fragment in the request target"));
    }
    Ok(())
}

/// What httparse found wrong with a head, and Envoy's details for it.
fn head_error(e: httparse::Error) -> (&'static str, &'static str) {
    match e {
        httparse::Error::HeaderName => ("invalid header name", CODEC_ERROR),
        httparse::Error::HeaderValue => ("invalid header value", INVALID_CHARACTERS),
        httparse::Error::NewLine => ("invalid line ending", CODEC_ERROR),
        httparse::Error::Version => ("invalid HTTP version", CODEC_ERROR),
        httparse::Error::Token | httparse::Error::Status => ("invalid request line", CODEC_ERROR),
        httparse::Error::TooManyHeaders => ("more than 100 header lines", CODEC_ERROR),
    }
}

/// Parses a request head at the start of `read`, taking its bytes; `None` while it is
/// incomplete, `Err` with the status to refuse it with and why.
fn parse(
    read: &mut BytesMut,
    names: &mut h1::NameCache,
    side: &SharedSide,
) -> Result<Option<Head>, Refused> {
    // Left uninitialised: httparse writes the lines it finds (100 empty headers
    // cost ~500 instructions to fill, per request).
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let len = match parsed.parse_with_uninit_headers(read, &mut fields) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refused {
                details: "http1.too_many_headers",
                ..Refused::too_large("more than 100 header lines")
            })
        }
        Err(e) => {
            let at = error_offset(read);
            // A line that starts with whitespace continues the one before (obs-fold,
            // RFC 9112 §5.2): httparse reads it as a bad name; say what it is.
            let folded = at > 0 && read[at - 1] == b'\n' && matches!(read[at], b' ' | b'\t');
            let (why, details) = match folded {
                true => (
                    "a header line folded onto the one before (obs-fold)",
                    CODEC_ERROR,
                ),
                false => head_error(e),
            };
            return Err(bad_at(why, details, read, at));
        }
    };
    let method = parsed.method.unwrap_or("");
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| bad("invalid method"))?;
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let base = read.as_ptr() as usize;
    let path = parsed.path.unwrap_or("");
    let path_at = (path.as_ptr() as usize - base, path.len());
    let count = parsed.headers.len();
    // An `h2c` upgrade is not one: as Envoy does, the request goes on as plain
    // HTTP/1.1 and the router strips the upgrade's headers (`curl --http2` sends it on
    // every `http://` URL).
    let upgrade = method == Method::CONNECT
        || (version == Version::HTTP_11
            && parsed.headers.iter().any(|f| {
                f.name.eq_ignore_ascii_case("upgrade") && !crate::headers::is_h2c(f.value)
            }));
    if upgrade {
        // Left in the buffer for hyper's server.
        return Ok(Some(Head::Upgrade));
    }
    check_target(path.as_bytes())?;
    let mut at = h1::take_offsets();
    h1::field_offsets(read, parsed.headers, &mut at);
    let head = read.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(path_at.0..path_at.0 + path_at.1))
        .map_err(|_| bad("invalid request target"))?;
    // Room for what the proxy adds (forwarding headers, request id, timeouts):
    // growing a `HeaderMap` rehashes it.
    let mut headers = crate::headers::map_with_capacity(count + 6);
    let mut case = HeaderCase::new(head.clone());
    let mut keep_alive = version == Version::HTTP_11;
    let mut close = false;
    let mut framing_fields = h1::FramingFields::default();
    let mut expect_continue = false;
    let mut saw_host = false;
    for (i, &(name_at, name_len, value_at, value_len)) in at.iter().enumerate() {
        let raw = &head[name_at as usize..(name_at + name_len) as usize];
        if h1::has_upper(raw) {
            case.add(name_at as usize, name_len as usize, count);
        }
        let name = names
            .name(i, raw)
            .map_err(|_| bad_at("invalid header name", CODEC_ERROR, &head, name_at as usize))?;
        let value = head.slice(value_at as usize..(value_at + value_len) as usize);
        // Shares the head's bytes: no copy.
        let value = HeaderValue::from_maybe_shared(value).map_err(|_| {
            bad_at(
                "invalid header value",
                INVALID_CHARACTERS,
                &head,
                value_at as usize,
            )
        })?;
        match name {
            header::CONTENT_LENGTH => {
                framing_fields
                    .content_length(value.as_bytes())
                    .map_err(|why| bad_at(why, CODEC_ERROR, &head, value_at as usize))?;
            }
            header::TRANSFER_ENCODING => {
                if version == Version::HTTP_10 {
                    return Err(bad("transfer-encoding in an HTTP/1.0 request"));
                }
                framing_fields.transfer_encoding(value.as_bytes());
            }
            header::CONNECTION => {
                let said = h1::ConnectionValue::parse(value.as_bytes());
                close |= said.close;
                keep_alive |= said.keep_alive;
                // Envoy's connection manager drops `Connection` before the filters,
                // the access log or the upstream see the request. One that says only
                // `close` or `keep-alive` names no other header to drop with it: it is
                // not kept at all, rather than removed later.
                if !said.other {
                    continue;
                }
            }
            header::EXPECT => {
                expect_continue = value.as_bytes().eq_ignore_ascii_case(b"100-continue");
            }
            // RFC 9112 §3.2: one `Host`, a valid host and port, or 400. Two lines
            // would route on the first while the upstream might read the second.
            header::HOST => {
                if saw_host {
                    return Err(bad_at(
                        "a second host header",
                        CODEC_ERROR,
                        &head,
                        name_at as usize,
                    ));
                }
                saw_host = true;
                if !h1::is_host_remembered(value.as_bytes()) {
                    return Err(bad_at(
                        "not a host and port",
                        CODEC_ERROR,
                        &head,
                        value_at as usize,
                    ));
                }
            }
            _ => {}
        }
        headers.append(name, value);
    }
    h1::give_offsets(at);
    let h1::FramingFields {
        length, chunked, ..
    } = framing_fields;
    if chunked == Some(false) {
        return Err(bad("transfer-encoding that does not end in chunked"));
    }
    // Envoy answers 501 as well (RFC 9112 §6.1: a coding the server does not
    // understand).
    if framing_fields.other_coding {
        return Err(Refused {
            status: StatusCode::NOT_IMPLEMENTED,
            why: "a transfer coding other than chunked".into(),
            details: "http1.invalid_transfer_encoding",
        });
    }
    if let Some(n) = framing_fields.copied_length().filter(|_| chunked.is_none()) {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    let smuggling = chunked.is_some() && length.is_some();
    let framing = match (chunked, length) {
        (Some(_), _) => Framing::Chunked,
        (None, Some(n)) => Framing::Length(n),
        (None, None) => Framing::Length(0),
    };
    // The refused request's body is never read: the connection closes after the
    // answer.
    let body = match (framing, smuggling) {
        (Framing::Length(0), _) | (_, true) => DownstreamBody::Empty,
        _ => {
            let hint = match framing {
                Framing::Length(n) => SizeHint::with_exact(n),
                _ => SizeHint::default(),
            };
            DownstreamBody::H1(RequestBody {
                side: side.clone(),
                ended: false,
                hint,
            })
        }
    };
    let mut request = Box::new(Request::new(body));
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    let reads_body = !smuggling && framing != Framing::Length(0);
    Ok(Some(Head::Request(Parsed {
        request,
        case: (!case.is_empty()).then_some(case),
        keep_alive: keep_alive && !close && !smuggling,
        smuggling,
        framing: match reads_body {
            true => framing,
            false => Framing::Length(0),
        },
        expect_continue: expect_continue && reads_body && version == Version::HTTP_11,
    })))
}

/// The response head for `response`, how its body goes out, whether the connection
/// stays open after it, and the trailers it may carry (those its `trailer` header
/// announces). Inlined into its one caller, the connection loop: called, it cost
/// ~40 instructions a response in moves of its arguments and results.
#[inline(always)]
fn encode_response(
    response: &Response<ResponseBody>,
    version: Version,
    head_request: bool,
    mut keep_alive: bool,
) -> (Vec<u8>, Framing, bool, Vec<HeaderName>) {
    let status = response.status();
    let headers = response.headers();
    let body = response.body();
    let mut out = Vec::with_capacity(64 + headers.len() * 32);
    let reason = response.extensions().get::<hyper::ext::ReasonPhrase>();
    let http10 = version == Version::HTTP_10;
    if !http10 && status == StatusCode::OK && reason.is_none() {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(if http10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        match reason {
            Some(reason) => out.extend_from_slice(reason.as_bytes()),
            None => out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes()),
        }
        out.extend_from_slice(b"\r\n");
    }
    let informational = status.is_informational();
    let bodiless = matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED);
    let can_have_length = !informational && status != StatusCode::NO_CONTENT;
    let can_have_body = !head_request && !informational && !bodiless;
    let can_chunk = can_have_body && !http10;
    let mut names = CasedWriter::new(body.header_case());
    let mut length: Option<u64> = None;
    let mut wrote_date = false;
    let mut saw_connection = false;
    let mut trailers = Vec::new();
    for (name, value) in headers {
        match *name {
            header::CONTENT_LENGTH => {
                if !can_have_length || length.is_some() {
                    continue;
                }
                match h1::parse_length(value.as_bytes()) {
                    Some(n) => length = Some(n),
                    None => continue,
                }
            }
            // The codec frames the body itself.
            header::TRANSFER_ENCODING => continue,
            header::CONNECTION => {
                saw_connection = true;
                if h1::has_token(value.as_bytes(), b"close") {
                    keep_alive = false;
                }
            }
            header::DATE => wrote_date = true,
            header::TRAILER => {
                if !can_chunk {
                    continue;
                }
                if let Ok(names) = value.to_str() {
                    trailers.extend(
                        names
                            .split(',')
                            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok()),
                    );
                }
            }
            _ => {}
        }
        names.write(&mut out, name, value.as_bytes());
    }
    let mut framing = match length {
        Some(n) => Framing::Length(n),
        None if body.is_end_stream() => {
            // A 304's length, if any, is the representation's (RFC 9110 §8.6): an
            // empty body says nothing about it.
            if can_have_body {
                out.extend_from_slice(b"content-length: 0\r\n");
            }
            Framing::Length(0)
        }
        None => match body.size_hint().exact() {
            Some(n) => {
                if can_have_length {
                    out.extend_from_slice(b"content-length: ");
                    out.extend_from_slice(h1::itoa(n, &mut [0u8; 20]));
                    out.extend_from_slice(b"\r\n");
                }
                Framing::Length(n)
            }
            None if can_chunk => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Framing::Chunked
            }
            None => {
                // HTTP/1.0 has no chunking: the end of the connection ends the body.
                keep_alive = false;
                Framing::Close
            }
        },
    };
    if !can_have_body {
        framing = Framing::Length(0);
    }
    match (http10, keep_alive) {
        (true, true) if !saw_connection => out.extend_from_slice(b"connection: keep-alive\r\n"),
        (false, false) if !saw_connection => out.extend_from_slice(b"connection: close\r\n"),
        _ => {}
    }
    if !wrote_date {
        write_date(&mut out);
    }
    out.extend_from_slice(b"\r\n");
    (out, framing, keep_alive, trailers)
}

/// `date: <IMF-fixdate>\r\n`.
fn write_date(out: &mut Vec<u8>) {
    with_date(|date| {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(date.as_bytes());
        out.extend_from_slice(b"\r\n");
    });
}

/// Calls `f` with the current time as an IMF-fixdate, formatted once a second per
/// worker (both server codecs add `date` when a response has none).
pub(crate) fn with_date<R>(f: impl FnOnce(&str) -> R) -> R {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((0, String::new())) };
    }
    let now = crate::clock::system_now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|date| {
        let mut date = date.borrow_mut();
        if date.0 != secs || date.1.is_empty() {
            *date = (secs, httpdate::fmt_http_date(now));
        }
        f(&date.1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(
        status: u16,
        headers: &[(&str, &str)],
        body: &'static [u8],
        version: Version,
        head_request: bool,
        keep_alive: bool,
    ) -> (String, Framing, bool) {
        let mut response = Response::new(ResponseBody::full(Bytes::from_static(body), None));
        *response.status_mut() = StatusCode::from_u16(status).expect("status");
        for (k, v) in headers {
            response.headers_mut().append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        let (head, framing, keep, _) =
            encode_response(&response, version, head_request, keep_alive);
        (String::from_utf8(head).expect("ascii"), framing, keep)
    }

    #[test]
    fn response_framing_follows_hyper() {
        let v11 = Version::HTTP_11;
        // A body of known size: its length; a date; nothing about the connection.
        let (head, framing, keep) = encode(200, &[("x-a", "1")], b"abc", v11, false, true);
        assert!(
            head.starts_with("HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 3\r\ndate: "),
            "{head}"
        );
        assert!(head.ends_with(" GMT\r\n\r\n"), "{head}");
        assert_eq!((framing, keep), (Framing::Length(3), true));
        // No body: `content-length: 0`.
        let (head, framing, _) = encode(404, &[], b"", v11, false, true);
        assert!(
            head.starts_with("HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n"),
            "{head}"
        );
        assert_eq!(framing, Framing::Length(0));
        // HEAD: the length of the body it does not send.
        let (head, framing, _) = encode(200, &[], b"abc", v11, true, true);
        assert!(head.contains("content-length: 3\r\n"), "{head}");
        assert_eq!(framing, Framing::Length(0));
        // 204: no length, no body; 304 keeps the length it was given, and is given
        // none when it had none (an upstream's chunked 304).
        let (head, framing, _) = encode(204, &[("content-length", "0")], b"", v11, false, true);
        assert!(!head.contains("content-length"), "{head}");
        assert_eq!(framing, Framing::Length(0));
        let (head, framing, _) = encode(304, &[("content-length", "7")], b"", v11, false, true);
        assert!(head.contains("content-length: 7\r\n"), "{head}");
        assert_eq!(framing, Framing::Length(0));
        let (head, framing, _) = encode(304, &[("etag", "\"x\"")], b"", v11, false, true);
        assert!(!head.contains("content-length"), "{head}");
        assert_eq!(framing, Framing::Length(0));
        // A declared length stands; a transfer-encoding from a filter does not.
        let (head, framing, _) = encode(
            200,
            &[("content-length", "3"), ("transfer-encoding", "gzip")],
            b"abc",
            v11,
            false,
            true,
        );
        assert!(!head.contains("transfer-encoding"), "{head}");
        assert_eq!(framing, Framing::Length(3));
        // The connection: close on HTTP/1.1, keep-alive on HTTP/1.0, as decided; an
        // answer that says close closes.
        let (head, _, keep) = encode(200, &[], b"abc", v11, false, false);
        assert!(head.contains("connection: close\r\n"), "{head}");
        assert!(!keep);
        let (head, _, keep) = encode(200, &[], b"abc", Version::HTTP_10, false, true);
        assert!(head.starts_with("HTTP/1.0 200 OK\r\n"), "{head}");
        assert!(head.contains("connection: keep-alive\r\n"), "{head}");
        assert!(keep);
        let (head, _, keep) = encode(400, &[("connection", "close")], b"x", v11, false, true);
        assert_eq!(head.matches("connection").count(), 1, "{head}");
        assert!(!keep);
        // A date the answer has is kept.
        let (head, _, _) = encode(200, &[("date", "then")], b"", v11, false, true);
        assert_eq!(head.matches("date: ").count(), 1, "{head}");
    }

    #[test]
    fn a_refused_head_is_located_to_its_byte() {
        // Deep in a large head, and in the request line.
        let mut head = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..60 {
            head.extend_from_slice(format!("x-h{i:02}: some value\r\n").as_bytes());
        }
        let bad = head.len() + "x-late: ab".len();
        head.extend_from_slice(b"x-late: ab\x01c\r\n\r\n");
        assert_eq!(error_offset(&head), bad);
        assert_eq!(
            locate("invalid header value", &head, bad),
            format!("invalid header value at byte {bad} (line 62, header x-late)")
        );
        let line = b"GET /a b HTTP/1.1\r\n\r\n";
        assert_eq!(error_offset(line), 7);
        assert_eq!(locate("x", line, 7), "x at byte 7 (line 1)");
        // A name error names no header: the name is what is wrong.
        let name = b"GET / HTTP/1.1\r\nBad Name: v\r\n\r\n";
        assert_eq!(error_offset(name), 19);
        assert_eq!(locate("x", name, 19), "x at byte 19 (line 2)");
    }
}
