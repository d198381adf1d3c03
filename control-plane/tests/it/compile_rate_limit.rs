//! Rate-limit policies in the snapshot: every rule of a route carries the limits and quotas
//! of the gateway-wide policies, then its namespace's, then its route's, oldest policy
//! first, and the concurrency limit of the most specific policy that sets one; defaults
//! filled in, header names lower-cased, overrides kept in order; policies that reach
//! nothing (or target the gateway from outside the gateway namespace) are reported and
//! applied nowhere.

use pavilion_control::compile::{
    CompileOptions, Compiled, Outcome, Reason, compile_at, compile_at_with,
};
use pavilion_control::source::Item;
use pavilion_crds::parse_documents;
use pavilion_proto as proto;

const NOW: i64 = 1_780_272_000;

fn compile(docs: &[String]) -> Compiled {
    compile_at(&items(docs), NOW)
}

/// Compiles with `--gateway-namespace gateway_namespace`.
fn compile_in(gateway_namespace: &str, docs: &[String]) -> Compiled {
    let options = CompileOptions {
        gateway_namespace: gateway_namespace.to_owned(),
    };
    compile_at_with(&items(docs), NOW, &options)
}

fn items(docs: &[String]) -> Vec<Item> {
    parse_documents(&docs.concat())
        .into_iter()
        .map(|doc| Item::from_document(&std::sync::Arc::from(std::path::Path::new("r.yaml")), doc))
        .collect()
}

/// A route of two rules in `namespace`.
fn route(namespace: &str, name: &str) -> String {
    format!(
        "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: Route\nmetadata: {{ name: {name}, namespace: {namespace} }}\nspec:\n  hosts: [{name}.{namespace}.example.com]\n  rules:\n    - matches: [{{ path: {{ type: PathPrefix, value: /a }} }}]\n      backends: [{{ url: http://127.0.0.1:9000 }}]\n    - backends: [{{ url: http://127.0.0.1:9001 }}]\n---\n"
    )
}

/// A policy; `created` is a creation timestamp or empty; `limits` its `limits:` items.
fn policy(namespace: &str, name: &str, created: &str, target: &str, limits: &str) -> String {
    policy_with(
        namespace,
        name,
        created,
        target,
        &format!("  limits:\n{limits}"),
    )
}

/// A policy whose spec, after `targetRef`, is `rest` (indented lines).
fn policy_with(namespace: &str, name: &str, created: &str, target: &str, rest: &str) -> String {
    let created = if created.is_empty() {
        String::new()
    } else {
        format!("  creationTimestamp: \"{created}\"\n")
    };
    format!(
        "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata:\n  name: {name}\n  namespace: {namespace}\n{created}spec:\n  targetRef: {target}\n{rest}---\n"
    )
}

const ONE_LIMIT: &str = "    - { key: [clientIp], requests: 10, per: 1s }\n";
const TWO_LIMITS: &str = "    - { key: [clientIp], requests: 10, per: 1s }\n    - { key: [apiKey], requests: 1000, per: 1h }\n";

fn limits_of(compiled: &Compiled, namespace: &str, name: &str) -> Vec<Vec<proto::RateLimit>> {
    let route = compiled
        .routes
        .iter()
        .map(|form| form.decode())
        .find(|r| r.namespace == namespace && r.name == name)
        .unwrap_or_else(|| panic!("route {namespace}/{name} in the snapshot"));
    route.rules.into_iter().map(|r| r.rate_limits).collect()
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
        stale @ Outcome::Stale { .. } => panic!("nothing was accepted before: {stale:?}"),
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
    for rule in &limits_of(&compiled, "shop", "cart") {
        assert_eq!(
            names(rule),
            ["shop/ns-old#0", "shop/ns-old#1", "shop/ns-young#0"]
        );
    }
    for rule in &limits_of(&compiled, "billing", "invoices") {
        assert_eq!(names(rule), ["billing/everything#0"]);
    }
}

