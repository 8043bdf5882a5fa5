//! The admin API: readiness, server info, stats in both formats, config dump, clusters,
//! drain and quit.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_and_server_info() {
    let b = Backend::echo("b").await;
    let s = Strait::start(&Bootstrap::catch_all("b").cluster("b", b.addr()).build()).await;
    let (status, body) = s.admin_get("/ready").await;
    assert_eq!((status, body.trim()), (200, "LIVE"));
    let (status, body) = s.admin_get("/server_info").await;
    assert_eq!(status, 200);
    let info: serde_json::Value = serde_json::from_str(&body).expect("server_info is JSON");
    assert_eq!(info["state"], "LIVE", "{info}");
    assert!(
        info["version"]
            .as_str()
            .is_some_and(|v| v.starts_with("strait")),
        "{info}"
    );
    assert_eq!(info["command_line_options"]["concurrency"], 2, "{info}");
    let (status, _) = s.admin_get("/no-such-endpoint").await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_requests() {
    let b = Backend::echo("b").await;
    let s = Strait::start(&Bootstrap::catch_all("b").cluster("b", b.addr()).build()).await;
    let addr = s.main_addr().await;
    let mut c = Client::connect(addr, Proto::H1).await.unwrap();
    for _ in 0..5 {
        assert_eq!(c.get("h", "/", &[]).await.status, 200);
    }
    assert_eq!(
        c.get("h", "/", &[("x-backend-status", "503")]).await.status,
        503
    );
    assert_eq!(
        get_h2(addr, "h", "/", &[("x-backend-status", "404")])
            .await
            .status,
        404
    );

    s.wait_stat("http.ingress.downstream_rq_total", |v| v == 7)
        .await;
    s.wait_stat("http.ingress.downstream_rq_2xx", |v| v == 5)
        .await;
    s.wait_stat("http.ingress.downstream_rq_5xx", |v| v == 1)
        .await;
    s.wait_stat("http.ingress.downstream_rq_4xx", |v| v == 1)
        .await;
    s.wait_stat("cluster.b.upstream_rq_total", |v| v == 7).await;
    // Pooled keep-alive connections to the backend stay open and are counted.
    let accepted = b.connections();
    assert!(accepted >= 1);
    s.wait_stat("cluster.b.upstream_cx_active", |v| v as u64 == accepted)
        .await;
    // One keep-alive connection is still open; the h2 one closed.
    s.wait_stat("http.ingress.downstream_cx_active", |v| v == 1)
        .await;
    let stats = s.stats().await;
    let listener_cx = stats
        .iter()
        .find(|(k, _)| k.starts_with("listener.") && k.ends_with(".downstream_cx_total"))
        .map(|(_, v)| *v);
    assert_eq!(
        listener_cx,
        Some(2),
        "listener.<addr>.downstream_cx_total in {stats:?}"
    );
    let (_, text) = s.admin_get("/stats").await;
    assert!(
        text.contains("cluster.b.upstream_rq_time:"),
        "histogram in /stats:\n{text}"
    );

    let (status, prom) = s.admin_get("/stats/prometheus").await;
    assert_eq!(status, 200);
    assert!(
        prom.lines()
            .any(|l| l == "envoy_cluster_upstream_rq_total{envoy_cluster_name=\"b\"} 7"),
        "prometheus:\n{prom}"
    );
    assert!(
        prom.contains("envoy_cluster_upstream_rq_time_bucket{")
            && prom.contains("envoy_cluster_name=\"b\""),
        "upstream_rq_time histogram buckets in prometheus:\n{prom}"
    );
    assert!(
        prom.contains("# TYPE envoy_cluster_upstream_rq_time histogram"),
        "{prom}"
    );

    // `?filter=` is a regular expression over the Envoy names, as Envoy's, in every
    // format; percent-encoded as a client sends it (`^cluster\.b\.upstream_rq_total$`).
    let exact = "filter=%5Ecluster%5C.b%5C.upstream_rq_total%24";
    let (status, text) = s.admin_get(&format!("/stats?{exact}")).await;
    assert_eq!(
        (status, text.as_str()),
        (200, "cluster.b.upstream_rq_total: 7\n")
    );
    let (_, json) = s.admin_get(&format!("/stats?format=json&{exact}")).await;
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        json["stats"],
        serde_json::json!([{"name": "cluster.b.upstream_rq_total", "value": 7}])
    );
    let (_, prom) = s.admin_get(&format!("/stats/prometheus?{exact}")).await;
    assert_eq!(
        prom,
        "# TYPE envoy_cluster_upstream_rq_total counter\n\
         envoy_cluster_upstream_rq_total{envoy_cluster_name=\"b\"} 7\n"
    );
    // A plain word still finds every name containing it.
    let (_, text) = s.admin_get("/stats?filter=downstream_rq_").await;
    assert!(
        text.lines().count() > 3 && text.lines().all(|l| l.contains("downstream_rq_")),
        "{text}"
    );
    // One that does not compile is the request's error, and says so.
    let (status, text) = s.admin_get("/stats?filter=%28unclosed").await;
    assert_eq!(status, 400);
    assert!(
        text.starts_with("Invalid regex in filter=(unclosed: "),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_dump_and_clusters() {
    let (b1, b2) = (Backend::echo("b1").await, Backend::echo("b2").await);
    let cluster = cluster_yaml("weighted_pool", &[(b1.addr(), 3), (b2.addr(), 1)], false);
    let s = Strait::start(
        &Bootstrap::catch_all("weighted_pool")
            .cluster_raw(&cluster)
            .build(),
    )
    .await;

    let (status, dump) = s.admin_get("/config_dump").await;
    assert_eq!(status, 200);
    let dump: serde_json::Value = serde_json::from_str(&dump).expect("config_dump is JSON");
    assert!(dump.to_string().contains("weighted_pool"), "{dump}");

    let (status, text) = s.admin_get("/clusters").await;
    assert_eq!(status, 200);
    for (addr, weight) in [(b1.addr(), 3), (b2.addr(), 1)] {
        let line = format!("weighted_pool::{addr}::weight::{weight}");
        assert!(
            text.lines().any(|l| l == line),
            "{line} in /clusters:\n{text}"
        );
    }
    let (_, json) = s.admin_get("/clusters?format=json").await;
    let json: serde_json::Value = serde_json::from_str(&json).expect("/clusters?format=json");
    let hosts = json["cluster_statuses"][0]["host_statuses"]
        .as_array()
        .expect("host_statuses");
    let weights: Vec<u64> = hosts
        .iter()
        .map(|h| h["weight"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(weights, [3, 1], "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_listeners_stops_new_connections() {
    let b = Backend::echo("b").await;
    let s = Strait::start(&Bootstrap::catch_all("b").cluster("b", b.addr()).build()).await;
    let addr = s.main_addr().await;
    assert_eq!(get(addr, "h", "/", &[]).await.status, 200);
    assert_eq!(
        s.admin_get("/drain_listeners").await.0,
        405,
        "mutations need POST"
    );
    assert_eq!(s.admin_post("/drain_listeners").await.0, 200);
    eventually(
        Duration::from_secs(10),
        "new connections to be refused",
        || async {
            tokio::net::TcpStream::connect(addr)
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;
    let (status, body) = s.admin_get("/ready").await;
    assert_eq!((status, body.trim()), (503, "DRAINING"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quitquitquit_exits() {
    let b = Backend::echo("b").await;
    let mut s = Strait::start(&Bootstrap::catch_all("b").cluster("b", b.addr()).build()).await;
    assert_eq!(
        s.admin_get("/quitquitquit").await.0,
        405,
        "GET does not quit"
    );
    assert_eq!(s.admin_post("/quitquitquit").await.0, 200);
    let status = s
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("strait exits");
    assert!(status.success(), "{status}");
}

/// A cluster's `alt_stat_name`, as Envoy uses it: its stats go by that name (a `:`
/// made `_`), in the dotted and the Prometheus form alike; `%UPSTREAM_CLUSTER%` and
/// `/clusters`' `observability_name` show it as written; `%UPSTREAM_CLUSTER_RAW%` and
/// everything else keep the cluster's own name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alt_stat_name_names_the_clusters_stats() {
    let up = Backend::echo("up").await;
    let cluster = cluster_with("backend", up.addr(), "alt_stat_name: \"svc:8080\"");
    let (log, hcm) = access_log("%UPSTREAM_CLUSTER%|%UPSTREAM_CLUSTER_RAW%");
    let s = Strait::start(
        &Bootstrap::catch_all("backend")
            .cluster_raw(&cluster)
            .hcm(&hcm)
            .build(),
    )
    .await;
    let r = get(s.main_addr().await, "h", "/", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());

    s.wait_stat("cluster.svc_8080.upstream_rq_total", |v| v == 1)
        .await;
    let stats = s.stats().await;
    let own: Vec<&String> = stats
        .keys()
        .filter(|k| k.starts_with("cluster.backend."))
        .collect();
    assert!(
        own.is_empty(),
        "stats under the cluster's own name: {own:?}"
    );
    let (_, prom) = s.admin_get("/stats/prometheus").await;
    assert!(
        prom.contains("envoy_cluster_upstream_rq_total{envoy_cluster_name=\"svc_8080\"} 1"),
        "{prom}"
    );
    assert_eq!(first_log_line(&log).await, "svc:8080|backend");

    let (_, text) = s.admin_get("/clusters").await;
    let line = "backend::observability_name::svc:8080";
    assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
    let (_, json) = s.admin_get("/clusters?format=json").await;
    let json: serde_json::Value = serde_json::from_str(&json).expect("/clusters?format=json");
    let status = &json["cluster_statuses"][0];
    assert_eq!(
        (&status["name"], &status["observability_name"]),
        (&"backend".into(), &"svc:8080".into()),
        "{json}"
    );
}

/// `/logging` as Envoy's: POST only, lists the loggers, changes all of them, one, or
/// several, refuses unknown names and levels naming them, and the change takes
/// effect at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_levels_change_while_running() {
    let b = Backend::echo("b").await;
    let s = Strait::start(&Bootstrap::catch_all("b").cluster("b", b.addr()).build()).await;
    let addr = s.main_addr().await;
    assert_eq!(s.admin_get("/logging").await.0, 405);
    let (status, listing) = s.admin_post("/logging").await;
    assert_eq!(status, 200);
    assert!(listing.starts_with("active loggers:\n"), "{listing}");
    for logger in ["admin", "http", "router", "upstream", "wasm"] {
        assert!(
            listing.contains(&format!("\n  {logger}: info\n")),
            "{listing}"
        );
    }

    // A refused head is logged at debug by the `http` logger: not at info.
    let refuse = || async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        assert!(answer.starts_with(b"HTTP/1.1 400"), "{answer:?}");
    };
    refuse().await;
    let (status, listing) = s.admin_post("/logging?http=debug").await;
    assert_eq!(status, 200);
    assert!(listing.contains("\n  http: debug\n"), "{listing}");
    assert!(listing.contains("\n  router: info\n"), "{listing}");
    assert!(!s.stderr().contains("refused a request head"));
    refuse().await;
    eventually(Duration::from_secs(5), "the debug line", || async {
        s.stderr().contains("refused a request head").then_some(())
    })
    .await;

    let (status, listing) = s.admin_post("/logging?paths=router:trace,wasm:error").await;
    assert_eq!(status, 200);
    assert!(listing.contains("\n  router: trace\n"), "{listing}");
    assert!(listing.contains("\n  wasm: error\n"), "{listing}");
    let (status, listing) = s.admin_post("/logging?level=warning").await;
    assert_eq!(status, 200);
    assert!(
        !listing.contains(": info\n") && !listing.contains(": trace\n"),
        "{listing}"
    );

    // Refused, and nothing changed.
    let (status, body) = s.admin_post("/logging?level=loud").await;
    assert_eq!(status, 400);
    assert!(body.starts_with("error: unknown logger level"), "{body}");
    let (status, body) = s.admin_post("/logging?nosuch=debug").await;
    assert_eq!(status, 400);
    assert!(
        body.starts_with("error: unknown logger name `nosuch`"),
        "{body}"
    );
    let (status, body) = s.admin_post("/logging?paths=http:debug,router:nope").await;
    assert_eq!(status, 400);
    assert!(
        body.contains("unknown logger level `nope` for router"),
        "{body}"
    );
    assert_eq!(s.admin_post("/logging?http=info&router=info").await.0, 400);
    let (_, listing) = s.admin_post("/logging").await;
    assert!(listing.contains("\n  http: warning\n"), "{listing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_counters_runtime_and_certs() {
    let b = Backend::echo("b").await;
    let s = Strait::start(&Bootstrap::catch_all("b").cluster("b", b.addr()).build()).await;
    let addr = s.main_addr().await;
    assert_eq!(get(addr, "h", "/", &[]).await.status, 200);
    s.wait_stat("cluster.b.upstream_rq_total", |v| v == 1).await;
    assert_eq!(s.admin_get("/reset_counters").await.0, 405);
    assert_eq!(s.admin_post("/reset_counters").await, (200, "OK\n".into()));
    assert_eq!(s.stat("cluster.b.upstream_rq_total").await, Some(0));
    assert_eq!(s.stat("http.ingress.downstream_rq_total").await, Some(0));
    // Gauges keep their values.
    assert_eq!(s.stat("server.concurrency").await, Some(2));
    assert_eq!(get(addr, "h", "/", &[]).await.status, 200);
    s.wait_stat("cluster.b.upstream_rq_total", |v| v == 1).await;

    let (status, body) = s.admin_get("/runtime").await;
    assert_eq!(status, 200);
    let runtime: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(runtime, serde_json::json!({"entries": {}, "layers": []}));
    let (status, body) = s.admin_get("/certs").await;
    assert_eq!(status, 200);
    let certs: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(certs, serde_json::json!({"certificates": []}));
}

/// `/config_dump` in Envoy's sections, with `?resource=`, `?name_regex=`, `?mask=`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_dump_has_envoys_sections() {
    let (a, b) = (Backend::echo("a").await, Backend::echo("b").await);
    let s = Strait::start(
        &Bootstrap::catch_all("alpha")
            .cluster("alpha", a.addr())
            .cluster("beta", b.addr())
            .build(),
    )
    .await;
    let s = &s;
    let dump = |path: &'static str| async move {
        let (status, body) = s.admin_get(path).await;
        let value = serde_json::from_str::<serde_json::Value>(&body).unwrap_or_default();
        (status, value, body)
    };
    let (status, all, body) = dump("/config_dump").await;
    assert_eq!(status, 200, "{body}");
    let types: Vec<&str> = all["configs"]
        .as_array()
        .expect("configs")
        .iter()
        .map(|c| c["@type"].as_str().unwrap_or_default())
        .collect();
    let admin_type = |t: &str| format!("type.googleapis.com/envoy.admin.v3.{t}ConfigDump");
    assert_eq!(
        types,
        [
            "Bootstrap",
            "Clusters",
            "Listeners",
            "ScopedRoutes",
            "Routes",
            "Secrets"
        ]
        .map(admin_type)
    );
    let clusters = &all["configs"][1]["static_clusters"];
    assert_eq!(clusters[1]["cluster"]["name"], "beta", "{all}");
    assert_eq!(
        clusters[1]["cluster"]["@type"],
        "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    );
    let updated = clusters[1]["last_updated"].as_str().expect("last_updated");
    assert!(updated.ends_with('Z') && updated.len() == 24, "{updated}");
    assert_eq!(
        all["configs"][2]["static_listeners"][0]["listener"]["name"],
        "main"
    );

    let (status, beta, _) =
        dump("/config_dump?resource=static_clusters&name_regex=^be&mask=cluster.name").await;
    assert_eq!(status, 200);
    assert_eq!(
        beta,
        serde_json::json!({"configs": [{
            "@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump.StaticCluster",
            "cluster": {"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": "beta"},
        }]})
    );
    assert_eq!(
        s.admin_get("/config_dump?resource=dynamic_clusters")
            .await
            .0,
        404
    );
    assert_eq!(s.admin_get("/config_dump?name_regex=(").await.0, 400);
}
