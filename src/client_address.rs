//! Who the client is: the TCP peer, or, only when the peer is a trusted proxy, the address that
//! proxy says it received the request from.
//!
//! A forwarding header is a list of hops, each appended by the proxy that received the request
//! from the one before. Only entries appended by trusted proxies can be believed, so the list is
//! read from the right: past the peer and every trusted hop, the first untrusted address is the
//! client. An entry that is not an address (`unknown`, an obfuscated RFC 7239 identifier,
//! garbage) ends the walk at the last trusted hop: nothing left of it can be believed. A client
//! that is not behind a trusted proxy can write anything in these headers, and none of it is
//! read.

use http::HeaderMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Where a trusted proxy writes the addresses it forwards for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardedFrom {
    /// `X-Forwarded-For: client, proxy1, proxy2`.
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for="[2001:db8::1]:4711"`.
    Forwarded,
}

/// `client_address` in the config, checked.
#[derive(Debug, Clone, Default)]
pub struct ClientAddressConfig {
    pub trusted_proxies: CidrSet,
    pub from: ForwardedFrom,
}

/// The addresses a request came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddress {
    /// The TCP peer, normalised.
    pub peer: IpAddr,
    /// The client: the peer, or the first untrusted hop behind trusted proxies.
    pub client: IpAddr,
    /// Whether the peer is a trusted proxy, whose forwarding headers are passed on.
    pub peer_trusted: bool,
}

impl ClientAddressConfig {
    /// Resolves a request's client address from its peer and headers.
    pub fn resolve(&self, peer: IpAddr, headers: &HeaderMap) -> ClientAddress {
        let peer = normalise(peer);
        let peer_trusted = self.trusted_proxies.contains(peer);
        let mut client = peer;
        if peer_trusted {
            let mut hops = Hops::new(headers, self.from);
            while let Some(hop) = hops.next_from_right() {
                let Some(addr) = hop else {
                    break; // not an address: nothing left of it can be believed
                };
                client = addr;
                if !self.trusted_proxies.contains(addr) {
                    break;
                }
            }
        }
        ClientAddress {
            peer,
            client,
            peer_trusted,
        }
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:192.0.2.1`, what a dual-stack socket reports for an
/// IPv4 peer) is the IPv4 address it maps.
pub fn normalise(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// A forwarding header's entries, across all its lines in order, read from the right.
struct Hops<'a> {
    entries: Vec<&'a str>,
    from: ForwardedFrom,
}

impl<'a> Hops<'a> {
    fn new(headers: &'a HeaderMap, from: ForwardedFrom) -> Hops<'a> {
        let name = match from {
            ForwardedFrom::XForwardedFor => "x-forwarded-for",
            ForwardedFrom::Forwarded => "forwarded",
        };
        let entries = headers
            .get_all(name)
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("\u{0}").split(','))
            .collect();
        Hops { entries, from }
    }

    /// The next entry from the right: `Some(None)` for one that is not an address.
    fn next_from_right(&mut self) -> Option<Option<IpAddr>> {
        let entry = self.entries.pop()?.trim();
        Some(match self.from {
            ForwardedFrom::XForwardedFor => parse_node(entry),
            ForwardedFrom::Forwarded => forwarded_for(entry).and_then(parse_node),
        })
    }
}

/// The `for=` parameter of one RFC 7239 element (`for=192.0.2.1;proto=https`).
fn forwarded_for(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("for")
            .then(|| value.trim().trim_matches('"'))
    })
}

/// An address, with or without a port: `192.0.2.1`, `192.0.2.1:80`, `2001:db8::1`,
/// `[2001:db8::1]`, `[2001:db8::1]:4711`. Anything else (`unknown`, `_hidden`) is `None`.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Some(rest) = node.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        return v6
            .parse::<Ipv6Addr>()
            .ok()
            .map(|a| normalise(IpAddr::V6(a)));
    }
    if let Ok(addr) = node.parse::<IpAddr>() {
        return Some(normalise(addr));
    }
    let (v4, port) = node.rsplit_once(':')?;
    is_port(port)
        .then(|| v4.parse::<Ipv4Addr>().ok())
        .flatten()
        .map(IpAddr::V4)
}

fn is_port(s: &str) -> bool {
    s.parse::<u16>().is_ok()
}

/// A set of addresses and CIDR blocks, IPv4 and IPv6, kept as sorted, merged ranges: a lookup
/// is a binary search, however long the list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrSet {
    /// IPv4 ranges as `u32`s: 8 bytes a range, so that 50 blocks are 400 bytes, 7 cache lines.
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

/// Why a CIDR block was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{0:?} is not an IP address or CIDR block such as 10.0.0.0/8 or 2001:db8::/32")]
    NotAnAddress(String),
    #[error("{block:?} has a prefix length outside 0..={max}")]
    Prefix { block: String, max: u8 },
}

