//! The NATS JetStream KV bucket that carries resources for Docker Swarm (and the mirror of
//! a Kubernetes cluster): addresses, key layout and bucket set-up.
//!
//! Keys: `<kind>.<namespace>.<name>` with the kind in lower case (`route.shop.orders`);
//! values: the same YAML or JSON document a Kubernetes user would apply. Statuses go to
//! `status.<kind>.<namespace>.<name>` as JSON `{"conditions":[…]}`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

pub mod cli;
mod nodes;
mod status;

use async_nats::jetstream::{self, kv::Store};
use pavilion_crds::{Kind, ResourceKey};

use crate::source::SourceHealth;

pub use nodes::KvNodeBoard;
pub use status::KvStatusSink;

/// Bucket used when the URL names none.
pub const DEFAULT_BUCKET: &str = "pavilion-config";
/// Revisions kept per key when the control plane creates the bucket: enough to see what a
/// key held before the last few changes (`nats kv history`), small enough to stay cheap.
pub const HISTORY: i64 = 5;
/// Prefix of status keys.
pub const STATUS_PREFIX: &str = "status.";
/// Prefix of the keys where control-plane replicas post their data planes.
pub const NODES_PREFIX: &str = "nodes.";

/// Whether a key holds a resource (not a status or a node report).
pub fn is_resource_key(key: &str) -> bool {
    !key.starts_with(STATUS_PREFIX) && !key.starts_with(NODES_PREFIX)
}

/// The keys under `prefix` (each with it, sorted), deleted ones included (reading one gives
/// nothing): asked of the stream as the subjects under the prefix. The bucket holds every
/// resource and status besides, and walking all its keys to find a few (the node board on
/// every status pass, the rebalancing plans on every change) was most of what the control
/// plane did per change at 10 000 routes.
pub async fn keys_under(store: &Store, prefix: &str) -> Result<Vec<String>, KvError> {
    use futures::TryStreamExt;
    let subjects: Vec<(String, usize)> = store
        .stream
        .info_with_subjects(format!("{}{prefix}>", store.prefix))
        .await
        .map_err(|e| KvError::Operation(e.to_string()))?
        .try_collect()
        .await
        .map_err(|e| KvError::Operation(e.to_string()))?;
    let mut keys: Vec<String> = subjects
        .into_iter()
        .filter_map(|(subject, _)| Some(subject.strip_prefix(store.prefix.as_str())?.to_owned()))
        .collect();
    keys.sort_unstable();
    Ok(keys)
}

/// `nats://HOST:PORT[?bucket=NAME]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvAddress {
    /// `nats://HOST:PORT` (several comma-separated servers allowed).
    pub servers: String,
    pub bucket: String,
}

impl FromStr for KvAddress {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let rest = text
            .strip_prefix("nats://")
            .ok_or_else(|| format!("`{text}` is not a nats:// address"))?;
        let (hosts, query) = rest.split_once('?').unwrap_or((rest, ""));
        if hosts.is_empty() {
            return Err(format!("`{text}` names no server"));
        }
        let mut bucket = DEFAULT_BUCKET.to_owned();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("bucket", name)) if valid_bucket(name) => bucket = name.to_owned(),
                Some(("bucket", name)) => {
                    return Err(format!(
                        "`{name}` is not a bucket name (letters, digits, '-' and '_')"
                    ));
                }
                _ => return Err(format!("`{pair}`: the only option is bucket=NAME")),
            }
        }
        let servers = hosts
            .split(',')
            .map(|h| format!("nats://{}", h.trim_start_matches("nats://")))
            .collect::<Vec<_>>()
            .join(",");
        Ok(Self { servers, bucket })
    }
}

impl fmt::Display for KvAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}?bucket={}", self.servers, self.bucket)
    }
}

fn valid_bucket(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("cannot connect to {servers}: {message}")]
    Connect { servers: String, message: String },
    #[error("bucket {bucket}: {message}")]
    Bucket { bucket: String, message: String },
    #[error("{0}")]
    Operation(String),
    #[error(
        "no bucket `{bucket}` at {servers}: nothing was put there yet (`pavilion-control kv put` creates it)"
    )]
    NoBucket { bucket: String, servers: String },
}

/// Connects and opens the bucket, creating it (with [`HISTORY`]) when it does not exist.
pub async fn open(address: &KvAddress) -> Result<Store, KvError> {
    open_with(address, async_nats::ConnectOptions::new(), true).await
}

/// Connects and opens the bucket, which must exist: for reading commands, which must not
/// leave an empty bucket behind a typo in `?bucket=`.
pub async fn open_existing(address: &KvAddress) -> Result<Store, KvError> {
    open_with(address, async_nats::ConnectOptions::new(), false).await
}

/// [`open`], reporting the connection's losses and recoveries into `health`.
pub async fn open_watched(address: &KvAddress, health: SourceHealth) -> Result<Store, KvError> {
    let options = async_nats::ConnectOptions::new().event_callback(move |event| {
        let health = health.clone();
        async move {
            match event {
                async_nats::Event::Disconnected => health.down(&"disconnected from NATS"),
                async_nats::Event::Connected => health.up(),
                _ => {}
            }
        }
    });
    open_with(address, options, true).await
}

