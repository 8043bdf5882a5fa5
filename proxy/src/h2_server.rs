//! Strait's HTTP/2 server connection (RFC 9113): its own framing, HPACK
//! ([`crate::hpack`]), stream states and flow control, with every stream run by the
//! connection's own task.
//!
//! The `h2` crate served this until the sixteenth session: ~12.8k of the worker's
//! ~43k instructions per proxied request (callgrind, `perf/instructions --h2`) were
//! its own, plus most of 4.2k of `memcpy` — each frame and stream went through
//! shared, locked stores, a priority queue, a `HeaderMap` check of five
//! connection-specific names per response, and a dynamic-table HPACK encoder
//! hashing every field. HAProxy and NGINX run a connection's streams from its
//! event handler and write their frames into one buffer; so does this:
//!
//! - one read buffer; frames are parsed in place, a DATA payload is split off it
//!   without a copy;
//! - one write buffer; each pass's frames (HEADERS of every answered stream, DATA,
//!   control frames) go out in one write; a large DATA payload goes as its own
//!   slice of a vectored write;
//! - a stream's handler and its response body are polled by the connection with a
//!   waker of the stream's own slot, so a wake runs only that stream, and a client's
//!   RST_STREAM drops the stream's future (cancelling its upstream request) at once;
//! - the request body reaches the router through an inbox shared with the
//!   connection; each chunk's flow-control credit goes back as the router takes it,
//!   so the client's window follows what the upstream accepts.
//!
//! What is protected against: the rapid-reset pattern (streams reset by the client
//! before their answer, more than half of them past 100: GOAWAY ENHANCE_YOUR_CALM),
//! header blocks past `max_request_headers_kb` (431), CONTINUATION floods (the
//! block is bounded), control-frame floods (the connection stops reading while its
//! output is over [`HIGH_WATER`]).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::task::AtomicWaker;
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::body::DownstreamBody;
use crate::conn::Counted;
use crate::h2_frame::{self as frame, Head, Reason};
use crate::hpack::{Decoder, Encoder};
use crate::stats::Counter;

/// A stream's answer, as the connection's handler makes it.
type Answer = crate::conn::Handled;

/// Settings a listener gives its HTTP/2 connections.
pub(crate) struct Settings {
    pub max_header_list_size: u32,
    pub initial_stream_window: u32,
    pub initial_connection_window: u32,
    pub max_concurrent_streams: u32,
    /// The connection manager's `downstream_rq_rx_reset`: streams the client reset.
    pub rx_reset: Counter,
    /// Its `downstream_cx_destroy_remote_active_rq`: the client closed the connection
    /// with streams open.
    pub destroy_remote_active_rq: Counter,
    /// Asked after each pass that answered: whether the connection is to close now
    /// (Envoy's drain-close while the server's health check is failed). The
    /// connection then sends GOAWAY and ends once its open streams are done.
    pub drain_close: Option<DrainClose>,
}

/// See [`Settings::drain_close`].
pub(crate) type DrainClose = std::sync::Arc<dyn Fn() -> bool + Send + Sync>;

/// Passes through the connection's loop before it yields to other connections: each
/// pass reads what arrived, runs the streams it woke, and writes what they answered.
const PASSES: usize = 16;

/// Output past which the connection stops reading frames and taking response
/// chunks until the peer reads: what a peer that does not read can make it hold.
const HIGH_WATER: usize = 256 * 1024;

/// A DATA payload at least this long is written from its own buffer (a slice of the
/// vectored write) instead of being copied into the frame buffer.
const COPY_BELOW: usize = 1024;

/// Room a read asks for: a whole frame of the largest size Strait accepts.
const READ_CHUNK: usize = frame::DEFAULT_MAX_FRAME_SIZE as usize + frame::HEAD_LEN;

/// The PING payload that confirms the client saw the first GOAWAY of a graceful
/// shutdown.
const SHUTDOWN_PING: [u8; 8] = *b"strait\x00\x01";

/// Streams the client may reset before their answer without it counting as the
/// rapid-reset pattern; past it, resets must stay under half of the streams.
const RESET_ALLOWANCE: u32 = 100;

/// Why a connection ended with an error.
#[derive(Debug)]
pub(crate) enum Error {
    Io(io::Error),
    /// Strait ended the connection with GOAWAY: what the peer did wrong.
    Protocol {
        reason: Reason,
        detail: String,
    },
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Io(e) => write!(f, "HTTP/2 connection: {e}"),
            Error::Protocol { reason, detail } => {
                write!(f, "HTTP/2 connection error {reason}: {detail}")
            }
        }
    }
}

impl std::error::Error for Error {}

/// A connection error: GOAWAY with `reason`, and `detail` in its debug data.
fn conn_err(reason: Reason, detail: impl Into<String>) -> Error {
    Error::Protocol {
        reason,
        detail: detail.into(),
    }
}

/// One HTTP/2 server connection; resolves when the connection has ended.
pub(crate) struct Server<T, H> {
    io: T,
    handler: H,
    conn: Conn,
}

/// Where the connection is in its life.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    /// Waiting for the client's preface.
    Preface,
    /// The preface came; the client's SETTINGS must follow.
    FirstSettings,
    Open,
    /// GOAWAY sent for a connection error: writing it out, then the error.
    Failing,
    /// Nothing more to read or write.
    Done,
}

/// How far a graceful shutdown has gone.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Closing {
    No,
    /// Asked for; nothing sent yet.
    Asked,
    /// GOAWAY with the largest stream identifier and a PING sent: streams the client
    /// opened before it saw the GOAWAY are still served.
    Pinged,
    /// The final GOAWAY sent: streams above this identifier are ignored.
    Final(u32),
}

/// Everything but the socket and the handler, so the frame handlers borrow it
/// while the handler is called.
struct Conn {
    phase: Phase,
    closing: Closing,
    /// The error GOAWAY is being written for.
    failed: Option<Error>,
    ours: Ours,
    read: BytesMut,
    tx: Tx,
    decoder: Decoder,
    seen: Seen,
    /// A header block spread over CONTINUATION frames, and its HEADERS frame's
    /// stream and flags.
    block: BytesMut,
    partial: Option<(u32, u8)>,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    ids: HashMap<u32, usize, BuildHasherDefault<IdHasher>>,
    /// Each slot's waker, made once and reused by the slot's later streams.
    wakers: Vec<(Arc<SlotWake>, Waker)>,
    shared: Arc<Shared>,
    /// Slots to poll, woken by the connection itself (new streams, window updates).
    ready: Vec<usize>,
    /// Slots whose body waits for the connection's send window.
    stalled: Vec<usize>,
    /// Slots whose body waits for the output to drain.
    blocked: Vec<usize>,
    credit: Vec<(u32, u32)>,
    /// The highest stream identifier the client has opened.
    last_id: u32,
    /// The initial send window of a new stream (the client's
    /// SETTINGS_INITIAL_WINDOW_SIZE).
    peer_window: i64,
    /// What the client may still send on the connection, and the credit taken by
    /// readers (or dropped) not yet returned to it.
    recv_window: i64,
    recv_unreturned: i64,
    /// The client sent GOAWAY or closed its side: no new stream will come.
    peer_gone: bool,
    /// Streams the client opened, and those it reset before their answer.
    opened: u32,
    resets: u32,
    /// Streams Strait reset for the client's protocol errors.
    local_resets: u32,
    rx_reset: Counter,
    destroy_remote_active_rq: Counter,
    drain_close: Option<DrainClose>,
    /// Complete frames wait in the read buffer: the output was over [`HIGH_WATER`].
    backlog: bool,
}

/// Strait's own settings, as advertised.
struct Ours {
    max_header_list_size: usize,
    stream_window: i64,
    conn_window: i64,
    max_streams: usize,
}

/// The write side: the frame buffer, the encoder, and the windows DATA spends.
struct Tx {
    out: Out,
    encoder: Encoder,
    /// The client's SETTINGS_MAX_FRAME_SIZE.
    max_frame: usize,
    /// What Strait may still send on the connection.
    send_window: i64,
}

