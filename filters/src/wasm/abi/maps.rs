//! Host functions over the stream's header maps and body buffers.
use wasmtime::Linker;

use super::{finish, Status, C};
use crate::wasm::headers::{self, deserialize_pairs};
use crate::wasm::memory::{copy_out, read, utf8, with_guest_bytes, write_u32};
use crate::wasm::state::HostState;
use crate::BodyBuffer;

pub(super) fn add_header_maps(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut caller: C<'_>, map: i32, out_ptr: i32, out_len: i32| {
            finish((|| {
                let pairs = headers::view(&mut caller.data_mut().stream, map)?.serialize();
                copy_out(&mut caller, &pairs, out_ptr, out_len)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        |mut caller: C<'_>, map: i32, ptr: i32, len: i32| {
            finish((|| {
                let pairs = deserialize_pairs(&read(&caller, ptr, len)?)?;
                headers::view(&mut caller.data_mut().stream, map)?.set_all(&pairs)?;
                Ok(())
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut caller: C<'_>, map: i32, key_ptr: i32, key_len: i32, out_ptr: i32, out_len: i32| {
            finish((|| {
                let value = with_guest_bytes(&mut caller, [(key_ptr, key_len)], |[key], state| {
                    // ABI 0.1.0 reads an absent header (or map) as an empty value.
                    let abi01 = state.abi01;
                    let value = match headers::view(&mut state.stream, map) {
                        Ok(view) => view.get(utf8(key)?),
                        Err(Status::NotFound) if abi01 => None,
                        Err(status) => return Err(status.into()),
                    };
                    match value {
                        Some(value) => Ok(value),
                        None if abi01 => Ok(headers::HeaderBytes::Owned(Vec::new())),
                        None => Err(Status::NotFound.into()),
                    }
                })?;
                copy_out(&mut caller, value.as_ref(), out_ptr, out_len)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_add_header_map_value",
        |mut caller: C<'_>,
         map: i32,
         key_ptr: i32,
         key_len: i32,
         value_ptr: i32,
         value_len: i32| {
            finish(with_guest_bytes(
                &mut caller,
                [(key_ptr, key_len), (value_ptr, value_len)],
                |[key, value], state| {
                    headers::view(&mut state.stream, map)?.add(key, value)?;
                    Ok(())
                },
            ))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_replace_header_map_value",
        |mut caller: C<'_>,
         map: i32,
         key_ptr: i32,
         key_len: i32,
         value_ptr: i32,
         value_len: i32| {
            finish(with_guest_bytes(
                &mut caller,
                [(key_ptr, key_len), (value_ptr, value_len)],
                |[key, value], state| {
                    headers::view(&mut state.stream, map)?.replace(key, value)?;
                    Ok(())
                },
            ))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut caller: C<'_>, map: i32, key_ptr: i32, key_len: i32| {
            finish(with_guest_bytes(
                &mut caller,
                [(key_ptr, key_len)],
                |[key], state| {
                    headers::view(&mut state.stream, map)?.remove(key)?;
                    Ok(())
                },
            ))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_size",
        |mut caller: C<'_>, map: i32, out: i32| {
            finish((|| {
                let size = headers::view(&mut caller.data_mut().stream, map)?.len();
                write_u32(&mut caller, out, size as u32)
            })())
        },
    )?;
    Ok(())
}

/// The bytes of a readable buffer type.
fn buffer(state: &HostState, buffer_type: i32) -> Result<&[u8], Status> {
    fn body(body: &Option<BodyBuffer>) -> Result<&[u8], Status> {
        body.as_ref()
            .map(BodyBuffer::as_bytes)
            .ok_or(Status::NotFound)
    }
    match buffer_type {
        0 => body(&state.stream.request_body),
        1 => body(&state.stream.response_body),
        2 => body(&state.stream.downstream_data),
        3 => body(&state.stream.upstream_data),
        6 => Ok(&state.plugin.vm_configuration),
        7 => Ok(&state.plugin.configuration),
        4 => body(&state.stream.call_body),
        5 => body(&state.stream.grpc_message),
        // Foreign-function call data.
        8 => Err(Status::NotFound),
        _ => Err(Status::BadArgument),
    }
}

pub(super) fn add_buffers(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut caller: C<'_>, buffer_type: i32, start: i32, max: i32, out_ptr: i32, out_len: i32| {
            finish((|| {
                let bytes = buffer(caller.data(), buffer_type)?;
                let start = (start as u32 as usize).min(bytes.len());
                let end = start.saturating_add(max as u32 as usize).min(bytes.len());
                let slice = bytes[start..end].to_vec();
                copy_out(&mut caller, &slice, out_ptr, out_len)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_buffer_status",
        |mut caller: C<'_>, buffer_type: i32, len_out: i32, flags_out: i32| {
            finish((|| {
                let len = buffer(caller.data(), buffer_type)?.len();
                write_u32(&mut caller, len_out, len as u32)?;
                write_u32(&mut caller, flags_out, 0)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |mut caller: C<'_>, buffer_type: i32, start: i32, size: i32, ptr: i32, len: i32| {
            finish((|| {
                let data = read(&caller, ptr, len)?;
                let stream = &mut caller.data_mut().stream;
                let body = match buffer_type {
                    0 => stream.request_body.as_mut(),
                    1 => stream.response_body.as_mut(),
                    2 => stream.downstream_data.as_mut(),
                    3 => stream.upstream_data.as_mut(),
                    4..=8 => return Err(Status::NotFound.into()),
                    _ => return Err(Status::BadArgument.into()),
                };
                let body = body.ok_or(Status::NotFound)?;
                body.splice(start as u32 as usize, size as u32 as usize, &data);
                Ok(())
            })())
        },
    )?;
    Ok(())
}
