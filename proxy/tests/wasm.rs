//! proxy-wasm plugins in the proxy, over real sockets: configured exactly as Envoy's
//! `envoy.filters.http.wasm`, built from `plugins/testdata` by the public Rust SDK.
mod common;
#[path = "../../filters/tests/common/mod.rs"]
mod plugins;

use std::path::Path;
use std::time::Duration;

use common::*;

/// The `envoy.filters.http.wasm` entry of `http_filters`, as a YAML list item.
pub fn wasm_filter_yaml(name: &str, module: &Path, configuration: &str, fail_open: bool) -> String {
    let plugin = common::config::wasm_plugin(
        name,
        &format!("vm-{name}"),
        module,
        configuration,
        fail_open,
    );
    format!(
        "- name: envoy.filters.http.wasm\n  typed_config:\n    \"@type\": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm\n    config:\n{}",
        common::config::indent(&plugin, 6)
    )
}

fn module(name: &str) -> std::path::PathBuf {
    plugins::plugin_dir().join(format!("strait_testdata_{name}.wasm"))
}

/// `bootstrap` with `filter` (a YAML list item) before the router.
fn with_filter(bootstrap: &Bootstrap, filter: &str) -> String {
    let yaml = bootstrap.build();
    let marker = "          http_filters:\n";
    assert!(yaml.contains(marker));
    yaml.replacen(
        marker,
        &format!("{marker}{}", common::config::indent(filter, 10)),
        1,
    )
}

async fn start(backend: &Backend, plugin: &str, configuration: &str, fail_open: bool) -> Strait {
    let filter = wasm_filter_yaml(plugin, &module(plugin), configuration, fail_open);
    let bootstrap = Bootstrap::catch_all("backend").cluster("backend", backend.addr());
    Strait::start(&with_filter(&bootstrap, &filter)).await
}

#[tokio::test]
async fn headers_plugin_edits_request_and_response_headers() {
    let backend = Backend::echo("backend").await;
    let strait = start(&backend, "headers", "x-strait-plugin: on", false).await;
    let resp = get(strait.main_addr().await, "example.test", "/hello", &[]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("x-strait-plugin"), Some("on"));
    assert_eq!(resp.header("x-upstream-status"), Some("200"));
    let echo = resp.echo();
    assert!(
        echo.header("x-wasm-seen")
            .is_some_and(|v| v.starts_with("GET /hello ")),
        "{echo:?}"
    );
}

#[tokio::test]
async fn plugin_rewrites_path_before_routing() {
    let backend = Backend::echo("backend").await;
    let strait = start(&backend, "headers", "x-strait-plugin: on", false).await;
    let resp = get(
        strait.main_addr().await,
        "example.test",
        "/original",
        &[("x-rewrite-path", "/rewritten?q=1")],
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.echo().path, "/rewritten?q=1");
}

#[tokio::test]
async fn local_reply_never_reaches_the_backend() {
    let backend = Backend::echo("backend").await;
    let strait = start(&backend, "headers", "x-strait-plugin: on", false).await;
    let resp = get(
        strait.main_addr().await,
        "example.test",
        "/",
        &[("x-block", "1")],
    )
    .await;
    assert_eq!(resp.status, 403);
    assert_eq!(resp.header("x-blocked-by"), Some("headers-plugin"));
    assert_eq!(resp.text(), "blocked\n");
    assert_eq!(backend.requests(), 0);
    strait
        .wait_stat("http.ingress.downstream_rq_4xx", |v| v == 1)
        .await;
}

#[tokio::test]
async fn body_plugin_rewrites_request_and_response_bodies() {
    let backend = Backend::echo("backend").await;
    let strait = start(&backend, "body", "", false).await;
    let mut client = Client::connect(strait.main_addr().await, Proto::H1)
        .await
        .expect("connect");
    let req = http::Request::post("/upload")
        .header("host", "example.test")
        .body(full("my secret and your secret"))
        .unwrap();
    let resp = client.send(req).await.expect("response");
    assert_eq!(resp.status, 200, "{}", resp.text());
    let text = resp.text();
    let (json, trailer) = text.split_at(text.find('}').map_or(0, |i| {
        // The echo JSON ends at its last `}`.
        text.rfind('}').unwrap_or(i) + 1
    }));
    assert_eq!(trailer, "-- checked by body plugin\n");
    let echo: Echo = serde_json::from_str(json).expect("echo json");
    assert_eq!(echo.body, "my ****** and your ******");
}

#[tokio::test]
async fn trap_answers_500_and_the_vm_is_restarted() {
    let backend = Backend::echo("backend").await;
    let strait = start(&backend, "trap", "", false).await;
    let addr = strait.main_addr().await;
    for _ in 0..2 {
        let resp = get(addr, "example.test", "/", &[]).await;
        assert_eq!(resp.status, 500);
    }
    assert_eq!(backend.requests(), 0);
    // Each request traps a fresh VM: the first trap did not poison the second.
    strait.wait_stat("wasm.trap.vm_failed", |v| v == 2).await;
    assert!(strait.stderr().contains("trap"), "{}", strait.stderr());
}

