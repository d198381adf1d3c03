//! Turns the source's resource sets into published snapshots: compile the latest set,
//! log what changed in the verdicts, publish when the snapshot or a verdict changed.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pavilion_crds::{Resource, ResourceKey};
use pavilion_proto::Snapshot;
use pavilion_proto::delta::{self, Parts};
use prost::Message;
use tokio::sync::watch;

use crate::compile::{CompileOptions, Memo, Outcome, Report, compile_with_memo};
use crate::metrics::Metrics;
use crate::source::{Item, Items, LastAccepted};

/// The least time between the starts of two compiles, so that a burst of changes (a
/// `kubectl apply` of many objects) does not compile once per object. Not a wait before
/// a lone change (it was, 3–4 ms of every change's way to traffic): whatever arrives
/// during a compile is compiled together next.
const DEBOUNCE: Duration = Duration::from_millis(3);

/// What data planes are sent: a compiled snapshot, encoded once, and the changes to it
/// from the versions they run. Published on its own channel before the controller's
/// bookkeeping (verdicts, last accepted versions), which only the status write-back and
/// the API read: a change reaches data planes without waiting for it.
#[derive(Debug)]
pub struct Shipment {
    /// The snapshot without its routes (they are in `encoded`): version, credentials and
    /// placements.
    pub snapshot: Arc<Snapshot>,
    /// How many routes it has.
    pub routes: usize,
    /// `snapshot` encoded once, for every data plane's stream.
    pub encoded: bytes::Bytes,
    /// `encoded` split into routes and the rest (slices of it), to send as a change to the
    /// snapshot a data plane runs. `None` only if the encoding could not be split (a bug:
    /// data planes then get this snapshot whole).
    pub parts: Option<Arc<Parts>>,
    /// Deltas from other versions to this one, encoded, as the streams asked for them
    /// (most data planes run the same version: one diff for all of them).
    deltas: Mutex<Vec<(String, Option<bytes::Bytes>)>>,
}

/// A compiled snapshot with the verdict on every document it came from.
#[derive(Debug)]
pub struct Published {
    /// The snapshot as data planes get it.
    pub shipment: Arc<Shipment>,
    /// One per input item, in the same order as `items`.
    pub reports: Vec<Report>,
    /// The resource set it was compiled from, each item's `last_accepted` filled in.
    pub items: Items,
    /// Per item: the last accepted version of its resource after this compile (itself when
    /// accepted), which the status write-back stores so a restart can recall it.
    pub last_accepted: Vec<Option<Arc<LastAccepted>>>,
    /// Per item: the snapshot that first held it as it is now (verdict and document).
    pub since: Vec<Since>,
    /// This publication: its version and place among the published ones.
    pub now: Since,
    /// The snapshots this controller published last, in order.
    pub versions: Arc<Versions>,
}

/// The snapshot that first held a document as it is now. A data plane running that
/// snapshot or a later one runs the document, so a resource a new snapshot leaves alone
/// stays `Programmed` — instead of every status turning `Pending` and back on every change
/// (10 000 status writes for a one-line edit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Since {
    pub version: Arc<str>,
    /// Its place in [`Versions`].
    pub position: u64,
}

/// The order in which this controller published snapshot versions (the last [`Self::KEPT`]),
/// to tell whether a data plane's version comes before or after a [`Since`].
#[derive(Debug, Default)]
pub struct Versions {
    inner: Mutex<VersionOrder>,
}

#[derive(Debug, Default)]
struct VersionOrder {
    positions: HashMap<Arc<str>, u64>,
    order: VecDeque<(Arc<str>, u64)>,
    next: u64,
}

impl Versions {
    /// Versions remembered; a data plane running an older one counts as behind.
    pub const KEPT: usize = 4096;

    /// Records `version` as published now (again, when a change was undone: the same
    /// content has the same version) and returns its place.
    pub fn publish(&self, version: &str) -> Since {
        let mut order = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let version: Arc<str> = version.into();
        let position = order.next;
        order.next += 1;
        order.positions.insert(version.clone(), position);
        order.order.push_back((version.clone(), position));
        while order.order.len() > Self::KEPT {
            if let Some((old, at)) = order.order.pop_front()
                && order.positions.get(&old) == Some(&at)
            {
                order.positions.remove(&old);
            }
        }
        Since { version, position }
    }

