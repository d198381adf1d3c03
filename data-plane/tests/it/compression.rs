//! Response compression through the data plane, decoded by the real decoders: gzip,
//! brotli and zstd by q-value; small, binary, event-stream, already-encoded and range
//! responses left alone; `Vary: Accept-Encoding` where it matters.

use std::convert::Infallible;
use std::io::Read;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use pavilion_data::{Config, DataPlane};
use pavilion_proto as proto;
use pavilion_tests::client::{HttpClient, Reply};
use pavilion_tests::snapshot::{prefix_rule, route, snapshot};

/// The text every compressible answer carries, repeated to `n` bytes.
fn text(n: usize) -> String {
    "{\"order\":42,\"lines\":[1,2,3]}"
        .chars()
        .cycle()
        .take(n)
        .collect()
}

/// An upstream answering by path: `/json/N` (N bytes of JSON), `/png/N`, `/events`,
/// `/encoded` (already gzip), `/range` (a 206).
async fn upstream() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|request: Request<Incoming>| async move {
                    let path = request.uri().path().to_owned();
                    let size = |prefix: &str| {
                        path.strip_prefix(prefix)
                            .and_then(|n| n.parse().ok())
                            .unwrap_or(0)
                    };
                    let (kind, body, extra): (&str, String, Option<(&str, &str)>) =
                        if path.starts_with("/json/") {
                            ("application/json", text(size("/json/")), None)
                        } else if path.starts_with("/png/") {
                            ("image/png", text(size("/png/")), None)
                        } else if path == "/events" {
                            (
                                "text/event-stream",
                                format!("data: {}\n\n", text(4000)),
                                None,
                            )
                        } else if path == "/encoded" {
                            ("text/plain", text(4000), Some(("content-encoding", "gzip")))
                        } else {
                            (
                                "text/plain",
                                text(4000),
                                Some(("content-range", "bytes 0-3999/8000")),
                            )
                        };
                    let mut response = Response::new(Full::new(Bytes::from(body)));
                    response
                        .headers_mut()
                        .insert("content-type", kind.parse().unwrap());
                    if let Some((name, value)) = extra {
                        response.headers_mut().insert(name, value.parse().unwrap());
                    }
                    if path == "/range" {
                        *response.status_mut() = http::StatusCode::PARTIAL_CONTENT;
                    }
                    Ok::<_, Infallible>(response)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    url
}

async fn data_plane(compression: proto::Compression) -> DataPlane {
    let backend = upstream().await;
    let mut rule = prefix_rule("/", &[(&backend, 1)]);
    rule.compression = Some(compression);
    let dp = pavilion_data::start(Config::local()).await.unwrap();
    dp.apply(snapshot("v1", vec![route("shop/api", &[], vec![rule])]))
        .await
        .unwrap();
    dp
}

fn defaults() -> proto::Compression {
    proto::Compression {
        min_size: 1024,
        types: vec![
            "text/*".into(),
            "application/json".into(),
            "*/*+json".into(),
        ],
        gzip: true,
        brotli: true,
        zstd: true,
    }
}

async fn get(dp: &DataPlane, path: &str, accept: Option<&str>) -> Reply {
    let mut request = Request::get(format!("http://{}{path}", dp.addr));
    if let Some(accept) = accept {
        request = request.header("accept-encoding", accept);
    }
    HttpClient::http1()
        .send(request.body(Full::default()).unwrap())
        .await
        .unwrap()
}

fn decode(encoding: &str, body: &[u8]) -> String {
    let mut out = String::new();
    match encoding {
        "gzip" => flate2::read::GzDecoder::new(body)
            .read_to_string(&mut out)
            .unwrap(),
        "br" => brotli::Decompressor::new(body, 4096)
            .read_to_string(&mut out)
            .unwrap(),
        "zstd" => zstd::stream::read::Decoder::new(body)
            .unwrap()
            .read_to_string(&mut out)
            .unwrap(),
        other => panic!("unexpected encoding {other}"),
    };
    out
}

#[tokio::test]
async fn responses_are_compressed_by_what_the_client_prefers() {
    let dp = data_plane(defaults()).await;
    for (accept, expected) in [
        ("gzip", "gzip"),
        ("br", "br"),
        ("zstd", "zstd"),
        ("gzip;q=0.5, br;q=0.9, zstd;q=0.1", "br"),
        ("gzip;q=1, br;q=0.2", "gzip"),
    ] {
        let reply = get(&dp, "/json/20000", Some(accept)).await;
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.header("content-encoding"),
            Some(expected),
            "for {accept}"
        );
        assert_eq!(reply.header("vary"), Some("accept-encoding"));
        assert!(
            reply.body.len() < 5_000,
            "{accept}: {} bytes",
            reply.body.len()
        );
        assert_eq!(
            decode(expected, &reply.body),
            text(20000),
            "{accept} decodes to the original"
        );
        assert!(reply.header("x-request-id").is_some());
    }
    // No Accept-Encoding: as sent.
    let plain = get(&dp, "/json/20000", None).await;
    assert_eq!(plain.header("content-encoding"), None);
    assert_eq!(plain.text(), text(20000));
    // An encoding the rule does not offer.
    let deflate = get(&dp, "/json/20000", Some("deflate")).await;
    assert_eq!(deflate.header("content-encoding"), None);
    assert_eq!(deflate.text(), text(20000));
}

#[tokio::test]
async fn some_responses_are_never_compressed() {
    let dp = data_plane(defaults()).await;
    for (path, why) in [
        ("/json/100", "below the minimum size"),
        ("/png/20000", "not a compressible type"),
        ("/events", "an event stream is flushed event by event"),
        ("/range", "a range"),
    ] {
        let reply = get(&dp, path, Some("gzip, br, zstd")).await;
        assert_eq!(reply.header("content-encoding"), None, "{path}: {why}");
        assert!(reply.body.len() >= 100, "{path}: the body is intact");
    }
    let twice = get(&dp, "/encoded", Some("br")).await;
    assert_eq!(
        twice.header("content-encoding"),
        Some("gzip"),
        "never compressed twice"
    );
    assert_eq!(twice.text(), text(4000));
    // A client refusing the identity encoding gets the backend's answer, not a 406.
    let refusing = get(&dp, "/png/20000", Some("gzip, identity;q=0")).await;
    assert_eq!(refusing.status, 200);

    // The rule may offer fewer encodings.
    let only_gzip = data_plane(proto::Compression {
        brotli: false,
        zstd: false,
        ..defaults()
    })
    .await;
    let reply = get(&only_gzip, "/json/20000", Some("br, gzip;q=0.1")).await;
    assert_eq!(reply.header("content-encoding"), Some("gzip"));
}
