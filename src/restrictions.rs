//! Key restrictions, compiled at load into matchers: where a key may be used from (`ips`), which
//! pages may call with it (`referrers`), and which routes it may call (`endpoints`).
//!
//! A key restricted in several ways must pass every one. An empty list restricts nothing. The
//! request path never scans a list: addresses are a [`CidrSet`] (a binary search), referrers are
//! found by their host (one probe, plus one per label for `*.` patterns), and endpoints by a
//! binary search of sorted names.

use crate::client_address::{CidrError, CidrSet};
use crate::snapshot::RestrictionsDoc;
use http::HeaderMap;
use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::Deref;

/// Which restriction refused a request: the only thing the answer says about them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RestrictionKind {
    Ip,
    Referrer,
    Endpoint,
}

impl RestrictionKind {
    pub const ALL: [RestrictionKind; 3] = [
        RestrictionKind::Ip,
        RestrictionKind::Referrer,
        RestrictionKind::Endpoint,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RestrictionKind::Ip => "ip",
            RestrictionKind::Referrer => "referrer",
            RestrictionKind::Endpoint => "endpoint",
        }
    }

    /// The access log's `reason`.
    pub fn reason(self) -> &'static str {
        match self {
            RestrictionKind::Ip => "restricted_ip",
            RestrictionKind::Referrer => "restricted_referrer",
            RestrictionKind::Endpoint => "restricted_endpoint",
        }
    }
}

/// Why a key's restrictions were refused at load.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestrictionError {
    #[error("restrictions.ips: {0}")]
    Ip(#[from] CidrError),
    #[error(
        "restrictions.referrers: {0:?} is not an origin pattern such as https://app.example.com, https://*.example.com or https://example.com/app"
    )]
    Referrer(String),
    #[error("restrictions: empty referrer or endpoint")]
    Blank,
}

/// One key's restrictions: the document as given (written back in snapshots, shown to
/// operators) and its matchers.
#[derive(Debug, Clone)]
pub struct KeyRestrictions {
    doc: RestrictionsDoc,
    ips: Option<CidrSet>,
    referrers: Option<Referrers>,
    endpoints: Box<[Box<str>]>,
}

impl Deref for KeyRestrictions {
    type Target = RestrictionsDoc;
    fn deref(&self) -> &RestrictionsDoc {
        &self.doc
    }
}

impl KeyRestrictions {
    pub fn compile(doc: RestrictionsDoc) -> Result<KeyRestrictions, RestrictionError> {
        let blank = |v: &Vec<String>| v.iter().any(|s| s.trim().is_empty());
        if blank(&doc.referrers) || blank(&doc.endpoints) {
            return Err(RestrictionError::Blank);
        }
        let ips = (!doc.ips.is_empty())
            .then(|| CidrSet::parse(&doc.ips))
            .transpose()?;
        let referrers = (!doc.referrers.is_empty())
            .then(|| Referrers::compile(&doc.referrers))
            .transpose()?;
        let mut endpoints: Vec<Box<str>> = doc.endpoints.iter().map(|e| e.trim().into()).collect();
        endpoints.sort_unstable();
        endpoints.dedup();
        Ok(KeyRestrictions {
            doc,
            ips,
            referrers,
            endpoints: endpoints.into(),
        })
    }

    pub fn doc(&self) -> &RestrictionsDoc {
        &self.doc
    }

    /// Checks a request: its client address (none on a socket without an IP peer, which an
    /// IP-restricted key never passes), its `Referer` or else `Origin`, and its route's name
    /// (none when no route matched, which an endpoint-restricted key never passes).
    pub fn check(
        &self,
        client: Option<IpAddr>,
        headers: &HeaderMap,
        route: Option<&str>,
    ) -> Result<(), RestrictionKind> {
        if let Some(ips) = &self.ips {
            if !client.is_some_and(|c| ips.contains(c)) {
                return Err(RestrictionKind::Ip);
            }
        }
        if let Some(referrers) = &self.referrers {
            let from = headers
                .get(http::header::REFERER)
                .or_else(|| headers.get(http::header::ORIGIN))
                .and_then(|v| v.to_str().ok());
            if !from.is_some_and(|f| referrers.allow(f)) {
                return Err(RestrictionKind::Referrer);
            }
        }
        let listed = |r: &str| self.endpoints.binary_search_by(|e| (**e).cmp(r)).is_ok();
        if !self.endpoints.is_empty() && !route.is_some_and(listed) {
            return Err(RestrictionKind::Endpoint);
        }
        Ok(())
    }
}

/// Referrer patterns by host: exact hosts, and `*.` suffixes (`*.example.com` matches
/// `a.example.com` and `a.b.example.com`, not `example.com`).
#[derive(Debug, Clone, Default)]
struct Referrers {
    exact: HashMap<Box<str>, Vec<OriginRule>, Hasher>,
    wildcard: HashMap<Box<str>, Vec<OriginRule>, Hasher>,
}

/// Hosts are hashed on every request with a referrer restriction: foldhash, seeded per table,
/// at a fraction of SipHash's cost. The tables are built from the snapshot, never from requests.
type Hasher = foldhash::fast::RandomState;