#[test]
fn fields_are_compiled_with_their_defaults() {
    let limits = "    - key: [clientIp, 'header:X-Tenant', 'claim:OrgId', apiKey]\n      requests: 100\n      per: 1m30s\n      overrides:\n        - { value: 'premium-*', requests: 1000 }\n        - { value: '*', requests: 5, burst: 7 }\n    - { key: [subject, route], requests: 3, per: 250ms, burst: 9 }\n";
    let defaults = policy("shop", "plain", "", "{ kind: Route, name: orders }", limits);
    let all_set = defaults.replace("name: plain", "name: tuned").replace(
        "  limits:\n",
        "  backend: redis\n  consistency: approximate\n  failureMode: closed\n  headers: false\n  limits:\n",
    );
    let open = defaults.replace("name: plain", "name: open").replace(
        "  limits:\n",
        "  backend: redis\n  failureMode: open\n  limits:\n",
    );
    let compiled = compile(&[route("shop", "orders"), defaults, all_set, open]);
    let rule = &limits_of(&compiled, "shop", "orders")[0];
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
    assert!(!plain.approximate);
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
    assert!(tuned.approximate);
    assert!(!rule[0].approximate, "exact unless chosen");
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
    assert_eq!(one.full_snapshot(), two.full_snapshot());
    assert_eq!(one.encoded, two.encoded);

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
            Reason::Invalid,
            "spec.targetRef: a policy can only target its own namespace `billing`, not `shop`"
                .to_owned()
        ))
    );
    assert_eq!(reason(&compiled, 5).map(|r| r.0), Some(Reason::Invalid));
    assert_eq!(reason(&compiled, 6), None);

    for rule in &limits_of(&compiled, "shop", "orders") {
        assert_eq!(names(rule), ["shop/kept#0"]);
    }
    for rule in &limits_of(&compiled, "billing", "invoices") {
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
    let rules = &compiled.routes[0].decode().rules;
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
        compiled.routes[0].decode().rules.iter().all(|r| {
            r.rate_limits.is_empty() && r.quotas.is_empty() && r.concurrency.is_none()
        })
    );
}

const ONE_QUOTA: &str = "  quotas:\n    - { key: [apiKey], requests: 100, per: day }\n";
const TWO_QUOTAS: &str = "  quotas:\n    - { key: [apiKey], requests: 100, per: day }\n    - { key: [apiKey], bytes: 1000, per: month }\n";

fn rules_of(compiled: &Compiled, namespace: &str, name: &str) -> Vec<proto::Rule> {
    compiled
        .routes
        .iter()
        .map(|form| form.decode())
        .find(|r| r.namespace == namespace && r.name == name)
        .unwrap_or_else(|| panic!("route {namespace}/{name} in the snapshot"))
        .rules
}

fn quota_names(quotas: &[proto::Quota]) -> Vec<String> {
    quotas
        .iter()
        .map(|q| format!("{}#{}", q.policy, q.index))
        .collect()
}

fn concurrency_of(rule: &proto::Rule) -> Option<String> {
    rule.concurrency.as_ref().map(|c| c.policy.clone())
}

/// Policies at both levels, some with limits only, some with quotas only, some with both.
fn quota_scenario() -> Vec<String> {
    vec![
        policy_with(
            "shop",
            "route-b",
            "",
            "{ kind: Route, name: orders }",
            ONE_QUOTA,
        ),
        policy_with(
            "shop",
            "ns-young",
            "2026-06-01T00:00:00Z",
            "{ kind: Namespace, name: shop }",
            &format!("  limits:\n{ONE_LIMIT}{ONE_QUOTA}"),
        ),
        route("shop", "orders"),
        policy(
            "shop",
            "route-a",
            "",
            "{ kind: Route, name: orders }",
            ONE_LIMIT,
        ),
        policy_with(
            "shop",
            "ns-old",
            "2026-01-01T00:00:00Z",
            "{ kind: Namespace, name: shop }",
            TWO_QUOTAS,
        ),
        policy_with(
            "shop",
            "route-c",
            "",
            "{ kind: Route, name: orders }",
            &format!("  limits:\n{ONE_LIMIT}{TWO_QUOTAS}"),
        ),
        route("shop", "cart"),
        route("billing", "invoices"),
    ]
}

