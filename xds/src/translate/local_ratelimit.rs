//! `envoy.filters.http.local_ratelimit`: Envoy's `LocalRateLimit` into a
//! `LocalRateLimitConfig`, in `http_filters` and in `typed_per_filter_config`.
//!
//! The checks are Envoy 1.40's: `stat_prefix` is required, a token bucket needs
//! `max_tokens` > 0, `tokens_per_fill` > 0 and a `fill_interval` of at least 50 ms,
//! a per-route config needs a token bucket, `status` must be a defined code (under
//! 400 means 429). The descriptor machinery is refused as not supported yet.

use std::time::Duration;

use super::{headers::mutations, ConfigError, Result, TypedConfig};
use crate::bootstrap::{self, LocalRateLimit};
use crate::model::{FractionalPercent, LocalRateLimitConfig, TokenBucket};

pub(super) const TYPE: &str = "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";

/// Envoy refuses a faster fill timer ("local rate limit token bucket fill timer must
/// be >= 50ms").
const MIN_FILL_INTERVAL: Duration = Duration::from_millis(50);

/// The filter in `http_filters`, called `name` there.
pub(super) fn filter(typed: &TypedConfig, name: &str) -> Result<LocalRateLimitConfig> {
    config(typed, name, false)
}

/// A route's, virtual host's or route configuration's config for the filter `name`.
pub(super) fn per_route(typed: &TypedConfig, name: &str) -> Result<LocalRateLimitConfig> {
    config(typed, name, true)
}

fn config(typed: &TypedConfig, name: &str, per_route: bool) -> Result<LocalRateLimitConfig> {
    let config: LocalRateLimit = typed.decode()?;
    let path = typed.fields_path.as_str();
    if config.stat_prefix.is_empty() {
        return Err(ConfigError::new(format!("{path}.stat_prefix"), "required"));
    }
    let token_bucket = config
        .token_bucket
        .as_ref()
        .map(|bucket| token_bucket(&format!("{path}.token_bucket"), bucket))
        .transpose()?;
    if per_route && token_bucket.is_none() {
        let message = "required in a per-route config (Envoy: local rate limit token bucket \
                       must be set for per filter configs)";
        return Err(ConfigError::new(format!("{path}.token_bucket"), message));
    }
    let status = match &config.status {
        None => 429,
        Some(status) => match status.code {
            None | Some(bootstrap::StatusCode(0)) => {
                let message = "a status code other than Empty is required";
                return Err(ConfigError::new(format!("{path}.status.code"), message));
            }
            // Envoy answers 429 instead of a code under 400.
            Some(bootstrap::StatusCode(code)) if code < 400 => 429,
            Some(bootstrap::StatusCode(code)) => code,
        },
    };
    if config.stage.is_some_and(|stage| stage > 10) {
        return Err(ConfigError::new(
            format!("{path}.stage"),
            "must be at most 10",
        ));
    }
    for (field, list) in [
        (
            "request_headers_to_add_when_not_enforced",
            &config.request_headers_to_add_when_not_enforced,
        ),
        ("response_headers_to_add", &config.response_headers_to_add),
    ] {
        if list.len() > 10 {
            let message = format!("{} headers, at most 10 allowed", list.len());
            return Err(ConfigError::new(format!("{path}.{field}"), message));
        }
    }
    // The request side is named after its own field (`mutations` says
    // `request_headers_to_add`).
    let headers = mutations(
        path,
        &config.request_headers_to_add_when_not_enforced,
        &[],
        &config.response_headers_to_add,
        &[],
    )
    .map_err(|mut error| {
        let generic = format!("{path}.request_headers_to_add[");
        if let Some(rest) = error.path.strip_prefix(&generic) {
            error.path = format!("{path}.request_headers_to_add_when_not_enforced[{rest}");
        }
        error
    })?;
    Ok(LocalRateLimitConfig {
        path: path.to_owned(),
        name: name.to_owned(),
        stat_prefix: config.stat_prefix,
        status,
        token_bucket,
        filter_enabled: fraction(&format!("{path}.filter_enabled"), &config.filter_enabled)?,
        filter_enforced: fraction(&format!("{path}.filter_enforced"), &config.filter_enforced)?,
        headers,
        x_ratelimit_headers: config.enable_x_ratelimit_headers.is_some_and(|v| v.0),
        per_downstream_connection: config
            .local_rate_limit_per_downstream_connection
            .unwrap_or(false),
        rate_limited_as_resource_exhausted: config
            .rate_limited_as_resource_exhausted
            .unwrap_or(false),
    })
}

