//! The client's address behind reverse proxies: `X-Forwarded-For` is believed only when the
//! peer is a configured proxy (`auth.trusted_proxies`), and then the client is the rightmost
//! entry that is not itself a trusted proxy. Entries to the left of it were written by the
//! client (or by proxies we do not know) and can say anything, so they are never used: the
//! login and sign-up throttles count per address, and a forged address would give every
//! request a fresh count.

use std::net::IpAddr;

/// One address or CIDR range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    fn parse(text: &str) -> Result<Cidr, String> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let network: IpAddr = addr
            .parse::<IpAddr>()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR range"))?
            .to_canonical();
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(Cidr { network, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// The reverse proxies whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    /// Parses addresses and CIDR ranges (`10.0.0.5`, `10.0.0.0/8`, `fd00::/8`).
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<TrustedProxies, String> {
        entries
            .iter()
            .map(|e| Cidr::parse(e.as_ref()))
            .collect::<Result<Vec<_>, _>>()
            .map(TrustedProxies)
    }

    /// Whether no proxy is trusted (the header is then always ignored).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `ip` is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    /// The client's address given the TCP peer and the `X-Forwarded-For` header values (in
    /// the order received). The peer itself unless it is a trusted proxy; otherwise, walking
    /// the header from the right, the first address that is not a trusted proxy. An entry
    /// that does not parse stops the walk at the last trusted hop (what lies beyond it is
    /// unknown); a header made only of trusted proxies gives its leftmost entry.
    pub fn client_address<'a>(
        &self,
        peer: IpAddr,
        forwarded_for: impl IntoIterator<Item = &'a str>,
    ) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.contains(peer) {
            return peer;
        }
        let entries: Vec<&str> = forwarded_for
            .into_iter()
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .collect();
        let mut client = peer;
        for entry in entries.iter().rev() {
            let Some(ip) = parse_entry(entry) else {
                return client;
            };
            client = ip;
            if !self.contains(ip) {
                return ip;
            }
        }
        client
    }
}

/// One `X-Forwarded-For` entry: an address, possibly `[v6]:port` or `v4:port`.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(sock) = entry.parse::<std::net::SocketAddr>() {
        return Some(sock.ip().to_canonical());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn proxies(list: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(list).unwrap()
    }

    #[test]
    fn ranges_parse_and_match_and_malformed_ones_are_refused() {
        let p = proxies(&["10.0.0.0/8", "192.168.1.7", "fd00::/8", "0.0.0.0/0"]);
        assert!(p.contains(ip("10.200.3.4")));
        assert!(p.contains(ip("192.168.1.7")));
        assert!(p.contains(ip("fd12::1")));
        assert!(
            p.contains(ip("::ffff:10.1.1.1")),
            "v4-mapped v6 is the v4 address"
        );
        let narrow = proxies(&["10.0.0.0/8", "192.168.1.7"]);
        assert!(!narrow.contains(ip("11.0.0.1")));
        assert!(!narrow.contains(ip("192.168.1.8")));
        for bad in [
            "10.0.0.0/33",
            "fd00::/129",
            "proxy.example",
            "10.0.0.0/x",
            "",
        ] {
            assert!(TrustedProxies::parse(&[bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn without_a_trusted_peer_the_header_is_ignored() {
        let none = TrustedProxies::default();
        assert_eq!(
            none.client_address(ip("203.0.113.9"), ["1.2.3.4"]),
            ip("203.0.113.9")
        );
        let p = proxies(&["10.0.0.1"]);
        // The peer is not the proxy: a client talking to us directly cannot pick its address.
        assert_eq!(
            p.client_address(ip("203.0.113.9"), ["1.2.3.4, 10.0.0.1"]),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn spoofed_leftmost_entries_are_ignored() {
        let p = proxies(&["10.0.0.0/8"]);
        // The client sent "X-Forwarded-For: 6.6.6.6, 7.7.7.7"; our proxy appended the real
        // peer it saw (198.51.100.4).
        assert_eq!(
            p.client_address(ip("10.0.0.1"), ["6.6.6.6, 7.7.7.7, 198.51.100.4"]),
            ip("198.51.100.4")
        );
        // Two proxies of ours in a row: skip both.
        assert_eq!(
            p.client_address(ip("10.0.0.1"), ["6.6.6.6, 198.51.100.4, 10.3.3.3"]),
            ip("198.51.100.4")
        );
        // Several header lines are one list, in order.
        assert_eq!(
            p.client_address(ip("10.0.0.1"), ["6.6.6.6", "198.51.100.4"]),
            ip("198.51.100.4")
        );
        // Ports and IPv6.
        assert_eq!(
            p.client_address(ip("10.0.0.1"), ["[2001:db8::7]:443"]),
            ip("2001:db8::7")
        );
        assert_eq!(
            p.client_address(ip("10.0.0.1"), ["198.51.100.4:5555"]),
            ip("198.51.100.4")
        );
    }

    #[test]
    fn garbage_and_missing_headers_fall_back_to_the_last_trusted_hop() {
        let p = proxies(&["10.0.0.0/8"]);
        assert_eq!(p.client_address(ip("10.0.0.1"), []), ip("10.0.0.1"));
        assert_eq!(
            p.client_address(ip("10.0.0.1"), ["1.2.3.4, not-an-ip"]),
            ip("10.0.0.1")
        );
        assert_eq!(
            p.client_address(ip("10.0.0.1"), ["1.2.3.4, garbage, 10.9.9.9"]),
            ip("10.9.9.9")
        );
        // Only proxies: the leftmost is the best we know.
        assert_eq!(
            p.client_address(ip("10.0.0.1"), ["10.5.5.5, 10.9.9.9"]),
            ip("10.5.5.5")
        );
    }
}
