//! The upstream exchange: pick a backend, turn the client's request into the upstream's
//! (the normalised path, hop-by-hop fields gone, forwarding facts and identity stated by
//! the gateway only), send it within the rule's timeout, and turn failures into the
//! right 4xx/5xx — the client's own broken body is its 400, never the upstream's fault.

use std::net::IpAddr;

use http::header::HOST;
use http::uri::PathAndQuery;
use http::{Extensions, HeaderValue, Request, Response, Uri, Version};

use crate::auth::ip;
use crate::body::{Held, Metered, RequestBody, ResponseBody};
use crate::deny::Deny;
use crate::headers::{self, X_REQUEST_ID, X_TENANT_ID};
use crate::runtime::{Rule, Runtime, Upstream};
use crate::trace::{TRACEPARENT, TRACESTATE, X_CORRELATION_ID};
use crate::upstream::endpoint::InFlight;
use crate::upstream::retry::Failure;
use crate::upstream::{Pooling, Protocol, Target, UpstreamError};
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::admit::Rewrite;
use super::{Context, Proxy};

pub(super) async fn forward<'r>(
    proxy: &Proxy,
    runtime: &Runtime,
    rule: &'r Rule,
    target: &'r Target,
    request: Request<RequestBody>,
    rewrite: Rewrite,
    context: &mut Context<'r>,
) -> Result<Response<ResponseBody>, Deny> {
    // Only a request without a body can be sent twice.
    let retry = rule
        .retry
        .as_ref()
        .filter(|_| http_body::Body::is_end_stream(request.body()));
    let Some(retry) = retry else {
        let upstream = prepare(proxy, runtime, rule, target, request, rewrite, context)?;
        let response = exchange(proxy, rule, target, context, upstream, Exchange::Request).await?;
        return Ok(finish(proxy, response, context));
    };
    // Boxed: the retry loop must not grow the common path's future.
    Box::pin(retrying(
        proxy, runtime, rule, target, request, rewrite, context, retry,
    ))
    .await
}

/// The attempts of a request on a rule with `retry`.
#[allow(clippy::too_many_arguments)]
async fn retrying<'r>(
    proxy: &Proxy,
    runtime: &Runtime,
    rule: &'r Rule,
    target: &'r Target,
    request: Request<RequestBody>,
    rewrite: Rewrite,
    context: &mut Context<'r>,
    retry: &crate::upstream::retry::RetryPolicy,
) -> Result<Response<ResponseBody>, Deny> {
    retry.budget.request();
    let head = RequestHead::of(&request);
    let mut request = Some(request);
    let mut target = target;
    let mut retries = 0;
    loop {
        let this_try = request.take().unwrap_or_else(|| head.again());
        let upstream = prepare(
            proxy,
            runtime,
            rule,
            target,
            this_try,
            rewrite.clone(),
            context,
        )?;
        let deadline = deadline(rule, context);
        let try_deadline = retry
            .per_try_timeout
            .map_or(deadline, |t| deadline.min(Instant::now() + t));
        // The per-try timeout is the backend's doing; a client's own short deadline is not.
        let blame = try_deadline < deadline || rule_deadline_applies(rule, context);
        let outcome = attempt(
            proxy,
            rule,
            target,
            upstream,
            Exchange::Request,
            try_deadline,
            blame,
        )
        .await;
        let failure = match &outcome {
            Ok(Ok(response)) if response.status().is_server_error() => {
                Some(Failure::Status(response.status()))
            }
            Ok(Ok(_)) | Ok(Err(UpstreamError::ClientBody(_) | UpstreamError::BodyTooLarge)) => None,
            // Nothing was sent either way.
            Ok(Err(UpstreamError::Unreachable(_) | UpstreamError::Busy { .. })) => {
                Some(Failure::Connect)
            }
            Ok(Err(UpstreamError::Failed(_))) => Some(Failure::Reset),
            // The attempt's own timeout; the rule's ends the request below.
            Err(_) if try_deadline < deadline => Some(Failure::Reset),
            Err(_) => None,
        };
        let wanted = failure.is_some_and(|failure| {
            retries < retry.attempts
                && retry.covers(failure)
                && (head.idempotent || failure == Failure::Connect)
                && Instant::now() < deadline
        });
        let again = wanted && retry.budget.try_retry();
        if wanted && !again {
            proxy
                .shared
                .metrics
                .retries_refused
                .with_label_values(&[&*rule.route])
                .inc();
        }
        // The next backend, chosen before this answer is let go: when none is left, this
        // answer is the client's.
        let next = match (&rule.upstream, again) {
            (_, false) => None,
            (Upstream::Backends(backends), true) => {
                backends.pick(context.hash_key, Some(target.slot))
            }
            (Upstream::Service(_), true) => Some(target),
        };
        let Some(next) = next else {
            let response = conclude(proxy, rule, target, context, outcome, blame)?;
            return Ok(finish(proxy, response, context));
        };
        let route = &*rule.route;
        proxy
            .shared
            .metrics
            .retries
            .with_label_values(&[route])
            .inc();
        tracing::debug!(
            request_id = context.request_id.to_str().unwrap_or_default(),
            route,
            upstream = &*target.url,
            ?failure,
            "retrying"
        );
        drop(outcome);
        let pause = retry.backoff(retries);
        tokio::time::sleep_until(deadline.min(Instant::now() + pause)).await;
        retries += 1;
        target = next;
        context.target = Some(target);
    }
}

