//! `proxy_get_property`: Envoy 1.40's attributes, with its value encodings.
//!
//! A path is its segments joined by NUL (`request\0path`). Strings come back as raw
//! bytes, integers as 8-byte little-endian, times as Unix nanoseconds and durations as
//! nanoseconds (both 8-byte integers), booleans as one byte, maps (header maps, a
//! struct) in the pairs format, messages (`xds.node`) as protobuf bytes, as Envoy
//! serializes its CEL values for plugins.
//!
//! | path | value |
//! |---|---|
//! | `plugin_name`, `plugin_root_id`, `plugin_vm_id` | from the plugin config |
//! | `request.path`, `.url_path`, `.query`, `.host`, `.scheme`, `.method`, `.id`, `.useragent`, `.referer` | from the request head, while the plugin sees it |
//! | `request.headers` (`.headers.<name>`) | the request head's pairs (one value), empty once it is gone |
//! | `request.protocol` | `HTTP/1.1`, `HTTP/2`, … |
//! | `request.time` | when the stream started |
//! | `request.duration` | start to the request's last byte, once it arrived |
//! | `request.size`, `request.total_size` | body bytes received; plus the head's bytes while it is seen |
//! | `response.code`, `.code_details`, `.flags`, `.grpc_status` | once the response is decided |
//! | `response.headers`, `response.trailers` | as `request.headers` |
//! | `response.size`, `response.total_size` | as `request.size` |
//! | `source.*`, `destination.*` | `address` (`ip:port`), `port` of the client / the local end |
//! | `connection.id`, `connection_id` | the proxy's connection number |
//! | `connection.mtls` | `false`: no TLS yet |
//! | `upstream.address`, `.port`, `.local_address` | the upstream that answered |
//! | `upstream.request_attempt_count` | attempts so far |
//! | `xds.node` (`.id`, `.cluster`, `.metadata.<key>`) | the bootstrap `node` |
//! | `xds.route_name`, `.virtual_host_name`, `.cluster_name` | the route taken (or, before routing, that would be) |
//! | `xds.listener_direction`, `xds.filter_chain_name` | from the listener |
//! | `filter_state.<key>` | a filter-state object's value (`set_filter_state`, `set_property`) |
//! | `<name>` | a value the stream's plugins set with `proxy_set_property(<name>)` |
//!
//! | `xds.route_metadata`, `.virtual_host_metadata`, `.cluster_metadata`, `.listener_metadata`, `.upstream_host_metadata` (`.filter_metadata.<ns>.<key>`) | their `metadata` (protobuf whole) |
//!
//! Anything else is `NotFound`, which SDKs report as "no value"; so are the TLS
//! attributes (no TLS yet).
//! `request.*` head attributes are `NotFound` once the request headers callback
//! continued (Envoy drops its view of the head), except in `proxy_on_log`.

use super::abi::Status;
use super::headers::{self, serialize_pairs, HeaderView};
use super::state::{HostState, StreamData};
use crate::stream_info::StreamInfo;

/// The filter-state key prefix of values set with `proxy_set_property`.
pub(crate) const WASM_STATE_PREFIX: &str = "wasm.";

/// The bootstrap `node`, as plugins read it (`xds.node`). Built once per config,
/// with its protobuf encoding: reads of `xds.node` copy bytes, they do not encode.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeInfo {
    id: String,
    cluster: String,
    /// `metadata`, a `google.protobuf.Struct` (a `MetaValue::Struct`).
    metadata: MetaValue,
    encoded: Vec<u8>,
}

impl NodeInfo {
    pub fn new(id: String, cluster: String, metadata: Vec<(String, MetaValue)>) -> Self {
        let mut node = NodeInfo {
            id,
            cluster,
            metadata: MetaValue::Struct(metadata),
            encoded: Vec::new(),
        };
        node.encoded = encode_node(&node);
        node
    }
}

impl Default for NodeInfo {
    fn default() -> Self {
        NodeInfo::new(String::new(), String::new(), Vec::new())
    }
}

/// A `google.protobuf.Value`.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    Null,
    Number(f64),
    String(String),
    Bool(bool),
    Struct(Vec<(String, MetaValue)>),
    List(Vec<MetaValue>),
}

impl Default for MetaValue {
    /// An empty struct (metadata with no namespaces).
    fn default() -> Self {
        MetaValue::Struct(Vec::new())
    }
}

type Found = Result<Vec<u8>, Status>;