#[test]
fn quotas_come_in_the_order_of_limits_on_every_rule() {
    let compiled = compile(&quota_scenario());
    assert!(compiled.reports.iter().all(|r| r.is_accepted()));

    let orders = rules_of(&compiled, "shop", "orders");
    assert_eq!(orders.len(), 2);
    for rule in orders {
        assert_eq!(
            names(&rule.rate_limits),
            ["shop/ns-young#0", "shop/route-a#0", "shop/route-c#0"]
        );
        assert_eq!(
            quota_names(&rule.quotas),
            [
                "shop/ns-old#0",
                "shop/ns-old#1",
                "shop/ns-young#0",
                "shop/route-b#0",
                "shop/route-c#0",
                "shop/route-c#1"
            ]
        );
    }
    for rule in rules_of(&compiled, "shop", "cart") {
        assert_eq!(
            quota_names(&rule.quotas),
            ["shop/ns-old#0", "shop/ns-old#1", "shop/ns-young#0"]
        );
    }
    for rule in rules_of(&compiled, "billing", "invoices") {
        assert!(rule.quotas.is_empty() && rule.rate_limits.is_empty());
    }
}

#[test]
fn quota_fields_are_compiled_with_their_defaults() {
    let quotas = "  quotas:\n    - key: [clientIp, 'header:X-Tenant', 'claim:OrgId']\n      requests: 100000\n      per: day\n    - { key: [apiKey], bytes: 10737418240, per: month, timeZone: Europe/Berlin }\n    - { key: [route], requests: 7, bytes: 9, per: day, timeZone: America/New_York }\n";
    let plain = policy_with("shop", "plain", "", "{ kind: Route, name: orders }", quotas);
    let redis = plain.replace("name: plain", "name: redis").replace(
        "  quotas:\n",
        "  backend: redis\n  failureMode: closed\n  quotas:\n",
    );
    let compiled = compile(&[route("shop", "orders"), plain, redis]);
    assert!(compiled.reports.iter().all(|r| r.is_accepted()));
    let rule = &rules_of(&compiled, "shop", "orders")[0];
    assert!(rule.rate_limits.is_empty());
    assert_eq!(
        quota_names(&rule.quotas),
        [
            "shop/plain#0",
            "shop/plain#1",
            "shop/plain#2",
            "shop/redis#0",
            "shop/redis#1",
            "shop/redis#2"
        ]
    );

    let day = &rule.quotas[0];
    assert_eq!(day.key, ["clientIp", "header:x-tenant", "claim:OrgId"]);
    assert_eq!((day.requests, day.bytes), (100_000, 0));
    assert_eq!(day.period, proto::QuotaPeriod::Day as i32);
    assert_eq!(day.time_zone, "UTC");
    assert_eq!(day.backend, proto::RateLimitBackend::Local as i32);
    assert_eq!(day.failure_mode, proto::RateLimitFailureMode::Local as i32);

    let month = &rule.quotas[1];
    assert_eq!(month.key, ["apiKey"]);
    assert_eq!((month.requests, month.bytes), (0, 10_737_418_240));
    assert_eq!(month.period, proto::QuotaPeriod::Month as i32);
    assert_eq!(month.time_zone, "Europe/Berlin");

    let both = &rule.quotas[2];
    assert_eq!((both.requests, both.bytes), (7, 9));
    assert_eq!(both.time_zone, "America/New_York");

    for quota in &rule.quotas[3..] {
        assert_eq!(quota.backend, proto::RateLimitBackend::Redis as i32);
        assert_eq!(
            quota.failure_mode,
            proto::RateLimitFailureMode::Closed as i32
        );
    }
    assert_eq!(rule.quotas[4].time_zone, "Europe/Berlin");
}

