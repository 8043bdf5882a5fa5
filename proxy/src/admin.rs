//! The admin API on `admin.address`, Envoy's endpoints and formats.

use std::borrow::Cow;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;

use crate::app::{Drain, Proxy, ShutdownKind};
use crate::cluster::Host;
use crate::conn::Drained;
use strait_xds::model::EdsHealth;

pub async fn serve(listener: tokio::net::TcpListener, proxy: Arc<Proxy>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let proxy = proxy.clone();
                async move { Ok::<_, Infallible>(handle(req, &proxy).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

fn json(v: serde_json::Value) -> Response<Full<Bytes>> {
    let text = serde_json::to_string_pretty(&v).unwrap_or_default();
    reply(StatusCode::OK, "application/json", text)
}

/// Query parameter `name`, percent-decoded (`filter=%5Eserver` is `^server`).
fn query_param<'a>(req: &'a Request<Incoming>, name: &str) -> Option<Cow<'a, str>> {
    let raw = req
        .uri()
        .query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))?;
    Some(percent_encoding::percent_decode_str(raw).decode_utf8_lossy())
}

/// Whether the query has the parameter `name`, with or without a value (Envoy's
/// boolean admin parameters: `?graceful`, `?inboundonly`).
fn query_flag(req: &Request<Incoming>, name: &str) -> bool {
    req.uri().query().is_some_and(|q| {
        q.split('&').any(|kv| {
            kv == name
                || kv
                    .strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('='))
        })
    })
}

/// `/stats`' `?filter=`: a regular expression matched anywhere in a stat's name, as
/// Envoy's; one that does not compile is the request's error, said as such.
fn stats_filter(req: &Request<Incoming>) -> Result<Option<regex::Regex>, String> {
    match query_param(req, "filter") {
        None => Ok(None),
        Some(re) => regex::Regex::new(&re)
            .map(Some)
            .map_err(|e| format!("Invalid regex in filter={re}: {e}\n")),
    }
}

