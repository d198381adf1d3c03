//! Kubernetes custom resources as the source: one watcher per kind (all namespaces, or
//! one). Each event's object is read once, into that kind's items: a change to one object
//! parses that object only (re-reading every object at every event took two seconds per
//! change at 10 000 routes), and the objects themselves are not kept (a JSON tree per
//! object was most of the control plane's memory). `kube::runtime`'s watcher re-lists after
//! a watch expires (410 Gone) or the connection breaks, with backoff, so no event is lost:
//! what is published is always the complete current state, every kind's items together.
//!
//! Objects are read as untyped JSON and then through the same document reader as files
//! and KV values, so a malformed object is rejected alone instead of breaking a watch.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::{WatchStreamExt, watcher};
use pavilion_crds::{
    ApiKey, CorsPolicy, DocumentError, Kind, RateLimitPolicy, ResourceKey, Route, Shard,
    TenantPlacement, TokenRevocation, parse_documents,
};
use tokio::sync::Notify;

use super::{
    Item, ItemsSender, LastAccepted, Origin, RECALL_WINDOW, Source, SourceError, SourceHealth,
};

/// The least time between two publications: a burst of events (objects created by the
/// thousand) is collected once per SETTLE, not once per event — collecting passes over
/// every object.
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

/// One kind's objects in the namespace watched, or in all when `None`.
pub fn watched(client: &kube::Client, namespace: Option<&str>, kind: Kind) -> Api<DynamicObject> {
    let resource = api_resource(kind);
    match namespace {
        Some(namespace) => Api::namespaced_with(client.clone(), namespace, &resource),
        None => Api::all_with(client.clone(), &resource),
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
            let failing: Arc<Mutex<std::collections::HashSet<Kind>>> = Arc::default();
            // Only the first sets recall last accepted versions from the statuses: from
            // then on the controller remembers them, and reading them costs a parse each.
            let recall_until = tokio::time::Instant::now() + RECALL_WINDOW;
            // Dropped with this future: the watchers stop with the source.
            let mut watchers = tokio::task::JoinSet::new();
            let mut kinds: Vec<Arc<Mutex<KindItems>>> = Vec::new();
            for kind in Kind::ALL {
                let api = watched(&self.client, self.namespace.as_deref(), kind);
                let objects = Arc::new(Mutex::new(KindItems::new(kind)));
                kinds.push(objects.clone());
                let changed = changed.clone();
                let health = health.clone();
                let failing = failing.clone();
                tracing::info!(kind = kind.as_str(), "listing");
                let stream = watcher(api, watcher::Config::default()).default_backoff();
                watchers.spawn(stream.for_each(move |event| {
                    // Up only while every kind's watch works: one failing kind (a missing
                    // CRD, say) must not flap the health with every other kind's events.
                    let mut failing = failing.lock().unwrap_or_else(PoisonError::into_inner);
                    match event {
                        Err(error) => {
                            tracing::debug!(kind = kind.as_str(), %error, "watch interrupted; resuming");
                            failing.insert(kind);
                            health.down(&format_args!("{kind}: {error}"));
                        }
                        Ok(event) => {
                            failing.remove(&kind);
                            if failing.is_empty() {
                                health.up();
                            }
                            let recall = tokio::time::Instant::now() < recall_until;
                            if !lock(&objects).apply(event, recall) {
                                // Nothing to publish (this control plane's own status
                                // write coming back): the controller is not woken.
                                return std::future::ready(());
                            }
                        }
                    }
                    drop(failing);
                    changed.notify_one();
                    std::future::ready(())
                }));
            }
            // Nothing is published before every kind was listed once.
            while !kinds.iter().all(|kind| lock(kind).listed) {
                changed.notified().await;
            }
            loop {
                items.send_replace(Some(collect(&kinds).into()));
                let sent = tokio::time::Instant::now();
                changed.notified().await;
                super::pace(Some(sent), SETTLE).await;
            }
        }
        .boxed()
    }
}

fn lock(items: &Mutex<KindItems>) -> std::sync::MutexGuard<'_, KindItems> {
    items.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One kind's objects as items, by namespace and name, kept current from the watch.
struct KindItems {
    kind: Kind,
    current: BTreeMap<(String, String), Read>,
    /// While the watch (re-)lists: what it listed so far, to replace `current` when the
    /// list is complete (an object not listed again was deleted meanwhile).
    listing: Option<BTreeMap<(String, String), Read>>,
    /// A first list was complete.
    listed: bool,
}

/// An object as read, and the version of it that was read.
struct Read {
    uid: Option<String>,
    resource_version: Option<String>,
    item: Item,
}

impl KindItems {
    fn new(kind: Kind) -> Self {
        Self {
            kind,
            current: BTreeMap::new(),
            listing: None,
            listed: false,
        }
    }

