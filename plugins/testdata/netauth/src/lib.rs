//! Test plugin: a network filter that authorizes each connection with an HTTP
//! callout before letting its bytes through. The first data of a connection is
//! held (`Pause`) while `GET /net-check` goes to the cluster `auth`; a 200 answer
//! continues the connection (`resume_downstream`), anything else (or no answer)
//! closes it. If the first bytes contain `x-net-deny`, the call asks the echo
//! backend for a 403 (`x-echo-status`). Counts answers in the metric
//! `netauth_answers`.
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, RootContext, StreamContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(NetAuthRoot { answers: 0 }) });
}}

struct NetAuthRoot {
    answers: u32,
}

impl Context for NetAuthRoot {}

impl RootContext for NetAuthRoot {
    fn on_vm_start(&mut self, _: usize) -> bool {
        self.answers = hostcalls::define_metric(MetricType::Counter, "netauth_answers").expect("metric");
        true
    }

    fn create_stream_context(&self, _: u32) -> Option<Box<dyn StreamContext>> {
        Some(Box::new(NetAuth { answers: self.answers, state: State::New }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::StreamContext)
    }
}

#[derive(PartialEq)]
enum State {
    New,
    Checking,
    Allowed,
    Denied,
}

struct NetAuth {
    answers: u32,
    state: State,
}

impl Context for NetAuth {
    fn on_http_call_response(&mut self, _token: u32, headers: usize, _body: usize, _: usize) {
        let _ = hostcalls::increment_metric(self.answers, 1);
        let status = match headers {
            0 => None,
            _ => self.get_http_call_response_header(":status"),
        };
        if status.as_deref() == Some("200") {
            self.state = State::Allowed;
            self.resume_downstream();
        } else {
            self.state = State::Denied;
            self.close_downstream();
        }
    }
}

impl StreamContext for NetAuth {
    fn on_downstream_data(&mut self, size: usize, _end: bool) -> Action {
        match self.state {
            State::Allowed => return Action::Continue,
            State::Checking | State::Denied => return Action::Pause,
            State::New => {}
        }
        let data = self.get_downstream_data(0, size).unwrap_or_default();
        let deny = data.windows(10).any(|w| w == b"x-net-deny");
        let mut headers = vec![(":method", "GET"), (":path", "/net-check"), (":authority", "auth")];
        if deny {
            headers.push(("x-echo-status", "403"));
        }
        match self.dispatch_http_call("auth", headers, None, vec![], Duration::from_secs(5)) {
            Ok(_) => self.state = State::Checking,
            Err(_) => {
                self.state = State::Denied;
                self.close_downstream();
            }
        }
        Action::Pause
    }
}
