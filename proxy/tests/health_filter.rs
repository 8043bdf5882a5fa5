//! `envoy.filters.http.health_check` over real sockets, configured exactly as Envoy's
//! `HealthCheck` and placed in `http_filters` before the router. The answers, headers
//! and access log entries are the ones Envoy 1.40 gave to the same requests.
mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Method;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

/// The bootstrap `node.cluster`, which health check responses carry.
const NODE_CLUSTER: &str = "edge-proxies";
const HEALTHCHECKED: &str = "x-envoy-upstream-healthchecked-cluster";
const IMMEDIATE_FAIL: &str = "x-envoy-immediate-health-check-fail";

/// A health check filter with `fields` (YAML from column 0) as an `http_filters` item.
fn health_check_yaml(fields: &str) -> String {
    format!(
        "- name: envoy.filters.http.health_check\n  typed_config:\n    \"@type\": type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck\n{}",
        common::config::indent(fields, 4)
    )
}

/// The `/healthz` endpoint as Envoy's docs configure it.
const HEALTHZ: &str = "headers: [{name: \":path\", string_match: {exact: /healthz}}]";

/// A Strait with one listener routing everything to `backend`, logging
/// `%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%`, with a health check
/// filter of each of `filters` (their fields) before the router. Returns it and the
/// access log's path.
async fn start(backend: &Backend, filters: &[&str]) -> (Strait, std::path::PathBuf) {
    let (log, hcm) = access_log("%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%");
    let yaml = Bootstrap::catch_all("backend")
        .hcm(&hcm)
        .cluster("backend", backend.addr())
        .build();
    let marker = "          http_filters:\n";
    assert!(yaml.contains(marker));
    let filters: String = filters.iter().map(|f| health_check_yaml(f)).collect();
    let yaml = yaml.replacen(
        marker,
        &format!("{marker}{}", common::config::indent(&filters, 10)),
        1,
    );
    let yaml = format!("node: {{id: strait-1, cluster: {NODE_CLUSTER}}}\n{yaml}");
    (Strait::start(&yaml).await, log)
}

#[tokio::test]
async fn without_pass_through_a_health_check_is_answered_locally() {
    let backend = Backend::echo("backend").await;
    let (strait, log) = start(&backend, &[&format!("pass_through_mode: false\n{HEALTHZ}")]).await;
    let addr = strait.main_addr().await;
    let resp = get(addr, "example.test", "/healthz", &[]).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, "");
    assert_eq!(resp.header("content-length"), Some("0"));
    assert_eq!(resp.header("content-type"), None);
    assert_eq!(resp.header(HEALTHCHECKED), Some(NODE_CLUSTER));
    assert_eq!(resp.header(IMMEDIATE_FAIL), None);
    assert_eq!(
        backend.requests(),
        0,
        "the upstream never saw the health check"
    );
    // `:path` is the whole target: with a query it is no health check.
    let other = get(addr, "example.test", "/healthz?verbose=1", &[]).await;
    assert_eq!(other.echo().path, "/healthz?verbose=1");
    assert_eq!(other.header(HEALTHCHECKED), None);
    assert_eq!(backend.requests(), 1);
    assert_log(&log, &["200 - health_check_ok", "200 - via_upstream"]).await;
    let _ = std::fs::remove_file(log);
}

#[tokio::test]
async fn pass_through_forwards_health_checks_and_marks_their_responses() {
    let backend = Backend::echo("backend").await;
    let (strait, log) = start(
        &backend,
        &["pass_through_mode: true\nheaders: [{name: x-health-probe, present_match: true}]"],
    )
    .await;
    let addr = strait.main_addr().await;
    let resp = get(addr, "example.test", "/status", &[("x-health-probe", "lb")]).await;
    assert_eq!(resp.status, 200);
    let echo = resp.echo();
    assert_eq!(echo.path, "/status");
    assert_eq!(echo.header("x-health-probe"), Some("lb"));
    assert_eq!(resp.header(HEALTHCHECKED), Some(NODE_CLUSTER));
    // A request not matching `headers` goes through untouched.
    let plain = get(addr, "example.test", "/status", &[]).await;
    assert_eq!(plain.echo().path, "/status");
    assert_eq!(plain.header(HEALTHCHECKED), None);
    assert_eq!(plain.header(IMMEDIATE_FAIL), None);
    assert_eq!(backend.requests(), 2);
    assert_log(&log, &["200 - via_upstream", "200 - via_upstream"]).await;
    let _ = std::fs::remove_file(log);
}

