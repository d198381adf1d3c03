//! Last known good: a data plane that restarts without its control plane serves the
//! snapshot it last applied.

use pavilion_data::Config;
use pavilion_tests::Upstream;
use pavilion_tests::client::HttpClient;
use pavilion_tests::snapshot::catch_all;

#[tokio::test]
async fn a_restart_serves_the_cached_snapshot() {
    let upstream = Upstream::start("cached").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("snapshot.pb");
    let mut config = Config::local();
    config.snapshot_cache = Some(cache.clone());
    // Nobody listens here: the data plane keeps retrying in the background.
    config.control_planes = vec![format!("http://127.0.0.1:{}", pavilion_tests::free_port())];

    let first = pavilion_data::start(config.clone()).await.unwrap();
    first
        .apply(catch_all("v7", "ns/r", &upstream.url()))
        .await
        .unwrap();
    first.stop().await;

    let second = pavilion_data::start(config).await.unwrap();
    assert_eq!(second.version(), "v7");
    let ready = HttpClient::http1()
        .get(&format!("http://{}/ready", second.admin_addr))
        .await
        .unwrap();
    assert_eq!(ready.status, 200);
    let reply = HttpClient::http1()
        .get(&format!("http://{}/x", second.addr))
        .await
        .unwrap();
    assert_eq!(reply.header("x-upstream"), Some("cached"));
    second.stop().await;
}

#[tokio::test]
async fn an_unreadable_cache_is_ignored_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("snapshot.pb");
    std::fs::write(&cache, b"garbage").unwrap();
    let mut config = Config::local();
    config.snapshot_cache = Some(cache);
    let dp = pavilion_data::start(config).await.unwrap();
    assert_eq!(dp.version(), "");
    let reply = HttpClient::http1()
        .get(&format!("http://{}/x", dp.addr))
        .await
        .unwrap();
    assert_eq!(reply.status, 503);
    dp.stop().await;
}
