//! `Runtime`: a snapshot made ready to serve — matcher, backends, timeouts and metric
//! handles — built once when the snapshot arrives, never per request. Building can fail
//! (the data plane then NACKs and keeps its current runtime); serving cannot.

use std::sync::Arc;
use std::time::Duration;

use pavilion_proto::Snapshot;

use std::sync::atomic::{AtomicU64, Ordering};

use crate::auth::ip::IpRules;
use crate::auth::{AuthContext, Credentials, RuleAuth};
use crate::metrics::{Metrics, RouteMetrics, TenantMetrics};
use crate::placement::{Placements, Service};
use crate::ratelimit::RuleLimits;
use crate::ratelimit::concurrency::Concurrency;
use crate::ratelimit::quota::{Quota, RuleQuotas};
use crate::route::{RequestFacts, RouteError, Router, RuleId};
use crate::security::SecurityHeaders;
use crate::upstream::Backends;

/// Used when a rule carries no timeout (the compiler always sets one).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Source of [`Runtime::generation`].
static GENERATIONS: AtomicU64 = AtomicU64::new(1);

pub struct Runtime {
    /// Empty while nothing was ever applied.
    pub version: String,
    /// Unique per build and increasing: per-worker caches keyed by it drop what older
    /// runtimes cached once a newer one is in use.
    pub generation: u64,
    router: Router,
    rules: Box<[Rule]>,
    /// Where tenants are served, per service kind.
    pub placements: Placements,
    /// Request counters of the labelled tenants.
    pub tenant_metrics: TenantMetrics,
    /// Headers only the gateway may state (`x-auth-*`, `x-tenant-id` and every claim header
    /// of the snapshot): removed from every request, whichever route it takes.
    pub identity_headers: Box<[http::HeaderName]>,
}

/// Where a rule sends its requests.
pub enum Upstream {
    /// Its own weighted backends.
    Backends(Backends),
    /// The request's tenant's shard of this service kind.
    Service(Service),
}

/// `tenancy:` of a rule.
pub struct TenancyRule {
    /// A request without `x-tenant-id` is refused.
    pub required: bool,
}

/// One rule, ready to forward.
pub struct Rule {
    /// `namespace/name` of the route, for errors, logs and metrics.
    pub route: Box<str>,
    /// The rule's position in its route.
    pub index: usize,
    pub upstream: Upstream,
    /// `None`: the rule is not scoped to a tenant.
    pub tenancy: Option<TenancyRule>,
    /// One of these roles is needed in the request's tenant; empty: none.
    pub roles: Box<[Box<str>]>,
    /// Every one of these rights is needed in the request's tenant (through the identity
    /// service's role catalogue); empty: none.
    pub rights: Box<[Box<str>]>,
    /// The rule serves the command API; how long a command id is remembered.
    pub commands: Option<Duration>,
    pub timeout: Duration,
    pub metrics: RouteMetrics,
    /// Shared by the rules of one route.
    pub security: Arc<SecurityHeaders>,
    /// Checked before authentication; `None` when the rule has no IP lists.
    pub ip: Option<IpRules>,
    /// `None`: the rule is public.
    pub auth: Option<RuleAuth>,
    /// The rate limits that apply, outermost first: those keyed by request facts alone
    /// (checked before authentication) and those keyed by the identity (after it).
    pub limits_before_auth: RuleLimits,
    pub limits_after_auth: RuleLimits,
    /// Quotas that apply, outermost first.
    pub quotas: RuleQuotas,
    /// Shared by the rules of one route.
    pub concurrency: Option<Arc<Concurrency>>,
    /// The CorsPolicy reaching the route; `None`: no CORS headers, preflights are plain
    /// requests.
    pub cors: Option<Arc<crate::cors::Cors>>,
    /// Path, host and header transforms; `None`: the request goes as it came.
    pub transform: Option<Box<crate::transform::Transform>>,
    /// The rule's own body limit (the smaller of it and `--max-body-bytes` applies).
    pub max_body_bytes: Option<u64>,
    /// `GET`/`HEAD` responses kept as their `Cache-Control` allows; `None`: no caching.
    pub cache: Option<Box<crate::cache::Settings>>,
    /// Responses compressed for clients that accept it; `None`: passed as they come.
    pub compression: Option<crate::compress::Compression>,
    /// Failed attempts repeated when safe; `None`: no retries.
    pub retry: Option<crate::upstream::retry::RetryPolicy>,
    /// The circuit breaker over the rule's backends, carried across snapshots.
    pub breaker: Option<Arc<crate::upstream::breaker::Breaker>>,
    /// WebSocket upgrades are tunnelled, closed after this much silence; `None`: upgrades
    /// are removed and the request forwarded as a plain one.
    pub websocket: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("the snapshot has no version")]
    NoVersion,
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error("route {route}: securityHeaders: {message}")]
    SecurityHeaders { route: String, message: String },
    #[error("the snapshot's credentials: {0}")]
    Credentials(String),
    #[error("the snapshot's placements: {0}")]
    Placements(String),
    #[error("route {route}: rule {rule}: {message}")]
    Rule {
        route: String,
        rule: usize,
        message: String,
    },
    #[error("route {route}: rule {rule}: {message}")]
    Backends {
        route: String,
        rule: usize,
        message: String,
    },
}

