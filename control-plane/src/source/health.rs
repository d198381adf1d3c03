//! Whether the source is reachable right now. Losing it (NATS or the Kubernetes API gone, the
//! directory unreadable) stops nothing: the last good state keeps being compiled and served,
//! and `/ready` stays true. The loss is logged once as a WARN, counted by the
//! `pavilion_source_up` gauge, and shown in `/v1/status` with the error and since when.

use std::sync::{Arc, Mutex};

use prometheus::IntGauge;
use serde::Serialize;

/// A snapshot of the source's health, as `/v1/status` shows it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HealthState {
    pub up: bool,
    /// RFC 3339: when `up` last changed (or the control plane started).
    pub since: String,
    /// Why the source is down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Shared between the source (which reports) and the API and metrics (which show).
#[derive(Clone)]
pub struct SourceHealth {
    state: Arc<Mutex<HealthState>>,
    gauge: IntGauge,
}

impl SourceHealth {
    /// Down until the source first reads successfully.
    pub fn new(gauge: IntGauge) -> Self {
        gauge.set(0);
        Self {
            state: Arc::new(Mutex::new(HealthState {
                up: false,
                since: now(),
                error: Some("not read yet".into()),
            })),
            gauge,
        }
    }

    /// The source answered.
    pub fn up(&self) {
        let mut state = self.lock();
        if state.up {
            return;
        }
        if state.error.as_deref() != Some("not read yet") {
            tracing::info!("the source is reachable again");
        }
        *state = HealthState {
            up: true,
            since: now(),
            error: None,
        };
        self.gauge.set(1);
    }

    /// The source cannot be reached (or read): said once per loss, as a WARN.
    pub fn down(&self, error: &dyn std::fmt::Display) {
        let mut state = self.lock();
        let error = error.to_string();
        if state.up {
            tracing::warn!(%error, "lost the source; serving the last good state until it is back");
            state.up = false;
            state.since = now();
        }
        state.error = Some(error);
        self.gauge.set(0);
    }

    pub fn state(&self) -> HealthState {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HealthState> {
        // Only plain assignments happen under the lock: a poisoned state is still whole.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losses_and_recoveries_show_in_the_state_and_the_gauge() {
        let gauge = IntGauge::new("pavilion_source_up", "test").unwrap();
        let health = SourceHealth::new(gauge.clone());
        assert!(!health.state().up);
        health.up();
        assert!(health.state().up && gauge.get() == 1);
        health.down(&"connection refused");
        let state = health.state();
        assert!(!state.up && gauge.get() == 0);
        assert_eq!(state.error.as_deref(), Some("connection refused"));
        health.up();
        assert_eq!(health.state().error, None);
    }
}
