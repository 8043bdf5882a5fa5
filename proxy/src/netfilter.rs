//! Network filters on a downstream connection: the listener's
//! `envoy.filters.network.wasm` plugins between the socket and the connection manager.
//!
//! [`Downstream`] is the socket as the connection manager (hyper) sees it. Without
//! network filters it forwards every call to the [`Socket`] (one branch on an
//! `Option` per call). With them, each chunk read runs the filters in config order
//! (`proxy_on_downstream_data`) before hyper parses it, and each chunk hyper writes
//! runs them in reverse order (`proxy_on_upstream_data`, Envoy's `onWrite`) before it
//! reaches the socket. A filter that pauses holds the bytes; the next chunk is
//! appended and the filter sees both, as in Envoy, where a `StopIteration` leaves the
//! data in the connection's buffer.
//!
//! Like the HTTP chain (`crate::chain`), the filters hold `Rc` VMs and so live in a
//! worker thread-local keyed by a connection id; `Downstream` holds only the id and
//! stays `Send` for hyper.
//!
//! Closing: a plugin that calls `proxy_close_stream` (or traps, unless `fail_open`)
//! closes the connection after its pending writes are flushed, as Envoy's
//! `close(FlushWrite)`: hyper's next read fails, the connection ends, and the
//! filters get `proxy_on_downstream_connection_close(Local)`; a client that closed
//! or reset the socket first is reported as `Remote`. Then `proxy_on_done`,
//! `proxy_on_log`, `proxy_on_delete`.
//!
//! Bytes held back by paused filters count against the listener's
//! `per_connection_buffer_limit_bytes`, each direction on its own; above it that
//! direction stops (reads, or writes accepted from the connection manager), as
//! Envoy's connection does at its buffers' high watermark, until the connection
//! closes or times out.
//!
//! As in Envoy with the HTTP connection manager (half-close disabled), a client's
//! end of stream closes the connection without a data callback with
//! `end_of_stream`; bytes a filter still held are dropped. When the connection
//! manager ends the write side (`connection: close`, drain, idle timeout) the
//! filters see `proxy_on_upstream_data(end_of_stream = true)` and
//! `proxy_on_upstream_connection_close(Unknown)`.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use strait_filters::wasm::{ConnectionInfo, NetworkStatus, PeerType, WasmNetworkFilter};
use strait_filters::BodyBuffer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::chain::{vm_for, WasmFilterRuntime};
use crate::runtime::FastMap;
use crate::socket::Socket;

/// Bytes read from the socket per filter call at most.
const READ_CHUNK: usize = 16 * 1024;

/// What a run of the filters over one chunk produced.
struct Outcome {
    /// The bytes that passed every filter.
    data: Bytes,
    /// A filter asked to close the connection.
    close: bool,
    /// Bytes the filters hold back in this direction, all filters together.
    held: usize,
}

/// The downstream socket, with the listener's network filters if it has any.
pub struct Downstream {
    io: Socket,
    filters: Option<Box<Filtered>>,
}

/// State of a filtered connection; the filters themselves are in `CONNECTIONS`.
struct Filtered {
    id: u64,
    /// Filtered bytes not yet handed to the connection manager.
    readable: Bytes,
    /// Filtered bytes not yet written to the socket.
    writable: BytesMut,
    /// The client closed (EOF) or reset the socket.
    peer_closed: bool,
    read_eof: bool,
    write_ended: bool,
    /// A filter asked to close the connection.
    closing: bool,
    /// Read bytes the filters hold back, and the listener's
    /// `per_connection_buffer_limit_bytes`: above it the connection stops reading,
    /// as Envoy stops at its read buffer's high watermark.
    held_read: usize,
    held_write: usize,
    buffer_limit: usize,
    /// The connection manager's pending read, woken when a write callback closes.
    read_waker: Option<Waker>,
}

struct Slot {
    filter: WasmNetworkFilter,
    runtime: Arc<WasmFilterRuntime>,
    held_read: BodyBuffer,
    held_write: BodyBuffer,
}

/// A connection's filters, and what their callouts asked while no read was under
/// way: the slots whose paused read / write side a plugin continued, and the task
/// to wake so the connection picks that up.
struct Conn {
    slots: Vec<Slot>,
    resumed: Vec<(usize, bool)>,
    /// A plugin asked to close from a callout answer.
    closed: bool,
    waker: Option<Waker>,
    /// The connection's callouts in flight, aborted when it closes.
    calls: Vec<tokio::task::AbortHandle>,
}

