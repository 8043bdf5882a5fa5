//! Strait's own HTTP/1.1 client codec, for pooled upstream connections.
//!
//! hyper's client runs each connection in a task of its own and hands every request
//! to it over a channel: per request, a channel send, a wake of the connection's
//! task, a dispatcher pass, and a oneshot back with the response. The profile put
//! that hop and hyper's generic encoder and parser at a third of a proxied request.
//! Here the request's own task writes the head, streams the body and parses the
//! response straight from the socket; the response body is decoded as the downstream
//! codec pulls it, and its last byte gives the connection back to the pool. An idle
//! pooled connection is a socket and nothing else: no task, no waker, no buffer after
//! a second (`pool::park_idle`).
//!
//! What it does not do is left to hyper's client, which the pool keeps for it:
//! upgrades (WebSocket, `CONNECT`), and requests parsed by hyper's HTTP/1 server,
//! whose header case map (an extension only hyper can read) keeps the client's header
//! case on the way up.
//!
//! Framing follows RFC 9112 and hyper's client, so the two send the same bytes: the
//! request keeps a `content-length` or `transfer-encoding` it carries, an empty body
//! sends none, a body of known length gets `content-length`, any other body of a
//! method that has one is chunked. Responses: 1xx other than 101 are skipped; HEAD,
//! 204 and 304 have no body; `transfer-encoding` ending in `chunked` is chunked,
//! any other is read to the end of the connection; then `content-length` (differing
//! values are refused); else the body is read to the end of the connection.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body as _, Frame, SizeHint};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use crate::body::RequestBody;
use crate::pool::H1Conn;

/// The longest response head accepted: Envoy's `max_response_headers_kb` default.
const MAX_HEAD: usize = 60 * 1024;
/// Header lines per response head (hyper's limit).
const MAX_HEADERS: usize = 100;
/// Room reserved for a read when little is expected (a head, a chunk line).
const READ_SMALL: usize = 8 * 1024;
/// The most reserved for one read of a body of known length.
const READ_LARGE: usize = 64 * 1024;
/// Frames of the request body written in one `writev`.
const MAX_SLICES: usize = 16;

/// Why an exchange failed.
pub enum Failure {
    /// The connection failed before a byte of the response came back. The request is
    /// handed back when it can be sent again as it is: nothing of it was written, or
    /// (the keep-alive race) it has no body and the connection had served before.
    Reset(Option<Box<Request<RequestBody>>>),
    /// The connection failed after the response began.
    Broken,
    /// The upstream answered with something that is not HTTP/1.1.
    Protocol(&'static str),
    /// The request body failed (the downstream went away, or a filter answered).
    Body(Box<dyn std::error::Error + Send + Sync>),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Reset(_) | Failure::Broken => f.write_str("connection termination"),
            Failure::Protocol(what) => write!(f, "protocol error: {what}"),
            Failure::Body(e) => write!(f, "request body: {e}"),
        }
    }
}

impl std::fmt::Debug for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Failure::Body(e) => Some(&**e),
            _ => None,
        }
    }
}

/// How a message body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    /// Read until the upstream closes (responses only).
    Close,
}

/// The request body still to be written, and the bytes queued for the socket.
struct Writer {
    body: RequestBody,
    framing: Framing,
    /// Queued output, written in order (the head, chunk lines, data).
    out: VecDeque<Bytes>,
    /// The body's end (and the chunked terminator) is queued.
    ended: bool,
    /// A frame was taken from the body: the request can no longer be sent again.
    took_body: bool,
    /// A byte of the request went out.
    wrote_any: bool,
}

impl Writer {
    fn done(&self) -> bool {
        self.ended && self.out.is_empty()
    }

