//! The admin listener: health, readiness, metrics, quota use and the tenant table.

use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;

use crate::pipeline::Shared;

#[derive(Clone)]
struct AdminState {
    shared: Arc<Shared>,
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(
            "/health",
            get(|| async { Json(pavilion_telemetry::build::health()) }),
        )
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .route("/admin/quota/{key}", get(quota_usage))
        .route("/admin/routing", get(routing))
        .route("/admin/upstreams", get(upstreams))
        .route("/admin/cache/purge", axum::routing::post(purge_cache))
        .route("/admin/explain", axum::routing::post(explain))
        .with_state(AdminState { shared })
}

async fn ready(State(state): State<AdminState>) -> Response {
    let runtime = state.shared.runtime.load();
    // Redis is a detail, not a condition: its limits follow their failure mode without it.
    let redis = match state.shared.limiter.redis_reachable() {
        None => "unused",
        Some(true) => "reachable",
        Some(false) => "unreachable",
    };
    if state
        .shared
        .stopping
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        let body = serde_json::json!({ "ready": false, "reason": "shutting down" });
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    } else if runtime.is_ready() {
        Json(serde_json::json!({ "ready": true, "version": runtime.version, "redis": redis }))
            .into_response()
    } else {
        let body = serde_json::json!({ "ready": false, "reason": "no snapshot received yet" });
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

/// What this data plane would do with the described request, phase by phase (the same
/// report as `pavilion-control explain`). Only for callers on this host (`kubectl
/// port-forward`, `exec`): it says whether a credential is valid and names backends, and
/// the admin listener is reachable from the network for probes and metrics.
async fn explain(
    State(state): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    Json(described): Json<crate::pipeline::explain::Described>,
) -> Response {
    if !peer.ip().is_loopback() {
        let body = serde_json::json!({ "error": { "code": "forbidden", "message": "explain answers on loopback only (kubectl port-forward or exec)" } });
        return (StatusCode::FORBIDDEN, Json(body)).into_response();
    }
    let runtime = state.shared.runtime.load_full();
    match crate::pipeline::explain::explain(&state.shared, &runtime, &described).await {
        Ok(report) => Json(report).into_response(),
        Err(error) => {
            let body = serde_json::json!({ "error": { "code": "bad_request", "message": error.to_string() } });
            (StatusCode::BAD_REQUEST, Json(body)).into_response()
        }
    }
}

/// What `POST /admin/cache/purge` drops: entries of a route, a host, under a path prefix
/// (any combination; `{}` drops everything).
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Purge {
    route: Option<String>,
    host: Option<String>,
    path_prefix: Option<String>,
}

/// Drops cached responses; loopback callers only, like every admin mutation.
async fn purge_cache(
    State(state): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    Json(purge): Json<Purge>,
) -> Response {
    if !peer.ip().is_loopback() {
        let body = serde_json::json!({ "error": { "code": "forbidden", "message": "cache purges are accepted on loopback only" } });
        return (StatusCode::FORBIDDEN, Json(body)).into_response();
    }
    match state
        .shared
        .cache
        .purge(purge.route, purge.host, purge.path_prefix)
    {
        Ok(()) => Json(serde_json::json!({ "purged": true })).into_response(),
        Err(error) => {
            let body = serde_json::json!({ "error": { "code": "purge_failed", "message": error } });
            (StatusCode::INTERNAL_SERVER_ERROR, Json(body)).into_response()
        }
    }
}

/// Use of every quota by one key value (the quota's key parts joined by `|`, e.g. an API
/// key id or a tenant) in the current window.
async fn quota_usage(
    State(state): State<AdminState>,
    axum::extract::Path(key): axum::extract::Path<String>,
) -> Response {
    let runtime = state.shared.runtime.load_full();
    let mut quotas = Vec::new();
    for quota in runtime.quotas() {
        quotas.push(state.shared.limiter.quota_usage(quota, &key).await);
    }
    Json(serde_json::json!({ "key": key, "quotas": quotas })).into_response()
}

#[derive(serde::Deserialize)]
struct RoutingQuery {
    tenant: Option<String>,
}

/// The tenant table this data plane runs: its revision and size, or with `?tenant=T` its
/// own lookup for that tenant — the same document as the control plane's
/// `GET /v1/placements/{tenant}`, so the two can be compared.
async fn routing(
    State(state): State<AdminState>,
    axum::extract::Query(query): axum::extract::Query<RoutingQuery>,
) -> Response {
    let runtime = state.shared.runtime.load();
    let placements = &runtime.placements;
    match query.tenant {
        None => Json(serde_json::json!({
            "revision": placements.revision,
            "tenants": placements.tenant_count(),
            "shards": placements.shard_count(),
        }))
        .into_response(),
        Some(tenant) => match placements.describe(&tenant) {
            Some(view) => Json(view).into_response(),
            None => (
                StatusCode::NOT_FOUND,
                Json(serde_json::json!({"error": {
                    "code": "unknown_tenant",
                    "message": format!("no placement for tenant {tenant}"),
                }})),
            )
                .into_response(),
        },
    }
}

/// The rules that balance, check or break circuits: each backend's health, ejection and
/// load, and the circuit's state.
async fn upstreams(State(state): State<AdminState>) -> Json<serde_json::Value> {
    let runtime = state.shared.runtime.load();
    let rules: Vec<serde_json::Value> = runtime
        .rules()
        .filter_map(|rule| {
            let backends = match &rule.upstream {
                crate::runtime::Upstream::Backends(backends) => Some(backends),
                crate::runtime::Upstream::Service(_) => None,
            };
            let endpoints = backends.map(|b| b.endpoints()).unwrap_or_default();
            if endpoints.is_empty() && rule.breaker.is_none() {
                return None;
            }
            Some(serde_json::json!({
                "route": &*rule.route,
                "rule": rule.index,
                "backends": endpoints.iter().map(|e| e.describe()).collect::<Vec<_>>(),
                "circuit": rule.breaker.as_ref().map(|b| b.describe()),
            }))
        })
        .collect();
    Json(serde_json::json!({ "version": &runtime.version, "rules": rules }))
}

async fn metrics_text(State(state): State<AdminState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            pavilion_telemetry::METRICS_CONTENT_TYPE,
        )],
        pavilion_telemetry::metrics_text(&state.shared.metrics.registry),
    )
        .into_response()
}
