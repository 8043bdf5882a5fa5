//! Clients: hyper HTTP/1.1 and h2c (prior knowledge) over one connection each, request
//! bodies generated on the fly, and raw TCP for what a well-behaved client never sends.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::backend::Echo;

/// Any single request or response exchange in the kit finishes within this.
pub const EXCHANGE: Duration = Duration::from_secs(30);

pub type ClientBody = UnsyncBoxBody<Bytes, Infallible>;

pub fn empty() -> ClientBody {
    Empty::new().boxed_unsync()
}

pub fn full(data: impl Into<Bytes>) -> ClientBody {
    Full::new(data.into()).boxed_unsync()
}

/// `total` bytes in 64 KiB chunks, generated as they are sent (never held in memory).
pub fn generated(total: u64) -> ClientBody {
    let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
    let stream = futures_util::stream::unfold(total, move |left| {
        let chunk = chunk.clone();
        async move {
            if left == 0 {
                return None;
            }
            let n = left.min(chunk.len() as u64);
            Some((Ok(Frame::data(chunk.slice(..n as usize))), left - n))
        }
    });
    StreamBody::new(stream).boxed_unsync()
}

/// `data`, then `trailers`.
pub fn with_trailers(data: impl Into<Bytes>, trailers: &[(&str, &str)]) -> ClientBody {
    let mut map = HeaderMap::new();
    for (k, v) in trailers {
        map.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    let frames = vec![Ok(Frame::data(data.into())), Ok(Frame::trailers(map))];
    StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    H1,
    /// h2c with prior knowledge.
    H2,
}

/// A response read to its end.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// What the echo backend saw; panics (with the body) if this is not an echo.
    pub fn echo(&self) -> Echo {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not an echo response ({e}): {} {}",
                self.status,
                self.text()
            )
        })
    }

    pub fn trailer(&self, name: &str) -> Option<&str> {
        self.trailers.as_ref()?.get(name)?.to_str().ok()
    }
}

enum Sender {
    H1(http1::SendRequest<ClientBody>),
    H2(http2::SendRequest<ClientBody>),
}

/// One client connection.
pub struct Client {
    sender: Sender,
    proto: Proto,
}

impl Client {
    pub async fn connect(addr: SocketAddr, proto: Proto) -> anyhow::Result<Client> {
        let stream = tokio::time::timeout(EXCHANGE, TcpStream::connect(addr)).await??;
        stream.set_nodelay(true)?;
        let io = TokioIo::new(stream);
        let sender = match proto {
            Proto::H1 => {
                let (sender, conn) = http1::Builder::new().handshake(io).await?;
                tokio::spawn(conn.with_upgrades());
                Sender::H1(sender)
            }
            Proto::H2 => {
                let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                    .initial_stream_window_size(4 << 20)
                    .initial_connection_window_size(8 << 20)
                    .handshake(io)
                    .await?;
                tokio::spawn(conn);
                Sender::H2(sender)
            }
        };
        Ok(Client { sender, proto })
    }

    /// Another handle on the same h2 connection (for concurrent streams).
    pub fn clone_h2(&self) -> Client {
        match &self.sender {
            Sender::H2(s) => Client {
                sender: Sender::H2(s.clone()),
                proto: Proto::H2,
            },
            Sender::H1(_) => panic!("an HTTP/1.1 connection carries one request at a time"),
        }
    }

    /// A request for `host` + `path` in the shape this connection's protocol wants:
    /// origin form plus `Host` for HTTP/1.1, absolute form (`:authority`) for h2.
    pub fn request(
        &self,
        method: Method,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: ClientBody,
    ) -> Request<ClientBody> {
        let mut b = Request::builder().method(method);
        b = match self.proto {
            Proto::H1 => b.uri(path).header("host", host),
            Proto::H2 => b
                .uri(format!("http://{host}{path}"))
                .version(Version::HTTP_2),
        };
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(body).expect("valid test request")
    }

    /// Sends and returns the response with its body still streaming.
    pub async fn send_streaming(
        &mut self,
        req: Request<ClientBody>,
    ) -> anyhow::Result<Response<Incoming>> {
        let fut = async {
            Ok(match &mut self.sender {
                Sender::H1(s) => {
                    s.ready().await?;
                    s.send_request(req).await?
                }
                Sender::H2(s) => {
                    s.ready().await?;
                    s.send_request(req).await?
                }
            })
        };
        tokio::time::timeout(EXCHANGE, fut).await?
    }

