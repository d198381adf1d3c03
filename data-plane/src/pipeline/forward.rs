//! The upstream exchange: pick a backend, turn the client's request into the upstream's
//! (the normalised path, hop-by-hop fields gone, forwarding facts and identity stated by
//! the gateway only), send it within the rule's timeout, and turn failures into the
//! right 4xx/5xx — the client's own broken body is its 400, never the upstream's fault.

use std::net::IpAddr;

use http::header::HOST;
use http::uri::PathAndQuery;
use http::{Extensions, HeaderValue, Request, Response, Uri, Version};
use hyper::body::Incoming;

use crate::auth::ip;
use crate::body::{Metered, RequestBody, ResponseBody};
use crate::deny::Deny;
use crate::headers::{self, X_REQUEST_ID, X_TENANT_ID};
use crate::runtime::{Rule, Runtime};
use crate::trace::{TRACEPARENT, TRACESTATE, X_CORRELATION_ID};
use crate::upstream::{Protocol, Target, UpstreamError};

use super::admit::Rewrite;
use super::{Context, Proxy};

pub(super) async fn forward<'r>(
    proxy: &Proxy,
    runtime: &Runtime,
    rule: &'r Rule,
    target: &'r Target,
    request: Request<Incoming>,
    rewrite: Rewrite,
    context: &mut Context<'r>,
) -> Result<Response<ResponseBody>, Deny> {
    let upstream = prepare(proxy, runtime, rule, target, request, rewrite, context)?;
    let response = exchange(
        proxy,
        rule,
        target,
        context,
        proxy.upstreams.send(target, upstream),
    )
    .await?;
    Ok(finish(proxy, response, context))
}

/// The upstream's request: the client's, addressed to the target, with the gateway's
/// forwarding, identity and tenant headers.
pub(super) fn prepare(
    proxy: &Proxy,
    runtime: &Runtime,
    rule: &Rule,
    target: &Target,
    request: Request<Incoming>,
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
    let mut upstream = upstream_request(
        request,
        target,
        rewrite.path,
        rewrite.authority,
        behind_proxy,
        context,
        shared.limits.max_body_bytes,
    )?;
    // Only the gateway states identities and tenants; rules with auth put theirs in now.
    headers::strip_protected(upstream.headers_mut(), &runtime.identity_headers);
    if let (Some(auth), Some(identity)) = (&rule.auth, &context.identity) {
        auth.decorate(upstream.headers_mut(), identity);
    }
    if let Some(tenant) = &context.tenant {
        upstream.headers_mut().insert(&X_TENANT_ID, tenant.clone());
    }
    Ok(upstream)
}

/// Runs one upstream exchange within the rule's timeout, releases the concurrency permit
/// with its verdict, and turns a failure into the client's answer.
pub(super) async fn exchange(
    proxy: &Proxy,
    rule: &Rule,
    target: &Target,
    context: &mut Context<'_>,
    sending: impl Future<Output = Result<Response<ResponseBody>, UpstreamError>>,
) -> Result<Response<ResponseBody>, Deny> {
    let deadline = context.started + rule.timeout;
    let outcome = tokio::time::timeout_at(deadline, sending).await;
    match (context.permit.take(), &outcome) {
        // The client's own fault says nothing about the upstream: no sample.
        (Some(permit), Ok(Err(UpstreamError::ClientBody(_)))) => drop(permit),
        (Some(permit), _) => permit
            .finish(matches!(&outcome, Ok(Ok(response)) if !response.status().is_server_error())),
        (None, _) => {}
    }
    match outcome {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(error)) => Err(failed(
            error,
            rule,
            target,
            context,
            proxy.shared.limits.max_body_bytes,
        )),
        Err(_) => Err(Deny::UpstreamTimeout {
            route: rule.route.to_string(),
            timeout: rule.timeout,
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
    if !context.byte_targets.is_empty() {
        let targets = std::mem::take(&mut context.byte_targets);
        let shared = proxy.shared.clone();
        body = Metered::wrap(
            body,
            Box::new(move |bytes| shared.limiter.add_bytes(&targets, bytes)),
        );
    }
    headers::strip_hop_by_hop(&mut parts.headers, false);
    parts.version = Version::HTTP_11;
    Response::from_parts(parts, body)
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
    request: Request<Incoming>,
    target: &Target,
    new_path: Option<String>,
    original_host: Option<HeaderValue>,
    behind_proxy: Option<IpAddr>,
    context: &Context<'_>,
    max_body_bytes: u64,
) -> Result<Request<RequestBody>, Deny> {
    let trace = &context.trace;
    let (mut parts, body) = request.into_parts();
    let path_and_query = match new_path {
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
        Protocol::Http1 | Protocol::Https => {
            parts.version = Version::HTTP_11;
            // HTTP/1.1 requires a Host; an HTTP/1.0 client may not have sent one.
            let host = original_host.unwrap_or_else(|| {
                HeaderValue::from_str(target.authority.as_str())
                    .expect("an authority is a valid header value")
            });
            headers.insert(HOST, host);
        }
    }
    Ok(Request::from_parts(
        parts,
        RequestBody::new(body, max_body_bytes),
    ))
}

fn with_query(path: String, query: Option<&str>) -> Result<PathAndQuery, Deny> {
    let full = match query {
        Some(query) => format!("{path}?{query}"),
        None => path,
    };
    PathAndQuery::try_from(full)
        .map_err(|_| Deny::BadRequest("the request target is not a valid path"))
}
