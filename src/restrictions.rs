//! Key restrictions, compiled at load into matchers: where a key may be used from (`ips`), which
//! pages may call with it (`referrers`), and which routes it may call (`endpoints`).
//!
//! A key restricted in several ways must pass every one. An empty list restricts nothing. The
//! request path never scans a long list: addresses are a [`CidrSet`] (a binary search); referrers
//! are one flat list up to 16 patterns and past that found by their host (one probe, plus one per
//! label for `*.` patterns); endpoints are a binary search of sorted names.

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
///
/// `repr(C)`, matchers first and the document (read only to write a snapshot back) last and
/// boxed: with many keys each with restrictions of their own, every line a check reads is a
/// likely cache miss.
#[derive(Debug, Clone)]
#[repr(C)]
pub struct KeyRestrictions {
    ips: Option<CidrSet>,
    referrers: Option<Referrers>,
    endpoints: Box<[Box<str>]>,
    doc: Box<RestrictionsDoc>,
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
            ips,
            referrers,
            endpoints: endpoints.into(),
            doc: Box::new(doc),
        })
    }

    pub fn doc(&self) -> &RestrictionsDoc {
        &self.doc
    }

    /// What a browser client token minted with this key is held to: the endpoints, which say
    /// what the key may do. Not the addresses or referrers, which say where the key itself is
    /// used (the customer's servers); the token is made to be used from elsewhere, by browsers.
    /// `None` when the key restricts no endpoint.
    pub fn for_client_tokens(&self) -> Option<KeyRestrictions> {
        (!self.endpoints.is_empty()).then(|| KeyRestrictions {
            ips: None,
            referrers: None,
            endpoints: self.endpoints.clone(),
            doc: Box::new(RestrictionsDoc {
                endpoints: self.doc.endpoints.clone(),
                ..RestrictionsDoc::default()
            }),
        })
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
        if let Some(ips) = &self.ips
            && !client.is_some_and(|c| ips.contains(c))
        {
            return Err(RestrictionKind::Ip);
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

/// Referrer patterns: exact hosts, and `*.` suffixes (`*.example.com` matches `a.example.com` and
/// `a.b.example.com`, not `example.com`).
///
/// A key usually lists a few: up to [`SCANNED`] rules are one flat list, their hosts and paths
/// in one string, so a check reads two allocations (a hash table per kind reads its control
/// bytes, a bucket, the key and the rule list: four or more cache misses when each key has its
/// own). Longer lists are found by host instead, so no request scans a long list.
#[derive(Debug, Clone)]
struct Referrers {
    rules: Box<[OriginRule]>,
    /// Every rule's host, then its path, back to back.
    text: Box<str>,
    /// Past [`SCANNED`] rules: rule indexes by exact host and by wildcard suffix.
    by_host: Option<Box<ByHost>>,
}

/// Rules a key may list before they are found by host rather than scanned.
const SCANNED: usize = 16;

#[derive(Debug, Clone, Default)]
struct ByHost {
    exact: HashMap<Box<str>, Vec<u32>, Hasher>,
    wildcard: HashMap<Box<str>, Vec<u32>, Hasher>,
}

/// Hosts are hashed on every request with a long referrer list: foldhash, seeded per table, at a
/// fraction of SipHash's cost. The tables are built from the snapshot, never from requests.
type Hasher = foldhash::fast::RandomState;

/// One pattern: where its host and path are in [`Referrers::text`], and what else it requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OriginRule {
    host_at: u32,
    host_len: u16,
    /// `/` or a prefix without its trailing `/`, matched a whole segment at a time.
    path_len: u16,
    port: u16,
    https: bool,
    /// `*.host`: any subdomain of the host, not the host itself.
    wildcard: bool,
}

impl Referrers {
    fn compile(patterns: &[String]) -> Result<Referrers, RestrictionError> {
        let mut rules = Vec::with_capacity(patterns.len());
        let mut text = String::new();
        for p in patterns {
            let bad = || RestrictionError::Referrer(p.clone());
            let url = Url::parse(p.trim()).ok_or_else(bad)?;
            let (host, wildcard) = match url.host.strip_prefix("*.") {
                Some(rest) => (rest, true),
                None => (&*url.host, false),
            };
            if host.is_empty() || host.contains('*') {
                return Err(bad());
            }
            let path = match url.path.trim_end_matches('/') {
                "" => "/",
                path => path,
            };
            let (host_len, path_len) = (
                u16::try_from(host.len()).map_err(|_| bad())?,
                u16::try_from(path.len()).map_err(|_| bad())?,
            );
            rules.push(OriginRule {
                host_at: u32::try_from(text.len()).map_err(|_| bad())?,
                host_len,
                path_len,
                port: url.port,
                https: url.https,
                wildcard,
            });
            text.push_str(host);
            text.push_str(path);
        }
        let mut r = Referrers {
            rules: rules.into(),
            text: text.into(),
            by_host: None,
        };
        if r.rules.len() > SCANNED {
            let mut by_host = ByHost::default();
            for (i, rule) in r.rules.iter().enumerate() {
                let map = if rule.wildcard {
                    &mut by_host.wildcard
                } else {
                    &mut by_host.exact
                };
                map.entry(r.host(rule).into()).or_default().push(i as u32);
            }
            r.by_host = Some(Box::new(by_host));
        }
        Ok(r)
    }

    fn host(&self, rule: &OriginRule) -> &str {
        let at = rule.host_at as usize;
        &self.text[at..at + usize::from(rule.host_len)]
    }

    fn path(&self, rule: &OriginRule) -> &str {
        let at = rule.host_at as usize + usize::from(rule.host_len);
        &self.text[at..at + usize::from(rule.path_len)]
    }

    /// Whether `rule` allows `url`, its host aside.
    fn fits(&self, rule: &OriginRule, url: &Url) -> bool {
        rule.https == url.https && rule.port == url.port && path_within(url.path, self.path(rule))
    }

    /// Whether a `Referer` (a URL) or `Origin` (`scheme://host[:port]`) value is allowed.
    fn allow(&self, value: &str) -> bool {
        let Some(url) = Url::parse(value) else {
            return false;
        };
        let host = &*url.host;
        let Some(by_host) = &self.by_host else {
            return self.rules.iter().any(|rule| {
                let pattern = self.host(rule);
                let host_fits = if rule.wildcard {
                    host.len() > pattern.len() + 1
                        && host.ends_with(pattern)
                        && host.as_bytes()[host.len() - pattern.len() - 1] == b'.'
                } else {
                    host == pattern
                };
                host_fits && self.fits(rule, &url)
            });
        };
        let fits_any = |rules: Option<&Vec<u32>>| {
            rules.is_some_and(|rules| {
                rules
                    .iter()
                    .any(|&i| self.fits(&self.rules[i as usize], &url))
            })
        };
        if fits_any(by_host.exact.get(host)) {
            return true;
        }
        // Each proper suffix after a dot: a.b.example.com tries b.example.com, example.com, com.
        let mut rest = host;
        while let Some(dot) = rest.bytes().position(|c| c == b'.') {
            let suffix = &rest[dot + 1..];
            if fits_any(by_host.wildcard.get(suffix)) {
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
        let patterns = [
            "https://app.example.com",
            "https://*.example.org",
            "http://localhost:3000",
            "https://docs.example.net/guide/",
        ];
        referrer_cases(&restrictions(&[], &patterns, &[]));
    }

    /// Past 16 patterns, hosts are found by hash rather than scanned: the same answers.
    #[test]
    fn a_long_referrer_list_answers_as_a_short_one() {
        let padding: Vec<String> = (0..20)
            .map(|i| format!("https://*.pad{i}.example.invalid"))
            .collect();
        let mut patterns: Vec<&str> = padding.iter().map(String::as_str).collect();
        patterns.extend([
            "https://app.example.com",
            "https://*.example.org",
            "http://localhost:3000",
            "https://docs.example.net/guide/",
        ]);
        let r = restrictions(&[], &patterns, &[]);
        assert!(r.referrers.as_ref().unwrap().by_host.is_some());
        referrer_cases(&r);
        let short = restrictions(&[], &patterns[20..], &[]);
        assert!(short.referrers.as_ref().unwrap().by_host.is_none());
    }

    fn referrer_cases(r: &KeyRestrictions) {
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
