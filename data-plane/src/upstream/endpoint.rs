//! What is known about one backend of one rule, shared by every worker and carried across
//! snapshots: requests in flight (least-request balancing), the active checks' verdict, and
//! passive outlier ejection — consecutive failures take a backend out for a while, longer
//! each time, never more than a bounded share of the rule's backends at once.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use pavilion_proto as proto;
use prometheus::{IntCounter, IntGauge};

/// Milliseconds on a process-wide monotonic clock (never 0 after the first call).
pub(crate) fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// Longest ejection, as a multiple of the first.
const MAX_EJECTION_FACTOR: u32 = 16;

/// Active checks of a backend: what to ask, how often, and when the verdict turns.
#[derive(Clone, Debug, PartialEq)]
pub struct ActiveCheck {
    pub path: http::uri::PathAndQuery,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

impl ActiveCheck {
    pub fn new(check: &proto::ActiveCheck) -> Result<Self, String> {
        Ok(Self {
            path: check
                .path
                .parse()
                .map_err(|_| format!("health check path `{}` is not a path", check.path))?,
            interval: Duration::from_millis(check.interval_ms.max(100)),
            timeout: Duration::from_millis(check.timeout_ms.max(1)),
            healthy_threshold: check.healthy_threshold.max(1),
            unhealthy_threshold: check.unhealthy_threshold.max(1),
        })
    }
}

/// Passive outlier ejection settings of a rule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Passive {
    pub consecutive_failures: u32,
    pub ejection: Duration,
    pub max_ejected_percent: u32,
}

impl Passive {
    pub fn new(passive: &proto::PassiveCheck) -> Self {
        Self {
            consecutive_failures: passive.consecutive_failures.max(1),
            ejection: Duration::from_millis(passive.ejection_ms.max(1)),
            max_ejected_percent: passive.max_ejected_percent.clamp(1, 100),
        }
    }
}

pub struct Endpoint {
    /// `namespace/name` of the route and the backend URL, for logs.
    pub route: Box<str>,
    pub url: Box<str>,
    pub in_flight: AtomicU32,
    /// Failures since the last success (passive).
    failures: AtomicU32,
    /// Clock time the current ejection ends; 0: not ejected.
    ejected_until: AtomicU64,
    /// Ejections so far; each lasts longer. Forgotten after a long healthy spell.
    ejections: AtomicU32,
    /// The active checks' verdict (true until a check says otherwise).
    probed_healthy: AtomicBool,
    /// Checks in a row with the same result, counted towards a threshold.
    streak: AtomicU32,
    /// Set once a probe task runs for this endpoint.
    pub probing: AtomicBool,
    pub check: Option<ActiveCheck>,
    healthy_gauge: IntGauge,
    ejected_count: IntCounter,
}

impl Endpoint {
    pub fn new(
        route: &str,
        url: &str,
        check: Option<ActiveCheck>,
        healthy_gauge: IntGauge,
        ejected_count: IntCounter,
    ) -> Self {
        healthy_gauge.set(1);
        Self {
            route: route.into(),
            url: url.into(),
            in_flight: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            probed_healthy: AtomicBool::new(true),
            streak: AtomicU32::new(0),
            probing: AtomicBool::new(false),
            check,
            healthy_gauge,
            ejected_count,
        }
    }

    /// Whether requests may go here now: not ejected, and not failed by the active checks.
    pub fn is_healthy(&self, now: u64) -> bool {
        self.probed_healthy.load(Ordering::Relaxed) && !self.is_ejected(now)
    }

    pub fn is_ejected(&self, now: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now
    }

    /// Passive: a request's outcome. `siblings` are the rule's backends (this one
    /// included), for the bound on how many may be out at once.
    pub fn record(&self, ok: bool, passive: &Passive, siblings: &[Arc<Endpoint>]) {
        let now = now_ms();
        if ok {
            if self.failures.load(Ordering::Relaxed) != 0 {
                self.failures.store(0, Ordering::Relaxed);
            }
            let until = self.ejected_until.load(Ordering::Relaxed);
            let long = passive.ejection.as_millis() as u64 * u64::from(MAX_EJECTION_FACTOR);
            if until != 0 && now > until + long {
                // A long healthy spell: the next ejection starts short again.
                self.ejections.store(0, Ordering::Relaxed);
                self.ejected_until.store(0, Ordering::Relaxed);
            }
            return;
        }
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < passive.consecutive_failures || self.is_ejected(now) {
            return;
        }
        // Counted, not claimed: two workers failing two backends at the same instant can
        // both pass this check and exceed the share by one (a shared claim is future work).
        let ejected = siblings.iter().filter(|e| e.is_ejected(now)).count();
        let allowed = siblings.len() * passive.max_ejected_percent as usize / 100;
        if ejected + 1 > allowed {
            return;
        }
        self.failures.store(0, Ordering::Relaxed);
        let times = self.ejections.fetch_add(1, Ordering::Relaxed);
        let factor = 1u32
            .checked_shl(times)
            .unwrap_or(u32::MAX)
            .min(MAX_EJECTION_FACTOR);
        let length = passive.ejection * factor;
        self.ejected_until
            .store(now + length.as_millis() as u64, Ordering::Relaxed);
        self.ejected_count.inc();
        tracing::warn!(
            route = &*self.route,
            upstream = &*self.url,
            failures,
            ejected_for_ms = length.as_millis() as u64,
            "backend ejected after failing requests in a row"
        );
    }

