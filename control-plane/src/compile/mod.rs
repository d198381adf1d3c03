//! The compiler: a pure function from the resource set to one snapshot plus a report per
//! document. Same input, same snapshot bytes, same version — on every replica.
//!
//! A resource that is invalid is rejected alone; everything else still compiles. Routes
//! are ordered oldest first (creation time, then namespace/name), which is the last
//! tie-breaker of the matching precedence; a match that an older route already claims for
//! the same host is reported as a warning on the younger one.
//!
//! API keys and token revocations travel beside the routes: keys sorted by namespace and
//! id (only their hashes), revoked JWT ids merged per namespace.
//!
//! Rate-limit policies are compiled into the rules of the routes they reach: each rule
//! lists the limits of the gateway-wide policies, then those of its namespace's policies,
//! then those of its route's policies. Only policies in the gateway namespace
//! ([`CompileOptions::gateway_namespace`]) may target the whole gateway.

mod attachment;
mod auth;
mod conflicts;
mod cors;
mod credentials;
mod memo;
mod rate_limit;
mod route;
mod tenancy;
mod traffic;

use std::collections::HashMap;
use std::sync::Arc;

use pavilion_crds::{FieldError, Kind, Resource, ResourceKey, TargetRef};
use pavilion_proto::Snapshot;
use pavilion_proto::delta::Parts;
use prost::Message;

use crate::source::{Item, Origin};

pub use memo::{Memo, RouteForm};

/// The outcome of one compile.
#[derive(Clone, Debug, PartialEq)]
pub struct Compiled {
    /// The snapshot without its routes (`routes` is empty), `version` filled in.
    pub snapshot: Snapshot,
    /// The snapshot's routes, in order.
    pub routes: Vec<Arc<RouteForm>>,
    /// The whole snapshot encoded, as it goes to every data plane (a by-product of its
    /// version).
    pub encoded: bytes::Bytes,
    /// One report per input item, in input order.
    pub reports: Vec<Report>,
}

impl Compiled {
    /// The whole snapshot, routes included (decoded again: for tests, `explain`, fuzzing).
    pub fn full_snapshot(&self) -> Snapshot {
        Snapshot::decode(self.encoded.clone()).expect("the compiler's own encoding decodes")
    }
}

/// What the compiler decided about one document.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub origin: Origin,
    /// `None` when the document could not be read far enough to know its identity.
    pub key: Option<ResourceKey>,
    /// `metadata.generation`, echoed as `observedGeneration` in conditions.
    pub generation: Option<i64>,
    pub outcome: Outcome,
    /// Which policies reach a route, which routes a policy reached.
    pub attachments: Attachments,
}

/// Policy attachment, as the status shows it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Attachments {
    /// Route only: the policies that reach it, outermost first.
    pub policies: Vec<pavilion_crds::status::AttachedPolicy>,
    /// Policies only: the routes they reached.
    pub reached: Option<pavilion_crds::status::Reached>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Part of the snapshot. Warnings explain parts that have no effect (e.g. shadowed matches).
    Accepted { warnings: Vec<FieldError> },
    Rejected {
        reason: Reason,
        errors: Vec<FieldError>,
    },
    /// The document is rejected for `reason`, but the last accepted version of the same
    /// resource (`serving`: `generation 3`) is compiled in its place: a bad edit keeps the
    /// previous version live, with its policies attached, until it is fixed or deleted.
    Stale {
        reason: Reason,
        errors: Vec<FieldError>,
        serving: String,
    },
}

/// Machine-readable reason of a rejection; the `reason` of the `Accepted=False` condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The document is not a readable resource (YAML, unknown kind or field, wrong type).
    Unreadable,
    /// A field has an invalid value.
    Invalid,
    /// Another document already defines this kind, namespace and name (or tenant).
    Duplicate,
    /// A policy (or placement) names a target that does not exist, or is not accepted.
    TargetNotFound,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Unreadable => "Unreadable",
            Reason::Invalid => "Invalid",
            Reason::Duplicate => "Duplicate",
            Reason::TargetNotFound => "TargetNotFound",
        }
    }
}

impl Report {
    pub fn is_accepted(&self) -> bool {
        matches!(self.outcome, Outcome::Accepted { .. })
    }

    /// Whether some version of the resource is in the snapshot: this one, or the last
    /// accepted one standing in for it.
    pub fn is_served(&self) -> bool {
        matches!(
            self.outcome,
            Outcome::Accepted { .. } | Outcome::Stale { .. }
        )
    }
}

