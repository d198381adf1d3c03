//! A directory of YAML files: for laptops, demos and CI. Every `.yaml`, `.yml` and `.json`
//! file below the directory is read (multi-document files allowed); hidden entries are
//! skipped, which also makes a Kubernetes ConfigMap mount (`..data` symlinks) work.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use notify::{RecursiveMode, Watcher};
use pavilion_crds::{Document, DocumentError, parse_documents_except};
use tokio::sync::Notify;

use super::{
    Item, ItemsSender, LastAccepted, Origin, RECALL_WINDOW, Source, SourceError, SourceHealth,
    same_items,
};

/// Quiet time after a file event before the directory is read again: editors save in
/// several steps, and one read should see all of them.
const SETTLE: Duration = Duration::from_millis(30);
/// The same when every event was a file renamed into place (save-by-rename, a ConfigMap's
/// `..data` swap): such a file is complete, so only the two halves of the rename need to
/// arrive together. A resource file renamed *away* (Vim and Emacs move `a.yaml` to
/// `a.yaml~` before writing the new one) is a save in progress and gets the full settle.
const RENAMED_SETTLE: Duration = Duration::from_millis(2);
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
    fn run(
        self: Box<Self>,
        items: ItemsSender,
        health: SourceHealth,
    ) -> BoxFuture<'static, Result<(), SourceError>> {
        async move { self.watch(items, health).await }.boxed()
    }
}

impl DirSource {
    async fn watch(self, items: ItemsSender, health: SourceHealth) -> Result<(), SourceError> {
        let fail = |message: String| SourceError::Directory {
            path: self.root.clone(),
            message,
        };
        if !self.root.is_dir() {
            return Err(fail("not a directory".into()));
        }
        let changed = Arc::new(Notify::new());
        let notify_changed = changed.clone();
        // Whether an event since the last read may be a write still in progress.
        let written = Arc::new(AtomicBool::new(false));
        let note_written = written.clone();
        let own_files = self.root.join(".pavilion");
        let watched = self.root.clone();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                // Reading the tree opens every file; those access events must not trigger
                // another read (which would loop forever). Nor do the statuses and plans
                // the control plane itself writes below `.pavilion/`.
                let ignored = match &event {
                    Ok(event) => {
                        matches!(event.kind, notify::EventKind::Access(_))
                            || (!event.paths.is_empty()
                                && event.paths.iter().all(|p| p.starts_with(&own_files)))
                            || writes_only_unread(event, &watched)
                    }
                    Err(_) => false,
                };
                if !ignored {
                    if !event.as_ref().is_ok_and(renamed_into_place) {
                        note_written.store(true, Ordering::SeqCst);
                    }
                    notify_changed.notify_one();
                }
            })
            .map_err(|e| fail(format!("cannot watch: {e}")))?;
        watcher
            .watch(&self.root, RecursiveMode::Recursive)
            .map_err(|e| fail(format!("cannot watch: {e}")))?;

        // File texts are large and short-lived: read on a thread of their own, which hands
        // them back to the system once quiet (see `worker`).
        let reader = crate::worker::Worker::spawn("pavilion-dir-read");
        let mut last: Option<super::Items> = None;
        let mut recall_until = None;
        let mut recalled = Recalled::default();
        let mut cache = FileCache::default();
        // When the change being read was first noticed.
        let mut noticed = std::time::Instant::now();
        loop {
            let reading = std::time::Instant::now();
            let root = self.root.clone();
            self.reads.fetch_add(1, Ordering::Relaxed);
            let loaded = reader
                .run("directory read", move || {
                    let loaded = load_tree_with(&root, &mut cache);
                    (loaded, cache)
                })
                .await;
            let loaded = match loaded {
                Ok((loaded, kept)) => {
                    cache = kept;
                    loaded
                }
                Err(e) => {
                    cache = FileCache::default();
                    Err(std::io::Error::other(e))
                }
            };
            match &loaded {
                Ok(_) => health.up(),
                Err(error) => health.down(error),
            }
            match loaded {
                Ok(mut loaded) if !last.as_ref().is_some_and(|last| same_items(last, &loaded)) => {
                    // What an earlier run accepted, for documents that are now invalid.
                    let recall_until = *recall_until
                        .get_or_insert_with(|| tokio::time::Instant::now() + RECALL_WINDOW);
                    if tokio::time::Instant::now() < recall_until {
                        recalled.attach(&self.root, &mut loaded);
                    }
                    tracing::info!(
                        path = %self.root.display(),
                        documents = loaded.len(),
                        settle_ms = reading.duration_since(noticed).as_millis() as u64,
                        read_ms = reading.elapsed().as_millis() as u64,
                        "read configuration directory"
                    );
                    let loaded: super::Items = loaded.into();
                    items.send_replace(Some(loaded.clone()));
                    last = Some(loaded);
                }
                Ok(_) => {}
                // Keep serving what was read last: a vanished directory is more likely a
                // mount being swapped than a wish to delete every route.
                Err(e) => {
                    tracing::debug!(path = %self.root.display(), error = %e, "cannot read configuration directory; keeping the last good read")
                }
            }
            if recall_until.is_some_and(|until| tokio::time::Instant::now() >= until) {
                recalled = Recalled::default();
            }
            tokio::select! {
                _ = changed.notified() => {
                    noticed = std::time::Instant::now();
                    // Coalesce the burst of events one save produces.
                    let give_up = tokio::time::Instant::now() + MAX_SETTLE;
                    // Taken, not read: an event after the last look keeps the flag for the
                    // read it triggers.
                    let mut wrote = written.swap(false, Ordering::SeqCst);
                    loop {
                        let quiet = if wrote { SETTLE } else { RENAMED_SETTLE };
                        tokio::select! {
                            _ = changed.notified() => {
                                wrote |= written.swap(false, Ordering::SeqCst);
                                continue;
                            }
                            _ = tokio::time::sleep(quiet) => break,
                            _ = tokio::time::sleep_until(give_up) => break,
                        }
                    }
                }
                _ = tokio::time::sleep(RESCAN_EVERY) => noticed = std::time::Instant::now(),
            }
        }
    }
}