fn identity_headers(rules: &[Rule]) -> Box<[http::HeaderName]> {
    let mut names = vec![
        crate::auth::X_AUTH_KEY_ID.clone(),
        crate::auth::X_AUTH_SUBJECT.clone(),
        crate::headers::X_TENANT_ID.clone(),
    ];
    names.extend(
        rules
            .iter()
            .filter_map(|r| r.auth.as_ref())
            .flat_map(|a| a.claim_headers().cloned()),
    );
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    names.into()
}

impl Runtime {
    /// The state before any snapshot: every request gets 503 `not_ready`.
    pub fn empty() -> Self {
        Self {
            version: String::new(),
            generation: 0,
            router: Router::default(),
            rules: Box::new([]),
            placements: Placements::default(),
            tenant_metrics: TenantMetrics::default(),
            identity_headers: Box::new([]),
        }
    }

    pub fn build(
        snapshot: &Snapshot,
        metrics: &Metrics,
        context: &AuthContext,
    ) -> Result<Self, BuildError> {
        if snapshot.version.is_empty() {
            return Err(BuildError::NoVersion);
        }
        let credentials = Credentials::new(snapshot).map_err(BuildError::Credentials)?;
        let mut rules = Vec::with_capacity(snapshot.routes.iter().map(|r| r.rules.len()).sum());
        let mut ids = Vec::with_capacity(snapshot.routes.len());
        let mut route_handles = metrics.route_handles();
        // Most routes keep the defaults: one copy for all of them.
        let default_security = Arc::new(SecurityHeaders::default());
        for route in &snapshot.routes {
            let name = format!("{}/{}", route.namespace, route.name);
            let route_metrics = route_handles.get(&name);
            let security = match &route.security_headers {
                None => default_security.clone(),
                Some(overrides) => SecurityHeaders::new(Some(overrides))
                    .map(Arc::new)
                    .map_err(|message| BuildError::SecurityHeaders {
                        route: name.clone(),
                        message,
                    })?,
            };
            let concurrency = route
                .rules
                .iter()
                .find_map(|r| r.concurrency.as_ref())
                .map(|c| {
                    // The same limit (same route, policy and settings) carries over from the
                    // previous snapshot with its in-flight count and estimate: a new snapshot
                    // during an incident must not admit a fresh limit on top of the old.
                    let key = format!(
                        "{name}|{}|{}|{}|{}|{}",
                        c.policy, c.min, c.max, c.initial, c.adaptive
                    );
                    metrics.carried.concurrency.try_get_or_make(key, || {
                        Concurrency::new(
                            c,
                            metrics.concurrency_limit.with_label_values(&[&c.policy]),
                        )
                    })
                })
                .transpose()
                .map_err(|message| BuildError::Rule {
                    route: name.clone(),
                    rule: 0,
                    message,
                })?;
            let mut route_ids = Vec::with_capacity(route.rules.len());
            let mut route_cors: Option<(pavilion_proto::Cors, Arc<crate::cors::Cors>)> = None;
            for (index, rule) in route.rules.iter().enumerate() {
                let backends_error = |message| BuildError::Backends {
                    route: name.clone(),
                    rule: index,
                    message,
                };
                let tracking = crate::upstream::balance::Tracking {
                    route: &name,
                    rule: index,
                    carried: &metrics.carried,
                    metrics,
                };
                let upstream = if rule.service.is_empty() {
                    Upstream::Backends(Backends::for_rule(rule, &tracking).map_err(backends_error)?)
                } else {
                    Upstream::Service(Service::from_name(&rule.service).ok_or_else(|| {
                        backends_error(format!("unknown service `{}`", rule.service))
                    })?)
                };
                let rule_error = |message: String| BuildError::Rule {
                    route: name.clone(),
                    rule: index,
                    message,
                };
                let ip = (!rule.ip_allow.is_empty() || !rule.ip_deny.is_empty())
                    .then(|| IpRules::new(&rule.ip_allow, &rule.ip_deny))
                    .transpose()
                    .map_err(rule_error)?;
                let auth = rule
                    .auth
                    .as_ref()
                    .map(|auth| RuleAuth::new(&name, &route.namespace, auth, &credentials, context))
                    .transpose()
                    .map_err(rule_error)?;
                let (limits_before_auth, limits_after_auth) = RuleLimits::new(&rule.rate_limits)
                    .map_err(rule_error)?
                    .split_by_identity();
                let quotas = RuleQuotas::new(&rule.quotas).map_err(rule_error)?;
                // The compiler gives every rule of a route the same policy: compiled once,
                // shared while the next rule's is equal.
                let cors = match (&rule.cors, &route_cors) {
                    (None, _) => None,
                    (Some(cors), Some((same, compiled))) if same == cors => {
                        Some(Arc::clone(compiled))
                    }
                    (Some(cors), _) => {
                        let compiled = Arc::new(crate::cors::Cors::new(cors).map_err(rule_error)?);
                        route_cors = Some((cors.clone(), compiled.clone()));
                        Some(compiled)
                    }
                };
                route_ids.push(rules.len() as RuleId);
                rules.push(Rule {
                    route: name.as_str().into(),
                    index,
                    upstream,
                    tenancy: rule.tenancy.as_ref().map(|t| TenancyRule {
                        required: t.required,
                    }),
                    roles: rule.roles.iter().map(|r| r.as_str().into()).collect(),
                    rights: rule.rights.iter().map(|r| r.as_str().into()).collect(),
                    commands: rule
                        .commands
                        .as_ref()
                        .map(|c| Duration::from_millis(c.window_ms.max(1))),
                    timeout: match rule.timeout_ms {
                        0 => DEFAULT_TIMEOUT,
                        ms => Duration::from_millis(ms),
                    },
                    metrics: route_metrics.clone(),
                    security: security.clone(),
                    ip,
                    auth,
                    limits_before_auth,
                    limits_after_auth,
                    quotas,
                    concurrency: concurrency.clone(),
                    cors,
                    transform: crate::transform::Transform::new(rule)
                        .map_err(rule_error)?
                        .map(Box::new),
                    max_body_bytes: (rule.max_body_bytes > 0).then_some(rule.max_body_bytes),
                    compression: rule
                        .compression
                        .as_ref()
                        .map(crate::compress::Compression::new),
                    cache: rule
                        .cache
                        .as_ref()
                        .map(|cache| {
                            // The rule's identity: its route, position and every field.
                            let scope = std::hash::BuildHasher::hash_one(
                                &foldhash::fast::FixedState::with_seed(0),
                                (&name, index, prost::Message::encode_to_vec(rule)),
                            );
                            crate::cache::Settings::new(cache, scope)
                        })
                        .transpose()
                        .map_err(rule_error)?
                        .map(Box::new),
                    retry: rule.retry.as_ref().map(|retry| {
                        let key = format!(
                            "{name}#{index}|{}|{}",
                            retry.budget_percent, retry.min_retries_per_second
                        );
                        let budget = metrics.carried.budgets.get_or_make(key, || {
                            crate::upstream::retry::Budget::new(
                                retry.budget_percent,
                                retry.min_retries_per_second,
                            )
                        });
                        crate::upstream::retry::RetryPolicy::new(retry, budget)
                    }),
                    breaker: rule.circuit_breaker.as_ref().map(|settings| {
                        let key = format!("{name}#{index}|{settings:?}");
                        let rule_label = index.to_string();
                        metrics.carried.breakers.get_or_make(key, || {
                            crate::upstream::breaker::Breaker::new(
                                &name,
                                index,
                                settings,
                                metrics
                                    .circuit_state
                                    .with_label_values(&[&name, &rule_label]),
                                metrics.circuit_transitions.clone(),
                            )
                        })
                    }),
                    websocket: rule
                        .websocket
                        .as_ref()
                        .map(|w| Duration::from_millis(w.idle_timeout_ms.max(1))),
                });
            }
            ids.push(route_ids);
        }
        let placements =
            Placements::build(snapshot.placements.as_ref()).map_err(BuildError::Placements)?;
        let router = Router::build(&snapshot.routes, &ids)?;
        route_handles.finish();
        Ok(Self {
            version: snapshot.version.clone(),
            generation: GENERATIONS.fetch_add(1, Ordering::Relaxed),
            router,
            tenant_metrics: metrics.tenants(placements.tenant_ids()),
            placements,
            identity_headers: identity_headers(&rules),
            rules: rules.into(),
        })
    }

