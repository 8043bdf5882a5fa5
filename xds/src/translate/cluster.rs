//! Clusters: discovery type, endpoints and upstream protocol.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use super::{
    decode_base64, headers, socket_address, timeout_or, Clusters, ConfigError, Result, TypedConfig,
};
use crate::bootstrap::{self, CodecClientType, HttpProtocolOptions, ProtocolChoice};
use crate::model::{
    CircuitBreakers, Cluster, Discovery, DnsLookupFamily, Endpoint, HashLbConfig, HealthCheck,
    HealthCheckKind, HttpHealthCheck, LbPolicy, OutlierDetection, RetryBudget, UpstreamProtocol,
};

const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// Clusters by name, and their names in config order.
pub(super) fn clusters(configs: &[bootstrap::Cluster]) -> Result<(Clusters, Vec<String>)> {
    let mut clusters = HashMap::new();
    let mut order = Vec::new();
    for (i, config) in configs.iter().enumerate() {
        let path = format!("static_resources.clusters[{i}]");
        let cluster = cluster(&path, config)?;
        if clusters.contains_key(&cluster.name) {
            let message = format!("duplicate cluster name '{}'", cluster.name);
            return Err(ConfigError::new(format!("{path}.name"), message));
        }
        order.push(cluster.name.clone());
        clusters.insert(cluster.name.clone(), Arc::new(cluster));
    }
    Ok((clusters, order))
}

fn cluster(path: &str, config: &bootstrap::Cluster) -> Result<Cluster> {
    if config.name.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.name"),
            "name must not be empty",
        ));
    }
    let positive = |field: &str, value: Option<Duration>, default: Duration| match value {
        Some(value) if value.is_zero() => Err(ConfigError::new(
            format!("{path}.{field}"),
            "must be greater than 0",
        )),
        value => Ok(value.unwrap_or(default)),
    };
    let discovery = config.r#type.unwrap_or(Discovery::Static);
    let (protocol, idle_timeout) = protocol(path, config)?;
    Ok(Cluster {
        name: config.name.clone(),
        alt_stat_name: config.alt_stat_name.clone().filter(|name| !name.is_empty()),
        metadata: crate::bootstrap::Metadata::filter_metadata(&config.metadata),
        discovery,
        connect_timeout: positive(
            "connect_timeout",
            config.connect_timeout,
            Duration::from_secs(5),
        )?,
        lb_policy: config.lb_policy.unwrap_or(LbPolicy::RoundRobin),
        hash_lb: hash_lb(path, config)?,
        protocol,
        idle_timeout,
        dns_refresh_rate: positive(
            "dns_refresh_rate",
            config.dns_refresh_rate,
            Duration::from_secs(5),
        )?,
        dns_lookup_family: config.dns_lookup_family.unwrap_or(DnsLookupFamily::Auto),
        endpoints: endpoints(path, discovery, config.load_assignment.as_ref())?,
        locality_weighted: config
            .common_lb_config
            .as_ref()
            .is_some_and(|c| c.locality_weighted_lb_config.is_some()),
        overprovisioning_factor: match config
            .load_assignment
            .as_ref()
            .and_then(|a| a.policy.as_ref())
            .and_then(|p| p.overprovisioning_factor)
        {
            Some(0) => {
                return Err(ConfigError::new(
                    format!("{path}.load_assignment.policy.overprovisioning_factor"),
                    "must be greater than 0",
                ))
            }
            factor => factor.unwrap_or(140),
        },
        health_check: health_check(path, &config.health_checks)?,
        healthy_panic_threshold: panic_threshold(path, config.common_lb_config.as_ref())?,
        circuit_breakers: circuit_breakers(
            &format!("{path}.circuit_breakers"),
            config.circuit_breakers.as_ref(),
        )?,
        outlier_detection: outlier_detection(path, config.outlier_detection.as_ref())?,
    })
}

