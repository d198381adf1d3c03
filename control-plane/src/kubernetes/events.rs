//! Kubernetes Events (`events.k8s.io/v1`) on Pavilion resources, so `kubectl describe` and
//! `kubectl get events` tell what happened: a rejection, acceptance after a rejection, a
//! conflict (a warning such as a shadowed match), a data plane refusing the snapshot.
//!
//! kube's [`Recorder`] folds a repeat of the same event into one with a growing count
//! (`series`), as client-go's recorder does; on top of it, each object gets the same
//! spam filter client-go's correlator applies — a burst of 25 events, then one per five
//! minutes — so a resource flapping for hours cannot flood the API server.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use pavilion_crds::API_VERSION;

use crate::source::Origin;
use crate::writeback::StoredCondition;

/// Events an object may emit at once before the filter holds it to the refill rate.
const BURST: f64 = 25.0;
/// One more event per this interval once the burst is spent.
const REFILL_EVERY: Duration = Duration::from_secs(300);
/// An event's note may hold at most 1 kB.
const MAX_NOTE: usize = 1024;

/// What a status change is worth telling, derived from the previous and next conditions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub warning: bool,
    pub reason: String,
    pub note: String,
}

impl Notice {
    /// The notices a change from `previous` to `next` conditions deserves: none when the
    /// verdict is unchanged (so a restart or a new leader repeats nothing).
    pub fn between(previous: Option<&[StoredCondition]>, next: &[StoredCondition]) -> Vec<Notice> {
        let find = |conditions: Option<&[StoredCondition]>, kind: &str| {
            conditions.and_then(|c| c.iter().find(|c| c.kind == kind).cloned())
        };
        let mut notices = Vec::new();
        let (before, after) = (find(previous, "Accepted"), find(Some(next), "Accepted"));
        if let Some(after) = &after {
            let changed = before.as_ref().is_none_or(|b| {
                b.status != after.status || b.reason != after.reason || b.message != after.message
            });
            let was_refused = before.as_ref().is_some_and(|b| b.status == "False");
            // Refused, or accepted with a warning (a conflict such as a shadowed match).
            if changed && (after.status == "False" || after.reason == "AcceptedWithWarnings") {
                notices.push(Notice {
                    warning: true,
                    reason: after.reason.clone(),
                    note: after.message.clone(),
                });
            } else if was_refused && after.status == "True" {
                notices.push(Notice {
                    warning: false,
                    reason: "Accepted".into(),
                    note: format!("accepted again: {}", after.message),
                });
            }
        }
        let (before, after) = (find(previous, "Programmed"), find(Some(next), "Programmed"));
        if let Some(after) = after.filter(|a| a.reason == "Refused")
            && before.is_none_or(|b| b.reason != after.reason || b.message != after.message)
        {
            notices.push(Notice {
                warning: true,
                reason: after.reason,
                note: after.message,
            });
        }
        notices
    }
}

/// Publishes notices as events, filtered per object.
pub struct Events {
    recorder: Recorder,
    filter: SpamFilter,
}

impl Events {
    pub fn new(client: kube::Client, instance: &str) -> Self {
        let reporter = Reporter {
            controller: "pavilion-control".into(),
            instance: Some(instance.to_owned()),
        };
        Self {
            recorder: Recorder::new(client, reporter),
            filter: SpamFilter::default(),
        }
    }

    /// Publishes `notice` on the object at `origin`, unless its filter holds it back.
    /// Failures are logged, never retried: an event is a courtesy, the status is the record.
    pub async fn publish(&mut self, origin: &Origin, notice: &Notice) {
        let Origin::Kube { key, uid } = origin else {
            return;
        };
        if !self.filter.admit(&format!("{key}/{uid}"), Instant::now()) {
            tracing::debug!(resource = %key, reason = %notice.reason, "event held back by the spam filter");
            return;
        }
        let reference = ObjectReference {
            api_version: Some(API_VERSION.to_owned()),
            kind: Some(key.kind.as_str().to_owned()),
            namespace: Some(key.namespace.to_string()),
            name: Some(key.name.to_string()),
            uid: (!uid.is_empty()).then(|| uid.to_string()),
            ..ObjectReference::default()
        };
        let event = Event {
            type_: if notice.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: notice.reason.clone(),
            note: Some(truncate(&notice.note, MAX_NOTE)),
            action: "Compile".into(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &reference).await {
            tracing::warn!(resource = %key, %error, "cannot publish an event");
        }
    }
}

/// A token bucket per object: [`BURST`] tokens, one more every [`REFILL_EVERY`].
#[derive(Default)]
struct SpamFilter {
    buckets: HashMap<String, (f64, Instant)>,
}

impl SpamFilter {
    /// Objects tracked before full buckets (objects quiet for long) are forgotten.
    const MAX_TRACKED: usize = 10_000;

    fn admit(&mut self, object: &str, now: Instant) -> bool {
        if self.buckets.len() >= Self::MAX_TRACKED {
            self.buckets
                .retain(|_, (tokens, since)| refill(*tokens, *since, now) < BURST);
        }
        let (tokens, since) = self
            .buckets
            .entry(object.to_owned())
            .or_insert((BURST, now));
        *tokens = refill(*tokens, *since, now);
        *since = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn refill(tokens: f64, since: Instant, now: Instant) -> f64 {
    let earned = now.duration_since(since).as_secs_f64() / REFILL_EVERY.as_secs_f64();
    (tokens + earned).min(BURST)
}

/// At most `max` bytes, cut at a character boundary, with an ellipsis when cut.
fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max - '…'.len_utf8();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn condition(kind: &str, status: &str, reason: &str, message: &str) -> StoredCondition {
        StoredCondition {
            kind: kind.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            observed_generation: None,
            last_transition_time: "t".into(),
        }
    }

    #[test]
    fn only_changes_of_the_verdict_are_told() {
        let valid = [condition("Accepted", "True", "Accepted", "valid")];
        let broken = [condition(
            "Accepted",
            "False",
            "Invalid",
            "spec.rules: required",
        )];
        assert_eq!(Notice::between(None, &valid), []);
        assert_eq!(Notice::between(Some(&valid), &valid), []);
        let told = Notice::between(Some(&valid), &broken);
        assert_eq!(told.len(), 1);
        assert!(told[0].warning && told[0].reason == "Invalid");
        assert_eq!(Notice::between(Some(&broken), &broken), []);
        let again = Notice::between(Some(&broken), &valid);
        assert!(!again[0].warning && again[0].reason == "Accepted");
        let refused = [
            condition("Accepted", "True", "Accepted", "valid"),
            condition("Programmed", "False", "Refused", "data plane a refused"),
        ];
        assert_eq!(Notice::between(Some(&valid), &refused)[0].reason, "Refused");
    }

    #[test]
    fn the_filter_allows_a_burst_then_one_per_interval() {
        let mut filter = SpamFilter::default();
        let start = Instant::now();
        let admitted = (0..40).filter(|_| filter.admit("a", start)).count();
        assert_eq!(admitted, 25);
        assert!(filter.admit("b", start), "objects are filtered apart");
        let later = start + REFILL_EVERY;
        assert!(filter.admit("a", later));
        assert!(!filter.admit("a", later));
    }

    #[test]
    fn notes_are_cut_at_a_character_boundary() {
        let note = truncate(&"é".repeat(600), MAX_NOTE);
        assert!(note.len() <= MAX_NOTE && note.ends_with('…'));
    }
}
