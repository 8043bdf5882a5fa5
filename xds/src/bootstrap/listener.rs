//! `config.listener.v3.Listener`, the HTTP connection manager and access loggers.

use std::time::Duration;

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{
    duration, proto_enum, Address, DataSource, Http1ProtocolOptions, Http2ProtocolOptions,
    RouteConfiguration, Unsupported,
};
use crate::model::{CodecType, ServerHeaderTransformation};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub name: String,
    pub address: Address,
    #[serde(default)]
    pub filter_chains: Vec<FilterChain>,
    pub per_connection_buffer_limit_bytes: Option<u32>,
    /// Read by plugins as `xds.listener_direction`.
    #[serde(default, deserialize_with = "super::proto_enum")]
    pub traffic_direction: Option<TrafficDirection>,
    pub metadata: Option<super::Metadata>,
    pub stat_prefix: Option<Unsupported>,
    pub additional_addresses: Option<Unsupported>,
    pub default_filter_chain: Option<Unsupported>,
    pub filter_chain_matcher: Option<Unsupported>,
    pub listener_filters: Option<Unsupported>,
    pub listener_filters_timeout: Option<Unsupported>,
    pub continue_on_listener_filters_timeout: Option<Unsupported>,
    pub use_original_dst: Option<Unsupported>,
    pub transparent: Option<Unsupported>,
    pub freebind: Option<Unsupported>,
    pub socket_options: Option<Unsupported>,
    pub tcp_fast_open_queue_length: Option<Unsupported>,
    pub tcp_backlog_size: Option<Unsupported>,
    pub bind_to_port: Option<Unsupported>,
    pub enable_reuse_port: Option<Unsupported>,
    pub connection_balance_config: Option<Unsupported>,
    pub udp_listener_config: Option<Unsupported>,
    pub api_listener: Option<Unsupported>,
    pub internal_listener: Option<Unsupported>,
    pub access_log: Option<Unsupported>,
    #[serde(default, deserialize_with = "super::proto_enum")]
    pub drain_type: Option<DrainType>,
    pub enable_mptcp: Option<Unsupported>,
    pub ignore_global_conn_limit: Option<Unsupported>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterChain {
    #[serde(default)]
    pub filters: Vec<Filter>,
    /// Read by plugins as `xds.filter_chain_name`.
    #[serde(default)]
    pub name: String,
    pub metadata: Option<IgnoredAny>,
    pub filter_chain_match: Option<Unsupported>,
    pub transport_socket: Option<Unsupported>,
    pub transport_socket_connect_timeout: Option<Unsupported>,
    pub use_proxy_proto: Option<Unsupported>,
    pub on_demand_configuration: Option<Unsupported>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    pub name: String,
    pub typed_config: Option<Value>,
    pub config_discovery: Option<Unsupported>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConnectionManager {
    pub stat_prefix: String,
    #[serde(default, deserialize_with = "proto_enum")]
    pub codec_type: Option<CodecType>,
    pub route_config: Option<RouteConfiguration>,
    #[serde(default)]
    pub http_filters: Vec<HttpFilter>,
    #[serde(default)]
    pub access_log: Vec<AccessLog>,
    #[serde(default, deserialize_with = "duration")]
    pub request_headers_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub stream_idle_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub request_timeout: Option<Duration>,
    pub common_http_protocol_options: Option<DownstreamCommonHttpProtocolOptions>,
    pub max_request_headers_kb: Option<u32>,
    pub use_remote_address: Option<bool>,
    pub xff_num_trusted_hops: Option<u32>,
    pub generate_request_id: Option<bool>,
    #[serde(default)]
    pub upgrade_configs: Vec<UpgradeConfig>,
    pub server_name: Option<String>,
    pub http_protocol_options: Option<Http1ProtocolOptions>,
    pub http2_protocol_options: Option<Http2ProtocolOptions>,
    pub rds: Option<Unsupported>,
    pub scoped_routes: Option<Unsupported>,
    pub tracing: Option<Unsupported>,
    pub http3_protocol_options: Option<Unsupported>,
    #[serde(default, deserialize_with = "proto_enum")]
    pub server_header_transformation: Option<ServerHeaderTransformation>,
    pub scheme_header_transformation: Option<Unsupported>,
    pub max_request_headers_count: Option<Unsupported>,
    pub drain_timeout: Option<Unsupported>,
    pub delayed_close_timeout: Option<Unsupported>,
    pub access_log_options: Option<Unsupported>,
    pub internal_address_config: Option<InternalAddressConfig>,
    pub skip_xff_append: Option<Unsupported>,
    pub via: Option<Unsupported>,
    pub add_user_agent: Option<Unsupported>,
    pub preserve_external_request_id: Option<Unsupported>,
    pub always_set_request_id_in_response: Option<Unsupported>,
    pub forward_client_cert_details: Option<Unsupported>,
    pub set_current_client_cert_details: Option<Unsupported>,
    pub proxy_100_continue: Option<Unsupported>,
    pub normalize_path: Option<Unsupported>,
    pub merge_slashes: Option<Unsupported>,
    pub path_with_escaped_slashes_action: Option<Unsupported>,
    pub path_normalization_options: Option<Unsupported>,
    pub local_reply_config: Option<Unsupported>,
    pub strip_matching_host_port: Option<Unsupported>,
    pub strip_any_host_port: Option<Unsupported>,
    pub stream_error_on_invalid_http_message: Option<Unsupported>,
    pub request_id_extension: Option<Unsupported>,
    pub original_ip_detection_extensions: Option<Unsupported>,
    pub early_header_mutation_extensions: Option<Unsupported>,
    pub represent_ipv4_remote_address_as_ipv4_mapped_ipv6: Option<Unsupported>,
}

/// The connection manager's `common_http_protocol_options`: like a cluster's, plus
/// `max_stream_duration`, which bounds each downstream stream.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DownstreamCommonHttpProtocolOptions {
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Option<Duration>,
    #[serde(deserialize_with = "duration")]
    pub max_stream_duration: Option<Duration>,
    pub max_connection_duration: Option<Unsupported>,
    pub max_headers_count: Option<Unsupported>,
    pub max_response_headers_kb: Option<Unsupported>,
    pub headers_with_underscores_action: Option<Unsupported>,
    pub max_requests_per_connection: Option<Unsupported>,
}

