//! Responses the gateway writes itself: the JSON error envelope of API.md,
//! `{"error":{"code","message","request_id"}}`, naming what decided.

use std::time::Duration;

use http::{HeaderValue, Method, Response, StatusCode, header};

use crate::body::ResponseBody;

/// Why the gateway answers instead of the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deny {
    /// No snapshot yet: nothing is known about routes.
    NotReady,
    BadRequest(&'static str),
    /// 400: the client's request body broke while it was forwarded (bad chunked framing,
    /// cut off). Not an upstream failure: it counts against no upstream.
    BadRequestBody {
        detail: String,
    },
    NotFound {
        method: Method,
        path: String,
    },
    PayloadTooLarge {
        limit: u64,
    },
    HeadersTooLarge {
        limit: usize,
    },
    /// 431: more header fields than `--max-header-count`.
    TooManyHeaders {
        limit: usize,
    },
    /// Connecting to the chosen backend failed.
    UpstreamUnreachable {
        route: String,
    },
    /// The backend broke the exchange (reset, invalid response).
    UpstreamFailed {
        route: String,
    },
    UpstreamTimeout {
        route: String,
        timeout: Duration,
    },
    /// 401: no credentials, or they are not valid; `challenges` go into `WWW-Authenticate`.
    Unauthorized {
        code: &'static str,
        message: String,
        challenges: Box<[HeaderValue]>,
    },
    /// 403: the identity (or address) is known and has no right here.
    Forbidden {
        code: &'static str,
        message: String,
    },
    /// 429: over a rate limit; `headers` carry `Retry-After` and `RateLimit-*`.
    RateLimited {
        message: String,
        headers: Vec<(http::HeaderName, HeaderValue)>,
    },
    /// 503: a Redis limit that fails closed could not be checked.
    RateLimitUnavailable {
        message: String,
    },
    /// 429: a quota is used up until its window resets.
    QuotaExceeded {
        message: String,
        retry_after_secs: u64,
    },
    /// 503: the rule's concurrency limit is reached; shed before the upstream falls over.
    Overloaded {
        message: String,
    },
    /// 503: the backend's places under the rule's `connections.max` stayed taken for the
    /// queue timeout.
    UpstreamBusy {
        route: String,
        max: u32,
        waited: Duration,
    },
    /// 503: every backend of the rule is failing its health checks or ejected.
    NoHealthyUpstream {
        route: String,
    },
    /// 503: the rule's circuit breaker is open (or half-open with its probes out).
    CircuitOpen {
        route: String,
        retry_after: Duration,
    },
    /// 400: a rule with `tenancy` and no `x-tenant-id`.
    MissingTenant {
        route: String,
    },
    /// 400: `x-tenant-id` is not a tenant id (or appears twice).
    InvalidTenant {
        why: &'static str,
    },
    /// 403: the principal is not a member of the tenant it names.
    TenantForbidden {
        route: String,
        tenant: String,
    },
    /// 404: no placement names the tenant (the same for every unknown tenant).
    UnknownTenant {
        tenant: String,
    },
    /// 503: the tenant is placed, but not for the service kind the rule needs.
    NoPlacement {
        tenant: String,
        service: &'static str,
    },
    /// 400: a command without what the command API needs.
    InvalidCommand {
        why: String,
    },
    /// 409: the same command id is running right now (a concurrent retry).
    CommandInProgress {
        command_id: String,
    },
    /// The aggregate shard refused the command with a gRPC status (JSON clients get the
    /// matching HTTP status).
    CommandRejected {
        grpc: u32,
        message: String,
    },
}

/// Longest request path echoed back in a message.
const MAX_ECHOED_PATH: usize = 200;

impl Deny {
    /// A rate-limit or quota verdict as a response naming the route.
    pub fn from_refusal(refusal: crate::ratelimit::Refusal, rule: &crate::runtime::Rule) -> Self {
        use crate::ratelimit::Refusal;
        let route = &rule.route;
        match refusal {
            Refusal::Limited {
                message, headers, ..
            } => Deny::RateLimited {
                message: format!("route {route}: {message}"),
                headers,
            },
            Refusal::Unavailable { message } => Deny::RateLimitUnavailable {
                message: format!("route {route}: {message}"),
            },
            Refusal::QuotaExceeded {
                message,
                retry_after_secs,
            } => Deny::QuotaExceeded {
                message: format!("route {route}: {message}"),
                retry_after_secs,
            },
        }
    }

