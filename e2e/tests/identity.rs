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

fn totp_now(secret: &str) -> String {
    let bytes = totp_rs::Secret::try_from_base32(secret).unwrap();
    let totp = totp_rs::Builder::new()
        .with_secret(bytes.as_ref().to_vec())
        .build()
        .unwrap();
    totp.generate(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .to_string()
}

#[tokio::test]
async fn no_secret_of_any_identity_flow_reaches_a_log_line() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("identity.key");
    std::fs::write(&key, "cd".repeat(32)).unwrap();
    let outbox = dir.path().join("outbox");
    let (listen, admin) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let store = format!("file:{}", dir.path().join("identity.redb").display());
    let mail = format!("file:{}", outbox.display());
    let data = Child::spawn_with_env(
        "pavilion-data",
        &binary("pavilion-data"),
        &[
            "run",
            // No control plane answers here: the identity API needs none.
            "--control-plane",
            &format!("http://127.0.0.1:{}", free_port()),
            "--listen",
            &listen,
            "--admin-listen",
            &admin,
            "--workers",
            "1",
            "--identity-store",
            &store,
            "--identity-issuer",
            "https://id.e2e.test",
            "--identity-key-file",
            key.to_str().unwrap(),
            "--identity-mail",
            &mail,
        ],
        &[("RUST_LOG".into(), "debug".into())],
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
    let token = mail
        .lines()
        .skip_while(|l| !l.contains("Your reset token"))
        .skip(1)
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap()
        .to_owned();
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
    let confirm = json!({ "code": totp_now(&secret) });
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