    /// Where `version` was last published; `None` when this controller never published it
    /// (or too long ago).
    pub fn position(&self, version: &str) -> Option<u64> {
        let order = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        order.positions.get(version).copied()
    }
}

/// Deltas remembered per published snapshot (by base version).
const DELTAS_KEPT: usize = 8;

impl Shipment {
    fn new(snapshot: Snapshot, routes: usize, encoded: bytes::Bytes) -> Self {
        let parts = Parts::split(&encoded)
            .inspect_err(|error| tracing::error!(%error, "cannot split the snapshot's encoding; data planes get it whole"))
            .ok()
            .map(Arc::new);
        Self {
            snapshot: Arc::new(snapshot),
            routes,
            encoded,
            parts,
            deltas: Mutex::default(),
        }
    }

    /// This snapshot as a change to `base`, encoded; `None` when that would not be less
    /// than half the size of the whole snapshot (the whole one is cheaper to apply then).
    pub fn delta_from(&self, base: &Parts) -> Option<bytes::Bytes> {
        let parts = self.parts.as_ref()?;
        let mut deltas = self.deltas.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, delta)) = deltas.iter().find(|(from, _)| *from == base.version) {
            return delta.clone();
        }
        let delta = delta::diff(base, parts).encode_to_vec();
        let delta = (delta.len() < self.encoded.len() / 2).then(|| bytes::Bytes::from(delta));
        if deltas.len() == DELTAS_KEPT {
            deltas.remove(0);
        }
        deltas.push((base.version.clone(), delta.clone()));
        delta
    }
}

impl Published {
    /// The documents whose resource is in the snapshot, each with the version that is:
    /// its own, or the last accepted one standing in for it.
    pub fn served(&self) -> impl Iterator<Item = (&Item, &Resource)> {
        self.items
            .iter()
            .zip(&self.reports)
            .filter_map(|(item, report)| match report.outcome {
                Outcome::Accepted { .. } => item.parsed.as_deref().ok().map(|r| (item, r)),
                Outcome::Stale { .. } => item.last_accepted.as_ref().map(|l| (item, &*l.resource)),
                Outcome::Rejected { .. } => None,
            })
    }
}

/// `None` until the source has listed everything once.
pub type PublishedReceiver = watch::Receiver<Option<Arc<Published>>>;

/// `None` until the first snapshot is compiled.
pub type ShipmentReceiver = watch::Receiver<Option<Arc<Shipment>>>;

/// Where [`run`] publishes.
pub struct Outputs {
    /// Each new snapshot, as soon as it is compiled (for data planes).
    pub shipments: watch::Sender<Option<Arc<Shipment>>>,
    /// Each compile's snapshot with its verdicts, once they are worked out.
    pub published: watch::Sender<Option<Arc<Published>>>,
}

