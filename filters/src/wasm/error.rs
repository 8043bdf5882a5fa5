//! Why a plugin could not be loaded or a callback failed.
use std::time::Duration;

/// Errors of the wasm host. Load errors (`Compile` … `Start`) come from config
/// translation; the others from a callback on the request path, where the filter
/// turns them into a 500 (or lets the request through when `fail_open`).
#[derive(Debug, thiserror::Error)]
pub enum WasmError {
    #[error("wasm plugin {plugin:?}: module does not compile: {message}")]
    Compile { plugin: String, message: String },
    #[error("wasm plugin {plugin:?}: not a proxy-wasm module: {detail}")]
    Abi { plugin: String, detail: String },
    #[error(
        "wasm plugin {plugin:?}: imports `{module}::{name}`, which this host does not provide"
    )]
    UnknownImport {
        plugin: String,
        module: String,
        name: String,
    },
    #[error("wasm plugin {plugin:?}: cannot link module: {message}")]
    Link { plugin: String, message: String },
    #[error("wasm plugin {plugin:?}: {callback} returned false")]
    Start {
        plugin: String,
        callback: &'static str,
    },
    #[error("wasm plugin {plugin:?}: trap in {callback}: {message}")]
    Trap {
        plugin: String,
        callback: &'static str,
        /// The trap itself (`wasm \`unreachable\` instruction executed` for a Rust
        /// panic, whose message the plugin wrote to stderr, i.e. the proxy log).
        message: String,
        /// The guest's stack at the trap, function names included when the module
        /// has a name section.
        backtrace: String,
    },
    #[error("wasm plugin {plugin:?}: {callback} ran past its {deadline:?} deadline")]
    Deadline {
        plugin: String,
        callback: &'static str,
        deadline: Duration,
    },
    #[error("wasm plugin {plugin:?}: {callback} exceeded the {limit_bytes}-byte memory cap")]
    MemoryLimit {
        plugin: String,
        callback: &'static str,
        limit_bytes: usize,
    },
    #[error("wasm plugin {plugin:?}: the VM serving this stream failed earlier")]
    VmFailed { plugin: String },
}

/// The host passes a callback's failure boxed (`vm::Failure`); load paths, which
/// return it whole, unbox it with `?`.
impl From<Box<WasmError>> for WasmError {
    fn from(error: Box<WasmError>) -> Self {
        *error
    }
}
