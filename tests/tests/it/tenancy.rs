//! Multi-tenant routing end to end in process: Shard and TenantPlacement resources in a
//! directory, compiled by the control plane and streamed to a data plane, in front of real
//! upstreams standing for the shards. Tenant enforcement, roles, placement lookups (equal on
//! both halves), moves, and rejected placements.

use std::path::Path;
use std::time::Duration;

use pavilion_control::{Config as ControlConfig, ControlPlane, SourceSpec};
use pavilion_data::{Config as DataConfig, DataPlane};
use pavilion_tests::client::{HttpClient, Reply};
use pavilion_tests::{Upstream, condition, eventually};
use serde_json::Value;

const PATIENCE: Duration = Duration::from_secs(5);

fn write(dir: &Path, name: &str, text: &str) {
    // Written aside and renamed in, so the source never reads half a file.
    let aside = dir.join(format!(".{name}.tmp"));
    std::fs::write(&aside, text).unwrap();
    std::fs::rename(&aside, dir.join(name)).unwrap();
}

fn shard(name: &str, service: &str, endpoints: &[&str]) -> String {
    format!(
        "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: Shard\nmetadata: {{ name: {name}, namespace: platform }}\nspec:\n  service: {service}\n  endpoints: [{}]\n",
        endpoints
            .iter()
            .map(|e| format!("'{e}'"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn placement(name: &str, tenant: &str, shards: &str) -> String {
    format!(
        "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: TenantPlacement\nmetadata: {{ name: {name}, namespace: platform }}\nspec:\n  tenant: {tenant}\n  shards: {{ {shards} }}\n"
    )
}

fn api_key(id: &str, extra: &str) -> String {
    pavilion_tests::api_key_resource(id, "read, write, admin", extra)
}

const ROUTE: &str = "apiVersion: gateway.pavilion.dev/v1alpha1
kind: Route
metadata: { name: platform-api, namespace: shop }
spec:
  rules:
    - matches: [{ path: { type: PathPrefix, value: /v1/commands } }]
      auth: { apiKeys: {} }
      tenancy: { required: true }
      backends: [{ service: aggregate }]
    - matches: [{ path: { type: PathPrefix, value: /v1/query } }]
      auth: { apiKeys: {} }
      tenancy: {}
      authorize: { roles: [tenant-admin, tenant-analyst] }
      backends: [{ service: projection }]
    - matches: [{ path: { type: PathPrefix, value: /admin/runner } }]
      auth: { apiKeys: {} }
      tenancy: {}
      authorize: { roles: [platform-admin] }
      backends: [{ service: runner }]
";

struct Platform {
    cp: ControlPlane,
    dp: DataPlane,
    dir: tempfile::TempDir,
    upstreams: Vec<Upstream>,
}

async fn platform() -> Platform {
    let upstreams = vec![
        Upstream::start("agg-1a").await.unwrap(),
        Upstream::start("agg-1b").await.unwrap(),
        Upstream::start("agg-2").await.unwrap(),
        Upstream::start("proj-1").await.unwrap(),
        Upstream::start("run-1").await.unwrap(),
    ];
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        d,
        "agg-1.yaml",
        &shard(
            "agg-1",
            "aggregate",
            &[&upstreams[0].url(), &upstreams[1].url()],
        ),
    );
    // agg-2 has a readiness gate (its upstream answers it).
    write(
        d,
        "agg-2.yaml",
        &format!(
            "{}  readiness: /readiness\n",
            shard("agg-2", "aggregate", &[&upstreams[2].url()])
        ),
    );
    write(
        d,
        "proj-1.yaml",
        &shard("proj-1", "projection", &[&upstreams[3].url()]),
    );
    write(
        d,
        "run-1.yaml",
        &shard("run-1", "runner", &[&upstreams[4].url()]),
    );
    write(
        d,
        "acme.yaml",
        &placement(
            "acme",
            "acme",
            "aggregate: agg-1, projection: proj-1, runner: run-1",
        ),
    );
    write(
        d,
        "globex.yaml",
        &placement("globex", "globex", "aggregate: agg-2"),
    );
    write(d, "route.yaml", ROUTE);
    write(
        d,
        "keys.yaml",
        &[
            api_key("acme", "  tenants: { acme: [tenant-admin] }\n"),
            api_key("globex", "  tenants: [globex]\n"),
            api_key("ops", "  roles: [platform-admin]\n"),
        ]
        .join("---\n"),
    );
    let cp = pavilion_control::start(ControlConfig {
        api_tokens: vec![pavilion_tests::API_TOKEN.into()],
        ..ControlConfig::local(SourceSpec::Dir(d.to_owned()))
    })
    .await
    .unwrap();
    let mut config = DataConfig::local();
    config.control_planes = vec![format!("http://{}", cp.grpc_addr)];
    config.node_id = "dp-tenancy".into();
    let dp = pavilion_data::start(config).await.unwrap();
    eventually("the first snapshot", PATIENCE, || async {
        (!dp.version().is_empty()).then_some(())
    })
    .await;
    Platform {
        cp,
        dp,
        dir,
        upstreams,
    }
}

impl Platform {
    async fn get(&self, path: &str, key: &str, tenants: &[&str]) -> Reply {
        let key = format!("pvk_{key}");
        let mut headers = vec![("x-api-key", key.as_str())];
        headers.extend(tenants.iter().map(|t| ("x-tenant-id", *t)));
        HttpClient::http1()
            .get_with(&format!("http://{}{path}", self.dp.addr), &headers)
            .await
            .unwrap()
    }

    async fn control(&self, path: &str) -> Reply {
        pavilion_tests::control_api(self.cp.http_addr, path).await
    }

    async fn post(&self, path: &str, body: &str) -> Reply {
        let request = http::Request::post(format!("http://{}{path}", self.cp.http_addr))
            .header(
                "authorization",
                format!("Bearer {}", pavilion_tests::API_TOKEN),
            )
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                body.to_owned(),
            )))
            .unwrap();
        HttpClient::http1().send(request).await.unwrap()
    }

    async fn admin(&self, path: &str) -> Reply {
        HttpClient::http1()
            .get(&format!("http://{}{path}", self.dp.admin_addr))
            .await
            .unwrap()
    }
}

