//! Active health checking: HTTP, TCP and gRPC checks take hosts out of and back into
//! load balancing; the panic threshold; config errors.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;

/// A STATIC cluster `c` over `endpoints` with one health check (`check`: the fields of
/// a `health_checks` item, YAML from column 0) and extra cluster fields.
fn checked_cluster(endpoints: &[SocketAddr], check: &str, extra: &str) -> String {
    let weighted: Vec<(SocketAddr, u32)> = endpoints.iter().map(|a| (*a, 1)).collect();
    let mut yaml = cluster_yaml("c", &weighted, false);
    yaml.push_str("  health_checks:\n");
    for (i, line) in check.trim_matches('\n').lines().enumerate() {
        let marker = if i == 0 { "- " } else { "  " };
        yaml.push_str(&format!("  {marker}{line}\n"));
    }
    yaml.push_str(extra);
    yaml
}

const FAST: &str = "timeout: 1s\ninterval: 0.1s\nno_traffic_interval: 0.1s\ninterval_jitter: 0.01s\nunhealthy_threshold: 2\nhealthy_threshold: 2\n";

async fn start(endpoints: &[SocketAddr], check: &str, extra: &str) -> Strait {
    let yaml = Bootstrap::catch_all("c")
        .cluster_raw(&checked_cluster(endpoints, check, extra))
        .build();
    Strait::start(&yaml).await
}

/// Waits until `/clusters` shows `flags` for `addr` in cluster `c`.
async fn wait_flags(s: &Strait, addr: SocketAddr, flags: &str) {
    let line = format!("c::{addr}::health_flags::{flags}");
    eventually(Duration::from_secs(10), &line, || async {
        let (_, body) = s.admin_get("/clusters").await;
        body.lines().any(|l| l == line).then_some(())
    })
    .await;
}

