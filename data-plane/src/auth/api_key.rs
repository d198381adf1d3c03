//! API keys: looked up by the SHA-256 of what the client sends. Only hashes arrive with the
//! snapshot; API keys are 256-bit random strings, so a fast hash cannot be brute-forced
//! the way a password could, and one hash per request is cheap.

use std::collections::HashMap;

use http::Method;
use pavilion_proto as proto;
use sha2::{Digest, Sha256};

/// Scope bits.
pub const READ: u8 = 1;
pub const WRITE: u8 = 2;
pub const ADMIN: u8 = 4;

pub fn scope_bits(scopes: &[String]) -> Result<u8, String> {
    scopes
        .iter()
        .try_fold(0, |bits, scope| match scope.as_str() {
            "read" => Ok(bits | READ),
            "write" => Ok(bits | WRITE),
            "admin" => Ok(bits | ADMIN),
            other => Err(format!("unknown scope `{other}`")),
        })
}

pub fn scope_names(bits: u8) -> String {
    let names: Vec<&str> = [(READ, "read"), (WRITE, "write"), (ADMIN, "admin")]
        .iter()
        .filter(|(b, _)| bits & b != 0)
        .map(|(_, n)| *n)
        .collect();
    names.join(", ")
}

/// The scopes a request needs by itself: `read` for GET/HEAD/OPTIONS, `write` for the
/// rest, plus `admin` under `/admin`. "Under `/admin`" is judged the way lenient upstreams
/// read paths — percent-decoded (repeatedly), `;params` dropped, empty segments and `\`
/// as separators, any case — so `//admin`, `/%61dmin`, `/admin;x/…` or `/Admin` cannot
/// slip past with a `read` key.
pub fn implied_scopes(method: &Method, path: &str) -> u8 {
    let base = if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        READ
    } else {
        WRITE
    };
    if is_admin(path) { base | ADMIN } else { base }
}

fn is_admin(path: &str) -> bool {
    let mut path = std::borrow::Cow::Borrowed(path.as_bytes());
    for _ in 0..3 {
        match percent_decode(&path) {
            Some(decoded) => path = std::borrow::Cow::Owned(decoded),
            None => break,
        }
    }
    let first = path
        .split(|b| *b == b'/' || *b == b'\\')
        .find(|segment| !segment.is_empty())
        .unwrap_or_default();
    let first = first.split(|b| *b == b';').next().unwrap_or_default();
    first.eq_ignore_ascii_case(b"admin")
}

/// The bytes with `%XX` escapes decoded; `None` when there were none.
fn percent_decode(input: &[u8]) -> Option<Vec<u8>> {
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(input.len());
    let mut changed = false;
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%'
            && let (Some(high), Some(low)) = (
                input.get(i + 1).and_then(|b| hex(*b)),
                input.get(i + 2).and_then(|b| hex(*b)),
            )
        {
            out.push((high * 16 + low) as u8);
            changed = true;
            i += 3;
        } else {
            out.push(input[i]);
            i += 1;
        }
    }
    changed.then_some(out)
}

#[derive(Debug, Clone)]
pub struct ApiKey {
    pub namespace: Box<str>,
    pub id: Box<str>,
    pub scopes: u8,
    /// Unix seconds; 0 = never.
    pub expires_at: i64,
    /// The tenants it acts for, shared by every request it authenticates.
    pub membership: std::sync::Arc<super::membership::Membership>,
}

/// Keys issued outside the snapshot (by the identity service's IAM API), as a copy the
/// request path reads without a lock; whoever issues them swaps in a new table.
#[derive(Default)]
pub struct IssuedKeys {
    keys: arc_swap::ArcSwap<ApiKeys>,
}

impl IssuedKeys {
    pub fn replace(&self, keys: ApiKeys) {
        self.keys.store(std::sync::Arc::new(keys));
    }

    /// The issued key the client presented, if any.
    pub fn find(&self, presented: &str) -> Option<ApiKey> {
        self.keys.load().find(presented).cloned()
    }
}

/// Every key of the snapshot, by hash.
#[derive(Debug, Default)]
pub struct ApiKeys {
    by_hash: HashMap<[u8; 32], ApiKey>,
}

impl ApiKeys {
    pub fn new(keys: &[proto::ApiKey]) -> Result<Self, String> {
        let mut by_hash = HashMap::with_capacity(keys.len());
        for key in keys {
            let hash: [u8; 32] = key.sha256.as_slice().try_into().map_err(|_| {
                format!(
                    "api key {}/{}: the hash is not 32 bytes",
                    key.namespace, key.id
                )
            })?;
            let scopes = scope_bits(&key.scopes)
                .map_err(|e| format!("api key {}/{}: {e}", key.namespace, key.id))?;
            let entry = ApiKey {
                namespace: key.namespace.as_str().into(),
                id: key.id.as_str().into(),
                scopes,
                expires_at: key.expires_at,
                membership: std::sync::Arc::new(super::membership::Membership::from_key(
                    &key.tenants,
                    &key.roles,
                )),
            };
            by_hash.insert(hash, entry);
        }
        Ok(Self { by_hash })
    }

    /// The key the client presented, if it is one of ours.
    pub fn find(&self, presented: &str) -> Option<&ApiKey> {
        let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        self.by_hash.get(&hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_by_hash_and_scopes_follow_method_and_path() {
        let keys = ApiKeys::new(&[proto::ApiKey {
            namespace: "shop".into(),
            id: "mobile".into(),
            sha256: Sha256::digest(b"pvk_secret").to_vec(),
            scopes: vec!["read".into(), "write".into()],
            ..Default::default()
        }])
        .unwrap();
        let key = keys.find("pvk_secret").expect("known key");
        assert_eq!(&*key.id, "mobile");
        assert_eq!(key.scopes, READ | WRITE);
        assert!(keys.find("pvk_secreT").is_none());
        assert!(keys.find("").is_none());

        assert_eq!(implied_scopes(&Method::GET, "/orders"), READ);
        assert_eq!(implied_scopes(&Method::OPTIONS, "/orders"), READ);
        assert_eq!(implied_scopes(&Method::DELETE, "/orders/1"), WRITE);
        assert_eq!(implied_scopes(&Method::GET, "/admin/users"), READ | ADMIN);
        assert_eq!(implied_scopes(&Method::POST, "/admin"), WRITE | ADMIN);
        assert_eq!(
            implied_scopes(&Method::GET, "/administrator"),
            READ,
            "a segment boundary"
        );
        for sneaky in [
            "//admin/users",
            "/%61dmin/users",
            "/%2561dmin",
            "/admin%2Fusers",
            "/admin;x=1/users",
            "/Admin/users",
            "/ADMIN",
            "/\\admin",
        ] {
            assert_eq!(
                implied_scopes(&Method::GET, sneaky),
                READ | ADMIN,
                "{sneaky}"
            );
        }
        assert_eq!(scope_names(READ | ADMIN), "read, admin");
        assert!(
            ApiKeys::new(&[proto::ApiKey {
                sha256: vec![1, 2],
                ..Default::default()
            }])
            .is_err()
        );
    }
}
