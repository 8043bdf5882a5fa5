//! Route configurations: virtual hosts and their index, routes, matchers and actions.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use regex::Regex;

use super::headers::{header_name, header_value, mutations};
use super::{data_source, local_ratelimit, timeout_or, Clusters, ConfigError, Result, TypedConfig};
use crate::bootstrap::{self, RegexMatcher, RegexRewrite, NOT_SUPPORTED};
use crate::model::{
    ClusterSpecifier, HashPolicy, HashPolicyKind, HeaderMatchKind, HeaderMatcher,
    MaxStreamDuration, PathMatch, PerFilterConfig, QueryParameterMatcher, Redirect, RetryOn,
    RetryPolicy, Route, RouteAction, RouteConfig, RouteMatch, RouteTarget, StringMatchKind,
    StringMatcher, VirtualHost, VirtualHostIndex, WeightedCluster,
};

/// What route translation needs from around it.
struct Context<'a> {
    clusters: &'a Clusters,
    validate_clusters: bool,
    max_body_bytes: usize,
}

impl Context<'_> {
    fn check_cluster(&self, path: &str, name: &str) -> Result<()> {
        match self.validate_clusters && !self.clusters.contains_key(name) {
            true => Err(ConfigError::new(path, format!("unknown cluster '{name}'"))),
            false => Ok(()),
        }
    }
}

pub(super) fn route_config(
    path: &str,
    config: &bootstrap::RouteConfiguration,
    clusters: &Clusters,
) -> Result<RouteConfig> {
    let context = Context {
        clusters,
        validate_clusters: config.validate_clusters.unwrap_or(true),
        max_body_bytes: config.max_direct_response_body_size_bytes.unwrap_or(4096) as usize,
    };
    let virtual_hosts = config
        .virtual_hosts
        .iter()
        .enumerate()
        .map(|(i, vhost)| virtual_host(&format!("{path}.virtual_hosts[{i}]"), vhost, &context))
        .collect::<Result<Vec<_>>>()?;
    Ok(RouteConfig {
        name: config.name.clone(),
        index: index(path, &virtual_hosts)?,
        virtual_hosts,
        headers: mutations(
            path,
            &config.request_headers_to_add,
            &config.request_headers_to_remove,
            &config.response_headers_to_add,
            &config.response_headers_to_remove,
        )?,
        typed_per_filter_config: typed_per_filter_config(path, &config.typed_per_filter_config)?,
    })
}

/// `typed_per_filter_config`: each filter's config by the filter's name. Only the
/// local rate limit filter has one so far; any other type is refused with its path.
fn typed_per_filter_config(
    path: &str,
    configs: &serde_json::Map<String, serde_json::Value>,
) -> Result<Vec<(String, PerFilterConfig)>> {
    configs
        .iter()
        .map(|(name, value)| {
            let path = format!("{path}.typed_per_filter_config.{name}");
            let typed = TypedConfig::parse(path, value)?;
            let config = match typed.type_name.as_str() {
                local_ratelimit::TYPE => PerFilterConfig::LocalRateLimit(Arc::new(
                    local_ratelimit::per_route(&typed, name)?,
                )),
                _ => return Err(typed.unsupported()),
            };
            Ok((name.clone(), config))
        })
        .collect()
}

fn virtual_host(
    path: &str,
    config: &bootstrap::VirtualHost,
    context: &Context,
) -> Result<VirtualHost> {
    if config.domains.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.domains"),
            "at least one domain is required",
        ));
    }
    let retry_policy = config
        .retry_policy
        .as_ref()
        .map(|p| retry_policy(&format!("{path}.retry_policy"), p).map(Arc::new))
        .transpose()?;
    let hedge = config
        .hedge_policy
        .as_ref()
        .map(|h| hedge_policy(&format!("{path}.hedge_policy"), h))
        .transpose()?;
    let inherited = Inherited {
        retry_policy: retry_policy.as_ref(),
        hedge_on_per_try_timeout: hedge,
    };
    Ok(VirtualHost {
        name: config.name.clone(),
        metadata: bootstrap::Metadata::filter_metadata(&config.metadata),
        domains: config.domains.clone(),
        include_request_attempt_count: config.include_request_attempt_count.unwrap_or(false),
        typed_per_filter_config: typed_per_filter_config(path, &config.typed_per_filter_config)?,
        routes: config
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| route(&format!("{path}.routes[{i}]"), r, context, &inherited))
            .collect::<Result<_>>()?,
        headers: mutations(
            path,
            &config.request_headers_to_add,
            &config.request_headers_to_remove,
            &config.response_headers_to_add,
            &config.response_headers_to_remove,
        )?,
    })
}

