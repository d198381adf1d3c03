//! Rate-limit policies into the limits, quotas and concurrency limit every rule of a route
//! enforces.
//!
//! A route's rules carry, in order: the limits of the policies that target the whole
//! gateway, then those of the policies that target the route's namespace, then those of
//! the policies that target the route itself. Policies of one level are taken oldest first
//! (creation time, namespace, then name), like routes; a policy's limits keep their order,
//! and `index` is a limit's position in its policy. Quotas are gathered the same way. A
//! rule has at most one concurrency limit: that of the most specific policy setting one
//! (the route's over the namespace's over the gateway's), the oldest among policies of the
//! same level.

use std::collections::HashMap;

use pavilion_crds::policy::period;
use pavilion_crds::{
    Concurrency, Consistency, FailureMode, Limit, Quota, RateLimitBackend, RateLimitPolicy,
    Resource,
};
use pavilion_proto as proto;

/// What the policies of one target (the gateway, a namespace or a route) contribute to its
/// rules.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Applied {
    /// Limits of the policies, in order.
    pub(super) rate_limits: Vec<proto::RateLimit>,
    /// Quotas of the policies, in the same order.
    pub(super) quotas: Vec<proto::Quota>,
    /// The concurrency limit of the oldest policy that sets one.
    pub(super) concurrency: Option<proto::ConcurrencyLimit>,
}

/// The compiled limits of accepted policies, by what they target.
#[derive(Default)]
pub(super) struct Limits {
    /// What the policies targeting the whole gateway apply, to every route.
    gateway: Applied,
    /// Namespace → what the policies targeting it apply.
    namespaces: HashMap<String, Applied>,
    /// (namespace, route name) → what the policies targeting that route apply.
    routes: HashMap<(String, String), Applied>,
}

impl Limits {
    /// Compiles accepted policies, whose targets the compiler has already checked (a
    /// policy targets its own namespace or a route of it, or — from the gateway namespace
    /// — the gateway).
    pub(super) fn new(policies: &[(&Resource, usize)]) -> Limits {
        let mut ordered: Vec<&RateLimitPolicy> = policies
            .iter()
            .filter_map(|(resource, _)| match resource {
                Resource::RateLimitPolicy(policy) => Some(policy),
                _ => None,
            })
            .collect();
        ordered.sort_by(|a, b| {
            let key = |p: &RateLimitPolicy| {
                (
                    p.metadata.creation_timestamp.clone(),
                    namespace(p).to_owned(),
                    p.metadata.name.clone(),
                )
            };
            key(a).cmp(&key(b))
        });
        let mut limits = Limits::default();
        for policy in ordered {
            let namespace = namespace(policy).to_owned();
            let target = &policy.spec.target_ref;
            let applied = match target.kind.as_str() {
                "Gateway" => &mut limits.gateway,
                "Namespace" => limits.namespaces.entry(namespace).or_default(),
                "Route" => limits
                    .routes
                    .entry((namespace, target.name.clone()))
                    .or_default(),
                _ => continue,
            };
            let name = policy_name(policy);
            applied.rate_limits.extend(to_proto(policy, &name));
            applied.quotas.extend(
                policy
                    .spec
                    .quotas
                    .iter()
                    .zip(0u32..)
                    .map(|(quota, index)| quota_to_proto(policy, &name, quota, index)),
            );
            if applied.concurrency.is_none() {
                applied.concurrency = policy
                    .spec
                    .concurrency
                    .as_ref()
                    .map(|c| concurrency_to_proto(&name, c));
            }
        }
        limits
    }

    /// Everything a rule of the route `namespace/name` must enforce: limits and quotas
    /// outermost first, and the most specific concurrency limit.
    pub(super) fn for_route(&self, namespace: &str, name: &str) -> Applied {
        let levels = [
            Some(&self.gateway),
            self.namespaces.get(namespace),
            // Looked up only when some policy targets a route: the key is two copies.
            (!self.routes.is_empty())
                .then(|| self.routes.get(&(namespace.to_owned(), name.to_owned())))
                .flatten(),
        ];
        let levels = || levels.iter().flatten();
        Applied {
            rate_limits: levels().flat_map(|a| &a.rate_limits).cloned().collect(),
            quotas: levels().flat_map(|a| &a.quotas).cloned().collect(),
            // The innermost level that sets one.
            concurrency: levels().rev().find_map(|a| a.concurrency.clone()),
        }
    }
}

