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
use sha2::{Digest, Sha256};

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

/// An API key `pvk_<id>` of namespace `shop` with `extra` spec lines.
fn api_key(id: &str, extra: &str) -> String {
    let hash: String = Sha256::digest(format!("pvk_{id}").as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!(
        "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: ApiKey\nmetadata: {{ name: {id}, namespace: shop }}\nspec:\n  sha256: '{hash}'\n  scopes: [read, write]\n{extra}"
    )
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
";

struct Platform {
    cp: ControlPlane,
    dp: DataPlane,
    dir: tempfile::TempDir,
    _upstreams: Vec<Upstream>,
}

async fn platform() -> Platform {
    let upstreams = vec![
        Upstream::start("agg-1a").await.unwrap(),
        Upstream::start("agg-1b").await.unwrap(),
        Upstream::start("agg-2").await.unwrap(),
        Upstream::start("proj-1").await.unwrap(),
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
    write(
        d,
        "agg-2.yaml",
        &shard("agg-2", "aggregate", &[&upstreams[2].url()]),
    );
    write(
        d,
        "proj-1.yaml",
        &shard("proj-1", "projection", &[&upstreams[3].url()]),
    );
    write(
        d,
        "acme.yaml",
        &placement("acme", "acme", "aggregate: agg-1, projection: proj-1"),
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
        _upstreams: upstreams,
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
    assert!(acme["services"].get("runner").is_none());
    refused(
        &p.control("/v1/placements/initech").await,
        404,
        "unknown_tenant",
    );
    let summary = p.admin("/admin/routing").await.json();
    assert_eq!(
        (summary["tenants"].as_u64(), summary["shards"].as_u64()),
        (Some(2), Some(3))
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