/// One stream: its handler or response body, and its windows.
struct Slot {
    id: u32,
    task: Task,
    /// The request body's inbox while the client may still send on the stream.
    recv: Option<Arc<Mutex<Inbox>>>,
    recv_window: i64,
    /// Credit taken by the body's reader, not yet returned to the stream's window.
    recv_unreturned: i64,
    /// The request's `content-length`, and the DATA bytes received so far.
    declared: Option<u64>,
    received: u64,
    send_window: i64,
    /// A chunk of the response body waiting for window, and whether it ends the body.
    held: Option<Bytes>,
    held_end: bool,
}

enum Task {
    Answering(Answer),
    Sending(Counted),
    Done,
}

/// What the connection and its streams' wakers and request bodies share.
struct Shared {
    queue: Mutex<Queue>,
    task: AtomicWaker,
}

#[derive(Default)]
struct Queue {
    /// Slots whose wakers fired.
    ready: Vec<usize>,
    /// Request-body bytes the router took: (stream, bytes), credit to return.
    credit: Vec<(u32, u32)>,
}

/// A slot's waker: queues the slot and wakes the connection's task.
struct SlotWake {
    slot: usize,
    queued: AtomicBool,
    shared: Arc<Shared>,
}

impl Wake for SlotWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.shared.queue.lock().ready.push(self.slot);
            self.shared.task.wake();
        }
    }
}