/// Whether `event` only creates or writes entries that are never read: hidden ones (an
/// editor's `.a.yaml.swp`, a temporary `.a.yaml.tmp` about to be renamed into place, a
/// ConfigMap's `..2024_…` directory before its `..data` swap) and files of other types. A
/// save in progress must not hold back the read with a full settle. Renames and removals
/// always count; so does a new directory. (A file edited in place inside a hidden directory
/// that a visible link leads into is seen at the next full re-read.)
fn writes_only_unread(event: &notify::Event, root: &Path) -> bool {
    use notify::event::{CreateKind, EventKind, ModifyKind};
    let writes = match event.kind {
        EventKind::Create(CreateKind::Folder) => false,
        EventKind::Create(_) => true,
        EventKind::Modify(ModifyKind::Name(_)) => false,
        EventKind::Modify(_) => true,
        _ => false,
    };
    let unread = |path: &PathBuf| {
        let hidden = path.strip_prefix(root).is_ok_and(|relative| {
            relative
                .components()
                .any(|c| c.as_os_str().as_encoded_bytes().starts_with(b"."))
        });
        hidden || (!is_resource_file(path) && !path.is_dir())
    };
    writes && !event.paths.is_empty() && event.paths.iter().all(unread)
}

/// Whether `event` only renames something into place: the destination of a rename, or a
/// rename away of a temporary file, which is never read (a hidden `.a.yaml.tmp`, a
/// ConfigMap's `..data_tmp`, or a visible `a.yaml.tmp`, `.new`, `.part`). Anything else
/// renamed away may be a file or directory being replaced, and a rename of unknown
/// direction tells nothing: both count as writes.
fn renamed_into_place(event: &notify::Event) -> bool {
    use notify::event::{ModifyKind, RenameMode};
    let notify::EventKind::Modify(ModifyKind::Name(mode)) = event.kind else {
        return false;
    };
    let temporary = |path: Option<&PathBuf>| {
        path.is_some_and(|p| {
            p.file_name()
                .is_some_and(|name| name.as_encoded_bytes().starts_with(b"."))
                || matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("tmp" | "temp" | "new" | "part")
                )
        })
    };
    match mode {
        RenameMode::To => true,
        RenameMode::From | RenameMode::Both => temporary(event.paths.first()),
        _ => false,
    }
}

