//! One value for "any Pavilion resource", and the key that identifies it.

use std::fmt;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;

use crate::validate::{Errors, FieldError, dns_label, dns_subdomain};
use crate::{ApiKey, CorsPolicy, RateLimitPolicy, Route, Shard, TenantPlacement, TokenRevocation};

/// Namespace of a resource whose document names none.
pub const DEFAULT_NAMESPACE: &str = "default";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Kind {
    Route,
    Shard,
    TenantPlacement,
    RateLimitPolicy,
    CorsPolicy,
    ApiKey,
    TokenRevocation,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Route,
        Kind::Shard,
        Kind::TenantPlacement,
        Kind::RateLimitPolicy,
        Kind::CorsPolicy,
        Kind::ApiKey,
        Kind::TokenRevocation,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Route => "Route",
            Kind::Shard => "Shard",
            Kind::TenantPlacement => "TenantPlacement",
            Kind::RateLimitPolicy => "RateLimitPolicy",
            Kind::CorsPolicy => "CorsPolicy",
            Kind::ApiKey => "ApiKey",
            Kind::TokenRevocation => "TokenRevocation",
        }
    }

    /// The kind as spelled in a document's `kind` field, exactly.
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identity of a resource: kind, namespace and name. The names are shared, not owned: the
/// control plane copies a key into every report, memory entry and status of every
/// compile, and at 10 000 resources two allocations per copy were a good part of a change
/// (and equal keys made from one another compare by pointer).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ResourceKey {
    pub kind: Kind,
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

/// Kind and name only: names rarely repeat across namespaces, and each string hashed is a
/// cache miss when a controller looks up 10 000 keys per change.
impl std::hash::Hash for ResourceKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.kind.hash(state);
        self.name.hash(state);
    }
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Resource {
    Route(Route),
    Shard(Shard),
    TenantPlacement(TenantPlacement),
    RateLimitPolicy(RateLimitPolicy),
    CorsPolicy(CorsPolicy),
    ApiKey(ApiKey),
    TokenRevocation(TokenRevocation),
}

/// The metadata an exported resource keeps ([`Resource::exported`]).
#[derive(PartialEq)]
struct ExportedMeta<'a> {
    name: &'a Option<String>,
    namespace: &'a Option<String>,
    labels: &'a Option<std::collections::BTreeMap<String, String>>,
    annotations: &'a Option<std::collections::BTreeMap<String, String>>,
    creation_timestamp: &'a Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

fn exported_meta(meta: &ObjectMeta) -> ExportedMeta<'_> {
    ExportedMeta {
        name: &meta.name,
        namespace: &meta.namespace,
        labels: &meta.labels,
        annotations: &meta.annotations,
        creation_timestamp: &meta.creation_timestamp,
    }
}

impl Resource {
    pub fn kind(&self) -> Kind {
        match self {
            Resource::Route(_) => Kind::Route,
            Resource::Shard(_) => Kind::Shard,
            Resource::TenantPlacement(_) => Kind::TenantPlacement,
            Resource::RateLimitPolicy(_) => Kind::RateLimitPolicy,
            Resource::CorsPolicy(_) => Kind::CorsPolicy,
            Resource::ApiKey(_) => Kind::ApiKey,
            Resource::TokenRevocation(_) => Kind::TokenRevocation,
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Resource::Route(r) => &r.metadata,
            Resource::Shard(r) => &r.metadata,
            Resource::TenantPlacement(r) => &r.metadata,
            Resource::RateLimitPolicy(r) => &r.metadata,
            Resource::CorsPolicy(r) => &r.metadata,
            Resource::ApiKey(r) => &r.metadata,
            Resource::TokenRevocation(r) => &r.metadata,
        }
    }

    pub fn namespace(&self) -> &str {
        self.metadata()
            .namespace
            .as_deref()
            .unwrap_or(DEFAULT_NAMESPACE)
    }

    pub fn name(&self) -> &str {
        self.metadata().name.as_deref().unwrap_or_default()
    }

    pub fn key(&self) -> ResourceKey {
        ResourceKey {
            kind: self.kind(),
            namespace: self.namespace().into(),
            name: self.name().into(),
        }
    }

