//! `config.cluster.v3.Cluster` and the upstream HTTP protocol options.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::Value;

use super::{
    duration, proto_enum, Address, CommonHttpProtocolOptions, HeaderValueOption,
    Http1ProtocolOptions, Http2ProtocolOptions, Int64Range, ProtoEnum, Unsupported,
};
use crate::model::{Discovery, DnsLookupFamily, EdsHealth, LbPolicy};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    pub name: String,
    #[serde(default, deserialize_with = "proto_enum")]
    pub r#type: Option<Discovery>,
    #[serde(default, deserialize_with = "duration")]
    pub connect_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "proto_enum")]
    pub lb_policy: Option<LbPolicy>,
    pub load_assignment: Option<ClusterLoadAssignment>,
    #[serde(default, deserialize_with = "proto_enum")]
    pub dns_lookup_family: Option<DnsLookupFamily>,
    #[serde(default, deserialize_with = "duration")]
    pub dns_refresh_rate: Option<Duration>,
    /// Accepted and ignored.
    pub respect_dns_ttl: Option<IgnoredAny>,
    /// Accepted and ignored.
    pub per_connection_buffer_limit_bytes: Option<IgnoredAny>,
    /// Deprecated: upstream HTTP/2. Prefer `typed_extension_protocol_options`.
    pub http2_protocol_options: Option<Http2ProtocolOptions>,
    /// Deprecated: upstream HTTP/1.1 (the default).
    pub http_protocol_options: Option<Http1ProtocolOptions>,
    /// Deprecated: moved into `HttpProtocolOptions`.
    pub common_http_protocol_options: Option<CommonHttpProtocolOptions>,
    /// Extension name → `Any`; decoded by the translator.
    #[serde(default)]
    pub typed_extension_protocol_options: BTreeMap<String, Value>,
    pub metadata: Option<super::Metadata>,
    /// The name the cluster's stats and `%UPSTREAM_CLUSTER%` go by.
    pub alt_stat_name: Option<String>,
    pub circuit_breakers: Option<CircuitBreakers>,
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default)]
    pub health_checks: Vec<HealthCheck>,
    pub transport_socket: Option<Unsupported>,
    pub transport_socket_matches: Option<Unsupported>,
    pub eds_cluster_config: Option<Unsupported>,
    pub cluster_type: Option<Unsupported>,
    pub lb_subset_config: Option<Unsupported>,
    pub ring_hash_lb_config: Option<RingHashLbConfig>,
    pub maglev_lb_config: Option<MaglevLbConfig>,
    pub original_dst_lb_config: Option<Unsupported>,
    pub least_request_lb_config: Option<Unsupported>,
    pub round_robin_lb_config: Option<Unsupported>,
    pub common_lb_config: Option<CommonLbConfig>,
    pub load_balancing_policy: Option<Unsupported>,
    pub upstream_bind_config: Option<Unsupported>,
    pub upstream_connection_options: Option<Unsupported>,
    pub upstream_http_protocol_options: Option<Unsupported>,
    pub dns_resolvers: Option<Unsupported>,
    pub dns_resolution_config: Option<Unsupported>,
    pub typed_dns_resolver_config: Option<Unsupported>,
    pub dns_failure_refresh_rate: Option<Unsupported>,
    pub use_tcp_for_dns_lookups: Option<Unsupported>,
    pub wait_for_warm_on_init: Option<Unsupported>,
    pub max_requests_per_connection: Option<Unsupported>,
    pub cleanup_interval: Option<Unsupported>,
    pub protocol_selection: Option<Unsupported>,
    pub close_connections_on_host_health_failure: Option<Unsupported>,
    pub ignore_health_on_host_removal: Option<Unsupported>,
    pub filters: Option<Unsupported>,
    pub track_cluster_stats: Option<Unsupported>,
    pub preconnect_policy: Option<Unsupported>,
    pub connection_pool_per_downstream_connection: Option<Unsupported>,
    pub lrs_server: Option<Unsupported>,
}

/// `config.cluster.v3.OutlierDetection`: the consecutive-5xx and consecutive
/// gateway-failure detectors, without split local-origin errors.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetection {
    pub consecutive_5xx: Option<u32>,
    pub consecutive_gateway_failure: Option<u32>,
    pub enforcing_consecutive_5xx: Option<u32>,
    pub enforcing_consecutive_gateway_failure: Option<u32>,
    #[serde(default, deserialize_with = "duration")]
    pub interval: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub base_ejection_time: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub max_ejection_time: Option<Duration>,
    pub max_ejection_percent: Option<u32>,
    pub split_external_local_origin_errors: Option<bool>,
    pub enforcing_success_rate: Option<u32>,
    pub success_rate_minimum_hosts: Option<u32>,
    pub success_rate_request_volume: Option<u32>,
    pub success_rate_stdev_factor: Option<u32>,
    pub consecutive_local_origin_failure: Option<u32>,
    pub enforcing_consecutive_local_origin_failure: Option<u32>,
    pub enforcing_local_origin_success_rate: Option<u32>,
    pub failure_percentage_threshold: Option<u32>,
    pub enforcing_failure_percentage: Option<u32>,
    pub enforcing_failure_percentage_local_origin: Option<u32>,
    pub failure_percentage_minimum_hosts: Option<u32>,
    pub failure_percentage_request_volume: Option<u32>,
    pub max_ejection_time_jitter: Option<Unsupported>,
    pub successful_active_health_check_uneject_host: Option<Unsupported>,
    pub monitors: Option<Unsupported>,
    pub always_eject_one_host: Option<Unsupported>,
}

