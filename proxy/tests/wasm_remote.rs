//! `vm_config.code.remote` and the compile cache, over real sockets: the module is
//! served by a backend of the test kit and fetched through a configured cluster;
//! the proxy's compile cache lives in a directory the test chooses.
mod common;
#[path = "../../filters/tests/common/mod.rs"]
mod plugins;

use std::path::{Path, PathBuf};

use common::*;
use strait_filters::wasm::sha256_hex;

const FILTER_PATH: &str = "http_filters[0].typed_config.config.vm_config.code.remote";

/// An `envoy.filters.http.wasm` entry (YAML list item) whose module is fetched from
/// cluster `plugins`.
fn remote_filter(sha256: &str, configuration: &str, fail_open: bool, retries: u32) -> String {
    format!(
        r#"- name: envoy.filters.http.wasm
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
    config:
      name: remote-headers
      fail_open: {fail_open}
      configuration:
        "@type": type.googleapis.com/google.protobuf.StringValue
        value: "{configuration}"
      vm_config:
        vm_id: vm-remote
        runtime: envoy.wasm.runtime.v8
        code:
          remote:
            http_uri:
              uri: http://plugins.example/modules/headers.wasm
              cluster: plugins
              timeout: 10s
            sha256: {sha256}
            retry_policy:
              num_retries: {retries}
              retry_back_off: {{base_interval: 0.05s, max_interval: 0.2s}}
"#
    )
}

/// A bootstrap routing to `backend`, with cluster `plugins` at `files` and `filter`
/// before the router.
fn config(backend: &Backend, files: &Backend, filter: &str) -> String {
    let yaml = Bootstrap::catch_all("backend")
        .cluster("backend", backend.addr())
        .cluster("plugins", files.addr())
        .build();
    let marker = "          http_filters:\n";
    assert!(yaml.contains(marker));
    yaml.replacen(
        marker,
        &format!("{marker}{}", common::config::indent(filter, 10)),
        1,
    )
}

fn module() -> bytes::Bytes {
    plugins::plugin_code("headers")
}

/// A fresh compile cache directory for one test.
fn cache_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "strait-wasm-remote-{name}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn cache_entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| Some(e.ok()?.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
                .collect()
        })
        .unwrap_or_default()
}

/// The plugin is in the chain: it adds `x-strait-plugin: on` to responses.
async fn assert_plugin_runs(strait: &Strait) {
    let resp = get(strait.main_addr().await, "example.test", "/", &[]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("x-strait-plugin"), Some("on"));
}

#[tokio::test]
async fn remote_module_is_fetched_through_its_cluster_and_runs() {
    let backend = Backend::echo("backend").await;
    let files = Backend::file("plugins", module(), 0).await;
    let filter = remote_filter(&sha256_hex(&module()), "x-strait-plugin: on", false, 1);
    let strait = Strait::start(&config(&backend, &files, &filter)).await;
    assert_plugin_runs(&strait).await;
    assert_eq!(
        files.heads(),
        ["GET /modules/headers.wasm plugins.example"],
        "one GET, Host from the URI"
    );
    let stats = strait.stats().await;
    assert_eq!(stats.get("wasm.remote_load_cache_misses"), Some(&1));
    assert_eq!(stats.get("wasm.remote_load_fetch_successes"), Some(&1));
    assert_eq!(stats.get("wasm.remote_load_fetch_failures"), Some(&0));
    assert_eq!(stats.get("wasm.remote_load_cache_entries"), Some(&1));
    assert_eq!(stats.get("cluster.plugins.upstream_rq_2xx"), Some(&1));
}

#[tokio::test]
async fn fetch_is_retried_after_a_503() {
    let backend = Backend::echo("backend").await;
    let files = Backend::file("plugins", module(), 1).await;
    let filter = remote_filter(&sha256_hex(&module()), "x-strait-plugin: on", false, 1);
    let strait = Strait::start(&config(&backend, &files, &filter)).await;
    assert_eq!(files.requests(), 2, "a 503, then the module");
    assert_plugin_runs(&strait).await;
    assert_eq!(
        strait.stat("wasm.remote_load_fetch_successes").await,
        Some(1)
    );
}

