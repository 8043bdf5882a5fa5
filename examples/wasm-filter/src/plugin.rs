//! The plugin's contexts: the root context reads the configuration and defines the
//! metric; one stream context per request adds the header, counts and logs.
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};

use crate::{log_line, ResponseHeader};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(ExampleRoot { header: None, requests: 0 })
    });
}}

struct ExampleRoot {
    header: Option<ResponseHeader>,
    /// The id `proxy_define_metric` gave the request counter.
    requests: u32,
}

impl Context for ExampleRoot {}

impl RootContext for ExampleRoot {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        match proxy_wasm::hostcalls::define_metric(MetricType::Counter, "example_requests_total") {
            Ok(id) => {
                self.requests = id;
                true
            }
            Err(status) => {
                log::error!("cannot define the request counter: {status:?}");
                false
            }
        }
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        match ResponseHeader::parse(&config) {
            Ok(header) => {
                log::info!("adding `{}: {}` to responses", header.header, header.value);
                self.header = Some(header);
                true
            }
            Err(error) => {
                log::error!("bad plugin configuration: {error}");
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(ExampleStream {
            header: self.header.clone(),
            requests: self.requests,
            method: String::new(),
            path: String::new(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct ExampleStream {
    header: Option<ResponseHeader>,
    requests: u32,
    method: String,
    path: String,
}

impl Context for ExampleStream {}

impl HttpContext for ExampleStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // Counting cannot fail once the metric is defined; ignore the status anyway so
        // a counter never fails a request.
        let _ = proxy_wasm::hostcalls::increment_metric(self.requests, 1);
        // Kept for on_log: the request headers are gone once this callback continued.
        self.method = self.get_http_request_header(":method").unwrap_or_default();
        self.path = self.get_http_request_header(":path").unwrap_or_default();
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(header) = &self.header {
            self.set_http_response_header(&header.header, Some(&header.value));
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        let status = self.get_http_response_header(":status").unwrap_or_default();
        log::info!("{}", log_line(&self.method, &self.path, &status));
    }
}
