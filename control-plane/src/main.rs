//! `pavilion-control`: run the control plane, validate resource files, print CRDs, make
//! API keys.

/// mimalloc, as in the data plane: it hands freed memory back to the system promptly, so
/// reading one huge file does not leave the control plane at its peak size for good.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pavilion_control::SourceSpec;
use pavilion_control::kv::KvAddress;
use pavilion_telemetry::LogFormat;

#[derive(Parser)]
#[command(
    name = "pavilion-control",
    version = pavilion_telemetry::build::LONG_VERSION,
    about = "Pavilion Gateway's control plane"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Watch a source, compile snapshots and stream them to data planes.
    Run(Box<RunArgs>),
    /// Check resource files (or directories); exit 1 with `file:line: field: message` lines if any is invalid.
    Validate {
        /// Resource files or directories (`.yaml`, `.yml`, `.json` below them); `-` reads
        /// standard input.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Print the CustomResourceDefinitions (or write one file per CRD into a directory).
    Crds {
        /// Write `<kind>.yaml` files into this directory instead of printing one stream.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// Create API keys.
    ApiKey {
        #[command(subcommand)]
        command: ApiKeyCommand,
    },
    /// Manage resources in a NATS KV bucket (Docker Swarm) without the nats CLI.
    Kv {
        /// nats://HOST:PORT[?bucket=NAME] (default bucket: pavilion-config); accepted before
        /// or after the subcommand.
        #[arg(
            long,
            global = true,
            env = "PAVILION_NATS",
            default_value = "nats://127.0.0.1:4222"
        )]
        nats: KvAddress,
        #[command(subcommand)]
        command: KvCommand,
    },
    /// Show what the gateway would do with a request: the candidate routes in precedence
    /// order, each phase's verdict and the upstream, from the compiled snapshot and the data
    /// plane's own phase code (nothing is sent, nothing is counted).
    Explain(Box<ExplainArgs>),
    /// Exit 0 when URL answers 2xx: a health check for images without curl (HEALTHCHECK).
    Probe(pavilion_telemetry::probe::ProbeArgs),
    /// Make (or rotate) the control channel's certificates: a CA, the control plane's
    /// server certificate and the data planes' client certificate, as PEM files.
    #[command(group = clap::ArgGroup::new("to").required(true).args(["out_dir", "secret_prefix"]))]
    Certs {
        /// Where the files go (ca.crt, ca.key, control-plane.crt/.key, data-plane.crt/.key);
        /// a CA already there signs the new certificates (rotation).
        #[arg(long)]
        out_dir: Option<PathBuf>,
        /// Or keep them in Kubernetes Secrets PREFIX-ca, PREFIX-control-plane-tls and
        /// PREFIX-data-plane-tls, made when missing and renewed when due (the chart runs this).
        #[arg(long)]
        secret_prefix: Option<String>,
        /// --secret-prefix: the Secrets' namespace (default: this pod's).
        #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
        namespace: String,
        /// --secret-prefix: renew a certificate that expires within this many days.
        #[arg(long, default_value_t = 30)]
        renew_within_days: u32,
        /// --secret-prefix: a kubeconfig file (default: KUBECONFIG, ~/.kube/config, or in-cluster).
        #[arg(long, env = "KUBECONFIG")]
        kubeconfig: Option<PathBuf>,
        #[command(flatten)]
        names: CertNames,
        /// Make a new CA even if the directory has one.
        #[arg(long)]
        new_ca: bool,
    },
}

