//! Tenancy and rebalancing with the real binaries: the control plane on a directory, a data
//! plane, and two upstream processes standing for aggregate shards. A rebalancer moves a
//! tenant through the API while clients keep sending, and not one request fails.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pavilion_e2e::{ControlProcess, DataProcess, UpstreamProcess};
use pavilion_tests::client::HttpClient;
use pavilion_tests::{API_TOKEN, control_api, eventually, free_port};
use sha2::Digest;

const PATIENCE: Duration = Duration::from_secs(15);

#[tokio::test]
async fn a_rebalancer_moves_a_tenant_between_shard_processes_without_a_failed_request() {
    let (one, two) = (
        UpstreamProcess::start("agg-1").await,
        UpstreamProcess::start("agg-2").await,
    );
    let hash: String = sha2::Sha256::digest(b"pvk_e2e_acme")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let config = tempfile::tempdir().unwrap();
    std::fs::write(
        config.path().join("platform.yaml"),
        format!(
            r#"apiVersion: gateway.pavilion.dev/v1alpha1
kind: Shard
metadata: {{ name: agg-1, namespace: platform }}
spec: {{ service: aggregate, endpoints: ['{}'] }}
---
apiVersion: gateway.pavilion.dev/v1alpha1
kind: Shard
metadata: {{ name: agg-2, namespace: platform }}
spec: {{ service: aggregate, endpoints: ['{}'], readiness: /readiness }}
---
apiVersion: gateway.pavilion.dev/v1alpha1
kind: ApiKey
metadata: {{ name: acme, namespace: e2e }}
spec: {{ sha256: '{hash}', scopes: [read, write], tenants: [acme] }}
---
apiVersion: gateway.pavilion.dev/v1alpha1
kind: Route
metadata: {{ name: commands, namespace: e2e }}
spec:
  rules:
    - matches: [{{ path: {{ type: PathPrefix, value: /v1/commands }} }}]
      auth: {{ apiKeys: {{}} }}
      tenancy: {{}}
      backends: [{{ service: aggregate }}]
"#,
            one.url, two.url
        ),
    )
    .unwrap();
    // The placement in a file of its own, as a rebalancer finds it.
    std::fs::write(
        config.path().join("acme.yaml"),
        "# acme's placement\napiVersion: gateway.pavilion.dev/v1alpha1\nkind: TenantPlacement\nmetadata: { name: acme, namespace: platform }\nspec: { tenant: acme, shards: { aggregate: agg-1 } }\n",
    )
    .unwrap();
    let control = ControlProcess::start(config.path(), free_port()).await;
    let cache = tempfile::tempdir().unwrap();
    let data = DataProcess::start(
        &control.grpc,
        &cache.path().join("snapshot.pb"),
        free_port(),
    )
    .await;
    let url = data.url("/v1/commands/order/1");
    let served_by = || async {
        HttpClient::http1()
            .get_with(
                &url,
                &[("x-api-key", "pvk_e2e_acme"), ("x-tenant-id", "acme")],
            )
            .await
            .ok()
            .and_then(|r| r.header("x-upstream").map(str::to_owned))
    };
    eventually("acme on agg-1", PATIENCE, || async {
        (served_by().await.as_deref() == Some("agg-1")).then_some(())
    })
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let (url, stop) = (url.clone(), stop.clone());
            tokio::spawn(async move {
                let mut failures = Vec::new();
                let mut count = 0;
                while !stop.load(Ordering::Relaxed) {
                    count += 1;
                    match HttpClient::http1()
                        .get_with(
                            &url,
                            &[("x-api-key", "pvk_e2e_acme"), ("x-tenant-id", "acme")],
                        )
                        .await
                    {
                        Ok(reply) if reply.status == 200 => {}
                        other => failures.push(format!("{:?}", other.map(|r| r.status))),
                    }
                }
                (count, failures)
            })
        })
        .collect();

    let post = |path: String, body: &'static str| {
        let url = format!("http://{}{path}", control.http);
        async move {
            let request = http::Request::post(url)
                .header("authorization", format!("Bearer {API_TOKEN}"))
                .body(http_body_util::Full::new(bytes::Bytes::from_static(
                    body.as_bytes(),
                )))
                .unwrap();
            HttpClient::http1().send(request).await.unwrap()
        }
    };
    let made = post(
        "/v1/rebalance/plans".into(),
        r#"{"tenant":"acme","service":"aggregate","targetShard":"agg-2"}"#,
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.text());
    let id = made.json()["id"].as_str().unwrap().to_owned();
    let applied = post(format!("/v1/rebalance/plans/{id}/apply"), "").await;
    assert_eq!(applied.status, 202, "{}", applied.text());
    eventually("the plan completed", PATIENCE, || async {
        let plan = control_api(&control.http, &format!("/v1/rebalance/plans/{id}"))
            .await
            .json();
        (plan["state"] == "Completed").then_some(())
    })
    .await;
    for _ in 0..5 {
        assert_eq!(served_by().await.as_deref(), Some("agg-2"));
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        let (count, failures) = client.await.unwrap();
        assert!(
            count > 0 && failures.is_empty(),
            "{count} sent, failed: {failures:?}"
        );
    }
    let file = std::fs::read_to_string(config.path().join("acme.yaml")).unwrap();
    assert!(file.contains("aggregate: agg-2"), "{file}");
    // Both halves agree on where acme lives now.
    let control_view = control_api(&control.http, "/v1/placements/acme")
        .await
        .json();
    let data_view = HttpClient::http1()
        .get(&format!("http://{}/admin/routing?tenant=acme", data.admin))
        .await
        .unwrap()
        .json();
    assert_eq!(control_view, data_view);
    assert_eq!(control_view["services"]["aggregate"]["shard"], "agg-2");
}