    /// Active: one check's result; the verdict turns after the threshold in a row.
    pub fn probed(&self, ok: bool) {
        let Some(check) = &self.check else { return };
        let healthy = self.probed_healthy.load(Ordering::Relaxed);
        if ok == healthy {
            self.streak.store(0, Ordering::Relaxed);
            return;
        }
        let streak = self.streak.fetch_add(1, Ordering::Relaxed) + 1;
        let threshold = if ok {
            check.healthy_threshold
        } else {
            check.unhealthy_threshold
        };
        if streak >= threshold {
            self.streak.store(0, Ordering::Relaxed);
            self.probed_healthy.store(ok, Ordering::Relaxed);
            self.healthy_gauge.set(i64::from(ok));
            if ok {
                tracing::info!(
                    route = &*self.route,
                    upstream = &*self.url,
                    "backend passes its health checks again"
                );
            } else {
                tracing::warn!(
                    route = &*self.route,
                    upstream = &*self.url,
                    failed = streak,
                    "backend failed its health checks"
                );
            }
        }
    }

    /// For `/admin/upstreams`.
    pub fn describe(&self) -> serde_json::Value {
        let now = now_ms();
        let until = self.ejected_until.load(Ordering::Relaxed);
        serde_json::json!({
            "url": &*self.url,
            "healthy": self.is_healthy(now),
            "checksPass": self.probed_healthy.load(Ordering::Relaxed),
            "ejectedForMs": until.saturating_sub(now),
            "ejections": self.ejections.load(Ordering::Relaxed),
            "inFlight": self.in_flight.load(Ordering::Relaxed),
        })
    }
}

/// Counts a request in flight on an endpoint until dropped.
pub struct InFlight<'e>(&'e Endpoint);

impl<'e> InFlight<'e> {
    pub fn enter(endpoint: &'e Endpoint) -> Self {
        endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(endpoint)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(check: Option<ActiveCheck>) -> Endpoint {
        Endpoint::new(
            "ns/r",
            "http://a:1",
            check,
            IntGauge::new("g", "g").unwrap(),
            IntCounter::new("c", "c").unwrap(),
        )
    }

    const PASSIVE: Passive = Passive {
        consecutive_failures: 3,
        ejection: Duration::from_secs(60),
        max_ejected_percent: 50,
    };

    #[test]
    fn failures_in_a_row_eject_within_the_share() {
        let all: Vec<Arc<Endpoint>> = (0..4).map(|_| Arc::new(endpoint(None))).collect();
        let (a, b, c) = (&all[0], &all[1], &all[2]);
        a.record(false, &PASSIVE, &all);
        a.record(false, &PASSIVE, &all);
        a.record(true, &PASSIVE, &all);
        a.record(false, &PASSIVE, &all);
        a.record(false, &PASSIVE, &all);
        assert!(a.is_healthy(now_ms()), "a success resets the count");
        a.record(false, &PASSIVE, &all);
        assert!(!a.is_healthy(now_ms()), "three in a row eject");
        for _ in 0..3 {
            b.record(false, &PASSIVE, &all);
        }
        assert!(!b.is_healthy(now_ms()), "two of four is within 50 %");
        for _ in 0..10 {
            c.record(false, &PASSIVE, &all);
        }
        assert!(c.is_healthy(now_ms()), "a third of four would pass 50 %");
    }

    #[test]
    fn each_ejection_lasts_longer() {
        let passive = Passive {
            consecutive_failures: 1,
            ejection: Duration::from_millis(40),
            max_ejected_percent: 100,
        };
        let all = vec![Arc::new(endpoint(None))];
        let mut lengths = Vec::new();
        for _ in 0..3 {
            all[0].record(false, &passive, &all);
            let now = now_ms();
            lengths.push(all[0].ejected_until.load(Ordering::Relaxed) - now);
            std::thread::sleep(Duration::from_millis(
                all[0].ejected_until.load(Ordering::Relaxed) - now + 5,
            ));
            assert!(all[0].is_healthy(now_ms()), "back after the ejection");
        }
        assert!(
            lengths[0] <= 40 && lengths[1] > 40 && lengths[2] > 80,
            "{lengths:?}"
        );
    }

    #[test]
    fn checks_turn_the_verdict_after_their_thresholds() {
        let e = endpoint(Some(ActiveCheck {
            path: "/h".parse().unwrap(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        }));
        e.probed(false);
        e.probed(false);
        assert!(e.is_healthy(now_ms()));
        e.probed(false);
        assert!(!e.is_healthy(now_ms()));
        e.probed(true);
        assert!(!e.is_healthy(now_ms()));
        e.probed(true);
        assert!(e.is_healthy(now_ms()));
    }
}