/// `HttpConnectionManager.InternalAddressConfig`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InternalAddressConfig {
    pub unix_sockets: bool,
    pub cidr_ranges: Vec<CidrRange>,
}

/// `config.core.v3.CidrRange`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CidrRange {
    pub address_prefix: String,
    pub prefix_len: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeConfig {
    pub upgrade_type: String,
    pub enabled: Option<bool>,
    pub filters: Option<Unsupported>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpFilter {
    pub name: String,
    pub typed_config: Option<Value>,
    pub is_optional: Option<Unsupported>,
    pub disabled: Option<Unsupported>,
    pub config_discovery: Option<Unsupported>,
}

/// `extensions.filters.http.router.v3.Router`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Router {
    /// No `x-envoy-*` headers of the router's own: see the model's field.
    pub suppress_envoy_headers: Option<bool>,
    /// Accepted and ignored (tracing is not supported).
    pub start_child_span: Option<IgnoredAny>,
    /// Accepted and ignored.
    pub dynamic_stats: Option<IgnoredAny>,
    pub upstream_log: Option<Unsupported>,
    pub upstream_log_options: Option<Unsupported>,
    pub upstream_http_filters: Option<Unsupported>,
    pub strict_check_headers: Option<Unsupported>,
    pub respect_expected_rq_timeout: Option<Unsupported>,
    pub suppress_grpc_request_failure_code_stats: Option<Unsupported>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLog {
    pub name: String,
    pub typed_config: Option<Value>,
    pub filter: Option<Unsupported>,
}

/// `extensions.access_loggers.file.v3.FileAccessLog`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAccessLog {
    pub path: String,
    pub log_format: Option<SubstitutionFormatString>,
    /// Deprecated text form of `log_format.text_format_source`.
    pub format: Option<String>,
    /// Deprecated form of `log_format.json_format`.
    pub json_format: Option<Map<String, Value>>,
    pub typed_json_format: Option<Unsupported>,
}

