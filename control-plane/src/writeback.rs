//! Status write-back: every resource's `Accepted` and `Programmed` conditions, written to
//! its source (KV status keys, the Kubernetes status subresource) only when they change, by
//! the leader only. Transition times follow Kubernetes conventions: they move only when a
//! condition's status does.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use pavilion_crds::status::{ACCEPTED, PROGRAMMED};
use pavilion_crds::{Resource, ResourceKey};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::compile::Report;
use crate::controller::PublishedReceiver;
use crate::delivery::nodes::Nodes;
use crate::fleet::{NodeBoard, REPORT_EVERY, all_nodes};
use crate::source::{Item, LastAccepted, Origin};
use crate::status::{Condition, Fleet, conditions};

/// Quiet time after a change before writing: a burst of ACKs is written once.
const SETTLE: Duration = Duration::from_millis(50);
/// Failed writes are retried this often even when nothing changes.
const RETRY_EVERY: Duration = Duration::from_secs(10);
/// Stored statuses are read back this often, to correct what others changed.
const REREAD_EVERY: Duration = Duration::from_secs(300);
/// Statuses handed to the sink together (see [`StatusSink::write_many`]).
const WRITE_BATCH: usize = 64;

/// Which resource a status belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StatusTarget {
    pub origin: Origin,
    /// `None` for documents that could not be read far enough to know their identity.
    pub key: Option<ResourceKey>,
}

/// A condition as stored in a status, with its transition time.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StoredCondition {
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
    pub reason: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// RFC 3339.
    pub last_transition_time: String,
}

/// Everything written into a resource's status.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StoredStatus {
    #[serde(default)]
    pub conditions: Vec<StoredCondition>,
    /// The reason `kubectl get` shows (see [`summary`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Route only: the policies that reach it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<pavilion_crds::status::AttachedPolicy>,
    /// Policies only: the routes they reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reached: Option<pavilion_crds::status::Reached>,
    /// ApiKey only: the key id in force, which `kubectl get apikeys` shows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// While the resource is refused but its last accepted version serves: which
    /// (`generation 3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<String>,
    /// Kept so that a restarted control plane serves it while the resource is invalid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_accepted: Option<pavilion_crds::status::LastAccepted>,
}

impl StoredStatus {
    /// The fields besides `conditions`, which a merge patch must name (as `null` when
    /// absent) to clear what an earlier status set.
    pub const OPTIONAL_FIELDS: [&str; 6] = [
        "reason",
        "policies",
        "reached",
        "keyId",
        "serving",
        "lastAccepted",
    ];
}

impl StoredStatus {
    /// `stored_last_accepted`: `last_accepted` as a status holds it.
    fn new(
        conditions: Vec<StoredCondition>,
        report: &Report,
        item: &Item,
        last_accepted: Option<&LastAccepted>,
        stored_last_accepted: Option<pavilion_crds::status::LastAccepted>,
    ) -> Self {
        let reason = summary(&conditions).map(str::to_owned);
        // The key id of the version that serves, else of the document as written.
        let resource = last_accepted
            .map(|l| &*l.resource)
            .or(item.parsed.as_deref().ok());
        let key_id =
            match resource {
                Some(Resource::ApiKey(key)) => Some(key.spec.key_id.clone().unwrap_or_else(|| {
                    resource.map(Resource::name).unwrap_or_default().to_owned()
                })),
                _ => None,
            };
        Self {
            conditions,
            reason,
            policies: report.attachments.policies.clone(),
            reached: report.attachments.reached.clone(),
            key_id,
            serving: match &report.outcome {
                crate::compile::Outcome::Stale { serving, .. } => Some(serving.clone()),
                _ => None,
            },
            last_accepted: stored_last_accepted,
        }
    }
}

/// The reason `kubectl get` shows: a refusal's, else a warning (`AcceptedWithWarnings`),
/// else why the resource is not programmed, else `Accepted`.
fn summary(conditions: &[StoredCondition]) -> Option<&str> {
    let find = |kind: &str| conditions.iter().find(|c| c.kind == kind);
    let accepted = find(ACCEPTED)?;
    if accepted.status != "True" || accepted.reason != ACCEPTED {
        return Some(&accepted.reason);
    }
    match find(PROGRAMMED) {
        Some(programmed) if programmed.status != "True" => Some(&programmed.reason),
        _ => Some(&accepted.reason),
    }
}

