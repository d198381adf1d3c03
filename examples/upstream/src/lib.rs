//! A small, fast HTTP upstream for the demo, the tests and the benchmarks. It speaks
//! HTTP/1.1 and h2c on one port and answers:
//!
//! * `/fast` — a fixed `ok` (benchmarks);
//! * `/delay/MS` — after MS milliseconds;
//! * `/stream/N[/MS]` — N chunks, MS (default 100) milliseconds apart (streaming must reach
//!   the client chunk by chunk);
//! * `/events/N[/MS]` — the same as server-sent events (`text/event-stream`, `id: i` and
//!   `data: event i` per event);
//! * `/blob/N` — N bytes, streamed in 64 KiB chunks as fast as the client reads;
//! * `/echo-body` — the request body, streamed back as it arrives;
//! * `/consume` — reads the whole request body, then answers with its length;
//! * `/status/CODE` — that status;
//! * `/readiness` — the rebalancing gate's answer (`{"ready": true}`, or 503 with
//!   `{"ready": false, "reason": …}` after [`Upstream::set_not_ready`]);
//! * anything else — JSON naming this upstream, the method, path, query and headers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

pub type Body = BoxBody<Bytes, hyper::Error>;

/// What an upstream says about itself: its name, and whether its gate says ready.
pub struct State {
    pub name: Arc<str>,
    /// `Some(reason)` while the gate says not ready.
    not_ready: std::sync::Mutex<Option<String>>,
}

impl State {
    pub fn new(name: &str) -> Arc<Self> {
        Arc::new(Self {
            name: name.into(),
            not_ready: std::sync::Mutex::new(None),
        })
    }

    fn not_ready(&self) -> Option<String> {
        self.not_ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// A running upstream; stops when dropped.
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: Arc<str>,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    /// Starts an upstream called `name` on a free loopback port.
    pub async fn start(name: &str) -> std::io::Result<Self> {
        Self::start_on(name, "127.0.0.1:0".parse().expect("valid address")).await
    }

    pub async fn start_on(name: &str, addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = State::new(name);
        let task = tokio::spawn(serve(listener, state.clone()));
        Ok(Self {
            addr,
            name: state.name.clone(),
            state,
            task,
        })
    }

    /// From now on `/readiness` says not ready, for `reason`.
    pub fn set_not_ready(&self, reason: &str) {
        *self
            .state
            .not_ready
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(reason.to_owned());
    }

    /// From now on `/readiness` says ready.
    pub fn set_ready(&self) {
        *self
            .state
            .not_ready
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Accepts connections until the task is dropped.
pub async fn serve(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_connection(stream, state.clone()));
    }
}

/// Serves one connection (plain TCP, or a TLS stream a test accepted).
pub async fn serve_connection<IO>(io: IO, state: Arc<State>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(respond(&state, request).await) }
    });
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(io), service)
        .await;
}

async fn respond(state: &State, request: Request<Incoming>) -> Response<Body> {
    let name = &*state.name;
    let path = request.uri().path().to_owned();
    let mut segments = path.trim_start_matches('/').splitn(2, '/');
    let first = segments.next().unwrap_or_default();
    let argument = segments.next().unwrap_or_default();
    let mut response = match first {
        "fast" => text(StatusCode::OK, "ok"),
        "delay" => {
            let ms = argument.parse().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            echo(name, &request)
        }
        "stream" | "events" => {
            let (chunks, gap) = argument.split_once('/').unwrap_or((argument, "100"));
            stream(
                chunks.parse().unwrap_or(3),
                Duration::from_millis(gap.parse().unwrap_or(100)),
                first == "events",
            )
        }
        "blob" => blob(argument.parse().unwrap_or(0)),
        "echo-body" => Response::new(request.into_body().boxed()),
        "consume" => match request.into_body().collect().await {
            Ok(body) => text_owned(StatusCode::OK, format!("{}", body.to_bytes().len())),
            Err(_) => text(StatusCode::BAD_REQUEST, "body failed"),
        },
        "readiness" => match state.not_ready() {
            None => text(StatusCode::OK, r#"{"ready":true}"#),
            Some(reason) => text_owned(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({ "ready": false, "reason": reason }).to_string(),
            ),
        },
        "status" => match argument
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
        {
            Some(status) => text(status, status.canonical_reason().unwrap_or("status")),
            None => text(StatusCode::BAD_REQUEST, "bad status"),
        },
        _ => echo(name, &request),
    };
    if let Ok(value) = HeaderValue::from_str(name) {
        response.headers_mut().insert("x-upstream", value);
    }
    response
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(full(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

fn text_owned(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(full(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

fn echo(name: &str, request: &Request<Incoming>) -> Response<Body> {
    let headers: serde_json::Map<String, serde_json::Value> = request
        .headers()
        .keys()
        .map(|key| {
            let values: Vec<&str> = request
                .headers()
                .get_all(key)
                .iter()
                .map(|v| v.to_str().unwrap_or("<binary>"))
                .collect();
            (key.as_str().to_owned(), values.join(", ").into())
        })
        .collect();
    let body = serde_json::json!({
        "upstream": name,
        "method": request.method().as_str(),
        "path": request.uri().path(),
        "query": request.uri().query(),
        "version": format!("{:?}", request.version()),
        "headers": headers,
    });
    let mut response = Response::new(full(Bytes::from(body.to_string())));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// `chunks` lines `gap` apart — or, as `events`, server-sent events.
fn stream(chunks: u32, gap: Duration, events: bool) -> Response<Body> {
    let (frames, receiver) = mpsc::channel(1);
    tokio::spawn(async move {
        for i in 0..chunks {
            if i > 0 {
                tokio::time::sleep(gap).await;
            }
            let text = if events {
                format!("id: {i}\ndata: event {i}\n\n")
            } else {
                format!("chunk {i}\n")
            };
            if frames
                .send(Ok::<_, hyper::Error>(Frame::data(Bytes::from(text))))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(ReceiverStream::new(
        receiver,
    ))));
    if events {
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
    }
    response
}

fn blob(total: u64) -> Response<Body> {
    const CHUNK: u64 = 64 * 1024;
    let block = Bytes::from(vec![b'x'; CHUNK as usize]);
    let frames = (0..total.div_ceil(CHUNK)).map(move |i| {
        let len = CHUNK.min(total - i * CHUNK) as usize;
        Ok::<_, hyper::Error>(Frame::data(block.slice(..len)))
    });
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(tokio_stream::iter(frames))));
    if let Ok(length) = HeaderValue::from_str(&total.to_string()) {
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, length);
    }
    response
}
