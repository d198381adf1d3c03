//! The data plane's Prometheus metrics. Per-route handles are resolved when a snapshot is
//! built, so a request only touches atomics — no label lookup, no lock.

use std::collections::HashMap;
use std::time::Duration;

use http::StatusCode;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    pub snapshots_applied: IntCounter,
    pub snapshots_rejected: IntCounter,
    snapshot_info: IntGaugeVec,
    pub control_plane_connected: IntGauge,
    /// Requests refused by authentication, access control or IP lists, by route and reason.
    pub auth_denials: IntCounterVec,
    /// JWKS fetches by URI and result (`ok`, `error`).
    pub jwks_fetches: IntCounterVec,
    /// The current concurrency limit per policy.
    pub concurrency_limit: IntGaugeVec,
    /// Requests shed by a concurrency limit, per policy.
    pub concurrency_shed: IntCounterVec,
    /// State a new snapshot takes over from the last (concurrency limits, backend health,
    /// circuits, retry budgets). Kept here because every runtime build is handed the metrics.
    pub carried: std::sync::Arc<crate::carry::Carried>,
    /// Requests no route matched (and requests refused before routing).
    pub unrouted: RouteMetrics,
    /// Requests on tenant-scoped rules by tenant and status class; tenants past the first
    /// `tenant_labels` of the placement table share the label `_other`.
    tenant_requests: IntCounterVec,
    /// How many tenants get a label of their own.
    pub tenant_labels: usize,
    /// The tenants labelled by the latest snapshot: series of tenants that drop out are
    /// removed, so the label stays bounded over time too.
    labelled_tenants: std::sync::Arc<std::sync::Mutex<Vec<Box<str>>>>,
    /// The route handles of the last runtime built (see [`RouteHandles`]).
    routes: std::sync::Arc<std::sync::Mutex<HashMap<Box<str>, RouteMetrics>>>,
    /// Routes the last runtime built no longer has, whose series go once it serves.
    retiring: std::sync::Arc<std::sync::Mutex<Vec<Box<str>>>>,
    /// Client connections open, all workers together.
    pub connections_open: IntGauge,
    /// Client connections the gateway closed or refused, by reason (`limit`: over
    /// `--max-connections`; `idle`: no request for `--idle-timeout`; `send_timeout`: the
    /// client stopped reading).
    pub connections_closed: IntCounterVec,
    /// 1 while a backend passes its active checks, per route and URL (rules with health
    /// checks only).
    pub upstream_healthy: IntGaugeVec,
    /// Passive ejections per route and backend URL.
    pub upstream_ejections: IntCounterVec,
    /// Circuit state per route and rule: 0 closed, 1 open, 2 half-open.
    pub circuit_state: IntGaugeVec,
    /// Circuit state changes per route, rule and the state entered.
    pub circuit_transitions: IntCounterVec,
    /// Requests on rules with `cache`, per route and result (`hit`, `miss`).
    pub cache_requests: IntCounterVec,
    /// Attempts repeated by `retry`, per route.
    pub retries: IntCounterVec,
    /// Retries a rule's policy called for that its budget refused, per route: the sign of
    /// an outage the budget is keeping from being multiplied.
    pub retries_refused: IntCounterVec,
    /// WebSocket tunnels open, all workers together.
    pub websockets_open: IntGauge,
    /// WebSocket tunnels ended, by reason (`closed`, `idle`, `error`).
    pub websockets_closed: IntCounterVec,
}

/// Handles of one route's series.
#[derive(Clone)]
pub struct RouteMetrics {
    /// Requests by status class 1xx … 5xx.
    by_class: [IntCounter; 5],
    duration: Histogram,
}

