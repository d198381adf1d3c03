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

use super::gcra::Verdict;
use super::local::{Shards, shard_of};

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
    /// Reserved in Redis and not yet spent; never more than `size`.
    left: u64,
    /// The slice's size when it was last asked for.
    size: u64,
    /// Redis refused until then (own clock): no request asks again before.
    empty_until: u64,
    /// Redis's bucket at the last reservation, for the RateLimit headers.
    remaining: u64,
    full_at: u64,
    /// A whole slice is being reserved since then (0: none).
    refilling_since: u64,
}

/// A reservation to make in Redis for one request, then to hand to [`Slices::granted`] (or
/// [`Slices::abandon`] when it could not be made).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ask {
    /// Requests to reserve.
    pub want: u64,
    /// For the slice's refill (not a request's own one): when it began, so that only this
    /// refill — not a later one that took over after `refill_ns` — marks it done.
    refill: Option<u64>,
}

/// What a request does about one sliced limit.
#[derive(Debug, PartialEq, Eq)]
pub enum Take {
    /// One request of the slice in hand spent.
    Spent(Verdict),
    /// Redis refused this key a moment ago and still would.
    Refused(Verdict),
    /// Nothing in hand: reserve in Redis.
    Ask(Ask),
}

pub struct Slices {
    shards: Shards<Slice>,
    /// After this long a refill that never came back (its request went away) no longer
    /// stops another request from refilling the slice.
    refill_ns: u64,
}

impl Slices {
    /// Holds at most about `max_keys` keys; `refill_ns` is how long a reservation may take.
    pub fn new(max_keys: usize, refill_ns: u64) -> Self {
        Self {
            shards: Shards::new(max_keys),
            refill_ns,
        }
    }

    /// Runs `f` on `key`'s shard with the time read under its lock, so that times stored in
    /// a slice never lie ahead of a later caller's `now`.
    fn with<T>(
        &self,
        key: u64,
        f: impl FnOnce(&mut HashMap<u64, Slice, foldhash::fast::FixedState>, u64) -> T,
    ) -> T {
        let mut map = self.shards.lock(shard_of(key));
        f(&mut map, self.shards.now())
    }

    /// Spends one request of `key`'s slice, or says what to reserve: a whole slice of `size`,
    /// or one request when another request is already refilling the slice.
    pub fn take(&self, key: u64, size: u64) -> Take {
        let size = size.max(1);
        let refill_ns = self.refill_ns;
        self.with(key, |map, now| {
            let Some(slice) = map.get_mut(&key) else {
                if map.len() >= self.shards.per_shard {
                    make_room(map, now, self.shards.per_shard, refill_ns);
                }
                map.insert(
                    key,
                    Slice {
                        size,
                        refilling_since: now,
                        ..Slice::default()
                    },
                );
                return Take::Ask(Ask {
                    want: size,
                    refill: Some(now),
                });
            };
            slice.size = size;
            if slice.left > 0 {
                slice.left -= 1;
                return Take::Spent(slice.verdict(now));
            }
            if slice.empty_until > now {
                return Take::Refused(Verdict {
                    allowed: false,
                    remaining: 0,
                    reset_ns: slice.full_at.saturating_sub(now),
                    retry_after_ns: slice.empty_until.saturating_sub(now),
                });
            }
            if slice.is_refilling(now, refill_ns) {
                return Take::Ask(Ask {
                    want: 1,
                    refill: None,
                });
            }
            slice.refilling_since = now;
            Take::Ask(Ask {
                want: size,
                refill: Some(now),
            })
        })
    }

    /// Keeps what Redis granted beyond this request's own (up to one slice in hand), and
    /// decides the request.
    pub fn granted(&self, key: u64, ask: Ask, grant: Grant) -> Verdict {
        self.with(key, |map, now| {
            let slice = map.entry(key).or_default();
            slice.finish(ask);
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
            // Beyond one slice in hand the bound would not hold: the excess is dropped
            // (charged in Redis and never spent — fewer admitted, never more).
            slice.left = (slice.left + grant.granted.min(ask.want) - 1).min(slice.size.max(1));
            slice.verdict(now)
        })
    }

    /// A reservation could not be made (Redis unreachable): another request may refill.
    pub fn abandon(&self, key: u64, ask: Ask) {
        self.with(key, |map, _| {
            if let Some(slice) = map.get_mut(&key) {
                slice.finish(ask);
            }
        });
    }

    /// Puts back the requests spent by a request that a later limit refused (one per key).
    pub fn give_back(&self, keys: &[u64]) {
        for &key in keys {
            self.with(key, |map, _| {
                if let Some(slice) = map.get_mut(&key) {
                    slice.left = (slice.left + 1).min(slice.size.max(1));
                }
            });
        }
    }

    /// Requests held in slices.
    #[cfg(test)]
    fn held(&self) -> u64 {
        self.shards
            .sum(|map| map.values().map(|slice| slice.left).sum())
    }
}

impl Slice {
    /// Whether a refill is out and not yet given up on.
    fn is_refilling(&self, now: u64, refill_ns: u64) -> bool {
        self.refilling_since != 0 && now.saturating_sub(self.refilling_since) < refill_ns
    }

