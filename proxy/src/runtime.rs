//! The published runtime: one config snapshot plus what the workers need beside it
//! (stat handles, access loggers, cluster state). Built once per config generation,
//! published with one `ArcSwap::store`; a request loads it once and keeps it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use strait_xds::model::{self, HttpFilterConfig, Snapshot, WasmFilterConfig};

use crate::access_log::{AccessLogger, Writers};
use crate::chain::{NativeFilter, NativeStage, WasmFilterRuntime};
use crate::cluster::ClusterRuntime;
use crate::fault::FaultFilterRuntime;
use crate::health_filter::HealthCheckRuntime;
use crate::rate_limit::LocalRateLimitRuntime;
use crate::stats::{Counter, Gauge, Scope, Store};
use strait_filters::stream_info::{ListenerInfo, RouteResolver};
use strait_filters::wasm::{MetaValue, NodeInfo};

/// A hash map for lookups on the request path: keys come from config or from us, so
/// a fast unkeyed-quality hash is enough.
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Envoy's `http.<stat_prefix>.*` connection-manager stats.
#[derive(Clone)]
pub struct HttpStats {
    pub downstream_rq_total: Counter,
    pub downstream_rq_active: Gauge,
    pub downstream_rq_xx: [Counter; 5],
    pub downstream_rq_http1_total: Counter,
    pub downstream_rq_http2_total: Counter,
    pub downstream_cx_total: Counter,
    pub downstream_cx_active: Gauge,
    pub downstream_cx_http1_total: Counter,
    pub downstream_cx_http2_total: Counter,
    pub downstream_cx_protocol_error: Counter,
    /// Connections the client closed while a request on them was unanswered.
    pub downstream_cx_destroy_remote_active_rq: Counter,
    /// HTTP/2 streams the client reset (RST_STREAM).
    pub downstream_rq_rx_reset: Counter,
    pub downstream_cx_idle_timeout: Counter,
    /// Connections a drain or a failed health check closed (after their response).
    pub downstream_cx_drain_close: Counter,
    /// Strait's own: idle HTTP/1.1 connections whose codec state was released.
    pub downstream_cx_idle_released: Counter,
    pub downstream_rq_timeout: Counter,
    /// `stream_idle_timeout` fired (Envoy's counter; `downstream_rq_timeout` is
    /// `request_timeout`'s).
    pub downstream_rq_idle_timeout: Counter,
    /// `request_headers_timeout` fired: a head not complete in time.
    pub downstream_rq_header_timeout: Counter,
    pub downstream_rq_max_duration_reached: Counter,
    pub no_route: Counter,
    pub no_cluster: Counter,
    pub rq_direct_response: Counter,
    pub rq_redirect: Counter,
}

impl HttpStats {
    fn register(store: &Store, prefix: &str) -> HttpStats {
        let scope = Scope::http(prefix);
        let c = |n: &str| store.counter(&scope, n);
        HttpStats {
            downstream_rq_total: c("downstream_rq_total"),
            downstream_rq_active: store.gauge(&scope, "downstream_rq_active"),
            downstream_rq_xx: [
                c("downstream_rq_1xx"),
                c("downstream_rq_2xx"),
                c("downstream_rq_3xx"),
                c("downstream_rq_4xx"),
                c("downstream_rq_5xx"),
            ],
            downstream_rq_http1_total: c("downstream_rq_http1_total"),
            downstream_rq_http2_total: c("downstream_rq_http2_total"),
            downstream_cx_total: c("downstream_cx_total"),
            downstream_cx_active: store.gauge(&scope, "downstream_cx_active"),
            downstream_cx_http1_total: c("downstream_cx_http1_total"),
            downstream_cx_http2_total: c("downstream_cx_http2_total"),
            downstream_cx_protocol_error: c("downstream_cx_protocol_error"),
            downstream_cx_destroy_remote_active_rq: c("downstream_cx_destroy_remote_active_rq"),
            downstream_rq_rx_reset: c("downstream_rq_rx_reset"),
            downstream_cx_idle_timeout: c("downstream_cx_idle_timeout"),
            downstream_cx_drain_close: c("downstream_cx_drain_close"),
            downstream_cx_idle_released: c("downstream_cx_idle_released"),
            downstream_rq_timeout: c("downstream_rq_timeout"),
            downstream_rq_idle_timeout: c("downstream_rq_idle_timeout"),
            downstream_rq_header_timeout: c("downstream_rq_header_timeout"),
            downstream_rq_max_duration_reached: c("downstream_rq_max_duration_reached"),
            no_route: c("no_route"),
            no_cluster: c("no_cluster"),
            rq_direct_response: c("rq_direct_response"),
            rq_redirect: c("rq_redirect"),
        }
    }
}

