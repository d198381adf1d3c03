//! The request path. Phases in order, each either passing the request on or returning a
//! typed [`Deny`]: readiness → limits → path → route → upstream. One snapshot load per
//! request: the runtime a request starts with is the one it finishes with.

use std::sync::Arc;

use arc_swap::ArcSwap;
use http::header::HOST;
use http::uri::PathAndQuery;
use http::{Extensions, HeaderValue, Request, Response, Uri, Version};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::admit;
use crate::auth::ip::{self, Cidrs};
use crate::auth::{Identity, TokenCache};
use crate::body::{Metered, RequestBody, ResponseBody};
use crate::deny::Deny;
use crate::headers::{self, Peer, X_REQUEST_ID};
use crate::metrics::Metrics;
use crate::path::EscapedSlashes;
use crate::ratelimit::{self, Limiter, RuleLimits};
use crate::route::RequestFacts;
use crate::runtime::{Rule, Runtime};
use crate::security::SecurityHeaders;
use crate::upstream::{Protocol, Target, UpstreamError, Upstreams};

/// Size limits on what clients send.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Sum of header name and value lengths; more gets 431.
    pub max_header_bytes: usize,
    /// Header fields in one request; more gets 431.
    pub max_header_count: usize,
    /// Request body; a larger Content-Length gets 413 at once, a longer stream is cut off.
    pub max_body_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 64 * 1024,
            max_header_count: 100,
            max_body_bytes: 10 * 1024 * 1024,
        }
    }
}

/// What every worker shares: the current runtime (swapped per snapshot), metrics, limits.
pub struct Shared {
    pub runtime: ArcSwap<Runtime>,
    pub metrics: Metrics,
    pub limits: Limits,
    /// What `%2F`, `%5C` and `\` in a path mean.
    pub escaped_slashes: EscapedSlashes,
    pub access_log: bool,
    /// For responses no route decided (404, 503 before the first snapshot, …).
    pub security: SecurityHeaders,
    /// Proxies whose `X-Forwarded-For` is believed when deciding the client's address.
    pub trusted_proxies: Cidrs,
    /// Rate-limit counters.
    pub limiter: Limiter,
}

impl Shared {
    pub fn new(metrics: Metrics, config: &crate::Config, limiter: Limiter) -> Self {
        Self {
            runtime: ArcSwap::from_pointee(Runtime::empty()),
            metrics,
            limits: config.limits,
            escaped_slashes: config.escaped_slashes,
            access_log: config.access_log,
            security: SecurityHeaders::default(),
            trusted_proxies: config.trusted_proxies.clone(),
            limiter,
        }
    }
}

/// One worker's request path: the shared state plus the worker's own upstream pools.
pub struct Proxy {
    shared: Arc<Shared>,
    upstreams: Upstreams,
    tokens: TokenCache,
}

/// What routing decided, for metrics and the access log.
#[derive(Default)]
struct Decision<'r> {
    rule: Option<&'r Rule>,
    target: Option<&'r Target>,
    identity: Option<Arc<Identity>>,
    /// `RateLimit-*` for the response.
    rate_headers: Vec<(http::HeaderName, HeaderValue)>,
}

impl Proxy {
    pub fn new(shared: Arc<Shared>, upstreams: Upstreams) -> Self {
        Self {
            shared,
            upstreams,
            tokens: TokenCache::default(),
        }
    }