/// The namespace whose policies may target the whole gateway, unless configured otherwise.
pub const DEFAULT_GATEWAY_NAMESPACE: &str = "pavilion-system";

/// The control plane's settings the compiler depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileOptions {
    /// Only RateLimitPolicies in this namespace may target the whole gateway
    /// (`targetRef: { kind: Gateway, … }`), since they limit every route of every namespace.
    pub gateway_namespace: String,
}

impl Default for CompileOptions {
    fn default() -> Self {
        Self {
            gateway_namespace: DEFAULT_GATEWAY_NAMESPACE.to_owned(),
        }
    }
}

/// Compiles the resource set with the default options.
pub fn compile(items: &[Item]) -> Compiled {
    compile_with(items, &CompileOptions::default())
}

/// Compiles the resource set.
pub fn compile_with(items: &[Item], options: &CompileOptions) -> Compiled {
    compile_with_memo(items, options, &mut Memo::default())
}

/// Compiles the resource set, reusing what `memo` holds from earlier compiles of the same
/// resources (same result as without it; see [`Memo`]).
pub fn compile_with_memo(items: &[Item], options: &CompileOptions, memo: &mut Memo) -> Compiled {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    compile_at_with_memo(items, now, options, memo)
}

/// Compiles the resource set as of `now` (seconds since the Unix epoch) with the default
/// options. Time only decides warnings (an ApiKey already expired), never the snapshot:
/// its bytes depend on the resources (and options) alone.
pub fn compile_at(items: &[Item], now: i64) -> Compiled {
    compile_at_with(items, now, &CompileOptions::default())
}

/// Compiles the resource set as of `now` (seconds since the Unix epoch); see [`compile_at`].
pub fn compile_at_with(items: &[Item], now: i64, options: &CompileOptions) -> Compiled {
    compile_at_with_memo(items, now, options, &mut Memo::default())
}

/// [`compile_at_with`] reusing what `memo` holds; see [`compile_with_memo`].
pub fn compile_at_with_memo(
    items: &[Item],
    now: i64,
    options: &CompileOptions,
    memo: &mut Memo,
) -> Compiled {
    let mut reports: Vec<Report> = items.iter().map(|item| first_pass(item, memo)).collect();
    let held = stand_in_last_accepted(items, &mut reports, memo);
    // What each document contributes: its resource, or the version standing in for it.
    let resources: Vec<Option<&Resource>> = items
        .iter()
        .zip(&held)
        .map(|(item, held)| match held {
            Some(_) => item.last_accepted.as_ref().map(|l| &*l.resource),
            None => item.parsed.as_deref().ok(),
        })
        .collect();
    reject_duplicates(items, &resources, &mut reports);

    let accepted = |kind: Kind| {
        resources
            .iter()
            .zip(0..)
            .filter_map(|(resource, i)| resource.map(|r| (r, i)))
            .filter(move |(resource, _)| resource.kind() == kind)
    };
    // Policies can only attach to routes that are themselves accepted.
    let routes: Vec<(&Resource, usize)> = accepted(Kind::Route)
        .filter(|(_, i)| reports[*i].is_accepted())
        .collect();
    let route_names: std::collections::HashSet<(&str, &str), foldhash::fast::RandomState> = routes
        .iter()
        .map(|(r, _)| (r.namespace(), r.name()))
        .collect();
    for (resource, i) in accepted(Kind::RateLimitPolicy).chain(accepted(Kind::CorsPolicy)) {
        if !reports[i].is_accepted() {
            continue;
        }
        let target = match resource {
            Resource::RateLimitPolicy(p) => &p.spec.target_ref,
            Resource::CorsPolicy(p) => &p.spec.target_ref,
            _ => unreachable!("filtered by kind"),
        };
        if let Err((reason, message)) = check_target(
            target,
            resource.namespace(),
            &route_names,
            &options.gateway_namespace,
        ) {
            reports[i].outcome = Outcome::Rejected {
                reason,
                errors: vec![FieldError {
                    field: "spec.targetRef".into(),
                    message,
                }],
            };
        }
    }

    let rate_limit_policies: Vec<(&Resource, usize)> = accepted(Kind::RateLimitPolicy)
        .filter(|(_, i)| reports[*i].is_accepted())
        .collect();
    let limits = rate_limit::Limits::new(&rate_limit_policies);
    let policies: Vec<(&Resource, usize)> = accepted(Kind::RateLimitPolicy)
        .chain(accepted(Kind::CorsPolicy))
        .filter(|(_, i)| reports[*i].is_accepted())
        .collect();
    attachment::attach(&routes, &policies, &limits, &mut reports);
    let cors_policies: Vec<(&Resource, usize)> = accepted(Kind::CorsPolicy)
        .filter(|(_, i)| reports[*i].is_accepted())
        .collect();
    let cors = cors::Cors::new(&cors_policies);
    let routes = route::build_routes(&routes, &mut reports, &limits, &cors, memo);
    let mut snapshot = Snapshot::default();
    let keys: Vec<(&Resource, usize)> = accepted(Kind::ApiKey)
        .filter(|(_, i)| reports[*i].is_accepted())
        .collect();
    snapshot.api_keys = credentials::api_keys(&keys, &mut reports, now);
    let revocations: Vec<(&Resource, usize)> = accepted(Kind::TokenRevocation)
        .filter(|(_, i)| reports[*i].is_accepted())
        .collect();
    snapshot.revocations = credentials::revocations(&revocations);
    let shards: Vec<(&Resource, usize)> = accepted(Kind::Shard)
        .filter(|(_, i)| reports[*i].is_accepted())
        .collect();
    let placements: Vec<(&Resource, usize)> = accepted(Kind::TenantPlacement)
        .filter(|(_, i)| reports[*i].is_accepted())
        .collect();
    snapshot.placements = Some(tenancy::placements(&shards, &placements, &mut reports));
    for (report, held) in reports.iter_mut().zip(held) {
        let Some(Held {
            reason,
            errors,
            serving,
        }) = held
        else {
            continue;
        };
        report.outcome = match report.outcome {
            Outcome::Accepted { .. } => Outcome::Stale {
                reason,
                errors,
                serving,
            },
            // The old version no longer fits either (a duplicate appeared, say): the
            // document's own problem is what to fix.
            _ => Outcome::Rejected { reason, errors },
        };
    }
    memo.sweep();
    // Everything but the routes and the version: fields 3 to 5, as encoded.
    let tail = snapshot.encode_to_vec();
    let encoded_routes: Vec<&[u8]> = routes.iter().map(|form| &form.encoded[..]).collect();
    let (version, encoded) = Parts::seal(&encoded_routes, &tail);
    snapshot.version = version;
    Compiled {
        snapshot,
        routes,
        encoded,
        reports,
    }
}

