//! Bootstrap wasm services: Envoy's `bootstrap_extensions` entry `envoy.bootstrap.wasm`
//! (`WasmService`), a plugin that runs beside the listeners on no stream at all: it
//! starts (`proxy_on_vm_start`, `proxy_on_configure`), ticks
//! (`proxy_set_tick_period_milliseconds` → `proxy_on_tick`), talks to the filters
//! through shared data and queues (same `vm_id`) and metrics, and calls out (HTTP
//! calls and gRPC streams through the main thread's pools; see [`send_calls`]).
//!
//! `singleton: true` runs one VM for the process, `false` one per worker. Each VM has
//! a thread of its own that sleeps until its next tick: a tick never waits behind
//! requests and a slow tick never delays them. (Envoy runs the singleton on its main
//! thread and the others on the worker threads; what a plugin can observe is the
//! same: how many VMs run, when they tick, what they share.)
//!
//! Lifecycle: started at startup and on every reload that adds or changes one (a
//! start that fails, e.g. `proxy_on_configure` returning false, rejects the config);
//! a service whose config is unchanged keeps running across a reload; one removed
//! or replaced is stopped once the new config is published. A trap in a tick is
//! logged with the plugin name and counted in `wasm.<name>.vm_failed`; the next tick
//! runs on a fresh VM.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use bytes::Bytes;
use strait_filters::wasm::{
    CallAnswer, CallKind, Dispatch, NodeInfo, PluginConfig, WasmEngine, WasmPlugin, WasmVm,
};
use strait_xds::model::WasmServiceConfig;

use crate::callout::Clusters;
use crate::chain::OpenStream;
use crate::runtime::{FastMap, Runtime};
use crate::stats::{Counter, Scope, Store};

/// One configured service and its running VMs.
pub struct WasmServiceRuntime {
    pub config: Arc<WasmServiceConfig>,
    failures: Arc<Failures>,
    /// The clusters its callouts may name: those of the config it started with
    /// (it may call out from `proxy_on_configure`, before that config is published),
    /// then those of each config published with it ([`Self::point_at`]).
    clusters: Arc<ArcSwap<Clusters>>,
    threads: std::sync::Mutex<Vec<(mpsc::Sender<Event>, JoinHandle<()>)>>,
}

/// The services for `configs`: those of `running` whose config is unchanged, and new
/// ones started for the rest. Dropping the services of `running` that are not in the
/// result stops them; on error, the new ones are stopped.
pub async fn sync(
    running: &[Arc<WasmServiceRuntime>],
    runtime: &Runtime,
    concurrency: usize,
    store: &Store,
) -> anyhow::Result<Vec<Arc<WasmServiceRuntime>>> {
    let (configs, clusters) = (&runtime.snapshot.wasm_services, &runtime.clusters);
    let mut services = Vec::with_capacity(configs.len());
    for config in configs {
        let kept = running
            .iter()
            .filter(|old| !services.iter().any(|s| Arc::ptr_eq(s, *old)))
            .find(|old| {
                old.config.singleton == config.singleton && *old.config.plugin == *config.plugin
            });
        let service = match kept {
            Some(old) => old.clone(),
            None => {
                // A `code.remote` module is fetched through its cluster (of the config
                // being built) first, as for HTTP filters (`wasm_remote`).
                let code = match &config.plugin.remote {
                    Some(remote) => crate::wasm_remote::load(remote, clusters, store).await?,
                    None => Bytes::from(config.plugin.code.to_vec()),
                };
                let node = runtime.node.clone();
                WasmServiceRuntime::start(config.clone(), code, node, clusters, concurrency, store)?
            }
        };
        services.push(service);
    }
    Ok(services)
}

