//! Bodies stream through the proxy in both directions: a chunk reaches the other side
//! while its sender still holds back the next one. A proxy that buffered whole bodies
//! would deadlock these tests (each wait is bounded, so that shows up as a failure).

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use pavilion_data::Config;
use pavilion_tests::Upstream;
use pavilion_tests::client::{send_upload, upload};
use pavilion_tests::snapshot::catch_all;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

type Chunks = mpsc::Sender<Result<Frame<Bytes>, Infallible>>;

/// Reads the next data frame within 5 s.
async fn next_chunk(body: &mut Incoming) -> Bytes {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("a chunk arrives while the sender holds back the rest")
            .expect("body not finished")
            .expect("body not broken");
        if let Ok(data) = frame.into_data() {
            return data;
        }
    }
}

/// An upstream whose one response body is fed by the test through the returned sender.
async fn controlled_upstream() -> (String, mpsc::Receiver<Chunks>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (handed_out, senders) = mpsc::channel(1);
    let handed_out = Arc::new(Mutex::new(Some(handed_out)));
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let handed_out = handed_out.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_request: Request<Incoming>| {
                    let handed_out = handed_out.clone();
                    async move {
                        let (chunks, frames) = mpsc::channel(4);
                        let sender = handed_out.lock().unwrap().take();
                        if let Some(sender) = sender {
                            sender.send(chunks).await.unwrap();
                        }
                        Ok::<_, Infallible>(Response::new(StreamBody::new(ReceiverStream::new(
                            frames,
                        ))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (url, senders)
}

/// `GET /events` through `dp` to the controlled upstream, which sends `first` as its first
/// chunk: the upstream's sender for the rest, and the client's response.
async fn open_stream(
    dp: &pavilion_data::DataPlane,
    senders: &mut mpsc::Receiver<Chunks>,
    first: &'static str,
) -> (Chunks, Response<Incoming>) {
    let client: Client<_, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let response = tokio::spawn(
        client.request(
            Request::get(format!("http://{}/events", dp.addr))
                .body(Empty::new())
                .unwrap(),
        ),
    );
    let chunks = senders.recv().await.expect("the upstream got the request");
    chunks
        .send(Ok(Frame::data(Bytes::from_static(first.as_bytes()))))
        .await
        .unwrap();
    (chunks, response.await.unwrap().unwrap())
}

#[tokio::test]
async fn response_chunks_reach_the_client_before_the_upstream_finishes() {
    let (upstream, mut senders) = controlled_upstream().await;
    let dp = pavilion_data::start(Config::local()).await.unwrap();
    dp.apply(catch_all("v1", "ns/sse", &upstream))
        .await
        .unwrap();

    let (chunks, response) = open_stream(&dp, &mut senders, "data: one\n\n").await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    assert_eq!(next_chunk(&mut body).await, "data: one\n\n");
    chunks
        .send(Ok(Frame::data(Bytes::from_static(b"data: two\n\n"))))
        .await
        .unwrap();
    assert_eq!(next_chunk(&mut body).await, "data: two\n\n");
    drop(chunks);
    assert!(
        body.frame().await.is_none(),
        "the end of the upstream's body ends the client's"
    );
}

#[tokio::test]
async fn request_chunks_reach_the_upstream_before_the_client_finishes() {
    let upstream = Upstream::start("echo").await.unwrap();
    let dp = pavilion_data::start(Config::local()).await.unwrap();
    dp.apply(catch_all("v1", "ns/up", &upstream.url()))
        .await
        .unwrap();

    let (chunks, body) = upload(4);
    let url = format!("http://{}/echo-body", dp.addr);
    let response =
        tokio::spawn(async move { send_upload(http::Method::POST, &url, body, false).await });
    chunks
        .send(Ok(Frame::data(Bytes::from_static(b"part one;"))))
        .await
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(5), response)
        .await
        .expect("response headers while the request body is still open")
        .unwrap()
        .unwrap();
    let mut body = response.into_body();
    assert_eq!(next_chunk(&mut body).await, "part one;");
    chunks
        .send(Ok(Frame::data(Bytes::from_static(b"part two"))))
        .await
        .unwrap();
    assert_eq!(next_chunk(&mut body).await, "part two");
}

/// A stream outlives the rule's timeout while events keep coming, and is closed when the
/// upstream goes silent for the stream idle timeout.
#[tokio::test]
async fn streams_outlive_the_rule_timeout_and_end_when_the_upstream_falls_silent() {
    let (upstream, mut senders) = controlled_upstream().await;
    let mut config = Config::local();
    config.stream_idle_timeout = Duration::from_millis(600);
    let dp = pavilion_data::start(config).await.unwrap();
    let mut snapshot = catch_all("v1", "ns/sse", &upstream);
    snapshot.routes[0].rules[0].timeout_ms = 300;
    dp.apply(snapshot).await.unwrap();

    let event = |n: u32| Ok(Frame::data(Bytes::from(format!("data: {n}\n\n"))));
    let (chunks, response) = open_stream(&dp, &mut senders, "data: 0\n\n").await;
    let mut body = response.into_body();
    assert_eq!(next_chunk(&mut body).await, "data: 0\n\n");
    // Eight events 200 ms apart: 1.6 s, five times the rule's timeout.
    for n in 1..=8 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        chunks.send(event(n)).await.unwrap();
        assert_eq!(next_chunk(&mut body).await, format!("data: {n}\n\n"));
    }
    // Silence: the gateway closes the stream (the client sees it end, not hang).
    let started = std::time::Instant::now();
    // Ended or broken (HTTP/1.1 tells a cut chunked stream by its missing last chunk):
    // either way within the bound, not hanging.
    tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = body.frame().await {}
    })
    .await
    .expect("the silent stream is closed");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    drop(chunks);
}

