//! The HTTP filter chain runner: the configured `http_filters` (proxy-wasm plugins
//! and the native fault, set_filter_state, health_check and local_ratelimit filters)
//! between the connection manager and the router.
//!
//! Filters run in config order. Wasm filters are synchronous calls (below); a fault
//! filter (`crate::fault`) is awaited between them, since a delay is a sleep. So the
//! request-headers phase runs the wasm slots in segments: those before the first
//! fault filter, the fault, the next segment, and so on ([`request_headers`]).
//! Fault filters have no response, body or log phase; the health check filter's
//! response phase is the router's call (`crate::health_filter`).
//!
//! # Where the filters live
//!
//! A `WasmVm` is `Rc` (one instance per worker, never shared across threads), yet the
//! request future must stay `Send` because hyper's executor spawns it with
//! `tokio::spawn`. So the filters never enter the future: each worker keeps its VMs
//! and every stream's filter objects in thread-locals, and the router holds only a
//! [`ChainHandle`], a stream id. A phase is a synchronous call through
//! `with_stream(id, |chain| …)`; nothing is borrowed across an `.await`. Workers are
//! current-thread runtimes, so a stream's future, its bodies and its handle all run
//! on the worker that created them; a handle dropped on another thread finds nothing
//! and does nothing.
//!
//! A worker creates a plugin's VM on the first stream that needs it. Plugins are
//! keyed by a process-unique id given when the runtime compiled them, so after a
//! reload that swaps a plugin new streams get a VM of the new plugin while streams
//! in flight finish on the old one (their filters hold the old `Rc<WasmVm>`); a VM
//! whose plugin no runtime references any more is dropped when the next one is made.
//!
//! A VM whose plugin set a tick period (`proxy_set_tick_period_milliseconds`, in
//! `proxy_on_vm_start` or `proxy_on_configure`) gets a tick task on its worker,
//! spawned with it. The task holds only the plugin's id and a `Weak` to its runtime
//! (both `Send`), finds the VM in the thread-local each period and calls
//! `proxy_on_tick`; it ends when the VM is gone or its runtime was dropped.
//!
//! Plugin metrics (`proxy_define_metric`) live in `strait_filters`' process-wide
//! atomics; the stats store reads them only when rendering, under Envoy's names:
//! `wasmcustom.<name>` in `/stats`, `<name>` as is in Prometheus.
//!
//! # Callouts
//!
//! A plugin's `proxy_http_call` is recorded by its VM; after the callback the chain
//! takes the calls and runs each as a task on the worker ([`crate::callout`]),
//! holding only ids, so the task is `Send`. The answer comes back through
//! `deliver`: if the stream's headers phase is paused waiting for it, it is queued
//! and the waiting phase (`wait_resumed`, awaited by the router) runs
//! `proxy_on_http_call_response` with the paused head lent to the plugin; otherwise
//! the callback runs at once without it. A filter pauses a headers phase only
//! while it has calls in flight; the stream's calls are aborted when it ends. Root
//! contexts' calls (from `on_tick` or configure) go back to the root context.
//!
//! Cost: a listener without `http_filters` pays nothing (no handle, no lookups); one
//! with only fault filters makes no handle either.
//! With plugins, each phase is one hash lookup plus the guest call; body chunks are
//! copied once into the filter's buffer.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::StatusCode;
use strait_filters::stream_info::{FilterStateObject, SentHead, StreamInfo};
use strait_filters::wasm::filter::Paused;
use strait_filters::wasm::shared::{MetricKind, Metrics};
use strait_filters::wasm::{
    grpc_frame, CallAnswer, CallKind, Dispatch, NodeInfo, PluginConfig, StreamOp, WasmEngine,
    WasmHttpFilter, WasmPlugin, WasmVm,
};
use strait_filters::{BodyBuffer, FilterStatus, HttpFilter, LocalReply, RequestHead, ResponseHead};
use strait_xds::model::{HttpConnectionManager, SetFilterStateConfig, WasmFilterConfig};
use tokio::sync::{mpsc, Notify};
use tokio::task::AbortHandle;

use crate::error::ProxyError;
use crate::fault::FaultFilterRuntime;
use crate::health_filter::{HealthCheckRuntime, HealthChecks};
use crate::rate_limit::{LocalRateLimitRuntime, XRateLimit};
use crate::runtime::{FastMap, ListenerRuntime};
use crate::stats::{Counter, ExternalStat, ExternalValue, Scope, StatSource, Store};
use crate::stream::StreamGuard;

/// A compiled plugin as the runtime holds it, shared by all workers.
pub struct WasmFilterRuntime {
    pub config: Arc<WasmFilterConfig>,
    pub plugin: Arc<WasmPlugin>,
    /// Process-unique; keys the workers' VMs.
    id: u64,
    /// `wasm.<name>.vm_failed`: callbacks that trapped, ran out of time or memory.
    vm_failed: Counter,
    /// How much of `plugin.stats().failures` is in `vm_failed` already.
    exported_failures: AtomicU64,
}

impl WasmFilterRuntime {
    /// Compiles and links the module `code` (the file's or the fetched one; the
    /// engine's module cache may already hold it compiled) and starts one VM (run
    /// `proxy_on_vm_start` and `proxy_on_configure`) so a bad plugin rejects the
    /// config. Errors name the filter's field path and the module's source.
    pub fn compile(
        config: Arc<WasmFilterConfig>,
        code: Bytes,
        node: Arc<NodeInfo>,
        store: &Store,
    ) -> anyhow::Result<Arc<Self>> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let mut plugin = PluginConfig::new(config.name.clone(), code);
        plugin.node = node;
        plugin.root_id.clone_from(&config.root_id);
        plugin.vm_id.clone_from(&config.vm_id);
        plugin.configuration = Bytes::from(config.configuration.clone());
        plugin.vm_configuration = Bytes::from(config.vm_configuration.clone());
        plugin.environment.clone_from(&config.environment);
        plugin.fail_open = config.fail_open;
        let error = |e: &dyn std::fmt::Display| {
            anyhow::anyhow!("{}: module {}: {e}", config.path, config.code_source)
        };
        let plugin = WasmPlugin::new(WasmEngine::shared(), plugin).map_err(|e| error(&e))?;
        tracing::info!(plugin = %config.name, module = %config.code_source, sha256 = %plugin.module_sha256(), origin = ?plugin.module_origin(), "wasm module loaded");
        WasmVm::new(plugin.clone()).start().map_err(|e| error(&e))?;
        store.add_source("wasm", || Arc::new(plugin_metrics) as StatSource);
        store.add_source("wasm_compile_cache", || {
            Arc::new(compile_cache_metrics) as StatSource
        });
        let scope = Scope::custom(&format!("wasm.{}", config.name));
        Ok(Arc::new(WasmFilterRuntime {
            vm_failed: store.counter(&scope, "vm_failed"),
            config,
            plugin,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            exported_failures: AtomicU64::new(0),
        }))
    }

    /// Whether `other` would compile to the same plugin (the field path aside), so a
    /// reload can keep this one.
    pub fn same_plugin(&self, other: &WasmFilterConfig) -> bool {
        let a = &*self.config;
        a.name == other.name
            && a.root_id == other.root_id
            && a.vm_id == other.vm_id
            && a.configuration == other.configuration
            && a.vm_configuration == other.vm_configuration
            && a.environment == other.environment
            && a.fail_open == other.fail_open
            && a.code == other.code
            && a.remote.as_ref().map(|r| &r.sha256) == other.remote.as_ref().map(|r| &r.sha256)
    }

    /// Moves new VM failures of this plugin into the `vm_failed` counter; `fetch_max`
    /// keeps two workers from adding the same failure twice.
    pub(crate) fn export_failures(&self) {
        let failures = self.plugin.stats().failures();
        let before = self
            .exported_failures
            .fetch_max(failures, Ordering::Relaxed);
        if failures > before {
            self.vm_failed.add(failures - before);
        }
    }
}

