//! HTTP callouts of proxy-wasm plugins (`dispatch_http_call`) over real sockets:
//! what Envoy's differential test (`wasm_conformance.rs`) cannot compare — timers,
//! cancellation and stats. The `callout` plugin is described in its source.
mod common;
#[path = "../../filters/tests/common/mod.rs"]
mod plugins;

use std::time::Duration;

use common::*;
use tokio::net::TcpListener;

fn config(backend: &Backend, auth: std::net::SocketAddr, hcm: &str) -> String {
    config_with(backend, auth, hcm, "")
}

/// As `config`, with the plugin configuration `configuration`.
fn config_with(
    backend: &Backend,
    auth: std::net::SocketAddr,
    hcm: &str,
    configuration: &str,
) -> String {
    let filter = format!(
        "- name: envoy.filters.http.wasm\n  typed_config:\n    \"@type\": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm\n    config:\n{}",
        common::config::indent(&callout_plugin("callout", configuration), 6)
    );
    let yaml = Bootstrap::catch_all("backend")
        .hcm(hcm)
        .cluster("backend", backend.addr())
        .cluster("auth", auth)
        .build();
    let marker = "          http_filters:\n";
    assert!(yaml.contains(marker));
    yaml.replacen(
        marker,
        &format!("{marker}{}", common::config::indent(&filter, 10)),
        1,
    )
}

/// The `PluginConfig` of the callout plugin (YAML from column 0). Filters and
/// services share the empty vm_id, so they share data.
fn callout_plugin(name: &str, configuration: &str) -> String {
    let module = plugins::plugin_dir().join("strait_testdata_callout.wasm");
    common::config::wasm_plugin(name, "", &module, configuration, false)
}

/// A singleton `envoy.bootstrap.wasm` service running the callout plugin with
/// `configuration` (a `bootstrap_extensions` block, YAML from column 0).
fn singleton_service(configuration: &str) -> String {
    format!(
        "bootstrap_extensions:\n- name: envoy.bootstrap.wasm\n  typed_config:\n    \"@type\": type.googleapis.com/envoy.extensions.wasm.v3.WasmService\n    singleton: true\n    config:\n{}",
        common::config::indent(&callout_plugin("callout-service", configuration), 6)
    )
}

/// Waits until a request's `x-root-call-status` (the root context's last call
/// status, through shared data) reads `want`.
async fn root_call_status(addr: std::net::SocketAddr, want: &str) {
    eventually(
        Duration::from_secs(10),
        "the root context's call answered",
        || async {
            let resp = get(addr, "example.test", "/", &[("x-read-root", "1")]).await;
            (resp.header("x-root-call-status") == Some(want)).then_some(())
        },
    )
    .await;
}

/// A server that accepts connections and never answers, holding them open; it
/// reports how many it saw closed by the peer.
async fn silent_server() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (closed_tx, closed_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let closed = closed_tx.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
                let _ = closed.send(());
            });
        }
    });
    (addr, closed_rx)
}

/// Strait with a 0.3 s `stream_idle_timeout`, whose cluster `auth` never answers
/// (keep the backend and the silent server's receiver alive with it).
async fn silent_auth() -> (
    Backend,
    tokio::sync::mpsc::UnboundedReceiver<()>,
    Strait,
    std::net::SocketAddr,
) {
    let backend = Backend::echo("backend").await;
    let (auth, closed) = silent_server().await;
    let strait = Strait::start(&config(&backend, auth, "stream_idle_timeout: 0.3s")).await;
    let addr = strait.main_addr().await;
    (backend, closed, strait, addr)
}

