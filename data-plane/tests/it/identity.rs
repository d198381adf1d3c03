//! The identity API end to end on a running data plane: accounts that never tell whether
//! they exist, sessions whose refresh tokens rotate and betray copies, tokens any route can
//! trust through the published keys — on the embedded store, and on NATS KV shared by two
//! data planes racing each other.

use std::time::Duration;

use bytes::Bytes;
use pavilion_data::identity::{IdentityConfig, StoreSpec};
use pavilion_data::{Config, DataPlane};
use pavilion_proto as proto;
use pavilion_tests::Upstream;
use pavilion_tests::client::{HttpClient, Reply};
use pavilion_tests::nats::NatsServer;
use pavilion_tests::snapshot::{prefix_rule, route, snapshot};
use serde_json::{Value, json};

const ISSUER: &str = "https://id.pavilion.test";

fn key_file(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("identity.key");
    std::fs::write(&path, "ab".repeat(32)).unwrap();
    path
}

async fn data_plane(store: StoreSpec, dir: &std::path::Path, rotation: Duration) -> DataPlane {
    let mut config = Config::local();
    let mut identity = IdentityConfig::new(store, ISSUER, key_file(dir));
    identity.key_rotation = rotation;
    config.identity = Some(identity);
    pavilion_data::start(config)
        .await
        .expect("data plane starts")
}

async fn with_identity(identity: IdentityConfig) -> DataPlane {
    let mut config = Config::local();
    config.identity = Some(identity);
    pavilion_data::start(config)
        .await
        .expect("data plane starts")
}

/// The reset token in a reset mail.
fn token_in(mail: &str) -> String {
    pavilion_tests::reset_token_in(mail)
}

/// Proves `email`'s mailbox through the data plane's outbox (`dir/outbox`).
async fn verify(dp: &DataPlane, dir: &tempfile::TempDir, email: &str, password: &str) {
    let base = format!("http://{}", dp.addr);
    pavilion_tests::verify_by_mail(&base, &dir.path().join("outbox"), email, password).await;
}

/// A data plane on a fresh embedded store whose `root@example.org` is a platform
/// administrator, and root's access token.
async fn with_root() -> (tempfile::TempDir, DataPlane, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut identity = IdentityConfig::new(
        StoreSpec::File(dir.path().join("identity.redb")),
        ISSUER,
        key_file(dir.path()),
    );
    identity.admins = vec!["root@example.org".into()];
    identity.mail = Some(format!("file:{}", dir.path().join("outbox").display()));
    let dp = with_identity(identity).await;
    let root = credentials("root@example.org", "root password");
    post(&dp, "/v1/auth/signup", root).await;
    verify(&dp, &dir, "root@example.org", "root password").await;
    let token = access_token(&dp, "root@example.org", "root password").await;
    (dir, dp, token)
}

/// Signs `email` in with `password`: the access token.
async fn access_token(dp: &DataPlane, email: &str, password: &str) -> String {
    post(dp, "/v1/auth/signin", credentials(email, password))
        .await
        .json()["access_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn post(dp: &DataPlane, path: &str, body: Value) -> Reply {
    post_with(dp, path, body, &[]).await
}

async fn post_with(dp: &DataPlane, path: &str, body: Value, headers: &[(&str, &str)]) -> Reply {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    HttpClient::http1()
        .call(
            "POST",
            &format!("http://{}{path}", dp.addr),
            &all,
            Bytes::from(body.to_string()),
        )
        .await
        .unwrap()
}

async fn get(dp: &DataPlane, path: &str, headers: &[(&str, &str)]) -> Reply {
    HttpClient::http1()
        .get_with(&format!("http://{}{path}", dp.addr), headers)
        .await
        .unwrap()
}

fn credentials(email: &str, password: &str) -> Value {
    json!({ "email": email, "password": password })
}

/// A tenant-scoped rule to `upstream` that trusts the tokens of the gateway at `gateway`
/// (its published keys) and reads their `tenants` claim.
fn gateway_token_rule(prefix: &str, upstream: &str, gateway: std::net::SocketAddr) -> proto::Rule {
    let mut rule = prefix_rule(prefix, &[(upstream, 1)]);
    rule.auth = Some(proto::Auth {
        jwt: vec![proto::JwtProvider {
            issuer: ISSUER.into(),
            jwks_uri: format!("http://{gateway}/.well-known/jwks.json"),
            audiences: vec!["pavilion".into()],
            tenants_claim: "tenants".into(),
            ..Default::default()
        }],
        ..Default::default()
    });
    rule.tenancy = Some(proto::Tenancy { required: true });
    rule
}

/// Placements that make `tenants` known (on no shard: their routes name backends).
fn placements(tenants: &[&str]) -> Option<proto::Placements> {
    Some(proto::Placements {
        revision: "p1".into(),
        shards: Vec::new(),
        tenants: tenants
            .iter()
            .map(|tenant| proto::TenantPlacement {
                tenant: (*tenant).into(),
                aggregate: -1,
                projection: -1,
                runner: -1,
                revision: (*tenant).into(),
            })
            .collect(),
    })
}

/// Asserts a refusal: its status and error code (and, through `code`, its request id).
#[track_caller]
fn assert_refused(reply: &Reply, status: u16, expected: &str) {
    assert_eq!(reply.status.as_u16(), status, "{}", reply.text());
    assert_eq!(code(reply), expected, "{}", reply.text());
}

/// The error code of a refusal, after checking the envelope carries the request id.
fn code(reply: &Reply) -> String {
    let body = reply.json();
    assert_eq!(
        body["error"]["request_id"].as_str(),
        reply.header("x-request-id"),
        "{body}"
    );
    body["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn accounts_sessions_and_tokens_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let dp = data_plane(
        StoreSpec::File(dir.path().join("identity.redb")),
        dir.path(),
        Duration::from_secs(3600),
    )
    .await;

    // Sign-up answers the same whether or not the address is taken.
    let created = post(
        &dp,
        "/v1/auth/signup",
        credentials("Ada@Example.org", "correct horse"),
    )
    .await;
    assert_eq!(created.status.as_u16(), 202, "{}", created.text());
    assert_eq!(created.json(), json!({ "status": "created" }));
    let again = post(
        &dp,
        "/v1/auth/signup",
        credentials("ada@example.org", "other password"),
    )
    .await;
    assert_eq!(
        (again.status.as_u16(), again.json()),
        (202, json!({ "status": "created" }))
    );
    let weak = post(
        &dp,
        "/v1/auth/signup",
        credentials("bob@example.org", "short"),
    )
    .await;
    assert_refused(&weak, 400, "invalid_request");
    let form = HttpClient::http1()
        .call(
            "POST",
            &format!("http://{}/v1/auth/signin", dp.addr),
            &[("content-type", "application/x-www-form-urlencoded")],
            Bytes::from("email=a&password=b"),
        )
        .await
        .unwrap();
    assert_refused(&form, 415, "unsupported_media_type");

    // Sign-in: a wrong password and an unknown address are the same answer.
    let wrong = post(
        &dp,
        "/v1/auth/signin",
        credentials("ada@example.org", "other password"),
    )
    .await;
    let unknown = post(
        &dp,
        "/v1/auth/signin",
        credentials("nobody@example.org", "correct horse"),
    )
    .await;
    assert_refused(&wrong, 401, "invalid_credentials");
    assert_refused(&unknown, 401, "invalid_credentials");
    assert_eq!(
        wrong.json()["error"]["message"],
        unknown.json()["error"]["message"]
    );

    let signed_in = post(
        &dp,
        "/v1/auth/signin",
        credentials("ADA@example.org ", "correct horse"),
    )
    .await;
    assert_eq!(signed_in.status.as_u16(), 200, "{}", signed_in.text());
    assert_eq!(signed_in.header("cache-control"), Some("no-store"));
    let tokens = signed_in.json();
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 300);
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let refresh = tokens["refresh_token"].as_str().unwrap().to_owned();

    // The token is an ES256 JWT a route trusts through the published keys, like any IdP's.
    let discovery = get(&dp, "/.well-known/openid-configuration", &[])
        .await
        .json();
    assert_eq!(discovery["issuer"], ISSUER);
    assert_eq!(
        discovery["jwks_uri"],
        format!("{ISSUER}/.well-known/jwks.json")
    );
    let jwks = get(&dp, "/.well-known/jwks.json", &[]).await.json();
    let header = jsonwebtoken::decode_header(&access).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
    let kid = header.kid.unwrap();
    assert!(
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["kid"] == kid.as_str()),
        "{jwks}"
    );
    assert!(
        !jwks.to_string().contains("\"d\""),
        "no private part is published"
    );
    let upstream = Upstream::start("orders").await.unwrap();
    let mut rule = prefix_rule("/orders", &[(upstream.url().as_str(), 1)]);
    rule.auth = Some(proto::Auth {
        jwt: vec![proto::JwtProvider {
            issuer: ISSUER.into(),
            jwks_uri: format!("http://{}/.well-known/jwks.json", dp.addr),
            audiences: vec!["pavilion".into()],
            leeway_seconds: 30,
            ..Default::default()
        }],
        ..Default::default()
    });
    dp.apply(snapshot("v1", vec![route("shop/orders", &[], vec![rule])]))
        .await
        .unwrap();
    let authorization = format!("Bearer {access}");
    let through = get(
        &dp,
        "/orders/1",
        &[("authorization", authorization.as_str())],
    )
    .await;
    assert_eq!(through.status.as_u16(), 200, "{}", through.text());
    assert_eq!(get(&dp, "/orders/1", &[]).await.status, 401);

    // Refresh rotates; the replaced token is a copy: it revokes the whole family.
    let rotated = post(&dp, "/v1/auth/refresh", json!({ "refresh_token": refresh })).await;
    assert_eq!(rotated.status.as_u16(), 200, "{}", rotated.text());
    let next = rotated.json()["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(next, refresh);
    let reused = post(&dp, "/v1/auth/refresh", json!({ "refresh_token": refresh })).await;
    assert_refused(&reused, 401, "invalid_grant");
    let after_reuse = post(&dp, "/v1/auth/refresh", json!({ "refresh_token": next })).await;
    assert_refused(&after_reuse, 401, "invalid_grant");

    // Sign-out ends a session; sign-out everywhere ends them all.
    let one = post(
        &dp,
        "/v1/auth/signin",
        credentials("ada@example.org", "correct horse"),
    )
    .await
    .json();
    let two = post(
        &dp,
        "/v1/auth/signin",
        credentials("ada@example.org", "correct horse"),
    )
    .await
    .json();
    let out = post(
        &dp,
        "/v1/auth/signout",
        json!({ "refresh_token": one["refresh_token"] }),
    )
    .await;
    assert_eq!(out.status.as_u16(), 204);
    let ended = post(
        &dp,
        "/v1/auth/refresh",
        json!({ "refresh_token": one["refresh_token"] }),
    )
    .await;
    assert_eq!(ended.status.as_u16(), 401);
    let three = post(
        &dp,
        "/v1/auth/signin",
        credentials("ada@example.org", "correct horse"),
    )
    .await
    .json();
    let bearer = format!("Bearer {}", three["access_token"].as_str().unwrap());
    let refused = post(&dp, "/v1/auth/signout", json!({ "all": true })).await;
    assert_refused(&refused, 401, "invalid_token");
    let everywhere = post_with(
        &dp,
        "/v1/auth/signout",
        json!({ "all": true }),
        &[("authorization", bearer.as_str())],
    )
    .await;
    assert_eq!(everywhere.status.as_u16(), 204, "{}", everywhere.text());
    for session in [&two, &three] {
        let refreshed = post(
            &dp,
            "/v1/auth/refresh",
            json!({ "refresh_token": session["refresh_token"] }),
        )
        .await;
        assert_eq!(refreshed.status.as_u16(), 401);
    }
    // A new session after that works.
    let four = post(
        &dp,
        "/v1/auth/signin",
        credentials("ada@example.org", "correct horse"),
    )
    .await
    .json();
    let refreshed = post(
        &dp,
        "/v1/auth/refresh",
        json!({ "refresh_token": four["refresh_token"] }),
    )
    .await;
    assert_eq!(refreshed.status.as_u16(), 200, "{}", refreshed.text());

    // What the store holds: a password hash and token digests, never the secrets.
    drop(dp);
    let raw = std::fs::read(dir.path().join("identity.redb")).unwrap();
    let raw = String::from_utf8_lossy(&raw);
    assert!(raw.contains("$argon2id$"));
    for secret in ["correct horse", four["refresh_token"].as_str().unwrap()] {
        assert!(!raw.contains(secret), "the store holds {secret}");
    }
}

