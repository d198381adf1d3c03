//! `ApiKey` and `TokenRevocation` resources into the snapshot's `api_keys` and
//! `revocations`. Keys are looked up by hash and named by id, so within a namespace both
//! must be unique: of two keys sharing either, the older one stays (creation time, then
//! name, as for routes) and the younger is rejected, pointing at it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use pavilion_crds::{ApiKey, FieldError, Resource, TokenRevocation};
use pavilion_proto as proto;

use super::{Outcome, Reason, Report, auth};
use crate::source::Origin;

/// The accepted keys (each with the index of its report), sorted by namespace then id.
/// Duplicates are rejected in their reports; expired keys get a warning. `now` is in
/// seconds since the Unix epoch.
pub(super) fn api_keys(
    keys: &[(&Resource, usize)],
    reports: &mut [Report],
    now: i64,
) -> Vec<proto::ApiKey> {
    let mut ordered: Vec<(&ApiKey, usize)> = keys
        .iter()
        .filter_map(|(resource, i)| match resource {
            Resource::ApiKey(key) => Some((key, *i)),
            _ => None,
        })
        .collect();
    ordered.sort_by(|(a, _), (b, _)| {
        let key = |k: &ApiKey| {
            (
                k.metadata.creation_timestamp.clone(),
                k.metadata.namespace.clone(),
                k.metadata.name.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    // Per namespace: id and hash, each to the key that claimed it first.
    let mut ids: HashMap<(String, String), (String, Origin)> = HashMap::new();
    let mut hashes: HashMap<(String, String), (String, Origin)> = HashMap::new();
    let mut compiled = Vec::new();
    for (key, i) in ordered {
        let namespace = key.metadata.namespace.clone().unwrap_or_default();
        let name = key.metadata.name.clone().unwrap_or_default();
        let id = key.spec.id(&name).to_owned();
        let hash = key.spec.sha256.to_ascii_lowercase();
        let id_owner = ids.get(&(namespace.clone(), id.clone()));
        let hash_owner = hashes.get(&(namespace.clone(), hash.clone()));
        if id_owner.is_some() || hash_owner.is_some() {
            let mut errors = Vec::new();
            if let Some((other, origin)) = id_owner {
                errors.push(FieldError {
                    field: if key.spec.key_id.is_some() {
                        "spec.keyId"
                    } else {
                        "metadata.name"
                    }
                    .into(),
                    message: format!(
                        "key id `{id}` is already used by the older ApiKey {namespace}/{other} at {origin}"
                    ),
                });
            }
            if let Some((other, origin)) = hash_owner {
                errors.push(FieldError {
                    field: "spec.sha256".into(),
                    message: format!(
                        "the same key (sha256) is already defined by the older ApiKey {namespace}/{other} at {origin}"
                    ),
                });
            }
            reports[i].outcome = Outcome::Rejected {
                reason: Reason::Duplicate,
                errors,
            };
            continue;
        }
        let origin = reports[i].origin.clone();
        ids.insert(
            (namespace.clone(), id.clone()),
            (name.clone(), origin.clone()),
        );
        hashes.insert((namespace.clone(), hash.clone()), (name, origin));

        let expires_at = key.spec.expiry().map_or(0, |t| t.timestamp());
        if expires_at != 0
            && expires_at <= now
            && let Outcome::Accepted { warnings } = &mut reports[i].outcome
        {
            warnings.push(FieldError {
                field: "spec.expiresAt".into(),
                message: format!(
                    "the key expired at {}; data planes refuse it",
                    key.spec.expires_at.as_deref().unwrap_or_default()
                ),
            });
        }
        compiled.push(proto::ApiKey {
            namespace,
            id,
            description: key.spec.description.clone().unwrap_or_default(),
            sha256: decode_hex(&hash),
            scopes: auth::scopes(&key.spec.scopes),
            expires_at,
            tenants: super::tenancy::membership(key.spec.tenants.as_ref()),
            roles: super::tenancy::roles(&key.spec.roles),
        });
    }
    compiled.sort_by(|a, b| (&a.namespace, &a.id).cmp(&(&b.namespace, &b.id)));
    compiled
}

/// One entry per namespace with every revoked jti of its accepted `TokenRevocation`s,
/// sorted and unique.
pub(super) fn revocations(revocations: &[(&Resource, usize)]) -> Vec<proto::TokenRevocations> {
    let mut merged: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (resource, _) in revocations {
        if let Resource::TokenRevocation(TokenRevocation { spec, .. }) = resource {
            merged
                .entry(resource.namespace())
                .or_default()
                .extend(spec.jtis.iter().map(String::as_str));
        }
    }
    merged
        .into_iter()
        .map(|(namespace, jtis)| proto::TokenRevocations {
            namespace: namespace.to_owned(),
            jtis: jtis.into_iter().map(str::to_owned).collect(),
        })
        .collect()
}

/// Hex digits (validated: 64 of them) as bytes.
fn decode_hex(hex: &str) -> Vec<u8> {
    let digit = |b: u8| (b as char).to_digit(16).unwrap_or(0) as u8;
    hex.as_bytes()
        .chunks_exact(2)
        .map(|pair| digit(pair[0]) << 4 | digit(pair[1]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_decodes_in_either_case() {
        assert_eq!(decode_hex("00ff7A"), [0x00, 0xff, 0x7a]);
    }
}
