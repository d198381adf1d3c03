//! `explain`: what the gateway would do with a described request, phase by phase — from
//! the snapshot a data plane runs and the same phase functions as [`Proxy::phases`], in the
//! same order. Only the phases that spend something are asked instead of run: rate limits,
//! the concurrency limit and quotas report the key the request would count under without
//! counting it, and nothing is sent upstream (the backend that would be picked is named).
//!
//! [`Proxy::phases`]: super::Proxy

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::Empty;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::auth::TokenCache;
use crate::deny::Deny;
use crate::headers::Peer;
use crate::ratelimit;
use crate::route::RequestFacts;
use crate::runtime::{Rule, Runtime};

use super::{Context, Shared, admit, authn, authorize, cors, ip, placement, route, tenant};

/// A request as `explain` is asked about it.
#[derive(Clone, Debug, Deserialize)]
pub struct Described {
    /// `GET`, `POST`, …
    pub method: String,
    /// Absolute (`https://api.example.com/orders/1`), or a path with a `host` header.
    pub url: String,
    /// Header fields in order, as `name: value` pairs.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// The client's address (default 127.0.0.1).
    #[serde(default)]
    pub client: Option<IpAddr>,
}

/// What the gateway would do.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Report {
    /// The snapshot version the answer comes from.
    pub snapshot: String,
    /// Rules whose host and path match, in precedence order; the first whose method and
    /// header conditions hold serves the request.
    pub candidates: Vec<Candidate>,
    /// Each phase in the order the request path runs them, up to the one that decides.
    pub phases: Vec<Phase>,
    /// The backend the request would go to (one pick among weighted backends).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    pub outcome: Outcome,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Candidate {
    pub route: String,
    pub rule: usize,
    /// Whether its method and header conditions hold for this request.
    pub conditions_hold: bool,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Phase {
    pub phase: &'static str,
    /// `pass`, `deny`, or `skip` (nothing on the rule for this phase).
    pub verdict: &'static str,
    pub detail: Vec<String>,
}

/// How the request would end.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Outcome {
    /// The gateway's own answer when a phase refuses; absent when the request would be
    /// forwarded (the upstream answers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'static str>,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("`{0}` is not an HTTP method")]
    Method(String),
    #[error("`{0}` is not a URL or a path")]
    Url(String),
    #[error("header `{0}`: not a valid name or value")]
    Header(String),
}

/// The described request as the phases read it.
fn request(described: &Described) -> Result<Request<Empty<Bytes>>, ExplainError> {
    let method = Method::from_bytes(described.method.as_bytes())
        .map_err(|_| ExplainError::Method(described.method.clone()))?;
    let uri: Uri = described
        .url
        .parse()
        .map_err(|_| ExplainError::Url(described.url.clone()))?;
    let mut builder = Request::builder().method(method);
    if let Some(authority) = uri.authority() {
        // As a client sends an absolute URL: the path on the request line, the host in Host.
        let has_host = described
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("host"));
        if !has_host {
            builder = builder.header(http::header::HOST, authority.as_str());
        }
    }
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    builder = builder.uri(path);
    for (name, value) in &described.headers {
        let header = || ExplainError::Header(name.clone());
        let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| header())?;
        let value = HeaderValue::from_str(value.trim()).map_err(|_| header())?;
        builder = builder.header(name, value);
    }
    builder
        .body(Empty::new())
        .map_err(|_| ExplainError::Url(described.url.clone()))
}

/// Explains `described` against `runtime`, with `shared`'s settings (limits, trusted
/// proxies) — those of the data plane that answers.
pub async fn explain(
    shared: &Shared,
    runtime: &Runtime,
    described: &Described,
) -> Result<Report, ExplainError> {
    let request = request(described)?;
    let client = Peer::new(
        SocketAddr::new(
            described.client.unwrap_or(IpAddr::from([127, 0, 0, 1])),
            50000,
        ),
        0,
        described.url.starts_with("https://"),
    );
    let request_id = HeaderValue::from_static("explain");
    let trace = crate::trace::Trace::none(&request_id);
    let mut context = Context::new(
        &client,
        super::is_grpc(&request),
        request_id,
        Instant::now(),
        trace,
    );
    let mut report = Report {
        snapshot: runtime.version.clone(),
        candidates: Vec::new(),
        phases: Vec::new(),
        upstream: None,
        outcome: Outcome {
            status: None,
            code: None,
            message: String::new(),
        },
    };
    let tokens = TokenCache::default();
    let decided = phases(
        shared,
        runtime,
        &request,
        &tokens,
        &mut context,
        &mut report,
    )
    .await;
    report.upstream = context.target.map(|t| t.url.to_string());
    let preflight = report.phases.last().is_some_and(|p| p.phase == "cors");
    report.outcome = match decided {
        Ok(()) if preflight => Outcome {
            status: Some(204),
            code: None,
            message: "a CORS preflight, answered by the gateway".into(),
        },
        Ok(()) => Outcome {
            status: None,
            code: None,
            message: match (context.rule, &report.upstream) {
                (Some(rule), Some(upstream)) if rule.commands.is_some() => {
                    format!("served as a command to {upstream}")
                }
                (_, Some(upstream)) => format!("forwarded to {upstream}"),
                _ => "forwarded".into(),
            },
        },
        Err(deny) => {
            if let Some(last) = report.phases.last_mut() {
                last.verdict = "deny";
                last.detail.push(deny.message());
            }
            Outcome {
                status: Some(deny.status().as_u16()),
                code: Some(deny.code()),
                message: deny.message(),
            }
        }
    };
    Ok(report)
}

