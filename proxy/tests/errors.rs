//! Local replies when the upstream side fails, and refusal of malformed requests.

mod common;

use std::time::{Duration, Instant};

use hyper::Method;
use tokio::io::AsyncWriteExt;

use common::*;

const RESET_BODY: &str = "upstream connect error or disconnect/reset before headers";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failure_is_503_and_counted() {
    let dead = Backend::closed_port();
    let s = Strait::start(&Bootstrap::catch_all("dead").cluster("dead", dead).build()).await;
    let addr = s.main_addr().await;
    for n in 1..=2 {
        let r = get(addr, "h", "/", &[]).await;
        assert_eq!(r.status, 503);
        assert!(r.text().starts_with(RESET_BODY), "{}", r.text());
        s.wait_stat("cluster.dead.upstream_cx_connect_fail", |v| v >= n)
            .await;
    }
    s.wait_stat("http.ingress.downstream_rq_5xx", |v| v == 2)
        .await;
}

/// A listener whose accept queue is full and never drained: a connect to it gets no
/// SYN-ACK (Linux drops the SYN) and times out.
fn blackhole() -> (Vec<socket2::Socket>, std::net::SocketAddr) {
    use socket2::{Domain, Socket, Type};
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    listener
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    let mut held = vec![listener];
    for _ in 0..3 {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.set_nonblocking(true).unwrap();
        let _ = s.connect(&addr.into());
        held.push(s);
    }
    (held, addr)
}

/// Local replies for upstream failures carry Envoy's response flag and details, as
/// Envoy 1.40 logs them for the same failures (checked with raw sockets): `UF` with
/// the transport's reason for a refused connect and `connection_timeout` (and its
/// own body) for one that timed out, `UC` for a connection closed before the head,
/// `UT response_timeout` for the route timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_replies_carry_envoys_flags_and_details() {
    let b = Backend::echo("b").await;
    let (_held, hole) = blackhole();
    let vhosts = r#"
- name: t
  domains: ["*"]
  routes:
  - {match: {prefix: /refused}, route: {cluster: refused}}
  - {match: {prefix: /hole}, route: {cluster: hole}}
  - {match: {prefix: /slow}, route: {cluster: b, timeout: 0.2s}}
  - {match: {prefix: /}, route: {cluster: b}}
"#;
    let (log, hcm) =
        access_log("%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%");
    let hole_cluster = cluster_yaml("hole", &[(hole, 1)], false)
        .replace("connect_timeout: 1s", "connect_timeout: 0.25s");
    let config = Bootstrap::new(vhosts)
        .hcm(&hcm)
        .cluster("b", b.addr())
        .cluster("refused", Backend::closed_port())
        .cluster_raw(&hole_cluster)
        .build();
    let s = Strait::start(&config).await;
    let addr = s.main_addr().await;
    let timeout_body = "upstream connect error or disconnect/reset before headers. reset reason: connection timeout";
    for (path, headers, status, body) in [
        (
            "/refused",
            &[][..],
            503,
            &format!("{RESET_BODY}. reset reason: remote connection failure")[..],
        ),
        ("/hole", &[][..], 503, timeout_body),
        (
            "/slow",
            &[("x-backend-delay-ms", "3000")][..],
            504,
            "upstream request timeout",
        ),
        (
            "/reset",
            &[("x-backend-reset", "before-headers")][..],
            503,
            &format!("{RESET_BODY}. reset reason: connection termination")[..],
        ),
    ] {
        let r = get(addr, "h", path, headers).await;
        assert_eq!((r.status, r.text().as_str()), (status, body), "{path}");
    }
    let mut lines = log_lines(&log, 4).await;
    lines.sort();
    assert_eq!(
        lines,
        [
            "/hole 503 UF upstream_reset_before_response_started{connection_timeout}",
            "/refused 503 UF upstream_reset_before_response_started{remote_connection_failure|delayed_connect_error:_Connection_refused}",
            "/reset 503 UC upstream_reset_before_response_started{connection_termination}",
            "/slow 504 UT response_timeout",
        ]
    );
}

