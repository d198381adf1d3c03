//! The node board in the bucket: `nodes.<replica>` holds a replica's data planes.

use futures::FutureExt;
use futures::future::BoxFuture;

use async_nats::jetstream::kv::Store;

use super::NODES_PREFIX;
use crate::fleet::{NodeBoard, NodeReport};

pub struct KvNodeBoard {
    store: Store,
}

impl KvNodeBoard {
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

/// A replica name as a key segment (keys allow letters, digits, `-`, `_`, `=`, `/`, `.`).
fn key(replica: &str) -> String {
    let name: String = replica
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("{NODES_PREFIX}{name}")
}

impl NodeBoard for KvNodeBoard {
    fn post<'a>(&'a self, report: &'a NodeReport) -> BoxFuture<'a, Result<(), String>> {
        async move {
            let body = serde_json::to_vec(report).map_err(|e| e.to_string())?;
            self.store
                .put(key(&report.replica), body.into())
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        }
        .boxed()
    }

    fn read_all(&self) -> BoxFuture<'_, Result<Vec<NodeReport>, String>> {
        async move {
            let keys = super::keys_under(&self.store, NODES_PREFIX)
                .await
                .map_err(|e| e.to_string())?;
            let mut reports = Vec::new();
            for key in keys {
                if let Some(bytes) = self.store.get(&key).await.map_err(|e| e.to_string())?
                    && let Ok(report) = serde_json::from_slice(&bytes)
                {
                    reports.push(report);
                }
            }
            Ok(reports)
        }
        .boxed()
    }

    fn remove<'a>(&'a self, replica: &'a str) -> BoxFuture<'a, Result<(), String>> {
        async move {
            self.store
                .delete(key(replica))
                .await
                .map_err(|e| e.to_string())
        }
        .boxed()
    }
}
