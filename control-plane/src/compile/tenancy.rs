//! Shards and placements into the snapshot's tenant table, with the checks that span
//! resources: a placement names shards of its own namespace that exist and serve the kind
//! it places them for. A placement failing them is rejected alone; the older of two
//! placements of one tenant wins (checked with the other duplicates).

use std::collections::HashMap;

use pavilion_crds::{FieldError, Membership, Resource, ServiceKind};
use pavilion_proto as proto;
use sha2::{Digest, Sha256};

use super::{Outcome, Reason, Report};

/// Builds the table from accepted shards and placements (each with its report's index),
/// rejecting placements whose shards are missing or of another kind.
pub(super) fn placements(
    shards: &[(&Resource, usize)],
    placements: &[(&Resource, usize)],
    reports: &mut [Report],
) -> proto::Placements {
    let mut table: Vec<proto::Shard> = shards
        .iter()
        .filter_map(|(resource, _)| match resource {
            Resource::Shard(shard) => Some(proto::Shard {
                namespace: resource.namespace().to_owned(),
                name: resource.name().to_owned(),
                service: shard.spec.service.as_str().to_owned(),
                endpoints: shard.spec.endpoints.clone(),
                readiness: shard.spec.readiness.clone().unwrap_or_default(),
            }),
            _ => None,
        })
        .collect();
    table.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let index: HashMap<(&str, &str), usize> = table
        .iter()
        .enumerate()
        .map(|(i, s)| ((s.namespace.as_str(), s.name.as_str()), i))
        .collect();

    let mut tenants = Vec::new();
    for (resource, report) in placements {
        let Resource::TenantPlacement(placement) = resource else {
            continue;
        };
        let namespace = resource.namespace();
        let mut entry = proto::TenantPlacement {
            tenant: placement.spec.tenant.clone(),
            aggregate: -1,
            projection: -1,
            runner: -1,
            revision: String::new(),
        };
        let mut errors = Vec::new();
        let mut reason = Reason::Invalid;
        for (kind, name) in placement.spec.shards.iter() {
            let field = format!("spec.shards.{kind}");
            match index.get(&(namespace, name)) {
                None => {
                    reason = Reason::TargetNotFound;
                    errors.push(FieldError {
                        field,
                        message: format!("no accepted Shard `{name}` in namespace `{namespace}`"),
                    });
                }
                Some(&i) if table[i].service != kind.as_str() => errors.push(FieldError {
                    field,
                    message: format!("Shard `{name}` serves {}, not {kind}", table[i].service),
                }),
                Some(&i) => *slot(&mut entry, kind) = i as i32,
            }
        }
        if errors.is_empty() {
            entry.revision = revision_of(&entry, &table);
            tenants.push(entry);
        } else {
            reports[*report].outcome = Outcome::Rejected { reason, errors };
        }
    }
    tenants.sort_by(|a, b| a.tenant.cmp(&b.tenant));
    let mut table = proto::Placements {
        revision: String::new(),
        shards: table,
        tenants,
    };
    table.revision = hash(|digest| {
        for tenant in &table.tenants {
            digest.update(tenant.tenant.as_bytes());
            digest.update(tenant.revision.as_bytes());
        }
    });
    table
}

fn slot(entry: &mut proto::TenantPlacement, kind: ServiceKind) -> &mut i32 {
    match kind {
        ServiceKind::Aggregate => &mut entry.aggregate,
        ServiceKind::Projection => &mut entry.projection,
        ServiceKind::Runner => &mut entry.runner,
    }
}

/// A hash of what the tenant's requests resolve to: each kind's shard and its endpoints.
fn revision_of(entry: &proto::TenantPlacement, shards: &[proto::Shard]) -> String {
    hash(|digest| {
        for index in [entry.aggregate, entry.projection, entry.runner] {
            match usize::try_from(index).ok().and_then(|i| shards.get(i)) {
                None => digest.update(b"-\0"),
                Some(shard) => {
                    for part in [&shard.namespace, &shard.name, &shard.service] {
                        digest.update(part.as_bytes());
                        digest.update(b"\0");
                    }
                    for endpoint in &shard.endpoints {
                        digest.update(endpoint.as_bytes());
                        digest.update(b"\0");
                    }
                }
            }
            digest.update(b"\n");
        }
    })
}

/// The first 8 bytes of SHA-256 over what `feed` writes, in hex.
fn hash(feed: impl FnOnce(&mut Sha256)) -> String {
    let mut digest = Sha256::new();
    feed(&mut digest);
    digest.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Membership as the snapshot carries it: sorted by tenant, roles sorted and unique.
pub(super) fn membership(tenants: Option<&Membership>) -> Vec<proto::TenantRoles> {
    let mut list: Vec<proto::TenantRoles> = tenants
        .map(Membership::entries)
        .unwrap_or_default()
        .into_iter()
        .map(|(tenant, roles)| proto::TenantRoles {
            tenant: tenant.to_owned(),
            roles: super::tenancy::roles(roles),
        })
        .collect();
    list.sort_by(|a, b| a.tenant.cmp(&b.tenant));
    list.dedup_by(|a, b| a.tenant == b.tenant);
    list
}

/// Role names sorted and unique.
pub(super) fn roles(roles: &[String]) -> Vec<String> {
    let mut roles = roles.to_vec();
    roles.sort();
    roles.dedup();
    roles
}