/// Envoy's domain index; a domain may appear once across all virtual hosts.
fn index(path: &str, virtual_hosts: &[VirtualHost]) -> Result<VirtualHostIndex> {
    let mut index = VirtualHostIndex::default();
    let mut seen = HashMap::new();
    for (v, vhost) in virtual_hosts.iter().enumerate() {
        for (d, domain) in vhost.domains.iter().enumerate() {
            let domain = domain.to_ascii_lowercase();
            if let Some(other) = seen.insert(domain.clone(), v) {
                let message = format!(
                    "domain '{domain}' is already used by virtual host '{}'",
                    virtual_hosts[other].name
                );
                return Err(ConfigError::new(
                    format!("{path}.virtual_hosts[{v}].domains[{d}]"),
                    message,
                ));
            }
            if domain == "*" {
                index.default = Some(v);
            } else if let Some(suffix) = domain.strip_prefix('*') {
                index.suffixes.push((suffix.to_owned(), v));
            } else if let Some(prefix) = domain.strip_suffix('*') {
                index.prefixes.push((prefix.to_owned(), v));
            } else {
                index.exact.insert(domain, v);
            }
        }
    }
    // Stable sorts: among equal lengths the first configured wins.
    index
        .suffixes
        .sort_by_key(|(suffix, _)| Reverse(suffix.len()));
    index
        .prefixes
        .sort_by_key(|(prefix, _)| Reverse(prefix.len()));
    Ok(index)
}

/// What a route takes from its virtual host unless it has its own.
struct Inherited<'a> {
    retry_policy: Option<&'a Arc<RetryPolicy>>,
    hedge_on_per_try_timeout: Option<bool>,
}

/// `hedge_policy`: `hedge_on_per_try_timeout`. `initial_requests` and
/// `additional_request_chance` are accepted and have no effect, exactly as in Envoy,
/// which documents them as not implemented (checked with Envoy 1.40:
/// `initial_requests: 3` with a 100% `additional_request_chance` still sends one
/// request upstream per client request).
/// A `retry_back_off` (route retries, `code.remote` fetches) with Envoy's checks:
/// `base_interval` (default `default_base`) at least 1 ms, `max_interval` (default
/// 10 × base) not below it. Returns (base, max); errors name the field under `path`.
pub(super) fn retry_back_off(
    path: &str,
    back_off: Option<&bootstrap::RetryBackOff>,
    default_base: Duration,
) -> Result<(Duration, Duration)> {
    let base = match back_off.map(|b| b.base_interval) {
        None => default_base,
        Some(Some(base)) if base >= Duration::from_millis(1) => base,
        Some(_) => {
            let message = "base_interval is required and must be at least 1ms";
            return Err(ConfigError::new(format!("{path}.base_interval"), message));
        }
    };
    let max = match back_off.and_then(|b| b.max_interval) {
        None => base * 10,
        Some(max) if max >= base => max,
        Some(_) => {
            let message = "max_interval must be greater than or equal to base_interval";
            return Err(ConfigError::new(format!("{path}.max_interval"), message));
        }
    };
    Ok((base, max))
}

fn hedge_policy(_path: &str, config: &bootstrap::HedgePolicy) -> Result<bool> {
    Ok(config.hedge_on_per_try_timeout.unwrap_or(false))
}

