//! Load balancing: a pure pick over a host set and per-worker state.
//!
//! State that changes per pick (round-robin cursors, smooth-weighted current weights)
//! lives in the worker, so picks touch no shared memory but the hosts' active-request
//! counters that LEAST_REQUEST reads. RING_HASH and MAGLEV keep no per-worker
//! state: their table is built with the host set (`table`) and `random` is the
//! request's hash (`hash`), or a random one when the route's policy gave none.

pub mod hash;
mod table;

pub use table::HashTable;

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
    /// One state per priority level, for clusters with several.
    levels: Vec<LbState>,
    /// One state per locality, with locality-weighted balancing.
    localities: Vec<LbState>,
}

impl LbState {
    /// Picks a healthy host, or `None` when there is none. `random` is a fresh random
    /// value, or for RING_HASH and MAGLEV the request's hash.
    ///
    /// Health filtering follows Envoy: when fewer than `panic_threshold` percent of the
    /// hosts are healthy the set is in panic and every host is eligible
    /// (`lb_healthy_panic` counts those picks); with a threshold of 0 and no healthy
    /// host the pick fails. When every host is healthy (the common case, and always
    /// without health checks) the pick costs one extra atomic load.
    pub fn pick(&mut self, policy: LbPolicy, set: &Arc<HostSet>, random: u64) -> Option<Arc<Host>> {
        match &set.priorities {
            None => self.pick_in(policy, set, random, false),
            Some(priorities) => {
                // Envoy's priority load decides the level, then the level's own
                // balancer picks within it (in panic, among all its hosts).
                let (loads, panic) = priorities.loads(set.panic_threshold);
                if panic {
                    set.lb_healthy_panic.inc();
                }
                let mut point = (random.rotate_left(17) % 100) as u32;
                let level = loads
                    .iter()
                    .position(|l| {
                        let hit = point < *l;
                        point = point.saturating_sub(*l);
                        hit
                    })
                    .unwrap_or(0);
                if self.levels.len() != priorities.levels.len() {
                    self.levels
                        .resize_with(priorities.levels.len(), LbState::default);
                }
                self.levels[level].pick_in(policy, &priorities.levels[level], random, panic)
            }
        }
    }

    fn pick_in(
        &mut self,
        policy: LbPolicy,
        set: &Arc<HostSet>,
        random: u64,
        panic: bool,
    ) -> Option<Arc<Host>> {
        if let Some(localities) = &set.localities {
            let healthy = set.healthy.load(Ordering::Relaxed) as f64;
            let set_panic = healthy * 100.0 < set.panic_threshold * set.hosts.len() as f64;
            if !panic && !set_panic {
                let weights = localities.effective_weights();
                let total: u64 = weights.iter().sum();
                if total > 0 {
                    let mut point = random.rotate_left(29) % total;
                    let i = weights
                        .iter()
                        .position(|w| {
                            let hit = point < *w;
                            point = point.saturating_sub(*w);
                            hit
                        })
                        .unwrap_or(0);
                    if self.localities.len() != localities.groups.len() {
                        self.localities
                            .resize_with(localities.groups.len(), LbState::default);
                    }
                    let group = &localities.groups[i].1;
                    return self.localities[i].pick_in(policy, group, random, false);
                }
            }
        }
        let hosts = &set.hosts;
        let every_host = match set.healthy.load(Ordering::Relaxed) {
            _ if panic => true,
            healthy if healthy >= hosts.len() => true,
            healthy if (healthy as f64) * 100.0 < set.panic_threshold * hosts.len() as f64 => {
                set.lb_healthy_panic.inc();
                true
            }
            0 => return None,
            _ => false,
        };
        let eligible = |h: &Host| every_host || h.is_available();
        match hosts.len() {
            0 => return None,
            1 => return eligible(&hosts[0]).then(|| hosts[0].clone()),
            _ => {}
        }
        let idx = match policy {
            LbPolicy::RoundRobin if set.uniform => (0..hosts.len()).find_map(|_| {
                self.cursor = (self.cursor + 1) % hosts.len();
                eligible(&hosts[self.cursor]).then_some(self.cursor)
            }),
            LbPolicy::RoundRobin => self.smooth_weighted(set, eligible),
            LbPolicy::Random => weighted_random(hosts, random, eligible),
            // The table is built for this very set, so its indices are in range.
            LbPolicy::RingHash | LbPolicy::Maglev => match &set.hash_table {
                Some(table) => table.pick(random, |i| eligible(&hosts[i])),
                None => weighted_random(hosts, random, eligible),
            },
            LbPolicy::LeastRequest => {
                // Power of two choices, weighted: compare active/weight.
                let a = weighted_random(hosts, random, eligible)?;
                let second = random.rotate_left(32) ^ 0x9e37_79b9_7f4a_7c15;
                let mut b = weighted_random(hosts, second, eligible)?;
                if b == a {
                    b = (1..hosts.len())
                        .map(|step| (a + step) % hosts.len())
                        .find(|&i| eligible(&hosts[i]))
                        .unwrap_or(a);
                }
                let load = |i: usize| {
                    (hosts[i].rq_active.load(Ordering::Relaxed) + 1) as f64 / hosts[i].weight as f64
                };
                Some(if load(b) < load(a) { b } else { a })
            }
        }?;
        Some(hosts[idx].clone())
    }