#[tokio::test]
async fn two_replicas_on_nats_race_refreshes_and_share_rotating_keys() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let store = StoreSpec::Nats {
        servers: nats.url(),
        prefix: "race".into(),
    };
    let rotation = Duration::from_secs(3);
    let a = data_plane(store.clone(), dir.path(), rotation).await;
    let b = data_plane(store, dir.path(), rotation).await;

    // An account made on one signs in on the other.
    assert_eq!(
        post(
            &a,
            "/v1/auth/signup",
            credentials("eve@example.org", "long password")
        )
        .await
        .status,
        202
    );
    let tokens = post(
        &b,
        "/v1/auth/signin",
        credentials("eve@example.org", "long password"),
    )
    .await;
    assert_eq!(tokens.status.as_u16(), 200, "{}", tokens.text());

    // The same refresh token at both at once: exactly one succeeds, and the family is
    // revoked — the winner's new token is refused too.
    for round in 0..5 {
        let session = post(
            &a,
            "/v1/auth/signin",
            credentials("eve@example.org", "long password"),
        )
        .await
        .json();
        let token = json!({ "refresh_token": session["refresh_token"] });
        let (from_a, from_b) = tokio::join!(
            post(&a, "/v1/auth/refresh", token.clone()),
            post(&b, "/v1/auth/refresh", token.clone())
        );
        let winners: Vec<&Reply> = [&from_a, &from_b]
            .into_iter()
            .filter(|r| r.status == 200)
            .collect();
        assert_eq!(
            winners.len(),
            1,
            "round {round}: {} and {}",
            from_a.status,
            from_b.status
        );
        let loser = if from_a.status == 200 {
            &from_b
        } else {
            &from_a
        };
        assert_eq!(code(loser), "invalid_grant");
        let next = json!({ "refresh_token": winners[0].json()["refresh_token"] });
        assert_eq!(
            post(&a, "/v1/auth/refresh", next).await.status,
            401,
            "round {round}"
        );
    }

    // Keys rotate; a token signed with either key verifies through either replica's JWKS.
    let first = post(
        &a,
        "/v1/auth/signin",
        credentials("eve@example.org", "long password"),
    )
    .await
    .json();
    let first_kid = jsonwebtoken::decode_header(first["access_token"].as_str().unwrap())
        .unwrap()
        .kid
        .unwrap();
    tokio::time::sleep(rotation + Duration::from_millis(500)).await;
    let second = post(
        &b,
        "/v1/auth/signin",
        credentials("eve@example.org", "long password"),
    )
    .await
    .json();
    let second_kid = jsonwebtoken::decode_header(second["access_token"].as_str().unwrap())
        .unwrap()
        .kid
        .unwrap();
    assert_ne!(first_kid, second_kid, "a new key after the rotation period");
    for dp in [&a, &b] {
        let jwks = get(dp, "/.well-known/jwks.json", &[]).await.json();
        let kids: Vec<&str> = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|k| k["kid"].as_str())
            .collect();
        assert!(
            kids.contains(&first_kid.as_str()) && kids.contains(&second_kid.as_str()),
            "{kids:?}"
        );
    }
    // Each replica accepts the other's tokens (sign-out everywhere checks the bearer).
    let bearer = format!("Bearer {}", first["access_token"].as_str().unwrap());
    let out = post_with(
        &b,
        "/v1/auth/signout",
        json!({ "all": true }),
        &[("authorization", bearer.as_str())],
    )
    .await;
    assert_eq!(out.status.as_u16(), 204, "{}", out.text());
    let refused = post(
        &a,
        "/v1/auth/refresh",
        json!({ "refresh_token": second["refresh_token"] }),
    )
    .await;
    assert_eq!(
        refused.status.as_u16(),
        401,
        "signed out everywhere, whichever replica is asked"
    );
}

#[tokio::test]
async fn a_forgotten_password_is_reset_by_mail_once() {
    let smtp = pavilion_tests::smtp::SmtpServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut identity = IdentityConfig::new(
        StoreSpec::File(dir.path().join("identity.redb")),
        ISSUER,
        key_file(dir.path()),
    );
    identity.mail = Some(smtp.url());
    identity.mail_from = "Gateway <no-reply@pavilion.test>".into();
    let dp = with_identity(identity).await;
    assert_eq!(
        post(
            &dp,
            "/v1/auth/signup",
            credentials("kim@example.org", "first password")
        )
        .await
        .status,
        202
    );
    let before = post(
        &dp,
        "/v1/auth/signin",
        credentials("kim@example.org", "first password"),
    )
    .await
    .json();

    // The same answer for an unknown address — and no mail for it.
    let unknown = post(
        &dp,
        "/v1/auth/forgot",
        json!({ "email": "nobody@example.org" }),
    )
    .await;
    let known = post(
        &dp,
        "/v1/auth/forgot",
        json!({ "email": "Kim@Example.org" }),
    )
    .await;
    assert_eq!(
        (unknown.status.as_u16(), unknown.json()),
        (known.status.as_u16(), known.json())
    );
    assert_eq!(known.status, 202);
    let mail = smtp
        .next(Duration::from_secs(10))
        .expect("the reset mail arrives");
    assert_eq!(mail.to, ["kim@example.org"]);
    assert_eq!(mail.from, "no-reply@pavilion.test");
    assert!(
        mail.data.contains("Subject: Reset your password"),
        "{}",
        mail.data
    );
    assert!(
        smtp.next(Duration::from_millis(500)).is_none(),
        "nothing for the unknown address"
    );
    let token = token_in(&mail.data);

    // Too short a password keeps the token for a proper try.
    let weak = post(
        &dp,
        "/v1/auth/reset",
        json!({ "token": token, "password": "short" }),
    )
    .await;
    assert_refused(&weak, 400, "invalid_request");
    let reset = post(
        &dp,
        "/v1/auth/reset",
        json!({ "token": token, "password": "second password" }),
    )
    .await;
    assert_eq!(reset.status, 204, "{}", reset.text());
    let again = post(
        &dp,
        "/v1/auth/reset",
        json!({ "token": token, "password": "third password" }),
    )
    .await;
    assert_refused(&again, 400, "invalid_token");

    let old = post(
        &dp,
        "/v1/auth/signin",
        credentials("kim@example.org", "first password"),
    )
    .await;
    assert_eq!(old.status, 401);
    let new = post(
        &dp,
        "/v1/auth/signin",
        credentials("kim@example.org", "second password"),
    )
    .await;
    assert_eq!(new.status, 200, "{}", new.text());
    let stale = post(
        &dp,
        "/v1/auth/refresh",
        json!({ "refresh_token": before["refresh_token"] }),
    )
    .await;
    assert_eq!(
        stale.status, 401,
        "a reset ends the sessions started before it"
    );
}

#[tokio::test]
async fn the_development_outbox_keeps_reset_mail_as_files() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = dir.path().join("outbox");
    let mut identity = IdentityConfig::new(
        StoreSpec::File(dir.path().join("identity.redb")),
        ISSUER,
        key_file(dir.path()),
    );
    identity.mail = Some(format!("file:{}", outbox.display()));
    let dp = with_identity(identity).await;
    post(
        &dp,
        "/v1/auth/signup",
        credentials("lee@example.org", "first password"),
    )
    .await;
    assert_eq!(
        post(
            &dp,
            "/v1/auth/forgot",
            json!({ "email": "lee@example.org" })
        )
        .await
        .status,
        202
    );
    let file = pavilion_tests::eventually("the outbox file", Duration::from_secs(10), || {
        let outbox = outbox.clone();
        async move {
            std::fs::read_dir(&outbox)
                .ok()?
                .flatten()
                .next()
                .map(|e| e.path())
        }
    })
    .await;
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let mail = std::fs::read_to_string(&file).unwrap();
    assert!(mail.contains("To: lee@example.org"), "{mail}");
    let token = token_in(&mail);
    let reset = post(
        &dp,
        "/v1/auth/reset",
        json!({ "token": token, "password": "second password" }),
    )
    .await;
    assert_eq!(reset.status, 204, "{}", reset.text());
}

use pavilion_tests::totp_code;

