//! Where resources come from. A source lists the complete resource set and publishes it
//! again whenever it changes ("list + watch"); the controller compiles whatever is latest,
//! so a burst of changes costs one compile.

pub mod dir;
pub mod health;
pub mod kube;
pub mod kv;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::future::BoxFuture;
use pavilion_crds::status::LastAccepted as StoredLastAccepted;
use pavilion_crds::{DocumentError, ParsedDocument, Resource, ResourceKey};
use tokio::sync::watch;

pub use dir::DirSource;
pub use health::{HealthState, SourceHealth};
pub use kube::KubeSource;
pub use kv::KvSource;

/// Where one document came from, for error messages and `validate` output.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Origin {
    /// A document in a file; `line` is where its content starts. The path is shared by
    /// the file's documents: cloned without a copy, and compared by pointer first (every
    /// change compares every document's origin with the one before).
    File { path: Arc<Path>, line: usize },
    /// The value of a key in a NATS KV bucket.
    Kv { key: Arc<str> },
    /// An object in the Kubernetes API; `uid` tells a recreated object from the old one
    /// (and is how events name it).
    Kube { key: ResourceKey, uid: Arc<str> },
}

/// Hashes as little as tells origins apart in practice (the controller and the status
/// writer look up every origin on every change): a file's name and line, not every
/// component of its path; a Kubernetes object's key, not its uid.
impl std::hash::Hash for Origin {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        std::mem::discriminant(self).hash(state);
        match self {
            Origin::File { path, line } => {
                line.hash(state);
                path.file_name().hash(state);
            }
            Origin::Kv { key } => key.hash(state),
            Origin::Kube { key, .. } => key.hash(state),
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, line } => write!(f, "{}:{line}", path.display()),
            Origin::Kv { key } => write!(f, "kv:{key}"),
            Origin::Kube { key, .. } => write!(f, "kubernetes:{key}"),
        }
    }
}

/// One document of the source: a resource, or why it could not be read.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    pub origin: Origin,
    /// Shared, not copied: the same resource is held by the source's cache, the published
    /// set, the controller's memory and its last accepted version, so a large resource set
    /// is in memory once and an unchanged item is recognised by pointer.
    pub parsed: Result<Arc<Resource>, DocumentError>,
    /// Which resource the document is, even when it cannot be read as one: from the
    /// resource, else from where it lives (a Kubernetes object, a KV key), else from what
    /// the text claims (`kind` and `metadata`).
    pub identity: Option<ResourceKey>,
    /// The version to serve while this one is invalid. Sources fill it in from what an
    /// earlier run stored (so a restart keeps serving it); the controller from memory.
    pub last_accepted: Option<Arc<LastAccepted>>,
}

impl Item {
    /// An item whose identity comes from the resource or its origin.
    pub fn new(origin: Origin, parsed: Result<Resource, DocumentError>) -> Self {
        let parsed = parsed.map(Arc::new);
        let identity = match (&parsed, &origin) {
            // The object's own key, shared rather than built again.
            (Ok(resource), Origin::Kube { key, .. })
                if key.kind == resource.kind()
                    && *key.namespace == *resource.namespace()
                    && *key.name == *resource.name() =>
            {
                Some(key.clone())
            }
            (Ok(resource), _) => Some(resource.key()),
            (Err(_), Origin::Kube { key, .. }) => Some(key.clone()),
            (Err(_), Origin::Kv { key }) => crate::kv::parse_key(key),
            (Err(_), Origin::File { .. }) => None,
        };
        Self {
            origin,
            parsed,
            identity,
            last_accepted: None,
        }
    }

    /// A document of the file at `path`.
    pub fn from_document(path: &Arc<Path>, document: ParsedDocument) -> Self {
        let mut item = Item::new(
            Origin::File {
                path: path.clone(),
                line: document.line,
            },
            document.result,
        );
        item.identity = item.identity.or(document.identity);
        item
    }

    pub fn key(&self) -> Option<ResourceKey> {
        self.parsed.as_ref().ok().map(|resource| resource.key())
    }

    /// Equal, checked by pointer first: an item a source did not read again shares its
    /// resource (and the controller its last accepted version) with the earlier item, so
    /// comparing 10 000 unchanged items compares no resource field by field.
    pub fn same_as(&self, other: &Item) -> bool {
        let parsed = match (&self.parsed, &other.parsed) {
            (Ok(a), Ok(b)) => shared(a, b),
            (a, b) => a == b,
        };
        parsed && self.same_place(other) && self.same_last_accepted(other)
    }

