//! The rule's say over what the backend is asked for: its own body limit, a rewritten
//! path and host; and, on the way back, the response's compression by the client's
//! `Accept-Encoding`. (Header edits are applied where the upstream request and response are
//! made, in `forward`.)

use http::Request;
use http_body::Body;

use crate::deny::Deny;
use crate::runtime::Rule;

use super::admit::Rewrite;
use super::{Context, Limits};

/// The body limit on this rule: its own, within the data plane's.
pub(super) fn body_limit(rule: &Rule, limits: &Limits) -> u64 {
    rule.max_body_bytes
        .map_or(limits.max_body_bytes, |own| own.min(limits.max_body_bytes))
}

/// A declared body over the rule's own limit is refused at once, before anything is
/// spent on the request (a longer stream is cut off at the limit while it is forwarded).
pub(super) fn check_body<B: Body>(
    rule: &Rule,
    request: &Request<B>,
    limits: &Limits,
) -> Result<(), Deny> {
    if rule.max_body_bytes.is_some() {
        let limit = body_limit(rule, limits);
        if request.body().size_hint().lower() > limit {
            return Err(Deny::PayloadTooLarge { limit });
        }
    }
    Ok(())
}

/// The path and host the backend is asked for, and what the response may be encoded as.
pub(super) fn request<B>(
    rule: &Rule,
    request: &Request<B>,
    rewrite: &mut Rewrite,
    context: &mut Context<'_>,
) -> Result<(), Deny> {
    if context.grpc {
        context.grpc_timeout = request
            .headers()
            .get(&crate::grpc::GRPC_TIMEOUT)
            .and_then(crate::grpc::parse_timeout);
    }
    if rule.compression.is_some() && request.method() != http::Method::HEAD {
        context.accept_encoding = request
            .headers()
            .get(http::header::ACCEPT_ENCODING)
            .filter(|accept| crate::compress::Compression::wanted(accept))
            .cloned();
    }
    let Some(transform) = &rule.transform else {
        return Ok(());
    };
    let path = rewrite.path.as_deref().unwrap_or(request.uri().path());
    match transform.path(path) {
        None => {}
        Some(Ok(rewritten)) => rewrite.path = Some(rewritten),
        Some(Err(())) => {
            tracing::warn!(
                route = &*rule.route,
                path,
                "rewrite.pathRegex made something that is not an absolute path"
            );
            return Err(Deny::BadRequest(
                "the route's path rewrite does not apply to this path",
            ));
        }
    }
    if let Some(host) = &transform.host {
        rewrite.host = Some(host.clone());
    }
    Ok(())
}

/// The answer as the client may take it: compressed when the rule compresses and the client
/// accepts an encoding.
pub(super) fn response(
    rule: &Rule,
    context: &Context<'_>,
    response: http::Response<crate::body::ResponseBody>,
) -> http::Response<crate::body::ResponseBody> {
    match (&rule.compression, &context.accept_encoding) {
        (Some(compression), Some(accept)) => compression.apply(accept, response),
        _ => response,
    }
}