    /// `ask` came back (or failed): if it was this slice's current refill, that is over.
    fn finish(&mut self, ask: Ask) {
        if ask
            .refill
            .is_some_and(|since| since == self.refilling_since)
        {
            self.refilling_since = 0;
        }
    }

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
fn make_room(
    map: &mut HashMap<u64, Slice, foldhash::fast::FixedState>,
    now: u64,
    capacity: usize,
    refill_ns: u64,
) {
    map.retain(|_, slice| {
        slice.left > 0 || slice.empty_until > now || slice.is_refilling(now, refill_ns)
    });
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

    fn ask(take: Take) -> Ask {
        match take {
            Take::Ask(ask) => ask,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn one_request_per_key_refills_the_slice_and_the_rest_spend_it() {
        let slices = Slices::new(1024, 1_000_000_000);
        let key = 7 << 58;
        let refill = ask(slices.take(key, 10));
        assert_eq!(refill.want, 10);
        // While that refill is out, others ask for their own request only.
        let own = ask(slices.take(key, 10));
        assert_eq!(own.want, 1);
        assert!(slices.granted(key, own, grant(1, 89)).allowed);
        assert_eq!(ask(slices.take(key, 10)).want, 1, "still refilling");
        let verdict = slices.granted(key, refill, grant(10, 80));
        assert!(verdict.allowed);
        assert_eq!(verdict.remaining, 89, "Redis's 80 and 9 in hand");
        assert_eq!(slices.held(), 9);
        for left in (0..9).rev() {
            match slices.take(key, 10) {
                Take::Spent(v) => assert_eq!(v.remaining, 80 + left),
                other => panic!("{other:?}"),
            }
        }
        let next = ask(slices.take(key, 10));
        assert_eq!(next.want, 10);
        // A later limit refused one: it goes back into the slice — never beyond a slice.
        slices.give_back(&[key]);
        assert!(matches!(slices.take(key, 10), Take::Spent(_)));
        for _ in 0..20 {
            slices.give_back(&[key]);
        }
        assert_eq!(slices.held(), 10);
        // A late grant on top of a full hand keeps one slice in hand, no more.
        slices.granted(key, next, grant(10, 0));
        assert_eq!(slices.held(), 10);
    }

    #[test]
    fn slices_of_one_still_end_their_refill() {
        let slices = Slices::new(1024, 1_000_000_000);
        let key = 9 << 58;
        let refill = ask(slices.take(key, 1));
        assert_eq!(refill.want, 1);
        assert_eq!(ask(slices.take(key, 1)).refill, None, "refilling");
        slices.granted(key, refill, grant(1, 5));
        assert!(ask(slices.take(key, 1)).refill.is_some(), "a refill again");
    }

    #[test]
    fn a_refusal_is_kept_until_redis_said_and_a_failed_reservation_frees_the_slot() {
        let slices = Slices::new(1024, 1_000_000_000);
        let key = 3 << 58;
        let refill = ask(slices.take(key, 4));
        assert!(!slices.granted(key, refill, grant(0, 0)).allowed);
        match slices.take(key, 4) {
            Take::Refused(v) => assert!(v.retry_after_ns > 59_000_000_000, "{v:?}"),
            other => panic!("{other:?}"),
        }

        let other = 5 << 58;
        let refill = ask(slices.take(other, 4));
        slices.abandon(other, refill);
        assert_eq!(
            ask(slices.take(other, 4)).want,
            4,
            "not stuck on one request"
        );
    }

    #[test]
    fn a_refill_that_never_returns_is_given_up_after_its_time() {
        let slices = Slices::new(1024, 1_000_000);
        let key = 11 << 58;
        let lost = ask(slices.take(key, 4));
        std::thread::sleep(std::time::Duration::from_millis(5));
        let refill = ask(slices.take(key, 4));
        assert_eq!(refill.want, 4, "another request refills");
        // The lost one coming back late does not end the current refill.
        slices.granted(key, lost, grant(4, 0));
        assert_eq!(slices.held(), 3);
        let refilling = slices.shards.lock(shard_of(key))[&key].refilling_since;
        assert_ne!(refilling, 0);
        slices.granted(key, refill, grant(4, 0));
        assert_eq!(slices.held(), 4, "one slice in hand at most");
    }

    #[test]
    fn a_full_shard_forgets_idle_keys_first() {
        let slices = Slices::new(64 * 16, 1_000_000_000);
        // Keys of shard 0: the low bits vary, the high ones stay 0.
        let held: Vec<u64> = (1..=4).collect();
        for &key in &held {
            let refill = ask(slices.take(key, 3));
            slices.granted(key, refill, grant(3, 0));
        }
        for key in 100..10_000u64 {
            let refill = ask(slices.take(key, 1));
            slices.granted(key, refill, grant(1, 0));
        }
        let shard = slices.shards.lock(0);
        assert!(shard.len() <= 16, "{} keys in the shard", shard.len());
        for key in &held {
            assert_eq!(shard.get(key).map(|s| s.left), Some(2), "key {key} kept");
        }
    }
}
