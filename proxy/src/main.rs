//! `strait`: the proxy binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use mimalloc::MiMalloc;
use strait::app::{self, Options, Source};

/// mimalloc: per-thread free lists suit thread-per-core workers that allocate and free
/// on the same thread, and it returns memory to the OS after bursts (glibc's arenas
/// kept ~130 MiB after the h2-64k benchmark).
#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

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
    /// Seconds to let in-flight requests finish after SIGTERM.
    #[arg(long = "drain-time-s", default_value_t = 600)]
    drain_time_s: u64,
    /// Write the admin listener's bound address to this file (useful with port 0).
    #[arg(long)]
    admin_address_path: Option<PathBuf>,
    /// Quick mode: listen here and proxy everything to --upstream, no config file.
    #[arg(long, requires = "upstream", conflicts_with = "config")]
    listen: Option<SocketAddr>,
    /// Quick mode upstream, host:port.
    #[arg(long, requires = "listen")]
    upstream: Option<String>,
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
    let level = match cli.log_level.as_str() {
        "critical" => "error",
        "off" => "off",
        l => l,
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(format!("{level},h2=warn,hyper=warn"))
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let source = match (cli.config, cli.listen, cli.upstream) {
        (Some(path), _, _) => Source::File(path),
        (None, Some(listen), Some(upstream)) => Source::Quick { listen, upstream },
        _ => unreachable!("clap requires --config-path or --listen with --upstream"),
    };
    let options = Options {
        source,
        concurrency: cli
            .concurrency
            .filter(|n| *n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        drain_time: Duration::from_secs(cli.drain_time_s),
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
