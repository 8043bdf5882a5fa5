//! Compiled modules: one per distinct module bytes per engine in memory, and on disk
//! across restarts.
//!
//! Compiling is the expensive part of loading a plugin (a Rust SDK plugin of a few
//! hundred KiB takes Cranelift 100 ms to several seconds on a busy core), and it is
//! the same work every time for the same bytes. So:
//!
//! * in memory, a plugin whose module bytes hash to a digest already loaded on this
//!   engine reuses that `Module` (filters that differ only in configuration, a
//!   reload that keeps the module): every worker and every such plugin share one copy
//!   of the machine code;
//! * on disk, the compiled artifact (`Module::serialize`) is kept under
//!   `<dir>/<sha256 of the module>-<engine compatibility hash>.cwasm`, so a restart
//!   deserializes (a copy and relocation, milliseconds) instead of compiling. The
//!   compatibility hash (`Engine::precompile_compatibility_hash`: wasmtime version,
//!   compiler settings, target) is part of the name, so an upgraded proxy never
//!   picks an artifact it cannot run and old entries are simply never read again.
//!
//! An entry is written to a temporary file and renamed, so a reader never sees half
//! a file. It starts with a magic and the SHA-256 of the artifact, checked before
//! wasmtime sees a byte: wasmtime trusts what it deserializes (it checks the header
//! and compatibility, not the code), so a truncated or flipped entry must never reach
//! it. A bad entry is counted, ignored, and replaced by a fresh compile. The digest
//! guards against corruption, not against someone who can write the directory: that
//! directory must be as trusted as the proxy binary (it is created 0700).
//!
//! The directory is `$STRAIT_WASM_CACHE_DIR`, else `$XDG_CACHE_HOME/strait/wasm`,
//! else `$HOME/.cache/strait/wasm`; `STRAIT_WASM_CACHE_DIR=""` turns the disk cache
//! off. A directory that cannot be created or written only costs compiles (logged,
//! counted in `write_failures`).
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use wasmtime::{Engine, Module};

/// The first bytes of a cache entry; the version changes if the layout does.
const MAGIC: &[u8; 8] = b"STRAITC1";
const HEADER_LEN: usize = MAGIC.len() + 32;

/// SHA-256 of `bytes`, lowercase hex: what `code.remote.sha256` is compared with.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut text = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(text, "{b:02x}");
    }
    text
}

/// Where a loaded module came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleOrigin {
    /// Already loaded in this process by another plugin (or an earlier config).
    Memory,
    /// Deserialized from the disk cache.
    Disk,
    /// Compiled now (and written to the disk cache, if there is one).
    Compiled,
}

/// A module shared by every plugin and worker that loads the same bytes.
pub struct CompiledModule {
    pub module: Module,
    /// SHA-256 of the module bytes, lowercase hex.
    pub sha256: String,
}

/// Counters of one cache, for the stats exporter.
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Modules found already loaded in memory.
    pub memory_hits: AtomicU64,
    /// Modules deserialized from disk.
    pub disk_hits: AtomicU64,
    /// Modules compiled (not found in memory or on disk).
    pub misses: AtomicU64,
    /// Disk entries ignored as corrupt or incompatible (then replaced).
    pub rejected: AtomicU64,
    /// Disk entries that could not be written.
    pub write_failures: AtomicU64,
}

impl CacheStats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// The module cache of one engine.
pub struct ModuleCache {
    dir: Option<PathBuf>,
    /// Hex of the engine's compatibility hash, part of every entry's file name.
    compatibility: String,
    loaded: Mutex<HashMap<[u8; 32], Weak<CompiledModule>>>,
    stats: CacheStats,
}

/// Feeds `Hash::hash` output into SHA-256, so the compatibility hash is stable across
/// builds (std's `DefaultHasher` promises no stability).
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        // Unused: the digest is read with `finalize`.
        0
    }
}

impl ModuleCache {
    pub(crate) fn new(engine: &Engine, dir: Option<PathBuf>) -> ModuleCache {
        let mut hasher = ShaHasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let compatibility = hex(&hasher.0.finalize()[..8]);
        ModuleCache {
            dir,
            compatibility,
            loaded: Mutex::new(HashMap::new()),
            stats: CacheStats::default(),
        }
    }

