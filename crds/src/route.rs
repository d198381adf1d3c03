//! `Route`: which requests go where.

use std::collections::HashSet;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::auth::Auth;
use crate::cidr::parse_cidr;
use crate::duration::parse_duration;
use crate::status::ResourceStatus;
use crate::tenant::{Authorize, ServiceKind, Tenancy};
use crate::validate::{Errors, at, backend_url, route_host};

/// Longest regular expression accepted in a path match; keeps compiled matchers small.
pub const MAX_REGEX_LEN: usize = 1024;
/// Compiled size limit of one path regex (bytes of the regex crate's program).
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Upper bound of a backend weight.
pub const MAX_WEIGHT: u32 = 1_000_000;
/// Upper bound of a rule timeout.
pub const MAX_TIMEOUT_SECS: u64 = 3600;

/// Routes requests for some hosts to weighted backends, by path, method and headers.
// `printcolumn(...)` repeats its keys once per column, which clippy mistakes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "gateway.pavilion.dev",
    version = "v1alpha1",
    kind = "Route",
    shortname = "rt",
    namespaced,
    derive = "PartialEq",
    status = "ResourceStatus",
    category = "pavilion",
    doc = "Routes requests for some hosts to weighted backends, by path, method and headers.",
    printcolumn(name = "Hosts", type_ = "string", json_path = ".spec.hosts")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteSpec {
    /// Host names this route serves; `*.example.com` matches any subdomain. Empty: any host.
    #[serde(
        default,
        deserialize_with = "crate::exact_vec",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub hosts: Vec<String>,
    /// Rules in any order; the most specific match wins (see the matching precedence).
    #[schemars(length(min = 1))]
    #[serde(deserialize_with = "crate::exact_vec")]
    pub rules: Vec<RouteRule>,
    /// Overrides of the security headers the gateway adds to every response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_headers: Option<SecurityHeaders>,
}

/// Each field: absent, the gateway's default; `""`, not added; otherwise this value.
/// Headers the upstream sets itself are never replaced.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecurityHeaders {
    /// `X-Content-Type-Options` (default `nosniff`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type_options: Option<String>,
    /// `X-Frame-Options` (default `DENY`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame_options: Option<String>,
    /// `Referrer-Policy` (default `no-referrer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referrer_policy: Option<String>,
    /// `Content-Security-Policy` (default `default-src 'none'; frame-ancestors 'none'`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_security_policy: Option<String>,
    /// `Strict-Transport-Security`, on TLS only (default `max-age=31536000; includeSubDomains`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict_transport_security: Option<String>,
}

impl SecurityHeaders {
    fn validate(&self, errors: &mut Errors) {
        let fields = [
            ("contentTypeOptions", &self.content_type_options),
            ("frameOptions", &self.frame_options),
            ("referrerPolicy", &self.referrer_policy),
            ("contentSecurityPolicy", &self.content_security_policy),
            ("strictTransportSecurity", &self.strict_transport_security),
        ];
        for (name, value) in fields {
            if let Some(value) = value
                && http::HeaderValue::from_str(value).is_err()
            {
                errors.add(
                    format!("spec.securityHeaders.{name}"),
                    "not a valid header value (visible ASCII only)",
                );
            }
        }
    }
}

