//! OTLP/gRPC export of the recorded spans, off the request path: requests hand their
//! spans to a bounded queue (dropping, counted in `pavilion_trace_spans_dropped_total`,
//! when it is full), and one task sends them in batches of up to 512 or every second
//! through `opentelemetry-otlp`'s exporter. Flushed on shutdown.

use std::borrow::Cow;
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks};
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use tokio::sync::{mpsc, watch};

use super::{Recording, Trace};

/// Requests whose spans may wait for export; beyond it they are dropped.
const QUEUE: usize = 4096;
const BATCH: usize = 512;
const EVERY: Duration = Duration::from_secs(1);

/// Where the request path hands its spans.
pub struct SpanQueue {
    sender: mpsc::Sender<Vec<SpanData>>,
    dropped: IntCounter,
    scope: InstrumentationScope,
}

#[derive(Debug, thiserror::Error)]
#[error("OTLP exporter for {endpoint}: {message}")]
pub struct ExportError {
    endpoint: String,
    message: String,
}

/// What the request's span says about how it ended.
pub struct Ended<'a> {
    pub status: u16,
    pub route: Option<&'a str>,
    pub upstream: Option<&'a str>,
    pub error: Option<&'a str>,
    pub tenant: Option<&'a str>,
    pub client: std::net::IpAddr,
    pub request_id: &'a str,
}

impl SpanQueue {
    /// Starts the export task (on the caller's runtime) towards `endpoint`
    /// (`http://HOST:4317`), naming this process `service.instance.id = node_id`.
    pub fn start(
        endpoint: &str,
        node_id: &str,
        registry: &Registry,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), ExportError> {
        let error = |e: &dyn std::fmt::Display| ExportError {
            endpoint: endpoint.to_owned(),
            message: e.to_string(),
        };
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| error(&e))?;
        exporter.set_resource(
            &Resource::builder_empty()
                .with_attributes([
                    KeyValue::new("service.name", "pavilion-data"),
                    KeyValue::new("service.version", pavilion_telemetry::build::VERSION),
                    KeyValue::new("service.instance.id", node_id.to_owned()),
                ])
                .build(),
        );
        let dropped = IntCounter::new(
            "pavilion_trace_spans_dropped_total",
            "Spans not exported because the export queue was full (the collector is slow or down).",
        )
        .expect("valid metric");
        let exported = IntCounterVec::new(
            Opts::new(
                "pavilion_trace_spans_exported_total",
                "Spans handed to the OTLP collector, by result (ok, error).",
            ),
            &["result"],
        )
        .expect("valid metric");
        for metric in [
            Box::new(dropped.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(exported.clone()),
        ] {
            registry.register(metric).expect("registered once");
        }
        let (sender, receiver) = mpsc::channel(QUEUE);
        let task = tokio::spawn(run(exporter, receiver, exported, shutdown));
        let scope = InstrumentationScope::builder("pavilion-data")
            .with_version(pavilion_telemetry::build::VERSION)
            .build();
        Ok((
            Self {
                sender,
                dropped,
                scope,
            },
            task,
        ))
    }

    /// Hands over the spans of a finished request (never waits).
    pub fn send(&self, trace: &Trace, recording: Recording, ended: Ended<'_>) {
        // A full queue drops before any span is built.
        let Ok(permit) = self.sender.try_reserve() else {
            self.dropped.inc_by(recording.phases.len() as u64 + 1);
            return;
        };
        permit.send(spans(trace, recording, &ended, &self.scope));
    }
}

async fn run(
    exporter: opentelemetry_otlp::SpanExporter,
    mut receiver: mpsc::Receiver<Vec<SpanData>>,
    exported: IntCounterVec,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut batch: Vec<SpanData> = Vec::with_capacity(BATCH);
    let mut tick = tokio::time::interval(EVERY);
    loop {
        let stopping = tokio::select! {
            spans = receiver.recv() => match spans {
                Some(spans) => {
                    batch.extend(spans);
                    if batch.len() < BATCH {
                        continue;
                    }
                    false
                }
                None => true,
            },
            _ = tick.tick() => false,
            _ = shutdown.changed() => true,
        };
        if stopping {
            // What is queued goes too.
            while let Ok(spans) = receiver.try_recv() {
                batch.extend(spans);
            }
        }
        if !batch.is_empty() {
            let count = batch.len() as u64;
            let outcome = exporter.export(std::mem::take(&mut batch)).await;
            let result = if outcome.is_ok() { "ok" } else { "error" };
            if let Err(error) = outcome {
                tracing::warn!(%error, spans = count, "cannot export spans");
            }
            exported.with_label_values(&[result]).inc_by(count);
        }
        if stopping {
            return;
        }
    }
}