fn token_bucket(path: &str, config: &bootstrap::TokenBucket) -> Result<TokenBucket> {
    let max_tokens = match config.max_tokens {
        Some(max) if max > 0 => max,
        _ => {
            let message = "must be greater than 0";
            return Err(ConfigError::new(format!("{path}.max_tokens"), message));
        }
    };
    let tokens_per_fill = config.tokens_per_fill.unwrap_or(1);
    if tokens_per_fill == 0 {
        let message = "must be greater than 0";
        return Err(ConfigError::new(format!("{path}.tokens_per_fill"), message));
    }
    let Some(fill_interval) = config.fill_interval else {
        return Err(ConfigError::new(
            format!("{path}.fill_interval"),
            "required",
        ));
    };
    // Envoy reads whole milliseconds.
    let fill_interval = Duration::from_millis(fill_interval.as_millis() as u64);
    if fill_interval < MIN_FILL_INTERVAL {
        let message = format!(
            "{} ms is under 50 ms (Envoy: local rate limit token bucket fill timer must be >= 50ms)",
            fill_interval.as_millis()
        );
        return Err(ConfigError::new(format!("{path}.fill_interval"), message));
    }
    Ok(TokenBucket {
        max_tokens,
        tokens_per_fill,
        fill_interval,
    })
}

