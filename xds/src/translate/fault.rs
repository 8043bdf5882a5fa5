//! `envoy.filters.http.fault`: Envoy's `HTTPFault` into a `FaultFilterConfig`.

use super::{route::header_matcher, ConfigError, Result, TypedConfig};
use crate::bootstrap::{self, HttpFault, NOT_SUPPORTED};
use crate::model::{
    ClusterSpecifier, FaultAbort, FaultAbortKind, FaultDelay, FaultFilterConfig, FractionalPercent,
    RouteAction, RouteConfig,
};

pub(super) fn filter(typed: &TypedConfig) -> Result<FaultFilterConfig> {
    let config: HttpFault = typed.decode()?;
    let path = typed.fields_path.as_str();
    let delay = config
        .delay
        .as_ref()
        .map(|delay| fault_delay(&format!("{path}.delay"), delay))
        .transpose()?;
    let abort = config
        .abort
        .as_ref()
        .map(|abort| fault_abort(&format!("{path}.abort"), abort))
        .transpose()?;
    let headers = config
        .headers
        .iter()
        .enumerate()
        .map(|(i, h)| header_matcher(&format!("{path}.headers[{i}]"), h))
        .collect::<Result<_>>()?;
    Ok(FaultFilterConfig {
        path: path.to_owned(),
        delay,
        abort,
        upstream_cluster: Some(config.upstream_cluster).filter(|c| !c.is_empty()),
        headers,
        max_active_faults: config.max_active_faults,
    })
}

fn fault_delay(path: &str, config: &bootstrap::FaultDelay) -> Result<FaultDelay> {
    let fixed = match (config.fixed_delay, &config.header_delay) {
        (Some(fixed), None) if fixed.is_zero() => {
            // Envoy's validation: `fixed_delay` must be greater than zero.
            let message = "fixed_delay must be greater than 0s";
            return Err(ConfigError::new(format!("{path}.fixed_delay"), message));
        }
        (Some(fixed), None) => Some(fixed),
        (None, Some(_)) => None,
        _ => {
            let message = "exactly one of fixed_delay, header_delay is required";
            return Err(ConfigError::new(path, message));
        }
    };
    Ok(FaultDelay {
        fixed,
        percentage: percentage(config.percentage.as_ref()),
    })
}

fn fault_abort(path: &str, config: &bootstrap::FaultAbort) -> Result<FaultAbort> {
    let kind = match (config.http_status, config.grpc_status, &config.header_abort) {
        (Some(status), None, None) => match u16::try_from(status) {
            Ok(status) if (200..600).contains(&status) => FaultAbortKind::Http(status),
            _ => {
                let message = format!("http_status {status} is not in [200, 600)");
                return Err(ConfigError::new(format!("{path}.http_status"), message));
            }
        },
        (None, Some(status), None) => FaultAbortKind::Grpc(status),
        (None, None, Some(_)) => FaultAbortKind::Header,
        _ => {
            let message = "exactly one of http_status, grpc_status, header_abort is required";
            return Err(ConfigError::new(path, message));
        }
    };
    Ok(FaultAbort {
        kind,
        percentage: percentage(config.percentage.as_ref()),
    })
}

/// Unset is protobuf's default message: 0 out of 100, so the fault never applies.
fn percentage(config: Option<&bootstrap::FractionalPercent>) -> FractionalPercent {
    FractionalPercent {
        numerator: config.map_or(0, |p| p.numerator),
        denominator: config.and_then(|p| p.denominator).map_or(100, |d| d.0),
    }
}

