//! Test plugin: HTTP callouts (`dispatch_http_call`), driven by request headers.
//!
//! - `x-callout: <cluster>` in the request: the request headers phase calls
//!   `<cluster>` (`GET /check` with `:authority: auth.local`), pausing the request
//!   until the answer. `x-callout-count: N` makes N calls and resumes after the
//!   last answer; `x-callout-status` / `x-callout-delay-ms` ask the echo backend to
//!   answer that status / that late (`x-echo-status`, `x-echo-delay-ms`);
//!   `x-callout-timeout-ms` is the call's timeout (default 5000); `x-callout-omit:
//!   <pseudo-header>` leaves that pseudo-header out.
//! - The answer: a 2xx resumes the request with `x-callout-status`,
//!   `x-callout-saw-path` (whether the backend's echo shows `/check`),
//!   `x-callout-content-type` and `x-callout-answers` added; any other status answers
//!   403 `denied by callout` with the status in `x-callout-status` (and whether the
//!   answer had a body in `x-callout-has-body`); no
//!   response at all (zero headers) answers 503 `callout failed`.
//! - `dispatch_http_call` failing answers 500 with the status in `x-callout-error`.
//! - `x-callout-on-response: <cluster>`: the same call from the response headers
//!   phase; its status lands in the response header `x-response-callout-status`.
//! - `x-grpc-call: <cluster>`: a gRPC unary call `strait.test.Echo/Say` with the
//!   message `x-grpc-message` (default `ping`) and the metadata
//!   `x-grpc-echo-status` / `x-grpc-echo-message` from the request headers of those
//!   names; OK resumes the request with `x-grpc-code: 0` and the reply in
//!   `x-grpc-reply`; another status answers 403 `grpc call failed` with
//!   `x-grpc-code` and `x-grpc-message` from `get_grpc_status`. `x-grpc-cancel: yes`
//!   cancels the call at once and continues, reporting the cancel's result in
//!   `x-grpc-cancel`.
//! - `x-grpc-stream: <cluster>`: a gRPC stream `strait.test.Echo/Chat` (metadata
//!   `x-grpc-echo-status` as above) sending `one` and `two`, then half-closing
//!   (`close_grpc_stream`, or `end_stream` on the last message with
//!   `x-grpc-stream-end: send`). The request resumes at the close with
//!   `x-grpc-stream-messages` (the messages received, comma-separated),
//!   `x-grpc-stream-content-type` (initial metadata), `x-grpc-stream-trailer`
//!   (`grpc-status` from the trailing metadata) and `x-grpc-stream-close` (status).
//! - `x-body-scan: <cluster>` (`x-body-scan-response: <cluster>`): the request (response)
//!   body is held to its end, then sent in a `POST /scan` call (with
//!   `x-callout-status` and `x-callout-delay-ms` as above) and the body waits for the answer, as a DLP plugin
//!   scans: a 2xx replaces the body with `scanned(<status>):<body>` and resumes; any
//!   other status answers 403 `blocked by scan` (the response: resets the stream).
//! - `x-set-property: <name>=<value>`: `set_property([name], value)` in the request
//!   headers phase; the request then carries `x-got-property` (what
//!   `get_property([name])` returns, or `none`), and the response the same read in
//!   the response phase.
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(CalloutRoot { called: false, messages: Vec::new() })
    });
}}

/// With the plugin configuration `tick-call`, the root context calls the cluster
/// `auth` once from its first tick and stores the answer's status in the shared-data
/// key `root_call_status` (a request with `x-read-root` gets it back in the response
/// header `x-root-call-status`). With `tick-stream`, it opens a gRPC stream
/// `strait.test.Echo/Chat` to the cluster `grpc` instead, sends `one` and `two`
/// (half-closing with the second), and at the close stores `<messages>;<status>` in
/// `root_stream` (returned as `x-root-stream`). With `tick-call-each` it calls `auth`
/// on every tick and stores `<status>:<echo backend name>`.
struct CalloutRoot {
    called: bool,
    messages: Vec<String>,
}

