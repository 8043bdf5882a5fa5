//! One plugin instance per worker: its root context and every stream context.
//!
//! A worker is single-threaded, so the VM sits in a `RefCell` behind an `Rc` shared
//! by the worker's streams; a callback borrows it for its duration, and callbacks
//! never nest (host functions do not call back into filters).
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use wasmtime::{Store, Trap, TypedFunc, WasmBacktrace, WasmParams, WasmResults};

use super::callout::{CallAnswer, Dispatch, GrpcStreamEvent};
use super::engine::deadline_ticks;
use super::module::{AbiVersion, WasmPlugin};
use super::shared::QueueNotifier;
use super::state::{HostState, StreamData, StreamSignals};
use super::wasi::ProcExit;
use super::WasmError;
use crate::BodyBuffer;
use http::HeaderMap;

/// A callback's failure, boxed: a `WasmError` is 88 bytes, and returned inline each
/// guest call's `Result` was copied through every frame up to the filter (~30
/// instructions a call), which keeps it boxed anyway.
pub(crate) type Failure = Box<WasmError>;

/// Per-worker handle of a plugin. Creates the VM on first use and again on the
/// first stream after a failure; streams of a failed VM get `VmFailed`.
pub struct WasmVm {
    plugin: Arc<WasmPlugin>,
    running: RefCell<Option<Running>>,
    /// Bumped on every (re)start so a stream can tell its VM is gone.
    generation: Cell<u64>,
    queue_notifier: RefCell<Option<QueueNotifier>>,
}

/// The HTTP callbacks, in lifecycle order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    RequestHeaders,
    RequestBody,
    RequestTrailers,
    ResponseHeaders,
    ResponseBody,
    ResponseTrailers,
}

impl WasmVm {
    pub fn new(plugin: Arc<WasmPlugin>) -> Rc<Self> {
        Rc::new(Self {
            plugin,
            running: RefCell::new(None),
            generation: Cell::new(0),
            queue_notifier: RefCell::new(None),
        })
    }

    /// How an enqueue on any thread reaches this VM's thread for the queues it
    /// registers; set before the VM starts. Without one, queues this VM registers
    /// are never reported ready (a dequeue still finds the items).
    pub fn set_queue_notifier(&self, notifier: QueueNotifier) {
        *self.queue_notifier.borrow_mut() = Some(notifier);
    }

    /// `proxy_on_queue_ready` on the root context, for queue `id`, which this VM
    /// registered.
    pub fn on_queue_ready(&self, id: u32) -> Result<(), WasmError> {
        self.ensure_running().map_err(|e| *e)?;
        self.with_running(self.generation.get(), |vm| {
            let root = vm.root_context_id;
            let exports = vm.exports.clone();
            match &exports.on_queue_ready {
                Some(ready) => vm.call(
                    "proxy_on_queue_ready",
                    root,
                    ready,
                    (root as i32, id as i32),
                ),
                None => Ok(()),
            }
        })
        .map_err(|e| *e)
    }

    pub fn plugin(&self) -> &Arc<WasmPlugin> {
        &self.plugin
    }

    /// Starts the VM now rather than on the first stream, so configuration errors
    /// (`proxy_on_configure` returning false) surface at config time.
    pub fn start(&self) -> Result<(), WasmError> {
        self.ensure_running().map(|_| ()).map_err(|e| *e)
    }

    /// The tick period the plugin asked for (zero: no ticks).
    pub fn tick_period(&self) -> std::time::Duration {
        let running = self.running.borrow();
        running
            .as_ref()
            .map_or(std::time::Duration::ZERO, |r| r.store.data().tick_period)
    }

    /// Runs `proxy_on_tick` on the root context; the worker calls this every
    /// `tick_period`.
    pub fn on_tick(&self) -> Result<(), WasmError> {
        self.ensure_running().map_err(|e| *e)?;
        self.with_running(self.generation.get(), |vm| {
            let root = vm.root_context_id;
            let exports = vm.exports.clone();
            match &exports.on_tick {
                Some(on_tick) => vm.call("proxy_on_tick", root, on_tick, root as i32),
                None => Ok(()),
            }
        })
        .map_err(|e| *e)
    }

    /// Calls the root context dispatched (in `proxy_on_tick`, `proxy_on_configure`,
    /// …), with the VM generation to answer them to.
    pub fn take_root_calls(&self) -> (u64, Vec<Dispatch>) {
        let calls = self
            .with_running(self.generation.get(), |vm| Ok(vm.take_dispatched()))
            .unwrap_or_default();
        (self.generation.get(), calls)
    }

