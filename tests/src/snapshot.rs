//! Builders for snapshots, so data-plane tests can state routes in one line.

use pavilion_proto as proto;

/// A route `ns/name` for `hosts` with the given rules.
pub fn route(name: &str, hosts: &[&str], rules: Vec<proto::Rule>) -> proto::Route {
    let (namespace, name) = name.split_once('/').unwrap_or(("default", name));
    proto::Route {
        namespace: namespace.into(),
        name: name.into(),
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        rules,
        security_headers: None,
    }
}

/// A rule matching a path prefix, to weighted backends.
pub fn prefix_rule(prefix: &str, backends: &[(&str, u32)]) -> proto::Rule {
    proto::Rule {
        matches: vec![proto::Match {
            path: Some(proto::PathMatch {
                r#type: proto::PathMatchType::Prefix as i32,
                value: prefix.into(),
                ignore_case: false,
            }),
            ..Default::default()
        }],
        backends: backends
            .iter()
            .map(|(url, weight)| proto::Backend {
                url: url.to_string(),
                weight: *weight,
            })
            .collect(),
        timeout_ms: 10_000,
        ..Default::default()
    }
}

/// A snapshot with `routes` and a version.
pub fn snapshot(version: &str, routes: Vec<proto::Route>) -> proto::Snapshot {
    proto::Snapshot {
        version: version.into(),
        routes,
        ..Default::default()
    }
}

/// A snapshot with one route `name` sending every request, for any host, to `backend`.
pub fn catch_all(version: &str, name: &str, backend: &str) -> proto::Snapshot {
    snapshot(
        version,
        vec![route(name, &[], vec![prefix_rule("/", &[(backend, 1)])])],
    )
}

/// An API key of `namespace` with `scopes`, stored as the SHA-256 of `key` (as the control
/// plane compiles an `ApiKey` resource); `expires_at` in Unix seconds, 0 for never.
pub fn api_key(
    namespace: &str,
    id: &str,
    key: &str,
    scopes: &[&str],
    expires_at: i64,
) -> proto::ApiKey {
    use sha2::Digest;
    proto::ApiKey {
        namespace: namespace.into(),
        id: id.into(),
        sha256: sha2::Sha256::digest(key.as_bytes()).to_vec(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        expires_at,
        ..Default::default()
    }
}
