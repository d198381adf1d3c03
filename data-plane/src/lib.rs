//! Pavilion's data plane: a stateless proxy serving the snapshot it is given.
//!
//! ```text
//!  control plane ──gRPC──▶ snapshot::client ──▶ Runtime::build ──▶ ArcSwap<Runtime> ◀── load per request
//!                                   └──▶ snapshot::cache (last known good)                    │
//!  client ──▶ listener (h1/h2c) ──▶ proxy: ready ▸ limits ▸ path ▸ route ▸ upstream ───────────┘
//! ```

pub mod admin;
pub mod body;
pub mod deny;
pub mod headers;
pub mod listener;
pub mod metrics;
pub mod path;
pub mod proxy;
pub mod route;
pub mod runtime;
pub mod snapshot;
pub mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pavilion_proto::Snapshot;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::metrics::Metrics;
use crate::proxy::{Limits, Proxy};
use crate::runtime::BuildError;
use crate::snapshot::Applier;
use crate::snapshot::client::ClientOptions;
use crate::upstream::{UpstreamOptions, Upstreams};

#[derive(Clone, Debug)]
pub struct Config {
    /// Control-plane gRPC URLs; empty runs on the cache (or `DataPlane::apply`) alone.
    pub control_planes: Vec<String>,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub snapshot_cache: Option<PathBuf>,
    pub node_id: String,
    pub limits: Limits,
    pub upstream: UpstreamOptions,
    /// One log line per request.
    pub access_log: bool,
    /// How long in-flight requests may take to finish on shutdown.
    pub drain_timeout: Duration,
}

impl Config {
    /// Listeners on loopback ephemeral ports, no control plane: for tests and embedding.
    pub fn local() -> Self {
        Self {
            control_planes: Vec::new(),
            listen: ([127, 0, 0, 1], 0).into(),
            admin_listen: ([127, 0, 0, 1], 0).into(),
            snapshot_cache: None,
            node_id: "local".into(),
            limits: Limits::default(),
            upstream: UpstreamOptions::default(),
            access_log: false,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("upstream TLS settings: {0}")]
    Tls(#[from] rustls::Error),
}

/// A running data plane.
pub struct DataPlane {
    /// The proxy listener's address.
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    applier: Applier,
    shutdown: watch::Sender<bool>,
    listener: JoinHandle<()>,
    tasks: Vec<JoinHandle<()>>,
}

pub async fn start(config: Config) -> Result<DataPlane, Error> {
    let metrics = Metrics::new();
    let upstreams = Upstreams::new(&config.upstream)?;
    let proxy = Arc::new(Proxy::new(
        upstreams,
        metrics.clone(),
        config.limits,
        config.access_log,
    ));
    let applier = Applier::new(
        proxy.clone(),
        metrics.clone(),
        config.snapshot_cache.clone(),
    );
    applier.restore_from_cache();

    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .and_then(|l| Ok((l.local_addr()?, l)))
            .map_err(|source| Error::Listen { addr, source })
    };
    let (addr, listener) = bind(config.listen).await?;
    let (admin_addr, admin_listener) = bind(config.admin_listen).await?;
    let (shutdown, shutdown_rx) = watch::channel(false);

    let proxy_listener = tokio::spawn(listener::serve(
        listener,
        proxy.clone(),
        shutdown_rx.clone(),
        config.drain_timeout,
    ));
    let admin = admin::router(proxy, metrics.clone());
    let mut admin_shutdown = shutdown_rx.clone();
    let mut tasks = vec![tokio::spawn(async move {
        let server = axum::serve(admin_listener, admin)
            .with_graceful_shutdown(async move { stopped(&mut admin_shutdown).await });
        if let Err(error) = server.await {
            tracing::error!(%error, "admin server failed");
        }
    })];
    if !config.control_planes.is_empty() {
        let options = ClientOptions {
            endpoints: config.control_planes.clone(),
            node_id: config.node_id.clone(),
        };
        tasks.push(tokio::spawn(snapshot::client::run(
            options,
            applier.clone(),
            metrics,
            shutdown_rx,
        )));
    }
    tracing::info!(%addr, %admin_addr, node = %config.node_id, control_planes = ?config.control_planes, "data plane started");
    Ok(DataPlane {
        addr,
        admin_addr,
        applier,
        shutdown,
        listener: proxy_listener,
        tasks,
    })
}

/// Resolves once `shutdown` turns true (or its sender is gone).
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns must not live across an await: drop it here.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

impl DataPlane {
    /// Applies a snapshot directly, as if the control plane had sent it.
    pub async fn apply(&self, snapshot: Snapshot) -> Result<(), BuildError> {
        self.applier.apply(snapshot).await
    }

    /// The snapshot version being served; empty before the first.
    pub fn version(&self) -> String {
        self.applier.current_version()
    }

    /// Runs until `signal` resolves, then drains and stops.
    pub async fn run_until(self, signal: impl Future<Output = ()>) {
        signal.await;
        self.stop().await;
    }

    /// Stops accepting, lets in-flight requests finish (up to the drain timeout), stops.
    pub async fn stop(self) {
        self.shutdown.send_replace(true);
        let _ = self.listener.await;
        for task in self.tasks {
            let _ = task.await;
        }
    }
}