pub async fn run(
    mut items: watch::Receiver<Option<Items>>,
    outputs: Outputs,
    metrics: Metrics,
    options: CompileOptions,
) {
    let options = Arc::new(options);
    let versions = Arc::new(Versions::default());
    let mut previous: Option<Arc<Published>> = None;
    let mut memory = Memory::default();
    // What the compiler worked out for resources that did not change (see `Memo`).
    let mut memo = Memo::default();
    let compiler = crate::worker::Worker::spawn("pavilion-compile");
    let mut last_started: Option<tokio::time::Instant> = None;
    while items.changed().await.is_ok() {
        // A change after a quiet spell compiles at once; in a burst, compiles start at
        // most once per DEBOUNCE (what arrives meanwhile is compiled together next).
        crate::source::pace(last_started, DEBOUNCE).await;
        let Some(from_source) = items.borrow_and_update().clone() else {
            continue;
        };
        let started = std::time::Instant::now();
        last_started = Some(tokio::time::Instant::now());
        let current = memory.recall(&from_source);
        // Regexes are compiled while validating: kept off the async threads, on a thread
        // of its own (see `worker`).
        let inputs = current.clone();
        let options = options.clone();
        let mut lent = std::mem::take(&mut memo);
        let compiled = match compiler
            .run("compile", move || {
                let compiled = compile_with_memo(&inputs, &options, &mut lent);
                (compiled, lent)
            })
            .await
        {
            Ok((compiled, returned)) => {
                memo = returned;
                compiled
            }
            Err(error) => {
                tracing::error!(%error, "the compiler failed; keeping the last snapshot");
                continue;
            }
        };
        let compiled_in = started.elapsed();
        // A new snapshot goes to data planes first; the bookkeeping below is for statuses.
        // `Err`: the snapshot is the one shipped last.
        let shipped = match previous
            .clone()
            .filter(|p| p.shipment.snapshot.version == compiled.snapshot.version)
        {
            Some(same) => Err(same),
            None => {
                let now = versions.publish(&compiled.snapshot.version);
                let routes = compiled.routes.len();
                let shipment = Arc::new(Shipment::new(compiled.snapshot, routes, compiled.encoded));
                outputs.shipments.send_replace(Some(shipment.clone()));
                tracing::info!(
                    version = %shipment.snapshot.version,
                    routes,
                    compile_ms = compiled_in.as_millis() as u64,
                    total_ms = started.elapsed().as_millis() as u64,
                    "compiled a new snapshot"
                );
                Ok((now, shipment))
            }
        };
        let last_accepted = memory.learn(&current, &compiled.reports);
        metrics.compiles.inc();
        record_outcomes(&metrics, &compiled.reports);
        let mut positions = Positions::new(previous.as_deref());
        log_new_verdicts(previous.as_deref(), &compiled.reports, &mut positions);
        let (now, shipment) = match shipped {
            Ok(shipped) => shipped,
            Err(same) => {
                // Items too: what the mirror copies (labels, annotations) can change alone.
                if same.reports == compiled.reports
                    && crate::source::same_items(&same.items, &current)
                {
                    continue;
                }
                // Published again (a change undone comes back to the same version).
                (
                    versions.publish(&same.shipment.snapshot.version),
                    same.shipment.clone(),
                )
            }
        };
        let since = since(
            previous.as_deref(),
            &current,
            &compiled.reports,
            &now,
            &mut positions,
        );
        let next = Arc::new(Published {
            shipment,
            reports: compiled.reports,
            items: current,
            last_accepted,
            since,
            now,
            versions: versions.clone(),
        });
        outputs.published.send_replace(Some(next.clone()));
        previous = Some(next);
    }
}

/// Per item, the snapshot that first held it as it is: `previous`'s for the same resource
/// (as its author wrote it: a status write does not change it) with the same verdict and,
/// when its last accepted version serves, the same one; else `now`.
fn since(
    previous: Option<&Published>,
    items: &[Item],
    reports: &[Report],
    now: &Since,
    positions: &mut Positions,
) -> Vec<Since> {
    let Some(previous) = previous else {
        return vec![now.clone(); items.len()];
    };
    positions.restart();
    items
        .iter()
        .zip(reports)
        .enumerate()
        .map(|(at, (item, report))| {
            let kept = positions.find(at, &item.origin).and_then(|i| {
                let before = &previous.items[i];
                let served_the_same = before.same_content(item)
                    && (!matches!(report.outcome, Outcome::Stale { .. })
                        || before.same_last_accepted(item));
                (previous.reports[i] == *report && served_the_same)
                    .then(|| previous.since[i].clone())
            });
            kept.unwrap_or_else(|| now.clone())
        })
        .collect()
}

/// Where each origin was in the previous compile's input. Sources keep their order, and a
/// change adds, removes or moves few documents: each is looked for where the one before it
/// was found, one place on, and the index of every origin is built only when it is not
/// there (hashing 10 000 origins per change was most of what `since` and
/// `log_new_verdicts` did). Reports are in the order of their items, so one `Positions`
/// serves both walks.
struct Positions<'a> {
    before: &'a [Item],
    /// Where the last document found was, less where it is now.
    shift: isize,
    index: Option<OriginIndex<'a>>,
}

/// Every place of every origin: the first in `first`, each next one in `next` (documents
/// have distinct origins but for problems reported against one file).
struct OriginIndex<'a> {
    first: HashMap<&'a crate::source::Origin, usize, foldhash::fast::RandomState>,
    next: Vec<Option<usize>>,
}

