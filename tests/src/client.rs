//! A plain HTTP client for tests: HTTP/1.1 or h2c, whole bodies, no retries.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

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