thread_local! {
    static CONNECTIONS: RefCell<FastMap<u64, Conn>> = RefCell::new(FastMap::default());
}

/// Starts the callouts the filter in `slot` of connection `id` dispatched.
fn send_calls(
    id: u64,
    slot: usize,
    filter: &mut WasmNetworkFilter,
    tasks: &mut Vec<tokio::task::AbortHandle>,
) {
    let calls = filter.take_calls();
    if !calls.is_empty() {
        crate::chain::start_connection_calls(id, slot, calls, tasks);
    }
}

/// A callout's answer for the filter in `slot` of connection `id` (gone: dropped,
/// as Envoy cancels a deleted context's calls). A continue the plugin asks for in
/// it is queued for the connection's next read, which the answer wakes.
pub(crate) fn deliver(id: u64, slot: usize, token: u32, answer: strait_filters::wasm::CallAnswer) {
    CONNECTIONS.with(|connections| {
        let mut connections = connections.borrow_mut();
        let Some(conn) = connections.get_mut(&id) else {
            return;
        };
        let Some(entry) = conn.slots.get_mut(slot) else {
            return;
        };
        entry.filter.on_call_answer(token, answer);
        if entry.filter.error().is_some() {
            entry.runtime.export_failures();
        }
        send_calls(id, slot, &mut entry.filter, &mut conn.calls);
        let (read, write) = entry.filter.take_resume();
        let close = entry.filter.close_requested();
        if read {
            conn.resumed.push((slot, true));
        }
        if write {
            conn.resumed.push((slot, false));
        }
        conn.closed |= close;
        if read || write || close {
            if let Some(waker) = conn.waker.take() {
                waker.wake();
            }
        }
    });
}

impl Downstream {
    /// The socket, when no network filter stands between it and the connection
    /// manager (a filtered connection may have bytes or callout answers pending that
    /// the socket's readiness does not show).
    pub fn unfiltered(&self) -> Option<&Socket> {
        self.filters.is_none().then_some(&self.io)
    }

    /// As [`Self::unfiltered`], to wait on the socket's readiness.
    pub fn unfiltered_mut(&mut self) -> Option<&mut Socket> {
        self.filters.is_none().then_some(&mut self.io)
    }

    /// Whether the socket, unfiltered, has not joined the reactor yet (see
    /// [`crate::socket`]): every read and write so far went through at once.
    pub fn speculative(&self) -> bool {
        self.filters.is_none() && self.io.is_fresh()
    }

    /// Wraps an accepted socket. With `filters`, creates each plugin's connection
    /// context (`proxy_on_new_connection`) on this worker's VM.
    pub fn new(
        io: Socket,
        filters: &[Arc<WasmFilterRuntime>],
        buffer_limit: u32,
        id: u64,
        source: std::net::SocketAddr,
        destination: std::net::SocketAddr,
    ) -> Downstream {
        if filters.is_empty() {
            return Downstream { io, filters: None };
        }
        let info = Arc::new(ConnectionInfo {
            id,
            source,
            destination,
        });
        let slots: Vec<Slot> = filters
            .iter()
            .map(|runtime| Slot {
                filter: WasmNetworkFilter::new(&vm_for(runtime), info.clone()),
                runtime: runtime.clone(),
                held_read: BodyBuffer::new(),
                held_write: BodyBuffer::new(),
            })
            .collect();
        let mut slots = slots;
        let closing = slots.iter().any(|slot| slot.filter.close_requested());
        report_failures(&slots);
        let mut calls = Vec::new();
        for (index, slot) in slots.iter_mut().enumerate() {
            send_calls(id, index, &mut slot.filter, &mut calls);
        }
        let conn = Conn {
            slots,
            resumed: Vec::new(),
            closed: false,
            waker: None,
            calls,
        };
        CONNECTIONS.with(|c| c.borrow_mut().insert(id, conn));
        Downstream {
            io,
            filters: Some(Box::new(Filtered {
                id,
                readable: Bytes::new(),
                writable: BytesMut::new(),
                peer_closed: false,
                read_eof: false,
                write_ended: false,
                closing,
                held_read: 0,
                held_write: 0,
                buffer_limit: buffer_limit as usize,
                read_waker: None,
            })),
        }
    }
}

fn report_failures(slots: &[Slot]) {
    for slot in slots {
        if slot.filter.error().is_some() {
            slot.runtime.export_failures();
        }
    }
}

/// Runs `chunk` through the filters of connection `id` in the read direction (config
/// order) or the write direction (reverse).
fn run(id: u64, chunk: &[u8], end_of_stream: bool, read: bool) -> Outcome {
    run_from(id, 0, Bytes::copy_from_slice(chunk), end_of_stream, read)
}

