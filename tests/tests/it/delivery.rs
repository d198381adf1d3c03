//! Control plane and data plane together, in process, over real gRPC: files become
//! traffic, status tells the truth, and ACK/NACK travel both ways.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use pavilion_control::{Config as ControlConfig, ControlPlane, SourceSpec};
use pavilion_data::{Config as DataConfig, DataPlane};
use pavilion_proto::delta::{Parts, diff};
use pavilion_proto::v1::snapshot_discovery_client::SnapshotDiscoveryClient;
use pavilion_proto::v1::snapshot_discovery_server::{SnapshotDiscovery, SnapshotDiscoveryServer};
use pavilion_proto::{Node, SnapshotRequest, SnapshotResponse};
use pavilion_tests::client::HttpClient;
use pavilion_tests::snapshot::{catch_all, prefix_rule, route, snapshot};
use pavilion_tests::{Upstream, condition, eventually};
use prost::Message;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const PATIENCE: Duration = Duration::from_secs(5);

fn route_yaml(name: &str, backend: &str) -> String {
    format!(
        "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: Route\nmetadata: {{ name: {name}, namespace: shop }}\nspec:\n  rules:\n    - matches: [{{ path: {{ type: PathPrefix, value: /{name} }} }}]\n      backends: [{{ url: '{backend}' }}]\n"
    )
}

async fn control_plane(dir: &Path, grpc: SocketAddr) -> ControlPlane {
    pavilion_control::start(ControlConfig {
        grpc_listen: grpc,
        api_tokens: vec![pavilion_tests::API_TOKEN.into()],
        ..ControlConfig::local(SourceSpec::Dir(dir.to_owned()))
    })
    .await
    .expect("control plane starts")
}

async fn data_plane(node: &str, cp: SocketAddr) -> DataPlane {
    let mut config = DataConfig::local();
    config.node_id = node.into();
    config.control_planes = vec![format!("http://{cp}")];
    pavilion_data::start(config)
        .await
        .expect("data plane starts")
}

async fn fetch_status(cp: &ControlPlane) -> Value {
    pavilion_tests::control_api(cp.http_addr, "/v1/status")
        .await
        .json()
}

/// The name of the upstream that served `path`, once it is `want`.
async fn served_by(dp: &DataPlane, path: &str, want: &str) {
    let url = format!("http://{}{path}", dp.addr);
    eventually(&format!("{path} served by {want}"), PATIENCE, || {
        let url = url.clone();
        async move {
            let reply = HttpClient::http1().get(&url).await.ok()?;
            (reply.header("x-upstream") == Some(want)).then_some(())
        }
    })
    .await
}

fn resource<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no resource {name} in {status}"))
}

#[tokio::test]
async fn files_become_traffic_and_status_tells_the_truth() {
    let a = Upstream::start("a").await.unwrap();
    let b = Upstream::start("b").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("orders.yaml"),
        route_yaml("orders", &a.url()),
    )
    .unwrap();
    let cp = control_plane(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let dp = data_plane("dp-1", cp.grpc_addr).await;

    served_by(&dp, "/orders", "a").await;
    std::fs::write(
        dir.path().join("orders.yaml"),
        route_yaml("orders", &b.url()),
    )
    .unwrap();
    served_by(&dp, "/orders", "b").await;

    // A broken file is rejected alone; the good route keeps serving.
    std::fs::write(
        dir.path().join("broken.yaml"),
        route_yaml("broken", "not-a-url"),
    )
    .unwrap();
    let status = eventually("the broken route in the status", PATIENCE, || async {
        let status = fetch_status(&cp).await;
        let found = status["resources"]
            .as_array()?
            .iter()
            .any(|r| r["name"] == "broken");
        found.then_some(status)
    })
    .await;
    let broken = resource(&status, "broken");
    let accepted = condition(broken, "Accepted");
    assert_eq!(accepted["status"], "False");
    assert_eq!(accepted["reason"], "Invalid");
    assert!(
        accepted["message"]
            .as_str()
            .unwrap()
            .starts_with("spec.rules[0].backends[0].url: `not-a-url`"),
        "{accepted}"
    );
    assert_eq!(
        broken["origin"],
        format!("{}:1", dir.path().join("broken.yaml").display())
    );
    served_by(&dp, "/orders", "b").await;

    // The node runs the current version, so the good route is Programmed.
    let version = status["snapshot"]["version"].as_str().unwrap().to_owned();
    let status = eventually("dp-1 running the current version", PATIENCE, || {
        let version = version.clone();
        let cp = &cp;
        async move {
            let status = fetch_status(cp).await;
            (status["nodes"][0]["version"] == version.as_str()).then_some(status)
        }
    })
    .await;
    assert_eq!(status["nodes"][0]["id"], "dp-1");
    assert_eq!(status["nodes"].as_array().unwrap().len(), 1);
    let orders = resource(&status, "orders");
    assert_eq!(condition(orders, "Accepted")["status"], "True");
    let programmed = condition(orders, "Programmed");
    assert_eq!(
        (programmed["status"].as_str(), programmed["reason"].as_str()),
        (Some("True"), Some("Programmed"))
    );
    assert_eq!(dp.version(), version);

    // Deleting the file removes the route.
    std::fs::remove_file(dir.path().join("orders.yaml")).unwrap();
    let url = format!("http://{}/orders", dp.addr);
    eventually("the route to disappear", PATIENCE, || {
        let url = url.clone();
        async move { (HttpClient::http1().get(&url).await.ok()?.status == 404).then_some(()) }
    })
    .await;
    dp.stop().await;
    cp.stop().await;
}

