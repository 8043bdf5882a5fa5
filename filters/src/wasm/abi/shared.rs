//! Host functions for process-wide shared data, shared queues and metrics.
use bytes::Bytes;
use wasmtime::Linker;

use super::{finish, Status, C};
use crate::wasm::memory::{copy_out, read, read_string, write_u32, write_u64};
use crate::wasm::shared::{MetricKind, Metrics, SharedData, SharedQueues};
use crate::wasm::state::HostState;

pub(super) fn add_shared_queues(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_register_shared_queue",
        |mut caller: C<'_>, name_ptr: i32, name_len: i32, id_out: i32| {
            finish((|| {
                let name = read_string(&caller, name_ptr, name_len)?;
                let state = caller.data();
                let id = SharedQueues::global().register(
                    &state.plugin.vm_id,
                    &name,
                    state.queue_notifier.clone(),
                );
                write_u32(&mut caller, id_out, id)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        |mut caller: C<'_>,
         vm_id_ptr: i32,
         vm_id_len: i32,
         name_ptr: i32,
         name_len: i32,
         id_out: i32| {
            finish((|| {
                let vm_id = read_string(&caller, vm_id_ptr, vm_id_len)?;
                let name = read_string(&caller, name_ptr, name_len)?;
                let id = SharedQueues::global()
                    .resolve(&vm_id, &name)
                    .ok_or(Status::NotFound)?;
                write_u32(&mut caller, id_out, id)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_enqueue_shared_queue",
        |caller: C<'_>, id: i32, value_ptr: i32, value_len: i32| {
            finish((|| {
                let value = Bytes::from(read(&caller, value_ptr, value_len)?);
                SharedQueues::global().enqueue(id as u32, value)?;
                Ok(())
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_dequeue_shared_queue",
        |mut caller: C<'_>, id: i32, out_ptr: i32, out_len: i32| {
            finish((|| {
                let value = SharedQueues::global().dequeue(id as u32)?;
                copy_out(&mut caller, &value, out_ptr, out_len)
            })())
        },
    )?;
    Ok(())
}

pub(super) fn add_shared_data_and_metrics(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut caller: C<'_>,
         key_ptr: i32,
         key_len: i32,
         out_ptr: i32,
         out_len: i32,
         cas_out: i32| {
            finish((|| {
                let key = read_string(&caller, key_ptr, key_len)?;
                let (value, cas) = SharedData::global()
                    .get(&caller.data().plugin.vm_id, &key)
                    .ok_or(Status::NotFound)?;
                copy_out(&mut caller, &value, out_ptr, out_len)?;
                write_u32(&mut caller, cas_out, cas)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_shared_data",
        |caller: C<'_>, key_ptr: i32, key_len: i32, value_ptr: i32, value_len: i32, cas: i32| {
            finish((|| {
                let key = read_string(&caller, key_ptr, key_len)?;
                let value = Bytes::from(read(&caller, value_ptr, value_len)?);
                SharedData::global().set(&caller.data().plugin.vm_id, &key, value, cas as u32)?;
                Ok(())
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_define_metric",
        |mut caller: C<'_>, kind: i32, name_ptr: i32, name_len: i32, id_out: i32| {
            finish((|| {
                let kind = MetricKind::from_abi(kind).ok_or(Status::BadArgument)?;
                let name = read_string(&caller, name_ptr, name_len)?;
                let metric = Metrics::global().define(kind, &name)?;
                let metrics = &mut caller.data_mut().metrics;
                let id = match metrics
                    .iter()
                    .position(|known| std::sync::Arc::ptr_eq(known, &metric))
                {
                    Some(id) => id,
                    None => {
                        metrics.push(metric);
                        metrics.len() - 1
                    }
                };
                write_u32(&mut caller, id_out, id as u32)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_increment_metric",
        |caller: C<'_>, id: i32, offset: i64| {
            finish((|| {
                let metric = caller
                    .data()
                    .metrics
                    .get(id as u32 as usize)
                    .ok_or(Status::NotFound)?;
                Ok(metric.increment(offset)?)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_record_metric",
        |caller: C<'_>, id: i32, value: i64| {
            finish((|| {
                let metric = caller
                    .data()
                    .metrics
                    .get(id as u32 as usize)
                    .ok_or(Status::NotFound)?;
                metric.record(value as u64);
                Ok(())
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_metric",
        |mut caller: C<'_>, id: i32, out: i32| {
            finish((|| {
                let value = caller
                    .data()
                    .metrics
                    .get(id as u32 as usize)
                    .ok_or(Status::NotFound)?
                    .value();
                write_u64(&mut caller, out, value)
            })())
        },
    )?;
    Ok(())
}
