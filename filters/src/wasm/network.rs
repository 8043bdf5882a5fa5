//! `WasmNetworkFilter`: one connection context of a plugin configured as Envoy's
//! `envoy.filters.network.wasm`, driven by the proxy's downstream connection.
//!
//! Lifecycle, as Envoy's network filter calls it:
//!
//! ```text
//! accept ─▶ proxy_on_context_create, proxy_on_new_connection
//! each read chunk ──▶ proxy_on_downstream_data(size, end_of_stream)   (client → proxy)
//! each write chunk ─▶ proxy_on_upstream_data(size, end_of_stream)     (proxy → client)
//! write side ends ──▶ proxy_on_upstream_connection_close(Unknown)
//! connection closed ▶ proxy_on_downstream_connection_close(Local | Remote),
//!                     proxy_on_done, proxy_on_log, proxy_on_delete
//! ```
//!
//! Data: the callback sees the bytes held since the filter last continued plus the
//! new chunk (`DownstreamData` / `UpstreamData` buffers), may rewrite them, and its
//! `Action` decides: `Continue` passes them on, `Pause` holds them until the next
//! chunk, as Envoy's `StopIteration` leaves them in the connection's buffer.
//!
//! Failure: a trap (or a VM that failed under another connection) closes the
//! connection, as Envoy's `failStream(Downstream)` does, unless the plugin is
//! `fail_open`, in which case the plugin is skipped for the rest of the connection.
use std::mem;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use wasmtime::{Instance, Store, TypedFunc};

use super::callout::{CallAnswer, Dispatch};
use super::state::{HostState, StreamData};
use super::vm::{Failure, WasmVm};
use super::WasmError;
use crate::BodyBuffer;

/// The downstream connection as plugins see it through properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// `connection.id` / `connection_id`: process-unique.
    pub id: u64,
    /// `source.address` / `source.port`: the client.
    pub source: SocketAddr,
    /// `destination.address` / `destination.port`: the local address it connected to.
    pub destination: SocketAddr,
}

/// What a data callback decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkStatus {
    /// Pass the (possibly rewritten) bytes on.
    Continue,
    /// Hold them; the next chunk is appended and the callback sees both.
    StopIteration,
}

/// The ABI's `PeerType`: who closed the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum PeerType {
    Unknown = 0,
    /// The proxy closed it.
    Local = 1,
    /// The client closed it.
    Remote = 2,
}

/// The network callbacks, looked up once per instance.
#[derive(Clone)]
pub(crate) struct NetworkExports {
    on_new_connection: Option<TypedFunc<i32, i32>>,
    on_downstream_data: Option<TypedFunc<(i32, i32, i32), i32>>,
    on_upstream_data: Option<TypedFunc<(i32, i32, i32), i32>>,
    on_downstream_connection_close: Option<TypedFunc<(i32, i32), ()>>,
    on_upstream_connection_close: Option<TypedFunc<(i32, i32), ()>>,
    on_log: Option<TypedFunc<i32, ()>>,
    on_done: Option<TypedFunc<i32, i32>>,
    on_delete: Option<TypedFunc<i32, ()>>,
}

impl NetworkExports {
    pub(crate) fn lookup(
        instance: &Instance,
        store: &mut Store<HostState>,
        plugin: &str,
    ) -> Result<Self, WasmError> {
        fn optional<P: wasmtime::WasmParams, R: wasmtime::WasmResults>(
            instance: &Instance,
            store: &mut Store<HostState>,
            plugin: &str,
            name: &str,
        ) -> Result<Option<TypedFunc<P, R>>, WasmError> {
            if instance.get_export(&mut *store, name).is_none() {
                return Ok(None);
            }
            instance
                .get_typed_func(&mut *store, name)
                .map(Some)
                .map_err(|e| WasmError::Abi {
                    plugin: plugin.to_owned(),
                    detail: format!("export {name} has the wrong type: {e}"),
                })
        }
        Ok(Self {
            on_new_connection: optional(instance, store, plugin, "proxy_on_new_connection")?,
            on_downstream_data: optional(instance, store, plugin, "proxy_on_downstream_data")?,
            on_upstream_data: optional(instance, store, plugin, "proxy_on_upstream_data")?,
            on_downstream_connection_close: optional(
                instance,
                store,
                plugin,
                "proxy_on_downstream_connection_close",
            )?,
            on_upstream_connection_close: optional(
                instance,
                store,
                plugin,
                "proxy_on_upstream_connection_close",
            )?,
            on_log: optional(instance, store, plugin, "proxy_on_log")?,
            on_done: optional(instance, store, plugin, "proxy_on_done")?,
            on_delete: optional(instance, store, plugin, "proxy_on_delete")?,
        })
    }
}