    /// Takes one watch event in; whether the published set changed by it.
    fn apply(&mut self, event: watcher::Event<DynamicObject>, recall: bool) -> bool {
        match event {
            watcher::Event::Init => {
                self.listing = Some(BTreeMap::new());
                false
            }
            watcher::Event::InitApply(object) => {
                let (key, read, _) = self.read(object, recall);
                self.listing.get_or_insert_default().insert(key, read);
                false
            }
            watcher::Event::InitDone => {
                if let Some(listed) = self.listing.take() {
                    self.current = listed;
                }
                self.listed = true;
                true
            }
            watcher::Event::Apply(object) => {
                let (key, read, same) = self.read(object, recall);
                self.current.insert(key, read);
                !same
            }
            watcher::Event::Delete(object) => self.current.remove(&object_key(&object)).is_some(),
        }
    }

    /// The object read into an item — or the item already read from it, when this version
    /// says the same (a re-list sends every object again; a status write changes the version
    /// and the status only): the same item, so nothing downstream compiles it again. The flag
    /// says which.
    fn read(&self, mut object: DynamicObject, recall: bool) -> ((String, String), Read, bool) {
        let key = object_key(&object);
        let known = self
            .current
            .get(&key)
            .filter(|known| known.uid.is_some() && known.uid == object.metadata.uid);
        if let Some(known) = known.filter(|known| {
            known.resource_version.is_some()
                && known.resource_version == object.metadata.resource_version
        }) {
            let read = Read {
                uid: known.uid.clone(),
                resource_version: known.resource_version.clone(),
                item: known.item.clone(),
            };
            return (key, read, true);
        }
        // The API server's bookkeeping of who set which field: nothing here reads it, and
        // it is often larger than the spec. Nor the status, which this control plane writes,
        // beyond the recall of the last accepted version it holds: kept in the resource, it
        // was a kilobyte per object (that version's YAML and the conditions).
        object.metadata.managed_fields = None;
        let status = object
            .data
            .as_object_mut()
            .and_then(|data| data.remove("status"));
        let mut item = item(self.kind, &object);
        let same = match known {
            // Every status write comes back as such an event: at 10 000 objects, publishing
            // the whole set again for each kept the control plane busy for two minutes
            // after a start.
            Some(known) if says_the_same(&known.item, &item) => {
                item = known.item.clone();
                true
            }
            _ => {
                if recall {
                    item.last_accepted = status
                        .as_ref()
                        .and_then(|status| last_accepted_in(status, &item));
                }
                false
            }
        };
        let read = Read {
            uid: object.metadata.uid,
            resource_version: object.metadata.resource_version,
            item,
        };
        (key, read, same)
    }
}

/// Whether a newly read item says what the known one does: the same object, spec, user's
/// metadata and generation (whatever its status and the API server's bookkeeping), or the
/// same refusal.
fn says_the_same(known: &Item, read: &Item) -> bool {
    known.origin == read.origin
        && known.identity == read.identity
        && match (&known.parsed, &read.parsed) {
            (Ok(known), Ok(read)) => {
                known.same_exported(read)
                    && known.metadata().generation == read.metadata().generation
            }
            (Err(known), Err(read)) => known == read,
            _ => false,
        }
}

fn object_key(object: &DynamicObject) -> (String, String) {
    (
        object.metadata.namespace.clone().unwrap_or_default(),
        object.metadata.name.clone().unwrap_or_default(),
    )
}

/// Every kind's items, ordered by kind, namespace and name.
fn collect(kinds: &[Arc<Mutex<KindItems>>]) -> Vec<Item> {
    let mut items: Vec<Item> = Vec::new();
    for kind in kinds {
        let kind = lock(kind);
        items.extend(kind.current.values().map(|read| read.item.clone()));
    }
    // Already in this order but for the kinds' order; cheap on sorted input.
    items.sort_by(|a, b| a.origin.cmp(&b.origin));
    items
}

