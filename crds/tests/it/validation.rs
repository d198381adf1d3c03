//! Every kind of bad input is refused with the field it concerns and a reason.

use pavilion_crds::{FieldError, Resource, parse_documents};

fn errors(yaml: &str) -> Vec<FieldError> {
    let docs = parse_documents(yaml);
    assert_eq!(docs.len(), 1);
    docs.into_iter()
        .next()
        .unwrap()
        .result
        .expect("parses")
        .validate()
}

fn route(rules: &str) -> String {
    format!(
        "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: Route\nmetadata: {{ name: orders, namespace: shop }}\nspec:\n  hosts: [api.example.com]\n  rules:\n{rules}"
    )
}

const GOOD_RULE: &str = "    - matches:
        - path: { type: PathPrefix, value: /orders }
          methods: [GET, POST]
          headers: [{ name: x-api-version, value: \"2\" }]
        - path: { type: RegularExpression, value: '/items/[0-9]+' }
      backends:
        - { url: http://127.0.0.1:9000, weight: 3 }
        - { url: h2c://127.0.0.1:9001 }
      timeout: 1m30s
";

#[test]
fn a_valid_route_has_no_errors() {
    assert_eq!(errors(&route(GOOD_RULE)), []);
}

#[test]
fn bad_routes_name_their_fields() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "zero backends",
            "    - backends: []\n",
            "spec.rules[0].backends",
        ),
        (
            "all weights zero",
            "    - backends: [{ url: http://a:1, weight: 0 }]\n",
            "spec.rules[0].backends",
        ),
        (
            "bad url",
            "    - backends: [{ url: 'localhost:80' }]\n",
            "spec.rules[0].backends[0].url",
        ),
        (
            "ftp url",
            "    - backends: [{ url: 'ftp://a' }]\n",
            "spec.rules[0].backends[0].url",
        ),
        (
            "url with path",
            "    - backends: [{ url: 'http://a/x' }]\n",
            "spec.rules[0].backends[0].url",
        ),
        (
            "no url",
            "    - backends: [{ weight: 1 }]\n",
            "spec.rules[0].backends[0]",
        ),
        (
            "invalid regex",
            "    - matches: [{ path: { type: RegularExpression, value: '/(' } }]\n      backends: [{ url: http://a:1 }]\n",
            "spec.rules[0].matches[0].path.value",
        ),
        (
            "relative path",
            "    - matches: [{ path: { type: Exact, value: orders } }]\n      backends: [{ url: http://a:1 }]\n",
            "spec.rules[0].matches[0].path.value",
        ),
        (
            "bad method",
            "    - matches: [{ methods: ['GE T'] }]\n      backends: [{ url: http://a:1 }]\n",
            "spec.rules[0].matches[0].methods[0]",
        ),
        (
            "bad header name",
            "    - matches: [{ headers: [{ name: 'x y', value: v }] }]\n      backends: [{ url: http://a:1 }]\n",
            "spec.rules[0].matches[0].headers[0].name",
        ),
        (
            "bad timeout",
            "    - backends: [{ url: http://a:1 }]\n      timeout: soon\n",
            "spec.rules[0].timeout",
        ),
        (
            "huge timeout",
            "    - backends: [{ url: http://a:1 }]\n      timeout: 2h\n",
            "spec.rules[0].timeout",
        ),
        (
            "regex escaping its anchors",
            "    - matches: [{ path: { type: RegularExpression, value: '/admin)|(/x' } }]\n      backends: [{ url: http://a:1 }]\n",
            "spec.rules[0].matches[0].path.value",
        ),
        (
            "dot segment in a prefix",
            "    - matches: [{ path: { type: PathPrefix, value: /a/../b } }]\n      backends: [{ url: http://a:1 }]\n",
            "spec.rules[0].matches[0].path.value",
        ),
        (
            "non-ASCII exact path",
            "    - matches: [{ path: { type: Exact, value: /café } }]\n      backends: [{ url: http://a:1 }]\n",
            "spec.rules[0].matches[0].path.value",
        ),
        (
            "repeated slashes in a prefix",
            "    - matches: [{ path: { type: PathPrefix, value: //admin } }]\n      backends: [{ url: http://a:1 }]\n",
            "spec.rules[0].matches[0].path.value",
        ),
        (
            "parameters in an exact path",
            "    - matches: [{ path: { type: Exact, value: '/a;v=1' } }]\n      backends: [{ url: http://a:1 }]\n",
            "spec.rules[0].matches[0].path.value",
        ),
        (
            "a broken escape",
            "    - matches: [{ path: { type: PathPrefix, value: '/a%zz' } }]\n      backends: [{ url: http://a:1 }]\n",
            "spec.rules[0].matches[0].path.value",
        ),
        (
            "an encoded NUL",
            "    - matches: [{ path: { type: PathPrefix, value: '/a%00' } }]\n      backends: [{ url: http://a:1 }]\n",
            "spec.rules[0].matches[0].path.value",
        ),
        (
            "port out of range",
            "    - backends: [{ url: 'http://a:90000' }]\n",
            "spec.rules[0].backends[0].url",
        ),
    ];
    for (what, rules, field) in cases {
        let found = errors(&route(rules));
        assert!(
            found
                .iter()
                .any(|e| e.field == *field && !e.message.is_empty()),
            "{what}: expected an error on {field}, got {found:?}"
        );
    }
}

#[test]
fn no_rules_and_bad_hosts() {
    let yaml = "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: Route\nmetadata: { name: Orders_1 }\nspec:\n  hosts: ['a.*.com', 'x.com:80', x.com, X.com]\n  rules: []\n";
    let fields: Vec<_> = errors(yaml).into_iter().map(|e| e.field).collect();
    for expected in [
        "metadata.name",
        "spec.hosts[0]",
        "spec.hosts[1]",
        "spec.hosts[3]",
        "spec.rules",
    ] {
        assert!(
            fields.iter().any(|f| f == expected),
            "{expected} missing in {fields:?}"
        );
    }
}

#[test]
fn policies_and_placements_are_validated() {
    let rl = "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: { name: l }\nspec:\n  targetRef: { kind: Service, name: x }\n  limits:\n    - { key: [clientIp, 'cookie:x'], requests: 0, per: 1y }\n";
    let fields: Vec<_> = errors(rl).into_iter().map(|e| e.field).collect();
    assert_eq!(
        fields,
        [
            "spec.targetRef.kind",
            "spec.limits[0].key[1]",
            "spec.limits[0].requests",
            "spec.limits[0].per"
        ]
    );

    let cors = "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: CorsPolicy\nmetadata: { name: c }\nspec:\n  targetRef: { kind: Route, name: orders }\n  allowOrigins: ['*', 'app.example.com']\n  allowCredentials: true\n";
    let fields: Vec<_> = errors(cors).into_iter().map(|e| e.field).collect();
    assert_eq!(fields, ["spec.allowOrigins[0]", "spec.allowOrigins[1]"]);
    // A star only as the whole leftmost label of a domain.
    let wildcards = "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: CorsPolicy\nmetadata: { name: c }\nspec:\n  targetRef: { kind: Route, name: orders }\n  allowOrigins: ['https://*.example.com', 'https://*example.com', 'https://*', 'https://app.*.com', 'https://a@b.test']\n";
    let fields: Vec<_> = errors(wildcards).into_iter().map(|e| e.field).collect();
    assert_eq!(
        fields,
        [
            "spec.allowOrigins[1]",
            "spec.allowOrigins[2]",
            "spec.allowOrigins[3]",
            "spec.allowOrigins[4]"
        ]
    );

    let tp = "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: TenantPlacement\nmetadata: { name: acme }\nspec:\n  tenant: Acme_Corp\n  shards: { aggregate: 'Not A Name' }\n";
    let fields: Vec<_> = errors(tp).into_iter().map(|e| e.field).collect();
    assert_eq!(fields, ["spec.tenant", "spec.shards.aggregate"]);
    let empty = "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: TenantPlacement\nmetadata: { name: acme }\nspec:\n  tenant: acme\n  shards: {}\n";
    let fields: Vec<_> = errors(empty).into_iter().map(|e| e.field).collect();
    assert_eq!(fields, ["spec.shards"]);

    let shard = "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: Shard\nmetadata: { name: agg-1 }\nspec:\n  service: aggregate\n  endpoints: ['ftp://x:1']\n  readiness: 'ready?x'\n";
    let fields: Vec<_> = errors(shard).into_iter().map(|e| e.field).collect();
    assert_eq!(fields, ["spec.endpoints[0]", "spec.readiness"]);
    let no_endpoints = "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: Shard\nmetadata: { name: agg-1 }\nspec:\n  service: aggregate\n  endpoints: []\n";
    let fields: Vec<_> = errors(no_endpoints).into_iter().map(|e| e.field).collect();
    assert_eq!(fields, ["spec.endpoints"]);
    let wrong_kind = "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: Shard\nmetadata: { name: agg-1 }\nspec:\n  service: billing\n  endpoints: ['http://x:1']\n";
    assert!(
        parse_documents(wrong_kind).remove(0).result.is_err(),
        "an unknown service kind"
    );
}

#[test]
fn tenant_scoped_rules_need_auth_tenancy_and_one_service_backend() {
    let cases = [
        (
            "service without tenancy",
            "    - auth: { apiKeys: {} }\n      backends: [{ service: aggregate }]\n",
            "spec.rules[0].backends",
        ),
        (
            "service beside another backend",
            "    - auth: { apiKeys: {} }\n      tenancy: {}\n      backends: [{ service: aggregate }, { url: 'http://a:1' }]\n",
            "spec.rules[0].backends",
        ),
        (
            "tenancy without auth",
            "    - tenancy: {}\n      backends: [{ url: 'http://a:1' }]\n",
            "spec.rules[0].tenancy",
        ),
        (
            "authorize without tenancy",
            "    - auth: { apiKeys: {} }\n      authorize: { roles: [admin] }\n      backends: [{ url: 'http://a:1' }]\n",
            "spec.rules[0].authorize",
        ),
        (
            "a malformed role",
            "    - auth: { apiKeys: {} }\n      tenancy: {}\n      authorize: { roles: ['Tenant Admin'] }\n      backends: [{ url: 'http://a:1' }]\n",
            "spec.rules[0].authorize.roles[0]",
        ),
        (
            "commands without an aggregate service backend",
            "    - auth: { apiKeys: {} }\n      tenancy: {}\n      commands: {}\n      backends: [{ service: projection }]\n",
            "spec.rules[0].commands",
        ),
        (
            "a command window of two days",
            "    - auth: { apiKeys: {} }\n      tenancy: {}\n      commands: { window: 48h }\n      backends: [{ service: aggregate }]\n",
            "spec.rules[0].commands.window",
        ),
        (
            "no roles",
            "    - auth: { apiKeys: {} }\n      tenancy: {}\n      authorize: { roles: [] }\n      backends: [{ url: 'http://a:1' }]\n",
            "spec.rules[0].authorize.roles",
        ),
    ];
    for (what, rules, field) in cases {
        let found = errors(&route(rules));
        assert!(
            found.iter().any(|e| e.field == field),
            "{what}: expected an error on {field}, got {found:?}"
        );
    }
    let good = "    - auth: { apiKeys: {} }\n      tenancy: { required: false }\n      authorize: { roles: [tenant-admin] }\n      backends: [{ service: runner }]\n";
    assert_eq!(errors(&route(good)), []);
    let commands = "    - auth: { apiKeys: {} }\n      tenancy: {}\n      commands: { window: 1h }\n      backends: [{ service: aggregate }]\n";
    assert_eq!(errors(&route(commands)), []);
}

#[test]
fn api_keys_name_tenants_as_a_list_or_with_roles() {
    let key = |tenants: &str| {
        format!(
            "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: ApiKey\nmetadata: {{ name: k }}\nspec:\n  sha256: '{}'\n  scopes: [read]\n  tenants: {tenants}\n  roles: [platform-admin]\n",
            "a".repeat(64)
        )
    };
    assert_eq!(errors(&key("[acme, globex]")), []);
    assert_eq!(errors(&key("{ acme: [tenant-admin] }")), []);
    let fields: Vec<_> = errors(&key("[Acme]"))
        .into_iter()
        .map(|e| e.field)
        .collect();
    assert_eq!(fields, ["spec.tenants[0]"]);
    let fields: Vec<_> = errors(&key("{ acme: ['Bad Role'] }"))
        .into_iter()
        .map(|e| e.field)
        .collect();
    assert_eq!(fields, ["spec.tenants.acme[0]"]);
    let found = errors(&key("{ acme: [platform-admin] }"));
    assert!(
        found
            .iter()
            .any(|e| e.field == "spec.tenants.acme[0]" && e.message.contains("platform role")),
        "{found:?}"
    );
}

#[test]
fn every_kind_parses() {
    let docs = parse_documents(concat!(
        include_str!("../../../examples/config/routes.yaml"),
        "---\n",
        include_str!("../../../examples/config/policies.yaml"),
        "---\n",
        include_str!("../../../examples/config/tenants.yaml")
    ));
    assert!(!docs.is_empty());
    for doc in docs {
        let resource: Resource = doc.result.expect("example parses");
        assert_eq!(resource.validate(), [], "{}", resource.key());
    }
}

#[test]
fn weights_must_add_up_to_what_a_data_plane_can_count() {
    let backends: Vec<String> = (0..4300)
        .map(|i| format!("{{ url: 'http://b{i}:1', weight: 1000000 }}"))
        .collect();
    let rules = format!("    - backends: [{}]\n", backends.join(", "));
    let found = errors(&route(&rules));
    assert!(
        found
            .iter()
            .any(|e| e.field == "spec.rules[0].backends" && e.message.contains("add up")),
        "{found:?}"
    );
}

fn rate_limit_policy(spec: &str) -> String {
    format!(
        "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {{ name: l, namespace: shop }}\nspec:\n  targetRef: {{ kind: Route, name: orders }}\n{spec}"
    )
}

fn limit(fields: &str) -> String {
    format!("  limits:\n    - {{ key: [apiKey], requests: 10, per: 1m{fields} }}\n")
}

#[test]
fn a_full_rate_limit_policy_is_valid() {
    let yaml = rate_limit_policy(
        "  backend: redis\n  consistency: approximate\n  failureMode: closed\n  headers: false\n  limits:\n    - key: [clientIp, 'header:X-Tenant', 'claim:org', subject, route]\n      requests: 100\n      per: 500ms\n      burst: 20\n      overrides:\n        - { value: 'premium-*', requests: 1000, burst: 50 }\n        - { value: '*|acme', requests: 5 }\n    - { key: [apiKey], requests: 1, per: 1d }\n    - { key: [apiKey], requests: 1, per: 1h30m }\n",
    );
    assert_eq!(errors(&yaml), []);
}

#[test]
fn a_rate_limit_policy_may_target_the_gateway_a_cors_policy_may_not() {
    let targeting = |target: &str| {
        rate_limit_policy(&limit("")).replace("{ kind: Route, name: orders }", target)
    };
    for name in ["default", "edge.example"] {
        let yaml = targeting(&format!("{{ kind: Gateway, name: {name} }}"));
        assert_eq!(errors(&yaml), [], "{name}");
    }
    for (target, field, message) in [
        (
            "{ kind: Gateway, name: '' }",
            "spec.targetRef.name",
            "must be a lower-case DNS subdomain",
        ),
        (
            "{ kind: Gateway, name: Default }",
            "spec.targetRef.name",
            "must be a lower-case DNS subdomain",
        ),
        (
            "{ kind: Cluster, name: x }",
            "spec.targetRef.kind",
            "`Cluster` cannot be a target; use Route, Namespace or Gateway",
        ),
    ] {
        let found = errors(&targeting(target));
        assert_eq!(found.len(), 1, "{target}: {found:?}");
        assert_eq!(found[0].field, field, "{target}");
        assert!(found[0].message.contains(message), "{target}: {found:?}");
    }

    let cors = "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: CorsPolicy\nmetadata: { name: c, namespace: pavilion-system }\nspec:\n  targetRef: { kind: Gateway, name: default }\n  allowOrigins: ['*']\n";
    let found = errors(cors);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].field, "spec.targetRef.kind");
    assert_eq!(
        found[0].message,
        "`Gateway` cannot be the target of a CorsPolicy; use Route or Namespace"
    );
}