/// `outlier_detection` with Envoy's defaults and checks.
fn outlier_detection(
    path: &str,
    config: Option<&bootstrap::OutlierDetection>,
) -> Result<Option<OutlierDetection>> {
    let Some(config) = config else {
        return Ok(None);
    };
    let path = format!("{path}.outlier_detection");
    let percent = |field: &str, value: Option<u32>, default: u32| match value {
        Some(v) if v > 100 => Err(ConfigError::new(
            format!("{path}.{field}"),
            format!("{v} is not a percentage between 0 and 100"),
        )),
        v => Ok(v.unwrap_or(default)),
    };
    let positive = |field: &str, value: Option<Duration>, default: Duration| match value {
        Some(v) if v.is_zero() => Err(ConfigError::new(
            format!("{path}.{field}"),
            "must be greater than 0",
        )),
        v => Ok(v.unwrap_or(default)),
    };
    Ok(Some(OutlierDetection {
        consecutive_5xx: config.consecutive_5xx.unwrap_or(5),
        consecutive_gateway_failure: config.consecutive_gateway_failure.unwrap_or(5),
        enforcing_consecutive_5xx: percent(
            "enforcing_consecutive_5xx",
            config.enforcing_consecutive_5xx,
            100,
        )?,
        enforcing_consecutive_gateway_failure: percent(
            "enforcing_consecutive_gateway_failure",
            config.enforcing_consecutive_gateway_failure,
            0,
        )?,
        interval: positive("interval", config.interval, Duration::from_secs(10))?,
        base_ejection_time: positive(
            "base_ejection_time",
            config.base_ejection_time,
            Duration::from_secs(30),
        )?,
        max_ejection_time: positive(
            "max_ejection_time",
            config.max_ejection_time,
            Duration::from_secs(300),
        )?,
        max_ejection_percent: percent("max_ejection_percent", config.max_ejection_percent, 10)?,
        success_rate_minimum_hosts: config.success_rate_minimum_hosts.unwrap_or(5),
        success_rate_request_volume: config.success_rate_request_volume.unwrap_or(100),
        success_rate_stdev_factor: config.success_rate_stdev_factor.unwrap_or(1900),
        enforcing_success_rate: percent(
            "enforcing_success_rate",
            config.enforcing_success_rate,
            100,
        )?,
        failure_percentage_threshold: percent(
            "failure_percentage_threshold",
            config.failure_percentage_threshold,
            85,
        )?,
        failure_percentage_minimum_hosts: config.failure_percentage_minimum_hosts.unwrap_or(5),
        failure_percentage_request_volume: config.failure_percentage_request_volume.unwrap_or(50),
        enforcing_failure_percentage: percent(
            "enforcing_failure_percentage",
            config.enforcing_failure_percentage,
            0,
        )?,
        split_external_local_origin_errors: config
            .split_external_local_origin_errors
            .unwrap_or(false),
        consecutive_local_origin_failure: config.consecutive_local_origin_failure.unwrap_or(5),
        enforcing_consecutive_local_origin_failure: percent(
            "enforcing_consecutive_local_origin_failure",
            config.enforcing_consecutive_local_origin_failure,
            100,
        )?,
        enforcing_local_origin_success_rate: percent(
            "enforcing_local_origin_success_rate",
            config.enforcing_local_origin_success_rate,
            100,
        )?,
        enforcing_failure_percentage_local_origin: percent(
            "enforcing_failure_percentage_local_origin",
            config.enforcing_failure_percentage_local_origin,
            0,
        )?,
    }))
}