/// Every plugin-defined metric under Envoy's names. Envoy exports a name that does
/// not start with a letter or `_` (once sanitized) nowhere in Prometheus; we leave it
/// out of both.
fn plugin_metrics() -> Vec<ExternalStat> {
    Metrics::global()
        .snapshot()
        .into_iter()
        .filter(|(name, _)| name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_'))
        .map(|(name, metric)| ExternalStat {
            name: format!("wasmcustom.{name}"),
            value: match metric.kind {
                MetricKind::Counter => ExternalValue::Counter(metric.value()),
                // Gauges are i64 in two's complement.
                MetricKind::Gauge => ExternalValue::Gauge(metric.value() as i64),
                MetricKind::Histogram => ExternalValue::Histogram {
                    sum: metric.value(),
                    count: metric.count(),
                },
            },
            family: name,
        })
        .collect()
}

/// The shared engine's module cache counters: `wasm.compile_cache_hits` (compiled
/// modules read from disk), `compile_cache_misses` (modules compiled),
/// `compile_cache_rejected` (bad disk entries ignored and replaced),
/// `compile_cache_write_failures`, and `modules_shared` (plugins that found their
/// module already loaded in the process). Strait's own: Envoy has no compile cache.
fn compile_cache_metrics() -> Vec<ExternalStat> {
    let stats = WasmEngine::shared().modules().stats();
    let counters = [
        ("compile_cache_hits", &stats.disk_hits),
        ("compile_cache_misses", &stats.misses),
        ("compile_cache_rejected", &stats.rejected),
        ("compile_cache_write_failures", &stats.write_failures),
        ("modules_shared", &stats.memory_hits),
    ];
    counters
        .into_iter()
        .map(|(name, counter)| ExternalStat {
            name: format!("wasm.{name}"),
            family: format!("envoy_wasm_{name}"),
            value: ExternalValue::Counter(counter.load(Ordering::Relaxed)),
        })
        .collect()
}

/// What a headers phase decided. The reply is boxed: a verdict is returned through
/// every layer of a phase, and inline it made each return a ~160-byte copy.
pub enum Verdict {
    Continue,
    LocalReply(Box<LocalReply>),
}

/// What a body phase decided for one chunk.
pub enum BodyVerdict {
    /// Send these bytes on (possibly empty, possibly more than the chunk).
    Forward(Bytes),
    /// A filter holds the data back until more arrives.
    Hold,
    /// A filter paused at the end of the body until its callouts answer: poll
    /// [`ChainId::poll_body_wait`] for what then goes on.
    Wait,
    /// Boxed, as in [`Verdict`].
    LocalReply(Box<LocalReply>),
}

struct Slot {
    filter: WasmHttpFilter,
    runtime: Arc<WasmFilterRuntime>,
    request_buffer: BodyBuffer,
    response_buffer: BodyBuffer,
}

struct StreamChain {
    slots: Vec<Slot>,
    buffer_limit: usize,
    /// A local reply decided while the request body streamed upstream; the router
    /// sends it once the upstream exchange is abandoned.
    pending_reply: Option<LocalReply>,
    /// The stream's callouts in flight, aborted when it ends (Envoy cancels a
    /// context's calls when the context is deleted).
    calls: Vec<AbortHandle>,
    /// The slot whose headers phase waits for its callouts, and the answers that
    /// came back meanwhile, handled in order by the waiting phase. A `Vec`, not a
    /// `VecDeque`: there are few, and dropping an empty deque cost ~38 instructions
    /// a stream.
    paused: Option<usize>,
    answers: Vec<Answer>,
    waiter: Option<Arc<Notify>>,
    /// A body phase paused for callouts (the slot is `paused`), and the task of
    /// the body that waits for it.
    body_wait: Option<BodyWait>,
    /// The stream's facts, which its plugins read (properties) and its filters
    /// write (filter state), shared with every wasm filter of the stream.
    info: Rc<RefCell<StreamInfo>>,
}

impl StreamChain {
    /// The oldest answer waiting.
    fn next_answer(&mut self) -> Option<Answer> {
        (!self.answers.is_empty()).then(|| self.answers.remove(0))
    }

    /// The status the response goes out with, for the phases after its headers
    /// (`StreamInfo::keep_status`); only a chain with wasm filters keeps it (only
    /// plugins read it).
    fn keep_status(&mut self, status: StatusCode, details: &'static str) {
        if !self.slots.is_empty() {
            self.info.borrow_mut().keep_status(status, details);
        }
    }
}

/// Where a body phase waits: the request's or the response's body, whether the
/// held chunk ended it, and the body's task to wake when an answer comes.
struct BodyWait {
    request: bool,
    end_of_stream: bool,
    waker: Option<Waker>,
}

/// A callout's answer for the filter in `slot`.
struct Answer {
    slot: usize,
    token: u32,
    response: CallAnswer,
}

thread_local! {
    static VMS: RefCell<FastMap<u64, Rc<WasmVm>>> = RefCell::new(FastMap::default());
    static STREAMS: RefCell<Streams> = RefCell::new(Streams::default());
    static NEXT_STREAM: Cell<u64> = const { Cell::new(1) };
}

/// A worker's streams, by slot: a [`ChainId`] names its slot, so each phase finds
/// its chain by index and a comparison (a hash lookup cost ~25 instructions, and a
/// plugin's stream makes seven). Boxed: inserting and removing moves a pointer, not
/// the ~330-byte chain (the two moves cost more than the allocation).
#[derive(Default)]
struct Streams {
    /// Each slot's chain and the id it was given; `None` when the slot is free.
    slots: Vec<(u64, Option<Box<StreamChain>>)>,
    free: Vec<u32>,
}

impl Streams {
    /// Takes a free slot for `chain`; returns its id, unique among this worker's
    /// streams.
    fn insert(&mut self, chain: Box<StreamChain>) -> u64 {
        // 30 bits of serial above the slot's 32: ids stay below 2^62, the key space
        // of `Owner::Connection` and `Owner::Root` (`Owner::key`).
        let serial = NEXT_STREAM.with(|next| next.replace(next.get() + 1)) & ((1 << 30) - 1);
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                self.slots.push((0, None));
                (self.slots.len() - 1) as u32
            }
        };
        let id = serial << 32 | u64::from(index);
        self.slots[index as usize] = (id, Some(chain));
        id
    }

    fn get_mut(&mut self, id: ChainId) -> Option<&mut StreamChain> {
        match self.slots.get_mut(id.index()) {
            Some((slot_id, Some(chain))) if *slot_id == id.0 => Some(chain),
            _ => None,
        }
    }

    fn remove(&mut self, id: ChainId) -> Option<Box<StreamChain>> {
        let (slot_id, chain) = self.slots.get_mut(id.index())?;
        if *slot_id != id.0 {
            return None;
        }
        let chain = chain.take()?;
        self.free.push(id.index() as u32);
        Some(chain)
    }
}