/// One connection's context of a network plugin.
pub struct WasmNetworkFilter {
    vm: Rc<WasmVm>,
    /// VM generation and context id; `None` if the VM could not start.
    context: Option<(u64, u32)>,
    connection: Arc<ConnectionInfo>,
    fail_open: bool,
    error: Option<Failure>,
    /// The plugin asked to close the connection, or failed closed.
    close: bool,
    upstream_closed: bool,
    finished: bool,
    /// Callouts dispatched and not yet taken by the embedder.
    calls: Vec<Dispatch>,
    /// `proxy_continue_stream` for the downstream (read) / upstream (write) side.
    resume_read: bool,
    resume_write: bool,
}

/// Which direction a data callback is for.
#[derive(Clone, Copy)]
enum Direction {
    Downstream,
    Upstream,
}

impl WasmNetworkFilter {
    /// Creates the connection's context (`proxy_on_context_create`, then
    /// `proxy_on_new_connection`), starting or restarting the worker's VM if needed.
    /// What `on_new_connection` returns is not acted on, as in Envoy, where a
    /// connection waits for data anyway.
    pub fn new(vm: &Rc<WasmVm>, connection: Arc<ConnectionInfo>) -> Self {
        let mut filter = Self {
            vm: vm.clone(),
            context: None,
            connection,
            fail_open: vm.plugin().config().fail_open,
            error: None,
            close: false,
            upstream_closed: false,
            finished: false,
            calls: Vec::new(),
            resume_read: false,
            resume_write: false,
        };
        match vm.create_stream() {
            Ok(context) => {
                filter.context = Some(context);
                let on_new_connection = |vm: &mut super::vm::Running, context: u32| {
                    let e = std::rc::Rc::clone(&vm.exports);
                    match &e.network.on_new_connection {
                        Some(f) => vm
                            .call("proxy_on_new_connection", context, f, context as i32)
                            .map(|_| ()),
                        None => Ok(()),
                    }
                };
                filter.run(|vm, context| on_new_connection(vm, context));
            }
            Err(error) => filter.fail(error),
        }
        filter
    }

    /// Bytes read from the client: `data` holds what the filter held back before plus
    /// the new chunk. A zero-length `data` with `end_of_stream` reports the client's
    /// half-close.
    pub fn on_downstream_data(
        &mut self,
        data: &mut BodyBuffer,
        end_of_stream: bool,
    ) -> NetworkStatus {
        self.on_data(Direction::Downstream, data, end_of_stream)
    }

    /// Bytes written to the client (Envoy's `onWrite`), likewise.
    pub fn on_upstream_data(
        &mut self,
        data: &mut BodyBuffer,
        end_of_stream: bool,
    ) -> NetworkStatus {
        let status = self.on_data(Direction::Upstream, data, end_of_stream);
        if end_of_stream {
            // Envoy reports the upstream side closed when a write ends the stream.
            self.on_upstream_close(PeerType::Unknown);
        }
        status
    }

    /// Whether the connection must close: the plugin called `proxy_close_stream`, or
    /// failed and is not `fail_open`. Pending writes are flushed first.
    pub fn close_requested(&self) -> bool {
        self.close
    }

    /// The failure that ended this connection's plugin processing, if any.
    pub fn error(&self) -> Option<&WasmError> {
        self.error.as_deref()
    }

    /// The callouts dispatched since the last take, for the embedder to send.
    pub fn take_calls(&mut self) -> Vec<Dispatch> {
        mem::take(&mut self.calls)
    }

    /// Whether the plugin asked to continue the read (downstream) / write (upstream)
    /// side it paused (`proxy_continue_stream`), since the last take.
    pub fn take_resume(&mut self) -> (bool, bool) {
        (
            mem::take(&mut self.resume_read),
            mem::take(&mut self.resume_write),
        )
    }

    /// Delivers the answer to the callout `token` (`proxy_on_http_call_response` or
    /// the gRPC callbacks) to this connection's context.
    pub fn on_call_answer(&mut self, token: u32, answer: CallAnswer) {
        if self.error.is_some() {
            return;
        }
        self.run(|vm, _context| {
            vm.call_answer(token, answer, &mut StreamData::default())
                .map(|_| ())
        });
    }

