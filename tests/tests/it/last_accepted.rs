//! A bad edit never takes a live resource down, on every source: the last accepted version
//! goes on serving (with its policies) while the status says why the edit was refused and
//! which version serves, also after a control-plane restart. A deletion still deletes, and
//! a resource that never was valid stays out.

use std::path::PathBuf;
use std::time::Duration;

use pavilion_control::kv::{KvAddress, open};
use pavilion_control::{Config as ControlConfig, ControlPlane, KubeOptions, SourceSpec};
use pavilion_data::{Config as DataConfig, DataPlane};
use pavilion_tests::client::HttpClient;
use pavilion_tests::kube::{CONTROL_TOKEN, KubeApiServer};
use pavilion_tests::nats::NatsServer;
use pavilion_tests::{Upstream, condition, eventually};
use serde_json::Value;

const PATIENCE: Duration = Duration::from_secs(20);

fn route(backend: &str) -> String {
    format!(
        "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: Route\nmetadata: {{ name: orders, namespace: shop }}\nspec:\n  rules:\n    - matches: [{{ path: {{ type: PathPrefix, value: /orders }} }}]\n      backends: [{{ url: '{backend}' }}]\n"
    )
}

const POLICY: &str = "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: { name: orders-limit, namespace: shop }\nspec:\n  targetRef: { kind: Route, name: orders }\n  limits: [{ key: [clientIp], requests: 1000, per: 1s }]\n";

/// Where the resources live, and how a control plane is started on them.
trait Source {
    /// Creates or replaces the resource `name` (`orders`, `orders-limit`).
    async fn put(&mut self, name: &str, yaml: &str);
    async fn delete(&mut self, name: &str);
    async fn control_plane(&self) -> ControlPlane;
    /// How a rejected resource's status names the version still serving (the start of it).
    fn serving(&self) -> &'static str;
}

async fn data_plane(cp: &ControlPlane, node: &str) -> DataPlane {
    let mut config = DataConfig::local();
    config.control_planes = vec![format!("http://{}", cp.grpc_addr)];
    config.node_id = node.into();
    pavilion_data::start(config).await.unwrap()
}

async fn served_by(dp: &DataPlane, want: Option<&str>) {
    let url = format!("http://{}/orders", dp.addr);
    eventually(&format!("/orders served by {want:?}"), PATIENCE, || {
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

/// The resource `name` in the control plane's `/v1/status`, once `check` holds for it.
async fn resource_when(cp: &ControlPlane, name: &str, check: impl Fn(&Value) -> bool) -> Value {
    eventually(&format!("{name} to reach the state"), PATIENCE, || async {
        let status = pavilion_tests::control_api(cp.http_addr, "/v1/status")
            .await
            .json();
        status["resources"]
            .as_array()?
            .iter()
            .find(|r| r["name"] == name)
            .filter(|r| check(r))
            .cloned()
    })
    .await
}

fn accepted(resource: &Value) -> &str {
    condition(resource, "Accepted")["status"]
        .as_str()
        .unwrap_or("")
}

async fn scenario(mut source: impl Source) {
    let a = Upstream::start("a").await.unwrap();
    let b = Upstream::start("b").await.unwrap();
    let cp = source.control_plane().await;
    let dp = data_plane(&cp, "before-restart").await;
    source.put("orders", &route(&a.url())).await;
    source.put("orders-limit", POLICY).await;
    served_by(&dp, Some("a")).await;
    resource_when(&cp, "orders-limit", |r| accepted(r) == "True").await;

    // A bad edit: refused, the last accepted version serves on, and the policy stays on it.
    source.put("orders", &route("ftp://x:1")).await;
    let refused = resource_when(&cp, "orders", |r| accepted(r) == "False").await;
    let message = condition(&refused, "Accepted")["message"].as_str().unwrap();
    let serving = source.serving();
    assert!(
        message.contains("spec.rules[0].backends[0].url")
            && message.contains(&format!("; serving {serving}")),
        "{refused}"
    );
    assert_eq!(condition(&refused, "Accepted")["reason"], "Invalid");
    let served = refused["serving"].as_str().unwrap_or_default().to_owned();
    assert!(served.starts_with(serving), "{refused}");
    served_by(&dp, Some("a")).await;
    let policy = resource_when(&cp, "orders-limit", |_| true).await;
    assert_eq!(accepted(&policy), "True", "{policy}");

    // A restarted control plane recalls the last accepted version from the source.
    dp.stop().await;
    cp.stop().await;
    let cp = source.control_plane().await;
    let dp = data_plane(&cp, "after-restart").await;
    served_by(&dp, Some("a")).await;
    let refused = resource_when(&cp, "orders", |r| accepted(r) == "False").await;
    assert_eq!(
        refused["serving"], served,
        "the same version, accepted at the same time"
    );
    assert_eq!(
        accepted(&resource_when(&cp, "orders-limit", |_| true).await),
        "True"
    );

    // Fixed: the new version serves.
    source.put("orders", &route(&b.url())).await;
    served_by(&dp, Some("b")).await;
    resource_when(&cp, "orders", |r| {
        accepted(r) == "True" && r["serving"].is_null()
    })
    .await;

    // A deletion deletes; the same name, invalid from the start, stays out.
    source.delete("orders").await;
    served_by(&dp, None).await;
    source.put("orders", &route("ftp://x:1")).await;
    let never = resource_when(&cp, "orders", |r| accepted(r) == "False").await;
    assert!(never["serving"].is_null(), "{never}");
    served_by(&dp, None).await;
    let policy = resource_when(&cp, "orders-limit", |r| accepted(r) == "False").await;
    assert_eq!(condition(&policy, "Accepted")["reason"], "TargetNotFound");
    dp.stop().await;
    cp.stop().await;
}

struct Directory {
    dir: tempfile::TempDir,
}

impl Source for Directory {
    async fn put(&mut self, name: &str, yaml: &str) {
        std::fs::write(self.path(name), yaml).unwrap();
    }

    async fn delete(&mut self, name: &str) {
        std::fs::remove_file(self.path(name)).unwrap();
    }

    async fn control_plane(&self) -> ControlPlane {
        pavilion_control::start(ControlConfig {
            api_tokens: vec![pavilion_tests::API_TOKEN.into()],
            ..ControlConfig::local(SourceSpec::Dir(self.dir.path().to_owned()))
        })
        .await
        .unwrap()
    }

    fn serving(&self) -> &'static str {
        "the version accepted at"
    }
}

impl Directory {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.yaml"))
    }
}

#[tokio::test]
async fn on_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    scenario(Directory { dir }).await;
}

