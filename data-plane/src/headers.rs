//! Header work of a proxy hop: hop-by-hop fields (RFC 9110 §7.6.1), forwarding facts
//! (`x-forwarded-*`), the request id, and the request's host.

use std::borrow::Cow;
use std::net::SocketAddr;

use http::header::{CONNECTION, FORWARDED, HOST, TE, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Request};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The request's tenant: read from the client on rules with `tenancy`, stated upstream by
/// the gateway only after checking it.
pub static X_TENANT_ID: HeaderName = HeaderName::from_static("x-tenant-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
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

/// The client end of a connection, with its address and the listener's port already
/// rendered as header values (once per connection, not per request).
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    pub ip: HeaderValue,
    /// The port the client connected to, for `x-forwarded-port`.
    pub port: HeaderValue,
    /// Whether the connection is TLS.
    pub tls: bool,
}

impl Peer {
    pub fn new(addr: SocketAddr, local_port: u16, tls: bool) -> Self {
        let ip = HeaderValue::from_str(&addr.ip().to_string())
            .expect("an IP address is a valid header value");
        Self {
            addr,
            ip,
            port: HeaderValue::from(local_port),
            tls,
        }
    }

    /// `https` or `http`, for `x-forwarded-proto`.
    pub fn scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }
}

/// Forwarding facts only the gateway (or a trusted proxy before it) may state: a client's
/// own values are replaced, and names that differ only in `_` for `-` are removed with them.
static FORWARDING: [&str; 7] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-real-ip",
    "forwarded",
    "x-request-id",
];

/// Removes what a client must not state: the `identity` headers (the gateway fills them
/// in after authentication), and every field whose name equals a protected one once `_`
/// is read as `-` — CGI and WSGI servers turn both `X-Auth-Subject` and `X_Auth_Subject`
/// into `HTTP_X_AUTH_SUBJECT`, so the underscore form would pass for the real one.
pub fn strip_protected(headers: &mut HeaderMap, identity: &[HeaderName]) {
    for name in identity {
        if headers.contains_key(name) {
            headers.remove(name);
        }
    }
    let mut aliases = Vec::new();
    for name in headers.keys() {
        let text = name.as_str();
        if !text.contains('_') {
            continue;
        }
        let dashed = text.replace('_', "-");
        if FORWARDING.contains(&dashed.as_str()) || identity.iter().any(|n| *n == *dashed) {
            aliases.push(name.clone());
        }
    }
    for name in aliases {
        headers.remove(&name);
    }
}

