//! HTTP/1.1 pieces both of Strait's codecs use (the upstream client, `h1_client`, and
//! the downstream server, `h1_server`): body framing and its writer, the body
//! decoder, header case, and the small encoders.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite};

/// Header lines per head (hyper's limit).
pub(crate) const MAX_HEADERS: usize = 100;
/// Room reserved for a read when little is expected (a head, a chunk line).
pub(crate) const READ_SMALL: usize = 8 * 1024;
/// The most reserved for one read of a body of known length.
pub(crate) const READ_LARGE: usize = 64 * 1024;
/// Buffers written in one `writev`.
const MAX_SLICES: usize = 16;
/// Body pieces up to this size are copied behind the head (or the chunk line before
/// them) instead of queued as buffers of their own: a small message then goes out in
/// one `send`, as HAProxy and NGINX write it, rather than a `writev` of two or three
/// slices (the vectored path costs the kernel ~0.3 µs more per message, measured with
/// `perf record`), and the bytes it copies are fewer than a queue entry costs.
const COALESCE: usize = 2 * 1024;
/// Body bytes a writer takes ahead of the socket.
const MAX_QUEUED: usize = 64 * 1024;
/// Bytes one poll of a writer sends before it yields: a body that both ends keep
/// ready would otherwise hold the task (the client codec reads the response head
/// only between polls; an upstream's early answer would wait for the whole upload).
const WRITE_BUDGET: usize = 256 * 1024;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How a message body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    Length(u64),
    Chunked,
    /// Until the connection closes (responses only).
    Close,
}

/// Why writing a message failed.
pub(crate) enum WriteError {
    /// The socket failed or closed.
    Io,
    /// The body being written failed.
    Body(BoxError),
}

/// A message body still to be written, and the bytes queued for the socket.
pub(crate) struct Writer<B> {
    pub(crate) body: B,
    pub(crate) framing: Framing,
    /// Queued output, written in order (the head, chunk lines, data) before `tail`.
    out: VecDeque<Bytes>,
    /// The newest queued output, small pieces copied together (the head, chunk
    /// lines, small data); `tail[tail_sent..]` is still to be written.
    tail: Vec<u8>,
    tail_sent: usize,
    /// Bytes in `out` and `tail`.
    queued: usize,
    /// The body's end (and the chunked terminator) is queued.
    pub(crate) ended: bool,
    /// A frame was taken from the body.
    pub(crate) took_body: bool,
    /// A byte went out.
    pub(crate) wrote_any: bool,
    /// Trailer names that may be sent (those the head's `trailer` announced), `None`
    /// for any.
    pub(crate) trailers: Option<Vec<HeaderName>>,
    /// The body failed: what is queued still goes out (the head and the data before
    /// the failure, as Envoy and NGINX send them), then the error is returned. The
    /// message stays incomplete (no last chunk, or fewer bytes than its length), so
    /// the peer knows it was cut short.
    failed: Option<BoxError>,
}

