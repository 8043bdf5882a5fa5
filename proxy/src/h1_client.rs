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

use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body as _, Frame, SizeHint};

use crate::body::RequestBody;
use crate::h1::{
    self, content_length, is_chunked, write_field, CasedWriter, Decoded, Decoder, Framing,
    HeaderCase, WriteError, Writer, MAX_HEADERS, READ_SMALL,
};
use crate::pool::{H1Conn, Upstream};

/// The longest response head accepted: Envoy's HTTP/1.1 client codec default
/// (`MAX_RESPONSE_HEADERS_KB`, 80 KiB, "the vanilla http_parser behaviour").
const MAX_HEAD: usize = 80 * 1024;
/// Why an exchange failed.
pub enum Failure {
    /// The connection failed before a byte of the response came back. `true` when the
    /// request (its body put back) can be sent again as it is: nothing of it was
    /// written, or (the keep-alive race) it has no body and the connection had served
    /// before.
    Reset(bool),
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

/// Sends `req` on `conn` and reads the response head. `reused`: the connection has
/// served before (a failure before any response byte is then the keep-alive race).
pub(crate) async fn send(
    mut conn: Box<H1Conn>,
    req: &mut Upstream,
    reused: bool,
) -> Result<Response<ResponseBody>, Failure> {
    let head_only = req.method() == Method::HEAD;
    let idempotent = crate::pool::idempotent(req.method());
    let (head, framing) = encode_head(&req.request, req.case.as_ref());
    // The head stays with the caller: for another connection (below), or a retry.
    let body = std::mem::replace(req.body_mut(), RequestBody::Empty);
    let mut writer = Writer::new(head, body, framing);
    let mut read_any = false;
    let mut write_failed = false;
    let polled = std::future::poll_fn(|cx| {
        // The request goes out while the head is awaited: an upstream may answer
        // before it has read the whole body. Pending here waits on the socket or on
        // the body, whose wakers are registered. A write the upstream refuses (it
        // answered and closed) still leaves its answer to read.
        if !write_failed {
            match writer.poll(&mut conn.stream, cx) {
                Poll::Ready(Err(WriteError::Io)) => write_failed = true,
                Poll::Ready(Err(WriteError::Body(e))) => return Poll::Ready(Err(Failure::Body(e))),
                _ => {}
            }
        }
        loop {
            match parse_head(&mut conn.read, &mut conn.names, head_only) {
                Ok(Some(head)) => return Poll::Ready(Ok(head)),
                Ok(None) => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            if conn.read.len() >= MAX_HEAD {
                return Poll::Ready(Err(Failure::Protocol("response head too large")));
            }
            match ready!(h1::poll_read(
                &mut conn.stream,
                &mut conn.read,
                cx,
                READ_SMALL
            )) {
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
            if again {
                *req.body_mut() = writer.body;
            }
            return Err(Failure::Reset(again));
        }
        Err(Failure::Broken) if !read_any => return Err(Failure::Reset(false)),
        Err(Failure::Broken) => return Err(Failure::Broken),
        Err(e) => return Err(e),
    };
    let Parsed {
        response,
        framing,
        keep_alive,
        case,
    } = parsed;
    let writer = (!writer.done() && !write_failed).then(|| Box::new(writer));
    let mut body = ResponseBody {
        conn: Some(conn),
        decoder: Decoder::new(framing),
        writer,
        keep_alive: keep_alive && !write_failed,
        ended: false,
        case,
    };
    if body.decoder.done() {
        body.end();
    }
    Ok(response.map(|()| body))
}

/// The request line and headers (the names cased as `case` recorded them), and how
/// the body is framed.
fn encode_head(req: &Request<RequestBody>, case: Option<&HeaderCase>) -> (Vec<u8>, Framing) {
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
    // Names as the client sent them, when Strait's server codec parsed the request.
    let mut names = CasedWriter::new(case);
    for (name, value) in headers {
        if (skip_te && name == header::TRANSFER_ENCODING)
            || (skip_cl && name == header::CONTENT_LENGTH)
        {
            continue;
        }
        names.write(&mut out, name, value.as_bytes());
    }
    match add {
        Some(Add::Chunked) => write_field(&mut out, b"transfer-encoding", b"chunked"),
        Some(Add::Length(len)) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(h1::itoa(len, &mut [0u8; 20]));
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

/// A parsed response head.
struct Parsed {
    response: Response<()>,
    framing: Framing,
    keep_alive: bool,
    /// The names that came with uppercase letters.
    case: Option<Box<HeaderCase>>,
}

/// Parses a response head at the start of `read`, taking its bytes (and those of any
/// skipped 1xx response) out of it; `None` while it is incomplete.
fn parse_head(
    read: &mut BytesMut,
    names: &mut h1::NameCache,
    head_only: bool,
) -> Result<Option<Parsed>, Failure> {
    loop {
        if read.is_empty() {
            return Ok(None);
        }
        // Left uninitialised: httparse writes the lines it finds.
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut parsed,
            read,
            &mut fields,
        ) {
            // A head that arrived whole in one read is held to the same limit as
            // one still coming in.
            Ok(httparse::Status::Complete(len)) if len > MAX_HEAD => {
                return Err(Failure::Protocol("response head too large"))
            }
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
        // An empty reason (`HTTP/1.1 200\r\n`, no space after the code, which
        // httparse accepts) is a static "" outside `read`: there is none to keep.
        let reason = parsed
            .reason
            .filter(|r| !r.is_empty())
            .map(|r| (r.as_ptr() as usize - read.as_ptr() as usize, r.len()));
        let count = parsed.headers.len();
        let informational = (100..200).contains(&status) && status != 101;
        if informational {
            // An informational answer (100 Continue, 103 Early Hints): not the response.
            read.advance(len);
            continue;
        }
        // Where each header's name and value sit in `read`.
        let mut at = h1::take_offsets();
        h1::field_offsets(read, parsed.headers, &mut at);
        let head = read.split_to(len).freeze();
        if status == 101 {
            return Err(Failure::Protocol(
                "101 Switching Protocols without an upgrade",
            ));
        }
        let status = StatusCode::from_u16(status)
            .map_err(|_| Failure::Protocol("invalid response status"))?;
        // Room for what the proxy adds (`server`, the service time): growing a
        // `HeaderMap` rehashes it.
        let mut headers = crate::headers::map_with_capacity(count + 4);
        let mut keep_alive = version == Version::HTTP_11;
        let mut close = false;
        let mut framing_fields = h1::FramingFields::default();
        let mut case = HeaderCase::new(head.clone());
        for (i, &(name_at, name_len, value_at, value_len)) in at.iter().enumerate() {
            let name = &head[name_at as usize..(name_at + name_len) as usize];
            if h1::has_upper(name) {
                case.add(name_at as usize, name_len as usize, count);
            }
            let name = names
                .name(i, name)
                .map_err(|_| Failure::Protocol("invalid response header name"))?;
            let value = head.slice(value_at as usize..(value_at + value_len) as usize);
            // Shares the head's bytes: no copy.
            let value = HeaderValue::from_maybe_shared(value)
                .map_err(|_| Failure::Protocol("invalid response header value"))?;
            match name {
                header::CONNECTION => {
                    let said = h1::ConnectionValue::parse(value.as_bytes());
                    close |= said.close;
                    keep_alive |= said.keep_alive;
                    // The router drops the hop-by-hop headers before the filters see
                    // the response; one that only says `keep-alive` or `close` (nearly
                    // every upstream's) names no other header to drop with it: it is
                    // not kept at all.
                    if !said.other {
                        continue;
                    }
                }
                header::CONTENT_LENGTH => framing_fields
                    .content_length(value.as_bytes())
                    .map_err(Failure::Protocol)?,
                header::TRANSFER_ENCODING => framing_fields.transfer_encoding(value.as_bytes()),
                _ => {}
            }
            headers.append(name, value);
        }
        h1::give_offsets(at);
        // A coding besides `chunked` would be lost on the way (the body is framed
        // anew), and a length beside `transfer-encoding` is the shape of response
        // splitting: Envoy answers both with 502 as well.
        if framing_fields.other_coding {
            return Err(Failure::Protocol("a transfer coding other than chunked"));
        }
        let h1::FramingFields {
            length, chunked, ..
        } = framing_fields;
        if chunked.is_some() && length.is_some() {
            return Err(Failure::Protocol(
                "both content-length and transfer-encoding",
            ));
        }
        if let Some(n) = framing_fields.copied_length() {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
        let framing = if head_only || matches!(status.as_u16(), 204 | 304) {
            Framing::Length(0)
        } else if let Some(chunked) = chunked {
            if version == Version::HTTP_10 {
                return Err(Failure::Protocol(
                    "transfer-encoding in an HTTP/1.0 response",
                ));
            }
            match chunked {
                true => Framing::Chunked,
                false => Framing::Close,
            }
        } else {
            match length {
                Some(len) => Framing::Length(len),
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
            case: (!case.is_empty()).then(|| Box::new(case)),
        }));
    }
}

/// A response body read from the upstream connection as the downstream asks for it.
/// Its end gives the connection back to the pool (when the exchange left it
/// reusable); dropped before its end, it closes the connection.
pub struct ResponseBody {
    conn: Option<Box<H1Conn>>,
    decoder: Decoder,
    /// The request body, if the upstream answered before it was all written (rare:
    /// boxed).
    writer: Option<Box<Writer<RequestBody>>>,
    keep_alive: bool,
    ended: bool,
    /// The head's names as they came, for Strait's server codec to write back. In
    /// the body, not the response's extensions: those cost three allocations. Boxed:
    /// the body moves several times on its way out (measured: +56 bytes each move
    /// cost more than the box).
    case: Option<Box<HeaderCase>>,
}

impl ResponseBody {
    /// The response head's names as the upstream wrote them (those with uppercase
    /// letters).
    pub(crate) fn header_case(&self) -> Option<&HeaderCase> {
        self.case.as_deref()
    }

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
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(None);
        };
        // The request body, if still going, keeps going while the response streams.
        if let Some(writer) = &mut self.writer {
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
        let frame = match ready!(self
            .decoder
            .poll_decode(&mut conn.read, &mut conn.stream, cx))
        {
            Decoded::Data(data) => Frame::data(data),
            Decoded::Trailers(trailers) => Frame::trailers(trailers),
            Decoded::End => {
                self.end();
                return Poll::Ready(None);
            }
            Decoded::Failed(_) => {
                self.ended = true;
                self.conn = None;
                return Poll::Ready(Some(Err(Failure::Broken)));
            }
            Decoded::Malformed(what) => {
                self.ended = true;
                self.conn = None;
                return Poll::Ready(Some(Err(Failure::Protocol(what))));
            }
        };
        // The last frame frees the connection at once: a codec may drop the body once
        // it has its end, without asking for more.
        if self.decoder.done() {
            self.end();
        }
        Poll::Ready(Some(Ok(frame)))
    }
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
        match self.decoder.remaining() {
            _ if self.ended => SizeHint::with_exact(0),
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
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
        let (head, framing) = encode_head(&req.body(body).expect("request"), None);
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
        let body = RequestBody::full(Bytes::from_static(b"x"), Some(http::HeaderMap::new()));
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
}
