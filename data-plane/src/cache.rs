//! The response cache: one per data plane, shared by every worker and snapshot, bounded in
//! bytes (moka, weighted by what an entry holds), each entry expiring when its freshness
//! ends. What may be stored is decided here by RFC 9111's rules for a shared cache:
//! explicit freshness (`s-maxage`, `max-age`, or the rule's default), never `no-store`,
//! `private`, `no-cache`, `Set-Cookie` or `Vary: *`, and — for requests with credentials —
//! only responses marked `public` or `s-maxage`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{AGE, CACHE_CONTROL, CONTENT_LENGTH, DATE, EXPIRES, PRAGMA, SET_COOKIE, VARY};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use pavilion_proto as proto;

use crate::body::ResponseBody;

pub static X_CACHE: HeaderName = HeaderName::from_static("x-cache");
static HIT: HeaderValue = HeaderValue::from_static("HIT");
static MISS: HeaderValue = HeaderValue::from_static("MISS");

/// A rule's cache settings.
#[derive(Debug)]
pub struct Settings {
    /// What the rule is (route, position and every field, hashed): two rules never share
    /// entries, and an edited rule starts with an empty cache.
    pub scope: u64,
    pub default_ttl: Option<Duration>,
    pub max_ttl: Duration,
    pub max_entry_bytes: u64,
    pub key_headers: Box<[HeaderName]>,
}

impl Settings {
    pub fn new(cache: &proto::Cache, scope: u64) -> Result<Self, String> {
        Ok(Self {
            scope,
            default_ttl: (cache.default_ttl_ms > 0)
                .then(|| Duration::from_millis(cache.default_ttl_ms)),
            max_ttl: Duration::from_millis(cache.max_ttl_ms.max(1000)),
            max_entry_bytes: cache.max_entry_bytes.max(1),
            key_headers: cache
                .key_headers
                .iter()
                .map(|h| {
                    HeaderName::try_from(h.as_str()).map_err(|_| format!("cache key header `{h}`"))
                })
                .collect::<Result<_, _>>()?,
        })
    }
}

/// What an entry is found by: the rule's route, the host and path and query the backend
/// was asked for, and the values of the key headers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    pub route: Arc<str>,
    /// [`Settings::scope`].
    pub scope: u64,
    pub host: Box<str>,
    pub target: Box<str>,
    /// Key header values, each followed by a NUL (header values hold none).
    pub extra: Box<[u8]>,
}

/// A stored response.
pub struct Entry {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    stored: Instant,
    /// The response's age when it was stored (its `Age`).
    age: Duration,
    ttl: Duration,
    /// May be served to requests with credentials.
    pub public: bool,
    /// The request headers the response varies on, with the values it was made for.
    vary: Box<[(HeaderName, Box<[HeaderValue]>)]>,
}

impl Entry {
    /// Whether the request asks for the variant this entry holds.
    pub fn matches(&self, request: &HeaderMap) -> bool {
        self.vary
            .iter()
            .all(|(name, values)| request.get_all(name).iter().eq(values.iter()))
    }

    /// The stored response as a client gets it (`head`: without the body).
    pub fn response(&self, head: bool, hit: bool) -> Response<ResponseBody> {
        let body = if head {
            ResponseBody::Local(None)
        } else {
            ResponseBody::local(self.body.clone())
        };
        let mut response = Response::new(body);
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers.clone();
        let age = (self.age + self.stored.elapsed()).as_secs().to_string();
        if let Ok(age) = HeaderValue::from_str(&age) {
            response.headers_mut().insert(AGE, age);
        }
        mark(&mut response, hit);
        response
    }

    fn weight(&self, key: &Key) -> u32 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 32)
            .sum();
        let total =
            self.body.len() + headers + key.host.len() + key.target.len() + key.extra.len() + 128;
        u32::try_from(total).unwrap_or(u32::MAX)
    }
}

/// `x-cache: HIT` or `MISS` on a response.
pub fn mark<B>(response: &mut Response<B>, hit: bool) {
    let value = if hit { &HIT } else { &MISS };
    response.headers_mut().insert(&X_CACHE, value.clone());
}

