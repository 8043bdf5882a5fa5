//! Listeners, the HTTP connection manager, its filter list and access logs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use serde_json::{Map, Value};

use super::{
    data_source, fault, health_check, ip_address, local_ratelimit, route, timeout_or, wasm,
    Clusters, ConfigError, Result, TypedConfig,
};
use crate::bootstrap::{
    self, FileAccessLog, Router, StreamAccessLog, SubstitutionFormatString, NOT_SUPPORTED,
};
use crate::format::{parse_format, DEFAULT_ACCESS_LOG_FORMAT};
use crate::model::{
    AccessLog, AccessLogSink, CodecType, FilterStateValue, FormatPiece, Http2Settings,
    HttpConnectionManager, HttpFilterConfig, InternalAddresses, JsonValueTemplate, Listener,
    LogFormat, SetFilterStateConfig, WasmFilterConfig,
};

pub(super) const HCM_TYPE: &str =
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const HCM_NAME: &str = "envoy.filters.network.http_connection_manager";
pub(super) const ROUTER_NAME: &str = "envoy.filters.http.router";
const ROUTER_TYPE: &str = "envoy.extensions.filters.http.router.v3.Router";
const WASM_TYPE: &str = "envoy.extensions.filters.http.wasm.v3.Wasm";
const NETWORK_WASM_TYPE: &str = "envoy.extensions.filters.network.wasm.v3.Wasm";
const FAULT_TYPE: &str = "envoy.extensions.filters.http.fault.v3.HTTPFault";
const SET_FILTER_STATE_TYPE: &str = "envoy.extensions.filters.http.set_filter_state.v3.Config";
const HEALTH_CHECK_TYPE: &str = "envoy.extensions.filters.http.health_check.v3.HealthCheck";
const FILE_LOG_TYPE: &str = "envoy.extensions.access_loggers.file.v3.FileAccessLog";
const STDOUT_LOG_TYPE: &str = "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog";
const STDERR_LOG_TYPE: &str = "envoy.extensions.access_loggers.stream.v3.StderrAccessLog";

pub(super) fn listeners(
    configs: &[bootstrap::Listener],
    clusters: &Clusters,
) -> Result<Vec<Arc<Listener>>> {
    let mut listeners: Vec<Arc<Listener>> = Vec::new();
    for (i, config) in configs.iter().enumerate() {
        let path = format!("static_resources.listeners[{i}]");
        let listener = listener(&path, config, clusters)?;
        if listeners.iter().any(|other| other.name == listener.name) {
            let message = format!("duplicate listener name '{}'", listener.name);
            return Err(ConfigError::new(format!("{path}.name"), message));
        }
        // Port 0 asks the OS for a fresh port, so those never collide.
        let same_address = |other: &&Arc<Listener>| other.address == listener.address;
        if let Some(other) = listeners
            .iter()
            .filter(|_| listener.address.port() != 0)
            .find(same_address)
        {
            let message = format!(
                "{} is already used by listener '{}'",
                listener.address, other.name
            );
            return Err(ConfigError::new(format!("{path}.address"), message));
        }
        listeners.push(Arc::new(listener));
    }
    Ok(listeners)
}