/// `extensions.access_loggers.stream.v3.StdoutAccessLog` / `StderrAccessLog`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamAccessLog {
    pub log_format: Option<SubstitutionFormatString>,
}

/// `config.core.v3.SubstitutionFormatString`: exactly one of the three formats.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubstitutionFormatString {
    pub text_format: Option<String>,
    pub text_format_source: Option<DataSource>,
    pub json_format: Option<Map<String, Value>>,
    pub omit_empty_values: Option<Unsupported>,
    pub content_type: Option<Unsupported>,
    pub formatters: Option<Unsupported>,
    pub json_format_options: Option<Unsupported>,
}

/// `extensions.filters.http.wasm.v3.Wasm`, and `extensions.filters.network.wasm.v3.Wasm`
/// (the same message).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wasm {
    pub config: Option<WasmPluginConfig>,
}

/// `extensions.wasm.v3.WasmService`: a plugin run beside the listeners (bootstrap
/// extension `envoy.bootstrap.wasm`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WasmService {
    pub config: Option<WasmPluginConfig>,
    #[serde(default)]
    pub singleton: bool,
}

/// `extensions.wasm.v3.PluginConfig`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WasmPluginConfig {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub root_id: String,
    pub vm_config: Option<WasmVmConfig>,
    /// A protobuf `Any`: `StringValue`, `BytesValue` or `Struct`.
    pub configuration: Option<Value>,
    #[serde(default)]
    pub fail_open: bool,
    pub failure_policy: Option<String>,
    pub capability_restriction_config: Option<Unsupported>,
    pub allow_on_headers_stop_iteration: Option<Unsupported>,
}

/// `extensions.wasm.v3.VmConfig`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WasmVmConfig {
    #[serde(default)]
    pub vm_id: String,
    #[serde(default)]
    pub runtime: String,
    pub code: Option<AsyncDataSource>,
    /// A protobuf `Any`, as `PluginConfig.configuration`.
    pub configuration: Option<Value>,
    /// Accepted and ignored: wasmtime compiles every module itself.
    pub allow_precompiled: Option<IgnoredAny>,
    /// Accepted and ignored: Strait fetches `code.remote` before it accepts a config,
    /// so an accepted config never waits on a code cache miss.
    pub nack_on_code_cache_miss: Option<IgnoredAny>,
    pub environment_variables: Option<WasmEnvironment>,
}

/// `extensions.wasm.v3.EnvironmentVariables`: what the plugin reads through WASI.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WasmEnvironment {
    /// Names of the proxy's own environment variables to pass on (when set).
    #[serde(default)]
    pub host_env_keys: Vec<String>,
    #[serde(default)]
    pub key_values: std::collections::BTreeMap<String, String>,
}

/// `config.core.v3.AsyncDataSource`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AsyncDataSource {
    pub local: Option<DataSource>,
    pub remote: Option<RemoteDataSource>,
}

/// `config.core.v3.RemoteDataSource`: fetched through a configured cluster and
/// checked against `sha256`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteDataSource {
    pub http_uri: Option<HttpUri>,
    #[serde(default)]
    pub sha256: String,
    pub retry_policy: Option<RemoteRetryPolicy>,
}

/// `config.core.v3.HttpUri`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpUri {
    #[serde(default)]
    pub uri: String,
    #[serde(default)]
    pub cluster: String,
    #[serde(default, deserialize_with = "duration")]
    pub timeout: Option<Duration>,
}

/// `config.core.v3.RetryPolicy`, as a `RemoteDataSource` uses it: Envoy reads only
/// `num_retries` and `retry_back_off` there, so the other fields are refused rather
/// than silently doing nothing.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteRetryPolicy {
    pub retry_back_off: Option<super::RetryBackOff>,
    pub num_retries: Option<u32>,
    pub retry_on: Option<Unsupported>,
    pub retry_priority: Option<Unsupported>,
    pub retry_host_predicate: Option<Unsupported>,
    pub host_selection_retry_max_attempts: Option<Unsupported>,
}

