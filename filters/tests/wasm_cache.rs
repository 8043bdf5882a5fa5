//! The module cache: one compiled module per distinct bytes in a process, and compiled
//! modules on disk across engines (restarts), with bad entries ignored and replaced.
mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use strait_filters::wasm::{ModuleOrigin, PluginConfig, WasmEngine, WasmPlugin, WasmVm};
use wasmtime::Module;

fn temp_dir(name: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "strait-wasm-cache-{name}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn load(engine: &WasmEngine, name: &str) -> std::sync::Arc<WasmPlugin> {
    WasmPlugin::new(engine, common::config(name)).expect("plugin loads")
}

fn count(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

#[test]
fn a_second_engine_deserializes_the_module_from_disk() {
    let dir = temp_dir("hit");
    let first = WasmEngine::with_cache_dir(Some(dir.clone())).unwrap();
    let plugin = load(&first, "headers");
    assert_eq!(plugin.module_origin(), ModuleOrigin::Compiled);
    let entry = first.modules().entry_path(plugin.module_sha256()).unwrap();
    assert!(entry.is_file(), "{} written", entry.display());
    let name = entry.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with(plugin.module_sha256()) && name.ends_with(".cwasm"),
        "{name}"
    );
    assert_eq!(count(&first.modules().stats().misses), 1);

    // A new engine stands for a restarted proxy: it has nothing in memory.
    let second = WasmEngine::with_cache_dir(Some(dir.clone())).unwrap();
    let plugin = load(&second, "headers");
    assert_eq!(plugin.module_origin(), ModuleOrigin::Disk);
    assert_eq!(count(&second.modules().stats().disk_hits), 1);
    assert_eq!(count(&second.modules().stats().misses), 0);
    // The deserialized module runs like the compiled one.
    WasmVm::new(plugin)
        .start()
        .expect("VM starts from the cached module");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn identical_modules_share_one_compiled_module() {
    let engine = WasmEngine::new().unwrap();
    let a = load(&engine, "headers");
    let mut other = common::config("headers");
    other.name = "headers-again".into();
    other.configuration = "different".into();
    let b = WasmPlugin::new(&engine, other).unwrap();
    assert_eq!(a.module_origin(), ModuleOrigin::Compiled);
    assert_eq!(b.module_origin(), ModuleOrigin::Memory);
    assert!(Module::same(a.module(), b.module()));
    assert_eq!(count(&engine.modules().stats().misses), 1);
    assert_eq!(count(&engine.modules().stats().memory_hits), 1);

    // Another module compiles on its own.
    let c = load(&engine, "body");
    assert_eq!(c.module_origin(), ModuleOrigin::Compiled);
    assert!(!Module::same(a.module(), c.module()));

    // Once no plugin holds the module, it is compiled (or read from disk) again.
    drop((a, b));
    assert_eq!(
        load(&engine, "headers").module_origin(),
        ModuleOrigin::Compiled
    );
}

#[test]
fn a_corrupt_entry_is_ignored_and_replaced() {
    let dir = temp_dir("corrupt");
    let engine = WasmEngine::with_cache_dir(Some(dir.clone())).unwrap();
    let sha256 = load(&engine, "headers").module_sha256().to_owned();
    let entry = engine.modules().entry_path(&sha256).unwrap();
    let good = std::fs::read(&entry).unwrap();

    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0xff;
    let damaged: [(&str, Vec<u8>); 3] = [
        ("a flipped byte", flipped),
        ("a truncated file", good[..good.len() / 3].to_vec()),
        ("an empty file", Vec::new()),
    ];
    for (what, bytes) in damaged {
        std::fs::write(&entry, bytes).unwrap();
        let restarted = WasmEngine::with_cache_dir(Some(dir.clone())).unwrap();
        let plugin = load(&restarted, "headers");
        assert_eq!(plugin.module_origin(), ModuleOrigin::Compiled, "{what}");
        assert_eq!(count(&restarted.modules().stats().rejected), 1, "{what}");
        WasmVm::new(plugin).start().expect("VM starts");
        assert_eq!(
            std::fs::read(&entry).unwrap(),
            good,
            "{what}: entry rewritten"
        );
    }
    let restarted = WasmEngine::with_cache_dir(Some(dir.clone())).unwrap();
    assert_eq!(
        load(&restarted, "headers").module_origin(),
        ModuleOrigin::Disk
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_intact_entry_wasmtime_cannot_load_is_ignored() {
    // The checksum matches but the payload is no wasmtime artifact (as an entry of
    // an incompatible build would be, were it ever named like ours).
    use sha2::Digest;
    let dir = temp_dir("incompatible");
    let engine = WasmEngine::with_cache_dir(Some(dir.clone())).unwrap();
    let code = common::plugin_code("headers");
    let sha256 = strait_filters::wasm::sha256_hex(&code);
    let entry = engine.modules().entry_path(&sha256).unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    let payload = b"\x7fELF but not a wasmtime artifact".to_vec();
    let mut bytes = b"STRAITC1".to_vec();
    bytes.extend_from_slice(&sha2::Sha256::digest(&payload));
    bytes.extend_from_slice(&payload);
    std::fs::write(&entry, bytes).unwrap();

    let plugin = WasmPlugin::new(&engine, PluginConfig::new("headers", code)).unwrap();
    assert_eq!(plugin.module_origin(), ModuleOrigin::Compiled);
    assert_eq!(count(&engine.modules().stats().rejected), 1);
    let again = WasmEngine::with_cache_dir(Some(dir.clone())).unwrap();
    assert_eq!(load(&again, "headers").module_origin(), ModuleOrigin::Disk);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unwritable_directory_only_costs_compiles() {
    let file = temp_dir("not-a-dir");
    std::fs::write(&file, b"a file where the directory should be").unwrap();
    let engine = WasmEngine::with_cache_dir(Some(file.join("wasm"))).unwrap();
    let plugin = load(&engine, "headers");
    assert_eq!(plugin.module_origin(), ModuleOrigin::Compiled);
    assert_eq!(count(&engine.modules().stats().write_failures), 1);
    let _ = std::fs::remove_file(&file);
}
