//! Follows HTTP/1.1 message framing on a downstream socket, beside hyper's parser, to
//! catch the request-smuggling shape hyper normalises away: a request with both
//! `Content-Length` and `Transfer-Encoding`. hyper drops the Content-Length and reads
//! the body as chunked (RFC 9112 §6.3 allows it); Envoy, and we, refuse such a request
//! with 400 and close the connection, so it never reaches an upstream.
//!
//! The guard sees every byte hyper reads, in order, before hyper parses it: it finds
//! each request head, notes the index of the first bad one, and skips bodies by their
//! framing (Content-Length or chunked) without copying them. It stops following (and
//! costs nothing more) on HTTP/2, on an upgrade or CONNECT, and after a bad request.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What the guard learnt, for the connection's task: the index of the first request
/// that must be refused, and whether the bytes read so far end on a message boundary.
#[derive(Debug)]
/// Eight bytes: every connection keeps one.
pub struct Verdict {
    /// The refused request's index, counted modulo 2^32 as the connection's request
    /// counter is (both advance together), valid once `refusing` is set.
    refused: AtomicU32,
    refusing: AtomicBool,
    between: AtomicBool,
}

impl Default for Verdict {
    fn default() -> Self {
        Verdict {
            refused: AtomicU32::new(0),
            refusing: AtomicBool::new(false),
            between: AtomicBool::new(true),
        }
    }
}

impl Verdict {
    /// Whether the `index`th request (0-based, modulo 2^32) on the connection is to
    /// be refused.
    pub fn refuses(&self, index: u32) -> bool {
        self.refusing.load(Ordering::Relaxed) && self.refused.load(Ordering::Relaxed) == index
    }

    fn refuse(&self, index: u32) {
        self.refused.store(index, Ordering::Relaxed);
        self.refusing.store(true, Ordering::Relaxed);
    }

    /// Every byte read so far belongs to a whole HTTP/1 message: nothing of a next
    /// request head or of a body is pending. False once the guard stopped following
    /// (HTTP/2, an upgrade, CONNECT, a refused request), when it cannot tell.
    pub fn between_messages(&self) -> bool {
        self.between.load(Ordering::Relaxed)
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";
/// Longer heads are hyper's to refuse (431); we stop following.
const MAX_PARTIAL: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// Before the first byte: HTTP/2 prior knowledge or HTTP/1?
    Start,
    Head,
    Skip {
        remaining: u64,
        then: After,
    },
    ChunkSize,
    Trailers,
    /// Not following any more.
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum After {
    Head,
    ChunkCrlf,
    ChunkSize,
}

/// `V` is where the verdict lives: an `Arc<Verdict>`, or a connection's shared
/// state that holds it (one allocation per connection instead of two).
pub struct FramingGuard<IO, V = Arc<Verdict>> {
    io: IO,
    follower: Follower<V>,
}

impl<IO, V: AsRef<Verdict>> FramingGuard<IO, V> {
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// The wrapped connection, to read past the guard: what is read so is not
    /// followed (see [`Self::stop_following`]).
    pub fn get_mut(&mut self) -> &mut IO {
        &mut self.io
    }

    /// Stops following, as after HTTP/2's preface: the connection's bytes are not
    /// HTTP/1 messages (or were read past the guard).
    pub fn stop_following(&mut self) {
        self.follower.state = State::Off;
        self.follower.partial = Partial::default();
        self.follower
            .verdict
            .as_ref()
            .between
            .store(false, Ordering::Relaxed);
    }

    /// The wrapped connection (what the guard has seen is dropped).
    pub fn into_inner(self) -> IO {
        self.io
    }

    /// What holds the verdict (the connection's shared state, say).
    pub fn verdict_holder(&self) -> &V {
        &self.follower.verdict
    }

    pub fn new(io: IO, verdict: V) -> Self {
        FramingGuard {
            io,
            follower: Follower {
                state: State::Start,
                partial: Partial::default(),
                heads: 0,
                verdict,
            },
        }
    }
}

/// The framing state machine, apart from the socket so it can read the bytes the
/// socket just filled without copying them.
struct Follower<V> {
    state: State,
    /// A head or chunk-size line split across reads; empty (and unallocated) when
    /// heads arrive whole, as they nearly always do.
    partial: Partial,
    /// Heads seen, modulo 2^32.
    heads: u32,
    verdict: V,
}

/// Bytes of a line split across reads: one pointer wide (every idle HTTP/1.1
/// connection carries one, nearly always empty) and unallocated while empty.
#[derive(Default)]
#[allow(clippy::box_collection)] // The box keeps the field one pointer wide.
struct Partial(Option<Box<Vec<u8>>>);

impl Partial {
    fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|bytes| bytes.is_empty())
    }

    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |bytes| bytes.len())
    }

    fn as_slice(&self) -> &[u8] {
        self.0.as_deref().map_or(&[], Vec::as_slice)
    }

    fn extend(&mut self, data: &[u8]) {
        self.0.get_or_insert_default().extend_from_slice(data);
    }

    fn truncate(&mut self, len: usize) {
        if let Some(bytes) = &mut self.0 {
            bytes.truncate(len);
        }
    }

    fn take(&mut self) -> Vec<u8> {
        self.0.take().map_or_else(Vec::new, |bytes| *bytes)
    }
}

