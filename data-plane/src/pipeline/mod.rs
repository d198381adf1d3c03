//! The request path, phase by phase (DESIGN.md §5). [`Proxy::handle`] loads the snapshot
//! once and runs the phases in order; each phase is a module with one entry function over
//! the request, the rule and the per-request [`Context`], that lets the request through —
//! possibly noting what it learnt in the context — or returns a typed [`Deny`]:
//!
//! ```text
//! admit ▸ (identity API ▸) route ▸ cors ▸ ip ▸ limits (request facts) ▸ authn ▸ tenant ▸ authorize ▸ circuit ▸ placement
//!       ▸ limits (identity) ▸ quota ▸ transform ▸ (cache ▸) forward (or command on `commands` rules, or a
//!         websocket tunnel for an upgrade on `websocket` rules)
//!       └──── any phase's Deny ────┘──▶ respond: response filters, metrics, access log
//! ```
//!
//! Pingora's `ProxyHttp` phases are the model: the place where a decision is made is the
//! module named after it, and a new feature is a new phase or a change inside one.

pub mod admit;
mod authn;
mod authorize;
mod cache;
mod circuit;
mod command;
mod cors;
pub mod explain;
mod forward;
mod grpc_web;
mod identity;
mod ip;
mod limits;
mod placement;
mod quota;
mod respond;
mod route;
pub mod tenant;
mod transform;
mod websocket;

use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::{HeaderName, HeaderValue, Request, Response};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::auth::ip::Cidrs;
use crate::auth::{Identity, TokenCache};
use crate::body::{RequestBody, ResponseBody};
use crate::commands::Commands;
use crate::deny::Deny;
use crate::headers::{self, Peer};
use crate::metrics::Metrics;
use crate::path::EscapedSlashes;
use crate::ratelimit::concurrency::Permit;
use crate::ratelimit::{ByteTarget, Limiter};
use crate::runtime::{Rule, Runtime};
use crate::security::SecurityHeaders;
use crate::upstream::{Target, Upstreams};

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
    /// One line per request, when on.
    pub access_log: Option<crate::access_log::AccessLog>,
    /// For responses no route decided (404, 503 before the first snapshot, …).
    pub security: SecurityHeaders,
    /// Proxies whose `X-Forwarded-For` is believed when deciding the client's address.
    pub trusted_proxies: Cidrs,
    /// Rate-limit counters.
    pub limiter: Limiter,
    /// Command ids remembered for idempotency.
    pub commands: Commands,
    /// Set on SIGTERM: `/ready` answers 503 so load balancers stop sending, while traffic
    /// is still served for the shutdown delay.
    pub stopping: std::sync::atomic::AtomicBool,
    /// Which new traces are sampled.
    pub sampler: crate::trace::Sampler,
    /// Longest silence of an upstream in a streamed response.
    pub stream_idle_timeout: std::time::Duration,
    /// Responses kept by rules with `cache`.
    pub cache: crate::cache::ResponseCache,
    /// Where sampled requests' spans go, when an OTLP endpoint is configured.
    pub spans: Option<crate::trace::export::SpanQueue>,
    /// The identity API, when enabled.
    pub identity: Option<Arc<crate::identity::Identity>>,
}

impl Shared {
    pub fn new(
        metrics: Metrics,
        config: &crate::Config,
        limiter: Limiter,
        commands: Commands,
    ) -> Self {
        Self {
            runtime: ArcSwap::from_pointee(Runtime::empty()),
            metrics,
            limits: config.limits,
            escaped_slashes: config.escaped_slashes,
            access_log: None,
            security: SecurityHeaders::default(),
            trusted_proxies: config.trusted_proxies.clone(),
            limiter,
            commands,
            stopping: std::sync::atomic::AtomicBool::new(false),
            sampler: crate::trace::Sampler::ratio(config.trace_sample_ratio),
            stream_idle_timeout: config.stream_idle_timeout,
            cache: crate::cache::ResponseCache::new(config.cache_max_bytes),
            spans: None,
            identity: None,
        }
    }
}

/// One worker's request path: the shared state plus the worker's own upstream pools and
/// verified-token cache.
pub struct Proxy {
    shared: Arc<Shared>,
    upstreams: Upstreams,
    tokens: TokenCache,
    /// The worker's open client connections, WebSocket tunnels included: the drain waits
    /// for them.
    open: Arc<crate::connection::Open>,
}

