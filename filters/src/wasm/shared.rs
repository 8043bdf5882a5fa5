//! State plugins share across VMs and workers: shared data, shared queues and
//! metrics.
//!
//! Both are process-wide, like Envoy's. Shared data sits behind one `RwLock` because
//! the ABI's compare-and-swap needs a consistent read-modify-write; plugins use it
//! for rare coordination, not per request. Metrics are plain atomics: a VM resolves
//! a metric's name once (`proxy_define_metric`) and then only touches the atomic.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};

use super::abi::Status;

/// Shared data, keyed by VM id then key, each value with its CAS token.
#[derive(Default)]
pub struct SharedData {
    entries: RwLock<HashMap<(String, String), (Bytes, u32)>>,
}

impl SharedData {
    pub fn global() -> &'static SharedData {
        static GLOBAL: OnceLock<SharedData> = OnceLock::new();
        GLOBAL.get_or_init(SharedData::default)
    }

    /// The value and its CAS token.
    pub fn get(&self, vm_id: &str, key: &str) -> Option<(Bytes, u32)> {
        self.entries
            .read()
            .get(&(vm_id.to_string(), key.to_string()))
            .cloned()
    }

    /// Stores `value` if `cas` is 0 (unconditional) or matches the current token.
    pub(crate) fn set(&self, vm_id: &str, key: &str, value: Bytes, cas: u32) -> Result<(), Status> {
        let mut entries = self.entries.write();
        let entry = entries
            .entry((vm_id.to_string(), key.to_string()))
            .or_insert_with(|| (Bytes::new(), 0));
        if cas != 0 && cas != entry.1 {
            return Err(Status::CasMismatch);
        }
        // 0 means "no CAS" to the guest, so tokens skip it.
        let next = entry.1.wrapping_add(1).max(1);
        *entry = (value, next);
        Ok(())
    }
}

/// The ABI's metric types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

impl MetricKind {
    pub(crate) fn from_abi(kind: i32) -> Option<Self> {
        match kind {
            0 => Some(Self::Counter),
            1 => Some(Self::Gauge),
            2 => Some(Self::Histogram),
            _ => None,
        }
    }
}

/// One metric. Gauges hold an `i64` in two's complement; histograms keep the sum
/// and count of recorded values until the stats exporter gives them buckets.
#[derive(Debug)]
pub struct Metric {
    pub kind: MetricKind,
    value: AtomicU64,
    count: AtomicU64,
}

impl Metric {
    pub fn value(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }

    /// Number of recorded values (histograms only).
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub(crate) fn increment(&self, offset: i64) -> Result<(), Status> {
        match self.kind {
            // Envoy refuses a counter increment of zero too.
            MetricKind::Counter if offset <= 0 => Err(Status::BadArgument),
            MetricKind::Counter | MetricKind::Gauge => {
                // Two's complement makes a negative offset a wrapping subtraction.
                self.value.fetch_add(offset as u64, Ordering::Relaxed);
                Ok(())
            }
            MetricKind::Histogram => Err(Status::BadArgument),
        }
    }

