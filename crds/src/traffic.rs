//! Rule fields about how traffic is carried between the matched rule and the upstream:
//! WebSocket upgrades, retries, load balancing, health checks, the circuit breaker, and the
//! request and response transforms, response compression and caching.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::parse_duration;
use crate::validate::Errors;

/// `websocket:` on a rule: HTTP/1.1 `Upgrade: websocket` requests are tunnelled to the
/// backend (after every check of the rule); without it the upgrade is removed and the
/// request is forwarded as a plain one.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebSocket {
    /// A tunnel in which neither side sent a byte for this long is closed. Default `5m`,
    /// between `1s` and `24h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
}

/// Default of `websocket.idleTimeout`.
pub const DEFAULT_WEBSOCKET_IDLE: Duration = Duration::from_secs(300);

impl WebSocket {
    pub fn idle_timeout(&self) -> Duration {
        duration_or(&self.idle_timeout, DEFAULT_WEBSOCKET_IDLE)
    }

    pub(crate) fn validate(&self, field: &str, errors: &mut Errors) {
        if let Some(idle) = &self.idle_timeout {
            within(
                &format!("{field}.idleTimeout"),
                idle,
                Duration::from_secs(1),
                Duration::from_secs(24 * 3600),
                errors,
            );
        }
    }
}

/// `connections:` on a rule: how the data plane holds connections to each of its backends.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Connections {
    /// At most this many requests in flight to each backend from one data plane (all its
    /// workers): for HTTP/1.1 backends, at most this many busy connections — a new one is
    /// opened only when no idle one is left. Between 1 and 100000; default no cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u32>,
    /// How long a request waits for a place under `max` before it is answered 503
    /// `upstream_busy`. Default `1s`, between `0s` and `60s`; never past the rule's timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_timeout: Option<String>,
    /// An unused pooled connection to a backend is closed after this long (set it below the
    /// backend's own keep-alive timeout). Default: the data plane's
    /// `--upstream-idle-timeout-seconds`; between `1s` and `1h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
}

/// Default of `connections.queueTimeout`.
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(1);

impl Connections {
    pub fn queue_timeout(&self) -> Duration {
        duration_or(&self.queue_timeout, DEFAULT_QUEUE_TIMEOUT)
    }

    /// `None`: the data plane's default.
    pub fn idle_timeout(&self) -> Option<Duration> {
        self.idle_timeout
            .as_deref()
            .and_then(|t| parse_duration(t).ok())
    }

    pub(crate) fn validate(&self, field: &str, errors: &mut Errors) {
        if self.max.is_some_and(|m| !(1..=100_000).contains(&m)) {
            errors.add(format!("{field}.max"), "must be between 1 and 100000");
        }
        if let Some(queue) = &self.queue_timeout {
            let queue_field = format!("{field}.queueTimeout");
            within(
                &queue_field,
                queue,
                Duration::ZERO,
                Duration::from_secs(60),
                errors,
            );
            if self.max.is_none() {
                errors.add(
                    queue_field,
                    "needs `max`: requests only wait for a place under it",
                );
            }
        }
        if let Some(idle) = &self.idle_timeout {
            within(
                &format!("{field}.idleTimeout"),
                idle,
                Duration::from_secs(1),
                Duration::from_secs(3600),
                errors,
            );
        }
    }
}

/// Checks that `text` is a duration between `min` and `max` (inclusive).
pub(crate) fn within(field: &str, text: &str, min: Duration, max: Duration, errors: &mut Errors) {
    match parse_duration(text) {
        Err(message) => errors.add(field, message),
        Ok(d) if d < min || d > max => errors.add(
            field,
            format!(
                "`{text}` must be between {} and {}",
                crate::duration::format_duration(min),
                crate::duration::format_duration(max)
            ),
        ),
        Ok(_) => {}
    }
}

/// `retry:` on a rule: failed attempts are repeated on another backend when that is safe —
/// the request has no body, and its method is idempotent or the failure came before
/// anything was sent (a refused connection).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retry {
    /// Attempts after the first; default 2, at most 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// What is retried: `connect-failure`, `reset` (the backend broke the exchange) and
    /// response statuses (`"502"`, `"503"`, `"504"`, any of 500–599). Default all of these
    /// five.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on: Vec<String>,
    /// Each attempt's own limit (the rule's `timeout` still bounds them all); default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<String>,
    /// First wait between attempts, doubled each time with full jitter; default `25ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<String>,
    /// Longest wait between attempts; default `250ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_backoff: Option<String>,
    /// Retries may add at most this share of the rule's requests over the last 10 s
    /// (percent, default 20), so that retries cannot multiply an outage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_percent: Option<u32>,
    /// Retries allowed per second whatever the share, so a quiet rule can still retry;
    /// default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_retries_per_second: Option<u32>,
}