/// `upstream_cluster` is decided from the route the fault filter sees; a weighted
/// route's cluster is picked by the router later with its own random value, so a fault
/// filter cannot know it yet.
pub(super) fn check_upstream_cluster(
    config: &FaultFilterConfig,
    routes: &RouteConfig,
) -> Result<()> {
    if config.upstream_cluster.is_none() {
        return Ok(());
    }
    let weighted = routes
        .virtual_hosts
        .iter()
        .flat_map(|vhost| &vhost.routes)
        .any(|route| {
            matches!(&route.action, RouteAction::Route(target)
                if matches!(target.cluster, ClusterSpecifier::Weighted { .. }))
        });
    if weighted {
        let message = format!("upstream_cluster with weighted_clusters routes {NOT_SUPPORTED}");
        let path = format!("{}.upstream_cluster", config.path);
        return Err(ConfigError::new(path, message));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::model::{FaultAbortKind, HttpFilterConfig};
    use crate::translate::snapshot_from_yaml;

    const HCM: &str = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config";

    /// A listener whose http_filters are a fault filter with `fields` (YAML at the
    /// indentation of the typed_config's fields), then the router.
    fn config(fields: &str) -> String {
        let routes = r#"              - match: {prefix: "/w"}
                route: {weighted_clusters: {clusters: [{name: a, weight: 1}]}}
              - match: {prefix: "/"}
                route: {cluster: a}"#;
        let filter = crate::translate::test_yaml::http_filter(
            "envoy.filters.http.fault",
            "envoy.extensions.filters.http.fault.v3.HTTPFault",
            fields,
        );
        crate::translate::test_yaml::with_http_filters(routes, &filter)
    }

    #[test]
    fn fault_filter_translates() {
        let yaml = config(
            "              delay: {fixed_delay: 0.3s, percentage: {numerator: 5, denominator: TEN_THOUSAND}}
              abort: {header_abort: {}, percentage: {numerator: 100}}
              headers: [{name: x-fault, exact_match: \"on\"}]
              max_active_faults: 3",
        );
        let snapshot = snapshot_from_yaml(&yaml).unwrap();
        let [HttpFilterConfig::Fault(fault)] = &snapshot.listeners[0].hcm.http_filters[..] else {
            panic!("one fault filter expected");
        };
        let delay = fault.delay.unwrap();
        assert_eq!(delay.fixed, Some(Duration::from_millis(300)));
        assert_eq!(
            (delay.percentage.numerator, delay.percentage.denominator),
            (5, 10_000)
        );
        let abort = fault.abort.unwrap();
        assert_eq!(abort.kind, FaultAbortKind::Header);
        assert_eq!(abort.percentage.denominator, 100);
        assert_eq!(fault.headers.len(), 1);
        assert_eq!(fault.max_active_faults, Some(3));
        assert_eq!(fault.upstream_cluster, None);
    }

    #[test]
    fn fault_errors_name_paths() {
        let fields = format!("{HCM}.http_filters[0].typed_config");
        let cases = [
            (
                "              downstream_nodes: [a]",
                format!("{fields}.downstream_nodes: downstream_nodes is not supported yet"),
            ),
            (
                "              response_rate_limit: {fixed_limit: {limit_kbps: 1}}",
                format!("{fields}.response_rate_limit: response_rate_limit is not supported yet"),
            ),
            (
                "              abort: {http_status: 600, percentage: {numerator: 1}}",
                format!("{fields}.abort.http_status: http_status 600 is not in [200, 600)"),
            ),
            (
                "              abort: {http_status: 503, grpc_status: 2}",
                format!("{fields}.abort: exactly one of"),
            ),
            (
                "              delay: {percentage: {numerator: 1}}",
                format!("{fields}.delay: exactly one of fixed_delay, header_delay"),
            ),
            (
                "              delay: {fixed_delay: 0s}",
                format!("{fields}.delay.fixed_delay: fixed_delay must be greater than 0s"),
            ),
            (
                "              delay: {fixed_delay: 1s, percentage: {denominator: THOUSAND}}",
                format!("{fields}.delay.percentage.denominator: unknown value"),
            ),
            (
                "              upstream_cluster: a",
                format!(
                    "{fields}.upstream_cluster: upstream_cluster with weighted_clusters routes is not supported yet"
                ),
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
