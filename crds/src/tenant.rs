//! `TenantPlacement`: which shard serves a tenant, per service kind. Core fields only; the
//! tenancy work defines resolution and moves.

use std::collections::HashSet;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::status::ResourceStatus;
use crate::validate::{Errors, at, backend_url, dns_label};

/// Maps a tenant to a shard per service kind and names each shard's endpoints.
// `printcolumn(...)` repeats its keys once per column, which clippy mistakes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "gateway.pavilion.dev",
    version = "v1alpha1",
    kind = "TenantPlacement",
    namespaced,
    derive = "PartialEq",
    status = "ResourceStatus",
    category = "pavilion",
    doc = "Maps a tenant to a shard per service kind and names each shard's endpoints.",
    printcolumn(name = "Tenant", type_ = "string", json_path = ".spec.tenant"),
    printcolumn(name = "Revision", type_ = "integer", json_path = ".spec.revision"),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TenantPlacementSpec {
    pub tenant: String,
    /// Grows with every change of the placement.
    pub revision: u64,
    pub shards: Vec<Shard>,
    pub placements: Vec<Placement>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Shard {
    pub name: String,
    pub endpoints: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Placement {
    pub service: ServiceKind,
    pub shard: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ServiceKind {
    Aggregate,
    Projection,
    Runner,
}

impl TenantPlacementSpec {
    pub(crate) fn validate(&self, errors: &mut Errors) {
        errors.check("spec.tenant", dns_label(&self.tenant));
        let mut shard_names = HashSet::new();
        for (i, shard) in self.shards.iter().enumerate() {
            let field = at("spec.shards", i);
            errors.check(format!("{field}.name"), dns_label(&shard.name));
            if !shard_names.insert(shard.name.as_str()) {
                errors.add(
                    format!("{field}.name"),
                    format!("shard `{}` is defined twice", shard.name),
                );
            }
            if shard.endpoints.is_empty() {
                errors.add(
                    format!("{field}.endpoints"),
                    "at least one endpoint is required",
                );
            }
            for (j, endpoint) in shard.endpoints.iter().enumerate() {
                errors.check(at(&format!("{field}.endpoints"), j), backend_url(endpoint));
            }
        }
        let mut services = HashSet::new();
        for (i, placement) in self.placements.iter().enumerate() {
            let field = at("spec.placements", i);
            if !services.insert(placement.service) {
                errors.add(
                    format!("{field}.service"),
                    "each service kind is placed once",
                );
            }
            if !shard_names.contains(placement.shard.as_str()) {
                errors.add(
                    format!("{field}.shard"),
                    format!("no shard named `{}`", placement.shard),
                );
            }
        }
    }
}