#[test]
fn approximate_counting_needs_redis_and_is_written_only_when_chosen() {
    for (spec, wanted) in [
        (
            "  consistency: approximate\n",
            Some("needs `backend: redis`"),
        ),
        (
            "  backend: local\n  consistency: approximate\n",
            Some("needs `backend: redis`"),
        ),
        ("  consistency: exact\n", None),
        ("  backend: redis\n  consistency: approximate\n", None),
    ] {
        let found = errors(&rate_limit_policy(&format!("{spec}{}", limit(""))));
        match wanted {
            Some(message) => {
                assert_eq!(found.len(), 1, "{spec}: {found:?}");
                assert_eq!(found[0].field, "spec.consistency");
                assert!(found[0].message.contains(message), "{found:?}");
            }
            None => assert_eq!(found, [], "{spec}"),
        }
    }
    let unknown = parse_documents(&rate_limit_policy(&format!(
        "  backend: redis\n  consistency: roughly\n{}",
        limit("")
    )))
    .remove(0)
    .result
    .expect_err("an unknown mode");
    assert_eq!(unknown.field, "spec.consistency");
    assert!(
        unknown.message.contains("`exact` or `approximate`"),
        "{unknown:?}"
    );
    let exact = match parse_documents(&rate_limit_policy(&limit("")))
        .remove(0)
        .result
        .expect("parses")
    {
        Resource::RateLimitPolicy(p) => p,
        other => panic!("{other:?}"),
    };
    assert!(
        !serde_yaml_ng::to_string(&exact.spec)
            .unwrap()
            .contains("consistency")
    );
}

