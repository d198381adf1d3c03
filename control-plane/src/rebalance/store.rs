//! Where plans live, by source: Kubernetes `RebalancePlan` objects (in the control plane's
//! namespace, status subresource), KV entries `rebalanceplan.<id>` beside the resources, or
//! JSON files in a hidden directory of the configuration directory. Every write is a
//! compare-and-set on the revision the plan was read at.

use std::path::PathBuf;
use std::sync::Mutex;

use async_nats::jetstream::kv;
use futures::FutureExt;
use futures::future::BoxFuture;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use pavilion_crds::{PlanStatus, RebalancePlan, RebalancePlanSpec};
use serde::{Deserialize, Serialize};

use super::Plan;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the plan changed since it was read")]
    Conflict,
    #[error("a plan with this id exists")]
    Exists,
    #[error("{0}")]
    Other(String),
}

pub trait PlanStore: Send + Sync {
    /// Stores a new plan; its revision.
    fn create<'a>(&'a self, plan: &'a Plan) -> BoxFuture<'a, Result<String, StoreError>>;
    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Plan>, StoreError>>;
    /// Writes `plan` if the stored one is still at `plan.revision`; the new revision.
    fn update<'a>(&'a self, plan: &'a Plan) -> BoxFuture<'a, Result<String, StoreError>>;
    fn list(&self) -> BoxFuture<'_, Result<Vec<Plan>, StoreError>>;
}

/// A plan as KV entries and files hold it.
#[derive(Serialize, Deserialize)]
struct Stored {
    spec: RebalancePlanSpec,
    status: PlanStatus,
}

fn encode(plan: &Plan) -> Vec<u8> {
    serde_json::to_vec(&Stored {
        spec: plan.spec.clone(),
        status: plan.status.clone(),
    })
    .expect("plans always serialize")
}

fn decode(id: &str, bytes: &[u8], revision: String) -> Result<Plan, StoreError> {
    let stored: Stored = serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Other(format!("plan {id} is unreadable: {e}")))?;
    Ok(Plan {
        id: id.to_owned(),
        spec: stored.spec,
        status: stored.status,
        revision,
    })
}

/// JSON files `<id>.json` in a directory, for the directory source (one control plane).
pub struct FilePlans {
    dir: PathBuf,
    /// Read-compare-write of one process, made atomic.
    lock: Mutex<()>,
}