fn listener(path: &str, config: &bootstrap::Listener, clusters: &Clusters) -> Result<Listener> {
    if config.name.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.name"),
            "name must not be empty",
        ));
    }
    let address = ip_address(&format!("{path}.address"), &config.address)?;
    let chain = match config.filter_chains.as_slice() {
        [chain] => chain,
        [] => {
            return Err(ConfigError::new(
                format!("{path}.filter_chains"),
                "one filter chain is required",
            ))
        }
        _ => {
            let message = format!("more than one filter chain {NOT_SUPPORTED}");
            return Err(ConfigError::new(format!("{path}.filter_chains"), message));
        }
    };
    let path = format!("{path}.filter_chains[0]");
    // Network filters before the connection manager, which must come last (Strait has
    // no other terminal network filter yet).
    let Some((filter, network)) = chain.filters.split_last() else {
        let message = format!("one filter ({HCM_NAME}) is required");
        return Err(ConfigError::new(format!("{path}.filters"), message));
    };
    let network_filters = network
        .iter()
        .enumerate()
        .map(|(i, filter)| network_filter(&format!("{path}.filters[{i}]"), filter))
        .collect::<Result<Vec<_>>>()?;
    let path = format!("{path}.filters[{}]", network.len());
    let typed = match &filter.typed_config {
        Some(value) => TypedConfig::parse(format!("{path}.typed_config"), value)?,
        None if filter.name == HCM_NAME => {
            return Err(ConfigError::new(
                format!("{path}.typed_config"),
                "typed_config is required",
            ));
        }
        None => {
            let message = format!("{} {NOT_SUPPORTED}", filter.name);
            return Err(ConfigError::new(format!("{path}.name"), message));
        }
    };
    if typed.type_name != HCM_TYPE {
        return Err(match typed.type_name.as_str() {
            NETWORK_WASM_TYPE => ConfigError::new(
                format!("{path}.name"),
                format!("the last network filter must be {HCM_NAME}"),
            ),
            _ => typed.unsupported(),
        });
    }
    Ok(Listener {
        name: config.name.clone(),
        address,
        per_connection_buffer_limit_bytes: config
            .per_connection_buffer_limit_bytes
            .unwrap_or(1 << 20),
        network_filters,
        hcm: http_connection_manager(&typed, clusters)?,
        traffic_direction: config.traffic_direction.map_or(0, |d| d.0),
        drain_modify_only: config.drain_type == Some(bootstrap::DrainType::ModifyOnly),
        filter_chain_name: chain.name.clone(),
        metadata: crate::bootstrap::Metadata::filter_metadata(&config.metadata),
    })
}

/// A network filter before the connection manager: only `envoy.filters.network.wasm`.
fn network_filter(path: &str, filter: &bootstrap::Filter) -> Result<Arc<WasmFilterConfig>> {
    let Some(value) = &filter.typed_config else {
        let message = match filter.name.as_str() {
            "envoy.filters.network.wasm" => "typed_config is required".to_owned(),
            name => format!("{name} {NOT_SUPPORTED}"),
        };
        return Err(ConfigError::new(format!("{path}.typed_config"), message));
    };
    let typed = TypedConfig::parse(format!("{path}.typed_config"), value)?;
    match typed.type_name.as_str() {
        NETWORK_WASM_TYPE => Ok(Arc::new(wasm::filter(&typed)?)),
        _ => Err(typed.unsupported()),
    }
}

/// The `server` header's value: `server_name` if set (it must be a valid header
/// value, as Envoy's validation requires), else "strait". Static, so the clone each
/// response takes touches no shared count: a name is kept for the process's life,
/// once however often a config names it.
fn server_name(path: &str, name: Option<String>) -> Result<HeaderValue> {
    static NAMES: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let Some(name) = name else {
        return Ok(HeaderValue::from_static("strait"));
    };
    let Ok(value) = HeaderValue::from_str(&name) else {
        let message = "is not a valid header value (control characters?)";
        return Err(ConfigError::new(format!("{path}.server_name"), message));
    };
    if !name
        .bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
    {
        // Beyond visible ASCII `from_static` refuses it: shared bytes, counted.
        return Ok(value);
    }
    let mut names = NAMES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let kept = match names.iter().find(|kept| **kept == name) {
        Some(kept) => kept,
        None => {
            let kept: &'static str = Box::leak(name.into_boxed_str());
            names.push(kept);
            kept
        }
    };
    Ok(HeaderValue::from_static(kept))
}

