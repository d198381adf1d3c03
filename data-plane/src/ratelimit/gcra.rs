//! GCRA (the generic cell rate algorithm): a token bucket kept as one number per key, the
//! theoretical arrival time (TAT). With emission interval `T = period / requests` and a
//! bucket of `burst` requests, a request at `now` is allowed when
//! `max(tat, now) + T - now <= burst * T`, and then moves the TAT to `max(tat, now) + T`.
//! The same arithmetic runs in process and, as a Lua script, in Redis.

/// A limit in nanoseconds: emission interval and bucket size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Nanoseconds between two requests at the sustained rate.
    pub interval: u64,
    /// Requests allowed at once.
    pub burst: u64,
}

impl Rate {
    pub fn new(requests: u64, period_ns: u64, burst: u64) -> Self {
        let interval = (period_ns / requests.max(1)).max(1);
        // The bucket, interval × burst, must stay far from u64's end (2^62 ns is 146
        // years): a saturated TAT would never refill.
        let burst = burst.clamp(1, (1u64 << 62) / interval);
        Self { interval, burst }
    }

    /// The whole bucket, in nanoseconds.
    fn capacity(&self) -> u64 {
        self.interval.saturating_mul(self.burst)
    }
}

/// What one request's check decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// Requests left right after this one.
    pub remaining: u64,
    /// Nanoseconds until the bucket is full again.
    pub reset_ns: u64,
    /// When refused: nanoseconds until one request would be allowed.
    pub retry_after_ns: u64,
}

/// Checks one request against `tat` (0 = unknown key), returning the verdict and the TAT to
/// store when allowed.
pub fn check(rate: Rate, tat: u64, now: u64) -> (Verdict, Option<u64>) {
    // A TAT this rate could never have produced (beyond a full bucket) is a stricter limit's
    // from before a configuration change: it counts as this bucket with one request left,
    // not as the old debt — otherwise it would never be replaced.
    let ceiling = now.saturating_add(rate.capacity() - rate.interval);
    let base = if tat > now.saturating_add(rate.capacity()) {
        ceiling
    } else {
        tat.max(now)
    };
    let new_tat = base.saturating_add(rate.interval);
    let used = new_tat - now;
    if used > rate.capacity() {
        let retry_after_ns = used - rate.capacity();
        let verdict = Verdict {
            allowed: false,
            remaining: 0,
            reset_ns: base - now,
            retry_after_ns,
        };
        return (verdict, None);
    }
    let remaining = (rate.capacity() - used) / rate.interval;
    (
        Verdict {
            allowed: true,
            remaining,
            reset_ns: used,
            retry_after_ns: 0,
        },
        Some(new_tat),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    #[test]
    fn a_burst_then_the_sustained_rate() {
        // 10 per second, bucket of 3.
        let rate = Rate::new(10, SECOND, 3);
        let mut tat = 0;
        let now = 5 * SECOND;
        let mut allowed = 0;
        for _ in 0..10 {
            let (verdict, new_tat) = check(rate, tat, now);
            if let Some(new_tat) = new_tat {
                tat = new_tat;
                allowed += 1;
            }
            assert_eq!(verdict.allowed, new_tat.is_some());
        }
        assert_eq!(allowed, 3, "the burst, then nothing at the same instant");
        let (verdict, _) = check(rate, tat, now);
        assert_eq!(
            verdict.retry_after_ns,
            SECOND / 10,
            "one interval until the next"
        );
        // 100 ms later exactly one more.
        let (verdict, new_tat) = check(rate, tat, now + SECOND / 10);
        assert!(verdict.allowed);
        assert_eq!(verdict.remaining, 0);
        assert!(!check(rate, new_tat.unwrap(), now + SECOND / 10).0.allowed);
        // A full second later the bucket is full again.
        let (verdict, _) = check(rate, tat, now + 2 * SECOND);
        assert_eq!(verdict.remaining, 2);
    }

    #[test]
    fn a_raised_limit_applies_at_once_and_huge_buckets_do_not_overflow() {
        let strict = Rate::new(1, 86_400 * SECOND, 1);
        let (_, tat) = check(strict, 0, SECOND);
        let relaxed = Rate::new(100, SECOND, 100);
        let (verdict, new_tat) = check(relaxed, tat.unwrap(), SECOND);
        assert!(
            verdict.allowed,
            "the old day-long debt does not outlive the change"
        );
        assert_eq!(
            verdict.remaining, 0,
            "…but counts as a bucket with one request left"
        );
        let (verdict, _) = check(relaxed, new_tat.unwrap(), SECOND);
        assert_eq!(
            verdict.retry_after_ns,
            SECOND / 100,
            "then the new rate applies"
        );
        let huge = Rate::new(1, 86_400 * SECOND, 1_000_000_000);
        assert!(huge.capacity() <= 1 << 62);
        let mut tat = 0;
        for _ in 0..1000 {
            tat = check(huge, tat, SECOND).1.unwrap();
        }
        assert!(tat < u64::MAX / 2);
    }

    #[test]
    fn n_per_window_admits_exactly_n_at_once() {
        let rate = Rate::new(20, 3600 * SECOND, 20);
        let (mut tat, now) = (0, 1);
        let admitted = (0..100)
            .filter(|_| {
                let (_, new_tat) = check(rate, tat, now);
                new_tat.map(|t| tat = t).is_some()
            })
            .count();
        assert_eq!(admitted, 20);
    }
}