impl Context for CalloutRoot {
    fn on_http_call_response(&mut self, _token: u32, headers: usize, body_size: usize, _: usize) {
        let mut status = match headers {
            0 => "none".to_owned(),
            _ => self.get_http_call_response_header(":status").unwrap_or_default(),
        };
        if self.get_plugin_configuration().as_deref() == Some(b"tick-call-each") {
            // Which echo backend answered: `<status>:<name>`.
            let body = self.get_http_call_response_body(0, body_size).unwrap_or_default();
            let body = String::from_utf8_lossy(&body);
            let name = body.split("\"backend\":\"").nth(1).and_then(|r| r.split('"').next());
            status = format!("{status}:{}", name.unwrap_or(""));
        }
        let _ = self.set_shared_data("root_call_status", Some(status.as_bytes()), None);
    }

    fn on_grpc_stream_message(&mut self, _token: u32, size: usize) {
        let message = self.get_grpc_stream_message(0, size).unwrap_or_default();
        self.messages.push(String::from_utf8_lossy(&message).into_owned());
    }

    fn on_grpc_stream_close(&mut self, _token: u32, status: u32) {
        let text = format!("{};{status}", self.messages.join(","));
        let _ = self.set_shared_data("root_stream", Some(text.as_bytes()), None);
    }
}

impl RootContext for CalloutRoot {
    fn on_configure(&mut self, _: usize) -> bool {
        if let Some(b"tick-call" | b"tick-stream" | b"tick-call-each") =
            self.get_plugin_configuration().as_deref()
        {
            self.set_tick_period(Duration::from_millis(20));
        }
        true
    }

    fn on_tick(&mut self) {
        let each = self.get_plugin_configuration().as_deref() == Some(b"tick-call-each");
        if std::mem::replace(&mut self.called, true) && !each {
            return;
        }
        if self.get_plugin_configuration().as_deref() == Some(b"tick-stream") {
            let Ok(token) = self.open_grpc_stream("grpc", "strait.test.Echo", "Chat", vec![]) else {
                let _ = self.set_shared_data("root_stream", Some(b"open failed"), None);
                return;
            };
            let _ = self.send_grpc_stream_message(token, Some(b"one"), false);
            let _ = self.send_grpc_stream_message(token, Some(b"two"), true);
            return;
        }
        let headers = vec![(":method", "GET"), (":path", "/root"), (":authority", "auth")];
        let _ = self.dispatch_http_call("auth", headers, None, vec![], Duration::from_secs(5));
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(CalloutStream::default()))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

#[derive(Default)]
struct CalloutStream {
    pending: Vec<u32>,
    answers: u32,
    on_response: bool,
    /// From the request headers (later phases do not see them).
    status: Option<String>,
    delay: Option<String>,
    omit: String,
    timeout_ms: u64,
    response_cluster: Option<String>,
    grpc_call: Option<u32>,
    grpc_stream: Option<u32>,
    property: Option<String>,
    read_root: bool,
    stream_messages: Vec<String>,
    stream_content_type: String,
    stream_trailer: String,
    /// `x-body-scan` / `x-body-scan-response`: the cluster, and the call in flight.
    scan_request: Option<String>,
    scan_response: Option<String>,
    scan: Option<(u32, bool)>,
}

impl CalloutStream {
    /// Dispatches one call as the request headers described; the error status on
    /// failure.
    fn call(&self, cluster: &str) -> Result<u32, proxy_wasm::types::Status> {
        let (status, delay, omit) = (&self.status, &self.delay, self.omit.as_str());
        let mut headers = vec![
            (":method", "GET"),
            (":path", "/check"),
            (":authority", "auth.local"),
            ("x-from-plugin", "callout"),
        ];
        headers.retain(|(name, _)| *name != omit);
        if let Some(status) = status.as_deref() {
            headers.push(("x-echo-status", status));
        }
        if let Some(delay) = delay.as_deref() {
            headers.push(("x-echo-delay-ms", delay));
        }
        let timeout = Duration::from_millis(self.timeout_ms);
        self.dispatch_http_call(cluster, headers, None, vec![], timeout)
    }
}

impl CalloutStream {
    /// Holds the body to its end, then sends it to `cluster` and waits (`request`:
    /// the request body, else the response body).
    fn scan_body(&mut self, request: bool, size: usize, end_of_stream: bool) -> Action {
        let cluster = match request {
            true => self.scan_request.clone(),
            false => self.scan_response.clone(),
        };
        let Some(cluster) = cluster else {
            return Action::Continue;
        };
        if !end_of_stream {
            return Action::Pause;
        }
        let body = match request {
            true => self.get_http_request_body(0, size),
            false => self.get_http_response_body(0, size),
        }
        .unwrap_or_default();
        let mut headers = vec![(":method", "POST"), (":path", "/scan"), (":authority", "scan.local")];
        if let Some(status) = self.status.as_deref() {
            headers.push(("x-echo-status", status));
        }
        if let Some(delay) = self.delay.as_deref() {
            headers.push(("x-echo-delay-ms", delay));
        }
        match self.dispatch_http_call(&cluster, headers, Some(&body), vec![], Duration::from_secs(5)) {
            Ok(token) => {
                self.scan = Some((token, request));
                Action::Pause
            }
            Err(_) => Action::Continue,
        }
    }

