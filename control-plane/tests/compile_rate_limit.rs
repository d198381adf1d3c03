//! Rate-limit policies in the snapshot: every rule of a route carries the limits of its
//! namespace's policies, then its route's, oldest policy first; defaults filled in, header
//! names lower-cased, overrides kept in order; policies that reach nothing are reported
//! and applied nowhere.

use std::path::PathBuf;

use pavilion_control::compile::{Compiled, Outcome, Reason, compile_at};
use pavilion_control::source::{Item, Origin};
use pavilion_crds::parse_documents;
use pavilion_proto as proto;
use prost::Message;

const NOW: i64 = 1_780_272_000;

fn compile(docs: &[String]) -> Compiled {
    let items: Vec<Item> = parse_documents(&docs.concat())
        .into_iter()
        .map(|doc| Item {
            origin: Origin::File {
                path: PathBuf::from("r.yaml"),
                line: doc.line,
            },
            parsed: doc.result,
        })
        .collect();
    compile_at(&items, NOW)
}

/// A route of two rules in `namespace`.
fn route(namespace: &str, name: &str) -> String {
    format!(
        "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: Route\nmetadata: {{ name: {name}, namespace: {namespace} }}\nspec:\n  hosts: [{name}.{namespace}.example.com]\n  rules:\n    - matches: [{{ path: {{ type: PathPrefix, value: /a }} }}]\n      backends: [{{ url: http://127.0.0.1:9000 }}]\n    - backends: [{{ url: http://127.0.0.1:9001 }}]\n---\n"
    )
}

/// A policy; `created` is a creation timestamp or empty; `limits` its `limits:` items.
fn policy(namespace: &str, name: &str, created: &str, target: &str, limits: &str) -> String {
    let created = if created.is_empty() {
        String::new()
    } else {
        format!("  creationTimestamp: \"{created}\"\n")
    };
    format!(
        "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata:\n  name: {name}\n  namespace: {namespace}\n{created}spec:\n  targetRef: {target}\n  limits:\n{limits}---\n"
    )
}

const ONE_LIMIT: &str = "    - { key: [clientIp], requests: 10, per: 1s }\n";
const TWO_LIMITS: &str = "    - { key: [clientIp], requests: 10, per: 1s }\n    - { key: [apiKey], requests: 1000, per: 1h }\n";

fn limits_of<'a>(
    compiled: &'a Compiled,
    namespace: &str,
    name: &str,
) -> Vec<&'a [proto::RateLimit]> {
    let route = compiled
        .snapshot
        .routes
        .iter()
        .find(|r| r.namespace == namespace && r.name == name)
        .unwrap_or_else(|| panic!("route {namespace}/{name} in the snapshot"));
    route
        .rules
        .iter()
        .map(|r| r.rate_limits.as_slice())
        .collect()
}

fn names(limits: &[proto::RateLimit]) -> Vec<String> {
    limits
        .iter()
        .map(|l| format!("{}#{}", l.policy, l.index))
        .collect()
}

fn reason(compiled: &Compiled, index: usize) -> Option<(Reason, String)> {
    match &compiled.reports[index].outcome {
        Outcome::Accepted { .. } => None,
        Outcome::Rejected { reason, errors } => Some((*reason, errors[0].to_string())),
    }
}

fn scenario() -> Vec<String> {
    vec![
        policy(
            "shop",
            "route-b",
            "",
            "{ kind: Route, name: orders }",
            ONE_LIMIT,
        ),
        policy(
            "shop",
            "ns-young",
            "2026-06-01T00:00:00Z",
            "{ kind: Namespace, name: shop }",
            ONE_LIMIT,
        ),
        route("shop", "orders"),
        policy(
            "shop",
            "route-a",
            "",
            "{ kind: Route, name: orders }",
            ONE_LIMIT,
        ),
        policy(
            "shop",
            "ns-old",
            "2026-01-01T00:00:00Z",
            "{ kind: Namespace, name: shop }",
            TWO_LIMITS,
        ),
        route("shop", "cart"),
        route("billing", "invoices"),
        policy(
            "billing",
            "everything",
            "",
            "{ kind: Namespace, name: billing }",
            ONE_LIMIT,
        ),
    ]
}