/// This worker's VM of `runtime`'s plugin, created on first use.
pub(crate) fn vm_for(runtime: &Arc<WasmFilterRuntime>) -> Rc<WasmVm> {
    VMS.with(|vms| {
        let mut vms = vms.borrow_mut();
        if let Some(vm) = vms.get(&runtime.id) {
            return vm.clone();
        }
        // Plugins only this map still references were replaced by a reload.
        vms.retain(|_, vm| Arc::strong_count(vm.plugin()) > 1);
        let vm = WasmVm::new(runtime.plugin.clone());
        if let Some(events) = queue_events() {
            let (id, runtime) = (runtime.id, Arc::downgrade(runtime));
            vm.set_queue_notifier(Arc::new(move |queue| {
                let _ = events.send((id, runtime.clone(), queue));
            }));
        }
        vms.insert(runtime.id, vm.clone());
        // Started here rather than by the first stream, to learn the tick period; a
        // failure is the stream's to report, when it retries the start.
        let started = vm.start().is_ok();
        if started && tokio::runtime::Handle::try_current().is_ok() {
            if !vm.tick_period().is_zero() {
                tokio::spawn(tick(runtime.id, Arc::downgrade(runtime)));
            }
            // Callouts from `proxy_on_vm_start` / `proxy_on_configure`.
            send_root_calls(runtime.id, &vm);
        }
        vm
    })
}

/// A queue ready for plugin `id`'s VM on this worker.
type QueueEvent = (u64, Weak<WasmFilterRuntime>, u32);

/// This worker's sender of queue events (made, with the task that receives them,
/// on first use); `None` outside a runtime.
fn queue_events() -> Option<mpsc::UnboundedSender<QueueEvent>> {
    thread_local! {
        static EVENTS: RefCell<Option<mpsc::UnboundedSender<QueueEvent>>> = const { RefCell::new(None) };
    }
    tokio::runtime::Handle::try_current().ok()?;
    EVENTS.with(|events| {
        let mut events = events.borrow_mut();
        if let Some(sender) = events.as_ref().filter(|s| !s.is_closed()) {
            return Some(sender.clone());
        }
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(queues_ready(receiver));
        *events = Some(sender.clone());
        Some(sender)
    })
}

/// Runs `proxy_on_queue_ready` on this worker's VMs as enqueues (from any thread)
/// report ready queues they registered.
async fn queues_ready(mut events: mpsc::UnboundedReceiver<QueueEvent>) {
    while let Some((id, runtime, queue)) = events.recv().await {
        let Some(vm) = VMS.with(|vms| vms.borrow().get(&id).cloned()) else {
            continue;
        };
        if vm.on_queue_ready(queue).is_err() {
            if let Some(runtime) = runtime.upgrade() {
                runtime.export_failures();
            }
        }
        send_root_calls(id, &vm);
    }
}

/// Calls `proxy_on_tick` on this worker's VM of plugin `id` every tick period, until
/// the VM is gone (its runtime dropped after a reload) or the period is set to zero.
/// A tick that fails marks the VM failed like any callback; the next tick restarts it.
async fn tick(id: u64, runtime: Weak<WasmFilterRuntime>) {
    loop {
        let vm = VMS.with(|vms| vms.borrow().get(&id).cloned());
        let Some(period) = vm.map(|vm| vm.tick_period()).filter(|p| !p.is_zero()) else {
            return;
        };
        tokio::time::sleep(period).await;
        let Some(runtime) = runtime.upgrade() else {
            VMS.with(|vms| vms.borrow_mut().remove(&id));
            return;
        };
        let Some(vm) = VMS.with(|vms| vms.borrow().get(&id).cloned()) else {
            return;
        };
        if vm.on_tick().is_err() {
            runtime.export_failures();
        }
        send_root_calls(id, &vm);
    }
}

/// Starts the callouts a root context dispatched (from `proxy_on_tick`, or from a
/// root callout answer); each answer goes back to the root context of this
/// worker's VM of plugin `id`, if it is still the VM that made the call.
fn send_root_calls(id: u64, vm: &WasmVm) {
    let (generation, calls) = vm.take_root_calls();
    if !calls.is_empty() {
        start(Owner::Root { id, generation }, calls, None);
    }
}

/// Who made a call, so its answers find their way back.
#[derive(Clone, Copy)]
enum Owner {
    /// A stream context: the filter in `slot` of stream `id`.
    Stream { id: ChainId, slot: usize },
    /// The root context of this worker's VM of plugin `id`, if still `generation`.
    Root { id: u64, generation: u64 },
    /// A network filter's connection context: the filter in `slot` of connection
    /// `id` (`crate::netfilter`).
    Connection { id: u64, slot: usize },
}

impl Owner {
    /// Keys this owner's open gRPC streams (stream ids and plugin ids are both
    /// counters from 1; plugins count down from the top).
    fn key(self) -> u64 {
        match self {
            Owner::Stream { id, .. } => id.0,
            Owner::Root { id, .. } => u64::MAX - id,
            // Connection ids count from 1 too; the top bit keeps them apart.
            Owner::Connection { id, .. } => id | 1 << 62,
        }
    }

    /// Hands `answer` for `token` to the context that made the call.
    fn deliver(self, token: u32, answer: CallAnswer) {
        match self {
            Owner::Stream { id, slot } => deliver(id, slot, token, answer),
            Owner::Connection { id, slot } => crate::netfilter::deliver(id, slot, token, answer),
            Owner::Root { id, generation } => {
                let Some(vm) = VMS.with(|vms| vms.borrow().get(&id).cloned()) else {
                    return;
                };
                let _ = vm.root_call_answer(generation, token, answer);
                send_root_calls(id, &vm);
            }
        }
    }
}

