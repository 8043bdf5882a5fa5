use std::time::Duration;

use super::*;
use crate::model::{
    AccessLogSink, AppendAction, ClusterSpecifier, CodecType, Discovery, FormatCommand,
    FormatPiece, JsonValueTemplate, LbPolicy, LogFormat, RetryOn, RouteAction,
    ServerHeaderTransformation, UpstreamProtocol,
};

const BASE: &str = r#"
static_resources:
  listeners:
  - name: main
    address: {socket_address: {address: 127.0.0.1, port_value: 10000}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            name: local
            virtual_hosts:
            - name: backend
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: web}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: web
    connect_timeout: 0.25s
    type: STRICT_DNS
    lb_policy: ROUND_ROBIN
    load_assignment:
      cluster_name: web
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: web.local, port_value: 8080}}}
"#;

const HCM: &str = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config";

/// BASE with one edit; panics if `from` is not in BASE so a stale case cannot pass.
fn edited(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "{from:?} is not in BASE");
    BASE.replacen(from, to, 1)
}

#[test]
fn base_translates() {
    let snapshot = snapshot_from_yaml(BASE).unwrap();
    let listener = &snapshot.listeners[0];
    assert_eq!(listener.address, "127.0.0.1:10000".parse().unwrap());
    assert_eq!(listener.per_connection_buffer_limit_bytes, 1 << 20);
    let hcm = &listener.hcm;
    assert_eq!(hcm.codec_type, CodecType::Auto);
    assert_eq!(hcm.stream_idle_timeout, Some(Duration::from_secs(300)));
    assert_eq!(hcm.idle_timeout, Some(Duration::from_secs(3600)));
    assert_eq!(
        (hcm.request_timeout, hcm.request_headers_timeout),
        (None, None)
    );
    assert_eq!(hcm.max_request_headers_kb, 60);
    assert_eq!(hcm.http2, crate::model::Http2Settings::default());
    assert!(hcm.generate_request_id && !hcm.use_remote_address);
    assert_eq!(hcm.server_name, "strait");
    // A name of one's own, kept once however many configs name it; beyond ASCII too.
    for name in ["edge-1", "edge-1", "périphérie"] {
        let text = edited(
            "stat_prefix: ingress",
            &format!("stat_prefix: x\n          server_name: {name}"),
        );
        let snapshot = snapshot_from_yaml(&text).unwrap();
        assert_eq!(
            snapshot.listeners[0].hcm.server_name.as_bytes(),
            name.as_bytes()
        );
    }
    let cluster = &snapshot.clusters["web"];
    assert_eq!(cluster.discovery, Discovery::StrictDns);
    assert_eq!(cluster.connect_timeout, Duration::from_millis(250));
    assert_eq!(cluster.protocol, UpstreamProtocol::Http1);
    assert_eq!(
        (
            cluster.endpoints[0].host.as_str(),
            cluster.endpoints[0].port
        ),
        ("web.local", 8080)
    );
    assert_eq!(snapshot.cluster_order, ["web"]);
    let RouteAction::Route(target) = &hcm.route_config.virtual_hosts[0].routes[0].action else {
        panic!("not a route")
    };
    assert_eq!(target.timeout, Some(Duration::from_secs(15)));
    assert_eq!(
        snapshot.source["static_resources"]["clusters"][0]["name"],
        "web"
    );
    assert!(snapshot.admin.is_none());
}

#[test]
fn server_header_and_envoy_headers_options() {
    let hcm = |text: &str| {
        let snapshot = snapshot_from_yaml(text).unwrap();
        let hcm = &snapshot.listeners[0].hcm;
        (hcm.server_header_transformation, hcm.suppress_envoy_headers)
    };
    assert_eq!(hcm(BASE), (ServerHeaderTransformation::Overwrite, false));
    for (written, want) in [
        ("OVERWRITE", ServerHeaderTransformation::Overwrite),
        (
            "APPEND_IF_ABSENT",
            ServerHeaderTransformation::AppendIfAbsent,
        ),
        ("PASS_THROUGH", ServerHeaderTransformation::PassThrough),
        ("2", ServerHeaderTransformation::PassThrough),
    ] {
        let text = edited(
            "stat_prefix: ingress",
            &format!("stat_prefix: x\n          server_header_transformation: {written}"),
        );
        assert_eq!(hcm(&text).0, want, "{written}");
    }
    for (written, want) in [("true", true), ("false", false)] {
        let text = edited(
            "router.v3.Router",
            &format!("router.v3.Router\n              suppress_envoy_headers: {written}"),
        );
        assert_eq!(hcm(&text).1, want, "{written}");
    }
}

