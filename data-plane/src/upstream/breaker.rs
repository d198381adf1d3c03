//! The circuit breaker of a rule's backend set, shared by every worker and carried across
//! snapshots. Closed: requests pass and their outcomes count — consecutive failures, and
//! (optionally) the failure share within a fixed window once it holds enough requests.
//! Open: every request is refused at once (503 `circuit_open`) until `openFor` has passed.
//! Half-open: a few probe requests pass; all succeeding closes the circuit, any failing
//! opens it again. Lock-free: the request path only touches atomics.

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

/// The half-open round (high 32 bits) and the probes let through in it (low 32 bits), in
/// one word: a probe of an earlier round can never touch a later round's count.
fn round_of(probes: u64) -> u32 {
    (probes >> 32) as u32
}
use std::time::Duration;

use pavilion_proto as proto;
use prometheus::{IntCounterVec, IntGauge};

use super::endpoint::now_ms;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

impl State {
    fn from_u8(value: u8) -> Self {
        match value {
            1 => State::Open,
            2 => State::HalfOpen,
            _ => State::Closed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

pub struct Breaker {
    pub route: Box<str>,
    pub rule: usize,
    consecutive_limit: u32,
    failure_percent: u32,
    min_requests: u32,
    window_ms: u64,
    open_for_ms: u64,
    probes: u32,
    state: AtomicU8,
    consecutive: AtomicU32,
    window_start: AtomicU64,
    window_requests: AtomicU32,
    window_failures: AtomicU32,
    opened_at: AtomicU64,
    /// See [`round_of`].
    probes_started: AtomicU64,
    probes_passed: AtomicU32,
    gauge: IntGauge,
    transitions: IntCounterVec,
}

/// A request let through, to be settled with its outcome.
pub struct Ticket<'b> {
    breaker: &'b Breaker,
    /// The half-open round this probe belongs to; `None` for a request of a closed circuit.
    probe: Option<u32>,
    settled: bool,
}

impl Ticket<'_> {
    pub fn settle(mut self, ok: bool) {
        self.settled = true;
        self.breaker.record(self.probe, ok);
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        // A probe whose request went away unanswered frees its place for another — in its
        // own round only.
        if let (Some(round), false) = (self.probe, self.settled) {
            let _ = self.breaker.probes_started.fetch_update(
                Ordering::AcqRel,
                Ordering::Acquire,
                |probes| (round_of(probes) == round && probes as u32 > 0).then(|| probes - 1),
            );
        }
    }
}

impl Breaker {
    pub fn new(
        route: &str,
        rule: usize,
        settings: &proto::CircuitBreaker,
        gauge: IntGauge,
        transitions: IntCounterVec,
    ) -> Self {
        gauge.set(0);
        Self {
            route: route.into(),
            rule,
            consecutive_limit: settings.consecutive_failures.max(1),
            failure_percent: settings.failure_percent.min(100),
            min_requests: settings.min_requests.max(1),
            window_ms: settings.window_ms.max(100),
            open_for_ms: settings.open_for_ms.max(1),
            probes: settings.half_open_probes.max(1),
            state: AtomicU8::new(State::Closed as u8),
            consecutive: AtomicU32::new(0),
            window_start: AtomicU64::new(now_ms()),
            window_requests: AtomicU32::new(0),
            window_failures: AtomicU32::new(0),
            opened_at: AtomicU64::new(0),
            probes_started: AtomicU64::new(0),
            probes_passed: AtomicU32::new(0),
            gauge,
            transitions,
        }
    }

    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Lets a request through, or says how long the circuit stays open.
    pub fn admit(&self) -> Result<Ticket<'_>, Duration> {
        let mut state = self.state();
        if state == State::Open {
            let reopens = self.opened_at.load(Ordering::Acquire) + self.open_for_ms;
            let now = now_ms();
            if now < reopens {
                return Err(Duration::from_millis(reopens - now));
            }
            if self.turn(State::Open, State::HalfOpen) {
                self.probes_passed.store(0, Ordering::Relaxed);
                // A new round with no probe yet.
                let _ = self.probes_started.fetch_update(
                    Ordering::AcqRel,
                    Ordering::Acquire,
                    |probes| Some(u64::from(round_of(probes).wrapping_add(1)) << 32),
                );
            }
            state = self.state();
        }
        match state {
            State::Closed => Ok(Ticket {
                breaker: self,
                probe: None,
                settled: false,
            }),
            State::HalfOpen => {
                let taken = self.probes_started.fetch_update(
                    Ordering::AcqRel,
                    Ordering::Acquire,
                    |probes| ((probes as u32) < self.probes).then(|| probes + 1),
                );
                match taken {
                    Ok(probes) => Ok(Ticket {
                        breaker: self,
                        probe: Some(round_of(probes)),
                        settled: false,
                    }),
                    Err(_) => Err(Duration::from_secs(1)),
                }
            }
            // Reopened by a failed probe meanwhile.
            State::Open => Err(Duration::from_millis(self.open_for_ms)),
        }
    }

