//! Strait's HTTP/2 server at the frame level: what a client that breaks the
//! protocol gets (RST_STREAM for a stream's error, GOAWAY naming a connection's),
//! the limits (oversize header blocks, the rapid-reset pattern), and flow control
//! holding a response until the client's window opens. Raw frames over a real
//! socket; requests are HPACK-encoded by hand (static-table indexes and literals
//! without indexing, so the encoder in this file is a few lines).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;

const PROTOCOL_ERROR: u32 = 0x1;
const CANCEL: u32 = 0x8;
const ENHANCE_YOUR_CALM: u32 = 0xb;

#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

impl Frame {
    fn code(&self) -> u32 {
        let at = if self.kind == GOAWAY { 4 } else { 0 };
        u32::from_be_bytes(self.payload[at..at + 4].try_into().unwrap())
    }
}

struct Conn {
    io: TcpStream,
    /// The server's SETTINGS, as (identifier, value) pairs.
    settings: Vec<(u16, u32)>,
}

impl Conn {
    /// Connects, sends the preface and `settings`, and reads the server's SETTINGS.
    async fn open(addr: SocketAddr, settings: &[(u16, u32)]) -> Conn {
        let io = TcpStream::connect(addr).await.unwrap();
        let mut c = Conn {
            io,
            settings: Vec::new(),
        };
        c.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
        let mut payload = Vec::new();
        for (id, value) in settings {
            payload.extend_from_slice(&id.to_be_bytes());
            payload.extend_from_slice(&value.to_be_bytes());
        }
        c.send(SETTINGS, 0, 0, &payload).await;
        let first = c.next().await.expect("the server's SETTINGS");
        assert_eq!((first.kind, first.flags), (SETTINGS, 0), "{first:?}");
        c.settings = first
            .payload
            .chunks_exact(6)
            .map(|s| {
                let id = u16::from_be_bytes([s[0], s[1]]);
                (id, u32::from_be_bytes([s[2], s[3], s[4], s[5]]))
            })
            .collect();
        c.send(SETTINGS, ACK, 0, &[]).await;
        c
    }

    async fn write(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.unwrap();
    }

    async fn send(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        self.write(&frame(kind, flags, stream, payload)).await;
    }

    /// The next frame, or `None` when the server closed the connection; 10 s at most.
    async fn next(&mut self) -> Option<Frame> {
        let read = async {
            let mut head = [0u8; 9];
            self.io.read_exact(&mut head).await.ok()?;
            let len = (head[0] as usize) << 16 | (head[1] as usize) << 8 | head[2] as usize;
            let mut payload = vec![0; len];
            self.io.read_exact(&mut payload).await.ok()?;
            Some(Frame {
                kind: head[3],
                flags: head[4],
                stream: u32::from_be_bytes(head[5..9].try_into().unwrap()) & 0x7fff_ffff,
                payload,
            })
        };
        timeout(Duration::from_secs(10), read)
            .await
            .expect("a frame within 10 s")
    }

    /// Frames until one `want` accepts, skipping SETTINGS ACKs, WINDOW_UPDATEs and
    /// PING ACKs.
    async fn until(&mut self, want: impl Fn(&Frame) -> bool) -> Frame {
        loop {
            let f = self.next().await.expect("the connection closed");
            if want(&f) {
                return f;
            }
            let housekeeping = matches!(f.kind, SETTINGS | WINDOW_UPDATE | PING);
            assert!(housekeeping, "unexpected frame {f:?}");
        }
    }

    /// A GET of `/direct` on stream `id`, answered 200 (its HEADERS read).
    async fn get_direct(&mut self, id: u32) {
        self.get(id, "/direct", &[]).await;
        let head = self.until(|f| f.kind == HEADERS).await;
        assert_eq!((head.stream, status_of(&head)), (id, 200));
    }

