//! The client-facing listener: HTTP/1.1 and HTTP/2 on one port — over TLS (ALPN) or in
//! cleartext (h2c prior knowledge) — with a cap on open connections, idle and send
//! timeouts (see [`crate::connection`]), and graceful drain on shutdown.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tokio_rustls::TlsAcceptor;

use crate::connection::{ConnState, ConnectionLimits, Tracked, Watched};
use crate::headers::Peer;
use crate::pipeline::Proxy;

/// Time a client has to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// hyper's own read buffer is sized just above the header limit so that the proxy's
/// precise check answers in JSON, and hyper's 431 only catches the grossly oversized.
const HEADER_SLACK: usize = 16 * 1024;

/// How one worker's listener serves connections.
#[derive(Clone)]
pub struct ListenerSettings {
    pub connections: ConnectionLimits,
    /// How long in-flight requests may take to finish on shutdown.
    pub drain_timeout: Duration,
    /// Server TLS; cleartext when `None`.
    pub tls: Option<TlsAcceptor>,
}

pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    mut shutdown: watch::Receiver<bool>,
    settings: ListenerSettings,
) {
    let limits = proxy.limits();
    let buffer = limits.max_header_bytes + HEADER_SLACK;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.connections.header_timeout)
        .max_buf_size(buffer.max(8192))
        // Room above the proxy's own count limit, so that limit answers in JSON; only a
        // request with more than twice as many fields gets hyper's bare 431.
        .max_headers(limits.max_header_count.saturating_mul(2).max(100));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(buffer).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let open = proxy.open().clone();
    let port = listener.local_addr().map_or(0, |a| a.port());
    let metrics = proxy.metrics().clone();

    loop {
        let (stream, client) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = crate::stopped(&mut shutdown) => break,
        };
        if open.count.load(Ordering::Relaxed) >= settings.connections.max_per_worker {
            metrics
                .connections_closed
                .with_label_values(&["limit"])
                .inc();
            refuse(
                stream,
                settings.tls.is_some(),
                settings.connections.max_per_worker,
            );
            continue;
        }
        let guard = open.enter(&metrics.connections_open);
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            builder: builder.clone(),
            proxy: proxy.clone(),
            shutdown: shutdown.clone(),
            limits: settings.connections,
        };
        let tls = settings.tls.clone();
        tokio::spawn(async move {
            let _open = guard;
            let Some(acceptor) = tls else {
                return connection
                    .serve(stream, Peer::new(client, port, false))
                    .await;
            };
            // The handshake runs on the connection's own task: a slow client holds nothing else up.
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => {
                    connection
                        .serve(stream, Peer::new(client, port, true))
                        .await
                }
                Ok(Err(error)) => tracing::debug!(%client, %error, "TLS handshake failed"),
                Err(_) => tracing::debug!(%client, "TLS handshake timed out"),
            }
        });
    }
    drop(listener);
    let drain_timeout = settings.drain_timeout;
    tokio::select! {
        () = open.drained() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(drain_timeout) => tracing::warn!(drain_timeout_ms = drain_timeout.as_millis() as u64, "drain timeout; closing the remaining connections"),
    }
}

/// Turns a connection away when the worker is at its cap: a cleartext client is told why
/// (503 in the JSON envelope, best effort, without waiting on the client); a TLS client
/// only sees the connection close, since answering would need a handshake.
fn refuse(stream: TcpStream, tls: bool, cap: usize) {
    tracing::debug!(
        cap,
        "connection refused: the worker is at its connection limit"
    );
    if tls {
        return;
    }
    let request_id = crate::headers::request_id(&http::HeaderMap::new());
    let request_id = request_id.to_str().unwrap_or_default();
    let body = serde_json::json!({
        "error": {
            "code": "too_many_connections",
            "message": format!("the gateway is at its limit of {cap} connections per worker; retry shortly"),
            "request_id": request_id,
        }
    })
    .to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncache-control: no-store\r\nretry-after: 1\r\nx-request-id: {request_id}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(response.as_bytes());
}

/// Everything one connection's task needs.
struct Connection {
    builder: auto::Builder<TokioExecutor>,
    proxy: Arc<Proxy>,
    shutdown: watch::Receiver<bool>,
    limits: ConnectionLimits,
}

impl Connection {
    /// Serves requests until the client leaves, the connection idles or stalls past its
    /// timeouts, or the worker shuts down (then in-flight requests finish first).
    async fn serve<IO>(mut self, io: IO, peer: Peer)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let client = peer.addr;
        let state = ConnState::new();
        let proxy = self.proxy.clone();
        let service_state = state.clone();
        let service = service_fn(move |request| {
            let (proxy, peer) = (proxy.clone(), peer.clone());
            let in_flight = service_state.begin();
            // Boxed: hyper moves the service future a few times per request, and a pointer is
            // cheaper to move than the whole request state machine.
            Box::pin(async move {
                let response = proxy.handle(&peer, request).await;
                Ok::<_, Infallible>(response.map(|body| Tracked::new(body, in_flight)))
            })
        });
        let connection = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(Watched::new(io, state.clone())), service)
            .into_owned();
        let mut connection = std::pin::pin!(connection);

        let limits = self.limits;
        let every = (limits.idle_timeout.min(limits.send_timeout) / 4)
            .clamp(Duration::from_millis(10), Duration::from_secs(5));
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Set once the connection was asked to close; it then gets one more tick to do so
        // on its own before it is dropped (if no request is in flight).
        let mut closing = false;
        let mut closing_ticks = 0u32;
        let closed = &self.proxy.metrics().connections_closed;
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%client, %error, "connection ended with an error");
                    }
                    return;
                }
                () = crate::stopped(&mut self.shutdown), if !closing => {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
                _ = ticks.tick() => {
                    if state.blocked_for().is_some_and(|waited| waited >= limits.send_timeout) {
                        closed.with_label_values(&["send_timeout"]).inc();
                        tracing::debug!(%client, "closing a connection whose client stopped reading");
                        return;
                    }
                    let idle = state.idle_for();
                    if closing {
                        closing_ticks += 1;
                        if idle.is_some() && closing_ticks >= 2 {
                            return;
                        }
                    } else if idle.is_some_and(|idle| idle >= limits.idle_timeout) {
                        closed.with_label_values(&["idle"]).inc();
                        connection.as_mut().graceful_shutdown();
                        closing = true;
                    }
                }
            }
        }
    }
}