fn at(recording: &Recording, instant: Instant) -> SystemTime {
    recording.wall + instant.saturating_duration_since(recording.started)
}

/// The request's SERVER span and one span per phase, the upstream call a CLIENT span.
fn spans(
    trace: &Trace,
    recording: Recording,
    ended: &Ended<'_>,
    scope: &InstrumentationScope,
) -> Vec<SpanData> {
    let end = Instant::now();
    let trace_id = TraceId::from_bytes(trace.trace_id);
    let context = |span_id: [u8; 8]| {
        SpanContext::new(
            trace_id,
            SpanId::from_bytes(span_id),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        )
    };
    let span = |span_id: [u8; 8],
                parent: [u8; 8],
                remote: bool,
                kind: SpanKind,
                name: Cow<'static, str>,
                (start, stop): (Instant, Instant),
                attributes: Vec<KeyValue>,
                status: Status| SpanData {
        span_context: context(span_id),
        parent_span_id: SpanId::from_bytes(parent),
        parent_span_is_remote: remote,
        span_kind: kind,
        name,
        start_time: at(&recording, start),
        end_time: at(&recording, stop),
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status,
        instrumentation_scope: scope.clone(),
    };
    let mut spans = Vec::with_capacity(recording.phases.len() + 1);
    let last = recording.phases.len().saturating_sub(1);
    for (i, (name, id, start)) in recording.phases.iter().enumerate() {
        let stop = recording
            .phases
            .get(i + 1)
            .map_or(end, |(_, _, next)| *next);
        let upstream = *name == "upstream";
        let mut attributes = Vec::new();
        if upstream && let Some(url) = ended.upstream {
            attributes.push(KeyValue::new("url.full", url.to_owned()));
        }
        // The phase running when the request ended is the one that decided a refusal.
        let status = match ended.error {
            Some(code) if i == last => Status::error(code.to_owned()),
            _ => Status::Unset,
        };
        spans.push(span(
            *id,
            trace.span_id,
            false,
            if upstream {
                SpanKind::Client
            } else {
                SpanKind::Internal
            },
            Cow::Borrowed(*name),
            (*start, stop),
            attributes,
            status,
        ));
    }
    let mut attributes = vec![
        KeyValue::new("http.request.method", recording.method.as_str().to_owned()),
        KeyValue::new("url.path", recording.path.clone()),
        KeyValue::new("http.response.status_code", i64::from(ended.status)),
        KeyValue::new("client.address", ended.client.to_string()),
        KeyValue::new("pavilion.request_id", ended.request_id.to_owned()),
        KeyValue::new(
            "pavilion.correlation_id",
            trace.correlation_id.to_str().unwrap_or_default().to_owned(),
        ),
    ];
    if let Some(host) = &recording.host {
        attributes.push(KeyValue::new("server.address", host.clone()));
    }
    for (key, value) in [
        ("pavilion.route", ended.route),
        ("pavilion.upstream", ended.upstream),
        ("pavilion.error", ended.error),
        ("pavilion.tenant", ended.tenant),
    ] {
        if let Some(value) = value {
            attributes.push(KeyValue::new(key, value.to_owned()));
        }
    }
    // A server span is in error for 5xx only (the client's 4xx is the client's).
    let status = if ended.status >= 500 {
        Status::error(ended.error.unwrap_or("server error").to_owned())
    } else {
        Status::Unset
    };
    let name = match ended.route {
        Some(route) => format!("{} {route}", recording.method),
        None => recording.method.to_string(),
    };
    spans.push(span(
        trace.span_id,
        trace.parent.unwrap_or([0; 8]),
        trace.parent.is_some(),
        SpanKind::Server,
        Cow::Owned(name),
        (recording.started, end),
        attributes,
        status,
    ));
    spans
}