/// Runs `data` through the filters of connection `id` from the `start`-th in the
/// direction's order; a filter that pauses keeps it.
fn run_from(id: u64, start: usize, data: Bytes, end_of_stream: bool, read: bool) -> Outcome {
    CONNECTIONS.with(|connections| {
        let mut connections = connections.borrow_mut();
        let Some(conn) = connections.get_mut(&id) else {
            return Outcome {
                data,
                close: false,
                held: 0,
            };
        };
        let slots = &mut conn.slots;
        let mut data = data;
        let mut passed = true;
        let count = slots.len();
        for i in start..count {
            let index = match read {
                true => i,
                false => count - 1 - i,
            };
            let slot = &mut slots[index];
            let (held, status) = match read {
                true => {
                    slot.held_read.extend(&data);
                    let status = slot
                        .filter
                        .on_downstream_data(&mut slot.held_read, end_of_stream);
                    (&mut slot.held_read, status)
                }
                false => {
                    slot.held_write.extend(&data);
                    let status = slot
                        .filter
                        .on_upstream_data(&mut slot.held_write, end_of_stream);
                    (&mut slot.held_write, status)
                }
            };
            let status = match status {
                NetworkStatus::Continue => {
                    data = held.take();
                    None
                }
                NetworkStatus::StopIteration => Some(()),
            };
            send_calls(id, index, &mut slot.filter, &mut conn.calls);
            if status.is_some() {
                passed = false;
                break;
            }
        }
        report_failures(slots);
        let held = slots
            .iter()
            .map(|slot| match read {
                true => slot.held_read.len(),
                false => slot.held_write.len(),
            })
            .sum();
        Outcome {
            data: if passed { data } else { Bytes::new() },
            close: slots.iter().any(|slot| slot.filter.close_requested()),
            held,
        }
    })
}

/// The data a plugin let go by continuing its paused side from a callout answer
/// (Envoy's `continueReading`): its held bytes go on to the filters after it.
/// `None` when nothing was continued in that direction.
fn resumed(id: u64, read: bool) -> Option<Outcome> {
    let (slot, held) = CONNECTIONS.with(|connections| {
        let mut connections = connections.borrow_mut();
        let conn = connections.get_mut(&id)?;
        let at = conn.resumed.iter().position(|(_, r)| *r == read)?;
        let (slot, _) = conn.resumed.remove(at);
        let entry = conn.slots.get_mut(slot)?;
        let held = match read {
            true => entry.held_read.take(),
            false => entry.held_write.take(),
        };
        Some((slot, held))
    })?;
    let count = CONNECTIONS.with(|c| c.borrow().get(&id).map_or(0, |c| c.slots.len()));
    // The position after the continued filter, in this direction's order.
    let next = match read {
        true => slot + 1,
        false => count - slot,
    };
    Some(run_from(id, next, held, false, read))
}

/// Whether a callout answer asked to close the connection (asked once).
fn take_closed(id: u64) -> bool {
    CONNECTIONS.with(|connections| {
        connections
            .borrow_mut()
            .get_mut(&id)
            .is_some_and(|c| std::mem::take(&mut c.closed))
    })
}

/// Remembers the connection's task, so a callout answer can wake it.
fn park(id: u64, cx: &Context<'_>) {
    CONNECTIONS.with(|connections| {
        if let Some(conn) = connections.borrow_mut().get_mut(&id) {
            if !conn.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                conn.waker = Some(cx.waker().clone());
            }
        }
    });
}

impl Filtered {
    /// Writes `writable` to the socket until it is empty.
    fn drain(&mut self, io: &mut Socket, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.writable.is_empty() {
            let n = ready!(Pin::new(&mut *io).poll_write(cx, &self.writable))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.writable.advance(n);
        }
        Poll::Ready(Ok(()))
    }

    /// Takes what the write-direction filters let through (and hold, and asked).
    fn queue_write(&mut self, outcome: Outcome) {
        self.held_write = outcome.held;
        self.writable.extend_from_slice(&outcome.data);
        if outcome.close {
            self.close();
        }
    }

    fn close(&mut self) {
        self.closing = true;
        if let Some(waker) = self.read_waker.take() {
            waker.wake();
        }
    }
}

fn closed_by_plugin() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "connection closed by a network wasm filter",
    )
}

