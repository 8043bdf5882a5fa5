//! Taking an instance out of service, as a sidecar or behind a load balancer:
//! admin `/healthcheck/fail` and `/healthcheck/ok`, `/drain_listeners` with Envoy's
//! `inboundonly`, `graceful` and `skip_exit`, and `SIGTERM` on a sidecar (inbound
//! listeners drain, outbound ones keep serving the application until it is done).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A listener answering `name` itself, with `fields` (e.g. `traffic_direction`); a
/// name ending in `-h1` has `codec_type: HTTP1` (no protocol sniffing).
fn listener(name: &str, fields: &str) -> String {
    let codec = match name.ends_with("-h1") {
        true => "codec_type: HTTP1",
        false => "",
    };
    format!(
        r#"
  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    {fields}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          {codec}
          route_config:
            virtual_hosts:
            - name: v
              domains: ["*"]
              routes:
              - match: {{prefix: /}}
                direct_response: {{status: 200, body: {{inline_string: {name}}}}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#
    )
}

fn config(listeners: &[(&str, &str)]) -> String {
    let mut yaml = "admin: {address: {socket_address: {address: 127.0.0.1, port_value: 0}}}\n\
                    static_resources:\n  listeners:"
        .to_owned();
    for (name, fields) in listeners {
        yaml.push_str(&listener(name, fields));
    }
    yaml
}

/// A sidecar's listeners: `in` and `in-h1` (inbound), `out` (outbound).
fn sidecar() -> String {
    config(&[
        ("in", "traffic_direction: INBOUND"),
        ("in-h1", "traffic_direction: INBOUND"),
        ("out", "traffic_direction: OUTBOUND"),
    ])
}

/// One HTTP/1.1 connection, spoken by hand so `Connection: close` and the socket's
/// end are seen as they are.
struct Raw(TcpStream);

/// A response as read: its head (lower-cased) and body.
struct Answer {
    head: String,
    body: String,
}

impl Answer {
    fn closes(&self) -> bool {
        self.head.contains("\r\nconnection: close\r\n")
    }
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        Raw(
            within(Duration::from_secs(5), "connect", TcpStream::connect(addr))
                .await
                .expect("the listener accepts"),
        )
    }

    /// `GET /`, and its whole answer.
    async fn get(&mut self) -> Answer {
        self.0
            .write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            .await
            .expect("write the request");
        within(Duration::from_secs(5), "the answer", async {
            let mut buf = Vec::new();
            loop {
                let mut chunk = [0u8; 4096];
                let n = self.0.read(&mut chunk).await.expect("read the answer");
                assert!(n > 0, "the connection closed before its answer: {buf:?}");
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                let Some(end) = text.find("\r\n\r\n") else {
                    continue;
                };
                let head = text[..end + 4].to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map_or(0, |v| v.trim().parse().expect("content-length"));
                if buf.len() >= end + 4 + length {
                    let body = text[end + 4..end + 4 + length].to_owned();
                    return Answer { head, body };
                }
            }
        })
        .await
    }

    /// Whether the proxy closed the connection (EOF or reset) within `wait`.
    async fn closed_within(&mut self, wait: Duration) -> bool {
        let mut byte = [0u8; 1];
        matches!(
            tokio::time::timeout(wait, self.0.read(&mut byte)).await,
            Ok(Ok(0) | Err(_))
        )
    }
}