#[tokio::test]
async fn cluster_min_healthy_percentages_decide_the_answer() {
    let backend = Backend::echo("backend").await;
    let (strait, log) = start(
        &backend,
        &[
            "pass_through_mode: false\nheaders: [{name: \":path\", string_match: {exact: /missing}}]\ncluster_min_healthy_percentages: {backend: {value: 100}, nope: {value: 50}}",
            "pass_through_mode: false\nheaders: [{name: \":path\", string_match: {exact: /healthy}}]\ncluster_min_healthy_percentages: {backend: {value: 100}}",
        ],
    )
    .await;
    let addr = strait.main_addr().await;
    let missing = get(addr, "example.test", "/missing", &[]).await;
    assert_eq!(missing.status, 503);
    assert_eq!(missing.body, "");
    assert_eq!(missing.header(HEALTHCHECKED), Some(NODE_CLUSTER));
    let healthy = get(addr, "example.test", "/healthy", &[]).await;
    assert_eq!(healthy.status, 200);
    assert_eq!(healthy.body, "");
    assert_eq!(backend.requests(), 0);
    assert_log(
        &log,
        &[
            "503 LH health_check_failed_no_cluster_found",
            "200 - health_check_ok_cluster_healthy",
        ],
    )
    .await;
    let _ = std::fs::remove_file(log);
}

#[tokio::test]
async fn cache_time_answers_from_the_last_health_check_response() {
    let backend = Backend::echo("backend").await;
    // A long period: the test is over long before Envoy's timer would clear it.
    let (strait, log) = start(
        &backend,
        &[&format!(
            "pass_through_mode: true\ncache_time: 60s\n{HEALTHZ}"
        )],
    )
    .await;
    let addr = strait.main_addr().await;
    let degraded_503 = [
        ("x-backend-status", "503"),
        ("x-backend-respond-header", "x-envoy-degraded="),
    ];
    let first = get(addr, "example.test", "/healthz", &degraded_503).await;
    assert_eq!(first.status, 503);
    assert_eq!(first.echo().path, "/healthz");
    assert_eq!(first.header(HEALTHCHECKED), Some(NODE_CLUSTER));
    // Cached: answered here, with the upstream's status and degraded mark.
    let cached = get(addr, "example.test", "/healthz", &[]).await;
    assert_eq!(cached.status, 503);
    assert_eq!(cached.body, "");
    assert_eq!(cached.header("x-envoy-degraded"), Some(""));
    assert_eq!(cached.header(HEALTHCHECKED), Some(NODE_CLUSTER));
    // Other requests are not affected.
    assert_eq!(get(addr, "example.test", "/other", &[]).await.status, 200);
    assert_eq!(backend.requests(), 2);
    assert_log(
        &log,
        &[
            "503 - via_upstream",
            "503 LH health_check_cached",
            "200 - via_upstream",
        ],
    )
    .await;
    let _ = std::fs::remove_file(log);
}

#[tokio::test]
async fn a_cached_answer_expires_with_its_period() {
    let backend = Backend::echo("backend").await;
    let (strait, _log) = start(
        &backend,
        &[&format!(
            "pass_through_mode: true\ncache_time: 0.5s\n{HEALTHZ}"
        )],
    )
    .await;
    let addr = strait.main_addr().await;
    let resp = get(
        addr,
        "example.test",
        "/healthz",
        &[("x-backend-status", "500")],
    )
    .await;
    assert_eq!(resp.status, 500);
    // Within the period the cached 500 answers; once it ends, the check goes
    // upstream again (and the backend now says 200).
    let forwarded = eventually(Duration::from_secs(5), "the cache to expire", || async {
        let resp = get(addr, "example.test", "/healthz", &[]).await;
        (resp.status == 200).then_some(resp)
    })
    .await;
    assert_eq!(forwarded.echo().path, "/healthz");
    assert_eq!(backend.requests(), 2);
}

