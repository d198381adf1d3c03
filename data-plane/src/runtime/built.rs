//! One route made ready to serve — its rules and its part of the matcher — built once and
//! shared by every runtime whose snapshot holds the route unchanged.

use std::sync::Arc;
use std::time::Duration;

use pavilion_proto as proto;

use super::{BuildError, DEFAULT_TIMEOUT, Rule, TenancyRule, Upstream};
use crate::auth::ip::IpRules;
use crate::auth::{AuthContext, Credentials, RuleAuth};
use crate::metrics::{Metrics, RouteHandles};
use crate::placement::Service;
use crate::ratelimit::RuleLimits;
use crate::ratelimit::concurrency::Concurrency;
use crate::ratelimit::quota::RuleQuotas;
use crate::route::RouteMatches;
use crate::security::SecurityHeaders;
use crate::upstream::Backends;

pub struct BuiltRoute {
    /// `namespace/name`.
    pub name: Box<str>,
    pub rules: Box<[Rule]>,
    pub matches: RouteMatches,
    /// Some rule authenticates: it holds the snapshot's API keys and revocations, and is
    /// built again when they change.
    pub authenticates: bool,
    /// Some rule reads a file (a JWT secret): built again with every snapshot, which reads
    /// the file again, as before routes were kept.
    pub reads_files: bool,
}

/// What the routes of one build share.
pub struct Shared<'a> {
    metrics: &'a Metrics,
    context: &'a AuthContext,
    /// Most routes keep the default security headers: one copy for all of them.
    default_security: Arc<SecurityHeaders>,
}

impl<'a> Shared<'a> {
    pub fn new(metrics: &'a Metrics, context: &'a AuthContext) -> Self {
        Self {
            metrics,
            context,
            default_security: Arc::new(SecurityHeaders::default()),
        }
    }
}

impl BuiltRoute {
    pub fn new(
        route: &proto::Route,
        route_handles: &mut RouteHandles<'_>,
        shared: &Shared<'_>,
        credentials: &Credentials,
    ) -> Result<Self, BuildError> {
        let metrics = shared.metrics;
        let name = format!("{}/{}", route.namespace, route.name);
        let route_metrics = route_handles.get(&name);
        let security = match &route.security_headers {
            None => shared.default_security.clone(),
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
                    Concurrency::new(c, metrics.concurrency_limit.with_label_values(&[&c.policy]))
                })
            })
            .transpose()
            .map_err(|message| BuildError::Rule {
                route: name.clone(),
                rule: 0,
                message,
            })?;
        let mut rules = Vec::with_capacity(route.rules.len());
        let mut route_cors: Option<(proto::Cors, Arc<crate::cors::Cors>)> = None;
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
            let upstream =
                if rule.service.is_empty() {
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
                .map(|auth| {
                    RuleAuth::new(&name, &route.namespace, auth, credentials, shared.context)
                })
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
                (Some(cors), Some((same, compiled))) if same == cors => Some(Arc::clone(compiled)),
                (Some(cors), _) => {
                    let compiled = Arc::new(crate::cors::Cors::new(cors).map_err(rule_error)?);
                    route_cors = Some((cors.clone(), compiled.clone()));
                    Some(compiled)
                }
            };
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
        Ok(Self {
            matches: RouteMatches::new(route)?,
            authenticates: route.rules.iter().any(|r| r.auth.is_some()),
            reads_files: route
                .rules
                .iter()
                .filter_map(|r| r.auth.as_ref())
                .flat_map(|auth| &auth.jwt)
                .flat_map(|provider| &provider.keys)
                .any(|key| {
                    matches!(
                        key.source,
                        Some(proto::v1::static_key::Source::SecretFile(_))
                    )
                }),
            name: name.into(),
            rules: rules.into(),
        })
    }
}