/// `circuit_breakers.thresholds`: per routing priority (DEFAULT when unset), Envoy's
/// defaults for each field left unset. As in Envoy, the first entry for a priority
/// wins.
fn circuit_breakers(
    path: &str,
    config: Option<&bootstrap::CircuitBreakers>,
) -> Result<[CircuitBreakers; 2]> {
    let mut out = [CircuitBreakers::default(), CircuitBreakers::default()];
    let Some(config) = config else {
        return Ok(out);
    };
    let mut seen = [false; 2];
    for (i, t) in config.thresholds.iter().enumerate() {
        let priority = match t.priority {
            Some(bootstrap::RoutingPriority::High) => 1,
            _ => 0,
        };
        if std::mem::replace(&mut seen[priority], true) {
            continue;
        }
        let out = &mut out[priority];
        out.max_connections = t.max_connections.unwrap_or(out.max_connections);
        out.max_pending_requests = t.max_pending_requests.unwrap_or(out.max_pending_requests);
        out.max_requests = t.max_requests.unwrap_or(out.max_requests);
        out.max_retries = t.max_retries.unwrap_or(out.max_retries);
        out.track_remaining = t.track_remaining;
        if let Some(budget) = &t.retry_budget {
            let budget_percent = budget.budget_percent.as_ref().map_or(20.0, |p| p.value);
            if !(0.0..=100.0).contains(&budget_percent) {
                return Err(ConfigError::new(
                    format!("{path}.thresholds[{i}].retry_budget.budget_percent.value"),
                    "must be between 0 and 100",
                ));
            }
            out.retry_budget = Some(RetryBudget {
                budget_percent,
                min_retry_concurrency: budget.min_retry_concurrency.unwrap_or(3),
            });
        }
    }
    // Per host, Envoy honours only `max_connections` (the other fields are accepted
    // and ignored there too); the first entry for a priority wins.
    let mut seen = [false; 2];
    for t in &config.per_host_thresholds {
        let priority = match t.priority {
            Some(bootstrap::RoutingPriority::High) => 1,
            _ => 0,
        };
        if !std::mem::replace(&mut seen[priority], true) {
            out[priority].max_connections_per_host = t.max_connections;
        }
    }
    Ok(out)
}

/// Envoy's largest ring (`maximum_ring_size`'s validation bound) and Maglev table.
const MAX_RING_SIZE: u64 = 8 * 1024 * 1024;
const MAX_MAGLEV_TABLE_SIZE: u64 = 5_000_011;

/// `ring_hash_lb_config` and `maglev_lb_config` with Envoy's defaults and checks.
/// Like Envoy, a config for the other policy is accepted and unused.
fn hash_lb(path: &str, config: &bootstrap::Cluster) -> Result<HashLbConfig> {
    let mut out = HashLbConfig::default();
    if let Some(ring) = &config.ring_hash_lb_config {
        let path = format!("{path}.ring_hash_lb_config");
        for (field, value) in [
            ("minimum_ring_size", ring.minimum_ring_size),
            ("maximum_ring_size", ring.maximum_ring_size),
        ] {
            if value.is_some_and(|v| v > MAX_RING_SIZE) {
                let message = format!("must be at most {MAX_RING_SIZE}");
                return Err(ConfigError::new(format!("{path}.{field}"), message));
            }
        }
        out.minimum_ring_size = ring
            .minimum_ring_size
            .unwrap_or(out.minimum_ring_size)
            .max(1);
        out.maximum_ring_size = ring
            .maximum_ring_size
            .unwrap_or(out.maximum_ring_size)
            .max(1);
        if out.minimum_ring_size > out.maximum_ring_size {
            let message = format!(
                "minimum_ring_size ({}) > maximum_ring_size ({})",
                out.minimum_ring_size, out.maximum_ring_size
            );
            return Err(ConfigError::new(path, message));
        }
    }
    if let Some(size) = config.maglev_lb_config.as_ref().and_then(|m| m.table_size) {
        let path = format!("{path}.maglev_lb_config.table_size");
        if !is_prime(size) {
            return Err(ConfigError::new(
                path,
                format!("{size} is not a prime number"),
            ));
        }
        if size > MAX_MAGLEV_TABLE_SIZE {
            let message = format!("must be at most {MAX_MAGLEV_TABLE_SIZE}");
            return Err(ConfigError::new(path, message));
        }
        out.maglev_table_size = size;
    }
    Ok(out)
}

fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

/// `common_lb_config.healthy_panic_threshold.value`, a percentage; Envoy's default 50.
fn panic_threshold(path: &str, config: Option<&bootstrap::CommonLbConfig>) -> Result<f64> {
    let Some(percent) = config.and_then(|c| c.healthy_panic_threshold.as_ref()) else {
        return Ok(50.0);
    };
    if !(0.0..=100.0).contains(&percent.value) {
        return Err(ConfigError::new(
            format!("{path}.common_lb_config.healthy_panic_threshold.value"),
            format!("{} is not a percentage between 0 and 100", percent.value),
        ));
    }
    Ok(percent.value)
}

