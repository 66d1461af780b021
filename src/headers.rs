//! Header writes on the request keygate forwards and the response it passes back, either
//! through Pingora's header API (each name keeps the sender's letter case) or straight into the
//! head's value map with the case map dropped (names go out in lower case on HTTP/1, as they
//! always do on HTTP/2).
//!
//! Why two ways: Pingora keeps a second map of each name's original spelling beside the value
//! map, and its API takes every name as text, so each write parses and allocates the name twice
//! and hashes into both maps (`cargo bench --bench rate_headers`: the five rate-limit headers cost
//! a response about 0.9 µs that way, 0.35 µs without the case map). Which one runs is
//! `upstream.preserve_header_case`.

use http::{HeaderMap, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};

/// A header keygate writes: its spelling on a case-preserving head, and its prepared name.
pub struct Name {
    pub spelled: &'static str,
    pub name: HeaderName,
}

impl Name {
    /// `spelled` must be a valid header name; `lower` the same in lower case.
    pub const fn new(spelled: &'static str, lower: &'static str) -> Name {
        Name {
            spelled,
            name: HeaderName::from_static(lower),
        }
    }

    /// A name keygate spells in lower case anyway.
    pub const fn lower(name: &'static str) -> Name {
        Name::new(name, name)
    }
}

/// The writes keygate makes, on whichever head it has.
pub trait Headers {
    fn map(&self) -> &HeaderMap;
    fn remove(&mut self, name: &HeaderName);
    fn insert(&mut self, name: &Name, value: HeaderValue) -> pingora::Result<()>;
    /// Room for `additional` more names, made at once (a map that grows one insert at a time
    /// is rehashed on each doubling). Pingora's heads offer no way: there it does nothing.
    fn reserve(&mut self, _additional: usize) {}
}

/// Pingora's two heads have the same header API, but no trait for it.
macro_rules! through_pingoras_api {
    ($head:ty) => {
        impl Headers for $head {
            fn map(&self) -> &HeaderMap {
                &self.headers
            }
            fn remove(&mut self, name: &HeaderName) {
                self.remove_header(name);
            }
            fn insert(&mut self, name: &Name, value: HeaderValue) -> pingora::Result<()> {
                self.insert_header(name.spelled, value)
            }
        }
    };
}

through_pingoras_api!(RequestHeader);
through_pingoras_api!(ResponseHeader);

impl Headers for HeaderMap {
    fn map(&self) -> &HeaderMap {
        self
    }
    fn remove(&mut self, name: &HeaderName) {
        HeaderMap::remove(self, name);
    }
    fn insert(&mut self, name: &Name, value: HeaderValue) -> pingora::Result<()> {
        // A prepared name: no parse, and cloning it allocates nothing.
        HeaderMap::insert(self, name.name.clone(), value);
        Ok(())
    }
    fn reserve(&mut self, additional: usize) {
        HeaderMap::reserve(self, additional);
    }
}

/// Runs `write` on the response's value map with its case map dropped, then puts the head back
/// together (status, version, reason phrase and extensions kept).
pub fn response_without_case<R>(
    header: &mut ResponseHeader,
    write: impl FnOnce(&mut HeaderMap) -> R,
) -> R {
    // Only a phrase other than the status's usual one needs keeping (and copying).
    let reason = header
        .get_reason_phrase()
        .filter(|r| Some(*r) != header.status.canonical_reason())
        .map(str::to_owned);
    let placeholder = ResponseHeader::from(http::Response::new(()).into_parts().0);
    let mut parts: http::response::Parts = std::mem::replace(header, placeholder).into();
    let written = write(&mut parts.headers);
    *header = ResponseHeader::from(parts);
    if reason.is_some() {
        // Pingora does not validate the phrase; it came from the upstream's status line.
        let _ = header.set_reason_phrase(reason.as_deref());
    }
    written
}