    /// A GET of `path` on stream `id` with `extra` fields, ending the stream.
    async fn get(&mut self, id: u32, path: &str, extra: &[(&str, &str)]) {
        let block = request_block(path, extra);
        self.send(HEADERS, END_HEADERS | END_STREAM, id, &block)
            .await;
    }
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK: `:method GET`, `:scheme http` (static indexes), `:authority h` and
/// `:path` (literals with a static name), then `extra` as literals with new names.
fn request_block(path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    request_block_at("h", path, extra)
}

/// As [`request_block`], with `:authority` given.
fn request_block_at(authority: &str, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut b = vec![0x82, 0x86];
    literal(&mut b, Some(1), "", authority);
    literal(&mut b, Some(4), "", path);
    for (name, value) in extra {
        literal(&mut b, None, name, value);
    }
    b
}

/// A literal field without indexing (RFC 7541 §6.2.2), raw strings.
fn literal(b: &mut Vec<u8>, index: Option<u8>, name: &str, value: &str) {
    match index {
        Some(i) => b.push(i),
        None => {
            b.push(0);
            string(b, name);
        }
    }
    string(b, value);
}

fn string(b: &mut Vec<u8>, s: &str) {
    // A 7-bit prefix integer (RFC 7541 §5.1).
    let mut len = s.len();
    if len < 127 {
        b.push(len as u8);
    } else {
        b.push(127);
        len -= 127;
        while len >= 128 {
            b.push((len % 128 + 128) as u8);
            len /= 128;
        }
        b.push(len as u8);
    }
    b.extend_from_slice(s.as_bytes());
}

/// A route answering `/direct` itself with `body`; the rest goes to `backend`.
async fn strait(backend: &Backend, body: &str) -> Strait {
    Strait::start(&config(backend, body).build()).await
}

/// As [`strait`], with `hcm` added to the connection manager.
async fn strait_with(backend: &Backend, hcm: &str) -> Strait {
    Strait::start(&config(backend, "direct").hcm(hcm).build()).await
}

fn config(backend: &Backend, body: &str) -> Bootstrap {
    let vhosts = format!(
        r#"
- name: d
  domains: ["*"]
  routes:
  - match: {{path: /direct}}
    direct_response: {{status: 200, body: {{inline_string: "{body}"}}}}
  - match: {{prefix: /}}
    route: {{cluster: up}}
"#
    );
    Bootstrap::new(&vhosts).cluster("up", backend.addr())
}

/// A response's `:status` is the first field; Strait's encoder indexes 200 (0x88)
/// and writes other codes as raw literals.
fn status_of(headers: &Frame) -> u16 {
    assert_eq!(headers.kind, HEADERS, "{headers:?}");
    match headers.payload.first() {
        Some(0x88) => 200,
        _ => {
            let text = String::from_utf8_lossy(&headers.payload);
            let code = text
                .as_bytes()
                .windows(3)
                .find(|w| w.iter().all(u8::is_ascii_digit))
                .expect("a status code");
            std::str::from_utf8(code).unwrap().parse().unwrap()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_request_resets_its_stream_only() {
    let b = Backend::echo("b").await;
    let s = strait(&b, "direct").await;
    let mut c = Conn::open(s.main_addr().await, &[]).await;
    // Uppercase names are malformed in HTTP/2 (RFC 9113 §8.2.1), and so are
    // connection-specific fields (§8.2.2).
    c.get(1, "/direct", &[("X-Upper", "1")]).await;
    let rst = c.until(|f| f.kind == RST_STREAM).await;
    assert_eq!((rst.stream, rst.code()), (1, PROTOCOL_ERROR));
    c.get(3, "/direct", &[("connection", "close")]).await;
    let rst = c.until(|f| f.kind == RST_STREAM).await;
    assert_eq!((rst.stream, rst.code()), (3, PROTOCOL_ERROR));
    // A fragment, which `http::Uri` would drop silently (refused on HTTP/1.1 too),
    // and userinfo in `:authority` (§8.3.1).
    c.get(5, "/direct#frag", &[]).await;
    let rst = c.until(|f| f.kind == RST_STREAM).await;
    assert_eq!((rst.stream, rst.code()), (5, PROTOCOL_ERROR));
    let block = request_block_at("user@h", "/direct", &[]);
    c.send(HEADERS, END_HEADERS | END_STREAM, 7, &block).await;
    let rst = c.until(|f| f.kind == RST_STREAM).await;
    assert_eq!((rst.stream, rst.code()), (7, PROTOCOL_ERROR));
    // The connection serves the next stream.
    c.get(9, "/direct", &[("x-fine", "1")]).await;
    let head = c.until(|f| f.kind == HEADERS).await;
    assert_eq!((head.stream, status_of(&head)), (9, 200));
    let data = c.until(|f| f.kind == DATA).await;
    assert_eq!(data.payload, b"direct");
    assert_eq!(data.flags & END_STREAM, END_STREAM);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_error_is_a_goaway_that_names_it() {
    let b = Backend::echo("b").await;
    let s = strait(&b, "direct").await;
    let mut c = Conn::open(s.main_addr().await, &[]).await;
    c.send(PING, 0, 0, b"12345678").await;
    let pong = c.until(|f| f.kind == PING).await;
    assert_eq!(
        (pong.flags, pong.payload.as_slice()),
        (ACK, &b"12345678"[..])
    );
    c.send(DATA, 0, 0, b"x").await;
    let goaway = c.until(|f| f.kind == GOAWAY).await;
    assert_eq!(goaway.code(), PROTOCOL_ERROR);
    let why = String::from_utf8_lossy(&goaway.payload[8..]).into_owned();
    assert!(why.contains("DATA frame on stream 0"), "{why}");
    assert!(
        c.next().await.is_none(),
        "the connection closes after GOAWAY"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_header_block_gets_431_and_the_connection_goes_on() {
    let b = Backend::echo("b").await;
    let s = strait(&b, "direct").await;
    let mut c = Conn::open(s.main_addr().await, &[]).await;
    // 70 KiB of fields against the default max_request_headers_kb (60), in a
    // HEADERS frame and CONTINUATIONs of 16 KiB.
    let big = "v".repeat(10 * 1024);
    let fields: Vec<(String, &str)> = (0..7)
        .map(|i| (format!("x-big-{i}"), big.as_str()))
        .collect();
    let fields: Vec<(&str, &str)> = fields.iter().map(|(n, v)| (n.as_str(), *v)).collect();
    let block = request_block("/direct", &fields);
    let chunks: Vec<&[u8]> = block.chunks(16 * 1024).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let (kind, mut flags) = match i {
            0 => (HEADERS, END_STREAM),
            _ => (CONTINUATION, 0),
        };
        if i + 1 == chunks.len() {
            flags |= END_HEADERS;
        }
        c.send(kind, flags, 1, chunk).await;
    }
    let head = c.until(|f| f.kind == HEADERS).await;
    assert_eq!((head.stream, status_of(&head)), (1, 431));
    c.get_direct(3).await;
}

/// CVE-2023-44487: streams opened and reset at once make a proxy start upstream
/// requests it then cancels. Past 100 such streams, more than half of a
/// connection's, Strait ends the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_ends_the_connection() {
    let b = Backend::echo("b").await;
    let s = strait(&b, "direct").await;
    let mut c = Conn::open(s.main_addr().await, &[]).await;
    let mut burst = Vec::new();
    for i in 0..300u32 {
        let id = 2 * i + 1;
        let block = request_block("/slow", &[("x-backend-delay-ms", "30000")]);
        burst.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &block));
        burst.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
    }
    c.write(&burst).await;
    let goaway = c.until(|f| f.kind == GOAWAY).await;
    assert_eq!(goaway.code(), ENHANCE_YOUR_CALM);
    let why = String::from_utf8_lossy(&goaway.payload[8..]).into_owned();
    assert!(why.contains("reset by the client"), "{why}");
}

/// A response larger than the client's stream window waits for its
/// WINDOW_UPDATE, then finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_waits_for_the_clients_window() {
    let b = Backend::echo("b").await;
    let body = "0123456789".repeat(100);
    let s = strait(&b, &body).await;
    // SETTINGS_INITIAL_WINDOW_SIZE 100.
    let mut c = Conn::open(s.main_addr().await, &[(0x4, 100)]).await;
    c.get(1, "/direct", &[]).await;
    let head = c.until(|f| f.kind == HEADERS).await;
    assert_eq!(status_of(&head), 200);
    let first = c.until(|f| f.kind == DATA).await;
    assert_eq!(first.payload, body.as_bytes()[..100]);
    assert_eq!(first.flags & END_STREAM, 0);
    // Nothing more until the window opens.
    let more = timeout(Duration::from_millis(300), c.next()).await;
    assert!(more.is_err(), "{more:?}");
    c.send(WINDOW_UPDATE, 0, 1, &900u32.to_be_bytes()).await;
    let mut rest = Vec::new();
    loop {
        let f = c.until(|f| f.kind == DATA).await;
        rest.extend_from_slice(&f.payload);
        if f.flags & END_STREAM != 0 {
            break;
        }
    }
    assert_eq!(rest, body.as_bytes()[100..]);
}

/// A connection reuses what its last request parsed (authority, path, values by
/// position) only when the bytes are the same: requests that differ get their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_on_a_connection_keeps_its_own_fields() {
    let b = Backend::echo("b").await;
    let s = strait(&b, "direct").await;
    let mut c = Client::connect(s.main_addr().await, Proto::H2)
        .await
        .unwrap();
    let cases = [
        ("one.test", "/a?x=1", "1", "kept"),
        ("one.test", "/a?x=1", "1", "kept"),
        ("two.test", "/b", "22", "kept"),
        ("two.test", "/b", "3", "other"),
    ];
    for (host, path, v, w) in cases {
        let r = c.get(host, path, &[("x-v", v), ("x-w", w)]).await;
        assert_eq!(r.status, 200);
        let e = r.echo();
        assert_eq!((e.host.as_str(), e.path.as_str()), (host, path));
        assert_eq!((e.header("x-v"), e.header("x-w")), (Some(v), Some(w)));
    }
}

/// A client that asks for more than the connection's output may hold (256 KiB) and
/// reads nothing until it has sent every request: Strait stops taking response
/// chunks while its output is full, and every response still arrives whole once
/// the client reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_wait_for_a_client_that_reads_late() {
    let b = Backend::echo("b").await;
    let s = strait(&b, "direct").await;
    // Windows that never stop the server: only its own output bound holds it back.
    let mut c = Conn::open(s.main_addr().await, &[(0x4, 0x7fff_ffff)]).await;
    c.send(WINDOW_UPDATE, 0, 0, &0x7fff_0000u32.to_be_bytes())
        .await;
    const STREAMS: u32 = 100;
    const SIZE: usize = 64 * 1024;
    let size = SIZE.to_string();
    for i in 0..STREAMS {
        c.get(2 * i + 1, "/big", &[("x-backend-body-bytes", &size)])
            .await;
    }
    // The answers pile up: far more than the socket and the output bound hold.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut bytes = 0;
    let mut ended = 0;
    while ended < STREAMS {
        let f = c.until(|f| matches!(f.kind, HEADERS | DATA)).await;
        if f.kind == HEADERS {
            assert_eq!(status_of(&f), 200);
        }
        bytes += if f.kind == DATA { f.payload.len() } else { 0 };
        if f.flags & END_STREAM != 0 {
            ended += 1;
        }
    }
    assert_eq!(bytes, STREAMS as usize * SIZE);
}