    fn on_data(
        &mut self,
        direction: Direction,
        data: &mut BodyBuffer,
        end_of_stream: bool,
    ) -> NetworkStatus {
        if self.error.is_some() {
            return match self.fail_open {
                true => NetworkStatus::Continue,
                false => NetworkStatus::StopIteration,
            };
        }
        let size = data.len() as i32;
        let eos = i32::from(end_of_stream);
        let mut stream = StreamData {
            connection: Some(self.connection.clone()),
            ..StreamData::default()
        };
        let slot = match direction {
            Direction::Downstream => &mut stream.downstream_data,
            Direction::Upstream => &mut stream.upstream_data,
        };
        *slot = Some(mem::take(data));
        let mut action = 0;
        self.run_with(&mut stream, |vm, context| {
            let e = std::rc::Rc::clone(&vm.exports);
            let (name, func) = match direction {
                Direction::Downstream => {
                    ("proxy_on_downstream_data", &e.network.on_downstream_data)
                }
                Direction::Upstream => ("proxy_on_upstream_data", &e.network.on_upstream_data),
            };
            if let Some(func) = func {
                action = vm.call(name, context, func, (context as i32, size, eos))?;
            }
            Ok(())
        });
        let slot = match direction {
            Direction::Downstream => &mut stream.downstream_data,
            Direction::Upstream => &mut stream.upstream_data,
        };
        *data = slot.take().unwrap_or_default();
        match (&self.error, action) {
            (Some(_), _) if self.fail_open => NetworkStatus::Continue,
            (Some(_), _) => NetworkStatus::StopIteration,
            (None, 0) => NetworkStatus::Continue,
            // Pause, and the StopIteration* values of other SDKs.
            (None, _) => NetworkStatus::StopIteration,
        }
    }

    /// `proxy_on_upstream_connection_close`, once.
    pub fn on_upstream_close(&mut self, peer: PeerType) {
        if mem::replace(&mut self.upstream_closed, true) || self.error.is_some() {
            return;
        }
        self.run(|vm, context| {
            let e = std::rc::Rc::clone(&vm.exports);
            match &e.network.on_upstream_connection_close {
                Some(f) => vm.call(
                    "proxy_on_upstream_connection_close",
                    context,
                    f,
                    (context as i32, peer as i32),
                ),
                None => Ok(()),
            }
        });
    }

    /// The connection closed: `proxy_on_downstream_connection_close`, then (as Envoy
    /// ends a TCP context) `proxy_on_done`, `proxy_on_log` and `proxy_on_delete`.
    /// Runs once; dropping the filter without it runs it with `Local`.
    pub fn on_downstream_close(&mut self, peer: PeerType) {
        if mem::replace(&mut self.finished, true) {
            return;
        }
        let Some((generation, context)) = self.context else {
            return;
        };
        if self.error.is_none() {
            self.run(|vm, context| {
                let exports = std::rc::Rc::clone(&vm.exports);
                let e = &exports.network;
                let ctx = context as i32;
                if let Some(f) = &e.on_downstream_connection_close {
                    vm.call(
                        "proxy_on_downstream_connection_close",
                        context,
                        f,
                        (ctx, peer as i32),
                    )?;
                }
                if let Some(f) = &e.on_done {
                    vm.call("proxy_on_done", context, f, ctx)?;
                }
                if let Some(f) = &e.on_log {
                    vm.call("proxy_on_log", context, f, ctx)?;
                }
                if let Some(f) = &e.on_delete {
                    vm.call("proxy_on_delete", context, f, ctx)?;
                }
                Ok(())
            });
        }
        // Forget the context even if the plugin failed on the way.
        let _ = self.vm.with_running(generation, |vm| {
            let state = vm.store.data_mut();
            state.signals.remove(&context);
            state.calls.retain(|_, owner| *owner != context);
            state.properties.retain(|(owner, _), _| *owner != context);
            Ok(())
        });
    }

    fn run(&mut self, f: impl FnOnce(&mut super::vm::Running, u32) -> Result<(), Failure>) {
        let mut stream = StreamData {
            connection: Some(self.connection.clone()),
            ..StreamData::default()
        };
        self.run_with(&mut stream, f);
    }

    /// Runs `f` on this connection's context with `stream` in the store, then takes
    /// the plugin's requests (close) and records a failure.
    fn run_with(
        &mut self,
        stream: &mut StreamData,
        f: impl FnOnce(&mut super::vm::Running, u32) -> Result<(), Failure>,
    ) {
        let Some((generation, context)) = self.context else {
            return;
        };
        let calls = &mut self.calls;
        let result = self.vm.with_running(generation, |vm| {
            mem::swap(&mut vm.store.data_mut().stream, stream);
            let result = f(vm, context);
            mem::swap(&mut vm.store.data_mut().stream, stream);
            vm.move_dispatched(calls);
            let signals = vm.take_signals(context);
            result.map(|()| signals)
        });
        match result {
            Ok(signals) => {
                self.close |= signals.close_connection;
                self.resume_read |= signals.resume_downstream;
                self.resume_write |= signals.resume_upstream;
            }
            Err(error) => self.fail(error),
        }
    }

    fn fail(&mut self, error: Failure) {
        if !self.fail_open {
            self.close = true;
        }
        self.error.get_or_insert(error);
    }
}

impl Drop for WasmNetworkFilter {
    /// A connection dropped without a close report still frees its context.
    fn drop(&mut self) {
        self.on_downstream_close(PeerType::Local);
    }
}
