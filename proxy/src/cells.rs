//! Per-thread cells under the stats store (`stats.rs`): the counters, gauges and
//! histogram buckets a proxied request updates, each written by one thread and
//! summed when read.
//!
//! A shared `AtomicU64` costs a `lock`-prefixed add (~5 ns on the perf machine), and
//! with several workers every request writes the same lines (the listener's request
//! count, the cluster's, the active gauges, the latency buckets) from every core:
//! each write must first take the line from the core that wrote it last. Here a
//! thread owns the cells it writes: an update is a load and a store on a line no
//! other thread writes. Readers (the admin endpoints, tests) sum every thread's
//! cells, under a lock, off the request path.
//!
//! A stat has a *slot* (a histogram a run of them), handed out once when it is
//! registered and never reused (re-registering a name returns the same handle).
//! Slots are grouped in chunks of `CHUNK` cells; a thread takes a chunk the first
//! time it writes to one of its slots (16 KiB each) and registers it for readers.
//! When a thread ends, its counts fold into the shared cells (which also take the
//! writes a thread makes while it ends, and what `set` and a reset write) and its
//! chunks, zeroed, wait for the next thread.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

use parking_lot::Mutex;

/// Cells per chunk (16 KiB).
const CHUNK: usize = 2048;
/// Chunks per thread at most.
const CHUNKS: usize = 512;
/// Slots handed out at most (1M); past them, new stats are detached shared atomics.
const SLOTS: u32 = (CHUNK * CHUNKS) as u32;

struct Chunk([AtomicU64; CHUNK]);

/// A zeroed chunk: one an ended thread left, else a new one. Chunks live as long as
/// the process (so a thread reaches its own through a plain `&'static`, with no
/// count to touch), and are reused, not freed: their number is bounded by the
/// threads that ever wrote stats at once.
fn new_chunk(free: &mut Vec<&'static Chunk>) -> &'static Chunk {
    free.pop()
        .unwrap_or_else(|| Box::leak(Box::new(Chunk(std::array::from_fn(|_| AtomicU64::new(0))))))
}

/// The next slot to hand out.
static NEXT: AtomicU32 = AtomicU32::new(0);

/// Every thread's chunks and the shared ones, by chunk index: what readers sum.
struct Registry {
    /// Per chunk index: the threads' chunks, each with its thread's number.
    owned: Vec<Vec<(u64, &'static Chunk)>>,
    /// Per chunk index: the cells every thread may add to atomically.
    shared: Vec<Option<&'static Chunk>>,
    /// Chunks ended threads left, zeroed.
    free: Vec<&'static Chunk>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    owned: Vec::new(),
    shared: Vec::new(),
    free: Vec::new(),
});

/// Numbers the threads that write cells.
static THREADS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// This thread's chunks, by chunk index. Constant-initialized and without a
    /// destructor: reaching it is an offset from the thread pointer, no check.
    static OWN: [Cell<Option<&'static Chunk>>; CHUNKS] = const { [const { Cell::new(None) }; CHUNKS] };
    /// Set with the thread's first chunk: folds its chunks into the shared cells
    /// when the thread ends.
    static FOLD: RefCell<Option<Fold>> = const { RefCell::new(None) };
}

struct Fold(u64);

impl Drop for Fold {
    fn drop(&mut self) {
        let mut registry = REGISTRY.lock();
        let Registry {
            owned,
            shared,
            free,
        } = &mut *registry;
        for (index, chunks) in owned.iter_mut().enumerate() {
            let Some(at) = chunks.iter().position(|(thread, _)| *thread == self.0) else {
                continue;
            };
            let (_, mine) = chunks.swap_remove(at);
            // Later writes of this thread (in other thread-local destructors) go to
            // the shared cells.
            let _ = OWN.try_with(|own| own[index].set(None));
            let into = shared_chunk(shared, free, index);
            for (from, to) in mine.0.iter().zip(into.0.iter()) {
                to.fetch_add(from.swap(0, Relaxed), Relaxed);
            }
            free.push(mine);
        }
    }
}

fn split(slot: u32) -> (usize, usize) {
    (slot as usize / CHUNK, slot as usize % CHUNK)
}

fn shared_chunk(
    shared: &mut Vec<Option<&'static Chunk>>,
    free: &mut Vec<&'static Chunk>,
    index: usize,
) -> &'static Chunk {
    if shared.len() <= index {
        shared.resize(index + 1, None);
    }
    shared[index].get_or_insert_with(|| new_chunk(free))
}

/// `n` consecutive slots, or `None` once all are handed out.
pub(crate) fn allocate(n: u32) -> Option<u32> {
    NEXT.fetch_update(Relaxed, Relaxed, |first| {
        first.checked_add(n).filter(|&end| end <= SLOTS)
    })
    .ok()
}