/// Statuses and failures retried when `retry.on` names none.
pub const DEFAULT_RETRY_ON: [&str; 5] = ["connect-failure", "reset", "502", "503", "504"];

impl Retry {
    pub(crate) fn validate(&self, field: &str, errors: &mut Errors) {
        if self.attempts.is_some_and(|a| a == 0 || a > 5) {
            errors.add(format!("{field}.attempts"), "must be between 1 and 5");
        }
        for (i, on) in self.on.iter().enumerate() {
            let known = matches!(on.as_str(), "connect-failure" | "reset")
                || on.parse::<u16>().is_ok_and(|s| (500..600).contains(&s));
            if !known {
                errors.add(
                    crate::validate::at(&format!("{field}.on"), i),
                    format!("`{on}` is not `connect-failure`, `reset` or a status from 500 to 599"),
                );
            }
        }
        let hour = Duration::from_secs(3600);
        for (name, value) in [
            ("perTryTimeout", &self.per_try_timeout),
            ("backoff", &self.backoff),
            ("maxBackoff", &self.max_backoff),
        ] {
            if let Some(value) = value {
                within(
                    &format!("{field}.{name}"),
                    value,
                    Duration::from_millis(1),
                    hour,
                    errors,
                );
            }
        }
        if self.budget_percent.is_some_and(|p| p == 0 || p > 100) {
            errors.add(
                format!("{field}.budgetPercent"),
                "must be between 1 and 100",
            );
        }
    }
}

/// How a rule spreads requests over its backends.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum BalancePolicy {
    /// In turn, in proportion to the weights.
    #[default]
    RoundRobin,
    /// At random, in proportion to the weights.
    Random,
    /// The less busy of two backends drawn at random (in-flight requests per unit of
    /// weight): slow backends get less.
    LeastRequest,
    /// The same key always goes to the same backend while it is healthy (rendezvous hashing:
    /// a backend's departure moves only its own keys).
    ConsistentHash,
}

/// `loadBalancer:` on a rule.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancer {
    #[serde(default)]
    pub policy: BalancePolicy,
    /// For `ConsistentHash`: `header:NAME`, `claim:NAME`, `tenant` or `clientIp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<String>,
}

impl LoadBalancer {
    pub(crate) fn validate(&self, field: &str, errors: &mut Errors) {
        match (&self.policy, &self.hash_on) {
            (BalancePolicy::ConsistentHash, None) => errors.add(
                format!("{field}.hashOn"),
                "ConsistentHash needs `hashOn`: header:NAME, claim:NAME, tenant or clientIp",
            ),
            (BalancePolicy::ConsistentHash, Some(key)) => {
                let ok = match key.split_once(':') {
                    Some(("header", name)) => http::HeaderName::from_bytes(name.as_bytes()).is_ok(),
                    Some(("claim", name)) => !name.is_empty(),
                    _ => matches!(key.as_str(), "tenant" | "clientIp"),
                };
                if !ok {
                    errors.add(
                        format!("{field}.hashOn"),
                        format!("`{key}` is not header:NAME, claim:NAME, tenant or clientIp"),
                    );
                }
            }
            (_, Some(_)) => errors.add(
                format!("{field}.hashOn"),
                "only ConsistentHash hashes on a key",
            ),
            (_, None) => {}
        }
    }
}

/// `healthCheck:` on a rule: active probes and passive outlier ejection of its backends.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthCheck {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<ActiveCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passive: Option<PassiveCheck>,
}

/// Every backend is asked `GET path` at an interval; a 2xx within the timeout is a pass.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ActiveCheck {
    /// Absolute path (and query) asked, e.g. `/healthz`.
    pub path: String,
    /// Default `5s`, between `100ms` and `1h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Default `1s`, at most the interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Passes in a row that make an unhealthy backend healthy; default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_threshold: Option<u32>,
    /// Failures in a row that make a healthy backend unhealthy; default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_threshold: Option<u32>,
}

/// Backends that fail requests in a row are taken out for a while, longer each time.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PassiveCheck {
    /// 5xx answers or connection failures in a row that eject a backend; default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<u32>,
    /// The first ejection's length; each further one is longer (×2, at most ×16). Default
    /// `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ejection_time: Option<String>,
    /// At most this share of the rule's backends is ejected at once (percent, default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejected_percent: Option<u32>,
}

