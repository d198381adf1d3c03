//! `pavilion-data`: the data plane.

/// mimalloc: per-thread free lists suit thread-per-core workers that allocate and free
/// small objects on every request (measured with `bench/run`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pavilion_data::access_log::{AccessLogOptions, Destination, FileSink, Layout};
use pavilion_data::auth::ip::Cidrs;
use pavilion_data::auth::jwks::JwksOptions;
use pavilion_data::connection::ConnectionLimits;
use pavilion_data::path::EscapedSlashes;
use pavilion_data::pipeline::Limits;
use pavilion_data::tls::{CertificateFiles, TlsOptions};
use pavilion_data::upstream::UpstreamOptions;
use pavilion_telemetry::LogFormat;

#[derive(Parser)]
#[command(
    name = "pavilion-data",
    version = pavilion_telemetry::build::LONG_VERSION,
    about = "Pavilion Gateway's data plane"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve traffic with the snapshots a control plane streams.
    Run(Box<RunArgs>),
    /// Exit 0 when URL answers 2xx: a health check for images without curl (HEALTHCHECK).
    Probe(pavilion_telemetry::probe::ProbeArgs),
    /// The identity service's audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Walk the whole hash chain: exit 0 when it is whole, 1 naming the first record that
    /// was changed, removed or moved.
    Verify {
        /// The identity store: nats://HOST:PORT[?bucket=PREFIX] or file:PATH.
        #[arg(long, env = "PAVILION_IDENTITY_STORE")]
        identity_store: pavilion_data::identity::StoreSpec,
    },
}

/// `pavilion-data audit verify`.
fn verify_audit(store: &pavilion_data::identity::StoreSpec) -> anyhow::Result<bool> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let store = pavilion_data::identity::open_store(store).await?;
        match pavilion_data::identity::audit::verify(&*store).await? {
            Ok(count) => {
                println!("the audit trail is whole: {count} records");
                Ok(true)
            }
            Err(broken) => {
                println!("the audit trail is broken: {broken}");
                Ok(false)
            }
        }
    })
}

