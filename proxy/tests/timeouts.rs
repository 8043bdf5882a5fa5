//! Per-try idle timeouts, hedging and `max_stream_duration`: what the client gets,
//! what the backend saw, and the flags and counters Envoy would show.

mod common;

use std::time::Duration;

use common::*;

/// An access log of `%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%` lines,
/// its path and the HttpConnectionManager YAML that writes it.
fn details_log() -> (std::path::PathBuf, String) {
    let (path, hcm) = flags_log();
    let hcm = hcm.replace(
        "%RESPONSE_CODE% %RESPONSE_FLAGS%",
        "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%",
    );
    (path, hcm)
}

/// One virtual host for `*` sending `/` to `up` with `route` fields (a YAML flow map's
/// inside, after `cluster: up`).
fn route(fields: &str) -> Bootstrap {
    Bootstrap::new(&format!(
        "- name: default\n  domains: [\"*\"]\n  include_request_attempt_count: true\n  routes:\n  - match: {{prefix: /}}\n    route: {{cluster: up, {fields}}}\n"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_try_idle_timeout_retries_an_attempt_that_stalls_before_headers() {
    let up = Backend::flaky("up", 1, Misbehave::DelayMs(5000)).await;
    let config = route("retry_policy: {retry_on: 5xx, num_retries: 2, per_try_idle_timeout: 0.3s}")
        .cluster("up", up.addr())
        .build();
    let s = Strait::start(&config).await;
    let r = within(
        Duration::from_secs(4),
        "the retry answers before the stalled attempt would",
        get(s.main_addr().await, "h", "/", &[]),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.echo().header("x-envoy-attempt-count"), Some("2"));
    assert_eq!(up.requests(), 2);
    s.wait_stat("cluster.up.upstream_rq_per_try_idle_timeout", |v| v == 1)
        .await;
    s.wait_stat("cluster.up.upstream_rq_retry", |v| v == 1)
        .await;
    assert_eq!(
        s.stat("cluster.up.upstream_rq_per_try_timeout").await,
        Some(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_try_idle_timeout_on_the_last_attempt_is_504_ut() {
    let up = Backend::echo("up").await;
    let (log, hcm) = details_log();
    let config = route("retry_policy: {retry_on: 5xx, num_retries: 1, per_try_idle_timeout: 0.2s}")
        .hcm(&hcm)
        .cluster("up", up.addr())
        .build();
    let s = Strait::start(&config).await;
    let r = get(
        s.main_addr().await,
        "h",
        "/",
        &[("x-backend-delay-ms", "3000")],
    )
    .await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.text(), "upstream request timeout");
    assert_eq!(up.requests(), 2, "the first attempt was retried once");
    assert_eq!(
        first_log_line(&log).await,
        "504 UT,URX upstream_per_try_idle_timeout"
    );
    s.wait_stat("cluster.up.upstream_rq_per_try_idle_timeout", |v| v == 2)
        .await;
    let _ = std::fs::remove_file(log);
}

/// Unlike `per_try_timeout`, the idle timer keeps running while the body streams: a
/// body that keeps coming is fine, one that stops resets the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_try_idle_timeout_watches_the_response_body() {
    let up = Backend::echo("up").await;
    let (log, hcm) = details_log();
    let config = route("retry_policy: {retry_on: 5xx, per_try_idle_timeout: 0.5s}")
        .hcm(&hcm)
        .cluster("up", up.addr())
        .build();
    let s = Strait::start(&config).await;
    let addr = s.main_addr().await;
    // Six chunks 100 ms apart: 600 ms in all, never 500 ms without a byte.
    let slow = [
        ("x-backend-body-bytes", "6144"),
        ("x-backend-chunk-delay-ms", "100"),
    ];
    let r = get(addr, "h", "/slow", &slow).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 6144);
    let stalled = [
        ("x-backend-stall-after-bytes", "10"),
        ("x-backend-body-bytes", "100"),
    ];
    let err = within(Duration::from_secs(5), "the stalled body is reset", async {
        client::request_headers(addr, "/stalled", &stalled).await
    })
    .await;
    assert_eq!(err.0, 200, "the head went out before the body stalled");
    assert!(err.1.is_err(), "the body ends in an error, not its end");
    assert_eq!(
        log_lines(&log, 2).await,
        ["200 - via_upstream", "200 UT upstream_per_try_idle_timeout"]
    );
    s.wait_stat("cluster.up.upstream_rq_per_try_idle_timeout", |v| v == 1)
        .await;
    assert_eq!(
        up.requests(),
        2,
        "nothing is retried once the head went out"
    );
    let _ = std::fs::remove_file(log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedged_attempt_wins_over_a_slow_first_attempt() {
    let up = Backend::echo("up").await;
    let config = route(
        "retry_policy: {retry_on: 5xx, num_retries: 1, per_try_timeout: 0.2s}, hedge_policy: {hedge_on_per_try_timeout: true}",
    )
    .cluster("up", up.addr())
    .build();
    let s = Strait::start(&config).await;
    let slow_first = [
        ("x-backend-delay-ms", "5000"),
        ("x-backend-retry-delay-ms", "0"),
    ];
    let r = within(
        Duration::from_secs(4),
        "the hedged attempt answers",
        get(s.main_addr().await, "h", "/", &slow_first),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.echo().header("x-envoy-attempt-count"), Some("2"));
    let expected: u64 = r
        .echo()
        .header("x-envoy-expected-rq-timeout-ms")
        .and_then(|v| v.parse().ok())
        .expect("x-envoy-expected-rq-timeout-ms");
    assert!(
        (10_000..=15_000).contains(&expected),
        "a hedged attempt may use what is left of the route timeout, not the per-try 200 ms: {expected}"
    );
    assert_eq!(up.requests(), 2);
    s.wait_stat("cluster.up.upstream_rq_retry", |v| v == 1)
        .await;
    // Envoy counts no per-try timeout when it hedges instead of resetting.
    assert_eq!(
        s.stat("cluster.up.upstream_rq_per_try_timeout").await,
        Some(0)
    );
}

/// A hedged attempt is a copy of the first attempt's head, and writes its header
/// names as the client did (H1 -> H1 keeps case), as the first attempt does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hedged_attempt_keeps_header_case() {
    every_attempt_keeps_header_case(
        "retry_policy: {retry_on: 5xx, num_retries: 1, per_try_timeout: 0.2s}, hedge_policy: {hedge_on_per_try_timeout: true}",
    )
    .await;
}

/// A retry after a per-try timeout sends the head the cancelled attempt handed back,
/// with its header case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_attempt_keeps_header_case() {
    every_attempt_keeps_header_case(
        "retry_policy: {retry_on: 5xx, num_retries: 1, per_try_timeout: 0.2s}",
    )
    .await;
}

/// Two attempts under `policy` (the first one's answer stalls past its per-try
/// timeout): both write the client's header names verbatim.
async fn every_attempt_keeps_header_case(policy: &str) {
    let up = Backend::raw_recorder_stalling_first("up", Duration::from_secs(5)).await;
    let config = route(policy).cluster("up", up.addr()).build();
    let s = Strait::start(&config).await;
    let mut raw = RawConn::connect(s.main_addr().await).await;
    raw.write(b"GET / HTTP/1.1\r\nHost: h\r\nX-Mixed-Case: One\r\nx-lower: two\r\n\r\n")
        .await;
    let reply = raw.read_until("ok", Duration::from_secs(4)).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let heads = up.heads();
    assert_eq!(heads.len(), 2, "the first attempt and the next: {heads:?}");
    for (attempt, head) in heads.iter().enumerate() {
        for line in ["X-Mixed-Case: One\r\n", "x-lower: two\r\n"] {
            assert!(
                head.contains(line),
                "attempt {}: {line:?} not sent verbatim; upstream saw:\n{head}",
                attempt + 1
            );
        }
    }
}

/// The first attempt is not cancelled when the hedge starts: here it answers first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedging_keeps_the_first_attempt_running() {
    let up = Backend::echo("up").await;
    let config = Bootstrap::new(
        "- name: default\n  domains: [\"*\"]\n  include_request_attempt_count: true\n  hedge_policy: {hedge_on_per_try_timeout: true, initial_requests: 1, additional_request_chance: {numerator: 0}}\n  routes:\n  - match: {prefix: /}\n    route: {cluster: up, retry_policy: {retry_on: 5xx, num_retries: 1, per_try_timeout: 0.2s}}\n",
    )
    .cluster("up", up.addr())
    .build();
    let s = Strait::start(&config).await;
    let slow_retry = [
        ("x-backend-delay-ms", "600"),
        ("x-backend-retry-delay-ms", "10000"),
    ];
    let r = within(
        Duration::from_secs(5),
        "the first attempt answers",
        get(s.main_addr().await, "h", "/", &slow_retry),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.echo().header("x-envoy-attempt-count"), Some("1"));
    assert_eq!(up.requests(), 2, "the hedge was sent too");
}

/// A retriable response from one attempt does not answer while another may still.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedging_drops_a_failed_attempt_while_another_runs() {
    let up = Backend::echo("up").await;
    let config = route(
        "retry_policy: {retry_on: 5xx, num_retries: 1, per_try_timeout: 0.2s}, hedge_policy: {hedge_on_per_try_timeout: true}",
    )
    .cluster("up", up.addr())
    .build();
    let s = Strait::start(&config).await;
    // Attempt 1 answers 503 after 600 ms (retries are spent by then); attempt 2
    // answers 200 after 1 s: the 503 must not win.
    let headers = [
        ("x-backend-delay-ms", "600"),
        ("x-backend-retry-delay-ms", "1000"),
        ("x-backend-status", "503"),
    ];
    let r = get(s.main_addr().await, "h", "/", &headers).await;
    // Both attempts carry the same status header; the second's 503 is the answer.
    assert_eq!(r.status, 503);
    assert_eq!(r.echo().header("x-envoy-attempt-count"), Some("2"));
    assert_eq!(up.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_stream_duration_of_the_connection_manager_answers_504() {
    let up = Backend::echo("up").await;
    let (log, hcm) = details_log();
    let config = Bootstrap::new(
        "- name: default\n  domains: [\"*\"]\n  routes:\n  - match: {prefix: /unlimited}\n    route: {cluster: up, max_stream_duration: {max_stream_duration: 0s}}\n  - match: {prefix: /}\n    route: {cluster: up}\n",
    )
    .hcm(&format!(
        "{hcm}common_http_protocol_options: {{max_stream_duration: 0.3s}}\n"
    ))
    .cluster("up", up.addr())
    .build();
    let s = Strait::start(&config).await;
    let addr = s.main_addr().await;
    let slow = [("x-backend-delay-ms", "2000")];
    let r = get(addr, "h", "/", &slow).await;
    assert_eq!(r.status, 504, "the request was received whole: 504");
    assert_eq!(r.text(), "downstream duration timeout");
    assert_eq!(
        first_log_line(&log).await,
        "504 - max_duration_timeout",
        "Envoy sets no response flag"
    );
    s.wait_stat("http.ingress.downstream_rq_max_duration_reached", |v| {
        v == 1
    })
    .await;
    let r = get(addr, "h", "/unlimited", &[("x-backend-delay-ms", "600")]).await;
    assert_eq!(r.status, 200, "a route's 0s disables the limit");
    // A response body that outlives the limit is reset.
    let slow_body = [
        ("x-backend-body-bytes", "5120"),
        ("x-backend-chunk-delay-ms", "150"),
    ];
    let (status, body) = client::request_headers(addr, "/body", &slow_body).await;
    assert_eq!(status, 200);
    assert!(body.is_err(), "the body is cut short");
    s.wait_stat("http.ingress.downstream_rq_max_duration_reached", |v| {
        v == 2
    })
    .await;
    let _ = std::fs::remove_file(log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_stream_duration_takes_grpc_timeout_capped_and_offset() {
    let up = Backend::echo("up").await;
    let config = route(
        "max_stream_duration: {grpc_timeout_header_max: 0.5s, grpc_timeout_header_offset: 0.05s}",
    )
    .cluster("up", up.addr())
    .build();
    let s = Strait::start(&config).await;
    let addr = s.main_addr().await;
    let grpc = |timeout: &'static str, delay: &'static str| {
        [
            ("content-type", "application/grpc"),
            ("grpc-timeout", timeout),
            ("x-backend-delay-ms", delay),
        ]
    };
    let r = get(addr, "h", "/", &grpc("100m", "0")).await;
    assert_eq!(r.status, 200);
    let echo = r.echo();
    assert_eq!(echo.header("grpc-timeout"), Some("50m"), "minus the offset");
    assert_eq!(
        echo.header("x-envoy-expected-rq-timeout-ms"),
        None,
        "a route with max_stream_duration has no route timeout"
    );
    let r = get(addr, "h", "/", &grpc("9S", "0")).await;
    assert_eq!(
        r.echo().header("grpc-timeout"),
        Some("450m"),
        "capped at 500ms"
    );
    let r = get(addr, "h", "/", &grpc("100m", "2000")).await;
    assert_eq!(r.status, 200, "gRPC clients get a trailers-only reply");
    assert_eq!(r.header("grpc-status"), Some("4"), "DEADLINE_EXCEEDED");
    assert_eq!(
        r.header("grpc-message"),
        Some("downstream duration timeout")
    );
}

/// A request whose body has not fully arrived when the time is up gets 408.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_stream_duration_before_the_request_ended_is_408() {
    let up = Backend::echo("up").await;
    let config = Bootstrap::catch_all("up")
        .hcm("common_http_protocol_options: {max_stream_duration: 0.3s}\n")
        .cluster("up", up.addr())
        .build();
    let s = Strait::start(&config).await;
    let mut raw = RawConn::connect(s.main_addr().await).await;
    raw.write(b"POST / HTTP/1.1\r\nhost: h\r\ncontent-length: 10\r\n\r\nabc")
        .await;
    let head = raw.read_until("\r\n\r\n", Duration::from_secs(5)).await;
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
}

/// As Envoy's, the per-try timer starts when the attempt's connection is ready (its
/// `onPoolReady`), not while the request waits for a connection: a request queued
/// at `max_connections` behind a slow one is answered, not timed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_try_timeout_does_not_count_the_wait_for_a_connection() {
    let up = Backend::echo("up").await;
    let cluster = cluster_with(
        "up",
        up.addr(),
        "circuit_breakers:\n  thresholds: [{max_connections: 1}]",
    );
    let config = Bootstrap::new(
        "- name: default\n  domains: [\"*\"]\n  routes:\n  - match: {prefix: /slow}\n    route: {cluster: up}\n  - match: {prefix: /}\n    route: {cluster: up, retry_policy: {retry_on: 5xx, num_retries: 1, per_try_timeout: 0.3s}}\n",
    )
    .cluster_raw(&cluster)
    .build();
    // One worker: the one connection is the one the second request waits for.
    let s = Strait::start_with(&config, &["--concurrency", "1"]).await;
    let addr = s.main_addr().await;
    let slow =
        tokio::spawn(
            async move { get(addr, "h", "/slow", &[("x-backend-delay-ms", "900")]).await },
        );
    eventually(
        Duration::from_secs(5),
        "the slow request is upstream",
        || {
            let n = up.requests();
            async move { (n == 1).then_some(()) }
        },
    )
    .await;
    let r = within(
        Duration::from_secs(5),
        "the queued request",
        get(addr, "h", "/fast", &[]),
    )
    .await;
    assert_eq!(
        r.status,
        200,
        "queued ~0.9 s, then answered at once: {}",
        r.text()
    );
    assert_eq!(slow.await.expect("slow task").status, 200);
    assert_eq!(
        s.stat("cluster.up.upstream_rq_per_try_timeout").await,
        Some(0)
    );
    // A timer fired early would have sent a retry (or a hedged attempt).
    assert_eq!(up.requests(), 2);
}

/// As Envoy's, the route timeout and the per-try timeout start when the request is
/// complete: an upload slower than the timeouts is answered (Envoy 1.40 answers 200
/// to a 3 s upload on a route with `timeout: 1s`), and the timeout still bounds the
/// wait for the response after the upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_and_per_try_timeouts_start_when_the_upload_ends() {
    let up = Backend::echo("up").await;
    for fields in [
        "timeout: 0.4s",
        "timeout: 5s, retry_policy: {retry_on: 5xx, per_try_timeout: 0.4s}",
    ] {
        let s = Strait::start(&route(fields).cluster("up", up.addr()).build()).await;
        let addr = s.main_addr().await;
        let mut raw = RawConn::connect(addr).await;
        raw.write(b"POST / HTTP/1.1\r\nhost: h\r\ncontent-length: 12\r\n\r\n")
            .await;
        // 12 bytes over ~1.2 s: three times the timeout.
        for chunk in [b"abcd", b"efgh", b"ijkl"] {
            tokio::time::sleep(Duration::from_millis(400)).await;
            raw.write(chunk).await;
        }
        let head = raw.read_until("\r\n\r\n", Duration::from_secs(5)).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{fields}: {head}");

        // Once the upload is in, the timeout bounds the backend's answer.
        let mut raw = RawConn::connect(addr).await;
        raw.write(
            b"POST / HTTP/1.1\r\nhost: h\r\nx-backend-delay-ms: 2000\r\ncontent-length: 4\r\n\r\n",
        )
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        raw.write(b"abcd").await;
        let head = raw.read_until("\r\n\r\n", Duration::from_secs(5)).await;
        assert!(head.starts_with("HTTP/1.1 504"), "{fields}: {head}");
    }
}