#[tokio::test]
async fn the_body_of_a_handled_health_check_is_read_and_dropped() {
    let backend = Backend::echo("backend").await;
    let (strait, log) = start(&backend, &[&format!("pass_through_mode: false\n{HEALTHZ}")]).await;
    let addr = strait.main_addr().await;
    let mut client = Client::connect(addr, Proto::H1).await.unwrap();
    let post = client.request(Method::POST, "example.test", "/healthz", &[], full("ping"));
    let resp = client.send(post).await.unwrap();
    assert_eq!((resp.status, resp.text()), (200, String::new()));
    // A larger body, then another request on the same connection: the body was
    // consumed, so the connection is still in step.
    let post = client.request(
        Method::POST,
        "example.test",
        "/healthz",
        &[],
        common::client::generated(1 << 20),
    );
    assert_eq!(client.send(post).await.unwrap().status, 200);
    let next = client.get("example.test", "/after", &[]).await;
    assert_eq!(next.echo().path, "/after");
    assert_eq!(backend.requests(), 1);

    // The answer waits for the end of the request, as Envoy's does.
    let (send_body, body_sent) = tokio::sync::oneshot::channel::<()>();
    let body = StreamBody::new(futures_util::stream::once(async move {
        let _ = body_sent.await;
        Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"late")))
    }))
    .boxed_unsync();
    let mut client = Client::connect(addr, Proto::H1).await.unwrap();
    let post = client.request(Method::POST, "example.test", "/healthz", &[], body);
    let mut answer = tokio::spawn(async move { client.send(post).await });
    let early = tokio::time::timeout(Duration::from_millis(300), &mut answer).await;
    assert!(early.is_err(), "answered before the request body ended");
    send_body.send(()).unwrap();
    let resp = within(Duration::from_secs(5), "the answer", answer)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status, 200);
    assert_log(
        &log,
        &[
            "200 - health_check_ok",
            "200 - health_check_ok",
            "200 - via_upstream",
            "200 - health_check_ok",
        ],
    )
    .await;
    let _ = std::fs::remove_file(log);
}

#[tokio::test]
async fn a_failed_server_health_check_fails_health_checks_and_marks_responses() {
    let backend = Backend::echo("backend").await;
    let (strait, log) = start(
        &backend,
        &[
            &format!("pass_through_mode: false\n{HEALTHZ}"),
            "pass_through_mode: true\nheaders: [{name: x-health-probe, present_match: true}]",
        ],
    )
    .await;
    let addr = strait.main_addr().await;
    assert_eq!(strait.admin_post("/healthcheck/fail").await.0, 200);
    let failed = get(addr, "example.test", "/healthz", &[]).await;
    assert_eq!(failed.status, 503);
    assert_eq!(failed.body, "");
    assert_eq!(failed.header(HEALTHCHECKED), Some(NODE_CLUSTER));
    assert_eq!(failed.header(IMMEDIATE_FAIL), Some("true"));
    // A pass-through health check is answered here too while failed.
    let probe = get(addr, "example.test", "/status", &[("x-health-probe", "1")]).await;
    assert_eq!(probe.status, 503);
    assert_eq!(backend.requests(), 0);
    // Every other response tells the downstream health checker at once.
    let other = get(addr, "example.test", "/other", &[]).await;
    assert_eq!(other.echo().path, "/other");
    assert_eq!(other.header(IMMEDIATE_FAIL), Some("true"));
    assert_eq!(other.header(HEALTHCHECKED), None);

    assert_eq!(strait.admin_post("/healthcheck/ok").await.0, 200);
    let ok = get(addr, "example.test", "/healthz", &[]).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header(IMMEDIATE_FAIL), None);
    let other = get(addr, "example.test", "/other", &[]).await;
    assert_eq!(other.header(IMMEDIATE_FAIL), None);
    assert_log(
        &log,
        &[
            "503 LH health_check_failed",
            "503 LH health_check_failed",
            "200 - via_upstream",
            "200 - health_check_ok",
            "200 - via_upstream",
        ],
    )
    .await;
    let _ = std::fs::remove_file(log);
}
