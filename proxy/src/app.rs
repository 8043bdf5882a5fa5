//! The process, wired in one place: parse config before binding anything, bind, start
//! workers, serve admin, watch for reloads and signals, drain on the way out.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use strait_xds::model::Snapshot;
use tokio::sync::{mpsc, Mutex};

use crate::access_log::Writers;
use crate::conn::Drained;
use crate::runtime::{Runtime, Shared};
use crate::stats::{Scope, Store};
use crate::wasm_service::{self, WasmServiceRuntime};
use crate::worker::{self, Command, WorkerHandle};
use crate::{admin, listener};

/// Where the config comes from.
#[derive(Clone, Debug)]
pub enum Source {
    File(PathBuf),
    Quick {
        listen: SocketAddr,
        upstream: String,
    },
}

impl Source {
    pub fn load(&self) -> anyhow::Result<Snapshot> {
        Ok(match self {
            Source::File(p) => strait_xds::snapshot_from_path(p)?,
            Source::Quick { listen, upstream } => strait_xds::quick_snapshot(*listen, upstream)?,
        })
    }
}

/// `--mode validate`: the config loaded, translated and its plugins started as a
/// start would, with nothing bound and no upstream called. Returns notes on what was
/// left unchecked (`code.remote` modules).
pub fn validate(source: &Source) -> anyhow::Result<Vec<String>> {
    crate::runtime::validate(&source.load()?)
}

#[derive(Clone, Debug)]
pub struct Options {
    pub source: Source,
    pub concurrency: usize,
    pub drain_time: Duration,
    /// See [`drain_on_sigterm`].
    pub min_drain_time: Duration,
    /// `--drain-strategy`: how `/drain_listeners?graceful` tells connections.
    pub drain_strategy: DrainStrategy,
    pub admin_address_path: Option<PathBuf>,
}

/// The running proxy, as the main thread and the admin API see it.
pub struct Proxy {
    pub shared: Arc<Shared>,
    pub options: Options,
    workers: Vec<WorkerHandle>,
    /// Listener name → (configured address, bound address). Keyed by name, not
    /// address: several listeners may ask for port 0 on one IP.
    bound: std::sync::Mutex<HashMap<String, (SocketAddr, SocketAddr)>>,
    reload_lock: Mutex<()>,
    pub shutdown: mpsc::UnboundedSender<ShutdownKind>,
    reload_ok: crate::stats::Counter,
    reload_failed: crate::stats::Counter,
    /// When the config in force was published (start, or the last good reload),
    /// `last_updated` in `/config_dump`.
    pub published: std::sync::Mutex<std::time::SystemTime>,
    /// The listeners a drain reached so far.
    drained: std::sync::Mutex<Drained>,
    /// `server.live`: 0 while health checks are failed (Envoy's gauge).
    live: crate::stats::Gauge,
    /// Active health checkers of the published clusters (main thread).
    health: std::sync::Mutex<crate::health::Checkers>,
    /// The running `envoy.bootstrap.wasm` services of the published config.
    wasm_services: std::sync::Mutex<Vec<Arc<WasmServiceRuntime>>>,
}

/// Envoy's `--drain-strategy`: how a graceful admin drain tells its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DrainStrategy {
    /// Each connection at a random time within the drain time, so their clients do
    /// not all reconnect elsewhere at once (Envoy's default).
    #[default]
    Gradual,
    /// All at once.
    Immediate,
}

/// A drain (admin `/drain_listeners`, `SIGTERM`).
#[derive(Debug, Clone, Copy)]
pub struct Drain {
    /// The listeners drained: all, or the inbound ones (`?inboundonly`).
    pub scope: Drained,
    /// `?graceful`: the listeners keep accepting for the drain time before they stop
    /// (each connection they accept meanwhile closes after its first response):
    /// clients that still pick this instance get answers, not refused connections.
    pub graceful: bool,
    /// `?skip_exit`: the listeners never stop accepting; only their connections are
    /// drained.
    pub skip_exit: bool,
    /// Spread over the drain time ([`DrainStrategy::Gradual`]) rather than at once.
    pub gradual: bool,
}

#[derive(Debug, Clone, Copy)]
pub enum ShutdownKind {
    /// SIGTERM: drain for up to the drain time, then exit.
    Graceful,
    /// `/quitquitquit`: exit now.
    Immediate,
}