/// The phases of [`Proxy::phases`](super::Proxy), each noted in the report before it runs
/// (so a refusal is recorded against the phase that made it).
async fn phases<'r>(
    shared: &Shared,
    runtime: &'r Runtime,
    request: &Request<Empty<Bytes>>,
    tokens: &TokenCache,
    context: &mut Context<'r>,
    report: &mut Report,
) -> Result<(), Deny> {
    let note = |report: &mut Report, phase: &'static str, detail: Vec<String>| {
        report.phases.push(Phase {
            phase,
            verdict: "pass",
            detail,
        });
    };
    note(report, "admit", Vec::new());
    admit::ready(runtime)?;
    let admitted = admit::admit(request, &shared.limits, shared.escaped_slashes)?;
    report.phases[0].detail = vec![format!(
        "host {}, path {}",
        admitted.host.as_deref().unwrap_or("-"),
        admitted.path.key()
    )];

    let facts = RequestFacts {
        host: admitted.host.as_deref(),
        path: admitted.path.key(),
        method: request.method(),
        headers: request.headers(),
    };
    report.candidates = runtime
        .candidates(&facts)
        .into_iter()
        .map(|(rule, conditions_hold)| Candidate {
            route: rule.route.to_string(),
            rule: rule.index,
            conditions_hold,
        })
        .collect();
    note(report, "route", Vec::new());
    let rule = route::find(runtime, &admitted, request, context)?;
    last(report).push(format!("route {} rules[{}]", rule.route, rule.index));

    note(report, "cors", Vec::new());
    let answered = cors::check(rule, request, context)?.is_some();
    match &rule.cors {
        Some(policy) if answered => {
            last(report).push(format!(
                "preflight answered by CorsPolicy {}",
                policy.policy
            ));
            return Ok(());
        }
        Some(policy) => last(report).push(format!("CorsPolicy {}", policy.policy)),
        None => skip(report),
    }

    note(report, "ip", Vec::new());
    ip::check(rule, request, &shared.trusted_proxies, context)?;
    match (&rule.ip, context.client_ip) {
        (Some(_), Some(client)) => last(report).push(format!("client {client} passes the lists")),
        (None, _) => skip(report),
        (Some(_), None) => {}
    }

    note(
        report,
        "limits",
        limits(&rule.limits_before_auth, rule, request, context),
    );
    if rule.limits_before_auth.is_empty() {
        skip(report);
    }

    note(report, "authn", Vec::new());
    authn::authenticate(rule, request, &admitted, tokens, runtime, context).await?;
    match &context.identity {
        Some(identity) => last(report).push(format!("authenticated as {}", identity.principal)),
        None => skip(report),
    }

    note(report, "tenant", Vec::new());
    tenant::check(rule, request, runtime, context)?;
    match context.tenant.as_ref().and_then(|t| t.to_str().ok()) {
        Some(tenant) => last(report).push(format!("tenant {tenant}")),
        None => skip(report),
    }

    note(report, "authorize", Vec::new());
    authorize::check(
        rule,
        context,
        shared.identity.as_deref().map(|i| i.catalogue()),
    )?;
    if rule.roles.is_empty() {
        skip(report);
    } else {
        let roles: Vec<&str> = rule.roles.iter().map(|r| &**r).collect();
        last(report).push(format!("holds one of {}", roles.join(", ")));
    }

    // The circuit is looked at, not entered: explaining takes no probe's place.
    note(report, "circuit", Vec::new());
    match &rule.breaker {
        None => skip(report),
        Some(breaker) => {
            let state = breaker.state();
            last(report).push(format!("circuit {}", state.as_str()));
            if state == crate::upstream::breaker::State::Open {
                return Err(Deny::CircuitOpen {
                    route: rule.route.to_string(),
                    retry_after: std::time::Duration::from_secs(1),
                });
            }
        }
    }

    note(report, "placement", Vec::new());
    let target = placement::pick(runtime, rule, request, context)?;
    last(report).push(format!("backend {}", target.url));

    let after_auth = limits(&rule.limits_after_auth, rule, request, context);
    note(report, "limits-id", after_auth);
    if rule.limits_after_auth.is_empty() {
        skip(report);
    }

    let mut spent = Vec::new();
    if let Some(concurrency) = &rule.concurrency {
        spent.push(format!(
            "policy {} concurrency limit {} ({} in flight now)",
            concurrency.policy,
            concurrency.limit(),
            concurrency.in_flight()
        ));
    }
    let facts = ratelimit::Facts {
        client_ip: context.client_ip,
        identity: context.identity.as_deref(),
        headers: request.headers(),
        route: &rule.route,
    };
    spent.extend(
        rule.quotas
            .iter()
            .map(|quota| ratelimit::explain_quota(quota, &facts)),
    );
    let nothing_spent = spent.is_empty();
    note(report, "quota", spent);
    if nothing_spent {
        skip(report);
    }
    note(
        report,
        if rule.commands.is_some() {
            "command"
        } else {
            "forward"
        },
        vec![format!("to {} (not sent)", target.url)],
    );
    Ok(())
}

