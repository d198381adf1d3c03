//! Tenancy: `Shard` (one service kind's shard, its endpoints named once), `TenantPlacement`
//! (one small object per tenant naming its shard per service kind), the rule fields that
//! scope a rule to the request's tenant (`tenancy`, `authorize`), and membership as API keys
//! and tokens state it. Moving a tenant changes one placement; moving a shard one shard.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::status::ResourceStatus;
use crate::validate::{Errors, at, backend_url, dns_label, dns_subdomain};

/// The role that may act on every tenant.
pub const PLATFORM_ADMIN: &str = "platform-admin";

/// One service kind's shard: where the tenants placed on it are served.
// `printcolumn(...)` repeats its keys once per column, which clippy mistakes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "gateway.pavilion.dev",
    version = "v1alpha1",
    kind = "Shard",
    shortname = "shard",
    namespaced,
    derive = "PartialEq",
    status = "ResourceStatus",
    category = "pavilion",
    doc = "One service kind's shard: the endpoints that serve the tenants placed on it.",
    printcolumn(name = "Service", type_ = "string", json_path = ".spec.service"),
    printcolumn(name = "Endpoints", type_ = "string", json_path = ".spec.endpoints")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShardSpec {
    /// The service kind every endpoint serves.
    pub service: ServiceKind,
    /// `http://`, `https://` or `h2c://` host and port; requests are spread evenly.
    #[schemars(length(min = 1))]
    pub endpoints: Vec<String>,
    /// Path of the readiness gate polled on every endpoint before a tenant moves here
    /// (`GET {endpoint}{readiness}?tenant=T&service=S`); absent: the shard is always ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<String>,
}

/// Which shard serves a tenant, per service kind.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "gateway.pavilion.dev",
    version = "v1alpha1",
    kind = "TenantPlacement",
    shortname = "tp",
    namespaced,
    derive = "PartialEq",
    status = "ResourceStatus",
    category = "pavilion",
    doc = "Which shard of its namespace serves a tenant, per service kind.",
    printcolumn(name = "Tenant", type_ = "string", json_path = ".spec.tenant"),
    printcolumn(
        name = "Aggregate",
        type_ = "string",
        json_path = ".spec.shards.aggregate"
    ),
    printcolumn(
        name = "Projection",
        type_ = "string",
        json_path = ".spec.shards.projection"
    ),
    printcolumn(name = "Runner", type_ = "string", json_path = ".spec.shards.runner")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TenantPlacementSpec {
    /// The tenant id clients send in `x-tenant-id`: a DNS label (at most 63 characters).
    pub tenant: String,
    /// The `Shard` (of this namespace) per service kind; any subset.
    pub shards: PlacementShards,
}

/// A shard name per service kind.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlacementShards {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub projection: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner: Option<String>,
}

impl PlacementShards {
    /// `(kind, shard name)` for every kind that is placed, in kind order.
    pub fn iter(&self) -> impl Iterator<Item = (ServiceKind, &str)> {
        ServiceKind::ALL
            .into_iter()
            .filter_map(|kind| self.get(kind).map(|shard| (kind, shard)))
    }

    pub fn get(&self, kind: ServiceKind) -> Option<&str> {
        match kind {
            ServiceKind::Aggregate => self.aggregate.as_deref(),
            ServiceKind::Projection => self.projection.as_deref(),
            ServiceKind::Runner => self.runner.as_deref(),
        }
    }

    pub fn set(&mut self, kind: ServiceKind, shard: Option<String>) {
        match kind {
            ServiceKind::Aggregate => self.aggregate = shard,
            ServiceKind::Projection => self.projection = shard,
            ServiceKind::Runner => self.runner = shard,
        }
    }
}

/// The service kinds of the platform: commands, queries, background runners.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ServiceKind {
    Aggregate,
    Projection,
    Runner,
}

impl ServiceKind {
    pub const ALL: [ServiceKind; 3] = [
        ServiceKind::Aggregate,
        ServiceKind::Projection,
        ServiceKind::Runner,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ServiceKind::Aggregate => "aggregate",
            ServiceKind::Projection => "projection",
            ServiceKind::Runner => "runner",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl std::fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An optional service kind as Kubernetes wants it: a nullable string enum (schemars would
/// list `null` among the values, which a structural schema refuses).
pub fn optional_service_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "enum": ["aggregate", "projection", "runner"],
        "nullable": true,
        "description": "A service kind, resolved per request to the shard the request's tenant is placed on (TenantPlacement). Needs `tenancy` on the rule; the rule's only backend."
    })
}

