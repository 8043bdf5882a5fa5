//! `WasmHttpFilter`: one stream context of a plugin, driven by the filter chain.
//!
//! Each phase moves the proxy's own value (head, body buffer, trailers) into the
//! VM's store for the duration of the callback, so host functions edit it in place
//! without copying, and moves it back afterwards. Which heads later phases see
//! follows Envoy: a head stays visible only while its headers callback held it
//! (returned anything but `Continue`, e.g. for a local reply); once it continued,
//! later phases find no request (or response) head, so header reads and
//! `request.*` properties are `NotFound`. `on_log` sees both heads as they finally
//! went out (the router's headers included), as Envoy's access-log context does:
//! the proxy keeps one copy of each in the stream's `StreamInfo`, for all the
//! stream's plugins. A filter keeps its own copy of a head only while it holds it
//! (or when it runs without a `StreamInfo`). Edits in `on_log` are not forwarded.
//!
//! Failure: the first callback that traps, runs out of time or memory (or finds its
//! VM failed by another stream) answers 500 `wasm_fail_stream`, or continues when
//! the plugin is `fail_open`; later phases of that stream continue untouched.
use std::cell::RefCell;
use std::mem;
use std::rc::Rc;

use http::{HeaderMap, StatusCode};

use super::callout::{CallAnswer, Dispatch};
use super::headers::HeaderView;
use super::state::{Held, HostState, StreamData};
use super::vm::{Phase, WasmVm};
use super::WasmError;
use crate::stream_info::{SentHead, StreamInfo};
use crate::{
    copy_request_head, copy_response_head, BodyBuffer, FilterStatus, HttpFilter, LocalReply,
    RequestHead, ResponseHead,
};

/// The proxy-wasm plugin as an HTTP filter, one per stream.
pub struct WasmHttpFilter {
    vm: Rc<WasmVm>,
    /// VM generation and context id; `None` if the VM could not start.
    context: Option<(u64, u32)>,
    fail_open: bool,
    /// Boxed (as the VM returns it, and as `pending_reply`): both are rare, and
    /// inline (~250 bytes) they were most of every stream's filter, built and copied
    /// into its chain per stream.
    error: Option<super::vm::Failure>,
    /// The failure was answered (500 or fail-open continue); later phases pass.
    failure_answered: bool,
    /// Boxed: kept only while a phase holds its head (or without a `StreamInfo`),
    /// and inline they doubled the size of every stream's filter.
    request: Option<Box<RequestHead>>,
    response: Option<Box<ResponseHead>>,
    /// The headers callback did not continue, so later phases still see the head.
    request_visible: bool,
    response_visible: bool,
    resume_request: bool,
    resume_response: bool,
    finished: bool,
    /// A local reply asked for in a callout response callback.
    pending_reply: Option<Box<LocalReply>>,
    /// Callouts the plugin dispatched, not yet taken by the chain to send.
    calls: Vec<Dispatch>,
    /// The stream's facts, lent to every callback (properties, filter state).
    info: Option<Rc<RefCell<StreamInfo>>>,
}