#[derive(clap::Args)]
#[command(group = clap::ArgGroup::new("from").required(true).args(["source", "snapshot"]))]
struct ExplainArgs {
    /// The request: 'GET https://api.example.com/orders/1' as one argument or two (a URL
    /// alone means GET); a path alone needs a Host header.
    #[arg(required = true, num_args = 1..=2, value_name = "REQUEST")]
    request: Vec<String>,
    /// Compile the snapshot from this source: dir:PATH, kube, or nats://HOST:PORT[?bucket=NAME].
    #[arg(long)]
    source: Option<SourceSpec>,
    /// Or read it from a data plane's snapshot cache file (its --snapshot-cache).
    #[arg(long)]
    snapshot: Option<PathBuf>,
    /// A request header, `name: value` (repeatable), e.g. -H 'authorization: Bearer …'.
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// The client's address, for IP lists and per-client limits (default 127.0.0.1).
    #[arg(long)]
    client: Option<std::net::IpAddr>,
    /// Print the report as JSON (the document `POST /admin/explain` answers).
    #[arg(long)]
    json: bool,
    /// kube: a kubeconfig file (default: KUBECONFIG, ~/.kube/config, or in-cluster).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// kube: read only this namespace (default: all).
    #[arg(long)]
    namespace: Option<String>,
    #[command(flatten)]
    gateway: GatewayArgs,
}

/// What the control channel's certificates are made for (`certs`, `run --tls-secret-prefix`).
#[derive(clap::Args)]
struct CertNames {
    /// Names (DNS or IP) the control plane is reached by, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "pavilion-control,localhost,127.0.0.1"
    )]
    control_plane_names: Vec<String>,
    /// Node ids data planes may announce, comma-separated; `*.NAME` covers one label
    /// (run data planes with --node-id POD.NAME).
    #[arg(long, value_delimiter = ',', default_value = "*.pavilion-data")]
    data_plane_names: Vec<String>,
    /// Validity of the two certificates in days (the CA's: ten times as long).
    #[arg(long, default_value_t = 90)]
    days: u32,
}

impl CertNames {
    fn request(self, out_dir: PathBuf, new_ca: bool) -> pavilion_control::certs::CertsRequest {
        pavilion_control::certs::CertsRequest {
            out_dir,
            control_plane_names: self.control_plane_names,
            data_plane_names: self.data_plane_names,
            days: self.days.max(1),
            new_ca,
        }
    }
}

#[derive(Subcommand)]
enum KvCommand {
    /// Validate files (or directories) against the bucket's contents, then write every
    /// document under its key; nothing is written if any document is invalid.
    Put {
        /// Resource files or directories; `-` reads standard input (like `kubectl apply -f -`).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Print the document under KEY; its status goes to stderr.
    Get {
        /// `<kind>.<namespace>.<name>`, e.g. route.shop.orders.
        key: String,
    },
    /// Delete the resource under KEY and its status.
    Delete {
        /// `<kind>.<namespace>.<name>`, e.g. route.shop.orders.
        key: String,
    },
    /// List the resources with their Accepted and Programmed status.
    List,
}

#[derive(Subcommand)]
enum ApiKeyCommand {
    /// Generate a key: its ApiKey resource (the key's SHA-256 only) goes to stdout, the
    /// key itself once to stderr.
    New {
        /// The key's public id (spec.keyId): letters, digits, '.', '_', '-'.
        #[arg(long)]
        id: String,
        /// The namespace of the ApiKey resource (the key works for its routes only).
        #[arg(long, default_value = "default")]
        namespace: String,
        /// Comma-separated: read, write, admin.
        #[arg(long, value_delimiter = ',', default_value = "read")]
        scopes: Vec<String>,
        /// RFC 3339 time after which the key is refused, e.g. 2027-01-01T00:00:00Z.
        #[arg(long)]
        expires: Option<String>,
        /// Free text kept in spec.description (who holds the key, what for).
        #[arg(long)]
        description: Option<String>,
        /// The resource's metadata.name (default: the id).
        #[arg(long)]
        name: Option<String>,
        /// Comma-separated tenant ids the key acts for (rules with `tenancy`).
        #[arg(long, value_delimiter = ',')]
        tenants: Vec<String>,
        /// Comma-separated platform roles, e.g. platform-admin.
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
    },
}

/// What the compiler needs to know beyond the resources (shared by `run`, `validate` and
/// `kv put`, so all three judge documents alike).
#[derive(clap::Args)]
struct GatewayArgs {
    /// Only RateLimitPolicies in this namespace may target the whole gateway
    /// (`targetRef: { kind: Gateway, name: default }`).
    #[arg(
        long,
        env = "PAVILION_GATEWAY_NAMESPACE",
        default_value = pavilion_control::compile::DEFAULT_GATEWAY_NAMESPACE,
        value_parser = namespace_name
    )]
    gateway_namespace: String,
}