#[tokio::test]
async fn a_late_data_plane_gets_the_current_snapshot_at_once_and_reconnects_after_a_restart() {
    let a = Upstream::start("a").await.unwrap();
    let b = Upstream::start("b").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("r.yaml"), route_yaml("r", &a.url())).unwrap();
    let cp = control_plane(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let grpc = cp.grpc_addr;
    eventually("the control plane to be ready", PATIENCE, || async {
        fetch_status(&cp).await["ready"].as_bool().filter(|r| *r)
    })
    .await;
    let dp = data_plane("late", grpc).await;
    served_by(&dp, "/r", "a").await;

    // The control plane goes away: traffic continues on the last snapshot.
    cp.stop().await;
    served_by(&dp, "/r", "a").await;
    // It comes back (same address) with a changed config; the data plane reconnects.
    std::fs::write(dir.path().join("r.yaml"), route_yaml("r", &b.url())).unwrap();
    let cp = control_plane(dir.path(), grpc).await;
    served_by(&dp, "/r", "b").await;
    dp.stop().await;
    cp.stop().await;
}

#[tokio::test]
async fn the_control_plane_records_a_nack_and_reports_the_route_not_programmed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("r.yaml"),
        route_yaml("r", "http://127.0.0.1:9"),
    )
    .unwrap();
    let cp = control_plane(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let mut node = RawNode::open(&cp, "picky", false).await;
    let first = node.next().await;
    // Encoded once by the control plane, read as the message it is.
    let sent = pavilion_proto::Snapshot::decode(first.snapshot.clone()).unwrap();
    assert_eq!(sent.version, first.version);
    assert_eq!(sent.routes[0].name, "r");
    node.send(SnapshotRequest {
        version_info: String::new(),
        response_nonce: first.nonce.clone(),
        error_detail: "refusing on purpose".into(),
        ..Default::default()
    })
    .await;
    let status = eventually("the NACK in the status", PATIENCE, || async {
        let status = fetch_status(&cp).await;
        (status["nodes"][0]["lastError"] == "refusing on purpose").then_some(status)
    })
    .await;
    let programmed = condition(resource(&status, "r"), "Programmed");
    assert_eq!(programmed["status"], "False");
    assert_eq!(programmed["reason"], "Refused");
    assert_eq!(
        programmed["message"],
        "data plane picky refused the snapshot: refusing on purpose"
    );

    // An answer to a nonce that was never the latest is ignored; an ACK clears the refusal.
    for (nonce, error) in [("not-a-nonce", "stale refusal"), (first.nonce.as_str(), "")] {
        node.send(SnapshotRequest {
            version_info: first.version.clone(),
            response_nonce: nonce.to_owned(),
            error_detail: error.to_owned(),
            ..Default::default()
        })
        .await;
    }
    eventually("the ACK in the status", PATIENCE, || async {
        let status = fetch_status(&cp).await;
        (condition(resource(&status, "r"), "Programmed")["status"] == "True").then_some(())
    })
    .await;
    let metrics = HttpClient::http1()
        .get(&format!("http://{}/metrics", cp.http_addr))
        .await
        .unwrap()
        .text();
    assert!(
        metrics.contains("pavilion_control_snapshot_nacks_total 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("pavilion_control_snapshot_acks_total 1\n"),
        "{metrics}"
    );
    drop(node);
    cp.stop().await;
}

/// Statuses go to the sink in batches: every one of more documents than a batch holds is
/// written, the last (partial) batch too.
#[tokio::test]
async fn statuses_of_more_documents_than_a_batch_are_all_written() {
    let dir = tempfile::tempdir().unwrap();
    let routes: Vec<String> = (0..150)
        .map(|i| route_yaml(&format!("r{i}"), "http://127.0.0.1:9"))
        .collect();
    std::fs::write(dir.path().join("many.yaml"), routes.join("---\n")).unwrap();
    let _cp = control_plane(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let accepted = |i: usize| {
        let key = pavilion_crds::ResourceKey {
            kind: pavilion_crds::Kind::Route,
            namespace: "shop".into(),
            name: format!("r{i}").into(),
        };
        pavilion_control::dir_status::read_status(dir.path(), &key).is_some_and(|stored| {
            stored
                .conditions
                .iter()
                .any(|c| c.kind == "Accepted" && c.status == "True")
        })
    };
    eventually("all 150 statuses written", PATIENCE, || async {
        (0..150).all(accepted).then_some(())
    })
    .await;
}

/// A new snapshot leaves the resources it did not change `Programmed` — and their status
/// files untouched — while a data plane has not taken it yet: one new route among 10 000
/// writes one status, not 10 000 twice (`Pending`, then back).
#[tokio::test]
async fn a_change_rewrites_only_the_statuses_it_changes() {
    use std::os::unix::fs::MetadataExt;

    let dir = tempfile::tempdir().unwrap();
    for name in ["orders", "users"] {
        let path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(path, route_yaml(name, "http://127.0.0.1:9")).unwrap();
    }
    let cp = control_plane(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    // A data plane over the real protocol that takes the first snapshot and then holds on
    // to the next one without answering.
    let mut node = RawNode::open(&cp, "slow", false).await;
    let first = node.next().await;
    node.answer(&first, "").await;

    let key = |name: &str| pavilion_crds::ResourceKey {
        kind: pavilion_crds::Kind::Route,
        namespace: "shop".into(),
        name: name.into(),
    };
    let programmed = |name: &str| {
        let stored = pavilion_control::dir_status::read_status(dir.path(), &key(name))?;
        let condition = stored
            .conditions
            .into_iter()
            .find(|c| c.kind == "Programmed")?;
        Some((condition.reason, condition.message))
    };
    eventually("both routes written as Programmed", PATIENCE, || async {
        let both = ["orders", "users"]
            .map(|name| programmed(name).is_some_and(|(reason, _)| reason == "Programmed"));
        (both == [true, true]).then_some(())
    })
    .await;
    let file =
        |name: &str| pavilion_control::dir_status::status_path(dir.path(), &key(name)).unwrap();
    let stamp = |name: &str| {
        let path = file(name);
        (
            std::fs::metadata(&path).unwrap().ino(),
            std::fs::read(&path).unwrap(),
        )
    };
    let untouched = [stamp("orders"), stamp("users")];

    // Named to come last: statuses are written in path order, so once its status is written
    // the pass has been through the others.
    std::fs::write(
        dir.path().join("zz-carts.yaml"),
        route_yaml("carts", "http://127.0.0.1:9"),
    )
    .unwrap();
    let second = node.next().await;
    let pending = format!(
        "1 of 1 data planes do not run version {} yet",
        second.version
    );
    let carts = eventually("carts written as Pending", PATIENCE, || async {
        programmed("carts").filter(|(reason, _)| reason == "Pending")
    })
    .await;
    assert_eq!(carts.1, pending);
    let status = fetch_status(&cp).await;
    for name in ["orders", "users"] {
        let condition = condition(resource(&status, name), "Programmed");
        assert_eq!(condition["reason"], "Programmed", "{name}: {condition}");
    }
    assert_eq!(
        [stamp("orders"), stamp("users")],
        untouched,
        "statuses of unchanged routes rewritten"
    );

    // Taken: carts is programmed too, still without a write to the others.
    node.answer(&second, "").await;
    eventually("carts written as Programmed", PATIENCE, || async {
        programmed("carts").filter(|(reason, _)| reason == "Programmed")
    })
    .await;
    assert_eq!([stamp("orders"), stamp("users")], untouched);
    drop(node);
    cp.stop().await;
}

/// A control plane that sends the responses it is given and reports every request.
struct ScriptedControlPlane {
    /// Sent in turn, each after the previous answer; the nonce is filled in (`n0`, `n1`…).
    script: std::sync::Mutex<Option<Vec<SnapshotResponse>>>,
    seen: mpsc::Sender<SnapshotRequest>,
}

impl ScriptedControlPlane {
    /// Serves `script` on a free port; requests the data plane sends come out of the receiver.
    async fn start(
        script: Vec<SnapshotResponse>,
    ) -> (
        SocketAddr,
        mpsc::Receiver<SnapshotRequest>,
        tokio::task::JoinHandle<()>,
    ) {
        let (seen, requests) = mpsc::channel(8);
        let server = ScriptedControlPlane {
            script: std::sync::Mutex::new(Some(script)),
            seen,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(SnapshotDiscoveryServer::new(server))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        (addr, requests, task)
    }
}

/// A response carrying `snapshot` whole, under `version`.
fn whole(version: &str, snapshot: &pavilion_proto::Snapshot) -> SnapshotResponse {
    SnapshotResponse {
        version: version.into(),
        snapshot: snapshot.encode_to_vec().into(),
        ..Default::default()
    }
}

/// A response carrying `delta`.
fn as_delta(delta: &pavilion_proto::SnapshotDelta) -> SnapshotResponse {
    SnapshotResponse {
        version: delta.version.clone(),
        delta: delta.encode_to_vec().into(),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl SnapshotDiscovery for ScriptedControlPlane {
    type StreamSnapshotsStream = ReceiverStream<Result<SnapshotResponse, tonic::Status>>;

    async fn stream_snapshots(
        &self,
        request: tonic::Request<tonic::Streaming<SnapshotRequest>>,
    ) -> Result<tonic::Response<Self::StreamSnapshotsStream>, tonic::Status> {
        let mut inbound = request.into_inner();
        let script = self.script.lock().unwrap().take().unwrap_or_default();
        let seen = self.seen.clone();
        let (responses, stream) = mpsc::channel(4);
        tokio::spawn(async move {
            let hello = inbound.message().await.unwrap().unwrap();
            seen.send(hello).await.unwrap();
            for (i, response) in script.into_iter().enumerate() {
                let response = SnapshotResponse {
                    nonce: format!("n{i}"),
                    ..response
                };
                responses.send(Ok(response)).await.unwrap();
                let answer = inbound.message().await.unwrap().unwrap();
                seen.send(answer).await.unwrap();
            }
            // Keep the stream open until the data plane goes.
            while let Ok(Some(_)) = inbound.message().await {}
        });
        Ok(tonic::Response::new(ReceiverStream::new(stream)))
    }
}

#[tokio::test]
async fn the_data_plane_nacks_what_it_cannot_build_and_keeps_serving() {
    let upstream = Upstream::start("u").await.unwrap();
    let good = catch_all("good", "ns/r", &upstream.url());
    let mut bad_rule = prefix_rule("/", &[(&upstream.url(), 1)]);
    bad_rule.matches[0].path.as_mut().unwrap().r#type =
        pavilion_proto::PathMatchType::RegularExpression as i32;
    bad_rule.matches[0].path.as_mut().unwrap().value = "/[".into();
    let bad = snapshot("bad", vec![route("ns/r", &[], vec![bad_rule])]);
    let other = pavilion_proto::Snapshot {
        version: "other".into(),
        ..good.clone()
    };
    let script = vec![
        whole("good", &good),
        whole("bad", &bad),
        whole("claimed", &other),
    ];
    let (addr, mut requests, server_task) = ScriptedControlPlane::start(script).await;
    let dp = data_plane("strict", addr).await;

    let hello = requests.recv().await.unwrap();
    assert_eq!(hello.node.unwrap().id, "strict");
    assert_eq!(hello.version_info, "", "nothing served yet");
    let ack = requests.recv().await.unwrap();
    assert_eq!(
        (
            ack.version_info.as_str(),
            ack.response_nonce.as_str(),
            ack.error_detail.as_str()
        ),
        ("good", "n0", "")
    );
    let nack = requests.recv().await.unwrap();
    assert_eq!(
        (nack.version_info.as_str(), nack.response_nonce.as_str()),
        ("good", "n1")
    );
    assert!(
        nack.error_detail
            .starts_with("route ns/r: rule 0: invalid regular expression"),
        "{}",
        nack.error_detail
    );
    // The response's version and the snapshot's must agree (the version says what was built).
    let nack = requests.recv().await.unwrap();
    assert_eq!(nack.version_info, "good");
    assert_eq!(
        nack.error_detail,
        "the snapshot's version other differs from the response's claimed"
    );
    assert_eq!(dp.version(), "good");
    assert_eq!(
        HttpClient::http1()
            .get(&format!("http://{}/", dp.addr))
            .await
            .unwrap()
            .status,
        200
    );
    dp.stop().await;
    server_task.abort();
}

#[tokio::test]
async fn a_data_plane_moves_to_another_listed_control_plane() {
    let a = Upstream::start("a").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("r.yaml"), route_yaml("r", &a.url())).unwrap();
    let first = control_plane(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let second = control_plane(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let mut config = DataConfig::local();
    config.node_id = "roamer".into();
    config.control_planes = vec![
        format!("http://{}", first.grpc_addr),
        format!("http://{}", second.grpc_addr),
    ];
    let dp = pavilion_data::start(config).await.unwrap();
    served_by(&dp, "/r", "a").await;
    eventually("the node on the first control plane", PATIENCE, || async {
        (fetch_status(&first).await["nodes"][0]["id"] == "roamer").then_some(())
    })
    .await;

    first.stop().await;
    eventually("the node on the second control plane", PATIENCE, || async {
        (fetch_status(&second).await["nodes"][0]["id"] == "roamer").then_some(())
    })
    .await;
    served_by(&dp, "/r", "a").await;
    dp.stop().await;
    second.stop().await;
}

/// `routes` sealed as the control plane publishes them: version and encoding.
fn sealed(routes: Vec<pavilion_proto::Route>) -> (pavilion_proto::Snapshot, Parts) {
    let mut snapshot = snapshot("", routes);
    let (version, encoded) = pavilion_proto::delta::seal_body(&snapshot.encode_to_vec());
    snapshot.version = version;
    (snapshot, Parts::split(&encoded).unwrap())
}

/// A data plane announces that it takes deltas, applies one to the snapshot it runs, and
/// refuses — keeping what it serves — a delta made for another base or one whose result
/// does not hash to the version it claims.
#[tokio::test]
async fn the_data_plane_applies_deltas_to_what_it_runs_and_refuses_the_rest() {
    let a = Upstream::start("a").await.unwrap();
    let b = Upstream::start("b").await.unwrap();
    let first = route("ns/a", &[], vec![prefix_rule("/a", &[(&a.url(), 1)])]);
    let second = route("ns/b", &[], vec![prefix_rule("/b", &[(&b.url(), 1)])]);
    let (v1, base) = sealed(vec![first.clone()]);
    let (_, elsewhere) = sealed(vec![second.clone()]);
    let (v2, next) = sealed(vec![first.clone(), second.clone()]);
    let good = diff(&base, &next);
    let wrong_base = diff(&elsewhere, &next);
    // Claims the next version but keeps only the first route.
    let forged = pavilion_proto::SnapshotDelta {
        routes: good.routes[..1].to_vec(),
        ..good.clone()
    };
    let script = vec![
        whole(&v1.version, &v1),
        as_delta(&wrong_base),
        as_delta(&forged),
        as_delta(&good),
    ];
    let (addr, mut requests, server_task) = ScriptedControlPlane::start(script).await;
    let cache = tempfile::tempdir().unwrap();
    let mut config = DataConfig::local();
    config.node_id = "delta".into();
    config.control_planes = vec![format!("http://{addr}")];
    config.snapshot_cache = Some(cache.path().join("snapshot.pb"));
    let dp = pavilion_data::start(config).await.unwrap();

    let hello = requests.recv().await.unwrap();
    assert!(hello.node.unwrap().accepts_deltas);
    let ack = requests.recv().await.unwrap();
    assert_eq!(
        (ack.version_info.as_str(), ack.error_detail.as_str()),
        (v1.version.as_str(), "")
    );
    let nack = requests.recv().await.unwrap();
    assert_eq!(nack.version_info, v1.version);
    assert_eq!(
        nack.error_detail,
        format!(
            "the delta changes version {}, but {} is running",
            elsewhere.version, v1.version
        )
    );
    let nack = requests.recv().await.unwrap();
    assert_eq!(nack.version_info, v1.version);
    assert!(
        nack.error_detail
            .starts_with("the snapshot the delta makes hashes to ")
            && nack.error_detail.ends_with(&format!("not {}", v2.version)),
        "{}",
        nack.error_detail
    );
    served_by(&dp, "/a", "a").await;
    let ack = requests.recv().await.unwrap();
    assert_eq!(
        (ack.version_info.as_str(), ack.error_detail.as_str()),
        (v2.version.as_str(), "")
    );
    assert_eq!(dp.version(), v2.version);
    served_by(&dp, "/b", "b").await;
    served_by(&dp, "/a", "a").await;
    // The cache holds the snapshot the delta made, whole.
    let cached = eventually("the cache file to hold v2", PATIENCE, || async {
        pavilion_data::snapshot::cache::read(&cache.path().join("snapshot.pb"))
            .ok()
            .flatten()
            .filter(|cached| cached.version == v2.version)
    })
    .await;
    assert_eq!(cached, v2);
    dp.stop().await;
    server_task.abort();
}

/// A data plane over the real protocol, driven by hand.
struct RawNode {
    requests: mpsc::Sender<SnapshotRequest>,
    responses: tonic::Streaming<SnapshotResponse>,
}

impl RawNode {
    async fn open(cp: &ControlPlane, id: &str, accepts_deltas: bool) -> Self {
        let mut client = SnapshotDiscoveryClient::connect(format!("http://{}", cp.grpc_addr))
            .await
            .unwrap();
        let (requests, outgoing) = mpsc::channel(4);
        let hello = SnapshotRequest {
            node: Some(Node {
                id: id.into(),
                build_version: "test".into(),
                accepts_deltas,
            }),
            ..Default::default()
        };
        requests.send(hello).await.unwrap();
        let responses = client
            .stream_snapshots(ReceiverStream::new(outgoing))
            .await
            .unwrap()
            .into_inner();
        Self {
            requests,
            responses,
        }
    }

    async fn next(&mut self) -> SnapshotResponse {
        tokio::time::timeout(PATIENCE, self.responses.message())
            .await
            .expect("a response in time")
            .unwrap()
            .unwrap()
    }

    async fn send(&self, request: SnapshotRequest) {
        self.requests.send(request).await.unwrap();
    }

    /// ACK (`error_detail` empty) or NACK `response`.
    async fn answer(&self, response: &SnapshotResponse, error_detail: &str) {
        self.send(SnapshotRequest {
            version_info: response.version.clone(),
            response_nonce: response.nonce.clone(),
            error_detail: error_detail.into(),
            ..Default::default()
        })
        .await;
    }
}

fn route_names(encoded: &bytes::Bytes) -> Vec<String> {
    pavilion_proto::Snapshot::decode(encoded.clone())
        .unwrap()
        .routes
        .into_iter()
        .map(|r| r.name)
        .collect()
}

/// After the first snapshot, a change goes to a node that takes deltas as a delta from the
/// version it runs — which makes exactly the snapshot sent whole to a node that does not;
/// a refused delta is followed by the same version whole.
#[tokio::test]
async fn changes_travel_as_deltas_and_a_refused_delta_is_resent_whole() {
    let dir = tempfile::tempdir().unwrap();
    // Enough routes for a one-route change to be far smaller than the whole snapshot.
    let many: String = (0..20)
        .map(|i| route_yaml(&format!("r{i:02}"), "http://127.0.0.1:9") + "---\n")
        .collect();
    std::fs::write(dir.path().join("many.yaml"), many).unwrap();
    let cp = control_plane(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let mut modern = RawNode::open(&cp, "modern", true).await;
    let mut older = RawNode::open(&cp, "older", false).await;
    let first = modern.next().await;
    assert!(first.delta.is_empty(), "the first snapshot goes whole");
    let base = Parts::split(&first.snapshot).unwrap();
    modern.answer(&first, "").await;
    let first_older = older.next().await;
    assert_eq!(first_older.snapshot, first.snapshot);
    older.answer(&first_older, "").await;

    std::fs::write(
        dir.path().join("users.yaml"),
        route_yaml("users", "http://127.0.0.1:9"),
    )
    .unwrap();
    let change = modern.next().await;
    assert!(change.snapshot.is_empty(), "a change goes as a delta");
    let delta = pavilion_proto::SnapshotDelta::decode(change.delta.clone()).unwrap();
    assert_eq!(
        (delta.base.as_str(), delta.version.as_str()),
        (first.version.as_str(), change.version.as_str())
    );
    assert!(
        change.delta.len() < first.snapshot.len(),
        "{} bytes",
        change.delta.len()
    );
    let made = pavilion_proto::delta::apply(&base.routes, &base.tail, &delta).unwrap();
    let names = route_names(&made);
    assert_eq!(
        (names.len(), names.last().map(String::as_str)),
        (21, Some("users"))
    );
    let change_older = older.next().await;
    assert!(
        change_older.delta.is_empty(),
        "no deltas to a node that did not ask"
    );
    assert_eq!(
        change_older.snapshot, made,
        "the delta makes the very snapshot"
    );

    // Refused (as when the node could not apply it): the same version comes whole.
    modern.answer(&change, "cannot apply").await;
    let again = modern.next().await;
    assert_eq!(
        (again.version.as_str(), again.delta.is_empty()),
        (change.version.as_str(), true)
    );
    assert_eq!(again.snapshot, made);
    modern.answer(&again, "").await;

    // Taken: the next change is a delta from it again.
    std::fs::remove_file(dir.path().join("users.yaml")).unwrap();
    let after = modern.next().await;
    let delta = pavilion_proto::SnapshotDelta::decode(after.delta.clone()).unwrap();
    assert_eq!(delta.base, change.version);
    let made = Parts::split(&made).unwrap();
    let made = pavilion_proto::delta::apply(&made.routes, &made.tail, &delta).unwrap();
    assert_eq!(route_names(&made), route_names(&first.snapshot));

    let metrics = pavilion_tests::control_api(cp.http_addr, "/metrics")
        .await
        .text();
    for form in ["full", "delta"] {
        let line = format!("pavilion_control_snapshots_sent_total{{form=\"{form}\"}}");
        assert!(metrics.contains(&line), "{line} missing in {metrics}");
    }
    // The refused delta was not a refusal of the version: its whole form was taken.
    assert!(
        metrics.contains("pavilion_control_snapshot_nacks_total 0"),
        "{metrics}"
    );
    cp.stop().await;
}

/// gRPC's default limit on a received message is 4 MiB; a snapshot above it (here 6 MB of
/// revoked token ids, as a large configuration would be) is taken all the same.
#[tokio::test]
async fn a_snapshot_above_grpc_default_message_size_is_taken() {
    let upstream = Upstream::start("u").await.unwrap();
    let mut large = catch_all("", "ns/r", &upstream.url());
    large.revocations = vec![pavilion_proto::TokenRevocations {
        namespace: "ns".into(),
        jtis: (0..400_000).map(|i| format!("jti-{i:010}")).collect(),
    }];
    let (version, encoded) = pavilion_proto::delta::seal_body(&large.encode_to_vec());
    assert!(encoded.len() > 4 << 20, "{} bytes", encoded.len());
    large.version = version.clone();
    let (addr, mut requests, server_task) =
        ScriptedControlPlane::start(vec![whole(&version, &large)]).await;
    let dp = data_plane("large", addr).await;
    let _hello = requests.recv().await.unwrap();
    let ack = tokio::time::timeout(PATIENCE, requests.recv())
        .await
        .expect("an answer to the large snapshot")
        .unwrap();
    assert_eq!(
        (ack.version_info.as_str(), ack.error_detail.as_str()),
        (version.as_str(), "")
    );
    served_by(&dp, "/", "u").await;
    dp.stop().await;
    server_task.abort();
}
