//! The role catalogue as the request path reads it: role → rights, a copy of the store's
//! `role.*` records reloaded whenever the store reports a change of them (any replica's),
//! and every [`REFRESH`] besides; swapped whole so a request reads one consistent version
//! without a lock.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use super::records::{self, Role};
use super::store::{Bucket, Store, StoreError};

/// How often every replica reloads the catalogue regardless of the store's change feed: a
/// role's change reaches all of them at once through the feed, and within this when the
/// feed is interrupted.
pub const REFRESH: Duration = Duration::from_secs(10);

/// Role name → the rights it grants.
type Roles = HashMap<Box<str>, Box<[Box<str>]>>;

#[derive(Default)]
pub struct Catalogue {
    roles: ArcSwap<Roles>,
}

impl Catalogue {
    /// Whether `roles` together grant `right`.
    pub fn grants(&self, roles: &[Box<str>], right: &str) -> bool {
        let catalogue = self.roles.load();
        roles.iter().any(|role| {
            catalogue
                .get(role)
                .is_some_and(|rights| rights.iter().any(|r| &**r == right))
        })
    }

    /// Reads every role from the store and swaps the copy.
    pub async fn reload(&self, store: &dyn Store) -> Result<(), StoreError> {
        let mut roles = HashMap::new();
        let mut after: Option<String> = None;
        loop {
            let keys = store.keys(Bucket::Rbac, after.as_deref(), 1000).await?;
            if keys.is_empty() {
                break;
            }
            for key in keys.iter().filter(|k| k.starts_with("role.")) {
                match records::get::<Role>(store, key).await {
                    Ok(Some(role)) => {
                        roles.insert(
                            role.record.name.into_boxed_str(),
                            role.record
                                .rights
                                .into_iter()
                                .map(String::into_boxed_str)
                                .collect(),
                        );
                    }
                    Ok(None) => {}
                    Err(error) => tracing::warn!(key, %error, "a role record is unreadable"),
                }
            }
            after = keys.last().cloned();
        }
        self.roles.store(Arc::new(roles));
        Ok(())
    }
}

/// Reloads `catalogue` from `store` on every change of its roles (and every [`REFRESH`]),
/// for as long as the catalogue lives.
pub fn watch(catalogue: &Arc<Catalogue>, store: Arc<dyn Store>) {
    let weak = Arc::downgrade(catalogue);
    tokio::spawn(async move {
        let nudges = super::store::nudges(store.clone(), Bucket::Rbac, REFRESH);
        let mut nudges = std::pin::pin!(nudges);
        while futures::StreamExt::next(&mut nudges).await.is_some() {
            let Some(catalogue) = weak.upgrade() else {
                return;
            };
            if let Err(error) = catalogue.reload(&*store).await {
                tracing::warn!(%error, "the role catalogue could not be reloaded; the last copy stays");
            }
        }
    });
}