    /// Answers a call the root context made; new calls it dispatches in the
    /// callback are in the next `take_root_calls`.
    pub fn root_call_answer(
        &self,
        generation: u64,
        token: u32,
        answer: CallAnswer,
    ) -> Result<(), WasmError> {
        self.with_running(generation, |vm| {
            vm.call_answer(token, answer, &mut StreamData::default())
                .map(|_| ())
        })
        .map_err(|e| *e)
    }

    fn ensure_running(&self) -> Result<u64, Failure> {
        let mut running = self.running.borrow_mut();
        if running.as_ref().is_some_and(|vm| !vm.failed) {
            return Ok(self.generation.get());
        }
        *running = None;
        self.generation.set(self.generation.get() + 1);
        self.plugin.stats.vm_starts.fetch_add(1, Ordering::Relaxed);
        let notifier = self.queue_notifier.borrow().clone();
        *running = Some(Running::start(&self.plugin, notifier).map_err(Box::new)?);
        Ok(self.generation.get())
    }

    /// A new stream context; returns the VM generation and the context id.
    pub(crate) fn create_stream(&self) -> Result<(u64, u32), Failure> {
        let generation = self.ensure_running()?;
        self.with_running(generation, |vm| {
            let id = vm.next_context_id;
            // At 100k streams/s a u32 wraps in about 12 hours; ids restart above
            // the root's. A stream would have to outlive 4 billion others to clash.
            vm.next_context_id = match id.wrapping_add(1) {
                next if next > vm.root_context_id => next,
                _ => vm.root_context_id + 1,
            };
            vm.store
                .data_mut()
                .signals
                .insert(id, StreamSignals::default());
            let (root, exports) = (vm.root_context_id, vm.exports.clone());
            vm.call(
                "proxy_on_context_create",
                id,
                &exports.on_context_create,
                (id as i32, root as i32),
            )?;
            Ok((generation, id))
        })
    }

    /// Runs `f` on the VM if it is still the one of `generation` and has not failed.
    pub(crate) fn with_running<R>(
        &self,
        generation: u64,
        f: impl FnOnce(&mut Running) -> Result<R, Failure>,
    ) -> Result<R, Failure> {
        let mut running = self.running.borrow_mut();
        match running.as_mut() {
            Some(vm) if generation == self.generation.get() && !vm.failed => f(vm),
            _ => Err(Box::new(WasmError::VmFailed {
                plugin: self.plugin.config.name.clone(),
            })),
        }
    }
}

/// A 0.2 headers callback: `(context, headers, end_of_stream)`.
type HeadersFn = Option<TypedFunc<(i32, i32, i32), i32>>;
/// An ABI 0.1.0 headers callback: `(context, headers)`.
type HeadersFn01 = Option<TypedFunc<(i32, i32), i32>>;

/// `proxy_on_http_call_response(context, token, headers, body_size, trailers)`.
type CallResponseFn = TypedFunc<(i32, i32, i32, i32, i32), ()>;

/// Exports the host calls, looked up once per instance. Shared by `Rc`: cloning a
/// `TypedFunc` bumps wasmtime's type-registry reference counts, which cost about
/// 3k instructions per proxied request when each call cloned the table.
pub(crate) struct Exports {
    on_context_create: TypedFunc<(i32, i32), ()>,
    on_request_headers: HeadersFn,
    /// ABI 0.1.0's headers callbacks: `(context, headers)`, no `end_of_stream`.
    on_request_headers_01: HeadersFn01,
    on_response_headers_01: HeadersFn01,
    on_request_body: Option<TypedFunc<(i32, i32, i32), i32>>,
    on_request_trailers: Option<TypedFunc<(i32, i32), i32>>,
    on_response_headers: HeadersFn,
    on_response_body: Option<TypedFunc<(i32, i32, i32), i32>>,
    on_response_trailers: Option<TypedFunc<(i32, i32), i32>>,
    on_log: Option<TypedFunc<i32, ()>>,
    on_done: Option<TypedFunc<i32, i32>>,
    on_delete: Option<TypedFunc<i32, ()>>,
    on_tick: Option<TypedFunc<i32, ()>>,
    on_http_call_response: Option<CallResponseFn>,
    on_queue_ready: Option<TypedFunc<(i32, i32), ()>>,
    on_grpc_receive: Option<TypedFunc<(i32, i32, i32), ()>>,
    on_grpc_close: Option<TypedFunc<(i32, i32, i32), ()>>,
    on_grpc_receive_initial_metadata: Option<TypedFunc<(i32, i32, i32), ()>>,
    on_grpc_receive_trailing_metadata: Option<TypedFunc<(i32, i32, i32), ()>>,
    /// The network-filter callbacks (`super::network`).
    pub(crate) network: super::network::NetworkExports,
}