/// What else a pattern requires once its host matched.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OriginRule {
    https: bool,
    port: u16,
    /// `/` or a prefix without its trailing `/`, matched a whole segment at a time.
    path: Box<str>,
}

impl Referrers {
    fn compile(patterns: &[String]) -> Result<Referrers, RestrictionError> {
        let mut r = Referrers::default();
        for p in patterns {
            let bad = || RestrictionError::Referrer(p.clone());
            let url = Url::parse(p.trim()).ok_or_else(bad)?;
            let (host, wild) = match url.host.strip_prefix("*.") {
                Some(rest) => (rest, true),
                None => (&*url.host, false),
            };
            if host.is_empty() || host.contains('*') {
                return Err(bad());
            }
            let path = url.path.trim_end_matches('/');
            let rule = OriginRule {
                https: url.https,
                port: url.port,
                path: if path.is_empty() {
                    "/".into()
                } else {
                    path.into()
                },
            };
            let map = if wild { &mut r.wildcard } else { &mut r.exact };
            map.entry(host.into()).or_default().push(rule);
        }
        Ok(r)
    }

    /// Whether a `Referer` (a URL) or `Origin` (`scheme://host[:port]`) value is allowed.
    fn allow(&self, value: &str) -> bool {
        let Some(url) = Url::parse(value) else {
            return false;
        };
        let fits = |rules: Option<&Vec<OriginRule>>| {
            rules.is_some_and(|rules| {
                rules.iter().any(|rule| {
                    rule.https == url.https
                        && rule.port == url.port
                        && path_within(url.path, &rule.path)
                })
            })
        };
        if fits(self.exact.get(&*url.host)) {
            return true;
        }
        // Each proper suffix after a dot: a.b.example.com tries b.example.com, example.com, com.
        if self.wildcard.is_empty() {
            return false;
        }
        let mut rest = &*url.host;
        while let Some(dot) = rest.bytes().position(|c| c == b'.') {
            let suffix = &rest[dot + 1..];
            if fits(self.wildcard.get(suffix)) {
                return true;
            }
            rest = suffix;
        }
        false
    }
}

