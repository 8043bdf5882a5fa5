//! `envoy.filters.http.local_ratelimit` over real sockets, configured exactly as
//! Envoy's `LocalRateLimit`. The answers, headers, stats and access log entries are
//! the ones Envoy 1.40 gave to the same requests.
mod common;

use std::time::Duration;

use common::client::{Client, Proto};
use common::*;

const LIMITED: &str = "local_rate_limited";
const ON: &str = "{default_value: {numerator: 100, denominator: HUNDRED}}";

/// A local rate limit filter with `fields` (YAML from column 0) as an `http_filters`
/// item.
fn filter_yaml(fields: &str) -> String {
    format!(
        "- name: envoy.filters.http.local_ratelimit\n  typed_config:\n    \"@type\": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit\n{}",
        common::config::indent(fields, 4)
    )
}

/// `bootstrap` with a local rate limit filter of `fields` before the router, and an
/// access log of `%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%`. Returns
/// the YAML and the log's path.
fn config(bootstrap: Bootstrap, fields: &str) -> (String, std::path::PathBuf) {
    let (log, hcm) = access_log("%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%");
    let yaml = bootstrap.hcm(&hcm).build();
    let marker = "          http_filters:\n";
    assert!(yaml.contains(marker));
    let filter = common::config::indent(&filter_yaml(fields), 10);
    (yaml.replacen(marker, &format!("{marker}{filter}"), 1), log)
}

/// A Strait routing everything to `backend` with one local rate limit filter.
async fn start(backend: &Backend, fields: &str) -> (Strait, std::path::PathBuf) {
    let bootstrap = Bootstrap::catch_all("backend").cluster("backend", backend.addr());
    let (yaml, log) = config(bootstrap, fields);
    (Strait::start(&yaml).await, log)
}

/// An enforced bucket of `max_tokens`, refilled one token per `fill_interval`.
fn enforced(max_tokens: u32, fill_interval: &str) -> String {
    format!(
        "stat_prefix: rl\ntoken_bucket: {{max_tokens: {max_tokens}, fill_interval: {fill_interval}}}\nfilter_enabled: {ON}\nfilter_enforced: {ON}"
    )
}

#[tokio::test]
async fn a_bucket_of_n_answers_n_then_429() {
    let backend = Backend::echo("backend").await;
    let fields = format!(
        "{}\nresponse_headers_to_add: [{{header: {{key: x-limited, value: \"yes\"}}}}]",
        enforced(3, "3600s")
    );
    let (strait, log) = start(&backend, &fields).await;
    let addr = strait.main_addr().await;
    for _ in 0..3 {
        let resp = get(addr, "example.test", "/", &[]).await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("x-limited"), None);
    }
    let resp = get(addr, "example.test", "/", &[]).await;
    assert_eq!(resp.status, 429);
    assert_eq!(resp.body, LIMITED);
    assert_eq!(resp.header("content-type"), Some("text/plain"));
    assert_eq!(resp.header("x-limited"), Some("yes"));
    // Envoy 1.40 sends no `x-envoy-ratelimited` on its own 429, nor x-ratelimit-*
    // headers unless asked.
    assert_eq!(resp.header("x-envoy-ratelimited"), None);
    assert_eq!(resp.header("x-ratelimit-limit"), None);
    assert_eq!(backend.requests(), 3);
    assert_log(
        &log,
        &[
            "200 - via_upstream",
            "200 - via_upstream",
            "200 - via_upstream",
            "429 RL local_rate_limited",
        ],
    )
    .await;
    let stats = strait.stats().await;
    let stat = |name: &str| {
        stats
            .get(&format!("rl.http_local_rate_limit.{name}"))
            .copied()
    };
    assert_eq!(stat("enabled"), Some(4));
    assert_eq!(stat("ok"), Some(3));
    assert_eq!(stat("rate_limited"), Some(1));
    assert_eq!(stat("enforced"), Some(1));
    assert_eq!(stat("shadow_mode"), Some(0));
    let _ = std::fs::remove_file(log);
}

#[tokio::test]
async fn the_bucket_refills_after_fill_interval() {
    let backend = Backend::echo("backend").await;
    let (strait, log) = start(&backend, &enforced(1, "0.3s")).await;
    let addr = strait.main_addr().await;
    assert_eq!(get(addr, "example.test", "/", &[]).await.status, 200);
    // Within the same fill interval the bucket is empty (the interval is long
    // enough for the next request to come well within it).
    assert_eq!(get(addr, "example.test", "/", &[]).await.status, 429);
    eventually(Duration::from_secs(3), "a refilled token", || async {
        (get(addr, "example.test", "/", &[]).await.status == 200).then_some(())
    })
    .await;
    let _ = std::fs::remove_file(log);
}

#[tokio::test]
async fn workers_share_one_bucket() {
    // `--concurrency 2`: connections land on both workers; the bucket is one.
    let backend = Backend::echo("backend").await;
    let (strait, log) = start(&backend, &enforced(10, "3600s")).await;
    let addr = strait.main_addr().await;
    let requests = (0..24).map(|_| async move { get(addr, "example.test", "/", &[]).await.status });
    let statuses = futures_util::future::join_all(requests).await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        10,
        "{statuses:?}"
    );
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 14);
    assert_eq!(backend.requests(), 10);
    let _ = std::fs::remove_file(log);
}