/// A live instance.
pub(crate) struct Running {
    pub(crate) store: Store<HostState>,
    pub(crate) exports: Rc<Exports>,
    plugin: Arc<WasmPlugin>,
    root_context_id: u32,
    next_context_id: u32,
    deadline_ticks: u64,
    failed: bool,
}

impl Running {
    fn start(plugin: &Arc<WasmPlugin>, notifier: Option<QueueNotifier>) -> Result<Self, WasmError> {
        let config = &plugin.config;
        let link_error = |e: wasmtime::Error| WasmError::Link {
            plugin: config.name.clone(),
            message: format!("{e:#}"),
        };
        let mut store = Store::new(plugin.engine.engine(), HostState::new(config.clone()));
        store.limiter(|state| &mut state.limiter);
        store.data_mut().queue_notifier = notifier;
        let deadline_ticks = deadline_ticks(config.limits.callback_deadline);
        // Instantiation runs the guest's start function and data initialisers.
        store.set_epoch_deadline(deadline_ticks);
        let instance = plugin.pre.instantiate(&mut store).map_err(link_error)?;

        let missing = |what: &str| WasmError::Abi {
            plugin: config.name.clone(),
            detail: format!("missing export {what}"),
        };
        store.data_mut().memory = instance.get_memory(&mut store, "memory");
        if store.data().memory.is_none() {
            return Err(missing("memory"));
        }
        let allocate = ["proxy_on_memory_allocate", "malloc"]
            .into_iter()
            .find_map(|name| instance.get_typed_func::<i32, i32>(&mut store, name).ok());
        store.data_mut().allocate =
            Some(allocate.ok_or_else(|| missing("proxy_on_memory_allocate"))?);

        macro_rules! optional {
            ($name:literal) => {
                match instance.get_export(&mut store, $name) {
                    None => None,
                    Some(_) => Some(instance.get_typed_func(&mut store, $name).map_err(|e| {
                        WasmError::Abi {
                            plugin: config.name.clone(),
                            detail: format!("export {} has the wrong type: {e}", $name),
                        }
                    })?),
                }
            };
        }
        let on_context_create = optional!("proxy_on_context_create")
            .ok_or_else(|| missing("proxy_on_context_create"))?;
        let abi01 = plugin.abi_version() == AbiVersion::V0_1_0;
        store.data_mut().abi01 = abi01;
        let (headers_02, headers_01) = match abi01 {
            false => (
                (
                    optional!("proxy_on_request_headers"),
                    optional!("proxy_on_response_headers"),
                ),
                (None, None),
            ),
            true => (
                (None, None),
                (
                    optional!("proxy_on_request_headers"),
                    optional!("proxy_on_response_headers"),
                ),
            ),
        };
        let exports = Rc::new(Exports {
            on_context_create: on_context_create.clone(),
            on_request_headers: headers_02.0,
            on_request_headers_01: headers_01.0,
            on_response_headers_01: headers_01.1,
            on_request_body: optional!("proxy_on_request_body"),
            on_request_trailers: optional!("proxy_on_request_trailers"),
            on_response_headers: headers_02.1,
            on_response_body: optional!("proxy_on_response_body"),
            on_response_trailers: optional!("proxy_on_response_trailers"),
            on_log: optional!("proxy_on_log"),
            on_done: optional!("proxy_on_done"),
            on_delete: optional!("proxy_on_delete"),
            on_tick: optional!("proxy_on_tick"),
            on_http_call_response: optional!("proxy_on_http_call_response"),
            on_queue_ready: optional!("proxy_on_queue_ready"),
            on_grpc_receive: optional!("proxy_on_grpc_receive"),
            on_grpc_close: optional!("proxy_on_grpc_close"),
            on_grpc_receive_initial_metadata: optional!("proxy_on_grpc_receive_initial_metadata"),
            on_grpc_receive_trailing_metadata: optional!("proxy_on_grpc_receive_trailing_metadata"),
            network: super::network::NetworkExports::lookup(&instance, &mut store, &config.name)?,
        });
        let initialize: Option<TypedFunc<(), ()>> = optional!("_initialize");
        let start: Option<TypedFunc<(), ()>> = optional!("_start");
        let on_vm_start: Option<TypedFunc<(i32, i32), i32>> = optional!("proxy_on_vm_start");
        let on_configure: Option<TypedFunc<(i32, i32), i32>> = optional!("proxy_on_configure");

        let root = 1;
        store.data_mut().root_context_id = root;
        let mut vm = Running {
            store,
            exports,
            plugin: plugin.clone(),
            root_context_id: root,
            next_context_id: root + 1,
            deadline_ticks,
            failed: false,
        };
        // Reactors (Rust SDK) export _initialize, WASI commands (TinyGo) _start.
        if let Some(initialize) = initialize {
            vm.call("_initialize", root, &initialize, ())?;
        } else if let Some(start) = start {
            vm.call("_start", root, &start, ())?;
        }
        vm.call(
            "proxy_on_context_create",
            root,
            &on_context_create,
            (root as i32, 0),
        )?;
        let started = |callback: &'static str, ok: i32| match ok {
            0 => Err(WasmError::Start {
                plugin: config.name.clone(),
                callback,
            }),
            _ => Ok(()),
        };
        if let Some(on_vm_start) = on_vm_start {
            let size = config.vm_configuration.len() as i32;
            started(
                "proxy_on_vm_start",
                vm.call("proxy_on_vm_start", root, &on_vm_start, (root as i32, size))?,
            )?;
        }
        if let Some(on_configure) = on_configure {
            let size = config.configuration.len() as i32;
            started(
                "proxy_on_configure",
                vm.call(
                    "proxy_on_configure",
                    root,
                    &on_configure,
                    (root as i32, size),
                )?,
            )?;
        }
        Ok(vm)
    }

    /// Calls into the guest for `context` under the CPU deadline. Any failure marks
    /// the VM failed: after a trap its memory may be inconsistent.
    pub(crate) fn call<P: WasmParams, R: WasmResults>(
        &mut self,
        callback: &'static str,
        context: u32,
        func: &TypedFunc<P, R>,
        params: P,
    ) -> Result<R, Failure> {
        self.store.data_mut().effective_context = context;
        self.store.set_epoch_deadline(self.deadline_ticks);
        match func.call(&mut self.store, params) {
            Ok(result) => Ok(result),
            Err(error) => Err(self.failed(callback, error)),
        }
    }

    /// Marks the VM failed, counts and logs the failure. Out of line: every call
    /// returns through `call`, and this path (a formatted log line) made its frame
    /// and register saves several times those of the success path.
    #[cold]
    #[inline(never)]
    fn failed(&mut self, callback: &'static str, error: wasmtime::Error) -> Failure {
        self.failed = true;
        self.plugin.stats.failures.fetch_add(1, Ordering::Relaxed);
        let error = self.classify(callback, error);
        let backtrace = match &error {
            WasmError::Trap { backtrace, .. } => backtrace.as_str(),
            _ => "",
        };
        tracing::error!(
            target: "strait::wasm",
            plugin = %self.plugin.config.name,
            error = %error,
            backtrace,
            "plugin failed; its VM will be restarted for the next stream"
        );
        Box::new(error)
    }

    fn classify(&self, callback: &'static str, error: wasmtime::Error) -> WasmError {
        let config = &self.plugin.config;
        let plugin = config.name.clone();
        if error.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
            return WasmError::Deadline {
                plugin,
                callback,
                deadline: config.limits.callback_deadline,
            };
        }
        if self.store.data().limiter.exceeded {
            return WasmError::MemoryLimit {
                plugin,
                callback,
                limit_bytes: config.limits.memory_bytes,
            };
        }
        let message = match error.downcast_ref::<ProcExit>() {
            Some(exit) => exit.to_string(),
            None => error.root_cause().to_string(),
        };
        let backtrace = error
            .downcast_ref::<WasmBacktrace>()
            .map(ToString::to_string)
            .unwrap_or_default();
        WasmError::Trap {
            plugin,
            callback,
            message,
            backtrace,
        }
    }

    /// Runs one HTTP phase; a module without that callback continues.
    pub(crate) fn http_phase(
        &mut self,
        phase: Phase,
        context: u32,
        size: usize,
        end_of_stream: bool,
    ) -> Result<i32, Failure> {
        let (ctx, size, eos) = (context as i32, size as i32, i32::from(end_of_stream));
        let e = Rc::clone(&self.exports);
        let result = match phase {
            Phase::RequestHeaders => self.headers_call(
                "proxy_on_request_headers",
                context,
                (&e.on_request_headers_01, &e.on_request_headers),
                (size, eos),
            ),
            Phase::RequestBody => e
                .on_request_body
                .as_ref()
                .map(|f| self.call("proxy_on_request_body", context, f, (ctx, size, eos))),
            Phase::RequestTrailers => e
                .on_request_trailers
                .as_ref()
                .map(|f| self.call("proxy_on_request_trailers", context, f, (ctx, size))),
            Phase::ResponseHeaders => self.headers_call(
                "proxy_on_response_headers",
                context,
                (&e.on_response_headers_01, &e.on_response_headers),
                (size, eos),
            ),
            Phase::ResponseBody => e
                .on_response_body
                .as_ref()
                .map(|f| self.call("proxy_on_response_body", context, f, (ctx, size, eos))),
            Phase::ResponseTrailers => e
                .on_response_trailers
                .as_ref()
                .map(|f| self.call("proxy_on_response_trailers", context, f, (ctx, size))),
        };
        result.unwrap_or(Ok(0))
    }

    /// A headers callback, in the shape of the module's ABI: `(context, headers)` for
    /// 0.1.0, `(context, headers, end_of_stream)` after.
    fn headers_call(
        &mut self,
        name: &'static str,
        context: u32,
        (abi01, abi02): (&HeadersFn01, &HeadersFn),
        (size, eos): (i32, i32),
    ) -> Option<Result<i32, Failure>> {
        let ctx = context as i32;
        match (abi01, abi02) {
            (Some(f), _) => Some(self.call(name, context, f, (ctx, size))),
            (None, f) => f
                .as_ref()
                .map(|f| self.call(name, context, f, (ctx, size, eos))),
        }
    }

    /// `proxy_on_log`, then `proxy_on_done` and `proxy_on_delete`: the end of a
    /// stream context. The context is forgotten even if the plugin fails here.
    pub(crate) fn finish_stream(&mut self, context: u32, log: bool) -> Result<(), Failure> {
        let e = Rc::clone(&self.exports);
        let ctx = context as i32;
        let result = (|| {
            if let (true, Some(on_log)) = (log, &e.on_log) {
                self.call("proxy_on_log", context, on_log, ctx)?;
            }
            // on_done returning false asks the host to wait for proxy_done; a stream
            // has nothing left to wait for, so it is deleted either way.
            if let Some(on_done) = &e.on_done {
                self.call("proxy_on_done", context, on_done, ctx)?;
            }
            if let Some(on_delete) = &e.on_delete {
                self.call("proxy_on_delete", context, on_delete, ctx)?;
            }
            Ok(())
        })();
        let state = self.store.data_mut();
        state.signals.remove(&context);
        // Envoy cancels a context's callouts when it is deleted.
        state.calls.retain(|_, owner| *owner != context);
        if !state.properties.is_empty() {
            state.properties.retain(|(owner, _), _| *owner != context);
        }
        result
    }

    /// The answer to the call `token`, on the context that made it, with `data`
    /// (the stream parts the caller lends, e.g. a paused request head) in the store:
    /// `proxy_on_http_call_response`, or for a gRPC call `proxy_on_grpc_receive`
    /// (OK) / `proxy_on_grpc_close` (any other status). Returns that context, or
    /// `None` when the call is unknown (its context ended or it was cancelled; Envoy
    /// cancels such calls).
    pub(crate) fn call_answer(
        &mut self,
        token: u32,
        answer: CallAnswer,
        data: &mut StreamData,
    ) -> Result<Option<u32>, Failure> {
        let calls = &mut self.store.data_mut().calls;
        let context = match answer.is_final() {
            true => calls.remove(&token),
            false => calls.get(&token).copied(),
        };
        let Some(context) = context else {
            return Ok(None);
        };
        let e = Rc::clone(&self.exports);
        let (ctx, tok) = (context as i32, token as i32);
        let state = self.store.data_mut();
        state.stream.exchange(data);
        let result = match answer {
            CallAnswer::Http(response) => match &e.on_http_call_response {
                None => Ok(()),
                Some(callback) => {
                    let (headers, body, trailers) = match &response {
                        Some(r) => (
                            r.head.headers.len() + 1,
                            r.body.len(),
                            r.trailers.as_ref().map_or(0, HeaderMap::len),
                        ),
                        None => (0, 0, 0),
                    };
                    if let Some(response) = response {
                        let stream = &mut self.store.data_mut().stream;
                        stream.call_response = Some(response.head);
                        stream.call_body = Some(BodyBuffer::from(&response.body[..]));
                        stream.call_trailers = Some(response.trailers.unwrap_or_default());
                    }
                    let (h, b, t) = (headers as i32, body as i32, trailers as i32);
                    self.call(
                        "proxy_on_http_call_response",
                        context,
                        callback,
                        (ctx, tok, h, b, t),
                    )
                }
            },
            CallAnswer::Grpc(result) => {
                let state = self.store.data_mut();
                state.grpc_status = (result.status, result.message);
                match (result.status, &e.on_grpc_receive, &e.on_grpc_close) {
                    (0, Some(receive), _) => {
                        let size = result.response.len() as i32;
                        state.stream.grpc_message = Some(BodyBuffer::from(&result.response[..]));
                        self.call("proxy_on_grpc_receive", context, receive, (ctx, tok, size))
                    }
                    (0, None, _) => Ok(()),
                    (status, _, Some(close)) => self.call(
                        "proxy_on_grpc_close",
                        context,
                        close,
                        (ctx, tok, status as i32),
                    ),
                    (_, _, None) => Ok(()),
                }
            }
            CallAnswer::GrpcStream(event) => {
                let state = self.store.data_mut();
                match event {
                    GrpcStreamEvent::InitialMetadata(headers) => {
                        let count = headers.len() as i32;
                        state.stream.grpc_initial_metadata = Some(headers);
                        match &e.on_grpc_receive_initial_metadata {
                            Some(f) => self.call(
                                "proxy_on_grpc_receive_initial_metadata",
                                context,
                                f,
                                (ctx, tok, count),
                            ),
                            None => Ok(()),
                        }
                    }
                    GrpcStreamEvent::Message(message) => {
                        let size = message.len() as i32;
                        state.stream.grpc_message = Some(BodyBuffer::from(&message[..]));
                        match &e.on_grpc_receive {
                            Some(f) => {
                                self.call("proxy_on_grpc_receive", context, f, (ctx, tok, size))
                            }
                            None => Ok(()),
                        }
                    }
                    GrpcStreamEvent::TrailingMetadata(trailers) => {
                        let count = trailers.len() as i32;
                        state.stream.grpc_trailing_metadata = Some(trailers);
                        match &e.on_grpc_receive_trailing_metadata {
                            Some(f) => self.call(
                                "proxy_on_grpc_receive_trailing_metadata",
                                context,
                                f,
                                (ctx, tok, count),
                            ),
                            None => Ok(()),
                        }
                    }
                    GrpcStreamEvent::Close { status, message } => {
                        state.grpc_status = (status, message);
                        match &e.on_grpc_close {
                            Some(f) => self.call(
                                "proxy_on_grpc_close",
                                context,
                                f,
                                (ctx, tok, status as i32),
                            ),
                            None => Ok(()),
                        }
                    }
                }
            }
        };
        let stream = &mut self.store.data_mut().stream;
        stream.call_response = None;
        stream.call_body = None;
        stream.call_trailers = None;
        stream.grpc_message = None;
        stream.grpc_initial_metadata = None;
        stream.grpc_trailing_metadata = None;
        stream.exchange(data);
        result.map(|()| Some(context))
    }

    /// The calls dispatched since the last take, for the embedder to send.
    pub(crate) fn take_dispatched(&mut self) -> Vec<Dispatch> {
        std::mem::take(&mut self.store.data_mut().dispatched)
    }

    /// Moves the calls made since the last take to the end of `into`; after most
    /// callbacks there are none, and then nothing is built or dropped.
    pub(crate) fn move_dispatched(&mut self, into: &mut Vec<Dispatch>) {
        let dispatched = &mut self.store.data_mut().dispatched;
        if !dispatched.is_empty() {
            into.append(dispatched);
        }
    }

    /// Whether `context` has calls in flight.
    pub(crate) fn has_calls(&self, context: u32) -> bool {
        self.store
            .data()
            .calls
            .values()
            .any(|owner| *owner == context)
    }

    /// Takes what the plugin asked for this stream during the last callback.
    pub(crate) fn take_signals(&mut self, context: u32) -> StreamSignals {
        let state = self.store.data_mut();
        if !state.signaled {
            return StreamSignals::default();
        }
        let taken = state
            .signals
            .get_mut(&context)
            .map(std::mem::take)
            .unwrap_or_default();
        // Another context may still hold one (a root context's callback can signal
        // a stream through `proxy_set_effective_context`): rare, so a scan is fine.
        state.signaled = state.signals.values().any(StreamSignals::is_set);
        taken
    }
}