/// An open gRPC stream of a plugin: where its messages go (dropped by a
/// half-close) and its task (aborted by a cancel).
pub(crate) struct OpenStream {
    pub messages: Option<mpsc::UnboundedSender<Bytes>>,
    pub task: AbortHandle,
}

impl OpenStream {
    /// Applies a plugin's operation; `true` when the stream is gone (cancelled).
    pub fn apply(&mut self, op: StreamOp) -> bool {
        match op {
            StreamOp::Send {
                message,
                end_stream,
            } => {
                if let Some(messages) = &self.messages {
                    let _ = messages.send(grpc_frame(&message));
                }
                if end_stream {
                    self.messages = None;
                }
            }
            StreamOp::Close => self.messages = None,
            StreamOp::Cancel => {
                self.task.abort();
                return true;
            }
        }
        false
    }
}

thread_local! {
    static GRPC_STREAMS: RefCell<FastMap<(u64, u32), OpenStream>> = RefCell::new(FastMap::default());
}

/// Starts what a callback dispatched, in order: each call as a task on this worker
/// (its answers go back through `owner`), each stream operation to its stream.
/// `tasks` collects the tasks of a stream context, aborted when the stream ends.
fn start(owner: Owner, dispatches: Vec<Dispatch>, mut tasks: Option<&mut Vec<AbortHandle>>) {
    let Some(shared) = crate::callout::worker_shared() else {
        tracing::warn!(target: "strait::wasm", "callout outside a worker dropped");
        return;
    };
    if let Some(tasks) = tasks.as_deref_mut() {
        tasks.retain(|task| !task.is_finished());
    }
    for dispatch in dispatches {
        match dispatch {
            Dispatch::Call(call) if call.kind == CallKind::GrpcStream => {
                let shared = shared.clone();
                let token = call.token;
                let (messages, rx) = mpsc::unbounded_channel();
                let task = tokio::spawn(async move {
                    let runtime = shared.runtime.load_full();
                    crate::callout::grpc_stream(&runtime.clusters, *call, rx, |event| {
                        owner.deliver(token, CallAnswer::GrpcStream(event))
                    })
                    .await;
                    GRPC_STREAMS.with(|s| s.borrow_mut().remove(&(owner.key(), token)));
                });
                let stream = OpenStream {
                    messages: Some(messages),
                    task: task.abort_handle(),
                };
                GRPC_STREAMS.with(|s| s.borrow_mut().insert((owner.key(), token), stream));
                if let Some(tasks) = tasks.as_deref_mut() {
                    tasks.push(task.abort_handle());
                }
            }
            Dispatch::Call(call) => {
                let shared = shared.clone();
                let token = call.token;
                let task = tokio::spawn(async move {
                    let runtime = shared.runtime.load_full();
                    let answer = crate::callout::send(&runtime.clusters, *call).await;
                    owner.deliver(token, answer);
                });
                if let Some(tasks) = tasks.as_deref_mut() {
                    tasks.push(task.abort_handle());
                }
            }
            Dispatch::Stream(token, op) => GRPC_STREAMS.with(|streams| {
                let mut streams = streams.borrow_mut();
                let key = (owner.key(), token);
                if streams.get_mut(&key).is_some_and(|stream| stream.apply(op)) {
                    streams.remove(&key);
                }
            }),
        }
    }
}

/// Starts the callouts of a network filter's connection context; `tasks` collects
/// them, aborted when the connection closes.
pub(crate) fn start_connection_calls(
    id: u64,
    slot: usize,
    calls: Vec<Dispatch>,
    tasks: &mut Vec<AbortHandle>,
) {
    start(Owner::Connection { id, slot }, calls, Some(tasks));
}

/// Forgets (and stops) the gRPC streams of a connection that closed.
pub(crate) fn forget_connection_calls(id: u64) {
    let key = Owner::Connection { id, slot: 0 }.key();
    GRPC_STREAMS.with(|streams| {
        let mut streams = streams.borrow_mut();
        if !streams.is_empty() {
            streams.retain(|(owner, _), stream| {
                if *owner == key {
                    stream.task.abort();
                }
                *owner != key
            });
        }
    });
}

/// Forgets the gRPC streams of a stream that ended (their tasks are aborted with
/// the stream's other calls).
fn forget_streams(id: ChainId) {
    GRPC_STREAMS.with(|streams| {
        let mut streams = streams.borrow_mut();
        if !streams.is_empty() {
            streams.retain(|(owner, _), _| *owner != id.0);
        }
    });
}

/// One stream's filters, by id. Dropping it runs `on_log` and frees the contexts.
pub struct ChainHandle {
    id: u64,
}

/// A copyable reference to a stream's chain, for the bodies: its slot in the
/// worker's table (the low 32 bits) and a serial telling that slot's streams apart.
#[derive(Clone, Copy)]
pub struct ChainId(u64);

impl ChainId {
    fn index(self) -> usize {
        self.0 as u32 as usize
    }
}

impl ChainHandle {
    /// The chain for a new stream; `None` when the listener has no filters that
    /// need one (wasm filters, or `set_filter_state`). `fill` completes the stream's
    /// facts (started at `start_time`), only when there is a chain; in place, as
    /// returned by value they were copied twice (~1 KiB).
    pub fn new(
        listener: &ListenerRuntime,
        start_time: std::time::SystemTime,
        fill: impl FnOnce(&mut StreamInfo),
    ) -> Option<ChainHandle> {
        let filters = &listener.http_filters;
        if filters.is_empty() && !listener.sets_filter_state {
            return None;
        }
        let buffer_limit = listener.config.per_connection_buffer_limit_bytes;
        // Built where it lives: `Rc::new` copied the ~1 KiB value into its allocation
        // (`new_cyclic` allocates first and writes the value there).
        let info = Rc::new_cyclic(|_| RefCell::new(StreamInfo::new(start_time)));
        fill(&mut info.borrow_mut());
        let slots = filters
            .iter()
            .map(|runtime| Slot {
                filter: WasmHttpFilter::with_info(&vm_for(runtime), info.clone()),
                runtime: runtime.clone(),
                request_buffer: BodyBuffer::new(),
                response_buffer: BodyBuffer::new(),
            })
            .collect();
        // Built in its box, not on the stack and copied (~330 bytes).
        let chain = Box::write(
            Box::new_uninit(),
            StreamChain {
                slots,
                buffer_limit: buffer_limit as usize,
                pending_reply: None,
                calls: Vec::new(),
                paused: None,
                answers: Vec::new(),
                waiter: None,
                body_wait: None,
                info,
            },
        );
        let id = STREAMS.with(|streams| streams.borrow_mut().insert(chain));
        Some(ChainHandle { id })
    }

    pub fn id(&self) -> ChainId {
        ChainId(self.id)
    }
}

