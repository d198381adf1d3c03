//! A rule's backends and how a request picks one: weighted round robin (the default),
//! weighted random, least request (the less busy of two weighted draws) or consistent hash
//! (weighted rendezvous hashing on a header, claim, tenant or the client address: a
//! backend's departure moves only its own keys). Unhealthy backends — failed by active
//! checks or ejected by passive ones — are passed over; none left is 503
//! `no_healthy_upstream`.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::HeaderName;
use pavilion_proto as proto;

use super::endpoint::{ActiveCheck, Endpoint, Passive, now_ms};
use super::{Pooling, Protocol, Target};
use crate::carry::Carried;

/// What a consistent hash is computed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    Header(HeaderName),
    Claim(Box<str>),
    Tenant,
    ClientIp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Policy {
    RoundRobin,
    Random,
    LeastRequest,
    ConsistentHash(HashOn),
}

/// What the state of a rule's backends is kept under, and counted as.
pub struct Tracking<'a> {
    pub route: &'a str,
    pub rule: usize,
    pub carried: &'a Carried,
    pub metrics: &'a crate::metrics::Metrics,
}

pub struct Backends {
    targets: Box<[Target]>,
    /// Running sums of the weights: target `i` owns `[cumulative[i-1], cumulative[i])`.
    cumulative: Box<[u32]>,
    policy: Policy,
    next: AtomicUsize,
    /// Per target, shared with other workers and snapshots; empty when nothing needs it
    /// (no health checks, not least-request).
    endpoints: Box<[Arc<Endpoint>]>,
    passive: Option<Passive>,
}

impl Backends {
    /// Plain weighted-random backends (shard endpoints): no health, no state.
    /// `server_name` (empty: none) applies to the `https://` backends.
    pub fn new(backends: &[proto::Backend], server_name: &str) -> Result<Self, String> {
        Self::build(backends, server_name, false, Policy::Random)
    }

    /// `http2`: `https://` backends are offered h2 by ALPN.
    fn build(
        backends: &[proto::Backend],
        server_name: &str,
        http2: bool,
        policy: Policy,
    ) -> Result<Self, String> {
        if !server_name.is_empty() {
            rustls_pki_types::ServerName::try_from(server_name)
                .map_err(|_| format!("`{server_name}` is not a valid TLS server name"))?;
        }
        let mut targets = Vec::new();
        let mut cumulative = Vec::new();
        let mut total: u32 = 0;
        for backend in backends.iter().filter(|b| b.weight > 0) {
            let mut target = Target::parse(&backend.url)?;
            if target.protocol == Protocol::Https && !server_name.is_empty() {
                target.server_name = Some(server_name.into());
            }
            if target.protocol == Protocol::Https && http2 {
                target.protocol = Protocol::HttpsAlpn;
            }
            target.slot = targets.len();
            targets.push(target);
            total = total
                .checked_add(backend.weight)
                .ok_or("backend weights add up to more than 2^32")?;
            cumulative.push(total);
        }
        if targets.is_empty() {
            return Err("no backend with a weight above 0".into());
        }
        Ok(Self {
            targets: targets.into(),
            cumulative: cumulative.into(),
            policy,
            next: AtomicUsize::new(fastrand::usize(..)),
            endpoints: Box::new([]),
            passive: None,
        })
    }

    /// A rule's backends with its balancing policy and health checks; their state is taken
    /// over from the previous snapshot when the rule and its settings are the same.
    pub fn for_rule(rule: &proto::Rule, tracking: &Tracking<'_>) -> Result<Self, String> {
        let policy = match rule.load_balancer.as_ref() {
            None => Policy::RoundRobin,
            Some(lb) => match proto::BalancePolicy::try_from(lb.policy) {
                Ok(proto::BalancePolicy::RoundRobin) => Policy::RoundRobin,
                Ok(proto::BalancePolicy::Random) => Policy::Random,
                Ok(proto::BalancePolicy::LeastRequest) => Policy::LeastRequest,
                Ok(proto::BalancePolicy::ConsistentHash) => {
                    Policy::ConsistentHash(hash_on(&lb.hash_on)?)
                }
                Err(_) => return Err(format!("unknown balancing policy {}", lb.policy)),
            },
        };
        let mut backends = Self::build(
            &rule.backends,
            &rule.upstream_server_name,
            rule.upstream_http2,
            policy,
        )?;
        if let Some(connections) = &rule.connections {
            for target in backends.targets.iter_mut() {
                target.pooling = Some(Arc::new(pooling(connections, target, tracking)));
            }
        }
        let health = rule.health_check.as_ref();
        let check = health
            .and_then(|h| h.active.as_ref())
            .map(ActiveCheck::new)
            .transpose()?;
        backends.passive = health.and_then(|h| h.passive.as_ref()).map(Passive::new);
        if check.is_some() || backends.passive.is_some() || backends.policy == Policy::LeastRequest
        {
            let metrics = tracking.metrics;
            backends.endpoints = backends
                .targets
                .iter()
                .map(|target| {
                    let key = format!(
                        "{}#{}|{}|{:?}",
                        tracking.route, tracking.rule, target.url, check
                    );
                    tracking.carried.endpoints.get_or_make(key, || {
                        let labels = [tracking.route, &*target.url];
                        Endpoint::new(
                            tracking.route,
                            &target.url,
                            check.clone(),
                            metrics.upstream_healthy.with_label_values(&labels),
                            metrics.upstream_ejections.with_label_values(&labels),
                        )
                    })
                })
                .collect();
        }
        Ok(backends)
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    pub fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
    }