    /// The scan's answer: rewrite the held body and resume, or refuse.
    fn scanned(&mut self, request: bool, num_headers: usize) {
        let status = match num_headers {
            0 => "none".to_owned(),
            _ => self.get_http_call_response_header(":status").unwrap_or_default(),
        };
        if !status.starts_with('2') {
            match request {
                true => self.send_http_response(403, vec![], Some(b"blocked by scan")),
                false => {
                    let _ = proxy_wasm::hostcalls::reset_http_response();
                }
            }
            return;
        }
        let body = match request {
            true => self.get_http_request_body(0, usize::MAX),
            false => self.get_http_response_body(0, usize::MAX),
        }
        .unwrap_or_default();
        let mut rewritten = format!("scanned({status}):").into_bytes();
        rewritten.extend_from_slice(&body);
        match request {
            true => {
                self.set_http_request_body(0, usize::MAX, &rewritten);
                self.resume_http_request();
            }
            false => {
                self.set_http_response_body(0, usize::MAX, &rewritten);
                self.resume_http_response();
            }
        }
    }

    /// A dispatch the host refused: 500 with the status in `x-callout-error`.
    fn dispatch_failed(&self, status: proxy_wasm::types::Status) -> Action {
        let status = format!("{status:?}");
        self.send_http_response(
            500,
            vec![("x-callout-error", status.as_str())],
            Some(b"dispatch failed"),
        );
        Action::Pause
    }

    fn grpc_stream(&mut self, cluster: &str) -> Action {
        let status = self.get_http_request_header("x-grpc-echo-status");
        let mut metadata: Vec<(&str, &[u8])> = Vec::new();
        if let Some(status) = status.as_deref() {
            metadata.push(("x-grpc-echo-status", status.as_bytes()));
        }
        let token = match self.open_grpc_stream(cluster, "strait.test.Echo", "Chat", metadata) {
            Ok(token) => token,
            Err(status) => return self.dispatch_failed(status),
        };
        let end_on_send = self.get_http_request_header("x-grpc-stream-end").as_deref() == Some("send");
        self.send_grpc_stream_message(token, Some(b"one"), false);
        self.send_grpc_stream_message(token, Some(b"two"), end_on_send);
        if !end_on_send {
            self.close_grpc_stream(token);
        }
        self.grpc_stream = Some(token);
        Action::Pause
    }