/// Sets each item's last accepted version from the status files an earlier run wrote.
pub(crate) fn recall(root: &Path, items: &mut [Item]) {
    Recalled::default().attach(root, items);
}

/// The last accepted versions read from status files so far: each file is read and parsed
/// once, however often the tree is read during [`RECALL_WINDOW`] (10 000 files per change
/// otherwise).
#[derive(Default)]
struct Recalled(std::collections::HashMap<pavilion_crds::ResourceKey, Option<Arc<LastAccepted>>>);

impl Recalled {
    fn attach(&mut self, root: &Path, items: &mut [Item]) {
        for item in items {
            let current = item.parsed.as_ref().ok();
            item.last_accepted = item.identity.as_ref().and_then(|identity| {
                self.0
                    .entry(identity.clone())
                    .or_insert_with(|| {
                        let stored =
                            crate::dir_status::read_status(root, identity)?.last_accepted?;
                        LastAccepted::from_status(&stored, identity, current).map(Arc::new)
                    })
                    .clone()
            });
        }
    }
}

/// Resource files one read of the tree takes; more are reported, not read.
pub const MAX_FILES: usize = 50_000;
/// Largest file read.
pub const MAX_FILE_BYTES: u64 = 32 << 20;
/// Bytes one read of the tree takes in all; files past it are reported, not read.
pub const MAX_TREE_BYTES: u64 = 256 << 20;

/// Reads every resource file below `root`, in path order. Only an unreadable `root` is an
/// error; an unreadable file or subdirectory, a dangling link, a directory reached a second
/// time (a symbolic link loop, or two links to one directory) and whatever exceeds the
/// bounds above become items carrying the reason, so a tree of any shape is read in
/// bounded time and memory and every surprise shows in the status.
pub fn load_tree(root: &Path) -> std::io::Result<Vec<Item>> {
    load_tree_with(root, &mut FileCache::default())
}

/// What the last read of each file gave, with the file's stamp then: a file whose stamp
/// is unchanged is not read and parsed again, so a change to one file of a large tree
/// costs the walk (a `stat` per file) and that one file.
pub struct FileCache {
    files: std::collections::HashMap<PathBuf, Cached>,
    /// Files read and parsed so far.
    pub reads: u64,
    /// How long a file must have been quiet before its stamp is trusted.
    trust_after: std::time::Duration,
}

impl Default for FileCache {
    fn default() -> Self {
        Self {
            files: Default::default(),
            reads: 0,
            trust_after: TRUST_AFTER,
        }
    }
}

/// What tells a changed file apart without reading it: size, modification and change
/// times (the change time moves on every write and cannot be set back by users), and the
/// inode, which an editor's save-by-rename or a ConfigMap's symlink swap replaces.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: (i64, i64),
    changed: (i64, i64),
    inode: (u64, u64),
}

/// A file changed this recently is not trusted from the cache: file times are as coarse
/// as a timer tick, so a same-size rewrite within the tick of the stat would keep its
/// stamp (git's "racily clean" rule). It is read again until it has been quiet this long.
/// For file systems with whole-second times (a stamp without nanoseconds).
const TRUST_AFTER: std::time::Duration = std::time::Duration::from_secs(2);
/// The same where times have nanoseconds: they move with the kernel's clock tick (at most
/// 10 ms), so a file quiet for longer than that is told apart by its stamp. Without this,
/// a file edited once was parsed again on every change for two seconds.
const TRUST_AFTER_FINE: std::time::Duration = std::time::Duration::from_millis(50);

impl Stamp {
    /// Written too recently, as of `statted` (when the stamp was taken), to be told apart
    /// by its stamp; `trust_after` applies to whole-second stamps, [`TRUST_AFTER_FINE`] (or
    /// `trust_after` if shorter) to others.
    fn recent(&self, statted: std::time::SystemTime, trust_after: std::time::Duration) -> bool {
        let now = statted
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let newest = self.modified.max(self.changed);
        let fine = self.modified.1 != 0 || self.changed.1 != 0;
        let window = if fine {
            trust_after.min(TRUST_AFTER_FINE)
        } else {
            trust_after
        };
        let newest = std::time::Duration::new(
            newest.0.max(0) as u64,
            newest.1.clamp(0, 999_999_999) as u32,
        );
        now.saturating_sub(newest) < window
    }

    fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            len: meta.len(),
            modified: (meta.mtime(), meta.mtime_nsec()),
            changed: (meta.ctime(), meta.ctime_nsec()),
            inode: (meta.dev(), meta.ino()),
        }
    }
}

/// [`load_tree`], reading only the files `cache` does not hold as they are now.
pub fn load_tree_with(root: &Path, cache: &mut FileCache) -> std::io::Result<Vec<Item>> {
    let mut scan = Scan::default();
    let root_meta = std::fs::metadata(root)?;
    scan.first_visit(&root_meta, root);
    for path in sorted_entries(root)? {
        scan.visit(path);
    }
    let Scan {
        mut files,
        mut problems,
        ..
    } = scan;
    files.sort();
    let mut items = Vec::new();
    let mut budget = MAX_TREE_BYTES;
    let mut previous = std::mem::take(&mut cache.files);
    for file in &files {
        let meta = std::fs::metadata(file).ok();
        // The stamp's age counts to now, before the read: a write during a long read must
        // not find the stamp already trusted.
        let statted = std::time::SystemTime::now();
        let size = meta.as_ref().map_or(0, |m| m.len());
        let refused = if size > MAX_FILE_BYTES {
            Some(format!(
                "{size} bytes; files of more than {MAX_FILE_BYTES} bytes are not read"
            ))
        } else if size > budget {
            Some(format!(
                "not read: the configuration directory holds more than {MAX_TREE_BYTES} bytes of resource files"
            ))
        } else {
            None
        };
        match refused {
            Some(message) => items.push(problem(file, "file", message)),
            None => {
                budget -= size;
                let stamp = meta.as_ref().map(Stamp::of);
                let cached = match (stamp, previous.remove(file)) {
                    (Some(now), Some(cached)) if cached.trusted && now == cached.stamp => {
                        cached.loaded
                    }
                    (_, cached) => {
                        cache.reads += 1;
                        load_file_reusing(file, cached.as_ref().map(|c| &c.loaded))
                    }
                };
                items.extend(cached.items.iter().cloned());
                if let Some(stamp) = stamp {
                    // Kept even while too recent to trust: its documents are reused when
                    // it is read again.
                    let trusted = !stamp.recent(statted, cache.trust_after);
                    cache.files.insert(
                        file.clone(),
                        Cached {
                            stamp,
                            trusted,
                            loaded: cached,
                        },
                    );
                }
            }
        }
    }
    problems.sort_by(|a: &Item, b: &Item| a.origin.cmp(&b.origin));
    items.extend(problems);
    Ok(items)
}

/// A file as last read, and whether its stamp can be trusted to tell a change.
struct Cached {
    stamp: Stamp,
    trusted: bool,
    loaded: Loaded,
}

/// The items of one file, each with the digest of its document's text when it was read as
/// a resource: a document with the same text is the same resource (the same `Arc`) in the
/// next read, so an edit of one document of a large file reads and compiles that one.
struct Loaded {
    items: Vec<Item>,
    texts: Vec<Option<[u8; 32]>>,
}

/// Of a document's text without the line breaks before it, which only move it.
fn digest(text: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(text.trim_start_matches(['\n', '\r']).as_bytes()).into()
}

/// Reads one file, taking from `previous` (its last read) every resource whose document
/// text is unchanged.
fn load_file_reusing(path: &Path, previous: Option<&Loaded>) -> Loaded {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            return Loaded {
                items: vec![problem(path, "file", format!("cannot read: {e}"))],
                texts: vec![None],
            };
        }
    };
    let reusable: std::collections::HashMap<[u8; 32], &Item> = previous
        .into_iter()
        .flat_map(|p| p.texts.iter().zip(&p.items))
        .filter_map(|(text, item)| Some((*text.as_ref()?, item)))
        .collect();
    let known = |document: &str| !reusable.is_empty() && reusable.contains_key(&digest(document));
    let path: Arc<Path> = Arc::from(path);
    let mut loaded = Loaded {
        items: Vec::new(),
        texts: Vec::new(),
    };
    for document in parse_documents_except(&text, &known) {
        let (item, text) = match document {
            Document::Known { line, text } => {
                let text = digest(text);
                let kept = reusable[&text];
                let item = Item {
                    origin: Origin::File {
                        path: path.clone(),
                        line,
                    },
                    ..kept.clone()
                };
                (item, Some(text))
            }
            Document::Parsed { document, text } => {
                let read = document.result.is_ok();
                let item = Item::from_document(&path, document);
                (item, read.then(|| digest(text)))
            }
        };
        loaded.items.push(item);
        loaded.texts.push(text);
    }
    loaded
}

