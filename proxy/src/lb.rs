//! Load balancing: a pure pick over a host set and per-worker state.
//!
//! State that changes per pick (round-robin cursors, smooth-weighted current weights)
//! lives in the worker, so picks touch no shared memory but the hosts' active-request
//! counters that LEAST_REQUEST reads.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use strait_xds::model::LbPolicy;

use crate::cluster::{Host, HostSet};

/// One worker's load-balancing state for one cluster.
#[derive(Default)]
pub struct LbState {
    cursor: usize,
    /// Smooth weighted round robin (NGINX's algorithm) current weights, parallel to
    /// the host set it was built for.
    current: Vec<i64>,
    /// Address of the host set `current` belongs to.
    built_for: usize,
}

impl LbState {
    /// Picks a host, or `None` when the set is empty. `random` is a fresh random value.
    pub fn pick(&mut self, policy: LbPolicy, set: &Arc<HostSet>, random: u64) -> Option<Arc<Host>> {
        let hosts = &set.hosts;
        match hosts.len() {
            0 => return None,
            1 => return Some(hosts[0].clone()),
            _ => {}
        }
        let idx = match policy {
            LbPolicy::RoundRobin if set.uniform => {
                self.cursor = (self.cursor + 1) % hosts.len();
                self.cursor
            }
            LbPolicy::RoundRobin => self.smooth_weighted(set),
            LbPolicy::Random => weighted_random(hosts, random),
            LbPolicy::LeastRequest => {
                // Power of two choices, weighted: compare active/weight.
                let a = weighted_random(hosts, random);
                let mut b = weighted_random(hosts, random.rotate_left(32) ^ 0x9e37_79b9_7f4a_7c15);
                if b == a {
                    b = (a + 1) % hosts.len();
                }
                let load = |i: usize| {
                    (hosts[i].rq_active.load(Ordering::Relaxed) + 1) as f64 / hosts[i].weight as f64
                };
                if load(b) < load(a) {
                    b
                } else {
                    a
                }
            }
        };
        Some(hosts[idx].clone())
    }

    fn smooth_weighted(&mut self, set: &Arc<HostSet>) -> usize {
        let key = Arc::as_ptr(set) as usize;
        if self.built_for != key || self.current.len() != set.hosts.len() {
            self.current = vec![0; set.hosts.len()];
            self.built_for = key;
        }
        let total: i64 = set.hosts.iter().map(|h| h.weight as i64).sum();
        let mut best = 0;
        for (i, h) in set.hosts.iter().enumerate() {
            self.current[i] += h.weight as i64;
            if self.current[i] > self.current[best] {
                best = i;
            }
        }
        self.current[best] -= total;
        best
    }
}

fn weighted_random(hosts: &[Arc<Host>], random: u64) -> usize {
    let total: u64 = hosts.iter().map(|h| h.weight as u64).sum();
    let mut point = random % total.max(1);
    for (i, h) in hosts.iter().enumerate() {
        if point < h.weight as u64 {
            return i;
        }
        point -= h.weight as u64;
    }
    hosts.len() - 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Host;

    fn set(weights: &[u32]) -> Arc<HostSet> {
        let hosts: Vec<Arc<Host>> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| Arc::new(Host::for_test(([127, 0, 0, 1], 1000 + i as u16).into(), *w)))
            .collect();
        Arc::new(HostSet::for_test(hosts))
    }

    fn counts(policy: LbPolicy, set: &Arc<HostSet>, picks: usize) -> Vec<usize> {
        let mut lb = LbState::default();
        let mut out = vec![0; set.hosts.len()];
        for i in 0..picks {
            let h = lb
                .pick(policy, set, (i as u64).wrapping_mul(0x2545_f491_4f6c_dd1d))
                .unwrap();
            out[set.hosts.iter().position(|x| Arc::ptr_eq(x, &h)).unwrap()] += 1;
        }
        out
    }

    #[test]
    fn round_robin_is_even_and_weighted_round_robin_is_exact() {
        assert_eq!(
            counts(LbPolicy::RoundRobin, &set(&[1, 1, 1]), 300),
            vec![100, 100, 100]
        );
        assert_eq!(
            counts(LbPolicy::RoundRobin, &set(&[5, 1, 4]), 1000),
            vec![500, 100, 400]
        );
    }

    #[test]
    fn smooth_weighted_round_robin_interleaves() {
        let s = set(&[2, 1]);
        let mut lb = LbState::default();
        let seq: Vec<u16> = (0..6)
            .map(|_| lb.pick(LbPolicy::RoundRobin, &s, 0).unwrap().addr.port())
            .collect();
        assert_eq!(seq, vec![1000, 1001, 1000, 1000, 1001, 1000]);
    }

    #[test]
    fn least_request_prefers_idle_hosts() {
        let s = set(&[1, 1]);
        s.hosts[0].rq_active.store(50, Ordering::Relaxed);
        let c = counts(LbPolicy::LeastRequest, &s, 1000);
        assert_eq!(c[0], 0, "{c:?}");
    }

    #[test]
    fn random_respects_weights_roughly() {
        let c = counts(LbPolicy::Random, &set(&[3, 1]), 4000);
        assert!((2700..3300).contains(&c[0]), "{c:?}");
    }
}