/// `Cluster.CommonLbConfig`: only the panic threshold so far.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommonLbConfig {
    pub healthy_panic_threshold: Option<Percent>,
    pub zone_aware_lb_config: Option<Unsupported>,
    /// An empty message in Envoy; present turns on locality-weighted balancing.
    pub locality_weighted_lb_config: Option<IgnoredAny>,
    pub update_merge_window: Option<Unsupported>,
    pub ignore_new_hosts_until_first_hc: Option<Unsupported>,
    pub close_connections_on_host_set_change: Option<Unsupported>,
    pub consistent_hashing_lb_config: Option<Unsupported>,
    pub override_host_status: Option<Unsupported>,
}

/// `Cluster.RingHashLbConfig`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RingHashLbConfig {
    pub minimum_ring_size: Option<u64>,
    pub maximum_ring_size: Option<u64>,
    /// Only XX_HASH, the default.
    #[serde(default, deserialize_with = "proto_enum")]
    pub hash_function: Option<HashFunction>,
}

/// `RingHashLbConfig.HashFunction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashFunction {
    XxHash,
}

impl ProtoEnum for HashFunction {
    const VALUES: &'static [(&'static str, i64, Option<Self>)] = &[
        ("XX_HASH", 0, Some(Self::XxHash)),
        ("MURMUR_HASH_2", 1, None),
    ];
}

/// `Cluster.MaglevLbConfig`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaglevLbConfig {
    pub table_size: Option<u64>,
}

/// `type.v3.Percent`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Percent {
    #[serde(default)]
    pub value: f64,
}

/// `config.core.v3.HealthCheck`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    #[serde(default, deserialize_with = "duration")]
    pub timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub interval: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub interval_jitter: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub no_traffic_interval: Option<Duration>,
    pub unhealthy_threshold: Option<u32>,
    pub healthy_threshold: Option<u32>,
    pub http_health_check: Option<HttpHealthCheck>,
    pub tcp_health_check: Option<TcpHealthCheck>,
    pub grpc_health_check: Option<GrpcHealthCheck>,
    /// Accepted and ignored: Strait opens a connection per check (Envoy's
    /// `reuse_connection: false`).
    pub reuse_connection: Option<IgnoredAny>,
    /// Accepted and ignored: failures are logged at debug level.
    pub always_log_health_check_failures: Option<IgnoredAny>,
    pub always_log_health_check_success: Option<IgnoredAny>,
    pub custom_health_check: Option<Unsupported>,
    pub initial_jitter: Option<Unsupported>,
    pub interval_jitter_percent: Option<Unsupported>,
    pub alt_port: Option<Unsupported>,
    pub no_traffic_healthy_interval: Option<Unsupported>,
    pub unhealthy_interval: Option<Unsupported>,
    pub unhealthy_edge_interval: Option<Unsupported>,
    pub healthy_edge_interval: Option<Unsupported>,
    pub event_log_path: Option<Unsupported>,
    pub event_logger: Option<Unsupported>,
    pub event_service: Option<Unsupported>,
    pub tls_options: Option<Unsupported>,
    pub transport_socket_match_criteria: Option<Unsupported>,
}

/// `HealthCheck.HttpHealthCheck`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpHealthCheck {
    #[serde(default)]
    pub path: String,
    pub host: Option<String>,
    #[serde(default)]
    pub expected_statuses: Vec<Int64Range>,
    #[serde(default)]
    pub request_headers_to_add: Vec<HeaderValueOption>,
    #[serde(default, deserialize_with = "proto_enum")]
    pub codec_client_type: Option<CodecClientType>,
    pub send: Option<Unsupported>,
    pub receive: Option<Unsupported>,
    pub response_buffer_size: Option<Unsupported>,
    pub request_headers_to_remove: Option<Unsupported>,
    pub retriable_statuses: Option<Unsupported>,
    pub service_name_matcher: Option<Unsupported>,
    pub method: Option<Unsupported>,
}

/// `type.v3.CodecClientType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodecClientType {
    Http1,
    Http2,
}

impl ProtoEnum for CodecClientType {
    const VALUES: &'static [(&'static str, i64, Option<Self>)] = &[
        ("HTTP1", 0, Some(Self::Http1)),
        ("HTTP2", 1, Some(Self::Http2)),
        ("HTTP3", 2, None),
    ];
}

/// `HealthCheck.TcpHealthCheck`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpHealthCheck {
    pub send: Option<Payload>,
    #[serde(default)]
    pub receive: Vec<Payload>,
    pub proxy_protocol_config: Option<Unsupported>,
}

