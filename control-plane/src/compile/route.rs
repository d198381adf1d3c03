//! Routes into their snapshot form: normalised, defaulted, in precedence order.

use std::sync::Arc;
use std::time::Duration;

use pavilion_crds::duration::parse_duration;
use pavilion_crds::{PathMatchType, Resource, Route};
use pavilion_proto as proto;

use super::memo::{Memo, RouteForm, RouteShape};
use super::rate_limit::{Applied, Limits};
use super::{Outcome, Report, auth, conflicts};

/// Timeout of a rule that sets none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The snapshot's routes, from accepted routes (each with the index of its report), in
/// precedence order, their rules carrying the rate limits, quotas and concurrency limits
/// that reach them; records conflict warnings in those reports. A route unchanged since
/// the last compile, with the same policies, is the form built then (see [`Memo`]).
pub(super) fn build_routes(
    routes: &[(&Resource, usize)],
    reports: &mut [Report],
    limits: &Limits,
    cors: &super::cors::Cors,
    memo: &mut Memo,
) -> Vec<Arc<RouteForm>> {
    let mut ordered: Vec<(&Resource, &Route, usize)> = routes
        .iter()
        .filter_map(|(resource, i)| match resource {
            Resource::Route(route) => Some((*resource, route, *i)),
            _ => None,
        })
        .collect();
    // Oldest first; documents without a creation time (files) count as oldest, then by name.
    // Compared by reference: a key of clones cost three allocations per comparison, a
    // quarter of a million at 10 000 routes.
    fn precedence(
        r: &Route,
    ) -> (
        Option<&k8s_openapi::jiff::Timestamp>,
        Option<&str>,
        Option<&str>,
    ) {
        let meta = &r.metadata;
        (
            meta.creation_timestamp.as_ref().map(|t| &t.0),
            meta.namespace.as_deref(),
            meta.name.as_deref(),
        )
    }
    ordered.sort_by(|(_, a, _), (_, b, _)| precedence(a).cmp(&precedence(b)));
    let forms: Vec<Arc<RouteForm>> = ordered
        .iter()
        .map(|(resource, r, _)| {
            let namespace = r
                .metadata
                .namespace
                .as_deref()
                .unwrap_or(pavilion_crds::resource::DEFAULT_NAMESPACE);
            let name = r.metadata.name.as_deref().unwrap_or_default();
            let applied = limits.for_route(namespace, name);
            let cors = cors.for_route(namespace, name);
            memo.route_form(resource, &applied, cors.as_ref(), || {
                to_proto(r, &applied, cors.as_ref())
            })
        })
        .collect();
    let shapes: Vec<&RouteShape> = forms.iter().map(|form| &form.shape).collect();
    for (position, warning) in conflicts::find(&shapes) {
        if let Outcome::Accepted { warnings } = &mut reports[ordered[position].2].outcome {
            warnings.push(warning);
        }
    }
    forms
}