#[test]
fn default_host_for_http_10() {
    let with = |options: &str| {
        edited(
            "stat_prefix: ingress",
            &format!("stat_prefix: ingress\n          http_protocol_options: {options}"),
        )
    };
    let snapshot = snapshot_from_yaml(&with(
        "{accept_http_10: true, default_host_for_http_10: \"svc.local:8080\"}",
    ))
    .unwrap();
    let host = snapshot.listeners[0].hcm.default_host_for_http_10.clone();
    assert_eq!(host, Some(http::HeaderValue::from_static("svc.local:8080")));
    // Accepted without a default host, as in Envoy; HTTP/1.0 is served either way.
    let snapshot = snapshot_from_yaml(&with("{accept_http_10: false}")).unwrap();
    assert_eq!(snapshot.listeners[0].hcm.default_host_for_http_10, None);
    let path = format!("{HCM}.http_protocol_options.default_host_for_http_10");
    for (options, message) in [
        (
            "{default_host_for_http_10: h}",
            format!("{path}: needs accept_http_10: true, as in Envoy"),
        ),
        (
            "{accept_http_10: true, default_host_for_http_10: \"a b\"}",
            format!("{path}: \"a b\" is not a host and port"),
        ),
        (
            "{accept_http_10: true, default_host_for_http_10: \"u@h\"}",
            format!("{path}: \"u@h\" is not a host and port"),
        ),
    ] {
        let error = snapshot_from_yaml(&with(options)).unwrap_err().to_string();
        assert_eq!(error, message, "{options}");
    }
}

