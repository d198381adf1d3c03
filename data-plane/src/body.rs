//! Body types of the proxy: nothing is buffered whole, and the one wrapper on the request
//! side only counts bytes against the configured limit.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use sync_wrapper::SyncWrapper;

/// The client's request body on its way upstream, cut off past `limit` bytes — or a body
/// the gateway made itself (a transcoded command).
pub struct RequestBody {
    inner: Source,
    remaining: u64,
}

enum Source {
    Client(Incoming),
    /// A gRPC-Web request translated to gRPC (tonic-web's body over the client's).
    Web(SyncWrapper<tonic::body::Body>),
    Full(Option<Bytes>),
}

impl RequestBody {
    pub fn new(inner: Incoming, limit: u64) -> Self {
        Self {
            inner: Source::Client(inner),
            remaining: limit,
        }
    }

    pub fn web(inner: tonic::body::Body, limit: u64) -> Self {
        Self {
            inner: Source::Web(SyncWrapper::new(inner)),
            remaining: limit,
        }
    }

    /// Lowers the limit (a rule's own, below the data plane's).
    pub fn limit_to(&mut self, limit: u64) {
        self.remaining = self.remaining.min(limit);
    }

    /// A whole body in hand.
    pub fn full(bytes: Bytes) -> Self {
        Self {
            remaining: bytes.len() as u64,
            inner: Source::Full(Some(bytes)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body grew past the limit while streaming (no or a false Content-Length).
    #[error("request body exceeds the configured limit")]
    TooLarge,
    /// The client's body broke (malformed framing, cut off, bad gRPC-Web encoding).
    #[error(transparent)]
    Client(Box<dyn std::error::Error + Send + Sync>),
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let polled = match &mut self.inner {
            Source::Full(bytes) => return Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Source::Client(inner) => Pin::new(inner)
                .poll_frame(cx)
                .map_err(|e| BodyError::Client(Box::new(e))),
            Source::Web(inner) => Pin::new(inner.get_mut())
                .poll_frame(cx)
                .map_err(|e| BodyError::Client(Box::new(e))),
        };
        let frame = match polled {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        if let Some(data) = frame.data_ref() {
            let len = data.len() as u64;
            if len > self.remaining {
                return Poll::Ready(Some(Err(BodyError::TooLarge)));
            }
            self.remaining -= len;
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Source::Client(inner) => inner.is_end_stream(),
            // Only `poll_frame` (with `&mut`) looks inside: the wrapper keeps the body
            // shareable, so the end is not known before it is read.
            Source::Web(_) => false,
            Source::Full(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Source::Client(inner) => inner.size_hint(),
            Source::Web(_) => SizeHint::default(),
            Source::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

/// What the client gets back: the upstream's body as it streams, or a small body the
/// gateway wrote itself (errors). An enum, not a box: no allocation per response.
pub enum ResponseBody {
    /// From an HTTP/1.1 upstream, read straight off its connection.
    H1(crate::upstream::h1::Body),
    /// From an h2c or HTTPS upstream.
    Upstream(Incoming),
    Local(Option<Bytes>),
    /// A gRPC answer the gateway writes: the message (if any), then the status trailers.
    Grpc(Option<Bytes>, Option<http::HeaderMap>),
    /// Another body whose bytes are counted (byte quotas): reported every megabyte while it
    /// streams, so a long download cannot run far past a quota unnoticed, and the rest when
    /// the body is done or dropped.
    Metered(Box<Metered>),
    /// A streamed body (no length known: SSE, long polls, chunked downloads) that ends in
    /// an error when the upstream sends nothing for `idle`: the rule's timeout covers only
    /// the response head, so a stream may last hours, but never stall forever.
    Idle(Box<Idle>),
    /// A gRPC answer translated for a gRPC-Web client (trailers in the body).
    Web(SyncWrapper<tonic::body::Body>),
    /// Another body, compressed on the way (the rule's `compression`).
    Compressed(Box<tower_http::compression::CompressionBody<ResponseBody>>),
    /// Another body holding a place under its rule's `connections.max`, given back when
    /// the body ends (its HTTP/1.1 connection is then free again) or is dropped.
    Held(Box<Held>),
    /// A gRPC answer cut at the client's deadline (`grpc-timeout`).
    Deadline(Box<Deadline>),
}

/// A gRPC response stream bounded by the client's deadline: when it passes before the
/// upstream ends the stream, the upstream's stream is dropped (reset) and the client's ends
/// with `DEADLINE_EXCEEDED` trailers — the call's deadline covers the whole call, not only
/// its response head.
pub struct Deadline {
    inner: Option<ResponseBody>,
    timer: Pin<Box<tokio::time::Sleep>>,
    /// The trailers sent when the deadline passes.
    exceeded: Option<http::HeaderMap>,
}

impl Deadline {
    pub fn wrap(inner: ResponseBody, at: tokio::time::Instant, message: &str) -> ResponseBody {
        let mut exceeded = http::HeaderMap::new();
        exceeded.insert("grpc-status", http::HeaderValue::from(4u32));
        if let Ok(value) = http::HeaderValue::from_str(&crate::deny::grpc_message(message)) {
            exceeded.insert("grpc-message", value);
        }
        ResponseBody::Deadline(Box::new(Self {
            inner: Some(inner),
            timer: Box::pin(tokio::time::sleep_until(at)),
            exceeded: Some(exceeded),
        }))
    }

    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ResponseBodyError>>> {
        let Some(inner) = &mut self.inner else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Pending => {}
            Poll::Ready(None) => {
                self.inner = None;
                return Poll::Ready(None);
            }
            ready => return ready,
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                self.inner = None;
                Poll::Ready(self.exceeded.take().map(|t| Ok(Frame::trailers(t))))
            }
        }
    }
}

pub struct Held {
    inner: ResponseBody,
    place: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Held {
    pub fn wrap(inner: ResponseBody, place: tokio::sync::OwnedSemaphorePermit) -> ResponseBody {
        let end = inner.is_end_stream();
        ResponseBody::Held(Box::new(Self {
            inner,
            place: (!end).then_some(place),
        }))
    }
}

pub struct Idle {
    inner: ResponseBody,
    idle: std::time::Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl Idle {
    pub fn wrap(inner: ResponseBody, idle: std::time::Duration) -> ResponseBody {
        ResponseBody::Idle(Box::new(Self {
            inner,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
        }))
    }
}

/// A stream the upstream stopped feeding.
#[derive(Debug, thiserror::Error)]
#[error("the upstream sent nothing for {0:?}; the stream is closed")]
pub struct StreamIdle(std::time::Duration);

pub struct Metered {
    inner: ResponseBody,
    /// Counted and not reported yet.
    pending: u64,
    report: Box<dyn FnMut(u64) + Send + Sync>,
}

/// Bytes between two reports of a streaming body.
const REPORT_EVERY: u64 = 1024 * 1024;

impl Metered {
    pub fn wrap(inner: ResponseBody, report: Box<dyn FnMut(u64) + Send + Sync>) -> ResponseBody {
        ResponseBody::Metered(Box::new(Self {
            inner,
            pending: 0,
            report,
        }))
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        if self.pending > 0 {
            (self.report)(self.pending);
        }
    }
}

/// Errors of a response body; boxed only when one happens.
pub type ResponseBodyError = Box<dyn std::error::Error + Send + Sync>;

impl ResponseBody {
    pub fn local(bytes: impl Into<Bytes>) -> Self {
        ResponseBody::Local(Some(bytes.into()))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = ResponseBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ResponseBodyError>>> {
        match self.get_mut() {
            ResponseBody::H1(inner) => Pin::new(inner).poll_frame(cx).map_err(Into::into),
            ResponseBody::Upstream(inner) => Pin::new(inner).poll_frame(cx).map_err(Into::into),
            ResponseBody::Local(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ResponseBody::Grpc(message, trailers) => Poll::Ready(
                message
                    .take()
                    .map(Frame::data)
                    .or_else(|| trailers.take().map(Frame::trailers))
                    .map(Ok),
            ),
            ResponseBody::Idle(idle) => match Pin::new(&mut idle.inner).poll_frame(cx) {
                Poll::Pending => match idle.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(StreamIdle(idle.idle))))),
                    Poll::Pending => Poll::Pending,
                },
                ready => {
                    let deadline = tokio::time::Instant::now() + idle.idle;
                    idle.timer.as_mut().reset(deadline);
                    ready
                }
            },
            ResponseBody::Compressed(inner) => Pin::new(&mut **inner).poll_frame(cx),
            ResponseBody::Deadline(deadline) => deadline.poll_frame(cx),
            ResponseBody::Held(held) => {
                let polled = Pin::new(&mut held.inner).poll_frame(cx);
                if matches!(polled, Poll::Ready(None | Some(Err(_)))) || held.inner.is_end_stream()
                {
                    held.place = None;
                }
                polled
            }
            ResponseBody::Web(inner) => {
                Pin::new(inner.get_mut()).poll_frame(cx).map_err(Into::into)
            }
            ResponseBody::Metered(metered) => {
                let polled = Pin::new(&mut metered.inner).poll_frame(cx);
                if let Poll::Ready(Some(Ok(frame))) = &polled
                    && let Some(data) = frame.data_ref()
                {
                    metered.pending += data.len() as u64;
                }
                // Reported before the end reaches the client, so its next request sees it.
                let ended = matches!(polled, Poll::Ready(None)) || metered.inner.is_end_stream();
                if metered.pending >= REPORT_EVERY || (ended && metered.pending > 0) {
                    (metered.report)(std::mem::take(&mut metered.pending));
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::H1(inner) => inner.is_end_stream(),
            ResponseBody::Upstream(inner) => inner.is_end_stream(),
            ResponseBody::Local(bytes) => bytes.is_none(),
            ResponseBody::Grpc(message, trailers) => message.is_none() && trailers.is_none(),
            ResponseBody::Metered(metered) => metered.inner.is_end_stream(),
            ResponseBody::Idle(idle) => idle.inner.is_end_stream(),
            ResponseBody::Compressed(inner) => inner.is_end_stream(),
            ResponseBody::Held(held) => held.inner.is_end_stream(),
            ResponseBody::Deadline(deadline) => deadline
                .inner
                .as_ref()
                .is_none_or(ResponseBody::is_end_stream),
            ResponseBody::Web(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::H1(inner) => inner.size_hint(),
            ResponseBody::Upstream(inner) => inner.size_hint(),
            ResponseBody::Local(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            ResponseBody::Grpc(message, _) => {
                SizeHint::with_exact(message.as_ref().map_or(0, |b| b.len() as u64))
            }
            ResponseBody::Metered(metered) => metered.inner.size_hint(),
            ResponseBody::Idle(idle) => idle.inner.size_hint(),
            ResponseBody::Compressed(inner) => inner.size_hint(),
            ResponseBody::Held(held) => held.inner.size_hint(),
            // It may end early, with trailers.
            ResponseBody::Deadline(_) => SizeHint::default(),
            ResponseBody::Web(_) => SizeHint::default(),
        }
    }
}
