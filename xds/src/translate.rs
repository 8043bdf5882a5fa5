//! The one translator from Envoy's bootstrap into Strait's model.
//!
//! YAML is parsed into a `serde_json::Value` (kept as `Snapshot::source`), decoded into
//! the [`crate::bootstrap`] types with `serde_path_to_error`, then validated and converted
//! resource by resource. Every error names the field path, e.g.
//! `static_resources.clusters[2].lb_policy: MAGLEV is not supported yet`.

mod cluster;
mod fault;
mod headers;
mod health_check;
mod listener;
mod local_ratelimit;
mod route;
#[cfg(test)]
mod tests;
mod wasm;
mod wasm_service;

use std::fmt::{Display, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use serde_path_to_error::Segment;

use crate::bootstrap::{self, Bootstrap, DataSource, SocketAddress, TypedStruct, NOT_SUPPORTED};
use crate::model::{Admin, Node, Snapshot};

/// A config that Strait refuses, with the path of the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Display) -> Self {
        Self {
            path: path.into(),
            message: message.to_string(),
        }
    }
}

type Result<T, E = ConfigError> = std::result::Result<T, E>;

/// Clusters by name.
type Clusters = std::collections::HashMap<String, std::sync::Arc<crate::model::Cluster>>;

pub fn snapshot_from_yaml(text: &str) -> Result<Snapshot> {
    let source: Value = serde_yaml::from_str(text).map_err(|e| ConfigError::new(".", e))?;
    snapshot_from_value(source)
}

/// Reads and translates a YAML bootstrap file; an IO error names the file.
pub fn snapshot_from_path(path: &Path) -> Result<Snapshot> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(path.display().to_string(), e))?;
    snapshot_from_yaml(&text)
}

/// The config of `strait --listen A --upstream host:port`: every request to A is proxied
/// to the upstream (STATIC if `host` is an IP, else STRICT_DNS). No admin listener.
pub fn quick_snapshot(listen: SocketAddr, upstream: &str) -> Result<Snapshot> {
    let invalid = |why: &str| {
        ConfigError::new(
            "--upstream",
            format!("{why}: expected host:port, got '{upstream}'"),
        )
    };
    let (host, port) = upstream
        .rsplit_once(':')
        .ok_or_else(|| invalid("missing port"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| invalid("bad port"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err(invalid("missing host"));
    }
    let discovery = if host.parse::<IpAddr>().is_ok() {
        "STATIC"
    } else {
        "STRICT_DNS"
    };
    let address =
        |host: String, port: u16| json!({"socket_address": {"address": host, "port_value": port}});
    snapshot_from_value(json!({"static_resources": {
        "listeners": [{
            "name": "quick",
            "address": address(listen.ip().to_string(), listen.port()),
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": format!("type.googleapis.com/{}", listener::HCM_TYPE),
                    "stat_prefix": "quick",
                    "route_config": {"name": "quick", "virtual_hosts": [{
                        "name": "quick",
                        "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}],
                    }]},
                    "http_filters": [{"name": listener::ROUTER_NAME}],
                },
            }]}],
        }],
        "clusters": [{
            "name": "upstream",
            "type": discovery,
            "load_assignment": {"cluster_name": "upstream", "endpoints": [{
                "lb_endpoints": [{"endpoint": {"address": address(host.to_owned(), port)}}],
            }]},
        }],
    }}))
}

fn snapshot_from_value(source: Value) -> Result<Snapshot> {
    let bootstrap: Bootstrap = match source {
        Value::Null => Bootstrap::default(),
        ref source => decode("", source)?,
    };
    let (clusters, cluster_order) = cluster::clusters(&bootstrap.static_resources.clusters)?;
    let listeners = listener::listeners(&bootstrap.static_resources.listeners, &clusters)?;
    let admin = match &bootstrap.admin {
        Some(admin) => Some(Admin {
            address: ip_address("admin.address", &admin.address)?,
        }),
        None => None,
    };
    let node = bootstrap
        .node
        .map(|node| Node {
            id: node.id,
            cluster: node.cluster,
            metadata: node.metadata,
        })
        .unwrap_or_default();
    let wasm_services = wasm_service::services(&bootstrap.bootstrap_extensions)?;
    Ok(Snapshot {
        listeners,
        clusters,
        cluster_order,
        admin,
        node,
        source,
        wasm_services,
    })
}

/// Deserializes `value`, naming the failing field by its path below `prefix`.
fn decode<T: DeserializeOwned>(prefix: &str, value: &Value) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let mut path = prefix.to_owned();
        let mut field = "";
        for segment in error.path() {
            let name = match segment {
                Segment::Seq { index } => {
                    let _ = write!(path, "[{index}]");
                    continue;
                }
                Segment::Map { key } => key.as_str(),
                Segment::Enum { variant } => variant.as_str(),
                Segment::Unknown => "?",
            };
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(name);
            field = name;
        }
        let message = error.inner().to_string();
        let message = match message == NOT_SUPPORTED {
            true => format!("{field} {NOT_SUPPORTED}"),
            false => message,
        };
        ConfigError::new(
            if path.is_empty() {
                ".".to_owned()
            } else {
                path
            },
            message,
        )
    })
}

