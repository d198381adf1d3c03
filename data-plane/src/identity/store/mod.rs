//! Where the identity service keeps its state: one [`Store`] trait over named buckets of
//! versioned JSON records, with compare-and-set on revisions wherever two replicas could
//! race (a refresh-token rotation, a signing-key rotation, an e-mail claimed twice). Two
//! implementations pass the same test suite (`tests/it/identity_store.rs`): NATS JetStream KV
//! ([`kv::KvStore`], production: every replica sees the same state) and an embedded redb
//! file ([`file::FileStore`], a single node and `scripts/demo`).

pub mod file;
pub mod kv;

use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use futures::stream::{BoxStream, Stream, StreamExt};

/// The buckets, one per kind of record (`docs/identity.md` lists their keys).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bucket {
    /// `{user id}` → user (e-mail, password hash, status).
    Users,
    /// `{sha-256 of the normalised e-mail}` → the user id owning it.
    Emails,
    /// `{family id}` → a refresh-token family (one sign-in session).
    Sessions,
    /// `{sha-256 of the token}` → a one-time password-reset token.
    Resets,
    /// `current` and `{kid}` → signing keys, private halves encrypted.
    Keys,
    /// `{user id}` → the user's TOTP enrolment (secret sealed) and recovery-code digests.
    Mfa,
    /// `{seq:020}` → an audit record of the hash chain; `head` → the last one.
    Audit,
    /// `right.{name}` and `role.{name}` → the authorization catalogue.
    Rbac,
    /// `{sha-256 of the state}` → an OpenID login between start and callback.
    Oidc,
    /// `{sha-256 of provider|subject}` → the account an OpenID identity is linked to.
    Identities,
    /// `{id}` → a service account (client credentials; the secret as its SHA-256).
    ServiceAccounts,
    /// `{id}` → an API key issued by the IAM API (the key as its SHA-256).
    ApiKeys,
}

impl Bucket {
    pub const ALL: [Bucket; 12] = [
        Bucket::Users,
        Bucket::Emails,
        Bucket::Sessions,
        Bucket::Resets,
        Bucket::Keys,
        Bucket::Mfa,
        Bucket::Audit,
        Bucket::Rbac,
        Bucket::Oidc,
        Bucket::Identities,
        Bucket::ServiceAccounts,
        Bucket::ApiKeys,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Bucket::Users => "users",
            Bucket::Emails => "emails",
            Bucket::Sessions => "sessions",
            Bucket::Resets => "resets",
            Bucket::Keys => "keys",
            Bucket::Mfa => "mfa",
            Bucket::Audit => "audit",
            Bucket::Rbac => "rbac",
            Bucket::Oidc => "oidc",
            Bucket::Identities => "identities",
            Bucket::ServiceAccounts => "service-accounts",
            Bucket::ApiKeys => "api-keys",
        }
    }
}

/// A stored value and the revision it was written at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub value: Vec<u8>,
    pub revision: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `create` of a key that holds a value.
    #[error("the key exists")]
    Exists,
    /// A write expecting a revision the key is no longer at (or a key that is gone).
    #[error("the record changed since it was read")]
    Conflict,
    #[error("the identity store is unavailable: {0}")]
    Unavailable(String),
}

/// Keys are made of `[A-Za-z0-9_=.-]` (NATS KV's alphabet): ids, hex digests, `current`.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && !key.starts_with('.')
        && !key.ends_with('.')
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'=' | b'.'))
}

pub trait Store: Send + Sync {
    fn get<'a>(
        &'a self,
        bucket: Bucket,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Entry>, StoreError>>;

    /// Writes `value` under a key that holds nothing; its revision.
    fn create<'a>(
        &'a self,
        bucket: Bucket,
        key: &'a str,
        value: Vec<u8>,
    ) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// Writes `value` if the key is still at `revision`; the new revision.
    fn update<'a>(
        &'a self,
        bucket: Bucket,
        key: &'a str,
        value: Vec<u8>,
        revision: u64,
    ) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// Removes the key if it is still at `revision`.
    fn delete<'a>(
        &'a self,
        bucket: Bucket,
        key: &'a str,
        revision: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// The keys of `bucket` in ascending order, starting after `after`, at most `limit`.
    fn keys<'a>(
        &'a self,
        bucket: Bucket,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<String>, StoreError>>;

    /// An item whenever something in `bucket` changes — here, or on another replica for a
    /// shared store: a nudge to reload, not the change itself. It ends when the store stops
    /// watching (a lost connection); see [`nudges`].
    fn changes(&self, bucket: Bucket) -> BoxFuture<'_, Result<BoxStream<'static, ()>, StoreError>>;
}

/// What a copy of a bucket (the role catalogue, the issued API keys) reloads on: every
/// change of `bucket` as the store reports it, and every `floor` besides — the bound when
/// the change feed is down, which is then opened again. The first item comes at once.
pub fn nudges(
    store: std::sync::Arc<dyn Store>,
    bucket: Bucket,
    floor: Duration,
) -> impl Stream<Item = ()> {
    struct State {
        store: std::sync::Arc<dyn Store>,
        feed: Option<BoxStream<'static, ()>>,
        ticks: tokio::time::Interval,
    }
    let mut ticks = tokio::time::interval(floor);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = State {
        store,
        feed: None,
        ticks,
    };
    futures::stream::unfold(state, move |mut state| async move {
        if state.feed.is_none() {
            match state.store.changes(bucket).await {
                Ok(feed) => state.feed = Some(feed),
                Err(error) => {
                    tracing::warn!(bucket = bucket.name(), %error, "cannot follow the store's changes; reloading every {floor:?}")
                }
            }
        }
        match &mut state.feed {
            Some(feed) => tokio::select! {
                nudge = feed.next() => {
                    if nudge.is_none() {
                        state.feed = None;
                    }
                }
                _ = state.ticks.tick() => {}
            },
            None => {
                state.ticks.tick().await;
            }
        }
        // A burst of changes is one reload.
        if let Some(feed) = &mut state.feed {
            while let Some(Some(())) = feed.next().now_or_never() {}
        }
        Some(((), state))
    })
}
