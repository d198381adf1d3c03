//! Policies attached to routes in the style of Gateway API policy attachment:
//! `RateLimitPolicy` and `CorsPolicy`. The compiler validates them and resolves their
//! targets; rate limits, quotas and concurrency limits are compiled into every rule of the
//! routes they reach, CORS is validated and kept only (for now).
//!
//! Targets nest: a `Route` of the policy's namespace, the whole `Namespace`, or — for a
//! `RateLimitPolicy` in the gateway namespace only (the compiler checks that) — the whole
//! `Gateway`, every route of every namespace.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::parse_duration;
use crate::status::ResourceStatus;
use crate::validate::{Errors, at, dns_label, dns_subdomain};

/// What a policy applies to: a `Route` in the policy's namespace, the whole namespace, or
/// (RateLimitPolicy in the gateway namespace only) the whole gateway.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetRef {
    /// `Route`, `Namespace`, or `Gateway` (RateLimitPolicy only; name conventionally
    /// `default`).
    #[schemars(extend("enum" = ["Gateway", "Namespace", "Route"]))]
    pub kind: String,
    pub name: String,
}

impl TargetRef {
    /// `gateway`: whether the policy kind may target the whole `Gateway`.
    pub(crate) fn validate(&self, errors: &mut Errors, gateway: bool) {
        match self.kind.as_str() {
            "Route" => errors.check("spec.targetRef.name", dns_subdomain(&self.name)),
            "Namespace" => errors.check("spec.targetRef.name", dns_label(&self.name)),
            // There is one gateway; its name is only checked for form.
            "Gateway" if gateway => errors.check("spec.targetRef.name", dns_subdomain(&self.name)),
            "Gateway" => errors.add(
                "spec.targetRef.kind",
                "`Gateway` cannot be the target of a CorsPolicy; use Route or Namespace",
            ),
            other if gateway => errors.add(
                "spec.targetRef.kind",
                format!("`{other}` cannot be a target; use Route, Namespace or Gateway"),
            ),
            other => errors.add(
                "spec.targetRef.kind",
                format!("`{other}` cannot be a target; use Route or Namespace"),
            ),
        }
    }
}

/// Limits request rates, calendar quotas and requests in flight, keyed by request facts.
// `printcolumn(...)` repeats its keys once per column, which clippy mistakes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "gateway.pavilion.dev",
    version = "v1alpha1",
    kind = "RateLimitPolicy",
    shortname = "rlp",
    namespaced,
    derive = "PartialEq",
    status = "ResourceStatus",
    category = "pavilion",
    doc = "Limits request rates, calendar quotas and requests in flight, keyed by request facts.",
    printcolumn(name = "Target", type_ = "string", json_path = ".spec.targetRef.name"),
    printcolumn(name = "Backend", type_ = "string", json_path = ".spec.backend")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitPolicySpec {
    pub target_ref: TargetRef,
    /// Where limits and quotas are counted.
    #[serde(default)]
    pub backend: RateLimitBackend,
    /// What limits and quotas do when Redis is unreachable.
    #[serde(default)]
    pub failure_mode: FailureMode,
    /// With `backend: redis`: whether each request is counted in Redis (`exact`, one round
    /// trip per request) or data planes take slices of a bucket at once (`approximate`: one
    /// round trip per slice, at most one slice per data plane and key over the limit).
    /// Quotas are always exact.
    #[serde(default, skip_serializing_if = "Consistency::is_exact")]
    pub consistency: Consistency,
    /// Whether responses carry `RateLimit-Limit`, `RateLimit-Remaining` and
    /// `RateLimit-Reset`. Default true.
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub headers: bool,
    /// At most 16; a request must pass every one of them. May be empty when the policy
    /// sets quotas or a concurrency limit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<Limit>,
    /// Requests and/or response bytes per calendar day or month, per key. At most 16; a
    /// request must pass every one of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quotas: Vec<Quota>,
    /// A cap on requests in flight to the upstream, optionally adapting to its latency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<Concurrency>,
}

fn default_true() -> bool {
    true
}

// serde's `skip_serializing_if` passes a reference.
#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_true(value: &bool) -> bool {
    *value
}