    /// Writes what is queued and pulls the body until both are done (`Ready(Ok)`), the
    /// socket or the body has to wait (`Pending`), or either fails.
    fn poll(&mut self, io: &mut TcpStream, cx: &mut Context<'_>) -> Poll<Result<(), Failure>> {
        loop {
            if !self.out.is_empty() {
                let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                let n = self.out.len().min(MAX_SLICES);
                for (slice, buf) in slices.iter_mut().zip(self.out.iter()) {
                    *slice = IoSlice::new(buf);
                }
                let written = match Pin::new(&mut *io).poll_write_vectored(cx, &slices[..n]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(Failure::Broken)),
                    Poll::Ready(Ok(w)) => {
                        self.wrote_any = true;
                        w
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(Err(Failure::Broken)),
                    Poll::Pending => return Poll::Pending,
                };
                self.consume(written);
                continue;
            }
            if self.ended {
                return Poll::Ready(Ok(()));
            }
            let frame = ready!(Pin::new(&mut self.body).poll_frame(cx));
            self.took_body = true;
            match frame {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.queue_data(data),
                    Err(frame) => {
                        if let (Framing::Chunked, Ok(trailers)) =
                            (self.framing, frame.into_trailers())
                        {
                            let mut end = Vec::with_capacity(64);
                            end.extend_from_slice(b"0\r\n");
                            for (name, value) in &trailers {
                                write_field(&mut end, name.as_str().as_bytes(), value.as_bytes());
                            }
                            end.extend_from_slice(b"\r\n");
                            self.out.push_back(Bytes::from(end));
                            self.ended = true;
                        }
                        // Trailers cannot go with a body of fixed length: dropped,
                        // as hyper does.
                    }
                },
                Some(Err(e)) => return Poll::Ready(Err(Failure::Body(e))),
                None => self.finish()?,
            }
        }
    }

    fn queue_data(&mut self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        match &mut self.framing {
            Framing::Length(left) => {
                // A body longer than its `content-length` (a filter rewrote it and
                // left the header): what the header announced goes out, the rest is
                // dropped, as hyper's encoder does and as the upstream reads anyway.
                let data = match usize::try_from(*left) {
                    Ok(limit) if limit < data.len() => data.slice(..limit),
                    _ => data,
                };
                *left -= data.len() as u64;
                self.out.push_back(data);
                if *left == 0 {
                    self.ended = true;
                }
            }
            Framing::Chunked => {
                let mut line = Vec::with_capacity(20);
                write_hex(&mut line, data.len());
                line.extend_from_slice(b"\r\n");
                self.out.push_back(Bytes::from(line));
                self.out.push_back(data);
                self.out.push_back(Bytes::from_static(b"\r\n"));
            }
            Framing::Close => unreachable!("requests are never close-delimited"),
        }
    }

    /// The body ended.
    fn finish(&mut self) -> Result<(), Failure> {
        match self.framing {
            Framing::Length(0) | Framing::Close => {}
            Framing::Length(_) => {
                return Err(Failure::Body(
                    "request body shorter than its content-length".into(),
                ))
            }
            Framing::Chunked => self.out.push_back(Bytes::from_static(b"0\r\n\r\n")),
        }
        self.ended = true;
        Ok(())
    }

    fn consume(&mut self, mut n: usize) {
        while n > 0 {
            let front = self.out.front_mut().expect("written bytes were queued");
            if n < front.len() {
                front.advance(n);
                return;
            }
            n -= front.len();
            self.out.pop_front();
        }
    }
}

