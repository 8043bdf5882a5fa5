//! Serde types for the subset of Envoy's v3 bootstrap that Strait accepts.
//!
//! Every struct denies unknown fields. Envoy fields we know but do not implement yet are
//! declared as `Option<Unsupported>`, so using one fails with "<field> is not supported
//! yet" at its path rather than a generic "unknown field"; fields we accept and ignore are
//! `Option<IgnoredAny>`. Extension configs (`typed_config`) stay `serde_json::Value` here;
//! the translator decodes them once it has read their `@type`.

mod cluster;
mod listener;
mod route;

pub use cluster::*;
pub use listener::*;
pub use route::*;

use std::time::Duration;

use serde::de::{Deserializer, Error as _, IgnoredAny};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::model::{
    AppendAction, CodecType, Discovery, DnsLookupFamily, LbPolicy, ServerHeaderTransformation,
};

/// The error message of an [`Unsupported`] field; the translator prefixes the field name.
pub(crate) const NOT_SUPPORTED: &str = "is not supported yet";

/// A field Envoy has and Strait does not implement yet: present means error.
#[derive(Debug)]
pub enum Unsupported {}

impl<'de> Deserialize<'de> for Unsupported {
    fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(D::Error::custom(NOT_SUPPORTED))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Bootstrap {
    pub node: Option<Node>,
    pub static_resources: StaticResources,
    pub admin: Option<Admin>,
    pub dynamic_resources: Option<Unsupported>,
    pub cluster_manager: Option<Unsupported>,
    pub hds_config: Option<Unsupported>,
    pub flags_path: Option<Unsupported>,
    pub stats_sinks: Option<Unsupported>,
    pub stats_config: Option<Unsupported>,
    pub stats_flush_interval: Option<Unsupported>,
    pub watchdog: Option<Unsupported>,
    pub watchdogs: Option<Unsupported>,
    pub tracing: Option<Unsupported>,
    pub layered_runtime: Option<Unsupported>,
    pub overload_manager: Option<Unsupported>,
    pub enable_dispatcher_stats: Option<Unsupported>,
    pub header_prefix: Option<Unsupported>,
    pub use_tcp_for_dns_lookups: Option<Unsupported>,
    pub typed_dns_resolver_config: Option<Unsupported>,
    /// Only `envoy.bootstrap.wasm` (`extensions.wasm.v3.WasmService`); the translator
    /// refuses any other extension with its path.
    pub bootstrap_extensions: Vec<TypedExtensionConfig>,
    pub fatal_actions: Option<Unsupported>,
    pub default_regex_engine: Option<Unsupported>,
    pub default_socket_interface: Option<Unsupported>,
    pub inline_headers: Option<Unsupported>,
    pub application_log_config: Option<Unsupported>,
}

/// `config.core.v3.TypedExtensionConfig`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypedExtensionConfig {
    #[serde(default)]
    pub name: String,
    pub typed_config: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StaticResources {
    pub listeners: Vec<Listener>,
    pub clusters: Vec<Cluster>,
    pub secrets: Option<Unsupported>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub cluster: String,
    /// Read by plugins (`xds.node.metadata`).
    #[serde(default)]
    pub metadata: serde_json::Map<String, Value>,
    /// Informational only.
    pub locality: Option<IgnoredAny>,
    pub user_agent_name: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    pub address: Address,
    /// Accepted and ignored: Strait does not write an admin access log.
    pub access_log_path: Option<IgnoredAny>,
    /// Accepted and ignored, like `access_log_path`.
    pub access_log: Option<IgnoredAny>,
    pub profile_path: Option<IgnoredAny>,
    pub socket_options: Option<Unsupported>,
    pub ignore_global_conn_limit: Option<Unsupported>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Address {
    pub socket_address: Option<SocketAddress>,
    pub pipe: Option<Unsupported>,
    pub envoy_internal_address: Option<Unsupported>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SocketAddress {
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub port_value: u16,
    #[serde(default, deserialize_with = "proto_enum")]
    pub protocol: Option<SocketProtocol>,
    pub ipv4_compat: Option<IgnoredAny>,
    pub named_port: Option<Unsupported>,
    pub resolver_name: Option<Unsupported>,
}

#[derive(Debug, Clone, Copy)]
pub enum SocketProtocol {
    Tcp,
}

/// `config.core.v3.DataSource`: exactly one of the three.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSource {
    pub filename: Option<String>,
    /// Base64, as protobuf JSON writes bytes.
    pub inline_bytes: Option<String>,
    pub inline_string: Option<String>,
    pub environment_variable: Option<Unsupported>,
    pub watched_directory: Option<Unsupported>,
}

/// `udpa.type.v1.TypedStruct` / `xds.type.v3.TypedStruct`: an extension config given as
/// its type URL and its fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypedStruct {
    pub type_url: String,
    #[serde(default)]
    pub value: Map<String, Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CommonHttpProtocolOptions {
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Option<Duration>,
    pub max_connection_duration: Option<Unsupported>,
    pub max_headers_count: Option<Unsupported>,
    pub max_response_headers_kb: Option<Unsupported>,
    pub max_stream_duration: Option<Unsupported>,
    pub headers_with_underscores_action: Option<Unsupported>,
    pub max_requests_per_connection: Option<Unsupported>,
}

/// `Http1ProtocolOptions`. `accept_http_10` and `default_host_for_http_10` are the
/// connection manager's (Strait serves HTTP/1.0 either way); on a cluster, where
/// they mean nothing, Envoy ignores them and so does Strait. The rest is not
/// supported.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http1ProtocolOptions {
    pub allow_absolute_url: Option<Unsupported>,
    pub accept_http_10: Option<bool>,
    pub default_host_for_http_10: Option<String>,
    pub header_key_format: Option<Unsupported>,
    pub enable_trailers: Option<Unsupported>,
    pub allow_chunked_length: Option<Unsupported>,
    pub override_stream_error_on_invalid_http_message: Option<Unsupported>,
}

/// `Http2ProtocolOptions`. On the connection manager (Strait's HTTP/2 server) the
/// window sizes and the stream limit are applied; on a cluster (hyper's client) the
/// windows are accepted and ignored and the stream limit is refused by the translator.
/// The HPACK table size is accepted and ignored on both; the rest is not supported.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http2ProtocolOptions {
    pub hpack_table_size: Option<IgnoredAny>,
    pub initial_stream_window_size: Option<u32>,
    pub initial_connection_window_size: Option<u32>,
    pub max_concurrent_streams: Option<u32>,
    pub allow_connect: Option<Unsupported>,
    pub allow_metadata: Option<Unsupported>,
    pub max_outbound_frames: Option<Unsupported>,
    pub max_outbound_control_frames: Option<Unsupported>,
    pub stream_error_on_invalid_http_messaging: Option<Unsupported>,
    pub override_stream_error_on_invalid_http_message: Option<Unsupported>,
    pub connection_keepalive: Option<Unsupported>,
    pub custom_settings_parameters: Option<Unsupported>,
}

