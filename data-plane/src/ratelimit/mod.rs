//! Rate limiting: the limits of the `RateLimitPolicy`s attached to a rule, counted in
//! process (GCRA, sharded) or in Redis (one atomic script per request for all of a
//! request's Redis limits), with an explicit answer for when Redis is unreachable.
//!
//! Limits nest: every limit that applies must allow the request, and a request refused by
//! one is charged to none (in process; in Redis within one script).

pub mod concurrency;
pub mod gcra;
pub mod local;
pub mod quota;
pub mod redis;
pub mod slices;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use pavilion_proto as proto;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

use self::gcra::{Rate, Verdict};
use self::local::LocalCounters;
use self::quota::{Exhausted, Quota, QuotaCounters, RuleQuotas};
use self::redis::RedisCounters;
use self::slices::{Ask, Slices, Take};
use crate::auth::pattern::Pattern;
use crate::auth::{Identity, Principal};

pub static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
pub static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
pub static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

const NANOS: u64 = 1_000_000_000;

/// What a key is made of.
#[derive(Debug, Clone)]
enum KeyPart {
    ClientIp,
    ApiKey,
    Subject,
    Route,
    Claim(Box<str>),
    Header(HeaderName),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Local,
    Redis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureMode {
    Local,
    Open,
    Closed,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Local => "local",
            Backend::Redis => "redis",
        }
    }
}

impl From<proto::RateLimitBackend> for Backend {
    fn from(backend: proto::RateLimitBackend) -> Self {
        match backend {
            proto::RateLimitBackend::Local => Backend::Local,
            proto::RateLimitBackend::Redis => Backend::Redis,
        }
    }
}

impl From<proto::RateLimitFailureMode> for FailureMode {
    fn from(mode: proto::RateLimitFailureMode) -> Self {
        match mode {
            proto::RateLimitFailureMode::Local => FailureMode::Local,
            proto::RateLimitFailureMode::Open => FailureMode::Open,
            proto::RateLimitFailureMode::Closed => FailureMode::Closed,
        }
    }
}

impl FailureMode {
    /// As written in policies and metric labels.
    fn name(self) -> &'static str {
        match self {
            FailureMode::Local => "local",
            FailureMode::Open => "open",
            FailureMode::Closed => "closed",
        }
    }
}

/// One limit, ready to count.
#[derive(Debug)]
struct Limit {
    policy: Box<str>,
    index: u32,
    parts: Box<[KeyPart]>,
    requests: u64,
    period_ns: u64,
    rate: Rate,
    backend: Backend,
    /// Redis only: counted in slices ([`slices`]).
    approximate: bool,
    failure: FailureMode,
    headers: bool,
    overrides: Box<[(Pattern, u64, Rate)]>,
    /// "100 per 1m by clientIp", for messages.
    describe: Box<str>,
}

/// The limits of one rule, outermost first.
#[derive(Debug, Default)]
pub struct RuleLimits {
    limits: Box<[Limit]>,
}

impl RuleLimits {
    pub fn new(limits: &[proto::RateLimit]) -> Result<Self, String> {
        limits
            .iter()
            .map(Limit::new)
            .collect::<Result<_, _>>()
            .map(|limits| Self { limits })
    }

    pub fn is_empty(&self) -> bool {
        self.limits.is_empty()
    }

    /// The limits as `explain` shows them, with the key this request would count under
    /// and the rate that applies to it (an override's when one matches). Counts nothing.
    pub fn explain(&self, facts: &Facts<'_>) -> Vec<String> {
        self.limits
            .iter()
            .map(|limit| {
                let counted = count(limit, facts);
                let shown = part_values(&limit.parts, facts).join("|");
                format!(
                    "policy {} limit {}: {} ({}); this request counts as `{shown}` with {} allowed per window",
                    limit.policy,
                    limit.index,
                    limit.describe,
                    if limit.approximate {
                        "redis, approximate"
                    } else {
                        limit.backend.as_str()
                    },
                    counted.requests
                )
            })
            .collect()
    }

    /// Policies of these limits that count in Redis.
    pub fn redis_policies(&self) -> impl Iterator<Item = &str> {
        self.limits
            .iter()
            .filter(|l| l.backend == Backend::Redis)
            .map(|l| &*l.policy)
    }