impl HealthCheck {
    pub(crate) fn validate(&self, field: &str, errors: &mut Errors) {
        if self.active.is_none() && self.passive.is_none() {
            errors.add(field, "needs `active`, `passive` or both");
        }
        if let Some(active) = &self.active {
            let field = format!("{field}.active");
            if !active.path.starts_with('/')
                || http::uri::PathAndQuery::try_from(active.path.as_str()).is_err()
            {
                errors.add(
                    format!("{field}.path"),
                    format!("`{}` is not an absolute path", active.path),
                );
            }
            if let Some(interval) = &active.interval {
                within(
                    &format!("{field}.interval"),
                    interval,
                    Duration::from_millis(100),
                    Duration::from_secs(3600),
                    errors,
                );
            }
            if let Some(timeout) = &active.timeout {
                within(
                    &format!("{field}.timeout"),
                    timeout,
                    Duration::from_millis(1),
                    active.interval(),
                    errors,
                );
            }
            for (name, value) in [
                ("healthyThreshold", active.healthy_threshold),
                ("unhealthyThreshold", active.unhealthy_threshold),
            ] {
                if value.is_some_and(|v| v == 0 || v > 100) {
                    errors.add(format!("{field}.{name}"), "must be between 1 and 100");
                }
            }
        }
        if let Some(passive) = &self.passive {
            let field = format!("{field}.passive");
            if passive
                .consecutive_failures
                .is_some_and(|v| v == 0 || v > 1000)
            {
                errors.add(
                    format!("{field}.consecutiveFailures"),
                    "must be between 1 and 1000",
                );
            }
            if let Some(time) = &passive.ejection_time {
                within(
                    &format!("{field}.ejectionTime"),
                    time,
                    Duration::from_millis(100),
                    Duration::from_secs(3600),
                    errors,
                );
            }
            if passive
                .max_ejected_percent
                .is_some_and(|p| p == 0 || p > 100)
            {
                errors.add(
                    format!("{field}.maxEjectedPercent"),
                    "must be between 1 and 100",
                );
            }
        }
    }
}

impl ActiveCheck {
    pub fn interval(&self) -> Duration {
        duration_or(&self.interval, Duration::from_secs(5))
    }
    pub fn timeout(&self) -> Duration {
        duration_or(&self.timeout, Duration::from_secs(1)).min(self.interval())
    }
}

impl PassiveCheck {
    pub fn ejection_time(&self) -> Duration {
        duration_or(&self.ejection_time, Duration::from_secs(30))
    }
}

/// `circuitBreaker:` on a rule, over its backends together: after too many failures the
/// rule answers 503 `circuit_open` at once for `openFor`, then lets a few probes through.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CircuitBreaker {
    /// Failures (5xx, connection failures, timeouts) in a row that open the circuit;
    /// default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<u32>,
    /// Failure share (percent) within `window` that opens the circuit, once the window holds
    /// `minRequests`; absent: only consecutive failures count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_percent: Option<u32>,
    /// Default 20.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u32>,
    /// Default `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// How long an open circuit refuses before it lets probes through; default `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_for: Option<String>,
    /// Requests let through while half-open; all must succeed to close. Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub half_open_probes: Option<u32>,
}

impl CircuitBreaker {
    pub(crate) fn validate(&self, field: &str, errors: &mut Errors) {
        for (name, value, max) in [
            ("consecutiveFailures", self.consecutive_failures, 10_000),
            ("failurePercent", self.failure_percent, 100),
            ("minRequests", self.min_requests, 1_000_000),
            ("halfOpenProbes", self.half_open_probes, 1000),
        ] {
            if value.is_some_and(|v| v == 0 || v > max) {
                errors.add(
                    format!("{field}.{name}"),
                    format!("must be between 1 and {max}"),
                );
            }
        }
        for (name, value) in [("window", &self.window), ("openFor", &self.open_for)] {
            if let Some(value) = value {
                within(
                    &format!("{field}.{name}"),
                    value,
                    Duration::from_millis(100),
                    Duration::from_secs(3600),
                    errors,
                );
            }
        }
    }

    pub fn window(&self) -> Duration {
        duration_or(&self.window, Duration::from_secs(10))
    }
    pub fn open_for(&self) -> Duration {
        duration_or(&self.open_for, Duration::from_secs(30))
    }
}