impl<V: AsRef<Verdict>> Follower<V> {
    fn inspect(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match self.state {
                State::Off => return,
                State::Start => {
                    let n = data.len().min(H2_PREFACE.len());
                    self.state = if data[..n] == H2_PREFACE[..n] {
                        State::Off
                    } else {
                        State::Head
                    };
                }
                State::Skip { remaining, then } => {
                    let take = remaining.min(data.len() as u64);
                    data = &data[take as usize..];
                    self.state = if take == remaining {
                        match then {
                            After::Head => State::Head,
                            After::ChunkCrlf => State::Skip {
                                remaining: 2,
                                then: After::ChunkSize,
                            },
                            After::ChunkSize => State::ChunkSize,
                        }
                    } else {
                        State::Skip {
                            remaining: remaining - take,
                            then,
                        }
                    };
                }
                State::Head => {
                    if self.partial.is_empty() {
                        // Empty lines between messages are allowed (RFC 9112 §2.2).
                        let skip = data
                            .iter()
                            .take_while(|b| **b == b'\r' || **b == b'\n')
                            .count();
                        data = &data[skip..];
                        if data.is_empty() {
                            return;
                        }
                    }
                    let Some(next) = self.take_until(&mut data, b"\r\n\r\n", Self::after_head)
                    else {
                        return;
                    };
                    self.state = next;
                }
                State::Trailers => {
                    // Trailer fields line by line, up to the empty line.
                    let empty = |_: &mut Self, line: &[u8]| line == b"\r\n" || line == b"\n";
                    let Some(end) = self.take_until(&mut data, b"\n", empty) else {
                        return;
                    };
                    if end {
                        self.state = State::Head;
                    }
                }
                State::ChunkSize => {
                    let Some(size) = self.take_until(&mut data, b"\n", |_, line| chunk_size(line))
                    else {
                        return;
                    };
                    self.state = match size {
                        Some(0) => State::Trailers,
                        Some(n) => State::Skip {
                            remaining: n,
                            then: After::ChunkCrlf,
                        },
                        None => State::Off,
                    };
                }
            }
        }
    }

    /// Takes bytes up to and including `end`, joining a piece kept from earlier reads,
    /// and hands them to `then`. Returns `None` (the bytes are kept) when `end` has not
    /// arrived yet.
    fn take_until<R>(
        &mut self,
        data: &mut &[u8],
        end: &[u8],
        then: impl FnOnce(&mut Self, &[u8]) -> R,
    ) -> Option<R> {
        if self.partial.is_empty() {
            if let Some(i) = memchr::memmem::find(data, end) {
                let (line, rest) = data.split_at(i + end.len());
                *data = rest;
                return Some(then(self, line));
            }
        } else {
            let from = self.partial.len().saturating_sub(end.len() - 1);
            let old = self.partial.len();
            self.partial.extend(data);
            if let Some(i) = memchr::memmem::find(&self.partial.as_slice()[from..], end) {
                let cut = from + i + end.len();
                *data = &data[cut - old..];
                let line = self.partial.take();
                return Some(then(self, &line[..cut]));
            }
            self.partial.truncate(old);
        }
        if self.partial.len() + data.len() > MAX_PARTIAL {
            self.state = State::Off;
            self.partial = Partial::default();
        } else {
            self.partial.extend(data);
        }
        *data = &[];
        None
    }

    fn after_head(&mut self, head: &[u8]) -> State {
        let index = self.heads;
        self.heads = self.heads.wrapping_add(1);
        let mut lines = head
            .split(|b| *b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
        let request_line = lines.next().unwrap_or_default();
        if request_line.starts_with(b"CONNECT ") {
            return State::Off;
        }
        let (mut content_length, mut lengths, mut te, mut chunked, mut upgrade) =
            (0u64, 0, false, false, false);
        for line in lines {
            let Some(colon) = line.iter().position(|b| *b == b':') else {
                continue;
            };
            let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
            if name.eq_ignore_ascii_case(b"content-length") {
                lengths += 1;
                match std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()) {
                    Some(n) => content_length = n,
                    None => return State::Off, // hyper refuses it
                }
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                te = true;
                let last = value
                    .rsplit(|b| *b == b',')
                    .next()
                    .map(trim)
                    .unwrap_or_default();
                chunked = last.eq_ignore_ascii_case(b"chunked");
            } else if name.eq_ignore_ascii_case(b"upgrade") {
                upgrade = true;
            }
        }
        if te && lengths > 0 {
            self.verdict.as_ref().refuse(index);
            return State::Off;
        }
        match (upgrade, te, chunked, content_length) {
            (true, ..) => State::Off,
            (_, true, true, _) => State::ChunkSize,
            (_, true, false, _) => State::Off, // hyper refuses it
            (_, false, _, 0) => State::Head,
            (_, false, _, n) => State::Skip {
                remaining: n,
                then: After::Head,
            },
        }
    }
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &v[start..end]
}

fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits: &[u8] = line
        .split(|b| *b == b';' || *b == b'\r' || *b == b'\n')
        .next()
        .map(trim)?;
    if digits.is_empty() || digits.len() > 15 {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

impl<IO: AsyncRead + Unpin, V: AsRef<Verdict> + Unpin> AsyncRead for FramingGuard<IO, V> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if this.follower.state != State::Off {
            if let Poll::Ready(Ok(())) = polled {
                let follower = &mut this.follower;
                follower.inspect(&buf.filled()[before..]);
                let between = follower.state == State::Head && follower.partial.is_empty();
                let verdict = follower.verdict.as_ref();
                verdict.between.store(between, Ordering::Relaxed);
            }
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin, V: Unpin> AsyncWrite for FramingGuard<IO, V> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes and returns the refused index.
    fn refused(input: &[u8], step: usize) -> Option<u32> {
        let verdict = Arc::new(Verdict::default());
        let mut g = FramingGuard::new((), verdict.clone());
        for piece in input.chunks(step) {
            g.follower.inspect(piece);
        }
        let v = verdict.refused.load(Ordering::Relaxed);
        verdict.refusing.load(Ordering::Relaxed).then_some(v)
    }

    const CL_TE: &[u8] = b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

    #[test]
    fn finds_the_bad_request_after_any_framing_in_any_split() {
        let mut stream = Vec::new();
        stream.extend_from_slice(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
        stream.extend_from_slice(
            b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello\r\n\r\n!!",
        );
        stream.extend_from_slice(
            b"POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nab\r\n\r\n10\r\n0123456789abcdef\r\n0\r\nX-T: 1\r\n\r\n",
        );
        stream
            .extend_from_slice(b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
        stream.extend_from_slice(CL_TE);
        for step in [1, 2, 3, 7, 64, 4096] {
            assert_eq!(refused(&stream, step), Some(4), "split every {step} bytes");
        }
    }

    #[test]
    fn clean_streams_and_other_protocols_pass() {
        assert_eq!(
            refused(b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n", 5),
            None
        );
        let h2 = [b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".as_slice(), CL_TE].concat();
        assert_eq!(refused(&h2, 9), None, "HTTP/2 is not followed");
        let ws = [
            b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n".as_slice(),
            CL_TE,
        ]
        .concat();
        assert_eq!(refused(&ws, 100), None, "upgraded bytes are not HTTP/1");
        // A body that looks like a bad head is skipped as a body.
        let body = [
            b"POST / HTTP/1.1\r\nContent-Length: 86\r\n\r\n".as_slice(),
            CL_TE,
        ]
        .concat();
        assert_eq!(refused(&body, 10), None);
        assert_eq!(refused(CL_TE, 1000), Some(0));
    }
}