    pub(crate) fn record(&self, value: u64) {
        match self.kind {
            MetricKind::Counter | MetricKind::Gauge => self.value.store(value, Ordering::Relaxed),
            MetricKind::Histogram => {
                self.value.fetch_add(value, Ordering::Relaxed);
                self.count.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Every metric any plugin defined, by name; the admin endpoint exports these.
#[derive(Default)]
pub struct Metrics {
    by_name: RwLock<HashMap<String, Arc<Metric>>>,
}

impl Metrics {
    pub fn global() -> &'static Metrics {
        static GLOBAL: OnceLock<Metrics> = OnceLock::new();
        GLOBAL.get_or_init(Metrics::default)
    }

    pub fn get(&self, name: &str) -> Option<Arc<Metric>> {
        self.by_name.read().get(name).cloned()
    }

    /// All metrics, sorted by name.
    pub fn snapshot(&self) -> Vec<(String, Arc<Metric>)> {
        let mut all: Vec<_> = self
            .by_name
            .read()
            .iter()
            .map(|(name, metric)| (name.clone(), metric.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// The metric with this name, created if new. The same name with another kind
    /// is an error: two plugins would silently corrupt each other's numbers.
    pub(crate) fn define(&self, kind: MetricKind, name: &str) -> Result<Arc<Metric>, Status> {
        if let Some(metric) = self.get(name) {
            return if metric.kind == kind {
                Ok(metric)
            } else {
                Err(Status::BadArgument)
            };
        }
        let mut by_name = self.by_name.write();
        let metric = by_name.entry(name.to_string()).or_insert_with(|| {
            Arc::new(Metric {
                kind,
                value: AtomicU64::new(0),
                count: AtomicU64::new(0),
            })
        });
        if metric.kind == kind {
            Ok(metric.clone())
        } else {
            Err(Status::BadArgument)
        }
    }
}

/// Tells a VM's thread that a queue it registered has data: called with the queue
/// id by whichever thread enqueued, so it only posts an event; the embedder then
/// calls [`WasmVm::on_queue_ready`](super::WasmVm::on_queue_ready) on the VM's own
/// thread.
pub type QueueNotifier = Arc<dyn Fn(u32) + Send + Sync>;

/// Process-wide shared queues (`proxy_register_shared_queue` and friends), as
/// proxy-wasm-cpp-host's: a queue is named by `(vm_id, name)`; registering again
/// (another worker's VM, a restarted VM) moves the notifications to the latest
/// registrant; every enqueue notifies it once (`proxy_on_queue_ready` on its root
/// context). Items are kept until dequeued by anyone.
#[derive(Default)]
pub struct SharedQueues {
    inner: Mutex<Queues>,
}

#[derive(Default)]
struct Queues {
    ids: HashMap<(String, String), u32>,
    queues: HashMap<u32, Queue>,
}

struct Queue {
    items: std::collections::VecDeque<Bytes>,
    notify: Option<QueueNotifier>,
}

impl SharedQueues {
    pub(crate) fn global() -> &'static SharedQueues {
        static GLOBAL: OnceLock<SharedQueues> = OnceLock::new();
        GLOBAL.get_or_init(SharedQueues::default)
    }

    /// The queue's id, created on first registration; `notify` replaces the
    /// previous registrant's.
    pub(crate) fn register(&self, vm_id: &str, name: &str, notify: Option<QueueNotifier>) -> u32 {
        let mut queues = self.inner.lock();
        let next = queues.queues.len() as u32 + 1;
        let id = *queues
            .ids
            .entry((vm_id.to_owned(), name.to_owned()))
            .or_insert(next);
        let queue = queues.queues.entry(id).or_insert_with(|| Queue {
            items: Default::default(),
            notify: None,
        });
        queue.notify = notify;
        id
    }

    pub(crate) fn resolve(&self, vm_id: &str, name: &str) -> Option<u32> {
        let queues = self.inner.lock();
        queues
            .ids
            .get(&(vm_id.to_owned(), name.to_owned()))
            .copied()
    }

    /// Appends `value` and notifies the registrant (outside the lock).
    pub(crate) fn enqueue(&self, id: u32, value: Bytes) -> Result<(), Status> {
        let notify = {
            let mut queues = self.inner.lock();
            let queue = queues.queues.get_mut(&id).ok_or(Status::NotFound)?;
            queue.items.push_back(value);
            queue.notify.clone()
        };
        if let Some(notify) = notify {
            notify(id);
        }
        Ok(())
    }

    /// The oldest item; `Empty` when there is none.
    pub(crate) fn dequeue(&self, id: u32) -> Result<Bytes, Status> {
        let mut queues = self.inner.lock();
        let queue = queues.queues.get_mut(&id).ok_or(Status::NotFound)?;
        queue.items.pop_front().ok_or(Status::Empty)
    }
}
