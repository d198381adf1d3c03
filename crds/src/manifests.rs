//! CRD manifests, derived from the Rust types so they cannot drift from what the control
//! plane reads. `crds/manifests/*.yaml` is this output, checked by a test.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceColumnDefinition, CustomResourceDefinition, JSONSchemaProps,
    JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use kube::CustomResourceExt;

use crate::{
    ApiKey, CorsPolicy, RateLimitPolicy, RebalancePlan, Route, Shard, TenantPlacement,
    TokenRevocation,
};

/// Every CRD with the file name it is kept under in `crds/manifests/`.
pub fn definitions() -> Vec<(&'static str, CustomResourceDefinition)> {
    let mut definitions = vec![
        ("route.yaml", Route::crd()),
        ("shard.yaml", Shard::crd()),
        ("tenantplacement.yaml", TenantPlacement::crd()),
        ("ratelimitpolicy.yaml", RateLimitPolicy::crd()),
        ("corspolicy.yaml", CorsPolicy::crd()),
        ("apikey.yaml", ApiKey::crd()),
        ("tokenrevocation.yaml", TokenRevocation::crd()),
        ("rebalanceplan.yaml", RebalancePlan::crd()),
    ];
    for (_, crd) in &mut definitions {
        let with_conditions = crd.spec.names.kind != "RebalancePlan";
        for version in &mut crd.spec.versions {
            if with_conditions {
                version
                    .additional_printer_columns
                    .get_or_insert_with(Vec::new)
                    .extend(status_columns());
            } else {
                version
                    .additional_printer_columns
                    .get_or_insert_with(Vec::new)
                    .push(age_column());
            }
            if let Some(schema) = version
                .schema
                .as_mut()
                .and_then(|s| s.open_api_v3_schema.as_mut())
            {
                without_nullable(schema);
            }
        }
    }
    definitions
}

/// The columns every kind with conditions ends with in `kubectl get`: whether it is
/// accepted and programmed, the reason that matters most (`status.reason`: a refusal's, else
/// `AcceptedWithWarnings`, else why it is not programmed), and age.
fn status_columns() -> Vec<CustomResourceColumnDefinition> {
    let condition = |name: &str| CustomResourceColumnDefinition {
        name: name.to_owned(),
        type_: "string".to_owned(),
        json_path: format!(".status.conditions[?(@.type==\"{name}\")].status"),
        ..CustomResourceColumnDefinition::default()
    };
    vec![
        condition("Accepted"),
        condition("Programmed"),
        CustomResourceColumnDefinition {
            name: "Reason".to_owned(),
            type_: "string".to_owned(),
            json_path: ".status.reason".to_owned(),
            ..CustomResourceColumnDefinition::default()
        },
        age_column(),
    ]
}

fn age_column() -> CustomResourceColumnDefinition {
    CustomResourceColumnDefinition {
        name: "Age".to_owned(),
        type_: "date".to_owned(),
        json_path: ".metadata.creationTimestamp".to_owned(),
        ..CustomResourceColumnDefinition::default()
    }
}

/// Drops `nullable: true`, which the generator puts on every optional field: API servers
/// before 1.23 publish such fields without a type (`kubectl explain` shows `<>`), and
/// nothing needs an explicit null — an absent field means the same, and the API server
/// prunes nulls of non-nullable fields.
fn without_nullable(schema: &mut JSONSchemaProps) {
    schema.nullable = None;
    for property in schema.properties.iter_mut().flat_map(|p| p.values_mut()) {
        without_nullable(property);
    }
    match schema.items.as_mut() {
        Some(JSONSchemaPropsOrArray::Schema(items)) => without_nullable(items),
        Some(JSONSchemaPropsOrArray::Schemas(items)) => items.iter_mut().for_each(without_nullable),
        None => {}
    }
    if let Some(JSONSchemaPropsOrBool::Schema(additional)) = schema.additional_properties.as_mut() {
        without_nullable(additional);
    }
    for group in [&mut schema.all_of, &mut schema.any_of, &mut schema.one_of] {
        group.iter_mut().flatten().for_each(without_nullable);
    }
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
