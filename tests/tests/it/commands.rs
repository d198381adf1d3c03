//! The command API through the gateway: real tonic servers standing for aggregate shards
//! (they count executions and say who they are), a real tonic client and plain JSON; the
//! two paths give the same result, a retried command id runs once (in one data plane, and
//! across two sharing a real redis-server), and refusals reach gRPC clients as statuses.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pavilion_control::{Config as ControlConfig, ControlPlane, SourceSpec};
use pavilion_data::{Config as DataConfig, DataPlane};
use pavilion_proto::commands::command_service_client::CommandServiceClient;
use pavilion_proto::commands::command_service_server::{CommandService, CommandServiceServer};
use pavilion_proto::commands::{Event, SubmitCommandRequest, SubmitCommandResponse};
use pavilion_tests::client::HttpClient;
use pavilion_tests::eventually;
use pavilion_tests::redis::RedisServer;
use serde_json::{Value, json};
use sha2::Digest;
use tonic::{Code, Request, Response, Status};

const PATIENCE: Duration = Duration::from_secs(5);

/// An aggregate shard: executes commands (counting each), versions aggregates.
#[derive(Clone)]
struct Shard {
    name: &'static str,
    executions: Arc<Mutex<HashMap<String, u32>>>,
    versions: Arc<Mutex<HashMap<String, u64>>>,
    /// `traceparent` and `x-correlation-id` of each call, as the shard received them.
    traces: Arc<Mutex<Vec<(String, String)>>>,
}

#[tonic::async_trait]
impl CommandService for Shard {
    async fn submit_command(
        &self,
        request: Request<SubmitCommandRequest>,
    ) -> Result<Response<SubmitCommandResponse>, Status> {
        let tenant = request
            .metadata()
            .get("x-tenant-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let metadata = |name: &str| {
            request
                .metadata()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        self.traces
            .lock()
            .unwrap()
            .push((metadata("traceparent"), metadata("x-correlation-id")));
        let command = request.into_inner();
        *self
            .executions
            .lock()
            .unwrap()
            .entry(command.command_id.clone())
            .or_default() += 1;
        let mut versions = self.versions.lock().unwrap();
        let version = versions.entry(command.aggregate_id.clone()).or_default();
        if let Some(expected) = command.expected_version
            && expected != *version
        {
            return Err(Status::failed_precondition(format!(
                "version conflict: expected {expected}, at {version}"
            )));
        }
        *version += 1;
        let payload = json!({
            "shard": self.name,
            "tenant": tenant,
            "command": command.command_type,
            "input": serde_json::from_slice::<Value>(&command.payload).unwrap_or(Value::Null),
        });
        Ok(Response::new(SubmitCommandResponse {
            aggregate_id: command.aggregate_id,
            version: *version,
            events: vec![Event {
                event_type: format!("{}Done", command.command_type),
                version: *version,
                payload: payload.to_string().into_bytes(),
            }],
        }))
    }
}

impl Shard {
    async fn start(name: &'static str) -> (Self, String) {
        let shard = Shard {
            name,
            executions: Arc::default(),
            versions: Arc::default(),
            traces: Arc::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = shard.clone();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(CommandServiceServer::new(served))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
        });
        (shard, format!("h2c://{addr}"))
    }

    fn executions(&self, command_id: &str) -> u32 {
        self.executions
            .lock()
            .unwrap()
            .get(command_id)
            .copied()
            .unwrap_or(0)
    }
}

