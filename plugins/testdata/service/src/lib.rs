//! Test plugin for a bootstrap wasm service (`envoy.bootstrap.wasm`): publishes its
//! plugin configuration in the shared-data key `service_message` (at configure time,
//! then on every tick) and counts its ticks in `service_ticks` and in the counter
//! `service_plugin_ticks`; counts its VMs (one per `proxy_on_configure`) in
//! `service_plugin_vms`. Filters with the same `vm_id` read the shared data.
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, RootContext};
use proxy_wasm::types::{LogLevel, MetricType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Service { message: Vec::new(), ticks_metric: 0 })
    });
}}

struct Service {
    message: Vec<u8>,
    ticks_metric: u32,
}

impl Context for Service {}

impl RootContext for Service {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        self.message = self.get_plugin_configuration().unwrap_or_default();
        self.ticks_metric =
            hostcalls::define_metric(MetricType::Counter, "service_plugin_ticks").expect("metric");
        let vms =
            hostcalls::define_metric(MetricType::Counter, "service_plugin_vms").expect("metric");
        hostcalls::increment_metric(vms, 1).expect("metric");
        self.set_shared_data("service_message", Some(&self.message), None)
            .expect("set shared data");
        self.set_tick_period(Duration::from_millis(10));
        true
    }

    fn on_tick(&mut self) {
        hostcalls::increment_metric(self.ticks_metric, 1).expect("metric");
        let (value, cas) = self.get_shared_data("service_ticks");
        let ticks: u64 = value
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let _ = self.set_shared_data(
            "service_ticks",
            Some((ticks + 1).to_string().as_bytes()),
            cas,
        );
        let _ = self.set_shared_data("service_message", Some(&self.message), None);
    }
}
