//! The crate's integration tests, one module per area, linked into one test binary: one
//! link instead of one per file keeps CI's disk and build time small (nextest still runs
//! every test in its own process).

mod admission;
mod commands;
mod control_channel;
mod delivery;
mod explain;
mod fuzz_corpus;
mod kube;
mod kv;
mod last_accepted;
mod tenancy;