fn http_connection_manager(
    typed: &TypedConfig,
    clusters: &Clusters,
) -> Result<HttpConnectionManager> {
    let config: bootstrap::HttpConnectionManager = typed.decode()?;
    let path = typed.fields_path.as_str();
    let (http_filters, router) = http_filters(path, &config.http_filters)?;
    let route_config = config.route_config.as_ref().ok_or_else(|| {
        ConfigError::new(format!("{path}.route_config"), "route_config is required")
    })?;
    let max_request_headers_kb = config.max_request_headers_kb.unwrap_or(60);
    if !(1..=8192).contains(&max_request_headers_kb) {
        let message = "must be between 1 and 8192";
        return Err(ConfigError::new(
            format!("{path}.max_request_headers_kb"),
            message,
        ));
    }
    let http2 = http2_settings(path, config.http2_protocol_options.as_ref())?;
    let access_logs = config
        .access_log
        .iter()
        .enumerate()
        .map(|(i, log)| access_log(&format!("{path}.access_log[{i}]"), log))
        .collect::<Result<_>>()?;
    let idle_timeout = config
        .common_http_protocol_options
        .as_ref()
        .and_then(|c| c.idle_timeout);
    let route_config = Arc::new(route::route_config(
        &format!("{path}.route_config"),
        route_config,
        clusters,
    )?);
    for filter in &http_filters {
        if let HttpFilterConfig::Fault(config) = filter {
            fault::check_upstream_cluster(config, &route_config)?;
        }
    }
    Ok(HttpConnectionManager {
        codec_type: config.codec_type.unwrap_or(CodecType::Auto),
        route_config,
        access_logs,
        request_headers_timeout: config.request_headers_timeout.filter(|t| !t.is_zero()),
        stream_idle_timeout: timeout_or(config.stream_idle_timeout, Duration::from_secs(300)),
        request_timeout: config.request_timeout.filter(|t| !t.is_zero()),
        idle_timeout: timeout_or(idle_timeout, Duration::from_secs(3600)),
        max_request_headers_kb,
        http2,
        use_remote_address: config.use_remote_address.unwrap_or(false),
        xff_num_trusted_hops: config.xff_num_trusted_hops.unwrap_or(0),
        generate_request_id: config.generate_request_id.unwrap_or(true),
        upgrade_types: config
            .upgrade_configs
            .iter()
            .filter(|upgrade| upgrade.enabled.unwrap_or(true))
            .map(|upgrade| upgrade.upgrade_type.to_ascii_lowercase())
            .collect(),
        server_name: server_name(path, config.server_name)?,
        server_header_transformation: config.server_header_transformation.unwrap_or_default(),
        suppress_envoy_headers: router.suppress_envoy_headers.unwrap_or(false),
        stat_prefix: config.stat_prefix,
        http_filters,
        max_stream_duration: config
            .common_http_protocol_options
            .as_ref()
            .and_then(|c| c.max_stream_duration)
            .filter(|d| !d.is_zero()),
        internal_addresses: config
            .internal_address_config
            .as_ref()
            .map(|c| internal_addresses(&format!("{path}.internal_address_config"), c))
            .transpose()?,
        default_host_for_http_10: default_host_for_http_10(
            &format!("{path}.http_protocol_options"),
            config.http_protocol_options.as_ref(),
        )?,
    })
}

/// `http_protocol_options`: Strait serves HTTP/1.0 whether or not `accept_http_10` is
/// set (Envoy answers 426 without it), and `default_host_for_http_10` names the host
/// of an HTTP/1.0 request without one. Envoy takes it only with `accept_http_10`.
fn default_host_for_http_10(
    path: &str,
    options: Option<&bootstrap::Http1ProtocolOptions>,
) -> Result<Option<HeaderValue>> {
    let Some(options) = options else {
        return Ok(None);
    };
    let Some(host) = &options.default_host_for_http_10 else {
        return Ok(None);
    };
    if options.accept_http_10 != Some(true) {
        let message = "needs accept_http_10: true, as in Envoy";
        return Err(ConfigError::new(
            format!("{path}.default_host_for_http_10"),
            message,
        ));
    }
    match http::uri::Authority::try_from(host.as_str()) {
        Ok(a) if a.as_str() == host && !host.contains('@') => Ok(Some(
            HeaderValue::from_str(host).expect("an authority is a header value"),
        )),
        _ => Err(ConfigError::new(
            format!("{path}.default_host_for_http_10"),
            format!("{host:?} is not a host and port"),
        )),
    }
}

