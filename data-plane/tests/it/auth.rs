//! Authentication and access control against real servers: a JWKS endpoint on loopback
//! whose keys rotate and which goes down, the attack table, API keys, ACLs, IP lists.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use http::Request;
use http_body_util::Full;
use jsonwebtoken::{Algorithm, Header};
use pavilion_data::auth::ip::Cidrs;
use pavilion_data::{Config, DataPlane};
use pavilion_proto as proto;
use pavilion_tests::client::{HttpClient, Reply};
use pavilion_tests::jwt::{JwksServer, SigningKey, claims, now, sign_hmac};
use pavilion_tests::snapshot::{api_key, prefix_rule, route, snapshot};
use pavilion_tests::{Upstream, eventually};
use serde_json::json;

const ISSUER: &str = "https://idp.test/realms/main";
const AUDIENCE: &str = "orders-api";

fn provider(issuer: &str, jwks_uri: &str) -> proto::JwtProvider {
    proto::JwtProvider {
        issuer: issuer.into(),
        jwks_uri: jwks_uri.into(),
        audiences: vec![AUDIENCE.into()],
        leeway_seconds: 30,
        ..Default::default()
    }
}

fn with_auth(mut rule: proto::Rule, auth: proto::Auth) -> proto::Rule {
    rule.auth = Some(auth);
    rule
}

fn jwt_auth(providers: Vec<proto::JwtProvider>) -> proto::Auth {
    proto::Auth {
        jwt: providers,
        ..Default::default()
    }
}

async fn data_plane(min_refetch_gap: Duration) -> DataPlane {
    let mut config = Config::local();
    config.jwks.min_refetch_gap = min_refetch_gap;
    pavilion_data::start(config)
        .await
        .expect("data plane starts")
}

async fn get(dp: &DataPlane, path: &str, headers: &[(&str, &str)]) -> Reply {
    HttpClient::http1()
        .get_with(&format!("http://{}{path}", dp.addr), headers)
        .await
        .unwrap()
}

async fn bearer(dp: &DataPlane, path: &str, token: &str) -> Reply {
    get(dp, path, &[("authorization", &format!("Bearer {token}"))]).await
}

#[track_caller]
fn assert_denied(reply: &Reply, status: u16, code: &str, case: &str) {
    assert_eq!(reply.status.as_u16(), status, "{case}: {}", reply.text());
    let body = reply.json();
    assert_eq!(body["error"]["code"], code, "{case}: {body}");
    assert_eq!(
        body["error"]["request_id"],
        reply.header("x-request-id").unwrap(),
        "{case}"
    );
    if status == 401 {
        assert!(
            reply
                .header("www-authenticate")
                .is_some_and(|c| c.starts_with("Bearer realm=\"pavilion\"")),
            "{case}: {:?}",
            reply.headers
        );
    }
}

/// A token whose header and payload are written by hand.
fn forged(header: serde_json::Value, payload: &serde_json::Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        B64.encode(header.to_string()),
        B64.encode(payload.to_string()),
        B64.encode(signature)
    )
}

