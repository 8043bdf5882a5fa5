//! Strait's own HTTP/1.1 client codec (`h1_client`), which carries every upstream
//! HTTP/1.1 request that is not an upgrade and was not parsed by hyper's HTTP/1
//! server: here, requests from h2c clients. Framing both ways, connection reuse, the
//! keep-alive race, early answers, malformed answers, and idle release.

mod common;

use std::time::Duration;

use common::client::{generated, with_trailers};
use common::*;
use http::Method;

async fn proxy_to(backend: &Backend) -> Strait {
    let config = Bootstrap::catch_all("up").cluster("up", backend.addr());
    Strait::start_with(&config.build(), &["--concurrency", "1"]).await
}

async fn h2(s: &Strait) -> Client {
    Client::connect(s.main_addr().await, Proto::H2)
        .await
        .expect("h2c connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_requests_share_one_upstream_connection() {
    let b = Backend::echo("b").await;
    let s = proxy_to(&b).await;
    let mut c = h2(&s).await;
    for i in 0..20 {
        let r = c
            .get("svc.test", &format!("/n/{i}?q=1"), &[("x-c", "1")])
            .await;
        assert_eq!(r.status, 200);
        let e = r.echo();
        assert_eq!(e.version, "HTTP/1.1");
        assert_eq!(e.host, "svc.test", ":authority becomes Host");
        assert_eq!(e.path, format!("/n/{i}?q=1"));
        assert_eq!(e.header("x-c"), Some("1"));
    }
    assert_eq!(b.connections(), 1, "the pooled connection was reused");
    assert_eq!(s.stat("cluster.up.upstream_cx_total").await, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_go_up_with_their_length_or_chunked() {
    let b = Backend::echo("b").await;
    let s = proxy_to(&b).await;
    let mut c = h2(&s).await;
    // A known length: `content-length` upstream.
    let req = c.request(
        Method::POST,
        "h",
        "/len",
        &[("content-length", "5")],
        full("hello"),
    );
    let e = c.send(req).await.expect("response").echo();
    assert_eq!((e.body_len, e.body.as_str()), (5, "hello"));
    assert_eq!(e.header("content-length"), Some("5"));
    assert_eq!(e.header("transfer-encoding"), None);
    // A streamed body of unknown length: chunked upstream, every byte there.
    let req = c.request(Method::POST, "h", "/stream", &[], generated(300_000));
    let e = c.send(req).await.expect("response").echo();
    assert_eq!(e.body_len, 300_000);
    assert_eq!(e.header("transfer-encoding"), Some("chunked"));
    assert_eq!(e.header("content-length"), None);
    // Trailers ride on the chunked body.
    let req = c.request(
        Method::PUT,
        "h",
        "/t",
        &[],
        with_trailers("abc", &[("x-t", "1")]),
    );
    let e = c.send(req).await.expect("response").echo();
    assert_eq!(e.body, "abc");
    assert_eq!(e.trailers.get("x-t").map(String::as_str), Some("1"));
    assert_eq!(
        b.connections(),
        1,
        "each body ended cleanly, the connection was reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_bodies_in_each_framing_come_through() {
    let b = Backend::echo("b").await;
    let s = proxy_to(&b).await;
    let mut c = h2(&s).await;
    // `content-length`, longer than one read.
    let r = c
        .get("h", "/sized", &[("x-backend-body-bytes", "65536")])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 65_536);
    assert_eq!(r.header("content-length"), Some("65536"));
    // Chunked (the backend streams it), large.
    let r = c
        .get("h", "/big", &[("x-backend-body-bytes", "3000000")])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 3_000_000);
    // Chunked, in small pieces over time.
    let r = c
        .get(
            "h",
            "/chunks",
            &[
                ("x-backend-body-bytes", "5000"),
                ("x-backend-chunk-delay-ms", "5"),
            ],
        )
        .await;
    assert_eq!(r.body.len(), 5000);
    assert!(r.body.iter().all(|&b| b == b'c'));
    // A status from the upstream, and its headers.
    let r = c
        .get(
            "h",
            "/503",
            &[
                ("x-backend-status", "503"),
                ("x-backend-respond-header", "x-why=busy"),
            ],
        )
        .await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-why"), Some("busy"));
    assert_eq!(b.connections(), 1);
}

/// Answers for the scripted backend, by request path.
fn answers(head: &str) -> Scripted {
    let path = head.split(' ').nth(1).unwrap_or("");
    let bytes = |s: &str| s.as_bytes().to_vec();
    match path {
        "/close-delimited" => {
            Scripted::Close(bytes("HTTP/1.1 200 OK\r\nX-Kind: eof\r\n\r\nread until the end"))
        }
        "/no-content" => Scripted::KeepAlive(bytes("HTTP/1.1 204 No Content\r\nX-Kind: 204\r\n\r\n")),
        // More bytes than the answer's length: what follows looks like an answer.
        "/overlong" => Scripted::KeepAlive(bytes(
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecret",
        )),
        // A 304 framed as chunked: it has no body, and says nothing of a length.
        "/not-modified" => Scripted::KeepAlive(bytes(
            "HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\nETag: \"v1\"\r\n\r\n",
        )),
        "/continue" => Scripted::KeepAlive(bytes(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nafter",
        )),
        "/garbage" => Scripted::Close(bytes("this is not HTTP\r\n\r\n")),
        "/bad-length" => Scripted::Close(bytes(
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        )),
        "/length-and-chunked" => Scripted::Close(bytes(
            "HTTP/1.1 200 OK\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        )),
        "/gzip-chunked" => Scripted::Close(bytes(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        )),
        // Envoy's HTTP/1.1 client takes response heads up to 80 KiB.
        "/big-head" => Scripted::KeepAlive(
            format!(
                "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 2\r\n\r\nok",
                "a".repeat(70_000)
            )
            .into_bytes(),
        ),
        "/huge-head" => Scripted::Close(
            format!(
                "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 2\r\n\r\nok",
                "a".repeat(90_000)
            )
            .into_bytes(),
        ),
        "/obs-fold" => Scripted::Close(bytes(
            "HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 2\r\n\r\nok",
        )),
        "/length-copies" => Scripted::KeepAlive(bytes(
            "HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\nContent-Length: 3\r\n\r\nabc",
        )),
        // No space after the code, and a reason that is not ASCII: httparse gives a
        // `""` that is not in the read buffer for both.
        "/no-reason" => Scripted::KeepAlive(bytes("HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok")),
        "/latin1-reason" => Scripted::KeepAlive(
            b"HTTP/1.1 299 Tr\xe8s bien\r\nContent-Length: 2\r\n\r\nok".to_vec(),
        ),
        "/short" => Scripted::Close(bytes("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nonly5")),
        "/bad-chunk" => Scripted::Close(bytes(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\nabc\r\n0\r\n\r\n",
        )),
        "/early" => Scripted::Close(bytes(
            "HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntoo big!",
        )),
        "/early-reset" => Scripted::Reset(bytes(
            "HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntoo big!",
        )),
        "/trailers" => Scripted::KeepAlive(bytes(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-a, x-b\r\n\r\n\
             4\r\nbody\r\n0\r\nX-A: 1\r\nx-b:  2 \r\n\r\n",
        )),
        "/chunk-ext" => Scripted::KeepAlive(bytes(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;name=v\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )),
        // A HEAD answer carries the length of the body it does not send.
        _ if head.starts_with("HEAD ") => {
            Scripted::KeepAlive(bytes("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"))
        }
        _ => Scripted::KeepAlive(bytes("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodiless_answers_and_informational_heads_keep_the_connection() {
    let b = Backend::scripted("raw", answers).await;
    let s = proxy_to(&b).await;
    let mut c = h2(&s).await;
    let req = c.request(Method::HEAD, "h", "/head", &[], empty());
    let r = c.send(req).await.expect("HEAD");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("10"));
    assert!(r.body.is_empty());
    let r = c.get("h", "/no-content", &[]).await;
    assert_eq!((r.status, r.header("x-kind")), (204, Some("204")));
    assert!(r.body.is_empty());
    let r = c.get("h", "/continue", &[]).await;
    assert_eq!((r.status, r.text().as_str()), (200, "after"));
    let r = c.get("h", "/chunk-ext", &[]).await;
    assert_eq!((r.status, r.text().as_str()), (200, "abcde"));
    let r = c.get("h", "/trailers", &[]).await;
    assert_eq!((r.status, r.text().as_str()), (200, "body"));
    assert_eq!((r.trailer("x-a"), r.trailer("x-b")), (Some("1"), Some("2")));
    // Copies of one length go on as one value.
    let r = c.get("h", "/length-copies", &[]).await;
    assert_eq!((r.status, r.text().as_str()), (200, "abc"));
    assert_eq!(r.header("content-length"), Some("3"));
    // Status lines without a reason, or with one that is not ASCII, took a worker's
    // connection task down (an offset computed from httparse's static `""`).
    let r = c.get("h", "/no-reason", &[]).await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    let r = c.get("h", "/latin1-reason", &[]).await;
    assert_eq!((r.status, r.text().as_str()), (299, "ok"));
    let r = c.get("h", "/plain", &[]).await;
    assert_eq!(r.text(), "0123456789");
    assert_eq!(
        b.connections(),
        1,
        "every answer left the connection reusable"
    );
    assert_eq!(b.requests(), 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_304_is_given_no_length_it_did_not_have() {
    // A 304's `content-length` is the length of the representation it stands for
    // (RFC 9110 §8.6). HTTP/1.1 clients were sent a made-up `content-length: 0`,
    // which a cache may store over the real length.
    let b = Backend::scripted("raw", answers).await;
    let s = proxy_to(&b).await;
    let mut raw = RawConn::connect(s.main_addr().await).await;
    raw.write(b"GET /not-modified HTTP/1.1\r\nHost: h\r\n\r\n")
        .await;
    let head = raw.read_until("\r\n\r\n", Duration::from_secs(10)).await;
    assert!(head.starts_with("HTTP/1.1 304 Not Modified\r\n"), "{head}");
    assert!(head.contains("ETag: \"v1\"\r\n"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(!lower.contains("content-length"), "{head}");
    assert!(!lower.contains("transfer-encoding"), "{head}");
    // Nothing followed the head: the next answer on the connection is the next
    // request's.
    raw.write(b"GET /plain HTTP/1.1\r\nHost: h\r\n\r\n").await;
    let all = raw.read_until("0123456789", Duration::from_secs(10)).await;
    let next = all.split_once("\r\n\r\n").map_or("", |(_, rest)| rest);
    assert!(next.starts_with("HTTP/1.1 200 OK\r\n"), "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_delimited_body_ends_with_the_connection() {
    let b = Backend::scripted("raw", answers).await;
    let s = proxy_to(&b).await;
    let mut c = h2(&s).await;
    let r = c.get("h", "/close-delimited", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-kind"), Some("eof"));
    assert_eq!(r.text(), "read until the end");
    // That connection is gone; the next request opens another.
    let r = c.get("h", "/plain", &[]).await;
    assert_eq!(r.text(), "0123456789");
    assert_eq!(b.connections(), 2);
}

/// An answer that is not valid HTTP/1.1 is a protocol error: 502 with the `UPE` flag,
/// as Envoy's router answers it, not the 503 of a reset. That includes framings the
/// proxy cannot pass on as they mean: a length beside `transfer-encoding` (the
/// response-splitting shape), a coding besides `chunked` (the body would lose it),
/// and obs-fold (RFC 9112 §5.2 lets a proxy answer 502).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_answers_are_502_and_close_their_connection() {
    let b = Backend::scripted("raw", answers).await;
    let s = proxy_to(&b).await;
    let mut c = h2(&s).await;
    let malformed = [
        "/huge-head",
        "/garbage",
        "/bad-length",
        "/length-and-chunked",
        "/gzip-chunked",
        "/obs-fold",
    ];
    for path in malformed {
        let r = c.get("h", path, &[]).await;
        assert_eq!(r.status, 502, "{path}");
        assert!(
            r.text().ends_with("reset reason: protocol error"),
            "{path}: {}",
            r.text()
        );
    }
    // A body shorter than its length: the head went out, so the stream is reset.
    let req = c.request(Method::GET, "h", "/short", &[], empty());
    assert!(
        c.send(req).await.is_err(),
        "a truncated body must not look complete"
    );
    // The proxy and the client connection are fine.
    let r = c.get("h", "/plain", &[]).await;
    assert_eq!(r.text(), "0123456789");
    assert_eq!(b.connections(), malformed.len() as u64 + 2);
    s.wait_stat("http.ingress.downstream_rq_5xx", |v| {
        v == malformed.len() as i64
    })
    .await;
}

/// An answer made of a valid one with random bytes changed, for `/fuzz/<seed>`:
/// from a few shapes (a length, chunked with trailers, a 204, a 100 first), one to
/// three bytes replaced by a control byte, a separator or anything, sometimes cut
/// (`common::mutate`).
fn fuzzed_answer(head: &str) -> Scripted {
    const SHAPES: [&[u8]; 4] = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nX-A: b\r\n\r\n0123456789",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-t\r\n\r\n4\r\nbody\r\n0\r\nX-T: 1\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\nX-B: c\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
    ];
    let seed = head
        .split(' ')
        .nth(1)
        .and_then(|p| p.strip_prefix("/fuzz/"));
    let Some(seed) = seed.and_then(|n| n.parse::<u64>().ok()) else {
        return Scripted::Close(SHAPES[0].to_vec());
    };
    let mut rng = mutate::Rng::new(seed);
    let shape = SHAPES[rng.below(SHAPES.len())];
    Scripted::Close(mutate::mutate(shape, &mut rng, false))
}

/// Upstream answers with random bytes changed, all on one HTTP/2 client connection:
/// each ends its own stream however it must (proxied, 502 for an answer that is
/// not HTTP/1.1, a reset for a body broken after its head went out) within a bound,
/// and the client's connection, shared by every stream, serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_answers_end_only_their_own_stream() {
    let b = Backend::scripted("raw", fuzzed_answer).await;
    let config = Bootstrap::catch_all("up")
        .hcm("stream_idle_timeout: 2s")
        .cluster("up", b.addr());
    let s = Strait::start_with(&config.build(), &["--concurrency", "1"]).await;
    let mut c = h2(&s).await;
    let mut statuses = std::collections::BTreeMap::<String, u32>::new();
    for seed in 1..=200u64 {
        let req = c.request(Method::GET, "h", &format!("/fuzz/{seed}"), &[], empty());
        let outcome = tokio::time::timeout(Duration::from_secs(10), c.send(req))
            .await
            .unwrap_or_else(|_| panic!("/fuzz/{seed}: no end within 10 s"));
        let key = match outcome {
            Ok(r) if r.status == 502 => {
                let text = r.text();
                assert!(
                    text.ends_with("reset reason: protocol error"),
                    "/fuzz/{seed}: {text}"
                );
                "502".to_owned()
            }
            Ok(r) => r.status.to_string(),
            Err(_) => "reset".to_owned(),
        };
        *statuses.entry(key).or_default() += 1;
    }
    // Both kinds of ending were exercised.
    assert!(
        statuses.contains_key("502") && statuses.len() > 2,
        "{statuses:?}"
    );
    let r = c.get("h", "/plain", &[]).await;
    assert_eq!((r.status, r.text().as_str()), (200, "0123456789"));
    let stderr = s.stderr();
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Bytes an upstream sends past its answer's length (here shaped as a second answer)
/// belong to no request: the connection is not reused, so they never reach the next
/// request's client (a response desync, possibly another client's data).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_past_an_answer_never_answer_the_next_request() {
    let b = Backend::scripted("raw", answers).await;
    let s = proxy_to(&b).await;
    let mut c = h2(&s).await;
    let r = c.get("h", "/overlong", &[]).await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    for _ in 0..3 {
        let r = c.get("h", "/plain", &[]).await;
        assert_eq!((r.status, r.text().as_str()), (200, "0123456789"));
    }
    assert_eq!(
        b.connections(),
        2,
        "the overlong answer's connection is not reused"
    );
}

/// A response head of 70,000 bytes passes (Envoy's HTTP/1.1 client takes up to
/// 80 KiB); one of 90,000 is a protocol error (`malformed_answers_are_502…`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_head_up_to_80_kib_passes() {
    let b = Backend::scripted("raw", answers).await;
    let s = proxy_to(&b).await;
    let request = b"GET /big-head HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
    let (reply, _) = send_raw_until_close(s.main_addr().await, request).await;
    let start = &reply[..reply.len().min(200)];
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{start}");
    assert!(
        reply.contains(&format!("X-Big: {}\r\n", "a".repeat(70_000))),
        "{start}"
    );
    assert!(reply.ends_with("\r\n\r\nok"), "{start}");
}

/// A body that breaks its framing after the head: an HTTP/1.1 client gets the head and
/// the data before the break, then the connection closes with the body unfinished (no
/// last chunk), as from Envoy and NGINX. Before, everything queued was dropped and
/// the client saw an empty reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_broken_midway_reaches_the_client_unfinished() {
    let b = Backend::scripted("raw", answers).await;
    let (log, hcm) =
        access_log("%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%");
    let config = Bootstrap::catch_all("up").hcm(&hcm).cluster("up", b.addr());
    let s = Strait::start_with(&config.build(), &["--concurrency", "1"]).await;
    let (reply, closed) = send_raw_until_close(
        s.main_addr().await,
        b"GET /bad-chunk HTTP/1.1\r\nHost: h\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    assert!(reply.ends_with("\r\n\r\n3\r\nabc\r\n"), "{reply:?}");
    assert!(closed, "the connection closes on the unfinished body");
    // A body cut short by the upstream's close, too.
    let (reply, closed) = send_raw_until_close(
        s.main_addr().await,
        b"GET /short HTTP/1.1\r\nHost: h\r\n\r\n",
    )
    .await;
    assert!(reply.ends_with("\r\n\r\nonly5"), "{reply:?}");
    assert!(closed, "the connection closes on the unfinished body");
    // Both are logged as Envoy's HTTP/1.1 codec takes them: a protocol error after
    // the response started, not the body's success.
    let lines = log_lines(&log, 2).await;
    assert_eq!(
        lines,
        [
            "/bad-chunk 200 UPE upstream_reset_after_response_started{protocol_error}",
            "/short 200 UPE upstream_reset_after_response_started{protocol_error}",
        ]
    );
}

/// An upstream may answer before it has read the request body (413, 401): the answer
/// reaches the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_before_the_body_is_read_reaches_the_client() {
    let b = Backend::scripted("raw", answers).await;
    let s = proxy_to(&b).await;
    let mut c = h2(&s).await;
    let req = c.request(Method::POST, "h", "/early", &[], generated(8 << 20));
    let r = c.send(req).await.expect("the early answer");
    assert_eq!((r.status, r.text().as_str()), (413, "too big!"));
    let r = c.get("h", "/plain", &[]).await;
    assert_eq!(r.text(), "0123456789");
    // An upstream that closes at once after answering resets the body's rest: the
    // write fails, and the answer it sent still reaches the client, not a 503.
    for _ in 0..5 {
        let req = c.request(Method::POST, "h", "/early-reset", &[], generated(8 << 20));
        let r = c.send(req).await.expect("the early answer");
        assert_eq!((r.status, r.text().as_str()), (413, "too big!"));
    }
}

/// The keep-alive race: the upstream closes a pooled connection as it is reused. An
/// idempotent request without a body is sent again on a new connection; one with a
/// body is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_race_is_retried_on_a_new_connection() {
    let racer = Backend::keepalive_racer("racer").await;
    let s = proxy_to(&racer).await;
    let mut c = h2(&s).await;
    assert_eq!(c.get("h", "/", &[]).await.status, 200);
    let r = c.get("h", "/again", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(racer.connections(), 2, "the retry used a new connection");
    s.wait_stat("cluster.up.upstream_rq_retry", |v| v == 1)
        .await;
    let req = c.request(Method::POST, "h", "/post", &[], full("data"));
    let r = c.send(req).await.expect("response");
    assert_eq!(r.status, 503);
    assert!(
        r.text().ends_with("reset reason: connection termination"),
        "{}",
        r.text()
    );
}

/// An idle pooled connection keeps no buffer after a second, and serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_releases_its_buffer_and_serves_again() {
    let b = Backend::idle_closing("b", Duration::from_secs(60)).await;
    let s = proxy_to(&b).await;
    let mut c = h2(&s).await;
    assert_eq!(c.get("h", "/one", &[]).await.text(), "ok");
    s.wait_stat("cluster.up.upstream_cx_idle_released", |v| v == 1)
        .await;
    assert_eq!(s.stat("cluster.up.upstream_cx_active").await, Some(1));
    assert_eq!(c.get("h", "/two", &[]).await.text(), "ok");
    assert_eq!(b.connections(), 1, "the idle connection was reused");
    s.wait_stat("cluster.up.upstream_cx_idle_released", |v| v == 2)
        .await;
}

/// An idle connection the upstream closed leaves the pool without a request finding it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_the_upstream_closes_leaves_the_pool() {
    let b = Backend::idle_closing("b", Duration::from_millis(300)).await;
    let s = proxy_to(&b).await;
    let mut c = h2(&s).await;
    assert_eq!(c.get("h", "/one", &[]).await.text(), "ok");
    s.wait_stat("cluster.up.upstream_cx_active", |v| v == 0)
        .await;
    assert_eq!(c.get("h", "/two", &[]).await.text(), "ok");
    assert_eq!(b.connections(), 2);
}
