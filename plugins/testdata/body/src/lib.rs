//! Test plugin: buffers the whole request body, masks every `secret` in it, and
//! appends a trailer line to the response body.
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_http_context(|_, _| -> Box<dyn HttpContext> { Box::new(BodyStream) });
}}

struct BodyStream;

impl Context for BodyStream {}

impl HttpContext for BodyStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // The rewrite may change the length.
        self.set_http_request_header("content-length", None);
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        let Some(body) = self.get_http_request_body(0, body_size) else {
            return Action::Continue;
        };
        let masked = String::from_utf8_lossy(&body).replace("secret", "******");
        self.set_http_request_body(0, body_size, masked.as_bytes());
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // The appended line changes the length.
        self.set_http_response_header("content-length", None);
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if end_of_stream {
            // start == size appends.
            self.set_http_response_body(body_size, 0, b"-- checked by body plugin\n");
        }
        Action::Continue
    }
}
