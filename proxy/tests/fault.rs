//! `envoy.filters.http.fault` over real sockets: configured exactly as Envoy's
//! `HTTPFault`, placed in `http_filters` before the router.
mod common;
#[path = "../../filters/tests/common/mod.rs"]
mod plugins;

use std::time::{Duration, Instant};

use common::*;

/// A fault filter with `fields` (YAML from column 0) as an `http_filters` item.
fn fault_yaml(fields: &str) -> String {
    format!(
        "- name: envoy.filters.http.fault\n  typed_config:\n    \"@type\": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault\n{}",
        common::config::indent(fields, 4)
    )
}

/// `bootstrap` with `filters` (YAML list items) before the router.
fn with_filters(bootstrap: &Bootstrap, filters: &str) -> String {
    let yaml = bootstrap.build();
    let marker = "          http_filters:\n";
    assert!(yaml.contains(marker));
    yaml.replacen(
        marker,
        &format!("{marker}{}", common::config::indent(filters, 10)),
        1,
    )
}

async fn start(backend: &Backend, fields: &str) -> Strait {
    start_with(Bootstrap::catch_all("backend"), backend, fields).await
}

async fn start_with(bootstrap: Bootstrap, backend: &Backend, fields: &str) -> Strait {
    let bootstrap = bootstrap.cluster("backend", backend.addr());
    Strait::start(&with_filters(&bootstrap, &fault_yaml(fields))).await
}

const BOUND: Duration = Duration::from_secs(5);

#[tokio::test]
async fn abort_at_100_percent_never_reaches_the_backend() {
    let backend = Backend::echo("backend").await;
    let (log, hcm) = flags_log();
    let strait = start_with(
        Bootstrap::catch_all("backend").hcm(&hcm),
        &backend,
        "abort: {http_status: 503, percentage: {numerator: 100}}",
    )
    .await;
    let resp = get(strait.main_addr().await, "example.test", "/", &[]).await;
    assert_eq!(resp.status, 503);
    assert_eq!(resp.text(), "fault filter abort");
    assert_eq!(backend.requests(), 0);
    assert_eq!(first_log_line(&log).await, "503 FI");
    strait
        .wait_stat("http.ingress.fault.aborts_injected", |v| v == 1)
        .await;
    assert_eq!(
        strait.stat("http.ingress.fault.delays_injected").await,
        Some(0)
    );
    assert_eq!(
        strait.stat("http.ingress.fault.active_faults").await,
        Some(0)
    );
    assert_eq!(
        strait.stat("http.ingress.fault.faults_overflow").await,
        Some(0)
    );
    let _ = std::fs::remove_file(log);
}

#[tokio::test]
async fn abort_at_0_percent_passes_through() {
    let backend = Backend::echo("backend").await;
    let strait = start(
        &backend,
        "abort: {http_status: 503, percentage: {numerator: 0, denominator: MILLION}}",
    )
    .await;
    let addr = strait.main_addr().await;
    for _ in 0..3 {
        assert_eq!(get(addr, "example.test", "/", &[]).await.status, 200);
    }
    assert_eq!(backend.requests(), 3);
    assert_eq!(
        strait.stat("http.ingress.fault.aborts_injected").await,
        Some(0)
    );
}

#[tokio::test]
async fn abort_headers_count_only_with_header_abort() {
    let backend = Backend::echo("backend").await;
    let headers = [
        ("x-envoy-fault-abort-request", "429"),
        ("x-envoy-fault-delay-request", "2000"),
    ];
    // A fixed fault at 0%: the request's fault headers are ignored.
    let fixed = start(
        &backend,
        "abort: {http_status: 503, percentage: {numerator: 0}}",
    )
    .await;
    let started = Instant::now();
    let resp = get(fixed.main_addr().await, "example.test", "/", &headers).await;
    assert_eq!(resp.status, 200);
    assert!(started.elapsed() < Duration::from_millis(1500));

    let controlled = start(
        &backend,
        "abort: {header_abort: {}, percentage: {numerator: 100}}",
    )
    .await;
    let addr = controlled.main_addr().await;
    let resp = get(addr, "example.test", "/", &headers).await;
    assert_eq!(resp.status, 429);
    assert_eq!(resp.text(), "fault filter abort");
    // Without the header, nothing; a percentage header of 0 switches it off.
    assert_eq!(get(addr, "example.test", "/", &[]).await.status, 200);
    let off = [
        ("x-envoy-fault-abort-request", "429"),
        ("x-envoy-fault-abort-request-percentage", "0"),
    ];
    assert_eq!(get(addr, "example.test", "/", &off).await.status, 200);
    controlled
        .wait_stat("http.ingress.fault.aborts_injected", |v| v == 1)
        .await;
}