#[test]
fn namespace_limits_come_first_then_the_routes_oldest_policy_first_on_every_rule() {
    let compiled = compile(&scenario());
    assert!(compiled.reports.iter().all(|r| r.is_accepted()));

    let orders = limits_of(&compiled, "shop", "orders");
    assert_eq!(orders.len(), 2);
    for rule in &orders {
        assert_eq!(
            names(rule),
            [
                "shop/ns-old#0",
                "shop/ns-old#1",
                "shop/ns-young#0",
                "shop/route-a#0",
                "shop/route-b#0"
            ]
        );
    }
    for rule in limits_of(&compiled, "shop", "cart") {
        assert_eq!(
            names(rule),
            ["shop/ns-old#0", "shop/ns-old#1", "shop/ns-young#0"]
        );
    }
    for rule in limits_of(&compiled, "billing", "invoices") {
        assert_eq!(names(rule), ["billing/everything#0"]);
    }
}

#[test]
fn fields_are_compiled_with_their_defaults() {
    let limits = "    - key: [clientIp, 'header:X-Tenant', 'claim:OrgId', apiKey]\n      requests: 100\n      per: 1m30s\n      overrides:\n        - { value: 'premium-*', requests: 1000 }\n        - { value: '*', requests: 5, burst: 7 }\n    - { key: [subject, route], requests: 3, per: 250ms, burst: 9 }\n";
    let defaults = policy("shop", "plain", "", "{ kind: Route, name: orders }", limits);
    let all_set = defaults.replace("name: plain", "name: tuned").replace(
        "  limits:\n",
        "  backend: redis\n  failureMode: closed\n  headers: false\n  limits:\n",
    );
    let open = defaults.replace("name: plain", "name: open").replace(
        "  limits:\n",
        "  backend: redis\n  failureMode: open\n  limits:\n",
    );
    let compiled = compile(&[route("shop", "orders"), defaults, all_set, open]);
    let rule = limits_of(&compiled, "shop", "orders")[0];
    assert_eq!(
        names(rule),
        [
            "shop/open#0",
            "shop/open#1",
            "shop/plain#0",
            "shop/plain#1",
            "shop/tuned#0",
            "shop/tuned#1"
        ]
    );

    let plain = &rule[2];
    assert_eq!(
        plain.key,
        ["clientIp", "header:x-tenant", "claim:OrgId", "apiKey"]
    );
    assert_eq!(
        (plain.requests, plain.period_ms, plain.burst),
        (100, 90_000, 100)
    );
    assert_eq!(plain.backend, proto::RateLimitBackend::Local as i32);
    assert_eq!(
        plain.failure_mode,
        proto::RateLimitFailureMode::Local as i32
    );
    assert!(plain.headers);
    let overrides: Vec<_> = plain
        .overrides
        .iter()
        .map(|o| (o.value.as_str(), o.requests, o.burst))
        .collect();
    assert_eq!(overrides, [("premium-*", 1000, 1000), ("*", 5, 7)]);

    let second = &rule[3];
    assert_eq!(second.key, ["subject", "route"]);
    assert_eq!(
        (second.requests, second.period_ms, second.burst),
        (3, 250, 9)
    );
    assert!(second.overrides.is_empty());

    let tuned = &rule[4];
    assert_eq!(tuned.backend, proto::RateLimitBackend::Redis as i32);
    assert_eq!(
        tuned.failure_mode,
        proto::RateLimitFailureMode::Closed as i32
    );
    assert!(!tuned.headers);
    assert_eq!(
        rule[0].failure_mode,
        proto::RateLimitFailureMode::Open as i32
    );
}

