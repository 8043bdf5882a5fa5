//! Test kit for the wasm host: builds the test plugins once per test binary and
//! drives a `WasmHttpFilter` through a stream without sockets.
#![allow(dead_code)] // each test binary uses a different part of the kit

use std::path::PathBuf;
use std::process::Command;
use std::rc::Rc;
use std::sync::OnceLock;

use bytes::Bytes;
use http::HeaderMap;
use strait_filters::wasm::{PluginConfig, WasmEngine, WasmPlugin, WasmVm};
use strait_filters::{RequestHead, ResponseHead};

/// Builds `plugins/` for wasm32-wasip1 (once per test binary; cargo makes it a
/// no-op when nothing changed) and returns the directory holding the `.wasm` files.
pub fn plugin_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // Read when the test runs (cargo sets it), not baked in at build time: a test
        // binary reused from a target dir shared with another checkout must still
        // find this one.
        let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
            .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
        let root = manifest.join("..");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"))
            .join("plugins");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip1",
                "--manifest-path",
            ])
            .arg(root.join("plugins/Cargo.toml"))
            .env("CARGO_TARGET_DIR", &target)
            // Flags meant for the host build must not leak into the wasm build.
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .status()
            .expect("run cargo to build the test plugins");
        assert!(
            status.success(),
            "building plugins/ failed (is the wasm32-wasip1 target installed?)"
        );
        target.join("wasm32-wasip1/release")
    })
}

/// The module bytes of `plugins/testdata/<name>`.
pub fn plugin_code(name: &str) -> Bytes {
    let path = plugin_dir().join(format!("strait_testdata_{name}.wasm"));
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .into()
}

pub fn config(name: &str) -> PluginConfig {
    let mut config = PluginConfig::new(name, plugin_code(name));
    config.vm_id = format!("vm-{name}");
    config
}

/// A worker's VM for a plugin.
pub fn worker_vm(config: PluginConfig) -> Rc<WasmVm> {
    let plugin = WasmPlugin::new(WasmEngine::shared(), config).expect("plugin loads");
    WasmVm::new(plugin)
}

pub fn request(path: &str, headers: &[(&str, &str)]) -> RequestHead {
    let mut builder = http::Request::get(path).header("host", "example.test");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(()).unwrap().into_parts().0
}

pub fn response(status: u16) -> ResponseHead {
    http::Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(())
        .unwrap()
        .into_parts()
        .0
}

pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.to_str().unwrap())
}
