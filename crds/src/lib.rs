//! Pavilion's custom resources — `Route`, `Shard`, `TenantPlacement`, `RateLimitPolicy`,
//! `CorsPolicy`, `ApiKey`, `TokenRevocation` in `gateway.pavilion.dev/v1alpha1` — as Rust types, with the validation the
//! compiler applies, the YAML reader every source shares (so one document is valid in the
//! Kubernetes, KV and directory sources alike), and the CRD manifests derived from the types.

pub mod api_key;
pub mod auth;
pub mod cidr;
pub mod document;
pub mod duration;
pub mod lines;
pub mod manifests;
pub mod policy;
pub mod rebalance;
pub mod resource;
pub mod revocation;
pub mod route;
pub mod status;
pub mod tenant;
pub mod traffic;
mod validate;

pub use api_key::{ApiKey, ApiKeySpec};
pub use auth::{Allow, ApiKeyAuth, Auth, ClaimAllow, ClaimHeader, JwtProvider, StaticKey};
pub use document::{
    Document, DocumentError, ParsedDocument, document_chunks, parse_documents,
    parse_documents_except,
};
pub use policy::{
    Concurrency, Consistency, CorsPolicy, CorsPolicySpec, FailureMode, Limit, LimitOverride, Quota,
    RateLimitBackend, RateLimitPolicy, RateLimitPolicySpec, TargetRef,
};
pub use rebalance::{PlanState, PlanStatus, PlanStep, RebalancePlan, RebalancePlanSpec};
pub use resource::{Kind, Resource, ResourceKey};
pub use revocation::{TokenRevocation, TokenRevocationSpec};
pub use route::{
    Backend, HeaderMatch, PathMatch, PathMatchType, Route, RouteMatch, RouteRule, RouteSpec,
    SecurityHeaders,
};
pub use status::{ConditionStatus, ResourceStatus};
pub use tenant::{
    Authorize, Membership, PLATFORM_ADMIN, PlacementShards, ServiceKind, Shard, ShardSpec, Tenancy,
    TenantPlacement, TenantPlacementSpec,
};
pub use validate::FieldError;

/// API group of every Pavilion resource.
pub const GROUP: &str = "gateway.pavilion.dev";
/// The one served version.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` as written in documents.
pub const API_VERSION: &str = "gateway.pavilion.dev/v1alpha1";

/// Reads a sequence into a `Vec` without spare room. serde grows a sequence of unknown
/// length (YAML, JSON) from a capacity of four, so a route's one rule kept room for four
/// (≈ 800 B) — 12 MB of the control plane's memory at 10 000 routes. For
/// `#[serde(deserialize_with = "crate::exact_vec")]`; the CRD schema is unaffected.
pub(crate) fn exact_vec<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    let mut items = <Vec<T> as serde::Deserialize>::deserialize(deserializer)?;
    items.shrink_to_fit();
    Ok(items)
}

/// Checks a namespace name (an RFC 1123 label), e.g. one given on a command line.
pub fn namespace_name(value: &str) -> Result<(), String> {
    validate::dns_label(value)
}

/// Checks a resource name (an RFC 1123 subdomain: lower-case letters, digits, `-`, `.`).
pub fn resource_name(value: &str) -> Result<(), String> {
    validate::dns_subdomain(value)
}
