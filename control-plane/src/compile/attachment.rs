//! Policy attachment status, Gateway API style: each route lists the policies that reach it
//! — outermost first, and for a part only one policy can supply (a concurrency limit), which
//! one won — and each policy says which routes it reached.

use std::collections::HashMap;

use pavilion_crds::status::{AttachedPolicy, Reached};
use pavilion_crds::{Resource, TargetRef};

use super::Report;
use super::rate_limit::Limits;

/// Routes a policy's status names; the count covers the rest.
const LISTED_ROUTES: usize = 20;

/// Fills in `attachments` of the accepted `routes` and `policies` (RateLimitPolicies and
/// CorsPolicies whose targets the compiler has checked).
pub(super) fn attach(
    routes: &[(&Resource, usize)],
    policies: &[(&Resource, usize)],
    limits: &Limits,
    reports: &mut [Report],
) {
    let mut ordered: Vec<(u8, &Resource, &TargetRef, usize)> = policies
        .iter()
        .filter_map(|(resource, i)| {
            let target = match resource {
                Resource::RateLimitPolicy(p) => &p.spec.target_ref,
                Resource::CorsPolicy(p) => &p.spec.target_ref,
                _ => return None,
            };
            let level = match target.kind.as_str() {
                "Gateway" => 0,
                "Namespace" => 1,
                _ => 2,
            };
            Some((level, *resource, target, *i))
        })
        .collect();
    ordered.sort_by_key(|(level, resource, _, i)| {
        let meta = resource.metadata();
        (*level, meta.creation_timestamp.clone(), resource.key(), *i)
    });
    let mut reached: HashMap<usize, Vec<String>> = HashMap::new();
    for (route, route_index) in routes {
        let (namespace, name) = (route.namespace(), route.name());
        let winner = limits
            .for_route(namespace, name)
            .concurrency
            .map(|c| c.policy);
        let mut attached = Vec::new();
        for (_, policy, target, policy_index) in &ordered {
            let reaches = match target.kind.as_str() {
                "Gateway" => true,
                "Namespace" => policy.namespace() == namespace,
                _ => policy.namespace() == namespace && target.name == name,
            };
            if !reaches {
                continue;
            }
            reached
                .entry(*policy_index)
                .or_default()
                .push(format!("{namespace}/{name}"));
            let own = format!("{}/{}", policy.namespace(), policy.name());
            let overridden_by = match policy {
                Resource::RateLimitPolicy(p) if p.spec.concurrency.is_some() => winner
                    .as_ref()
                    .filter(|w| **w != own)
                    .map(|w| format!("concurrency: RateLimitPolicy {w}")),
                _ => None,
            };
            attached.push(AttachedPolicy {
                kind: policy.kind().as_str().to_owned(),
                namespace: policy.namespace().to_owned(),
                name: policy.name().to_owned(),
                target: target.kind.clone(),
                overridden_by,
            });
        }
        reports[*route_index].attachments.policies = attached;
    }
    for (_, _, _, policy_index) in &ordered {
        let mut routes = reached.remove(policy_index).unwrap_or_default();
        routes.sort();
        let count = u32::try_from(routes.len()).unwrap_or(u32::MAX);
        routes.truncate(LISTED_ROUTES);
        reports[*policy_index].attachments.reached = Some(Reached { count, routes });
    }
}