impl RouteMetrics {
    pub fn observe(&self, status: StatusCode, elapsed: Duration) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.by_class[class].inc();
        self.duration.observe(elapsed.as_secs_f64());
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        pavilion_telemetry::build::register(&registry);
        let requests = IntCounterVec::new(
            Opts::new(
                "pavilion_requests_total",
                "Requests by route and status class.",
            ),
            &["route", "class"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "pavilion_request_duration_seconds",
                "Time from request arrival to response headers, by route.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        )
        .expect("valid metric");
        let snapshots_applied = IntCounter::new(
            "pavilion_snapshots_applied_total",
            "Snapshots applied (from the control plane or the cache).",
        )
        .expect("valid metric");
        let snapshots_rejected = IntCounter::new(
            "pavilion_snapshots_rejected_total",
            "Snapshots refused (NACKed) because they could not be built.",
        )
        .expect("valid metric");
        let snapshot_info = IntGaugeVec::new(
            Opts::new(
                "pavilion_snapshot_info",
                "The snapshot version being served (value 1).",
            ),
            &["version"],
        )
        .expect("valid metric");
        let control_plane_connected = IntGauge::new(
            "pavilion_control_plane_connected",
            "1 while a snapshot stream to a control plane is open.",
        )
        .expect("valid metric");
        let auth_denials = IntCounterVec::new(
            Opts::new(
                "pavilion_auth_denials_total",
                "Requests refused by authentication, access control or IP lists, by route and reason (the error code).",
            ),
            &["route", "reason"],
        )
        .expect("valid metric");
        let jwks_fetches = IntCounterVec::new(
            Opts::new(
                "pavilion_jwks_fetches_total",
                "JWKS document fetches by URI and result.",
            ),
            &["uri", "result"],
        )
        .expect("valid metric");
        let concurrency_limit = IntGaugeVec::new(
            Opts::new(
                "pavilion_concurrency_limit",
                "The current concurrency limit of each policy that sets one.",
            ),
            &["policy"],
        )
        .expect("valid metric");
        let concurrency_shed = IntCounterVec::new(
            Opts::new(
                "pavilion_concurrency_shed_total",
                "Requests refused (503 overloaded) by a concurrency limit.",
            ),
            &["policy"],
        )
        .expect("valid metric");
        let tenant_requests = IntCounterVec::new(
            Opts::new(
                "pavilion_tenant_requests_total",
                "Requests on tenant-scoped rules by tenant and status class; tenants beyond the first --tenant-metric-labels of the placement table (in tenant order) are counted under _other.",
            ),
            &["tenant", "class"],
        )
        .expect("valid metric");
        let connections_open = IntGauge::new(
            "pavilion_connections_open",
            "Client connections open, all workers together.",
        )
        .expect("valid metric");
        let connections_closed = IntCounterVec::new(
            Opts::new(
                "pavilion_connections_closed_total",
                "Client connections the gateway refused or closed, by reason: limit (over --max-connections), idle (--idle-timeout), send_timeout (the client stopped reading).",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let upstream_healthy = IntGaugeVec::new(
            Opts::new(
                "pavilion_upstream_healthy",
                "1 while a backend of a rule with health checks passes its active checks; 0 while they fail it.",
            ),
            &["route", "backend"],
        )
        .expect("valid metric");
        let upstream_ejections = IntCounterVec::new(
            Opts::new(
                "pavilion_upstream_ejections_total",
                "Backends taken out by passive health checks (consecutive failures), per route and backend.",
            ),
            &["route", "backend"],
        )
        .expect("valid metric");
        let circuit_state = IntGaugeVec::new(
            Opts::new(
                "pavilion_circuit_state",
                "Circuit breaker state per route and rule: 0 closed, 1 open, 2 half-open.",
            ),
            &["route", "rule"],
        )
        .expect("valid metric");
        let circuit_transitions = IntCounterVec::new(
            Opts::new(
                "pavilion_circuit_transitions_total",
                "Circuit breaker state changes per route, rule and the state entered (open, half_open, closed).",
            ),
            &["route", "rule", "state"],
        )
        .expect("valid metric");
        let cache_requests = IntCounterVec::new(
            Opts::new(
                "pavilion_cache_requests_total",
                "GET and HEAD requests on rules with a cache, per route and result: hit (served from the cache, or from another request's coalesced fetch) or miss.",
            ),
            &["route", "result"],
        )
        .expect("valid metric");
        let retries = IntCounterVec::new(
            Opts::new(
                "pavilion_retries_total",
                "Upstream attempts repeated by a rule's retry policy, per route.",
            ),
            &["route"],
        )
        .expect("valid metric");
        let retries_refused = IntCounterVec::new(
            Opts::new(
                "pavilion_retries_refused_total",
                "Retries a rule's policy called for that its retry budget refused, per route.",
            ),
            &["route"],
        )
        .expect("valid metric");
        let websockets_open = IntGauge::new(
            "pavilion_websockets_open",
            "WebSocket tunnels open, all workers together.",
        )
        .expect("valid metric");
        let websockets_closed = IntCounterVec::new(
            Opts::new(
                "pavilion_websockets_closed_total",
                "WebSocket tunnels ended, by reason: closed (a side closed its connection), idle (the rule's websocket.idleTimeout), error (a side reset or failed).",
            ),
            &["reason"],
        )
        .expect("valid metric");
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(websockets_open.clone()),
            Box::new(upstream_healthy.clone()),
            Box::new(upstream_ejections.clone()),
            Box::new(circuit_state.clone()),
            Box::new(circuit_transitions.clone()),
            Box::new(retries.clone()),
            Box::new(retries_refused.clone()),
            Box::new(cache_requests.clone()),
            Box::new(websockets_closed.clone()),
            Box::new(connections_open.clone()),
            Box::new(tenant_requests.clone()),
            Box::new(connections_closed.clone()),
            Box::new(duration.clone()),
            Box::new(snapshots_applied.clone()),
            Box::new(snapshots_rejected.clone()),
            Box::new(snapshot_info.clone()),
            Box::new(control_plane_connected.clone()),
            Box::new(auth_denials.clone()),
            Box::new(jwks_fetches.clone()),
            Box::new(concurrency_limit.clone()),
            Box::new(concurrency_shed.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        let unrouted = route_metrics(&requests, &duration, "");
        Self {
            registry,
            requests,
            duration,
            snapshots_applied,
            snapshots_rejected,
            snapshot_info,
            control_plane_connected,
            auth_denials,
            jwks_fetches,
            concurrency_limit,
            concurrency_shed,
            carried: Default::default(),
            unrouted,
            tenant_requests,
            tenant_labels: DEFAULT_TENANT_LABELS,
            labelled_tenants: Default::default(),
            routes: Default::default(),
            retiring: Default::default(),
            connections_open,
            connections_closed,
            websockets_open,
            websockets_closed,
            upstream_healthy,
            upstream_ejections,
            circuit_state,
            circuit_transitions,
            retries,
            retries_refused,
            cache_requests,
        }
    }

    /// Removes the series of the routes the runtime now serving dropped. Requests the old
    /// runtime finishes on those routes after this are not counted.
    pub fn retire_gone_routes(&self) {
        let gone = std::mem::take(&mut *self.retiring.lock().unwrap_or_else(|p| p.into_inner()));
        for route in gone {
            self.remove_route_series(&route);
        }
    }

    fn remove_route_series(&self, route: &str) {
        for class in STATUS_CLASSES {
            let _ = self.requests.remove_label_values(&[route, class]);
        }
        let _ = self.duration.remove_label_values(&[route]);
        let _ = self.retries.remove_label_values(&[route]);
        let _ = self.retries_refused.remove_label_values(&[route]);
    }

    /// Handles for the routes of one runtime build ([`RouteHandles::get`]).
    pub fn route_handles(&self) -> RouteHandles<'_> {
        let live = std::mem::take(&mut *self.routes.lock().unwrap_or_else(|p| p.into_inner()));
        RouteHandles {
            metrics: self,
            live,
            created: Vec::new(),
            finished: false,
        }
    }

    pub fn serving(&self, version: &str) {
        self.snapshot_info.reset();
        self.snapshot_info.with_label_values(&[version]).set(1);
    }
}

/// The per-route handles of one runtime build. A route a serving runtime has keeps its
/// handles (six label lookups per route were the largest cost of building 10 000 routes),
/// and a route the build takes over as it is asks for nothing; once the build succeeds
/// ([`RouteHandles::finish`], naming the routes it dropped) and its runtime serves
/// ([`Metrics::retire_gone_routes`]), the series of dropped routes are removed, so route
/// churn does not grow `/metrics` — and memory — without bound.
pub struct RouteHandles<'a> {
    metrics: &'a Metrics,
    /// Every route a serving runtime may have, and those this build added.
    live: HashMap<Box<str>, RouteMetrics>,
    /// Routes this build added: gone again if it fails.
    created: Vec<Box<str>>,
    finished: bool,
}

impl RouteHandles<'_> {
    /// Handles for one route (`namespace/name`) the build makes.
    pub fn get(&mut self, route: &str) -> RouteMetrics {
        if let Some(handles) = self.live.get(route) {
            return handles.clone();
        }
        let handles = route_metrics(&self.metrics.requests, &self.metrics.duration, route);
        self.live.insert(route.into(), handles.clone());
        self.created.push(route.into());
        handles
    }

    /// The build succeeded without the routes `gone` (none of them made again by it): they
    /// are retired once it serves.
    pub fn finish<'r>(mut self, gone: impl IntoIterator<Item = &'r str>) {
        let gone = gone
            .into_iter()
            .filter_map(|route| self.live.remove_entry(route).map(|(name, _)| name))
            .collect();
        *self
            .metrics
            .retiring
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = gone;
        self.finished = true;
    }
}