/// Sends `req` on `conn` and reads the response head. `reused`: the connection has
/// served before (a failure before any response byte is then the keep-alive race).
pub(crate) async fn send(
    mut conn: Box<H1Conn>,
    req: Request<RequestBody>,
    reused: bool,
) -> Result<Response<ResponseBody>, Failure> {
    let head_only = req.method() == Method::HEAD;
    let idempotent = crate::pool::idempotent(req.method());
    let (head, framing) = encode_head(&req);
    let (parts, body) = req.into_parts();
    let mut out = VecDeque::with_capacity(4);
    out.push_back(Bytes::from(head));
    let mut writer = Writer {
        ended: matches!(framing, Framing::Length(0)),
        body,
        framing,
        out,
        took_body: false,
        wrote_any: false,
    };
    let mut read_any = false;
    let polled = std::future::poll_fn(|cx| {
        // The request goes out while the head is awaited: an upstream may answer
        // before it has read the whole body. Pending here waits on the socket or on
        // the body, whose wakers are registered.
        if let Poll::Ready(Err(e)) = writer.poll(&mut conn.stream, cx) {
            return Poll::Ready(Err(e));
        }
        loop {
            match parse_head(&mut conn.read, head_only) {
                Ok(Some(head)) => return Poll::Ready(Ok(head)),
                Ok(None) => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            if conn.read.len() >= MAX_HEAD {
                return Poll::Ready(Err(Failure::Protocol("response head too large")));
            }
            match ready!(poll_read(&mut conn, cx, READ_SMALL)) {
                Ok(0) | Err(_) => return Poll::Ready(Err(Failure::Broken)),
                Ok(_) => read_any = true,
            }
        }
    })
    .await;
    let parsed = match polled {
        Ok(parsed) => parsed,
        Err(Failure::Broken) if !read_any && reused && !writer.took_body => {
            // Nothing came back on a connection that had served before: most likely
            // the upstream closed it while it sat idle (the keep-alive race). The
            // request goes back to be sent on another connection if that is safe:
            // none of it was written, or it is idempotent and has no body.
            let again = !writer.wrote_any || (idempotent && writer.ended);
            let back = again.then(|| Box::new(Request::from_parts(parts, writer.body)));
            return Err(Failure::Reset(back));
        }
        Err(Failure::Broken) if !read_any => return Err(Failure::Reset(None)),
        Err(Failure::Broken) => return Err(Failure::Broken),
        Err(e) => return Err(e),
    };
    drop(parts);
    let Parsed {
        response,
        framing,
        keep_alive,
    } = parsed;
    let writer = (!writer.done()).then(|| Box::new(writer));
    let mut body = ResponseBody {
        conn: Some(conn),
        framing,
        chunk: ChunkState::Size,
        writer,
        keep_alive,
        ended: false,
    };
    if body.framing == Framing::Length(0) {
        body.end();
    }
    Ok(response.map(|()| body))
}

/// The request line and headers, and how the body is framed.
fn encode_head(req: &Request<RequestBody>) -> (Vec<u8>, Framing) {
    let headers = req.headers();
    let body = req.body();
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    let target = req.uri().path_and_query().map_or("/", |p| {
        if p.as_str().is_empty() {
            "/"
        } else {
            p.as_str()
        }
    });
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !headers.contains_key(header::HOST) {
        if let Some(authority) = req.uri().authority() {
            write_field(&mut out, b"host", authority.as_str().as_bytes());
        }
    }
    let chunked_te = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .next_back()
        .map(|v| is_chunked(v.as_bytes()));
    let length = content_length(headers);
    let (framing, skip_te, skip_cl, add) = if body.is_end_stream() {
        // An empty body: whatever length the request declares stands; no chunking.
        (Framing::Length(0), true, false, None)
    } else if let Some(chunked) = chunked_te {
        (
            Framing::Chunked,
            !chunked,
            true,
            (!chunked).then_some(Add::Chunked),
        )
    } else if let Some(Ok(len)) = length {
        (Framing::Length(len), false, false, None)
    } else if let Some(len) = body.size_hint().exact() {
        (Framing::Length(len), false, true, Some(Add::Length(len)))
    } else if matches!(*req.method(), Method::GET | Method::HEAD | Method::CONNECT) {
        (Framing::Length(0), false, false, None)
    } else {
        (Framing::Chunked, false, true, Some(Add::Chunked))
    };
    for (name, value) in headers {
        if (skip_te && name == header::TRANSFER_ENCODING)
            || (skip_cl && name == header::CONTENT_LENGTH)
        {
            continue;
        }
        write_field(&mut out, name.as_str().as_bytes(), value.as_bytes());
    }
    match add {
        Some(Add::Chunked) => write_field(&mut out, b"transfer-encoding", b"chunked"),
        Some(Add::Length(len)) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa(len, &mut [0u8; 20]));
            out.extend_from_slice(b"\r\n");
        }
        None => {}
    }
    out.extend_from_slice(b"\r\n");
    (out, framing)
}

