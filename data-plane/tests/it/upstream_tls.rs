//! `https://` backends: verified against the configured CA, with the backend's host as SNI.

use pavilion_data::Config;
use pavilion_tests::client::HttpClient;
use pavilion_tests::snapshot::catch_all;
use pavilion_tests::tls::{TestCa, TlsUpstream};

#[tokio::test]
async fn https_backends_are_verified_against_the_configured_ca() {
    let ca = TestCa::new();
    let upstream = TlsUpstream::start("secure", ca.server_config(&["localhost"]))
        .await
        .unwrap();
    let backend = format!("https://localhost:{}", upstream.addr.port());

    let mut config = Config::local();
    config.upstream.extra_roots = vec![ca.certificate_der()];
    let trusting = pavilion_data::start(config).await.unwrap();
    let untrusting = pavilion_data::start(Config::local()).await.unwrap();
    for dp in [&trusting, &untrusting] {
        dp.apply(catch_all("v1", "ns/tls", &backend)).await.unwrap();
    }

    let reply = HttpClient::http1()
        .get(&format!("http://{}/hello", trusting.addr))
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("x-upstream"), Some("secure"));
    assert_eq!(reply.json()["path"], "/hello");

    // A certificate from an unknown CA is a failed connection, not a silent downgrade.
    let reply = HttpClient::http1()
        .get(&format!("http://{}/hello", untrusting.addr))
        .await
        .unwrap();
    assert_eq!(reply.status, 502);
    assert_eq!(reply.json()["error"]["code"], "upstream_unreachable");
}

#[tokio::test]
async fn a_rule_can_name_the_tls_server_of_backends_addressed_by_ip() {
    let ca = TestCa::new();
    let upstream = TlsUpstream::start("internal", ca.server_config(&["orders.internal"]))
        .await
        .unwrap();
    let backend = format!("https://127.0.0.1:{}", upstream.addr.port());
    let mut config = Config::local();
    config.upstream.extra_roots = vec![ca.certificate_der()];
    let dp = pavilion_data::start(config).await.unwrap();

    let mut named = pavilion_tests::snapshot::prefix_rule("/named", &[(&backend, 1)]);
    named.upstream_server_name = "orders.internal".into();
    let plain = pavilion_tests::snapshot::prefix_rule("/plain", &[(&backend, 1)]);
    let mut wrong = pavilion_tests::snapshot::prefix_rule("/wrong", &[(&backend, 1)]);
    wrong.upstream_server_name = "billing.internal".into();
    let routes = vec![pavilion_tests::snapshot::route(
        "shop/internal",
        &[],
        vec![named, plain, wrong],
    )];
    dp.apply(pavilion_tests::snapshot::snapshot("v1", routes))
        .await
        .unwrap();

    let client = HttpClient::http1();
    let reply = client
        .get(&format!("http://{}/named/x", dp.addr))
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("x-upstream"), Some("internal"));
    // The certificate names orders.internal, not 127.0.0.1 or billing.internal.
    for path in ["/plain/x", "/wrong/x"] {
        let reply = client
            .get(&format!("http://{}{path}", dp.addr))
            .await
            .unwrap();
        assert_eq!(reply.status, 502, "{path}: {}", reply.text());
    }
}

#[tokio::test]
async fn rules_may_offer_http2_to_https_backends_by_alpn() {
    let ca = TestCa::new();
    let h2 = TlsUpstream::start(
        "h2",
        ca.server_config_alpn(&["localhost"], &[b"h2", b"http/1.1"]),
    )
    .await
    .unwrap();
    let h1_only = TlsUpstream::start("h1", ca.server_config(&["localhost"]))
        .await
        .unwrap();
    let mut config = Config::local();
    config.upstream.extra_roots = vec![ca.certificate_der()];
    let dp = pavilion_data::start(config).await.unwrap();
    let rule = |prefix: &str, port: u16, http2: bool| {
        let mut rule = pavilion_tests::snapshot::prefix_rule(
            prefix,
            &[(&format!("https://localhost:{port}"), 1)],
        );
        rule.upstream_http2 = http2;
        rule
    };
    dp.apply(pavilion_tests::snapshot::snapshot(
        "v1",
        vec![pavilion_tests::snapshot::route(
            "ns/tls",
            &[],
            vec![
                rule("/h2", h2.addr.port(), true),
                rule("/fallback", h1_only.addr.port(), true),
                rule("/plain", h2.addr.port(), false),
            ],
        )],
    ))
    .await
    .unwrap();
    let get = |path: &'static str| {
        let url = format!("http://{}{path}", dp.addr);
        async move {
            HttpClient::http1()
                .get_with(&url, &[("host", "shop.example.com")])
                .await
                .unwrap()
                .json()
        }
    };
    let seen = get("/h2").await;
    assert_eq!(seen["version"], "HTTP/2.0", "{seen}");
    assert_eq!(
        seen["headers"]["x-forwarded-host"], "shop.example.com",
        "the client's host travels in x-forwarded-host"
    );
    let seen = get("/fallback").await;
    assert_eq!(
        seen["version"], "HTTP/1.1",
        "a backend without h2 gets HTTP/1.1: {seen}"
    );
    assert_eq!(
        seen["headers"]["host"].as_str().unwrap(),
        format!("localhost:{}", h1_only.addr.port())
    );
    let seen = get("/plain").await;
    assert_eq!(
        seen["version"], "HTTP/1.1",
        "without http2 the rule offers HTTP/1.1 only"
    );
    assert_eq!(seen["headers"]["host"], "shop.example.com");
}
