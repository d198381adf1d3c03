//! WebSocket upgrades (RFC 6455 over HTTP/1.1 `Upgrade`), on rules with `websocket`. The
//! upgrade request has passed every earlier phase — authentication, tenant, rate limits
//! and quotas are decided once, at the upgrade — and goes to the backend with its
//! `Upgrade`; when the backend switches protocols, the client is answered 101 and the two
//! connections are joined as a [`tunnel`](crate::tunnel). Any other answer is forwarded as
//! an ordinary response. The tunnel holds nothing of the snapshot, so a new snapshot —
//! even one that deletes the route — leaves an established tunnel open.
//!
//! On rules without `websocket`, and for requests that are not a well-formed upgrade (not
//! `GET` over HTTP/1.1, or `Connection` not naming `upgrade`), the upgrade fields are
//! removed like every hop-by-hop field and the request is forwarded as a plain one: the
//! gateway and the backend never disagree about whether a connection switched protocols.

use std::time::Duration;

use crate::body::RequestBody;
use http::header::{CONNECTION, UPGRADE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};

use crate::body::ResponseBody;
use crate::deny::Deny;
use crate::headers;
use crate::runtime::{Rule, Runtime};
use crate::upstream::Target;

use super::admit::Rewrite;
use super::{Context, Proxy, forward};

static UPGRADE_TOKEN: HeaderValue = HeaderValue::from_static("upgrade");
static WEBSOCKET: HeaderValue = HeaderValue::from_static("websocket");

/// Whether the request is a WebSocket upgrade the rule tunnels.
pub(super) fn wanted<B>(rule: &Rule, request: &Request<B>) -> bool {
    rule.websocket.is_some()
        && request.method() == Method::GET
        && request.version() == Version::HTTP_11
        && has_token(request.headers(), &CONNECTION, "upgrade")
        && has_token(request.headers(), &UPGRADE, "websocket")
}

/// Whether a comma-separated header names `token` (ASCII case-insensitive).
fn has_token(headers: &HeaderMap, name: &http::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

pub(super) async fn tunnel<'r>(
    proxy: &Proxy,
    runtime: &Runtime,
    rule: &'r Rule,
    target: &'r Target,
    mut request: Request<RequestBody>,
    rewrite: Rewrite,
    context: &mut Context<'r>,
) -> Result<Response<ResponseBody>, Deny> {
    let idle = rule.websocket.unwrap_or(Duration::from_secs(300));
    let client_side = hyper::upgrade::on(&mut request);
    request
        .body_mut()
        .limit_to(super::transform::body_limit(rule, &proxy.shared.limits));
    let mut upstream = forward::prepare(proxy, runtime, rule, target, request, rewrite, context)?;
    // `prepare` removed the hop-by-hop fields; this hop's upgrade is the one stated here.
    let headers = upstream.headers_mut();
    headers.insert(CONNECTION, UPGRADE_TOKEN.clone());
    headers.insert(UPGRADE, WEBSOCKET.clone());
    let mut response = forward::exchange(
        proxy,
        rule,
        target,
        context,
        upstream,
        forward::Exchange::Upgrade,
    )
    .await?;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(forward::finish(proxy, response, context));
    }
    if !has_token(response.headers(), &UPGRADE, "websocket") {
        tracing::warn!(
            route = &*rule.route,
            upstream = &*target.url,
            "the backend switched to a protocol other than websocket"
        );
        return Err(Deny::UpstreamFailed {
            route: rule.route.to_string(),
        });
    }
    let upstream_side = hyper::upgrade::on(&mut response);
    let metrics = &proxy.shared.metrics;
    let open = proxy.open().enter(&metrics.websockets_open);
    let closed = metrics.websockets_closed.clone();
    tokio::spawn(async move {
        let ended = crate::tunnel::relay(client_side, upstream_side, idle).await;
        closed.with_label_values(&[ended.as_str()]).inc();
        drop(open);
    });
    let (mut parts, _) = response.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, false);
    parts.headers.insert(CONNECTION, UPGRADE_TOKEN.clone());
    parts.headers.insert(UPGRADE, WEBSOCKET.clone());
    parts.version = Version::HTTP_11;
    Ok(Response::from_parts(parts, ResponseBody::Local(None)))
}