/// Stream identifiers are the client's odd counter: the value is its own hash.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | b as u64;
        }
    }

    fn write_u32(&mut self, n: u32) {
        // Spread over the high bits too: the map takes its buckets from the top bits.
        self.0 = (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

impl<T, H> Server<T, H>
where
    T: AsyncRead + AsyncWrite + Unpin,
    H: FnMut(Request<DownstreamBody>) -> Answer,
{
    pub(crate) fn new(io: T, settings: &Settings, handler: H) -> Self {
        let ours = Ours {
            max_header_list_size: settings.max_header_list_size as usize,
            stream_window: settings.initial_stream_window.min(frame::MAX_WINDOW as u32) as i64,
            conn_window: settings
                .initial_connection_window
                .clamp(frame::DEFAULT_WINDOW, frame::MAX_WINDOW as u32)
                as i64,
            max_streams: settings.max_concurrent_streams as usize,
        };
        let mut out = Out::default();
        // The server's preface: its SETTINGS, then the connection window's growth.
        frame::put_settings(
            &mut out.buf,
            &[
                (
                    frame::SETTINGS_MAX_CONCURRENT_STREAMS,
                    settings.max_concurrent_streams,
                ),
                (
                    frame::SETTINGS_INITIAL_WINDOW_SIZE,
                    ours.stream_window as u32,
                ),
                (
                    frame::SETTINGS_MAX_HEADER_LIST_SIZE,
                    settings.max_header_list_size,
                ),
            ],
        );
        if ours.conn_window > frame::DEFAULT_WINDOW as i64 {
            frame::put_window_update(
                &mut out.buf,
                0,
                (ours.conn_window - frame::DEFAULT_WINDOW as i64) as u32,
            );
        }
        Server {
            io,
            handler,
            conn: Conn {
                phase: Phase::Preface,
                closing: Closing::No,
                failed: None,
                recv_window: ours.conn_window,
                ours,
                read: BytesMut::new(),
                tx: Tx {
                    out,
                    encoder: Encoder::new(),
                    max_frame: frame::DEFAULT_MAX_FRAME_SIZE as usize,
                    send_window: frame::DEFAULT_WINDOW as i64,
                },
                decoder: Decoder::new(4096),
                seen: Seen::default(),
                block: BytesMut::new(),
                partial: None,
                slots: Vec::new(),
                free: Vec::new(),
                ids: HashMap::default(),
                wakers: Vec::new(),
                shared: Arc::new(Shared {
                    queue: Mutex::new(Queue::default()),
                    task: AtomicWaker::new(),
                }),
                ready: Vec::new(),
                stalled: Vec::new(),
                blocked: Vec::new(),
                credit: Vec::new(),
                last_id: 0,
                peer_window: frame::DEFAULT_WINDOW as i64,
                recv_unreturned: 0,
                peer_gone: false,
                opened: 0,
                resets: 0,
                local_resets: 0,
                rx_reset: settings.rx_reset.clone(),
                destroy_remote_active_rq: settings.destroy_remote_active_rq.clone(),
                drain_close: settings.drain_close.clone(),
                backlog: false,
            },
        }
    }

    /// Sends GOAWAY: streams already open run to their end, no new one starts.
    pub(crate) fn graceful_shutdown(&mut self) {
        if self.conn.closing == Closing::No {
            self.conn.closing = Closing::Asked;
            self.conn.shared.task.wake();
        }
    }
}

impl<T, H> Future for Server<T, H>
where
    T: AsyncRead + AsyncWrite + Unpin,
    H: FnMut(Request<DownstreamBody>) -> Answer + Unpin,
{
    type Output = Result<(), Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Server { io, handler, conn } = self.get_mut();
        conn.shared.task.register(cx.waker());
        for _ in 0..PASSES {
            let mut progress = false;
            if conn.phase == Phase::Failing {
                // Drop every stream at once; write the GOAWAY out, then end.
                conn.drop_streams();
                return match conn.tx.out.poll_flush(io, cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(_) => {
                        conn.phase = Phase::Done;
                        Poll::Ready(Err(conn.failed.take().expect("a failing connection")))
                    }
                };
            }
            let room = conn.tx.out.len() < HIGH_WATER;
            if room {
                let read = match conn.fill(io, cx) {
                    Poll::Ready(Ok(0)) => {
                        // The client closed its side: its streams end with it.
                        conn.peer_gone = true;
                        conn.gone_with_streams();
                        conn.drop_streams();
                        conn.phase = Phase::Done;
                        return Poll::Ready(Ok(()));
                    }
                    Poll::Ready(Ok(_)) => true,
                    Poll::Ready(Err(e)) => {
                        conn.gone_with_streams();
                        return Poll::Ready(Err(Error::Io(e)));
                    }
                    Poll::Pending => false,
                };
                // Frames left in the buffer while the output was full go on too.
                if read || std::mem::take(&mut conn.backlog) {
                    progress = true;
                    if let Err(e) = conn.frames(handler) {
                        conn.fail(e);
                        continue;
                    }
                }
            }
            if conn.closing == Closing::Asked {
                conn.start_closing();
            }
            progress |= conn.run();
            if conn.tx.out.len() > 0 {
                match conn.tx.out.poll_flush(io, cx) {
                    Poll::Ready(Ok(())) => {
                        // Room again: the bodies that waited for it go on, and so does
                        // reading (this pass did not read, and no read registered a
                        // wake-up).
                        if !conn.blocked.is_empty() {
                            conn.ready.append(&mut conn.blocked);
                            progress = true;
                        }
                        progress |= !room;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(Error::Io(e))),
                    Poll::Pending => {}
                }
            }
            if conn.finished() {
                return match Pin::new(&mut *io).poll_shutdown(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(_) => {
                        conn.phase = Phase::Done;
                        Poll::Ready(Ok(()))
                    }
                };
            }
            if !progress {
                return Poll::Pending;
            }
        }
        // More kept arriving: let the worker's other connections run.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Conn {
    /// Reads what the socket has.
    fn fill<T: AsyncRead + Unpin>(
        &mut self,
        io: &mut T,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        if self.read.capacity() - self.read.len() < READ_CHUNK / 4 {
            self.read.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(io), cx, &mut self.read)
    }

    /// Handles every complete frame in the read buffer.
    fn frames<H>(&mut self, handler: &mut H) -> Result<(), Error>
    where
        H: FnMut(Request<DownstreamBody>) -> Answer,
    {
        let mut read = std::mem::take(&mut self.read);
        let done = self.frames_in(&mut read, handler);
        // What is left is the start of a frame; its bytes stay at the buffer's front.
        self.read = read;
        done
    }

    fn frames_in<H>(&mut self, read: &mut BytesMut, handler: &mut H) -> Result<(), Error>
    where
        H: FnMut(Request<DownstreamBody>) -> Answer,
    {
        if self.phase == Phase::Preface {
            let n = read.len().min(frame::PREFACE.len());
            if read[..n] != frame::PREFACE[..n] {
                return Err(conn_err(
                    Reason::PROTOCOL_ERROR,
                    "the connection did not start with HTTP/2's client preface",
                ));
            }
            if n < frame::PREFACE.len() {
                return Ok(());
            }
            read.advance(frame::PREFACE.len());
            self.phase = Phase::FirstSettings;
        }
        while read.len() >= frame::HEAD_LEN && self.phase != Phase::Failing {
            let head = Head::parse(read);
            if head.len > frame::DEFAULT_MAX_FRAME_SIZE as usize {
                return Err(conn_err(
                    Reason::FRAME_SIZE_ERROR,
                    format!(
                        "frame of type 0x{:x} on stream {} is {} bytes, over SETTINGS_MAX_FRAME_SIZE ({})",
                        head.kind,
                        head.stream,
                        head.len,
                        frame::DEFAULT_MAX_FRAME_SIZE
                    ),
                ));
            }
            let end = frame::HEAD_LEN + head.len;
            if read.len() < end {
                read.reserve(end - read.len());
                return Ok(());
            }
            if self.phase == Phase::FirstSettings {
                if head.kind != frame::SETTINGS || head.flags & frame::ACK != 0 {
                    return Err(conn_err(
                        Reason::PROTOCOL_ERROR,
                        format!(
                            "the client's first frame is of type 0x{:x}, not SETTINGS",
                            head.kind
                        ),
                    ));
                }
                self.phase = Phase::Open;
            }
            if let Some((stream, _)) = self.partial {
                if head.kind != frame::CONTINUATION || head.stream != stream {
                    return Err(conn_err(
                        Reason::PROTOCOL_ERROR,
                        format!(
                            "frame of type 0x{:x} on stream {} inside the header block of stream {stream}",
                            head.kind, head.stream
                        ),
                    ));
                }
            }
            if head.kind == frame::DATA {
                let mut data = read.split_to(end);
                data.advance(frame::HEAD_LEN);
                self.data(head, data.freeze())?;
            } else {
                let result = self.frame(head, &read[frame::HEAD_LEN..end], handler);
                read.advance(end);
                result?;
            }
            if self.tx.out.len() >= HIGH_WATER {
                // The peer is not reading: the rest waits until it does.
                self.backlog = read.len() >= frame::HEAD_LEN;
                break;
            }
        }
        Ok(())
    }

    /// Every frame but DATA.
    fn frame<H>(&mut self, head: Head, payload: &[u8], handler: &mut H) -> Result<(), Error>
    where
        H: FnMut(Request<DownstreamBody>) -> Answer,
    {
        match head.kind {
            frame::HEADERS => self.headers(head, payload, handler),
            frame::CONTINUATION => self.continuation(head, payload, handler),
            frame::SETTINGS => self.settings(head, payload),
            frame::WINDOW_UPDATE => self.window_update(head, payload),
            frame::PING => {
                if head.len != 8 {
                    return Err(frame_size("PING", head));
                }
                if head.stream != 0 {
                    return Err(on_a_stream("PING", head));
                }
                let payload: [u8; 8] = payload.try_into().expect("checked length");
                if head.flags & frame::ACK == 0 {
                    frame::put_ping(&mut self.tx.out.buf, true, payload);
                } else if payload == SHUTDOWN_PING && self.closing == Closing::Pinged {
                    self.final_goaway();
                }
                Ok(())
            }
            frame::RST_STREAM => {
                if head.len != 4 {
                    return Err(frame_size("RST_STREAM", head));
                }
                if head.stream == 0 {
                    return Err(on_stream_zero("RST_STREAM"));
                }
                if head.stream > self.last_id {
                    return Err(conn_err(
                        Reason::PROTOCOL_ERROR,
                        format!("RST_STREAM on stream {}, which is idle", head.stream),
                    ));
                }
                let reason = Reason(u32::from_be_bytes(payload.try_into().expect("checked")));
                if let Some(&i) = self.ids.get(&head.stream) {
                    self.rx_reset.inc();
                    let answered = !matches!(
                        self.slots[i].as_ref().map(|s| &s.task),
                        Some(Task::Answering(_))
                    );
                    // Envoy logs a stream its client reset `DR`, `http2.remote_reset`.
                    crate::stream::ending_with("DR", "http2.remote_reset", || {
                        self.close(i, Some(reason))
                    });
                    if !answered {
                        self.resets += 1;
                        if self.resets > RESET_ALLOWANCE && self.resets > self.opened / 2 {
                            return Err(conn_err(
                                Reason::ENHANCE_YOUR_CALM,
                                format!(
                                    "{} of {} streams reset by the client before their answer",
                                    self.resets, self.opened
                                ),
                            ));
                        }
                    }
                }
                Ok(())
            }
            frame::PRIORITY => {
                if head.stream == 0 {
                    return Err(on_stream_zero("PRIORITY"));
                }
                if head.len != 5 {
                    self.reset_stream(head.stream, Reason::FRAME_SIZE_ERROR)?;
                }
                // Priorities are advice (RFC 9113 §5.3): answers go in arrival order.
                Ok(())
            }
            frame::GOAWAY => {
                if head.stream != 0 {
                    return Err(on_a_stream("GOAWAY", head));
                }
                if head.len < 8 {
                    return Err(frame_size("GOAWAY", head));
                }
                let code = Reason(u32::from_be_bytes(
                    payload[4..8].try_into().expect("checked"),
                ));
                if code != Reason::NO_ERROR {
                    tracing::debug!(
                        error = %code,
                        debug = %String::from_utf8_lossy(&payload[8..]),
                        "HTTP/2 client sent GOAWAY"
                    );
                }
                // A client opens no stream after its GOAWAY; those open finish.
                self.peer_gone = true;
                Ok(())
            }
            frame::PUSH_PROMISE => Err(conn_err(
                Reason::PROTOCOL_ERROR,
                "a client sent PUSH_PROMISE",
            )),
            // Unknown frame types are ignored (RFC 9113 §4.1).
            _ => Ok(()),
        }
    }

    fn settings(&mut self, head: Head, payload: &[u8]) -> Result<(), Error> {
        if head.stream != 0 {
            return Err(on_a_stream("SETTINGS", head));
        }
        if head.flags & frame::ACK != 0 {
            if head.len != 0 {
                return Err(frame_size("SETTINGS with ACK", head));
            }
            return Ok(());
        }
        if !head.len.is_multiple_of(6) {
            return Err(frame_size("SETTINGS", head));
        }
        for setting in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([setting[0], setting[1]]);
            let value = u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]);
            match id {
                frame::SETTINGS_HEADER_TABLE_SIZE => {
                    // Strait's encoder keeps at most the default table.
                    self.tx.encoder.set_max_table_size(value.min(4096) as usize);
                }
                frame::SETTINGS_ENABLE_PUSH if value > 1 => {
                    return Err(conn_err(
                        Reason::PROTOCOL_ERROR,
                        format!("SETTINGS_ENABLE_PUSH is {value}; it must be 0 or 1"),
                    ));
                }
                frame::SETTINGS_INITIAL_WINDOW_SIZE => {
                    if value as i64 > frame::MAX_WINDOW {
                        return Err(conn_err(
                            Reason::FLOW_CONTROL_ERROR,
                            format!("SETTINGS_INITIAL_WINDOW_SIZE is {value}, over 2^31-1"),
                        ));
                    }
                    let delta = value as i64 - self.peer_window;
                    self.peer_window = value as i64;
                    for (i, slot) in self.slots.iter_mut().enumerate() {
                        let Some(slot) = slot else { continue };
                        slot.send_window += delta;
                        if slot.send_window > frame::MAX_WINDOW {
                            return Err(conn_err(
                                Reason::FLOW_CONTROL_ERROR,
                                format!(
                                    "SETTINGS_INITIAL_WINDOW_SIZE {value} takes stream {}'s window over 2^31-1",
                                    slot.id
                                ),
                            ));
                        }
                        if delta > 0 && slot.held.is_some() {
                            self.ready.push(i);
                        }
                    }
                }
                frame::SETTINGS_MAX_FRAME_SIZE => {
                    if !(frame::DEFAULT_MAX_FRAME_SIZE..=frame::MAX_MAX_FRAME_SIZE).contains(&value)
                    {
                        return Err(conn_err(
                            Reason::PROTOCOL_ERROR,
                            format!("SETTINGS_MAX_FRAME_SIZE is {value}, outside 16384..=16777215"),
                        ));
                    }
                    self.tx.max_frame = value as usize;
                }
                // MAX_CONCURRENT_STREAMS limits pushes, which Strait does not make;
                // MAX_HEADER_LIST_SIZE is advice; unknown settings are ignored.
                _ => {}
            }
        }
        frame::put_settings_ack(&mut self.tx.out.buf);
        Ok(())
    }

    fn window_update(&mut self, head: Head, payload: &[u8]) -> Result<(), Error> {
        if head.len != 4 {
            return Err(frame_size("WINDOW_UPDATE", head));
        }
        let increment = (u32::from_be_bytes(payload.try_into().expect("checked"))
            & frame::MAX_STREAM_ID) as i64;
        if head.stream == 0 {
            if increment == 0 {
                return Err(conn_err(
                    Reason::PROTOCOL_ERROR,
                    "WINDOW_UPDATE of 0 on the connection",
                ));
            }
            self.tx.send_window += increment;
            if self.tx.send_window > frame::MAX_WINDOW {
                return Err(conn_err(
                    Reason::FLOW_CONTROL_ERROR,
                    "WINDOW_UPDATE takes the connection's window over 2^31-1",
                ));
            }
            self.ready.append(&mut self.stalled);
            return Ok(());
        }
        if head.stream > self.last_id {
            return Err(conn_err(
                Reason::PROTOCOL_ERROR,
                format!("WINDOW_UPDATE on stream {}, which is idle", head.stream),
            ));
        }
        let Some(&i) = self.ids.get(&head.stream) else {
            // A stream that has ended: the update crossed its last frame.
            return Ok(());
        };
        if increment == 0 {
            return self.reset_stream(head.stream, Reason::PROTOCOL_ERROR);
        }
        let slot = self.slots[i].as_mut().expect("mapped slot");
        slot.send_window += increment;
        if slot.send_window > frame::MAX_WINDOW {
            return self.reset_stream(head.stream, Reason::FLOW_CONTROL_ERROR);
        }
        if slot.held.is_some() {
            self.ready.push(i);
        }
        Ok(())
    }

    fn headers<H>(&mut self, head: Head, payload: &[u8], handler: &mut H) -> Result<(), Error>
    where
        H: FnMut(Request<DownstreamBody>) -> Answer,
    {
        if head.stream == 0 || head.stream.is_multiple_of(2) {
            return Err(conn_err(
                Reason::PROTOCOL_ERROR,
                format!(
                    "HEADERS on stream {}: a client's streams have odd identifiers",
                    head.stream
                ),
            ));
        }
        let mut block = payload;
        if head.flags & frame::PADDED != 0 {
            block = unpad(block).ok_or_else(|| bad_padding("HEADERS", head))?;
        }
        if head.flags & frame::PRIORITY_FLAG != 0 {
            if block.len() < 5 {
                return Err(frame_size("HEADERS with PRIORITY", head));
            }
            block = &block[5..];
        }
        if head.flags & frame::END_HEADERS != 0 {
            return self.header_block(head.stream, head.flags, block, handler);
        }
        self.block.clear();
        self.block.extend_from_slice(block);
        self.partial = Some((head.stream, head.flags));
        Ok(())
    }

    fn continuation<H>(&mut self, head: Head, payload: &[u8], handler: &mut H) -> Result<(), Error>
    where
        H: FnMut(Request<DownstreamBody>) -> Answer,
    {
        let Some((stream, flags)) = self.partial else {
            return Err(conn_err(
                Reason::PROTOCOL_ERROR,
                format!(
                    "CONTINUATION on stream {} without a HEADERS before it",
                    head.stream
                ),
            ));
        };
        // A block may not be much larger than the list it decodes to (each field
        // costs 32 bytes of the list and at least one of the block): past the list
        // limit with room for framing, it is a flood, not a request.
        if self.block.len() + payload.len() > self.ours.max_header_list_size + 16 * 1024 {
            return Err(conn_err(
                Reason::ENHANCE_YOUR_CALM,
                format!(
                    "the header block of stream {stream} is over {} bytes",
                    self.ours.max_header_list_size + 16 * 1024
                ),
            ));
        }
        self.block.extend_from_slice(payload);
        if head.flags & frame::END_HEADERS == 0 {
            return Ok(());
        }
        self.partial = None;
        let block = std::mem::take(&mut self.block);
        let result = self.header_block(stream, flags, &block, handler);
        self.block = block;
        result
    }

    /// A complete header block: a new request, or a stream's trailers.
    fn header_block<H>(
        &mut self,
        stream: u32,
        flags: u8,
        block: &[u8],
        handler: &mut H,
    ) -> Result<(), Error>
    where
        H: FnMut(Request<DownstreamBody>) -> Answer,
    {
        let end_stream = flags & frame::END_STREAM != 0;
        if stream <= self.last_id {
            let fields = self.decode_fields(block)?;
            let Some(&i) = self.ids.get(&stream) else {
                // A stream that has ended (Strait answered and reset it, or reset it
                // for an error; the client's trailers may have crossed the reset):
                // the block only kept the decoder in step, and the client learns the
                // stream is closed rather than wait for it.
                frame::put_rst(&mut self.tx.out.buf, stream, Reason::STREAM_CLOSED);
                return Ok(());
            };
            let slot = self.slots[i].as_mut().expect("mapped slot");
            let Some(inbox) = slot.recv.take() else {
                return self.reset_stream(stream, Reason::STREAM_CLOSED);
            };
            let trailers = match fields {
                Ok(trailers) if end_stream => trailers,
                // Trailers end the stream; pseudo-header fields have no place in them.
                _ => {
                    slot.recv = Some(inbox);
                    return self.reset_stream(stream, Reason::PROTOCOL_ERROR);
                }
            };
            if slot.declared.is_some_and(|d| d != slot.received) {
                slot.recv = Some(inbox);
                return self.reset_stream(stream, Reason::PROTOCOL_ERROR);
            }
            let mut inbox = inbox.lock();
            if !inbox.dropped {
                inbox.trailers = Some(trailers);
            }
            inbox.end = End::Done;
            if let Some(w) = inbox.reader.take() {
                w.wake();
            }
            return Ok(());
        }
        self.last_id = stream;
        let decoded = self.decode_request(block)?;
        if let Closing::Final(last) = self.closing {
            if stream > last {
                // After the final GOAWAY: not processed; the client may retry it.
                return Ok(());
            }
        }
        self.opened += 1;
        let (req, declared) = match decoded {
            Decoded::Request(req, declared) => (req, declared),
            Decoded::TooLarge => {
                // RFC 9113 §10.5.1: a 431 tells the client why.
                self.tx.head(
                    stream,
                    http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    &HeaderMap::new(),
                    true,
                );
                if !end_stream {
                    frame::put_rst(&mut self.tx.out.buf, stream, Reason::NO_ERROR);
                }
                return Ok(());
            }
            Decoded::Malformed(why) => {
                tracing::debug!(stream, why, "malformed HTTP/2 request");
                return self.reset_stream(stream, Reason::PROTOCOL_ERROR);
            }
        };
        if end_stream && declared.is_some_and(|d| d != 0) {
            tracing::debug!(
                stream,
                "HTTP/2 request declares a body and ends without one"
            );
            return self.reset_stream(stream, Reason::PROTOCOL_ERROR);
        }
        if self.ids.len() >= self.ours.max_streams {
            frame::put_rst(&mut self.tx.out.buf, stream, Reason::REFUSED_STREAM);
            return Ok(());
        }
        let (recv, body) = if end_stream {
            (None, DownstreamBody::Empty)
        } else {
            let inbox = Arc::new(Mutex::new(Inbox::default()));
            let hint = match declared {
                Some(len) => SizeHint::with_exact(len),
                None => SizeHint::default(),
            };
            let body = RequestBody {
                inbox: inbox.clone(),
                shared: self.shared.clone(),
                stream,
                hint,
            };
            (Some(inbox), DownstreamBody::H2(body))
        };
        let answer = handler(req.map(|()| body));
        let slot = Slot {
            id: stream,
            task: Task::Answering(answer),
            recv,
            recv_window: self.ours.stream_window,
            recv_unreturned: 0,
            declared,
            received: 0,
            send_window: self.peer_window,
            held: None,
            held_end: false,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(slot);
                i
            }
            None => {
                let i = self.slots.len();
                self.slots.push(Some(slot));
                let wake = Arc::new(SlotWake {
                    slot: i,
                    queued: AtomicBool::new(false),
                    shared: self.shared.clone(),
                });
                let waker = Waker::from(wake.clone());
                self.wakers.push((wake, waker));
                i
            }
        };
        self.ids.insert(stream, i);
        self.ready.push(i);
        Ok(())
    }

    /// Decodes a request's header block. HPACK errors are the connection's; an
    /// HTTP error is the stream's.
    fn decode_request(&mut self, block: &[u8]) -> Result<Decoded, Error> {
        let mut b = RequestParts::new(self.ours.max_header_list_size);
        let seen = &mut self.seen;
        self.decoder
            .decode(block, |name, value| b.field(seen, name, value))
            .map_err(|e| conn_err(Reason::COMPRESSION_ERROR, e.to_string()))?;
        Ok(b.finish())
    }

    /// Decodes a trailer block: the fields, or why they are not trailers.
    fn decode_fields(&mut self, block: &[u8]) -> Result<Result<HeaderMap, &'static str>, Error> {
        let mut b = RequestParts::new(self.ours.max_header_list_size);
        b.trailers = true;
        let seen = &mut self.seen;
        self.decoder
            .decode(block, |name, value| b.field(seen, name, value))
            .map_err(|e| conn_err(Reason::COMPRESSION_ERROR, e.to_string()))?;
        Ok(match (b.malformed, b.too_large) {
            (Some(why), _) => Err(why),
            (None, true) => Err("trailers over max_request_headers_kb"),
            (None, false) => Ok(b.headers),
        })
    }

    fn data(&mut self, head: Head, payload: Bytes) -> Result<(), Error> {
        if head.stream == 0 {
            return Err(on_stream_zero("DATA"));
        }
        let flow = head.len as i64;
        if flow > self.recv_window {
            return Err(conn_err(
                Reason::FLOW_CONTROL_ERROR,
                format!(
                    "DATA of {flow} bytes on stream {} past the connection's window ({})",
                    head.stream, self.recv_window
                ),
            ));
        }
        self.recv_window -= flow;
        let mut data = payload;
        if head.flags & frame::PADDED != 0 {
            let Some(len) = unpad(&data).map(<[u8]>::len) else {
                return Err(bad_padding("DATA", head));
            };
            data = data.slice(1..1 + len);
        }
        // Padding counts against the windows and is returned at once.
        let padding = flow - data.len() as i64;
        let Some(&i) = self.ids.get(&head.stream) else {
            if head.stream > self.last_id {
                return Err(conn_err(
                    Reason::PROTOCOL_ERROR,
                    format!("DATA on stream {}, which is idle", head.stream),
                ));
            }
            // An ended stream: its data goes nowhere, its credit back.
            self.return_conn(flow);
            return Ok(());
        };
        let end = head.flags & frame::END_STREAM != 0;
        let slot = self.slots[i].as_mut().expect("mapped slot");
        if slot.recv.is_none() {
            self.return_conn(flow);
            return self.reset_stream(head.stream, Reason::STREAM_CLOSED);
        }
        slot.recv_window -= flow;
        slot.received += data.len() as u64;
        let overflow = slot.recv_window < 0;
        let mismatch = match slot.declared {
            Some(d) => slot.received > d || (end && slot.received != d),
            None => false,
        };
        if overflow || mismatch {
            self.return_conn(flow);
            let reason = match overflow {
                true => Reason::FLOW_CONTROL_ERROR,
                false => Reason::PROTOCOL_ERROR,
            };
            return self.reset_stream(head.stream, reason);
        }
        let inbox = slot.recv.as_ref().expect("checked above");
        let returned_now = {
            let mut inbox = inbox.lock();
            let dropped = inbox.dropped;
            if !dropped && !data.is_empty() {
                inbox.chunks.push_back(data);
            }
            if end {
                inbox.end = End::Done;
            }
            if let Some(w) = inbox.reader.take() {
                w.wake();
            }
            match dropped {
                true => flow,
                false => padding,
            }
        };
        if end {
            slot.recv = None;
        }
        if returned_now > 0 {
            self.credit.push((head.stream, returned_now as u32));
        }
        if end {
            self.maybe_finish(i);
        }
        Ok(())
    }

    /// Returns credit for DATA no stream will read.
    fn return_conn(&mut self, n: i64) {
        self.credit.push((0, n as u32));
    }

    /// Sends the WINDOW_UPDATEs the readers' progress earned: a window is topped up
    /// once half of it has been read, so a steady upload costs one frame per half
    /// window.
    fn return_credit(&mut self) {
        if self.credit.is_empty() {
            return;
        }
        for (stream, n) in std::mem::take(&mut self.credit) {
            let n = n as i64;
            self.recv_unreturned += n;
            if stream == 0 {
                continue;
            }
            let Some(&i) = self.ids.get(&stream) else {
                continue;
            };
            let slot = self.slots[i].as_mut().expect("mapped slot");
            if slot.recv.is_none() {
                continue;
            }
            slot.recv_unreturned += n;
            if slot.recv_unreturned >= self.ours.stream_window / 2 {
                frame::put_window_update(&mut self.tx.out.buf, stream, slot.recv_unreturned as u32);
                slot.recv_window += slot.recv_unreturned;
                slot.recv_unreturned = 0;
            }
        }
        if self.recv_unreturned >= self.ours.conn_window / 2 {
            frame::put_window_update(&mut self.tx.out.buf, 0, self.recv_unreturned as u32);
            self.recv_window += self.recv_unreturned;
            self.recv_unreturned = 0;
        }
    }

    /// Polls the streams that were woken, and returns the credit their readers
    /// freed; whether any stream was polled.
    fn run(&mut self) -> bool {
        {
            let mut queue = self.shared.queue.lock();
            if !queue.ready.is_empty() {
                self.ready.append(&mut queue.ready);
            }
            if !queue.credit.is_empty() {
                self.credit.append(&mut queue.credit);
            }
        }
        self.return_credit();
        if self.ready.is_empty() {
            return false;
        }
        let mut ready = std::mem::take(&mut self.ready);
        for &i in &ready {
            let Some((wake, waker)) = self.wakers.get(i) else {
                continue;
            };
            wake.queued.store(false, Ordering::Release);
            let Some(slot) = self.slots[i].as_mut() else {
                continue;
            };
            let mut cx = Context::from_waker(waker);
            match step(slot, &mut self.tx, &mut cx) {
                Step::Pending => {}
                Step::Stalled => self.stalled.push(i),
                Step::Blocked => self.blocked.push(i),
                Step::Sent => self.maybe_finish(i),
                Step::Reset(reason) => {
                    let id = slot.id;
                    self.close(i, None);
                    frame::put_rst(&mut self.tx.out.buf, id, reason);
                }
            }
        }
        ready.clear();
        // Keep the larger of the two buffers: wakes during this pass went to the
        // other.
        if self.ready.is_empty() {
            self.ready = ready;
        }
        if self.closing == Closing::No && self.drain_close.as_ref().is_some_and(|f| f()) {
            self.closing = Closing::Asked;
            self.shared.task.wake();
        }
        true
    }

    /// A stream whose answer is sent ends once the client's side has ended too; if
    /// it has not, RST_STREAM NO_ERROR tells the client to stop sending (RFC 9113
    /// §8.1).
    fn maybe_finish(&mut self, i: usize) {
        let Some(slot) = self.slots[i].as_ref() else {
            return;
        };
        if !matches!(slot.task, Task::Done) {
            return;
        }
        if slot.recv.is_some() {
            let id = slot.id;
            frame::put_rst(&mut self.tx.out.buf, id, Reason::NO_ERROR);
            self.close(i, Some(Reason::NO_ERROR));
        } else {
            self.close(i, None);
        }
    }

    /// Ends a stream: its future is dropped (and with it the upstream request), its
    /// request body's reader sees `reset` if the body had not ended.
    fn close(&mut self, i: usize, reset: Option<Reason>) {
        let Some(slot) = self.slots[i].take() else {
            return;
        };
        self.ids.remove(&slot.id);
        self.free.push(i);
        if let Some(inbox) = slot.recv {
            let mut inbox = inbox.lock();
            let unread: usize = inbox.chunks.iter().map(Bytes::len).sum();
            inbox.chunks.clear();
            inbox.end = End::Reset(reset.unwrap_or(Reason::CANCEL));
            if let Some(w) = inbox.reader.take() {
                w.wake();
            }
            drop(inbox);
            // Credit of what nobody will read goes back to the connection.
            let unreturned = slot.recv_unreturned + unread as i64;
            if unreturned > 0 {
                self.credit.push((0, unreturned as u32));
            }
        }
        drop(slot.task);
    }

    /// A stream error: RST_STREAM, and the stream ends.
    fn reset_stream(&mut self, stream: u32, reason: Reason) -> Result<(), Error> {
        frame::put_rst(&mut self.tx.out.buf, stream, reason);
        if let Some(&i) = self.ids.get(&stream) {
            // The client broke the protocol on a stream already handed to the
            // router (a body longer or shorter than its content-length, say): Envoy
            // 1.40 logs it `DPE`, `http2.remote_reset`.
            crate::stream::ending_with("DPE", "http2.remote_reset", || self.close(i, Some(reason)));
        }
        self.local_resets += 1;
        if self.local_resets > 1024 && self.local_resets > self.opened / 2 {
            return Err(conn_err(
                Reason::ENHANCE_YOUR_CALM,
                format!(
                    "{} streams reset for the client's errors",
                    self.local_resets
                ),
            ));
        }
        Ok(())
    }

    /// Starts a graceful shutdown: with streams open, GOAWAY with the largest
    /// identifier and a PING first (streams in flight towards Strait are still
    /// served), the final GOAWAY once the PING comes back; without, the final one.
    fn start_closing(&mut self) {
        if self.ids.is_empty() || self.phase != Phase::Open {
            self.final_goaway();
            return;
        }
        frame::put_goaway(
            &mut self.tx.out.buf,
            frame::MAX_STREAM_ID,
            Reason::NO_ERROR,
            b"",
        );
        frame::put_ping(&mut self.tx.out.buf, false, SHUTDOWN_PING);
        self.closing = Closing::Pinged;
    }

    fn final_goaway(&mut self) {
        frame::put_goaway(&mut self.tx.out.buf, self.last_id, Reason::NO_ERROR, b"");
        self.closing = Closing::Final(self.last_id);
    }

    /// A connection error: GOAWAY naming it; the connection ends once it is written.
    fn fail(&mut self, e: Error) {
        if let Error::Protocol { reason, detail } = &e {
            tracing::debug!(error = %reason, detail, "HTTP/2 connection error");
            frame::put_goaway(
                &mut self.tx.out.buf,
                self.last_id,
                *reason,
                detail.as_bytes(),
            );
        }
        self.failed = Some(e);
        self.phase = Phase::Failing;
    }

    fn drop_streams(&mut self) {
        for i in 0..self.slots.len() {
            self.close(i, Some(Reason::CANCEL));
        }
    }

    /// Whether the connection has nothing left to do: shut down (or the client went
    /// away) with no stream open and everything written.
    fn finished(&self) -> bool {
        let closed = matches!(self.closing, Closing::Final(_)) || self.peer_gone;
        closed && self.ids.is_empty() && self.tx.out.len() == 0
    }
}