fn write_config(dir: &Path, endpoint: &str) {
    let key = |id: &str, spec: &str| {
        let hash: String = sha2::Sha256::digest(format!("pvk_{id}").as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!(
            "---\napiVersion: gateway.pavilion.dev/v1alpha1\nkind: ApiKey\nmetadata: {{ name: {id}, namespace: shop }}\nspec: {{ sha256: '{hash}', scopes: [read, write], {spec} }}\n"
        )
    };
    let text = format!(
        r#"{}apiVersion: gateway.pavilion.dev/v1alpha1
kind: Route
metadata: {{ name: commands, namespace: shop }}
spec:
  rules:
    - matches:
        - path: {{ type: PathPrefix, value: /aggregate.gateway.v1.CommandService }}
        - path: {{ type: PathPrefix, value: /v1/commands }}
      auth: {{ apiKeys: {{}} }}
      tenancy: {{}}
      commands: {{ window: 10m }}
      backends: [{{ service: aggregate }}]
{}{}"#,
        pavilion_tests::acme_on_one_shard(endpoint),
        key("acme", "tenants: [acme]"),
        key("ops", "roles: [platform-admin]"),
    );
    std::fs::write(dir.join("platform.yaml"), text).unwrap();
}

async fn control_plane(dir: &Path) -> ControlPlane {
    pavilion_control::start(ControlConfig::local(SourceSpec::Dir(dir.to_owned())))
        .await
        .unwrap()
}

async fn data_plane(cp: &ControlPlane, redis: Option<&RedisServer>) -> DataPlane {
    let mut config = DataConfig::local();
    config.control_planes = vec![format!("http://{}", cp.grpc_addr)];
    config.redis = redis.map(RedisServer::url);
    let dp = pavilion_data::start(config).await.unwrap();
    eventually("a snapshot", PATIENCE, || async {
        (!dp.version().is_empty()).then_some(())
    })
    .await;
    dp
}

/// A gRPC call through the gateway as `key` for `tenant`.
async fn submit(
    dp: &DataPlane,
    key: Option<&str>,
    tenant: Option<&str>,
    command: SubmitCommandRequest,
) -> Result<Response<SubmitCommandResponse>, Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", dp.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut request = Request::new(command);
    if let Some(key) = key {
        request
            .metadata_mut()
            .insert("x-api-key", format!("pvk_{key}").parse().unwrap());
    }
    if let Some(tenant) = tenant {
        request
            .metadata_mut()
            .insert("x-tenant-id", tenant.parse().unwrap());
    }
    CommandServiceClient::new(channel)
        .submit_command(request)
        .await
}

fn command(id: &str, aggregate: &str) -> SubmitCommandRequest {
    SubmitCommandRequest {
        aggregate_type: "order".into(),
        aggregate_id: aggregate.into(),
        command_type: "Place".into(),
        command_id: id.into(),
        payload: br#"{"qty":2}"#.to_vec(),
        expected_version: None,
    }
}

async fn post_json(
    dp: &DataPlane,
    path: &str,
    key: &str,
    tenant: &str,
    body: Value,
) -> (u16, Value, bool) {
    let request = http::Request::post(format!("http://{}{path}", dp.addr))
        .header("x-api-key", format!("pvk_{key}"))
        .header("x-tenant-id", tenant)
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))
        .unwrap();
    let reply = HttpClient::http1().send(request).await.unwrap();
    let replayed = reply.header("x-command-replayed") == Some("true");
    (reply.status.as_u16(), reply.json(), replayed)
}

