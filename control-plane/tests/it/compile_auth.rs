//! Authentication in the snapshot: rule `auth` and address lists normalised, API keys as
//! raw hashes sorted by namespace and id, duplicates refused, revocations merged.

use pavilion_control::compile::{Compiled, Outcome, Reason, compile_at};
use pavilion_control::source::{Item, Origin};
use pavilion_crds::parse_documents;
use pavilion_proto as proto;
use pavilion_proto::v1::static_key::Source;

/// 2026-06-01T00:00:00Z.
const NOW: i64 = 1_780_272_000;

fn compile(text: &str) -> Compiled {
    let items: Vec<Item> = parse_documents(text)
        .into_iter()
        .map(|doc| Item::from_document(&std::sync::Arc::from(std::path::Path::new("r.yaml")), doc))
        .collect();
    compile_at(&items, NOW)
}

fn reason(compiled: &Compiled, index: usize) -> Option<(Reason, Vec<String>)> {
    match &compiled.reports[index].outcome {
        Outcome::Accepted { .. } => None,
        Outcome::Rejected { reason, errors } => {
            Some((*reason, errors.iter().map(ToString::to_string).collect()))
        }
        stale @ Outcome::Stale { .. } => panic!("nothing was accepted before: {stale:?}"),
    }
}

fn warnings(compiled: &Compiled, index: usize) -> Vec<String> {
    match &compiled.reports[index].outcome {
        Outcome::Accepted { warnings } => warnings.iter().map(ToString::to_string).collect(),
        Outcome::Rejected { errors, .. } | Outcome::Stale { errors, .. } => {
            panic!("rejected: {errors:?}")
        }
    }
}

