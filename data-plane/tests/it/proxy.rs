//! The proxy against real upstreams on loopback: routing, forwarding headers, errors,
//! limits, streaming, protocol mixes and snapshot swaps.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use pavilion_data::{Config, DataPlane};
use pavilion_proto as proto;
use pavilion_tests::client::{HttpClient, Reply, send_upload, upload_of};
use pavilion_tests::snapshot::{catch_all, prefix_rule, route, snapshot};
use pavilion_tests::{Upstream, free_port};

async fn data_plane() -> DataPlane {
    pavilion_data::start(Config::local())
        .await
        .expect("data plane starts")
}

fn url(dp: &DataPlane, path: &str) -> String {
    format!("http://{}{path}", dp.addr)
}

fn assert_envelope(reply: &Reply, status: u16, code: &str) -> serde_json::Value {
    assert_eq!(reply.status.as_u16(), status, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let body = reply.json();
    assert_eq!(body["error"]["code"], code, "{body}");
    let request_id = reply
        .header("x-request-id")
        .expect("x-request-id on every response");
    assert_eq!(body["error"]["request_id"], request_id);
    body
}

#[tokio::test]
async fn before_any_snapshot_every_request_gets_503_not_ready() {
    let dp = data_plane().await;
    let reply = HttpClient::http1().get(&url(&dp, "/x")).await.unwrap();
    assert_envelope(&reply, 503, "not_ready");
    assert_eq!(reply.header("retry-after"), Some("1"));
    let ready = HttpClient::http1()
        .get(&format!("http://{}/ready", dp.admin_addr))
        .await
        .unwrap();
    assert_eq!(ready.status, 503);
}

#[tokio::test]
async fn forwards_with_forwarding_headers_and_request_id_and_without_hop_by_hop_fields() {
    let upstream = Upstream::start("u1").await.unwrap();
    let dp = data_plane().await;
    dp.apply(catch_all("v1", "shop/orders", &upstream.url()))
        .await
        .unwrap();

    let request = Request::get(url(&dp, "/orders/7?expand=items"))
        .header("host", "Api.Example.com:8080")
        .header("x-request-id", "req-42")
        .header("connection", "x-hop")
        .header("x-hop", "secret")
        .header("keep-alive", "timeout=5")
        .header("x-forwarded-for", "203.0.113.9")
        .body(Full::default())
        .unwrap();
    let reply = HttpClient::http1().send(request).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("x-request-id"), Some("req-42"));
    assert_eq!(reply.header("x-upstream"), Some("u1"));
    let echo = reply.json();
    assert_eq!(echo["path"], "/orders/7");
    assert_eq!(echo["query"], "expand=items");
    let headers = &echo["headers"];
    assert_eq!(
        headers["host"], "Api.Example.com:8080",
        "the client's Host is kept"
    );
    assert_eq!(headers["x-forwarded-host"], "Api.Example.com:8080");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(
        headers["x-forwarded-for"], "127.0.0.1",
        "an untrusted client's own claim is replaced"
    );
    assert_eq!(headers["x-real-ip"], "127.0.0.1");
    assert_eq!(headers["x-forwarded-port"], dp.addr.port().to_string());
    assert_eq!(headers["x-request-id"], "req-42");
    assert!(
        headers.get("x-hop").is_none(),
        "fields named in Connection are hop-by-hop"
    );
    assert!(headers.get("keep-alive").is_none());

    // Without an incoming id, one is made and given to both sides.
    let reply = HttpClient::http1().get(&url(&dp, "/")).await.unwrap();
    let id = reply.header("x-request-id").unwrap().to_owned();
    assert_eq!(id.len(), 36);
    assert_eq!(reply.json()["headers"]["x-request-id"], id.as_str());
}

#[tokio::test]
async fn unmatched_requests_get_404_naming_method_and_path() {
    let upstream = Upstream::start("u1").await.unwrap();
    let dp = data_plane().await;
    dp.apply(snapshot(
        "v1",
        vec![route(
            "shop/orders",
            &["api.example.com"],
            vec![prefix_rule("/orders", &[(&upstream.url(), 1)])],
        )],
    ))
    .await
    .unwrap();
    let request = Request::post(url(&dp, "/nope?q=1"))
        .header("host", "api.example.com")
        .body(Full::default())
        .unwrap();
    let reply = HttpClient::http1().send(request).await.unwrap();
    let body = assert_envelope(&reply, 404, "not_found");
    assert_eq!(body["error"]["message"], "no route matches POST /nope");
    // Same path, other host: no route either.
    let reply = HttpClient::http1().get(&url(&dp, "/orders")).await.unwrap();
    assert_envelope(&reply, 404, "not_found");
}