// ---------------------------------------------------------------- scalar helpers

/// A protobuf enum, written by name or by number. Values mapped to `None` are Envoy's but
/// not supported yet.
pub(crate) trait ProtoEnum: Copy + 'static {
    const VALUES: &'static [(&'static str, i64, Option<Self>)];
}

pub(crate) fn proto_enum<'de, D: Deserializer<'de>, T: ProtoEnum>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    enum_value(deserializer, T::VALUES)
}

fn enum_value<'de, D: Deserializer<'de>, T: Copy>(
    deserializer: D,
    values: &[(&str, i64, Option<T>)],
) -> Result<Option<T>, D::Error> {
    let value = Value::deserialize(deserializer)?;
    let found = match &value {
        Value::Null => return Ok(None),
        Value::String(text) => values.iter().find(|(name, _, _)| name == text),
        Value::Number(number) => values.iter().find(|(_, n, _)| Some(*n) == number.as_i64()),
        _ => None,
    };
    match found {
        Some((_, _, Some(supported))) => Ok(Some(*supported)),
        Some((name, _, None)) => Err(D::Error::custom(format!("{name} {NOT_SUPPORTED}"))),
        None => {
            let names: Vec<&str> = values.iter().map(|(name, _, _)| *name).collect();
            Err(D::Error::custom(format!(
                "unknown value {value}, expected one of {}",
                names.join(", ")
            )))
        }
    }
}

/// `RedirectResponseCode`, as the status code it stands for.
pub(crate) fn redirect_code<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    let codes = [
        ("MOVED_PERMANENTLY", 0, Some(301)),
        ("FOUND", 1, Some(302)),
        ("SEE_OTHER", 2, Some(303)),
        ("TEMPORARY_REDIRECT", 3, Some(307)),
        ("PERMANENT_REDIRECT", 4, Some(308)),
    ];
    enum_value(d, &codes)
}

impl ProtoEnum for SocketProtocol {
    const VALUES: &'static [(&'static str, i64, Option<Self>)] =
        &[("TCP", 0, Some(Self::Tcp)), ("UDP", 1, None)];
}

impl ProtoEnum for CodecType {
    const VALUES: &'static [(&'static str, i64, Option<Self>)] = &[
        ("AUTO", 0, Some(Self::Auto)),
        ("HTTP1", 1, Some(Self::Http1)),
        ("HTTP2", 2, Some(Self::Http2)),
        ("HTTP3", 3, None),
    ];
}

impl ProtoEnum for ServerHeaderTransformation {
    const VALUES: &'static [(&'static str, i64, Option<Self>)] = &[
        ("OVERWRITE", 0, Some(Self::Overwrite)),
        ("APPEND_IF_ABSENT", 1, Some(Self::AppendIfAbsent)),
        ("PASS_THROUGH", 2, Some(Self::PassThrough)),
    ];
}