    fn smooth_weighted(
        &mut self,
        set: &Arc<HostSet>,
        eligible: impl Fn(&Host) -> bool,
    ) -> Option<usize> {
        let key = Arc::as_ptr(set) as usize;
        if self.built_for != key || self.current.len() != set.hosts.len() {
            self.current = vec![0; set.hosts.len()];
            self.built_for = key;
        }
        let mut total = 0;
        let mut best: Option<usize> = None;
        for (i, h) in set.hosts.iter().enumerate() {
            if !eligible(h) {
                continue;
            }
            total += h.weight as i64;
            self.current[i] += h.weight as i64;
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        let best = best?;
        self.current[best] -= total;
        Some(best)
    }
}

/// A weighted random index among the eligible hosts.
fn weighted_random(
    hosts: &[Arc<Host>],
    random: u64,
    eligible: impl Fn(&Host) -> bool,
) -> Option<usize> {
    let total: u64 = hosts
        .iter()
        .filter(|h| eligible(h))
        .map(|h| h.weight as u64)
        .sum();
    if total == 0 {
        return None;
    }
    let mut point = random % total;
    for (i, h) in hosts.iter().enumerate() {
        if !eligible(h) {
            continue;
        }
        if point < h.weight as u64 {
            return Some(i);
        }
        point -= h.weight as u64;
    }
    None
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

    /// A set of hosts on ports 1000.. with these health flags and panic threshold.
    fn with_health(healthy: &[bool], panic_threshold: f64) -> Arc<HostSet> {
        let hosts: Vec<Arc<Host>> = healthy
            .iter()
            .enumerate()
            .map(|(i, ok)| {
                let h = Host::for_test(([127, 0, 0, 1], 1000 + i as u16).into(), 1);
                let mut state = crate::health::HealthState::initial(false);
                state.healthy = *ok;
                h.set_health(state);
                Arc::new(h)
            })
            .collect();
        let mut set = HostSet::for_test(hosts);
        set.panic_threshold = panic_threshold;
        Arc::new(set)
    }

    #[test]
    fn picks_skip_unhealthy_hosts_unless_in_panic() {
        use LbPolicy::*;
        // (policy, health, panic threshold, ports that may be picked; empty = None)
        let cases: &[(LbPolicy, &[bool], f64, &[u16])] = &[
            (RoundRobin, &[true, false, true], 50.0, &[1000, 1002]),
            (Random, &[true, false, true], 50.0, &[1000, 1002]),
            (LeastRequest, &[true, false, true], 50.0, &[1000, 1002]),
            (LeastRequest, &[false, true, false, false], 20.0, &[1001]),
            // 1 of 3 healthy is 33% < 50%: panic, every host.
            (RoundRobin, &[false, true, false], 50.0, &[1000, 1001, 1002]),
            (RoundRobin, &[false, true, false], 30.0, &[1001]),
            (Random, &[false, false], 50.0, &[1000, 1001]),
            (RoundRobin, &[false, false], 0.0, &[]),
            (LeastRequest, &[false, false], 0.0, &[]),
            (Random, &[false], 0.0, &[]),
            (RoundRobin, &[false], 50.0, &[1000]),
            (RoundRobin, &[true], 0.0, &[1000]),
        ];
        for (policy, health, threshold, want) in cases {
            let s = with_health(health, *threshold);
            let mut lb = LbState::default();
            let mut seen = std::collections::BTreeSet::new();
            let mut none = false;
            for i in 0..200u64 {
                match lb.pick(*policy, &s, i.wrapping_mul(0x2545_f491_4f6c_dd1d)) {
                    Some(h) => {
                        seen.insert(h.addr.port());
                    }
                    None => none = true,
                }
            }
            let case = format!("{policy:?} {health:?} panic {threshold}");
            assert_eq!(none, want.is_empty(), "{case}");
            assert_eq!(seen.into_iter().collect::<Vec<_>>(), *want, "{case}");
        }
    }

    #[test]
    fn panic_picks_are_counted_and_weighted_round_robin_skips_unhealthy() {
        let s = with_health(&[false, false], 50.0);
        let mut lb = LbState::default();
        lb.pick(LbPolicy::RoundRobin, &s, 0).unwrap();
        assert_eq!(s.lb_healthy_panic.value(), 1);

        let s = set(&[3, 1, 2]);
        let mut state = crate::health::HealthState::initial(false);
        state.healthy = false;
        s.hosts[0].set_health(state);
        s.healthy.store(2, Ordering::Relaxed);
        let mut ports = counts(LbPolicy::RoundRobin, &s, 300);
        ports.truncate(3);
        assert_eq!(ports, vec![0, 100, 200]);
    }

    #[test]
    fn hash_picks_stick_and_walk_past_unhealthy_hosts() {
        for policy in [LbPolicy::RingHash, LbPolicy::Maglev] {
            let hosts: Vec<Arc<Host>> = (0..3)
                .map(|i| Arc::new(Host::for_test(([127, 0, 0, 1], 1000 + i).into(), 1)))
                .collect();
            let s = Arc::new(HostSet::for_test_with(hosts, policy));
            let mut lb = LbState::default();
            let hash = 0xdead_beef_u64;
            let owner = lb.pick(policy, &s, hash).unwrap();
            for _ in 0..10 {
                assert!(Arc::ptr_eq(&lb.pick(policy, &s, hash).unwrap(), &owner));
            }
            let mut state = crate::health::HealthState::initial(false);
            state.healthy = false;
            owner.set_health(state);
            s.healthy.store(2, Ordering::Relaxed);
            let next = lb.pick(policy, &s, hash).unwrap();
            assert!(!Arc::ptr_eq(&next, &owner), "{policy:?}");
            // The table was not rebuilt: the same walk lands on the same next host.
            assert!(Arc::ptr_eq(&lb.pick(policy, &s, hash).unwrap(), &next));
        }
    }

    #[test]
    fn random_respects_weights_roughly() {
        let c = counts(LbPolicy::Random, &set(&[3, 1]), 4000);
        assert!((2700..3300).contains(&c[0]), "{c:?}");
    }
}
