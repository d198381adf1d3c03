//! `Runtime`: a snapshot made ready to serve — matcher, backends, timeouts and metric
//! handles — built once when the snapshot arrives, never per request. Building can fail
//! (the data plane then NACKs and keeps its current runtime); serving cannot.

use std::sync::Arc;
use std::time::Duration;

use pavilion_proto::Snapshot;

use crate::metrics::{Metrics, RouteMetrics};
use crate::route::{RequestFacts, RouteError, Router, RuleId};
use crate::security::SecurityHeaders;
use crate::upstream::Backends;

/// Used when a rule carries no timeout (the compiler always sets one).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Runtime {
    /// Empty while nothing was ever applied.
    pub version: String,
    router: Router,
    rules: Box<[Rule]>,
}

/// One rule, ready to forward.
pub struct Rule {
    /// `namespace/name` of the route, for errors, logs and metrics.
    pub route: Box<str>,
    pub backends: Backends,
    pub timeout: Duration,
    pub metrics: RouteMetrics,
    /// Shared by the rules of one route.
    pub security: Arc<SecurityHeaders>,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("the snapshot has no version")]
    NoVersion,
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error("route {route}: securityHeaders: {message}")]
    SecurityHeaders { route: String, message: String },
    #[error("route {route}: rule {rule}: {message}")]
    Backends {
        route: String,
        rule: usize,
        message: String,
    },
}

impl Runtime {
    /// The state before any snapshot: every request gets 503 `not_ready`.
    pub fn empty() -> Self {
        Self {
            version: String::new(),
            router: Router::default(),
            rules: Box::new([]),
        }
    }

    pub fn build(snapshot: &Snapshot, metrics: &Metrics) -> Result<Self, BuildError> {
        if snapshot.version.is_empty() {
            return Err(BuildError::NoVersion);
        }
        let mut rules = Vec::new();
        let mut ids = Vec::with_capacity(snapshot.routes.len());
        for route in &snapshot.routes {
            let name = format!("{}/{}", route.namespace, route.name);
            let route_metrics = metrics.route(&name);
            let security = SecurityHeaders::new(route.security_headers.as_ref())
                .map(Arc::new)
                .map_err(|message| BuildError::SecurityHeaders {
                    route: name.clone(),
                    message,
                })?;
            let mut route_ids = Vec::with_capacity(route.rules.len());
            for (index, rule) in route.rules.iter().enumerate() {
                let backends =
                    Backends::new(&rule.backends).map_err(|message| BuildError::Backends {
                        route: name.clone(),
                        rule: index,
                        message,
                    })?;
                route_ids.push(rules.len() as RuleId);
                rules.push(Rule {
                    route: name.as_str().into(),
                    backends,
                    timeout: match rule.timeout_ms {
                        0 => DEFAULT_TIMEOUT,
                        ms => Duration::from_millis(ms),
                    },
                    metrics: route_metrics.clone(),
                    security: security.clone(),
                });
            }
            ids.push(route_ids);
        }
        Ok(Self {
            version: snapshot.version.clone(),
            router: Router::build(&snapshot.routes, &ids)?,
            rules: rules.into(),
        })
    }

    pub fn is_ready(&self) -> bool {
        !self.version.is_empty()
    }

    pub fn find(&self, request: &RequestFacts<'_>) -> Option<&Rule> {
        self.router
            .find(request)
            .and_then(|id| self.rules.get(id as usize))
    }
}