/// As [`response_without_case`], for the request keygate forwards. `None`, and nothing done,
/// when the request-target would not survive: only a target the URI reproduces byte for byte
/// (origin-form, asterisk-form, UTF-8) is carried over, the upstream must receive the exact
/// bytes keygate decided on.
pub fn request_without_case<R>(
    req: &mut RequestHeader,
    write: impl FnOnce(&mut HeaderMap) -> R,
) -> Option<R> {
    if !target_survives(req) {
        return None;
    }
    let send_end_stream = req.send_end_stream();
    let placeholder = RequestHeader::from(http::Request::new(()).into_parts().0);
    let mut parts: http::request::Parts = std::mem::replace(req, placeholder).into();
    let written = write(&mut parts.headers);
    *req = RequestHeader::from(parts);
    if let Some(end) = send_end_stream {
        req.set_send_end_stream(end);
    }
    Some(written)
}

/// Whether a head rebuilt from the request's parts writes the same request-target: Pingora then
/// takes the target from the URI, as `raw_path` does when it holds no bytes of its own.
fn target_survives(req: &RequestHeader) -> bool {
    let from_uri = req
        .uri
        .path_and_query()
        .map(|p| p.as_str().as_bytes())
        .or_else(|| req.uri.authority().map(|a| a.as_str().as_bytes()))
        .unwrap_or_default();
    req.raw_path_is_utf8() && req.raw_path() == from_uri
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire_request(req: &RequestHeader) -> Vec<u8> {
        let mut buf = bytes::BytesMut::new();
        req.header_to_h1_wire(&mut buf);
        let mut out = req.raw_path().to_vec();
        out.extend_from_slice(b"\n");
        out.extend_from_slice(&buf);
        out
    }

    #[test]
    fn a_response_keeps_its_status_phrase_version_and_headers_and_gains_the_new_ones() {
        let mut resp = ResponseHeader::build(418, None).unwrap();
        resp.set_reason_phrase(Some("Short And Stout")).unwrap();
        resp.set_version(http::Version::HTTP_10);
        resp.append_header("X-Upstream", "a").unwrap();
        resp.append_header("Set-Cookie", "one").unwrap();
        resp.append_header("Set-Cookie", "two").unwrap();
        let name = Name::new("X-RateLimit-Limit", "x-ratelimit-limit");
        response_without_case(&mut resp, |map| {
            Headers::insert(map, &name, HeaderValue::from_static("30")).unwrap();
        });
        assert_eq!(resp.status.as_u16(), 418);
        assert_eq!(resp.version, http::Version::HTTP_10);
        assert_eq!(resp.get_reason_phrase(), Some("Short And Stout"));
        assert!(!resp.has_case());
        let mut buf = bytes::BytesMut::new();
        resp.header_to_h1_wire(&mut buf);
        assert_eq!(
            &buf[..],
            b"x-upstream: a\r\nSet-Cookie: one\r\nSet-Cookie: two\r\nx-ratelimit-limit: 30\r\n"
        );
    }

    #[test]
    fn an_origin_form_request_keeps_its_target_and_headers() {
        for target in [&b"/a/b?q=1&r=%20"[..], b"/", b"*", b"/%FF/x"] {
            let mut req = RequestHeader::build("GET", target, None).unwrap();
            req.append_header("Host", "example.com").unwrap();
            req.append_header("Authorization", "Bearer x").unwrap();
            let done = request_without_case(&mut req, |map| {
                Headers::remove(map, &http::header::AUTHORIZATION);
            });
            assert_eq!(done, Some(()), "{}", String::from_utf8_lossy(target));
            let mut want = target.to_vec();
            want.extend_from_slice(b"\nHost: example.com\r\n");
            assert_eq!(wire_request(&req), want);
        }
    }

    #[test]
    fn a_target_the_uri_cannot_reproduce_is_left_to_the_case_preserving_path() {
        for target in [&b"http://example.com/a?b"[..], b"/caf\xc3\xa9\xff"] {
            let mut req = RequestHeader::build("GET", target, None).unwrap();
            req.append_header("Authorization", "Bearer x").unwrap();
            let before = wire_request(&req);
            assert_eq!(request_without_case(&mut req, |_| ()), None);
            assert_eq!(wire_request(&req), before);
        }
    }
}