#[tokio::test]
async fn per_connection_buckets() {
    let backend = Backend::echo("backend").await;
    let fields = format!(
        "{}\nlocal_rate_limit_per_downstream_connection: true",
        enforced(2, "3600s")
    );
    let (strait, log) = start(&backend, &fields).await;
    let addr = strait.main_addr().await;
    let mut first = Client::connect(addr, Proto::H1).await.expect("connect");
    let statuses = [
        first.get("example.test", "/", &[]).await.status,
        first.get("example.test", "/", &[]).await.status,
        first.get("example.test", "/", &[]).await.status,
    ];
    assert_eq!(statuses, [200, 200, 429]);
    // Another connection has a bucket of its own; the first's stays empty.
    let mut second = Client::connect(addr, Proto::H2).await.expect("connect");
    assert_eq!(second.get("example.test", "/", &[]).await.status, 200);
    assert_eq!(second.get("example.test", "/", &[]).await.status, 200);
    assert_eq!(second.get("example.test", "/", &[]).await.status, 429);
    assert_eq!(first.get("example.test", "/", &[]).await.status, 429);
    let _ = std::fs::remove_file(log);
}

/// The common setup: the filter in `http_filters` with only `stat_prefix` (0%
/// enabled, no bucket), and buckets on some routes.
#[tokio::test]
async fn per_route_config_limits_its_route_only() {
    let backend = Backend::echo("backend").await;
    let per_route = |extra: &str| {
        format!(
            "typed_per_filter_config:\n  envoy.filters.http.local_ratelimit:\n    \"@type\": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit\n{}",
            common::config::indent(&format!("{}{extra}", enforced(1, "3600s").replace("stat_prefix: rl", "stat_prefix: route")), 4)
        )
    };
    let vhosts = format!(
        "- name: default\n  domains: [\"*\"]\n  routes:\n  - match: {{prefix: /limited}}\n    route: {{cluster: backend}}\n    response_headers_to_add: [{{header: {{key: x-route, value: limited}}}}]\n{}\n  - match: {{prefix: /grpc-exhausted}}\n    route: {{cluster: backend}}\n{}\n  - match: {{prefix: /}}\n    route: {{cluster: backend}}\n",
        common::config::indent(&per_route(""), 4),
        common::config::indent(&per_route("\nrate_limited_as_resource_exhausted: true"), 4),
    );
    let bootstrap = Bootstrap::new(&vhosts).cluster("backend", backend.addr());
    let (yaml, log) = config(bootstrap, "stat_prefix: listener");
    let strait = Strait::start(&yaml).await;
    let addr = strait.main_addr().await;
    assert_eq!(get(addr, "example.test", "/limited", &[]).await.status, 200);
    let limited = get(addr, "example.test", "/limited", &[]).await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.body, LIMITED);
    // The route forwards: its response headers go on the local answer, as in Envoy.
    assert_eq!(limited.header("x-route"), Some("limited"));
    for _ in 0..5 {
        assert_eq!(get(addr, "example.test", "/other", &[]).await.status, 200);
    }
    // gRPC: HTTP 200 with the gRPC status, UNAVAILABLE unless RESOURCE_EXHAUSTED asked.
    let grpc = [("content-type", "application/grpc")];
    get_h2(addr, "example.test", "/grpc-exhausted", &grpc).await;
    let exhausted = get_h2(addr, "example.test", "/grpc-exhausted", &grpc).await;
    assert_eq!(exhausted.status, 200);
    assert_eq!(exhausted.header("grpc-status"), Some("8"));
    assert_eq!(exhausted.header("grpc-message"), Some(LIMITED));
    let unavailable = get_h2(addr, "example.test", "/limited", &grpc).await;
    assert_eq!(unavailable.status, 200);
    assert_eq!(unavailable.header("grpc-status"), Some("14"));
    assert_eq!(unavailable.header("grpc-message"), Some(LIMITED));
    assert_eq!(unavailable.header("content-type"), Some("application/grpc"));
    // Each per-route config has its own bucket; both count under their prefix, and
    // the filter's own config (0% enabled) counts nothing.
    let stats = strait.stats().await;
    assert_eq!(stats.get("route.http_local_rate_limit.enabled"), Some(&5));
    assert_eq!(stats.get("route.http_local_rate_limit.ok"), Some(&2));
    assert_eq!(stats.get("route.http_local_rate_limit.enforced"), Some(&3));
    assert_eq!(
        stats.get("listener.http_local_rate_limit.enabled"),
        Some(&0)
    );
    let mut want = vec!["200 - via_upstream"; 7];
    want.extend([
        "429 RL local_rate_limited",
        "200 RL local_rate_limited",
        "200 RL local_rate_limited",
    ]);
    assert_log(&log, &want).await;
    let _ = std::fs::remove_file(log);
}