    /// The directory the environment names (see the module docs), if any.
    pub fn dir_from_env() -> Option<PathBuf> {
        let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
        if let Some(dir) = std::env::var_os("STRAIT_WASM_CACHE_DIR") {
            return (!dir.is_empty()).then(|| PathBuf::from(dir));
        }
        if let Some(xdg) = var("XDG_CACHE_HOME") {
            return Some(PathBuf::from(xdg).join("strait/wasm"));
        }
        var("HOME").map(|home| PathBuf::from(home).join(".cache/strait/wasm"))
    }

    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }

    /// Where the compiled form of the module with this digest lives on disk.
    pub fn entry_path(&self, sha256: &str) -> Option<PathBuf> {
        let name = format!("{sha256}-{}.cwasm", self.compatibility);
        self.dir.as_ref().map(|dir| dir.join(name))
    }

    /// The module for `code`: the one already loaded, the disk entry, or a compile.
    pub fn load(
        &self,
        engine: &Engine,
        code: &[u8],
    ) -> Result<(Arc<CompiledModule>, ModuleOrigin), wasmtime::Error> {
        let digest: [u8; 32] = Sha256::digest(code).into();
        if let Some(module) = self.loaded.lock().get(&digest).and_then(Weak::upgrade) {
            self.stats.memory_hits.fetch_add(1, Ordering::Relaxed);
            return Ok((module, ModuleOrigin::Memory));
        }
        let sha256 = hex(&digest);
        let path = self.entry_path(&sha256);
        let (module, origin) = match path.as_deref().and_then(|p| self.read(engine, p)) {
            Some(module) => {
                self.stats.disk_hits.fetch_add(1, Ordering::Relaxed);
                (module, ModuleOrigin::Disk)
            }
            None => {
                // Compiled outside the lock: identical plugins loading at once may
                // both compile, which is wasted work but correct.
                let module = Module::new(engine, code)?;
                self.stats.misses.fetch_add(1, Ordering::Relaxed);
                if let Some(path) = &path {
                    if let Err(e) = write_entry(path, &module) {
                        self.stats.write_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(path = %path.display(), error = %e, "cannot write the wasm compile cache");
                    }
                }
                (module, ModuleOrigin::Compiled)
            }
        };
        let module = Arc::new(CompiledModule { module, sha256 });
        let mut loaded = self.loaded.lock();
        loaded.retain(|_, m| m.strong_count() > 0);
        // A plugin loaded meanwhile by another thread wins, so all share one module.
        if let Some(winner) = loaded.get(&digest).and_then(Weak::upgrade) {
            return Ok((winner, origin));
        }
        loaded.insert(digest, Arc::downgrade(&module));
        Ok((module, origin))
    }

    /// The disk entry at `path`, if it is there, intact and loadable by `engine`.
    fn read(&self, engine: &Engine, path: &Path) -> Option<Module> {
        let bytes = std::fs::read(path).ok()?;
        let reject = |why: &dyn std::fmt::Display| {
            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(path = %path.display(), reason = %why, "ignoring a bad wasm compile cache entry; compiling again");
        };
        let intact = bytes.len() >= HEADER_LEN
            && bytes.starts_with(MAGIC)
            && Sha256::digest(&bytes[HEADER_LEN..])[..] == bytes[MAGIC.len()..HEADER_LEN];
        if !intact {
            reject(&"truncated or corrupt");
            return None;
        }
        // SAFETY: wasmtime requires that deserialized bytes come from
        // `Module::serialize` of a compatible engine and were not altered. They do:
        // the entry's SHA-256 (checked above) matches what `write_entry` computed over
        // the serialized module, and wasmtime itself checks the compatibility
        // (version, settings, target) in the artifact's header. The cache directory is
        // as trusted as the proxy binary (module docs).
        #[allow(unsafe_code)]
        let module = unsafe { Module::deserialize(engine, &bytes[HEADER_LEN..]) };
        module.map_err(|e| reject(&format!("{e:#}"))).ok()
    }
}

/// Writes `module`'s artifact to `path` through a temporary file in the same
/// directory and a rename, so a concurrent reader sees the old entry or the new one.
fn write_entry(path: &Path, module: &Module) -> std::io::Result<()> {
    let artifact = module.serialize().map_err(std::io::Error::other)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    create_private_dir(dir)?;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let temp = dir.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(MAGIC)?;
        file.write_all(&Sha256::digest(&artifact))?;
        file.write_all(&artifact)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}