impl FilePlans {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            lock: Mutex::new(()),
        }
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// The file's content and its revision (a counter kept in the file name's sibling).
    fn read(&self, id: &str) -> Result<Option<(Vec<u8>, u64)>, StoreError> {
        let other =
            |e: std::io::Error| StoreError::Other(format!("{}: {e}", self.path(id).display()));
        match std::fs::read(self.path(id)) {
            Ok(bytes) => {
                // `{"revision":N,"plan":{…}}`
                let value: serde_json::Value = serde_json::from_slice(&bytes)
                    .map_err(|e| StoreError::Other(format!("plan {id} is unreadable: {e}")))?;
                let revision = value["revision"].as_u64().unwrap_or(0);
                Ok(Some((value["plan"].to_string().into_bytes(), revision)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(other(e)),
        }
    }

    fn write(&self, plan: &Plan, revision: u64) -> Result<String, StoreError> {
        let other = |e: std::io::Error| StoreError::Other(format!("{}: {e}", self.dir.display()));
        std::fs::create_dir_all(&self.dir).map_err(other)?;
        let plan_json: serde_json::Value =
            serde_json::from_slice(&encode(plan)).expect("just encoded");
        let text = serde_json::json!({ "revision": revision, "plan": plan_json }).to_string();
        let aside = self.dir.join(format!(".{}.tmp", plan.id));
        std::fs::write(&aside, text).map_err(other)?;
        std::fs::rename(&aside, self.path(&plan.id)).map_err(other)?;
        Ok(revision.to_string())
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl PlanStore for FilePlans {
    fn create<'a>(&'a self, plan: &'a Plan) -> BoxFuture<'a, Result<String, StoreError>> {
        async move {
            let _guard = self.guard();
            if self.read(&plan.id)?.is_some() {
                return Err(StoreError::Exists);
            }
            self.write(plan, 1)
        }
        .boxed()
    }

    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Plan>, StoreError>> {
        async move {
            self.read(id)?
                .map(|(bytes, revision)| decode(id, &bytes, revision.to_string()))
                .transpose()
        }
        .boxed()
    }

    fn update<'a>(&'a self, plan: &'a Plan) -> BoxFuture<'a, Result<String, StoreError>> {
        async move {
            let _guard = self.guard();
            let current = self.read(&plan.id)?.map(|(_, r)| r);
            if current.map(|r| r.to_string()) != Some(plan.revision.clone()) {
                return Err(StoreError::Conflict);
            }
            self.write(plan, current.unwrap_or(0) + 1)
        }
        .boxed()
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<Plan>, StoreError>> {
        async move {
            let entries = match std::fs::read_dir(&self.dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(StoreError::Other(e.to_string())),
            };
            let mut plans = Vec::new();
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(id) = name
                    .strip_suffix(".json")
                    .filter(|_| !name.starts_with('.'))
                    && let Some(plan) = self.get(id).await?
                {
                    plans.push(plan);
                }
            }
            Ok(plans)
        }
        .boxed()
    }
}

/// KV entries `rebalanceplan.<id>` (not resources: the KV source skips them).
pub struct KvPlans {
    store: kv::Store,
}

impl KvPlans {
    pub fn new(store: kv::Store) -> Self {
        Self { store }
    }
}

const KV_PREFIX: &str = "rebalanceplan.";

fn kv_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::Other(format!("the KV bucket: {e}"))
}

impl PlanStore for KvPlans {
    fn create<'a>(&'a self, plan: &'a Plan) -> BoxFuture<'a, Result<String, StoreError>> {
        async move {
            match self
                .store
                .create(format!("{KV_PREFIX}{}", plan.id), encode(plan).into())
                .await
            {
                Ok(revision) => Ok(revision.to_string()),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Err(StoreError::Exists),
                Err(e) => Err(kv_error(e)),
            }
        }
        .boxed()
    }

    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Plan>, StoreError>> {
        async move {
            match self
                .store
                .entry(format!("{KV_PREFIX}{id}"))
                .await
                .map_err(kv_error)?
            {
                Some(entry) if entry.operation == kv::Operation::Put => {
                    decode(id, &entry.value, entry.revision.to_string()).map(Some)
                }
                _ => Ok(None),
            }
        }
        .boxed()
    }

    fn update<'a>(&'a self, plan: &'a Plan) -> BoxFuture<'a, Result<String, StoreError>> {
        async move {
            let revision: u64 = plan.revision.parse().map_err(|_| StoreError::Conflict)?;
            match self
                .store
                .update(
                    format!("{KV_PREFIX}{}", plan.id),
                    encode(plan).into(),
                    revision,
                )
                .await
            {
                Ok(revision) => Ok(revision.to_string()),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    Err(StoreError::Conflict)
                }
                Err(e) => Err(kv_error(e)),
            }
        }
        .boxed()
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<Plan>, StoreError>> {
        async move {
            let keys = crate::kv::keys_under(&self.store, KV_PREFIX)
                .await
                .map_err(kv_error)?;
            let ids = keys.iter().filter_map(|key| key.strip_prefix(KV_PREFIX));
            let mut plans = Vec::new();
            for id in ids {
                if let Some(plan) = self.get(id).await? {
                    plans.push(plan);
                }
            }
            Ok(plans)
        }
        .boxed()
    }
}

/// `RebalancePlan` objects in one namespace (the control plane's).
pub struct KubePlans {
    api: Api<RebalancePlan>,
}

impl KubePlans {
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
        }
    }
}

fn kube_error(e: kube::Error) -> StoreError {
    match &e {
        kube::Error::Api(status) if status.code == 409 => StoreError::Conflict,
        _ => StoreError::Other(format!("the Kubernetes API: {e}")),
    }
}

fn from_object(object: RebalancePlan) -> Plan {
    Plan {
        id: object.metadata.name.clone().unwrap_or_default(),
        revision: object.metadata.resource_version.clone().unwrap_or_default(),
        spec: object.spec,
        status: object.status.unwrap_or_default(),
    }
}

impl PlanStore for KubePlans {
    fn create<'a>(&'a self, plan: &'a Plan) -> BoxFuture<'a, Result<String, StoreError>> {
        async move {
            let mut object = RebalancePlan::new(&plan.id, plan.spec.clone());
            let created = self
                .api
                .create(&PostParams::default(), &object)
                .await
                .map_err(|e| match kube_error(e) {
                    StoreError::Conflict => StoreError::Exists,
                    other => other,
                })?;
            // The status goes through its subresource, at the revision just created.
            object.metadata.resource_version = created.metadata.resource_version;
            let mut with_status = plan.clone();
            with_status.revision = object.metadata.resource_version.unwrap_or_default();
            self.update(&with_status).await
        }
        .boxed()
    }

    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Plan>, StoreError>> {
        async move {
            Ok(self
                .api
                .get_opt(id)
                .await
                .map_err(kube_error)?
                .map(from_object))
        }
        .boxed()
    }

    fn update<'a>(&'a self, plan: &'a Plan) -> BoxFuture<'a, Result<String, StoreError>> {
        async move {
            // A merge patch carrying the resourceVersion read: the API server refuses it
            // (409) when the object changed since.
            let patch = serde_json::json!({
                "metadata": { "resourceVersion": plan.revision },
                "status": plan.status,
            });
            let patched = self
                .api
                .patch_status(&plan.id, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(kube_error)?;
            Ok(patched.metadata.resource_version.unwrap_or_default())
        }
        .boxed()
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<Plan>, StoreError>> {
        async move {
            let list = self
                .api
                .list(&ListParams::default())
                .await
                .map_err(kube_error)?;
            Ok(list.items.into_iter().map(from_object).collect())
        }
        .boxed()
    }
}