/// The backends that answered `n` requests through the proxy.
async fn backends_seen(addr: SocketAddr, n: usize) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for _ in 0..n {
        let r = get(addr, "h", "/", &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        seen.insert(r.header("x-backend-name").unwrap_or_default().to_owned());
    }
    seen
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_check_takes_a_host_out_and_brings_it_back() {
    let a = Backend::with_health("a").await;
    let b = Backend::with_health("b").await;
    let check = format!("{FAST}http_health_check: {{path: /healthz}}");
    let s = start(&[a.addr(), b.addr()], &check, "").await;
    let addr = s.main_addr().await;
    s.wait_stat("cluster.c.health_check.healthy", |v| v == 2)
        .await;
    assert_eq!(backends_seen(addr, 10).await, names(&["a", "b"]));

    a.set_healthy(false);
    wait_flags(&s, a.addr(), "/failed_active_hc").await;
    wait_flags(&s, b.addr(), "healthy").await;
    s.wait_stat("cluster.c.membership_healthy", |v| v == 1)
        .await;
    assert_eq!(s.stat("cluster.c.membership_total").await, Some(2));
    assert_eq!(backends_seen(addr, 10).await, names(&["b"]));
    let (_, json) = s.admin_get("/clusters?format=json").await;
    let json: serde_json::Value = serde_json::from_str(&json).expect("clusters JSON");
    let hosts = &json["cluster_statuses"][0]["host_statuses"];
    let a_status = hosts
        .as_array()
        .expect("host_statuses")
        .iter()
        .find(|h| h["address"]["socket_address"]["port_value"] == a.addr().port())
        .expect("host a listed");
    assert_eq!(
        a_status["health_status"]["failed_active_health_check"], true,
        "{json}"
    );
    assert_eq!(a_status["health_status"]["eds_health_status"], "HEALTHY");

    let successes_before = s.stat("cluster.c.health_check.success").await.unwrap();
    a.set_healthy(true);
    wait_flags(&s, a.addr(), "healthy").await;
    // healthy_threshold is 2: a needed two successes (b's are counted too, so ≥).
    let successes = s.stat("cluster.c.health_check.success").await.unwrap();
    assert!(successes >= successes_before + 2, "{successes}");
    assert_eq!(backends_seen(addr, 10).await, names(&["a", "b"]));
    assert!(s.stat("cluster.c.health_check.failure").await.unwrap() >= 1);
    assert_eq!(s.stat("cluster.c.lb_healthy_panic").await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connect_check_marks_a_closed_port_unhealthy() {
    let up = Backend::echo("up").await;
    let closed = Backend::closed_port();
    let check = format!("{FAST}tcp_health_check: {{}}");
    let s = start(&[up.addr(), closed], &check, "").await;
    wait_flags(&s, closed, "/failed_active_hc").await;
    wait_flags(&s, up.addr(), "healthy").await;
    s.wait_stat("cluster.c.health_check.network_failure", |v| v >= 1)
        .await;
    let addr = s.main_addr().await;
    assert_eq!(backends_seen(addr, 6).await, names(&["up"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_payload_check_matches_the_reply() {
    let t = Backend::tcp_health("t").await;
    // "ping" → "pong", hex as Envoy's Payload.text.
    let check = format!(
        "{FAST}tcp_health_check:\n  send: {{text: \"70696e67\"}}\n  receive: [{{text: \"706f6e67\"}}]"
    );
    let s = start(&[t.addr()], &check, "").await;
    wait_flags(&s, t.addr(), "healthy").await;
    assert!(t.requests() >= 1);
    t.set_healthy(false);
    wait_flags(&s, t.addr(), "/failed_active_hc").await;
    t.set_healthy(true);
    wait_flags(&s, t.addr(), "healthy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_check_follows_serving_status() {
    let g = Backend::grpc_health("g").await;
    let check = format!("{FAST}grpc_health_check: {{service_name: svc}}");
    let s = start(&[g.addr()], &check, "").await;
    wait_flags(&s, g.addr(), "healthy").await;
    g.set_healthy(false);
    wait_flags(&s, g.addr(), "/failed_active_hc").await;
    // NOT_SERVING is an active failure: no network failures counted.
    assert_eq!(
        s.stat("cluster.c.health_check.network_failure").await,
        Some(0)
    );
    g.set_healthy(true);
    wait_flags(&s, g.addr(), "healthy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_threshold_ignores_health_unless_zero() {
    let a = Backend::with_health("a").await;
    let b = Backend::with_health("b").await;
    a.set_healthy(false);
    b.set_healthy(false);
    let check = format!("{FAST}http_health_check: {{path: /healthz}}");

    // Default 50%: no healthy host is a panic, and every host takes traffic.
    let s = start(&[a.addr(), b.addr()], &check, "").await;
    wait_flags(&s, a.addr(), "/failed_active_hc").await;
    wait_flags(&s, b.addr(), "/failed_active_hc").await;
    let addr = s.main_addr().await;
    assert_eq!(backends_seen(addr, 10).await, names(&["a", "b"]));
    s.wait_stat("cluster.c.lb_healthy_panic", |v| v >= 10).await;
    drop(s);

    // 0%: never panic, so no healthy host means 503.
    let extra = "  common_lb_config:\n    healthy_panic_threshold: {value: 0}\n";
    let s = start(&[a.addr(), b.addr()], &check, extra).await;
    wait_flags(&s, a.addr(), "/failed_active_hc").await;
    let addr = s.main_addr().await;
    let r = get(addr, "h", "/", &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.text(), "no healthy upstream");
    s.wait_stat("cluster.c.upstream_cx_none_healthy", |v| v == 1)
        .await;
    assert_eq!(s.stat("cluster.c.lb_healthy_panic").await, Some(0));
    a.set_healthy(true);
    wait_flags(&s, a.addr(), "healthy").await;
    assert_eq!(backends_seen(addr, 4).await, names(&["a"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_health_checks_are_refused_with_their_path() {
    let addr = Backend::closed_port();
    let cases = [
        (
            "timeout: 1s\nunhealthy_threshold: 1\nhealthy_threshold: 1\ntcp_health_check: {}",
            "static_resources.clusters[0].health_checks[0].interval: interval is required",
        ),
        (
            "timeout: 1s\ninterval: 1s\nunhealthy_threshold: 1\nhealthy_threshold: 1\nhttp_health_check: {path: /h, bogus: 1}",
            "static_resources.clusters[0].health_checks[0].http_health_check.bogus: unknown field",
        ),
        (
            "timeout: 1s\ninterval: 1s\nunhealthy_threshold: 1\nhealthy_threshold: 1",
            "static_resources.clusters[0].health_checks[0]: exactly one of http_health_check",
        ),
        (
            "timeout: 1s\ninterval: 1s\nunhealthy_threshold: 1\nhealthy_threshold: 1\ntcp_health_check: {send: {text: zz}}",
            "static_resources.clusters[0].health_checks[0].tcp_health_check.send.text:",
        ),
    ];
    for (check, want) in cases {
        let yaml = Bootstrap::catch_all("c")
            .cluster_raw(&checked_cluster(&[addr], check, ""))
            .build();
        let (code, stderr) = Strait::start_expect_failure(&yaml).await;
        assert_ne!(code, 0);
        assert!(stderr.contains(want), "want {want:?} in:\n{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_an_unchanged_checker_and_stops_a_removed_one() {
    let t = Backend::tcp_health("t").await;
    let other = Backend::echo("other").await;
    let check = format!(
        "{FAST}tcp_health_check:\n  send: {{text: \"70696e67\"}}\n  receive: [{{text: \"706f6e67\"}}]"
    );
    let checked = checked_cluster(&[t.addr()], &check, "");
    let s = start(&[t.addr()], &check, "").await;
    wait_flags(&s, t.addr(), "healthy").await;

    // An unrelated change keeps cluster c's runtime: its unhealthy verdict stands and
    // its checker still brings the host back.
    t.set_healthy(false);
    wait_flags(&s, t.addr(), "/failed_active_hc").await;
    let yaml = Bootstrap::catch_all("c")
        .cluster_raw(&checked)
        .cluster("other", other.addr())
        .build();
    s.rewrite_config(&yaml);
    s.wait_stat("server.config_reload_success", |v| v == 1)
        .await;
    wait_flags(&s, t.addr(), "/failed_active_hc").await;
    t.set_healthy(true);
    wait_flags(&s, t.addr(), "healthy").await;

    // Without health checks, c is a new cluster runtime: its host is healthy, and the
    // old checker is gone (its pings stop; one already on the wire may still land).
    let plain = Bootstrap::catch_all("c").cluster("c", t.addr()).build();
    s.rewrite_config(&plain);
    s.wait_stat("server.config_reload_success", |v| v == 2)
        .await;
    let pings = t.requests();
    // An observation window, not synchronisation: five check intervals.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(t.requests() <= pings + 1, "{} > {pings} + 1", t.requests());
    wait_flags(&s, t.addr(), "healthy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_run_at_no_traffic_interval_until_the_cluster_has_traffic() {
    // Envoy's default: a cluster that never opened a connection for traffic is
    // checked every `no_traffic_interval` (60 s), not every `interval`. Here the
    // first (immediate) check is the only one for a second; after one request
    // opens a connection, checks come every 50 ms.
    let a = Backend::with_health("a").await;
    let check = "timeout: 1s\ninterval: 0.05s\nunhealthy_threshold: 1\nhealthy_threshold: 1\nhttp_health_check: {path: /healthz}";
    let s = start(&[a.addr()], check, "").await;
    s.wait_stat("cluster.c.health_check.attempt", |v| v >= 1)
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(s.stat("cluster.c.health_check.attempt").await, Some(1));
    let r = get(s.main_addr().await, "h", "/", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The host's checker is in its 60 s sleep, which it keeps (as in Envoy). A
    // host added now is checked at once and then every `interval`.
    let b = Backend::with_health("b").await;
    s.rewrite_config(
        &Bootstrap::catch_all("c")
            .cluster_raw(&checked_cluster(&[a.addr(), b.addr()], check, ""))
            .build(),
    );
    s.admin_post("/reload").await;
    s.wait_stat("cluster.c.health_check.attempt", |v| v >= 10)
        .await;
}

/// A STATIC cluster `c` whose endpoints carry these `health_status` values.
fn eds_cluster(endpoints: &[(SocketAddr, &str)], extra: &str) -> String {
    let weighted: Vec<(SocketAddr, u32)> = endpoints.iter().map(|(a, _)| (*a, 1)).collect();
    let mut yaml = cluster_yaml("c", &weighted, false);
    for (addr, status) in endpoints {
        let endpoint = format!(
            "port_value: {}}}\n        load_balancing_weight: 1\n",
            addr.port()
        );
        yaml = yaml.replacen(
            &endpoint,
            &format!("{endpoint}        health_status: {status}\n"),
            1,
        );
    }
    yaml.push_str(extra);
    yaml
}

/// An endpoint's configured `health_status`, as Envoy 1.40 treats it (checked
/// against the real binary): `UNHEALTHY` and `TIMEOUT` hosts are not picked outside
/// panic (`/failed_eds_health`); `DRAINING` hosts are never picked, not even in
/// panic, and do not count towards it (`/eds_status_draining`); `UNKNOWN` is healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_endpoint_health_is_honoured() {
    let backends = [
        Backend::echo("a").await,
        Backend::echo("b").await,
        Backend::echo("c").await,
        Backend::echo("d").await,
        Backend::echo("e").await,
    ];
    let endpoints = [
        (backends[0].addr(), "HEALTHY"),
        (backends[1].addr(), "UNKNOWN"),
        (backends[2].addr(), "UNHEALTHY"),
        (backends[3].addr(), "TIMEOUT"),
        (backends[4].addr(), "DRAINING"),
    ];
    // Two of the four hosts that count are healthy: 50%, not below the default
    // panic threshold.
    let yaml = Bootstrap::catch_all("c")
        .cluster_raw(&eds_cluster(&endpoints, ""))
        .build();
    let s = Strait::start(&yaml).await;
    let addr = s.main_addr().await;
    assert_eq!(backends_seen(addr, 40).await, names(&["a", "b"]));
    let (_, clusters) = s.admin_get("/clusters").await;
    for (i, flags) in [
        "healthy",
        "healthy",
        "/failed_eds_health",
        "/failed_eds_health",
        "/eds_status_draining",
    ]
    .iter()
    .enumerate()
    {
        let line = format!("c::{}::health_flags::{flags}", backends[i].addr());
        assert!(clusters.contains(&line), "want {line} in:\n{clusters}");
    }
    let (_, json) = s.admin_get("/clusters?format=json").await;
    assert!(json.contains("\"DRAINING\""), "{json}");
    assert_eq!(s.stat("cluster.c.membership_total").await, Some(5));
    assert_eq!(s.stat("cluster.c.membership_healthy").await, Some(2));
    drop(s);

    // Above 50%: panic, and every host but the draining one takes traffic.
    let panic = "  common_lb_config: {healthy_panic_threshold: {value: 60}}\n";
    let yaml = Bootstrap::catch_all("c")
        .cluster_raw(&eds_cluster(&endpoints, panic))
        .build();
    let s = Strait::start(&yaml).await;
    let addr = s.main_addr().await;
    assert_eq!(backends_seen(addr, 80).await, names(&["a", "b", "c", "d"]));
    drop(s);

    // DEGRADED needs degraded load balancing, which Strait does not have.
    let endpoints = [(backends[0].addr(), "DEGRADED")];
    let yaml = Bootstrap::catch_all("c")
        .cluster_raw(&eds_cluster(&endpoints, ""))
        .build();
    let (_, stderr) = Strait::start_expect_failure(&yaml).await;
    let want = "static_resources.clusters[0].load_assignment.endpoints[0].lb_endpoints[0].health_status: DEGRADED is not supported";
    assert!(stderr.contains(want), "want {want:?} in:\n{stderr}");
}

/// A host whose operator failed its health checks says so on its answers
/// (`x-envoy-immediate-health-check-fail`, added by Envoy's and Strait's
/// `health_check` filter): the host leaves load balancing at once, before its next
/// check, and comes back once checks pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_immediate_health_check_fail_takes_the_host_out_at_once() {
    let a = Backend::with_health("a").await;
    let b = Backend::with_health("b").await;
    // Two passing checks, 1 s apart, bring a host back: none can between the answer
    // and the look at `/clusters` below.
    let check = "timeout: 1s\ninterval: 1s\nno_traffic_interval: 1s\nunhealthy_threshold: 3\nhealthy_threshold: 2\nhttp_health_check: {path: /healthz}";
    let s = start(&[a.addr(), b.addr()], check, "").await;
    let addr = s.main_addr().await;
    s.wait_stat("cluster.c.health_check.healthy", |v| v == 2)
        .await;
    let plain = get(addr, "h", "/", &[]).await;
    assert_eq!(plain.status, 200);
    let (_, body) = s.admin_get("/clusters").await;
    assert!(!body.contains("/failed_active_hc"), "{body}");

    let failing = [(
        "x-backend-respond-header",
        "x-envoy-immediate-health-check-fail=true",
    )];
    let r = get(addr, "h", "/", &failing).await;
    assert_eq!(r.status, 200);
    let (gone, other) = match r.header("x-backend-name") {
        Some("a") => (a.addr(), b.addr()),
        _ => (b.addr(), a.addr()),
    };
    let (_, body) = s.admin_get("/clusters").await;
    let flagged = |host| format!("c::{host}::health_flags::/failed_active_hc");
    assert!(body.lines().any(|l| l == flagged(gone)), "{body}");
    assert!(!body.lines().any(|l| l == flagged(other)), "{body}");
    assert_eq!(s.stat("cluster.c.membership_healthy").await, Some(1));
    // Its checks still pass: it comes back.
    wait_flags(&s, gone, "healthy").await;
    assert_eq!(backends_seen(addr, 10).await, names(&["a", "b"]));
}