    /// Splits into the limits whose keys need no identity — checked before authentication,
    /// so floods of bad credentials are limited too — and the rest, checked after it.
    pub fn split_by_identity(self) -> (Self, Self) {
        let (after, before): (Vec<Limit>, Vec<Limit>) =
            self.limits.into_vec().into_iter().partition(|limit| {
                limit
                    .parts
                    .iter()
                    .any(|p| matches!(p, KeyPart::ApiKey | KeyPart::Subject | KeyPart::Claim(_)))
            });
        (
            Self {
                limits: before.into(),
            },
            Self {
                limits: after.into(),
            },
        )
    }
}

impl Limit {
    fn new(limit: &proto::RateLimit) -> Result<Self, String> {
        let at = |e: String| format!("policy {} limit {}: {e}", limit.policy, limit.index);
        if limit.requests == 0 || limit.period_ms == 0 {
            return Err(at("needs requests and a period above 0".into()));
        }
        let parts = limit
            .key
            .iter()
            .map(|part| key_part(part))
            .collect::<Result<_, _>>()
            .map_err(at)?;
        let period_ns = limit.period_ms.saturating_mul(1_000_000);
        let rate = Rate::new(
            limit.requests,
            period_ns,
            if limit.burst == 0 {
                limit.requests
            } else {
                limit.burst
            },
        );
        let overrides = limit
            .overrides
            .iter()
            .map(|o| {
                let burst = if o.burst == 0 { o.requests } else { o.burst };
                (
                    Pattern::new(&o.value),
                    o.requests.max(1),
                    Rate::new(o.requests, period_ns, burst),
                )
            })
            .collect();
        let backend = Backend::from(limit.backend());
        let failure = FailureMode::from(limit.failure_mode());
        Ok(Self {
            describe: format!(
                "{} per {} by {}",
                limit.requests,
                period_text(limit.period_ms),
                limit.key.join("+")
            )
            .into(),
            policy: limit.policy.as_str().into(),
            index: limit.index,
            parts,
            requests: limit.requests,
            period_ns,
            rate,
            backend,
            approximate: backend == Backend::Redis && limit.approximate,
            failure,
            headers: limit.headers,
            overrides,
        })
    }
}

/// One part of a key as written in the snapshot.
fn key_part(part: &str) -> Result<KeyPart, String> {
    match part {
        "clientIp" => Ok(KeyPart::ClientIp),
        "apiKey" => Ok(KeyPart::ApiKey),
        "subject" => Ok(KeyPart::Subject),
        "route" => Ok(KeyPart::Route),
        other => {
            if let Some(claim) = other.strip_prefix("claim:") {
                Ok(KeyPart::Claim(claim.into()))
            } else if let Some(header) = other.strip_prefix("header:") {
                HeaderName::try_from(header)
                    .map(KeyPart::Header)
                    .map_err(|_| format!("`{header}` is not a header name"))
            } else {
                Err(format!("`{other}` is not a key part"))
            }
        }
    }
}

fn period_text(ms: u64) -> String {
    match ms {
        ms if ms % 86_400_000 == 0 => format!("{}d", ms / 86_400_000),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

/// The request facts keys are built from.
pub struct Facts<'a> {
    pub client_ip: Option<IpAddr>,
    pub identity: Option<&'a Identity>,
    pub headers: &'a HeaderMap,
    pub route: &'a str,
}

/// Why a request may not pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Over a limit: 429.
    Limited {
        message: String,
        retry_after_secs: u64,
        headers: Vec<(HeaderName, HeaderValue)>,
    },
    /// Redis unreachable under `failureMode: closed`: 503.
    Unavailable { message: String },
    /// A quota is used up for this window: 429 until it resets.
    QuotaExceeded {
        message: String,
        retry_after_secs: u64,
    },
}

/// Counters and metrics, shared by every worker.
pub struct Limiter {
    local: LocalCounters,
    /// Redis limits' shares while Redis is unreachable (`failureMode: local`).
    fallback: LocalCounters,
    redis: Option<Arc<RedisCounters>>,
    /// Data-plane replicas sharing Redis limits: the local fallback enforces 1/replicas.
    replicas: u64,
    hasher: foldhash::fast::FixedState,
    metrics: LimiterMetrics,
    quotas: QuotaCounters,
    /// Redis quotas' shares while Redis is unreachable (`failureMode: local`).
    quota_fallback: QuotaCounters,
    /// Slices reserved from Redis buckets (`consistency: approximate`).
    slices: Slices,
}

/// A slice is at most this share of a bucket divided among the replicas: with `--replicas`
/// right, an approximate limit admits at most `burst / SLICE_SHARE` over the exact one.
const SLICE_SHARE: u64 = 8;
/// Requests one reservation takes at most.
const MAX_SLICE: u64 = 1000;

