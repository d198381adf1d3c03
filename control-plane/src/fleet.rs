//! Data planes connect to any control-plane replica, so no replica sees them all. Each
//! replica posts what its data planes run to a shared board (a Lease object per replica
//! on Kubernetes, a `nodes.<replica>` key in KV), and whoever writes statuses reads the
//! board: `Programmed` then speaks for every data plane, wherever it is connected.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::delivery::nodes::{NodeStatus, Nodes};

/// How often a replica re-posts its report even without changes (its heartbeat).
pub const REPORT_EVERY: Duration = Duration::from_secs(5);
/// A report older than this comes from a replica that is gone.
pub const REPORT_STALE_AFTER: Duration = Duration::from_secs(20);

/// One replica's connected data planes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodeReport {
    pub replica: String,
    pub nodes: Vec<NodeStatus>,
    /// Milliseconds since the Unix epoch.
    pub at: u64,
}

impl NodeReport {
    pub fn is_fresh(&self) -> bool {
        now_ms().saturating_sub(self.at) < REPORT_STALE_AFTER.as_millis() as u64
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Where replicas post and read reports.
pub trait NodeBoard: Send + Sync + 'static {
    fn post<'a>(&'a self, report: &'a NodeReport) -> BoxFuture<'a, Result<(), String>>;
    fn read_all(&self) -> BoxFuture<'_, Result<Vec<NodeReport>, String>>;
    /// Removes a report of a replica that is gone.
    fn remove<'a>(&'a self, replica: &'a str) -> BoxFuture<'a, Result<(), String>>;
}

/// Posts this replica's report on every change (after a short settle) and as a heartbeat.
pub async fn post_reports(
    board: Arc<dyn NodeBoard>,
    replica: String,
    nodes: Arc<Nodes>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut changes = nodes.subscribe();
    loop {
        let report = NodeReport {
            replica: replica.clone(),
            nodes: nodes.list(),
            at: now_ms(),
        };
        if let Err(error) = board.post(&report).await {
            tracing::warn!(%error, "cannot post this replica's data planes");
        }
        let stop = tokio::select! {
            _ = changes.changed() => false,
            () = tokio::time::sleep(REPORT_EVERY) => false,
            stopped = shutdown.wait_for(|s| *s) => stopped.is_ok(),
        };
        if stop {
            let _ = board.remove(&replica).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every data plane: this replica's own (`local`, current) and the others' from fresh
/// reports. Stale reports are removed from the board.
pub async fn all_nodes(
    board: &dyn NodeBoard,
    replica: &str,
    local: Vec<NodeStatus>,
) -> Vec<NodeStatus> {
    let mut nodes = local;
    match board.read_all().await {
        Ok(reports) => {
            for report in reports {
                if report.replica == replica {
                    continue;
                }
                if report.is_fresh() {
                    nodes.extend(report.nodes);
                } else {
                    let _ = board.remove(&report.replica).await;
                }
            }
        }
        Err(error) => tracing::warn!(%error, "cannot read the other replicas' data planes"),
    }
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    nodes
}