/// `config.listener.v3.Listener.DrainType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainType {
    Default,
    ModifyOnly,
}

impl super::ProtoEnum for DrainType {
    const VALUES: &'static [(&'static str, i64, Option<Self>)] = &[
        ("DEFAULT", 0, Some(Self::Default)),
        ("MODIFY_ONLY", 1, Some(Self::ModifyOnly)),
    ];
}

/// `config.core.v3.TrafficDirection`, as its number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrafficDirection(pub i64);

impl super::ProtoEnum for TrafficDirection {
    const VALUES: &'static [(&'static str, i64, Option<Self>)] = &[
        ("UNSPECIFIED", 0, Some(Self(0))),
        ("INBOUND", 1, Some(Self(1))),
        ("OUTBOUND", 2, Some(Self(2))),
    ];
}

/// `extensions.filters.http.set_filter_state.v3.Config`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetFilterState {
    #[serde(default)]
    pub on_request_headers: Vec<FilterStateValue>,
}

/// `extensions.filters.common.set_filter_state.v3.FilterStateValue`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterStateValue {
    #[serde(default)]
    pub object_key: String,
    #[serde(default)]
    pub factory_key: String,
    pub format_string: Option<SubstitutionFormatString>,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default, deserialize_with = "super::proto_enum")]
    pub shared_with_upstream: Option<SharedWithUpstream>,
    #[serde(default)]
    pub skip_if_empty: bool,
}

/// `FilterStateValue.SharedWithUpstream`: only `NONE`, since Strait does not pool
/// upstream connections by filter state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedWithUpstream;

impl super::ProtoEnum for SharedWithUpstream {
    const VALUES: &'static [(&'static str, i64, Option<Self>)] = &[
        ("NONE", 0, Some(Self)),
        ("ONCE", 1, None),
        ("TRANSITIVE", 2, None),
    ];
}

/// `extensions.filters.http.fault.v3.HTTPFault`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpFault {
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
    #[serde(default)]
    pub upstream_cluster: String,
    #[serde(default)]
    pub headers: Vec<super::HeaderMatcher>,
    pub max_active_faults: Option<u32>,
    /// Runtime keys: Strait has no runtime layer, so the configured values apply, as in
    /// Envoy with an empty runtime.
    pub delay_percent_runtime: Option<IgnoredAny>,
    pub abort_percent_runtime: Option<IgnoredAny>,
    pub delay_duration_runtime: Option<IgnoredAny>,
    pub abort_http_status_runtime: Option<IgnoredAny>,
    pub abort_grpc_status_runtime: Option<IgnoredAny>,
    pub max_active_faults_runtime: Option<IgnoredAny>,
    pub response_rate_limit_percent_runtime: Option<IgnoredAny>,
    /// Accepted and ignored: per-downstream-cluster stats are not kept at all.
    pub disable_downstream_cluster_stats: Option<IgnoredAny>,
    pub downstream_nodes: Option<Unsupported>,
    pub response_rate_limit: Option<Unsupported>,
    pub filter_metadata: Option<Unsupported>,
}

/// `extensions.filters.http.health_check.v3.HealthCheck`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckFilter {
    /// A `BoolValue` Envoy requires; the translator refuses a config without it.
    pub pass_through_mode: Option<bool>,
    #[serde(default, deserialize_with = "duration")]
    pub cache_time: Option<Duration>,
    #[serde(default)]
    pub headers: Vec<super::HeaderMatcher>,
    /// By cluster name; sorted, so a check visits the clusters in one order.
    #[serde(default)]
    pub cluster_min_healthy_percentages: std::collections::BTreeMap<String, super::Percent>,
}

/// `extensions.filters.common.fault.v3.FaultDelay`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultDelay {
    #[serde(default, deserialize_with = "duration")]
    pub fixed_delay: Option<Duration>,
    pub header_delay: Option<HeaderControlled>,
    pub percentage: Option<FractionalPercent>,
    /// Deprecated; its only value, FIXED, changes nothing.
    #[serde(rename = "type")]
    pub kind: Option<IgnoredAny>,
}

