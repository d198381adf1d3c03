//! The control plane's Prometheus metrics.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub compiles: IntCounter,
    pub resources: IntGaugeVec,
    pub connected: IntGauge,
    pub acks: IntCounter,
    pub nacks: IntCounter,
    /// Snapshots sent to data planes, by `form`: `full` or `delta`.
    pub snapshots_sent: IntCounterVec,
    /// 1 while the source is reachable.
    pub source_up: IntGauge,
    /// Documents the status write-back has yet to look at in its current pass.
    pub status_backlog: IntGauge,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        pavilion_telemetry::build::register(&registry);
        let compiles = IntCounter::new(
            "pavilion_control_compiles_total",
            "Snapshots compiled from the resource set.",
        )
        .expect("valid metric");
        let resources = IntGaugeVec::new(
            Opts::new(
                "pavilion_control_resources",
                "Documents in the last compile, by kind and outcome.",
            ),
            &["kind", "outcome"],
        )
        .expect("valid metric");
        let connected = IntGauge::new(
            "pavilion_control_connected_data_planes",
            "Data planes with an open snapshot stream.",
        )
        .expect("valid metric");
        let acks = IntCounter::new(
            "pavilion_control_snapshot_acks_total",
            "Snapshots data planes accepted.",
        )
        .expect("valid metric");
        let nacks = IntCounter::new(
            "pavilion_control_snapshot_nacks_total",
            "Snapshots data planes refused.",
        )
        .expect("valid metric");
        let snapshots_sent = IntCounterVec::new(
            Opts::new(
                "pavilion_control_snapshots_sent_total",
                "Snapshots sent to data planes, whole (form=full) or as a change to the one the data plane runs (form=delta).",
            ),
            &["form"],
        )
        .expect("valid metric");
        let source_up = IntGauge::new(
            "pavilion_source_up",
            "1 while the control plane reaches its source (NATS, the Kubernetes API, the directory); 0 while it serves the last good state without it.",
        )
        .expect("valid metric");
        let status_backlog = IntGauge::new(
            "pavilion_control_status_backlog",
            "Documents whose status the write-back has yet to check (and write, when it changed) in its current pass; 0 when every status is written. After a start with many resources on Kubernetes this counts down as statuses are read and written, one request each.",
        )
        .expect("valid metric");
        for collector in [
            Box::new(source_up.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(status_backlog.clone()),
            Box::new(compiles.clone()),
            Box::new(resources.clone()),
            Box::new(connected.clone()),
            Box::new(acks.clone()),
            Box::new(nacks.clone()),
            Box::new(snapshots_sent.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        Self {
            registry,
            compiles,
            resources,
            connected,
            acks,
            nacks,
            snapshots_sent,
            source_up,
            status_backlog,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
