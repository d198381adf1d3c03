//! The control plane's own TLS: one certificate (`--grpc-tls-cert/--grpc-tls-key`) for the
//! snapshot stream, the API (`--api-tls`) and the admission webhook, reloaded when its files
//! change (a Secret update, `pavilion-control certs` run again) without a restart: new
//! handshakes get the new certificate, open streams keep theirs. The files are watched by
//! the data plane's [`CertResolver`], so both halves rotate alike. The client CA is read at
//! start.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use pavilion_data::tls::{CertResolver, CertificateFiles, TlsError};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// Time a client has to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Handshakes in progress at once; further connections wait in the kernel's backlog.
const HANDSHAKES: usize = 256;

/// The certificate in use, and the task reloading it.
#[derive(Clone)]
pub struct ServerCertificate {
    resolver: Arc<CertResolver>,
}

impl ServerCertificate {
    /// Loads the files (a bad one stops the start) and reloads them until `shutdown`.
    pub fn load(
        cert: &Path,
        key: &Path,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self, TlsError> {
        let resolver = CertResolver::new(vec![CertificateFiles {
            cert: cert.to_owned(),
            key: key.to_owned(),
        }])?;
        tokio::spawn(pavilion_data::tls::watch_files(resolver.clone(), shutdown));
        Ok(Self { resolver })
    }

    /// An acceptor offering `alpn`, requiring client certificates from `client_ca` if given.
    pub fn acceptor(
        &self,
        client_ca: Option<&Path>,
        alpn: &[&[u8]],
    ) -> Result<TlsAcceptor, TlsError> {
        let mut config =
            (*pavilion_data::tls::server_config(self.resolver.clone(), client_ca)?).clone();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

/// Accepted, handshaken connections of one listener. Handshakes run side by side (one slow
/// client holds up no other) and are bounded in number and time.
pub struct TlsListener {
    connections: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local_addr: SocketAddr,
}

impl TlsListener {
    /// Accepts on `listener` until `shutdown` (or until this is dropped).
    pub fn new(
        listener: TcpListener,
        acceptor: TlsAcceptor,
        what: &'static str,
        shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<Self> {
        let local_addr = listener.local_addr()?;
        let (sender, connections) = mpsc::channel(64);
        let handshakes = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let Ok(permit) = handshakes.clone().acquire_owned().await else {
                    return;
                };
                let (stream, peer) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(error) => {
                            tracing::warn!(%error, listener = what, "cannot accept");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                    () = crate::stopped(shutdown.clone()) => return,
                    () = sender.closed() => return,
                };
                let _ = stream.set_nodelay(true);
                let acceptor = acceptor.clone();
                let sender = sender.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = sender.send((tls, peer)).await;
                        }
                        Ok(Err(error)) => {
                            tracing::debug!(%peer, %error, listener = what, "TLS handshake failed");
                        }
                        Err(_) => {
                            tracing::debug!(%peer, listener = what, "TLS handshake timed out");
                        }
                    }
                });
            }
        });
        Ok(Self {
            connections,
            local_addr,
        })
    }

    /// The next connection; `None` once the listener stopped.
    pub async fn next(&mut self) -> Option<(TlsStream<TcpStream>, SocketAddr)> {
        self.connections.recv().await
    }

    /// The connections as a stream, for tonic's `serve_with_incoming`.
    pub fn into_stream(
        self,
    ) -> impl futures::Stream<Item = Result<TlsStream<TcpStream>, std::io::Error>> {
        futures::stream::unfold(self, |mut listener| async move {
            listener
                .next()
                .await
                .map(|(stream, _)| (Ok(stream), listener))
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.next().await {
            Some(connection) => connection,
            // Stopped: wait for the graceful shutdown that stops the server too.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}
