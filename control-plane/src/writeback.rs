//! Status write-back: every resource's `Accepted` and `Programmed` conditions, written to
//! its source (KV status keys, the Kubernetes status subresource) only when they change, by
//! the leader only. Transition times follow Kubernetes conventions: they move only when a
//! condition's status does.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use pavilion_crds::ResourceKey;
use serde::Serialize;
use tokio::sync::watch;

use crate::controller::PublishedReceiver;
use crate::delivery::nodes::Nodes;
use crate::source::Origin;
use crate::status::{Condition, conditions};

/// Quiet time after a change before writing: a burst of ACKs is written once.
const SETTLE: Duration = Duration::from_millis(50);
/// Failed writes are retried this often even when nothing changes.
const RETRY_EVERY: Duration = Duration::from_secs(10);

/// Which resource a status belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StatusTarget {
    pub origin: Origin,
    /// `None` for documents that could not be read far enough to know their identity.
    pub key: Option<ResourceKey>,
}

/// A condition as stored, with its transition time.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StoredCondition {
    #[serde(flatten)]
    pub condition: Condition,
    /// RFC 3339.
    pub last_transition_time: String,
}

/// Where statuses are written.
pub trait StatusSink: Send + 'static {
    fn write<'a>(
        &'a mut self,
        target: &'a StatusTarget,
        conditions: &'a [StoredCondition],
    ) -> BoxFuture<'a, Result<(), String>>;
    /// The resource is gone: drop its status where it lives apart from it.
    fn remove<'a>(&'a mut self, target: &'a StatusTarget) -> BoxFuture<'a, Result<(), String>>;
    /// Once per leadership: drop statuses left behind by resources that no longer exist.
    fn prune<'a>(&'a mut self, current: &'a [StatusTarget]) -> BoxFuture<'a, Result<(), String>>;
}

/// Writes statuses while `leader` is true, until the published channel closes.
pub async fn run(
    mut sink: Box<dyn StatusSink>,
    mut published: PublishedReceiver,
    nodes: Arc<Nodes>,
    mut leader: watch::Receiver<bool>,
) {
    let mut node_changes = nodes.subscribe();
    let mut written: HashMap<StatusTarget, Vec<StoredCondition>> = HashMap::new();
    let mut pruned = false;
    loop {
        tokio::select! {
            changed = published.changed() => if changed.is_err() { return },
            _ = node_changes.changed() => {}
            changed = leader.changed() => {
                if changed.is_err() {
                    return;
                }
                // A new term: write everything again, whatever a previous leader left.
                written.clear();
                pruned = false;
            }
            () = tokio::time::sleep(RETRY_EVERY) => {}
        }
        tokio::time::sleep(SETTLE).await;
        if !*leader.borrow_and_update() {
            continue;
        }
        let Some(current) = published.borrow_and_update().clone() else {
            continue;
        };
        let nodes = nodes.list();
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let mut seen = HashSet::new();
        for report in &current.reports {
            let target = StatusTarget {
                origin: report.origin.clone(),
                key: report.key.clone(),
            };
            let fresh = conditions(report, &current.snapshot.version, &nodes);
            let stored = with_transition_times(fresh, written.get(&target), &now);
            if written.get(&target) != Some(&stored) {
                match sink.write(&target, &stored).await {
                    Ok(()) => {
                        written.insert(target.clone(), stored);
                    }
                    Err(error) => {
                        tracing::warn!(origin = %target.origin, %error, "cannot write status; will retry")
                    }
                }
            }
            seen.insert(target);
        }
        let gone: Vec<StatusTarget> = written
            .keys()
            .filter(|t| !seen.contains(*t))
            .cloned()
            .collect();
        for target in gone {
            match sink.remove(&target).await {
                Ok(()) => {
                    written.remove(&target);
                }
                Err(error) => {
                    tracing::warn!(origin = %target.origin, %error, "cannot remove status; will retry")
                }
            }
        }
        if !pruned {
            let current: Vec<StatusTarget> = seen.into_iter().collect();
            match sink.prune(&current).await {
                Ok(()) => pruned = true,
                Err(error) => tracing::warn!(%error, "cannot prune stale statuses; will retry"),
            }
        }
    }
}

/// Keeps a condition's transition time while its status stays the same.
fn with_transition_times(
    fresh: Vec<Condition>,
    previous: Option<&Vec<StoredCondition>>,
    now: &str,
) -> Vec<StoredCondition> {
    fresh
        .into_iter()
        .map(|condition| {
            let last_transition_time = previous
                .and_then(|p| p.iter().find(|c| c.condition.kind == condition.kind))
                .filter(|p| p.condition.status == condition.status)
                .map_or_else(|| now.to_owned(), |p| p.last_transition_time.clone());
            StoredCondition {
                condition,
                last_transition_time,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn condition(kind: &'static str, status: &'static str, message: &str) -> Condition {
        Condition {
            kind,
            status,
            reason: "R",
            message: message.into(),
            observed_generation: None,
        }
    }

    #[test]
    fn transition_times_move_only_with_the_status() {
        let first = with_transition_times(vec![condition("Accepted", "True", "valid")], None, "t1");
        let same = with_transition_times(
            vec![condition("Accepted", "True", "still valid")],
            Some(&first),
            "t2",
        );
        assert_eq!(same[0].last_transition_time, "t1");
        let flipped = with_transition_times(
            vec![condition("Accepted", "False", "broken")],
            Some(&same),
            "t3",
        );
        assert_eq!(flipped[0].last_transition_time, "t3");
    }
}