impl WasmServiceRuntime {
    /// Compiles the plugin and starts its VMs, each on its own thread; returns once
    /// every VM ran `proxy_on_vm_start` and `proxy_on_configure`.
    pub fn start(
        config: Arc<WasmServiceConfig>,
        code: Bytes,
        node: Arc<NodeInfo>,
        clusters: &Clusters,
        concurrency: usize,
        store: &Store,
    ) -> anyhow::Result<Arc<Self>> {
        let wasm = &config.plugin;
        let error = |e: &dyn std::fmt::Display| {
            anyhow::anyhow!("{}: module {}: {e}", wasm.path, wasm.code_source)
        };
        let mut plugin = PluginConfig::new(wasm.name.clone(), code);
        plugin.node = node;
        plugin.root_id.clone_from(&wasm.root_id);
        plugin.vm_id.clone_from(&wasm.vm_id);
        plugin.configuration = Bytes::from(wasm.configuration.clone());
        plugin.vm_configuration = Bytes::from(wasm.vm_configuration.clone());
        plugin.environment.clone_from(&wasm.environment);
        plugin.fail_open = wasm.fail_open;
        let plugin = WasmPlugin::new(WasmEngine::shared(), plugin).map_err(|e| error(&e))?;
        let scope = Scope::custom(&format!("wasm.{}", wasm.name));
        let service = Arc::new(WasmServiceRuntime {
            failures: Arc::new(Failures {
                vm_failed: store.counter(&scope, "vm_failed"),
                plugin,
                exported: AtomicU64::new(0),
            }),
            threads: Default::default(),
            config: config.clone(),
            clusters: Arc::new(ArcSwap::from_pointee(clusters.clone())),
        });
        let count = if config.singleton {
            1
        } else {
            concurrency.max(1)
        };
        for index in 0..count {
            let (events_tx, events_rx) = mpsc::channel();
            let (started_tx, started_rx) = mpsc::sync_channel(1);
            let failures = service.failures.clone();
            let clusters = service.clusters.clone();
            let notify = events_tx.clone();
            let handle = tokio::runtime::Handle::current();
            let thread = std::thread::Builder::new()
                .name(format!("wasm-service-{index}"))
                .spawn(move || run(handle, failures, clusters, started_tx, events_rx, notify))
                .context("cannot start a wasm service thread")?;
            service
                .threads
                .lock()
                .expect("service threads lock is never poisoned")
                .push((events_tx, thread));
            // Dropping `service` on error stops the threads already started.
            match started_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(error(&e)),
                Err(_) => return Err(error(&"the service thread ended while starting")),
            }
        }
        tracing::info!(plugin = %wasm.name, vms = count, "wasm service started");
        Ok(service)
    }

    /// Points the service's callouts at the clusters of the config just published
    /// (a service kept across a reload calls the new config's clusters; a refused
    /// reload never gets here, so its clusters are never seen).
    pub fn point_at(&self, clusters: &Clusters) {
        self.clusters.store(Arc::new(clusters.clone()));
    }

    /// Stops every VM and waits for their threads.
    pub fn stop(&self) {
        let threads = std::mem::take(
            &mut *self
                .threads
                .lock()
                .expect("service threads lock is never poisoned"),
        );
        for (stop, _) in &threads {
            let _ = stop.send(Event::Stop);
        }
        for (_, thread) in threads {
            let _ = thread.join();
        }
    }
}

/// The plugin and its `vm_failed` counter, shared with the VM threads (which must
/// not hold the service: dropping the last reference joins them).
struct Failures {
    plugin: Arc<WasmPlugin>,
    vm_failed: Counter,
    /// How much of `plugin.stats().failures` is in `vm_failed` already.
    exported: AtomicU64,
}

impl Failures {
    fn export(&self) {
        let failures = self.plugin.stats().failures();
        let before = self.exported.fetch_max(failures, Ordering::Relaxed);
        if failures > before {
            self.vm_failed.add(failures - before);
        }
    }
}

impl Drop for WasmServiceRuntime {
    fn drop(&mut self) {
        self.stop();
        tracing::info!(plugin = %self.config.plugin.name, "wasm service stopped");
    }
}

/// What a service thread waits for.
enum Event {
    Stop,
    /// A queue this VM registered has data (`proxy_on_queue_ready`).
    QueueReady(u32),
    /// The answer to a call the root context made (of VM `generation`).
    Answer {
        generation: u64,
        token: u32,
        answer: Box<CallAnswer>,
    },
}