/// Most limits one policy may hold.
pub const MAX_LIMITS: usize = 16;
/// Most overrides one limit may hold.
pub const MAX_OVERRIDES: usize = 64;
/// Longest period a limit may count over.
pub const MAX_PERIOD: std::time::Duration = std::time::Duration::from_secs(86_400);
/// Most quotas one policy may hold.
pub const MAX_QUOTAS: usize = 16;
/// Highest concurrency limit a policy may set.
pub const MAX_CONCURRENCY: u32 = 100_000;
/// Where an adaptive concurrency limit starts, unless `initial` says otherwise (kept
/// within `min..=max`).
pub const DEFAULT_INITIAL_CONCURRENCY: u32 = 20;
/// The time zone of a quota that names none.
pub const DEFAULT_TIME_ZONE: &str = "UTC";

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitBackend {
    /// Counted in each data plane.
    #[default]
    Local,
    /// Counted in Redis, exact across replicas.
    Redis,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// Every request counted in Redis: with a limit of N, N requests pass.
    #[default]
    Exact,
    /// Each data plane reserves a slice of a key's bucket in one round trip and spends it
    /// locally (see docs/rate-limiting.md for the bound).
    Approximate,
}

impl Consistency {
    // serde's `skip_serializing_if` passes a reference.
    #[allow(clippy::trivially_copy_pass_by_ref)]
    fn is_exact(&self) -> bool {
        *self == Consistency::Exact
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FailureMode {
    /// Let requests through unlimited.
    Open,
    /// Refuse requests.
    Closed,
    /// Enforce a per-replica share locally.
    #[default]
    Local,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limit {
    /// Parts of the key: clientIp, apiKey, subject, claim:NAME, header:NAME, route.
    #[schemars(length(min = 1))]
    pub key: Vec<String>,
    #[schemars(range(min = 1))]
    pub requests: u64,
    /// Window, e.g. `1s`, `1m`, `1h`, `1d` (at least 1ms, at most 1d).
    pub per: String,
    /// Requests allowed at once; default `requests`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub burst: Option<u64>,
    /// Other rates for some key values (e.g. premium API keys); first match wins. At most 64.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<LimitOverride>,
}

/// Another rate for the key values matching `value`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitOverride {
    /// Pattern matched against the key's value (its parts' values joined by `|`); `*`
    /// matches any run of characters.
    pub value: String,
    #[schemars(range(min = 1))]
    pub requests: u64,
    /// Requests allowed at once; default `requests`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub burst: Option<u64>,
}

/// Requests and/or response body bytes allowed per key in a calendar day or month.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Quota {
    /// Parts of the key, as for limits: clientIp, apiKey, subject, claim:NAME,
    /// header:NAME, route.
    #[schemars(length(min = 1))]
    pub key: Vec<String>,
    /// Requests allowed per period; at least one of `requests` and `bytes` is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub requests: Option<u64>,
    /// Response body bytes allowed per period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub bytes: Option<u64>,
    /// The calendar period: `day` or `month`.
    #[schemars(extend("enum" = ["day", "month"]))]
    pub per: String,
    /// IANA time zone the period starts and ends in, e.g. `Europe/Berlin`; default `UTC`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
}

impl Quota {
    /// The time zone, defaulted.
    pub fn time_zone(&self) -> &str {
        self.time_zone.as_deref().unwrap_or(DEFAULT_TIME_ZONE)
    }
}

/// A cap on requests in flight to the upstream. Adaptive limits move between `min` and
/// `max` with the upstream's latency, starting at `initial`; fixed ones stay at `max`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Concurrency {
    /// The most requests in flight, 1 to 100000.
    #[schemars(range(min = 1, max = MAX_CONCURRENCY))]
    pub max: u32,
    /// The fewest requests in flight an adaptive limit allows; default 1, at most `max`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub min: Option<u32>,
    /// Where an adaptive limit starts, between `min` and `max`; default 20 kept within
    /// them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial: Option<u32>,
    /// Whether the limit adapts to the upstream's latency (default true); false: fixed at
    /// `max`.
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub adaptive: bool,
}

impl Concurrency {
    /// `min`, defaulted.
    pub fn min(&self) -> u32 {
        self.min.unwrap_or(1)
    }

    /// `initial`, defaulted: 20 kept within `min..=max`.
    pub fn initial(&self) -> u32 {
        self.initial
            .unwrap_or_else(|| DEFAULT_INITIAL_CONCURRENCY.max(self.min()).min(self.max))
    }

