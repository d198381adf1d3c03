//! Conditions for each resource, following Kubernetes conventions: `Accepted` says whether
//! the compiler took it, `Programmed` whether every connected data plane runs it.

use pavilion_crds::status::{ACCEPTED, PROGRAMMED};
use serde::Serialize;

use crate::compile::{Outcome, Report};
use crate::delivery::nodes::NodeStatus;

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

/// The `Accepted` and `Programmed` conditions of one resource, given the snapshot version
/// the resource was compiled into and the connected nodes.
pub fn conditions(report: &Report, version: &str, nodes: &[NodeStatus]) -> Vec<Condition> {
    let condition = |kind, status, reason, message: String| Condition {
        kind,
        status,
        reason,
        message,
        observed_generation: report.generation,
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
        Outcome::Accepted { warnings } => {
            let (reason, message) = if warnings.is_empty() {
                ("Accepted", "valid".to_owned())
            } else {
                ("AcceptedWithWarnings", join(warnings))
            };
            let (status, programmed_reason, programmed_message) = programmed(version, nodes);
            vec![
                condition(ACCEPTED, "True", reason, message),
                condition(PROGRAMMED, status, programmed_reason, programmed_message),
            ]
        }
    }
}

fn join(errors: &[pavilion_crds::FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// `True` once every connected node runs `version`; otherwise why not.
fn programmed(version: &str, nodes: &[NodeStatus]) -> (&'static str, &'static str, String) {
    if nodes.is_empty() {
        return ("False", "NoDataPlanes", "no data plane is connected".into());
    }
    if let Some(refused) = nodes
        .iter()
        .find(|n| n.last_error.is_some() && n.version != version)
    {
        let error = refused.last_error.as_deref().unwrap_or_default();
        return (
            "False",
            "Refused",
            format!("data plane {} refused the snapshot: {error}", refused.id),
        );
    }
    let behind = nodes.iter().filter(|n| n.version != version).count();
    if behind > 0 {
        return (
            "False",
            "Pending",
            format!(
                "{behind} of {} data planes do not run version {version} yet",
                nodes.len()
            ),
        );
    }
    (
        "True",
        "Programmed",
        format!("running on {} data planes", nodes.len()),
    )
}
