//! A CorsPolicy as a rule enforces it, compiled once per snapshot: origins in a set plus
//! wildcard suffixes, the preflight answer's header values made up front.

use std::collections::HashSet;

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, VARY,
};
use http::{HeaderMap, HeaderValue, Method};
use pavilion_proto as proto;

/// Methods a preflight may ask for when the policy names none (the CORS "simple" ones).
const DEFAULT_METHODS: [Method; 3] = [Method::GET, Method::HEAD, Method::POST];

#[derive(Debug)]
pub struct Cors {
    /// `namespace/name` of the policy.
    pub policy: Box<str>,
    any_origin: bool,
    exact: HashSet<Box<str>>,
    /// (`https://`, `.example.com`) for `https://*.example.com`.
    wildcards: Box<[(Box<str>, Box<str>)]>,
    /// `None`: any method.
    methods: Option<Box<[Method]>>,
    /// `None`: any header (but `authorization`, unless listed: a wildcard never covers it).
    headers: Option<HashSet<Box<str>>>,
    authorization_listed: bool,
    credentials: bool,
    allow_methods: Option<HeaderValue>,
    expose: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
}

/// Why a preflight is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    Origin,
    Method(String),
    Header(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Origin => f.write_str("the origin is not allowed"),
            Refusal::Method(m) => write!(f, "method {m} is not allowed"),
            Refusal::Header(h) => write!(f, "request header {h} is not allowed"),
        }
    }
}

fn joined(items: impl Iterator<Item = String>) -> Option<HeaderValue> {
    let text = items.collect::<Vec<_>>().join(", ");
    (!text.is_empty())
        .then(|| HeaderValue::from_str(&text).ok())
        .flatten()
}

impl Cors {
    pub fn new(cors: &proto::Cors) -> Result<Self, String> {
        let mut exact = HashSet::new();
        let mut wildcards = Vec::new();
        let mut any_origin = false;
        for origin in &cors.allow_origins {
            if origin == "*" {
                any_origin = true;
            } else if let Some((scheme, rest)) = origin.split_once("://*") {
                wildcards.push((format!("{scheme}://").into(), rest.into()));
            } else {
                exact.insert(origin.as_str().into());
            }
        }
        let methods = if cors.allow_methods.iter().any(|m| m == "*") {
            None
        } else if cors.allow_methods.is_empty() {
            Some(DEFAULT_METHODS.to_vec().into_boxed_slice())
        } else {
            Some(
                cors.allow_methods
                    .iter()
                    .map(|m| Method::from_bytes(m.as_bytes()).map_err(|e| e.to_string()))
                    .collect::<Result<_, _>>()?,
            )
        };
        let authorization_listed = cors.allow_headers.iter().any(|h| h == "authorization");
        let headers = (!cors.allow_headers.iter().any(|h| h == "*")).then(|| {
            cors.allow_headers
                .iter()
                .map(|h| h.as_str().into())
                .collect()
        });
        Ok(Self {
            policy: cors.policy.as_str().into(),
            any_origin,
            exact,
            wildcards: wildcards.into_boxed_slice(),
            allow_methods: methods
                .as_ref()
                .and_then(|m| joined(m.iter().map(ToString::to_string))),
            methods,
            headers,
            authorization_listed,
            credentials: cors.allow_credentials,
            expose: joined(cors.expose_headers.iter().cloned()),
            max_age: (cors.max_age_seconds > 0).then(|| HeaderValue::from(cors.max_age_seconds)),
        })
    }

    /// Whether `origin` (as the browser sent it) may read responses.
    pub fn allows_origin(&self, origin: &HeaderValue) -> bool {
        if self.any_origin {
            return true;
        }
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        // Browsers send lower-case origins: copy only when one is not.
        let origin = if origin.bytes().any(|b| b.is_ascii_uppercase()) {
            std::borrow::Cow::Owned(origin.to_ascii_lowercase())
        } else {
            std::borrow::Cow::Borrowed(origin)
        };
        self.exact.contains(&*origin)
            || self.wildcards.iter().any(|(scheme, suffix)| {
                origin
                    .strip_prefix(&**scheme)
                    .is_some_and(|host| host.len() > suffix.len() && host.ends_with(&**suffix))
            })
    }

