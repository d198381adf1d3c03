//! Kubernetes custom resources as the source: one watcher per kind (all namespaces, or
//! one), each feeding a reflector store. `kube::runtime`'s watcher re-lists after a watch
//! expires (410 Gone) or the connection breaks, with backoff, so no event is lost: what is
//! published is always the complete current state of the stores, one per kind.
//!
//! Objects are read as untyped JSON and then through the same document reader as files
//! and KV values, so a malformed object is rejected alone instead of breaking a watch.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use pavilion_crds::{
    ApiKey, CorsPolicy, DocumentError, Kind, RateLimitPolicy, ResourceKey, Route, Shard,
    TenantPlacement, TokenRevocation, parse_documents,
};
use tokio::sync::Notify;

use super::{
    Item, ItemsSender, LastAccepted, Origin, RECALL_WINDOW, Source, SourceError, SourceHealth,
};

/// Quiet time after an event before publishing, so a burst (a re-list) publishes once.
const SETTLE: Duration = Duration::from_millis(10);

/// The API resource of a kind, for untyped access.
pub fn api_resource(kind: Kind) -> ApiResource {
    match kind {
        Kind::Route => ApiResource::erase::<Route>(&()),
        Kind::Shard => ApiResource::erase::<Shard>(&()),
        Kind::TenantPlacement => ApiResource::erase::<TenantPlacement>(&()),
        Kind::RateLimitPolicy => ApiResource::erase::<RateLimitPolicy>(&()),
        Kind::CorsPolicy => ApiResource::erase::<CorsPolicy>(&()),
        Kind::ApiKey => ApiResource::erase::<ApiKey>(&()),
        Kind::TokenRevocation => ApiResource::erase::<TokenRevocation>(&()),
    }
}

pub struct KubeSource {
    client: kube::Client,
    /// Only this namespace; all when `None`.
    namespace: Option<String>,
}

impl KubeSource {
    pub fn new(client: kube::Client, namespace: Option<String>) -> Self {
        Self { client, namespace }
    }
}

impl Source for KubeSource {
    fn run(
        self: Box<Self>,
        items: ItemsSender,
        health: SourceHealth,
    ) -> BoxFuture<'static, Result<(), SourceError>> {
        async move {
            let changed = Arc::new(Notify::new());
            let failing: Arc<std::sync::Mutex<std::collections::HashSet<Kind>>> = Arc::default();
            // Dropped with this future: the watchers stop with the source.
            let mut watchers = tokio::task::JoinSet::new();
            let mut stores: Vec<(Kind, Store<DynamicObject>)> = Vec::new();
            for kind in Kind::ALL {
                let resource = api_resource(kind);
                let api: Api<DynamicObject> = match &self.namespace {
                    Some(namespace) => {
                        Api::namespaced_with(self.client.clone(), namespace, &resource)
                    }
                    None => Api::all_with(self.client.clone(), &resource),
                };
                let writer = reflector::store::Writer::new(resource);
                stores.push((kind, writer.as_reader()));
                let changed = changed.clone();
                let health = health.clone();
                let failing = failing.clone();
                let stream = reflector::reflector(
                    writer,
                    watcher(api, watcher::Config::default()).default_backoff(),
                );
                watchers.spawn(stream.for_each(move |event| {
                    // Up only while every kind's watch works: one failing kind (a missing
                    // CRD, say) must not flap the health with every other kind's events.
                    let mut failing = failing.lock().unwrap_or_else(|e| e.into_inner());
                    match &event {
                        Err(error) => {
                            tracing::debug!(kind = kind.as_str(), %error, "watch interrupted; resuming");
                            failing.insert(kind);
                            health.down(&format_args!("{kind}: {error}"));
                        }
                        Ok(_) => {
                            failing.remove(&kind);
                            if failing.is_empty() {
                                health.up();
                            }
                        }
                    }
                    drop(failing);
                    changed.notify_one();
                    std::future::ready(())
                }));
            }
            for (kind, store) in &stores {
                tracing::info!(kind = kind.as_str(), "listing");
                if store.wait_until_ready().await.is_err() {
                    return Ok(());
                }
            }
            // Only the first sets recall last accepted versions from the statuses: from
            // then on the controller remembers them, and reading them costs a parse each.
            let recall_until = tokio::time::Instant::now() + RECALL_WINDOW;
            loop {
                let recall = tokio::time::Instant::now() < recall_until;
                items.send_replace(Some(collect(&stores, recall).into()));
                changed.notified().await;
                tokio::time::sleep(SETTLE).await;
            }
        }
        .boxed()
    }
}

/// Every object of every store as items, ordered by kind, namespace and name.
fn collect(stores: &[(Kind, Store<DynamicObject>)], recall: bool) -> Vec<Item> {
    let mut items: Vec<Item> = stores
        .iter()
        .flat_map(|(kind, store)| {
            store.state().into_iter().map(move |object| {
                let mut item = item(*kind, &object);
                if recall {
                    item.last_accepted = last_accepted(&object, &item);
                }
                item
            })
        })
        .collect();
    items.sort_by(|a, b| a.origin.cmp(&b.origin));
    items
}

/// An object, read through the shared document reader.
pub fn item(kind: Kind, object: &DynamicObject) -> Item {
    let key = ResourceKey {
        kind,
        namespace: object.metadata.namespace.clone().unwrap_or_default(),
        name: object.metadata.name.clone().unwrap_or_default(),
    };
    let origin = Origin::Kube {
        key,
        uid: object.metadata.uid.clone().unwrap_or_default(),
    };
    let parsed = match serde_json::to_string(object) {
        Ok(text) => {
            let mut documents = parse_documents(&text);
            match documents.len() {
                1 => documents.remove(0).result,
                n => Err(DocumentError {
                    line: 1,
                    field: "document".into(),
                    message: format!("expected one object, read {n}"),
                }),
            }
        }
        Err(e) => Err(DocumentError {
            line: 1,
            field: "document".into(),
            message: e.to_string(),
        }),
    };
    Item::new(origin, parsed)
}

/// What the object's status says was last accepted (written by the control plane).
pub(crate) fn last_accepted(object: &DynamicObject, item: &Item) -> Option<Arc<LastAccepted>> {
    let stored = object.data.get("status")?.get("lastAccepted")?;
    let stored = serde_json::from_value(stored.clone()).ok()?;
    LastAccepted::from_status(&stored, item.identity.as_ref()?, item.parsed.as_ref().ok())
        .map(Arc::new)
}