/// A client that leaves before its answer is logged as Envoy logs it, status 0 and
/// the client's flag: `DR` (`http2.remote_reset`) when it reset its HTTP/2 stream, `DC`
/// (`downstream_remote_disconnect`) when it closed its connection, HTTP/2 or HTTP/1.1;
/// and counted in `downstream_rq_rx_reset` and `downstream_cx_destroy_remote_active_rq`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_before_its_answer_is_logged_as_gone() {
    let b = Backend::echo("b").await;
    let (log, hcm) =
        access_log("%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%");
    let s = strait_with(&b, &hcm).await;
    let addr = s.main_addr().await;
    let slow = [("x-backend-delay-ms", "2000")];
    let mut c = Conn::open(addr, &[]).await;
    c.get(1, "/reset", &slow).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.send(RST_STREAM, 0, 1, &CANCEL.to_be_bytes()).await;
    // The connection goes on: another stream is answered on it.
    c.get_direct(3).await;
    c.get(5, "/h2-closed", &slow).await;
    // A body shorter than its content-length, once the router has the stream: the
    // stream is reset (PROTOCOL_ERROR) and logged as Envoy 1.40 logs it.
    let block = request_block("/short-body", &[("content-length", "5"), slow[0]]);
    c.send(HEADERS, END_HEADERS, 7, &block).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.send(DATA, END_STREAM, 7, b"abc").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(c);
    let mut h1 = RawConn::connect(addr).await;
    h1.write(b"GET /h1-closed HTTP/1.1\r\nHost: h\r\nx-backend-delay-ms: 2000\r\n\r\n")
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(h1);
    let mut lines = log_lines(&log, 5).await;
    lines.sort();
    assert_eq!(
        lines,
        [
            "/direct 200 - direct_response",
            "/h1-closed 0 DC downstream_remote_disconnect",
            "/h2-closed 0 DC downstream_remote_disconnect",
            "/reset 0 DR http2.remote_reset",
            "/short-body 0 DPE http2.remote_reset",
        ]
    );
    // Envoy's counters of the same: one stream reset, two connections closed with a
    // request unanswered.
    assert_eq!(s.stat("http.ingress.downstream_rq_rx_reset").await, Some(1));
    assert_eq!(
        s.stat("http.ingress.downstream_cx_destroy_remote_active_rq")
            .await,
        Some(2)
    );
}