/// Where an object of `kind` with this metadata lives, as a document's origin.
pub fn origin(
    kind: Kind,
    metadata: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Origin {
    let text = |field: &Option<String>| -> Arc<str> { field.as_deref().unwrap_or_default().into() };
    Origin::Kube {
        key: ResourceKey {
            kind,
            namespace: text(&metadata.namespace),
            name: text(&metadata.name),
        },
        uid: text(&metadata.uid),
    }
}

/// An object, read through the shared document reader.
pub fn item(kind: Kind, object: &DynamicObject) -> Item {
    let origin = origin(kind, &object.metadata);
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
    last_accepted_in(object.data.get("status")?, item)
}

/// What an object's `status` says was last accepted.
fn last_accepted_in(status: &serde_json::Value, item: &Item) -> Option<Arc<LastAccepted>> {
    let stored = status.get("lastAccepted")?;
    let stored = serde_json::from_value(stored.clone()).ok()?;
    LastAccepted::from_status(&stored, item.identity.as_ref()?, item.parsed.as_ref().ok())
        .map(Arc::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, version: &str, prefix: &str) -> DynamicObject {
        let mut object = DynamicObject::new(name, &api_resource(Kind::Route))
            .within("shop")
            .data(serde_json::json!({ "spec": { "rules": [{
                "matches": [{ "path": { "type": "PathPrefix", "value": prefix } }],
                "backends": [{ "url": "http://127.0.0.1:9000" }],
            }] } }));
        object.metadata.uid = Some(format!("uid-{name}"));
        object.metadata.resource_version = Some(version.into());
        object
    }

    fn resource(items: &KindItems, name: &str) -> Arc<pavilion_crds::Resource> {
        let read = &items.current[&("shop".to_owned(), name.to_owned())];
        read.item.parsed.clone().expect("a valid route")
    }

    #[test]
    fn objects_are_read_once_per_version_and_a_relist_replaces_the_set() {
        let mut items = KindItems::new(Kind::Route);
        items.apply(watcher::Event::Init, false);
        items.apply(watcher::Event::InitApply(route("a", "1", "/a")), false);
        items.apply(watcher::Event::InitApply(route("b", "2", "/b")), false);
        assert!(!items.listed, "not listed before the list is complete");
        assert!(items.current.is_empty());
        items.apply(watcher::Event::InitDone, false);
        assert!(items.listed);
        let first_a = resource(&items, "a");

        // A change reads that object again.
        items.apply(watcher::Event::Apply(route("a", "3", "/a2")), false);
        let second_a = resource(&items, "a");
        assert!(!Arc::ptr_eq(&first_a, &second_a));
        let pavilion_crds::Resource::Route(changed) = &*second_a else {
            panic!("a route")
        };
        let path = changed.spec.rules[0].matches[0].path.as_ref().unwrap();
        assert_eq!(path.value, "/a2");

        // Its status written (a new version, the same spec and metadata): the same item,
        // and nothing to publish; a new label is a change.
        let mut written = route("a", "4", "/a2");
        written.data["status"] = serde_json::json!({ "reason": "Accepted" });
        assert!(!items.apply(watcher::Event::Apply(written), false));
        assert!(Arc::ptr_eq(&second_a, &resource(&items, "a")));
        let mut labelled = route("a", "5", "/a2");
        labelled.metadata.labels = Some([("team".to_owned(), "shop".to_owned())].into());
        assert!(items.apply(watcher::Event::Apply(labelled), false));
        assert!(!Arc::ptr_eq(&second_a, &resource(&items, "a")));
        let second_a = resource(&items, "a");
        let mut relabelled = route("a", "6", "/a2");
        relabelled.metadata.labels = Some([("team".to_owned(), "shop".to_owned())].into());
        assert!(!items.apply(watcher::Event::Apply(relabelled), false));

        // A re-list (an expired watch): the same version of `a` is the same item; `b`, not
        // listed again, was deleted meanwhile.
        items.apply(watcher::Event::Init, false);
        items.apply(watcher::Event::InitApply(route("a", "6", "/a2")), false);
        assert_eq!(
            items.current.len(),
            2,
            "the old set serves until the list is complete"
        );
        items.apply(watcher::Event::InitDone, false);
        assert!(Arc::ptr_eq(&second_a, &resource(&items, "a")));
        assert_eq!(items.current.len(), 1);

        // A deletion; a recreated object (another uid) is read anew.
        assert!(items.apply(watcher::Event::Delete(route("a", "6", "/a2")), false));
        assert!(items.current.is_empty());
        let mut again = route("a", "6", "/a2");
        again.metadata.uid = Some("uid-other".into());
        assert!(items.apply(watcher::Event::Apply(again), false));
        assert!(!Arc::ptr_eq(&second_a, &resource(&items, "a")));
        let all = collect(&[Arc::new(Mutex::new(items))]);
        assert_eq!(all.len(), 1);
    }

    #[test]
    fn the_status_is_read_for_the_last_accepted_version_only() {
        let mut items = KindItems::new(Kind::Route);
        let mut object = route("a", "1", "/a");
        let document = resource_of(&object).to_yaml();
        object.data["status"] = serde_json::json!({
            "conditions": [{ "type": "Accepted", "status": "True", "reason": "Accepted",
                             "message": "valid", "lastTransitionTime": "2026-11-27T00:00:00Z" }],
            "lastAccepted": { "acceptedAt": "2026-11-27T00:00:00Z", "document": document },
        });
        items.apply(watcher::Event::Apply(object), true);
        let read = &items.current[&("shop".to_owned(), "a".to_owned())];
        let parsed = read.item.parsed.clone().expect("a valid route");
        let pavilion_crds::Resource::Route(route) = &*parsed else {
            panic!("a route")
        };
        assert!(
            route.status.is_none(),
            "the status is not kept in the resource"
        );
        let recalled = read.item.last_accepted.as_ref().expect("recalled");
        assert!(
            Arc::ptr_eq(&recalled.resource, &parsed),
            "the recalled version is the resource itself, not a second copy"
        );
    }

    fn resource_of(object: &DynamicObject) -> pavilion_crds::Resource {
        item(Kind::Route, object)
            .parsed
            .expect("a valid route")
            .as_ref()
            .clone()
    }
}