/// A `RuntimeFractionalPercent`'s default (the runtime key is never read); `None`
/// when unset, which Envoy treats as 0%.
fn fraction(
    path: &str,
    config: &Option<bootstrap::RuntimeFractionalPercent>,
) -> Result<Option<FractionalPercent>> {
    let Some(config) = config else {
        return Ok(None);
    };
    let Some(value) = &config.default_value else {
        return Err(ConfigError::new(
            format!("{path}.default_value"),
            "required",
        ));
    };
    Ok(Some(FractionalPercent {
        numerator: value.numerator,
        denominator: value.denominator.map_or(100, |d| d.0),
    }))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::model::{FractionalPercent, HttpFilterConfig, PerFilterConfig, TokenBucket};
    use crate::translate::snapshot_from_yaml;

    const FIELDS: &str = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[0].typed_config";
    const ROUTE: &str = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0].routes[0].typed_per_filter_config";

    /// A listener whose http_filters are a local rate limit filter with `fields` (YAML
    /// at the indentation of the typed_config's fields), then the router; one route
    /// with `route_extra` (YAML at the indentation of the route's fields).
    fn config(fields: &str, route_extra: &str) -> String {
        let routes = format!(
            "              - match: {{prefix: \"/\"}}\n                route: {{cluster: a}}\n{route_extra}"
        );
        let filter = crate::translate::test_yaml::http_filter(
            "envoy.filters.http.local_ratelimit",
            "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            fields,
        );
        crate::translate::test_yaml::with_http_filters(&routes, &filter)
    }

    #[test]
    fn local_rate_limit_translates() {
        let yaml = config(
            "              stat_prefix: rl
              token_bucket: {max_tokens: 10, tokens_per_fill: 5, fill_interval: 2s}
              filter_enabled: {runtime_key: on, default_value: {numerator: 100}}
              filter_enforced: {default_value: {numerator: 25, denominator: TEN_THOUSAND}}
              status: {code: Forbidden}
              response_headers_to_add: [{header: {key: x-limited, value: \"yes\"}}]
              request_headers_to_add_when_not_enforced: [{header: {key: x-would-limit, value: \"1\"}}]
              enable_x_ratelimit_headers: DRAFT_VERSION_03
              local_rate_limit_per_downstream_connection: true
              rate_limited_as_resource_exhausted: true",
            "",
        );
        let snapshot = snapshot_from_yaml(&yaml).unwrap();
        let [HttpFilterConfig::LocalRateLimit(rl)] = &snapshot.listeners[0].hcm.http_filters[..]
        else {
            panic!("one local rate limit filter expected");
        };
        assert_eq!(rl.path, FIELDS);
        assert_eq!(rl.name, "envoy.filters.http.local_ratelimit");
        assert_eq!(rl.stat_prefix, "rl");
        assert_eq!(rl.status, 403);
        let bucket = TokenBucket {
            max_tokens: 10,
            tokens_per_fill: 5,
            fill_interval: Duration::from_secs(2),
        };
        assert_eq!(rl.token_bucket, Some(bucket));
        let percent = |numerator, denominator| {
            Some(FractionalPercent {
                numerator,
                denominator,
            })
        };
        assert_eq!(rl.filter_enabled, percent(100, 100));
        assert_eq!(rl.filter_enforced, percent(25, 10_000));
        assert_eq!(rl.headers.response_headers_to_add[0].name, "x-limited");
        assert_eq!(rl.headers.request_headers_to_add[0].name, "x-would-limit");
        assert!(rl.x_ratelimit_headers);
        assert!(rl.per_downstream_connection);
        assert!(rl.rate_limited_as_resource_exhausted);
    }

    #[test]
    fn defaults_are_envoys() {
        // Only stat_prefix: no bucket, 0% enabled and enforced, 429.
        let snapshot = snapshot_from_yaml(&config("              stat_prefix: rl", "")).unwrap();
        let [HttpFilterConfig::LocalRateLimit(rl)] = &snapshot.listeners[0].hcm.http_filters[..]
        else {
            panic!("one local rate limit filter expected");
        };
        assert_eq!(rl.token_bucket, None);
        assert_eq!((rl.filter_enabled, rl.filter_enforced), (None, None));
        assert_eq!(rl.status, 429);
        assert!(!rl.x_ratelimit_headers && !rl.per_downstream_connection);
        // A status under 400 is answered 429, as Envoy does; tokens_per_fill is 1.
        let yaml = config(
            "              stat_prefix: rl
              status: {code: 200}
              token_bucket: {max_tokens: 1, fill_interval: 0.05s}",
            "",
        );
        let snapshot = snapshot_from_yaml(&yaml).unwrap();
        let [HttpFilterConfig::LocalRateLimit(rl)] = &snapshot.listeners[0].hcm.http_filters[..]
        else {
            panic!("one local rate limit filter expected");
        };
        assert_eq!(rl.status, 429);
        assert_eq!(rl.token_bucket.unwrap().tokens_per_fill, 1);
        assert_eq!(
            rl.token_bucket.unwrap().fill_interval,
            Duration::from_millis(50)
        );
    }

    #[test]
    fn per_route_configs_translate() {
        let route = r#"                typed_per_filter_config:
                  envoy.filters.http.local_ratelimit:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
                    stat_prefix: route
                    token_bucket: {max_tokens: 2, fill_interval: 1s}"#;
        let yaml = config("              stat_prefix: rl", route);
        let snapshot = snapshot_from_yaml(&yaml).unwrap();
        let route = &snapshot.listeners[0].hcm.route_config.virtual_hosts[0].routes[0];
        let [(name, PerFilterConfig::LocalRateLimit(rl))] = &route.typed_per_filter_config[..]
        else {
            panic!("one per-filter config expected");
        };
        assert_eq!(name, "envoy.filters.http.local_ratelimit");
        assert_eq!(rl.stat_prefix, "route");
        assert_eq!(rl.token_bucket.unwrap().max_tokens, 2);
        assert_eq!(
            rl.path,
            format!("{ROUTE}.envoy.filters.http.local_ratelimit")
        );
    }

    #[test]
    fn local_rate_limit_errors_name_paths() {
        let fields = |extra: &str| format!("              stat_prefix: rl\n{extra}");
        let cases = [
            (
                "              token_bucket: {max_tokens: 1, fill_interval: 1s}".to_owned(),
                format!("{FIELDS}.stat_prefix: required"),
            ),
            (
                fields("              token_bucket: {fill_interval: 1s}"),
                format!("{FIELDS}.token_bucket.max_tokens: must be greater than 0"),
            ),
            (
                fields("              token_bucket: {max_tokens: 0, fill_interval: 1s}"),
                format!("{FIELDS}.token_bucket.max_tokens: must be greater than 0"),
            ),
            (
                fields("              token_bucket: {max_tokens: 1}"),
                format!("{FIELDS}.token_bucket.fill_interval: required"),
            ),
            (
                fields("              token_bucket: {max_tokens: 1, fill_interval: 0.01s}"),
                format!("{FIELDS}.token_bucket.fill_interval: 10 ms is under 50 ms"),
            ),
            (
                fields("              token_bucket: {max_tokens: 1, tokens_per_fill: 0, fill_interval: 1s}"),
                format!("{FIELDS}.token_bucket.tokens_per_fill: must be greater than 0"),
            ),
            (
                fields("              descriptors: [{entries: [{key: a, value: b}]}]"),
                format!("{FIELDS}.descriptors: descriptors is not supported yet"),
            ),
            (
                fields("              local_cluster_rate_limit: {}"),
                format!("{FIELDS}.local_cluster_rate_limit: local_cluster_rate_limit is not supported yet"),
            ),
            (
                fields("              vh_rate_limits: INCLUDE"),
                format!("{FIELDS}.vh_rate_limits: vh_rate_limits is not supported yet"),
            ),
            (
                fields("              always_consume_default_token_bucket: false"),
                format!("{FIELDS}.always_consume_default_token_bucket: always_consume_default_token_bucket is not supported yet"),
            ),
            (
                fields("              token_buckets: {}"),
                format!("{FIELDS}.token_buckets: unknown field `token_buckets`"),
            ),
            (
                fields("              status: {code: 399}"),
                format!("{FIELDS}.status.code: unknown value 399"),
            ),
            (
                fields("              status: {}"),
                format!("{FIELDS}.status.code: a status code other than Empty is required"),
            ),
            (
                fields("              filter_enabled: {runtime_key: x}"),
                format!("{FIELDS}.filter_enabled.default_value: required"),
            ),
            (
                fields("              enable_x_ratelimit_headers: DRAFT_VERSION_04"),
                format!("{FIELDS}.enable_x_ratelimit_headers: unknown value"),
            ),
            (
                fields("              request_headers_to_add_when_not_enforced: [{header: {key: \":path\", value: x}}]"),
                format!("{FIELDS}.request_headers_to_add_when_not_enforced[0].header.key: ':path' may not be modified"),
            ),
        ];
        for (fields_yaml, want) in cases {
            let error = snapshot_from_yaml(&config(&fields_yaml, ""))
                .expect_err(&fields_yaml)
                .to_string();
            assert!(
                error.starts_with(&want),
                "{fields_yaml}: got {error}, want {want}"
            );
        }
    }

    #[test]
    fn per_route_errors_name_paths() {
        let typed = |fields: &str| {
            format!(
                r#"                typed_per_filter_config:
                  envoy.filters.http.local_ratelimit:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
{fields}"#
            )
        };
        let key = format!("{ROUTE}.envoy.filters.http.local_ratelimit");
        let cases = [
            (
                typed("                    stat_prefix: route"),
                format!("{key}.token_bucket: required in a per-route config"),
            ),
            (
                typed("                    stat_prefix: route\n                    token_bucket: {max_tokens: 1, fill_interval: 0.02s}"),
                format!("{key}.token_bucket.fill_interval: 20 ms is under 50 ms"),
            ),
            (
                "                typed_per_filter_config:\n                  envoy.filters.http.fault:\n                    \"@type\": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault".to_owned(),
                format!("{ROUTE}.envoy.filters.http.fault: envoy.extensions.filters.http.fault.v3.HTTPFault is not supported yet"),
            ),
            (
                "                typed_per_filter_config:\n                  envoy.filters.http.local_ratelimit:\n                    \"@type\": type.googleapis.com/envoy.config.route.v3.FilterConfig".to_owned(),
                format!("{ROUTE}.envoy.filters.http.local_ratelimit: envoy.config.route.v3.FilterConfig is not supported yet"),
            ),
        ];
        for (route_yaml, want) in cases {
            let error = snapshot_from_yaml(&config("              stat_prefix: rl", &route_yaml))
                .expect_err(&route_yaml)
                .to_string();
            assert!(
                error.starts_with(&want),
                "{route_yaml}: got {error}, want {want}"
            );
        }
    }
}