#[tokio::test]
async fn enabled_but_not_enforced_passes_with_the_added_header() {
    let backend = Backend::echo("backend").await;
    let fields = format!(
        "stat_prefix: shadow\ntoken_bucket: {{max_tokens: 1, fill_interval: 3600s}}\nfilter_enabled: {ON}\nrequest_headers_to_add_when_not_enforced: [{{header: {{key: x-would-limit, value: \"1\"}}}}]"
    );
    let (strait, log) = start(&backend, &fields).await;
    let addr = strait.main_addr().await;
    let first = get(addr, "example.test", "/", &[]).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.echo().header("x-would-limit"), None);
    let second = get(addr, "example.test", "/", &[]).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.echo().header("x-would-limit"), Some("1"));
    assert_log(&log, &["200 - via_upstream", "200 - via_upstream"]).await;
    let stats = strait.stats().await;
    assert_eq!(
        stats.get("shadow.http_local_rate_limit.rate_limited"),
        Some(&1)
    );
    assert_eq!(stats.get("shadow.http_local_rate_limit.enforced"), Some(&0));
    assert_eq!(stats.get("shadow.http_local_rate_limit.ok"), Some(&1));
    let _ = std::fs::remove_file(log);
}

#[tokio::test]
async fn x_ratelimit_headers() {
    let backend = Backend::echo("backend").await;
    let fields = format!(
        "{}\nenable_x_ratelimit_headers: DRAFT_VERSION_03",
        enforced(2, "60s")
    );
    let (strait, log) = start(&backend, &fields).await;
    let addr = strait.main_addr().await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let resp = get(addr, "example.test", "/", &[]).await;
        let h = |name| resp.header(name).unwrap_or("-").to_owned();
        seen.push((
            resp.status,
            h("x-ratelimit-limit"),
            h("x-ratelimit-remaining"),
            h("x-ratelimit-reset"),
        ));
    }
    let row = |status, limit: &str, remaining: &str, reset: &str| {
        (
            status,
            limit.to_owned(),
            remaining.to_owned(),
            reset.to_owned(),
        )
    };
    // Reset: 0 while a token is left, else the seconds one token takes to refill.
    assert_eq!(
        seen,
        [
            row(200, "2", "1", "0"),
            row(200, "2", "0", "60"),
            row(429, "2", "0", "60")
        ]
    );
    let _ = std::fs::remove_file(log);
}

/// The proxy's own answers (here a 503 for an upstream that reset the request)
/// carry the `x-ratelimit-*` values too, as Envoy's local replies do.
#[tokio::test]
async fn x_ratelimit_headers_reach_the_proxys_own_answers() {
    let backend = Backend::echo("backend").await;
    let fields = format!(
        "{}\nenable_x_ratelimit_headers: DRAFT_VERSION_03",
        enforced(5, "60s")
    );
    let (strait, log) = start(&backend, &fields).await;
    let addr = strait.main_addr().await;
    let reset = [("x-backend-reset", "before-headers")];
    let resp = get(addr, "example.test", "/", &reset).await;
    assert_eq!(resp.status, 503, "{}", resp.text());
    assert_eq!(resp.header("x-ratelimit-limit"), Some("5"));
    assert_eq!(resp.header("x-ratelimit-remaining"), Some("4"));
    assert_eq!(resp.header("x-ratelimit-reset"), Some("0"));
    drop(strait);
    let _ = std::fs::remove_file(log);
}

#[tokio::test]
async fn a_reload_keeps_the_bucket_of_an_unchanged_listener_only() {
    let backend = Backend::echo("backend").await;
    let other = Backend::echo("other").await;
    let bootstrap = Bootstrap::catch_all("backend").cluster("backend", backend.addr());
    let (yaml, log) = config(bootstrap, &enforced(1, "3600s"));
    let strait = Strait::start(&yaml).await;
    let addr = strait.main_addr().await;
    assert_eq!(get(addr, "example.test", "/", &[]).await.status, 200);
    assert_eq!(get(addr, "example.test", "/", &[]).await.status, 429);
    // A change elsewhere (a new cluster): Envoy leaves the listener alone.
    let cluster = common::config::indent(&cluster_yaml("other", &[(other.addr(), 1)], false), 2);
    let same_listener = yaml.replacen("  clusters:\n", &format!("  clusters:\n{cluster}\n"), 1);
    assert_ne!(same_listener, yaml);
    strait.rewrite_config(&same_listener);
    strait
        .wait_stat("server.config_reload_success", |v| v == 1)
        .await;
    assert_eq!(get(addr, "example.test", "/", &[]).await.status, 429);
    // The filter changed: a new listener, a full bucket.
    let changed = same_listener.replace("max_tokens: 1", "max_tokens: 2");
    strait.rewrite_config(&changed);
    strait
        .wait_stat("server.config_reload_success", |v| v == 2)
        .await;
    assert_eq!(get(addr, "example.test", "/", &[]).await.status, 200);
    let _ = std::fs::remove_file(log);
}
