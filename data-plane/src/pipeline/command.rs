//! The command API, on rules with `commands` (in place of `forward`): gRPC
//! `aggregate.gateway.v1.CommandService/SubmitCommand` and its JSON form `POST
//! …/{aggregate_type}/{aggregate_id}`, both sent as one gRPC call to the tenant's aggregate
//! shard with `x-tenant-id`, `x-request-id` and the identity headers, and both made safe to
//! retry: the first result of a `command_id` (per tenant) is replayed within the rule's
//! window, and the command runs once ([`crate::commands`]).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{CONTENT_TYPE, TE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri, Version};
use http_body_util::{BodyExt, Limited};
use pavilion_proto::commands::{SubmitCommandRequest, SubmitCommandResponse};
use prost::Message;
use serde_json::{Value, json};

use crate::body::{RequestBody, ResponseBody};
use crate::commands::{Begin, Commands, Outcome};
use crate::deny::{self, Deny, grpc};
use crate::headers::{X_REQUEST_ID, X_TENANT_ID};
use crate::runtime::Rule;
use crate::upstream::{Protocol, Target};

use super::{Context, Proxy};

/// The one gRPC method of the command API.
pub const SUBMIT_PATH: &str = "/aggregate.gateway.v1.CommandService/SubmitCommand";
/// Longest command id.
const MAX_COMMAND_ID: usize = 200;
static X_COMMAND_ID: http::HeaderName = http::HeaderName::from_static("x-command-id");
/// Set on an answer replayed from an earlier run of the same command id.
static X_COMMAND_REPLAYED: http::HeaderName = http::HeaderName::from_static("x-command-replayed");

pub(super) async fn serve(
    proxy: &Proxy,
    rule: &Rule,
    target: &Target,
    request: Request<RequestBody>,
    window: std::time::Duration,
    context: &mut Context<'_>,
) -> Result<Response<ResponseBody>, Deny> {
    let grpc = context.grpc;
    if request.method() != Method::POST {
        return Err(invalid("the command API takes POST"));
    }
    let tenant = context
        .tenant
        .as_ref()
        .and_then(|t| t.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| Deny::MissingTenant {
            route: rule.route.to_string(),
        })?;
    let path = request.uri().path().to_owned();
    let aggregate = if grpc {
        if path != SUBMIT_PATH {
            return Err(Deny::NotFound {
                method: Method::POST,
                path,
            });
        }
        None
    } else {
        Some(type_and_id(&path)?)
    };
    let limit = super::transform::body_limit(rule, &proxy.shared.limits);
    let body = Limited::new(
        request.into_body(),
        usize::try_from(limit).unwrap_or(usize::MAX),
    )
    .collect()
    .await
    .map_err(|error| {
        if error.is::<http_body_util::LengthLimitError>() {
            Deny::PayloadTooLarge { limit }
        } else {
            Deny::BadRequestBody {
                detail: error.to_string(),
            }
        }
    })?
    .to_bytes();
    let command = match aggregate {
        None => SubmitCommandRequest::decode(unframe(&body)?)
            .map_err(|e| invalid(format!("the message is not a SubmitCommandRequest: {e}")))?,
        Some((aggregate_type, aggregate_id)) => from_json(&body, aggregate_type, aggregate_id)?,
    };
    if command.command_id.is_empty() || command.command_id.len() > MAX_COMMAND_ID {
        return Err(invalid(format!(
            "command_id is required, at most {MAX_COMMAND_ID} bytes: it makes a retry safe"
        )));
    }
    if command.aggregate_type.is_empty() || command.aggregate_id.is_empty() {
        return Err(invalid("aggregate_type and aggregate_id are required"));
    }

    let commands = &proxy.shared.commands;
    let key = Commands::key(&tenant, &command.command_id);
    match commands.begin(&key, window).await {
        Begin::Done(outcome) => return render(outcome, grpc, true),
        Begin::InProgress => {
            return Err(Deny::CommandInProgress {
                command_id: command.command_id,
            });
        }
        Begin::New => {}
    }
    match submit(proxy, rule, target, &command, &tenant, context).await {
        Ok(outcome) => {
            commands.finish(&key, &outcome, window).await;
            render(outcome, grpc, false)
        }
        Err(deny) => {
            commands.forget(&key).await;
            Err(deny)
        }
    }
}

fn invalid(why: impl Into<String>) -> Deny {
    Deny::InvalidCommand { why: why.into() }
}