#[tokio::test]
async fn totp_enrolment_challenge_and_recovery_codes() {
    let dir = tempfile::tempdir().unwrap();
    let dp = data_plane(
        StoreSpec::File(dir.path().join("identity.redb")),
        dir.path(),
        Duration::from_secs(3600),
    )
    .await;
    post(
        &dp,
        "/v1/auth/signup",
        credentials("max@example.org", "long password"),
    )
    .await;
    let tokens = post(
        &dp,
        "/v1/auth/signin",
        credentials("max@example.org", "long password"),
    )
    .await
    .json();
    let bearer = format!("Bearer {}", tokens["access_token"].as_str().unwrap());
    let auth = [("authorization", bearer.as_str())];

    // Enrolment: the secret, its otpauth URI and a QR code; only for the signed-in.
    let anonymous = post(&dp, "/v1/auth/mfa/totp/start", json!({})).await;
    assert_refused(&anonymous, 401, "invalid_token");
    let started = post_with(&dp, "/v1/auth/mfa/totp/start", json!({}), &auth).await;
    assert_eq!(started.status, 200, "{}", started.text());
    let enrolment = started.json();
    let secret = enrolment["secret"].as_str().unwrap().to_owned();
    assert!(
        enrolment["otpauth_uri"]
            .as_str()
            .unwrap()
            .starts_with("otpauth://totp/")
    );
    assert!(enrolment["otpauth_uri"].as_str().unwrap().contains(&secret));
    assert!(enrolment["qr_svg"].as_str().unwrap().starts_with("<svg"));

    // Until confirmed, sign-in asks for nothing more.
    let plain = post(
        &dp,
        "/v1/auth/signin",
        credentials("max@example.org", "long password"),
    )
    .await
    .json();
    assert!(plain["access_token"].is_string(), "{plain}");

    let wrong = post_with(
        &dp,
        "/v1/auth/mfa/totp/confirm",
        json!({ "code": "000000" }),
        &auth,
    )
    .await;
    assert_refused(&wrong, 401, "invalid_code");
    let first_code = totp_code(&secret, 0);
    let confirmed = post_with(
        &dp,
        "/v1/auth/mfa/totp/confirm",
        json!({ "code": first_code }),
        &auth,
    )
    .await;
    assert_eq!(confirmed.status, 200, "{}", confirmed.text());
    let recovery: Vec<String> = confirmed.json()["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(recovery.len(), 10);
    let again = post_with(&dp, "/v1/auth/mfa/totp/start", json!({}), &auth).await;
    assert_refused(&again, 409, "conflict");

    // Sign-in now has a second step.
    let challenge = |dp: &DataPlane| {
        let addr = dp.addr;
        async move {
            let reply = HttpClient::http1()
                .call(
                    "POST",
                    &format!("http://{addr}/v1/auth/signin"),
                    &[("content-type", "application/json")],
                    Bytes::from(credentials("max@example.org", "long password").to_string()),
                )
                .await
                .unwrap()
                .json();
            assert_eq!(reply["mfa_required"], true, "{reply}");
            assert!(reply.get("access_token").is_none());
            reply["mfa_token"].as_str().unwrap().to_owned()
        }
    };
    let mfa_token = challenge(&dp).await;
    // The code confirmed at enrolment is spent; the next one works, once.
    let spent = post(
        &dp,
        "/v1/auth/mfa",
        json!({ "mfa_token": mfa_token, "code": first_code }),
    )
    .await;
    assert_refused(&spent, 401, "invalid_code");
    let next_code = totp_code(&secret, 30);
    let passed = post(
        &dp,
        "/v1/auth/mfa",
        json!({ "mfa_token": mfa_token, "code": next_code }),
    )
    .await;
    assert_eq!(passed.status, 200, "{}", passed.text());
    assert!(passed.json()["refresh_token"].is_string());
    let replayed = post(
        &dp,
        "/v1/auth/mfa",
        json!({ "mfa_token": challenge(&dp).await, "code": next_code }),
    )
    .await;
    assert_refused(&replayed, 401, "invalid_code");

    // A recovery code works once, typed loosely.
    let loose = recovery[3].to_uppercase().replace('-', " ");
    let recovered = post(
        &dp,
        "/v1/auth/mfa",
        json!({ "mfa_token": challenge(&dp).await, "code": loose }),
    )
    .await;
    assert_eq!(recovered.status, 200, "{}", recovered.text());
    let reused = post(
        &dp,
        "/v1/auth/mfa",
        json!({ "mfa_token": challenge(&dp).await, "code": recovery[3] }),
    )
    .await;
    assert_refused(&reused, 401, "invalid_code");
    let forged = post(
        &dp,
        "/v1/auth/mfa",
        json!({ "mfa_token": tokens["access_token"], "code": recovery[4] }),
    )
    .await;
    assert_refused(&forged, 401, "invalid_grant");

    // At rest: the TOTP secret is sealed, the recovery codes hashed.
    drop(dp);
    let raw = std::fs::read(dir.path().join("identity.redb")).unwrap();
    let raw = String::from_utf8_lossy(&raw);
    assert!(!raw.contains(&secret));
    for code in &recovery {
        assert!(!raw.contains(code.as_str()));
    }
}

#[tokio::test]
async fn the_audit_trail_records_security_events_and_betrays_tampering() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let spec = StoreSpec::Nats {
        servers: nats.url(),
        prefix: "audit".into(),
    };
    let mut identity = IdentityConfig::new(spec.clone(), ISSUER, key_file(dir.path()));
    identity.admins = vec!["Root@Example.org".into()];
    identity.mail = Some(format!("file:{}", dir.path().join("outbox").display()));
    let dp = with_identity(identity).await;

    post(
        &dp,
        "/v1/auth/signup",
        credentials("root@example.org", "root password"),
    )
    .await;
    post(
        &dp,
        "/v1/auth/signup",
        credentials("joe@example.org", "joe password"),
    )
    .await;
    let failed = post(
        &dp,
        "/v1/auth/signin",
        credentials("joe@example.org", "guessed secret"),
    )
    .await;
    let joe = post(
        &dp,
        "/v1/auth/signin",
        credentials("joe@example.org", "joe password"),
    )
    .await
    .json();
    let refresh = json!({ "refresh_token": joe["refresh_token"] });
    post(&dp, "/v1/auth/refresh", refresh.clone()).await;
    post(&dp, "/v1/auth/refresh", refresh).await; // reused: the family is revoked
    verify(&dp, &dir, "root@example.org", "root password").await;
    let root = post(
        &dp,
        "/v1/auth/signin",
        credentials("root@example.org", "root password"),
    )
    .await
    .json();
    let admin = format!("Bearer {}", root["access_token"].as_str().unwrap());
    let joe_bearer = format!("Bearer {}", joe["access_token"].as_str().unwrap());

    // Only administrators read it.
    let refused = get(
        &dp,
        "/admin/audit",
        &[("authorization", joe_bearer.as_str())],
    )
    .await;
    assert_refused(&refused, 403, "forbidden");
    let page = get(&dp, "/admin/audit", &[("authorization", admin.as_str())]).await;
    assert_eq!(page.status, 200, "{}", page.text());
    let records = page.json()["records"].as_array().unwrap().clone();
    let actions: Vec<&str> = records
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    for expected in [
        "account.created",
        "signin.failed",
        "session.started",
        "session.reuse_detected",
    ] {
        assert!(actions.contains(&expected), "{expected} in {actions:?}");
    }
    let failure = records
        .iter()
        .find(|r| r["action"] == "signin.failed")
        .unwrap();
    assert_eq!(failure["detail"], "wrong password");
    assert_eq!(
        failure["request_id"].as_str(),
        failed.header("x-request-id"),
        "the record names the request"
    );
    for secret in ["joe password", "guessed secret", "root password"] {
        assert!(!page.text().contains(secret), "the trail holds {secret}");
    }

    // Filters and pages.
    let only = get(
        &dp,
        "/admin/audit?action=session.reuse_detected",
        &[("authorization", admin.as_str())],
    )
    .await
    .json();
    assert_eq!(only["records"].as_array().unwrap().len(), 1, "{only}");
    let first = get(
        &dp,
        "/admin/audit?limit=2",
        &[("authorization", admin.as_str())],
    )
    .await
    .json();
    assert_eq!(first["records"].as_array().unwrap().len(), 2);
    let next = first["next"].as_u64().unwrap();
    let second = get(
        &dp,
        &format!("/admin/audit?limit=2&after={next}"),
        &[("authorization", admin.as_str())],
    )
    .await
    .json();
    assert_eq!(second["records"][0]["seq"].as_u64(), Some(next + 1));
    // By actor, and by time (inclusive bounds, Unix milliseconds).
    let audit = |query: String| {
        let admin = admin.clone();
        let addr = dp.addr;
        async move {
            let reply = HttpClient::http1()
                .get_with(
                    &format!("http://{addr}/admin/audit?{query}"),
                    &[("authorization", admin.as_str())],
                )
                .await
                .unwrap();
            assert_eq!(reply.status, 200, "{query}: {}", reply.text());
            reply.json()["records"].as_array().unwrap().clone()
        }
    };
    let actor = records
        .iter()
        .find(|r| r["actor"] != "anonymous" && r["actor"] != "system")
        .unwrap()["actor"]
        .as_str()
        .unwrap()
        .to_owned();
    let by_actor = audit(format!("actor={actor}")).await;
    assert!(!by_actor.is_empty() && by_actor.iter().all(|r| r["actor"] == actor.as_str()));
    assert!(by_actor.len() < records.len());
    let pivot = &records[records.len() / 2];
    let time = pivot["time_ms"].as_i64().unwrap();
    let since = audit(format!("since={time}")).await;
    let until = audit(format!("until={time}")).await;
    assert!(since.iter().all(|r| r["time_ms"].as_i64().unwrap() >= time));
    assert!(until.iter().all(|r| r["time_ms"].as_i64().unwrap() <= time));
    for window in [&since, &until] {
        assert!(window.iter().any(|r| r["seq"] == pivot["seq"]), "inclusive");
    }
    assert!(
        since.len() + until.len() > records.len(),
        "together they cover everything"
    );

    // Verification: whole, then broken by a change, and by a removal, made in the store.
    let verify = |expect_ok: bool| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_pavilion-data"))
            .args([
                "audit",
                "verify",
                "--identity-store",
                &format!("{}?bucket=audit", nats.url()),
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        assert_eq!(
            output.status.success(),
            expect_ok,
            "{text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        text
    };
    assert!(verify(true).contains("whole"));
    let store = pavilion_data::identity::open_store(&spec).await.unwrap();
    use pavilion_data::identity::store::Bucket;
    let key = pavilion_data::identity::audit::key(2);
    let entry = store.get(Bucket::Audit, &key).await.unwrap().unwrap();
    let mut record: Value = serde_json::from_slice(&entry.value).unwrap();
    record["actor"] = json!("someone else");
    store
        .update(
            Bucket::Audit,
            &key,
            record.to_string().into_bytes(),
            entry.revision,
        )
        .await
        .unwrap();
    assert!(verify(false).contains("record 2 was changed"));
    // Put it back as it was, then remove a later one.
    let entry = store.get(Bucket::Audit, &key).await.unwrap().unwrap();
    let mut restored: Value = serde_json::from_slice(&entry.value).unwrap();
    restored["actor"] = records[1]["actor"].clone();
    store
        .update(
            Bucket::Audit,
            &key,
            restored.to_string().into_bytes(),
            entry.revision,
        )
        .await
        .unwrap();
    assert!(verify(true).contains("whole"));
    let gone = pavilion_data::identity::audit::key(4);
    let entry = store.get(Bucket::Audit, &gone).await.unwrap().unwrap();
    store
        .delete(Bucket::Audit, &gone, entry.revision)
        .await
        .unwrap();
    assert!(verify(false).contains("record 4 is missing"));
}

/// The `sub` of a JWT, read without checking it (the test trusts its own gateway).
fn subject(token: &str) -> String {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice::<Value>(&bytes).unwrap()["sub"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn guessing_is_limited_delayed_and_locks_the_account_until_an_admin_unlocks_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut identity = IdentityConfig::new(
        StoreSpec::File(dir.path().join("identity.redb")),
        ISSUER,
        key_file(dir.path()),
    );
    identity.admins = vec!["root@example.org".into()];
    identity.mail = Some(format!("file:{}", dir.path().join("outbox").display()));
    identity.abuse.per_account_per_15_minutes = 20;
    // Not what is tested here (see the next test), and not to be reached first.
    identity.abuse.per_ip_per_minute = 1000;
    identity.abuse.delay = Duration::from_millis(1);
    let dp = with_identity(identity).await;
    post(
        &dp,
        "/v1/auth/signup",
        credentials("root@example.org", "root password"),
    )
    .await;
    post(
        &dp,
        "/v1/auth/signup",
        credentials("vic@example.org", "victim password"),
    )
    .await;
    let victim = post(
        &dp,
        "/v1/auth/signin",
        credentials("vic@example.org", "victim password"),
    )
    .await
    .json();
    let victim_id = subject(victim["access_token"].as_str().unwrap());
    verify(&dp, &dir, "root@example.org", "root password").await;
    let root = post(
        &dp,
        "/v1/auth/signin",
        credentials("root@example.org", "root password"),
    )
    .await
    .json();
    let admin = format!("Bearer {}", root["access_token"].as_str().unwrap());

    // Ten wrong passwords in a row lock the account: the right one is then refused too,
    // with the very answer a wrong one gets.
    for _ in 0..10 {
        let wrong = post(
            &dp,
            "/v1/auth/signin",
            credentials("vic@example.org", "a guess"),
        )
        .await;
        assert_refused(&wrong, 401, "invalid_credentials");
    }
    let locked = post(
        &dp,
        "/v1/auth/signin",
        credentials("vic@example.org", "victim password"),
    )
    .await;
    assert_refused(&locked, 401, "invalid_credentials");

    // Only a platform administrator unlocks.
    let victim_bearer = format!("Bearer {}", victim["access_token"].as_str().unwrap());
    let unlock = format!("/admin/iam/users/{victim_id}/unlock");
    let refused = post_with(
        &dp,
        &unlock,
        json!({}),
        &[("authorization", victim_bearer.as_str())],
    )
    .await;
    assert_refused(&refused, 403, "forbidden");
    let unlocked = post_with(
        &dp,
        &unlock,
        json!({}),
        &[("authorization", admin.as_str())],
    )
    .await;
    assert_eq!(unlocked.status, 204, "{}", unlocked.text());
    let back = post(
        &dp,
        "/v1/auth/signin",
        credentials("vic@example.org", "victim password"),
    )
    .await;
    assert_eq!(back.status, 200, "{}", back.text());

    // Past the per-account limit (20 per 15 minutes here) the answer is 429, for a known
    // address and an unknown one alike.
    for email in ["vic@example.org", "ghost@example.org"] {
        let mut statuses = Vec::new();
        for _ in 0..25 {
            statuses.push(post(&dp, "/v1/auth/signin", credentials(email, "a guess")).await);
        }
        let limited = statuses
            .iter()
            .position(|r| r.status == 429)
            .expect("a 429");
        assert!(
            limited <= 20,
            "{email}: first 429 at attempt {}",
            limited + 1
        );
        let reply = &statuses[limited];
        assert_eq!(code(reply), "too_many_attempts");
        assert!(reply.header("retry-after").is_some());
    }

    // The audit trail tells the story.
    let trail = get(
        &dp,
        &format!("/admin/audit?target={victim_id}&limit=1000"),
        &[("authorization", admin.as_str())],
    )
    .await
    .json();
    let actions: Vec<&str> = trail["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    for expected in ["account.locked", "account.unlocked"] {
        assert!(actions.contains(&expected), "{expected} in {actions:?}");
    }
}

#[tokio::test]
async fn an_administrator_resets_a_lost_second_factor() {
    let dir = tempfile::tempdir().unwrap();
    let mut identity = IdentityConfig::new(
        StoreSpec::File(dir.path().join("identity.redb")),
        ISSUER,
        key_file(dir.path()),
    );
    identity.admins = vec!["root@example.org".into()];
    identity.mail = Some(format!("file:{}", dir.path().join("outbox").display()));
    let dp = with_identity(identity).await;
    post(
        &dp,
        "/v1/auth/signup",
        credentials("root@example.org", "root password"),
    )
    .await;
    post(
        &dp,
        "/v1/auth/signup",
        credentials("pat@example.org", "pat password"),
    )
    .await;
    let pat = post(
        &dp,
        "/v1/auth/signin",
        credentials("pat@example.org", "pat password"),
    )
    .await
    .json();
    let pat_id = subject(pat["access_token"].as_str().unwrap());
    let bearer = format!("Bearer {}", pat["access_token"].as_str().unwrap());
    let enrolment = post_with(
        &dp,
        "/v1/auth/mfa/totp/start",
        json!({}),
        &[("authorization", bearer.as_str())],
    )
    .await
    .json();
    let secret = enrolment["secret"].as_str().unwrap();
    let confirm = json!({ "code": totp_code(secret, 0) });
    assert_eq!(
        post_with(
            &dp,
            "/v1/auth/mfa/totp/confirm",
            confirm,
            &[("authorization", bearer.as_str())]
        )
        .await
        .status,
        200
    );
    let challenge = post(
        &dp,
        "/v1/auth/signin",
        credentials("pat@example.org", "pat password"),
    )
    .await
    .json();
    assert_eq!(challenge["mfa_required"], true);

    verify(&dp, &dir, "root@example.org", "root password").await;
    let root = post(
        &dp,
        "/v1/auth/signin",
        credentials("root@example.org", "root password"),
    )
    .await
    .json();
    let admin = format!("Bearer {}", root["access_token"].as_str().unwrap());
    let reset = |who: String| {
        let addr = dp.addr;
        let pat_id = pat_id.clone();
        async move {
            HttpClient::http1()
                .call(
                    "DELETE",
                    &format!("http://{addr}/admin/iam/users/{pat_id}/mfa"),
                    &[("authorization", who.as_str())],
                    Bytes::new(),
                )
                .await
                .unwrap()
        }
    };
    assert_eq!(reset(bearer.clone()).await.status, 403);
    let done = reset(admin.clone()).await;
    assert_eq!(done.status, 204, "{}", done.text());
    assert_eq!(reset(admin).await.status, 404, "nothing left to reset");
    let plain = post(
        &dp,
        "/v1/auth/signin",
        credentials("pat@example.org", "pat password"),
    )
    .await
    .json();
    assert!(plain["access_token"].is_string(), "{plain}");
}

#[tokio::test]
async fn one_client_address_is_limited_per_operation() {
    let dir = tempfile::tempdir().unwrap();
    let dp = data_plane(
        StoreSpec::File(dir.path().join("identity.redb")),
        dir.path(),
        Duration::from_secs(3600),
    )
    .await;
    // 30 a minute by default: the 31st sign-up from one address is refused.
    let mut statuses = Vec::new();
    for i in 0..33 {
        let account = credentials(&format!("u{i}@example.org"), "long password");
        statuses.push(post(&dp, "/v1/auth/signup", account).await);
    }
    let codes: Vec<u16> = statuses.iter().map(|r| r.status.as_u16()).collect();
    assert_eq!(&codes[..30], &[202; 30], "{codes:?}");
    assert_eq!(&codes[30..], &[429; 3], "{codes:?}");
    assert_eq!(code(&statuses[30]), "too_many_attempts");
    // Another operation has its own count.
    let signin = post(
        &dp,
        "/v1/auth/signin",
        credentials("u1@example.org", "long password"),
    )
    .await;
    assert_eq!(signin.status, 200, "{}", signin.text());
}

async fn call(
    dp: &DataPlane,
    method: &str,
    path: &str,
    bearer: &str,
    body: Option<Value>,
) -> Reply {
    let authorization = format!("Bearer {bearer}");
    let mut headers = vec![("authorization", authorization.as_str())];
    if body.is_some() {
        headers.push(("content-type", "application/json"));
    }
    HttpClient::http1()
        .call(
            method,
            &format!("http://{}{path}", dp.addr),
            &headers,
            Bytes::from(body.map(|b| b.to_string()).unwrap_or_default()),
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn roles_and_assignments_decide_and_reach_routes_through_the_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let mut identity = IdentityConfig::new(
        StoreSpec::File(dir.path().join("identity.redb")),
        ISSUER,
        key_file(dir.path()),
    );
    identity.admins = vec!["root@example.org".into()];
    identity.mail = Some(format!("file:{}", dir.path().join("outbox").display()));
    let dp = with_identity(identity).await;
    for who in ["root", "ann"] {
        let account = credentials(&format!("{who}@example.org"), "long password");
        assert_eq!(post(&dp, "/v1/auth/signup", account).await.status, 202);
    }
    let signin = |who: &'static str| {
        let addr = dp.addr;
        async move {
            HttpClient::http1()
                .call(
                    "POST",
                    &format!("http://{addr}/v1/auth/signin"),
                    &[("content-type", "application/json")],
                    Bytes::from(
                        credentials(&format!("{who}@example.org"), "long password").to_string(),
                    ),
                )
                .await
                .unwrap()
                .json()
        }
    };
    verify(&dp, &dir, "root@example.org", "long password").await;
    let root = signin("root").await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let ann_tokens = signin("ann").await;
    let ann = ann_tokens["access_token"].as_str().unwrap().to_owned();
    let ann_id = subject(&ann);

    // The catalogue: rights, then roles made of them.
    assert_eq!(
        call(
            &dp,
            "PUT",
            "/admin/iam/rights/orders.read",
            &root,
            Some(json!({}))
        )
        .await
        .status,
        204
    );
    let unknown = call(
        &dp,
        "PUT",
        "/admin/iam/roles/clerk",
        &root,
        Some(json!({ "rights": ["orders.write"] })),
    )
    .await;
    assert_refused(&unknown, 400, "invalid_request");
    let role = json!({ "rights": ["orders.read"], "description": "reads orders" });
    assert_eq!(
        call(&dp, "PUT", "/admin/iam/roles/clerk", &root, Some(role))
            .await
            .status,
        204
    );
    let roles = call(&dp, "GET", "/admin/iam/roles", &root, None)
        .await
        .json();
    assert_eq!(
        roles["roles"][0]["rights"],
        json!(["orders.read"]),
        "{roles}"
    );
    assert_eq!(
        call(&dp, "GET", "/admin/iam/roles", &ann, None)
            .await
            .status,
        403
    );

    // An assignment: only administrators make it.
    let assignment = format!("/admin/iam/users/{ann_id}/tenants/acme/roles/clerk");
    assert_eq!(call(&dp, "PUT", &assignment, &ann, None).await.status, 403);
    assert_eq!(call(&dp, "PUT", &assignment, &root, None).await.status, 204);

    // Decisions, with their reasons.
    let decide = |action: &str, tenant: &str, attributes: Value| json!({ "user": ann_id, "tenant": tenant, "action": action, "attributes": attributes });
    let cases = [
        (
            decide("orders.read", "acme", json!({})),
            true,
            "role clerk grants orders.read",
        ),
        (
            decide("orders.write", "acme", json!({})),
            false,
            "grants orders.write",
        ),
        (
            decide("orders.read", "globex", json!({})),
            false,
            "not a member of tenant globex",
        ),
        (
            decide("orders.read", "acme", json!({ "tenant": "globex" })),
            false,
            "belongs to tenant globex",
        ),
    ];
    for (ask, allow, reason) in cases {
        let decision = call(&dp, "POST", "/admin/iam/decide", &root, Some(ask))
            .await
            .json();
        assert_eq!(decision["allow"], allow, "{decision}");
        assert!(
            decision["reason"].as_str().unwrap().contains(reason),
            "{decision}"
        );
    }

    // The assignment reaches a tenant-scoped route through the next token.
    let upstream = pavilion_tests::Upstream::start("orders").await.unwrap();
    let rule = gateway_token_rule("/orders", &upstream.url(), dp.addr);
    let mut with_tenants = snapshot("v1", vec![route("shop/orders", &[], vec![rule])]);
    with_tenants.placements = placements(&["acme", "globex"]);
    dp.apply(with_tenants).await.unwrap();
    let order = |token: String, tenant: &'static str| {
        let addr = dp.addr;
        async move {
            let authorization = format!("Bearer {token}");
            HttpClient::http1()
                .get_with(
                    &format!("http://{addr}/orders/1"),
                    &[
                        ("authorization", authorization.as_str()),
                        ("x-tenant-id", tenant),
                    ],
                )
                .await
                .unwrap()
        }
    };
    let before = order(ann.clone(), "acme").await;
    assert_eq!(
        before.status,
        403,
        "the first token predates the assignment: {}",
        before.text()
    );
    let refreshed = post(
        &dp,
        "/v1/auth/refresh",
        json!({ "refresh_token": ann_tokens["refresh_token"] }),
    )
    .await
    .json();
    let with_role = refreshed["access_token"].as_str().unwrap().to_owned();
    assert_eq!(order(with_role.clone(), "acme").await.status, 200);
    assert_eq!(order(with_role.clone(), "globex").await.status, 403);

    // Removed: the next refresh no longer grants it.
    assert_eq!(
        call(&dp, "DELETE", &assignment, &root, None).await.status,
        204
    );
    let refreshed = post(
        &dp,
        "/v1/auth/refresh",
        json!({ "refresh_token": refreshed["refresh_token"] }),
    )
    .await
    .json();
    let without = refreshed["access_token"].as_str().unwrap().to_owned();
    let denied = order(without, "acme").await;
    assert_eq!(denied.status, 403, "{}", denied.text());
    assert_eq!(denied.json()["error"]["code"], "tenant_forbidden");

    // A tenant's administrator manages that tenant's assignments, and only that tenant's.
    let admin_role = format!("/admin/iam/users/{ann_id}/tenants/acme/roles/tenant-admin");
    assert_eq!(call(&dp, "PUT", &admin_role, &root, None).await.status, 204);
    let ann_admin = signin("ann").await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        call(&dp, "PUT", &assignment, &ann_admin, None).await.status,
        204
    );
    let elsewhere = format!("/admin/iam/users/{ann_id}/tenants/globex/roles/clerk");
    assert_eq!(
        call(&dp, "PUT", &elsewhere, &ann_admin, None).await.status,
        403
    );
    // ... and reads that tenant's members, seeing only its assignments: not the members'
    // other tenants, not anyone outside it, not the whole list.
    assert_eq!(call(&dp, "PUT", &elsewhere, &root, None).await.status, 204);
    let members = call(&dp, "GET", "/admin/iam/users?tenant=acme", &ann_admin, None).await;
    assert_eq!(members.status, 200, "{}", members.text());
    let members = members.json();
    let listed: Vec<&str> = members["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["email"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["ann@example.org"], "{members}");
    assert_eq!(
        members["users"][0]["tenants"],
        json!({ "acme": ["clerk", "tenant-admin"] }),
        "globex is not acme's administrator's business"
    );
    let root_id = subject(&root);
    for (path, why) in [
        ("/admin/iam/users".to_owned(), "everyone"),
        (
            "/admin/iam/users?tenant=globex".to_owned(),
            "another tenant",
        ),
        (format!("/admin/iam/users/{root_id}"), "a user outside acme"),
    ] {
        let refused = call(&dp, "GET", &path, &ann_admin, None).await;
        assert_refused(&refused, 403, "forbidden");
        assert!(refused.text().contains("administrator"), "{why}");
    }
    let own = call(
        &dp,
        "GET",
        &format!("/admin/iam/users/{ann_id}"),
        &ann_admin,
        None,
    )
    .await
    .json();
    assert_eq!(own["tenants"], json!({ "acme": ["clerk", "tenant-admin"] }));
    let everything = call(&dp, "GET", "/admin/iam/users?tenant=acme", &root, None)
        .await
        .json();
    assert_eq!(
        everything["users"][0]["tenants"],
        json!({ "acme": ["clerk", "tenant-admin"], "globex": ["clerk"] }),
        "a platform administrator sees every tenant"
    );
    assert_eq!(
        call(&dp, "DELETE", &elsewhere, &root, None).await.status,
        204
    );

    // Users: listed in pages, disabled, enabled, deleted (the address is free again).
    let page = call(&dp, "GET", "/admin/iam/users?limit=1", &root, None)
        .await
        .json();
    assert_eq!(page["users"].as_array().unwrap().len(), 1);
    let next = page["next"].as_str().unwrap();
    let rest = call(
        &dp,
        "GET",
        &format!("/admin/iam/users?after={next}"),
        &root,
        None,
    )
    .await
    .json();
    assert_eq!(rest["users"].as_array().unwrap().len(), 1);
    let shown = call(
        &dp,
        "GET",
        &format!("/admin/iam/users/{ann_id}"),
        &root,
        None,
    )
    .await;
    assert!(
        !shown.text().contains("argon2"),
        "no password hash is shown"
    );
    assert_eq!(
        shown.json()["tenants"]["acme"],
        json!(["clerk", "tenant-admin"])
    );
    assert_eq!(
        call(
            &dp,
            "POST",
            &format!("/admin/iam/users/{ann_id}/disable"),
            &root,
            None
        )
        .await
        .status,
        204
    );
    assert_eq!(
        post(
            &dp,
            "/v1/auth/signin",
            credentials("ann@example.org", "long password")
        )
        .await
        .status,
        401
    );
    assert_eq!(
        call(
            &dp,
            "POST",
            &format!("/admin/iam/users/{ann_id}/enable"),
            &root,
            None
        )
        .await
        .status,
        204
    );
    assert_eq!(
        post(
            &dp,
            "/v1/auth/signin",
            credentials("ann@example.org", "long password")
        )
        .await
        .status,
        200
    );
    assert_eq!(
        call(
            &dp,
            "DELETE",
            &format!("/admin/iam/users/{ann_id}"),
            &root,
            None
        )
        .await
        .status,
        204
    );
    assert_eq!(
        post(
            &dp,
            "/v1/auth/signin",
            credentials("ann@example.org", "long password")
        )
        .await
        .status,
        401
    );
    assert_eq!(
        post(
            &dp,
            "/v1/auth/signup",
            credentials("ann@example.org", "new password")
        )
        .await
        .status,
        202
    );
    assert_eq!(
        post(
            &dp,
            "/v1/auth/signin",
            credentials("ann@example.org", "new password")
        )
        .await
        .status,
        200
    );
}

#[tokio::test]
async fn the_openapi_document_is_valid_and_matches_the_router() {
    let (_dir, dp, root) = with_root().await;
    let admin = root;

    let served = get(&dp, "/v1/auth/openapi.json", &[]).await;
    assert_eq!(served.status, 200);
    let document = served.json();
    assert_eq!(document["openapi"], "3.1.0");

    // Valid OpenAPI 3.1, by a validator nobody here wrote.
    let mut validator = std::process::Command::new("python3")
        .args([
            "-c",
            "import json, sys; from openapi_spec_validator import validate; validate(json.load(sys.stdin)); print('valid')",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 (with openapi-spec-validator, installed by scripts/test)");
    use std::io::Write;
    validator
        .stdin
        .take()
        .unwrap()
        .write_all(served.text().as_bytes())
        .unwrap();
    let output = validator.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    // Every IAM operation the router matches is documented: read from the router's own
    // match arms (`(&Method::PUT | &Method::DELETE, ["users", id, …])`), so an endpoint
    // added without its document fails here.
    let router = include_str!("../../src/identity/api.rs");
    let arm = regex::Regex::new(r#"\(\s*((?:&Method::\w+\s*\|?\s*)+),\s*\[([^\]]*)\],?\s*\)\s*=>"#)
        .unwrap();
    let mut routed = Vec::new();
    for found in arm.captures_iter(router) {
        let methods: Vec<String> = found[1]
            .split('|')
            .map(|m| m.trim().trim_start_matches("&Method::").to_lowercase())
            .collect();
        let mut paths = vec![String::from("/admin/iam")];
        for segment in found[2].split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let segment = segment.rsplit('@').next().unwrap_or(segment).trim();
            let choices: Vec<String> = if segment.contains('"') {
                segment
                    .trim_matches(|c| c == '(' || c == ')')
                    .split('|')
                    .map(|c| c.trim().trim_matches('"').to_owned())
                    .collect()
            } else {
                vec![format!("{{{segment}}}")]
            };
            paths = paths
                .iter()
                .flat_map(|p| choices.iter().map(move |c| format!("{p}/{c}")))
                .collect();
        }
        for path in paths {
            for method in &methods {
                routed.push((method.clone(), path.clone()));
            }
        }
    }
    assert!(routed.len() >= 30, "{routed:?}");
    for (method, path) in &routed {
        assert!(
            document["paths"][path.as_str()]
                .get(method.as_str())
                .is_some(),
            "{} {path} is routed but not in the OpenAPI document",
            method.to_uppercase()
        );
    }

    // Every documented operation is served; no other method on a documented path is.
    let unrouted = |reply: &Reply| {
        reply.status == 405
            || (reply.status == 404
                && reply.json()["error"]["message"].as_str().is_some_and(|m| {
                    m.starts_with("no identity endpoint") || m.starts_with("no IAM endpoint")
                }))
    };
    let paths = document["paths"].as_object().unwrap();
    assert!(paths.len() >= 25);
    for (path, item) in paths {
        let concrete = path
            .replace("{id}", "nobody")
            .replace("{name}", "x")
            .replace("{tenant}", "acme")
            .replace("{role}", "clerk");
        for method in ["get", "post", "put", "patch", "delete"] {
            let documented = item.get(method).is_some();
            let body = matches!(method, "post" | "put" | "patch").then(|| json!({}));
            let reply = call(&dp, &method.to_uppercase(), &concrete, &admin, body).await;
            assert_eq!(
                !unrouted(&reply),
                documented,
                "{} {path}: {} {}",
                method.to_uppercase(),
                reply.status,
                reply.text()
            );
        }
    }
}

#[tokio::test]
async fn signing_in_through_a_real_openid_provider_links_only_what_may_be_linked() {
    use pavilion_tests::oidc::{CLIENT_ID, CLIENT_SECRET, OidcProvider, sign_in_through};
    let port = pavilion_tests::free_port();
    let gateway = format!("http://127.0.0.1:{port}");
    let callback = format!("{gateway}/v1/auth/oidc/corp/callback");
    let provider = OidcProvider::start(&callback, true);
    let dir = tempfile::tempdir().unwrap();
    let mut identity = IdentityConfig::new(
        StoreSpec::File(dir.path().join("identity.redb")),
        &gateway,
        key_file(dir.path()),
    );
    identity.admins = vec!["bob@example.org".into()];
    identity.mail = Some(format!("file:{}", dir.path().join("outbox").display()));
    identity.oidc = vec![pavilion_data::identity::oidc::OidcProvider {
        name: "corp".into(),
        issuer: provider.issuer.clone(),
        client_id: CLIENT_ID.into(),
        client_secret: CLIENT_SECRET.into(),
    }];
    let mut config = Config::local();
    config.listen = ([127, 0, 0, 1], port).into();
    config.identity = Some(identity);
    let dp = pavilion_data::start(config)
        .await
        .expect("data plane starts");

    // A login: PKCE, state and nonce in the URL; the browser part; the callback.
    // `bearer`: started (to link) and finished by a signed-in user; `to_callback`: whether
    // the callback carries the bearer too (a link finished by someone else must fail).
    let login_as = |who: &'static str, bearer: Option<String>, to_callback: bool| {
        let (addr, callback) = (dp.addr, callback.clone());
        async move {
            let mut headers = vec![("content-type", "application/json")];
            let authorization = bearer.map(|b| format!("Bearer {b}"));
            if let Some(value) = &authorization {
                headers.push(("authorization", value.as_str()));
            }
            let started = HttpClient::http1()
                .call(
                    "POST",
                    &format!("http://{addr}/v1/auth/oidc/corp/start"),
                    &headers,
                    Bytes::from("{}"),
                )
                .await
                .unwrap();
            assert_eq!(started.status, 200, "{}", started.text());
            let url = started.json()["authorization_url"]
                .as_str()
                .unwrap()
                .to_owned();
            for part in [
                "code_challenge=",
                "code_challenge_method=S256",
                "state=",
                "nonce=",
                "scope=openid+email",
            ] {
                assert!(url.contains(part), "{part} in {url}");
            }
            let back = sign_in_through(&url, who, &callback).await;
            let path = back.trim_start_matches(&format!("http://{addr}"));
            let callback_headers: Vec<(&str, &str)> = match (&authorization, to_callback) {
                (Some(value), true) => vec![("authorization", value.as_str())],
                _ => Vec::new(),
            };
            let reply = HttpClient::http1()
                .get_with(&format!("http://{addr}{path}"), &callback_headers)
                .await
                .unwrap();
            (path.to_owned(), reply)
        }
    };
    let login = |who: &'static str, bearer: Option<String>| login_as(who, bearer, true);
    let (callback_path, first) = login("alice", None).await;
    assert_eq!(first.status, 200, "{}", first.text());
    let alice = subject(first.json()["access_token"].as_str().unwrap());
    let replayed = get(&dp, &callback_path, &[]).await;
    assert_refused(&replayed, 401, "invalid_grant");
    let (_, again) = login("alice", None).await;
    assert_eq!(
        subject(again.json()["access_token"].as_str().unwrap()),
        alice,
        "the same account"
    );

    // An address with a password account whose owner never proved it: no linking by address.
    post(
        &dp,
        "/v1/auth/signup",
        credentials("bob@example.org", "bob password"),
    )
    .await;
    let (_, refused) = login("bob", None).await;
    assert_eq!(
        (refused.status.as_u16(), code(&refused)),
        (409, "conflict".into()),
        "{}",
        refused.text()
    );
    // Bob links it himself, signed in.
    let bob = post(
        &dp,
        "/v1/auth/signin",
        credentials("bob@example.org", "bob password"),
    )
    .await
    .json();
    let bob_token = bob["access_token"].as_str().unwrap().to_owned();
    // A link URL finished by someone else (the victim of a link CSRF) links nothing.
    let (_, forged) = login_as("bob", Some(bob_token.clone()), false).await;
    assert_refused(&forged, 403, "forbidden");
    let (_, linked) = login("bob", Some(bob_token.clone())).await;
    assert_eq!(linked.status, 200, "{}", linked.text());
    assert_eq!(
        subject(linked.json()["access_token"].as_str().unwrap()),
        subject(&bob_token)
    );
    let (_, as_bob) = login("bob", None).await;
    assert_eq!(
        subject(as_bob.json()["access_token"].as_str().unwrap()),
        subject(&bob_token)
    );

    // Unlinking: fine with a password left; refused when it is the only way in.
    let unlink = |token: String| {
        let addr = dp.addr;
        async move {
            let authorization = format!("Bearer {token}");
            HttpClient::http1()
                .call(
                    "DELETE",
                    &format!("http://{addr}/v1/auth/identities/corp"),
                    &[("authorization", authorization.as_str())],
                    Bytes::new(),
                )
                .await
                .unwrap()
        }
    };
    verify(&dp, &dir, "bob@example.org", "bob password").await;
    let bob_admin = access_token(&dp, "bob@example.org", "bob password").await;
    let listed = call(
        &dp,
        "GET",
        &format!("/admin/iam/users/{}/identities", subject(&bob_token)),
        &bob_admin,
        None,
    )
    .await
    .json();
    assert_eq!(listed["identities"][0]["provider"], "corp", "{listed}");
    assert_eq!(listed["identities"][0]["subject"], "bob");
    assert_eq!(unlink(bob_token.clone()).await.status, 204);
    let only_way = unlink(first.json()["access_token"].as_str().unwrap().to_owned()).await;
    assert_refused(&only_way, 409, "conflict");

    // The administrator's side of credentials: an identity that is the only way in stays,
    // and so does a password without a linked identity; a password beside one goes.
    let admin_unlink = format!("/admin/iam/users/{alice}/identities/corp");
    let refused = call(&dp, "DELETE", &admin_unlink, &bob_admin, None).await;
    assert_refused(&refused, 409, "conflict");
    post(
        &dp,
        "/v1/auth/signup",
        credentials("carl@example.org", "carl password"),
    )
    .await;
    let carl = access_token(&dp, "carl@example.org", "carl password").await;
    let carl_password = format!("/admin/iam/users/{}/password", subject(&carl));
    let refused = call(&dp, "DELETE", &carl_password, &bob_admin, None).await;
    assert_refused(&refused, 409, "conflict");
    let (_, relinked) = login("bob", Some(bob_admin.clone())).await;
    assert_eq!(relinked.status, 200, "{}", relinked.text());
    let bob_password = format!("/admin/iam/users/{}/password", subject(&bob_token));
    assert_eq!(
        call(&dp, "DELETE", &bob_password, &bob_admin, None)
            .await
            .status,
        204
    );
    let by_password = post(
        &dp,
        "/v1/auth/signin",
        credentials("bob@example.org", "bob password"),
    )
    .await;
    assert_refused(&by_password, 401, "invalid_credentials");
    let (_, by_provider) = login("bob", None).await;
    assert_eq!(by_provider.status, 200, "{}", by_provider.text());
    let bob_again = by_provider.json()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let bob_unlink = format!("/admin/iam/users/{}/identities/corp", subject(&bob_token));
    let refused = call(&dp, "DELETE", &bob_unlink, &bob_again, None).await;
    assert_refused(&refused, 409, "conflict");

    // Both sides proved the address — the provider says verified, and the owner proved it
    // by mail: the first login through the provider is the existing account.
    post(
        &dp,
        "/v1/auth/signup",
        credentials("dora@example.org", "dora password"),
    )
    .await;
    verify(&dp, &dir, "dora@example.org", "dora password").await;
    let dora = access_token(&dp, "dora@example.org", "dora password").await;
    let (_, linked) = login("dora", None).await;
    assert_eq!(linked.status, 200, "{}", linked.text());
    assert_eq!(
        subject(linked.json()["access_token"].as_str().unwrap()),
        subject(&dora),
        "linked by the proven address"
    );
}

#[tokio::test]
async fn rules_requiring_rights_follow_the_role_catalogue_without_new_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let mut identity = IdentityConfig::new(
        StoreSpec::File(dir.path().join("identity.redb")),
        ISSUER,
        key_file(dir.path()),
    );
    identity.admins = vec!["root@example.org".into()];
    identity.mail = Some(format!("file:{}", dir.path().join("outbox").display()));
    let dp = with_identity(identity).await;
    for who in ["root", "ann"] {
        post(
            &dp,
            "/v1/auth/signup",
            credentials(&format!("{who}@example.org"), "long password"),
        )
        .await;
    }
    verify(&dp, &dir, "root@example.org", "long password").await;
    let root = access_token(&dp, "root@example.org", "long password").await;
    let ann_id = {
        let token = post(
            &dp,
            "/v1/auth/signin",
            credentials("ann@example.org", "long password"),
        )
        .await
        .json();
        subject(token["access_token"].as_str().unwrap())
    };
    for right in ["orders.read", "orders.write"] {
        assert_eq!(
            call(
                &dp,
                "PUT",
                &format!("/admin/iam/rights/{right}"),
                &root,
                Some(json!({}))
            )
            .await
            .status,
            204
        );
    }
    let reader = json!({ "rights": ["orders.read"] });
    assert_eq!(
        call(&dp, "PUT", "/admin/iam/roles/clerk", &root, Some(reader))
            .await
            .status,
        204
    );
    let assign = format!("/admin/iam/users/{ann_id}/tenants/acme/roles/clerk");
    assert_eq!(call(&dp, "PUT", &assign, &root, None).await.status, 204);
    let ann = access_token(&dp, "ann@example.org", "long password").await;

    let upstream = pavilion_tests::Upstream::start("orders").await.unwrap();
    let rule_for = |prefix: &str, right: &str| {
        let mut rule = gateway_token_rule(prefix, &upstream.url(), dp.addr);
        rule.rights = vec![right.into()];
        rule
    };
    let mut config = snapshot(
        "v1",
        vec![route(
            "shop/orders",
            &[],
            vec![
                rule_for("/read", "orders.read"),
                rule_for("/write", "orders.write"),
            ],
        )],
    );
    config.placements = placements(&["acme"]);
    dp.apply(config).await.unwrap();
    let ask = |path: &'static str, token: String| {
        let addr = dp.addr;
        async move {
            let authorization = format!("Bearer {token}");
            HttpClient::http1()
                .get_with(
                    &format!("http://{addr}{path}"),
                    &[
                        ("authorization", authorization.as_str()),
                        ("x-tenant-id", "acme"),
                    ],
                )
                .await
                .unwrap()
        }
    };
    assert_eq!(ask("/read", ann.clone()).await.status, 200);
    let refused = ask("/write", ann.clone()).await;
    assert_eq!(refused.status, 403);
    let error = &refused.json()["error"];
    assert_eq!(error["code"], "missing_rights");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("(clerk)") && message.contains("orders.write"),
        "{message}"
    );
    assert_eq!(
        ask("/write", root.clone()).await.status,
        200,
        "a platform admin passes"
    );

    // The role grows: the same token now passes — rights are read from the catalogue.
    let writer = json!({ "rights": ["orders.read", "orders.write"] });
    assert_eq!(
        call(&dp, "PUT", "/admin/iam/roles/clerk", &root, Some(writer))
            .await
            .status,
        204
    );
    assert_eq!(ask("/write", ann.clone()).await.status, 200);
}

