//! Where resources come from. A source lists the complete resource set and publishes it
//! again whenever it changes ("list + watch"); the controller compiles whatever is latest,
//! so a burst of changes costs one compile.

pub mod dir;
pub mod kube;
pub mod kv;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use futures::future::BoxFuture;
use pavilion_crds::{DocumentError, Resource, ResourceKey};
use tokio::sync::watch;

pub use dir::DirSource;
pub use kube::KubeSource;
pub use kv::KvSource;

/// Where one document came from, for error messages and `validate` output.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Origin {
    /// A document in a file; `line` is where its content starts.
    File { path: PathBuf, line: usize },
    /// The value of a key in a NATS KV bucket.
    Kv { key: String },
    /// An object in the Kubernetes API.
    Kube { key: ResourceKey },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, line } => write!(f, "{}:{line}", path.display()),
            Origin::Kv { key } => write!(f, "kv:{key}"),
            Origin::Kube { key } => write!(f, "kubernetes:{key}"),
        }
    }
}

/// One document of the source: a resource, or why it could not be read.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    pub origin: Origin,
    pub parsed: Result<Resource, DocumentError>,
}

impl Item {
    pub fn key(&self) -> Option<ResourceKey> {
        self.parsed.as_ref().ok().map(Resource::key)
    }
}

/// The complete resource set, in the source's order (for files: path, then position).
pub type Items = Arc<[Item]>;

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
    /// until the process stops. Returns only on a failure it cannot recover from.
    fn run(self: Box<Self>, items: ItemsSender) -> BoxFuture<'static, Result<(), SourceError>>;
}