#[test]
fn errors_name_paths() {
    let routes = format!("{HCM}.route_config.virtual_hosts[0].routes[0]");
    let cluster = "static_resources.clusters[0]";
    let endpoint = format!("{cluster}.load_assignment.endpoints[0].lb_endpoints");
    let router = "name: envoy.filters.http.router\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
    let router_twice = format!("{router}\n          - name: envoy.filters.http.router");
    let cases: Vec<(&str, &str, String)> = vec![
        ("    filter_chains:", "    foo: 1\n    filter_chains:", "static_resources.listeners[0].foo: unknown field `foo`".into()),
        ("lb_policy: ROUND_ROBIN", "lb_policy: CLUSTER_PROVIDED", format!("{cluster}.lb_policy: CLUSTER_PROVIDED is not supported yet")),
        ("lb_policy: ROUND_ROBIN", "lb_policy: FASTEST", format!("{cluster}.lb_policy: unknown value \"FASTEST\", expected one of ROUND_ROBIN")),
        ("type: STRICT_DNS", "type: EDS", format!("{cluster}.type: EDS is not supported yet")),
        ("lb_policy: ROUND_ROBIN", "circuit_breakers: {thresholds: [{retry_budget: {budget_percent: {value: 120}}}]}", format!("{cluster}.circuit_breakers.thresholds[0].retry_budget.budget_percent.value: must be between 0 and 100")),
        ("lb_policy: ROUND_ROBIN", "circuit_breakers: {per_host_thresholds: [{max_conections: 1}]}", format!("{cluster}.circuit_breakers.per_host_thresholds[0].max_conections: unknown field `max_conections`")),
        ("lb_policy: ROUND_ROBIN", "circuit_breakers: {thresholds: [{max_requests: -1}]}", format!("{cluster}.circuit_breakers.thresholds[0].max_requests: invalid value")),
        ("lb_policy: ROUND_ROBIN", "circuit_breakers: {thresholds: [{max_conections: 1}]}", format!("{cluster}.circuit_breakers.thresholds[0].max_conections: unknown field `max_conections`")),
        ("route: {cluster: web}", "route: {cluster: nope}", format!("{routes}.route.cluster: unknown cluster 'nope'")),
        ("route: {cluster: web}", "route: {cluster: web, retry_policy: {retry_priority: {}}}", format!("{routes}.route.retry_policy.retry_priority: retry_priority is not supported yet")),
        ("route: {cluster: web}", "route: {cluster: web, retry_policy: {rate_limited_retry_back_off: {}}}", format!("{routes}.route.retry_policy.rate_limited_retry_back_off: rate_limited_retry_back_off is not supported yet")),
        ("route: {cluster: web}", "route: {cluster: web, hedge_policy: {initial_requests: -1}}", format!("{routes}.route.hedge_policy.initial_requests: invalid value")),
        ("route: {cluster: web}", "route: {cluster: web, hedge_policy: {bogus: 1}}", format!("{routes}.route.hedge_policy.bogus: unknown field `bogus`")),
        ("route: {cluster: web}", "route: {cluster: web, retry_policy: {retry_on: \"5xx,bogus\"}}", format!("{routes}.route.retry_policy.retry_on: unknown retry_on condition 'bogus'")),
        ("route: {cluster: web}", "route: {cluster: web, retry_policy: {retry_on: envoy-ratelimited}}", format!("{routes}.route.retry_policy.retry_on: retry_on 'envoy-ratelimited' is not supported yet")),
        ("route: {cluster: web}", "route: {cluster: web, retry_policy: {retry_on: 5xx, retriable_status_codes: [700]}}", format!("{routes}.route.retry_policy.retriable_status_codes[0]: 700 is not an HTTP status code")),
        ("route: {cluster: web}", "route: {cluster: web, retry_policy: {retry_on: 5xx, retry_back_off: {base_interval: 1s, max_interval: 0.5s}}}", format!("{routes}.route.retry_policy.retry_back_off.max_interval: max_interval must be greater than or equal to base_interval")),
        ("route: {cluster: web}", "route: {cluster: web, retry_policy: {retry_on: 5xx, retry_back_off: {max_interval: 1s}}}", format!("{routes}.route.retry_policy.retry_back_off.base_interval: base_interval is required")),
        ("route: {cluster: web}", "route: {cluster: web, retry_policy: {retry_on: 5xx, retry_host_predicate: [{name: envoy.retry_host_predicates.omit_canary_hosts}]}}", format!("{routes}.route.retry_policy.retry_host_predicate[0].name: retry host predicate 'envoy.retry_host_predicates.omit_canary_hosts' is not supported yet")),
        ("route: {cluster: web}", "route: {cluster: web, retry_policy: {retry_on: 5xx, retriable_headers: [{name: \":status\"}]}}", format!("{routes}.route.retry_policy.retriable_headers[0].name: matching pseudo-header ':status' is not supported yet")),
        ("route: {cluster: web}", "route: {cluster: web, retry_policy: {retry_on: 5xx, num_retries: -1}}", format!("{routes}.route.retry_policy.num_retries: invalid value")),
        ("route: {cluster: web}", "route: {cluster: web, retry_policy: {retry_on: 5xx, foo: 1}}", format!("{routes}.route.retry_policy.foo: unknown field `foo`")),
        ("domains: [\"*\"]", "domains: [\"*\"]\n              retry_policy: {retry_on: nope}", format!("{HCM}.route_config.virtual_hosts[0].retry_policy.retry_on: unknown retry_on condition 'nope'")),
        ("domains: [\"*\"]", "domains: [\"*\"]\n              include_attempt_count_in_response: true", format!("{HCM}.route_config.virtual_hosts[0].include_attempt_count_in_response: include_attempt_count_in_response is not supported yet")),
        ("match: {prefix: \"/\"}", "match: {safe_regex: {regex: \"(\", google_re2: {}}}", format!("{routes}.match.safe_regex.regex: invalid regex")),
        ("connect_timeout: 0.25s", "connect_timeout: 5", format!("{cluster}.connect_timeout: invalid duration 5")),
        ("connect_timeout: 0.25s", "connect_timeout: {seconds: 1, nanos: 1000000000}", format!("{cluster}.connect_timeout: nanos must be less")),
        ("connect_timeout: 0.25s", "connect_timeout: 0s", format!("{cluster}.connect_timeout: must be greater than 0")),
        ("router.v3.Router", "lua.v3.Lua", format!("{HCM}.http_filters[0].typed_config: envoy.extensions.filters.http.lua.v3.Lua is not supported yet")),
        (router, "name: envoy.filters.http.cors", format!("{HCM}.http_filters[0].name: envoy.filters.http.cors is not supported yet")),
        (router, &router_twice, format!("{HCM}.http_filters[0]: envoy.filters.http.router must be the last filter")),
        ("stat_prefix: ingress", "codec_type: HTTP3", format!("{HCM}.codec_type: HTTP3 is not supported yet")),
        ("stat_prefix: ingress", "stat_prefix: x\n          rds: {}", format!("{HCM}.rds: rds is not supported yet")),
        ("stat_prefix: ingress", "codec_type: AUTO", format!("{HCM}: missing field `stat_prefix`")),
        ("HttpConnectionManager", "TcpProxy", format!("{HCM}: envoy.extensions.filters.network.http_connection_manager.v3.TcpProxy is not supported yet")),
        ("  clusters:\n  - name: web", "  clusters:\n  - name: web\n  - name: web", "static_resources.clusters[1].name: duplicate cluster name 'web'".into()),
        ("type: STRICT_DNS", "type: STATIC", format!("{endpoint}[0].endpoint.address.socket_address.address: 'web.local' is not an IP address")),
        ("type: STRICT_DNS", "type: LOGICAL_DNS", String::new()),
        ("- lb_endpoints:", "- priority: 200\n        lb_endpoints:", format!("{cluster}.load_assignment.endpoints[0].priority: priority 200 is above the maximum of 127")),
        ("port_value: 8080", "port_value: 70000", format!("{endpoint}[0].endpoint.address.socket_address.port_value: invalid value")),
        ("address: 127.0.0.1", "address: localhost", "static_resources.listeners[0].address.socket_address.address: 'localhost' is not an IP address".into()),
        ("port_value: 10000}", "port_value: 10000, protocol: UDP}", "static_resources.listeners[0].address.socket_address.protocol: UDP is not supported yet".into()),
        ("route: {cluster: web}", "route: {weighted_clusters: {clusters: [{name: web, weight: 0}]}}", format!("{routes}.route.weighted_clusters.clusters: weights must not sum to 0")),
        ("route: {cluster: web}", "route: {weighted_clusters: {clusters: [{name: web, weight: 2}], total_weight: 3}}", format!("{routes}.route.weighted_clusters.total_weight: total_weight 3 is not the sum")),
        ("route: {cluster: web}", "route: {cluster: web}\n                request_headers_to_add: [{header: {key: \"bad key\", value: x}}]", format!("{routes}.request_headers_to_add[0].header.key: invalid header name 'bad key'")),
        ("route: {cluster: web}", "route: {cluster: web}\n                request_headers_to_remove: [\":path\"]", format!("{routes}.request_headers_to_remove[0]: ':path' may not be modified")),
        ("route: {cluster: web}", "route: {cluster: web}\n                request_headers_to_add: [{header: {key: x, value: \"%REQ(y)%\"}}]", format!("{routes}.request_headers_to_add[0].header.value: format commands in header values is not supported yet")),
        ("route: {cluster: web}", "route: {cluster: web}\n                response_headers_to_add: [{header: {key: x, value: y}, append: true, append_action: ADD_IF_ABSENT}]", format!("{routes}.response_headers_to_add[0]: only one of append, append_action")),
        ("match: {prefix: \"/\"}", "match: {safe_regex: {regex: \"/a\"}}\n                route: {cluster: web, prefix_rewrite: /b}\n              - match: {prefix: /}", format!("{routes}.route.prefix_rewrite: prefix_rewrite cannot be used with a safe_regex match")),
        ("match: {prefix: \"/\"}", "match: {path_separated_prefix: /a/}", format!("{routes}.match.path_separated_prefix: path_separated_prefix must be")),
        ("match: {prefix: \"/\"}", "match: {prefix: /, grpc: {}}", format!("{routes}.match.grpc: grpc is not supported yet")),
        ("match: {prefix: \"/\"}", "match: {prefix: /, headers: [{name: x, exact_match: a, present_match: true}]}", format!("{routes}.match.headers[0]: only one of exact_match")),
        ("match: {prefix: \"/\"}", "match: {prefix: /, headers: [{name: \":method\", exact_match: GET}]}", format!("{routes}.match.headers[0].name: matching pseudo-header ':method' is not supported yet")),
        ("match: {prefix: \"/\"}", "match: {}", format!("{routes}.match: exactly one of prefix, path, safe_regex, path_separated_prefix is required")),
        ("route: {cluster: web}", "route: {cluster: web}\n                redirect: {https_redirect: true}", format!("{routes}: exactly one of route, redirect, direct_response")),
        ("route: {cluster: web}", "route: {cluster: web, regex_rewrite: {pattern: {regex: a}, substitution: \"\\\\1\"}}", format!("{routes}.route.regex_rewrite.substitution: \\1 names a capture group")),
        ("route: {cluster: web}", "direct_response: {status: 600}", format!("{routes}.direct_response.status: status must be in 100..=599")),
        ("domains: [\"*\"]", "domains: [\"a.com\", \"A.com\"]", format!("{HCM}.route_config.virtual_hosts[0].domains[1]: domain 'a.com' is already used by virtual host 'backend'")),
        ("domains: [\"*\"]", "domains: [\"*\"]\n              require_tls: ALL", format!("{HCM}.route_config.virtual_hosts[0].require_tls: require_tls is not supported yet")),
        ("stat_prefix: ingress", "stat_prefix: x\n          access_log: [{name: envoy.access_loggers.file, typed_config: {\"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog, path: /tmp/x, log_format: {text_format_source: {inline_string: \"%FOO%\"}}}}]", format!("{HCM}.access_log[0].typed_config.log_format.text_format_source: unknown command %FOO%")),
        ("stat_prefix: ingress", "stat_prefix: x\n          access_log: [{name: envoy.access_loggers.stdout, filter: {}}]", format!("{HCM}.access_log[0].filter: filter is not supported yet")),
        ("stat_prefix: ingress", "stat_prefix: x\n          max_request_headers_kb: 9000", format!("{HCM}.max_request_headers_kb: must be between 1 and 8192")),
        ("stat_prefix: ingress", "stat_prefix: x\n          server_name: \"a\\nb\"", format!("{HCM}.server_name: is not a valid header value")),
        ("stat_prefix: ingress", "stat_prefix: x\n          server_header_transformation: REPLACE", format!("{HCM}.server_header_transformation: unknown value \"REPLACE\", expected one of OVERWRITE, APPEND_IF_ABSENT, PASS_THROUGH")),
        ("router.v3.Router", "router.v3.Router\n              suppress_envoy_headers: yes", format!("{HCM}.http_filters[0].typed_config.suppress_envoy_headers: invalid type")),
        ("stat_prefix: ingress", "stat_prefix: x\n          http2_protocol_options: {initial_stream_window_size: 1000}", format!("{HCM}.http2_protocol_options.initial_stream_window_size: 1000 is not between 65535 and 2147483647")),
        ("stat_prefix: ingress", "stat_prefix: x\n          http2_protocol_options: {max_concurrent_streams: 0}", format!("{HCM}.http2_protocol_options.max_concurrent_streams: 0 is not between 1 and 2147483647")),
        ("stat_prefix: ingress", "stat_prefix: x\n          http2_protocol_options: {allow_connect: true}", format!("{HCM}.http2_protocol_options.allow_connect: allow_connect is not supported yet")),
        ("static_resources:", "dynamic_resources: {}\nstatic_resources:", "dynamic_resources: dynamic_resources is not supported yet".into()),
        ("static_resources:", "static_resources: [", ".: ".into()),
    ];
    for (from, to, want) in cases {
        let text = edited(from, to);
        match snapshot_from_yaml(&text) {
            Err(error) => assert!(
                error.to_string().starts_with(&want),
                "{to}\n  got:  {error}\n  want: {want}"
            ),
            Ok(_) => assert!(want.is_empty(), "{to}: accepted, want {want}"),
        }
    }
}

