//! Roles and rights, on rules with `authorize`: the principal must hold one of the rule's
//! roles in the request's tenant, and its roles there must grant every one of the rule's
//! rights — resolved through the identity service's role catalogue (a copy every replica
//! reloads within two seconds of a change). A platform admin passes both. The roles come
//! from the identity's membership alone (the token's tenants claim, or the API key).

use crate::deny::Deny;
use crate::identity::catalogue::Catalogue;
use crate::runtime::Rule;

use super::Context;

pub(super) fn check(
    rule: &Rule,
    context: &Context<'_>,
    catalogue: Option<&Catalogue>,
) -> Result<(), Deny> {
    if rule.roles.is_empty() && rule.rights.is_empty() {
        return Ok(());
    }
    let tenant = context.tenant.as_ref().and_then(|t| t.to_str().ok());
    let membership = context.identity.as_ref().map(|i| &i.membership);
    if let (Some(membership), Some(_)) = (membership, tenant)
        && membership.platform_admin
    {
        return Ok(());
    }
    if !rule.roles.is_empty() {
        let allowed = match (tenant, membership) {
            (Some(tenant), Some(membership)) => membership.holds_any(tenant, &rule.roles),
            _ => false,
        };
        if !allowed {
            let roles: Vec<&str> = rule.roles.iter().map(|r| &**r).collect();
            return Err(Deny::Forbidden {
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
            });
        }
    }
    if rule.rights.is_empty() {
        return Ok(());
    }
    let Some(catalogue) = catalogue else {
        return Err(Deny::Forbidden {
            code: "missing_rights",
            message: format!(
                "route {}: rights are resolved through the identity service's role catalogue, which this data plane does not run (--identity-store)",
                rule.route
            ),
        });
    };
    let (tenant, held) = match (tenant, membership) {
        (Some(tenant), Some(membership)) => (tenant, membership.roles_in(tenant)),
        _ => ("-", &[][..]),
    };
    let missing: Vec<&str> = rule
        .rights
        .iter()
        .filter(|right| !catalogue.grants(held, right))
        .map(|r| &**r)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let held: Vec<&str> = held.iter().map(|r| &**r).collect();
    Err(Deny::Forbidden {
        code: "missing_rights",
        message: format!(
            "route {}: the principal's roles in tenant {tenant} ({}) do not grant {}",
            rule.route,
            if held.is_empty() {
                "none".to_owned()
            } else {
                held.join(", ")
            },
            missing.join(", ")
        ),
    })
}