async fn refuses(addr: SocketAddr) -> bool {
    TcpStream::connect(addr).await.is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_health_check_closes_connections_after_their_answers() {
    let yaml = config(&[("main", ""), ("admin-like", "drain_type: MODIFY_ONLY")]);
    let s = Strait::start(&yaml).await;
    let (main, modify_only) = (s.addr("main").await, s.addr("admin-like").await);
    assert_eq!(s.stat("server.live").await, Some(1));
    let mut a = Raw::connect(main).await;
    let first = a.get().await;
    assert!(!first.closes(), "keep-alive before: {}", first.head);
    let mut b = Raw::connect(modify_only).await;
    assert!(!b.get().await.closes());
    let mut h2 = Client::connect(main, Proto::H2)
        .await
        .expect("h2c connects");
    assert_eq!(h2.get("h", "/", &[]).await.status, 200);

    assert_eq!(
        s.admin_post("/healthcheck/fail").await,
        (200, "OK\n".into())
    );
    assert_eq!(s.admin_get("/ready").await, (503, "DRAINING\n".into()));
    assert_eq!(s.stat("server.live").await, Some(0));
    let (_, info) = s.admin_get("/server_info").await;
    assert!(info.contains(r#""state": "DRAINING""#), "{info}");

    // The default drain type: the next answer carries `Connection: close` and the
    // connection ends; a new connection is served, once.
    let answer = a.get().await;
    assert_eq!(answer.body, "main");
    assert!(answer.closes(), "{}", answer.head);
    assert!(a.closed_within(Duration::from_secs(5)).await);
    let mut fresh = Raw::connect(main).await;
    assert!(fresh.get().await.closes());
    // HTTP/2: the stream is answered, then GOAWAY ends the connection.
    assert_eq!(h2.get("h", "/", &[]).await.status, 200);
    eventually(
        Duration::from_secs(5),
        "GOAWAY on the h2 connection",
        || {
            let req = h2.request(http::Method::GET, "h", "/", &[], empty());
            let mut again = h2.clone_h2();
            async move { again.send(req).await.is_err().then_some(()) }
        },
    )
    .await;
    // MODIFY_ONLY: untouched.
    for _ in 0..2 {
        let answer = b.get().await;
        assert_eq!(answer.body, "admin-like");
        assert!(!answer.closes(), "{}", answer.head);
    }
    // Counted as Envoy's: the keep-alive connection, the new one, the h2 one.
    assert_eq!(s.stat("http.main.downstream_cx_drain_close").await, Some(3));
    assert_eq!(
        s.stat("http.admin-like.downstream_cx_drain_close").await,
        Some(0)
    );

    assert_eq!(s.admin_post("/healthcheck/ok").await, (200, "OK\n".into()));
    assert_eq!(s.admin_get("/ready").await, (200, "LIVE\n".into()));
    assert_eq!(s.stat("server.live").await, Some(1));
    let mut c = Raw::connect(main).await;
    for _ in 0..2 {
        assert!(!c.get().await.closes());
    }
    // Both are POST-only, as Envoy's.
    assert_eq!(s.admin_get("/healthcheck/fail").await.0, 405);
    assert_eq!(s.admin_get("/ready").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_inbound_listeners_leaves_outbound_ones_serving() {
    let s = Strait::start(&sidecar()).await;
    let (inbound, outbound) = (s.addr("in").await, s.addr("out").await);
    let mut idle_in = Raw::connect(inbound).await;
    assert_eq!(idle_in.get().await.body, "in");
    let mut idle_out = Raw::connect(outbound).await;
    assert_eq!(idle_out.get().await.body, "out");

    assert_eq!(s.admin_post("/drain_listeners?inboundonly").await.0, 200);
    eventually(Duration::from_secs(5), "inbound to refuse", || async {
        refuses(inbound).await.then_some(())
    })
    .await;
    assert!(
        idle_in.closed_within(Duration::from_secs(5)).await,
        "an idle inbound connection closes"
    );
    assert_eq!(s.stat("http.in.downstream_cx_drain_close").await, Some(1));
    assert_eq!(s.stat("http.out.downstream_cx_drain_close").await, Some(0));
    assert_eq!(s.admin_get("/ready").await.0, 503);
    // A drain is not a failed health check (as in Envoy).
    assert_eq!(s.stat("server.live").await, Some(1));
    // Outbound: the idle connection and new ones are served as before.
    for _ in 0..2 {
        let answer = idle_out.get().await;
        assert_eq!(answer.body, "out");
        assert!(!answer.closes(), "{}", answer.head);
    }
    let mut fresh = Raw::connect(outbound).await;
    assert!(!fresh.get().await.closes());

    // Then everything.
    assert_eq!(s.admin_post("/drain_listeners").await.0, 200);
    eventually(Duration::from_secs(5), "outbound to refuse", || async {
        refuses(outbound).await.then_some(())
    })
    .await;
    assert!(idle_out.closed_within(Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_drain_keeps_accepting_for_the_drain_time() {
    let args = ["--drain-time-s", "2", "--drain-strategy", "immediate"];
    let mut s = Strait::start_with(&sidecar(), &args).await;
    let (inbound, outbound) = (s.addr("in").await, s.addr("out").await);
    let mut busy = Raw::connect(inbound).await;
    assert!(!busy.get().await.closes());

    let inbound_h1 = s.addr("in-h1").await;
    let (status, _) = s.admin_post("/drain_listeners?inboundonly&graceful").await;
    assert_eq!(status, 200);
    // A client that still picks this instance is answered, and told to go, even
    // when its request comes a moment after its connection; a connection that
    // sends nothing is closed.
    for addr in [inbound, inbound_h1] {
        let mut fresh = Raw::connect(addr).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let answer = fresh.get().await;
        assert!(answer.closes(), "{}", answer.head);
        assert!(fresh.closed_within(Duration::from_secs(5)).await);
        let mut silent = Raw::connect(addr).await;
        assert!(silent.closed_within(Duration::from_secs(5)).await);
    }
    let mut out = Raw::connect(outbound).await;
    assert!(!out.get().await.closes());
    // A second graceful drain of the same listeners changes nothing.
    assert_eq!(
        s.admin_post("/drain_listeners?graceful&inboundonly")
            .await
            .0,
        200
    );
    // After the drain time the inbound listener stops; outbound goes on.
    eventually(Duration::from_secs(10), "inbound to refuse", || async {
        refuses(inbound).await.then_some(())
    })
    .await;
    assert!(!refuses(outbound).await);
    for _ in 0..2 {
        assert!(!out.get().await.closes());
    }
    assert!(s.wait_exit(Duration::from_millis(100)).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_exit_drains_connections_and_keeps_accepting() {
    let args = ["--drain-time-s", "1", "--drain-strategy", "immediate"];
    let s = Strait::start_with(&sidecar(), &args).await;
    let inbound = s.addr("in").await;
    let (status, _) = s
        .admin_post("/drain_listeners?inboundonly&graceful&skip_exit")
        .await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Past the drain time: still accepting, each connection closed after its answer.
    let mut fresh = Raw::connect(inbound).await;
    assert!(fresh.get().await.closes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_a_sidecar_keeps_outbound_serving_until_the_application_is_done() {
    let mut s = Strait::start_with(
        &sidecar(),
        &["--drain-time-s", "60", "--min-drain-time-s", "1"],
    )
    .await;
    let (inbound, outbound) = (s.addr("in").await, s.addr("out").await);
    // The application's pooled connection to its outbound listener.
    let mut app = Raw::connect(outbound).await;
    assert!(!app.get().await.closes());

    s.signal(libc::SIGTERM);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Inbound: still answered (callers' endpoints may not know yet), told to go.
    let mut caller = Raw::connect(inbound).await;
    let answer = caller.get().await;
    assert_eq!(answer.body, "in");
    assert!(answer.closes(), "{}", answer.head);
    assert!(caller.closed_within(Duration::from_secs(5)).await);
    // Outbound: the application's calls go on, past the minimum drain time too,
    // on its pooled connection and on new ones.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for _ in 0..2 {
        let answer = app.get().await;
        assert_eq!(answer.body, "out");
        assert!(!answer.closes(), "{}", answer.head);
    }
    let mut another = Raw::connect(outbound).await;
    assert!(!another.get().await.closes());
    assert!(
        s.wait_exit(Duration::from_millis(100)).await.is_none(),
        "strait waits while the application has connections"
    );
    // The application exits: its connections close, and Strait follows, long before
    // the drain time.
    drop((app, another));
    let status = s
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("strait exits once the application's connections are gone");
    assert!(status.success(), "exit status {status}");
}

/// Envoy's default drain strategy: a graceful drain tells each connection at a
/// random time within the drain time, so their clients do not all reconnect
/// elsewhere at once; a non-graceful drain after it tells the rest at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gradual_drain_spreads_the_closes_over_the_drain_time() {
    let s = Strait::start_with(&sidecar(), &["--drain-time-s", "60"]).await;
    let inbound = s.addr("in").await;
    let mut idle = Vec::new();
    for _ in 0..20 {
        let mut c = Raw::connect(inbound).await;
        assert!(!c.get().await.closes());
        idle.push(c);
    }
    assert_eq!(
        s.admin_post("/drain_listeners?inboundonly&graceful")
            .await
            .0,
        200
    );
    // Two heartbeats later, about 1 in 100 would have closed: far from all.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut open = 0;
    for c in &mut idle {
        if !c.closed_within(Duration::from_millis(10)).await {
            open += 1;
        }
    }
    assert!(open >= 15, "only {open} of 20 connections left open");
    assert_eq!(s.admin_post("/drain_listeners?inboundonly").await.0, 200);
    for c in &mut idle {
        assert!(c.closed_within(Duration::from_secs(5)).await);
    }
}
