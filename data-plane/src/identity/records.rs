//! The records the identity store holds, as versioned JSON. Migration rule: every record
//! carries `v`; a reader accepts its own version and every older one (fields added later
//! have defaults, unknown fields are ignored) and writes back its own, so replicas of two
//! adjacent releases can share a store during a rolling upgrade. A record with a newer `v`
//! than the reader knows is refused rather than rewritten without the fields it cannot see.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::store::{Bucket, Entry, Store, StoreError};

/// The record version this build writes.
pub const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("record {key} in {bucket} is unreadable: {why}")]
    Unreadable {
        bucket: &'static str,
        key: String,
        why: String,
    },
}

/// A record type and its bucket.
pub trait Record: Serialize + DeserializeOwned {
    const BUCKET: Bucket;
    fn version(&self) -> u32;
}

/// A record as read, with the revision to write it back at.
#[derive(Debug)]
pub struct Versioned<T> {
    pub record: T,
    pub revision: u64,
}

fn decode<T: Record>(key: &str, entry: Entry) -> Result<Versioned<T>, RecordError> {
    let unreadable = |why: String| RecordError::Unreadable {
        bucket: T::BUCKET.name(),
        key: key.to_owned(),
        why,
    };
    let record: T = serde_json::from_slice(&entry.value).map_err(|e| unreadable(e.to_string()))?;
    if record.version() > VERSION {
        return Err(unreadable(format!(
            "version {} is newer than this build's {VERSION}",
            record.version()
        )));
    }
    Ok(Versioned {
        record,
        revision: entry.revision,
    })
}

fn encode<T: Record>(record: &T) -> Vec<u8> {
    serde_json::to_vec(record).expect("records always serialize")
}

pub async fn get<T: Record>(
    store: &dyn Store,
    key: &str,
) -> Result<Option<Versioned<T>>, RecordError> {
    match store.get(T::BUCKET, key).await? {
        Some(entry) => decode(key, entry).map(Some),
        None => Ok(None),
    }
}

pub async fn create<T: Record>(
    store: &dyn Store,
    key: &str,
    record: &T,
) -> Result<u64, StoreError> {
    store.create(T::BUCKET, key, encode(record)).await
}

pub async fn update<T: Record>(
    store: &dyn Store,
    key: &str,
    record: &T,
    revision: u64,
) -> Result<u64, StoreError> {
    store.update(T::BUCKET, key, encode(record), revision).await
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UserStatus {
    #[default]
    Active,
    Disabled,
}

/// An account.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct User {
    pub v: u32,
    pub id: String,
    /// As given at sign-up (the index key is of its normalised form).
    pub email: String,
    #[serde(default)]
    pub email_verified: bool,
    /// The Argon2id PHC string; `None` for accounts that only sign in through OIDC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default)]
    pub status: UserStatus,
    /// Unix seconds.
    pub created_at: i64,
    /// Sessions started before this (Unix milliseconds) are revoked: global sign-out.
    #[serde(default)]
    pub sessions_after_ms: i64,
    /// Platform roles (the access token's `roles`).
    #[serde(default)]
    pub roles: Vec<String>,
    /// Tenant → roles (the access token's `tenants`).
    #[serde(default)]
    pub tenants: BTreeMap<String, Vec<String>>,
    /// Wrong passwords in a row since the last right one.
    #[serde(default)]
    pub failed_signins: u32,
    /// Locked after too many wrong passwords in a row: sign-in is refused (with the same
    /// answer as a wrong password) until an administrator unlocks it or a reset by mail.
    #[serde(default)]
    pub locked: bool,
}

impl User {
    /// A new active account with a fresh id.
    pub fn new(email: &str, password: Option<String>, email_verified: bool, now: i64) -> Self {
        Self {
            v: VERSION,
            id: uuid::Uuid::now_v7().simple().to_string(),
            email: email.to_owned(),
            email_verified,
            password,
            status: UserStatus::Active,
            created_at: now,
            sessions_after_ms: 0,
            roles: Vec::new(),
            tenants: BTreeMap::new(),
            failed_signins: 0,
            locked: false,
        }
    }
}

impl Record for User {
    const BUCKET: Bucket = Bucket::Users;
    fn version(&self) -> u32 {
        self.v
    }
}

/// Who owns an e-mail address (the key is the SHA-256 of its normalised form).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EmailOwner {
    pub v: u32,
    pub user: String,
}

