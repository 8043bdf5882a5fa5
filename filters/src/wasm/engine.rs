//! The process-wide wasmtime engine and the epoch ticker that enforces CPU deadlines.
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::cache::ModuleCache;

/// How often the ticker thread advances the engine epoch. A callback's deadline is a
/// number of these ticks, so deadlines are accurate to one tick.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// One `wasmtime::Engine` (compiler settings, code memory, epoch counter) shared by
/// every plugin and worker, with its module cache. Cloning is cheap (`Arc`s inside).
#[derive(Clone)]
pub struct WasmEngine {
    engine: wasmtime::Engine,
    modules: Arc<ModuleCache>,
}

impl WasmEngine {
    /// The engine every plugin uses unless a test makes its own, with the disk
    /// cache the environment names (`cache` module docs). Its ticker thread lives as
    /// long as the process.
    pub fn shared() -> &'static WasmEngine {
        static SHARED: OnceLock<WasmEngine> = OnceLock::new();
        SHARED.get_or_init(|| {
            // The configuration is fixed and valid for the host target; failing here
            // means wasmtime cannot run on this machine at all.
            WasmEngine::with_cache_dir(ModuleCache::dir_from_env())
                .expect("wasmtime engine with the default configuration")
        })
    }

    /// A new engine without a disk cache, with its own ticker thread, which exits
    /// once the engine is dropped.
    pub fn new() -> Result<Self, String> {
        Self::with_cache_dir(None)
    }

    /// A new engine whose compiled modules are cached in `dir` (none: in memory only).
    pub fn with_cache_dir(dir: Option<PathBuf>) -> Result<Self, String> {
        let mut config = wasmtime::Config::new();
        // Epoch checks cost a load and compare per loop back-edge and function entry;
        // fuel metering would cost several instructions per basic block.
        config.epoch_interruption(true);
        config.memory_may_move(false);
        config.table_lazy_init(false);
        let engine = wasmtime::Engine::new(&config).map_err(|e| format!("{e:?}"))?;
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || loop {
                std::thread::sleep(EPOCH_TICK);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => return,
                }
            })
            .map_err(|e| format!("cannot start the epoch thread: {e}"))?;
        let modules = Arc::new(ModuleCache::new(&engine, dir));
        Ok(Self { engine, modules })
    }

    pub fn engine(&self) -> &wasmtime::Engine {
        &self.engine
    }

    /// Compiled modules of this engine, in memory and on disk.
    pub fn modules(&self) -> &ModuleCache {
        &self.modules
    }
}

/// Epoch ticks for a deadline, at least one (a zero deadline would trap at once).
pub(crate) fn deadline_ticks(deadline: Duration) -> u64 {
    let tick = EPOCH_TICK.as_nanos();
    let ticks = deadline.as_nanos().div_ceil(tick);
    u64::try_from(ticks).unwrap_or(u64::MAX).max(1)
}
