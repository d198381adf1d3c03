//! The compiler as the pure function it is: verdicts per document, isolation of bad
//! documents, deterministic versions, precedence order and conflict reports.

use std::sync::Arc;

use pavilion_control::compile::{Outcome, Reason, compile};
use pavilion_control::source::{Item, LastAccepted};
use pavilion_crds::parse_documents;

fn items(files: &[(&str, &str)]) -> Vec<Item> {
    files
        .iter()
        .flat_map(|(name, text)| {
            let path = std::sync::Arc::from(std::path::Path::new(name));
            parse_documents(text)
                .into_iter()
                .map(move |doc| Item::from_document(&path, doc))
        })
        .collect()
}

fn route(name: &str, extra_meta: &str, spec: &str) -> String {
    format!(
        "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: Route\nmetadata:\n  name: {name}\n  namespace: shop\n{extra_meta}spec:\n{spec}---\n"
    )
}

const SIMPLE: &str = "  rules:\n    - backends: [{ url: http://127.0.0.1:9000 }]\n";

#[test]
fn bad_documents_are_rejected_alone() {
    let bad_yaml =
        "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: Route\nmetadata: { name: broken\n";
    let compiled = compile(&items(&[
        ("good.yaml", &route("good", "", SIMPLE)),
        ("broken.yaml", bad_yaml),
        (
            "unknown.yaml",
            &route("x", "", SIMPLE).replace("kind: Route", "kind: Gateway"),
        ),
        (
            "invalid.yaml",
            &route("zero", "", "  rules:\n    - backends: []\n"),
        ),
        ("dup.yaml", &route("good", "", SIMPLE)),
    ]));
    let verdicts: Vec<(String, Option<Reason>)> = compiled
        .reports
        .iter()
        .map(|r| {
            let reason = match &r.outcome {
                Outcome::Accepted { .. } => None,
                Outcome::Rejected { reason, .. } | Outcome::Stale { reason, .. } => Some(*reason),
            };
            (r.origin.to_string(), reason)
        })
        .collect();
    assert_eq!(
        verdicts,
        [
            ("good.yaml:1".to_owned(), None),
            ("broken.yaml:1".to_owned(), Some(Reason::Unreadable)),
            ("unknown.yaml:1".to_owned(), Some(Reason::Unreadable)),
            ("invalid.yaml:1".to_owned(), Some(Reason::Invalid)),
            ("dup.yaml:1".to_owned(), Some(Reason::Duplicate)),
        ]
    );
    let Outcome::Rejected { errors, .. } = &compiled.reports[4].outcome else {
        unreachable!()
    };
    assert_eq!(
        errors[0].message,
        "Route shop/good is already defined at good.yaml:1"
    );
    assert_eq!(compiled.routes.len(), 1);
    assert_eq!(compiled.routes[0].decode().name, "good");
}

#[test]
fn the_version_depends_on_content_only() {
    let a = route("a", "", SIMPLE);
    let b = route("b", "", SIMPLE);
    let one = compile(&items(&[("1.yaml", &a), ("2.yaml", &b)]));
    let two = compile(&items(&[("x.yaml", &b), ("y.yaml", &a)]));
    assert_eq!(
        one.full_snapshot(),
        two.full_snapshot(),
        "file names and order do not matter"
    );
    assert_eq!(one.snapshot.version.len(), 16);
    let changed = compile(&items(&[
        ("1.yaml", &a),
        ("2.yaml", &b.replace("9000", "9001")),
    ]));
    assert_ne!(changed.snapshot.version, one.snapshot.version);
    // What goes to data planes is the snapshot's own encoding, version included.
    for compiled in [one, changed] {
        let whole = pavilion_proto::Snapshot {
            routes: compiled.routes.iter().map(|form| form.decode()).collect(),
            ..compiled.snapshot.clone()
        };
        assert_eq!(compiled.encoded, prost::Message::encode_to_vec(&whole));
    }
}

#[test]
fn routes_are_ordered_oldest_first_then_by_name() {
    let old = "  creationTimestamp: \"2026-01-01T00:00:00Z\"\n";
    let young = "  creationTimestamp: \"2026-06-01T00:00:00Z\"\n";
    let compiled = compile(&items(&[(
        "r.yaml",
        &[
            route("b-young", young, SIMPLE),
            route("z-old", old, SIMPLE),
            route("a-young", young, SIMPLE),
        ]
        .concat(),
    )]));
    let names: Vec<_> = compiled
        .routes
        .iter()
        .map(|form| form.shape.name.as_str())
        .collect();
    assert_eq!(names, ["z-old", "a-young", "b-young"]);
}

