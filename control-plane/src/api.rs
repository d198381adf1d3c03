//! The control plane's HTTP listener: health, readiness, metrics, `GET /v1/status` and the
//! placement lookup.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use pavilion_crds::FieldError;
use serde::Serialize;

use crate::compile::Outcome;
use crate::controller::PublishedReceiver;
use crate::delivery::nodes::{NodeStatus, Nodes};
use crate::metrics::Metrics;
use crate::status::{Condition, Fleet, conditions};

#[derive(Clone)]
pub struct ApiState {
    pub source: String,
    pub health: crate::source::SourceHealth,
    pub published: PublishedReceiver,
    pub nodes: Arc<Nodes>,
    pub metrics: Metrics,
    /// Set once the plan store is reachable.
    pub rebalancer: Arc<std::sync::OnceLock<Arc<crate::rebalance::Rebalancer>>>,
}

/// The API: `/health`, `/ready` and `/metrics` open, everything under `/v1` behind
/// [`access`](crate::access).
pub fn router(state: ApiState, access: Arc<crate::access::Access>) -> Router {
    let api = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/placements", get(placements))
        .route("/v1/placements/{tenant}", get(placement))
        .route("/v1/rebalance/plans", axum::routing::post(create_plan))
        .route("/v1/rebalance/plans/{id}", get(get_plan))
        .route(
            "/v1/rebalance/plans/{id}/apply",
            axum::routing::post(apply_plan),
        )
        .route(
            "/v1/rebalance/plans/{id}/rollback",
            axum::routing::post(rollback_plan),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            access,
            crate::access::require,
        ));
    Router::new()
        .route(
            "/health",
            get(|| async { Json(pavilion_telemetry::build::health()) }),
        )
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .merge(api)
        .with_state(state)
}

async fn ready(State(state): State<ApiState>) -> Response {
    if state.published.borrow().is_some() {
        Json(serde_json::json!({ "ready": true })).into_response()
    } else {
        let body = serde_json::json!({ "ready": false, "reason": "no snapshot yet: the source has not been read completely" });
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

async fn metrics(State(state): State<ApiState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            pavilion_telemetry::METRICS_CONTENT_TYPE,
        )],
        pavilion_telemetry::metrics_text(&state.metrics.registry),
    )
        .into_response()
}

/// The answer of `GET /v1/status`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusView {
    pub source: String,
    pub source_health: SourceHealthView,
    /// True once a snapshot exists; it stays true while the source is lost (the last good
    /// state is served).
    pub ready: bool,
    pub snapshot: Option<SnapshotView>,
    pub resources: Vec<ResourceView>,
    pub nodes: Vec<NodeStatus>,
}

/// Whether the source is reachable, and what is served while it is not.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceHealthView {
    #[serde(flatten)]
    pub state: crate::source::HealthState,
    /// While the source is down: what the control plane serves instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serving: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotView {
    pub version: String,
    pub routes: usize,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceView {
    /// Absent for documents that could not be read far enough to know them.
    pub kind: Option<&'static str>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub origin: String,
    pub conditions: Vec<Condition>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldErrorView>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<FieldErrorView>,
    /// When this version is rejected but its last accepted version still serves: which
    /// (`generation 3`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serving: Option<String>,
    /// Route only: the policies that reach it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<pavilion_crds::status::AttachedPolicy>,
    /// Policies only: the routes they reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reached: Option<pavilion_crds::status::Reached>,
}

#[derive(Serialize)]
pub struct FieldErrorView {
    pub field: String,
    pub message: String,
}

impl From<&FieldError> for FieldErrorView {
    fn from(e: &FieldError) -> Self {
        Self {
            field: e.field.clone(),
            message: e.message.clone(),
        }
    }
}

async fn status(State(state): State<ApiState>) -> Json<StatusView> {
    let published = state.published.borrow().clone();
    let nodes = state.nodes.list();
    let resources = published
        .iter()
        .flat_map(|p| {
            let fleet = Fleet::new(&p.now, &nodes, &p.versions);
            p.reports.iter().zip(&p.since).map(move |(report, since)| {
                let (errors, warnings, serving) = match &report.outcome {
                    Outcome::Rejected { errors, .. } => {
                        (errors.iter().map(Into::into).collect(), Vec::new(), None)
                    }
                    Outcome::Stale {
                        errors, serving, ..
                    } => (
                        errors.iter().map(Into::into).collect(),
                        Vec::new(),
                        Some(serving.clone()),
                    ),
                    Outcome::Accepted { warnings } => {
                        (Vec::new(), warnings.iter().map(Into::into).collect(), None)
                    }
                };
                ResourceView {
                    kind: report.key.as_ref().map(|k| k.kind.as_str()),
                    namespace: report.key.as_ref().map(|k| k.namespace.to_string()),
                    name: report.key.as_ref().map(|k| k.name.to_string()),
                    origin: report.origin.to_string(),
                    conditions: conditions(report, since, &fleet),
                    errors,
                    warnings,
                    serving,
                    policies: report.attachments.policies.clone(),
                    reached: report.attachments.reached.clone(),
                }
            })
        })
        .collect();
    let health = state.health.state();
    let serving = match (&published, health.up) {
        (_, true) => None,
        (Some(p), false) => Some(format!(
            "the last good state (snapshot {}) until the source is back",
            p.shipment.snapshot.version
        )),
        (None, false) => Some("nothing: no snapshot yet".to_owned()),
    };
    Json(StatusView {
        source: state.source.clone(),
        source_health: SourceHealthView {
            state: health,
            serving,
        },
        ready: published.is_some(),
        snapshot: published.as_ref().map(|p| SnapshotView {
            version: p.shipment.snapshot.version.clone(),
            routes: p.shipment.routes,
        }),
        resources,
        nodes,
    })
}

