//! `proxy_get_property`: the subset of Envoy's attributes this host provides.
//!
//! A path is its segments joined by NUL (`request\0path`). Strings come back as raw
//! bytes and integers as 8-byte little-endian, as Envoy returns them.
//!
//! | path | value |
//! |---|---|
//! | `plugin_name`, `plugin_root_id`, `plugin_vm_id` | from the plugin config |
//! | `request.path` | path and query |
//! | `request.url_path` | path without the query |
//! | `request.query` | query without `?` |
//! | `request.host` | `:authority` |
//! | `request.scheme`, `request.method` | |
//! | `request.protocol` | `HTTP/1.1`, `HTTP/2`, … |
//! | `request.id` | the `x-request-id` header |
//! | `request.useragent`, `request.referer` | those headers |
//! | `response.code` | status, integer |
//! | `source.address`, `destination.address` | `ip:port` of the client / the local end |
//! | `source.port`, `destination.port` | integer |
//! | `connection.id`, `connection_id` | the proxy's connection number, integer |
//! | `connection.mtls` | `false` (bool, one byte): no TLS yet |
//!
//! The `source.*`, `destination.*` and `connection.*` attributes are there for network
//! filters (`envoy.filters.network.wasm`).
//!
//! Anything else is `NotFound`, which SDKs report as "no value". So are `request.*`
//! once the request headers callback continued (Envoy drops its view of the request
//! headers then; after an upstream response `request.path` is `NotFound` there too),
//! except in `proxy_on_log`.
use super::headers;
use super::state::HostState;

pub(crate) fn get(state: &HostState, path: &[u8]) -> Option<Vec<u8>> {
    let segments: Vec<&[u8]> = path
        .split(|b| *b == 0)
        .filter(|segment| !segment.is_empty())
        .collect();
    let plugin = &state.plugin;
    let text = |s: &str| Some(s.as_bytes().to_vec());
    match segments.as_slice() {
        [b"plugin_name"] => text(&plugin.name),
        [b"plugin_root_id"] => text(&plugin.root_id),
        [b"plugin_vm_id"] => text(&plugin.vm_id),
        [b"request", field] => {
            let head = state.stream.request.as_ref()?;
            let header = |name: &str| head.headers.get(name).map(|v| v.as_bytes().to_vec());
            match *field {
                b"path" => text(headers::path(&head.uri)),
                b"url_path" => text(head.uri.path()),
                b"query" => text(head.uri.query().unwrap_or_default()),
                b"host" => Some(headers::authority(head).into_bytes()),
                b"scheme" => text(head.uri.scheme_str().unwrap_or("http")),
                b"method" => text(head.method.as_str()),
                b"protocol" => text(&format!("{:?}", head.version)),
                b"id" => header("x-request-id"),
                b"useragent" => header("user-agent"),
                b"referer" => header("referer"),
                _ => None,
            }
        }
        [b"source" | b"destination" | b"connection" | b"connection_id", ..] => {
            connection(state.stream.connection.as_deref()?, &segments)
        }
        [b"response", b"code"] => {
            let head = state.stream.response.as_ref()?;
            Some(i64::from(head.status.as_u16()).to_le_bytes().to_vec())
        }
        _ => None,
    }
}

fn connection(info: &super::network::ConnectionInfo, segments: &[&[u8]]) -> Option<Vec<u8>> {
    let integer = |n: i64| Some(n.to_le_bytes().to_vec());
    match segments {
        [b"source", b"address"] => Some(info.source.to_string().into_bytes()),
        [b"source", b"port"] => integer(i64::from(info.source.port())),
        [b"destination", b"address"] => Some(info.destination.to_string().into_bytes()),
        [b"destination", b"port"] => integer(i64::from(info.destination.port())),
        // Envoy returns the id as a uint64, which has the same bytes.
        [b"connection", b"id"] | [b"connection_id"] => Some(info.id.to_le_bytes().to_vec()),
        [b"connection", b"mtls"] => Some(vec![0]),
        _ => None,
    }
}