impl AsyncRead for Downstream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(state) = this.filters.as_deref_mut() else {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        };
        loop {
            if !state.readable.is_empty() {
                let n = state.readable.len().min(buf.remaining());
                buf.put_slice(&state.readable.split_to(n));
                return Poll::Ready(Ok(()));
            }
            // A callout answer continued a paused side: its bytes move on now (the
            // write side's go out from here, as nothing else polls the socket).
            if let Some(outcome) = resumed(state.id, true) {
                state.readable = outcome.data;
                state.held_read = outcome.held;
                if outcome.close {
                    state.close();
                }
                continue;
            }
            if let Some(outcome) = resumed(state.id, false) {
                state.queue_write(outcome);
                if let Poll::Ready(Err(e)) = state.drain(&mut this.io, cx) {
                    return Poll::Ready(Err(e));
                }
                continue;
            }
            if !state.closing && take_closed(state.id) {
                state.close();
            }
            if state.closing {
                return Poll::Ready(Err(closed_by_plugin()));
            }
            if state.read_eof {
                return Poll::Ready(Ok(()));
            }
            if state.held_read > state.buffer_limit {
                // Stalled until the connection closes (or times out), as Envoy's read
                // buffer above its high watermark, or a callout answer continues it.
                state.read_waker = Some(cx.waker().clone());
                park(state.id, cx);
                return Poll::Pending;
            }
            let mut chunk = [0u8; READ_CHUNK];
            let mut chunk = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.io).poll_read(cx, &mut chunk) {
                Poll::Pending => {
                    state.read_waker = Some(cx.waker().clone());
                    if state.held_read > 0 || state.held_write > 0 {
                        // Something is paused: a callout answer may continue it.
                        park(state.id, cx);
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => {
                    state.peer_closed = true;
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(Ok(())) if chunk.filled().is_empty() => {
                    state.peer_closed = true;
                    state.read_eof = true;
                }
                Poll::Ready(Ok(())) => {
                    let outcome = run(state.id, chunk.filled(), false, true);
                    state.readable = outcome.data;
                    state.held_read = outcome.held;
                    if outcome.close {
                        state.close();
                    }
                }
            }
        }
    }
}

impl AsyncWrite for Downstream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let Some(state) = this.filters.as_deref_mut() else {
            return Pin::new(&mut this.io).poll_write(cx, buf);
        };
        ready!(state.drain(&mut this.io, cx))?;
        if state.closing || state.write_ended {
            return Poll::Ready(Err(closed_by_plugin()));
        }
        if state.held_write > state.buffer_limit {
            // Stalled, as in `poll_read`; a close wakes the read side, which ends
            // the connection.
            return Poll::Pending;
        }
        state.queue_write(run(state.id, buf, false, false));
        // Accepted whatever the socket takes now; the rest goes out on flush.
        if let Poll::Ready(Err(e)) = state.drain(&mut this.io, cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match this.filters {
            None => Pin::new(&mut this.io).poll_write_vectored(cx, bufs),
            Some(_) => {
                let buf = bufs
                    .iter()
                    .find(|b| !b.is_empty())
                    .map_or(&[][..], |b| &**b);
                Pin::new(this).poll_write(cx, buf)
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.filters.is_none() && self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(state) = this.filters.as_deref_mut() {
            ready!(state.drain(&mut this.io, cx))?;
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(state) = this.filters.as_deref_mut() {
            if !std::mem::replace(&mut state.write_ended, true) && !state.closing {
                let outcome = run(state.id, &[], true, false);
                state.writable.extend_from_slice(&outcome.data);
            }
            ready!(state.drain(&mut this.io, cx))?;
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

impl Drop for Downstream {
    /// Flushes what a filter let through (best effort, without blocking) and ends
    /// every filter's connection context.
    fn drop(&mut self) {
        let Some(state) = self.filters.as_deref_mut() else {
            return;
        };
        while !state.writable.is_empty() {
            match self.io.try_write(&state.writable) {
                Ok(n) if n > 0 => state.writable.advance(n),
                _ => break,
            }
        }
        let peer = match state.peer_closed && !state.closing {
            true => PeerType::Remote,
            false => PeerType::Local,
        };
        let conn = CONNECTIONS.with(|c| c.borrow_mut().remove(&state.id));
        crate::chain::forget_connection_calls(state.id);
        for call in conn.iter().flat_map(|c| &c.calls) {
            call.abort();
        }
        for mut slot in conn.into_iter().flat_map(|c| c.slots) {
            slot.filter.on_downstream_close(peer);
            if slot.filter.error().is_some() {
                slot.runtime.export_failures();
            }
        }
    }
}
