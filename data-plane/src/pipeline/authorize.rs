//! Roles, on rules with `authorize`: the principal must hold one of the rule's roles in the
//! request's tenant (a platform admin holds them all). The answer comes from the identity's
//! membership alone, so a later source of roles (the identity service's assignments) only
//! has to fill that in.

use crate::deny::Deny;
use crate::runtime::Rule;

use super::Context;

pub(super) fn check(rule: &Rule, context: &Context<'_>) -> Result<(), Deny> {
    if rule.roles.is_empty() {
        return Ok(());
    }
    let tenant = context.tenant.as_ref().and_then(|t| t.to_str().ok());
    let allowed = match (tenant, &context.identity) {
        (Some(tenant), Some(identity)) => identity.membership.holds_any(tenant, &rule.roles),
        _ => false,
    };
    if allowed {
        return Ok(());
    }
    let roles: Vec<&str> = rule.roles.iter().map(|r| &**r).collect();
    Err(Deny::Forbidden {
        code: "forbidden",
        message: match tenant {
            Some(tenant) => format!(
                "route {}: the principal holds none of the roles {} in tenant {tenant}",
                rule.route,
                roles.join(", ")
            ),
            None => format!(
                "route {}: one of the roles {} is needed, in a tenant named by x-tenant-id",
                rule.route,
                roles.join(", ")
            ),
        },
    })
}