    pub fn limits(&self) -> Limits {
        self.shared.limits
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    pub fn upstreams(&self) -> &Upstreams {
        &self.upstreams
    }

    /// Serves one request; never fails — every problem becomes a JSON error response.
    pub async fn handle(
        &self,
        client: &Peer,
        request: Request<Incoming>,
    ) -> Response<ResponseBody> {
        let started = Instant::now();
        let request_id = headers::request_id(request.headers());
        let runtime = self.shared.runtime.load_full();
        let logged = self
            .shared
            .access_log
            .then(|| (request.method().clone(), request.uri().clone()));
        let mut decision = Decision::default();
        let outcome = self
            .forward(
                &runtime,
                client,
                request,
                started,
                &request_id,
                &mut decision,
            )
            .await;
        let (mut response, denied) = match outcome {
            Ok(response) => (response, None),
            Err(deny) => {
                let code = deny.code();
                if let (Some(rule), Deny::Unauthorized { .. } | Deny::Forbidden { .. }) =
                    (decision.rule, &deny)
                {
                    self.shared
                        .metrics
                        .auth_denials
                        .with_label_values(&[&*rule.route, code])
                        .inc();
                }
                (deny.into_response(&request_id), Some(code))
            }
        };
        for (name, value) in decision.rate_headers.drain(..) {
            response.headers_mut().insert(name, value);
        }
        let status = response.status();
        let elapsed = started.elapsed();
        match decision.rule {
            Some(rule) => {
                rule.metrics.observe(status, elapsed);
                rule.security.apply(response.headers_mut(), client.tls);
            }
            None => {
                self.shared.metrics.unrouted.observe(status, elapsed);
                self.shared
                    .security
                    .apply(response.headers_mut(), client.tls);
            }
        }
        if let Some((method, uri)) = logged {
            tracing::info!(
                target: "pavilion::access",
                request_id = request_id.to_str().unwrap_or_default(),
                client = %client.addr.ip(),
                method = %method,
                path = uri.path(),
                status = status.as_u16(),
                route = decision.rule.map_or("-", |r| &*r.route),
                upstream = decision.target.map_or("-", |t| &*t.url),
                error = denied.unwrap_or("-"),
                identity = %decision.identity.as_ref().map_or(&"-" as &dyn std::fmt::Display, |i| &i.principal),
                duration_ms = elapsed.as_secs_f64() * 1000.0,
                "request"
            );
        }
        response.headers_mut().insert(&X_REQUEST_ID, request_id);
        response
    }

    async fn forward<'r>(
        &self,
        runtime: &'r Runtime,
        client: &Peer,
        request: Request<Incoming>,
        started: Instant,
        request_id: &HeaderValue,
        decision: &mut Decision<'r>,
    ) -> Result<Response<ResponseBody>, Deny> {
        if !runtime.is_ready() {
            return Err(Deny::NotReady);
        }
        let admitted = admit::admit(&request, &self.shared.limits, self.shared.escaped_slashes)?;
        let facts = RequestFacts {
            host: admitted.host.as_deref(),
            path: admitted.path.key(),
            method: request.method(),
            headers: request.headers(),
        };
        let rule = runtime.find(&facts).ok_or_else(|| Deny::NotFound {
            method: request.method().clone(),
            path: admitted.path.path.to_string(),
        })?;
        decision.rule = Some(rule);
        // Decided once, for IP lists and rate-limit keys.
        let client_ip = (rule.ip.is_some()
            || !rule.limits_before_auth.is_empty()
            || !rule.limits_after_auth.is_empty())
        .then(|| {
            ip::client_ip(
                client.addr.ip(),
                request.headers(),
                &self.shared.trusted_proxies,
            )
        })
        .flatten();
        if let Some(ip_rules) = &rule.ip {
            let ip = client_ip;
            ip_rules.check(ip).map_err(|why| Deny::Forbidden {
                code: "ip_denied",
                message: format!("route {}: {why}", rule.route),
            })?;
        }
        self.rate_limit(
            &rule.limits_before_auth,
            rule,
            client_ip,
            &request,
            decision,
        )
        .await?;
        if let Some(auth) = &rule.auth {
            let identity = auth
                .authenticate(
                    request.headers(),
                    request.method(),
                    admitted.path.key(),
                    &self.tokens,
                    runtime.generation,
                )
                .await
                .map_err(|reject| Deny::from_reject(reject, auth))?;
            decision.identity = Some(identity);
        }
        self.rate_limit(&rule.limits_after_auth, rule, client_ip, &request, decision)
            .await?;
        // Before quotas: a request shed here must not use up its quota.
        let permit = match &rule.concurrency {
            None => None,
            Some(concurrency) => Some(concurrency.acquire().map_err(|limit| {
                self.shared.metrics.concurrency_shed.with_label_values(&[&*concurrency.policy]).inc();
                Deny::Overloaded {
                    message: format!(
                        "route {}: {limit} requests are in flight to the upstream, the concurrency limit of policy {}",
                        rule.route, concurrency.policy
                    ),
                }
            })?),
        };
        let byte_targets = if rule.quotas.is_empty() {
            Vec::new()
        } else {
            let facts = ratelimit::Facts {
                client_ip,
                identity: decision.identity.as_deref(),
                headers: request.headers(),
                route: &rule.route,
            };
            self.shared
                .limiter
                .take_quotas(&rule.quotas, &facts)
                .await
                .map_err(|refusal| Deny::from_refusal(refusal, rule))?
        };
        let target = rule.backends.pick();
        decision.target = Some(target);

        // What forwarding needs is taken out before the request moves.
        let admit::Admitted {
            authority,
            host,
            path,
        } = admitted;
        drop(host);
        let new_path = path.into_rewritten();
        // A trusted proxy's client, as the IP lists read it (the proxy itself if its
        // header names none).
        let behind_proxy = self
            .shared
            .trusted_proxies
            .contains(client.addr.ip())
            .then(|| {
                client_ip
                    .or_else(|| {
                        ip::client_ip(
                            client.addr.ip(),
                            request.headers(),
                            &self.shared.trusted_proxies,
                        )
                    })
                    .unwrap_or(client.addr.ip())
            });
        let mut upstream_request = upstream_request(
            request,
            target,
            new_path,
            authority,
            (client, behind_proxy),
            request_id,
            self.shared.limits.max_body_bytes,
        )?;
        // Only the gateway states identities; rules with auth put theirs in now.
        headers::strip_protected(upstream_request.headers_mut(), &runtime.identity_headers);
        if let (Some(auth), Some(identity)) = (&rule.auth, &decision.identity) {
            auth.decorate(upstream_request.headers_mut(), identity);
        }
        let deadline = started + rule.timeout;
        let outcome =
            tokio::time::timeout_at(deadline, self.upstreams.send(target, upstream_request)).await;
        match (permit, &outcome) {
            // The client's own fault says nothing about the upstream: no sample.
            (Some(permit), Ok(Err(UpstreamError::ClientBody(_)))) => drop(permit),
            (Some(permit), _) => permit.finish(
                matches!(&outcome, Ok(Ok(response)) if !response.status().is_server_error()),
            ),
            (None, _) => {}
        }
        let response = match outcome {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => {
                return Err(upstream_error(
                    error,
                    rule,
                    target,
                    request_id,
                    self.shared.limits,
                ));
            }
            Err(_) => {
                return Err(Deny::UpstreamTimeout {
                    route: rule.route.to_string(),
                    timeout: rule.timeout,
                });
            }
        };
        let (mut parts, mut body) = response.into_parts();
        if !byte_targets.is_empty() {
            let shared = self.shared.clone();
            body = Metered::wrap(
                body,
                Box::new(move |bytes| shared.limiter.add_bytes(&byte_targets, bytes)),
            );
        }
        headers::strip_hop_by_hop(&mut parts.headers, false);
        parts.version = Version::HTTP_11;
        Ok(Response::from_parts(parts, body))
    }

