//! The client-facing listener: HTTP/1.1 and HTTP/2 on one port — over TLS (ALPN) or in
//! cleartext (h2c prior knowledge) — with graceful drain on shutdown.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::headers::Peer;
use crate::proxy::Proxy;

/// Time a client has to send a complete request head (slow-loris protection).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Time a client has to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// hyper's own read buffer is sized just above the header limit so that the proxy's
/// precise check answers in JSON, and hyper's 431 only catches the grossly oversized.
const HEADER_SLACK: usize = 16 * 1024;

pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    mut shutdown: watch::Receiver<bool>,
    drain_timeout: Duration,
    tls: Option<TlsAcceptor>,
) {
    let limit = proxy.limits().max_header_bytes + HEADER_SLACK;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(limit.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limit).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let graceful = GracefulShutdown::new();

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
        let _ = stream.set_nodelay(true);
        let (proxy, builder, watcher, tls) = (
            proxy.clone(),
            builder.clone(),
            graceful.watcher(),
            tls.clone(),
        );
        tokio::spawn(async move {
            let Some(acceptor) = tls else {
                return serve_connection(builder, stream, Peer::new(client, false), proxy, watcher)
                    .await;
            };
            // The handshake runs on the connection's own task: a slow client holds nothing else up.
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => {
                    serve_connection(builder, stream, Peer::new(client, true), proxy, watcher).await
                }
                Ok(Err(error)) => tracing::debug!(%client, %error, "TLS handshake failed"),
                Err(_) => tracing::debug!(%client, "TLS handshake timed out"),
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(drain_timeout) => tracing::warn!(?drain_timeout, "drain timeout; closing the remaining connections"),
    }
}

async fn serve_connection<IO>(
    builder: auto::Builder<TokioExecutor>,
    io: IO,
    peer: Peer,
    proxy: Arc<Proxy>,
    watcher: Watcher,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let client = peer.addr;
    let service = service_fn(move |request| {
        let (proxy, peer) = (proxy.clone(), peer.clone());
        // Boxed: hyper moves the service future a few times per request, and a pointer is
        // cheaper to move than the whole request state machine.
        Box::pin(async move { Ok::<_, Infallible>(proxy.handle(&peer, request).await) })
    });
    let connection = builder
        .serve_connection(TokioIo::new(io), service)
        .into_owned();
    if let Err(error) = watcher.watch(connection).await {
        tracing::debug!(%client, %error, "connection ended with an error");
    }
}
