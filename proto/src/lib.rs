//! The contract between Pavilion's halves — the snapshot and the gRPC stream that delivers
//! it; nothing else crosses from the control plane to the data plane — and the platform's
//! command API the data plane proxies.

pub mod delta;

/// Generated code for package `pavilion.v1`.
pub mod v1 {
    tonic::include_proto!("pavilion.v1");
}

/// The platform's command API (package `aggregate.gateway.v1`), which the data plane serves
/// for tenant-scoped rules with `commands` and forwards to aggregate shards.
pub mod commands {
    tonic::include_proto!("aggregate.gateway.v1");
}

pub use v1::{
    ActiveCheck, Allow, ApiKey, ApiKeyAuth, Auth, Backend, BalancePolicy, Cache, CircuitBreaker,
    ClaimAllow, ClaimHeader, CommandApi, Compression, ConcurrencyLimit, Connections, Cors,
    HeaderEdits, HeaderMatch, HeaderPair, HealthCheck, JwtProvider, LoadBalancer, Match, Node,
    PassiveCheck, PathMatch, PathMatchType, Placements, Quota, QuotaPeriod, RateLimit,
    RateLimitBackend, RateLimitFailureMode, RateLimitOverride, Retry, Rewrite, Route, RoutePiece,
    Rule, SecurityHeaders, Shard, Snapshot, SnapshotDelta, SnapshotFrame, SnapshotRequest,
    SnapshotResponse, StaticKey, Tenancy, TenantPlacement, TenantRoles, TokenRevocations,
    WebSocket,
};
