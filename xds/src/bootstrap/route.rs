//! `config.route.v3.RouteConfiguration` and its parts.

use std::time::Duration;

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{duration, proto_enum, redirect_code, DataSource, Unsupported};
use crate::model::AppendAction;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfiguration {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub virtual_hosts: Vec<VirtualHost>,
    #[serde(default)]
    pub request_headers_to_add: Vec<HeaderValueOption>,
    #[serde(default)]
    pub request_headers_to_remove: Vec<String>,
    #[serde(default)]
    pub response_headers_to_add: Vec<HeaderValueOption>,
    #[serde(default)]
    pub response_headers_to_remove: Vec<String>,
    /// Default true for static route configs: a route naming an unknown cluster is an error.
    pub validate_clusters: Option<bool>,
    /// Default 4096, as in Envoy.
    pub max_direct_response_body_size_bytes: Option<u32>,
    pub vhds: Option<Unsupported>,
    pub internal_only_headers: Option<Unsupported>,
    pub most_specific_header_mutations_wins: Option<Unsupported>,
    pub cluster_specifier_plugins: Option<Unsupported>,
    pub request_mirror_policies: Option<Unsupported>,
    /// Filter configs by filter name, decoded by the translator once it reads `@type`.
    #[serde(default)]
    pub typed_per_filter_config: Map<String, Value>,
    pub ignore_port_in_host_matching: Option<Unsupported>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualHost {
    pub name: String,
    pub metadata: Option<super::Metadata>,
    #[serde(default)]
    pub domains: Vec<String>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub request_headers_to_add: Vec<HeaderValueOption>,
    #[serde(default)]
    pub request_headers_to_remove: Vec<String>,
    #[serde(default)]
    pub response_headers_to_add: Vec<HeaderValueOption>,
    #[serde(default)]
    pub response_headers_to_remove: Vec<String>,
    pub require_tls: Option<Unsupported>,
    pub virtual_clusters: Option<Unsupported>,
    pub rate_limits: Option<Unsupported>,
    pub cors: Option<Unsupported>,
    /// Filter configs by filter name, decoded by the translator once it reads `@type`.
    #[serde(default)]
    pub typed_per_filter_config: Map<String, Value>,
    pub include_request_attempt_count: Option<bool>,
    pub include_attempt_count_in_response: Option<Unsupported>,
    pub retry_policy: Option<RetryPolicy>,
    pub hedge_policy: Option<HedgePolicy>,
    pub per_request_buffer_limit_bytes: Option<Unsupported>,
    pub request_mirror_policies: Option<Unsupported>,
    pub matcher: Option<Unsupported>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    #[serde(default)]
    pub name: String,
    pub r#match: RouteMatch,
    pub route: Option<RouteAction>,
    pub redirect: Option<RedirectAction>,
    pub direct_response: Option<DirectResponseAction>,
    #[serde(default)]
    pub request_headers_to_add: Vec<HeaderValueOption>,
    #[serde(default)]
    pub request_headers_to_remove: Vec<String>,
    #[serde(default)]
    pub response_headers_to_add: Vec<HeaderValueOption>,
    #[serde(default)]
    pub response_headers_to_remove: Vec<String>,
    pub metadata: Option<super::Metadata>,
    pub decorator: Option<Unsupported>,
    /// Filter configs by filter name, decoded by the translator once it reads `@type`.
    #[serde(default)]
    pub typed_per_filter_config: Map<String, Value>,
    pub tracing: Option<Unsupported>,
    pub per_request_buffer_limit_bytes: Option<Unsupported>,
    pub filter_action: Option<Unsupported>,
    pub non_forwarding_action: Option<Unsupported>,
    pub stat_prefix: Option<Unsupported>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    pub prefix: Option<String>,
    pub path: Option<String>,
    pub safe_regex: Option<RegexMatcher>,
    pub path_separated_prefix: Option<String>,
    pub case_sensitive: Option<bool>,
    #[serde(default)]
    pub headers: Vec<HeaderMatcher>,
    #[serde(default)]
    pub query_parameters: Vec<QueryParameterMatcher>,
    pub grpc: Option<Unsupported>,
    pub runtime_fraction: Option<Unsupported>,
    pub tls_context: Option<Unsupported>,
    pub connect_matcher: Option<Unsupported>,
    pub path_match_policy: Option<Unsupported>,
    pub dynamic_metadata: Option<Unsupported>,
    pub filter_state: Option<Unsupported>,
}

/// `type.matcher.v3.RegexMatcher`; RE2 syntax, compiled with the `regex` crate.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegexMatcher {
    pub regex: String,
    pub google_re2: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatcher {
    pub name: String,
    pub exact_match: Option<String>,
    pub prefix_match: Option<String>,
    pub suffix_match: Option<String>,
    pub contains_match: Option<String>,
    pub safe_regex_match: Option<RegexMatcher>,
    pub present_match: Option<bool>,
    pub range_match: Option<Int64Range>,
    pub string_match: Option<StringMatcher>,
    pub invert_match: Option<bool>,
    pub treat_missing_header_as_empty: Option<Unsupported>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Int64Range {
    pub start: i64,
    pub end: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StringMatcher {
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub suffix: Option<String>,
    pub contains: Option<String>,
    pub safe_regex: Option<RegexMatcher>,
    pub ignore_case: Option<bool>,
    pub custom: Option<Unsupported>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryParameterMatcher {
    pub name: String,
    pub string_match: Option<StringMatcher>,
    pub present_match: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteAction {
    pub cluster: Option<String>,
    pub weighted_clusters: Option<WeightedClusters>,
    pub cluster_header: Option<String>,
    pub prefix_rewrite: Option<String>,
    pub regex_rewrite: Option<RegexRewrite>,
    pub host_rewrite_literal: Option<String>,
    pub auto_host_rewrite: Option<bool>,
    #[serde(default, deserialize_with = "duration")]
    pub timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub idle_timeout: Option<Duration>,
    pub retry_policy: Option<RetryPolicy>,
    pub retry_policy_typed_config: Option<Unsupported>,
    #[serde(default)]
    pub hash_policy: Vec<HashPolicy>,
    pub cors: Option<Unsupported>,
    pub request_mirror_policies: Option<Unsupported>,
    pub rate_limits: Option<Unsupported>,
    pub include_vh_rate_limits: Option<Unsupported>,
    #[serde(default, deserialize_with = "proto_enum")]
    pub priority: Option<super::cluster::RoutingPriority>,
    pub max_stream_duration: Option<MaxStreamDuration>,
    pub max_grpc_timeout: Option<Unsupported>,
    pub grpc_timeout_offset: Option<Unsupported>,
    pub upgrade_configs: Option<Unsupported>,
    pub host_rewrite_header: Option<Unsupported>,
    pub host_rewrite_path_regex: Option<Unsupported>,
    pub append_x_forwarded_host: Option<Unsupported>,
    pub cluster_specifier_plugin: Option<Unsupported>,
    pub inline_cluster_specifier_plugin: Option<Unsupported>,
    pub cluster_not_found_response_code: Option<Unsupported>,
    pub metadata_match: Option<Unsupported>,
    pub path_rewrite_policy: Option<Unsupported>,
    pub internal_redirect_policy: Option<Unsupported>,
    pub hedge_policy: Option<HedgePolicy>,
    pub early_data_policy: Option<Unsupported>,
}

/// `RouteAction.HashPolicy`: exactly one of the policy fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HashPolicy {
    pub header: Option<HeaderHashPolicy>,
    pub cookie: Option<CookieHashPolicy>,
    pub connection_properties: Option<ConnectionPropertiesHashPolicy>,
    pub query_parameter: Option<QueryParameterHashPolicy>,
    pub filter_state: Option<FilterStateHashPolicy>,
    #[serde(default)]
    pub terminal: bool,
}

/// `RouteAction.HashPolicy.FilterState`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterStateHashPolicy {
    pub key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderHashPolicy {
    pub header_name: String,
    pub regex_rewrite: Option<Unsupported>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CookieHashPolicy {
    pub name: String,
    #[serde(default, deserialize_with = "duration")]
    pub ttl: Option<Duration>,
    #[serde(default)]
    pub path: String,
    pub attributes: Option<Unsupported>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionPropertiesHashPolicy {
    #[serde(default)]
    pub source_ip: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryParameterHashPolicy {
    pub name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedClusters {
    #[serde(default)]
    pub clusters: Vec<ClusterWeight>,
    /// Deprecated in Envoy; when given it must equal the sum of the weights.
    pub total_weight: Option<u32>,
    pub runtime_key_prefix: Option<Unsupported>,
    pub header_name: Option<Unsupported>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterWeight {
    pub name: String,
    pub weight: Option<u32>,
    #[serde(default)]
    pub request_headers_to_add: Vec<HeaderValueOption>,
    #[serde(default)]
    pub request_headers_to_remove: Vec<String>,
    #[serde(default)]
    pub response_headers_to_add: Vec<HeaderValueOption>,
    #[serde(default)]
    pub response_headers_to_remove: Vec<String>,
    pub cluster_header: Option<Unsupported>,
    pub metadata_match: Option<Unsupported>,
    pub typed_per_filter_config: Option<Unsupported>,
    pub host_rewrite_literal: Option<Unsupported>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegexRewrite {
    pub pattern: RegexMatcher,
    /// RE2 rewrite syntax: `\1` names a capture group.
    pub substitution: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectAction {
    pub https_redirect: Option<bool>,
    pub scheme_redirect: Option<String>,
    pub host_redirect: Option<String>,
    pub port_redirect: Option<u16>,
    pub path_redirect: Option<String>,
    pub prefix_rewrite: Option<String>,
    pub regex_rewrite: Option<RegexRewrite>,
    #[serde(default, deserialize_with = "redirect_code")]
    pub response_code: Option<u16>,
    pub strip_query: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectResponseAction {
    pub status: u16,
    pub body: Option<DataSource>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderValueOption {
    pub header: HeaderValue,
    /// Legacy: `false` means overwrite, `true` (the default) append.
    pub append: Option<bool>,
    #[serde(default, deserialize_with = "proto_enum")]
    pub append_action: Option<AppendAction>,
    pub keep_empty_value: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderValue {
    pub key: String,
    #[serde(default)]
    pub value: String,
    pub raw_value: Option<Unsupported>,
}

/// `config.route.v3.RetryPolicy`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    #[serde(default)]
    pub retry_on: String,
    pub num_retries: Option<u32>,
    #[serde(default, deserialize_with = "duration")]
    pub per_try_timeout: Option<Duration>,
    #[serde(default)]
    pub retriable_status_codes: Vec<u32>,
    #[serde(default)]
    pub retriable_headers: Vec<HeaderMatcher>,
    pub retry_back_off: Option<RetryBackOff>,
    #[serde(default)]
    pub retry_host_predicate: Vec<RetryHostPredicate>,
    pub host_selection_retry_max_attempts: Option<i64>,
    #[serde(default, deserialize_with = "duration")]
    pub per_try_idle_timeout: Option<Duration>,
    pub retry_priority: Option<Unsupported>,
    pub retry_options_predicates: Option<Unsupported>,
    pub rate_limited_retry_back_off: Option<Unsupported>,
    pub retriable_request_headers: Option<Unsupported>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBackOff {
    #[serde(default, deserialize_with = "duration")]
    pub base_interval: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub max_interval: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryHostPredicate {
    pub name: String,
    pub typed_config: Option<IgnoredAny>,
}

/// `config.route.v3.HedgePolicy`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HedgePolicy {
    pub initial_requests: Option<u32>,
    pub additional_request_chance: Option<super::FractionalPercent>,
    pub hedge_on_per_try_timeout: Option<bool>,
}

/// `RouteAction.MaxStreamDuration`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaxStreamDuration {
    #[serde(default, deserialize_with = "duration")]
    pub max_stream_duration: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub grpc_timeout_header_max: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub grpc_timeout_header_offset: Option<Duration>,
}