/// The head of a paused headers phase, lent to a callout response callback so the
/// plugin can edit it before resuming (`proxy_on_http_call_response` in Envoy sees
/// the headers of the stream it paused).
pub enum Paused<'a> {
    None,
    Request(&'a mut RequestHead),
    Response(&'a mut ResponseHead),
    /// The body a paused body phase holds (the request's or the response's): the
    /// plugin may read or rewrite it before resuming (a scan's verdict, say).
    Body {
        request: bool,
        buffer: &'a mut BodyBuffer,
    },
}

impl WasmHttpFilter {
    /// Creates the stream context (`proxy_on_context_create`), starting or
    /// restarting the worker's VM if needed.
    pub fn new(vm: &Rc<WasmVm>) -> Self {
        let (context, error) = match vm.create_stream() {
            Ok(context) => (Some(context), None),
            Err(error) => (None, Some(error)),
        };
        Self {
            vm: vm.clone(),
            context,
            fail_open: vm.plugin().config().fail_open,
            error,
            failure_answered: false,
            request: None,
            response: None,
            request_visible: false,
            response_visible: false,
            resume_request: false,
            resume_response: false,
            finished: false,
            pending_reply: None,
            calls: Vec::new(),
            info: None,
        }
    }

    /// Creates the stream context with the stream's facts, which its callbacks read
    /// as properties (`request.time`, `xds.route_name`, `filter_state`, …).
    pub fn with_info(vm: &Rc<WasmVm>, info: Rc<RefCell<StreamInfo>>) -> Self {
        let mut filter = Self::new(vm);
        filter.info = Some(info);
        filter
    }

    /// The failure that ended this stream's plugin processing, if any.
    pub fn error(&self) -> Option<&WasmError> {
        self.error.as_deref()
    }

    /// Whether the plugin called `proxy_continue_stream` for the request / response
    /// since the last call; the chain resumes a stream paused by `StopIteration`.
    pub fn take_resume(&mut self) -> (bool, bool) {
        (
            mem::take(&mut self.resume_request),
            mem::take(&mut self.resume_response),
        )
    }

    /// Runs one phase: `lent` (the phase's head, body or trailers) goes into the
    /// store's stream data for the callback, with the heads this filter holds, and
    /// comes back after it. Nothing else of the stream data is touched, so a phase
    /// costs two moves of its value, not the build, exchange and drop of the whole
    /// (~700-byte) stream data.
    fn dispatch(
        &mut self,
        phase: Phase,
        size: usize,
        end_of_stream: bool,
        mut lent: Lent<'_>,
    ) -> Outcome {
        let Some((generation, context)) = self.context.filter(|_| self.error.is_none()) else {
            return self.failure_outcome();
        };
        let (request_visible, response_visible) = (self.request_visible, self.response_visible);
        // Lent to the store for the callback and taken back (a clone and its drop
        // cost a count up and down per phase); if the VM is not running it stays.
        let info = &mut self.info;
        let (calls, request, response) = (&mut self.calls, &mut self.request, &mut self.response);
        let result = self.vm.with_running(generation, |vm| {
            // A head lent by pointer leaves the store when this closure ends, also
            // if a host function panics.
            let lending = Lending(vm);
            let vm = &mut *lending.0;
            lent.lend(vm.store.data_mut());
            let stream = &mut vm.store.data_mut().stream;
            // The heads this filter holds (its headers phase did not continue).
            if stream.request.is_none() && request_visible {
                stream.request = request.take().map(Held::Owned);
            }
            if stream.response.is_none() && response_visible {
                stream.response = response.take().map(Held::Owned);
            }
            stream.info = info.take();
            let action = vm.http_phase(phase, context, size, end_of_stream);
            lent.take_back(vm.store.data_mut());
            let stream = &mut vm.store.data_mut().stream;
            // The heads the callback saw out of the store: a held one back where
            // later phases find it, a lent one (edited in place) simply dropped.
            if let Some(Held::Owned(head)) = stream.request.take() {
                *request = Some(head);
            }
            if let Some(Held::Owned(head)) = stream.response.take() {
                *response = Some(head);
            }
            *info = stream.info.take();
            vm.move_dispatched(calls);
            Ok((action?, vm.take_signals(context)))
        });
        match result {
            Ok((action, signals)) => {
                self.resume_request |= signals.resume_request;
                self.resume_response |= signals.resume_response;
                match (signals.local_reply, action) {
                    (Some(reply), _) => {
                        self.note_reset(&reply);
                        Outcome::Reply(reply)
                    }
                    (None, 0) => Outcome::Continue,
                    // Pause and the StopIteration* variants of other SDKs.
                    (None, _) => Outcome::Stop,
                }
            }
            Err(error) => {
                self.error = Some(error);
                self.failure_outcome()
            }
        }
    }

    /// The callouts dispatched since the last take, for the chain to send.
    pub fn take_calls(&mut self) -> Vec<Dispatch> {
        mem::take(&mut self.calls)
    }

    /// Whether this stream's context waits for callout answers.
    pub fn has_calls_in_flight(&self) -> bool {
        let Some((generation, context)) = self.context.filter(|_| self.error.is_none()) else {
            return false;
        };
        self.vm
            .with_running(generation, |vm| Ok(vm.has_calls(context)))
            .unwrap_or(false)
    }

    /// Delivers the answer to the callout `token` (`proxy_on_http_call_response`, or
    /// `proxy_on_grpc_receive` / `proxy_on_grpc_close`),
    /// lending the paused head. Returns what the plugin asked for the paused
    /// phase: `Continue` when it resumed it (`proxy_continue_stream`), a local reply,
    /// or `StopIteration` to keep waiting. A failure in the callback is answered as
    /// in any phase (500, or continue when fail-open).
    pub fn on_call_answer(
        &mut self,
        token: u32,
        response: CallAnswer,
        paused: Paused<'_>,
    ) -> FilterStatus {
        let Some((generation, context)) = self.context.filter(|_| self.error.is_none()) else {
            return self.answer_failure();
        };
        let mut data = StreamData::default();
        let resuming_request = match paused {
            Paused::Request(head) => {
                let paused = Box::new(mem::replace(head, placeholder_request()));
                data.request = Some(Held::Owned(paused));
                self.run_call_response(generation, context, token, response, &mut data);
                let back = data.request.take().and_then(Held::into_owned);
                *head = back.map_or_else(placeholder_request, |h| *h);
                self.request = Some(Box::new(copy_request_head(head)));
                Some(true)
            }
            Paused::Response(head) => {
                let paused = Box::new(mem::replace(head, placeholder_response()));
                data.response = Some(Held::Owned(paused));
                self.run_call_response(generation, context, token, response, &mut data);
                let back = data.response.take().and_then(Held::into_owned);
                *head = back.map_or_else(placeholder_response, |h| *h);
                self.response = Some(Box::new(copy_response_head(head)));
                Some(false)
            }
            Paused::None => {
                self.lend_heads(&mut data);
                self.run_call_response(generation, context, token, response, &mut data);
                self.keep_heads(&mut data);
                None
            }
            Paused::Body { request, buffer } => {
                self.lend_heads(&mut data);
                let body = Some(mem::take(buffer));
                match request {
                    true => data.request_body = body,
                    false => data.response_body = body,
                }
                self.run_call_response(generation, context, token, response, &mut data);
                let body = match request {
                    true => data.request_body.take(),
                    false => data.response_body.take(),
                };
                *buffer = body.unwrap_or_default();
                self.keep_heads(&mut data);
                Some(request)
            }
        };
        if self.error.is_some() {
            return self.answer_failure();
        }
        if let Some(reply) = self.pending_reply.take() {
            return self.answer(*reply);
        }
        let resumed = match resuming_request {
            Some(true) => mem::take(&mut self.resume_request),
            Some(false) => mem::take(&mut self.resume_response),
            None => false,
        };
        match resumed {
            true => FilterStatus::Continue,
            false => FilterStatus::StopIteration,
        }
    }

    fn run_call_response(
        &mut self,
        generation: u64,
        context: u32,
        token: u32,
        response: CallAnswer,
        data: &mut StreamData,
    ) {
        data.info = self.info.clone();
        let calls = &mut self.calls;
        let result = self.vm.with_running(generation, |vm| {
            let outcome = vm.call_answer(token, response, data);
            vm.move_dispatched(calls);
            outcome?;
            Ok(vm.take_signals(context))
        });
        match result {
            Ok(signals) => {
                self.resume_request |= signals.resume_request;
                self.resume_response |= signals.resume_response;
                if let Some(reply) = signals.local_reply {
                    self.pending_reply = Some(reply);
                }
            }
            Err(error) => self.error = Some(error),
        }
    }

    /// The plugin's local reply or reset. A reset (`proxy_close_stream`) leaves
    /// `wasm_close_stream` as the response details unless some are set, as Envoy.
    fn answer(&self, reply: LocalReply) -> FilterStatus {
        self.note_reset(&reply);
        FilterStatus::LocalReply(reply)
    }

    /// Records a reset's details in the stream's info (see [`Self::answer`]).
    fn note_reset(&self, reply: &LocalReply) {
        if let (true, Some(info)) = (reply.reset, &self.info) {
            let mut info = info.borrow_mut();
            if info.response_details.is_none() {
                info.response_details = Some(reply.details.clone().into());
            }
        }
    }

    /// The first phase after a failure (in it, or in starting the VM) answers 500,
    /// or continues when the plugin is fail-open; the phases after it continue.
    fn answer_failure(&mut self) -> FilterStatus {
        self.failure_outcome().into()
    }

    fn failure_outcome(&mut self) -> Outcome {
        if self.fail_open || mem::replace(&mut self.failure_answered, true) {
            return Outcome::Continue;
        }
        Outcome::Reply(Box::new(LocalReply::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "wasm_fail_stream",
        )))
    }

    /// Lends the heads a callback may still see (those a headers phase held).
    fn lend_heads(&mut self, data: &mut StreamData) {
        if self.request_visible {
            data.request = self.request.take().map(Held::Owned);
        }
        if self.response_visible {
            data.response = self.response.take().map(Held::Owned);
        }
    }

    /// Puts the heads the callback saw back where later phases find them.
    fn keep_heads(&mut self, data: &mut StreamData) {
        if let Some(Held::Owned(request)) = data.request.take() {
            self.request = Some(request);
        }
        if let Some(Held::Owned(response)) = data.response.take() {
            self.response = Some(response);
        }
    }
}

