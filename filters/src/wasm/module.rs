//! A compiled, linked plugin: built once per plugin config, shared by all workers.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use wasmtime::{InstancePre, Linker, Module, Store};

use super::cache::{CompiledModule, ModuleOrigin};
use super::state::HostState;
use super::{abi, engine::WasmEngine, wasi, PluginConfig, WasmError};

/// Which proxy-wasm ABI the module was built against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbiVersion {
    /// The first ABI (SDKs of 2020: proxy-wasm-rust-sdk 0.1): headers callbacks
    /// without `end_of_stream`, `proxy_continue_request` / `_response`,
    /// `proxy_get_configuration`, and an absent header reads as empty.
    V0_1_0,
    V0_2_0,
    V0_2_1,
}

/// A plugin ready to instantiate: compiled machine code and resolved imports.
/// Instantiating from it costs a memory map and the guest's own start code, no
/// compilation or name lookup.
pub struct WasmPlugin {
    pub(crate) config: Arc<PluginConfig>,
    pub(crate) engine: WasmEngine,
    pub(crate) pre: InstancePre<HostState>,
    abi: AbiVersion,
    pub(crate) stats: PluginStats,
    /// Keeps the shared module in the engine's cache while this plugin lives.
    module: Arc<CompiledModule>,
    origin: ModuleOrigin,
}

/// Counters of one plugin across workers, for the stats exporter.
#[derive(Debug, Default)]
pub struct PluginStats {
    /// Callbacks that trapped, ran out of time or memory.
    pub failures: AtomicU64,
    /// VMs created, including the first one of each worker.
    pub vm_starts: AtomicU64,
}

impl PluginStats {
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    pub fn vm_starts(&self) -> u64 {
        self.vm_starts.load(Ordering::Relaxed)
    }
}

impl WasmPlugin {
    /// Compiles (or finds in the engine's module cache) and links `config.code`.
    /// Errors name what is wrong: bytes that are not wasm, a module without a
    /// proxy-wasm ABI export, an import this host does not provide.
    pub fn new(engine: &WasmEngine, config: PluginConfig) -> Result<Arc<Self>, WasmError> {
        let plugin = config.name.clone();
        let (compiled, origin) = engine
            .modules()
            .load(engine.engine(), &config.code)
            .map_err(|e| WasmError::Compile {
                plugin: plugin.clone(),
                message: format!("{e:#}"),
            })?;
        let module = &compiled.module;
        let abi = abi_version(module).map_err(|detail| WasmError::Abi {
            plugin: plugin.clone(),
            detail,
        })?;
        let link_error = |e: wasmtime::Error| WasmError::Link {
            plugin: plugin.clone(),
            message: format!("{e:#}"),
        };
        let mut linker = Linker::new(engine.engine());
        abi::add_to_linker(&mut linker).map_err(link_error)?;
        wasi::add_to_linker(&mut linker).map_err(link_error)?;

        let config = Arc::new(config);
        // Name the first missing import ourselves: wasmtime's message is correct but
        // buried in a longer chain.
        let mut store = Store::new(engine.engine(), HostState::new(config.clone()));
        for import in module.imports() {
            if linker.get_by_import(&mut store, &import).is_none() {
                return Err(WasmError::UnknownImport {
                    plugin,
                    module: import.module().to_string(),
                    name: import.name().to_string(),
                });
            }
        }
        let pre = linker.instantiate_pre(module).map_err(link_error)?;
        Ok(Arc::new(Self {
            config,
            engine: engine.clone(),
            pre,
            abi,
            stats: PluginStats::default(),
            module: compiled,
            origin,
        }))
    }

    /// Where the compiled module came from when this plugin was loaded.
    pub fn module_origin(&self) -> ModuleOrigin {
        self.origin
    }

    /// The compiled module, shared with every plugin of the same module bytes.
    pub fn module(&self) -> &Module {
        &self.module.module
    }

    /// SHA-256 of the module bytes, lowercase hex.
    pub fn module_sha256(&self) -> &str {
        &self.module.sha256
    }

    pub fn config(&self) -> &PluginConfig {
        &self.config
    }

    pub fn abi_version(&self) -> AbiVersion {
        self.abi
    }

    pub fn stats(&self) -> &PluginStats {
        &self.stats
    }
}

fn abi_version(module: &Module) -> Result<AbiVersion, String> {
    let has = |name: &str| module.get_export(name).is_some();
    if has("proxy_abi_version_0_2_1") {
        Ok(AbiVersion::V0_2_1)
    } else if has("proxy_abi_version_0_2_0") {
        Ok(AbiVersion::V0_2_0)
    } else if has("proxy_abi_version_0_1_0") {
        Ok(AbiVersion::V0_1_0)
    } else {
        Err("no proxy_abi_version_* export".into())
    }
}
