//! Client address ranges as users write them in `ipAllow` / `ipDeny`: `10.0.0.0/8`,
//! `2001:db8::/32`, or a bare address meaning just that address (`/32`, `/128`).

use std::net::IpAddr;

use ipnet::IpNet;

/// Parses one range. Host bits may be set (`10.1.2.3/8`); [`normalize`] clears them.
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let parsed = if text.contains('/') {
        text.parse::<IpNet>().ok()
    } else {
        text.parse::<IpAddr>().ok().map(IpNet::from)
    };
    parsed.ok_or_else(|| {
        format!(
            "`{text}` is not an address range; write e.g. 10.0.0.0/8, 2001:db8::/32 or 192.0.2.7"
        )
    })
}

/// The canonical form of a valid range, as the snapshot carries it: host bits zeroed,
/// `addr/len`. `None` for text that [`parse_cidr`] refuses.
pub fn normalize(text: &str) -> Option<String> {
    parse_cidr(text).ok().map(|net| net.trunc().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_bare_addresses() {
        for (text, canonical) in [
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("10.1.2.3/8", "10.0.0.0/8"),
            ("192.0.2.7", "192.0.2.7/32"),
            ("2001:db8::/32", "2001:db8::/32"),
            ("2001:DB8:1::5/32", "2001:db8::/32"),
            ("::1", "::1/128"),
            ("0.0.0.0/0", "0.0.0.0/0"),
        ] {
            assert_eq!(normalize(text).as_deref(), Some(canonical), "{text}");
        }
    }

    #[test]
    fn garbage_is_refused() {
        for bad in [
            "",
            "10.0.0.0/33",
            "2001:db8::/129",
            "10.0.0",
            "010.0.0.1",
            "10.0.0.0/",
            "/8",
            "example.com",
            "10.0.0.0/8 ",
            "10.0.0.0-10.0.0.255",
        ] {
            assert!(parse_cidr(bad).is_err(), "{bad:?}");
        }
    }
}
