//! The HTTP/1.1 upstream client against a scripted upstream: connection reuse, every body
//! framing, stale connections, and responses that must be refused.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use pavilion_data::{Config, DataPlane};
use pavilion_tests::client::{HttpClient, send_upload, upload, upload_of};
use pavilion_tests::raw::{Action, RawUpstream};
use pavilion_tests::snapshot::catch_all;

async fn gateway_to(upstream: &RawUpstream) -> DataPlane {
    let mut config = Config::local();
    config.workers = 1;
    let dp = pavilion_data::start(config).await.unwrap();
    dp.apply(catch_all("v1", "ns/raw", &upstream.url()))
        .await
        .unwrap();
    dp
}

fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[tokio::test]
async fn connections_are_kept_alive_and_reused() {
    let upstream = RawUpstream::start(|_, _| Action::Reply(ok("hi"))).await;
    let dp = gateway_to(&upstream).await;
    let client = HttpClient::http1();
    for _ in 0..20 {
        let reply = client.get(&format!("http://{}/x", dp.addr)).await.unwrap();
        assert_eq!(
            (reply.status.as_u16(), reply.text()),
            (200, "hi".to_owned())
        );
    }
    assert_eq!(
        upstream.connection_count(),
        1,
        "one upstream connection for 20 sequential requests"
    );
}

#[tokio::test]
async fn chunked_responses_are_decoded_and_the_connection_reused() {
    let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4;name=value\r\nWiki\r\n5\r\npedia\r\n0\r\nx-checksum: 1\r\n\r\n";
    let upstream = RawUpstream::start(|_, _| Action::Reply(chunked.to_vec())).await;
    let dp = gateway_to(&upstream).await;
    let client = HttpClient::http1();
    for _ in 0..3 {
        let reply = client.get(&format!("http://{}/", dp.addr)).await.unwrap();
        assert_eq!(reply.text(), "Wikipedia");
    }
    assert_eq!(upstream.connection_count(), 1);
}

#[tokio::test]
async fn close_delimited_responses_are_read_to_the_end_and_not_reused() {
    let upstream = RawUpstream::start(|_, _| {
        Action::ReplyAndClose(b"HTTP/1.1 200 OK\r\n\r\nuntil the end".to_vec())
    })
    .await;
    let dp = gateway_to(&upstream).await;
    let client = HttpClient::http1();
    for _ in 0..2 {
        assert_eq!(
            client
                .get(&format!("http://{}/", dp.addr))
                .await
                .unwrap()
                .text(),
            "until the end"
        );
    }
    assert_eq!(upstream.connection_count(), 2);
}

