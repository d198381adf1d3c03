//! Response compression (gzip, brotli, zstd) by the client's `Accept-Encoding` q-values,
//! through tower-http's compression — the encoder choice, `Vary: Accept-Encoding`, never
//! compressing twice or a range are its — with the rule's own predicate: a success status,
//! a compressible media type, never an event stream or gRPC, and not below the minimum size
//! when the size is known.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::FutureExt;
use http::header::{ACCEPT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use pavilion_proto as proto;
use tower::Service;
use tower_http::compression::predicate::Predicate;
use tower_http::compression::{CompressionLayer, CompressionLevel};

use crate::body::ResponseBody;

/// A media range as written in `compression.types`.
#[derive(Debug)]
enum MediaRange {
    /// `application/json`
    Exact(Box<str>),
    /// `text/*`: the type, with its slash.
    Type(Box<str>),
    /// `*/*+json`: the suffix, with its plus.
    Suffix(Box<str>),
}

/// A rule's compression settings; cheap to clone (tower-http clones the predicate).
#[derive(Clone, Debug)]
pub struct Compression {
    min_size: u64,
    types: Arc<[MediaRange]>,
    gzip: bool,
    brotli: bool,
    zstd: bool,
}

impl Compression {
    pub fn new(settings: &proto::Compression) -> Self {
        let types = settings
            .types
            .iter()
            .map(|t| {
                if let Some(suffix) = t.strip_prefix("*/*") {
                    MediaRange::Suffix(suffix.into())
                } else if let Some(kind) = t.strip_suffix('*') {
                    MediaRange::Type(kind.into())
                } else {
                    MediaRange::Exact(t.as_str().into())
                }
            })
            .collect();
        Self {
            min_size: settings.min_size,
            types,
            gzip: settings.gzip,
            brotli: settings.brotli,
            zstd: settings.zstd,
        }
    }

    /// Whether a client's `Accept-Encoding` is worth keeping for the response. A header that
    /// refuses the identity encoding is left alone: tower-http would answer it 406, and a
    /// gateway does not turn a backend's answer into a refusal.
    pub fn wanted(accept: &HeaderValue) -> bool {
        let text = accept.as_bytes();
        !text.is_empty()
            && !text.split(|b| *b == b',').any(|part| {
                let part: Vec<u8> = part
                    .iter()
                    .filter(|b| !b.is_ascii_whitespace())
                    .map(u8::to_ascii_lowercase)
                    .collect();
                matches!(
                    &part[..],
                    b"identity;q=0"
                        | b"identity;q=0.0"
                        | b"identity;q=0.00"
                        | b"identity;q=0.000"
                        | b"*;q=0"
                        | b"*;q=0.0"
                        | b"*;q=0.00"
                        | b"*;q=0.000"
                )
            })
    }

    /// The response, compressed when the client accepts it and the predicate holds.
    pub fn apply(
        &self,
        accept: &HeaderValue,
        response: Response<ResponseBody>,
    ) -> Response<ResponseBody> {
        let mut request = Request::new(());
        request
            .headers_mut()
            .insert(ACCEPT_ENCODING, accept.clone());
        let layer = CompressionLayer::new()
            .gzip(self.gzip)
            .br(self.brotli)
            .zstd(self.zstd)
            .no_deflate()
            // Level 4 on every encoder: most of the gain at a fraction of the default
            // brotli's cost (quality 11 is for static files, not a proxy's hot path).
            .quality(CompressionLevel::Precise(4))
            .compress_when(self.clone());
        let mut service = tower::Layer::layer(&layer, Ready(Some(response)));
        match service.call(request).now_or_never() {
            Some(Ok(response)) => response.map(|body| ResponseBody::Compressed(Box::new(body))),
            // The inner service answers at once and never fails.
            Some(Err(never)) => match never {},
            None => unreachable!("an immediately ready response"),
        }
    }
}

impl Predicate for Compression {
    fn should_compress<B: Body>(&self, response: &Response<B>) -> bool {
        let status = response.status();
        if !status.is_success()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::PARTIAL_CONTENT
        {
            return false;
        }
        let headers = response.headers();
        // The backend forbids changing the representation.
        if headers
            .get_all(http::header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|d| d.trim().eq_ignore_ascii_case("no-transform"))
        {
            return false;
        }
        let size = response.body().size_hint().exact().or_else(|| {
            headers
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse().ok())
        });
        if size.is_some_and(|size| size < self.min_size) {
            return false;
        }
        let Some(kind) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let kind = kind
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        if kind == "text/event-stream" || kind.starts_with("application/grpc") {
            return false;
        }
        self.types.iter().any(|range| match range {
            MediaRange::Exact(exact) => kind == **exact,
            MediaRange::Type(prefix) => kind.starts_with(&**prefix),
            MediaRange::Suffix(suffix) => kind.ends_with(&**suffix),
        })
    }
}

/// A service that hands out one ready response.
struct Ready(Option<Response<ResponseBody>>);

impl Service<Request<()>> for Ready {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<ResponseBody>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        let response = self
            .0
            .take()
            .unwrap_or_else(|| Response::new(ResponseBody::Local(None)));
        std::future::ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compression(types: &[&str], min_size: u64) -> Compression {
        Compression::new(&proto::Compression {
            min_size,
            types: types.iter().map(|t| t.to_string()).collect(),
            gzip: true,
            brotli: true,
            zstd: true,
        })
    }

    fn response(kind: &str, body: &'static str) -> Response<ResponseBody> {
        let mut response = Response::new(ResponseBody::local(body));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_str(kind).unwrap());
        response
    }

    #[test]
    fn the_predicate_follows_type_size_and_status() {
        let c = compression(&["text/*", "application/json", "*/*+json"], 10);
        let long = "0123456789abcdef";
        assert!(c.should_compress(&response("text/html; charset=utf-8", long)));
        assert!(c.should_compress(&response("application/problem+json", long)));
        assert!(!c.should_compress(&response("image/png", long)));
        assert!(!c.should_compress(&response("text/plain", "short")));
        assert!(!c.should_compress(&response("text/event-stream", long)));
        let mut partial = response("text/plain", long);
        *partial.status_mut() = StatusCode::PARTIAL_CONTENT;
        assert!(!c.should_compress(&partial));
    }

    #[test]
    fn a_refused_identity_is_left_alone() {
        assert!(Compression::wanted(&HeaderValue::from_static(
            "gzip, br;q=0.9"
        )));
        assert!(!Compression::wanted(&HeaderValue::from_static(
            "gzip;q=0, identity;q=0"
        )));
        assert!(!Compression::wanted(&HeaderValue::from_static("*;q=0")));
    }
}