#[tokio::test]
async fn callout_answers_reach_the_plugin_and_count_in_the_cluster_stats() {
    let backend = Backend::echo("backend").await;
    let auth = Backend::raw_recorder("auth").await;
    let strait = Strait::start(&config(&backend, auth.addr(), "")).await;
    let addr = strait.main_addr().await;
    let resp = get(
        addr,
        "example.test",
        "/",
        &[("x-callout", "auth"), ("x-callout-count", "2")],
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let echo = resp.echo();
    assert_eq!(echo.header("x-callout-status"), Some("200"), "{echo:?}");
    assert_eq!(echo.header("x-callout-answers"), Some("2"), "{echo:?}");
    assert_eq!(auth.requests(), 2);
    // The calls went out as the plugin built them, in HTTP/1.1 origin form.
    let heads = auth.heads();
    assert!(
        heads
            .iter()
            .all(|h| h.starts_with("GET /check HTTP/1.1\r\n")
                && h.to_ascii_lowercase().contains("host: auth.local\r\n")
                && h.contains("x-from-plugin: callout")),
        "{heads:?}"
    );
    strait
        .wait_stat("cluster.auth.upstream_rq_2xx", |n| n == 2)
        .await;
}

#[tokio::test]
async fn a_paused_request_is_bounded_by_the_stream_idle_timeout() {
    // The callout never gets an answer (no timeout on the call): the request waits
    // paused until the connection manager's stream idle timeout answers, 504 as the
    // request came whole (Envoy's `maybeRequestTimeoutCode`); the next request on the
    // proxy is unaffected.
    // Logged and counted as the router's own stream idle timeout (`SI`).
    let backend = Backend::echo("backend").await;
    let (auth, _silent) = silent_server().await;
    let (log, logging) = access_log("%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%");
    let hcm = format!("stream_idle_timeout: 0.3s\n{logging}");
    let strait = Strait::start(&config(&backend, auth, &hcm)).await;
    let addr = strait.main_addr().await;
    let resp = within(
        Duration::from_secs(10),
        "the paused request is answered",
        get(
            addr,
            "example.test",
            "/",
            &[("x-callout", "auth"), ("x-callout-timeout-ms", "0")],
        ),
    )
    .await;
    assert_eq!(resp.status, 504, "{}", resp.text());
    assert_eq!(resp.text(), "stream timeout");
    assert_eq!(first_log_line(&log).await, "504 SI stream_idle_timeout");
    strait
        .wait_stat("http.ingress.downstream_rq_idle_timeout", |v| v == 1)
        .await;
    let resp = get(addr, "example.test", "/", &[]).await;
    assert_eq!(resp.status, 200);
    let _ = std::fs::remove_file(log);
}

/// A service kept across a reload (its config unchanged) calls the clusters of the
/// config published with it; a refused reload changes nothing it calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_service_calls_the_clusters_of_the_published_config() {
    let backend = Backend::echo("backend").await;
    let (a, b) = (Backend::echo("a").await, Backend::echo("b").await);
    let service = singleton_service("tick-call-each");
    let yaml = |auth| format!("{service}{}", config_with(&backend, auth, "", ""));
    let strait = Strait::start(&yaml(a.addr())).await;
    let addr = strait.main_addr().await;
    root_call_status(addr, "200:a").await;

    strait.rewrite_config(&yaml(b.addr()));
    strait
        .wait_stat("server.config_reload_success", |v| v == 1)
        .await;
    root_call_status(addr, "200:b").await;

    // A config pointing `auth` back at `a` that cannot be published (its second
    // listener's port is taken) after its services were synced.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let refused = yaml(a.addr()).replacen(
        "  listeners:\n",
        &format!("  listeners:\n  - name: taken\n    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}\n    filter_chains:\n    - filters:\n      - name: envoy.filters.network.http_connection_manager\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager\n          stat_prefix: taken\n          route_config: {{virtual_hosts: [{{name: t, domains: [\"*\"], routes: [{{match: {{prefix: /}}, direct_response: {{status: 200}}}}]}}]}}\n          http_filters: [{{name: envoy.filters.http.router, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]\n"),
        1,
    );
    assert_ne!(refused, yaml(a.addr()), "the extra listener went in");
    strait.rewrite_config(&refused);
    strait
        .wait_stat("server.config_reload_failure", |v| v == 1)
        .await;
    assert!(
        strait.stderr().contains("cannot bind"),
        "{}",
        strait.stderr()
    );
    let before = a.requests();
    // An observation window, not synchronisation: ten ticks of the service.
    tokio::time::sleep(Duration::from_millis(200)).await;
    root_call_status(addr, "200:b").await;
    assert_eq!(
        a.requests(),
        before,
        "no call went to the refused config's cluster"
    );
}

#[tokio::test]
async fn a_body_held_for_a_callout_is_bounded_by_the_stream_idle_timeout() {
    // The plugin holds the request body for a scan that never answers: the body
    // waits (the head went upstream already, as in Envoy) and the stream idle
    // timeout answers 504, the client having sent it whole (Envoy's
    // `maybeRequestTimeoutCode`).
    let (_backend, _silent, _strait, addr) = silent_auth().await;
    let mut c = Client::connect(addr, Proto::H1).await.expect("connect");
    let req = c.request(
        http::Method::POST,
        "example.test",
        "/upload",
        &[("x-body-scan", "auth")],
        full("card 4111"),
    );
    let resp = within(
        Duration::from_secs(10),
        "the held body is answered",
        c.send(req),
    )
    .await
    .expect("a response");
    assert_eq!(resp.status, 504, "{:?}", resp.body);
    assert_eq!(&resp.body[..], b"stream timeout");
    let resp = get(addr, "example.test", "/", &[]).await;
    assert_eq!(resp.status, 200);
}

