//! The secure front door with the real binaries: an API key made by the CLI and a JWT from
//! a live JWKS endpoint, over HTTPS with the redirect listener — and neither credential in
//! any log line.

use std::process::Command;
use std::time::Duration;

use pavilion_e2e::{ControlProcess, STARTUP, UpstreamProcess};
use pavilion_tests::client::HttpClient;
use pavilion_tests::jwt::{JwksServer, SigningKey, claims};
use pavilion_tests::process::{Child, binary};
use pavilion_tests::tls::{TestCa, TlsConnection};
use pavilion_tests::{eventually, free_port};

const ISSUER: &str = "https://idp.e2e.test";

#[tokio::test]
async fn https_with_api_keys_and_jwts_and_no_credential_in_any_log() {
    let upstream = UpstreamProcess::start("orders").await;
    let signer = SigningKey::ec("e2e-1");
    let jwks = JwksServer::start(vec![signer.jwk.clone()]).await;
    let config = tempfile::tempdir().unwrap();

    // An API key as an operator makes one: the resource on stdout, the key once on stderr.
    let made = Command::new(binary("pavilion-control"))
        .args([
            "api-key",
            "new",
            "--id",
            "mobile",
            "--namespace",
            "e2e",
            "--scopes",
            "read",
        ])
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let stderr = String::from_utf8(made.stderr).unwrap();
    let key = stderr.rsplit(' ').next().unwrap().trim().to_owned();
    assert!(key.starts_with("pvk_"), "{stderr}");
    let resource = String::from_utf8(made.stdout).unwrap();
    assert!(
        !resource.contains(&key),
        "the resource holds the hash, not the key"
    );
    std::fs::write(config.path().join("mobile.yaml"), resource).unwrap();
    std::fs::write(
        config.path().join("orders.yaml"),
        format!(
            "apiVersion: gateway.pavilion.dev/v1alpha1
kind: Route
metadata: {{ name: orders, namespace: e2e }}
spec:
  hosts: [api.e2e.test]
  rules:
    - backends: [{{ url: '{}' }}]
      auth:
        jwt:
          - issuer: {ISSUER}
            jwksUri: {}
            audiences: [orders]
        apiKeys: {{}}
",
            upstream.url,
            jwks.url()
        ),
    )
    .unwrap();
    let control = ControlProcess::start(config.path(), free_port()).await;

    let ca = TestCa::new();
    let (cert, cert_key, _) = ca.leaf_pem(&["api.e2e.test"]);
    let tls = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = (tls.path().join("tls.crt"), tls.path().join("tls.key"));
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, cert_key).unwrap();
    let (listen, admin, redirect) = (free_port(), free_port(), free_port());
    let data = Child::spawn(
        "pavilion-data",
        &binary("pavilion-data"),
        &[
            "run",
            "--control-plane",
            &format!("http://{}", control.grpc),
            "--listen",
            &format!("127.0.0.1:{listen}"),
            "--admin-listen",
            &format!("127.0.0.1:{admin}"),
            "--tls-cert",
            cert_file.to_str().unwrap(),
            "--tls-key",
            key_file.to_str().unwrap(),
            "--redirect-listen",
            &format!("127.0.0.1:{redirect}"),
            "--redirect-port",
            "443",
            "--access-log",
            "true",
            "--workers",
            "1",
        ],
    );
    eventually("the data plane is ready", STARTUP, || async move {
        let reply = HttpClient::http1()
            .get(&format!("http://127.0.0.1:{admin}/ready"))
            .await
            .ok()?;
        (reply.status == 200).then_some(())
    })
    .await;

    let addr = format!("127.0.0.1:{listen}").parse().unwrap();
    let mut connection = TlsConnection::open(
        addr,
        "api.e2e.test",
        ca.client_config(&[b"h2", b"http/1.1"], None),
    )
    .await
    .unwrap();
    assert_eq!(connection.alpn.as_deref(), Some(&b"h2"[..]));

    let reply = connection.get("/orders").await.unwrap();
    assert_eq!(reply.status, 401, "{}", reply.text());
    assert_eq!(reply.json()["error"]["code"], "missing_credentials");
    assert!(reply.header("strict-transport-security").is_some());

    let reply = connection
        .get_with("/orders", &[("x-api-key", &key)])
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["headers"]["x-auth-key-id"], "mobile");
    let reply = connection
        .get_with("/orders", &[("x-api-key", &key)])
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    let reply = connection
        .get_with("/admin/x", &[("x-api-key", &key)])
        .await
        .unwrap();
    assert_eq!(reply.json()["error"]["code"], "insufficient_scope");

    let token = signer.sign(&claims(ISSUER, "orders", "alice"));
    let reply = connection
        .get_with("/orders", &[("authorization", &format!("Bearer {token}"))])
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["headers"]["x-auth-subject"], "alice");
    let forged = format!("{}x", &token[..token.len() - 1]);
    let reply = connection
        .get_with("/orders", &[("authorization", &format!("Bearer {forged}"))])
        .await
        .unwrap();
    assert_eq!(reply.json()["error"]["code"], "invalid_token");

    let request = http::Request::get(format!("http://127.0.0.1:{redirect}/orders?page=2"))
        .header("host", "api.e2e.test")
        .body(http_body_util::Full::default())
        .unwrap();
    let reply = HttpClient::http1().send(request).await.unwrap();
    assert_eq!(reply.status, 308);
    assert_eq!(
        reply.header("location"),
        Some("https://api.e2e.test/orders?page=2")
    );

    // Both resources are reported accepted and programmed.
    let status = control.status().await;
    let accepted = |name: &str| {
        status["resources"].as_array().unwrap().iter().any(|r| {
            r["name"] == name
                && r["conditions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|c| c["type"] == "Accepted" && c["status"] == "True")
        })
    };
    assert!(accepted("mobile") && accepted("orders"), "{status:#}");

    // The access log names the identity; no log line holds a credential.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = data.output() + &control.child.output();
    assert!(
        logs.contains("key:mobile") && logs.contains("sub:alice"),
        "{logs}"
    );
    for secret in [&key, &token, &forged] {
        assert!(
            !logs.contains(secret.as_str()),
            "a credential leaked into the logs"
        );
    }
}