impl ChainId {
    /// Reads or updates the stream's facts (route, upstream, response, filter state).
    pub fn with_info<R>(self, f: impl FnOnce(&mut StreamInfo) -> R) -> Option<R> {
        with_stream(self, |chain| f(&mut chain.info.borrow_mut()))
    }

    /// Keeps a copy of the request head as it stood when the stream was answered
    /// locally (or as hedged attempts, which hand nothing back, first sent it) for
    /// the plugins' `on_log`; only a chain with wasm filters keeps one. A head the
    /// pool hands back is moved instead ([`Self::keep_sent_request`]).
    pub fn keep_request_head(self, head: &RequestHead) {
        with_stream(self, |chain| {
            if !chain.slots.is_empty() {
                chain.info.borrow_mut().sent_request = Some(SentHead::request(head));
            }
        });
    }

    /// As [`Self::keep_request_head`], from a whole request.
    pub fn keep_request<B>(self, req: &http::Request<B>) {
        with_stream(self, |chain| {
            if !chain.slots.is_empty() {
                chain.info.borrow_mut().sent_request = Some(SentHead::request_of(req));
            }
        });
    }

    /// Keeps the request head the router sent, handed back by the pool once the
    /// exchange is over, for the plugins' `on_log`: moved, not copied.
    pub fn keep_sent_request(self, req: crate::pool::UpstreamRequest) {
        with_stream(self, |chain| {
            if !chain.slots.is_empty() {
                let (head, _) = req.request.into_parts();
                chain.info.borrow_mut().sent_request =
                    Some(SentHead::request_moved(Box::new(head)));
            }
        });
    }

    /// Keeps how the response goes to the client, for the phases after its headers:
    /// `response.code`, and `details` unless a plugin's reply set its own. The head
    /// itself is kept by the downstream codec once it is written
    /// ([`Self::keep_sent_response`]).
    pub fn keep_response_status(self, status: StatusCode, details: &'static str) {
        with_stream(self, |chain| chain.keep_status(status, details));
    }

    /// Keeps the response head as it went to the client, for the plugins' `on_log`:
    /// moved, as Strait's HTTP/1.1 and HTTP/2 servers hand it back after writing from a borrow.
    pub fn keep_sent_response(self, head: ResponseHead) {
        self.keep_response_with(|| SentHead::response_moved(Box::new(head)));
    }

    /// As [`Self::keep_sent_response`], for a codec that consumes the head (hyper's):
    /// a packed copy, made before it goes.
    pub fn keep_response_copy(self, head: &ResponseHead) {
        self.keep_response_with(|| SentHead::response(head));
    }

    /// Keeps what `sent` makes, only in a chain with wasm filters (only they log).
    fn keep_response_with(self, sent: impl FnOnce() -> SentHead) {
        with_stream(self, |chain| {
            if !chain.slots.is_empty() {
                chain.info.borrow_mut().sent_response = Some(sent());
            }
        });
    }

    /// The hash of filter-state object `key` for route `hash_policy.filter_state`:
    /// only `envoy.hashable_string` objects hash (their value's xxHash64), as in Envoy.
    pub fn filter_state_hash(self, key: &str) -> Option<u64> {
        self.with_info(|info| {
            let object = info.filter_state.get(key).filter(|o| o.hashable)?;
            Some(xxhash_rust::xxh64::xxh64(&object.value, 0))
        })
        .flatten()
    }
}

impl Drop for ChainHandle {
    fn drop(&mut self) {
        let Some(mut chain) = STREAMS.with(|streams| streams.borrow_mut().remove(self.id())) else {
            return;
        };
        for call in &chain.calls {
            call.abort();
        }
        if !chain.calls.is_empty() {
            forget_streams(ChainId(self.id));
        }
        // `request.duration`: Envoy completes the request's timing when the stream
        // ends, so plugins see it in `on_log`.
        {
            let mut info = chain.info.borrow_mut();
            info.request_duration = crate::clock::system_now()
                .duration_since(info.start_time)
                .ok();
        }
        // In place: moving each slot out of the vector copied it.
        for slot in &mut chain.slots {
            slot.filter.on_log();
            if slot.filter.error().is_some() {
                slot.runtime.export_failures();
            }
        }
    }
}

fn with_stream<R>(id: ChainId, f: impl FnOnce(&mut StreamChain) -> R) -> Option<R> {
    STREAMS.with(|streams| streams.borrow_mut().get_mut(id).map(f))
}

/// A native filter's place in `http_filters`: after the first `after_wasm` wasm
/// filters (and before the next).
pub struct NativeStage {
    pub after_wasm: usize,
    pub filter: NativeFilter,
}

pub enum NativeFilter {
    /// `envoy.filters.http.fault`: may delay (a sleep) or abort.
    Fault(Arc<FaultFilterRuntime>),
    /// `envoy.filters.http.set_filter_state`: sets the stream's filter state.
    SetFilterState(Arc<SetFilterStateConfig>),
    /// `envoy.filters.http.health_check`: may answer a health check (after reading
    /// its body); it also has a response phase, run by the router through
    /// [`HealthChecks`].
    HealthCheck(Arc<HealthCheckRuntime>),
    /// `envoy.filters.http.local_ratelimit`: may answer a request over its limit
    /// (`crate::rate_limit`); its `x-ratelimit-*` headers go on the response through
    /// [`StageStream::rate_limit`].
    LocalRateLimit(Arc<LocalRateLimitRuntime>),
}

/// What the native filters' request phase touches of a stream beside its head.
pub struct StageStream<'s, 'h> {
    /// The request body: a health check filter that answers reads it first.
    pub body: &'s mut crate::body::DownstreamBody,
    pub guard: &'s mut StreamGuard,
    /// What the request phase leaves for the stream's response.
    pub response: &'s mut StageResponse<'h>,
    /// The connection's id: keys its per-connection rate limit bucket.
    pub conn_id: u64,
}

/// The native filters' response phase: what their request phase left for every
/// response of the stream, proxied or answered locally (a route's direct response,
/// a filter's reply, the proxy's own error): the health check filters' marks and the
/// rate limit filter's `x-ratelimit-*` values. The router applies it in the one
/// place each kind of response passes.
pub struct StageResponse<'a> {
    pub health: HealthChecks<'a>,
    pub rate_limit: XRateLimit,
}

impl<'a> StageResponse<'a> {
    pub fn new(
        shared: &'a crate::runtime::Shared,
        clusters: &'a FastMap<String, Arc<crate::cluster::ClusterRuntime>>,
    ) -> Self {
        StageResponse {
            health: HealthChecks::new(shared, clusters),
            rate_limit: XRateLimit::default(),
        }
    }

    /// The stream reached the filters: their response phase runs from now on.
    pub fn arm(&mut self) {
        self.health.arm();
    }

