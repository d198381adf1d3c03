//! The mirror (`--mirror-to nats://…`): in Kubernetes mode the leader writes every accepted
//! resource into the KV bucket and removes what is gone, so Swarm data planes and the
//! cluster share one truth. Idempotent: a key is written only when its value differs. On
//! each new leadership, after any failure and every minute, the bucket is read back, so
//! keys changed or added there directly are set right. Only keys in the watched scope
//! (`--namespace`) are ever deleted: other namespaces in a shared bucket are not ours.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::watch;

use crate::controller::PublishedReceiver;
use crate::kv::{KvAddress, KvError, cli::resource_keys, open, parse_key, resource_key};

const RETRY_EVERY: Duration = Duration::from_secs(5);
/// The bucket is read back this often even when all is well.
const REREAD_EVERY: Duration = Duration::from_secs(60);

/// Mirrors while `leader` is true; `namespace` limits what may be deleted.
pub async fn run(
    address: KvAddress,
    namespace: Option<String>,
    mut published: PublishedReceiver,
    mut leader: watch::Receiver<bool>,
) {
    // What the bucket holds, as far as this replica knows; `None`: read it back first.
    let mut mirrored: Option<BTreeMap<String, String>> = None;
    let mut store = None;
    let mut reread_at = tokio::time::Instant::now() + REREAD_EVERY;
    loop {
        if tokio::time::Instant::now() >= reread_at {
            mirrored = None;
            reread_at = tokio::time::Instant::now() + REREAD_EVERY;
        }
        if *leader.borrow_and_update() {
            if store.is_none() {
                match open(&address).await {
                    Ok(opened) => store = Some(opened),
                    Err(error) => {
                        tracing::warn!(%error, "mirror cannot reach the bucket; retrying")
                    }
                }
            }
            if let Some(store) = &store {
                let current = published.borrow_and_update().clone();
                if let Some(current) = current
                    && let Err(error) = sync(
                        store,
                        &current,
                        namespace.as_deref(),
                        &leader,
                        &mut mirrored,
                    )
                    .await
                {
                    tracing::warn!(%error, "mirror out of sync; retrying");
                    mirrored = None;
                }
            }
        } else {
            mirrored = None;
        }
        tokio::select! {
            changed = published.changed() => if changed.is_err() { return },
            changed = leader.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(RETRY_EVERY), if mirrored.is_none() => {}
            () = tokio::time::sleep_until(reread_at) => {}
        }
    }
}

async fn sync(
    store: &async_nats::jetstream::kv::Store,
    current: &crate::controller::Published,
    namespace: Option<&str>,
    leader: &watch::Receiver<bool>,
    mirrored: &mut Option<BTreeMap<String, String>>,
) -> Result<(), KvError> {
    let lost_lead = || KvError::Operation("no longer the leader".into());
    let operation = |e: &dyn std::fmt::Display| KvError::Operation(e.to_string());
    // What serves: a resource whose latest edit is invalid is mirrored as the version
    // still in force.
    let desired: BTreeMap<String, String> = current
        .served()
        .map(|(_, resource)| (resource_key(&resource.key()), resource.exported().to_yaml()))
        .collect();
    if mirrored.is_none() {
        let mut held = BTreeMap::new();
        for key in resource_keys(store).await? {
            let in_scope =
                namespace.is_none_or(|ns| parse_key(&key).is_some_and(|k| *k.namespace == *ns));
            if !in_scope {
                continue;
            }
            if let Some(value) = store.get(&key).await.map_err(|e| operation(&e))? {
                held.insert(key, String::from_utf8_lossy(&value).into_owned());
            }
        }
        *mirrored = Some(held);
    }
    let held = mirrored.as_mut().expect("read back above");
    for (key, value) in &desired {
        if !*leader.borrow() {
            return Err(lost_lead());
        }
        if held.get(key) != Some(value) {
            store
                .put(key, value.clone().into())
                .await
                .map_err(|e| operation(&e))?;
            held.insert(key.clone(), value.clone());
        }
    }
    let stale: Vec<String> = held
        .keys()
        .filter(|k| !desired.contains_key(*k))
        .cloned()
        .collect();
    for key in stale {
        if !*leader.borrow() {
            return Err(lost_lead());
        }
        store.delete(&key).await.map_err(|e| operation(&e))?;
        held.remove(&key);
    }
    Ok(())
}