impl<'a> Positions<'a> {
    fn new(previous: Option<&'a Published>) -> Self {
        Self {
            before: previous.map_or(&[][..], |p| &p.items[..]),
            shift: 0,
            index: None,
        }
    }

    /// Before a walk from the first document.
    fn restart(&mut self) {
        self.shift = 0;
    }

    /// The index in the previous input of `origin`, at `at` in the new one.
    fn find(&mut self, at: usize, origin: &crate::source::Origin) -> Option<usize> {
        if let Some(i) = self.guess(at, origin) {
            return Some(i);
        }
        let found = self.index().first.get(origin).copied()?;
        self.shift = found as isize - at as isize;
        Some(found)
    }

    /// Whether any previous place of `origin` (at `at` now) holds what `matches`.
    fn any(
        &mut self,
        at: usize,
        origin: &crate::source::Origin,
        mut matches: impl FnMut(usize) -> bool,
    ) -> bool {
        if self.guess(at, origin).is_some_and(&mut matches) {
            return true;
        }
        let index = self.index();
        let mut place = index.first.get(origin).copied();
        while let Some(i) = place {
            if matches(i) {
                self.shift = i as isize - at as isize;
                return true;
            }
            place = index.next[i];
        }
        false
    }

    fn guess(&self, at: usize, origin: &crate::source::Origin) -> Option<usize> {
        let i = at.checked_add_signed(self.shift)?;
        self.before
            .get(i)
            .is_some_and(|b| b.origin == *origin)
            .then_some(i)
    }

    fn index(&mut self) -> &OriginIndex<'a> {
        let before = self.before;
        self.index.get_or_insert_with(|| {
            let mut index = OriginIndex {
                first: HashMap::with_capacity_and_hasher(before.len(), Default::default()),
                next: vec![None; before.len()],
            };
            // Backwards, so that each origin's chain runs forwards.
            for (i, item) in before.iter().enumerate().rev() {
                index.next[i] = index.first.insert(&item.origin, i);
            }
            index
        })
    }
}

/// The last accepted version of every resource of the source, so that a bad edit compiles
/// the previous version instead of dropping the resource. A resource that disappears from
/// the source is forgotten: a deletion deletes, and a later invalid document of the same
/// name starts out with nothing to fall back on.
#[derive(Default)]
struct Memory {
    versions: HashMap<ResourceKey, Remembered, foldhash::fast::RandomState>,
    /// Until the first compile, what sources recall from an earlier run (statuses) is all
    /// there is; afterwards this process's own memory decides, so a resource deleted and
    /// recreated meanwhile cannot bring back a version from before.
    started: bool,
    /// Compiles learned from so far.
    epoch: u64,
}

/// A remembered version, and on Kubernetes the object's uid: an object deleted and
/// recreated between two compiles does not inherit the old one's.
struct Remembered {
    uid: Option<Arc<str>>,
    version: Arc<LastAccepted>,
    /// The document last found to say what `version` says, if one did: the same one next
    /// time says it still, without comparing them again (on Kubernetes the version has no
    /// status or managed fields, the object has: 10 000 deep comparisons per change).
    read: Option<Arc<Resource>>,
    /// The last compile that saw it.
    epoch: u64,
}

/// The uid of the Kubernetes object an item is; `None` elsewhere.
fn uid(item: &Item) -> Option<&Arc<str>> {
    match &item.origin {
        crate::source::Origin::Kube { uid, .. } => Some(uid),
        _ => None,
    }
}

impl Memory {
    /// What is remembered for the item's resource (looked up without copying its key:
    /// at 10 000 resources, the copies were a good part of the controller's time).
    fn get(&self, item: &Item) -> Option<&Arc<LastAccepted>> {
        let remembered = self.versions.get(item.identity.as_ref()?)?;
        (remembered.uid.as_ref() == uid(item)).then_some(&remembered.version)
    }