/// Adds `n` (wrapping: a gauge adds a negative as its two's complement) to this
/// thread's cell of `slot`.
#[inline]
pub(crate) fn add(slot: u32, n: u64) {
    let (index, at) = split(slot);
    // `allocate` hands out no slot past `SLOTS`: the mask only spares the bound check.
    match OWN.with(|own| own[index % CHUNKS].get()) {
        Some(chunk) => {
            let cell = &chunk.0[at];
            // The only writer of this cell: a load and a store, no `lock`.
            cell.store(cell.load(Relaxed).wrapping_add(n), Relaxed);
        }
        None => add_first(slot, n),
    }
}

/// The thread's first write to `slot`'s chunk: the chunk is made and registered.
/// While the thread ends, the write goes to the shared cell.
#[cold]
#[inline(never)]
fn add_first(slot: u32, n: u64) {
    let (index, at) = split(slot);
    let thread = FOLD.try_with(|fold| {
        let mut fold = fold.borrow_mut();
        fold.get_or_insert_with(|| Fold(THREADS.fetch_add(1, Relaxed)))
            .0
    });
    let mut registry = REGISTRY.lock();
    let chunk = match thread {
        Ok(thread) if index < CHUNKS => {
            let chunk = new_chunk(&mut registry.free);
            if registry.owned.len() <= index {
                registry.owned.resize_with(index + 1, Vec::new);
            }
            registry.owned[index].push((thread, chunk));
            OWN.with(|own| own[index].set(Some(chunk)));
            chunk
        }
        _ => {
            let Registry { shared, free, .. } = &mut *registry;
            shared_chunk(shared, free, index)
        }
    };
    chunk.0[at].fetch_add(n, Relaxed);
}

/// The sums of `n` slots from `first`: every thread's cells and the shared ones.
pub(crate) fn sums(first: u32, n: usize) -> Vec<u64> {
    let registry = REGISTRY.lock();
    (first..first + n as u32)
        .map(|slot| sum_locked(&registry, slot))
        .collect()
}

/// The sum of `slot`'s cells.
pub(crate) fn sum(slot: u32) -> u64 {
    sum_locked(&REGISTRY.lock(), slot)
}

fn sum_locked(registry: &Registry, slot: u32) -> u64 {
    let (index, at) = split(slot);
    let owned = registry.owned.get(index).into_iter().flatten();
    let shared = registry.shared.get(index).copied().flatten();
    owned
        .map(|(_, chunk)| *chunk)
        .chain(shared)
        .fold(0u64, |sum, chunk| {
            sum.wrapping_add(chunk.0[at].load(Relaxed))
        })
}

/// Makes `slot`'s sum `value` (a gauge's `set`, a counter's reset), through its
/// shared cell. An add another thread makes meanwhile may be lost, as it may with a
/// single atomic stored over.
pub(crate) fn set(slot: u32, value: u64) {
    let mut registry = REGISTRY.lock();
    let current = sum_locked(&registry, slot);
    let (index, at) = split(slot);
    let Registry { shared, free, .. } = &mut *registry;
    let shared = shared_chunk(shared, free, index);
    shared.0[at].fetch_add(value.wrapping_sub(current), Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_count_in_their_own_cells_and_readers_see_the_sum() {
        let slot = allocate(1).unwrap();
        add(slot, 2);
        assert_eq!(sum(slot), 2);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        add(slot, 1);
                    }
                    // Counted in the thread's own chunk while it lives.
                    assert!(OWN.with(|own| own[split(slot).0].get().is_some()));
                    FOLD.with(|fold| fold.borrow().as_ref().map(|fold| fold.0))
                })
            })
            .collect();
        let ended: Vec<u64> = threads
            .into_iter()
            .map(|thread| thread.join().unwrap().unwrap())
            .collect();
        // The ended threads' counts folded into the shared cells: nothing lost, and
        // their chunks are no longer registered.
        assert_eq!(sum(slot), 4002);
        let registry = REGISTRY.lock();
        let owners = &registry.owned[split(slot).0];
        assert!(owners.iter().all(|(thread, _)| !ended.contains(thread)));
        drop(registry);
        // A gauge goes below zero and is set; a counter is reset.
        add(slot, (-5i64) as u64);
        assert_eq!(sum(slot) as i64, 3997);
        set(slot, 7);
        assert_eq!(sum(slot), 7);
        add(slot, 1);
        assert_eq!(sum(slot), 8);
        set(slot, 0);
        assert_eq!(sums(slot, 1), vec![0]);
    }

    #[test]
    fn slots_run_out_rather_than_wrap_and_runs_may_cross_chunks() {
        let first = allocate(3).unwrap();
        assert!(allocate(0).unwrap() >= first + 3);
        assert_eq!(allocate(SLOTS), None);
        // The last cell of one chunk and the first of the next (slots near the end,
        // which no stat here takes).
        let run = SLOTS - CHUNK as u32 - 1;
        add(run, 1);
        add(run + 1, 2);
        assert_eq!(sums(run, 2), vec![1, 2]);
    }
}
