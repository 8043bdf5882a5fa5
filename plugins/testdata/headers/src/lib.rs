//! Test plugin: reads and rewrites request headers, adds a configured response
//! header, answers 403 itself when `x-block` is present, resets the stream
//! (`proxy_close_stream`) in the request or response headers callback when
//! `x-close: request` / `x-close: response` is present, counts requests in a metric
//! and increments a shared-data counter with compare-and-swap.
//!
//! Plugin configuration: one line `header-name: header-value`, added to every response.
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType, Status};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(HeadersRoot { response_header: None, requests_metric: 0 })
    });
}}

struct HeadersRoot {
    response_header: Option<(String, String)>,
    requests_metric: u32,
}

impl Context for HeadersRoot {}

impl RootContext for HeadersRoot {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        self.requests_metric =
            proxy_wasm::hostcalls::define_metric(MetricType::Counter, "headers_requests_total")
                .expect("define metric");
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        // A read-only property: a stream may set it once (`x-foreign: root_declared`).
        let mut args = field(1, b"tenant.fixed");
        args.extend([2 << 3, 1]);
        proxy_wasm::hostcalls::call_foreign_function("declare_property", Some(&args))
            .expect("declare_property");
        let Some(config) = self.get_plugin_configuration() else {
            return true;
        };
        let config = String::from_utf8_lossy(&config);
        match config.split_once(':') {
            Some((name, value)) => {
                self.response_header = Some((name.trim().to_string(), value.trim().to_string()));
                true
            }
            None => {
                log::error!("configuration must be `name: value`, got {config:?}");
                false
            }
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(HeadersStream {
            context_id,
            close_response: false,
            response_header: self.response_header.clone(),
            requests_metric: self.requests_metric,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct HeadersStream {
    context_id: u32,
    /// `x-close: response` was asked for.
    close_response: bool,
    response_header: Option<(String, String)>,
    requests_metric: u32,
}

impl Context for HeadersStream {}

impl HeadersStream {
    /// Increments the shared counter named by `x-shared-key`, using the CAS from
    /// `x-shared-cas` when given (so a test can pass a stale one) and reporting the
    /// outcome in request headers.
    fn bump_shared_counter(&self, key: &str) {
        let (value, cas) = self.get_shared_data(key);
        let current: u64 = value
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let cas = match self.get_http_request_header("x-shared-cas") {
            Some(forced) => forced.parse().ok(),
            None => cas,
        };
        let next = (current + 1).to_string();
        let status = match self.set_shared_data(key, Some(next.as_bytes()), cas) {
            Ok(()) => "ok",
            Err(Status::CasMismatch) => "cas-mismatch",
            Err(_) => "error",
        };
        self.set_http_request_header("x-shared-status", Some(status));
        self.set_http_request_header("x-shared-value", Some(&next));
        let (_, new_cas) = self.get_shared_data(key);
        let new_cas = new_cas.unwrap_or(0).to_string();
        self.set_http_request_header("x-shared-cas-seen", Some(&new_cas));
    }
}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_set_property(path: *const u8, path_len: usize, value: *const u8, len: usize) -> u32;
}

/// `proxy_set_property` on a one-part path, with the status as a number.
fn raw_set_property(path: &[u8], value: &[u8]) -> u32 {
    unsafe { proxy_set_property(path.as_ptr(), path.len(), value.as_ptr(), value.len()) }
}

/// A protobuf length-delimited field (wire type 2) of a short value.
fn field(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![tag << 3 | 2, value.len() as u8];
    out.extend_from_slice(value);
    out
}

fn outcome(result: Result<Option<Vec<u8>>, Status>) -> String {
    match result {
        Ok(Some(bytes)) => format!("ok:{}", String::from_utf8_lossy(&bytes)),
        Ok(None) => "ok".to_string(),
        Err(status) => format!("{status:?}"),
    }
}

impl HeadersStream {
    /// Calls the foreign function `name` (`x-foreign`) on `x-foreign-arg` and puts
    /// what came back in `x-foreign-result` (`compress` is checked by round trip:
    /// zlib builds may pack differently).
    fn foreign(&self, name: &str) {
        use proxy_wasm::hostcalls::{call_foreign_function, get_property, set_property};
        let arg = self.get_http_request_header("x-foreign-arg").unwrap_or_default();
        let result = match name {
            "compress" => match call_foreign_function("compress", Some(arg.as_bytes())) {
                Ok(Some(packed)) => {
                    let back = call_foreign_function("uncompress", Some(&packed));
                    format!("zlib:{} back:{}", packed[0] == 0x78, outcome(back))
                }
                other => outcome(other),
            },
            // zlib.compress(b"strait"), and then cut short.
            "uncompress" => {
                let stream = [
                    0x78, 0x9c, 0x2b, 0x2e, 0x29, 0x4a, 0xcc, 0x2c, 0x01, 0x00, 0x09, 0x2d, 0x02,
                    0x98,
                ];
                let whole = call_foreign_function("uncompress", Some(&stream));
                let cut = call_foreign_function("uncompress", Some(&stream[..8]));
                format!("{} cut:{}", outcome(whole), outcome(cut))
            }
            "set_envoy_filter_state" => {
                let mut args = field(1, b"envoy.string");
                args.extend(field(2, arg.as_bytes()));
                let set = call_foreign_function("set_envoy_filter_state", Some(&args));
                let mut unknown = field(1, b"no.such.factory");
                unknown.extend(field(2, b"x"));
                let refused = call_foreign_function("set_envoy_filter_state", Some(&unknown));
                let read = get_property(vec!["filter_state", "envoy.string"]);
                format!("{} unknown:{} read:{}", outcome(set), outcome(refused), outcome(read))
            }
            "declare_property" => {
                let mut args = field(1, b"tenant.id");
                args.extend([2 << 3, 1]); // readonly: true
                let declared = call_foreign_function("declare_property", Some(&args));
                let first = set_property(vec!["tenant.id"], Some(b"a"));
                let second = set_property(vec!["tenant.id"], Some(b"b"));
                let read = get_property(vec!["tenant.id"]);
                format!(
                    "{} first:{:?} second:{:?} read:{}",
                    outcome(declared),
                    first,
                    second,
                    outcome(read)
                )
            }
            "root_declared" => {
                // The SDK's `set_property` panics on any status but Ok.
                let first = raw_set_property(b"tenant.fixed", b"a");
                let second = raw_set_property(b"tenant.fixed", b"b");
                let read = get_property(vec!["tenant.fixed"]);
                format!("first:{first:?} second:{second:?} read:{}", outcome(read))
            }
            other => outcome(call_foreign_function(other, Some(arg.as_bytes()))),
        };
        self.set_http_request_header("x-foreign-result", Some(&result));
    }
}

impl HttpContext for HeadersStream {
    fn on_http_request_headers(&mut self, num_headers: usize, _end_of_stream: bool) -> Action {
        proxy_wasm::hostcalls::increment_metric(self.requests_metric, 1).expect("metric");
        let path = self.get_http_request_header(":path").unwrap_or_default();
        let method = self.get_http_request_header(":method").unwrap_or_default();
        log::info!(
            "#{} {method} {path} with {num_headers} headers",
            self.context_id
        );

        if self.get_http_request_header("x-block").is_some() {
            self.send_http_response(
                403,
                vec![("x-blocked-by", "headers-plugin")],
                Some(b"blocked\n"),
            );
            return Action::Pause;
        }
        match self.get_http_request_header("x-close").as_deref() {
            Some("request") => {
                proxy_wasm::hostcalls::reset_http_request().expect("close the request");
                return Action::Continue;
            }
            Some("response") => self.close_response = true,
            _ => {}
        }
        if let Some(name) = self.get_http_request_header("x-foreign") {
            self.foreign(&name);
        }
        if let Some(new_path) = self.get_http_request_header("x-rewrite-path") {
            self.set_http_request_header(":path", Some(&new_path));
        }
        if let Some(key) = self.get_http_request_header("x-shared-key") {
            self.bump_shared_counter(&key);
        }
        self.set_http_request_header("x-remove-me", None);
        let seen = format!("{method} {path} {}", self.get_http_request_headers().len());
        self.add_http_request_header("x-wasm-seen", &seen);
        // `vm_config.environment_variables`, through WASI.
        let var = |name: &str| std::env::var(name).unwrap_or_else(|_| "unset".into());
        self.set_http_request_header("x-env-mode", Some(&var("PLUGIN_MODE")));
        let home = std::env::var("HOME").is_ok().to_string();
        self.set_http_request_header("x-env-home-passed", Some(&home));
        self.set_http_request_header("x-env-unset", Some(&var("STRAIT_TEST_SURELY_UNSET")));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.close_response {
            proxy_wasm::hostcalls::reset_http_response().expect("close the response");
            return Action::Continue;
        }
        if let Some((name, value)) = &self.response_header {
            self.add_http_response_header(name, value);
        }
        if let Some(path) = self.get_property(vec!["request", "path"]) {
            self.set_http_response_header("x-request-path", Some(&String::from_utf8_lossy(&path)));
        }
        let status = self.get_http_response_header(":status").unwrap_or_default();
        self.set_http_response_header("x-upstream-status", Some(&status));
        Action::Continue
    }

    fn on_log(&mut self) {
        log::info!("#{} done", self.context_id);
    }
}
