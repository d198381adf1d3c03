//! Statuses of a directory source, as JSON files below `<dir>/.pavilion/status/`
//! (`<kind>/<namespace>/<name>.json`, the same document a KV status key holds). They are
//! what a restarted control plane recalls a resource's last accepted version from, and a
//! place to read its conditions without the HTTP API. The directory source skips hidden
//! entries, so these files are never read as resources.

use std::path::{Path, PathBuf};

use futures::FutureExt;
use futures::future::BoxFuture;
use pavilion_crds::ResourceKey;
use sha2::{Digest, Sha256};

use crate::writeback::{StatusSink, StatusTarget, StoredStatus, Written};

/// Where statuses live below the configuration directory.
pub const STATUS_DIR: &str = ".pavilion/status";

/// A file name must stay within the usual 255-byte limit; longer names are hashed (the
/// file's document still names the resource).
const MAX_NAME: usize = 200;

/// The status file of `key` below `root`.
pub fn status_path(root: &Path, key: &ResourceKey) -> PathBuf {
    let name = if key.name.len() <= MAX_NAME {
        key.name.clone()
    } else {
        Sha256::digest(key.name.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    root.join(STATUS_DIR)
        .join(key.kind.as_str().to_ascii_lowercase())
        .join(&key.namespace)
        .join(format!("{name}.json"))
}

/// The status stored for `key`, if any can be read.
pub fn read_status(root: &Path, key: &ResourceKey) -> Option<StoredStatus> {
    let bytes = std::fs::read(status_path(root, key)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

pub struct DirStatusSink {
    root: PathBuf,
    /// Set when the directory cannot be written (a read-only mount): said once, then
    /// statuses live in `/v1/status` only.
    read_only: bool,
}

impl DirStatusSink {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            read_only: false,
        }
    }

    fn path(&self, target: &StatusTarget) -> Option<PathBuf> {
        target.key.as_ref().map(|key| status_path(&self.root, key))
    }
}

impl StatusSink for DirStatusSink {
    fn read<'a>(
        &'a mut self,
        target: &'a StatusTarget,
    ) -> BoxFuture<'a, Result<Option<StoredStatus>, String>> {
        let status = target.key.as_ref().and_then(|k| read_status(&self.root, k));
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
        let path = self.path(target).filter(|_| !self.read_only);
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