/// The "503 upstream connect error" users of other sidecars see when an upstream
/// closes an idle keep-alive connection just as it is reused: a body-less idempotent
/// request is retried once on a new connection instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_race_is_retried_on_a_new_connection() {
    let racer = Backend::keepalive_racer("racer").await;
    let config = Bootstrap::catch_all("up")
        .cluster("up", racer.addr())
        .build();
    // One worker, so both requests share its pool.
    let s = Strait::start_with(&config, &["--concurrency", "1"]).await;
    let addr = s.main_addr().await;
    assert_eq!(get(addr, "h", "/", &[]).await.status, 200);
    // Let the pooled connection age past the point where a request on it keeps a copy
    // for replay (pool::RACE_IDLE, 250 ms); this wait is the scenario, not a sync.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = get(addr, "h", "/again", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(racer.connections(), 2, "the retry used a new connection");
    s.wait_stat("cluster.up.upstream_rq_retry", |v| v == 1)
        .await;
    // A POST is not replayed: the race surfaces as a 503.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut c = Client::connect(addr, Proto::H1).await.expect("connect");
    let req = c.request(Method::POST, "h", "/post", &[], full("data"));
    let r = c.send(req).await.expect("response");
    assert_eq!(r.status, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timeout_is_408() {
    // `request_timeout` bounds receiving the request, as Envoy's: a body that does
    // not arrive in time is 408 (no flag, details `request_overall_timeout`); a
    // request received whole waits for its answer however slow (Envoy 1.40 disarms
    // the timer then, checked with raw sockets), bounded by the route's timeout.
    let slow = Backend::echo("slow").await;
    let (log, hcm) = access_log("%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%");
    let config = Bootstrap::catch_all("slow")
        .hcm(&format!("request_timeout: 0.3s\n{hcm}"))
        .cluster("slow", slow.addr())
        .build();
    let s = Strait::start(&config).await;
    let addr = s.main_addr().await;
    let mut c = RawConn::connect(addr).await;
    c.write(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc")
        .await;
    let reply = c
        .read_until("request timeout", Duration::from_secs(5))
        .await;
    assert!(reply.starts_with("HTTP/1.1 408 "), "{reply}");
    s.wait_stat("http.ingress.downstream_rq_timeout", |v| v == 1)
        .await;
    let r = get(addr, "h", "/", &[("x-backend-delay-ms", "1000")]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let lines = log_lines(&log, 2).await;
    assert_eq!(
        lines,
        ["408 - request_overall_timeout", "200 - via_upstream"]
    );
    assert_eq!(s.stat("http.ingress.downstream_rq_timeout").await, Some(1));
}

/// `stream_idle_timeout` before the answer: 504 once the request was received whole,
/// 408 while it was still coming (Envoy's `maybeRequestTimeoutCode`), `SI` both;
/// counted in `downstream_rq_idle_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_idle_timeout_is_504_once_the_request_is_in() {
    let slow = Backend::echo("slow").await;
    let (log, hcm) = access_log("%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%");
    let config = Bootstrap::catch_all("slow")
        .hcm(&format!("stream_idle_timeout: 0.3s\n{hcm}"))
        .cluster("slow", slow.addr())
        .build();
    let s = Strait::start(&config).await;
    let addr = s.main_addr().await;
    let r = get(addr, "h", "/", &[("x-backend-delay-ms", "3000")]).await;
    assert_eq!((r.status, r.text().as_str()), (504, "stream timeout"));
    let mut c = RawConn::connect(addr).await;
    c.write(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc")
        .await;
    let reply = c.read_until("stream timeout", Duration::from_secs(5)).await;
    assert!(reply.starts_with("HTTP/1.1 408 "), "{reply}");
    let lines = log_lines(&log, 2).await;
    assert_eq!(
        lines,
        ["504 SI stream_idle_timeout", "408 SI stream_idle_timeout"]
    );
    assert_eq!(
        s.stat("http.ingress.downstream_rq_idle_timeout").await,
        Some(2)
    );
    assert_eq!(s.stat("http.ingress.downstream_rq_timeout").await, Some(0));
}

/// Headers already went out, so the idle timeout can only reset the stream; the
/// client sees the body end early rather than hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_response_body_is_reset_by_the_stream_idle_timeout() {
    let b = Backend::echo("b").await;
    let config = Bootstrap::catch_all("b")
        .hcm("stream_idle_timeout: 0.3s")
        .cluster("b", b.addr())
        .build();
    let s = Strait::start(&config).await;
    let mut c = Client::connect(s.main_addr().await, Proto::H1)
        .await
        .expect("connect");
    let headers = [
        ("x-backend-body-bytes", "1000000"),
        ("x-backend-stall-after-bytes", "65536"),
    ];
    let req = c.request(Method::GET, "h", "/", &headers, empty());
    let resp = c.send_streaming(req).await.expect("response head");
    assert_eq!(resp.status(), 200);
    let body = count_body(resp.into_body()).await;
    assert!(
        body.is_err(),
        "the stalled body must not end cleanly: {body:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_is_504() {
    let slow = Backend::echo("slow").await;
    let vhosts = r#"
- name: t
  domains: ["*"]
  routes: [{match: {prefix: /}, route: {cluster: slow, timeout: 0.2s}}]
"#;
    let s = Strait::start(&Bootstrap::new(vhosts).cluster("slow", slow.addr()).build()).await;
    let started = Instant::now();
    let r = get(
        s.main_addr().await,
        "h",
        "/",
        &[("x-backend-delay-ms", "5000")],
    )
    .await;
    assert_eq!(r.status, 504);
    assert_eq!(r.text(), "upstream request timeout");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the proxy waited for the backend"
    );
    s.wait_stat("cluster.slow.upstream_rq_timeout", |v| v == 1)
        .await;
    // A fast request on the same route is unaffected.
    assert_eq!(get(s.main_addr().await, "h", "/", &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_is_404() {
    let b = Backend::echo("b").await;
    let vhosts = r#"
- name: v
  domains: ["*"]
  routes: [{match: {prefix: /api}, route: {cluster: b}}]
"#;
    let s = Strait::start(&Bootstrap::new(vhosts).cluster("b", b.addr()).build()).await;
    let r = get(s.main_addr().await, "h", "/other", &[]).await;
    assert_eq!(r.status, 404);
    assert_eq!(b.requests(), 0);
    s.wait_stat("http.ingress.downstream_rq_4xx", |v| v == 1)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_without_endpoints_is_503_no_healthy_upstream() {
    let unresolvable = r#"
- name: nowhere
  type: STRICT_DNS
  connect_timeout: 1s
  load_assignment:
    cluster_name: nowhere
    endpoints:
    - lb_endpoints:
      - endpoint:
          address:
            socket_address: {address: nonexistent.invalid, port_value: 80}
"#;
    let s = Strait::start(
        &Bootstrap::catch_all("nowhere")
            .cluster_raw(unresolvable)
            .build(),
    )
    .await;
    let r = get(s.main_addr().await, "h", "/", &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.text(), "no healthy upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_reset_before_headers_is_503() {
    let b = Backend::echo("b").await;
    for h2 in [false, true] {
        let config = Bootstrap::catch_all("b");
        let config = if h2 {
            config.h2_cluster("b", b.addr())
        } else {
            config.cluster("b", b.addr())
        };
        let s = Strait::start(&config.build()).await;
        let r = get(
            s.main_addr().await,
            "h",
            "/",
            &[("x-backend-reset", "before-headers")],
        )
        .await;
        assert_eq!(r.status, 503, "h2 upstream: {h2}");
        assert!(
            r.text().starts_with(RESET_BODY),
            "h2 upstream: {h2}: {}",
            r.text()
        );
        // The proxy is fine afterwards.
        assert_eq!(get(s.main_addr().await, "h", "/", &[]).await.status, 200);
    }
}

/// Each request must get 400 (431 for the oversize head), reach no backend, and leave
/// the connection closed. Pins a smuggling-shape bug: hyper's HTTP/1 parser drops
/// `Content-Length` when `Transfer-Encoding` is present, so `router::check_request`'s
/// CL+TE check never sees both headers and the request is forwarded (Envoy answers 400).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_refused_and_never_forwarded() {
    let b = Backend::echo("b").await;
    let config = Bootstrap::catch_all("b")
        .hcm("max_request_headers_kb: 8")
        .cluster("b", b.addr());
    let s = Strait::start(&config.build()).await;
    let addr = s.main_addr().await;
    let big = "a".repeat(10 * 1024);
    let oversize = format!("GET / HTTP/1.1\r\nHost: h\r\nX-Big: {big}\r\n\r\n");
    // Each answer's body names what was wrong and, for a fault in the head's bytes,
    // where: the byte (from 0 at the head's first), its line and its header.
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "content-length and transfer-encoding",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            400,
            "bad request: both content-length and transfer-encoding",
        ),
        (
            "two differing content-lengths",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!".to_vec(),
            400,
            "bad request: differing content-length values at byte 61 (line 4, header Content-Length)",
        ),
        (
            "obs-fold continuation",
            b"GET / HTTP/1.1\r\nHost: h\r\nX-Folded: a\r\n b\r\n\r\n".to_vec(),
            400,
            "bad request: a header line folded onto the one before (obs-fold) at byte 38 (line 4)",
        ),
        (
            "invalid header name",
            b"GET / HTTP/1.1\r\nHost: h\r\nBad@Name: x\r\n\r\n".to_vec(),
            400,
            "bad request: invalid header name at byte 28 (line 3)",
        ),
        (
            "NUL in a header value",
            b"GET / HTTP/1.1\r\nHost: h\r\nX-Nul: a\0b\r\n\r\n".to_vec(),
            400,
            "bad request: invalid header value at byte 33 (line 3, header X-Nul)",
        ),
        (
            "garbage request line",
            b"NOT A REQUEST\r\n\r\n".to_vec(),
            400,
            "bad request: invalid HTTP version at byte 6 (line 1)",
        ),
        // `Host: h` must not be replaced by the target's authority.
        (
            "authority-form target",
            b"GET example.com HTTP/1.1\r\nHost: h\r\n\r\n".to_vec(),
            400,
            "bad request: request target is not a path or an absolute URL",
        ),
        (
            "fragment in the target",
            b"GET /a#b HTTP/1.1\r\nHost: h\r\n\r\n".to_vec(),
            400,
            "bad request: fragment in the request target",
        ),
        // Routed on the first, the upstream might read the second (RFC 9112 §3.2: 400).
        (
            "two host lines",
            b"GET / HTTP/1.1\r\nHost: h\r\nHost: i\r\n\r\n".to_vec(),
            400,
            "bad request: a second host header at byte 25 (line 3)",
        ),
        (
            "a host that is not one",
            b"GET / HTTP/1.1\r\nHost: h/x\r\n\r\n".to_vec(),
            400,
            "bad request: not a host and port at byte 22 (line 2, header Host)",
        ),
        // Sent on without its gzip coding, the body would change meaning.
        (
            "gzip, chunked",
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".to_vec(),
            501,
            "not implemented: a transfer coding other than chunked",
        ),
        (
            "two transfer-encoding lines",
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".to_vec(),
            501,
            "not implemented: a transfer coding other than chunked",
        ),
        (
            "headers over max_request_headers_kb",
            oversize.into_bytes(),
            431,
            "request header too large",
        ),
    ];
    let replies = futures_util::future::join_all(
        cases
            .iter()
            .map(|(_, bytes, _, _)| send_raw_until_close(addr, bytes)),
    )
    .await;
    let mut failures = Vec::new();
    for ((name, _, want, body), (reply, closed)) in cases.iter().zip(replies) {
        let status_line = reply.lines().next().unwrap_or("<nothing>").to_owned();
        if !status_line.starts_with(&format!("HTTP/1.1 {want}")) {
            failures.push(format!("{name}: want {want}, got {status_line:?}"));
        }
        let (head, got) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
        if got != *body || !head.contains("content-type: text/plain") {
            failures.push(format!("{name}: want body {body:?}, got {reply:?}"));
        }
        if !closed {
            failures.push(format!("{name}: connection left open after the error"));
        }
        eprintln!("BODY {name}: {:?}", reply.split("\r\n\r\n").nth(1));
    }
    let forwarded = b.requests();
    assert!(
        failures.is_empty() && forwarded == 0,
        "malformed requests mishandled ({forwarded} reached the backend):\n{}",
        failures.join("\n")
    );
    // Well-formed requests still work.
    assert_eq!(get(addr, "h", "/", &[]).await.status, 200);
    // An empty `Host` is a valid one (RFC 9112 §3.2: what a client sends for a target
    // without an authority). It is routed and goes on empty, as in Envoy and HAProxy.
    let mut raw = RawConn::connect(addr).await;
    raw.write(b"GET /empty-host HTTP/1.1\r\nHost:\r\n\r\n")
        .await;
    let reply = raw.read_until("\"backend\"", Duration::from_secs(10)).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("\"host\":\"\""), "{reply}");
}

/// Heads with random bytes changed (control bytes, separators, anything), cut short or
/// with a line repeated: each connection gets an HTTP/1.x answer or a close, never
/// anything else; never a 5xx (the upstream is healthy), and a 400 says why; it
/// closes once its client has, and takes nobody else down: a keep-alive connection
/// opened before is still served, and no task panicked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_heads_end_only_their_own_connection() {
    let b = Backend::echo("b").await;
    let s = Strait::start(&Bootstrap::catch_all("b").cluster("b", b.addr()).build()).await;
    let addr = s.main_addr().await;
    let mut good = RawConn::connect(addr).await;
    let templates: [&[u8]; 3] = [
        b"GET /a/b?q=1 HTTP/1.1\r\nHost: example.com:80\r\nUser-Agent: t\r\nAccept: */*\r\n\r\n",
        b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nX-Long: abcdefghij\r\n\r\nhello",
        b"PUT /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ];
    let mut rng = mutate::Rng::new(1);
    let inputs: Vec<Vec<u8>> = (0..300)
        .map(|i| mutate::mutate(templates[i % templates.len()], &mut rng, true))
        .collect();
    let mut failures = Vec::new();
    for batch in inputs.chunks(30) {
        let replies = futures_util::future::join_all(batch.iter().map(|bytes| async move {
            let mut c = RawConn::connect(addr).await;
            c.write(bytes).await;
            let _ = c.stream.shutdown().await;
            c.read_to_close(Duration::from_secs(5)).await
        }))
        .await;
        for (bytes, (reply, closed)) in batch.iter().zip(replies) {
            let sent = String::from_utf8_lossy(bytes);
            // An HTTP/1.0 request is answered in HTTP/1.0.
            let status = reply
                .strip_prefix("HTTP/1.1 ")
                .or_else(|| reply.strip_prefix("HTTP/1.0 "))
                .and_then(|r| r.get(..3))
                .and_then(|code| code.parse::<u16>().ok());
            if !reply.is_empty() && status.is_none() {
                failures.push(format!("{sent:?}: not an HTTP/1.x answer: {reply:?}"));
            }
            if !closed {
                failures.push(format!("{sent:?}: still open 5 s after its client closed"));
            }
            // The upstream is healthy: a 5xx would blame it for the client's bytes.
            // A refusal says what was wrong.
            let body = reply.split_once("\r\n\r\n").map_or("", |(_, b)| b);
            match status {
                Some(500..) => failures.push(format!("{sent:?}: {reply:?}")),
                Some(400) if body.is_empty() => {
                    failures.push(format!("{sent:?}: 400 without a reason: {reply:?}"))
                }
                _ => {}
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    good.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").await;
    let reply = good
        .read_until("\"backend\"", Duration::from_secs(10))
        .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let stderr = s.stderr();
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A head the codec refuses is a request in the stats and the access log, as Envoy
/// keeps it (Envoy 1.40 logs these four `- 400 DPE http1.codec_error`, `- 400 DPE
/// http1.invalid_characters`, `- 501 DPE http1.invalid_transfer_encoding`, `- 408 -
/// request_header_timeout`): a client's malformed requests are seen, not lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_heads_are_counted_and_logged() {
    let b = Backend::echo("b").await;
    let (log, hcm) = access_log(
        "%REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%",
    );
    let config = Bootstrap::catch_all("b")
        .hcm(&format!("request_headers_timeout: 0.3s\n{hcm}"))
        .cluster("b", b.addr())
        .build();
    let s = Strait::start(&config).await;
    let addr = s.main_addr().await;
    let heads: [&[u8]; 4] = [
        b"GET /a HTTP/1.1\r\nHost: h\r\nBad@Name: x\r\n\r\n",
        b"GET /b HTTP/1.1\r\nHost: h\r\nX-Nul: a\0b\r\n\r\n",
        b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        b"GET /d HTTP/1.1\r\nHost: h\r\nX-Partial: ab",
    ];
    for head in heads {
        let mut c = RawConn::connect(addr).await;
        c.write(head).await;
        let (reply, closed) = c.read_to_close(Duration::from_secs(5)).await;
        assert!(closed && reply.starts_with("HTTP/1.1 "), "{reply}");
    }
    let lines = log_lines(&log, 4).await;
    assert_eq!(
        lines,
        [
            "- - 400 DPE http1.codec_error",
            "- - 400 DPE http1.invalid_characters",
            "- - 501 DPE http1.invalid_transfer_encoding",
            "- - 408 - request_header_timeout",
        ]
    );
    let stats = s.stats().await;
    let stat = |name: &str| stats.get(&format!("http.ingress.{name}")).copied();
    assert_eq!(stat("downstream_rq_total"), Some(4));
    assert_eq!(stat("downstream_rq_4xx"), Some(3));
    assert_eq!(stat("downstream_rq_5xx"), Some(1));
    assert_eq!(stat("downstream_cx_protocol_error"), Some(3));
    assert_eq!(stat("downstream_rq_header_timeout"), Some(1));
    assert_eq!(stat("downstream_rq_active"), Some(0));
    assert_eq!(b.requests(), 0);
}

/// A client that goes away before its request body ends (its connection closed
/// halfway through a `Content-Length` or a chunked body) is not answered, and the
/// stream is logged as the client's, `0 DC`, as Envoy logs it: not as a 503 `UR`,
/// which would blame a healthy upstream in `downstream_rq_5xx` and the access log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_mid_body_is_not_an_upstream_failure() {
    for h2_upstream in [false, true] {
        let b = Backend::echo("b").await;
        let (log, hcm) = access_log("%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%");
        let config = Bootstrap::catch_all("b").hcm(&hcm);
        let config = match h2_upstream {
            true => config.h2_cluster("b", b.addr()),
            false => config.cluster("b", b.addr()),
        };
        let s = Strait::start(&config.build()).await;
        let addr = s.main_addr().await;
        let cut: [&[u8]; 2] = [
            b"PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nhalf",
            b"PUT / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        ];
        for bytes in cut {
            let mut c = RawConn::connect(addr).await;
            c.write(bytes).await;
            // The request goes upstream with what came of its body; then the client
            // goes.
            tokio::time::sleep(Duration::from_millis(100)).await;
            c.stream.shutdown().await.unwrap();
            let (reply, closed) = c.read_to_close(Duration::from_secs(5)).await;
            assert!(
                closed && reply.is_empty(),
                "h2 upstream {h2_upstream}: closed {closed}, answered {reply:?}"
            );
        }
        let lines = log_lines(&log, 2).await;
        assert_eq!(
            lines, ["0 DC downstream_remote_disconnect"; 2],
            "h2 upstream {h2_upstream}"
        );
        assert_eq!(s.stat("http.ingress.downstream_rq_5xx").await, Some(0));
        assert_eq!(
            s.stat("http.ingress.downstream_cx_destroy_remote_active_rq")
                .await,
            Some(2)
        );
        // The upstream, never at fault, serves the next request.
        assert_eq!(get(addr, "h", "/", &[]).await.status, 200);
    }
}

/// A chunked request body that breaks its framing halfway (here a chunk size that is
/// not hex) is the client's error: 400 and the connection closed, as Envoy's codec
/// answers, not "503 upstream reset". Over an
/// HTTP/1.1 and an HTTP/2 upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_request_body_is_400_not_an_upstream_reset() {
    let b = Backend::echo("b").await;
    let config = Bootstrap::new(
        "- name: all\n  domains: [\"*\"]\n  routes:\n  - match: {prefix: /h2}\n    route: {cluster: b2}\n  - match: {prefix: /}\n    route: {cluster: b1}\n",
    )
    .cluster("b1", b.addr())
    .h2_cluster("b2", b.addr())
    .build();
    let s = Strait::start(&config).await;
    let addr = s.main_addr().await;
    for (path, cluster) in [("/h1", "b1"), ("/h2", "b2")] {
        let mut c = RawConn::connect(addr).await;
        c.write(
            format!(
                "POST {path} HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
            )
            .as_bytes(),
        )
        .await;
        // The head and the first chunk are on their way upstream before the bad line.
        s.wait_stat(&format!("cluster.{cluster}.upstream_rq_total"), |v| v >= 1)
            .await;
        c.write(b"zz\r\nabc\r\n0\r\n\r\n").await;
        let (reply, closed) = c.read_to_close(Duration::from_secs(5)).await;
        let status_line = reply.lines().next().unwrap_or("<nothing>");
        assert!(
            status_line.starts_with("HTTP/1.1 400"),
            "{path}: {status_line:?}\n{reply}"
        );
        assert!(closed, "{path}: the connection closes after a broken body");
    }
    s.wait_stat("http.ingress.downstream_rq_4xx", |v| v == 2)
        .await;
    assert_eq!(s.stat("http.ingress.downstream_rq_5xx").await, Some(0));
    // The client that framed its body well is served as before.
    assert_eq!(get(addr, "h", "/", &[]).await.status, 200);
}

/// What Strait does with request shapes other proxies treat each their own way: the
/// upstream gets one unambiguous message.
/// - `Content-Length` copies of one number (RFC 9110 §8.6 allows them) go on as one
///   value, so a peer that reads only the first line or refuses lists sees the same
///   framing.
/// - An `h2c` upgrade (`curl --http2` on every `http://` URL) is served as plain
///   HTTP/1.1 with the upgrade's headers stripped, as Envoy does, not refused.
/// - CONNECT matches no route (Envoy matches it only with a `connect_matcher`, which
///   the config refuses): 404, and nothing goes upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_requests_go_upstream_as_one_plain_message() {
    let b = Backend::raw_recorder("b").await;
    let s = Strait::start(&Bootstrap::catch_all("b").cluster("b", b.addr()).build()).await;
    let addr = s.main_addr().await;
    for (name, request) in [
        (
            "two lines",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        ),
        (
            "a list",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 3\r\n\r\nabc",
        ),
        (
            "h2c upgrade",
            "GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
        ),
    ] {
        let mut c = RawConn::connect(addr).await;
        c.write(request.as_bytes()).await;
        let reply = c.read_until("\r\n\r\n", Duration::from_secs(5)).await;
        assert!(reply.starts_with("HTTP/1.1 200"), "{name}: {reply}");
    }
    let heads: Vec<String> = b.heads().iter().map(|h| h.to_ascii_lowercase()).collect();
    assert_eq!(heads.len(), 3, "{heads:?}");
    for head in &heads[..2] {
        assert_eq!(
            head.matches("content-length").count(),
            1,
            "one content-length line upstream: {head}"
        );
        assert!(head.contains("content-length: 3\r\n"), "{head}");
    }
    for name in ["upgrade", "http2-settings", "connection: upgrade"] {
        assert!(
            !heads[2].contains(name),
            "{name} went upstream: {}",
            heads[2]
        );
    }

    let mut c = RawConn::connect(addr).await;
    c.write(b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n")
        .await;
    let reply = c.read_until("\r\n\r\n", Duration::from_secs(5)).await;
    assert!(reply.starts_with("HTTP/1.1 404"), "{reply}");
    assert_eq!(b.requests(), 3, "CONNECT went upstream");
}