#[test]
fn duplicate_listeners() {
    let listener = &BASE[BASE.find("  - name: main").unwrap()..BASE.find("  clusters:").unwrap()];
    let twice = |second: &str| BASE.replacen(listener, &format!("{listener}{second}"), 1);
    let error =
        snapshot_from_yaml(&twice(&listener.replace("name: main", "name: other"))).unwrap_err();
    assert_eq!(error.path, "static_resources.listeners[1].address");
    assert_eq!(
        error.message,
        "127.0.0.1:10000 is already used by listener 'main'"
    );
    let error = snapshot_from_yaml(&twice(&listener.replace("10000", "10001"))).unwrap_err();
    assert_eq!(
        error.to_string(),
        "static_resources.listeners[1].name: duplicate listener name 'main'"
    );
}

#[test]
fn circuit_breakers_default_and_first_entry_wins() {
    let snapshot = snapshot_from_yaml(BASE).unwrap();
    let [defaults, _] = snapshot.clusters["web"].circuit_breakers;
    assert_eq!(defaults, crate::model::CircuitBreakers::default());
    assert_eq!(
        (
            defaults.max_connections,
            defaults.max_pending_requests,
            defaults.max_requests,
            defaults.max_retries
        ),
        (1024, 1024, 1024, 3)
    );
    let text = edited(
        "lb_policy: ROUND_ROBIN",
        "lb_policy: ROUND_ROBIN\n    circuit_breakers: {thresholds: [{priority: DEFAULT, max_requests: 2, max_retries: 0, track_remaining: true}, {max_requests: 9}]}",
    );
    let [set, high] = snapshot_from_yaml(&text).unwrap().clusters["web"].circuit_breakers;
    assert_eq!(high, crate::model::CircuitBreakers::default(), "HIGH unset");
    assert_eq!((set.max_requests, set.max_retries), (2, 0));
    assert_eq!(
        (set.max_connections, set.max_pending_requests),
        (1024, 1024)
    );
    assert!(set.track_remaining);
    // HIGH thresholds apart from DEFAULT's; a route picks them with `priority: HIGH`.
    let text = edited(
        "lb_policy: ROUND_ROBIN",
        "lb_policy: ROUND_ROBIN\n    circuit_breakers: {thresholds: [{priority: HIGH, max_requests: 7}, {max_requests: 2}, {priority: HIGH, max_requests: 9}]}",
    )
    .replace("route: {cluster: web}", "route: {cluster: web, priority: HIGH}");
    let snapshot = snapshot_from_yaml(&text).unwrap();
    let [default, high] = snapshot.clusters["web"].circuit_breakers;
    assert_eq!(
        (default.max_requests, high.max_requests),
        (2, 7),
        "first entry per priority wins"
    );
}