impl Conn {
    /// The client closed the connection: `downstream_cx_destroy_remote_active_rq` if
    /// any of its streams was still open.
    fn gone_with_streams(&self) {
        if !self.ids.is_empty() {
            self.destroy_remote_active_rq.inc();
        }
    }
}

impl Drop for Conn {
    /// However the connection ends, a request body still being read elsewhere (an
    /// upstream HTTP/2 stream's task) sees a reset instead of waiting forever.
    fn drop(&mut self) {
        self.drop_streams();
    }
}

/// What polling a stream came to.
enum Step {
    Pending,
    /// Its body waits for the connection's window.
    Stalled,
    /// Its body waits for the output to drain.
    Blocked,
    /// Its answer has been written to its end.
    Sent,
    /// It is to be reset.
    Reset(Reason),
}

/// Polls a stream: its handler until the answer's head, then its body, writing
/// frames as far as the windows allow.
fn step(slot: &mut Slot, tx: &mut Tx, cx: &mut Context<'_>) -> Step {
    if let Task::Answering(answer) = &mut slot.task {
        let resp = match Pin::new(answer).poll(cx) {
            Poll::Pending => return Step::Pending,
            Poll::Ready(Ok(resp)) => resp,
            // The router answers every failure it can with a response; an error is a
            // stream it means to reset (Envoy's behaviour).
            Poll::Ready(Err(_)) => return Step::Reset(Reason::INTERNAL_ERROR),
        };
        let (mut head, body) = resp.into_parts();
        prepare_head(&mut head.headers, &body);
        let end = body.is_end_stream();
        tx.head(slot.id, head.status, &head.headers, end);
        // Written from a borrow: the head goes to the plugins' `on_log`, moved.
        if let Some(chain) = body.chain() {
            chain.keep_sent_response(head);
        }
        if end {
            slot.task = Task::Done;
            return Step::Sent;
        }
        slot.task = Task::Sending(body);
    }
    let Task::Sending(body) = &mut slot.task else {
        return Step::Pending;
    };
    loop {
        if let Some(chunk) = &mut slot.held {
            let window = slot.send_window.min(tx.send_window);
            if window <= 0 {
                return match tx.send_window <= 0 {
                    true => Step::Stalled,
                    // The stream's own window: its WINDOW_UPDATE queues it again.
                    false => Step::Pending,
                };
            }
            let n = chunk.len().min(window as usize).min(tx.max_frame);
            let part = chunk.split_to(n);
            let last = chunk.is_empty();
            let end = last && slot.held_end;
            slot.send_window -= n as i64;
            tx.send_window -= n as i64;
            tx.data(slot.id, part, end);
            if !last {
                continue;
            }
            slot.held = None;
            if end {
                slot.task = Task::Done;
                return Step::Sent;
            }
            continue;
        }
        if tx.out.len() >= HIGH_WATER {
            return Step::Blocked;
        }
        match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Pending => return Step::Pending,
            Poll::Ready(None) => {
                tx.data(slot.id, Bytes::new(), true);
                slot.task = Task::Done;
                return Step::Sent;
            }
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(chunk) => {
                    let end = body.is_end_stream();
                    if chunk.is_empty() {
                        if end {
                            tx.data(slot.id, chunk, true);
                            slot.task = Task::Done;
                            return Step::Sent;
                        }
                        continue;
                    }
                    slot.held = Some(chunk);
                    slot.held_end = end;
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        tx.trailers(slot.id, &trailers);
                        slot.task = Task::Done;
                        return Step::Sent;
                    }
                }
            },
            Poll::Ready(Some(Err(e))) => {
                tracing::debug!(error = %e, "HTTP/2 response body failed");
                return Step::Reset(Reason::INTERNAL_ERROR);
            }
        }
    }
}

