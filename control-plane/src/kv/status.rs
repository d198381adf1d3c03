//! Statuses in the bucket, beside the resources they describe.

use std::collections::HashSet;

use async_nats::jetstream::kv::Store;
use futures::FutureExt;
use futures::future::BoxFuture;

use super::{STATUS_PREFIX, resource_key, status_key};
use crate::source::Origin;
use crate::writeback::{StatusSink, StatusTarget, StoredStatus, Written};

/// Statuses as KV keys: `status.<kind>.<namespace>.<name>` =
/// `{"conditions":[…],"lastAccepted":{…}}`.
pub struct KvStatusSink {
    store: Store,
}

impl KvStatusSink {
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

fn status_key_for(target: &StatusTarget) -> Option<String> {
    match &target.origin {
        Origin::Kv { key } => Some(status_key(key)),
        _ => target.key.as_ref().map(|k| status_key(&resource_key(k))),
    }
}

impl StatusSink for KvStatusSink {
    fn read<'a>(
        &'a mut self,
        target: &'a StatusTarget,
    ) -> BoxFuture<'a, Result<Option<StoredStatus>, String>> {
        async move {
            let Some(key) = status_key_for(target) else {
                return Ok(None);
            };
            let Some(bytes) = self.store.get(key).await.map_err(|e| e.to_string())? else {
                return Ok(None);
            };
            Ok(serde_json::from_slice(&bytes).ok())
        }
        .boxed()
    }

    fn write<'a>(
        &'a mut self,
        target: &'a StatusTarget,
        status: &'a StoredStatus,
    ) -> BoxFuture<'a, Result<Written, String>> {
        async move {
            let Some(key) = status_key_for(target) else {
                return Ok(Written::Gone);
            };
            let body = serde_json::to_vec(status).map_err(|e| e.to_string())?;
            self.store
                .put(key, body.into())
                .await
                .map_err(|e| e.to_string())?;
            Ok(Written::Done)
        }
        .boxed()
    }

    fn remove<'a>(&'a mut self, target: &'a StatusTarget) -> BoxFuture<'a, Result<(), String>> {
        async move {
            let Some(key) = status_key_for(target) else {
                return Ok(());
            };
            self.store.delete(key).await.map_err(|e| e.to_string())
        }
        .boxed()
    }

    fn prune<'a>(&'a mut self, current: &'a [StatusTarget]) -> BoxFuture<'a, Result<(), String>> {
        async move {
            let keep: HashSet<String> = current.iter().filter_map(status_key_for).collect();
            let keys = super::keys_under(&self.store, STATUS_PREFIX)
                .await
                .map_err(|e| e.to_string())?;
            for key in keys.into_iter().filter(|k| !keep.contains(k)) {
                // Deleted keys are listed too: deleted once is enough.
                if self
                    .store
                    .get(&key)
                    .await
                    .map_err(|e| e.to_string())?
                    .is_some()
                {
                    self.store.delete(&key).await.map_err(|e| e.to_string())?;
                }
            }
            Ok(())
        }
        .boxed()
    }
}