#[test]
fn matches_are_normalised() {
    let spec = "  hosts: [API.Example.com]\n  rules:\n    - matches:\n        - path: { type: PathPrefix, value: /orders/ }\n          methods: [post, GET, get]\n          headers: [{ name: X-B, value: '2' }, { name: x-a, value: '1' }]\n      backends: [{ url: http://127.0.0.1:9000 }]\n      timeout: 1m\n";
    let compiled = compile(&items(&[("r.yaml", &route("r", "", spec))]));
    let route = &compiled.routes[0].decode();
    assert_eq!(route.hosts, ["api.example.com"]);
    let rule = &route.rules[0];
    assert_eq!(rule.timeout_ms, 60_000);
    let m = &rule.matches[0];
    assert_eq!(m.path.as_ref().unwrap().value, "/orders");
    assert_eq!(m.methods, ["GET", "POST"]);
    let headers: Vec<_> = m
        .headers
        .iter()
        .map(|h| (h.name.as_str(), h.value.as_str()))
        .collect();
    assert_eq!(headers, [("x-a", "1"), ("x-b", "2")]);
    assert_eq!(rule.backends[0].weight, 1);
}

#[test]
fn a_younger_route_claiming_the_same_match_gets_a_warning() {
    let old = "  creationTimestamp: \"2026-01-01T00:00:00Z\"\n";
    let young = "  creationTimestamp: \"2026-06-01T00:00:00Z\"\n";
    let spec = "  hosts: [api.example.com, other.example.com]\n  rules:\n    - matches: [{ path: { type: PathPrefix, value: /orders } }]\n      backends: [{ url: http://127.0.0.1:9000 }]\n";
    let younger_spec = spec.replace("api.example.com, other.example.com", "api.example.com");
    let compiled = compile(&items(&[(
        "r.yaml",
        &[
            route("younger", young, &younger_spec),
            route("older", old, spec),
        ]
        .concat(),
    )]));
    let Outcome::Accepted { warnings } = &compiled.reports[0].outcome else {
        panic!("still accepted")
    };
    assert_eq!(warnings.len(), 1);
    assert_eq!(warnings[0].field, "spec.rules[0].matches[0]");
    assert_eq!(
        warnings[0].message,
        "host api.example.com: PathPrefix /orders is already served by the older Route shop/older; this match never applies there"
    );
    let Outcome::Accepted { warnings } = &compiled.reports[1].outcome else {
        panic!()
    };
    assert!(warnings.is_empty());
}

#[test]
fn policies_must_target_an_accepted_route_in_their_namespace() {
    let policy = |name: &str, target: &str| {
        format!(
            "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: CorsPolicy\nmetadata: {{ name: {name}, namespace: shop }}\nspec:\n  targetRef: {target}\n  allowOrigins: ['https://a.example.com']\n---\n"
        )
    };
    let compiled = compile(&items(&[(
        "p.yaml",
        &[
            route("orders", "", SIMPLE),
            route("broken", "", "  rules: []\n"),
            policy("ok", "{ kind: Route, name: orders }"),
            policy("missing", "{ kind: Route, name: nope }"),
            policy("on-broken", "{ kind: Route, name: broken }"),
            policy("ns", "{ kind: Namespace, name: shop }"),
            policy("other-ns", "{ kind: Namespace, name: billing }"),
        ]
        .concat(),
    )]));
    let accepted: Vec<_> = compiled.reports.iter().map(|r| r.is_accepted()).collect();
    assert_eq!(accepted, [true, false, true, false, false, true, false]);
    let Outcome::Rejected { reason, errors } = &compiled.reports[3].outcome else {
        unreachable!()
    };
    assert_eq!(*reason, Reason::TargetNotFound);
    assert_eq!(
        errors[0].message,
        "no accepted Route `nope` in namespace `shop`"
    );
}