/// An extension's `typed_config` (a protobuf `Any`) with its `@type` read, unwrapping a
/// `TypedStruct`.
struct TypedConfig {
    /// Path of the `typed_config` field itself.
    path: String,
    /// The message's full name, e.g. `envoy.extensions.filters.http.router.v3.Router`.
    type_name: String,
    /// Path of the message's fields (`….value` inside a `TypedStruct`).
    fields_path: String,
    fields: Value,
}

impl TypedConfig {
    fn parse(path: String, value: &Value) -> Result<Self> {
        let Value::Object(fields) = value else {
            return Err(ConfigError::new(path, "expected an object with an @type"));
        };
        let mut fields = fields.clone();
        let Some(Value::String(type_url)) = fields.remove("@type") else {
            return Err(ConfigError::new(path, "@type is required"));
        };
        let type_name = type_name_of(&type_url);
        if type_name == "udpa.type.v1.TypedStruct" || type_name == "xds.type.v3.TypedStruct" {
            let wrapper: TypedStruct = decode(&path, &Value::Object(fields))?;
            return Ok(Self {
                type_name: type_name_of(&wrapper.type_url),
                fields_path: format!("{path}.value"),
                fields: Value::Object(wrapper.value),
                path,
            });
        }
        Ok(Self {
            type_name,
            fields_path: path.clone(),
            fields: Value::Object(fields),
            path,
        })
    }

    fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        decode(&self.fields_path, &self.fields)
    }

    fn unsupported(&self) -> ConfigError {
        ConfigError::new(&self.path, format!("{} {NOT_SUPPORTED}", self.type_name))
    }
}

fn type_name_of(type_url: &str) -> String {
    type_url.rsplit('/').next().unwrap_or(type_url).to_owned()
}

fn socket_address<'a>(path: &str, address: &'a bootstrap::Address) -> Result<&'a SocketAddress> {
    address.socket_address.as_ref().ok_or_else(|| {
        ConfigError::new(
            format!("{path}.socket_address"),
            "socket_address is required",
        )
    })
}

/// A listening address: Envoy requires an IP literal.
fn ip_address(path: &str, address: &bootstrap::Address) -> Result<SocketAddr> {
    let socket = socket_address(path, address)?;
    let ip: IpAddr = socket.address.parse().map_err(|_| {
        ConfigError::new(
            format!("{path}.socket_address.address"),
            format!("'{}' is not an IP address", socket.address),
        )
    })?;
    Ok(SocketAddr::new(ip, socket.port_value))
}

/// `Some(default)` when unset, `None` (disabled) when set to zero.
fn timeout_or(value: Option<Duration>, default: Duration) -> Option<Duration> {
    Some(value.unwrap_or(default)).filter(|timeout| !timeout.is_zero())
}

/// The bytes of a `DataSource`; files are read now, at translation.
fn data_source(path: &str, source: &DataSource) -> Result<Vec<u8>> {
    match (
        &source.filename,
        &source.inline_bytes,
        &source.inline_string,
    ) {
        (Some(file), None, None) => std::fs::read(file)
            .map_err(|e| ConfigError::new(format!("{path}.filename"), format!("{file}: {e}"))),
        (None, Some(base64), None) => decode_base64(base64)
            .ok_or_else(|| ConfigError::new(format!("{path}.inline_bytes"), "invalid base64")),
        (None, None, Some(text)) => Ok(text.clone().into_bytes()),
        _ => Err(ConfigError::new(
            path,
            "exactly one of filename, inline_bytes, inline_string is required",
        )),
    }
}

/// Standard or URL-safe base64, padding optional (protobuf JSON accepts both alphabets).
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let mut bytes = Vec::with_capacity(text.len() * 3 / 4);
    let (mut buffer, mut bits) = (0u32, 0);
    for c in text.trim_end_matches('=').bytes() {
        let sextet = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        buffer = (buffer << 6 | u32::from(sextet)) & 0xffff;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            bytes.push((buffer >> bits) as u8);
        }
    }
    Some(bytes)
}

/// Bootstrap YAML for translator tests of HTTP filters.
#[cfg(test)]
pub(crate) mod test_yaml {
    /// One cluster `a` (127.0.0.1:1) and one listener `main` whose connection manager
    /// has `routes` (route items, indented for `routes:`) and, before the router,
    /// `filters` (`http_filters` items, indented for `http_filters:`).
    pub fn with_http_filters(routes: &str, filters: &str) -> String {
        format!(
            r#"
static_resources:
  clusters:
  - name: a
    load_assignment:
      cluster_name: a
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 1}}}}}}}}]}}]
  listeners:
  - name: main
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
{routes}
          http_filters:
{filters}
          - name: envoy.filters.http.router
"#
        )
    }

    /// One `http_filters` item: filter `name` with a typed config of `type_name`
    /// (after `type.googleapis.com/`) whose `fields` are YAML at its fields'
    /// indentation.
    pub fn http_filter(name: &str, type_name: &str, fields: &str) -> String {
        format!(
            r#"          - name: {name}
            typed_config:
              "@type": type.googleapis.com/{type_name}
{fields}"#
        )
    }
}