#[test]
fn logical_dns_needs_one_endpoint() {
    let endpoint =
        "        - endpoint: {address: {socket_address: {address: web.local, port_value: 8080}}}\n";
    let text = edited(endpoint, &endpoint.repeat(2)).replace("STRICT_DNS", "LOGICAL_DNS");
    let error = snapshot_from_yaml(&text).unwrap_err();
    assert_eq!(error.path, "static_resources.clusters[0].load_assignment");
    assert_eq!(
        error.message,
        "LOGICAL_DNS clusters need exactly one endpoint, found 2"
    );
}

#[test]
fn full_config() {
    let text = r#"
node: {id: n1, cluster: c1}
admin:
  access_log_path: /dev/null
  address: {socket_address: {address: "::1", port_value: 9901}}
static_resources:
  listeners:
  - name: main
    address: {socket_address: {address: 0.0.0.0, port_value: 8080}}
    per_connection_buffer_limit_bytes: 32768
    traffic_direction: INBOUND
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/udpa.type.v1.TypedStruct
          type_url: type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          value:
            stat_prefix: edge
            codec_type: 2
            stream_idle_timeout: 0s
            request_timeout: {seconds: 30}
            common_http_protocol_options: {idle_timeout: 60s}
            upgrade_configs: [{upgrade_type: WebSocket}, {upgrade_type: CONNECT, enabled: false}]
            http2_protocol_options: {initial_stream_window_size: 65536}
            access_log:
            - name: envoy.access_loggers.stdout
            - name: envoy.access_loggers.file
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
                path: /var/log/access.log
                log_format:
                  json_format: {code: "%RESPONSE_CODE%", nested: {method: "%REQ(:METHOD)%"}, n: 1}
            - name: envoy.access_loggers.stderr
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog
                log_format: {text_format: "%PROTOCOL%"}
            route_config:
              virtual_hosts:
              - name: api
                domains: [api.example.com, "*.example.com", "api.*"]
                response_headers_to_add:
                - header: {key: x-a, value: "100%%"}
                  append: false
                routes:
                - match: {path: /health}
                  direct_response: {status: 200, body: {inline_bytes: b2s=}}
                - match: {prefix: /old}
                  redirect: {https_redirect: true, response_code: PERMANENT_REDIRECT}
                - match: {prefix: /}
                  route:
                    weighted_clusters:
                      clusters: [{name: h2, weight: 3}, {name: dns, weight: 1}]
                    timeout: 0s
                    idle_timeout: 10s
            http_filters: [{name: envoy.filters.http.router}]
  clusters:
  - name: h2
    lb_policy: RANDOM
    load_assignment:
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 10.0.0.1, port_value: 80}}}
          load_balancing_weight: 5
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
        common_http_protocol_options: {idle_timeout: 0s}
  - name: dns
    type: LOGICAL_DNS
    dns_lookup_family: V4_ONLY
    load_assignment:
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: example.com, port_value: 443}}}
"#;
    let snapshot = snapshot_from_yaml(text).unwrap();
    assert_eq!(
        (snapshot.node.id.as_str(), snapshot.node.cluster.as_str()),
        ("n1", "c1")
    );
    assert_eq!(
        snapshot.admin.unwrap().address,
        "[::1]:9901".parse().unwrap()
    );
    let listener = &snapshot.listeners[0];
    assert_eq!(listener.per_connection_buffer_limit_bytes, 32768);
    let hcm = &listener.hcm;
    assert_eq!(hcm.stat_prefix, "edge");
    assert_eq!(hcm.codec_type, CodecType::Http2);
    assert_eq!(hcm.stream_idle_timeout, None);
    assert_eq!(hcm.request_timeout, Some(Duration::from_secs(30)));
    assert_eq!(hcm.idle_timeout, Some(Duration::from_secs(60)));
    assert_eq!(hcm.upgrade_types, ["websocket"]);

    let [stdout, file, stderr] = hcm.access_logs.as_slice() else {
        panic!("three logs")
    };
    assert!(
        matches!((&stdout.sink, &stdout.format), (AccessLogSink::Stdout, LogFormat::Text(p)) if p.len() > 10)
    );
    assert!(
        matches!(&file.sink, AccessLogSink::File(path) if path.to_str() == Some("/var/log/access.log"))
    );
    let LogFormat::Json(fields) = &file.format else {
        panic!("json")
    };
    let keys: Vec<&str> = fields.iter().map(|(key, _)| key.as_str()).collect();
    assert_eq!(keys, ["code", "n", "nested"]);
    assert!(
        matches!(&fields[0].1, JsonValueTemplate::Format(p) if p == &[FormatPiece::Command(FormatCommand::ResponseCode)])
    );
    assert!(matches!(&fields[1].1, JsonValueTemplate::Literal(n) if n == 1));
    assert!(matches!(&fields[2].1, JsonValueTemplate::Object(inner) if inner.len() == 1));
    assert!(
        matches!(&stderr.format, LogFormat::Text(p) if p == &[FormatPiece::Command(FormatCommand::Protocol)])
    );

    let vhost = &hcm.route_config.virtual_hosts[0];
    let added = &vhost.headers.response_headers_to_add[0];
    assert_eq!(
        (added.value.to_str().unwrap(), added.action),
        ("100%", AppendAction::OverwriteIfExistsOrAdd)
    );
    let index = &hcm.route_config.index;
    assert_eq!(index.exact["api.example.com"], 0);
    assert_eq!(index.suffixes, [(".example.com".to_owned(), 0)]);
    assert_eq!(index.prefixes, [("api.".to_owned(), 0)]);
    assert!(
        matches!(&vhost.routes[0].action, RouteAction::DirectResponse { status: 200, body: Some(b) } if &b[..] == b"ok")
    );
    assert!(
        matches!(&vhost.routes[1].action, RouteAction::Redirect(r) if r.status == 308 && r.scheme.as_deref() == Some("https"))
    );
    let RouteAction::Route(target) = &vhost.routes[2].action else {
        panic!("route")
    };
    assert!(matches!(
        &target.cluster,
        ClusterSpecifier::Weighted {
            total_weight: 4,
            ..
        }
    ));
    assert_eq!(
        (target.timeout, target.idle_timeout),
        (None, Some(Duration::from_secs(10)))
    );

    let h2 = &snapshot.clusters["h2"];
    assert_eq!(
        (h2.protocol, h2.idle_timeout, h2.lb_policy),
        (UpstreamProtocol::Http2, None, LbPolicy::Random)
    );
    assert_eq!(h2.endpoints[0].weight, 5);
    assert_eq!(snapshot.clusters["dns"].discovery, Discovery::LogicalDns);
    assert_eq!(snapshot.cluster_order, ["h2", "dns"]);
}

