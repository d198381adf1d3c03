//! Statuses written to each resource's status subresource (merge patch of
//! `status.conditions` and `status.lastAccepted`), which `kubectl get` shows in its columns.

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use pavilion_crds::Kind;
use serde_json::Value;

use super::events::{Events, Notice};
use crate::source::Origin;
use crate::source::kube::{api_resource, origin, watched};
use crate::writeback::{
    AllSeen, Seen, StatusSink, StatusTarget, StoredCondition, StoredStatus, Written,
};

pub struct KubeStatusSink {
    client: kube::Client,
    events: Events,
    /// The namespace watched; all when `None`.
    namespace: Option<String>,
}

impl KubeStatusSink {
    /// `identity` names this replica in the events it reports; `namespace`: the one
    /// watched, all when `None`.
    pub fn new(client: kube::Client, identity: &str, namespace: Option<String>) -> Self {
        Self {
            events: Events::new(client.clone(), identity),
            client,
            namespace,
        }
    }
}

/// Objects per page when every status is read at once.
const PAGE: u32 = 500;

/// Status patches in flight at once: the API server and etcd take them in parallel (one
/// at a time, the first 10 000 statuses of a start took a minute), few enough not to crowd
/// out other clients.
const PATCHES_AT_ONCE: usize = 8;

/// Merge-patches `status` into the object `target` is.
async fn patch(
    client: &kube::Client,
    target: &StatusTarget,
    status: &StoredStatus,
) -> Result<Written, String> {
    let Origin::Kube { key, .. } = &target.origin else {
        return Ok(Written::Gone);
    };
    // A merge patch replaces `conditions` (a list) and `lastAccepted.document` (a string)
    // whole; fields now absent are sent as null, or the old values stay.
    let mut fields = serde_json::to_value(status).map_err(|e| e.to_string())?;
    if let Some(fields) = fields.as_object_mut() {
        for name in StoredStatus::OPTIONAL_FIELDS {
            fields.entry(name).or_insert(serde_json::Value::Null);
        }
    }
    let patch = serde_json::json!({ "status": fields });
    match api(client, key)
        .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(Written::Done),
        // Deleted meanwhile: nothing left to describe, and nothing to remember.
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(Written::Gone),
        Err(e) => Err(e.to_string()),
    }
}

fn api(client: &kube::Client, key: &pavilion_crds::ResourceKey) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), &key.namespace, &api_resource(key.kind))
}

impl StatusSink for KubeStatusSink {
    fn read<'a>(
        &'a mut self,
        target: &'a StatusTarget,
    ) -> BoxFuture<'a, Result<Option<StoredStatus>, String>> {
        async move {
            let Origin::Kube { key, .. } = &target.origin else {
                return Ok(None);
            };
            let object = api(&self.client, key)
                .get_opt(&key.name)
                .await
                .map_err(|e| e.to_string())?;
            Ok(object
                .and_then(|o| o.data.get("status").cloned())
                .and_then(|s| serde_json::from_value(s).ok()))
        }
        .boxed()
    }

    fn read_all(&mut self) -> BoxFuture<'_, Result<Option<AllSeen>, String>> {
        async move {
            let mut all = AllSeen::default();
            for kind in Kind::ALL {
                let api = watched(&self.client, self.namespace.as_deref(), kind);
                let mut params = ListParams::default().limit(PAGE);
                loop {
                    let page = match api.list(&params).await {
                        Ok(page) => page,
                        // A kind whose definition is not installed holds no statuses.
                        Err(kube::Error::Api(e)) if e.code == 404 => break,
                        Err(e) => return Err(e.to_string()),
                    };
                    for mut object in page.items {
                        let Some(status) = object.data.get_mut("status").map(Value::take) else {
                            continue;
                        };
                        // Unreadable as a status: as if none were stored (it is rewritten).
                        let Ok(status) = serde_json::from_value::<StoredStatus>(status) else {
                            continue;
                        };
                        all.insert(origin(kind, &object.metadata), Seen::of(status));
                    }
                    match page.metadata.continue_ {
                        Some(token) if !token.is_empty() => params = params.continue_token(&token),
                        _ => break,
                    }
                }
            }
            Ok(Some(all))
        }
        .boxed()
    }

    fn write<'a>(
        &'a mut self,
        target: &'a StatusTarget,
        status: &'a StoredStatus,
    ) -> BoxFuture<'a, Result<Written, String>> {
        patch(&self.client, target, status).boxed()
    }

    fn write_many<'a>(
        &'a mut self,
        batch: &'a [(StatusTarget, StoredStatus)],
    ) -> BoxFuture<'a, Vec<Result<Written, String>>> {
        let client = &self.client;
        futures::stream::iter(batch)
            .map(|(target, status)| patch(client, target, status))
            .buffered(PATCHES_AT_ONCE)
            .collect()
            .boxed()
    }

    /// Rejections, recoveries, conflicts and refusals become Events on the object.
    fn changed<'a>(
        &'a mut self,
        target: &'a StatusTarget,
        previous: Option<&'a [StoredCondition]>,
        next: &'a StoredStatus,
    ) -> BoxFuture<'a, ()> {
        async move {
            for notice in Notice::between(previous, &next.conditions) {
                self.events.publish(&target.origin, &notice).await;
            }
        }
        .boxed()
    }

    /// The status lives in the object and goes with it.
    fn remove<'a>(&'a mut self, _: &'a StatusTarget) -> BoxFuture<'a, Result<(), String>> {
        async { Ok(()) }.boxed()
    }

    fn prune<'a>(&'a mut self, _: &'a [StatusTarget]) -> BoxFuture<'a, Result<(), String>> {
        async { Ok(()) }.boxed()
    }
}