impl Drop for RouteHandles<'_> {
    /// Hands the handles back for the next build; a failed build removes only what it
    /// added (the runtime still serving has its routes).
    fn drop(&mut self) {
        let mut live = std::mem::take(&mut self.live);
        if !self.finished {
            for route in &self.created {
                live.remove(route);
                self.metrics.remove_route_series(route);
            }
        }
        *self
            .metrics
            .routes
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = live;
    }
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Tenants labelled individually in `pavilion_tenant_requests_total` unless configured.
pub const DEFAULT_TENANT_LABELS: usize = 100;

/// Per-tenant request counters of one snapshot: a handle per labelled tenant, one shared
/// `_other` handle for the rest, so the label's cardinality is bounded whatever clients do.
#[derive(Default)]
pub struct TenantMetrics {
    labelled: std::collections::HashMap<Box<str>, [IntCounter; 5], foldhash::fast::RandomState>,
    other: Option<[IntCounter; 5]>,
}

impl TenantMetrics {
    pub fn observe(&self, tenant: &str, status: StatusCode) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        if let Some(counters) = self.labelled.get(tenant).or(self.other.as_ref()) {
            counters[class].inc();
        }
    }
}

impl Metrics {
    /// Handles for `tenants` (in table order): the first `tenant_labels` by name.
    pub fn tenants<'a>(&self, tenants: impl Iterator<Item = &'a str>) -> TenantMetrics {
        let classes = |tenant: &str| {
            STATUS_CLASSES.map(|class| self.tenant_requests.with_label_values(&[tenant, class]))
        };
        let chosen: Vec<Box<str>> = tenants.take(self.tenant_labels).map(Into::into).collect();
        let mut previous = self
            .labelled_tenants
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for gone in previous.iter().filter(|t| !chosen.contains(t)) {
            for class in STATUS_CLASSES {
                let _ = self.tenant_requests.remove_label_values(&[gone, class]);
            }
        }
        let labelled = chosen.iter().map(|t| (t.clone(), classes(t))).collect();
        *previous = chosen;
        TenantMetrics {
            labelled,
            other: Some(classes("_other")),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn route_metrics(requests: &IntCounterVec, duration: &HistogramVec, route: &str) -> RouteMetrics {
    RouteMetrics {
        by_class: STATUS_CLASSES.map(|class| requests.with_label_values(&[route, class])),
        duration: duration.with_label_values(&[route]),
    }
}

/// The routes with a `pavilion_requests_total` series (besides unrouted requests').
#[cfg(test)]
pub(crate) fn routes_in(metrics: &Metrics) -> Vec<String> {
    let mut routes: Vec<String> = metrics
        .registry
        .gather()
        .iter()
        .filter(|family| family.name() == "pavilion_requests_total")
        .flat_map(|family| family.get_metric().to_vec())
        .filter_map(|m| {
            let label = m.get_label().iter().find(|l| l.name() == "route")?;
            Some(label.value().to_owned()).filter(|route| !route.is_empty())
        })
        .collect();
    routes.sort();
    routes.dedup();
    routes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_keeps_its_series_while_it_lasts_and_loses_it_when_gone() {
        let metrics = Metrics::new();
        let mut first = metrics.route_handles();
        first
            .get("shop/a")
            .observe(StatusCode::OK, Duration::from_millis(1));
        first
            .get("shop/gone")
            .observe(StatusCode::OK, Duration::from_millis(1));
        first.finish([]);
        assert_eq!(routes_in(&metrics), ["shop/a", "shop/gone"]);

        // A build that fails removes nothing the old runtime serves, only what it added.
        let mut failed = metrics.route_handles();
        failed.get("shop/a");
        failed.get("shop/new");
        drop(failed);
        assert_eq!(routes_in(&metrics), ["shop/a", "shop/gone"]);

        let mut second = metrics.route_handles();
        let a = second.get("shop/a");
        second.finish(["shop/gone"]);
        // Gone only once the new runtime serves.
        assert_eq!(routes_in(&metrics), ["shop/a", "shop/gone"]);
        metrics.retire_gone_routes();
        assert_eq!(routes_in(&metrics), ["shop/a"]);
        // The same series, counting on.
        a.observe(StatusCode::OK, Duration::from_millis(1));
        let value = metrics.requests.with_label_values(&["shop/a", "2xx"]).get();
        assert_eq!(value, 2);
    }
}