#[test]
fn quick() {
    let snapshot = quick_snapshot("127.0.0.1:8000".parse().unwrap(), "backend:9000").unwrap();
    assert_eq!(snapshot.listeners[0].name, "quick");
    assert_eq!(snapshot.listeners[0].hcm.stat_prefix, "quick");
    let upstream = &snapshot.clusters["upstream"];
    assert_eq!(upstream.discovery, Discovery::StrictDns);
    assert_eq!(
        (
            upstream.endpoints[0].host.as_str(),
            upstream.endpoints[0].port
        ),
        ("backend", 9000)
    );

    let snapshot = quick_snapshot("[::]:80".parse().unwrap(), "[::1]:9000").unwrap();
    assert_eq!(snapshot.clusters["upstream"].discovery, Discovery::Static);
    assert_eq!(snapshot.clusters["upstream"].endpoints[0].host, "::1");

    for bad in ["backend", "backend:x", ":80", "backend:0"] {
        let error = quick_snapshot("127.0.0.1:8000".parse().unwrap(), bad).unwrap_err();
        assert_eq!(error.path, "--upstream", "{bad}");
    }
}

#[test]
fn io_error_names_file() {
    let error = snapshot_from_path(Path::new("/nonexistent/strait.yaml")).unwrap_err();
    assert_eq!(error.path, "/nonexistent/strait.yaml");
}

