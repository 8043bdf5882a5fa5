//! Test plugin: never returns from request headers, so the host's CPU deadline must stop it.
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

proxy_wasm::main! {{
    proxy_wasm::set_http_context(|_, _| -> Box<dyn HttpContext> { Box::new(Stream) });
}}

struct Stream;

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let mut spins: u64 = 0;
        loop {
            // black_box keeps the loop from being optimised into something else.
            spins = std::hint::black_box(spins.wrapping_add(1));
        }
    }
}
