//! The admin listener: health, readiness and metrics.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;

use crate::proxy::Shared;

#[derive(Clone)]
struct AdminState {
    shared: Arc<Shared>,
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(
            "/health",
            get(|| async { Json(serde_json::json!({ "status": "ok" })) }),
        )
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_text))
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
    if runtime.is_ready() {
        Json(serde_json::json!({ "ready": true, "version": runtime.version, "redis": redis }))
            .into_response()
    } else {
        let body = serde_json::json!({ "ready": false, "reason": "no snapshot received yet" });
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
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