#[test]
fn empty_config_is_empty_snapshot() {
    let snapshot = snapshot_from_yaml("").unwrap();
    assert!(snapshot.listeners.is_empty() && snapshot.clusters.is_empty());
}

/// A route's `retry_policy` replaces its virtual host's whole; a route without one
/// inherits the virtual host's. Defaults are Envoy's.
#[test]
fn retry_policy_defaults_and_inheritance() {
    let text = edited(
        "              routes:\n              - match: {prefix: \"/\"}\n                route: {cluster: web}",
        "              retry_policy: {retry_on: \"5xx, reset\"}\n              include_request_attempt_count: true\n              routes:\n              - match: {prefix: \"/own\"}\n                route: {cluster: web, retry_policy: {retry_on: connect-failure, num_retries: 3, per_try_timeout: 0.5s, retry_back_off: {base_interval: 0.1s}, retry_host_predicate: [{name: envoy.retry_host_predicates.previous_hosts}], host_selection_retry_max_attempts: 4}}\n              - match: {prefix: \"/\"}\n                route: {cluster: web}",
    );
    let snapshot = snapshot_from_yaml(&text).unwrap();
    let vhost = &snapshot.listeners[0].hcm.route_config.virtual_hosts[0];
    assert!(vhost.include_request_attempt_count);
    let policy = |i: usize| match &vhost.routes[i].action {
        RouteAction::Route(t) => t.retry_policy.clone().expect("a retry policy"),
        _ => panic!("route action"),
    };
    let own = policy(0);
    assert_eq!(own.retry_on, RetryOn::CONNECT_FAILURE);
    assert_eq!(own.num_retries, 3);
    assert_eq!(own.per_try_timeout, Some(Duration::from_millis(500)));
    assert_eq!(own.base_interval, Duration::from_millis(100));
    assert_eq!(own.max_interval, Duration::from_secs(1));
    assert!(own.previous_hosts);
    assert_eq!(own.host_selection_retry_max_attempts, 4);
    let inherited = policy(1);
    assert_eq!(
        inherited.retry_on,
        RetryOn(RetryOn::FIVE_XX.0 | RetryOn::RESET.0)
    );
    assert_eq!(inherited.num_retries, 1);
    assert_eq!(inherited.per_try_timeout, None);
    assert_eq!(inherited.base_interval, Duration::from_millis(25));
    assert_eq!(inherited.max_interval, Duration::from_millis(250));
    assert!(!inherited.previous_hosts);
    assert_eq!(inherited.host_selection_retry_max_attempts, 1);
}

