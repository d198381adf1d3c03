//! The audit trail: every security event and administrative change, appended to the audit
//! bucket as a hash chain — each record carries the SHA-256 of the one before and its own
//! over both, so a changed, removed or reordered record breaks the chain where it happened
//! ([`verify`], `pavilion-data audit verify`). Records are numbered (`{seq:020}` keys, so
//! keys sort as they were appended); `head` names the last one. Appending is a
//! compare-and-set race like every write: a replica that loses it helps the winner's record
//! become the head and tries the next number.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::records::VERSION;
use super::store::{Bucket, Store, StoreError};
use super::unix_now_ms;

tokio::task_local! {
    /// The request id of the identity request being served, for its audit records.
    pub static REQUEST_ID: String;
}

/// What happened, as it is appended.
#[derive(Clone, Debug, Default)]
pub struct Event {
    /// A user id, `anonymous`, or `system`.
    pub actor: String,
    /// `signin.failed`, `session.reuse_detected`, `mfa.enabled`, …
    pub action: &'static str,
    /// What it happened to (a user id, a session id).
    pub target: String,
    pub tenant: Option<String>,
    /// Anything else worth keeping (never a secret).
    pub detail: Option<String>,
}

/// One record of the chain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub v: u32,
    pub seq: u64,
    /// Unix milliseconds.
    pub time_ms: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The previous record's `hash` (64 zeros for the first).
    pub prev: String,
    /// SHA-256 over `prev` and this record without `hash`.
    #[serde(default)]
    pub hash: String,
}

impl Record {
    fn digest(&self) -> String {
        let mut unhashed = self.clone();
        unhashed.hash = String::new();
        let bytes = serde_json::to_vec(&unhashed).expect("records always serialize");
        let mut hasher = Sha256::new();
        hasher.update(self.prev.as_bytes());
        hasher.update(&bytes);
        hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// `head`: the last record's number and hash.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Head {
    seq: u64,
    hash: String,
}

const HEAD: &str = "head";
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

pub fn key(seq: u64) -> String {
    format!("{seq:020}")
}

/// Appends `event`; its number.
pub async fn append(store: &dyn Store, event: Event) -> Result<u64, StoreError> {
    let request_id = REQUEST_ID.try_with(Clone::clone).ok();
    for _ in 0..50 {
        let head = store.get(Bucket::Audit, HEAD).await?;
        let (last, revision) = match &head {
            Some(entry) => (
                serde_json::from_slice::<Head>(&entry.value)
                    .map_err(|e| StoreError::Unavailable(format!("audit head: {e}")))?,
                Some(entry.revision),
            ),
            None => (
                Head {
                    seq: 0,
                    hash: GENESIS.into(),
                },
                None,
            ),
        };
        let mut record = Record {
            v: VERSION,
            seq: last.seq + 1,
            time_ms: unix_now_ms(),
            actor: event.actor.clone(),
            action: event.action.into(),
            target: event.target.clone(),
            tenant: event.tenant.clone(),
            request_id: request_id.clone(),
            detail: event.detail.clone(),
            prev: last.hash.clone(),
            hash: String::new(),
        };
        record.hash = record.digest();
        let created = store
            .create(
                Bucket::Audit,
                &key(record.seq),
                serde_json::to_vec(&record).expect("records always serialize"),
            )
            .await;
        // Whoever made record `seq` (us or another replica), the head moves to it.
        let made = match created {
            Ok(_) => record.clone(),
            Err(StoreError::Exists) => match store.get(Bucket::Audit, &key(record.seq)).await? {
                Some(entry) => serde_json::from_slice(&entry.value)
                    .map_err(|e| StoreError::Unavailable(format!("audit record: {e}")))?,
                None => continue,
            },
            Err(e) => return Err(e),
        };
        let next = serde_json::to_vec(&Head {
            seq: made.seq,
            hash: made.hash.clone(),
        })
        .expect("heads always serialize");
        let moved = match revision {
            Some(revision) => store
                .update(Bucket::Audit, HEAD, next, revision)
                .await
                .map(drop),
            None => store.create(Bucket::Audit, HEAD, next).await.map(drop),
        };
        match moved {
            Ok(()) | Err(StoreError::Conflict | StoreError::Exists) => {}
            Err(e) => return Err(e),
        }
        if made == record {
            return Ok(record.seq);
        }
    }
    Err(StoreError::Unavailable(
        "the audit trail kept moving".into(),
    ))
}

/// Appends `event`, logging rather than failing when the store refuses: the flow it
/// records has already happened.
pub async fn record(store: &dyn Store, event: Event) {
    let action = event.action;
    if let Err(error) = append(store, event).await {
        tracing::error!(action, %error, "the audit record could not be appended");
    }
}

/// Which records a listing wants.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Filter {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub target: Option<String>,
    pub tenant: Option<String>,
    /// Unix milliseconds, inclusive.
    pub since: Option<i64>,
    pub until: Option<i64>,
    /// Records after this number (the previous page's `next`).
    pub after: Option<u64>,
    pub limit: Option<usize>,
}

