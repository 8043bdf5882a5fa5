//! Workers: one thread each, each a current-thread Tokio runtime with its own listening
//! sockets, connections and upstream pools. The main thread talks to a worker only
//! through its command channel.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::conn::{self, Drained};
use crate::router::ConnCtx;
use crate::runtime::Shared;

pub enum Command {
    /// Start accepting for the listener `name` on this socket (replacing any socket
    /// the listener had, when its address changed).
    Listen {
        name: String,
        socket: std::net::TcpListener,
    },
    /// Stop accepting for the listener `name`; its open connections drain.
    Unlisten { name: String },
    /// Ask the connections of the listeners in `scope` to close gracefully: idle ones
    /// now, busy ones after their current response (HTTP/1.1 `Connection: close`,
    /// HTTP/2 GOAWAY), and those accepted from now on after their first.
    Drain {
        scope: Drained,
        /// Envoy's gradual strategy: each connection closes at a random time within
        /// this; `None` (immediate): all are told now.
        spread: Option<Duration>,
    },
    /// Stop accepting for the listeners in `scope`.
    StopAccepting { scope: Drained },
}

pub struct WorkerHandle {
    pub commands: mpsc::UnboundedSender<Command>,
    pub thread: std::thread::JoinHandle<()>,
}

pub fn spawn(index: usize, shared: Arc<Shared>) -> std::io::Result<WorkerHandle> {
    let (tx, rx) = mpsc::unbounded_channel();
    let thread = std::thread::Builder::new()
        .name(format!("strait-worker-{index}"))
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a worker runtime can be built");
            rt.block_on(run(shared, rx));
        })?;
    Ok(WorkerHandle {
        commands: tx,
        thread,
    })
}

async fn run(shared: Arc<Shared>, mut commands: mpsc::UnboundedReceiver<Command>) {
    tokio::spawn(heartbeat());
    crate::callout::init_worker(shared.clone());
    let mut accepting: HashMap<String, AbortHandle> = HashMap::new();
    while let Some(cmd) = commands.recv().await {
        match cmd {
            Command::Listen { name, socket } => {
                let listener = match crate::socket::Listener::new(socket) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(listener = %name, error = %e, "cannot register listener");
                        continue;
                    }
                };
                let task = tokio::spawn(accept_loop(listener, name.clone(), shared.clone()));
                if let Some(old) = accepting.insert(name, task.abort_handle()) {
                    old.abort();
                }
            }
            Command::Unlisten { name } => {
                if let Some(t) = accepting.remove(&name) {
                    t.abort();
                }
                // Its connections close: the idle ones now, the others after their
                // next response (the router notes that their listener is gone).
                conn::recheck_idle();
            }
            Command::Drain { scope, spread } => conn::drain_idle(scope, spread),
            Command::StopAccepting { scope } => {
                // The drain time is over: what a gradual drain left open closes now.
                conn::drain_idle(scope, None);
                let rt = shared.runtime.load();
                accepting.retain(|name, task| {
                    // A listener the config no longer has is in every scope.
                    let class = rt.listener(name).map(|l| Drained::of(&l.config));
                    let stop = class.is_none_or(|class| scope.covers(class));
                    if stop {
                        task.abort();
                    }
                    !stop
                });
            }
        }
    }
    // The main thread dropped the channel: the process is exiting.
}

/// Returns the calling thread's free memory to the OS; set by the binary, which
/// knows its allocator.
pub static MEMORY_TRIM: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Keeps the timer driver's next wake-up at most `HEARTBEAT` away. Tokio wakes its
/// driver (an eventfd write, then an extra epoll return) whenever a new timer is due
/// before the driver's next planned wake-up; every request arms a timer (route and
/// idle timeouts, seconds away), so without a near planned wake-up each request would
/// pay that syscall pair. Four wake-ups a second per worker cost far less.
///
/// It parks the pool's idle upstream connections (`pool::park_idle`), closes idle
/// downstream connections whose idle timeout passed (`conn::sweep_idle`), and returns the
/// memory of idle connections' released codecs to the OS (see `conn`): a forced
/// `mi_collect` purges the worker's free pages, at most four times a second and only
/// after a release.
async fn heartbeat() {
    const HEARTBEAT: Duration = Duration::from_millis(250);
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        crate::pool::park_idle();
        conn::sweep_idle();
        if conn::released_since_last_look() {
            if let Some(trim) = MEMORY_TRIM.get() {
                trim();
            }
        }
    }
}

async fn accept_loop(listener: crate::socket::Listener, name: String, shared: Arc<Shared>) {
    // A listener bound to one address gives its connections that local address:
    // no `getsockname` per connection (HAProxy asks only when it needs it). One on
    // a wildcard address asks for each.
    let bound = listener.local_addr().ok();
    let bound = bound.filter(|a| !a.ip().is_unspecified());
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off rather than spin.
                tracing::warn!(listener = %name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let rt = shared.runtime.load();
        let Some(lrt) = rt.listener(&name).cloned() else {
            continue;
        };
        let local = match bound {
            Some(bound) => bound,
            None => stream.local_addr().unwrap_or(lrt.config.address),
        };
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let ctx = Arc::new(ConnCtx {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            shared: shared.clone(),
            listener: lrt,
            peer,
            local,
            activity: conn::Activity::default(),
        });
        // The connection's future (the connection and its idle wait, at most 192 bytes;
        // each phase boxes its own state) is built in its box: tokio's task cell,
        // 128-byte aligned, stays at 128 bytes (see `conn::serve`). Its polls share
        // one reading of the clock (`clock`).
        tokio::spawn(crate::clock::Scoped(crate::pin_in_place!(conn::serve(
            stream, ctx
        ))));
    }
}