    /// Counts the request against `limits`; the tightest limit's headers go on the response.
    async fn rate_limit<'r>(
        &self,
        limits: &RuleLimits,
        rule: &'r Rule,
        client_ip: Option<std::net::IpAddr>,
        request: &Request<Incoming>,
        decision: &mut Decision<'r>,
    ) -> Result<(), Deny> {
        if limits.is_empty() {
            return Ok(());
        }
        let facts = ratelimit::Facts {
            client_ip,
            identity: decision.identity.as_deref(),
            headers: request.headers(),
            route: &rule.route,
        };
        match self.shared.limiter.check(limits, &facts).await {
            Ok(headers) => {
                if !headers.is_empty() {
                    decision.rate_headers = headers;
                }
                Ok(())
            }
            Err(refusal) => Err(Deny::from_refusal(refusal, rule)),
        }
    }
}

fn upstream_error(
    error: UpstreamError,
    rule: &Rule,
    target: &Target,
    request_id: &HeaderValue,
    limits: Limits,
) -> Deny {
    let (detail, unreachable) = match error {
        UpstreamError::BodyTooLarge => {
            return Deny::PayloadTooLarge {
                limit: limits.max_body_bytes,
            };
        }
        UpstreamError::ClientBody(detail) => {
            tracing::debug!(
                request_id = request_id.to_str().unwrap_or_default(),
                route = &*rule.route,
                error = %detail,
                "the client's request body failed"
            );
            return Deny::BadRequestBody { detail };
        }
        UpstreamError::Unreachable(detail) => (detail, true),
        UpstreamError::Failed(detail) => (detail, false),
    };
    tracing::warn!(
        request_id = request_id.to_str().unwrap_or_default(),
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
/// forwarding facts and request id added, the body streamed through the size limit.
fn upstream_request(
    request: Request<Incoming>,
    target: &Target,
    new_path: Option<String>,
    original_host: Option<HeaderValue>,
    (client, behind_proxy): (&Peer, Option<std::net::IpAddr>),
    request_id: &HeaderValue,
    max_body_bytes: u64,
) -> Result<Request<RequestBody>, Deny> {
    let (mut parts, body) = request.into_parts();
    let path_and_query = match new_path {
        // Origin-form as received; an absolute-form target without a path
        // (`http://a.test?x=1`) still gets its `/`.
        None => match parts.uri.path_and_query() {
            Some(pq) if pq.as_str().starts_with('/') => pq.clone(),
            _ => {
                let full = match parts.uri.query() {
                    Some(query) => format!("/?{query}"),
                    None => "/".to_owned(),
                };
                PathAndQuery::try_from(full)
                    .map_err(|_| Deny::BadRequest("the request target is not a valid path"))?
            }
        },
        Some(path) => {
            let full = match parts.uri.query() {
                Some(query) => format!("{path}?{query}"),
                None => path,
            };
            PathAndQuery::try_from(full)
                .map_err(|_| Deny::BadRequest("the request target is not a valid path"))?
        }
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
    headers::add_forwarded(headers, client, original_host.as_ref(), behind_proxy);
    headers.insert(&X_REQUEST_ID, request_id.clone());
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