/// States the forwarding facts. From a trusted proxy (`behind_proxy` is then the client
/// address its `x-forwarded-for` names, as the IP lists read it), what it says is kept and
/// the peer is appended to `x-forwarded-for`; from anyone else, the client's own
/// `x-forwarded-*`, `x-real-ip` and `forwarded` are replaced by what the gateway saw — so
/// the upstream and the gateway agree on who the client is.
pub fn add_forwarded(
    headers: &mut HeaderMap,
    client: &Peer,
    host: Option<&HeaderValue>,
    behind_proxy: Option<std::net::IpAddr>,
) {
    let trusted = behind_proxy.is_some();
    // Several x-forwarded-for fields are one list; joined before appending.
    let joined = trusted
        .then(|| {
            let earlier: Vec<&str> = headers
                .get_all(&X_FORWARDED_FOR)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .filter(|v| !v.is_empty())
                .collect();
            let ip = client.ip.to_str().unwrap_or_default();
            (!earlier.is_empty())
                .then(|| HeaderValue::from_str(&format!("{}, {ip}", earlier.join(", "))).ok())
                .flatten()
        })
        .flatten();
    headers.insert(
        &X_FORWARDED_FOR,
        joined.unwrap_or_else(|| client.ip.clone()),
    );
    let ours = |headers: &mut HeaderMap, name: &HeaderName, value: Option<HeaderValue>| {
        if trusted && headers.contains_key(name) {
            return;
        }
        match value {
            Some(value) => headers.insert(name, value),
            None => headers.remove(name),
        };
    };
    ours(
        headers,
        &X_FORWARDED_PROTO,
        Some(HeaderValue::from_static(client.scheme())),
    );
    ours(headers, &X_FORWARDED_HOST, host.cloned());
    ours(headers, &X_FORWARDED_PORT, Some(client.port.clone()));
    let real_ip = match behind_proxy {
        Some(ip) if ip != client.addr.ip() => HeaderValue::from_str(&ip.to_string()).ok(),
        _ => None,
    };
    ours(
        headers,
        &X_REAL_IP,
        Some(real_ip.unwrap_or_else(|| client.ip.clone())),
    );
    if !trusted {
        headers.remove(FORWARDED);
    }
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

    fn forwarding_fields(trusted: bool) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "spoofed.example.com"),
            ("x-forwarded-port", "443"),
            ("x-real-ip", "10.0.0.1"),
            ("forwarded", "for=10.0.0.1"),
        ] {
            headers.append(name, HeaderValue::from_static(value));
        }
        add_forwarded(
            &mut headers,
            &Peer::new("192.0.2.7:5555".parse().unwrap(), 8080, false),
            Some(&HeaderValue::from_static("api.example.com")),
            trusted.then(|| "10.0.0.1".parse().unwrap()),
        );
        headers
    }

    #[test]
    fn a_trusted_proxy_keeps_its_forwarding_facts_and_the_peer_is_appended() {
        let headers = forwarding_fields(true);
        assert_eq!(headers[&X_FORWARDED_FOR], "10.0.0.1, 10.0.0.2, 192.0.2.7");
        assert_eq!(headers[&X_FORWARDED_PROTO], "https");
        assert_eq!(headers[&X_FORWARDED_HOST], "spoofed.example.com");
        assert_eq!(headers[&X_FORWARDED_PORT], "443");
        assert_eq!(headers[&X_REAL_IP], "10.0.0.1");
        assert_eq!(headers[FORWARDED], "for=10.0.0.1");
    }

    #[test]
    fn an_untrusted_client_has_its_forwarding_facts_replaced() {
        let headers = forwarding_fields(false);
        assert_eq!(headers[&X_FORWARDED_FOR], "192.0.2.7");
        assert_eq!(headers.get_all(&X_FORWARDED_FOR).iter().count(), 1);
        assert_eq!(headers[&X_FORWARDED_PROTO], "http");
        assert_eq!(headers[&X_FORWARDED_HOST], "api.example.com");
        assert_eq!(headers[&X_FORWARDED_PORT], "8080");
        assert_eq!(headers[&X_REAL_IP], "192.0.2.7");
        assert!(!headers.contains_key(FORWARDED));

        let mut headers = HeaderMap::new();
        headers.insert(&X_FORWARDED_HOST, HeaderValue::from_static("spoofed"));
        add_forwarded(
            &mut headers,
            &Peer::new("[::1]:5555".parse().unwrap(), 80, false),
            None,
            None,
        );
        assert_eq!(headers[&X_FORWARDED_FOR], "::1");
        assert!(!headers.contains_key(&X_FORWARDED_HOST));
    }

    #[test]
    fn underscore_aliases_of_protected_names_are_stripped() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("x_auth_key_id", "admin"),
            ("X_Auth_Subject", "root"),
            ("x-auth-subject", "root"),
            ("x_tenant", "acme"),
            ("x_forwarded_for", "10.9.9.9"),
            ("x_real_ip", "10.9.9.9"),
            ("x_request_id", "forged"),
            ("x_custom_thing", "kept"),
            ("x-auth-token", "kept"),
        ] {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static(value),
            );
        }
        let identity = [
            HeaderName::from_static("x-auth-key-id"),
            HeaderName::from_static("x-auth-subject"),
            HeaderName::from_static("x-tenant"),
        ];
        strip_protected(&mut headers, &identity);
        let mut names: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["x-auth-token", "x_custom_thing"]);
    }

    #[test]
    fn hosts_lose_port_case_and_trailing_dot() {
        assert_eq!(host_of("API.Example.com:8080"), "api.example.com");
        assert_eq!(host_of("example.com."), "example.com");
        assert_eq!(host_of("[::1]:8080"), "[::1]");
        assert_eq!(host_of("localhost"), "localhost");
    }
}