#[tokio::test]
async fn dot_segments_cannot_escape_a_route() {
    let public = Upstream::start("public").await.unwrap();
    let admin = Upstream::start("admin").await.unwrap();
    let dp = data_plane().await;
    dp.apply(snapshot(
        "v1",
        vec![route(
            "ns/site",
            &[],
            vec![
                prefix_rule("/public", &[(&public.url(), 1)]),
                prefix_rule("/admin", &[(&admin.url(), 1)]),
            ],
        )],
    ))
    .await
    .unwrap();
    let reply = HttpClient::http1()
        .get(&url(&dp, "/public/%2e%2e/admin/users"))
        .await
        .unwrap();
    assert_eq!(
        reply.header("x-upstream"),
        Some("admin"),
        "matched as the path the upstream will see"
    );
    assert_eq!(reply.json()["path"], "/admin/users");
    let reply = HttpClient::http1()
        .get(&url(&dp, "/public/./a"))
        .await
        .unwrap();
    assert_eq!(reply.json()["path"], "/public/a");
}

#[tokio::test]
async fn unreachable_upstream_gets_502_and_slow_upstream_504() {
    let closed_port = free_port();
    let slow = Upstream::start("slow").await.unwrap();
    let dp = data_plane().await;
    let mut slow_rule = prefix_rule("/delay", &[(&slow.url(), 1)]);
    slow_rule.timeout_ms = 200;
    let down = format!("http://127.0.0.1:{closed_port}");
    dp.apply(snapshot(
        "v1",
        vec![route(
            "ns/r",
            &[],
            vec![prefix_rule("/down", &[(&down, 1)]), slow_rule],
        )],
    ))
    .await
    .unwrap();

    let reply = HttpClient::http1().get(&url(&dp, "/down")).await.unwrap();
    let body = assert_envelope(&reply, 502, "upstream_unreachable");
    assert_eq!(
        body["error"]["message"],
        "route ns/r: the upstream could not be reached"
    );

    let reply = HttpClient::http1()
        .get(&url(&dp, "/delay/3000"))
        .await
        .unwrap();
    let body = assert_envelope(&reply, 504, "upstream_timeout");
    assert_eq!(
        body["error"]["message"],
        "route ns/r: the upstream did not answer within 200ms"
    );
}

#[tokio::test]
async fn weights_split_traffic() {
    let heavy = Upstream::start("heavy").await.unwrap();
    let light = Upstream::start("light").await.unwrap();
    let off = Upstream::start("off").await.unwrap();
    let dp = data_plane().await;
    let backends = [(heavy.url(), 3), (light.url(), 1), (off.url(), 0)];
    let backends: Vec<(&str, u32)> = backends.iter().map(|(u, w)| (u.as_str(), *w)).collect();
    dp.apply(snapshot(
        "v1",
        vec![route("ns/r", &[], vec![prefix_rule("/", &backends)])],
    ))
    .await
    .unwrap();
    let client = HttpClient::http1();
    let mut heavy_count = 0;
    for _ in 0..400 {
        let reply = client.get(&url(&dp, "/fast")).await.unwrap();
        match reply.header("x-upstream") {
            Some("heavy") => heavy_count += 1,
            Some("light") => {}
            other => panic!("unexpected upstream {other:?}"),
        }
    }
    // 3:1 gives 300 ± a few dozen; a 1:1 split or no split would fall outside.
    assert!(
        (240..=360).contains(&heavy_count),
        "heavy got {heavy_count} of 400"
    );
}

#[tokio::test]
async fn oversized_headers_get_431_and_bodies_413() {
    let upstream = Upstream::start("u").await.unwrap();
    let mut config = Config::local();
    config.limits.max_header_bytes = 4096;
    config.limits.max_body_bytes = 1000;
    let dp = pavilion_data::start(config).await.unwrap();
    dp.apply(catch_all("v1", "ns/r", &upstream.url()))
        .await
        .unwrap();
    let client = HttpClient::http1();

    let request = Request::get(url(&dp, "/"))
        .header("x-big", "a".repeat(5000))
        .body(Full::default())
        .unwrap();
    assert_envelope(
        &client.send(request).await.unwrap(),
        431,
        "headers_too_large",
    );

    // Declared too large: refused before a byte goes upstream.
    let request = Request::post(url(&dp, "/consume"))
        .body(Full::new(Bytes::from(vec![b'x'; 1001])))
        .unwrap();
    assert_envelope(
        &client.send(request).await.unwrap(),
        413,
        "payload_too_large",
    );

    // Within the limit: forwarded whole.
    let request = Request::post(url(&dp, "/consume"))
        .body(Full::new(Bytes::from(vec![b'x'; 1000])))
        .unwrap();
    let reply = client.send(request).await.unwrap();
    assert_eq!(
        (reply.status.as_u16(), reply.text()),
        (200, "1000".to_owned())
    );

    // Grossly oversized heads are refused by the HTTP layer itself, still without a hang.
    let request = Request::get(url(&dp, "/"))
        .header("x-huge", "a".repeat(64 * 1024))
        .body(Full::default())
        .unwrap();
    assert_eq!(client.send(request).await.unwrap().status, 431);
}