    pub fn endpoint(&self, target: &Target) -> Option<&Endpoint> {
        self.endpoints.get(target.slot).map(|e| &**e)
    }

    /// A backend for a request: `key` is the consistent hash's input (if the policy has
    /// one and the request carries it), `avoid` a backend that just failed (chosen again
    /// only when it is the only healthy one). `None`: no healthy backend.
    pub fn pick(&self, key: Option<u64>, avoid: Option<usize>) -> Option<&Target> {
        let count = self.targets.len();
        if count == 1 && self.endpoints.is_empty() {
            return Some(&self.targets[0]);
        }
        let now = now_ms();
        let healthy = |i: usize| self.endpoints.get(i).is_none_or(|e| e.is_healthy(now));
        let usable = |i: usize| Some(i) != avoid && healthy(i);
        let index = match (&self.policy, key) {
            (Policy::ConsistentHash(_), Some(key)) => self.rendezvous(key, &usable),
            (Policy::LeastRequest, _) => {
                // Two distinct candidates (when there are two): with two backends the
                // less busy one always wins.
                let a = self.scan(self.weighted(fastrand::u32(..self.total())), &usable);
                a.map(|a| {
                    let drawn = self.weighted(fastrand::u32(..self.total()));
                    let start = if drawn == a { a + 1 } else { drawn };
                    match self.scan(start, &|i| i != a && usable(i)) {
                        Some(b) if self.load(b) < self.load(a) => b,
                        _ => a,
                    }
                })
            }
            (Policy::RoundRobin, _) => {
                let ticket = self.next.fetch_add(1, Ordering::Relaxed) % self.total() as usize;
                self.scan(self.weighted(ticket as u32), &usable)
            }
            _ => self.scan(self.weighted(fastrand::u32(..self.total())), &usable),
        };
        let index = index.or_else(|| avoid.filter(|&a| healthy(a)))?;
        Some(&self.targets[index])
    }

    fn total(&self) -> u32 {
        self.cumulative[self.cumulative.len() - 1]
    }

    /// The target owning `ticket` in `[0, total)`.
    fn weighted(&self, ticket: u32) -> usize {
        self.cumulative.partition_point(|&sum| sum <= ticket)
    }

    fn weight(&self, index: usize) -> u32 {
        self.cumulative[index] - index.checked_sub(1).map_or(0, |i| self.cumulative[i])
    }

    /// The first usable target from `start` on (wrapping).
    fn scan(&self, start: usize, usable: &impl Fn(usize) -> bool) -> Option<usize> {
        let count = self.targets.len();
        (0..count)
            .map(|step| (start + step) % count)
            .find(|&i| usable(i))
    }

    /// In-flight requests per unit of weight (scaled to stay an integer).
    fn load(&self, index: usize) -> u64 {
        let in_flight = self.endpoints[index].in_flight.load(Ordering::Relaxed);
        (u64::from(in_flight) << 20) / u64::from(self.weight(index).max(1))
    }

