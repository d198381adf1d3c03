//! The identity store on NATS JetStream KV: one bucket per [`Bucket`] (`{prefix}-users`,
//! …), writes as compare-and-set on the key's last revision — the server decides which of
//! two racing replicas wins.

use std::collections::HashMap;

use async_nats::jetstream::{self, kv};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};

use super::{Bucket, Entry, Store, StoreError};

pub struct KvStore {
    buckets: HashMap<Bucket, kv::Store>,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl KvStore {
    /// Connects to `servers` (`nats://host:port`, comma-separated) and opens (creating when
    /// missing) the buckets `{prefix}-{bucket}`.
    pub async fn connect(servers: &str, prefix: &str) -> Result<Self, StoreError> {
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(servers)
            .await
            .map_err(|e| StoreError::Unavailable(format!("NATS at {servers}: {e}")))?;
        let jetstream = jetstream::new(client);
        let mut buckets = HashMap::new();
        for bucket in Bucket::ALL {
            let name = format!("{prefix}-{}", bucket.name());
            buckets.insert(bucket, open(&jetstream, &name).await?);
        }
        Ok(Self { buckets })
    }

    fn bucket(&self, bucket: Bucket) -> &kv::Store {
        &self.buckets[&bucket]
    }
}

/// Opens bucket `name`, creating its stream when missing (directly: async-nats'
/// `create_key_value` first asks for account details in a shape older servers, such as
/// Debian's 2.9, do not send).
async fn open(jetstream: &jetstream::Context, name: &str) -> Result<kv::Store, StoreError> {
    if let Ok(store) = jetstream.get_key_value(name).await {
        return Ok(store);
    }
    let stream = jetstream::stream::Config {
        name: format!("KV_{name}"),
        description: Some("Pavilion Gateway identity records".into()),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
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
    jetstream
        .get_key_value(name)
        .await
        .map_err(|e| match created {
            Err(create) => StoreError::Unavailable(format!("bucket {name}: {create}")),
            Ok(_) => StoreError::Unavailable(format!("bucket {name}: {e}")),
        })
}

impl Store for KvStore {
    fn get<'a>(
        &'a self,
        bucket: Bucket,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Entry>, StoreError>> {
        async move {
            let entry = self.bucket(bucket).entry(key).await.map_err(unavailable)?;
            Ok(entry
                .filter(|e| e.operation == kv::Operation::Put)
                .map(|e| Entry {
                    value: e.value.to_vec(),
                    revision: e.revision,
                }))
        }
        .boxed()
    }

    fn create<'a>(
        &'a self,
        bucket: Bucket,
        key: &'a str,
        value: Vec<u8>,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        async move {
            match self.bucket(bucket).create(key, value.into()).await {
                Ok(revision) => Ok(revision),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Err(StoreError::Exists),
                Err(e) => Err(unavailable(e)),
            }
        }
        .boxed()
    }

    fn update<'a>(
        &'a self,
        bucket: Bucket,
        key: &'a str,
        value: Vec<u8>,
        revision: u64,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        async move {
            match self
                .bucket(bucket)
                .update(key, value.into(), revision)
                .await
            {
                Ok(revision) => Ok(revision),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    Err(StoreError::Conflict)
                }
                Err(e) => Err(unavailable(e)),
            }
        }
        .boxed()
    }

    fn delete<'a>(
        &'a self,
        bucket: Bucket,
        key: &'a str,
        revision: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let store = self.bucket(bucket);
            match store.delete_expect_revision(key, Some(revision)).await {
                Ok(()) => Ok(()),
                // The server refuses a stale revision as a publish error ("wrong last
                // sequence"): look again to tell a conflict from an outage.
                Err(error) => match store.entry(key).await {
                    Ok(entry) if entry.as_ref().is_none_or(|e| e.revision != revision) => {
                        Err(StoreError::Conflict)
                    }
                    _ => Err(unavailable(error)),
                },
            }
        }
        .boxed()
    }

    fn keys<'a>(
        &'a self,
        bucket: Bucket,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        async move {
            // KV has no ordered range reads: every key is listed, then paged here.
            let mut keys: Vec<String> = match self.bucket(bucket).keys().await {
                Ok(keys) => keys.try_collect().await.map_err(unavailable)?,
                Err(e) => return Err(unavailable(e)),
            };
            keys.sort_unstable();
            Ok(keys
                .into_iter()
                .filter(|k| after.is_none_or(|a| k.as_str() > a))
                .take(limit)
                .collect())
        }
        .boxed()
    }

    fn changes(
        &self,
        bucket: Bucket,
    ) -> BoxFuture<'_, Result<futures::stream::BoxStream<'static, ()>, StoreError>> {
        async move {
            let watch = self.bucket(bucket).watch_all().await.map_err(unavailable)?;
            // An error ends the feed: the caller opens it again.
            Ok(watch
                .take_while(|entry| std::future::ready(entry.is_ok()))
                .map(|_| ())
                .boxed())
        }
        .boxed()
    }
}
