//! The crate's integration tests, one module per area, linked into one test binary: one
//! link instead of one per file keeps CI's disk and build time small (nextest still runs
//! every test in its own process).

mod chart;
mod demo;
mod edge_security;
mod hostile_config;
mod identity;
mod leader_election;
mod observability;
mod rate_limits;
mod swarm;
mod tenancy;
mod walking_skeleton;