#[tokio::test]
async fn an_administrators_change_on_one_replica_is_enforced_on_the_other() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let replica = || {
        let mut identity = IdentityConfig::new(
            StoreSpec::Nats {
                servers: nats.url(),
                prefix: "admin".into(),
            },
            ISSUER,
            key_file(dir.path()),
        );
        identity.admins = vec!["root@example.org".into()];
        identity.mail = Some(format!("file:{}", dir.path().join("outbox").display()));
        with_identity(identity)
    };
    let a = replica().await;
    let b = replica().await;
    for who in ["root", "kay"] {
        post(
            &a,
            "/v1/auth/signup",
            credentials(&format!("{who}@example.org"), "long password"),
        )
        .await;
    }
    verify(&a, &dir, "root@example.org", "long password").await;
    let root = access_token(&a, "root@example.org", "long password").await;
    let kay = post(
        &b,
        "/v1/auth/signin",
        credentials("kay@example.org", "long password"),
    )
    .await
    .json();
    let kay_id = subject(kay["access_token"].as_str().unwrap());

    // A role and an assignment made through A are in the token B issues at refresh.
    call(
        &a,
        "PUT",
        "/admin/iam/rights/orders.read",
        &root,
        Some(json!({})),
    )
    .await;
    call(
        &a,
        "PUT",
        "/admin/iam/roles/clerk",
        &root,
        Some(json!({ "rights": ["orders.read"] })),
    )
    .await;
    let assign = format!("/admin/iam/users/{kay_id}/tenants/acme/roles/clerk");
    assert_eq!(call(&a, "PUT", &assign, &root, None).await.status, 204);
    let refreshed = post(
        &b,
        "/v1/auth/refresh",
        json!({ "refresh_token": kay["refresh_token"] }),
    )
    .await;
    assert_eq!(refreshed.status, 200, "{}", refreshed.text());
    let token = refreshed.json();
    let claims = token["access_token"]
        .as_str()
        .unwrap()
        .split('.')
        .nth(1)
        .unwrap()
        .to_owned();
    let claims: Value = {
        use base64::Engine;
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(claims)
                .unwrap(),
        )
        .unwrap()
    };
    assert_eq!(claims["tenants"], json!({ "acme": ["clerk"] }));
    // B decides with A's catalogue.
    let decision = call(
        &b,
        "POST",
        "/admin/iam/decide",
        &root,
        Some(json!({ "user": kay_id, "tenant": "acme", "action": "orders.read" })),
    )
    .await
    .json();
    assert_eq!(decision["allow"], true, "{decision}");

    // B's edge follows A's administration within the stated bounds: a role's new rights
    // (the role catalogue every replica reloads) and an API key's issue and revocation.
    let upstream = pavilion_tests::Upstream::start("orders").await.unwrap();
    let mut write = gateway_token_rule("/write", &upstream.url(), b.addr);
    write.rights = vec!["orders.write".into()];
    let mut keyed = prefix_rule("/keyed", &[(upstream.url().as_str(), 1)]);
    keyed.auth = Some(proto::Auth {
        api_keys: Some(proto::ApiKeyAuth::default()),
        ..Default::default()
    });
    let mut config = snapshot("v1", vec![route("shop/orders", &[], vec![write, keyed])]);
    config.placements = placements(&["acme"]);
    b.apply(config).await.unwrap();
    let on_b = |path: &'static str, header: (&'static str, String)| {
        let addr = b.addr;
        async move {
            HttpClient::http1()
                .get_with(
                    &format!("http://{addr}{path}"),
                    &[(header.0, header.1.as_str()), ("x-tenant-id", "acme")],
                )
                .await
                .unwrap()
                .status
                .as_u16()
        }
    };
    let kay_bearer = (
        "authorization",
        format!("Bearer {}", token["access_token"].as_str().unwrap()),
    );
    assert_eq!(on_b("/write", kay_bearer.clone()).await, 403);
    let right = call(
        &a,
        "PUT",
        "/admin/iam/rights/orders.write",
        &root,
        Some(json!({})),
    )
    .await;
    assert_eq!(right.status, 204);
    let writer = json!({ "rights": ["orders.read", "orders.write"] });
    assert_eq!(
        call(&a, "PUT", "/admin/iam/roles/clerk", &root, Some(writer))
            .await
            .status,
        204
    );
    // Through the store's change feed: well before the periodic reload (10 s).
    let bound = Duration::from_secs(2);
    assert!(bound < pavilion_data::identity::catalogue::REFRESH);
    pavilion_tests::eventually("B grants the role's new right", bound, || {
        let kay_bearer = kay_bearer.clone();
        async move { (on_b("/write", kay_bearer).await == 200).then_some(()) }
    })
    .await;

    let new = json!({ "namespace": "shop", "scopes": ["read"] });
    let created = call(&a, "POST", "/admin/iam/api-keys", &root, Some(new))
        .await
        .json();
    let key = ("x-api-key", created["key"].as_str().unwrap().to_owned());
    assert!(bound < pavilion_data::identity::api_keys::RELOAD);
    pavilion_tests::eventually("B accepts the key A issued", bound, || {
        let key = key.clone();
        async move { (on_b("/keyed", key).await == 200).then_some(()) }
    })
    .await;
    let revoke = format!("/admin/iam/api-keys/{}", created["id"].as_str().unwrap());
    assert_eq!(call(&a, "DELETE", &revoke, &root, None).await.status, 204);
    pavilion_tests::eventually("B refuses the key A revoked", bound, || {
        let key = key.clone();
        async move { (on_b("/keyed", key).await == 401).then_some(()) }
    })
    .await;

    // Disabled through B: the next refresh through A fails, and so does sign-in.
    assert_eq!(
        call(
            &b,
            "POST",
            &format!("/admin/iam/users/{kay_id}/disable"),
            &root,
            None
        )
        .await
        .status,
        204
    );
    let after = post(
        &a,
        "/v1/auth/refresh",
        json!({ "refresh_token": token["refresh_token"] }),
    )
    .await;
    assert_refused(&after, 401, "invalid_grant");
    assert_eq!(
        post(
            &a,
            "/v1/auth/signin",
            credentials("kay@example.org", "long password")
        )
        .await
        .status,
        401
    );
}