/// Envoy's `listener.<address>.*` stats.
#[derive(Clone)]
pub struct ListenerStats {
    pub downstream_cx_total: Counter,
    pub downstream_cx_active: Gauge,
}

pub struct ListenerRuntime {
    pub config: Arc<model::Listener>,
    pub http: HttpStats,
    pub listener: ListenerStats,
    pub access_logs: Vec<AccessLogger>,
    /// The HCM's wasm `http_filters` before the router, compiled.
    pub http_filters: Vec<Arc<WasmFilterRuntime>>,
    /// The HCM's native filters (fault, set_filter_state), each placed among
    /// `http_filters`.
    pub stages: Vec<NativeStage>,
    /// A `set_filter_state` filter is among them: streams need filter state.
    pub sets_filter_state: bool,
    /// What plugins read about this listener and its routes (`xds.*`).
    pub info: Arc<ListenerInfo>,
    pub routes: Arc<dyn RouteResolver>,
    /// `envoy.filters.network.wasm` filters before the HCM, compiled.
    pub network_filters: Vec<Arc<WasmFilterRuntime>>,
}

pub struct Runtime {
    pub generation: u64,
    pub snapshot: Arc<Snapshot>,
    pub listeners: Vec<Arc<ListenerRuntime>>,
    pub clusters: FastMap<String, Arc<ClusterRuntime>>,
    /// Every compiled wasm plugin, so the next build can keep unchanged ones.
    pub wasm_plugins: Vec<Arc<WasmFilterRuntime>>,
    /// The bootstrap node as plugins read it (`xds.node`).
    pub node: Arc<NodeInfo>,
}

impl Runtime {
    /// The listener called `name` (names are unique; addresses need not be, with
    /// port 0).
    pub fn listener(&self, name: &str) -> Option<&Arc<ListenerRuntime>> {
        self.listeners.iter().find(|l| l.config.name == name)
    }

