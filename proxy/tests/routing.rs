//! Routing through the proxy: virtual-host domain matching, route match kinds, route
//! actions and header mutations, asserting both what the backend saw and what the
//! client got.

mod common;

use std::net::SocketAddr;

use common::*;

/// What a request ended at: the backend's name when proxied, else "STATUS BODY" for
/// a local reply (404 from no route, a direct response, ...).
async fn outcome(addr: SocketAddr, host: &str, path: &str, headers: &[(&str, &str)]) -> String {
    let r = get(addr, host, path, headers).await;
    match r.header("x-backend-name") {
        Some(name) => name.to_owned(),
        None => format!("{} {}", r.status, r.text()),
    }
}

/// One routing case: host, path, request headers, expected `outcome`.
type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);

/// Runs a table of cases and reports every mismatch.
async fn check_table(addr: SocketAddr, table: &[Case<'_>]) {
    let mut failures = Vec::new();
    for (host, path, headers, want) in table {
        let got = outcome(addr, host, path, headers).await;
        if got != *want {
            failures.push(format!(
                "{host}{path} {headers:?}: want {want:?}, got {got:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "routing mismatches:\n{}",
        failures.join("\n")
    );
}

struct Four {
    a: Backend,
    b: Backend,
    c: Backend,
    d: Backend,
}

impl Four {
    async fn new() -> Four {
        Four {
            a: Backend::echo("a").await,
            b: Backend::echo("b").await,
            c: Backend::echo("c").await,
            d: Backend::echo("d").await,
        }
    }

    fn clusters(&self, config: Bootstrap) -> Bootstrap {
        config
            .cluster("a", self.a.addr())
            .cluster("b", self.b.addr())
            .cluster("c", self.c.addr())
            .cluster("d", self.d.addr())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domains_match_exact_then_suffix_then_prefix_then_wildcard() {
    let be = Four::new().await;
    let vhosts = r#"
- name: exact
  domains: ["exact.com", "withport.com:8080", "api.suffix.com"]
  routes: [{match: {prefix: /}, route: {cluster: a}}]
- name: suffix
  domains: ["*.suffix.com"]
  routes: [{match: {prefix: /}, route: {cluster: b}}]
- name: prefix
  domains: ["prefix.*"]
  routes: [{match: {prefix: /}, route: {cluster: c}}]
- name: fallback
  domains: ["*"]
  routes: [{match: {prefix: /}, route: {cluster: d}}]
"#;
    let s = Strait::start(&be.clusters(Bootstrap::new(vhosts)).build()).await;
    let addr = s.main_addr().await;
    check_table(
        addr,
        &[
            ("exact.com", "/", &[], "a"),
            ("EXACT.com", "/", &[], "a"),
            ("withport.com:8080", "/", &[], "a"),
            ("withport.com", "/", &[], "d"),
            ("api.suffix.com", "/", &[], "a"),
            ("x.suffix.com", "/", &[], "b"),
            ("a.b.suffix.com", "/", &[], "b"),
            ("suffix.com", "/", &[], "d"),
            ("prefix.anything", "/", &[], "c"),
            ("prefix.suffix.com", "/", &[], "b"),
            ("other.org", "/", &[], "d"),
        ],
    )
    .await;
    // h2 carries the host in :authority; the same lookup applies.
    let r = get_h2(addr, "x.suffix.com", "/", &[]).await;
    assert_eq!(r.header("x-backend-name"), Some("b"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_matching_virtual_host_is_404() {
    let b = Backend::echo("a").await;
    let vhosts = r#"
- name: only
  domains: ["only.test"]
  routes: [{match: {prefix: /}, route: {cluster: a}}]
"#;
    let s = Strait::start(&Bootstrap::new(vhosts).cluster("a", b.addr()).build()).await;
    let r = get(s.main_addr().await, "elsewhere.test", "/", &[]).await;
    assert_eq!(r.status, 404);
    assert_eq!(b.requests(), 0);
}

fn direct(name: &str) -> String {
    format!("direct_response: {{status: 200, body: {{inline_string: {name}}}}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_match_kinds() {
    let a = Backend::echo("a").await;
    let vhosts = format!(
        r#"
- name: m
  domains: ["*"]
  routes:
  - match: {{path: /exact}}
    {path}
  - match: {{safe_regex: {{regex: "/re/[0-9]+"}}}}
    {regex}
  - match: {{path_separated_prefix: /sep}}
    {sep}
  - match: {{prefix: /CI, case_sensitive: false}}
    {ci}
  - match: {{prefix: /q, query_parameters: [{{name: v, string_match: {{exact: "1"}}}}]}}
    {q_exact}
  - match: {{prefix: /q, query_parameters: [{{name: p, present_match: true}}]}}
    {q_present}
  - match: {{prefix: /h, headers: [{{name: x-m, string_match: {{exact: e}}}}]}}
    {h_exact}
  - match: {{prefix: /h, headers: [{{name: x-m, string_match: {{prefix: pre}}}}]}}
    {h_prefix}
  - match: {{prefix: /h, headers: [{{name: x-m, string_match: {{suffix: suf}}}}]}}
    {h_suffix}
  - match: {{prefix: /h, headers: [{{name: x-m, string_match: {{contains: mid}}}}]}}
    {h_contains}
  - match: {{prefix: /h, headers: [{{name: x-m, string_match: {{safe_regex: {{regex: "r[0-9]+"}}}}}}]}}
    {h_regex}
  - match: {{prefix: /h, headers: [{{name: x-present, present_match: true}}]}}
    {h_present}
  - match: {{prefix: /h, headers: [{{name: x-legacy, exact_match: old}}]}}
    {h_legacy}
  - match: {{prefix: /inv, headers: [{{name: x-not, string_match: {{exact: "no"}}, invert_match: true}}]}}
    {inv}
  - match: {{prefix: /two, headers: [{{name: x-1, present_match: true}}, {{name: x-2, present_match: true}}]}}
    {two}
  - match: {{prefix: /pre}}
    route: {{cluster: a}}
"#,
        path = direct("path"),
        regex = direct("regex"),
        sep = direct("sep"),
        ci = direct("ci"),
        q_exact = direct("q-exact"),
        q_present = direct("q-present"),
        h_exact = direct("h-exact"),
        h_prefix = direct("h-prefix"),
        h_suffix = direct("h-suffix"),
        h_contains = direct("h-contains"),
        h_regex = direct("h-regex"),
        h_present = direct("h-present"),
        h_legacy = direct("h-legacy"),
        inv = direct("inv"),
        two = direct("two"),
    );
    let s = Strait::start(&Bootstrap::new(&vhosts).cluster("a", a.addr()).build()).await;
    let addr = s.main_addr().await;
    let h = "m.test";
    check_table(
        addr,
        &[
            (h, "/exact", &[], "200 path"),
            (h, "/exact?x=1", &[], "200 path"),
            (h, "/exact/x", &[], "404 "),
            (h, "/exactly", &[], "404 "),
            (h, "/re/123", &[], "200 regex"),
            (h, "/re/123?x=1", &[], "200 regex"),
            (h, "/re/12a", &[], "404 "),
            (h, "/x/re/1", &[], "404 "),
            (h, "/sep", &[], "200 sep"),
            (h, "/sep/x", &[], "200 sep"),
            (h, "/sep?x=1", &[], "200 sep"),
            (h, "/separate", &[], "404 "),
            (h, "/ci/x", &[], "200 ci"),
            (h, "/Ci", &[], "200 ci"),
            (h, "/CI", &[], "200 ci"),
            (h, "/q?v=1", &[], "200 q-exact"),
            (h, "/q?a=b&v=1", &[], "200 q-exact"),
            (h, "/q?v=2", &[], "404 "),
            (h, "/q?v=2&p", &[], "200 q-present"),
            (h, "/q?p=anything", &[], "200 q-present"),
            (h, "/q", &[], "404 "),
            (h, "/h", &[("x-m", "e")], "200 h-exact"),
            (h, "/h", &[("x-m", "prefix-value")], "200 h-prefix"),
            (h, "/h", &[("x-m", "endsuf")], "200 h-suffix"),
            (h, "/h", &[("x-m", "amidb")], "200 h-contains"),
            (h, "/h", &[("x-m", "r42")], "200 h-regex"),
            (h, "/h", &[("x-m", "r42x")], "404 "),
            (h, "/h", &[("x-m", "E")], "404 "),
            (h, "/h", &[("x-present", "")], "200 h-present"),
            (h, "/h", &[("x-legacy", "old")], "200 h-legacy"),
            (h, "/h", &[], "404 "),
            (h, "/inv", &[("x-not", "yes")], "200 inv"),
            (h, "/inv", &[("x-not", "no")], "404 "),
            (h, "/two", &[("x-1", "a"), ("x-2", "b")], "200 two"),
            (h, "/two", &[("x-1", "a")], "404 "),
            (h, "/pre/x", &[], "a"),
            (h, "/PRE/x", &[], "404 "),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_clusters_send_traffic_to_each() {
    let be = Four::new().await;
    let vhosts = r#"
- name: w
  domains: ["*"]
  routes:
  - match: {prefix: /}
    route:
      weighted_clusters:
        clusters:
        - {name: a, weight: 50}
        - {name: b, weight: 50}
        - {name: c, weight: 0}
"#;
    let s = Strait::start(&be.clusters(Bootstrap::new(vhosts)).build()).await;
    let mut client = Client::connect(s.main_addr().await, Proto::H1)
        .await
        .unwrap();
    let (mut a, mut b) = (0, 0);
    for _ in 0..200 {
        match client
            .get("w.test", "/", &[])
            .await
            .header("x-backend-name")
        {
            Some("a") => a += 1,
            Some("b") => b += 1,
            other => panic!("unexpected backend {other:?}"),
        }
    }
    // 100 ± 7 expected each; 40 is more than eight standard deviations out.
    assert!(a > 40 && b > 40, "a={a} b={b}");
    assert_eq!(be.c.requests(), 0, "weight 0 gets nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_header_picks_the_named_cluster() {
    let be = Four::new().await;
    let vhosts = r#"
- name: ch
  domains: ["*"]
  routes: [{match: {prefix: /}, route: {cluster_header: x-cluster}}]
"#;
    let s = Strait::start(&be.clusters(Bootstrap::new(vhosts)).build()).await;
    let addr = s.main_addr().await;
    check_table(
        addr,
        &[
            ("h", "/", &[("x-cluster", "b")], "b"),
            ("h", "/", &[("x-cluster", "d")], "d"),
            ("h", "/", &[("x-cluster", "nope")], "503 "),
        ],
    )
    .await;
    let missing = get(addr, "h", "/", &[]).await;
    assert_eq!(missing.status, 503, "{}", missing.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_and_host_rewrites() {
    let a = Backend::echo("a").await;
    let vhosts = r#"
- name: rw
  domains: ["*"]
  routes:
  - match: {prefix: /old/}
    route: {cluster: a, prefix_rewrite: /new/}
  - match: {prefix: /strip/}
    route: {cluster: a, prefix_rewrite: /}
  - match: {prefix: /rx/}
    route:
      cluster: a
      regex_rewrite:
        pattern: {regex: "^/rx/([^/]+)/(.*)$"}
        substitution: "/\\2/\\1"
  - match: {prefix: /host-literal}
    route: {cluster: a, host_rewrite_literal: rewritten.example}
  - match: {prefix: /host-auto}
    route: {cluster: dns, auto_host_rewrite: true}
  - match: {prefix: /named-static}
    route: {cluster: named_static, auto_host_rewrite: true}
  - match: {prefix: /named-dns}
    route: {cluster: named_dns, auto_host_rewrite: true}
  - match: {prefix: /unnamed-static}
    route: {cluster: a, auto_host_rewrite: true}
  - match: {prefix: /}
    route: {cluster: a}
"#;
    // An endpoint's `hostname` is what `auto_host_rewrite` sends, STATIC or DNS (over
    // the name resolved), as in Envoy.
    let named = |name: &str, kind: &str, address: &str| {
        format!(
            "- name: {name}\n  type: {kind}\n  dns_lookup_family: V4_ONLY\n  connect_timeout: 1s\n  load_assignment:\n    cluster_name: {name}\n    endpoints:\n    - lb_endpoints:\n      - endpoint:\n          hostname: {name}.example\n          address:\n            socket_address: {{address: {address}, port_value: {}}}\n",
            a.addr().port()
        )
    };
    let dns_cluster = format!(
        r#"
- name: dns
  type: STRICT_DNS
  dns_lookup_family: V4_ONLY
  connect_timeout: 1s
  load_assignment:
    cluster_name: dns
    endpoints:
    - lb_endpoints:
      - endpoint:
          address:
            socket_address: {{address: localhost, port_value: {}}}
"#,
        a.addr().port()
    );
    let config = Bootstrap::new(vhosts)
        .cluster("a", a.addr())
        .cluster_raw(&dns_cluster)
        .cluster_raw(&named("named_static", "STATIC", "127.0.0.1"))
        .cluster_raw(&named("named_dns", "STRICT_DNS", "localhost"));
    let s = Strait::start(&config.build()).await;
    let addr = s.main_addr().await;

    let e = get(addr, "orig.test", "/old/x?y=1", &[]).await.echo();
    assert_eq!(e.path, "/new/x?y=1");
    assert_eq!(e.header("x-envoy-original-path"), Some("/old/x?y=1"));
    assert_eq!(e.host, "orig.test");

    assert_eq!(
        get(addr, "orig.test", "/strip/a/b", &[]).await.echo().path,
        "/a/b"
    );
    assert_eq!(
        get(addr, "orig.test", "/rx/one/two", &[]).await.echo().path,
        "/two/one"
    );
    assert_eq!(
        get(addr, "orig.test", "/rx/one/two?q=1", &[])
            .await
            .echo()
            .path,
        "/two/one?q=1",
        "regex_rewrite applies to the path and keeps the query"
    );

    let e = get(addr, "orig.test", "/host-literal", &[]).await.echo();
    assert_eq!(e.host, "rewritten.example");
    assert_eq!(e.path, "/host-literal");

    // The DNS clusters resolve in the background: wait until a route through one answers.
    let resolved = |path: &'static str| {
        eventually(
            std::time::Duration::from_secs(10),
            path,
            move || async move {
                let r = get(addr, "orig.test", path, &[]).await;
                (r.status == 200).then(|| r.echo())
            },
        )
    };
    let e = resolved("/host-auto").await;
    assert_eq!(
        e.host, "localhost",
        "auto_host_rewrite uses the endpoint's DNS name"
    );

    let e = get(addr, "orig.test", "/named-static", &[]).await.echo();
    assert_eq!(
        e.host, "named_static.example",
        "a STATIC endpoint's hostname"
    );
    let e = get(addr, "orig.test", "/unnamed-static", &[]).await.echo();
    assert_eq!(
        e.host, "orig.test",
        "a STATIC endpoint without one keeps Host"
    );
    let e = resolved("/named-dns").await;
    assert_eq!(e.host, "named_dns.example", "hostname over the DNS name");

    let e = get(addr, "orig.test", "/plain", &[]).await.echo();
    assert_eq!(e.host, "orig.test", "Host is preserved without a rewrite");
    assert_eq!(e.header("x-envoy-original-path"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects() {
    let vhosts = r#"
- name: r
  domains: ["*"]
  routes:
  - match: {prefix: /redir-https}
    redirect: {https_redirect: true}
  - match: {prefix: /redir-path}
    redirect: {path_redirect: /new/place, response_code: TEMPORARY_REDIRECT}
  - match: {prefix: /redir-host}
    redirect: {host_redirect: other.example, response_code: FOUND}
  - match: {prefix: /redir-prefix/}
    redirect: {prefix_rewrite: /p2/, response_code: PERMANENT_REDIRECT}
  - match: {prefix: /redir-see-other}
    redirect: {path_redirect: /done, response_code: SEE_OTHER}
"#;
    let s = Strait::start(&Bootstrap::new(vhosts).build()).await;
    let addr = s.main_addr().await;
    let cases: &[(&str, u16, &str)] = &[
        (
            "/redir-https/x?y=1",
            301,
            "https://h.test/redir-https/x?y=1",
        ),
        ("/redir-path/x", 307, "http://h.test/new/place"),
        ("/redir-host/x", 302, "http://other.example/redir-host/x"),
        ("/redir-prefix/x/y", 308, "http://h.test/p2/x/y"),
        ("/redir-see-other", 303, "http://h.test/done"),
    ];
    let mut failures = Vec::new();
    for (path, status, location) in cases {
        let r = get(addr, "h.test", path, &[]).await;
        if r.status != *status || r.header("location") != Some(location) {
            failures.push(format!(
                "{path}: want {status} {location}, got {} {:?}",
                r.status,
                r.header("location")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_responses() {
    let vhosts = r#"
- name: d
  domains: ["*"]
  routes:
  - match: {path: /teapot}
    direct_response: {status: 418, body: {inline_string: "short and stout"}}
  - match: {path: /empty}
    direct_response: {status: 204}
  - match: {path: /health}
    direct_response: {status: 200, body: {inline_string: "ok"}}
"#;
    let s = Strait::start(&Bootstrap::new(vhosts).build()).await;
    let addr = s.main_addr().await;
    let r = get(addr, "h", "/teapot", &[]).await;
    assert_eq!((r.status, r.text().as_str()), (418, "short and stout"));
    let r = get(addr, "h", "/empty", &[]).await;
    assert_eq!((r.status, r.body.len()), (204, 0));
    let r = get_h2(addr, "h", "/health", &[]).await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    assert_eq!(
        s.wait_stat("http.ingress.downstream_rq_total", |v| v >= 3)
            .await,
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_mutations_at_route_vhost_and_route_config() {
    let a = Backend::echo("a").await;
    let vhosts = r#"
- name: hv
  domains: ["*"]
  request_headers_to_add:
  - header: {key: x-vh-req, value: vh}
  - header: {key: x-multi, value: vhost}
  request_headers_to_remove: [x-drop-vh]
  response_headers_to_add:
  - header: {key: x-vh-resp, value: vh}
  response_headers_to_remove: [x-backend-drop-vh]
  routes:
  - match: {prefix: /direct}
    direct_response: {status: 200, body: {inline_string: direct}}
    response_headers_to_add:
    - header: {key: x-route-resp, value: route}
  - match: {prefix: /}
    route: {cluster: a}
    request_headers_to_add:
    - header: {key: x-route-req, value: route}
    - header: {key: x-multi, value: route}
    - header: {key: x-over, value: route-over}
      append_action: OVERWRITE_IF_EXISTS_OR_ADD
    - header: {key: x-if-absent, value: route}
      append_action: ADD_IF_ABSENT
    request_headers_to_remove: [x-drop-route]
    response_headers_to_add:
    - header: {key: x-route-resp, value: route}
    response_headers_to_remove: [x-backend-drop-route]
"#;
    let rc = r#"
request_headers_to_add:
- header: {key: x-rc-req, value: rc}
request_headers_to_remove: [x-drop-rc]
response_headers_to_add:
- header: {key: x-rc-resp, value: rc}
response_headers_to_remove: [x-backend-drop-rc]
"#;
    let s = Strait::start(
        &Bootstrap::new(vhosts)
            .route_config(rc)
            .cluster("a", a.addr())
            .build(),
    )
    .await;
    let addr = s.main_addr().await;
    let r = get(
        addr,
        "h",
        "/x",
        &[
            ("x-drop-rc", "1"),
            ("x-drop-vh", "1"),
            ("x-drop-route", "1"),
            ("x-over", "client"),
            ("x-if-absent", "client"),
            ("x-keep", "client"),
            (
                "x-backend-respond-header",
                "x-backend-drop-rc=1,x-backend-drop-vh=1,x-backend-drop-route=1,x-backend-kept=1",
            ),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let e = r.echo();
    for gone in ["x-drop-rc", "x-drop-vh", "x-drop-route"] {
        assert_eq!(
            e.header(gone),
            None,
            "{gone} should be removed before the upstream"
        );
    }
    assert_eq!(e.header("x-rc-req"), Some("rc"));
    assert_eq!(e.header("x-vh-req"), Some("vh"));
    assert_eq!(e.header("x-route-req"), Some("route"));
    assert_eq!(e.header("x-over"), Some("route-over"));
    assert_eq!(e.header("x-if-absent"), Some("client"));
    assert_eq!(e.header("x-keep"), Some("client"));
    let multi = e.header("x-multi").unwrap_or_default();
    assert!(
        multi.contains("route") && multi.contains("vhost"),
        "x-multi: {multi:?}"
    );

    for gone in [
        "x-backend-drop-rc",
        "x-backend-drop-vh",
        "x-backend-drop-route",
    ] {
        assert_eq!(
            r.header(gone),
            None,
            "{gone} should be removed from the response"
        );
    }
    assert_eq!(r.header("x-backend-kept"), Some("1"));
    assert_eq!(r.header("x-rc-resp"), Some("rc"));
    assert_eq!(r.header("x-vh-resp"), Some("vh"));
    assert_eq!(r.header("x-route-resp"), Some("route"));

    // Local replies from a route get the response mutations too.
    let d = get(addr, "h", "/direct", &[]).await;
    assert_eq!(d.text(), "direct");
    assert_eq!(d.header("x-route-resp"), Some("route"));
    assert_eq!(d.header("x-vh-resp"), Some("vh"));
    assert_eq!(d.header("x-rc-resp"), Some("rc"));
}

/// The router's `suppress_envoy_headers`, as in Envoy: none of the router's own
/// `x-envoy-*` headers go upstream (the expected timeout, on a retry too; the original
/// path and host of a rewrite) or downstream (the service time; `x-envoy-overloaded` on a
/// circuit breaker's 503). `x-envoy-attempt-count`, which Envoy's router adds whatever
/// the flag, still goes. The same requests without the flag show every header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suppress_envoy_headers_drops_the_routers_own_headers() {
    let vhosts = r#"- name: default
  domains: ["*"]
  include_request_attempt_count: true
  routes:
  - match: {prefix: /retry}
    route: {cluster: flaky, timeout: 5s, retry_policy: {retry_on: 5xx, num_retries: 1}}
  - match: {prefix: /old}
    route: {cluster: echo, prefix_rewrite: /new, timeout: 5s, host_rewrite_literal: new.example}
  - match: {prefix: /over}
    route: {cluster: over}
"#;
    for suppress in [false, true] {
        let flaky = Backend::flaky("flaky", 1, Misbehave::Status(503)).await;
        let echo = Backend::echo("echo").await;
        let over = cluster_with(
            "over",
            echo.addr(),
            "circuit_breakers:\n  thresholds: [{max_requests: 0}]",
        );
        let mut config = Bootstrap::new(vhosts)
            .cluster("flaky", flaky.addr())
            .cluster("echo", echo.addr())
            .cluster_raw(&over);
        if suppress {
            config = config.router("suppress_envoy_headers: true");
        }
        let s = Strait::start(&config.build()).await;
        let addr = s.main_addr().await;
        let shown = |value: Option<&str>| value.map(str::to_owned);
        let (timeout, path, host) = match suppress {
            false => (Some("5000".into()), Some("/old/x".into()), Some("h".into())),
            true => (None, None, None),
        };

        let r = get(addr, "h", "/old/x", &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let e = r.echo();
        assert_eq!(
            (e.path.as_str(), e.host.as_str()),
            ("/new/x", "new.example")
        );
        assert_eq!(shown(e.header("x-envoy-original-path")), path, "{suppress}");
        assert_eq!(shown(e.header("x-envoy-original-host")), host, "{suppress}");
        let expected = e.header("x-envoy-expected-rq-timeout-ms");
        assert_eq!(shown(expected), timeout, "{suppress}");
        assert_eq!(e.header("x-envoy-attempt-count"), Some("1"), "{suppress}");
        let service_time = r.header("x-envoy-upstream-service-time");
        assert_eq!(service_time.is_some(), !suppress, "{suppress}");

        let r = get(addr, "h", "/retry", &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let e = r.echo();
        assert_eq!(e.header("x-envoy-attempt-count"), Some("2"), "{suppress}");
        let expected = e.header("x-envoy-expected-rq-timeout-ms");
        assert_eq!(expected.is_some(), !suppress, "the retry's, {suppress}");

        let r = get(addr, "h", "/over", &[]).await;
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(r.text().ends_with("reset reason: overflow"), "{}", r.text());
        let overloaded = r.header("x-envoy-overloaded");
        assert_eq!(overloaded.is_some(), !suppress, "{suppress}");
    }
}

/// `server_header_transformation`, as Envoy's connection manager applies it to every
/// response: OVERWRITE (the default) puts `server_name` on all, APPEND_IF_ABSENT only
/// where the response has none, PASS_THROUGH leaves the upstream's (or none).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_header_transformation_follows_envoy() {
    let echo = Backend::echo("echo").await;
    let vhosts = r#"- name: default
  domains: ["*"]
  routes:
  - match: {prefix: /local}
    direct_response: {status: 200, body: {inline_string: here}}
  - match: {prefix: /}
    route: {cluster: echo}
"#;
    let own = [("x-backend-respond-header", "server=upstream-x")];
    // (setting, upstream sends one, upstream sends none, local reply)
    type Row<'a> = (
        Option<&'a str>,
        Option<&'a str>,
        Option<&'a str>,
        Option<&'a str>,
    );
    let table: [Row; 4] = [
        (None, Some("edge"), Some("edge"), Some("edge")),
        (Some("OVERWRITE"), Some("edge"), Some("edge"), Some("edge")),
        (
            Some("APPEND_IF_ABSENT"),
            Some("upstream-x"),
            Some("edge"),
            Some("edge"),
        ),
        (Some("PASS_THROUGH"), Some("upstream-x"), None, None),
    ];
    for (setting, with_own, without, local) in table {
        let mut config = Bootstrap::new(vhosts)
            .cluster("echo", echo.addr())
            .hcm("server_name: edge");
        if let Some(setting) = setting {
            config = config.hcm(&format!("server_header_transformation: {setting}"));
        }
        let s = Strait::start(&config.build()).await;
        let addr = s.main_addr().await;
        for (path, headers, want) in [
            ("/", &own[..], with_own),
            ("/", &[][..], without),
            ("/local", &[][..], local),
        ] {
            let r = get(addr, "h", path, headers).await;
            assert_eq!(r.status, 200, "{}", r.text());
            assert_eq!(r.header("server"), want, "{setting:?} {path} {headers:?}");
        }
    }
}