/// Why a document is not compiled itself while its last accepted version stands in.
struct Held {
    reason: Reason,
    errors: Vec<FieldError>,
    serving: String,
}

/// A document that is unreadable or invalid but has a last accepted version of the same
/// resource is compiled as that version: a bad edit must not take a live resource down.
/// Its report keeps the new version's problems (see [`Outcome::Stale`]). A resource that
/// never was valid has no such version and stays out.
fn stand_in_last_accepted(
    items: &[Item],
    reports: &mut [Report],
    memo: &mut Memo,
) -> Vec<Option<Held>> {
    // A valid definition elsewhere (another file, say) is the resource now: an old
    // version must not displace it.
    let defined: std::collections::HashSet<&ResourceKey, foldhash::fast::RandomState> = items
        .iter()
        .zip(reports.iter())
        .filter(|(_, report)| report.is_accepted())
        .filter_map(|(item, _)| item.identity.as_ref())
        .collect();
    items
        .iter()
        .zip(reports.iter_mut())
        .map(|(item, report)| {
            let Outcome::Rejected { reason, errors } = &report.outcome else {
                return None;
            };
            let last = item.last_accepted.as_ref()?;
            if item.identity.as_ref() != Some(&last.resource.key())
                || defined.contains(&last.resource.key())
                || !memo.validate(&last.resource).is_empty()
            {
                return None;
            }
            let held = Held {
                reason: *reason,
                errors: errors.clone(),
                serving: last.describe(),
            };
            report.outcome = Outcome::Accepted {
                warnings: Vec::new(),
            };
            Some(held)
        })
        .collect()
}

