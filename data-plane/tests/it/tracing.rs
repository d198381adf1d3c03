//! Tracing against a real OTLP receiver: a `TraceService` server built from the
//! collector's own protos (`opentelemetry-proto`) on loopback, the data plane exporting to
//! it, a real upstream echoing what it received. The spans arrive with the right trace,
//! parent/child links, kinds and attributes; trace and correlation ids are continued,
//! generated, echoed and propagated; the sampling ratio and the client's flag are obeyed.

use std::collections::HashMap;
use std::time::Duration;

use http::Request;
use http_body_util::Full;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use pavilion_data::{Config, DataPlane};
use pavilion_tests::Upstream;
use pavilion_tests::client::{HttpClient, Reply};
use pavilion_tests::snapshot::catch_all;
use tokio::sync::mpsc;

/// The collector side: every exported span, with its resource's service name.
struct Receiver(mpsc::UnboundedSender<(String, Span)>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref()?.value.as_ref())
                .map(|v| match v {
                    AnyValue::StringValue(s) => s.clone(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    let _ = self.0.send((service.clone(), span));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

async fn receiver() -> (String, mpsc::UnboundedReceiver<(String, Span)>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (sender, spans) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Receiver(sender)))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    (format!("http://{addr}"), spans)
}

async fn data_plane(endpoint: &str, ratio: f64, upstream: &Upstream) -> DataPlane {
    let mut config = Config::local();
    config.trace_endpoint = Some(endpoint.to_owned());
    config.trace_sample_ratio = ratio;
    config.node_id = "dp-trace".into();
    let dp = pavilion_data::start(config).await.unwrap();
    dp.apply(catch_all("v1", "shop/orders", &upstream.url()))
        .await
        .unwrap();
    dp
}

async fn get(dp: &DataPlane, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut request = Request::get(format!("http://{}{path}", dp.addr));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    HttpClient::http1()
        .send(request.body(Full::default()).unwrap())
        .await
        .unwrap()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// (trace id, parent id, sampled) of a traceparent header.
fn traceparent(value: &str) -> (String, String, bool) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    assert_eq!(parts[0], "00");
    (parts[1].into(), parts[2].into(), parts[3] == "01")
}

/// Spans of `trace_id` until `count` arrived (within 10 s).
async fn spans_of(
    spans: &mut mpsc::UnboundedReceiver<(String, Span)>,
    trace_id: &str,
    count: usize,
) -> Vec<(String, Span)> {
    let mut found = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while found.len() < count {
        let next = tokio::time::timeout_at(deadline, spans.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "only {} of {count} spans of {trace_id} arrived",
                    found.len()
                )
            })
            .expect("receiver open");
        if hex(&next.1.trace_id) == trace_id {
            found.push(next);
        }
    }
    found
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref()?.value.as_ref())
        .map(|v| match v {
            AnyValue::StringValue(s) => s.clone(),
            AnyValue::IntValue(i) => i.to_string(),
            other => format!("{other:?}"),
        })
}

const PHASES: [&str; 14] = [
    "admit",
    "route",
    "cors",
    "ip",
    "limits",
    "authn",
    "tenant",
    "authorize",
    "circuit",
    "placement",
    "limits-id",
    "quota",
    "transform",
    "upstream",
];

