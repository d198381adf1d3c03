//! Slices of Redis buckets, for limits with `consistency: approximate`: a data plane
//! reserves up to a slice of requests from a key's bucket in one Redis round trip and then
//! spends them in process, so a busy key costs one round trip per slice instead of one per
//! request.
//!
//! The bound, which holds because every request is charged in Redis before any data plane
//! admits it: in any interval, the requests admitted are those charged in it plus those that
//! were held in slices when it began. A data plane holds at most one slice per key (only one
//! request per key asks for a whole slice at a time; others that find the slice empty while
//! it is refilled ask for their own request only), so a limit admits at most one slice per
//! data plane and key more than the exact limit. Requests a data plane reserved and never
//! spends are lost to the others: the same amount the other way.
//!
//! A refusal from Redis is kept until the moment Redis named: requests for an exhausted key
//! are refused in process until one more could pass, so a flood of limited requests costs
//! no round trips either.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use super::gcra::Verdict;
use super::local::shard_of;

const SHARDS: usize = 64;

/// What one reservation in Redis gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Requests reserved (0: the bucket had none).
    pub granted: u64,
    /// Requests left in Redis's bucket after the reservation.
    pub remaining: u64,
    /// Nanoseconds until Redis's bucket is full again.
    pub reset_ns: u64,
    /// When nothing was granted: nanoseconds until one request would be.
    pub retry_after_ns: u64,
}

/// One key's slice in this data plane.
#[derive(Clone, Copy, Debug, Default)]
struct Slice {
    /// Reserved in Redis and not yet spent.
    left: u64,
    /// Redis refused until then (own clock): no request asks again before.
    empty_until: u64,
    /// Redis's bucket at the last reservation, for the RateLimit headers.
    remaining: u64,
    full_at: u64,
    /// A whole slice is being reserved since then (0: none).
    refilling_since: u64,
}

/// What a request does about one sliced limit.
#[derive(Debug, PartialEq, Eq)]
pub enum Take {
    /// One request of the slice in hand spent.
    Spent(Verdict),
    /// Redis refused this key a moment ago and still would.
    Refused(Verdict),
    /// Nothing in hand: reserve `want` requests in Redis, then call [`Slices::granted`].
    Ask { want: u64 },
}

pub struct Slices {
    shards: Box<[Mutex<HashMap<u64, Slice, foldhash::fast::FixedState>>]>,
    per_shard: usize,
    epoch: Instant,
    /// After this long a refill that never came back (its request went away) no longer
    /// stops another request from asking for a whole slice.
    refill_ns: u64,
}

impl Slices {
    /// Holds at most about `max_keys` keys; `refill_ns` is how long a reservation may take.
    pub fn new(max_keys: usize, refill_ns: u64) -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
            per_shard: (max_keys / SHARDS).max(16),
            epoch: Instant::now(),
            refill_ns,
        }
    }

    /// Nanoseconds on this process's monotonic clock (never 0).
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    fn with<T>(
        &self,
        key: u64,
        f: impl FnOnce(&mut HashMap<u64, Slice, foldhash::fast::FixedState>) -> T,
    ) -> T {
        let mut map = self.shards[shard_of(key)]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        f(&mut map)
    }

    /// Spends one request of `key`'s slice, or says how many to reserve: a whole slice of
    /// `size`, or one when another request is already reserving the slice.
    pub fn take(&self, key: u64, size: u64) -> Take {
        let now = self.now();
        self.with(key, |map| {
            let Some(slice) = map.get_mut(&key) else {
                if map.len() >= self.per_shard {
                    make_room(map, now, self.per_shard);
                }
                map.insert(
                    key,
                    Slice {
                        refilling_since: now,
                        ..Slice::default()
                    },
                );
                return Take::Ask { want: size.max(1) };
            };
            if slice.left > 0 {
                slice.left -= 1;
                return Take::Spent(slice.verdict(now));
            }
            if slice.empty_until > now {
                return Take::Refused(Verdict {
                    allowed: false,
                    remaining: 0,
                    reset_ns: slice.full_at.saturating_sub(now),
                    retry_after_ns: slice.empty_until - now,
                });
            }
            if slice.refilling_since != 0 && now - slice.refilling_since < self.refill_ns {
                return Take::Ask { want: 1 };
            }
            slice.refilling_since = now;
            Take::Ask { want: size.max(1) }
        })
    }

    /// Keeps what Redis granted beyond this request's own, and decides the request.
    pub fn granted(&self, key: u64, want: u64, grant: Grant) -> Verdict {
        let now = self.now();
        self.with(key, |map| {
            let slice = map.entry(key).or_default();
            if want > 1 {
                slice.refilling_since = 0;
            }
            slice.remaining = grant.remaining;
            slice.full_at = now.saturating_add(grant.reset_ns);
            if grant.granted == 0 {
                slice.empty_until = now.saturating_add(grant.retry_after_ns.max(1));
                return Verdict {
                    allowed: false,
                    remaining: 0,
                    reset_ns: grant.reset_ns,
                    retry_after_ns: grant.retry_after_ns,
                };
            }
            slice.empty_until = 0;
            slice.left = slice.left.saturating_add(grant.granted.min(want) - 1);
            slice.verdict(now)
        })
    }

    /// A reservation failed (Redis unreachable): another request may try at once.
    pub fn abandon(&self, key: u64, want: u64) {
        if want > 1 {
            self.with(key, |map| {
                if let Some(slice) = map.get_mut(&key) {
                    slice.refilling_since = 0;
                }
            });
        }
    }

    /// Puts back the requests spent by a request that a later limit refused (one per key).
    pub fn give_back(&self, keys: &[u64]) {
        for &key in keys {
            self.with(key, |map| {
                if let Some(slice) = map.get_mut(&key) {
                    slice.left = slice.left.saturating_add(1);
                }
            });
        }
    }

    /// Requests held in slices, for tests.
    pub fn held(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| {
                let map = s.lock().unwrap_or_else(|p| p.into_inner());
                map.values().map(|slice| slice.left).sum::<u64>()
            })
            .sum()
    }
}

