//! `envoy.filters.http.health_check`: Envoy's `HealthCheck` into a
//! `HealthCheckFilterConfig`.

use std::time::Duration;

use super::{route::header_matcher, ConfigError, Result, TypedConfig};
use crate::bootstrap::HealthCheckFilter;
use crate::model::{HealthCheckFilterConfig, PseudoHeader, RequestHeaderMatcher};

pub(super) fn filter(typed: &TypedConfig) -> Result<HealthCheckFilterConfig> {
    let config: HealthCheckFilter = typed.decode()?;
    let path = typed.fields_path.as_str();
    // Envoy's proto validation: the BoolValue must be there, whatever its value.
    let Some(pass_through_mode) = config.pass_through_mode else {
        return Err(ConfigError::new(
            format!("{path}.pass_through_mode"),
            "required",
        ));
    };
    // Envoy reads the duration in whole milliseconds; under one is no cache at all.
    let cache_time = config
        .cache_time
        .map(|t| Duration::from_millis(t.as_millis() as u64))
        .filter(|t| !t.is_zero());
    if cache_time.is_some() && !pass_through_mode {
        let message = "must not be set when pass_through_mode is false (Envoy: \
                       cache_time_ms must not be set when path_through_mode is disabled)";
        return Err(ConfigError::new(format!("{path}.cache_time"), message));
    }
    let headers = config
        .headers
        .into_iter()
        .enumerate()
        .map(|(i, mut matcher)| {
            let path = format!("{path}.headers[{i}]");
            // The route matcher takes header names only; a pseudo-header is matched on
            // its value by the same kind, so it is translated under a stand-in name.
            let pseudo = PseudoHeader::from_name(&matcher.name);
            if pseudo.is_some() {
                matcher.name = matcher.name.trim_start_matches(':').to_owned();
            }
            Ok(RequestHeaderMatcher {
                pseudo,
                matcher: header_matcher(&path, &matcher)?,
            })
        })
        .collect::<Result<_>>()?;
    let mut cluster_min_healthy_percentages = Vec::new();
    for (cluster, percent) in &config.cluster_min_healthy_percentages {
        if !(0.0..=100.0).contains(&percent.value) {
            let path = format!("{path}.cluster_min_healthy_percentages.{cluster}.value");
            let message = format!("{} is not between 0 and 100", percent.value);
            return Err(ConfigError::new(path, message));
        }
        // Envoy truncates the percentage to an integer before comparing.
        cluster_min_healthy_percentages.push((cluster.clone(), percent.value as u64));
    }
    if pass_through_mode {
        cluster_min_healthy_percentages.clear();
    }
    Ok(HealthCheckFilterConfig {
        path: path.to_owned(),
        pass_through_mode,
        cache_time,
        headers,
        cluster_min_healthy_percentages,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::model::{HttpFilterConfig, PseudoHeader, PseudoHeaders};
    use crate::translate::snapshot_from_yaml;

    const FIELDS: &str = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[0].typed_config";

    /// A listener whose http_filters are a health check filter with `fields` (YAML at
    /// the indentation of the typed_config's fields), then the router.
    fn config(fields: &str) -> String {
        let routes = "              - match: {prefix: \"/\"}\n                route: {cluster: a}";
        let filter = crate::translate::test_yaml::http_filter(
            "envoy.filters.http.health_check",
            "envoy.extensions.filters.http.health_check.v3.HealthCheck",
            fields,
        );
        crate::translate::test_yaml::with_http_filters(routes, &filter)
    }

    #[test]
    fn health_check_filter_translates() {
        let yaml = config(
            "              pass_through_mode: false
              headers:
              - name: \":path\"
                string_match: {exact: /healthz}
              - name: x-probe
                present_match: true
              cluster_min_healthy_percentages: {b: {value: 50.9}, a: {value: 100}}",
        );
        let snapshot = snapshot_from_yaml(&yaml).unwrap();
        let [HttpFilterConfig::HealthCheck(hc)] = &snapshot.listeners[0].hcm.http_filters[..]
        else {
            panic!("one health check filter expected");
        };
        assert!(!hc.pass_through_mode);
        assert_eq!(hc.cache_time, None);
        assert_eq!(hc.path, FIELDS);
        // Sorted by name, truncated as Envoy compares them.
        assert_eq!(
            hc.cluster_min_healthy_percentages,
            [("a".to_owned(), 100), ("b".to_owned(), 50)]
        );
        assert_eq!(hc.headers[0].pseudo, Some(PseudoHeader::Path));
        assert_eq!(hc.headers[1].pseudo, None);
        let pseudo = |path| PseudoHeaders {
            path,
            method: "GET",
            authority: "example.test",
            scheme: "http",
        };
        let mut probe = http::HeaderMap::new();
        probe.insert("x-probe", http::HeaderValue::from_static("1"));
        let matches = |headers: &http::HeaderMap, path| {
            hc.headers.iter().all(|m| m.matches(headers, &pseudo(path)))
        };
        assert!(matches(&probe, "/healthz"));
        // `:path` is the whole request target, query included, as in Envoy.
        assert!(!matches(&probe, "/healthz?verbose=1"));
        assert!(!matches(&http::HeaderMap::new(), "/healthz"));
    }

    #[test]
    fn pass_through_keeps_the_cache_and_drops_cluster_percentages() {
        let yaml = config(
            "              pass_through_mode: true
              cache_time: 2.5s
              cluster_min_healthy_percentages: {a: {value: 100}}",
        );
        let snapshot = snapshot_from_yaml(&yaml).unwrap();
        let [HttpFilterConfig::HealthCheck(hc)] = &snapshot.listeners[0].hcm.http_filters[..]
        else {
            panic!("one health check filter expected");
        };
        assert!(hc.pass_through_mode);
        assert_eq!(hc.cache_time, Some(Duration::from_millis(2500)));
        assert!(hc.cluster_min_healthy_percentages.is_empty());
        assert!(hc.headers.is_empty());
        // Under a millisecond is no cache, as Envoy reads it.
        let yaml =
            config("              pass_through_mode: true\n              cache_time: 0.0004s");
        let snapshot = snapshot_from_yaml(&yaml).unwrap();
        let [HttpFilterConfig::HealthCheck(hc)] = &snapshot.listeners[0].hcm.http_filters[..]
        else {
            panic!("one health check filter expected");
        };
        assert_eq!(hc.cache_time, None);
    }

    #[test]
    fn health_check_errors_name_paths() {
        let cases = [
            (
                "              headers: [{name: \":path\", string_match: {exact: /healthz}}]",
                format!("{FIELDS}.pass_through_mode: required"),
            ),
            (
                "              pass_through_mode: true\n              endpoint: /healthz",
                format!("{FIELDS}.endpoint: unknown field `endpoint`"),
            ),
            (
                "              pass_through_mode: false\n              cache_time: 1s",
                format!("{FIELDS}.cache_time: must not be set when pass_through_mode is false"),
            ),
            (
                "              pass_through_mode: false\n              cluster_min_healthy_percentages: {a: {value: 150}}",
                format!("{FIELDS}.cluster_min_healthy_percentages.a.value: 150 is not between 0 and 100"),
            ),
            (
                "              pass_through_mode: false\n              cluster_min_healthy_percentages: {a: {percent: 1}}",
                format!("{FIELDS}.cluster_min_healthy_percentages.a.percent: unknown field"),
            ),
            (
                "              pass_through_mode: false\n              headers: [{name: \":protocol\", present_match: true}]",
                format!("{FIELDS}.headers[0].name: matching pseudo-header ':protocol' is not supported yet"),
            ),
            (
                "              pass_through_mode: false\n              headers: [{name: \":path\", exact_match: a, prefix_match: b}]",
                format!("{FIELDS}.headers[0]: only one of"),
            ),
            (
                "              pass_through_mode: yes please",
                format!("{FIELDS}.pass_through_mode: invalid type"),
            ),
        ];
        for (fields_yaml, want) in cases {
            let error = snapshot_from_yaml(&config(fields_yaml))
                .expect_err(fields_yaml)
                .to_string();
            assert!(
                error.starts_with(&want),
                "{fields_yaml}: got {error}, want {want}"
            );
        }
    }
}
