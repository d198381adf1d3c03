//! The crate's integration tests, one module per area, linked into one test binary: one
//! link instead of one per file keeps CI's disk and build time small (nextest still runs
//! every test in its own process).

mod auth;
mod cache;
mod caching;
mod compression;
mod cors;
mod grpc;
mod h2_floods;
mod hardening;
mod identity;
mod identity_store;
mod proxy;
mod rate_limit;
mod resilience;
mod smuggling;
mod streaming;
mod tls;
mod tracing;
mod transforms;
mod upstream_h1;
mod upstream_tls;
mod websocket;