/// Whether the rule's own timeout is the deadline (rather than a gRPC client's shorter
/// one): only then does a timeout count against the backend — a client cannot open a
/// circuit or eject a backend by asking for the impossible.
fn rule_deadline_applies(rule: &Rule, context: &Context<'_>) -> bool {
    context.grpc_timeout.is_none_or(|t| t >= rule.timeout)
}

/// When the upstream's response head must have arrived: the rule's timeout, or a gRPC
/// client's shorter deadline.
pub(super) fn deadline(rule: &Rule, context: &Context<'_>) -> Instant {
    let timeout = context
        .grpc_timeout
        .map_or(rule.timeout, |t| t.min(rule.timeout));
    context.started + timeout
}

/// What is needed to send a bodyless request again.
pub(super) struct RequestHead {
    method: http::Method,
    uri: Uri,
    version: Version,
    headers: http::HeaderMap,
    /// Safe to repeat whatever happened (RFC 9110 §9.2.2).
    idempotent: bool,
}

impl RequestHead {
    pub(super) fn of<B>(request: &Request<B>) -> Self {
        use http::Method;
        let method = request.method().clone();
        Self {
            idempotent: matches!(
                method,
                Method::GET
                    | Method::HEAD
                    | Method::OPTIONS
                    | Method::TRACE
                    | Method::PUT
                    | Method::DELETE
            ),
            method,
            uri: request.uri().clone(),
            version: request.version(),
            headers: request.headers().clone(),
        }
    }

    pub(super) fn again(&self) -> Request<RequestBody> {
        let mut request = Request::new(RequestBody::full(bytes::Bytes::new()));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers.clone();
        request
    }
}

/// The upstream's request: the client's, addressed to the target, with the gateway's
/// forwarding, identity and tenant headers.
pub(super) fn prepare(
    proxy: &Proxy,
    runtime: &Runtime,
    rule: &Rule,
    target: &Target,
    request: Request<RequestBody>,
    rewrite: Rewrite,
    context: &Context<'_>,
) -> Result<Request<RequestBody>, Deny> {
    let shared = &*proxy.shared;
    let client = context.client;
    // A trusted proxy's client, as the IP lists read it (the proxy itself if its header
    // names none).
    let behind_proxy = shared.trusted_proxies.contains(client.addr.ip()).then(|| {
        context
            .client_ip
            .or_else(|| ip::client_ip(client.addr.ip(), request.headers(), &shared.trusted_proxies))
            .unwrap_or(client.addr.ip())
    });
    let mut upstream = upstream_request(request, target, rewrite, behind_proxy, context)?;
    // The rule's header edits first, then what only the gateway states is removed — an
    // edit cannot forge an identity or claim header — and the rule's identity put in.
    if let Some(transform) = &rule.transform {
        transform.request_headers.apply(upstream.headers_mut());
    }
    headers::strip_protected(upstream.headers_mut(), &runtime.identity_headers);
    if let (Some(auth), Some(identity)) = (&rule.auth, &context.identity) {
        auth.decorate(upstream.headers_mut(), identity);
    }
    if let Some(tenant) = &context.tenant {
        upstream.headers_mut().insert(&X_TENANT_ID, tenant.clone());
    }
    // The upstream gets what is left of the client's deadline, capped by the rule.
    if let Some(timeout) = context.grpc_timeout {
        let left = deadline(rule, context).saturating_duration_since(Instant::now());
        upstream.headers_mut().insert(
            &crate::grpc::GRPC_TIMEOUT,
            crate::grpc::timeout_value(left.min(timeout)),
        );
    }
    Ok(upstream)
}