    fn validate(&self, errors: &mut Errors) {
        if !(1..=MAX_CONCURRENCY).contains(&self.max) {
            errors.add(
                "spec.concurrency.max",
                format!("must be 1 to {MAX_CONCURRENCY}"),
            );
        }
        match self.min {
            Some(0) => errors.add("spec.concurrency.min", "must be at least 1"),
            Some(min) if min > self.max => errors.add(
                "spec.concurrency.min",
                format!("must not exceed max ({})", self.max),
            ),
            _ => {}
        }
        if let Some(initial) = self.initial
            && (initial < self.min() || initial > self.max)
        {
            errors.add(
                "spec.concurrency.initial",
                format!(
                    "must be between min ({}) and max ({})",
                    self.min(),
                    self.max
                ),
            );
        }
    }
}

impl RateLimitPolicySpec {
    pub(crate) fn validate(&self, errors: &mut Errors) {
        self.target_ref.validate(errors, true);
        if self.limits.is_empty() && self.quotas.is_empty() && self.concurrency.is_none() {
            errors.add(
                "spec.limits",
                "at least one of limits, quotas or concurrency is required",
            );
        }
        if self.consistency == Consistency::Approximate && self.backend != RateLimitBackend::Redis {
            errors.add(
                "spec.consistency",
                "`approximate` shares a Redis bucket between data planes; it needs `backend: redis`",
            );
        }
        if self.limits.len() > MAX_LIMITS {
            errors.add(
                "spec.limits",
                format!("at most {MAX_LIMITS} limits per policy"),
            );
        }
        for (i, limit) in self.limits.iter().enumerate() {
            let field = at("spec.limits", i);
            if limit.key.is_empty() {
                errors.add(format!("{field}.key"), "at least one key part is required");
            }
            for (j, part) in limit.key.iter().enumerate() {
                errors.check(at(&format!("{field}.key"), j), key_part(part));
            }
            if limit.requests == 0 {
                errors.add(format!("{field}.requests"), "must be at least 1");
            }
            if limit.burst == Some(0) {
                errors.add(format!("{field}.burst"), "must be at least 1");
            }
            errors.check(format!("{field}.per"), period(&limit.per).map(drop));
            if limit.overrides.len() > MAX_OVERRIDES {
                errors.add(
                    format!("{field}.overrides"),
                    format!("at most {MAX_OVERRIDES} overrides per limit"),
                );
            }
            for (k, o) in limit.overrides.iter().enumerate() {
                let field = at(&format!("{field}.overrides"), k);
                if o.value.is_empty() {
                    errors.add(
                        format!("{field}.value"),
                        "required; `*` matches every key value",
                    );
                }
                if o.requests == 0 {
                    errors.add(format!("{field}.requests"), "must be at least 1");
                }
                if o.burst == Some(0) {
                    errors.add(format!("{field}.burst"), "must be at least 1");
                }
            }
        }
        if self.quotas.len() > MAX_QUOTAS {
            errors.add(
                "spec.quotas",
                format!("at most {MAX_QUOTAS} quotas per policy"),
            );
        }
        for (i, quota) in self.quotas.iter().enumerate() {
            let field = at("spec.quotas", i);
            if quota.key.is_empty() {
                errors.add(format!("{field}.key"), "at least one key part is required");
            }
            for (j, part) in quota.key.iter().enumerate() {
                errors.check(at(&format!("{field}.key"), j), key_part(part));
            }
            if quota.requests.is_none() && quota.bytes.is_none() {
                errors.add(
                    field.clone(),
                    "at least one of requests and bytes is required",
                );
            }
            if quota.requests == Some(0) {
                errors.add(format!("{field}.requests"), "must be at least 1");
            }
            if quota.bytes == Some(0) {
                errors.add(format!("{field}.bytes"), "must be at least 1");
            }
            if !matches!(quota.per.as_str(), "day" | "month") {
                errors.add(
                    format!("{field}.per"),
                    format!("`{}` is not a quota period; use day or month", quota.per),
                );
            }
            if let Some(zone) = &quota.time_zone {
                errors.check(format!("{field}.timeZone"), time_zone(zone));
            }
        }
        if let Some(concurrency) = &self.concurrency {
            concurrency.validate(errors);
        }
    }
}

