//! The request's tenant, on rules with `tenancy`: named once in `x-tenant-id`, a valid
//! tenant id, one the authenticated principal is a member of (or a platform admin), and
//! one some placement knows. Membership is checked before existence, so a stranger learns
//! nothing about which tenants exist.

use http::Request;

use crate::deny::Deny;
use crate::headers::X_TENANT_ID;
use crate::runtime::{Rule, Runtime};

use super::Context;

/// Longest tenant id (a DNS label).
const MAX_TENANT_LEN: usize = 63;

pub(super) fn check<B>(
    rule: &Rule,
    request: &Request<B>,
    runtime: &Runtime,
    context: &mut Context<'_>,
) -> Result<(), Deny> {
    let Some(tenancy) = &rule.tenancy else {
        return Ok(());
    };
    let mut values = request.headers().get_all(&X_TENANT_ID).iter();
    let value = match (values.next(), values.next()) {
        (None, _) if tenancy.required => {
            return Err(Deny::MissingTenant {
                route: rule.route.to_string(),
            });
        }
        (None, _) => return Ok(()),
        (Some(_), Some(_)) => {
            return Err(Deny::InvalidTenant {
                why: "appears more than once",
            });
        }
        (Some(value), None) => value,
    };
    let tenant = value
        .to_str()
        .ok()
        .filter(|t| is_tenant_id(t))
        .ok_or(Deny::InvalidTenant {
            why: "must be a DNS label: 1-63 lower-case letters, digits or '-', not starting or ending with '-'",
        })?;
    let member = context
        .identity
        .as_ref()
        .is_some_and(|identity| identity.membership.member_of(tenant));
    if !member {
        return Err(Deny::TenantForbidden {
            route: rule.route.to_string(),
            tenant: tenant.to_owned(),
        });
    }
    if !runtime.placements.contains(tenant) {
        return Err(Deny::UnknownTenant {
            tenant: tenant.to_owned(),
        });
    }
    context.tenant = Some(value.clone());
    Ok(())
}

/// A DNS label, as `TenantPlacement.spec.tenant` is validated.
pub fn is_tenant_id(text: &str) -> bool {
    let bytes = text.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_TENANT_LEN
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

#[cfg(test)]
mod tests {
    use super::is_tenant_id;

    #[test]
    fn tenant_ids_are_dns_labels() {
        for good in ["acme", "a", "tenant-42", &"a".repeat(63)] {
            assert!(is_tenant_id(good), "{good}");
        }
        for bad in [
            "",
            "Acme",
            "-acme",
            "acme-",
            "a_b",
            "a.b",
            "a b",
            &"a".repeat(64),
        ] {
            assert!(!is_tenant_id(bad), "{bad}");
        }
    }
}