/// A snapshot change — even one deleting the stream's route — leaves an established stream
/// running: the response keeps the rule it started with.
#[tokio::test]
async fn a_snapshot_change_never_drops_an_established_stream() {
    let (upstream, mut senders) = controlled_upstream().await;
    let dp = pavilion_data::start(Config::local()).await.unwrap();
    dp.apply(catch_all("v1", "ns/sse", &upstream))
        .await
        .unwrap();
    let (chunks, response) = open_stream(&dp, &mut senders, "data: before\n\n").await;
    let mut body = response.into_body();
    assert_eq!(next_chunk(&mut body).await, "data: before\n\n");

    // The route is gone from the next snapshot: new requests get 404 …
    dp.apply(pavilion_tests::snapshot::snapshot("v2", vec![]))
        .await
        .unwrap();
    let fresh = pavilion_tests::client::HttpClient::http1()
        .get(&format!("http://{}/events", dp.addr))
        .await
        .unwrap();
    assert_eq!(fresh.status, 404);
    // … while the established stream goes on to its end.
    chunks
        .send(Ok(Frame::data(Bytes::from_static(b"data: after\n\n"))))
        .await
        .unwrap();
    assert_eq!(next_chunk(&mut body).await, "data: after\n\n");
    drop(chunks);
    assert!(body.frame().await.is_none());
}

/// A minute of streamed events (a line every 100 ms, as an event stream sends them) while
/// the route is edited ten times:
/// every event arrives, in order, each soon after it was sent.
#[tokio::test]
async fn a_minute_of_events_survives_ten_route_edits() {
    let upstream = Upstream::start("events").await.unwrap();
    let dp = pavilion_data::start(Config::local()).await.unwrap();
    let edited = |version: u32| {
        let mut rule = pavilion_tests::snapshot::prefix_rule("/", &[(&upstream.url(), 1)]);
        // Each edit changes the rule the stream started on.
        rule.timeout_ms = 1_000 + u64::from(version);
        // Compression on for every text type: an event stream must still pass untouched.
        rule.compression = Some(pavilion_proto::Compression {
            min_size: 0,
            types: vec!["text/*".into()],
            gzip: true,
            brotli: true,
            zstd: true,
        });
        pavilion_tests::snapshot::snapshot(
            &format!("v{version}"),
            vec![pavilion_tests::snapshot::route(
                "ns/events",
                &[],
                vec![rule],
            )],
        )
    };
    dp.apply(edited(0)).await.unwrap();
    let client: Client<_, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let response = client
        .request(
            Request::get(format!("http://{}/events/600/100", dp.addr))
                .header("accept", "text/event-stream")
                .header("accept-encoding", "gzip, br, zstd")
                .body(Empty::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert!(
        response.headers().get("content-encoding").is_none(),
        "an event stream is never compressed"
    );
    let mut body = response.into_body();
    let editor = async {
        for version in 1..=10 {
            tokio::time::sleep(Duration::from_millis(5_000)).await;
            dp.apply(edited(version)).await.unwrap();
        }
    };
    let reader = async {
        let mut received = String::new();
        let (mut expected, mut chunks) = (0, 0);
        while expected < 600 {
            // Each event arrives on its own (within `next_chunk`'s bound), never held back
            // for the next: the upstream sends one every 100 ms.
            chunks += 1;
            received.push_str(std::str::from_utf8(&next_chunk(&mut body).await).unwrap());
            while let Some(end) = received.find("\n\n") {
                assert_eq!(
                    &received[..end],
                    format!("id: {expected}\ndata: event {expected}"),
                    "in order, none lost"
                );
                received.drain(..end + 2);
                expected += 1;
            }
        }
        assert!(
            body.frame().await.is_none(),
            "the stream ends when the upstream's does"
        );
        // A proxy that gathered events (by size or by time) would hand over far fewer
        // pieces than the upstream sent; two in one read happen only when the reader lags.
        assert!(chunks >= 300, "600 events came in {chunks} pieces");
    };
    tokio::join!(editor, reader);
    assert_eq!(dp.version(), "v10");
}