impl Retry {
    pub fn per_try_timeout(&self) -> Option<Duration> {
        self.per_try_timeout
            .as_deref()
            .and_then(|t| parse_duration(t).ok())
    }
    pub fn backoff(&self) -> Duration {
        duration_or(&self.backoff, Duration::from_millis(25))
    }
    pub fn max_backoff(&self) -> Duration {
        duration_or(&self.max_backoff, Duration::from_millis(250))
    }
}

/// A written duration, or `default` when absent (validation refused bad ones).
fn duration_or(text: &Option<String>, default: Duration) -> Duration {
    text.as_deref()
        .and_then(|t| parse_duration(t).ok())
        .unwrap_or(default)
}

/// `rewrite:` on a rule: what the backend is asked for instead of what the client asked.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rewrite {
    /// Replaces the matched `PathPrefix` (`/api` → `/v2`: `/api/orders` goes as
    /// `/v2/orders`). Every match of the rule must be a `PathPrefix`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Replaces the first match of `pattern` in the path with `substitution` (`$1`, `${name}`
    /// refer to groups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_regex: Option<RegexRewrite>,
    /// The `Host` the backend gets (the client's stays in `x-forwarded-host`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegexRewrite {
    pub pattern: String,
    pub substitution: String,
}

/// A header name and value.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Header {
    pub name: String,
    pub value: String,
}

/// `requestHeaders:` / `responseHeaders:` on a rule, applied in this order: remove, set
/// (replacing any value), add (beside any value).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderEdits {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<Header>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<Header>,
}

/// Fields no header edit may touch: those of the connection (hop-by-hop, framing, `Host`)
/// and those only the gateway states (identity, tenant, forwarding facts, request id).
fn reserved_header(name: &str, request: bool) -> Option<&'static str> {
    const FRAMING: [&str; 9] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "te",
        "trailer",
        "content-length",
        "host",
    ];
    if FRAMING.contains(&name) {
        return Some("describes the connection or the framing, which the gateway owns");
    }
    let stated = name.starts_with("x-auth-")
        || name.starts_with("x-forwarded-")
        || matches!(
            name,
            "x-tenant-id" | "x-real-ip" | "forwarded" | "x-request-id"
        );
    (request && stated)
        .then_some("is stated by the gateway only (identity, tenant, forwarding facts, request id)")
}

impl HeaderEdits {
    pub(crate) fn validate(&self, field: &str, request: bool, errors: &mut Errors) {
        let mut check_name = |at: String, name: &str| {
            let lower = name.to_ascii_lowercase();
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                errors.add(at, format!("`{name}` is not a header name"));
            } else if let Some(why) = reserved_header(&lower, request) {
                errors.add(at, format!("`{name}` {why}"));
            }
        };
        for (i, name) in self.remove.iter().enumerate() {
            check_name(crate::validate::at(&format!("{field}.remove"), i), name);
        }
        for (list, headers) in [("set", &self.set), ("add", &self.add)] {
            for (i, header) in headers.iter().enumerate() {
                let at = crate::validate::at(&format!("{field}.{list}"), i);
                check_name(format!("{at}.name"), &header.name);
            }
        }
        for (list, headers) in [("set", &self.set), ("add", &self.add)] {
            for (i, header) in headers.iter().enumerate() {
                if http::HeaderValue::from_str(&header.value).is_err() {
                    errors.add(
                        format!(
                            "{}.value",
                            crate::validate::at(&format!("{field}.{list}"), i)
                        ),
                        "a header value is visible ASCII, spaces and tabs (no line breaks)",
                    );
                }
            }
        }
    }
}

/// Longest regular expression in a rewrite.
const MAX_PATTERN: usize = 1024;

