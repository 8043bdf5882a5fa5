//! What a VM's `Store` holds for the host functions.
use std::cell::RefCell;
use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use wasmtime::{Memory, ResourceLimiter, TypedFunc};

use super::callout::Dispatch;
use super::shared::Metric;
use super::PluginConfig;
use crate::stream_info::{SentHead, StreamInfo};
use crate::{BodyBuffer, LocalReply, RequestHead, ResponseHead};

/// Store data of one VM.
pub(crate) struct HostState {
    pub plugin: Arc<PluginConfig>,
    pub limiter: MemoryLimiter,
    /// The guest's exported memory and allocator, set right after instantiation.
    pub memory: Option<Memory>,
    pub allocate: Option<TypedFunc<i32, i32>>,
    /// Metric ids handed to this VM index this table.
    pub metrics: Vec<Arc<Metric>>,
    pub tick_period: Duration,
    /// The context host calls act on: the one whose callback is running, unless the
    /// plugin switched with `proxy_set_effective_context`.
    pub effective_context: u32,
    /// The stream data of the callback in progress, moved in by the filter for the
    /// duration of the call so host functions edit the proxy's values in place.
    pub stream: StreamData,
    /// What plugins asked of each live context, read by the filter after a callback.
    pub signals: HashMap<u32, StreamSignals, foldhash::fast::RandomState>,
    /// Some context in `signals` may hold a request: set by [`HostState::signal`],
    /// so that the callbacks of a plugin that asks for nothing (most of them) skip
    /// the map after each one.
    pub signaled: bool,
    pub root_context_id: u32,
    /// Set by `proxy_done`: the root context finished what `proxy_on_done` delayed.
    pub done: bool,
    /// HTTP callouts in flight: token to the context that made the call.
    pub calls: HashMap<u32, u32, foldhash::fast::RandomState>,
    /// Calls made since the embedder last took them (`take_dispatched`).
    pub dispatched: Vec<Dispatch>,
    pub next_call_token: u32,
    /// How `proxy_on_queue_ready` reaches this VM's thread, for the queues it
    /// registers (set by the embedder, `WasmVm::set_queue_notifier`).
    pub queue_notifier: Option<super::shared::QueueNotifier>,
    /// The status of the last gRPC call that ended (`proxy_get_status`).
    pub grpc_status: (u32, String),
    /// `proxy_set_property` values of each stream context (Envoy's filter state
    /// `wasm.<path>`), by context and serialized path; dropped with the context.
    pub properties: HashMap<(u32, Vec<u8>), Vec<u8>, foldhash::fast::RandomState>,
    /// Properties declared with the `declare_property` foreign function: whether
    /// each is read-only (written once per stream), as Envoy's root context keeps
    /// its state prototypes.
    pub declared: HashMap<Vec<u8>, bool, foldhash::fast::RandomState>,
    /// The module speaks ABI 0.1.0 (an absent header reads as empty there).
    pub abi01: bool,
}

impl HostState {
    /// The requests of live context `context`, to record one in; `None` when no
    /// such context lives.
    pub(crate) fn signal(&mut self, context: u32) -> Option<&mut StreamSignals> {
        let signals = self.signals.get_mut(&context)?;
        self.signaled = true;
        Some(signals)
    }

    pub fn new(plugin: Arc<PluginConfig>) -> Self {
        let limiter = MemoryLimiter {
            limit_bytes: plugin.limits.memory_bytes,
            exceeded: false,
        };
        Self {
            plugin,
            limiter,
            memory: None,
            allocate: None,
            metrics: Vec::new(),
            tick_period: Duration::ZERO,
            effective_context: 0,
            stream: StreamData::default(),
            signals: HashMap::default(),
            signaled: false,
            root_context_id: 0,
            done: false,
            calls: HashMap::default(),
            dispatched: Vec::new(),
            next_call_token: 1,
            queue_notifier: None,
            grpc_status: (0, String::new()),
            properties: HashMap::default(),
            declared: HashMap::default(),
            abi01: false,
        }
    }
}

/// Stream values a callback may see. `None` means the proxy has not got that part
/// of the stream (yet), which host functions report as `NotFound`.
#[derive(Default)]
pub(crate) struct StreamData {
    pub request: Option<Held<RequestHead>>,
    pub request_body: Option<BodyBuffer>,
    pub request_trailers: Option<HeaderMap>,
    pub response: Option<Held<ResponseHead>>,
    pub response_body: Option<BodyBuffer>,
    pub response_trailers: Option<HeaderMap>,
    /// A network filter's data: read from the client / written to it (buffer types
    /// `DownstreamData` and `UpstreamData`).
    pub downstream_data: Option<BodyBuffer>,
    pub upstream_data: Option<BodyBuffer>,
    /// The downstream connection, for `source.*`, `destination.*`, `connection.*`.
    pub connection: Option<Arc<super::network::ConnectionInfo>>,
    /// During `proxy_on_http_call_response`: the answer's head, body and trailers
    /// (map types 6 and 7, buffer type 4).
    pub call_response: Option<ResponseHead>,
    pub call_body: Option<BodyBuffer>,
    pub call_trailers: Option<HeaderMap>,
    /// During `proxy_on_grpc_receive`: the response message (buffer type 5).
    pub grpc_message: Option<BodyBuffer>,
    /// During a gRPC stream's metadata callbacks: map types 4 and 5.
    pub grpc_initial_metadata: Option<HeaderMap>,
    pub grpc_trailing_metadata: Option<HeaderMap>,
    /// The HTTP stream's facts (times, route, upstream, filter state), shared by the
    /// stream's filters; `None` for root contexts and connections.
    pub info: Option<Rc<RefCell<StreamInfo>>>,
    /// During `proxy_on_log`: the heads as they went out (moved or packed); moved
    /// into `request` / `response` when the plugin first reads a head
    /// ([`Self::unpack_sent`]).
    pub sent_request: Option<SentHead>,
    pub sent_response: Option<SentHead>,
}

