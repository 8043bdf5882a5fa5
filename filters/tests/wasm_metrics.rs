//! Plugin metrics; a test binary of its own because metrics are process-wide.
mod common;

use common::*;
use strait_filters::wasm::shared::{MetricKind, Metrics};
use strait_filters::wasm::WasmHttpFilter;
use strait_filters::{FilterStatus, HttpFilter};

#[test]
fn headers_plugin_counts_requests_across_vms() {
    let mut config = config("headers");
    config.configuration = "x-a: b".into();
    let (first, second) = (worker_vm(config.clone()), worker_vm(config));
    for vm in [&first, &second, &first] {
        let mut filter = WasmHttpFilter::new(vm);
        let status = filter.on_request_headers(&mut request("/", &[]), true);
        assert_eq!(status, FilterStatus::Continue);
        filter.on_log();
    }
    let metric = Metrics::global().get("headers_requests_total").unwrap();
    assert_eq!(metric.kind, MetricKind::Counter);
    assert_eq!(metric.value(), 3);
}