#[tokio::test]
async fn a_wrong_sha256_refuses_startup_naming_the_field() {
    let backend = Backend::echo("backend").await;
    let files = Backend::file("plugins", module(), 0).await;
    let wrong = "0".repeat(64);
    let filter = remote_filter(&wrong, "x-strait-plugin: on", false, 1);
    let (code, stderr) = Strait::start_expect_failure(&config(&backend, &files, &filter)).await;
    assert_ne!(code, 0);
    let want = format!(
        "{FILTER_PATH}.sha256: module sha256 is {}, config says {wrong}",
        sha256_hex(&module())
    );
    assert!(stderr.contains(&want), "want {want} in:\n{stderr}");
    assert_eq!(files.requests(), 2, "a mismatch is retried, as in Envoy");
}

#[tokio::test]
async fn validate_mode_does_not_fetch_a_remote_module() {
    // As Envoy's validation mode, no upstream is called: the module is left
    // unchecked, and stderr says so.
    let backend = Backend::echo("backend").await;
    let files = Backend::file("plugins", module(), 0).await;
    let filter = remote_filter(&"0".repeat(64), "x-strait-plugin: on", false, 1);
    let (code, stdout, stderr) = Strait::validate(&config(&backend, &files, &filter)).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!(
            "{FILTER_PATH}: module http://plugins.example/modules/headers.wasm not fetched"
        )),
        "{stderr}"
    );
    assert_eq!(files.requests(), 0);
}

#[tokio::test]
async fn a_failed_fetch_refuses_startup_unless_fail_open() {
    let backend = Backend::echo("backend").await;
    let files = Backend::file("plugins", module(), u64::MAX).await;
    let sha = sha256_hex(&module());

    let filter = remote_filter(&sha, "x-strait-plugin: on", false, 2);
    let (code, stderr) = Strait::start_expect_failure(&config(&backend, &files, &filter)).await;
    assert_ne!(code, 0);
    let want = format!(
        "{FILTER_PATH}.http_uri: cannot fetch http://plugins.example/modules/headers.wasm \
         through cluster 'plugins' (3 attempts)"
    );
    assert!(stderr.contains(&want), "want {want} in:\n{stderr}");
    assert!(stderr.contains("503"), "{stderr}");
    assert_eq!(files.requests(), 3);

    // fail_open: as Envoy, the proxy starts and leaves the filter out.
    let filter = remote_filter(&sha, "x-strait-plugin: on", true, 0);
    let strait = Strait::start(&config(&backend, &files, &filter)).await;
    let resp = get(strait.main_addr().await, "example.test", "/", &[]).await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("x-strait-plugin"),
        None,
        "the plugin is not in the chain"
    );
    assert_eq!(
        strait.stat("wasm.remote_load_fetch_failures").await,
        Some(1)
    );

    // An unknown cluster is named.
    let filter = remote_filter(&sha, "x-strait-plugin: on", false, 0)
        .replace("cluster: plugins", "cluster: nowhere");
    let (_, stderr) = Strait::start_expect_failure(&config(&backend, &files, &filter)).await;
    let want = format!("{FILTER_PATH}.http_uri.cluster: unknown cluster 'nowhere'");
    assert!(stderr.contains(&want), "want {want} in:\n{stderr}");
}

#[tokio::test]
async fn a_reload_with_a_wrong_sha256_keeps_the_running_plugin() {
    let backend = Backend::echo("backend").await;
    let files = Backend::file("plugins", module(), 0).await;
    let sha = sha256_hex(&module());
    let filter = remote_filter(&sha, "x-strait-plugin: on", false, 0);
    let strait = Strait::start(&config(&backend, &files, &filter)).await;
    assert_plugin_runs(&strait).await;

    let wrong = "f".repeat(64);
    let bad = remote_filter(&wrong, "x-strait-plugin: off", false, 0);
    strait.rewrite_config(&config(&backend, &files, &bad));
    strait
        .wait_stat("server.config_reload_failure", |v| v >= 1)
        .await;
    assert_plugin_runs(&strait).await;
    let stderr = strait.stderr();
    assert!(
        stderr.contains(&format!("module sha256 is {sha}, config says {wrong}")),
        "{stderr}"
    );

    // The same module with another configuration comes from the code cache: no fetch.
    let fetches = files.requests();
    let changed = remote_filter(&sha, "x-strait-plugin: changed", false, 0);
    strait.rewrite_config(&config(&backend, &files, &changed));
    strait
        .wait_stat("server.config_reload_success", |v| v >= 1)
        .await;
    let resp = get(strait.main_addr().await, "example.test", "/", &[]).await;
    assert_eq!(resp.header("x-strait-plugin"), Some("changed"));
    assert_eq!(files.requests(), fetches);
    assert_eq!(strait.stat("wasm.remote_load_cache_hits").await, Some(1));
}

