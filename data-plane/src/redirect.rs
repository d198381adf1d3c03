//! The plain-HTTP listener that sends everyone to HTTPS: `308 Permanent Redirect` to the
//! same host, path and query on the TLS port (308 keeps the method and body).

use std::convert::Infallible;
use std::time::Duration;

use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::body::ResponseBody;
use crate::deny::Deny;
use crate::headers::{self, X_REQUEST_ID};

/// Redirects until `shutdown`. `https_port` is left out of the URL when it is 443.
pub async fn serve(listener: TcpListener, https_port: u16, mut shutdown: watch::Receiver<bool>) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = crate::stopped(&mut shutdown) => return,
        };
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| async move {
                Ok::<_, Infallible>(redirect(&request, https_port))
            });
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn redirect(request: &Request<Incoming>, https_port: u16) -> Response<ResponseBody> {
    let request_id = headers::request_id(request.headers());
    let host = headers::authority(request)
        .filter(|a| crate::pipeline::admit::valid_authority(a))
        .map(headers::host_of);
    let Some(host) = host else {
        let mut response = Deny::BadRequest("a request needs a Host to be redirected to HTTPS")
            .into_response(&request_id);
        response.headers_mut().insert(&X_REQUEST_ID, request_id);
        return response;
    };
    let port = if https_port == 443 {
        String::new()
    } else {
        format!(":{https_port}")
    };
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = format!("https://{host}{port}{path}");
    let mut response = Response::new(ResponseBody::Local(None));
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response.headers_mut().insert(&X_REQUEST_ID, request_id);
    response
}