    /// The items with `last_accepted` set from memory (or, on the first compile, as the
    /// source recalled it).
    fn recall(&self, items: &Items) -> Items {
        items
            .iter()
            .map(|item| {
                let remembered = self.get(item).cloned();
                let last_accepted = if self.started {
                    remembered
                } else {
                    remembered.or_else(|| item.last_accepted.clone())
                };
                Item {
                    last_accepted,
                    ..item.clone()
                }
            })
            .collect()
    }

    /// Remembers what this compile accepted; returns each item's last accepted version.
    /// Updated in place: most entries stay as they are, and building the whole map again
    /// was ten thousand inserts per change.
    fn learn(&mut self, items: &[Item], reports: &[Report]) -> Vec<Option<Arc<LastAccepted>>> {
        self.epoch += 1;
        let epoch = self.epoch;
        let mut now: Option<String> = None;
        let mut learned = vec![None; items.len()];
        for ((item, report), learned) in items.iter().zip(reports).zip(&mut learned) {
            let (Outcome::Accepted { .. }, Ok(resource), Some(identity)) =
                (&report.outcome, &item.parsed, &item.identity)
            else {
                continue;
            };
            // The very document this version was kept for last time: nothing to compare.
            if let Some(known) = self.versions.get_mut(identity)
                && known.uid.as_ref() == uid(item)
                && known
                    .read
                    .as_ref()
                    .is_some_and(|r| Arc::ptr_eq(r, resource))
                && known.version.generation == report.generation
                && item
                    .last_accepted
                    .as_ref()
                    .is_some_and(|last| Arc::ptr_eq(last, &known.version))
            {
                known.epoch = epoch;
                *learned = Some(known.version.clone());
                continue;
            }
            // The resource accepted last time, or one read again but the same (a Kubernetes
            // object after a status write, say): the same version, so nothing downstream
            // redoes it.
            let kept = item.last_accepted.as_ref().filter(|last| {
                last.generation == report.generation
                    && (Arc::ptr_eq(&last.resource, resource)
                        // Without a copy first, for what has nothing to strip (files).
                        || last.resource.same_exported(resource)
                        || last.resource == last_accepted_form(resource))
            });
            let version = kept.cloned().unwrap_or_else(|| {
                Arc::new(LastAccepted {
                    resource: last_accepted_form(resource),
                    generation: report.generation,
                    accepted_at: now
                        .get_or_insert_with(|| k8s_openapi::jiff::Timestamp::now().to_string())
                        .clone(),
                })
            });
            *learned = Some(version.clone());
            self.versions.insert(
                identity.clone(),
                Remembered {
                    uid: uid(item).cloned(),
                    version,
                    read: Some(resource.clone()),
                    epoch,
                },
            );
        }
        // Rejected documents keep what they had (a duplicate never displaces the original).
        for item in items {
            if let (Some(identity), Some(last)) = (&item.identity, &item.last_accepted)
                && self.versions.get(identity).is_none_or(|r| r.epoch != epoch)
            {
                self.versions.insert(
                    identity.clone(),
                    Remembered {
                        uid: uid(item).cloned(),
                        version: last.clone(),
                        read: None,
                        epoch,
                    },
                );
            }
        }
        // What this compile did not see is forgotten.
        self.versions
            .retain(|_, remembered| remembered.epoch == epoch);
        self.started = true;
        for (item, learned) in items.iter().zip(&mut learned) {
            if learned.is_none() {
                *learned = self.get(item).cloned();
            }
        }
        learned
    }
}

/// A resource as its last accepted version is kept: without status and server-managed
/// metadata, and without kubectl's copy of the whole object in an annotation (which would
/// make the stored version three times the size of the spec). The resource itself when it
/// has none of those, as files' resources do: kept once, not twice.
fn last_accepted_form(resource: &Arc<Resource>) -> Arc<Resource> {
    let mut form = resource.exported();
    form.strip_annotation("kubectl.kubernetes.io/last-applied-configuration");
    if form == **resource {
        resource.clone()
    } else {
        Arc::new(form)
    }
}