impl<B> Writer<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    /// A writer for `head`, then `body` framed as `framing`.
    pub(crate) fn new(head: Vec<u8>, body: B, framing: Framing) -> Writer<B> {
        Writer {
            body,
            framing,
            out: VecDeque::new(),
            queued: head.len(),
            tail: head,
            tail_sent: 0,
            ended: matches!(framing, Framing::Length(0)),
            took_body: false,
            wrote_any: false,
            trailers: None,
            failed: None,
        }
    }

    pub(crate) fn done(&self) -> bool {
        self.ended && self.queued == 0
    }

    /// Writes what is queued and pulls the body until both are done (`Ready(Ok)`), the
    /// socket or the body has to wait (`Pending`), or either fails. Frames the body
    /// has ready are gathered into one `writev`. After [`WRITE_BUDGET`] bytes it
    /// yields (`Pending`, already woken).
    pub(crate) fn poll<IO: AsyncWrite + Unpin>(
        &mut self,
        io: &mut IO,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), WriteError>> {
        let mut budget = WRITE_BUDGET;
        loop {
            // Gather what the body has ready before writing, up to a writev's worth
            // (and at most `MAX_QUEUED` bytes held for a slow socket).
            while !self.ended
                && self.failed.is_none()
                && self.out.len() < MAX_SLICES - 3
                && self.queued < MAX_QUEUED
            {
                let Poll::Ready(frame) = Pin::new(&mut self.body).poll_frame(cx) else {
                    break;
                };
                self.took_body = true;
                match frame {
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => self.queue_data(data),
                        Err(frame) => {
                            if let Ok(trailers) = frame.into_trailers() {
                                self.queue_trailers(&trailers);
                            }
                        }
                    },
                    Some(Err(e)) => self.failed = Some(e.into()),
                    None => self.finish().map_err(WriteError::Body)?,
                }
            }
            if self.queued == 0 {
                if let Some(e) = self.failed.take() {
                    return Poll::Ready(Err(WriteError::Body(e)));
                }
                return match self.ended {
                    true => Poll::Ready(Ok(())),
                    // The body has nothing yet; its waker is registered.
                    false => Poll::Pending,
                };
            }
            let tail = &self.tail[self.tail_sent..];
            let polled = if self.out.is_empty() {
                // One buffer: `send`, which costs the kernel less than `writev`.
                Pin::new(&mut *io).poll_write(cx, tail)
            } else {
                let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                let mut n = self.out.len().min(MAX_SLICES);
                for (slice, buf) in slices.iter_mut().zip(self.out.iter()) {
                    *slice = IoSlice::new(buf);
                }
                // The tail follows only when all of `out` goes in this write.
                if n < MAX_SLICES && !tail.is_empty() {
                    slices[n] = IoSlice::new(tail);
                    n += 1;
                }
                Pin::new(&mut *io).poll_write_vectored(cx, &slices[..n])
            };
            match ready!(polled) {
                Ok(0) | Err(_) => return Poll::Ready(Err(WriteError::Io)),
                Ok(written) => {
                    self.wrote_any = true;
                    self.consume(written);
                    budget = budget.saturating_sub(written);
                    if budget == 0 && !self.done() {
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                }
            }
        }
    }

    fn queue_data(&mut self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        match self.framing {
            Framing::Length(left) => {
                // A body longer than its `content-length` (a filter rewrote it and
                // left the header): what the header announced goes out, the rest is
                // dropped, as hyper's encoder does and as the peer reads anyway.
                let data = match usize::try_from(left) {
                    Ok(limit) if limit < data.len() => data.slice(..limit),
                    _ => data,
                };
                let left = left - data.len() as u64;
                self.framing = Framing::Length(left);
                self.push(data);
                if left == 0 {
                    self.ended = true;
                }
            }
            Framing::Chunked => {
                self.push_with(|tail| {
                    write_hex(tail, data.len());
                    tail.extend_from_slice(b"\r\n");
                });
                self.push(data);
                self.push_slice(b"\r\n");
            }
            Framing::Close => self.push(data),
        }
    }

    /// Trailers end a chunked body; a body of another framing cannot carry them and
    /// ends without (as hyper does).
    fn queue_trailers(&mut self, trailers: &HeaderMap) {
        if self.framing != Framing::Chunked {
            return;
        }
        // Written in place behind what is queued (disjoint borrows of the tail and
        // the allowed names).
        let before = self.tail.len();
        let end = &mut self.tail;
        end.extend_from_slice(b"0\r\n");
        for (name, value) in trailers {
            if self
                .trailers
                .as_ref()
                .is_none_or(|allowed| allowed.contains(name))
            {
                write_field(end, name.as_str().as_bytes(), value.as_bytes());
            }
        }
        end.extend_from_slice(b"\r\n");
        self.queued += self.tail.len() - before;
        self.ended = true;
    }

    /// The body ended.
    fn finish(&mut self) -> Result<(), BoxError> {
        match self.framing {
            Framing::Length(0) | Framing::Close => {}
            Framing::Length(_) => return Err("body shorter than its content-length".into()),
            Framing::Chunked => self.push_slice(b"0\r\n\r\n"),
        }
        self.ended = true;
        Ok(())
    }

    /// Queues `bytes`: copied into the tail when small, else as a buffer of its own
    /// (after the tail, which then joins `out`).
    fn push(&mut self, bytes: Bytes) {
        if bytes.len() <= COALESCE {
            return self.push_slice(&bytes);
        }
        self.seal_tail();
        self.queued += bytes.len();
        self.out.push_back(bytes);
    }

    fn push_slice(&mut self, bytes: &[u8]) {
        self.push_with(|tail| tail.extend_from_slice(bytes));
    }

    /// Queues what `write` appends to the tail (chunk lines, trailers: written in
    /// place, no buffer of their own).
    fn push_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        let before = self.tail.len();
        write(&mut self.tail);
        self.queued += self.tail.len() - before;
    }

    /// Moves the tail's unwritten bytes to the end of `out`, so what is queued next
    /// goes after them.
    fn seal_tail(&mut self) {
        if self.tail_sent < self.tail.len() {
            let mut tail = Bytes::from(std::mem::take(&mut self.tail));
            tail.advance(self.tail_sent);
            self.out.push_back(tail);
        } else {
            self.tail.clear();
        }
        self.tail_sent = 0;
    }

    fn consume(&mut self, mut n: usize) {
        self.queued -= n;
        while n > 0 {
            let Some(front) = self.out.front_mut() else {
                // The rest was the tail's.
                self.tail_sent += n;
                break;
            };
            if n < front.len() {
                front.advance(n);
                return;
            }
            n -= front.len();
            self.out.pop_front();
        }
        if self.tail_sent == self.tail.len() {
            self.tail.clear();
            self.tail_sent = 0;
        }
    }
}