#[tokio::test]
async fn jwt_attack_table_every_case_is_refused_with_the_right_status() {
    let rsa = SigningKey::rsa("rsa-1");
    let ec = SigningKey::ec("ec-1");
    let ed = SigningKey::ed("ed-1");
    let pss = SigningKey::rsa("pss-1").with_alg(Algorithm::PS256);
    let jwks = JwksServer::start(vec![
        rsa.jwk.clone(),
        ec.jwk.clone(),
        ed.jwk.clone(),
        pss.jwk.clone(),
    ])
    .await;
    let upstream = Upstream::start("orders").await.unwrap();
    // The default gap: a kid flood may cause at most one fetch during this test.
    let dp = data_plane(Duration::from_secs(10)).await;
    let mut issuer = provider(ISSUER, &jwks.url());
    issuer.claims_to_headers = vec![proto::ClaimHeader {
        claim: "tenant".into(),
        header: "x-tenant".into(),
    }];
    issuer.required_claims = vec!["tenant".into()];
    let rule = with_auth(
        prefix_rule("/", &[(&upstream.url(), 1)]),
        jwt_auth(vec![issuer]),
    );
    let mut snap = snapshot("v1", vec![route("shop/orders", &[], vec![rule])]);
    snap.revocations = vec![proto::TokenRevocations {
        namespace: "shop".into(),
        jtis: vec!["stolen-1".into()],
    }];
    dp.apply(snap).await.unwrap();

    let good = || {
        let mut c = claims(ISSUER, AUDIENCE, "alice");
        c["tenant"] = json!("acme");
        c
    };
    // Valid tokens of every key type pass, with the subject and mapped claim forwarded
    // and a client-sent copy of the mapped header replaced.
    for key in [&rsa, &ec, &ed, &pss] {
        let reply = get(
            &dp,
            "/orders",
            &[
                ("authorization", &format!("Bearer {}", key.sign(&good()))),
                ("x-tenant", "forged"),
            ],
        )
        .await;
        assert_eq!(reply.status, 200, "{:?}: {}", key.alg, reply.text());
        let headers = &reply.json()["headers"];
        assert_eq!(headers["x-auth-subject"], "alice");
        assert_eq!(headers["x-tenant"], "acme", "{headers}");
    }
    let fetches_before = jwks.fetches();

    let public_pem = rsa.public_pem.as_bytes();
    let mut expired = good();
    expired["exp"] = json!(now() - 3600);
    let mut early = good();
    early["nbf"] = json!(now() + 3600);
    let mut within_leeway = good();
    within_leeway["exp"] = json!(now() - 10);
    let mut foreign = good();
    foreign["iss"] = json!("https://evil.test");
    let mut wrong_audience = good();
    wrong_audience["aud"] = json!("billing-api");
    let mut no_exp = good();
    no_exp.as_object_mut().unwrap().remove("exp");
    let mut no_tenant = good();
    no_tenant.as_object_mut().unwrap().remove("tenant");
    let mut revoked = good();
    revoked["jti"] = json!("stolen-1");
    let mut huge = good();
    huge["padding"] = json!("x".repeat(9000));
    let valid = rsa.sign(&good());
    let mut parts: Vec<&str> = valid.split('.').collect();
    let mut escalated = good();
    escalated["sub"] = json!("root");
    let tampered_payload = B64.encode(escalated.to_string());
    parts[1] = &tampered_payload;
    let tampered = parts.join(".");
    let mut confused_header = Header::new(Algorithm::HS256);
    confused_header.kid = Some("rsa-1".into());
    let confused = jsonwebtoken::encode(
        &confused_header,
        &good(),
        &jsonwebtoken::EncodingKey::from_secret(public_pem),
    )
    .unwrap();
    let unknown = SigningKey::ec("nobody");
    let critical = |names: Vec<String>| {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("rsa-1".into());
        header.crit = Some(names);
        rsa.sign_with(header, &good())
    };
    let mut from_the_future = good();
    from_the_future["iat"] = json!(now() + 3600);
    let mut odd_iat = good();
    odd_iat["iat"] = json!("yesterday");

    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "alg none",
            forged(json!({"alg": "none", "kid": "rsa-1"}), &good(), b""),
            401,
            "invalid_token",
        ),
        (
            "alg None",
            forged(json!({"alg": "None", "typ": "JWT"}), &good(), b""),
            401,
            "invalid_token",
        ),
        (
            "HS256 signed with the RSA public key",
            confused,
            401,
            "invalid_token",
        ),
        ("expired", rsa.sign(&expired), 401, "token_expired"),
        (
            "not yet valid",
            rsa.sign(&early),
            401,
            "token_not_yet_valid",
        ),
        ("wrong issuer", rsa.sign(&foreign), 401, "invalid_token"),
        (
            "wrong audience",
            rsa.sign(&wrong_audience),
            401,
            "invalid_token",
        ),
        ("no exp", rsa.sign(&no_exp), 401, "invalid_token"),
        (
            "required claim missing",
            rsa.sign(&no_tenant),
            401,
            "invalid_token",
        ),
        ("revoked jti", rsa.sign(&revoked), 401, "token_revoked"),
        ("tampered payload", tampered, 401, "invalid_token"),
        ("oversized token", rsa.sign(&huge), 401, "invalid_token"),
        ("not a JWT", "abc".into(), 401, "invalid_token"),
        ("garbage segments", "a.b.c".into(), 401, "invalid_token"),
        ("unknown key", unknown.sign(&good()), 401, "invalid_token"),
        (
            "crit names an unknown extension",
            critical(vec!["exp-ext".into()]),
            401,
            "invalid_token",
        ),
        ("crit empty", critical(Vec::new()), 401, "invalid_token"),
        (
            "issued in the future",
            rsa.sign(&from_the_future),
            401,
            "token_not_yet_valid",
        ),
        ("iat not a number", rsa.sign(&odd_iat), 401, "invalid_token"),
        (
            "kid with path characters",
            {
                let mut header = Header::new(Algorithm::RS256);
                header.kid = Some("../../../etc/passwd?x=/jwks.json#".into());
                rsa.sign_with(header, &good())
            },
            401,
            "invalid_token",
        ),
    ];
    for (case, token, status, code) in &cases {
        let reply = bearer(&dp, "/orders", token).await;
        assert_denied(&reply, *status, code, case);
        if *code != "missing_credentials" {
            assert!(
                reply
                    .header("www-authenticate")
                    .unwrap()
                    .contains(r#"error="invalid_token""#),
                "{case}"
            );
        }
    }
    // Within the leeway an expired token still passes.
    assert_eq!(
        bearer(&dp, "/orders", &rsa.sign(&within_leeway))
            .await
            .status,
        200
    );

    // Wrong schemes and no credentials.
    let reply = get(&dp, "/orders", &[]).await;
    assert_denied(&reply, 401, "missing_credentials", "no credentials");
    assert_eq!(
        reply.header("www-authenticate"),
        Some(r#"Bearer realm="pavilion""#)
    );
    assert!(
        reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("shop/orders"),
        "names the route"
    );
    let reply = get(
        &dp,
        "/orders",
        &[("authorization", "Basic YWxpY2U6c2VjcmV0")],
    )
    .await;
    assert_denied(&reply, 401, "invalid_token", "basic auth");

    // A flood of made-up kids: every request refused, the IdP asked at most once more.
    for i in 0..50 {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(format!("random-{i}-{}", fastrand::u64(..)));
        let reply = bearer(&dp, "/orders", &unknown.sign_with(header, &good())).await;
        assert_denied(&reply, 401, "invalid_token", "kid flood");
    }
    let extra = jwks.fetches() - fetches_before;
    assert!(extra <= 1, "the unknown kids caused {extra} JWKS fetches");

    // Every refusal is counted by reason.
    let metrics = HttpClient::http1()
        .get(&format!("http://{}/metrics", dp.admin_addr))
        .await
        .unwrap()
        .text();
    for reason in [
        "invalid_token",
        "token_expired",
        "token_revoked",
        "missing_credentials",
        "token_not_yet_valid",
    ] {
        let line =
            format!("pavilion_auth_denials_total{{reason=\"{reason}\",route=\"shop/orders\"}}");
        assert!(metrics.contains(&line), "{line} missing from\n{metrics}");
    }
}

#[tokio::test]
async fn jwks_rotation_is_picked_up_and_an_idp_outage_keeps_the_keys_in_hand() {
    let first = SigningKey::rsa("2026-01");
    let jwks = JwksServer::start(vec![first.jwk.clone()]).await;
    let upstream = Upstream::start("orders").await.unwrap();
    let dp = data_plane(Duration::from_millis(200)).await;
    let rule = with_auth(
        prefix_rule("/", &[(&upstream.url(), 1)]),
        jwt_auth(vec![provider(ISSUER, &jwks.url())]),
    );
    dp.apply(snapshot("v1", vec![route("shop/orders", &[], vec![rule])]))
        .await
        .unwrap();
    assert_eq!(
        bearer(&dp, "/", &first.sign(&claims(ISSUER, AUDIENCE, "a")))
            .await
            .status,
        200
    );

    // The IdP rotates to a new key: a token naming it triggers a refetch.
    let second = SigningKey::ec("2026-02");
    jwks.publish(vec![second.jwk.clone()]);
    eventually(
        "the rotated key is fetched",
        Duration::from_secs(10),
        || {
            let token = second.sign(&claims(ISSUER, AUDIENCE, "b"));
            let dp = &dp;
            async move { (bearer(dp, "/", &token).await.status == 200).then_some(()) }
        },
    )
    .await;

    // The IdP goes down: tokens keep validating with the keys in hand, new subjects included.
    jwks.set_up(false);
    let fetches = jwks.fetches();
    let unknown = SigningKey::rsa("2026-03");
    // An unknown kid (once the refetch gap has passed) asks the IdP, which fails; the
    // keys in hand stay.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reply = bearer(&dp, "/", &unknown.sign(&claims(ISSUER, AUDIENCE, "c"))).await;
    assert_denied(
        &reply,
        401,
        "invalid_token",
        "unknown kid during the outage",
    );
    assert!(jwks.fetches() > fetches, "the IdP was asked");
    let reply = bearer(
        &dp,
        "/",
        &second.sign(&claims(ISSUER, AUDIENCE, "someone-new")),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["headers"]["x-auth-subject"], "someone-new");
}

#[tokio::test]
async fn several_issuers_with_static_keys_and_cookies() {
    let dir = tempfile::tempdir().unwrap();
    let secret = b"0123456789abcdef0123456789abcdef-hmac";
    let secret_file = dir.path().join("hmac");
    std::fs::write(&secret_file, [&secret[..], b"\n"].concat()).unwrap();
    let ec = SigningKey::ec("static-ec");
    let upstream = Upstream::start("orders").await.unwrap();
    let dp = data_plane(Duration::from_secs(10)).await;

    let mut tenant_a = provider("https://a.test", "");
    tenant_a.keys = vec![proto::StaticKey {
        source: Some(proto::v1::static_key::Source::SecretFile(
            secret_file.display().to_string(),
        )),
        ..Default::default()
    }];
    tenant_a.cookie = "session".into();
    let mut tenant_b = provider("https://b.test", "");
    tenant_b.keys = vec![proto::StaticKey {
        kid: "static-ec".into(),
        source: Some(proto::v1::static_key::Source::PublicKeyPem(
            ec.public_pem.clone(),
        )),
        ..Default::default()
    }];
    let rule = with_auth(
        prefix_rule("/", &[(&upstream.url(), 1)]),
        jwt_auth(vec![tenant_a, tenant_b]),
    );
    dp.apply(snapshot(
        "v1",
        vec![route("shop/orders", &[], vec![rule.clone()])],
    ))
    .await
    .unwrap();

    let from_a = sign_hmac(
        Algorithm::HS256,
        None,
        secret,
        &claims("https://a.test", AUDIENCE, "a-user"),
    );
    let reply = bearer(&dp, "/", &from_a).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["headers"]["x-auth-subject"], "a-user");
    let reply = bearer(
        &dp,
        "/",
        &ec.sign(&claims("https://b.test", AUDIENCE, "b-user")),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    // Each issuer's keys only: B's key does not vouch for A's tokens.
    let reply = bearer(
        &dp,
        "/",
        &ec.sign(&claims("https://a.test", AUDIENCE, "b-user")),
    )
    .await;
    assert_denied(&reply, 401, "invalid_token", "cross-issuer");
    // HS384 with the HS256 secret: the key decides the algorithm.
    let reply = bearer(
        &dp,
        "/",
        &sign_hmac(
            Algorithm::HS384,
            None,
            secret,
            &claims("https://a.test", AUDIENCE, "x"),
        ),
    )
    .await;
    assert_denied(&reply, 401, "invalid_token", "HS384 on an HS256 key");
    // The cookie of issuer A.
    let reply = get(
        &dp,
        "/",
        &[("cookie", &format!("theme=dark; session={from_a}"))],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());

    // A secret that cannot be read refuses the snapshot, naming the route but not the secret.
    std::fs::remove_file(&secret_file).unwrap();
    let error = dp
        .apply(snapshot("v2", vec![route("shop/orders", &[], vec![rule])]))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("shop/orders") && error.contains("cannot read the secret file"),
        "{error}"
    );
    assert_eq!(dp.version(), "v1");
}