enum Add {
    Chunked,
    Length(u64),
}

fn write_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

fn write_hex(out: &mut Vec<u8>, n: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (usize::BITS - n.leading_zeros()).div_ceil(4).max(1);
    for i in (0..digits).rev() {
        out.push(HEX[(n >> (i * 4)) & 0xf]);
    }
}

/// Whether a `transfer-encoding` value ends in `chunked`.
fn is_chunked(value: &[u8]) -> bool {
    value
        .rsplit(|&b| b == b',')
        .next()
        .is_some_and(|last| trim(last).eq_ignore_ascii_case(b"chunked"))
}

fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// The message's `content-length`: `None` without one, `Err` when its values are not
/// one number (several lines or comma-separated copies of one number are fine).
fn content_length(headers: &HeaderMap) -> Option<Result<u64, ()>> {
    let mut found: Option<u64> = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|&b| b == b',') {
            let part = trim(part);
            if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
                return Some(Err(()));
            }
            let n = part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            match found {
                Some(prev) if prev != n => return Some(Err(())),
                _ => found = Some(n),
            }
        }
    }
    found.map(Ok)
}

/// A parsed response head.
struct Parsed {
    response: Response<()>,
    framing: Framing,
    keep_alive: bool,
}

/// Parses a response head at the start of `read`, taking its bytes (and those of any
/// skipped 1xx response) out of it; `None` while it is incomplete.
fn parse_head(read: &mut BytesMut, head_only: bool) -> Result<Option<Parsed>, Failure> {
    loop {
        if read.is_empty() {
            return Ok(None);
        }
        // Where each header's name and value sit in `read`.
        let mut at = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut fields);
        let len = match parsed.parse(read) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(Failure::Protocol("too many response headers"))
            }
            Err(_) => return Err(Failure::Protocol("malformed response head")),
        };
        let status = parsed.code.unwrap_or(0);
        let version = match parsed.version {
            Some(0) => Version::HTTP_10,
            _ => Version::HTTP_11,
        };
        let reason = parsed
            .reason
            .map(|r| (r.as_ptr() as usize - read.as_ptr() as usize, r.len()));
        let base = read.as_ptr() as usize;
        let count = parsed.headers.len();
        for (slot, field) in at.iter_mut().zip(parsed.headers.iter()) {
            *slot = (
                (field.name.as_ptr() as usize - base) as u32,
                field.name.len() as u32,
                (field.value.as_ptr() as usize - base) as u32,
                field.value.len() as u32,
            );
        }
        let head = read.split_to(len).freeze();
        if (100..200).contains(&status) && status != 101 {
            // An informational answer (100 Continue, 103 Early Hints): not the response.
            continue;
        }
        if status == 101 {
            return Err(Failure::Protocol(
                "101 Switching Protocols without an upgrade",
            ));
        }
        let status = StatusCode::from_u16(status)
            .map_err(|_| Failure::Protocol("invalid response status"))?;
        let mut headers = HeaderMap::with_capacity(count);
        let mut keep_alive = version == Version::HTTP_11;
        let mut close = false;
        for &(name_at, name_len, value_at, value_len) in &at[..count] {
            let name = &head[name_at as usize..(name_at + name_len) as usize];
            let name = HeaderName::from_bytes(name)
                .map_err(|_| Failure::Protocol("invalid response header name"))?;
            let value = head.slice(value_at as usize..(value_at + value_len) as usize);
            // Shares the head's bytes: no copy.
            let value = HeaderValue::from_maybe_shared(value)
                .map_err(|_| Failure::Protocol("invalid response header value"))?;
            if name == header::CONNECTION {
                for token in value.as_bytes().split(|&b| b == b',') {
                    let token = trim(token);
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        keep_alive = true;
                    }
                }
            }
            headers.append(name, value);
        }
        let framing = if head_only || matches!(status.as_u16(), 204 | 304) {
            Framing::Length(0)
        } else if let Some(te) = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .next_back()
        {
            if version == Version::HTTP_10 {
                return Err(Failure::Protocol(
                    "transfer-encoding in an HTTP/1.0 response",
                ));
            }
            match is_chunked(te.as_bytes()) {
                true => Framing::Chunked,
                false => Framing::Close,
            }
        } else {
            match content_length(&headers) {
                Some(Ok(len)) => Framing::Length(len),
                Some(Err(())) => return Err(Failure::Protocol("invalid content-length")),
                None => Framing::Close,
            }
        };
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = version;
        if let Some((at, len)) = reason {
            let reason = &head[at..at + len];
            if status.canonical_reason().map(str::as_bytes) != Some(reason) {
                if let Ok(reason) = hyper::ext::ReasonPhrase::try_from(head.slice(at..at + len)) {
                    response.extensions_mut().insert(reason);
                }
            }
        }
        *response.headers_mut() = headers;
        return Ok(Some(Parsed {
            response,
            framing,
            keep_alive: keep_alive && !close && framing != Framing::Close,
        }));
    }
}

