//! `Runtime`: a snapshot made ready to serve — matcher, backends, timeouts and metric
//! handles — built once when the snapshot arrives, never per request. Building can fail
//! (the data plane then NACKs and keeps its current runtime); serving cannot.

mod built;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use pavilion_proto::{Snapshot, SnapshotFrame};
use prost::Message;

use crate::auth::ip::IpRules;
use crate::auth::{AuthContext, Credentials, RuleAuth};
use crate::metrics::{Metrics, RouteMetrics, TenantMetrics};
use crate::placement::{Placements, Service};
use crate::ratelimit::RuleLimits;
use crate::ratelimit::concurrency::Concurrency;
use crate::ratelimit::quota::{Quota, RuleQuotas};
use crate::route::{RequestFacts, RouteError, RouteMatches, Router, RuleId};
use crate::security::SecurityHeaders;
use crate::upstream::Backends;
use built::BuiltRoute;

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
    /// The routes in the snapshot's order.
    routes: Box<[Arc<BuiltRoute>]>,
    /// The routes by slot ([`RuleId::route`]); `None`: a free slot.
    slots: Box<[Option<Arc<BuiltRoute>>]>,
    /// Per route, in the snapshot's order: its encoded form (what the next snapshot can
    /// take as it is) and its slot.
    encoded: Box<[Bytes]>,
    route_slots: Box<[u32]>,
    /// Positions (in `routes`) of the routes built for this runtime, not taken over.
    fresh: Box<[u32]>,
    /// Of the API keys and revocations the authenticating routes were built with.
    credentials_revision: u64,
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
    #[error("a route cannot be decoded: {0}")]
    Undecodable(String),
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

/// `snapshot` as a data plane receives it.
fn frame(snapshot: &Snapshot) -> SnapshotFrame {
    SnapshotFrame::decode(Bytes::from(snapshot.encode_to_vec()))
        .expect("an encoded Snapshot always reads as a SnapshotFrame")
}

/// Identifies the API keys and revocations of a snapshot.
fn credentials_revision(frame: &SnapshotFrame) -> u64 {
    let mut encoded = Vec::new();
    for key in &frame.api_keys {
        key.encode_length_delimited(&mut encoded)
            .expect("a Vec grows as needed");
    }
    encoded.push(0xff);
    for revoked in &frame.revocations {
        revoked
            .encode_length_delimited(&mut encoded)
            .expect("a Vec grows as needed");
    }
    std::hash::BuildHasher::hash_one(&foldhash::fast::FixedState::with_seed(0), &encoded)
}

