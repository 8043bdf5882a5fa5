//! Copying between host and guest memory with wasmtime's bounds-checked API.
//!
//! Guest pointers arrive as `i32` and are reinterpreted as `u32` addresses (wasm32);
//! every access is checked, and an out-of-bounds one is the ABI's
//! `InvalidMemoryAccess`, not a trap, so a buggy plugin gets an error code.
use wasmtime::Caller;

use super::abi::{HostError, HostResult, Status};
use super::state::HostState;

fn memory(caller: &Caller<'_, HostState>) -> HostResult<wasmtime::Memory> {
    caller
        .data()
        .memory
        .ok_or(HostError::Status(Status::InternalFailure))
}

/// Copies `len` guest bytes at `ptr`.
pub(crate) fn read(caller: &Caller<'_, HostState>, ptr: i32, len: i32) -> HostResult<Vec<u8>> {
    let memory = memory(caller)?;
    let (start, len) = (ptr as u32 as usize, len as u32 as usize);
    let end = start.checked_add(len).ok_or(Status::InvalidMemoryAccess)?;
    memory
        .data(caller)
        .get(start..end)
        .map(<[u8]>::to_vec)
        .ok_or(HostError::Status(Status::InvalidMemoryAccess))
}

/// Runs `f` on the guest bytes of each `(ptr, len)` span, borrowed from linear
/// memory rather than copied, together with the store's data: for host calls that
/// only look at what the guest passed (header names and values).
pub(crate) fn with_guest_bytes<R, const N: usize>(
    caller: &mut Caller<'_, HostState>,
    spans: [(i32, i32); N],
    f: impl FnOnce([&[u8]; N], &mut HostState) -> HostResult<R>,
) -> HostResult<R> {
    let memory = memory(caller)?;
    let (data, state) = memory.data_and_store_mut(caller);
    let data: &[u8] = data;
    let mut slices = [&data[..0]; N];
    for (slice, (ptr, len)) in slices.iter_mut().zip(spans) {
        let start = ptr as u32 as usize;
        let end = start
            .checked_add(len as u32 as usize)
            .ok_or(Status::InvalidMemoryAccess)?;
        *slice = data
            .get(start..end)
            .ok_or(HostError::Status(Status::InvalidMemoryAccess))?;
    }
    f(slices, state)
}

/// A guest string (keys, names, paths) as UTF-8, or `BadArgument`.
pub(crate) fn utf8(bytes: &[u8]) -> HostResult<&str> {
    std::str::from_utf8(bytes).map_err(|_| HostError::Status(Status::BadArgument))
}

/// Reads a UTF-8 string (keys, names, paths).
pub(crate) fn read_string(
    caller: &Caller<'_, HostState>,
    ptr: i32,
    len: i32,
) -> HostResult<String> {
    String::from_utf8(read(caller, ptr, len)?).map_err(|_| HostError::Status(Status::BadArgument))
}

/// Writes `bytes` at `ptr`.
pub(crate) fn write(caller: &mut Caller<'_, HostState>, ptr: i32, bytes: &[u8]) -> HostResult {
    let memory = memory(caller)?;
    memory
        .write(caller, ptr as u32 as usize, bytes)
        .map_err(|_| HostError::Status(Status::InvalidMemoryAccess))
}

pub(crate) fn write_u32(caller: &mut Caller<'_, HostState>, ptr: i32, value: u32) -> HostResult {
    write(caller, ptr, &value.to_le_bytes())
}

pub(crate) fn write_u64(caller: &mut Caller<'_, HostState>, ptr: i32, value: u64) -> HostResult {
    write(caller, ptr, &value.to_le_bytes())
}

/// Hands `bytes` to the guest the proxy-wasm way: the guest allocates a buffer
/// (`proxy_on_memory_allocate`, or `malloc` in older modules), the host fills it and
/// writes its address and size to `ptr_out` / `size_out`. The guest owns and frees
/// the buffer. Empty data is returned as a null pointer without allocating, as Envoy
/// does.
pub(crate) fn copy_out(
    caller: &mut Caller<'_, HostState>,
    bytes: &[u8],
    ptr_out: i32,
    size_out: i32,
) -> HostResult {
    let size = u32::try_from(bytes.len()).map_err(|_| Status::BadArgument)?;
    let address = if bytes.is_empty() {
        0
    } else {
        let allocate = caller
            .data()
            .allocate
            .clone()
            .ok_or(HostError::Status(Status::InternalFailure))?;
        // A trap here (e.g. the guest is out of memory) fails the whole callback.
        let address = allocate
            .call(&mut *caller, size as i32)
            .map_err(HostError::Trap)?;
        if address == 0 {
            return Err(HostError::Status(Status::InternalFailure));
        }
        write(caller, address, bytes)?;
        address
    };
    write_u32(caller, ptr_out, address as u32)?;
    write_u32(caller, size_out, size)
}
