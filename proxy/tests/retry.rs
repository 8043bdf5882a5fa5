//! Route `retry_policy`: which outcomes are retried, how often, to which hosts, with
//! which body, and what is counted — each with exact attempt counts seen by backends.

mod common;

use std::time::{Duration, Instant};

use hyper::Method;

use common::*;

/// One virtual host for `*` sending `/` to `cluster` with `policy` (a YAML flow map).
fn retry_route(cluster: &str, policy: &str) -> Bootstrap {
    Bootstrap::new(&format!(
        "- name: default\n  domains: [\"*\"]\n  routes:\n  - match: {{prefix: /}}\n    route:\n      cluster: {cluster}\n      retry_policy: {policy}\n"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_xx_is_retried_until_the_backend_recovers() {
    let up = Backend::flaky("up", 2, Misbehave::Status(503)).await;
    let config = retry_route("up", "{retry_on: 5xx, num_retries: 2}")
        .cluster("up", up.addr())
        .build();
    let s = Strait::start(&config).await;
    let r = get(s.main_addr().await, "h", "/", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.requests(), 3);
    s.wait_stat("cluster.up.upstream_rq_retry", |v| v == 2)
        .await;
    s.wait_stat("cluster.up.upstream_rq_retry_success", |v| v == 1)
        .await;
    s.wait_stat("cluster.up.upstream_rq_total", |v| v == 3)
        .await;
    s.wait_stat("cluster.up.upstream_rq_5xx", |v| v == 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_retries_return_the_last_response_flagged_urx() {
    let up = Backend::echo("up").await;
    let (log, hcm) = flags_log();
    let config = retry_route("up", "{retry_on: 5xx, num_retries: 2}")
        .hcm(&hcm)
        .cluster("up", up.addr())
        .build();
    let s = Strait::start(&config).await;
    let r = get(
        s.main_addr().await,
        "h",
        "/",
        &[("x-backend-status", "503")],
    )
    .await;
    assert_eq!(r.status, 503);
    assert_eq!(r.echo().backend, "up", "the upstream's own 503 comes back");
    assert_eq!(up.requests(), 3);
    s.wait_stat("cluster.up.upstream_rq_retry_limit_exceeded", |v| v == 1)
        .await;
    assert_eq!(first_log_line(&log).await, "503 URX");
    let _ = std::fs::remove_file(log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_error_retries_502_to_504_but_not_500() {
    let up = Backend::echo("up").await;
    let config = retry_route("up", "{retry_on: gateway-error, num_retries: 2}")
        .cluster("up", up.addr())
        .build();
    let s = Strait::start(&config).await;
    let addr = s.main_addr().await;
    let r = get(addr, "h", "/", &[("x-backend-status", "500")]).await;
    assert_eq!(r.status, 500);
    assert_eq!(up.requests(), 1, "500 is not a gateway error");
    let r = get(addr, "h", "/", &[("x-backend-status", "504")]).await;
    assert_eq!(r.status, 504);
    assert_eq!(up.requests(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retriable_status_codes_4xx_and_headers() {
    let teapot = Backend::flaky("teapot", 1, Misbehave::Status(418)).await;
    let conflict = Backend::flaky("conflict", 1, Misbehave::Status(409)).await;
    let headers = Backend::echo("headers").await;
    let config = Bootstrap::new(
        r#"
- name: default
  domains: ["*"]
  routes:
  - match: {prefix: /teapot}
    route:
      cluster: teapot
      retry_policy: {retry_on: retriable-status-codes, retriable_status_codes: [418]}
  - match: {prefix: /conflict}
    route:
      cluster: conflict
      retry_policy: {retry_on: retriable-4xx}
  - match: {prefix: /headers}
    route:
      cluster: headers
      retry_policy:
        retry_on: retriable-headers
        retriable_headers: [{name: x-upstream-says, string_match: {exact: again}}]
"#,
    )
    .cluster("teapot", teapot.addr())
    .cluster("conflict", conflict.addr())
    .cluster("headers", headers.addr())
    .build();
    let s = Strait::start(&config).await;
    let addr = s.main_addr().await;
    assert_eq!(get(addr, "h", "/teapot", &[]).await.status, 200);
    assert_eq!(teapot.requests(), 2);
    assert_eq!(get(addr, "h", "/conflict", &[]).await.status, 200);
    assert_eq!(conflict.requests(), 2);
    let again = [("x-backend-respond-header", "x-upstream-says=again")];
    let r = get(addr, "h", "/headers", &again).await;
    assert_eq!(r.header("x-upstream-says"), Some("again"));
    assert_eq!(headers.requests(), 2, "retried once on the response header");
    let r = get(
        addr,
        "h",
        "/headers",
        &[("x-backend-respond-header", "x-upstream-says=no")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(headers.requests(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failure_is_retried_on_another_host() {
    let up = Backend::echo("up").await;
    let dead = Backend::closed_port();
    let config = retry_route("two", "{retry_on: connect-failure}")
        .cluster_raw(&cluster_yaml("two", &[(dead, 1), (up.addr(), 1)], false))
        .build();
    let s = Strait::start(&config).await;
    let addr = s.main_addr().await;
    for _ in 0..4 {
        let r = get(addr, "h", "/", &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(up.requests(), 4);
    let retries = s.stat("cluster.two.upstream_rq_retry").await.unwrap_or(0);
    assert!(
        retries >= 1,
        "round robin sent some first attempts to the dead host"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_before_headers_is_retried() {
    let up = Backend::flaky("up", 1, Misbehave::Reset).await;
    let config = retry_route("up", "{retry_on: reset}")
        .cluster("up", up.addr())
        .build();
    let s = Strait::start(&config).await;
    let r = get(s.main_addr().await, "h", "/", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_try_timeout_abandons_a_slow_attempt() {
    let up = Backend::flaky("up", 1, Misbehave::DelayMs(5000)).await;
    let config = retry_route("up", "{retry_on: 5xx, per_try_timeout: 0.2s}")
        .cluster("up", up.addr())
        .build();
    let s = Strait::start(&config).await;
    let started = Instant::now();
    let r = get(s.main_addr().await, "h", "/", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.echo().header("x-envoy-expected-rq-timeout-ms"),
        Some("200"),
        "Envoy announces the per-try timeout"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "did not wait for the slow attempt"
    );
    assert_eq!(up.requests(), 2);
    s.wait_stat("cluster.up.upstream_rq_per_try_timeout", |v| v == 1)
        .await;
    // Every attempt slow: the last per-try timeout is the answer.
    let r = get(
        s.main_addr().await,
        "h",
        "/",
        &[("x-backend-delay-ms", "5000")],
    )
    .await;
    assert_eq!(r.status, 504);
    assert_eq!(r.text(), "upstream request timeout");
    assert_eq!(up.requests(), 4);
}

/// Full jitter keeps each wait below its interval (50 ms, then 100 ms, capped): the
/// bound asserted is loose on purpose, the exact draws are unit-tested in `retry.rs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backoff_stays_within_max_interval() {
    let up = Backend::echo("up").await;
    let policy =
        "{retry_on: 5xx, num_retries: 3, retry_back_off: {base_interval: 0.05s, max_interval: 0.1s}}";
    let config = retry_route("up", policy).cluster("up", up.addr()).build();
    let s = Strait::start(&config).await;
    let r = get(
        s.main_addr().await,
        "h",
        "/",
        &[("x-backend-status", "503")],
    )
    .await;
    assert_eq!(r.status, 503);
    let arrivals = up.arrivals();
    assert_eq!(arrivals.len(), 4);
    let total = arrivals[3] - arrivals[0];
    assert!(
        total < Duration::from_secs(2),
        "3 backoffs of < 100 ms took {total:?}"
    );
}

/// Envoy's connection manager strips `x-envoy-retry-on` and `x-envoy-max-retries` from
/// external requests (all of them, without `internal_address_config`): they neither
/// enable nor extend retries, and never reach the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_headers_from_clients_are_stripped_not_honoured() {
    let up = Backend::echo("up").await;
    let config = Bootstrap::new(
        r#"
- name: default
  domains: ["*"]
  routes:
  - match: {prefix: /policy}
    route: {cluster: up, retry_policy: {retry_on: 5xx, num_retries: 1}}
  - match: {prefix: /}
    route: {cluster: up}
"#,
    )
    .cluster("up", up.addr())
    .build();
    let s = Strait::start(&config).await;
    let addr = s.main_addr().await;
    let asks = [
        ("x-backend-status", "503"),
        ("x-envoy-retry-on", "5xx"),
        ("x-envoy-max-retries", "3"),
    ];
    let r = get(addr, "h", "/", &asks).await;
    assert_eq!(r.status, 503);
    assert_eq!(
        up.requests(),
        1,
        "no route policy: the header alone retries nothing"
    );
    let echo = r.echo();
    assert_eq!(echo.header("x-envoy-retry-on"), None);
    assert_eq!(echo.header("x-envoy-max-retries"), None);
    let r = get(addr, "h", "/policy", &asks).await;
    assert_eq!(r.status, 503);
    assert_eq!(up.requests(), 3, "num_retries 1 stands");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn previous_hosts_spreads_attempts_over_distinct_hosts() {
    let a = Backend::echo("a").await;
    let b = Backend::echo("b").await;
    let c = Backend::echo("c").await;
    let endpoints = [(a.addr(), 1), (b.addr(), 1), (c.addr(), 1)];
    let cluster = format!(
        "{}  lb_policy: RANDOM\n",
        cluster_yaml("abc", &endpoints, false)
    );
    let policy = "{retry_on: 5xx, num_retries: 2, \
        retry_host_predicate: [{name: envoy.retry_host_predicates.previous_hosts}], \
        host_selection_retry_max_attempts: 100}";
    let config = retry_route("abc", policy).cluster_raw(&cluster).build();
    let s = Strait::start(&config).await;
    let r = get(
        s.main_addr().await,
        "h",
        "/",
        &[("x-backend-status", "503")],
    )
    .await;
    assert_eq!(r.status, 503);
    let seen = [a.requests(), b.requests(), c.requests()];
    assert_eq!(seen, [1, 1, 1], "each attempt on a host not tried before");
}

/// Downstream HTTP/1.1 to an HTTP/1.1 upstream, and h2 to an h2 upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_body_is_replayed_intact() {
    let one = Backend::flaky("one", 1, Misbehave::Status(503)).await;
    let two = Backend::flaky("two", 1, Misbehave::Status(503)).await;
    let config = Bootstrap::new(
        r#"
- name: default
  domains: ["*"]
  include_request_attempt_count: true
  routes:
  - match: {prefix: /one}
    route: {cluster: one, retry_policy: {retry_on: 5xx}}
  - match: {prefix: /two}
    route: {cluster: two, retry_policy: {retry_on: 5xx}}
"#,
    )
    .cluster("one", one.addr())
    .h2_cluster("two", two.addr())
    .build();
    let s = Strait::start(&config).await;
    let body = "a body worth sending twice ".repeat(100);
    for (proto, path, backend) in [(Proto::H1, "/one", &one), (Proto::H2, "/two", &two)] {
        let mut c = Client::connect(s.main_addr().await, proto)
            .await
            .expect("connect");
        let req = c.request(Method::POST, "h", path, &[], full(body.clone()));
        let r = c.send(req).await.expect("response");
        assert_eq!(r.status, 200, "{proto:?}: {}", r.text());
        let echo = r.echo();
        assert_eq!(echo.body, body, "{proto:?}");
        assert_eq!(echo.header("x-envoy-attempt-count"), Some("2"), "{proto:?}");
        assert_eq!(backend.requests(), 2, "{proto:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_the_buffer_limit_is_not_retried() {
    let up = Backend::flaky("up", 1, Misbehave::Status(503)).await;
    let config = retry_route("up", "{retry_on: 5xx}")
        .cluster("up", up.addr())
        .build()
        .replacen(
            "  - name: main\n",
            "  - name: main\n    per_connection_buffer_limit_bytes: 1024\n",
            1,
        );
    let s = Strait::start(&config).await;
    let mut c = Client::connect(s.main_addr().await, Proto::H1)
        .await
        .expect("connect");
    let req = c.request(Method::POST, "h", "/", &[], full(vec![b'x'; 4096]));
    let r = c.send(req).await.expect("response");
    assert_eq!(r.status, 503);
    assert_eq!(up.requests(), 1);
    s.wait_stat("cluster.up.retry_or_shadow_abandoned", |v| v == 1)
        .await;
    assert_eq!(s.stat("cluster.up.upstream_rq_retry").await, Some(0));
}

/// The pool's keep-alive race retry (a reused connection found dead) is not one of the
/// policy's retries: with `num_retries: 0` the request still succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_race_retry_is_not_a_policy_retry() {
    let racer = Backend::keepalive_racer("racer").await;
    let config = retry_route("up", "{retry_on: reset, num_retries: 0}")
        .cluster("up", racer.addr())
        .build();
    let s = Strait::start_with(&config, &["--concurrency", "1"]).await;
    let addr = s.main_addr().await;
    assert_eq!(get(addr, "h", "/", &[]).await.status, 200);
    // Let the pooled connection age past pool::RACE_IDLE (250 ms): the scenario.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = get(addr, "h", "/again", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(racer.connections(), 2);
    assert_eq!(
        s.stat("cluster.up.upstream_rq_retry_limit_exceeded").await,
        Some(0)
    );
}

/// The route `timeout` bounds all attempts together: per-try timeouts of 600 ms under
/// a 1 s route timeout leave time for two attempts (the second starts by ~625 ms),
/// then the route times out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_covers_every_attempt() {
    let up = Backend::echo("up").await;
    let (log, hcm) = flags_log();
    let config = Bootstrap::new(
        r#"
- name: default
  domains: ["*"]
  routes:
  - match: {prefix: /}
    route:
      cluster: up
      timeout: 1s
      retry_policy: {retry_on: 5xx, num_retries: 5, per_try_timeout: 0.6s}
"#,
    )
    .hcm(&hcm)
    .cluster("up", up.addr())
    .build();
    let s = Strait::start(&config).await;
    let started = Instant::now();
    let r = get(
        s.main_addr().await,
        "h",
        "/",
        &[("x-backend-delay-ms", "5000")],
    )
    .await;
    assert_eq!(r.status, 504);
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(up.requests(), 2);
    s.wait_stat("cluster.up.upstream_rq_timeout", |v| v == 1)
        .await;
    s.wait_stat("cluster.up.upstream_rq_per_try_timeout", |v| v == 1)
        .await;
    assert_eq!(first_log_line(&log).await, "504 UT");
    let _ = std::fs::remove_file(log);
}

/// Envoy honours `x-envoy-retry-on`, `x-envoy-retry-grpc-on`, `x-envoy-max-retries`,
/// `x-envoy-upstream-rq-timeout-ms` and `x-envoy-upstream-rq-per-try-timeout-ms` only
/// on internal requests: with `internal_address_config`, a loopback client without
/// `x-forwarded-for` is one (Envoy's default ranges); without it, nobody is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steering_headers_are_honoured_only_from_internal_addresses() {
    let up = Backend::flaky("up", 2, Misbehave::Status(503)).await;
    let slow = Backend::echo("slow").await;
    let vhosts = "- name: default\n  domains: [\"*\"]\n  routes:\n  - match: {prefix: /slow}\n    route: {cluster: slow}\n  - match: {prefix: /}\n    route: {cluster: up}\n";
    let internal = Bootstrap::new(vhosts)
        .hcm("use_remote_address: true\ninternal_address_config: {}\n")
        .cluster("up", up.addr())
        .cluster("slow", slow.addr())
        .build();
    let s = Strait::start(&internal).await;
    let addr = s.main_addr().await;
    let asks = [("x-envoy-retry-on", "5xx"), ("x-envoy-max-retries", "2")];
    let r = get(addr, "h", "/", &asks).await;
    assert_eq!(r.status, 200, "retried twice: {}", r.text());
    assert_eq!(up.requests(), 3);
    let echo = r.echo();
    assert_eq!(echo.header("x-envoy-internal"), Some("true"));
    assert_eq!(
        echo.header("x-envoy-retry-on"),
        None,
        "consumed, not forwarded"
    );
    assert_eq!(echo.header("x-envoy-external-address"), None);
    let timeout = [
        ("x-envoy-upstream-rq-timeout-ms", "200"),
        ("x-backend-delay-ms", "1500"),
    ];
    let r = get(addr, "h", "/slow", &timeout).await;
    assert_eq!(r.status, 504, "the header's timeout applies");
    let r = get(
        addr,
        "h",
        "/slow",
        &[("x-envoy-upstream-rq-timeout-ms", "250")],
    )
    .await;
    assert_eq!(
        r.echo().header("x-envoy-expected-rq-timeout-ms"),
        Some("250")
    );
    let per_try = [
        ("x-envoy-retry-on", "reset"),
        ("x-envoy-upstream-rq-per-try-timeout-ms", "200"),
        ("x-backend-delay-ms", "1500"),
    ];
    let r = get(addr, "h", "/slow", &per_try).await;
    assert_eq!(r.status, 504);
    assert_eq!(slow.requests(), 4, "the per-try timeout was retried once");
    let grpc = [
        ("x-envoy-retry-grpc-on", "unavailable"),
        ("x-backend-respond-header", "grpc-status=14"),
    ];
    let r = get(addr, "h", "/slow", &grpc).await;
    assert_eq!(r.header("grpc-status"), Some("14"));
    assert_eq!(slow.requests(), 6, "grpc-status 14 retried once");
    drop(s);

    let up = Backend::flaky("up", 2, Misbehave::Status(503)).await;
    let external = Bootstrap::new(vhosts)
        .hcm("use_remote_address: true\n")
        .cluster("up", up.addr())
        .cluster("slow", slow.addr())
        .build();
    let s = Strait::start(&external).await;
    let addr = s.main_addr().await;
    let r = get(addr, "h", "/", &asks).await;
    assert_eq!(r.status, 503, "not retried");
    assert_eq!(up.requests(), 1);
    let echo = r.echo();
    assert_eq!(echo.header("x-envoy-retry-on"), None, "stripped");
    assert_eq!(echo.header("x-envoy-internal"), None);
    let timeout = [
        ("x-envoy-upstream-rq-timeout-ms", "100"),
        ("x-backend-delay-ms", "400"),
    ];
    let r = get(addr, "h", "/slow", &timeout).await;
    assert_eq!(r.status, 200, "the route's 15 s timeout applies");
    assert_eq!(r.echo().header("x-envoy-upstream-rq-timeout-ms"), None);
    assert_eq!(
        r.echo().header("x-envoy-expected-rq-timeout-ms"),
        Some("15000")
    );
}

/// Fails a request's first attempt (its head carries `x-envoy-attempt-count: 1`).
fn first_attempt_fails(head: &str) -> Scripted {
    let answer = match head.contains("x-envoy-attempt-count: 1\r\n") {
        true => "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
        false => "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    };
    Scripted::KeepAlive(answer.as_bytes().to_vec())
}

/// A retry sends the head the first attempt sent (Strait's codec hands it back, no
/// copy is made up front): the same header lines, the client's header case kept,
/// only the attempt count and the time left (`x-envoy-expected-rq-timeout-ms`, as
/// Envoy's router) moved on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_sends_the_head_the_first_attempt_sent() {
    let up = Backend::scripted("up", first_attempt_fails).await;
    let config = Bootstrap::new(
        "- name: default\n  domains: [\"*\"]\n  include_request_attempt_count: true\n  routes:\n  - match: {prefix: /}\n    route:\n      cluster: up\n      retry_policy: {retry_on: 5xx, num_retries: 1, retry_back_off: {base_interval: 0.001s}}\n",
    )
    .cluster("up", up.addr())
    .build();
    let s = Strait::start(&config).await;
    let mut c = RawConn::connect(s.main_addr().await).await;
    c.write(
        b"GET /again?q=1 HTTP/1.1\r\nHost: h\r\nX-Mixed-Case: 1\r\nx-two: a\r\nx-two: b\r\n\r\n",
    )
    .await;
    let reply = c.read_until("\r\n\r\nok", Duration::from_secs(5)).await;
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    let heads = up.heads();
    assert_eq!(heads.len(), 2, "{heads:?}");
    assert!(heads[1].contains("X-Mixed-Case: 1\r\n"), "{}", heads[1]);
    assert!(
        heads[1].contains("x-envoy-attempt-count: 2\r\n"),
        "{}",
        heads[1]
    );
    let without_count = |h: &str| {
        let mut lines: Vec<String> = h
            .lines()
            .filter(|l| {
                !l.starts_with("x-envoy-attempt-count") && !l.starts_with("x-envoy-expected-rq")
            })
            .map(str::to_owned)
            .collect();
        lines.sort();
        lines
    };
    assert_eq!(without_count(&heads[0]), without_count(&heads[1]));
    s.wait_stat("cluster.up.upstream_rq_retry", |v| v == 1)
        .await;
}