fn to_proto(route: &Route, applied: &Applied, cors: Option<&proto::Cors>) -> proto::Route {
    let security_headers = route
        .spec
        .security_headers
        .as_ref()
        .map(|h| proto::SecurityHeaders {
            content_type_options: h.content_type_options.clone(),
            frame_options: h.frame_options.clone(),
            referrer_policy: h.referrer_policy.clone(),
            content_security_policy: h.content_security_policy.clone(),
            strict_transport_security: h.strict_transport_security.clone(),
        });
    proto::Route {
        security_headers,
        namespace: route.metadata.namespace.clone().unwrap_or_default(),
        name: route.metadata.name.clone().unwrap_or_default(),
        hosts: {
            let mut hosts: Vec<String> = route
                .spec
                .hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect();
            hosts.sort();
            hosts.dedup();
            hosts
        },
        rules: route
            .spec
            .rules
            .iter()
            .map(|rule| proto::Rule {
                matches: rule.matches.iter().map(to_proto_match).collect(),
                backends: rule
                    .backends
                    .iter()
                    .filter_map(|b| {
                        Some(proto::Backend {
                            url: b.url.clone()?,
                            weight: b.weight(),
                        })
                    })
                    .collect(),
                timeout_ms: rule
                    .timeout
                    .as_deref()
                    .and_then(|t| parse_duration(t).ok())
                    .unwrap_or(DEFAULT_TIMEOUT)
                    .as_millis() as u64,
                auth: rule.auth.as_deref().map(auth::to_proto),
                ip_allow: auth::cidrs(&rule.ip_allow),
                ip_deny: auth::cidrs(&rule.ip_deny),
                upstream_server_name: rule
                    .upstream_tls
                    .as_ref()
                    .and_then(|t| t.server_name.clone())
                    .map(|name| name.to_ascii_lowercase())
                    .unwrap_or_default(),
                rate_limits: applied.rate_limits.clone(),
                quotas: applied.quotas.clone(),
                concurrency: applied.concurrency.clone(),
                service: rule
                    .backends
                    .iter()
                    .find_map(|b| b.service)
                    .map(|kind| kind.as_str().to_owned())
                    .unwrap_or_default(),
                tenancy: rule.tenancy.as_ref().map(|t| proto::Tenancy {
                    required: t.required,
                }),
                roles: rule
                    .authorize
                    .as_ref()
                    .map(|a| super::tenancy::roles(&a.roles))
                    .unwrap_or_default(),
                commands: rule.commands.as_ref().map(|c| proto::CommandApi {
                    window_ms: c.window().as_millis() as u64,
                }),
                cors: cors.cloned(),
                websocket: rule.websocket.as_ref().map(|w| proto::WebSocket {
                    idle_timeout_ms: w.idle_timeout().as_millis() as u64,
                }),
                retry: rule.retry.as_deref().map(super::traffic::retry),
                load_balancer: rule
                    .load_balancer
                    .as_deref()
                    .map(super::traffic::load_balancer),
                health_check: rule
                    .health_check
                    .as_deref()
                    .map(super::traffic::health_check),
                circuit_breaker: rule
                    .circuit_breaker
                    .as_deref()
                    .map(super::traffic::circuit_breaker),
                rewrite: rule.rewrite.as_deref().map(super::traffic::rewrite),
                request_headers: rule
                    .request_headers
                    .as_deref()
                    .map(super::traffic::header_edits),
                response_headers: rule
                    .response_headers
                    .as_deref()
                    .map(super::traffic::header_edits),
                max_body_bytes: rule.max_body_bytes.unwrap_or(0),
                compression: rule.compression.as_deref().map(super::traffic::compression),
                cache: rule.cache.as_deref().map(super::traffic::cache),
                upstream_http2: rule.upstream_tls.as_ref().is_some_and(|t| t.http2),
                connections: rule.connections.as_deref().map(super::traffic::connections),
                rights: rule
                    .authorize
                    .as_ref()
                    .map(|a| super::tenancy::roles(&a.rights))
                    .unwrap_or_default(),
            })
            .collect(),
    }
}

fn to_proto_match(m: &pavilion_crds::RouteMatch) -> proto::Match {
    let path = m.path.as_ref().map_or(
        proto::PathMatch {
            r#type: proto::PathMatchType::Prefix as i32,
            value: "/".into(),
            ignore_case: false,
        },
        |p| proto::PathMatch {
            r#type: match p.kind {
                PathMatchType::Exact => proto::PathMatchType::Exact,
                PathMatchType::PathPrefix => proto::PathMatchType::Prefix,
                PathMatchType::RegularExpression => proto::PathMatchType::RegularExpression,
            } as i32,
            value: match p.kind {
                PathMatchType::PathPrefix => normalize_prefix(&p.value),
                _ => p.value.clone(),
            },
            ignore_case: p.ignore_case,
        },
    );
    let mut methods: Vec<String> = m.methods.iter().map(|x| x.to_ascii_uppercase()).collect();
    methods.sort();
    methods.dedup();
    let mut headers: Vec<proto::HeaderMatch> = m
        .headers
        .iter()
        .map(|h| proto::HeaderMatch {
            name: h.name.to_ascii_lowercase(),
            value: h.value.clone(),
        })
        .collect();
    headers.sort_by(|a, b| (&a.name, &a.value).cmp(&(&b.name, &b.value)));
    headers.dedup();
    proto::Match {
        path: Some(path),
        methods,
        headers,
    }
}

/// `/orders/` and `/orders` are the same segment prefix; `/` stays `/`.
fn normalize_prefix(value: &str) -> String {
    let trimmed = value.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".into()
    } else {
        trimmed.into()
    }
}