#[tokio::test]
async fn grpc_and_json_commands_reach_the_tenants_shard_once_per_command_id() {
    let (shard, endpoint) = Shard::start("agg-1").await;
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &endpoint);
    let cp = control_plane(dir.path()).await;
    let dp = data_plane(&cp, None).await;

    // gRPC: to the tenant's shard, with the tenant; a retry gets the first answer.
    let first = submit(&dp, Some("acme"), Some("acme"), command("c-1", "o-1"))
        .await
        .unwrap();
    assert!(first.metadata().get("x-command-replayed").is_none());
    // The gRPC upstream continues the gateway's trace, with the correlation id echoed.
    let echoed = |name: &str| {
        first
            .metadata()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let (upstream_trace, upstream_correlation) = shard.traces.lock().unwrap()[0].clone();
    let trace_id = |traceparent: &str| traceparent.split('-').nth(1).unwrap_or("-").to_owned();
    assert_eq!(trace_id(&upstream_trace), trace_id(&echoed("traceparent")));
    assert_eq!(trace_id(&upstream_trace).len(), 32);
    assert_eq!(upstream_correlation, echoed("x-correlation-id"));
    assert!(!upstream_correlation.is_empty());
    let answer = first.into_inner();
    assert_eq!((answer.aggregate_id.as_str(), answer.version), ("o-1", 1));
    let event: Value = serde_json::from_slice(&answer.events[0].payload).unwrap();
    assert_eq!(
        (event["shard"].as_str(), event["tenant"].as_str()),
        (Some("agg-1"), Some("acme"))
    );
    let again = submit(&dp, Some("acme"), Some("acme"), command("c-1", "o-1"))
        .await
        .unwrap();
    assert_eq!(
        again
            .metadata()
            .get("x-command-replayed")
            .map(|v| v.to_str().unwrap()),
        Some("true")
    );
    assert_eq!(again.into_inner(), answer, "the same result");
    assert_eq!(shard.executions("c-1"), 1, "executed once");

    // JSON: the same command API, the same result shape as JSON, the same idempotency.
    let body = json!({"command_type": "Place", "command_id": "c-2", "payload": {"qty": 2}});
    let (status, json_answer, replayed) =
        post_json(&dp, "/v1/commands/order/o-2", "acme", "acme", body.clone()).await;
    assert_eq!(status, 200, "{json_answer}");
    assert!(!replayed);
    assert_eq!(json_answer["aggregate_id"], "o-2");
    assert_eq!(json_answer["version"], 1);
    assert_eq!(json_answer["events"][0]["event_type"], "PlaceDone");
    assert_eq!(
        json_answer["events"][0]["payload"]["input"],
        json!({"qty": 2})
    );
    let (_, repeated, replayed) =
        post_json(&dp, "/v1/commands/order/o-2", "acme", "acme", body).await;
    assert!(replayed);
    assert_eq!(repeated, json_answer);
    assert_eq!(shard.executions("c-2"), 1);
    // Both paths agree on one command: gRPC's answer is JSON's, field for field.
    let grpc_answer = submit(&dp, Some("acme"), Some("acme"), command("c-3", "o-3"))
        .await
        .unwrap()
        .into_inner();
    let (_, json_again, _) = post_json(
        &dp,
        "/v1/commands/order/o-3",
        "acme",
        "acme",
        json!({"command_type": "Place", "command_id": "c-3", "payload": {"qty": 2}}),
    )
    .await;
    assert_eq!(json_again["version"], grpc_answer.version);
    assert_eq!(
        json_again["events"][0]["payload"],
        serde_json::from_slice::<Value>(&grpc_answer.events[0].payload).unwrap()
    );

    // The shard's own refusal: a gRPC status for gRPC, its HTTP form for JSON.
    let mut stale = command("c-4", "o-1");
    stale.expected_version = Some(7);
    let refused = submit(&dp, Some("acme"), Some("acme"), stale)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("version conflict"),
        "{refused:?}"
    );
    let (status, body, _) = post_json(
        &dp,
        "/v1/commands/order/o-1",
        "acme",
        "acme",
        json!({"command_type": "Place", "command_id": "c-5", "expected_version": 7}),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "command_rejected");

    // Gateway refusals reach gRPC clients as statuses naming what decided.
    for (key, tenant, code, mention) in [
        (
            None,
            Some("acme"),
            Code::Unauthenticated,
            "missing_credentials",
        ),
        (Some("acme"), None, Code::InvalidArgument, "missing_tenant"),
        (
            Some("acme"),
            Some("globex"),
            Code::PermissionDenied,
            "tenant_forbidden",
        ),
        (
            Some("ops"),
            Some("globex"),
            Code::NotFound,
            "unknown_tenant",
        ),
    ] {
        let status = submit(&dp, key, tenant, command("c-9", "o-9"))
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
        assert!(status.message().contains(mention), "{status:?}");
    }
    let no_id = submit(&dp, Some("acme"), Some("acme"), command("", "o-9"))
        .await
        .unwrap_err();
    assert_eq!(no_id.code(), Code::InvalidArgument);
    assert_eq!(shard.executions("c-9") + shard.executions(""), 0);
}

#[tokio::test]
async fn a_command_id_runs_once_across_data_planes_sharing_redis() {
    let redis = RedisServer::start();
    let (shard, endpoint) = Shard::start("agg-1").await;
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &endpoint);
    let cp = control_plane(dir.path()).await;
    let one = data_plane(&cp, Some(&redis)).await;
    let two = data_plane(&cp, Some(&redis)).await;
    // Wait for both to reach Redis (readiness says so).
    for dp in [&one, &two] {
        eventually("Redis reachable", PATIENCE, || async {
            let ready = HttpClient::http1()
                .get(&format!("http://{}/ready", dp.admin_addr))
                .await
                .ok()?
                .json();
            (ready["redis"] == "reachable").then_some(())
        })
        .await;
    }
    let first = submit(&one, Some("acme"), Some("acme"), command("shared-1", "o-1"))
        .await
        .unwrap()
        .into_inner();
    let second = submit(&two, Some("acme"), Some("acme"), command("shared-1", "o-1"))
        .await
        .unwrap();
    assert_eq!(
        second
            .metadata()
            .get("x-command-replayed")
            .map(|v| v.to_str().unwrap()),
        Some("true"),
        "the other data plane replays it"
    );
    assert_eq!(second.into_inner(), first);
    assert_eq!(shard.executions("shared-1"), 1);
}
