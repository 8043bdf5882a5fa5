//! `strait`: the proxy binary.

use std::alloc::{GlobalAlloc, Layout};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use libmimalloc_sys as mi;
use strait::app::{self, Options, Source};

/// mimalloc: per-thread free lists suit thread-per-core workers that allocate and free
/// on the same thread, and it returns memory to the OS after bursts (glibc's arenas
/// kept ~130 MiB after the h2-64k benchmark).
#[global_allocator]
static GLOBAL: Mimalloc = Mimalloc;

/// mimalloc, called as C programs call it: `mi_malloc` when the alignment asked for
/// is what every mimalloc block has anyway (8 bytes, 16 from 16 bytes up), the
/// aligned entry points only beyond. The `mimalloc` crate sends every allocation
/// through `mi_malloc_aligned`, whose fast path covers only small blocks that happen
/// to be aligned: anything larger (hyper's 8 KiB read buffers, say) went through its
/// generic path, ~430 instructions where `mi_malloc` takes ~50 (callgrind).
struct Mimalloc;

/// The alignment every mimalloc block of at least this size has.
const MI_MAX_ALIGN_SIZE: usize = 16;

fn plain(size: usize, align: usize) -> bool {
    align <= 8 || (align <= MI_MAX_ALIGN_SIZE && size >= MI_MAX_ALIGN_SIZE)
}

/// `plain_call` for the layouts mimalloc aligns anyway, else `aligned_call`.
///
/// # Safety
/// Both must be mimalloc entry points taking (size) and (size, alignment).
#[inline(always)]
unsafe fn allocate(
    layout: Layout,
    plain_call: unsafe extern "C" fn(usize) -> *mut std::ffi::c_void,
    aligned_call: unsafe extern "C" fn(usize, usize) -> *mut std::ffi::c_void,
) -> *mut u8 {
    let (size, align) = (layout.size(), layout.align());
    // SAFETY: the caller passes mimalloc's calls; `align` is a power of two.
    unsafe {
        match plain(size, align) {
            true => plain_call(size).cast(),
            false => aligned_call(size, align).cast(),
        }
    }
}

