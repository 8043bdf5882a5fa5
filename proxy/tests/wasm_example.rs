//! `examples/wasm-filter` as its README walks through it: build the plugin for
//! wasm32-wasip1, run Strait with the example's `envoy.yaml` (ports rewritten to 0,
//! the backend to a test one, the module path made absolute), curl, and find the
//! header, the log line and the metric. Also runs the plugin's own unit tests, so
//! neither half of the walk-through can rot.
mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

/// This checkout's `proxy/`, read when the test runs (cargo sets it): a test binary
/// reused from a target dir shared with another checkout must still find this one.
fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}

fn example_dir() -> PathBuf {
    manifest_dir().join("../examples/wasm-filter")
}

/// `cargo <args>` in the example, with its own target dir under ours.
fn cargo(args: &[&str]) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir().join("../target"))
        .join("wasm-filter-example");
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(args)
        .current_dir(example_dir())
        .env("CARGO_TARGET_DIR", &target)
        // Flags meant for the host build must not leak into the wasm build.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .expect("run cargo in examples/wasm-filter");
    assert!(
        status.success(),
        "cargo {args:?} in examples/wasm-filter failed"
    );
    target
}

#[tokio::test]
async fn wasm_filter_example_runs_as_its_readme_says() {
    cargo(&["test", "--quiet"]);
    let target = cargo(&["build", "--target", "wasm32-wasip1", "--release", "--quiet"]);
    let module = target.join("wasm32-wasip1/release/wasm_filter_example.wasm");

    let backend = Backend::echo("backend").await;
    let yaml = std::fs::read_to_string(example_dir().join("envoy.yaml")).expect("envoy.yaml");
    let rewrites = [
        ("port_value: 9901", "port_value: 0".to_string()),
        ("port_value: 10000", "port_value: 0".to_string()),
        (
            "port_value: 8080",
            format!("port_value: {}", backend.addr().port()),
        ),
        (
            "filename: target/wasm32-wasip1/release/wasm_filter_example.wasm",
            format!("filename: {}", module.display()),
        ),
    ];
    let yaml = rewrites.iter().fold(yaml, |yaml, (from, to)| {
        assert!(yaml.contains(from), "envoy.yaml no longer has {from:?}");
        yaml.replace(from, to)
    });
    let strait = Strait::start(&yaml).await;

    let resp = get(
        strait.addr("ingress").await,
        "localhost",
        "/walkthrough",
        &[],
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("x-hello"), Some("from wasm"));
    assert_eq!(backend.requests(), 1);

    strait
        .wait_stat("wasmcustom.example_requests_total", |v| v == 1)
        .await;
    let (_, prometheus) = strait.admin_get("/stats/prometheus").await;
    assert!(
        prometheus.contains("example_requests_total 1\n"),
        "{prometheus}"
    );
    eventually(
        std::time::Duration::from_secs(10),
        "the plugin's log line",
        || async {
            strait
                .stderr()
                .contains("GET /walkthrough -> 200")
                .then_some(())
        },
    )
    .await;
}