/// What a write achieved.
pub enum Written {
    Done,
    /// The resource no longer exists: nothing to remember.
    Gone,
}

/// Where statuses are written.
pub trait StatusSink: Send + 'static {
    /// The status currently stored for `target`, if any.
    fn read<'a>(
        &'a mut self,
        target: &'a StatusTarget,
    ) -> BoxFuture<'a, Result<Option<StoredStatus>, String>>;
    fn write<'a>(
        &'a mut self,
        target: &'a StatusTarget,
        status: &'a StoredStatus,
    ) -> BoxFuture<'a, Result<Written, String>>;
    /// Writes each status of `batch` to its target; the results in the batch's order. One
    /// after another unless the sink can do better (on Kubernetes, several requests at once:
    /// one at a time, the first 10 000 statuses took a minute).
    fn write_many<'a>(
        &'a mut self,
        batch: &'a [(StatusTarget, StoredStatus)],
    ) -> BoxFuture<'a, Vec<Result<Written, String>>> {
        Box::pin(async move {
            let mut results = Vec::with_capacity(batch.len());
            for (target, status) in batch {
                results.push(self.write(target, status).await);
            }
            results
        })
    }
    /// The status of `target` went from one with the conditions `previous` to `next` (just
    /// written): tell whoever listens beyond the status itself (Kubernetes Events). Nothing
    /// by default.
    fn changed<'a>(
        &'a mut self,
        _target: &'a StatusTarget,
        _previous: Option<&'a [StoredCondition]>,
        _next: &'a StoredStatus,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
    /// Every stored status at once, for a pass that knows none of them (a start, a new
    /// term, the periodic re-read), where the sink can read them together: on Kubernetes a
    /// paged LIST per kind instead of a GET per object (10 000 of them every five minutes).
    /// `None`: each is read on its own.
    fn read_all(&mut self) -> BoxFuture<'_, Result<Option<AllSeen>, String>> {
        Box::pin(async { Ok(None) })
    }
    /// The resource is gone: drop its status where it lives apart from it.
    fn remove<'a>(&'a mut self, target: &'a StatusTarget) -> BoxFuture<'a, Result<(), String>>;
    /// Drop statuses left behind by resources that no longer exist.
    fn prune<'a>(&'a mut self, current: &'a [StatusTarget]) -> BoxFuture<'a, Result<(), String>>;
}

/// A stored status as read by [`StatusSink::read_all`]: what a pass needs of it — its
/// conditions (for their transition times) and a digest (whether it must be written).
pub struct Seen {
    conditions: Vec<StoredCondition>,
    digest: [u8; 16],
}

impl Seen {
    pub fn of(status: StoredStatus) -> Self {
        Self {
            digest: status_digest(&status),
            conditions: status.conditions,
        }
    }
}

/// Every stored status, by the document it belongs to; a document missing has none.
pub type AllSeen = HashMap<Origin, Seen, foldhash::fast::RandomState>;

/// What the write-back follows, and the gauge it keeps.
pub struct Inputs {
    pub published: PublishedReceiver,
    pub nodes: Arc<Nodes>,
    pub leader: watch::Receiver<bool>,
    /// `pavilion_control_status_backlog`.
    pub backlog: prometheus::IntGauge,
}

