//! `pavilion-control`: run the control plane, validate resource files, print CRDs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pavilion_control::SourceSpec;
use pavilion_telemetry::LogFormat;

#[derive(Parser)]
#[command(
    name = "pavilion-control",
    version,
    about = "Pavilion Gateway's control plane"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Watch a source, compile snapshots and stream them to data planes.
    Run(RunArgs),
    /// Check resource files (or directories); exit 1 with `file:line: field: message` lines if any is invalid.
    Validate {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Print the CustomResourceDefinitions (or write one file per CRD into a directory).
    Crds {
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// dir:PATH
    #[arg(long, env = "PAVILION_SOURCE")]
    source: SourceSpec,
    /// Where data planes connect for snapshots.
    #[arg(long, env = "PAVILION_GRPC_LISTEN", default_value = "127.0.0.1:18000")]
    grpc_listen: SocketAddr,
    /// Health, readiness, metrics and /v1/status.
    #[arg(long, env = "PAVILION_HTTP_LISTEN", default_value = "127.0.0.1:18001")]
    http_listen: SocketAddr,
    #[arg(long, env = "PAVILION_LOG_FORMAT", value_enum, default_value_t)]
    log_format: LogFormat,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run(args) => match run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("pavilion-control: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Validate { paths } => {
            let verdict = pavilion_control::validate::validate(&paths);
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
        Command::Crds { out_dir } => match crds(out_dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("pavilion-control: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
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
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let control_plane = pavilion_control::start(pavilion_control::Config {
            source: args.source,
            grpc_listen: args.grpc_listen,
            http_listen: args.http_listen,
        })
        .await?;
        control_plane
            .run_until(pavilion_telemetry::shutdown_signal())
            .await?;
        tracing::info!("control plane stopped");
        anyhow::Ok(())
    })
}
