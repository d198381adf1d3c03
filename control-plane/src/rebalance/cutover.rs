//! The cutover: one service kind of a tenant's `TenantPlacement` rewritten in its source,
//! only if it still names the shard the plan moves away from (compare-and-set), so a move
//! never overwrites someone else's edit. Kubernetes: a merge patch at the resourceVersion
//! the field was checked at; KV: an update at the revision read; directory: the one document rewritten and the
//! file replaced atomically (its other documents kept byte for byte).

use std::path::Path;

use async_nats::jetstream::kv;
use futures::FutureExt;
use futures::future::BoxFuture;
use kube::api::{Api, Patch, PatchParams};
use pavilion_crds::{
    Resource, ResourceKey, ServiceKind, TenantPlacement, document_chunks, parse_documents,
};

use crate::source::Origin;

#[derive(Debug, thiserror::Error)]
pub enum CutoverError {
    /// The placement names another shard than the one expected: someone else moved it.
    #[error("the placement names {0} now")]
    Moved(String),
    #[error("{0}")]
    Other(String),
}

pub trait Cutover: Send + Sync {
    /// Sets the placement's `service` shard to `to` if it names `from` now (nothing to do
    /// if it names `to` already).
    fn set_shard<'a>(
        &'a self,
        origin: &'a Origin,
        namespace: &'a str,
        name: &'a str,
        service: ServiceKind,
        from: &'a str,
        to: &'a str,
    ) -> BoxFuture<'a, Result<(), CutoverError>>;
}

/// What a placement's shard of `service` is, checked against `from` and `to`: `Ok(true)`
/// when it must be rewritten, `Ok(false)` when it names `to` already.
fn must_write(current: Option<&str>, from: &str, to: &str) -> Result<bool, CutoverError> {
    match current {
        Some(shard) if shard == to => Ok(false),
        Some(shard) if shard == from => Ok(true),
        other => Err(CutoverError::Moved(other.unwrap_or("no shard").to_owned())),
    }
}

/// Rewrites the document in the placement's file.
pub struct FileCutover;

impl Cutover for FileCutover {
    fn set_shard<'a>(
        &'a self,
        origin: &'a Origin,
        namespace: &'a str,
        name: &'a str,
        service: ServiceKind,
        from: &'a str,
        to: &'a str,
    ) -> BoxFuture<'a, Result<(), CutoverError>> {
        async move {
            let Origin::File { path, .. } = origin else {
                return Err(CutoverError::Other(format!(
                    "the placement {namespace}/{name} is not in a file"
                )));
            };
            rewrite_file(path, namespace, name, service, from, to)
        }
        .boxed()
    }
}

fn rewrite_file(
    path: &Path,
    namespace: &str,
    name: &str,
    service: ServiceKind,
    from: &str,
    to: &str,
) -> Result<(), CutoverError> {
    let io = |e: std::io::Error| CutoverError::Other(format!("{}: {e}", path.display()));
    let text = std::fs::read_to_string(path).map_err(io)?;
    let mut rewritten = String::with_capacity(text.len() + 64);
    let mut found = false;
    let mut consumed = 0;
    for (_, chunk) in document_chunks(&text) {
        // The chunk's place in the text: everything before it (markers included) is kept.
        let start = chunk.as_ptr() as usize - text.as_ptr() as usize;
        rewritten.push_str(&text[consumed..start]);
        consumed = start + chunk.len();
        let placement = parse_documents(chunk)
            .into_iter()
            .find_map(|doc| match doc.result {
                Ok(Resource::TenantPlacement(p))
                    if p.metadata.name.as_deref() == Some(name)
                        && p.metadata.namespace.as_deref().unwrap_or("default") == namespace =>
                {
                    Some(p)
                }
                _ => None,
            });
        match placement {
            Some(mut placement) if !found => {
                found = true;
                if !must_write(placement.spec.shards.get(service), from, to)? {
                    return Ok(());
                }
                placement.spec.shards.set(service, Some(to.to_owned()));
                rewritten.push('\n');
                rewritten.push_str(&Resource::TenantPlacement(placement).to_yaml());
            }
            _ => rewritten.push_str(chunk),
        }
    }
    rewritten.push_str(&text[consumed..]);
    if !found {
        return Err(CutoverError::Other(format!(
            "{} no longer holds the placement {namespace}/{name}",
            path.display()
        )));
    }
    let aside = path.with_file_name(format!(
        ".{}.rebalance",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    std::fs::write(&aside, rewritten).map_err(io)?;
    std::fs::rename(&aside, path).map_err(io)
}

/// Updates the placement's KV entry at the revision it was read at.
pub struct KvCutover {
    store: kv::Store,
}

impl KvCutover {
    pub fn new(store: kv::Store) -> Self {
        Self { store }
    }
}

impl Cutover for KvCutover {
    fn set_shard<'a>(
        &'a self,
        _: &'a Origin,
        namespace: &'a str,
        name: &'a str,
        service: ServiceKind,
        from: &'a str,
        to: &'a str,
    ) -> BoxFuture<'a, Result<(), CutoverError>> {
        async move {
            let other =
                |e: &dyn std::fmt::Display| CutoverError::Other(format!("the KV bucket: {e}"));
            let key = crate::kv::resource_key(&ResourceKey {
                kind: pavilion_crds::Kind::TenantPlacement,
                namespace: namespace.into(),
                name: name.into(),
            });
            let entry = self
                .store
                .entry(key.clone())
                .await
                .map_err(|e| other(&e))?
                .filter(|e| e.operation == kv::Operation::Put)
                .ok_or_else(|| CutoverError::Other(format!("{key} is gone")))?;
            let text = String::from_utf8_lossy(&entry.value).into_owned();
            let mut placement = match parse_documents(&text).into_iter().next().map(|d| d.result) {
                Some(Ok(Resource::TenantPlacement(p))) => p,
                _ => {
                    return Err(CutoverError::Other(format!(
                        "{key} is not a readable placement"
                    )));
                }
            };
            if !must_write(placement.spec.shards.get(service), from, to)? {
                return Ok(());
            }
            placement.spec.shards.set(service, Some(to.to_owned()));
            let yaml = Resource::TenantPlacement(placement).to_yaml();
            self.store
                .update(key, yaml.into_bytes().into(), entry.revision)
                .await
                .map_err(|e| match e.kind() {
                    // Someone wrote in between: the reconciler reads again and decides again.
                    kv::UpdateErrorKind::WrongLastRevision => {
                        CutoverError::Other("the placement changed meanwhile".into())
                    }
                    _ => other(&e),
                })?;
            Ok(())
        }
        .boxed()
    }
}