impl Tx {
    /// A response head, in HEADERS and as many CONTINUATION frames as the client's
    /// frame size needs.
    fn head(&mut self, stream: u32, status: http::StatusCode, headers: &HeaderMap, end: bool) {
        let start = self.out.buf.len();
        self.out.buf.extend_from_slice(&[0; frame::HEAD_LEN]);
        self.encoder
            .encode_response(status, headers, &mut self.out.buf);
        self.block_frames(start, stream, end);
    }

    fn trailers(&mut self, stream: u32, trailers: &HeaderMap) {
        let start = self.out.buf.len();
        self.out.buf.extend_from_slice(&[0; frame::HEAD_LEN]);
        self.encoder.encode_trailers(trailers, &mut self.out.buf);
        self.block_frames(start, stream, true);
    }

    /// Frames the header block encoded after a header's room at `start`.
    fn block_frames(&mut self, start: usize, stream: u32, end: bool) {
        let len = self.out.buf.len() - start - frame::HEAD_LEN;
        let end_flag = if end { frame::END_STREAM } else { 0 };
        if len <= self.max_frame {
            let head = frame::head(len, frame::HEADERS, frame::END_HEADERS | end_flag, stream);
            self.out.buf[start..start + frame::HEAD_LEN].copy_from_slice(&head);
        } else {
            let block = self.out.buf.split_off(start + frame::HEAD_LEN);
            self.out.buf.truncate(start);
            let mut chunks = block.chunks(self.max_frame).peekable();
            let mut kind = frame::HEADERS;
            let mut flags = end_flag;
            while let Some(chunk) = chunks.next() {
                if chunks.peek().is_none() {
                    flags |= frame::END_HEADERS;
                }
                frame::put_head(&mut self.out.buf, chunk.len(), kind, flags, stream);
                self.out.buf.extend_from_slice(chunk);
                kind = frame::CONTINUATION;
                flags = 0;
            }
        }
    }