/// Namespace `shop`: an old policy without a concurrency limit, then two that set one.
/// Route `orders` has its own (two, the older wins); `cart` has only a route policy
/// without one; `billing/invoices` has only a route policy with one.
fn concurrency_scenario() -> Vec<String> {
    vec![
        policy(
            "shop",
            "ns-oldest",
            "2025-01-01T00:00:00Z",
            "{ kind: Namespace, name: shop }",
            ONE_LIMIT,
        ),
        policy_with(
            "shop",
            "ns-young",
            "2026-06-01T00:00:00Z",
            "{ kind: Namespace, name: shop }",
            "  concurrency: { max: 50 }\n",
        ),
        policy_with(
            "shop",
            "ns-old",
            "2026-01-01T00:00:00Z",
            "{ kind: Namespace, name: shop }",
            "  concurrency: { max: 100 }\n",
        ),
        policy_with(
            "shop",
            "route-young",
            "2026-06-01T00:00:00Z",
            "{ kind: Route, name: orders }",
            "  concurrency: { max: 10 }\n",
        ),
        policy_with(
            "shop",
            "route-old",
            "2026-03-01T00:00:00Z",
            "{ kind: Route, name: orders }",
            "  concurrency: { max: 20 }\n",
        ),
        policy(
            "shop",
            "cart-limits",
            "",
            "{ kind: Route, name: cart }",
            ONE_LIMIT,
        ),
        route("shop", "orders"),
        route("shop", "cart"),
        route("shop", "items"),
        route("billing", "invoices"),
        policy_with(
            "billing",
            "own",
            "",
            "{ kind: Route, name: invoices }",
            "  concurrency: { max: 5 }\n",
        ),
    ]
}

#[test]
fn the_most_specific_concurrency_limit_applies_the_oldest_among_equals() {
    let compiled = compile(&concurrency_scenario());
    assert!(compiled.reports.iter().all(|r| r.is_accepted()));
    let expect = [
        ("shop", "orders", "shop/route-old", 20),
        ("shop", "cart", "shop/ns-old", 100),
        ("shop", "items", "shop/ns-old", 100),
        ("billing", "invoices", "billing/own", 5),
    ];
    for (namespace, name, policy, max) in expect {
        let rules = rules_of(&compiled, namespace, name);
        assert_eq!(rules.len(), 2);
        for rule in &rules {
            assert_eq!(
                concurrency_of(rule).as_deref(),
                Some(policy),
                "{namespace}/{name}"
            );
            assert_eq!(rule.concurrency.as_ref().unwrap().max, max);
        }
    }
    // A concurrency-only policy contributes no limits or quotas.
    for rule in rules_of(&compiled, "shop", "orders") {
        assert_eq!(names(&rule.rate_limits), ["shop/ns-oldest#0"]);
        assert!(rule.quotas.is_empty());
    }
}

#[test]
fn concurrency_limits_are_compiled_with_their_defaults() {
    let cases = [
        ("max: 200", (1, 200, 20, true)),
        ("max: 200, min: 4", (4, 200, 20, true)),
        ("max: 200, min: 50", (50, 200, 50, true)),
        ("max: 8", (1, 8, 8, true)),
        ("max: 8, adaptive: false", (1, 8, 8, false)),
        (
            "max: 300, min: 2, initial: 64, adaptive: true",
            (2, 300, 64, true),
        ),
        ("max: 1", (1, 1, 1, true)),
    ];
    for (fields, expected) in cases {
        let compiled = compile(&[
            route("shop", "orders"),
            policy_with(
                "shop",
                "c",
                "",
                "{ kind: Route, name: orders }",
                &format!("  concurrency: {{ {fields} }}\n"),
            ),
        ]);
        assert!(compiled.reports.iter().all(|r| r.is_accepted()), "{fields}");
        let c = rules_of(&compiled, "shop", "orders")[0]
            .concurrency
            .clone()
            .expect("a concurrency limit");
        assert_eq!(c.policy, "shop/c");
        assert_eq!((c.min, c.max, c.initial, c.adaptive), expected, "{fields}");
    }
}