/// Where a request's response bytes are added (quotas with a byte limit).
pub struct ByteTarget {
    store: Store,
    key: String,
    window: String,
    expire_at: i64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Store {
    Local,
    Fallback,
    Redis,
}

#[derive(Clone)]
pub struct LimiterMetrics {
    decisions: IntCounterVec,
    fallbacks: IntCounterVec,
    pub redis_latency: Histogram,
    pub redis_errors: IntCounter,
}

impl LimiterMetrics {
    pub fn new(registry: &Registry) -> Self {
        let decisions = IntCounterVec::new(
            Opts::new(
                "pavilion_rate_limit_decisions_total",
                "Rate-limit decisions by policy and result (allowed, limited).",
            ),
            &["policy", "result"],
        )
        .expect("valid metric");
        let fallbacks = IntCounterVec::new(
            Opts::new(
                "pavilion_rate_limit_fallbacks_total",
                "Requests decided by a Redis limit's failure mode (open, closed, local) because Redis was unreachable.",
            ),
            &["policy", "mode"],
        )
        .expect("valid metric");
        let redis_latency = Histogram::with_opts(
            HistogramOpts::new(
                "pavilion_rate_limit_redis_seconds",
                "Round trips to Redis for rate limits.",
            )
            .buckets(vec![
                0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
            ]),
        )
        .expect("valid metric");
        let redis_errors = IntCounter::new(
            "pavilion_rate_limit_redis_errors_total",
            "Rate-limit round trips to Redis that failed or timed out.",
        )
        .expect("valid metric");
        for collector in [
            Box::new(decisions.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(fallbacks.clone()),
            Box::new(redis_latency.clone()),
            Box::new(redis_errors.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        Self {
            decisions,
            fallbacks,
            redis_latency,
            redis_errors,
        }
    }
}

#[derive(Clone, Debug)]
pub struct LimiterOptions {
    /// Keys kept in process (per counter set); beyond, idle and then arbitrary keys go.
    pub max_keys: usize,
    /// Data-plane replicas sharing the Redis limits (for the local fallback's share).
    pub replicas: u64,
}

impl Default for LimiterOptions {
    fn default() -> Self {
        Self {
            max_keys: 1 << 18,
            replicas: 1,
        }
    }
}

/// A counted limit of one request.
struct Counted<'l> {
    limit: &'l Limit,
    key: String,
    rate: Rate,
    requests: u64,
}

impl Limiter {
    pub fn new(
        options: &LimiterOptions,
        redis: Option<Arc<RedisCounters>>,
        metrics: LimiterMetrics,
    ) -> Self {
        let redis_timeout = redis
            .as_ref()
            .map_or(DEFAULT_REDIS_TIMEOUT, |r| r.timeout());
        Self {
            local: LocalCounters::new(options.max_keys),
            fallback: LocalCounters::new(options.max_keys),
            replicas: options.replicas.max(1),
            hasher: foldhash::fast::FixedState::with_seed(fastrand::u64(..)),
            metrics,
            quotas: QuotaCounters::new(options.max_keys),
            quota_fallback: QuotaCounters::new(options.max_keys),
            slices: Slices::new(
                options.max_keys,
                u64::try_from(redis_timeout.as_nanos().saturating_mul(2)).unwrap_or(u64::MAX),
            ),
            redis,
        }
    }

    /// Requests one reservation asks for: a share of the bucket, so that all replicas'
    /// slices together stay a fraction of it.
    fn slice_size(&self, rate: Rate) -> u64 {
        (rate.burst / SLICE_SHARE.saturating_mul(self.replicas)).clamp(1, MAX_SLICE)
    }

    /// Counts the request in every quota of the rule unless one is used up (then none is
    /// charged). `Ok` names where the response's bytes go, for quotas with a byte limit.
    pub async fn take_quotas(
        &self,
        quotas: &RuleQuotas,
        facts: &Facts<'_>,
    ) -> Result<Vec<ByteTarget>, Refusal> {
        let now = chrono::Utc::now();
        let mut taken: Vec<(Store, String, String)> = Vec::new();
        let mut targets = Vec::new();
        let mut remote: Vec<(&Quota, String, String, i64)> = Vec::new();
        let outcome = (|| {
            for quota in quotas.iter() {
                let value = prefixed(&part_values(&quota.parts, facts));
                let (window, end) = quota::window(quota.period, quota.tz, now);
                let expire_at = end.timestamp() + 86_400;
                if quota.backend == Backend::Redis {
                    remote.push((
                        quota,
                        quota_redis_key(quota, &value, &window),
                        window,
                        expire_at,
                    ));
                    continue;
                }
                let key = quota_local_key(quota, &value);
                let current = quota::Window {
                    name: &window,
                    ends_at: end.timestamp(),
                };
                match self
                    .quotas
                    .take(&key, &current, quota.requests, quota.bytes)
                {
                    Ok(_) => {
                        if quota.bytes > 0 {
                            targets.push(ByteTarget {
                                store: Store::Local,
                                key: key.clone(),
                                window: window.clone(),
                                expire_at,
                            });
                        }
                        taken.push((Store::Local, key, window));
                    }
                    Err((why, _)) => return Err(self.quota_refusal(quota, why, end, now)),
                }
            }
            Ok(())
        })();
        if let Err(refusal) = outcome {
            self.untake(&taken);
            return Err(refusal);
        }
        if remote.is_empty() {
            return Ok(targets);
        }
        let answer = match &self.redis {
            Some(redis) if redis.is_connected() => {
                let checks: Vec<redis::QuotaCheck<'_>> = remote
                    .iter()
                    .map(|(q, key, _, expire_at)| redis::QuotaCheck {
                        key,
                        requests: q.requests,
                        bytes: q.bytes,
                        expire_at: *expire_at,
                    })
                    .collect();
                // Boxed, as in `round_trip`.
                let answer = Box::pin(redis.take_quotas(&checks)).await;
                if answer.is_err() {
                    self.metrics.redis_errors.inc();
                }
                answer
            }
            Some(_) => Err("Redis is unreachable".into()),
            None => Err("no --redis configured".into()),
        };
        match answer {
            Ok(rows) => {
                if let Some(((quota, _, _, _), (why, _, _))) =
                    remote.iter().zip(&rows).find(|(_, (why, _, _))| *why != 0)
                {
                    self.untake(&taken);
                    let why = if *why == 2 {
                        Exhausted::Bytes
                    } else {
                        Exhausted::Requests
                    };
                    let (_, end) = quota::window(quota.period, quota.tz, now);
                    return Err(self.quota_refusal(quota, why, end, now));
                }
                for (quota, key, window, expire_at) in remote {
                    if quota.bytes > 0 {
                        targets.push(ByteTarget {
                            store: Store::Redis,
                            key,
                            window,
                            expire_at,
                        });
                    }
                }
            }
            Err(error) => {
                for (quota, _, window, expire_at) in remote {
                    let mode = quota.failure.name();
                    self.metrics
                        .fallbacks
                        .with_label_values(&[&*quota.policy, mode])
                        .inc();
                    match quota.failure {
                        FailureMode::Open => {}
                        FailureMode::Closed => {
                            self.untake(&taken);
                            tracing::warn!(policy = &*quota.policy, %error, "Redis unreachable; refusing (quota, failureMode: closed)");
                            return Err(Refusal::Unavailable {
                                message: format!(
                                    "policy {}: the quota store is unavailable and the policy fails closed",
                                    quota.policy
                                ),
                            });
                        }
                        FailureMode::Local => {
                            let value = prefixed(&part_values(&quota.parts, facts));
                            let key = quota_local_key(quota, &value);
                            let share = |n: u64| if n == 0 { 0 } else { n.div_ceil(self.replicas) };
                            let current = quota::Window {
                                name: &window,
                                ends_at: expire_at - 86_400,
                            };
                            match self.quota_fallback.take(
                                &key,
                                &current,
                                share(quota.requests),
                                share(quota.bytes),
                            ) {
                                Ok(_) => {
                                    if quota.bytes > 0 {
                                        targets.push(ByteTarget {
                                            store: Store::Fallback,
                                            key: key.clone(),
                                            window: window.clone(),
                                            expire_at,
                                        });
                                    }
                                    taken.push((Store::Fallback, key, window));
                                }
                                Err((why, _)) => {
                                    self.untake(&taken);
                                    let (_, end) = quota::window(quota.period, quota.tz, now);
                                    return Err(self.quota_refusal(quota, why, end, now));
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(targets)
    }

    fn untake(&self, taken: &[(Store, String, String)]) {
        for (store, key, window) in taken {
            match store {
                Store::Local => self.quotas.untake(key, window),
                Store::Fallback => self.quota_fallback.untake(key, window),
                Store::Redis => {}
            }
        }
    }

    fn quota_refusal(
        &self,
        quota: &Quota,
        why: Exhausted,
        end: chrono::DateTime<chrono::Utc>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Refusal {
        self.metrics
            .decisions
            .with_label_values(&[&*quota.policy, "quota_exceeded"])
            .inc();
        let what = match why {
            Exhausted::Requests => "requests",
            Exhausted::Bytes => "bytes",
        };
        Refusal::QuotaExceeded {
            message: format!(
                "policy {}: quota {} ({}) has no {what} left; it resets at {}",
                quota.policy,
                quota.index,
                quota.describe(),
                end.with_timezone(&quota.tz).to_rfc3339()
            ),
            retry_after_secs: u64::try_from((end - now).num_seconds()).unwrap_or(0).max(1),
        }
    }

    /// Adds a response's bytes to the quotas that count them.
    pub fn add_bytes(&self, targets: &[ByteTarget], bytes: u64) {
        for target in targets {
            match target.store {
                Store::Local => self.quotas.add_bytes(&target.key, &target.window, bytes),
                Store::Fallback => {
                    self.quota_fallback
                        .add_bytes(&target.key, &target.window, bytes)
                }
                Store::Redis => {
                    // While Redis is down these bytes are not counted (documented).
                    if let Some(redis) = self.redis.clone().filter(|r| r.is_connected()) {
                        let (key, expire_at) = (target.key.clone(), target.expire_at);
                        tokio::spawn(async move {
                            if let Err(error) = redis.add_quota_bytes(&key, bytes, expire_at).await
                            {
                                tracing::warn!(%error, bytes, "cannot add response bytes to a quota in Redis");
                            }
                        });
                    }
                }
            }
        }
    }

    /// A quota's use in the current window by the key value `value` (the key parts joined
    /// by `|`, e.g. an API key id), for the admin API.
    pub async fn quota_usage(&self, quota: &Quota, shown: &str) -> serde_json::Value {
        let value = &prefixed(&shown.split('|').collect::<Vec<_>>());
        let now = chrono::Utc::now();
        let (window, end) = quota::window(quota.period, quota.tz, now);
        let used = match quota.backend {
            Backend::Local => Ok(self.quotas.usage(&quota_local_key(quota, value), &window)),
            Backend::Redis => match &self.redis {
                Some(redis) if redis.is_connected() => redis
                    .quota_usage(&quota_redis_key(quota, value, &window))
                    .await
                    .map(|(requests, bytes)| quota::Usage { requests, bytes }),
                Some(_) => Err("Redis is unreachable".into()),
                None => Err("no --redis configured".into()),
            },
        };
        let limit = |n: u64| {
            if n == 0 {
                serde_json::Value::Null
            } else {
                n.into()
            }
        };
        let mut body = serde_json::json!({
            "policy": &*quota.policy,
            "index": quota.index,
            "window": window,
            "timeZone": quota.tz.name(),
            "resetsAt": end.with_timezone(&quota.tz).to_rfc3339(),
            "limit": { "requests": limit(quota.requests), "bytes": limit(quota.bytes) },
        });
        match used {
            Ok(usage) => {
                body["used"] =
                    serde_json::json!({ "requests": usage.requests, "bytes": usage.bytes })
            }
            Err(error) => body["error"] = format!("usage unavailable: {error}").into(),
        }
        body
    }

    /// Whether Redis answers (for readiness); `None` without Redis.
    pub fn redis_reachable(&self) -> Option<bool> {
        self.redis.as_ref().map(|r| r.is_connected())
    }

    /// Counts the request against every limit of the rule. `Ok` carries the RateLimit
    /// headers for the response (empty when no limit wants them).
    pub async fn check(
        &self,
        limits: &RuleLimits,
        facts: &Facts<'_>,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, Refusal> {
        let counted: Vec<Counted<'_>> = limits
            .limits
            .iter()
            .map(|limit| count(limit, facts))
            .collect();
        let mut verdicts: Vec<Option<Verdict>> = vec![None; counted.len()];

        let local: Vec<usize> = (0..counted.len())
            .filter(|&i| counted[i].limit.backend == Backend::Local)
            .collect();
        let local_checks: Vec<(u64, Rate)> = local
            .iter()
            .map(|&i| (self.local_key(&counted[i], ""), counted[i].rate))
            .collect();
        if !local.is_empty() {
            for (&i, verdict) in local.iter().zip(self.local.check_all(&local_checks)) {
                verdicts[i] = Some(verdict);
            }
            if let Some(refusal) = self.refusal(&counted, &verdicts) {
                return Err(refusal);
            }
        }

        let sliced: Vec<usize> = (0..counted.len())
            .filter(|&i| counted[i].limit.approximate)
            .collect();
        let mut spent = Vec::new();
        if !sliced.is_empty() {
            let decided = self
                .take_slices(&counted, &sliced, &mut verdicts, &mut spent)
                .await;
            let refusal = decided.err().or_else(|| self.refusal(&counted, &verdicts));
            if let Some(refusal) = refusal {
                self.local.refund(&local_checks);
                self.slices.give_back(&spent);
                return Err(refusal);
            }
        }

        let remote: Vec<usize> = (0..counted.len())
            .filter(|&i| {
                counted[i].limit.backend == Backend::Redis && !counted[i].limit.approximate
            })
            .collect();
        if !remote.is_empty() {
            let checks: Vec<(String, Rate)> = remote
                .iter()
                .map(|&i| (redis_key(&counted[i]), counted[i].rate))
                .collect();
            let decided = match self.round_trip(|redis| redis.check_all(&checks)).await {
                Ok(remote_verdicts) => {
                    for (&i, verdict) in remote.iter().zip(remote_verdicts) {
                        verdicts[i] = Some(verdict);
                    }
                    Ok(())
                }
                Err(error) => self.fall_back(&counted, &remote, &mut verdicts, &error),
            };
            let refusal = decided.err().or_else(|| self.refusal(&counted, &verdicts));
            if let Some(refusal) = refusal {
                // Refused after all: what the local limits and slices charged is given back.
                self.local.refund(&local_checks);
                self.slices.give_back(&spent);
                return Err(refusal);
            }
        }
        let mut policies: Vec<&str> = counted.iter().map(|c| &*c.limit.policy).collect();
        policies.dedup();
        for policy in policies {
            self.metrics
                .decisions
                .with_label_values(&[policy, "allowed"])
                .inc();
        }
        Ok(rate_limit_headers(&counted, &verdicts))
    }

    /// One Redis round trip, timed; while Redis is known to be down it fails at once (the
    /// connection's own check brings Redis back within a second).
    async fn round_trip<'r, T, F>(
        &'r self,
        call: impl FnOnce(&'r RedisCounters) -> F,
    ) -> Result<T, String>
    where
        F: std::future::Future<Output = Result<T, String>>,
    {
        let redis = match &self.redis {
            Some(redis) if redis.is_connected() => redis,
            Some(_) => return Err("Redis is unreachable".into()),
            None => return Err("no --redis configured".into()),
        };
        let started = std::time::Instant::now();
        // Boxed: a round trip's future is large, and every request on a rule with a limit
        // moves this function's future whether or not it goes to Redis.
        let outcome = Box::pin(call(redis)).await;
        self.metrics
            .redis_latency
            .observe(started.elapsed().as_secs_f64());
        if outcome.is_err() {
            self.metrics.redis_errors.inc();
        }
        outcome
    }

    /// Approximate Redis limits: spends from the slices in hand and reserves, in one round
    /// trip, for the limits that have none. The slice keys this request spent from are
    /// pushed to `spent`, to be given back if a later limit refuses.
    async fn take_slices(
        &self,
        counted: &[Counted<'_>],
        sliced: &[usize],
        verdicts: &mut [Option<Verdict>],
        spent: &mut Vec<u64>,
    ) -> Result<(), Refusal> {
        let mut asks: Vec<(usize, u64, Ask)> = Vec::new();
        for &i in sliced {
            let key = self.slice_key(&counted[i]);
            match self.slices.take(key, self.slice_size(counted[i].rate)) {
                Take::Spent(verdict) => {
                    verdicts[i] = Some(verdict);
                    spent.push(key);
                }
                Take::Refused(verdict) => verdicts[i] = Some(verdict),
                Take::Ask(ask) => asks.push((i, key, ask)),
            }
        }
        // Refused already: no reservation for a request that will not pass.
        if asks.is_empty() || verdicts.iter().any(|v| v.is_some_and(|v| !v.allowed)) {
            for &(_, key, ask) in &asks {
                self.slices.abandon(key, ask);
            }
            return Ok(());
        }
        let reservations: Vec<(String, Rate, u64)> = asks
            .iter()
            .map(|&(i, _, ask)| (redis_key(&counted[i]), counted[i].rate, ask.want))
            .collect();
        match self.round_trip(|redis| redis.reserve(&reservations)).await {
            Ok(grants) => {
                for (&(i, key, ask), grant) in asks.iter().zip(grants) {
                    let verdict = self.slices.granted(key, ask, grant);
                    if verdict.allowed {
                        spent.push(key);
                    }
                    verdicts[i] = Some(verdict);
                }
                Ok(())
            }
            Err(error) => {
                for &(_, key, ask) in &asks {
                    self.slices.abandon(key, ask);
                }
                let indices: Vec<usize> = asks.iter().map(|&(i, _, _)| i).collect();
                self.fall_back(counted, &indices, verdicts, &error)
            }
        }
    }

    /// Redis is unreachable: each limit's failure mode decides.
    fn fall_back(
        &self,
        counted: &[Counted<'_>],
        remote: &[usize],
        verdicts: &mut [Option<Verdict>],
        error: &str,
    ) -> Result<(), Refusal> {
        let mut shares = Vec::new();
        for &i in remote {
            let limit = counted[i].limit;
            let mode = limit.failure.name();
            self.metrics
                .fallbacks
                .with_label_values(&[&*limit.policy, mode])
                .inc();
            match limit.failure {
                FailureMode::Open => {}
                FailureMode::Closed => {
                    tracing::warn!(policy = &*limit.policy, %error, "Redis unreachable; refusing (failureMode: closed)");
                    return Err(Refusal::Unavailable {
                        message: format!(
                            "policy {}: the rate limiter is unavailable and the policy fails closed",
                            limit.policy
                        ),
                    });
                }
                FailureMode::Local => shares.push(i),
            }
        }
        if !shares.is_empty() {
            tracing::debug!(%error, "Redis unreachable; enforcing local shares");
            let checks: Vec<(u64, Rate)> = shares
                .iter()
                .map(|&i| {
                    let c = &counted[i];
                    // An exact share of the rate; the bucket rounded up so it holds one request.
                    let period = c.limit.period_ns.saturating_mul(self.replicas);
                    let burst = c.rate.burst.div_ceil(self.replicas);
                    (
                        self.local_key(c, "fallback"),
                        Rate::new(c.requests, period, burst),
                    )
                })
                .collect();
            for (&i, verdict) in shares.iter().zip(self.fallback.check_all(&checks)) {
                verdicts[i] = Some(verdict);
            }
        }
        Ok(())
    }

    fn refusal(&self, counted: &[Counted<'_>], verdicts: &[Option<Verdict>]) -> Option<Refusal> {
        let refused: Vec<(&Counted<'_>, Verdict)> = counted
            .iter()
            .zip(verdicts)
            .filter_map(|(c, v)| v.filter(|v| !v.allowed).map(|v| (c, v)))
            .collect();
        let (first, _) = refused.first()?;
        self.metrics
            .decisions
            .with_label_values(&[&*first.limit.policy, "limited"])
            .inc();
        // The longest wait: retrying after a shorter one would only be refused again.
        let wait = refused
            .iter()
            .map(|(_, v)| v.retry_after_ns)
            .max()
            .unwrap_or(0);
        let retry_after_secs = wait.div_ceil(NANOS).max(1);
        let mut headers = rate_limit_headers(counted, verdicts);
        if let Ok(value) = HeaderValue::from_str(&retry_after_secs.to_string()) {
            headers.push((http::header::RETRY_AFTER, value));
        }
        Some(Refusal::Limited {
            message: format!(
                "policy {}: limit {} ({}) exceeded",
                first.limit.policy, first.limit.index, first.limit.describe
            ),
            retry_after_secs,
            headers,
        })
    }

    /// A slice's key names the rate too: after a change of the limit, neither requests
    /// held nor a kept refusal of the old one apply.
    fn slice_key(&self, counted: &Counted<'_>) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one((
            self.local_key(counted, "slice"),
            counted.rate.interval,
            counted.rate.burst,
        ))
    }

    fn local_key(&self, counted: &Counted<'_>, salt: &str) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one((
            &*counted.limit.policy,
            counted.limit.index,
            &counted.key,
            salt,
        ))
    }
}

/// The key's value and the rate that applies to it (an override's, or the limit's).
/// The values of `parts` for this request: `-` for what the request does not have.
fn part_values<'f>(parts: &[KeyPart], facts: &'f Facts<'_>) -> Vec<std::borrow::Cow<'f, str>> {
    parts
        .iter()
        .map(|part| -> std::borrow::Cow<'f, str> {
            match part {
                KeyPart::ClientIp => facts
                    .client_ip
                    .map_or("-".into(), |ip| ip.to_string().into()),
                KeyPart::ApiKey => match facts.identity.map(|i| &i.principal) {
                    Some(Principal::Key(id)) => (&**id).into(),
                    _ => "-".into(),
                },
                KeyPart::Subject => match facts.identity.map(|i| &i.principal) {
                    Some(Principal::Subject(subject)) => (&**subject).into(),
                    _ => "-".into(),
                },
                KeyPart::Route => facts.route.into(),
                KeyPart::Claim(name) => match facts.identity.and_then(|i| i.claims.get(&**name)) {
                    Some(serde_json::Value::String(text)) => text.as_str().into(),
                    Some(other) => other.to_string().into(),
                    None => "-".into(),
                },
                KeyPart::Header(name) => match facts.headers.get(name) {
                    Some(value) => String::from_utf8_lossy(value.as_bytes()),
                    None => "-".into(),
                },
            }
        })
        .collect()
}

fn count<'l>(limit: &'l Limit, facts: &Facts<'_>) -> Counted<'l> {
    // Each part length-prefixed, so no value can pass for two parts (`a|b` + `c` vs `a` +
    // `b|c`); overrides are matched against the parts joined by `|`, as documented.
    let values = part_values(&limit.parts, facts);
    let key = prefixed(&values);
    let (requests, rate) = if limit.overrides.is_empty() {
        (limit.requests, limit.rate)
    } else {
        let shown = values.join("|");
        limit
            .overrides
            .iter()
            .find(|(pattern, _, _)| pattern.matches(&shown))
            .map_or((limit.requests, limit.rate), |(_, requests, rate)| {
                (*requests, *rate)
            })
    };
    Counted {
        limit,
        key,
        rate,
        requests,
    }
}

/// A quota as `explain` shows it, with the key this request would count under. Counts
/// nothing.
pub fn explain_quota(quota: &Quota, facts: &Facts<'_>) -> String {
    let shown = part_values(&quota.parts, facts).join("|");
    let period = match quota.period {
        quota::Period::Day => "day",
        quota::Period::Month => "month",
    };
    let mut limits = Vec::new();
    if quota.requests > 0 {
        limits.push(format!("{} requests", quota.requests));
    }
    if quota.bytes > 0 {
        limits.push(format!("{} bytes", quota.bytes));
    }
    format!(
        "policy {} quota {}: {} per {period} ({}, {}); this request counts as `{shown}`",
        quota.policy,
        quota.index,
        limits.join(" and "),
        quota.tz.name(),
        quota.backend.as_str()
    )
}

/// Values length-prefixed (`3:abc5:de|fg`): no value can pose as two parts.
fn prefixed(values: &[impl AsRef<str>]) -> String {
    let mut key = String::new();
    for value in values {
        let value = value.as_ref();
        key.push_str(&value.len().to_string());
        key.push(':');
        key.push_str(value);
    }
    key
}

fn quota_local_key(quota: &Quota, value: &str) -> String {
    format!("{}\0{}\0{value}", quota.policy, quota.index)
}

/// `pavilion:quota:<digest>:<window>`: a digest, as for limits, and the window, so each
/// day or month has its own hash.
fn quota_redis_key(quota: &Quota, value: &str, window: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(quota.policy.as_bytes())
        .chain_update([0])
        .chain_update(quota.index.to_be_bytes())
        .chain_update(value.as_bytes())
        .finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("pavilion:quota:{hex}:{window}")
}

/// The Redis key of a counter: a digest, so client-chosen values (headers) cannot make
/// keys long or collide with other data.
fn redis_key(counted: &Counted<'_>) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(counted.limit.policy.as_bytes())
        .chain_update([0])
        .chain_update(counted.limit.index.to_be_bytes())
        .chain_update(counted.key.as_bytes())
        .finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("pavilion:rl:{hex}")
}

/// `RateLimit-*` for the tightest limit that wants headers (the fewest requests left).
fn rate_limit_headers(
    counted: &[Counted<'_>],
    verdicts: &[Option<Verdict>],
) -> Vec<(HeaderName, HeaderValue)> {
    let tightest = counted
        .iter()
        .zip(verdicts)
        .filter(|(c, _)| c.limit.headers)
        .filter_map(|(c, v)| v.map(|v| (c, v)))
        .min_by_key(|(_, v)| (v.allowed, v.remaining));
    let Some((c, verdict)) = tightest else {
        return Vec::new();
    };
    let number =
        |n: u64| HeaderValue::from_str(&n.to_string()).expect("digits are a valid header value");
    vec![
        (RATELIMIT_LIMIT.clone(), number(c.rate.burst)),
        (RATELIMIT_REMAINING.clone(), number(verdict.remaining)),
        (
            RATELIMIT_RESET.clone(),
            number(verdict.reset_ns.div_ceil(NANOS)),
        ),
    ]
}

/// How long a Redis round trip may take before the failure mode decides.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(100);