/// How long a response may be served from the cache, and to whom; `None`: not at all.
/// `authenticated`: the request carried credentials.
pub fn freshness(
    status: StatusCode,
    headers: &HeaderMap,
    settings: &Settings,
    authenticated: bool,
) -> Option<(Duration, bool)> {
    let cacheable_status = matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 410
    );
    if !cacheable_status || headers.contains_key(SET_COOKIE) {
        return None;
    }
    // HTTP/1.0's "do not cache", when no Cache-Control says otherwise.
    if !headers.contains_key(CACHE_CONTROL)
        && headers
            .get_all(PRAGMA)
            .iter()
            .any(|v| v.as_bytes().eq_ignore_ascii_case(b"no-cache"))
    {
        return None;
    }
    let length: u64 = headers.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()?;
    if length > settings.max_entry_bytes {
        return None;
    }
    let mut public = false;
    let (mut max_age, mut s_max_age) = (None, None);
    for directive in headers
        .get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
    {
        let (name, value) = match directive.trim().split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
            None => (directive.trim(), None),
        };
        let seconds = || value.and_then(|v| v.parse::<u64>().ok());
        match name.to_ascii_lowercase().as_str() {
            "no-store" | "private" | "no-cache" => return None,
            "public" => public = true,
            "max-age" => max_age = Some(seconds()?),
            "s-maxage" => s_max_age = Some(seconds()?),
            _ => {}
        }
    }
    // RFC 9111 §3.5: a shared cache serves a response to an authorized request only when
    // the response says it may.
    let shareable = public || s_max_age.is_some();
    if authenticated && !shareable {
        return None;
    }
    let age = age_of(headers);
    let stated = match s_max_age.or(max_age) {
        Some(seconds) => Some(Duration::from_secs(seconds)),
        // `Expires` counts when no max-age does: a past, invalid or unknowable date (no
        // `Date` to read it against) means stale, never stored.
        None => match headers.get(EXPIRES) {
            Some(expires) => {
                let expires = httpdate::parse_http_date(expires.to_str().ok()?).ok()?;
                let date = headers
                    .get(DATE)
                    .and_then(|d| httpdate::parse_http_date(d.to_str().ok()?).ok())
                    .unwrap_or_else(std::time::SystemTime::now);
                Some(expires.duration_since(date).ok()?)
            }
            None => None,
        },
    };
    let ttl = stated
        .or(settings.default_ttl)?
        .saturating_sub(age)
        .min(settings.max_ttl);
    (!ttl.is_zero()).then_some((ttl, shareable))
}

/// The response's `Age` (0 when absent or malformed).
pub fn age_of(headers: &HeaderMap) -> Duration {
    headers
        .get(AGE)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_secs)
}