    fn record(&self, probe: Option<u32>, ok: bool) {
        if let Some(round) = probe {
            // A probe of an earlier round says nothing about this one.
            if round_of(self.probes_started.load(Ordering::Acquire)) != round
                || self.state() != State::HalfOpen
            {
                return;
            }
            if !ok {
                self.open(State::HalfOpen);
            } else if self.probes_passed.fetch_add(1, Ordering::AcqRel) + 1 >= self.probes
                && self.turn(State::HalfOpen, State::Closed)
            {
                self.consecutive.store(0, Ordering::Relaxed);
                self.reset_window(now_ms());
            }
            return;
        }
        if self.state() != State::Closed {
            return;
        }
        let now = now_ms();
        let start = self.window_start.load(Ordering::Relaxed);
        if now >= start + self.window_ms
            && self
                .window_start
                .compare_exchange(start, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.reset_window(now);
        }
        let requests = self.window_requests.fetch_add(1, Ordering::Relaxed) + 1;
        if ok {
            self.consecutive.store(0, Ordering::Relaxed);
            return;
        }
        let failures = self.window_failures.fetch_add(1, Ordering::Relaxed) + 1;
        let consecutive = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        let by_share = self.failure_percent > 0
            && requests >= self.min_requests
            && u64::from(failures) * 100 >= u64::from(self.failure_percent) * u64::from(requests);
        if consecutive >= self.consecutive_limit || by_share {
            self.open(State::Closed);
        }
    }

    fn reset_window(&self, now: u64) {
        self.window_start.store(now, Ordering::Relaxed);
        self.window_requests.store(0, Ordering::Relaxed);
        self.window_failures.store(0, Ordering::Relaxed);
    }

    fn open(&self, from: State) {
        self.opened_at.store(now_ms(), Ordering::Release);
        if self.turn(from, State::Open) {
            tracing::warn!(
                route = &*self.route,
                rule = self.rule,
                open_for_ms = self.open_for_ms,
                "circuit opened: requests are refused until it half-opens"
            );
        }
    }

    /// Moves from `from` to `to` if still in `from`; counts and shows the change.
    fn turn(&self, from: State, to: State) -> bool {
        let turned = self
            .state
            .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if turned {
            self.gauge.set(to as i64);
            self.transitions
                .with_label_values(&[&*self.route, &self.rule.to_string(), to.as_str()])
                .inc();
            if to == State::Closed {
                tracing::info!(route = &*self.route, rule = self.rule, "circuit closed");
            }
        }
        turned
    }

    /// For `/admin/upstreams`.
    pub fn describe(&self) -> serde_json::Value {
        let state = self.state();
        let open_for = match state {
            State::Open => {
                (self.opened_at.load(Ordering::Acquire) + self.open_for_ms).saturating_sub(now_ms())
            }
            _ => 0,
        };
        serde_json::json!({
            "state": state.as_str(),
            "consecutiveFailures": self.consecutive.load(Ordering::Relaxed),
            "openForMs": open_for,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(settings: proto::CircuitBreaker) -> Breaker {
        Breaker::new(
            "ns/r",
            0,
            &settings,
            IntGauge::new("g", "g").unwrap(),
            IntCounterVec::new(prometheus::Opts::new("c", "c"), &["route", "rule", "state"])
                .unwrap(),
        )
    }

    #[test]
    fn opens_half_opens_and_closes() {
        let b = breaker(proto::CircuitBreaker {
            consecutive_failures: 2,
            open_for_ms: 50,
            half_open_probes: 2,
            ..Default::default()
        });
        b.admit().unwrap().settle(false);
        assert_eq!(b.state(), State::Closed);
        b.admit().unwrap().settle(false);
        assert_eq!(b.state(), State::Open);
        assert!(b.admit().is_err(), "open refuses");
        std::thread::sleep(Duration::from_millis(60));
        let first = b.admit().expect("half-open lets a probe through");
        assert_eq!(b.state(), State::HalfOpen);
        let second = b.admit().unwrap();
        assert!(b.admit().is_err(), "only two probes at once");
        drop(second);
        let second = b.admit().expect("a probe that went away frees its place");
        first.settle(true);
        assert_eq!(b.state(), State::HalfOpen);
        second.settle(true);
        assert_eq!(b.state(), State::Closed);
    }

    #[test]
    fn a_probe_of_an_earlier_round_never_wedges_the_next() {
        let b = breaker(proto::CircuitBreaker {
            consecutive_failures: 1,
            open_for_ms: 20,
            half_open_probes: 2,
            ..Default::default()
        });
        b.admit().unwrap().settle(false);
        std::thread::sleep(Duration::from_millis(25));
        let slow = b.admit().unwrap();
        b.admit().unwrap().settle(false);
        assert_eq!(b.state(), State::Open, "a failed probe reopened it");
        std::thread::sleep(Duration::from_millis(25));
        let first = b.admit().expect("a new round");
        drop(slow);
        let second = b
            .admit()
            .expect("the old probe did not free a place of this round");
        assert!(b.admit().is_err(), "still two probes per round");
        first.settle(true);
        second.settle(true);
        assert_eq!(b.state(), State::Closed);
    }

    #[test]
    fn a_failed_probe_reopens_and_a_failure_share_opens() {
        let b = breaker(proto::CircuitBreaker {
            consecutive_failures: 1000,
            failure_percent: 50,
            min_requests: 4,
            window_ms: 60_000,
            open_for_ms: 20,
            half_open_probes: 1,
        });
        for ok in [true, false, true] {
            b.admit().unwrap().settle(ok);
        }
        assert_eq!(
            b.state(),
            State::Closed,
            "three requests are below the minimum"
        );
        b.admit().unwrap().settle(false);
        assert_eq!(b.state(), State::Open, "2 of 4 failed");
        std::thread::sleep(Duration::from_millis(30));
        b.admit().unwrap().settle(false);
        assert_eq!(b.state(), State::Open, "the probe failed");
    }
}
