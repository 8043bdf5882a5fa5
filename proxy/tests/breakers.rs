//! Cluster `circuit_breakers`: exact counts of what reaches the backend and what is
//! refused with 503 `x-envoy-overloaded`, and the overflow counters.

mod common;

use std::time::Duration;

use common::*;

/// A STATIC cluster `up` at `backend` with `thresholds` (a YAML flow map).
fn breaker_cluster(backend: std::net::SocketAddr, thresholds: &str) -> String {
    format!(
        "{}  circuit_breakers:\n    thresholds: [{thresholds}]\n",
        cluster_yaml("up", &[(backend, 1)], false)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_refuses_the_third_concurrent_request() {
    let up = Backend::echo("up").await;
    let config = Bootstrap::catch_all("up")
        .cluster_raw(&breaker_cluster(
            up.addr(),
            "{max_requests: 2, track_remaining: true}",
        ))
        .build();
    let s = Strait::start(&config).await;
    let addr = s.main_addr().await;
    s.wait_stat("cluster.up.circuit_breakers.default.remaining_rq", |v| {
        v == 2
    })
    .await;
    // Two slow requests hold both places until the backend answers them.
    let slow: Vec<_> = (0..2)
        .map(|i| {
            tokio::spawn(async move {
                get(
                    addr,
                    "h",
                    &format!("/slow{i}"),
                    &[("x-backend-delay-ms", "3000")],
                )
                .await
            })
        })
        .collect();
    eventually(
        Duration::from_secs(5),
        "the backend saw both slow requests",
        || {
            let n = up.requests();
            async move { (n == 2).then_some(()) }
        },
    )
    .await;
    s.wait_stat("cluster.up.circuit_breakers.default.rq_open", |v| v == 1)
        .await;
    for i in 0..3 {
        let r = get(addr, "h", &format!("/over{i}"), &[]).await;
        assert_eq!(r.status, 503, "{}", r.text());
        assert_eq!(r.header("x-envoy-overloaded"), Some("true"));
        assert!(r.text().ends_with("reset reason: overflow"), "{}", r.text());
    }
    for task in slow {
        let r = task.await.expect("slow request task");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-envoy-overloaded"), None);
    }
    assert_eq!(
        up.requests(),
        2,
        "refused requests never reached the backend"
    );
    s.wait_stat("cluster.up.upstream_rq_pending_overflow", |v| v == 3)
        .await;
    // The places are given back when the responses end.
    s.wait_stat("cluster.up.circuit_breakers.default.rq_open", |v| v == 0)
        .await;
    s.wait_stat("cluster.up.circuit_breakers.default.remaining_rq", |v| {
        v == 2
    })
    .await;
    let r = get(addr, "h", "/after", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.requests(), 3);
    s.wait_stat("cluster.up.upstream_rq_pending_overflow", |v| v == 3)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_retries_zero_disables_retries() {
    let up = Backend::flaky("up", 1, Misbehave::Status(503)).await;
    let config = Bootstrap::new(
        "- name: default\n  domains: [\"*\"]\n  routes:\n  - match: {prefix: /}\n    route:\n      cluster: up\n      retry_policy: {retry_on: 5xx, num_retries: 2}\n",
    )
    .cluster_raw(&breaker_cluster(up.addr(), "{max_retries: 0}"))
    .build();
    let s = Strait::start(&config).await;
    s.wait_stat("cluster.up.circuit_breakers.default.rq_retry_open", |v| {
        v == 1
    })
    .await;
    let r = get(s.main_addr().await, "h", "/", &[]).await;
    assert_eq!(r.status, 503, "the first attempt's response comes back");
    assert_eq!(
        r.header("x-envoy-overloaded"),
        None,
        "the upstream's own 503"
    );
    assert_eq!(up.requests(), 1);
    s.wait_stat("cluster.up.upstream_rq_retry_overflow", |v| v == 1)
        .await;
    assert_eq!(s.stat("cluster.up.upstream_rq_retry").await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_overflow_is_refused_and_counted() {
    let up = Backend::echo("up").await;
    let config = Bootstrap::catch_all("up")
        .cluster_raw(&breaker_cluster(up.addr(), "{max_connections: 1}"))
        .build();
    let s = Strait::start(&config).await;
    let addr = s.main_addr().await;
    let slow =
        tokio::spawn(
            async move { get(addr, "h", "/slow", &[("x-backend-delay-ms", "3000")]).await },
        );
    eventually(
        Duration::from_secs(5),
        "the backend saw the slow request",
        || {
            let n = up.requests();
            async move { (n == 1).then_some(()) }
        },
    )
    .await;
    // The one connection is busy: a second request would need another.
    let r = get(addr, "h", "/more", &[]).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("x-envoy-overloaded"), Some("true"));
    assert_eq!(slow.await.expect("slow task").status, 200);
    assert_eq!(up.requests(), 1);
    s.wait_stat("cluster.up.upstream_cx_overflow", |v| v == 1)
        .await;
    s.wait_stat("cluster.up.upstream_rq_pending_overflow", |v| v == 1)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_thresholds_are_refused_with_paths() {
    let up = Backend::closed_port();
    let cluster = "static_resources.clusters[0].circuit_breakers";
    for (thresholds, want) in [
        (
            "{priority: HIGH}",
            format!("{cluster}.thresholds[0].priority: HIGH is not supported yet"),
        ),
        (
            "{retry_budget: {}}",
            format!("{cluster}.thresholds[0].retry_budget: retry_budget is not supported yet"),
        ),
        (
            "{max_requests: -1}",
            format!("{cluster}.thresholds[0].max_requests: invalid value"),
        ),
    ] {
        let config = Bootstrap::catch_all("up")
            .cluster_raw(&breaker_cluster(up, thresholds))
            .build();
        let (code, stderr) = Strait::start_expect_failure(&config).await;
        assert_ne!(code, 0);
        assert!(stderr.contains(&want), "want {want:?} in:\n{stderr}");
    }
}
