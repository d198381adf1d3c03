//! Statuses of a directory source, as JSON files below `<dir>/.pavilion/status/`
//! (`<kind>/<namespace>/<name>.json`, the same document a KV status key holds). They are
//! what a restarted control plane recalls a resource's last accepted version from, and a
//! place to read its conditions without the HTTP API. The directory source skips hidden
//! entries, so these files are never read as resources.

use std::path::{Path, PathBuf};

use futures::FutureExt;
use futures::future::BoxFuture;
use pavilion_crds::ResourceKey;

use crate::writeback::{StatusSink, StatusTarget, StoredStatus, Written};

/// Where statuses live below the configuration directory.
pub const STATUS_DIR: &str = ".pavilion/status";

/// The status file of `key` below `root`. Only well-formed names get one: an identity read
/// from a document that failed validation may hold `..` or `/`, and must not choose a path
/// (such a document never had an accepted version to keep anyway). Names are RFC 1123, so
/// at most 253 bytes: `<name>.json` fits the usual 255-byte limit.
pub fn status_path(root: &Path, key: &ResourceKey) -> Option<PathBuf> {
    let well_formed = pavilion_crds::namespace_name(&key.namespace).is_ok()
        && pavilion_crds::resource_name(&key.name).is_ok()
        && key.name.len() <= 250;
    well_formed.then(|| {
        root.join(STATUS_DIR)
            .join(key.kind.as_str().to_ascii_lowercase())
            .join(&*key.namespace)
            .join(format!("{}.json", key.name))
    })
}

/// The status stored for `key`, if any can be read.
pub fn read_status(root: &Path, key: &ResourceKey) -> Option<StoredStatus> {
    let bytes = std::fs::read(status_path(root, key)?).ok()?;
    serde_json::from_slice(&bytes).ok()
}

pub struct DirStatusSink {
    root: PathBuf,
    /// The document each file last spoke for. Files are per resource but write-back targets
    /// are per document position, so a line added above a document makes a new target for
    /// the same file: removing the old target must not delete the new one's file. Both are
    /// kept as fingerprints (keyed by a per-process random hasher): at 20 000 documents the
    /// paths and targets themselves were 7 MB.
    owners: std::collections::HashMap<u64, u64>,
    fingerprints: std::collections::hash_map::RandomState,
    /// Set when the directory cannot be written (a read-only mount): said once, then
    /// statuses live in `/v1/status` only.
    read_only: bool,
}

impl DirStatusSink {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            owners: std::collections::HashMap::new(),
            fingerprints: std::collections::hash_map::RandomState::new(),
            read_only: false,
        }
    }

    /// Remembers that `target` now speaks for the file at `path`.
    fn own(&mut self, path: &Path, target: &StatusTarget) {
        use std::hash::BuildHasher;
        let (path, target) = (
            self.fingerprints.hash_one(path),
            self.fingerprints.hash_one(target),
        );
        self.owners.insert(path, target);
    }

    fn path(&self, target: &StatusTarget) -> Option<PathBuf> {
        target
            .key
            .as_ref()
            .and_then(|key| status_path(&self.root, key))
    }
}