impl GatewayArgs {
    fn options(self) -> pavilion_control::compile::CompileOptions {
        pavilion_control::compile::CompileOptions {
            gateway_namespace: self.gateway_namespace,
        }
    }
}

fn namespace_name(text: &str) -> Result<String, String> {
    pavilion_crds::namespace_name(text).map(|()| text.to_owned())
}

#[derive(clap::Args)]
struct RunArgs {
    /// dir:PATH, kube, or nats://HOST:PORT[?bucket=NAME]
    #[arg(long, env = "PAVILION_SOURCE")]
    source: SourceSpec,
    /// Where data planes connect for snapshots.
    #[arg(long, env = "PAVILION_GRPC_LISTEN", default_value = "127.0.0.1:18000")]
    grpc_listen: SocketAddr,
    /// Health, readiness, metrics and /v1/status.
    #[arg(long, env = "PAVILION_HTTP_LISTEN", default_value = "127.0.0.1:18001")]
    http_listen: SocketAddr,
    /// How log lines are written.
    #[arg(long, env = "PAVILION_LOG_FORMAT", value_enum, default_value_t)]
    log_format: LogFormat,
    /// kube: a kubeconfig file (default: KUBECONFIG, ~/.kube/config, or in-cluster).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// kube: watch only this namespace (default: all).
    #[arg(long, env = "PAVILION_NAMESPACE")]
    namespace: Option<String>,
    /// kube: namespace of the leader-election Lease (default: the pod's, else `default`).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// kube: this replica's name in the Lease (default: the pod or host name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// kube: how long a leader's claim lasts unrenewed, in seconds (the failover time).
    #[arg(long, env = "PAVILION_LEASE_SECONDS", default_value_t = 15)]
    lease_seconds: u64,
    /// kube: also write every accepted resource to this KV bucket (nats://HOST:PORT[?bucket=NAME]).
    #[arg(long, env = "PAVILION_MIRROR_TO")]
    mirror_to: Option<KvAddress>,
    #[command(flatten)]
    gateway: GatewayArgs,
    /// Serve the snapshot stream over TLS with this certificate chain (PEM).
    #[arg(long, env = "PAVILION_GRPC_TLS_CERT", requires = "grpc_tls_key")]
    grpc_tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --grpc-tls-cert.
    #[arg(long, env = "PAVILION_GRPC_TLS_KEY", requires = "grpc_tls_cert")]
    grpc_tls_key: Option<PathBuf>,
    /// Require data planes to present a client certificate signed by these CAs (PEM); a
    /// data plane's --node-id must then be a name (DNS SAN or CN) of its certificate.
    #[arg(long, env = "PAVILION_GRPC_CLIENT_CA", requires = "grpc_tls_cert")]
    grpc_client_ca: Option<PathBuf>,
    /// Snapshot streams one address may hold.
    #[arg(long, env = "PAVILION_MAX_STREAMS_PER_PEER", default_value_t = pavilion_control::StreamLimits::default().per_peer)]
    max_streams_per_peer: usize,
    /// Bearer tokens of the control-plane API (`/v1/*`), one per line, `#` comments; on
    /// Kubernetes, ServiceAccount tokens are accepted too (TokenReview + SubjectAccessReview).
    #[arg(long, env = "PAVILION_API_TOKEN_FILE")]
    api_token_file: Option<PathBuf>,
    /// Snapshot streams in all.
    #[arg(long, env = "PAVILION_MAX_STREAMS", default_value_t = pavilion_control::StreamLimits::default().total)]
    max_streams: usize,
    /// Serve the validating admission webhook (POST /validate) over HTTPS on this address,
    /// with the control plane's certificate (--grpc-tls-cert or --tls-secret-prefix); see
    /// deploy/kubernetes/webhook.yaml.
    #[arg(long, env = "PAVILION_WEBHOOK_LISTEN")]
    webhook_listen: Option<SocketAddr>,
    /// --tls-secret-prefix: keep the caBundle of this ValidatingWebhookConfiguration equal
    /// to the CA the control plane made (the chart sets it with webhook.enabled).
    #[arg(
        long,
        env = "PAVILION_WEBHOOK_CONFIGURATION",
        requires = "tls_secret_prefix"
    )]
    webhook_configuration: Option<String>,
    /// Serve --http-listen (the API, health, metrics) over HTTPS with the certificate of
    /// --grpc-tls-cert; probe it with `pavilion-control probe https://…`.
    #[arg(long, env = "PAVILION_API_TLS")]
    api_tls: bool,
    /// Make the control channel's certificates as Kubernetes Secrets PREFIX-ca,
    /// PREFIX-control-plane-tls and PREFIX-data-plane-tls when missing, renew them when due
    /// (checked hourly, from every replica), and serve with them: the Helm chart's default.
    /// Data planes mount PREFIX-data-plane-tls.
    #[arg(long, env = "PAVILION_TLS_SECRET_PREFIX", conflicts_with_all = ["grpc_tls_cert", "grpc_client_ca"])]
    tls_secret_prefix: Option<String>,
    /// --tls-secret-prefix: where the control plane's certificate files are written.
    #[arg(
        long,
        env = "PAVILION_TLS_DIR",
        default_value = "/var/run/pavilion/tls"
    )]
    tls_dir: PathBuf,
    /// --tls-secret-prefix: renew a certificate that expires within this many days.
    #[arg(long, env = "PAVILION_TLS_RENEW_WITHIN_DAYS", default_value_t = 30)]
    tls_renew_within_days: u32,
    #[command(flatten)]
    tls_names: CertNames,
}