#[tokio::test]
async fn head_and_no_content_responses_have_no_body() {
    let upstream = RawUpstream::start(|_, request| {
        if request.starts_with(b"HEAD") {
            Action::Reply(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n".to_vec())
        } else {
            Action::Reply(b"HTTP/1.1 204 No Content\r\n\r\n".to_vec())
        }
    })
    .await;
    let dp = gateway_to(&upstream).await;
    let client = HttpClient::http1();
    let head = Request::head(format!("http://{}/", dp.addr))
        .body(Full::default())
        .unwrap();
    let reply = client.send(head).await.unwrap();
    assert_eq!(
        (reply.status.as_u16(), reply.header("content-length")),
        (200, Some("10"))
    );
    let reply = client.get(&format!("http://{}/", dp.addr)).await.unwrap();
    assert_eq!((reply.status.as_u16(), reply.body.len()), (204, 0));
    assert_eq!(
        upstream.connection_count(),
        1,
        "neither response left bytes behind"
    );
}

#[tokio::test]
async fn interim_responses_are_skipped() {
    let upstream = RawUpstream::start(|_, _| {
        Action::Reply(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ndone".to_vec())
    })
    .await;
    let dp = gateway_to(&upstream).await;
    let request = Request::post(format!("http://{}/", dp.addr))
        .body(Full::new(Bytes::from_static(b"data")))
        .unwrap();
    let reply = HttpClient::http1().send(request).await.unwrap();
    assert_eq!(
        (reply.status.as_u16(), reply.text()),
        (200, "done".to_owned())
    );
}

#[tokio::test]
async fn a_pooled_connection_closed_under_us_is_retried_for_idempotent_requests_only() {
    // Each connection answers once, then closes on the next request without answering —
    // what an upstream whose keep-alive timeout just expired looks like.
    let upstream = RawUpstream::start(|index, _| {
        if index == 0 {
            Action::Reply(ok("fresh"))
        } else {
            Action::Close
        }
    })
    .await;
    let dp = gateway_to(&upstream).await;
    let client = HttpClient::http1();
    for _ in 0..3 {
        let reply = client.get(&format!("http://{}/", dp.addr)).await.unwrap();
        assert_eq!(
            (reply.status.as_u16(), reply.text()),
            (200, "fresh".to_owned())
        );
    }
    // A POST could have been processed: never sent twice.
    let post = Request::post(format!("http://{}/", dp.addr))
        .body(Full::new(Bytes::from_static(b"x")))
        .unwrap();
    let reply = client.send(post).await.unwrap();
    assert_eq!(reply.status, 502);
    assert_eq!(reply.json()["error"]["code"], "upstream_failed");
}

#[tokio::test]
async fn ambiguous_or_oversized_responses_are_refused_with_502() {
    let huge_head = format!(
        "HTTP/1.1 200 OK\r\nx-big: {}\r\ncontent-length: 0\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "smuggling",
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"
                .to_vec(),
        ),
        (
            "two lengths",
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd".to_vec(),
        ),
        (
            "switching protocols",
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n".to_vec(),
        ),
        ("not http", b"SSH-2.0-OpenSSH_9.2\r\n\r\n".to_vec()),
        ("huge head", huge_head.into_bytes()),
    ];
    for (what, response) in cases {
        let upstream =
            RawUpstream::start(move |_, _| Action::ReplyAndClose(response.clone())).await;
        let dp = gateway_to(&upstream).await;
        let reply = HttpClient::http1()
            .get(&format!("http://{}/", dp.addr))
            .await
            .unwrap();
        assert_eq!(reply.status, 502, "{what}: {}", reply.text());
        assert_eq!(reply.json()["error"]["code"], "upstream_failed", "{what}");
    }
}

#[tokio::test]
async fn a_body_cut_short_ends_the_client_response_with_an_error() {
    let upstream = RawUpstream::start(|_, _| {
        Action::ReplyAndClose(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this".to_vec())
    })
    .await;
    let dp = gateway_to(&upstream).await;
    let error = HttpClient::http1()
        .get(&format!("http://{}/", dp.addr))
        .await
        .unwrap_err();
    assert!(
        !error.is_empty(),
        "the client must see the body break, not a short 200"
    );
}

#[tokio::test]
async fn request_bodies_are_framed_as_the_upstream_expects() {
    let upstream = RawUpstream::start(|_, _| Action::Reply(ok("got it"))).await;
    let dp = gateway_to(&upstream).await;
    let client = HttpClient::http1();

    let with_length = Request::put(format!("http://{}/doc", dp.addr))
        .body(Full::new(Bytes::from_static(b"12345")))
        .unwrap();
    assert_eq!(client.send(with_length).await.unwrap().text(), "got it");
    let empty_post = Request::post(format!("http://{}/empty", dp.addr))
        .body(Full::default())
        .unwrap();
    assert_eq!(client.send(empty_post).await.unwrap().status, 200);
    // HTTP/2 with a body of unknown length: re-framed as chunked for the HTTP/1.1 upstream.
    let body = upload_of([Bytes::from_static(b"abc")]).await;
    let response = send_upload(
        http::Method::POST,
        &format!("http://{}/stream", dp.addr),
        body,
        true,
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 200);

    let requests = upstream.requests_text();
    assert!(
        requests[0].starts_with("PUT /doc HTTP/1.1\r\n"),
        "{}",
        requests[0]
    );
    assert!(
        requests[0].contains("content-length: 5\r\n") && requests[0].ends_with("\r\n\r\n12345"),
        "{}",
        requests[0]
    );
    assert!(
        requests[1].contains("content-length: 0\r\n"),
        "{}",
        requests[1]
    );
    assert!(
        requests[2].contains("transfer-encoding: chunked\r\n"),
        "{}",
        requests[2]
    );
    assert!(
        requests[2].ends_with("\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
        "{:?}",
        requests[2]
    );
    assert!(!requests[2].contains("content-length"), "{}", requests[2]);
}

#[tokio::test]
async fn a_timed_out_upload_stops_and_closes_the_upstream_connection() {
    // An upstream that accepts and never reads or answers; it reports when the gateway
    // hangs up.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}", listener.local_addr().unwrap());
    let (hung_up, mut hung_up_rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut sink = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut sink).await;
        let _ = hung_up.send(()).await;
    });
    let mut config = Config::local();
    config.workers = 1;
    let dp = pavilion_data::start(config).await.unwrap();
    let mut rule = pavilion_tests::snapshot::prefix_rule("/", &[(&upstream, 1)]);
    rule.timeout_ms = 300;
    let snapshot = pavilion_tests::snapshot::snapshot(
        "v1",
        vec![pavilion_tests::snapshot::route("ns/stall", &[], vec![rule])],
    );
    dp.apply(snapshot).await.unwrap();

    // A client whose upload never ends.
    let (chunks, body) = upload(1);
    chunks
        .send(Ok(hyper::body::Frame::data(Bytes::from_static(
            b"first part",
        ))))
        .await
        .unwrap();
    let response = send_upload(
        http::Method::POST,
        &format!("http://{}/upload", dp.addr),
        body,
        false,
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 504);
    tokio::time::timeout(std::time::Duration::from_secs(5), hung_up_rx.recv())
        .await
        .expect("the gateway closes the upstream connection once the exchange is given up");
    drop(chunks);
}

#[tokio::test]
async fn requests_without_a_host_get_the_backend_authority_and_no_forwarded_host() {
    let upstream = RawUpstream::start(|_, _| Action::Reply(ok("ok"))).await;
    let dp = gateway_to(&upstream).await;
    let mut stream = tokio::net::TcpStream::connect(dp.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut stream,
        b"GET /old HTTP/1.0\r\nx-forwarded-host: spoofed.example.com\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut answer)
        .await
        .unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.0 200") || answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let request = &upstream.requests_text()[0];
    assert!(
        request.contains(&format!("host: {}\r\n", upstream.addr)),
        "{request}"
    );
    assert!(!request.contains("spoofed"), "{request}");
}

#[tokio::test]
async fn tricky_targets_are_refused_before_routing() {
    let upstream = RawUpstream::start(|_, _| Action::Reply(ok("ok"))).await;
    let dp = gateway_to(&upstream).await;
    for target in [
        "/public/..%2Fadmin",
        "/public/..%5cadmin",
        "http://a.example.com:x@b.example.com/",
    ] {
        let mut stream = tokio::net::TcpStream::connect(dp.addr).await.unwrap();
        let request =
            format!("GET {target} HTTP/1.1\r\nhost: b.example.com\r\nconnection: close\r\n\r\n");
        tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes())
            .await
            .unwrap();
        let mut answer = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut answer)
            .await
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 400"), "{target}: {answer}");
        assert!(
            answer.contains("\"code\":\"bad_request\""),
            "{target}: {answer}"
        );
    }
    assert!(
        upstream.requests_text().is_empty(),
        "nothing reached the upstream"
    );
}

/// `--upstream-http1 hyper` (kept for the bench's comparison) proxies the same traffic:
/// bodies both ways, keep-alive, and the upstream's framing.
#[tokio::test]
async fn the_hyper_util_client_is_a_working_alternative() {
    let upstream = pavilion_tests::Upstream::start("plain").await.unwrap();
    let mut config = Config::local();
    config.upstream.http1_client = pavilion_data::upstream::Http1Client::Hyper;
    let dp = pavilion_data::start(config).await.unwrap();
    dp.apply(catch_all("v1", "ns/plain", &upstream.url()))
        .await
        .unwrap();
    let client = HttpClient::http1();
    let reply = client
        .get(&format!("http://{}/hello?x=1", dp.addr))
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["path"], "/hello");
    assert_eq!(reply.json()["query"], "x=1");
    let echoed = client
        .send(
            Request::post(format!("http://{}/echo-body", dp.addr))
                .body(Full::new(Bytes::from_static(b"round trip")))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(echoed.text(), "round trip");
    let streamed = client
        .get(&format!("http://{}/stream/3/10", dp.addr))
        .await
        .unwrap();
    assert_eq!(streamed.text(), "chunk 0\nchunk 1\nchunk 2\n");
}