impl Proxy {
    /// Actual bound addresses by listener name, for `/listeners`.
    pub fn listener_addresses(&self) -> Vec<(String, SocketAddr)> {
        let rt = self.shared.runtime.load();
        let bound = self.bound.lock().expect("bound map lock is never poisoned");
        rt.listeners
            .iter()
            .map(|l| {
                let a = l.config.address;
                (
                    l.config.name.clone(),
                    bound.get(&l.config.name).map_or(a, |b| b.1),
                )
            })
            .collect()
    }

    /// Re-reads the config. A bad config is refused, logged with its path, and the
    /// running one keeps serving.
    pub async fn reload(&self) -> anyhow::Result<()> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let result = self.try_reload().await;
        match &result {
            Ok(()) => {
                self.reload_ok.inc();
                tracing::info!("config reloaded");
            }
            Err(e) => {
                self.reload_failed.inc();
                tracing::error!(error = %format!("{e:#}"), "config rejected; the previous config keeps serving");
            }
        }
        result
    }

    async fn try_reload(&self) -> anyhow::Result<()> {
        let snapshot = self.options.source.load()?;
        let old = self.shared.runtime.load_full();
        let new = Runtime::build(
            snapshot,
            Some(&old),
            &self.shared.store,
            &self.shared.writers,
        )
        .await?;
        // Services the new config adds start now, so one that fails rejects it; the
        // old config's other services stop once the new one is published.
        let running = self.running_services();
        let services =
            wasm_service::sync(&running, &new, self.options.concurrency, &self.shared.store)
                .await?;
        // Bind every new or moved listener before publishing, so a port in use refuses
        // the config. A listener whose name and address stay keeps its sockets.
        let mut fresh = Vec::new();
        {
            let bound = self.bound.lock().expect("bound map lock is never poisoned");
            for (i, l) in new.listeners.iter().enumerate() {
                let (name, addr) = (&l.config.name, l.config.address);
                if bound.get(name).is_none_or(|b| b.0 != addr) {
                    let b = listener::bind(addr, self.workers.len()).with_context(|| {
                        format!("static_resources.listeners[{i}].address: cannot bind {addr}")
                    })?;
                    fresh.push((name.clone(), addr, b));
                }
            }
        }
        let new = Arc::new(new);
        self.shared.runtime.store(new.clone());
        *self.published.lock().expect("not poisoned") = std::time::SystemTime::now();
        // Kept services call the published config's clusters from now on.
        for service in &services {
            service.point_at(&new.clusters);
        }
        self.sync_health_checkers(&new);
        // Dropping the services left out of `services` stops them.
        *self
            .wasm_services
            .lock()
            .expect("services lock is never poisoned") = services;
        drop(running);
        let mut bound = self.bound.lock().expect("bound map lock is never poisoned");
        for (name, addr, b) in fresh {
            bound.insert(name.clone(), (addr, b.actual));
            self.hand_out(&name, b.per_worker);
        }
        let gone: Vec<String> = bound
            .keys()
            .filter(|n| !new.listeners.iter().any(|l| &l.config.name == *n))
            .cloned()
            .collect();
        for name in gone {
            bound.remove(&name);
            for w in &self.workers {
                let _ = w.commands.send(Command::Unlisten { name: name.clone() });
            }
        }
        Ok(())
    }

    fn hand_out(&self, name: &str, sockets: Vec<std::net::TcpListener>) {
        for (w, socket) in self.workers.iter().zip(sockets) {
            let _ = w.commands.send(Command::Listen {
                name: name.to_owned(),
                socket,
            });
        }
    }

    /// Starts health checkers for new clusters, stops those of clusters gone.
    fn sync_health_checkers(&self, runtime: &Runtime) {
        self.health
            .lock()
            .expect("health checkers lock is never poisoned")
            .sync(runtime);
    }

    fn running_services(&self) -> Vec<Arc<WasmServiceRuntime>> {
        self.wasm_services
            .lock()
            .expect("services lock is never poisoned")
            .clone()
    }

    /// Whether a drain started, or the operator failed the server's health check.
    pub fn draining(&self) -> bool {
        *self
            .drained
            .lock()
            .expect("drain state lock is never poisoned")
            != Drained::NONE
            || self.shared.health_check_failed()
    }

    /// Admin `/healthcheck/fail` (`true`) and `/healthcheck/ok`: Envoy's server-wide
    /// health-check state (see [`Shared::health_check_failed`]).
    pub fn fail_health_checks(&self, fail: bool) {
        self.shared
            .failing_health_checks
            .store(fail, Ordering::Relaxed);
        if fail {
            tracing::warn!("health checks failed by the admin API (/healthcheck/fail)");
        } else {
            tracing::info!("health checks pass again (/healthcheck/ok)");
        }
        self.set_live();
    }

    /// `server.live` follows the health-check state alone, as Envoy's (a drain leaves
    /// it at 1 there too).
    fn set_live(&self) {
        self.live.set(i64::from(!self.shared.health_check_failed()));
    }

    /// Drains the listeners of `drain.scope`: their connections are asked to close
    /// now (idle ones close, busy ones after their current response: HTTP/1.1
    /// `Connection: close`, HTTP/2 GOAWAY), and the listeners stop accepting now, at
    /// the end of the drain time (`graceful`), or never (`skip_exit`). Envoy's
    /// `/drain_listeners`. A graceful drain of listeners already drained does nothing.
    pub fn drain(&self, drain: Drain) {
        {
            let mut drained = self
                .drained
                .lock()
                .expect("drain state lock is never poisoned");
            if drain.graceful && drained.with(drain.scope) == *drained {
                return;
            }
            *drained = drained.with(drain.scope);
        }
        tracing::info!(scope = ?drain.scope, graceful = drain.graceful, skip_exit = drain.skip_exit, "draining listeners");
        let scope = drain.scope;
        let spread = drain.gradual.then_some(self.options.drain_time);
        for w in &self.workers {
            let _ = w.commands.send(Command::Drain { scope, spread });
        }
        match (drain.skip_exit, drain.graceful) {
            (true, _) => {}
            (false, false) => self.stop_accepting(scope),
            (false, true) => {
                let workers: Vec<_> = self.workers.iter().map(|w| w.commands.clone()).collect();
                let after = self.options.drain_time;
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    for w in workers {
                        let _ = w.send(Command::StopAccepting { scope });
                    }
                });
            }
        }
    }

    fn stop_accepting(&self, scope: Drained) {
        for w in &self.workers {
            let _ = w.commands.send(Command::StopAccepting { scope });
        }
    }
}

