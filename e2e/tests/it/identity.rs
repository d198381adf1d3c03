//! The identity API in the real binary, logging at debug level through every flow that
//! handles a secret — sign-up, sign-in, refresh, reset by mail, TOTP enrolment and the MFA
//! step — and then the proof that no secret reached a log line: passwords, access, refresh,
//! reset and MFA tokens, the TOTP secret and the recovery codes.

use std::time::Duration;

use bytes::Bytes;
use pavilion_tests::client::{HttpClient, Reply};
use pavilion_tests::process::{Child, binary};
use pavilion_tests::{eventually, free_port};
use serde_json::{Value, json};

async fn post(listen: &str, path: &str, body: Value, bearer: Option<&str>) -> Reply {
    let authorization = bearer.map(|b| format!("Bearer {b}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(value) = &authorization {
        headers.push(("authorization", value.as_str()));
    }
    HttpClient::http1()
        .call(
            "POST",
            &format!("http://{listen}{path}"),
            &headers,
            Bytes::from(body.to_string()),
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn no_secret_of_any_identity_flow_reaches_a_log_line() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("identity.key");
    std::fs::write(&key, "cd".repeat(32)).unwrap();
    let outbox = dir.path().join("outbox");
    let store = format!("file:{}", dir.path().join("identity.redb").display());
    let debug = [("RUST_LOG".to_owned(), "debug".to_owned())];
    let (data, listen) = identity_process(&store, &key, &outbox, &debug).await;

    let mut secrets: Vec<String> = vec!["first passphrase".into(), "second passphrase".into()];
    let account = json!({ "email": "sam@example.org", "password": "first passphrase" });
    assert_eq!(
        post(&listen, "/v1/auth/signup", account.clone(), None)
            .await
            .status,
        202
    );
    let wrong = json!({ "email": "sam@example.org", "password": "a guess at it" });
    secrets.push("a guess at it".into());
    assert_eq!(
        post(&listen, "/v1/auth/signin", wrong, None).await.status,
        401
    );
    let tokens = post(&listen, "/v1/auth/signin", account, None).await.json();
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let refresh = tokens["refresh_token"].as_str().unwrap().to_owned();
    let rotated = post(
        &listen,
        "/v1/auth/refresh",
        json!({ "refresh_token": refresh }),
        None,
    )
    .await
    .json();
    secrets.extend([
        access.clone(),
        refresh,
        rotated["refresh_token"].as_str().unwrap().into(),
    ]);

    // Reset by mail (the outbox), then MFA.
    post(
        &listen,
        "/v1/auth/forgot",
        json!({ "email": "sam@example.org" }),
        None,
    )
    .await;
    let mail = eventually("the reset mail", Duration::from_secs(10), || {
        let outbox = outbox.clone();
        async move {
            let file = std::fs::read_dir(&outbox).ok()?.flatten().next()?.path();
            std::fs::read_to_string(file).ok()
        }
    })
    .await;
    let token = pavilion_tests::reset_token_in(&mail);
    let reset = json!({ "token": token, "password": "second passphrase" });
    assert_eq!(
        post(&listen, "/v1/auth/reset", reset, None).await.status,
        204
    );
    secrets.push(token);
    let account = json!({ "email": "sam@example.org", "password": "second passphrase" });
    let access = post(&listen, "/v1/auth/signin", account.clone(), None)
        .await
        .json()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let enrolment = post(&listen, "/v1/auth/mfa/totp/start", json!({}), Some(&access))
        .await
        .json();
    let secret = enrolment["secret"].as_str().unwrap().to_owned();
    let confirm = json!({ "code": pavilion_tests::totp_code(&secret, 0) });
    let recovery = post(&listen, "/v1/auth/mfa/totp/confirm", confirm, Some(&access))
        .await
        .json();
    let recovery: Vec<String> = recovery["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    let challenge = post(&listen, "/v1/auth/signin", account, None).await.json();
    let mfa_token = challenge["mfa_token"].as_str().unwrap().to_owned();
    let step = json!({ "mfa_token": mfa_token, "code": recovery[0] });
    let last = post(&listen, "/v1/auth/mfa", step, None).await;
    assert_eq!(last.status, 200, "{}", last.text());
    secrets.extend([access, secret, mfa_token]);
    secrets.extend(recovery);
    secrets.push(last.json()["refresh_token"].as_str().unwrap().into());

    // The administrator's flows: passwords set for others, service-account secrets (made,
    // rotated, exchanged for a token), API keys.
    let base = format!("http://{listen}");
    let root_account = json!({ "email": "root@example.org", "password": "root's first one" });
    post(&listen, "/v1/auth/signup", root_account, None).await;
    secrets.push("root's first one".into());
    pavilion_tests::verify_by_mail(&base, &outbox, "root@example.org", "root passphrase").await;
    let root = post(
        &listen,
        "/v1/auth/signin",
        json!({ "email": "root@example.org", "password": "root passphrase" }),
        None,
    )
    .await
    .json()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    secrets.extend(["root passphrase".to_owned(), root.clone()]);
    let admin = |method: &'static str, path: String, body: Value| {
        let (listen, root) = (listen.clone(), root.clone());
        async move {
            let authorization = format!("Bearer {root}");
            HttpClient::http1()
                .call(
                    method,
                    &format!("http://{listen}{path}"),
                    &[
                        ("content-type", "application/json"),
                        ("authorization", authorization.as_str()),
                    ],
                    Bytes::from(body.to_string()),
                )
                .await
                .unwrap()
        }
    };
    let made = admin(
        "POST",
        "/admin/iam/users".into(),
        json!({ "email": "val@example.org", "password": "made by an admin" }),
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.text());
    let val = made.json()["id"].as_str().unwrap().to_owned();
    let set = admin(
        "PUT",
        format!("/admin/iam/users/{val}/password"),
        json!({ "password": "set by an admin" }),
    )
    .await;
    assert_eq!(set.status, 204, "{}", set.text());
    secrets.extend(["made by an admin".to_owned(), "set by an admin".to_owned()]);
    let client = admin(
        "POST",
        "/admin/iam/service-accounts".into(),
        json!({ "name": "nightly", "tenants": {} }),
    )
    .await
    .json();
    let client_id = client["client_id"].as_str().unwrap().to_owned();
    let rotated = admin(
        "POST",
        format!("/admin/iam/service-accounts/{client_id}/secret"),
        json!({}),
    )
    .await
    .json();
    let client_secret = rotated["client_secret"].as_str().unwrap().to_owned();
    let grant = HttpClient::http1()
        .call(
            "POST",
            &format!("{base}/v1/auth/token"),
            &[("content-type", "application/x-www-form-urlencoded")],
            Bytes::from(format!(
                "grant_type=client_credentials&client_id={client_id}&client_secret={client_secret}"
            )),
        )
        .await
        .unwrap();
    assert_eq!(grant.status, 200, "{}", grant.text());
    secrets.extend([
        client["client_secret"].as_str().unwrap().to_owned(),
        client_secret,
        grant.json()["access_token"].as_str().unwrap().to_owned(),
    ]);
    let issued = admin(
        "POST",
        "/admin/iam/api-keys".into(),
        json!({ "namespace": "shop", "scopes": ["read"] }),
    )
    .await;
    assert_eq!(issued.status, 201, "{}", issued.text());
    secrets.push(issued.json()["key"].as_str().unwrap().to_owned());

    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = data.output();
    assert!(
        logs.contains("\"path\":\"/v1/auth/mfa\""),
        "the access log saw the flows: {logs}"
    );
    assert!(logs.contains("session revoked") || logs.contains("signed in"));
    for secret in &secrets {
        assert!(
            !logs.contains(secret.as_str()),
            "a log line holds a secret: {secret}"
        );
    }
}

/// The issue's journey through real processes: sign up, sign in with MFA, call a
/// tenant-scoped route with the gateway's own token; the administrator removes the
/// assignment; the next refresh no longer grants it.
#[tokio::test]
async fn sign_up_mfa_tenant_route_and_an_assignment_removed() {
    use pavilion_e2e::{ControlProcess, DataProcess, UpstreamProcess};
    let upstream = UpstreamProcess::start("agg-1").await;
    let listen_port = free_port();
    let gateway = format!("http://127.0.0.1:{listen_port}");
    let config = tempfile::tempdir().unwrap();
    std::fs::write(
        config.path().join("config.yaml"),
        format!(
            r#"{shards}apiVersion: gateway.pavilion.dev/v1alpha1
kind: Route
metadata: {{ name: orders, namespace: e2e }}
spec:
  rules:
    - matches: [{{ path: {{ type: PathPrefix, value: /v1/orders }} }}]
      auth:
        jwt:
          - issuer: {gateway}
            jwksUri: {gateway}/.well-known/jwks.json
            audiences: [pavilion]
            tenantsClaim: tenants
      tenancy: {{}}
      authorize: {{ rights: [orders.read] }}
      backends: [{{ service: aggregate }}]
"#,
            shards = pavilion_tests::acme_on_one_shard(&upstream.url)
        ),
    )
    .unwrap();
    let control = ControlProcess::start(config.path(), free_port()).await;
    let state = tempfile::tempdir().unwrap();
    let key = state.path().join("identity.key");
    std::fs::write(&key, "ef".repeat(32)).unwrap();
    let store = format!("file:{}", state.path().join("identity.redb").display());
    let data = DataProcess::start_with(
        &format!("http://{}", control.grpc),
        &state.path().join("snapshot.pb"),
        listen_port,
        &[
            "--identity-store",
            &store,
            "--identity-issuer",
            &gateway,
            "--identity-key-file",
            key.to_str().unwrap(),
            "--identity-admins",
            "root@example.org",
            "--identity-mail",
            &format!("file:{}", state.path().join("outbox").display()),
        ],
    )
    .await;
    let listen = data.listen.clone();
    let account =
        |who: &str| json!({ "email": format!("{who}@example.org"), "password": "long password" });
    for who in ["root", "ann"] {
        assert_eq!(
            post(&listen, "/v1/auth/signup", account(who), None)
                .await
                .status,
            202
        );
    }
    // A bootstrap administrator proves the address first.
    let outbox = state.path().join("outbox");
    pavilion_tests::verify_by_mail(
        &format!("http://{listen}"),
        &outbox,
        "root@example.org",
        "long password",
    )
    .await;
    let root = post(&listen, "/v1/auth/signin", account("root"), None)
        .await
        .json()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let first = post(&listen, "/v1/auth/signin", account("ann"), None)
        .await
        .json();
    let ann_token = first["access_token"].as_str().unwrap().to_owned();
    let ann_id = {
        use base64::Engine;
        let payload = ann_token.split('.').nth(1).unwrap();
        let claims: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap();
        claims["sub"].as_str().unwrap().to_owned()
    };

    // The administrator: a right, a role, an assignment.
    let admin = |method: &'static str, path: String, body: Option<Value>| {
        let (listen, root) = (listen.clone(), root.clone());
        async move {
            let authorization = format!("Bearer {root}");
            let mut headers = vec![("authorization", authorization.as_str())];
            if body.is_some() {
                headers.push(("content-type", "application/json"));
            }
            HttpClient::http1()
                .call(
                    method,
                    &format!("http://{listen}{path}"),
                    &headers,
                    Bytes::from(body.map(|b| b.to_string()).unwrap_or_default()),
                )
                .await
                .unwrap()
                .status
        }
    };
    assert_eq!(
        admin(
            "PUT",
            "/admin/iam/rights/orders.read".into(),
            Some(json!({}))
        )
        .await,
        204
    );
    assert_eq!(
        admin(
            "PUT",
            "/admin/iam/roles/clerk".into(),
            Some(json!({ "rights": ["orders.read"] }))
        )
        .await,
        204
    );
    let assignment = format!("/admin/iam/users/{ann_id}/tenants/acme/roles/clerk");
    assert_eq!(admin("PUT", assignment.clone(), None).await, 204);

    // Ann enrols TOTP, then signs in with it.
    let enrolment = post(
        &listen,
        "/v1/auth/mfa/totp/start",
        json!({}),
        Some(&ann_token),
    )
    .await
    .json();
    let secret = enrolment["secret"].as_str().unwrap().to_owned();
    let confirm = json!({ "code": pavilion_tests::totp_code(&secret, 0) });
    assert_eq!(
        post(
            &listen,
            "/v1/auth/mfa/totp/confirm",
            confirm,
            Some(&ann_token)
        )
        .await
        .status,
        200
    );
    let challenge = post(&listen, "/v1/auth/signin", account("ann"), None)
        .await
        .json();
    assert_eq!(challenge["mfa_required"], true);
    // The code of the next step: the one confirmed at enrolment is spent.
    let code = pavilion_tests::totp_code(&secret, 30);
    let session = post(
        &listen,
        "/v1/auth/mfa",
        json!({ "mfa_token": challenge["mfa_token"], "code": code }),
        None,
    )
    .await;
    assert_eq!(session.status, 200, "{}", session.text());
    let session = session.json();

    // The tenant-scoped route takes the gateway's own token.
    let order = |token: String| {
        let listen = listen.clone();
        async move {
            let authorization = format!("Bearer {token}");
            HttpClient::http1()
                .get_with(
                    &format!("http://{listen}/v1/orders/1"),
                    &[
                        ("authorization", authorization.as_str()),
                        ("x-tenant-id", "acme"),
                    ],
                )
                .await
                .unwrap()
        }
    };
    let access = session["access_token"].as_str().unwrap().to_owned();
    eventually("the route serves ann", Duration::from_secs(30), || {
        let access = access.clone();
        let order = &order;
        async move { (order(access).await.status == 200).then_some(()) }
    })
    .await;
    let served = order(access).await;
    assert_eq!(served.header("x-upstream"), Some("agg-1"));

    // Removed: the next refresh no longer grants it.
    assert_eq!(admin("DELETE", assignment, None).await, 204);
    let refreshed = post(
        &listen,
        "/v1/auth/refresh",
        json!({ "refresh_token": session["refresh_token"] }),
        None,
    )
    .await
    .json();
    let denied = order(refreshed["access_token"].as_str().unwrap().to_owned()).await;
    assert_eq!(denied.status, 403, "{}", denied.text());
    assert_eq!(denied.json()["error"]["code"], "tenant_forbidden");
}

/// A data-plane process with the identity API on `store`, mail to `outbox`, `root@…` as
/// bootstrap administrator and no control plane (the identity API needs none); its listen
/// address once it answers.
async fn identity_process(
    store: &str,
    key: &std::path::Path,
    outbox: &std::path::Path,
    env: &[(String, String)],
) -> (Child, String) {
    let mail = format!("file:{}", outbox.display());
    let (listen, admin) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let child = Child::spawn_with_env(
        "pavilion-data",
        &binary("pavilion-data"),
        &[
            "run",
            "--control-plane",
            &format!("http://127.0.0.1:{}", free_port()),
            "--listen",
            &listen,
            "--admin-listen",
            &admin,
            "--workers",
            "1",
            "--identity-store",
            store,
            "--identity-issuer",
            "https://id.e2e.test",
            "--identity-key-file",
            key.to_str().unwrap(),
            "--identity-admins",
            "root@example.org",
            "--identity-mail",
            &mail,
        ],
        env,
    );
    let address = listen.clone();
    eventually("the identity API answers", Duration::from_secs(30), || {
        let address = address.clone();
        async move {
            let reply = HttpClient::http1()
                .get(&format!("http://{address}/.well-known/jwks.json"))
                .await
                .ok()?;
            (reply.status == 200).then_some(())
        }
    })
    .await;
    (child, listen)
}

/// Two data-plane processes sharing one NATS server: a refresh token raced through both
/// succeeds once and revokes its family; an administrator's change through one is what the
/// other enforces; each accepts the other's tokens, across a key rotation.
#[tokio::test]
async fn two_processes_on_nats_race_refreshes_and_enforce_each_others_changes() {
    let nats = pavilion_tests::nats::NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("identity.key");
    std::fs::write(&key, "ab".repeat(32)).unwrap();
    let store = format!("{}?bucket=e2e-identity", nats.url());
    let outbox = dir.path().join("outbox");
    // Signing keys rotate every 3.6 s, so a rotation falls between two sign-ins below.
    let rotation = Duration::from_millis(3_600);
    let env = [(
        "PAVILION_IDENTITY_KEY_ROTATION_HOURS".to_owned(),
        "0.001".to_owned(),
    )];
    let (_a, a) = identity_process(&store, &key, &outbox, &env).await;
    let (_b, b) = identity_process(&store, &key, &outbox, &env).await;
    let account =
        |who: &str| json!({ "email": format!("{who}@example.org"), "password": "long password" });
    assert_eq!(
        post(&a, "/v1/auth/signup", account("root"), None)
            .await
            .status,
        202
    );
    assert_eq!(
        post(&b, "/v1/auth/signup", account("lou"), None)
            .await
            .status,
        202
    );

    for round in 0..3 {
        let session = post(&b, "/v1/auth/signin", account("lou"), None)
            .await
            .json();
        let token = json!({ "refresh_token": session["refresh_token"] });
        let (one, two) = tokio::join!(
            post(&a, "/v1/auth/refresh", token.clone(), None),
            post(&b, "/v1/auth/refresh", token, None)
        );
        let statuses = [one.status.as_u16(), two.status.as_u16()];
        assert_eq!(
            statuses.iter().filter(|s| **s == 200).count(),
            1,
            "round {round}: {statuses:?}"
        );
        let winner = if one.status == 200 { &one } else { &two };
        let next = json!({ "refresh_token": winner.json()["refresh_token"] });
        assert_eq!(
            post(&a, "/v1/auth/refresh", next, None).await.status,
            401,
            "round {round}: the family is revoked"
        );
    }

    // An administrator signed in on A disables Lou through B; A enforces it.
    pavilion_tests::verify_by_mail(
        &format!("http://{a}"),
        &outbox,
        "root@example.org",
        "long password",
    )
    .await;
    let root = post(&a, "/v1/auth/signin", account("root"), None)
        .await
        .json()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let lou = post(&a, "/v1/auth/signin", account("lou"), None)
        .await
        .json();
    let page = HttpClient::http1()
        .get_with(
            &format!("http://{b}/admin/iam/users?limit=10"),
            &[("authorization", format!("Bearer {root}").as_str())],
        )
        .await
        .unwrap()
        .json();
    let lou_id = page["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["email"] == "lou@example.org")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let disabled = post(
        &b,
        &format!("/admin/iam/users/{lou_id}/disable"),
        json!({}),
        Some(&root),
    )
    .await;
    assert_eq!(disabled.status, 204, "{}", disabled.text());
    let refresh = post(
        &a,
        "/v1/auth/refresh",
        json!({ "refresh_token": lou["refresh_token"] }),
        None,
    )
    .await;
    assert_eq!(refresh.status, 401);
    assert_eq!(
        post(&a, "/v1/auth/signin", account("lou"), None)
            .await
            .status,
        401
    );

    // A key rotation on one verifies on the other: a token signed by B's new key works on
    // A, the one from A's older key still works on B, and both publish both keys.
    tokio::time::sleep(rotation + Duration::from_millis(500)).await;
    let fresh = post(&b, "/v1/auth/signin", account("root"), None)
        .await
        .json()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (old_kid, new_kid) = (kid(&root), kid(&fresh));
    assert_ne!(
        old_kid, new_kid,
        "B signs with a key made after the rotation"
    );
    for (server, token) in [(&a, &fresh), (&b, &root)] {
        let users = HttpClient::http1()
            .get_with(
                &format!("http://{server}/admin/iam/users?limit=1"),
                &[("authorization", format!("Bearer {token}").as_str())],
            )
            .await
            .unwrap();
        assert_eq!(users.status, 200, "{server}: {}", users.text());
        let jwks = HttpClient::http1()
            .get(&format!("http://{server}/.well-known/jwks.json"))
            .await
            .unwrap()
            .json();
        let kids: Vec<&str> = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|key| key["kid"].as_str())
            .collect();
        assert!(
            kids.contains(&old_kid.as_str()) && kids.contains(&new_kid.as_str()),
            "{server}: {kids:?}"
        );
    }
}

/// The `kid` of a JWT's header.
fn kid(token: &str) -> String {
    use base64::Engine;
    let header = token.split('.').next().unwrap();
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .unwrap();
    serde_json::from_slice::<serde_json::Value>(&header).unwrap()["kid"]
        .as_str()
        .unwrap()
        .to_owned()
}