/// One attempt within `deadline`, counted in flight on its backend; `Err` when the
/// An attempt's result: the response head, the upstream's failure, or the deadline.
type Outcome = Result<Result<Response<ResponseBody>, UpstreamError>, tokio::time::error::Elapsed>;

/// What an exchange sends.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Exchange {
    Request,
    /// An HTTP/1.1 upgrade (WebSocket): after a 101 the response holds the connection.
    Upgrade,
}

/// Sends `upstream` within `deadline`, counted in flight on its backend, and reports the
/// outcome to passive health (`blame_timeout`: whether a timeout is the backend's).
///
/// The send's future is made here, where it is awaited: an unstarted future is copied
/// whole each time it is passed on, and this one is the largest of the request path.
async fn attempt(
    proxy: &Proxy,
    rule: &Rule,
    target: &Target,
    upstream: Request<RequestBody>,
    how: Exchange,
    deadline: Instant,
    blame_timeout: bool,
) -> Outcome {
    let backends = match &rule.upstream {
        Upstream::Backends(backends) => Some(backends),
        Upstream::Service(_) => None,
    };
    let place = match target.pooling.as_deref() {
        Some(
            pooling @ Pooling {
                places: Some(places),
                ..
            },
        ) => {
            // Boxed: the capped path must not grow every request's future.
            match Box::pin(take_place(pooling, places, deadline)).await {
                Ok(place) => Some(place),
                Err(busy) => return Ok(Err(busy)),
            }
        }
        _ => None,
    };
    let _in_flight = backends
        .and_then(|b| b.endpoint(target))
        .map(InFlight::enter);
    let outcome = match how {
        Exchange::Request => {
            // Boxed: the send is the deepest future of the request path, and each level
            // that awaits it inline grows by its size (and copies it when moved).
            let sending = Box::pin(proxy.upstreams.send(target, upstream));
            tokio::time::timeout_at(deadline, sending).await
        }
        Exchange::Upgrade => {
            let upgrading = Box::pin(proxy.upstreams.upgrade(target, upstream));
            tokio::time::timeout_at(deadline, upgrading).await
        }
    };
    if let (Some(backends), Some(ok)) = (backends, succeeded(&outcome, blame_timeout)) {
        backends.report(target, ok);
    }
    // The place is held until the response body ends: the connection is busy until then.
    match place {
        Some(place) => outcome.map(|sent| sent.map(|r| r.map(|body| Held::wrap(body, place)))),
        None => outcome,
    }
}

/// A place under the rule's `connections.max` on `pooling`'s backend, waited for at most its
/// queue timeout (and never past `deadline`).
async fn take_place(
    pooling: &Pooling,
    places: &Arc<Semaphore>,
    deadline: Instant,
) -> Result<OwnedSemaphorePermit, UpstreamError> {
    if let Ok(place) = places.clone().try_acquire_owned() {
        return Ok(place);
    }
    let started = Instant::now();
    let until = deadline.min(started + pooling.queue_timeout);
    match tokio::time::timeout_at(until, places.clone().acquire_owned()).await {
        Ok(Ok(place)) => Ok(place),
        _ => Err(UpstreamError::Busy {
            max: pooling.max,
            waited: started.elapsed(),
        }),
    }
}

/// Whether an attempt went well for its backend; `None` when the outcome says nothing
/// about it: the client's own body failed, or the client's own deadline passed.
fn succeeded(outcome: &Outcome, blame_timeout: bool) -> Option<bool> {
    match outcome {
        Ok(Ok(response)) => Some(!response.status().is_server_error()),
        // The client's own fault, or the cap's: neither says anything about the backend.
        Ok(Err(
            UpstreamError::ClientBody(_) | UpstreamError::BodyTooLarge | UpstreamError::Busy { .. },
        )) => None,
        Ok(Err(_)) => Some(false),
        Err(_) => blame_timeout.then_some(false),
    }
}