/// The aggregate type and id: the last two segments of the path, percent-decoded.
fn type_and_id(path: &str) -> Result<(String, String), Deny> {
    let mut segments = path.rsplit('/').filter(|s| !s.is_empty());
    let (Some(id), Some(kind)) = (segments.next(), segments.next()) else {
        return Err(invalid(
            "the path ends with /{aggregate_type}/{aggregate_id}",
        ));
    };
    let decode = |segment: &str| {
        let mut out = Vec::with_capacity(segment.len());
        let bytes = segment.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let escaped = (bytes[i] == b'%')
                .then(|| bytes.get(i + 1..i + 3))
                .flatten()
                .and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok());
            match escaped {
                Some(byte) => {
                    out.push(byte);
                    i += 3;
                }
                None => {
                    out.push(bytes[i]);
                    i += 1;
                }
            }
        }
        String::from_utf8(out).map_err(|_| invalid("the aggregate type and id must be UTF-8"))
    };
    Ok((decode(kind)?, decode(id)?))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonCommand {
    command_type: String,
    command_id: String,
    #[serde(default)]
    payload: Value,
    #[serde(default)]
    expected_version: Option<u64>,
}

fn from_json(
    body: &[u8],
    aggregate_type: String,
    aggregate_id: String,
) -> Result<SubmitCommandRequest, Deny> {
    let command: JsonCommand = serde_json::from_slice(body).map_err(|e| {
        invalid(format!(
            "expected {{\"command_type\",\"command_id\",\"payload\",\"expected_version\"?}}: {e}"
        ))
    })?;
    Ok(SubmitCommandRequest {
        aggregate_type,
        aggregate_id,
        command_type: command.command_type,
        command_id: command.command_id,
        payload: serde_json::to_vec(&command.payload).unwrap_or_default(),
        expected_version: command.expected_version,
    })
}

/// One gRPC message out of its length-prefixed frame (uncompressed only).
fn unframe(body: &Bytes) -> Result<Bytes, Deny> {
    let mut data = body.clone();
    if data.len() < 5 {
        return Err(invalid("the gRPC message is shorter than its frame"));
    }
    if data.get_u8() != 0 {
        return Err(invalid("compressed gRPC messages are not accepted"));
    }
    let length = data.get_u32() as usize;
    if data.len() != length {
        return Err(invalid(
            "the gRPC frame's length does not match its message",
        ));
    }
    Ok(data)
}

fn frame(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + message.len());
    out.put_u8(0);
    out.put_u32(message.len() as u32);
    out.put_slice(message);
    out.freeze()
}

/// One gRPC call to the shard; its status, message and (on success) response.
async fn submit(
    proxy: &Proxy,
    rule: &Rule,
    target: &Target,
    command: &SubmitCommandRequest,
    tenant: &str,
    context: &Context<'_>,
) -> Result<Outcome, Deny> {
    let route = || rule.route.to_string();
    if target.protocol != Protocol::H2c {
        tracing::warn!(
            route = &*rule.route,
            upstream = &*target.url,
            "the command API needs h2c:// aggregate shards"
        );
        return Err(Deny::UpstreamFailed { route: route() });
    }
    let uri = Uri::builder()
        .scheme(target.scheme.clone())
        .authority(target.authority.clone())
        .path_and_query(SUBMIT_PATH)
        .build()
        .map_err(|_| Deny::UpstreamFailed { route: route() })?;
    let mut request = Request::post(uri)
        .version(Version::HTTP_2)
        .body(RequestBody::full(frame(&command.encode_to_vec())))
        .map_err(|_| Deny::UpstreamFailed { route: route() })?;
    let headers = request.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(TE, HeaderValue::from_static("trailers"));
    headers.insert(&X_REQUEST_ID, context.request_id.clone());
    headers.insert(
        &crate::trace::TRACEPARENT,
        context.trace.upstream_traceparent(),
    );
    headers.insert(
        &crate::trace::X_CORRELATION_ID,
        context.trace.correlation_id.clone(),
    );
    if let Ok(tenant) = HeaderValue::from_str(tenant) {
        headers.insert(&X_TENANT_ID, tenant);
    }
    if let Ok(id) = HeaderValue::from_str(&command.command_id) {
        headers.insert(&X_COMMAND_ID, id);
    }
    if let (Some(auth), Some(identity)) = (&rule.auth, &context.identity) {
        auth.decorate(headers, identity);
    }
    let deadline = context.started + rule.timeout;
    let exchange = async {
        let response = proxy.upstreams.send(target, request).await.map_err(|error| {
            tracing::warn!(route = &*rule.route, upstream = &*target.url, %error, "the command could not be sent");
            Deny::UpstreamUnreachable { route: route() }
        })?;
        let (parts, body) = response.into_parts();
        let collected = body.collect().await.map_err(|error| {
            tracing::warn!(route = &*rule.route, %error, "the command's answer broke off");
            Deny::UpstreamFailed { route: route() }
        })?;
        let trailers = collected.trailers().cloned().unwrap_or_default();
        Ok::<_, Deny>((parts, trailers, collected.to_bytes()))
    };
    let (parts, trailers, body) =
        tokio::time::timeout_at(deadline, exchange)
            .await
            .map_err(|_| Deny::UpstreamTimeout {
                route: route(),
                timeout: rule.timeout,
            })??;
    // A trailers-only answer carries its status in the headers.
    let status_of = |map: &HeaderMap| {
        map.get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u32>().ok())
    };
    let Some(status) = status_of(&trailers).or_else(|| status_of(&parts.headers)) else {
        tracing::warn!(route = &*rule.route, status = %parts.status, "the aggregate shard answered without a gRPC status");
        return Err(Deny::UpstreamFailed { route: route() });
    };
    let message = trailers
        .get("grpc-message")
        .or_else(|| parts.headers.get("grpc-message"))
        .and_then(|v| v.to_str().ok())
        .map(percent_decoded)
        .unwrap_or_default();
    let body = if status == grpc::OK {
        let message = unframe(&body).map_err(|_| Deny::UpstreamFailed { route: route() })?;
        SubmitCommandResponse::decode(message.clone())
            .map_err(|_| Deny::UpstreamFailed { route: route() })?;
        message
    } else {
        Bytes::new()
    };
    Ok(Outcome {
        status,
        message,
        body,
    })
}

fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The shard's answer as the client asked: a gRPC message with its trailers, or JSON.
fn render(outcome: Outcome, grpc: bool, replayed: bool) -> Result<Response<ResponseBody>, Deny> {
    let mut response = if grpc {
        if outcome.status == grpc::OK {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from(grpc::OK));
            let mut response = Response::new(ResponseBody::Grpc(
                Some(frame(&outcome.body)),
                Some(trailers),
            ));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            response
        } else {
            deny::grpc_status_response(outcome.status, &outcome.message)
        }
    } else {
        if outcome.status != grpc::OK {
            return Err(Deny::CommandRejected {
                grpc: outcome.status,
                message: outcome.message,
            });
        }
        let answer = SubmitCommandResponse::decode(outcome.body)
            .map_err(|_| invalid("the remembered answer is unreadable"))?;
        let events: Vec<Value> = answer
            .events
            .iter()
            .map(|event| {
                json!({
                    "event_type": event.event_type,
                    "version": event.version,
                    "payload": serde_json::from_slice::<Value>(&event.payload)
                        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&event.payload).into_owned())),
                })
            })
            .collect();
        let body = json!({
            "aggregate_id": answer.aggregate_id,
            "version": answer.version,
            "events": events,
        });
        let mut response = Response::new(ResponseBody::local(body.to_string()));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    };
    if replayed {
        response
            .headers_mut()
            .insert(&X_COMMAND_REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_commands_take_type_and_id_from_the_path() {
        let (kind, id) = type_and_id("/v1/commands/order/o%2D1").unwrap();
        assert_eq!((kind.as_str(), id.as_str()), ("order", "o-1"));
        assert!(type_and_id("/v1").is_err());
        let command = from_json(
            br#"{"command_type":"Place","command_id":"c-1","payload":{"qty":2},"expected_version":3}"#,
            kind,
            id,
        )
        .unwrap();
        assert_eq!(command.payload, br#"{"qty":2}"#);
        assert_eq!(command.expected_version, Some(3));
        assert!(from_json(br#"{"command_id":"c"}"#, "a".into(), "b".into()).is_err());
    }

    #[test]
    fn frames_round_trip_and_malformed_ones_are_refused() {
        let framed = frame(b"abc");
        assert_eq!(unframe(&framed).unwrap(), Bytes::from_static(b"abc"));
        assert!(unframe(&Bytes::from_static(b"\0\0\0")).is_err());
        assert!(
            unframe(&Bytes::from_static(b"\x01\0\0\0\x01a")).is_err(),
            "compressed"
        );
        assert!(
            unframe(&Bytes::from_static(b"\0\0\0\0\x05a")).is_err(),
            "short"
        );
        assert_eq!(percent_decoded("version%20conflict"), "version conflict");
    }
}
