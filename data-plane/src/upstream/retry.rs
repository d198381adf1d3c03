//! Retries: which failures are worth another attempt, how long to wait before it, and the
//! budget that keeps retries from multiplying an outage — over a 10 s window they may add at
//! most a share of the rule's requests (or a small floor per second, so a quiet rule can
//! still retry).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use http::StatusCode;
use pavilion_proto as proto;

use super::endpoint::now_ms;

/// The window the budget is counted over.
const WINDOW_MS: u64 = 10_000;

pub struct RetryPolicy {
    /// Attempts after the first.
    pub attempts: u32,
    on_connect_failure: bool,
    on_reset: bool,
    on_statuses: Box<[u16]>,
    pub per_try_timeout: Option<Duration>,
    backoff: Duration,
    max_backoff: Duration,
    pub budget: Arc<Budget>,
}

/// What went wrong with an attempt, as far as retrying goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No connection: nothing was sent.
    Connect,
    /// The exchange broke, or the attempt's own timeout passed.
    Reset,
    Status(StatusCode),
}

impl RetryPolicy {
    pub fn new(retry: &proto::Retry, budget: Arc<Budget>) -> Self {
        Self {
            attempts: retry.attempts.min(5),
            on_connect_failure: retry.on_connect_failure,
            on_reset: retry.on_reset,
            on_statuses: retry
                .on_statuses
                .iter()
                .filter_map(|s| u16::try_from(*s).ok())
                .collect(),
            per_try_timeout: (retry.per_try_timeout_ms > 0)
                .then(|| Duration::from_millis(retry.per_try_timeout_ms)),
            backoff: Duration::from_millis(retry.backoff_ms.max(1)),
            max_backoff: Duration::from_millis(retry.max_backoff_ms.max(retry.backoff_ms).max(1)),
            budget,
        }
    }

    /// Whether the policy retries this failure. Safety (method, body) is the caller's.
    pub fn covers(&self, failure: Failure) -> bool {
        match failure {
            Failure::Connect => self.on_connect_failure,
            Failure::Reset => self.on_reset,
            Failure::Status(status) => self.on_statuses.contains(&status.as_u16()),
        }
    }

    /// The wait before retry number `retry` (0 for the first): exponential, full jitter.
    pub fn backoff(&self, retry: u32) -> Duration {
        let ceiling = self
            .backoff
            .saturating_mul(1u32.checked_shl(retry).unwrap_or(u32::MAX))
            .min(self.max_backoff);
        ceiling.mul_f64(fastrand::f64())
    }
}

/// Requests and retries of one rule in the current window, shared by every worker.
pub struct Budget {
    percent: u32,
    floor: u32,
    window_start: AtomicU64,
    requests: AtomicU32,
    retries: AtomicU32,
}

impl Budget {
    pub fn new(percent: u32, min_per_second: u32) -> Self {
        Self {
            percent: percent.clamp(1, 100),
            floor: min_per_second.saturating_mul((WINDOW_MS / 1000) as u32),
            window_start: AtomicU64::new(now_ms()),
            requests: AtomicU32::new(0),
            retries: AtomicU32::new(0),
        }
    }

    fn roll(&self) {
        let now = now_ms();
        let start = self.window_start.load(Ordering::Relaxed);
        if now >= start + WINDOW_MS
            && self
                .window_start
                .compare_exchange(start, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.requests.store(0, Ordering::Relaxed);
            self.retries.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a first attempt.
    pub fn request(&self) {
        self.roll();
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes a retry from the budget, if any is left.
    pub fn try_retry(&self) -> bool {
        self.roll();
        let requests = u64::from(self.requests.load(Ordering::Relaxed));
        let allowed = (requests * u64::from(self.percent) / 100).max(u64::from(self.floor));
        let taken = self.retries.fetch_add(1, Ordering::Relaxed);
        if u64::from(taken) < allowed {
            true
        } else {
            self.retries.fetch_sub(1, Ordering::Relaxed);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_a_share_of_requests_with_a_floor() {
        let budget = Budget::new(20, 0);
        for _ in 0..10 {
            budget.request();
        }
        assert!(budget.try_retry());
        assert!(budget.try_retry());
        assert!(!budget.try_retry(), "20 % of 10 is 2");
        let quiet = Budget::new(20, 1);
        assert_eq!(
            (0..20).filter(|_| quiet.try_retry()).count(),
            10,
            "1/s over 10 s"
        );
    }

    #[test]
    fn backoff_grows_to_its_ceiling_with_jitter() {
        let policy = RetryPolicy::new(
            &proto::Retry {
                attempts: 3,
                backoff_ms: 10,
                max_backoff_ms: 40,
                budget_percent: 20,
                ..Default::default()
            },
            Arc::new(Budget::new(20, 3)),
        );
        for _ in 0..100 {
            assert!(policy.backoff(0) <= Duration::from_millis(10));
            assert!(policy.backoff(5) <= Duration::from_millis(40));
        }
        assert!(
            !policy.covers(Failure::Connect),
            "nothing is retried unless named"
        );
    }
}