    /// An authentication verdict as a response, with the rule's challenges on a 401.
    pub fn from_reject(reject: crate::auth::Reject, auth: &crate::auth::RuleAuth) -> Self {
        let challenges = auth.challenges(&reject).into();
        let code = reject.code();
        match reject {
            crate::auth::Reject::Forbidden { message, .. } => Deny::Forbidden { code, message },
            reject => Deny::Unauthorized {
                code,
                message: reject.into_message(),
                challenges,
            },
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Deny::NotReady => StatusCode::SERVICE_UNAVAILABLE,
            Deny::BadRequest(_) | Deny::BadRequestBody { .. } => StatusCode::BAD_REQUEST,
            Deny::NotFound { .. } => StatusCode::NOT_FOUND,
            Deny::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Deny::HeadersTooLarge { .. } | Deny::TooManyHeaders { .. } => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            Deny::UpstreamUnreachable { .. } | Deny::UpstreamFailed { .. } => {
                StatusCode::BAD_GATEWAY
            }
            Deny::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Deny::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Deny::Forbidden { .. } => StatusCode::FORBIDDEN,
            Deny::RateLimited { .. } | Deny::QuotaExceeded { .. } => StatusCode::TOO_MANY_REQUESTS,
            Deny::RateLimitUnavailable { .. }
            | Deny::Overloaded { .. }
            | Deny::NoPlacement { .. }
            | Deny::NoHealthyUpstream { .. }
            | Deny::UpstreamBusy { .. }
            | Deny::CircuitOpen { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Deny::MissingTenant { .. }
            | Deny::InvalidTenant { .. }
            | Deny::InvalidCommand { .. } => StatusCode::BAD_REQUEST,
            Deny::CommandInProgress { .. } => StatusCode::CONFLICT,
            Deny::CommandRejected { grpc, .. } => http_status_of(*grpc),
            Deny::TenantForbidden { .. } => StatusCode::FORBIDDEN,
            Deny::UnknownTenant { .. } => StatusCode::NOT_FOUND,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Deny::NotReady => "not_ready",
            Deny::BadRequest(_) | Deny::BadRequestBody { .. } => "bad_request",
            Deny::NotFound { .. } => "not_found",
            Deny::PayloadTooLarge { .. } => "payload_too_large",
            Deny::HeadersTooLarge { .. } | Deny::TooManyHeaders { .. } => "headers_too_large",
            Deny::UpstreamUnreachable { .. } => "upstream_unreachable",
            Deny::UpstreamFailed { .. } => "upstream_failed",
            Deny::UpstreamTimeout { .. } => "upstream_timeout",
            Deny::Unauthorized { code, .. } | Deny::Forbidden { code, .. } => code,
            Deny::RateLimited { .. } => "rate_limited",
            Deny::QuotaExceeded { .. } => "quota_exceeded",
            Deny::RateLimitUnavailable { .. } => "rate_limit_unavailable",
            Deny::Overloaded { .. } => "overloaded",
            Deny::NoHealthyUpstream { .. } => "no_healthy_upstream",
            Deny::UpstreamBusy { .. } => "upstream_busy",
            Deny::CircuitOpen { .. } => "circuit_open",
            Deny::MissingTenant { .. } => "missing_tenant",
            Deny::InvalidTenant { .. } => "invalid_tenant",
            Deny::TenantForbidden { .. } => "tenant_forbidden",
            Deny::UnknownTenant { .. } => "unknown_tenant",
            Deny::NoPlacement { .. } => "no_placement",
            Deny::InvalidCommand { .. } => "invalid_command",
            Deny::CommandInProgress { .. } => "command_in_progress",
            Deny::CommandRejected { .. } => "command_rejected",
        }
    }

    /// Envoy-style response flags for the access log: why the gateway answered, in the
    /// terms operators of other proxies grep for (`UF` upstream connection failure, `UC`
    /// upstream connection termination or invalid response, `UT` upstream timeout, `NR` no
    /// route, `RL` rate limited, `RLSE` rate-limit service error, `UO` overflow — the
    /// concurrency limit or an open circuit, `UH` no healthy upstream, `DPE` downstream protocol error); `-` when none applies.
    pub fn flags(&self) -> &'static str {
        match self {
            Deny::UpstreamUnreachable { .. } => "UF",
            Deny::UpstreamFailed { .. } => "UC",
            Deny::UpstreamTimeout { .. } => "UT",
            Deny::NotFound { .. } => "NR",
            Deny::RateLimited { .. } | Deny::QuotaExceeded { .. } => "RL",
            Deny::RateLimitUnavailable { .. } => "RLSE",
            Deny::Overloaded { .. } | Deny::CircuitOpen { .. } | Deny::UpstreamBusy { .. } => "UO",
            Deny::NoHealthyUpstream { .. } => "UH",
            Deny::BadRequest(_)
            | Deny::BadRequestBody { .. }
            | Deny::HeadersTooLarge { .. }
            | Deny::TooManyHeaders { .. } => "DPE",
            _ => "-",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Deny::NotReady => "the gateway has not received its configuration yet".into(),
            Deny::BadRequest(why) => (*why).into(),
            Deny::BadRequestBody { detail } => {
                format!("the request body could not be read: {detail}")
            }
            Deny::NotFound { method, path } => {
                let mut shown: String = path.chars().take(MAX_ECHOED_PATH).collect();
                if shown.len() < path.len() {
                    shown.push('…');
                }
                format!("no route matches {method} {shown}")
            }
            Deny::PayloadTooLarge { limit } => format!("request body larger than {limit} bytes"),
            Deny::HeadersTooLarge { limit } => format!("request headers larger than {limit} bytes"),
            Deny::TooManyHeaders { limit } => format!("more than {limit} request header fields"),
            Deny::UpstreamUnreachable { route } => {
                format!("route {route}: the upstream could not be reached")
            }
            Deny::UpstreamFailed { route } => {
                format!("route {route}: the upstream failed to answer")
            }
            Deny::UpstreamTimeout { route, timeout } => {
                format!(
                    "route {route}: the upstream did not answer within {}ms",
                    timeout.as_millis()
                )
            }
            Deny::Unauthorized { message, .. }
            | Deny::Forbidden { message, .. }
            | Deny::RateLimited { message, .. }
            | Deny::QuotaExceeded { message, .. }
            | Deny::RateLimitUnavailable { message }
            | Deny::Overloaded { message } => message.clone(),
            Deny::NoHealthyUpstream { route } => {
                format!("route {route}: no backend is healthy (failing health checks or ejected)")
            }
            Deny::UpstreamBusy { route, max, waited } => format!(
                "route {route}: all {max} connections to the backend stayed busy for {}ms",
                waited.as_millis()
            ),
            Deny::CircuitOpen { route, retry_after } => format!(
                "route {route}: the circuit breaker is open after repeated upstream failures; retry in {}s",
                retry_after.as_secs().max(1)
            ),
            Deny::MissingTenant { route } => {
                format!("route {route} needs the request's tenant in x-tenant-id")
            }
            Deny::InvalidTenant { why } => format!("x-tenant-id {why}"),
            Deny::TenantForbidden { route, tenant } => {
                format!("route {route}: the principal is not a member of tenant {tenant}")
            }
            Deny::UnknownTenant { tenant } => format!("no placement for tenant {tenant}"),
            Deny::NoPlacement { tenant, service } => {
                format!("tenant {tenant} is not placed on any {service} shard")
            }
            Deny::InvalidCommand { why } => why.clone(),
            Deny::CommandInProgress { command_id } => {
                format!("command {command_id} is running; retry for its result")
            }
            Deny::CommandRejected { grpc, message } => {
                format!("the aggregate shard answered gRPC status {grpc}: {message}")
            }
        }
    }