    /// The same resource as its author wrote it ([`Resource::same_exported`]: status and
    /// the API server's bookkeeping aside), from the same place.
    pub fn same_content(&self, other: &Item) -> bool {
        let parsed = match (&self.parsed, &other.parsed) {
            (Ok(a), Ok(b)) => Arc::ptr_eq(a, b) || a.same_exported(b),
            (a, b) => a == b,
        };
        parsed && self.same_place(other)
    }

    /// The same version standing in for the document, if any.
    pub fn same_last_accepted(&self, other: &Item) -> bool {
        match (&self.last_accepted, &other.last_accepted) {
            (Some(a), Some(b)) => shared(a, b),
            (a, b) => a.is_none() && b.is_none(),
        }
    }

    fn same_place(&self, other: &Item) -> bool {
        self.origin == other.origin && self.identity == other.identity
    }
}

/// Equal, by pointer first.
fn shared<T: PartialEq>(a: &Arc<T>, b: &Arc<T>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

/// Whether two reads gave the same items ([`Item::same_as`]).
pub fn same_items(a: &[Item], b: &[Item]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(a, b)| a.same_as(b))
}

/// Largest last accepted version written into a status.
pub const MAX_STORED_BYTES: usize = 256 << 10;

/// The last version of a resource the control plane accepted.
#[derive(Clone, Debug, PartialEq)]
pub struct LastAccepted {
    /// Without status and server-managed metadata ([`Resource::exported`]); the item's own
    /// resource when that has none.
    pub resource: Arc<Resource>,
    pub generation: Option<i64>,
    /// RFC 3339: when this version was first accepted.
    pub accepted_at: String,
}

impl LastAccepted {
    /// What a status holds; `None` when it no longer reads as a resource of `identity`
    /// (written by another version, or edited by hand). When it is the document as it is
    /// now (`current`, the usual case after a restart) it shares that resource: 10 000
    /// routes are not kept twice.
    pub fn from_status(
        stored: &StoredLastAccepted,
        identity: &ResourceKey,
        current: Option<&Arc<Resource>>,
    ) -> Option<Self> {
        let mut documents = pavilion_crds::parse_documents(&stored.document);
        if documents.len() != 1 {
            return None;
        }
        let resource = documents.remove(0).result.ok()?;
        (resource.key() == *identity).then(|| Self {
            resource: match current {
                Some(current) if **current == resource => current.clone(),
                _ => Arc::new(resource),
            },
            generation: stored.generation,
            accepted_at: stored.accepted_at.clone(),
        })
    }

    /// As a status holds it; `None` for a document over [`MAX_STORED_BYTES`], which stays
    /// in memory only (a status twice the size of a large object would exceed what the
    /// API server or NATS store).
    pub fn to_status(&self) -> Option<StoredLastAccepted> {
        let document = self.resource.to_yaml();
        (document.len() <= MAX_STORED_BYTES).then(|| StoredLastAccepted {
            generation: self.generation,
            accepted_at: self.accepted_at.clone(),
            document,
        })
    }

    /// How a status message names it: `generation 3`, or when it was accepted.
    pub fn describe(&self) -> String {
        match self.generation {
            Some(generation) => format!("generation {generation}"),
            None => format!("the version accepted at {}", self.accepted_at),
        }
    }
}

/// How long after its first complete read a source attaches the last accepted versions an
/// earlier run stored ([`Item::last_accepted`]) to what it publishes. The controller uses
/// them in its first compile only; attaching them for a while (not just to the first set)
/// makes sure that compile sees them even when changes arrive during the start.
pub const RECALL_WINDOW: std::time::Duration = std::time::Duration::from_secs(5);

/// The complete resource set, in the source's order (for files: path, then position).
pub type Items = Arc<[Item]>;

/// Waits until `gap` has passed since `last` (not at all when it has, or there is no
/// `last`): a lone change is handled at once, a burst at most once per `gap` — work that
/// passes over every resource must not run once per event of a burst, nor delay a change
/// that comes alone.
pub async fn pace(last: Option<tokio::time::Instant>, gap: std::time::Duration) {
    let now = tokio::time::Instant::now();
    if let Some(wait) = last.and_then(|last| (last + gap).checked_duration_since(now)) {
        tokio::time::sleep(wait).await;
    }
}

/// `None` until the source has listed everything once.
pub type ItemsSender = watch::Sender<Option<Items>>;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{path}: {message}")]
    Directory { path: PathBuf, message: String },
}