fn health_check(path: &str, configs: &[bootstrap::HealthCheck]) -> Result<Option<HealthCheck>> {
    if configs.len() > 1 {
        let message = "more than one health check per cluster is not supported yet";
        return Err(ConfigError::new(
            format!("{path}.health_checks[1]"),
            message,
        ));
    }
    let Some(config) = configs.first() else {
        return Ok(None);
    };
    let path = format!("{path}.health_checks[0]");
    let required =
        |field: &str| ConfigError::new(format!("{path}.{field}"), format!("{field} is required"));
    let positive_duration = |field: &str, value: Option<Duration>| match value {
        None => Err(required(field)),
        Some(value) if value.is_zero() => Err(ConfigError::new(
            format!("{path}.{field}"),
            "must be greater than 0",
        )),
        Some(value) => Ok(value),
    };
    let threshold = |field: &str, value: Option<u32>| match value {
        None => Err(required(field)),
        Some(0) => Err(ConfigError::new(
            format!("{path}.{field}"),
            "must be at least 1",
        )),
        Some(value) => Ok(value),
    };
    let kind = match (
        &config.http_health_check,
        &config.tcp_health_check,
        &config.grpc_health_check,
    ) {
        (Some(http), None, None) => {
            HealthCheckKind::Http(http_check(&format!("{path}.http_health_check"), http)?)
        }
        (None, Some(tcp), None) => {
            let path = format!("{path}.tcp_health_check");
            let send = match &tcp.send {
                Some(payload) => payload_bytes(&format!("{path}.send"), payload)?,
                None => Vec::new(),
            };
            let receive = tcp
                .receive
                .iter()
                .enumerate()
                .map(|(i, payload)| payload_bytes(&format!("{path}.receive[{i}]"), payload))
                .collect::<Result<Vec<_>>>()?;
            HealthCheckKind::Tcp { send, receive }
        }
        (None, None, Some(grpc)) => HealthCheckKind::Grpc {
            service_name: grpc.service_name.clone(),
            authority: grpc.authority.clone().filter(|a| !a.is_empty()),
        },
        _ => {
            let message = "exactly one of http_health_check, tcp_health_check, \
                           grpc_health_check is required";
            return Err(ConfigError::new(path, message));
        }
    };
    let interval = positive_duration("interval", config.interval)?;
    Ok(Some(HealthCheck {
        timeout: positive_duration("timeout", config.timeout)?,
        interval,
        interval_jitter: config.interval_jitter.unwrap_or_default(),
        no_traffic_interval: config
            .no_traffic_interval
            .unwrap_or(Duration::from_secs(60)),
        unhealthy_threshold: threshold("unhealthy_threshold", config.unhealthy_threshold)?,
        healthy_threshold: threshold("healthy_threshold", config.healthy_threshold)?,
        kind,
    }))
}

fn http_check(path: &str, config: &bootstrap::HttpHealthCheck) -> Result<HttpHealthCheck> {
    if !config.path.starts_with('/') {
        return Err(ConfigError::new(
            format!("{path}.path"),
            "path is required and must start with '/'",
        ));
    }
    let mut expected_statuses = Vec::new();
    for (i, range) in config.expected_statuses.iter().enumerate() {
        if !(100..600).contains(&range.start) || !(101..=600).contains(&range.end) {
            return Err(ConfigError::new(
                format!("{path}.expected_statuses[{i}]"),
                "start must be in [100, 600) and end in (100, 600]",
            ));
        }
        expected_statuses.push((range.start as u16, range.end as u16));
    }
    if expected_statuses.is_empty() {
        expected_statuses.push((200, 201));
    }
    let added = headers::mutations(path, &config.request_headers_to_add, &[], &[], &[])?;
    Ok(HttpHealthCheck {
        path: config.path.clone(),
        host: config.host.clone().filter(|h| !h.is_empty()),
        expected_statuses,
        request_headers_to_add: added
            .request_headers_to_add
            .into_iter()
            .map(|option| (option.name, option.value))
            .collect(),
        http2: config.codec_client_type == Some(CodecClientType::Http2),
    })
}

