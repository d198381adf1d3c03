//! In-process GCRA counters: a fixed number of shards, each a small map behind its own
//! lock, so workers rarely meet on the same lock and no lock is global. Memory is bounded:
//! a full shard first drops keys whose bucket has refilled (they are equivalent to unknown
//! keys), and if that frees too little, drops half of its keys — a flood of random keys
//! costs those keys' history, never unbounded memory.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use super::gcra::{self, Rate, Verdict};

const SHARDS: usize = 64;

type Map<V> = HashMap<u64, V, foldhash::fast::FixedState>;

/// Hashed keys spread over a fixed number of maps, each behind its own lock, with the
/// monotonic clock their entries keep time by. Shared by the GCRA counters and the slices
/// of Redis buckets ([`super::slices`]).
pub(super) struct Shards<V> {
    maps: Box<[Mutex<Map<V>>]>,
    /// Keys one map holds before it makes room.
    pub(super) per_shard: usize,
    epoch: Instant,
}

impl<V> Shards<V> {
    /// Holds at most about `max_keys` keys.
    pub(super) fn new(max_keys: usize) -> Self {
        Self {
            maps: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
            per_shard: (max_keys / SHARDS).max(16),
            epoch: Instant::now(),
        }
    }

    /// Nanoseconds on this process's monotonic clock (never 0, which means "unknown").
    pub(super) fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// The map of shard `index` (see [`shard_of`]), locked.
    pub(super) fn lock(&self, index: usize) -> MutexGuard<'_, Map<V>> {
        self.maps[index].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `f` over every map in turn, summed.
    pub(super) fn sum(&self, f: impl Fn(&Map<V>) -> u64) -> u64 {
        (0..SHARDS).map(|i| f(&self.lock(i))).sum()
    }
}

pub struct LocalCounters {
    shards: Shards<u64>,
}

impl LocalCounters {
    /// Holds at most about `max_keys` keys.
    pub fn new(max_keys: usize) -> Self {
        Self {
            shards: Shards::new(max_keys),
        }
    }

    /// Keys held, for tests and metrics.
    pub fn len(&self) -> usize {
        self.shards.sum(|map| map.len() as u64) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Gives back one request to each `(key, rate)`: for a request these limits allowed
    /// but a later limit refused.
    pub fn refund(&self, checks: &[(u64, Rate)]) {
        let now = self.shards.now();
        for (key, rate) in checks {
            let mut map = self.shards.lock(shard_of(*key));
            if let Some(tat) = map.get_mut(key) {
                *tat = tat.saturating_sub(rate.interval);
                if *tat <= now {
                    map.remove(key);
                }
            }
        }
    }

    /// Checks every `(key, rate)` at one instant; only when all allow is each charged, so a
    /// request refused by one limit uses up none of the others.
    pub fn check_all(&self, checks: &[(u64, Rate)]) -> Vec<Verdict> {
        let now = self.shards.now();
        // Locks in shard order: no two callers can wait on each other.
        let mut order: Vec<usize> = checks.iter().map(|(key, _)| shard_of(*key)).collect();
        order.sort_unstable();
        order.dedup();
        let mut guards: Vec<_> = order.iter().map(|&i| (i, self.shards.lock(i))).collect();
        let mut verdicts = Vec::with_capacity(checks.len());
        let mut updates = Vec::with_capacity(checks.len());
        for (key, rate) in checks {
            let shard = shard_of(*key);
            let map = &guards
                .iter()
                .find(|(i, _)| *i == shard)
                .expect("locked above")
                .1;
            let tat = map.get(key).copied().unwrap_or(0);
            let (verdict, new_tat) = gcra::check(*rate, tat, now);
            verdicts.push(verdict);
            updates.push(new_tat);
        }
        if verdicts.iter().all(|v| v.allowed) {
            for ((key, _), new_tat) in checks.iter().zip(updates) {
                let shard = shard_of(*key);
                let map = &mut guards
                    .iter_mut()
                    .find(|(i, _)| *i == shard)
                    .expect("locked above")
                    .1;
                if map.len() >= self.shards.per_shard && !map.contains_key(key) {
                    make_room(map, now, self.shards.per_shard);
                }
                if let Some(new_tat) = new_tat {
                    map.insert(*key, new_tat);
                }
            }
        }
        verdicts
    }
}

pub(super) fn shard_of(key: u64) -> usize {
    // The low bits feed the map's own hashing; shards use the high ones.
    (key >> 58) as usize % SHARDS
}

/// Frees a full shard: keys whose bucket has refilled go first (they are the same as
/// unknown keys); if that is not enough, the half closest to refilled — the keys of clients
/// that are currently limited are the last to be forgotten.
fn make_room(map: &mut HashMap<u64, u64, foldhash::fast::FixedState>, now: u64, capacity: usize) {
    map.retain(|_, tat| *tat > now);
    if map.len() > capacity - capacity / 8 {
        let mut by_debt: Vec<(u64, u64)> = map.iter().map(|(key, tat)| (*tat, *key)).collect();
        let half = by_debt.len() / 2;
        by_debt.select_nth_unstable(half);
        for (_, key) in &by_debt[..half] {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_by_one_limit_charges_none_and_memory_stays_bounded() {
        let counters = LocalCounters::new(1024);
        let tight = Rate::new(1, 3_600_000_000_000, 1);
        let loose = Rate::new(100, 1_000_000_000, 100);
        assert!(
            counters
                .check_all(&[(1 << 60, loose), (2 << 60, tight)])
                .iter()
                .all(|v| v.allowed)
        );
        let verdicts = counters.check_all(&[(1 << 60, loose), (2 << 60, tight)]);
        assert!(verdicts[0].allowed && !verdicts[1].allowed);
        // The refused call charged nothing: this is the second charge, not the third.
        assert_eq!(counters.check_all(&[(1 << 60, loose)])[0].remaining, 98);

        for i in 0..200_000u64 {
            counters.check_all(&[(i.wrapping_mul(0x9E37_79B9_7F4A_7C15), tight)]);
        }
        assert!(
            counters.len() <= 1024 + 64 * 16,
            "{} keys held",
            counters.len()
        );
    }
}
