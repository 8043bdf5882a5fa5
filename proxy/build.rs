//! Generates the gRPC test service (`tests/proto/echo.proto`) for the integration tests,
//! with a vendored `protoc` so the build needs nothing installed; and lays out the
//! release binary's code (`link-order.txt`).

use std::env;
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=tests/proto/echo.proto");
    if env::var_os("PROTOC").is_none() {
        let protoc =
            protoc_bin_vendored::protoc_bin_path().expect("vendored protoc for this platform");
        env::set_var("PROTOC", protoc);
    }
    tonic_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&["tests/proto/echo.proto"], &["tests/proto"])
        .expect("tests/proto/echo.proto compiles");
    link_order();
}

/// Release links put the functions `perf/order` saw running (every perf scenario's,
/// hottest first, then start-up's) at the front of `.text`, so the code a running proxy uses is
/// a few contiguous MiB instead of pages scattered over the whole section: less resident
/// code (each page fault maps a 64 KiB window around it) and fewer i-TLB misses. The
/// list is `link-order.txt`, or the file `STRAIT_LINK_ORDER` names (`perf/pgo` makes
/// one for its profile-guided build, whose functions differ). Only where the linker is
/// Rust's default lld (x86_64 Linux, no linker configured: GNU ld does not take the
/// option); a name it does not find (a stale list) is skipped silently, costing speed,
/// never correctness.
fn link_order() {
    println!("cargo:rerun-if-env-changed=STRAIT_LINK_ORDER");
    println!("cargo:rerun-if-env-changed=STRAIT_NO_LINK_ORDER");
    let list = match env::var_os("STRAIT_LINK_ORDER") {
        Some(path) => PathBuf::from(path),
        None => {
            Path::new(&env::var("CARGO_MANIFEST_DIR").expect("set by cargo")).join("link-order.txt")
        }
    };
    println!("cargo:rerun-if-changed={}", list.display());
    let release = env::var("PROFILE").is_ok_and(|p| p == "release");
    println!("cargo:rerun-if-env-changed=RUSTC_LINKER");
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    // `-C linker=…` (one flag or two) or a `-fuse-ld=` link argument; not a flag that
    // merely contains the word, such as `-Clinker-plugin-lto`.
    let own_linker = env::var_os("RUSTC_LINKER").is_some()
        || flags.split('\x1f').any(|f| {
            f.starts_with("-Clinker=") || f.starts_with("linker=") || f.contains("-fuse-ld")
        });
    let lld_default =
        env::var("TARGET").is_ok_and(|t| t == "x86_64-unknown-linux-gnu") && !own_linker;
    if release && lld_default && list.exists() && env::var_os("STRAIT_NO_LINK_ORDER").is_none() {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            list.display()
        );
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}
