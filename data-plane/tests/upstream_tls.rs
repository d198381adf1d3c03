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
