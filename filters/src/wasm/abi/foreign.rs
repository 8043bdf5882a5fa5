//! `proxy_call_foreign_function`: the functions Envoy 1.40 registers for plugins
//! (`source/extensions/common/wasm/foreign.cc`), by name, with its argument and
//! result encodings:
//!
//! | name | arguments | result |
//! |---|---|---|
//! | `compress` | bytes | zlib stream (RFC 1950) of them |
//! | `uncompress` | zlib stream | its bytes; `SerializationFailure` if it is not one |
//! | `set_envoy_filter_state` | `SetEnvoyFilterStateArguments` (protobuf) | none: the stream's filter state `path` holds `value`, made by the object factory named `path` |
//! | `declare_property` | `DeclarePropertyArguments` (protobuf) | none: from a root context, `set_property` of `name` is then write-once per stream when `readonly` |
//! | `clear_route_cache` | none | none: Strait routes after the request filters, so this is already so |
//!
//! Any other name is `NotFound`, which the SDKs report as an error value (an
//! `Unimplemented` status made the Rust SDK panic, trapping the plugin).
//! Not provided: `sign` / `verify_signature` and the CEL `expr_*` functions.
use std::io::{Read, Write};

use flate2::read::ZlibDecoder;
use flate2::write::ZlibEncoder;
use flate2::Compression;
use prost::Message;

use super::{HostError, HostResult, Status, C};
use crate::stream_info::FilterStateObject;
use crate::wasm::memory::copy_out;
use crate::wasm::state::HostState;

/// Envoy's `envoy.source.extensions.common.wasm.SetEnvoyFilterStateArguments`.
#[derive(Clone, PartialEq, Message)]
struct SetEnvoyFilterStateArguments {
    #[prost(string, tag = "1")]
    path: String,
    #[prost(string, tag = "2")]
    value: String,
    /// `LifeSpan`: FilterChain (0), DownstreamRequest (1), DownstreamConnection (2).
    /// A stream's filter state lives as long as the stream here.
    #[prost(int32, tag = "3")]
    span: i32,
}

/// Envoy's `envoy.source.extensions.common.wasm.DeclarePropertyArguments`.
#[derive(Clone, PartialEq, Message)]
struct DeclarePropertyArguments {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(bool, tag = "2")]
    readonly: bool,
    /// `WasmType` (Bytes, String, FlatBuffers, Protobuf): how CEL reads the value.
    /// `get_property` returns the bytes as set whatever the type, as in Envoy.
    #[prost(int32, tag = "3")]
    r#type: i32,
    #[prost(bytes = "vec", tag = "4")]
    schema: Vec<u8>,
    #[prost(int32, tag = "5")]
    span: i32,
}

/// Runs the foreign function `name`; a result is handed to the guest at
/// `result_ptr` / `result_size` (null and 0 for none).
pub(super) fn call(
    caller: &mut C<'_>,
    name: &[u8],
    arguments: &[u8],
    result_ptr: i32,
    result_size: i32,
) -> HostResult {
    let result = match name {
        b"compress" => Some(compress(arguments)?),
        b"uncompress" => Some(uncompress(arguments)?),
        b"set_envoy_filter_state" => {
            let args =
                SetEnvoyFilterStateArguments::decode(arguments).map_err(|_| Status::BadArgument)?;
            set_envoy_filter_state(caller.data_mut(), &args)?;
            None
        }
        b"declare_property" => {
            let args =
                DeclarePropertyArguments::decode(arguments).map_err(|_| Status::BadArgument)?;
            // Envoy keeps a declaration in the calling context, and `set_property`
            // looks in the root context's: only a root context's declaration (from
            // `on_vm_start` / `on_configure`) takes effect.
            let state = caller.data_mut();
            if state.effective_context == state.root_context_id {
                state.declared.insert(args.name.into_bytes(), args.readonly);
            }
            None
        }
        b"clear_route_cache" => None,
        _ => return Err(Status::NotFound.into()),
    };
    copy_out(
        caller,
        result.as_deref().unwrap_or_default(),
        result_ptr,
        result_size,
    )
}

/// zlib's `compress()` (default level), as Envoy calls it.
fn compress(data: &[u8]) -> HostResult<Vec<u8>> {
    let mut encoder = ZlibEncoder::new(
        Vec::with_capacity(data.len() / 2 + 16),
        Compression::default(),
    );
    encoder
        .write_all(data)
        .and_then(|()| encoder.finish())
        .map_err(|_| HostError::Status(Status::SerializationFailure))
}

/// zlib's `uncompress()`: one whole zlib stream (what follows it is ignored).
fn uncompress(data: &[u8]) -> HostResult<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len() * 2 + 2);
    ZlibDecoder::new(data)
        .read_to_end(&mut out)
        .map_err(|_| HostError::Status(Status::SerializationFailure))?;
    Ok(out)
}

/// Envoy's `Context::setEnvoyFilterState`: the object factory is the one named by
/// the path (`NotFound` if there is none), the object is mutable, and a stream
/// must be there to hold it. Strait's factories are `envoy.string` and
/// `envoy.hashable_string` (those of `envoy.filters.http.set_filter_state`).
fn set_envoy_filter_state(
    state: &mut HostState,
    args: &SetEnvoyFilterStateArguments,
) -> HostResult {
    let hashable = match args.path.as_str() {
        "envoy.string" => false,
        "envoy.hashable_string" => true,
        _ => return Err(Status::NotFound.into()),
    };
    let info = state.stream.info.as_ref().ok_or(Status::NotFound)?;
    let object = FilterStateObject {
        value: args.value.clone().into(),
        hashable,
        read_only: false,
    };
    info.borrow_mut()
        .filter_state
        .set(&args.path, object)
        .map_err(|_| Status::BadArgument.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compress_round_trips_and_reads_a_zlib_stream() {
        let text = b"hello hello hello hello".repeat(20);
        let packed = compress(&text).ok().expect("compress");
        assert!(packed.len() < text.len());
        assert_eq!(packed[0], 0x78, "a zlib header");
        assert_eq!(uncompress(&packed).ok(), Some(text.to_vec()));
        // zlib.compress(b"strait") from CPython's zlib (the C library Envoy links).
        let from_zlib = [
            0x78, 0x9c, 0x2b, 0x2e, 0x29, 0x4a, 0xcc, 0x2c, 0x01, 0x00, 0x09, 0x2d, 0x02, 0x98,
        ];
        assert_eq!(uncompress(&from_zlib).ok(), Some(b"strait".to_vec()));
        assert!(uncompress(b"not zlib").is_err());
        assert!(uncompress(&from_zlib[..8]).is_err(), "a cut stream");
        // zlib's uncompress() stops at the end of the stream and ignores the rest.
        let mut trailing = from_zlib.to_vec();
        trailing.push(0);
        assert_eq!(uncompress(&trailing).ok(), Some(b"strait".to_vec()));
    }
}