/// `http2_protocol_options`, within Envoy's bounds: windows of 65,535 to 2^31-1 bytes,
/// 1 to 2^31-1 concurrent streams.
fn http2_settings(
    path: &str,
    config: Option<&bootstrap::Http2ProtocolOptions>,
) -> Result<Http2Settings> {
    let mut settings = Http2Settings::default();
    let Some(config) = config else {
        return Ok(settings);
    };
    let check = |field: &str, value: Option<u32>, min: u32| -> Result<Option<u32>> {
        match value {
            Some(v) if !(min..=i32::MAX as u32).contains(&v) => Err(ConfigError::new(
                format!("{path}.http2_protocol_options.{field}"),
                format!("{v} is not between {min} and 2147483647"),
            )),
            v => Ok(v),
        }
    };
    if let Some(v) = check("max_concurrent_streams", config.max_concurrent_streams, 1)? {
        settings.max_concurrent_streams = v;
    }
    let stream = config.initial_stream_window_size;
    if let Some(v) = check("initial_stream_window_size", stream, 65_535)? {
        settings.initial_stream_window_size = v;
    }
    let connection = config.initial_connection_window_size;
    if let Some(v) = check("initial_connection_window_size", connection, 65_535)? {
        settings.initial_connection_window_size = v;
    }
    Ok(settings)
}

