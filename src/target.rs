//! The request-target keygate decides on, taken from the bytes Pingora will forward.
//!
//! Pingora keeps two views of a target: `uri`, and `raw_path()`, the bytes that go upstream
//! unless the URI is set. For a target that is neither origin-form nor an absolute URL (`x:/a`,
//! `a/b`, a double space read as `%20/a`) the URI is a stand-in `/` while the raw bytes are
//! forwarded as sent. keygate therefore classifies the raw bytes and decides only on targets
//! whose path it can state exactly: origin-form (`/…`) and `http`/`https` absolute-form.

use crate::path::PathError;
use pingora::http::RequestHeader;
use pingora::protocols::http::authority::{RawTargetAuthority, raw_target_authority};

/// The parts of an accepted request-target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'r> {
    /// The path as sent, not yet normalised.
    pub path: &'r str,
    pub query: Option<&'r str>,
    /// The authority of an absolute-form target (`http://host:port/…`), which must become the
    /// upstream's `Host` when the target is forwarded in origin-form (RFC 9112 §3.2.2).
    pub authority: Option<&'r str>,
}

impl Target<'_> {
    /// Whether the bytes Pingora would forward are exactly `canonical_path` and the query, so
    /// the request needs no new URI.
    pub fn forwards_as(&self, req: &RequestHeader, canonical_path: &str) -> bool {
        self.authority.is_none() && self.path == canonical_path && {
            let raw = req.raw_path();
            let (path, query) = match raw.iter().position(|&b| b == b'?') {
                Some(q) => (&raw[..q], Some(&raw[q + 1..])),
                None => (raw, None),
            };
            path == canonical_path.as_bytes() && query == self.query.map(str::as_bytes)
        }
    }
}

/// Classifies the request's target. Anything but origin-form and `http(s)` absolute-form is
/// refused: `OPTIONS *` and opaque or relative targets have no path keygate could match and
/// forward alike.
pub fn of(req: &RequestHeader) -> Result<Target<'_>, PathError> {
    let raw = req.raw_path();
    // The URI holds a lossy copy of a target that is not UTF-8, while the raw bytes are what
    // would be forwarded: the two views differ, so there is nothing safe to decide on.
    if !req.raw_path_is_utf8() {
        return Err(PathError::BadCharacter);
    }
    let from_uri = Target {
        path: req.uri.path(),
        query: req.uri.query(),
        authority: None,
    };
    if raw.first() == Some(&b'/') {
        return Ok(from_uri);
    }
    match raw_target_authority(raw) {
        RawTargetAuthority::Absolute {
            scheme, authority, ..
        } if is_http(scheme) => {
            // Userinfo in a request-target is forbidden (RFC 9110 §4.2.4); Pingora refuses it
            // later too, with a less clear answer.
            if authority.is_empty() || authority.contains(&b'@') {
                return Err(PathError::NotOriginForm);
            }
            let authority = std::str::from_utf8(authority).map_err(|_| PathError::BadCharacter)?;
            Ok(Target {
                authority: Some(authority),
                ..from_uri
            })
        }
        _ => Err(PathError::NotOriginForm),
    }
}

fn is_http(scheme: &[u8]) -> bool {
    scheme.eq_ignore_ascii_case(b"http") || scheme.eq_ignore_ascii_case(b"https")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(target: &[u8]) -> RequestHeader {
        RequestHeader::build("GET", target, None).unwrap()
    }

    #[test]
    fn origin_form_is_taken_as_sent() {
        let r = req(b"/v1/products/1?x=1&y");
        let t = of(&r).unwrap();
        assert_eq!(t.path, "/v1/products/1");
        assert_eq!(t.query, Some("x=1&y"));
        assert_eq!(t.authority, None);
        assert!(t.forwards_as(&r, "/v1/products/1"));
        assert!(!t.forwards_as(&r, "/v1/products/2"));
    }

    #[test]
    fn http_absolute_form_gives_its_path_and_authority() {
        for (target, authority) in [
            (
                &b"http://api.example.com/v1/products/1?x=1"[..],
                "api.example.com",
            ),
            (
                b"HTTPS://api.example.com:8443/v1/products/1?x=1",
                "api.example.com:8443",
            ),
        ] {
            let r = req(target);
            let t = of(&r).unwrap();
            assert_eq!(t.path, "/v1/products/1");
            assert_eq!(t.query, Some("x=1"));
            assert_eq!(t.authority, Some(authority));
            // The raw bytes are the whole URL: it must be rewritten before forwarding.
            assert!(!t.forwards_as(&r, "/v1/products/1"));
        }
    }

    #[test]
    fn every_other_target_is_refused() {
        for target in [
            &b"x:/v1/products/1"[..],
            b"v1/products/1",
            b"%20/v1/products/1",
            b"*",
            b"ws://host/v1/products/1",
            b"wss://host/v1/products/1",
            b"file:///etc/passwd",
            b"http:/v1/products/1",
            b"http://user@host/v1/products/1",
            b"mailto:a@b",
        ] {
            let r = req(target);
            let label = String::from_utf8_lossy(target);
            assert_eq!(of(&r), Err(PathError::NotOriginForm), "{label}");
        }
    }

    #[test]
    fn a_target_that_is_not_utf8_is_refused() {
        let r = req(b"/v1/products/\xff");
        assert_eq!(of(&r), Err(PathError::BadCharacter));
    }
}
