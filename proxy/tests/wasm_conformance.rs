//! proxy-wasm conformance: the same plugins (built from `plugins/testdata` by the
//! public Rust SDK) in the same Envoy YAML, run by Strait and by the real Envoy, must
//! answer a table of requests alike: status, response headers and bodies, and what
//! the backend received. Uses the harness of `conformance.rs` (Envoy from `$ENVOY_BIN`
//! or `~/.cache/strait-envoy-venv/bin/envoy`; without one the test prints `SKIPPED`).

#[path = "conformance/harness.rs"]
mod harness;
#[path = "../../filters/tests/common/mod.rs"]
mod plugins;

use harness::{Case, Req, Want};

const HCM_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

/// One listener named `plugin`, with the plugin before the router and every request
/// routed to the cluster `backend`.
fn listener(plugin: &str, configuration: &str) -> String {
    let module = plugins::plugin_dir().join(format!("strait_testdata_{plugin}.wasm"));
    format!(
        r#"  - name: {plugin}
    address:
      socket_address: {{address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {HCM_TYPE}
          stat_prefix: {plugin}
          http_filters:
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: {plugin}
                root_id: ""
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: "{configuration}"
                vm_config:
                  vm_id: vm-{plugin}
                  runtime: envoy.wasm.runtime.v8
                  code:
                    local:
                      filename: {module}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          route_config:
            name: local
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: /}}
                route: {{cluster: backend}}
"#,
        module = module.display()
    )
}

fn config(plugin: &str, configuration: &str) -> String {
    // One listener per config: Strait tells port-0 listeners apart by address only.
    format!(
        r#"admin:
  address:
    socket_address: {{address: 127.0.0.1, port_value: 0}}
static_resources:
  listeners:
{listener}  clusters:
  - name: backend
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{address: 127.0.0.1, port_value: 1}}
"#,
        listener = listener(plugin, configuration),
    )
}

async fn run(plugin: &str, configuration: &str, cases: Vec<Case>) {
    let dir = std::env::temp_dir().join(format!(
        "strait-wasm-conformance-{plugin}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join(format!("wasm-{plugin}.yaml"));
    std::fs::write(&file, config(plugin, configuration)).expect("write config");
    harness::run_file(&file, &[], cases).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_plugin_behaves_as_in_envoy() {
    // Each case over HTTP/1.1 and h2. Over HTTP/1.1 Envoy shows plugins no `host`
    // header, only `:authority` (the plugin's header count is in `x-wasm-seen`), and
    // after an upstream response it answers the `request.path` property with nothing
    // (the plugin's `x-request-path`) while a local reply still has it: Strait must
    // match both.
    let backend = || Want::Backend(200, &["backend"]);
    let both = |name: &'static str, h2_name: &'static str, req: Req, want: fn() -> Want| {
        [
            Case::new(name, req.clone(), want()),
            Case::new(h2_name, req.h2(), want()),
        ]
    };
    let mut cases = Vec::new();
    cases.extend(both(
        "header added from configuration",
        "h2 header added from configuration",
        Req::get("/hello"),
        backend,
    ));
    cases.extend(both(
        "path rewritten before routing",
        "h2 path rewritten before routing",
        Req::get("/before").header("x-rewrite-path", "/after?x=1"),
        backend,
    ));
    cases.extend(both(
        "request header removed",
        "h2 request header removed",
        Req::get("/").header("x-remove-me", "1"),
        backend,
    ));
    cases.extend(both(
        "local reply",
        "h2 local reply",
        Req::get("/").header("x-block", "yes"),
        || Want::Local(403),
    ));
    run("headers", "x-strait-plugin: on", cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_plugin_behaves_as_in_envoy() {
    // The appended line makes the body not JSON, so the harness compares bodies byte
    // for byte (the backend's echo of the rewritten request body included).
    let cases = vec![
        Case::new(
            "request body rewritten, response body appended",
            Req::post("/upload", "my secret and your secret"),
            Want::Local(200),
        ),
        Case::new(
            "h2 request body rewritten",
            Req::post("/upload", "a secret").h2(),
            Want::Local(200),
        ),
        Case::new("no request body", Req::get("/nothing"), Want::Local(200)),
    ];
    run("body", "", cases).await;
}
