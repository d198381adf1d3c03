//! Conditions for each resource, following Kubernetes conventions: `Accepted` says whether
//! the compiler took it, `Programmed` whether every connected data plane runs it.

use pavilion_crds::Kind;
use pavilion_crds::status::{ACCEPTED, PROGRAMMED};
use serde::Serialize;

use crate::compile::{Outcome, Report};
use crate::controller::{Since, Versions};
use crate::delivery::nodes::NodeStatus;

/// The connected data planes, and where the version each runs stands among the published
/// ones: worked out once per status pass, not once per resource.
pub struct Fleet<'a> {
    /// The version the statuses are written for.
    current: &'a str,
    nodes: &'a [NodeStatus],
    /// Per node, its version's place in [`Versions`]; `None`: unknown, too old, or
    /// published after `current` (what that holds is not what these statuses describe).
    running: Vec<Option<u64>>,
}

impl<'a> Fleet<'a> {
    pub fn new(current: &'a Since, nodes: &'a [NodeStatus], versions: &Versions) -> Self {
        let running = nodes
            .iter()
            .map(|n| {
                versions
                    .position(&n.version)
                    .filter(|&at| at <= current.position)
            })
            .collect();
        Self {
            current: &current.version,
            nodes,
            running,
        }
    }
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub status: &'static str,
    pub reason: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The `Accepted` and `Programmed` conditions of one resource, given the snapshot that first
/// held it as it is and the connected nodes.
pub fn conditions(report: &Report, since: &Since, fleet: &Fleet) -> Vec<Condition> {
    let condition = |kind, status, reason, message: String| Condition {
        kind,
        status,
        reason,
        message,
        observed_generation: report.generation,
    };
    let kind = report.key.as_ref().map(|k| k.kind);
    // The version in the snapshot: whether data planes run it.
    let served = || -> (&'static str, &'static str, String) {
        if kind.is_some_and(enforced) {
            programmed(since, fleet)
        } else {
            // Validated and kept, but nothing enforces it yet: say so rather than let
            // anyone believe a CORS rule is active.
            let kind = kind.map_or("this kind", Kind::as_str);
            (
                "False",
                "NotEnforced",
                format!("data planes do not enforce {kind} yet"),
            )
        }
    };
    match &report.outcome {
        Outcome::Rejected { reason, errors } => {
            vec![
                condition(ACCEPTED, "False", reason.as_str(), join(errors)),
                condition(
                    PROGRAMMED,
                    "False",
                    "Invalid",
                    "the resource was not accepted".into(),
                ),
            ]
        }
        Outcome::Stale {
            reason,
            errors,
            serving,
        } => {
            let (status, programmed_reason, programmed_message) = served();
            vec![
                condition(
                    ACCEPTED,
                    "False",
                    reason.as_str(),
                    format!("{}; serving {serving}", join(errors)),
                ),
                condition(
                    PROGRAMMED,
                    status,
                    programmed_reason,
                    format!("{programmed_message} ({serving})"),
                ),
            ]
        }
        Outcome::Accepted { warnings } => {
            let (reason, message) = if warnings.is_empty() {
                ("Accepted", "valid".to_owned())
            } else {
                ("AcceptedWithWarnings", join(warnings))
            };
            let (status, programmed_reason, programmed_message) = served();
            vec![
                condition(ACCEPTED, "True", reason, message),
                condition(PROGRAMMED, status, programmed_reason, programmed_message),
            ]
        }
    }
}

/// Kinds the data planes act on: routes, the API keys and token revocations their `auth`
/// checks against, the rate limits compiled into their rules, and the shards and
/// placements tenant-scoped rules resolve. The others are validated and kept only (for now).
fn enforced(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Route
            | Kind::ApiKey
            | Kind::TokenRevocation
            | Kind::RateLimitPolicy
            | Kind::CorsPolicy
            | Kind::Shard
            | Kind::TenantPlacement
    )
}