/// Patches the `TenantPlacement` object at the version it was checked at.
pub struct KubeCutover {
    client: kube::Client,
}

impl KubeCutover {
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }
}

impl Cutover for KubeCutover {
    fn set_shard<'a>(
        &'a self,
        _: &'a Origin,
        namespace: &'a str,
        name: &'a str,
        service: ServiceKind,
        from: &'a str,
        to: &'a str,
    ) -> BoxFuture<'a, Result<(), CutoverError>> {
        async move {
            let api: Api<TenantPlacement> = Api::namespaced(self.client.clone(), namespace);
            let current = api
                .get(name)
                .await
                .map_err(|e| CutoverError::Other(format!("the Kubernetes API: {e}")))?;
            if !must_write(current.spec.shards.get(service), from, to)? {
                return Ok(());
            }
            // The resourceVersion read makes it a compare-and-set: the API server refuses
            // the patch (409) if the object changed since the check above.
            let patch = serde_json::json!({
                "metadata": { "resourceVersion": current.metadata.resource_version },
                "spec": { "shards": { service.as_str(): to } },
            });
            api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|e| CutoverError::Other(format!("the Kubernetes API: {e}")))?;
            Ok(())
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_placement_in_a_shared_file_is_rewritten_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tenants.yaml");
        let other = "# the shards\napiVersion: gateway.pavilion.dev/v1alpha1\nkind: Shard\nmetadata: { name: agg-2, namespace: platform }\nspec: { service: aggregate, endpoints: ['http://a:1'] }\n";
        let text = format!(
            "{other}---\napiVersion: gateway.pavilion.dev/v1alpha1\nkind: TenantPlacement\nmetadata: {{ name: acme, namespace: platform }}\nspec:\n  tenant: acme\n  shards: {{ aggregate: agg-1 }}\n---\n# the end\n"
        );
        std::fs::write(&path, &text).unwrap();
        rewrite_file(
            &path,
            "platform",
            "acme",
            ServiceKind::Aggregate,
            "agg-1",
            "agg-2",
        )
        .unwrap();
        let after = std::fs::read_to_string(&path).unwrap();
        assert!(
            after.starts_with(other),
            "the other document is kept: {after}"
        );
        assert!(after.ends_with("---\n# the end\n"), "{after}");
        let docs = parse_documents(&after);
        let placement = docs
            .iter()
            .find_map(|d| match &d.result {
                Ok(Resource::TenantPlacement(p)) => Some(p.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!(placement.spec.shards.aggregate.as_deref(), Some("agg-2"));
        // Again: nothing to do. From a shard it is not on: refused.
        rewrite_file(
            &path,
            "platform",
            "acme",
            ServiceKind::Aggregate,
            "agg-1",
            "agg-2",
        )
        .unwrap();
        assert!(matches!(
            rewrite_file(&path, "platform", "acme", ServiceKind::Aggregate, "agg-7", "agg-9"),
            Err(CutoverError::Moved(current)) if current == "agg-2"
        ));
    }
}
