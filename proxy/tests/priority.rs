//! Priorities in `load_assignment`: traffic stays on priority 0 while it is healthy
//! and fails over to priority 1 when priority 0's hosts fail their health checks.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;

/// Cluster `c`: `p0` at priority 0, `p1` at priority 1, a fast TCP health check.
fn config(p0: SocketAddr, p1: SocketAddr) -> String {
    let cluster = format!(
        "- name: c\n  type: STATIC\n  connect_timeout: 1s\n  load_assignment:\n    cluster_name: c\n    policy: {{overprovisioning_factor: 140}}\n    endpoints:\n    - lb_endpoints:\n      - endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}\n    - priority: 1\n      lb_endpoints:\n      - endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}\n  health_checks:\n  - timeout: 1s\n    interval: 0.1s\n    no_traffic_interval: 0.1s\n    interval_jitter: 0.01s\n    unhealthy_threshold: 1\n    healthy_threshold: 1\n    tcp_health_check: {{}}\n",
        p0.ip(),
        p0.port(),
        p1.ip(),
        p1.port()
    );
    Bootstrap::catch_all("c").cluster_raw(&cluster).build()
}

async fn backends_answering(addr: SocketAddr, n: usize) -> Vec<String> {
    let mut names = Vec::new();
    for i in 0..n {
        let r = get(addr, "h", &format!("/{i}"), &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        names.push(r.header("x-backend-name").unwrap_or("?").to_owned());
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_priority_0_takes_all_the_traffic() {
    let p0 = Backend::echo("p0").await;
    let p1 = Backend::echo("p1").await;
    let s = Strait::start(&config(p0.addr(), p1.addr())).await;
    let addr = s.main_addr().await;
    let names = backends_answering(addr, 30).await;
    assert!(names.iter().all(|n| n == "p0"), "{names:?}");
    assert_eq!(p1.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_fails_over_to_priority_1_when_priority_0_is_down() {
    let p0 = Backend::closed_port();
    let p1 = Backend::echo("p1").await;
    let s = Strait::start(&config(p0, p1.addr())).await;
    let addr = s.main_addr().await;
    // Once P0's host failed its check, every request is P1's.
    let line = format!("c::{p0}::health_flags::/failed_active_hc");
    eventually(Duration::from_secs(10), &line, || async {
        let (_, body) = s.admin_get("/clusters").await;
        body.lines().any(|l| l == line).then_some(())
    })
    .await;
    let names = backends_answering(addr, 30).await;
    assert!(names.iter().all(|n| n == "p1"), "{names:?}");
}

/// `locality_weighted_lb_config`: localities get traffic by weight × availability.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locality_weights_split_the_traffic() {
    let a = Backend::echo("a").await;
    let b = Backend::echo("b").await;
    let ep = |addr: SocketAddr| {
        format!(
            "      - endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}\n",
            addr.ip(),
            addr.port()
        )
    };
    let cluster = format!(
        "- name: c\n  type: STATIC\n  connect_timeout: 1s\n  common_lb_config: {{locality_weighted_lb_config: {{}}}}\n  load_assignment:\n    cluster_name: c\n    endpoints:\n    - locality: {{zone: a}}\n      load_balancing_weight: 3\n      lb_endpoints:\n{}    - locality: {{zone: b}}\n      load_balancing_weight: 1\n      lb_endpoints:\n{}",
        ep(a.addr()),
        ep(b.addr())
    );
    let s = Strait::start(&Bootstrap::catch_all("c").cluster_raw(&cluster).build()).await;
    let addr = s.main_addr().await;
    let names = backends_answering(addr, 400).await;
    let to_a = names.iter().filter(|n| *n == "a").count();
    // 3:1 → 300 of 400 expected; ±40 is over 4 standard deviations (σ ≈ 8.7).
    assert!((260..=340).contains(&to_a), "{to_a} of 400 to locality a");
}