fn main() -> ExitCode {
    pavilion_telemetry::without_huge_pages();
    match Cli::parse().command {
        Command::Run(args) => match run(*args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("pavilion-control: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Validate { paths, gateway } => {
            let verdict = pavilion_control::validate::validate(&paths, &gateway.options());
            for line in verdict.errors.iter().chain(&verdict.warnings) {
                println!("{line}");
            }
            if verdict.is_valid() {
                eprintln!("{} documents valid", verdict.documents);
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "{} problems in {} documents",
                    verdict.errors.len(),
                    verdict.documents
                );
                ExitCode::FAILURE
            }
        }
        Command::Kv { nats, command } => match kv(nats, command) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("pavilion-control: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::ApiKey {
            command:
                ApiKeyCommand::New {
                    id,
                    namespace,
                    scopes,
                    expires,
                    description,
                    name,
                    tenants,
                    roles,
                },
        } => {
            let request = pavilion_control::keygen::NewKey {
                id,
                namespace,
                name,
                scopes,
                expires_at: expires,
                description,
                tenants,
                roles,
            };
            match pavilion_control::keygen::new_key(&request) {
                Ok(generated) => {
                    print!("{}", generated.yaml());
                    // The one place the key is ever shown.
                    eprintln!("api key (shown once, store it now): {}", generated.key);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("pavilion-control: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Probe(probe) => probe.run("pavilion-control"),
        Command::Certs {
            out_dir,
            secret_prefix,
            namespace,
            renew_within_days,
            kubeconfig,
            names,
            new_ca,
        } => {
            let request = names.request(out_dir.unwrap_or_default(), new_ca);
            let done = match secret_prefix {
                Some(prefix) => {
                    certs_in_secrets(&request, &prefix, &namespace, renew_within_days, kubeconfig)
                }
                None => pavilion_control::certs::generate(&request)
                    .map(|files| {
                        files
                            .iter()
                            .map(|file| format!("wrote {}", file.display()))
                            .collect()
                    })
                    .map_err(anyhow::Error::from),
            };
            match done {
                Ok(lines) => {
                    for line in lines {
                        println!("{line}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("pavilion-control: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Explain(args) => match explain(*args) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("pavilion-control: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Crds { out_dir } => match crds(out_dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("pavilion-control: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn kv(address: KvAddress, command: KvCommand) -> anyhow::Result<ExitCode> {
    use pavilion_control::kv::{cli, open, open_existing};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        // Only `put` may create the bucket: reading a misspelt one must not leave it behind.
        let store = match &command {
            KvCommand::Put { .. } => open(&address).await?,
            _ => open_existing(&address).await?,
        };
        match command {
            KvCommand::Put { paths, gateway } => {
                let (verdict, written) = cli::put(&store, &paths, &gateway.options()).await?;
                for line in verdict.errors.iter().chain(&verdict.warnings) {
                    println!("{line}");
                }
                if !verdict.is_valid() {
                    eprintln!("nothing written: {} problems", verdict.errors.len());
                    return Ok(ExitCode::FAILURE);
                }
                for key in written {
                    println!("put {key}");
                }
            }
            KvCommand::Get { key } => match cli::get(&store, &key).await? {
                Some((document, status)) => {
                    print!("{document}");
                    match status {
                        Some(status) => {
                            for line in cli::describe(&status) {
                                eprintln!("{line}");
                            }
                        }
                        None => eprintln!("no status yet"),
                    }
                }
                None => {
                    eprintln!("{}", cli::missing(&key, &address.bucket));
                    return Ok(ExitCode::FAILURE);
                }
            },
            KvCommand::Delete { key } => {
                if !cli::delete(&store, &key).await? {
                    eprintln!("{}", cli::missing(&key, &address.bucket));
                    return Ok(ExitCode::FAILURE);
                }
                println!("deleted {key}");
            }
            KvCommand::List => {
                for line in cli::list(&store).await? {
                    println!("{line}");
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn explain(args: ExplainArgs) -> anyhow::Result<ExitCode> {
    use pavilion_control::explain::{SnapshotFrom, explain};
    use pavilion_data::pipeline::explain::Described;
    let (method, url) = match args.request.as_slice() {
        [one] => match one.trim().split_once(char::is_whitespace) {
            Some((method, url)) => (method.to_owned(), url.trim().to_owned()),
            None => ("GET".to_owned(), one.trim().to_owned()),
        },
        [method, url] => (method.clone(), url.clone()),
        _ => anyhow::bail!("the request is METHOD URL"),
    };
    let headers = args
        .headers
        .iter()
        .map(|header| {
            header
                .split_once(':')
                .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
                .with_context(|| format!("header `{header}` is not `name: value`"))
        })
        .collect::<anyhow::Result<_>>()?;
    let described = Described {
        method,
        url,
        headers,
        client: args.client,
    };
    let from = match (args.source, args.snapshot) {
        (_, Some(path)) => SnapshotFrom::Snapshot(path),
        (Some(source), None) => SnapshotFrom::Source(source),
        (None, None) => anyhow::bail!("--source or --snapshot is required"),
    };
    let kube = pavilion_control::KubeOptions {
        kubeconfig: args.kubeconfig,
        namespace: args.namespace,
        ..pavilion_control::KubeOptions::default()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(explain(&from, &described, &args.gateway.options(), &kube))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    Ok(ExitCode::SUCCESS)
}

fn certs_in_secrets(
    request: &pavilion_control::certs::CertsRequest,
    prefix: &str,
    namespace: &str,
    renew_within_days: u32,
    kubeconfig: Option<PathBuf>,
) -> anyhow::Result<Vec<String>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = pavilion_control::kubernetes::client(&pavilion_control::KubeOptions {
            kubeconfig,
            ..pavilion_control::KubeOptions::default()
        })
        .await?;
        let api = kube::Api::namespaced(client, namespace);
        let actions =
            pavilion_control::certs::secrets::ensure(&api, prefix, request, renew_within_days)
                .await?;
        Ok(actions.iter().map(ToString::to_string).collect())
    })
}

/// Makes or reads the certificate Secrets, writes the control plane's files, and keeps
/// them renewed; the files then serve like --grpc-tls-cert/-key/--grpc-client-ca.
async fn certificates_from_secrets(
    prefix: &str,
    namespace: &str,
    kubeconfig: Option<PathBuf>,
    names: CertNames,
    renew_within_days: u32,
    dir: &std::path::Path,
    webhook: Option<String>,
) -> anyhow::Result<pavilion_control::GrpcTls> {
    use pavilion_control::certs::{self, secrets};
    let client = pavilion_control::kubernetes::client(&pavilion_control::KubeOptions {
        kubeconfig,
        ..pavilion_control::KubeOptions::default()
    })
    .await?;
    let api = kube::Api::namespaced(client.clone(), namespace);
    let request = names.request(dir.to_owned(), false);
    for action in secrets::prepare(&api, prefix, &request, renew_within_days, dir)
        .await
        .context("preparing the control-channel certificates")?
    {
        tracing::info!(%action, "control-channel certificates");
    }
    let webhook = webhook.map(|name| secrets::WebhookCa {
        api: kube::Api::all(client),
        name,
    });
    if let Some(webhook) = &webhook {
        webhook
            .publish(&std::fs::read_to_string(dir.join(certs::CA_CERT))?)
            .await
            .context("publishing the CA to the webhook configuration")?;
    }
    // The renewal runs as long as the process; the runtime's end stops it.
    tokio::spawn(secrets::keep_renewed(
        api,
        prefix.to_owned(),
        request,
        renew_within_days,
        dir.to_owned(),
        secrets::CHECK_EVERY,
        webhook,
    ));
    Ok(pavilion_control::GrpcTls {
        cert: dir.join(certs::CONTROL_CERT),
        key: dir.join(certs::CONTROL_KEY),
        client_ca: Some(dir.join(certs::CA_CERT)),
    })
}

fn crds(out_dir: Option<PathBuf>) -> anyhow::Result<()> {
    use pavilion_crds::manifests::{all_yaml, definitions, to_yaml};
    let Some(dir) = out_dir else {
        print!("{}", all_yaml());
        return Ok(());
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for (file, crd) in definitions() {
        let path = dir.join(file);
        std::fs::write(&path, to_yaml(&crd))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let _logs = pavilion_telemetry::init_logging(args.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(pavilion_telemetry::release_free_memory_when_idle)
        // A blocking thread that read a large file ends soon after, so the pages it still
        // owns are reclaimed by the workers (see `release_free_memory_when_idle`). (Tried:
        // 600 s, so that compiles stop running on fresh threads — bench/soak's step in the
        // control plane's RSS around minute 23 stayed.)
        .thread_keep_alive(std::time::Duration::from_secs(1))
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let identity = args.identity.unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            format!("{}-{}", host.trim(), std::process::id())
        });
        let grpc_tls = match &args.tls_secret_prefix {
            Some(prefix) => Some(
                certificates_from_secrets(
                    prefix,
                    &args.lease_namespace,
                    args.kubeconfig.clone(),
                    args.tls_names,
                    args.tls_renew_within_days,
                    &args.tls_dir,
                    args.webhook_configuration.clone(),
                )
                .await?,
            ),
            None => args
                .grpc_tls_cert
                .zip(args.grpc_tls_key)
                .map(|(cert, key)| pavilion_control::GrpcTls {
                    cert,
                    key,
                    client_ca: args.grpc_client_ca,
                }),
        };
        anyhow::ensure!(
            !args.api_tls || grpc_tls.is_some(),
            "--api-tls needs a certificate: --grpc-tls-cert and --grpc-tls-key, or --tls-secret-prefix"
        );
        let control_plane = pavilion_control::start(pavilion_control::Config {
            source: args.source,
            grpc_listen: args.grpc_listen,
            http_listen: args.http_listen,
            kube: pavilion_control::KubeOptions {
                kubeconfig: args.kubeconfig,
                namespace: args.namespace,
                lease_namespace: args.lease_namespace,
                identity,
                lease_duration: std::time::Duration::from_secs(args.lease_seconds.max(1)),
            },
            mirror_to: args.mirror_to,
            gateway_namespace: args.gateway.gateway_namespace,
            grpc_tls,
            api_token_file: args.api_token_file,
            api_tokens: Vec::new(),
            webhook_listen: args.webhook_listen,
            api_tls: args.api_tls,
            streams: pavilion_control::StreamLimits {
                per_peer: args.max_streams_per_peer.max(1),
                total: args.max_streams.max(1),
            },
        })
        .await?;
        control_plane
            .run_until(pavilion_telemetry::shutdown_signal())
            .await?;
        tracing::info!("control plane stopped");
        anyhow::Ok(())
    })
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
