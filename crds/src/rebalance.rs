//! `RebalancePlan`: one move of one tenant's service kind to another shard, as a rebalancer
//! job drives it through the control-plane API. Not configuration — the control plane
//! creates and advances plans — but an object of its own, so `kubectl get rebalanceplans`
//! shows progress and a plan survives a control-plane failover half-way.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::tenant::ServiceKind;

/// A move of a tenant's service kind to a target shard, with every step recorded.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "gateway.pavilion.dev",
    version = "v1alpha1",
    kind = "RebalancePlan",
    shortname = "rbp",
    namespaced,
    derive = "PartialEq",
    status = "PlanStatus",
    category = "pavilion",
    doc = "A move of one tenant's service kind to another shard, driven through the control-plane API.",
    printcolumn(name = "Tenant", type_ = "string", json_path = ".spec.tenant"),
    printcolumn(name = "Service", type_ = "string", json_path = ".spec.service"),
    printcolumn(name = "From", type_ = "string", json_path = ".spec.fromShard"),
    printcolumn(name = "Target", type_ = "string", json_path = ".spec.targetShard"),
    printcolumn(name = "State", type_ = "string", json_path = ".status.state")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RebalancePlanSpec {
    pub tenant: String,
    pub service: ServiceKind,
    /// The `TenantPlacement` (of this namespace) the move rewrites.
    pub placement: String,
    /// The shard the tenant was on when the plan was made (where a rollback returns).
    pub from_shard: String,
    pub target_shard: String,
}

/// Where a plan stands, and how it got there.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlanStatus {
    #[serde(default)]
    pub state: PlanState,
    #[serde(default)]
    pub steps: Vec<PlanStep>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PlanState {
    /// Made, not applied: nothing has changed yet.
    #[default]
    Pending,
    /// Apply was accepted (the target's gate said ready): the placement is being rewritten.
    Applying,
    /// The placement names the target: waiting for every data plane to run it.
    WaitingForDataPlanes,
    /// Every data plane serves the tenant from the target shard.
    Completed,
    /// The placement is being rewritten back to the shard the plan started from.
    RollingBack,
    /// Every data plane serves the tenant from its original shard again.
    RolledBack,
    /// The move could not be carried out (the message of the last step says why).
    Failed,
}

impl PlanState {
    /// Whether the control plane still has steps to take (or to wait for) on its own.
    pub fn is_under_way(self) -> bool {
        matches!(
            self,
            PlanState::Applying | PlanState::WaitingForDataPlanes | PlanState::RollingBack
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PlanState::Pending => "Pending",
            PlanState::Applying => "Applying",
            PlanState::WaitingForDataPlanes => "WaitingForDataPlanes",
            PlanState::Completed => "Completed",
            PlanState::RollingBack => "RollingBack",
            PlanState::RolledBack => "RolledBack",
            PlanState::Failed => "Failed",
        }
    }
}

/// One transition, with when and why.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlanStep {
    /// RFC 3339.
    pub time: String,
    pub state: PlanState,
    pub message: String,
}