#[test]
fn invalid_quotas_and_concurrency_reject_the_policy_alone() {
    let compiled = compile(&[
        route("shop", "orders"),
        policy_with(
            "shop",
            "bad-zone",
            "",
            "{ kind: Namespace, name: shop }",
            "  quotas:\n    - { key: [apiKey], requests: 1, per: day, timeZone: Mars/Base }\n  concurrency: { max: 1 }\n",
        ),
        policy_with(
            "shop",
            "bad-concurrency",
            "",
            "{ kind: Namespace, name: shop }",
            "  concurrency: { max: 10, initial: 11 }\n",
        ),
        policy_with(
            "shop",
            "kept",
            "",
            "{ kind: Route, name: orders }",
            ONE_QUOTA,
        ),
    ]);
    assert_eq!(
        reason(&compiled, 1).map(|(r, e)| (r, e.split(':').next().map(str::to_owned))),
        Some((Reason::Invalid, Some("spec.quotas[0].timeZone".to_owned())))
    );
    assert_eq!(
        reason(&compiled, 2).map(|(r, e)| (r, e.split(':').next().map(str::to_owned))),
        Some((Reason::Invalid, Some("spec.concurrency.initial".to_owned())))
    );
    assert_eq!(reason(&compiled, 3), None);
    for rule in rules_of(&compiled, "shop", "orders") {
        assert_eq!(quota_names(&rule.quotas), ["shop/kept#0"]);
        assert!(rule.concurrency.is_none());
    }
}

#[test]
fn quotas_and_concurrency_are_the_same_whatever_the_document_order() {
    // Both scenarios' policies (renamed apart), and the routes once.
    let docs: Vec<String> = quota_scenario()
        .into_iter()
        .chain(
            concurrency_scenario()
                .into_iter()
                .filter(|d| d.contains("kind: RateLimitPolicy"))
                .map(|d| d.replace("  name: ", "  name: c-")),
        )
        .collect();
    let one = compile(&docs);
    assert!(one.reports.iter().all(|r| r.is_accepted()));
    let mut reversed = docs.clone();
    reversed.reverse();
    let two = compile(&reversed);
    assert_eq!(one.full_snapshot(), two.full_snapshot());
    assert_eq!(one.encoded, two.encoded);
    let rule = &rules_of(&one, "shop", "orders")[0];
    assert_eq!(rule.quotas.len(), 6);
    assert_eq!(concurrency_of(rule).as_deref(), Some("shop/c-route-old"));

    for (from, to) in [
        ("bytes: 1000", "bytes: 1001"),
        ("per: month", "per: day"),
        ("max: 20 ", "max: 21 "),
    ] {
        let changed: Vec<String> = docs.iter().map(|d| d.replace(from, to)).collect();
        assert_ne!(changed, docs, "{from}");
        assert_ne!(
            compile(&changed).snapshot.version,
            one.snapshot.version,
            "{from} → {to}"
        );
    }
}

const GATEWAY: &str = "{ kind: Gateway, name: default }";

/// Gateway policies (two from the gateway namespace, one from `shop`), a namespace policy
/// and a route policy; routes in `shop` and `billing`.
fn gateway_scenario() -> Vec<String> {
    vec![
        route("shop", "orders"),
        policy_with(
            "pavilion-system",
            "global-young",
            "2026-06-01T00:00:00Z",
            GATEWAY,
            &format!("  limits:\n{ONE_LIMIT}{ONE_QUOTA}"),
        ),
        policy(
            "shop",
            "ns",
            "2025-01-01T00:00:00Z",
            "{ kind: Namespace, name: shop }",
            ONE_LIMIT,
        ),
        // Not from the gateway namespace: reported, applied nowhere.
        policy("shop", "sneaky", "2020-01-01T00:00:00Z", GATEWAY, ONE_LIMIT),
        policy(
            "shop",
            "route",
            "2024-01-01T00:00:00Z",
            "{ kind: Route, name: orders }",
            ONE_LIMIT,
        ),
        route("billing", "invoices"),
        policy_with(
            "pavilion-system",
            "global-old",
            "2026-01-01T00:00:00Z",
            "{ kind: Gateway, name: anything }",
            &format!("  limits:\n{TWO_LIMITS}{ONE_QUOTA}"),
        ),
    ]
}

