//! Turns the source's resource sets into published snapshots: compile the latest set,
//! log what changed in the verdicts, publish when the snapshot or a verdict changed.

use std::sync::Arc;
use std::time::Duration;

use pavilion_proto::Snapshot;
use tokio::sync::watch;

use crate::compile::{CompileOptions, Outcome, Report, compile_with};
use crate::metrics::Metrics;
use crate::source::Items;

/// Extra quiet time after a change, so a burst of source events compiles once.
const DEBOUNCE: Duration = Duration::from_millis(10);

/// A compiled snapshot with the verdict on every document it came from.
#[derive(Debug)]
pub struct Published {
    pub snapshot: Arc<Snapshot>,
    /// One per input item, in the same order as `items`.
    pub reports: Vec<Report>,
    /// The resource set it was compiled from.
    pub items: Items,
}

/// `None` until the source has listed everything once.
pub type PublishedReceiver = watch::Receiver<Option<Arc<Published>>>;

pub async fn run(
    mut items: watch::Receiver<Option<Items>>,
    published: watch::Sender<Option<Arc<Published>>>,
    metrics: Metrics,
    options: CompileOptions,
) {
    let options = Arc::new(options);
    let mut previous: Option<Arc<Published>> = None;
    while items.changed().await.is_ok() {
        tokio::time::sleep(DEBOUNCE).await;
        let Some(current) = items.borrow_and_update().clone() else {
            continue;
        };
        // Regexes are compiled while validating: keep that off the async threads.
        let inputs = current.clone();
        let options = options.clone();
        let compiled =
            match tokio::task::spawn_blocking(move || compile_with(&inputs, &options)).await {
                Ok(compiled) => compiled,
                Err(error) => {
                    tracing::error!(%error, "the compiler failed; keeping the last snapshot");
                    continue;
                }
            };
        metrics.compiles.inc();
        record_outcomes(&metrics, &compiled.reports);
        log_new_verdicts(previous.as_deref(), &compiled.reports);
        // Items too: what the mirror copies (labels, annotations) can change alone.
        let unchanged = previous.as_ref().is_some_and(|p| {
            p.snapshot.version == compiled.snapshot.version
                && p.reports == compiled.reports
                && p.items == current
        });
        if unchanged {
            continue;
        }
        if previous.as_ref().map(|p| &p.snapshot.version) != Some(&compiled.snapshot.version) {
            tracing::info!(
                version = %compiled.snapshot.version,
                routes = compiled.snapshot.routes.len(),
                "compiled a new snapshot"
            );
        }
        let next = Arc::new(Published {
            snapshot: Arc::new(compiled.snapshot),
            reports: compiled.reports,
            items: current,
        });
        published.send_replace(Some(next.clone()));
        previous = Some(next);
    }
}

fn record_outcomes(metrics: &Metrics, reports: &[Report]) {
    metrics.resources.reset();
    for report in reports {
        let kind = report.key.as_ref().map_or("Unknown", |k| k.kind.as_str());
        let outcome = if report.is_accepted() {
            "accepted"
        } else {
            "rejected"
        };
        metrics.resources.with_label_values(&[kind, outcome]).inc();
    }
}

/// Logs each rejection and warning once, when it first appears.
fn log_new_verdicts(previous: Option<&Published>, reports: &[Report]) {
    let seen = |report: &Report| previous.is_some_and(|p| p.reports.contains(report));
    for report in reports.iter().filter(|r| !seen(r)) {
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
                        message = %error.message,
                        "resource rejected"
                    );
                }
            }
            Outcome::Accepted { warnings } => {
                for warning in warnings {
                    tracing::warn!(
                        origin = %report.origin,
                        resource = %resource,
                        field = %warning.field,
                        message = %warning.message,
                        "resource accepted with a warning"
                    );
                }
            }
        }
    }
}