// Optional parts are boxed: a rule sets few of them, and inline they made every rule
// 1.2 KB before it held anything (the control plane holds 10 000 routes in memory). Not a
// doc comment: it would become the CRD's description.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteRule {
    /// Any match selects the rule; empty matches every request.
    #[serde(
        default,
        deserialize_with = "crate::exact_vec",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub matches: Vec<RouteMatch>,
    /// Weighted upstreams; at least one.
    #[schemars(length(min = 1))]
    #[serde(deserialize_with = "crate::exact_vec")]
    pub backends: Vec<Backend>,
    /// Time from the request's arrival to the upstream's response headers, e.g. `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Credentials the rule requires; absent: the rule is public.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Box<Auth>>,
    /// Client address ranges let in (`10.0.0.0/8`, `2001:db8::/32`, or one address);
    /// empty: every address. Checked before authentication.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_allow: Vec<String>,
    /// Client address ranges refused, even when `ipAllow` lists them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_deny: Vec<String>,
    /// TLS towards the rule's `https://` backends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_tls: Option<Box<UpstreamTls>>,
    /// Scope the rule to the request's tenant (`x-tenant-id`), of which the principal must
    /// be a member. Needs `auth`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenancy: Option<Box<Tenancy>>,
    /// Roles the principal must hold (one of them) in the request's tenant. Needs `tenancy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorize: Option<Box<Authorize>>,
    /// The rule serves the platform's command API: gRPC
    /// `aggregate.gateway.v1.CommandService/SubmitCommand`, and its JSON form `POST
    /// …/{aggregate_type}/{aggregate_id}`, to the tenant's aggregate shard, with retries made
    /// safe by `command_id`. Needs `tenancy` and `backends: [{ service: aggregate }]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commands: Option<Box<Commands>>,
    /// Tunnel WebSocket upgrades to the backend; without it an upgrade is removed and the
    /// request forwarded as a plain one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub websocket: Option<Box<crate::traffic::WebSocket>>,
    /// Repeat failed attempts on another backend, when that is safe, within a budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Box<crate::traffic::Retry>>,
    /// How requests are spread over the backends; default weighted round robin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<Box<crate::traffic::LoadBalancer>>,
    /// Active probes and passive outlier ejection of the backends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<Box<crate::traffic::HealthCheck>>,
    /// Stop sending to backends that keep failing, for a while.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<Box<crate::traffic::CircuitBreaker>>,
    /// Ask the backend for another path or host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Box<crate::traffic::Rewrite>>,
    /// Headers removed, set or added on the way to the backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<Box<crate::traffic::HeaderEdits>>,
    /// Headers removed, set or added on the backend's responses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<Box<crate::traffic::HeaderEdits>>,
    /// Request bodies larger than this get 413 (the smaller of this and the data plane's
    /// `--max-body-bytes` applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    /// Compress responses for clients that accept it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<Box<crate::traffic::Compression>>,
    /// Keep `GET`/`HEAD` responses in memory as their `Cache-Control` allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<Box<crate::traffic::Cache>>,
    /// How the data plane holds connections to each backend: a cap on requests in flight
    /// and how long an unused connection is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<Box<crate::traffic::Connections>>,
}

/// `commands:` on a rule.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Commands {
    /// How long a `command_id` is remembered: a repeat within it gets the first result and
    /// the command runs once. Default `10m`, at most `24h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
}

/// Default of `commands.window`.
pub const DEFAULT_COMMAND_WINDOW: std::time::Duration = std::time::Duration::from_secs(600);
/// Longest `commands.window`.
pub const MAX_COMMAND_WINDOW_SECS: u64 = 24 * 3600;

impl Commands {
    pub fn window(&self) -> std::time::Duration {
        self.window
            .as_deref()
            .and_then(|w| parse_duration(w).ok())
            .unwrap_or(DEFAULT_COMMAND_WINDOW)
    }
}