#[test]
fn gateway_policies_come_first_on_every_route_of_every_namespace() {
    let compiled = compile(&gateway_scenario());
    for (i, report) in compiled.reports.iter().enumerate() {
        assert_eq!(report.is_accepted(), i != 3, "document {i}");
    }

    let orders = rules_of(&compiled, "shop", "orders");
    assert_eq!(orders.len(), 2);
    for rule in orders {
        assert_eq!(
            names(&rule.rate_limits),
            [
                "pavilion-system/global-old#0",
                "pavilion-system/global-old#1",
                "pavilion-system/global-young#0",
                "shop/ns#0",
                "shop/route#0"
            ]
        );
        assert_eq!(
            quota_names(&rule.quotas),
            [
                "pavilion-system/global-old#0",
                "pavilion-system/global-young#0"
            ]
        );
    }
    let invoices = rules_of(&compiled, "billing", "invoices");
    assert_eq!(invoices.len(), 2);
    for rule in invoices {
        assert_eq!(
            names(&rule.rate_limits),
            [
                "pavilion-system/global-old#0",
                "pavilion-system/global-old#1",
                "pavilion-system/global-young#0"
            ]
        );
        assert_eq!(quota_names(&rule.quotas).len(), 2);
    }

    // The same snapshot whatever the document order.
    let mut reversed = gateway_scenario();
    reversed.reverse();
    assert_eq!(compile(&reversed).snapshot, compiled.snapshot);
}

#[test]
fn only_the_gateway_namespace_may_target_the_gateway_and_others_are_told_why() {
    let compiled = compile(&gateway_scenario());
    assert_eq!(
        reason(&compiled, 3),
        Some((
            Reason::Invalid,
            "spec.targetRef: only policies in the gateway namespace `pavilion-system` may target the Gateway, not one in `shop`"
                .to_owned()
        ))
    );
    let everywhere = compiled
        .routes
        .iter()
        .map(|form| form.decode())
        .flat_map(|r| r.rules);
    for rule in everywhere {
        assert!(
            names(&rule.rate_limits)
                .iter()
                .all(|n| !n.starts_with("shop/sneaky")),
            "{:?}",
            names(&rule.rate_limits)
        );
    }

    // Not even a policy of the gateway namespace reaches past it by naming a namespace.
    let compiled = compile(&[
        route("shop", "orders"),
        policy(
            "pavilion-system",
            "shop",
            "",
            "{ kind: Namespace, name: shop }",
            ONE_LIMIT,
        ),
    ]);
    assert_eq!(reason(&compiled, 1).map(|r| r.0), Some(Reason::Invalid));
}

#[test]
fn the_route_concurrency_limit_wins_over_the_namespace_over_the_gateway() {
    let compiled = compile(&[
        route("shop", "orders"),
        route("shop", "cart"),
        route("billing", "invoices"),
        policy_with(
            "pavilion-system",
            "global-young",
            "2026-06-01T00:00:00Z",
            GATEWAY,
            "  concurrency: { max: 2000 }\n",
        ),
        policy_with(
            "pavilion-system",
            "global-old",
            "2026-01-01T00:00:00Z",
            GATEWAY,
            "  concurrency: { max: 1000 }\n",
        ),
        policy_with(
            "shop",
            "ns",
            "",
            "{ kind: Namespace, name: shop }",
            "  concurrency: { max: 100 }\n",
        ),
        policy_with(
            "shop",
            "orders",
            "",
            "{ kind: Route, name: orders }",
            "  concurrency: { max: 10 }\n",
        ),
    ]);
    assert!(compiled.reports.iter().all(|r| r.is_accepted()));
    let expect = [
        ("shop", "orders", "shop/orders", 10),
        ("shop", "cart", "shop/ns", 100),
        ("billing", "invoices", "pavilion-system/global-old", 1000),
    ];
    for (namespace, name, policy, max) in expect {
        for rule in rules_of(&compiled, namespace, name) {
            let c = rule.concurrency.as_ref().expect("a concurrency limit");
            assert_eq!(
                (c.policy.as_str(), c.max),
                (policy, max),
                "{namespace}/{name}"
            );
        }
    }
}