/// What the phases learn about one request, in the order they learn it; `respond` reads
/// it for the response, the metrics and the access log.
pub(crate) struct Context<'r> {
    pub client: &'r Peer,
    /// A gRPC call: refusals are gRPC statuses.
    pub grpc: bool,
    /// A gRPC-Web call (translated to gRPC on the way in and back).
    pub grpc_web: bool,
    pub request_id: HeaderValue,
    pub started: Instant,
    /// Set by `route`.
    pub rule: Option<&'r Rule>,
    /// The client's address as IP lists and rate-limit keys read it (trusted proxies
    /// believed); set by `ip` when the rule needs it.
    pub client_ip: Option<IpAddr>,
    /// Set by `authn` on rules with `auth`.
    pub identity: Option<Arc<Identity>>,
    /// The checked `x-tenant-id`, on rules with `tenancy`; set by `tenant`.
    pub tenant: Option<HeaderValue>,
    /// `RateLimit-*` for the response, from the tightest limit.
    pub rate_headers: Vec<(HeaderName, HeaderValue)>,
    /// A place under the rule's concurrency limit, held until the upstream answers.
    pub permit: Option<Permit<'r>>,
    /// Where the response's bytes count (byte quotas).
    pub byte_targets: Vec<ByteTarget>,
    /// The backend; set by `placement`.
    pub target: Option<&'r Target>,
    /// The trace and correlation ids, and the spans when the request is recorded.
    pub trace: crate::trace::Trace,
    /// On rules with a CorsPolicy, the request's `Origin` (if any) for the response's CORS
    /// headers; `None` when there is nothing to add (no policy, or a preflight answered).
    pub cors: Option<Option<http::HeaderValue>>,
    /// The circuit breaker's admission, settled with the upstream's verdict; set by
    /// `circuit` on rules with a breaker.
    pub circuit: Option<crate::upstream::breaker::Ticket<'r>>,
    /// The consistent hash's key, on rules balancing by one (retries pick by it too).
    pub hash_key: Option<u64>,
    /// A gRPC client's deadline (`grpc-timeout`); set by `transform`.
    pub grpc_timeout: Option<std::time::Duration>,
    /// The client's `Accept-Encoding`, on rules that compress; set by `transform`.
    pub accept_encoding: Option<HeaderValue>,
}

/// Whether the request is a gRPC call.
fn is_grpc<B>(request: &Request<B>) -> bool {
    is_grpc_content(request.headers())
}