#[tokio::test]
async fn service_accounts_get_tokens_by_client_credentials_and_rotate_their_secrets() {
    let (_dir, dp, root) = with_root().await;
    post(
        &dp,
        "/v1/auth/signup",
        credentials("joe@example.org", "long password"),
    )
    .await;
    let joe = access_token(&dp, "joe@example.org", "long password").await;
    let new = json!({ "name": "billing batch", "tenants": { "acme": ["clerk"] } });
    assert_eq!(
        call(
            &dp,
            "POST",
            "/admin/iam/service-accounts",
            &joe,
            Some(new.clone())
        )
        .await
        .status,
        403
    );
    let created = call(&dp, "POST", "/admin/iam/service-accounts", &root, Some(new)).await;
    assert_eq!(created.status, 201, "{}", created.text());
    let client_id = created.json()["client_id"].as_str().unwrap().to_owned();
    let secret = created.json()["client_secret"].as_str().unwrap().to_owned();
    let listed = call(&dp, "GET", "/admin/iam/service-accounts", &root, None).await;
    assert!(listed.text().contains(&client_id) && !listed.text().contains(&secret));

    let token = |basic: Option<(String, String)>, form: String| {
        let addr = dp.addr;
        async move {
            use base64::Engine;
            let authorization = basic.map(|(id, secret)| {
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
                )
            });
            let mut headers = vec![("content-type", "application/x-www-form-urlencoded")];
            if let Some(value) = &authorization {
                headers.push(("authorization", value.as_str()));
            }
            HttpClient::http1()
                .call(
                    "POST",
                    &format!("http://{addr}/v1/auth/token"),
                    &headers,
                    Bytes::from(form),
                )
                .await
                .unwrap()
        }
    };
    let grant = "grant_type=client_credentials".to_owned();
    let issued = token(Some((client_id.clone(), secret.clone())), grant.clone()).await;
    assert_eq!(issued.status, 200, "{}", issued.text());
    assert!(issued.json().get("refresh_token").is_none());
    let access = issued.json()["access_token"].as_str().unwrap().to_owned();
    assert_eq!(subject(&access), client_id);
    let in_form = token(
        None,
        format!("{grant}&client_id={client_id}&client_secret={secret}"),
    )
    .await;
    assert_eq!(in_form.status, 200, "credentials in the form work too");
    let wrong = token(Some((client_id.clone(), "guess".into())), grant.clone()).await;
    assert_refused(&wrong, 401, "invalid_client");
    let password = token(
        Some((client_id.clone(), secret.clone())),
        "grant_type=password".into(),
    )
    .await;
    assert_refused(&password, 400, "unsupported_grant_type");

    // Roles change after creation: the next token carries them.
    let role = format!("/admin/iam/service-accounts/{client_id}/tenants/globex/roles/auditor");
    assert_eq!(call(&dp, "PUT", &role, &root, None).await.status, 204);
    let reissued = token(Some((client_id.clone(), secret.clone())), grant.clone())
        .await
        .json();
    let payload = reissued["access_token"]
        .as_str()
        .unwrap()
        .split('.')
        .nth(1)
        .unwrap()
        .to_owned();
    let claims: Value = {
        use base64::Engine;
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap()
    };
    assert_eq!(
        claims["tenants"],
        json!({ "acme": ["clerk"], "globex": ["auditor"] })
    );

    // Rotation: the old secret stops at once.
    let rotated = call(
        &dp,
        "POST",
        &format!("/admin/iam/service-accounts/{client_id}/secret"),
        &root,
        None,
    )
    .await
    .json();
    let fresh = rotated["client_secret"].as_str().unwrap().to_owned();
    assert_ne!(fresh, secret);
    assert_eq!(
        token(Some((client_id.clone(), secret)), grant.clone())
            .await
            .status,
        401
    );
    assert_eq!(
        token(Some((client_id.clone(), fresh.clone())), grant.clone())
            .await
            .status,
        200
    );
    // Disabled: no token, whatever the secret; enabled again: the same secret works.
    for (action, status) in [("disable", 401), ("enable", 200)] {
        let path = format!("/admin/iam/service-accounts/{client_id}/{action}");
        assert_eq!(call(&dp, "POST", &path, &root, None).await.status, 204);
        let listed = call(&dp, "GET", "/admin/iam/service-accounts", &root, None)
            .await
            .json();
        assert_eq!(
            listed["service_accounts"][0]["disabled"],
            action == "disable",
            "{listed}"
        );
        let reply = token(Some((client_id.clone(), fresh.clone())), grant.clone()).await;
        assert_eq!(reply.status, status, "after {action}: {}", reply.text());
    }
    assert_eq!(
        call(
            &dp,
            "DELETE",
            &format!("/admin/iam/service-accounts/{client_id}"),
            &root,
            None
        )
        .await
        .status,
        204
    );
    assert_eq!(token(Some((client_id, fresh)), grant).await.status, 401);
}