/// Reads one file; an unreadable file becomes one item carrying the reason.
pub fn load_file(path: &Path) -> Vec<Item> {
    load_file_reusing(path, None).items
}

/// An item that is not a resource, only the reason `path` could not give any.
fn problem(path: &Path, field: &str, message: String) -> Item {
    Item::new(
        Origin::File {
            path: Arc::from(path),
            line: 1,
        },
        Err(DocumentError {
            line: 1,
            field: field.into(),
            message,
        }),
    )
}

/// One walk of the tree.
#[derive(Default)]
struct Scan {
    files: Vec<PathBuf>,
    problems: Vec<Item>,
    /// Directories read so far, by (device, inode), with the path they were read under.
    visited: std::collections::HashMap<(u64, u64), PathBuf>,
    /// Resource files found beyond [`MAX_FILES`].
    excess: usize,
}

impl Scan {
    /// Records a directory; `false` when it was read before.
    fn first_visit(&mut self, meta: &std::fs::Metadata, path: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        match self.visited.entry((meta.dev(), meta.ino())) {
            std::collections::hash_map::Entry::Occupied(first) => {
                let message = format!(
                    "the same directory as {}: a symbolic link loop or a second link to one directory; not read again",
                    first.get().display()
                );
                self.problems.push(problem(path, "directory", message));
                false
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(path.to_owned());
                true
            }
        }
    }

    fn visit(&mut self, path: PathBuf) {
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        {
            return;
        }
        // `metadata` follows symlinks, so linked files and directories count.
        let meta = match std::fs::metadata(&path) {
            Ok(meta) => meta,
            Err(e) => {
                let link = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_symlink());
                let message = if link {
                    format!("a symbolic link that leads nowhere readable: {e}")
                } else {
                    format!("cannot read: {e}")
                };
                self.problems.push(problem(&path, "file", message));
                return;
            }
        };
        if meta.is_file() {
            if is_resource_file(&path) {
                if self.files.len() < MAX_FILES {
                    self.files.push(path);
                } else {
                    if self.excess == 0 {
                        self.problems.push(problem(
                            &path,
                            "file",
                            format!("more than {MAX_FILES} resource files; this one and the others past it are not read"),
                        ));
                    }
                    self.excess += 1;
                }
            }
            return;
        }
        if !meta.is_dir() || !self.first_visit(&meta, &path) {
            return;
        }
        match sorted_entries(&path) {
            Ok(entries) => {
                for entry in entries {
                    self.visit(entry);
                }
            }
            Err(e) => self
                .problems
                .push(problem(&path, "directory", format!("cannot read: {e}"))),
        }
    }
}

/// A directory's entries in name order, so every walk meets them, and reports a directory
/// reached twice, in the same order.
fn sorted_entries(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    Ok(entries)
}