#[test]
fn headers_default_to_on_and_are_written_only_when_off() {
    let parse = |yaml: &str| match parse_documents(yaml).remove(0).result.expect("parses") {
        Resource::RateLimitPolicy(p) => p,
        other => panic!("{other:?}"),
    };
    let on = parse(&rate_limit_policy(&limit("")));
    assert!(on.spec.headers);
    assert!(on.spec.limits[0].overrides.is_empty());
    let written = serde_yaml_ng::to_string(&on.spec).unwrap();
    assert!(
        !written.contains("headers") && !written.contains("overrides"),
        "{written}"
    );

    let off = parse(&rate_limit_policy(&format!(
        "  headers: false\n{}",
        limit("")
    )));
    assert!(!off.spec.headers);
    let written = serde_yaml_ng::to_string(&off.spec).unwrap();
    assert!(written.contains("headers: false"), "{written}");
}

#[test]
fn bad_rate_limits_name_their_fields() {
    let many_limits = format!(
        "  limits:\n{}",
        "    - { key: [clientIp], requests: 1, per: 1s }\n".repeat(17)
    );
    let many_overrides = limit(&format!(
        ", overrides: [{}]",
        vec!["{ value: a, requests: 1 }"; 65].join(", ")
    ));
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "zero requests",
            limit("").replace("10", "0"),
            "spec.limits[0].requests",
        ),
        ("zero burst", limit(", burst: 0"), "spec.limits[0].burst"),
        (
            "unknown unit",
            limit("").replace("1m", "1w"),
            "spec.limits[0].per",
        ),
        (
            "no unit",
            limit("").replace("1m", "'60'"),
            "spec.limits[0].per",
        ),
        (
            "zero period",
            limit("").replace("1m", "0ms"),
            "spec.limits[0].per",
        ),
        (
            "longer than a day",
            limit("").replace("1m", "1d1ms"),
            "spec.limits[0].per",
        ),
        (
            "25 hours",
            limit("").replace("1m", "25h"),
            "spec.limits[0].per",
        ),
        (
            "no key",
            limit("").replace("[apiKey]", "[]"),
            "spec.limits[0].key",
        ),
        (
            "bad key part",
            limit("").replace("apiKey", "'cookie:x'"),
            "spec.limits[0].key[0]",
        ),
        (
            "bad header name",
            limit("").replace("apiKey", "'header:x y'"),
            "spec.limits[0].key[0]",
        ),
        ("no limits", "  limits: []\n".into(), "spec.limits"),
        ("17 limits", many_limits, "spec.limits"),
        ("65 overrides", many_overrides, "spec.limits[0].overrides"),
        (
            "empty override value",
            limit(", overrides: [{ value: '', requests: 1 }]"),
            "spec.limits[0].overrides[0].value",
        ),
        (
            "zero override requests",
            limit(", overrides: [{ value: a, requests: 1 }, { value: b, requests: 0 }]"),
            "spec.limits[0].overrides[1].requests",
        ),
        (
            "zero override burst",
            limit(", overrides: [{ value: a, requests: 1, burst: 0 }]"),
            "spec.limits[0].overrides[0].burst",
        ),
    ];
    for (what, spec, field) in cases {
        let found = errors(&rate_limit_policy(&spec));
        assert!(
            found
                .iter()
                .any(|e| e.field == field && !e.message.is_empty()),
            "{what}: expected an error on {field}, got {found:?}"
        );
    }
    // The most limits and overrides allowed, the shortest and longest periods.
    let most = format!(
        "  limits:\n{}{}",
        "    - { key: [clientIp], requests: 1, per: 1ms }\n".repeat(15),
        limit(&format!(
            ", overrides: [{}]",
            vec!["{ value: a, requests: 1 }"; 64].join(", ")
        ))
        .replace("  limits:\n", "")
        .replace("1m", "1d")
    );
    assert_eq!(errors(&rate_limit_policy(&most)), []);
}