/// Runs one upstream exchange within the rule's timeout and concludes it.
pub(super) async fn exchange(
    proxy: &Proxy,
    rule: &Rule,
    target: &Target,
    context: &mut Context<'_>,
    upstream: Request<RequestBody>,
    how: Exchange,
) -> Result<Response<ResponseBody>, Deny> {
    let blame = rule_deadline_applies(rule, context);
    let deadline = deadline(rule, context);
    let outcome = attempt(proxy, rule, target, upstream, how, deadline, blame).await;
    conclude(proxy, rule, target, context, outcome, blame)
}

/// The request's last attempt: its verdict goes to the concurrency limit and the circuit
/// breaker, and a failure becomes the client's answer.
fn conclude(
    proxy: &Proxy,
    rule: &Rule,
    target: &Target,
    context: &mut Context<'_>,
    outcome: Outcome,
    blame_timeout: bool,
) -> Result<Response<ResponseBody>, Deny> {
    let ok = succeeded(&outcome, blame_timeout);
    match (context.permit.take(), ok) {
        // The client's own fault says nothing about the upstream: no sample.
        (Some(permit), None) => drop(permit),
        (Some(permit), Some(ok)) => permit.finish(ok),
        (None, _) => {}
    }
    if let (Some(ticket), Some(ok)) = (context.circuit.take(), ok) {
        ticket.settle(ok);
    }
    match outcome {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(error)) => Err(failed(
            error,
            rule,
            target,
            context,
            super::transform::body_limit(rule, &proxy.shared.limits),
        )),
        Err(_) => Err(Deny::UpstreamTimeout {
            route: rule.route.to_string(),
            timeout: context
                .grpc_timeout
                .map_or(rule.timeout, |t| t.min(rule.timeout)),
        }),
    }
}

/// The upstream's response as the client gets it: streams bounded by silence, bytes
/// counted for quotas, hop-by-hop fields gone.
pub(super) fn finish(
    proxy: &Proxy,
    response: Response<ResponseBody>,
    context: &mut Context<'_>,
) -> Response<ResponseBody> {
    let shared = &*proxy.shared;
    let (mut parts, mut body) = response.into_parts();
    // A stream (no length: SSE, long polls) outlives the rule's timeout, which ends at the
    // response head; its own bound is silence.
    // gRPC streams are left alone: a watch may rightly sit silent for hours.
    if !super::is_grpc_content(&parts.headers)
        && !parts.headers.contains_key(http::header::CONTENT_LENGTH)
        && !http_body::Body::is_end_stream(&body)
    {
        body = crate::body::Idle::wrap(body, shared.stream_idle_timeout);
    }
    // A gRPC client's deadline covers the whole call: a stream still running then is cut.
    if let (true, Some(timeout)) = (context.grpc, context.grpc_timeout)
        && !http_body::Body::is_end_stream(&body)
    {
        let route = context.rule.map_or("", |r| &*r.route);
        let message = format!(
            "route {route}: the call's deadline of {}ms passed",
            timeout.as_millis()
        );
        body = crate::body::Deadline::wrap(body, context.started + timeout, &message);
    }
    body = meter(proxy, context, body);
    headers::strip_hop_by_hop(&mut parts.headers, false);
    let rule = context.rule;
    if let Some(transform) = rule.and_then(|r| r.transform.as_ref()) {
        transform.response_headers.apply(&mut parts.headers);
    }
    parts.version = Version::HTTP_11;
    Response::from_parts(parts, body)
}

/// The body, counted against the request's byte quotas when it has any (once: the targets
/// are taken).
pub(super) fn meter(proxy: &Proxy, context: &mut Context<'_>, body: ResponseBody) -> ResponseBody {
    if context.byte_targets.is_empty() {
        return body;
    }
    let targets = std::mem::take(&mut context.byte_targets);
    let shared = proxy.shared.clone();
    Metered::wrap(
        body,
        Box::new(move |bytes| shared.limiter.add_bytes(&targets, bytes)),
    )
}