    /// Builds the runtime for `snapshot`, keeping the state of clusters and wasm
    /// plugins whose config did not change (`previous`). Fails, before anything is
    /// published, on IO (an access-log file that cannot be opened, a `code.remote`
    /// module that cannot be fetched) and on a plugin that does not load.
    pub async fn build(
        snapshot: Snapshot,
        previous: Option<&Runtime>,
        store: &Store,
        writers: &Writers,
    ) -> anyhow::Result<Runtime> {
        static GENERATION: AtomicU64 = AtomicU64::new(1);
        // Plugins read it (`xds.node`), from `proxy_on_configure` on; each keeps
        // its own config's, so a refused config changes nothing.
        let node = Arc::new(node_info(&snapshot.node));
        let snapshot = Arc::new(snapshot);
        // Clusters first: a plugin's `code.remote` is fetched through one.
        let mut clusters =
            FastMap::with_capacity_and_hasher(snapshot.clusters.len(), Default::default());
        for name in &snapshot.cluster_order {
            let config = snapshot.clusters[name].clone();
            let kept = previous
                .and_then(|p| p.clusters.get(name))
                .filter(|old| *old.config == *config)
                .cloned();
            let rt = match kept {
                Some(old) => old,
                None => ClusterRuntime::new(config, store).await,
            };
            clusters.insert(name.clone(), rt);
        }
        // What plugins read as `xds.cluster_metadata`, by cluster.
        let cluster_metadata: Arc<FastMap<String, Arc<MetaValue>>> = Arc::new(
            snapshot
                .clusters
                .iter()
                .map(|(name, c)| (name.clone(), metadata(&c.metadata)))
                .collect(),
        );
        let mut listeners = Vec::with_capacity(snapshot.listeners.len());
        let mut wasm_plugins: Vec<Arc<WasmFilterRuntime>> = Vec::new();
        for l in &snapshot.listeners {
            let mut http_filters = Vec::with_capacity(l.hcm.http_filters.len());
            let mut stages = Vec::new();
            for filter in &l.hcm.http_filters {
                let config = match filter {
                    HttpFilterConfig::Wasm(config) => config,
                    HttpFilterConfig::Fault(config) => {
                        stages.push(NativeStage {
                            after_wasm: http_filters.len(),
                            filter: NativeFilter::Fault(FaultFilterRuntime::new(
                                config.clone(),
                                store,
                                &l.hcm.stat_prefix,
                            )),
                        });
                        continue;
                    }
                    HttpFilterConfig::SetFilterState(config) => {
                        stages.push(NativeStage {
                            after_wasm: http_filters.len(),
                            filter: NativeFilter::SetFilterState(config.clone()),
                        });
                        continue;
                    }
                    HttpFilterConfig::HealthCheck(config) => {
                        stages.push(NativeStage {
                            after_wasm: http_filters.len(),
                            filter: NativeFilter::HealthCheck(HealthCheckRuntime::new(
                                config.clone(),
                                &snapshot.node.cluster,
                            )),
                        });
                        continue;
                    }
                    HttpFilterConfig::LocalRateLimit(config) => {
                        // An unchanged listener keeps its buckets, as in Envoy.
                        let kept =
                            LocalRateLimitRuntime::kept(previous, &snapshot, &l.name, stages.len());
                        let filter = kept.unwrap_or_else(|| {
                            LocalRateLimitRuntime::new(config.clone(), &l.hcm.route_config, store)
                        });
                        stages.push(NativeStage {
                            after_wasm: http_filters.len(),
                            filter: NativeFilter::LocalRateLimit(filter),
                        });
                        continue;
                    }
                };
                let plugin =
                    wasm_plugin(config, previous, &wasm_plugins, &clusters, &node, store).await;
                let plugin = match plugin {
                    Ok(plugin) => plugin,
                    // Envoy starts with a fail-open plugin whose module could not be
                    // fetched and leaves the filter out; a reload is refused instead,
                    // so the running plugin keeps serving (`wasm_remote`).
                    Err(e) if previous.is_none() && config.fail_open && config.remote.is_some() => {
                        tracing::error!(error = %format!("{e:#}"), "wasm plugin not loaded; fail_open: its filter is left out");
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                if !wasm_plugins.iter().any(|p| Arc::ptr_eq(p, &plugin)) {
                    wasm_plugins.push(plugin.clone());
                }
                http_filters.push(plugin);
            }
            let mut network_filters = Vec::with_capacity(l.network_filters.len());
            for config in &l.network_filters {
                let runtime =
                    wasm_plugin(config, previous, &wasm_plugins, &clusters, &node, store).await?;
                if !wasm_plugins.iter().any(|p| Arc::ptr_eq(p, &runtime)) {
                    wasm_plugins.push(runtime.clone());
                }
                network_filters.push(runtime);
            }
            let mut access_logs = Vec::new();
            for log in &l.hcm.access_logs {
                let logger = AccessLogger::new(log, writers)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", log.path))?;
                access_logs.push(logger);
            }
            let scope = Scope::listener(&listener_stat_name(l.address));
            listeners.push(Arc::new(ListenerRuntime {
                config: l.clone(),
                http: HttpStats::register(store, &l.hcm.stat_prefix),
                listener: ListenerStats {
                    downstream_cx_total: store.counter(&scope, "downstream_cx_total"),
                    downstream_cx_active: store.gauge(&scope, "downstream_cx_active"),
                },
                access_logs,
                http_filters,
                sets_filter_state: stages
                    .iter()
                    .any(|s| matches!(s.filter, NativeFilter::SetFilterState(_))),
                stages,
                info: Arc::new(ListenerInfo {
                    direction: l.traffic_direction,
                    filter_chain_name: l.filter_chain_name.clone(),
                    metadata: (*metadata(&l.metadata)).clone(),
                }),
                routes: Arc::new(crate::router::Routes::new(
                    l.hcm.route_config.clone(),
                    cluster_metadata.clone(),
                )),
                network_filters,
            }));
        }
        Ok(Runtime {
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
            snapshot,
            listeners,
            clusters,
            wasm_plugins,
            node,
        })
    }
}

/// `--mode validate`: what starting on `snapshot` would check beyond the translation,
/// short of the network. Every plugin with a local module is compiled and one VM of
/// it started (`proxy_on_vm_start`, `proxy_on_configure`), so a plugin that refuses
/// its configuration is caught, and every access-log file must open for appending
/// (one not there yet needs its directory). As in Envoy's validation mode nothing is
/// bound and no upstream is called: a `code.remote` module is not fetched, and the
/// returned notes say which were left unchecked.
pub fn validate(snapshot: &Snapshot) -> anyhow::Result<Vec<String>> {
    for l in &snapshot.listeners {
        for log in &l.hcm.access_logs {
            let model::AccessLogSink::File(path) = &log.sink else {
                continue;
            };
            let opened = match path.try_exists() {
                Ok(true) => std::fs::OpenOptions::new()
                    .append(true)
                    .open(path)
                    .map(drop),
                _ => match path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    Some(dir) if !dir.is_dir() => Err(std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("no directory {}", dir.display()),
                    )),
                    _ => Ok(()),
                },
            };
            opened.map_err(|e| {
                anyhow::anyhow!("{}: cannot open {}: {e}", log.path, path.display())
            })?;
        }
    }
    let node = Arc::new(node_info(&snapshot.node));
    let store = Store::default();
    let mut notes = Vec::new();
    let http = snapshot.listeners.iter().flat_map(|l| {
        l.hcm.http_filters.iter().filter_map(|f| match f {
            HttpFilterConfig::Wasm(config) => Some(config),
            _ => None,
        })
    });
    let network = snapshot.listeners.iter().flat_map(|l| &l.network_filters);
    let services = snapshot.wasm_services.iter().map(|s| &s.plugin);
    for config in http.chain(network).chain(services) {
        if let Some(remote) = &config.remote {
            notes.push(format!(
                "{}: module {} not fetched (no upstream calls when validating)",
                remote.path, remote.uri
            ));
            continue;
        }
        let code = bytes::Bytes::from(config.code.to_vec());
        WasmFilterRuntime::compile(config.clone(), code, node.clone(), &store)?;
    }
    Ok(notes)
}

