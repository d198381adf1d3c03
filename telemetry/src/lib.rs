//! What both Pavilion binaries share at their edge: log set-up, the Prometheus text
//! exposition, the shutdown signal and handing free memory back. Kept apart so the data plane never depends on the
//! control-plane crate (nor the other way round).

pub mod build;
pub mod probe;
pub mod scraped;

use prometheus::{Encoder, Registry, TextEncoder};
use tracing_subscriber::EnvFilter;

/// How log lines are written to stdout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, for collectors.
    #[default]
    Json,
    /// Human-readable lines, for people at a terminal.
    Pretty,
}

/// Keeps the background log writer alive; dropping it flushes what is buffered.
#[must_use = "dropping the guard stops log output"]
pub struct LogGuard(#[allow(dead_code)] tracing_appender::non_blocking::WorkerGuard);

/// Log lines waiting for stdout at most. The queue is allocated whole up front: the
/// appender's default (128 000 lines) took 4 MB of every process's memory for bursts no
/// gateway log has (request lines go to the access log, which has its own writer).
pub const LOG_LINES_BUFFERED: usize = 8192;

/// Installs the global subscriber. The level comes from `RUST_LOG` (default `info`).
/// Lines go through a non-blocking writer so a slow stdout never stalls request handling;
/// if it falls more than [`LOG_LINES_BUFFERED`] lines behind, lines are dropped rather than
/// requests delayed.
pub fn init_logging(format: LogFormat) -> LogGuard {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_LINES_BUFFERED)
        .lossy(true)
        .finish(std::io::stdout());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        LogFormat::Pretty => builder
            .with_target(false)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .init(),
    }
    LogGuard(guard)
}

/// The registry's metrics in Prometheus text format.
pub fn metrics_text(registry: &Registry) -> String {
    let mut buffer = Vec::new();
    // Encoding into a Vec cannot fail for well-formed metric families.
    let _ = TextEncoder::new().encode(&registry.gather(), &mut buffer);
    String::from_utf8(buffer).unwrap_or_default()
}

/// The content type of [`metrics_text`].
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Resolves on SIGINT or SIGTERM: the start of a graceful stop.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

/// Turns transparent huge pages off for this process. mimalloc asks for them on its
/// arenas, and a 2 MiB page is resident as a whole as soon as one byte of it is touched:
/// at 10 000 routes the control plane's resident size drops by about 15 MiB with them
/// off and the data plane's by 1.5 KiB per route (`bench/scale`), and neither is bound by
/// TLB misses (the proxy's throughput did not move, `bench/ab`). Call first thing in
/// `main`. A no-op elsewhere than Linux, and where the kernel refuses (it is only a hint).
pub fn without_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory of ours.
    unsafe {
        // Every argument as the kernel reads it (unsigned long): it refuses non-zero
        // high bits in the unused ones.
        let (on, unused): (libc::c_ulong, libc::c_ulong) = (1, 0);
        libc::prctl(libc::PR_SET_THP_DISABLE, on, unused, unused, unused);
    }
}

/// Hands memory the allocator keeps for reuse back to the system. Both binaries allocate
/// with mimalloc, which returns freed pages lazily, on later allocations: after a rare
/// large piece of work (reading a huge configuration file) an otherwise quiet process
/// would stay at its peak size. Cheap when there is little to return.
pub fn release_free_memory() {
    // SAFETY: mi_collect has no preconditions; it only walks mimalloc's own structures
    // (and does nothing useful, but no harm, where mimalloc is not the global allocator).
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// For `tokio::runtime::Builder::on_thread_park`: a runtime thread about to sleep hands
/// back what it freed, at most once a second. mimalloc returns a thread's free pages only
/// when that thread allocates again, so memory freed on a worker that then goes quiet
/// (a large snapshot replaced, a huge file's documents dropped) would otherwise stay
/// with the process until the next burst of work reaches that very thread.
pub fn release_free_memory_when_idle() {
    use std::cell::Cell;
    use std::time::{Duration, Instant};
    thread_local! {
        static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
    }
    let now = Instant::now();
    let due = LAST.with(|last| match last.get() {
        Some(then) if now.duration_since(then) < Duration::from_secs(1) => false,
        _ => {
            last.set(Some(now));
            true
        }
    });
    if due {
        release_free_memory();
    }
}

/// Every option and argument of `command` and its subcommands without help text, as
/// `subcommand path: --flag` (for a test per binary: every flag says what it is for).
pub fn undocumented_args(command: &clap::Command) -> Vec<String> {
    let mut missing = Vec::new();
    collect_undocumented(command, command.get_name(), &mut missing);
    missing
}

fn collect_undocumented(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
    for arg in command.get_arguments() {
        let builtin = matches!(arg.get_id().as_str(), "help" | "version");
        if !builtin && arg.get_help().is_none() && arg.get_long_help().is_none() {
            let name = arg
                .get_long()
                .map_or_else(|| format!("<{}>", arg.get_id()), |long| format!("--{long}"));
            missing.push(format!("{path}: {name}"));
        }
    }
    for sub in command.get_subcommands() {
        collect_undocumented(sub, &format!("{path} {}", sub.get_name()), missing);
    }
}
