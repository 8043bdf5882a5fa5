//! The `env::proxy_*` host functions of proxy-wasm ABI 0.2.0 / 0.2.1.
//!
//! Every function returns a status code; plugin mistakes (bad pointers, unknown map
//! types, malformed pairs) are status codes, never traps. A trap only comes from the
//! guest itself (including its allocator, which the host calls to return data).
//!
use std::collections::hash_map::Entry;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use wasmtime::{Caller, Linker};

mod foreign;
mod maps;
mod shared;

use super::callout::{self, Dispatch, StreamOp};
use super::headers::deserialize_pairs;
use super::memory::{copy_out, read, write_u32, write_u64};
use super::properties;
use super::state::HostState;
use crate::LocalReply;

/// Status codes of the ABI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub(crate) enum Status {
    Ok = 0,
    NotFound = 1,
    BadArgument = 2,
    SerializationFailure = 3,
    ParseFailure = 4,
    InvalidMemoryAccess = 6,
    Empty = 7,
    CasMismatch = 8,
    InternalFailure = 10,
}

/// Why a host function did not succeed: a status for the guest, or a trap that
/// ends the callback.
pub(crate) enum HostError {
    Status(Status),
    Trap(wasmtime::Error),
}

impl From<Status> for HostError {
    fn from(status: Status) -> Self {
        HostError::Status(status)
    }
}

pub(crate) type HostResult<T = ()> = Result<T, HostError>;

pub(crate) fn finish(result: HostResult) -> wasmtime::Result<i32> {
    match result {
        Ok(()) => Ok(Status::Ok as i32),
        Err(HostError::Status(status)) => Ok(status as i32),
        Err(HostError::Trap(trap)) => Err(trap),
    }
}

pub(crate) type C<'a> = Caller<'a, HostState>;

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    add_logging_and_time(linker)?;
    maps::add_header_maps(linker)?;
    maps::add_buffers(linker)?;
    add_stream_control(linker)?;
    shared::add_shared_data_and_metrics(linker)?;
    shared::add_shared_queues(linker)?;
    add_http_call(linker)?;
    linker.func_wrap(
        "env",
        "proxy_call_foreign_function",
        |mut caller: C<'_>,
         name_ptr: i32,
         name_len: i32,
         args_ptr: i32,
         args_len: i32,
         result_ptr: i32,
         result_size: i32| {
            finish((|| {
                let name = read(&caller, name_ptr, name_len)?;
                let arguments = read(&caller, args_ptr, args_len)?;
                foreign::call(&mut caller, &name, &arguments, result_ptr, result_size)
            })())
        },
    )?;
    Ok(())
}

