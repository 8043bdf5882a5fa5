//! Envoy conformance: every file in `examples/` is run under Strait and under the real
//! Envoy, and a table of requests covering each route and action in it must be answered
//! the same way by both: status, body (for forwarded requests: the echo backend's JSON
//! of what it received), and response headers other than `date`, `server`, hop-by-hop
//! ones and `x-envoy-*`. `x-envoy-*` differences are printed as notes, not failures.
//!
//! Envoy is found via `$ENVOY_BIN`, else `~/.cache/strait-envoy-venv/bin/envoy` (what
//! `.ci/install-envoy` installs), else `envoy` on `PATH`; without one the tests print
//! `SKIPPED` and pass. Set `STRAIT_CONFORMANCE_KEEP=1` to keep the rewritten configs and
//! the proxies' logs; run with `--nocapture` to see the per-request report.

#[path = "conformance/harness.rs"]
mod harness;

use harness::{Case, Req, Want, ECHO_DELAY_MS, ECHO_RESPONSE_HEADER, ECHO_STATUS};

/// The examples this file has a table for; `every_example_is_covered` keeps it honest.
const EXAMPLES: &[&str] = &[
    "front-proxy.yaml",
    "grpc-h2.yaml",
    "quickstart.yaml",
    "resilience.yaml",
    "weighted.yaml",
];

#[test]
fn every_example_is_covered() {
    let mut found: Vec<String> = std::fs::read_dir(harness::examples_dir())
        .expect("examples/ exists")
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".yaml"))
        .collect();
    found.sort();
    assert_eq!(found, EXAMPLES, "add a conformance table for every example");
}

const OK: u16 = 200;

fn backend(names: &'static [&'static str]) -> Want {
    Want::Backend(OK, names)
}

// ------------------------------------------------------------------ quickstart.yaml

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart() {
    let b = || backend(&["backend"]);
    let cases = vec![
        Case::new("root", Req::get("/").host("localhost"), b()),
        Case::new(
            "path, query and custom header",
            Req::get("/some/path?q=1&r=two")
                .host("localhost:10000")
                .header("x-custom", "a b c"),
            b(),
        ),
        Case::new(
            "post with body",
            Req::post("/submit", "hello=world")
                .header("content-type", "application/x-www-form-urlencoded"),
            b(),
        ),
        Case::new(
            "backend status passes through",
            Req::get("/missing").header(ECHO_STATUS, "404"),
            Want::Backend(404, &["backend"]),
        ),
        Case::new(
            "backend 503 passes through",
            Req::get("/busy").header(ECHO_STATUS, "503"),
            Want::Backend(503, &["backend"]),
        ),
        Case::new(
            "backend response header passes through",
            Req::get("/").header(ECHO_RESPONSE_HEADER, "x-backend: abc"),
            b(),
        ),
        Case::new(
            "client x-forwarded-for kept (use_remote_address off)",
            Req::get("/")
                .header("x-forwarded-for", "203.0.113.7")
                .header("x-forwarded-proto", "https"),
            b(),
        ),
        Case::new(
            "client x-request-id kept",
            Req::get("/").header("x-request-id", "my-id"),
            b(),
        ),
        Case::new(
            "connection-nominated header dropped",
            Req::get("/")
                .header("connection", "keep-alive, x-hop")
                .header("x-hop", "1"),
            b(),
        ),
        Case::new(
            "h2c downstream",
            Req::get("/h2").host("example.com").h2(),
            b(),
        ),
    ];
    harness::run_example("quickstart.yaml", &[], cases).await;
}