impl CidrSet {
    /// Parses `10.0.0.0/8`, `192.0.2.7` (one address), `2001:db8::/32`, `::ffff:10.0.0.0/104`
    /// (the IPv4 block it maps). Bits past the prefix are ignored, as routers do.
    pub fn parse<S: AsRef<str>>(blocks: &[S]) -> Result<CidrSet, CidrError> {
        let mut set = CidrSet::default();
        for block in blocks {
            let block = block.as_ref().trim();
            let (addr, len) = block.split_once('/').unwrap_or((block, ""));
            let addr: IpAddr = addr
                .parse()
                .map_err(|_| CidrError::NotAnAddress(block.into()))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let len = if len.is_empty() {
                max
            } else {
                len.parse::<u8>()
                    .ok()
                    .filter(|l| *l <= max)
                    .ok_or_else(|| CidrError::Prefix {
                        block: block.into(),
                        max,
                    })?
            };
            match addr {
                IpAddr::V4(a) => set.v4.push(range_v4(a, len)),
                IpAddr::V6(a) => match a.to_ipv4_mapped() {
                    Some(v4) if len >= 96 => set.v4.push(range_v4(v4, len - 96)),
                    _ => set.v6.push(range_v6(a, len)),
                },
            }
        }
        merge(&mut set.v4);
        merge(&mut set.v6);
        set.v4.shrink_to_fit();
        set.v6.shrink_to_fit();
        Ok(set)
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        match normalise(addr) {
            IpAddr::V4(a) => in_ranges(&self.v4, u32::from(a)),
            IpAddr::V6(a) => in_ranges(&self.v6, u128::from(a)),
        }
    }
}

fn range_v4(a: Ipv4Addr, len: u8) -> (u32, u32) {
    let host = u32::MAX.checked_shr(u32::from(len)).unwrap_or(0);
    let start = u32::from(a) & !host;
    (start, start | host)
}

fn range_v6(a: Ipv6Addr, len: u8) -> (u128, u128) {
    let host = u128::MAX.checked_shr(u32::from(len)).unwrap_or(0);
    let start = u128::from(a) & !host;
    (start, start | host)
}

/// Sorts ranges and merges the overlapping and adjacent ones, so that they are disjoint.
fn merge<T: Ord + Copy + Successor>(ranges: &mut Vec<(T, T)>) {
    ranges.sort_unstable();
    let mut merged: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for &(start, end) in ranges.iter() {
        match merged.last_mut() {
            Some(last) if last.1.successor().is_none_or(|next| start <= next) => {
                last.1 = last.1.max(end)
            }
            _ => merged.push((start, end)),
        }
    }
    *ranges = merged;
}

/// Addresses as integers, with a checked "plus one" for merging adjacent ranges.
trait Successor: Sized {
    fn successor(self) -> Option<Self>;
}

impl Successor for u32 {
    fn successor(self) -> Option<u32> {
        self.checked_add(1)
    }
}

impl Successor for u128 {
    fn successor(self) -> Option<u128> {
        self.checked_add(1)
    }
}