impl Record for EmailOwner {
    const BUCKET: Bucket = Bucket::Emails;
    fn version(&self) -> u32 {
        self.v
    }
}

/// A refresh-token family: one sign-in session, whose refresh token changes at every use.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Family {
    pub v: u32,
    pub user: String,
    /// SHA-256 (hex) of the one refresh token of the family that may be used now.
    pub current: String,
    /// Digests of the last tokens it replaced: presenting one of them is reuse. Anything
    /// else is merely invalid — the family id is no secret (it is the tokens' `sid`), so a
    /// made-up token must not be able to revoke a session.
    #[serde(default)]
    pub replaced: Vec<String>,
    /// Rotations so far.
    pub generation: u32,
    /// When the session started (Unix milliseconds: a sign-out everywhere and a sign-in in
    /// the same second are told apart).
    pub started_ms: i64,
    /// The session ends then, whatever the rotations (Unix seconds).
    pub expires_at: i64,
    /// Why the family was revoked (sign-out, reuse detected); `None` while it lives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<String>,
}

impl Record for Family {
    const BUCKET: Bucket = Bucket::Sessions;
    fn version(&self) -> u32 {
        self.v
    }
}

/// A one-time password-reset token (the key is the SHA-256 of the token).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Reset {
    pub v: u32,
    pub user: String,
    pub expires_at: i64,
}

impl Record for Reset {
    const BUCKET: Bucket = Bucket::Resets;
    fn version(&self) -> u32 {
        self.v
    }
}

/// A signing key (`{kid}`): its public half as a JWK, its private half sealed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SigningKey {
    pub v: u32,
    pub kid: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Tokens are signed with it until then (Unix seconds)…
    pub retires_at: i64,
    /// …and its public half is published until its last token has expired.
    pub expires_at: i64,
    /// The P-256 point, base64url (RFC 7518 §6.2.1).
    pub x: String,
    pub y: String,
    /// The PKCS#8 private key, sealed with the store key (AES-256-GCM), base64url.
    pub sealed: String,
}

impl Record for SigningKey {
    const BUCKET: Bucket = Bucket::Keys;
    fn version(&self) -> u32 {
        self.v
    }
}

/// `current` in the keys bucket: which key signs now.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CurrentKey {
    pub v: u32,
    pub kid: String,
}

impl Record for CurrentKey {
    const BUCKET: Bucket = Bucket::Keys;
    fn version(&self) -> u32 {
        self.v
    }
}

/// A user's TOTP enrolment (`{user id}` in the mfa bucket).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Mfa {
    pub v: u32,
    /// The TOTP secret, sealed with the store key (it must be read back to check codes, so
    /// it cannot be hashed), base64url.
    pub secret: String,
    /// Set when the first code was confirmed; until then sign-in does not ask for one.
    pub confirmed: bool,
    /// The last TOTP step accepted: a code works once (RFC 6238 §5.2).
    #[serde(default)]
    pub last_step: u64,
    /// SHA-256 (hex) of the unused recovery codes.
    #[serde(default)]
    pub recovery: Vec<String>,
}

impl Record for Mfa {
    const BUCKET: Bucket = Bucket::Mfa;
    fn version(&self) -> u32 {
        self.v
    }
}

/// A right (`right.{name}` in the rbac bucket): something a role may allow, e.g.
/// `orders.read`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Right {
    pub v: u32,
    pub name: String,
    #[serde(default)]
    pub description: String,
}

impl Record for Right {
    const BUCKET: Bucket = Bucket::Rbac;
    fn version(&self) -> u32 {
        self.v
    }
}

/// A role (`role.{name}` in the rbac bucket): a set of rights, assigned to users per tenant.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Role {
    pub v: u32,
    pub name: String,
    pub rights: Vec<String>,
    #[serde(default)]
    pub description: String,
}

impl Record for Role {
    const BUCKET: Bucket = Bucket::Rbac;
    fn version(&self) -> u32 {
        self.v
    }
}

/// A service account (`{id}` in the service-accounts bucket): a machine client that gets
/// access tokens by the client-credentials grant.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServiceAccount {
    pub v: u32,
    pub id: String,
    pub name: String,
    /// SHA-256 (hex) of the current secret (256 random bits: a fast hash is enough).
    pub secret: String,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub tenants: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub disabled: bool,
    pub created_at: i64,
}

impl Record for ServiceAccount {
    const BUCKET: Bucket = Bucket::ServiceAccounts;
    fn version(&self) -> u32 {
        self.v
    }
}
