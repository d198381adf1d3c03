//! A directory of YAML files: for laptops, demos and CI. Every `.yaml`, `.yml` and `.json`
//! file below the directory is read (multi-document files allowed); hidden entries are
//! skipped, which also makes a Kubernetes ConfigMap mount (`..data` symlinks) work.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use notify::{RecursiveMode, Watcher};
use pavilion_crds::{DocumentError, parse_documents};
use tokio::sync::Notify;

use super::{Item, ItemsSender, Origin, Source, SourceError};

/// Quiet time after a file event before the directory is read again: editors save in
/// several steps, and one read should see all of them.
const SETTLE: Duration = Duration::from_millis(30);
/// A full re-read even without events, in case the watcher missed some (overflow, NFS).
const RESCAN_EVERY: Duration = Duration::from_secs(5);

pub struct DirSource {
    root: PathBuf,
}

impl DirSource {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
}

impl Source for DirSource {
    fn run(self: Box<Self>, items: ItemsSender) -> BoxFuture<'static, Result<(), SourceError>> {
        async move { self.watch(items).await }.boxed()
    }
}

impl DirSource {
    async fn watch(self, items: ItemsSender) -> Result<(), SourceError> {
        let fail = |message: String| SourceError::Directory {
            path: self.root.clone(),
            message,
        };
        if !self.root.is_dir() {
            return Err(fail("not a directory".into()));
        }
        let changed = Arc::new(Notify::new());
        let notify_changed = changed.clone();
        let mut watcher = notify::recommended_watcher(move |_event| notify_changed.notify_one())
            .map_err(|e| fail(format!("cannot watch: {e}")))?;
        watcher
            .watch(&self.root, RecursiveMode::Recursive)
            .map_err(|e| fail(format!("cannot watch: {e}")))?;

        let mut last: Option<Vec<Item>> = None;
        loop {
            match load_tree(&self.root) {
                Ok(loaded) if last.as_ref() != Some(&loaded) => {
                    tracing::info!(path = %self.root.display(), documents = loaded.len(), "read configuration directory");
                    items.send_replace(Some(loaded.clone().into()));
                    last = Some(loaded);
                }
                Ok(_) => {}
                // Keep serving what was read last: a vanished directory is more likely a
                // mount being swapped than a wish to delete every route.
                Err(e) => {
                    tracing::warn!(path = %self.root.display(), error = %e, "cannot read configuration directory; keeping the last good read")
                }
            }
            tokio::select! {
                _ = changed.notified() => {
                    // Coalesce the burst of events one save produces.
                    loop {
                        tokio::select! {
                            _ = changed.notified() => continue,
                            _ = tokio::time::sleep(SETTLE) => break,
                        }
                    }
                }
                _ = tokio::time::sleep(RESCAN_EVERY) => {}
            }
        }
    }
}

/// Reads every resource file below `root`, in path order.
pub fn load_tree(root: &Path) -> std::io::Result<Vec<Item>> {
    let mut files = Vec::new();
    collect_files(root, &mut files)?;
    files.sort();
    Ok(files.iter().flat_map(|f| load_file(f)).collect())
}

/// Reads one file; an unreadable file becomes one item carrying the reason.
pub fn load_file(path: &Path) -> Vec<Item> {
    let origin = |line| Origin::File {
        path: path.to_owned(),
        line,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => parse_documents(&text)
            .into_iter()
            .map(|doc| Item {
                origin: origin(doc.line),
                parsed: doc.result,
            })
            .collect(),
        Err(e) => vec![Item {
            origin: origin(1),
            parsed: Err(DocumentError {
                line: 1,
                field: "file".into(),
                message: format!("cannot read: {e}"),
            }),
        }],
    }
}

fn collect_files(dir: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        // `metadata` follows symlinks, so linked files and directories count.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            collect_files(&path, files)?;
        } else if is_resource_file(&path) {
            files.push(path);
        }
    }
    Ok(())
}

fn is_resource_file(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}