fn add_logging_and_time(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_log",
        |caller: C<'_>, level: i32, ptr: i32, len: i32| {
            finish(read(&caller, ptr, len).map(|message| {
                let plugin = caller.data().plugin.name.as_str();
                let message = String::from_utf8_lossy(&message);
                match level {
                    0 => tracing::trace!(target: "strait::wasm", plugin, "{message}"),
                    1 => tracing::debug!(target: "strait::wasm", plugin, "{message}"),
                    2 => tracing::info!(target: "strait::wasm", plugin, "{message}"),
                    3 => tracing::warn!(target: "strait::wasm", plugin, "{message}"),
                    _ => tracing::error!(target: "strait::wasm", plugin, "{message}"),
                }
            }))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_log_level",
        |mut caller: C<'_>, out: i32| {
            // The SDKs filter below this level themselves, saving a host call per line.
            finish(write_u32(&mut caller, out, super::log_level()))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        |mut caller: C<'_>, out: i32| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_nanos() as u64);
            finish(write_u64(&mut caller, out, now))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        |mut caller: C<'_>, ms: i32| {
            caller.data_mut().tick_period = std::time::Duration::from_millis(u64::from(ms as u32));
            Ok(Status::Ok as i32)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_property",
        |mut caller: C<'_>, ptr: i32, len: i32, out_ptr: i32, out_len: i32| {
            finish((|| {
                let path = read(&caller, ptr, len)?;
                let state = caller.data_mut();
                let set = state
                    .properties
                    .get(&(state.effective_context, path.clone()))
                    .cloned();
                let value = match set {
                    Some(value) => value,
                    None => properties::get(state, &path)?,
                };
                copy_out(&mut caller, &value, out_ptr, out_len)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_property",
        |mut caller: C<'_>, path_ptr: i32, path_len: i32, value_ptr: i32, value_len: i32| {
            finish((|| {
                // As Envoy: a value in the stream's filter state, read back by
                // `proxy_get_property` with the same path. A root context has no
                // stream to hold it.
                let path = read(&caller, path_ptr, path_len)?;
                let value = read(&caller, value_ptr, value_len)?;
                let state = caller.data_mut();
                let context = state.effective_context;
                if !state.signals.contains_key(&context) {
                    return Err(Status::NotFound.into());
                }
                // An HTTP stream's filter state is shared by its filters, so another
                // plugin (and `filter_state.wasm.<path>`) reads it too.
                // A property declared read-only is written once (a second write is
                // `BadArgument`, as Envoy's `CelState`).
                let read_only = state.declared.get(&path).copied().unwrap_or(false);
                if let Some(info) = &state.stream.info {
                    let key = format!(
                        "{}{}",
                        properties::WASM_STATE_PREFIX,
                        String::from_utf8_lossy(&path)
                    );
                    let object = crate::stream_info::FilterStateObject {
                        value: value.into(),
                        hashable: false,
                        read_only,
                    };
                    return info
                        .borrow_mut()
                        .filter_state
                        .set(&key, object)
                        .map_err(|_| Status::BadArgument.into());
                }
                match state.properties.entry((context, path)) {
                    Entry::Occupied(_) if read_only => Err(Status::BadArgument.into()),
                    Entry::Occupied(mut old) => {
                        old.insert(value);
                        Ok(())
                    }
                    Entry::Vacant(slot) => {
                        slot.insert(value);
                        Ok(())
                    }
                }
            })())
        },
    )?;
    Ok(())
}

fn add_http_call(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_http_call",
        |mut caller: C<'_>,
         cluster_ptr: i32,
         cluster_len: i32,
         headers_ptr: i32,
         headers_len: i32,
         body_ptr: i32,
         body_len: i32,
         trailers_ptr: i32,
         trailers_len: i32,
         timeout_ms: i32,
         token_out: i32| {
            finish((|| {
                let cluster = read(&caller, cluster_ptr, cluster_len)?;
                let headers = pairs(&caller, headers_ptr, headers_len)?;
                let body = read(&caller, body_ptr, body_len)?;
                let trailers = pairs(&caller, trailers_ptr, trailers_len)?;
                let call = callout::request(&cluster, headers, body, trailers, timeout_ms)?;
                dispatch(&mut caller, call, token_out)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_call",
        |mut caller: C<'_>,
         service_ptr: i32,
         service_len: i32,
         service_name_ptr: i32,
         service_name_len: i32,
         method_ptr: i32,
         method_len: i32,
         metadata_ptr: i32,
         metadata_len: i32,
         message_ptr: i32,
         message_len: i32,
         timeout_ms: i32,
         token_out: i32| {
            finish((|| {
                let target = GrpcTarget::read(
                    &caller,
                    [
                        service_ptr,
                        service_len,
                        service_name_ptr,
                        service_name_len,
                        method_ptr,
                        method_len,
                        metadata_ptr,
                        metadata_len,
                    ],
                )?;
                let message = read(&caller, message_ptr, message_len)?;
                let call = target.request(&message, timeout_ms as u32, false)?;
                dispatch(&mut caller, call, token_out)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_stream",
        |mut caller: C<'_>,
         service_ptr: i32,
         service_len: i32,
         service_name_ptr: i32,
         service_name_len: i32,
         method_ptr: i32,
         method_len: i32,
         metadata_ptr: i32,
         metadata_len: i32,
         token_out: i32| {
            finish((|| {
                let target = GrpcTarget::read(
                    &caller,
                    [
                        service_ptr,
                        service_len,
                        service_name_ptr,
                        service_name_len,
                        method_ptr,
                        method_len,
                        metadata_ptr,
                        metadata_len,
                    ],
                )?;
                let call = target.request(&[], 0, true)?;
                dispatch(&mut caller, call, token_out)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_send",
        |mut caller: C<'_>, token: i32, message_ptr: i32, message_len: i32, end_stream: i32| {
            finish((|| {
                let token = token as u32;
                if !caller.data().calls.contains_key(&token) {
                    return Err(Status::NotFound.into());
                }
                let message = Bytes::from(read(&caller, message_ptr, message_len)?);
                let op = StreamOp::Send {
                    message,
                    end_stream: end_stream != 0,
                };
                caller
                    .data_mut()
                    .dispatched
                    .push(Dispatch::Stream(token, op));
                Ok(())
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_close",
        |mut caller: C<'_>, token: i32| {
            let state = caller.data_mut();
            let token = token as u32;
            if !state.calls.contains_key(&token) {
                return Ok(Status::NotFound as i32);
            }
            state
                .dispatched
                .push(Dispatch::Stream(token, StreamOp::Close));
            Ok(Status::Ok as i32)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_cancel",
        |mut caller: C<'_>, token: i32| {
            // A call's answer, when it comes, finds no call and is dropped; a stream
            // is reset. No callback either way.
            let state = caller.data_mut();
            let token = token as u32;
            match state.calls.remove(&token) {
                Some(_) => {
                    state
                        .dispatched
                        .push(Dispatch::Stream(token, StreamOp::Cancel));
                    Ok(Status::Ok as i32)
                }
                None => Ok(Status::NotFound as i32),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_status",
        |mut caller: C<'_>, code_out: i32, message_ptr_out: i32, message_len_out: i32| {
            finish((|| {
                let (code, message) = caller.data().grpc_status.clone();
                write_u32(&mut caller, code_out, code)?;
                copy_out(
                    &mut caller,
                    message.as_bytes(),
                    message_ptr_out,
                    message_len_out,
                )
            })())
        },
    )?;
    Ok(())
}

/// Records `call` for the embedder under a new token (the effective context's)
/// and writes the token for the guest.
fn dispatch(caller: &mut C<'_>, mut call: callout::HttpCallRequest, token_out: i32) -> HostResult {
    let state = caller.data_mut();
    let token = state.next_call_token;
    state.next_call_token = token.wrapping_add(1).max(1);
    state.calls.insert(token, state.effective_context);
    call.token = token;
    state.dispatched.push(Dispatch::Call(Box::new(call)));
    write_u32(caller, token_out, token)
}

/// A pairs-encoded map from guest memory; none at all when `len` is 0.
fn pairs(caller: &C<'_>, ptr: i32, len: i32) -> HostResult<Vec<super::headers::Pair>> {
    match len {
        0 => Ok(Vec::new()),
        _ => Ok(deserialize_pairs(&read(caller, ptr, len)?)?),
    }
}

/// The arguments `proxy_grpc_call` and `proxy_grpc_stream` share.
struct GrpcTarget {
    cluster: Vec<u8>,
    service: Vec<u8>,
    method: Vec<u8>,
    metadata: Vec<super::headers::Pair>,
}

impl GrpcTarget {
    /// From the (pointer, length) pairs of the cluster, service, method and initial
    /// metadata arguments, in the ABI's order.
    fn read(caller: &C<'_>, args: [i32; 8]) -> HostResult<GrpcTarget> {
        Ok(GrpcTarget {
            cluster: read(caller, args[0], args[1])?,
            service: read(caller, args[2], args[3])?,
            method: read(caller, args[4], args[5])?,
            metadata: pairs(caller, args[6], args[7])?,
        })
    }

    fn request(
        self,
        message: &[u8],
        timeout_ms: u32,
        stream: bool,
    ) -> Result<callout::HttpCallRequest, Status> {
        callout::grpc_request(
            &self.cluster,
            &self.service,
            &self.method,
            self.metadata,
            message,
            timeout_ms,
            stream,
        )
    }
}

fn add_stream_control(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut caller: C<'_>,
         status: i32,
         details_ptr: i32,
         details_len: i32,
         body_ptr: i32,
         body_len: i32,
         headers_ptr: i32,
         headers_len: i32,
         grpc_status: i32| {
            finish((|| {
                let status = u16::try_from(status)
                    .ok()
                    .and_then(|s| StatusCode::from_u16(s).ok())
                    .ok_or(Status::BadArgument)?;
                let details =
                    String::from_utf8_lossy(&read(&caller, details_ptr, details_len)?).into_owned();
                let body = Bytes::from(read(&caller, body_ptr, body_len)?);
                let mut reply = LocalReply {
                    status,
                    headers: http::HeaderMap::new(),
                    body,
                    details,
                    reset: false,
                };
                for (name, value) in deserialize_pairs(&read(&caller, headers_ptr, headers_len)?)? {
                    let name = HeaderName::from_bytes(&name).map_err(|_| Status::BadArgument)?;
                    let value = HeaderValue::from_bytes(&value).map_err(|_| Status::BadArgument)?;
                    reply.headers.append(name, value);
                }
                if grpc_status >= 0 {
                    reply
                        .headers
                        .insert("grpc-status", HeaderValue::from(grpc_status));
                }
                let state = caller.data_mut();
                let context = state.effective_context;
                state.signal(context).ok_or(Status::NotFound)?.local_reply = Some(Box::new(reply));
                Ok(())
            })())
        },
    )?;
    // ABI 0.1.0: one function per direction, and no status to report on success.
    for (name, request) in [
        ("proxy_continue_request", true),
        ("proxy_continue_response", false),
    ] {
        linker.func_wrap("env", name, move |mut caller: C<'_>| {
            let state = caller.data_mut();
            let context = state.effective_context;
            let Some(signals) = state.signal(context) else {
                return Ok(Status::NotFound as i32);
            };
            match request {
                true => signals.resume_request = true,
                false => signals.resume_response = true,
            }
            Ok(Status::Ok as i32)
        })?;
    }
    // ABI 0.1.0: Strait routes after the request filters, so there is no cached
    // route to clear (the `clear_route_cache` foreign function of 0.2 likewise).
    linker.func_wrap("env", "proxy_clear_route_cache", |_: C<'_>| {
        Ok(Status::Ok as i32)
    })?;
    // ABI 0.1.0: the plugin configuration (0.2 reads it as buffer type 7), for the
    // root context; a stream context gets none, as in Envoy 1.40.
    linker.func_wrap(
        "env",
        "proxy_get_configuration",
        |mut caller: C<'_>, out_ptr: i32, out_len: i32| {
            let state = caller.data();
            let configuration = match state.effective_context == state.root_context_id {
                true => state.plugin.configuration.clone(),
                false => Default::default(),
            };
            finish(copy_out(&mut caller, &configuration, out_ptr, out_len))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_continue_stream",
        |mut caller: C<'_>, stream_type: i32| {
            let state = caller.data_mut();
            let context = state.effective_context;
            let Some(signals) = state.signal(context) else {
                return Ok(Status::NotFound as i32);
            };
            match stream_type {
                0 => signals.resume_request = true,
                1 => signals.resume_response = true,
                // A network filter's paused read or write side.
                2 => signals.resume_downstream = true,
                3 => signals.resume_upstream = true,
                _ => return Ok(Status::BadArgument as i32),
            }
            Ok(Status::Ok as i32)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_effective_context",
        |mut caller: C<'_>, context: i32| {
            let state = caller.data_mut();
            let context = context as u32;
            if context != state.root_context_id && !state.signals.contains_key(&context) {
                return Ok(Status::BadArgument as i32);
            }
            state.effective_context = context;
            Ok(Status::Ok as i32)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_close_stream",
        |mut caller: C<'_>, stream_type: i32| {
            let state = caller.data_mut();
            let context = state.effective_context;
            let Some(signals) = state.signal(context) else {
                return Ok(Status::NotFound as i32);
            };
            match stream_type {
                // The request or the response of an HTTP stream: Envoy resets the
                // stream after the callback (HTTP/1.1: the connection closes; HTTP/2:
                // RST_STREAM), with `wasm_close_stream` as the response details.
                0 | 1 => {
                    signals.local_reply = Some(Box::new(LocalReply::reset("wasm_close_stream")));
                    Ok(Status::Ok as i32)
                }
                // Downstream and upstream: a network filter has one connection to close
                // (Envoy's write-filter callbacks close the same downstream connection).
                2 | 3 => {
                    signals.close_connection = true;
                    Ok(Status::Ok as i32)
                }
                _ => Ok(Status::BadArgument as i32),
            }
        },
    )?;
    linker.func_wrap("env", "proxy_done", |mut caller: C<'_>| {
        caller.data_mut().done = true;
        Ok(Status::Ok as i32)
    })?;
    Ok(())
}
