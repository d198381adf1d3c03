//! Rule transforms against a real upstream that echoes what it received: path prefix and
//! regex rewrites, host rewrite, request and response header edits, per-rule body limits.

use bytes::Bytes;
use pavilion_data::{Config, DataPlane};
use pavilion_proto as proto;
use pavilion_tests::Upstream;
use pavilion_tests::client::{HttpClient, Reply};
use pavilion_tests::snapshot::{prefix_rule, route, snapshot};

fn pair(name: &str, value: &str) -> proto::HeaderPair {
    proto::HeaderPair {
        name: name.into(),
        value: value.into(),
    }
}

async fn data_plane(rules: Vec<proto::Rule>) -> DataPlane {
    let dp = pavilion_data::start(Config::local()).await.unwrap();
    dp.apply(snapshot("v1", vec![route("shop/api", &[], rules)]))
        .await
        .unwrap();
    dp
}

async fn send(
    dp: &DataPlane,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &'static [u8],
) -> Reply {
    let url = format!("http://{}{path}", dp.addr);
    HttpClient::http1()
        .call(method, &url, headers, Bytes::from_static(body))
        .await
        .unwrap()
}

#[tokio::test]
async fn paths_hosts_and_headers_are_rewritten_as_the_rule_says() {
    let upstream = Upstream::start("orders").await.unwrap();
    let mut by_prefix = prefix_rule("/api", &[(&upstream.url(), 1)]);
    by_prefix.rewrite = Some(proto::Rewrite {
        path_prefix: "/v2".into(),
        host: "orders.internal".into(),
        ..Default::default()
    });
    by_prefix.request_headers = Some(proto::HeaderEdits {
        remove: vec!["x-drop".into()],
        set: vec![pair("x-set", "gateway")],
        add: vec![pair("x-add", "one")],
    });
    by_prefix.response_headers = Some(proto::HeaderEdits {
        remove: vec!["x-upstream".into()],
        set: vec![pair("cache-control", "no-cache")],
        add: vec![pair("x-served-by", "pavilion")],
    });
    let mut by_regex = prefix_rule("/users", &[(&upstream.url(), 1)]);
    by_regex.rewrite = Some(proto::Rewrite {
        path_regex: "^/users/([0-9]+)/profile$".into(),
        path_substitution: "/profiles/$1".into(),
        ..Default::default()
    });
    let dp = data_plane(vec![by_prefix, by_regex]).await;

    let reply = send(
        &dp,
        "GET",
        "/api/orders/7?expand=lines",
        &[
            ("host", "shop.example.com"),
            ("x-drop", "secret"),
            ("x-set", "client"),
            ("x-add", "client"),
        ],
        b"",
    )
    .await;
    assert_eq!(reply.status, 200);
    let seen = reply.json();
    assert_eq!(seen["path"], "/v2/orders/7");
    assert_eq!(seen["query"], "expand=lines");
    assert_eq!(seen["headers"]["host"], "orders.internal");
    assert_eq!(seen["headers"]["x-forwarded-host"], "shop.example.com");
    assert!(seen["headers"].get("x-drop").is_none(), "{seen}");
    assert_eq!(seen["headers"]["x-set"], "gateway");
    assert_eq!(seen["headers"]["x-add"], "client, one");
    assert_eq!(reply.header("x-upstream"), None);
    assert_eq!(reply.header("cache-control"), Some("no-cache"));
    assert_eq!(reply.header("x-served-by"), Some("pavilion"));
    assert!(
        reply.header("x-request-id").is_some(),
        "the gateway's own headers stay"
    );

    // The prefix itself, and a path the normaliser changed first.
    assert_eq!(
        send(&dp, "GET", "/api", &[], b"").await.json()["path"],
        "/v2"
    );
    assert_eq!(
        send(&dp, "GET", "/api/a/../b", &[], b"").await.json()["path"],
        "/v2/b"
    );

    let profile = send(&dp, "GET", "/users/42/profile", &[], b"").await.json();
    assert_eq!(profile["path"], "/profiles/42");
    let other = send(&dp, "GET", "/users/42/orders", &[], b"").await.json();
    assert_eq!(other["path"], "/users/42/orders", "no match: unchanged");
}

#[tokio::test]
async fn a_rule_may_take_smaller_bodies_than_the_gateway() {
    let upstream = Upstream::start("uploads").await.unwrap();
    let mut small = prefix_rule("/small", &[(&upstream.url(), 1)]);
    small.max_body_bytes = 16;
    small.rewrite = Some(proto::Rewrite {
        path_prefix: "/".into(),
        ..Default::default()
    });
    let dp = data_plane(vec![small, prefix_rule("/", &[(&upstream.url(), 1)])]).await;

    let declared = send(&dp, "POST", "/small/consume", &[], b"0123456789abcdefXYZ").await;
    assert_eq!(declared.status, 413);
    assert_eq!(declared.json()["error"]["code"], "payload_too_large");
    assert!(
        declared.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("16 bytes")
    );
    assert_eq!(
        send(&dp, "POST", "/small/consume", &[], b"0123456789")
            .await
            .text(),
        "10"
    );
    // Another rule keeps the gateway's limit.
    assert_eq!(
        send(&dp, "POST", "/consume", &[], b"0123456789abcdefXYZ")
            .await
            .text(),
        "19"
    );

    // A body of unknown length is cut off at the rule's limit.
    let upload =
        pavilion_tests::client::upload_of((0..4).map(|_| Bytes::from_static(b"0123456789"))).await;
    let url = format!("http://{}/small/consume", dp.addr);
    let response = pavilion_tests::client::send_upload(http::Method::POST, &url, upload, false)
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        413,
        "a streamed body over 16 bytes is refused"
    );
}
