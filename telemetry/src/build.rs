//! What was built, from what, when — shown by `--version`, `/health` and the
//! `pavilion_build_info` metric, so a running process can be traced to its commit.

use prometheus::{IntGaugeVec, Opts, Registry};

/// The crate version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit (12 hex digits), or `unknown`.
pub const GIT_SHA: &str = env!("PAVILION_GIT_SHA");
/// RFC 3339 UTC, or `unknown`.
pub const BUILD_TIME: &str = env!("PAVILION_BUILD_TIME");
/// `--version`'s text: `0.1.0 (commit 0123456789ab, built 2026-11-26T12:00:00Z)`.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("PAVILION_GIT_SHA"),
    ", built ",
    env!("PAVILION_BUILD_TIME"),
    ")"
);

/// The build as `/health` shows it.
pub fn health() -> serde_json::Value {
    serde_json::json!({
        "status": "ok",
        "version": VERSION,
        "gitSha": GIT_SHA,
        "buildTime": BUILD_TIME,
    })
}

/// `pavilion_build_info{version,git_sha} 1`.
pub fn register(registry: &Registry) {
    let info = IntGaugeVec::new(
        Opts::new(
            "pavilion_build_info",
            "Always 1; the labels say which build is running.",
        ),
        &["version", "git_sha"],
    )
    .expect("valid metric");
    info.with_label_values(&[VERSION, GIT_SHA]).set(1);
    registry
        .register(Box::new(info))
        .expect("registered once per registry");
}
