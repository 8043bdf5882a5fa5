//! The proxy-wasm host driven through `WasmHttpFilter` with plugins built from
//! `plugins/testdata` by the public Rust SDK.
mod common;

use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use strait_filters::wasm::shared::SharedData;
use strait_filters::wasm::{PluginConfig, WasmEngine, WasmError, WasmHttpFilter, WasmPlugin};
use strait_filters::{BodyBuffer, FilterStatus, HttpFilter};

fn headers_config() -> PluginConfig {
    let mut config = config("headers");
    config.configuration = "x-strait-plugin: on".into();
    config
}

#[test]
fn headers_plugin_reads_and_rewrites_request_and_response_headers() {
    let vm = worker_vm(headers_config());
    let mut filter = WasmHttpFilter::new(&vm);
    let mut head = request(
        "/hello?x=1",
        &[("x-remove-me", "1"), ("x-rewrite-path", "/rewritten")],
    );
    assert_eq!(
        filter.on_request_headers(&mut head, true),
        FilterStatus::Continue
    );
    assert_eq!(head.uri, "/rewritten");
    assert!(head.headers.get("x-remove-me").is_none());
    // :authority, :path, :method, :scheme + x-rewrite-path (x-remove-me is gone);
    // as in Envoy, `host` is :authority and not a header of its own.
    assert_eq!(
        header(&head.headers, "x-wasm-seen"),
        Some("GET /hello?x=1 5")
    );

    let mut response_head = response(200);
    assert_eq!(
        filter.on_response_headers(&mut response_head, true),
        FilterStatus::Continue
    );
    assert_eq!(
        header(&response_head.headers, "x-strait-plugin"),
        Some("on")
    );
    assert_eq!(
        header(&response_head.headers, "x-upstream-status"),
        Some("200")
    );
    // As in Envoy, the request head is gone once its callback continued: the
    // request.path property is NotFound in the response phase.
    assert_eq!(header(&response_head.headers, "x-request-path"), None);
    filter.on_log();
    assert!(filter.error().is_none());
}

#[test]
fn headers_plugin_answers_locally_when_asked_to_block() {
    let vm = worker_vm(headers_config());
    let mut filter = WasmHttpFilter::new(&vm);
    let mut head = request("/", &[("x-block", "yes")]);
    let FilterStatus::LocalReply(reply) = filter.on_request_headers(&mut head, true) else {
        panic!("expected a local reply");
    };
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(
        header(&reply.headers, "x-blocked-by"),
        Some("headers-plugin")
    );
    assert_eq!(&reply.body[..], b"blocked\n");
    // The request headers callback paused, so (as in Envoy) the response phase of
    // the local reply still sees the request.
    let mut local = response(403);
    filter.on_response_headers(&mut local, true);
    assert_eq!(header(&local.headers, "x-request-path"), Some("/"));
    filter.on_log();
}

#[test]
fn many_streams_share_one_vm() {
    let vm = worker_vm(headers_config());
    for _ in 0..50 {
        let mut filter = WasmHttpFilter::new(&vm);
        let mut head = request("/", &[]);
        assert_eq!(
            filter.on_request_headers(&mut head, true),
            FilterStatus::Continue
        );
        filter.on_log();
    }
    // A stream dropped without on_log still frees its context.
    drop(WasmHttpFilter::new(&vm));
    assert_eq!(vm.plugin().stats().vm_starts(), 1);
}

