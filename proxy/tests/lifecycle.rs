//! The process over time: config reloads (file change, SIGHUP, bad files), graceful
//! drain on SIGTERM, refusal of invalid configs at startup, quick mode.

mod common;

use std::time::Duration;

use common::*;

fn two_routes(second: bool) -> &'static str {
    if second {
        r#"
- name: v
  domains: ["*"]
  routes:
  - match: {prefix: /a}
    route: {cluster: a}
  - match: {prefix: /b}
    route: {cluster: b}
"#
    } else {
        r#"
- name: v
  domains: ["*"]
  routes:
  - match: {prefix: /a}
    route: {cluster: a}
"#
    }
}

fn config(a: &Backend, b: &Backend, second: bool) -> String {
    Bootstrap::new(two_routes(second))
        .cluster("a", a.addr())
        .cluster("b", b.addr())
        .build()
}

/// Starts a request that the backend holds for `delay_ms`, and waits until the
/// backend has it, so it is in flight for whatever the test does next.
async fn in_flight(
    addr: std::net::SocketAddr,
    backend: &Backend,
    delay_ms: u64,
) -> tokio::task::JoinHandle<Resp> {
    in_flight_over(addr, backend, delay_ms, false).await
}

/// As [`in_flight`], over HTTP/1.1 or h2c.
async fn in_flight_over(
    addr: std::net::SocketAddr,
    backend: &Backend,
    delay_ms: u64,
    h2: bool,
) -> tokio::task::JoinHandle<Resp> {
    let before = backend.requests();
    let delay = delay_ms.to_string();
    let task = tokio::spawn(async move {
        let headers = [("x-backend-delay-ms", delay.as_str())];
        match h2 {
            true => get_h2(addr, "h", "/a/slow", &headers).await,
            false => get(addr, "h", "/a/slow", &headers).await,
        }
    });
    eventually(
        Duration::from_secs(10),
        "the slow request to reach the backend",
        || async { (backend.requests() > before).then_some(()) },
    )
    .await;
    task
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_with_a_good_file_adds_routes_and_keeps_requests_in_flight() {
    let (a, b) = (Backend::echo("a").await, Backend::echo("b").await);
    let s = Strait::start(&config(&a, &b, false)).await;
    let addr = s.main_addr().await;
    assert_eq!(get(addr, "h", "/b", &[]).await.status, 404);
    let slow = in_flight(addr, &a, 1500).await;

    s.rewrite_config(&config(&a, &b, true));
    s.wait_stat("server.config_reload_success", |v| v >= 1)
        .await;
    let r = get(addr, "h", "/b", &[]).await;
    assert_eq!(
        r.header("x-backend-name"),
        Some("b"),
        "the new route serves"
    );
    assert_eq!(
        s.main_addr().await,
        addr,
        "the listener keeps its port across the reload"
    );

    let r = within(Duration::from_secs(10), "the in-flight request", slow)
        .await
        .unwrap();
    assert_eq!(
        r.status, 200,
        "a request in flight during the reload completes"
    );
    assert_eq!(s.stat("server.config_reload_failure").await.unwrap_or(0), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_with_a_bad_file_keeps_the_old_config() {
    let (a, b) = (Backend::echo("a").await, Backend::echo("b").await);
    let s = Strait::start(&config(&a, &b, false)).await;
    let addr = s.main_addr().await;
    let mut keepalive = Client::connect(addr, Proto::H1).await.unwrap();
    assert_eq!(keepalive.get("h", "/a", &[]).await.status, 200);

    s.rewrite_config(&config(&a, &b, true).replace("lb_endpoints:", "lb_endpointz:"));
    s.wait_stat("server.config_reload_failure", |v| v >= 1)
        .await;
    assert_eq!(
        get(addr, "h", "/a", &[]).await.status,
        200,
        "the old config serves"
    );
    assert_eq!(
        get(addr, "h", "/b", &[]).await.status,
        404,
        "the bad config's route did not appear"
    );
    assert_eq!(
        keepalive.get("h", "/a", &[]).await.status,
        200,
        "open connections keep working"
    );
    assert_eq!(s.main_addr().await, addr);
    assert!(
        s.stderr().contains("lb_endpointz"),
        "the rejection names the field:\n{}",
        s.stderr()
    );

    // A good file afterwards is accepted.
    s.rewrite_config(&config(&a, &b, true));
    s.wait_stat("server.config_reload_success", |v| v >= 1)
        .await;
    assert_eq!(get(addr, "h", "/b", &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads() {
    let (a, b) = (Backend::echo("a").await, Backend::echo("b").await);
    let s = Strait::start(&config(&a, &b, false)).await;
    let addr = s.main_addr().await;
    s.rewrite_config(&config(&a, &b, true));
    let after_file = s
        .wait_stat("server.config_reload_success", |v| v >= 1)
        .await;
    // Nothing changes on disk now, so only the signal can cause the next reload.
    s.signal(libc::SIGHUP);
    s.wait_stat("server.config_reload_success", |v| v > after_file)
        .await;
    assert_eq!(get(addr, "h", "/b", &[]).await.status, 200);
    assert_eq!(s.main_addr().await, addr);
}

/// Times any thread of `pid` went to sleep and was woken again (voluntary context
/// switches, summed over its threads).
fn wake_ups(pid: u32) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("the proxy's threads") {
        let status =
            std::fs::read_to_string(task.unwrap().path().join("status")).unwrap_or_default();
        total += status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

/// The config's directory is watched for the events that end a change: a rewrite in
/// place (not only a rename over the file) reloads, and a program writing a file of its
/// own next to the config (a log) does not wake the proxy on each write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_place_rewrite_reloads_and_a_neighbours_writes_do_not_wake_the_proxy() {
    use std::io::Write;
    let (a, b) = (Backend::echo("a").await, Backend::echo("b").await);
    let s = Strait::start(&config(&a, &b, false)).await;
    let addr = s.main_addr().await;
    assert_eq!(get(addr, "h", "/b", &[]).await.status, 404);

    // 500 separate writes to a log beside the config, the file kept open. A watch on
    // every modification woke a thread per write (1,153 wake-ups measured); the
    // proxy's own timers wake it ~30 times a second (37 in this loop's ~1.2 s), so
    // the bound grows with the time the loop took on a slow machine.
    let mut log = std::fs::File::create(s.dir().join("neighbour.log")).unwrap();
    let before = wake_ups(s.pid());
    let started = std::time::Instant::now();
    for i in 0..500 {
        writeln!(log, "line {i}").unwrap();
        log.flush().unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let woken = wake_ups(s.pid()) - before;
    let allowed = (100 + (50.0 * started.elapsed().as_secs_f64()) as u64).min(400);
    assert!(
        woken < allowed,
        "500 writes to a neighbouring file woke the proxy {woken} times (allowed {allowed})"
    );
    drop(log);
    assert_eq!(s.stat("server.config_reload_success").await.unwrap_or(0), 0);

    // In place: truncate, write, close.
    std::fs::write(s.config_path(), config(&a, &b, true)).unwrap();
    s.wait_stat("server.config_reload_success", |v| v >= 1)
        .await;
    assert_eq!(get(addr, "h", "/b", &[]).await.status, 200);
}

/// A config reached through symlinks, as Kubernetes mounts a ConfigMap: the path is a
/// link into `..data/`, and an update renames a new `..data` link over the old one, so
/// no event names the config file itself. Both swaps reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_behind_symlinks_reloads_when_a_link_is_swapped() {
    use std::os::unix::fs::symlink;
    let (a, b) = (Backend::echo("a").await, Backend::echo("b").await);
    let s = Strait::start(&config(&a, &b, false)).await;
    let addr = s.main_addr().await;
    assert_eq!(get(addr, "h", "/b", &[]).await.status, 404);
    let dir = s.dir();
    let name = s.config_path().file_name().unwrap().to_owned();
    let version = |v: &str, routes_b: bool| {
        std::fs::create_dir(dir.join(v)).unwrap();
        std::fs::write(dir.join(v).join(&name), config(&a, &b, routes_b)).unwrap();
    };

    // The file becomes a link to `..data/<name>`, `..data` a link to `..v1`.
    version("..v1", true);
    symlink("..v1", dir.join("..data")).unwrap();
    symlink(
        std::path::Path::new("..data").join(&name),
        dir.join("link.tmp"),
    )
    .unwrap();
    std::fs::rename(dir.join("link.tmp"), s.config_path()).unwrap();
    s.wait_stat("server.config_reload_success", |v| v >= 1)
        .await;
    assert_eq!(get(addr, "h", "/b", &[]).await.status, 200);

    // The update: `..v2`, then a new `..data` renamed over the old one.
    version("..v2", false);
    symlink("..v2", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    s.wait_stat("server.config_reload_success", |v| v >= 2)
        .await;
    assert_eq!(get(addr, "h", "/b", &[]).await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits_0() {
    let (a, b) = (Backend::echo("a").await, Backend::echo("b").await);
    let mut s = Strait::start_with(&config(&a, &b, false), &["--drain-time-s", "20"]).await;
    let addr = s.main_addr().await;
    let slow = in_flight(addr, &a, 1500).await;
    let slow_h2 = in_flight_over(addr, &a, 1500, true).await;

    s.signal(libc::SIGTERM);
    eventually(
        Duration::from_secs(10),
        "new connections to be refused",
        || async {
            tokio::net::TcpStream::connect(addr)
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;
    let r = within(Duration::from_secs(10), "the in-flight request", slow)
        .await
        .unwrap();
    assert_eq!(
        r.status, 200,
        "the in-flight request completes during the drain"
    );
    // HTTP/2: GOAWAY went out, and the stream already open runs to its end.
    let r = within(Duration::from_secs(10), "the in-flight h2 stream", slow_h2)
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.version),
        (200, http::Version::HTTP_2),
        "the in-flight h2 stream completes during the drain"
    );
    let status = s
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("strait exits after draining");
    assert!(status.success(), "exit status {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_configs_at_startup_exit_non_zero_naming_the_field() {
    let b = Backend::echo("b").await;
    let good = Bootstrap::catch_all("b").cluster("b", b.addr()).build();
    let cases = [
        (
            "unknown field",
            good.replace(
                "connect_timeout: 1s",
                "connect_timeout: 1s\n    bogus_field: 1",
            ),
            vec!["bogus_field", "clusters"],
        ),
        (
            "CLUSTER_PROVIDED",
            good.replace(
                "type: STATIC",
                "type: STATIC\n    lb_policy: CLUSTER_PROVIDED",
            ),
            vec!["lb_policy", "CLUSTER_PROVIDED"],
        ),
        (
            "route to an undefined cluster",
            good.replace("cluster: b}", "cluster: missing}"),
            vec!["missing"],
        ),
        (
            "not YAML",
            "static_resources: [unclosed".to_owned(),
            vec!["line 1"],
        ),
    ];
    let mut failures = Vec::new();
    for (name, yaml, needles) in &cases {
        let (code, stderr) = Strait::start_expect_failure(yaml).await;
        if code == 0 {
            failures.push(format!("{name}: exit code 0"));
        }
        for needle in needles {
            if !stderr.contains(needle) {
                failures.push(format!("{name}: stderr lacks {needle:?}:\n{stderr}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_mode_checks_a_config_and_binds_nothing() {
    // A port in use by someone else: validating must not try to bind it.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let good = Bootstrap::catch_all("b")
        .cluster("b", "127.0.0.1:1".parse().expect("addr"))
        .build()
        .replacen("port_value: 0", &format!("port_value: {port}"), 1);
    assert!(good.contains(&format!("port_value: {port}")));
    let (code, stdout, stderr) = Strait::validate(&good).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.starts_with("configuration '") && stdout.trim_end().ends_with("' OK"),
        "{stdout}"
    );
    let bad = good.replace("cluster: b}", "cluster: missing}");
    let (code, stdout, stderr) = Strait::validate(&bad).await;
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stderr.contains("error initializing configuration '"),
        "{stderr}"
    );
    assert!(stderr.contains("missing"), "{stderr}");
    assert!(!stdout.contains("OK"), "{stdout}");
    // An access log a start could not open fails validation, naming the field; one
    // that can be created is not created.
    let (path, hcm) = access_log("%RESPONSE_CODE%");
    let with_log = |hcm: &str| {
        Bootstrap::catch_all("b")
            .cluster("b", "127.0.0.1:1".parse().expect("addr"))
            .hcm(hcm)
            .build()
    };
    let (code, _, stderr) = Strait::validate(&with_log(&hcm)).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(!path.exists(), "validation created {}", path.display());
    let nowhere = hcm.replace(
        &path.display().to_string(),
        "/nonexistent-strait-dir/access.log",
    );
    let (code, _, stderr) = Strait::validate(&with_log(&nowhere)).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("access_log[0]: cannot open /nonexistent-strait-dir/access.log"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_mode_proxies_everything_to_the_upstream() {
    let b = Backend::echo("b").await;
    let (_s, addr) = Strait::start_quick(&b.addr().to_string()).await;
    let r = get(addr, "anything.test", "/any/path?x=1", &[]).await;
    assert_eq!(r.status, 200);
    let e = r.echo();
    assert_eq!(
        (e.path.as_str(), e.host.as_str()),
        ("/any/path?x=1", "anything.test")
    );
    assert_eq!(get_h2(addr, "h", "/", &[]).await.status, 200);
}

fn direct_listener(name: &str) -> String {
    format!(
        r#"
  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          route_config:
            virtual_hosts:
            - name: v
              domains: ["*"]
              routes:
              - match: {{prefix: /}}
                direct_response: {{status: 200, body: {{inline_string: {name}}}}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#
    )
}

/// Regression: listeners were keyed by configured address, so two listeners both on
/// 127.0.0.1:0 served the first one's routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_listeners_on_port_0_keep_their_own_config() {
    let yaml = format!(
        "admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}}}\nstatic_resources:\n  listeners:{}{}",
        direct_listener("one"),
        direct_listener("two")
    );
    let s = Strait::start(&yaml).await;
    let (one, two) = (s.addr("one").await, s.addr("two").await);
    assert_ne!(one, two);
    assert_eq!(get(one, "h", "/", &[]).await.text(), "one");
    assert_eq!(get(two, "h", "/", &[]).await.text(), "two");
}

/// `THP_enabled` from the process's status: 0 once it disabled transparent huge pages.
fn thp_enabled(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .expect("the kernel reports THP_enabled (Linux 5.0+)")
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transparent_huge_pages_are_off_unless_asked_for() {
    let b = Backend::echo("b").await;
    let config = Bootstrap::catch_all("b").cluster("b", b.addr()).build();
    let s = Strait::start(&config).await;
    assert_eq!(get(s.main_addr().await, "h", "/", &[]).await.status, 200);
    assert_eq!(
        thp_enabled(s.pid()),
        "0",
        "idle RSS is not held in 2 MiB pages"
    );
    let asked = Strait::start_with_env(&config, &[], &[("MIMALLOC_ALLOW_THP", "1")]).await;
    assert_eq!(
        thp_enabled(asked.pid()),
        "1",
        "MIMALLOC_ALLOW_THP=1 keeps them"
    );
}

/// A reload that removes a listener closes that listener's connections, as Envoy
/// drains them: keep-alive clients do not go on reaching a listener the config no
/// longer has. The other listeners' connections are untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_listeners_connections_close() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let yaml = |second: bool| {
        let mut yaml = format!(
            "admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}}}\nstatic_resources:\n  listeners:{}",
            direct_listener("one")
        );
        if second {
            yaml.push_str(&direct_listener("two"));
        }
        yaml
    };
    let s = Strait::start(&yaml(true)).await;
    let (one, two) = (s.addr("one").await, s.addr("two").await);
    async fn exchange(stream: &mut tokio::net::TcpStream) -> String {
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = within(Duration::from_secs(5), "an answer", stream.read(&mut buf))
            .await
            .unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
    let mut kept = tokio::net::TcpStream::connect(one).await.unwrap();
    assert!(exchange(&mut kept).await.ends_with("one"));
    let mut idle = tokio::net::TcpStream::connect(two).await.unwrap();
    assert!(exchange(&mut idle).await.ends_with("two"));
    let mut h2 = Client::connect(two, Proto::H2).await.unwrap();
    assert_eq!(h2.get("h", "/", &[]).await.status, 200);

    s.rewrite_config(&yaml(false));
    eventually(Duration::from_secs(10), "two to stop accepting", || async {
        tokio::net::TcpStream::connect(two)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    // The idle HTTP/1.1 connection closes.
    let mut byte = [0u8; 1];
    let read = within(Duration::from_secs(5), "the close", idle.read(&mut byte)).await;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // HTTP/2: GOAWAY; no new stream is served.
    eventually(Duration::from_secs(5), "the h2 connection to end", || {
        let req = h2.request(http::Method::GET, "h", "/", &[], empty());
        let mut again = h2.clone_h2();
        async move { again.send(req).await.is_err().then_some(()) }
    })
    .await;
    // The kept listener's connection goes on.
    for _ in 0..2 {
        let answer = exchange(&mut kept).await;
        assert!(answer.ends_with("one"), "{answer}");
        assert!(!answer.to_ascii_lowercase().contains("connection: close"));
    }
}