fn is_resource_file(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_renames_into_place_skip_the_settle() {
        use notify::event::{CreateKind, DataChange, ModifyKind, RenameMode};
        use notify::{Event, EventKind};
        let rename = |mode, paths: &[&str]| {
            let event = Event::new(EventKind::Modify(ModifyKind::Name(mode)));
            paths
                .iter()
                .fold(event, |e, p| e.add_path(PathBuf::from(p)))
        };
        // A temporary file renamed over a resource file: both halves, and the pair.
        assert!(renamed_into_place(&rename(RenameMode::To, &["/c/a.yaml"])));
        assert!(renamed_into_place(&rename(
            RenameMode::From,
            &["/c/.a.yaml.tmp"]
        )));
        assert!(renamed_into_place(&rename(
            RenameMode::Both,
            &["/c/.a.yaml.tmp", "/c/a.yaml"]
        )));
        // The same with a visible temporary file.
        assert!(renamed_into_place(&rename(
            RenameMode::From,
            &["/c/a.yaml.tmp"]
        )));
        // A ConfigMap's symlink swap.
        assert!(renamed_into_place(&rename(
            RenameMode::From,
            &["/c/..data_tmp"]
        )));
        // Vim's and Emacs's save: the resource moved away first, then written anew.
        assert!(!renamed_into_place(&rename(
            RenameMode::From,
            &["/c/a.yaml"]
        )));
        assert!(!renamed_into_place(&rename(
            RenameMode::Both,
            &["/c/a.yaml", "/c/a.yaml~"]
        )));
        // A directory of resources moved away, a rename of unknown direction, and writes.
        assert!(!renamed_into_place(&rename(RenameMode::From, &["/c/shop"])));
        assert!(!renamed_into_place(&rename(
            RenameMode::Any,
            &["/c/a.yaml"]
        )));
        let write = Event::new(EventKind::Modify(ModifyKind::Data(DataChange::Any)));
        assert!(!renamed_into_place(&write.add_path("/c/a.yaml".into())));
        let create = Event::new(EventKind::Create(CreateKind::File));
        assert!(!renamed_into_place(&create.add_path("/c/a.yaml".into())));
    }

    #[test]
    fn writes_to_entries_never_read_are_not_changes() {
        use notify::event::{CreateKind, DataChange, ModifyKind, RemoveKind, RenameMode};
        use notify::{Event, EventKind};
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("shop")).unwrap();
        let event = |kind, path: &str| Event::new(kind).add_path(root.join(path));
        let write = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        let create = EventKind::Create(CreateKind::File);
        for unread in [
            ".a.yaml.tmp",
            ".a.yaml.swp",
            "a.yaml.tmp",
            "..2026_11_27/a.yaml",
            "notes.txt",
        ] {
            assert!(writes_only_unread(&event(write, unread), root), "{unread}");
            assert!(writes_only_unread(&event(create, unread), root), "{unread}");
        }
        for read in ["a.yaml", "shop/b.yml", "c.json"] {
            assert!(!writes_only_unread(&event(write, read), root), "{read}");
        }
        // A directory appears: what it holds will be read.
        assert!(!writes_only_unread(&event(create, "shop"), root));
        assert!(!writes_only_unread(
            &event(EventKind::Create(CreateKind::Folder), "new"),
            root
        ));
        // Renames and removals always count, even of temporary names.
        let renamed = EventKind::Modify(ModifyKind::Name(RenameMode::From));
        assert!(!writes_only_unread(&event(renamed, ".a.yaml.tmp"), root));
        let removed = EventKind::Remove(RemoveKind::File);
        assert!(!writes_only_unread(&event(removed, "notes.txt"), root));
    }

    fn route(name: &str, prefix: &str) -> String {
        format!(
            "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: Route\nmetadata: {{ name: {name}, namespace: shop }}\nspec:\n  rules:\n    - matches: [{{ path: {{ type: PathPrefix, value: {prefix} }} }}]\n      backends: [{{ url: 'http://127.0.0.1:9' }}]\n"
        )
    }

    /// Each item's resource, as text to compare.
    fn prefixes(items: &[Item]) -> Vec<String> {
        items
            .iter()
            .map(|item| format!("{:?}", item.parsed.as_ref().expect("a resource")))
            .collect()
    }

    #[test]
    fn an_edit_reads_only_the_documents_that_changed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("routes.yaml");
        let text = |b: &str| {
            format!(
                "{}---\n{}---\n{}",
                route("a", "/a"),
                route("b", b),
                route("c", "/c")
            )
        };
        std::fs::write(&file, text("/b")).unwrap();
        let mut cache = FileCache::default();
        let first = load_tree_with(dir.path(), &mut cache).unwrap();
        // b edited, and a marker on top moves every document down a line.
        std::fs::write(&file, format!("---\n{}", text("/b2"))).unwrap();
        let second = load_tree_with(dir.path(), &mut cache).unwrap();
        let resource = |items: &[Item], i: usize| items[i].parsed.clone().unwrap();
        assert!(Arc::ptr_eq(&resource(&first, 0), &resource(&second, 0)));
        assert!(Arc::ptr_eq(&resource(&first, 2), &resource(&second, 2)));
        assert!(!Arc::ptr_eq(&resource(&first, 1), &resource(&second, 1)));
        assert!(prefixes(&second)[1].contains("/b2"));
        let line = |item: &Item| match &item.origin {
            Origin::File { line, .. } => *line,
            other => panic!("{other:?}"),
        };
        for (before, after) in first.iter().zip(&second) {
            assert_eq!(
                line(after),
                line(before) + 1,
                "where each document now starts"
            );
        }
        // The same as a fresh read.
        let fresh = load_tree(dir.path()).unwrap();
        assert_eq!(prefixes(&second), prefixes(&fresh));
        assert_eq!(
            second.iter().map(|i| i.origin.clone()).collect::<Vec<_>>(),
            fresh.iter().map(|i| i.origin.clone()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_file_changed_within_the_last_seconds_is_read_again_whatever_its_stamp() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), route("a", "/a")).unwrap();
        let mut cache = FileCache::default();
        load_tree_with(dir.path(), &mut cache).unwrap();
        load_tree_with(dir.path(), &mut cache).unwrap();
        assert_eq!(cache.reads, 2, "not trusted yet");
        // Quiet for longer than a clock tick, on a file system with fine times: trusted.
        std::thread::sleep(TRUST_AFTER_FINE + Duration::from_millis(20));
        load_tree_with(dir.path(), &mut cache).unwrap();
        load_tree_with(dir.path(), &mut cache).unwrap();
        assert_eq!(cache.reads, 3, "read once more, then taken from the cache");
    }

    #[test]
    fn only_changed_created_or_replaced_files_are_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.yaml"), dir.path().join("b.yaml"));
        std::fs::write(&a, route("a", "/a")).unwrap();
        std::fs::write(&b, route("b", "/b")).unwrap();
        // Files written just now would not be trusted for two seconds (see TRUST_AFTER).
        let mut cache = FileCache {
            trust_after: Duration::ZERO,
            ..FileCache::default()
        };
        let first = load_tree_with(dir.path(), &mut cache).unwrap();
        assert_eq!((first.len(), cache.reads), (2, 2));

        // Nothing changed: nothing read, the same items.
        let again = load_tree_with(dir.path(), &mut cache).unwrap();
        assert_eq!(cache.reads, 2);
        assert_eq!(prefixes(&again), prefixes(&first));

        // Rewritten in place with the same length (a timer tick later: within the tick the
        // stamp could not tell, which is what TRUST_AFTER is for): read again.
        std::thread::sleep(Duration::from_millis(50));
        std::fs::write(&a, route("a", "/x")).unwrap();
        let edited = load_tree_with(dir.path(), &mut cache).unwrap();
        assert_eq!(cache.reads, 3);
        assert!(
            prefixes(&edited)[0].contains("/x"),
            "{:?}",
            prefixes(&edited)
        );

        // Saved by rename (how editors and ConfigMap symlink swaps replace a file).
        let temp = dir.path().join(".b.yaml.swp");
        std::fs::write(&temp, route("b", "/y")).unwrap();
        std::fs::rename(&temp, &b).unwrap();
        let renamed = load_tree_with(dir.path(), &mut cache).unwrap();
        assert_eq!(cache.reads, 4);
        assert!(prefixes(&renamed)[1].contains("/y"));

        // A new file is read; a removed one is gone, from the items and the cache.
        std::fs::write(dir.path().join("c.yaml"), route("c", "/c")).unwrap();
        std::fs::remove_file(&a).unwrap();
        let changed = load_tree_with(dir.path(), &mut cache).unwrap();
        assert_eq!(cache.reads, 5);
        assert_eq!(changed.len(), 2);
        assert_eq!(cache.files.len(), 2);
        // What the cache gives is what a fresh read gives.
        assert_eq!(
            prefixes(&changed),
            prefixes(&load_tree(dir.path()).unwrap())
        );
    }
}
