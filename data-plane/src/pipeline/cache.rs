//! The response cache's phase, on rules with `cache`, after every policy phase (a cached
//! answer is still authenticated, limited and counted): a fresh stored variant is served
//! (`x-cache: HIT`); otherwise the request goes upstream (`MISS`) and a storable answer is
//! kept. Anonymous misses for one key are coalesced: one request goes upstream, the others
//! wait for its answer — or, if it may not be stored, go upstream themselves.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use http::header::{AUTHORIZATION, CACHE_CONTROL, HOST, RANGE};
use http::{Method, Request, Response};
use http_body_util::BodyExt;

use crate::body::{RequestBody, ResponseBody};
use crate::cache::{self, Key, Settings};
use crate::deny::Deny;
use crate::runtime::{Rule, Runtime};
use crate::upstream::Target;

use super::admit::Rewrite;
use super::forward::{self, RequestHead};
use super::{Context, Proxy};

/// How a miss that was not stored ends, shared with the requests that waited on it.
enum Unstored {
    /// The gateway refused or the upstream failed: everyone gets the same answer.
    Denied(Deny),
    /// The answer may not be stored: its fetcher takes it, the others ask for their own.
    Pass(Mutex<Option<Response<ResponseBody>>>),
}

pub(super) async fn serve<'r>(
    proxy: &Proxy,
    runtime: &Runtime,
    rule: &'r Rule,
    target: &'r Target,
    request: Request<RequestBody>,
    rewrite: Rewrite,
    context: &mut Context<'r>,
) -> Result<Response<ResponseBody>, Deny> {
    let Some(settings) = rule.cache.as_deref() else {
        return forward::forward(
            proxy,
            runtime,
            rule,
            target,
            request,
            rewrite.clone(),
            context,
        )
        .await;
    };
    let directives = request_directives(&request);
    let storable_request = matches!(*request.method(), Method::GET | Method::HEAD)
        && http_body::Body::is_end_stream(request.body())
        && !request.headers().contains_key(RANGE)
        && !directives.no_store;
    if !storable_request {
        return forward::forward(
            proxy,
            runtime,
            rule,
            target,
            request,
            rewrite.clone(),
            context,
        )
        .await;
    }
    let store = &proxy.shared.cache;
    let key = key(rule, &request, &rewrite, settings);
    let head = request.method() == Method::HEAD;
    let authenticated = context.identity.is_some() || request.headers().contains_key(AUTHORIZATION);
    let counter = |result: &str| {
        proxy
            .shared
            .metrics
            .cache_requests
            .with_label_values(&[&*rule.route, result])
            .inc();
    };
    let stored = if directives.no_cache {
        None
    } else {
        store.entries.get(&key).await
    };
    if let Some(entry) = &stored
        && entry.matches(request.headers())
        && (!authenticated || entry.public)
    {
        counter("hit");
        return Ok(served(proxy, context, entry.response(head, true)));
    }
    counter("miss");
    // Not coalesced: a HEAD (its answer has no body to keep), a request with credentials
    // (never shares an answer it may not see), one that asked for a fresh answer.
    if head || authenticated || directives.no_cache {
        let request_headers = request.headers().clone();
        let response = forward::forward(
            proxy,
            runtime,
            rule,
            target,
            request,
            rewrite.clone(),
            context,
        )
        .await?;
        if head {
            let mut response = response;
            cache::mark(&mut response, false);
            return Ok(response);
        }
        return match fetched(response, settings, authenticated, &request_headers, rule).await? {
            Ok(entry) => {
                let entry = std::sync::Arc::new(entry);
                store.entries.insert(key, entry.clone()).await;
                Ok(entry.response(false, false))
            }
            Err(mut response) => {
                cache::mark(&mut response, false);
                Ok(response)
            }
        };
    }
    // Another variant is stored: this one replaces it (one variant per key).
    if stored.is_some() {
        store.entries.invalidate(&key).await;
    }
    let again = RequestHead::of(&request);
    let request_headers = request.headers().clone();
    let fetcher = AtomicBool::new(false);
    let mut request = Some(request);
    let loaded = store
        .entries
        .try_get_with(key, async {
            fetcher.store(true, Ordering::Relaxed);
            let request = request.take().unwrap_or_else(|| again.again());
            let response = forward::forward(
                proxy,
                runtime,
                rule,
                target,
                request,
                rewrite.clone(),
                context,
            )
            .await
            .map_err(Unstored::Denied)?;
            match fetched(response, settings, false, &request_headers, rule).await {
                Ok(Ok(entry)) => Ok(std::sync::Arc::new(entry)),
                Ok(Err(response)) => Err(Unstored::Pass(Mutex::new(Some(response)))),
                Err(deny) => Err(Unstored::Denied(deny)),
            }
        })
        .await;
    let fetched_here = fetcher.load(Ordering::Relaxed);
    let mut own = match loaded {
        // Served from another request's fetch: as good as a hit — when it is this
        // request's variant.
        Ok(entry) if fetched_here || entry.matches(&request_headers) => {
            return Ok(served(proxy, context, entry.response(false, !fetched_here)));
        }
        Err(unstored) => match &*unstored {
            Unstored::Denied(deny) => return Err(deny.clone()),
            Unstored::Pass(slot) if fetched_here => {
                let taken = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
                taken.ok_or_else(|| Deny::UpstreamFailed {
                    route: rule.route.to_string(),
                })?
            }
            // Another request's answer that may not be shared: this one asks for its own.
            Unstored::Pass(_) => {
                forward::forward(
                    proxy,
                    runtime,
                    rule,
                    target,
                    again.again(),
                    rewrite,
                    context,
                )
                .await?
            }
        },
        // Another variant was fetched meanwhile: this one asks for its own.
        Ok(_) => {
            forward::forward(
                proxy,
                runtime,
                rule,
                target,
                again.again(),
                rewrite,
                context,
            )
            .await?
        }
    };
    cache::mark(&mut own, false);
    Ok(own)
}