/// Connections that send random frames (random types, flags, streams and payloads,
/// after a valid preface) end however the protocol says, each on its own: the
/// proxy keeps serving everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_frames_end_only_their_own_connection() {
    let b = Backend::echo("b").await;
    let s = strait(&b, "direct").await;
    let addr = s.main_addr().await;
    let mut good = Conn::open(addr, &[]).await;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand = move || {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        seed.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    for _ in 0..200 {
        let mut io = TcpStream::connect(addr).await.unwrap();
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(frame(SETTINGS, 0, 0, &[]));
        for _ in 0..1 + rand() % 8 {
            let kind = (rand() % 11) as u8;
            let flags = (rand() % 256) as u8;
            let stream = (rand() % 6) as u32;
            let len = (rand() % 48) as usize;
            let payload: Vec<u8> = (0..len).map(|_| rand() as u8).collect();
            bytes.extend(frame(kind, flags, stream, &payload));
        }
        io.write_all(&bytes).await.unwrap();
        // Whatever comes back, within a bound; then the client goes.
        let mut sink = [0u8; 4096];
        let _ = timeout(Duration::from_millis(20), io.read(&mut sink)).await;
    }
    // A connection opened before, and one opened after, are served.
    good.get_direct(1).await;
    Conn::open(addr, &[]).await.get_direct(1).await;
    // No connection task died of a panic (tokio would have kept the worker alive).
    let stderr = s.stderr();
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// The connection manager's `http2_protocol_options` are what the server advertises
/// and enforces: past `max_concurrent_streams` a stream is refused (REFUSED_STREAM,
/// safe to retry), and the others are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_protocol_options_set_the_servers_settings() {
    let b = Backend::echo("b").await;
    let hcm = "http2_protocol_options: {max_concurrent_streams: 2, initial_stream_window_size: 70000, initial_connection_window_size: 1048576}";
    let s = strait_with(&b, hcm).await;
    let mut c = Conn::open(s.main_addr().await, &[]).await;
    // SETTINGS_MAX_CONCURRENT_STREAMS and SETTINGS_INITIAL_WINDOW_SIZE.
    assert!(c.settings.contains(&(0x3, 2)), "{:?}", c.settings);
    assert!(c.settings.contains(&(0x4, 70_000)), "{:?}", c.settings);
    // The connection window grows from the protocol's 65,535 to 1 MiB.
    let update = c.until(|f| f.kind == WINDOW_UPDATE).await;
    assert_eq!(update.stream, 0);
    assert_eq!(update.code(), 1_048_576 - 65_535);
    // Two slow streams take the limit; a third is refused, then served once one ends.
    let slow = [("x-backend-delay-ms", "300")];
    c.get(1, "/slow", &slow).await;
    c.get(3, "/slow", &slow).await;
    c.get(5, "/direct", &[]).await;
    let rst = c.until(|f| f.kind == RST_STREAM).await;
    assert_eq!((rst.stream, rst.code()), (5, 0x7));
    let mut ended = Vec::new();
    while ended.len() < 2 {
        let f = c.until(|f| matches!(f.kind, HEADERS | DATA)).await;
        if f.flags & END_STREAM != 0 {
            ended.push(f.stream);
        }
    }
    ended.sort();
    assert_eq!(ended, [1, 3]);
    c.get_direct(7).await;
}

