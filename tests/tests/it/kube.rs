//! The control plane as a Kubernetes controller against a real kube-apiserver: resources
//! applied with kubectl become traffic, statuses show in `kubectl get`, watches survive an
//! API-server restart, the RBAC manifests suffice, and the mirror keeps a KV bucket in step.

use std::time::Duration;

use pavilion_control::kv::{KvAddress, open};
use pavilion_control::{Config as ControlConfig, ControlPlane, KubeOptions, SourceSpec};
use pavilion_data::{Config as DataConfig, DataPlane};
use pavilion_tests::client::HttpClient;
use pavilion_tests::kube::{CONTROL_TOKEN, KubeApiServer};
use pavilion_tests::nats::NatsServer;
use pavilion_tests::{Upstream, eventually};

const PATIENCE: Duration = Duration::from_secs(20);

fn route(name: &str, backend: &str) -> String {
    format!(
        "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: Route\nmetadata: {{ name: {name}, namespace: shop }}\nspec:\n  hosts: [{name}.example.com]\n  rules:\n    - matches: [{{ path: {{ type: PathPrefix, value: /{name} }} }}]\n      backends: [{{ url: '{backend}' }}]\n"
    )
}

/// A control plane watching the cluster with the least-privileged token.
async fn controller(
    api: &KubeApiServer,
    identity: &str,
    mirror_to: Option<KvAddress>,
) -> ControlPlane {
    pavilion_control::start(ControlConfig {
        kube: KubeOptions {
            kubeconfig: Some(api.kubeconfig(CONTROL_TOKEN)),
            identity: identity.into(),
            lease_duration: Duration::from_secs(3),
            ..KubeOptions::default()
        },
        mirror_to,
        api_tokens: vec![pavilion_tests::API_TOKEN.into()],
        ..ControlConfig::local(SourceSpec::Kube)
    })
    .await
    .expect("control plane starts")
}

async fn data_plane(cp: &ControlPlane) -> DataPlane {
    let mut config = DataConfig::local();
    config.control_planes = vec![format!("http://{}", cp.grpc_addr)];
    config.node_id = "cluster-dp".into();
    pavilion_data::start(config).await.unwrap()
}

async fn served_by(dp: &DataPlane, host: &str, path: &str, want: Option<&str>) {
    let url = format!("http://{}{path}", dp.addr);
    eventually(
        &format!("{host}{path} served by {want:?}"),
        PATIENCE,
        || {
            let url = url.clone();
            async move {
                let request = http::Request::get(&url)
                    .header("host", host)
                    .body(http_body_util::Full::default())
                    .unwrap();
                let reply = HttpClient::http1().send(request).await.ok()?;
                let by = (reply.status == 200)
                    .then(|| reply.header("x-upstream").map(str::to_owned))
                    .flatten();
                (by.as_deref() == want).then_some(())
            }
        },
    )
    .await
}

/// Sets a Route's status reason as a person could, through the status subresource.
fn edit_status_by_hand(api: &KubeApiServer, route: &str) {
    api.kubectl_ok(&[
        "patch",
        "route",
        route,
        "-n",
        "shop",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"reason":"EditedByHand"}}"#,
    ]);
}