    fn grpc_call(&mut self, cluster: &str) -> Action {
        let message = self
            .get_http_request_header("x-grpc-message")
            .unwrap_or_else(|| "ping".to_owned());
        let status = self.get_http_request_header("x-grpc-echo-status");
        let text = self.get_http_request_header("x-grpc-echo-message");
        let mut metadata: Vec<(&str, &[u8])> = Vec::new();
        if let Some(status) = status.as_deref() {
            metadata.push(("x-grpc-echo-status", status.as_bytes()));
        }
        if let Some(text) = text.as_deref() {
            metadata.push(("x-grpc-echo-message", text.as_bytes()));
        }
        let delay = self.delay.clone();
        if let Some(delay) = delay.as_deref() {
            metadata.push(("x-echo-delay-ms", delay.as_bytes()));
        }
        let timeout = Duration::from_millis(self.timeout_ms);
        let token = match self.dispatch_grpc_call(
            cluster,
            "strait.test.Echo",
            "Say",
            metadata,
            Some(message.as_bytes()),
            timeout,
        ) {
            Ok(token) => token,
            Err(status) => return self.dispatch_failed(status),
        };
        if self.get_http_request_header("x-grpc-cancel").is_some() {
            let outcome = format!("{:?}", self.cancel_grpc_call(token));
            self.set_http_request_header("x-grpc-cancel", Some(&outcome));
            return Action::Continue;
        }
        self.grpc_call = Some(token);
        Action::Pause
    }
}

impl Context for CalloutStream {
    fn on_grpc_stream_initial_metadata(&mut self, _token: u32, _count: u32) {
        let value = self.get_grpc_stream_initial_metadata_value("content-type");
        self.stream_content_type = String::from_utf8_lossy(&value.unwrap_or_default()).into_owned();
    }

    fn on_grpc_stream_message(&mut self, _token: u32, size: usize) {
        let message = self.get_grpc_stream_message(0, size).unwrap_or_default();
        self.stream_messages.push(String::from_utf8_lossy(&message).into_owned());
    }

    fn on_grpc_stream_trailing_metadata(&mut self, _token: u32, _count: u32) {
        let value = self.get_grpc_stream_trailing_metadata_value("grpc-status");
        self.stream_trailer = String::from_utf8_lossy(&value.unwrap_or_default()).into_owned();
    }

    fn on_grpc_stream_close(&mut self, token: u32, status: u32) {
        if self.grpc_stream != Some(token) {
            return;
        }
        let messages = self.stream_messages.join(",");
        self.set_http_request_header("x-grpc-stream-messages", Some(&messages));
        let content_type = self.stream_content_type.clone();
        self.set_http_request_header("x-grpc-stream-content-type", Some(&content_type));
        let trailer = self.stream_trailer.clone();
        self.set_http_request_header("x-grpc-stream-trailer", Some(&trailer));
        self.set_http_request_header("x-grpc-stream-close", Some(&status.to_string()));
        self.resume_http_request();
    }

    fn on_grpc_call_response(&mut self, token: u32, status_code: u32, response_size: usize) {
        if self.grpc_call != Some(token) {
            return;
        }
        if status_code == 0 {
            let reply = self
                .get_grpc_call_response_body(0, response_size)
                .unwrap_or_default();
            self.set_http_request_header("x-grpc-code", Some("0"));
            self.set_http_request_header("x-grpc-reply", Some(&String::from_utf8_lossy(&reply)));
            self.resume_http_request();
            return;
        }
        let (code, message) = self.get_grpc_status();
        let code = code.to_string();
        let message = message.unwrap_or_default();
        self.send_http_response(
            403,
            vec![("x-grpc-code", code.as_str()), ("x-grpc-message", message.as_str())],
            Some(b"grpc call failed"),
        );
    }