impl StatusSink for DirStatusSink {
    fn read<'a>(
        &'a mut self,
        target: &'a StatusTarget,
    ) -> BoxFuture<'a, Result<Option<StoredStatus>, String>> {
        let status = target.key.as_ref().and_then(|k| read_status(&self.root, k));
        if let (Some(_), Some(path)) = (&status, self.path(target)) {
            self.own(&path, target);
        }
        async move { Ok(status) }.boxed()
    }

    fn write<'a>(
        &'a mut self,
        target: &'a StatusTarget,
        status: &'a StoredStatus,
    ) -> BoxFuture<'a, Result<Written, String>> {
        async move {
            // A document that does not say which resource it is has no file of its own.
            let Some(path) = self.path(target).filter(|_| !self.read_only) else {
                return Ok(Written::Done);
            };
            let body = serde_json::to_vec_pretty(status).map_err(|e| e.to_string())?;
            self.own(&path, target);
            let written = tokio::task::spawn_blocking(move || write_atomically(&path, &body))
                .await
                .map_err(|e| e.to_string())?;
            match written {
                Ok(()) => Ok(Written::Done),
                Err(error)
                    if matches!(
                        error.kind(),
                        std::io::ErrorKind::PermissionDenied
                            | std::io::ErrorKind::ReadOnlyFilesystem
                    ) =>
                {
                    tracing::warn!(path = %self.root.join(STATUS_DIR).display(), %error, "cannot write statuses into the configuration directory; after a restart, invalid resources will not fall back to their last accepted version");
                    self.read_only = true;
                    Ok(Written::Done)
                }
                Err(error) => Err(error.to_string()),
            }
        }
        .boxed()
    }

    fn remove<'a>(&'a mut self, target: &'a StatusTarget) -> BoxFuture<'a, Result<(), String>> {
        use std::hash::BuildHasher;
        let mut path = self.path(target).filter(|_| !self.read_only);
        if let Some(file) = &path {
            let (file, owner) = (
                self.fingerprints.hash_one(file),
                self.fingerprints.hash_one(target),
            );
            // Only the document that owns the file removes it (and its ownership).
            if self.owners.get(&file).is_none_or(|o| *o == owner) {
                self.owners.remove(&file);
            } else {
                path = None;
            }
        }
        async move {
            match path.map(std::fs::remove_file) {
                Some(Err(e)) if e.kind() != std::io::ErrorKind::NotFound => Err(e.to_string()),
                _ => Ok(()),
            }
        }
        .boxed()
    }

    fn prune<'a>(&'a mut self, current: &'a [StatusTarget]) -> BoxFuture<'a, Result<(), String>> {
        if self.read_only {
            return async { Ok(()) }.boxed();
        }
        let keep: std::collections::HashSet<PathBuf> =
            current.iter().filter_map(|t| self.path(t)).collect();
        let root = self.root.join(STATUS_DIR);
        async move {
            tokio::task::spawn_blocking(move || prune_tree(&root, &keep))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())
        }
        .boxed()
    }
}

/// Written beside, then renamed over: a reader (or a crash) never sees half a file.
fn write_atomically(path: &Path, body: &[u8]) -> std::io::Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let temporary = path.with_extension("json.tmp");
    std::fs::write(&temporary, body)?;
    std::fs::rename(&temporary, path)
}

/// Deletes every status file below `dir` that is not in `keep`, and directories left empty.
fn prune_tree(dir: &Path, keep: &std::collections::HashSet<PathBuf>) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        if path.is_dir() {
            prune_tree(&path, keep)?;
            // Fails while something is left in it, which is fine.
            let _ = std::fs::remove_dir(&path);
        } else if !keep.contains(&path) {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Origin;
    use pavilion_crds::Kind;

    fn key(namespace: &str, name: &str) -> ResourceKey {
        ResourceKey {
            kind: Kind::Route,
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    fn target(line: usize) -> StatusTarget {
        StatusTarget {
            origin: Origin::File {
                path: std::path::Path::new("r.yaml").into(),
                line,
            },
            key: Some(key("shop", "orders")),
        }
    }

    #[test]
    fn only_well_formed_names_choose_a_path() {
        let root = Path::new("/cfg");
        assert_eq!(
            status_path(root, &key("shop", "orders")),
            Some(PathBuf::from(
                "/cfg/.pavilion/status/route/shop/orders.json"
            ))
        );
        for (namespace, name) in [
            ("shop", "../../etc/x"),
            ("/etc", "x"),
            ("shop", "a/b"),
            ("..", "x"),
        ] {
            assert_eq!(
                status_path(root, &key(namespace, name)),
                None,
                "{namespace}/{name}"
            );
        }
    }

    #[tokio::test]
    async fn a_moved_document_keeps_its_status_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = DirStatusSink::new(dir.path());
        let status = StoredStatus::default();
        // The document moves down a line: the new target writes, then the old one goes.
        sink.write(&target(1), &status).await.unwrap();
        sink.write(&target(2), &status).await.unwrap();
        sink.remove(&target(1)).await.unwrap();
        let path = status_path(dir.path(), &key("shop", "orders")).unwrap();
        assert!(path.exists(), "the file the current document wrote stays");
        sink.remove(&target(2)).await.unwrap();
        assert!(!path.exists(), "removed with the resource");
    }
}
