//! Which data planes are connected, and which snapshot version each one runs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::IntGauge;
use serde::Serialize;

/// What the control plane knows about one connected data plane.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    pub id: String,
    pub build_version: String,
    pub address: Option<String>,
    pub connected_at: String,
    /// The version the node reported running (ACKed, or kept after a NACK). Empty: none.
    pub version: String,
    /// The version sent and not answered yet.
    pub pending_version: Option<String>,
    /// Why the node refused the last snapshot it refused, while it still runs an older one.
    pub last_error: Option<String>,
}

/// Registry of connected nodes. Not on any request path: a plain mutex is right here.
pub struct Nodes {
    by_id: Mutex<BTreeMap<String, (u64, NodeStatus)>>,
    next_connection: AtomicU64,
    connected: IntGauge,
}

/// One stream's registration; unregisters the node when the stream ends.
pub struct Connection<'a> {
    nodes: &'a Nodes,
    id: String,
    serial: u64,
}

impl Nodes {
    pub fn new(connected: IntGauge) -> Self {
        Self {
            by_id: Mutex::new(BTreeMap::new()),
            next_connection: AtomicU64::new(1),
            connected,
        }
    }

    /// Registers a stream. A reconnecting node replaces its older stream's entry.
    pub fn connect(
        &self,
        id: &str,
        build_version: &str,
        address: Option<SocketAddr>,
        version: &str,
    ) -> Connection<'_> {
        let serial = self.next_connection.fetch_add(1, Ordering::Relaxed);
        let status = NodeStatus {
            id: id.to_owned(),
            build_version: build_version.to_owned(),
            address: address.map(|a| a.to_string()),
            connected_at: k8s_openapi::jiff::Timestamp::now().to_string(),
            version: version.to_owned(),
            pending_version: None,
            last_error: None,
        };
        let mut nodes = self.lock();
        nodes.insert(id.to_owned(), (serial, status));
        self.connected.set(nodes.len() as i64);
        Connection {
            nodes: self,
            id: id.to_owned(),
            serial,
        }
    }

    /// All connected nodes, ordered by id.
    pub fn list(&self) -> Vec<NodeStatus> {
        self.lock().values().map(|(_, s)| s.clone()).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (u64, NodeStatus)>> {
        // A panic while holding this lock cannot leave the map half-updated in a way that
        // matters (every update is a field assignment), so a poisoned lock is still usable.
        self.by_id.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Connection<'_> {
    pub fn id(&self) -> &str {
        &self.id
    }

    fn update(&self, change: impl FnOnce(&mut NodeStatus)) {
        if let Some((serial, status)) = self.nodes.lock().get_mut(&self.id)
            && *serial == self.serial
        {
            change(status);
        }
    }

    pub fn sent(&self, version: &str) {
        self.update(|s| s.pending_version = Some(version.to_owned()));
    }

    pub fn acked(&self, version: &str) {
        self.update(|s| {
            s.version = version.to_owned();
            s.last_error = None;
            if s.pending_version.as_deref() == Some(version) {
                s.pending_version = None;
            }
        });
    }

    pub fn nacked(&self, running: &str, error: &str) {
        self.update(|s| {
            s.version = running.to_owned();
            s.pending_version = None;
            s.last_error = Some(error.to_owned());
        });
    }
}

impl Drop for Connection<'_> {
    fn drop(&mut self) {
        let mut nodes = self.nodes.lock();
        if nodes
            .get(&self.id)
            .is_some_and(|(serial, _)| *serial == self.serial)
        {
            nodes.remove(&self.id);
        }
        self.nodes.connected.set(nodes.len() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_versions_and_survives_a_reconnect_race() {
        let nodes = Nodes::new(IntGauge::new("g", "g").unwrap());
        let old = nodes.connect("dp-1", "0.1.0", None, "");
        old.sent("v1");
        assert_eq!(nodes.list()[0].pending_version.as_deref(), Some("v1"));
        old.acked("v1");
        assert_eq!(nodes.list()[0].version, "v1");

        // The node reconnects before the old stream noticed it is gone.
        let new = nodes.connect("dp-1", "0.1.0", None, "v1");
        old.nacked("v0", "stale stream");
        drop(old);
        let list = nodes.list();
        assert_eq!(list.len(), 1, "the new stream's entry stays");
        assert_eq!(list[0].last_error, None);

        new.sent("v2");
        new.nacked("v1", "bad regex");
        assert_eq!(nodes.list()[0].version, "v1");
        assert_eq!(nodes.list()[0].last_error.as_deref(), Some("bad regex"));
        drop(new);
        assert!(nodes.list().is_empty());
        assert_eq!(nodes.connected.get(), 0);
    }
}