/// Writes statuses while `leader` is true, until the published channel closes. What is
/// stored is read back on every new term and every few minutes, so statuses written by
/// someone else (an earlier leader, a person) are corrected and transition times survive.
/// With `board` (and this replica's name on it), `Programmed` counts the data planes of
/// every replica, not only this one's.
pub async fn run(
    mut sink: Box<dyn StatusSink>,
    inputs: Inputs,
    board: Option<(Arc<dyn NodeBoard>, String)>,
) {
    let Inputs {
        mut published,
        nodes,
        mut leader,
        backlog,
    } = inputs;
    // Other replicas' data planes only show on the board: look again as often as they post.
    let recheck = if board.is_some() {
        REPORT_EVERY
    } else {
        RETRY_EVERY
    };
    let mut node_changes = nodes.subscribe();
    // What is known to be stored, per document (see `Known`); boxed, as the map keeps a
    // third of its slots empty. Looked up for every document in every pass: foldhash, as
    // SipHash over the origins' strings was a tenth of the control plane's time per change.
    let mut stored: HashMap<Origin, Box<Known>, foldhash::fast::RandomState> = HashMap::default();
    // The strings of stored conditions, shared: most documents' conditions say the same.
    let mut strings = Interner::default();
    let mut pass: u64 = 0;
    let mut pruned = false;
    let mut reread_at = tokio::time::Instant::now() + REREAD_EVERY;
    loop {
        tokio::select! {
            changed = published.changed() => if changed.is_err() { return },
            _ = node_changes.changed() => {}
            changed = leader.changed() => {
                if changed.is_err() {
                    return;
                }
                stored.clear();
                pruned = false;
            }
            () = tokio::time::sleep(recheck) => {}
        }
        tokio::time::sleep(SETTLE).await;
        if tokio::time::Instant::now() >= reread_at {
            stored.clear();
            pruned = false;
            reread_at = tokio::time::Instant::now() + REREAD_EVERY;
        }
        let Some(current) = published.borrow_and_update().clone() else {
            continue;
        };
        let nodes = match &board {
            Some((board, replica)) => all_nodes(board.as_ref(), replica, nodes.list()).await,
            None => nodes.list(),
        };
        pass += 1;
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let fleet = Fleet::new(&current.now, &nodes, &current.versions);
        // Whether data planes run a document depends only on the snapshot that first held
        // it as it is: worked out once per such snapshot, not once per document.
        let mut verdicts: HashMap<u64, Arc<Verdict>> = HashMap::new();
        let mut gone = Vec::new();
        let total = current.reports.len();
        backlog.set(total as i64);
        // Nothing known (a start, a new term, the re-read): every stored status read at
        // once where the sink can.
        let mut seen = if stored.is_empty() && *leader.borrow() {
            sink.read_all().await.unwrap_or_else(|error| {
                tracing::warn!(%error, "cannot read the statuses at once; reading them one by one");
                None
            })
        } else {
            None
        };
        let documents = current
            .reports
            .iter()
            .zip(current.items.iter())
            .zip(&current.last_accepted)
            .zip(&current.since);
        let mut writes = Writes::default();
        for (done, (((report, item), last_accepted), since)) in documents.enumerate() {
            // Checked before every write: a replica that lost the lead stops at once.
            if !*leader.borrow() {
                break;
            }
            // Another document of the same origin (problems reported against one file) is
            // decided on what was stored for the one before it.
            if writes.holds(&report.origin) {
                writes.flush(sink.as_mut(), &mut stored).await;
            }
            if done % 64 == 0 {
                backlog.set((total - done) as i64);
            }
            let verdict = verdicts
                .entry(since.position)
                .or_insert_with(|| Arc::new(crate::status::programmed(since, &fleet)));
            let known = match stored.get_mut(&report.origin) {
                Some(known) if known.key == report.key => Some(known),
                Some(_) => {
                    // Another resource now lives here: the old one's status goes.
                    if let Some(old) = stored.remove(&report.origin) {
                        gone.push(StatusTarget {
                            origin: report.origin.clone(),
                            key: old.key,
                        });
                    }
                    None
                }
                None => None,
            };
            let same_last_accepted = |known: &Known| match (&known.last_accepted, last_accepted) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (a, b) => a.is_none() && b.is_none(),
            };
            if let Some(known) = known {
                // The same document, verdict and last accepted version as when its status
                // was stored: the status would come out the same.
                if known.since == since.position
                    && known.verdict == *verdict
                    && same_last_accepted(known)
                {
                    known.pass = pass;
                    continue;
                }
            }
            let target = StatusTarget {
                origin: report.origin.clone(),
                key: report.key.clone(),
            };
            let known = stored.get(&report.origin).map(|known| &**known);
            // The last accepted version as the status holds it: written out again only
            // when the status must be (a `Known` keeps no YAML).
            let stored_last_accepted = last_accepted.as_deref().and_then(LastAccepted::to_status);
            // What is stored now: its conditions, and what tells whether a status is the
            // same (the known digest, or the status read back).
            let (previous, digest, read) = match known {
                Some(known) => (
                    Some(
                        known
                            .conditions
                            .iter()
                            .map(KnownCondition::stored)
                            .collect(),
                    ),
                    Some(known.digest),
                    None,
                ),
                None if seen.is_some() => {
                    let found = seen.as_mut().and_then(|seen| seen.remove(&report.origin));
                    let (previous, digest) = found.map(|s| (s.conditions, s.digest)).unzip();
                    (previous, digest, None)
                }
                None => {
                    let read = sink.read(&target).await.unwrap_or_else(|error| {
                        tracing::warn!(origin = %target.origin, %error, "cannot read status");
                        None
                    });
                    let previous: Option<Vec<StoredCondition>> =
                        read.as_ref().map(|r| r.conditions.clone());
                    (previous, None, read)
                }
            };
            let fresh = conditions(report, since, &fleet);
            let conditions = with_transition_times(fresh, previous.as_deref(), &now);
            let next = StoredStatus::new(
                conditions,
                report,
                item,
                last_accepted.as_deref(),
                stored_last_accepted,
            );
            let next_digest = status_digest(&next);
            let remember = |status: &StoredStatus, strings: &mut Interner| {
                Box::new(Known {
                    key: report.key.clone(),
                    digest: next_digest,
                    conditions: status
                        .conditions
                        .iter()
                        .map(|c| KnownCondition::new(c, strings))
                        .collect(),
                    last_accepted: last_accepted.clone(),
                    since: since.position,
                    verdict: verdict.clone(),
                    pass,
                })
            };
            let unchanged = match digest {
                Some(digest) => next_digest == digest,
                None => read.as_ref() == Some(&next),
            };
            if unchanged {
                stored.insert(report.origin.clone(), remember(&next, &mut strings));
                continue;
            }
            let known = remember(&next, &mut strings);
            writes.push(target, next, previous, known);
            if writes.len() == WRITE_BATCH {
                writes.flush(sink.as_mut(), &mut stored).await;
            }
        }
        // Not for a replica that lost the lead meanwhile.
        if *leader.borrow() {
            writes.flush(sink.as_mut(), &mut stored).await;
        }
        strings.forget_unused();
        backlog.set(0);
        if !*leader.borrow() {
            continue;
        }
        stored.retain(|origin, known| {
            let kept = known.pass == pass;
            if !kept {
                gone.push(StatusTarget {
                    origin: origin.clone(),
                    key: known.key.take(),
                });
            }
            kept
        });
        for target in gone {
            if let Err(error) = sink.remove(&target).await {
                tracing::warn!(origin = %target.origin, %error, "cannot remove status; will retry");
                pruned = false;
            }
        }
        if !pruned {
            let current: Vec<StatusTarget> = current
                .reports
                .iter()
                .map(|report| StatusTarget {
                    origin: report.origin.clone(),
                    key: report.key.clone(),
                })
                .collect();
            match sink.prune(&current).await {
                Ok(()) => pruned = true,
                Err(error) => tracing::warn!(%error, "cannot prune stale statuses; will retry"),
            }
        }
    }
}

