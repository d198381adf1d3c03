//! `explain` agrees with the gateway: for a table of requests, the report of
//! `pavilion-control explain` (compiling the same directory) and of a data plane's
//! `POST /admin/explain` are the same, and the real request through that data plane ends as
//! they say — the same status and error code when a phase refuses, the named upstream when
//! it is forwarded.

use std::path::Path;
use std::time::Duration;

use pavilion_control::{Config as ControlConfig, SourceSpec};
use pavilion_data::Config as DataConfig;
use pavilion_tests::client::HttpClient;
use pavilion_tests::{Upstream, eventually};
use serde_json::{Value, json};

fn api_key(id: &str, extra: &str) -> String {
    pavilion_tests::api_key_resource(id, "read", extra)
}

fn resources(a: &str, b: &str) -> String {
    format!(
        "apiVersion: gateway.pavilion.dev/v1alpha1
kind: Route
metadata: {{ name: shop, namespace: shop }}
spec:
  hosts: [shop.test]
  rules:
    - matches: [{{ path: {{ type: PathPrefix, value: /v2 }}, headers: [{{ name: x-beta, value: '1' }}] }}]
      backends: [{{ url: '{b}' }}]
    - matches: [{{ path: {{ type: PathPrefix, value: /v2 }}, methods: [GET] }}]
      backends: [{{ url: '{a}' }}]
    - matches: [{{ path: {{ type: PathPrefix, value: /internal }} }}]
      ipAllow: [10.0.0.0/8]
      backends: [{{ url: '{b}' }}]
    - matches: [{{ path: {{ type: PathPrefix, value: /orders }} }}]
      auth: {{ apiKeys: {{}} }}
      tenancy: {{}}
      authorize: {{ roles: [tenant-admin] }}
      backends: [{{ url: '{a}' }}]
    - matches: [{{ path: {{ type: PathPrefix, value: / }}, methods: [GET] }}]
      backends: [{{ url: '{a}' }}]
---
apiVersion: gateway.pavilion.dev/v1alpha1
kind: RateLimitPolicy
metadata: {{ name: shop-limit, namespace: shop }}
spec:
  targetRef: {{ kind: Route, name: shop }}
  limits: [{{ key: [clientIp], requests: 1000, per: 1m }}]
---
{}---
{}",
        api_key("admin", "  tenants: { acme: [tenant-admin] }\n"),
        api_key("viewer", "  tenants: { acme: [tenant-viewer] }\n"),
    )
}

/// Header fields of a described request.
type Headers = &'static [(&'static str, &'static str)];

/// (method, path, headers) — every phase decides at least once.
const TABLE: &[(&str, &str, Headers)] = &[
    ("GET", "/v2/items", &[]),
    ("GET", "/v2/items", &[("x-beta", "1")]),
    ("DELETE", "/v2/items", &[]),
    ("GET", "/internal/stats", &[]),
    ("GET", "/orders/1", &[]),
    ("GET", "/orders/1", &[("x-api-key", "pvk_wrong")]),
    (
        "GET",
        "/orders/1",
        &[("x-api-key", "pvk_admin"), ("x-tenant-id", "acme")],
    ),
    (
        "GET",
        "/orders/1",
        &[("x-api-key", "pvk_admin"), ("x-tenant-id", "globex")],
    ),
    (
        "GET",
        "/orders/1",
        &[("x-api-key", "pvk_viewer"), ("x-tenant-id", "acme")],
    ),
    ("GET", "/%2e%2e/orders/1", &[]),
    ("GET", "/a%2fb", &[]),
    ("GET", "/elsewhere", &[]),
];