impl Slice {
    /// An admitted request's verdict: Redis's count at the last reservation plus what is
    /// still in hand — approximate, as the mode says.
    fn verdict(&self, now: u64) -> Verdict {
        Verdict {
            allowed: true,
            remaining: self.remaining.saturating_add(self.left),
            reset_ns: self.full_at.saturating_sub(now),
            retry_after_ns: 0,
        }
    }
}

/// Frees a full shard: idle keys with nothing in hand go first; if that is not enough, half
/// of the rest (their reserved requests are lost to this data plane: fewer admitted, never
/// more).
fn make_room(map: &mut HashMap<u64, Slice, foldhash::fast::FixedState>, now: u64, capacity: usize) {
    map.retain(|_, slice| slice.left > 0 || slice.empty_until > now || slice.refilling_since != 0);
    if map.len() > capacity - capacity / 8 {
        let keys: Vec<u64> = map.keys().copied().take(map.len() / 2).collect();
        for key in keys {
            map.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(granted: u64, remaining: u64) -> Grant {
        Grant {
            granted,
            remaining,
            reset_ns: 1_000,
            retry_after_ns: if granted == 0 { 60_000_000_000 } else { 0 },
        }
    }

    #[test]
    fn one_request_per_key_reserves_a_slice_and_the_rest_spend_it() {
        let slices = Slices::new(1024, 1_000_000_000);
        let key = 7 << 58;
        assert_eq!(slices.take(key, 10), Take::Ask { want: 10 });
        // While that reservation is out, others ask for their own request only.
        assert_eq!(slices.take(key, 10), Take::Ask { want: 1 });
        assert!(slices.granted(key, 1, grant(1, 89)).allowed);
        let verdict = slices.granted(key, 10, grant(10, 80));
        assert!(verdict.allowed);
        assert_eq!(verdict.remaining, 89, "Redis's 80 and 9 in hand");
        assert_eq!(slices.held(), 9);
        for left in (0..9).rev() {
            match slices.take(key, 10) {
                Take::Spent(v) => assert_eq!(v.remaining, 80 + left),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(slices.take(key, 10), Take::Ask { want: 10 });
        // A later limit refused one: it goes back into the slice.
        slices.give_back(&[key]);
        assert!(matches!(slices.take(key, 10), Take::Spent(_)));
    }

    #[test]
    fn a_refusal_is_kept_until_redis_said_and_a_failed_reservation_frees_the_slot() {
        let slices = Slices::new(1024, 1_000_000_000);
        let key = 3 << 58;
        assert_eq!(slices.take(key, 4), Take::Ask { want: 4 });
        assert!(!slices.granted(key, 4, grant(0, 0)).allowed);
        match slices.take(key, 4) {
            Take::Refused(v) => assert!(v.retry_after_ns > 59_000_000_000, "{v:?}"),
            other => panic!("{other:?}"),
        }

        let other = 5 << 58;
        assert_eq!(slices.take(other, 4), Take::Ask { want: 4 });
        slices.abandon(other, 4);
        assert_eq!(
            slices.take(other, 4),
            Take::Ask { want: 4 },
            "not stuck on `want: 1`"
        );
    }

    #[test]
    fn memory_stays_bounded_and_only_idle_keys_go_first() {
        let slices = Slices::new(1024, 1_000_000_000);
        for i in 0..100_000u64 {
            let key = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            if let Take::Ask { want } = slices.take(key, 2) {
                slices.granted(key, want, grant(want, 0));
            }
        }
        let held: usize = slices.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(held <= 1024 + 64 * 16, "{held} keys held");
    }
}