/// The compiled plugin for `config`: the previous runtime's (or one built earlier
/// in this build) when nothing but its field path changed, else a fresh load.
/// Equality compares the module bytes (or the remote module's sha256), which is far
/// cheaper than compiling; a `code.remote` module is fetched only when needed.
async fn wasm_plugin(
    config: &Arc<WasmFilterConfig>,
    previous: Option<&Runtime>,
    built: &[Arc<WasmFilterRuntime>],
    clusters: &FastMap<String, Arc<ClusterRuntime>>,
    node: &Arc<NodeInfo>,
    store: &Store,
) -> anyhow::Result<Arc<WasmFilterRuntime>> {
    let earlier = previous.map_or(&[][..], |p| &p.wasm_plugins[..]);
    if let Some(kept) = built.iter().chain(earlier).find(|p| p.same_plugin(config)) {
        return Ok(kept.clone());
    }
    let code = match &config.remote {
        Some(remote) => crate::wasm_remote::load(remote, clusters, store).await?,
        None => bytes::Bytes::from(config.code.to_vec()),
    };
    WasmFilterRuntime::compile(config.clone(), code, node.clone(), store)
}

/// Envoy names listener stats after the address with `:` turned into `_`.
pub fn listener_stat_name(addr: SocketAddr) -> String {
    addr.to_string().replace(':', "_")
}

/// Everything the process shares between the main thread and the workers.
pub struct Shared {
    pub runtime: ArcSwap<Runtime>,
    pub store: Store,
    pub writers: Writers,
    /// Connections open on all workers, for draining.
    pub connections: AtomicU64,
    pub started: std::time::SystemTime,
    /// This machine's address, for `x-forwarded-for` when the peer is loopback.
    pub local_ip: std::net::IpAddr,
    /// Set by admin `/healthcheck/fail`, cleared by `/healthcheck/ok`: Envoy's
    /// server-wide "health check failed" state (see [`Shared::health_check_failed`]).
    pub failing_health_checks: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// Whether the operator failed this server's health checks (admin
    /// `/healthcheck/fail`): the `health_check` filter answers 503, `/ready` says
    /// `DRAINING`, and connections on listeners of the default drain type close after
    /// their current response, as Envoy's do.
    pub fn health_check_failed(&self) -> bool {
        self.failing_health_checks
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A JSON value (of a `google.protobuf.Struct`) as plugins read it.
fn meta_value(v: &serde_json::Value) -> MetaValue {
    match v {
        serde_json::Value::Null => MetaValue::Null,
        serde_json::Value::Bool(b) => MetaValue::Bool(*b),
        serde_json::Value::Number(n) => MetaValue::Number(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => MetaValue::String(s.clone()),
        serde_json::Value::Array(items) => MetaValue::List(items.iter().map(meta_value).collect()),
        serde_json::Value::Object(map) => meta_struct(map),
    }
}

fn meta_struct(map: &serde_json::Map<String, serde_json::Value>) -> MetaValue {
    MetaValue::Struct(
        map.iter()
            .map(|(k, v)| (k.clone(), meta_value(v)))
            .collect(),
    )
}

/// `filter_metadata` as plugins read it: a struct of namespaces.
pub(crate) fn metadata(metadata: &model::Metadata) -> Arc<MetaValue> {
    Arc::new(MetaValue::Struct(
        metadata
            .iter()
            .map(|(ns, fields)| (ns.clone(), meta_struct(fields)))
            .collect(),
    ))
}

/// The bootstrap node as plugins read it (`xds.node`).
fn node_info(node: &model::Node) -> NodeInfo {
    NodeInfo::new(
        node.id.clone(),
        node.cluster.clone(),
        node.metadata
            .iter()
            .map(|(k, v)| (k.clone(), meta_value(v)))
            .collect(),
    )
}