/// `{"error":{"code","message"}}` with `status`.
fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = serde_json::json!({ "error": { "code": code, "message": message.into() } });
    (status, Json(body)).into_response()
}

fn not_ready() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "not_ready",
        "the source has not been read yet",
    )
}

async fn placement(
    State(state): State<ApiState>,
    axum::extract::Path(tenant): axum::extract::Path<String>,
) -> Response {
    with_placements(&state, |table| {
        match crate::placements::lookup(table, &tenant) {
            Some(view) => Json(view).into_response(),
            None => error(
                StatusCode::NOT_FOUND,
                "unknown_tenant",
                format!("no placement for tenant {tenant}"),
            ),
        }
    })
}

/// `answer` about the published snapshot's placements (none: an empty table), or
/// `not_ready` before the first snapshot.
fn with_placements(
    state: &ApiState,
    answer: impl FnOnce(&pavilion_proto::Placements) -> Response,
) -> Response {
    let Some(published) = state.published.borrow().clone() else {
        return not_ready();
    };
    match &published.shipment.snapshot.placements {
        Some(table) => answer(table),
        None => answer(&pavilion_proto::Placements::default()),
    }
}

#[derive(serde::Deserialize)]
struct PageQuery {
    limit: Option<usize>,
    #[serde(rename = "continue")]
    continue_token: Option<String>,
}

async fn placements(
    State(state): State<ApiState>,
    axum::extract::Query(query): axum::extract::Query<PageQuery>,
) -> Response {
    let limit = query.limit.unwrap_or(crate::placements::DEFAULT_PAGE);
    with_placements(&state, |table| {
        match crate::placements::page(table, limit, query.continue_token.as_deref()) {
            Ok(page) => Json(page).into_response(),
            Err(why) => error(StatusCode::BAD_REQUEST, "invalid_continue", why),
        }
    })
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NewPlan {
    tenant: String,
    service: String,
    target_shard: String,
}

/// Runs `call` with the rebalancer, or answers 503 while its plan store is not reachable.
async fn with_rebalancer<F, Fut>(state: &ApiState, call: F) -> Response
where
    F: FnOnce(Arc<crate::rebalance::Rebalancer>) -> Fut,
    Fut: Future<Output = Response>,
{
    match state.rebalancer.get().cloned() {
        Some(rebalancer) => call(rebalancer).await,
        None => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the plan store is not reachable yet",
        ),
    }
}

fn answer(
    status: StatusCode,
    outcome: Result<crate::rebalance::Plan, crate::rebalance::Refusal>,
) -> Response {
    match outcome {
        Ok(plan) => (status, Json(plan.view())).into_response(),
        Err(refusal) => error(
            StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            refusal.code,
            refusal.message,
        ),
    }
}

/// The body is read as JSON whatever its content type says (`curl -d` says form data).
async fn create_plan(State(state): State<ApiState>, body: axum::body::Bytes) -> Response {
    let new: NewPlan = match serde_json::from_slice(&body) {
        Ok(new) => new,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!("expected {{\"tenant\",\"service\",\"targetShard\"}}: {e}"),
            );
        }
    };
    with_rebalancer(&state, |r| async move {
        answer(
            StatusCode::CREATED,
            r.create(&new.tenant, &new.service, &new.target_shard).await,
        )
    })
    .await
}

async fn get_plan(
    State(state): State<ApiState>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    with_rebalancer(&state, |r| async move {
        answer(StatusCode::OK, r.get(&id).await)
    })
    .await
}

async fn apply_plan(
    State(state): State<ApiState>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    with_rebalancer(&state, |r| async move {
        answer(StatusCode::ACCEPTED, r.apply(&id).await)
    })
    .await
}

async fn rollback_plan(
    State(state): State<ApiState>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    with_rebalancer(&state, |r| async move {
        answer(StatusCode::ACCEPTED, r.rollback(&id).await)
    })
    .await
}