async fn open_with(
    address: &KvAddress,
    options: async_nats::ConnectOptions,
    create: bool,
) -> Result<Store, KvError> {
    // No retry here: callers decide (the source retries with backoff, the CLI fails fast).
    // Once connected, the client reconnects by itself.
    let client = options
        .connection_timeout(Duration::from_secs(5))
        .connect(address.servers.as_str());
    let client = tokio::time::timeout(Duration::from_secs(10), client)
        .await
        .map_err(|_| KvError::Connect {
            servers: address.servers.clone(),
            message: "timed out".into(),
        })?
        .map_err(|e| KvError::Connect {
            servers: address.servers.clone(),
            message: e.to_string(),
        })?;
    let jetstream = jetstream::new(client);
    let bucket_error = |e: &dyn std::fmt::Display| KvError::Bucket {
        bucket: address.bucket.clone(),
        message: e.to_string(),
    };
    match jetstream.get_key_value(address.bucket.as_str()).await {
        Ok(store) => return Ok(store),
        Err(error) if !create => {
            // The stream's absence is a JetStream API error ("stream not found"); anything
            // else (JetStream off, no permission) is told as it is.
            let chain =
                std::iter::successors(Some(&error as &dyn std::error::Error), |e| e.source())
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(": ");
            return Err(if chain.contains("not found") {
                KvError::NoBucket {
                    bucket: address.bucket.clone(),
                    servers: address.servers.clone(),
                }
            } else {
                KvError::Bucket {
                    bucket: address.bucket.clone(),
                    message: chain,
                }
            });
        }
        Err(_) => {}
    }
    // The bucket's stream, as async-nats' `create_key_value` would make it. That function
    // first asks for account details in a shape older servers (Debian's 2.9) do not send,
    // so the stream is created directly.
    let stream = jetstream::stream::Config {
        name: format!("KV_{}", address.bucket),
        description: Some(
            "Pavilion Gateway resources (kind.namespace.name) and their status".into(),
        ),
        subjects: vec![format!("$KV.{}.>", address.bucket)],
        max_messages_per_subject: HISTORY,
        max_messages: -1,
        max_bytes: -1,
        max_message_size: -1,
        max_consumers: -1,
        storage: jetstream::stream::StorageType::File,
        num_replicas: 1,
        discard: jetstream::stream::DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        ..Default::default()
    };
    // Another replica may create it at the same moment: then it exists, which is fine.
    let created = jetstream.create_stream(stream).await;
    match jetstream.get_key_value(address.bucket.as_str()).await {
        Ok(store) => Ok(store),
        Err(error) => Err(match created {
            Err(create) => bucket_error(&create),
            Ok(_) => bucket_error(&error),
        }),
    }
}

/// `route.shop.orders`
pub fn resource_key(key: &ResourceKey) -> String {
    format!(
        "{}.{}.{}",
        key.kind.as_str().to_ascii_lowercase(),
        key.namespace,
        key.name
    )
}

/// `status.route.shop.orders`
pub fn status_key(resource_key: &str) -> String {
    format!("{STATUS_PREFIX}{resource_key}")
}

/// The resource a key names. Namespaces hold no dots, so everything after the second dot
/// is the name (names may contain dots).
pub fn parse_key(key: &str) -> Option<ResourceKey> {
    let mut parts = key.splitn(3, '.');
    let kind = parts.next()?;
    let namespace = parts.next()?;
    let name = parts.next()?;
    let kind = Kind::ALL
        .into_iter()
        .find(|k| k.as_str().eq_ignore_ascii_case(kind))?;
    if namespace.is_empty() || name.is_empty() {
        return None;
    }
    Some(ResourceKey {
        kind,
        namespace: namespace.into(),
        name: name.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let a: KvAddress = "nats://127.0.0.1:4222?bucket=cfg".parse().unwrap();
        assert_eq!(
            (a.servers.as_str(), a.bucket.as_str()),
            ("nats://127.0.0.1:4222", "cfg")
        );
        let b: KvAddress = "nats://a:1,b:2".parse().unwrap();
        assert_eq!(
            (b.servers.as_str(), b.bucket.as_str()),
            ("nats://a:1,nats://b:2", DEFAULT_BUCKET)
        );
        for bad in [
            "http://x",
            "nats://",
            "nats://x?bucket=a.b",
            "nats://x?other=1",
        ] {
            assert!(bad.parse::<KvAddress>().is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_round_trip() {
        let key = ResourceKey {
            kind: Kind::RateLimitPolicy,
            namespace: "shop".into(),
            name: "orders.limit".into(),
        };
        assert_eq!(resource_key(&key), "ratelimitpolicy.shop.orders.limit");
        assert_eq!(parse_key("ratelimitpolicy.shop.orders.limit"), Some(key));
        assert_eq!(status_key("route.a.b"), "status.route.a.b");
        for (kind, text) in [
            (Kind::ApiKey, "apikey.shop.mobile-app"),
            (Kind::TokenRevocation, "tokenrevocation.shop.incident-42"),
        ] {
            let key = parse_key(text).unwrap();
            assert_eq!(key.kind, kind);
            assert_eq!(resource_key(&key), text);
        }
        for bad in [
            "route",
            "route.shop",
            "gateway.shop.x",
            "route..x",
            "route.shop.",
        ] {
            assert_eq!(parse_key(bad), None, "{bad}");
        }
    }
}