/// An upstream exchange that failed, as the client is told; logged as the upstream's
/// failure only when it is one.
fn failed(
    error: UpstreamError,
    rule: &Rule,
    target: &Target,
    context: &Context<'_>,
    max_body_bytes: u64,
) -> Deny {
    let request_id = context.request_id.to_str().unwrap_or_default();
    let (detail, unreachable) = match error {
        UpstreamError::BodyTooLarge => {
            return Deny::PayloadTooLarge {
                limit: max_body_bytes,
            };
        }
        UpstreamError::ClientBody(detail) => {
            tracing::debug!(request_id, route = &*rule.route, error = %detail, "the client's request body failed");
            return Deny::BadRequestBody { detail };
        }
        UpstreamError::Busy { max, waited } => {
            return Deny::UpstreamBusy {
                route: rule.route.to_string(),
                max,
                waited,
            };
        }
        UpstreamError::Unreachable(detail) => (detail, true),
        UpstreamError::Failed(detail) => (detail, false),
    };
    tracing::warn!(
        request_id,
        route = &*rule.route,
        upstream = &*target.url,
        error = %detail,
        "upstream request failed"
    );
    let route = rule.route.to_string();
    if unreachable {
        Deny::UpstreamUnreachable { route }
    } else {
        Deny::UpstreamFailed { route }
    }
}

/// Turns the client's request into the upstream's: target URI, hop-by-hop fields gone,
/// forwarding facts, request id and trace context added, the body streamed through the
/// size limit.
fn upstream_request(
    request: Request<RequestBody>,
    target: &Target,
    rewrite: Rewrite,
    behind_proxy: Option<IpAddr>,
    context: &Context<'_>,
) -> Result<Request<RequestBody>, Deny> {
    let trace = &context.trace;
    let original_host = rewrite.authority;
    let (mut parts, body) = request.into_parts();
    let path_and_query = match rewrite.path {
        // Origin-form as received; an absolute-form target without a path
        // (`http://a.test?x=1`) still gets its `/`.
        None => match parts.uri.path_and_query() {
            Some(pq) if pq.as_str().starts_with('/') => pq.clone(),
            _ => with_query("/".to_owned(), parts.uri.query())?,
        },
        Some(path) => with_query(path, parts.uri.query())?,
    };
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(target.scheme.clone());
    uri.authority = Some(target.authority.clone());
    uri.path_and_query = Some(path_and_query);
    parts.uri = Uri::from_parts(uri)
        .map_err(|_| Deny::BadRequest("the request target is not a valid path"))?;
    parts.extensions = Extensions::new();

    let headers = &mut parts.headers;
    headers::strip_hop_by_hop(headers, true);
    headers::add_forwarded(
        headers,
        context.client,
        original_host.as_ref(),
        behind_proxy,
    );
    headers.insert(&X_REQUEST_ID, context.request_id.clone());
    // The upstream continues this trace as a child of the upstream call (tracestate, if
    // any, passes unchanged).
    headers.insert(&TRACEPARENT, trace.upstream_traceparent());
    if trace.parent.is_none() {
        // A trace restarted here: the client's tracestate belongs to another (W3C).
        headers.remove(&TRACESTATE);
    }
    headers.insert(&X_CORRELATION_ID, trace.correlation_id.clone());
    match target.protocol {
        // HTTP/2 carries the host in :authority, which is the backend's here.
        Protocol::H2c => {
            parts.version = Version::HTTP_2;
            headers.remove(HOST);
        }
        // Whichever protocol ALPN picks, the backend's own authority is the host (the HTTP
        // client states it for HTTP/1.1; HTTP/2 carries it in :authority).
        Protocol::HttpsAlpn => {
            parts.version = Version::HTTP_11;
            headers.remove(HOST);
        }
        Protocol::Http1 | Protocol::Https => {
            parts.version = Version::HTTP_11;
            // HTTP/1.1 requires a Host; an HTTP/1.0 client may not have sent one.
            let host = rewrite.host.or(original_host).unwrap_or_else(|| {
                HeaderValue::from_str(target.authority.as_str())
                    .expect("an authority is a valid header value")
            });
            headers.insert(HOST, host);
        }
    }
    Ok(Request::from_parts(parts, body))
}

fn with_query(path: String, query: Option<&str>) -> Result<PathAndQuery, Deny> {
    let full = match query {
        Some(query) => format!("{path}?{query}"),
        None => path,
    };
    PathAndQuery::try_from(full)
        .map_err(|_| Deny::BadRequest("the request target is not a valid path"))
}
