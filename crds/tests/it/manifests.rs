//! The committed CRD manifests are exactly what the types generate, and they are valid
//! `apiextensions.k8s.io/v1` objects with what `kubectl` needs.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use pavilion_crds::manifests::{definitions, to_yaml};

#[test]
fn committed_manifests_match_the_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests");
    for (file, crd) in definitions() {
        let committed = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        assert!(
            committed == to_yaml(&crd),
            "crds/manifests/{file} is stale: run `cargo run -p pavilion-control -- crds --out-dir crds/manifests`"
        );
    }
}

#[test]
fn manifests_are_structural_v1_crds_with_status_and_columns() {
    for (file, crd) in definitions() {
        let parsed: CustomResourceDefinition = serde_yaml_ng::from_str(&to_yaml(&crd)).expect(file);
        assert_eq!(parsed.spec.group, "gateway.pavilion.dev");
        assert_eq!(parsed.spec.scope, "Namespaced");
        assert_eq!(parsed.spec.versions.len(), 1);
        let version = &parsed.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(version.served && version.storage);
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{file}: status subresource"
        );
        let columns: Vec<_> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        // Configuration shows its verdict; a rebalancing plan (made by the control plane,
        // not configuration) shows where it stands.
        let verdict = if file == "rebalanceplan.yaml" {
            "State"
        } else {
            "Accepted"
        };
        assert!(
            columns.contains(&verdict) && columns.contains(&"Age"),
            "{file}: {columns:?}"
        );
        let schema = version
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("schema");
        assert_eq!(
            schema.type_.as_deref(),
            Some("object"),
            "{file}: structural root"
        );
        let props = schema.properties.as_ref().expect("properties");
        assert!(
            props.contains_key("spec") && props.contains_key("status"),
            "{file}"
        );
    }
}

/// Kubernetes' structural-schema rule: every node states its type (or opts out with
/// int-or-string / preserve-unknown-fields), and `anyOf`/`oneOf` branches carry no types.
fn assert_structural(
    path: &str,
    schema: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps,
) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
        JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
    };
    let opted_out = schema.x_kubernetes_int_or_string == Some(true)
        || schema.x_kubernetes_preserve_unknown_fields == Some(true);
    assert!(schema.type_.is_some() || opted_out, "{path}: no type");
    for branch in schema.any_of.iter().chain(&schema.one_of).flatten() {
        assert!(branch.type_.is_none(), "{path}: typed anyOf/oneOf branch");
    }
    for (name, child) in schema.properties.iter().flatten() {
        assert_structural(&format!("{path}.{name}"), child);
    }
    match &schema.items {
        Some(JSONSchemaPropsOrArray::Schema(item)) => assert_structural(&format!("{path}[]"), item),
        Some(JSONSchemaPropsOrArray::Schemas(items)) => items
            .iter()
            .for_each(|i| assert_structural(&format!("{path}[]"), i)),
        None => {}
    }
    if let Some(JSONSchemaPropsOrBool::Schema(extra)) = &schema.additional_properties {
        assert_structural(&format!("{path}{{}}"), extra);
    }
}

#[test]
fn schemas_are_structural() {
    for (file, crd) in definitions() {
        let version = &crd.spec.versions[0];
        let schema = version
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .unwrap();
        assert_structural(file, schema);
    }
}
