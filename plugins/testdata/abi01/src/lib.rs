//! Test plugin built with the proxy-wasm SDK 0.1 (ABI 0.1.0): headers callbacks
//! without `end_of_stream`, `proxy_get_configuration`, `proxy_continue_request`.
//! Request headers get `x-abi01-missing` (what reading an absent header returns:
//! ABI 0.1.0 answers an empty value, not `NotFound`), `x-abi01-config` (what
//! `proxy_get_configuration` gives a stream context), `x-abi01-root-config` (what it
//! gave the root context in `on_configure`) and `x-abi01-count` (the header count
//! the callback got). With
//! `x-abi01-pause` the request pauses and is resumed by the response of a call to
//! the cluster named there (`proxy_continue_request`). Responses get `x-abi01: on`.
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, LogLevel};

#[no_mangle]
pub fn _start() {
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { config: String::new() }) });
    proxy_wasm::set_http_context(|_, _| -> Box<dyn HttpContext> { Box::new(Stream) });
}

struct Root {
    config: String,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        if let Some(config) = self.get_configuration() {
            self.config = String::from_utf8_lossy(&config).into_owned();
        }
        // What the root context read, for the streams to report.
        let _ = self.set_shared_data("abi01-root-config", Some(self.config.as_bytes()), None);
        true
    }
}

struct Stream;

impl Context for Stream {
    fn on_http_call_response(&mut self, _: u32, _: usize, _: usize, _: usize) {
        let status = self.get_http_call_response_header(":status").unwrap_or_default();
        self.set_http_request_header("x-abi01-call", Some(&status));
        self.resume_http_request();
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, num_headers: usize) -> Action {
        let missing = self.get_http_request_header("x-not-there");
        self.set_http_request_header("x-abi01-missing", Some(&format!("{missing:?}")));
        let config = proxy_wasm::hostcalls::get_configuration()
            .ok()
            .flatten()
            .map(|c| String::from_utf8_lossy(&c).into_owned())
            .unwrap_or_default();
        self.set_http_request_header("x-abi01-config", Some(&config));
        let root = self.get_shared_data("abi01-root-config").0.unwrap_or_default();
        self.set_http_request_header("x-abi01-root-config", Some(&String::from_utf8_lossy(&root)));
        self.set_http_request_header("x-abi01-count", Some(&num_headers.to_string()));
        if let Some(cluster) = self.get_http_request_header("x-abi01-pause") {
            let headers = vec![(":method", "GET"), (":path", "/check"), (":authority", "auth")];
            if self
                .dispatch_http_call(&cluster, headers, None, vec![], Duration::from_secs(5))
                .is_ok()
            {
                return Action::Pause;
            }
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize) -> Action {
        self.set_http_response_header("x-abi01", Some("on"));
        Action::Continue
    }
}
