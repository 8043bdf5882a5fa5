//! Table tests of the routing decisions. Models are built through the translator from
//! JSON (valid YAML), so each case reads as the Envoy config it stands for.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{json, Value};

use crate::model::{RequestView, RouteAction, RouteConfig, RouteTarget};
use crate::translate::snapshot_from_yaml;

fn route_config(virtual_hosts: Value) -> Arc<RouteConfig> {
    let bootstrap = json!({"static_resources": {"listeners": [{
        "name": "l",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "s",
                "route_config": {"validate_clusters": false, "virtual_hosts": virtual_hosts},
                "http_filters": [{"name": "envoy.filters.http.router"}],
            },
        }]}],
    }]}});
    let snapshot = snapshot_from_yaml(&bootstrap.to_string()).unwrap();
    snapshot.listeners[0].hcm.route_config.clone()
}

/// A config with one virtual host holding one route.
fn one_route(route: Value) -> Arc<RouteConfig> {
    route_config(json!([{"name": "v", "domains": ["*"], "routes": [route]}]))
}

/// Request headers as written in a table row.
type Pairs<'a> = &'a [(&'a str, &'a str)];

fn headers(pairs: Pairs) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

fn values(map: &HeaderMap, name: &str) -> Vec<String> {
    map.get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

#[test]
fn virtual_host_lookup() {
    let hosts = |names: &[&str]| {
        let vhosts: Vec<Value> = names
            .iter()
            .map(|spec| {
                let (name, domains) = spec.split_once('=').unwrap();
                json!({"name": name, "domains": domains.split(',').collect::<Vec<_>>()})
            })
            .collect();
        route_config(Value::Array(vhosts))
    };
    let config = hosts(&[
        "exact=example.com,example.com:8080",
        "suffix=*.example.com",
        "longer-suffix=*.api.example.com",
        "dash=*-bar.foo.com",
        "prefix=example.*",
        "longer-prefix=example.co.*",
        "default=*",
    ]);
    for (host, want) in [
        ("example.com", "exact"),
        ("EXAMPLE.Com", "exact"),
        ("example.com:8080", "exact"),
        ("example.com:9090", "prefix"),
        ("www.example.com", "suffix"),
        ("api.example.com", "suffix"),
        ("v1.api.example.com", "longer-suffix"),
        (".example.com", "default"),
        ("baz-bar.foo.com", "dash"),
        ("-bar.foo.com", "default"),
        ("example.org", "prefix"),
        ("example.co.uk", "longer-prefix"),
        ("example.", "default"),
        ("other.net", "default"),
        ("", "default"),
    ] {
        assert_eq!(
            config.find_virtual_host(host).map(|v| v.name.as_str()),
            Some(want),
            "{host}"
        );
    }
    let no_default = hosts(&["exact=example.com"]);
    assert!(no_default.find_virtual_host("example.com:80").is_none());
}

#[test]
#[rustfmt::skip]
fn route_matching() {
    let cases: Vec<(Value, &str, Pairs, bool)> = vec![
        (json!({"prefix": "/a"}), "/a", &[], true),
        (json!({"prefix": "/a"}), "/ab/c", &[], true),
        (json!({"prefix": "/a"}), "/b", &[], false),
        (json!({"prefix": "/a"}), "/A", &[], false),
        (json!({"prefix": "/A", "case_sensitive": false}), "/abc", &[], true),
        (json!({"prefix": "/a?x"}), "/a?x=1", &[], true),
        (json!({"path": "/a"}), "/a", &[], true),
        (json!({"path": "/a"}), "/a?x=1", &[], true),
        (json!({"path": "/a"}), "/a/", &[], false),
        (json!({"path": "/a"}), "/A", &[], false),
        (json!({"path": "/A", "case_sensitive": false}), "/a", &[], true),
        (json!({"safe_regex": {"regex": "/a/[0-9]+", "google_re2": {}}}), "/a/12", &[], true),
        (json!({"safe_regex": {"regex": "/a/[0-9]+"}}), "/a/12?x", &[], true),
        (json!({"safe_regex": {"regex": "/a/[0-9]+"}}), "/a/12/b", &[], false),
        (json!({"safe_regex": {"regex": "/a/[0-9]+"}}), "/x/a/12", &[], false),
        (json!({"path_separated_prefix": "/foo"}), "/foo", &[], true),
        (json!({"path_separated_prefix": "/foo"}), "/foo/bar", &[], true),
        (json!({"path_separated_prefix": "/foo"}), "/foo?x", &[], true),
        (json!({"path_separated_prefix": "/foo"}), "/foobar", &[], false),
        (json!({"path_separated_prefix": "/foo"}), "/FOO", &[], false),
        (json!({"path_separated_prefix": "/foo", "case_sensitive": false}), "/FOO/x", &[], true),
    ];
    let header = |matcher: Value| json!({"prefix": "/", "headers": [matcher]});
    let header_cases: Vec<(Value, Pairs, bool)> = vec![
        (json!({"name": "x", "exact_match": "a"}), &[("x", "a")], true),
        (json!({"name": "X", "exact_match": "a"}), &[("x", "a")], true),
        (json!({"name": "x", "exact_match": "a"}), &[("x", "b")], false),
        (json!({"name": "x", "exact_match": "a"}), &[], false),
        (json!({"name": "x", "exact_match": "a", "invert_match": true}), &[], false),
        (json!({"name": "x", "exact_match": "a", "invert_match": true}), &[("x", "b")], true),
        (json!({"name": "x", "exact_match": "a", "invert_match": true}), &[("x", "a")], false),
        (json!({"name": "x", "exact_match": "a,b"}), &[("x", "a"), ("x", "b")], true),
        (json!({"name": "x", "present_match": true}), &[("x", "")], true),
        (json!({"name": "x", "present_match": true}), &[], false),
        (json!({"name": "x", "present_match": false}), &[], true),
        (json!({"name": "x", "present_match": false}), &[("x", "a")], false),
        (json!({"name": "x", "present_match": true, "invert_match": true}), &[], true),
        (json!({"name": "x", "present_match": true, "invert_match": true}), &[("x", "a")], false),
        (json!({"name": "x", "present_match": false, "invert_match": true}), &[], false),
        (json!({"name": "x", "present_match": false, "invert_match": true}), &[("x", "a")], true),
        (json!({"name": "x"}), &[("x", "a")], true),
        (json!({"name": "x"}), &[], false),
        (json!({"name": "x", "prefix_match": "ab"}), &[("x", "abc")], true),
        (json!({"name": "x", "suffix_match": "bc"}), &[("x", "abc")], true),
        (json!({"name": "x", "suffix_match": "bc"}), &[("x", "c")], false),
        (json!({"name": "x", "contains_match": "b"}), &[("x", "abc")], true),
        (json!({"name": "x", "safe_regex_match": {"regex": "[a-z]+"}}), &[("x", "abc")], true),
        (json!({"name": "x", "safe_regex_match": {"regex": "[a-z]+"}}), &[("x", "abc1")], false),
        (json!({"name": "x", "range_match": {"start": 1, "end": 10}}), &[("x", "5")], true),
        (json!({"name": "x", "range_match": {"start": 1, "end": 10}}), &[("x", "10")], false),
        (json!({"name": "x", "range_match": {"start": -5, "end": 10}}), &[("x", "-5")], true),
        (json!({"name": "x", "range_match": {"start": 1, "end": 10}}), &[("x", "x")], false),
        (json!({"name": "x", "string_match": {"exact": "AbC", "ignore_case": true}}), &[("x", "abc")], true),
        (json!({"name": "x", "string_match": {"exact": "AbC"}}), &[("x", "abc")], false),
        (json!({"name": "x", "string_match": {"prefix": "AB", "ignore_case": true}}), &[("x", "abc")], true),
        (json!({"name": "x", "string_match": {"suffix": "Z", "ignore_case": true}}), &[("x", "xyz")], true),
        (json!({"name": "x", "string_match": {"contains": "mid", "ignore_case": true}}), &[("x", "aMIDb")], true),
        (json!({"name": "x", "string_match": {"contains": "mid"}}), &[("x", "aMIDb")], false),
        (json!({"name": "x", "string_match": {"safe_regex": {"regex": "a.c"}}}), &[("x", "abc")], true),
    ];
    let query = |matcher: Value| json!({"prefix": "/", "query_parameters": [matcher]});
    let query_cases: Vec<(Value, &str, bool)> = vec![
        (json!({"name": "q"}), "/?q", true),
        (json!({"name": "q", "present_match": true}), "/p?a=1&q=1", true),
        (json!({"name": "q"}), "/?r=1", false),
        (json!({"name": "q"}), "/", false),
        (json!({"name": "q"}), "/#?q=1", false),
        (json!({"name": "q", "string_match": {"exact": "1"}}), "/?a=2&q=1", true),
        (json!({"name": "q", "string_match": {"exact": "1"}}), "/?q=1#frag", true),
        (json!({"name": "q", "string_match": {"exact": "1"}}), "/?q=2", false),
        (json!({"name": "q", "string_match": {"exact": "1"}}), "/?q=2&q=1", false),
        (json!({"name": "q", "string_match": {"prefix": "a=b"}}), "/?q=a=bc", true),
    ];
    let all = cases
        .into_iter()
        .chain(
            header_cases
                .into_iter()
                .map(|(m, h, want)| (header(m), "/", h, want)),
        )
        .chain(
            query_cases
                .into_iter()
                .map(|(m, path, want)| (query(m), path, &[][..], want)),
        );
    for (matcher, path, header_pairs, want) in all {
        let config = one_route(json!({"match": matcher, "route": {"cluster": "c"}}));
        let map = headers(header_pairs);
        let req = RequestView {
            host: "h",
            path_and_query: path,
            headers: &map,
            connect: false,
        };
        let found = config.virtual_hosts[0].find_route(&req).is_some();
        assert_eq!(found, want, "{matcher} {path} {header_pairs:?}");
    }
}

#[test]
fn first_matching_route_wins() {
    let config = route_config(json!([{"name": "v", "domains": ["*"], "routes": [
        {"name": "exact", "match": {"path": "/a"}, "route": {"cluster": "c"}},
        {"name": "any", "match": {"prefix": "/"}, "route": {"cluster": "c"}},
    ]}]));
    let map = HeaderMap::new();
    let name = |path| {
        let req = RequestView {
            host: "h",
            path_and_query: path,
            headers: &map,
            connect: false,
        };
        config.virtual_hosts[0]
            .find_route(&req)
            .map(|r| r.name.clone())
    };
    assert_eq!(name("/a").as_deref(), Some("exact"));
    assert_eq!(name("/a/b").as_deref(), Some("any"));
    // CONNECT matches no route: none can have a `connect_matcher`.
    let connect = RequestView {
        host: "h",
        path_and_query: "/",
        headers: &map,
        connect: true,
    };
    assert!(config.virtual_hosts[0].find_route(&connect).is_none());
}

fn target(config: &RouteConfig) -> &RouteTarget {
    match &config.virtual_hosts[0].routes[0].action {
        RouteAction::Route(target) => target,
        other => panic!("not a route: {other:?}"),
    }
}

#[test]
fn cluster_pick() {
    let config = one_route(
        json!({"match": {"prefix": "/"}, "route": {"weighted_clusters": {"clusters": [
            {"name": "a", "weight": 1}, {"name": "b", "weight": 2}, {"name": "zero", "weight": 0}, {"name": "d", "weight": 1},
        ]}}}),
    );
    let none = HeaderMap::new();
    let cluster = &target(&config).cluster;
    for (random, want) in [
        (0, "a"),
        (1, "b"),
        (2, "b"),
        (3, "d"),
        (4, "a"),
        (u64::MAX, "d"),
    ] {
        assert_eq!(cluster.pick(&none, random), Some(want), "{random}");
    }
    let config =
        one_route(json!({"match": {"prefix": "/"}, "route": {"cluster_header": "X-Cluster"}}));
    let cluster = &target(&config).cluster;
    assert_eq!(
        cluster.pick(&headers(&[("x-cluster", "blue")]), 0),
        Some("blue")
    );
    assert_eq!(cluster.pick(&headers(&[("x-cluster", "")]), 0), None);
    assert_eq!(cluster.pick(&none, 0), None);
    let config = one_route(json!({"match": {"prefix": "/"}, "route": {"cluster": "one"}}));
    assert_eq!(target(&config).cluster.pick(&none, 7), Some("one"));
}

#[test]
#[rustfmt::skip]
fn path_rewrites() {
    let cases: Vec<(Value, Value, &str, Option<&str>)> = vec![
        (json!({"prefix": "/api"}), json!({"prefix_rewrite": "/v2"}), "/api/users?x=1", Some("/v2/users?x=1")),
        (json!({"prefix": "/api/"}), json!({"prefix_rewrite": "/"}), "/api/users", Some("/users")),
        (json!({"prefix": "/API", "case_sensitive": false}), json!({"prefix_rewrite": "/x"}), "/api/users", Some("/x/users")),
        (json!({"path": "/a"}), json!({"prefix_rewrite": "/b"}), "/a?q", Some("/b?q")),
        (json!({"path_separated_prefix": "/foo"}), json!({"prefix_rewrite": "/bar"}), "/foo/baz", Some("/bar/baz")),
        (json!({"prefix": "/service"}), json!({"regex_rewrite": {"pattern": {"regex": "^/service/([^/]+)(/.*)$"}, "substitution": "\\2/instance/\\1"}}), "/service/foo/v1/api?x=/service/a/b", Some("/v1/api/instance/foo?x=/service/a/b")),
        (json!({"prefix": "/"}), json!({"regex_rewrite": {"pattern": {"regex": "o"}, "substitution": "0"}}), "/foo/boo?o=1", Some("/f00/b00?o=1")),
        (json!({"prefix": "/"}), json!({"regex_rewrite": {"pattern": {"regex": "a"}, "substitution": "$1\\\\"}}), "/a", Some("/$1\\")),
        (json!({"safe_regex": {"regex": "/a.*"}}), json!({"regex_rewrite": {"pattern": {"regex": "a"}, "substitution": "b"}}), "/ab", Some("/bb")),
        (json!({"prefix": "/"}), json!({}), "/a", None),
    ];
    for (matcher, rewrite, path, want) in cases {
        let mut action = json!({"cluster": "c"});
        action
            .as_object_mut()
            .unwrap()
            .extend(rewrite.as_object().unwrap().clone());
        let config = one_route(json!({"match": matcher, "route": action}));
        let route = &config.virtual_hosts[0].routes[0];
        assert_eq!(
            target(&config)
                .rewrite_path(&route.matcher, path)
                .as_deref(),
            want,
            "{rewrite} {path}"
        );
    }
}

#[test]
#[rustfmt::skip]
fn redirects() {
    let cases: Vec<(Value, Value, &str, &str, &str, &str)> = vec![
        (json!({"https_redirect": true}), json!({"prefix": "/"}), "http", "example.com", "/a?b", "https://example.com/a?b"),
        (json!({"https_redirect": true}), json!({"prefix": "/"}), "http", "example.com:80", "/a", "https://example.com/a"),
        (json!({"https_redirect": true}), json!({"prefix": "/"}), "http", "example.com:8080", "/a", "https://example.com:8080/a"),
        (json!({"https_redirect": true}), json!({"prefix": "/"}), "http", "[::1]:80", "/a", "https://[::1]/a"),
        (json!({"https_redirect": true, "port_redirect": 8443}), json!({"prefix": "/"}), "http", "example.com:80", "/a", "https://example.com:8443/a"),
        (json!({"scheme_redirect": "HTTP"}), json!({"prefix": "/"}), "https", "example.com:443", "/a", "http://example.com/a"),
        (json!({"path_redirect": "/b"}), json!({"prefix": "/"}), "https", "example.com:443", "/a", "https://example.com:443/b"),
        (json!({"host_redirect": "new.com"}), json!({"prefix": "/"}), "http", "example.com:8080", "/a", "http://new.com/a"),
        (json!({"host_redirect": "new.com", "port_redirect": 9000}), json!({"prefix": "/"}), "http", "h", "/a", "http://new.com:9000/a"),
        (json!({"port_redirect": 9000}), json!({"prefix": "/"}), "http", "h:8080", "/a", "http://h:9000/a"),
        (json!({"path_redirect": "/new"}), json!({"prefix": "/"}), "http", "h", "/old?x=1", "http://h/new?x=1"),
        (json!({"path_redirect": "/new?y=2"}), json!({"prefix": "/"}), "http", "h", "/old?x=1", "http://h/new?y=2"),
        (json!({"path_redirect": "/new?y=2", "strip_query": true}), json!({"prefix": "/"}), "http", "h", "/old?x=1", "http://h/new?y=2"),
        (json!({"path_redirect": "/new", "strip_query": true}), json!({"prefix": "/"}), "http", "h", "/old?x=1", "http://h/new"),
        (json!({"path_redirect": "new"}), json!({"prefix": "/"}), "http", "h", "/old", "http://h/new"),
        (json!({"prefix_rewrite": "/new"}), json!({"prefix": "/old"}), "http", "h", "/old/a?x", "http://h/new/a?x"),
        (json!({"prefix_rewrite": "/new", "strip_query": true}), json!({"prefix": "/old"}), "http", "h", "/old/a?x", "http://h/new/a"),
        (json!({"regex_rewrite": {"pattern": {"regex": "^/(\\w+)/(\\w+)$"}, "substitution": "/\\2/\\1"}}), json!({"prefix": "/"}), "http", "h", "/a/b?q", "http://h/b/a?q"),
        (json!({"strip_query": true}), json!({"prefix": "/"}), "http", "h", "/a?x=1", "http://h/a"),
    ];
    for (redirect, matcher, scheme, host, path, want) in cases {
        let config = one_route(json!({"match": matcher, "redirect": redirect}));
        let route = &config.virtual_hosts[0].routes[0];
        let RouteAction::Redirect(action) = &route.action else {
            panic!("not a redirect")
        };
        assert_eq!(
            action.location(&route.matcher, scheme, host, path),
            want,
            "{redirect}"
        );
    }
}

#[test]
fn redirect_codes() {
    for (code, want) in [
        (json!(null), 301),
        (json!("MOVED_PERMANENTLY"), 301),
        (json!("FOUND"), 302),
        (json!("SEE_OTHER"), 303),
        (json!("TEMPORARY_REDIRECT"), 307),
        (json!("PERMANENT_REDIRECT"), 308),
        (json!(3), 307),
    ] {
        let config =
            one_route(json!({"match": {"prefix": "/"}, "redirect": {"response_code": code}}));
        let RouteAction::Redirect(redirect) = &config.virtual_hosts[0].routes[0].action else {
            panic!()
        };
        assert_eq!(redirect.status, want, "{code}");
    }
}

#[test]
#[rustfmt::skip]
fn header_mutations() {
    let cases: Vec<(Value, &[&str], &[&str])> = vec![
        (json!({}), &["a"], &["a", "b"]),
        (json!({}), &[], &["b"]),
        (json!({"append": true}), &["a"], &["a", "b"]),
        (json!({"append": false}), &["a", "c"], &["b"]),
        (json!({"append_action": "APPEND_IF_EXISTS_OR_ADD"}), &["a"], &["a", "b"]),
        (json!({"append_action": "ADD_IF_ABSENT"}), &["a"], &["a"]),
        (json!({"append_action": "ADD_IF_ABSENT"}), &[], &["b"]),
        (json!({"append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}), &["a", "c"], &["b"]),
        (json!({"append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}), &[], &["b"]),
        (json!({"append_action": "OVERWRITE_IF_EXISTS"}), &["a"], &["b"]),
        (json!({"append_action": "OVERWRITE_IF_EXISTS"}), &[], &[]),
        (json!({"append_action": 3}), &["a"], &["b"]),
    ];
    for (options, before, after) in cases {
        let mut option = json!({"header": {"key": "X", "value": "b"}});
        option
            .as_object_mut()
            .unwrap()
            .extend(options.as_object().unwrap().clone());
        let config = route_config(
            json!([{"name": "v", "domains": ["*"], "request_headers_to_add": [option]}]),
        );
        let mutations = &config.virtual_hosts[0].headers;
        let mut map = headers(&before.iter().map(|v| ("x", *v)).collect::<Vec<_>>());
        mutations.apply_request(&mut map);
        assert_eq!(values(&map, "x"), after, "{options} on {before:?}");
    }
}

#[test]
fn header_mutation_order_and_empty_values() {
    let config = route_config(json!([{"name": "v", "domains": ["*"],
        "request_headers_to_remove": ["x-gone", "x-replaced"],
        "request_headers_to_add": [
            {"header": {"key": "x-replaced", "value": "new"}},
            {"header": {"key": "x-skipped", "value": ""}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
            {"header": {"key": "x-kept", "value": ""}, "keep_empty_value": true},
        ],
        "response_headers_to_add": [{"header": {"key": "x-resp", "value": "1"}}],
        "response_headers_to_remove": ["server"],
    }]));
    let mutations = &config.virtual_hosts[0].headers;
    assert!(!mutations.is_empty() && config.headers.is_empty());
    let mut request = headers(&[("x-gone", "1"), ("x-replaced", "old"), ("x-skipped", "old")]);
    mutations.apply_request(&mut request);
    assert!(values(&request, "x-gone").is_empty());
    assert_eq!(values(&request, "x-replaced"), ["new"]);
    assert_eq!(values(&request, "x-skipped"), ["old"]);
    assert_eq!(values(&request, "x-kept"), [""]);
    let mut response = headers(&[("server", "envoy")]);
    mutations.apply_response(&mut response);
    assert_eq!(
        (
            values(&response, "server").len(),
            values(&response, "x-resp")
        ),
        (0, vec!["1".to_owned()])
    );
}