pub(crate) fn get(state: &mut HostState, path: &[u8]) -> Found {
    state.stream.unpack_sent();
    let segments: Vec<&[u8]> = path
        .split(|b| *b == 0)
        .filter(|segment| !segment.is_empty())
        .collect();
    let text = |s: &str| Ok(s.as_bytes().to_vec());
    let info = state.stream.info.clone();
    let info = info.as_ref().map(|info| info.borrow());
    let info = info.as_deref();
    match segments.as_slice() {
        [b"plugin_name"] => text(&state.plugin.name),
        [b"plugin_root_id"] => text(&state.plugin.root_id),
        [b"plugin_vm_id"] => text(&state.plugin.vm_id),
        [b"request", rest @ ..] => request(&mut state.stream, info, rest),
        [b"response", rest @ ..] => response(&mut state.stream, info, rest),
        [b"source" | b"destination" | b"connection" | b"connection_id", ..] => {
            let connection = match (&state.stream.connection, info) {
                (Some(connection), _) => connection.as_ref(),
                (None, Some(info)) => info.connection.as_ref().ok_or(Status::NotFound)?,
                (None, None) => return Err(Status::NotFound),
            };
            connection_attribute(connection, &segments)
        }
        [b"upstream", rest @ ..] => upstream(info.ok_or(Status::NotFound)?, rest),
        [b"xds", rest @ ..] => xds(&state.stream, info, &state.plugin.node, rest),
        [b"filter_state"] => Err(Status::SerializationFailure),
        [b"filter_state", key] => {
            let key = std::str::from_utf8(key).map_err(|_| Status::NotFound)?;
            let object = info.and_then(|info| info.filter_state.get(key));
            Ok(object.ok_or(Status::NotFound)?.value.to_vec())
        }
        // Envoy's last resort: a value the stream's plugins set (filter state
        // `wasm.<name>`).
        [name] => {
            let key = format!("{WASM_STATE_PREFIX}{}", String::from_utf8_lossy(name));
            let object = info.and_then(|info| info.filter_state.get(&key));
            Ok(object.ok_or(Status::NotFound)?.value.to_vec())
        }
        _ => Err(Status::NotFound),
    }
}

fn integer(n: i64) -> Found {
    Ok(n.to_le_bytes().to_vec())
}

fn request(stream: &mut StreamData, info: Option<&StreamInfo>, field: &[&[u8]]) -> Found {
    // Attributes of the stream, there in every phase.
    match (field, info) {
        ([b"time"], Some(info)) => {
            let since = info.start_time.duration_since(std::time::UNIX_EPOCH);
            return integer(since.map_or(0, |d| d.as_nanos() as i64));
        }
        ([b"duration"], Some(info)) => {
            let duration = info.request_duration.ok_or(Status::NotFound)?;
            return integer(duration.as_nanos() as i64);
        }
        ([b"size"], Some(info)) => return integer(info.request_body_bytes as i64),
        ([b"total_size"], Some(info)) => {
            let head = stream
                .request
                .as_deref_mut()
                .map_or(0, |head| HeaderView::Request(head).byte_size());
            return integer((head + info.request_body_bytes) as i64);
        }
        ([b"protocol"], Some(info)) => {
            return Ok(protocol(info.version.ok_or(Status::NotFound)?).into())
        }
        ([b"headers", rest @ ..], _) => {
            return header_map(stream.request.as_deref_mut().map(HeaderView::Request), rest)
        }
        _ => {}
    }
    let head = stream.request.as_ref().ok_or(Status::NotFound)?;
    let header = |name: &str| {
        head.headers
            .get(name)
            .map(|v| v.as_bytes().to_vec())
            .ok_or(Status::NotFound)
    };
    match field {
        [b"path"] => Ok(headers::path(&head.uri).into()),
        [b"url_path"] => Ok(head.uri.path().into()),
        [b"query"] => Ok(head.uri.query().unwrap_or_default().into()),
        [b"host"] => Ok(headers::authority(head).into_bytes()),
        [b"scheme"] => Ok(head.uri.scheme_str().unwrap_or("http").into()),
        [b"method"] => Ok(head.method.as_str().into()),
        [b"protocol"] => Ok(protocol(head.version).into()),
        [b"id"] => header("x-request-id"),
        [b"useragent"] => header("user-agent"),
        [b"referer"] => header("referer"),
        _ => Err(Status::NotFound),
    }
}

