//! The tenant table of a snapshot: per tenant, the shard of each service kind, each shard's
//! endpoints ready to be picked like weighted backends. Built once per snapshot and swapped
//! with it, so a request sees one placement from start to end; a lookup is one hash probe.

use std::collections::HashMap;

use foldhash::fast::RandomState;
use pavilion_proto as proto;
use serde_json::{Value, json};

use crate::upstream::Backends;

/// The service kinds a tenant is placed for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Aggregate,
    Projection,
    Runner,
}

impl Service {
    pub const ALL: [Service; 3] = [Service::Aggregate, Service::Projection, Service::Runner];

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Service::Aggregate => "aggregate",
            Service::Projection => "projection",
            Service::Runner => "runner",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One shard, ready to serve.
pub struct Shard {
    /// `namespace/name`, for logs and errors.
    pub name: Box<str>,
    pub service: Service,
    pub endpoints: Box<[Box<str>]>,
    pub backends: Backends,
}

struct Tenant {
    /// Index into `shards` per service kind.
    shards: [Option<u32>; 3],
    revision: Box<str>,
}

/// What a lookup found.
pub enum Lookup<'a> {
    UnknownTenant,
    /// The tenant is placed, but not for this service kind.
    NotPlaced,
    Shard(&'a Shard),
}

#[derive(Default)]
pub struct Placements {
    pub revision: Box<str>,
    shards: Box<[Shard]>,
    tenants: HashMap<Box<str>, Tenant, RandomState>,
}

impl Placements {
    pub fn build(table: Option<&proto::Placements>) -> Result<Self, String> {
        let Some(table) = table else {
            return Ok(Self::default());
        };
        let shards = table
            .shards
            .iter()
            .map(|shard| {
                let name = format!("{}/{}", shard.namespace, shard.name);
                let service = Service::from_name(&shard.service)
                    .ok_or_else(|| format!("shard {name}: unknown service `{}`", shard.service))?;
                let endpoints: Vec<proto::Backend> = shard
                    .endpoints
                    .iter()
                    .map(|url| proto::Backend {
                        url: url.clone(),
                        weight: 1,
                    })
                    .collect();
                let backends =
                    Backends::new(&endpoints, "").map_err(|e| format!("shard {name}: {e}"))?;
                Ok(Shard {
                    name: name.into(),
                    service,
                    endpoints: shard.endpoints.iter().map(|e| e.as_str().into()).collect(),
                    backends,
                })
            })
            .collect::<Result<Box<[Shard]>, String>>()?;
        let mut tenants =
            HashMap::with_capacity_and_hasher(table.tenants.len(), RandomState::default());
        for entry in &table.tenants {
            let mut placed = [None; 3];
            for (service, index) in [
                (Service::Aggregate, entry.aggregate),
                (Service::Projection, entry.projection),
                (Service::Runner, entry.runner),
            ] {
                let Ok(index) = u32::try_from(index) else {
                    continue;
                };
                match shards.get(index as usize) {
                    Some(shard) if shard.service == service => {
                        placed[service.index()] = Some(index)
                    }
                    _ => {
                        return Err(format!(
                            "tenant {}: {} points to no {} shard",
                            entry.tenant,
                            service.as_str(),
                            service.as_str()
                        ));
                    }
                }
            }
            tenants.insert(
                entry.tenant.as_str().into(),
                Tenant {
                    shards: placed,
                    revision: entry.revision.as_str().into(),
                },
            );
        }
        Ok(Self {
            revision: table.revision.as_str().into(),
            shards,
            tenants,
        })
    }

    pub fn contains(&self, tenant: &str) -> bool {
        self.tenants.contains_key(tenant)
    }

    pub fn lookup(&self, tenant: &str, service: Service) -> Lookup<'_> {
        match self.tenants.get(tenant) {
            None => Lookup::UnknownTenant,
            Some(entry) => match entry.shards[service.index()] {
                None => Lookup::NotPlaced,
                Some(index) => Lookup::Shard(&self.shards[index as usize]),
            },
        }
    }

    /// Tenant ids in table order (sorted).
    pub fn tenant_ids(&self) -> impl Iterator<Item = &str> {
        let mut ids: Vec<&str> = self.tenants.keys().map(|t| &**t).collect();
        ids.sort_unstable();
        ids.into_iter()
    }

    pub fn tenant_count(&self) -> usize {
        self.tenants.len()
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The tenant's placement as the admin API shows it — the same document as the control
    /// plane's `GET /v1/placements/{tenant}`.
    pub fn describe(&self, tenant: &str) -> Option<Value> {
        let entry = self.tenants.get(tenant)?;
        let mut services = serde_json::Map::new();
        for service in Service::ALL {
            if let Some(index) = entry.shards[service.index()] {
                let shard = &self.shards[index as usize];
                let name = shard.name.rsplit('/').next().unwrap_or_default();
                services.insert(
                    service.as_str().to_owned(),
                    json!({ "shard": name, "endpoints": shard.endpoints }),
                );
            }
        }
        Some(json!({
            "tenant": tenant,
            "revision": entry.revision,
            "services": services,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> proto::Placements {
        proto::Placements {
            revision: "r1".into(),
            shards: vec![
                proto::Shard {
                    namespace: "platform".into(),
                    name: "agg-1".into(),
                    service: "aggregate".into(),
                    endpoints: vec!["h2c://127.0.0.1:7001".into(), "h2c://127.0.0.1:7002".into()],
                    readiness: String::new(),
                },
                proto::Shard {
                    namespace: "platform".into(),
                    name: "proj-1".into(),
                    service: "projection".into(),
                    endpoints: vec!["http://127.0.0.1:7101".into()],
                    readiness: String::new(),
                },
            ],
            tenants: vec![proto::TenantPlacement {
                tenant: "acme".into(),
                aggregate: 0,
                projection: -1,
                runner: -1,
                revision: "t1".into(),
            }],
        }
    }

    #[test]
    fn lookups_tell_unknown_tenants_from_unplaced_kinds() {
        let placements = Placements::build(Some(&table())).unwrap();
        assert!(
            matches!(placements.lookup("acme", Service::Aggregate), Lookup::Shard(s) if &*s.name == "platform/agg-1")
        );
        assert!(matches!(
            placements.lookup("acme", Service::Projection),
            Lookup::NotPlaced
        ));
        assert!(matches!(
            placements.lookup("globex", Service::Aggregate),
            Lookup::UnknownTenant
        ));
        assert_eq!(
            placements.describe("acme").unwrap(),
            json!({"tenant": "acme", "revision": "t1", "services": {"aggregate": {"shard": "agg-1", "endpoints": ["h2c://127.0.0.1:7001", "h2c://127.0.0.1:7002"]}}})
        );
    }

    #[test]
    fn a_placement_pointing_at_a_shard_of_another_kind_is_refused() {
        let mut bad = table();
        bad.tenants[0].projection = 0;
        assert!(Placements::build(Some(&bad)).is_err());
        bad.tenants[0].projection = 7;
        assert!(Placements::build(Some(&bad)).is_err());
    }
}