    /// On a response's headers, before the `server` header is set.
    #[inline]
    pub fn apply(&self, stages: &[NativeStage], status: StatusCode, headers: &mut http::HeaderMap) {
        self.health.response_headers(stages, status, headers);
        self.rate_limit.apply(headers);
    }
}

/// The request-headers phase of every HTTP filter before the router, in config
/// order: wasm filters through `chain` (if the listener has any), native filters
/// in between. The first local reply ends it.
pub async fn request_headers(
    chain: Option<ChainId>,
    stages: &[NativeStage],
    hcm: &HttpConnectionManager,
    head: &mut RequestHead,
    end_of_stream: bool,
    stream: &mut StageStream<'_, '_>,
) -> Verdict {
    let mut ran = 0;
    for (at, stage) in stages.iter().enumerate() {
        if let Some(id) = chain {
            let slots = ran..stage.after_wasm;
            if let Verdict::LocalReply(reply) =
                wasm_request_headers(id, head, end_of_stream, slots, hcm).await
            {
                return Verdict::LocalReply(reply);
            }
        }
        ran = stage.after_wasm;
        match &stage.filter {
            NativeFilter::Fault(fault) => {
                if let Some(reply) = fault.request_headers(hcm, head, stream.guard).await {
                    return Verdict::LocalReply(Box::new(reply));
                }
            }
            NativeFilter::SetFilterState(config) => {
                if let Some(id) = chain {
                    set_filter_state(id, config, head, stream.guard);
                }
            }
            NativeFilter::HealthCheck(filter) => {
                let reply = filter
                    .request_headers(at, hcm, head, end_of_stream, stream)
                    .await;
                if let Some(reply) = reply {
                    return Verdict::LocalReply(Box::new(reply));
                }
            }
            NativeFilter::LocalRateLimit(filter) => {
                if let Some(reply) = filter.request_headers(hcm, head, stream) {
                    return Verdict::LocalReply(Box::new(reply));
                }
            }
        }
    }
    match chain {
        Some(id) => wasm_request_headers(id, head, end_of_stream, ran..usize::MAX, hcm).await,
        None => Verdict::Continue,
    }
}

/// `set_filter_state`: each value's format rendered over the request as it is now
/// (what the filters before it left), stored as a string object. Envoy keeps the
/// first value of a read-only key and logs the refused write; so does this.
fn set_filter_state(
    id: ChainId,
    config: &SetFilterStateConfig,
    head: &RequestHead,
    guard: &StreamGuard,
) {
    let mut text = Vec::new();
    for value in &config.values {
        text.clear();
        crate::access_log::render_request(&value.format, head, guard, &mut text);
        if text.is_empty() && value.skip_if_empty {
            continue;
        }
        let object = FilterStateObject {
            value: Bytes::copy_from_slice(&text),
            hashable: value.hashable,
            read_only: value.read_only,
        };
        let set = id.with_info(|info| info.filter_state.set(&value.key, object));
        if let Some(Err(_)) = set {
            tracing::debug!(key = %value.key, "set_filter_state: the key is read-only; kept its value");
        }
    }
}

/// The request-headers phase of the wasm filters in `slots`, waiting where a
/// filter paused for its callouts.
async fn wasm_request_headers(
    id: ChainId,
    head: &mut RequestHead,
    end_of_stream: bool,
    slots: std::ops::Range<usize>,
    hcm: &HttpConnectionManager,
) -> Verdict {
    let mut start = slots.start;
    loop {
        let step = headers_phase(id, start..slots.end, |f| {
            f.on_request_headers(head, end_of_stream)
        });
        match step {
            Step::Done(verdict) => return verdict,
            Step::Paused(at) => {
                let waited = wait_resumed(id, at, Head::Request(head), end_of_stream, hcm);
                if let Err(reply) = waited.await {
                    return Verdict::LocalReply(Box::new(reply));
                }
                start = at + 1;
            }
        }
    }
}

/// The request-headers phase of a listener with wasm filters only, run at once:
/// no future, no allocation. A filter that paused for its callouts is finished by
/// [`resume_request_headers`], a cold path the router boxes.
pub fn request_headers_now(id: ChainId, head: &mut RequestHead, end_of_stream: bool) -> Step {
    headers_phase(id, 0..usize::MAX, |f| {
        f.on_request_headers(head, end_of_stream)
    })
}

/// Waits for the filter paused at `at`, then runs the filters after it (waiting
/// again where another pauses).
pub async fn resume_request_headers(
    id: ChainId,
    at: usize,
    head: &mut RequestHead,
    end_of_stream: bool,
    hcm: &HttpConnectionManager,
) -> Verdict {
    if let Err(reply) = wait_resumed(id, at, Head::Request(head), end_of_stream, hcm).await {
        return Verdict::LocalReply(Box::new(reply));
    }
    wasm_request_headers(id, head, end_of_stream, at + 1..usize::MAX, hcm).await
}

/// The response-headers phase, run at once; see [`resume_response_headers`].
/// `before` completes the stream's facts the filters read (the upstream, the
/// attempts); when the filters continue, the status is kept as in
/// [`ChainId::keep_response_status`]. One lookup of the stream for all three.
pub fn response_headers_now(
    id: ChainId,
    head: &mut ResponseHead,
    end_of_stream: bool,
    before: impl FnOnce(&mut StreamInfo),
) -> Step {
    let step = with_stream(id, |chain| {
        before(&mut chain.info.borrow_mut());
        let step = run_headers(id, chain, 0..usize::MAX, |f| {
            f.on_response_headers(head, end_of_stream)
        });
        if let Step::Done(Verdict::Continue) = step {
            chain.keep_status(head.status, "via_upstream");
        }
        step
    });
    step.unwrap_or(Step::Done(Verdict::Continue))
}

/// Waits for the filter paused at `at` in the response-headers phase, then runs
/// the filters after it.
pub async fn resume_response_headers(
    id: ChainId,
    at: usize,
    head: &mut ResponseHead,
    end_of_stream: bool,
    hcm: &HttpConnectionManager,
) -> Verdict {
    let mut at = at;
    loop {
        // The request went upstream whole before its answer came.
        if let Err(reply) = wait_resumed(id, at, Head::Response(head), true, hcm).await {
            return Verdict::LocalReply(Box::new(reply));
        }
        match headers_phase(id, at + 1..usize::MAX, |f| {
            f.on_response_headers(head, end_of_stream)
        }) {
            Step::Done(verdict) => return verdict,
            Step::Paused(next) => at = next,
        }
    }
}

/// How a run of headers phases ended.
pub enum Step {
    Done(Verdict),
    /// The filter in this slot stopped iteration and waits for callouts.
    Paused(usize),
}