/// `HealthCheck.Payload`: hex `text` or base64 `binary`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Payload {
    pub text: Option<String>,
    pub binary: Option<String>,
}

/// `HealthCheck.GrpcHealthCheck`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcHealthCheck {
    #[serde(default)]
    pub service_name: String,
    pub authority: Option<String>,
    pub initial_metadata: Option<Unsupported>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterLoadAssignment {
    /// Accepted and ignored: the cluster's own name is used.
    pub cluster_name: Option<IgnoredAny>,
    #[serde(default)]
    pub endpoints: Vec<LocalityLbEndpoints>,
    pub named_endpoints: Option<Unsupported>,
    pub policy: Option<LoadAssignmentPolicy>,
}

/// `ClusterLoadAssignment.Policy`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadAssignmentPolicy {
    pub overprovisioning_factor: Option<u32>,
    pub drop_overloads: Option<Unsupported>,
    pub endpoint_stale_after: Option<Unsupported>,
    pub weighted_priority_health: Option<Unsupported>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalityLbEndpoints {
    #[serde(default)]
    pub lb_endpoints: Vec<LbEndpoint>,
    /// 0 is the highest; traffic spills to the next as health drops.
    pub priority: Option<u32>,
    /// Accepted; which locality a group is matters only through its index here
    /// (locality-weighted balancing weighs each `LocalityLbEndpoints` entry).
    pub locality: Option<IgnoredAny>,
    /// The locality's weight for `locality_weighted_lb_config`.
    pub load_balancing_weight: Option<u32>,
    pub proximity: Option<IgnoredAny>,
    pub leds_cluster_locality_config: Option<Unsupported>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LbEndpoint {
    pub endpoint: Endpoint,
    pub load_balancing_weight: Option<u32>,
    pub metadata: Option<super::Metadata>,
    #[serde(default, deserialize_with = "proto_enum")]
    pub health_status: Option<EdsHealth>,
    pub endpoint_name: Option<Unsupported>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub address: Address,
    /// The name `auto_host_rewrite` sends (see the model's `Endpoint::hostname`).
    pub hostname: Option<String>,
    pub health_check_config: Option<Unsupported>,
    pub additional_addresses: Option<Unsupported>,
}

/// `extensions.upstreams.http.v3.HttpProtocolOptions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpProtocolOptions {
    pub explicit_http_config: Option<ProtocolChoice>,
    pub use_downstream_protocol_config: Option<ProtocolChoice>,
    pub common_http_protocol_options: Option<CommonHttpProtocolOptions>,
    /// Needs TLS ALPN.
    pub auto_config: Option<Unsupported>,
    pub upstream_http_protocol_options: Option<Unsupported>,
    pub http_filters: Option<Unsupported>,
    pub header_validation_config: Option<Unsupported>,
}

/// `ExplicitHttpConfig` / `UseDownstreamHttpConfig`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProtocolChoice {
    pub http_protocol_options: Option<Http1ProtocolOptions>,
    pub http2_protocol_options: Option<Http2ProtocolOptions>,
    pub http3_protocol_options: Option<Unsupported>,
}

/// `config.cluster.v3.CircuitBreakers`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakers {
    #[serde(default)]
    pub thresholds: Vec<Thresholds>,
    #[serde(default)]
    pub per_host_thresholds: Vec<Thresholds>,
}

/// `CircuitBreakers.Thresholds`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    #[serde(default, deserialize_with = "proto_enum")]
    pub priority: Option<RoutingPriority>,
    pub max_connections: Option<u32>,
    pub max_pending_requests: Option<u32>,
    pub max_requests: Option<u32>,
    pub max_retries: Option<u32>,
    #[serde(default)]
    pub track_remaining: bool,
    pub retry_budget: Option<RetryBudget>,
    pub max_connection_pools: Option<Unsupported>,
}

/// `Thresholds.RetryBudget`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryBudget {
    pub budget_percent: Option<Percent>,
    pub min_retry_concurrency: Option<u32>,
}

/// `config.core.v3.RoutingPriority`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoutingPriority {
    Default,
    High,
}

impl ProtoEnum for RoutingPriority {
    const VALUES: &'static [(&'static str, i64, Option<Self>)] = &[
        ("DEFAULT", 0, Some(Self::Default)),
        ("HIGH", 1, Some(Self::High)),
    ];
}

/// `config.core.v3.HealthStatus` of an endpoint, as Envoy 1.40 reads it: `UNKNOWN`
/// and `HEALTHY` are healthy, `TIMEOUT` is unhealthy; `DEGRADED` is not supported
/// (Strait has no degraded load).
impl ProtoEnum for EdsHealth {
    const VALUES: &'static [(&'static str, i64, Option<Self>)] = &[
        ("UNKNOWN", 0, Some(Self::Healthy)),
        ("HEALTHY", 1, Some(Self::Healthy)),
        ("UNHEALTHY", 2, Some(Self::Unhealthy)),
        ("DRAINING", 3, Some(Self::Draining)),
        ("TIMEOUT", 4, Some(Self::Unhealthy)),
        ("DEGRADED", 5, None),
    ];
}
