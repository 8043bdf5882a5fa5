//! Strait: a high-performance L4/L7 proxy configured with Envoy's v3 API.
//!
//! Threads: N workers, each a current-thread Tokio runtime with its own `SO_REUSEPORT`
//! sockets and upstream pools (`worker`, `listener`, `pool`); the main thread runs the
//! admin API, reloads and DNS (`app`, `admin`, `reload`). Config: `strait_xds` turns
//! YAML into an immutable `Snapshot`; `runtime` adds stat handles and cluster state
//! and publishes it through an `ArcSwap`. A request: `conn` → `router` → `pool`, with
//! `body` streaming both ways and `stream::StreamGuard` recording it exactly once.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod app;
pub mod attempts;
pub mod body;
pub mod breaker;
pub mod callout;
mod cells;
pub mod chain;
pub mod clock;
pub mod cluster;
pub mod config_dump;
pub mod conn;
pub mod error;
pub mod fault;
pub mod framing;
pub mod h1;
pub mod h1_client;
pub mod h1_server;
mod h2_frame;
pub mod h2_server;
pub mod headers;
pub mod health;
pub mod health_filter;
mod hpack;
pub mod lb;
pub mod listener;
pub mod logging;
pub mod netfilter;
pub mod outlier;
pub mod pool;
pub mod rate_limit;
pub mod reload;
pub mod retry;
pub mod router;
pub mod runtime;
pub mod socket;
pub mod stats;
pub mod stream;
pub mod timeouts;
pub mod wasm_remote;
pub mod wasm_service;
pub mod worker;

/// Pins a value in a new box, written into the allocation where it is built: with
/// `Box::pin` the compiler builds a large future on the stack and copies it into its
/// box (the request future is ~7 KiB, an attempt's ~2.4 KiB; an attempt's copy was
/// ~230 instructions). A macro, not a function: passed as an argument, the value is
/// built on the stack first, whatever the inlining.
#[macro_export]
macro_rules! pin_in_place {
    ($value:expr) => {
        Box::into_pin(Box::write(Box::new_uninit(), $value))
    };
}

/// hyper's executor for the tasks it spawns itself (an HTTP/2 client stream each):
/// each future goes into a box of its own first. tokio's task cell
/// is 128-byte aligned; holding a stream's future inline makes it a size that is not a
/// power of two, which mimalloc serves only by over-allocating on its slow path
/// (~500 instructions per request, callgrind). Boxed, the cell is 128 bytes, on the
/// fast path.
#[derive(Clone, Copy)]
pub struct BoxingExecutor;

impl<F> hyper::rt::Executor<F> for BoxingExecutor
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        tokio::spawn(crate::clock::Scoped(pin_in_place!(future)));
    }
}