    /// `Access-Control-Allow-Origin` for an allowed origin: `*` only when any origin is
    /// allowed and no credentials are, else the origin itself.
    fn allow_origin(&self, origin: &HeaderValue) -> HeaderValue {
        if self.any_origin && !self.credentials {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        }
    }

    /// The headers of the answer to a preflight from `origin` asking for `method` and
    /// `request_headers`, or why it is refused.
    pub fn preflight(
        &self,
        origin: &HeaderValue,
        method: &Method,
        request_headers: Option<&HeaderValue>,
    ) -> Result<HeaderMap, Refusal> {
        if !self.allows_origin(origin) {
            return Err(Refusal::Origin);
        }
        if let Some(methods) = &self.methods
            && !methods.contains(method)
        {
            return Err(Refusal::Method(method.to_string()));
        }
        if let Some(asked) = request_headers {
            for header in asked.to_str().unwrap_or_default().split(',') {
                let header = header.trim().to_ascii_lowercase();
                let allowed = match &self.headers {
                    Some(allowed) => allowed.contains(header.as_str()),
                    None => header != "authorization" || self.authorization_listed,
                };
                if !header.is_empty() && !allowed {
                    return Err(Refusal::Header(header));
                }
            }
        }
        let mut headers = HeaderMap::new();
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, self.allow_origin(origin));
        headers.insert(
            ACCESS_CONTROL_ALLOW_METHODS,
            self.allow_methods.clone().unwrap_or_else(|| {
                HeaderValue::from_str(method.as_str()).unwrap_or(HeaderValue::from_static("GET"))
            }),
        );
        if let Some(asked) = request_headers.filter(|h| !h.is_empty()) {
            // What was asked and passed the check (or any, with `*`).
            headers.insert(ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
        }
        if self.credentials {
            headers.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(max_age) = &self.max_age {
            headers.insert(ACCESS_CONTROL_MAX_AGE, max_age.clone());
        }
        headers.append(VARY, HeaderValue::from_static("Origin"));
        headers.append(
            VARY,
            HeaderValue::from_static(
                "Access-Control-Request-Method, Access-Control-Request-Headers",
            ),
        );
        Ok(headers)
    }

    /// Adds the CORS headers to an actual response for `origin` (none when it is not
    /// allowed); `Vary: Origin` either way, since the answer depends on it.
    pub fn decorate(&self, origin: Option<&HeaderValue>, headers: &mut HeaderMap) {
        // The policy decides alone: an upstream's own CORS headers would let origins the
        // policy refuses read the response.
        for name in [
            ACCESS_CONTROL_ALLOW_ORIGIN,
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
            ACCESS_CONTROL_EXPOSE_HEADERS,
            ACCESS_CONTROL_ALLOW_METHODS,
            ACCESS_CONTROL_ALLOW_HEADERS,
            ACCESS_CONTROL_MAX_AGE,
        ] {
            headers.remove(name);
        }
        headers.append(VARY, HeaderValue::from_static("Origin"));
        let Some(origin) = origin.filter(|o| self.allows_origin(o)) else {
            return;
        };
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, self.allow_origin(origin));
        if self.credentials {
            headers.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(expose) = &self.expose {
            headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(origins: &[&str], methods: &[&str], headers: &[&str], credentials: bool) -> Cors {
        Cors::new(&proto::Cors {
            policy: "shop/cors".into(),
            allow_origins: origins.iter().map(|s| s.to_string()).collect(),
            allow_methods: methods.iter().map(|s| s.to_string()).collect(),
            allow_headers: headers.iter().map(|s| s.to_string()).collect(),
            expose_headers: vec!["x-total".into()],
            allow_credentials: credentials,
            max_age_seconds: 600,
        })
        .unwrap()
    }

    #[test]
    fn origins_exact_and_wildcard() {
        let cors = policy(
            &["https://app.example.com", "https://*.shop.test"],
            &[],
            &[],
            false,
        );
        let allows = |o: &'static str| cors.allows_origin(&HeaderValue::from_static(o));
        assert!(allows("https://app.example.com"));
        assert!(allows("HTTPS://APP.EXAMPLE.COM"));
        assert!(allows("https://a.shop.test"));
        assert!(allows("https://a.b.shop.test"));
        for refused in [
            "http://app.example.com",
            "https://app.example.com:8443",
            "https://shop.test",
            "https://.shop.test",
            "https://evilshop.test",
            "https://a.shop.test.evil",
            "null",
        ] {
            assert!(!allows(refused), "{refused}");
        }
    }

    #[test]
    fn preflights_check_method_and_headers() {
        let cors = policy(
            &["https://app.test"],
            &["GET", "PUT"],
            &["content-type", "x-tenant-id"],
            true,
        );
        let origin = HeaderValue::from_static("https://app.test");
        let asked = HeaderValue::from_static("Content-Type, X-Tenant-Id");
        let answer = cors.preflight(&origin, &Method::PUT, Some(&asked)).unwrap();
        assert_eq!(answer[ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.test");
        assert_eq!(answer[ACCESS_CONTROL_ALLOW_METHODS], "GET, PUT");
        assert_eq!(answer[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(answer[ACCESS_CONTROL_MAX_AGE], "600");
        assert_eq!(
            cors.preflight(&origin, &Method::DELETE, None),
            Err(Refusal::Method("DELETE".into()))
        );
        let extra = HeaderValue::from_static("content-type, authorization");
        assert_eq!(
            cors.preflight(&origin, &Method::GET, Some(&extra)),
            Err(Refusal::Header("authorization".into()))
        );
        let stranger = HeaderValue::from_static("https://evil.test");
        assert_eq!(
            cors.preflight(&stranger, &Method::GET, None),
            Err(Refusal::Origin)
        );
    }

    #[test]
    fn a_header_wildcard_never_covers_authorization() {
        let origin = HeaderValue::from_static("https://app.test");
        let any = policy(&["https://app.test"], &[], &["*"], true);
        let asked = HeaderValue::from_static("x-custom, authorization");
        assert_eq!(
            any.preflight(&origin, &Method::GET, Some(&asked)),
            Err(Refusal::Header("authorization".into()))
        );
        let named = policy(&["https://app.test"], &[], &["*", "authorization"], true);
        assert!(named.preflight(&origin, &Method::GET, Some(&asked)).is_ok());
    }

    #[test]
    fn the_upstreams_own_cors_headers_never_pass() {
        let mut headers = HeaderMap::new();
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        headers.insert(
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        let cors = policy(&["https://a.test"], &[], &[], false);
        cors.decorate(
            Some(&HeaderValue::from_static("https://evil.test")),
            &mut headers,
        );
        assert!(headers.get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
        assert!(headers.get(ACCESS_CONTROL_ALLOW_CREDENTIALS).is_none());
        let mut allowed = HeaderMap::new();
        allowed.insert(
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        cors.decorate(
            Some(&HeaderValue::from_static("https://a.test")),
            &mut allowed,
        );
        assert_eq!(allowed[ACCESS_CONTROL_ALLOW_ORIGIN], "https://a.test");
        assert!(
            allowed.get(ACCESS_CONTROL_ALLOW_CREDENTIALS).is_none(),
            "the policy has none"
        );
    }

    #[test]
    fn any_origin_without_credentials_answers_a_star() {
        let cors = policy(&["*"], &[], &[], false);
        let mut headers = HeaderMap::new();
        cors.decorate(
            Some(&HeaderValue::from_static("https://x.test")),
            &mut headers,
        );
        assert_eq!(headers[ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert_eq!(headers[VARY], "Origin");
        assert_eq!(headers[ACCESS_CONTROL_EXPOSE_HEADERS], "x-total");
        let mut refused = HeaderMap::new();
        policy(&["https://a.test"], &[], &[], false).decorate(
            Some(&HeaderValue::from_static("https://b.test")),
            &mut refused,
        );
        assert!(refused.get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
        assert_eq!(refused[VARY], "Origin");
    }
}