#[derive(clap::Args)]
struct RunArgs {
    /// Control-plane gRPC addresses, comma-separated; tried in turn on failure.
    #[arg(
        long,
        env = "PAVILION_CONTROL_PLANE",
        value_delimiter = ',',
        required = true
    )]
    control_plane: Vec<String>,
    /// CA certificates (PEM) the control plane's certificate must chain to; the control
    /// plane is then reached over TLS (addresses without a scheme become https://).
    #[arg(long, env = "PAVILION_CONTROL_PLANE_CA")]
    control_plane_ca: Option<PathBuf>,
    /// This data plane's client certificate (PEM) for mutual TLS with the control plane;
    /// --node-id must be one of its names.
    #[arg(long, env = "PAVILION_CONTROL_PLANE_CERT", requires_all = ["control_plane_key", "control_plane_ca"])]
    control_plane_cert: Option<PathBuf>,
    /// The private key (PEM) of --control-plane-cert.
    #[arg(
        long,
        env = "PAVILION_CONTROL_PLANE_KEY",
        requires = "control_plane_cert"
    )]
    control_plane_key: Option<PathBuf>,
    /// The name the control plane's certificate must carry, when the address does not use it.
    #[arg(
        long,
        env = "PAVILION_CONTROL_PLANE_SERVER_NAME",
        requires = "control_plane_ca"
    )]
    control_plane_server_name: Option<String>,
    /// Where clients connect (HTTP, or HTTPS with --tls-cert).
    #[arg(long, env = "PAVILION_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Health, readiness and metrics.
    #[arg(long, env = "PAVILION_ADMIN_LISTEN", default_value = "127.0.0.1:9901")]
    admin_listen: SocketAddr,
    /// Keep the last applied snapshot here and serve it when starting without a control plane.
    #[arg(long, env = "PAVILION_SNAPSHOT_CACHE")]
    snapshot_cache: Option<PathBuf>,
    /// This data plane's name in the control plane's status (default: the host name).
    #[arg(long, env = "PAVILION_NODE_ID")]
    node_id: Option<String>,
    /// Proxy worker threads (default: one per CPU).
    #[arg(long, env = "PAVILION_WORKERS")]
    workers: Option<usize>,
    /// Largest request head (sum of header names and values) in bytes; more gets 431.
    #[arg(long, env = "PAVILION_MAX_HEADER_BYTES", default_value_t = Limits::default().max_header_bytes)]
    max_header_bytes: usize,
    /// Most header fields in one request; more gets 431.
    #[arg(long, env = "PAVILION_MAX_HEADER_COUNT", default_value_t = Limits::default().max_header_count)]
    max_header_count: usize,
    /// What `%2F`, `%5C` or `\` in a request path means: reject (400), unescape (a `/`
    /// before matching and forwarding), or keep (one segment, for upstreams that never decode it).
    #[arg(long, env = "PAVILION_ESCAPED_SLASHES", value_enum, default_value_t)]
    escaped_slashes: EscapedSlashes,
    /// Largest request body in bytes; more gets 413.
    #[arg(long, env = "PAVILION_MAX_BODY_BYTES", default_value_t = Limits::default().max_body_bytes)]
    max_body_bytes: u64,
    /// Serve HTTPS on --listen with this certificate chain (PEM); repeat for more, paired
    /// in order with --tls-key. SNI picks the certificate; the first is the default.
    #[arg(long, env = "PAVILION_TLS_CERT", value_delimiter = ',')]
    tls_cert: Vec<PathBuf>,
    /// The private key (PEM) of the --tls-cert at the same position.
    #[arg(long, env = "PAVILION_TLS_KEY", value_delimiter = ',')]
    tls_key: Vec<PathBuf>,
    /// Require client certificates signed by these CAs (PEM): mutual TLS.
    #[arg(long, env = "PAVILION_CLIENT_CA")]
    client_ca: Option<PathBuf>,
    /// Also listen for plain HTTP here and redirect everything to HTTPS (308).
    #[arg(long, env = "PAVILION_REDIRECT_LISTEN")]
    redirect_listen: Option<SocketAddr>,
    /// The HTTPS port redirects point to (when a load balancer maps 443 to --listen's
    /// port); default: --listen's port.
    #[arg(long, env = "PAVILION_REDIRECT_PORT")]
    redirect_port: Option<u16>,
    /// Proxies (CIDRs or addresses) whose X-Forwarded-For is believed when deciding the
    /// client address for IP allow/deny lists; comma-separated.
    #[arg(long, env = "PAVILION_TRUSTED_PROXIES", value_delimiter = ',')]
    trusted_proxies: Vec<String>,
    /// How often JWKS documents are fetched again.
    #[arg(long, env = "PAVILION_JWKS_REFRESH_SECONDS", default_value_t = 300)]
    jwks_refresh_seconds: u64,
    /// Least seconds between two JWKS fetches caused by unknown key ids (flood protection).
    #[arg(long, env = "PAVILION_JWKS_MIN_REFETCH_SECONDS", default_value_t = 10)]
    jwks_min_refetch_seconds: u64,
    /// Redis for `backend: redis` rate limits, e.g. redis://127.0.0.1:6379.
    #[arg(long, env = "PAVILION_REDIS")]
    redis: Option<String>,
    /// Deadline of one Redis round trip, in milliseconds; past it the limit's failureMode decides.
    #[arg(long, env = "PAVILION_REDIS_TIMEOUT_MS", default_value_t = 100)]
    redis_timeout_ms: u64,
    /// Data-plane replicas sharing the Redis limits: with failureMode local, each enforces
    /// 1/N of a limit while Redis is unreachable.
    #[arg(long, env = "PAVILION_REPLICAS", default_value_t = 1)]
    replicas: u64,
    /// Rate-limit keys kept in memory per counter set; beyond, idle keys are dropped first.
    #[arg(long, env = "PAVILION_RATE_LIMIT_MAX_KEYS", default_value_t = 1 << 18)]
    rate_limit_max_keys: usize,
    /// PEM file of CA certificates trusted for https:// backends, besides the web PKI.
    #[arg(long, env = "PAVILION_UPSTREAM_CA")]
    upstream_ca: Option<PathBuf>,
    /// Which client speaks HTTP/1.1 to http:// backends: inline (the default, measured
    /// faster) or hyper (hyper-util's pooled client, for comparison).
    #[arg(long, env = "PAVILION_UPSTREAM_HTTP1", default_value = "inline", value_parser = ["inline", "hyper"])]
    upstream_http1: String,
    /// Close a pooled upstream connection after this many seconds unused (a rule's
    /// `connections.idleTimeout` overrides it for its backends).
    #[arg(
        long,
        env = "PAVILION_UPSTREAM_IDLE_TIMEOUT_SECONDS",
        default_value_t = 60
    )]
    upstream_idle_timeout_seconds: u64,
    /// One line per request, JSON (or text with `--log-format pretty`), to stdout or
    /// `--access-log-file` (`--access-log false` to turn off).
    #[arg(long, env = "PAVILION_ACCESS_LOG", default_value_t = true, action = clap::ArgAction::Set)]
    access_log: bool,
    /// Write the access log to this file instead of stdout, rotated by size.
    #[arg(long, env = "PAVILION_ACCESS_LOG_FILE")]
    access_log_file: Option<PathBuf>,
    /// Rotate the access log file when a write would take it past this many MiB.
    #[arg(long, env = "PAVILION_ACCESS_LOG_MAX_MIB", default_value_t = 100)]
    access_log_max_mib: u64,
    /// Rotated access log files kept (`access.log.1` newest … `.N` oldest); 0 keeps none.
    #[arg(long, env = "PAVILION_ACCESS_LOG_KEEP", default_value_t = 5)]
    access_log_keep: u32,
    /// Close a client connection after this many seconds without a request in flight
    /// (a new connection that sends nothing included).
    #[arg(long, env = "PAVILION_IDLE_TIMEOUT_SECONDS", default_value_t = 60)]
    idle_timeout_seconds: u64,
    /// Close a connection whose request head is not complete this many seconds after its
    /// first byte (slowloris: headers sent a byte at a time).
    #[arg(long, env = "PAVILION_HEADER_TIMEOUT_SECONDS", default_value_t = 30)]
    header_timeout_seconds: u64,
    /// Drop a client connection when a write to it waits this many seconds (the client
    /// stopped reading).
    #[arg(long, env = "PAVILION_SEND_TIMEOUT_SECONDS", default_value_t = 60)]
    send_timeout_seconds: u64,
    /// Open client connections per worker; more are refused (503 in cleartext). Default:
    /// half the file descriptors the process may open, shared by the workers.
    #[arg(long, env = "PAVILION_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Tenants counted under their own label in pavilion_tenant_requests_total (the first
    /// ones of the placement table, in tenant order); the rest share `_other`.
    #[arg(long, env = "PAVILION_TENANT_METRIC_LABELS", default_value_t = pavilion_data::metrics::DEFAULT_TENANT_LABELS)]
    tenant_metric_labels: usize,
    /// How long in-flight requests may take to finish after SIGTERM, in seconds.
    #[arg(long, env = "PAVILION_DRAIN_SECONDS", default_value_t = 10)]
    drain_seconds: u64,
    /// Seconds to keep serving after SIGTERM with /ready failing, before the drain starts:
    /// time for load balancers to stop sending (Kubernetes endpoints, Swarm's routing mesh).
    /// The orchestrator's stop grace must cover this plus --drain-seconds.
    #[arg(long, env = "PAVILION_SHUTDOWN_DELAY_SECONDS", default_value_t = 0)]
    shutdown_delay_seconds: u64,
    /// Close a streamed response (no Content-Length: SSE, long polls) after this many seconds
    /// without a byte from the upstream; the rule's timeout ends at the response head.
    #[arg(
        long,
        env = "PAVILION_STREAM_IDLE_TIMEOUT_SECONDS",
        default_value_t = 300
    )]
    stream_idle_timeout_seconds: u64,
    /// Memory the response cache may hold, in MiB (rules with `cache` share it; least
    /// recently and least frequently used entries go first).
    #[arg(long, env = "PAVILION_CACHE_MAX_MIB", default_value_t = 64)]
    cache_max_mib: u64,
    /// Export spans of sampled requests (one per request, one per phase, the upstream call)
    /// to this OTLP/gRPC collector, e.g. http://otel-collector:4317.
    #[arg(long, env = "PAVILION_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Host the identity API (/v1/auth/*, /.well-known/*) with its records here:
    /// nats://HOST:PORT[?bucket=PREFIX] (shared by every replica) or file:PATH (one node).
    #[arg(long, env = "PAVILION_IDENTITY_STORE")]
    identity_store: Option<pavilion_data::identity::StoreSpec>,
    /// The identity tokens' issuer: the gateway's public URL (https://id.example.com).
    #[arg(long, env = "PAVILION_IDENTITY_ISSUER")]
    identity_issuer: Option<String>,
    /// File holding the 32-byte key (hex or base64) that seals the signing keys at rest.
    #[arg(long, env = "PAVILION_IDENTITY_KEY_FILE")]
    identity_key_file: Option<PathBuf>,
    /// The identity tokens' audience (`aud`).
    #[arg(long, env = "PAVILION_IDENTITY_AUDIENCE", default_value = "pavilion")]
    identity_audience: String,
    /// Lifetime of access tokens, in seconds.
    #[arg(
        long,
        env = "PAVILION_IDENTITY_ACCESS_TTL_SECONDS",
        default_value_t = 300
    )]
    identity_access_ttl_seconds: u64,
    /// Lifetime of a session (refresh-token family), in days.
    #[arg(long, env = "PAVILION_IDENTITY_SESSION_DAYS", default_value_t = 30)]
    identity_session_days: u64,
    /// How long one signing key signs before the next one takes over, in hours (fractions
    /// allowed, at least one second: 0.5 is half an hour).
    #[arg(
        long,
        env = "PAVILION_IDENTITY_KEY_ROTATION_HOURS",
        default_value_t = 24.0
    )]
    identity_key_rotation_hours: f64,
    /// Where password-reset mail goes: smtp://[USER:PASS@]HOST:PORT, smtps://…, or file:DIR
    /// (an outbox of .eml files, for development).
    #[arg(long, env = "PAVILION_IDENTITY_MAIL")]
    identity_mail: Option<String>,
    /// The From of that mail.
    #[arg(
        long,
        env = "PAVILION_IDENTITY_MAIL_FROM",
        default_value = "Pavilion Gateway <no-reply@localhost>"
    )]
    identity_mail_from: String,
    /// Addresses (comma-separated) whose accounts are platform administrators: how the
    /// first administrator comes to be.
    #[arg(long, env = "PAVILION_IDENTITY_ADMINS", value_delimiter = ',')]
    identity_admins: Vec<String>,
    /// An OpenID provider to sign in with, repeatable:
    /// name=corp,issuer=https://idp.example.com,client-id=ID,client-secret-file=PATH
    /// (name=google needs no issuer). The redirect URI to register at the provider is
    /// {--identity-issuer}/v1/auth/oidc/{name}/callback.
    #[arg(long, value_parser = pavilion_data::identity::oidc::OidcProvider::parse)]
    identity_oidc: Vec<pavilion_data::identity::oidc::OidcProvider>,
    /// Share of new traces sampled, 0 to 1; a client's traceparent sampled flag is followed.
    #[arg(long, env = "PAVILION_TRACE_SAMPLE_RATIO", default_value_t = 0.01)]
    trace_sample_ratio: f64,
    /// How log lines are written (the access log included).
    #[arg(long, env = "PAVILION_LOG_FORMAT", value_enum, default_value_t)]
    log_format: LogFormat,
}

