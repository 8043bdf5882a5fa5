//! The WASI preview-1 imports proxy-wasm modules use, implemented by hand: SDK
//! runtimes (Rust std, TinyGo, Emscripten) import a few for stdout, clocks and
//! randomness, and a plugin gets no files, sockets, arguments or environment.
//! `wasmtime-wasi` would bring a filesystem and async runtime we do not want.
use rand::RngCore;
use wasmtime::{Caller, Linker};

use super::abi::HostError;
use super::memory::{read, write, write_u32, write_u64};
use super::state::HostState;

const MODULE: &str = "wasi_snapshot_preview1";
const SUCCESS: i32 = 0;
const BADF: i32 = 8;
const FAULT: i32 = 21;
const INVAL: i32 = 28;
const NOSYS: i32 = 52;

type C<'a> = Caller<'a, HostState>;

/// The guest called `proc_exit`; ends the callback like a trap.
#[derive(Debug, thiserror::Error)]
#[error("plugin called proc_exit({0})")]
pub(crate) struct ProcExit(pub i32);

fn errno(result: Result<(), HostError>) -> wasmtime::Result<i32> {
    match result {
        Ok(()) => Ok(SUCCESS),
        Err(HostError::Status(_)) => Ok(FAULT),
        Err(HostError::Trap(trap)) => Err(trap),
    }
}

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    // stdout / stderr go to the proxy log, one event per write, tagged with the
    // plugin: that is where a Rust plugin's panic message ends up.
    linker.func_wrap(
        MODULE,
        "fd_write",
        |mut caller: C<'_>, fd: i32, iovs: i32, iovs_len: i32, written_out: i32| {
            if fd != 1 && fd != 2 {
                return Ok(BADF);
            }
            errno((|| {
                let mut text = Vec::new();
                for index in 0..iovs_len {
                    let iov = read(&caller, iovs.wrapping_add(index.wrapping_mul(8)), 8)?;
                    let ptr = i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
                    let len = i32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
                    text.extend_from_slice(&read(&caller, ptr, len)?);
                }
                let plugin = caller.data().plugin.name.as_str();
                let line = String::from_utf8_lossy(&text);
                let line = line.trim_end();
                if !line.is_empty() {
                    if fd == 1 {
                        tracing::info!(target: "strait::wasm", plugin, stream = "stdout", "{line}");
                    } else {
                        tracing::warn!(target: "strait::wasm", plugin, stream = "stderr", "{line}");
                    }
                }
                write_u32(&mut caller, written_out, text.len() as u32)
            })())
        },
    )?;
    linker.func_wrap(
        MODULE,
        "fd_read",
        |_: C<'_>, _: i32, _: i32, _: i32, _: i32| Ok(BADF),
    )?;
    linker.func_wrap(MODULE, "fd_close", |_: C<'_>, _: i32| Ok(BADF))?;
    linker.func_wrap(
        MODULE,
        "fd_seek",
        |_: C<'_>, _: i32, _: i64, _: i32, _: i32| Ok(BADF),
    )?;
    linker.func_wrap(MODULE, "fd_fdstat_get", |_: C<'_>, _: i32, _: i32| Ok(BADF))?;
    linker.func_wrap(MODULE, "fd_prestat_get", |_: C<'_>, _: i32, _: i32| {
        Ok(BADF)
    })?;
    linker.func_wrap(
        MODULE,
        "fd_prestat_dir_name",
        |_: C<'_>, _: i32, _: i32, _: i32| Ok(BADF),
    )?;
    linker.func_wrap(
        MODULE,
        "clock_time_get",
        |mut caller: C<'_>, clock: i32, _precision: i64, out: i32| {
            let now = match clock {
                // realtime, or monotonic (as Envoy, any clock that never goes back
                // within the process will do; the wall clock is the simplest)
                0..=3 => std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |since| since.as_nanos() as u64),
                _ => return Ok(INVAL),
            };
            errno(write_u64(&mut caller, out, now))
        },
    )?;
    linker.func_wrap(
        MODULE,
        "clock_res_get",
        |mut caller: C<'_>, _clock: i32, out: i32| errno(write_u64(&mut caller, out, 1_000)),
    )?;
    linker.func_wrap(
        MODULE,
        "random_get",
        |mut caller: C<'_>, ptr: i32, len: i32| {
            let mut bytes = vec![0u8; len as u32 as usize];
            rand::thread_rng().fill_bytes(&mut bytes);
            errno(write(&mut caller, ptr, &bytes))
        },
    )?;
    // The environment is the plugin's `vm_config.environment_variables`, each entry
    // `NAME=value` with a NUL; there are no arguments.
    linker.func_wrap(
        MODULE,
        "environ_sizes_get",
        |mut caller: C<'_>, count_out: i32, size_out: i32| {
            let env = &caller.data().plugin.environment;
            let count = env.len() as u32;
            let size: usize = env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
            errno(
                write_u32(&mut caller, count_out, count)
                    .and_then(|()| write_u32(&mut caller, size_out, size as u32)),
            )
        },
    )?;
    linker.func_wrap(
        MODULE,
        "environ_get",
        |mut caller: C<'_>, pointers: i32, buffer: i32| {
            let env = caller.data().plugin.clone();
            let mut at = buffer as u32;
            let result = env
                .environment
                .iter()
                .enumerate()
                .try_for_each(|(i, (k, v))| {
                    let entry = format!("{k}={v}\0");
                    write_u32(&mut caller, pointers + 4 * i as i32, at)?;
                    write(&mut caller, at as i32, entry.as_bytes())?;
                    at += entry.len() as u32;
                    Ok(())
                });
            errno(result)
        },
    )?;
    linker.func_wrap(
        MODULE,
        "args_sizes_get",
        |mut caller: C<'_>, count_out: i32, size_out: i32| {
            errno(
                write_u32(&mut caller, count_out, 0)
                    .and_then(|()| write_u32(&mut caller, size_out, 0)),
            )
        },
    )?;
    linker.func_wrap(MODULE, "args_get", |_: C<'_>, _: i32, _: i32| Ok(SUCCESS))?;
    linker.func_wrap(MODULE, "sched_yield", |_: C<'_>| Ok(SUCCESS))?;
    linker.func_wrap(
        MODULE,
        "poll_oneoff",
        |_: C<'_>, _: i32, _: i32, _: i32, _: i32| Ok(NOSYS),
    )?;
    linker.func_wrap(
        MODULE,
        "proc_exit",
        |_: C<'_>, code: i32| -> wasmtime::Result<()> { Err(wasmtime::Error::new(ProcExit(code))) },
    )?;
    Ok(())
}