/// Sends the calls the root context dispatched in its last callback, on the main
/// thread's runtime (`handle`, through its own upstream pools, as Envoy runs a
/// singleton's calls on its main thread), and hands stream operations to their
/// streams; answers and stream events come back to this VM's thread as events.
fn send_calls(
    vm: &WasmVm,
    clusters: &Arc<ArcSwap<Clusters>>,
    handle: &tokio::runtime::Handle,
    events: &mpsc::Sender<Event>,
    streams: &mut FastMap<u32, OpenStream>,
) {
    let (generation, dispatches) = vm.take_root_calls();
    streams.retain(|_, stream| !stream.task.is_finished());
    for dispatch in dispatches {
        match dispatch {
            Dispatch::Call(call) if call.kind == CallKind::GrpcStream => {
                let (messages, rx) = tokio::sync::mpsc::unbounded_channel();
                let token = call.token;
                let events = events.clone();
                let clusters = clusters.load_full();
                let task = handle.spawn(async move {
                    crate::callout::grpc_stream(&clusters, *call, rx, |event| {
                        let _ = events.send(Event::Answer {
                            generation,
                            token,
                            answer: Box::new(CallAnswer::GrpcStream(event)),
                        });
                    })
                    .await;
                });
                let stream = OpenStream {
                    messages: Some(messages),
                    task: task.abort_handle(),
                };
                streams.insert(token, stream);
            }
            Dispatch::Call(call) => {
                let events = events.clone();
                let clusters = clusters.load_full();
                handle.spawn(async move {
                    let token = call.token;
                    let answer = crate::callout::send(&clusters, *call).await;
                    let _ = events.send(Event::Answer {
                        generation,
                        token,
                        answer: Box::new(answer),
                    });
                });
            }
            Dispatch::Stream(token, op) => {
                if streams
                    .get_mut(&token)
                    .is_some_and(|stream| stream.apply(op))
                {
                    streams.remove(&token);
                }
            }
        }
    }
}

/// One VM's thread: start it, then tick it at the period it asks for and tell it
/// of ready queues, until stopped.
fn run(
    handle: tokio::runtime::Handle,
    failures: Arc<Failures>,
    clusters: Arc<ArcSwap<Clusters>>,
    started: mpsc::SyncSender<Result<(), strait_filters::wasm::WasmError>>,
    events: mpsc::Receiver<Event>,
    notify: mpsc::Sender<Event>,
) {
    let check = clusters.clone();
    strait_filters::wasm::set_cluster_check(move |name| check.load().contains_key(name));
    let vm = WasmVm::new(failures.plugin.clone());
    // Enqueues on any thread (a worker's filter) wake this one.
    let queue_notify = notify.clone();
    vm.set_queue_notifier(Arc::new(move |id| {
        let _ = queue_notify.send(Event::QueueReady(id));
    }));
    let mut streams = FastMap::default();
    let result = vm.start();
    let failed = result.is_err();
    let _ = started.send(result);
    if failed {
        return;
    }
    send_calls(&vm, &clusters, &handle, &notify, &mut streams);
    let mut next_tick: Option<Instant> = None;
    loop {
        let period = vm.tick_period();
        let now = Instant::now();
        // No ticks (yet): a plugin can only ask for them from a callback, so the
        // bound only re-checks the period.
        let due = match period.is_zero() {
            true => now + Duration::from_secs(1),
            false => *next_tick.get_or_insert(now + period),
        };
        match events.recv_timeout(due.saturating_duration_since(now)) {
            Ok(Event::QueueReady(id)) => {
                if vm.on_queue_ready(id).is_err() {
                    failures.export();
                }
            }
            Ok(Event::Answer {
                generation,
                token,
                answer,
            }) => {
                if vm.root_call_answer(generation, token, *answer).is_err() {
                    failures.export();
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) if !period.is_zero() => {
                next_tick = Some(Instant::now() + period);
                if vm.on_tick().is_err() {
                    failures.export();
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => next_tick = None,
            Ok(Event::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        send_calls(&vm, &clusters, &handle, &notify, &mut streams);
    }
}
