//! State that outlives the snapshot that made it. A new snapshot arrives every few seconds
//! in a busy cluster; a concurrency limit's in-flight count, a backend's ejection or an
//! open circuit must not reset with it. Each piece of such state is kept here under a key
//! naming its owner and its settings: the next build with the same key gets the same
//! object, a changed setting starts afresh, and state no runtime holds any more is dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

/// Objects of one kind by key, held weakly: the runtimes own them.
pub struct Kept<T>(Mutex<HashMap<String, Weak<T>>>);

impl<T> Default for Kept<T> {
    fn default() -> Self {
        Self(Mutex::default())
    }
}

impl<T> Kept<T> {
    /// The live object under `key`, or a new one from `make` (kept from now on).
    pub fn get_or_make(&self, key: String, make: impl FnOnce() -> T) -> Arc<T> {
        match self.try_get_or_make(key, || Ok::<_, std::convert::Infallible>(make())) {
            Ok(object) => object,
            Err(never) => match never {},
        }
    }

    /// As [`Kept::get_or_make`], for objects whose making can fail.
    pub fn try_get_or_make<E>(
        &self,
        key: String,
        make: impl FnOnce() -> Result<T, E>,
    ) -> Result<Arc<T>, E> {
        let mut kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(live) = kept.get(&key).and_then(Weak::upgrade) {
            return Ok(live);
        }
        kept.retain(|_, object| object.strong_count() > 0);
        let object = Arc::new(make()?);
        kept.insert(key, Arc::downgrade(&object));
        Ok(object)
    }

    /// Every live object with its key.
    pub fn live(&self) -> Vec<(String, Arc<T>)> {
        let kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut live: Vec<_> = kept
            .iter()
            .filter_map(|(key, object)| Some((key.clone(), object.upgrade()?)))
            .collect();
        live.sort_by(|a, b| a.0.cmp(&b.0));
        live
    }
}

/// Everything carried between snapshots.
#[derive(Default)]
pub struct Carried {
    pub concurrency: Kept<crate::ratelimit::concurrency::Concurrency>,
    pub endpoints: Kept<crate::upstream::endpoint::Endpoint>,
    pub breakers: Kept<crate::upstream::breaker::Breaker>,
    pub budgets: Kept<crate::upstream::retry::Budget>,
    /// Places under the rules' `connections.max`, per backend.
    pub places: Kept<tokio::sync::Semaphore>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_key_gets_the_same_object_while_someone_holds_it() {
        let kept: Kept<u32> = Kept::default();
        let a = kept.get_or_make("a".into(), || 1);
        let again = kept.get_or_make("a".into(), || 2);
        assert!(Arc::ptr_eq(&a, &again));
        assert_eq!(kept.live().len(), 1);
        drop((a, again));
        let fresh = kept.get_or_make("a".into(), || 3);
        assert_eq!(*fresh, 3, "nobody held the old one: a new one is made");
        assert!(kept.try_get_or_make("b".into(), || Err("bad")).is_err());
    }
}
