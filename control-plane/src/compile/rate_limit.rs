//! Rate-limit policies into the limits every rule of a route enforces.
//!
//! A route's rules carry, in order: the limits of the policies that target the route's
//! namespace, then those of the policies that target the route itself. Policies of one
//! level are taken oldest first (creation time, then name), like routes; a policy's limits
//! keep their order, and `index` is a limit's position in its policy.

use std::collections::HashMap;

use pavilion_crds::policy::period;
use pavilion_crds::{FailureMode, Limit, RateLimitBackend, RateLimitPolicy, Resource};
use pavilion_proto as proto;

/// The compiled limits of accepted policies, by what they target.
#[derive(Default)]
pub(super) struct Limits {
    /// Namespace → limits of the policies targeting it, in order.
    namespaces: HashMap<String, Vec<proto::RateLimit>>,
    /// (namespace, route name) → limits of the policies targeting that route, in order.
    routes: HashMap<(String, String), Vec<proto::RateLimit>>,
}

impl Limits {
    /// Compiles accepted policies, whose targets the compiler has already checked (a
    /// policy targets its own namespace or a route of it).
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
            let list = match target.kind.as_str() {
                "Namespace" => limits.namespaces.entry(namespace).or_default(),
                "Route" => limits
                    .routes
                    .entry((namespace, target.name.clone()))
                    .or_default(),
                _ => continue,
            };
            list.extend(to_proto(policy));
        }
        limits
    }

    /// Every limit a rule of the route `namespace/name` must enforce, outermost first.
    pub(super) fn for_route(&self, namespace: &str, name: &str) -> Vec<proto::RateLimit> {
        let outer = self.namespaces.get(namespace).into_iter().flatten();
        let own = self
            .routes
            .get(&(namespace.to_owned(), name.to_owned()))
            .into_iter()
            .flatten();
        outer.chain(own).cloned().collect()
    }
}

fn namespace(policy: &RateLimitPolicy) -> &str {
    policy
        .metadata
        .namespace
        .as_deref()
        .unwrap_or(pavilion_crds::resource::DEFAULT_NAMESPACE)
}

fn to_proto(policy: &RateLimitPolicy) -> impl Iterator<Item = proto::RateLimit> + '_ {
    let spec = &policy.spec;
    let name = format!(
        "{}/{}",
        namespace(policy),
        policy.metadata.name.as_deref().unwrap_or_default()
    );
    let backend = match spec.backend {
        RateLimitBackend::Local => proto::RateLimitBackend::Local,
        RateLimitBackend::Redis => proto::RateLimitBackend::Redis,
    };
    let failure_mode = match spec.failure_mode {
        FailureMode::Local => proto::RateLimitFailureMode::Local,
        FailureMode::Open => proto::RateLimitFailureMode::Open,
        FailureMode::Closed => proto::RateLimitFailureMode::Closed,
    };
    spec.limits
        .iter()
        .zip(0u32..)
        .map(move |(limit, index)| proto::RateLimit {
            policy: name.clone(),
            index,
            key: limit.key.iter().map(|part| key_part(part)).collect(),
            requests: limit.requests,
            period_ms: period_ms(limit),
            burst: limit.burst.unwrap_or(limit.requests),
            backend: backend as i32,
            failure_mode: failure_mode as i32,
            headers: spec.headers,
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
