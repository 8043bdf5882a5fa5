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

/// At `max_connections` a request waits for a connection (as Envoy's pending request)
/// instead of being refused; beyond `max_pending_requests` waiting, it is refused.
/// One worker, so the one connection is the one every request waits for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_queues_until_a_connection_is_released() {
    let up = Backend::echo("up").await;
    let (log, hcm) = flags_log();
    let config = Bootstrap::catch_all("up")
        .hcm(&hcm)
        .cluster_raw(&breaker_cluster(
            up.addr(),
            "{max_connections: 1, max_pending_requests: 1}",
        ))
        .build();
    let s = Strait::start_with(&config, &["--concurrency", "1"]).await;
    let addr = s.main_addr().await;
    let slow =
        tokio::spawn(
            async move { get(addr, "h", "/slow", &[("x-backend-delay-ms", "1500")]).await },
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
    // The one connection is busy: the next request waits for it.
    let queued = tokio::spawn(async move { get(addr, "h", "/queued", &[]).await });
    s.wait_stat("cluster.up.circuit_breakers.default.rq_pending_open", |v| {
        v == 1
    })
    .await;
    assert_eq!(up.requests(), 1, "the queued request has not gone out");
    // A second waiter is one more than max_pending_requests.
    let r = get(addr, "h", "/over", &[]).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("x-envoy-overloaded"), Some("true"));
    assert_eq!(slow.await.expect("slow task").status, 200);
    let r = queued.await.expect("queued task");
    assert_eq!(r.status, 200, "served on the released connection");
    assert_eq!(r.echo().path, "/queued");
    assert_eq!(up.requests(), 2);
    assert_eq!(
        up.connections(),
        1,
        "the queued request reused the one connection"
    );
    s.wait_stat("cluster.up.upstream_rq_pending_overflow", |v| v == 1)
        .await;
    assert_eq!(s.stat("cluster.up.upstream_cx_overflow").await, Some(1));
    s.wait_stat("cluster.up.circuit_breakers.default.rq_pending_open", |v| {
        v == 0
    })
    .await;
    let _ = std::fs::remove_file(log);
}

/// A queued request whose route timeout ends first gets 504 and leaves the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_request_times_out() {
    let up = Backend::echo("up").await;
    let config = Bootstrap::new(
        "- name: default\n  domains: [\"*\"]\n  routes:\n  - match: {prefix: /late}\n    route: {cluster: up, timeout: 0.3s}\n  - match: {prefix: /}\n    route: {cluster: up}\n",
    )
    .cluster_raw(&breaker_cluster(up.addr(), "{max_connections: 1}"))
    .build();
    let s = Strait::start_with(&config, &["--concurrency", "1"]).await;
    let addr = s.main_addr().await;
    let slow =
        tokio::spawn(
            async move { get(addr, "h", "/slow", &[("x-backend-delay-ms", "1500")]).await },
        );
    eventually(Duration::from_secs(5), "the slow request is out", || {
        let n = up.requests();
        async move { (n == 1).then_some(()) }
    })
    .await;
    let r = get(addr, "h", "/late", &[]).await;
    assert_eq!(r.status, 504, "timed out in the queue: {}", r.text());
    s.wait_stat("cluster.up.upstream_rq_timeout", |v| v == 1)
        .await;
    s.wait_stat("cluster.up.circuit_breakers.default.rq_pending_open", |v| {
        v == 0
    })
    .await;
    assert_eq!(slow.await.expect("slow task").status, 200);
    let r = get(addr, "h", "/after", &[]).await;
    assert_eq!(r.status, 200, "the connection serves again");
    assert_eq!(up.requests(), 2, "the timed-out request never went out");
}