#[tokio::test]
async fn streamed_bodies_over_the_limit_get_413() {
    let upstream = Upstream::start("u").await.unwrap();
    let mut config = Config::local();
    config.limits.max_body_bytes = 1000;
    let dp = pavilion_data::start(config).await.unwrap();
    dp.apply(catch_all("v1", "ns/r", &upstream.url()))
        .await
        .unwrap();
    // Chunked: no Content-Length, so the limit is found while streaming.
    let reply = chunked_post(&url(&dp, "/consume"), 5, 1000).await;
    assert_envelope(&reply, 413, "payload_too_large");
    let reply = chunked_post(&url(&dp, "/consume"), 2, 400).await;
    assert_eq!(
        (reply.status.as_u16(), reply.text()),
        (200, "800".to_owned())
    );
}

/// POSTs `chunks` chunks of `size` bytes with chunked transfer encoding.
async fn chunked_post(url: &str, chunks: usize, size: usize) -> Reply {
    use http_body_util::BodyExt;
    let body = upload_of((0..chunks).map(|_| Bytes::from(vec![b'y'; size]))).await;
    let response = send_upload(http::Method::POST, url, body, false)
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

#[tokio::test]
async fn h2c_clients_and_h2c_backends() {
    let upstream = Upstream::start("grpcish").await.unwrap();
    let dp = data_plane().await;
    let h2c_backend = format!("h2c://{}", upstream.addr);
    dp.apply(snapshot(
        "v1",
        vec![route(
            "ns/r",
            &[],
            vec![
                prefix_rule("/h2", &[(&h2c_backend, 1)]),
                prefix_rule("/", &[(&upstream.url(), 1)]),
            ],
        )],
    ))
    .await
    .unwrap();

    let reply = HttpClient::h2c().get(&url(&dp, "/plain")).await.unwrap();
    assert_eq!(reply.status, 200);
    let echo = reply.json();
    assert_eq!(
        echo["version"], "HTTP/1.1",
        "an HTTP/2 client reaches an HTTP/1.1 backend"
    );
    assert_eq!(
        echo["headers"]["host"],
        dp.addr.to_string(),
        "the :authority becomes Host"
    );

    let reply = HttpClient::http1().get(&url(&dp, "/h2")).await.unwrap();
    assert_eq!(
        reply.json()["version"],
        "HTTP/2.0",
        "h2c backends are spoken to in HTTP/2"
    );
}

#[tokio::test]
async fn invalid_snapshots_are_refused_and_the_current_one_keeps_serving() {
    let upstream = Upstream::start("u").await.unwrap();
    let dp = data_plane().await;
    dp.apply(catch_all("v1", "ns/r", &upstream.url()))
        .await
        .unwrap();
    let mut bad = prefix_rule("/", &[(&upstream.url(), 1)]);
    bad.matches[0].path = Some(proto::PathMatch {
        r#type: proto::PathMatchType::RegularExpression as i32,
        value: "/(".into(),
        ignore_case: false,
    });
    let error = dp
        .apply(snapshot("v2", vec![route("ns/bad", &[], vec![bad])]))
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("route ns/bad: rule 0: invalid regular expression"),
        "{error}"
    );
    let no_backend = snapshot("v3", vec![route("ns/r", &[], vec![prefix_rule("/", &[])])]);
    assert!(dp.apply(no_backend).await.is_err());
    assert_eq!(dp.version(), "v1");
    assert_eq!(
        HttpClient::http1()
            .get(&url(&dp, "/"))
            .await
            .unwrap()
            .status,
        200
    );
}