#[tokio::test]
async fn administrators_create_users_set_passwords_and_revoke_sessions_and_codes() {
    let (_dir, dp, root) = with_root().await;

    let created = call(
        &dp,
        "POST",
        "/admin/iam/users",
        &root,
        Some(credentials("New@Example.org", "first password")),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let id = created.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(created.json()["email"], "new@example.org");
    let taken = call(
        &dp,
        "POST",
        "/admin/iam/users",
        &root,
        Some(credentials("new@example.org", "first password")),
    )
    .await;
    assert_refused(&taken, 409, "conflict");
    let session = post(
        &dp,
        "/v1/auth/signin",
        credentials("new@example.org", "first password"),
    )
    .await
    .json();
    assert!(session["refresh_token"].is_string());

    // Platform roles and the address change; the old address is free again.
    let changed = call(
        &dp,
        "PATCH",
        &format!("/admin/iam/users/{id}"),
        &root,
        Some(json!({ "email": "renamed@example.org", "roles": ["platform-admin"] })),
    )
    .await;
    assert_eq!(changed.status, 200, "{}", changed.text());
    assert_eq!(changed.json()["email"], "renamed@example.org");
    assert_eq!(changed.json()["roles"], json!(["platform-admin"]));
    let renamed = post(
        &dp,
        "/v1/auth/signin",
        credentials("renamed@example.org", "first password"),
    )
    .await;
    assert_eq!(renamed.status, 200, "{}", renamed.text());
    assert_eq!(
        post(
            &dp,
            "/v1/auth/signup",
            credentials("new@example.org", "other password")
        )
        .await
        .status,
        202
    );
    assert_eq!(
        post(
            &dp,
            "/v1/auth/signin",
            credentials("new@example.org", "other password")
        )
        .await
        .status,
        200,
        "the old address was freed"
    );
    let clash = call(
        &dp,
        "PATCH",
        &format!("/admin/iam/users/{id}"),
        &root,
        Some(json!({ "email": "root@example.org" })),
    )
    .await;
    assert_refused(&clash, 409, "conflict");
    let unknown_field = call(
        &dp,
        "PATCH",
        &format!("/admin/iam/users/{id}"),
        &root,
        Some(json!({ "password": "x" })),
    )
    .await;
    assert_refused(&unknown_field, 400, "invalid_request");
    let id_email = "renamed@example.org";

    // A new password by an administrator ends the sessions.
    let set = call(
        &dp,
        "PUT",
        &format!("/admin/iam/users/{id}/password"),
        &root,
        Some(json!({ "password": "second password" })),
    )
    .await;
    assert_eq!(set.status, 204, "{}", set.text());
    assert_eq!(
        post(
            &dp,
            "/v1/auth/refresh",
            json!({ "refresh_token": session["refresh_token"] })
        )
        .await
        .status,
        401
    );
    assert_eq!(
        post(
            &dp,
            "/v1/auth/signin",
            credentials(id_email, "first password")
        )
        .await
        .status,
        401
    );
    let session = post(
        &dp,
        "/v1/auth/signin",
        credentials(id_email, "second password"),
    )
    .await
    .json();

    // Revoking sessions.
    assert_eq!(
        call(
            &dp,
            "DELETE",
            &format!("/admin/iam/users/{id}/sessions"),
            &root,
            None
        )
        .await
        .status,
        204
    );
    assert_eq!(
        post(
            &dp,
            "/v1/auth/refresh",
            json!({ "refresh_token": session["refresh_token"] })
        )
        .await
        .status,
        401
    );

    // Revoking recovery codes: TOTP stays, the codes stop.
    let tokens = post(
        &dp,
        "/v1/auth/signin",
        credentials(id_email, "second password"),
    )
    .await
    .json();
    let bearer = format!("Bearer {}", tokens["access_token"].as_str().unwrap());
    let enrolment = post_with(
        &dp,
        "/v1/auth/mfa/totp/start",
        json!({}),
        &[("authorization", bearer.as_str())],
    )
    .await
    .json();
    let confirmed = post_with(
        &dp,
        "/v1/auth/mfa/totp/confirm",
        json!({ "code": totp_code(enrolment["secret"].as_str().unwrap(), 0) }),
        &[("authorization", bearer.as_str())],
    )
    .await
    .json();
    let codes = confirmed["recovery_codes"].clone();
    assert_eq!(
        call(
            &dp,
            "DELETE",
            &format!("/admin/iam/users/{id}/recovery-codes"),
            &root,
            None
        )
        .await
        .status,
        204
    );
    let challenge = post(
        &dp,
        "/v1/auth/signin",
        credentials(id_email, "second password"),
    )
    .await
    .json();
    let step = json!({ "mfa_token": challenge["mfa_token"], "code": codes[0] });
    let refused = post(&dp, "/v1/auth/mfa", step).await;
    assert_refused(&refused, 401, "invalid_code");
}

#[tokio::test]
async fn api_keys_issued_by_the_iam_api_authenticate_at_the_edge_until_revoked() {
    let (_dir, dp, root) = with_root().await;
    let upstream = pavilion_tests::Upstream::start("orders").await.unwrap();
    let mut rule = prefix_rule("/orders", &[(upstream.url().as_str(), 1)]);
    rule.auth = Some(proto::Auth {
        api_keys: Some(proto::ApiKeyAuth::default()),
        ..Default::default()
    });
    dp.apply(snapshot("v1", vec![route("shop/orders", &[], vec![rule])]))
        .await
        .unwrap();
    let ask = |method: &'static str, key: String| {
        let addr = dp.addr;
        async move {
            HttpClient::http1()
                .call(
                    method,
                    &format!("http://{addr}/orders/1"),
                    &[("x-api-key", key.as_str())],
                    Bytes::new(),
                )
                .await
                .unwrap()
        }
    };

    let new = json!({ "namespace": "shop", "scopes": ["read"], "tenants": { "acme": [] } });
    let created = call(&dp, "POST", "/admin/iam/api-keys", &root, Some(new)).await;
    assert_eq!(created.status, 201, "{}", created.text());
    let id = created.json()["id"].as_str().unwrap().to_owned();
    let key = created.json()["key"].as_str().unwrap().to_owned();
    let listed = call(&dp, "GET", "/admin/iam/api-keys", &root, None).await;
    assert!(
        listed.text().contains(&id) && !listed.text().contains(&key),
        "never the key"
    );

    // The edge knows it: its id goes upstream, its scopes hold.
    let read = ask("GET", key.clone()).await;
    assert_eq!(read.status, 200, "{}", read.text());
    assert_eq!(read.json()["headers"]["x-auth-key-id"], id.as_str());
    let write = ask("POST", key.clone()).await;
    assert_refused(&write, 403, "insufficient_scope");
    // Another namespace's routes do not.
    let elsewhere = json!({ "namespace": "billing", "scopes": ["read"] });
    let other = call(&dp, "POST", "/admin/iam/api-keys", &root, Some(elsewhere))
        .await
        .json();
    let refused = ask("GET", other["key"].as_str().unwrap().to_owned()).await;
    assert_refused(&refused, 401, "invalid_api_key");

    // Revoked: refused at once here (and within two seconds on other replicas).
    assert_eq!(
        call(
            &dp,
            "DELETE",
            &format!("/admin/iam/api-keys/{id}"),
            &root,
            None
        )
        .await
        .status,
        204
    );
    assert_refused(&ask("GET", key).await, 401, "invalid_api_key");
}