/// Statuses to write, each with what to remember once it is stored.
#[derive(Default)]
struct Writes {
    batch: Vec<(StatusTarget, StoredStatus)>,
    /// Per write: the conditions it replaces (for the sink's notices) and what is known
    /// once it is stored.
    after: Vec<(Option<Vec<StoredCondition>>, Box<Known>)>,
}

impl Writes {
    fn push(
        &mut self,
        target: StatusTarget,
        status: StoredStatus,
        previous: Option<Vec<StoredCondition>>,
        known: Box<Known>,
    ) {
        self.batch.push((target, status));
        self.after.push((previous, known));
    }

    fn len(&self) -> usize {
        self.batch.len()
    }

    fn holds(&self, origin: &Origin) -> bool {
        self.batch
            .iter()
            .any(|(target, _)| target.origin == *origin)
    }

    /// Writes the batch and records what each write achieved in `stored`.
    async fn flush(
        &mut self,
        sink: &mut dyn StatusSink,
        stored: &mut HashMap<Origin, Box<Known>, foldhash::fast::RandomState>,
    ) {
        if self.batch.is_empty() {
            return;
        }
        let results = sink.write_many(&self.batch).await;
        for (((target, next), (previous, known)), result) in
            self.batch.drain(..).zip(self.after.drain(..)).zip(results)
        {
            match result {
                Ok(Written::Done) => {
                    sink.changed(&target, previous.as_deref(), &next).await;
                    stored.insert(target.origin, known);
                }
                Ok(Written::Gone) => {
                    stored.remove(&target.origin);
                }
                Err(error) => {
                    // Forgotten, so the next pass tries again.
                    stored.remove(&target.origin);
                    tracing::warn!(origin = %target.origin, %error, "cannot write status; will retry")
                }
            }
        }
    }
}

/// `Programmed`'s status, reason and message for documents first held by one snapshot.
type Verdict = (&'static str, &'static str, String);