/// A stored answer as a request takes it: its bytes count against the request's byte
/// quotas like an upstream's would (the fetcher's were counted while they were read).
fn served(
    proxy: &Proxy,
    context: &mut Context<'_>,
    response: Response<ResponseBody>,
) -> Response<ResponseBody> {
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, forward::meter(proxy, context, body))
}

/// A fetched response: an entry when it may be stored (its body read, within the rule's
/// timeout), or the response untouched.
async fn fetched(
    response: Response<ResponseBody>,
    settings: &Settings,
    authenticated: bool,
    request_headers: &http::HeaderMap,
    rule: &Rule,
) -> Result<Result<cache::Entry, Response<ResponseBody>>, Deny> {
    let Some((ttl, public)) = cache::freshness(
        response.status(),
        response.headers(),
        settings,
        authenticated,
    ) else {
        return Ok(Err(response));
    };
    let (parts, body) = response.into_parts();
    let collected = tokio::time::timeout(rule.timeout, body.collect()).await;
    let body = match collected {
        Ok(Ok(collected)) => collected.to_bytes(),
        _ => {
            return Err(Deny::UpstreamFailed {
                route: rule.route.to_string(),
            });
        }
    };
    match cache::entry(
        parts.status,
        parts.headers.clone(),
        body.clone(),
        request_headers,
        ttl,
        public,
    ) {
        Some(entry) => Ok(Ok(entry)),
        // `Vary: *`: never the same twice; the client gets what was read.
        None => Ok(Err(Response::from_parts(parts, ResponseBody::local(body)))),
    }
}

/// What the client's `Cache-Control` asks of the cache.
struct Directives {
    no_cache: bool,
    no_store: bool,
}

fn request_directives<B>(request: &Request<B>) -> Directives {
    let mut directives = Directives {
        no_cache: false,
        no_store: false,
    };
    for directive in request
        .headers()
        .get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
    {
        match directive.trim().to_ascii_lowercase().as_str() {
            "no-cache" | "max-age=0" => directives.no_cache = true,
            "no-store" => directives.no_store = true,
            _ => {}
        }
    }
    directives
}

fn key<B>(rule: &Rule, request: &Request<B>, rewrite: &Rewrite, settings: &Settings) -> Key {
    let host = rewrite
        .authority
        .as_ref()
        .or_else(|| request.headers().get(HOST))
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let path = rewrite.path.as_deref().unwrap_or(request.uri().path());
    let target = match request.uri().query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    let mut extra = Vec::new();
    for name in &settings.key_headers {
        for value in request.headers().get_all(name) {
            extra.extend_from_slice(value.as_bytes());
            extra.push(b',');
        }
        extra.push(0);
    }
    Key {
        route: std::sync::Arc::from(&*rule.route),
        scope: settings.scope,
        host: host.into(),
        target: target.into(),
        extra: extra.into(),
    }
}