    /// A DATA frame; `payload` fits the windows and the frame size.
    fn data(&mut self, stream: u32, payload: Bytes, end: bool) {
        let flags = if end { frame::END_STREAM } else { 0 };
        frame::put_head(&mut self.out.buf, payload.len(), frame::DATA, flags, stream);
        if payload.len() < COPY_BELOW {
            self.out.buf.extend_from_slice(&payload);
        } else {
            self.out.queue_payload(payload);
        }
    }
}

/// The connection's output: frozen segments (frames, then a large payload, …) and
/// the frame buffer after them. Frames are appended to `buf` directly.
#[derive(Default)]
struct Out {
    queue: VecDeque<Bytes>,
    /// Bytes of `queue` not yet written.
    queued: usize,
    buf: BytesMut,
}

impl Out {
    /// Bytes not yet written.
    fn len(&self) -> usize {
        self.queued + self.buf.len()
    }

    fn queue_payload(&mut self, payload: Bytes) {
        if !self.buf.is_empty() {
            self.queued += self.buf.len();
            self.queue.push_back(self.buf.split().freeze());
        }
        self.queued += payload.len();
        self.queue.push_back(payload);
    }

    fn poll_flush<T: AsyncWrite + Unpin>(
        &mut self,
        io: &mut T,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while self.len() > 0 {
            let n = if self.queue.is_empty() {
                std::task::ready!(Pin::new(&mut *io).poll_write(cx, &self.buf))?
            } else {
                let mut slices = [io::IoSlice::new(&[]); 32];
                let mut k = 0;
                for seg in self.queue.iter().take(31) {
                    slices[k] = io::IoSlice::new(seg);
                    k += 1;
                }
                if k < 31 || self.queue.len() == 31 {
                    slices[k] = io::IoSlice::new(&self.buf);
                    k += 1;
                }
                std::task::ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..k]))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.advance(n);
        }
        Poll::Ready(Ok(()))
    }

    /// Drops `n` written bytes from the front. A `buf` written out to its end keeps
    /// its room: the next `reserve` reclaims it from the start.
    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            match self.queue.front_mut() {
                Some(seg) if seg.len() <= n => {
                    n -= seg.len();
                    self.queued -= seg.len();
                    self.queue.pop_front();
                }
                Some(seg) => {
                    seg.advance(n);
                    self.queued -= n;
                    return;
                }
                None => {
                    self.buf.advance(n);
                    return;
                }
            }
        }
    }
}