/// The names a response varies on; `None` for `Vary: *` (never the same twice).
fn vary_names(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    for part in headers
        .get_all(VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
    {
        let part = part.trim();
        if part == "*" {
            return None;
        }
        if let Ok(name) = HeaderName::try_from(part) {
            names.push(name);
        }
    }
    Some(names)
}

/// The entry for a fetched response whose head allows storing and whose body is in hand.
pub fn entry(
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    request: &HeaderMap,
    ttl: Duration,
    public: bool,
) -> Option<Entry> {
    let vary = vary_names(&headers)?
        .into_iter()
        .map(|name| {
            let values = request.get_all(&name).iter().cloned().collect();
            (name, values)
        })
        .collect();
    let age = age_of(&headers);
    Some(Entry {
        status,
        headers,
        body,
        stored: Instant::now(),
        age,
        ttl,
        public,
        vary,
    })
}

struct Expiry;

impl moka::Expiry<Key, Arc<Entry>> for Expiry {
    fn expire_after_create(
        &self,
        _: &Key,
        entry: &Arc<Entry>,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }
}

/// The data plane's cache.
#[derive(Clone)]
pub struct ResponseCache {
    pub entries: moka::future::Cache<Key, Arc<Entry>>,
}

impl ResponseCache {
    pub fn new(max_bytes: u64) -> Self {
        Self {
            entries: moka::future::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|key: &Key, entry: &Arc<Entry>| entry.weight(key))
                .expire_after(Expiry)
                .support_invalidation_closures()
                .build(),
        }
    }

    /// Drops the entries of `route` (all when `None`) whose host and path start as given.
    pub fn purge(
        &self,
        route: Option<String>,
        host: Option<String>,
        path_prefix: Option<String>,
    ) -> Result<(), String> {
        self.entries
            .invalidate_entries_if(move |key, _| {
                route.as_deref().is_none_or(|r| &*key.route == r)
                    && host
                        .as_deref()
                        .is_none_or(|h| key.host.eq_ignore_ascii_case(h))
                    && path_prefix
                        .as_deref()
                        .is_none_or(|p| key.target.starts_with(p))
            })
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            scope: 0,
            default_ttl: None,
            max_ttl: Duration::from_secs(3600),
            max_entry_bytes: 1000,
            key_headers: Box::new([]),
        }
    }

    fn head(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("10"));
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn freshness_follows_cache_control() {
        let ok = StatusCode::OK;
        let s = settings();
        let fresh = |pairs: &[(&'static str, &'static str)], auth: bool| {
            freshness(ok, &head(pairs), &s, auth)
        };
        assert_eq!(
            fresh(&[("cache-control", "max-age=60")], false),
            Some((Duration::from_secs(60), false))
        );
        assert_eq!(
            fresh(&[("cache-control", "max-age=60, s-maxage=10")], false),
            Some((Duration::from_secs(10), true))
        );
        assert_eq!(
            fresh(&[("cache-control", "max-age=60"), ("age", "50")], false),
            Some((Duration::from_secs(10), false))
        );
        assert_eq!(
            fresh(&[], false),
            None,
            "no freshness, no default: not stored"
        );
        assert_eq!(
            fresh(&[("expires", "0")], false),
            None,
            "an invalid Expires is stale"
        );
        assert_eq!(
            fresh(
                &[
                    ("expires", "Thu, 01 Jan 2015 00:00:00 GMT"),
                    ("date", "Thu, 01 Jan 2015 00:00:30 GMT")
                ],
                false
            ),
            None,
            "a past Expires"
        );
        assert_eq!(
            fresh(
                &[
                    ("expires", "Thu, 01 Jan 2015 00:01:00 GMT"),
                    ("date", "Thu, 01 Jan 2015 00:00:30 GMT")
                ],
                false
            ),
            Some((Duration::from_secs(30), false))
        );
        assert_eq!(fresh(&[("pragma", "no-cache")], false), None);
        for refused in [
            "no-store",
            "private, max-age=60",
            "no-cache, max-age=60",
            "max-age=0",
        ] {
            assert_eq!(
                fresh(&[("cache-control", refused)], false),
                None,
                "{refused}"
            );
        }
        assert_eq!(
            fresh(
                &[("cache-control", "max-age=60"), ("set-cookie", "a=b")],
                false
            ),
            None
        );
        assert_eq!(
            fresh(&[("cache-control", "max-age=60")], true),
            None,
            "credentials need public"
        );
        assert!(fresh(&[("cache-control", "public, max-age=60")], true).is_some());
        assert_eq!(
            freshness(
                StatusCode::INTERNAL_SERVER_ERROR,
                &head(&[("cache-control", "max-age=60")]),
                &s,
                false
            ),
            None
        );
        let mut big = head(&[("cache-control", "max-age=60")]);
        big.insert(CONTENT_LENGTH, HeaderValue::from_static("1001"));
        assert_eq!(freshness(ok, &big, &s, false), None, "over maxEntryBytes");
        let capped = Settings {
            default_ttl: Some(Duration::from_secs(30)),
            max_ttl: Duration::from_secs(20),
            ..settings()
        };
        assert_eq!(
            freshness(ok, &head(&[]), &capped, false),
            Some((Duration::from_secs(20), false))
        );
    }

    #[test]
    fn variants_are_told_apart_by_vary() {
        let mut request = HeaderMap::new();
        request.insert("accept-language", HeaderValue::from_static("de"));
        let entry = entry(
            StatusCode::OK,
            head(&[("vary", "Accept-Language")]),
            Bytes::from_static(b"0123456789"),
            &request,
            Duration::from_secs(1),
            false,
        )
        .unwrap();
        assert!(entry.matches(&request));
        request.insert("accept-language", HeaderValue::from_static("fr"));
        assert!(!entry.matches(&request));
        assert!(
            super::entry(
                StatusCode::OK,
                head(&[("vary", "*")]),
                Bytes::new(),
                &request,
                Duration::from_secs(1),
                false
            )
            .is_none()
        );
    }
}
