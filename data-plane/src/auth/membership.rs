//! Which tenants a principal belongs to, and the roles it holds in each: read once when it
//! authenticates (from a token's claims, or an API key's snapshot entry), then consulted by
//! the tenant and authorize phases. The decision functions only ask a [`Membership`], so
//! roles from another source (the identity service's assignments) can fill it later without
//! any change to rules.

use std::collections::HashMap;

use foldhash::fast::RandomState;
use pavilion_proto as proto;
use serde_json::{Map, Value};

/// The role that may act on every tenant.
pub const PLATFORM_ADMIN: &str = "platform-admin";

#[derive(Debug, Default)]
pub struct Membership {
    /// Holds `platform-admin`: a member of every tenant, with every role.
    pub platform_admin: bool,
    /// Tenant → the roles held there (empty: a member without roles).
    tenants: HashMap<Box<str>, Box<[Box<str>]>, RandomState>,
}

impl Membership {
    /// From a token: `tenants_claim` holds a list of tenant ids or a map from tenant id to
    /// roles; `roles_claim` a list of platform roles. Values of another shape count for
    /// nothing (a token cannot grant more by being odd).
    pub fn from_claims(
        claims: &Map<String, Value>,
        tenants_claim: &str,
        roles_claim: &str,
    ) -> Self {
        let strings = |value: &Value| -> Box<[Box<str>]> {
            match value {
                Value::Array(items) => items
                    .iter()
                    .filter_map(Value::as_str)
                    .map(Into::into)
                    .collect(),
                Value::String(one) => Box::new([one.as_str().into()]),
                _ => Box::new([]),
            }
        };
        let tenants = match claims.get(tenants_claim) {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .map(|t| (t.into(), Box::default()))
                .collect(),
            // `platform-admin` is a platform role: held in one tenant it means nothing, or a
            // tenant's own issuer could make someone a platform admin there.
            Some(Value::Object(map)) => map
                .iter()
                .map(|(t, roles)| {
                    let held = strings(roles)
                        .into_vec()
                        .into_iter()
                        .filter(|role| &**role != PLATFORM_ADMIN)
                        .collect();
                    (t.as_str().into(), held)
                })
                .collect(),
            _ => HashMap::default(),
        };
        let platform_admin = claims
            .get(roles_claim)
            .is_some_and(|roles| strings(roles).iter().any(|r| &**r == PLATFORM_ADMIN));
        Self {
            platform_admin,
            tenants,
        }
    }

    /// From an API key's snapshot entry.
    pub fn from_key(tenants: &[proto::TenantRoles], roles: &[String]) -> Self {
        Self {
            platform_admin: roles.iter().any(|r| r == PLATFORM_ADMIN),
            tenants: tenants
                .iter()
                .map(|t| {
                    (
                        t.tenant.as_str().into(),
                        t.roles
                            .iter()
                            .filter(|r| *r != PLATFORM_ADMIN)
                            .map(|r| r.as_str().into())
                            .collect(),
                    )
                })
                .collect(),
        }
    }

    /// Whether the principal may act for `tenant`.
    pub fn member_of(&self, tenant: &str) -> bool {
        self.platform_admin || self.tenants.contains_key(tenant)
    }

    /// The roles held in `tenant` (none when not a member).
    pub fn roles_in(&self, tenant: &str) -> &[Box<str>] {
        self.tenants.get(tenant).map_or(&[], |roles| roles)
    }

    /// Whether the principal holds one of `roles` in `tenant`.
    pub fn holds_any(&self, tenant: &str, roles: &[Box<str>]) -> bool {
        self.platform_admin
            || self
                .tenants
                .get(tenant)
                .is_some_and(|held| roles.iter().any(|role| held.contains(role)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn tokens_state_tenants_as_a_list_or_with_roles() {
        let roles: [Box<str>; 1] = ["tenant-admin".into()];
        let listed = Membership::from_claims(
            &claims(serde_json::json!({"tenants": ["acme", "globex"]})),
            "tenants",
            "roles",
        );
        assert!(listed.member_of("acme") && listed.member_of("globex"));
        assert!(!listed.member_of("initech"));
        assert!(!listed.holds_any("acme", &roles), "a list grants no role");

        let mapped = Membership::from_claims(
            &claims(serde_json::json!({"org": {"acme": ["tenant-admin"], "globex": []}})),
            "org",
            "roles",
        );
        assert!(mapped.holds_any("acme", &roles));
        assert!(mapped.member_of("globex") && !mapped.holds_any("globex", &roles));

        let admin = Membership::from_claims(
            &claims(serde_json::json!({"roles": ["platform-admin"]})),
            "tenants",
            "roles",
        );
        assert!(admin.member_of("anyone") && admin.holds_any("anyone", &roles));

        let smuggled = Membership::from_claims(
            &claims(serde_json::json!({"tenants": {"acme": ["platform-admin"]}})),
            "tenants",
            "roles",
        );
        assert!(
            !smuggled.holds_any("acme", &["platform-admin".into()]),
            "a tenant role is not the platform role"
        );
        let odd = Membership::from_claims(
            &claims(serde_json::json!({"tenants": "acme", "roles": {"platform-admin": true}})),
            "tenants",
            "roles",
        );
        assert!(!odd.member_of("acme") && !odd.platform_admin);
    }

    #[test]
    fn api_keys_state_tenants_and_platform_roles() {
        let key = Membership::from_key(
            &[proto::TenantRoles {
                tenant: "acme".into(),
                roles: vec!["tenant-member".into()],
            }],
            &[],
        );
        assert!(key.member_of("acme") && !key.member_of("globex"));
        assert!(key.holds_any("acme", &["tenant-admin".into(), "tenant-member".into()]));
        let admin = Membership::from_key(&[], &["platform-admin".into()]);
        assert!(admin.member_of("globex"));
    }
}