/// A response head larger than the client's frame size goes out as HEADERS and
/// CONTINUATION frames; a client that allows no HPACK table (SETTINGS_HEADER_TABLE_SIZE
/// 0) gets a table size update of 0 first, and nothing indexed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_response_head_spans_continuation_frames() {
    let b = Backend::echo("b").await;
    let big = "v".repeat(40_000);
    let vhosts = format!(
        r#"
- name: d
  domains: ["*"]
  routes:
  - match: {{path: /big-head}}
    direct_response: {{status: 200, body: {{inline_string: "ok"}}}}
    response_headers_to_add:
    - header: {{key: x-big, value: "{big}"}}
"#
    );
    let config = Bootstrap::new(&vhosts).cluster("up", b.addr());
    let s = Strait::start(&config.build()).await;
    let mut c = Conn::open(s.main_addr().await, &[(0x1, 0)]).await;
    for id in [1, 3] {
        c.get(id, "/big-head", &[]).await;
        let first = c.until(|f| f.kind == HEADERS).await;
        assert_eq!((first.stream, first.flags & END_HEADERS), (id, 0));
        assert!(first.payload.len() <= 16_384);
        let mut block = first.payload;
        loop {
            let f = c.next().await.expect("a CONTINUATION");
            assert_eq!((f.kind, f.stream), (CONTINUATION, id), "{f:?}");
            block.extend_from_slice(&f.payload);
            if f.flags & END_HEADERS != 0 {
                break;
            }
        }
        if id == 1 {
            // The size update comes first, on the first block after the setting.
            assert_eq!(block[0], 0x20, "{:?}", &block[..8]);
        }
        // Raw strings: the value is there as sent, in each block (nothing indexed).
        let at = block.windows(big.len()).position(|w| w == big.as_bytes());
        assert!(at.is_some(), "stream {id}: the value is not in the block");
        let data = c.until(|f| f.kind == DATA).await;
        assert_eq!(data.payload, b"ok");
    }
}

/// A client may split `cookie` into one field per pair (RFC 9113 §8.2.3, for HPACK):
/// they go on as one `; `-joined field, as the RFC asks before an HTTP/1.1 hop and as
/// Envoy passes them. Copies of one `content-length` go on as one line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_cookies_and_length_copies_go_upstream_as_one_field() {
    let b = Backend::echo("b").await;
    let s = strait(&b, "direct").await;
    let mut c = Client::connect(s.main_addr().await, Proto::H2)
        .await
        .expect("h2c connect");
    let r = c
        .get(
            "h",
            "/",
            &[("cookie", "a=1"), ("cookie", "b=2"), ("x-other", "1")],
        )
        .await;
    assert_eq!(r.status, 200);
    let e = r.echo();
    assert_eq!(e.version, "HTTP/1.1");
    assert_eq!(e.header("cookie"), Some("a=1; b=2"), "{:?}", e.headers);
    let req = c.request(
        http::Method::POST,
        "h",
        "/",
        &[("content-length", "3"), ("content-length", "3")],
        full("abc"),
    );
    let e = c.send(req).await.expect("response").echo();
    assert_eq!(e.header("content-length"), Some("3"), "{:?}", e.headers);
    assert_eq!(e.body, "abc");
}
