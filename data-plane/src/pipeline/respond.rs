//! The last phase, whatever happened before: a refusal becomes its JSON envelope, the
//! response gets the rate-limit and security headers and the request id, and the request
//! is counted in the route's metrics and written to the access log.

use http::{Method, Request, Response, Uri};

use crate::access_log::Entry;
use crate::body::ResponseBody;
use crate::deny::Deny;
use crate::headers::X_REQUEST_ID;
use crate::runtime::Runtime;
use crate::trace::export::Ended;
use crate::trace::{TRACEPARENT, X_CORRELATION_ID};

use super::{Context, Shared};

/// What the access log needs from the request, taken before the request moves on.
pub(super) struct AccessLine(Option<(Method, Uri)>);

impl AccessLine {
    pub(super) fn take<B>(shared: &Shared, request: &Request<B>) -> Self {
        Self(
            shared
                .access_log
                .is_some()
                .then(|| (request.method().clone(), request.uri().clone())),
        )
    }
}

pub(super) fn respond(
    shared: &Shared,
    runtime: &Runtime,
    context: Context<'_>,
    outcome: Result<Response<ResponseBody>, Deny>,
    line: AccessLine,
) -> Response<ResponseBody> {
    let Context {
        client,
        grpc,
        grpc_web,
        request_id,
        started,
        rule,
        identity,
        tenant,
        rate_headers,
        target,
        mut trace,
        cors,
        ..
    } = context;
    let (mut response, denied) = match outcome {
        Ok(response) => (response, None),
        Err(deny) => {
            let code = (deny.code(), deny.flags());
            if let (Some(rule), Deny::Unauthorized { .. } | Deny::Forbidden { .. }) = (rule, &deny)
            {
                shared
                    .metrics
                    .auth_denials
                    .with_label_values(&[&*rule.route, code.0])
                    .inc();
            }
            let response = if grpc {
                let mut response = deny.into_grpc_response(&request_id);
                // A trailers-only answer reads the same to gRPC-Web clients, under their
                // own content type.
                if grpc_web {
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/grpc-web+proto"),
                    );
                }
                response
            } else {
                deny.into_response(&request_id)
            };
            (response, Some(code))
        }
    };
    for (name, value) in rate_headers {
        response.headers_mut().insert(name, value);
    }
    let status = response.status();
    let elapsed = started.elapsed();
    match rule {
        Some(rule) => {
            rule.metrics.observe(status, elapsed);
            rule.security.apply(response.headers_mut(), client.tls);
        }
        None => {
            shared.metrics.unrouted.observe(status, elapsed);
            shared.security.apply(response.headers_mut(), client.tls);
        }
    }
    let tenant = tenant.as_ref().and_then(|t| t.to_str().ok());
    if let Some(tenant) = tenant {
        runtime.tenant_metrics.observe(tenant, status);
    }
    if let (AccessLine(Some((method, uri))), Some(log)) = (line, &shared.access_log) {
        let trace_id = crate::trace::trace_id_hex(&trace.trace_id);
        log.log(&Entry {
            request_id: request_id.to_str().unwrap_or_default(),
            trace_id: std::str::from_utf8(&trace_id).unwrap_or_default(),
            client: client.addr.ip(),
            method: method.as_str(),
            path: uri.path(),
            status: status.as_u16(),
            route: rule.map_or("-", |r| &*r.route),
            upstream: target.map_or("-", |t| &*t.url),
            error: denied.map_or("-", |(code, _)| code),
            flags: denied.map_or("-", |(_, flags)| flags),
            identity: identity.as_ref().map(|i| &i.principal),
            tenant: tenant.unwrap_or("-"),
            duration: elapsed,
        });
    }
    if let (Some(spans), Some(recording)) = (&shared.spans, trace.take_recording()) {
        spans.send(
            &trace,
            *recording,
            Ended {
                status: status.as_u16(),
                route: rule.map(|r| &*r.route),
                upstream: target.map(|t| &*t.url),
                error: denied.map(|(code, _)| code),
                tenant,
                client: client.addr.ip(),
                request_id: request_id.to_str().unwrap_or_default(),
            },
        );
    }
    let headers = response.headers_mut();
    if let (Some(origin), Some(policy)) = (cors, rule.and_then(|r| r.cors.as_deref())) {
        policy.decorate(origin.as_ref(), headers);
    }
    headers.insert(&TRACEPARENT, trace.own_traceparent());
    headers.insert(&X_CORRELATION_ID, trace.correlation_id);
    headers.insert(&X_REQUEST_ID, request_id);
    response
}