/// Hedging, per-try idle timeouts, stream durations, internal addresses and retry
/// budgets translate with Envoy's defaults; a route's hedge policy replaces its virtual
/// host's, and a route with `max_stream_duration` has no route `timeout`.
#[test]
fn resilience_fields_translate() {
    let text = edited(
        "              routes:\n              - match: {prefix: \"/\"}\n                route: {cluster: web}",
        "              hedge_policy: {hedge_on_per_try_timeout: true}\n              routes:\n              - match: {prefix: \"/own\"}\n                route: {cluster: web, hedge_policy: {}, max_stream_duration: {max_stream_duration: 2s, grpc_timeout_header_max: 0s}, retry_policy: {retry_on: \"unavailable,5xx\", per_try_idle_timeout: 0.3s}}\n              - match: {prefix: \"/\"}\n                route: {cluster: web}",
    )
    .replace(
        "          stat_prefix: ingress\n",
        "          stat_prefix: ingress\n          common_http_protocol_options: {max_stream_duration: 30s}\n          internal_address_config: {cidr_ranges: [{address_prefix: 10.0.0.0, prefix_len: 8}]}\n",
    )
    .replace(
        "lb_policy: ROUND_ROBIN",
        "lb_policy: ROUND_ROBIN\n    circuit_breakers: {thresholds: [{retry_budget: {min_retry_concurrency: 5}}]}",
    );
    let snapshot = snapshot_from_yaml(&text).unwrap();
    let hcm = &snapshot.listeners[0].hcm;
    assert_eq!(hcm.max_stream_duration, Some(Duration::from_secs(30)));
    let internal = hcm.internal_addresses.as_ref().expect("internal addresses");
    assert!(internal.contains("10.9.9.9".parse().unwrap()));
    assert!(!internal.contains("127.0.0.1".parse().unwrap()));
    let target = |i: usize| match &hcm.route_config.virtual_hosts[0].routes[i].action {
        RouteAction::Route(t) => t,
        _ => panic!("route action"),
    };
    let own = target(0);
    assert!(
        !own.hedge_on_per_try_timeout,
        "the route's own policy replaces the vhost's"
    );
    assert_eq!(
        own.timeout, None,
        "max_stream_duration replaces the route timeout"
    );
    let msd = own.max_stream_duration.expect("max_stream_duration");
    assert_eq!(msd.max_stream_duration, Some(Duration::from_secs(2)));
    assert_eq!(msd.grpc_timeout_header_max, Some(Duration::ZERO));
    let policy = own.retry_policy.as_ref().expect("retry policy");
    assert_eq!(
        policy.per_try_idle_timeout,
        Some(Duration::from_millis(300))
    );
    assert!(policy.retry_on.contains(RetryOn::GRPC_UNAVAILABLE));
    assert!(policy.retry_on.contains(RetryOn::FIVE_XX));
    let inherited = target(1);
    assert!(inherited.hedge_on_per_try_timeout);
    assert_eq!(inherited.timeout, Some(Duration::from_secs(15)));
    let budget = snapshot.clusters["web"].circuit_breakers[0]
        .retry_budget
        .expect("retry budget");
    assert_eq!(budget.budget_percent, 20.0);
    assert_eq!(budget.min_retry_concurrency, 5);
    for (old, new, want) in [
        (
            "stat_prefix: ingress\n",
            "stat_prefix: ingress\n          internal_address_config: {cidr_ranges: [{address_prefix: nope, prefix_len: 8}]}\n",
            "internal_address_config.cidr_ranges[0].address_prefix: 'nope' is not an IP address",
        ),
        (
            "stat_prefix: ingress\n",
            "stat_prefix: ingress\n          internal_address_config: {cidr_ranges: [{address_prefix: 10.0.0.0, prefix_len: 33}]}\n",
            "internal_address_config.cidr_ranges[0].prefix_len: must be at most 32",
        ),
        (
            "route: {cluster: web}",
            "route: {cluster: web, max_stream_duration: {max_stream_duration: 1s, bogus: 1}}",
            "route.max_stream_duration.bogus: unknown field `bogus`",
        ),
    ] {
        let error = snapshot_from_yaml(&BASE.replacen(old, new, 1)).unwrap_err().to_string();
        assert!(error.contains(want), "want {want:?} in {error:?}");
    }
}

#[test]
fn http2_protocol_options_reach_the_server_settings() {
    let text = edited(
        "stat_prefix: ingress",
        "stat_prefix: x\n          http2_protocol_options: {max_concurrent_streams: 7, initial_stream_window_size: 70000, initial_connection_window_size: 2147483647, hpack_table_size: 65536}",
    );
    let snapshot = snapshot_from_yaml(&text).unwrap();
    assert_eq!(
        snapshot.listeners[0].hcm.http2,
        crate::model::Http2Settings {
            max_concurrent_streams: 7,
            initial_stream_window_size: 70_000,
            initial_connection_window_size: 2_147_483_647,
        }
    );
}
