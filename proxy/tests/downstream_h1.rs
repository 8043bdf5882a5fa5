//! Strait's own HTTP/1.1 server codec (`h1_server`), on the wire: header case back to
//! the client, HTTP/1.0 keep-alive, the head timeout, and a connection whose request
//! body the upstream never read. (Malformed heads are in `errors.rs`, pipelining and
//! idle release in `idle.rs`, bodies, trailers and `Expect` in `protocols.rs`.)

mod common;

use std::time::Duration;

use common::*;

fn answers(head: &str) -> Scripted {
    let path = head.split(' ').nth(1).unwrap_or("");
    let bytes = |s: &str| s.as_bytes().to_vec();
    match path {
        "/early" => Scripted::Close(bytes(
            "HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\n\r\ntoo big!",
        )),
        _ => Scripted::KeepAlive(bytes(
            "HTTP/1.1 200 OK\r\nX-Custom-Header: v\r\nx-lower: w\r\nETag: \"e1\"\r\nContent-Length: 2\r\n\r\nok",
        )),
    }
}

async fn proxy(backend: &Backend, hcm: &str) -> Strait {
    let config = Bootstrap::catch_all("up").cluster("up", backend.addr());
    let config = match hcm {
        "" => config,
        hcm => config.hcm(hcm),
    };
    Strait::start(&config.build()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_header_case_comes_back_as_the_upstream_sent_it() {
    let b = Backend::scripted("raw", answers).await;
    let s = proxy(&b, "").await;
    let mut c = RawConn::connect(s.main_addr().await).await;
    c.write(b"GET /case HTTP/1.1\r\nHost: h\r\nX-Asked: 1\r\n\r\n")
        .await;
    let reply = c.read_until("\r\n\r\nok", Duration::from_secs(5)).await;
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    for line in [
        "X-Custom-Header: v\r\n",
        "x-lower: w\r\n",
        "ETag: \"e1\"\r\n",
        "Content-Length: 2\r\n",
    ] {
        assert!(
            reply.contains(line),
            "{line:?} not as the upstream sent it:\n{reply}"
        );
    }
    // What the proxy adds itself is lowercase, as Envoy writes it.
    assert!(
        reply.contains("\r\nx-envoy-upstream-service-time: "),
        "{reply}"
    );
    assert!(reply.contains("\r\ndate: "), "{reply}");
    assert!(b.heads()[0].contains("X-Asked: 1\r\n"), "{:?}", b.heads());
}

/// An HTTP/1.0 client may send no `Host` (old health checkers do). Without
/// `default_host_for_http_10` that is a 400; with it the request is routed on that
/// host and goes upstream with it, as in Envoy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_without_host_takes_the_default_host() {
    let b = Backend::scripted("raw", answers).await;
    let request = b"GET /a HTTP/1.0\r\n\r\n";
    let s = proxy(&b, "").await;
    let (reply, _) = send_raw_until_close(s.main_addr().await, request).await;
    assert!(reply.starts_with("HTTP/1.0 400"), "{reply}");
    let options =
        "http_protocol_options: {accept_http_10: true, default_host_for_http_10: \"svc.local\"}";
    let s = proxy(&b, options).await;
    let (reply, _) = send_raw_until_close(s.main_addr().await, request).await;
    assert!(reply.starts_with("HTTP/1.0 200 OK\r\n"), "{reply}");
    let heads = b.heads();
    assert_eq!(heads.len(), 1, "{heads:?}");
    assert!(
        heads[0]
            .to_ascii_lowercase()
            .contains("\r\nhost: svc.local\r\n"),
        "{heads:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_clients_keep_alive_only_when_they_ask() {
    let b = Backend::scripted("raw", answers).await;
    let s = proxy(&b, "").await;
    let addr = s.main_addr().await;
    let mut c = RawConn::connect(addr).await;
    c.write(b"GET /a HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n")
        .await;
    let reply = c.read_until("\r\n\r\nok", Duration::from_secs(5)).await;
    assert!(reply.starts_with("HTTP/1.0 200 OK\r\n"), "{reply}");
    assert!(
        reply
            .to_ascii_lowercase()
            .contains("connection: keep-alive"),
        "{reply}"
    );
    c.read.clear();
    c.write(b"GET /b HTTP/1.0\r\nHost: h\r\n\r\n").await;
    let (reply, closed) = c.read_to_close(Duration::from_secs(5)).await;
    assert!(reply.starts_with("HTTP/1.0 200 OK\r\n"), "{reply}");
    assert!(reply.ends_with("ok"), "{reply}");
    assert!(
        closed,
        "an HTTP/1.0 request without keep-alive closes: {reply}"
    );
    assert_eq!(s.stat("http.ingress.downstream_cx_total").await, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_that_takes_too_long_is_408() {
    let b = Backend::scripted("raw", answers).await;
    let s = proxy(&b, "request_headers_timeout: 0.3s").await;
    let addr = s.main_addr().await;
    // An idle keep-alive connection is not timed: the clock starts at a head's first
    // byte.
    let mut c = RawConn::connect(addr).await;
    c.write(b"GET /one HTTP/1.1\r\nHost: h\r\n\r\n").await;
    c.read_until("\r\n\r\nok", Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.read.clear();
    c.write(b"GET /two HTTP/1.1\r\nHo").await;
    let (reply, closed) = c.read_to_close(Duration::from_secs(5)).await;
    assert!(
        reply.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{reply}"
    );
    assert!(closed);
    assert_eq!(b.requests(), 1, "the cut head never went upstream");
}

/// A client's head, then (once the upstream has had time to answer it) an 8 MiB
/// body: the answer comes while the body is still to be read.
async fn early_answer(s: &Strait) -> (tokio::net::TcpStream, Vec<u8>) {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(s.main_addr().await)
        .await
        .unwrap();
    let body = vec![b'x'; 8 << 20];
    let head = format!(
        "POST /early HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    (stream, body)
}

/// The upstream answered without reading the request body: the rest of that body
/// would be taken for the next head, so the connection closes after the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_left_unread_closes_the_connection() {
    let b = Backend::scripted("raw", answers).await;
    let s = proxy(&b, "").await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (stream, body) = early_answer(&s).await;
    let (mut rd, mut wr) = stream.into_split();
    // The body goes on in the background while the answer is read. The client keeps
    // its write side open: one that shuts it (a half-close) before the answer is
    // taken as gone and its request cancelled, as by hyper, Envoy and NGINX.
    let send = tokio::spawn(async move {
        let _ = wr.write_all(&body).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(wr);
    });
    let mut reply = Vec::new();
    within(
        Duration::from_secs(10),
        "the answer and the close",
        rd.read_to_end(&mut reply),
    )
    .await
    .ok();
    let reply = String::from_utf8_lossy(&reply);
    assert!(
        reply.starts_with("HTTP/1.1 413 Payload Too Large\r\n"),
        "{reply}"
    );
    assert!(reply.ends_with("too big!"), "{reply}");
    send.abort();
}

/// The same, for a client that sends its whole body before it reads (as simple
/// clients do): the closing connection keeps reading what it still sends, so its
/// writes succeed and it reads the answer, instead of a reset mid-upload (NGINX's
/// lingering close).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_still_uploading_is_not_reset() {
    let b = Backend::scripted("raw", answers).await;
    let s = proxy(&b, "").await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut stream, body) = early_answer(&s).await;
    let sent = within(
        Duration::from_secs(10),
        "the upload",
        stream.write_all(&body),
    )
    .await;
    assert!(sent.is_ok(), "the upload was cut: {sent:?}");
    let mut reply = Vec::new();
    let read = within(
        Duration::from_secs(10),
        "the answer and the close",
        stream.read_to_end(&mut reply),
    )
    .await;
    let reply = String::from_utf8_lossy(&reply);
    assert!(read.is_ok(), "{read:?} after {reply}");
    assert!(
        reply.starts_with("HTTP/1.1 413 Payload Too Large\r\n"),
        "{reply}"
    );
    assert!(reply.ends_with("too big!"), "{reply}");
}

/// A client that leaves while its request waits on the upstream cancels that request:
/// the upstream connection closes, as with hyper and Envoy. Both ways a connection
/// starts: with the request already there when it is accepted (read at once, the
/// socket not yet in the reactor: the client is watched after a grace of ~0.5 s,
/// see `h1_server::SPECULATIVE_WATCH`) and with the request late (the socket waited,
/// so it is in the reactor and watched at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_cancels_its_upstream_request() {
    use std::io::Write as _;
    use tokio::io::AsyncReadExt;
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = Bootstrap::catch_all("up").cluster("up", upstream.local_addr().unwrap());
    let s = Strait::start(&config.build()).await;
    let addr = s.main_addr().await;
    for late in [false, true] {
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        if late {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        client
            .write_all(b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n")
            .unwrap();
        let (mut conn, _) = within(
            Duration::from_secs(5),
            "the upstream request",
            upstream.accept(),
        )
        .await
        .unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = within(
                Duration::from_secs(5),
                "the request head",
                conn.read(&mut buf),
            )
            .await
            .unwrap();
            assert!(n > 0, "upstream closed before the head: late {late}");
            head.extend_from_slice(&buf[..n]);
        }
        // The client gives up without an answer.
        drop(client);
        let ended = within(
            Duration::from_secs(5),
            "the cancelled upstream request",
            conn.read(&mut buf),
        )
        .await;
        assert!(
            matches!(ended, Ok(0) | Err(_)),
            "late {late}: the upstream connection stayed open: {ended:?}"
        );
    }
}

/// A connection's first head is looked up in its worker's cache of first-head names
/// (`h1::FIRST_NAMES`): clients whose heads differ, one connection each, alternating,
/// each get their own names upstream, case and all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_heads_of_different_clients_keep_their_own_names() {
    let b = Backend::scripted("raw", answers).await;
    let s = proxy(&b, "").await;
    let addr = s.main_addr().await;
    let heads = [
        "GET /a HTTP/1.1\r\nHost: h\r\nX-One: 1\r\nX-Two: 2\r\nConnection: close\r\n\r\n",
        "GET /b HTTP/1.1\r\nHost: h\r\nx-three: 3\r\nX-One: 4\r\nConnection: close\r\n\r\n",
        "GET /c HTTP/1.1\r\nHost: h\r\nX-One: 5\r\nConnection: close\r\n\r\n",
    ];
    for round in 0..3 {
        for head in heads {
            let reply = send_raw(addr, head.as_bytes()).await;
            assert!(
                reply.starts_with("HTTP/1.1 200 OK\r\n"),
                "round {round}: {reply}"
            );
        }
    }
    let seen = b.heads();
    assert_eq!(seen.len(), 9, "{seen:?}");
    for (i, head) in seen.iter().enumerate() {
        let want: &[&str] = match i % 3 {
            0 => &["GET /a ", "X-One: 1\r\n", "X-Two: 2\r\n"],
            1 => &["GET /b ", "x-three: 3\r\n", "X-One: 4\r\n"],
            _ => &["GET /c ", "X-One: 5\r\n"],
        };
        for line in want {
            assert!(head.contains(line), "request {i}: {line:?} not in {head:?}");
        }
        assert_eq!(head.contains("X-Two"), i % 3 == 0, "request {i}: {head:?}");
        assert_eq!(
            head.contains("x-three"),
            i % 3 == 1,
            "request {i}: {head:?}"
        );
    }
}
