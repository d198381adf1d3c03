//! Header work of a proxy hop: hop-by-hop fields (RFC 9110 §7.6.1), forwarding facts
//! (`x-forwarded-*`), the request id, and the request's host.

use std::borrow::Cow;
use std::net::SocketAddr;

use http::header::{CONNECTION, HOST, TE, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Request};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Longest incoming request id that is kept as is.
const MAX_REQUEST_ID_LEN: usize = 128;

/// Removes the fields that describe one connection, not the message: those named in
/// `Connection`, and `Connection`, `Keep-Alive`, `Proxy-Connection`, `Transfer-Encoding`,
/// `Upgrade` and `TE` — except `TE: trailers` on requests, which gRPC needs end to end.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_te_trailers: bool) {
    if headers.contains_key(&CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(&CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
            .collect();
        for name in named {
            if !(keep_te_trailers && name == TE) {
                headers.remove(name);
            }
        }
        headers.remove(&CONNECTION);
    }
    for name in [&KEEP_ALIVE, &PROXY_CONNECTION, &TRANSFER_ENCODING, &UPGRADE] {
        if headers.contains_key(name) {
            headers.remove(name);
        }
    }
    if headers.contains_key(&TE) {
        // Of all TE fields, only a "trailers" token may pass (gRPC needs it end to end).
        let trailers = keep_te_trailers
            && headers
                .get_all(&TE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
        headers.remove(&TE);
        if trailers {
            headers.insert(&TE, HeaderValue::from_static("trailers"));
        }
    }
}

/// The incoming `x-request-id` when it is a sensible token, else a fresh UUID v4.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(id) = headers.get(&X_REQUEST_ID) {
        let bytes = id.as_bytes();
        let sensible = !bytes.is_empty()
            && bytes.len() <= MAX_REQUEST_ID_LEN
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
        if sensible {
            return id.clone();
        }
    }
    let uuid = uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes()).into_uuid();
    let mut buffer = uuid::Uuid::encode_buffer();
    let text = uuid.hyphenated().encode_lower(&mut buffer);
    HeaderValue::from_str(text).expect("a UUID is a valid header value")
}

/// The client end of a connection, with its address already rendered as a header value
/// (once per connection, not per request).
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    pub ip: HeaderValue,
    /// Whether the connection is TLS.
    pub tls: bool,
}

impl Peer {
    pub fn new(addr: SocketAddr, tls: bool) -> Self {
        let ip = HeaderValue::from_str(&addr.ip().to_string())
            .expect("an IP address is a valid header value");
        Self { addr, ip, tls }
    }

    /// `https` or `http`, for `x-forwarded-proto`.
    pub fn scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }
}

/// Appends the client to `x-forwarded-for` and states the protocol and original host.
pub fn add_forwarded(
    headers: &mut HeaderMap,
    client: &Peer,
    host: Option<&HeaderValue>,
    proto: &'static str,
) {
    let forwarded_for = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(earlier) if !earlier.is_empty() => {
            // Several x-forwarded-for fields are one list; join them before appending.
            let earlier: Vec<&str> = headers
                .get_all(&X_FORWARDED_FOR)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            let ip = client.ip.to_str().unwrap_or_default();
            HeaderValue::from_str(&format!("{}, {ip}", earlier.join(", "))).ok()
        }
        _ => Some(client.ip.clone()),
    };
    if let Some(value) = forwarded_for {
        headers.insert(&X_FORWARDED_FOR, value);
    }
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    match host {
        Some(host) => headers.insert(&X_FORWARDED_HOST, host.clone()),
        // Never pass on a client's own claim.
        None => headers.remove(&X_FORWARDED_HOST),
    };
}

/// The authority the client addressed: the URI's (HTTP/2, absolute-form) or `Host`.
pub fn authority<B>(request: &Request<B>) -> Option<&str> {
    match request.uri().authority() {
        Some(authority) => Some(authority.as_str()),
        None => request.headers().get(&HOST).and_then(|h| h.to_str().ok()),
    }
}

/// The host part of an authority, lower-case, without port or trailing dot.
pub fn host_of(authority: &str) -> Cow<'_, str> {
    let host = if authority.starts_with('[') {
        // IPv6 literal: keep the brackets, drop the port.
        authority
            .find(']')
            .map_or(authority, |end| &authority[..=end])
    } else {
        authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host)
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_fields_go_and_te_trailers_stays_on_requests() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, x-secret-hop, te"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("te", "trailers"),
            ("x-end-to-end", "kept"),
        ] {
            headers.append(name, HeaderValue::from_static(value));
        }
        let mut response = headers.clone();
        strip_hop_by_hop(&mut headers, true);
        let mut names: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["te", "x-end-to-end"]);

        strip_hop_by_hop(&mut response, false);
        let names: Vec<_> = response.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-end-to-end"]);
    }

    #[test]
    fn te_other_than_trailers_is_dropped() {
        let mut headers = HeaderMap::new();
        headers.insert(TE, HeaderValue::from_static("gzip"));
        strip_hop_by_hop(&mut headers, true);
        assert!(headers.is_empty());

        let mut headers = HeaderMap::new();
        headers.append(TE, HeaderValue::from_static("trailers"));
        headers.append(TE, HeaderValue::from_static("gzip, deflate"));
        strip_hop_by_hop(&mut headers, true);
        let te: Vec<_> = headers.get_all(TE).iter().collect();
        assert_eq!(te, ["trailers"]);
    }

    #[test]
    fn request_ids_are_kept_when_sensible_and_made_otherwise() {
        let mut headers = HeaderMap::new();
        headers.insert(&X_REQUEST_ID, HeaderValue::from_static("abc-123_x.y:z"));
        assert_eq!(request_id(&headers), "abc-123_x.y:z");
        headers.insert(&X_REQUEST_ID, HeaderValue::from_static("has spaces"));
        let fresh = request_id(&headers);
        assert_eq!(fresh.len(), 36);
        assert_ne!(fresh, request_id(&headers), "fresh ids differ");
        assert_eq!(request_id(&HeaderMap::new()).len(), 36);
    }

    #[test]
    fn forwarded_for_joins_earlier_hops() {
        let mut headers = HeaderMap::new();
        headers.append(&X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
        headers.append(&X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.2"));
        add_forwarded(
            &mut headers,
            &Peer::new("192.0.2.7:5555".parse().unwrap(), false),
            Some(&HeaderValue::from_static("api.example.com")),
            "http",
        );
        assert_eq!(headers[&X_FORWARDED_FOR], "10.0.0.1, 10.0.0.2, 192.0.2.7");
        assert_eq!(headers[&X_FORWARDED_PROTO], "http");
        assert_eq!(headers[&X_FORWARDED_HOST], "api.example.com");

        let mut headers = HeaderMap::new();
        headers.insert(
            &X_FORWARDED_HOST,
            HeaderValue::from_static("spoofed.example.com"),
        );
        add_forwarded(
            &mut headers,
            &Peer::new("[::1]:5555".parse().unwrap(), false),
            None,
            "http",
        );
        assert_eq!(headers[&X_FORWARDED_FOR], "::1");
        assert!(!headers.contains_key(&X_FORWARDED_HOST));
    }

    #[test]
    fn hosts_lose_port_case_and_trailing_dot() {
        assert_eq!(host_of("API.Example.com:8080"), "api.example.com");
        assert_eq!(host_of("example.com."), "example.com");
        assert_eq!(host_of("[::1]:8080"), "[::1]");
        assert_eq!(host_of("localhost"), "localhost");
    }
}