#[track_caller]
fn refused(reply: &Reply, status: u16, code: &str) -> String {
    assert_eq!(reply.status.as_u16(), status, "{}", reply.text());
    let body = reply.json();
    assert_eq!(body["error"]["code"], code, "{body}");
    body["error"]["message"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn requests_reach_their_tenants_shard_and_only_members_get_through() {
    let p = platform().await;

    // A member reaches its tenant's aggregate shard, spread over both endpoints; the
    // upstream learns the tenant from the gateway.
    let mut served = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let reply = p.get("/v1/commands/order/1", "acme", &["acme"]).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.json()["headers"]["x-tenant-id"], "acme");
        served.insert(reply.header("x-upstream").unwrap().to_owned());
    }
    assert_eq!(served.into_iter().collect::<Vec<_>>(), ["agg-1a", "agg-1b"]);

    // The tenant header: required, well-formed, once.
    refused(
        &p.get("/v1/commands/x", "acme", &[]).await,
        400,
        "missing_tenant",
    );
    for bad in ["ACME", "acme_1", "-acme", ""] {
        refused(
            &p.get("/v1/commands/x", "acme", &[bad]).await,
            400,
            "invalid_tenant",
        );
    }
    refused(
        &p.get("/v1/commands/x", "acme", &["acme", "acme"]).await,
        400,
        "invalid_tenant",
    );

    // Membership before existence: a stranger learns nothing about which tenants exist.
    let message = refused(
        &p.get("/v1/commands/x", "acme", &["globex"]).await,
        403,
        "tenant_forbidden",
    );
    assert!(
        message.contains("shop/platform-api") && message.contains("globex"),
        "{message}"
    );
    refused(
        &p.get("/v1/commands/x", "acme", &["initech"]).await,
        403,
        "tenant_forbidden",
    );

    // A platform admin acts on any tenant; an unknown one is 404, the same every time.
    let reply = p.get("/v1/commands/x", "ops", &["globex"]).await;
    assert_eq!(reply.header("x-upstream"), Some("agg-2"));
    for _ in 0..2 {
        refused(
            &p.get("/v1/commands/x", "ops", &["initech"]).await,
            404,
            "unknown_tenant",
        );
    }

    // Roles: acme's key holds tenant-admin in acme; globex's key is a member without roles.
    let reply = p.get("/v1/query/orders", "acme", &["acme"]).await;
    assert_eq!(
        reply.header("x-upstream"),
        Some("proj-1"),
        "{}",
        reply.text()
    );
    let message = refused(
        &p.get("/v1/query/orders", "globex", &["globex"]).await,
        403,
        "forbidden",
    );
    assert!(
        message.contains("tenant-admin, tenant-analyst") && message.contains("globex"),
        "{message}"
    );
    // The runners' admin API: platform admins only, on the tenant's runner shard.
    let reply = p.get("/admin/runner/jobs", "ops", &["acme"]).await;
    assert_eq!(
        reply.header("x-upstream"),
        Some("run-1"),
        "{}",
        reply.text()
    );
    refused(
        &p.get("/admin/runner/jobs", "acme", &["acme"]).await,
        403,
        "forbidden",
    );
    // A placed tenant without a shard of the kind the rule needs.
    refused(
        &p.get("/v1/query/orders", "ops", &["globex"]).await,
        503,
        "no_placement",
    );

    // The tenant label of the metric is bounded; the access log would carry it too.
    let metrics = p.admin("/metrics").await.text();
    assert!(
        metrics.contains("pavilion_tenant_requests_total{class=\"2xx\",tenant=\"acme\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn both_halves_answer_a_placement_lookup_alike_and_a_move_takes_effect() {
    let p = platform().await;
    for tenant in ["acme", "globex"] {
        let control = p.control(&format!("/v1/placements/{tenant}")).await;
        assert_eq!(control.status, 200, "{}", control.text());
        let data = p.admin(&format!("/admin/routing?tenant={tenant}")).await;
        assert_eq!(control.json(), data.json(), "{tenant}");
    }
    let acme = p.control("/v1/placements/acme").await.json();
    assert_eq!(acme["services"]["aggregate"]["shard"], "agg-1");
    assert_eq!(acme["services"]["projection"]["shard"], "proj-1");
    assert_eq!(acme["services"]["runner"]["shard"], "run-1");
    refused(
        &p.control("/v1/placements/initech").await,
        404,
        "unknown_tenant",
    );
    let summary = p.admin("/admin/routing").await.json();
    assert_eq!(
        (summary["tenants"].as_u64(), summary["shards"].as_u64()),
        (Some(2), Some(4))
    );
    let page = p.control("/v1/placements?limit=1").await.json();
    assert_eq!(page["items"][0]["tenant"], "acme");
    let next = page["continue"].as_str().unwrap().to_owned();
    let page = p
        .control(&format!("/v1/placements?limit=1&continue={next}"))
        .await
        .json();
    assert_eq!(page["items"][0]["tenant"], "globex");
    assert!(page["continue"].is_null());

    // Moving a tenant is one small edit; its revision changes, and so does the shard.
    let before = acme["revision"].as_str().unwrap().to_owned();
    write(
        p.dir.path(),
        "acme.yaml",
        &placement("acme", "acme", "aggregate: agg-2, projection: proj-1"),
    );
    eventually("acme served by agg-2", PATIENCE, || async {
        let reply = p.get("/v1/commands/x", "acme", &["acme"]).await;
        (reply.header("x-upstream") == Some("agg-2")).then_some(())
    })
    .await;
    let moved = p.admin("/admin/routing?tenant=acme").await.json();
    assert_ne!(moved["revision"], before.as_str());
    assert_eq!(moved["services"]["aggregate"]["shard"], "agg-2");
}

#[tokio::test]
async fn placements_naming_missing_or_mismatched_shards_or_a_placed_tenant_are_rejected_alone() {
    let p = platform().await;
    let d = p.dir.path();
    write(
        d,
        "z-unknown.yaml",
        &placement("initech", "initech", "aggregate: agg-9"),
    );
    write(
        d,
        "z-kind.yaml",
        &placement("hooli", "hooli", "aggregate: proj-1"),
    );
    write(
        d,
        "z-twice.yaml",
        &placement("acme-again", "acme", "aggregate: agg-2"),
    );
    let status: Value = eventually("the rejections in the status", PATIENCE, || async {
        let status = p.control("/v1/status").await.json();
        let count = status["resources"]
            .as_array()?
            .iter()
            .filter(|r| r["kind"] == "TenantPlacement")
            .count();
        (count == 5).then_some(status)
    })
    .await;
    let find = |name: &str| {
        status["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name && r["kind"] == "TenantPlacement")
            .unwrap()
            .clone()
    };
    for (name, reason, text) in [
        ("initech", "TargetNotFound", "no accepted Shard `agg-9`"),
        ("hooli", "Invalid", "serves projection, not aggregate"),
        ("acme-again", "Duplicate", "tenant `acme` is already placed"),
    ] {
        let resource = find(name);
        let accepted = condition(&resource, "Accepted");
        assert_eq!(accepted["status"], "False", "{name}");
        assert_eq!(accepted["reason"], reason, "{name}");
        assert!(
            accepted["message"].as_str().unwrap().contains(text),
            "{name}: {accepted}"
        );
    }
    // The others keep serving: acme still on agg-1, and Programmed.
    let reply = p.get("/v1/commands/x", "acme", &["acme"]).await;
    assert!(reply.header("x-upstream").unwrap().starts_with("agg-1"));
    let version = status["snapshot"]["version"].as_str().unwrap().to_owned();
    eventually("acme programmed", PATIENCE, || async {
        let status = p.control("/v1/status").await.json();
        let acme = status["resources"]
            .as_array()?
            .iter()
            .find(|r| r["name"] == "acme" && r["kind"] == "TenantPlacement")?
            .clone();
        (status["snapshot"]["version"] == version.as_str()
            && condition(&acme, "Programmed")["status"] == "True")
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_rebalancer_moves_a_tenant_behind_a_readiness_gate_under_load_and_rolls_it_back() {
    let p = platform().await;
    let agg_2 = &p.upstreams[2];

    // Plans that cannot be made, each with its reason.
    for (body, status, code) in [
        (
            r#"{"tenant":"initech","service":"aggregate","targetShard":"agg-2"}"#,
            404,
            "unknown_tenant",
        ),
        (
            r#"{"tenant":"acme","service":"aggregate","targetShard":"agg-9"}"#,
            404,
            "unknown_shard",
        ),
        (
            r#"{"tenant":"acme","service":"aggregate","targetShard":"proj-1"}"#,
            400,
            "wrong_service",
        ),
        (
            r#"{"tenant":"acme","service":"aggregate","targetShard":"agg-1"}"#,
            409,
            "already_placed",
        ),
        (
            r#"{"tenant":"acme","service":"billing","targetShard":"agg-2"}"#,
            400,
            "invalid_service",
        ),
        (r#"{"tenant":"acme"}"#, 400, "invalid_request"),
    ] {
        refused(&p.post("/v1/rebalance/plans", body).await, status, code);
    }
    refused(
        &p.control("/v1/rebalance/plans/nope").await,
        404,
        "unknown_plan",
    );

    // A placement whose latest edit was refused (the last accepted version serves) is not
    // moved until it is fixed.
    write(
        p.dir.path(),
        "globex.yaml",
        &placement("globex", "globex", "aggregate: Agg_2"),
    );
    let stale = eventually("the refused edit", PATIENCE, || async {
        let reply = p
            .post(
                "/v1/rebalance/plans",
                r#"{"tenant":"globex","service":"aggregate","targetShard":"agg-1"}"#,
            )
            .await;
        (reply.status == 409).then_some(reply)
    })
    .await;
    refused(&stale, 409, "placement_not_accepted");
    write(
        p.dir.path(),
        "globex.yaml",
        &placement("globex", "globex", "aggregate: agg-2"),
    );

    let made = p
        .post(
            "/v1/rebalance/plans",
            r#"{"tenant":"acme","service":"aggregate","targetShard":"agg-2"}"#,
        )
        .await;
    assert_eq!(made.status, 201, "{}", made.text());
    let plan = made.json();
    assert_eq!(
        (
            plan["state"].as_str(),
            plan["fromShard"].as_str(),
            plan["targetShard"].as_str()
        ),
        (Some("Pending"), Some("agg-1"), Some("agg-2"))
    );
    let id = plan["id"].as_str().unwrap().to_owned();

    // The target's gate says not ready: apply is refused with the shard's own reason.
    agg_2.set_not_ready("projection lag 1200 > 100");
    let message = refused(
        &p.post(&format!("/v1/rebalance/plans/{id}/apply"), "").await,
        409,
        "target_not_ready",
    );
    assert!(
        message.contains("projection lag 1200 > 100") && message.contains("agg-2"),
        "{message}"
    );
    assert_eq!(
        p.control(&format!("/v1/rebalance/plans/{id}")).await.json()["state"],
        "Pending"
    );

    // Clients keep sending while the move happens: not one request fails.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (url, stop) = (format!("http://{}/v1/commands/x", p.dp.addr), stop.clone());
        clients.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let reply = HttpClient::http1()
                    .get_with(&url, &[("x-api-key", "pvk_acme"), ("x-tenant-id", "acme")])
                    .await;
                match reply {
                    Ok(r) if r.status == 200 => ok += 1,
                    other => failed.push(format!("{:?}", other.map(|r| r.status))),
                }
            }
            (ok, failed)
        }));
    }
    agg_2.set_ready();
    let applied = p.post(&format!("/v1/rebalance/plans/{id}/apply"), "").await;
    assert_eq!(applied.status, 202, "{}", applied.text());
    let done = eventually("the plan completed", PATIENCE, || async {
        let plan = p.control(&format!("/v1/rebalance/plans/{id}")).await.json();
        (plan["state"] == "Completed").then_some(plan)
    })
    .await;
    // After every data plane runs the new placement, new requests reach the target only.
    for _ in 0..10 {
        let reply = p.get("/v1/commands/x", "acme", &["acme"]).await;
        assert_eq!(reply.header("x-upstream"), Some("agg-2"));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for client in clients {
        let (ok, failed) = client.await.unwrap();
        assert!(ok > 0 && failed.is_empty(), "{ok} ok, failed: {failed:?}");
    }
    let states: Vec<&str> = done["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states,
        [
            "Pending",
            "Pending",
            "Applying",
            "WaitingForDataPlanes",
            "Completed"
        ],
        "{done}"
    );
    assert!(
        done["steps"][1]["message"]
            .as_str()
            .unwrap()
            .contains("apply refused")
    );
    // The placement in the source names the target now.
    let file = std::fs::read_to_string(p.dir.path().join("acme.yaml")).unwrap();
    assert!(file.contains("aggregate: agg-2"), "{file}");

    // Rollback returns to the shard the plan started from.
    let rolled = p
        .post(&format!("/v1/rebalance/plans/{id}/rollback"), "")
        .await;
    assert_eq!(rolled.status, 202, "{}", rolled.text());
    eventually("rolled back", PATIENCE, || async {
        let plan = p.control(&format!("/v1/rebalance/plans/{id}")).await.json();
        (plan["state"] == "RolledBack").then_some(())
    })
    .await;
    let reply = p.get("/v1/commands/x", "acme", &["acme"]).await;
    assert!(reply.header("x-upstream").unwrap().starts_with("agg-1"));
    // A plan applied after someone else moved the tenant fails instead of overwriting.
    let again = p
        .post(
            "/v1/rebalance/plans",
            r#"{"tenant":"acme","service":"aggregate","targetShard":"agg-2"}"#,
        )
        .await
        .json();
    let second = again["id"].as_str().unwrap().to_owned();
    write(
        p.dir.path(),
        "acme.yaml",
        &placement("acme", "acme", "aggregate: agg-3"),
    );
    write(
        p.dir.path(),
        "agg-3.yaml",
        &shard("agg-3", "aggregate", &[&p.upstreams[0].url()]),
    );
    eventually("the manual move served", PATIENCE, || async {
        let table = p.control("/v1/placements/acme").await.json();
        (table["services"]["aggregate"]["shard"] == "agg-3").then_some(())
    })
    .await;
    assert_eq!(
        p.post(&format!("/v1/rebalance/plans/{second}/apply"), "")
            .await
            .status,
        202
    );
    let failed = eventually("the stale plan failed", PATIENCE, || async {
        let plan = p
            .control(&format!("/v1/rebalance/plans/{second}"))
            .await
            .json();
        (plan["state"] == "Failed").then_some(plan)
    })
    .await;
    assert!(failed.to_string().contains("names agg-3 now"), "{failed}");
}