/// TLS settings for `https://` backends (trusted CAs: the web PKI plus `--upstream-ca`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpstreamTls {
    /// The name sent as SNI and required in the backend's certificate, instead of the
    /// URL's host: for backends addressed by IP or by an internal alias.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Offer HTTP/2 by ALPN (`h2`, then `http/1.1`): the backend then gets its own
    /// authority as `Host`/`:authority` and the client's host in `x-forwarded-host`,
    /// whichever protocol it picks.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub http2: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteMatch {
    /// Absent: every path (`PathPrefix /`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// HTTP methods; empty matches any.
    #[serde(
        default,
        deserialize_with = "crate::exact_vec",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub methods: Vec<String>,
    /// Headers that must be present with exactly these values (names are case-insensitive).
    #[serde(
        default,
        deserialize_with = "crate::exact_vec",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub headers: Vec<HeaderMatch>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathMatch {
    #[serde(rename = "type", default)]
    pub kind: PathMatchType,
    pub value: String,
    /// Compare without regard to ASCII case, for upstreams whose paths are
    /// case-insensitive (IIS, macOS file systems). Paths are case-sensitive by default.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_case: bool,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum PathMatchType {
    /// The whole path equals the value.
    Exact,
    /// The path starts with the value at a segment boundary: `/a` matches `/a` and `/a/b`, not `/ab`.
    #[default]
    PathPrefix,
    /// The whole path matches the regular expression (Rust `regex` syntax).
    RegularExpression,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderMatch {
    pub name: String,
    pub value: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Backend {
    /// `http://`, `https://` or `h2c://` host and port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A service kind, resolved per request to the shard the request's tenant is placed on
    /// (`TenantPlacement`). Needs `tenancy` on the rule; the rule's only backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::tenant::optional_service_schema")]
    pub service: Option<ServiceKind>,
    /// Share of traffic relative to the rule's other backends; default 1, 0 disables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = MAX_WEIGHT))]
    pub weight: Option<u32>,
}

impl Backend {
    pub fn weight(&self) -> u32 {
        self.weight.unwrap_or(1)
    }
}

impl RouteSpec {
    pub(crate) fn validate(&self, errors: &mut Errors) {
        let mut seen_hosts = HashSet::new();
        for (i, host) in self.hosts.iter().enumerate() {
            errors.check(at("spec.hosts", i), route_host(host));
            if !seen_hosts.insert(host.to_ascii_lowercase()) {
                errors.add(at("spec.hosts", i), format!("`{host}` is listed twice"));
            }
        }
        if self.rules.is_empty() {
            errors.add("spec.rules", "at least one rule is required");
        }
        for (i, rule) in self.rules.iter().enumerate() {
            rule.validate(&at("spec.rules", i), errors);
        }
        if let Some(headers) = &self.security_headers {
            headers.validate(errors);
        }
    }
}

impl RouteRule {
    fn validate(&self, field: &str, errors: &mut Errors) {
        for (i, m) in self.matches.iter().enumerate() {
            m.validate(&at(&format!("{field}.matches"), i), errors);
        }
        let backends = format!("{field}.backends");
        if self.backends.is_empty() {
            errors.add(&backends, "at least one backend is required");
        } else if self.backends.iter().all(|b| b.weight() == 0) {
            errors.add(&backends, "at least one backend needs a weight above 0");
        } else if self
            .backends
            .iter()
            .map(|b| u64::from(b.weight()))
            .sum::<u64>()
            > u64::from(u32::MAX)
        {
            errors.add(&backends, "the weights add up to more than 4294967295");
        }
        for (i, backend) in self.backends.iter().enumerate() {
            backend.validate(&at(&backends, i), errors);
        }
        if let Some(timeout) = &self.timeout {
            let field = format!("{field}.timeout");
            match parse_duration(timeout) {
                Err(message) => errors.add(field, message),
                Ok(d) if d.as_secs() > MAX_TIMEOUT_SECS => errors.add(
                    field,
                    format!("`{timeout}` is longer than the maximum of 1h"),
                ),
                Ok(_) => {}
            }
        }
        if let Some(auth) = &self.auth {
            auth.validate(&format!("{field}.auth"), errors);
        }
        if self.backends.iter().any(|b| b.service.is_some()) {
            if self.backends.len() > 1 {
                errors.add(
                    &backends,
                    "a service backend (resolved per tenant) is the rule's only backend",
                );
            }
            if self.tenancy.is_none() {
                errors.add(
                    &backends,
                    "a service backend needs `tenancy` on the rule: the tenant decides the shard",
                );
            }
        }
        if self.tenancy.is_some() && self.auth.is_none() {
            errors.add(
                format!("{field}.tenancy"),
                "needs `auth`: membership is a property of the authenticated principal",
            );
        }
        if let Some(commands) = &self.commands {
            let commands_field = format!("{field}.commands");
            let aggregate = self.backends.len() == 1
                && self.backends[0].service == Some(ServiceKind::Aggregate);
            if self.tenancy.is_none() || !aggregate {
                errors.add(
                    &commands_field,
                    "needs `tenancy` and `backends: [{ service: aggregate }]`: commands go to the tenant's aggregate shard",
                );
            }
            if let Some(window) = &commands.window {
                match parse_duration(window) {
                    Err(message) => errors.add(format!("{commands_field}.window"), message),
                    Ok(d) if d.as_secs() > MAX_COMMAND_WINDOW_SECS || d.is_zero() => errors.add(
                        format!("{commands_field}.window"),
                        format!("`{window}` must be between 1s and 24h"),
                    ),
                    Ok(_) => {}
                }
            }
        }
        if let Some(rewrite) = &self.rewrite {
            let prefix_only = self.matches.iter().all(|m| {
                m.path
                    .as_ref()
                    .is_none_or(|p| p.kind == PathMatchType::PathPrefix)
            });
            rewrite.validate(&format!("{field}.rewrite"), prefix_only, errors);
        }
        if let Some(edits) = &self.request_headers {
            edits.validate(&format!("{field}.requestHeaders"), true, errors);
        }
        if let Some(edits) = &self.response_headers {
            edits.validate(&format!("{field}.responseHeaders"), false, errors);
        }
        if self
            .max_body_bytes
            .is_some_and(|b| b == 0 || b > crate::traffic::MAX_BODY_BYTES)
        {
            errors.add(
                format!("{field}.maxBodyBytes"),
                "must be between 1 and 1099511627776 (1 TiB)",
            );
        }
        if let Some(cache) = &self.cache {
            cache.validate(&format!("{field}.cache"), errors);
        }
        if let Some(compression) = &self.compression {
            compression.validate(&format!("{field}.compression"), errors);
        }
        if let Some(connections) = &self.connections {
            let connections_field = format!("{field}.connections");
            connections.validate(&connections_field, errors);
            if self.backends.iter().any(|b| b.service.is_some()) {
                errors.add(
                    &connections_field,
                    "applies to `url` backends; a tenant's shard endpoints are not pooled per rule",
                );
            }
        }
        if let Some(retry) = &self.retry {
            retry.validate(&format!("{field}.retry"), errors);
        }
        let service_backend = self.backends.iter().any(|b| b.service.is_some());
        for (name, set) in [
            ("loadBalancer", self.load_balancer.is_some()),
            ("healthCheck", self.health_check.is_some()),
        ] {
            if set && service_backend {
                errors.add(
                    format!("{field}.{name}"),
                    "a service backend is one shard endpoint chosen by placement; balance and check `url` backends",
                );
            }
        }
        if let Some(balancer) = &self.load_balancer {
            balancer.validate(&format!("{field}.loadBalancer"), errors);
        }
        if let Some(health) = &self.health_check {
            health.validate(&format!("{field}.healthCheck"), errors);
        }
        if let Some(breaker) = &self.circuit_breaker {
            breaker.validate(&format!("{field}.circuitBreaker"), errors);
        }
        if let Some(websocket) = &self.websocket {
            let websocket_field = format!("{field}.websocket");
            websocket.validate(&websocket_field, errors);
            if self.commands.is_some() {
                errors.add(
                    &websocket_field,
                    "a `commands` rule serves the command API, not WebSocket tunnels",
                );
            }
            for (i, backend) in self.backends.iter().enumerate() {
                if backend
                    .url
                    .as_deref()
                    .is_some_and(|u| u.starts_with("h2c://"))
                {
                    errors.add(
                        format!("{}.url", at(&backends, i)),
                        "WebSocket tunnels need an http:// or https:// backend (HTTP/1.1 upgrade)",
                    );
                }
            }
        }
        if let Some(authorize) = &self.authorize {
            let authorize_field = format!("{field}.authorize");
            if self.tenancy.is_none() {
                errors.add(
                    &authorize_field,
                    "needs `tenancy`: roles are held in a tenant",
                );
            }
            authorize.validate(&authorize_field, errors);
        }
        if let Some(tls) = &self.upstream_tls {
            let tls_field = format!("{field}.upstreamTls");
            if let Some(name) = &tls.server_name
                && rustls_pki_types::ServerName::try_from(name.as_str()).is_err()
            {
                errors.add(
                    format!("{tls_field}.serverName"),
                    format!("`{name}` is not a DNS name or IP address"),
                );
            }
            let has_https = self
                .backends
                .iter()
                .any(|b| b.url.as_deref().is_some_and(|u| u.starts_with("https://")));
            if !has_https {
                errors.add(
                    tls_field,
                    "applies to https:// backends, and the rule has none",
                );
            }
        }
        for (name, ranges) in [("ipAllow", &self.ip_allow), ("ipDeny", &self.ip_deny)] {
            for (i, range) in ranges.iter().enumerate() {
                errors.check(
                    at(&format!("{field}.{name}"), i),
                    parse_cidr(range).map(drop),
                );
            }
        }
    }
}

impl RouteMatch {
    fn validate(&self, field: &str, errors: &mut Errors) {
        if let Some(path) = &self.path {
            errors.check(format!("{field}.path.value"), path.validate());
        }
        for (i, method) in self.methods.iter().enumerate() {
            if http::Method::from_bytes(method.as_bytes()).is_err() || method.is_empty() {
                errors.add(
                    at(&format!("{field}.methods"), i),
                    format!("`{method}` is not an HTTP method"),
                );
            }
        }
        for (i, header) in self.headers.iter().enumerate() {
            let field = at(&format!("{field}.headers"), i);
            if http::HeaderName::from_bytes(header.name.as_bytes()).is_err() {
                errors.add(
                    format!("{field}.name"),
                    format!("`{}` is not a header name", header.name),
                );
            }
            if http::HeaderValue::from_str(&header.value).is_err() {
                errors.add(
                    format!("{field}.value"),
                    "not a valid header value (visible ASCII only)",
                );
            }
        }
    }
}

impl PathMatch {
    fn validate(&self) -> Result<(), String> {
        let value = &self.value;
        match self.kind {
            PathMatchType::Exact | PathMatchType::PathPrefix => {
                if !value.starts_with('/') {
                    return Err(format!("`{value}` must start with '/'"));
                }
                // Request paths arrive percent-encoded with dot segments resolved; a value
                // that is neither could never match.
                if !value.is_ascii() {
                    return Err(format!(
                        "`{value}` contains non-ASCII characters; write them percent-encoded"
                    ));
                }
                if value.split('/').any(is_dot_segment) {
                    return Err(format!(
                        "`{value}` contains `.` or `..` segments, which requests never do"
                    ));
                }
                // Request paths are matched with repeated slashes merged and without
                // `;parameters`: a value with either could never match.
                if value.contains("//") {
                    return Err(format!(
                        "`{value}` contains `//`; request paths are matched with repeated slashes merged"
                    ));
                }
                if value.contains(';') {
                    return Err(format!(
                        "`{value}` contains ';'; request paths are matched without their `;parameters`"
                    ));
                }
                check_escapes(value)?;
                if let Some(c) = value
                    .chars()
                    .find(|c| matches!(c, '?' | '#') || c.is_whitespace() || c.is_control())
                {
                    return Err(format!(
                        "`{value}` contains {c:?}, which never appears in a request path"
                    ));
                }
                Ok(())
            }
            PathMatchType::RegularExpression => {
                if value.len() > MAX_REGEX_LEN {
                    return Err(format!(
                        "regular expression longer than {MAX_REGEX_LEN} characters"
                    ));
                }
                // The pattern must stand on its own, or `a)|(b` would escape the anchors.
                regex::RegexBuilder::new(value)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|e| {
                        format!("invalid regular expression: {}", one_line(&e.to_string()))
                    })?;
                regex::RegexBuilder::new(&anchored(value))
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map(drop)
                    .map_err(|e| {
                        format!("invalid regular expression: {}", one_line(&e.to_string()))
                    })
            }
        }
    }
}

/// Every `%` starts a two-digit hex escape, and none encodes NUL (requests with either are
/// refused, so such a value could never match).
fn check_escapes(value: &str) -> Result<(), String> {
    let bytes = value.as_bytes();
    for (i, _) in value.match_indices('%') {
        let escape = bytes.get(i + 1..i + 3);
        match escape {
            Some([a, b]) if a.is_ascii_hexdigit() && b.is_ascii_hexdigit() => {
                if *a == b'0' && *b == b'0' {
                    return Err(format!("`{value}` contains %00, which requests never do"));
                }
            }
            _ => {
                return Err(format!(
                    "`{value}` has a '%' that does not start a two-digit hex escape"
                ));
            }
        }
    }
    Ok(())
}

/// The form in which path regexes are compiled: they must match the whole path.
pub fn anchored(pattern: &str) -> String {
    format!("^(?:{pattern})$")
}

fn is_dot_segment(segment: &str) -> bool {
    let lower = segment.to_ascii_lowercase();
    matches!(
        lower.as_str(),
        "." | ".." | "%2e" | "%2e%2e" | ".%2e" | "%2e."
    )
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl Backend {
    fn validate(&self, field: &str, errors: &mut Errors) {
        match (&self.url, &self.service) {
            (Some(url), None) => errors.check(format!("{field}.url"), backend_url(url)),
            (None, Some(_)) => {}
            (Some(_), Some(_)) => errors.add(field, "set either url or service, not both"),
            (None, None) => errors.add(field, "a backend needs a url or a service"),
        }
        if self.weight() > MAX_WEIGHT {
            errors.add(format!("{field}.weight"), format!("at most {MAX_WEIGHT}"));
        }
    }
}