fn main() -> std::process::ExitCode {
    // Each new runtime's fresh memory was faulted in as 2 MiB pages, zeroed whole: half
    // the time of the first change after a start at 10 000 routes (perf).
    pavilion_telemetry::without_huge_pages();
    let args = match Cli::parse().command {
        Command::Run(args) => *args,
        Command::Probe(probe) => return probe.run("pavilion-data"),
        Command::Audit(AuditCommand::Verify { identity_store }) => {
            return match verify_audit(&identity_store) {
                Ok(true) => std::process::ExitCode::SUCCESS,
                Ok(false) => std::process::ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("pavilion-data: {e:#}");
                    std::process::ExitCode::from(2)
                }
            };
        }
    };
    match run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pavilion-data: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let _logs = pavilion_telemetry::init_logging(args.log_format);
    let open_files = raise_open_files_limit();
    let mut upstream = UpstreamOptions {
        idle_timeout: Duration::from_secs(args.upstream_idle_timeout_seconds.max(1)),
        ..UpstreamOptions::default()
    };
    if args.upstream_http1 == "hyper" {
        upstream.http1_client = pavilion_data::upstream::Http1Client::Hyper;
    }
    if let Some(path) = &args.upstream_ca {
        upstream.extra_roots = read_certificates(path)?;
    }
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.trace_sample_ratio),
        "--trace-sample-ratio must be between 0 and 1"
    );
    let node_id = args.node_id.clone().unwrap_or_else(host_name);
    let workers = match args.workers {
        Some(0) => anyhow::bail!("--workers must be at least 1"),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let control_planes = args
        .control_plane
        .iter()
        .map(|a| a.trim())
        .filter(|a| !a.is_empty())
        .map(|a| {
            if a.contains("://") {
                a.to_owned()
            } else if args.control_plane_ca.is_some() {
                format!("https://{a}")
            } else {
                format!("http://{a}")
            }
        })
        .collect();
    let control_plane_tls =
        args.control_plane_ca
            .clone()
            .map(|ca| pavilion_data::snapshot::client::ControlPlaneTls {
                ca,
                identity: args
                    .control_plane_cert
                    .clone()
                    .zip(args.control_plane_key.clone()),
                server_name: args.control_plane_server_name.clone(),
            });
    anyhow::ensure!(
        args.tls_cert.len() == args.tls_key.len(),
        "--tls-cert and --tls-key come in pairs ({} certificates, {} keys)",
        args.tls_cert.len(),
        args.tls_key.len()
    );
    anyhow::ensure!(
        args.client_ca.is_none() || !args.tls_cert.is_empty(),
        "--client-ca needs --tls-cert"
    );
    let tls = (!args.tls_cert.is_empty()).then(|| TlsOptions {
        certificates: args
            .tls_cert
            .iter()
            .zip(&args.tls_key)
            .map(|(cert, key)| CertificateFiles {
                cert: cert.clone(),
                key: key.clone(),
            })
            .collect(),
        client_ca: args.client_ca.clone(),
    });
    let identity = identity_config(&args)?;
    let config = pavilion_data::Config {
        control_planes,
        control_plane_tls,
        listen: args.listen,
        admin_listen: args.admin_listen,
        snapshot_cache: args.snapshot_cache,
        node_id,
        workers,
        limits: Limits {
            max_header_bytes: args.max_header_bytes,
            max_header_count: args.max_header_count,
            max_body_bytes: args.max_body_bytes,
        },
        escaped_slashes: args.escaped_slashes,
        upstream,
        tls,
        redirect_listen: args.redirect_listen,
        redirect_port: args.redirect_port,
        redis: args.redis.clone(),
        redis_timeout: Duration::from_millis(args.redis_timeout_ms.max(1)),
        rate_limit: pavilion_data::ratelimit::LimiterOptions {
            max_keys: args.rate_limit_max_keys,
            replicas: args.replicas.max(1),
        },
        trusted_proxies: Cidrs::parse(&args.trusted_proxies)
            .map_err(|e| anyhow::anyhow!("--trusted-proxies: {e}"))?,
        jwks: JwksOptions {
            refresh_every: Duration::from_secs(args.jwks_refresh_seconds.max(1)),
            min_refetch_gap: Duration::from_secs(args.jwks_min_refetch_seconds),
            ..JwksOptions::default()
        },
        access_log: args.access_log.then(|| AccessLogOptions {
            layout: match args.log_format {
                LogFormat::Json => Layout::Json,
                LogFormat::Pretty => Layout::Text,
            },
            destination: match &args.access_log_file {
                Some(path) => Destination::File(FileSink {
                    path: path.clone(),
                    max_bytes: args.access_log_max_mib.max(1) << 20,
                    keep: args.access_log_keep,
                }),
                None => Destination::Stdout,
            },
        }),
        drain_timeout: Duration::from_secs(args.drain_seconds),
        shutdown_delay: Duration::from_secs(args.shutdown_delay_seconds),
        stream_idle_timeout: Duration::from_secs(args.stream_idle_timeout_seconds.max(1)),
        cache_max_bytes: args.cache_max_mib.saturating_mul(1 << 20),
        trace_endpoint: args.otlp_endpoint.clone(),
        trace_sample_ratio: args.trace_sample_ratio,
        identity,
        tenant_metric_labels: args.tenant_metric_labels,
        connections: ConnectionLimits {
            idle_timeout: Duration::from_secs(args.idle_timeout_seconds.max(1)),
            send_timeout: Duration::from_secs(args.send_timeout_seconds.max(1)),
            header_timeout: Duration::from_secs(args.header_timeout_seconds.max(1)),
            max_per_worker: match args.max_connections {
                Some(0) => anyhow::bail!("--max-connections must be at least 1"),
                Some(n) => n,
                None => (open_files / 2 / workers as u64).max(64) as usize,
            },
        },
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = args.workers {
        anyhow::ensure!(workers > 0, "--workers must be at least 1");
        runtime.worker_threads(workers);
    }
    let runtime = runtime
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let data_plane = pavilion_data::start(config).await?;
        data_plane
            .run_until(pavilion_telemetry::shutdown_signal())
            .await;
        tracing::info!("data plane stopped");
        anyhow::Ok(())
    })
}

