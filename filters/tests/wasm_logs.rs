//! What the host logs when a plugin logs or fails; a test binary of its own because
//! it installs the global tracing subscriber.
mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::*;
use strait_filters::wasm::WasmHttpFilter;
use strait_filters::HttpFilter;

/// Collects formatted log lines.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn plugin_logs_panics_and_traps_reach_the_proxy_log_with_the_plugin_name() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let mut headers = config("headers");
    headers.configuration = "x-a: b".into();
    let vm = worker_vm(headers);
    let mut filter = WasmHttpFilter::new(&vm);
    filter.on_request_headers(&mut request("/logged", &[]), true);
    filter.on_log();

    let vm = worker_vm(config("trap"));
    let mut filter = WasmHttpFilter::new(&vm);
    filter.on_request_headers(&mut request("/", &[]), true);

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let line = |needle: &str| {
        logs.lines()
            .find(|line| line.contains(needle))
            .unwrap_or_else(|| panic!("no log line with {needle:?} in:\n{logs}"))
            .to_string()
    };
    // proxy_log from the SDK's `log::info!`
    assert!(line("GET /logged").contains("plugin=\"headers\""));
    // the panic message, written by Rust std to stderr (fd_write)
    assert!(line("deliberate panic").contains("plugin=\"trap\""));
    // the trap, with the callback it happened in
    let trap = line("plugin failed");
    assert!(trap.contains("plugin=trap"), "{trap}");
    assert!(trap.contains("proxy_on_request_headers"), "{trap}");
}
