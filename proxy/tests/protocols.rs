//! Protocols through the proxy: HTTP/1.1 and h2c on each side, large and chunked
//! bodies, trailers, `Expect: 100-continue`, hop-by-hop and forwarding headers, header
//! case, WebSocket and gRPC.

mod common;

use std::time::Duration;

use common::client::{self, count_body, generated, with_trailers};
use common::grpc::{self, pb};
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::Method;
use tokio_tungstenite::tungstenite::Message;

const MIB: u64 = 1024 * 1024;

async fn proxy_to(backend: &Backend, h2_upstream: bool) -> Strait {
    let config = Bootstrap::catch_all("up");
    let config = if h2_upstream {
        config.h2_cluster("up", backend.addr())
    } else {
        config.cluster("up", backend.addr())
    };
    Strait::start(&config.build()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_client_to_h2_upstream() {
    let b = Backend::echo("b").await;
    let s = proxy_to(&b, true).await;
    let r = get(s.main_addr().await, "svc.test", "/p?q=1", &[("x-c", "1")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.version, http::Version::HTTP_11);
    let e = r.echo();
    assert_eq!(e.version, "HTTP/2.0");
    assert_eq!(e.host, "svc.test", "Host becomes :authority");
    assert_eq!(e.path, "/p?q=1");
    assert_eq!(e.header("x-c"), Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_client_to_h1_upstream() {
    let b = Backend::echo("b").await;
    let s = proxy_to(&b, false).await;
    let r = get_h2(s.main_addr().await, "svc.test", "/p?q=1", &[("x-c", "1")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.version, http::Version::HTTP_2);
    let e = r.echo();
    assert_eq!(e.version, "HTTP/1.1");
    assert_eq!(e.host, "svc.test", ":authority becomes Host");
    assert_eq!(e.path, "/p?q=1");
}

/// `codec_type` pins a listener to one protocol: HTTP/2 serves h2c with no sniff,
/// HTTP/1 serves HTTP/1.1; each counts its kind of connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codec_type_pins_the_protocol() {
    let b = Backend::echo("b").await;
    for (codec, h2) in [("HTTP2", true), ("HTTP1", false)] {
        let config = Bootstrap::catch_all("b")
            .cluster("b", b.addr())
            .hcm(&format!("codec_type: {codec}"))
            .build();
        let s = Strait::start(&config).await;
        let addr = s.main_addr().await;
        for _ in 0..2 {
            let r = match h2 {
                true => get_h2(addr, "h", "/p", &[]).await,
                false => get(addr, "h", "/p", &[]).await,
            };
            assert_eq!(r.status, 200, "{codec}");
            assert_eq!(r.version == http::Version::HTTP_2, h2, "{codec}");
        }
        let (mine, other) = match h2 {
            true => ("http2", "http1"),
            false => ("http1", "http2"),
        };
        let count = |kind: &str| format!("http.ingress.downstream_cx_{kind}_total");
        s.wait_stat(&count(mine), |v| v == 2).await;
        assert_eq!(s.stat(&count(other)).await, Some(0), "{codec}");
    }
}

/// Concurrent h2 streams share one upstream connection, once it is up.
async fn concurrent_h2_streams(warm_first: bool) -> u64 {
    let b = Backend::echo("b").await;
    let s = proxy_to(&b, true).await;
    let mut client = Client::connect(s.main_addr().await, Proto::H2)
        .await
        .unwrap();
    if warm_first {
        assert_eq!(client.get("svc.test", "/warm", &[]).await.status, 200);
    }
    let mut streams = Vec::new();
    for i in 0..20 {
        let mut c = client.clone_h2();
        streams.push(tokio::spawn(async move {
            let req = c.request(
                Method::GET,
                "svc.test",
                &format!("/s/{i}"),
                &[("x-backend-delay-ms", "50")],
                client::empty(),
            );
            c.send(req).await.unwrap()
        }));
    }
    for (i, s) in streams.into_iter().enumerate() {
        let r = s.await.unwrap();
        assert_eq!(r.status, 200);
        let e = r.echo();
        assert_eq!(
            (e.version.as_str(), e.path),
            ("HTTP/2.0", format!("/s/{i}"))
        );
    }
    b.connections()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_to_h2_streams_multiplex_on_one_upstream_connection() {
    assert_eq!(concurrent_h2_streams(true).await, 1);
}

/// Pins a pool bug: 20 streams arriving before the first upstream h2 connection is up
/// each open their own connection (pool.rs `send_h2` does not share a connect in
/// progress); Envoy attaches them to the one connecting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_streams_arriving_together_share_the_first_upstream_connection() {
    assert_eq!(concurrent_h2_streams(false).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways() {
    let b = Backend::echo("b").await;
    let h1 = proxy_to(&b, false).await;
    let h2 = proxy_to(&b, true).await;
    let size = 256 * MIB;
    for (s, proto) in [(&h1, Proto::H1), (&h2, Proto::H2)] {
        let mut c = Client::connect(s.main_addr().await, proto).await.unwrap();
        // Up.
        let req = c.request(Method::POST, "big.test", "/up", &[], generated(size));
        let r = c.send(req).await.unwrap();
        assert_eq!(r.status, 200, "{proto:?}: {}", r.text());
        assert_eq!(r.echo().body_len, size, "{proto:?} upload");
        // Down.
        let n = size.to_string();
        let req = c.request(
            Method::GET,
            "big.test",
            "/down",
            &[("x-backend-body-bytes", &n)],
            client::empty(),
        );
        let resp = c.send_streaming(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let (got, _) = count_body(resp.into_body()).await.unwrap();
        assert_eq!(got, size, "{proto:?} download");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_gib_upload_streams_in_bounded_memory() {
    let b = Backend::echo("b").await;
    let s = proxy_to(&b, false).await;
    let addr = s.main_addr().await;
    let mut c = Client::connect(addr, Proto::H1).await.unwrap();
    // Warm up pools and buffers so the baseline is a running proxy. The issue asks
    // for "a few MiB" at most; the measured growth is well under 1 MiB.
    let req = c.request(Method::POST, "mem.test", "/", &[], generated(8 * MIB));
    assert_eq!(c.send(req).await.unwrap().status, 200);
    let before = s.rss_kib();
    let req = c.request(Method::POST, "mem.test", "/", &[], generated(1024 * MIB));
    let r = within(Duration::from_secs(120), "1 GiB upload", c.send(req))
        .await
        .unwrap();
    assert_eq!(r.echo().body_len, 1024 * MIB);
    let after = s.rss_kib();
    let growth_mib = after.saturating_sub(before) / 1024;
    assert!(
        growth_mib < 8,
        "RSS grew {growth_mib} MiB ({before} KiB -> {after} KiB) streaming 1 GiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_request_and_response() {
    let b = Backend::echo("b").await;
    let s = proxy_to(&b, false).await;
    let addr = s.main_addr().await;
    let mut raw = RawConn::connect(addr).await;
    raw.write(b"POST /chunked HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        .await;
    let reply = raw.read_until("\"backend\"", Duration::from_secs(10)).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("\"body_len\":11"), "{reply}");
    // The backend streams 100 KiB with no length; an HTTP/1.1 client gets it chunked.
    let r = get(
        addr,
        "h",
        "/",
        &[
            ("x-backend-body-bytes", "102400"),
            ("x-backend-trailers", "x-t=1"),
        ],
    )
    .await;
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.body.len(), 102400);
}

/// Sends a body with request trailers and asks the backend for response trailers;
/// both must cross the proxy. HTTP/1.1 announces its trailers in `Trailer`.
async fn trailers_cross(proto: Proto, upstream_h2: bool) {
    let b = Backend::echo("b").await;
    let s = proxy_to(&b, upstream_h2).await;
    let mut c = Client::connect(s.main_addr().await, proto).await.unwrap();
    let mut headers = vec![
        ("x-backend-trailers", "x-resp-trailer=done,x-count=2"),
        ("te", "trailers"),
    ];
    if proto == Proto::H1 {
        headers.push(("trailer", "x-req-trailer"));
    }
    let body = with_trailers("body", &[("x-req-trailer", "sent")]);
    let req = c.request(Method::POST, "t.test", "/", &headers, body);
    let r = c.send(req).await.unwrap();
    assert_eq!(r.status, 200);
    let e = r.echo();
    assert_eq!(e.body_len, 4);
    assert_eq!(
        e.trailers.get("x-req-trailer").map(String::as_str),
        Some("sent"),
        "request trailers reach the upstream"
    );
    assert_eq!(
        r.trailer("x-resp-trailer"),
        Some("done"),
        "response trailers reach the client: {:?}",
        r.trailers
    );
    assert_eq!(r.trailer("x-count"), Some("2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_h2_to_h2() {
    trailers_cross(Proto::H2, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_h1_chunked() {
    trailers_cross(Proto::H1, false).await;
}

/// `TE` is hop-by-hop, but `trailers` in it goes on alone, whatever else the client
/// listed (Envoy's `sanitizeTEHeader`); an HTTP/2 upstream takes no other value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn te_goes_upstream_as_trailers_alone() {
    for h2_upstream in [false, true] {
        let b = Backend::echo("b").await;
        let s = proxy_to(&b, h2_upstream).await;
        let addr = s.main_addr().await;
        for (sent, forwarded) in [
            ("gzip, trailers", Some("trailers")),
            ("Trailers", Some("trailers")),
            ("gzip;q=1.0, deflate", None),
        ] {
            let r = get(addr, "h", "/", &[("te", sent)]).await;
            assert_eq!(r.status, 200, "TE {sent:?}, h2 upstream {h2_upstream}");
            assert_eq!(
                r.echo().header("te"),
                forwarded,
                "TE {sent:?}, h2 upstream {h2_upstream}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue() {
    let b = Backend::echo("b").await;
    let s = proxy_to(&b, false).await;
    let mut raw = RawConn::connect(s.main_addr().await).await;
    raw.write(
        b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await;
    let interim = raw.read_until("\r\n\r\n", Duration::from_secs(10)).await;
    assert!(
        interim.starts_with("HTTP/1.1 100 Continue\r\n"),
        "{interim:?}"
    );
    raw.write(b"hello").await;
    let reply = raw.read_until("\"backend\"", Duration::from_secs(10)).await;
    assert!(reply.contains("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("\"body_len\":5"), "{reply}");
    assert!(
        !reply.to_ascii_lowercase().contains("\"expect\""),
        "Expect is not forwarded: {reply}"
    );
    // An expectation Strait does not meet itself is the upstream's to meet or
    // refuse (417), as in Envoy: it goes on, and the body is not held back.
    let mut raw = RawConn::connect(s.main_addr().await).await;
    raw.write(
        b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: x-custom\r\n\r\nhello",
    )
    .await;
    let reply = raw.read_until("\"backend\"", Duration::from_secs(10)).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("\"body_len\":5"), "{reply}");
    assert!(
        reply
            .to_ascii_lowercase()
            .contains("\"expect\":\"x-custom\""),
        "{reply}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_not_forwarded() {
    let b = Backend::echo("b").await;
    let s = proxy_to(&b, false).await;
    let r = get(
        s.main_addr().await,
        "h",
        "/",
        &[
            ("connection", "x-foo"),
            ("x-foo", "secret"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("x-bar", "kept"),
            (
                "x-backend-respond-header",
                "connection=x-resp-hop,x-resp-hop=1,keep-alive=timeout=5,x-resp-kept=1",
            ),
        ],
    )
    .await;
    let e = r.echo();
    for h in ["x-foo", "keep-alive", "proxy-connection"] {
        assert_eq!(
            e.header(h),
            None,
            "{h} reached the upstream: {:?}",
            e.headers
        );
    }
    assert_ne!(e.header("connection"), Some("x-foo"));
    assert_eq!(e.header("x-bar"), Some("kept"));
    for h in ["x-resp-hop", "keep-alive"] {
        assert_eq!(r.header(h), None, "{h} reached the client: {:?}", r.headers);
    }
    assert_eq!(r.header("x-resp-kept"), Some("1"));
}

/// A client's `Connection: close` is the connection's business: as in Envoy (whose
/// connection manager drops it first), neither the upstream nor the access log sees
/// it, while the other headers of the request are logged and forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_is_neither_forwarded_nor_logged() {
    let b = Backend::raw_recorder("b").await;
    let (log, hcm) = access_log("%REQ(CONNECTION)%|%REQ(X-BAR)%");
    let config = Bootstrap::catch_all("up")
        .hcm(&hcm)
        .cluster("up", b.addr())
        .build();
    let s = Strait::start(&config).await;
    let addr = s.main_addr().await;
    let reply = send_raw(
        addr,
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\nX-Bar: kept\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(
        reply.to_ascii_lowercase().contains("connection: close"),
        "the proxy closes, and says so: {reply}"
    );
    let heads = b.heads();
    assert!(heads[0].contains("X-Bar: kept\r\n"), "{}", heads[0]);
    assert!(
        !heads[0].to_ascii_lowercase().contains("connection: close"),
        "forwarded upstream: {}",
        heads[0]
    );
    assert_eq!(first_log_line(&log).await, "-|kept");
    // One that names another header: neither it nor the named one is forwarded, and
    // the log does not see `Connection` either.
    let reply = send_raw(
        addr,
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nX-Bar: kept\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let head = b.heads()[1].to_ascii_lowercase();
    assert!(
        !head.contains("x-hop") && !head.contains("connection:"),
        "{head}"
    );
    let lines = log_lines(&log, 2).await;
    assert_eq!(lines[1], "-|kept");
}

/// An h2 client that resets its stream (RST_STREAM) cancels the request upstream:
/// the upstream request ends long before the backend would have answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_stream_reset_by_the_client_cancels_its_upstream_request() {
    let b = Backend::echo("b").await;
    let s = proxy_to(&b, false).await;
    let mut c = Client::connect(s.main_addr().await, Proto::H2)
        .await
        .unwrap();
    let req = c.request(
        Method::GET,
        "h",
        "/slow",
        &[("x-backend-delay-ms", "30000")],
        client::empty(),
    );
    let mut other = c.clone_h2();
    let waiting = tokio::spawn(async move { other.send(req).await });
    s.wait_stat("cluster.up.upstream_rq_active", |v| v == 1)
        .await;
    // Dropping the response future resets the stream.
    waiting.abort();
    s.wait_stat("cluster.up.upstream_rq_active", |v| v == 0)
        .await;
    // The connection and its other streams are untouched.
    assert_eq!(c.get("h", "/after", &[]).await.status, 200);
}

/// Connection-specific headers are not HTTP/2's (RFC 9113 §8.2.2): one a route adds
/// to a response is dropped on an h2 connection, not sent (h2 would refuse the
/// head, and the stream would be reset). A response without `date` or
/// `content-length` gets them, as on HTTP/1.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_response_heads_lose_connection_headers_and_gain_date_and_length() {
    let vhosts = r#"
- name: d
  domains: ["*"]
  routes:
  - match: {path: /direct}
    direct_response: {status: 200, body: {inline_string: "direct"}}
    response_headers_to_add:
    - header: {key: keep-alive, value: "timeout=5"}
    - header: {key: x-kept, value: "1"}
"#;
    let s = Strait::start(&Bootstrap::new(vhosts).build()).await;
    let addr = s.main_addr().await;
    let r = get_h2(addr, "h", "/direct", &[]).await;
    assert_eq!((r.status, r.text().as_str()), (200, "direct"));
    assert_eq!(r.header("keep-alive"), None, "{:?}", r.headers);
    assert_eq!(r.header("x-kept"), Some("1"));
    assert!(r.header("date").is_some(), "{:?}", r.headers);
    assert_eq!(r.header("content-length"), Some("6"), "{:?}", r.headers);
    // Over HTTP/1.1 the route's header goes out as configured.
    let r = get(addr, "h", "/direct", &[]).await;
    assert_eq!(r.header("keep-alive"), Some("timeout=5"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_and_request_id() {
    let b = Backend::echo("b").await;
    let config = Bootstrap::catch_all("up")
        .hcm("use_remote_address: true")
        .cluster("up", b.addr());
    let s = Strait::start(&config.build()).await;
    let addr = s.main_addr().await;
    // Envoy 1.40 records a loopback peer as the machine's own address and, with no
    // internal_address_config, treats every caller as external.
    let me = strait::headers::local_address().to_string();
    let e = get(addr, "fwd.test", "/", &[]).await.echo();
    assert_eq!(e.header("x-forwarded-for"), Some(me.as_str()));
    assert_eq!(e.header("x-forwarded-proto"), Some("http"));
    assert_eq!(e.header("x-envoy-external-address"), Some("127.0.0.1"));
    let id = e.header("x-request-id").expect("x-request-id generated");
    assert_eq!(id.len(), 36, "a UUID: {id}");
    assert_eq!(e.host, "fwd.test");
    let e = get(
        addr,
        "fwd.test",
        "/",
        &[("x-forwarded-for", "1.2.3.4"), ("x-request-id", "mine")],
    )
    .await
    .echo();
    assert_eq!(
        e.header("x-forwarded-for"),
        Some(format!("1.2.3.4,{me}").as_str())
    );
    assert_ne!(
        e.header("x-request-id"),
        Some("mine"),
        "an edge replaces an external caller's request id"
    );
    let e = get_h2(addr, "fwd.test", "/", &[]).await.echo();
    assert_eq!(e.header("x-forwarded-for"), Some(me.as_str()));
    assert!(e.header("x-request-id").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_keeps_the_callers_request_id() {
    let b = Backend::echo("b").await;
    let config = Bootstrap::catch_all("up").cluster("up", b.addr());
    let s = Strait::start(&config.build()).await;
    let addr = s.main_addr().await;
    let e = get(addr, "fwd.test", "/", &[("x-request-id", "mine")])
        .await
        .echo();
    assert_eq!(e.header("x-request-id"), Some("mine"));
    assert_eq!(
        e.header("x-forwarded-for"),
        None,
        "no use_remote_address: XFF untouched"
    );
    let e = get(addr, "fwd.test", "/", &[]).await.echo();
    assert_eq!(e.header("x-request-id").map(str::len), Some(36));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_header_case_is_preserved() {
    let b = Backend::raw_recorder("raw").await;
    let s = proxy_to(&b, false).await;
    let mut raw = RawConn::connect(s.main_addr().await).await;
    raw.write(b"GET /case HTTP/1.1\r\nHost: h\r\nX-Mixed-Case: One\r\nx-lower: two\r\nX-UPPER: three\r\n\r\n").await;
    let reply = raw.read_until("ok", Duration::from_secs(10)).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let heads = b.heads();
    assert_eq!(heads.len(), 1);
    let head = &heads[0];
    for line in [
        "X-Mixed-Case: One\r\n",
        "x-lower: two\r\n",
        "X-UPPER: three\r\n",
    ] {
        assert!(
            head.contains(line),
            "{line:?} not sent verbatim; upstream saw:\n{head}"
        );
    }
}

fn websocket_config(backend: &Backend, enabled: bool) -> String {
    let config = Bootstrap::catch_all("ws").cluster("ws", backend.addr());
    let config = if enabled {
        config.hcm("upgrade_configs: [{upgrade_type: websocket}]")
    } else {
        config
    };
    config.build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_proxy() {
    let b = Backend::websocket_echo("ws").await;
    let s = Strait::start(&websocket_config(&b, true)).await;
    let addr = s.main_addr().await;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut ws, resp) = within(
        Duration::from_secs(10),
        "websocket handshake",
        tokio_tungstenite::client_async(format!("ws://{addr}/chat"), tcp),
    )
    .await
    .expect("websocket handshake through the proxy");
    assert_eq!(resp.status(), 101);
    for i in 0..5 {
        let text = format!("hello {i}");
        ws.send(Message::text(text.clone())).await.unwrap();
        let got = within(Duration::from_secs(10), "echo", ws.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, Message::text(text));
    }
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    let got = within(Duration::from_secs(10), "echo", ws.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, Message::binary(vec![0u8, 1, 2, 255]));
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_without_upgrade_config_is_403() {
    let b = Backend::websocket_echo("ws").await;
    let s = Strait::start(&websocket_config(&b, false)).await;
    let addr = s.main_addr().await;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let err = within(
        Duration::from_secs(10),
        "websocket handshake",
        tokio_tungstenite::client_async(format!("ws://{addr}/chat"), tcp),
    )
    .await
    .expect_err("the upgrade must be refused");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 403),
        other => panic!("expected an HTTP 403, got {other:?}"),
    }
    assert_eq!(b.connections(), 0, "nothing reaches the backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_bidi_and_error_status() {
    let b = Backend::grpc("grpc").await;
    let s = proxy_to(&b, true).await;
    let mut client = grpc::client(s.main_addr().await).await;

    let reply = client
        .unary(pb::EchoRequest {
            message: "hi".into(),
            fail_code: 0,
        })
        .await
        .expect("unary call");
    assert_eq!(reply.into_inner().message, "hi");

    let status = client
        .unary(pb::EchoRequest {
            message: "boom".into(),
            fail_code: tonic::Code::NotFound as i32,
        })
        .await
        .expect_err("the server fails this call");
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    assert!(
        status.message().contains("requested failure: boom"),
        "{status:?}"
    );

    // Bidi: each reply arrives before the next request is sent, so nothing is buffered
    // whole on the way.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut replies = client
        .bidi(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("bidi call")
        .into_inner();
    for i in 0..5 {
        let message = format!("m{i}");
        tx.send(pb::EchoRequest {
            message: message.clone(),
            fail_code: 0,
        })
        .await
        .unwrap();
        let got = within(Duration::from_secs(10), "bidi reply", replies.next()).await;
        assert_eq!(got.expect("a reply").expect("ok").message, message);
    }
    tx.send(pb::EchoRequest {
        message: "end".into(),
        fail_code: tonic::Code::Aborted as i32,
    })
    .await
    .unwrap();
    drop(tx);
    let last = within(Duration::from_secs(10), "bidi error", replies.next()).await;
    let status = last
        .expect("an error status")
        .expect_err("a failure status");
    assert_eq!(status.code(), tonic::Code::Aborted);
}