impl StreamData {
    /// Swaps the parts that either side holds. A filter hands the store one part per
    /// callback, so this moves that part instead of the whole (~700-byte) struct.
    pub(crate) fn exchange(&mut self, other: &mut StreamData) {
        fn swap<T>(a: &mut Option<T>, b: &mut Option<T>) {
            if a.is_some() || b.is_some() {
                std::mem::swap(a, b);
            }
        }
        swap(&mut self.request, &mut other.request);
        swap(&mut self.request_body, &mut other.request_body);
        swap(&mut self.request_trailers, &mut other.request_trailers);
        swap(&mut self.response, &mut other.response);
        swap(&mut self.response_body, &mut other.response_body);
        swap(&mut self.response_trailers, &mut other.response_trailers);
        swap(&mut self.info, &mut other.info);
        swap(&mut self.sent_request, &mut other.sent_request);
        swap(&mut self.sent_response, &mut other.sent_response);
    }

    /// Unpacks the sent heads `on_log` holds, before a host call reads a head.
    pub(crate) fn unpack_sent(&mut self) {
        if self.request.is_none() {
            let sent = self.sent_request.take().and_then(SentHead::into_request);
            self.request = sent.map(Held::Owned);
        }
        if self.response.is_none() {
            let sent = self.sent_response.take().and_then(SentHead::into_response);
            self.response = sent.map(Held::Owned);
        }
    }

    /// Drops the heads a headers phase lent ([`Held::lent`]), so no pointer to them
    /// outlives the phase.
    pub(crate) fn forget_lent(&mut self) {
        if self.request.as_ref().is_some_and(Held::is_lent) {
            self.request = None;
        }
        if self.response.as_ref().is_some_and(Held::is_lent) {
            self.response = None;
        }
    }
}

/// A head the store holds for a callback: its own (the heads a filter keeps while
/// it holds them, those `on_log` reads), or the proxy's, lent by pointer for the
/// length of one headers callback. Lending moved the head into a box and back
/// (a 224-byte request head swapped twice per phase: ~340 instructions a stream
/// for both heads); host functions read and edit it through `Deref` either way.
pub(crate) enum Held<T> {
    Owned(Box<T>),
    /// Made only by [`Held::lent`] (`LentPtr`'s field is private to this module).
    Lent(LentPtr<T>),
}

/// The pointer of a lent head; only [`Held::lent`] makes one.
pub(crate) struct LentPtr<T>(NonNull<T>);

impl<T> Held<T> {
    /// A pointer to `head`, for the store during one callback.
    ///
    /// # Safety
    ///
    /// The caller removes the returned value from the store (e.g. with
    /// [`StreamData::forget_lent`], also when unwinding) before `head`'s borrow
    /// ends, and does not touch `head` meanwhile: until then the store's host
    /// functions are the head's only users.
    #[allow(unsafe_code)]
    pub(crate) unsafe fn lent(head: &mut T) -> Self {
        Held::Lent(LentPtr(NonNull::from(head)))
    }

    pub(crate) fn is_lent(&self) -> bool {
        matches!(self, Held::Lent(_))
    }

    /// The head if the store owns it; a lent head stays the proxy's.
    pub(crate) fn into_owned(self) -> Option<Box<T>> {
        match self {
            Held::Owned(head) => Some(head),
            Held::Lent(_) => None,
        }
    }
}

impl<T> Deref for Held<T> {
    type Target = T;

    fn deref(&self) -> &T {
        match self {
            Held::Owned(head) => head,
            // SAFETY: a lent pointer is in the store only while its head is
            // borrowed for the callback and used by nobody else (`Held::lent`'s
            // contract), and `&self` borrows the store.
            #[allow(unsafe_code)]
            Held::Lent(LentPtr(head)) => unsafe { head.as_ref() },
        }
    }
}

impl<T> DerefMut for Held<T> {
    fn deref_mut(&mut self) -> &mut T {
        match self {
            Held::Owned(head) => head,
            // SAFETY: as in `deref`; `&mut self` borrows the store exclusively.
            #[allow(unsafe_code)]
            Held::Lent(LentPtr(head)) => unsafe { head.as_mut() },
        }
    }
}

/// Requests a plugin made for one stream during any callback.
#[derive(Default, Debug)]
pub(crate) struct StreamSignals {
    /// Boxed: signals are taken (and returned) after every callback, and a reply
    /// inline made them ~170 bytes where they are nearly always empty.
    pub local_reply: Option<Box<LocalReply>>,
    /// `proxy_continue_stream` was called for the request (0) or response (1).
    pub resume_request: bool,
    pub resume_response: bool,
    /// `proxy_close_stream` for the downstream or upstream side of a connection.
    pub close_connection: bool,
    /// `proxy_continue_stream` for the downstream (2) or upstream (3) side.
    pub resume_downstream: bool,
    pub resume_upstream: bool,
}

impl StreamSignals {
    /// Whether any request is recorded.
    pub(crate) fn is_set(&self) -> bool {
        self.local_reply.is_some()
            || self.resume_request
            || self.resume_response
            || self.close_connection
            || self.resume_downstream
            || self.resume_upstream
    }
}

/// Caps linear memory growth and remembers that it refused some, so a trap that
/// follows (the guest's allocator aborts) is reported as the memory cap.
pub(crate) struct MemoryLimiter {
    pub limit_bytes: usize,
    pub exceeded: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit_bytes {
            self.exceeded = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; proxy-wasm modules never need many.
        Ok(desired <= 100_000)
    }
}
