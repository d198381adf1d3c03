//! Test support shared by every crate's integration tests and the e2e scenarios: real
//! upstreams, an HTTP client, snapshot builders, and child processes that die with the test.

pub mod client;
pub mod grpc;
pub mod jwt;
pub mod kube;
pub mod nats;
pub mod oidc;
pub mod process;
pub mod python;
pub mod raw;
pub mod redis;
pub mod smtp;
pub mod snapshot;
pub mod tls;

pub use pavilion_upstream::Upstream;

use std::time::Duration;

/// The bearer token test control planes are given (`api_tokens`, `--api-token-file`).
pub const API_TOKEN: &str = "pavilion-test-api-token";

/// GETs `path` from a control plane's API at `addr` with [`API_TOKEN`].
pub async fn control_api(addr: impl std::fmt::Display, path: &str) -> client::Reply {
    client::HttpClient::http1()
        .get_with(
            &format!("http://{addr}{path}"),
            &[("authorization", &format!("Bearer {API_TOKEN}"))],
        )
        .await
        .expect("the control plane answers")
}

/// The Prometheus text of an admin listener at `addr` (`/metrics`).
pub async fn metrics(addr: impl std::fmt::Display) -> String {
    client::HttpClient::http1()
        .get(&format!("http://{addr}/metrics"))
        .await
        .expect("the admin listener answers")
        .text()
}

/// The value of the series `name{labels}` (as written in the exposition, e.g.
/// `pavilion_retries_total{route="shop/orders"}`) in Prometheus text, if it is there.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// Polls `check` every 10 ms until it returns `Some`, or panics after `timeout` naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The condition of `kind` in a JSON object with `conditions` (a status or a resource view).
pub fn condition<'a>(holder: &'a serde_json::Value, kind: &str) -> &'a serde_json::Value {
    holder["conditions"]
        .as_array()
        .and_then(|conditions| conditions.iter().find(|c| c["type"] == kind))
        .unwrap_or_else(|| panic!("no {kind} condition in {holder}"))
}

/// A loopback port that was free a moment ago (for processes that must be told a port).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// An `ApiKey` resource in namespace `shop` for the key `pvk_<id>` (its SHA-256 only), with
/// `scopes` (e.g. `read, write`) and `extra` spec lines (`  tenants: …\n`).
pub fn api_key_resource(id: &str, scopes: &str, extra: &str) -> String {
    use sha2::Digest;
    let hash: String = sha2::Sha256::digest(format!("pvk_{id}").as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!(
        "apiVersion: gateway.pavilion.dev/v1alpha1\nkind: ApiKey\nmetadata: {{ name: {id}, namespace: shop }}\nspec:\n  sha256: '{hash}'\n  scopes: [{scopes}]\n{extra}"
    )
}

/// Resources placing tenant `acme` on one aggregate shard `agg-1` at `endpoint` (a `Shard`
/// and a `TenantPlacement`, YAML documents ending with `---`), for configurations of
/// tenant-scoped routes.
pub fn acme_on_one_shard(endpoint: &str) -> String {
    format!(
        "apiVersion: gateway.pavilion.dev/v1alpha1
kind: Shard
metadata: {{ name: agg-1, namespace: platform }}
spec: {{ service: aggregate, endpoints: ['{endpoint}'] }}
---
apiVersion: gateway.pavilion.dev/v1alpha1
kind: TenantPlacement
metadata: {{ name: acme, namespace: platform }}
spec: {{ tenant: acme, shards: {{ aggregate: agg-1 }} }}
---
"
    )
}

/// The password-reset token in a reset mail: the first non-empty line after the line that
/// announces it.
pub fn reset_token_in(mail: &str) -> String {
    mail.lines()
        .skip_while(|l| !l.contains("Your reset token"))
        .skip(1)
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_else(|| panic!("no reset token in {mail}"))
        .to_owned()
}

/// Proves that the owner of `email` reads its mail, as a person would: asks the identity API
/// at `base` (`http://host:port`) for a password reset, reads the token from the development
/// outbox `outbox` (`--identity-mail file:DIR`), and resets the password to `password`. The
/// address is verified afterwards (what bootstrap administrators need).
pub async fn verify_by_mail(base: &str, outbox: &std::path::Path, email: &str, password: &str) {
    let post = |path: &str, body: serde_json::Value| {
        let url = format!("{base}{path}");
        async move {
            client::HttpClient::http1()
                .call(
                    "POST",
                    &url,
                    &[("content-type", "application/json")],
                    bytes::Bytes::from(body.to_string()),
                )
                .await
                .expect("the identity API answers")
        }
    };
    let before: Vec<_> = std::fs::read_dir(outbox)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    let asked = post("/v1/auth/forgot", serde_json::json!({ "email": email })).await;
    assert_eq!(asked.status, 202, "{}", asked.text());
    let mail = eventually("the reset mail", std::time::Duration::from_secs(10), || {
        let before = before.clone();
        async move {
            let file = std::fs::read_dir(outbox)
                .ok()?
                .flatten()
                .map(|e| e.path())
                .find(|p| !before.contains(p))?;
            let text = std::fs::read_to_string(file).ok()?;
            text.contains("Your reset token").then_some(text)
        }
    })
    .await;
    let token = reset_token_in(&mail);
    let reset = post(
        "/v1/auth/reset",
        serde_json::json!({ "token": token, "password": password }),
    )
    .await;
    assert_eq!(reset.status, 204, "{}", reset.text());
}

/// The TOTP code an authenticator app holding `secret` (base32) shows `offset` seconds from
/// now.
pub fn totp_code(secret: &str, offset: u64) -> String {
    let bytes = totp_rs::Secret::try_from_base32(secret).expect("a base32 secret");
    let totp = totp_rs::Builder::new()
        .with_secret(bytes.as_ref().to_vec())
        .build()
        .expect("a TOTP");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    totp.generate(now + offset).to_string()
}
