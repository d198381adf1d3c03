//! Thread per core: each worker is a single-threaded runtime with its own listening socket
//! (SO_REUSEPORT, so the kernel spreads connections across workers) and its own upstream
//! pools. A request never leaves the thread it arrived on, and workers share nothing on
//! the hot path but the snapshot pointer and metric counters.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol as IpProtocol, Socket, Type};
use tokio::sync::{oneshot, watch};

use crate::connection::ConnectionLimits;
use crate::listener::{self, ListenerSettings};
use crate::pipeline::{Proxy, Shared};
use crate::upstream::{UpstreamOptions, Upstreams};

/// Pending connections per worker socket.
const BACKLOG: i32 = 1024;
/// How often each worker closes upstream connections idle past their timeout.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Binds `count` sockets to `addr` with SO_REUSEPORT. With port 0, the first socket picks
/// the port and the others join it.
pub fn bind(addr: SocketAddr, count: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    // SO_REUSEPORT would let a second gateway on the same port silently split the traffic
    // with this one: make sure nobody listens there yet.
    if addr.port() != 0 {
        drop(std::net::TcpListener::bind(addr)?);
    }
    let mut listeners = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count.max(1) {
        let socket = Socket::new(
            Domain::for_address(addr),
            Type::STREAM,
            Some(IpProtocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(BACKLOG)?;
        let listener: std::net::TcpListener = socket.into();
        addr = listener.local_addr()?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Running workers; `join` waits until each has drained and stopped.
pub struct Workers {
    done: Vec<oneshot::Receiver<()>>,
}

pub struct WorkerSettings {
    pub upstream: UpstreamOptions,
    /// Client TLS for `https://` backends.
    pub upstream_tls: rustls::ClientConfig,
    /// Server TLS for the listener; cleartext when `None`.
    pub listener_tls: Option<Arc<rustls::ServerConfig>>,
    pub connections: ConnectionLimits,
    pub drain_timeout: Duration,
}

/// Starts one worker thread per listener.
pub fn spawn(
    listeners: Vec<std::net::TcpListener>,
    shared: Arc<Shared>,
    settings: WorkerSettings,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<Workers> {
    let mut done = Vec::with_capacity(listeners.len());
    for (index, listener) in listeners.into_iter().enumerate() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (finished, done_rx) = oneshot::channel();
        let upstreams = Upstreams::new(&settings.upstream, settings.upstream_tls.clone());
        let listener_settings = ListenerSettings {
            connections: settings.connections,
            drain_timeout: settings.drain_timeout,
            tls: settings
                .listener_tls
                .clone()
                .map(tokio_rustls::TlsAcceptor::from),
        };
        let (shared, shutdown) = (shared.clone(), shutdown.clone());
        std::thread::Builder::new()
            .name(format!("pavilion-worker-{index}"))
            .spawn(move || {
                runtime.block_on(async move {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => {
                            let access_log = shared.access_log.clone();
                            let proxy = Arc::new(Proxy::new(shared, upstreams));
                            let sweeper = tokio::spawn(sweep_idle(proxy.clone()));
                            let log_flusher = access_log
                                .clone()
                                .map(|log| tokio::spawn(log.flush_periodically()));
                            listener::serve(listener, proxy, shutdown, listener_settings).await;
                            sweeper.abort();
                            if let (Some(flusher), Some(log)) = (log_flusher, access_log) {
                                flusher.abort();
                                log.flush_here();
                            }
                        }
                        Err(error) => {
                            tracing::error!(worker = index, %error, "cannot register the listener")
                        }
                    }
                });
                let _ = finished.send(());
            })?;
        done.push(done_rx);
    }
    Ok(Workers { done })
}

async fn sweep_idle(proxy: Arc<Proxy>) {
    let mut ticks = tokio::time::interval(SWEEP_EVERY);
    loop {
        ticks.tick().await;
        proxy.upstreams().sweep();
    }
}

impl Workers {
    pub async fn join(self) {
        for done in self.done {
            let _ = done.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::bind;

    #[test]
    fn a_port_in_use_is_an_error_not_a_shared_listener() {
        let first = bind("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let taken = first[0].local_addr().unwrap();
        assert_eq!(
            first[1].local_addr().unwrap(),
            taken,
            "the workers share one port"
        );
        let error = bind(taken, 1).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::AddrInUse);
    }
}