#[tokio::test]
async fn a_stale_hash_is_replaced_at_sign_in_and_a_newer_record_is_refused() {
    use argon2::PasswordHasher;
    use pavilion_data::identity::records::{self, User};
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let spec = StoreSpec::Nats {
        servers: nats.url(),
        prefix: "rehash".into(),
    };
    let dp = data_plane(spec.clone(), dir.path(), Duration::from_secs(3600)).await;
    let account = credentials("old@example.org", "long password");
    assert_eq!(
        post(&dp, "/v1/auth/signup", account.clone()).await.status,
        202
    );
    let first = post(&dp, "/v1/auth/signin", account.clone()).await;
    assert_eq!(first.status, 200, "{}", first.text());
    let id = subject(first.json()["access_token"].as_str().unwrap());

    // As an older build would have stored it: Argon2id with weaker parameters.
    let store = pavilion_data::identity::open_store(&spec).await.unwrap();
    let mut user = records::get::<User>(&*store, &id).await.unwrap().unwrap();
    let weak = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon2::Params::new(8 * 1024, 1, 1, None).unwrap(),
    )
    .hash_password(b"long password")
    .unwrap()
    .to_string();
    user.record.password = Some(weak.clone());
    records::update(&*store, &id, &user.record, user.revision)
        .await
        .unwrap();

    // A wrong password changes nothing; the right one is accepted and rehashed.
    let wrong = post(
        &dp,
        "/v1/auth/signin",
        credentials("old@example.org", "not it!!"),
    )
    .await;
    assert_refused(&wrong, 401, "invalid_credentials");
    let stored = records::get::<User>(&*store, &id).await.unwrap().unwrap();
    assert_eq!(stored.record.password.as_deref(), Some(weak.as_str()));
    let again = post(&dp, "/v1/auth/signin", account.clone()).await;
    assert_eq!(again.status, 200, "{}", again.text());
    let rehashed = records::get::<User>(&*store, &id).await.unwrap().unwrap();
    let hash = rehashed.record.password.clone().unwrap();
    assert!(
        hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "rehashed with today's parameters: {hash}"
    );
    assert_eq!(
        post(&dp, "/v1/auth/signin", account.clone()).await.status,
        200,
        "and the new hash verifies"
    );

    // A record written by a newer build is not guessed at: 503, nothing overwritten.
    let mut newer: Value = serde_json::to_value(&rehashed.record).unwrap();
    newer["v"] = json!(records::VERSION + 1);
    newer["password"] = json!(hash);
    use pavilion_data::identity::store::Bucket;
    let entry = store.get(Bucket::Users, &id).await.unwrap().unwrap();
    store
        .update(
            Bucket::Users,
            &id,
            newer.to_string().into_bytes(),
            entry.revision,
        )
        .await
        .unwrap();
    let refused = post(&dp, "/v1/auth/signin", account).await;
    assert_refused(&refused, 503, "identity_unavailable");
    let after = store.get(Bucket::Users, &id).await.unwrap().unwrap();
    let after: Value = serde_json::from_slice(&after.value).unwrap();
    assert_eq!(after, newer, "the newer record was left alone");
}

