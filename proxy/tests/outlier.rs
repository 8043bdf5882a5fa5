//! Outlier detection: consecutive 5xx (and connect failures) eject a host, ejected
//! hosts get no traffic, the max-ejection-percent cap, return after the ejection
//! time, config errors.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;

/// Cluster `c` over `endpoints` with `outlier_detection` set to `od` (a flow map).
async fn start(endpoints: &[SocketAddr], od: &str) -> Strait {
    let weighted: Vec<(SocketAddr, u32)> = endpoints.iter().map(|a| (*a, 1)).collect();
    let mut yaml = cluster_yaml("c", &weighted, false);
    yaml.push_str(&format!("  outlier_detection: {od}\n"));
    let yaml = Bootstrap::catch_all("c").cluster_raw(&yaml).build();
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

/// Sends requests until `stat` satisfies `ok`, with a deadline.
async fn drive_until(s: &Strait, addr: SocketAddr, stat: &str, ok: impl Fn(i64) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if s.stat(stat).await.is_some_and(&ok) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{stat} never held");
        let _ = get(addr, "h", "/", &[]).await;
    }
}

const OD: &str =
    "{consecutive_5xx: 3, interval: 0.2s, base_ejection_time: 0.5s, max_ejection_percent: 50}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_5xx_ejects_a_host_until_its_time_is_up() {
    let good = Backend::echo("good").await;
    let bad = Backend::flaky("bad", u64::MAX, Misbehave::Status(503)).await;
    let s = start(&[good.addr(), bad.addr()], OD).await;
    let addr = s.main_addr().await;
    const ACTIVE: &str = "cluster.c.outlier_detection.ejections_active";
    const ENFORCED: &str = "cluster.c.outlier_detection.ejections_enforced_total";
    assert_eq!(s.stat(ACTIVE).await, Some(0));

    // While the bad host stays ejected (the same ejection before and after), every
    // request goes to the good one. An ejection may end mid-window on a slow machine;
    // then drive another (longer) one and look again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never saw a whole window"
        );
        drive_until(&s, addr, ACTIVE, |v| v == 1).await;
        let enforced = s.stat(ENFORCED).await.unwrap();
        let bad_before = bad.requests();
        let mut seen = BTreeSet::new();
        let mut statuses = BTreeSet::new();
        for _ in 0..10 {
            let r = get(addr, "h", "/", &[]).await;
            statuses.insert(r.status);
            seen.insert(r.header("x-backend-name").unwrap_or_default().to_owned());
        }
        let held = s.stat(ACTIVE).await == Some(1) && s.stat(ENFORCED).await == Some(enforced);
        if held {
            assert_eq!(statuses, BTreeSet::from([200]));
            assert_eq!(seen, BTreeSet::from(["good".to_owned()]));
            assert_eq!(bad.requests(), bad_before);
            break;
        }
    }
    let (_, clusters) = s.admin_get("/clusters").await;
    assert!(
        clusters.contains(&format!(
            "c::{}::health_flags::/failed_outlier_check",
            bad.addr()
        )) || s.stat(ACTIVE).await == Some(0),
        "{clusters}"
    );
    for stat in [
        "ejections_total",
        "ejections_consecutive_5xx",
        "ejections_enforced_consecutive_5xx",
    ] {
        let v = s.stat(&format!("cluster.c.outlier_detection.{stat}")).await;
        assert!(v.is_some_and(|v| v >= 1), "{stat}: {v:?}");
    }
    // Gateway failures are detected but not enforced by default.
    assert_eq!(
        s.stat("cluster.c.outlier_detection.ejections_enforced_consecutive_gateway_failure")
            .await,
        Some(0)
    );
    assert_eq!(
        s.stat("cluster.c.outlier_detection.ejections_overflow")
            .await,
        Some(0)
    );

    // No more traffic: the interval task brings the host back after its time.
    s.wait_stat(ACTIVE, |v| v == 0).await;
    wait_flags(&s, bad.addr(), "healthy").await;
    wait_flags(&s, good.addr(), "healthy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_ejection_percent_caps_ejections() {
    let a = Backend::flaky("a", u64::MAX, Misbehave::Status(500)).await;
    let b = Backend::flaky("b", u64::MAX, Misbehave::Status(500)).await;
    let od =
        "{consecutive_5xx: 2, interval: 0.2s, base_ejection_time: 30s, max_ejection_percent: 50}";
    let s = start(&[a.addr(), b.addr()], od).await;
    let addr = s.main_addr().await;
    drive_until(
        &s,
        addr,
        "cluster.c.outlier_detection.ejections_overflow",
        |v| v >= 1,
    )
    .await;
    assert_eq!(
        s.stat("cluster.c.outlier_detection.ejections_active").await,
        Some(1)
    );
    assert_eq!(
        s.stat("cluster.c.outlier_detection.ejections_enforced_total")
            .await,
        Some(1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_count_as_5xx() {
    let good = Backend::echo("good").await;
    let closed = Backend::closed_port();
    let od = "{consecutive_5xx: 2, interval: 0.2s, base_ejection_time: 30s}";
    let s = start(&[good.addr(), closed], od).await;
    let addr = s.main_addr().await;
    drive_until(
        &s,
        addr,
        "cluster.c.outlier_detection.ejections_active",
        |v| v == 1,
    )
    .await;
    wait_flags(&s, closed, "/failed_outlier_check").await;
    for _ in 0..6 {
        let r = get(addr, "h", "/", &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-backend-name"), Some("good"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_fields_are_refused_with_their_path() {
    let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let prefix = "static_resources.clusters[0].outlier_detection";
    let cases = [
        (
            "{enforcing_local_origin_success_rate: 105}",
            format!("{prefix}.enforcing_local_origin_success_rate: 105 is not a percentage"),
        ),
        (
            "{max_ejection_time_jitter: 1s}",
            format!(
                "{prefix}.max_ejection_time_jitter: max_ejection_time_jitter is not supported yet"
            ),
        ),
        (
            "{failure_percentage_threshold: 185}",
            format!("{prefix}.failure_percentage_threshold: 185 is not a percentage"),
        ),
        (
            "{max_ejection_percent: 101}",
            format!("{prefix}.max_ejection_percent: 101 is not a percentage"),
        ),
    ];
    for (od, want) in cases {
        let mut yaml = cluster_yaml("c", &[(addr, 1)], false);
        yaml.push_str(&format!("  outlier_detection: {od}\n"));
        let yaml = Bootstrap::catch_all("c").cluster_raw(&yaml).build();
        let (code, stderr) = Strait::start_expect_failure(&yaml).await;
        assert_ne!(code, 0);
        assert!(stderr.contains(&want), "want {want:?} in:\n{stderr}");
    }
}

/// The success-rate detector: each interval, over hosts with enough requests, a host
/// whose success rate is below mean − stdev_factor/1000 × stdev is ejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_rate_ejects_the_host_far_below_the_others() {
    let good1 = Backend::echo("good1").await;
    let good2 = Backend::echo("good2").await;
    let bad = Backend::flaky("bad", u64::MAX, Misbehave::Status(500)).await;
    let od = "{consecutive_5xx: 100000, consecutive_gateway_failure: 100000, interval: 0.3s, \
              base_ejection_time: 30s, max_ejection_percent: 50, success_rate_minimum_hosts: 3, \
              success_rate_request_volume: 5, success_rate_stdev_factor: 1000}";
    let s = start(&[good1.addr(), good2.addr(), bad.addr()], od).await;
    let addr = s.main_addr().await;
    drive_until(
        &s,
        addr,
        "cluster.c.outlier_detection.ejections_enforced_success_rate",
        |v| v >= 1,
    )
    .await;
    wait_flags(&s, bad.addr(), "/failed_outlier_check").await;
    wait_flags(&s, good1.addr(), "healthy").await;
    assert_eq!(
        s.stat("cluster.c.outlier_detection.ejections_enforced_consecutive_5xx")
            .await,
        Some(0)
    );
}

/// The failure-percentage detector (off by default: `enforcing_failure_percentage`
/// 0): a host at or above the threshold is ejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_percentage_ejects_a_host_at_the_threshold() {
    let good = Backend::echo("good").await;
    let bad = Backend::flaky("bad", u64::MAX, Misbehave::Status(503)).await;
    let od = "{consecutive_5xx: 100000, consecutive_gateway_failure: 100000, interval: 0.3s, \
              base_ejection_time: 30s, max_ejection_percent: 50, \
              success_rate_minimum_hosts: 100, failure_percentage_minimum_hosts: 2, \
              failure_percentage_request_volume: 5, failure_percentage_threshold: 90, \
              enforcing_failure_percentage: 100}";
    let s = start(&[good.addr(), bad.addr()], od).await;
    let addr = s.main_addr().await;
    drive_until(
        &s,
        addr,
        "cluster.c.outlier_detection.ejections_enforced_failure_percentage",
        |v| v >= 1,
    )
    .await;
    wait_flags(&s, bad.addr(), "/failed_outlier_check").await;
    wait_flags(&s, good.addr(), "healthy").await;
    assert_eq!(
        s.stat("cluster.c.outlier_detection.ejections_detected_success_rate")
            .await,
        Some(0)
    );
}

/// With `split_external_local_origin_errors`, connect failures count toward
/// `consecutive_local_origin_failure` only, not as 5xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_origin_failures_eject_on_their_own_count_when_split() {
    let good = Backend::echo("good").await;
    let closed = Backend::closed_port();
    let od = "{split_external_local_origin_errors: true, consecutive_local_origin_failure: 2, \
              consecutive_5xx: 100000, interval: 0.2s, base_ejection_time: 30s, \
              max_ejection_percent: 50}";
    let s = start(&[good.addr(), closed], od).await;
    let addr = s.main_addr().await;
    drive_until(
        &s,
        addr,
        "cluster.c.outlier_detection.ejections_enforced_consecutive_local_origin_failure",
        |v| v >= 1,
    )
    .await;
    wait_flags(&s, closed, "/failed_outlier_check").await;
    assert_eq!(
        s.stat("cluster.c.outlier_detection.ejections_detected_consecutive_5xx")
            .await,
        Some(0),
        "local-origin failures are not 5xx when split"
    );
    // Only the good host is left: every request succeeds.
    for _ in 0..5 {
        assert_eq!(get(addr, "h", "/", &[]).await.status, 200);
    }
}

/// With the split, the failure-percentage detector also runs over local-origin
/// outcomes: a host whose connections fail is ejected by it (and counted as such),
/// while the external-origin detectors see none of those failures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_origin_failure_percentage_ejects_when_split() {
    let good = Backend::echo("good").await;
    let closed = Backend::closed_port();
    let od =
        "{split_external_local_origin_errors: true, consecutive_local_origin_failure: 100000, \
              consecutive_5xx: 100000, interval: 0.3s, base_ejection_time: 30s, \
              max_ejection_percent: 50, success_rate_minimum_hosts: 100, \
              failure_percentage_minimum_hosts: 2, failure_percentage_request_volume: 3, \
              failure_percentage_threshold: 90, enforcing_failure_percentage: 100, \
              enforcing_failure_percentage_local_origin: 100}";
    let s = start(&[good.addr(), closed], od).await;
    let addr = s.main_addr().await;
    drive_until(
        &s,
        addr,
        "cluster.c.outlier_detection.ejections_enforced_local_origin_failure_percentage",
        |v| v >= 1,
    )
    .await;
    wait_flags(&s, closed, "/failed_outlier_check").await;
    assert_eq!(
        s.stat("cluster.c.outlier_detection.ejections_detected_failure_percentage")
            .await,
        Some(0),
        "connect failures are not external-origin failures when split"
    );
}