#[tokio::test]
async fn a_response_body_held_for_a_callout_is_bounded_by_the_stream_idle_timeout() {
    // The same for the response body: its head went out, so the timeout can only
    // cut the body short (the connection closes), within the idle timeout.
    let (_backend, _silent, _strait, addr) = silent_auth().await;
    let (status, body) = within(
        Duration::from_secs(10),
        "the held response body ends",
        common::client::request_headers(addr, "/download", &[("x-body-scan-response", "auth")]),
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.is_err(), "the body is cut short: {body:?}");
    let resp = get(addr, "example.test", "/", &[]).await;
    assert_eq!(resp.status, 200);
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_its_callouts() {
    // Envoy cancels a context's calls when the context goes; so does Strait: the
    // callout's upstream connection is closed once the client gives up.
    let backend = Backend::echo("backend").await;
    let (auth, mut closed) = silent_server().await;
    let strait = Strait::start(&config(&backend, auth, "")).await;
    let addr = strait.main_addr().await;
    let gone = tokio::time::timeout(
        Duration::from_millis(300),
        get(
            addr,
            "example.test",
            "/",
            &[("x-callout", "auth"), ("x-callout-timeout-ms", "0")],
        ),
    )
    .await;
    assert!(gone.is_err(), "the request must still be waiting");
    within(
        Duration::from_secs(10),
        "the callout connection is closed",
        closed.recv(),
    )
    .await;
    let resp = get(addr, "example.test", "/", &[]).await;
    assert_eq!(resp.status, 200);
    assert_eq!(strait.stat("wasm.callout.vm_failed").await.unwrap_or(0), 0);
}

#[tokio::test]
async fn a_root_context_calls_out_from_its_tick() {
    // With `tick-call`, each worker's root context calls `auth` from its first
    // tick; the answer goes back to the root context, which stores the status in
    // shared data for the streams to read.
    let backend = Backend::echo("backend").await;
    let auth = Backend::echo("auth").await;
    let strait = Strait::start(&config_with(&backend, auth.addr(), "", "tick-call")).await;
    let addr = strait.main_addr().await;
    root_call_status(addr, "200").await;
    assert!(auth.requests() >= 1);
    assert_eq!(strait.stat("wasm.callout.vm_failed").await.unwrap_or(0), 0);
}

#[tokio::test]
async fn a_bootstrap_service_calls_out_from_its_tick() {
    // The same plugin as a singleton `envoy.bootstrap.wasm` service with `tick-call`
    // (the HTTP filter's instances do not call): the service's root context calls
    // `auth` through the main thread's pools, gets the answer on its own thread and
    // stores the status in shared data (same vm_id), which the filter reads.
    let backend = Backend::echo("backend").await;
    let auth = Backend::echo("auth").await;
    let service = singleton_service("tick-call");
    let yaml = format!("{service}{}", config_with(&backend, auth.addr(), "", ""));
    let strait = Strait::start(&yaml).await;
    let addr = strait.main_addr().await;
    root_call_status(addr, "200").await;
    assert_eq!(auth.requests(), 1, "one call, from the singleton service");
    assert_eq!(
        strait
            .stat("wasm.callout-service.vm_failed")
            .await
            .unwrap_or(0),
        0
    );
}

/// A gRPC server over h2c that answers `strait.test.Echo/Chat` by echoing the whole
/// request stream (its frames, once the client half-closed), then `grpc-status: 0`.
async fn raw_grpc_echo() -> std::net::SocketAddr {
    use http_body_util::BodyExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = hyper::service::service_fn(
                |req: hyper::Request<hyper::body::Incoming>| async move {
                    let frames = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let mut trailers = hyper::HeaderMap::new();
                    trailers.insert("grpc-status", hyper::header::HeaderValue::from_static("0"));
                    let body = http_body_util::StreamBody::new(futures_util::stream::iter([
                        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(frames)),
                        Ok(hyper::body::Frame::trailers(trailers)),
                    ]));
                    let mut resp = hyper::Response::new(body);
                    resp.headers_mut().insert(
                        "content-type",
                        hyper::header::HeaderValue::from_static("application/grpc"),
                    );
                    Ok::<_, std::convert::Infallible>(resp)
                },
            );
            tokio::spawn(async move {
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_bootstrap_service_streams_grpc_from_its_tick() {
    // The service opens a gRPC stream to `grpc` from its first tick, sends two
    // messages (half-closing with the second) and records what came back at the close.
    let backend = Backend::echo("backend").await;
    let grpc = raw_grpc_echo().await;
    let service = singleton_service("tick-stream");
    let filter = format!(
        "- name: envoy.filters.http.wasm\n  typed_config:\n    \"@type\": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm\n    config:\n{}",
        common::config::indent(&callout_plugin("callout", ""), 6)
    );
    let yaml = Bootstrap::catch_all("backend")
        .cluster("backend", backend.addr())
        .h2_cluster("grpc", grpc)
        .build();
    let marker = "          http_filters:\n";
    let yaml = yaml.replacen(
        marker,
        &format!("{marker}{}", common::config::indent(&filter, 10)),
        1,
    );
    let strait = Strait::start(&format!("{service}{yaml}")).await;
    let addr = strait.main_addr().await;
    eventually(
        Duration::from_secs(10),
        "the service's stream closed",
        || async {
            let resp = get(addr, "example.test", "/", &[("x-read-root", "1")]).await;
            (resp.header("x-root-stream") == Some("one,two;0")).then_some(())
        },
    )
    .await;
}
