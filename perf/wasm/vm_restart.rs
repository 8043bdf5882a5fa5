//! Measures VM (re)creation time and resident memory with wasmtime's default
//! (on-demand) instance allocator and with the pooling allocator.
//! `cargo run --release -p strait-filters --example vm_restart -- <headers.wasm> <body.wasm>`
use std::time::Instant;

use strait_filters::wasm::{PluginConfig, WasmEngine, WasmPlugin, WasmVm};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args[0].as_str();
    let codes: Vec<Vec<u8>> = args[1..].iter().map(|p| std::fs::read(p).unwrap()).collect();
    let workers = 8;
    let engine = match mode {
        "pooling" => WasmEngine::with_pooling(64).unwrap(),
        _ => WasmEngine::new().unwrap(),
    };
    let plugins: Vec<_> = codes
        .iter()
        .enumerate()
        .map(|(i, code)| {
            let mut config = PluginConfig::new(format!("p{i}"), code.clone());
            config.vm_id = format!("vm{i}");
            WasmPlugin::new(&engine, config).unwrap()
        })
        .collect();
    // Warm up: one VM each, dropped.
    for p in &plugins {
        WasmVm::new(p.clone()).start().unwrap();
    }
    let before = rss_kib();
    let mut vms = Vec::new();
    for _ in 0..workers {
        for p in &plugins {
            let vm = WasmVm::new(p.clone());
            vm.start().unwrap();
            vms.push(vm);
        }
    }
    let after = rss_kib();
    println!(
        "{mode}: {} plugins x {workers} workers: RSS +{} KiB ({} KiB per VM), total {after} KiB",
        plugins.len(),
        after - before,
        (after - before) / vms.len() as u64
    );
    drop(vms);
    // VM recreation, as after a trap: instantiate, proxy_on_vm_start, proxy_on_configure.
    let rounds = 2000;
    let start = Instant::now();
    for _ in 0..rounds {
        let vm = WasmVm::new(plugins[0].clone());
        vm.start().unwrap();
    }
    let per = start.elapsed() / rounds;
    println!("{mode}: VM recreation {per:?} per VM ({rounds} rounds)");
}
