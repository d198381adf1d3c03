//! A NATS JetStream KV bucket as the source (Docker Swarm): every key
//! `<kind>.<namespace>.<name>` holds one resource document. The bucket is watched from the
//! last value of every key on; a put or delete is published at once (a burst of them, with
//! everything that arrived meanwhile, at most once per 10 ms). When the connection or
//! the watch breaks, the last published set stays in force while the source reconnects.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::{Entry, Operation, Store};
use futures::FutureExt;
use futures::StreamExt;
use futures::future::BoxFuture;
use pavilion_crds::status::LastAccepted as StoredLastAccepted;
use pavilion_crds::{DocumentError, parse_documents};

use super::{
    Item, ItemsSender, LastAccepted, Origin, RECALL_WINDOW, Source, SourceError, SourceHealth,
};
use crate::kv::{
    KvAddress, KvError, STATUS_PREFIX, is_resource_key, open_watched, parse_key, resource_key,
};
use crate::writeback::StoredStatus;

const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// The least time between two published sets while changes keep coming.
const SETTLE: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub struct KvSource {
    address: KvAddress,
}

impl KvSource {
    pub fn new(address: KvAddress) -> Self {
        Self { address }
    }
}

impl Source for KvSource {
    fn run(
        self: Box<Self>,
        items: ItemsSender,
        health: SourceHealth,
    ) -> BoxFuture<'static, Result<(), SourceError>> {
        async move {
            let mut backoff = FIRST_BACKOFF;
            loop {
                let error = match open_watched(&self.address, health.clone()).await {
                    Ok(store) => {
                        backoff = FIRST_BACKOFF;
                        watch(&store, &items, &health).await
                    }
                    Err(error) => error,
                };
                health.down(&error);
                tracing::debug!(source = %self.address, %error, retry_in_ms = backoff.as_millis() as u64, "KV source interrupted; keeping the last read");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
        .boxed()
    }
}

/// Follows the bucket until the watch fails. Publishes once the initial values are all in
/// (never a partial set), then after every change.
async fn watch(store: &Store, items: &ItemsSender, health: &SourceHealth) -> KvError {
    let operation = |e: &dyn std::fmt::Display| KvError::Operation(e.to_string());
    let empty = match store.status().await {
        Ok(status) => status.values() == 0,
        Err(e) => return operation(&e),
    };
    health.up();
    let mut watch = match store.watch_with_history(">").await {
        Ok(watch) => watch,
        Err(e) => return operation(&e),
    };
    let mut current: BTreeMap<String, Item> = BTreeMap::new();
    // Last accepted versions in the statuses an earlier run wrote, read with the initial
    // values; the controller remembers them from then on.
    let mut recalled: BTreeMap<String, StoredLastAccepted> = BTreeMap::new();
    let mut synced = empty;
    let mut recall_until = tokio::time::Instant::now() + RECALL_WINDOW;
    if synced {
        items.send_replace(Some(Vec::new().into()));
    }
    // A resource changed since the last set was published.
    let mut changed = false;
    let mut last_sent: Option<tokio::time::Instant> = None;
    let mut ended = false;
    while let Some(first) = watch.next().await {
        let mut next = Some(first);
        let mut caught_up = false;
        loop {
            // Every entry that has arrived is taken in before a set is published: a bulk
            // `kv put` of 10 000 keys published (and compiled) hundreds of sets, each a pass
            // over every key.
            while let Some(entry) = next.take() {
                let entry = match entry {
                    Ok(entry) => entry,
                    Err(e) => return operation(&e),
                };
                changed |= apply(&mut current, &entry);
                if !synced {
                    recall(&mut recalled, &entry);
                }
                // `delta` counts what is still pending: zero means the watch has caught up.
                caught_up = entry.delta == 0;
                next = arrived(&mut watch, &mut ended);
            }
            // In a burst, at most one set per SETTLE, with what arrived meanwhile; a lone
            // change goes at once.
            if synced && changed && last_sent.is_some_and(|last| last.elapsed() < SETTLE) {
                super::pace(last_sent, SETTLE).await;
                next = arrived(&mut watch, &mut ended);
                if next.is_some() {
                    continue;
                }
            }
            break;
        }
        if !(synced && changed || !synced && caught_up) {
            if ended {
                break;
            }
            continue;
        }
        if !synced {
            synced = true;
            recall_until = tokio::time::Instant::now() + RECALL_WINDOW;
        }
        if tokio::time::Instant::now() >= recall_until {
            recalled.clear();
        }
        let set: Vec<Item> = current
            .iter()
            .map(|(key, item)| {
                let mut item = item.clone();
                item.last_accepted = recalled
                    .get(key)
                    .zip(item.identity.as_ref())
                    .and_then(|(stored, identity)| {
                        LastAccepted::from_status(stored, identity, item.parsed.as_ref().ok())
                    })
                    .map(Arc::new);
                item
            })
            .collect();
        items.send_replace(Some(set.into()));
        changed = false;
        last_sent = Some(tokio::time::Instant::now());
        if ended {
            break;
        }
    }
    KvError::Operation("the watch ended".into())
}

/// The next entry of `watch` if it has already arrived (without waiting); `ended` is set
/// when the watch ends instead.
fn arrived<S>(watch: &mut S, ended: &mut bool) -> Option<S::Item>
where
    S: futures::Stream + Unpin,
{
    match watch.next().now_or_never() {
        Some(None) => {
            *ended = true;
            None
        }
        Some(entry) => entry,
        None => None,
    }
}

/// Notes the last accepted version a status entry holds, by the key of its resource.
fn recall(recalled: &mut BTreeMap<String, StoredLastAccepted>, entry: &Entry) {
    let Some(resource) = entry.key.strip_prefix(STATUS_PREFIX) else {
        return;
    };
    let stored = match entry.operation {
        Operation::Put => serde_json::from_slice::<StoredStatus>(&entry.value)
            .ok()
            .and_then(|status| status.last_accepted),
        Operation::Delete | Operation::Purge => None,
    };
    match stored {
        Some(stored) => recalled.insert(resource.to_owned(), stored),
        None => recalled.remove(resource),
    };
}

/// Applies one entry; false when it does not concern a resource (statuses, node reports).
fn apply(current: &mut BTreeMap<String, Item>, entry: &Entry) -> bool {
    if !is_resource_key(&entry.key) {
        return false;
    }
    match entry.operation {
        Operation::Put => {
            current.insert(entry.key.clone(), item(&entry.key, &entry.value));
        }
        Operation::Delete | Operation::Purge => {
            current.remove(&entry.key);
        }
    }
    true
}

/// The resource a value holds, checked against its key.
pub fn item(key: &str, value: &[u8]) -> Item {
    let origin = Origin::Kv { key: key.into() };
    let error = |field: &str, message: String| {
        Item::new(
            origin.clone(),
            Err(DocumentError {
                line: 1,
                field: field.to_owned(),
                message,
            }),
        )
    };
    if parse_key(key).is_none() {
        return error("key", format!("`{key}` is not <kind>.<namespace>.<name>"));
    }
    let Ok(text) = std::str::from_utf8(value) else {
        return error("document", "the value is not UTF-8 text".into());
    };
    let mut documents = parse_documents(text);
    if documents.len() != 1 {
        return error(
            "document",
            format!("a key holds exactly one document, not {}", documents.len()),
        );
    }
    let parsed = documents.remove(0).result.and_then(|resource| {
        let named = resource_key(&resource.key());
        if named == key {
            Ok(resource)
        } else {
            Err(DocumentError {
                line: 1,
                field: "metadata".into(),
                message: format!(
                    "the document is {} (key `{named}`), not what key `{key}` names",
                    resource.key()
                ),
            })
        }
    });
    Item::new(origin, parsed)
}