/// What the connection's last request carried: a client sends the same authority,
/// and mostly the same fields, request after request. A clone of what was parsed
/// then costs a reference count; parsing and copying again, an allocation and a
/// pass over the bytes.
#[derive(Default)]
struct Seen {
    names: crate::h1::NameCache,
    authority: Option<Authority>,
    path: Option<PathAndQuery>,
    /// Regular fields' values by position, short ones only.
    values: Vec<Option<HeaderValue>>,
}

/// Positions and length of the values [`Seen`] keeps: a bound on what a client
/// can make a connection hold.
const SEEN_VALUES: usize = 16;
const SEEN_VALUE_LEN: usize = 256;

impl Seen {
    /// The `:authority`, or why it is refused. Checked only when it differs from the
    /// last one seen.
    fn authority(&mut self, raw: &[u8]) -> Result<Authority, &'static str> {
        if let Some(a) = self
            .authority
            .as_ref()
            .filter(|a| a.as_str().as_bytes() == raw)
        {
            return Ok(a.clone());
        }
        // RFC 9113 §8.3.1: no userinfo for http(s).
        if raw.contains(&b'@') {
            return Err("userinfo in :authority");
        }
        let a = Authority::from_maybe_shared(Bytes::copy_from_slice(raw))
            .map_err(|_| "an invalid :authority")?;
        self.authority = (raw.len() <= SEEN_VALUE_LEN).then(|| a.clone());
        Ok(a)
    }

    /// The `:path`, or why it is refused, as [`Self::authority`].
    fn path(&mut self, raw: &[u8]) -> Result<PathAndQuery, &'static str> {
        if let Some(p) = self.path.as_ref().filter(|p| p.as_str().as_bytes() == raw) {
            return Ok(p.clone());
        }
        // A client never sends one (RFC 9110 §4.2.5), and `http::Uri` would drop it
        // silently: refused, as on HTTP/1.1.
        if raw.contains(&b'#') {
            return Err("a fragment in :path");
        }
        let p = PathAndQuery::from_maybe_shared(Bytes::copy_from_slice(raw))
            .map_err(|_| "an invalid :path")?;
        self.path = (raw.len() <= SEEN_VALUE_LEN).then(|| p.clone());
        Ok(p)
    }

    fn value(&mut self, index: usize, raw: &[u8]) -> Option<HeaderValue> {
        if let Some(Some(v)) = self.values.get(index) {
            if v.as_bytes() == raw {
                return Some(v.clone());
            }
        }
        let v = HeaderValue::from_bytes(raw).ok()?;
        if index < SEEN_VALUES && raw.len() <= SEEN_VALUE_LEN {
            if self.values.len() <= index {
                self.values.resize(index + 1, None);
            }
            self.values[index] = Some(v.clone());
        }
        Some(v)
    }
}

/// A request head as its fields are decoded.
struct RequestParts {
    limit: usize,
    size: usize,
    too_large: bool,
    malformed: Option<&'static str>,
    /// Decoding trailers: no pseudo-header field.
    trailers: bool,
    /// A regular field has been seen: pseudo-header fields may no longer come.
    regular: bool,
    index: usize,
    method: Option<Method>,
    scheme: Option<Scheme>,
    authority: Option<Authority>,
    path: Option<PathAndQuery>,
    headers: HeaderMap,
    declared: Option<u64>,
}

// Made once per request and moved straight into the handler's request.
#[allow(clippy::large_enum_variant)]
enum Decoded {
    Request(Request<()>, Option<u64>),
    TooLarge,
    Malformed(&'static str),
}

impl RequestParts {
    fn new(limit: usize) -> Self {
        RequestParts {
            limit,
            size: 0,
            too_large: false,
            malformed: None,
            trailers: false,
            regular: false,
            index: 0,
            method: None,
            scheme: None,
            authority: None,
            path: None,
            headers: HeaderMap::with_capacity(8),
            declared: None,
        }
    }

    fn bad(&mut self, why: &'static str) {
        self.malformed.get_or_insert(why);
    }

