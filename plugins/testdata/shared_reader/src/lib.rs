//! Test plugin: an HTTP filter that reads what a bootstrap service (`service`) with
//! the same `vm_id` published in shared data, into the response headers
//! `x-service-message` (`service_message`, or `none`) and `x-service-ticked` (`yes`
//! once `service_ticks` is set, else `no`).
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(ReaderRoot) });
}}

struct ReaderRoot;

impl Context for ReaderRoot {}

impl RootContext for ReaderRoot {
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Reader))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Reader;

impl Context for Reader {}

impl HttpContext for Reader {
    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let message = self
            .get_shared_data("service_message")
            .0
            .and_then(|v| String::from_utf8(v).ok())
            .unwrap_or_else(|| "none".to_owned());
        let ticked = match self.get_shared_data("service_ticks").0 {
            Some(_) => "yes",
            None => "no",
        };
        self.set_http_response_header("x-service-message", Some(&message));
        self.set_http_response_header("x-service-ticked", Some(ticked));
        Action::Continue
    }
}