#[tokio::test]
async fn a_client_trace_is_continued_with_a_span_per_phase_and_the_upstream_as_a_child() {
    let (endpoint, mut spans) = receiver().await;
    let upstream = Upstream::start("u1").await.unwrap();
    let dp = data_plane(&endpoint, 0.0, &upstream).await;

    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let reply = get(
        &dp,
        "/orders/7",
        &[
            ("traceparent", incoming),
            ("x-correlation-id", "order-flow-7"),
        ],
    )
    .await;
    assert_eq!(reply.status, 200);
    // Echoed: the same trace, with this gateway's span as the parent to report to.
    let (trace_id, server_span, sampled) = traceparent(reply.header("traceparent").unwrap());
    assert_eq!(trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert!(sampled, "the client's sampled flag is followed at ratio 0");
    assert_ne!(server_span, "00f067aa0ba902b7");
    assert_eq!(reply.header("x-correlation-id"), Some("order-flow-7"));
    // Propagated: the upstream is a child of the upstream call, not of the client.
    let seen = &reply.json()["headers"];
    let (upstream_trace, upstream_parent, _) = traceparent(seen["traceparent"].as_str().unwrap());
    assert_eq!(upstream_trace, trace_id);
    assert_eq!(seen["x-correlation-id"], "order-flow-7");

    let spans = spans_of(&mut spans, &trace_id, PHASES.len() + 1).await;
    let by_name: HashMap<&str, &Span> = spans.iter().map(|(_, s)| (s.name.as_str(), s)).collect();
    assert!(spans.iter().all(|(service, _)| service == "pavilion-data"));
    let server = by_name["GET shop/orders"];
    assert_eq!(server.kind, SpanKind::Server as i32);
    assert_eq!(hex(&server.span_id), server_span);
    assert_eq!(hex(&server.parent_span_id), "00f067aa0ba902b7");
    assert_eq!(
        attribute(server, "http.request.method").as_deref(),
        Some("GET")
    );
    assert_eq!(attribute(server, "url.path").as_deref(), Some("/orders/7"));
    assert_eq!(
        attribute(server, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(
        attribute(server, "pavilion.route").as_deref(),
        Some("shop/orders")
    );
    assert_eq!(
        attribute(server, "pavilion.correlation_id").as_deref(),
        Some("order-flow-7")
    );
    assert_eq!(
        attribute(server, "pavilion.request_id").as_deref(),
        reply.header("x-request-id")
    );
    for phase in PHASES {
        let span = by_name
            .get(phase)
            .unwrap_or_else(|| panic!("no {phase} span in {:?}", by_name.keys()));
        assert_eq!(hex(&span.parent_span_id), server_span, "{phase}");
        assert!(
            span.start_time_unix_nano >= server.start_time_unix_nano,
            "{phase}"
        );
        assert!(
            span.end_time_unix_nano <= server.end_time_unix_nano,
            "{phase}"
        );
    }
    let call = by_name["upstream"];
    assert_eq!(call.kind, SpanKind::Client as i32);
    assert_eq!(hex(&call.span_id), upstream_parent);
    assert_eq!(
        attribute(call, "url.full").as_deref(),
        Some(upstream.url().as_str())
    );
    assert_eq!(by_name["route"].kind, SpanKind::Internal as i32);
    dp.stop().await;
}

#[tokio::test]
async fn traces_start_here_when_missing_or_malformed_and_refusals_mark_their_phase() {
    let (endpoint, mut spans) = receiver().await;
    let upstream = Upstream::start("u1").await.unwrap();
    let dp = data_plane(&endpoint, 1.0, &upstream).await;

    // A restarted trace drops the client's tracestate (it belongs to another trace); a
    // continued one passes it on.
    let restarted = get(
        &dp,
        "/x",
        &[("traceparent", "00-zzzz-bad-01"), ("tracestate", "a=1")],
    )
    .await;
    assert!(restarted.json()["headers"].get("tracestate").is_none());
    let continued = get(
        &dp,
        "/x",
        &[
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("tracestate", "a=1"),
        ],
    )
    .await;
    assert_eq!(continued.json()["headers"]["tracestate"], "a=1");

    for headers in [&[][..], &[("traceparent", "00-zzzz-bad-01")][..]] {
        let reply = get(&dp, "/x", headers).await;
        let (trace_id, span, sampled) = traceparent(reply.header("traceparent").unwrap());
        assert_eq!(trace_id.len(), 32);
        assert_ne!(trace_id, "0".repeat(32));
        assert!(sampled, "ratio 1 samples every new trace");
        // Without a client id, the correlation id is the request id.
        assert_eq!(
            reply.header("x-correlation-id"),
            reply.header("x-request-id")
        );
        let found = spans_of(&mut spans, &trace_id, PHASES.len() + 1).await;
        let server = found
            .iter()
            .map(|(_, s)| s)
            .find(|s| s.kind == SpanKind::Server as i32)
            .unwrap();
        assert_eq!(hex(&server.span_id), span);
        assert!(server.parent_span_id.is_empty() || server.parent_span_id == [0; 8]);
    }

    // A refusal: the request span says 400 and the admit phase holds the error.
    let reply = get(&dp, "/a%00b", &[]).await;
    assert_eq!(reply.status, 400);
    let (trace_id, _, _) = traceparent(reply.header("traceparent").unwrap());
    let found = spans_of(&mut spans, &trace_id, 2).await;
    let admit = found
        .iter()
        .map(|(_, s)| s)
        .find(|s| s.name == "admit")
        .unwrap();
    let status = admit.status.as_ref().unwrap();
    assert_eq!(status.code, 2, "error status on the deciding phase");
    assert_eq!(status.message, "bad_request");
    dp.stop().await;
}

#[tokio::test]
async fn unsampled_requests_export_nothing_but_still_carry_their_trace() {
    let (endpoint, mut spans) = receiver().await;
    let upstream = Upstream::start("u1").await.unwrap();
    let dp = data_plane(&endpoint, 0.0, &upstream).await;
    let mut unsampled = Vec::new();
    for _ in 0..20 {
        let reply = get(&dp, "/x", &[]).await;
        let (trace_id, _, sampled) = traceparent(reply.header("traceparent").unwrap());
        assert!(!sampled);
        // Propagated anyway, so the upstream's own tracing can join the trace.
        let seen = traceparent(reply.json()["headers"]["traceparent"].as_str().unwrap());
        assert_eq!(seen.0, trace_id);
        unsampled.push(trace_id);
    }
    // A client-sampled request after them: once its spans are in, nothing else came.
    let sampled = "00-11111111111111111111111111111111-2222222222222222-01";
    get(&dp, "/x", &[("traceparent", sampled)]).await;
    spans_of(
        &mut spans,
        "11111111111111111111111111111111",
        PHASES.len() + 1,
    )
    .await;
    while let Ok((_, span)) = spans.try_recv() {
        assert!(
            !unsampled.contains(&hex(&span.trace_id)),
            "an unsampled request was exported"
        );
    }
    dp.stop().await;
}