fn namespace(policy: &RateLimitPolicy) -> &str {
    policy
        .metadata
        .namespace
        .as_deref()
        .unwrap_or(pavilion_crds::resource::DEFAULT_NAMESPACE)
}

/// "namespace/name", as the snapshot names a policy.
fn policy_name(policy: &RateLimitPolicy) -> String {
    format!(
        "{}/{}",
        namespace(policy),
        policy.metadata.name.as_deref().unwrap_or_default()
    )
}

fn backend(policy: &RateLimitPolicy) -> proto::RateLimitBackend {
    match policy.spec.backend {
        RateLimitBackend::Local => proto::RateLimitBackend::Local,
        RateLimitBackend::Redis => proto::RateLimitBackend::Redis,
    }
}

fn failure_mode(policy: &RateLimitPolicy) -> proto::RateLimitFailureMode {
    match policy.spec.failure_mode {
        FailureMode::Local => proto::RateLimitFailureMode::Local,
        FailureMode::Open => proto::RateLimitFailureMode::Open,
        FailureMode::Closed => proto::RateLimitFailureMode::Closed,
    }
}

fn to_proto<'a>(
    policy: &'a RateLimitPolicy,
    name: &'a str,
) -> impl Iterator<Item = proto::RateLimit> + 'a {
    let spec = &policy.spec;
    let backend = backend(policy);
    let failure_mode = failure_mode(policy);
    spec.limits
        .iter()
        .zip(0u32..)
        .map(move |(limit, index)| proto::RateLimit {
            policy: name.to_owned(),
            index,
            key: limit.key.iter().map(|part| key_part(part)).collect(),
            requests: limit.requests,
            period_ms: period_ms(limit),
            burst: limit.burst.unwrap_or(limit.requests),
            backend: backend as i32,
            failure_mode: failure_mode as i32,
            headers: spec.headers,
            approximate: spec.consistency == Consistency::Approximate,
            overrides: limit
                .overrides
                .iter()
                .map(|o| proto::RateLimitOverride {
                    value: o.value.clone(),
                    requests: o.requests,
                    burst: o.burst.unwrap_or(o.requests),
                })
                .collect(),
        })
}

/// The policy was validated: `per` is `day` or `month`, the time zone is known.
fn quota_to_proto(policy: &RateLimitPolicy, name: &str, quota: &Quota, index: u32) -> proto::Quota {
    let period = match quota.per.as_str() {
        "month" => proto::QuotaPeriod::Month,
        _ => proto::QuotaPeriod::Day,
    };
    proto::Quota {
        policy: name.to_owned(),
        index,
        key: quota.key.iter().map(|part| key_part(part)).collect(),
        requests: quota.requests.unwrap_or(0),
        bytes: quota.bytes.unwrap_or(0),
        period: period as i32,
        time_zone: quota.time_zone().to_owned(),
        backend: backend(policy) as i32,
        failure_mode: failure_mode(policy) as i32,
    }
}

/// Defaults filled in: `min` 1, `initial` 20 kept within `min..=max`, adaptive.
fn concurrency_to_proto(name: &str, concurrency: &Concurrency) -> proto::ConcurrencyLimit {
    proto::ConcurrencyLimit {
        policy: name.to_owned(),
        min: concurrency.min(),
        max: concurrency.max,
        initial: concurrency.initial(),
        adaptive: concurrency.adaptive,
    }
}

/// Header names are case-insensitive: the snapshot spells them lower-case. Claim names
/// are case-sensitive and stay as written.
fn key_part(part: &str) -> String {
    match part.strip_prefix("header:") {
        Some(name) => format!("header:{}", name.to_ascii_lowercase()),
        None => part.to_owned(),
    }
}

/// The limit's period in milliseconds; the policy was validated, so `per` parses.
fn period_ms(limit: &Limit) -> u64 {
    period(&limit.per).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