const ROUTE: &str = "apiVersion: gateway.pavilion.dev/v1alpha1
kind: Route
metadata: { name: orders, namespace: shop }
spec:
  rules:
    - backends: [{ url: http://127.0.0.1:9000 }]
      auth:
        jwt:
          - issuer: https://idp.example.com/realms/main
            jwksUri: https://idp.example.com/certs
            audiences: [orders-api, admin-api, orders-api]
            keys:
              - { kid: k1, publicKeyPem: '-----BEGIN PUBLIC KEY-----' }
              - { secretFile: /etc/pavilion/hmac/main }
              - { kid: k3, secretEnv: PAVILION_HMAC, algorithm: HS512 }
            requiredClaims: [tenant, sub]
            claimsToHeaders: [{ claim: tenant, header: X-Tenant }, { claim: sub, header: X-A-User }]
            cookie: session
          - issuer: https://other.example.com
            keys: [{ secretEnv: OTHER }]
            leeway: 2m
        apiKeys: { scopes: [Write, read, write] }
        allow:
          keyIds: ['public-*', 'mobile', 'public-*']
          subjects: ['user-*']
          claims: [{ name: tenant, values: ['beta-*', acme] }]
      ipAllow: ['10.1.2.3/8', '2001:DB8::1/32', '192.0.2.7', '10.0.0.0/8']
      ipDeny: ['10.6.6.6/24']
    - backends: [{ url: http://127.0.0.1:9001 }]
";

#[test]
fn auth_and_address_lists_are_normalised() {
    let compiled = compile(ROUTE);
    assert!(compiled.reports[0].is_accepted(), "{:?}", compiled.reports);
    let rules = &compiled.routes[0].decode().rules;
    let rule = &rules[0];
    assert_eq!(
        rule.ip_allow,
        ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"]
    );
    assert_eq!(rule.ip_deny, ["10.6.6.0/24"]);
    let auth = rule.auth.as_ref().expect("auth");
    assert_eq!(
        auth.api_keys,
        Some(proto::ApiKeyAuth {
            scopes: vec!["read".into(), "write".into()]
        })
    );
    assert_eq!(
        auth.allow,
        Some(proto::Allow {
            key_ids: vec!["mobile".into(), "public-*".into()],
            subjects: vec!["user-*".into()],
            claims: vec![proto::ClaimAllow {
                name: "tenant".into(),
                values: vec!["acme".into(), "beta-*".into()],
            }],
        })
    );
    let main = &auth.jwt[0];
    assert_eq!(
        *main,
        proto::JwtProvider {
            issuer: "https://idp.example.com/realms/main".into(),
            jwks_uri: "https://idp.example.com/certs".into(),
            audiences: vec!["admin-api".into(), "orders-api".into()],
            keys: vec![
                proto::StaticKey {
                    kid: "k1".into(),
                    source: Some(Source::PublicKeyPem("-----BEGIN PUBLIC KEY-----".into())),
                    algorithm: String::new(),
                },
                proto::StaticKey {
                    kid: String::new(),
                    source: Some(Source::SecretFile("/etc/pavilion/hmac/main".into())),
                    algorithm: "HS256".into(),
                },
                proto::StaticKey {
                    kid: "k3".into(),
                    source: Some(Source::SecretEnv("PAVILION_HMAC".into())),
                    algorithm: "HS512".into(),
                },
            ],
            required_claims: vec!["sub".into(), "tenant".into()],
            claims_to_headers: vec![
                proto::ClaimHeader {
                    claim: "sub".into(),
                    header: "x-a-user".into(),
                },
                proto::ClaimHeader {
                    claim: "tenant".into(),
                    header: "x-tenant".into(),
                },
            ],
            cookie: "session".into(),
            leeway_seconds: 30,
            tenants_claim: "tenants".into(),
            roles_claim: "roles".into(),
        }
    );
    assert_eq!(auth.jwt[1].issuer, "https://other.example.com");
    assert_eq!(auth.jwt[1].jwks_uri, "");
    assert_eq!(auth.jwt[1].leeway_seconds, 120);

    let public = &rules[1];
    assert_eq!(public.auth, None, "a rule without auth is public");
    assert!(public.ip_allow.is_empty() && public.ip_deny.is_empty());
}

fn api_key(name: &str, namespace: &str, extra_meta: &str, spec: &str) -> String {
    format!(
        "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: ApiKey\nmetadata:\n  name: {name}\n  namespace: {namespace}\n{extra_meta}spec:\n{spec}---\n"
    )
}

/// A SHA-256 in hex made of one repeated byte.
fn hash(byte: u8) -> String {
    format!("{byte:02x}").repeat(32)
}

#[test]
fn api_keys_travel_as_raw_hashes_sorted_by_namespace_and_id() {
    let text = [
        api_key(
            "zeta",
            "shop",
            "",
            &format!(
                "  sha256: {}\n  scopes: [write, Read]\n  description: Mobile app\n  expiresAt: \"2027-01-01T01:00:00+01:00\"\n",
                hash(0xAB).to_uppercase()
            ),
        ),
        api_key(
            "x",
            "shop",
            "",
            &format!("  keyId: alpha\n  sha256: {}\n  scopes: [admin]\n", hash(1)),
        ),
        api_key("a", "billing", "", &format!("  sha256: {}\n  scopes: [read]\n", hash(2))),
    ]
    .concat();
    let compiled = compile(&text);
    assert!(compiled.reports.iter().all(|r| r.is_accepted()));
    let keys: Vec<_> = compiled
        .snapshot
        .api_keys
        .iter()
        .map(|k| (k.namespace.as_str(), k.id.as_str()))
        .collect();
    assert_eq!(
        keys,
        [("billing", "a"), ("shop", "alpha"), ("shop", "zeta")]
    );
    let zeta = &compiled.snapshot.api_keys[2];
    assert_eq!(
        *zeta,
        proto::ApiKey {
            namespace: "shop".into(),
            id: "zeta".into(),
            description: "Mobile app".into(),
            sha256: vec![0xab; 32],
            scopes: vec!["read".into(), "write".into()],
            // 2027-01-01T00:00:00Z
            expires_at: 1_798_761_600,
            tenants: Vec::new(),
            roles: Vec::new(),
        }
    );
    assert_eq!(compiled.snapshot.api_keys[1].expires_at, 0, "never expires");
}

#[test]
fn the_younger_of_two_keys_sharing_an_id_or_a_hash_is_rejected() {
    let old = "  creationTimestamp: \"2026-01-01T00:00:00Z\"\n";
    let young = "  creationTimestamp: \"2026-03-01T00:00:00Z\"\n";
    let text = [
        // Listed first, but younger: it loses to `first` on the id.
        api_key(
            "same-id",
            "shop",
            young,
            &format!("  keyId: mobile\n  sha256: {}\n  scopes: [read]\n", hash(2)),
        ),
        api_key(
            "first",
            "shop",
            old,
            &format!("  keyId: mobile\n  sha256: {}\n  scopes: [read]\n", hash(1)),
        ),
        api_key(
            "same-hash",
            "shop",
            young,
            &format!("  sha256: {}\n  scopes: [read]\n", hash(1)),
        ),
        // Another namespace may reuse both.
        api_key(
            "elsewhere",
            "billing",
            young,
            &format!("  keyId: mobile\n  sha256: {}\n  scopes: [read]\n", hash(1)),
        ),
    ]
    .concat();
    let compiled = compile(&text);
    assert_eq!(
        reason(&compiled, 0),
        Some((
            Reason::Duplicate,
            vec!["spec.keyId: key id `mobile` is already used by the older ApiKey shop/first at r.yaml:12".to_owned()]
        ))
    );
    assert_eq!(reason(&compiled, 1), None);
    assert_eq!(
        reason(&compiled, 2),
        Some((
            Reason::Duplicate,
            vec!["spec.sha256: the same key (sha256) is already defined by the older ApiKey shop/first at r.yaml:12".to_owned()]
        ))
    );
    assert_eq!(reason(&compiled, 3), None);
    let ids: Vec<_> = compiled
        .snapshot
        .api_keys
        .iter()
        .map(|k| (k.namespace.as_str(), k.id.as_str(), k.sha256[0]))
        .collect();
    assert_eq!(ids, [("billing", "mobile", 1), ("shop", "mobile", 1)]);
}

#[test]
fn an_expired_key_is_accepted_with_a_warning() {
    let text = [
        api_key(
            "old",
            "shop",
            "",
            &format!(
                "  sha256: {}\n  scopes: [read]\n  expiresAt: \"2026-01-01T00:00:00Z\"\n",
                hash(1)
            ),
        ),
        api_key(
            "fresh",
            "shop",
            "",
            &format!(
                "  sha256: {}\n  scopes: [read]\n  expiresAt: \"2027-01-01T00:00:00Z\"\n",
                hash(2)
            ),
        ),
    ]
    .concat();
    let compiled = compile(&text);
    assert_eq!(
        warnings(&compiled, 0),
        ["spec.expiresAt: the key expired at 2026-01-01T00:00:00Z; data planes refuse it"]
    );
    assert_eq!(warnings(&compiled, 1), Vec::<String>::new());
    assert_eq!(compiled.snapshot.api_keys.len(), 2);
    // Time decides warnings only, never the snapshot.
    let items: Vec<Item> = parse_documents(&text)
        .into_iter()
        .map(|doc| Item::new(Origin::Kv { key: "k".into() }, doc.result))
        .collect();
    assert_eq!(
        compile_at(&items, 0).full_snapshot(),
        compile_at(&items, NOW).full_snapshot()
    );
}

fn revocation(name: &str, namespace: &str, jtis: &str) -> String {
    format!(
        "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: TokenRevocation\nmetadata: {{ name: {name}, namespace: {namespace} }}\nspec:\n  jtis: {jtis}\n---\n"
    )
}

#[test]
fn revocations_are_merged_per_namespace() {
    let text = [
        revocation("incident-42", "shop", "[c3d4, a1b2]"),
        revocation("incident-43", "shop", "[a1b2, b0b0]"),
        revocation("broken", "shop", "[]"),
        revocation("leak", "billing", "[z9]"),
    ]
    .concat();
    let compiled = compile(&text);
    assert_eq!(reason(&compiled, 2).map(|r| r.0), Some(Reason::Invalid));
    assert_eq!(
        compiled.snapshot.revocations,
        [
            proto::TokenRevocations {
                namespace: "billing".into(),
                jtis: vec!["z9".into()],
            },
            proto::TokenRevocations {
                namespace: "shop".into(),
                jtis: vec!["a1b2".into(), "b0b0".into(), "c3d4".into()],
            },
        ]
    );
}

#[test]
fn an_invalid_auth_section_rejects_its_route_alone() {
    let text = format!(
        "{ROUTE}---\n{}",
        ROUTE
            .replace("name: orders", "name: broken")
            .replace("ipDeny: ['10.6.6.6/24']", "ipDeny: ['10.6.6.6/44']")
    );
    let compiled = compile(&text);
    assert_eq!(reason(&compiled, 0), None);
    assert_eq!(
        reason(&compiled, 1),
        Some((
            Reason::Invalid,
            vec!["spec.rules[0].ipDeny[0]: `10.6.6.6/44` is not an address range; write e.g. 10.0.0.0/8, 2001:db8::/32 or 192.0.2.7".to_owned()]
        ))
    );
    assert_eq!(compiled.routes.len(), 1);
}