#[tokio::test]
async fn a_swap_never_breaks_an_in_flight_request() {
    let old = Upstream::start("old").await.unwrap();
    let new = Upstream::start("new").await.unwrap();
    let dp = data_plane().await;
    dp.apply(catch_all("v1", "ns/r", &old.url())).await.unwrap();
    let client = HttpClient::http1();
    let in_flight = {
        let client = client.clone();
        let url = url(&dp, "/delay/400");
        tokio::spawn(async move { client.get(&url).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    dp.apply(catch_all("v2", "ns/r", &new.url())).await.unwrap();
    assert_eq!(
        client
            .get(&url(&dp, "/"))
            .await
            .unwrap()
            .header("x-upstream"),
        Some("new")
    );
    let finished = in_flight.await.unwrap().unwrap();
    assert_eq!(finished.status, 200);
    assert_eq!(
        finished.header("x-upstream"),
        Some("old"),
        "it finishes where it started"
    );
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status_class() {
    let upstream = Upstream::start("u").await.unwrap();
    let dp = data_plane().await;
    dp.apply(snapshot(
        "v1",
        vec![route(
            "shop/orders",
            &[],
            vec![prefix_rule("/orders", &[(&upstream.url(), 1)])],
        )],
    ))
    .await
    .unwrap();
    let client = HttpClient::http1();
    client.get(&url(&dp, "/orders")).await.unwrap();
    client.get(&url(&dp, "/orders/x")).await.unwrap();
    client.get(&url(&dp, "/missing")).await.unwrap();
    let metrics = client
        .get(&format!("http://{}/metrics", dp.admin_addr))
        .await
        .unwrap()
        .text();
    for line in [
        r#"pavilion_requests_total{class="2xx",route="shop/orders"} 2"#,
        r#"pavilion_requests_total{class="4xx",route=""} 1"#,
        r#"pavilion_request_duration_seconds_count{route="shop/orders"} 2"#,
        "pavilion_snapshots_applied_total 1",
        r#"pavilion_snapshot_info{version="v1"} 1"#,
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
    let ready = client
        .get(&format!("http://{}/ready", dp.admin_addr))
        .await
        .unwrap();
    assert_eq!(
        (ready.status.as_u16(), ready.json()["version"].clone()),
        (200, "v1".into())
    );
}

#[tokio::test]
async fn an_upload_over_the_limit_never_looks_like_a_success() {
    // The echo upstream answers before the upload ends, so the limit may be crossed after
    // the response started: the client must then see the response fail, not a clean 200.
    let upstream = Upstream::start("echo").await.unwrap();
    let mut config = Config::local();
    config.limits.max_body_bytes = 1000;
    let dp = pavilion_data::start(config).await.unwrap();
    dp.apply(catch_all("v1", "ns/r", &upstream.url()))
        .await
        .unwrap();
    use http_body_util::BodyExt;
    let body = upload_of((0..5).map(|_| Bytes::from(vec![b'z'; 1000]))).await;
    let response = send_upload(http::Method::POST, &url(&dp, "/echo-body"), body, false)
        .await
        .unwrap();
    if response.status() == 200 {
        let body = response.into_body().collect().await;
        assert!(
            body.is_err(),
            "a 200 whose body completes would hide the cut-off upload"
        );
    } else {
        assert_eq!(response.status(), 413);
    }
}

#[tokio::test]
async fn every_request_has_one_whole_access_line_in_the_file_when_the_data_plane_stops() {
    use pavilion_data::access_log::{AccessLogOptions, Destination, FileSink, Layout};
    let upstream = Upstream::start("u1").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let mut config = Config::local();
    config.access_log = Some(AccessLogOptions {
        layout: Layout::Json,
        destination: Destination::File(FileSink {
            path: path.clone(),
            max_bytes: 1 << 20,
            keep: 1,
        }),
    });
    let dp = pavilion_data::start(config).await.unwrap();
    dp.apply(catch_all("v1", "shop/orders", &upstream.url()))
        .await
        .unwrap();
    // Many connections, so both workers log; a query that must not reach the log.
    const REQUESTS: usize = 200;
    let sent = futures::future::join_all((0..REQUESTS).map(|n| {
        let url = url(&dp, &format!("/orders/{n}?token=secret"));
        async move { HttpClient::http1().get(&url).await.unwrap() }
    }))
    .await;
    assert!(sent.iter().all(|reply| reply.status == 200));
    // The interval flush makes lines visible while the data plane runs…
    pavilion_tests::eventually("lines while running", Duration::from_secs(5), || async {
        std::fs::read_to_string(&path)
            .is_ok_and(|text| text.lines().count() == REQUESTS)
            .then_some(())
    })
    .await;
    // …and a stop writes the rest.
    let more = HttpClient::http1()
        .get(&url(&dp, "/orders/last"))
        .await
        .unwrap();
    dp.stop().await;
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains("secret"), "the query stays out of the log");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("whole JSON lines"))
        .collect();
    assert_eq!(lines.len(), REQUESTS + 1);
    let last = lines
        .iter()
        .find(|line| line["path"] == "/orders/last")
        .expect("the request just before the stop");
    assert_eq!(last["request_id"], more.header("x-request-id").unwrap());
    assert_eq!(last["route"], "shop/orders");
    assert_eq!(last["upstream"], upstream.url().as_str());
    assert_eq!(last["status"], 200);
}