    /// One decoded field (RFC 9113 §8.2, §8.3).
    fn field(&mut self, seen: &mut Seen, name: &[u8], value: &[u8]) {
        self.size += name.len() + value.len() + 32;
        if self.size > self.limit {
            self.too_large = true;
        }
        if self.too_large || self.malformed.is_some() {
            // The decoder still runs the block to its end to keep its table in step.
            return;
        }
        if let Some(pseudo) = name.strip_prefix(b":") {
            if self.regular || self.trailers {
                return self.bad("a pseudo-header field after a regular one, or in trailers");
            }
            match pseudo {
                b"method" if self.method.is_none() => match Method::from_bytes(value) {
                    Ok(m) => self.method = Some(m),
                    Err(_) => self.bad("an invalid :method"),
                },
                b"scheme" if self.scheme.is_none() => match Scheme::try_from(value) {
                    Ok(s) => self.scheme = Some(s),
                    Err(_) => self.bad("an invalid :scheme"),
                },
                b"authority" if self.authority.is_none() => match seen.authority(value) {
                    Ok(a) => self.authority = Some(a),
                    Err(why) => self.bad(why),
                },
                b"path" if self.path.is_none() => {
                    if value.is_empty() {
                        return self.bad("an empty :path");
                    }
                    match seen.path(value) {
                        Ok(p) => self.path = Some(p),
                        Err(why) => self.bad(why),
                    }
                }
                b"method" | b"scheme" | b"authority" | b"path" => {
                    self.bad("a pseudo-header field twice")
                }
                _ => self.bad("an unknown pseudo-header field"),
            }
            return;
        }
        self.regular = true;
        if name.iter().any(u8::is_ascii_uppercase) {
            return self.bad("an uppercase header name");
        }
        let index = self.index;
        self.index += 1;
        let Ok(name) = seen.names.name(index, name) else {
            return self.bad("an invalid header name");
        };
        if crate::headers::is_connection_specific(&name) {
            return self.bad("a connection-specific header field");
        }
        if name == header::TE && value != b"trailers" {
            return self.bad("te other than \"trailers\"");
        }
        let value = match self.trailers {
            true => HeaderValue::from_bytes(value).ok(),
            false => seen.value(index, value),
        };
        let Some(value) = value else {
            return self.bad("an invalid header value");
        };
        if name == header::CONTENT_LENGTH && !self.trailers {
            let Some(len) = std::str::from_utf8(value.as_bytes())
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
            else {
                return self.bad("an invalid content-length");
            };
            match self.declared {
                Some(declared) if declared != len => {
                    return self.bad("content-length values that differ")
                }
                // A copy: the request goes on with one line, as from HTTP/1.1.
                Some(_) => return,
                None => self.declared = Some(len),
            }
        }
        // RFC 9113 §8.2.3: a client may split `cookie` into one field per pair (they
        // compress better); they are one `; `-joined field before any non-HTTP/2 hop,
        // and plugins see one, as in Envoy.
        if name == header::COOKIE && !self.trailers {
            if let Some(first) = self.headers.get_mut(header::COOKIE) {
                let mut joined = Vec::with_capacity(first.len() + 2 + value.len());
                joined.extend_from_slice(first.as_bytes());
                joined.extend_from_slice(b"; ");
                joined.extend_from_slice(value.as_bytes());
                match HeaderValue::from_bytes(&joined) {
                    Ok(v) => *first = v,
                    Err(_) => self.bad("an invalid header value"),
                }
                return;
            }
        }
        self.headers.append(name, value);
    }

    fn finish(self) -> Decoded {
        if self.too_large {
            return Decoded::TooLarge;
        }
        if let Some(why) = self.malformed {
            return Decoded::Malformed(why);
        }
        let Some(method) = self.method else {
            return Decoded::Malformed("no :method");
        };
        let mut parts = http::uri::Parts::default();
        if method == Method::CONNECT {
            // RFC 9113 §8.5: only :authority.
            if self.scheme.is_some() || self.path.is_some() || self.authority.is_none() {
                return Decoded::Malformed("a CONNECT request needs :authority and only it");
            }
            parts.authority = self.authority;
        } else {
            let (Some(scheme), Some(path)) = (self.scheme, self.path) else {
                return Decoded::Malformed("no :scheme or :path");
            };
            if let Some(authority) = self.authority {
                parts.scheme = Some(scheme);
                parts.authority = Some(authority);
            }
            parts.path_and_query = Some(path);
        }
        let Ok(uri) = Uri::from_parts(parts) else {
            return Decoded::Malformed("an invalid request target");
        };
        let mut req = Request::new(());
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_2;
        *req.headers_mut() = self.headers;
        Decoded::Request(req, self.declared)
    }
}

/// Readies a response head for HTTP/2: connection-specific headers (RFC 9113
/// §8.2.2) are dropped — the router removed the upstream's, but a filter may add
/// some — and `date` and `content-length` are added when missing, as for HTTP/1.1.
/// One pass over the names finds all three; only what is there is removed (each
/// removal hashes and probes).
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

/// The payload of a PADDED frame without its pad length and padding; `None` when the
/// padding is longer than the frame (RFC 9113 §6.1).
fn unpad(payload: &[u8]) -> Option<&[u8]> {
    let (&pad, rest) = payload.split_first()?;
    rest.len().checked_sub(pad as usize).map(|len| &rest[..len])
}

fn frame_size(what: &str, head: Head) -> Error {
    conn_err(
        Reason::FRAME_SIZE_ERROR,
        format!(
            "{what} frame on stream {} has a length of {}",
            head.stream, head.len
        ),
    )
}

fn on_a_stream(what: &str, head: Head) -> Error {
    conn_err(
        Reason::PROTOCOL_ERROR,
        format!(
            "{what} frame on stream {}; it belongs to the connection",
            head.stream
        ),
    )
}

fn on_stream_zero(what: &str) -> Error {
    conn_err(
        Reason::PROTOCOL_ERROR,
        format!("{what} frame on stream 0; it belongs to a stream"),
    )
}

fn bad_padding(what: &str, head: Head) -> Error {
    conn_err(
        Reason::PROTOCOL_ERROR,
        format!(
            "{what} frame on stream {}: padding longer than the frame",
            head.stream
        ),
    )
}

/// The request body's side of a stream: what the connection received, for the
/// router to take.
#[derive(Default)]
struct Inbox {
    chunks: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
    end: End,
    reader: Option<Waker>,
    /// The reader is gone: what arrives is dropped, its credit returned at once.
    dropped: bool,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum End {
    #[default]
    Open,
    Done,
    Reset(Reason),
}

/// The stream ended before its request body did.
#[derive(Debug)]
pub struct StreamError(Reason);

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP/2 request body ended by a stream reset: {}", self.0)
    }
}

impl std::error::Error for StreamError {}

/// A request body as the client sends it: DATA frames, then trailers. Each chunk's
/// flow-control credit goes back as the router takes it.
pub struct RequestBody {
    inbox: Arc<Mutex<Inbox>>,
    shared: Arc<Shared>,
    stream: u32,
    hint: SizeHint,
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = StreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamError>>> {
        let this = self.get_mut();
        let mut inbox = this.inbox.lock();
        if let Some(chunk) = inbox.chunks.pop_front() {
            drop(inbox);
            this.shared
                .queue
                .lock()
                .credit
                .push((this.stream, chunk.len() as u32));
            this.shared.task.wake();
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        match inbox.end {
            End::Open => {
                match &mut inbox.reader {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    w => *w = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            End::Done => Poll::Ready(inbox.trailers.take().map(|t| Ok(Frame::trailers(t)))),
            End::Reset(reason) => Poll::Ready(Some(Err(StreamError(reason)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        let inbox = self.inbox.lock();
        inbox.end == End::Done && inbox.chunks.is_empty() && inbox.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        let mut inbox = self.inbox.lock();
        inbox.dropped = true;
        let unread: usize = inbox.chunks.iter().map(Bytes::len).sum();
        inbox.chunks.clear();
        inbox.trailers = None;
        drop(inbox);
        if unread > 0 {
            self.shared
                .queue
                .lock()
                .credit
                .push((self.stream, unread as u32));
            self.shared.task.wake();
        }
    }
}
