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
