//! Strait's HTTP/2 server connection: the `h2` crate's framing, HPACK and flow
//! control, with the streams run by the connection's own task.
//!
//! hyper's HTTP/2 server spawned a task per stream, wrapped the socket twice (its
//! own I/O traits and back), and piped each response through a layer that stripped
//! and re-checked headers the router had already cleaned. Without that layer the
//! worker runs 45.1k → 43.2k instructions per request (callgrind,
//! `perf/instructions --h2`; the rest of HTTP/2's cost is the `h2` crate's own
//! ~11k, which a purpose-built codec would replace). Here a stream is a
//! future in the connection's [`FuturesUnordered`]: accepting a stream, running its
//! handler and writing its answer happen in one task, and the writes of every stream
//! woken in one pass go out in one flush — as NGINX and HAProxy run all of a
//! connection's streams from its event handler.
//!
//! What the protocol needs is the `h2` crate's (frames, HPACK, stream states, flow
//! control, GOAWAY, the rapid-reset limits); what HTTP needs on top is here: the
//! request body as a [`DownstreamBody`] that returns flow-control credit as the
//! router takes each chunk, connection-specific headers kept off responses, `date`
//! and `content-length` added when missing, a stream reset when the handler fails or
//! the client resets it (which cancels the request upstream), and response bodies
//! that wait for the peer's window.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use h2::server::{Connection, Handshake, SendResponse};
use h2::{Reason, RecvStream, SendStream};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::body::DownstreamBody;
use crate::conn::Counted;

/// A stream's answer, as the connection's handler makes it.
type Answer = crate::conn::Handled;

/// Settings a listener gives its HTTP/2 connections.
pub(crate) struct Settings {
    pub max_header_list_size: u32,
    pub initial_stream_window: u32,
    pub initial_connection_window: u32,
    pub max_concurrent_streams: u32,
}

/// Passes through the connection's loop before it yields to other connections: each
/// pass reads what arrived, runs the streams it woke, and writes what they answered.
const PASSES: usize = 16;

/// One HTTP/2 server connection; resolves when the connection has ended.
pub(crate) struct Server<T, H> {
    state: State<T>,
    streams: FuturesUnordered<Stream>,
    handler: H,
    /// Graceful shutdown was asked for during the handshake.
    closing: bool,
}

enum State<T> {
    Handshaking(Handshake<T, Bytes>),
    Serving(Connection<T, Bytes>),
}

impl<T, H> Server<T, H>
where
    T: AsyncRead + AsyncWrite + Unpin,
    H: FnMut(Request<DownstreamBody>) -> Answer,
{
    pub(crate) fn new(io: T, settings: &Settings, handler: H) -> Self {
        let mut builder = h2::server::Builder::new();
        builder
            .initial_window_size(settings.initial_stream_window)
            .initial_connection_window_size(settings.initial_connection_window)
            .max_header_list_size(settings.max_header_list_size)
            .max_concurrent_streams(settings.max_concurrent_streams)
            // hyper's limits, kept: a client's RST_STREAMs cannot make the
            // connection hold an unbounded number of reset streams.
            .max_local_error_reset_streams(Some(1024))
            .max_send_buffer_size(400 * 1024);
        Server {
            state: State::Handshaking(builder.handshake(io)),
            streams: FuturesUnordered::new(),
            handler,
            closing: false,
        }
    }

    /// Sends GOAWAY: streams already open run to their end, no new one starts.
    pub(crate) fn graceful_shutdown(&mut self) {
        match &mut self.state {
            State::Handshaking(_) => self.closing = true,
            State::Serving(conn) => conn.graceful_shutdown(),
        }
    }

    /// Accepts every stream whose head has arrived. Also writes what the streams
    /// queued: `poll_accept` drives the whole connection.
    fn accept(&mut self, cx: &mut Context<'_>) -> Result<Accepted, h2::Error> {
        let State::Serving(conn) = &mut self.state else {
            unreachable!("accepting before the handshake");
        };
        let mut accepted = Accepted::None;
        loop {
            match conn.poll_accept(cx) {
                Poll::Ready(Some(Ok((req, reply)))) => {
                    let len = declared_length(req.headers());
                    let req = req.map(|recv| DownstreamBody::H2(RequestBody::new(recv, len)));
                    self.streams.push(Stream {
                        reply,
                        phase: Phase::Answering((self.handler)(req)),
                    });
                    accepted = Accepted::Some;
                }
                Poll::Ready(Some(Err(e))) => return Err(e),
                // The connection is over: GOAWAY exchanged and every stream done, or
                // the peer went away (its streams then end with errors).
                Poll::Ready(None) => return Ok(Accepted::Closed),
                Poll::Pending => return Ok(accepted),
            }
        }
    }
}

