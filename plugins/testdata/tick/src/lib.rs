//! Test plugin: asks for a tick every 10 ms and counts the ticks in the counter
//! `tick_plugin_ticks` and in the shared-data key `ticks` (so a test sees them from
//! the admin endpoint or another VM). Streams pass untouched.
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel, MetricType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(TickRoot { ticks_metric: 0 })
    });
}}

struct TickRoot {
    ticks_metric: u32,
}

impl Context for TickRoot {}

impl RootContext for TickRoot {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        self.ticks_metric =
            proxy_wasm::hostcalls::define_metric(MetricType::Counter, "tick_plugin_ticks")
                .expect("define metric");
        self.set_tick_period(Duration::from_millis(10));
        true
    }

    fn on_tick(&mut self) {
        proxy_wasm::hostcalls::increment_metric(self.ticks_metric, 1).expect("metric");
        let (value, cas) = self.get_shared_data("ticks");
        let ticks: u64 = value
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        // A CAS mismatch means another worker's VM ticked in between; skip this one.
        let _ = self.set_shared_data("ticks", Some((ticks + 1).to_string().as_bytes()), cas);
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(TickStream))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct TickStream;

impl Context for TickStream {}

impl HttpContext for TickStream {}