#[tokio::test]
async fn api_keys_with_scopes_expiry_and_access_lists() {
    let upstream = Upstream::start("orders").await.unwrap();
    let dp = data_plane(Duration::from_secs(10)).await;
    let keys_only = proto::Auth {
        api_keys: Some(proto::ApiKeyAuth::default()),
        ..Default::default()
    };
    let mut listed = keys_only.clone();
    listed.allow = Some(proto::Allow {
        key_ids: vec!["public-*".into()],
        ..Default::default()
    });
    let mut snap = snapshot(
        "v1",
        vec![route(
            "shop/orders",
            &[],
            vec![
                with_auth(prefix_rule("/", &[(&upstream.url(), 1)]), keys_only),
                with_auth(prefix_rule("/partners", &[(&upstream.url(), 1)]), listed),
            ],
        )],
    );
    snap.api_keys = vec![
        api_key("shop", "public-web", "pvk_reader", &["read"], 0),
        api_key(
            "shop",
            "internal",
            "pvk_writer",
            &["read", "write"],
            now() + 3600,
        ),
        api_key("shop", "ops", "pvk_ops", &["read", "admin"], 0),
        api_key("shop", "old", "pvk_old", &["read"], now() - 60),
        api_key(
            "billing",
            "elsewhere",
            "pvk_billing",
            &["read", "write", "admin"],
            0,
        ),
    ];
    let first = snap.clone();
    dp.apply(snap).await.unwrap();

    let client = HttpClient::http1();
    let send = |method: &str, path: &str, headers: &[(&str, &str)]| {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", dp.addr));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        client.send(request.body(Full::default()).unwrap())
    };

    let reply = send(
        "GET",
        "/orders",
        &[("x-api-key", "pvk_reader"), ("x-auth-key-id", "forged")],
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let headers = &reply.json()["headers"];
    assert_eq!(
        headers["x-auth-key-id"], "public-web",
        "the id, not a forged one"
    );
    assert!(
        headers.get("x-api-key").is_none(),
        "the key itself never reaches the upstream: {headers}"
    );

    let reply = send("POST", "/orders", &[("x-api-key", "pvk_reader")])
        .await
        .unwrap();
    assert_eq!(reply.status, 403);
    assert_eq!(reply.json()["error"]["code"], "insufficient_scope");
    assert!(
        reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("lacks the scope write"),
        "{}",
        reply.text()
    );

    let reply = send("POST", "/orders", &[("authorization", "Bearer pvk_writer")])
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(
        reply.json()["headers"].get("authorization").is_none(),
        "a key in Authorization is not forwarded"
    );

    let reply = send("GET", "/admin/users", &[("x-api-key", "pvk_writer")])
        .await
        .unwrap();
    assert_eq!(reply.json()["error"]["code"], "insufficient_scope");
    let reply = send("GET", "/admin/users", &[("x-api-key", "pvk_ops")])
        .await
        .unwrap();
    assert_eq!(reply.status, 200);

    let reply = send("GET", "/orders", &[("x-api-key", "pvk_old")])
        .await
        .unwrap();
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json()["error"]["code"], "key_expired");
    assert_eq!(reply.json()["error"]["message"], "API key old has expired");
    assert_eq!(
        reply.header("www-authenticate"),
        Some(r#"ApiKey realm="pavilion", header="X-API-Key""#)
    );
    for (case, key) in [
        ("unknown", "pvk_nope"),
        ("another namespace", "pvk_billing"),
        ("empty", ""),
    ] {
        let reply = send("GET", "/orders", &[("x-api-key", key)]).await.unwrap();
        assert_eq!(reply.status, 401, "{case}");
        assert_eq!(reply.json()["error"]["code"], "invalid_api_key", "{case}");
    }
    let reply = send("GET", "/orders", &[]).await.unwrap();
    assert_eq!(reply.json()["error"]["code"], "missing_credentials");

    // The access list of /partners: `public-*` only.
    assert_eq!(
        send("GET", "/partners/x", &[("x-api-key", "pvk_reader")])
            .await
            .unwrap()
            .status,
        200
    );
    let reply = send("GET", "/partners/x", &[("x-api-key", "pvk_writer")])
        .await
        .unwrap();
    assert_eq!(reply.status, 403);
    assert_eq!(reply.json()["error"]["code"], "forbidden");
    assert!(
        reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("API key internal is not allowed"),
        "{}",
        reply.text()
    );

    // The same route in the next snapshot, with the keys rotated: the data plane takes
    // unchanged routes from the runtime it serves, but never one that holds the old keys.
    let mut rotated = first;
    rotated.version = "v2".into();
    rotated.api_keys = vec![api_key("shop", "public-web", "pvk_rotated", &["read"], 0)];
    dp.apply(rotated).await.unwrap();
    let reply = send("GET", "/orders", &[("x-api-key", "pvk_reader")])
        .await
        .unwrap();
    assert_eq!(reply.status, 401, "the rotated-out key");
    assert_eq!(reply.json()["error"]["code"], "invalid_api_key");
    let reply = send("GET", "/partners/x", &[("x-api-key", "pvk_rotated")])
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "the new key: {}", reply.text());
}

