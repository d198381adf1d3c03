//! The first phase of a request: can the gateway serve at all, and can it read the request
//! one way only? Size limits, the host it addresses and its path are checked and normalised
//! here, before routing, so the rule that decides and the upstream that serves see the same
//! request.

use std::borrow::Cow;

use http::header::HOST;
use http::{HeaderValue, Request, Version};
use http_body::Body;

use crate::deny::Deny;
use crate::headers;
use crate::path::{self, EscapedSlashes, NormalPath};
use crate::runtime::Runtime;

use super::Limits;

/// What routing needs from a request that passed admission.
pub struct Admitted<'r> {
    /// The authority the client addressed — the request target's (HTTP/2 `:authority`,
    /// absolute-form) or else `Host` — forwarded as `Host` and `x-forwarded-host`.
    pub authority: Option<HeaderValue>,
    /// Its host, lower-case, without port or trailing dot: what routes are matched on.
    pub host: Option<Cow<'r, str>>,
    pub path: NormalPath<'r>,
}

/// What forwarding keeps of an admitted request, owned, so the request itself can move on.
/// Moved into the upstream request (a clone per attempt only when retrying).
#[derive(Clone)]
pub struct Rewrite {
    /// See [`Admitted::authority`].
    pub authority: Option<HeaderValue>,
    /// The path the backend is asked for when it differs from the request's (normalised,
    /// or rewritten by the rule).
    pub path: Option<String>,
    /// The `Host` the backend gets when the rule rewrites it.
    pub host: Option<HeaderValue>,
}

impl Admitted<'_> {
    pub fn into_rewrite(self) -> Rewrite {
        Rewrite {
            authority: self.authority,
            path: self.path.into_rewritten(),
            host: None,
        }
    }
}

/// 503 `not_ready` until the first snapshot arrives: nothing is known about routes.
pub fn ready(runtime: &Runtime) -> Result<(), Deny> {
    if runtime.is_ready() {
        Ok(())
    } else {
        Err(Deny::NotReady)
    }
}

/// Checks sizes, host and path; `Err` is a 400 (or 413/431) naming what is wrong.
pub fn admit<'r, B: Body>(
    request: &'r Request<B>,
    limits: &Limits,
    slashes: EscapedSlashes,
) -> Result<Admitted<'r>, Deny> {
    check_limits(request, limits)?;
    let mut hosts = request.headers().get_all(HOST).iter();
    let host_header = hosts.next();
    if hosts.next().is_some() {
        return Err(Deny::BadRequest(
            "the request has more than one Host header",
        ));
    }
    // RFC 9112 §3.2: an HTTP/1.1 request without Host is answered 400, even in absolute-form.
    if host_header.is_none() && request.version() == Version::HTTP_11 {
        return Err(Deny::BadRequest("an HTTP/1.1 request needs a Host header"));
    }
    let (authority, text) = match request.uri().authority() {
        Some(authority) => (
            HeaderValue::from_str(authority.as_str()).ok(),
            Some(authority.as_str()),
        ),
        None => (
            host_header.cloned(),
            host_header
                .map(|h| h.to_str().map_err(|_| bad_host()))
                .transpose()?,
        ),
    };
    let host = match text.filter(|t| !t.is_empty()) {
        None => None,
        Some(text) => {
            // RFC 9110 §4.2.4: userinfo has no place in an HTTP authority, and routing and
            // the upstream could read such a host differently.
            if text.contains('@') {
                return Err(Deny::BadRequest("the request's host carries credentials"));
            }
            if !valid_authority(text) {
                return Err(bad_host());
            }
            Some(headers::host_of(text))
        }
    };
    let path = path::normalize(request.uri().path(), slashes)
        .map_err(|error| Deny::BadRequest(error.message()))?;
    Ok(Admitted {
        authority: authority.filter(|a| !a.is_empty()),
        host,
        path,
    })
}

fn bad_host() -> Deny {
    Deny::BadRequest("the request's host is not a valid host name or address with an optional port")
}

fn check_limits<B: Body>(request: &Request<B>, limits: &Limits) -> Result<(), Deny> {
    let fields = request.headers();
    if fields.len() > limits.max_header_count {
        return Err(Deny::TooManyHeaders {
            limit: limits.max_header_count,
        });
    }
    let header_bytes: usize = fields
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if header_bytes > limits.max_header_bytes {
        return Err(Deny::HeadersTooLarge {
            limit: limits.max_header_bytes,
        });
    }
    // The lower bound is the Content-Length when there is one.
    if request.body().size_hint().lower() > limits.max_body_bytes {
        return Err(Deny::PayloadTooLarge {
            limit: limits.max_body_bytes,
        });
    }
    Ok(())
}

/// `host[:port]` where host is a DNS name (labels of letters, digits, `-` and `_`, at most
/// 63 characters each, an optional final dot), an IPv4 address or a bracketed IPv6 address.
/// Stricter than RFC 3986's reg-name on purpose: `a..b`, `a,b`, `a/b` or spaces would be
/// read differently by the next server, and no real host needs them.
pub fn valid_authority(authority: &str) -> bool {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let Some((address, after)) = rest.split_once(']') else {
            return false;
        };
        if address.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            _ => match after.strip_prefix(':') {
                Some(port) => ("", Some(port)),
                None => return false,
            },
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if let Some(port) = port
        && (port.is_empty() || port.len() > 5 || port.parse::<u16>().is_err())
    {
        return false;
    }
    if authority.starts_with('[') {
        return true;
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::valid_authority;

    #[test]
    fn host_names_addresses_and_ports_are_valid() {
        for good in [
            "example.com",
            "Example.COM:8080",
            "example.com.",
            "localhost",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:8443",
            "_svc.internal",
            "a-b.c",
        ] {
            assert!(valid_authority(good), "{good}");
        }
    }

    #[test]
    fn malformed_hosts_are_not() {
        for bad in [
            "a..",
            "a..b",
            ".a",
            "a/x",
            "a, b",
            "a,b",
            "a b",
            "a:",
            "a:99999",
            "a:8o",
            "[::1",
            "[nope]",
            "[::1]x",
            "a:1:2",
            "",
            ".",
            "ex%61mple.com",
            &"a".repeat(64),
        ] {
            assert!(!valid_authority(bad), "{bad}");
        }
    }
}
