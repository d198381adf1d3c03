//! A directory of YAML files: for laptops, demos and CI. Every `.yaml`, `.yml` and `.json`
//! file below the directory is read (multi-document files allowed); hidden entries are
//! skipped, which also makes a Kubernetes ConfigMap mount (`..data` symlinks) work.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
/// Longest wait for quiet: a file rewritten constantly must not hold back other edits.
const MAX_SETTLE: Duration = Duration::from_millis(500);
/// A full re-read even without events, in case the watcher missed some (overflow, NFS).
const RESCAN_EVERY: Duration = Duration::from_secs(5);

pub struct DirSource {
    root: PathBuf,
    reads: Arc<AtomicU64>,
}

impl DirSource {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            reads: Arc::default(),
        }
    }

    /// Counts every full read of the tree (for metrics and tests).
    pub fn read_counter(&self) -> Arc<AtomicU64> {
        self.reads.clone()
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
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                // Reading the tree opens every file; those access events must not trigger
                // another read (which would loop forever).
                if !matches!(
                    event,
                    Ok(notify::Event {
                        kind: notify::EventKind::Access(_),
                        ..
                    })
                ) {
                    notify_changed.notify_one();
                }
            })
            .map_err(|e| fail(format!("cannot watch: {e}")))?;
        watcher
            .watch(&self.root, RecursiveMode::Recursive)
            .map_err(|e| fail(format!("cannot watch: {e}")))?;

        let mut last: Option<Vec<Item>> = None;
        loop {
            let root = self.root.clone();
            self.reads.fetch_add(1, Ordering::Relaxed);
            let loaded = tokio::task::spawn_blocking(move || load_tree(&root))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            match loaded {
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
                    let give_up = tokio::time::Instant::now() + MAX_SETTLE;
                    loop {
                        tokio::select! {
                            _ = changed.notified() => continue,
                            _ = tokio::time::sleep(SETTLE) => break,
                            _ = tokio::time::sleep_until(give_up) => break,
                        }
                    }
                }
                _ = tokio::time::sleep(RESCAN_EVERY) => {}
            }
        }
    }
}

/// Reads every resource file below `root`, in path order. Only an unreadable `root` is an
/// error; an unreadable file or subdirectory becomes an item carrying the reason.
pub fn load_tree(root: &Path) -> std::io::Result<Vec<Item>> {
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for entry in std::fs::read_dir(root)? {
        visit(entry?.path(), &mut files, &mut problems);
    }
    files.sort();
    let mut items: Vec<Item> = files.iter().flat_map(|f| load_file(f)).collect();
    problems.sort_by(|a: &Item, b: &Item| a.origin.cmp(&b.origin));
    items.extend(problems);
    Ok(items)
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

fn visit(path: PathBuf, files: &mut Vec<PathBuf>, problems: &mut Vec<Item>) {
    if path
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
    {
        return;
    }
    // `metadata` follows symlinks, so linked files and directories count.
    let Ok(meta) = std::fs::metadata(&path) else {
        return;
    };
    if meta.is_file() {
        if is_resource_file(&path) {
            files.push(path);
        }
        return;
    }
    if !meta.is_dir() {
        return;
    }
    match std::fs::read_dir(&path) {
        Ok(entries) => {
            for entry in entries.flatten() {
                visit(entry.path(), files, problems);
            }
        }
        Err(e) => problems.push(Item {
            origin: Origin::File {
                path: path.clone(),
                line: 1,
            },
            parsed: Err(DocumentError {
                line: 1,
                field: "directory".into(),
                message: format!("cannot read: {e}"),
            }),
        }),
    }
}

fn is_resource_file(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}