/// Reads into the connection's buffer, reserving `want` bytes of room; `Ok(0)` is the
/// end of the stream. Through tokio's `poll_read`, which clears the socket's readiness
/// after a short read: the next wait needs no syscall to find the socket empty.
fn poll_read(conn: &mut H1Conn, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
    let read = &mut conn.read;
    if read.capacity() - read.len() < want / 2 {
        read.reserve(want);
    }
    tokio_util::io::poll_read_buf(Pin::new(&mut conn.stream), cx, read)
}

/// Where the decoder is in a chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
}

/// A response body read from the upstream connection as the downstream asks for it.
/// Its end gives the connection back to the pool (when the exchange left it
/// reusable); dropped before its end, it closes the connection.
pub struct ResponseBody {
    conn: Option<Box<H1Conn>>,
    framing: Framing,
    chunk: ChunkState,
    /// The request body, if the upstream answered before it was all written (rare:
    /// boxed).
    writer: Option<Box<Writer>>,
    keep_alive: bool,
    ended: bool,
}

impl ResponseBody {
    /// The body ended: the connection goes back to the pool if it can serve again.
    fn end(&mut self) {
        self.ended = true;
        let Some(conn) = self.conn.take() else {
            return;
        };
        let written = self.writer.as_ref().is_none_or(|w| w.done());
        if self.keep_alive && written && conn.read.is_empty() {
            conn.release();
        }
    }

    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Failure>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        // The request body, if still going, keeps going while the response streams.
        if let (Some(writer), Some(conn)) = (&mut self.writer, &mut self.conn) {
            match writer.poll(&mut conn.stream, cx) {
                Poll::Ready(Ok(())) => self.writer = None,
                Poll::Ready(Err(_)) => {
                    // The upstream stopped reading the request it answered: the rest of
                    // the response may still come, but the connection cannot serve again.
                    self.keep_alive = false;
                    self.writer = None;
                }
                Poll::Pending => {}
            }
        }
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let want = match self.framing {
                Framing::Length(0) => {
                    self.end();
                    return Poll::Ready(None);
                }
                Framing::Length(left) => {
                    if !conn.read.is_empty() {
                        let n = (conn.read.len() as u64).min(left) as usize;
                        let data = conn.read.split_to(n).freeze();
                        self.framing = Framing::Length(left - n as u64);
                        if left == n as u64 {
                            self.end();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .clamp(READ_SMALL, READ_LARGE)
                }
                Framing::Close => {
                    if !conn.read.is_empty() {
                        let data = conn.read.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    READ_LARGE
                }
                Framing::Chunked => match decode_chunk(&mut conn.read, &mut self.chunk) {
                    Decoded::Data(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Decoded::Trailers(trailers) => {
                        // The last frame: the connection is free now (a codec may drop
                        // the body once it has the trailers, without asking for more).
                        self.end();
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                    Decoded::End => {
                        self.end();
                        return Poll::Ready(None);
                    }
                    Decoded::Error(what) => {
                        self.ended = true;
                        self.conn = None;
                        return Poll::Ready(Some(Err(Failure::Protocol(what))));
                    }
                    Decoded::More if conn.read.len() > MAX_HEAD => {
                        self.ended = true;
                        self.conn = None;
                        return Poll::Ready(Some(Err(Failure::Protocol("chunk line too long"))));
                    }
                    Decoded::More => READ_SMALL,
                },
            };
            match ready!(poll_read(conn, cx, want)) {
                Ok(0) if self.framing == Framing::Close => {
                    // The upstream closed: the end of a close-delimited body.
                    self.ended = true;
                    self.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) | Err(_) => {
                    self.ended = true;
                    self.conn = None;
                    return Poll::Ready(Some(Err(Failure::Broken)));
                }
                Ok(_) => {}
            }
        }
    }
}

/// Decodes what `read` holds of a chunked body, from `state` on.
fn decode_chunk(read: &mut BytesMut, state: &mut ChunkState) -> Decoded {
    loop {
        match *state {
            ChunkState::Size => {
                let Some(eol) = memchr::memchr(b'\n', read) else {
                    return Decoded::More;
                };
                let line = &read[..eol];
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                // Chunk extensions (`;name=value`) are ignored.
                let size = line.split(|&b| b == b';').next().map_or(&[][..], trim);
                let Some(size) = parse_hex(size) else {
                    return Decoded::Error("invalid chunk size");
                };
                read.advance(eol + 1);
                *state = match size {
                    0 => ChunkState::Trailers,
                    n => ChunkState::Data(n),
                };
            }
            ChunkState::Data(left) => {
                if read.is_empty() {
                    return Decoded::More;
                }
                let n = (read.len() as u64).min(left) as usize;
                let data = read.split_to(n).freeze();
                *state = match left - n as u64 {
                    0 => ChunkState::DataEnd,
                    left => ChunkState::Data(left),
                };
                return Decoded::Data(data);
            }
            ChunkState::DataEnd => match read.get(..2) {
                Some(b"\r\n") => {
                    read.advance(2);
                    *state = ChunkState::Size;
                }
                None if read.first().is_none_or(|&b| b == b'\r') => return Decoded::More,
                _ => return Decoded::Error("chunk data not followed by CRLF"),
            },
            ChunkState::Trailers => {
                let Some(end) = find_trailers_end(read) else {
                    return Decoded::More;
                };
                let block = read.split_to(end);
                return match parse_trailers(&block) {
                    Some(t) if !t.is_empty() => Decoded::Trailers(t),
                    Some(_) => Decoded::End,
                    None => Decoded::Error("malformed trailer"),
                };
            }
        }
    }
}

enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
    More,
    Error(&'static str),
}

/// The end of a trailer section (after its empty line) in `buf`, if complete.
fn find_trailers_end(buf: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let eol = at + memchr::memchr(b'\n', &buf[at..])?;
        let line = &buf[at..eol];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        at = eol + 1;
        if line.is_empty() {
            return Some(at);
        }
    }
}

/// The trailer fields of a complete trailer section; `None` if one is malformed.
fn parse_trailers(block: &[u8]) -> Option<HeaderMap> {
    let mut trailers = HeaderMap::new();
    for line in block.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let colon = memchr::memchr(b':', line)?;
        let name = HeaderName::from_bytes(&line[..colon]).ok()?;
        let value = HeaderValue::from_bytes(trim(&line[colon + 1..])).ok()?;
        trailers.append(name, value);
    }
    Some(trailers)
}

fn parse_hex(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 15 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            b'A'..=b'F' => d - b'A' + 10,
            _ => return None,
        };
        Some(n << 4 | u64::from(v))
    })
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Failure;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Failure>>> {
        self.get_mut().poll_body(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            _ if self.ended => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head_of(method: Method, headers: &[(&str, &str)], body: RequestBody) -> (String, Framing) {
        let mut req = Request::builder().method(method).uri("/p?q=1");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let (head, framing) = encode_head(&req.body(body).expect("request"));
        (String::from_utf8(head).expect("ascii head"), framing)
    }

    #[test]
    fn request_framing_follows_hyper() {
        // No body: nothing added, a declared length kept.
        let (head, framing) = head_of(Method::GET, &[("host", "h")], RequestBody::empty());
        assert_eq!(head, "GET /p?q=1 HTTP/1.1\r\nhost: h\r\n\r\n");
        assert_eq!(framing, Framing::Length(0));
        let (head, _) = head_of(
            Method::POST,
            &[("content-length", "0")],
            RequestBody::empty(),
        );
        assert!(head.contains("content-length: 0\r\n"), "{head}");
        // A body of known size gets its length.
        let body = RequestBody::full(Bytes::from_static(b"12345"), None);
        let (head, framing) = head_of(Method::POST, &[], body);
        assert!(head.ends_with("content-length: 5\r\n\r\n"), "{head}");
        assert_eq!(framing, Framing::Length(5));
        // Unknown size: chunked, and a stale length dropped.
        let body = RequestBody::full(Bytes::from_static(b"x"), Some(HeaderMap::new()));
        let (head, framing) = head_of(Method::PUT, &[], body);
        assert!(
            head.ends_with("transfer-encoding: chunked\r\n\r\n"),
            "{head}"
        );
        assert_eq!(framing, Framing::Chunked);
        // A declared length stands over the body's own size.
        let body = RequestBody::full(Bytes::from_static(b"abcdef"), None);
        let (head, framing) = head_of(Method::POST, &[("content-length", "3")], body);
        assert_eq!(head.matches("content-length").count(), 1, "{head}");
        assert_eq!(framing, Framing::Length(3));
    }

    #[test]
    fn content_length_values() {
        let mut h = HeaderMap::new();
        assert_eq!(content_length(&h), None);
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("12, 12"));
        assert_eq!(content_length(&h), Some(Ok(12)));
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("13"));
        assert_eq!(content_length(&h), Some(Err(())));
        let mut h = HeaderMap::new();
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("+1"));
        assert_eq!(content_length(&h), Some(Err(())));
    }

    #[test]
    fn chunked_bodies_decode_at_any_split() {
        let wire: &[u8] =
            b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-T: 1\r\n\r\n";
        for split in 0..=wire.len() {
            let mut read = BytesMut::new();
            let mut state = ChunkState::Size;
            let (mut data, mut trailers, mut ended) = (Vec::new(), None, false);
            for part in [&wire[..split], &wire[split..]] {
                read.extend_from_slice(part);
                loop {
                    match decode_chunk(&mut read, &mut state) {
                        Decoded::Data(d) => data.extend_from_slice(&d),
                        Decoded::Trailers(t) => {
                            trailers = Some(t);
                            ended = true;
                            break;
                        }
                        Decoded::End => {
                            ended = true;
                            break;
                        }
                        Decoded::More => break,
                        Decoded::Error(e) => panic!("split {split}: {e}"),
                    }
                }
            }
            assert!(ended, "split {split}");
            assert_eq!(data, b"helloabcdefghijklmnopqrstuvwxyz", "split {split}");
            let t = trailers.expect("trailers");
            assert_eq!(t.get("x-t").map(HeaderValue::as_bytes), Some(&b"1"[..]));
            assert!(read.is_empty(), "split {split}");
        }
        let mut read = BytesMut::from(&b"zz\r\n"[..]);
        assert!(matches!(
            decode_chunk(&mut read, &mut ChunkState::Size),
            Decoded::Error(_)
        ));
    }

    #[test]
    fn hex_sizes() {
        for n in [0usize, 1, 15, 16, 255, 4096, 65535, 1 << 40] {
            let mut out = Vec::new();
            write_hex(&mut out, n);
            assert_eq!(out, format!("{n:x}").into_bytes());
            assert_eq!(parse_hex(&out), Some(n as u64));
        }
    }
}