impl Rewrite {
    /// `prefix_only`: every match of the rule is a path prefix.
    pub(crate) fn validate(&self, field: &str, prefix_only: bool, errors: &mut Errors) {
        if self.path_prefix.is_some() && self.path_regex.is_some() {
            errors.add(field, "set `pathPrefix` or `pathRegex`, not both");
        }
        if let Some(prefix) = &self.path_prefix {
            let at = format!("{field}.pathPrefix");
            if !prefix.starts_with('/')
                || http::uri::PathAndQuery::try_from(prefix.as_str()).is_err()
                || prefix.contains('?')
            {
                errors.add(&at, format!("`{prefix}` is not an absolute path"));
            }
            if !prefix_only {
                errors.add(at, "needs every match of the rule to be a PathPrefix: it replaces the matched prefix");
            }
        }
        if let Some(regex) = &self.path_regex {
            let at = format!("{field}.pathRegex");
            if regex.pattern.len() > MAX_PATTERN {
                errors.add(
                    format!("{at}.pattern"),
                    format!("longer than {MAX_PATTERN} characters"),
                );
            } else if let Err(error) = regex::Regex::new(&regex.pattern) {
                errors.add(
                    format!("{at}.pattern"),
                    format!("not a regular expression: {error}"),
                );
            }
            if !regex.substitution.starts_with('/') || regex.substitution.contains(['?', '#', ' '])
            {
                errors.add(
                    format!("{at}.substitution"),
                    "must be an absolute path (starting with `/`, without `?`, `#` or spaces)",
                );
            }
        }
        if let Some(Err(message)) = self.host.as_deref().map(crate::validate::route_host) {
            errors.add(format!("{field}.host"), message);
        }
    }
}

/// Largest `maxBodyBytes`.
pub const MAX_BODY_BYTES: u64 = 1 << 40;

/// `compression:` on a rule: responses compressed by what the client accepts
/// (`Accept-Encoding` q-values), when they are large enough and of a compressible type.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Compression {
    /// Smallest body compressed, in bytes (when its length is known); default 1024.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_size: Option<u64>,
    /// Media types compressed: `text/html`, `text/*`; default text, JSON, JavaScript, XML,
    /// SVG and `+json`/`+xml` types.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<String>,
    /// Encodings offered: `gzip`, `br`, `zstd`; default all three.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub algorithms: Vec<String>,
}

/// Media types compressed when `compression.types` names none.
pub const DEFAULT_COMPRESSED_TYPES: [&str; 7] = [
    "text/*",
    "application/json",
    "application/javascript",
    "application/xml",
    "image/svg+xml",
    "*/*+json",
    "*/*+xml",
];

impl Compression {
    pub(crate) fn validate(&self, field: &str, errors: &mut Errors) {
        for (i, kind) in self.types.iter().enumerate() {
            let ok = kind.split_once('/').is_some_and(|(a, b)| {
                !a.is_empty() && !b.is_empty() && !kind.contains([' ', ';', ','])
            });
            if !ok {
                errors.add(
                    crate::validate::at(&format!("{field}.types"), i),
                    format!("`{kind}` is not a media type such as text/html or text/*"),
                );
            }
        }
        for (i, algorithm) in self.algorithms.iter().enumerate() {
            if !matches!(algorithm.as_str(), "gzip" | "br" | "zstd") {
                errors.add(
                    crate::validate::at(&format!("{field}.algorithms"), i),
                    format!("`{algorithm}` is not gzip, br or zstd"),
                );
            }
        }
    }
}

/// `cache:` on a rule: `GET`/`HEAD` responses kept in the data plane's memory as their
/// `Cache-Control` allows, served again without asking the backend.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cache {
    /// Freshness of responses that state none (no `max-age`, `s-maxage` or `Expires`);
    /// absent: such responses are not stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_ttl: Option<String>,
    /// Longest freshness kept, whatever the response says; default `1h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ttl: Option<String>,
    /// Largest response stored, in bytes; default 1 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_entry_bytes: Option<u64>,
    /// Request headers that are part of the key besides method, host, path and query.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_headers: Vec<String>,
}

impl Cache {
    pub(crate) fn validate(&self, field: &str, errors: &mut Errors) {
        let day = Duration::from_secs(86_400);
        for (name, value) in [("defaultTtl", &self.default_ttl), ("maxTtl", &self.max_ttl)] {
            if let Some(value) = value {
                within(
                    &format!("{field}.{name}"),
                    value,
                    Duration::from_secs(1),
                    day,
                    errors,
                );
            }
        }
        if self.max_entry_bytes.is_some_and(|b| b == 0 || b > 64 << 20) {
            errors.add(
                format!("{field}.maxEntryBytes"),
                "must be between 1 and 67108864 (64 MiB)",
            );
        }
        for (i, name) in self.key_headers.iter().enumerate() {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                errors.add(
                    crate::validate::at(&format!("{field}.keyHeaders"), i),
                    format!("`{name}` is not a header name"),
                );
            }
        }
    }

    pub fn max_ttl(&self) -> Duration {
        duration_or(&self.max_ttl, Duration::from_secs(3600))
    }

    pub fn default_ttl(&self) -> Option<Duration> {
        self.default_ttl
            .as_deref()
            .and_then(|t| parse_duration(t).ok())
    }
}
