//! `pavilion-control explain`: what the gateway would do with one request. The snapshot is
//! compiled by this control plane's compiler from a source (or read from a data plane's
//! snapshot cache file), and the request runs through the data plane's own phase code
//! ([`pavilion_data::pipeline::explain`]) — nothing here re-implements a decision.

use std::path::PathBuf;

use pavilion_crds::Kind;
use pavilion_data::pipeline::explain::{Described, OfflineError, Report};
use pavilion_proto::Snapshot;

use crate::SourceSpec;
use crate::compile::{CompileOptions, compile_with};
use crate::kubernetes::KubeOptions;
use crate::source::Item;

/// Where the snapshot comes from.
pub enum SnapshotFrom {
    /// Compiled from a source's current documents, with the last accepted versions its
    /// statuses remember (as a control plane starting now would serve).
    Source(SourceSpec),
    /// A data plane's snapshot cache file (`--snapshot-cache`): what that data plane ran.
    Snapshot(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Cache {
        path: PathBuf,
        source: pavilion_data::snapshot::cache::CacheError,
    },
    #[error("{}: no snapshot cache file there", .0.display())]
    NoCache(PathBuf),
    #[error(transparent)]
    Kv(#[from] crate::kv::KvError),
    #[error(transparent)]
    KubeClient(#[from] crate::kubernetes::ClientError),
    #[error("listing {kind}: {source}")]
    KubeList { kind: Kind, source: kube::Error },
    #[error(transparent)]
    Explain(#[from] OfflineError),
}

/// The snapshot `from` names.
pub async fn snapshot(
    from: &SnapshotFrom,
    options: &CompileOptions,
    kube: &KubeOptions,
) -> Result<Snapshot, Error> {
    let items = match from {
        SnapshotFrom::Snapshot(path) => {
            return pavilion_data::snapshot::cache::read(path)
                .map_err(|source| Error::Cache {
                    path: path.clone(),
                    source,
                })?
                .ok_or_else(|| Error::NoCache(path.clone()));
        }
        SnapshotFrom::Source(SourceSpec::Dir(root)) => {
            let mut items = crate::source::dir::load_tree(root).map_err(|source| Error::Read {
                path: root.clone(),
                source,
            })?;
            crate::source::dir::recall(root, &mut items);
            items
        }
        SnapshotFrom::Source(SourceSpec::Kv(address)) => {
            let store = crate::kv::open_existing(address).await?;
            crate::kv::cli::current_items(&store).await?
        }
        SnapshotFrom::Source(SourceSpec::Kube) => kube_items(kube).await?,
    };
    Ok(compile_with(&items, options).full_snapshot())
}

/// Every resource of every kind in the cluster (or `kube.namespace`).
async fn kube_items(options: &KubeOptions) -> Result<Vec<Item>, Error> {
    use kube::api::{Api, DynamicObject, ListParams};
    let client = crate::kubernetes::client(options).await?;
    let mut items = Vec::new();
    for kind in Kind::ALL {
        let resource = crate::source::kube::api_resource(kind);
        let api: Api<DynamicObject> = match &options.namespace {
            Some(namespace) => Api::namespaced_with(client.clone(), namespace, &resource),
            None => Api::all_with(client.clone(), &resource),
        };
        let list = api
            .list(&ListParams::default())
            .await
            .map_err(|source| Error::KubeList { kind, source })?;
        for object in &list.items {
            let mut item = crate::source::kube::item(kind, object);
            item.last_accepted = crate::source::kube::last_accepted(object, &item);
            items.push(item);
        }
    }
    items.sort_by(|a, b| a.origin.cmp(&b.origin));
    Ok(items)
}

/// Explains `described` against the snapshot `from` names.
pub async fn explain(
    from: &SnapshotFrom,
    described: &Described,
    options: &CompileOptions,
    kube: &KubeOptions,
) -> Result<Report, Error> {
    let snapshot = snapshot(from, options, kube).await?;
    Ok(pavilion_data::pipeline::explain::offline(&snapshot, described).await?)
}