impl Filter {
    fn admits(&self, record: &Record) -> bool {
        self.actor.as_ref().is_none_or(|a| *a == record.actor)
            && self.action.as_ref().is_none_or(|a| *a == record.action)
            && self.target.as_ref().is_none_or(|t| *t == record.target)
            && self
                .tenant
                .as_ref()
                .is_none_or(|t| Some(t) == record.tenant.as_ref())
            && self.since.is_none_or(|s| record.time_ms >= s)
            && self.until.is_none_or(|u| record.time_ms <= u)
    }
}

/// A page of records matching `filter`, oldest first, and where the next page starts.
pub async fn list(
    store: &dyn Store,
    filter: &Filter,
) -> Result<(Vec<Record>, Option<u64>), StoreError> {
    let limit = filter.limit.unwrap_or(100).clamp(1, 1000);
    let mut after = filter.after.map(key);
    let mut found = Vec::new();
    loop {
        let keys = store.keys(Bucket::Audit, after.as_deref(), 500).await?;
        if keys.is_empty() {
            return Ok((found, None));
        }
        for name in &keys {
            if name == HEAD {
                continue;
            }
            let Some(entry) = store.get(Bucket::Audit, name).await? else {
                continue;
            };
            let record: Record = serde_json::from_slice(&entry.value)
                .map_err(|e| StoreError::Unavailable(format!("audit record {name}: {e}")))?;
            if filter.admits(&record) {
                found.push(record);
                if found.len() == limit {
                    let next = found.last().map(|r| r.seq);
                    return Ok((found, next));
                }
            }
        }
        after = keys.last().cloned();
    }
}

/// Where the chain breaks.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Break {
    #[error("record {0} is missing")]
    Missing(u64),
    #[error("record {0} was changed (its hash does not match its content)")]
    Changed(u64),
    #[error("record {0} does not follow record {1} (the chain was cut or reordered)")]
    Unlinked(u64, u64),
    #[error("the head names record {head}, the last record is {last}")]
    Head { head: u64, last: u64 },
    #[error("record {0} is unreadable")]
    Unreadable(String),
}

/// Walks the whole chain; the number of records when it is whole.
pub async fn verify(store: &dyn Store) -> Result<Result<u64, Break>, StoreError> {
    let mut prev = GENESIS.to_owned();
    let mut expected = 1u64;
    let mut after: Option<String> = None;
    loop {
        let keys = store.keys(Bucket::Audit, after.as_deref(), 500).await?;
        if keys.is_empty() {
            break;
        }
        for name in keys.iter().filter(|k| *k != HEAD) {
            let Some(entry) = store.get(Bucket::Audit, name).await? else {
                continue;
            };
            let Ok(record) = serde_json::from_slice::<Record>(&entry.value) else {
                return Ok(Err(Break::Unreadable(name.clone())));
            };
            if record.seq != expected || *name != key(record.seq) {
                return Ok(Err(Break::Missing(expected)));
            }
            if record.digest() != record.hash {
                return Ok(Err(Break::Changed(record.seq)));
            }
            if record.prev != prev {
                return Ok(Err(Break::Unlinked(record.seq, expected - 1)));
            }
            prev = record.hash;
            expected += 1;
        }
        after = keys.last().cloned();
    }
    let last = expected - 1;
    let head = match store.get(Bucket::Audit, HEAD).await? {
        Some(entry) => serde_json::from_slice::<Head>(&entry.value)
            .map(|h| h.seq)
            .unwrap_or(u64::MAX),
        None => 0,
    };
    if head != last {
        return Ok(Err(Break::Head { head, last }));
    }
    Ok(Ok(last))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(actor: &str, action: &str, tenant: Option<&str>, time_ms: i64) -> Record {
        Record {
            v: 1,
            seq: 1,
            time_ms,
            actor: actor.into(),
            action: action.into(),
            target: "u1".into(),
            tenant: tenant.map(str::to_owned),
            request_id: None,
            detail: None,
            prev: String::new(),
            hash: String::new(),
        }
    }

    #[test]
    fn every_filter_narrows_and_they_combine() {
        let assigned = record("root", "assignment.added", Some("acme"), 2_000);
        let failed = record("anonymous", "signin.failed", None, 1_000);
        let filter = |f: Filter| (f.admits(&assigned), f.admits(&failed));
        assert_eq!(filter(Filter::default()), (true, true));
        let by_actor = Filter {
            actor: Some("root".into()),
            ..Filter::default()
        };
        assert_eq!(filter(by_actor), (true, false));
        let by_tenant = Filter {
            tenant: Some("acme".into()),
            ..Filter::default()
        };
        assert_eq!(
            filter(by_tenant),
            (true, false),
            "no tenant is not every tenant"
        );
        let by_target = Filter {
            target: Some("u2".into()),
            ..Filter::default()
        };
        assert_eq!(filter(by_target), (false, false));
        let since = Filter {
            since: Some(2_000),
            ..Filter::default()
        };
        assert_eq!(filter(since), (true, false), "since is inclusive");
        let until = Filter {
            until: Some(1_000),
            ..Filter::default()
        };
        assert_eq!(filter(until), (false, true), "until is inclusive");
        let both = Filter {
            actor: Some("root".into()),
            action: Some("signin.failed".into()),
            ..Filter::default()
        };
        assert_eq!(filter(both), (false, false), "filters combine with and");
    }
}