fn protocol(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// A header map attribute: the pairs (none when the map is out of sight, as Envoy's
/// empty map), or with one more segment that header's value.
fn header_map(view: Option<HeaderView<'_>>, rest: &[&[u8]]) -> Found {
    match (view, rest) {
        (Some(view), []) => Ok(view.serialize()),
        (None, []) => Ok(serialize_pairs(&[])),
        (Some(view), [name]) => {
            let name = std::str::from_utf8(name).map_err(|_| Status::NotFound)?;
            view.get(name)
                .map(|v| v.as_ref().to_vec())
                .ok_or(Status::NotFound)
        }
        _ => Err(Status::NotFound),
    }
}

fn response(stream: &mut StreamData, info: Option<&StreamInfo>, field: &[&[u8]]) -> Found {
    let code = match &stream.response {
        Some(head) => Some(head.status.as_u16()),
        None => info.and_then(|info| info.response_code),
    };
    match field {
        [b"code"] => integer(i64::from(code.ok_or(Status::NotFound)?)),
        [b"headers", rest @ ..] => header_map(
            stream.response.as_deref_mut().map(HeaderView::Response),
            rest,
        ),
        [b"trailers", rest @ ..] => header_map(
            stream.response_trailers.as_mut().map(HeaderView::Trailers),
            rest,
        ),
        [b"grpc_status"] => {
            let code = code.ok_or(Status::NotFound)?;
            let header = |map: Option<&http::HeaderMap>| {
                let value = map?.get("grpc-status")?.to_str().ok()?;
                value.parse::<i64>().ok()
            };
            let status = header(stream.response.as_ref().map(|head| &head.headers))
                .or_else(|| header(stream.response_trailers.as_ref()))
                .unwrap_or_else(|| grpc_status_of_http(code));
            integer(status)
        }
        _ => {
            let info = info.ok_or(Status::NotFound)?;
            match field {
                [b"code_details"] => {
                    let details = info.response_details.as_deref().ok_or(Status::NotFound)?;
                    Ok(details.into())
                }
                [b"flags"] => integer(info.response_flags as i64),
                [b"size"] => integer(info.response_body_bytes as i64),
                [b"total_size"] => {
                    let head = stream
                        .response
                        .as_deref_mut()
                        .map_or(0, |head| HeaderView::Response(head).byte_size());
                    integer((head + info.response_body_bytes) as i64)
                }
                _ => Err(Status::NotFound),
            }
        }
    }
}

/// Envoy's `Grpc::Utility::httpToGrpcStatus`.
fn grpc_status_of_http(status: u16) -> i64 {
    match status {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502..=504 => 14,
        _ => 2,
    }
}

fn connection_attribute(info: &super::network::ConnectionInfo, segments: &[&[u8]]) -> Found {
    match segments {
        [b"source", b"address"] => Ok(info.source.to_string().into_bytes()),
        [b"source", b"port"] => integer(i64::from(info.source.port())),
        [b"destination", b"address"] => Ok(info.destination.to_string().into_bytes()),
        [b"destination", b"port"] => integer(i64::from(info.destination.port())),
        // Envoy returns the id as a uint64, which has the same bytes.
        [b"connection", b"id"] | [b"connection_id"] => Ok(info.id.to_le_bytes().to_vec()),
        [b"connection", b"mtls"] => Ok(vec![0]),
        _ => Err(Status::NotFound),
    }
}

fn upstream(info: &StreamInfo, field: &[&[u8]]) -> Found {
    if let [b"request_attempt_count"] = field {
        return integer(i64::from(info.attempts));
    }
    let upstream = info.upstream.as_ref().ok_or(Status::NotFound)?;
    match field {
        [b"address"] => Ok(upstream.address.to_string().into_bytes()),
        [b"port"] => integer(i64::from(upstream.address.port())),
        [b"local_address"] => {
            let local = upstream.local_address.ok_or(Status::NotFound)?;
            Ok(local.to_string().into_bytes())
        }
        _ => Err(Status::NotFound),
    }
}

fn xds(stream: &StreamData, info: Option<&StreamInfo>, node: &NodeInfo, field: &[&[u8]]) -> Found {
    match field {
        [b"node", rest @ ..] => node_attribute(node, rest),
        [which @ (b"route_metadata" | b"virtual_host_metadata" | b"cluster_metadata"), rest @ ..] =>
        {
            let names = info
                .ok_or(Status::NotFound)?
                .route_names(stream.request.as_deref())
                .ok_or(Status::NotFound)?;
            let metadata = match *which {
                b"route_metadata" => &names.route_metadata,
                b"virtual_host_metadata" => &names.virtual_host_metadata,
                _ => &names.cluster_metadata,
            };
            metadata_attribute(metadata, rest)
        }
        [b"listener_metadata", rest @ ..] => {
            let listener = info.and_then(|info| info.listener.as_ref());
            metadata_attribute(&listener.ok_or(Status::NotFound)?.metadata, rest)
        }
        [b"route_name" | b"virtual_host_name" | b"cluster_name"] => {
            let names = info
                .ok_or(Status::NotFound)?
                .route_names(stream.request.as_deref())
                .ok_or(Status::NotFound)?;
            let name = match field[0] {
                b"route_name" => names.route,
                b"virtual_host_name" => names.virtual_host,
                _ => names.cluster,
            };
            // An empty string reaches the plugin as no value.
            match name.is_empty() {
                true => Err(Status::NotFound),
                false => Ok(name.into_bytes()),
            }
        }
        [b"listener_direction"] => {
            let listener = info.and_then(|info| info.listener.as_ref());
            integer(listener.map_or(0, |l| l.direction))
        }
        [b"filter_chain_name"] => {
            let listener = info.and_then(|info| info.listener.as_ref());
            match listener.map(|l| l.filter_chain_name.as_str()) {
                Some(name) if !name.is_empty() => Ok(name.into()),
                _ => Err(Status::NotFound),
            }
        }
        [b"upstream_host_metadata", rest @ ..] => {
            let upstream = info.and_then(|i| i.upstream.as_ref());
            match (upstream.map(|u| &u.metadata), rest) {
                (Some(Some(metadata)), rest) => metadata_attribute(metadata, rest),
                // Envoy fails to serialize a host's absent metadata.
                (Some(None), []) => Err(Status::SerializationFailure),
                _ => Err(Status::NotFound),
            }
        }
        _ => Err(Status::NotFound),
    }
}

/// A `config.core.v3.Metadata` (its `filter_metadata`, a struct of namespaces):
/// protobuf whole, or walked by `filter_metadata.<namespace>.<key>…`. No metadata
/// reaches the plugin as no value, as Envoy's empty message does.
fn metadata_attribute(metadata: &MetaValue, field: &[&[u8]]) -> Found {
    let MetaValue::Struct(namespaces) = metadata else {
        return Err(Status::NotFound);
    };
    match field {
        [] if namespaces.is_empty() => Err(Status::NotFound),
        [] => {
            let mut out = Vec::new();
            for (namespace, value) in namespaces {
                let MetaValue::Struct(fields) = value else {
                    continue;
                };
                let mut entry = Vec::new();
                put_bytes(&mut entry, 1, namespace.as_bytes());
                put_bytes(&mut entry, 2, &encode_struct(fields));
                put_bytes(&mut out, 1, &entry);
            }
            Ok(out)
        }
        [b"filter_metadata", path @ ..] => walk(metadata, path),
        // Typed metadata is accepted in configs but not kept: an empty map, as
        // Envoy returns for metadata without any.
        [b"typed_filter_metadata"] => Ok(serialize_pairs(&[])),
        _ => Err(Status::NotFound),
    }
}

/// The value at `path` in a struct, serialized as Envoy's CEL values are.
fn walk(mut value: &MetaValue, path: &[&[u8]]) -> Found {
    for segment in path {
        value = match value {
            MetaValue::Struct(fields) => {
                let found = fields.iter().find(|(k, _)| k.as_bytes() == *segment);
                &found.ok_or(Status::NotFound)?.1
            }
            MetaValue::List(items) => {
                let index: usize = std::str::from_utf8(segment)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or(Status::NotFound)?;
                items.get(index).ok_or(Status::NotFound)?
            }
            _ => return Err(Status::NotFound),
        };
    }
    meta_value(value)
}

fn node_attribute(node: &NodeInfo, field: &[&[u8]]) -> Found {
    match field {
        [] => Ok(node.encoded.clone()),
        [b"id"] => Ok(node.id.as_bytes().to_vec()),
        [b"cluster"] => Ok(node.cluster.as_bytes().to_vec()),
        [b"metadata", rest @ ..] => walk(&node.metadata, rest),
        _ => Err(Status::NotFound),
    }
}

/// A struct value as Envoy's CEL serializes it: strings raw, numbers as doubles,
/// structs as pairs, lists as pairs of (item, "").
fn meta_value(value: &MetaValue) -> Found {
    match value {
        MetaValue::Null => Err(Status::SerializationFailure),
        MetaValue::Number(n) => Ok(n.to_le_bytes().to_vec()),
        MetaValue::String(s) => Ok(s.as_bytes().to_vec()),
        MetaValue::Bool(b) => Ok(vec![u8::from(*b)]),
        MetaValue::Struct(fields) => {
            let values = fields
                .iter()
                .map(|(_, v)| meta_value(v))
                .collect::<Result<Vec<_>, _>>()?;
            let pairs: Vec<(&[u8], &[u8])> = fields
                .iter()
                .zip(&values)
                .map(|((k, _), v)| (k.as_bytes(), v.as_slice()))
                .collect();
            Ok(serialize_pairs(&pairs))
        }
        MetaValue::List(items) => {
            let values = items
                .iter()
                .map(meta_value)
                .collect::<Result<Vec<_>, _>>()?;
            let pairs: Vec<(&[u8], &[u8])> =
                values.iter().map(|v| (v.as_slice(), &[][..])).collect();
            Ok(serialize_pairs(&pairs))
        }
    }
}

// ------------------------------------------------------------------ protobuf of the node

/// `config.core.v3.Node` with `id` (1), `cluster` (2) and `metadata` (3), and
/// `user_agent_name` (6) `strait`.
fn encode_node(node: &NodeInfo) -> Vec<u8> {
    let mut out = Vec::new();
    // proto3 leaves empty strings and messages out.
    if !node.id.is_empty() {
        put_bytes(&mut out, 1, node.id.as_bytes());
    }
    if !node.cluster.is_empty() {
        put_bytes(&mut out, 2, node.cluster.as_bytes());
    }
    if let MetaValue::Struct(fields) = &node.metadata {
        if !fields.is_empty() {
            put_bytes(&mut out, 3, &encode_struct(fields));
        }
    }
    put_bytes(&mut out, 6, b"strait");
    out
}

/// `google.protobuf.Struct`: `fields` (1) as map entries of key (1) and value (2).
fn encode_struct(fields: &[(String, MetaValue)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in fields {
        let mut entry = Vec::new();
        put_bytes(&mut entry, 1, key.as_bytes());
        put_bytes(&mut entry, 2, &encode_value(value));
        put_bytes(&mut out, 1, &entry);
    }
    out
}

/// `google.protobuf.Value`: null (1), number (2), string (3), bool (4), struct (5),
/// list (6, a `ListValue` of `values` (1)).
fn encode_value(value: &MetaValue) -> Vec<u8> {
    let mut out = Vec::new();
    match value {
        MetaValue::Null => {
            put_varint(&mut out, 1 << 3);
            put_varint(&mut out, 0);
        }
        MetaValue::Number(n) => {
            put_varint(&mut out, (2 << 3) | 1);
            out.extend_from_slice(&n.to_le_bytes());
        }
        MetaValue::String(s) => put_bytes(&mut out, 3, s.as_bytes()),
        MetaValue::Bool(b) => {
            put_varint(&mut out, 4 << 3);
            put_varint(&mut out, u64::from(*b));
        }
        MetaValue::Struct(fields) => put_bytes(&mut out, 5, &encode_struct(fields)),
        MetaValue::List(items) => {
            let mut list = Vec::new();
            for item in items {
                put_bytes(&mut list, 1, &encode_value(item));
            }
            put_bytes(&mut out, 6, &list);
        }
    }
    out
}

/// A length-delimited field.
fn put_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_varint(out, (field << 3) | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_encodes_as_protobuf() {
        let node = NodeInfo::new(
            "n1".into(),
            "c1".into(),
            vec![("k".into(), MetaValue::String("v".into()))],
        );
        let bytes = node_attribute(&node, &[]).ok().unwrap();
        // id, cluster, metadata {fields {key "k" value {string_value "v"}}}, agent.
        let expected: &[u8] = &[
            0x0a, 2, b'n', b'1', 0x12, 2, b'c', b'1', 0x1a, 10, 0x0a, 8, 0x0a, 1, b'k', 0x12, 3,
            0x1a, 1, b'v', 0x32, 6, b's', b't', b'r', b'a', b'i', b't',
        ];
        assert_eq!(bytes, expected);
    }

    #[test]
    fn metadata_values_serialize_as_envoy_does() {
        let node = NodeInfo::new(
            String::new(),
            String::new(),
            vec![("k".into(), MetaValue::String("v".into()))],
        );
        // One pair: sizes 1 and 1, then "k\0v\0" (what Envoy 1.40 returns).
        assert_eq!(
            node_attribute(&node, &[b"metadata"]).ok().unwrap(),
            [1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, b'k', 0, b'v', 0]
        );
        assert_eq!(
            node_attribute(&node, &[b"metadata", b"k"]).ok().unwrap(),
            b"v"
        );
        assert!(node_attribute(&node, &[b"metadata", b"x"]).is_err());
        assert_eq!(grpc_status_of_http(200), 2);
        assert_eq!(grpc_status_of_http(503), 14);
    }
}