#[tokio::test]
async fn a_reset_token_expires_unused() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = dir.path().join("outbox");
    let mut identity = IdentityConfig::new(
        StoreSpec::File(dir.path().join("identity.redb")),
        ISSUER,
        key_file(dir.path()),
    );
    identity.mail = Some(format!("file:{}", outbox.display()));
    identity.reset_ttl = Duration::from_secs(1);
    let dp = with_identity(identity).await;
    let account = credentials("kim@example.org", "first password");
    assert_eq!(
        post(&dp, "/v1/auth/signup", account.clone()).await.status,
        202
    );
    let forgot = post(
        &dp,
        "/v1/auth/forgot",
        json!({ "email": "kim@example.org" }),
    )
    .await;
    assert_eq!(forgot.status, 202);
    let file = pavilion_tests::eventually("the reset mail", Duration::from_secs(10), || {
        let outbox = outbox.clone();
        async move {
            std::fs::read_dir(&outbox)
                .ok()?
                .flatten()
                .next()
                .map(|e| e.path())
        }
    })
    .await;
    let token = pavilion_tests::reset_token_in(&std::fs::read_to_string(file).unwrap());
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let late = post(
        &dp,
        "/v1/auth/reset",
        json!({ "token": token, "password": "second password" }),
    )
    .await;
    assert_refused(&late, 400, "invalid_token");
    assert_eq!(
        post(&dp, "/v1/auth/signin", account).await.status,
        200,
        "the password is the one it was"
    );
}

#[tokio::test]
async fn expired_signing_keys_leave_the_jwks_and_the_store() {
    use pavilion_data::identity::store::Bucket;
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let spec = StoreSpec::Nats {
        servers: nats.url(),
        prefix: "prune".into(),
    };
    let rotation = Duration::from_secs(2);
    let dp = data_plane(spec.clone(), dir.path(), rotation).await;
    let account = credentials("pat@example.org", "long password");
    assert_eq!(
        post(&dp, "/v1/auth/signup", account.clone()).await.status,
        202
    );
    let first = post(&dp, "/v1/auth/signin", account.clone()).await.json();
    let token = first["access_token"].as_str().unwrap().to_owned();
    let header = token.split('.').next().unwrap();
    let header: Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, header).unwrap(),
    )
    .unwrap();
    let kid = header["kid"].as_str().unwrap().to_owned();
    let name = format!("key.{kid}");
    let bearer = format!("Bearer {token}");

    // As if its last token had expired: the key's expiry moved into the past.
    let store = pavilion_data::identity::open_store(&spec).await.unwrap();
    let entry = store.get(Bucket::Keys, &name).await.unwrap().unwrap();
    let mut key: Value = serde_json::from_slice(&entry.value).unwrap();
    key["expires_at"] = json!(0);
    store
        .update(
            Bucket::Keys,
            &name,
            key.to_string().into_bytes(),
            entry.revision,
        )
        .await
        .unwrap();
    let kids = |jwks: Value| -> Vec<String> {
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect()
    };
    let published = kids(get(&dp, "/.well-known/jwks.json", &[]).await.json());
    assert!(!published.contains(&kid), "{published:?}");
    let signout = post_with(
        &dp,
        "/v1/auth/signout",
        json!({ "all": true }),
        &[("authorization", bearer.as_str())],
    )
    .await;
    assert_refused(&signout, 401, "invalid_token");

    // The next rotation deletes it from the store.
    tokio::time::sleep(rotation + Duration::from_millis(500)).await;
    assert_eq!(post(&dp, "/v1/auth/signin", account).await.status, 200);
    pavilion_tests::eventually(
        "the expired key is deleted",
        Duration::from_secs(5),
        || async {
            store
                .get(Bucket::Keys, &name)
                .await
                .unwrap()
                .is_none()
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn signing_keys_are_sealed_at_rest_and_a_wrong_store_key_stops_the_start() {
    use pavilion_data::identity::store::Bucket;
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let spec = StoreSpec::Nats {
        servers: nats.url(),
        prefix: "sealed".into(),
    };
    let _dp = data_plane(spec.clone(), dir.path(), Duration::from_secs(3600)).await;

    // What the store holds of a signing key: the public point and a sealed blob in which
    // nothing of a PKCS#8 P-256 key (its algorithm and curve identifiers) can be read.
    let store = pavilion_data::identity::open_store(&spec).await.unwrap();
    let names: Vec<String> = store
        .keys(Bucket::Keys, None, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|name| name.starts_with("key."))
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    let entry = store.get(Bucket::Keys, &names[0]).await.unwrap().unwrap();
    let text = String::from_utf8(entry.value.to_vec()).unwrap();
    assert!(!text.contains("PRIVATE KEY"), "{text}");
    let record: Value = serde_json::from_str(&text).unwrap();
    let sealed = base64::Engine::decode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        record["sealed"].as_str().unwrap(),
    )
    .unwrap();
    let ec_public_key = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    let prime256v1 = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    for oid in [&ec_public_key[..], &prime256v1[..]] {
        assert!(
            !sealed.windows(oid.len()).any(|w| w == oid),
            "the sealed key reads as PKCS#8"
        );
    }

    // Another replica with another store key cannot sign with the current key: it does not
    // start, and says why.
    let other = tempfile::tempdir().unwrap();
    let wrong_key = other.path().join("identity.key");
    std::fs::write(&wrong_key, "cd".repeat(32)).unwrap();
    let mut config = Config::local();
    config.identity = Some(IdentityConfig::new(spec, ISSUER, wrong_key));
    let error = match pavilion_data::start(config).await {
        Ok(_) => panic!("a data plane with the wrong store key started"),
        Err(error) => format!("{error:#}"),
    };
    assert!(
        error.contains("cannot be unsealed") && error.contains("--identity-key-file"),
        "{error}"
    );
}
