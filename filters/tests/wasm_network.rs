//! The network-filter side of the host without sockets: `WasmNetworkFilter` driven
//! through a connection's life with the `netcount` test plugin. A test binary of its
//! own because plugin metrics are process-wide.
mod common;

use std::sync::Arc;

use common::*;
use strait_filters::wasm::shared::Metrics;
use strait_filters::wasm::{ConnectionInfo, NetworkStatus, PeerType, WasmNetworkFilter};
use strait_filters::BodyBuffer;

fn connection(id: u64) -> Arc<ConnectionInfo> {
    Arc::new(ConnectionInfo {
        id,
        source: "10.1.2.3:4567".parse().unwrap(),
        destination: "127.0.0.1:10000".parse().unwrap(),
    })
}

fn counter(name: &str) -> u64 {
    Metrics::global()
        .get(&format!("netcount_{name}"))
        .map_or(0, |m| m.value())
}

#[test]
fn a_connection_through_the_network_callbacks() {
    let vm = worker_vm(config("netcount"));
    let mut filter = WasmNetworkFilter::new(&vm, connection(7));
    assert_eq!(counter("connections"), 1);

    // An incomplete head is held (Pause); the next call sees it plus the new bytes.
    let mut held = BodyBuffer::from(&b"GET /net-be"[..]);
    assert_eq!(
        filter.on_downstream_data(&mut held, false),
        NetworkStatus::StopIteration
    );
    held.extend(b"fore HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(
        filter.on_downstream_data(&mut held, false),
        NetworkStatus::Continue
    );
    // set_buffer_bytes replaced the whole buffer, with a longer one.
    assert_eq!(
        held.as_bytes(),
        b"GET /net-after-rewrite HTTP/1.1\r\nHost: a\r\n\r\n"
    );

    // The response head gets headers, one from the `source.address` property.
    let mut written = BodyBuffer::from(&b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"[..]);
    assert_eq!(
        filter.on_upstream_data(&mut written, false),
        NetworkStatus::Continue
    );
    assert_eq!(
        written.as_bytes(),
        b"HTTP/1.1 200 OK\r\nx-net-filter: seen\r\nx-net-peer: 10.1.2.3\r\ncontent-length: 0\r\n\r\n"
    );
    assert!(!filter.close_requested());

    // proxy_close_stream(Downstream) asks the proxy to close.
    let mut marker = BodyBuffer::from(&b"GET / HTTP/1.1\r\nx-net-close: now\r\n\r\n"[..]);
    assert_eq!(
        filter.on_downstream_data(&mut marker, false),
        NetworkStatus::StopIteration
    );
    assert!(filter.close_requested());
    assert!(filter.error().is_none());

    // Closing runs the close callback, then on_done / on_log / on_delete, once.
    filter.on_downstream_close(PeerType::Local);
    filter.on_downstream_close(PeerType::Remote);
    drop(filter);
    assert_eq!(counter("closes_local"), 1);
    assert_eq!(counter("closes_remote"), 0);
    assert_eq!(counter("logs"), 1);

    // A trap fails closed; the next connection gets a fresh VM.
    let mut failing = WasmNetworkFilter::new(&vm, connection(8));
    let mut trap = BodyBuffer::from(&b"GET / HTTP/1.1\r\nx-net-trap: yes\r\n\r\n"[..]);
    assert_eq!(
        failing.on_downstream_data(&mut trap, false),
        NetworkStatus::StopIteration
    );
    assert!(failing.close_requested());
    assert!(failing.error().is_some());
    let mut next = WasmNetworkFilter::new(&vm, connection(9));
    let mut data = BodyBuffer::from(&b"GET / HTTP/1.1\r\n\r\n"[..]);
    assert_eq!(
        next.on_downstream_data(&mut data, false),
        NetworkStatus::Continue
    );
    assert!(next.error().is_none());
    assert_eq!(vm.plugin().stats().vm_starts(), 2);
    assert_eq!(vm.plugin().stats().failures(), 1);
}

#[test]
fn connection_contexts_make_http_callouts() {
    // A connection context dispatches a call like a stream context: the module
    // closes the connection only if a well-formed call was accepted (status 0), and
    // the call waits for the embedder to take it.
    let pairs = {
        let mut wire = Vec::new();
        let pairs: [(&str, &str); 3] = [(":method", "GET"), (":path", "/"), (":authority", "a")];
        wire.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
        for (n, v) in pairs {
            wire.extend_from_slice(&(n.len() as u32).to_le_bytes());
            wire.extend_from_slice(&(v.len() as u32).to_le_bytes());
        }
        for (n, v) in pairs {
            wire.extend_from_slice(n.as_bytes());
            wire.push(0);
            wire.extend_from_slice(v.as_bytes());
            wire.push(0);
        }
        wire
    };
    let data: String = pairs.iter().map(|b| format!("\\{b:02x}")).collect();
    let module = wat::parse_str(format!(
        r#"(module
            (import "env" "proxy_http_call" (func $call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
            (import "env" "proxy_close_stream" (func $close (param i32) (result i32)))
            (memory (export "memory") 1)
            (data (i32.const 100) "c")
            (data (i32.const 200) "{data}")
            (func (export "proxy_abi_version_0_2_1"))
            (func (export "proxy_on_memory_allocate") (param i32) (result i32) i32.const 1024)
            (func (export "proxy_on_context_create") (param i32 i32))
            (func (export "proxy_on_new_connection") (param i32) (result i32)
                (if (i32.eq
                        (call $call (i32.const 100) (i32.const 1) (i32.const 200) (i32.const {len})
                            (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)
                            (i32.const 0) (i32.const 300))
                        (i32.const 0))
                    (then (drop (call $close (i32.const 2)))))
                i32.const 0))"#,
        len = pairs.len()
    ))
    .unwrap();
    let vm = worker_vm(strait_filters::wasm::PluginConfig::new(
        "net-callout",
        module,
    ));
    let filter = WasmNetworkFilter::new(&vm, connection(9));
    assert!(
        filter.close_requested(),
        "proxy_http_call must answer Unimplemented"
    );
}
