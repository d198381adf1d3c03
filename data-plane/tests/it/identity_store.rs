//! One test suite for both identity stores: NATS JetStream KV on a real `nats-server -js`
//! and the embedded redb file — the same compare-and-set semantics, the same paging, the
//! same change feed.

use std::sync::Arc;

use pavilion_data::identity::store::file::FileStore;
use pavilion_data::identity::store::kv::KvStore;
use pavilion_data::identity::store::{Bucket, Store, StoreError};
use pavilion_tests::nats::NatsServer;

async fn the_store_contract(store: Arc<dyn Store>) {
    // Absent, created once.
    assert!(store.get(Bucket::Users, "u1").await.unwrap().is_none());
    let first = store
        .create(Bucket::Users, "u1", b"one".to_vec())
        .await
        .unwrap();
    assert!(matches!(
        store.create(Bucket::Users, "u1", b"again".to_vec()).await,
        Err(StoreError::Exists)
    ));
    let entry = store.get(Bucket::Users, "u1").await.unwrap().unwrap();
    assert_eq!(
        (entry.value.as_slice(), entry.revision),
        (&b"one"[..], first)
    );
    // Buckets are separate.
    assert!(store.get(Bucket::Sessions, "u1").await.unwrap().is_none());

    // Compare-and-set: the revision read, or a conflict.
    let second = store
        .update(Bucket::Users, "u1", b"two".to_vec(), first)
        .await
        .unwrap();
    assert!(second > first);
    assert!(matches!(
        store
            .update(Bucket::Users, "u1", b"stale".to_vec(), first)
            .await,
        Err(StoreError::Conflict)
    ));
    assert!(matches!(
        store
            .update(Bucket::Users, "nobody", b"x".to_vec(), 1)
            .await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(
        store.get(Bucket::Users, "u1").await.unwrap().unwrap().value,
        b"two"
    );

    // Deletion too; a key created again never takes an old revision.
    assert!(matches!(
        store.delete(Bucket::Users, "u1", first).await,
        Err(StoreError::Conflict)
    ));
    store.delete(Bucket::Users, "u1", second).await.unwrap();
    assert!(store.get(Bucket::Users, "u1").await.unwrap().is_none());
    let third = store
        .create(Bucket::Users, "u1", b"three".to_vec())
        .await
        .unwrap();
    assert!(third > second);
    assert!(matches!(
        store
            .update(Bucket::Users, "u1", b"stale".to_vec(), second)
            .await,
        Err(StoreError::Conflict)
    ));

    // Ten writers from the same revision: exactly one wins.
    let writers: Vec<_> = (0..10)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .update(Bucket::Users, "u1", format!("w{i}").into_bytes(), third)
                    .await
            })
        })
        .collect();
    let mut wins = 0;
    for writer in writers {
        match writer.await.unwrap() {
            Ok(_) => wins += 1,
            Err(StoreError::Conflict) => {}
            Err(other) => panic!("{other}"),
        }
    }
    assert_eq!(wins, 1);

    // Keys in order, paged.
    for key in ["k3", "k1", "k5", "k2", "k4"] {
        store
            .create(Bucket::Sessions, key, b"s".to_vec())
            .await
            .unwrap();
    }
    assert_eq!(
        store.keys(Bucket::Sessions, None, 2).await.unwrap(),
        ["k1", "k2"]
    );
    assert_eq!(
        store.keys(Bucket::Sessions, Some("k2"), 2).await.unwrap(),
        ["k3", "k4"]
    );
    assert_eq!(
        store.keys(Bucket::Sessions, Some("k4"), 2).await.unwrap(),
        ["k5"]
    );
    let deleted = store.get(Bucket::Sessions, "k3").await.unwrap().unwrap();
    store
        .delete(Bucket::Sessions, "k3", deleted.revision)
        .await
        .unwrap();
    assert_eq!(
        store.keys(Bucket::Sessions, None, 10).await.unwrap(),
        ["k1", "k2", "k4", "k5"],
        "deleted keys are not listed"
    );
    assert!(
        store
            .keys(Bucket::Resets, None, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // The change feed: a nudge for each change of its bucket — create, update, delete —
    // and none for another bucket's.
    use futures::{FutureExt, StreamExt};
    let mut feed = store.changes(Bucket::Rbac).await.unwrap();
    async fn next(feed: &mut futures::stream::BoxStream<'static, ()>) -> Option<()> {
        tokio::time::timeout(std::time::Duration::from_secs(5), feed.next())
            .await
            .expect("a nudge within 5 s")
    }
    store
        .create(Bucket::Users, "elsewhere", b"x".to_vec())
        .await
        .unwrap();
    let created = store
        .create(Bucket::Rbac, "role.a", b"1".to_vec())
        .await
        .unwrap();
    assert_eq!(next(&mut feed).await, Some(()), "a nudge for the create");
    assert!(
        feed.next().now_or_never().is_none(),
        "the other bucket's write nudged nobody here"
    );
    let updated = store
        .update(Bucket::Rbac, "role.a", b"2".to_vec(), created)
        .await
        .unwrap();
    assert_eq!(next(&mut feed).await, Some(()), "a nudge for the update");
    store.delete(Bucket::Rbac, "role.a", updated).await.unwrap();
    assert_eq!(next(&mut feed).await, Some(()), "a nudge for the delete");
}

#[tokio::test]
async fn nats_kv_keeps_the_contract() {
    let nats = NatsServer::start();
    let store = KvStore::connect(&nats.url(), "test-identity")
        .await
        .unwrap();
    the_store_contract(Arc::new(store)).await;
}

#[tokio::test]
async fn the_file_store_keeps_the_contract_and_its_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("identity").join("store.redb");
    let store = Arc::new(FileStore::open(&path).unwrap());
    the_store_contract(store.clone()).await;
    let before = store.get(Bucket::Users, "u1").await.unwrap().unwrap();
    drop(store);
    let reopened = FileStore::open(&path).unwrap();
    assert_eq!(
        reopened.get(Bucket::Users, "u1").await.unwrap(),
        Some(before),
        "kept across a restart"
    );
}