impl ProtoEnum for Discovery {
    const VALUES: &'static [(&'static str, i64, Option<Self>)] = &[
        ("STATIC", 0, Some(Self::Static)),
        ("STRICT_DNS", 1, Some(Self::StrictDns)),
        ("LOGICAL_DNS", 2, Some(Self::LogicalDns)),
        ("EDS", 3, None),
        ("ORIGINAL_DST", 4, None),
    ];
}

impl ProtoEnum for LbPolicy {
    const VALUES: &'static [(&'static str, i64, Option<Self>)] = &[
        ("ROUND_ROBIN", 0, Some(Self::RoundRobin)),
        ("LEAST_REQUEST", 1, Some(Self::LeastRequest)),
        ("RING_HASH", 2, Some(Self::RingHash)),
        ("RANDOM", 3, Some(Self::Random)),
        ("MAGLEV", 5, Some(Self::Maglev)),
        ("CLUSTER_PROVIDED", 6, None),
        ("LOAD_BALANCING_POLICY_CONFIG", 7, None),
    ];
}

impl ProtoEnum for DnsLookupFamily {
    const VALUES: &'static [(&'static str, i64, Option<Self>)] = &[
        ("AUTO", 0, Some(Self::Auto)),
        ("V4_ONLY", 1, Some(Self::V4Only)),
        ("V6_ONLY", 2, Some(Self::V6Only)),
        ("V4_PREFERRED", 3, Some(Self::V4Preferred)),
        ("ALL", 4, Some(Self::All)),
    ];
}

impl ProtoEnum for AppendAction {
    const VALUES: &'static [(&'static str, i64, Option<Self>)] = &[
        (
            "APPEND_IF_EXISTS_OR_ADD",
            0,
            Some(Self::AppendIfExistsOrAdd),
        ),
        ("ADD_IF_ABSENT", 1, Some(Self::AddIfAbsent)),
        (
            "OVERWRITE_IF_EXISTS_OR_ADD",
            2,
            Some(Self::OverwriteIfExistsOrAdd),
        ),
        ("OVERWRITE_IF_EXISTS", 3, Some(Self::OverwriteIfExists)),
    ];
}

/// A `google.protobuf.Duration`: the JSON string form (`"5s"`, `"0.25s"`) or
/// `{seconds, nanos}`.
pub(crate) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Parts {
        #[serde(default)]
        seconds: u64,
        #[serde(default)]
        nanos: u32,
    }
    let invalid = |shown: &dyn std::fmt::Display| {
        D::Error::custom(format!(
            "invalid duration {shown}: expected seconds ending in 's' like \"5s\" or \"0.25s\", \
             or {{seconds, nanos}}"
        ))
    };
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::String(text) => parse_duration(&text)
            .map(Some)
            .ok_or_else(|| invalid(&text)),
        Value::Object(map) => {
            let parts: Parts =
                serde_json::from_value(Value::Object(map)).map_err(D::Error::custom)?;
            if parts.nanos >= 1_000_000_000 {
                return Err(D::Error::custom("nanos must be less than 1000000000"));
            }
            Ok(Some(Duration::new(parts.seconds, parts.nanos)))
        }
        other => Err(invalid(&other)),
    }
}

fn parse_duration(text: &str) -> Option<Duration> {
    let number = text.strip_suffix('s')?;
    let (seconds, fraction) = match number.split_once('.') {
        Some((seconds, fraction)) if !fraction.is_empty() => (seconds, fraction),
        Some(_) => return None,
        None => (number, ""),
    };
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if seconds.is_empty() || !all_digits(seconds) || !all_digits(fraction) || fraction.len() > 9 {
        return None;
    }
    let nanos = match fraction {
        "" => 0,
        _ => fraction.parse::<u32>().ok()? * 10u32.pow(9 - fraction.len() as u32),
    };
    Some(Duration::new(seconds.parse().ok()?, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ms = Duration::from_millis;
        for (text, want) in [
            ("5s", Some(ms(5000))),
            ("0s", Some(ms(0))),
            ("0.25s", Some(ms(250))),
            ("1.000340s", Some(Duration::new(1, 340_000))),
            ("1.123456789s", Some(Duration::new(1, 123_456_789))),
            ("5", None),
            ("5ms", None),
            ("-1s", None),
            (".5s", None),
            ("5.s", None),
            ("1.1234567891s", None),
            ("s", None),
        ] {
            assert_eq!(parse_duration(text), want, "{text}");
        }
    }
}

/// `config.core.v3.Metadata`: plugins read `filter_metadata` through properties
/// (`xds.route_metadata`, …); `typed_filter_metadata` is accepted and not read.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    #[serde(default)]
    pub filter_metadata: std::collections::BTreeMap<String, Map<String, Value>>,
    pub typed_filter_metadata: Option<IgnoredAny>,
}

impl Metadata {
    /// The model's form: namespaces in order, each a struct.
    pub fn filter_metadata(config: &Option<Metadata>) -> crate::model::Metadata {
        config
            .iter()
            .flat_map(|m| m.filter_metadata.iter())
            .map(|(ns, fields)| (ns.clone(), fields.clone()))
            .collect()
    }
}
