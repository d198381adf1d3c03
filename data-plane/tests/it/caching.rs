//! The response cache against a real upstream that counts what reaches it: hits and misses,
//! Cache-Control and Vary honoured, credentials never shared unless public, coalesced miss
//! storms, expiry, key headers and purges.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use pavilion_data::{Config, DataPlane};
use pavilion_proto as proto;
use pavilion_tests::client::{HttpClient, Reply};
use pavilion_tests::snapshot::{prefix_rule, route, snapshot};

type Seen = Arc<Mutex<HashMap<String, usize>>>;

/// Answers `/{kind}/…` with the `Cache-Control` of the kind, a body naming how many times
/// that path was asked, and `Vary: accept-language` on `/vary`; `/slow` takes 300 ms.
async fn upstream() -> (String, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen: Seen = Arc::default();
    let counts = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counts = counts.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let counts = counts.clone();
                    async move {
                        let target = request.uri().to_string();
                        let n = {
                            let mut counts = counts.lock().unwrap();
                            let n = counts.entry(target.clone()).or_insert(0);
                            *n += 1;
                            *n
                        };
                        let kind = request
                            .uri()
                            .path()
                            .split('/')
                            .nth(1)
                            .unwrap_or_default()
                            .to_owned();
                        let control = match kind.as_str() {
                            "nostore" => "no-store",
                            "private" => "private, max-age=60",
                            "public" => "public, max-age=60",
                            "short" => "max-age=1",
                            "none" => "",
                            _ => "max-age=60",
                        };
                        if kind == "slow" {
                            tokio::time::sleep(Duration::from_millis(300)).await;
                        }
                        let language = request
                            .headers()
                            .get("accept-language")
                            .map(|v| v.to_str().unwrap().to_owned())
                            .unwrap_or_default();
                        let body = format!("{target} #{n} {language}");
                        let mut response = Response::new(Full::new(Bytes::from(body)));
                        let headers = response.headers_mut();
                        headers.insert("content-type", "text/plain".parse().unwrap());
                        if !control.is_empty() {
                            headers.insert("cache-control", control.parse().unwrap());
                        }
                        if kind == "vary" {
                            headers.insert("vary", "Accept-Language".parse().unwrap());
                        }
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (url, seen)
}

fn count(seen: &Seen, target: &str) -> usize {
    seen.lock().unwrap().get(target).copied().unwrap_or(0)
}

async fn data_plane(cache: proto::Cache) -> (DataPlane, Seen) {
    let (backend, seen) = upstream().await;
    let mut rule = prefix_rule("/", &[(&backend, 1)]);
    rule.cache = Some(cache);
    let dp = pavilion_data::start(Config::local()).await.unwrap();
    dp.apply(snapshot("v1", vec![route("shop/catalog", &[], vec![rule])]))
        .await
        .unwrap();
    (dp, seen)
}

fn settings() -> proto::Cache {
    proto::Cache {
        default_ttl_ms: 0,
        max_ttl_ms: 3_600_000,
        max_entry_bytes: 1 << 20,
        key_headers: vec!["x-tenant".into()],
    }
}

async fn send(dp: &DataPlane, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let url = format!("http://{}{path}", dp.addr);
    HttpClient::http1()
        .call(method, &url, headers, Bytes::new())
        .await
        .unwrap()
}

async fn get(dp: &DataPlane, path: &str, headers: &[(&str, &str)]) -> Reply {
    send(dp, "GET", path, headers).await
}

#[tokio::test]
async fn fresh_responses_are_served_again_as_cache_control_allows() {
    let (dp, seen) = data_plane(settings()).await;
    let first = get(&dp, "/fresh/a", &[]).await;
    assert_eq!(first.header("x-cache"), Some("MISS"));
    let second = get(&dp, "/fresh/a", &[]).await;
    assert_eq!(second.header("x-cache"), Some("HIT"));
    assert_eq!(second.text(), first.text());
    assert!(second.header("age").is_some());
    assert!(second.header("x-request-id").is_some());
    assert_ne!(second.header("x-request-id"), first.header("x-request-id"));
    assert_eq!(count(&seen, "/fresh/a"), 1);

    // The query is part of the key; so is a key header.
    assert_eq!(
        get(&dp, "/fresh/a?page=2", &[]).await.header("x-cache"),
        Some("MISS")
    );
    assert_eq!(
        get(&dp, "/fresh/a", &[("x-tenant", "acme")])
            .await
            .header("x-cache"),
        Some("MISS")
    );
    assert_eq!(
        get(&dp, "/fresh/a", &[("x-tenant", "acme")])
            .await
            .header("x-cache"),
        Some("HIT")
    );

    // HEAD is answered from the stored GET, without a body.
    let head = send(&dp, "HEAD", "/fresh/a", &[]).await;
    assert_eq!(head.header("x-cache"), Some("HIT"));
    assert!(head.body.is_empty());

    // Never stored: no-store, private, no freshness stated.
    for path in ["/nostore/a", "/private/a", "/none/a"] {
        get(&dp, path, &[]).await;
        assert_eq!(
            get(&dp, path, &[]).await.header("x-cache"),
            Some("MISS"),
            "{path}"
        );
        assert_eq!(count(&seen, path), 2, "{path}");
    }

    // A client asking for a fresh answer gets one (and refreshes the entry).
    let fresh = get(&dp, "/fresh/a", &[("cache-control", "no-cache")]).await;
    assert_eq!(fresh.header("x-cache"), Some("MISS"));
    assert_eq!(
        count(&seen, "/fresh/a"),
        3,
        "the first miss, x-tenant: acme, and now"
    );
    assert_eq!(get(&dp, "/fresh/a", &[]).await.text(), fresh.text());

    // Expiry: max-age=1.
    get(&dp, "/short/a", &[]).await;
    assert_eq!(
        get(&dp, "/short/a", &[]).await.header("x-cache"),
        Some("HIT")
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        get(&dp, "/short/a", &[]).await.header("x-cache"),
        Some("MISS")
    );

    // Purge through the admin listener.
    let purge = HttpClient::http1()
        .send(
            Request::post(format!("http://{}/admin/cache/purge", dp.admin_addr))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(
                    br#"{"route":"shop/catalog","pathPrefix":"/fresh"}"#,
                )))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(purge.status, 200, "{}", purge.text());
    assert_eq!(
        get(&dp, "/fresh/a", &[]).await.header("x-cache"),
        Some("MISS")
    );
    let metrics = pavilion_tests::metrics(dp.admin_addr).await;
    assert!(
        metrics.contains("pavilion_cache_requests_total{result=\"hit\",route=\"shop/catalog\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn variants_and_credentials() {
    let (dp, seen) = data_plane(settings()).await;
    let de = get(&dp, "/vary/a", &[("accept-language", "de")]).await;
    assert!(de.text().ends_with(" de"));
    let fr = get(&dp, "/vary/a", &[("accept-language", "fr")]).await;
    assert_eq!(fr.header("x-cache"), Some("MISS"), "another variant");
    assert!(fr.text().ends_with(" fr"));
    let fr_again = get(&dp, "/vary/a", &[("accept-language", "fr")]).await;
    assert_eq!(fr_again.header("x-cache"), Some("HIT"));
    assert!(
        fr_again.text().ends_with(" fr"),
        "never the other language's answer"
    );

    // With credentials: a stored anonymous answer is not served, and the answer is not
    // stored for anyone else…
    get(&dp, "/fresh/b", &[]).await;
    let alice = get(&dp, "/fresh/b", &[("authorization", "Bearer alice")]).await;
    assert_eq!(alice.header("x-cache"), Some("MISS"));
    assert_eq!(count(&seen, "/fresh/b"), 2);
    // …unless the backend marks it public.
    get(&dp, "/public/b", &[("authorization", "Bearer alice")]).await;
    let bob = get(&dp, "/public/b", &[("authorization", "Bearer bob")]).await;
    assert_eq!(bob.header("x-cache"), Some("HIT"));
    assert_eq!(count(&seen, "/public/b"), 1);
}

#[tokio::test]
async fn a_miss_storm_makes_one_upstream_request() {
    let (dp, seen) = data_plane(settings()).await;
    let dp = Arc::new(dp);
    let mut clients = Vec::new();
    for _ in 0..20 {
        let dp = dp.clone();
        clients.push(tokio::spawn(async move { get(&dp, "/slow/a", &[]).await }));
    }
    let mut bodies = std::collections::HashSet::new();
    for client in clients {
        let reply = client.await.unwrap();
        assert_eq!(reply.status, 200);
        bodies.insert(reply.text());
    }
    assert_eq!(
        count(&seen, "/slow/a"),
        1,
        "twenty concurrent misses, one fetch"
    );
    assert_eq!(bodies.len(), 1);

    // A storm on an answer that may not be stored: everyone gets their own.
    let mut clients = Vec::new();
    for _ in 0..5 {
        let dp = dp.clone();
        clients.push(tokio::spawn(
            async move { get(&dp, "/nostore/slow", &[]).await },
        ));
    }
    for client in clients {
        assert_eq!(client.await.unwrap().status, 200);
    }
    assert_eq!(count(&seen, "/nostore/slow"), 5);
}

#[tokio::test]
async fn rules_never_share_entries_and_compressed_answers_are_cached_plain() {
    let (first, first_seen) = upstream().await;
    let (second, second_seen) = upstream().await;
    // Two rules for the same path, told apart by a header, to different backends.
    let mut admin = prefix_rule("/", &[(&first, 1)]);
    admin.matches[0].headers = vec![proto::HeaderMatch {
        name: "x-admin".into(),
        value: "1".into(),
    }];
    admin.cache = Some(settings());
    let mut public = prefix_rule("/", &[(&second, 1)]);
    public.cache = Some(settings());
    public.compression = Some(proto::Compression {
        min_size: 1,
        types: vec!["text/*".into()],
        gzip: true,
        brotli: false,
        zstd: false,
    });
    let dp = pavilion_data::start(Config::local()).await.unwrap();
    dp.apply(snapshot(
        "v1",
        vec![route("shop/catalog", &[], vec![admin, public])],
    ))
    .await
    .unwrap();
    get(&dp, "/fresh/x", &[("x-admin", "1")]).await;
    let other = get(&dp, "/fresh/x", &[]).await;
    assert_eq!(
        other.header("x-cache"),
        Some("MISS"),
        "another rule, another entry"
    );
    assert_eq!(count(&first_seen, "/fresh/x"), 1);
    assert_eq!(count(&second_seen, "/fresh/x"), 1);

    // The plain answer is kept; each client gets it encoded as it accepts.
    let gzip = get(&dp, "/fresh/x", &[("accept-encoding", "gzip")]).await;
    assert_eq!(gzip.header("x-cache"), Some("HIT"));
    assert_eq!(gzip.header("content-encoding"), Some("gzip"));
    let mut decoded = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(&gzip.body[..]),
        &mut decoded,
    )
    .unwrap();
    assert_eq!(decoded, other.text());
    assert_eq!(count(&second_seen, "/fresh/x"), 1);
}