/// Runs the proxy until it is told to stop. Returns the process exit code.
pub fn run(options: Options) -> anyhow::Result<i32> {
    let snapshot = options.source.load()?;
    let main_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    main_rt.block_on(async move {
        let store = Store::default();
        let writers = Writers::default();
        let runtime = Runtime::build(snapshot, None, &store, &writers).await?;
        let services = wasm_service::sync(&[], &runtime, options.concurrency, &store).await?;
        let mut bindings = Vec::new();
        for (i, l) in runtime.listeners.iter().enumerate() {
            let b = listener::bind(l.config.address, options.concurrency).with_context(|| {
                format!(
                    "static_resources.listeners[{i}].address: cannot bind {}",
                    l.config.address
                )
            })?;
            bindings.push((l.config.name.clone(), l.config.address, b));
        }
        let admin_addr = runtime.snapshot.admin.as_ref().map(|a| a.address);
        let admin_listener = match admin_addr {
            Some(a) => Some(
                tokio::net::TcpListener::bind(a)
                    .await
                    .with_context(|| format!("admin.address: cannot bind {a}"))?,
            ),
            None => None,
        };
        let server = Scope::server();
        let shared = Arc::new(Shared {
            runtime: ArcSwap::from_pointee(runtime),
            store: store.clone(),
            writers,
            connections: Default::default(),
            started: std::time::SystemTime::now(),
            local_ip: crate::headers::local_address(),
            failing_health_checks: Default::default(),
        });
        let mut workers = Vec::with_capacity(options.concurrency);
        for i in 0..options.concurrency {
            workers.push(worker::spawn(i, shared.clone())?);
        }
        let (shutdown_tx, mut shutdown_rx) = mpsc::unbounded_channel();
        let proxy = Arc::new(Proxy {
            shared: shared.clone(),
            options: options.clone(),
            workers,
            bound: Default::default(),
            reload_lock: Mutex::new(()),
            shutdown: shutdown_tx.clone(),
            reload_ok: store.counter(&server, "config_reload_success"),
            reload_failed: store.counter(&server, "config_reload_failure"),
            published: std::sync::Mutex::new(std::time::SystemTime::now()),
            drained: Default::default(),
            live: store.gauge(&server, "live"),
            health: Default::default(),
            wasm_services: std::sync::Mutex::new(services),
        });
        proxy.sync_health_checkers(&shared.runtime.load());
        proxy.set_live();
        store
            .gauge(&server, "concurrency")
            .set(options.concurrency as i64);
        for (name, addr, b) in bindings {
            proxy
                .bound
                .lock()
                .expect("not poisoned")
                .insert(name.clone(), (addr, b.actual));
            tracing::info!(listener = %name, address = %addr, bound = %b.actual, "listening");
            proxy.hand_out(&name, b.per_worker);
        }
        if let Some(l) = admin_listener {
            let bound = l.local_addr()?;
            tracing::info!(%bound, "admin listening");
            if let Some(p) = &options.admin_address_path {
                std::fs::write(p, bound.to_string())
                    .with_context(|| format!("--admin-address-path {}", p.display()))?;
            }
            tokio::spawn(admin::serve(l, proxy.clone()));
        }
        tokio::spawn(dns_refresh(proxy.clone()));
        tokio::spawn(crate::outlier::run(proxy.shared.clone()));
        crate::reload::watch(proxy.clone(), shutdown_tx)?;

        let kind = shutdown_rx.recv().await.unwrap_or(ShutdownKind::Immediate);
        tracing::info!(?kind, "shutting down");
        if let ShutdownKind::Graceful = kind {
            drain_on_sigterm(&proxy).await;
        }
        proxy.drain(Drain {
            scope: Drained::ALL,
            graceful: false,
            skip_exit: false,
            gradual: false,
        });
        shared.writers.flush_blocking(Duration::from_secs(2));
        Ok(0)
    })
}