struct Bucket {
    _nats: NatsServer,
    address: KvAddress,
    store: async_nats::jetstream::kv::Store,
}

impl Source for Bucket {
    async fn put(&mut self, name: &str, yaml: &str) {
        self.store
            .put(key(name), yaml.to_owned().into())
            .await
            .unwrap();
    }

    async fn delete(&mut self, name: &str) {
        self.store.delete(key(name)).await.unwrap();
    }

    async fn control_plane(&self) -> ControlPlane {
        pavilion_control::start(ControlConfig {
            api_tokens: vec![pavilion_tests::API_TOKEN.into()],
            ..ControlConfig::local(SourceSpec::Kv(self.address.clone()))
        })
        .await
        .unwrap()
    }

    fn serving(&self) -> &'static str {
        "the version accepted at"
    }
}

fn key(name: &str) -> String {
    if name == "orders" {
        "route.shop.orders".into()
    } else {
        format!("ratelimitpolicy.shop.{name}")
    }
}

#[tokio::test]
async fn on_a_kv_bucket() {
    let nats = NatsServer::start();
    let address: KvAddress = format!("{}?bucket=last-accepted", nats.url())
        .parse()
        .unwrap();
    let store = open(&address).await.unwrap();
    scenario(Bucket {
        _nats: nats,
        address,
        store,
    })
    .await;
}

struct Cluster {
    api: KubeApiServer,
}

impl Source for Cluster {
    async fn put(&mut self, _: &str, yaml: &str) {
        self.api.apply(yaml);
    }

    async fn delete(&mut self, name: &str) {
        let kind = if name == "orders" {
            "route"
        } else {
            "ratelimitpolicy"
        };
        self.api.kubectl_ok(&["delete", kind, name, "-n", "shop"]);
    }

    async fn control_plane(&self) -> ControlPlane {
        pavilion_control::start(ControlConfig {
            kube: KubeOptions {
                kubeconfig: Some(self.api.kubeconfig(CONTROL_TOKEN)),
                identity: "replica".into(),
                lease_duration: Duration::from_secs(3),
                ..KubeOptions::default()
            },
            api_tokens: vec![pavilion_tests::API_TOKEN.into()],
            ..ControlConfig::local(SourceSpec::Kube)
        })
        .await
        .unwrap()
    }

    fn serving(&self) -> &'static str {
        // Created as generation 1, edited badly into generation 2.
        "generation 1"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kubernetes() {
    let api = KubeApiServer::start();
    api.kubectl_ok(&["create", "namespace", "shop"]);
    scenario(Cluster { api }).await;
}