/// What a body decoder has next.
pub(crate) enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    /// The body ended.
    End,
    /// The connection closed or failed before the body's end.
    Failed(&'static str),
    /// The bytes are not a body of the framing (a bad chunk line).
    Malformed(&'static str),
}

/// Reads a message body of its framing from a connection's buffer and socket.
pub(crate) struct Decoder {
    framing: Framing,
    chunk: ChunkState,
    done: bool,
}

impl Decoder {
    pub(crate) fn new(framing: Framing) -> Decoder {
        Decoder {
            framing,
            chunk: ChunkState::Size,
            done: framing == Framing::Length(0),
        }
    }

    /// The whole body has been read.
    pub(crate) fn done(&self) -> bool {
        self.done
    }

    /// Bytes still owed, when the framing says.
    pub(crate) fn remaining(&self) -> Option<u64> {
        match self.framing {
            _ if self.done => Some(0),
            Framing::Length(n) => Some(n),
            _ => None,
        }
    }

    /// The next piece of the body: from `read` while it holds any, else read from
    /// `io` into it. After the last data of a body of known length, `done()`.
    pub(crate) fn poll_decode<IO: AsyncRead + Unpin>(
        &mut self,
        read: &mut BytesMut,
        io: &mut IO,
        cx: &mut Context<'_>,
    ) -> Poll<Decoded> {
        loop {
            if self.done {
                return Poll::Ready(Decoded::End);
            }
            let want = match self.framing {
                Framing::Length(left) => {
                    if !read.is_empty() {
                        let n = (read.len() as u64).min(left) as usize;
                        let data = read.split_to(n).freeze();
                        self.framing = Framing::Length(left - n as u64);
                        self.done = left == n as u64;
                        return Poll::Ready(Decoded::Data(data));
                    }
                    usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .clamp(READ_SMALL, READ_LARGE)
                }
                Framing::Close => {
                    if !read.is_empty() {
                        return Poll::Ready(Decoded::Data(read.split().freeze()));
                    }
                    READ_LARGE
                }
                Framing::Chunked => match decode_chunk(read, &mut self.chunk) {
                    Chunk::Data(data) => return Poll::Ready(Decoded::Data(data)),
                    Chunk::Trailers(trailers) => {
                        self.done = true;
                        return Poll::Ready(Decoded::Trailers(trailers));
                    }
                    Chunk::End => {
                        self.done = true;
                        return Poll::Ready(Decoded::End);
                    }
                    Chunk::Error(what) => return Poll::Ready(Decoded::Malformed(what)),
                    Chunk::More if read.len() > 64 * 1024 => {
                        return Poll::Ready(Decoded::Malformed("chunk line too long"))
                    }
                    Chunk::More => READ_SMALL,
                },
            };
            match ready!(poll_read(io, read, cx, want)) {
                Ok(0) if self.framing == Framing::Close => {
                    // The peer closed: the end of a close-delimited body.
                    self.done = true;
                    return Poll::Ready(Decoded::End);
                }
                Ok(0) => return Poll::Ready(Decoded::Failed("connection closed mid-body")),
                Err(_) => return Poll::Ready(Decoded::Failed("connection failed mid-body")),
                Ok(_) => {}
            }
        }
    }
}

/// Reads into `read`, reserving `want` bytes of room; `Ok(0)` is the end of the
/// stream. Through the socket's `poll_read`, which clears tokio's readiness after a
/// short read: the next wait needs no syscall to find the socket empty.
pub(crate) fn poll_read<IO: AsyncRead + Unpin>(
    io: &mut IO,
    read: &mut BytesMut,
    cx: &mut Context<'_>,
    want: usize,
) -> Poll<io::Result<usize>> {
    if read.capacity() - read.len() < want / 2 {
        read.reserve(want);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, read)
}

/// The header names of an HTTP/1.1 message as they came on the wire, for those not
/// all lowercase: the other codec writes them back so (H1 → H1 keeps header case,
/// which `HeaderMap` lowercases). A request carries it beside its head
/// (`pool::Upstream`), a response in its body (`h1_client::ResponseBody`): not in
/// `http::Extensions`, whose first entry costs three allocations.
#[derive(Clone)]
pub struct HeaderCase {
    /// The head the names sit in (shared with its header values: no copy).
    head: Bytes,
    /// Where each cased name sits in `head`.
    names: Vec<(u32, u16)>,
}

impl HeaderCase {
    /// A record over `head`; `add` each name that has an uppercase letter.
    pub(crate) fn new(head: Bytes) -> HeaderCase {
        HeaderCase {
            head,
            names: Vec::new(),
        }
    }

    /// Notes the cased name at `at` (`len` bytes); `expected` is how many names the
    /// head has, for the first allocation.
    pub(crate) fn add(&mut self, at: usize, len: usize, expected: usize) {
        if let (Ok(at), Ok(len)) = (u32::try_from(at), u16::try_from(len)) {
            if self.names.capacity() == 0 {
                self.names.reserve_exact(expected);
            }
            self.names.push((at, len));
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// `name` as it came, if it came with uppercase letters; looked for from the
    /// `next` recorded name on (headers are written mostly in the order they came),
    /// which moves past the one found.
    fn find(&self, name: &HeaderName, next: &mut usize) -> Option<&[u8]> {
        let want = name.as_str().as_bytes();
        let count = self.names.len();
        let start = (*next).min(count);
        for i in (start..count).chain(0..start) {
            let (at, len) = self.names[i];
            if len as usize != want.len() {
                continue;
            }
            let raw = &self.head[at as usize..at as usize + len as usize];
            if lowercases_to(raw, want) {
                *next = i + 1;
                return Some(raw);
            }
        }
        None
    }

    #[cfg(test)]
    fn get(&self, name: &HeaderName) -> Option<&[u8]> {
        self.find(name, &mut 0)
    }
}

/// Whether `raw` lowercased is `lower` (all lowercase), for ASCII header names:
/// eight bytes at a time where `eq_ignore_ascii_case` lowercases both sides a byte at
/// a time (~500 instructions a request, writing ten cased names).
fn lowercases_to(raw: &[u8], lower: &[u8]) -> bool {
    if raw.len() != lower.len() {
        return false;
    }
    let mut raw_words = raw.chunks_exact(8);
    let mut lower_words = lower.chunks_exact(8);
    for (r, l) in (&mut raw_words).zip(&mut lower_words) {
        let r = u64::from_le_bytes(r.try_into().expect("eight bytes"));
        let l = u64::from_le_bytes(l.try_into().expect("eight bytes"));
        if ascii_lowercase8(r) != l {
            return false;
        }
    }
    let rest = raw_words.remainder().iter().zip(lower_words.remainder());
    rest.into_iter().all(|(r, l)| r.to_ascii_lowercase() == *l)
}

/// Each of the eight bytes of `x` lowercased if it is an ASCII capital; others
/// (bytes with the high bit too) unchanged.
fn ascii_lowercase8(x: u64) -> u64 {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // Each byte's low seven bits: adding to them carries into no other byte.
    let low = x & !HIGH;
    // The high bit of a byte is set where it is >= b'A' (0x41 + 0x3f = 0x80), and
    // where it is > b'Z' (0x5b + 0x25 = 0x80).
    let from_a = low + 0x3f3f_3f3f_3f3f_3f3f;
    let past_z = low + 0x2525_2525_2525_2525;
    let capital = from_a & !past_z & !x & HIGH;
    x | (capital >> 2)
}

/// Writes header lines with the names as a [`HeaderCase`] recorded them.
pub(crate) struct CasedWriter<'a> {
    case: Option<&'a HeaderCase>,
    next: usize,
}

impl<'a> CasedWriter<'a> {
    pub(crate) fn new(case: Option<&'a HeaderCase>) -> CasedWriter<'a> {
        CasedWriter { case, next: 0 }
    }

    /// Writes `name: value\r\n`.
    pub(crate) fn write(&mut self, out: &mut Vec<u8>, name: &HeaderName, value: &[u8]) {
        let raw = match self.case {
            Some(case) => case.find(name, &mut self.next),
            None => None,
        };
        write_field(out, raw.unwrap_or(name.as_str().as_bytes()), value);
    }
}

/// Where a parsed header's name and value sit in its head: name offset and length,
/// value offset and length.
pub(crate) type FieldAt = (u32, u32, u32, u32);

thread_local! {
    /// The worker's list for [`field_offsets`], reused head after head: a fresh array
    /// for the most lines a head may have was 1.6 KB to zero per parse (~100
    /// instructions). One per worker, not per connection: a list in each
    /// connection's name cache (24 bytes more in its codec state) raised `perf/run`'s
    /// idle-5k from ~860 to ~1,150 bytes per idle connection, three runs each way
    /// (not traced further; allocator size classes are the likely cause). A parse
    /// never awaits, so one head at a time uses it.
    static OFFSETS: std::cell::Cell<Vec<FieldAt>> = const { std::cell::Cell::new(Vec::new()) };
}

/// The worker's offsets list, for one parse; [`give_offsets`] returns it.
pub(crate) fn take_offsets() -> Vec<FieldAt> {
    OFFSETS.take()
}

pub(crate) fn give_offsets(at: Vec<FieldAt>) {
    OFFSETS.set(at);
}

/// Records where each of `fields` (slices httparse handed out of `head`) sits in it,
/// so the head can be frozen into shared bytes and sliced.
pub(crate) fn field_offsets(head: &[u8], fields: &[httparse::Header<'_>], at: &mut Vec<FieldAt>) {
    let base = head.as_ptr() as usize;
    at.clear();
    at.extend(fields.iter().map(|field| {
        (
            (field.name.as_ptr() as usize - base) as u32,
            field.name.len() as u32,
            (field.value.as_ptr() as usize - base) as u32,
            field.value.len() as u32,
        )
    }));
}

/// The header names of the last head parsed on a connection, in order. A peer sends
/// the same names in the same order head after head: comparing the bytes costs a
/// fraction of parsing a name (lowercasing it, looking it up among the standard
/// ones). Bounded, so a peer cannot make it grow.
#[derive(Default)]
pub(crate) struct NameCache {
    /// The names' bytes as they came, one after another.
    raw: Vec<u8>,
    /// Each name, and where its bytes end in `raw`.
    names: Vec<(u16, HeaderName)>,
}

thread_local! {
    /// The names of the last first head on this worker's downstream connections. A
    /// client that opens a connection per request sends the same names each time: a
    /// connection's own cache would learn them (two allocations) only to be dropped
    /// with it. From a connection's second head on, its own cache takes over, so
    /// clients of different kinds interleaving here cost only their first heads.
    pub(crate) static FIRST_NAMES: std::cell::RefCell<NameCache> =
        std::cell::RefCell::new(NameCache::default());
}

/// Names a [`NameCache`] keeps, and their bytes.
const CACHED_NAMES: usize = 24;
const CACHED_BYTES: usize = 512;

impl NameCache {
    /// The name of line `i` of a head, `raw` as it came.
    pub(crate) fn name(
        &mut self,
        i: usize,
        raw: &[u8],
    ) -> Result<HeaderName, http::header::InvalidHeaderName> {
        if let Some((end, name)) = self.names.get(i) {
            let start = match i {
                0 => 0,
                _ => self.names[i - 1].0 as usize,
            };
            if self.raw[start..*end as usize] == *raw {
                return Ok(name.clone());
            }
        }
        let name = HeaderName::from_bytes(raw)?;
        // From the first name that differs, the cache follows this head.
        if i <= self.names.len() && i < CACHED_NAMES {
            self.names.truncate(i);
            let start = self.names.last().map_or(0, |(end, _)| *end as usize);
            if start + raw.len() <= CACHED_BYTES {
                self.raw.truncate(start);
                self.raw.extend_from_slice(raw);
                self.names.push((self.raw.len() as u16, name.clone()));
            }
        }
        Ok(name)
    }
}

/// Whether a header name as it came has an uppercase letter.
pub(crate) fn has_upper(name: &[u8]) -> bool {
    name.iter().any(u8::is_ascii_uppercase)
}

pub(crate) fn write_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

pub(crate) fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
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

pub(crate) fn write_hex(out: &mut Vec<u8>, n: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (usize::BITS - n.leading_zeros()).div_ceil(4).max(1);
    for i in (0..digits).rev() {
        out.push(HEX[(n >> (i * 4)) & 0xf]);
    }
}

/// What a head's `content-length` and `transfer-encoding` lines say, gathered line by
/// line: the rules both codecs apply, to requests and to responses.
#[derive(Default)]
pub(crate) struct FramingFields {
    /// The length every `content-length` line gave.
    pub(crate) length: Option<u64>,
    /// More than one length line, or one with copies of its number (`3, 3`).
    length_copies: bool,
    /// Whether the last coding is `chunked`; `None` without `transfer-encoding`.
    pub(crate) chunked: Option<bool>,
    /// A coding besides `chunked` (`gzip, chunked`), or a second line. The codecs
    /// decode `chunked` only and frame the message anew: one with another coding
    /// would lose it on the way.
    pub(crate) other_coding: bool,
}

impl FramingFields {
    /// One `content-length` line: each must give one number, the same one.
    #[inline]
    pub(crate) fn content_length(&mut self, value: &[u8]) -> Result<(), &'static str> {
        // Nearly every value is one plain number: no splitting, trimming or search
        // for a comma (~80 instructions a response otherwise).
        let plain = !value.is_empty() && value.len() <= 19 && value.iter().all(u8::is_ascii_digit);
        let n = match plain {
            true => value.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')),
            false => parse_length(value).ok_or("content-length is not a number")?,
        };
        if self.length.is_some_and(|prev| prev != n) {
            return Err("differing content-length values");
        }
        self.length_copies |= self.length.is_some() || !plain && value.contains(&b',');
        self.length = Some(n);
        Ok(())
    }

    /// One `transfer-encoding` line.
    pub(crate) fn transfer_encoding(&mut self, value: &[u8]) {
        self.other_coding |=
            self.chunked.is_some() || !trim(value).eq_ignore_ascii_case(b"chunked");
        self.chunked = Some(is_chunked(value));
    }

    /// The length to pass on as one value when the lines were copies of it: RFC 9110
    /// §8.6 lets a recipient accept them if it sends one, so a peer that reads only
    /// the first line, or refuses lists, sees the same framing.
    pub(crate) fn copied_length(&self) -> Option<u64> {
        self.length.filter(|_| self.length_copies)
    }
}

/// The bytes a `Host` value may have (RFC 9110 §7.2: `uri-host [ ":" port ]`): a
/// reg-name's unreserved, sub-delims and percent-encoded bytes, an IP literal's
/// brackets and colons. Not `/`, `?`, `#`, `@`, spaces or controls.
const HOST_BYTES: [bool; 256] = {
    let mut ok = [false; 256];
    let allowed =
        b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:[]%";
    let mut i = 0;
    while i < allowed.len() {
        ok[allowed[i] as usize] = true;
        i += 1;
    }
    ok
};

/// Whether a `Host` value is a host and port: no byte outside [`HOST_BYTES`]. Empty
/// is valid: RFC 9112 §3.2 has a client send it for a target without an authority,
/// and Envoy and HAProxy pass it on.
pub(crate) fn is_host(value: &[u8]) -> bool {
    value.iter().all(|&b| HOST_BYTES[b as usize])
}

thread_local! {
    /// The last `Host` value this worker found valid. Clients send the same one head
    /// after head (and a sidecar's app, connection after connection): comparing the
    /// bytes costs a third of checking each. Per worker, not per connection: 24 bytes
    /// more in each connection's codec state took it past an allocator size class,
    /// +280 bytes per idle connection.
    static LAST_HOST: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// [`is_host`], remembering the last valid value.
pub(crate) fn is_host_remembered(value: &[u8]) -> bool {
    LAST_HOST.with_borrow_mut(|last| {
        if !last.is_empty() && last.as_slice() == value {
            return true;
        }
        if !is_host(value) {
            return false;
        }
        if value.len() <= 255 {
            last.clear();
            last.extend_from_slice(value);
        }
        true
    })
}

/// Whether a `transfer-encoding` value ends in `chunked`.
pub(crate) fn is_chunked(value: &[u8]) -> bool {
    value
        .rsplit(|&b| b == b',')
        .next()
        .is_some_and(|last| trim(last).eq_ignore_ascii_case(b"chunked"))
}

/// What one `Connection` value says.
#[derive(Default)]
pub(crate) struct ConnectionValue {
    pub close: bool,
    pub keep_alive: bool,
    /// It names something besides `close` and `keep-alive`: a header to drop with it,
    /// or `upgrade`.
    pub other: bool,
}

impl ConnectionValue {
    pub(crate) fn parse(value: &[u8]) -> ConnectionValue {
        let mut said = ConnectionValue::default();
        // Nearly every value is one of these, whole: no splitting and trimming.
        match value {
            b"keep-alive" | b"Keep-Alive" => {
                said.keep_alive = true;
                return said;
            }
            b"close" | b"Close" => {
                said.close = true;
                return said;
            }
            _ => {}
        }
        for token in value.split(|&b| b == b',').map(trim) {
            if token.eq_ignore_ascii_case(b"close") {
                said.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                said.keep_alive = true;
            } else if !token.is_empty() {
                said.other = true;
            }
        }
        said
    }
}

/// Whether a comma-separated header value has `token` (case-insensitive).
pub(crate) fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| trim(t).eq_ignore_ascii_case(token))
}

pub(crate) fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// A `content-length` value: one number, or comma-separated copies of one number.
pub(crate) fn parse_length(value: &[u8]) -> Option<u64> {
    let mut found: Option<u64> = None;
    for part in value.split(|&b| b == b',') {
        let part = trim(part);
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        match found {
            Some(prev) if prev != n => return None,
            _ => found = Some(n),
        }
    }
    found
}

/// The message's `content-length`: `None` without one, `Err` when its values are not
/// one number (several lines or comma-separated copies of one number are fine).
pub(crate) fn content_length(headers: &HeaderMap) -> Option<Result<u64, ()>> {
    let mut found: Option<u64> = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        let Some(n) = parse_length(value.as_bytes()) else {
            return Some(Err(()));
        };
        match found {
            Some(prev) if prev != n => return Some(Err(())),
            _ => found = Some(n),
        }
    }
    found.map(Ok)
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

enum Chunk {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
    More,
    Error(&'static str),
}

/// Decodes what `read` holds of a chunked body, from `state` on.
fn decode_chunk(read: &mut BytesMut, state: &mut ChunkState) -> Chunk {
    loop {
        match *state {
            ChunkState::Size => {
                let Some(eol) = memchr::memchr(b'\n', read) else {
                    return Chunk::More;
                };
                let line = &read[..eol];
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                // Chunk extensions (`;name=value`) are ignored.
                let size = line.split(|&b| b == b';').next().map_or(&[][..], trim);
                let Some(size) = parse_hex(size) else {
                    return Chunk::Error("invalid chunk size");
                };
                read.advance(eol + 1);
                *state = match size {
                    0 => ChunkState::Trailers,
                    n => ChunkState::Data(n),
                };
            }
            ChunkState::Data(left) => {
                if read.is_empty() {
                    return Chunk::More;
                }
                let n = (read.len() as u64).min(left) as usize;
                let data = read.split_to(n).freeze();
                *state = match left - n as u64 {
                    0 => ChunkState::DataEnd,
                    left => ChunkState::Data(left),
                };
                return Chunk::Data(data);
            }
            ChunkState::DataEnd => match read.get(..2) {
                Some(b"\r\n") => {
                    read.advance(2);
                    *state = ChunkState::Size;
                }
                None if read.first().is_none_or(|&b| b == b'\r') => return Chunk::More,
                _ => return Chunk::Error("chunk data not followed by CRLF"),
            },
            ChunkState::Trailers => {
                let Some(end) = find_trailers_end(read) else {
                    return Chunk::More;
                };
                let block = read.split_to(end);
                return match parse_trailers(&block) {
                    Some(t) if !t.is_empty() => Chunk::Trailers(t),
                    Some(_) => Chunk::End,
                    None => Chunk::Error("malformed trailer"),
                };
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_values() {
        for ok in [
            "h",
            "example.com:8080",
            "127.0.0.1:1",
            "[::1]:80",
            "a-b.c_d~e",
            "",
        ] {
            assert!(is_host(ok.as_bytes()), "{ok}");
        }
        for bad in ["h, i", "h/x", "u@h", "h?q", "h#f", "h\tx", "h i"] {
            assert!(!is_host(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn framing_fields_take_copies_and_refuse_the_rest() {
        let lines = |length: &[&[u8]], coding: &[&[u8]]| {
            let mut f = FramingFields::default();
            let length: Result<Vec<()>, _> = length.iter().map(|v| f.content_length(v)).collect();
            coding.iter().for_each(|v| f.transfer_encoding(v));
            (length.map(|_| ()), f)
        };
        let (ok, f) = lines(&[b"3"], &[]);
        assert_eq!((ok, f.length, f.copied_length()), (Ok(()), Some(3), None));
        // Copies, in one line or several: one value to pass on.
        let (ok, f) = lines(&[b"3, 3", b"3"], &[]);
        assert_eq!((ok, f.copied_length()), (Ok(()), Some(3)));
        let (ok, _) = lines(&[b"3", b"4"], &[]);
        assert_eq!(ok, Err("differing content-length values"));
        let (ok, _) = lines(&[b"+3"], &[]);
        assert_eq!(ok, Err("content-length is not a number"));
        // `chunked` alone (any case, trimmed) is the one coding passed on.
        let (_, f) = lines(&[], &[b" Chunked "]);
        assert_eq!((f.chunked, f.other_coding), (Some(true), false));
        let (_, f) = lines(&[], &[b"gzip, chunked"]);
        assert_eq!((f.chunked, f.other_coding), (Some(true), true));
        let (_, f) = lines(&[], &[b"gzip", b"chunked"]);
        assert_eq!((f.chunked, f.other_coding), (Some(true), true));
        let (_, f) = lines(&[], &[b"chunked, gzip"]);
        assert_eq!(f.chunked, Some(false));
    }

    #[test]
    fn connection_values() {
        let said = |v: &[u8]| {
            let c = ConnectionValue::parse(v);
            (c.close, c.keep_alive, c.other)
        };
        assert_eq!(said(b"keep-alive"), (false, true, false));
        assert_eq!(said(b"KEEP-ALIVE"), (false, true, false));
        assert_eq!(said(b"Close"), (true, false, false));
        assert_eq!(said(b" close ,, keep-alive "), (true, true, false));
        assert_eq!(said(b"close, X-Hop"), (true, false, true));
        assert_eq!(said(b"Upgrade"), (false, false, true));
        assert_eq!(said(b""), (false, false, false));
    }

    /// A socket that takes at most `limit` bytes per write and counts each kind.
    struct Trickle {
        wire: Vec<u8>,
        limit: usize,
        sends: usize,
        writevs: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.sends += 1;
            let n = buf.len().min(self.limit);
            self.wire.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            self.writevs += 1;
            let mut left = self.limit;
            for buf in bufs {
                let n = buf.len().min(left);
                self.wire.extend_from_slice(&buf[..n]);
                left -= n;
            }
            Poll::Ready(Ok(self.limit - left))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// A body whose frames come one poll apart when it drips (the writer writes
    /// between them), else all at once.
    struct Drip {
        frames: VecDeque<http_body::Frame<Bytes>>,
        drip: bool,
        wait: bool,
    }

    impl Body for Drip {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            self.wait = self.drip && !self.wait;
            if self.wait {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(self.frames.pop_front().map(Ok))
        }
    }

    fn write_all(
        framing: Framing,
        pieces: &[Bytes],
        trailers: bool,
        drip: bool,
        limit: usize,
    ) -> Trickle {
        let mut frames: VecDeque<_> = pieces
            .iter()
            .map(|p| http_body::Frame::data(p.clone()))
            .collect();
        if trailers {
            let mut map = HeaderMap::new();
            map.insert("x-t", HeaderValue::from_static("1"));
            frames.push_back(http_body::Frame::trailers(map));
        }
        let body = Drip {
            frames,
            drip,
            wait: false,
        };
        let mut writer = Writer::new(b"HEAD\r\n\r\n".to_vec(), body, framing);
        let mut io = Trickle {
            wire: Vec::new(),
            limit,
            sends: 0,
            writevs: 0,
        };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        // Each poll writes at most WRITE_BUDGET; a bounded number of polls ends it.
        for _ in 0..10_000 {
            match writer.poll(&mut io, &mut cx) {
                Poll::Ready(Ok(())) => return io,
                Poll::Ready(Err(_)) => panic!("write failed"),
                Poll::Pending => {}
            }
        }
        panic!("writer did not finish");
    }

    #[test]
    fn lowercasing_eight_bytes_at_a_time_matches_the_bytewise_one() {
        // Every byte value in every position of a word, against the plain rule.
        for b in 0..=255u8 {
            for at in 0..8 {
                let mut word = *b"x-Ab-Z@[";
                word[at] = b;
                let got = ascii_lowercase8(u64::from_le_bytes(word)).to_le_bytes();
                assert_eq!(
                    got,
                    word.map(|c| c.to_ascii_lowercase()),
                    "byte {b:#x} at {at}"
                );
            }
        }
        assert!(lowercases_to(b"Content-Length", b"content-length"));
        assert!(lowercases_to(b"X-REQUEST-ID", b"x-request-id"));
        assert!(!lowercases_to(b"Content-Lengtx", b"content-length"));
        assert!(!lowercases_to(b"X-Request-Ie", b"x-request-id"));
        assert!(!lowercases_to(b"x_a", b"x\x7fa"));
        assert!(!lowercases_to(b"Date", b"dates"));
    }

    #[test]
    fn a_small_message_goes_out_in_one_send() {
        let ok = [Bytes::from_static(b"ok\n")];
        let io = write_all(Framing::Length(3), &ok, false, false, 1 << 20);
        assert_eq!(io.wire, b"HEAD\r\n\r\nok\n");
        assert_eq!((io.sends, io.writevs), (1, 0));
        let io = write_all(Framing::Chunked, &ok, true, false, 1 << 20);
        assert_eq!(io.wire, b"HEAD\r\n\r\n3\r\nok\n\r\n0\r\nx-t: 1\r\n\r\n");
        assert_eq!((io.sends, io.writevs), (1, 0));
    }

    #[test]
    fn small_and_large_pieces_keep_their_order_at_any_write_size() {
        // Small pieces are copied behind the head, large ones queued on their own,
        // a partly written tail sealed before a large piece (the body's frames come
        // a poll apart, with writes between): the bytes must come out in order
        // whatever each write takes.
        let large = |c: u8, n: usize| Bytes::from(vec![c; n]);
        let pieces = [
            Bytes::from_static(b"ab"),
            large(b'L', COALESCE + 1),
            Bytes::from_static(b"cd"),
            Bytes::from_static(b"ef"),
            large(b'M', 3 * COALESCE),
            Bytes::from_static(b"g"),
        ];
        let total: usize = pieces.iter().map(Bytes::len).sum();
        let mut plain = b"HEAD\r\n\r\n".to_vec();
        let mut chunked = plain.clone();
        for p in &pieces {
            plain.extend_from_slice(p);
            chunked.extend_from_slice(format!("{:X}\r\n", p.len()).as_bytes());
            chunked.extend_from_slice(p);
            chunked.extend_from_slice(b"\r\n");
        }
        chunked.extend_from_slice(b"0\r\nx-t: 1\r\n\r\n");
        for (drip, limit) in [true, false].into_iter().flat_map(|drip| {
            [1, 2, 3, 7, 100, COALESCE - 1, COALESCE + 5, 1 << 20].map(|limit| (drip, limit))
        }) {
            let io = write_all(Framing::Length(total as u64), &pieces, false, drip, limit);
            assert!(
                io.wire == plain,
                "content-length body, writes of {limit}, {drip}"
            );
            let io = write_all(Framing::Chunked, &pieces, true, drip, limit);
            assert!(
                io.wire == chunked,
                "chunked body, writes of {limit}, {drip}"
            );
        }
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
                        Chunk::Data(d) => data.extend_from_slice(&d),
                        Chunk::Trailers(t) => {
                            trailers = Some(t);
                            ended = true;
                            break;
                        }
                        Chunk::End => {
                            ended = true;
                            break;
                        }
                        Chunk::More => break,
                        Chunk::Error(e) => panic!("split {split}: {e}"),
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
            Chunk::Error(_)
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

    #[test]
    fn header_case_finds_names_as_they_came() {
        let head = Bytes::from_static(b"X-Mixed-Case: 1\r\nx-lower: 2\r\nX-UPPER: 3\r\n");
        let mut case = HeaderCase::new(head);
        case.add(0, 12, 3);
        case.add(29, 7, 3);
        let name = |n: &'static str| HeaderName::from_static(n);
        assert_eq!(case.get(&name("x-mixed-case")), Some(&b"X-Mixed-Case"[..]));
        assert_eq!(case.get(&name("x-upper")), Some(&b"X-UPPER"[..]));
        assert_eq!(case.get(&name("x-lower")), None);
        let mut out = Vec::new();
        let mut w = CasedWriter::new(Some(&case));
        // Out of order, then in order again: found either way.
        w.write(&mut out, &name("x-upper"), b"3");
        w.write(&mut out, &name("x-lower"), b"2");
        w.write(&mut out, &name("x-mixed-case"), b"1");
        assert_eq!(out, b"X-UPPER: 3\r\nx-lower: 2\r\nX-Mixed-Case: 1\r\n");
    }

    #[test]
    fn name_cache_follows_the_heads_it_sees() {
        let mut cache = NameCache::default();
        let names = |cache: &mut NameCache, raw: &[&str]| -> Vec<String> {
            raw.iter()
                .enumerate()
                .map(|(i, r)| cache.name(i, r.as_bytes()).unwrap().as_str().to_owned())
                .collect()
        };
        assert_eq!(
            names(&mut cache, &["Host", "X-Custom", "Accept"]),
            ["host", "x-custom", "accept"]
        );
        // Same names: served from the cache, lowercase as parsed.
        assert_eq!(
            names(&mut cache, &["Host", "X-Custom", "Accept"]),
            ["host", "x-custom", "accept"]
        );
        // A name that differs replaces the rest; a longer or shorter name at the same
        // place is not mistaken for the cached one.
        assert_eq!(
            names(&mut cache, &["Host", "X-Customer", "Acc"]),
            ["host", "x-customer", "acc"]
        );
        assert_eq!(
            names(&mut cache, &["host", "X-Custom"]),
            ["host", "x-custom"]
        );
        assert!(cache.name(0, b"bad name").is_err());
        assert_eq!(cache.name(0, b"host").unwrap(), "host");
        // Bounded: a head of many long names caches only what fits.
        let long: Vec<String> = (0..100)
            .map(|i| format!("x-{i}-{}", "n".repeat(40)))
            .collect();
        let long: Vec<&str> = long.iter().map(String::as_str).collect();
        assert_eq!(names(&mut cache, &long).len(), 100);
        assert!(cache.names.len() <= CACHED_NAMES && cache.raw.len() <= CACHED_BYTES);
    }
}