/// A `Payload`: hex `text` or base64 `binary`.
fn payload_bytes(path: &str, payload: &bootstrap::Payload) -> Result<Vec<u8>> {
    match (&payload.text, &payload.binary) {
        (Some(text), None) => decode_hex(text).ok_or_else(|| {
            ConfigError::new(
                format!("{path}.text"),
                "expected an even number of hex digits",
            )
        }),
        (None, Some(base64)) => decode_base64(base64)
            .ok_or_else(|| ConfigError::new(format!("{path}.binary"), "invalid base64")),
        _ => Err(ConfigError::new(
            path,
            "exactly one of text, binary is required",
        )),
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn endpoints(
    path: &str,
    discovery: Discovery,
    assignment: Option<&bootstrap::ClusterLoadAssignment>,
) -> Result<Vec<Endpoint>> {
    let mut endpoints = Vec::new();
    for (i, locality) in assignment.iter().flat_map(|a| &a.endpoints).enumerate() {
        let path = format!("{path}.load_assignment.endpoints[{i}]");
        let priority = locality.priority.unwrap_or(0);
        let locality_weight = locality.load_balancing_weight.unwrap_or(1);
        if locality_weight == 0 {
            let message = "load_balancing_weight must be at least 1";
            return Err(ConfigError::new(
                format!("{path}.load_balancing_weight"),
                message,
            ));
        }
        if priority > 127 {
            // Envoy's own bound on priority levels.
            let message = format!("priority {priority} is above the maximum of 127");
            return Err(ConfigError::new(format!("{path}.priority"), message));
        }
        for (j, lb_endpoint) in locality.lb_endpoints.iter().enumerate() {
            let path = format!("{path}.lb_endpoints[{j}]");
            let address_path = format!("{path}.endpoint.address");
            let socket = socket_address(&address_path, &lb_endpoint.endpoint.address)?;
            let field = |name: &str| format!("{address_path}.socket_address.{name}");
            if socket.address.is_empty() {
                return Err(ConfigError::new(field("address"), "address is required"));
            }
            if discovery == Discovery::Static && socket.address.parse::<IpAddr>().is_err() {
                let message = format!(
                    "'{}' is not an IP address (STATIC clusters need IPs; use STRICT_DNS for names)",
                    socket.address
                );
                return Err(ConfigError::new(field("address"), message));
            }
            if socket.port_value == 0 {
                return Err(ConfigError::new(
                    field("port_value"),
                    "port_value is required",
                ));
            }
            let weight = lb_endpoint.load_balancing_weight.unwrap_or(1);
            if weight == 0 {
                let message = "load_balancing_weight must be at least 1";
                return Err(ConfigError::new(
                    format!("{path}.load_balancing_weight"),
                    message,
                ));
            }
            let hostname = match (&lb_endpoint.endpoint.hostname, discovery) {
                (Some(name), _) if !name.is_empty() => name.clone(),
                (_, Discovery::Static) => String::new(),
                _ => socket.address.clone(),
            };
            endpoints.push(Endpoint {
                host: socket.address.clone(),
                port: socket.port_value,
                hostname,
                weight,
                priority,
                locality: i as u32,
                locality_weight,
                health: lb_endpoint.health_status.unwrap_or_default(),
                metadata: crate::bootstrap::Metadata::filter_metadata(&lb_endpoint.metadata),
            });
        }
    }
    if discovery == Discovery::LogicalDns && endpoints.len() != 1 {
        let message = format!(
            "LOGICAL_DNS clusters need exactly one endpoint, found {}",
            endpoints.len()
        );
        return Err(ConfigError::new(format!("{path}.load_assignment"), message));
    }
    Ok(endpoints)
}

/// The upstream protocol and connection idle timeout (Envoy's default: 1 hour).
fn protocol(
    path: &str,
    config: &bootstrap::Cluster,
) -> Result<(UpstreamProtocol, Option<Duration>)> {
    let mut protocol = match &config.http2_protocol_options {
        Some(options) => {
            upstream_http2(&format!("{path}.http2_protocol_options"), options)?;
            UpstreamProtocol::Http2
        }
        None => UpstreamProtocol::Http1,
    };
    let mut idle_timeout = config
        .common_http_protocol_options
        .as_ref()
        .and_then(|c| c.idle_timeout);
    for (name, value) in &config.typed_extension_protocol_options {
        let typed = TypedConfig::parse(
            format!("{path}.typed_extension_protocol_options.{name}"),
            value,
        )?;
        if typed.type_name != HTTP_PROTOCOL_OPTIONS {
            return Err(typed.unsupported());
        }
        if config.http2_protocol_options.is_some() || config.http_protocol_options.is_some() {
            let message = "cannot be combined with the deprecated cluster-level protocol options";
            return Err(ConfigError::new(typed.path, message));
        }
        let options: HttpProtocolOptions = typed.decode()?;
        let fields = &typed.fields_path;
        let choice = |field: &str, choice: &ProtocolChoice| match choice {
            ProtocolChoice {
                http_protocol_options: Some(_),
                http2_protocol_options: None,
                ..
            } => Ok(UpstreamProtocol::Http1),
            ProtocolChoice {
                http_protocol_options: None,
                http2_protocol_options: Some(options),
                ..
            } => {
                upstream_http2(&format!("{fields}.{field}.http2_protocol_options"), options)?;
                Ok(UpstreamProtocol::Http2)
            }
            _ => Err(ConfigError::new(
                format!("{fields}.{field}"),
                "exactly one of http_protocol_options, http2_protocol_options is required",
            )),
        };
        protocol = match (
            &options.explicit_http_config,
            &options.use_downstream_protocol_config,
        ) {
            (Some(explicit), None) => choice("explicit_http_config", explicit)?,
            (None, Some(_)) => UpstreamProtocol::Downstream,
            _ => {
                let message = "exactly one of explicit_http_config, use_downstream_protocol_config is required";
                return Err(ConfigError::new(fields, message));
            }
        };
        if let Some(common) = options.common_http_protocol_options {
            idle_timeout = common.idle_timeout.or(idle_timeout);
        }
    }
    Ok((
        protocol,
        timeout_or(idle_timeout, Duration::from_secs(3600)),
    ))
}

/// `http2_protocol_options` towards an upstream (hyper's HTTP/2 client): window sizes
/// tune throughput and are accepted and ignored; a stream limit per connection would
/// need the pool to open more connections, which it does not do yet.
fn upstream_http2(path: &str, options: &bootstrap::Http2ProtocolOptions) -> Result<()> {
    if options.max_concurrent_streams.is_some() {
        return Err(ConfigError::new(
            format!("{path}.max_concurrent_streams"),
            format!(
                "max_concurrent_streams {} on a cluster",
                bootstrap::NOT_SUPPORTED
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Translates one STATIC cluster with `extra` fields merged in.
    fn cluster_with(extra: serde_json::Value) -> Result<Cluster> {
        let mut config = json!({
            "name": "c",
            "load_assignment": {"endpoints": [{"lb_endpoints": [{"endpoint": {
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 8080}},
            }}]}]},
        });
        for (k, v) in extra.as_object().expect("object") {
            config[k] = v.clone();
        }
        let config: bootstrap::Cluster = super::super::decode("c", &config)?;
        cluster("c", &config)
    }

    fn check(fields: serde_json::Value) -> serde_json::Value {
        let mut check = json!({"timeout": "1s", "interval": "2s", "unhealthy_threshold": 3, "healthy_threshold": 2});
        for (k, v) in fields.as_object().expect("object") {
            check[k] = v.clone();
        }
        json!({"health_checks": [check]})
    }

    #[test]
    fn health_checks_translate_with_envoy_defaults() {
        let c = cluster_with(check(json!({"http_health_check": {"path": "/hc",
            "codec_client_type": "HTTP2",
            "request_headers_to_add": [{"header": {"key": "X-A", "value": "1"}}]}})))
        .unwrap();
        assert_eq!(c.healthy_panic_threshold, 50.0);
        let hc = c.health_check.unwrap();
        assert_eq!(
            (hc.timeout, hc.interval),
            (Duration::from_secs(1), Duration::from_secs(2))
        );
        assert_eq!(hc.no_traffic_interval, Duration::from_secs(60));
        let HealthCheckKind::Http(http) = hc.kind else {
            panic!("{:?}", hc.kind)
        };
        assert_eq!(http.expected_statuses, vec![(200, 201)]);
        assert!(http.http2);
        assert_eq!(http.request_headers_to_add[0].0.as_str(), "x-a");

        let c = cluster_with(check(json!({"tcp_health_check": {
            "send": {"text": "0A0b"}, "receive": [{"binary": "aGk="}]}})))
        .unwrap();
        let want = HealthCheckKind::Tcp {
            send: vec![0x0a, 0x0b],
            receive: vec![b"hi".to_vec()],
        };
        assert_eq!(c.health_check.unwrap().kind, want);

        let c =
            cluster_with(json!({"common_lb_config": {"healthy_panic_threshold": {"value": 0}}}));
        assert_eq!(c.unwrap().healthy_panic_threshold, 0.0);
    }

    #[test]
    fn hash_lb_configs_translate_with_envoy_defaults() {
        let c = cluster_with(json!({"lb_policy": "RING_HASH"})).unwrap();
        assert_eq!(
            (c.lb_policy, c.hash_lb),
            (LbPolicy::RingHash, HashLbConfig::default())
        );
        let c = cluster_with(json!({"lb_policy": "RING_HASH",
            "ring_hash_lb_config": {"minimum_ring_size": 16, "maximum_ring_size": 64,
                                    "hash_function": "XX_HASH"}}))
        .unwrap();
        assert_eq!(
            (c.hash_lb.minimum_ring_size, c.hash_lb.maximum_ring_size),
            (16, 64)
        );
        let c =
            cluster_with(json!({"lb_policy": "MAGLEV", "maglev_lb_config": {"table_size": 251}}))
                .unwrap();
        assert_eq!(
            (c.lb_policy, c.hash_lb.maglev_table_size),
            (LbPolicy::Maglev, 251)
        );
    }

    #[test]
    fn bad_hash_lb_configs_name_their_field() {
        let cases = [
            (
                json!({"lb_policy": "MAGLEV", "maglev_lb_config": {"table_size": 65536}}),
                "c.maglev_lb_config.table_size: 65536 is not a prime number",
            ),
            (
                json!({"maglev_lb_config": {"table_size": 5000101}}),
                "c.maglev_lb_config.table_size: must be at most 5000011",
            ),
            (
                json!({"ring_hash_lb_config": {"minimum_ring_size": 100, "maximum_ring_size": 10}}),
                "c.ring_hash_lb_config: minimum_ring_size (100) > maximum_ring_size (10)",
            ),
            (
                json!({"ring_hash_lb_config": {"maximum_ring_size": 8388609}}),
                "c.ring_hash_lb_config.maximum_ring_size: must be at most 8388608",
            ),
            (
                json!({"ring_hash_lb_config": {"hash_function": "MURMUR_HASH_2"}}),
                "c.ring_hash_lb_config.hash_function: MURMUR_HASH_2 is not supported yet",
            ),
            (
                json!({"ring_hash_lb_config": {"ring_size": 1}}),
                "c.ring_hash_lb_config.ring_size: unknown field `ring_size`",
            ),
        ];
        for (extra, want) in cases {
            let error = cluster_with(extra).unwrap_err().to_string();
            assert!(error.starts_with(want), "want {want:?}, got {error:?}");
        }
    }

    #[test]
    fn outlier_detection_translates_with_envoy_defaults() {
        let c = cluster_with(json!({"outlier_detection": {}})).unwrap();
        let od = c.outlier_detection.unwrap();
        assert_eq!(od.consecutive_5xx, 5);
        assert_eq!(od.consecutive_gateway_failure, 5);
        assert_eq!(od.enforcing_consecutive_5xx, 100);
        assert_eq!(od.enforcing_consecutive_gateway_failure, 0);
        assert_eq!(od.interval, Duration::from_secs(10));
        assert_eq!(od.base_ejection_time, Duration::from_secs(30));
        assert_eq!(od.max_ejection_time, Duration::from_secs(300));
        assert_eq!(od.max_ejection_percent, 10);
        assert_eq!(
            (
                od.success_rate_minimum_hosts,
                od.success_rate_request_volume
            ),
            (5, 100)
        );
        assert_eq!(
            (od.success_rate_stdev_factor, od.enforcing_success_rate),
            (1900, 100)
        );
        assert_eq!(
            (
                od.failure_percentage_threshold,
                od.enforcing_failure_percentage
            ),
            (85, 0)
        );
        assert_eq!(
            (
                od.failure_percentage_minimum_hosts,
                od.failure_percentage_request_volume
            ),
            (5, 50)
        );
        assert!(cluster_with(json!({})).unwrap().outlier_detection.is_none());
    }

    #[test]
    fn bad_outlier_detection_names_its_field() {
        let cases = [
            (
                json!({"outlier_detection": {"enforcing_failure_percentage": 101}}),
                "c.outlier_detection.enforcing_failure_percentage: 101 is not a percentage between 0 and 100",
            ),
            (
                json!({"outlier_detection": {"enforcing_local_origin_success_rate": 101}}),
                "c.outlier_detection.enforcing_local_origin_success_rate: 101 is not a percentage",
            ),
            (
                json!({"outlier_detection": {"max_ejection_percent": 101}}),
                "c.outlier_detection.max_ejection_percent: 101 is not a percentage",
            ),
            (
                json!({"outlier_detection": {"interval": "0s"}}),
                "c.outlier_detection.interval: must be greater than 0",
            ),
        ];
        for (extra, want) in cases {
            let error = cluster_with(extra).unwrap_err().to_string();
            assert!(error.starts_with(want), "want {want:?}, got {error:?}");
        }
    }

    #[test]
    fn bad_health_checks_name_their_field() {
        let cases = [
            (
                check(json!({"interval": "0s", "tcp_health_check": {}})),
                "c.health_checks[0].interval: must be greater than 0",
            ),
            (
                check(json!({"healthy_threshold": null, "tcp_health_check": {}})),
                "c.health_checks[0].healthy_threshold: healthy_threshold is required",
            ),
            (
                check(
                    json!({"http_health_check": {"path": "/", "expected_statuses": [{"start": 200, "end": 700}]}}),
                ),
                "c.health_checks[0].http_health_check.expected_statuses[0]: start must be",
            ),
            (
                check(json!({"tcp_health_check": {}, "grpc_health_check": {}})),
                "c.health_checks[0]: exactly one of",
            ),
            (
                check(json!({"unhealthy_interval": "1s", "tcp_health_check": {}})),
                "c.health_checks[0].unhealthy_interval: unhealthy_interval is not supported yet",
            ),
            (
                json!({"common_lb_config": {"healthy_panic_threshold": {"value": 101}}}),
                "c.common_lb_config.healthy_panic_threshold.value: 101 is not a percentage",
            ),
        ];
        for (extra, want) in cases {
            let error = cluster_with(extra).unwrap_err().to_string();
            assert!(error.starts_with(want), "want {want:?}, got {error:?}");
        }
    }

    /// Towards an upstream the windows are accepted (hyper picks its own) and a stream
    /// limit is refused, in either place the options may be given.
    #[test]
    fn upstream_http2_options() {
        let windows =
            json!({"initial_stream_window_size": 65536, "initial_connection_window_size": 1048576});
        let c = cluster_with(json!({"http2_protocol_options": windows})).unwrap();
        assert_eq!(c.protocol, UpstreamProtocol::Http2);
        let error = cluster_with(json!({"http2_protocol_options": {"max_concurrent_streams": 8}}))
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "c.http2_protocol_options.max_concurrent_streams: max_concurrent_streams is not supported yet on a cluster"
        );
        let typed = json!({"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {"max_concurrent_streams": 8}},
        }});
        let error = cluster_with(json!({"typed_extension_protocol_options": typed}))
            .unwrap_err()
            .to_string();
        assert!(
            error.ends_with(
                "explicit_http_config.http2_protocol_options.max_concurrent_streams: max_concurrent_streams is not supported yet on a cluster"
            ),
            "{error}"
        );
    }
}
