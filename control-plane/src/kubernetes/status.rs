//! Conditions written to each resource's status subresource (merge patch of
//! `status.conditions`), which `kubectl get` shows in its columns.

use futures::FutureExt;
use futures::future::BoxFuture;
use kube::api::{Api, DynamicObject, Patch, PatchParams};

use crate::source::Origin;
use crate::source::kube::api_resource;
use crate::writeback::{StatusSink, StatusTarget, StoredCondition};

pub struct KubeStatusSink {
    client: kube::Client,
}

impl KubeStatusSink {
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }
}

impl StatusSink for KubeStatusSink {
    fn write<'a>(
        &'a mut self,
        target: &'a StatusTarget,
        conditions: &'a [StoredCondition],
    ) -> BoxFuture<'a, Result<(), String>> {
        async move {
            let Origin::Kube { key } = &target.origin else {
                return Ok(());
            };
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.client.clone(), &key.namespace, &api_resource(key.kind));
            let patch = serde_json::json!({ "status": { "conditions": conditions } });
            match api
                .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => Ok(()),
                // Deleted meanwhile: nothing left to describe.
                Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                Err(e) => Err(e.to_string()),
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
