//! The validating admission webhook (`--webhook-listen`): the API server asks it about
//! every create and update of a Pavilion resource, and it answers with the same judgement
//! `pavilion-control validate` prints — so `kubectl apply` of a bad resource fails at once
//! with the field path and message, and a policy whose target is missing passes with a
//! warning. Served over HTTPS with the control channel's certificate (`--grpc-tls-cert`).
//!
//! The judgement is made against the resources the control plane currently holds, so
//! cross-resource rules (a tenant placed twice, say) are caught too. The webhook only ever
//! refuses; it never changes an object.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{DefaultBodyLimit, State};
use axum::routing::post;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use pavilion_crds::{FieldError, Kind};
use tokio::sync::{Semaphore, watch};

use crate::compile::CompileOptions;
use crate::controller::PublishedReceiver;
use crate::source::kube::item;
use crate::validate::{Findings, judge};

/// Where the API server posts AdmissionReviews.
pub const PATH: &str = "/validate";
/// An AdmissionReview holds the object and, on updates, its old version: each at most
/// about 1.5 MiB in Kubernetes.
const MAX_BODY: usize = 4 << 20;
/// Judgements running at once: each compiles the whole resource set, so a flood of
/// reviews queues instead of taking every core.
const CONCURRENT: usize = 2;
/// A TLS handshake (or a request head) that takes longer is abandoned.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a review waits for a judge before it is answered 503 (the API server then
/// applies the registration's failurePolicy).
const QUEUE_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections served at once; more are closed on arrival.
const MAX_CONNECTIONS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("the admission webhook needs a certificate: set --grpc-tls-cert and --grpc-tls-key")]
    NoCertificate,
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

#[derive(Clone)]
struct Judge {
    published: PublishedReceiver,
    options: Arc<CompileOptions>,
    running: Arc<Semaphore>,
}

/// A bound webhook listener, ready to serve.
pub struct Webhook {
    listener: tokio::net::TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    router: axum::Router,
}

impl Webhook {
    /// Binds `addr` and reads the certificate and key (PEM).
    pub async fn bind(
        addr: SocketAddr,
        tls: tokio_rustls::TlsAcceptor,
        published: PublishedReceiver,
        options: CompileOptions,
    ) -> Result<Self, WebhookError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| WebhookError::Listen { addr, source })?;
        let judge = Judge {
            published,
            options: Arc::new(options),
            running: Arc::new(Semaphore::new(CONCURRENT)),
        };
        let router = axum::Router::new()
            .route(PATH, post(review))
            .layer(DefaultBodyLimit::max(MAX_BODY))
            .with_state(judge);
        Ok(Self {
            listener,
            tls,
            router,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` turns true.
    pub async fn serve(self, shutdown: watch::Receiver<bool>) {
        let service = hyper_util::service::TowerToHyperService::new(self.router);
        let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let (stream, peer) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "admission webhook: cannot accept");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = crate::stopped(shutdown.clone()) => return,
            };
            let Ok(slot) = connections.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "admission webhook: too many connections; closing one");
                continue;
            };
            let tls = self.tls.clone();
            let service = service.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await
                {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(error)) => {
                        tracing::debug!(%peer, %error, "admission webhook: TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
                let mut builder = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                );
                builder
                    .http1()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HANDSHAKE_TIMEOUT);
                if let Err(error) = builder
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!(%peer, %error, "admission webhook: connection ended");
                }
            });
        }
    }
}

async fn review(
    State(state): State<Judge>,
    Json(review): Json<AdmissionReview<DynamicObject>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let request: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(request) => request,
        Err(_) => {
            let invalid = AdmissionResponse::invalid("no request in the AdmissionReview");
            return Json(invalid.into_review()).into_response();
        }
    };
    // The permit travels with the judgement: a review the API server gave up on still
    // holds its place until its compile is done, so abandoned reviews cannot pile up.
    let waited = tokio::time::timeout(QUEUE_TIMEOUT, state.running.clone().acquire_owned()).await;
    let Ok(Ok(permit)) = waited else {
        let busy = "busy judging other reviews; try again";
        return (http::StatusCode::SERVICE_UNAVAILABLE, busy).into_response();
    };
    let response = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        decide(&state, &request)
    })
    .await
    .unwrap_or_else(|error| AdmissionResponse::invalid(format!("the judgement failed: {error}")));
    Json(response.into_review()).into_response()
}

/// The answer to one request: allowed (with warnings) or denied with every problem.
fn decide(state: &Judge, request: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
    let response = AdmissionResponse::from(request);
    // Deletions always pass: removing a resource never needs its content to be valid.
    if !matches!(request.operation, Operation::Create | Operation::Update) {
        return response;
    }
    // Only the resource itself is judged; the control plane writes statuses.
    if request.sub_resource.is_some() {
        return response;
    }
    let Some(kind) = Kind::from_name(&request.kind.kind) else {
        return response;
    };
    let Some(mut object) = request.object.clone() else {
        return response.deny("the request carries no object");
    };
    // Labels, annotations and finalizers may always change, and an object being deleted
    // may always be let go: only a new spec is judged.
    if let Some(old) = &request.old_object
        && (old.data.get("spec") == object.data.get("spec")
            || object.metadata.deletion_timestamp.is_some())
    {
        return response;
    }
    if object.metadata.namespace.is_none() {
        object.metadata.namespace = request.namespace.clone();
    }
    let candidate = item(kind, &object);
    let context = state
        .published
        .borrow()
        .as_ref()
        .map(|p| p.items.to_vec())
        .unwrap_or_default();
    let Findings { errors, warnings } = judge(context, &[candidate], &state.options)
        .pop()
        .unwrap_or_default();
    let mut response = response;
    if !warnings.is_empty() {
        response.warnings = Some(warnings.iter().map(ToString::to_string).collect());
    }
    if errors.is_empty() {
        return response;
    }
    let mut denied = response.deny(join(&errors));
    denied.result.code = 422;
    denied.result.reason = "Invalid".into();
    denied
}

fn join(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}
