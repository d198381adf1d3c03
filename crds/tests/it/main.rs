//! The crate's integration tests, one module per area, linked into one test binary: one
//! link instead of one per file keeps CI's disk and build time small (nextest still runs
//! every test in its own process).

mod auth;
mod manifests;
mod validation;