/// An IANA time zone name as the tz database spells it, e.g. `Europe/Berlin` or `UTC`.
fn time_zone(name: &str) -> Result<(), String> {
    name.parse::<chrono_tz::Tz>()
        .map(drop)
        .map_err(|_| format!("`{name}` is not an IANA time zone, e.g. UTC or Europe/Berlin"))
}

/// A limit's `per`: a duration of at least 1ms (the finest unit) and at most 1d.
pub fn period(text: &str) -> Result<std::time::Duration, String> {
    let period = parse_duration(text)?;
    if period > MAX_PERIOD {
        return Err(format!("`{text}` is longer than 1d, the longest period"));
    }
    Ok(period)
}

fn key_part(part: &str) -> Result<(), String> {
    let named = |prefix: &str| {
        part.strip_prefix(prefix)
            .is_some_and(|name| http::HeaderName::from_bytes(name.as_bytes()).is_ok())
    };
    if matches!(part, "clientIp" | "apiKey" | "subject" | "route")
        || named("claim:")
        || named("header:")
    {
        Ok(())
    } else {
        Err(format!(
            "`{part}` is not a key part; use clientIp, apiKey, subject, route, claim:NAME or header:NAME"
        ))
    }
}

/// Cross-origin resource sharing for the routes it targets.
// `printcolumn(...)` repeats its keys once per column, which clippy mistakes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "gateway.pavilion.dev",
    version = "v1alpha1",
    kind = "CorsPolicy",
    shortname = "cors",
    namespaced,
    derive = "PartialEq",
    status = "ResourceStatus",
    category = "pavilion",
    doc = "Cross-origin resource sharing for the routes it targets.",
    printcolumn(name = "Target", type_ = "string", json_path = ".spec.targetRef.name")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CorsPolicySpec {
    pub target_ref: TargetRef,
    /// Exact origins (`https://app.example.com`), `https://*.example.com`, or `*`.
    #[schemars(length(min = 1))]
    pub allow_origins: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_headers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    #[serde(default)]
    pub allow_credentials: bool,
    /// How long browsers may cache a preflight answer, e.g. `10m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,
}

/// A `*` in an origin only as `scheme://*.domain` (so `https://*example.com`,
/// `https://*` or `https://app.*.com` never pass).
fn wildcard_origin_ok(origin: &str) -> bool {
    let Some((_, host)) = origin.split_once("://") else {
        return false;
    };
    if host.is_empty() || host.contains(['/', '@', '#', '?']) {
        return false;
    }
    if !host.contains('*') {
        return true;
    }
    host.strip_prefix("*.").is_some_and(|domain| {
        !domain.is_empty() && !domain.contains('*') && !domain.starts_with('.')
    })
}

impl CorsPolicySpec {
    pub(crate) fn validate(&self, errors: &mut Errors) {
        // CORS is per route or namespace: a gateway-wide origin list is not offered.
        self.target_ref.validate(errors, false);
        if self.allow_origins.is_empty() {
            errors.add("spec.allowOrigins", "at least one origin is required");
        }
        for (i, origin) in self.allow_origins.iter().enumerate() {
            let field = at("spec.allowOrigins", i);
            if origin == "*" {
                if self.allow_credentials {
                    errors.add(field, "`*` cannot be combined with allowCredentials: true");
                }
            } else if !(origin.starts_with("http://") || origin.starts_with("https://"))
                || origin.ends_with('/')
                || !wildcard_origin_ok(origin)
            {
                errors.add(
                    field,
                    format!(
                        "`{origin}` must be scheme://host[:port], scheme://*.domain (the star as a whole leftmost label), or `*`"
                    ),
                );
            }
        }
        for (i, method) in self.allow_methods.iter().enumerate() {
            if method != "*" && http::Method::from_bytes(method.as_bytes()).is_err() {
                errors.add(
                    at("spec.allowMethods", i),
                    format!("`{method}` is not an HTTP method"),
                );
            }
        }
        for (list, name) in [
            (&self.allow_headers, "spec.allowHeaders"),
            (&self.expose_headers, "spec.exposeHeaders"),
        ] {
            for (i, header) in list.iter().enumerate() {
                if header != "*" && http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                    errors.add(at(name, i), format!("`{header}` is not a header name"));
                }
            }
        }
        if let Some(max_age) = &self.max_age {
            errors.check("spec.maxAge", parse_duration(max_age).map(drop));
        }
    }
}