/// Raises the soft limit on open files to the hard one (a proxy holds two descriptors per
/// request in flight; the usual soft default of 1024 runs out long before the machine does),
/// and returns the limit in force.
fn raise_open_files_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            tracing::info!(limit, "open files limit");
            limit
        }
        Err(error) => {
            let (soft, _) = rlimit::Resource::NOFILE.get().unwrap_or((1024, 1024));
            tracing::warn!(%error, soft, "cannot raise the open files limit");
            soft
        }
    }
}

fn read_certificates(
    path: &PathBuf,
) -> anyhow::Result<Vec<rustls_pki_types::CertificateDer<'static>>> {
    use rustls_pki_types::pem::PemObject;
    let certificates = rustls_pki_types::CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", path.display()))?;
    anyhow::ensure!(
        !certificates.is_empty(),
        "{} holds no certificate",
        path.display()
    );
    Ok(certificates)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "pavilion-data".to_owned())
}

/// The identity service's settings: all three of store, issuer and key file, or none.
fn identity_config(
    args: &RunArgs,
) -> anyhow::Result<Option<pavilion_data::identity::IdentityConfig>> {
    let (store, issuer, key_file) = match (
        &args.identity_store,
        &args.identity_issuer,
        &args.identity_key_file,
    ) {
        (None, None, None) => return Ok(None),
        (Some(store), Some(issuer), Some(key_file)) => (store, issuer, key_file),
        _ => anyhow::bail!(
            "the identity API needs --identity-store, --identity-issuer and --identity-key-file together"
        ),
    };
    anyhow::ensure!(
        issuer.starts_with("https://") || issuer.starts_with("http://"),
        "--identity-issuer must be the gateway's URL (https://…)"
    );
    anyhow::ensure!(
        args.identity_access_ttl_seconds > 0 && args.identity_session_days > 0,
        "identity lifetimes must be above 0"
    );
    let rotation = Duration::try_from_secs_f64(args.identity_key_rotation_hours * 3600.0)
        .ok()
        .filter(|rotation| *rotation >= Duration::from_secs(1))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "--identity-key-rotation-hours must be at least one second (1/3600), not {}",
                args.identity_key_rotation_hours
            )
        })?;
    let mut config =
        pavilion_data::identity::IdentityConfig::new(store.clone(), issuer, key_file.clone());
    config.audience = args.identity_audience.clone();
    config.access_ttl = Duration::from_secs(args.identity_access_ttl_seconds);
    config.refresh_ttl = Duration::from_secs(args.identity_session_days * 24 * 3600);
    config.key_rotation = rotation;
    config.mail = args.identity_mail.clone();
    config.mail_from = args.identity_mail_from.clone();
    config.admins = args.identity_admins.clone();
    config.oidc = args.identity_oidc.clone();
    Ok(Some(config))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn every_flag_and_argument_has_help_text() {
        let missing = pavilion_telemetry::undocumented_args(&super::Cli::command());
        assert!(missing.is_empty(), "without help text: {missing:?}");
    }
}
