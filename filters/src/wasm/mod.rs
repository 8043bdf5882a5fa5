//! The proxy-wasm host: runs plugins built for Envoy with the public proxy-wasm SDKs
//! (Rust, Go, C++, AssemblyScript) unchanged, as one [`HttpFilter`](crate::HttpFilter).
//!
//! # Shape
//!
//! ```text
//!  PluginConfig ──compile once──▶ WasmPlugin (Module + InstancePre, Arc, all workers)
//!                                   │ one per worker thread
//!                                   ▼
//!                                 WasmVm ─ one instance: root context + every stream
//!                                   │ one per stream
//!                                   ▼
//!                                 WasmHttpFilter ─ phases ─▶ proxy_on_request_headers…
//! ```
//!
//! * [`engine`]: one `wasmtime::Engine` per process, with epoch interruption; a
//!   thread bumps the epoch every 10 ms, so a callback's CPU deadline is accurate to
//!   about 10 ms and costs the guest one load and compare per loop back-edge.
//! * [`module`]: compile and link once per plugin; a missing import is an error
//!   naming it, at config time rather than on the first request.
//! * [`cache`]: one compiled `Module` per distinct module bytes per engine, shared
//!   by identical plugins, and an on-disk cache of compiled modules across restarts.
//! * [`vm`]: instantiate per worker, run `proxy_on_vm_start` / `proxy_on_configure`,
//!   create and destroy stream contexts, call callbacks under the deadline. A trap
//!   marks the VM failed; the next stream gets a fresh instance.
//! * [`filter`]: maps [`HttpFilter`](crate::HttpFilter) phases to proxy-wasm callbacks
//!   and the plugin's `Action` to a [`FilterStatus`](crate::FilterStatus).
//! * [`network`]: one connection context of a network filter
//!   (`envoy.filters.network.wasm`): new connection, data both ways, close.
//! * `abi`, `headers`, `properties`, `wasi`: the host functions; `memory`: copying
//!   between host and guest memory through wasmtime's safe API (no `unsafe`).
//! * [`shared`]: process-wide shared data (with CAS), shared queues and metrics.
//! * [`callout`]: HTTP callouts, recorded by the VM and sent by the embedder.
//!
//! ABI: modules exporting `proxy_abi_version_0_2_1` or `proxy_abi_version_0_2_0`.
//! 0.1.0 modules are rejected with an error saying so.
mod abi;
pub mod cache;
pub mod callout;
pub mod engine;
mod error;
pub mod filter;
mod headers;
mod memory;
pub mod module;
pub mod network;
mod properties;
pub mod shared;
mod state;
pub mod vm;
mod wasi;

use std::time::Duration;

use bytes::Bytes;

pub use cache::{sha256_hex, ModuleCache, ModuleOrigin};
pub use callout::{
    grpc_frame, set_cluster_check, CallAnswer, CallKind, Dispatch, GrpcCallResult, GrpcStreamEvent,
    HttpCallRequest, HttpCallResponse, StreamOp,
};
pub use engine::WasmEngine;
pub use error::WasmError;
pub use filter::WasmHttpFilter;
pub use module::WasmPlugin;
pub use network::{ConnectionInfo, NetworkStatus, PeerType, WasmNetworkFilter};
pub use properties::{MetaValue, NodeInfo};
pub use vm::WasmVm;

/// The `wasm` logger's level as proxy-wasm numbers it (0 trace … 5 critical), for
/// `proxy_get_log_level`; `u32::MAX` until the embedder sets one (then tracing's
/// global maximum answers).
static LOG_LEVEL: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(u32::MAX);

/// Sets what `proxy_get_log_level` answers plugins: the level of the host's `wasm`
/// logger (admin `/logging?wasm=debug`), so the SDKs drop finer lines in the guest.
pub fn set_log_level(level: u32) {
    LOG_LEVEL.store(level, std::sync::atomic::Ordering::Relaxed);
}

fn log_level() -> u32 {
    match LOG_LEVEL.load(std::sync::atomic::Ordering::Relaxed) {
        u32::MAX => {
            use tracing::level_filters::LevelFilter;
            match LevelFilter::current() {
                LevelFilter::TRACE => 0,
                LevelFilter::DEBUG => 1,
                LevelFilter::INFO => 2,
                LevelFilter::WARN => 3,
                LevelFilter::ERROR => 4,
                _ => 5,
            }
        }
        level => level,
    }
}

/// One plugin as Envoy's `envoy.filters.http.wasm` configures it; the xDS
/// translator produces it.
#[derive(Debug, Clone)]
pub struct PluginConfig {
    /// `config.name`: used in logs and returned by the `plugin_name` property.
    pub name: String,
    /// `config.root_id`: selects the root context in modules that have several.
    pub root_id: String,
    /// `config.vm_config.vm_id`: plugins with the same id share shared data.
    pub vm_id: String,
    /// `config.configuration`: read by the plugin in `proxy_on_configure`.
    pub configuration: Bytes,
    /// `config.vm_config.configuration`: read in `proxy_on_vm_start`.
    pub vm_configuration: Bytes,
    /// The module bytes (`vm_config.code`).
    pub code: Bytes,
    /// `config.fail_open`: when the plugin fails, let the request through instead of
    /// answering 500.
    pub fail_open: bool,
    pub limits: SandboxLimits,
    /// The bootstrap `node` of the config the plugin came with (`xds.node`).
    pub node: std::sync::Arc<NodeInfo>,
    /// `vm_config.environment_variables`, as `(name, value)`: what the guest's WASI
    /// `environ_get` returns (Rust's `std::env::var` reads it).
    pub environment: Vec<(String, String)>,
}

impl PluginConfig {
    /// A plugin with empty ids and configuration and the default limits.
    pub fn new(name: impl Into<String>, code: impl Into<Bytes>) -> Self {
        Self {
            name: name.into(),
            root_id: String::new(),
            vm_id: String::new(),
            configuration: Bytes::new(),
            vm_configuration: Bytes::new(),
            code: code.into(),
            fail_open: false,
            limits: SandboxLimits::default(),
            node: Default::default(),
            environment: Vec::new(),
        }
    }
}

/// What one VM may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SandboxLimits {
    /// Cap on the VM's linear memory. A Rust SDK plugin starts at about 1.1 MiB.
    pub memory_bytes: usize,
    /// Cap on the wall time of one callback, counted in engine epoch ticks (10 ms),
    /// so it is rounded up to the next 10 ms.
    pub callback_deadline: Duration,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        Self {
            memory_bytes: 64 << 20,
            callback_deadline: Duration::from_millis(100),
        }
    }
}