fn route(
    path: &str,
    config: &bootstrap::Route,
    context: &Context,
    inherited: &Inherited,
) -> Result<Route> {
    let matcher = route_match(&format!("{path}.match"), &config.r#match)?;
    let action = match (&config.route, &config.redirect, &config.direct_response) {
        (Some(target), None, None) => {
            let path = format!("{path}.route");
            let hedge = target
                .hedge_policy
                .as_ref()
                .map(|h| hedge_policy(&format!("{path}.hedge_policy"), h))
                .transpose()?;
            let mut target = route_target(&path, target, &matcher, context)?;
            if target.retry_policy.is_none() {
                target.retry_policy = inherited.retry_policy.cloned();
            }
            // A route's hedge policy replaces its virtual host's whole, as in Envoy.
            target.hedge_on_per_try_timeout = hedge
                .or(inherited.hedge_on_per_try_timeout)
                .unwrap_or(false);
            RouteAction::Route(target)
        }
        (None, Some(redirect), None) => RouteAction::Redirect(redirect_action(
            &format!("{path}.redirect"),
            redirect,
            &matcher,
        )?),
        (None, None, Some(direct)) => {
            let path = format!("{path}.direct_response");
            if !(100..=599).contains(&direct.status) {
                return Err(ConfigError::new(
                    format!("{path}.status"),
                    "status must be in 100..=599",
                ));
            }
            let body = direct
                .body
                .as_ref()
                .map(|b| data_source(&format!("{path}.body"), b))
                .transpose()?;
            if let Some(body) = body.as_ref().filter(|b| b.len() > context.max_body_bytes) {
                let message = format!(
                    "body is {} bytes, more than max_direct_response_body_size_bytes ({})",
                    body.len(),
                    context.max_body_bytes
                );
                return Err(ConfigError::new(format!("{path}.body"), message));
            }
            RouteAction::DirectResponse {
                status: direct.status,
                body: body.map(Arc::from),
            }
        }
        _ => {
            let message = "exactly one of route, redirect, direct_response is required";
            return Err(ConfigError::new(path, message));
        }
    };
    Ok(Route {
        name: config.name.clone(),
        metadata: bootstrap::Metadata::filter_metadata(&config.metadata),
        typed_per_filter_config: typed_per_filter_config(path, &config.typed_per_filter_config)?,
        matcher,
        action,
        headers: mutations(
            path,
            &config.request_headers_to_add,
            &config.request_headers_to_remove,
            &config.response_headers_to_add,
            &config.response_headers_to_remove,
        )?,
    })
}

fn route_match(path: &str, config: &bootstrap::RouteMatch) -> Result<RouteMatch> {
    let path_match = match (
        &config.prefix,
        &config.path,
        &config.safe_regex,
        &config.path_separated_prefix,
    ) {
        (Some(prefix), None, None, None) => PathMatch::Prefix(prefix.clone()),
        (None, Some(exact), None, None) => PathMatch::Path(exact.clone()),
        (None, None, Some(regex), None) => {
            PathMatch::Regex(full_match(&format!("{path}.safe_regex"), regex)?)
        }
        (None, None, None, Some(prefix)) => {
            if prefix.is_empty() || prefix.contains(['?', '#']) || prefix.ends_with('/') {
                let message = "path_separated_prefix must be non-empty, without '?' or '#', and not end in '/'";
                return Err(ConfigError::new(
                    format!("{path}.path_separated_prefix"),
                    message,
                ));
            }
            PathMatch::PathSeparatedPrefix(prefix.clone())
        }
        _ => {
            let message =
                "exactly one of prefix, path, safe_regex, path_separated_prefix is required";
            return Err(ConfigError::new(path, message));
        }
    };
    Ok(RouteMatch {
        path: path_match,
        case_sensitive: config.case_sensitive.unwrap_or(true),
        headers: config
            .headers
            .iter()
            .enumerate()
            .map(|(i, h)| header_matcher(&format!("{path}.headers[{i}]"), h))
            .collect::<Result<_>>()?,
        query_parameters: config
            .query_parameters
            .iter()
            .enumerate()
            .map(|(i, q)| query_matcher(&format!("{path}.query_parameters[{i}]"), q))
            .collect::<Result<_>>()?,
    })
}

/// At most one of the given options; `Ok(None)` when none is set.
fn one_of<T>(
    path: &str,
    names: &str,
    options: impl IntoIterator<Item = Option<T>>,
) -> Result<Option<T>> {
    let mut set = options.into_iter().flatten();
    match (set.next(), set.next()) {
        (first, None) => Ok(first),
        _ => Err(ConfigError::new(
            path,
            format!("only one of {names} may be set"),
        )),
    }
}

pub(super) fn header_matcher(
    path: &str,
    config: &bootstrap::HeaderMatcher,
) -> Result<HeaderMatcher> {
    let name_path = format!("{path}.name");
    if config.name.starts_with(':') {
        let message = format!("matching pseudo-header '{}' {NOT_SUPPORTED}", config.name);
        return Err(ConfigError::new(name_path, message));
    }
    let string = |kind| {
        Ok(HeaderMatchKind::String(StringMatcher {
            kind,
            ignore_case: false,
        }))
    };
    let kind = one_of(
        path,
        "exact_match, prefix_match, suffix_match, contains_match, safe_regex_match, present_match, \
         range_match, string_match",
        [
            config.exact_match.clone().map(|v| string(StringMatchKind::Exact(v))),
            config.prefix_match.clone().map(|v| string(StringMatchKind::Prefix(v))),
            config.suffix_match.clone().map(|v| string(StringMatchKind::Suffix(v))),
            config.contains_match.clone().map(|v| string(StringMatchKind::Contains(v))),
            config.safe_regex_match.as_ref().map(|re| {
                string(StringMatchKind::Regex(full_match(&format!("{path}.safe_regex_match"), re)?))
            }),
            config.present_match.map(|present| Ok(HeaderMatchKind::Present(present))),
            config.range_match.as_ref().map(|r| Ok(HeaderMatchKind::Range { start: r.start, end: r.end })),
            config.string_match.as_ref().map(|m| {
                Ok(HeaderMatchKind::String(string_matcher(&format!("{path}.string_match"), m)?))
            }),
        ],
    )?;
    Ok(HeaderMatcher {
        name: header_name(&name_path, &config.name)?,
        // Envoy: a matcher with no specifier matches when the header is present.
        kind: kind.unwrap_or(Ok(HeaderMatchKind::Present(true)))?,
        invert: config.invert_match.unwrap_or(false),
    })
}

fn string_matcher(path: &str, config: &bootstrap::StringMatcher) -> Result<StringMatcher> {
    let kind = one_of(
        path,
        "exact, prefix, suffix, contains, safe_regex",
        [
            config.exact.clone().map(|v| Ok(StringMatchKind::Exact(v))),
            config
                .prefix
                .clone()
                .map(|v| Ok(StringMatchKind::Prefix(v))),
            config
                .suffix
                .clone()
                .map(|v| Ok(StringMatchKind::Suffix(v))),
            config
                .contains
                .clone()
                .map(|v| Ok(StringMatchKind::Contains(v))),
            config.safe_regex.as_ref().map(|re| {
                Ok(StringMatchKind::Regex(full_match(
                    &format!("{path}.safe_regex"),
                    re,
                )?))
            }),
        ],
    )?
    .ok_or_else(|| {
        ConfigError::new(
            path,
            "one of exact, prefix, suffix, contains, safe_regex is required",
        )
    })??;
    Ok(StringMatcher {
        kind,
        ignore_case: config.ignore_case.unwrap_or(false),
    })
}

fn query_matcher(
    path: &str,
    config: &bootstrap::QueryParameterMatcher,
) -> Result<QueryParameterMatcher> {
    if config.string_match.is_some() && config.present_match.is_some() {
        return Err(ConfigError::new(
            path,
            "only one of string_match, present_match may be set",
        ));
    }
    Ok(QueryParameterMatcher {
        name: config.name.clone(),
        string_match: config
            .string_match
            .as_ref()
            .map(|m| string_matcher(&format!("{path}.string_match"), m))
            .transpose()?,
    })
}

/// A regex that must match the whole input, as RE2's `FullMatch` does.
fn full_match(path: &str, matcher: &RegexMatcher) -> Result<Regex> {
    let path = format!("{path}.regex");
    // Compiled alone first so an error shows the pattern as the user wrote it.
    compile(&path, &matcher.regex)?;
    compile(&path, &format!("^(?:{})$", matcher.regex))
}

fn compile(path: &str, pattern: &str) -> Result<Regex> {
    Regex::new(pattern).map_err(|e| ConfigError::new(path, format!("invalid regex: {e}")))
}

fn route_target(
    path: &str,
    config: &bootstrap::RouteAction,
    matcher: &RouteMatch,
    context: &Context,
) -> Result<RouteTarget> {
    let cluster = match (
        &config.cluster,
        &config.weighted_clusters,
        &config.cluster_header,
    ) {
        (Some(name), None, None) => {
            context.check_cluster(&format!("{path}.cluster"), name)?;
            ClusterSpecifier::Cluster(name.clone())
        }
        (None, Some(weighted), None) => {
            weighted_clusters(&format!("{path}.weighted_clusters"), weighted, context)?
        }
        (None, None, Some(header)) => {
            ClusterSpecifier::Header(header_name(&format!("{path}.cluster_header"), header)?)
        }
        _ => {
            let message = "exactly one of cluster, weighted_clusters, cluster_header is required";
            return Err(ConfigError::new(path, message));
        }
    };
    let (prefix_rewrite, regex_rewrite) = rewrites(
        path,
        matcher,
        &config.prefix_rewrite,
        config.regex_rewrite.as_ref(),
    )?;
    let auto_host_rewrite = config.auto_host_rewrite.unwrap_or(false);
    if let Some(host) = &config.host_rewrite_literal {
        if auto_host_rewrite {
            let message = "only one of host_rewrite_literal, auto_host_rewrite may be set";
            return Err(ConfigError::new(path, message));
        }
        header_value(&format!("{path}.host_rewrite_literal"), host)?;
    }
    let max_stream_duration = config
        .max_stream_duration
        .as_ref()
        .map(|m| MaxStreamDuration {
            max_stream_duration: m.max_stream_duration,
            grpc_timeout_header_max: m.grpc_timeout_header_max,
            grpc_timeout_header_offset: m.grpc_timeout_header_offset,
        });
    // Envoy: a route with `max_stream_duration` uses the "new timeouts", and its
    // `timeout` (default 15 s included) does not apply.
    let timeout = match max_stream_duration {
        Some(_) => None,
        None => timeout_or(config.timeout, Duration::from_secs(15)),
    };
    Ok(RouteTarget {
        cluster,
        prefix_rewrite,
        regex_rewrite,
        host_rewrite_literal: config.host_rewrite_literal.clone(),
        auto_host_rewrite,
        timeout,
        timeout_header: timeout.map(|t| http::HeaderValue::from(t.as_millis() as u64)),
        idle_timeout: config.idle_timeout,
        retry_policy: config
            .retry_policy
            .as_ref()
            .map(|p| retry_policy(&format!("{path}.retry_policy"), p).map(Arc::new))
            .transpose()?,
        hash_policy: hash_policies(path, &config.hash_policy)?,
        hedge_on_per_try_timeout: false,
        max_stream_duration,
        priority: match config.priority {
            Some(bootstrap::RoutingPriority::High) => crate::model::RoutingPriority::High,
            _ => crate::model::RoutingPriority::Default,
        },
    })
}

/// `hash_policy`: each entry names exactly one input. `connection_properties` with
/// `source_ip: false` hashes nothing, so it is dropped, as Envoy does.
fn hash_policies(path: &str, configs: &[bootstrap::HashPolicy]) -> Result<Vec<HashPolicy>> {
    let mut out = Vec::new();
    for (i, config) in configs.iter().enumerate() {
        let path = format!("{path}.hash_policy[{i}]");
        let kind = match (
            &config.header,
            &config.cookie,
            &config.connection_properties,
            &config.query_parameter,
            &config.filter_state,
        ) {
            (Some(header), None, None, None, None) => {
                let name_path = format!("{path}.header.header_name");
                if header.header_name.starts_with(':') {
                    let message = format!(
                        "hashing pseudo-header '{}' {NOT_SUPPORTED}",
                        header.header_name
                    );
                    return Err(ConfigError::new(name_path, message));
                }
                HashPolicyKind::Header(header_name(&name_path, &header.header_name)?)
            }
            (None, Some(cookie), None, None, None) => {
                if cookie.name.is_empty() {
                    let message = "name is required";
                    return Err(ConfigError::new(format!("{path}.cookie.name"), message));
                }
                HashPolicyKind::Cookie {
                    name: cookie.name.clone(),
                    ttl: cookie.ttl,
                    path: cookie.path.clone(),
                }
            }
            (None, None, Some(properties), None, None) if properties.source_ip => {
                HashPolicyKind::SourceIp
            }
            (None, None, Some(_), None, None) => continue,
            (None, None, None, Some(query), None) => {
                if query.name.is_empty() {
                    let message = "name is required";
                    return Err(ConfigError::new(
                        format!("{path}.query_parameter.name"),
                        message,
                    ));
                }
                HashPolicyKind::QueryParameter(query.name.clone())
            }
            (None, None, None, None, Some(state)) => {
                if state.key.is_empty() {
                    let message = "key is required";
                    return Err(ConfigError::new(
                        format!("{path}.filter_state.key"),
                        message,
                    ));
                }
                HashPolicyKind::FilterState(state.key.clone())
            }
            _ => {
                let message = "exactly one of header, cookie, connection_properties, \
                               query_parameter, filter_state is required";
                return Err(ConfigError::new(path, message));
            }
        };
        out.push(HashPolicy {
            kind,
            terminal: config.terminal,
        });
    }
    Ok(out)
}

const PREVIOUS_HOSTS: &str = "envoy.retry_host_predicates.previous_hosts";

/// Envoy's `retry_on` names Strait does not implement (gRPC status conditions and the
/// rest); they are refused rather than silently never retried.
const RETRY_ON_NOT_SUPPORTED: [&str; 4] = [
    "envoy-ratelimited",
    "reset-before-request",
    "http3-post-connect-failure",
    "retriable-request-headers",
];

fn retry_policy(path: &str, config: &bootstrap::RetryPolicy) -> Result<RetryPolicy> {
    let (retry_on, unknown) = RetryOn::parse(&config.retry_on);
    if let Some(name) = unknown {
        let message = match RETRY_ON_NOT_SUPPORTED.contains(&name) {
            true => format!("retry_on '{name}' {NOT_SUPPORTED}"),
            false => format!("unknown retry_on condition '{name}'"),
        };
        return Err(ConfigError::new(format!("{path}.retry_on"), message));
    }
    let retriable_status_codes = config
        .retriable_status_codes
        .iter()
        .enumerate()
        .map(|(i, code)| match u16::try_from(*code) {
            Ok(code) if (100..=599).contains(&code) => Ok(code),
            _ => Err(ConfigError::new(
                format!("{path}.retriable_status_codes[{i}]"),
                format!("{code} is not an HTTP status code"),
            )),
        })
        .collect::<Result<Vec<_>>>()?;
    let retriable_headers = config
        .retriable_headers
        .iter()
        .enumerate()
        .map(|(i, h)| header_matcher(&format!("{path}.retriable_headers[{i}]"), h))
        .collect::<Result<Vec<_>>>()?;
    let (base_interval, max_interval) = retry_back_off(
        &format!("{path}.retry_back_off"),
        config.retry_back_off.as_ref(),
        Duration::from_millis(25),
    )?;
    let mut previous_hosts = false;
    for (i, predicate) in config.retry_host_predicate.iter().enumerate() {
        if predicate.name != PREVIOUS_HOSTS {
            let message = format!("retry host predicate '{}' {NOT_SUPPORTED}", predicate.name);
            return Err(ConfigError::new(
                format!("{path}.retry_host_predicate[{i}].name"),
                message,
            ));
        }
        previous_hosts = true;
    }
    let host_selection_retry_max_attempts = match config.host_selection_retry_max_attempts {
        None => 1,
        Some(n) => u32::try_from(n.max(0)).unwrap_or(u32::MAX),
    };
    Ok(RetryPolicy {
        retry_on,
        num_retries: config.num_retries.unwrap_or(1),
        per_try_timeout: config.per_try_timeout.filter(|t| !t.is_zero()),
        per_try_timeout_header: config
            .per_try_timeout
            .filter(|t| !t.is_zero())
            .map(|t| http::HeaderValue::from(t.as_millis() as u64)),
        per_try_idle_timeout: config.per_try_idle_timeout.filter(|t| !t.is_zero()),
        retriable_status_codes,
        retriable_headers,
        base_interval,
        max_interval,
        previous_hosts,
        host_selection_retry_max_attempts,
    })
}

fn weighted_clusters(
    path: &str,
    config: &bootstrap::WeightedClusters,
    context: &Context,
) -> Result<ClusterSpecifier> {
    let clusters = config
        .clusters
        .iter()
        .enumerate()
        .map(|(i, cluster)| {
            let path = format!("{path}.clusters[{i}]");
            context.check_cluster(&format!("{path}.name"), &cluster.name)?;
            Ok(WeightedCluster {
                name: cluster.name.clone(),
                weight: cluster.weight.unwrap_or(0),
                headers: mutations(
                    &path,
                    &cluster.request_headers_to_add,
                    &cluster.request_headers_to_remove,
                    &cluster.response_headers_to_add,
                    &cluster.response_headers_to_remove,
                )?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let sum: u64 = clusters.iter().map(|c| u64::from(c.weight)).sum();
    let total_weight = match u32::try_from(sum) {
        Ok(0) => {
            return Err(ConfigError::new(
                format!("{path}.clusters"),
                "weights must not sum to 0",
            ))
        }
        Ok(total) => total,
        Err(_) => {
            return Err(ConfigError::new(
                format!("{path}.clusters"),
                "weights sum to more than 2^32-1",
            ))
        }
    };
    match config.total_weight {
        Some(declared) if declared != total_weight => {
            let message =
                format!("total_weight {declared} is not the sum of the weights ({total_weight})");
            Err(ConfigError::new(format!("{path}.total_weight"), message))
        }
        _ => Ok(ClusterSpecifier::Weighted {
            clusters,
            total_weight,
        }),
    }
}

type Rewrites = (Option<String>, Option<(Regex, String)>);

fn rewrites(
    path: &str,
    matcher: &RouteMatch,
    prefix_rewrite: &Option<String>,
    regex_rewrite: Option<&RegexRewrite>,
) -> Result<Rewrites> {
    if prefix_rewrite.is_some() && regex_rewrite.is_some() {
        return Err(ConfigError::new(
            path,
            "only one of prefix_rewrite, regex_rewrite may be set",
        ));
    }
    if prefix_rewrite.is_some() && matches!(matcher.path, PathMatch::Regex(_)) {
        let message = "prefix_rewrite cannot be used with a safe_regex match";
        return Err(ConfigError::new(format!("{path}.prefix_rewrite"), message));
    }
    let regex_rewrite = match regex_rewrite {
        Some(rewrite) => {
            let path = format!("{path}.regex_rewrite");
            let regex = compile(&format!("{path}.pattern.regex"), &rewrite.pattern.regex)?;
            let substitution = substitution(
                &format!("{path}.substitution"),
                &rewrite.substitution,
                &regex,
            )?;
            Some((regex, substitution))
        }
        None => None,
    };
    Ok((prefix_rewrite.clone(), regex_rewrite))
}

/// Converts an RE2 rewrite string (`\1`, `\\`) into the `regex` crate's (`${1}`, `$$`).
fn substitution(path: &str, re2: &str, regex: &Regex) -> Result<String> {
    let mut out = String::with_capacity(re2.len());
    let mut chars = re2.chars();
    while let Some(c) = chars.next() {
        match c {
            '$' => out.push_str("$$"),
            '\\' => match chars.next() {
                Some('\\') => out.push('\\'),
                Some(digit @ '0'..='9') => {
                    let group = digit as usize - '0' as usize;
                    if group >= regex.captures_len() {
                        let message =
                            format!("\\{group} names a capture group the pattern does not have");
                        return Err(ConfigError::new(path, message));
                    }
                    out.push_str(&format!("${{{group}}}"));
                }
                _ => {
                    return Err(ConfigError::new(
                        path,
                        "'\\' must be followed by a digit or '\\'",
                    ))
                }
            },
            c => out.push(c),
        }
    }
    Ok(out)
}

fn redirect_action(
    path: &str,
    config: &bootstrap::RedirectAction,
    matcher: &RouteMatch,
) -> Result<Redirect> {
    let scheme = match (
        config.https_redirect.unwrap_or(false),
        &config.scheme_redirect,
    ) {
        (true, Some(_)) => {
            return Err(ConfigError::new(
                path,
                "only one of https_redirect, scheme_redirect may be set",
            ));
        }
        (true, None) => Some("https".to_owned()),
        (false, scheme) => scheme.as_ref().map(|s| s.to_ascii_lowercase()),
    };
    one_of(
        path,
        "path_redirect, prefix_rewrite, regex_rewrite",
        [
            config.path_redirect.is_some().then_some(()),
            config.prefix_rewrite.is_some().then_some(()),
            config.regex_rewrite.is_some().then_some(()),
        ],
    )?;
    let (prefix_rewrite, regex_rewrite) = rewrites(
        path,
        matcher,
        &config.prefix_rewrite,
        config.regex_rewrite.as_ref(),
    )?;
    Ok(Redirect {
        scheme,
        host: config.host_redirect.clone(),
        // Envoy reads an unset (zero) port as "keep".
        port: config.port_redirect.filter(|port| *port != 0),
        path: config.path_redirect.clone(),
        prefix_rewrite,
        regex_rewrite,
        status: config.response_code.unwrap_or(301),
        strip_query: config.strip_query.unwrap_or(false),
    })
}

#[cfg(test)]
mod hash_policy_tests {
    use serde_json::json;

    use super::*;

    fn translate(items: serde_json::Value) -> Result<Vec<HashPolicy>> {
        let configs: Vec<bootstrap::HashPolicy> = super::super::decode("r.hash_policy", &items)?;
        hash_policies("r", &configs)
    }

    #[test]
    fn hash_policies_translate_in_order() {
        let got = translate(json!([
            {"header": {"header_name": "X-User"}, "terminal": true},
            {"cookie": {"name": "s", "ttl": "60s", "path": "/"}},
            {"connection_properties": {"source_ip": true}},
            {"connection_properties": {"source_ip": false}},
            {"query_parameter": {"name": "id"}},
        ]))
        .unwrap();
        let want = [
            HashPolicyKind::Header(http::HeaderName::from_static("x-user")),
            HashPolicyKind::Cookie {
                name: "s".into(),
                ttl: Some(Duration::from_secs(60)),
                path: "/".into(),
            },
            HashPolicyKind::SourceIp,
            HashPolicyKind::QueryParameter("id".into()),
        ];
        assert_eq!(got.iter().map(|p| p.kind.clone()).collect::<Vec<_>>(), want);
        assert!(got[0].terminal && !got[1].terminal);
    }

    #[test]
    fn bad_hash_policies_name_their_field() {
        let cases = [
            (
                json!([{"header": {"header_name": "x", "regex_rewrite": {}}}]),
                "r.hash_policy[0].header.regex_rewrite: regex_rewrite is not supported yet",
            ),
            (
                json!([{"filter_state": {"key": ""}}]),
                "r.hash_policy[0].filter_state.key: key is required",
            ),
            (
                json!([{"cookie": {"name": "s", "ttl": "1s", "colour": 1}}]),
                "r.hash_policy[0].cookie.colour: unknown field `colour`",
            ),
            (
                json!([{"header": {"header_name": "x"}, "cookie": {"name": "s"}}]),
                "r.hash_policy[0]: exactly one of header, cookie",
            ),
            (json!([{"terminal": true}]), "r.hash_policy[0]: exactly one of"),
            (
                json!([{"header": {"header_name": ":path"}}]),
                "r.hash_policy[0].header.header_name: hashing pseudo-header ':path' is not supported yet",
            ),
        ];
        for (items, want) in cases {
            let error = translate(items).unwrap_err().to_string();
            assert!(error.starts_with(want), "want {want:?}, got {error:?}");
        }
    }
}