/// `extensions.filters.http.fault.v3.FaultAbort`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultAbort {
    pub http_status: Option<u32>,
    pub grpc_status: Option<u32>,
    pub header_abort: Option<HeaderControlled>,
    pub percentage: Option<FractionalPercent>,
}

/// `type.v3.FractionalPercent`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FractionalPercent {
    #[serde(default)]
    pub numerator: u32,
    #[serde(default, deserialize_with = "proto_enum")]
    pub denominator: Option<Denominator>,
}

/// `FractionalPercent.DenominatorType`, as the number it stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denominator(pub u32);

impl super::ProtoEnum for Denominator {
    const VALUES: &'static [(&'static str, i64, Option<Self>)] = &[
        ("HUNDRED", 0, Some(Denominator(100))),
        ("TEN_THOUSAND", 1, Some(Denominator(10_000))),
        ("MILLION", 2, Some(Denominator(1_000_000))),
    ];
}

/// `HeaderDelay` / `HeaderAbort`: empty messages whose presence hands the fault to the
/// request's `x-envoy-fault-*` headers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderControlled {}

/// `extensions.filters.http.local_ratelimit.v3.LocalRateLimit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalRateLimit {
    #[serde(default)]
    pub stat_prefix: String,
    pub status: Option<HttpStatus>,
    pub token_bucket: Option<TokenBucket>,
    pub filter_enabled: Option<RuntimeFractionalPercent>,
    pub filter_enforced: Option<RuntimeFractionalPercent>,
    #[serde(default)]
    pub request_headers_to_add_when_not_enforced: Vec<super::HeaderValueOption>,
    #[serde(default)]
    pub response_headers_to_add: Vec<super::HeaderValueOption>,
    /// Only picks rate limit actions for `descriptors`; checked (0..=10), then unused.
    pub stage: Option<u32>,
    pub local_rate_limit_per_downstream_connection: Option<bool>,
    #[serde(default, deserialize_with = "proto_enum")]
    pub enable_x_ratelimit_headers: Option<XRateLimitHeaders>,
    pub rate_limited_as_resource_exhausted: Option<bool>,
    pub descriptors: Option<Unsupported>,
    pub local_cluster_rate_limit: Option<Unsupported>,
    pub vh_rate_limits: Option<Unsupported>,
    pub always_consume_default_token_bucket: Option<Unsupported>,
    pub rate_limits: Option<Unsupported>,
    pub max_dynamic_descriptors: Option<Unsupported>,
}

/// `type.v3.HttpStatus`; the code by name (`TooManyRequests`) or number.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpStatus {
    #[serde(default, deserialize_with = "proto_enum")]
    pub code: Option<StatusCode>,
}

/// `type.v3.StatusCode`, as the status it stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusCode(pub u16);