/// What the rule's limits would count this request as (nothing is counted).
fn limits(
    limits: &ratelimit::RuleLimits,
    rule: &Rule,
    request: &Request<Empty<Bytes>>,
    context: &Context<'_>,
) -> Vec<String> {
    let facts = ratelimit::Facts {
        client_ip: context.client_ip,
        identity: context.identity.as_deref(),
        headers: request.headers(),
        route: &rule.route,
    };
    limits.explain(&facts)
}

fn last(report: &mut Report) -> &mut Vec<String> {
    &mut report
        .phases
        .last_mut()
        .expect("noted before it ran")
        .detail
}

fn skip(report: &mut Report) {
    if let Some(phase) = report.phases.last_mut() {
        phase.verdict = "skip";
    }
}

/// Why a snapshot could not be explained against.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error(transparent)]
    Request(#[from] ExplainError),
    #[error("the snapshot does not build: {0}")]
    Build(#[from] crate::runtime::BuildError),
    #[error("upstream TLS settings: {0}")]
    Tls(#[from] rustls::Error),
}

/// Explains `described` against `snapshot` outside a running data plane (`pavilion-control
/// explain`): the runtime is built exactly as a data plane builds it, with a data plane's
/// default settings ([`crate::Config::local`]). JWKS are fetched from their URLs as a data
/// plane would; rate-limit counters start empty (nothing is counted anyway).
pub async fn offline(
    snapshot: &pavilion_proto::Snapshot,
    described: &Described,
) -> Result<Report, OfflineError> {
    let (shared, runtime) = offline_parts(snapshot)?;
    Ok(explain(&shared, &runtime, described).await?)
}

/// What [`offline`] explains against: a data plane's shared state with default settings and
/// the runtime built from `snapshot` (needs a Tokio runtime entered: the JWKS cache keeps it).
pub(crate) fn offline_parts(
    snapshot: &pavilion_proto::Snapshot,
) -> Result<(Shared, Runtime), OfflineError> {
    let config = crate::Config::local();
    let metrics = crate::metrics::Metrics::new();
    let limiter = crate::ratelimit::Limiter::new(
        &config.rate_limit,
        None,
        crate::ratelimit::LimiterMetrics::new(&metrics.registry),
    );
    let jwks = crate::auth::jwks::JwksCache::new(
        config.jwks.clone(),
        crate::upstream::tls_config(&config.upstream)?,
        metrics.jwks_fetches.clone(),
    );
    let context = crate::auth::AuthContext {
        jwks,
        issued_keys: None,
    };
    let runtime = Runtime::build(snapshot, &metrics, &context)?;
    let shared = Shared::new(
        metrics,
        &config,
        limiter,
        crate::commands::Commands::new(None),
    );
    Ok((shared, runtime))
}

impl std::fmt::Display for Report {
    /// The report as `pavilion-control explain` prints it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "snapshot {}", self.snapshot)?;
        if self.candidates.is_empty() {
            writeln!(f, "candidates: none (no route matches this host and path)")?;
        } else {
            writeln!(f, "candidates (precedence order):")?;
            let mut chosen = false;
            for candidate in &self.candidates {
                let mark = if candidate.conditions_hold && !chosen {
                    chosen = true;
                    "▶"
                } else if candidate.conditions_hold {
                    " "
                } else {
                    "✗"
                };
                let note = if candidate.conditions_hold {
                    ""
                } else {
                    "  (method or header conditions do not hold)"
                };
                writeln!(
                    f,
                    "  {mark} {} rules[{}]{note}",
                    candidate.route, candidate.rule
                )?;
            }
        }
        writeln!(f, "phases:")?;
        for phase in &self.phases {
            let detail = phase.detail.join("; ");
            let line = format!("  {:<10} {:<5} {detail}", phase.phase, phase.verdict);
            writeln!(f, "{}", line.trim_end())?;
        }
        if let Some(upstream) = &self.upstream {
            writeln!(f, "upstream: {upstream}")?;
        }
        match (self.outcome.status, self.outcome.code) {
            (Some(status), Some(code)) => {
                writeln!(f, "outcome: {status} {code}: {}", self.outcome.message)
            }
            _ => writeln!(f, "outcome: {}", self.outcome.message),
        }
    }
}