#[test]
fn the_gateway_namespace_is_configurable() {
    let docs = [
        route("shop", "orders"),
        policy("edge", "global", "", GATEWAY, ONE_LIMIT),
        policy("pavilion-system", "global", "", GATEWAY, ONE_LIMIT),
    ];

    let compiled = compile_in("edge", &docs);
    assert_eq!(reason(&compiled, 1), None);
    assert_eq!(
        reason(&compiled, 2),
        Some((
            Reason::Invalid,
            "spec.targetRef: only policies in the gateway namespace `edge` may target the Gateway, not one in `pavilion-system`"
                .to_owned()
        ))
    );
    for rule in rules_of(&compiled, "shop", "orders") {
        assert_eq!(names(&rule.rate_limits), ["edge/global#0"]);
    }

    // The default is `pavilion-system`; the option changes the snapshot.
    let default = compile(&docs);
    assert_eq!(reason(&default, 1).map(|r| r.0), Some(Reason::Invalid));
    assert_eq!(reason(&default, 2), None);
    for rule in rules_of(&default, "shop", "orders") {
        assert_eq!(names(&rule.rate_limits), ["pavilion-system/global#0"]);
    }
    assert_eq!(
        compile_in("pavilion-system", &docs).snapshot,
        default.snapshot
    );
    assert_ne!(default.snapshot.version, compiled.snapshot.version);
}

#[test]
fn routes_list_the_policies_that_reach_them_and_policies_the_routes_they_reached() {
    let cors = "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: CorsPolicy\nmetadata: { name: web, namespace: shop }\nspec:\n  targetRef: { kind: Route, name: orders }\n  allowOrigins: ['https://app.example.com']\n---\n";
    let compiled = compile(&[
        route("shop", "orders"),
        route("shop", "carts"),
        route("billing", "invoices"),
        policy_with(
            "pavilion-system",
            "global",
            "",
            "{ kind: Gateway, name: default }",
            "  concurrency: { max: 100 }\n",
        ),
        policy_with(
            "shop",
            "shop-wide",
            "",
            "{ kind: Namespace, name: shop }",
            &format!("  limits:\n{ONE_LIMIT}  concurrency: {{ max: 50 }}\n"),
        ),
        policy(
            "shop",
            "orders-only",
            "",
            "{ kind: Route, name: orders }",
            ONE_LIMIT,
        ),
        cors.to_owned(),
    ]);
    assert!(compiled.reports.iter().all(|r| r.is_accepted()));
    let attached: Vec<(String, String, Option<String>)> = compiled.reports[0]
        .attachments
        .policies
        .iter()
        .map(|p| {
            (
                format!("{} {}/{}", p.kind, p.namespace, p.name),
                p.target.clone(),
                p.overridden_by.clone(),
            )
        })
        .collect();
    assert_eq!(
        attached,
        [
            (
                "RateLimitPolicy pavilion-system/global".to_owned(),
                "Gateway".to_owned(),
                Some("concurrency: RateLimitPolicy shop/shop-wide".to_owned())
            ),
            (
                "RateLimitPolicy shop/shop-wide".to_owned(),
                "Namespace".to_owned(),
                None
            ),
            (
                "RateLimitPolicy shop/orders-only".to_owned(),
                "Route".to_owned(),
                None
            ),
            ("CorsPolicy shop/web".to_owned(), "Route".to_owned(), None),
        ]
    );
    // The other namespace's route is reached by the gateway's policy alone.
    assert_eq!(compiled.reports[2].attachments.policies.len(), 1);
    let reached = |i: usize| compiled.reports[i].attachments.reached.clone().unwrap();
    assert_eq!(reached(3).count, 3);
    assert_eq!(
        reached(3).routes,
        ["billing/invoices", "shop/carts", "shop/orders"]
    );
    assert_eq!(reached(4).routes, ["shop/carts", "shop/orders"]);
    assert_eq!(reached(5).routes, ["shop/orders"]);
    assert_eq!(reached(6).routes, ["shop/orders"]);
    assert_eq!(compiled.reports[0].attachments.reached, None);
}
