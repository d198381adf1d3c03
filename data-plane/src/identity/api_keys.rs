//! API keys issued by the IAM API, without an `ApiKey` resource per key: stored as SHA-256
//! with their namespace, scopes, tenants and expiry, and handed to the edge's API-key
//! authentication as a table every replica reloads whenever the store reports a change of
//! the issued keys (any replica's), and every [`RELOAD`] besides — so a revocation is
//! enforced everywhere at once, and within that bound when the change feed is interrupted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use pavilion_proto as proto;
use serde::{Deserialize, Serialize};

use super::audit::Event;
use super::flows::FlowError;
use super::iam::{Admin, valid_name};
use super::records::{self, Record, VERSION};
use super::store::{Bucket, Store, StoreError};
use super::{Identity, unix_now};
use crate::auth::api_key::{ApiKeys, IssuedKeys, scope_bits};

/// How often every replica reloads the issued keys regardless of the store's change feed.
pub const RELOAD: Duration = Duration::from_secs(10);

/// An issued key (`{id}` in the api-keys bucket).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IssuedKey {
    pub v: u32,
    pub id: String,
    /// The routes of this namespace accept it.
    pub namespace: String,
    /// SHA-256 (hex) of the key.
    pub sha256: String,
    pub scopes: Vec<String>,
    #[serde(default)]
    pub tenants: BTreeMap<String, Vec<String>>,
    /// Unix seconds; 0: never.
    #[serde(default)]
    pub expires_at: i64,
    pub created_by: String,
    pub created_at: i64,
}

impl Record for IssuedKey {
    const BUCKET: Bucket = Bucket::ApiKeys;
    fn version(&self) -> u32 {
        self.v
    }
}

#[derive(Debug, Deserialize)]
pub struct NewKey {
    pub namespace: String,
    pub scopes: Vec<String>,
    #[serde(default)]
    pub tenants: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub expires_at: i64,
}

/// What creation shows, once.
#[derive(Debug, Serialize)]
pub struct CreatedKey {
    pub id: String,
    pub key: String,
}

/// A key as listed (never its hash).
#[derive(Debug, Serialize)]
pub struct KeyView {
    pub id: String,
    pub namespace: String,
    pub scopes: Vec<String>,
    pub tenants: BTreeMap<String, Vec<String>>,
    pub expires_at: i64,
    pub created_by: String,
}

fn to_proto(key: &IssuedKey) -> Option<proto::ApiKey> {
    let hash: Vec<u8> = (0..key.sha256.len() / 2)
        .map(|i| u8::from_str_radix(key.sha256.get(2 * i..2 * i + 2)?, 16).ok())
        .collect::<Option<_>>()?;
    Some(proto::ApiKey {
        namespace: key.namespace.clone(),
        id: key.id.clone(),
        description: String::new(),
        sha256: hash,
        scopes: key.scopes.clone(),
        expires_at: key.expires_at,
        tenants: key
            .tenants
            .iter()
            .map(|(tenant, roles)| proto::TenantRoles {
                tenant: tenant.clone(),
                roles: roles.clone(),
            })
            .collect(),
        roles: Vec::new(),
    })
}

/// Reads every issued key and swaps the table the edge reads.
pub async fn reload(store: &dyn Store, issued: &IssuedKeys) -> Result<(), StoreError> {
    let mut keys = Vec::new();
    for name in store.keys(Bucket::ApiKeys, None, 1_000_000).await? {
        if let Ok(Some(key)) = records::get::<IssuedKey>(store, &name).await
            && let Some(key) = to_proto(&key.record)
        {
            keys.push(key);
        }
    }
    match ApiKeys::new(&keys) {
        Ok(table) => issued.replace(table),
        Err(error) => {
            tracing::warn!(%error, "issued API keys could not be loaded; the last table stays")
        }
    }
    Ok(())
}

