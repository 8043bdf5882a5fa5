//! Consistent hashing: RING_HASH and MAGLEV clusters with route `hash_policy` —
//! stickiness by header and by (generated) cookie, unhealthy hosts skipped, config
//! errors.

mod common;

use common::config::indent;
use common::*;
use std::collections::BTreeSet;
use std::net::SocketAddr;

/// One catch-all route to cluster `c` with these `hash_policy` items (YAML from
/// column 0), and `c` over `backends` with `lb_policy` and extra cluster fields.
fn config(policy: &str, hash_policy: &str, backends: &[SocketAddr], extra: &str) -> String {
    let vhost = format!(
        "- name: default\n  domains: [\"*\"]\n  routes:\n  - match: {{prefix: /}}\n    route:\n      cluster: c\n      hash_policy:\n{}",
        indent(hash_policy, 6)
    );
    let weighted: Vec<(SocketAddr, u32)> = backends.iter().map(|a| (*a, 1)).collect();
    let mut cluster = cluster_yaml("c", &weighted, false);
    cluster.push_str(&format!("  lb_policy: {policy}\n"));
    cluster.push_str(extra);
    Bootstrap::new(&vhost).cluster_raw(&cluster).build()
}

/// Keys a spreading test sends: enough that each of three hosts gets some whatever
/// ports the backends were given.
const KEYS: usize = 64;

async fn three() -> [Backend; 3] {
    [
        Backend::with_health("a").await,
        Backend::with_health("b").await,
        Backend::with_health("c").await,
    ]
}

fn addrs(backends: &[Backend]) -> Vec<SocketAddr> {
    backends.iter().map(Backend::addr).collect()
}

