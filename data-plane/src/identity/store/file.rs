//! The identity store in one redb file, for a single node and `scripts/demo`: a table per
//! [`Bucket`] of `key → (revision, value)`, revisions from one counter so that a key
//! deleted and created again never repeats an old revision (a stale compare-and-set cannot
//! succeed by accident). redb is synchronous: every call runs on the blocking pool, and
//! its single writer makes each compare-and-set atomic.

use std::path::Path;
use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Bucket, Entry, Store, StoreError};

pub struct FileStore {
    db: Arc<Database>,
    /// Which bucket a write just changed (one process owns the file: its writes are all
    /// the changes there are).
    changed: tokio::sync::broadcast::Sender<Bucket>,
}

type Table = TableDefinition<'static, &'static str, (u64, &'static [u8])>;

const META: TableDefinition<'static, &'static str, u64> = TableDefinition::new("meta");
const REVISION: &str = "revision";

fn table(bucket: Bucket) -> Table {
    TableDefinition::new(bucket.name())
}

fn failed(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl FileStore {
    /// Opens (or creates) the database file at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let db = Database::create(path)
            .map_err(|e| StoreError::Unavailable(format!("{}: {e}", path.display())))?;
        Ok(Self {
            db: Arc::new(db),
            changed: tokio::sync::broadcast::channel(64).0,
        })
    }

    /// Runs `work` on the blocking pool with the database.
    fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, StoreError>> {
        let db = self.db.clone();
        async move {
            tokio::task::spawn_blocking(move || work(&db))
                .await
                .map_err(failed)?
        }
        .boxed()
    }

    /// Writes `value` at `key` when `expect(current revision)` holds.
    fn write(
        &self,
        bucket: Bucket,
        key: &str,
        value: Option<Vec<u8>>,
        expect: impl FnOnce(Option<u64>) -> Result<(), StoreError> + Send + 'static,
    ) -> BoxFuture<'static, Result<u64, StoreError>> {
        let key = key.to_owned();
        let changed = self.changed.clone();
        self.run(move |db| {
            let txn = db.begin_write().map_err(failed)?;
            let revision = {
                let mut data = txn.open_table(table(bucket)).map_err(failed)?;
                let current = data.get(key.as_str()).map_err(failed)?.map(|v| v.value().0);
                expect(current)?;
                let mut meta = txn.open_table(META).map_err(failed)?;
                let revision = meta.get(REVISION).map_err(failed)?.map_or(0, |v| v.value()) + 1;
                meta.insert(REVISION, revision).map_err(failed)?;
                match &value {
                    Some(value) => {
                        data.insert(key.as_str(), (revision, value.as_slice()))
                            .map_err(failed)?;
                    }
                    None => {
                        data.remove(key.as_str()).map_err(failed)?;
                    }
                }
                revision
            };
            txn.commit().map_err(failed)?;
            // Nobody following is fine.
            let _ = changed.send(bucket);
            Ok(revision)
        })
    }
}

impl Store for FileStore {
    fn get<'a>(
        &'a self,
        bucket: Bucket,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Entry>, StoreError>> {
        let key = key.to_owned();
        self.run(move |db| {
            let txn = db.begin_read().map_err(failed)?;
            let data = match txn.open_table(table(bucket)) {
                Ok(data) => data,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(failed(e)),
            };
            Ok(data.get(key.as_str()).map_err(failed)?.map(|v| {
                let (revision, value) = v.value();
                Entry {
                    value: value.to_vec(),
                    revision,
                }
            }))
        })
    }

    fn create<'a>(
        &'a self,
        bucket: Bucket,
        key: &'a str,
        value: Vec<u8>,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        self.write(bucket, key, Some(value), |current| match current {
            None => Ok(()),
            Some(_) => Err(StoreError::Exists),
        })
    }

    fn update<'a>(
        &'a self,
        bucket: Bucket,
        key: &'a str,
        value: Vec<u8>,
        revision: u64,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        self.write(bucket, key, Some(value), move |current| {
            if current == Some(revision) {
                Ok(())
            } else {
                Err(StoreError::Conflict)
            }
        })
    }

    fn delete<'a>(
        &'a self,
        bucket: Bucket,
        key: &'a str,
        revision: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.write(bucket, key, None, move |current| {
            if current == Some(revision) {
                Ok(())
            } else {
                Err(StoreError::Conflict)
            }
        })
        .map(|r| r.map(drop))
        .boxed()
    }

    fn keys<'a>(
        &'a self,
        bucket: Bucket,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        let after = after.map(str::to_owned);
        self.run(move |db| {
            let txn = db.begin_read().map_err(failed)?;
            let data = match txn.open_table(table(bucket)) {
                Ok(data) => data,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(failed(e)),
            };
            let range = match &after {
                Some(after) => data.range::<&str>((
                    std::ops::Bound::Excluded(after.as_str()),
                    std::ops::Bound::Unbounded,
                )),
                None => data.range::<&str>(..),
            }
            .map_err(failed)?;
            let mut keys = Vec::new();
            for item in range.take(limit) {
                let (key, _) = item.map_err(failed)?;
                keys.push(key.value().to_owned());
            }
            Ok(keys)
        })
    }

    fn changes(
        &self,
        bucket: Bucket,
    ) -> BoxFuture<'_, Result<futures::stream::BoxStream<'static, ()>, StoreError>> {
        let receiver = self.changed.subscribe();
        let feed = futures::stream::unfold(receiver, move |mut receiver| async move {
            loop {
                match receiver.recv().await {
                    Ok(changed) if changed == bucket => return Some(((), receiver)),
                    Ok(_) => continue,
                    // Missed some: one nudge covers them.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        return Some(((), receiver));
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        async move { Ok(futures::StreamExt::boxed(feed)) }.boxed()
    }
}
