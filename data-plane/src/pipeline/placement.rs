//! Which backend serves the request, decided before anything is spent on it (quotas,
//! concurrency): one of the rule's own healthy backends by its balancing policy, or — for a
//! `service` backend — one endpoint of the shard the request's tenant is placed on for that
//! service kind.

use http::Request;

use crate::deny::Deny;
use crate::placement::Lookup;
use crate::runtime::{Rule, Runtime, Upstream};
use crate::upstream::Target;
use crate::upstream::balance::{HashOn, Policy, hash_key};

use super::Context;

pub(super) fn pick<'r, B>(
    runtime: &'r Runtime,
    rule: &'r Rule,
    request: &Request<B>,
    context: &mut Context<'r>,
) -> Result<&'r Target, Deny> {
    let service = match &rule.upstream {
        Upstream::Backends(backends) => {
            if let Policy::ConsistentHash(on) = backends.policy() {
                context.hash_key = key(on, request, context);
            }
            let target =
                backends
                    .pick(context.hash_key, None)
                    .ok_or_else(|| Deny::NoHealthyUpstream {
                        route: rule.route.to_string(),
                    })?;
            context.target = Some(target);
            return Ok(target);
        }
        Upstream::Service(service) => *service,
    };
    let tenant = context
        .tenant
        .as_ref()
        .and_then(|t| t.to_str().ok())
        .ok_or_else(|| Deny::MissingTenant {
            route: rule.route.to_string(),
        })?;
    match runtime.placements.lookup(tenant, service) {
        Lookup::Shard(shard) => {
            let target =
                shard
                    .backends
                    .pick(None, None)
                    .ok_or_else(|| Deny::NoHealthyUpstream {
                        route: rule.route.to_string(),
                    })?;
            context.target = Some(target);
            Ok(target)
        }
        Lookup::NotPlaced => Err(Deny::NoPlacement {
            tenant: tenant.to_owned(),
            service: service.as_str(),
        }),
        Lookup::UnknownTenant => Err(Deny::UnknownTenant {
            tenant: tenant.to_owned(),
        }),
    }
}

/// The consistent hash of what the rule balances by; `None` when the request lacks it
/// (then any healthy backend will do).
fn key<B>(on: &HashOn, request: &Request<B>, context: &Context<'_>) -> Option<u64> {
    match on {
        HashOn::Header(name) => request.headers().get(name).map(|v| hash_key(v.as_bytes())),
        HashOn::Claim(name) => {
            let claim = context.identity.as_ref()?.claims.get(&**name)?;
            Some(match claim {
                serde_json::Value::String(text) => hash_key(text.as_bytes()),
                other => hash_key(other.to_string().as_bytes()),
            })
        }
        HashOn::Tenant => context.tenant.as_ref().map(|t| hash_key(t.as_bytes())),
        HashOn::ClientIp => {
            let ip = context.client_ip.unwrap_or(context.client.addr.ip());
            Some(match ip {
                std::net::IpAddr::V4(v4) => hash_key(&v4.octets()),
                std::net::IpAddr::V6(v6) => hash_key(&v6.octets()),
            })
        }
    }
}