/// `retry_budget` replaces `max_retries`: with no share of the load, exactly
/// `min_retry_concurrency` retries may be under way; the next ones overflow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_budget_overflows_at_min_retry_concurrency() {
    let up = Backend::echo("up").await;
    let (log, hcm) = flags_log();
    let config = Bootstrap::new(
        "- name: default\n  domains: [\"*\"]\n  include_request_attempt_count: true\n  routes:\n  - match: {prefix: /}\n    route:\n      cluster: up\n      retry_policy: {retry_on: 5xx, num_retries: 1, retry_back_off: {base_interval: 0.001s}}\n",
    )
    .hcm(&hcm)
    .cluster_raw(&breaker_cluster(
        up.addr(),
        "{max_retries: 100, retry_budget: {budget_percent: {value: 0.0}, min_retry_concurrency: 2}}",
    ))
    .build();
    let s = Strait::start(&config).await;
    let addr = s.main_addr().await;
    // Every first attempt fails at once; every retry holds on for a while.
    let failing = [
        ("x-backend-status", "503"),
        ("x-backend-retry-delay-ms", "2000"),
    ];
    let held: Vec<_> = (0..2)
        .map(|i| tokio::spawn(async move { get(addr, "h", &format!("/held{i}"), &failing).await }))
        .collect();
    eventually(Duration::from_secs(5), "two retries under way", || {
        let n = up.requests();
        async move { (n == 4).then_some(()) }
    })
    .await;
    s.wait_stat("cluster.up.upstream_rq_retry", |v| v == 2)
        .await;
    // Three more at once: their retries find the budget spent.
    let over: Vec<_> = (0..3)
        .map(|i| tokio::spawn(async move { get(addr, "h", &format!("/over{i}"), &failing).await }))
        .collect();
    for task in over {
        let r = task.await.expect("over task");
        assert_eq!(r.status, 503);
        assert_eq!(r.echo().header("x-envoy-attempt-count"), Some("1"));
    }
    s.wait_stat("cluster.up.upstream_rq_retry_overflow", |v| v == 3)
        .await;
    for task in held {
        let r = task.await.expect("held task");
        assert_eq!(r.echo().header("x-envoy-attempt-count"), Some("2"));
    }
    assert_eq!(up.requests(), 7);
    assert_eq!(s.stat("cluster.up.upstream_rq_retry").await, Some(2));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(text.lines().filter(|l| *l == "503 UO").count(), 3, "{text}");
    let _ = std::fs::remove_file(log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_thresholds_are_refused_with_paths() {
    let up = Backend::closed_port();
    let cluster = "static_resources.clusters[0].circuit_breakers";
    for (thresholds, want) in [
        (
            "{priority: URGENT}",
            format!("{cluster}.thresholds[0].priority: unknown value \"URGENT\", expected one of DEFAULT, HIGH"),
        ),
        (
            "{retry_budget: {budget_percent: {value: 101}}}",
            format!("{cluster}.thresholds[0].retry_budget.budget_percent.value: must be between 0 and 100"),
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

/// A route's `priority: HIGH` uses the cluster's HIGH thresholds (and its own
/// connections), so HIGH traffic keeps flowing while DEFAULT is at its limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn high_priority_routes_use_their_own_thresholds() {
    let up = Backend::echo("up").await;
    let config = Bootstrap::new(
        "- name: default\n  domains: [\"*\"]\n  routes:\n  - match: {prefix: /high}\n    route: {cluster: up, priority: HIGH}\n  - match: {prefix: /}\n    route: {cluster: up}\n",
    )
    .cluster_raw(&breaker_cluster(
        up.addr(),
        "{max_requests: 1}, {priority: HIGH, max_requests: 3, track_remaining: true}",
    ))
    .build();
    let s = Strait::start(&config).await;
    let addr = s.main_addr().await;
    s.wait_stat("cluster.up.circuit_breakers.high.remaining_rq", |v| v == 3)
        .await;
    // One slow DEFAULT request fills DEFAULT's only place.
    let slow =
        tokio::spawn(
            async move { get(addr, "h", "/slow", &[("x-backend-delay-ms", "3000")]).await },
        );
    s.wait_stat("cluster.up.circuit_breakers.default.rq_open", |v| v == 1)
        .await;
    let over = get(addr, "h", "/over", &[]).await;
    assert_eq!(over.status, 503, "{}", over.text());
    assert_eq!(over.header("x-envoy-overloaded"), Some("true"));
    // Two concurrent HIGH requests still go through.
    let high: Vec<_> = (0..2)
        .map(|i| {
            tokio::spawn(async move {
                get(
                    addr,
                    "h",
                    &format!("/high{i}"),
                    &[("x-backend-delay-ms", "300")],
                )
                .await
            })
        })
        .collect();
    for task in high {
        let r = task.await.expect("high request task");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(slow.await.expect("slow task").status, 200);
    let (_, clusters) = s.admin_get("/clusters").await;
    for line in [
        "up::default_priority::max_requests::1",
        "up::high_priority::max_requests::3",
        "up::high_priority::max_retries::3",
    ] {
        assert!(
            clusters.lines().any(|l| l == line),
            "{line} in:\n{clusters}"
        );
    }
}

/// `per_host_thresholds` (`max_connections`, the one per-host field Envoy honours):
/// each host gets at most that many connections, whatever the cluster's limit; a
/// request for a host at its limit waits for that host's connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_host_max_connections_limits_each_host() {
    let a = Backend::echo("a").await;
    let b = Backend::echo("b").await;
    let cluster = format!(
        "{}  circuit_breakers:\n    per_host_thresholds: [{{max_connections: 1, max_requests: 7}}]\n",
        cluster_yaml("up", &[(a.addr(), 1), (b.addr(), 1)], false)
    );
    let config = Bootstrap::catch_all("up").cluster_raw(&cluster).build();
    let s = Strait::start_with(&config, &["--concurrency", "1"]).await;
    let addr = s.main_addr().await;
    let slow = |path: &'static str| {
        tokio::spawn(async move { get(addr, "h", path, &[("x-backend-delay-ms", "800")]).await })
    };
    // Round robin: one slow request on each host, each on its own connection.
    let first = slow("/1");
    let second = slow("/2");
    eventually(Duration::from_secs(5), "both hosts busy", || {
        let n = a.requests() + b.requests();
        async move { (n == 2).then_some(()) }
    })
    .await;
    // Both hosts are at their limit: the next request waits rather than connecting.
    let third = slow("/3");
    s.wait_stat("cluster.up.upstream_cx_overflow", |v| v >= 1)
        .await;
    for task in [first, second, third] {
        let r = task.await.expect("request task");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(a.requests() + b.requests(), 3);
    assert_eq!(
        a.connections() + b.connections(),
        2,
        "one connection per host, the third request reused one"
    );
}
