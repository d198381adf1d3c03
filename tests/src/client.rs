//! A plain HTTP client for tests: HTTP/1.1 or h2c, whole bodies, no retries.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// A response read to the end.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpConnector, Full<Bytes>>,
}

impl HttpClient {
    pub fn http1() -> Self {
        Self {
            inner: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
        }
    }

    /// HTTP/2 over cleartext with prior knowledge.
    pub fn h2c() -> Self {
        Self {
            inner: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build(HttpConnector::new()),
        }
    }

    pub async fn get(&self, url: &str) -> Result<Reply, String> {
        self.send(
            Request::get(url)
                .body(Full::default())
                .expect("valid request"),
        )
        .await
    }

    /// GET `url` with extra `headers`.
    pub async fn get_with(&self, url: &str, headers: &[(&str, &str)]) -> Result<Reply, String> {
        self.call("GET", url, headers, Bytes::new()).await
    }

    /// `method` to `url` with extra `headers` and `body`.
    pub async fn call(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Reply, String> {
        let mut request = Request::builder().method(method).uri(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.send(request.body(Full::new(body)).map_err(|e| e.to_string())?)
            .await
    }

    /// Sends with a 10 s safety timeout so a hang fails the test instead of stalling it.
    pub async fn send(&self, request: Request<Full<Bytes>>) -> Result<Reply, String> {
        let exchange = async {
            let response = self
                .inner
                .request(request)
                .await
                .map_err(|e| format!("{e:?}"))?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
            Ok(Reply {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .map_err(|_| "no answer within 10s".to_owned())?
    }
}

/// The sending end of an [`Upload`]; dropping it ends the body.
pub type Chunks = mpsc::Sender<Result<Frame<Bytes>, Infallible>>;

/// A request body of unknown length that the test feeds chunk by chunk: chunked on
/// HTTP/1.1, without content-length on HTTP/2.
pub type Upload = StreamBody<ReceiverStream<Result<Frame<Bytes>, Infallible>>>;

/// A new upload and its sending end; `capacity` chunks can wait before anyone reads.
pub fn upload(capacity: usize) -> (Chunks, Upload) {
    let (chunks, frames) = mpsc::channel(capacity.max(1));
    (chunks, StreamBody::new(ReceiverStream::new(frames)))
}

/// A complete upload of these chunks.
pub async fn upload_of(parts: impl IntoIterator<Item = Bytes>) -> Upload {
    let parts: Vec<Bytes> = parts.into_iter().collect();
    let (chunks, body) = upload(parts.len());
    for part in parts {
        chunks
            .send(Ok(Frame::data(part)))
            .await
            .expect("the body is alive");
    }
    body
}

/// Sends `body` with `method` to `url` (HTTP/2 with prior knowledge when `h2c`) and returns
/// at the response head; reading the body is the caller's business.
pub async fn send_upload(
    method: Method,
    url: &str,
    body: Upload,
    h2c: bool,
) -> Result<Response<Incoming>, String> {
    let mut builder = Client::builder(TokioExecutor::new());
    builder.http2_only(h2c);
    let client = builder.build(HttpConnector::new());
    let request = Request::builder()
        .method(method)
        .uri(url)
        .body(body)
        .map_err(|e| e.to_string())?;
    client.request(request).await.map_err(|e| format!("{e:?}"))
}