#[tokio::test]
async fn fixed_delay_then_the_request_continues() {
    let backend = Backend::echo("backend").await;
    let (log, hcm) = flags_log();
    // The route timeout (200ms) is shorter than the delay: it starts at the router,
    // after the delay, as in Envoy.
    let vhosts = "- name: default\n  domains: [\"*\"]\n  routes:\n  - match: {prefix: /}\n    route: {cluster: backend, timeout: 0.2s}\n";
    let strait = start_with(
        Bootstrap::new(vhosts).hcm(&hcm),
        &backend,
        "delay: {fixed_delay: 0.3s, percentage: {numerator: 100}}",
    )
    .await;
    let addr = strait.main_addr().await;
    let started = Instant::now();
    let resp = within(
        BOUND,
        "delayed request",
        get(addr, "example.test", "/", &[]),
    )
    .await;
    let elapsed = started.elapsed();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert_eq!(backend.requests(), 1);
    assert_eq!(first_log_line(&log).await, "200 DI");
    strait
        .wait_stat("http.ingress.fault.delays_injected", |v| v == 1)
        .await;
    strait
        .wait_stat("http.ingress.fault.active_faults", |v| v == 0)
        .await;
    let _ = std::fs::remove_file(log);
}

#[tokio::test]
async fn header_delay_and_delay_then_abort() {
    let backend = Backend::echo("backend").await;
    let strait = start(
        &backend,
        "delay: {header_delay: {}, percentage: {numerator: 100}}\nabort: {header_abort: {}, percentage: {numerator: 100}}",
    )
    .await;
    let addr = strait.main_addr().await;
    let started = Instant::now();
    let delayed = [("x-envoy-fault-delay-request", "300")];
    let resp = within(BOUND, "delayed", get(addr, "example.test", "/", &delayed)).await;
    assert_eq!(resp.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));

    let started = Instant::now();
    let both = [
        ("x-envoy-fault-delay-request", "300"),
        ("x-envoy-fault-abort-request", "503"),
    ];
    let resp = within(
        BOUND,
        "delayed abort",
        get(addr, "example.test", "/", &both),
    )
    .await;
    assert_eq!(resp.status, 503);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(backend.requests(), 1);

    // No header, no delay.
    let started = Instant::now();
    assert_eq!(get(addr, "example.test", "/", &[]).await.status, 200);
    assert!(started.elapsed() < Duration::from_millis(300));
    strait
        .wait_stat("http.ingress.fault.delays_injected", |v| v == 2)
        .await;
    strait
        .wait_stat("http.ingress.fault.aborts_injected", |v| v == 1)
        .await;
}

#[tokio::test]
async fn headers_matcher_scopes_the_fault() {
    let backend = Backend::echo("backend").await;
    let strait = start(
        &backend,
        "abort: {http_status: 418, percentage: {numerator: 100}}\nheaders: [{name: x-chaos, exact_match: \"yes\"}]",
    )
    .await;
    let addr = strait.main_addr().await;
    assert_eq!(
        get(addr, "example.test", "/", &[("x-chaos", "yes")])
            .await
            .status,
        418
    );
    assert_eq!(
        get(addr, "example.test", "/", &[("x-chaos", "no")])
            .await
            .status,
        200
    );
    assert_eq!(get(addr, "example.test", "/", &[]).await.status, 200);
}

#[tokio::test]
async fn upstream_cluster_scopes_the_fault() {
    let backend = Backend::echo("backend").await;
    let other = Backend::echo("other").await;
    let vhosts = "- name: default\n  domains: [\"*\"]\n  routes:\n  - match: {prefix: /other}\n    route: {cluster: other}\n  - match: {prefix: /}\n    route: {cluster: backend}\n";
    let strait = start_with(
        Bootstrap::new(vhosts).cluster("other", other.addr()),
        &backend,
        "abort: {http_status: 503, percentage: {numerator: 100}}\nupstream_cluster: other",
    )
    .await;
    let addr = strait.main_addr().await;
    assert_eq!(get(addr, "example.test", "/other", &[]).await.status, 503);
    assert_eq!(get(addr, "example.test", "/", &[]).await.status, 200);
    assert_eq!(other.requests(), 0);
}

#[tokio::test]
async fn grpc_abort_answers_with_grpc_status() {
    let backend = Backend::echo("backend").await;
    let strait = start(
        &backend,
        "abort: {grpc_status: 14, percentage: {numerator: 100}}",
    )
    .await;
    let addr = strait.main_addr().await;
    let grpc = [("content-type", "application/grpc")];
    let resp = get_h2(addr, "example.test", "/pkg.Svc/Method", &grpc).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("grpc-status"), Some("14"));
    assert_eq!(resp.header("grpc-message"), Some("fault filter abort"));
    assert_eq!(backend.requests(), 0);

    // An HTTP status abort on a gRPC request: the status mapped, as Envoy does.
    let http = start(
        &backend,
        "abort: {http_status: 503, percentage: {numerator: 100}}",
    )
    .await;
    let resp = get_h2(
        http.main_addr().await,
        "example.test",
        "/pkg.Svc/Method",
        &grpc,
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("grpc-status"), Some("14"));
}

