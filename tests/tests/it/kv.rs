//! The NATS KV source against a real `nats-server -js`: puts and deletes become traffic,
//! statuses are written beside the resources, and a server restart loses nothing.

use std::time::Duration;

use pavilion_control::kv::{KvAddress, open};
use pavilion_control::{Config as ControlConfig, ControlPlane, SourceSpec};
use pavilion_data::{Config as DataConfig, DataPlane};
use pavilion_tests::client::HttpClient;
use pavilion_tests::nats::NatsServer;
use pavilion_tests::{Upstream, condition, eventually};
use serde_json::Value;
use sha2::Digest;

const PATIENCE: Duration = Duration::from_secs(10);

fn route(name: &str, backend: &str) -> String {
    format!(
        "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: Route\nmetadata: {{ name: {name}, namespace: shop }}\nspec:\n  rules:\n    - matches: [{{ path: {{ type: PathPrefix, value: /{name} }} }}]\n      backends: [{{ url: '{backend}' }}]\n"
    )
}

async fn control_plane(address: &KvAddress) -> ControlPlane {
    pavilion_control::start(ControlConfig {
        api_tokens: vec![pavilion_tests::API_TOKEN.into()],
        ..ControlConfig::local(SourceSpec::Kv(address.clone()))
    })
    .await
    .unwrap()
}

/// `sourceHealth` of `/v1/status` once its `up` is `want`, with the `/metrics` gauge line.
async fn source_health_when(cp: &ControlPlane, want: bool) -> (Value, String) {
    eventually(&format!("the source to be up={want}"), PATIENCE, || async {
        let status = pavilion_tests::control_api(cp.http_addr, "/v1/status")
            .await
            .json();
        let health = status["sourceHealth"].clone();
        if health["up"] != want {
            return None;
        }
        let metrics = HttpClient::http1()
            .get(&format!("http://{}/metrics", cp.http_addr))
            .await
            .ok()?
            .text();
        let gauge = metrics
            .lines()
            .find(|l| l.starts_with("pavilion_source_up "))?
            .to_owned();
        Some((health, gauge))
    })
    .await
}

async fn data_plane(cp: &ControlPlane) -> DataPlane {
    let mut config = DataConfig::local();
    config.control_planes = vec![format!("http://{}", cp.grpc_addr)];
    config.node_id = "swarm-dp".into();
    pavilion_data::start(config).await.unwrap()
}

async fn served_by(dp: &DataPlane, path: &str, want: Option<&str>) {
    let url = format!("http://{}{path}", dp.addr);
    eventually(&format!("{path} served by {want:?}"), PATIENCE, || {
        let url = url.clone();
        async move {
            let reply = HttpClient::http1().get(&url).await.ok()?;
            let by = (reply.status == 200)
                .then(|| reply.header("x-upstream").map(str::to_owned))
                .flatten();
            (by.as_deref() == want).then_some(())
        }
    })
    .await
}

/// The conditions under `status.<key>`, once they satisfy `check`.
async fn status_when(
    store: &async_nats::jetstream::kv::Store,
    key: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let status_key = format!("status.{key}");
    eventually(
        &format!("{status_key} to satisfy the check"),
        PATIENCE,
        || {
            let status_key = status_key.clone();
            let check = &check;
            async move {
                let bytes = store.get(&status_key).await.ok()??;
                let status: Value = serde_json::from_slice(&bytes).ok()?;
                check(&status).then_some(status)
            }
        },
    )
    .await
}