#[test]
fn the_snapshot_is_the_same_whatever_the_document_order() {
    let docs = scenario();
    let one = compile(&docs);
    let mut reversed = docs.clone();
    reversed.reverse();
    let two = compile(&reversed);
    assert_eq!(one.snapshot, two.snapshot);
    assert_eq!(one.snapshot.encode_to_vec(), two.snapshot.encode_to_vec());

    let changed: Vec<String> = docs
        .iter()
        .map(|d| d.replace("requests: 1000", "requests: 1001"))
        .collect();
    assert_ne!(compile(&changed).snapshot.version, one.snapshot.version);
    let without_policies: Vec<String> = docs
        .iter()
        .filter(|d| !d.contains("RateLimitPolicy"))
        .cloned()
        .collect();
    assert_ne!(
        compile(&without_policies).snapshot.version,
        one.snapshot.version
    );
}

#[test]
fn policies_that_reach_no_route_are_reported_and_applied_nowhere() {
    let compiled = compile(&[
        route("shop", "orders"),
        route("billing", "invoices"),
        policy(
            "shop",
            "missing",
            "",
            "{ kind: Route, name: nope }",
            ONE_LIMIT,
        ),
        // A policy cannot reach into another namespace, by route or by namespace.
        policy(
            "billing",
            "orders",
            "",
            "{ kind: Route, name: orders }",
            ONE_LIMIT,
        ),
        policy(
            "billing",
            "shop",
            "",
            "{ kind: Namespace, name: shop }",
            ONE_LIMIT,
        ),
        // Invalid: rejected alone.
        policy(
            "shop",
            "invalid",
            "",
            "{ kind: Namespace, name: shop }",
            "    - { key: [clientIp], requests: 0, per: 1s }\n",
        ),
        policy(
            "shop",
            "kept",
            "",
            "{ kind: Route, name: orders }",
            ONE_LIMIT,
        ),
    ]);
    assert_eq!(
        reason(&compiled, 2),
        Some((
            Reason::TargetNotFound,
            "spec.targetRef: no accepted Route `nope` in namespace `shop`".to_owned()
        ))
    );
    assert_eq!(
        reason(&compiled, 3),
        Some((
            Reason::TargetNotFound,
            "spec.targetRef: no accepted Route `orders` in namespace `billing`".to_owned()
        ))
    );
    assert_eq!(
        reason(&compiled, 4),
        Some((
            Reason::TargetNotFound,
            "spec.targetRef: a policy can only target its own namespace `billing`, not `shop`"
                .to_owned()
        ))
    );
    assert_eq!(reason(&compiled, 5).map(|r| r.0), Some(Reason::Invalid));
    assert_eq!(reason(&compiled, 6), None);

    for rule in limits_of(&compiled, "shop", "orders") {
        assert_eq!(names(rule), ["shop/kept#0"]);
    }
    for rule in limits_of(&compiled, "billing", "invoices") {
        assert!(rule.is_empty());
    }
}

#[test]
fn documents_without_a_namespace_share_the_default_one() {
    let route = route("x", "orders").replace(", namespace: x", "");
    let policy = policy(
        "x",
        "all",
        "",
        "{ kind: Namespace, name: default }",
        ONE_LIMIT,
    )
    .replace("  namespace: x\n", "");
    let compiled = compile(&[route, policy]);
    assert!(compiled.reports.iter().all(|r| r.is_accepted()));
    let rules = &compiled.snapshot.routes[0].rules;
    assert!(
        rules
            .iter()
            .all(|r| names(&r.rate_limits) == ["default/all#0"])
    );
}

#[test]
fn routes_without_policies_carry_no_limits() {
    let compiled = compile(&[route("shop", "orders")]);
    assert!(
        compiled.snapshot.routes[0]
            .rules
            .iter()
            .all(|r| r.rate_limits.is_empty())
    );
}