/// Stand-ins left in the caller's place while the real head is in the store; the
/// store never drops a head during a callback, so they are always swapped back out.
fn placeholder_request() -> RequestHead {
    http::Request::new(()).into_parts().0
}

fn placeholder_response() -> ResponseHead {
    http::Response::new(()).into_parts().0
}

impl HttpFilter for WasmHttpFilter {
    fn on_request_headers(&mut self, head: &mut RequestHead, end_of_stream: bool) -> FilterStatus {
        let count = HeaderView::Request(head).len();
        let outcome = self.dispatch(
            Phase::RequestHeaders,
            count,
            end_of_stream,
            Lent::RequestHead(head),
        );
        self.request_visible = !matches!(outcome, Outcome::Continue);
        // Later phases see the head only while this filter holds it; `on_log` gets
        // the stream's final head from its info, so a copy is made only for those.
        if self.request_visible || self.info.is_none() {
            self.request = Some(Box::new(copy_request_head(head)));
        }
        outcome.into()
    }

    fn on_request_body(&mut self, body: &mut BodyBuffer, end_of_stream: bool) -> FilterStatus {
        let size = body.len();
        self.dispatch(
            Phase::RequestBody,
            size,
            end_of_stream,
            Lent::RequestBody(body),
        )
        .into()
    }