    pub fn into_response(self, request_id: &HeaderValue) -> Response<ResponseBody> {
        let mut response = error_response(self.status(), self.code(), &self.message(), request_id);
        let headers = response.headers_mut();
        match self {
            Deny::NotReady
            | Deny::RateLimitUnavailable { .. }
            | Deny::Overloaded { .. }
            | Deny::NoPlacement { .. }
            | Deny::UpstreamBusy { .. }
            | Deny::NoHealthyUpstream { .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Deny::CircuitOpen { retry_after, .. } => {
                let seconds = retry_after.as_secs().max(1).to_string();
                if let Ok(value) = HeaderValue::from_str(&seconds) {
                    headers.insert(header::RETRY_AFTER, value);
                }
            }
            Deny::QuotaExceeded {
                retry_after_secs, ..
            } => {
                if let Ok(value) = HeaderValue::from_str(&retry_after_secs.to_string()) {
                    headers.insert(header::RETRY_AFTER, value);
                }
            }
            Deny::RateLimited { headers: extra, .. } => {
                for (name, value) in extra {
                    headers.insert(name, value);
                }
            }
            Deny::Unauthorized { challenges, .. } => {
                for challenge in challenges {
                    headers.append(header::WWW_AUTHENTICATE, challenge);
                }
            }
            _ => {}
        }
        response
    }
}

/// The error envelope every refusal of the gateway has:
/// `{"error":{"code","message","request_id"}}`, never stored by caches.
pub fn error_response(
    status: StatusCode,
    code: &str,
    message: &str,
    request_id: &HeaderValue,
) -> Response<ResponseBody> {
    let body = serde_json::json!({
        "error": {
            "code": code,
            "message": message,
            "request_id": request_id.to_str().unwrap_or_default(),
        }
    });
    let mut response = Response::new(ResponseBody::local(body.to_string()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// gRPC status codes the gateway answers with.
pub mod grpc {
    pub const OK: u32 = 0;
    pub const INVALID_ARGUMENT: u32 = 3;
    pub const DEADLINE_EXCEEDED: u32 = 4;
    pub const NOT_FOUND: u32 = 5;
    pub const PERMISSION_DENIED: u32 = 7;
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    pub const ABORTED: u32 = 10;
    pub const UNIMPLEMENTED: u32 = 12;
    pub const INTERNAL: u32 = 13;
    pub const UNAVAILABLE: u32 = 14;
    pub const UNAUTHENTICATED: u32 = 16;
}

impl Deny {
    /// The gRPC status a gRPC client gets for this refusal.
    pub fn grpc_status(&self) -> u32 {
        match self {
            Deny::NotFound { .. } => return grpc::UNIMPLEMENTED,
            Deny::CommandRejected { grpc, .. } => return *grpc,
            _ => {}
        }
        match self.status().as_u16() {
            400 => grpc::INVALID_ARGUMENT,
            401 => grpc::UNAUTHENTICATED,
            403 => grpc::PERMISSION_DENIED,
            404 => grpc::NOT_FOUND,
            409 => grpc::ABORTED,
            413 | 429 | 431 => grpc::RESOURCE_EXHAUSTED,
            504 => grpc::DEADLINE_EXCEEDED,
            502 | 503 => grpc::UNAVAILABLE,
            _ => grpc::INTERNAL,
        }
    }

    /// The refusal as a gRPC client expects it: HTTP 200 with `grpc-status` and
    /// `grpc-message` (the envelope's message, which names what decided) and no message
    /// — a "trailers-only" answer. `x-request-id` and `Retry-After` stay as headers.
    pub fn into_grpc_response(self, request_id: &HeaderValue) -> Response<ResponseBody> {
        let status = self.grpc_status();
        let message = format!("{}: {}", self.code(), self.message());
        let extra = self.into_response(request_id);
        let mut response = grpc_status_response(status, &message);
        for name in [header::RETRY_AFTER, header::WWW_AUTHENTICATE] {
            if let Some(value) = extra.headers().get(&name) {
                response.headers_mut().insert(name, value.clone());
            }
        }
        response
    }
}

/// The HTTP status a JSON client gets for a gRPC status of the aggregate shard.
fn http_status_of(grpc_status: u32) -> StatusCode {
    match grpc_status {
        3 | 11 => StatusCode::BAD_REQUEST,
        5 => StatusCode::NOT_FOUND,
        6 | 9 | 10 => StatusCode::CONFLICT,
        7 => StatusCode::FORBIDDEN,
        8 => StatusCode::TOO_MANY_REQUESTS,
        12 => StatusCode::NOT_IMPLEMENTED,
        14 => StatusCode::SERVICE_UNAVAILABLE,
        16 => StatusCode::UNAUTHORIZED,
        4 => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::BAD_GATEWAY,
    }
}

/// A trailers-only gRPC answer: `grpc-status` and `grpc-message` in the headers.
pub fn grpc_status_response(status: u32, message: &str) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::Local(None));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from(status));
    if let Ok(value) = HeaderValue::from_str(&grpc_message(message)) {
        headers.insert("grpc-message", value);
    }
    response
}

/// `grpc-message` encoding: percent-encoding of everything but printable ASCII and `%`.
pub fn grpc_message(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