#[tokio::test]
async fn puts_and_deletes_become_traffic_with_statuses_beside_them() {
    let nats = NatsServer::start();
    let a = Upstream::start("a").await.unwrap();
    let b = Upstream::start("b").await.unwrap();
    let address: KvAddress = format!("{}?bucket=routes-test", nats.url())
        .parse()
        .unwrap();
    let cp = control_plane(&address).await;
    let dp = data_plane(&cp).await;
    let store = open(&address).await.unwrap();
    assert_eq!(
        store.status().await.unwrap().history(),
        5,
        "the bucket keeps 5 revisions per key"
    );

    store
        .put("route.shop.orders", route("orders", &a.url()).into())
        .await
        .unwrap();
    served_by(&dp, "/orders", Some("a")).await;
    let status = status_when(&store, "route.shop.orders", |s| {
        condition(s, "Programmed")["status"] == "True"
    })
    .await;
    assert_eq!(condition(&status, "Accepted")["status"], "True");
    assert!(condition(&status, "Accepted")["lastTransitionTime"].is_string());

    // Bad values are rejected alone, with the reason in their status key.
    store
        .put("route.shop.broken", route("broken", "not-a-url").into())
        .await
        .unwrap();
    store
        .put("route.shop.other", route("orders", &b.url()).into())
        .await
        .unwrap();
    let broken = status_when(&store, "route.shop.broken", |s| {
        condition(s, "Accepted")["status"] == "False"
    })
    .await;
    assert_eq!(condition(&broken, "Accepted")["reason"], "Invalid");
    // `kv list` and `kv get` show the reason beside each condition.
    let cli = |args: &[&str]| {
        let address = address.to_string();
        std::process::Command::new(pavilion_tests::process::binary("pavilion-control"))
            .arg("kv")
            .args(args)
            .args(["--nats", &address])
            .output()
            .unwrap()
    };
    let list = String::from_utf8_lossy(&cli(&["list"]).stdout).into_owned();
    assert!(
        list.contains("route.shop.broken\tAccepted=False (Invalid) Programmed=False (Invalid)"),
        "{list}"
    );
    let get = cli(&["get", "route.shop.broken"]);
    let described = String::from_utf8_lossy(&get.stderr).into_owned();
    assert!(
        described.contains("Accepted=False (Invalid): spec.rules[0].backends[0].url:"),
        "{described}"
    );
    let other = status_when(&store, "route.shop.other", |s| {
        condition(s, "Accepted")["status"] == "False"
    })
    .await;
    assert!(
        condition(&other, "Accepted")["message"]
            .as_str()
            .unwrap()
            .contains("not what key `route.shop.other` names"),
        "{other}"
    );
    served_by(&dp, "/orders", Some("a")).await;

    store
        .put("route.shop.orders", route("orders", &b.url()).into())
        .await
        .unwrap();
    served_by(&dp, "/orders", Some("b")).await;
    store.delete("route.shop.orders").await.unwrap();
    served_by(&dp, "/orders", None).await;
    eventually(
        "the status of the deleted route to go",
        PATIENCE,
        || async {
            store
                .get("status.route.shop.orders")
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;
    dp.stop().await;
    cp.stop().await;
}

#[tokio::test]
async fn a_nats_restart_interrupts_nothing() {
    let mut nats = NatsServer::start();
    let a = Upstream::start("a").await.unwrap();
    let b = Upstream::start("b").await.unwrap();
    let address: KvAddress = format!("{}?bucket=restart-test", nats.url())
        .parse()
        .unwrap();
    let store = open(&address).await.unwrap();
    store
        .put("route.shop.r", route("r", &a.url()).into())
        .await
        .unwrap();
    let cp = control_plane(&address).await;
    let dp = data_plane(&cp).await;
    served_by(&dp, "/r", Some("a")).await;

    let (_, gauge) = source_health_when(&cp, true).await;
    assert_eq!(gauge, "pavilion_source_up 1");

    // NATS goes away: said in the status and the metric, while the last good state serves
    // and the control plane stays ready.
    nats.stop();
    let (health, gauge) = source_health_when(&cp, false).await;
    assert_eq!(gauge, "pavilion_source_up 0");
    assert!(
        health["serving"]
            .as_str()
            .is_some_and(|s| s.starts_with("the last good state")),
        "{health}"
    );
    assert!(health["error"].is_string(), "{health}");
    let ready = HttpClient::http1()
        .get(&format!("http://{}/ready", cp.http_addr))
        .await
        .unwrap();
    assert_eq!(ready.status, 200);
    served_by(&dp, "/r", Some("a")).await;
    nats.resume();
    let (_, gauge) = source_health_when(&cp, true).await;
    assert_eq!(gauge, "pavilion_source_up 1");
    let store = open(&address).await.unwrap();
    store
        .put("route.shop.r", route("r", &b.url()).into())
        .await
        .unwrap();
    served_by(&dp, "/r", Some("b")).await;
    dp.stop().await;
    cp.stop().await;
}

#[tokio::test]
async fn statuses_left_by_deleted_resources_are_pruned_on_start() {
    let nats = NatsServer::start();
    let address: KvAddress = format!("{}?bucket=prune-test", nats.url()).parse().unwrap();
    let store = open(&address).await.unwrap();
    store
        .put(
            "route.shop.kept",
            route("kept", "http://127.0.0.1:9").into(),
        )
        .await
        .unwrap();
    store
        .put("status.route.shop.gone", "{\"conditions\":[]}".into())
        .await
        .unwrap();
    let cp = control_plane(&address).await;
    eventually("the stale status to be pruned", PATIENCE, || async {
        store
            .get("status.route.shop.gone")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    status_when(&store, "route.shop.kept", |s| {
        condition(s, "Accepted")["status"] == "True"
    })
    .await;
    cp.stop().await;
}

#[tokio::test]
async fn replicas_sharing_a_bucket_agree_on_programmed() {
    let nats = NatsServer::start();
    let address: KvAddress = format!("{}?bucket=replicas", nats.url()).parse().unwrap();
    let store = open(&address).await.unwrap();
    store
        .put("route.shop.r", route("r", "http://127.0.0.1:9").into())
        .await
        .unwrap();
    let replica = |identity: &str| {
        let mut config = ControlConfig::local(SourceSpec::Kv(address.clone()));
        config.kube.identity = identity.into();
        pavilion_control::start(config)
    };
    let one = replica("one").await.unwrap();
    let two = replica("two").await.unwrap();
    let dp = data_plane(&two).await;
    let programmed = |s: &Value| condition(s, "Programmed")["status"] == "True";
    status_when(&store, "route.shop.r", programmed).await;
    // Both replicas write statuses in KV mode: wait long enough for each to have written.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let status = status_when(&store, "route.shop.r", programmed).await;
    assert_eq!(condition(&status, "Programmed")["reason"], "Programmed");
    dp.stop().await;
    one.stop().await;
    two.stop().await;
}

#[tokio::test]
async fn a_rebalancing_plan_moves_a_tenant_by_compare_and_set_in_the_bucket() {
    let nats = NatsServer::start();
    let address: KvAddress = nats.url().parse().unwrap();
    let store = open(&address).await.unwrap();
    let (one, two) = (
        Upstream::start("agg-1").await.unwrap(),
        Upstream::start("agg-2").await.unwrap(),
    );
    let hash: String = sha2::Sha256::digest(b"pvk_acme_key")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let doc = |kind: &str, name: &str, namespace: &str, spec: &str| {
        format!(
            "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: {kind}\nmetadata: {{ name: {name}, namespace: {namespace} }}\nspec:\n{spec}"
        )
    };
    for (key, value) in [
        (
            "shard.platform.agg-1",
            doc(
                "Shard",
                "agg-1",
                "platform",
                &format!("  service: aggregate\n  endpoints: ['{}']\n", one.url()),
            ),
        ),
        (
            "shard.platform.agg-2",
            doc(
                "Shard",
                "agg-2",
                "platform",
                &format!(
                    "  service: aggregate\n  endpoints: ['{}']\n  readiness: /readiness\n",
                    two.url()
                ),
            ),
        ),
        (
            "tenantplacement.platform.acme",
            doc(
                "TenantPlacement",
                "acme",
                "platform",
                "  tenant: acme\n  shards: { aggregate: agg-1 }\n",
            ),
        ),
        (
            "apikey.shop.acme",
            doc(
                "ApiKey",
                "acme",
                "shop",
                &format!("  sha256: '{hash}'\n  scopes: [read, write]\n  tenants: [acme]\n"),
            ),
        ),
        (
            "route.shop.commands",
            doc(
                "Route",
                "commands",
                "shop",
                "  rules:\n    - auth: { apiKeys: {} }\n      tenancy: {}\n      backends: [{ service: aggregate }]\n",
            ),
        ),
    ] {
        store.put(key, value.into_bytes().into()).await.unwrap();
    }
    let cp = pavilion_control::start(ControlConfig {
        api_tokens: vec![pavilion_tests::API_TOKEN.into()],
        ..ControlConfig::local(SourceSpec::Kv(address.clone()))
    })
    .await
    .unwrap();
    let dp = data_plane(&cp).await;
    let upstream_of = || async {
        HttpClient::http1()
            .get_with(
                &format!("http://{}/x", dp.addr),
                &[("x-api-key", "pvk_acme_key"), ("x-tenant-id", "acme")],
            )
            .await
            .ok()?
            .header("x-upstream")
            .map(str::to_owned)
    };
    eventually("acme on agg-1", PATIENCE, || async {
        (upstream_of().await.as_deref() == Some("agg-1")).then_some(())
    })
    .await;

    let post = |path: String, body: &'static str| {
        let url = format!("http://{}{path}", cp.http_addr);
        async move {
            let request = http::Request::post(url)
                .header(
                    "authorization",
                    format!("Bearer {}", pavilion_tests::API_TOKEN),
                )
                .body(http_body_util::Full::new(bytes::Bytes::from_static(
                    body.as_bytes(),
                )))
                .unwrap();
            HttpClient::http1().send(request).await.unwrap()
        }
    };
    let plan = eventually("the plan store reachable", PATIENCE, || async {
        let reply = post(
            "/v1/rebalance/plans".into(),
            r#"{"tenant":"acme","service":"aggregate","targetShard":"agg-2"}"#,
        )
        .await;
        (reply.status == 201).then(|| reply.json())
    })
    .await;
    let id = plan["id"].as_str().unwrap().to_owned();
    // The plan is an entry of the bucket, beside the resources.
    let stored = store
        .get(format!("rebalanceplan.{id}"))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&stored).contains("Pending"));

    two.set_not_ready("catching up");
    let refused = post(format!("/v1/rebalance/plans/{id}/apply"), "").await;
    assert_eq!(refused.status, 409, "{}", refused.text());
    assert!(refused.text().contains("catching up"));
    two.set_ready();
    assert_eq!(
        post(format!("/v1/rebalance/plans/{id}/apply"), "")
            .await
            .status,
        202
    );
    eventually("completed", PATIENCE, || async {
        let plan = pavilion_tests::control_api(cp.http_addr, &format!("/v1/rebalance/plans/{id}"))
            .await
            .json();
        (plan["state"] == "Completed").then_some(())
    })
    .await;
    assert_eq!(upstream_of().await.as_deref(), Some("agg-2"));
    let placement = store
        .get("tenantplacement.platform.acme")
        .await
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&placement).contains("aggregate: agg-2"),
        "{}",
        String::from_utf8_lossy(&placement)
    );

    assert_eq!(
        post(format!("/v1/rebalance/plans/{id}/rollback"), "")
            .await
            .status,
        202
    );
    eventually("rolled back", PATIENCE, || async {
        (upstream_of().await.as_deref() == Some("agg-1")).then_some(())
    })
    .await;
    eventually("the plan says so", PATIENCE, || async {
        let plan = pavilion_tests::control_api(cp.http_addr, &format!("/v1/rebalance/plans/{id}"))
            .await
            .json();
        (plan["state"] == "RolledBack").then_some(())
    })
    .await;
}
