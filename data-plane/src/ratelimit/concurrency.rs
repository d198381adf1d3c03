//! A cap on requests in flight to a rule's upstream. Fixed, or adaptive after Netflix's
//! Gradient2: the limit follows the ratio of the upstream's unloaded latency (a slow
//! long-term average) to its current one (a fast average). When the upstream slows down
//! under load the ratio falls and so does the limit — excess requests are shed with 503
//! before the upstream falls over; when it recovers the limit grows back, by about the
//! square root of the limit per sample and only while the limit is actually used.
//!
//! The in-flight count is one atomic; the estimate is updated under `try_lock`, so a sample
//! that meets another update is skipped instead of waited for.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use pavilion_proto as proto;
use prometheus::IntGauge;

/// How much slower than unloaded the upstream may get before the limit shrinks.
const TOLERANCE: f64 = 1.5;
/// Weight of a new estimate against the current limit.
const SMOOTHING: f64 = 0.2;

pub struct Concurrency {
    pub policy: Box<str>,
    min: f64,
    max: f64,
    adaptive: bool,
    in_flight: AtomicU32,
    limit: AtomicU32,
    estimate: Mutex<Estimate>,
    gauge: IntGauge,
}

struct Estimate {
    limit: f64,
    /// Long-term average latency, over about the last 500 samples (ns): the baseline.
    long_rtt: f64,
    /// Recent latency (ns).
    short_rtt: f64,
    samples: u64,
}

/// A request's place among those in flight; given back when dropped.
pub struct Permit<'a> {
    owner: &'a Concurrency,
    started: Instant,
    /// In flight when this one started, itself included.
    in_flight: u32,
}

impl Concurrency {
    pub fn new(config: &proto::ConcurrencyLimit, gauge: IntGauge) -> Result<Self, String> {
        let (min, max) = (config.min.max(1), config.max);
        if max < min {
            return Err(format!(
                "policy {}: concurrency max {max} is below min {min}",
                config.policy
            ));
        }
        let initial = if config.adaptive {
            config.initial.clamp(min, max)
        } else {
            max
        };
        gauge.set(i64::from(initial));
        Ok(Self {
            policy: config.policy.as_str().into(),
            min: f64::from(min),
            max: f64::from(max),
            adaptive: config.adaptive,
            in_flight: AtomicU32::new(0),
            limit: AtomicU32::new(initial),
            estimate: Mutex::new(Estimate {
                limit: f64::from(initial),
                long_rtt: 0.0,
                short_rtt: 0.0,
                samples: 0,
            }),
            gauge,
        })
    }

    pub fn limit(&self) -> u32 {
        self.limit.load(Ordering::Relaxed)
    }

    /// Requests holding a place now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// A permit, or the limit that is full.
    pub fn acquire(&self) -> Result<Permit<'_>, u32> {
        let limit = self.limit.load(Ordering::Relaxed);
        let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
        if before >= limit {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(limit);
        }
        Ok(Permit {
            owner: self,
            started: Instant::now(),
            in_flight: before + 1,
        })
    }

    fn sample(&self, rtt_ns: f64, in_flight: u32, ok: bool) {
        if !self.adaptive {
            return;
        }
        let Ok(mut estimate) = self.estimate.try_lock() else {
            return;
        };
        let rtt = rtt_ns.max(1.0);
        if estimate.samples == 0 {
            estimate.long_rtt = rtt;
            estimate.short_rtt = rtt;
        }
        estimate.samples += 1;
        estimate.short_rtt = 0.9 * estimate.short_rtt + 0.1 * rtt;
        // Both are means (a low quantile against a mean would read any spread of latencies
        // as overload): the ratio is about 1 for an upstream whose latency does not change.
        estimate.long_rtt = 0.998 * estimate.long_rtt + 0.002 * rtt;
        // Like Gradient2: when latency returns to normal after a long overload, the baseline
        // (still full of slow samples) comes down faster than the long average would.
        if estimate.long_rtt / estimate.short_rtt > 2.0 {
            estimate.long_rtt *= 0.95;
        }
        let limit = estimate.limit;
        let target = if !ok {
            // Upstream errors and timeouts: back off multiplicatively.
            limit * 0.9
        } else {
            let gradient = (TOLERANCE * estimate.long_rtt / estimate.short_rtt).clamp(0.5, 1.0);
            let proposed = limit * gradient + limit.sqrt();
            // An idle route must not drift up to max: grow only while the limit is used.
            if f64::from(in_flight) < limit / 2.0 {
                proposed.min(limit)
            } else {
                proposed
            }
        };
        // Errors act at once; latency-driven changes are smoothed.
        let next = if ok {
            (1.0 - SMOOTHING) * limit + SMOOTHING * target
        } else {
            target
        };
        let next = next.clamp(self.min, self.max);
        estimate.limit = next;
        let whole = next as u32;
        self.limit.store(whole, Ordering::Relaxed);
        self.gauge.set(i64::from(whole));
    }
}