    /// Equal as [`Resource::exported`] versions, without making them: the same spec and
    /// user's metadata, whatever the status and the API server's bookkeeping (a status write
    /// changes `resourceVersion` and `status`, not the resource as its author wrote it).
    pub fn same_exported(&self, other: &Resource) -> bool {
        let spec = match (self, other) {
            (Resource::Route(a), Resource::Route(b)) => a.spec == b.spec,
            (Resource::Shard(a), Resource::Shard(b)) => a.spec == b.spec,
            (Resource::TenantPlacement(a), Resource::TenantPlacement(b)) => a.spec == b.spec,
            (Resource::RateLimitPolicy(a), Resource::RateLimitPolicy(b)) => a.spec == b.spec,
            (Resource::CorsPolicy(a), Resource::CorsPolicy(b)) => a.spec == b.spec,
            (Resource::ApiKey(a), Resource::ApiKey(b)) => a.spec == b.spec,
            (Resource::TokenRevocation(a), Resource::TokenRevocation(b)) => a.spec == b.spec,
            _ => false,
        };
        spec && exported_meta(self.metadata()) == exported_meta(other.metadata())
    }

    /// The resource as another cluster or a KV bucket should hold it: the user's metadata
    /// (name, namespace, labels, annotations, creation time — which decides precedence)
    /// without what the API server manages (uid, resourceVersion, managedFields, …).
    pub fn exported(&self) -> Resource {
        fn trim(meta: &ObjectMeta) -> ObjectMeta {
            let kept = exported_meta(meta);
            ObjectMeta {
                name: kept.name.clone(),
                namespace: kept.namespace.clone(),
                labels: kept.labels.clone(),
                annotations: kept.annotations.clone(),
                creation_timestamp: kept.creation_timestamp.clone(),
                ..ObjectMeta::default()
            }
        }
        let mut exported = self.clone();
        match &mut exported {
            Resource::Route(r) => (r.metadata, r.status) = (trim(&r.metadata), None),
            Resource::Shard(r) => (r.metadata, r.status) = (trim(&r.metadata), None),
            Resource::TenantPlacement(r) => (r.metadata, r.status) = (trim(&r.metadata), None),
            Resource::RateLimitPolicy(r) => (r.metadata, r.status) = (trim(&r.metadata), None),
            Resource::CorsPolicy(r) => (r.metadata, r.status) = (trim(&r.metadata), None),
            Resource::ApiKey(r) => (r.metadata, r.status) = (trim(&r.metadata), None),
            Resource::TokenRevocation(r) => (r.metadata, r.status) = (trim(&r.metadata), None),
        }
        exported
    }

    /// Removes one annotation (and the annotations map when it is left empty).
    pub fn strip_annotation(&mut self, name: &str) {
        let meta = match self {
            Resource::Route(r) => &mut r.metadata,
            Resource::Shard(r) => &mut r.metadata,
            Resource::TenantPlacement(r) => &mut r.metadata,
            Resource::RateLimitPolicy(r) => &mut r.metadata,
            Resource::CorsPolicy(r) => &mut r.metadata,
            Resource::ApiKey(r) => &mut r.metadata,
            Resource::TokenRevocation(r) => &mut r.metadata,
        };
        if let Some(annotations) = &mut meta.annotations {
            annotations.remove(name);
            if annotations.is_empty() {
                meta.annotations = None;
            }
        }
    }

    /// The resource as a YAML document (without status), as stored in a KV bucket.
    pub fn to_yaml(&self) -> String {
        let text = match self {
            Resource::Route(r) => serde_yaml_ng::to_string(r),
            Resource::Shard(r) => serde_yaml_ng::to_string(r),
            Resource::TenantPlacement(r) => serde_yaml_ng::to_string(r),
            Resource::RateLimitPolicy(r) => serde_yaml_ng::to_string(r),
            Resource::CorsPolicy(r) => serde_yaml_ng::to_string(r),
            Resource::ApiKey(r) => serde_yaml_ng::to_string(r),
            Resource::TokenRevocation(r) => serde_yaml_ng::to_string(r),
        };
        text.expect("resources always serialize")
    }

    /// Everything wrong with this resource on its own (cross-resource checks such as policy
    /// targets belong to the compiler). Empty when valid.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Errors::default();
        let meta = self.metadata();
        match meta.name.as_deref() {
            None | Some("") => errors.add("metadata.name", "required"),
            Some(name) => errors.check("metadata.name", dns_subdomain(name)),
        }
        if let Some(namespace) = &meta.namespace {
            errors.check("metadata.namespace", dns_label(namespace));
        }
        match self {
            Resource::Route(r) => r.spec.validate(&mut errors),
            Resource::Shard(r) => r.spec.validate(&mut errors),
            Resource::TenantPlacement(r) => r.spec.validate(&mut errors),
            Resource::RateLimitPolicy(r) => r.spec.validate(&mut errors),
            Resource::CorsPolicy(r) => r.spec.validate(&mut errors),
            Resource::ApiKey(r) => r.spec.validate(meta.name.as_deref(), &mut errors),
            Resource::TokenRevocation(r) => r.spec.validate(&mut errors),
        }
        errors.0
    }
}
