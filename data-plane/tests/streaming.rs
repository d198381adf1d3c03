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

#[tokio::test]
async fn response_chunks_reach_the_client_before_the_upstream_finishes() {
    let (upstream, mut senders) = controlled_upstream().await;
    let dp = pavilion_data::start(Config::local()).await.unwrap();
    dp.apply(catch_all("v1", "ns/sse", &upstream))
        .await
        .unwrap();

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
        .send(Ok(Frame::data(Bytes::from_static(b"data: one\n\n"))))
        .await
        .unwrap();
    let response = response.await.unwrap().unwrap();
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