    /// Weighted rendezvous hashing: each target scores `weight / -ln(u)` for a `u` drawn
    /// from the key and the target's URL; the highest usable score wins.
    fn rendezvous(&self, key: u64, usable: &impl Fn(usize) -> bool) -> Option<usize> {
        let hasher = foldhash::fast::FixedState::with_seed(0x7061_7669_6c69_6f6e);
        (0..self.targets.len())
            .filter(|&i| usable(i))
            .map(|i| {
                let draw = hasher.hash_one((key, &*self.targets[i].url));
                let unit = ((draw >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
                (i, f64::from(self.weight(i)) / -unit.ln())
            })
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(i, _)| i)
    }

    /// Passive health: a request's outcome on `target`.
    pub fn report(&self, target: &Target, ok: bool) {
        if let (Some(passive), Some(endpoint)) = (&self.passive, self.endpoints.get(target.slot)) {
            endpoint.record(ok, passive, &self.endpoints);
        }
    }
}

/// The consistent hash's input as written in the snapshot.
fn hash_on(text: &str) -> Result<HashOn, String> {
    match text.split_once(':') {
        Some(("header", name)) => HeaderName::try_from(name)
            .map(HashOn::Header)
            .map_err(|_| format!("hashOn: `{name}` is not a header name")),
        Some(("claim", name)) if !name.is_empty() => Ok(HashOn::Claim(name.into())),
        _ => match text {
            "tenant" => Ok(HashOn::Tenant),
            "clientIp" => Ok(HashOn::ClientIp),
            _ => Err(format!(
                "hashOn: `{text}` is not header:NAME, claim:NAME, tenant or clientIp"
            )),
        },
    }
}

/// Hashes a consistent-hash key (the same on every data plane).
pub fn hash_key(bytes: &[u8]) -> u64 {
    foldhash::fast::FixedState::with_seed(0x6b65_7973).hash_one(bytes)
}

/// A rule's `connections` for one backend: its places (if capped) are taken over from the
/// previous snapshot while the cap stays the same, so requests in flight keep counting.
fn pooling(connections: &proto::Connections, target: &Target, tracking: &Tracking<'_>) -> Pooling {
    let places = (connections.max > 0).then(|| {
        let key = format!(
            "{}#{}|{}|{}",
            tracking.route, tracking.rule, target.url, connections.max
        );
        tracking.carried.places.get_or_make(key, || {
            tokio::sync::Semaphore::new(connections.max as usize)
        })
    });
    Pooling {
        places,
        max: connections.max,
        queue_timeout: Duration::from_millis(connections.queue_timeout_ms),
        idle_timeout: (connections.idle_timeout_ms > 0)
            .then(|| Duration::from_millis(connections.idle_timeout_ms)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(list: &[(&str, u32)]) -> Result<Backends, String> {
        let list: Vec<_> = list
            .iter()
            .map(|(url, weight)| proto::Backend {
                url: url.to_string(),
                weight: *weight,
            })
            .collect();
        Backends::new(&list, "")
    }

    #[test]
    fn picks_follow_the_weights() {
        let b = backends(&[("http://a:1", 3), ("http://off:1", 0), ("http://b:1", 1)]).unwrap();
        let mut a = 0;
        for _ in 0..40_000 {
            match b.pick(None, None).unwrap().authority.host() {
                "a" => a += 1,
                "b" => {}
                other => panic!("picked {other}, which has weight 0"),
            }
        }
        assert!(
            (29_000..31_000).contains(&a),
            "a got {a} of 40000 for weight 3/4"
        );
        let mut rr = backends(&[("http://a:1", 2), ("http://b:1", 1)]).unwrap();
        rr.policy = Policy::RoundRobin;
        let hosts: Vec<_> = (0..300)
            .map(|_| rr.pick(None, None).unwrap().authority.host().to_owned())
            .collect();
        assert_eq!(
            hosts.iter().filter(|h| *h == "a").count(),
            200,
            "exactly 2:1 in turn"
        );
        assert_ne!(
            rr.pick(None, Some(0)).unwrap().slot,
            0,
            "a failed backend is avoided"
        );
    }

    #[test]
    fn consistent_hash_moves_only_the_departed_backends_keys() {
        let mut three =
            backends(&[("http://a:1", 1), ("http://b:1", 1), ("http://c:1", 1)]).unwrap();
        three.policy = Policy::ConsistentHash(HashOn::Tenant);
        let keys: Vec<u64> = (0..3000u32).map(|k| hash_key(&k.to_be_bytes())).collect();
        let before: Vec<usize> = keys
            .iter()
            .map(|&k| three.pick(Some(k), None).unwrap().slot)
            .collect();
        let again: Vec<usize> = keys
            .iter()
            .map(|&k| three.pick(Some(k), None).unwrap().slot)
            .collect();
        assert_eq!(before, again, "the same key, the same backend");
        for slot in 0..3 {
            let share = before.iter().filter(|&&s| s == slot).count();
            assert!(
                (800..1200).contains(&share),
                "backend {slot} got {share} of 3000"
            );
        }
        // Backend 1 unusable: only its keys move.
        for (key, old) in keys.iter().zip(&before) {
            let new = three.pick(Some(*key), Some(1)).unwrap().slot;
            if *old != 1 {
                assert_eq!(new, *old, "a key of a remaining backend stayed");
            } else {
                assert_ne!(new, 1);
            }
        }
    }

    #[test]
    fn refuses_bad_backends() {
        assert!(backends(&[]).is_err());
        assert!(backends(&[("http://a:1", 0)]).is_err());
        assert!(backends(&[("ftp://a:1", 1)]).is_err());
        assert!(backends(&[("http://u:p@a:1", 1)]).is_err());
        assert!(backends(&[("http://a:90000", 1)]).is_err());
        assert!(backends(&[("http://a:", 1)]).is_err());
        assert!(backends(&[("http://[::1]", 1)]).is_ok());
        assert!(backends(&[("http://a:1", u32::MAX), ("http://b:1", 1)]).is_err());
        let h2c = backends(&[("h2c://grpc:50051", 1)]).unwrap();
        assert_eq!(h2c.pick(None, None).unwrap().protocol, Protocol::H2c);
        assert_eq!(
            h2c.pick(None, None).unwrap().scheme,
            http::uri::Scheme::HTTP
        );
    }
}
