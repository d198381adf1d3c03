//! Pavilion's control plane: reads resources from one source, compiles them into
//! versioned snapshots, streams those to data planes and reports status.
//!
//! ```text
//!  Source ──items──▶ controller: compile ──▶ Published ──watch──▶ gRPC streams ──▶ data planes
//!                                              │                        ◀── ACK / NACK
//!                                              └──▶ GET /v1/status (conditions, nodes)
//! ```

pub mod access;
pub mod admission;
pub mod api;
pub mod certs;
pub mod compile;
pub mod controller;
pub mod delivery;
pub mod dir_status;
pub mod explain;
pub mod fleet;
#[doc(hidden)]
pub mod fuzzing;
pub mod keygen;
pub mod kubernetes;
pub mod kv;
pub mod metrics;
pub mod mirror;
pub mod placements;
pub mod rebalance;
pub mod source;
pub mod status;
pub mod tls;
pub mod validate;
pub mod worker;
pub mod writeback;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use pavilion_proto::v1::snapshot_discovery_server::SnapshotDiscoveryServer;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::delivery::SnapshotService;
use crate::delivery::nodes::Nodes;
pub use crate::delivery::peer::StreamLimits;
pub use crate::kubernetes::KubeOptions;
use crate::kv::KvAddress;
use crate::metrics::Metrics;
use crate::rebalance::Rebalancer;
use crate::source::{DirSource, KubeSource, KvSource, Source, SourceError};

/// Where the control plane reads resources from (`--source`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceSpec {
    /// `dir:PATH` — YAML files below a directory.
    Dir(PathBuf),
    /// `nats://HOST:PORT[?bucket=NAME]` — a JetStream KV bucket.
    Kv(KvAddress),
    /// `kube` — custom resources in the Kubernetes API.
    Kube,
}

impl FromStr for SourceSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Some(path) = text.strip_prefix("dir:") {
            if path.is_empty() {
                return Err("dir: needs a path, e.g. dir:./examples/config".into());
            }
            return Ok(SourceSpec::Dir(path.into()));
        }
        if text.starts_with("nats://") {
            return text.parse().map(SourceSpec::Kv);
        }
        if text == "kube" {
            return Ok(SourceSpec::Kube);
        }
        Err(format!(
            "unknown source `{text}`; expected dir:PATH, kube or nats://HOST:PORT[?bucket=NAME]"
        ))
    }
}

impl fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceSpec::Dir(path) => write!(f, "dir:{}", path.display()),
            SourceSpec::Kv(address) => write!(f, "{address}"),
            SourceSpec::Kube => f.write_str("kube"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub source: SourceSpec,
    pub grpc_listen: SocketAddr,
    pub http_listen: SocketAddr,
    /// Cluster access, watch scope and leader election (`--source kube`).
    pub kube: KubeOptions,
    /// Copy accepted resources into this KV bucket (`--source kube` only).
    pub mirror_to: Option<KvAddress>,
    /// Only RateLimitPolicies in this namespace may target the whole gateway
    /// (`--gateway-namespace`).
    pub gateway_namespace: String,
    /// TLS (and, with a client CA, mutual TLS) on the snapshot stream; cleartext when `None`.
    pub grpc_tls: Option<GrpcTls>,
    /// Caps on snapshot streams.
    pub streams: StreamLimits,
    /// Bearer tokens of the control-plane API, one per line (`--api-token-file`).
    pub api_token_file: Option<PathBuf>,
    /// Bearer tokens given directly (tests, embedding), besides the file's.
    pub api_tokens: Vec<String>,
    /// Serve the validating admission webhook here (HTTPS, with `grpc_tls`'s certificate).
    pub webhook_listen: Option<SocketAddr>,
    /// Serve the API (`http_listen`) over HTTPS with `grpc_tls`'s certificate.
    pub api_tls: bool,
}

/// The control plane's certificate for the snapshot stream, and the CA that signs data
/// planes' client certificates.
#[derive(Clone, Debug)]
pub struct GrpcTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Require client certificates signed by this CA (PEM); a node's id must then be a
    /// name of its certificate.
    pub client_ca: Option<PathBuf>,
}