/// Per-document checks: readable, and valid on its own.
fn first_pass(item: &Item, memo: &mut Memo) -> Report {
    let (key, generation, outcome) = match &item.parsed {
        Err(e) => (
            item.identity.clone(),
            None,
            Outcome::Rejected {
                reason: Reason::Unreadable,
                errors: vec![FieldError {
                    field: e.field.clone(),
                    message: e.message.clone(),
                }],
            },
        ),
        Ok(resource) => {
            let errors = memo.validate(resource);
            let outcome = if errors.is_empty() {
                Outcome::Accepted {
                    warnings: Vec::new(),
                }
            } else {
                Outcome::Rejected {
                    reason: Reason::Invalid,
                    errors,
                }
            };
            (
                // The item's identity is its resource's key, already made.
                Some(item.identity.clone().unwrap_or_else(|| resource.key())),
                resource.metadata().generation,
                outcome,
            )
        }
    };
    Report {
        origin: item.origin.clone(),
        key,
        generation,
        outcome,
        attachments: Attachments::default(),
    }
}

/// The first valid definition of a key wins; later ones are rejected and point at it. Of two
/// placements of one tenant, the older wins.
fn reject_duplicates(items: &[Item], resources: &[Option<&Resource>], reports: &mut [Report]) {
    // Keyed by reference: a copied key per document was two allocations each.
    let mut first_key: HashMap<(Kind, &str, &str), &Origin, foldhash::fast::RandomState> =
        HashMap::with_capacity_and_hasher(items.len(), Default::default());
    for ((item, resource), report) in items.iter().zip(resources).zip(reports.iter_mut()) {
        // Only valid documents claim their key: an invalid one keeps its own errors, and a
        // valid definition after it still counts.
        let Some(resource) = resource else { continue };
        if !report.is_accepted() {
            continue;
        }
        let key = (resource.kind(), resource.namespace(), resource.name());
        if let Some(origin) = first_key.get(&key) {
            report.outcome = Outcome::Rejected {
                reason: Reason::Duplicate,
                errors: vec![FieldError {
                    field: "metadata.name".into(),
                    message: format!("{} is already defined at {origin}", resource.key()),
                }],
            };
            continue;
        }
        first_key.insert(key, &item.origin);
    }
    // Two placements of one tenant: the older keeps it (creation time, then namespace and
    // name; documents without a creation time — files — count as oldest), as for routes.
    let mut placements: HashMap<&str, Vec<usize>> = HashMap::new();
    for (index, resource) in resources.iter().enumerate() {
        if let Some(Resource::TenantPlacement(p)) = resource
            && reports[index].is_accepted()
        {
            placements.entry(&p.spec.tenant).or_default().push(index);
        }
    }
    let age = |index: usize| {
        let meta = resources[index].map(Resource::metadata);
        (
            meta.and_then(|m| m.creation_timestamp.clone()),
            meta.and_then(|m| m.namespace.clone()),
            meta.and_then(|m| m.name.clone()),
            index,
        )
    };
    for (tenant, mut claims) in placements {
        claims.sort_by_key(|&index| age(index));
        let (winner, younger) = claims.split_first().expect("grouped, so never empty");
        let owner = resources[*winner].expect("a resource").key();
        for &index in younger {
            reports[index].outcome = Outcome::Rejected {
                reason: Reason::Duplicate,
                errors: vec![FieldError {
                    field: "spec.tenant".into(),
                    message: format!(
                        "tenant `{tenant}` is already placed by the older {owner} at {}",
                        items[*winner].origin
                    ),
                }],
            };
        }
    }
}

/// Whether a policy in `namespace` may attach to `target`: `TargetNotFound` when the target
/// does not exist (yet), `Invalid` when the policy may not name it. The kinds a policy may
/// name at all were checked by validation (only a RateLimitPolicy names `Gateway`).
fn check_target(
    target: &TargetRef,
    namespace: &str,
    routes: &std::collections::HashSet<(&str, &str), foldhash::fast::RandomState>,
    gateway_namespace: &str,
) -> Result<(), (Reason, String)> {
    match target.kind.as_str() {
        "Gateway" if namespace == gateway_namespace => Ok(()),
        "Gateway" => Err((
            Reason::Invalid,
            format!(
                "only policies in the gateway namespace `{gateway_namespace}` may target the Gateway, not one in `{namespace}`"
            ),
        )),
        "Route" if routes.contains(&(namespace, target.name.as_str())) => Ok(()),
        "Route" => Err((
            Reason::TargetNotFound,
            format!(
                "no accepted Route `{}` in namespace `{namespace}`",
                target.name
            ),
        )),
        "Namespace" if target.name == namespace => Ok(()),
        _ => Err((
            Reason::Invalid,
            format!(
                "a policy can only target its own namespace `{namespace}`, not `{}`",
                target.name
            ),
        )),
    }
}
