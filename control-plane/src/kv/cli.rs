//! `pavilion-control kv put|get|delete|list`: resources in the bucket without the `nats`
//! CLI. `put` validates the files against what the bucket already holds and writes
//! nothing unless every document is valid.

use std::path::PathBuf;

use async_nats::jetstream::kv::Store;
use futures::StreamExt;

use super::{KvError, is_resource_key, resource_key, status_key};
use crate::compile::CompileOptions;
use crate::source::Item;
use crate::source::kv::item;
use crate::validate::{Verdict, validate_with};
use crate::writeback::StoredStatus;

fn operation(e: impl std::fmt::Display) -> KvError {
    KvError::Operation(e.to_string())
}

/// Resource keys in the bucket, sorted.
pub async fn resource_keys(store: &Store) -> Result<Vec<String>, KvError> {
    let mut keys: Vec<String> = store
        .keys()
        .await
        .map_err(operation)?
        .filter_map(|k| async move { k.ok() })
        .filter(|k| std::future::ready(is_resource_key(k)))
        .collect()
        .await;
    keys.sort();
    Ok(keys)
}

/// Every resource the bucket holds, as the KV source would read it.
pub async fn current_items(store: &Store) -> Result<Vec<Item>, KvError> {
    let mut items = Vec::new();
    for key in resource_keys(store).await? {
        if let Some(value) = store.get(&key).await.map_err(operation)? {
            items.push(item(&key, &value));
        }
    }
    Ok(items)
}

/// Validates and, when everything is valid, writes each document under its key. Returns
/// the verdict and the keys written (none when the verdict has errors).
pub async fn put(
    store: &Store,
    paths: &[PathBuf],
    options: &CompileOptions,
) -> Result<(Verdict, Vec<String>), KvError> {
    let (verdict, items) = validate_with(current_items(store).await?, paths, options);
    if !verdict.is_valid() {
        return Ok((verdict, Vec::new()));
    }
    let mut written = Vec::new();
    for item in items {
        let Ok(resource) = item.parsed else { continue };
        let key = resource_key(&resource.key());
        store
            .put(&key, resource.to_yaml().into())
            .await
            .map_err(operation)?;
        written.push(key);
    }
    Ok((verdict, written))
}

/// The document under `key` and, if the control plane wrote one, its status.
pub async fn get(
    store: &Store,
    key: &str,
) -> Result<Option<(String, Option<StoredStatus>)>, KvError> {
    let Some(value) = store.get(key).await.map_err(operation)? else {
        return Ok(None);
    };
    let status = store.get(status_key(key)).await.map_err(operation)?;
    let status = status.and_then(|bytes| serde_json::from_slice(&bytes).ok());
    Ok(Some((String::from_utf8_lossy(&value).into_owned(), status)))
}

/// Deletes the resource and its status. False when there was no such key.
pub async fn delete(store: &Store, key: &str) -> Result<bool, KvError> {
    if store.get(key).await.map_err(operation)?.is_none() {
        return Ok(false);
    }
    store.delete(key).await.map_err(operation)?;
    store.delete(status_key(key)).await.map_err(operation)?;
    Ok(true)
}

/// One line per resource: key, then each condition with its reason when it is not `True`
/// (`Accepted=True Programmed=False (Pending)`).
pub async fn list(store: &Store) -> Result<Vec<String>, KvError> {
    let mut lines = Vec::new();
    for key in resource_keys(store).await? {
        let status = store.get(status_key(&key)).await.map_err(operation)?;
        let status: Option<StoredStatus> = status.and_then(|s| serde_json::from_slice(&s).ok());
        let conditions = match status {
            Some(status) if !status.conditions.is_empty() => status
                .conditions
                .iter()
                .map(|c| {
                    if c.status == "True" && c.reason == c.kind {
                        format!("{}={}", c.kind, c.status)
                    } else {
                        format!("{}={} ({})", c.kind, c.status, c.reason)
                    }
                })
                .collect::<Vec<_>>()
                .join(" "),
            _ => "no status yet".to_owned(),
        };
        lines.push(format!("{key}\t{conditions}"));
    }
    Ok(lines)
}

/// The status as `kv get` prints it: a line per condition with reason and message, and the
/// version still serving when the current one is refused.
pub fn describe(status: &StoredStatus) -> Vec<String> {
    let mut lines: Vec<String> = status
        .conditions
        .iter()
        .map(|c| format!("{}={} ({}): {}", c.kind, c.status, c.reason, c.message))
        .collect();
    if let Some(serving) = &status.serving {
        lines.push(format!("serving {serving} until this version is fixed"));
    }
    lines
}

/// Why `key` is not in the bucket, with a hint at the key format.
pub fn missing(key: &str, bucket: &str) -> String {
    if super::parse_key(key).is_none() {
        format!("`{key}` is not a key: keys are <kind>.<namespace>.<name>, e.g. route.shop.orders")
    } else {
        format!(
            "no key `{key}` in bucket {bucket} (keys are <kind>.<namespace>.<name>, e.g. route.shop.orders; `kv list` shows them)"
        )
    }
}