fn identity_headers<'r>(rules: impl Iterator<Item = &'r Rule>) -> Box<[http::HeaderName]> {
    let mut names = vec![
        crate::auth::X_AUTH_KEY_ID.clone(),
        crate::auth::X_AUTH_SUBJECT.clone(),
        crate::headers::X_TENANT_ID.clone(),
    ];
    names.extend(
        rules
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
            routes: Box::new([]),
            slots: Box::new([]),
            encoded: Box::new([]),
            route_slots: Box::new([]),
            fresh: Box::new([]),
            credentials_revision: 0,
            placements: Placements::default(),
            tenant_metrics: TenantMetrics::default(),
            identity_headers: Box::new([]),
        }
    }

    /// Builds `snapshot` from scratch (tests, `explain`).
    pub fn build(
        snapshot: &Snapshot,
        metrics: &Metrics,
        context: &AuthContext,
    ) -> Result<Self, BuildError> {
        let frame = frame(snapshot);
        Self::build_frame(&frame, &Self::empty(), metrics, context)
    }

    /// Builds the snapshot `frame` carries, taking every route that `previous` built from
    /// the same bytes (and the same credentials, for routes that authenticate) as it is, and
    /// patching `previous`'s matcher where routes changed.
    pub fn build_frame(
        frame: &SnapshotFrame,
        previous: &Runtime,
        metrics: &Metrics,
        context: &AuthContext,
    ) -> Result<Self, BuildError> {
        Self::build_from(frame, None, previous, metrics, context)
    }

    /// [`build_frame`](Self::build_frame) for a snapshot made by a delta over `previous`'s:
    /// `kept[i]` is the position in `previous` of route `i` when the delta kept it, so the
    /// routes taken over are known without looking for their bytes.
    pub fn build_delta(
        frame: &SnapshotFrame,
        kept: &[Option<u32>],
        previous: &Runtime,
        metrics: &Metrics,
        context: &AuthContext,
    ) -> Result<Self, BuildError> {
        let kept = (kept.len() == frame.routes.len()).then_some(kept);
        Self::build_from(frame, kept, previous, metrics, context)
    }

    fn build_from(
        frame: &SnapshotFrame,
        kept: Option<&[Option<u32>]>,
        previous: &Runtime,
        metrics: &Metrics,
        context: &AuthContext,
    ) -> Result<Self, BuildError> {
        if frame.version.is_empty() {
            return Err(BuildError::NoVersion);
        }
        let credentials_revision = credentials_revision(frame);
        let make_credentials = || {
            Credentials::from_parts(&frame.api_keys, &frame.revocations)
                .map_err(BuildError::Credentials)
        };
        // New keys or revocations are checked whether or not a route is built with them (a
        // bad key must refuse this snapshot, not a later one that happens to rebuild a
        // route); unchanged ones are built only when a route needs them.
        let mut credentials = if credentials_revision == previous.credentials_revision {
            None
        } else {
            Some(make_credentials()?)
        };
        let mut route_handles = metrics.route_handles();
        let shared = built::Shared::new(metrics, context);
        let mut slots: Vec<Option<Arc<BuiltRoute>>> = vec![None; previous.slots.len()];
        // In the snapshot's order: each route, its encoded form and its slot once known.
        let mut order: Vec<(Arc<BuiltRoute>, Bytes, Option<u32>)> =
            Vec::with_capacity(frame.routes.len());
        // Whether the routes taken over keep their order (a Kubernetes route deleted and
        // created again moves to the end with the same bytes): else the matcher is built
        // from scratch.
        let mut in_order = true;
        let mut last_position = None;
        // Without a delta's word for it, `previous`'s routes are found by their bytes.
        let by_bytes: HashMap<&[u8], usize, foldhash::fast::RandomState> = match kept {
            Some(_) => HashMap::default(),
            None => previous
                .encoded
                .iter()
                .enumerate()
                .map(|(position, encoded)| (&encoded[..], position))
                .collect(),
        };
        for (index, encoded) in frame.routes.iter().enumerate() {
            let found = match kept {
                Some(kept) => kept[index]
                    .map(|position| position as usize)
                    .filter(|&position| previous.encoded.get(position) == Some(encoded)),
                None => by_bytes.get(&encoded[..]).copied(),
            };
            let taken = found.filter(|&position| {
                let route = &previous.routes[position];
                !route.reads_files
                    && (!route.authenticates
                        || previous.credentials_revision == credentials_revision)
            });
            match taken {
                Some(position) => {
                    in_order &= last_position < Some(position);
                    last_position = Some(position);
                    let route = &previous.routes[position];
                    let slot = previous.route_slots[position];
                    slots[slot as usize] = Some(route.clone());
                    order.push((
                        route.clone(),
                        previous.encoded[position].clone(),
                        Some(slot),
                    ));
                }
                None => {
                    let route = pavilion_proto::Route::decode(&encoded[..])
                        .map_err(|e| BuildError::Undecodable(e.to_string()))?;
                    let credentials = match &mut credentials {
                        Some(credentials) => &*credentials,
                        None => credentials.insert(make_credentials()?),
                    };
                    let route = BuiltRoute::new(&route, &mut route_handles, &shared, credentials)?;
                    // A copy: a slice would keep the whole received snapshot alive.
                    order.push((Arc::new(route), Bytes::copy_from_slice(encoded), None));
                }
            }
        }
        // What changed: the routes built now, and those of `previous` not taken over.
        let fresh_positions: Box<[u32]> = order
            .iter()
            .zip(0..)
            .filter(|((.., slot), _)| slot.is_none())
            .map(|(_, position)| position)
            .collect();
        let fresh: Vec<Arc<BuiltRoute>> = order
            .iter()
            .filter(|(.., slot)| slot.is_none())
            .map(|(route, ..)| route.clone())
            .collect();
        let dropped: Vec<Arc<BuiltRoute>> = previous
            .slots
            .iter()
            .zip(&slots)
            .filter_map(|(old, now)| {
                let old = old.as_ref()?;
                let kept = now.as_ref().is_some_and(|now| Arc::ptr_eq(now, old));
                (!kept).then(|| old.clone())
            })
            .collect();
        // New routes take the slots nobody kept, then new ones.
        let mut free = (0..slots.len() as u32)
            .filter(|&slot| slots[slot as usize].is_none())
            .collect::<Vec<_>>()
            .into_iter();
        for (route, _, slot) in &mut order {
            if slot.is_none() {
                let next = free.next().unwrap_or_else(|| {
                    slots.push(None);
                    slots.len() as u32 - 1
                });
                slots[next as usize] = Some(route.clone());
                *slot = Some(next);
            }
        }
        let placed: Vec<(&RouteMatches, u32)> = order
            .iter()
            .map(|(route, _, slot)| (&route.matches, slot.unwrap_or_default()))
            .collect();
        let router = if previous.slots.is_empty() || !in_order {
            Router::assemble(&placed)?
        } else {
            let changed: Vec<&RouteMatches> =
                fresh.iter().chain(&dropped).map(|r| &r.matches).collect();
            previous.router.patch(&placed, &changed)?
        };
        let placements =
            Placements::build(frame.placements.as_ref()).map_err(BuildError::Placements)?;
        let mut routes = Vec::with_capacity(order.len());
        let mut encoded = Vec::with_capacity(order.len());
        let mut route_slots = Vec::with_capacity(order.len());
        for (route, key, slot) in order {
            routes.push(route);
            encoded.push(key);
            route_slots.push(slot.unwrap_or_default());
        }
        // Routes dropped, unless one of the same name was built now: their series go.
        let fresh_names: std::collections::HashSet<&str> =
            fresh.iter().map(|route| &*route.name).collect();
        route_handles.finish(
            dropped
                .iter()
                .map(|route| &*route.name)
                .filter(|name| !fresh_names.contains(name)),
        );
        Ok(Self {
            version: frame.version.clone(),
            generation: GENERATIONS.fetch_add(1, Ordering::Relaxed),
            router,
            tenant_metrics: metrics.tenants(placements.tenant_ids()),
            placements,
            identity_headers: identity_headers(routes.iter().flat_map(|r| &r.rules[..])),
            routes: routes.into(),
            slots: slots.into(),
            encoded: encoded.into(),
            route_slots: route_slots.into(),
            fresh: fresh_positions,
            credentials_revision,
        })
    }

    /// Each route's encoding, in the snapshot's order.
    pub fn encoded_routes(&self) -> &[Bytes] {
        &self.encoded
    }

    /// Every rule of the snapshot, in its order.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.routes.iter().flat_map(|route| &route.rules[..])
    }

    fn rule(&self, id: RuleId) -> Option<&Rule> {
        self.slots
            .get(id.route as usize)?
            .as_ref()?
            .rules
            .get(id.rule as usize)
    }

    /// The rules of the routes built for this runtime (not taken over from the previous
    /// one): what a new snapshot brought.
    pub fn fresh_rules(&self) -> impl Iterator<Item = &Rule> {
        self.fresh
            .iter()
            .flat_map(|&position| &self.routes[position as usize].rules[..])
    }

    /// Policies of `rules` that count in Redis (limits or quotas), sorted and unique.
    pub fn redis_policies<'r>(rules: impl Iterator<Item = &'r Rule>) -> Vec<&'r str> {
        let mut names: Vec<&str> = rules
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
        self.rules()
            .flat_map(|rule| rule.quotas.iter())
            .filter(|q| seen.insert((q.policy.clone(), q.index)))
            .collect()
    }

    pub fn is_ready(&self) -> bool {
        !self.version.is_empty()
    }

    pub fn find(&self, request: &RequestFacts<'_>) -> Option<&Rule> {
        self.router.find(request).and_then(|id| self.rule(id))
    }

    /// The rules whose host and path match, in precedence order, each with whether its
    /// conditions hold (for `explain`; see [`Router::candidates`]).
    pub fn candidates(&self, request: &RequestFacts<'_>) -> Vec<(&Rule, bool)> {
        self.router
            .candidates(request)
            .into_iter()
            .filter_map(|(id, holds)| self.rule(id).map(|rule| (rule, holds)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pavilion_proto as proto;
    use pavilion_tests::snapshot::{api_key, prefix_rule, route, snapshot};

    fn context(metrics: &Metrics) -> AuthContext {
        AuthContext {
            jwks: crate::auth::jwks::JwksCache::new(
                crate::Config::local().jwks,
                crate::upstream::tls_config(&crate::Config::local().upstream).unwrap(),
                metrics.jwks_fetches.clone(),
            ),
            issued_keys: None,
        }
    }

    fn keyed(mut rule: proto::Rule) -> proto::Rule {
        rule.auth = Some(proto::Auth {
            api_keys: Some(proto::ApiKeyAuth::default()),
            ..Default::default()
        });
        rule
    }

    /// The route (`namespace/name`) serving `host` + `path`, and its rule.
    fn serving<'r>(runtime: &'r Runtime, host: &str, path: &str) -> Option<&'r Rule> {
        runtime.find(&RequestFacts {
            host: Some(host),
            path,
            method: &http::Method::GET,
            headers: &http::HeaderMap::new(),
        })
    }

    /// Route `name` for `host`, forwarding `prefix` to a backend nobody listens on.
    fn plain(name: &str, host: &str, prefix: &str) -> pavilion_proto::Route {
        route(
            name,
            &[host],
            vec![prefix_rule(prefix, &[("http://127.0.0.1:9", 1)])],
        )
    }

    fn first_rule<'r>(runtime: &'r Runtime, route: &str) -> &'r Rule {
        runtime.rules().find(|rule| &*rule.route == route).unwrap()
    }

    /// With a delta's positions the routes kept are taken without a lookup — and a
    /// position whose bytes are not the route's (a bug upstream) is not trusted.
    #[tokio::test]
    async fn a_delta_build_takes_the_routes_it_kept_by_position() {
        let metrics = Metrics::new();
        let context = context(&metrics);
        let v1 = snapshot(
            "v1",
            vec![plain("ns/a", "a.test", "/a"), plain("ns/b", "b.test", "/b")],
        );
        let first = Runtime::build(&v1, &metrics, &context).unwrap();
        assert_eq!(first.fresh.len(), 2, "all built");
        let mut v2 = v1.clone();
        v2.version = "v2".into();
        v2.routes.push(plain("ns/c", "c.test", "/c"));
        // a kept (from position 0), b said to come from position 0 too: wrong bytes.
        let second = Runtime::build_delta(
            &frame(&v2),
            &[Some(0), Some(0), None],
            &first,
            &metrics,
            &context,
        )
        .unwrap();
        assert!(std::ptr::eq(
            first_rule(&first, "ns/a"),
            first_rule(&second, "ns/a")
        ));
        assert!(!std::ptr::eq(
            first_rule(&first, "ns/b"),
            first_rule(&second, "ns/b")
        ));
        assert_eq!(&second.fresh[..], &[1, 2], "b and c built, a taken");
        let names: Vec<&str> = second.fresh_rules().map(|rule| &*rule.route).collect();
        assert_eq!(names, ["ns/b", "ns/c"]);
        let headers = http::HeaderMap::new();
        let facts = RequestFacts {
            host: Some("c.test"),
            path: "/c/x",
            method: &http::Method::GET,
            headers: &headers,
        };
        assert_eq!(second.find(&facts).map(|r| &*r.route), Some("ns/c"));
    }

    #[tokio::test]
    async fn a_new_snapshot_takes_unchanged_routes_as_they_are_and_builds_the_rest() {
        let metrics = Metrics::new();
        let context = context(&metrics);
        let up = "http://127.0.0.1:9";
        let v1 = snapshot(
            "v1",
            vec![
                plain("ns/a", "a.test", "/a"),
                plain("ns/b", "b.test", "/b"),
                plain("ns/c", "c.test", "/c"),
                route(
                    "ns/k",
                    &["k.test"],
                    vec![keyed(prefix_rule("/", &[(up, 1)]))],
                ),
            ],
        );
        let first = Runtime::build(&v1, &metrics, &context).unwrap();

        // b edited, c deleted, d added before k; a and k untouched, the keys the same.
        let mut v2 = v1.clone();
        v2.version = "v2".into();
        v2.routes[1].rules[0] = prefix_rule("/b2", &[(up, 1)]);
        v2.routes.remove(2);
        v2.routes.insert(2, plain("ns/d", "a.test", "/a/d"));
        let second = Runtime::build_frame(&frame(&v2), &first, &metrics, &context).unwrap();
        assert!(std::ptr::eq(
            first_rule(&first, "ns/a"),
            first_rule(&second, "ns/a")
        ));
        assert!(std::ptr::eq(
            first_rule(&first, "ns/k"),
            first_rule(&second, "ns/k")
        ));
        assert!(!std::ptr::eq(
            first_rule(&first, "ns/b"),
            first_rule(&second, "ns/b")
        ));
        assert_eq!(second.encoded.len(), 4, "c is forgotten");
        // c's metric series go once the runtime without it serves; kept routes keep theirs.
        metrics.retire_gone_routes();
        let series = crate::metrics::routes_in(&metrics);
        for route in ["ns/a", "ns/b", "ns/d", "ns/k"] {
            assert!(series.iter().any(|s| s == route), "{route}: {series:?}");
        }
        assert!(!series.iter().any(|s| s == "ns/c"), "{series:?}");

        // It routes exactly as a runtime built from scratch.
        let fresh = Runtime::build(&v2, &metrics, &context).unwrap();
        for (host, path) in [
            ("a.test", "/a/x"),
            ("a.test", "/a/d/x"),
            ("b.test", "/b/x"),
            ("b.test", "/b2/x"),
            ("c.test", "/c/x"),
            ("k.test", "/"),
        ] {
            let name = |runtime: &Runtime| serving(runtime, host, path).map(|r| r.route.clone());
            assert_eq!(name(&second), name(&fresh), "{host}{path}");
        }
        assert_eq!(
            serving(&second, "a.test", "/a/d/x").map(|r| &*r.route),
            Some("ns/d")
        );
        assert!(serving(&second, "c.test", "/c/x").is_none());

        // New keys: the route that authenticates is built again, the others are kept.
        let mut v3 = v2.clone();
        v3.version = "v3".into();
        v3.api_keys = vec![api_key("ns", "one", "pvk_one", &[], 0)];
        let third = Runtime::build_frame(&frame(&v3), &second, &metrics, &context).unwrap();
        assert!(!std::ptr::eq(
            first_rule(&second, "ns/k"),
            first_rule(&third, "ns/k")
        ));
        assert!(std::ptr::eq(
            first_rule(&second, "ns/a"),
            first_rule(&third, "ns/a")
        ));

        // A route with a's match, younger: a wins. Then a moves behind it unchanged (as a
        // Kubernetes route deleted and created again does): now the other one wins.
        let mut v4 = v3.clone();
        v4.version = "v4".into();
        v4.routes.push(plain("ns/e", "a.test", "/a"));
        let fourth = Runtime::build_frame(&frame(&v4), &third, &metrics, &context).unwrap();
        let winner =
            |runtime: &Runtime| serving(runtime, "a.test", "/a/x").map(|r| r.route.clone());
        assert_eq!(winner(&fourth).as_deref(), Some("ns/a"));
        let mut v5 = v4.clone();
        v5.version = "v5".into();
        let a = v5.routes.remove(0);
        v5.routes.push(a);
        let fifth = Runtime::build_frame(&frame(&v5), &fourth, &metrics, &context).unwrap();
        assert_eq!(winner(&fifth).as_deref(), Some("ns/e"));
        assert!(std::ptr::eq(
            first_rule(&fourth, "ns/a"),
            first_rule(&fifth, "ns/a")
        ));
    }

    #[tokio::test]
    async fn a_bad_key_refuses_its_snapshot_even_when_no_route_is_built_again() {
        let metrics = Metrics::new();
        let context = context(&metrics);
        let v1 = snapshot(
            "v1",
            vec![route(
                "ns/a",
                &["a.test"],
                vec![prefix_rule("/", &[("http://127.0.0.1:9", 1)])],
            )],
        );
        let first = Runtime::build(&v1, &metrics, &context).unwrap();
        let mut v2 = v1.clone();
        v2.version = "v2".into();
        let mut bad = api_key("ns", "short", "pvk", &[], 0);
        bad.sha256.truncate(3);
        v2.api_keys = vec![bad];
        assert!(matches!(
            Runtime::build_frame(&frame(&v2), &first, &metrics, &context),
            Err(BuildError::Credentials(_))
        ));
    }

    #[tokio::test]
    async fn a_route_that_does_not_decode_refuses_the_snapshot() {
        let metrics = Metrics::new();
        let context = context(&metrics);
        let mut broken = frame(&snapshot("v1", vec![]));
        broken.routes.push(Bytes::from_static(&[0x0a, 0x05, b'n']));
        assert!(matches!(
            Runtime::build_frame(&broken, &Runtime::empty(), &metrics, &context),
            Err(BuildError::Undecodable(_))
        ));
    }
}