/// What a pass over the connection's input found.
enum Accepted {
    None,
    Some,
    Closed,
}

impl<T, H> Future for Server<T, H>
where
    T: AsyncRead + AsyncWrite + Unpin,
    H: FnMut(Request<DownstreamBody>) -> Answer + Unpin,
{
    type Output = Result<(), h2::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let State::Handshaking(hs) = &mut this.state {
            let mut conn = ready!(Pin::new(hs).poll(cx))?;
            if this.closing {
                conn.graceful_shutdown();
            }
            this.state = State::Serving(conn);
        }
        for pass in 0..PASSES {
            match this.accept(cx)? {
                Accepted::Closed => return Poll::Ready(Ok(())),
                // After the first pass, a pass that accepted nothing only wrote what
                // the streams of the last one answered.
                Accepted::None if pass > 0 => return Poll::Pending,
                Accepted::None | Accepted::Some => {}
            }
            // Streams run until none is ready (`FuturesUnordered` polls only the
            // woken ones, and yields on its own after a long run).
            while let Poll::Ready(Some(())) = this.streams.poll_next_unpin(cx) {}
        }
        // More kept arriving: let the worker's other connections run.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// One stream: its handler until the answer's head, then the answer's body.
struct Stream {
    reply: SendResponse<Bytes>,
    phase: Phase,
}

enum Phase {
    Answering(Answer),
    Body {
        tx: SendStream<Bytes>,
        body: Counted,
        /// A chunk taken from the body, waiting for the peer's window; and whether
        /// it ends the body.
        held: Option<(Bytes, bool)>,
    },
}

impl Future for Stream {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let resp = match &mut this.phase {
            Phase::Answering(answer) => match Pin::new(answer).poll(cx) {
                Poll::Ready(Ok(resp)) => resp,
                Poll::Ready(Err(_)) => {
                    // The router answers every failure it can with a response; an
                    // error is a stream it means to reset (Envoy's behaviour).
                    this.reply.send_reset(Reason::INTERNAL_ERROR);
                    return Poll::Ready(());
                }
                Poll::Pending => {
                    // A client's RST_STREAM cancels the request: dropping the
                    // handler drops its upstream attempt.
                    return match this.reply.poll_reset(cx) {
                        Poll::Ready(_) => Poll::Ready(()),
                        Poll::Pending => Poll::Pending,
                    };
                }
            },
            Phase::Body { tx, body, held } => return pipe(tx, body, held, cx),
        };
        let (mut head, body) = resp.into_parts();
        prepare_head(&mut head.headers, &body);
        let end = body.is_end_stream();
        let tx = match this
            .reply
            .send_response(Response::from_parts(head, ()), end)
        {
            Ok(tx) => tx,
            Err(e) => {
                tracing::debug!(error = %e, "HTTP/2 response head refused");
                this.reply.send_reset(Reason::INTERNAL_ERROR);
                return Poll::Ready(());
            }
        };
        if end {
            return Poll::Ready(());
        }
        this.phase = Phase::Body {
            tx,
            body,
            held: None,
        };
        let Phase::Body { tx, body, held } = &mut this.phase else {
            unreachable!()
        };
        pipe(tx, body, held, cx)
    }
}