#[test]
fn a_tenant_is_placed_once() {
    let placement = |name: &str| {
        format!(
            "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: TenantPlacement\nmetadata: {{ name: {name} }}\nspec:\n  tenant: acme\n  shards: {{ aggregate: s1 }}\n---\n"
        )
    };
    let shard = "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: Shard\nmetadata: { name: s1 }\nspec:\n  service: aggregate\n  endpoints: ['http://10.0.0.1:80']\n---\n";
    let compiled = compile(&items(&[(
        "t.yaml",
        &[shard.to_owned(), placement("first"), placement("second")].concat(),
    )]));
    assert!(compiled.reports[0].is_accepted());
    assert!(compiled.reports[1].is_accepted());
    let table = compiled.snapshot.placements.as_ref().unwrap();
    assert_eq!(table.tenants.len(), 1);
    assert_eq!(
        (table.tenants[0].aggregate, table.tenants[0].runner),
        (0, -1)
    );
    assert!(matches!(
        compiled.reports[2].outcome,
        Outcome::Rejected {
            reason: Reason::Duplicate,
            ..
        }
    ));

    // In a cluster the older object keeps the tenant, wherever it comes in the listing.
    let dated = |name: &str, created: &str| {
        format!(
            "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: TenantPlacement\nmetadata: {{ name: {name}, creationTimestamp: '{created}' }}\nspec:\n  tenant: acme\n  shards: {{ aggregate: s1 }}\n---\n"
        )
    };
    let compiled = compile(&items(&[(
        "t.yaml",
        &[
            shard.to_owned(),
            dated("a-young", "2026-06-01T00:00:00Z"),
            dated("z-old", "2026-01-01T00:00:00Z"),
        ]
        .concat(),
    )]));
    assert!(compiled.reports[2].is_accepted(), "the older one");
    match &compiled.reports[1].outcome {
        Outcome::Rejected {
            reason: Reason::Duplicate,
            errors,
        } => assert!(errors[0].message.contains("z-old"), "{errors:?}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn only_valid_documents_claim_a_name() {
    let nameless = "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: Route\nmetadata: {}\nspec:\n  rules:\n    - backends: [{ url: http://127.0.0.1:9000 }]\n---\n";
    let compiled = compile(&items(&[(
        "r.yaml",
        &[
            route("orders", "", "  rules: []\n"),
            route("orders", "", SIMPLE),
            nameless.to_owned(),
            nameless.to_owned(),
        ]
        .concat(),
    )]));
    let verdicts: Vec<_> = compiled
        .reports
        .iter()
        .map(|r| match &r.outcome {
            Outcome::Accepted { .. } => ("accepted".to_owned(), String::new()),
            Outcome::Rejected { reason, errors } | Outcome::Stale { reason, errors, .. } => {
                (format!("{reason:?}"), errors[0].to_string())
            }
        })
        .collect();
    assert_eq!(
        verdicts[0],
        (
            "Invalid".to_owned(),
            "spec.rules: at least one rule is required".to_owned()
        )
    );
    assert_eq!(
        verdicts[1].0, "accepted",
        "the valid definition after an invalid one counts"
    );
    for nameless in &verdicts[2..] {
        assert_eq!(
            nameless,
            &("Invalid".to_owned(), "metadata.name: required".to_owned())
        );
    }
}

#[test]
fn hosts_are_sorted_and_unique_in_the_snapshot() {
    let compiled = compile(&items(&[(
        "r.yaml",
        &route(
            "r",
            "",
            "  hosts: [b.example.com, A.example.com]\n  rules:\n    - backends: [{ url: http://127.0.0.1:9000 }]\n",
        ),
    )]));
    assert_eq!(
        compiled.routes[0].decode().hosts,
        ["a.example.com", "b.example.com"]
    );
}

/// The version a control plane accepted earlier, as the controller hands it to the compiler.
fn last_accepted(text: &str, generation: i64) -> Arc<LastAccepted> {
    let resource = parse_documents(text).remove(0).result.expect("valid");
    Arc::new(LastAccepted {
        resource: Arc::new(resource),
        generation: Some(generation),
        accepted_at: "2026-11-26T10:00:00Z".into(),
    })
}

#[test]
fn a_bad_edit_compiles_the_last_accepted_version_with_its_policies() {
    let good = route("orders", "", SIMPLE);
    let policy = "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: { name: slow, namespace: shop }\nspec:\n  targetRef: { kind: Route, name: orders }\n  limits: [{ key: [clientIp], requests: 5, per: 1s }]\n---\n";
    let edits = [
        // Invalid: a backend scheme nobody serves.
        route("orders", "", SIMPLE).replace("http://127.0.0.1:9000", "ftp://x:1"),
        // Unreadable: a field of the wrong type; the identity is still plain to read.
        route("orders", "", "  rules: 7\n"),
    ];
    let baseline = compile(&items(&[("r.yaml", &good), ("p.yaml", policy)]));
    assert!(
        baseline.reports.iter().all(|r| r.is_accepted()),
        "{:?}",
        baseline.reports
    );
    for edit in edits {
        let mut input = items(&[("r.yaml", &edit), ("p.yaml", policy)]);
        assert_eq!(input[0].identity.as_ref().map(|k| &*k.name), Some("orders"));
        input[0].last_accepted = Some(last_accepted(&good, 3));
        let compiled = compile(&input);
        let Outcome::Stale {
            serving, errors, ..
        } = &compiled.reports[0].outcome
        else {
            panic!("{:?}", compiled.reports[0]);
        };
        assert_eq!(serving, "generation 3");
        assert!(!errors.is_empty());
        assert!(
            compiled.reports[1].is_accepted(),
            "the policy stays attached"
        );
        assert_eq!(
            compiled.full_snapshot().routes,
            baseline.full_snapshot().routes
        );
        assert_eq!(compiled.snapshot.version, baseline.snapshot.version);

        // Without a last accepted version (never valid, or deleted and recreated) the
        // document stays out, and the policy with it.
        let compiled = compile(&items(&[("r.yaml", &edit), ("p.yaml", policy)]));
        assert!(matches!(
            compiled.reports[0].outcome,
            Outcome::Rejected { .. }
        ));
        assert!(compiled.full_snapshot().routes.is_empty());
        assert!(!compiled.reports[1].is_accepted());
    }
}

#[test]
fn a_last_accepted_version_never_displaces_a_valid_definition() {
    let good = route("orders", "", SIMPLE);
    let moved = route("orders", "", SIMPLE).replace("9000", "9100");
    let mut input = items(&[
        ("a.yaml", &route("orders", "", "  rules: []\n")),
        ("b.yaml", &moved),
    ]);
    for item in &mut input {
        item.last_accepted = Some(last_accepted(&good, 1));
    }
    let compiled = compile(&input);
    assert!(
        matches!(compiled.reports[0].outcome, Outcome::Rejected { .. }),
        "{:?}",
        compiled.reports[0]
    );
    assert!(compiled.reports[1].is_accepted());
    assert_eq!(compiled.routes.len(), 1);
    assert!(format!("{:?}", compiled.routes[0].decode()).contains("9100"));
}

fn cors_policy(name: &str, target: &str, origin: &str) -> String {
    format!(
        "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: CorsPolicy\nmetadata: {{ name: {name}, namespace: shop }}\nspec:\n  targetRef: {target}\n  allowOrigins: ['{origin}']\n  allowMethods: [get, PUT]\n  allowHeaders: [Content-Type]\n  maxAge: 10m\n---\n"
    )
}

#[test]
fn a_routes_cors_policy_wins_over_its_namespaces() {
    let compiled = compile(&items(&[(
        "all.yaml",
        &[
            route("orders", "", SIMPLE),
            route("carts", "", SIMPLE),
            cors_policy(
                "shop-wide",
                "{ kind: Namespace, name: shop }",
                "https://shop.test",
            ),
            cors_policy(
                "orders-only",
                "{ kind: Route, name: orders }",
                "https://App.test",
            ),
        ]
        .concat(),
    )]));
    let cors = |route: &str| {
        compiled
            .routes
            .iter()
            .map(|form| form.decode())
            .find(|r| r.name == route)
            .and_then(|r| r.rules[0].cors.clone())
            .expect("a CORS policy reaches every route of the namespace")
    };
    let orders = cors("orders");
    assert_eq!(orders.policy, "shop/orders-only");
    assert_eq!(orders.allow_origins, ["https://app.test"]);
    assert_eq!(orders.allow_methods, ["GET", "PUT"]);
    assert_eq!(orders.allow_headers, ["content-type"]);
    assert_eq!(orders.max_age_seconds, 600);
    assert_eq!(cors("carts").policy, "shop/shop-wide");
}

#[test]
fn traffic_fields_reach_the_snapshot_with_every_default_resolved() {
    let spec = "  rules:
    - backends: [{ url: http://127.0.0.1:9000 }, { url: http://127.0.0.1:9001 }]
      websocket: {}
      retry: { attempts: 3, on: [connect-failure, '503'] }
      loadBalancer: { policy: ConsistentHash, hashOn: 'header:X-User' }
      healthCheck: { active: { path: /healthz }, passive: {} }
      circuitBreaker: { failurePercent: 50 }
      rewrite: { pathRegex: { pattern: '^/a/(.*)$', substitution: '/b/$1' }, host: API.Internal }
      requestHeaders: { remove: [X-Drop], set: [{ name: X-Env, value: Prod }] }
      maxBodyBytes: 4096
      compression: { algorithms: [br] }
      cache: { keyHeaders: [X-Tenant] }
      connections: { max: 64 }
    - backends: [{ url: http://127.0.0.1:9002 }]
      connections: { idleTimeout: 15s }
";
    let compiled = compile(&items(&[("r.yaml", &route("r", "", spec))]));
    let rule = &compiled.routes[0].decode().rules[0];
    assert_eq!(rule.websocket.as_ref().unwrap().idle_timeout_ms, 300_000);
    let connections = rule.connections.as_ref().unwrap();
    assert_eq!(
        (
            connections.max,
            connections.queue_timeout_ms,
            connections.idle_timeout_ms
        ),
        (64, 1_000, 0),
        "the queue timeout's default resolved, the idle timeout left to the data plane"
    );
    let second = compiled.routes[0].decode().rules[1].connections.unwrap();
    assert_eq!((second.max, second.idle_timeout_ms), (0, 15_000));
    let retry = rule.retry.as_ref().unwrap();
    assert_eq!(retry.attempts, 3);
    assert!(retry.on_connect_failure && !retry.on_reset);
    assert_eq!(retry.on_statuses, [503]);
    assert_eq!((retry.backoff_ms, retry.max_backoff_ms), (25, 250));
    assert_eq!(
        (retry.budget_percent, retry.min_retries_per_second),
        (20, 3)
    );
    let lb = rule.load_balancer.as_ref().unwrap();
    assert_eq!(
        lb.policy,
        pavilion_proto::BalancePolicy::ConsistentHash as i32
    );
    assert_eq!(lb.hash_on, "header:x-user");
    let health = rule.health_check.as_ref().unwrap();
    let active = health.active.as_ref().unwrap();
    assert_eq!(
        (active.path.as_str(), active.interval_ms, active.timeout_ms),
        ("/healthz", 5_000, 1_000)
    );
    assert_eq!(
        (active.healthy_threshold, active.unhealthy_threshold),
        (2, 3)
    );
    let passive = health.passive.as_ref().unwrap();
    assert_eq!(
        (
            passive.consecutive_failures,
            passive.ejection_ms,
            passive.max_ejected_percent
        ),
        (5, 30_000, 50)
    );
    let breaker = rule.circuit_breaker.as_ref().unwrap();
    assert_eq!(
        (
            breaker.consecutive_failures,
            breaker.failure_percent,
            breaker.min_requests
        ),
        (5, 50, 20)
    );
    assert_eq!(
        (
            breaker.window_ms,
            breaker.open_for_ms,
            breaker.half_open_probes
        ),
        (10_000, 30_000, 3)
    );
    let rewrite = rule.rewrite.as_ref().unwrap();
    assert_eq!(
        (
            rewrite.path_regex.as_str(),
            rewrite.path_substitution.as_str(),
            rewrite.host.as_str()
        ),
        ("^/a/(.*)$", "/b/$1", "api.internal")
    );
    let edits = rule.request_headers.as_ref().unwrap();
    assert_eq!(edits.remove, ["x-drop"]);
    assert_eq!(
        (edits.set[0].name.as_str(), edits.set[0].value.as_str()),
        ("x-env", "Prod")
    );
    assert_eq!(rule.max_body_bytes, 4096);
    let compression = rule.compression.as_ref().unwrap();
    assert_eq!(compression.min_size, 1024);
    assert!(compression.types.iter().any(|t| t == "application/json"));
    assert!(compression.brotli && !compression.gzip && !compression.zstd);
    let cache = rule.cache.as_ref().unwrap();
    assert_eq!(
        (
            cache.default_ttl_ms,
            cache.max_ttl_ms,
            cache.max_entry_bytes
        ),
        (0, 3_600_000, 1 << 20)
    );
    assert_eq!(cache.key_headers, ["x-tenant"]);
    // A rule without them has none.
    let plain = &compiled.routes[0].decode().rules[1];
    assert!(
        plain.retry.is_none() && plain.load_balancer.is_none() && plain.circuit_breaker.is_none()
    );
}

#[test]
fn authorize_rights_reach_the_snapshot_sorted_and_once() {
    let spec = "  rules:
    - backends: [{ url: http://127.0.0.1:9000 }]
      auth:
        jwt: [{ issuer: https://id.example.com, jwksUri: https://id.example.com/.well-known/jwks.json }]
      tenancy: {}
      authorize: { rights: [orders.write, orders.read, orders.write] }
";
    let compiled = compile(&items(&[("r.yaml", &route("r", "", spec))]));
    let routes = &compiled.full_snapshot().routes;
    assert_eq!(routes.len(), 1, "{:?}", compiled.reports);
    let rule = &routes[0].rules[0];
    assert_eq!(rule.rights, ["orders.read", "orders.write"]);
    assert!(rule.roles.is_empty());
}

#[test]
fn a_memo_saves_work_and_changes_nothing_else() {
    use pavilion_control::compile::{CompileOptions, Memo, compile_at_with, compile_at_with_memo};
    const NOW: i64 = 1_780_272_000;
    let options = CompileOptions::default();
    let policy = |requests: u32| {
        format!(
            "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {{ name: slow, namespace: shop }}\nspec:\n  targetRef: {{ kind: Route, name: orders }}\n  limits: [{{ key: [clientIp], requests: {requests}, per: 1s }}]\n---\n"
        )
    };
    let cors = "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: CorsPolicy\nmetadata: { name: web, namespace: shop }\nspec:\n  targetRef: { kind: Route, name: carts }\n  allowOrigins: ['https://shop.example']\n---\n";
    let orders = route("orders", "", SIMPLE);
    let carts = route("carts", "", SIMPLE);
    let broken = route("orders", "", SIMPLE).replace("http://127.0.0.1:9000", "ftp://x:1");
    let mut memo = Memo::default();
    let mut current = items(&[
        ("orders.yaml", &orders),
        ("carts.yaml", &carts),
        ("p.yaml", &policy(5)),
        ("c.yaml", cors),
    ]);
    let check = |memo: &mut Memo, input: &[Item]| {
        let memoised = compile_at_with_memo(input, NOW, &options, memo);
        assert_eq!(memoised, compile_at_with(input, NOW, &options));
        memoised
    };
    let first = check(&mut memo, &current);
    assert_eq!(first.routes[1].decode().rules[0].rate_limits[0].requests, 5);
    assert!(first.routes[0].decode().rules[0].cors.is_some());
    let again = check(&mut memo, &current);
    assert_eq!(again, first, "all of it from the memo");
    assert_eq!(memo.validations(), 4, "each resource validated once");
    assert!(
        again
            .routes
            .iter()
            .zip(&first.routes)
            .all(|(again, first)| std::sync::Arc::ptr_eq(again, first)),
        "unchanged routes with unchanged policies keep their built form"
    );

    // The policy changes, its route does not: the route's memoised form gets the new limit;
    // the other route keeps its form.
    current[2] = items(&[("p.yaml", &policy(7))]).remove(0);
    let limited = check(&mut memo, &current);
    assert_eq!(
        limited.routes[1].decode().rules[0].rate_limits[0].requests,
        7
    );
    assert!(std::sync::Arc::ptr_eq(&limited.routes[0], &first.routes[0]));
    assert!(!std::sync::Arc::ptr_eq(
        &limited.routes[1],
        &first.routes[1]
    ));
    // The CORS policy goes: its route keeps no CORS.
    current.pop();
    assert!(
        check(&mut memo, &current).routes[0].decode().rules[0]
            .cors
            .is_none()
    );
    // A bad edit of a route: the last accepted version stands in, validated through the memo.
    current[0] = items(&[("orders.yaml", &broken)]).remove(0);
    current[0].last_accepted = Some(last_accepted(&orders, 2));
    let stale = check(&mut memo, &current);
    assert!(matches!(stale.reports[0].outcome, Outcome::Stale { .. }));
    assert_eq!(stale.routes.len(), 2);
    // And a route edited for real.
    current[0] = items(&[("orders.yaml", &orders.replace("9000", "9002"))]).remove(0);
    let edited = check(&mut memo, &current);
    assert!(
        edited.routes[1].decode().rules[0].backends[0]
            .url
            .ends_with(":9002")
    );
}
