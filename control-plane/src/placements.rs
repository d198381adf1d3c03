//! The placement lookup of the control-plane API, read from the published snapshot's
//! tenant table: what a rebalancer (or an operator) asks before and after moving a tenant.
//! A tenant's document is the same as the data plane's `GET /admin/routing?tenant=T`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use pavilion_proto as proto;
use serde_json::{Value, json};

/// Page size when the caller names none, and the most it may ask for.
pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = 1000;

/// One tenant's effective placement: per service kind, the shard and its endpoints.
pub fn view(table: &proto::Placements, tenant: &proto::TenantPlacement) -> Value {
    let mut services = serde_json::Map::new();
    for (kind, index) in [
        ("aggregate", tenant.aggregate),
        ("projection", tenant.projection),
        ("runner", tenant.runner),
    ] {
        if let Some(shard) = usize::try_from(index)
            .ok()
            .and_then(|i| table.shards.get(i))
        {
            services.insert(
                kind.to_owned(),
                json!({ "shard": shard.name, "endpoints": shard.endpoints }),
            );
        }
    }
    json!({ "tenant": tenant.tenant, "revision": tenant.revision, "services": services })
}

/// The tenant's placement, if some placement names it.
pub fn lookup(table: &proto::Placements, tenant: &str) -> Option<Value> {
    let position = table
        .tenants
        .binary_search_by(|t| t.tenant.as_str().cmp(tenant))
        .ok()?;
    Some(view(table, &table.tenants[position]))
}

/// A page of placements in tenant order, after the one `continue_token` names.
pub fn page(
    table: &proto::Placements,
    limit: usize,
    continue_token: Option<&str>,
) -> Result<Value, &'static str> {
    let after = match continue_token {
        None => None,
        Some(token) => Some(
            URL_SAFE_NO_PAD
                .decode(token)
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .ok_or("the continue token is not one this API handed out")?,
        ),
    };
    let start = match &after {
        None => 0,
        Some(last) => table
            .tenants
            .partition_point(|t| t.tenant.as_str() <= last.as_str()),
    };
    let limit = limit.clamp(1, MAX_PAGE);
    let items: Vec<Value> = table.tenants[start..]
        .iter()
        .take(limit)
        .map(|t| view(table, t))
        .collect();
    let end = start + items.len();
    let next = (end < table.tenants.len())
        .then(|| URL_SAFE_NO_PAD.encode(table.tenants[end - 1].tenant.as_bytes()));
    Ok(json!({ "revision": table.revision, "items": items, "continue": next }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(tenants: &[&str]) -> proto::Placements {
        proto::Placements {
            revision: "r".into(),
            shards: vec![proto::Shard {
                namespace: "p".into(),
                name: "agg-1".into(),
                service: "aggregate".into(),
                endpoints: vec!["h2c://127.0.0.1:1".into()],
                readiness: String::new(),
            }],
            tenants: tenants
                .iter()
                .map(|t| proto::TenantPlacement {
                    tenant: (*t).into(),
                    aggregate: 0,
                    projection: -1,
                    runner: -1,
                    revision: format!("rev-{t}"),
                })
                .collect(),
        }
    }

    #[test]
    fn pages_walk_every_tenant_once() {
        let table = table(&["a", "b", "c", "d", "e"]);
        let mut seen = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = page(&table, 2, token.as_deref()).unwrap();
            for item in page["items"].as_array().unwrap() {
                seen.push(item["tenant"].as_str().unwrap().to_owned());
            }
            match page["continue"].as_str() {
                Some(next) => token = Some(next.to_owned()),
                None => break,
            }
        }
        assert_eq!(seen, ["a", "b", "c", "d", "e"]);
        assert!(page(&table, 2, Some("not base64!")).is_err());
        assert_eq!(
            lookup(&table, "c").unwrap(),
            json!({"tenant": "c", "revision": "rev-c", "services": {"aggregate": {"shard": "agg-1", "endpoints": ["h2c://127.0.0.1:1"]}}})
        );
        assert!(lookup(&table, "z").is_none());
    }
}