#[test]
fn bad_plugin_configuration_fails_vm_start() {
    let mut config = config("headers");
    config.configuration = "no separator".into();
    let vm = worker_vm(config);
    let error = vm.start().unwrap_err();
    assert!(
        matches!(
            error,
            WasmError::Start {
                callback: "proxy_on_configure",
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn body_plugin_buffers_and_rewrites_the_request_body() {
    let vm = worker_vm(config("body"));
    let mut filter = WasmHttpFilter::new(&vm);
    let mut head = request("/upload", &[("content-length", "20")]);
    assert_eq!(
        filter.on_request_headers(&mut head, false),
        FilterStatus::Continue
    );
    assert!(head.headers.get("content-length").is_none());

    let mut body = BodyBuffer::from(&b"my secret "[..]);
    assert_eq!(
        filter.on_request_body(&mut body, false),
        FilterStatus::StopIteration
    );
    // The chain holds the chunk back and grows the buffer with the next one.
    body.extend(b"and your secret");
    assert_eq!(
        filter.on_request_body(&mut body, true),
        FilterStatus::Continue
    );
    assert_eq!(body.as_bytes(), b"my ****** and your ******");

    let mut response_body = BodyBuffer::from(&b"ok\n"[..]);
    assert_eq!(
        filter.on_response_body(&mut response_body, true),
        FilterStatus::Continue
    );
    assert_eq!(response_body.as_bytes(), b"ok\n-- checked by body plugin\n");
    filter.on_log();
}

#[test]
fn shared_data_compare_and_swap_across_two_vms() {
    let mut config = headers_config();
    config.vm_id = "shared-data-cas".into();
    let plugin = WasmPlugin::new(WasmEngine::shared(), config).unwrap();
    let (worker_a, worker_b) = (
        strait_filters::wasm::WasmVm::new(plugin.clone()),
        strait_filters::wasm::WasmVm::new(plugin),
    );
    let bump = |vm, extra: &[(&str, &str)]| {
        let mut filter = WasmHttpFilter::new(vm);
        let mut headers = vec![("x-shared-key", "counter")];
        headers.extend_from_slice(extra);
        let mut head = request("/", &headers);
        assert_eq!(
            filter.on_request_headers(&mut head, true),
            FilterStatus::Continue
        );
        let seen = |name| header(&head.headers, name).unwrap().to_string();
        (
            seen("x-shared-status"),
            seen("x-shared-value"),
            seen("x-shared-cas-seen"),
        )
    };
    let (status, value, cas_after_a) = bump(&worker_a, &[]);
    assert_eq!((status.as_str(), value.as_str()), ("ok", "1"));
    let (status, value, _) = bump(&worker_b, &[]);
    assert_eq!((status.as_str(), value.as_str()), ("ok", "2"));
    // Worker A writes with the token it saw before B's write: rejected.
    let (status, _, _) = bump(&worker_a, &[("x-shared-cas", &cas_after_a)]);
    assert_eq!(status, "cas-mismatch");
    let (value, _) = SharedData::global()
        .get("shared-data-cas", "counter")
        .unwrap();
    assert_eq!(&value[..], b"2");
}

#[test]
fn trap_fails_the_stream_closed_and_the_vm_is_recreated() {
    let vm = worker_vm(config("trap"));
    for attempt in 1..=2 {
        let mut filter = WasmHttpFilter::new(&vm);
        let mut head = request("/", &[]);
        let FilterStatus::LocalReply(reply) = filter.on_request_headers(&mut head, true) else {
            panic!("expected a 500");
        };
        assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
        let error = filter.error().unwrap();
        assert!(
            matches!(
                error,
                WasmError::Trap {
                    callback: "proxy_on_request_headers",
                    ..
                }
            ),
            "{error}"
        );
        assert!(
            error.to_string().contains("\"trap\""),
            "names the plugin: {error}"
        );
        let WasmError::Trap {
            message, backtrace, ..
        } = error
        else {
            unreachable!("matched above")
        };
        assert!(message.contains("unreachable"), "{message}");
        assert!(backtrace.contains("on_http_request_headers"), "{backtrace}");
        // Later phases of a failed stream pass through.
        assert_eq!(
            filter.on_response_headers(&mut response(200), true),
            FilterStatus::Continue
        );
        filter.on_log();
        assert_eq!(vm.plugin().stats().vm_starts(), attempt);
    }
    assert_eq!(vm.plugin().stats().failures(), 2);
}

#[test]
fn trap_fails_open_when_configured() {
    let mut config = config("trap");
    config.fail_open = true;
    let vm = worker_vm(config);
    let mut filter = WasmHttpFilter::new(&vm);
    assert_eq!(
        filter.on_request_headers(&mut request("/", &[]), true),
        FilterStatus::Continue
    );
    assert!(filter.error().is_some());
}

#[test]
fn other_streams_of_a_failed_vm_fail_too() {
    let vm = worker_vm(config("trap"));
    let mut first = WasmHttpFilter::new(&vm);
    let mut second = WasmHttpFilter::new(&vm);
    assert!(matches!(
        first.on_request_headers(&mut request("/", &[]), true),
        FilterStatus::LocalReply(_)
    ));
    assert!(matches!(
        second.on_request_headers(&mut request("/", &[]), true),
        FilterStatus::LocalReply(_)
    ));
    assert!(matches!(second.error(), Some(WasmError::VmFailed { .. })));
}

#[test]
fn spin_is_stopped_by_the_cpu_deadline() {
    let vm = worker_vm(config("spin"));
    let mut filter = WasmHttpFilter::new(&vm);
    let started = Instant::now();
    let status = filter.on_request_headers(&mut request("/", &[]), true);
    let elapsed = started.elapsed();
    assert!(matches!(status, FilterStatus::LocalReply(_)));
    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
    let error = filter.error().unwrap();
    assert!(matches!(error, WasmError::Deadline { .. }), "{error}");
}

#[test]
fn membomb_is_stopped_by_the_memory_cap() {
    let mut config = config("membomb");
    config.limits.memory_bytes = 16 << 20;
    let vm = worker_vm(config);
    let mut filter = WasmHttpFilter::new(&vm);
    let status = filter.on_request_headers(&mut request("/", &[]), true);
    assert!(matches!(status, FilterStatus::LocalReply(_)));
    let error = filter.error().unwrap();
    assert!(
        matches!(
            error,
            WasmError::MemoryLimit {
                limit_bytes: 16777216,
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn bytes_that_are_not_wasm_are_a_compile_error() {
    let error = WasmPlugin::new(
        WasmEngine::shared(),
        PluginConfig::new("junk", &b"not wasm"[..]),
    )
    .err()
    .unwrap();
    assert!(matches!(error, WasmError::Compile { .. }), "{error}");
}

#[test]
fn an_unknown_import_is_named() {
    let module = wat::parse_str(
        r#"(module
            (import "env" "proxy_no_such_call" (func (param i32) (result i32)))
            (memory (export "memory") 1)
            (func (export "proxy_abi_version_0_2_1"))
            (func (export "proxy_on_memory_allocate") (param i32) (result i32) i32.const 0)
            (func (export "proxy_on_context_create") (param i32 i32)))"#,
    )
    .unwrap();
    let error = WasmPlugin::new(WasmEngine::shared(), PluginConfig::new("importer", module))
        .err()
        .unwrap();
    assert!(
        matches!(&error, WasmError::UnknownImport { module, name, .. } if module == "env" && name == "proxy_no_such_call"),
        "{error}"
    );
    assert!(error.to_string().contains("env::proxy_no_such_call"));
}

#[test]
fn a_module_without_the_abi_export_is_rejected() {
    let module = wat::parse_str(r#"(module (memory (export "memory") 1))"#).unwrap();
    let error = WasmPlugin::new(WasmEngine::shared(), PluginConfig::new("plain", module))
        .err()
        .unwrap();
    assert!(matches!(error, WasmError::Abi { .. }), "{error}");
}

/// Every host call the Rust SDK 0.2.5 declares, with its wasm signature: a module
/// importing all of them must link.
const SDK_HOSTCALLS: &[(&str, &str)] = &[
    ("proxy_log", "i32 i32 i32"),
    ("proxy_get_log_level", "i32"),
    ("proxy_get_current_time_nanoseconds", "i32"),
    ("proxy_set_tick_period_milliseconds", "i32"),
    ("proxy_get_buffer_bytes", "i32 i32 i32 i32 i32"),
    ("proxy_set_buffer_bytes", "i32 i32 i32 i32 i32"),
    ("proxy_get_header_map_pairs", "i32 i32 i32"),
    ("proxy_set_header_map_pairs", "i32 i32 i32"),
    ("proxy_get_header_map_value", "i32 i32 i32 i32 i32"),
    ("proxy_remove_header_map_value", "i32 i32 i32"),
    ("proxy_replace_header_map_value", "i32 i32 i32 i32 i32"),
    ("proxy_add_header_map_value", "i32 i32 i32 i32 i32"),
    ("proxy_get_property", "i32 i32 i32 i32"),
    ("proxy_set_property", "i32 i32 i32 i32"),
    ("proxy_get_shared_data", "i32 i32 i32 i32 i32"),
    ("proxy_set_shared_data", "i32 i32 i32 i32 i32"),
    ("proxy_register_shared_queue", "i32 i32 i32"),
    ("proxy_resolve_shared_queue", "i32 i32 i32 i32 i32"),
    ("proxy_dequeue_shared_queue", "i32 i32 i32"),
    ("proxy_enqueue_shared_queue", "i32 i32 i32"),
    ("proxy_continue_stream", "i32"),
    ("proxy_close_stream", "i32"),
    (
        "proxy_send_local_response",
        "i32 i32 i32 i32 i32 i32 i32 i32",
    ),
    ("proxy_http_call", "i32 i32 i32 i32 i32 i32 i32 i32 i32 i32"),
    (
        "proxy_grpc_call",
        "i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32",
    ),
    ("proxy_grpc_stream", "i32 i32 i32 i32 i32 i32 i32 i32 i32"),
    ("proxy_grpc_send", "i32 i32 i32 i32"),
    ("proxy_grpc_cancel", "i32"),
    ("proxy_grpc_close", "i32"),
    ("proxy_get_status", "i32 i32 i32"),
    ("proxy_set_effective_context", "i32"),
    ("proxy_call_foreign_function", "i32 i32 i32 i32 i32 i32"),
    ("proxy_done", ""),
    ("proxy_define_metric", "i32 i32 i32 i32"),
    ("proxy_get_metric", "i32 i32"),
    ("proxy_record_metric", "i32 i64"),
    ("proxy_increment_metric", "i32 i64"),
];

#[test]
fn every_sdk_hostcall_links_and_an_unknown_foreign_function_is_not_found() {
    let imports: String = SDK_HOSTCALLS
        .iter()
        .map(|(name, params)| {
            format!("(import \"env\" \"{name}\" (func ${name} (param {params}) (result i32)))\n")
        })
        .collect();
    // on_request_headers continues only if proxy_http_call answered BadArgument (2:
    // no cluster, no headers) and proxy_call_foreign_function NotFound (1: no
    // function has the empty name).
    let module = wat::parse_str(format!(
        r#"(module
            {imports}
            (memory (export "memory") 1)
            (func (export "proxy_abi_version_0_2_1"))
            (func (export "proxy_on_memory_allocate") (param i32) (result i32) i32.const 1024)
            (func (export "proxy_on_context_create") (param i32 i32))
            (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
                (call $proxy_http_call (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)
                    (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0))
                i32.const 2
                i32.ne
                (call $proxy_call_foreign_function (i32.const 0) (i32.const 0) (i32.const 0)
                    (i32.const 0) (i32.const 0) (i32.const 0))
                i32.const 1
                i32.ne
                i32.or))"#
    ))
    .unwrap();
    let plugin = WasmPlugin::new(
        WasmEngine::shared(),
        PluginConfig::new("all-imports", module),
    )
    .unwrap();
    let vm = strait_filters::wasm::WasmVm::new(plugin);
    let mut filter = WasmHttpFilter::new(&vm);
    assert_eq!(
        filter.on_request_headers(&mut request("/", &[]), true),
        FilterStatus::Continue
    );
}

#[test]
fn a_vm_that_cannot_start_fails_the_stream_closed() {
    let mut config = config("headers");
    config.configuration = "no separator".into();
    let vm = worker_vm(config);
    let mut filter = WasmHttpFilter::new(&vm);
    let status = filter.on_request_headers(&mut request("/", &[]), true);
    assert!(matches!(status, FilterStatus::LocalReply(reply) if reply.status == 500));
    assert!(matches!(filter.error(), Some(WasmError::Start { .. })));
    assert_eq!(
        filter.on_response_headers(&mut response(200), true),
        FilterStatus::Continue
    );
    filter.on_log();
}

#[test]
fn tick_period_is_stored_and_on_tick_runs_on_the_root_context() {
    let module = wat::parse_str(
        r#"(module
            (import "env" "proxy_set_tick_period_milliseconds" (func $tick (param i32) (result i32)))
            (memory (export "memory") 1)
            (global $ticks (mut i32) (i32.const 0))
            (func (export "proxy_abi_version_0_2_0"))
            (func (export "proxy_on_memory_allocate") (param i32) (result i32) i32.const 1024)
            (func (export "proxy_on_context_create") (param i32 i32))
            (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
                (drop (call $tick (i32.const 250)))
                i32.const 1)
            ;; traps on the second tick, so the test sees both calls happen
            (func (export "proxy_on_tick") (param i32)
                (global.set $ticks (i32.add (global.get $ticks) (i32.const 1)))
                (if (i32.eq (global.get $ticks) (i32.const 2)) (then unreachable))))"#,
    )
    .unwrap();
    let plugin =
        WasmPlugin::new(WasmEngine::shared(), PluginConfig::new("ticker", module)).unwrap();
    assert_eq!(
        plugin.abi_version(),
        strait_filters::wasm::module::AbiVersion::V0_2_0
    );
    let vm = strait_filters::wasm::WasmVm::new(plugin);
    vm.start().unwrap();
    assert_eq!(vm.tick_period(), Duration::from_millis(250));
    vm.on_tick().unwrap();
    assert!(matches!(
        vm.on_tick(),
        Err(WasmError::Trap {
            callback: "proxy_on_tick",
            ..
        })
    ));
}

#[test]
fn tick_plugin_counts_ticks_in_a_metric_and_shared_data() {
    use strait_filters::wasm::shared::{Metrics, SharedData};
    let vm = worker_vm(config("tick"));
    vm.start().unwrap();
    assert_eq!(vm.tick_period(), Duration::from_millis(10));
    let before = Metrics::global()
        .get("tick_plugin_ticks")
        .map_or(0, |m| m.value());
    for _ in 0..3 {
        vm.on_tick().unwrap();
    }
    let metric = Metrics::global().get("tick_plugin_ticks").unwrap();
    assert_eq!(metric.value() - before, 3);
    let (ticks, _) = SharedData::global().get("vm-tick", "ticks").unwrap();
    assert!(String::from_utf8_lossy(&ticks).parse::<u64>().unwrap() >= 3);
}