#[tokio::test]
async fn subjects_and_claims_access_lists() {
    let secret = [9u8; 32];
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("k"), secret).unwrap();
    let upstream = Upstream::start("orders").await.unwrap();
    let dp = data_plane(Duration::from_secs(10)).await;
    let mut issuer = provider(ISSUER, "");
    issuer.keys = vec![proto::StaticKey {
        source: Some(proto::v1::static_key::Source::SecretFile(
            dir.path().join("k").display().to_string(),
        )),
        ..Default::default()
    }];
    let mut auth = jwt_auth(vec![issuer]);
    auth.allow = Some(proto::Allow {
        subjects: vec!["user-*".into()],
        claims: vec![proto::ClaimAllow {
            name: "tenant".into(),
            values: vec!["acme".into(), "beta-*".into()],
        }],
        ..Default::default()
    });
    let rule = with_auth(prefix_rule("/", &[(&upstream.url(), 1)]), auth);
    dp.apply(snapshot("v1", vec![route("shop/orders", &[], vec![rule])]))
        .await
        .unwrap();

    let token = |sub: &str, tenant: serde_json::Value| {
        let mut c = claims(ISSUER, AUDIENCE, sub);
        c["tenant"] = tenant;
        sign_hmac(Algorithm::HS256, None, &secret, &c)
    };
    for (sub, tenant, status) in [
        ("user-1", json!("acme"), 200),
        ("user-2", json!("beta-eu"), 200),
        ("user-3", json!(["other", "acme"]), 200),
        ("user-4", json!("gamma"), 403),
        ("admin", json!("acme"), 403),
        ("user-5", json!(null), 403),
    ] {
        let reply = bearer(&dp, "/x", &token(sub, tenant.clone())).await;
        assert_eq!(
            reply.status.as_u16(),
            status,
            "{sub} {tenant}: {}",
            reply.text()
        );
        if status == 403 {
            assert_eq!(reply.json()["error"]["code"], "forbidden");
        }
    }
}