    fn on_http_call_response(&mut self, token: u32, num_headers: usize, body_size: usize, _: usize) {
        if let Some((scan, request)) = self.scan {
            if scan == token {
                self.scan = None;
                return self.scanned(request, num_headers);
            }
        }
        self.pending.retain(|t| *t != token);
        self.answers += 1;
        if num_headers == 0 {
            self.send_http_response(503, vec![("x-callout", "failed")], Some(b"callout failed"));
            return;
        }
        let status = self
            .get_http_call_response_header(":status")
            .unwrap_or_default();
        if self.on_response {
            self.set_http_response_header("x-response-callout-status", Some(&status));
            self.resume_http_response();
            return;
        }
        let body = self
            .get_http_call_response_body(0, body_size)
            .unwrap_or_default();
        if !status.starts_with('2') {
            let has_body = (!body.is_empty()).to_string();
            self.send_http_response(
                403,
                vec![
                    ("x-callout-status", status.as_str()),
                    ("x-callout-has-body", has_body.as_str()),
                ],
                Some(b"denied by callout"),
            );
            return;
        }
        if !self.pending.is_empty() {
            return;
        }
        let saw_path = String::from_utf8_lossy(&body).contains("\"path\":\"/check\"");
        let content_type = self
            .get_http_call_response_header("content-type")
            .unwrap_or_default();
        self.set_http_request_header("x-callout-status", Some(&status));
        self.set_http_request_header("x-callout-saw-path", Some(&saw_path.to_string()));
        self.set_http_request_header("x-callout-content-type", Some(&content_type));
        self.set_http_request_header("x-callout-answers", Some(&self.answers.to_string()));
        self.resume_http_request();
    }
}

impl HttpContext for CalloutStream {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        self.read_root = self.get_http_request_header("x-read-root").is_some();
        if let Some(spec) = self.get_http_request_header("x-set-property") {
            let (name, value) = spec.split_once('=').unwrap_or((spec.as_str(), ""));
            self.property = Some(name.to_owned());
            self.set_property(vec![name], Some(value.as_bytes()));
            let got = self.get_property(vec![name]);
            let got = got.map_or("none".to_owned(), |v| String::from_utf8_lossy(&v).into_owned());
            self.set_http_request_header("x-got-property", Some(&got));
        }
        self.status = self.get_http_request_header("x-callout-status");
        self.delay = self.get_http_request_header("x-callout-delay-ms");
        self.omit = self.get_http_request_header("x-callout-omit").unwrap_or_default();
        self.timeout_ms = self
            .get_http_request_header("x-callout-timeout-ms")
            .and_then(|t| t.parse().ok())
            .unwrap_or(5000);
        self.response_cluster = self.get_http_request_header("x-callout-on-response");
        self.scan_request = self.get_http_request_header("x-body-scan");
        self.scan_response = self.get_http_request_header("x-body-scan-response");
        if let Some(cluster) = self.get_http_request_header("x-grpc-call") {
            return self.grpc_call(&cluster);
        }
        if let Some(cluster) = self.get_http_request_header("x-grpc-stream") {
            return self.grpc_stream(&cluster);
        }
        let Some(cluster) = self.get_http_request_header("x-callout") else {
            return Action::Continue;
        };
        let count: u32 = self
            .get_http_request_header("x-callout-count")
            .and_then(|c| c.parse().ok())
            .unwrap_or(1);
        for _ in 0..count {
            match self.call(&cluster) {
                Ok(token) => self.pending.push(token),
                Err(status) => return self.dispatch_failed(status),
            }
        }
        Action::Pause
    }

    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        self.scan_body(true, size, end_of_stream)
    }

    fn on_http_response_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        self.scan_body(false, size, end_of_stream)
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        if self.read_root {
            let status = self.get_shared_data("root_call_status").0.unwrap_or_default();
            let status = String::from_utf8_lossy(&status).into_owned();
            self.set_http_response_header("x-root-call-status", Some(&status));
            if let (Some(stream), _) = self.get_shared_data("root_stream") {
                let stream = String::from_utf8_lossy(&stream).into_owned();
                self.set_http_response_header("x-root-stream", Some(&stream));
            }
        }
        if let Some(name) = self.property.clone() {
            let got = self.get_property(vec![name.as_str()]);
            let got = got.map_or("none".to_owned(), |v| String::from_utf8_lossy(&v).into_owned());
            self.set_http_response_header("x-got-property", Some(&got));
        }
        let Some(cluster) = self.response_cluster.clone() else {
            return Action::Continue;
        };
        self.on_response = true;
        match self.call(&cluster) {
            Ok(token) => {
                self.pending.push(token);
                Action::Pause
            }
            Err(_) => Action::Continue,
        }
    }
}