    /// Every rule of the snapshot.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Policies that count in Redis (limits or quotas), sorted and unique.
    pub fn redis_policies(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .rules
            .iter()
            .flat_map(|r| {
                r.limits_before_auth
                    .redis_policies()
                    .chain(r.limits_after_auth.redis_policies())
                    .chain(
                        r.quotas
                            .iter()
                            .filter(|q| q.backend == crate::ratelimit::Backend::Redis)
                            .map(|q| &*q.policy),
                    )
            })
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// Every quota of the snapshot once (rules of a route share their policies' quotas).
    pub fn quotas(&self) -> Vec<&Quota> {
        let mut seen = std::collections::HashSet::new();
        self.rules
            .iter()
            .flat_map(|rule| rule.quotas.iter())
            .filter(|q| seen.insert((q.policy.clone(), q.index)))
            .collect()
    }

    pub fn is_ready(&self) -> bool {
        !self.version.is_empty()
    }

    pub fn find(&self, request: &RequestFacts<'_>) -> Option<&Rule> {
        self.router
            .find(request)
            .and_then(|id| self.rules.get(id as usize))
    }

    /// The rules whose host and path match, in precedence order, each with whether its
    /// conditions hold (for `explain`; see [`Router::candidates`]).
    pub fn candidates(&self, request: &RequestFacts<'_>) -> Vec<(&Rule, bool)> {
        self.router
            .candidates(request)
            .into_iter()
            .filter_map(|(id, holds)| self.rules.get(id as usize).map(|rule| (rule, holds)))
            .collect()
    }
}