/// Writes the response body into the stream as the peer's window allows (hyper's
/// `PipeToSendStream`): a chunk is taken from the body only once the last one has
/// gone into h2's send buffer, so a slow reader holds back the upstream.
fn pipe(
    tx: &mut SendStream<Bytes>,
    body: &mut Counted,
    held: &mut Option<(Bytes, bool)>,
    cx: &mut Context<'_>,
) -> Poll<()> {
    loop {
        if let Some((_, end)) = held {
            let end = *end;
            while tx.capacity() == 0 {
                match tx.poll_capacity(cx) {
                    Poll::Ready(Some(Ok(0))) => {}
                    Poll::Ready(Some(Ok(_))) => break,
                    // Reset by the peer, or the connection is gone.
                    Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(()),
                    Poll::Pending => return pending_unless_reset(tx, cx),
                }
            }
            let (chunk, _) = held.take().expect("checked above");
            if tx.send_data(chunk, end).is_err() || end {
                return Poll::Ready(());
            }
            continue;
        }
        let frame = match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Ready(frame) => frame,
            Poll::Pending => return pending_unless_reset(tx, cx),
        };
        match frame {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(chunk) => {
                    let end = body.is_end_stream();
                    if chunk.is_empty() {
                        if end {
                            let _ = tx.send_data(chunk, true);
                            return Poll::Ready(());
                        }
                        continue;
                    }
                    // A claim of one byte, not the chunk's length: h2 raises it to
                    // what is buffered, and a stream waiting for its upstream then
                    // pins no connection window (hyper #4003).
                    tx.reserve_capacity(1);
                    *held = Some((chunk, end));
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        tx.reserve_capacity(0);
                        let _ = tx.send_trailers(trailers);
                        return Poll::Ready(());
                    }
                }
            },
            Some(Err(e)) => {
                tracing::debug!(error = %e, "HTTP/2 response body failed");
                tx.send_reset(Reason::INTERNAL_ERROR);
                return Poll::Ready(());
            }
            None => {
                let _ = tx.send_data(Bytes::new(), true);
                return Poll::Ready(());
            }
        }
    }
}

/// `Pending`, with the stream's reset noticed: a client that resets a stream whose
/// body waits (for the upstream, or for the window) ends it, and the upstream's.
fn pending_unless_reset(tx: &mut SendStream<Bytes>, cx: &mut Context<'_>) -> Poll<()> {
    match tx.poll_reset(cx) {
        Poll::Ready(_) => Poll::Ready(()),
        Poll::Pending => Poll::Pending,
    }
}

/// Readies a response head for HTTP/2: connection-specific headers (RFC 9113
/// §8.2.2) are dropped — the router removed the upstream's, but a filter may add
/// some, and h2 refuses a head that has one — and `date` and `content-length` are
/// added when missing, as for HTTP/1.1. One pass over the names finds all three;
/// only what is there is removed (each removal hashes and probes).
fn prepare_head(headers: &mut HeaderMap, body: &Counted) {
    let (mut has_date, mut has_length, mut connection_specific) = (false, false, false);
    for name in headers.keys() {
        if name == header::DATE {
            has_date = true;
        } else if name == header::CONTENT_LENGTH {
            has_length = true;
        } else if crate::headers::is_connection_specific(name) || name == header::TE {
            connection_specific = true;
        }
    }
    if connection_specific {
        crate::headers::remove_hop_by_hop(headers, false);
    }
    if !has_date {
        crate::h1_server::with_date(|date| {
            if let Ok(value) = HeaderValue::from_str(date) {
                headers.insert(header::DATE, value);
            }
        });
    }
    if !has_length && !body.is_end_stream() {
        if let Some(len) = body.size_hint().exact() {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
    }
}

/// A request body as the peer sends it: DATA frames, then trailers. Each chunk's
/// flow-control credit goes back as the router takes it, so the peer's window
/// follows what the upstream accepts.
pub struct RequestBody {
    recv: RecvStream,
    /// The DATA frames have ended; trailers may follow.
    data_done: bool,
    hint: SizeHint,
}

impl RequestBody {
    fn new(recv: RecvStream, declared: Option<u64>) -> Self {
        let hint = match (recv.is_end_stream(), declared) {
            (true, _) => SizeHint::with_exact(0),
            (false, Some(len)) => SizeHint::with_exact(len),
            (false, None) => SizeHint::default(),
        };
        RequestBody {
            recv,
            data_done: false,
            hint,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = self.get_mut();
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(chunk)) => {
                    let _ = this.recv.flow_control().release_capacity(chunk.len());
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => this.data_done = true,
            }
        }
        match ready!(this.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

/// The request's `content-length`, for the body's size hint: the upstream's framing
/// follows it. h2 has checked it (a single valid number) and checks the DATA
/// frames against it.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    let value = headers.get(header::CONTENT_LENGTH)?;
    std::str::from_utf8(value.as_bytes()).ok()?.parse().ok()
}