impl Permit<'_> {
    /// The upstream answered (`ok`: not a 5xx, not a timeout); feeds the estimate.
    pub fn finish(self, ok: bool) {
        let rtt = self.started.elapsed().as_nanos() as f64;
        self.owner.sample(rtt, self.in_flight, ok);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.owner.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(adaptive: bool) -> Concurrency {
        let config = proto::ConcurrencyLimit {
            policy: "p".into(),
            min: 2,
            max: 100,
            initial: 20,
            adaptive,
        };
        Concurrency::new(&config, IntGauge::new("g", "g").unwrap()).unwrap()
    }

    #[test]
    fn permits_are_counted_and_given_back() {
        let fixed = limit(false);
        assert_eq!(fixed.limit(), 100, "a fixed limit is max");
        let permits: Vec<_> = (0..100).map(|_| fixed.acquire().unwrap()).collect();
        assert_eq!(fixed.acquire().err(), Some(100));
        drop(permits);
        assert!(fixed.acquire().is_ok());
    }

    #[test]
    fn spread_out_but_steady_latency_does_not_shrink_the_limit() {
        let adaptive = limit(true);
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..5000 {
            // Fast 404s mixed with slow requests: 10% at 1 ms, the rest 5 to 60 ms.
            let rtt = if rng.u8(..10) == 0 {
                1_000_000.0
            } else {
                rng.f64().mul_add(55_000_000.0, 5_000_000.0)
            };
            adaptive.sample(rtt, adaptive.limit(), true);
        }
        assert!(
            adaptive.limit() >= 20,
            "the mix is normal for this upstream: {}",
            adaptive.limit()
        );
    }

    #[test]
    fn the_limit_falls_when_latency_rises_and_recovers_when_it_falls() {
        let adaptive = limit(true);
        for _ in 0..200 {
            adaptive.sample(1_000_000.0, 20, true);
        }
        let steady = adaptive.limit();
        assert!(
            steady >= 20,
            "a healthy, busy upstream lets the limit grow: {steady}"
        );
        for _ in 0..50 {
            adaptive.sample(20_000_000.0, steady, true);
        }
        let loaded = adaptive.limit();
        assert!(
            loaded < steady / 2,
            "20x latency shrinks the limit: {steady} -> {loaded}"
        );
        for _ in 0..400 {
            adaptive.sample(1_000_000.0, adaptive.limit(), true);
        }
        assert!(
            adaptive.limit() > loaded,
            "recovers: {loaded} -> {}",
            adaptive.limit()
        );
        for _ in 0..100 {
            adaptive.sample(1_000_000.0, 0, false);
        }
        assert_eq!(adaptive.limit(), 2, "errors drive it to min");
        // Idle: no growth beyond the current limit.
        let before = adaptive.limit();
        for _ in 0..100 {
            adaptive.sample(1_000_000.0, 0, true);
        }
        assert_eq!(adaptive.limit(), before);
    }
}