#[test]
fn unknown_override_fields_are_unreadable() {
    let yaml = rate_limit_policy(&limit(", overrides: [{ value: a, requests: 1, per: 1s }]"));
    assert!(parse_documents(&yaml).remove(0).result.is_err());
}

fn quota(fields: &str) -> String {
    format!("  quotas:\n    - {{ key: [apiKey], per: day{fields} }}\n")
}

fn concurrency(fields: &str) -> String {
    format!("  concurrency: {{ {fields} }}\n")
}

fn parse_policy(yaml: &str) -> pavilion_crds::RateLimitPolicy {
    match parse_documents(yaml).remove(0).result.expect("parses") {
        Resource::RateLimitPolicy(p) => p,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_policy_may_hold_only_quotas_or_only_a_concurrency_limit() {
    let full_quotas = "  backend: redis\n  failureMode: local\n  quotas:\n    - key: [apiKey, 'header:X-Tenant']\n      requests: 100000\n      bytes: 10737418240\n      per: day\n      timeZone: Europe/Berlin\n    - { key: [clientIp], bytes: 1, per: month, timeZone: UTC }\n    - { key: ['claim:org'], requests: 1, per: month, timeZone: America/Argentina/Buenos_Aires }\n    - { key: [route], requests: 1, per: day }\n";
    let only_concurrency = concurrency("max: 200, min: 4, initial: 20, adaptive: true");
    let minimal_concurrency = concurrency("max: 1");
    let everything = format!(
        "{}{}{}",
        limit(""),
        quota(", requests: 5"),
        concurrency("max: 100000, adaptive: false")
    );
    for spec in [
        full_quotas.to_owned(),
        only_concurrency,
        minimal_concurrency,
        everything,
        quota(", requests: 1, timeZone: Etc/GMT+5"),
    ] {
        let yaml = rate_limit_policy(&spec);
        assert_eq!(errors(&yaml), [], "{spec}");
    }

    // Absent limits stay absent when written back; defaults are not written.
    let policy = parse_policy(&rate_limit_policy(&format!(
        "{}{}",
        quota(", requests: 5"),
        concurrency("max: 10")
    )));
    assert!(policy.spec.limits.is_empty());
    let quota = &policy.spec.quotas[0];
    assert_eq!(quota.time_zone(), "UTC");
    let c = policy.spec.concurrency.as_ref().expect("concurrency");
    assert!(c.adaptive);
    assert_eq!((c.min(), c.initial(), c.max), (1, 10, 10));
    let written = serde_yaml_ng::to_string(&policy.spec).unwrap();
    for absent in ["limits", "bytes", "timeZone", "min", "initial", "adaptive"] {
        assert!(!written.contains(absent), "{absent} in {written}");
    }
}

#[test]
fn concurrency_defaults_keep_initial_within_min_and_max() {
    let initial = |fields: &str| {
        let policy = parse_policy(&rate_limit_policy(&concurrency(fields)));
        let c = policy.spec.concurrency.unwrap();
        (c.min(), c.initial())
    };
    assert_eq!(initial("max: 200"), (1, 20));
    assert_eq!(initial("max: 200, min: 4"), (4, 20));
    assert_eq!(initial("max: 200, min: 50"), (50, 50));
    assert_eq!(initial("max: 8"), (1, 8));
    assert_eq!(initial("max: 8, min: 8"), (8, 8));
    assert_eq!(initial("max: 200, initial: 1"), (1, 1));
}

#[test]
fn bad_quotas_and_concurrency_limits_name_their_fields() {
    let many_quotas = format!(
        "  quotas:\n{}",
        "    - { key: [clientIp], requests: 1, per: day }\n".repeat(17)
    );
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "nothing at all",
            "  limits: []\n  quotas: []\n".into(),
            "spec.limits",
        ),
        ("neither requests nor bytes", quota(""), "spec.quotas[0]"),
        (
            "zero requests",
            quota(", requests: 0"),
            "spec.quotas[0].requests",
        ),
        (
            "zero bytes",
            quota(", requests: 1, bytes: 0"),
            "spec.quotas[0].bytes",
        ),
        (
            "a week",
            quota(", requests: 1").replace("day", "week"),
            "spec.quotas[0].per",
        ),
        (
            "a duration",
            quota(", requests: 1").replace("day", "1d"),
            "spec.quotas[0].per",
        ),
        (
            "capitalised period",
            quota(", requests: 1").replace("day", "Day"),
            "spec.quotas[0].per",
        ),
        (
            "unknown zone",
            quota(", requests: 1, timeZone: Mars/Olympus_Mons"),
            "spec.quotas[0].timeZone",
        ),
        (
            "offset instead of a zone",
            quota(", requests: 1, timeZone: '+02:00'"),
            "spec.quotas[0].timeZone",
        ),
        (
            "empty zone",
            quota(", requests: 1, timeZone: ''"),
            "spec.quotas[0].timeZone",
        ),
        (
            "no key",
            quota(", requests: 1").replace("[apiKey]", "[]"),
            "spec.quotas[0].key",
        ),
        (
            "bad key part",
            quota(", requests: 1").replace("apiKey", "'cookie:x'"),
            "spec.quotas[0].key[0]",
        ),
        ("17 quotas", many_quotas, "spec.quotas"),
        ("zero max", concurrency("max: 0"), "spec.concurrency.max"),
        (
            "max too high",
            concurrency("max: 100001"),
            "spec.concurrency.max",
        ),
        (
            "zero min",
            concurrency("max: 10, min: 0"),
            "spec.concurrency.min",
        ),
        (
            "min above max",
            concurrency("max: 10, min: 11"),
            "spec.concurrency.min",
        ),
        (
            "initial below min",
            concurrency("max: 10, min: 5, initial: 4"),
            "spec.concurrency.initial",
        ),
        (
            "initial above max",
            concurrency("max: 10, initial: 11"),
            "spec.concurrency.initial",
        ),
    ];
    for (what, spec, field) in cases {
        let found = errors(&rate_limit_policy(&spec));
        assert!(
            found
                .iter()
                .any(|e| e.field == field && !e.message.is_empty()),
            "{what}: expected an error on {field}, got {found:?}"
        );
    }

    // A later quota's errors carry its own index.
    let spec = format!(
        "{}    - {{ key: [apiKey], requests: 0, per: year, timeZone: Nowhere }}\n",
        quota(", requests: 1")
    );
    let fields: Vec<_> = errors(&rate_limit_policy(&spec))
        .into_iter()
        .map(|e| e.field)
        .collect();
    assert_eq!(
        fields,
        [
            "spec.quotas[1].requests",
            "spec.quotas[1].per",
            "spec.quotas[1].timeZone"
        ]
    );

    // The most quotas allowed.
    let most = format!(
        "  quotas:\n{}",
        "    - { key: [clientIp], requests: 1, per: month }\n".repeat(16)
    );
    assert_eq!(errors(&rate_limit_policy(&most)), []);
}

