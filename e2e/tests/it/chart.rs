//! The Helm chart, for real: linted and rendered by the Helm SDK and every object checked
//! against the Kubernetes schemas (charts/tests/chart.py), installed into a real
//! kube-apiserver, and then the installed configuration run: the control plane with the
//! Deployment's own arguments and its ServiceAccount's token (so the chart's RBAC is what
//! it gets), and data planes with the data-plane Deployment's environment and the Secret the
//! control plane made. There is no kubelet: no pod runs, so this test starts the containers'
//! commands itself, with the addresses and mounted paths moved to loopback and temp dirs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use pavilion_tests::client::HttpClient;
use pavilion_tests::kube::KubeApiServer;
use pavilion_tests::process::{Child, binary};
use pavilion_tests::{eventually, free_port};
use serde_json::Value;

const NAMESPACE: &str = "pavilion-system";
const RELEASE: &str = "gw";
const PATIENCE: Duration = Duration::from_secs(20);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn python(args: &[&str]) -> Value {
    let output = std::process::Command::new("python3")
        .arg(workspace().join("charts/tests/chart.py"))
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "chart.py {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("chart.py prints JSON")
}

#[test]
fn the_chart_lints_renders_valid_objects_and_ships_the_current_crds() {
    let report = python(&["check"]);
    let kinds: Vec<&str> = report["kinds"]["default"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    for kind in [
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Role",
        "ClusterRole",
        "ServiceAccount",
    ] {
        assert!(kinds.contains(&kind), "no {kind} in {kinds:?}");
    }
    // The chart's crds/ is what the binary prints: regenerate with
    // `pavilion-control crds --out-dir charts/pavilion/crds`.
    let fresh = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(binary("pavilion-control"))
        .args(["crds", "--out-dir"])
        .arg(fresh.path())
        .status()
        .unwrap();
    assert!(status.success());
    let shipped = workspace().join("charts/pavilion/crds");
    let mut names: Vec<String> = std::fs::read_dir(fresh.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(report["crds"], serde_json::json!(names));
    for name in names {
        assert_eq!(
            std::fs::read_to_string(fresh.path().join(&name)).unwrap(),
            std::fs::read_to_string(shipped.join(&name)).unwrap(),
            "charts/pavilion/crds/{name} is stale: run pavilion-control crds --out-dir charts/pavilion/crds"
        );
    }
}

/// The container of a Deployment, as installed.
fn container(kube: &KubeApiServer, deployment: &str) -> Value {
    let text = kube.kubectl_ok(&[
        "get",
        "deployment",
        deployment,
        "-n",
        NAMESPACE,
        "-o",
        "json",
    ]);
    let object: Value = serde_json::from_str(&text).unwrap();
    object["spec"]["template"]["spec"]["containers"][0].clone()
}

fn secret_files(kube: &KubeApiServer, name: &str, dir: &Path) {
    let text = kube.kubectl_ok(&["get", "secret", name, "-n", NAMESPACE, "-o", "json"]);
    let secret: Value = serde_json::from_str(&text).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    for (key, value) in secret["data"].as_object().unwrap() {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(value.as_str().unwrap())
            .unwrap();
        std::fs::write(dir.join(key), bytes).unwrap();
    }
}

/// A data plane started as the chart's Deployment starts it: its environment, with the
/// control plane's Service reached on loopback (the certificate's name kept) and mounted
/// paths moved under `root`.
fn data_plane(spec: &Value, pod: &str, grpc: u16, root: &Path, mounted: &Path) -> (Child, String) {
    let admin = format!("127.0.0.1:{}", free_port());
    let mut env = Vec::new();
    let mut server_name = String::new();
    for variable in spec["env"].as_array().unwrap() {
        let name = variable["name"].as_str().unwrap().to_owned();
        let Some(value) = variable["value"].as_str() else {
            continue; // fieldRefs: POD_NAME, set below
        };
        let value = match name.as_str() {
            "PAVILION_CONTROL_PLANE" => {
                server_name = value
                    .trim_start_matches("https://")
                    .split(':')
                    .next()
                    .unwrap()
                    .to_owned();
                format!("https://127.0.0.1:{grpc}")
            }
            "PAVILION_LISTEN" => format!("127.0.0.1:{}", free_port()),
            "PAVILION_ADMIN_LISTEN" => admin.clone(),
            "PAVILION_NODE_ID" => value.replace("$(POD_NAME)", pod),
            _ => value
                .replace("/etc/pavilion/control-channel", mounted.to_str().unwrap())
                // Each pod has its own emptyDir.
                .replace("/var/cache/pavilion", root.join(pod).to_str().unwrap()),
        };
        env.push((name, value));
    }
    env.push(("POD_NAME".into(), pod.into()));
    env.push(("PAVILION_CONTROL_PLANE_SERVER_NAME".into(), server_name));
    let args: Vec<&str> = spec["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    std::fs::create_dir_all(root.join(pod)).unwrap();
    let child = Child::spawn_with_env(pod, &binary("pavilion-data"), &args, &env);
    (child, format!("http://{admin}/ready"))
}

async fn ready(url: &str) -> bool {
    HttpClient::http1()
        .get(url)
        .await
        .is_ok_and(|reply| reply.status == 200)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_installed_chart_runs_with_mutual_tls_and_refuses_uncertified_data_planes() {
    let kube = KubeApiServer::start();
    let admin = kube.kubeconfig(pavilion_tests::kube::ADMIN_TOKEN);
    // The webhook too: the control plane publishes its CA as the caBundle.
    let values = r#"{"webhook": {"enabled": true}}"#;
    let installed = python(&[
        "install",
        admin.to_str().unwrap(),
        RELEASE,
        NAMESPACE,
        values,
    ]);
    let summary = installed["summary"].to_string();
    assert!(summary.contains("deployed"), "{summary}");

    // What the chart made (the apiserver is 1.20: the HPA and PDBs use the versions it serves).
    for object in [
        "deployment/gw-pavilion-control",
        "deployment/gw-pavilion-data",
        "service/gw-pavilion-control",
        "service/gw-pavilion-data",
        "horizontalpodautoscaler/gw-pavilion-data",
        "poddisruptionbudget/gw-pavilion-control",
        "poddisruptionbudget/gw-pavilion-data",
        "role/gw-pavilion-control",
        "serviceaccount/gw-pavilion-control",
    ] {
        kube.kubectl_ok(&["get", object, "-n", NAMESPACE]);
    }
    let replicas = kube.jsonpath(
        &["deployment", "gw-pavilion-control", "-n", NAMESPACE],
        "{.spec.replicas}",
    );
    assert_eq!(replicas, "2");

    // The control plane, as its Deployment runs it, with its ServiceAccount's token.
    let token = kube.kubectl_ok(&["create", "token", "gw-pavilion-control", "-n", NAMESPACE]);
    let kubeconfig = kube.kubeconfig(token.trim());
    let control = container(&kube, "gw-pavilion-control");
    let (grpc, http) = (free_port(), free_port());
    let root = tempfile::tempdir().unwrap();
    let tls_dir = root.path().join("control-tls");
    let mut args: Vec<String> = control["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let a = a.as_str().unwrap();
            match a.split_once('=') {
                Some(("--grpc-listen", _)) => format!("--grpc-listen=127.0.0.1:{grpc}"),
                Some(("--http-listen", _)) => format!("--http-listen=127.0.0.1:{http}"),
                Some(("--tls-dir", _)) => format!("--tls-dir={}", tls_dir.display()),
                Some(("--webhook-listen", _)) => {
                    format!("--webhook-listen=127.0.0.1:{}", free_port())
                }
                _ => a.to_owned(),
            }
        })
        .collect();
    args.push(format!("--kubeconfig={}", kubeconfig.display()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env = vec![
        ("POD_NAMESPACE".to_owned(), NAMESPACE.to_owned()),
        ("POD_NAME".to_owned(), "gw-pavilion-control-0".to_owned()),
    ];
    let mut cp = Child::spawn_with_env("control", &binary("pavilion-control"), &args, &env);
    let health = format!("https://127.0.0.1:{http}/health");
    eventually("the control plane answers over HTTPS", PATIENCE, || {
        let health = health.clone();
        async move {
            tokio::task::spawn_blocking(move || pavilion_telemetry_probe(&health).then_some(()))
                .await
                .ok()
                .flatten()
        }
    })
    .await;
    assert!(cp.is_running(), "{}", cp.output());

    // It made the certificate Secrets with the chart's RBAC.
    for name in [
        "gw-pavilion-ca",
        "gw-pavilion-control-plane-tls",
        "gw-pavilion-data-plane-tls",
    ] {
        kube.kubectl_ok(&["get", "secret", name, "-n", NAMESPACE]);
    }
    let bundle = kube.jsonpath(
        &[
            "validatingwebhookconfiguration",
            "gw-pavilion-pavilion-system",
        ],
        "{.webhooks[0].clientConfig.caBundle}",
    );
    let ca_secret = kube.jsonpath(
        &["secret", "gw-pavilion-ca", "-n", NAMESPACE],
        "{.data.ca\\.crt}",
    );
    assert!(!bundle.is_empty(), "no caBundle published");
    assert_eq!(
        bundle, ca_secret,
        "the webhook's caBundle is the CA the control plane made"
    );
    kube.apply(
        "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: Route\nmetadata: { name: r, namespace: default }\nspec:\n  rules:\n    - backends: [{ url: 'http://127.0.0.1:9' }]\n",
    );

    // A data plane as the chart runs it, with the Secret it mounts: it gets the snapshot.
    let data = container(&kube, "gw-pavilion-data");
    let mounted = root.path().join("data-plane-tls");
    secret_files(&kube, "gw-pavilion-data-plane-tls", &mounted);
    let (mut dp, ready_url) = data_plane(
        &data,
        "gw-pavilion-data-7f9c-abcde",
        grpc,
        root.path(),
        &mounted,
    );
    eventually("the certified data plane is ready", PATIENCE, || async {
        ready(&ready_url).await.then_some(())
    })
    .await;
    assert!(dp.is_running());

    // Without a client certificate, or with one of another CA: no snapshot.
    let anonymous = root.path().join("anonymous");
    std::fs::create_dir_all(&anonymous).unwrap();
    std::fs::copy(mounted.join("ca.crt"), anonymous.join("ca.crt")).unwrap();
    let mut anonymous_spec = data.clone();
    anonymous_spec["env"] = Value::Array(
        data["env"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| {
                !matches!(
                    v["name"].as_str(),
                    Some("PAVILION_CONTROL_PLANE_CERT" | "PAVILION_CONTROL_PLANE_KEY")
                )
            })
            .cloned()
            .collect(),
    );
    let other_ca = root.path().join("other-ca");
    let status = std::process::Command::new(binary("pavilion-control"))
        .args(["certs", "--out-dir"])
        .arg(&other_ca)
        .args(["--data-plane-names", "*.gw-pavilion-data"])
        .output()
        .unwrap();
    assert!(status.status.success());
    let foreign = root.path().join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::copy(mounted.join("ca.crt"), foreign.join("ca.crt")).unwrap();
    std::fs::copy(other_ca.join("data-plane.crt"), foreign.join("tls.crt")).unwrap();
    std::fs::copy(other_ca.join("data-plane.key"), foreign.join("tls.key")).unwrap();
    let (mut refused_a, url_a) = data_plane(
        &anonymous_spec,
        "gw-pavilion-data-anon",
        grpc,
        root.path(),
        &anonymous,
    );
    let (mut refused_b, url_b) = data_plane(
        &data,
        "gw-pavilion-data-foreign",
        grpc,
        root.path(),
        &foreign,
    );
    for (child, url) in [(&mut refused_a, &url_a), (&mut refused_b, &url_b)] {
        eventually(
            "the refused data plane reports its stream down",
            PATIENCE,
            || {
                let output = child.output();
                async move { output.contains("snapshot stream down").then_some(()) }
            },
        )
        .await;
        assert!(
            !ready(url).await,
            "an uncertified data plane got a snapshot"
        );
    }
    assert!(ready(&ready_url).await);
    dp.kill();
    cp.kill();
}

fn pavilion_telemetry_probe(url: &str) -> bool {
    std::process::Command::new(binary("pavilion-control"))
        .args(["probe", url])
        .status()
        .is_ok_and(|s| s.success())
}