/// `kubectl get` output once `check` holds for it (the last output when it never does).
async fn kubectl_until(api: &KubeApiServer, args: &[&str], check: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let output = api.kubectl(args);
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        if output.status.success() && check(&text) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "kubectl {args:?} never showed the expected state; last:\n{text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_becomes_traffic_and_status_with_the_least_privilege() {
    let mut api = KubeApiServer::start();
    api.kubectl_ok(&["create", "namespace", "shop"]);
    let a = Upstream::start("a").await.unwrap();
    let b = Upstream::start("b").await.unwrap();
    let cp = controller(&api, "replica-1", None).await;
    let dp = data_plane(&cp).await;

    api.apply(&route("orders", &a.url()));
    served_by(&dp, "orders.example.com", "/orders", Some("a")).await;
    let table = kubectl_until(&api, &["get", "routes", "-n", "shop"], |t| {
        row(t, "orders").is_some_and(|w| w.get(2..5) == Some(&["True", "True", "Accepted"][..]))
    })
    .await;
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "HOSTS", "ACCEPTED", "PROGRAMMED", "REASON", "AGE"]
    );

    // An invalid route is rejected alone, with the reason in its status.
    api.apply(&route("broken", "not-a-url"));
    let reason = kubectl_until(
        &api,
        &[
            "get",
            "route",
            "broken",
            "-n",
            "shop",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Accepted\")].reason}",
        ],
        |t| !t.is_empty(),
    )
    .await;
    assert_eq!(reason, "Invalid");
    let generation = api.kubectl_ok(&[
        "get",
        "route",
        "broken",
        "-n",
        "shop",
        "-o",
        "jsonpath={.metadata.generation}",
    ]);
    let observed = api.kubectl_ok(&[
        "get",
        "route",
        "broken",
        "-n",
        "shop",
        "-o",
        "jsonpath={.status.conditions[0].observedGeneration}",
    ]);
    assert_eq!(observed, generation);
    served_by(&dp, "orders.example.com", "/orders", Some("a")).await;

    // Statuses are written when they change, not in a loop.
    let version = |api: &KubeApiServer| {
        api.kubectl_ok(&[
            "get",
            "route",
            "orders",
            "-n",
            "shop",
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ])
    };
    let before = version(&api);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        version(&api),
        before,
        "nothing changed, nothing was written"
    );
    // A status-only change (what each status write comes back as) is no change to the
    // resource: nothing is compiled again.
    let compiles = || async {
        let metrics = pavilion_tests::metrics(cp.http_addr).await;
        pavilion_tests::sample(&metrics, "pavilion_control_compiles_total").expect("counted")
    };
    let compiled = compiles().await;
    edit_status_by_hand(&api, "orders");
    assert_ne!(version(&api), before, "the status edit is a new version");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(compiles().await, compiled, "a status edit compiles nothing");
    // A label is a change to the resource as its author wrote it.
    api.kubectl_ok(&["label", "route", "orders", "-n", "shop", "team=shop"]);
    eventually("the labelled route to be compiled", PATIENCE, || async {
        (compiles().await > compiled).then_some(())
    })
    .await;

    // Watches survive an API-server restart; changes after it arrive. While it is gone,
    // the status says so and the last good state serves.
    api.pause();
    let health = eventually("the lost API server to show", PATIENCE, || async {
        let status = pavilion_tests::control_api(cp.http_addr, "/v1/status")
            .await
            .json();
        (status["sourceHealth"]["up"] == false).then(|| status["sourceHealth"].clone())
    })
    .await;
    assert!(health["error"].is_string(), "{health}");
    served_by(&dp, "orders.example.com", "/orders", Some("a")).await;
    api.resume();
    eventually("the API server to be back", PATIENCE, || async {
        let status = pavilion_tests::control_api(cp.http_addr, "/v1/status")
            .await
            .json();
        (status["sourceHealth"]["up"] == true).then_some(())
    })
    .await;
    api.apply(&route("orders", &b.url()));
    served_by(&dp, "orders.example.com", "/orders", Some("b")).await;
    api.kubectl_ok(&["delete", "route", "orders", "-n", "shop"]);
    served_by(&dp, "orders.example.com", "/orders", None).await;
    dp.stop().await;
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mirror_keeps_the_bucket_in_step_with_the_cluster() {
    let api = KubeApiServer::start();
    api.kubectl_ok(&["create", "namespace", "shop"]);
    let nats = NatsServer::start();
    let address: KvAddress = format!("{}?bucket=mirror", nats.url()).parse().unwrap();
    let store = open(&address).await.unwrap();
    // Left over from before: removed by the resync on start.
    store
        .put(
            "route.shop.stale",
            route("stale", "http://127.0.0.1:9").into(),
        )
        .await
        .unwrap();

    api.apply(&route("orders", "http://127.0.0.1:9000"));
    api.apply(&route("broken", "not-a-url"));
    let cp = controller(&api, "mirroring", Some(address.clone())).await;
    let mirrored = eventually(
        "the route in the bucket and the stale key gone",
        PATIENCE,
        || async {
            let value = store.get("route.shop.orders").await.ok()??;
            store
                .get("route.shop.stale")
                .await
                .ok()?
                .is_none()
                .then_some(value)
        },
    )
    .await;
    let document: serde_json::Value = serde_yaml_ng::from_slice(&mirrored).unwrap();
    assert_eq!(
        document["spec"]["rules"][0]["backends"][0]["url"],
        "http://127.0.0.1:9000"
    );
    assert!(
        document["metadata"].get("resourceVersion").is_none(),
        "server-managed metadata stays in the cluster"
    );
    assert!(
        store.get("route.shop.broken").await.unwrap().is_none(),
        "only accepted resources are mirrored"
    );

    api.kubectl_ok(&["delete", "route", "orders", "-n", "shop"]);
    eventually(
        "the deleted route to leave the bucket",
        PATIENCE,
        || async {
            store
                .get("route.shop.orders")
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn programmed_counts_the_data_planes_of_every_replica() {
    let api = KubeApiServer::start();
    api.kubectl_ok(&["create", "namespace", "shop"]);
    let leader = controller(&api, "leader", None).await;
    eventually("the first replica to lead", PATIENCE, || {
        std::future::ready((api.lease_holder() == "leader").then_some(()))
    })
    .await;
    let follower = controller(&api, "follower", None).await;
    api.apply(&route("orders", "http://127.0.0.1:9"));
    let programmed = [
        "get",
        "route",
        "orders",
        "-n",
        "shop",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Programmed\")].reason}",
    ];
    kubectl_until(&api, &programmed, |reason| reason == "NoDataPlanes").await;

    // The only data plane talks to the follower; the leader writes the status.
    let dp = data_plane(&follower).await;
    kubectl_until(&api, &programmed, |reason| reason == "Programmed").await;
    dp.stop().await;
    kubectl_until(&api, &programmed, |reason| reason == "NoDataPlanes").await;
    follower.stop().await;
    leader.stop().await;
}

/// The status of `key` on `path` of `host`, with `x-api-key` when a key is given.
async fn status_with_key(dp: &DataPlane, host: &str, path: &str, key: Option<&str>) -> u16 {
    let mut request = http::Request::get(format!("http://{}{path}", dp.addr)).header("host", host);
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    let reply = HttpClient::http1()
        .send(request.body(http_body_util::Full::default()).unwrap())
        .await
        .unwrap();
    reply.status.as_u16()
}

#[tokio::test]
async fn api_keys_are_custom_resources_holding_hashes() {
    let api = KubeApiServer::start();
    api.kubectl_ok(&["create", "namespace", "shop"]);
    let upstream = Upstream::start("a").await.unwrap();
    let cp = controller(&api, "replica-1", None).await;
    let dp = data_plane(&cp).await;

    let key = pavilion_control::keygen::generate_key().unwrap();
    api.apply(&format!(
        "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: Route\nmetadata: {{ name: vault, namespace: shop }}\nspec:\n  hosts: [vault.example.com]\n  rules:\n    - backends: [{{ url: '{}' }}]\n      auth: {{ apiKeys: {{ scopes: [read] }} }}\n",
        upstream.url()
    ));
    api.apply(&format!(
        "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: ApiKey\nmetadata: {{ name: mobile, namespace: shop }}\nspec:\n  description: mobile app\n  sha256: {}\n  scopes: [read]\n",
        pavilion_control::keygen::sha256_hex(&key)
    ));
    eventually("the key opens the route", PATIENCE, || {
        let (dp, key) = (&dp, key.as_str());
        async move {
            (status_with_key(dp, "vault.example.com", "/x", Some(key)).await == 200).then_some(())
        }
    })
    .await;
    assert_eq!(
        status_with_key(&dp, "vault.example.com", "/x", None).await,
        401
    );
    assert_eq!(
        status_with_key(&dp, "vault.example.com", "/x", Some("pvk_guess")).await,
        401
    );

    // KEY ID, SCOPES, EXPIRES, ACCEPTED, AGE
    let table = kubectl_until(&api, &["get", "apikeys", "-n", "shop"], |t| {
        t.contains("mobile") && t.contains("True")
    })
    .await;
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header[..2], ["NAME", "KEY"], "{table}");
    assert!(!table.contains(&key));

    // A key with a malformed hash is rejected alone; deleting the good one locks the door.
    api.apply("apiVersion: gateway.pavilion.dev/v1alpha1\nkind: ApiKey\nmetadata: { name: broken, namespace: shop }\nspec:\n  sha256: nothex\n  scopes: [read]\n");
    let reason = kubectl_until(
        &api,
        &[
            "get",
            "apikey",
            "broken",
            "-n",
            "shop",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Accepted\")].reason}",
        ],
        |t| !t.is_empty(),
    )
    .await;
    assert_eq!(reason, "Invalid");
    api.kubectl_ok(&["delete", "apikey", "mobile", "-n", "shop"]);
    eventually("the deleted key stops working", PATIENCE, || {
        let (dp, key) = (&dp, key.as_str());
        async move {
            (status_with_key(dp, "vault.example.com", "/x", Some(key)).await == 401).then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn rate_limit_policies_with_quotas_and_concurrency_are_accepted_and_enforced() {
    let api = KubeApiServer::start();
    api.kubectl_ok(&["create", "namespace", "shop"]);
    let upstream = Upstream::start("a").await.unwrap();
    let cp = controller(&api, "replica-1", None).await;
    let dp = data_plane(&cp).await;
    api.apply(&route("limited", &upstream.url()));
    api.apply(
        "apiVersion: gateway.pavilion.dev/v1alpha1
kind: RateLimitPolicy
metadata: { name: limited, namespace: shop }
spec:
  targetRef: { kind: Route, name: limited }
  limits:
    - key: [clientIp]
      requests: 3
      per: 1h
      overrides: [{ value: '10.*', requests: 100 }]
  quotas:
    - key: [route]
      requests: 1000
      bytes: 1048576
      per: month
      timeZone: Europe/Berlin
  concurrency: { max: 50, min: 2, initial: 10 }
",
    );
    let reason = kubectl_until(
        &api,
        &[
            "get",
            "ratelimitpolicy",
            "limited",
            "-n",
            "shop",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Programmed\")].status}",
        ],
        |t| t == "True",
    )
    .await;
    assert_eq!(reason, "True");
    let status = |dp: &DataPlane| {
        let url = format!("http://{}/limited", dp.addr);
        async move {
            let request = http::Request::get(url)
                .header("host", "limited.example.com")
                .body(http_body_util::Full::default())
                .unwrap();
            HttpClient::http1()
                .send(request)
                .await
                .unwrap()
                .status
                .as_u16()
        }
    };
    eventually("the limit is enforced", PATIENCE, || async {
        let mut statuses = Vec::new();
        for _ in 0..4 {
            statuses.push(status(&dp).await);
        }
        statuses.contains(&429).then_some(())
    })
    .await;
}

/// GETs `path` from the control plane's API with `token` (if any): the status code.
async fn api_status(cp: &ControlPlane, path: &str, token: Option<&str>) -> u16 {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .iter()
        .map(|b| ("authorization", b.as_str()))
        .collect();
    HttpClient::http1()
        .get_with(&format!("http://{}{path}", cp.http_addr), &headers)
        .await
        .unwrap()
        .status
        .as_u16()
}

#[tokio::test]
async fn shards_and_placements_are_custom_resources_and_the_api_trusts_service_accounts_by_role() {
    let api = KubeApiServer::start();
    let agg = Upstream::start("agg-1").await.unwrap();
    let cp = controller(&api, "tenancy-0", None).await;
    let dp = data_plane(&cp).await;
    let manifests = tempfile::tempdir().unwrap();
    let file = manifests.path().join("tenancy.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{ name: platform }}\n---\napiVersion: gateway.pavilion.dev/v1alpha1\nkind: Shard\nmetadata: {{ name: agg-1, namespace: platform }}\nspec:\n  service: aggregate\n  endpoints: ['{}']\n---\napiVersion: gateway.pavilion.dev/v1alpha1\nkind: TenantPlacement\nmetadata: {{ name: acme, namespace: platform }}\nspec:\n  tenant: acme\n  shards: {{ aggregate: agg-1 }}\n---\napiVersion: gateway.pavilion.dev/v1alpha1\nkind: TenantPlacement\nmetadata: {{ name: broken, namespace: platform }}\nspec:\n  tenant: initech\n  shards: {{ aggregate: agg-9 }}\n",
            agg.url()
        ),
    )
    .unwrap();
    api.kubectl_ok(&["apply", "-f", file.to_str().unwrap()]);
    // The printer columns tell where a tenant lives and whether its placement holds.
    let listed = kubectl_until(
        &api,
        &["get", "tenantplacements", "-n", "platform"],
        |text| {
            row(text, "broken").is_some_and(|r| r.contains(&"TargetNotFound"))
                && row(text, "acme").is_some()
        },
    )
    .await;
    assert!(listed.contains("AGGREGATE"), "{listed}");
    let acme_line = listed.lines().find(|l| l.starts_with("acme")).unwrap();
    assert!(
        acme_line.contains("agg-1") && acme_line.contains("True"),
        "{listed}"
    );
    let reason = api.kubectl_ok(&[
        "get",
        "tenantplacement",
        "broken",
        "-n",
        "platform",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Accepted\")].reason}",
    ]);
    assert_eq!(reason, "TargetNotFound");
    let shards = api.kubectl_ok(&["get", "shards", "-n", "platform"]);
    assert!(shards.contains("aggregate"), "{shards}");
    eventually("acme in the data plane's table", PATIENCE, || async {
        let reply = HttpClient::http1()
            .get(&format!(
                "http://{}/admin/routing?tenant=acme",
                dp.admin_addr
            ))
            .await
            .ok()?;
        (reply.status == 200).then_some(())
    })
    .await;

    // The API: a ServiceAccount bound to the shipped rebalancer role may look placements up;
    // one without the role may not; a made-up token is no one.
    let rebalancer = pavilion_tests::kube::workspace_file("deploy/kubernetes/rebalancer.yaml");
    api.kubectl_ok(&["apply", "-f", rebalancer.to_str().unwrap()]);
    api.kubectl_ok(&["create", "serviceaccount", "intruder", "-n", "platform"]);
    let token = |account: &str| {
        api.kubectl_ok(&["create", "token", account, "-n", "platform"])
            .trim()
            .to_owned()
    };
    let (allowed, stranger) = (token("rebalancer"), token("intruder"));
    assert_eq!(
        api_status(&cp, "/v1/placements/acme", Some(&allowed)).await,
        200
    );
    assert_eq!(
        api_status(&cp, "/v1/placements/acme", Some(&allowed)).await,
        200,
        "remembered"
    );
    assert_eq!(
        api_status(&cp, "/v1/status", Some(&allowed)).await,
        403,
        "not in the role"
    );
    assert_eq!(
        api_status(&cp, "/v1/placements/acme", Some(&stranger)).await,
        403
    );
    assert_eq!(
        api_status(&cp, "/v1/placements/acme", Some("made-up")).await,
        401
    );
    assert_eq!(api_status(&cp, "/v1/placements/acme", None).await, 401);
    assert_eq!(
        api_status(&cp, "/health", None).await,
        200,
        "health stays open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalancing_plan_survives_the_leader_being_stopped_half_way() {
    use sha2::Digest as _;
    let api = KubeApiServer::start();
    let (one, two) = (
        Upstream::start("agg-1").await.unwrap(),
        Upstream::start("agg-2").await.unwrap(),
    );
    let hash: String = sha2::Sha256::digest(b"pvk_acme_key")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let manifests = tempfile::tempdir().unwrap();
    let file = manifests.path().join("platform.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{ name: platform }}\n---\n\
apiVersion: gateway.pavilion.dev/v1alpha1\nkind: Shard\nmetadata: {{ name: agg-1, namespace: platform }}\nspec: {{ service: aggregate, endpoints: ['{}'] }}\n---\n\
apiVersion: gateway.pavilion.dev/v1alpha1\nkind: Shard\nmetadata: {{ name: agg-2, namespace: platform }}\nspec: {{ service: aggregate, endpoints: ['{}'], readiness: /readiness }}\n---\n\
apiVersion: gateway.pavilion.dev/v1alpha1\nkind: TenantPlacement\nmetadata: {{ name: acme, namespace: platform }}\nspec: {{ tenant: acme, shards: {{ aggregate: agg-1 }} }}\n---\n\
apiVersion: gateway.pavilion.dev/v1alpha1\nkind: ApiKey\nmetadata: {{ name: acme, namespace: shop }}\nspec: {{ sha256: '{hash}', scopes: [read], tenants: [acme] }}\n---\n\
apiVersion: gateway.pavilion.dev/v1alpha1\nkind: Route\nmetadata: {{ name: commands, namespace: shop }}\nspec:\n  rules:\n    - auth: {{ apiKeys: {{}} }}\n      tenancy: {{}}\n      backends: [{{ service: aggregate }}]\n",
            one.url(),
            two.url()
        ),
    )
    .unwrap();
    api.kubectl_ok(&["create", "namespace", "shop"]);
    api.kubectl_ok(&["apply", "-f", file.to_str().unwrap()]);

    let leader = controller(&api, "leader", None).await;
    eventually("the first replica leads", PATIENCE, || {
        std::future::ready((api.lease_holder() == "leader").then_some(()))
    })
    .await;
    let follower = controller(&api, "follower", None).await;
    // The data plane follows the replica that survives.
    let dp = data_plane(&follower).await;
    let upstream_of = || async {
        HttpClient::http1()
            .get_with(
                &format!("http://{}/commands", dp.addr),
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
        let url = format!("http://{}{path}", follower.http_addr);
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
    let made = post(
        "/v1/rebalance/plans".into(),
        r#"{"tenant":"acme","service":"aggregate","targetShard":"agg-2"}"#,
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.text());
    let id = made.json()["id"].as_str().unwrap().to_owned();
    // The plan is a Kubernetes object.
    let listed = api.kubectl_ok(&["get", "rebalanceplans", "-n", "default"]);
    assert!(listed.contains(&id) && listed.contains("agg-2"), "{listed}");

    // Applied through the follower, and the leader stopped at once: the follower takes the
    // lease over and carries the plan to its end.
    let applied = post(format!("/v1/rebalance/plans/{id}/apply"), "").await;
    assert_eq!(applied.status, 202, "{}", applied.text());
    leader.stop().await;
    let plan = eventually("the plan completed by the new leader", PATIENCE, || async {
        let plan =
            pavilion_tests::control_api(follower.http_addr, &format!("/v1/rebalance/plans/{id}"))
                .await
                .json();
        (plan["state"] == "Completed").then_some(plan)
    })
    .await;
    assert_eq!(api.lease_holder(), "follower", "{plan}");
    assert_eq!(upstream_of().await.as_deref(), Some("agg-2"));
    let shard = api.kubectl_ok(&[
        "get",
        "tenantplacement",
        "acme",
        "-n",
        "platform",
        "-o",
        "jsonpath={.spec.shards.aggregate}",
    ]);
    assert_eq!(shard, "agg-2");
    let state = kubectl_until(&api, &["get", "rebalanceplan", &id, "-n", "default"], |t| {
        t.contains("Completed")
    })
    .await;
    assert!(
        state.contains("agg-1") && state.contains("agg-2"),
        "{state}"
    );
}

/// One row of a `kubectl get` table as columns, by the row's first column.
fn row<'a>(table: &'a str, name: &str) -> Option<Vec<&'a str>> {
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|w| w.first() == Some(&name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_shows_verdicts_with_reasons_events_short_names_and_typed_fields() {
    let api = KubeApiServer::start();
    api.kubectl_ok(&["create", "namespace", "shop"]);
    let upstream = Upstream::start("a").await.unwrap();
    let cp = controller(&api, "replica-1", None).await;

    // A younger route claiming an older one's match is accepted with a warning, and the
    // REASON column says so.
    api.apply(&route("first", &upstream.url()).replace("first.example.com", "w.example.com"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    api.apply(
        &route("second", &upstream.url())
            .replace("second.example.com", "w.example.com")
            .replace("/second", "/first"),
    );
    let table = kubectl_until(&api, &["get", "rt", "-n", "shop"], |t| {
        row(t, "second").is_some_and(|r| r.contains(&"AcceptedWithWarnings"))
    })
    .await;
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "HOSTS", "ACCEPTED", "PROGRAMMED", "REASON", "AGE"]
    );
    assert_eq!(
        row(&table, "first").unwrap()[2..5],
        ["True", "False", "NoDataPlanes"]
    );

    // A bad edit: Accepted=False with its reason, and an event on the object.
    api.apply(&route("first", "ftp://x:1").replace("first.example.com", "w.example.com"));
    kubectl_until(&api, &["get", "rt", "-n", "shop"], |t| {
        row(t, "first").is_some_and(|r| r[2..5] == ["False", "False", "Invalid"])
    })
    .await;
    let described = kubectl_until(&api, &["describe", "route", "first", "-n", "shop"], |t| {
        t.contains("Warning") && t.contains("serving generation 1")
    })
    .await;
    assert!(described.contains("Invalid"), "{described}");
    // Fixed: a Normal event says it is accepted again.
    api.apply(&route("first", &upstream.url()).replace("first.example.com", "w.example.com"));
    let events = kubectl_until(
        &api,
        &[
            "get",
            "events",
            "-n",
            "shop",
            "--field-selector",
            "involvedObject.name=first",
        ],
        |t| t.contains("Normal") && t.contains("Accepted"),
    )
    .await;
    assert!(events.contains("Warning"), "{events}");

    // Policy attachment: the route lists the policy, the policy the routes it reached.
    api.apply("apiVersion: gateway.pavilion.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: { name: first-limit, namespace: shop }\nspec:\n  targetRef: { kind: Route, name: first }\n  limits: [{ key: [clientIp], requests: 100, per: 1s }]\n");
    let attached = kubectl_until(
        &api,
        &[
            "get",
            "route",
            "first",
            "-n",
            "shop",
            "-o",
            "jsonpath={.status.policies[*].name}",
        ],
        |t| t == "first-limit",
    )
    .await;
    assert_eq!(attached, "first-limit");
    let reached = kubectl_until(
        &api,
        &[
            "get",
            "rlp",
            "first-limit",
            "-n",
            "shop",
            "-o",
            "jsonpath={.status.reached.count} {.status.reached.routes[*]}",
        ],
        |t| !t.is_empty(),
    )
    .await;
    assert_eq!(reached, "1 shop/first");
    // Removed, it leaves the route's status (a merge patch must clear the field).
    api.kubectl_ok(&["delete", "rlp", "first-limit", "-n", "shop"]);
    kubectl_until(
        &api,
        &[
            "get",
            "route",
            "first",
            "-n",
            "shop",
            "-o",
            "jsonpath={.status.policies}",
        ],
        |t| t.is_empty(),
    )
    .await;

    // An API key without keyId shows its name as KEY ID.
    api.apply(&format!(
        "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: ApiKey\nmetadata: {{ name: mobile, namespace: shop }}\nspec:\n  sha256: {}\n  scopes: [read]\n",
        "ab".repeat(32)
    ));
    kubectl_until(&api, &["get", "ak", "-n", "shop"], |t| {
        row(t, "mobile").is_some_and(|r| r.get(1) == Some(&"mobile"))
    })
    .await;

    // Every short name works, and `kubectl explain` shows every field's type.
    api.kubectl_ok(&[
        "get",
        "rt,rlp,cors,tp,shard,ak,revocation,rbp",
        "-n",
        "shop",
    ]);
    for kind in [
        "routes",
        "shards",
        "tenantplacements",
        "ratelimitpolicies",
        "corspolicies",
        "apikeys",
        "tokenrevocations",
        "rebalanceplans",
    ] {
        let explained = api.kubectl_ok(&["explain", kind, "--recursive"]);
        let untyped: Vec<&str> = explained
            .lines()
            .filter(|l| l.trim_end().ends_with("<>"))
            // A list of tenant ids or a map of them to roles: no single OpenAPI type.
            .filter(|l| !(kind == "apikeys" && l.trim_start().starts_with("tenants")))
            .collect();
        assert!(untyped.is_empty(), "{kind}: {untyped:?}");
    }
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_examples_apply_in_order_on_an_empty_cluster_and_are_all_accepted() {
    let api = KubeApiServer::start();
    let namespaces = pavilion_tests::kube::workspace_file("examples/namespaces.yaml");
    let config = pavilion_tests::kube::workspace_file("examples/config");
    api.kubectl_ok(&["apply", "-f", namespaces.to_str().unwrap()]);
    api.kubectl_ok(&["apply", "-f", config.to_str().unwrap()]);
    let cp = controller(&api, "replica-1", None).await;
    // Every resource of the examples, by the category all Pavilion kinds share.
    // Every kind's rows end with ACCEPTED, PROGRAMMED, REASON, AGE.
    let accepted = |row: &Vec<&str>| row.len().checked_sub(4).map(|i| row[i] == "True");
    let table = kubectl_until(&api, &["get", "pavilion", "-A", "--no-headers"], |t| {
        let rows: Vec<Vec<&str>> = t.lines().map(|l| l.split_whitespace().collect()).collect();
        rows.len() >= 12 && rows.iter().all(|r| accepted(r) == Some(true))
    })
    .await;
    assert!(
        table.contains("tenantplacement.gateway.pavilion.dev/acme"),
        "{table}"
    );
    cp.stop().await;
}

/// The API server's count of requests for one Route by name (`apiserver_request_total`,
/// namespace scope; this API server labels a custom resource's GET as `LIST`, newer ones as
/// `GET`). Lists across all namespaces are counted apart.
fn route_gets(api: &KubeApiServer) -> f64 {
    api.kubectl_ok(&["get", "--raw", "/metrics"])
        .lines()
        .filter(|line| {
            line.starts_with("apiserver_request_total{")
                && line.contains(r#"resource="routes""#)
                && line.contains(r#"scope="namespace""#)
                && line.contains(r#"subresource="""#)
                && (line.contains(r#"verb="GET""#) || line.contains(r#"verb="LIST""#))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_term_reads_every_status_in_one_list_and_rewrites_only_what_is_wrong() {
    let api = KubeApiServer::start();
    api.kubectl_ok(&["create", "namespace", "shop"]);
    let a = Upstream::start("a").await.unwrap();
    let names = ["r0", "r1", "r2", "r3", "r4"];
    for name in names {
        api.apply(&route(name, &a.url()));
    }
    let cp = controller(&api, "replica-1", None).await;
    // Read as lists across namespaces: a read in the namespace would count as the control
    // plane's.
    let list = |path: &str| {
        let flag = format!("jsonpath={path}");
        api.kubectl_ok(&["get", "routes", "-A", "-o", &flag])
    };
    let reasons = "{range .items[*]}{.metadata.name}={.status.reason} {end}";
    let written = kubectl_until(
        &api,
        &["get", "routes", "-A", "-o", &format!("jsonpath={reasons}")],
        |t| t.split_whitespace().filter(|w| !w.ends_with('=')).count() == names.len(),
    )
    .await;
    // `name=value` pairs as the jsonpaths below print them.
    let value_of = |text: &str, name: &str| {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")).map(str::to_owned))
    };
    let expected = value_of(&written, "r0").expect("r0 has a status");
    cp.stop().await;

    // Someone edits one status while no control plane runs.
    edit_status_by_hand(&api, "r0");
    let versions = "{range .items[*]}{.metadata.name}={.metadata.resourceVersion} {end}";
    let before = list(versions);
    let gets = route_gets(&api);

    let cp = controller(&api, "replica-1", None).await;
    eventually("the edited status to be put right", PATIENCE, || async {
        (value_of(&list(reasons), "r0") == Some(expected.clone())).then_some(())
    })
    .await;
    let after = list(versions);
    for name in &names[1..] {
        assert_eq!(
            value_of(&after, name),
            value_of(&before, name),
            "{name}: a right status is not written again"
        );
    }
    assert_ne!(value_of(&after, "r0"), value_of(&before, "r0"));
    assert_eq!(
        route_gets(&api),
        gets,
        "the new term read the statuses in lists, not one GET per Route"
    );
    cp.stop().await;
}
