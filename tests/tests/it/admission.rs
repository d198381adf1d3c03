//! The validating admission webhook against a real kube-apiserver, which calls it over
//! HTTPS on loopback (`clientConfig.url`) with the registration of
//! `deploy/kubernetes/webhook.yaml`: `kubectl apply` of an invalid resource fails at once with
//! the field path and message, a policy whose target is missing passes with a warning, and
//! valid resources and deletions go through.

use std::time::Duration;

use base64::Engine;
use pavilion_control::{Config as ControlConfig, ControlPlane, GrpcTls, KubeOptions, SourceSpec};
use pavilion_tests::kube::{CONTROL_TOKEN, KubeApiServer, workspace_file};
use pavilion_tests::tls::TestCa;

fn route(name: &str, backend: &str) -> String {
    format!(
        "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: Route\nmetadata: {{ name: {name}, namespace: shop }}\nspec:\n  rules:\n    - backends: [{{ url: '{backend}' }}]\n"
    )
}

const ORPHAN_POLICY: &str = "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: CorsPolicy\nmetadata: { name: later, namespace: shop }\nspec:\n  targetRef: { kind: Route, name: not-yet }\n  allowOrigins: ['https://app.example.com']\n";

async fn controller(api: &KubeApiServer, dir: &std::path::Path, ca: &TestCa) -> ControlPlane {
    let (cert, key, _) = ca.leaf_pem(&["127.0.0.1", "pavilion-control.pavilion-system.svc"]);
    std::fs::write(dir.join("tls.crt"), cert).unwrap();
    std::fs::write(dir.join("tls.key"), key).unwrap();
    pavilion_control::start(ControlConfig {
        kube: KubeOptions {
            kubeconfig: Some(api.kubeconfig(CONTROL_TOKEN)),
            identity: "webhook".into(),
            lease_duration: Duration::from_secs(3),
            ..KubeOptions::default()
        },
        grpc_tls: Some(GrpcTls {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
            client_ca: None,
        }),
        webhook_listen: Some(([127, 0, 0, 1], 0).into()),
        ..ControlConfig::local(SourceSpec::Kube)
    })
    .await
    .expect("control plane starts")
}

/// The shipped registration, pointed at `url` and trusting `ca`.
fn registration(url: &str, ca: &TestCa) -> String {
    let text = std::fs::read_to_string(workspace_file("deploy/kubernetes/webhook.yaml")).unwrap();
    let mut config: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    let bundle = base64::engine::general_purpose::STANDARD.encode(ca.certificate_pem());
    config["webhooks"][0]["clientConfig"] =
        serde_yaml_ng::from_str(&format!("{{ url: '{url}', caBundle: '{bundle}' }}")).unwrap();
    serde_yaml_ng::to_string(&config).unwrap()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_of_an_invalid_resource_is_refused_with_the_field_path() {
    let api = KubeApiServer::start();
    api.kubectl_ok(&["create", "namespace", "shop"]);
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let cp = controller(&api, dir.path(), &ca).await;
    // An object that was invalid before the webhook existed.
    api.apply(&route("legacy", "ftp://x:1"));
    let url = format!("https://{}/validate", cp.webhook_addr.unwrap());
    api.apply(&registration(&url, &ca));

    // The API server picks the registration up within a moment; until then, applies pass.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let refused = loop {
        let output = api.try_apply(&route("broken", "ftp://x:1"), &[]);
        if !output.status.success() {
            break stderr(&output);
        }
        api.kubectl_ok(&["delete", "route", "broken", "-n", "shop"]);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the webhook never refused the route"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        refused.contains("admission webhook \"resources.gateway.pavilion.dev\" denied the request: spec.rules[0].backends[0].url: `ftp://x:1`"),
        "{refused}"
    );
    assert!(
        api.kubectl(&["get", "route", "broken", "-n", "shop"])
            .status
            .code()
            != Some(0),
        "nothing was stored"
    );

    // Valid resources pass; a policy whose target is not there yet passes with a warning.
    api.apply(&route("orders", "http://127.0.0.1:9000"));
    let output = api.try_apply(ORPHAN_POLICY, &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output)
            .contains("Warning: spec.targetRef: no accepted Route `not-yet` in namespace `shop`"),
        "{}",
        stderr(&output)
    );

    // An update is judged like a create, against the resources the control plane holds.
    let output = api.try_apply(&route("orders", "not-a-url"), &[]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("spec.rules[0].backends[0].url"),
        "{}",
        stderr(&output)
    );
    let stored = api.jsonpath(
        &["route", "orders", "-n", "shop"],
        "{.spec.rules[0].backends[0].url}",
    );
    assert_eq!(stored, "http://127.0.0.1:9000");

    // Only a new spec is judged: the invalid object can still be labelled and let go.
    api.kubectl_ok(&["label", "route", "legacy", "-n", "shop", "team=payments"]);
    let output = api.try_apply(&route("legacy", "ftp://y:1"), &[]);
    assert!(!output.status.success(), "a new spec is judged");
    api.kubectl_ok(&["delete", "route", "legacy", "-n", "shop"]);

    // Deletions always pass.
    api.kubectl_ok(&["delete", "route", "orders", "-n", "shop"]);
    cp.stop().await;
}