#[test]
fn unknown_quota_and_concurrency_fields_are_unreadable() {
    for spec in [
        quota(", requests: 1, burst: 5"),
        concurrency("max: 10, limit: 5"),
        concurrency("max: -1"),
    ] {
        let yaml = rate_limit_policy(&spec);
        assert!(parse_documents(&yaml).remove(0).result.is_err(), "{spec}");
    }
}

/// Expects each case's rules to be refused with an error on its field.
fn refused_on_fields(cases: &[(&str, &str, &str)]) {
    for (what, rules, field) in cases {
        let found = errors(&route(rules));
        assert!(
            found.iter().any(|e| e.field == *field),
            "{what}: expected an error on {field}, got {found:?}"
        );
    }
}

#[test]
fn traffic_fields_name_their_fields() {
    refused_on_fields(&[
        (
            "an idle timeout of two days",
            "    - websocket: { idleTimeout: 2d }\n      backends: [{ url: 'http://a:1' }]\n",
            "spec.rules[0].websocket.idleTimeout",
        ),
        (
            "an idle timeout that is no duration",
            "    - websocket: { idleTimeout: soon }\n      backends: [{ url: 'http://a:1' }]\n",
            "spec.rules[0].websocket.idleTimeout",
        ),
        (
            "a WebSocket rule to an h2c backend",
            "    - websocket: {}\n      backends: [{ url: 'http://a:1' }, { url: 'h2c://b:1' }]\n",
            "spec.rules[0].backends[1].url",
        ),
        (
            "a right that is no name",
            "    - authorize: { rights: ['orders:read'] }\n      backends: [{ url: 'http://a:1' }]\n",
            "spec.rules[0].authorize.rights[0]",
        ),
        (
            "no connections at all",
            "    - connections: { max: 0 }\n      backends: [{ url: 'http://a:1' }]\n",
            "spec.rules[0].connections.max",
        ),
        (
            "a queue timeout without a cap",
            "    - connections: { queueTimeout: 1s }\n      backends: [{ url: 'http://a:1' }]\n",
            "spec.rules[0].connections.queueTimeout",
        ),
        (
            "a queue timeout of two minutes",
            "    - connections: { max: 5, queueTimeout: 2m }\n      backends: [{ url: 'http://a:1' }]\n",
            "spec.rules[0].connections.queueTimeout",
        ),
        (
            "an idle timeout of two hours",
            "    - connections: { idleTimeout: 2h }\n      backends: [{ url: 'http://a:1' }]\n",
            "spec.rules[0].connections.idleTimeout",
        ),
        (
            "connection settings for shard endpoints",
            "    - connections: { max: 5 }\n      backends: [{ service: aggregate }]\n",
            "spec.rules[0].connections",
        ),
        (
            "six retries",
            "    - retry: { attempts: 6 }\n      backends: [{ url: 'http://a:1' }]\n",
            "spec.rules[0].retry.attempts",
        ),
        (
            "retrying a 404",
            "    - retry: { on: [reset, '404'] }\n      backends: [{ url: 'http://a:1' }]\n",
            "spec.rules[0].retry.on[1]",
        ),
        (
            "a budget over 100 %",
            "    - retry: { budgetPercent: 150 }\n      backends: [{ url: 'http://a:1' }]\n",
            "spec.rules[0].retry.budgetPercent",
        ),
        (
            "a per-try timeout that is no duration",
            "    - retry: { perTryTimeout: fast }\n      backends: [{ url: 'http://a:1' }]\n",
            "spec.rules[0].retry.perTryTimeout",
        ),
        (
            "a consistent hash on nothing",
            "    - loadBalancer: { policy: ConsistentHash }\n      backends: [{ url: 'http://a:1' }]\n",
            "spec.rules[0].loadBalancer.hashOn",
        ),
        (
            "a consistent hash on an unknown key",
            "    - loadBalancer: { policy: ConsistentHash, hashOn: cookie }\n      backends: [{ url: 'http://a:1' }]\n",
            "spec.rules[0].loadBalancer.hashOn",
        ),
        (
            "a hash key on round robin",
            "    - loadBalancer: { policy: RoundRobin, hashOn: tenant }\n      backends: [{ url: 'http://a:1' }]\n",
            "spec.rules[0].loadBalancer.hashOn",
        ),
        (
            "an empty health check",
            "    - healthCheck: {}\n      backends: [{ url: 'http://a:1' }]\n",
            "spec.rules[0].healthCheck",
        ),
        (
            "a relative check path",
            "    - healthCheck: { active: { path: healthz } }\n      backends: [{ url: 'http://a:1' }]\n",
            "spec.rules[0].healthCheck.active.path",
        ),
        (
            "a check timeout longer than its interval",
            "    - healthCheck: { active: { path: /h, interval: 1s, timeout: 2s } }\n      backends: [{ url: 'http://a:1' }]\n",
            "spec.rules[0].healthCheck.active.timeout",
        ),
        (
            "ejecting everything and more",
            "    - healthCheck: { passive: { maxEjectedPercent: 101 } }\n      backends: [{ url: 'http://a:1' }]\n",
            "spec.rules[0].healthCheck.passive.maxEjectedPercent",
        ),
        (
            "health checks on a service backend",
            "    - auth: { apiKeys: {} }\n      tenancy: {}\n      healthCheck: { passive: {} }\n      backends: [{ service: aggregate }]\n",
            "spec.rules[0].healthCheck",
        ),
        (
            "a breaker that never opens",
            "    - circuitBreaker: { consecutiveFailures: 0 }\n      backends: [{ url: 'http://a:1' }]\n",
            "spec.rules[0].circuitBreaker.consecutiveFailures",
        ),
        (
            "a breaker open for a day",
            "    - circuitBreaker: { openFor: 1d }\n      backends: [{ url: 'http://a:1' }]\n",
            "spec.rules[0].circuitBreaker.openFor",
        ),
        (
            "a prefix rewrite on a regex match",
            "    - matches: [{ path: { type: RegularExpression, value: '/a.*' } }]\n      rewrite: { pathPrefix: /b }\n      backends: [{ url: 'http://a:1' }]\n",
            "spec.rules[0].rewrite.pathPrefix",
        ),
        (
            "a relative prefix",
            "    - rewrite: { pathPrefix: v2 }\n      backends: [{ url: 'http://a:1' }]\n",
            "spec.rules[0].rewrite.pathPrefix",
        ),
        (
            "both rewrites",
            "    - rewrite: { pathPrefix: /v2, pathRegex: { pattern: a, substitution: /b } }\n      backends: [{ url: 'http://a:1' }]\n",
            "spec.rules[0].rewrite",
        ),
        (
            "a broken pattern",
            "    - rewrite: { pathRegex: { pattern: '(', substitution: /b } }\n      backends: [{ url: 'http://a:1' }]\n",
            "spec.rules[0].rewrite.pathRegex.pattern",
        ),
        (
            "a substitution smuggling a query",
            "    - rewrite: { pathRegex: { pattern: a, substitution: '/b?admin=1' } }\n      backends: [{ url: 'http://a:1' }]\n",
            "spec.rules[0].rewrite.pathRegex.substitution",
        ),
        (
            "a host that is no host",
            "    - rewrite: { host: 'a b' }\n      backends: [{ url: 'http://a:1' }]\n",
            "spec.rules[0].rewrite.host",
        ),
        (
            "forging an identity header",
            "    - requestHeaders: { set: [{ name: X-Auth-Subject, value: admin }] }\n      backends: [{ url: 'http://a:1' }]\n",
            "spec.rules[0].requestHeaders.set[0].name",
        ),
        (
            "touching the framing",
            "    - responseHeaders: { remove: [content-length] }\n      backends: [{ url: 'http://a:1' }]\n",
            "spec.rules[0].responseHeaders.remove[0]",
        ),
        (
            "a value with a line break",
            "    - requestHeaders: { add: [{ name: x-a, value: \"a\\r\\nb: c\" }] }\n      backends: [{ url: 'http://a:1' }]\n",
            "spec.rules[0].requestHeaders.add[0].value",
        ),
        (
            "compressing with deflate",
            "    - compression: { algorithms: [gzip, deflate] }\n      backends: [{ url: 'http://a:1' }]\n",
            "spec.rules[0].compression.algorithms[1]",
        ),
        (
            "a media type without a subtype",
            "    - compression: { types: [text] }\n      backends: [{ url: 'http://a:1' }]\n",
            "spec.rules[0].compression.types[0]",
        ),
        (
            "a cache kept for a week",
            "    - cache: { maxTtl: 7d }\n      backends: [{ url: 'http://a:1' }]\n",
            "spec.rules[0].cache.maxTtl",
        ),
        (
            "a cache entry of a gigabyte",
            "    - cache: { maxEntryBytes: 1073741824 }\n      backends: [{ url: 'http://a:1' }]\n",
            "spec.rules[0].cache.maxEntryBytes",
        ),
        (
            "a key header that is no header",
            "    - cache: { keyHeaders: ['bad header'] }\n      backends: [{ url: 'http://a:1' }]\n",
            "spec.rules[0].cache.keyHeaders[0]",
        ),
        (
            "a zero body limit",
            "    - maxBodyBytes: 0\n      backends: [{ url: 'http://a:1' }]\n",
            "spec.rules[0].maxBodyBytes",
        ),
    ]);
    let unknown = parse_documents(&route(
        "    - loadBalancer: { policy: Fastest }\n      backends: [{ url: 'http://a:1' }]\n",
    ));
    let error = unknown[0].result.as_ref().unwrap_err();
    assert_eq!(error.field, "spec.rules[0].loadBalancer.policy");
    let good = "    - websocket: { idleTimeout: 1h }\n      backends: [{ url: 'https://a:1' }]\n      rewrite: { pathPrefix: /v2, host: api.internal }\n      requestHeaders: { set: [{ name: x-env, value: prod }] }\n      responseHeaders: { add: [{ name: x-frame-options, value: DENY }] }\n      maxBodyBytes: 1024\n      compression: { minSize: 512, types: [text/*, application/json], algorithms: [br, gzip] }\n      cache: { defaultTtl: 30s, keyHeaders: [Accept-Language] }\n";
    assert_eq!(errors(&route(good)), []);
}
