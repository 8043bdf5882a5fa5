//! Clusters: discovery type, endpoints and upstream protocol.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use super::{socket_address, timeout_or, Clusters, ConfigError, Result, TypedConfig};
use crate::bootstrap::{self, HttpProtocolOptions, ProtocolChoice};
use crate::model::{Cluster, Discovery, DnsLookupFamily, Endpoint, LbPolicy, UpstreamProtocol};

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
        discovery,
        connect_timeout: positive(
            "connect_timeout",
            config.connect_timeout,
            Duration::from_secs(5),
        )?,
        lb_policy: config.lb_policy.unwrap_or(LbPolicy::RoundRobin),
        protocol,
        idle_timeout,
        dns_refresh_rate: positive(
            "dns_refresh_rate",
            config.dns_refresh_rate,
            Duration::from_secs(5),
        )?,
        dns_lookup_family: config.dns_lookup_family.unwrap_or(DnsLookupFamily::Auto),
        endpoints: endpoints(path, discovery, config.load_assignment.as_ref())?,
    })
}

fn endpoints(
    path: &str,
    discovery: Discovery,
    assignment: Option<&bootstrap::ClusterLoadAssignment>,
) -> Result<Vec<Endpoint>> {
    let mut endpoints = Vec::new();
    for (i, locality) in assignment.iter().flat_map(|a| &a.endpoints).enumerate() {
        let path = format!("{path}.load_assignment.endpoints[{i}]");
        match locality.priority {
            Some(priority) if priority != 0 => {
                let message = format!("priority {priority} is not supported yet");
                return Err(ConfigError::new(format!("{path}.priority"), message));
            }
            _ => {}
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
            endpoints.push(Endpoint {
                host: socket.address.clone(),
                port: socket.port_value,
                weight,
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
    let mut protocol = match config.http2_protocol_options {
        Some(_) => UpstreamProtocol::Http2,
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
                http2_protocol_options: Some(_),
                ..
            } => Ok(UpstreamProtocol::Http2),
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