/// Runs one headers phase through the filters in `slots` (indexes of the wasm
/// filters), in order; the first local reply ends it. A filter that stops
/// iteration while its callouts are in flight pauses the phase there; one that stops
/// with nothing to wait for has nothing that could resume it (without callouts only
/// a body phase could), so the chain continues, as Envoy does once it continues.
fn headers_phase(
    id: ChainId,
    slots: std::ops::Range<usize>,
    phase: impl FnMut(&mut WasmHttpFilter) -> FilterStatus,
) -> Step {
    with_stream(id, |chain| run_headers(id, chain, slots, phase))
        .unwrap_or(Step::Done(Verdict::Continue))
}

/// [`headers_phase`] on the stream's chain, already looked up.
fn run_headers(
    id: ChainId,
    chain: &mut StreamChain,
    slots: std::ops::Range<usize>,
    mut phase: impl FnMut(&mut WasmHttpFilter) -> FilterStatus,
) -> Step {
    let count = slots.end.saturating_sub(slots.start);
    for (index, slot) in chain
        .slots
        .iter_mut()
        .enumerate()
        .skip(slots.start)
        .take(count)
    {
        let status = phase(&mut slot.filter);
        if slot.filter.error().is_some() {
            slot.runtime.export_failures();
        }
        send_calls(id, index, &mut slot.filter, &mut chain.calls);
        match status {
            FilterStatus::LocalReply(reply) => {
                return Step::Done(Verdict::LocalReply(Box::new(reply)))
            }
            FilterStatus::StopIteration if slot.filter.has_calls_in_flight() => {
                return Step::Paused(index)
            }
            _ => {}
        }
    }
    Step::Done(Verdict::Continue)
}

/// The head of the paused phase.
enum Head<'a> {
    Request(&'a mut RequestHead),
    Response(&'a mut ResponseHead),
}

impl Head<'_> {
    fn lend(&mut self) -> Paused<'_> {
        match self {
            Head::Request(head) => Paused::Request(head),
            Head::Response(head) => Paused::Response(head),
        }
    }
}

/// Waits until the filter in slot `at` resumes its paused headers phase from a
/// callout response (`Ok`), or answers the stream (`Err`). Answers for other
/// slots are delivered meanwhile without the head. A filter whose calls all came
/// back without resuming keeps the stream waiting, as in Envoy, until the
/// connection manager's `stream_idle_timeout` answers: 504 when the client had sent
/// the whole request (`request_complete`), else 408, as Envoy's
/// `maybeRequestTimeoutCode`.
async fn wait_resumed(
    id: ChainId,
    at: usize,
    mut head: Head<'_>,
    request_complete: bool,
    hcm: &HttpConnectionManager,
) -> Result<(), LocalReply> {
    let deadline = hcm
        .stream_idle_timeout
        .filter(|t| !t.is_zero())
        .map(|t| tokio::time::Instant::now() + t);
    loop {
        let outcome = with_stream(id, |chain| {
            chain.paused = Some(at);
            while let Some(answer) = chain.next_answer() {
                let slot = &mut chain.slots[answer.slot];
                let paused = match answer.slot == at {
                    true => head.lend(),
                    false => Paused::None,
                };
                let status = slot
                    .filter
                    .on_call_answer(answer.token, answer.response, paused);
                if slot.filter.error().is_some() {
                    slot.runtime.export_failures();
                }
                send_calls(id, answer.slot, &mut slot.filter, &mut chain.calls);
                let outcome = match status {
                    FilterStatus::Continue if answer.slot == at => Some(Ok(())),
                    FilterStatus::LocalReply(reply) => Some(Err(reply)),
                    _ => None,
                };
                if let Some(outcome) = outcome {
                    chain.paused = None;
                    // Later answers go to their filters as any answer to a stream
                    // that is not waiting.
                    for answer in std::mem::take(&mut chain.answers) {
                        answer_unpaused(id, chain, answer);
                    }
                    return Ok(outcome);
                }
            }
            Err(chain.waiter.get_or_insert_with(Default::default).clone())
        });
        let waiter = match outcome {
            // The stream is gone (its handle dropped): nothing waits any more.
            None => return Ok(()),
            Some(Ok(outcome)) => return outcome,
            Some(Err(waiter)) => waiter,
        };
        let notified = waiter.notified();
        match deadline {
            None => notified.await,
            Some(deadline) => {
                if tokio::time::timeout_at(deadline, notified).await.is_err() {
                    with_stream(id, |chain| chain.paused = None);
                    // The connection manager's own answer to the timer, as the router's.
                    let timeout = ProxyError::StreamIdleTimeout { request_complete };
                    let status = StatusCode::from_u16(timeout.status()).expect("a valid status");
                    let mut reply = LocalReply::new(status, timeout.details());
                    reply.body = Bytes::from(timeout.body());
                    return Err(reply);
                }
            }
        }
    }
}

/// Starts the callouts `filter` (in `slot`) dispatched. Each runs as a task on this
/// worker and hands its answer back through [`deliver`].
fn send_calls(id: ChainId, slot: usize, filter: &mut WasmHttpFilter, tasks: &mut Vec<AbortHandle>) {
    let calls = filter.take_calls();
    if !calls.is_empty() {
        start(Owner::Stream { id, slot }, calls, Some(tasks));
    }
}

/// A callout's answer: queued for the headers phase that waits for it, else given
/// to the filter at once.
fn deliver(id: ChainId, slot: usize, token: u32, response: CallAnswer) {
    with_stream(id, |chain| {
        let answer = Answer {
            slot,
            token,
            response,
        };
        match chain.paused {
            Some(_) => {
                chain.answers.push(answer);
                if let Some(waiter) = &chain.waiter {
                    waiter.notify_one();
                }
                if let Some(waker) = chain.body_wait.as_mut().and_then(|w| w.waker.take()) {
                    waker.wake();
                }
            }
            None => answer_unpaused(id, chain, answer),
        }
    });
}

/// An answer for a stream with no paused phase: the plugin sees it, but there is
/// no phase to resume, and a local reply asked for now is not sent (the stream is
/// past its headers, or its body is streaming).
fn answer_unpaused(id: ChainId, chain: &mut StreamChain, answer: Answer) {
    let Some(slot) = chain.slots.get_mut(answer.slot) else {
        return;
    };
    let status = slot
        .filter
        .on_call_answer(answer.token, answer.response, Paused::None);
    if slot.filter.error().is_some() {
        slot.runtime.export_failures();
    }
    if let FilterStatus::LocalReply(reply) = status {
        tracing::debug!(target: "strait::wasm", plugin = %slot.runtime.config.name, status = %reply.status, "local reply from a callout answer after the headers phase is ignored");
    }
    send_calls(id, answer.slot, &mut slot.filter, &mut chain.calls);
}