fn in_ranges<T: Ord + Copy>(ranges: &[(T, T)], x: T) -> bool {
    // The first range starting after x; the one before it is the only one that can hold x.
    let i = ranges.partition_point(|&(start, _)| start <= x);
    i > 0 && x <= ranges[i - 1].1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn headers(name: &str, values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn config(trusted: &[&str], from: ForwardedFrom) -> ClientAddressConfig {
        ClientAddressConfig {
            trusted_proxies: CidrSet::parse(trusted).unwrap(),
            from,
        }
    }

    #[test]
    fn cidr_sets_hold_blocks_and_single_addresses_of_both_families() {
        let set = CidrSet::parse(&[
            "10.0.0.0/8",
            "192.0.2.7",
            "2001:db8::/32",
            "::ffff:198.51.100.0/120",
            "172.16.5.9/12",
        ])
        .unwrap();
        for yes in [
            "10.0.0.0",
            "10.255.255.255",
            "192.0.2.7",
            "2001:db8:ffff::1",
            "198.51.100.200",
            "::ffff:10.1.2.3",
            "172.31.255.255",
        ] {
            assert!(set.contains(ip(yes)), "{yes}");
        }
        for no in [
            "11.0.0.0",
            "9.255.255.255",
            "192.0.2.8",
            "2001:db9::1",
            "198.51.101.0",
            "::1",
            "172.32.0.0",
        ] {
            assert!(!set.contains(ip(no)), "{no}");
        }
        let all = CidrSet::parse(&["0.0.0.0/0", "::/0"]).unwrap();
        assert!(all.contains(ip("255.255.255.255")) && all.contains(ip("ffff::1")));
        assert!(!CidrSet::default().contains(ip("127.0.0.1")));
    }

    #[test]
    fn overlapping_and_adjacent_blocks_merge() {
        let set =
            CidrSet::parse(&["10.0.0.0/9", "10.128.0.0/9", "10.1.0.0/16", "10.0.0.1"]).unwrap();
        assert_eq!(set.v4, [(0x0a00_0000, 0x0aff_ffff)]);
        let many: Vec<String> = (0..=255).rev().map(|i| format!("10.0.{i}.0/24")).collect();
        let set = CidrSet::parse(&many).unwrap();
        assert_eq!(set.v4.len(), 1);
        assert!(set.contains(ip("10.0.77.1")) && !set.contains(ip("10.1.0.0")));
    }

    #[test]
    fn bad_blocks_are_named() {
        assert_eq!(
            CidrSet::parse(&["10.0.0.0/33"]),
            Err(CidrError::Prefix {
                block: "10.0.0.0/33".into(),
                max: 32
            })
        );
        assert!(matches!(
            CidrSet::parse(&["not-an-ip"]),
            Err(CidrError::NotAnAddress(_))
        ));
        assert!(matches!(
            CidrSet::parse(&["::/129"]),
            Err(CidrError::Prefix { max: 128, .. })
        ));
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let c = config(&["10.0.0.0/8"], ForwardedFrom::XForwardedFor);
        let h = headers("x-forwarded-for", &["203.0.113.9"]);
        let r = c.resolve(ip("192.0.2.1"), &h);
        assert_eq!((r.client, r.peer_trusted), (ip("192.0.2.1"), false));
        // With nothing trusted, nothing is read.
        let r = ClientAddressConfig::default().resolve(ip("10.0.0.1"), &h);
        assert_eq!(r.client, ip("10.0.0.1"));
    }

    #[test]
    fn behind_trusted_proxies_the_rightmost_untrusted_hop_is_the_client() {
        let c = config(&["10.0.0.0/8", "127.0.0.1"], ForwardedFrom::XForwardedFor);
        let cases: [(&[&str], &str); 7] = [
            (&["203.0.113.9"], "203.0.113.9"),
            // The client's own claim, left of the real hop, is never read.
            (&["6.6.6.6, 203.0.113.9, 10.0.0.2"], "203.0.113.9"),
            // Several lines are one list, in order.
            (&["6.6.6.6", "203.0.113.9", "10.0.0.2"], "203.0.113.9"),
            // All trusted: the leftmost (furthest) one.
            (&["10.0.0.3, 10.0.0.2"], "10.0.0.3"),
            // Garbage ends the walk at the last trusted hop.
            (&["203.0.113.9, bogus, 10.0.0.2"], "10.0.0.2"),
            (&["[2001:db8::5]:443, 203.0.113.9:8080"], "203.0.113.9"),
            (&["::ffff:198.51.100.9"], "198.51.100.9"),
        ];
        for (xff, want) in cases {
            let r = c.resolve(ip("127.0.0.1"), &headers("x-forwarded-for", xff));
            assert_eq!(r.client, ip(want), "{xff:?}");
            assert!(r.peer_trusted);
        }
        // No header: the peer itself.
        let r = c.resolve(ip("127.0.0.1"), &HeaderMap::new());
        assert_eq!(r.client, ip("127.0.0.1"));
        // Empty, or only garbage: the peer.
        let r = c.resolve(ip("127.0.0.1"), &headers("x-forwarded-for", &["unknown"]));
        assert_eq!(r.client, ip("127.0.0.1"));
    }

    #[test]
    fn rfc_7239_forwarded_is_read_when_configured() {
        let c = config(&["127.0.0.0/8", "10.0.0.0/8"], ForwardedFrom::Forwarded);
        let cases: [(&str, &str); 5] = [
            ("for=192.0.2.60;proto=http;by=203.0.113.43", "192.0.2.60"),
            (
                r#"for="[2001:db8:cafe::17]:4711", for=10.0.0.1"#,
                "2001:db8:cafe::17",
            ),
            ("For=\"192.0.2.43:47011\"", "192.0.2.43"),
            ("for=_hidden, for=10.0.0.1", "10.0.0.1"),
            ("proto=https", "127.0.0.1"),
        ];
        for (fwd, want) in cases {
            let r = c.resolve(ip("127.0.0.1"), &headers("forwarded", &[fwd]));
            assert_eq!(r.client, ip(want), "{fwd}");
        }
        // X-Forwarded-For is not read in this mode.
        let r = c.resolve(ip("127.0.0.1"), &headers("x-forwarded-for", &["192.0.2.1"]));
        assert_eq!(r.client, ip("127.0.0.1"));
    }

    #[test]
    fn ipv4_mapped_peers_are_normalised() {
        let c = config(&["127.0.0.1"], ForwardedFrom::XForwardedFor);
        let r = c.resolve(ip("::ffff:127.0.0.1"), &HeaderMap::new());
        assert_eq!((r.peer, r.peer_trusted), (ip("127.0.0.1"), true));
    }
}