async fn handle(req: Request<Incoming>, proxy: &Arc<Proxy>) -> Response<Full<Bytes>> {
    let text = "text/plain; charset=UTF-8";
    let mutating = matches!(
        req.uri().path(),
        "/drain_listeners"
            | "/quitquitquit"
            | "/reload"
            | "/healthcheck/fail"
            | "/healthcheck/ok"
            | "/logging"
            | "/reset_counters"
    );
    if mutating && req.method() != Method::POST {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            text,
            "This endpoint requires POST\n",
        );
    }
    let store = &proxy.shared.store;
    match req.uri().path() {
        "/ready" => {
            if proxy.draining() {
                reply(StatusCode::SERVICE_UNAVAILABLE, text, "DRAINING\n")
            } else {
                reply(StatusCode::OK, text, "LIVE\n")
            }
        }
        "/server_info" => json(server_info(proxy)),
        "/stats" | "/stats/prometheus" => {
            let filter = match stats_filter(&req) {
                Ok(filter) => filter,
                Err(e) => return reply(StatusCode::BAD_REQUEST, text, e),
            };
            let format = match req.uri().path() {
                "/stats/prometheus" => Some(Cow::Borrowed("prometheus")),
                _ => query_param(&req, "format"),
            };
            match format.as_deref() {
                Some("json") => json(store.render_json(filter.as_ref())),
                Some("prometheus") => reply(
                    StatusCode::OK,
                    "text/plain; version=0.0.4",
                    store.render_prometheus(filter.as_ref()),
                ),
                _ => reply(StatusCode::OK, text, store.render_text(filter.as_ref())),
            }
        }
        "/config_dump" => {
            let name_regex = match query_param(&req, "name_regex") {
                None => None,
                Some(re) => match regex::Regex::new(&re) {
                    Ok(re) => Some(re),
                    Err(e) => {
                        let why = format!("Invalid regex in name_regex={re}: {e}\n");
                        return reply(StatusCode::BAD_REQUEST, text, why);
                    }
                },
            };
            let query = crate::config_dump::Query {
                resource: query_param(&req, "resource").map(Cow::into_owned),
                name_regex,
                mask: query_param(&req, "mask")
                    .map(|m| {
                        m.split(',')
                            .filter(|p| !p.is_empty())
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default(),
            };
            let rt = proxy.shared.runtime.load();
            let published = *proxy.published.lock().expect("not poisoned");
            let last_updated = crate::access_log::rfc3339_millis(published);
            match crate::config_dump::render(&rt.snapshot.source, &last_updated, &query) {
                Ok(dump) => json(dump),
                Err(why) => reply(StatusCode::NOT_FOUND, text, why),
            }
        }
        "/clusters" => clusters(
            proxy,
            query_param(&req, "format").as_deref() == Some("json"),
        ),
        "/listeners" => {
            let ls = proxy.listener_addresses();
            if query_param(&req, "format").as_deref() == Some("json") {
                json(
                    json!({"listener_statuses": ls.iter().map(|(name, a)| json!({
                    "name": name,
                    "local_address": {"socket_address": {"address": a.ip().to_string(), "port_value": a.port()}},
                })).collect::<Vec<_>>()}),
                )
            } else {
                let mut out = String::new();
                for (name, a) in ls {
                    let _ = writeln!(out, "{name}::{a}");
                }
                reply(StatusCode::OK, text, out)
            }
        }
        "/drain_listeners" => {
            let flag = |name| query_flag(&req, name);
            proxy.drain(Drain {
                scope: match flag("inboundonly") {
                    true => Drained::INBOUND,
                    false => Drained::ALL,
                },
                graceful: flag("graceful"),
                skip_exit: flag("skip_exit"),
                gradual: flag("graceful")
                    && proxy.options.drain_strategy == crate::app::DrainStrategy::Gradual,
            });
            reply(StatusCode::OK, text, "OK\n")
        }
        "/logging" => {
            let change = match crate::logging::Change::parse(req.uri().query()) {
                Ok(change) => change,
                Err(why) => return reply(StatusCode::BAD_REQUEST, text, format!("error: {why}\n")),
            };
            match crate::logging::apply(&change) {
                Ok(listing) => reply(StatusCode::OK, text, listing),
                Err(usage) => reply(StatusCode::BAD_REQUEST, text, usage),
            }
        }
        "/reset_counters" => {
            store.reset_counters();
            reply(StatusCode::OK, text, "OK\n")
        }
        "/runtime" => json(json!({"entries": {}, "layers": []})),
        "/certs" => json(json!({"certificates": []})),
        "/healthcheck/fail" | "/healthcheck/ok" => {
            proxy.fail_health_checks(req.uri().path() == "/healthcheck/fail");
            reply(StatusCode::OK, text, "OK\n")
        }
        "/reload" => match proxy.reload().await {
            Ok(()) => reply(StatusCode::OK, text, "OK\n"),
            Err(e) => reply(StatusCode::BAD_REQUEST, text, format!("{e:#}\n")),
        },
        "/quitquitquit" => {
            let _ = proxy.shutdown.send(ShutdownKind::Immediate);
            reply(StatusCode::OK, text, "OK\n")
        }
        "/" | "/help" => reply(StatusCode::OK, text, HELP),
        _ => reply(
            StatusCode::NOT_FOUND,
            text,
            format!("invalid path. admin commands are:\n{HELP}"),
        ),
    }
}

const HELP: &str = "  /clusters: upstream cluster status (?format=json)
  /config_dump: the active config, as Envoy's sections (?resource=static_clusters|static_listeners|static_route_configs, ?name_regex=, ?mask=)
  /drain_listeners (POST): drain connections and stop accepting (?inboundonly: inbound listeners only; ?graceful: keep accepting for the drain time; ?skip_exit: never stop accepting)
  /healthcheck/fail (POST): fail health checks (health_check filter 503, /ready DRAINING, connections close after their responses)
  /healthcheck/ok (POST): pass health checks again
  /listeners: listeners and their bound addresses (?format=json)
  /logging (POST): list loggers and their levels; ?level=, ?<logger>=<level>, ?paths=<logger>:<level>,... change them
  /reset_counters (POST): set every counter to zero
  /runtime: runtime layers (Strait has none: empty)
  /certs: certificates in use (Strait serves no TLS yet: empty)
  /quitquitquit (POST): exit the server
  /ready: LIVE when serving
  /reload (POST): re-read the config file
  /server_info: version, state and options
  /stats: counters and gauges (?filter=, ?format=json|prometheus)
  /stats/prometheus: Prometheus text exposition
";

fn server_info(proxy: &Proxy) -> serde_json::Value {
    let rt = proxy.shared.runtime.load();
    let uptime = proxy
        .shared
        .started
        .elapsed()
        .map(|d| d.as_secs())
        .unwrap_or(0);
    json!({
        "version": concat!("strait/", env!("CARGO_PKG_VERSION")),
        "state": if proxy.draining() { "DRAINING" } else { "LIVE" },
        "uptime_current_epoch": format!("{uptime}s"),
        "uptime_all_epochs": format!("{uptime}s"),
        "node": {"id": rt.snapshot.node.id, "cluster": rt.snapshot.node.cluster},
        "command_line_options": {
            "concurrency": proxy.options.concurrency,
            "drain_time": format!("{}s", proxy.options.drain_time.as_secs()),
            "config_path": match &proxy.options.source {
                crate::app::Source::File(p) => p.display().to_string(),
                crate::app::Source::Quick { .. } => String::new(),
            },
        },
        "config_generation": rt.generation,
        "active_connections": proxy.shared.connections.load(Ordering::Relaxed),
    })
}

/// Envoy's `HostUtility::healthFlagsToString`: `healthy`, or each flag set, in
/// Envoy's order.
fn health_flags(host: &Host) -> String {
    let pending = host.health.lock().pending;
    let flags = [
        (!host.is_healthy(), "/failed_active_hc"),
        (host.outlier.is_ejected(), "/failed_outlier_check"),
        (host.eds == EdsHealth::Unhealthy, "/failed_eds_health"),
        (!host.is_healthy() && pending, "/pending_active_hc"),
        (host.eds == EdsHealth::Draining, "/eds_status_draining"),
    ];
    let text: String = flags
        .iter()
        .filter(|(set, _)| *set)
        .map(|(_, flag)| *flag)
        .collect();
    match text.is_empty() {
        true => "healthy".to_owned(),
        false => text,
    }
}

/// `admin.v3.HostHealthStatus`: the configured (EDS) health, and the flags of the
/// active health checker and outlier detection.
fn health_status(host: &Host) -> serde_json::Value {
    let eds = match host.eds {
        EdsHealth::Healthy => "HEALTHY",
        EdsHealth::Unhealthy => "UNHEALTHY",
        EdsHealth::Draining => "DRAINING",
    };
    let mut status = json!({"eds_health_status": eds});
    if !host.is_healthy() {
        status["failed_active_health_check"] = json!(true);
    }
    if host.health.lock().pending {
        status["pending_active_hc"] = json!(true);
    }
    if host.outlier.is_ejected() {
        status["failed_outlier_check"] = json!(true);
    }
    status
}

fn clusters(proxy: &Proxy, as_json: bool) -> Response<Full<Bytes>> {
    let rt = proxy.shared.runtime.load();
    let mut out = String::new();
    let mut statuses = Vec::new();
    for name in &rt.snapshot.cluster_order {
        let Some(c) = rt.clusters.get(name) else {
            continue;
        };
        let hosts = c.hosts.load();
        let mut host_statuses = Vec::new();
        let observability_name = c.config.observability_name();
        if !as_json {
            let _ = writeln!(out, "{name}::observability_name::{observability_name}");
            // Envoy's header lines: each routing priority's circuit-breaker limits.
            for (priority, t) in ["default", "high"].iter().zip(&c.config.circuit_breakers) {
                let limits = [
                    ("max_connections", t.max_connections),
                    ("max_pending_requests", t.max_pending_requests),
                    ("max_requests", t.max_requests),
                    ("max_retries", t.max_retries),
                ];
                for (limit, value) in limits {
                    let _ = writeln!(out, "{name}::{priority}_priority::{limit}::{value}");
                }
            }
            let _ = writeln!(out, "{name}::added_via_api::false");
        }
        for h in hosts.hosts.iter().chain(&hosts.excluded) {
            let stats = [
                ("cx_active", h.cx_active.load(Ordering::Relaxed)),
                ("cx_connect_fail", h.cx_connect_fail.load(Ordering::Relaxed)),
                ("rq_active", h.rq_active.load(Ordering::Relaxed)),
                ("rq_error", h.rq_error.load(Ordering::Relaxed)),
                ("rq_total", h.rq_total.load(Ordering::Relaxed)),
            ];
            if as_json {
                host_statuses.push(json!({
                    "address": {"socket_address": {"address": h.addr.ip().to_string(), "port_value": h.addr.port()}},
                    "stats": stats.iter().map(|(n, v)| json!({"name": n, "value": v})).collect::<Vec<_>>(),
                    "health_status": health_status(h),
                    "weight": h.weight,
                    "hostname": h.hostname,
                }));
            } else {
                for (n, v) in stats {
                    let _ = writeln!(out, "{name}::{}::{n}::{v}", h.addr);
                }
                let _ = writeln!(out, "{name}::{}::hostname::{}", h.addr, h.hostname);
                let _ = writeln!(out, "{name}::{}::health_flags::{}", h.addr, health_flags(h));
                let _ = writeln!(out, "{name}::{}::weight::{}", h.addr, h.weight);
            }
        }
        if as_json {
            statuses.push(json!({
                "name": name,
                "observability_name": observability_name,
                "host_statuses": host_statuses,
            }));
        }
    }
    if as_json {
        json(json!({"cluster_statuses": statuses}))
    } else {
        reply(StatusCode::OK, "text/plain; charset=UTF-8", out)
    }
}