#[tokio::test]
async fn a_restart_loads_the_compiled_module_from_the_cache_dir() {
    let backend = Backend::echo("backend").await;
    let files = Backend::file("plugins", module(), 0).await;
    let filter = remote_filter(&sha256_hex(&module()), "x-strait-plugin: on", false, 0);
    let yaml = config(&backend, &files, &filter);
    let dir = cache_dir("restart");
    let env = [("STRAIT_WASM_CACHE_DIR", dir.to_str().unwrap())];

    let first = Strait::start_with_env(&yaml, &[], &env).await;
    assert_plugin_runs(&first).await;
    let stats = first.stats().await;
    assert_eq!(stats.get("wasm.compile_cache_misses"), Some(&1));
    assert_eq!(stats.get("wasm.compile_cache_hits"), Some(&0));
    drop(first);
    let entries = cache_entries(&dir);
    assert_eq!(entries.len(), 1, "one compiled module in {}", dir.display());
    let name = entries[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(name.starts_with(&sha256_hex(&module())), "{name}");

    let second = Strait::start_with_env(&yaml, &[], &env).await;
    assert_plugin_runs(&second).await;
    let stats = second.stats().await;
    assert_eq!(stats.get("wasm.compile_cache_hits"), Some(&1), "{stats:?}");
    assert_eq!(stats.get("wasm.compile_cache_misses"), Some(&0));
    drop(second);

    // A damaged entry is ignored, the module compiled again and the entry replaced.
    let mut bytes = std::fs::read(&entries[0]).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    std::fs::write(&entries[0], &bytes).unwrap();
    let third = Strait::start_with_env(&yaml, &[], &env).await;
    assert_plugin_runs(&third).await;
    let stats = third.stats().await;
    assert_eq!(
        stats.get("wasm.compile_cache_rejected"),
        Some(&1),
        "{stats:?}"
    );
    assert_eq!(stats.get("wasm.compile_cache_misses"), Some(&1));
    assert_eq!(stats.get("wasm.compile_cache_hits"), Some(&0));
    drop(third);
    assert_ne!(
        std::fs::read(&entries[0]).unwrap(),
        bytes,
        "entry rewritten"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_bootstrap_service_loads_its_module_from_code_remote() {
    // The `service` plugin as a singleton `envoy.bootstrap.wasm`, fetched through
    // the `plugins` cluster and checked against its sha256 before it starts; the
    // `shared_reader` filter shows what it published.
    let service = plugins::plugin_code("service");
    let files = Backend::file("plugins", service.clone(), 0).await;
    let backend = Backend::echo("backend").await;
    let sha = sha256_hex(&service);
    let bootstrap = format!(
        r#"bootstrap_extensions:
- name: envoy.bootstrap.wasm
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.wasm.v3.WasmService
    singleton: true
    config:
      name: remote-service
      configuration:
        "@type": type.googleapis.com/google.protobuf.StringValue
        value: "fetched"
      vm_config:
        vm_id: shared
        runtime: envoy.wasm.runtime.v8
        code:
          remote:
            http_uri: {{uri: "http://plugins.example/modules/service.wasm", cluster: plugins, timeout: 10s}}
            sha256: {sha}
"#
    );
    let reader = format!(
        r#"- name: envoy.filters.http.wasm
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
    config:
      name: reader
      vm_config:
        vm_id: shared
        runtime: envoy.wasm.runtime.v8
        code:
          local:
            filename: {}
"#,
        plugins::plugin_dir()
            .join("strait_testdata_shared_reader.wasm")
            .display()
    );
    let yaml = format!("{bootstrap}{}", config(&backend, &files, &reader));
    let strait = Strait::start(&yaml).await;
    let resp = get(strait.main_addr().await, "example.test", "/", &[]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("x-service-message"), Some("fetched"));
    assert_eq!(files.requests(), 1);

    // A wrong digest refuses the config, naming the service's field.
    let wrong = yaml.replace(&sha, &"0".repeat(64));
    let (code, stderr) = Strait::start_expect_failure(&wrong).await;
    assert_ne!(code, 0);
    assert!(
        stderr.contains("bootstrap_extensions[0].typed_config.config.vm_config.code.remote.sha256: module sha256 is"),
        "{stderr}"
    );
}