/// Runs `data` through the stream's filters from `from` on (in a body phase). A
/// filter that stops at the end of the body while its callouts are in flight pauses
/// the phase there ([`BodyVerdict::Wait`]); one that stops with nothing to wait
/// for is sent what there is, as nothing more will come.
fn run_body(
    id: ChainId,
    chain: &mut StreamChain,
    from: usize,
    mut data: Bytes,
    end_of_stream: bool,
    request: bool,
) -> BodyVerdict {
    for (index, slot) in chain.slots.iter_mut().enumerate().skip(from) {
        let buffer = match request {
            true => &mut slot.request_buffer,
            false => &mut slot.response_buffer,
        };
        buffer.push(std::mem::take(&mut data));
        let status = match request {
            true => slot.filter.on_request_body(buffer, end_of_stream),
            false => slot.filter.on_response_body(buffer, end_of_stream),
        };
        if slot.filter.error().is_some() {
            slot.runtime.export_failures();
        }
        send_calls(id, index, &mut slot.filter, &mut chain.calls);
        match status {
            FilterStatus::Continue => data = buffer.take(),
            FilterStatus::StopIteration if end_of_stream && slot.filter.has_calls_in_flight() => {
                chain.paused = Some(index);
                chain.body_wait = Some(BodyWait {
                    request,
                    end_of_stream,
                    waker: None,
                });
                return BodyVerdict::Wait;
            }
            // Nothing more will come to wait for: send what there is.
            FilterStatus::StopIteration if end_of_stream => data = buffer.take(),
            FilterStatus::StopIteration if buffer.len() > chain.buffer_limit => {
                let (status, details) = match request {
                    true => (StatusCode::PAYLOAD_TOO_LARGE, "request_payload_too_large"),
                    false => (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "response_payload_too_large",
                    ),
                };
                let mut reply = LocalReply::new(status, details);
                reply.body = Bytes::from(match request {
                    true => "Payload Too Large",
                    false => "Internal Server Error",
                });
                return BodyVerdict::LocalReply(Box::new(reply));
            }
            FilterStatus::StopIteration => return BodyVerdict::Hold,
            FilterStatus::LocalReply(reply) => return BodyVerdict::LocalReply(Box::new(reply)),
        }
    }
    BodyVerdict::Forward(data)
}

impl ChainId {
    /// The response-headers phase of a local reply: a filter that pauses here is
    /// not waited for (the reply is the proxy's own; nothing upstream to hold).
    pub fn reply_headers(self, head: &mut ResponseHead, end_of_stream: bool) -> Verdict {
        match headers_phase(self, 0..usize::MAX, |f| {
            f.on_response_headers(head, end_of_stream)
        }) {
            Step::Done(verdict) => verdict,
            Step::Paused(_) => Verdict::Continue,
        }
    }

    /// A request body chunk (empty with `end_of_stream` to flush at the end).
    /// Beyond the buffer limit a held body is answered 413, as Envoy does.
    pub fn request_body(self, chunk: Bytes, end_of_stream: bool) -> BodyVerdict {
        self.body_phase(chunk, end_of_stream, true)
    }

    /// A response body chunk; beyond the buffer limit, 500.
    pub fn response_body(self, chunk: Bytes, end_of_stream: bool) -> BodyVerdict {
        self.body_phase(chunk, end_of_stream, false)
    }

    fn body_phase(self, chunk: Bytes, end_of_stream: bool, request: bool) -> BodyVerdict {
        // Left here if the stream is gone (then it passes as it came).
        let mut chunk = Some(chunk);
        with_stream(self, |chain| {
            let chunk = chunk.take().unwrap_or_default();
            {
                let mut info = chain.info.borrow_mut();
                match request {
                    true => info.request_body_bytes += chunk.len() as u64,
                    false => info.response_body_bytes += chunk.len() as u64,
                }
            }
            run_body(self, chain, 0, chunk, end_of_stream, request)
        })
        .unwrap_or_else(|| BodyVerdict::Forward(chunk.take().unwrap_or_default()))
    }

    /// A body phase that returned [`BodyVerdict::Wait`]: hands the callout answers
    /// that came back to their filters (the waiting one sees the body it holds) and
    /// is ready once that filter resumes (`proxy_continue_stream`: the rest of the
    /// chain then runs on its body) or answers locally. Until then the body waits,
    /// as Envoy holds a body whose filter returned `StopIterationAndBuffer`.
    pub fn poll_body_wait(self, cx: &mut Context<'_>) -> Poll<BodyVerdict> {
        let verdict = with_stream(self, |chain| {
            let Some(at) = chain.paused else {
                return Poll::Ready(BodyVerdict::Forward(Bytes::new()));
            };
            let Some(wait) = chain.body_wait.as_ref() else {
                return Poll::Ready(BodyVerdict::Forward(Bytes::new()));
            };
            let (request, end_of_stream) = (wait.request, wait.end_of_stream);
            while let Some(answer) = chain.next_answer() {
                if answer.slot != at {
                    answer_unpaused(self, chain, answer);
                    continue;
                }
                let slot = &mut chain.slots[at];
                let buffer = match request {
                    true => &mut slot.request_buffer,
                    false => &mut slot.response_buffer,
                };
                let paused = Paused::Body { request, buffer };
                let status = slot
                    .filter
                    .on_call_answer(answer.token, answer.response, paused);
                if slot.filter.error().is_some() {
                    slot.runtime.export_failures();
                }
                send_calls(self, at, &mut slot.filter, &mut chain.calls);
                let verdict = match status {
                    FilterStatus::LocalReply(reply) => BodyVerdict::LocalReply(Box::new(reply)),
                    FilterStatus::Continue => {
                        let slot = &mut chain.slots[at];
                        let data = match request {
                            true => slot.request_buffer.take(),
                            false => slot.response_buffer.take(),
                        };
                        chain.paused = None;
                        chain.body_wait = None;
                        for answer in std::mem::take(&mut chain.answers) {
                            answer_unpaused(self, chain, answer);
                        }
                        run_body(self, chain, at + 1, data, end_of_stream, request)
                    }
                    FilterStatus::StopIteration => continue,
                };
                if let BodyVerdict::LocalReply(_) = verdict {
                    chain.paused = None;
                    chain.body_wait = None;
                }
                return Poll::Ready(verdict);
            }
            // The stream's own timers bound the wait (the stream idle timeout
            // answers 408), as for any stalled body.
            if let Some(wait) = chain.body_wait.as_mut() {
                wait.waker = Some(cx.waker().clone());
            }
            Poll::Pending
        });
        // The stream is gone: nothing is left to wait for.
        verdict.unwrap_or(Poll::Ready(BodyVerdict::Forward(Bytes::new())))
    }

    /// Parks a reply decided in the request body, for the router to send.
    pub fn set_pending_reply(self, reply: LocalReply) {
        with_stream(self, |chain| chain.pending_reply = Some(reply));
    }

    pub fn take_pending_reply(self) -> Option<LocalReply> {
        with_stream(self, |chain| chain.pending_reply.take()).flatten()
    }
}