/// `tenancy:` on a rule: the request names its tenant in `x-tenant-id`, and the principal
/// must be a member of it (or a platform admin).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tenancy {
    /// Whether a request without `x-tenant-id` is refused (400 `missing_tenant`); default
    /// true. With false, such a request passes without a tenant (and cannot reach a
    /// `service` backend).
    #[serde(default = "yes")]
    pub required: bool,
}

fn yes() -> bool {
    true
}

/// `authorize:` on a rule: the principal must hold one of `roles` in the request's tenant,
/// and its roles there must grant every one of `rights` (resolved through the identity
/// service's role catalogue); a platform admin passes both.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Authorize {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rights: Vec<String>,
}

/// Tenant membership as an API key states it: a list of tenant ids, or a map from tenant
/// id to the roles held there (a list means no roles).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(untagged)]
pub enum Membership {
    Tenants(Vec<String>),
    Roles(BTreeMap<String, Vec<String>>),
}

impl Membership {
    /// `(tenant, roles)` pairs.
    pub fn entries(&self) -> Vec<(&str, &[String])> {
        match self {
            Membership::Tenants(list) => list.iter().map(|t| (t.as_str(), &[][..])).collect(),
            Membership::Roles(map) => map.iter().map(|(t, r)| (t.as_str(), &r[..])).collect(),
        }
    }

    pub(crate) fn validate(&self, field: &str, errors: &mut Errors) {
        match self {
            Membership::Tenants(list) => {
                for (i, tenant) in list.iter().enumerate() {
                    errors.check(at(field, i), tenant_id(tenant));
                }
            }
            Membership::Roles(map) => {
                for (tenant, roles) in map {
                    let field = format!("{field}.{tenant}");
                    errors.check(&field, tenant_id(tenant));
                    for (i, role) in roles.iter().enumerate() {
                        errors.check(at(&field, i), role_name(role));
                        if role == PLATFORM_ADMIN {
                            errors.add(
                                at(&field, i),
                                "platform-admin is a platform role: list it under spec.roles",
                            );
                        }
                    }
                }
            }
        }
    }
}

// A list or a map: no structural schema type fits both, so the field keeps what it is given
// and the reader checks it.
impl JsonSchema for Membership {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Membership".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "Tenant ids, or a map from tenant id to the roles held there.",
            "x-kubernetes-preserve-unknown-fields": true
        })
    }
}

/// A tenant id: a DNS label, so it is safe in a header, a key and a log line.
pub fn tenant_id(tenant: &str) -> Result<(), String> {
    dns_label(tenant).map_err(|e| format!("tenant id {e}"))
}

/// A role name: 1-63 lower-case letters, digits and `-`.
pub fn role_name(role: &str) -> Result<(), String> {
    let ok = !role.is_empty()
        && role.len() <= 63
        && role
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{role}` must be 1-63 lower-case letters, digits or '-'"
        ))
    }
}

impl ShardSpec {
    pub(crate) fn validate(&self, errors: &mut Errors) {
        if self.endpoints.is_empty() {
            errors.add("spec.endpoints", "at least one endpoint is required");
        }
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            errors.check(at("spec.endpoints", i), backend_url(endpoint));
        }
        if let Some(path) = &self.readiness
            && (!path.starts_with('/')
                || path.contains(['?', '#'])
                || path.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            errors.add(
                "spec.readiness",
                format!("`{path}` must be a path starting with '/', without query"),
            );
        }
    }
}

impl TenantPlacementSpec {
    pub(crate) fn validate(&self, errors: &mut Errors) {
        errors.check("spec.tenant", tenant_id(&self.tenant));
        if self.shards.iter().next().is_none() {
            errors.add(
                "spec.shards",
                "place at least one service kind: aggregate, projection or runner",
            );
        }
        for (kind, shard) in self.shards.iter() {
            errors.check(format!("spec.shards.{kind}"), dns_subdomain(shard));
        }
    }
}

impl Authorize {
    pub(crate) fn validate(&self, field: &str, errors: &mut Errors) {
        if self.roles.is_empty() && self.rights.is_empty() {
            errors.add(format!("{field}.roles"), "name at least one role or right");
        }
        for (i, role) in self.roles.iter().enumerate() {
            errors.check(at(&format!("{field}.roles"), i), role_name(role));
        }
        for (i, right) in self.rights.iter().enumerate() {
            let valid = !right.is_empty()
                && right.len() <= 128
                && right.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
                });
            if !valid {
                errors.add(
                    at(&format!("{field}.rights"), i),
                    format!("`{right}`: rights are lower-case letters, digits, `.`, `_` and `-`"),
                );
            }
        }
    }
}
