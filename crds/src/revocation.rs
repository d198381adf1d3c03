//! `TokenRevocation`: JWT ids (`jti`) refused on the routes of the resource's namespace
//! before their tokens expire, e.g. after a leak.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::status::ResourceStatus;
use crate::validate::{Errors, at};

/// Longest `jti` accepted; real ids are UUIDs or shorter.
pub const MAX_JTI_LEN: usize = 256;

/// Revoked JWT ids for the routes of this namespace.
// `printcolumn(...)` repeats its keys once per column, which clippy mistakes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "gateway.pavilion.dev",
    version = "v1alpha1",
    kind = "TokenRevocation",
    shortname = "revocation",
    namespaced,
    derive = "PartialEq",
    status = "ResourceStatus",
    category = "pavilion",
    doc = "JWT ids (jti) refused on the routes of this namespace."
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenRevocationSpec {
    /// The `jti` claims of the revoked tokens.
    pub jtis: Vec<String>,
}

impl TokenRevocationSpec {
    pub(crate) fn validate(&self, errors: &mut Errors) {
        if self.jtis.is_empty() {
            errors.add("spec.jtis", "at least one jti is required");
        }
        for (i, jti) in self.jtis.iter().enumerate() {
            let len = jti.chars().count();
            if len == 0 || len > MAX_JTI_LEN {
                errors.add(
                    at("spec.jtis", i),
                    format!("a jti is 1-{MAX_JTI_LEN} characters"),
                );
            }
        }
    }
}