    /// Sends and reads the whole response, trailers included.
    pub async fn send(&mut self, req: Request<ClientBody>) -> anyhow::Result<Resp> {
        let resp = self.send_streaming(req).await?;
        read_response(resp).await
    }

    pub async fn get(&mut self, host: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
        let req = self.request(Method::GET, host, path, headers, empty());
        self.send(req)
            .await
            .unwrap_or_else(|e| panic!("GET {host}{path}: {e:#}"))
    }
}

pub async fn read_response(resp: Response<Incoming>) -> anyhow::Result<Resp> {
    let (parts, body) = resp.into_parts();
    let collected = tokio::time::timeout(EXCHANGE, body.collect()).await??;
    let trailers = collected.trailers().cloned();
    Ok(Resp {
        status: parts.status.as_u16(),
        version: parts.version,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    })
}

/// Reads a body to its end without keeping it: (bytes, trailers).
pub async fn count_body(mut body: Incoming) -> anyhow::Result<(u64, Option<HeaderMap>)> {
    let mut n = 0u64;
    let mut trailers = None;
    while let Some(frame) = tokio::time::timeout(EXCHANGE, body.frame()).await? {
        let frame = frame?;
        match frame.into_data() {
            Ok(d) => n += d.len() as u64,
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    Ok((n, trailers))
}

/// One request on a fresh connection.
pub async fn request(
    addr: SocketAddr,
    proto: Proto,
    method: Method,
    host: &str,
    path: &str,
) -> anyhow::Result<Resp> {
    let mut c = Client::connect(addr, proto).await?;
    let req = c.request(method, host, path, &[], empty());
    c.send(req).await
}

/// GET over HTTP/1.1 on a fresh connection.
pub async fn get(addr: SocketAddr, host: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut c = Client::connect(addr, Proto::H1).await.expect("connect");
    c.get(host, path, headers).await
}

/// GET over h2c (prior knowledge) on a fresh connection.
pub async fn get_h2(addr: SocketAddr, host: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut c = Client::connect(addr, Proto::H2).await.expect("connect");
    c.get(host, path, headers).await
}

/// A raw TCP connection for byte-exact requests.
pub struct RawConn {
    pub stream: TcpStream,
    pub read: Vec<u8>,
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> RawConn {
        let stream = tokio::time::timeout(EXCHANGE, TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect");
        RawConn {
            stream,
            read: Vec::new(),
        }
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("raw write");
    }

    /// Reads until the text read so far contains `pattern`; returns everything read.
    pub async fn read_until(&mut self, pattern: &str, timeout: Duration) -> String {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut buf = [0u8; 8192];
        while !String::from_utf8_lossy(&self.read).contains(pattern) {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => self.read.extend_from_slice(&buf[..n]),
                Err(_) => break,
            }
        }
        String::from_utf8_lossy(&self.read).into_owned()
    }

    /// Reads until the peer closes or `timeout`: (everything read, whether it closed).
    pub async fn read_to_close(&mut self, timeout: Duration) -> (String, bool) {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut buf = [0u8; 8192];
        let closed = loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break true,
                Ok(Ok(n)) => self.read.extend_from_slice(&buf[..n]),
                Err(_) => break false,
            }
        };
        (String::from_utf8_lossy(&self.read).into_owned(), closed)
    }
}

/// Writes `bytes` on a fresh connection and returns what came back before the peer
/// closed or 5 s passed, and whether it closed.
pub async fn send_raw_until_close(addr: SocketAddr, bytes: &[u8]) -> (String, bool) {
    let mut c = RawConn::connect(addr).await;
    c.write(bytes).await;
    c.read_to_close(Duration::from_secs(5)).await
}

/// Writes `bytes` on a fresh connection and returns what came back (see
/// `send_raw_until_close`).
pub async fn send_raw(addr: SocketAddr, bytes: &[u8]) -> String {
    send_raw_until_close(addr, bytes).await.0
}

/// GET over HTTP/1.1 on a fresh connection: the status once the head is in, and the
/// body read to its end, or the error that cut it short.
pub async fn request_headers(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, anyhow::Result<(u64, Option<HeaderMap>)>) {
    let mut c = Client::connect(addr, Proto::H1).await.expect("connect");
    let req = c.request(Method::GET, "h", path, headers, empty());
    let resp = c.send_streaming(req).await.expect("a response head");
    let status = resp.status().as_u16();
    (status, count_body(resp.into_body()).await)
}