#[tokio::test]
async fn trap_with_fail_open_lets_the_request_through() {
    let backend = Backend::echo("backend").await;
    let strait = start(&backend, "trap", "", true).await;
    let resp = get(strait.main_addr().await, "example.test", "/", &[]).await;
    assert_eq!(resp.status, 200);
    assert_eq!(backend.requests(), 1);
    strait.wait_stat("wasm.trap.vm_failed", |v| v == 1).await;
}

#[tokio::test]
async fn bad_module_file_fails_startup_naming_the_field() {
    let dir = std::env::temp_dir().join(format!("strait-wasm-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("not-wasm.wasm");
    std::fs::write(&bad, b"this is not a wasm module").unwrap();
    let filter = wasm_filter_yaml("broken", &bad, "", false);
    let bootstrap = Bootstrap::catch_all("backend").cluster("backend", Backend::closed_port());
    let yaml = with_filter(&bootstrap, &filter);
    let (code, stderr) = Strait::start_expect_failure(&yaml).await;
    assert_ne!(code, 0);
    assert!(
        stderr.contains("http_filters[0].typed_config"),
        "no field path in: {stderr}"
    );
    assert!(stderr.contains("not-wasm.wasm"), "no file in: {stderr}");

    let missing = wasm_filter_yaml("missing", &dir.join("absent.wasm"), "", false);
    let yaml = with_filter(&bootstrap, &missing);
    let (_, stderr) = Strait::start_expect_failure(&yaml).await;
    assert!(
        stderr.contains("vm_config.code.local.filename") && stderr.contains("absent.wasm"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn validate_mode_starts_each_plugin_and_reports_a_refusal() {
    let bootstrap = Bootstrap::catch_all("backend").cluster("backend", Backend::closed_port());
    let good = wasm_filter_yaml("headers", &module("headers"), "x-strait-plugin: on", false);
    let (code, stdout, stderr) = Strait::validate(&with_filter(&bootstrap, &good)).await;
    assert_eq!(
        (code, stdout.trim_end().ends_with("' OK")),
        (0, true),
        "{stdout}{stderr}"
    );
    // The module compiles, but `proxy_on_configure` refuses the configuration (the
    // headers plugin wants `name: value`): a start would fail, so validation does.
    let refused = wasm_filter_yaml("headers", &module("headers"), "no colon here", false);
    let (code, stdout, stderr) = Strait::validate(&with_filter(&bootstrap, &refused)).await;
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stderr.contains("http_filters[0].typed_config")
            && stderr.contains("strait_testdata_headers.wasm"),
        "{stderr}"
    );
}

#[tokio::test]
async fn reload_with_a_bad_plugin_keeps_the_old_one() {
    let backend = Backend::echo("backend").await;
    let strait = start(&backend, "headers", "x-strait-plugin: v1", false).await;
    let addr = strait.main_addr().await;
    let bootstrap = Bootstrap::catch_all("backend").cluster("backend", backend.addr());

    // A module that does not compile: rejected, v1 keeps serving.
    let bad = strait.dir().join("bad.wasm");
    std::fs::write(&bad, b"\0asm garbage").unwrap();
    strait.rewrite_config(&with_filter(
        &bootstrap,
        &wasm_filter_yaml("headers", &bad, "x-strait-plugin: bad", false),
    ));
    eventually(
        Duration::from_secs(10),
        "the reload to be rejected",
        || async { strait.stderr().contains("config rejected").then_some(()) },
    )
    .await;
    let resp = get(addr, "example.test", "/", &[]).await;
    assert_eq!(resp.header("x-strait-plugin"), Some("v1"));

    // A good new configuration: new streams get the new plugin.
    strait.rewrite_config(&with_filter(
        &bootstrap,
        &wasm_filter_yaml("headers", &module("headers"), "x-strait-plugin: v2", false),
    ));
    eventually(
        Duration::from_secs(10),
        "the new plugin to serve",
        || async {
            let resp = get(addr, "example.test", "/", &[]).await;
            (resp.header("x-strait-plugin") == Some("v2")).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn plugin_metrics_are_exported_under_envoys_names() {
    let backend = Backend::echo("backend").await;
    let strait = start(&backend, "headers", "x-strait-plugin: on", false).await;
    let addr = strait.main_addr().await;
    for _ in 0..2 {
        assert_eq!(get(addr, "example.test", "/", &[]).await.status, 200);
    }
    // As Envoy: `wasmcustom.<name>` in /stats, the bare name in Prometheus.
    strait
        .wait_stat("wasmcustom.headers_requests_total", |v| v == 2)
        .await;
    let (status, prometheus) = strait.admin_get("/stats/prometheus").await;
    assert_eq!(status, 200);
    assert!(
        prometheus.contains("# TYPE headers_requests_total counter\nheaders_requests_total 2\n"),
        "{prometheus}"
    );
}

#[tokio::test]
async fn tick_plugin_ticks_on_its_worker() {
    let backend = Backend::echo("backend").await;
    let strait = start(&backend, "tick", "", false).await;
    // A worker creates the VM, and its tick task, with the first stream.
    let resp = get(strait.main_addr().await, "example.test", "/", &[]).await;
    assert_eq!(resp.status, 200);
    // The plugin asks for 10 ms ticks: many within the wait.
    strait
        .wait_stat("wasmcustom.tick_plugin_ticks", |v| v >= 5)
        .await;
}

/// A plugin reading `xds.cluster_name` before the router runs sees the cluster the
/// router then takes, also for weighted clusters: both use the stream's one random
/// value (Envoy picks once, when it routes, before its filters).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weighted_pick_is_the_cluster_plugins_read_before_routing() {
    let (a, b) = (Backend::echo("a").await, Backend::echo("b").await);
    let bootstrap = Bootstrap::new(
        "- name: default\n  domains: [\"*\"]\n  routes:\n  - match: {prefix: /}\n    route:\n      weighted_clusters:\n        clusters: [{name: a, weight: 50}, {name: b, weight: 50}]\n",
    )
    .cluster("a", a.addr())
    .cluster("b", b.addr());
    let filter = wasm_filter_yaml("props", &module("props"), "", false);
    let s = Strait::start(&with_filter(&bootstrap, &filter)).await;
    let addr = s.main_addr().await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let r = get(addr, "h", "/", &[("x-props", "xds/cluster_name")]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let backend = r.header("x-backend-name").unwrap_or_default().to_owned();
        let read = r.echo().headers["x-prop-xds.cluster_name"].clone();
        assert_eq!(read, format!("s:{backend}"));
        seen.insert(backend);
    }
    assert_eq!(seen.len(), 2, "both clusters picked: {seen:?}");
}

/// A client that leaves before its answer: the plugin's `on_log` reads what Envoy
/// 1.40's does (checked by hand with this plugin), `response.code_details`
/// `downstream_remote_disconnect`, the `DC` bit (0x4000) in `response.flags`, and no
/// `response.code`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_log_sees_a_client_that_left() {
    let backend = Backend::echo("backend").await;
    let strait = start(&backend, "props", "", false).await;
    let addr = strait.main_addr().await;
    let mut c = RawConn::connect(addr).await;
    c.write(
        b"GET /slow HTTP/1.1\r\nHost: h\r\nx-backend-delay-ms: 2000\r\n\
          x-props-at-log: response/code_details,response/flags,response/code\r\n\r\n",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(c);
    let logged = eventually(Duration::from_secs(5), "on_log's values", || async {
        let r = get(addr, "h", "/", &[("x-props-log", "1")]).await;
        let log = r.echo().headers.get("x-props-log").cloned()?;
        (log != "none").then_some(log)
    })
    .await;
    assert_eq!(
        logged,
        "response.code_details=s:downstream_remote_disconnect;response.flags=h:0040000000000000;\
         response.code=none"
    );
}

/// `proxy_close_stream` on an HTTP stream resets that stream and nothing else, as
/// Envoy does: no response; HTTP/1.1 closes the connection, h2 sends RST_STREAM and
/// the connection's other streams carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_resets_its_stream_and_only_that_stream() {
    let backend = Backend::echo("backend").await;
    let strait = start(&backend, "headers", "x-strait-plugin: on", false).await;
    let addr = strait.main_addr().await;

    let ask = |close: &str| format!("GET / HTTP/1.1\r\nHost: h\r\nx-close: {close}\r\n\r\n");
    let (out, closed) = send_raw_until_close(addr, ask("request").as_bytes()).await;
    assert!(
        closed && out.is_empty(),
        "closed with nothing sent: {out:?}"
    );
    assert_eq!(backend.requests(), 0, "reset before routing");
    let (out, closed) = send_raw_until_close(addr, ask("response").as_bytes()).await;
    assert!(
        closed && out.is_empty(),
        "closed with nothing sent: {out:?}"
    );
    assert_eq!(backend.requests(), 1, "reset after the upstream answered");

    let mut c = Client::connect(addr, Proto::H2).await.expect("connect");
    let mut other = c.clone_h2();
    for close in ["request", "response"] {
        let reset = c.request(http::Method::GET, "h", "/", &[("x-close", close)], empty());
        let fine = other.request(http::Method::GET, "h", "/", &[], empty());
        let (reset, fine) = tokio::join!(c.send(reset), other.send(fine));
        let error = reset.expect_err("the reset stream has no response");
        let reason = error
            .chain()
            .find_map(|e| e.downcast_ref::<hyper::Error>())
            .and_then(|e| std::error::Error::source(e))
            .and_then(|e| e.downcast_ref::<h2::Error>())
            .and_then(h2::Error::reason);
        assert!(
            reason.is_some(),
            "a RST_STREAM, not a closed connection: {error:#}"
        );
        assert_eq!(fine.expect("the other stream is answered").status, 200);
    }
    assert_eq!(
        c.get("h", "/", &[]).await.status,
        200,
        "the connection lives on"
    );
}
