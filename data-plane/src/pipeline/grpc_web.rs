//! gRPC-Web for browsers (`application/grpc-web`, `+proto`, and the base64 `-text` forms):
//! tonic-web translates the request to gRPC — the phases then run on it like on any gRPC
//! call — and the answer back, the trailers becoming the body's last frame. The gateway's
//! own refusals stay gRPC statuses in the response head (a trailers-only answer, which
//! gRPC-Web clients read the same way).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use http::{Request, Response};
use hyper::body::Incoming;
use tower::{Layer, Service};

use crate::body::{RequestBody, ResponseBody};
use crate::deny::Deny;
use crate::runtime::Runtime;

use super::{Context, Proxy};

/// Whether the request is gRPC-Web (any of its content types).
pub(super) fn is_grpc_web<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc-web"))
}

pub(super) async fn serve<'r>(
    proxy: &Proxy,
    runtime: &'r Runtime,
    request: Request<Incoming>,
    context: &mut Context<'r>,
) -> Result<Response<ResponseBody>, Deny> {
    let phases = Phases {
        proxy,
        runtime,
        context: Some(context),
    };
    let mut service = tonic_web::GrpcWebLayer::new().layer(phases);
    let response = service.call(request).await?;
    Ok(response.map(|body| ResponseBody::Web(sync_wrapper::SyncWrapper::new(body))))
}

/// The phases as the one-call service tonic-web wraps.
struct Phases<'a, 'r> {
    proxy: &'a Proxy,
    runtime: &'r Runtime,
    context: Option<&'a mut Context<'r>>,
}

type PhasesFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, Deny>> + Send + 'a>>;

impl<'a, 'r: 'a> Service<Request<tonic::body::Body>> for Phases<'a, 'r> {
    type Response = Response<ResponseBody>;
    type Error = Deny;
    type Future = PhasesFuture<'a>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Deny>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<tonic::body::Body>) -> Self::Future {
        let (proxy, runtime, context) = (self.proxy, self.runtime, self.context.take());
        Box::pin(async move {
            let Some(context) = context else {
                return Err(Deny::BadRequest("one gRPC-Web call per request"));
            };
            let limit = proxy.shared.limits.max_body_bytes;
            let request = request.map(|body| RequestBody::web(body, limit));
            proxy.phases(runtime, request, context).await
        })
    }
}