/// The backends that answered `n` requests carrying `headers`.
async fn seen(addr: SocketAddr, n: usize, headers: &[(&str, &str)]) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for _ in 0..n {
        let r = get(addr, "h", "/", headers).await;
        assert_eq!(r.status, 200, "{}", r.text());
        names.insert(r.header("x-backend-name").unwrap_or_default().to_owned());
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_hash_sticks_each_key_to_one_backend_and_spreads_keys() {
    for policy in ["RING_HASH", "MAGLEV"] {
        let backends = three().await;
        let yaml = config(
            policy,
            "- header: {header_name: x-user}",
            &addrs(&backends),
            "",
        );
        let s = Strait::start(&yaml).await;
        let addr = s.main_addr().await;
        let mut all = BTreeSet::new();
        // Hosts sit on the ring by their (random) ports, so a host's share varies
        // from run to run: 20 keys left one host none about once in a thousand
        // runs (simulated; it failed CI once), 64 keys under once in 1e8.
        for user in 0..KEYS {
            let user = format!("user-{user}");
            let names = seen(addr, 3, &[("x-user", &user)]).await;
            assert_eq!(names.len(), 1, "{policy}: {user} went to {names:?}");
            all.extend(names);
        }
        assert_eq!(
            all.len(),
            3,
            "{policy}: {KEYS} keys over 3 backends: {all:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_hash_generates_a_cookie_then_sticks() {
    let backends = three().await;
    let policy = "- cookie: {name: sticky, ttl: 3600s, path: /}";
    let s = Strait::start(&config("RING_HASH", policy, &addrs(&backends), "")).await;
    let addr = s.main_addr().await;
    let first = get(addr, "h", "/", &[]).await;
    let set_cookie = first
        .header("set-cookie")
        .expect("a generated cookie")
        .to_owned();
    assert!(
        set_cookie.starts_with("sticky=\"")
            && set_cookie.ends_with("\"; Max-Age=3600; Path=/; HttpOnly"),
        "{set_cookie}"
    );
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let backend = first.header("x-backend-name").unwrap().to_owned();
    for _ in 0..10 {
        // Each request on a new connection: only the cookie can keep it on one host.
        let r = get(addr, "h", "/", &[("cookie", &cookie)]).await;
        assert_eq!(r.header("x-backend-name"), Some(backend.as_str()));
        assert_eq!(
            r.header("set-cookie"),
            None,
            "a present cookie is not set again"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhealthy_host_is_skipped_and_its_keys_come_back() {
    let backends = three().await;
    let check = "  health_checks:\n  - timeout: 1s\n    interval: 0.1s\n    no_traffic_interval: 0.1s\n    unhealthy_threshold: 1\n    healthy_threshold: 1\n    http_health_check: {path: /healthz}\n";
    let yaml = config(
        "RING_HASH",
        "- header: {header_name: x-user}",
        &addrs(&backends),
        check,
    );
    let s = Strait::start(&yaml).await;
    let addr = s.main_addr().await;
    s.wait_stat("cluster.c.membership_healthy", |v| v == 3)
        .await;
    let key = [("x-user", "alice")];
    let owner = seen(addr, 1, &key).await.pop_first().unwrap();
    let down = ["a", "b", "c"].iter().position(|n| *n == owner).unwrap();

    backends[down].set_healthy(false);
    s.wait_stat("cluster.c.membership_healthy", |v| v == 2)
        .await;
    let moved = seen(addr, 5, &key).await;
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert!(
        !moved.contains(&owner),
        "{owner} is unhealthy but got {moved:?}"
    );

    backends[down].set_healthy(true);
    s.wait_stat("cluster.c.membership_healthy", |v| v == 3)
        .await;
    assert_eq!(seen(addr, 5, &key).await, BTreeSet::from([owner]));
}

#[tokio::test]
async fn bad_hash_configs_are_refused_with_their_path() {
    let backend = Backend::echo("a").await;
    let cluster = "static_resources.clusters[0]";
    let route = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0].routes[0].route";
    let cases = [
        (
            config(
                "MAGLEV",
                "- header: {header_name: x-user}",
                &[backend.addr()],
                "  maglev_lb_config: {table_size: 1000}\n",
            ),
            format!("{cluster}.maglev_lb_config.table_size: 1000 is not a prime number"),
        ),
        (
            config(
                "RING_HASH",
                "- header: {header_name: x-user, case: true}",
                &[backend.addr()],
                "",
            ),
            format!("{route}.hash_policy[0].header.case: unknown field `case`"),
        ),
        (
            config(
                "RING_HASH",
                "- filter_state: {key: \"\"}",
                &[backend.addr()],
                "",
            ),
            format!("{route}.hash_policy[0].filter_state.key: key is required"),
        ),
        (
            with_filter_state(
                config("RING_HASH", "- filter_state: {key: k}", &[backend.addr()], ""),
                "envoy.tcp_proxy.cluster",
            ),
            "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[0].typed_config.on_request_headers[0].factory_key: 'envoy.tcp_proxy.cluster' does not have an object factory".to_owned(),
        ),
    ];
    for (yaml, want) in cases {
        let (_, stderr) = Strait::start_expect_failure(&yaml).await;
        assert!(stderr.contains(&want), "want {want:?} in:\n{stderr}");
    }
}

/// `config` with a `set_filter_state` filter before the router that sets `tenant`
/// from the `x-tenant` header with object factory `factory`.
fn with_filter_state(yaml: String, factory: &str) -> String {
    let filter = format!(
        r#"          - name: envoy.filters.http.set_filter_state
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.set_filter_state.v3.Config
              on_request_headers:
              - object_key: tenant
                factory_key: {factory}
                format_string: {{text_format_source: {{inline_string: "%REQ(x-tenant)%"}}}}
"#
    );
    let marker = "          http_filters:\n";
    yaml.replacen(marker, &format!("{marker}{filter}"), 1)
}

/// `hash_policy.filter_state` hashes a hashable filter-state object, as Envoy: a
/// `set_filter_state` filter with `envoy.hashable_string` makes each tenant stick to
/// one backend. An `envoy.string` object is not hashable, so the pick is random
/// (checked against Envoy 1.40, which behaves the same).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_state_hash_sticks_tenants_to_backends() {
    let backends = three().await;
    let policy = "- filter_state: {key: tenant}";
    let yaml = config("RING_HASH", policy, &addrs(&backends), "");
    let s = Strait::start(&with_filter_state(yaml.clone(), "envoy.hashable_string")).await;
    let addr = s.main_addr().await;
    let mut all = BTreeSet::new();
    for tenant in 0..KEYS {
        let tenant = format!("tenant-{tenant}");
        let names = seen(addr, 3, &[("x-tenant", &tenant)]).await;
        assert_eq!(names.len(), 1, "{tenant} went to {names:?}");
        all.extend(names);
    }
    assert_eq!(all.len(), 3, "{KEYS} tenants over 3 backends: {all:?}");
    drop(s);

    let s = Strait::start(&with_filter_state(yaml, "envoy.string")).await;
    let addr = s.main_addr().await;
    let names = seen(addr, 60, &[("x-tenant", "one-tenant")]).await;
    assert!(
        names.len() > 1,
        "an envoy.string object must not hash: {names:?}"
    );
}

/// Requests on a route with a hash policy still spread over a round-robin cluster:
/// the hash is only for RING_HASH and MAGLEV.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_clusters_ignore_the_hash() {
    let backends = three().await;
    let policy = "- header: {header_name: x-user}\n- cookie: {name: sticky, ttl: 60s}";
    let s = Strait::start(&config("ROUND_ROBIN", policy, &addrs(&backends), "")).await;
    let addr = s.main_addr().await;
    assert_eq!(seen(addr, 6, &[("x-user", "alice")]).await.len(), 3);
    assert_eq!(get(addr, "h", "/", &[]).await.header("set-cookie"), None);
}