/// `internal_address_config`: each `cidr_ranges` entry an IP prefix with a length that
/// fits it.
fn internal_addresses(
    path: &str,
    config: &bootstrap::InternalAddressConfig,
) -> Result<InternalAddresses> {
    let cidr_ranges = config
        .cidr_ranges
        .iter()
        .enumerate()
        .map(|(i, range)| {
            let path = format!("{path}.cidr_ranges[{i}]");
            let prefix: std::net::IpAddr = range.address_prefix.parse().map_err(|_| {
                ConfigError::new(
                    format!("{path}.address_prefix"),
                    format!("'{}' is not an IP address", range.address_prefix),
                )
            })?;
            let max = if prefix.is_ipv4() { 32 } else { 128 };
            let len = range.prefix_len.unwrap_or(0);
            if len > max {
                return Err(ConfigError::new(
                    format!("{path}.prefix_len"),
                    format!("must be at most {max}"),
                ));
            }
            Ok((prefix, len as u8))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(InternalAddresses {
        unix_sockets: config.unix_sockets,
        cidr_ranges,
    })
}

/// The router must come last (as Envoy requires); before it, the wasm, fault,
/// set_filter_state, health_check and local_ratelimit filters in the order given. Returns them and the router's own config.
fn http_filters(
    path: &str,
    filters: &[bootstrap::HttpFilter],
) -> Result<(Vec<HttpFilterConfig>, Router)> {
    let Some(last) = filters.len().checked_sub(1) else {
        let message = format!("http_filters must end with {ROUTER_NAME}");
        return Err(ConfigError::new(format!("{path}.http_filters"), message));
    };
    let mut chain = Vec::new();
    let mut router = Router::default();
    for (i, filter) in filters.iter().enumerate() {
        let path = format!("{path}.http_filters[{i}]");
        let is_router = match &filter.typed_config {
            Some(value) => {
                let typed = TypedConfig::parse(format!("{path}.typed_config"), value)?;
                match typed.type_name.as_str() {
                    ROUTER_TYPE => {
                        router = typed.decode::<Router>()?;
                        true
                    }
                    WASM_TYPE => {
                        chain.push(HttpFilterConfig::Wasm(Arc::new(wasm::filter(&typed)?)));
                        false
                    }
                    FAULT_TYPE => {
                        chain.push(HttpFilterConfig::Fault(Arc::new(fault::filter(&typed)?)));
                        false
                    }
                    SET_FILTER_STATE_TYPE => {
                        let config = set_filter_state(&typed)?;
                        chain.push(HttpFilterConfig::SetFilterState(Arc::new(config)));
                        false
                    }
                    HEALTH_CHECK_TYPE => {
                        let config = health_check::filter(&typed)?;
                        chain.push(HttpFilterConfig::HealthCheck(Arc::new(config)));
                        false
                    }
                    local_ratelimit::TYPE => {
                        let config = local_ratelimit::filter(&typed, &filter.name)?;
                        chain.push(HttpFilterConfig::LocalRateLimit(Arc::new(config)));
                        false
                    }
                    _ => return Err(typed.unsupported()),
                }
            }
            None if filter.name == ROUTER_NAME => true,
            None => {
                let message = format!("{} {NOT_SUPPORTED}", filter.name);
                return Err(ConfigError::new(format!("{path}.name"), message));
            }
        };
        if is_router != (i == last) {
            let message = match is_router {
                true => format!("{ROUTER_NAME} must be the last filter"),
                false => format!("http_filters must end with {ROUTER_NAME}"),
            };
            return Err(ConfigError::new(path, message));
        }
    }
    Ok((chain, router))
}

fn access_log(path: &str, config: &bootstrap::AccessLog) -> Result<AccessLog> {
    let Some(value) = &config.typed_config else {
        let sink = match config.name.as_str() {
            "envoy.access_loggers.stdout" => AccessLogSink::Stdout,
            "envoy.access_loggers.stderr" => AccessLogSink::Stderr,
            "envoy.access_loggers.file" | "envoy.file_access_log" => {
                let message = "typed_config with a path is required";
                return Err(ConfigError::new(format!("{path}.typed_config"), message));
            }
            name => {
                return Err(ConfigError::new(
                    format!("{path}.name"),
                    format!("{name} {NOT_SUPPORTED}"),
                ))
            }
        };
        return Ok(AccessLog {
            path: path.to_owned(),
            sink,
            format: default_format(),
        });
    };
    let typed = TypedConfig::parse(format!("{path}.typed_config"), value)?;
    let fields = typed.fields_path.as_str();
    let (sink, log_format) = match typed.type_name.as_str() {
        FILE_LOG_TYPE => {
            let file: FileAccessLog = typed.decode()?;
            if file.path.is_empty() {
                return Err(ConfigError::new(
                    format!("{fields}.path"),
                    "path is required",
                ));
            }
            let sink = AccessLogSink::File(PathBuf::from(file.path));
            let format = match (file.log_format, file.format, file.json_format) {
                (None, None, None) => None,
                (Some(format), None, None) => {
                    Some(log_format(&format!("{fields}.log_format"), &format)?)
                }
                (None, Some(text), None) => Some(LogFormat::Text(text_format(
                    &format!("{fields}.format"),
                    &text,
                )?)),
                (None, None, Some(json)) => Some(LogFormat::Json(json_format(
                    &format!("{fields}.json_format"),
                    &json,
                )?)),
                _ => {
                    return Err(ConfigError::new(
                        fields,
                        "only one of log_format, format, json_format may be set",
                    ))
                }
            };
            (sink, format)
        }
        STDOUT_LOG_TYPE | STDERR_LOG_TYPE => {
            let stream: StreamAccessLog = typed.decode()?;
            let sink = match typed.type_name.as_str() {
                STDOUT_LOG_TYPE => AccessLogSink::Stdout,
                _ => AccessLogSink::Stderr,
            };
            let format = stream
                .log_format
                .map(|f| log_format(&format!("{fields}.log_format"), &f))
                .transpose()?;
            (sink, format)
        }
        _ => return Err(typed.unsupported()),
    };
    Ok(AccessLog {
        path: path.to_owned(),
        sink,
        format: log_format.unwrap_or_else(default_format),
    })
}

fn default_format() -> LogFormat {
    // The default is a constant that `format::tests::default_format_parses` covers.
    LogFormat::Text(parse_format(DEFAULT_ACCESS_LOG_FORMAT).expect("default format parses"))
}

/// `envoy.filters.http.set_filter_state`: each value's object factory must be one
/// Strait has (`envoy.string`, `envoy.hashable_string`), named by `factory_key`
/// or, without one, by `object_key` itself (Envoy's lookup).
fn set_filter_state(typed: &TypedConfig) -> Result<SetFilterStateConfig> {
    let config: bootstrap::SetFilterState = typed.decode()?;
    let path = typed.fields_path.as_str();
    let mut values = Vec::with_capacity(config.on_request_headers.len());
    for (i, value) in config.on_request_headers.iter().enumerate() {
        let path = format!("{path}.on_request_headers[{i}]");
        if value.object_key.is_empty() {
            return Err(ConfigError::new(
                format!("{path}.object_key"),
                "object_key is required",
            ));
        }
        let (factory, factory_path) = match value.factory_key.as_str() {
            "" => (value.object_key.as_str(), format!("{path}.object_key")),
            factory => (factory, format!("{path}.factory_key")),
        };
        let hashable = match factory {
            "envoy.string" => false,
            "envoy.hashable_string" => true,
            other => {
                let message = format!(
                    "'{other}' does not have an object factory (Strait has envoy.string and envoy.hashable_string)"
                );
                return Err(ConfigError::new(factory_path, message));
            }
        };
        let Some(format_string) = &value.format_string else {
            return Err(ConfigError::new(
                format!("{path}.format_string"),
                "format_string is required",
            ));
        };
        let format = match log_format(&format!("{path}.format_string"), format_string)? {
            LogFormat::Text(pieces) => pieces,
            LogFormat::Json(_) => {
                let message = format!("json_format {NOT_SUPPORTED} here; use text_format_source");
                return Err(ConfigError::new(
                    format!("{path}.format_string.json_format"),
                    message,
                ));
            }
        };
        values.push(FilterStateValue {
            key: value.object_key.clone(),
            hashable,
            read_only: value.read_only,
            skip_if_empty: value.skip_if_empty,
            format,
        });
    }
    Ok(SetFilterStateConfig { values })
}

fn log_format(path: &str, config: &SubstitutionFormatString) -> Result<LogFormat> {
    match (
        &config.text_format,
        &config.text_format_source,
        &config.json_format,
    ) {
        (Some(text), None, None) => Ok(LogFormat::Text(text_format(
            &format!("{path}.text_format"),
            text,
        )?)),
        (None, Some(source), None) => {
            let path = format!("{path}.text_format_source");
            let text = String::from_utf8(data_source(&path, source)?)
                .map_err(|_| ConfigError::new(&path, "format is not valid UTF-8"))?;
            Ok(LogFormat::Text(text_format(&path, &text)?))
        }
        (None, None, Some(json)) => Ok(LogFormat::Json(json_format(
            &format!("{path}.json_format"),
            json,
        )?)),
        _ => Err(ConfigError::new(
            path,
            "exactly one of text_format, text_format_source, json_format is required",
        )),
    }
}

fn text_format(path: &str, text: &str) -> Result<Vec<FormatPiece>> {
    parse_format(text).map_err(|message| ConfigError::new(path, message))
}

/// Keys come out sorted: `serde_json::Map` is a `BTreeMap` in this workspace.
fn json_format(path: &str, map: &Map<String, Value>) -> Result<Vec<(String, JsonValueTemplate)>> {
    map.iter()
        .map(|(key, value)| {
            let path = format!("{path}.{key}");
            let template = match value {
                Value::String(text) => JsonValueTemplate::Format(text_format(&path, text)?),
                Value::Object(map) => JsonValueTemplate::Object(json_format(&path, map)?),
                Value::Array(_) => {
                    return Err(ConfigError::new(
                        path,
                        "lists are not supported in json_format",
                    ))
                }
                literal => JsonValueTemplate::Literal(literal.clone()),
            };
            Ok((key.clone(), template))
        })
        .collect()
}

#[cfg(test)]
mod network_filter_tests {
    use crate::translate::snapshot_from_yaml;

    const CHAIN: &str = "static_resources.listeners[0].filter_chains[0]";

    /// A listener with `filters` (network filter items) before the connection manager.
    fn config(filters: &str) -> String {
        let routes = "              - match: {prefix: \"/\"}\n                direct_response: {status: 200}";
        let base = crate::translate::test_yaml::with_http_filters(routes, "");
        let marker = "    - filters:\n";
        assert!(base.contains(marker));
        base.replacen(marker, &format!("{marker}{filters}"), 1)
    }

    const NETWORK_WASM: &str = r#"      - name: envoy.filters.network.wasm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm
          config:
            name: counter
            failure_policy: FAIL_OPEN
            vm_config:
              runtime: envoy.wasm.runtime.v8
              code: {local: {inline_string: "not really wasm"}}
"#;

    #[test]
    fn network_wasm_filters_run_before_the_connection_manager() {
        let two = format!(
            "{NETWORK_WASM}{}",
            NETWORK_WASM.replace("counter", "second")
        );
        let snapshot = snapshot_from_yaml(&config(&two)).unwrap();
        let filters = &snapshot.listeners[0].network_filters;
        assert_eq!(filters.len(), 2);
        assert_eq!(filters[0].name, "counter");
        assert!(filters[0].fail_open);
        assert_eq!(filters[1].name, "second");
        assert_eq!(filters[1].path, format!("{CHAIN}.filters[1].typed_config"));
        let plain = snapshot_from_yaml(&config("")).unwrap();
        assert!(plain.listeners[0].network_filters.is_empty());
    }

    #[test]
    fn the_connection_managers_paths_count_the_filters_before_it() {
        // The access log's path names the connection manager where it is,
        // `filters[1]` behind a network filter: errors found when its file is opened
        // point there.
        let yaml = config(NETWORK_WASM).replacen(
            "          stat_prefix: ingress\n",
            "          stat_prefix: ingress\n          access_log: [{name: envoy.access_loggers.stdout}]\n",
            1,
        );
        assert!(yaml.contains("access_loggers.stdout"));
        let snapshot = snapshot_from_yaml(&yaml).unwrap();
        assert_eq!(
            snapshot.listeners[0].hcm.access_logs[0].path,
            format!("{CHAIN}.filters[1].typed_config.access_log[0]")
        );
    }

    #[test]
    fn network_filter_errors_name_paths() {
        let cases = [
            (
                NETWORK_WASM.replace("failure_policy: FAIL_OPEN", "failure_policy: LATER"),
                format!("{CHAIN}.filters[0].typed_config.config.failure_policy: unknown failure_policy"),
            ),
            (
                NETWORK_WASM.replace(
                    "envoy.extensions.filters.network.wasm.v3.Wasm",
                    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                ),
                format!("{CHAIN}.filters[0].typed_config: envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy is not supported yet"),
            ),
            (
                "      - name: envoy.filters.network.rbac\n".to_owned(),
                format!("{CHAIN}.filters[0].typed_config: envoy.filters.network.rbac is not supported yet"),
            ),
            (
                NETWORK_WASM.replace("          config:\n", "          config:\n            bogus: 1\n"),
                format!("{CHAIN}.filters[0].typed_config.config.bogus: unknown field"),
            ),
        ];
        for (filters, want) in cases {
            let error = snapshot_from_yaml(&config(&filters))
                .unwrap_err()
                .to_string();
            assert!(error.starts_with(&want), "got {error}, want {want}");
        }
        // The connection manager must stay last.
        let yaml = config("");
        let only_wasm = {
            let start = yaml.find("    - filters:\n").unwrap() + "    - filters:\n".len();
            let end = yaml.find("          http_filters:").unwrap();
            // Replace the whole HCM with a network wasm filter: no terminal filter.
            let end = yaml[end..]
                .find("          - name: envoy.filters.http.router")
                .unwrap()
                + end;
            let end = end + "          - name: envoy.filters.http.router\n".len();
            format!("{}{NETWORK_WASM}{}", &yaml[..start], &yaml[end..])
        };
        let error = snapshot_from_yaml(&only_wasm).unwrap_err().to_string();
        assert_eq!(
            error,
            format!("{CHAIN}.filters[0].name: the last network filter must be envoy.filters.network.http_connection_manager")
        );
    }
}
