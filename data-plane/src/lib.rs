//! Pavilion's data plane: a stateless proxy serving the snapshot it is given.
//!
//! ```text
//!  control plane ──gRPC──▶ snapshot::client ──▶ Runtime::build ──▶ ArcSwap<Runtime> ◀── load per request
//!                                   └──▶ snapshot::cache (last known good)                    │
//!  client ──▶ listener (h1/h2, TLS) ──▶ pipeline: admit ▸ route ▸ cors ▸ ip ▸ limits ▸ authn ▸ tenant ▸ quota ▸ forward ▸ respond
//! ```

pub mod access_log;
pub mod admin;
pub mod auth;
pub mod body;
pub mod cache;
pub mod carry;
pub mod commands;
pub mod compress;
pub mod connection;
pub mod cors;
pub mod deny;
#[doc(hidden)]
pub mod fuzzing;
pub mod grpc;
pub mod headers;
pub mod identity;
pub mod listener;
pub mod metrics;
pub mod path;
pub mod pipeline;
pub mod placement;
pub mod ratelimit;
pub mod redirect;
pub mod route;
pub mod runtime;
pub mod security;
pub mod snapshot;
pub mod tls;
pub mod trace;
pub mod transform;
pub mod tunnel;
pub mod upstream;
pub mod workers;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pavilion_proto::Snapshot;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::AuthContext;
use crate::auth::ip::Cidrs;
use crate::auth::jwks::{JwksCache, JwksOptions};
use crate::connection::ConnectionLimits;
use crate::metrics::Metrics;
use crate::path::EscapedSlashes;
use crate::pipeline::{Limits, Shared};
use crate::ratelimit::redis::RedisCounters;
use crate::ratelimit::{Limiter, LimiterMetrics, LimiterOptions};
use crate::runtime::BuildError;
use crate::snapshot::Applier;
use crate::snapshot::client::{ClientOptions, ControlPlaneTls};
use crate::tls::TlsOptions;
use crate::upstream::UpstreamOptions;
use crate::workers::{WorkerSettings, Workers};

#[derive(Clone, Debug)]
pub struct Config {
    /// Control-plane gRPC URLs; empty runs on the cache (or `DataPlane::apply`) alone.
    pub control_planes: Vec<String>,
    /// TLS towards `https://` control planes (required for them).
    pub control_plane_tls: Option<ControlPlaneTls>,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub snapshot_cache: Option<PathBuf>,
    pub node_id: String,
    /// Proxy worker threads, each with its own listener socket and upstream pools.
    pub workers: usize,
    pub limits: Limits,
    /// What an encoded `/` or `\` in a request path means.
    pub escaped_slashes: EscapedSlashes,
    pub upstream: UpstreamOptions,
    /// Terminate TLS on `listen` with these certificates.
    pub tls: Option<TlsOptions>,
    /// A plain-HTTP listener that redirects to HTTPS (needs `tls`).
    pub redirect_listen: Option<SocketAddr>,
    /// The HTTPS port redirects point to, when clients reach the TLS listener on another
    /// port than it binds (a Service mapping 443 to 8443); default: the bound port.
    pub redirect_port: Option<u16>,
    /// Proxies whose `X-Forwarded-For` decides the client address for IP lists.
    pub trusted_proxies: Cidrs,
    /// Fetching and caching JWKS documents.
    pub jwks: JwksOptions,
    /// Redis for `backend: redis` rate limits (`redis://host:port[/db]`, `rediss://…`).
    pub redis: Option<String>,
    /// Deadline of one Redis round trip; past it, the limit's failure mode decides.
    pub redis_timeout: Duration,
    pub rate_limit: LimiterOptions,
    /// One log line per request; `None`: off.
    pub access_log: Option<access_log::AccessLogOptions>,
    /// How long in-flight requests may take to finish on shutdown.
    pub drain_timeout: Duration,
    /// How long a streamed response (no Content-Length: SSE, long polls) may go without a
    /// byte from the upstream before it is closed.
    pub stream_idle_timeout: Duration,
    /// Memory the response cache may hold (rules with `cache`), in bytes.
    pub cache_max_bytes: u64,
    /// How long to keep serving after the stop signal with `/ready` failing, before the
    /// drain: the time load balancers (kube-proxy, Swarm's routing mesh) take to stop
    /// sending new connections here.
    pub shutdown_delay: Duration,
    /// Idle and send timeouts, and the cap on open client connections.
    pub connections: ConnectionLimits,
    /// Tenants labelled individually in `pavilion_tenant_requests_total`.
    pub tenant_metric_labels: usize,
    /// Export spans of sampled requests to this OTLP/gRPC collector (`http://HOST:4317`).
    pub trace_endpoint: Option<String>,
    /// Share of new traces sampled (a client's `traceparent` flag is followed).
    pub trace_sample_ratio: f64,
    /// The identity API (`/v1/auth/*`, `/.well-known/*`) on the proxy listener; `None`: off.
    pub identity: Option<identity::IdentityConfig>,
}