impl super::ProtoEnum for StatusCode {
    const VALUES: &'static [(&'static str, i64, Option<Self>)] = &[
        ("Empty", 0, Some(StatusCode(0))),
        ("Continue", 100, Some(StatusCode(100))),
        ("OK", 200, Some(StatusCode(200))),
        ("Created", 201, Some(StatusCode(201))),
        ("Accepted", 202, Some(StatusCode(202))),
        ("NonAuthoritativeInformation", 203, Some(StatusCode(203))),
        ("NoContent", 204, Some(StatusCode(204))),
        ("ResetContent", 205, Some(StatusCode(205))),
        ("PartialContent", 206, Some(StatusCode(206))),
        ("MultiStatus", 207, Some(StatusCode(207))),
        ("AlreadyReported", 208, Some(StatusCode(208))),
        ("IMUsed", 226, Some(StatusCode(226))),
        ("MultipleChoices", 300, Some(StatusCode(300))),
        ("MovedPermanently", 301, Some(StatusCode(301))),
        ("Found", 302, Some(StatusCode(302))),
        ("SeeOther", 303, Some(StatusCode(303))),
        ("NotModified", 304, Some(StatusCode(304))),
        ("UseProxy", 305, Some(StatusCode(305))),
        ("TemporaryRedirect", 307, Some(StatusCode(307))),
        ("PermanentRedirect", 308, Some(StatusCode(308))),
        ("BadRequest", 400, Some(StatusCode(400))),
        ("Unauthorized", 401, Some(StatusCode(401))),
        ("PaymentRequired", 402, Some(StatusCode(402))),
        ("Forbidden", 403, Some(StatusCode(403))),
        ("NotFound", 404, Some(StatusCode(404))),
        ("MethodNotAllowed", 405, Some(StatusCode(405))),
        ("NotAcceptable", 406, Some(StatusCode(406))),
        ("ProxyAuthenticationRequired", 407, Some(StatusCode(407))),
        ("RequestTimeout", 408, Some(StatusCode(408))),
        ("Conflict", 409, Some(StatusCode(409))),
        ("Gone", 410, Some(StatusCode(410))),
        ("LengthRequired", 411, Some(StatusCode(411))),
        ("PreconditionFailed", 412, Some(StatusCode(412))),
        ("PayloadTooLarge", 413, Some(StatusCode(413))),
        ("URITooLong", 414, Some(StatusCode(414))),
        ("UnsupportedMediaType", 415, Some(StatusCode(415))),
        ("RangeNotSatisfiable", 416, Some(StatusCode(416))),
        ("ExpectationFailed", 417, Some(StatusCode(417))),
        ("MisdirectedRequest", 421, Some(StatusCode(421))),
        ("UnprocessableEntity", 422, Some(StatusCode(422))),
        ("Locked", 423, Some(StatusCode(423))),
        ("FailedDependency", 424, Some(StatusCode(424))),
        ("UpgradeRequired", 426, Some(StatusCode(426))),
        ("PreconditionRequired", 428, Some(StatusCode(428))),
        ("TooManyRequests", 429, Some(StatusCode(429))),
        ("RequestHeaderFieldsTooLarge", 431, Some(StatusCode(431))),
        ("InternalServerError", 500, Some(StatusCode(500))),
        ("NotImplemented", 501, Some(StatusCode(501))),
        ("BadGateway", 502, Some(StatusCode(502))),
        ("ServiceUnavailable", 503, Some(StatusCode(503))),
        ("GatewayTimeout", 504, Some(StatusCode(504))),
        ("HTTPVersionNotSupported", 505, Some(StatusCode(505))),
        ("VariantAlsoNegotiates", 506, Some(StatusCode(506))),
        ("InsufficientStorage", 507, Some(StatusCode(507))),
        ("LoopDetected", 508, Some(StatusCode(508))),
        ("NotExtended", 510, Some(StatusCode(510))),
        ("NetworkAuthenticationRequired", 511, Some(StatusCode(511))),
    ];
}

/// `type.v3.TokenBucket`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucket {
    pub max_tokens: Option<u32>,
    pub tokens_per_fill: Option<u32>,
    #[serde(default, deserialize_with = "duration")]
    pub fill_interval: Option<Duration>,
    /// Names the bucket for xDS-delivered buckets; nothing here.
    pub name: Option<IgnoredAny>,
}

/// `config.core.v3.RuntimeFractionalPercent`. Strait has no runtime layer: the key is
/// accepted and never read, as Envoy reads it only when the runtime sets it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeFractionalPercent {
    pub default_value: Option<FractionalPercent>,
    pub runtime_key: Option<IgnoredAny>,
}

/// `common.ratelimit.v3.XRateLimitHeadersRFCVersion`: whether to send the headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XRateLimitHeaders(pub bool);

impl super::ProtoEnum for XRateLimitHeaders {
    const VALUES: &'static [(&'static str, i64, Option<Self>)] = &[
        ("OFF", 0, Some(XRateLimitHeaders(false))),
        ("DRAFT_VERSION_03", 1, Some(XRateLimitHeaders(true))),
    ];
}