// SAFETY: every pointer comes from mimalloc with at least the layout's alignment
// (mimalloc's guarantee for `plain` layouts, the aligned calls otherwise), and goes
// back to `mi_free` / `mi_realloc*`, which accept both kinds.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: plain C allocation calls; the alignment is a power of two (Layout).
        unsafe { allocate(layout, mi::mi_malloc, mi::mi_malloc_aligned) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        unsafe { allocate(layout, mi::mi_zalloc, mi::mi_zalloc_aligned) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator (GlobalAlloc's contract).
        unsafe { mi::mi_free(ptr.cast()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let align = layout.align();
        // SAFETY: `ptr` came from this allocator with `layout` (GlobalAlloc's
        // contract); the result keeps `align`, as `alloc` would give it. `mi_realloc`
        // only for a block `mi_malloc` gave (an aligned one may be an interior
        // pointer of a larger block).
        unsafe {
            match plain(layout.size(), align) && plain(new_size, align) {
                true => mi::mi_realloc(ptr.cast(), new_size).cast(),
                false => mi::mi_realloc_aligned(ptr.cast(), new_size, align).cast(),
            }
        }
    }
}

/// A forced collection of the calling thread's mimalloc heap: its free pages go back
/// to the OS at once instead of at the allocator's next page operation.
fn mimalloc_trim() {
    // SAFETY: `mi_collect` takes no pointers; it collects the calling thread's heap.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

/// A high-performance L4/L7 proxy configured with Envoy's v3 bootstrap YAML.
#[derive(Parser, Debug)]
#[command(name = "strait", version)]
struct Cli {
    /// Envoy v3 bootstrap YAML file (watched; SIGHUP also re-reads it).
    #[arg(short = 'c', long = "config-path", required_unless_present = "listen")]
    config: Option<PathBuf>,
    /// Number of worker threads; default: the number of cores.
    #[arg(long)]
    concurrency: Option<usize>,
    /// trace, debug, info, warn, error, critical or off.
    #[arg(short = 'l', long, default_value = "info")]
    log_level: String,
    /// Seconds to let in-flight requests finish after SIGTERM; also how long
    /// `/drain_listeners?graceful` keeps the listeners accepting.
    #[arg(long = "drain-time-s", default_value_t = 600)]
    drain_time_s: u64,
    /// With inbound listeners (a sidecar), how long after SIGTERM the other listeners
    /// keep serving before Strait may exit on its last connection closing (at most
    /// --drain-time-s).
    #[arg(long = "min-drain-time-s", default_value_t = 5)]
    min_drain_time_s: u64,
    /// How `/drain_listeners?graceful` tells connections to close: gradual (each at
    /// a random time within --drain-time-s, Envoy's default) or immediate (all at
    /// once). SIGTERM's drain is always immediate.
    #[arg(long = "drain-strategy", value_enum, default_value_t = DrainStrategyArg::Gradual)]
    drain_strategy: DrainStrategyArg,
    /// Write the admin listener's bound address to this file (useful with port 0).
    #[arg(long)]
    admin_address_path: Option<PathBuf>,
    /// Quick mode: listen here and proxy everything to --upstream, no config file.
    #[arg(long, requires = "upstream", conflicts_with = "config")]
    listen: Option<SocketAddr>,
    /// Quick mode upstream, host:port.
    #[arg(long, requires = "listen")]
    upstream: Option<String>,
    /// serve, or validate: check the config as a start would (YAML, translation,
    /// every local wasm plugin compiled and configured), print `configuration '<path>'
    /// OK` and exit 0, or the error and exit 1. Nothing is bound and no upstream is
    /// called, as in Envoy's `--mode validate`.
    #[arg(long, value_enum, default_value_t = Mode::Serve)]
    mode: Mode,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum DrainStrategyArg {
    Gradual,
    Immediate,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    Serve,
    Validate,
}

/// Transparent huge pages off for the process (unless `MIMALLOC_ALLOW_THP` asks for
/// them): mimalloc advises 2 MiB pages for its arena, and each heap then holds whole
/// huge pages however little it uses. An idle Strait measured 17.2 MiB RSS with them
/// (8 MiB of it huge pages) and 9.7 MiB without, and idle connections no longer cost
/// RSS in 2 MiB steps. A proxy's heap is a few MiB: TLB misses hardly matter.
///
/// It runs as an ELF constructor, before the first allocation touches the arena
/// (a huge page faulted in stays one); so it reads the environment without
/// allocating.
#[used]
#[link_section = ".init_array"]
static DISABLE_TRANSPARENT_HUGE_PAGES: extern "C" fn() = {
    extern "C" fn disable() {
        // SAFETY: `getenv` with a NUL-terminated name, read before any thread starts;
        // PR_SET_THP_DISABLE takes integer arguments only.
        unsafe {
            let asked = libc::getenv(c"MIMALLOC_ALLOW_THP".as_ptr());
            if !asked.is_null() && std::ffi::CStr::from_ptr(asked).to_bytes() != b"0" {
                return;
            }
            libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
        }
    }
    disable
};

fn main() {
    let cli = Cli::parse();
    let _ = strait::worker::MEMORY_TRIM.set(mimalloc_trim);
    let level = strait::logging::Level::parse(&cli.log_level).unwrap_or_else(|| {
        eprintln!(
            "strait: --log-level {}: not one of trace, debug, info, warn, error, critical, off",
            cli.log_level
        );
        std::process::exit(1);
    });
    let (filter, logging) = strait::logging::layer(level);
    {
        use tracing_subscriber::layer::SubscriberExt as _;
        use tracing_subscriber::util::SubscriberInitExt as _;
        tracing_subscriber::registry()
            .with(filter)
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .init();
    }
    strait::logging::install(logging);
    let source = match (cli.config, cli.listen, cli.upstream) {
        (Some(path), _, _) => Source::File(path),
        (None, Some(listen), Some(upstream)) => Source::Quick { listen, upstream },
        _ => unreachable!("clap requires --config-path or --listen with --upstream"),
    };
    if cli.mode == Mode::Validate {
        let name = match &source {
            Source::File(path) => path.display().to_string(),
            Source::Quick { .. } => "--listen/--upstream".to_owned(),
        };
        match app::validate(&source) {
            Ok(notes) => {
                for note in notes {
                    eprintln!("strait: {note}");
                }
                println!("configuration '{name}' OK");
                std::process::exit(0);
            }
            Err(e) => {
                eprintln!("strait: error initializing configuration '{name}': {e:#}");
                std::process::exit(1);
            }
        }
    }
    let options = Options {
        source,
        concurrency: cli
            .concurrency
            .filter(|n| *n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        drain_time: Duration::from_secs(cli.drain_time_s),
        min_drain_time: Duration::from_secs(cli.min_drain_time_s.min(cli.drain_time_s)),
        drain_strategy: match cli.drain_strategy {
            DrainStrategyArg::Gradual => app::DrainStrategy::Gradual,
            DrainStrategyArg::Immediate => app::DrainStrategy::Immediate,
        },
        admin_address_path: cli.admin_address_path,
    };
    match app::run(options) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("strait: {e:#}");
            std::process::exit(1);
        }
    }
}