    fn on_request_trailers(&mut self, trailers: &mut HeaderMap) -> FilterStatus {
        let count = trailers.len();
        self.dispatch(
            Phase::RequestTrailers,
            count,
            false,
            Lent::RequestTrailers(trailers),
        )
        .into()
    }

    fn on_response_headers(
        &mut self,
        head: &mut ResponseHead,
        end_of_stream: bool,
    ) -> FilterStatus {
        let count = HeaderView::Response(head).len();
        let outcome = self.dispatch(
            Phase::ResponseHeaders,
            count,
            end_of_stream,
            Lent::ResponseHead(head),
        );
        self.response_visible = !matches!(outcome, Outcome::Continue);
        if self.response_visible || self.info.is_none() {
            self.response = Some(Box::new(copy_response_head(head)));
        }
        outcome.into()
    }

    fn on_response_body(&mut self, body: &mut BodyBuffer, end_of_stream: bool) -> FilterStatus {
        let size = body.len();
        self.dispatch(
            Phase::ResponseBody,
            size,
            end_of_stream,
            Lent::ResponseBody(body),
        )
        .into()
    }

    fn on_response_trailers(&mut self, trailers: &mut HeaderMap) -> FilterStatus {
        let count = trailers.len();
        self.dispatch(
            Phase::ResponseTrailers,
            count,
            false,
            Lent::ResponseTrailers(trailers),
        )
        .into()
    }

    fn on_log(&mut self) {
        self.finish(true);
    }
}

impl WasmHttpFilter {
    /// Ends the stream context once: `proxy_on_log` (when `log`), `proxy_on_done`,
    /// `proxy_on_delete`.
    fn finish(&mut self, log: bool) {
        if mem::replace(&mut self.finished, true) {
            return;
        }
        let Some((generation, context)) = self.context else {
            return;
        };
        // The stream's final heads (as sent), lent by its info; without
        // them, the copies this filter kept.
        let mut heads = LogHeads::default();
        if let Some(info) = &self.info {
            let mut info = info.borrow_mut();
            heads.sent_request = info.sent_request.take();
            heads.sent_response = info.sent_response.take();
        }
        if heads.sent_request.is_none() {
            heads.request = self.request.take();
        }
        if heads.sent_response.is_none() {
            heads.response = self.response.take();
        }
        let info = self.info.clone();
        let result = self.vm.with_running(generation, |vm| {
            let stream = &mut vm.store.data_mut().stream;
            heads.lend(stream);
            stream.info = info;
            let result = vm.finish_stream(context, log);
            let stream = &mut vm.store.data_mut().stream;
            heads.take_back(stream);
            stream.info = None;
            result
        });
        // Back for the stream's next plugin, as they came or (if this one read them)
        // unpacked.
        if let Some(info) = &self.info {
            let mut info = info.borrow_mut();
            info.sent_request = heads
                .sent_request
                .take()
                .or_else(|| heads.request.take().map(SentHead::request_moved));
            info.sent_response = heads
                .sent_response
                .take()
                .or_else(|| heads.response.take().map(SentHead::response_moved));
        }
        // A failure while logging cannot change the response any more; the VM
        // already logged it and will be restarted.
        if let Err(error) = result {
            self.error.get_or_insert(error);
        }
    }
}

