//! Test plugin: shared queues. One module, two roles by plugin configuration:
//!
//! - `consumer` (a bootstrap service): registers the queue `events`; on each
//!   `on_queue_ready` dequeues everything, counting items in the shared-data key
//!   `events_received` and keeping the last in `events_last`.
//! - `producer` (an HTTP filter): registers its own queue `local` (so its worker's
//!   VM is told when it has data, counted in `local_received`); on each request
//!   resolves `events` of the VM id `vm-queue` and enqueues the request path there
//!   and in `local` (request header `x-queue: enqueued`, or `unresolved`). The
//!   response gets `x-events-received`, `x-events-last` and `x-local-received`.
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(QueueRoot { producer: false, queue: 0 })
    });
}}

struct QueueRoot {
    producer: bool,
    queue: u32,
}

fn bump(context: &dyn Context, key: &str, by: u64) {
    for _ in 0..100 {
        let (value, cas) = context.get_shared_data(key);
        let count: u64 = value
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let next = (count + by).to_string();
        if context.set_shared_data(key, Some(next.as_bytes()), cas).is_ok() {
            return;
        }
    }
}

fn read(context: &dyn Context, key: &str) -> String {
    context
        .get_shared_data(key)
        .0
        .and_then(|v| String::from_utf8(v).ok())
        .unwrap_or_else(|| "0".to_owned())
}

impl Context for QueueRoot {}

impl RootContext for QueueRoot {
    fn on_configure(&mut self, _: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        self.producer = config == b"producer";
        let name = if self.producer { "local" } else { "events" };
        self.queue = self.register_shared_queue(name);
        true
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        let mut count = 0;
        let mut last = None;
        while let Ok(Some(item)) = self.dequeue_shared_queue(queue_id) {
            count += 1;
            last = Some(item);
        }
        if self.producer {
            bump(self, "local_received", count);
            return;
        }
        bump(self, "events_received", count);
        if let Some(last) = last {
            let _ = self.set_shared_data("events_last", Some(&last), None);
        }
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Producer { local: self.queue }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Producer {
    local: u32,
}

impl Context for Producer {}

impl HttpContext for Producer {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let path = self.get_http_request_header(":path").unwrap_or_default();
        let outcome = match self.resolve_shared_queue("vm-queue", "events") {
            Some(events) => {
                let _ = self.enqueue_shared_queue(events, Some(path.as_bytes()));
                let _ = self.enqueue_shared_queue(self.local, Some(path.as_bytes()));
                "enqueued"
            }
            None => "unresolved",
        };
        self.set_http_request_header("x-queue", Some(outcome));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        let received = read(self, "events_received");
        let last = read(self, "events_last");
        let local = read(self, "local_received");
        self.set_http_response_header("x-events-received", Some(&received));
        self.set_http_response_header("x-events-last", Some(&last));
        self.set_http_response_header("x-local-received", Some(&local));
        Action::Continue
    }
}