impl Config {
    /// Listeners on loopback ephemeral ports and default cluster options: for tests and embedding.
    pub fn local(source: SourceSpec) -> Self {
        Self {
            source,
            grpc_listen: ([127, 0, 0, 1], 0).into(),
            http_listen: ([127, 0, 0, 1], 0).into(),
            kube: KubeOptions::default(),
            mirror_to: None,
            gateway_namespace: compile::DEFAULT_GATEWAY_NAMESPACE.to_owned(),
            grpc_tls: None,
            streams: StreamLimits::default(),
            api_token_file: None,
            api_tokens: Vec::new(),
            webhook_listen: None,
            api_tls: false,
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
    #[error("source failed: {0}")]
    Source(#[from] SourceError),
    #[error(transparent)]
    Kube(#[from] kubernetes::ClientError),
    #[error("--mirror-to needs --source kube")]
    MirrorWithoutKube,
    #[error("{0} stopped unexpectedly")]
    Stopped(&'static str),
    #[error("cannot read {path}: {source}")]
    ReadTls {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(#[from] pavilion_data::tls::TlsError),
    #[error("--api-tls needs --grpc-tls-cert and --grpc-tls-key")]
    ApiTlsWithoutCertificate,
    #[error(transparent)]
    Access(#[from] access::AccessError),
    #[error(transparent)]
    Webhook(#[from] admission::WebhookError),
}

/// A running control plane.
pub struct ControlPlane {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// The admission webhook's address, when it is served.
    pub webhook_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    /// Whether this replica writes statuses: always, except under Kubernetes where the
    /// Lease decides (then the election task holds the sender).
    _leader: Option<watch::Sender<bool>>,
    source: JoinHandle<Result<(), SourceError>>,
    servers: Vec<JoinHandle<()>>,
}

/// Binds both listeners and starts the source, the compiler and the servers.
pub async fn start(config: Config) -> Result<ControlPlane, Error> {
    let metrics = Metrics::new();
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (items_tx, items_rx) = watch::channel(None);
    let (published_tx, published_rx) = watch::channel(None);
    let (shipments_tx, shipments_rx) = watch::channel(None);
    let nodes = Arc::new(Nodes::new(metrics.connected.clone()));

    // Both listeners first: a port that cannot be bound must fail the start before any
    // task runs.
    let grpc_listener = tokio::net::TcpListener::bind(config.grpc_listen)
        .await
        .map_err(|source| Error::Listen {
            addr: config.grpc_listen,
            source,
        })?;
    let grpc_addr = grpc_listener.local_addr().map_err(|source| Error::Listen {
        addr: config.grpc_listen,
        source,
    })?;
    let http_listener = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .map_err(|source| Error::Listen {
            addr: config.http_listen,
            source,
        })?;
    let http_addr = http_listener.local_addr().map_err(|source| Error::Listen {
        addr: config.http_listen,
        source,
    })?;
    if config.mirror_to.is_some() && config.source != SourceSpec::Kube {
        return Err(Error::MirrorWithoutKube);
    }
    // One certificate for every TLS listener, reloaded when its files change.
    let certificate = config
        .grpc_tls
        .as_ref()
        .map(|tls| tls::ServerCertificate::load(&tls.cert, &tls.key, shutdown_rx.clone()))
        .transpose()?;
    if config.api_tls && certificate.is_none() {
        return Err(Error::ApiTlsWithoutCertificate);
    }
    let webhook = match config.webhook_listen {
        Some(addr) => {
            let certificate = certificate
                .as_ref()
                .ok_or(admission::WebhookError::NoCertificate)?;
            let options = compile::CompileOptions {
                gateway_namespace: config.gateway_namespace.clone(),
            };
            Some(
                admission::Webhook::bind(
                    addr,
                    certificate.acceptor(None, &[b"h2", b"http/1.1"])?,
                    published_rx.clone(),
                    options,
                )
                .await?,
            )
        }
        None => None,
    };
    let webhook_addr = match &webhook {
        Some(webhook) => Some(webhook.local_addr().map_err(|source| Error::Listen {
            addr: config.webhook_listen.unwrap_or(http_addr),
            source,
        })?),
        None => None,
    };
    let (leader, leader_rx) = watch::channel(config.source != SourceSpec::Kube);
    let mut leader = Some(leader);
    let mut servers = Vec::new();
    let tokens = config.api_tokens.iter().map(String::as_str);
    let from_file = match &config.api_token_file {
        Some(path) => Some(access::Tokens::read(path)?),
        None => None,
    };
    let mut kube_client = None;
    // Set once the plan store can be reached; the API answers 503 until then.
    let rebalancer: Arc<std::sync::OnceLock<Arc<Rebalancer>>> = Arc::default();
    let writeback_inputs = || writeback::Inputs {
        published: published_rx.clone(),
        nodes: nodes.clone(),
        leader: leader_rx.clone(),
        backlog: metrics.status_backlog.clone(),
    };
    let source: Box<dyn Source> = match &config.source {
        SourceSpec::Dir(path) => {
            let started = Rebalancer::new(
                Box::new(rebalance::store::FilePlans::new(
                    path.join(".pavilion/plans"),
                )),
                Box::new(rebalance::cutover::FileCutover),
                published_rx.clone(),
                rebalance::Fleet {
                    nodes: nodes.clone(),
                    board: None,
                },
            );
            servers.push(tokio::spawn(
                started
                    .clone()
                    .reconcile(leader_rx.clone(), shutdown_rx.clone()),
            ));
            let _ = rebalancer.set(started);
            servers.push(tokio::spawn(writeback::run(
                Box::new(dir_status::DirStatusSink::new(path)),
                writeback_inputs(),
                None,
            )));
            Box::new(DirSource::new(path))
        }
        SourceSpec::Kv(address) => {
            servers.push(tokio::spawn(kv_writeback(
                address.clone(),
                config.kube.identity.clone(),
                writeback_inputs(),
                shutdown_rx.clone(),
                rebalancer.clone(),
            )));
            Box::new(KvSource::new(address.clone()))
        }
        SourceSpec::Kube => {
            let client = kubernetes::client(&config.kube).await?;
            kube_client = Some(client.clone());
            let election = leader.take().expect("created above");
            servers.push(tokio::spawn(kubernetes::lease::run(
                client.clone(),
                config.kube.clone(),
                election,
                shutdown_rx.clone(),
            )));
            let sink = Box::new(kubernetes::status::KubeStatusSink::new(
                client.clone(),
                &config.kube.identity,
                config.kube.namespace.clone(),
            ));
            let board: Arc<dyn fleet::NodeBoard> = Arc::new(kubernetes::nodes::KubeNodeBoard::new(
                client.clone(),
                &config.kube.lease_namespace,
            ));
            servers.push(tokio::spawn(fleet::post_reports(
                board.clone(),
                config.kube.identity.clone(),
                nodes.clone(),
                shutdown_rx.clone(),
            )));
            let started = Rebalancer::new(
                Box::new(rebalance::store::KubePlans::new(
                    client.clone(),
                    &config.kube.lease_namespace,
                )),
                Box::new(rebalance::cutover::KubeCutover::new(client.clone())),
                published_rx.clone(),
                rebalance::Fleet {
                    nodes: nodes.clone(),
                    board: Some((board.clone(), config.kube.identity.clone())),
                },
            );
            servers.push(tokio::spawn(
                started
                    .clone()
                    .reconcile(leader_rx.clone(), shutdown_rx.clone()),
            ));
            let _ = rebalancer.set(started);
            servers.push(tokio::spawn(writeback::run(
                sink,
                writeback_inputs(),
                Some((board, config.kube.identity.clone())),
            )));
            if let Some(address) = &config.mirror_to {
                servers.push(tokio::spawn(mirror::run(
                    address.clone(),
                    config.kube.namespace.clone(),
                    published_rx.clone(),
                    leader_rx,
                )));
            }
            Box::new(KubeSource::new(client, config.kube.namespace.clone()))
        }
    };
    register_scraped(&metrics, &config, shipments_rx.clone(), nodes.clone());
    let health = source::SourceHealth::new(metrics.source_up.clone());
    let source = tokio::spawn(source.run(items_tx, health.clone()));
    servers.push(tokio::spawn(controller::run(
        items_rx,
        controller::Outputs {
            shipments: shipments_tx,
            published: published_tx,
        },
        metrics.clone(),
        compile::CompileOptions {
            gateway_namespace: config.gateway_namespace.clone(),
        },
    )));

    let service = SnapshotService::new(
        shipments_rx,
        nodes.clone(),
        metrics.clone(),
        shutdown_rx.clone(),
        config.streams,
    );
    let grpc_tls = match (&config.grpc_tls, &certificate) {
        (Some(tls), Some(certificate)) => {
            if tls.client_ca.is_none() {
                tracing::warn!(%grpc_addr, "the snapshot stream is encrypted but clients are not authenticated: anyone who reaches it receives every snapshot and can report as any data plane; set --grpc-client-ca");
            }
            Some(certificate.acceptor(tls.client_ca.as_deref(), &[b"h2"])?)
        }
        _ => {
            tracing::warn!(%grpc_addr, "the snapshot stream is NOT encrypted: anyone who reaches it receives every snapshot and can report as any data plane; set --grpc-tls-cert, --grpc-tls-key and --grpc-client-ca");
            None
        }
    };
    let grpc = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .add_service(SnapshotDiscoveryServer::new(service));
    let grpc_stopped = stopped(shutdown_rx.clone());
    let grpc: futures::future::BoxFuture<'static, Result<(), tonic::transport::Error>> =
        match grpc_tls {
            Some(acceptor) => {
                let listener = tls::TlsListener::new(
                    grpc_listener,
                    acceptor,
                    "snapshot stream",
                    shutdown_rx.clone(),
                )
                .map_err(|source| Error::Listen {
                    addr: grpc_addr,
                    source,
                })?;
                Box::pin(grpc.serve_with_incoming_shutdown(listener.into_stream(), grpc_stopped))
            }
            None => {
                let incoming = tonic::transport::server::TcpIncoming::from(grpc_listener)
                    .with_nodelay(Some(true));
                Box::pin(grpc.serve_with_incoming_shutdown(incoming, grpc_stopped))
            }
        };
    let grpc = tokio::spawn(async move {
        if let Err(e) = grpc.await {
            tracing::error!(error = %e, "gRPC server failed");
        }
    });

    let token_set = match from_file {
        Some(mut file) => {
            file.extend(tokens);
            file
        }
        None => access::Tokens::from_list(tokens),
    };
    let access = Arc::new(access::Access::new(token_set, kube_client));
    let api = api::router(
        api::ApiState {
            source: config.source.to_string(),
            health,
            published: published_rx,
            nodes,
            metrics,
            rebalancer,
        },
        access,
    );
    if let Some(webhook) = webhook {
        servers.push(tokio::spawn(webhook.serve(shutdown_rx.clone())));
    }
    let api_acceptor = match (&certificate, config.api_tls) {
        (Some(certificate), true) => Some(certificate.acceptor(None, &[b"h2", b"http/1.1"])?),
        _ => None,
    };
    let http = match api_acceptor {
        Some(acceptor) => {
            let listener =
                tls::TlsListener::new(http_listener, acceptor, "API", shutdown_rx.clone())
                    .map_err(|source| Error::Listen {
                        addr: http_addr,
                        source,
                    })?;
            tokio::spawn(async move {
                let server =
                    axum::serve(listener, api).with_graceful_shutdown(stopped(shutdown_rx));
                if let Err(e) = server.await {
                    tracing::error!(error = %e, "HTTP server failed");
                }
            })
        }
        None => tokio::spawn(async move {
            let server =
                axum::serve(http_listener, api).with_graceful_shutdown(stopped(shutdown_rx));
            if let Err(e) = server.await {
                tracing::error!(error = %e, "HTTP server failed");
            }
        }),
    };
    servers.extend([grpc, http]);
    tracing::info!(%grpc_addr, %http_addr, webhook = webhook_addr.map(tracing::field::display), source = %config.source, "control plane started");
    Ok(ControlPlane {
        grpc_addr,
        http_addr,
        webhook_addr,
        shutdown,
        _leader: leader,
        source,
        servers,
    })
}

/// Gauges read at scrape time: data planes (of this replica) not on the latest snapshot,
/// and when the control channel's certificate expires.
fn register_scraped(
    metrics: &Metrics,
    config: &Config,
    shipments: controller::ShipmentReceiver,
    nodes: Arc<Nodes>,
) {
    use pavilion_telemetry::scraped::{ScrapedGauge, certificate_expiry};
    let behind = ScrapedGauge::single(
        "pavilion_control_data_planes_behind",
        "Connected data planes not running the latest snapshot (refused it, or not yet applied).",
        move || {
            let version = shipments.borrow().as_ref()?.snapshot.version.clone();
            let behind = nodes.list().iter().filter(|n| n.version != version).count();
            Some(behind as f64)
        },
    );
    let mut collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![Box::new(behind)];
    if let Some(tls) = &config.grpc_tls {
        // The CA too: it is not renewed by itself (docs/deploy.md), so its expiry must alert.
        let files = std::iter::once(tls.cert.clone())
            .chain(tls.client_ca.clone())
            .collect();
        collectors.push(Box::new(certificate_expiry(files)));
    }
    for collector in collectors {
        metrics
            .registry
            .register(collector)
            .expect("metric names are unique");
    }
}

/// Writes statuses to the KV bucket and posts this replica's data planes there, and keeps
/// rebalancing plans there too, connecting (and reconnecting) on its own.
async fn kv_writeback(
    address: KvAddress,
    identity: String,
    inputs: writeback::Inputs,
    shutdown: watch::Receiver<bool>,
    rebalancer: Arc<std::sync::OnceLock<Arc<Rebalancer>>>,
) {
    let (published, nodes, leader) = (
        inputs.published.clone(),
        inputs.nodes.clone(),
        inputs.leader.clone(),
    );
    let store = loop {
        match kv::open(&address).await {
            Ok(store) => break store,
            Err(error) => {
                tracing::warn!(%error, "status write-back cannot reach the bucket; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    let board: Arc<dyn fleet::NodeBoard> = Arc::new(kv::KvNodeBoard::new(store.clone()));
    let started = Rebalancer::new(
        Box::new(rebalance::store::KvPlans::new(store.clone())),
        Box::new(rebalance::cutover::KvCutover::new(store.clone())),
        published.clone(),
        rebalance::Fleet {
            nodes: nodes.clone(),
            board: Some((board.clone(), identity.clone())),
        },
    );
    let reconciling = tokio::spawn(started.clone().reconcile(leader.clone(), shutdown.clone()));
    let _ = rebalancer.set(started);
    let posting = tokio::spawn(fleet::post_reports(
        board.clone(),
        identity.clone(),
        nodes.clone(),
        shutdown,
    ));
    let sink = Box::new(kv::KvStatusSink::new(store));
    writeback::run(sink, inputs, Some((board, identity))).await;
    posting.abort();
    reconciling.abort();
}

pub(crate) async fn stopped(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

impl ControlPlane {
    /// Runs until `signal` resolves (then stops gracefully) or the source fails.
    pub async fn run_until(mut self, signal: impl Future<Output = ()>) -> Result<(), Error> {
        let result = tokio::select! {
            () = signal => Ok(()),
            source = &mut self.source => match source {
                Ok(Ok(())) => Err(Error::Stopped("the source")),
                Ok(Err(e)) => Err(Error::Source(e)),
                Err(_) => Err(Error::Stopped("the source")),
            },
        };
        self.stop().await;
        result
    }

    /// Ends every stream and server and waits for them (a few seconds at most each).
    pub async fn stop(self) {
        self.shutdown.send_replace(true);
        self.source.abort();
        for server in self.servers {
            // The controller and the write-back run until their inputs close, which
            // aborting the source does; anything stuck (a bucket that never answers) is cut.
            let abort = server.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), server)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}