/// Whether `path` is `prefix` or below it, a whole segment at a time (`/app` holds `/app` and
/// `/app/x`, not `/apple`).
fn path_within(path: &str, prefix: &str) -> bool {
    prefix == "/"
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The parts of an `http(s)` URL a referrer rule reads: scheme, host (lowercase), port (the
/// scheme's default when absent), path (without query or fragment). Borrowed from the header:
/// checking a request allocates nothing unless its host has capitals.
struct Url<'a> {
    https: bool,
    host: Cow<'a, str>,
    port: u16,
    path: &'a str,
}

impl<'a> Url<'a> {
    /// Byte by byte, one pass per part: on every request with a referrer restriction, where
    /// `str` searches for patterns cost as much as the rest of the check.
    fn parse(s: &'a str) -> Option<Url<'a>> {
        let starts = |prefix: &[u8]| {
            s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix)
        };
        let (https, rest) = if starts(b"https://") {
            (true, &s[8..])
        } else if starts(b"http://") {
            (false, &s[7..])
        } else {
            return None;
        };
        let end = rest
            .bytes()
            .position(|c| matches!(c, b'/' | b'?' | b'#'))
            .unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        if authority.as_bytes().contains(&b'@') {
            return None; // userinfo: refused rather than read past
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            // An IPv6 literal keeps its brackets: `[2001:db8::1]:8443`.
            let (literal, after) = v6.split_once(']')?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':')?.parse::<u16>().ok()?),
            };
            (&authority[..literal.len() + 2], port)
        } else {
            match authority.bytes().rposition(|c| c == b':') {
                Some(colon) => (
                    &authority[..colon],
                    Some(authority[colon + 1..].parse::<u16>().ok()?),
                ),
                None => (authority, None),
            }
        };
        if host.is_empty() || host == "[]" {
            return None;
        }
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(host.to_ascii_lowercase())
        } else {
            Cow::Borrowed(host)
        };
        let path = &tail[..tail
            .bytes()
            .position(|c| c == b'?' || c == b'#')
            .unwrap_or(tail.len())];
        Some(Url {
            https,
            host,
            port: port.unwrap_or(if https { 443 } else { 80 }),
            path: if path.is_empty() { "/" } else { path },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn restrictions(ips: &[&str], referrers: &[&str], endpoints: &[&str]) -> KeyRestrictions {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect();
        KeyRestrictions::compile(RestrictionsDoc {
            ips: v(ips),
            referrers: v(referrers),
            endpoints: v(endpoints),
        })
        .unwrap()
    }

    fn with(name: http::HeaderName, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, value.parse().unwrap());
        h
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn ips_allow_listed_addresses_and_blocks_only() {
        let r = restrictions(&["203.0.113.7", "10.0.0.0/8", "2001:db8::/32"], &[], &[]);
        let h = HeaderMap::new();
        for yes in [
            "203.0.113.7",
            "10.200.0.1",
            "2001:db8::99",
            "::ffff:10.0.0.1",
        ] {
            assert_eq!(r.check(ip(yes), &h, Some("any")), Ok(()), "{yes}");
        }
        for no in ["203.0.113.8", "11.0.0.1", "2001:db9::1"] {
            assert_eq!(
                r.check(ip(no), &h, Some("any")),
                Err(RestrictionKind::Ip),
                "{no}"
            );
        }
        assert_eq!(r.check(None, &h, None), Err(RestrictionKind::Ip));
    }

    #[test]
    fn referrers_match_origins_wildcards_ports_and_path_prefixes() {
        let r = restrictions(
            &[],
            &[
                "https://app.example.com",
                "https://*.example.org",
                "http://localhost:3000",
                "https://docs.example.net/guide/",
            ],
            &[],
        );
        let referer = |v: &str| r.check(None, &with(http::header::REFERER, v), None);
        for yes in [
            "https://app.example.com/",
            "https://APP.example.com/dashboard?x=1",
            "https://app.example.com:443/x",
            "https://a.example.org/",
            "https://a.b.example.org/page",
            "http://localhost:3000/",
            "https://docs.example.net/guide",
            "https://docs.example.net/guide/intro#top",
            "HTTPS://app.example.com/",
            "https://app.example.com?from=mail",
            "https://app.example.com#top",
        ] {
            assert_eq!(referer(yes), Ok(()), "{yes}");
        }
        for no in [
            "http://app.example.com/",
            "https://app.example.com:8443/",
            "https://app.example.com.evil.com/",
            "https://evilapp.example.com/",
            "https://example.org/",
            "https://a.example.org.evil/",
            "http://localhost/",
            "https://docs.example.net/guidebook",
            "https://docs.example.net/",
            "https://user@app.example.com/",
            "ftp://app.example.com/",
            "app.example.com",
            "https:/app.example.com/",
            "https://app.example.com:99999/",
            "https://app.example.com:/",
            "https://",
            "https://:443/",
        ] {
            assert_eq!(referer(no), Err(RestrictionKind::Referrer), "{no}");
        }
        // Origin when there is no Referer; neither: refused.
        let origin = with(http::header::ORIGIN, "https://a.example.org");
        assert_eq!(r.check(None, &origin, None), Ok(()));
        assert_eq!(
            r.check(None, &HeaderMap::new(), None),
            Err(RestrictionKind::Referrer)
        );
        // An Origin cannot satisfy a path prefix: it has no path.
        let origin = with(http::header::ORIGIN, "https://docs.example.net");
        assert_eq!(r.check(None, &origin, None), Err(RestrictionKind::Referrer));
    }

    #[test]
    fn endpoints_allow_the_named_routes_only() {
        let r = restrictions(&[], &[], &["products-read", "orders-read"]);
        let h = HeaderMap::new();
        assert_eq!(r.check(None, &h, Some("orders-read")), Ok(()));
        assert_eq!(
            r.check(None, &h, Some("orders-write")),
            Err(RestrictionKind::Endpoint)
        );
        assert_eq!(r.check(None, &h, None), Err(RestrictionKind::Endpoint));
    }

    #[test]
    fn every_restriction_must_pass_and_the_first_failure_is_named() {
        let r = restrictions(&["10.0.0.0/8"], &["https://app.example.com"], &["read"]);
        let good = with(http::header::REFERER, "https://app.example.com/");
        assert_eq!(r.check(ip("10.0.0.1"), &good, Some("read")), Ok(()));
        assert_eq!(
            r.check(ip("11.0.0.1"), &good, Some("read")),
            Err(RestrictionKind::Ip)
        );
        assert_eq!(
            r.check(ip("10.0.0.1"), &HeaderMap::new(), Some("read")),
            Err(RestrictionKind::Referrer)
        );
        assert_eq!(
            r.check(ip("10.0.0.1"), &good, Some("write")),
            Err(RestrictionKind::Endpoint)
        );
        // Empty lists restrict nothing.
        assert_eq!(
            restrictions(&[], &[], &[]).check(None, &HeaderMap::new(), None),
            Ok(())
        );
    }

    #[test]
    fn bad_restrictions_are_refused_at_load() {
        let doc = |ips: &[&str], referrers: &[&str], endpoints: &[&str]| {
            let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect();
            KeyRestrictions::compile(RestrictionsDoc {
                ips: v(ips),
                referrers: v(referrers),
                endpoints: v(endpoints),
            })
            .map(|_| ())
        };
        assert!(matches!(
            doc(&["10.0.0.0/33"], &[], &[]),
            Err(RestrictionError::Ip(_))
        ));
        for bad in [
            "app.example.com",
            "https://",
            "https://*",
            "https://a.*.com",
            "https://x:99999",
        ] {
            assert!(
                matches!(doc(&[], &[bad], &[]), Err(RestrictionError::Referrer(_))),
                "{bad}"
            );
        }
        assert_eq!(doc(&[], &[" "], &[]), Err(RestrictionError::Blank));
        assert_eq!(doc(&[], &[], &[""]), Err(RestrictionError::Blank));
    }
}
