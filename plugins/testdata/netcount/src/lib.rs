//! Test plugin for `envoy.filters.network.wasm`: sits on the raw bytes of an HTTP/1.1
//! connection in front of the connection manager.
//!
//! * counts connections, bytes read and written, closes and logs in the counters
//!   `netcount_connections`, `netcount_downstream_bytes`, `netcount_upstream_bytes`,
//!   `netcount_closes_remote`, `netcount_closes_local`, `netcount_logs`;
//! * holds (`Pause`) a request head until it is complete, so a head split over
//!   several writes reaches the connection manager in one piece;
//! * rewrites `/net-before` to `/net-after-rewrite` in request bytes (the length
//!   changes);
//! * adds `x-net-filter: seen` and `x-net-peer: <client IP>` (from the
//!   `source.address` property) after each response status line;
//! * closes the connection (`close_downstream`) when the request bytes contain
//!   `x-net-close: now`; the request never reaches the connection manager;
//! * panics (a trap) when the request bytes contain `x-net-trap: yes`.
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, RootContext, StreamContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType, PeerType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(NetRoot) });
}}

struct NetRoot;

impl Context for NetRoot {}

impl RootContext for NetRoot {
    fn create_stream_context(&self, _context_id: u32) -> Option<Box<dyn StreamContext>> {
        Some(Box::new(NetStream {
            peer: String::new(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::StreamContext)
    }
}

struct NetStream {
    peer: String,
}

fn count(name: &str, by: usize) {
    // Hosts refuse a counter increment of zero (Envoy answers BadArgument).
    if by == 0 {
        return;
    }
    let id = hostcalls::define_metric(MetricType::Counter, name).expect("define metric");
    hostcalls::increment_metric(id, by as i64).expect("increment metric");
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn replace_all(data: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut rest = data;
    while let Some(at) = find(rest, from) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(to);
        rest = &rest[at + from.len()..];
    }
    out.extend_from_slice(rest);
    out
}

impl Context for NetStream {}

impl StreamContext for NetStream {
    fn on_new_connection(&mut self) -> Action {
        count("netcount_connections", 1);
        let address = self
            .get_property(vec!["source", "address"])
            .and_then(|v| String::from_utf8(v).ok())
            .unwrap_or_default();
        self.peer = address
            .rsplit_once(':')
            .map_or(address.clone(), |(ip, _)| ip.to_owned());
        Action::Continue
    }

    fn on_downstream_data(&mut self, data_size: usize, _end_of_stream: bool) -> Action {
        let data = self.get_downstream_data(0, data_size).unwrap_or_default();
        if find(&data, b"x-net-trap: yes").is_some() {
            panic!("netcount: trap requested");
        }
        if find(&data, b"x-net-close: now").is_some() {
            self.close_downstream();
            return Action::Pause;
        }
        // An incomplete HTTP/1 request head: wait for the rest.
        let starts_head = [&b"GET "[..], b"POST ", b"PUT ", b"HEAD "]
            .iter()
            .any(|method| data.starts_with(method));
        if starts_head && find(&data, b"\r\n\r\n").is_none() {
            return Action::Pause;
        }
        count("netcount_downstream_bytes", data_size);
        if find(&data, b"/net-before").is_some() {
            let rewritten = replace_all(&data, b"/net-before", b"/net-after-rewrite");
            self.set_downstream_data(0, data_size, &rewritten);
        }
        Action::Continue
    }

    fn on_upstream_data(&mut self, data_size: usize, _end_of_stream: bool) -> Action {
        count("netcount_upstream_bytes", data_size);
        let data = self.get_upstream_data(0, data_size).unwrap_or_default();
        if data.starts_with(b"HTTP/1.1 ") {
            if let Some(line_end) = find(&data, b"\r\n") {
                let mut out = data[..line_end + 2].to_vec();
                out.extend_from_slice(b"x-net-filter: seen\r\n");
                out.extend_from_slice(format!("x-net-peer: {}\r\n", self.peer).as_bytes());
                out.extend_from_slice(&data[line_end + 2..]);
                self.set_upstream_data(0, data_size, &out);
            }
        }
        Action::Continue
    }

    fn on_downstream_close(&mut self, peer_type: PeerType) {
        match peer_type {
            PeerType::Remote => count("netcount_closes_remote", 1),
            _ => count("netcount_closes_local", 1),
        }
    }

    fn on_log(&mut self) {
        count("netcount_logs", 1);
    }
}
