//! Which backend serves the request, decided before anything is spent on it (quotas,
//! concurrency): one of the rule's own weighted backends, or — for a `service` backend —
//! one endpoint of the shard the request's tenant is placed on for that service kind.

use crate::deny::Deny;
use crate::placement::Lookup;
use crate::runtime::{Rule, Runtime, Upstream};
use crate::upstream::Target;

use super::Context;

pub(super) fn pick<'r>(
    runtime: &'r Runtime,
    rule: &'r Rule,
    context: &mut Context<'r>,
) -> Result<&'r Target, Deny> {
    let service = match &rule.upstream {
        Upstream::Backends(backends) => {
            let target = backends.pick();
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
            let target = shard.backends.pick();
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