/// Writes `contents` to `dir/name` and returns the path as text.
fn file(dir: &std::path::Path, name: &str, contents: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path.to_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_control_channel_with_mutual_tls_through_the_real_binaries() {
    let upstream = UpstreamProcess::start("orders").await;
    let config = tempfile::tempdir().unwrap();
    std::fs::write(
        config.path().join("orders.yaml"),
        pavilion_e2e::route_yaml("orders", "/orders", &upstream.url),
    )
    .unwrap();
    let pki = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let ca_file = file(pki.path(), "ca.pem", &ca.certificate_pem());
    let (cert, key, _) = ca.leaf_pem(&["control.e2e.test"]);
    let cp_cert = file(pki.path(), "cp.pem", &cert);
    let cp_key = file(pki.path(), "cp.key", &key);
    let (cert, key, _) = ca.leaf_pem(&["dp-e2e"]);
    let dp_cert = file(pki.path(), "dp.pem", &cert);
    let dp_key = file(pki.path(), "dp.key", &key);

    let cp = pavilion_e2e::ControlProcess::start_with(
        config.path(),
        free_port(),
        &[
            "--grpc-tls-cert",
            &cp_cert,
            "--grpc-tls-key",
            &cp_key,
            "--grpc-client-ca",
            &ca_file,
        ],
    )
    .await;
    let cache = tempfile::tempdir().unwrap();
    let dp = pavilion_e2e::DataProcess::start_with(
        &cp.grpc,
        &cache.path().join("snapshot.bin"),
        free_port(),
        &[
            "--control-plane-ca",
            &ca_file,
            "--control-plane-cert",
            &dp_cert,
            "--control-plane-key",
            &dp_key,
            "--control-plane-server-name",
            "control.e2e.test",
            "--node-id",
            "dp-e2e",
        ],
    )
    .await;
    assert_eq!(
        dp.served_by("/orders/1").await,
        (200, Some("orders".into()))
    );
    let status = cp.status().await;
    assert_eq!(status["nodes"][0]["id"], "dp-e2e");
    assert_eq!(status["nodes"][0]["authenticated"], true);
    assert!(
        !cp.child.output().contains("NOT encrypted"),
        "no cleartext warning with TLS on"
    );

    // A data plane presenting no certificate gets nothing, and says why in its log.
    let no_cert_cache = tempfile::tempdir().unwrap();
    let admin = format!("127.0.0.1:{}", free_port());
    let listen = format!("127.0.0.1:{}", free_port());
    let mut stranger = Child::spawn(
        "pavilion-data-without-certificate",
        &binary("pavilion-data"),
        &[
            "run",
            "--control-plane",
            &cp.grpc,
            "--control-plane-ca",
            &ca_file,
            "--control-plane-server-name",
            "control.e2e.test",
            "--listen",
            &listen,
            "--admin-listen",
            &admin,
            "--snapshot-cache",
            no_cert_cache.path().join("s.bin").to_str().unwrap(),
            "--node-id",
            "intruder",
        ],
    );
    eventually("the refused stream in the log", STARTUP, || async {
        stranger
            .output()
            .contains("snapshot stream down")
            .then_some(())
    })
    .await;
    let ready = HttpClient::http1()
        .get(&format!("http://{admin}/ready"))
        .await
        .unwrap();
    assert_eq!(ready.status, 503, "no snapshot without a certificate");
    assert!(stranger.is_running());
    assert_eq!(
        cp.status().await["nodes"].as_array().unwrap().len(),
        1,
        "the intruder is not listed"
    );
}
