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
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &Cidrs) -> IpAddr {
    let peer = canonical(peer);
    if trusted.is_empty() || !trusted.contains(peer) {
        return peer;
    }
    let mut client = peer;
    // Several X-Forwarded-For fields form one list, in order.
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect::<Vec<_>>();
    for hop in hops.iter().rev() {
        let Some(ip) = parse_hop(hop.trim()) else {
            // Garbage where an address should be: stop believing the list here.
            return client;
        };
        client = canonical(ip);
        if !trusted.contains(client) {
            return client;
        }
    }
    client
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

    /// `Err` names the list that decided.
    pub fn check(&self, ip: IpAddr) -> Result<(), &'static str> {
        if self.deny.contains(ip) {
            return Err("is on the route's deny list");
        }
        if !self.allow.is_empty() && !self.allow.contains(ip) {
            return Err("is not on the route's allow list");
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

    fn xff(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("x-forwarded-for", v.parse().unwrap());
        }
        headers
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = Cidrs::parse(&list(&["10.0.0.0/8", "fd00::/8"])).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // Untrusted peer: its header is ignored.
        assert_eq!(
            client_ip(ip("203.0.113.5"), &xff(&["1.1.1.1"]), &trusted),
            ip("203.0.113.5")
        );
        // Trusted peer: the rightmost untrusted hop is the client, spoofed entries left of it are not.
        assert_eq!(
            client_ip(
                ip("10.0.0.2"),
                &xff(&["6.6.6.6, 198.51.100.7, 10.0.0.9"]),
                &trusted
            ),
            ip("198.51.100.7")
        );
        assert_eq!(
            client_ip(ip("10.0.0.2"), &xff(&["6.6.6.6", "198.51.100.7"]), &trusted),
            ip("198.51.100.7"),
            "several fields are one list"
        );
        // IPv6, ports and mapped addresses.
        assert_eq!(
            client_ip(ip("fd00::1"), &xff(&["[2001:db8::7]:4711"]), &trusted),
            ip("2001:db8::7")
        );
        assert_eq!(
            client_ip(ip("::ffff:10.1.2.3"), &xff(&["192.0.2.1:80"]), &trusted),
            ip("192.0.2.1")
        );
        // Garbage stops the walk at the last good hop; no header leaves the peer.
        assert_eq!(
            client_ip(ip("10.0.0.2"), &xff(&["unknown"]), &trusted),
            ip("10.0.0.2")
        );
        assert_eq!(
            client_ip(ip("10.0.0.2"), &HeaderMap::new(), &trusted),
            ip("10.0.0.2")
        );
        // Nothing trusted: the peer, always.
        assert_eq!(
            client_ip(ip("10.0.0.2"), &xff(&["1.1.1.1"]), &Cidrs::default()),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn deny_wins_and_allow_lists_are_exclusive() {
        let rules = IpRules::new(
            &list(&["10.0.0.0/8", "2001:db8::/32"]),
            &list(&["10.6.6.0/24", "10.7.7.7"]),
        )
        .unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(rules.check(ip("10.1.1.1")).is_ok());
        assert!(rules.check(ip("::ffff:10.1.1.1")).is_ok(), "IPv4-mapped");
        assert!(rules.check(ip("2001:db8:1::1")).is_ok());
        assert_eq!(
            rules.check(ip("10.6.6.9")),
            Err("is on the route's deny list")
        );
        assert_eq!(
            rules.check(ip("10.7.7.7")),
            Err("is on the route's deny list")
        );
        assert_eq!(
            rules.check(ip("192.0.2.1")),
            Err("is not on the route's allow list")
        );
        assert_eq!(
            rules.check(ip("2001:db9::1")),
            Err("is not on the route's allow list")
        );
        assert!(IpRules::new(&list(&["10.0.0.0/33"]), &[]).is_err());
        let deny_only = IpRules::new(&[], &list(&["::1"])).unwrap();
        assert!(deny_only.check(ip("127.0.0.1")).is_ok());
        assert!(deny_only.check(ip("::1")).is_err());
    }
}
