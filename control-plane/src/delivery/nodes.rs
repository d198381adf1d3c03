//! Which data planes are connected, and which snapshot version each one runs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::IntGauge;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// What the control plane knows about one connected data plane.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    pub id: String,
    pub build_version: String,
    pub address: Option<String>,
    /// Whether the id was vouched for by the node's client certificate (mutual TLS).
    #[serde(default)]
    pub authenticated: bool,
    pub connected_at: String,
    /// The version the node reported running (ACKed, or kept after a NACK). Empty: none.
    pub version: String,
    /// The version sent and not answered yet.
    pub pending_version: Option<String>,
    /// The version the node refused last, while it runs an older one.
    pub refused_version: Option<String>,
    /// Why it refused `refused_version`.
    pub last_error: Option<String>,
}

/// Registry of connected nodes, one entry per stream (two processes sharing a node id are
/// both tracked). Not on any request path: a plain mutex is right here.
pub struct Nodes {
    streams: Mutex<BTreeMap<u64, NodeStatus>>,
    next_connection: AtomicU64,
    connected: IntGauge,
    /// Bumped on every change, for whoever derives state from the nodes (status write-back).
    changes: watch::Sender<u64>,
}

/// One stream's registration; unregisters it when the stream ends.
pub struct Connection<'a> {
    nodes: &'a Nodes,
    id: String,
    serial: u64,
}

impl Nodes {
    pub fn new(connected: IntGauge) -> Self {
        Self {
            streams: Mutex::new(BTreeMap::new()),
            next_connection: AtomicU64::new(1),
            connected,
            changes: watch::channel(0).0,
        }
    }

    /// Notified whenever a node connects, answers or leaves.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    /// Registers a stream.
    pub fn connect(
        &self,
        id: &str,
        build_version: &str,
        address: Option<SocketAddr>,
        version: &str,
        authenticated: bool,
    ) -> Connection<'_> {
        let serial = self.next_connection.fetch_add(1, Ordering::Relaxed);
        let status = NodeStatus {
            id: id.to_owned(),
            build_version: build_version.to_owned(),
            address: address.map(|a| a.to_string()),
            authenticated,
            connected_at: k8s_openapi::jiff::Timestamp::now().to_string(),
            version: version.to_owned(),
            pending_version: None,
            refused_version: None,
            last_error: None,
        };
        let mut nodes = self.lock();
        nodes.insert(serial, status);
        self.connected.set(nodes.len() as i64);
        drop(nodes);
        self.changed();
        Connection {
            nodes: self,
            id: id.to_owned(),
            serial,
        }
    }

    /// All connected streams, ordered by node id, then by age.
    pub fn list(&self) -> Vec<NodeStatus> {
        let mut list: Vec<NodeStatus> = self.lock().values().cloned().collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        list
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, NodeStatus>> {
        // A panic while holding this lock cannot leave the map half-updated in a way that
        // matters (every update is a field assignment), so a poisoned lock is still usable.
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Connection<'_> {
    pub fn id(&self) -> &str {
        &self.id
    }

    fn update(&self, change: impl FnOnce(&mut NodeStatus)) {
        if let Some(status) = self.nodes.lock().get_mut(&self.serial) {
            change(status);
        }
        self.nodes.changed();
    }

    pub fn sent(&self, version: &str) {
        self.update(|s| s.pending_version = Some(version.to_owned()));
    }

    pub fn acked(&self, version: &str) {
        self.update(|s| {
            s.version = version.to_owned();
            s.refused_version = None;
            s.last_error = None;
            if s.pending_version.as_deref() == Some(version) {
                s.pending_version = None;
            }
        });
    }

    pub fn nacked(&self, running: &str, refused: &str, error: &str) {
        self.update(|s| {
            s.version = running.to_owned();
            s.pending_version = None;
            s.refused_version = Some(refused.to_owned());
            s.last_error = Some(error.to_owned());
        });
    }
}

impl Drop for Connection<'_> {
    fn drop(&mut self) {
        let mut nodes = self.nodes.lock();
        nodes.remove(&self.serial);
        self.nodes.connected.set(nodes.len() as i64);
        drop(nodes);
        self.nodes.changed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_versions_per_stream() {
        let nodes = Nodes::new(IntGauge::new("g", "g").unwrap());
        let first = nodes.connect("dp-1", "0.1.0", None, "", false);
        first.sent("v1");
        assert_eq!(nodes.list()[0].pending_version.as_deref(), Some("v1"));
        first.acked("v1");
        assert_eq!(nodes.list()[0].version, "v1");

        // A second process with the same id (or a reconnect before the old stream ended)
        // is tracked on its own: its refusal cannot hide behind the other's ACK.
        let second = nodes.connect("dp-1", "0.1.0", None, "v1", false);
        assert_eq!(nodes.connected.get(), 2);
        second.sent("v2");
        second.nacked("v1", "v2", "bad regex");
        let list = nodes.list();
        assert_eq!(list.len(), 2);
        let refused = list.iter().find(|n| n.refused_version.is_some()).unwrap();
        assert_eq!(
            (refused.version.as_str(), refused.last_error.as_deref()),
            ("v1", Some("bad regex"))
        );

        second.acked("v3");
        assert!(nodes.list().iter().all(|n| n.refused_version.is_none()));
        drop(first);
        drop(second);
        assert!(nodes.list().is_empty());
        assert_eq!(nodes.connected.get(), 0);
    }
}