// ------------------------------------------------------------------ front-proxy.yaml

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn front_proxy() {
    const WWW: &str = "www.example.com";
    const ELB: &str = "ELB-HealthChecker/2.0";
    let api: &[&str] = &["api#0", "api#1"];
    let cases = vec![
        Case::new(
            "direct response",
            Req::get("/healthz").host("example.com"),
            Want::Local(200),
        ),
        Case::new(
            "path match ignores the query",
            Req::get("/healthz?verbose=1").host("example.com"),
            Want::Local(200),
        ),
        Case::new(
            "HEAD of a direct response",
            Req {
                method: hyper::Method::HEAD,
                ..Req::get("/healthz").host("example.com")
            },
            Want::Local(200),
        ),
        Case::new(
            "path redirect 301",
            Req::get("/old-blog").host(WWW),
            Want::Local(301),
        ),
        Case::new(
            "host redirect with prefix rewrite keeps query",
            Req::get("/docs/intro/setup?lang=en").host(WWW),
            Want::Local(301),
        ),
        Case::new(
            "scheme, port and path redirect, query stripped, 302",
            Req::get("/promo?utm_source=mail").host(WWW),
            Want::Local(302),
        ),
        Case::new(
            "rate-limited route: the bucket's one token passes",
            Req::get("/api/export/orders").host(WWW),
            backend(api),
        ),
        Case::new(
            "rate-limited route: then 429 with the route's headers",
            Req::get("/api/export/orders").host(WWW),
            Want::Local(429),
        ),
        Case::new(
            "rate limit applies to its route only",
            Req::get("/api/orders").host(WWW),
            backend(api),
        ),
        Case::new(
            "header match -> canary, auto_host_rewrite",
            Req::get("/api/users").host(WWW).header("x-canary", "1"),
            backend(&["api_canary"]),
        ),
        Case::new(
            "header mismatch -> api, prefix rewrite",
            Req::get("/api/orders?id=7")
                .host(WWW)
                .header("x-canary", "2"),
            backend(api),
        ),
        Case::new(
            "api: route response header overwrites, removes backend header",
            Req::get("/api/orders")
                .host(WWW)
                .header(ECHO_RESPONSE_HEADER, "x-backend-internal: secret"),
            backend(api),
        ),
        Case::new(
            "api: backend cache-control overwritten",
            Req::get("/api/orders")
                .host(WWW)
                .header(ECHO_RESPONSE_HEADER, "cache-control: max-age=60"),
            backend(api),
        ),
        Case::new(
            "api: POST body forwarded",
            Req::post("/api/orders", r#"{"item":42}"#)
                .host(WWW)
                .header("content-type", "application/json"),
            backend(api),
        ),
        Case::new(
            "route timeout -> 504",
            Req::get("/api/slow")
                .host(WWW)
                .header(ECHO_DELAY_MS, "2000"),
            Want::Local(504),
        ),
        Case::new(
            "regex rewrite",
            Req::get("/users/42/profile").host(WWW),
            backend(api),
        ),
        Case::new(
            "regex not matched -> default",
            Req::get("/users/abc/profile").host(WWW),
            backend(&["web"]),
        ),
        Case::new(
            "path_separated_prefix subpath, host rewrite",
            Req::get("/static/css/site.css").host(WWW),
            backend(&["static"]),
        ),
        Case::new(
            "path_separated_prefix exact",
            Req::get("/static?v=3").host(WWW),
            backend(&["static"]),
        ),
        Case::new(
            "path_separated_prefix is not a plain prefix",
            Req::get("/staticfoo").host(WWW),
            backend(&["web"]),
        ),
        Case::new(
            "query parameter match -> 403",
            Req::get("/search?q=shoes&debug=true").host(WWW),
            Want::Local(403),
        ),
        Case::new(
            "query parameter mismatch -> default",
            Req::get("/search?q=shoes&debug=false").host(WWW),
            backend(&["web"]),
        ),
        Case::new(
            "case-insensitive prefix",
            Req::get("/ADMIN/users").host(WWW),
            Want::Local(403),
        ),
        Case::new(
            "upstream connect failure -> 503",
            Req::get("/legacy/report").host(WWW),
            Want::Local(503),
        ),
        Case::new(
            "route-config request header removal, vhost header add",
            Req::get("/")
                .host(WWW)
                .header("x-internal-token", "secret")
                .header("x-vhost", "spoofed"),
            backend(&["web"]),
        ),
        Case::new(
            "client x-request-id at the edge",
            Req::get("/")
                .host(WWW)
                .header("x-request-id", "client-chosen-id"),
            backend(&["web"]),
        ),
        Case::new(
            "x-forwarded-for appended at the edge",
            Req::get("/")
                .host(WWW)
                .header("x-forwarded-for", "203.0.113.7"),
            backend(&["web"]),
        ),
        Case::new(
            "backend error keeps route-config response header",
            Req::get("/").host(WWW).header(ECHO_STATUS, "500"),
            Want::Backend(500, &["web"]),
        ),
        Case::new(
            "backend x-proxy overwritten, hsts kept (ADD_IF_ABSENT)",
            Req::get("/")
                .host(WWW)
                .header(ECHO_RESPONSE_HEADER, "strict-transport-security: max-age=1"),
            backend(&["web"]),
        ),
        Case::new(
            "shop vhost: host rewrite, header overwrite, cookie removed",
            Req::get("/cart")
                .host("shop.example.com")
                .header("x-shop", "0")
                .header("cookie", "session=1"),
            backend(&["web"]),
        ),
        Case::new(
            "https redirect",
            Req::get("/login?next=/").host("secure.example.com"),
            Want::Local(301),
        ),
        Case::new(
            "host with port does not match a port-less domain",
            Req::get("/").host("secure.example.com:8080"),
            Want::Local(404),
        ),
        Case::new(
            "unknown host -> 404",
            Req::get("/").host("unknown.example.org"),
            Want::Local(404),
        ),
        Case::new(
            "host with the listener's port does not match either",
            Req::get("/healthz").host("example.com:10000"),
            Want::Local(404),
        ),
        Case::new(
            "host is case-insensitive",
            Req::get("/healthz").host("Example.COM"),
            Want::Local(200),
        ),
        Case::new(
            "h2c downstream",
            Req::get("/static/app.js").host(WWW).h2(),
            backend(&["static"]),
        ),
        Case::new(
            "load balancer probe answered by the health_check filter",
            Req::get("/healthz")
                .host("example.com")
                .header("user-agent", ELB),
            Want::Local(200),
        ),
        Case::new(
            "health check on a direct response route: none of its headers",
            Req::get("/healthz").host(WWW).header("user-agent", ELB),
            Want::Local(200),
        ),
        Case::new(
            "health check on a forwarding route gets its response headers",
            Req::get("/healthz")
                .host("shop.example.com")
                .header("user-agent", ELB),
            Want::Local(200),
        ),
        Case::new(
            "health check for a host without a route",
            Req::get("/healthz")
                .host("unknown.example.org")
                .header("user-agent", ELB),
            Want::Local(200),
        ),
        Case::new(
            "health check over h2c",
            Req::get("/healthz")
                .host(WWW)
                .header("user-agent", ELB)
                .h2(),
            Want::Local(200),
        ),
        Case::new(
            "health check body read and dropped",
            Req::post("/healthz", "probe=1")
                .host(WWW)
                .header("user-agent", ELB),
            Want::Local(200),
        ),
        Case::new(
            "probe with a query is no health check: the route answers",
            Req::get("/healthz?full=1")
                .host("example.com")
                .header("user-agent", ELB),
            Want::Local(200),
        ),
        Case::new(
            "other user agents' /healthz: the route answers",
            Req::get("/healthz")
                .host("example.com")
                .header("user-agent", "curl/8.5.0"),
            Want::Local(200),
        ),
        Case::new(
            "probe path elsewhere is proxied",
            Req::get("/healthz/deep")
                .host(WWW)
                .header("user-agent", ELB),
            backend(&["web"]),
        ),
    ];
    harness::run_example("front-proxy.yaml", &["legacy"], cases).await;
}

// ------------------------------------------------------------------ weighted.yaml

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted() {
    let mut cases = vec![
        Case::new(
            "100/0 split",
            Req::get("/checkout"),
            backend(&["checkout_v1"]),
        ),
        Case::new(
            "100/0 split again",
            Req::get("/checkout/pay?x=1"),
            backend(&["checkout_v1"]),
        ),
        Case::new(
            "cluster_header picks the cluster",
            Req::get("/checkout").header("x-upstream-cluster", "cart_green"),
            backend(&["cart_green"]),
        ),
        Case::new(
            "cluster_header names an unknown cluster",
            Req::get("/").header("x-upstream-cluster", "nope"),
            Want::Local(503),
        ),
        Case::new(
            "exact header match, ignore_case",
            Req::get("/catalog/items").header("x-beta", "YES"),
            backend(&["catalog_v2"]),
        ),
        Case::new(
            "range match",
            Req::get("/catalog/items").header("x-app-version", "250"),
            backend(&["catalog_compat"]),
        ),
        Case::new(
            "range end is exclusive",
            Req::get("/catalog/items").header("x-app-version", "300"),
            backend(&["catalog_v1"]),
        ),
        Case::new(
            "range match on a non-number",
            Req::get("/catalog/items").header("x-app-version", "abc"),
            backend(&["catalog_v1"]),
        ),
        Case::new(
            "inverted prefix match",
            Req::get("/catalog/items").header("user-agent", "curl/8"),
            backend(&["catalog_v1"]),
        ),
        Case::new(
            "inverted prefix match, mobile",
            Req::get("/catalog/items").header("user-agent", "MobileApp/2.1"),
            backend(&["catalog_v1"]),
        ),
        Case::new(
            "inverted match with the header missing",
            Req::get("/catalog/items"),
            backend(&["catalog_v1"]),
        ),
        Case::new(
            "default route",
            Req::get("/index.html"),
            backend(&["frontend"]),
        ),
    ];
    for _ in 0..6 {
        cases.push(Case::new(
            "50/50 split",
            Req::get("/cart"),
            backend(&["cart_blue", "cart_green"]),
        ));
    }
    harness::run_example("weighted.yaml", &[], cases).await;
}

// ------------------------------------------------------------------ grpc-h2.yaml

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_h2() {
    // A gRPC frame: uncompressed, 5-byte length, "hello" as an opaque message.
    let frame = "\0\0\0\0\x05hello";
    let grpc = |path: &str| {
        Req::post(path, frame)
            .host("grpc.example.com")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
    };
    let cases = vec![
        Case::new(
            "gRPC over h2c to h2 upstream",
            grpc("/helloworld.Greeter/SayHello").h2(),
            backend(&["greeter"]),
        ),
        Case::new(
            "gRPC over HTTP/1.1 to h2 upstream",
            grpc("/helloworld.Greeter/SayHello"),
            backend(&["greeter"]),
        ),
        Case::new(
            "health check",
            grpc("/grpc.health.v1.Health/Check").h2(),
            backend(&["greeter"]),
        ),
        Case::new(
            "content-type mismatch -> direct 404",
            Req::get("/helloworld.Greeter/SayHello").h2(),
            Want::Local(404),
        ),
        Case::new(
            "REST over h2c",
            Req::get("/v1/status").host("api.example.com").h2(),
            backend(&["rest"]),
        ),
        Case::new(
            "REST over HTTP/1.1",
            Req::post("/v1/echo", "ping")
                .host("api.example.com")
                .header("content-type", "text/plain"),
            backend(&["rest"]),
        ),
        Case::new(
            "REST backend error",
            Req::get("/v1/fail").header(ECHO_STATUS, "502"),
            Want::Backend(502, &["rest"]),
        ),
        Case::new(
            "unknown gRPC service: direct 404 as a gRPC request",
            grpc("/unknown.Service/Method").h2(),
            Want::Local(200),
        ),
    ];
    harness::run_example("grpc-h2.yaml", &[], cases).await;
}

// ------------------------------------------------------------------ resilience.yaml

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resilience() {
    let api = || backend(&["api"]);
    let grpc = |path: &str, timeout: &str| {
        Req::get(path)
            .header("content-type", "application/grpc")
            .header("grpc-timeout", timeout)
    };
    let cases = vec![
        Case::new("plain request", Req::get("/"), api()),
        Case::new(
            "internal caller: x-envoy-upstream-rq-timeout-ms applies",
            Req::get("/slow")
                .header("x-envoy-upstream-rq-timeout-ms", "100")
                .header(ECHO_DELAY_MS, "600"),
            Want::Local(504),
        ),
        Case::new(
            "internal caller keeps its request id",
            Req::get("/").header("x-request-id", "caller-id-1"),
            api(),
        ),
        Case::new(
            "external caller (x-forwarded-for set): the header is ignored",
            Req::get("/slow")
                .header("x-forwarded-for", "203.0.113.9")
                .header("x-envoy-upstream-rq-timeout-ms", "100")
                .header(ECHO_DELAY_MS, "400"),
            api(),
        ),
        Case::new(
            "internal caller: x-envoy-retry-on and x-envoy-max-retries",
            Req::get("/")
                .header("x-envoy-retry-on", "5xx")
                .header("x-envoy-max-retries", "1")
                .header(ECHO_STATUS, "503"),
            Want::Backend(503, &["api"]),
        ),
        Case::new(
            "hedged: the first attempt still answers",
            Req::get("/hedged/x").header(ECHO_DELAY_MS, "400"),
            api(),
        ),
        Case::new(
            "per-try idle timeout on every attempt: 504",
            Req::get("/idle/x").header(ECHO_DELAY_MS, "700"),
            Want::Local(504),
        ),
        Case::new(
            "route max_stream_duration: 504",
            Req::get("/bounded/x").header(ECHO_DELAY_MS, "700"),
            Want::Local(504),
        ),
        Case::new(
            "grpc-timeout capped and offset, rewritten upstream",
            grpc("/grpc/x", "100m"),
            api(),
        ),
        Case::new("grpc-timeout above the cap", grpc("/grpc/x", "5S"), api()),
        Case::new(
            "grpc-timeout elapsed: DEADLINE_EXCEEDED",
            grpc("/grpc/x", "100m").header(ECHO_DELAY_MS, "700"),
            Want::Local(200),
        ),
    ];
    harness::run_example("resilience.yaml", &[], cases).await;
}