#[tokio::test]
async fn ip_lists_believe_forwarded_for_only_from_trusted_proxies() {
    let upstream = Upstream::start("orders").await.unwrap();
    let mut rule = prefix_rule("/", &[(&upstream.url(), 1)]);
    rule.ip_allow = vec!["203.0.113.0/24".into(), "2001:db8::/32".into()];
    rule.ip_deny = vec!["203.0.113.66/32".into()];
    let snap = snapshot("v1", vec![route("shop/orders", &[], vec![rule])]);

    let mut config = Config::local();
    config.trusted_proxies = Cidrs::parse(&["127.0.0.0/8".into()]).unwrap();
    let behind_proxy = pavilion_data::start(config).await.unwrap();
    behind_proxy.apply(snap.clone()).await.unwrap();
    for (xff, status) in [
        (Some("203.0.113.5"), 200),
        (Some("2001:db8::5"), 200),
        (Some("198.51.100.1, 203.0.113.5"), 200),
        (Some("203.0.113.66"), 403),
        (Some("198.51.100.1"), 403),
        (Some("203.0.113.5, 198.51.100.1"), 403),
        (None, 403),
    ] {
        let headers: Vec<(&str, &str)> = xff.map(|v| ("x-forwarded-for", v)).into_iter().collect();
        let reply = get(&behind_proxy, "/", &headers).await;
        assert_eq!(reply.status.as_u16(), status, "{xff:?}: {}", reply.text());
        if status == 403 {
            assert_eq!(reply.json()["error"]["code"], "ip_denied");
        }
    }
    // The trusted proxy's statements reach the upstream, with the proxy appended.
    let reply = get(
        &behind_proxy,
        "/",
        &[
            ("x-forwarded-for", "203.0.113.5"),
            ("x-forwarded-proto", "https"),
        ],
    )
    .await;
    let headers = &reply.json()["headers"];
    assert_eq!(headers["x-forwarded-for"], "203.0.113.5, 127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "https");
    assert_eq!(
        headers["x-real-ip"], "203.0.113.5",
        "the client the proxy names"
    );
    let reply = get(&behind_proxy, "/", &[("x-forwarded-for", "203.0.113.66")]).await;
    assert!(
        reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("203.0.113.66 is on the route's deny list"),
        "{}",
        reply.text()
    );

    // Without trusted proxies the header is the client's word and is ignored.
    let direct = pavilion_data::start(Config::local()).await.unwrap();
    direct.apply(snap).await.unwrap();
    assert_eq!(
        get(&direct, "/", &[("x-forwarded-for", "203.0.113.5")])
            .await
            .status,
        403
    );

    // An IPv6 client, judged by its own address.
    let mut config = Config::local();
    config.listen = "[::1]:0".parse().unwrap();
    let v6 = pavilion_data::start(config).await.unwrap();
    let mut allow_v6 = prefix_rule("/", &[(&upstream.url(), 1)]);
    allow_v6.ip_allow = vec!["::1/128".into()];
    let mut deny_v6 = prefix_rule("/denied", &[(&upstream.url(), 1)]);
    deny_v6.ip_deny = vec!["::1/128".into()];
    v6.apply(snapshot(
        "v1",
        vec![route("shop/v6", &[], vec![allow_v6, deny_v6])],
    ))
    .await
    .unwrap();
    let url = |path: &str| format!("http://[::1]:{}{path}", v6.addr.port());
    assert_eq!(
        HttpClient::http1().get(&url("/")).await.unwrap().status,
        200
    );
    assert_eq!(
        HttpClient::http1()
            .get(&url("/denied"))
            .await
            .unwrap()
            .status,
        403
    );
}

#[tokio::test]
async fn concurrent_unknown_kids_share_one_fetch_that_brings_the_new_key() {
    let first = SigningKey::ec("old");
    let jwks = JwksServer::start(vec![first.jwk.clone()]).await;
    let upstream = Upstream::start("orders").await.unwrap();
    let gap = Duration::from_millis(500);
    let dp = data_plane(gap).await;
    let rule = with_auth(
        prefix_rule("/", &[(&upstream.url(), 1)]),
        jwt_auth(vec![provider(ISSUER, &jwks.url())]),
    );
    dp.apply(snapshot("v1", vec![route("shop/orders", &[], vec![rule])]))
        .await
        .unwrap();
    assert_eq!(
        bearer(&dp, "/", &first.sign(&claims(ISSUER, AUDIENCE, "a")))
            .await
            .status,
        200
    );

    let second = SigningKey::ec("new");
    jwks.publish(vec![first.jwk.clone(), second.jwk.clone()]);
    tokio::time::sleep(gap + Duration::from_millis(100)).await;
    let before = jwks.fetches();
    let stranger = SigningKey::ec("stranger");
    let mut requests = Vec::new();
    for i in 0..20 {
        let token = if i % 2 == 0 {
            second.sign(&claims(ISSUER, AUDIENCE, &format!("user-{i}")))
        } else {
            let mut header = Header::new(Algorithm::ES256);
            header.kid = Some(format!("made-up-{i}"));
            stranger.sign_with(header, &claims(ISSUER, AUDIENCE, "x"))
        };
        let addr = dp.addr;
        requests.push(tokio::spawn(async move {
            let request = Request::get(format!("http://{addr}/"))
                .header("authorization", format!("Bearer {token}"));
            (
                i,
                HttpClient::http1()
                    .send(request.body(Full::default()).unwrap())
                    .await
                    .unwrap()
                    .status,
            )
        }));
    }
    for request in requests {
        let (i, status) = request.await.unwrap();
        assert_eq!(
            status.as_u16(),
            if i % 2 == 0 { 200 } else { 401 },
            "request {i}"
        );
    }
    assert_eq!(
        jwks.fetches() - before,
        1,
        "one fetch for twenty unknown kids"
    );
}

#[tokio::test]
async fn credentials_cannot_be_doubled_smuggled_forged_or_outlive_revocation() {
    let secret = [7u8; 32];
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("k"), secret).unwrap();
    let upstream = Upstream::start("orders").await.unwrap();
    let mut config = Config::local();
    config.trusted_proxies = Cidrs::parse(&["127.0.0.0/8".into(), "::1/128".into()]).unwrap();
    let dp = pavilion_data::start(config).await.unwrap();
    let mut issuer = provider(ISSUER, "");
    issuer.keys = vec![proto::StaticKey {
        source: Some(proto::v1::static_key::Source::SecretFile(
            dir.path().join("k").display().to_string(),
        )),
        ..Default::default()
    }];
    issuer.claims_to_headers = vec![proto::ClaimHeader {
        claim: "tenant".into(),
        header: "x-tenant".into(),
    }];
    issuer.cookie = "session".into();
    let mixed = proto::Auth {
        jwt: vec![issuer],
        api_keys: Some(proto::ApiKeyAuth::default()),
        ..Default::default()
    };
    let mut guarded = prefix_rule("/guarded", &[(&upstream.url(), 1)]);
    guarded.ip_allow = vec!["203.0.113.0/24".into()];
    let build = |version: &str, revoked: Vec<String>| {
        let mut snap = snapshot(
            version,
            vec![route(
                "shop/orders",
                &[],
                vec![
                    with_auth(prefix_rule("/", &[(&upstream.url(), 1)]), mixed.clone()),
                    prefix_rule("/public", &[(&upstream.url(), 1)]),
                    guarded.clone(),
                ],
            )],
        );
        snap.api_keys = vec![api_key("shop", "reader", "pvk_reader", &["read"], 0)];
        snap.revocations = vec![proto::TokenRevocations {
            namespace: "shop".into(),
            jtis: revoked,
        }];
        snap
    };
    dp.apply(build("v1", vec![])).await.unwrap();
    let mut c = claims(ISSUER, AUDIENCE, "alice");
    c["jti"] = json!("jti-1");
    c["tenant"] = json!("acme");
    let token = sign_hmac(Algorithm::HS256, None, &secret, &c);
    let mut no_aud = claims(ISSUER, AUDIENCE, "alice");
    no_aud.as_object_mut().unwrap().remove("aud");

    // A JWT on a rule that also takes keys: the token is forwarded, a stray key is not.
    let reply = get(
        &dp,
        "/orders",
        &[
            ("authorization", &format!("Bearer {token}")),
            ("x-api-key", "pvk_reader"),
        ],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let headers = &reply.json()["headers"];
    assert!(headers.get("x-api-key").is_none(), "{headers}");
    assert_eq!(headers["authorization"], format!("Bearer {token}"));
    // A token without `aud` where audiences are configured.
    assert_denied(
        &bearer(
            &dp,
            "/orders",
            &sign_hmac(Algorithm::HS256, None, &secret, &no_aud),
        )
        .await,
        401,
        "invalid_token",
        "no aud",
    );
    // Two credentials of one kind.
    let reply = get(
        &dp,
        "/orders",
        &[
            ("authorization", &format!("Bearer {token}")),
            ("authorization", "Bearer forged.token.here"),
        ],
    )
    .await;
    assert_denied(&reply, 401, "invalid_token", "two Authorization headers");
    let reply = get(
        &dp,
        "/orders",
        &[("x-api-key", "pvk_reader"), ("x-api-key", "pvk_other")],
    )
    .await;
    assert_eq!(reply.json()["error"]["code"], "invalid_api_key");
    let reply = get(
        &dp,
        "/orders",
        &[("cookie", &format!("session={token}; session=forged"))],
    )
    .await;
    assert_denied(&reply, 401, "invalid_token", "two session cookies");
    // Ways of writing /admin that lenient upstreams would read as /admin.
    for sneaky in [
        "//admin/users",
        "/%61dmin/users",
        "/admin;x=1/users",
        "/Admin/users",
        "/admin%2Fusers",
    ] {
        let reply = get(&dp, sneaky, &[("x-api-key", "pvk_reader")]).await;
        assert!(
            matches!(reply.status.as_u16(), 400 | 403),
            "{sneaky}: {} {}",
            reply.status,
            reply.text()
        );
        if reply.status == 403 {
            assert_eq!(
                reply.json()["error"]["code"],
                "insufficient_scope",
                "{sneaky}"
            );
        }
    }
    // A claim header is the gateway's to state on public routes too.
    let reply = get(
        &dp,
        "/public",
        &[("x-tenant", "victim"), ("x-auth-subject", "root")],
    )
    .await;
    assert_eq!(reply.status, 200);
    assert!(
        reply.json()["headers"].get("x-tenant").is_none(),
        "{}",
        reply.text()
    );
    assert!(
        reply.json()["headers"].get("x-auth-subject").is_none(),
        "{}",
        reply.text()
    );
    // An odd byte in X-Forwarded-For does not hide the client a trusted proxy appended.
    let request = Request::get(format!("http://{}/guarded", dp.addr))
        .header(
            "x-forwarded-for",
            http::HeaderValue::from_bytes(b"\xff, 203.0.113.9").unwrap(),
        )
        .body(Full::default())
        .unwrap();
    assert_eq!(HttpClient::http1().send(request).await.unwrap().status, 200);
    let request = Request::get(format!("http://{}/guarded", dp.addr))
        .header(
            "x-forwarded-for",
            http::HeaderValue::from_bytes(b"203.0.113.9, \xff").unwrap(),
        )
        .body(Full::default())
        .unwrap();
    assert_eq!(
        HttpClient::http1().send(request).await.unwrap().status,
        403,
        "an unreadable trusted hop hides the client"
    );

    // Revoking a token that workers have already verified and cached.
    for _ in 0..3 {
        assert_eq!(bearer(&dp, "/orders", &token).await.status, 200);
    }
    dp.apply(build("v2", vec!["jti-1".into()])).await.unwrap();
    assert_denied(
        &bearer(&dp, "/orders", &token).await,
        401,
        "token_revoked",
        "revoked after caching",
    );
}
