//! Idle HTTP/1.1 keep-alive connections release their codec state (hyper's buffers)
//! after a quiet second and pick up where they were on the next byte; nothing in
//! flight is ever cut by it: a partial head, a response the client reads slowly, a
//! response body that pauses. The connection idle timeout still closes them, and an
//! open HTTP/2 connection too; so does a drain.
//!
//! Upstream, an HTTP/1.1 connection idle in the pool is parked as a bare socket and
//! gets a new codec when a request needs it; a parked socket the upstream closes is
//! dropped from the pool.

mod common;

use std::time::Duration;

use common::*;

const RELEASED: &str = "http.ingress.downstream_cx_idle_released";

/// Long enough for a quiet connection to be released (1 s quiet, seen at a 1 s tick).
const PAST_RELEASE: Duration = Duration::from_millis(2_600);

/// Reads until `n` responses from the raw recorder (`ok` bodies) are in.
async fn read_responses(c: &mut RawConn, n: usize) -> String {
    use tokio::io::AsyncReadExt;
    within(Duration::from_secs(5), "the responses", async {
        let mut buf = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&c.read).into_owned();
            if text.matches("\r\n\r\nok").count() >= n {
                return text;
            }
            let got = c.stream.read(&mut buf).await.expect("read");
            assert!(got > 0, "closed after {text}");
            c.read.extend_from_slice(&buf[..got]);
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_released_and_serves_again_with_header_case_kept() {
    let b = Backend::raw_recorder("b").await;
    let s = Strait::start(&Bootstrap::catch_all("b").cluster("b", b.addr()).build()).await;
    let mut c = RawConn::connect(s.main_addr().await).await;
    c.write(b"GET /one HTTP/1.1\r\nHost: h\r\nX-Mixed-Case: 1\r\n\r\n")
        .await;
    let first = c.read_until("\r\n\r\nok", Duration::from_secs(5)).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    s.wait_stat(RELEASED, |v| v == 1).await;

    // Two pipelined requests on the released connection: both answered, in order,
    // each with the header case the client wrote.
    c.read.clear();
    c.write(
        b"GET /two HTTP/1.1\r\nHost: h\r\nX-Mixed-Case: 2\r\n\r\nGET /three HTTP/1.1\r\nHost: h\r\nX-Mixed-Case: 3\r\n\r\n",
    )
    .await;
    let text = read_responses(&mut c, 2).await;
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
    let heads = b.heads();
    assert_eq!(heads.len(), 3, "{heads:?}");
    for (i, path) in ["/one", "/two", "/three"].iter().enumerate() {
        assert!(heads[i].starts_with(&format!("GET {path} ")), "{heads:?}");
        assert!(
            heads[i].contains(&format!("X-Mixed-Case: {}", i + 1)),
            "{heads:?}"
        );
    }
    assert_eq!(s.stat("http.ingress.downstream_cx_total").await, Some(1));
    assert_eq!(
        s.stat("http.ingress.downstream_cx_http1_total").await,
        Some(1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_cut_by_a_long_pause_is_not_released_away() {
    let b = Backend::echo("b").await;
    let s = Strait::start(&Bootstrap::catch_all("b").cluster("b", b.addr()).build()).await;
    let mut c = RawConn::connect(s.main_addr().await).await;
    c.write(b"GET /first HTTP/1.1\r\nHost: h\r\n\r\n").await;
    c.read_until("\"body\"", Duration::from_secs(5)).await;
    s.wait_stat(RELEASED, |v| v == 1).await;

    // Half a head, a pause past the release time, the rest: one request, answered.
    c.read.clear();
    c.write(b"GET /second HTTP/1.1\r\nHo").await;
    tokio::time::sleep(PAST_RELEASE).await;
    c.write(b"st: h\r\n\r\n").await;
    let text = c.read_until("\"body\"", Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"path\":\"/second\""), "{text}");
    assert_eq!(s.stat(RELEASED).await, Some(1), "not released mid-head");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_read_slowly_or_paused_is_not_cut() {
    let b = Backend::echo("b").await;
    let s = Strait::start(&Bootstrap::catch_all("b").cluster("b", b.addr()).build()).await;
    let addr = s.main_addr().await;

    // 32 MiB the client does not read for a while: the proxy holds output the whole
    // time, and the connection keeps its codec.
    const BIG: u64 = 32 << 20;
    let mut c = RawConn::connect(addr).await;
    c.write(format!("GET / HTTP/1.1\r\nHost: h\r\nx-backend-body-bytes: {BIG}\r\n\r\n").as_bytes())
        .await;
    tokio::time::sleep(PAST_RELEASE).await;
    let (total, tail) = within(Duration::from_secs(20), "the slow response", async {
        use tokio::io::AsyncReadExt;
        let (mut total, mut tail) = (0u64, Vec::new());
        let mut buf = vec![0u8; 1 << 16];
        while !tail.ends_with(b"\r\n0\r\n\r\n") {
            let n = c.stream.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed early after {total} bytes");
            total += n as u64;
            tail.extend_from_slice(&buf[..n]);
            tail.drain(..tail.len().saturating_sub(16));
        }
        (total, tail)
    })
    .await;
    assert!(total > BIG, "{total} bytes, the body ended: {tail:?}");
    drop(c);

    // A body that pauses longer than the release time between its chunks.
    let mut c = RawConn::connect(addr).await;
    c.write(b"GET / HTTP/1.1\r\nHost: h\r\nx-backend-body-bytes: 3072\r\nx-backend-chunk-delay-ms: 1500\r\n\r\n")
        .await;
    let text = c.read_until("\r\n0\r\n\r\n", Duration::from_secs(10)).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("\r\n0\r\n\r\n"), "the body ends: {text}");
    // The connection still serves afterwards.
    c.read.clear();
    c.write(b"GET /after HTTP/1.1\r\nHost: h\r\n\r\n").await;
    let text = c.read_until("\"body\"", Duration::from_secs(5)).await;
    assert!(text.contains("\"path\":\"/after\""), "{text}");
    assert_eq!(
        s.stat(RELEASED).await,
        Some(0),
        "nothing released mid-response"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idle_timeout_closes_a_released_connection() {
    let b = Backend::echo("b").await;
    let config = Bootstrap::catch_all("b")
        .cluster("b", b.addr())
        .hcm("common_http_protocol_options: {idle_timeout: 3s}")
        .build();
    let s = Strait::start(&config).await;
    let mut c = RawConn::connect(s.main_addr().await).await;
    c.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").await;
    c.read_until("\"body\"", Duration::from_secs(5)).await;
    s.wait_stat(RELEASED, |v| v == 1).await;
    let (_, closed) = c.read_to_close(Duration::from_secs(10)).await;
    assert!(closed, "the idle timeout closed the connection");
    assert_eq!(
        s.stat("http.ingress.downstream_cx_idle_timeout").await,
        Some(1)
    );
    s.wait_stat("http.ingress.downstream_cx_active", |v| v == 0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_closes_released_connections_and_one_that_goes_idle_after_it() {
    let b = Backend::echo("b").await;
    let s = Strait::start(&Bootstrap::catch_all("b").cluster("b", b.addr()).build()).await;
    let addr = s.main_addr().await;
    // One connection released before the drain; one mid-conversation when it starts.
    let mut released = RawConn::connect(addr).await;
    released.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").await;
    released
        .read_until("\"body\"", Duration::from_secs(5))
        .await;
    s.wait_stat(RELEASED, |v| v == 1).await;
    let mut busy = RawConn::connect(addr).await;
    busy.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").await;
    busy.read_until("\"body\"", Duration::from_secs(5)).await;

    assert_eq!(s.admin_post("/drain_listeners").await.0, 200);
    let (_, closed) = released.read_to_close(Duration::from_secs(5)).await;
    assert!(closed, "the drain closed the released connection");
    // The other one is closed by the drain whichever way it goes: by its codec, or
    // when it goes idle after the drain began.
    let (_, closed) = busy.read_to_close(Duration::from_secs(5)).await;
    assert!(closed, "the drain closed the connection that was busy");
    s.wait_stat("http.ingress.downstream_cx_active", |v| v == 0)
        .await;
    assert_eq!(
        s.stat("http.ingress.downstream_cx_idle_timeout").await,
        Some(0),
        "a drain is not an idle timeout"
    );
}

const UPSTREAM_RELEASED: &str = "cluster.b.upstream_cx_idle_released";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_upstream_connection_is_parked_and_used_again() {
    let b = Backend::idle_closing("b", Duration::from_secs(60)).await;
    let s = Strait::start(&Bootstrap::catch_all("b").cluster("b", b.addr()).build()).await;
    let mut c = RawConn::connect(s.main_addr().await).await;
    c.write(b"GET /one HTTP/1.1\r\nHost: h\r\nX-Mixed-Case: 1\r\n\r\n")
        .await;
    c.read_until("\r\n\r\nok", Duration::from_secs(5)).await;
    s.wait_stat(UPSTREAM_RELEASED, |v| v == 1).await;
    assert_eq!(s.stat("cluster.b.upstream_cx_active").await, Some(1));

    // The parked socket serves the next request, with a new codec that keeps the
    // header case, and parks again once idle.
    c.read.clear();
    c.write(b"GET /two HTTP/1.1\r\nHost: h\r\nX-Mixed-Case: 2\r\n\r\n")
        .await;
    let text = c.read_until("\r\n\r\nok", Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(b.connections(), 1, "the parked connection was not reused");
    let heads = b.heads();
    assert_eq!(heads.len(), 2, "{heads:?}");
    assert!(heads[1].starts_with("GET /two "), "{heads:?}");
    assert!(heads[1].contains("X-Mixed-Case: 2"), "{heads:?}");
    s.wait_stat(UPSTREAM_RELEASED, |v| v == 2).await;
    assert_eq!(s.stat("cluster.b.upstream_cx_total").await, Some(1));
}

/// One request through `s` to the backend, which must then be parked and dropped from
/// the pool; a second request gets a new upstream connection.
async fn parked_then_dropped(s: &Strait, b: &Backend) {
    let mut c = RawConn::connect(s.main_addr().await).await;
    c.write(b"GET /one HTTP/1.1\r\nHost: h\r\n\r\n").await;
    c.read_until("\r\n\r\nok", Duration::from_secs(5)).await;
    s.wait_stat(UPSTREAM_RELEASED, |v| v == 1).await;
    // Nobody reads a parked socket: the heartbeat must notice and let it go.
    s.wait_stat("cluster.b.upstream_cx_active", |v| v == 0)
        .await;

    c.read.clear();
    c.write(b"GET /two HTTP/1.1\r\nHost: h\r\n\r\n").await;
    let text = c.read_until("\r\n\r\nok", Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(b.connections(), 2);
    assert_eq!(b.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_the_upstream_closes_leaves_the_pool() {
    // Parked after ~1 s idle, closed by the upstream at 2 s.
    let b = Backend::idle_closing("b", Duration::from_secs(2)).await;
    let s = Strait::start(&Bootstrap::catch_all("b").cluster("b", b.addr()).build()).await;
    parked_then_dropped(&s, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_idle_timeout_closes_a_parked_connection() {
    // Parked after ~1 s, closed at the cluster's 2 s idle timeout, though the upstream
    // would have kept it for a minute.
    let b = Backend::idle_closing("b", Duration::from_secs(60)).await;
    let cluster = format!(
        "{}  common_http_protocol_options: {{idle_timeout: 2s}}\n",
        cluster_yaml("b", &[(b.addr(), 1)], false)
    );
    let s = Strait::start(&Bootstrap::catch_all("b").cluster_raw(&cluster).build()).await;
    parked_then_dropped(&s, &b).await;
}

/// An HTTP/2 prior-knowledge connection by hyper's client (which answers the
/// server's pings, as the graceful GOAWAY needs), with no request: the task ends
/// when the connection closes.
async fn h2c_connection(s: &Strait) -> tokio::task::JoinHandle<hyper::Result<()>> {
    let stream = tokio::net::TcpStream::connect(s.main_addr().await)
        .await
        .unwrap();
    let io = hyper_util::rt::TokioIo::new(stream);
    let (sender, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake::<_, http_body_util::Empty<bytes::Bytes>>(io)
            .await
            .unwrap();
    tokio::spawn(async move {
        let _sender = sender;
        conn.await
    })
}

/// A running codec (HTTP/2 keeps its connection's state) still meets the idle
/// timeout and the drain: both come to it through the worker's idle list, which the
/// heartbeat sweeps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_h2_connection_meets_its_idle_timeout() {
    let b = Backend::echo("b").await;
    let config = Bootstrap::catch_all("b")
        .cluster("b", b.addr())
        .hcm("common_http_protocol_options: {idle_timeout: 1s}")
        .build();
    let s = Strait::start(&config).await;
    let conn = h2c_connection(&s).await;
    within(Duration::from_secs(6), "the idle timeout's close", conn)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        s.stat("http.ingress.downstream_cx_idle_timeout").await,
        Some(1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_closes_an_open_h2_connection() {
    let b = Backend::echo("b").await;
    let s = Strait::start(&Bootstrap::catch_all("b").cluster("b", b.addr()).build()).await;
    let conn = h2c_connection(&s).await;
    s.wait_stat("http.ingress.downstream_cx_active", |v| v == 1)
        .await;
    assert_eq!(s.admin_post("/drain_listeners").await.0, 200);
    within(Duration::from_secs(5), "the drain's close", conn)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        s.stat("http.ingress.downstream_cx_idle_timeout").await,
        Some(0),
        "a drain is not an idle timeout"
    );
}

/// A connection that has sent nothing yet (the wait for its first bytes, before any
/// codec) is closed by a drain too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_closes_a_connection_that_sent_nothing() {
    let b = Backend::echo("b").await;
    let s = Strait::start(&Bootstrap::catch_all("b").cluster("b", b.addr()).build()).await;
    let mut c = RawConn::connect(s.main_addr().await).await;
    s.wait_stat("http.ingress.downstream_cx_active", |v| v == 1)
        .await;
    assert_eq!(s.admin_post("/drain_listeners").await.0, 200);
    let (_, closed) = c.read_to_close(Duration::from_secs(5)).await;
    assert!(closed, "the drain closed the silent connection");
}