/// `SIGTERM`: drain, then return when no connection is left or the drain time is up.
///
/// A sidecar (some listener has `traffic_direction: INBOUND`) drains its inbound
/// listeners only, gracefully: they keep accepting, and every connection closes after
/// its next response, while the callers' endpoints learn that this instance is
/// going. The other listeners (the application's outbound calls) keep serving
/// untouched for at least `min_drain_time` and then until their last connection
/// closes: the application, which got its own `SIGTERM`, can finish its work and
/// make calls until it exits. (Envoy exits on `SIGTERM` at once; meshes put an agent
/// in front that does this dance through `/drain_listeners?inboundonly&graceful`.)
///
/// Without inbound listeners (an edge proxy) every listener stops accepting now and
/// its connections drain.
async fn drain_on_sigterm(proxy: &Proxy) {
    let started = tokio::time::Instant::now();
    let deadline = started + proxy.options.drain_time;
    let sidecar = proxy
        .shared
        .runtime
        .load()
        .listeners
        .iter()
        .any(|l| Drained::of(&l.config) == Drained::INBOUND);
    let not_before = match sidecar {
        true => {
            proxy.drain(Drain {
                scope: Drained::INBOUND,
                graceful: true,
                skip_exit: true,
                gradual: false,
            });
            started + proxy.options.min_drain_time
        }
        false => {
            proxy.drain(Drain {
                scope: Drained::ALL,
                graceful: false,
                skip_exit: false,
                gradual: false,
            });
            started
        }
    };
    let connections = &proxy.shared.connections;
    let now = tokio::time::Instant::now;
    while now() < deadline && (now() < not_before || connections.load(Ordering::Relaxed) > 0) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Re-resolves STRICT_DNS / LOGICAL_DNS clusters at their refresh rate.
async fn dns_refresh(proxy: Arc<Proxy>) {
    let mut due: HashMap<u64, tokio::time::Instant> = HashMap::new();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let rt = proxy.shared.runtime.load_full();
        let now = tokio::time::Instant::now();
        for cluster in rt.clusters.values() {
            let Some(every) = cluster.dns_refresh() else {
                continue;
            };
            let next = due.entry(cluster.id).or_insert(now + every);
            if *next <= now {
                cluster.refresh().await;
                *next = now + every;
            }
        }
        due.retain(|id, _| rt.clusters.values().any(|c| c.id == *id));
    }
}
