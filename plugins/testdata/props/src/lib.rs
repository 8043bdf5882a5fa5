//! Test plugin: reports what `proxy_get_property` returns, so the differential test
//! can compare Strait's attributes with Envoy's.
//!
//! Request header `x-props`: property paths separated by `,`, each path's segments by
//! `/` (so `filter_state/my.key` reads the filter-state key `my.key`). For each path
//! the request headers callback adds request header `x-prop-<path, / as .>` and the
//! response headers callback adds the same response header, with the value rendered
//! as `none` (`NotFound`), `s:<text>` (printable ASCII), `h:<hex>` (anything else) or
//! `err:<status>`.
//! A path written `~path` reports only the value's length (`len:<n>`), for values
//! that differ by run (times, ids, ports).
//!
//! `on_log` renders the paths of `x-props-at-log` (or else those of `x-props`) into
//! shared data `props-log`; a later request with `x-props-log` gets that text back
//! in the request header of the same name.
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(PropsRoot) });
}}

struct PropsRoot;

impl Context for PropsRoot {}

impl RootContext for PropsRoot {
    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(PropsStream {
            paths: Vec::new(),
            log_paths: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct PropsStream {
    paths: Vec<String>,
    /// Read in `on_log` only, when set.
    log_paths: Option<Vec<String>>,
}

impl PropsStream {
    /// `(header name, rendered value)` for every path.
    fn read_all(&self) -> Vec<(String, String)> {
        self.paths
            .iter()
            .map(|spec| {
                let (length_only, path) = match spec.strip_prefix('~') {
                    Some(path) => (true, path),
                    None => (false, spec.as_str()),
                };
                let segments: Vec<&str> = path.split('/').collect();
                // The raw host call: the SDK's `get_property` panics on any error
                // but `NotFound` (Envoy answers `SerializationFailure` for some).
                let value = match proxy_wasm::hostcalls::get_property(segments) {
                    Err(status) => format!("err:{status:?}"),
                    Ok(None) => "none".to_owned(),
                    Ok(Some(bytes)) if length_only => format!("len:{}", bytes.len()),
                    Ok(Some(bytes)) => render(&bytes),
                };
                (format!("x-prop-{}", path.replace('/', ".")), value)
            })
            .collect()
    }
}

fn render(bytes: &[u8]) -> String {
    if !bytes.is_empty() && bytes.iter().all(|b| (0x20..0x7f).contains(b)) {
        return format!("s:{}", String::from_utf8_lossy(bytes));
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("h:{hex}")
}

impl Context for PropsStream {}

impl HttpContext for PropsStream {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        if self.get_http_request_header("x-props-log").is_some() {
            let (log, _) = self.get_shared_data("props-log");
            let log = log.map_or("none".to_owned(), |v| String::from_utf8_lossy(&v).into_owned());
            self.set_http_request_header("x-props-log", Some(&log));
        }
        let split = |spec: String| spec.split(',').map(|p| p.trim().to_owned()).collect();
        self.log_paths = self.get_http_request_header("x-props-at-log").map(split);
        let Some(spec) = self.get_http_request_header("x-props") else {
            return Action::Continue;
        };
        self.paths = split(spec);
        for (name, value) in self.read_all() {
            self.set_http_request_header(&name, Some(&value));
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        for (name, value) in self.read_all() {
            self.set_http_response_header(&name, Some(&value));
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        if let Some(paths) = self.log_paths.take() {
            self.paths = paths;
        }
        if self.paths.is_empty() {
            return;
        }
        let text: Vec<String> = self
            .read_all()
            .into_iter()
            .map(|(name, value)| format!("{}={value}", &name["x-prop-".len()..]))
            .collect();
        let _ = self.set_shared_data("props-log", Some(text.join(";").as_bytes()), None);
    }
}
