//! Who the client is at the IP level, and the per-rule IP allow/deny lists.
//!
//! `X-Forwarded-For` is believed only as far as it was written by trusted proxies: walking
//! it from the right (the hop nearest to us), trusted addresses are skipped and the first
//! untrusted one is the client. A client cannot spoof its way past the list by sending its
//! own `X-Forwarded-For`, because the entries it wrote are left of an untrusted hop.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

/// A set of networks.
#[derive(Debug, Clone, Default)]
pub struct Cidrs(Box<[IpNet]>);

impl Cidrs {
    pub fn parse(list: &[String]) -> Result<Self, String> {
        list.iter()
            .map(|cidr| {
                parse_net(cidr).ok_or_else(|| format!("`{cidr}` is not a CIDR or IP address"))
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }
}

fn parse_net(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`, what a dual-stack socket reports for an
/// IPv4 client) are matched as the IPv4 address they are.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The client's address: the peer, or what trusted proxies say in `X-Forwarded-For`.
/// `None` when a trusted proxy wrote something that is not an address: the client is then
/// unknown, and IP lists refuse it rather than judge the proxy in its place.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &Cidrs) -> Option<IpAddr> {
    let peer = canonical(peer);
    if trusted.is_empty() || !trusted.contains(peer) {
        return Some(peer);
    }
    let mut client = peer;
    // Several X-Forwarded-For fields form one list, in order. Split as bytes: one odd byte
    // must not hide the hops after it.
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .collect::<Vec<_>>();
    for hop in hops.iter().rev() {
        let ip = std::str::from_utf8(hop)
            .ok()
            .and_then(|hop| parse_hop(hop.trim()))?;
        client = canonical(ip);
        if !trusted.contains(client) {
            return Some(client);
        }
    }
    Some(client)
}

/// An entry as proxies write it: an address, possibly with a port (`1.2.3.4:80`, `[::1]:80`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse() {
        return Some(ip);
    }
    if let Some(rest) = hop.strip_prefix('[') {
        return rest.split_once(']').and_then(|(ip, _)| ip.parse().ok());
    }
    hop.rsplit_once(':')
        .and_then(|(ip, _)| ip.parse::<std::net::Ipv4Addr>().ok())
        .map(IpAddr::V4)
}

/// A rule's IP lists: deny wins; a non-empty allow list admits only its networks.
#[derive(Debug, Clone, Default)]
pub struct IpRules {
    allow: Cidrs,
    deny: Cidrs,
}

impl IpRules {
    pub fn new(allow: &[String], deny: &[String]) -> Result<Self, String> {
        Ok(Self {
            allow: Cidrs::parse(allow)?,
            deny: Cidrs::parse(deny)?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// `Err` says what decided.
    pub fn check(&self, ip: Option<IpAddr>) -> Result<(), String> {
        let Some(ip) = ip else {
            return Err(
                "the client address cannot be determined (unreadable X-Forwarded-For)".into(),
            );
        };
        if self.deny.contains(ip) {
            return Err(format!(
                "the client address {ip} is on the route's deny list"
            ));
        }
        if !self.allow.is_empty() && !self.allow.contains(ip) {
            return Err(format!(
                "the client address {ip} is not on the route's allow list"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn xff(values: &[&[u8]]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("x-forwarded-for", http::HeaderValue::from_bytes(v).unwrap());
        }
        headers
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = Cidrs::parse(&list(&["10.0.0.0/8", "fd00::/8"])).unwrap();
        let client = |peer: &str, values: &[&[u8]]| client_ip(ip(peer), &xff(values), &trusted);
        // Untrusted peer: its header is ignored.
        assert_eq!(
            client("203.0.113.5", &[b"1.1.1.1"]),
            Some(ip("203.0.113.5"))
        );
        // Trusted peer: the rightmost untrusted hop is the client, entries left of it are not believed.
        assert_eq!(
            client("10.0.0.2", &[b"6.6.6.6, 198.51.100.7, 10.0.0.9"]),
            Some(ip("198.51.100.7"))
        );
        assert_eq!(
            client("10.0.0.2", &[b"6.6.6.6", b"198.51.100.7"]),
            Some(ip("198.51.100.7")),
            "several fields are one list"
        );
        // A byte outside ASCII left of the real client does not hide it.
        assert_eq!(
            client("10.0.0.2", &[b"\xff, 198.51.100.7"]),
            Some(ip("198.51.100.7"))
        );
        // IPv6, ports and mapped addresses.
        assert_eq!(
            client("fd00::1", &[b"[2001:db8::7]:4711"]),
            Some(ip("2001:db8::7"))
        );
        assert_eq!(
            client("::ffff:10.1.2.3", &[b"192.0.2.1:80"]),
            Some(ip("192.0.2.1"))
        );
        // Garbage written by a trusted hop: the client is unknown, not the proxy.
        assert_eq!(client("10.0.0.2", &[b"unknown"]), None);
        assert_eq!(client("10.0.0.2", &[b"198.51.100.7, \xff"]), None);
        // No header, or every hop trusted: the leftmost trusted address.
        assert_eq!(client("10.0.0.2", &[]), Some(ip("10.0.0.2")));
        assert_eq!(client("10.0.0.2", &[b"10.9.9.9"]), Some(ip("10.9.9.9")));
        // Nothing trusted: the peer, always.
        assert_eq!(
            client_ip(ip("10.0.0.2"), &xff(&[b"1.1.1.1"]), &Cidrs::default()),
            Some(ip("10.0.0.2"))
        );
    }

    #[test]
    fn deny_wins_and_allow_lists_are_exclusive() {
        let rules = IpRules::new(
            &list(&["10.0.0.0/8", "2001:db8::/32"]),
            &list(&["10.6.6.0/24", "10.7.7.7"]),
        )
        .unwrap();
        let check = |s: &str| rules.check(Some(ip(s)));
        assert!(check("10.1.1.1").is_ok());
        assert!(check("::ffff:10.1.1.1").is_ok(), "IPv4-mapped");
        assert!(check("2001:db8:1::1").is_ok());
        assert!(
            check("10.6.6.9")
                .unwrap_err()
                .contains("10.6.6.9 is on the route's deny list")
        );
        assert!(check("10.7.7.7").unwrap_err().contains("deny list"));
        assert!(
            check("192.0.2.1")
                .unwrap_err()
                .contains("not on the route's allow list")
        );
        assert!(
            check("2001:db9::1")
                .unwrap_err()
                .contains("not on the route's allow list")
        );
        assert!(rules.check(None).is_err(), "an unknown client is refused");
        assert!(IpRules::new(&list(&["10.0.0.0/33"]), &[]).is_err());
        let deny_only = IpRules::new(&[], &list(&["::1"])).unwrap();
        assert!(deny_only.check(Some(ip("127.0.0.1"))).is_ok());
        assert!(deny_only.check(Some(ip("::1"))).is_err());
        assert!(deny_only.check(None).is_err());
    }
}