fn record_outcomes(metrics: &Metrics, reports: &[Report]) {
    // Counted first: a label lookup per resource was 10 000 of them per compile.
    let mut counts: HashMap<(&str, &str), i64> = HashMap::new();
    for report in reports {
        let kind = report.key.as_ref().map_or("Unknown", |k| k.kind.as_str());
        let outcome = match report.outcome {
            Outcome::Accepted { .. } => "accepted",
            Outcome::Stale { .. } => "stale",
            Outcome::Rejected { .. } => "rejected",
        };
        *counts.entry((kind, outcome)).or_default() += 1;
    }
    metrics.resources.reset();
    for ((kind, outcome), count) in counts {
        metrics
            .resources
            .with_label_values(&[kind, outcome])
            .set(count);
    }
}

/// Logs each rejection and warning once, when it first appears.
fn log_new_verdicts(previous: Option<&Published>, reports: &[Report], positions: &mut Positions) {
    let previous = previous.map_or(&[][..], |p| &p.reports[..]);
    positions.restart();
    // Among the reports of its origin before (see `Positions`): comparing every report
    // with every previous one is quadratic, at 10 000 resources seconds per change.
    let mut seen = |at: usize, report: &Report| {
        positions.any(at, &report.origin, |i| previous.get(i) == Some(report))
    };
    for (at, report) in reports.iter().enumerate() {
        if seen(at, report) {
            continue;
        }
        let resource = report
            .key
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        match &report.outcome {
            Outcome::Rejected { reason, errors } => {
                for error in errors {
                    tracing::warn!(
                        origin = %report.origin,
                        resource = %resource,
                        reason = reason.as_str(),
                        field = %error.field,
                        error = %error.message,
                        "resource rejected"
                    );
                }
            }
            Outcome::Stale {
                reason,
                errors,
                serving,
            } => {
                for error in errors {
                    tracing::warn!(
                        origin = %report.origin,
                        resource = %resource,
                        reason = reason.as_str(),
                        field = %error.field,
                        error = %error.message,
                        serving = %serving,
                        "resource rejected; its last accepted version goes on serving"
                    );
                }
            }
            Outcome::Accepted { warnings } => {
                for warning in warnings {
                    tracing::warn!(
                        origin = %report.origin,
                        resource = %resource,
                        field = %warning.field,
                        warning = %warning.message,
                        "resource accepted with a warning"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Origin;

    fn item(line: usize) -> Item {
        let path: Arc<std::path::Path> = Arc::from(std::path::Path::new("routes.yaml"));
        Item::new(
            Origin::File { path, line },
            Err(pavilion_crds::DocumentError {
                line,
                field: String::new(),
                message: String::new(),
            }),
        )
    }

    /// Documents are found where they were before, after one was added or removed, and
    /// after they moved; a new one is found nowhere.
    #[test]
    fn positions_find_every_document_of_the_previous_set() {
        let before: Vec<Item> = [1, 2, 3, 4, 5, 6].map(item).into();
        let mut positions = Positions {
            before: &before,
            shift: 0,
            index: None,
        };
        // 7 added after 2, 4 removed, 6 moved to the front.
        let now = [6, 1, 2, 7, 3, 5].map(item);
        let found: Vec<Option<usize>> = now
            .iter()
            .enumerate()
            .map(|(at, item)| positions.find(at, &item.origin))
            .collect();
        assert_eq!(found, [Some(5), Some(0), Some(1), None, Some(2), Some(4)]);
        positions.restart();
        let same: Vec<Option<usize>> = before
            .iter()
            .enumerate()
            .map(|(at, item)| positions.find(at, &item.origin))
            .collect();
        assert_eq!(same, [0, 1, 2, 3, 4, 5].map(Some));
    }

    /// Problems reported against one file share its origin: each of its places is looked at.
    #[test]
    fn positions_look_at_every_place_of_a_shared_origin() {
        let before: Vec<Item> = [1, 2, 1, 3].map(item).into();
        let mut positions = Positions {
            before: &before,
            shift: 0,
            index: None,
        };
        let origin = |line| item(line).origin;
        let mut visited = Vec::new();
        let found = positions.any(5, &origin(1), |i| {
            visited.push(i);
            i == 2
        });
        assert!(found);
        assert_eq!(visited, [0, 2]);
        assert!(!positions.any(0, &origin(1), |i| i == 1));
        assert!(!positions.any(1, &origin(4), |_| true));
    }
}
