//! CRD manifests, derived from the Rust types so they cannot drift from what the control
//! plane reads. `crds/manifests/*.yaml` is this output, checked by a test.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::{
    ApiKey, CorsPolicy, RateLimitPolicy, RebalancePlan, Route, Shard, TenantPlacement,
    TokenRevocation,
};

/// Every CRD with the file name it is kept under in `crds/manifests/`.
pub fn definitions() -> Vec<(&'static str, CustomResourceDefinition)> {
    vec![
        ("route.yaml", Route::crd()),
        ("shard.yaml", Shard::crd()),
        ("tenantplacement.yaml", TenantPlacement::crd()),
        ("ratelimitpolicy.yaml", RateLimitPolicy::crd()),
        ("corspolicy.yaml", CorsPolicy::crd()),
        ("apikey.yaml", ApiKey::crd()),
        ("tokenrevocation.yaml", TokenRevocation::crd()),
        ("rebalanceplan.yaml", RebalancePlan::crd()),
    ]
}

/// One CRD as the YAML kept in `crds/manifests/`.
pub fn to_yaml(crd: &CustomResourceDefinition) -> String {
    let body = serde_yaml_ng::to_string(crd).expect("a CRD always serializes");
    format!(
        "# Generated from the Rust types by `pavilion-control crds --out-dir crds/manifests`; do not edit.\n{body}"
    )
}

/// All CRDs as one multi-document YAML stream, for `kubectl apply -f -`.
pub fn all_yaml() -> String {
    definitions()
        .iter()
        .map(|(_, crd)| to_yaml(crd))
        .collect::<Vec<_>>()
        .join("---\n")
}