fn join(errors: &[pavilion_crds::FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// `True` once every connected node runs `since` or a later version; otherwise why not.
pub fn programmed(since: &Since, fleet: &Fleet) -> (&'static str, &'static str, String) {
    let nodes = fleet.nodes;
    if nodes.is_empty() {
        return ("False", "NoDataPlanes", "no data plane is connected".into());
    }
    let runs_it = |at: &Option<u64>| at.is_some_and(|at| at >= since.position);
    // A node that refused the current version but runs one holding this resource runs it.
    if let Some((refused, _)) = nodes
        .iter()
        .zip(&fleet.running)
        .find(|(n, at)| !runs_it(at) && n.refused_version.as_deref() == Some(fleet.current))
    {
        let error = refused.last_error.as_deref().unwrap_or_default();
        return (
            "False",
            "Refused",
            format!("data plane {} refused the snapshot: {error}", refused.id),
        );
    }
    let behind = fleet.running.iter().filter(|at| !runs_it(at)).count();
    if behind > 0 {
        return (
            "False",
            "Pending",
            format!(
                "{behind} of {} data planes do not run version {} yet",
                nodes.len(),
                since.version
            ),
        );
    }
    (
        "True",
        "Programmed",
        // No count here: a data plane joining must not rewrite every resource's status.
        "running on every connected data plane".to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use pavilion_crds::{FieldError, ResourceKey};

    use super::*;
    use crate::compile::Reason;
    use crate::source::Origin;

    fn report(kind: Kind, outcome: Outcome) -> Report {
        Report {
            origin: Origin::File {
                path: std::path::Path::new("r.yaml").into(),
                line: 1,
            },
            key: Some(ResourceKey {
                kind,
                namespace: "ns".into(),
                name: "n".into(),
            }),
            generation: Some(3),
            outcome,
            attachments: Default::default(),
        }
    }

    fn node(id: &str, version: &str, error: Option<&str>) -> NodeStatus {
        NodeStatus {
            id: id.into(),
            build_version: "t".into(),
            address: None,
            authenticated: false,
            connected_at: String::new(),
            version: version.into(),
            pending_version: None,
            refused_version: error.map(|_| "v2".to_owned()),
            last_error: error.map(Into::into),
        }
    }

    /// The conditions after this controller published v1, then v2, for a resource as it
    /// has been since `since`.
    fn programmed_since(r: &Report, since: &str, nodes: &[NodeStatus]) -> Vec<Condition> {
        let versions = Versions::default();
        let v1 = versions.publish("v1");
        let v2 = versions.publish("v2");
        let since = if since == "v1" { v1 } else { v2.clone() };
        conditions(r, &since, &Fleet::new(&v2, nodes, &versions))
    }

    fn summary(conditions: &[Condition]) -> Vec<(&str, &str, &str)> {
        conditions
            .iter()
            .map(|c| (c.kind, c.status, c.reason))
            .collect()
    }

    #[test]
    fn rejected_resources_are_neither_accepted_nor_programmed() {
        let error = FieldError {
            field: "spec.rules".into(),
            message: "at least one rule is required".into(),
        };
        let r = report(
            Kind::Route,
            Outcome::Rejected {
                reason: Reason::Invalid,
                errors: vec![error],
            },
        );
        let conditions = programmed_since(&r, "v1", &[node("a", "v1", None)]);
        assert_eq!(
            summary(&conditions),
            [
                ("Accepted", "False", "Invalid"),
                ("Programmed", "False", "Invalid")
            ]
        );
        assert_eq!(
            conditions[0].message,
            "spec.rules: at least one rule is required"
        );
        assert_eq!(conditions[0].observed_generation, Some(3));
    }

    #[test]
    fn routes_are_programmed_once_every_node_runs_the_version() {
        let r = report(Kind::Route, Outcome::Accepted { warnings: vec![] });
        let programmed = |nodes: &[NodeStatus]| {
            let c = programmed_since(&r, "v2", nodes);
            (c[1].status, c[1].reason, c[1].message.clone())
        };
        assert_eq!(programmed(&[]).1, "NoDataPlanes");
        assert_eq!(
            programmed(&[node("a", "v2", None), node("b", "v1", None)]).1,
            "Pending"
        );
        let refused = programmed(&[node("a", "v2", None), node("b", "v1", Some("bad regex"))]);
        assert_eq!((refused.0, refused.1), ("False", "Refused"));
        assert_eq!(refused.2, "data plane b refused the snapshot: bad regex");
        assert_eq!(
            programmed(&[node("a", "v2", None), node("b", "v2", None)]).0,
            "True"
        );
    }

    #[test]
    fn api_keys_revocations_and_rate_limits_are_programmed_like_routes() {
        for kind in [
            Kind::ApiKey,
            Kind::TokenRevocation,
            Kind::RateLimitPolicy,
            Kind::Shard,
            Kind::TenantPlacement,
        ] {
            let r = report(kind, Outcome::Accepted { warnings: vec![] });
            let conditions = programmed_since(&r, "v1", &[node("a", "v1", None)]);
            assert_eq!(
                summary(&conditions),
                [
                    ("Accepted", "True", "Accepted"),
                    ("Programmed", "True", "Programmed")
                ],
                "{kind}"
            );
        }
    }

    #[test]
    fn cors_policies_are_programmed_once_data_planes_run_them() {
        let r = report(Kind::CorsPolicy, Outcome::Accepted { warnings: vec![] });
        let conditions = programmed_since(&r, "v1", &[node("a", "v1", None)]);
        assert_eq!(summary(&conditions)[1].0, "Programmed");
        assert_eq!(summary(&conditions)[1].1, "True");
    }

    #[test]
    fn a_resource_a_new_snapshot_left_alone_stays_programmed() {
        let r = report(Kind::Route, Outcome::Accepted { warnings: vec![] });
        let programmed = |since: &str, nodes: &[NodeStatus]| {
            let c = programmed_since(&r, since, nodes);
            (c[1].reason, c[1].message.clone())
        };
        // Unchanged since v1: a node still on v1 runs it, one on v2 too.
        assert_eq!(programmed("v1", &[node("a", "v1", None)]).0, "Programmed");
        assert_eq!(programmed("v1", &[node("a", "v2", None)]).0, "Programmed");
        // Changed in v2: the node on v1 is behind, and the message names v2.
        assert_eq!(
            programmed("v2", &[node("a", "v2", None), node("b", "v1", None)]),
            (
                "Pending",
                "1 of 2 data planes do not run version v2 yet".to_owned()
            )
        );
        // A version this controller never published is as good as none.
        assert_eq!(programmed("v1", &[node("a", "v0", None)]).0, "Pending");
        // A node that refused v2 but runs v1 runs what v1 holds.
        assert_eq!(
            programmed("v1", &[node("a", "v1", Some("bad"))]).0,
            "Programmed"
        );
        assert_eq!(
            programmed("v2", &[node("a", "v1", Some("bad"))]).0,
            "Refused"
        );
    }

    #[test]
    fn a_version_published_again_counts_from_its_latest_place() {
        // v1, v2, then the change undone: v1 again, and a resource changed by the undo.
        let versions = Versions::default();
        versions.publish("v1");
        versions.publish("v2");
        let undone = versions.publish("v1");
        let r = report(Kind::Route, Outcome::Accepted { warnings: vec![] });
        let on = |version: &str| {
            let nodes = [node("a", version, None)];
            conditions(&r, &undone, &Fleet::new(&undone, &nodes, &versions))[1].reason
        };
        assert_eq!(on("v1"), "Programmed");
        assert_eq!(on("v2"), "Pending");
    }

    #[test]
    fn only_the_last_versions_are_remembered() {
        let versions = Versions::default();
        let first = versions.publish("first");
        for n in 0..Versions::KEPT {
            versions.publish(&format!("v{n}"));
        }
        assert_eq!(versions.position("first"), None);
        assert_eq!(first.position, 0);
        assert_eq!(
            versions.position(&format!("v{}", Versions::KEPT - 1)),
            Some(Versions::KEPT as u64)
        );
    }
}