/// Reloads `issued` on every change of the issued keys (and every [`RELOAD`]), for as long
/// as it lives.
pub fn watch(issued: &Arc<IssuedKeys>, store: Arc<dyn Store>) {
    let weak = Arc::downgrade(issued);
    tokio::spawn(async move {
        let nudges = super::store::nudges(store.clone(), Bucket::ApiKeys, RELOAD);
        let mut nudges = std::pin::pin!(nudges);
        while futures::StreamExt::next(&mut nudges).await.is_some() {
            let Some(issued) = weak.upgrade() else {
                return;
            };
            if let Err(error) = reload(&*store, &issued).await {
                tracing::warn!(%error, "issued API keys could not be reloaded; the last table stays");
            }
        }
    });
}

impl Identity {
    pub async fn create_api_key(
        &self,
        admin: &Admin,
        new: NewKey,
    ) -> Result<CreatedKey, FlowError> {
        admin.require_platform()?;
        if !valid_name(&new.namespace) {
            return Err(FlowError::InvalidRequest(format!(
                "namespace `{}` is no name",
                new.namespace
            )));
        }
        scope_bits(&new.scopes).map_err(FlowError::InvalidRequest)?;
        if new.scopes.is_empty() {
            return Err(FlowError::InvalidRequest(
                "name at least one scope: read, write, admin".into(),
            ));
        }
        let id = format!("key-{}", uuid::Uuid::now_v7().simple());
        let key = format!("pvk_{}", super::tokens::random(32));
        let mut scopes = new.scopes;
        scopes.sort();
        scopes.dedup();
        let record = IssuedKey {
            v: VERSION,
            id: id.clone(),
            namespace: new.namespace,
            sha256: super::tokens::digest(&key),
            scopes,
            tenants: new.tenants,
            expires_at: new.expires_at,
            created_by: admin.id.clone(),
            created_at: unix_now(),
        };
        records::create(&*self.store, &id, &record).await?;
        let _ = reload(&*self.store, &self.issued_keys).await;
        self.audit(Event {
            actor: admin.id.clone(),
            action: "api_key.created",
            target: id.clone(),
            ..Event::default()
        })
        .await;
        Ok(CreatedKey { id, key })
    }

    pub async fn list_api_keys(&self, admin: &Admin) -> Result<Vec<KeyView>, FlowError> {
        admin.require_platform()?;
        let mut keys = Vec::new();
        for name in self.store.keys(Bucket::ApiKeys, None, 1_000_000).await? {
            if let Some(key) = records::get::<IssuedKey>(&*self.store, &name).await? {
                let key = key.record;
                keys.push(KeyView {
                    id: key.id,
                    namespace: key.namespace,
                    scopes: key.scopes,
                    tenants: key.tenants,
                    expires_at: key.expires_at,
                    created_by: key.created_by,
                });
            }
        }
        Ok(keys)
    }

    /// Revokes a key: refused by every replica at once through the store's change feed
    /// (within [`RELOAD`] while it is interrupted; this one at once either way).
    pub async fn revoke_api_key(&self, admin: &Admin, id: &str) -> Result<(), FlowError> {
        admin.require_platform()?;
        let missing = || FlowError::NotFound(format!("no API key {id}"));
        if !super::store::valid_key(id) {
            return Err(missing());
        }
        let key = records::get::<IssuedKey>(&*self.store, id)
            .await?
            .ok_or_else(missing)?;
        self.store.delete(Bucket::ApiKeys, id, key.revision).await?;
        let _ = reload(&*self.store, &self.issued_keys).await;
        self.audit(Event {
            actor: admin.id.clone(),
            action: "api_key.revoked",
            target: id.to_owned(),
            ..Event::default()
        })
        .await;
        Ok(())
    }

    /// The table of issued keys the edge's API-key authentication reads.
    pub fn issued_keys(&self) -> Arc<IssuedKeys> {
        self.issued_keys.clone()
    }
}
