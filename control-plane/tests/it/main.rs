//! The crate's integration tests, one module per area, linked into one test binary: one
//! link instead of one per file keeps CI's disk and build time small (nextest still runs
//! every test in its own process).

mod api_key_cli;
mod compile;
mod compile_auth;
mod compile_rate_limit;
mod dir_source;
mod kv_cli;
mod validate_cli;
