//! Authentication fields of route rules, address lists, and the `ApiKey` and
//! `TokenRevocation` kinds: what is accepted, and the field each refusal names.

use pavilion_crds::{FieldError, Kind, Resource, parse_documents};

fn errors(yaml: &str) -> Vec<FieldError> {
    let docs = parse_documents(yaml);
    assert_eq!(docs.len(), 1);
    docs.into_iter()
        .next()
        .unwrap()
        .result
        .unwrap_or_else(|e| panic!("parses: {e}"))
        .validate()
}

/// A route whose first rule carries `extra` (indented as rule fields).
fn rule_with(extra: &str) -> String {
    format!(
        "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: Route\nmetadata: {{ name: orders, namespace: shop }}\nspec:\n  rules:\n    - backends: [{{ url: http://127.0.0.1:9000 }}]\n{extra}"
    )
}

const PEM: &str = "-----BEGIN PUBLIC KEY-----\\nMCowBQYDK2VwAyEA\\n-----END PUBLIC KEY-----\\n";

fn full_auth() -> String {
    format!(
        "      auth:
        jwt:
          - issuer: https://idp.example.com/realms/main
            jwksUri: https://idp.example.com/certs
            audiences: [orders-api]
            keys:
              - {{ kid: k1, publicKeyPem: \"{PEM}\" }}
              - {{ secretFile: /etc/pavilion/hmac/main, algorithm: HS384 }}
              - {{ secretEnv: PAVILION_HMAC_MAIN }}
            requiredClaims: [tenant]
            claimsToHeaders: [{{ claim: tenant, header: X-Tenant }}, {{ claim: sub, header: x-user }}]
            cookie: session
            leeway: 1m
          - issuer: https://static.example.com
            keys: [{{ secretEnv: STATIC_SECRET }}]
        apiKeys: {{ scopes: [read, Write] }}
        allow:
          keyIds: [\"public-*\"]
          subjects: [\"user-*\"]
          claims: [{{ name: tenant, values: [acme, \"beta-*\"] }}]
      ipAllow: [\"10.0.0.0/8\", \"2001:db8::/32\", \"192.0.2.7\"]
      ipDeny: [\"10.6.6.0/24\"]
"
    )
}

#[test]
fn a_complete_auth_section_is_valid() {
    assert_eq!(errors(&rule_with(&full_auth())), []);
}

#[test]
fn api_keys_alone_and_jwks_alone_are_enough() {
    assert_eq!(errors(&rule_with("      auth: { apiKeys: {} }\n")), []);
    assert_eq!(
        errors(&rule_with(
            "      auth: { jwt: [{ issuer: i, jwksUri: 'http://idp:8080/certs' }] }\n"
        )),
        []
    );
}

/// `(what, rule fields, field that must carry an error)`.
const BAD: &[(&str, &str, &str)] = &[
    (
        "auth accepting nothing",
        "      auth: {}\n",
        "spec.rules[0].auth",
    ),
    (
        "auth with an empty jwt list",
        "      auth: { jwt: [] }\n",
        "spec.rules[0].auth",
    ),
    (
        "empty issuer",
        "      auth: { jwt: [{ issuer: '', jwksUri: 'https://i/k' }] }\n",
        "spec.rules[0].auth.jwt[0].issuer",
    ),
    (
        "issuer twice",
        "      auth: { jwt: [{ issuer: a, jwksUri: 'https://i/k' }, { issuer: a, jwksUri: 'https://i/k2' }] }\n",
        "spec.rules[0].auth.jwt[1].issuer",
    ),
    (
        "no key source at all",
        "      auth: { jwt: [{ issuer: a }] }\n",
        "spec.rules[0].auth.jwt[0].jwksUri",
    ),
    (
        "jwks over ftp",
        "      auth: { jwt: [{ issuer: a, jwksUri: 'ftp://i/k' }] }\n",
        "spec.rules[0].auth.jwt[0].jwksUri",
    ),
    (
        "jwks without a scheme",
        "      auth: { jwt: [{ issuer: a, jwksUri: 'idp.example.com/certs' }] }\n",
        "spec.rules[0].auth.jwt[0].jwksUri",
    ),
    (
        "empty audience",
        "      auth: { jwt: [{ issuer: a, jwksUri: 'https://i/k', audiences: [''] }] }\n",
        "spec.rules[0].auth.jwt[0].audiences[0]",
    ),
    (
        "key without a source",
        "      auth: { jwt: [{ issuer: a, keys: [{ kid: k }] }] }\n",
        "spec.rules[0].auth.jwt[0].keys[0]",
    ),
    (
        "key with two sources",
        "      auth: { jwt: [{ issuer: a, keys: [{ secretFile: /s, secretEnv: S }] }] }\n",
        "spec.rules[0].auth.jwt[0].keys[0]",
    ),
    (
        "not PEM",
        "      auth: { jwt: [{ issuer: a, keys: [{ publicKeyPem: MCowBQYDK2VwAyEA }] }] }\n",
        "spec.rules[0].auth.jwt[0].keys[0].publicKeyPem",
    ),
    (
        "relative secret file",
        "      auth: { jwt: [{ issuer: a, keys: [{ secretFile: secrets/main }] }] }\n",
        "spec.rules[0].auth.jwt[0].keys[0].secretFile",
    ),
    (
        "bad env name",
        "      auth: { jwt: [{ issuer: a, keys: [{ secretEnv: 1-SECRET }] }] }\n",
        "spec.rules[0].auth.jwt[0].keys[0].secretEnv",
    ),
    (
        "algorithm on a public key",
        "      auth: { jwt: [{ issuer: a, keys: [{ publicKeyPem: '-----BEGIN PUBLIC KEY-----', algorithm: HS256 }] }] }\n",
        "spec.rules[0].auth.jwt[0].keys[0].algorithm",
    ),
    (
        "unknown algorithm",
        "      auth: { jwt: [{ issuer: a, keys: [{ secretEnv: S, algorithm: RS256 }] }] }\n",
        "spec.rules[0].auth.jwt[0].keys[0].algorithm",
    ),
    (
        "empty kid",
        "      auth: { jwt: [{ issuer: a, keys: [{ kid: '', secretEnv: S }] }] }\n",
        "spec.rules[0].auth.jwt[0].keys[0].kid",
    ),
    (
        "empty required claim",
        "      auth: { jwt: [{ issuer: a, jwksUri: 'https://i/k', requiredClaims: [''] }] }\n",
        "spec.rules[0].auth.jwt[0].requiredClaims[0]",
    ),
    (
        "claim into a bad header name",
        "      auth: { jwt: [{ issuer: a, jwksUri: 'https://i/k', claimsToHeaders: [{ claim: t, header: 'x tenant' }] }] }\n",
        "spec.rules[0].auth.jwt[0].claimsToHeaders[0].header",
    ),
    (
        "claim into Authorization",
        "      auth: { jwt: [{ issuer: a, jwksUri: 'https://i/k', claimsToHeaders: [{ claim: t, header: Authorization }] }] }\n",
        "spec.rules[0].auth.jwt[0].claimsToHeaders[0].header",
    ),
    (
        "claim into x-forwarded-for",
        "      auth: { jwt: [{ issuer: a, jwksUri: 'https://i/k', claimsToHeaders: [{ claim: t, header: X-Forwarded-For }] }] }\n",
        "spec.rules[0].auth.jwt[0].claimsToHeaders[0].header",
    ),
    (
        "claim into x-request-id",
        "      auth: { jwt: [{ issuer: a, jwksUri: 'https://i/k', claimsToHeaders: [{ claim: t, header: x-request-id }] }] }\n",
        "spec.rules[0].auth.jwt[0].claimsToHeaders[0].header",
    ),
    (
        "two claims into one header",
        "      auth: { jwt: [{ issuer: a, jwksUri: 'https://i/k', claimsToHeaders: [{ claim: t, header: x-t }, { claim: u, header: X-T }] }] }\n",
        "spec.rules[0].auth.jwt[0].claimsToHeaders[1].header",
    ),
    (
        "empty claim name",
        "      auth: { jwt: [{ issuer: a, jwksUri: 'https://i/k', claimsToHeaders: [{ claim: '', header: x-t }] }] }\n",
        "spec.rules[0].auth.jwt[0].claimsToHeaders[0].claim",
    ),
    (
        "cookie name with a separator",
        "      auth: { jwt: [{ issuer: a, jwksUri: 'https://i/k', cookie: 'a=b' }] }\n",
        "spec.rules[0].auth.jwt[0].cookie",
    ),
    (
        "leeway too long",
        "      auth: { jwt: [{ issuer: a, jwksUri: 'https://i/k', leeway: 6m }] }\n",
        "spec.rules[0].auth.jwt[0].leeway",
    ),
    (
        "leeway not a duration",
        "      auth: { jwt: [{ issuer: a, jwksUri: 'https://i/k', leeway: lots }] }\n",
        "spec.rules[0].auth.jwt[0].leeway",
    ),
    (
        "unknown scope",
        "      auth: { apiKeys: { scopes: [read, delete] } }\n",
        "spec.rules[0].auth.apiKeys.scopes[1]",
    ),
    (
        "empty key id pattern",
        "      auth: { apiKeys: {}, allow: { keyIds: [''] } }\n",
        "spec.rules[0].auth.allow.keyIds[0]",
    ),
    (
        "empty subject pattern",
        "      auth: { apiKeys: {}, allow: { subjects: [''] } }\n",
        "spec.rules[0].auth.allow.subjects[0]",
    ),
    (
        "claim allow without values",
        "      auth: { apiKeys: {}, allow: { claims: [{ name: tenant, values: [] }] } }\n",
        "spec.rules[0].auth.allow.claims[0].values",
    ),
    (
        "claim allow with an empty pattern",
        "      auth: { apiKeys: {}, allow: { claims: [{ name: tenant, values: [a, ''] }] } }\n",
        "spec.rules[0].auth.allow.claims[0].values[1]",
    ),
    (
        "claim allow without a name",
        "      auth: { apiKeys: {}, allow: { claims: [{ name: '', values: [a] }] } }\n",
        "spec.rules[0].auth.allow.claims[0].name",
    ),
    (
        "prefix too long",
        "      ipAllow: ['10.0.0.0/33']\n",
        "spec.rules[0].ipAllow[0]",
    ),
    (
        "not an address",
        "      ipDeny: ['10.0.0.0/8', 'example.com']\n",
        "spec.rules[0].ipDeny[1]",
    ),
    (
        "IPv6 prefix too long",
        "      ipDeny: ['2001:db8::/129']\n",
        "spec.rules[0].ipDeny[0]",
    ),
];

#[test]
fn bad_auth_and_address_fields_name_their_field() {
    for (what, extra, field) in BAD {
        let found = errors(&rule_with(extra));
        assert!(
            found
                .iter()
                .any(|e| e.field == *field && !e.message.is_empty()),
            "{what}: expected an error on {field}, got {found:?}"
        );
    }
}

#[test]
fn unknown_auth_fields_are_refused_by_the_reader() {
    let docs = parse_documents(&rule_with(
        "      auth: { jwt: [{ issuer: a, jwks: 'https://i/k' }] }\n",
    ));
    let error = docs[0].result.as_ref().unwrap_err();
    assert_eq!(error.field, "spec.rules[0].auth.jwt[0].jwks");
}

fn api_key(spec: &str) -> String {
    format!(
        "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: ApiKey\nmetadata: {{ name: mobile-app, namespace: shop }}\nspec:\n{spec}"
    )
}

const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

#[test]
fn api_keys_are_validated() {
    let good = api_key(&format!(
        "  keyId: Mobile_App.v2\n  description: Mobile app, production\n  sha256: {}\n  scopes: [read, WRITE]\n  expiresAt: \"2027-01-01T00:00:00+01:00\"\n",
        HASH.to_uppercase()
    ));
    assert_eq!(errors(&good), []);
    assert_eq!(
        errors(&api_key(&format!("  sha256: {HASH}\n  scopes: [admin]\n"))),
        [],
        "keyId defaults to the name"
    );

    let fields = |spec: &str| -> Vec<String> {
        errors(&api_key(spec))
            .into_iter()
            .map(|e| e.field)
            .collect()
    };
    assert_eq!(
        fields(&format!(
            "  keyId: 'a b'\n  sha256: {HASH}\n  scopes: [read]\n  expiresAt: 2027-01-01\n"
        )),
        ["spec.keyId", "spec.expiresAt"]
    );
    assert_eq!(
        fields(&format!(
            "  keyId: '{}'\n  sha256: {HASH}\n  scopes: [read]\n",
            "k".repeat(129)
        )),
        ["spec.keyId"]
    );
    assert_eq!(
        fields("  sha256: 9f86d0\n  scopes: []\n"),
        ["spec.sha256", "spec.scopes"]
    );
    assert_eq!(
        fields(&format!(
            "  sha256: {}\n  scopes: [read, root]\n",
            HASH.replace('9', "g")
        )),
        ["spec.sha256", "spec.scopes[1]"]
    );
    let long_name = api_key(&format!("  sha256: {HASH}\n  scopes: [read]\n"))
        .replace("mobile-app", &vec!["a".repeat(60); 3].join("."));
    let found = errors(&long_name);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].field, "metadata.name");
    assert!(found[0].message.contains("set spec.keyId"), "{found:?}");
}

#[test]
fn token_revocations_are_validated() {
    let revocation = |jtis: &str| {
        format!(
            "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: TokenRevocation\nmetadata: {{ name: incident-42, namespace: shop }}\nspec:\n  jtis: {jtis}\n"
        )
    };
    assert_eq!(errors(&revocation("[a1b2, c3d4]")), []);
    let fields = |jtis: &str| -> Vec<String> {
        errors(&revocation(jtis))
            .into_iter()
            .map(|e| e.field)
            .collect()
    };
    assert_eq!(fields("[]"), ["spec.jtis"]);
    assert_eq!(
        fields(&format!("[ok, '', '{}']", "j".repeat(257))),
        ["spec.jtis[1]", "spec.jtis[2]"]
    );
    assert_eq!(
        fields(&format!("['{}']", "é".repeat(256))),
        Vec::<String>::new()
    );
}

#[test]
fn the_reader_takes_the_new_kinds_from_one_file() {
    let text = format!(
        "{}---\napiVersion: gateway.pavilion.dev/v1alpha1\nkind: TokenRevocation\nmetadata: {{ name: incident-42 }}\nspec:\n  jtis: [a1b2]\n---\n{}",
        api_key(&format!("  sha256: {HASH}\n  scopes: [read]\n")),
        rule_with(&full_auth()),
    );
    let docs = parse_documents(&text);
    let kinds: Vec<Kind> = docs
        .iter()
        .map(|d| d.result.as_ref().expect("parses").kind())
        .collect();
    assert_eq!(kinds, [Kind::ApiKey, Kind::TokenRevocation, Kind::Route]);
    assert_eq!(docs[1].line, 8);
    let Ok(Resource::TokenRevocation(revocation)) = &docs[1].result else {
        unreachable!()
    };
    assert_eq!(revocation.metadata.namespace.as_deref(), Some("default"));
    assert_eq!(revocation.spec.jtis, ["a1b2"]);
    for kind in [Kind::ApiKey, Kind::TokenRevocation] {
        assert_eq!(Kind::from_name(kind.as_str()), Some(kind));
    }
}

#[test]
fn new_kinds_survive_the_yaml_round_trip() {
    let text = api_key(&format!(
        "  sha256: {HASH}\n  scopes: [read]\n  expiresAt: \"2027-01-01T00:00:00Z\"\n"
    ));
    let resource = parse_documents(&text).remove(0).result.unwrap();
    let again = parse_documents(&resource.to_yaml())
        .remove(0)
        .result
        .unwrap();
    assert_eq!(resource, again);
}

#[test]
fn upstream_tls_names_a_server_for_https_backends_only() {
    let https = |extra: &str| {
        format!(
            "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: Route\nmetadata: {{ name: orders, namespace: shop }}\nspec:\n  rules:\n    - backends: [{{ url: 'https://10.0.0.7:8443' }}]\n{extra}"
        )
    };
    assert_eq!(
        errors(&https(
            "      upstreamTls: { serverName: orders.internal }\n"
        )),
        []
    );
    assert_eq!(
        errors(&https("      upstreamTls: { serverName: 10.0.0.7 }\n")),
        []
    );
    let bad = errors(&https("      upstreamTls: { serverName: 'not a name' }\n"));
    assert!(
        bad.iter()
            .any(|e| e.field == "spec.rules[0].upstreamTls.serverName"),
        "{bad:?}"
    );
    let plain = errors(&rule_with(
        "      upstreamTls: { serverName: orders.internal }\n",
    ));
    assert!(
        plain
            .iter()
            .any(|e| e.field == "spec.rules[0].upstreamTls" && e.message.contains("https://")),
        "{plain:?}"
    );
}