/// A status known to be stored, and what it was made from: while those stay the same, the
/// document is passed over without building its status again (at 10 000 resources, building
/// and comparing every status was a quarter of the control plane's work per change).
///
/// Kept small, as there is one per document: the stored status is remembered by its digest
/// (a status built the same is not written again) and its conditions (for transition times
/// and events), whose strings are shared — not whole, with its last accepted version's YAML
/// (at 20 000 documents, whole statuses were a fifth of the control plane's heap).
struct Known {
    key: Option<ResourceKey>,
    digest: [u8; 16],
    conditions: Box<[KnownCondition]>,
    /// The last accepted version the status holds.
    last_accepted: Option<Arc<LastAccepted>>,
    /// [`Since::position`](crate::controller::Since) of the document: it moves whenever
    /// the document, its verdict or its attachments change.
    since: u64,
    verdict: Arc<Verdict>,
    /// The last pass that saw the document.
    pass: u64,
}

/// A stored condition, its strings shared through an [`Interner`].
struct KnownCondition {
    kind: Arc<str>,
    status: Arc<str>,
    reason: Arc<str>,
    message: Arc<str>,
    observed_generation: Option<i64>,
    last_transition_time: Arc<str>,
}

impl KnownCondition {
    fn new(condition: &StoredCondition, strings: &mut Interner) -> Self {
        Self {
            kind: strings.get(&condition.kind),
            status: strings.get(&condition.status),
            reason: strings.get(&condition.reason),
            message: strings.get(&condition.message),
            observed_generation: condition.observed_generation,
            last_transition_time: strings.get(&condition.last_transition_time),
        }
    }

    fn stored(&self) -> StoredCondition {
        StoredCondition {
            kind: self.kind.to_string(),
            status: self.status.to_string(),
            reason: self.reason.to_string(),
            message: self.message.to_string(),
            observed_generation: self.observed_generation,
            last_transition_time: self.last_transition_time.to_string(),
        }
    }
}

/// One copy of each string the known conditions hold.
#[derive(Default)]
struct Interner(std::collections::HashSet<Arc<str>>);

impl Interner {
    fn get(&mut self, text: &str) -> Arc<str> {
        if let Some(shared) = self.0.get(text) {
            return shared.clone();
        }
        let shared: Arc<str> = text.into();
        self.0.insert(shared.clone());
        shared
    }

    /// Drops the strings no condition holds any more (old transition times, messages of
    /// verdicts that changed).
    fn forget_unused(&mut self) {
        self.0.retain(|text| Arc::strong_count(text) > 1);
    }
}

/// A status's digest: the first 16 bytes of the SHA-256 of its JSON.
fn status_digest(status: &StoredStatus) -> [u8; 16] {
    use sha2::Digest;
    let json = serde_json::to_vec(status).unwrap_or_default();
    let digest = sha2::Sha256::digest(&json);
    let mut short = [0u8; 16];
    short.copy_from_slice(&digest[..16]);
    short
}

/// Keeps a condition's transition time while its status stays the same.
fn with_transition_times(
    fresh: Vec<Condition>,
    previous: Option<&[StoredCondition]>,
    now: &str,
) -> Vec<StoredCondition> {
    fresh
        .into_iter()
        .map(|condition| {
            let last_transition_time = previous
                .and_then(|p| p.iter().find(|c| c.kind == condition.kind))
                .filter(|p| p.status == condition.status)
                .map_or_else(|| now.to_owned(), |p| p.last_transition_time.clone());
            StoredCondition {
                kind: condition.kind.to_owned(),
                status: condition.status.to_owned(),
                reason: condition.reason.to_owned(),
                message: condition.message,
                observed_generation: condition.observed_generation,
                last_transition_time,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn condition(kind: &'static str, status: &'static str, message: &str) -> Condition {
        Condition {
            kind,
            status,
            reason: "R",
            message: message.into(),
            observed_generation: None,
        }
    }

    #[test]
    fn transition_times_move_only_with_the_status() {
        let first = with_transition_times(vec![condition("Accepted", "True", "valid")], None, "t1");
        let same = with_transition_times(
            vec![condition("Accepted", "True", "still valid")],
            Some(&first[..]),
            "t2",
        );
        assert_eq!(same[0].last_transition_time, "t1");
        let flipped = with_transition_times(
            vec![condition("Accepted", "False", "broken")],
            Some(&same[..]),
            "t3",
        );
        assert_eq!(flipped[0].last_transition_time, "t3");
    }
}
