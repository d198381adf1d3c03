//! The contract between Pavilion's halves: the snapshot and the gRPC stream that delivers
//! it. Nothing else crosses from the control plane to the data plane.

/// Generated code for package `pavilion.v1`.
pub mod v1 {
    tonic::include_proto!("pavilion.v1");
}

pub use v1::{
    Allow, ApiKey, ApiKeyAuth, Auth, Backend, ClaimAllow, ClaimHeader, ConcurrencyLimit,
    HeaderMatch, JwtProvider, Match, Node, PathMatch, PathMatchType, Placements, Quota,
    QuotaPeriod, RateLimit, RateLimitBackend, RateLimitFailureMode, RateLimitOverride, Route, Rule,
    SecurityHeaders, Shard, Snapshot, SnapshotRequest, SnapshotResponse, StaticKey, Tenancy,
    TenantPlacement, TenantRoles, TokenRevocations,
};