impl Drop for WasmHttpFilter {
    /// A stream dropped without `on_log` (e.g. the connection reset) still frees
    /// its context in the guest.
    fn drop(&mut self) {
        self.finish(false);
    }
}

/// The heads `on_log` sees: as sent (packed), or this filter's own copies.
#[derive(Default)]
struct LogHeads {
    sent_request: Option<SentHead>,
    sent_response: Option<SentHead>,
    request: Option<Box<RequestHead>>,
    response: Option<Box<ResponseHead>>,
}

impl LogHeads {
    /// Lends them to the store's stream data.
    fn lend(&mut self, stream: &mut StreamData) {
        mem::swap(&mut self.sent_request, &mut stream.sent_request);
        mem::swap(&mut self.sent_response, &mut stream.sent_response);
        stream.request = self.request.take().map(Held::Owned);
        stream.response = self.response.take().map(Held::Owned);
    }

    /// Takes them back, a sent head the plugin read unpacked.
    fn take_back(&mut self, stream: &mut StreamData) {
        mem::swap(&mut self.sent_request, &mut stream.sent_request);
        mem::swap(&mut self.sent_response, &mut stream.sent_response);
        if let Some(Held::Owned(head)) = stream.request.take() {
            self.request = Some(head);
        }
        if let Some(Held::Owned(head)) = stream.response.take() {
            self.response = Some(head);
        }
    }
}

/// What a callback decided. Small enough to return in registers: a `FilterStatus`
/// holds its reply inline (~160 bytes), which every return through the phase's
/// layers copied, though nearly every callback continues.
enum Outcome {
    Continue,
    Stop,
    Reply(Box<LocalReply>),
}

impl From<Outcome> for FilterStatus {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Continue => FilterStatus::Continue,
            Outcome::Stop => FilterStatus::StopIteration,
            Outcome::Reply(reply) => FilterStatus::LocalReply(*reply),
        }
    }
}

/// Removes a head lent by pointer from the store when a callback's closure ends,
/// however it ends (a host function that panics unwinds through it).
struct Lending<'a>(&'a mut super::vm::Running);

impl Drop for Lending<'_> {
    fn drop(&mut self) {
        self.0.store.data_mut().stream.forget_lent();
    }
}

/// What a phase lends the plugin: the proxy's own value, in the store's stream
/// data for the callback (a head by pointer, the rest moved in and back out).
enum Lent<'a> {
    RequestHead(&'a mut RequestHead),
    RequestBody(&'a mut BodyBuffer),
    RequestTrailers(&'a mut HeaderMap),
    ResponseHead(&'a mut ResponseHead),
    ResponseBody(&'a mut BodyBuffer),
    ResponseTrailers(&'a mut HeaderMap),
}

impl Lent<'_> {
    fn lend(&mut self, state: &mut HostState) {
        let stream = &mut state.stream;
        match self {
            // A head is lent by pointer, not moved: the callback's host calls edit
            // the proxy's own.
            // SAFETY: `dispatch` takes it out of the store right after the callback,
            // before this `Lent` (which borrows the head) is used again or dropped,
            // and its `Lending` guard removes it if a host function panics first.
            #[allow(unsafe_code)]
            Lent::RequestHead(head) => stream.request = Some(unsafe { Held::lent(&mut **head) }),
            Lent::RequestBody(body) => stream.request_body = Some(mem::take(*body)),
            Lent::RequestTrailers(map) => stream.request_trailers = Some(mem::take(*map)),
            // SAFETY: as for the request head.
            #[allow(unsafe_code)]
            Lent::ResponseHead(head) => stream.response = Some(unsafe { Held::lent(&mut **head) }),
            Lent::ResponseBody(body) => stream.response_body = Some(mem::take(*body)),
            Lent::ResponseTrailers(map) => stream.response_trailers = Some(mem::take(*map)),
        }
    }

    /// Takes the value back (as the callback left it); the store never drops it
    /// during a callback.
    fn take_back(&mut self, state: &mut HostState) {
        let stream = &mut state.stream;
        match self {
            // Edited in place: `dispatch` takes the pointer out of the store.
            Lent::RequestHead(_) | Lent::ResponseHead(_) => {}
            Lent::RequestBody(body) => **body = stream.request_body.take().unwrap_or_default(),
            Lent::RequestTrailers(map) => {
                **map = stream.request_trailers.take().unwrap_or_default()
            }
            Lent::ResponseBody(body) => **body = stream.response_body.take().unwrap_or_default(),
            Lent::ResponseTrailers(map) => {
                **map = stream.response_trailers.take().unwrap_or_default()
            }
        }
    }
}