#[tokio::test]
async fn max_active_faults_overflow_skips_the_fault() {
    let backend = Backend::echo("backend").await;
    let strait = start(
        &backend,
        "delay: {fixed_delay: 1s, percentage: {numerator: 100}}\nmax_active_faults: 1",
    )
    .await;
    let addr = strait.main_addr().await;
    let slow = tokio::spawn(async move { get(addr, "example.test", "/", &[]).await });
    strait
        .wait_stat("http.ingress.fault.active_faults", |v| v == 1)
        .await;
    let started = Instant::now();
    assert_eq!(get(addr, "example.test", "/", &[]).await.status, 200);
    assert!(started.elapsed() < Duration::from_millis(900));
    assert_eq!(
        strait.stat("http.ingress.fault.faults_overflow").await,
        Some(1)
    );
    let resp = within(BOUND, "delayed request", slow).await.expect("join");
    assert_eq!(resp.status, 200);
    strait
        .wait_stat("http.ingress.fault.active_faults", |v| v == 0)
        .await;
}

/// The fault filter runs where it sits among wasm filters: the `headers` plugin adds
/// `x-wasm-seen` to requests, which the fault's matcher sees only after the plugin.
#[tokio::test]
async fn fault_runs_in_its_place_among_wasm_filters() {
    let module = plugins::plugin_dir().join("strait_testdata_headers.wasm");
    let wasm = format!(
        r#"- name: envoy.filters.http.wasm
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
    config:
      name: headers
      configuration:
        "@type": type.googleapis.com/google.protobuf.StringValue
        value: "x-strait-plugin: on"
      vm_config:
        runtime: envoy.wasm.runtime.v8
        code: {{local: {{filename: {}}}}}
"#,
        module.display()
    );
    let fault = fault_yaml(
        "abort: {http_status: 418, percentage: {numerator: 100}}\nheaders: [{name: x-wasm-seen, present_match: true}]",
    );
    let backend = Backend::echo("backend").await;
    let bootstrap = Bootstrap::catch_all("backend").cluster("backend", backend.addr());
    let after = Strait::start(&with_filters(&bootstrap, &format!("{wasm}{fault}"))).await;
    let resp = get(after.main_addr().await, "example.test", "/", &[]).await;
    assert_eq!(resp.status, 418);
    // The abort went through the plugin's response phase, as a local reply does.
    assert_eq!(resp.header("x-strait-plugin"), Some("on"));
    let before = Strait::start(&with_filters(&bootstrap, &format!("{fault}{wasm}"))).await;
    let resp = get(before.main_addr().await, "example.test", "/", &[]).await;
    assert_eq!(resp.status, 200);
}

#[tokio::test]
async fn unsupported_fields_are_refused_with_their_path() {
    let backend = Backend::echo("backend").await;
    let fields = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[0].typed_config";
    let cases = [
        (
            "downstream_nodes: [a]",
            format!("{fields}.downstream_nodes: downstream_nodes is not supported yet"),
        ),
        (
            "response_rate_limit: {fixed_limit: {limit_kbps: 1}}",
            format!("{fields}.response_rate_limit: response_rate_limit is not supported yet"),
        ),
        (
            "abort: {http_status: 100}",
            format!("{fields}.abort.http_status: http_status 100 is not in [200, 600)"),
        ),
    ];
    let bootstrap = Bootstrap::catch_all("backend").cluster("backend", backend.addr());
    for (fault, want) in cases {
        let yaml = with_filters(&bootstrap, &fault_yaml(fault));
        let (code, stderr) = Strait::start_expect_failure(&yaml).await;
        assert_ne!(code, 0);
        assert!(stderr.contains(&want), "{fault}: {stderr}");
    }
}

/// With an HTTP filter before the router, the connection's own headers go before the
/// filters run, and so do the headers `Connection` names: neither reaches the
/// upstream (as on a route without filters, and as in Envoy).
#[tokio::test]
async fn headers_named_by_connection_are_dropped_before_the_filters() {
    let backend = Backend::echo("backend").await;
    let strait = start(
        &backend,
        "abort: {http_status: 503, percentage: {numerator: 0}}",
    )
    .await;
    let resp = get(
        strait.main_addr().await,
        "example.test",
        "/",
        &[
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "1"),
            ("x-bar", "kept"),
        ],
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let echo = resp.echo();
    assert_eq!(
        echo.header("x-hop"),
        None,
        "x-hop reached the upstream: {:?}",
        echo.headers
    );
    assert_eq!(echo.header("x-bar"), Some("kept"));
}