impl Config {
    /// Listeners on loopback ephemeral ports, no control plane: for tests and embedding.
    pub fn local() -> Self {
        Self {
            control_planes: Vec::new(),
            control_plane_tls: None,
            listen: ([127, 0, 0, 1], 0).into(),
            admin_listen: ([127, 0, 0, 1], 0).into(),
            snapshot_cache: None,
            node_id: "local".into(),
            workers: 2,
            limits: Limits::default(),
            escaped_slashes: EscapedSlashes::default(),
            upstream: UpstreamOptions::default(),
            tls: None,
            redirect_listen: None,
            redirect_port: None,
            trusted_proxies: Cidrs::default(),
            jwks: JwksOptions::default(),
            redis: None,
            redis_timeout: ratelimit::DEFAULT_REDIS_TIMEOUT,
            rate_limit: LimiterOptions::default(),
            access_log: None,
            drain_timeout: Duration::from_secs(10),
            shutdown_delay: Duration::ZERO,
            stream_idle_timeout: Duration::from_secs(300),
            cache_max_bytes: 64 << 20,
            connections: ConnectionLimits::default(),
            tenant_metric_labels: metrics::DEFAULT_TENANT_LABELS,
            trace_endpoint: None,
            trace_sample_ratio: 0.01,
            identity: None,
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
    #[error("cannot start the proxy workers: {0}")]
    Workers(std::io::Error),
    #[error(transparent)]
    ListenerTls(#[from] tls::TlsError),
    #[error("--redirect-listen needs TLS on --listen (--tls-cert and --tls-key)")]
    RedirectWithoutTls,
    #[error("{0}")]
    Redis(String),
    #[error("cannot read {}: {source}", path.display())]
    ControlPlaneTls {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "control plane {0}: https:// needs --control-plane-ca, and --control-plane-ca needs https://"
    )]
    ControlPlaneScheme(String),
    #[error(transparent)]
    TraceExport(#[from] trace::export::ExportError),
    #[error("the identity service: {0}")]
    Identity(identity::IdentityError),
    #[error("the access log: {0}")]
    AccessLog(std::io::Error),
}

/// Longest wait at the end of a stop for the access log to be written out.
const ACCESS_LOG_CLOSE: Duration = Duration::from_secs(5);

/// A running data plane.
pub struct DataPlane {
    /// The proxy listener's address.
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The HTTPS-redirect listener's address, when there is one.
    pub redirect_addr: Option<SocketAddr>,
    applier: Applier,
    shared: Arc<Shared>,
    shutdown_delay: Duration,
    trace_stop: watch::Sender<bool>,
    trace_task: Option<JoinHandle<()>>,
    shutdown: watch::Sender<bool>,
    workers: Workers,
    tasks: Vec<JoinHandle<()>>,
}

/// Binds the listeners, restores the cached snapshot if any, and starts the workers, the
/// admin listener and the snapshot stream (on the caller's runtime).
pub async fn start(config: Config) -> Result<DataPlane, Error> {
    for endpoint in &config.control_planes {
        if endpoint.starts_with("https://") != config.control_plane_tls.is_some() {
            return Err(Error::ControlPlaneScheme(endpoint.clone()));
        }
        if endpoint.starts_with("http://") {
            tracing::warn!(%endpoint, "the snapshot stream to this control plane is NOT encrypted: whoever sits between them can read or change every snapshot; use https:// with --control-plane-ca (and --control-plane-cert/--control-plane-key for mutual TLS)");
        }
    }
    let mut metrics = Metrics::new();
    metrics.tenant_labels = config.tenant_metric_labels;
    let tls = upstream::tls_config(&config.upstream)?;
    let redis = config
        .redis
        .as_deref()
        .map(|url| RedisCounters::new(url, config.redis_timeout))
        .transpose()
        .map_err(Error::Redis)?;
    let limiter = Limiter::new(
        &config.rate_limit,
        redis.clone(),
        LimiterMetrics::new(&metrics.registry),
    );
    register_scraped(&metrics.registry, &config, redis.clone());
    let commands = commands::Commands::new(redis.clone());
    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut shared = Shared::new(metrics.clone(), &config, limiter, commands);
    shared.access_log = config
        .access_log
        .as_ref()
        .map(|options| access_log::AccessLog::start(options, &metrics.registry))
        .transpose()
        .map_err(Error::AccessLog)?;
    if let Some(identity) = &config.identity {
        shared.identity = Some(Arc::new(
            identity::Identity::open(identity.clone(), config.redis.is_some())
                .await
                .map_err(Error::Identity)?,
        ));
    }
    let mut trace_task = None;
    // The exporter stops after the workers have drained, so the drain's spans go too.
    let (trace_stop, trace_stop_rx) = watch::channel(false);
    if let Some(endpoint) = &config.trace_endpoint {
        let (queue, task) = trace::export::SpanQueue::start(
            endpoint,
            &config.node_id,
            &metrics.registry,
            trace_stop_rx,
        )?;
        shared.spans = Some(queue);
        trace_task = Some(task);
    }
    let shared = Arc::new(shared);
    let shared_for_stop = shared.clone();
    let jwks = JwksCache::new(
        config.jwks.clone(),
        tls.clone(),
        metrics.jwks_fetches.clone(),
    );
    let applier = Applier::new(
        shared.clone(),
        metrics.clone(),
        config.snapshot_cache.clone(),
        AuthContext {
            jwks: jwks.clone(),
            issued_keys: shared.identity.as_ref().map(|i| i.issued_keys()),
        },
        upstream::probe::Prober::new(&config.upstream, tls.clone()),
    );
    applier.restore_from_cache();

    let listen_error = |addr| move |source| Error::Listen { addr, source };
    let listeners =
        workers::bind(config.listen, config.workers).map_err(listen_error(config.listen))?;
    let addr = listeners[0]
        .local_addr()
        .map_err(listen_error(config.listen))?;
    let admin_listener = TcpListener::bind(config.admin_listen)
        .await
        .map_err(listen_error(config.admin_listen))?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(listen_error(config.admin_listen))?;

    if config.redirect_listen.is_some() && config.tls.is_none() {
        return Err(Error::RedirectWithoutTls);
    }
    let mut tasks = vec![tokio::spawn(jwks.refresh(shutdown_rx.clone()))];
    if let Some(redis) = redis {
        tasks.push(tokio::spawn(redis.run(shutdown_rx.clone())));
    }
    let listener_tls = match &config.tls {
        Some(options) => {
            let resolver = tls::CertResolver::new(options.certificates.clone())?;
            tasks.push(tokio::spawn(tls::watch_files(
                resolver.clone(),
                shutdown_rx.clone(),
            )));
            Some(tls::server_config(resolver, options.client_ca.as_deref())?)
        }
        None => None,
    };
    let mut redirect_addr = None;
    if let Some(wanted) = config.redirect_listen {
        let listener = TcpListener::bind(wanted)
            .await
            .map_err(listen_error(wanted))?;
        redirect_addr = Some(listener.local_addr().map_err(listen_error(wanted))?);
        tasks.push(tokio::spawn(redirect::serve(
            listener,
            config.redirect_port.unwrap_or(addr.port()),
            shutdown_rx.clone(),
        )));
    }
    let settings = WorkerSettings {
        upstream: config.upstream.clone(),
        upstream_tls: tls,
        listener_tls,
        connections: config.connections,
        drain_timeout: config.drain_timeout,
    };
    let workers = workers::spawn(listeners, shared.clone(), settings, shutdown_rx.clone())
        .map_err(Error::Workers)?;
    let admin = admin::router(shared);
    let mut admin_shutdown = shutdown_rx.clone();
    tasks.push(tokio::spawn(async move {
        let server = axum::serve(
            admin_listener,
            admin.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { stopped(&mut admin_shutdown).await });
        if let Err(error) = server.await {
            tracing::error!(%error, "admin server failed");
        }
    }));
    if !config.control_planes.is_empty() {
        let options = ClientOptions {
            endpoints: config.control_planes.clone(),
            node_id: config.node_id.clone(),
            tls: match &config.control_plane_tls {
                // Read once here so that missing files stop the start.
                Some(tls) => {
                    tls.client_config()
                        .map_err(|(path, source)| Error::ControlPlaneTls { path, source })?;
                    Some(tls.clone())
                }
                None => None,
            },
        };
        tasks.push(tokio::spawn(snapshot::client::run(
            options,
            applier.clone(),
            metrics,
            shutdown_rx,
        )));
    }
    tracing::info!(%addr, %admin_addr, workers = config.workers, node = %config.node_id, control_planes = %config.control_planes.join(","), "data plane started");
    Ok(DataPlane {
        addr,
        admin_addr,
        redirect_addr,
        applier,
        shared: shared_for_stop,
        shutdown_delay: config.shutdown_delay,
        trace_stop,
        trace_task,
        shutdown,
        workers,
        tasks,
    })
}

/// Gauges read at scrape time: whether Redis answers (only with `--redis`), and when each
/// configured certificate expires (the listener's, and the control channel's client one).
fn register_scraped(
    registry: &prometheus::Registry,
    config: &Config,
    redis: Option<Arc<RedisCounters>>,
) {
    use pavilion_telemetry::scraped::{ScrapedGauge, certificate_expiry};
    let mut certificates: Vec<PathBuf> = config
        .tls
        .iter()
        .flat_map(|tls| tls.certificates.iter().map(|c| c.cert.clone()))
        .collect();
    if let Some((cert, _)) = config
        .control_plane_tls
        .as_ref()
        .and_then(|t| t.identity.as_ref())
    {
        certificates.push(cert.clone());
    }
    let mut collectors: Vec<Box<dyn prometheus::core::Collector>> = Vec::new();
    if !certificates.is_empty() {
        collectors.push(Box::new(certificate_expiry(certificates)));
    }
    if let Some(redis) = redis {
        collectors.push(Box::new(ScrapedGauge::single(
            "pavilion_rate_limit_redis_up",
            "1 while Redis answers (pinged every second); 0 while Redis limits follow their failure mode.",
            move || Some(if redis.is_connected() { 1.0 } else { 0.0 }),
        )));
    }
    for collector in collectors {
        registry
            .register(collector)
            .expect("metric names are unique");
    }
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

    /// Runs until `signal` resolves, then reports not ready, serves on for the shutdown
    /// delay, drains and stops.
    pub async fn run_until(self, signal: impl Future<Output = ()>) {
        signal.await;
        if !self.shutdown_delay.is_zero() {
            self.shared
                .stopping
                .store(true, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(
                delay_ms = self.shutdown_delay.as_millis() as u64,
                "stopping: /ready now fails; serving on until load balancers have noticed"
            );
            tokio::time::sleep(self.shutdown_delay).await;
        }
        self.stop().await;
    }

    /// Stops accepting, lets in-flight requests finish (up to the drain timeout), stops.
    pub async fn stop(self) {
        self.shutdown.send_replace(true);
        self.workers.join().await;
        // The workers have handed in their last lines: see them written.
        if let Some(log) = self.shared.access_log.clone() {
            let _ = tokio::task::spawn_blocking(move || log.close(ACCESS_LOG_CLOSE)).await;
        }
        self.trace_stop.send_replace(true);
        for task in self.tasks.into_iter().chain(self.trace_task) {
            let _ = task.await;
        }
    }
}