#[tokio::test]
async fn explain_and_the_data_plane_agree() {
    let a = Upstream::start("a").await.unwrap();
    let b = Upstream::start("b").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("shop.yaml"), resources(&a.url(), &b.url())).unwrap();
    let names = [(a.url(), "a"), (b.url(), "b")];

    let cp = pavilion_control::start(ControlConfig::local(SourceSpec::Dir(dir.path().into())))
        .await
        .unwrap();
    let mut config = DataConfig::local();
    config.control_planes = vec![format!("http://{}", cp.grpc_addr)];
    let dp = pavilion_data::start(config).await.unwrap();
    eventually("the first snapshot", Duration::from_secs(5), || async {
        (!dp.version().is_empty()).then_some(())
    })
    .await;

    let mut seen = std::collections::BTreeSet::new();
    for (method, path, headers) in TABLE {
        let url = format!("http://shop.test{path}");
        let cli = cli_report(dir.path(), method, &url, headers);
        let admin = admin_report(dp.admin_addr, method, &url, headers).await;
        assert_eq!(
            cli, admin,
            "{method} {path}: the CLI and the data plane disagree"
        );

        let reply = real(dp.addr, method, path, headers).await;
        let outcome = &admin["outcome"];
        let what = format!("{method} {path} {headers:?}: explained as {admin:#}");
        seen.insert(outcome["code"].as_str().map_or_else(
            || format!("forwarded to {}", reply.header("x-upstream").unwrap_or("?")),
            str::to_owned,
        ));
        match outcome["status"].as_u64() {
            Some(status) => {
                assert_eq!(u64::from(reply.status.as_u16()), status, "{what}");
                assert_eq!(reply.json()["error"]["code"], outcome["code"], "{what}");
            }
            None => {
                assert_eq!(reply.status, 200, "{what}");
                let upstream = admin["upstream"]
                    .as_str()
                    .expect("a forwarded request names its upstream");
                let name = names
                    .iter()
                    .find(|(url, _)| url.trim_end_matches('/') == upstream.trim_end_matches('/'))
                    .map(|(_, n)| *n);
                assert_eq!(reply.header("x-upstream"), name, "{what}");
            }
        }
    }

    // The table reaches every kind of verdict.
    let seen: Vec<&str> = seen.iter().map(String::as_str).collect();
    assert_eq!(
        seen,
        [
            "bad_request",
            "forwarded to a",
            "forwarded to b",
            "invalid_api_key",
            "ip_denied",
            "missing_credentials",
            "not_found",
            "tenant_forbidden",
            "unknown_tenant",
        ],
    );

    // The human form names the decisive phase of a refusal.
    let text = cli_text(
        dir.path(),
        &["GET http://shop.test/internal/x", "--client", "192.0.2.7"],
    );
    assert!(text.contains("▶ shop/shop rules[2]"), "{text}");
    assert!(text.contains("ip         deny"), "{text}");
    assert!(text.contains("outcome: 403"), "{text}");
    let inside = cli_text(
        dir.path(),
        &["GET http://shop.test/internal/x", "--client", "10.1.2.3"],
    );
    assert!(
        inside.contains(&format!("upstream: {}", b.url())),
        "{inside}"
    );
}

fn cli_text(dir: &Path, args: &[&str]) -> String {
    let output = std::process::Command::new(pavilion_tests::process::binary("pavilion-control"))
        .arg("explain")
        .arg("--source")
        .arg(format!("dir:{}", dir.display()))
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn cli_report(dir: &Path, method: &str, url: &str, headers: &[(&str, &str)]) -> Value {
    let mut args = vec![format!("{method} {url}"), "--json".into()];
    for (name, value) in headers {
        args.push("-H".into());
        args.push(format!("{name}: {value}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    serde_json::from_str(&cli_text(dir, &args)).unwrap()
}

async fn admin_report(
    admin: std::net::SocketAddr,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> Value {
    let body = json!({ "method": method, "url": url, "headers": headers });
    let request = http::Request::post(format!("http://{admin}/admin/explain"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))
        .unwrap();
    let reply = HttpClient::http1().send(request).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()
}

async fn real(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> pavilion_tests::client::Reply {
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("host", "shop.test");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    HttpClient::http1().send(request).await.unwrap()
}