/// Whether a message's `content-type` is gRPC's (`application/grpc…`).
pub(crate) fn is_grpc_content(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

impl<'r> Context<'r> {
    /// What is known before the first phase runs.
    pub(crate) fn new(
        client: &'r Peer,
        grpc: bool,
        request_id: HeaderValue,
        started: Instant,
        trace: crate::trace::Trace,
    ) -> Self {
        Self {
            client,
            grpc,
            grpc_web: false,
            request_id,
            started,
            rule: None,
            client_ip: None,
            identity: None,
            tenant: None,
            rate_headers: Vec::new(),
            permit: None,
            byte_targets: Vec::new(),
            target: None,
            trace,
            cors: None,
            circuit: None,
            hash_key: None,
            accept_encoding: None,
            grpc_timeout: None,
        }
    }
}

impl Proxy {
    pub fn new(shared: Arc<Shared>, upstreams: Upstreams) -> Self {
        Self {
            shared,
            upstreams,
            tokens: TokenCache::default(),
            open: Arc::default(),
        }
    }

    pub(crate) fn open(&self) -> &Arc<crate::connection::Open> {
        &self.open
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
        // One snapshot per request: the runtime it starts with is the one it finishes with.
        let runtime = self.shared.runtime.load_full();
        let line = respond::AccessLine::take(&self.shared, &request);
        let request_id = headers::request_id(request.headers());
        let trace = crate::trace::Trace::start(
            &request,
            &request_id,
            self.shared.sampler,
            self.shared.spans.is_some(),
            started.into_std(),
        );
        let mut context = Context::new(client, is_grpc(&request), request_id, started, trace);
        let outcome = if grpc_web::is_grpc_web(&request) {
            context.grpc_web = true;
            grpc_web::serve(self, &runtime, request, &mut context).await
        } else {
            let limit = self.shared.limits.max_body_bytes;
            let request = request.map(|body| RequestBody::new(body, limit));
            self.phases(&runtime, request, &mut context).await
        };
        respond::respond(&self.shared, &runtime, context, outcome, line)
    }

    /// The phases up to the upstream's response head, in order.
    async fn phases<'r>(
        &self,
        runtime: &'r Runtime,
        request: Request<RequestBody>,
        context: &mut Context<'r>,
    ) -> Result<Response<ResponseBody>, Deny> {
        let shared = &*self.shared;
        context.trace.phase("admit");
        let admitted = admit::admit(&request, &shared.limits, shared.escaped_slashes)?;
        // The identity API needs no routes: it answers before the first snapshot too.
        if let Some(identity) = &shared.identity
            && crate::identity::api::owns(request.uri().path())
        {
            context.trace.phase("identity");
            return Ok(Box::pin(identity::serve(identity, shared, request, context)).await);
        }
        admit::ready(runtime)?;
        context.trace.phase("route");
        let rule = route::find(runtime, &admitted, &request, context)?;
        transform::check_body(rule, &request, &shared.limits)?;
        context.trace.phase("cors");
        if let Some(answer) = cors::check(rule, &request, context)? {
            return Ok(answer);
        }
        context.trace.phase("ip");
        ip::check(rule, &request, &shared.trusted_proxies, context)?;
        context.trace.phase("limits");
        limits::check(
            &shared.limiter,
            &rule.limits_before_auth,
            rule,
            &request,
            context,
        )
        .await?;
        context.trace.phase("authn");
        authn::authenticate(rule, &request, &admitted, &self.tokens, runtime, context).await?;
        context.trace.phase("tenant");
        tenant::check(rule, &request, runtime, context)?;
        context.trace.phase("authorize");
        let catalogue = shared.identity.as_deref().map(|i| i.catalogue());
        authorize::check(rule, context, catalogue)?;
        context.trace.phase("circuit");
        circuit::admit(rule, context)?;
        context.trace.phase("placement");
        let target = placement::pick(runtime, rule, &request, context)?;
        context.trace.phase("limits-id");
        limits::check(
            &shared.limiter,
            &rule.limits_after_auth,
            rule,
            &request,
            context,
        )
        .await?;
        context.trace.phase("quota");
        quota::take(shared, rule, &request, context).await?;
        if let Some(window) = rule.commands {
            context.trace.phase("command");
            // Rare paths are boxed where they start: they must not grow the common path's
            // future, which is copied into a box for every request.
            return Box::pin(command::serve(self, rule, target, request, window, context)).await;
        }
        let mut rewrite = admitted.into_rewrite();
        context.trace.phase("transform");
        transform::request(rule, &request, &mut rewrite, context)?;
        context.trace.phase("upstream");
        if websocket::wanted(rule, &request) {
            return Box::pin(websocket::tunnel(
                self, runtime, rule, target, request, rewrite, context,
            ))
            .await;
        }
        let mut request = request;
        request
            .body_mut()
            .limit_to(transform::body_limit(rule, &shared.limits));
        let response = if rule.cache.is_some() {
            context.trace.phase("cache");
            Box::pin(cache::serve(
                self, runtime, rule, target, request, rewrite, context,
            ))
            .await?
        } else {
            // Boxed as well: this future and every one above it would otherwise hold the
            // whole upstream exchange, and each is copied whole when first awaited (their
            // sizes summed to ~30 KB per request before these boxes; `memmove`, mostly such
            // copies, was ~5 % of a worker's CPU).
            Box::pin(forward::forward(
                self, runtime, rule, target, request, rewrite, context,
            ))
            .await?
        };
        // Compressed last: the cache keeps (and serves from) the plain answer.
        Ok(transform::response(rule, context, response))
    }
}

#[cfg(test)]
mod size {
    use super::*;

    /// How big the request path's future is: hyper moves it into a box per request, so every
    /// byte is copied on every request. Rare paths (cache, WebSocket, commands, gRPC-Web,
    /// retries, Redis round trips, JWT verification) are boxed where they start so that they
    /// do not grow the common one, and so is the upstream exchange (it would grow every
    /// level above it).
    #[test]
    fn the_request_future_stays_small() {
        let metrics = Metrics::new();
        let config = crate::Config::local();
        let limiter = Limiter::new(
            &config.rate_limit,
            None,
            crate::ratelimit::LimiterMetrics::new(&prometheus::Registry::new()),
        );
        let shared = Arc::new(Shared::new(metrics, &config, limiter, Commands::new(None)));
        let tls = crate::upstream::tls_config(&config.upstream).unwrap();
        let proxy = Proxy::new(shared, Upstreams::new(&config.upstream, tls));
        let runtime = Runtime::empty();
        let peer = Peer::new("127.0.0.1:1".parse().unwrap(), 80, false);
        let request_id = HeaderValue::from_static("id");
        let mut context = Context::new(
            &peer,
            false,
            request_id.clone(),
            Instant::now(),
            crate::trace::Trace::none(&request_id),
        );
        let request = Request::new(RequestBody::full(bytes::Bytes::new()));
        let phases = proxy.phases(&runtime, request, &mut context);
        let size = std::mem::size_of_val(&phases);
        println!("phases future: {size} bytes");
        assert!(size < 2048, "the request path's future is {size} bytes");
    }
}
