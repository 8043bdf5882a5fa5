//! Header maps the worker's finished exchanges gave back, for the heads it parses
//! next ([`map_with_capacity`], [`recycle`]), as HAProxy's pools keep its buffers.
//!
//! A head's map is two allocations (its index and its entries) that every request
//! and every response made and freed. At those sizes, a few hundred bytes to a few
//! KiB, mimalloc's fast path runs dry: it leaves a freed block for later
//! (`local_free`), and it found its page's list empty on each of those allocations
//! (~95 instructions on its generic path each time, callgrind). A map taken back
//! here is also the one written last, still in the cache. Here, not in the proxy,
//! so a stream's heads kept for the plugins' `on_log` come back too.

use std::cell::RefCell;

use http::HeaderMap;

/// Maps kept per thread.
const POOLED_MAPS: usize = 32;
/// A map that grew past this many headers is freed, not kept.
const POOLED_CAPACITY: usize = 64;

thread_local! {
    static MAPS: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

/// An empty map with room for `capacity` headers: one a finished exchange on this
/// thread gave back if there is one.
#[inline]
pub fn map_with_capacity(capacity: usize) -> HeaderMap {
    match MAPS.try_with(|maps| maps.borrow_mut().pop()).ok().flatten() {
        Some(mut map) => {
            if map.capacity() < capacity {
                map.reserve(capacity);
            }
            map
        }
        None => HeaderMap::with_capacity(capacity),
    }
}

/// Gives `map` back for the thread's next heads (emptied: its values' buffers are
/// released now), unless it grew large or enough are kept.
#[inline]
pub fn recycle(mut map: HeaderMap) {
    let capacity = map.capacity();
    if capacity == 0 || capacity > POOLED_CAPACITY {
        return;
    }
    map.clear();
    let _ = MAPS.try_with(|maps| {
        let mut maps = maps.borrow_mut();
        if maps.len() < POOLED_MAPS {
            maps.push(map);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{HOST, USER_AGENT};

    #[test]
    fn maps_come_back_empty_with_their_room_and_the_pool_is_bounded() {
        let pooled = || MAPS.with(|maps| maps.borrow().len());
        let mut map = map_with_capacity(8);
        map.insert(HOST, "a".parse().unwrap());
        map.append(USER_AGENT, "b".parse().unwrap());
        let room = map.capacity();
        recycle(map);
        assert_eq!(pooled(), 1);
        let again = map_with_capacity(4);
        assert!(again.is_empty());
        assert_eq!(again.capacity(), room, "the same map, not a new one");
        assert_eq!(pooled(), 0);
        recycle(again);
        // Too large, or never allocated: freed, not kept.
        let mut large = HeaderMap::with_capacity(POOLED_CAPACITY * 2);
        large.insert(HOST, "h".parse().unwrap());
        recycle(large);
        recycle(HeaderMap::new());
        assert_eq!(pooled(), 1);
        // Bounded.
        for _ in 0..POOLED_MAPS + 8 {
            recycle(HeaderMap::with_capacity(8));
        }
        assert_eq!(pooled(), POOLED_MAPS);
        // A head with more headers than a pooled map holds gets the room it needs.
        assert!(map_with_capacity(POOLED_CAPACITY).capacity() >= POOLED_CAPACITY);
    }
}