/// A place resources are read from.
pub trait Source: Send + 'static {
    /// Publishes the complete resource set into `items`, and again after each change,
    /// until the process stops, reporting into `health` whether it reaches what it reads.
    /// Returns only on a failure it cannot recover from.
    fn run(
        self: Box<Self>,
        items: ItemsSender,
        health: SourceHealth,
    ) -> BoxFuture<'static, Result<(), SourceError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn pace_waits_only_within_the_gap() {
        use tokio::time::{Duration, Instant};
        let gap = Duration::from_millis(10);
        let waited = |since: Instant| Instant::now() - since;

        let start = Instant::now();
        pace(None, gap).await;
        assert_eq!(waited(start), Duration::ZERO, "nothing before: at once");

        let start = Instant::now();
        pace(Some(start), gap).await;
        assert_eq!(waited(start), gap, "just now: the whole gap");

        tokio::time::advance(Duration::from_millis(4)).await;
        let last = Instant::now();
        tokio::time::advance(Duration::from_millis(4)).await;
        let start = Instant::now();
        pace(Some(last), gap).await;
        assert_eq!(
            waited(start),
            Duration::from_millis(6),
            "the rest of the gap"
        );

        let last = Instant::now();
        tokio::time::advance(Duration::from_millis(25)).await;
        let start = Instant::now();
        pace(Some(last), gap).await;
        assert_eq!(
            waited(start),
            Duration::ZERO,
            "a lone change after a quiet spell: at once"
        );
    }

    fn route(backend: &str) -> Arc<Resource> {
        let text = format!(
            "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: Route\nmetadata: {{ name: r, namespace: shop }}\nspec:\n  rules:\n    - backends: [{{ url: '{backend}' }}]\n"
        );
        let mut documents = pavilion_crds::parse_documents(&text);
        Arc::new(documents.remove(0).result.unwrap())
    }

    fn hash_of(origin: &Origin) -> u64 {
        use std::hash::BuildHasher;
        foldhash::fast::FixedState::default().hash_one(origin)
    }

    /// Origins hash by less than they compare by: equal ones must still hash alike, however
    /// they were made (separately read keys, paths spelled two ways).
    #[test]
    fn equal_origins_hash_alike() {
        let file = |path: &str, line| Origin::File {
            path: Arc::from(Path::new(path)),
            line,
        };
        let (a, b) = (
            file("conf/shop/routes.yaml", 3),
            file("conf//shop/./routes.yaml", 3),
        );
        assert_eq!(a, b);
        assert_eq!(hash_of(&a), hash_of(&b));
        assert_ne!(a, file("conf/shop/routes.yaml", 4));
        assert_ne!(a, file("conf/other/routes.yaml", 3));
        let kube = |namespace: &str, uid: &str| Origin::Kube {
            key: ResourceKey {
                kind: pavilion_crds::Kind::Route,
                namespace: namespace.into(),
                name: "orders".into(),
            },
            uid: uid.into(),
        };
        assert_eq!(kube("shop", "u1"), kube("shop", "u1"));
        assert_eq!(hash_of(&kube("shop", "u1")), hash_of(&kube("shop", "u1")));
        // Told apart by what the hash leaves out.
        assert_ne!(kube("shop", "u1"), kube("shop", "u2"));
        assert_ne!(kube("shop", "u1"), kube("other", "u1"));
        let kv = |key: &str| Origin::Kv { key: key.into() };
        assert_eq!(
            hash_of(&kv("route.shop.orders")),
            hash_of(&kv("route.shop.orders"))
        );
    }

    /// After a restart the stored last accepted version is usually the document as it is:
    /// then both are one resource in memory, not two.
    #[test]
    fn a_stored_version_equal_to_the_document_shares_its_resource() {
        let current = route("http://127.0.0.1:9000");
        let stored = LastAccepted {
            resource: current.clone(),
            generation: None,
            accepted_at: "2026-11-27T00:00:00Z".into(),
        }
        .to_status()
        .unwrap();
        let key = current.key();
        let same = LastAccepted::from_status(&stored, &key, Some(&current)).unwrap();
        assert!(Arc::ptr_eq(&same.resource, &current));
        let edited = route("http://127.0.0.1:9001");
        let other = LastAccepted::from_status(&stored, &key, Some(&edited)).unwrap();
        assert!(!Arc::ptr_eq(&other.resource, &edited));
        assert_eq!(other.resource, current);
        assert!(LastAccepted::from_status(&stored, &edited.key(), None).is_some());
    }
}
