//! `pavilion-upstream --listen 127.0.0.1:9000 --name demo`: the demo and benchmark upstream.

use std::net::SocketAddr;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "pavilion-upstream",
    about = "A small HTTP/1.1 + h2c upstream for demos, tests and benchmarks"
)]
struct Args {
    /// Where to listen (HTTP/1.1 and h2c on one port).
    #[arg(
        long,
        env = "PAVILION_UPSTREAM_LISTEN",
        default_value = "127.0.0.1:9000"
    )]
    listen: SocketAddr,
    /// Reported in the `x-upstream` header and the JSON echo.
    #[arg(long, default_value = "demo")]
    name: String,
    /// Worker threads (default: one per CPU).
    #[arg(long)]
    workers: Option<usize>,
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = args.workers {
        runtime.worker_threads(workers.max(1));
    }
    runtime.enable_all().build()?.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen).await?;
        eprintln!(
            "pavilion-upstream `{}` listening on http://{}",
            args.name,
            listener.local_addr()?
        );
        pavilion_upstream::serve(listener, pavilion_upstream::State::new(&args.name)).await;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn every_flag_has_help_text() {
        let missing = pavilion_telemetry::undocumented_args(&super::Args::command());
        assert!(missing.is_empty(), "without help text: {missing:?}");
    }
}
