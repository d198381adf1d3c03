//! The status every resource carries: Kubernetes-style conditions.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `Accepted`: the resource is valid and part of the compiled configuration.
pub const ACCEPTED: &str = "Accepted";
/// `Programmed`: every connected data plane runs a snapshot containing the resource.
pub const PROGRAMMED: &str = "Programmed";

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The reason that matters most, for `kubectl get`: a refusal's, else a warning
    /// (`AcceptedWithWarnings`), else why it is not programmed, else `Accepted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Route only: the policies that reach it, outermost first (Gateway, Namespace, Route;
    /// oldest first within a level).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<AttachedPolicy>,
    /// Policies only: the routes they reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reached: Option<Reached>,
    /// While this version is refused but the last accepted one serves: which
    /// (`generation 3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<String>,
    /// ApiKey only: the key id in force (`spec.keyId`, else `metadata.name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// The last version the control plane accepted, kept so that after a bad edit (and
    /// across a control-plane restart) that version goes on serving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_accepted: Option<LastAccepted>,
}

/// A policy that reaches a route.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttachedPolicy {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// What the policy targets: `Gateway`, `Namespace` or `Route`.
    pub target: String,
    /// Set when a part of the policy that only one policy can supply is supplied by another
    /// (`concurrency: RateLimitPolicy shop/strict`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overridden_by: Option<String>,
}

/// The routes a policy reached.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Reached {
    /// How many routes.
    pub count: u32,
    /// The first of them (`namespace/name`, sorted), at most 20.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
}

/// The last accepted version of a resource, as written into its status.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastAccepted {
    /// `metadata.generation` of that version, where the source counts generations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// When the control plane first accepted it (RFC 3339).
    pub accepted_at: String,
    /// The resource as YAML, without status: one string, so that a merge patch of the
    /// status replaces it whole rather than merging two versions' fields.
    pub document: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }
}
